//! Plumbing shared by everything in pullkeeper that speaks HTTP to a credential source or a
//! registry (the `http`, `gcp` and `azure` providers and [`crate::verify`]): the one client
//! builder, CA-file loading, how an answer becomes a [`ProviderError`], `Retry-After`, which
//! URLs may carry a secret, and reading a JWT's `exp`.
//!
//! Nothing here ever puts a body, a token or a URL's query into a message.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde_json::Value;
use url::{Host, Url};

use super::{ErrorCategory, ProviderError};

/// Sent with every request, so endpoint operators can tell pullkeeper's calls apart.
const USER_AGENT: &str = concat!("pullkeeper/", env!("CARGO_PKG_VERSION"));

/// Larger answers are refused rather than buffered: a credential fits in a few kilobytes.
pub(crate) const MAX_BODY_BYTES: usize = 1024 * 1024;

// ---- the client ----

/// What differs between the HTTP clients pullkeeper builds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ClientOptions<'a> {
    /// Whole-request timeout.
    pub timeout: Duration,
    /// PEM bundle of extra roots trusted besides the built-in ones.
    pub ca_file: Option<&'a Path>,
    /// Never through a proxy: for link-local metadata endpoints on the node.
    pub direct: bool,
}

impl ClientOptions<'_> {
    /// A client with `timeout`, no extra CA, proxies as the environment says.
    pub fn with_timeout(timeout: Duration) -> Self {
        Self {
            timeout,
            ca_file: None,
            direct: false,
        }
    }
}

/// Why a client could not be built; every variant is a local problem. Callers keep only the
/// message (a [`ProviderError`] or a verification reason), so the cause is part of it rather
/// than a chained source.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    #[error("cannot read CA file {}: {cause}", path.display())]
    ReadCaFile {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("CA file {} holds no PEM certificate", path.display())]
    NoCertificate { path: PathBuf },
    #[error("cannot build the HTTP client: {0}")]
    Build(reqwest::Error),
}

impl From<ClientError> for ProviderError {
    fn from(err: ClientError) -> Self {
        ProviderError::new(ErrorCategory::LocalInput, err.to_string())
    }
}

/// The one way pullkeeper builds an HTTP client: user agent, timeout, extra roots from a CA
/// file (read now; a file without a certificate is an error, not an empty trust list).
pub(crate) async fn client(options: ClientOptions<'_>) -> Result<reqwest::Client, ClientError> {
    let mut builder = reqwest::Client::builder()
        .timeout(options.timeout)
        .user_agent(USER_AGENT);
    if let Some(path) = options.ca_file {
        builder = builder.tls_certs_merge(load_ca_file(path).await?);
    }
    if options.direct {
        builder = builder.no_proxy();
    }
    builder.build().map_err(ClientError::Build)
}

/// The certificates of a PEM bundle; at least one, or an error naming the file.
async fn load_ca_file(path: &Path) -> Result<Vec<reqwest::Certificate>, ClientError> {
    let pem = tokio::fs::read(path)
        .await
        .map_err(|cause| ClientError::ReadCaFile {
            path: path.to_path_buf(),
            cause,
        })?;
    reqwest::Certificate::from_pem_bundle(&pem)
        .ok()
        .filter(|certs| !certs.is_empty())
        .ok_or_else(|| ClientError::NoCertificate {
            path: path.to_path_buf(),
        })
}

// ---- answers → ProviderError ----

impl ProviderError {
    /// The category of a failed HTTP status.
    pub fn from_status(status: u16, what: &str) -> Self {
        let category = match status {
            401 | 403 => ErrorCategory::AuthDenied,
            429 => ErrorCategory::Throttled,
            _ => ErrorCategory::BadResponse,
        };
        Self::new(category, format!("{what} answered HTTP {status}"))
    }

    /// The category of a transport error from reqwest (never includes a body). `what` names the
    /// request (method and URL without query), since the URL reqwest holds may carry a token.
    pub fn from_reqwest(err: reqwest::Error, what: &str) -> Self {
        if let Some(status) = err.status() {
            return Self::from_status(status.as_u16(), what);
        }
        let transport = err.is_timeout() || err.is_connect() || err.is_request();
        let category = if transport {
            ErrorCategory::Unreachable
        } else {
            ErrorCategory::BadResponse
        };
        let err = err.without_url();
        // The causes of a transport failure (refused, DNS, TLS, timed out) are what an operator
        // needs. Decode and body errors keep only reqwest's summary: serde's messages may quote
        // values from the body.
        let message = if transport && std::error::Error::source(&err).is_some() {
            format!("{what}: {err}: {}", Causes(&err))
        } else {
            format!("{what}: {err}")
        };
        Self::new(category, message)
    }
}

/// The sources of an error (not the error itself), joined by `: `; empty when it has none.
pub(crate) struct Causes<'a>(pub &'a dyn std::error::Error);

