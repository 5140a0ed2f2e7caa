//! Google Artifact Registry / GCR: an OAuth access token, used with the username
//! `oauth2accesstoken`. The token comes from the metadata server (GKE Workload Identity, GCE) or
//! from a service-account key file through the JWT bearer grant (RFC 7523); on the
//! credential-provider route, from the pulling Pod's own token through workload identity
//! federation (an STS token exchange, then impersonation of the Google service account that
//! Pod's ServiceAccount names).

use std::path::PathBuf;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::Deserialize;

use super::web::{is_host_port, is_safe_url};
use super::{Provider, ProviderError};
use crate::problems::FieldProblems;
use crate::sensitive::Sensitive;

/// The username registries expect with a Google access token.
pub const GCP_USERNAME: &str = "oauth2accesstoken";

/// Default metadata server host; `GCE_METADATA_HOST` (`host[:port]`) overrides it, as Google's
/// own clients do, and `metadataHost` in the config overrides both.
pub const DEFAULT_METADATA_HOST: &str = "metadata.google.internal";

/// Scope asked for with a service-account key.
pub const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// The ServiceAccount annotation naming the Google service account a Pod pulls as (the one
/// GKE Workload Identity uses).
pub const GSA_ANNOTATION: &str = "iam.gke.io/gcp-service-account";
/// Google's STS token-exchange endpoint.
pub const DEFAULT_STS_ENDPOINT: &str = "https://sts.googleapis.com/v1/token";
/// Google's IAM credentials API (service-account impersonation).
pub const DEFAULT_IAM_CREDENTIALS_ENDPOINT: &str = "https://iamcredentials.googleapis.com";

/// Where the access token comes from.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum GcpSource {
    /// The metadata server of the node or of GKE Workload Identity.
    Metadata,
    /// A service-account JSON key file (re-read on every fetch).
    ServiceAccountKey,
    /// Credential-provider route: the pulling Pod's own ServiceAccount token, which the kubelet
    /// passes (KEP-4412), exchanged at Google's STS for the `workloadIdentityProvider`, then used
    /// to impersonate the Google service account the Pod's ServiceAccount names in
    /// [`GSA_ANNOTATION`].
    PodWorkloadIdentity,
}

/// `provider:` of `type: gcp`.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GcpConfig {
    pub source: GcpSource,
    /// `host[:port]` of the metadata server (source `metadata` only).
    pub metadata_host: Option<String>,
    /// Path of the JSON key file (source `serviceAccountKey` only).
    pub key_file: Option<PathBuf>,
    /// The workload identity pool provider, `//iam.googleapis.com/projects/NUMBER/locations/
    /// global/workloadIdentityPools/POOL/providers/PROVIDER`: the STS audience (source
    /// `podWorkloadIdentity` only).
    pub workload_identity_provider: Option<String>,
    /// The STS token endpoint; Google's by default (source `podWorkloadIdentity` only).
    pub sts_endpoint: Option<String>,
    /// The IAM credentials API base URL; Google's by default (source `podWorkloadIdentity`
    /// only).
    pub iam_credentials_endpoint: Option<String>,
}

