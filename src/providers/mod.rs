//! Credential providers: config-as-data (`ProviderSpec`, one `type`-tagged variant per provider)
//! plus one trait (`Provider`) that every built provider implements. The engine calls
//! [`Provider::fetch`] once per rotation and fans the result out to every namespace.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::credential::Credential;
use crate::problems::FieldProblems;
use crate::sensitive::Sensitive;

pub mod azure;
pub mod ecr;
pub mod gcp;
pub mod http;
pub mod static_;
pub(crate) mod web;

/// A built provider. Implementations hold their clients and settings; `fetch` must not log or
/// return (in errors) any credential material.
#[async_trait]
pub trait Provider: Send + Sync + fmt::Debug {
    /// Fetches a fresh credential from the source.
    async fn fetch(&self) -> Result<Credential, ProviderError>;
}

/// The bounded set of reasons a provider call fails; used as metric label and event reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCategory {
    /// The provider refused our identity (HTTP 401/403, AWS `AccessDenied`, `invalid_grant`).
    AuthDenied,
    /// Rate limited (HTTP 429, AWS `ThrottlingException`).
    Throttled,
    /// Could not reach the provider (DNS, connect, TLS, timeout).
    Unreachable,
    /// The provider answered, but not with what we expected (5xx, malformed body, missing field).
    BadResponse,
    /// A local input is missing or unreadable (token file, key file, env variable).
    LocalInput,
}

impl ErrorCategory {
    pub const ALL: [ErrorCategory; 5] = [
        Self::AuthDenied,
        Self::Throttled,
        Self::Unreachable,
        Self::BadResponse,
        Self::LocalInput,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::AuthDenied => "auth_denied",
            Self::Throttled => "throttled",
            Self::Unreachable => "unreachable",
            Self::BadResponse => "bad_response",
            Self::LocalInput => "local_input",
        }
    }
}

/// A failed fetch. `message` says what failed and on what; it never contains credential material
/// (no response bodies, no tokens). HTTP answers and transport errors are turned into one in
/// the `web` module.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ProviderError {
    pub category: ErrorCategory,
    pub message: String,
    /// Set when the provider asked us to wait (HTTP `Retry-After`).
    pub retry_after: Option<Duration>,
}

impl ProviderError {
    pub fn new(category: ErrorCategory, message: impl Into<String>) -> Self {
        Self {
            category,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn category(&self) -> &'static str {
        self.category.as_str()
    }
}

/// The pulling Pod's ServiceAccount token (KEP-4412), which `setting` needs. Only the kubelet
/// passes one, on the credential-provider route, and only when its provider entry's
/// `tokenAttributes` name `audience`; without it, a local error saying so (nothing is sent).
pub(crate) fn pod_token<'a>(
    token: Option<&'a Sensitive>,
    setting: &str,
    audience: &str,
) -> Result<&'a Sensitive, ProviderError> {
    token.ok_or_else(|| {
        ProviderError::new(
            ErrorCategory::LocalInput,
            format!(
                "{setting} needs the pulling Pod's ServiceAccount token, which only the kubelet \
                 hands the credential provider (its tokenAttributes must name {audience})"
            ),
        )
    })
}

/// The value of the pulling Pod's ServiceAccount annotation `key`; without it, a local error
/// naming the annotation and what its value would have given (`purpose`).
pub(crate) fn pod_annotation<'a>(
    value: Option<&'a str>,
    key: &str,
    purpose: &str,
) -> Result<&'a str, ProviderError> {
    value.ok_or_else(|| {
        ProviderError::new(
            ErrorCategory::LocalInput,
            format!(
                "the pulling Pod's ServiceAccount has no annotation `{key}` (or the kubelet's \
                 tokenAttributes do not pass it): {purpose}"
            ),
        )
    })
}

/// Where a piece of text comes from. Exactly one of the fields is set; `value` is only accepted
/// where the text is not secret (a username, a client id).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TextSource {
    /// A file, re-read on every fetch (mounted Secrets and projected tokens rotate in place).
    pub file: Option<PathBuf>,
    /// An environment variable of the pullkeeper process.
    pub env: Option<String>,
    /// A literal, for non-secret values only.
    pub value: Option<String>,
}

impl TextSource {
    /// Checks that exactly one source is set, and that a secret is not given as a literal.
    pub fn validate(&self, problems: &mut FieldProblems, field: &str, secret: bool) {
        let set = [
            self.file.is_some(),
            self.env.is_some(),
            self.value.is_some(),
        ]
        .iter()
        .filter(|s| **s)
        .count();
        if set != 1 {
            let allowed = if secret {
                "`file` or `env`"
            } else {
                "`file`, `env` or `value`"
            };
            problems.push(field, format!("set exactly one of {allowed}"));
        }
        if let Some(path) = &self.file {
            problems.require_file(format!("{field}.file"), path);
        }
        if secret && self.value.is_some() {
            problems.push(
                format!("{field}.value"),
                "secrets are not accepted in clear in config files; use `file` or `env`",
            );
        }
    }