impl fmt::Display for Causes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut source = self.0.source();
        let mut first = true;
        while let Some(cause) = source {
            if !first {
                f.write_str(": ")?;
            }
            first = false;
            write!(f, "{cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// A non-success answer without looking at its body: the status's category, and the delay
/// the server asked for.
pub(crate) fn status_error(
    status: StatusCode,
    headers: &HeaderMap,
    what: &str,
    now: DateTime<Utc>,
) -> ProviderError {
    let mut err = ProviderError::from_status(status.as_u16(), what);
    err.retry_after = retry_after(headers, now);
    err
}

/// The delay a 429 or 503 answer asks for: delta-seconds or an HTTP date (relative to `now`).
pub(crate) fn retry_after(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let text = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(text).ok()?.with_timezone(&Utc);
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

/// The body of a successful answer, refused above [`MAX_BODY_BYTES`].
pub(crate) async fn read_body(
    mut response: reqwest::Response,
    what: &str,
) -> Result<Vec<u8>, ProviderError> {
    let mut bytes = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| ProviderError::from_reqwest(e, what))?
    {
        if bytes.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(ProviderError::new(
                ErrorCategory::BadResponse,
                format!("the response from {what} is larger than {MAX_BODY_BYTES} bytes"),
            ));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

#[cfg(any(feature = "gcp", feature = "azure"))]
pub(crate) use oauth::{json_answer, json_detail};

#[cfg(any(feature = "gcp", feature = "azure"))]
mod oauth {
    //! The answers of OAuth-speaking endpoints (Google's metadata server and token endpoint,
    //! Entra ID, the ACR exchange).

    use chrono::Utc;
    use serde::Deserialize;
    use serde::de::DeserializeOwned;

    use super::{read_body, status_error};
    use crate::providers::{ErrorCategory, ProviderError};

    /// An OAuth 2 error body (RFC 6749 §5.2). Only the `error` code is ever repeated; the
    /// description is free text and is reduced to an Entra `AADSTS…` code at most.
    #[derive(Deserialize)]
    pub(super) struct OAuthError {
        error: Option<String>,
        error_description: Option<String>,
    }

    /// A successful answer's JSON body, or what failed.
    pub(crate) async fn json_answer<T: DeserializeOwned>(
        resp: reqwest::Response,
        what: &str,
    ) -> Result<T, ProviderError> {
        if !resp.status().is_success() {
            return Err(failed(resp, what).await);
        }
        let body = read_body(resp, what).await?;
        serde_json::from_slice(&body).map_err(|e| malformed(&e, what))
    }

    /// Reads a non-success answer and says what failed, with the status, the OAuth error code
    /// when there is one, and `Retry-After` when the server asked us to wait.
    async fn failed(resp: reqwest::Response, what: &str) -> ProviderError {
        let status = resp.status();
        let mut err = status_error(status, resp.headers(), what, Utc::now());
        let body = read_body(resp, what).await.unwrap_or_default();
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
        if status == reqwest::StatusCode::BAD_REQUEST
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
            err.message.push_str(" (");
            err.message.push_str(code);
            if let Some(aadsts) = aadsts {
                err.message.push_str(", ");
                err.message.push_str(aadsts);
            }
            err.message.push(')');
        }
        err
    }

    /// `AADSTS700024: Client assertion is not within its valid time range…` → `AADSTS700024`.
    pub(super) fn aadsts_code(description: &str) -> Option<&str> {
        let rest = description.strip_prefix("AADSTS")?;
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        (digits > 0).then(|| &description[..6 + digits])
    }

    /// A JSON body that does not have the expected shape.
    pub(super) fn malformed(err: &serde_json::Error, what: &str) -> ProviderError {
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
}

// ---- URLs ----

/// `host`, `host:port`, `[::1]:port`: something that can follow `http://` with nothing else.
pub(crate) fn is_host_port(s: &str) -> bool {
    !s.is_empty()
        && !s.contains(['/', '@', '?', '#', ' '])
        && Url::parse(&format!("http://{s}/")).is_ok_and(|u| u.host().is_some() && u.path() == "/")
}

/// Whether `host[:port]` names the loopback interface.
pub(crate) fn is_loopback_host(host_port: &str) -> bool {
    Url::parse(&format!("http://{host_port}/")).is_ok_and(|u| is_loopback(u.host().as_ref()))
}

/// Whether a URL may carry a secret: https anywhere, plain http only to loopback.
pub(crate) fn is_safe_url(url: &Url) -> bool {
    match url.scheme() {
        "https" => url.host().is_some(),
        "http" => is_loopback(url.host().as_ref()),
        _ => false,
    }
}

/// An `http://` or `https://` URL with a host.
pub(crate) fn is_http_url(url: &Url) -> bool {
    matches!(url.scheme(), "http" | "https") && url.host().is_some()
}

fn is_loopback(host: Option<&Host<&str>>) -> bool {
    match host {
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        Some(Host::Domain(d)) => *d == "localhost",
        None => false,
    }
}

/// The URL as named in errors and logs: without query, fragment and userinfo, which may carry
/// tokens.
pub(crate) fn describe_url(url: &Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.set_fragment(None);
    // Only fails for URLs that cannot have credentials, which then have none to hide.
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.to_string()
}

// ---- tokens and times ----

/// The `exp` claim of a JWT. The signature is deliberately NOT verified: the token is only read
/// to learn when it runs out, and whoever receives it is what verifies it.
pub(crate) fn jwt_exp(token: &str) -> Option<DateTime<Utc>> {
    let mut parts = token.trim().split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    unix_seconds(claims.get("exp")?.as_f64()?)
}

/// A time given as unix seconds (fractions allowed); `None` for zero, negative or absurd ones.
pub(crate) fn unix_seconds(secs: f64) -> Option<DateTime<Utc>> {
    if !secs.is_finite() || secs <= 0.0 || secs > 1e13 {
        return None;
    }
    DateTime::from_timestamp_millis((secs * 1000.0).round() as i64)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use reqwest::header::HeaderValue;

    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(secs, 0).unwrap()
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h, at(0)), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("120"));
        assert_eq!(retry_after(&h, at(0)), Some(Duration::from_mins(2)));
        // 1_000_000_000 s is Sun, 09 Sep 2001 01:46:40 GMT.
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Sun, 09 Sep 2001 01:47:10 GMT"),
        );
        assert_eq!(
            retry_after(&h, at(1_000_000_000)),
            Some(Duration::from_secs(30))
        );
        h.insert(RETRY_AFTER, HeaderValue::from_static("later"));
        assert_eq!(retry_after(&h, at(0)), None);
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_a_date() {
        let mut h = HeaderMap::new();
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:27:00Z")
            .expect("date")
            .with_timezone(&Utc);
        assert_eq!(retry_after(&h, now), None);
        h.insert(RETRY_AFTER, "7".parse().expect("value"));
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(7)));
        h.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().expect("value"),
        );
        assert_eq!(retry_after(&h, now), Some(Duration::from_mins(1)));
    }

    #[test]
    fn a_status_error_carries_the_retry_after_delay() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("17"));
        let err = status_error(StatusCode::TOO_MANY_REQUESTS, &h, "GET http://h/t", at(0));
        assert_eq!(err.category, ErrorCategory::Throttled);
        assert_eq!(err.retry_after, Some(Duration::from_secs(17)));
        assert_eq!(err.message, "GET http://h/t answered HTTP 429");
    }

    #[cfg(any(feature = "gcp", feature = "azure"))]
    #[test]
    fn entra_error_codes_are_kept_and_descriptions_dropped() {
        assert_eq!(
            oauth::aadsts_code(
                "AADSTS700024: Client assertion is not within its valid time range."
            ),
            Some("AADSTS700024")
        );
        assert_eq!(oauth::aadsts_code("token abc is bad"), None);
    }

    #[cfg(any(feature = "gcp", feature = "azure"))]
    #[test]
    fn malformed_bodies_never_quote_values() {
        let err = serde_json::from_str::<oauth::OAuthError>(r#"{"error": 12345678}"#)
            .err()
            .expect("wrong type");
        let e = oauth::malformed(&err, "token endpoint");
        assert!(!e.message.contains("12345678"), "{}", e.message);
        assert_eq!(e.category, ErrorCategory::BadResponse);
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
        let ok = |s: &str| is_safe_url(&Url::parse(s).expect("url"));
        assert!(ok("https://oauth2.googleapis.com/token"));
        assert!(ok("http://127.0.0.1:8080/token"));
        assert!(ok("http://[::1]:8080/token"));
        assert!(ok("http://localhost:8080/token"));
        assert!(!ok("http://example.com/token"));
        assert!(!ok("ftp://127.0.0.1/token"));
        assert!(is_loopback_host("127.0.0.1:5000") && !is_loopback_host("10.0.0.1:5000"));
    }

    #[test]
    fn url_descriptions_drop_query_fragment_and_userinfo() {
        let url = Url::parse("https://u:p@vault.local:8200/v1/kv/data/ci?token=abc#frag").unwrap();
        assert_eq!(describe_url(&url), "https://vault.local:8200/v1/kv/data/ci");
    }

    #[test]
    fn jwt_expiry_reads_exp_without_verifying() {
        let enc = |s: &str| URL_SAFE_NO_PAD.encode(s);
        let token = format!(
            "{}.{}.sig",
            enc(r#"{"alg":"RS256"}"#),
            enc(r#"{"exp":1700000000}"#)
        );
        assert_eq!(jwt_exp(&token).map(|t| t.timestamp()), Some(1_700_000_000));
        assert_eq!(jwt_exp("not-a-jwt"), None);
        assert_eq!(jwt_exp(&format!("a.{}.c", enc("{}"))), None);
    }

    #[tokio::test]
    async fn a_ca_file_without_a_certificate_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let absent = dir.path().join("absent.pem");
        for path in [junk, absent] {
            let options = ClientOptions {
                ca_file: Some(&path),
                ..ClientOptions::with_timeout(Duration::from_secs(1))
            };
            let err = client(options).await.unwrap_err();
            assert!(
                err.to_string().contains(&path.display().to_string()),
                "{err}"
            );
        }
    }
}
