//! Google Artifact Registry / GCR: an OAuth access token, used with the username
//! `oauth2accesstoken`. The token comes from the metadata server (GKE Workload Identity, GCE) or
//! from a service-account key file through the JWT bearer grant (RFC 7523).

use std::path::PathBuf;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::Deserialize;

use super::web::is_host_port;
use super::{Provider, ProviderError};
use crate::problems::FieldProblems;

/// The username registries expect with a Google access token.
pub const GCP_USERNAME: &str = "oauth2accesstoken";

/// Default metadata server host; `GCE_METADATA_HOST` (`host[:port]`) overrides it, as Google's
/// own clients do, and `metadataHost` in the config overrides both.
pub const DEFAULT_METADATA_HOST: &str = "metadata.google.internal";

/// Scope asked for with a service-account key.
pub const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// Where the access token comes from.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum GcpSource {
    /// The metadata server of the node or of GKE Workload Identity.
    Metadata,
    /// A service-account JSON key file (re-read on every fetch).
    ServiceAccountKey,
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
}

impl GcpConfig {
    /// Checks that the fields fit the source; fields are relative to `provider`.
    pub fn validate(&self, problems: &mut FieldProblems) {
        match self.source {
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
        #[cfg(feature = "gcp")]
        {
            client::build(self).await
        }
        #[cfg(not(feature = "gcp"))]
        {
            Err(ProviderError::new(
                super::ErrorCategory::LocalInput,
                "pullkeeper was built without the `gcp` feature",
            ))
        }
    }
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

    use super::{CLOUD_PLATFORM_SCOPE, DEFAULT_METADATA_HOST, GCP_USERNAME, GcpConfig, GcpSource};
    use crate::credential::{Credential, Login};
    use crate::providers::web::{self, ClientOptions, is_safe_url, json_answer, json_detail};
    use crate::providers::{ErrorCategory, Provider, ProviderError};
    use crate::sensitive::Sensitive;

    const TIMEOUT: Duration = Duration::from_secs(30);

    pub(super) async fn build(config: &GcpConfig) -> Result<Arc<dyn Provider>, ProviderError> {
        let source = match config.source {
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
