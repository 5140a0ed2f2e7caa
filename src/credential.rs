//! What a provider hands back: one or more username/password pairs and when they expire.

use chrono::{DateTime, Utc};

use crate::sensitive::Sensitive;

/// One registry login. `server` is set when the provider itself knows the registry host (ECR's
/// proxy endpoint, an HTTP response's registry field); otherwise the login applies to every
/// server named in the registry file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Login {
    pub server: Option<String>,
    pub username: String,
    pub password: Sensitive,
}

/// The result of one provider fetch: shared by every target namespace of the registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    pub logins: Vec<Login>,
    /// When the credential stops working; `None` when the provider does not say (the refresh
    /// policy's default lifetime then applies).
    pub expires_at: Option<DateTime<Utc>>,
}

/// Why a fetched credential cannot be written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CredentialError {
    #[error("the provider returned no login")]
    NoLogin,
    #[error("the provider returned an empty username")]
    EmptyUsername,
    #[error("the provider returned an empty password")]
    EmptyPassword,
    #[error(
        "the username contains ':', which registries and kubelet cannot tell from the password"
    )]
    ColonInUsername,
    #[error("the provider returned an empty registry host")]
    EmptyServer,
}

impl Credential {
    /// One rule for every provider: a stated expiry at or before `now` (clock skew between the
    /// provider and this Pod, a provider that states a fixed date) is not believed. The
    /// credential itself was just issued and is the best there is, so it is still written,
    /// but as if no expiry were stated: the refresh policy's default lifetime schedules the
    /// next refresh and no expiry annotation or gauge claims it has expired. Returns the
    /// expiry dropped, if any.
    pub fn drop_past_expiry(&mut self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if self.expires_at.is_some_and(|at| at <= now) {
            return self.expires_at.take();
        }
        None
    }

    /// Rejects empty or partial credentials: such a credential must never replace a good Secret.
    pub fn validate(&self) -> Result<(), CredentialError> {
        if self.logins.is_empty() {
            return Err(CredentialError::NoLogin);
        }
        for login in &self.logins {
            if login.username.trim().is_empty() {
                return Err(CredentialError::EmptyUsername);
            }
            if login.username.contains(':') {
                return Err(CredentialError::ColonInUsername);
            }
            if login.password.is_empty() {
                return Err(CredentialError::EmptyPassword);
            }
            if login.server.as_deref().is_some_and(|s| s.trim().is_empty()) {
                return Err(CredentialError::EmptyServer);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login(user: &str, pass: &str) -> Login {
        Login {
            server: None,
            username: user.into(),
            password: Sensitive::new(pass),
        }
    }

    #[test]
    fn partial_or_empty_credentials_are_rejected() {
        let c = |l: Vec<Login>| {
            Credential {
                logins: l,
                expires_at: None,
            }
            .validate()
        };
        assert_eq!(c(vec![]), Err(CredentialError::NoLogin));
        assert_eq!(c(vec![login("", "p")]), Err(CredentialError::EmptyUsername));
        assert_eq!(
            c(vec![login("u", " ")]),
            Err(CredentialError::EmptyPassword)
        );
        assert_eq!(
            c(vec![login("a:b", "p")]),
            Err(CredentialError::ColonInUsername)
        );
        assert_eq!(c(vec![login("u", "p:with:colons")]), Ok(()));
    }

    #[test]
    fn a_stated_expiry_that_has_passed_is_dropped_whatever_the_provider() {
        let now = chrono::Utc::now();
        let at = |secs: i64| Credential {
            logins: vec![login("u", "p")],
            expires_at: Some(now + chrono::TimeDelta::seconds(secs)),
        };
        let mut future = at(60);
        assert_eq!(future.drop_past_expiry(now), None);
        assert!(future.expires_at.is_some());
        for secs in [0, -5] {
            let mut past = at(secs);
            assert_eq!(
                past.drop_past_expiry(now),
                Some(now + chrono::TimeDelta::seconds(secs))
            );
            assert_eq!(past.expires_at, None);
        }
    }
}
