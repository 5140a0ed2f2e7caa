//! The built `http` provider: the request (headers, body, the endpoint's own credential read
//! anew on every call), its answer read within a size limit, and the mapping applied to it.
//! Errors name the request (method and URL without query) and never quote the body: it may
//! hold the credential itself.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderValue};
use url::Url;

use super::config::{EndpointAuth, HttpConfig};
use super::mapping::ResponseMapping;
use crate::credential::Credential;
use crate::providers::web::{self, ClientOptions, describe_url, read_body, status_error};
use crate::providers::{ErrorCategory, Provider, ProviderError, TextSource, pod_token};
use crate::sensitive::Sensitive;

impl HttpConfig {
    /// Builds the provider: one HTTP client (timeout, extra CA) reused by every fetch. Fails
    /// only on the CA file, which is read now, or on settings `validate` would have refused.
    pub async fn build(&self) -> Result<Arc<dyn Provider>, ProviderError> {
        build(self, None).await
    }

    /// Builds the provider for one credential-provider request, with the pulling Pod's
    /// ServiceAccount token the kubelet passed (used by `auth: podServiceAccountToken`) and
    /// the image's repository (sent as `imageQuery`, when set).
    pub async fn build_for_pod(
        &self,
        pod_token: Option<Sensitive>,
        repository: &str,
    ) -> Result<Arc<dyn Provider>, ProviderError> {
        let mut built = build_provider(self, pod_token).await?;
        if let Some(name) = &self.image_query {
            built.url.query_pairs_mut().append_pair(name, repository);
        }
        Ok(Arc::new(built))
    }
}

/// Builds the provider from a config whose settings parsed (see [`HttpConfig::validate`]).
async fn build(
    config: &HttpConfig,
    pod_token: Option<Sensitive>,
) -> Result<Arc<dyn Provider>, ProviderError> {
    Ok(Arc::new(build_provider(config, pod_token).await?))
}

async fn build_provider(
    config: &HttpConfig,
    pod_token: Option<Sensitive>,
) -> Result<HttpProvider, ProviderError> {
    let (Some(url), Some(method), Some(timeout)) = (
        config.url.value(),
        config.method.value(),
        config.timeout.value(),
    ) else {
        return Err(config_error(
            "the http provider's url, method or timeout is invalid; validating the config names it"
                .to_string(),
        ));
    };
    let what = describe_request(method, url);
    let mut headers = HeaderMap::new();
    headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
    if config.body.is_some() {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    for (name, value) in config.headers.valid() {
        headers.insert(name.clone(), value.clone());
    }
    let client = web::client(ClientOptions {
        ca_file: config.ca_file.as_deref(),
        ..ClientOptions::with_timeout(*timeout)
    })
    .await?;
    Ok(HttpProvider {
        client,
        method: method.clone(),
        url: url.clone(),
        what,
        headers,
        body: config.body.clone(),
        auth: config.auth.clone(),
        pod_token,
        mapping: (*config.response).clone(),
    })
}

/// `METHOD scheme://host[:port]/path`: the request as named in errors and logs.
fn describe_request(method: &reqwest::Method, url: &Url) -> String {
    format!("{method} {}", describe_url(url))
}

fn config_error(message: String) -> ProviderError {
    ProviderError::new(ErrorCategory::LocalInput, message)
}

/// A built `http` provider.
struct HttpProvider {
    client: reqwest::Client,
    method: reqwest::Method,
    url: Url,
    /// The request as named in errors (no query string).
    what: String,
    headers: HeaderMap,
    body: Option<String>,
    auth: EndpointAuth,
    /// The pulling Pod's ServiceAccount token (credential-provider route, KEP-4412).
    pod_token: Option<Sensitive>,
    mapping: ResponseMapping,
}

impl fmt::Debug for HttpProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL's query and the body are left out: either may carry a token.
        f.debug_struct("HttpProvider")
            .field("request", &self.what)
            .finish_non_exhaustive()
    }
}

