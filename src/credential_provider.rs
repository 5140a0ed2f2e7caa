//! `pullkeeper credential-provider`: the kubelet's image credential provider plugin
//! (`credentialprovider.kubelet.k8s.io/v1`), served from the same registry files as the
//! Secrets. The kubelet execs it on a cache miss with one `CredentialProviderRequest` on stdin
//! and reads one `CredentialProviderResponse` from stdout.
//!
//! The rules are pure functions here ([`match_registry`], [`cache_duration`], [`respond`]); one
//! invocation ([`serve`]) loads the directory, builds only the matched registry's provider and
//! fetches once. Nothing here prints a credential: passwords stay [`Sensitive`] until
//! [`Response::to_json`], the one place they leave the process.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::{self, LoadOptions, Registry};
use crate::credential::{Credential, CredentialError};
use crate::providers::ProviderError;
use crate::recover::image_host;
use crate::refresh::error_chain;
use crate::render;
use crate::schedule::effective_lifetime;
use crate::sensitive::Sensitive;

/// The API version the kubelet speaks to plugins (GA since Kubernetes 1.26).
pub const API_VERSION: &str = "credentialprovider.kubelet.k8s.io/v1";

/// One `CredentialProviderRequest`, as the kubelet writes it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    pub api_version: String,
    pub kind: String,
    /// The image being pulled, as the Pod names it.
    pub image: String,
    /// The Pod's ServiceAccount token (KEP-4412), when the kubelet's `tokenAttributes` ask for it.
    #[serde(default)]
    pub service_account_token: Option<Sensitive>,
    /// The ServiceAccount's annotations the kubelet's `tokenAttributes` name.
    #[serde(default)]
    pub service_account_annotations: BTreeMap<String, String>,
}

/// What the kubelet caches the answer by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum CacheKeyType {
    /// Every image of the answered registry host (a pullkeeper credential opens a whole host).
    Registry,
    /// This image only: the credential opens one repository (the http provider's
    /// `imageQuery`), so another repository of the host must ask again.
    Image,
}

/// One `CredentialProviderResponse`. `Debug` shows `***` for every password.
#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    pub cache_key_type: CacheKeyType,
    pub cache_duration: Duration,
    /// Server pattern → login; empty when pullkeeper has nothing for the image.
    pub auth: BTreeMap<String, (String, Sensitive)>,
    /// The host the provider itself named for the login served (ECR's proxy endpoint), if any:
    /// for the invocation log, never sent to the kubelet.
    pub login_server: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireResponse<'a> {
    api_version: &'static str,
    kind: &'static str,
    cache_key_type: CacheKeyType,
    cache_duration: String,
    auth: BTreeMap<&'a str, WireAuth<'a>>,
}

#[derive(Serialize)]
struct WireAuth<'a> {
    username: &'a str,
    password: &'a str,
}

impl Response {
    /// The empty answer: the kubelet then falls back to the Pod's `imagePullSecrets`. Not cached,
    /// so a registry file added later is seen on the next pull.
    pub fn empty() -> Self {
        Self {
            cache_key_type: CacheKeyType::Registry,
            cache_duration: Duration::ZERO,
            auth: BTreeMap::new(),
            login_server: None,
        }
    }

    /// The JSON document for the kubelet (secret material: written to stdout only).
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(&WireResponse {
            api_version: API_VERSION,
            kind: "CredentialProviderResponse",
            cache_key_type: self.cache_key_type,
            // A Go duration; whole seconds, which `time.ParseDuration` reads.
            cache_duration: format!("{}s", self.cache_duration.as_secs()),
            auth: self
                .auth
                .iter()
                .map(|(server, (username, password))| {
                    (
                        server.as_str(),
                        WireAuth {
                            username,
                            password: password.expose(),
                        },
                    )
                })
                .collect(),
        })
    }
}

/// Why one invocation gave no credential. Each renders as one line without credential material.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("cannot read the CredentialProviderRequest on stdin: {0}")]
    Request(String),
    #[error("unsupported request {api_version}/{kind}; this plugin speaks {API_VERSION}")]
    Version { api_version: String, kind: String },
    #[error("config {dir} is invalid: {problems}")]
    Config { dir: String, problems: String },
    #[error("registry {registry}: cannot build the {provider} provider")]
    Build {
        registry: String,
        provider: &'static str,
        #[source]
        source: ProviderError,
    },
    #[error("registry {registry}: fetching from the {provider} provider failed")]
    Fetch {
        registry: String,
        provider: &'static str,
        #[source]
        source: ProviderError,
    },
    #[error("registry {registry}: the {provider} provider did not answer within {timeout:?}")]
    Timeout {
        registry: String,
        provider: &'static str,
        timeout: Duration,
    },
    #[error("registry {registry}: the provider returned an unusable credential")]
    Invalid {
        registry: String,
        #[source]
        source: CredentialError,
    },
    #[error("registry {registry}: the fetched credential names no login for {host}")]
    NoLoginForHost { registry: String, host: String },
    #[error("cannot write the response")]
    Write(#[source] std::io::Error),
}

