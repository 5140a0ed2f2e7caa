//! Google Artifact Registry / GCR: an OAuth access token, used with the username
//! `oauth2accesstoken`. The token comes from the metadata server (GKE Workload Identity, GCE) or
//! from a service-account key file through the JWT bearer grant (RFC 7523).
//!
//! Also home of the small HTTP helpers shared by the OAuth-speaking providers (GCP and Azure):
//! turning a failed answer into a [`ProviderError`] without ever echoing a body.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

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
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum GcpSource {
    /// The metadata server of the node or of GKE Workload Identity.
    Metadata,
    /// A service-account JSON key file (re-read on every fetch).
    ServiceAccountKey,
}

/// `provider:` of `type: gcp`.
#[derive(Clone, Debug, Deserialize)]
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
            client::build(self)
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

/// `host`, `host:port`, `[::1]:port`: something that can follow `http://` with nothing else.
pub(crate) fn is_host_port(s: &str) -> bool {
    !s.is_empty()
        && !s.contains(['/', '@', '?', '#', ' '])
        && url::Url::parse(&format!("http://{s}/"))
            .is_ok_and(|u| u.host().is_some() && u.path() == "/")
}

/// Whether `host[:port]` names the loopback interface.
pub(crate) fn is_loopback_host(host_port: &str) -> bool {
    url::Url::parse(&format!("http://{host_port}/")).is_ok_and(|u| match u.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    })
}

/// Whether a URL may carry a secret: https anywhere, plain http only to loopback.
pub(crate) fn is_safe_url(url: &url::Url) -> bool {
    match url.scheme() {
        "https" => url.host().is_some(),
        "http" => match url.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(d)) => d == "localhost",
            None => false,
        },
        _ => false,
    }
}

#[cfg(any(feature = "gcp", feature = "azure"))]
pub(super) mod answer {
    //! Failed HTTP answers → [`ProviderError`], shared by the GCP and Azure providers.

    use std::time::Duration;

    use chrono::{DateTime, Utc};
    use serde::Deserialize;

    use crate::providers::{ErrorCategory, ProviderError};

    /// An OAuth 2 error body (RFC 6749 §5.2). Only the `error` code is ever repeated; the
    /// description is free text and is reduced to an Entra `AADSTS…` code at most.
    #[derive(Deserialize)]
    struct OAuthError {
        error: Option<String>,
        error_description: Option<String>,
    }