impl HttpProvider {
    async fn request(&self) -> Result<reqwest::Request, ProviderError> {
        let what = &self.what;
        let mut request = self
            .client
            .request(self.method.clone(), self.url.clone())
            .headers(self.headers.clone());
        if let Some(body) = &self.body {
            request = request.body(body.clone());
        }
        request = match &self.auth {
            EndpointAuth::None => request,
            EndpointAuth::Basic(basic) => {
                let user = read_part(&basic.username, "basic auth username", what).await?;
                let pass = read_part(&basic.password, "basic auth password", what).await?;
                request.basic_auth(user.expose().trim(), Some(pass.expose()))
            }
            EndpointAuth::Bearer(token) => {
                let token = read_part(token, "bearer token", what).await?;
                request.bearer_auth(token.expose().trim())
            }
            EndpointAuth::PodServiceAccountToken => {
                let token = pod_token(
                    self.pod_token.as_ref(),
                    &format!("{what}: `auth: podServiceAccountToken`"),
                    "an audience",
                )?;
                request.bearer_auth(token.expose().trim())
            }
        };
        // Fails only on header values that cannot be sent, i.e. a token with control characters.
        request.build().map_err(|_| {
            config_error(format!(
                "cannot build the request to {what}: the endpoint credential is not a valid header value"
            ))
        })
    }
}

/// Reads one part of the endpoint credential now. An empty one (a projected token not written
/// yet) is a local problem, not something to send and have refused.
async fn read_part(
    source: &TextSource,
    part: &str,
    what: &str,
) -> Result<Sensitive, ProviderError> {
    let text = source.read().await.map_err(|mut e| {
        e.message = format!("cannot read the {part} for {what}: {}", e.message);
        e
    })?;
    if text.is_empty() {
        return Err(config_error(format!("the {part} for {what} is empty")));
    }
    Ok(text)
}