impl PluginError {
    /// A bounded word for the invocation log.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Request(_) | Self::Version { .. } => "bad_request",
            Self::Config { .. } => "invalid_config",
            Self::Build { source, .. } | Self::Fetch { source, .. } => source.category(),
            Self::Timeout { .. } => "unreachable",
            Self::Invalid { .. } | Self::NoLoginForHost { .. } => "invalid_credential",
            Self::Write(_) => "write_failed",
        }
    }
}

/// The registry file that serves an image, and the server pattern to answer under.
#[derive(Debug)]
pub struct Match<'a> {
    pub registry: &'a Arc<Registry>,
    /// The image's registry host (`host[:port]`): the `auth` key, as the `auths` key of the
    /// Secret route would be.
    pub server: String,
    /// The image's repository (`host/path`, no tag or digest): the `auth` key instead when the
    /// credential opens one repository.
    pub repository: String,
}

/// The repository of an image reference: `host/path` without its tag or digest (Docker Hub's
/// short names spelled out, as the kubelet matches them).
pub fn image_repository(image: &str) -> String {
    let named = image.split_once('@').map_or(image, |(name, _)| name);
    let last_slash = named.rfind('/').map_or(0, |i| i + 1);
    let untagged = match named[last_slash..].rfind(':') {
        Some(colon) => &named[..last_slash + colon],
        None => named,
    };
    let host = image_host(untagged);
    if untagged.starts_with(&format!("{host}/")) {
        untagged.to_string()
    } else if untagged.contains('/') {
        format!("{host}/{untagged}")
    } else {
        format!("{host}/library/{untagged}")
    }
}

/// The first registry file (in file-name order) serving the image's host: one whose `servers`
/// lists it (the keys its Secret's `auths` carries), else one whose provider names that host
/// itself (an ECR host of a region it fetches, ECR Public, its Azure registry).
pub fn match_registry<'a>(registries: &'a [Arc<Registry>], image: &str) -> Option<Match<'a>> {
    let host = image_host(image);
    let listed = registries
        .iter()
        .find(|r| r.servers.iter().any(|s| s == host));
    let registry = listed.or_else(|| registries.iter().find(|r| r.provider.names_host(host)))?;
    Some(Match {
        registry,
        server: host.to_string(),
        repository: image_repository(image),
    })
}

/// How long the kubelet may cache a credential fetched at `now`: the registry file's `renewAt`
/// share of its lifetime (the stated expiry, else the file's `defaultLifetime`), and never more
/// than `maxInterval` — the moment the Secret route would renew it. So the kubelet drops it
/// before it expires, as a Secret would have been replaced. Whole seconds, rounded down.
pub fn cache_duration(
    registry: &Registry,
    now: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
) -> Duration {
    let policy = &registry.refresh;
    let renew = effective_lifetime(policy, now, expires_at).mul_f64(policy.renew_at);
    Duration::from_secs(renew.min(policy.max_interval).as_secs())
}

/// The response for a fetched credential: the login the Secret route would write under the
/// image's host (the same mapping as the Secret's `auths`), cached per [`cache_duration`].
pub fn respond(
    m: &Match<'_>,
    mut credential: Credential,
    now: DateTime<Utc>,
) -> Result<Response, PluginError> {
    let registry = m.registry;
    credential
        .validate()
        .map_err(|source| PluginError::Invalid {
            registry: registry.name.clone(),
            source,
        })?;
    // A stated expiry already past is not believed (the provider's clock, moto's fixed date).
    credential.drop_past_expiry(now);
    let login = render::login_for_host(registry, &credential, &m.server).ok_or_else(|| {
        PluginError::NoLoginForHost {
            registry: registry.name.clone(),
            host: m.server.clone(),
        }
    })?;
    // A credential for one repository is answered under that repository (the kubelet matches
    // a key's path as a prefix of the image's) and cached per image.
    let (cache_key_type, key) = if registry.provider.per_repository() {
        (CacheKeyType::Image, m.repository.clone())
    } else {
        (CacheKeyType::Registry, m.server.clone())
    };
    Ok(Response {
        cache_key_type,
        cache_duration: cache_duration(registry, now, credential.expires_at),
        auth: BTreeMap::from([(key, (login.username.clone(), login.password.clone()))]),
        login_server: login.server.clone(),
    })
}

