//! Rendering a credential as a `kubernetes.io/dockerconfigjson` Secret body.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::Registry;
use crate::credential::{Credential, CredentialError, Login};
use crate::providers::ecr::ecr_host_region;

/// The Secret type kubelet reads pull credentials from.
pub const SECRET_TYPE: &str = "kubernetes.io/dockerconfigjson";
/// The data key of that Secret type.
pub const DATA_KEY: &str = ".dockerconfigjson";

/// A rendered `.dockerconfigjson` and its content hash.
#[derive(Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The JSON bytes (secret material: never log).
    pub bytes: Vec<u8>,
    /// Hex SHA-256 of `bytes`; safe to show and kept in an annotation.
    pub hash: String,
    /// The `auths` keys, in order.
    pub servers: Vec<String>,
}

impl std::fmt::Debug for Rendered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rendered")
            .field("hash", &self.hash)
            .field("servers", &self.servers)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct DockerConfig<'a> {
    auths: BTreeMap<&'a str, AuthEntry<'a>>,
}

#[derive(Serialize)]
struct AuthEntry<'a> {
    username: &'a str,
    password: &'a str,
    auth: String,
}

/// Hex SHA-256 of bytes, as kept in the content-hash annotation.
pub fn content_hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Which login goes under which `auths` key. Logins that name their own server go under that
/// key; the others under every server listed in the registry file. Listed servers no login
/// covers get the first login, so `servers` can add aliases to a provider-named host (e.g. a
/// pull-through cache name) — except an ECR host in another form (dual-stack `on.aws`, FIPS),
/// which gets the login of its own region. Rendering and verification both read this one mapping.
pub fn logins_by_server<'a>(
    registry: &'a Registry,
    credential: &'a Credential,
) -> BTreeMap<&'a str, &'a Login> {
    let mut by_server = BTreeMap::new();
    for login in &credential.logins {
        match &login.server {
            Some(server) => {
                by_server.insert(server.as_str(), login);
            }
            None => by_server.extend(registry.servers.iter().map(|s| (s.as_str(), login))),
        }
    }
    if let Some(first) = credential.logins.first() {
        for server in &registry.servers {
            by_server
                .entry(server.as_str())
                .or_insert_with(|| same_ecr_region(server, credential).unwrap_or(first));
        }
    }
    by_server
}

/// The login the kubelet gets for images on `host` (the credential provider route): the one
/// [`logins_by_server`] puts under that key, else, for an ECR host the provider did not name
/// (another account's registry in a fetched region), the login of its region.
pub fn login_for_host<'a>(
    registry: &'a Registry,
    credential: &'a Credential,
    host: &str,
) -> Option<&'a Login> {
    logins_by_server(registry, credential)
        .get(host)
        .copied()
        .or_else(|| same_ecr_region(host, credential))
}

/// For a listed ECR host in another form than the one the provider named (dual-stack, FIPS):
/// the login of the same region, since an ECR token opens the registries of its region only.
fn same_ecr_region<'a>(server: &str, credential: &'a Credential) -> Option<&'a Login> {
    let region = ecr_host_region(server)?;
    credential.logins.iter().find(|login| {
        login
            .server
            .as_deref()
            .and_then(ecr_host_region)
            .is_some_and(|r| r == region)
    })
}

