//! The `static` provider: a fixed username and password read from files or the environment.
//!
//! The sources are read again on every fetch, so a rotated mounted Secret is picked up at the next
//! refresh; the engine writes only when the rendered content changed. A static credential carries
//! no expiry, so the registry's default lifetime drives the refresh.

use std::sync::Arc;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::Deserialize;

use super::{Provider, ProviderError, TextSource};
use crate::credential::{Credential, Login};
use crate::problems::FieldProblems;

/// Settings of `provider: {type: static, …}`.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StaticConfig {
    /// The registry username: `file`, `env` or `value`.
    pub username: TextSource,
    /// The registry password or token: `file` or `env` only (never in clear in a config file).
    pub password: TextSource,
}

impl StaticConfig {
    /// Checks both sources, reporting every problem under `username` / `password`.
    pub fn validate(&self, problems: &mut FieldProblems) {
        self.username.validate(problems, "username", false);
        if self
            .username
            .value
            .as_deref()
            .is_some_and(|u| u.contains(':'))
        {
            problems.push(
                "username.value",
                "a username may not contain ':' (registries and kubelet split user:password on the first ':')",
            );
        }
        self.password.validate(problems, "password", true);
    }

    /// Builds the provider; nothing is read until the first fetch.
    pub async fn build(&self) -> Result<Arc<dyn Provider>, ProviderError> {
        Ok(Arc::new(StaticProvider {
            username: self.username.clone(),
            password: self.password.clone(),
        }))
    }
}

/// A built `static` provider.
#[derive(Debug)]
struct StaticProvider {
    username: TextSource,
    password: TextSource,
}

#[async_trait]
impl Provider for StaticProvider {
    async fn fetch(&self) -> Result<Credential, ProviderError> {
        let username = self.username.read().await?;
        let password = self.password.read().await?;
        Ok(Credential {
            logins: vec![Login {
                server: None,
                // A username is not secret; it appears in Secrets' `auths` in clear anyway.
                username: username.expose().trim().to_string(),
                password,
            }],
            expires_at: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::providers::ErrorCategory;

    fn parse(yaml: &str) -> Result<StaticConfig, serde_yaml_ng::Error> {
        serde_yaml_ng::from_str(yaml)
    }

    fn problems_of(config: &StaticConfig) -> Vec<String> {
        let mut p = FieldProblems::new(Path::new("r.yaml"));
        p.scoped("provider", |p| config.validate(p));
        p.into_vec()
            .into_iter()
            .map(|p| format!("{}: {}", p.field, p.message))
            .collect()
    }

    fn file_source(path: &Path) -> TextSource {
        TextSource {
            file: Some(path.to_path_buf()),
            ..TextSource::default()
        }
    }

    #[test]
    fn a_username_value_and_a_password_file_are_valid() {
        let c = parse("username: {value: robot}\npassword: {file: /run/pw}\n").unwrap();
        assert_eq!(c.username.value.as_deref(), Some("robot"));
        assert_eq!(c.password.file, Some(PathBuf::from("/run/pw")));
        assert!(problems_of(&c).is_empty());
    }

    #[test]
    fn a_password_given_as_value_is_rejected_by_validate() {
        let c = parse("username: {env: USER}\npassword: {value: hunter2}\n").unwrap();
        let problems = problems_of(&c);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("provider.password.value: secrets are not accepted"));
    }

    #[test]
    fn every_problem_is_reported_not_only_the_first() {
        let c = parse("username: {}\npassword: {file: /a, env: B}\n").unwrap();
        let problems = problems_of(&c);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("provider.username: "));
        assert!(problems[1].starts_with("provider.password: "));
    }

    #[test]
    fn unknown_fields_and_a_missing_password_are_parse_errors() {
        let e = parse("username: {value: u}\npassword: {file: /p}\nregistry: x\n").unwrap_err();
        assert!(e.to_string().contains("unknown field `registry`"), "{e}");
        let e = parse("username: {value: u}\n").unwrap_err();
        assert!(e.to_string().contains("missing field `password`"), "{e}");
    }

    #[tokio::test]
    async fn files_are_read_again_on_every_fetch() {
        let dir = tempfile::tempdir().unwrap();
        let (user, pass) = (dir.path().join("username"), dir.path().join("password"));
        std::fs::write(&user, "robot$ci\n").unwrap();
        std::fs::write(&pass, "first-secret\n").unwrap();
        let config = StaticConfig {
            username: file_source(&user),
            password: file_source(&pass),
        };
        let provider = config.build().await.unwrap();

        let first = provider.fetch().await.unwrap();
        assert_eq!(first.logins.len(), 1);
        assert_eq!(first.logins[0].server, None);
        assert_eq!(first.logins[0].username, "robot$ci");
        assert_eq!(first.logins[0].password.expose(), "first-secret");
        assert_eq!(first.expires_at, None);

        std::fs::write(&pass, "second-secret").unwrap();
        let second = provider.fetch().await.unwrap();
        assert_eq!(second.logins[0].password.expose(), "second-secret");
    }

    #[tokio::test]
    async fn a_missing_password_file_is_a_local_input_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("not-mounted-yet");
        let config = StaticConfig {
            username: TextSource {
                value: Some("robot".into()),
                ..TextSource::default()
            },
            password: file_source(&missing),
        };
        let err = config.build().await.unwrap().fetch().await.unwrap_err();
        assert_eq!(err.category, ErrorCategory::LocalInput);
        assert!(
            err.to_string().contains(&missing.display().to_string()),
            "{err}"
        );
    }

    #[tokio::test]
    async fn the_debug_form_of_a_fetched_credential_hides_the_password() {
        let dir = tempfile::tempdir().unwrap();
        let pass = dir.path().join("password");
        std::fs::write(&pass, "canary-7f3a").unwrap();
        let config = StaticConfig {
            username: TextSource {
                value: Some("robot".into()),
                ..TextSource::default()
            },
            password: file_source(&pass),
        };
        let provider = config.build().await.unwrap();
        let credential = provider.fetch().await.unwrap();
        let shown = format!("{credential:?} {provider:?}");
        assert!(!shown.contains("canary-7f3a"), "{shown}");
        assert!(shown.contains("robot"), "{shown}");
    }
}