/// Which registry-file fields each route reads, for `pullkeeper check`.
pub const ROUTE_FIELDS: &str = "\
Fields by route (the same file serves both):
  both routes:                  provider, servers, refresh.renewAt, refresh.maxInterval, refresh.defaultLifetime
  Secret route only:            secretName, namespaces, serviceAccounts, secretLabels, verify,
                                refresh.schedule, refresh.minInterval, refresh.jitter, refresh.backoffInitial, refresh.backoffMax
  credential-provider only:     provider.auth: podServiceAccountToken (http), provider.podRoleAnnotation (ecr),
                                provider.source: podWorkloadIdentity (azure, gcp), provider.imageQuery (http)
                                (the kubelet's CredentialProviderConfig says which images reach the plugin)
";

/// What the credential-provider route cannot do with a registry file, if anything.
pub fn route_note(registry: &Registry) -> Option<String> {
    if registry.servers.is_empty()
        && !matches!(
            registry.provider,
            crate::providers::ProviderSpec::Ecr(_)
                | crate::providers::ProviderSpec::EcrPublic(_)
                | crate::providers::ProviderSpec::Azure(_)
        )
    {
        return Some(format!(
            "{}: no `servers`; the credential-provider route serves only listed hosts (its {} provider names its host only when it fetches)",
            registry.name,
            registry.provider.type_name()
        ));
    }
    if registry.provider.per_repository() {
        return Some(format!(
            "{}: `provider.imageQuery` is sent on the credential-provider route only; the Secret route asks without it, for one credential for every repository",
            registry.name
        ));
    }
    if registry.provider.needs_pod_token() {
        return Some(format!(
            "{}: the Pod's own identity (`provider.auth: podServiceAccountToken`, `provider.podRoleAnnotation`, `source: podWorkloadIdentity`) works on the credential-provider route only (the Secret route has no Pod token)",
            registry.name
        ));
    }
    registry.verify.as_ref().map(|_| {
        format!(
            "{}: `verify` applies to the Secret route only; the plugin answers without a registry round trip",
            registry.name
        )
    })
}

/// Parses the request and checks its version.
pub fn parse_request(text: &str) -> Result<Request, PluginError> {
    let request: Request =
        serde_json::from_str(text).map_err(|e| PluginError::Request(e.to_string()))?;
    if request.api_version != API_VERSION || request.kind != "CredentialProviderRequest" {
        return Err(PluginError::Version {
            api_version: request.api_version,
            kind: request.kind,
        });
    }
    Ok(request)
}

/// What one invocation did, for the invocation log (no credential, only hosts and names).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Invocation {
    pub time: String,
    pub image_host: Option<String>,
    pub registry: Option<String>,
    pub provider: Option<&'static str>,
    /// `served`, `no_match`, or the error's category.
    pub outcome: &'static str,
    /// The host the provider named for the login served (ECR: the account's registry).
    pub login_server: Option<String>,
    pub cache_duration_seconds: Option<u64>,
    pub elapsed_ms: u128,
}

impl Invocation {
    /// The record of an invocation that began at `time` (RFC 3339) and has done nothing yet.
    pub fn starting(time: String) -> Self {
        Self {
            time,
            image_host: None,
            registry: None,
            provider: None,
            outcome: "",
            login_server: None,
            cache_duration_seconds: None,
            elapsed_ms: 0,
        }
    }
}

/// Settings of one invocation.
#[derive(Clone, Debug)]
pub struct Settings<'a> {
    pub config_dir: &'a Path,
    pub fetch_timeout: Duration,
}

/// One invocation: request in, response out. `record` receives what happened (also on error).
pub async fn serve(
    settings: &Settings<'_>,
    request_text: &str,
    out: &mut dyn Write,
    record: &mut Invocation,
) -> Result<(), PluginError> {
    let request = parse_request(request_text)?;
    record.image_host = Some(image_host(&request.image).to_string());
    let options = LoadOptions {
        check_files: true,
        allow_empty: true,
    };
    let config =
        config::load(settings.config_dir, options).map_err(|problems| PluginError::Config {
            dir: settings.config_dir.display().to_string(),
            problems: problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        })?;
    let response = match match_registry(&config.registries, &request.image) {
        None => {
            record.outcome = "no_match";
            Response::empty()
        }
        Some(m) => {
            let registry = m.registry;
            let provider = registry.provider.type_name();
            record.registry = Some(registry.name.clone());
            record.provider = Some(provider);
            let built = registry
                .provider
                .build_for_pod(
                    request.service_account_token.clone(),
                    &request.service_account_annotations,
                    &m.repository,
                )
                .await
                .map_err(|source| PluginError::Build {
                    registry: registry.name.clone(),
                    provider,
                    source,
                })?;
            let credential = tokio::time::timeout(settings.fetch_timeout, built.fetch())
                .await
                .map_err(|_| PluginError::Timeout {
                    registry: registry.name.clone(),
                    provider,
                    timeout: settings.fetch_timeout,
                })?
                .map_err(|source| PluginError::Fetch {
                    registry: registry.name.clone(),
                    provider,
                    source,
                })?;
            let response = respond(&m, credential, Utc::now())?;
            record.outcome = "served";
            response
        }
    };
    record.cache_duration_seconds = Some(response.cache_duration.as_secs());
    record.login_server.clone_from(&response.login_server);
    let json = response
        .to_json()
        .map_err(|e| PluginError::Write(std::io::Error::other(e)))?;
    out.write_all(json.as_bytes())
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
        .map_err(PluginError::Write)
}

/// The one stderr line for a failed invocation (the kubelet logs it).
pub fn error_line(e: &PluginError) -> String {
    format!("pullkeeper credential-provider: {}", error_chain(e)).replace('\n', " ")
}

#[cfg(test)]
mod tests;