/// Renders the credential for a registry (see [`logins_by_server`]). Empty or partial
/// credentials are refused, so they can never replace a good Secret.
pub fn render(registry: &Registry, credential: &Credential) -> Result<Rendered, CredentialError> {
    credential.validate()?;
    let auths: BTreeMap<&str, AuthEntry<'_>> = logins_by_server(registry, credential)
        .into_iter()
        .map(|(server, login)| {
            let password = login.password.expose();
            let auth = STANDARD.encode(format!("{}:{password}", login.username));
            (
                server,
                AuthEntry {
                    username: &login.username,
                    password,
                    auth,
                },
            )
        })
        .collect();
    if auths.is_empty() {
        return Err(CredentialError::NoLogin);
    }
    let servers = auths.keys().map(|s| (*s).to_string()).collect();
    let bytes =
        serde_json::to_vec(&DockerConfig { auths }).map_err(|_| CredentialError::NoLogin)?;
    Ok(Rendered {
        hash: content_hash(&bytes),
        bytes,
        servers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sensitive::Sensitive;
    use crate::testing::registry;

    #[test]
    fn renders_padded_auth_and_bare_host_keys() {
        let reg = registry("harbor", |r| r.servers = vec!["harbor.example:5000".into()]);
        let cred = Credential {
            logins: vec![Login {
                server: None,
                username: "robot".into(),
                password: Sensitive::new("p:w="),
            }],
            expires_at: None,
        };
        let r = render(&reg, &cred).expect("renders");
        let text = String::from_utf8(r.bytes.clone()).expect("utf8");
        assert_eq!(
            text,
            r#"{"auths":{"harbor.example:5000":{"username":"robot","password":"p:w=","auth":"cm9ib3Q6cDp3PQ=="}}}"#
        );
        assert_eq!(r.hash, content_hash(text.as_bytes()));
        assert!(!format!("{r:?}").contains("p:w="));
    }

    #[test]
    fn provider_named_servers_and_file_aliases_both_get_entries() {
        let reg = registry("ecr", |r| r.servers = vec!["alias.example".into()]);
        let cred = Credential {
            logins: vec![Login {
                server: Some("1.dkr.ecr.eu-west-1.amazonaws.com".into()),
                username: "AWS".into(),
                password: Sensitive::new("tok"),
            }],
            expires_at: None,
        };
        let r = render(&reg, &cred).expect("renders");
        assert_eq!(
            r.servers,
            ["1.dkr.ecr.eu-west-1.amazonaws.com", "alias.example"]
        );
    }

    #[test]
    fn listed_ecr_host_forms_get_the_login_of_their_own_region() {
        let reg = registry("ecr", |r| {
            r.servers = vec![
                "123456789012.dkr-ecr.us-east-1.on.aws".into(),
                "123456789012.dkr.ecr-fips.us-east-1.amazonaws.com".into(),
                "123456789012.dkr-ecr-fips.eu-west-1.on.aws".into(),
                "mirror.example".into(),
            ];
        });
        let login = |server: &str, password: &str| Login {
            server: Some(server.into()),
            username: "AWS".into(),
            password: Sensitive::new(password),
        };
        let cred = Credential {
            logins: vec![
                login("123456789012.dkr.ecr.eu-west-1.amazonaws.com", "eu"),
                login("123456789012.dkr.ecr.us-east-1.amazonaws.com", "us"),
            ],
            expires_at: None,
        };
        let by_server = logins_by_server(&reg, &cred);
        let password = |server: &str| by_server[server].password.expose().to_string();
        assert_eq!(password("123456789012.dkr-ecr.us-east-1.on.aws"), "us");
        assert_eq!(
            password("123456789012.dkr.ecr-fips.us-east-1.amazonaws.com"),
            "us"
        );
        assert_eq!(password("123456789012.dkr-ecr-fips.eu-west-1.on.aws"), "eu");
        // Not an ECR host: an alias of the first login, as before.
        assert_eq!(password("mirror.example"), "eu");
        // Every form is written as its own `auths` key, as the kubelet matches image hosts.
        assert_eq!(
            render(&reg, &cred).expect("renders").servers,
            [
                "123456789012.dkr-ecr-fips.eu-west-1.on.aws",
                "123456789012.dkr-ecr.us-east-1.on.aws",
                "123456789012.dkr.ecr-fips.us-east-1.amazonaws.com",
                "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
                "123456789012.dkr.ecr.us-east-1.amazonaws.com",
                "mirror.example",
            ]
        );
    }

    #[test]
    fn empty_password_is_never_rendered() {
        let reg = registry("x", |_| {});
        let cred = Credential {
            logins: vec![Login {
                server: None,
                username: "u".into(),
                password: Sensitive::new(""),
            }],
            expires_at: None,
        };
        assert_eq!(render(&reg, &cred), Err(CredentialError::EmptyPassword));
    }
}