impl GcpConfig {
    /// Checks that the fields fit the source; fields are relative to `provider`.
    pub fn validate(&self, problems: &mut FieldProblems) {
        if self.source != GcpSource::PodWorkloadIdentity {
            for (field, set) in [
                (
                    "workloadIdentityProvider",
                    self.workload_identity_provider.is_some(),
                ),
                ("stsEndpoint", self.sts_endpoint.is_some()),
                (
                    "iamCredentialsEndpoint",
                    self.iam_credentials_endpoint.is_some(),
                ),
            ] {
                if set {
                    problems.push(field, "only used with `source: podWorkloadIdentity`");
                }
            }
        }
        match self.source {
            GcpSource::PodWorkloadIdentity => {
                for (field, set) in [
                    ("keyFile", self.key_file.is_some()),
                    ("metadataHost", self.metadata_host.is_some()),
                ] {
                    if set {
                        problems.push(field, "not used with `source: podWorkloadIdentity`");
                    }
                }
                match self.workload_identity_provider.as_deref() {
                    None => problems.push(
                        "workloadIdentityProvider",
                        "required with `source: podWorkloadIdentity`: //iam.googleapis.com/projects/NUMBER/locations/global/workloadIdentityPools/POOL/providers/PROVIDER",
                    ),
                    Some(p) if !is_pool_provider(p) => problems.push(
                        "workloadIdentityProvider",
                        format!(
                            "`{p}` is not //iam.googleapis.com/projects/NUMBER/locations/global/workloadIdentityPools/POOL/providers/PROVIDER"
                        ),
                    ),
                    Some(_) => {}
                }
                for (field, value) in [
                    ("stsEndpoint", &self.sts_endpoint),
                    ("iamCredentialsEndpoint", &self.iam_credentials_endpoint),
                ] {
                    if let Some(v) = value
                        && !url::Url::parse(v).is_ok_and(|u| is_safe_url(&u))
                    {
                        problems.push(
                            field,
                            format!("`{v}` is not an https URL (http only on loopback)"),
                        );
                    }
                }
            }
            GcpSource::Metadata => {
                if self.key_file.is_some() {
                    problems.push("keyFile", "only used with `source: serviceAccountKey`");
                }
                if let Some(host) = &self.metadata_host
                    && !is_host_port(host)
                {
                    problems.push(
                        "metadataHost",
                        format!("`{host}` is not `host[:port]` (no scheme, no path)"),
                    );
                }
            }
            GcpSource::ServiceAccountKey => {
                if self.metadata_host.is_some() {
                    problems.push("metadataHost", "only used with `source: metadata`");
                }
                match &self.key_file {
                    None => problems.push("keyFile", "required with `source: serviceAccountKey`"),
                    Some(p) if !p.is_absolute() => {
                        problems.push("keyFile", "must be an absolute path");
                    }
                    Some(p) => problems.require_file("keyFile", p),
                }
            }
        }
    }

    /// Builds the provider. No network call and no file read happen here: both happen on fetch.
    pub async fn build(&self) -> Result<Arc<dyn Provider>, ProviderError> {
        self.build_for_pod(None, &std::collections::BTreeMap::new())
            .await
    }

    /// Builds the provider for one credential-provider request: with `source:
    /// podWorkloadIdentity`, the pulling Pod's token and its ServiceAccount's annotations are
    /// the identity (without them, fetching says what is missing).
    pub async fn build_for_pod(
        &self,
        pod_token: Option<&Sensitive>,
        annotations: &std::collections::BTreeMap<String, String>,
    ) -> Result<Arc<dyn Provider>, ProviderError> {
        #[cfg(feature = "gcp")]
        {
            client::build(self, pod_token, annotations).await
        }
        #[cfg(not(feature = "gcp"))]
        {
            let _ = (pod_token, annotations);
            Err(ProviderError::new(
                super::ErrorCategory::LocalInput,
                "pullkeeper was built without the `gcp` feature",
            ))
        }
    }
}