#[async_trait]
impl Provider for HttpProvider {
    async fn fetch(&self) -> Result<Credential, ProviderError> {
        let what = &self.what;
        let request = self.request().await?;
        let response = self
            .client
            .execute(request)
            .await
            .map_err(|e| ProviderError::from_reqwest(e, what))?;
        let received = Utc::now();
        let status = response.status();
        if !status.is_success() {
            return Err(status_error(status, response.headers(), what, received));
        }
        let bytes = read_body(response, what).await?;
        self.mapping.map_body(&bytes, received, what)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use axum::Router;
    use axum::body::{Body, to_bytes};
    use axum::extract::Request;
    use axum::http::{Response, StatusCode};
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use chrono::TimeDelta;
    use serde_json::{Value, json};

    use super::*;
    use crate::providers::http::testing::{
        CANARY_PASSWORD, CANARY_TOKEN, assert_no_canary, at, jwt, parse, problems_of,
    };
    use crate::providers::web::MAX_BODY_BYTES;

    #[test]
    fn request_descriptions_drop_query_fragment_and_userinfo() {
        let url = Url::parse("https://u:p@vault.local:8200/v1/kv/data/ci?token=abc#frag").unwrap();
        assert_eq!(
            describe_request(&reqwest::Method::GET, &url),
            "GET https://vault.local:8200/v1/kv/data/ci"
        );
    }

    #[test]
    fn debug_output_hides_literals_query_and_body() {
        let c = parse(&format!(
            "url: http://h/t?sig={CANARY_TOKEN}\nbody: '{CANARY_TOKEN}'\n\
             headers: {{X-Vault-Token: {CANARY_TOKEN}}}\n\
             response: {{username: {{value: {CANARY_PASSWORD}}}, password: /p}}\n"
        ));
        let config = format!("{c:?}");
        assert!(config.contains("http://h/t"), "{config}");
        assert_no_canary(&config);
        let provider = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(c.build())
            .unwrap();
        let shown = format!("{provider:?}");
        assert_eq!(shown, "HttpProvider { request: \"GET http://h/t\", .. }");
    }

    // ---- against a local HTTP server ----

    /// What the stub server saw of one request.
    #[derive(Clone, Debug)]
    struct Seen {
        method: String,
        authorization: Option<String>,
        content_type: Option<String>,
        custom: Option<String>,
        body: String,
    }

    /// A stub endpoint on 127.0.0.1 answering every request with `status`, `headers` and
    /// `body`, after `delay`. Returns its base URL and the requests it saw.
    async fn stub(
        status: u16,
        headers: &[(&'static str, &'static str)],
        body: String,
        delay: Duration,
    ) -> (String, Arc<Mutex<Vec<Seen>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let headers = headers.to_vec();
        let router = Router::new().fallback(move |req: Request| {
            let (log, headers, body) = (log.clone(), headers.clone(), body.clone());
            async move {
                // A block, so no borrow of the (non-Sync) request lives across an await.
                let mut entry = {
                    let header = |name: &str| {
                        req.headers()
                            .get(name)
                            .map(|v| v.to_str().unwrap().to_string())
                    };
                    Seen {
                        method: req.method().to_string(),
                        authorization: header("authorization"),
                        content_type: header("content-type"),
                        custom: header("x-custom"),
                        body: String::new(),
                    }
                };
                let bytes = to_bytes(req.into_body(), 1 << 20).await.unwrap();
                entry.body = String::from_utf8(bytes.to_vec()).unwrap();
                log.lock().unwrap().push(entry);
                tokio::time::sleep(delay).await;
                let mut response =
                    Response::builder().status(StatusCode::from_u16(status).unwrap());
                for (name, value) in headers {
                    response = response.header(name, value);
                }
                response.body(Body::from(body)).unwrap()
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        (format!("http://{addr}"), seen)
    }

    async fn json_stub(status: u16, body: Value) -> (String, Arc<Mutex<Vec<Seen>>>) {
        stub(status, &[], body.to_string(), Duration::ZERO).await
    }

    /// Parses, validates (must be clean) and builds a provider.
    async fn provider(yaml: &str) -> Arc<dyn Provider> {
        let config = parse(yaml);
        assert_eq!(problems_of(&config), Vec::<String>::new());
        config.build().await.unwrap()
    }

    async fn fetch_err(yaml: &str) -> ProviderError {
        let err = provider(yaml).await.fetch().await.unwrap_err();
        assert_no_canary(&format!("{err} {err:?}"));
        err
    }

    #[tokio::test]
    async fn a_post_with_headers_and_body_maps_username_and_password() {
        let (base, seen) = json_stub(
            200,
            json!({"robot": {"name": "robot$ci", "secret": CANARY_PASSWORD},
                   "registry": "https://harbor.local/"}),
        )
        .await;
        let p = provider(&format!(
            "url: {base}/api/robots?project=ci\nmethod: POST\nheaders: {{X-Custom: yes-1}}\n\
             body: '{{\"duration\": 30}}'\n\
             response: {{username: /robot/name, password: /robot/secret, registry: /registry}}\n"
        ))
        .await;
        let c = p.fetch().await.unwrap();
        assert_eq!(c.logins.len(), 1);
        assert_eq!(c.logins[0].username, "robot$ci");
        assert_eq!(c.logins[0].password.expose(), CANARY_PASSWORD);
        assert_eq!(c.logins[0].server.as_deref(), Some("harbor.local"));
        assert_eq!(c.expires_at, None);
        let seen = seen.lock().unwrap()[0].clone();
        assert_eq!(seen.method, "POST");
        assert_eq!(seen.custom.as_deref(), Some("yes-1"));
        assert_eq!(seen.content_type.as_deref(), Some("application/json"));
        assert_eq!(seen.body, r#"{"duration": 30}"#);
        assert_eq!(seen.authorization, None);
    }

    #[tokio::test]
    async fn an_auth_field_and_each_expiry_kind_come_from_the_response() {
        let token = jwt(&json!({"exp": 1_893_456_000}));
        let (base, _) = json_stub(
            200,
            json!({"auth": STANDARD.encode(format!("svc:{CANARY_PASSWORD}")),
                   "expires_at": "2031-01-01T00:00:00Z", "expires_in": "600", "jwt": token}),
        )
        .await;
        let fetch = |expiry: &'static str| {
            let base = base.clone();
            async move {
                provider(&format!(
                    "url: {base}/t\nresponse: {{auth: /auth, {expiry}}}\n"
                ))
                .await
                .fetch()
                .await
                .unwrap()
            }
        };
        let c = fetch("expiresAt: /expires_at").await;
        assert_eq!(c.logins[0].username, "svc");
        assert_eq!(c.logins[0].password.expose(), CANARY_PASSWORD);
        assert_eq!(c.expires_at, Some(at(1_924_992_000)));

        let before = Utc::now();
        let c = fetch("expiresIn: /expires_in").await;
        let after = Utc::now();
        let expires = c.expires_at.unwrap();
        assert!(expires >= before + TimeDelta::seconds(600), "{expires}");
        assert!(expires <= after + TimeDelta::seconds(600), "{expires}");

        let c = fetch("jwtExp: /jwt").await;
        assert_eq!(c.expires_at, Some(at(1_893_456_000)));
    }

    #[tokio::test]
    async fn a_bearer_token_file_is_read_again_on_every_call() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, format!("{CANARY_TOKEN}-1\n")).unwrap();
        let (base, seen) = json_stub(200, json!({"u": "u", "p": "p"})).await;
        let p = provider(&format!(
            "url: {base}/t\nauth: {{bearer: {{file: {}}}}}\nresponse: {{username: /u, password: /p}}\n",
            token.display()
        ))
        .await;
        p.fetch().await.unwrap();
        std::fs::write(&token, format!("{CANARY_TOKEN}-2")).unwrap();
        p.fetch().await.unwrap();
        let sent: Vec<_> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.authorization.clone())
            .collect();
        assert_eq!(
            sent,
            [
                Some(format!("Bearer {CANARY_TOKEN}-1")),
                Some(format!("Bearer {CANARY_TOKEN}-2"))
            ]
        );
    }

    #[tokio::test]
    async fn a_missing_bearer_token_file_is_a_local_input_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("absent-token");
        let (base, seen) = json_stub(200, json!({"a": "dTpw"})).await;
        let err = fetch_err(&format!(
            "url: {base}/t\nauth: {{bearer: {{file: {}}}}}\nresponse: {{auth: /a}}\n",
            token.display()
        ))
        .await;
        assert_eq!(err.category, ErrorCategory::LocalInput);
        assert!(err.message.contains("bearer token"), "{err}");
        assert!(err.message.contains(&token.display().to_string()), "{err}");
        assert!(
            seen.lock().unwrap().is_empty(),
            "no request without the token"
        );
    }