    /// Reads the text now (trailing newline trimmed). The error names the file or variable,
    /// never its content.
    pub async fn read(&self) -> Result<Sensitive, ProviderError> {
        if let Some(path) = &self.file {
            let text = tokio::fs::read_to_string(path).await.map_err(|e| {
                ProviderError::new(
                    ErrorCategory::LocalInput,
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            return Ok(Sensitive::new(text.trim_end_matches(['\n', '\r'])));
        }
        if let Some(name) = &self.env {
            return std::env::var(name).map(Sensitive::new).map_err(|_| {
                ProviderError::new(
                    ErrorCategory::LocalInput,
                    format!("environment variable {name} is not set or not UTF-8"),
                )
            });
        }
        if let Some(value) = &self.value {
            return Ok(Sensitive::new(value.clone()));
        }
        Err(ProviderError::new(
            ErrorCategory::LocalInput,
            "no source configured",
        ))
    }
}

/// One provider's settings, as written in a registry file under `provider:`.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ProviderSpec {
    Static(static_::StaticConfig),
    Http(http::HttpConfig),
    Ecr(ecr::EcrConfig),
    EcrPublic(ecr::EcrPublicConfig),
    Gcp(gcp::GcpConfig),
    Azure(azure::AzureConfig),
}

/// The provider types, the one table of them: `ProviderSpec`'s variants map onto it, the
/// config's problem locator (`config::shape`) matches on it, and both matches are exhaustive, so
/// a new provider cannot be added to one and forgotten in the other. Its `type` words are
/// `ProviderSpec`'s serde tags (a unit test checks they agree).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderKind {
    Static,
    Http,
    Ecr,
    EcrPublic,
    Gcp,
    Azure,
}

impl ProviderKind {
    pub const ALL: [Self; 6] = [
        Self::Static,
        Self::Http,
        Self::Ecr,
        Self::EcrPublic,
        Self::Gcp,
        Self::Azure,
    ];

    /// The `type` a registry file names it by, a bounded set used as a metric label.
    pub fn type_name(self) -> &'static str {
        match self {
            Self::Static => "static",
            Self::Http => "http",
            Self::Ecr => "ecr",
            Self::EcrPublic => "ecr-public",
            Self::Gcp => "gcp",
            Self::Azure => "azure",
        }
    }

    /// The kind a `type` word names.
    pub fn of_type(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.type_name() == name)
    }
}

impl ProviderSpec {
    pub fn kind(&self) -> ProviderKind {
        match self {
            Self::Static(_) => ProviderKind::Static,
            Self::Http(_) => ProviderKind::Http,
            Self::Ecr(_) => ProviderKind::Ecr,
            Self::EcrPublic(_) => ProviderKind::EcrPublic,
            Self::Gcp(_) => ProviderKind::Gcp,
            Self::Azure(_) => ProviderKind::Azure,
        }
    }