    /// Reads a non-success answer and says what failed, with the status, the OAuth error code
    /// when there is one, and `Retry-After` when the server asked us to wait.
    pub(crate) async fn failed(resp: reqwest::Response, what: &str) -> ProviderError {
        let status = resp.status().as_u16();
        let retry_after = retry_after(resp.headers(), Utc::now());
        let body = resp.bytes().await.unwrap_or_default();
        let oauth = serde_json::from_slice::<OAuthError>(&body).ok();
        let code = oauth.as_ref().and_then(|o| o.error.as_deref()).filter(|c| {
            c.len() <= 64
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
        let aadsts = oauth
            .as_ref()
            .and_then(|o| o.error_description.as_deref())
            .and_then(aadsts_code);
        let mut err = ProviderError::from_status(status, what);
        if status == 400
            && code.is_some_and(|c| {
                matches!(
                    c,
                    "invalid_grant"
                        | "invalid_client"
                        | "unauthorized_client"
                        | "access_denied"
                        | "invalid_scope"
                )
            })
        {
            err.category = ErrorCategory::AuthDenied;
        }
        if let Some(code) = code {
            err.message.push_str(&format!(" ({code}"));
            if let Some(aadsts) = aadsts {
                err.message.push_str(&format!(", {aadsts}"));
            }
            err.message.push(')');
        }
        err.retry_after = retry_after;
        err
    }

    /// `AADSTS700024: Client assertion is not within its valid time range…` → `AADSTS700024`.
    fn aadsts_code(description: &str) -> Option<&str> {
        let rest = description.strip_prefix("AADSTS")?;
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        (digits > 0).then(|| &description[..6 + digits])
    }

    /// `Retry-After` as seconds or as an HTTP date (relative to `now`).
    pub(crate) fn retry_after(
        headers: &reqwest::header::HeaderMap,
        now: DateTime<Utc>,
    ) -> Option<Duration> {
        let value = headers
            .get(reqwest::header::RETRY_AFTER)?
            .to_str()
            .ok()?
            .trim();
        if let Ok(secs) = value.parse::<u64>() {
            return Some(Duration::from_secs(secs));
        }
        let at = DateTime::parse_from_rfc2822(value)
            .ok()?
            .with_timezone(&Utc);
        Some((at - now).to_std().unwrap_or(Duration::ZERO))
    }

    /// A JSON body that does not have the expected shape.
    pub(crate) fn malformed(err: &serde_json::Error, what: &str) -> ProviderError {
        ProviderError::new(
            ErrorCategory::BadResponse,
            format!("{what} answered a malformed body: {}", json_detail(err)),
        )
    }

    /// What is wrong with a JSON document. serde's messages can quote values (tokens, keys),
    /// so only a missing field's name or the position is kept.
    pub(crate) fn json_detail(err: &serde_json::Error) -> String {
        let detail = err.to_string();
        if detail.starts_with("missing field") {
            detail
        } else {
            format!(
                "unexpected content at line {} column {}",
                err.line(),
                err.column()
            )
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn retry_after_is_read_as_seconds_or_a_date() {
            let mut h = reqwest::header::HeaderMap::new();
            let now = DateTime::parse_from_rfc3339("2015-10-21T07:27:00Z")
                .expect("date")
                .with_timezone(&Utc);
            assert_eq!(retry_after(&h, now), None);
            h.insert(reqwest::header::RETRY_AFTER, "7".parse().expect("value"));
            assert_eq!(retry_after(&h, now), Some(Duration::from_secs(7)));
            h.insert(
                reqwest::header::RETRY_AFTER,
                "Wed, 21 Oct 2015 07:28:00 GMT".parse().expect("value"),
            );
            assert_eq!(retry_after(&h, now), Some(Duration::from_secs(60)));
        }

        #[test]
        fn entra_error_codes_are_kept_and_descriptions_dropped() {
            assert_eq!(
                aadsts_code("AADSTS700024: Client assertion is not within its valid time range."),
                Some("AADSTS700024")
            );
            assert_eq!(aadsts_code("token abc is bad"), None);
        }

        #[test]
        fn malformed_bodies_never_quote_values() {
            let err = serde_json::from_str::<OAuthError>(r#"{"error": 12345678}"#)
                .err()
                .expect("wrong type");
            let e = malformed(&err, "token endpoint");
            assert!(!e.message.contains("12345678"), "{}", e.message);
            assert_eq!(e.category, ErrorCategory::BadResponse);
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

    use super::answer::{failed, json_detail, malformed};
    use super::is_safe_url;
    use super::{CLOUD_PLATFORM_SCOPE, DEFAULT_METADATA_HOST, GCP_USERNAME, GcpConfig, GcpSource};
    use crate::credential::{Credential, Login};
    use crate::providers::{ErrorCategory, Provider, ProviderError};
    use crate::sensitive::Sensitive;

    const TIMEOUT: Duration = Duration::from_secs(30);

    pub(super) fn build(config: &GcpConfig) -> Result<Arc<dyn Provider>, ProviderError> {
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
        let mut http = reqwest::Client::builder().timeout(TIMEOUT);
        if matches!(source, Source::Metadata { .. }) {
            // The metadata server is on the node's link: never through a proxy.
            http = http.no_proxy();
        }
        let http = http.build().map_err(|e| {
            ProviderError::new(
                ErrorCategory::LocalInput,
                format!("cannot build the HTTP client: {e}"),
            )
        })?;
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
            d.finish()
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
            let what = format!("the GCP token endpoint {}", token_uri.as_str());
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
        if !resp.status().is_success() {
            return Err(failed(resp, what).await);
        }
        let received = Utc::now();
        let body = resp
            .bytes()
            .await
            .map_err(|e| ProviderError::from_reqwest(e, what))?;
        let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|e| malformed(&e, what))?;
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

    #[test]
    fn host_port_rejects_schemes_and_paths() {
        assert!(is_host_port("metadata.google.internal"));
        assert!(is_host_port("127.0.0.1:8080"));
        assert!(is_host_port("[::1]:80"));
        assert!(!is_host_port("http://x"));
        assert!(!is_host_port("x/y"));
        assert!(!is_host_port(""));
    }

    #[test]
    fn secrets_go_over_https_or_to_loopback_only() {
        let ok = |s: &str| is_safe_url(&url::Url::parse(s).expect("url"));
        assert!(ok("https://oauth2.googleapis.com/token"));
        assert!(ok("http://127.0.0.1:8080/token"));
        assert!(ok("http://[::1]:8080/token"));
        assert!(ok("http://localhost:8080/token"));
        assert!(!ok("http://example.com/token"));
        assert!(!ok("ftp://127.0.0.1/token"));
        assert!(is_loopback_host("127.0.0.1:5000") && !is_loopback_host("10.0.0.1:5000"));
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