    #[tokio::test]
    async fn an_empty_bearer_token_file_is_a_local_input_error_and_nothing_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "\n").unwrap();
        let (base, seen) = json_stub(200, json!({"a": "dTpw"})).await;
        let err = fetch_err(&format!(
            "url: {base}/t?k=v\nauth: {{bearer: {{file: {}}}}}\nresponse: {{auth: /a}}\n",
            token.display()
        ))
        .await;
        assert_eq!(err.category, ErrorCategory::LocalInput);
        assert_eq!(
            err.message,
            format!("the bearer token for GET {base}/t is empty")
        );
        assert!(
            seen.lock().unwrap().is_empty(),
            "no request with an empty token"
        );
    }

    #[tokio::test]
    async fn basic_auth_sends_both_parts_from_their_sources() {
        let dir = tempfile::tempdir().unwrap();
        let pass = dir.path().join("password");
        std::fs::write(&pass, CANARY_TOKEN).unwrap();
        let (base, seen) = json_stub(200, json!({"u": "u", "p": "p"})).await;
        let p = provider(&format!(
            "url: {base}/t\nauth: {{basic: {{username: {{value: ci-bot}}, password: {{file: {}}}}}}}\n\
             response: {{username: /u, password: /p}}\n",
            pass.display()
        ))
        .await;
        p.fetch().await.unwrap();
        let expected = format!(
            "Basic {}",
            STANDARD.encode(format!("ci-bot:{CANARY_TOKEN}"))
        );
        assert_eq!(seen.lock().unwrap()[0].authorization, Some(expected));
    }

    /// A config whose endpoint authenticates with the canary bearer token.
    async fn with_token(base: &str, mapping: &str) -> (String, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, CANARY_TOKEN).unwrap();
        let yaml = format!(
            "url: {base}/v1/creds?sig={CANARY_TOKEN}\nauth: {{bearer: {{file: {}}}}}\nresponse: {mapping}\n",
            token.display()
        );
        (yaml, dir)
    }

    #[tokio::test]
    async fn a_server_error_is_a_bad_response_naming_the_url_without_its_query() {
        let body = json!({"error": "boom", "password": CANARY_PASSWORD}).to_string();
        let (base, _) = stub(500, &[], body, Duration::ZERO).await;
        let (yaml, _dir) = with_token(&base, "{username: /u, password: /p}").await;
        let err = fetch_err(&yaml).await;
        assert_eq!(err.category, ErrorCategory::BadResponse);
        assert_eq!(
            err.message,
            format!("GET {base}/v1/creds answered HTTP 500")
        );
    }

    #[tokio::test]
    async fn malformed_json_is_a_bad_response_without_the_body() {
        let body = format!("{{\"password\": \"{CANARY_PASSWORD}\", oops");
        let (base, _) = stub(200, &[], body, Duration::ZERO).await;
        let (yaml, _dir) = with_token(&base, "{username: /u, password: /password}").await;
        let err = fetch_err(&yaml).await;
        assert_eq!(err.category, ErrorCategory::BadResponse);
        assert!(
            err.message.starts_with(&format!(
                "the response from GET {base}/v1/creds is not valid JSON"
            )),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_response_without_the_mapped_field_is_a_bad_response_naming_the_pointer() {
        let (base, _) = json_stub(200, json!({"data": {"token": CANARY_PASSWORD}})).await;
        let (yaml, _dir) = with_token(&base, "{username: /data/user, password: /data/token}").await;
        let err = fetch_err(&yaml).await;
        assert_eq!(err.category, ErrorCategory::BadResponse);
        assert_eq!(
            err.message,
            format!("the response from GET {base}/v1/creds has no `username` at /data/user")
        );
    }

    #[tokio::test]
    async fn unauthorized_and_forbidden_are_auth_denied() {
        for status in [401, 403] {
            let body = format!("invalid token {CANARY_TOKEN}");
            let (base, _) = stub(status, &[], body, Duration::ZERO).await;
            let (yaml, _dir) = with_token(&base, "{auth: /a}").await;
            let err = fetch_err(&yaml).await;
            assert_eq!(err.category, ErrorCategory::AuthDenied, "{status}");
            assert_eq!(err.retry_after, None);
        }
    }

    #[tokio::test]
    async fn too_many_requests_is_throttled_with_the_retry_after_delay() {
        let (base, _) = stub(
            429,
            &[("retry-after", "17")],
            "slow down".into(),
            Duration::ZERO,
        )
        .await;
        let (yaml, _dir) = with_token(&base, "{auth: /a}").await;
        let err = fetch_err(&yaml).await;
        assert_eq!(err.category, ErrorCategory::Throttled);
        assert_eq!(err.retry_after, Some(Duration::from_secs(17)));
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let (yaml, _dir) = with_token(&format!("http://{addr}"), "{auth: /a}").await;
        let err = fetch_err(&yaml).await;
        assert_eq!(err.category, ErrorCategory::Unreachable);
        assert!(
            err.message
                .starts_with(&format!("GET http://{addr}/v1/creds: ")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_slow_endpoint_times_out_as_unreachable() {
        let (base, _) = stub(200, &[], "{}".into(), Duration::from_secs(5)).await;
        let (yaml, _dir) = with_token(&base, "{auth: /a}").await;
        let err = fetch_err(&format!("{yaml}timeout: 200ms\n")).await;
        assert_eq!(err.category, ErrorCategory::Unreachable);
        assert!(err.message.contains("timed out"), "{err}");
    }

    #[tokio::test]
    async fn an_oversized_response_is_refused() {
        let body = format!("{{\"p\": \"{}\"}}", "x".repeat(MAX_BODY_BYTES));
        let (base, _) = stub(200, &[], body, Duration::ZERO).await;
        let (yaml, _dir) = with_token(&base, "{username: {value: u}, password: /p}").await;
        let err = fetch_err(&yaml).await;
        assert_eq!(err.category, ErrorCategory::BadResponse);
        assert!(err.message.contains("larger than"), "{err}");
    }

    #[tokio::test]
    async fn a_missing_or_empty_ca_file_fails_the_build_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        for path in [dir.path().join("absent.pem"), empty] {
            let config = parse(&format!(
                "url: https://h/t\ncaFile: {}\nresponse: {{auth: /a}}\n",
                path.display()
            ));
            let err = config.build().await.unwrap_err();
            assert_eq!(err.category, ErrorCategory::LocalInput);
            assert!(err.message.contains(&path.display().to_string()), "{err}");
        }
    }
}