    /// The provider's `type`, a bounded set used as a metric label.
    pub fn type_name(&self) -> &'static str {
        self.kind().type_name()
    }

    /// Whether every fetched login names its own registry host, so the registry file's
    /// `servers` may be omitted.
    pub fn provides_servers(&self) -> bool {
        match self {
            Self::Ecr(_) | Self::EcrPublic(_) | Self::Azure(_) => true,
            Self::Http(c) => c.provides_servers(),
            Self::Static(_) | Self::Gcp(_) => false,
        }
    }

    /// Whether this provider names `host` itself, so a registry file without that host in
    /// `servers` still serves it: an ECR host (without a port) of a region it fetches, ECR
    /// Public's host, its Azure registry. Providers that learn their host only by fetching
    /// (an HTTP response's registry field) say no: the host must be listed.
    pub fn names_host(&self, host: &str) -> bool {
        match self {
            Self::Ecr(c) => {
                !host.contains(':')
                    && ecr::ecr_host_region(host).is_some_and(|r| c.regions.iter().any(|x| x == r))
            }
            Self::EcrPublic(_) => host == ecr::ECR_PUBLIC_HOST,
            Self::Azure(c) => c.registry.as_deref() == Some(host),
            Self::Static(_) | Self::Http(_) | Self::Gcp(_) => false,
        }
    }

    /// Why a host listed in the registry file's `servers` cannot work with this provider (an
    /// ECR host of a region not fetched, another Azure registry), if it cannot.
    pub fn server_problem(&self, server: &str) -> Option<String> {
        match self {
            Self::Ecr(c) => c.server_problem(server),
            Self::EcrPublic(c) => c.server_problem(server),
            Self::Azure(c) => c.server_problem(server),
            Self::Static(_) | Self::Http(_) | Self::Gcp(_) => None,
        }
    }

    /// How long a credential without a stated expiry is assumed to live.
    pub fn default_lifetime(&self) -> Duration {
        match self {
            // Static sources never expire; re-reading the files about once a minute picks up a
            // rotated mounted Secret quickly, and an unchanged credential causes no write.
            Self::Static(_) => Duration::from_secs(90),
            Self::Gcp(_) => Duration::from_hours(1),
            Self::Azure(_) => Duration::from_hours(3),
            Self::Ecr(_) | Self::EcrPublic(_) => Duration::from_hours(12),
            Self::Http(_) => Duration::from_hours(1),
        }
    }

    /// Checks settings that serde cannot, pushing every problem under `provider.…`.
    pub fn validate(&self, problems: &mut FieldProblems) {
        match self {
            Self::Static(c) => c.validate(problems),
            Self::Http(c) => c.validate(problems),
            Self::Ecr(c) => c.validate(problems),
            Self::EcrPublic(c) => c.validate(problems),
            Self::Gcp(c) => c.validate(problems),
            Self::Azure(c) => c.validate(problems),
        }
    }

    /// Builds the provider for one credential-provider request: as [`ProviderSpec::build`],
    /// with the pulling Pod's ServiceAccount token the kubelet passed (KEP-4412) for providers
    /// that can present it (`http` with `auth: podServiceAccountToken`), and the pulled image's
    /// `repository` for one that asks per repository (`http` with `imageQuery`).
    pub async fn build_for_pod(
        &self,
        pod_token: Option<Sensitive>,
        annotations: &std::collections::BTreeMap<String, String>,
        repository: &str,
    ) -> Result<Arc<dyn Provider>, ProviderError> {
        match self {
            Self::Http(c) => c.build_for_pod(pod_token, repository).await,
            Self::Ecr(c) => c.build_for_pod(pod_token.as_ref(), annotations).await,
            Self::Azure(c) => c.build_for_pod(pod_token.as_ref(), annotations).await,
            Self::Gcp(c) => c.build_for_pod(pod_token.as_ref(), annotations).await,
            _ => self.build().await,
        }
    }

    /// Whether each credential opens one repository (the http provider's `imageQuery`), so
    /// the kubelet caches it per image.
    pub fn per_repository(&self) -> bool {
        matches!(self, Self::Http(c) if c.per_repository())
    }

    /// Whether the provider needs the pulling Pod's ServiceAccount token, which only the
    /// credential-provider route has.
    pub fn needs_pod_token(&self) -> bool {
        match self {
            Self::Http(c) => c.auth == http::EndpointAuth::PodServiceAccountToken,
            Self::Ecr(c) => c.pod_role_annotation.is_some(),
            Self::Azure(c) => c.source == azure::AzureSource::PodWorkloadIdentity,
            Self::Gcp(c) => c.source == gcp::GcpSource::PodWorkloadIdentity,
            _ => false,
        }
    }

    /// Builds the provider (clients, identity chains). Called on every accepted config load.
    pub async fn build(&self) -> Result<Arc<dyn Provider>, ProviderError> {
        match self {
            Self::Static(c) => c.build().await,
            Self::Http(c) => c.build().await,
            Self::Ecr(c) => c.build().await,
            Self::EcrPublic(c) => c.build().await,
            Self::Gcp(c) => c.build().await,
            Self::Azure(c) => c.build().await,
        }
    }
}

#[cfg(test)]
mod kind_tests {
    use super::*;

    #[test]
    fn every_provider_kind_is_a_type_the_registry_file_accepts_and_nothing_else_is() {
        for kind in ProviderKind::ALL {
            let name = kind.type_name();
            assert_eq!(ProviderKind::of_type(name), Some(kind));
            // A known tag fails, if at all, on the settings, never as an unknown variant.
            match serde_json::from_value::<ProviderSpec>(serde_json::json!({ "type": name })) {
                Ok(spec) => assert_eq!(spec.kind(), kind),
                Err(e) => assert!(!e.to_string().contains("unknown variant"), "{name}: {e}"),
            }
        }
        let unknown = serde_json::from_value::<ProviderSpec>(serde_json::json!({"type": "ftp"}))
            .expect_err("unknown type");
        assert!(unknown.to_string().contains("unknown variant"), "{unknown}");
        for name in ["static", "http", "ecr", "ecr-public", "gcp", "azure"] {
            assert!(unknown.to_string().contains(name), "{unknown}");
        }
        assert_eq!(ProviderKind::of_type("ftp"), None);
    }
}