/// `//iam.googleapis.com/projects/NUMBER/locations/global/workloadIdentityPools/POOL/providers/ID`.
fn is_pool_provider(p: &str) -> bool {
    let Some(rest) = p.strip_prefix("//iam.googleapis.com/projects/") else {
        return false;
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let name = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    matches!(
        parts.as_slice(),
        [number, "locations", location, "workloadIdentityPools", pool, "providers", id]
            if number.bytes().all(|b| b.is_ascii_digit()) && !number.is_empty()
                && name(location) && name(pool) && name(id)
    )
}

/// A Google service account's email.
#[cfg(feature = "gcp")]
fn is_service_account_email(s: &str) -> bool {
    s.split_once('@').is_some_and(|(name, domain)| {
        !name.is_empty() && domain.contains('.') && !s.contains(['/', ':', ' '])
    })
}

#[cfg(feature = "gcp")]
mod client {
    //! Fetching the access token.

    use std::fmt;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::time::Duration;

    use async_trait::async_trait;
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Serialize};

    use super::{
        CLOUD_PLATFORM_SCOPE, DEFAULT_IAM_CREDENTIALS_ENDPOINT, DEFAULT_METADATA_HOST,
        DEFAULT_STS_ENDPOINT, GCP_USERNAME, GSA_ANNOTATION, GcpConfig, GcpSource,
        is_service_account_email,
    };
    use crate::credential::{Credential, Login};
    use crate::providers::web::{self, ClientOptions, is_safe_url, json_answer, json_detail};
    use crate::providers::{ErrorCategory, Provider, ProviderError, pod_annotation, pod_token};
    use crate::sensitive::Sensitive;

    const TIMEOUT: Duration = Duration::from_secs(30);

    pub(super) async fn build(
        config: &GcpConfig,
        pod_token: Option<&Sensitive>,
        annotations: &std::collections::BTreeMap<String, String>,
    ) -> Result<Arc<dyn Provider>, ProviderError> {
        let source = match config.source {
            GcpSource::PodWorkloadIdentity => Source::Pod(Box::new(PodIdentity {
                sts: config
                    .sts_endpoint
                    .clone()
                    .unwrap_or_else(|| DEFAULT_STS_ENDPOINT.to_string()),
                iam: config
                    .iam_credentials_endpoint
                    .clone()
                    .unwrap_or_else(|| DEFAULT_IAM_CREDENTIALS_ENDPOINT.to_string()),
                audience: config
                    .workload_identity_provider
                    .clone()
                    .unwrap_or_default(),
                service_account: annotations.get(GSA_ANNOTATION).cloned(),
                token: pod_token.cloned(),
            })),
            GcpSource::Metadata => {
                let host = config
                    .metadata_host
                    .clone()
                    .or_else(|| {
                        std::env::var("GCE_METADATA_HOST")
                            .ok()
                            .filter(|h| !h.is_empty())
                    })
                    .unwrap_or_else(|| DEFAULT_METADATA_HOST.to_string());
                Source::Metadata {
                    url: format!(
                        "http://{host}/computeMetadata/v1/instance/service-accounts/default/token"
                    ),
                }
            }
            GcpSource::ServiceAccountKey => Source::Key {
                file: config.key_file.clone().ok_or_else(|| {
                    ProviderError::new(ErrorCategory::LocalInput, "no key file configured")
                })?,
            },
        };
        let http = web::client(ClientOptions {
            // The metadata server is on the node's link: never through a proxy.
            direct: matches!(source, Source::Metadata { .. }),
            ..ClientOptions::with_timeout(TIMEOUT)
        })
        .await?;
        Ok(Arc::new(GcpProvider { http, source }))
    }

    enum Source {
        Metadata { url: String },
        Key { file: PathBuf },
        Pod(Box<PodIdentity>),
    }

    /// Workload identity federation for one pulling Pod.
    struct PodIdentity {
        sts: String,
        iam: String,
        audience: String,
        /// The Google service account the Pod's ServiceAccount names.
        service_account: Option<String>,
        token: Option<Sensitive>,
    }

    /// The IAM credentials API's `generateAccessToken` answer.
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct ImpersonatedToken {
        access_token: String,
        expire_time: Option<DateTime<Utc>>,
    }

    struct GcpProvider {
        http: reqwest::Client,
        source: Source,
    }

    impl fmt::Debug for GcpProvider {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let mut d = f.debug_struct("GcpProvider");
            match &self.source {
                Source::Metadata { url } => d.field("metadata", url),
                Source::Key { file } => d.field("key_file", file),
                Source::Pod(pod) => d.field("workload_identity_provider", &pod.audience),
            };
            d.finish_non_exhaustive()
        }
    }

    /// The token answer of both the metadata server and the OAuth token endpoint.
    #[derive(Deserialize)]
    struct TokenAnswer {
        access_token: String,
        expires_in: Option<i64>,
    }

    /// The fields of a service-account key file that the JWT bearer grant needs.
    #[derive(Deserialize)]
    struct KeyFile {
        client_email: String,
        private_key: String,
        private_key_id: Option<String>,
        token_uri: String,
    }

    #[derive(Serialize)]
    struct Claims<'a> {
        iss: &'a str,
        scope: &'a str,
        aud: &'a str,
        iat: i64,
        exp: i64,
    }

    #[async_trait]
    impl Provider for GcpProvider {
        async fn fetch(&self) -> Result<Credential, ProviderError> {
            let (token, expires_at) = match &self.source {
                Source::Metadata { url } => self.token_from_metadata(url).await?,
                Source::Key { file } => self.token_from_key(file).await?,
                Source::Pod(pod) => self.token_for_pod(pod).await?,
            };
            Ok(Credential {
                logins: vec![Login {
                    server: None,
                    username: GCP_USERNAME.to_string(),
                    password: token,
                }],
                expires_at,
            })
        }
    }

    impl GcpProvider {
        /// The STS exchange of the Pod's token, then the impersonation of the service account
        /// its ServiceAccount names. What is missing is a local error naming it; nothing is
        /// sent then.
        async fn token_for_pod(
            &self,
            pod: &PodIdentity,
        ) -> Result<(Sensitive, Option<DateTime<Utc>>), ProviderError> {
            let token = pod_token(
                pod.token.as_ref(),
                "`source: podWorkloadIdentity`",
                "the pool provider's audience",
            )?;
            let service_account = pod_annotation(
                pod.service_account.as_deref(),
                GSA_ANNOTATION,
                "no Google service account to pull as",
            )?;
            if !is_service_account_email(service_account) {
                return Err(ProviderError::new(
                    ErrorCategory::LocalInput,
                    format!(
                        "annotation `{GSA_ANNOTATION}` is `{service_account}`, not a service account email"
                    ),
                ));
            }
            let what = "Google's STS token exchange";
            let resp = self
                .http
                .post(&pod.sts)
                .form(&[
                    (
                        "grant_type",
                        "urn:ietf:params:oauth:grant-type:token-exchange",
                    ),
                    ("audience", pod.audience.as_str()),
                    ("scope", CLOUD_PLATFORM_SCOPE),
                    (
                        "requested_token_type",
                        "urn:ietf:params:oauth:token-type:access_token",
                    ),
                    ("subject_token", token.expose().trim()),
                    ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
                ])
                .send()
                .await
                .map_err(|e| ProviderError::from_reqwest(e, what))?;
            let (federated, _) = token_from(resp, what).await?;
            let what = format!("the impersonation of {service_account}");
            let url = format!(
                "{}/v1/projects/-/serviceAccounts/{service_account}:generateAccessToken",
                pod.iam.trim_end_matches('/')
            );
            let resp = self
                .http
                .post(url)
                .bearer_auth(federated.expose())
                .json(&serde_json::json!({ "scope": [CLOUD_PLATFORM_SCOPE] }))
                .send()
                .await
                .map_err(|e| ProviderError::from_reqwest(e, &what))?;
            let answer: ImpersonatedToken = json_answer(resp, &what).await?;
            if answer.access_token.trim().is_empty() {
                return Err(ProviderError::new(
                    ErrorCategory::BadResponse,
                    format!("{what} answered an empty accessToken"),
                ));
            }
            Ok((Sensitive::new(answer.access_token), answer.expire_time))
        }

        async fn token_from_metadata(
            &self,
            url: &str,
        ) -> Result<(Sensitive, Option<DateTime<Utc>>), ProviderError> {
            let what = "the GCP metadata server";
            let resp = self
                .http
                .get(url)
                .header("Metadata-Flavor", "Google")
                .send()
                .await
                .map_err(|e| ProviderError::from_reqwest(e, what))?;
            token_from(resp, what).await
        }

        async fn token_from_key(
            &self,
            file: &Path,
        ) -> Result<(Sensitive, Option<DateTime<Utc>>), ProviderError> {
            let local = |msg: String| ProviderError::new(ErrorCategory::LocalInput, msg);
            let text = tokio::fs::read(file)
                .await
                .map_err(|e| local(format!("cannot read key file {}: {e}", file.display())))?;
            let key: KeyFile = serde_json::from_slice(&text).map_err(|e| {
                local(format!(
                    "key file {} is not a service-account key: {}",
                    file.display(),
                    json_detail(&e)
                ))
            })?;
            let token_uri = url::Url::parse(&key.token_uri)
                .ok()
                .filter(is_safe_url)
                .ok_or_else(|| {
                    local(format!(
                        "key file {}: token_uri must be an https URL",
                        file.display()
                    ))
                })?;
            let signing_key = jsonwebtoken::EncodingKey::from_rsa_pem(key.private_key.as_bytes())
                .map_err(|_| {
                local(format!(
                    "key file {}: private_key is not an RSA key in PEM",
                    file.display()
                ))
            })?;
            let iat = Utc::now().timestamp();
            let claims = Claims {
                iss: &key.client_email,
                scope: CLOUD_PLATFORM_SCOPE,
                aud: &key.token_uri,
                iat,
                exp: iat + 3600,
            };
            let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
            header.kid = key.private_key_id.clone();
            let assertion = jsonwebtoken::encode(&header, &claims, &signing_key).map_err(|e| {
                local(format!(
                    "cannot sign the token request with key file {}: {e}",
                    file.display()
                ))
            })?;
            let what = format!("the GCP token endpoint {}", web::describe_url(&token_uri));
            let resp = self
                .http
                .post(token_uri)
                .form(&[
                    ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                    ("assertion", assertion.as_str()),
                ])
                .send()
                .await
                .map_err(|e| ProviderError::from_reqwest(e, &what))?;
            token_from(resp, &what).await
        }
    }

    async fn token_from(
        resp: reqwest::Response,
        what: &str,
    ) -> Result<(Sensitive, Option<DateTime<Utc>>), ProviderError> {
        let received = Utc::now();
        let answer: TokenAnswer = json_answer(resp, what).await?;
        if answer.access_token.trim().is_empty() {
            return Err(ProviderError::new(
                ErrorCategory::BadResponse,
                format!("{what} answered an empty access_token"),
            ));
        }
        let expires_at = answer
            .expires_in
            .filter(|s| *s > 0)
            .map(|s| received + chrono::Duration::seconds(s));
        Ok((Sensitive::new(answer.access_token), expires_at))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn problems_of(yaml: &str) -> Vec<String> {
        let c: GcpConfig = serde_yaml_ng::from_str(yaml).expect("parses");
        let mut p = FieldProblems::new(Path::new("g.yaml"));
        p.scoped("provider", |p| c.validate(p));
        p.into_vec().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn both_sources_parse_and_validate() {
        assert!(problems_of("source: metadata").is_empty());
        assert!(problems_of("source: metadata\nmetadataHost: 127.0.0.1:8080").is_empty());
        assert!(
            problems_of("source: serviceAccountKey\nkeyFile: /var/run/gcp/key.json").is_empty()
        );
    }

    #[test]
    fn fields_that_do_not_fit_the_source_are_all_reported() {
        assert_eq!(
            problems_of("source: metadata\nkeyFile: /k.json\nmetadataHost: http://x/"),
            [
                "g.yaml: provider.keyFile: only used with `source: serviceAccountKey`",
                "g.yaml: provider.metadataHost: `http://x/` is not `host[:port]` (no scheme, no path)",
            ]
        );
        assert_eq!(
            problems_of("source: serviceAccountKey\nmetadataHost: x"),
            [
                "g.yaml: provider.metadataHost: only used with `source: metadata`",
                "g.yaml: provider.keyFile: required with `source: serviceAccountKey`",
            ]
        );
        assert_eq!(
            problems_of("source: serviceAccountKey\nkeyFile: key.json"),
            ["g.yaml: provider.keyFile: must be an absolute path"]
        );
    }

    #[test]
    fn pod_workload_identity_needs_its_pool_provider_and_only_its_fields() {
        let pool = "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/k8s/providers/cluster-a";
        assert!(
            problems_of(&format!(
                "source: podWorkloadIdentity\nworkloadIdentityProvider: {pool}\nstsEndpoint: http://127.0.0.1:1/v1/token"
            ))
            .is_empty()
        );
        assert_eq!(
            problems_of("source: podWorkloadIdentity\nkeyFile: /k.json"),
            [
                "g.yaml: provider.keyFile: not used with `source: podWorkloadIdentity`",
                "g.yaml: provider.workloadIdentityProvider: required with `source: podWorkloadIdentity`: //iam.googleapis.com/projects/NUMBER/locations/global/workloadIdentityPools/POOL/providers/PROVIDER",
            ]
        );
        assert_eq!(
            problems_of(
                "source: podWorkloadIdentity\nworkloadIdentityProvider: projects/1/pools/x\niamCredentialsEndpoint: http://example.com"
            ),
            [
                "g.yaml: provider.workloadIdentityProvider: `projects/1/pools/x` is not //iam.googleapis.com/projects/NUMBER/locations/global/workloadIdentityPools/POOL/providers/PROVIDER",
                "g.yaml: provider.iamCredentialsEndpoint: `http://example.com` is not an https URL (http only on loopback)",
            ]
        );
        assert_eq!(
            problems_of(&format!(
                "source: metadata\nworkloadIdentityProvider: {pool}"
            )),
            [
                "g.yaml: provider.workloadIdentityProvider: only used with `source: podWorkloadIdentity`"
            ]
        );
    }

    #[test]
    fn unknown_sources_and_fields_are_refused() {
        assert!(serde_yaml_ng::from_str::<GcpConfig>("source: workload").is_err());
        assert!(serde_yaml_ng::from_str::<GcpConfig>("source: metadata\nscope: x").is_err());
        assert!(serde_yaml_ng::from_str::<GcpConfig>("{}").is_err());
    }

    #[cfg(not(feature = "gcp"))]
    #[tokio::test]
    async fn building_without_the_feature_says_so() {
        let c: GcpConfig = serde_yaml_ng::from_str("source: metadata").expect("parses");
        let err = c.build().await.expect_err("no feature");
        assert_eq!(err.category, crate::providers::ErrorCategory::LocalInput);
        assert_eq!(
            err.message,
            "pullkeeper was built without the `gcp` feature"
        );
    }
}
