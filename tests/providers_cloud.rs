//! Cloud providers and registry verification against real peers where they exist (moto for
//! ECR and STS, Debian's docker-registry with htpasswd and token auth, both from
//! `tests/peers/up`), and against small local endpoints speaking the real protocols where no
//! local server exists (ECR Public, the EKS Pod Identity agent, GCP metadata and OAuth, Entra
//! ID and the ACR token exchange).
//!
//! The AWS identity chain reads environment variables; these tests never touch the process
//! environment (parallel tests would race) but hand the SDK a pinned one through
//! `ConfigLoader::env`, and the provider is built on that configuration.

// Helpers shared by the provider modules are unused when their features are off.
#![cfg_attr(
    not(all(feature = "ecr", feature = "gcp", feature = "azure")),
    allow(dead_code, unused_imports)
)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use chrono::Utc;
use pullkeeper::providers::{ErrorCategory, Provider, ProviderError, ProviderSpec};

/// A variable the peers harness exports; its absence is a setup error, never a skip.
fn peer_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: start the peers with `tests/peers/up DIR` and source DIR/peers.env"
        )
    })
}

/// One request as a stub endpoint saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: Method,
    path: String,
    query: HashMap<String, String>,
    headers: HeaderMap,
    form: HashMap<String, String>,
    body: String,
}

/// What a stub answers.
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
}

fn reply(status: u16, body: impl Into<String>) -> Reply {
    Reply {
        status,
        headers: vec![("content-type", "application/json".into())],
        body: body.into(),
    }
}

type Handler = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

/// A local HTTP endpoint on loopback that records every request and answers through `handler`.
struct Stub {
    /// `http://127.0.0.1:PORT`
    url: String,
    /// `127.0.0.1:PORT`
    addr: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Stub {
    async fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let state = (Arc::new(handler) as Handler, seen.clone());
        let app = axum::Router::new().fallback(answer).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("address").to_string();
        tokio::spawn(async move {
            axum::serve(listener, app).await.expect("stub serves");
        });
        Self {
            url: format!("http://{addr}"),
            addr,
            seen,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
}

async fn answer(
    State((handler, seen)): State<(Handler, Arc<Mutex<Vec<Seen>>>)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let parse = |s: &[u8]| -> HashMap<String, String> {
        url::form_urlencoded::parse(s).into_owned().collect()
    };
    let request = Seen {
        method,
        path: uri.path().to_string(),
        query: parse(uri.query().unwrap_or_default().as_bytes()),
        headers,
        form: parse(&body),
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    let r = handler(&request);
    seen.lock().expect("lock").push(request);
    let mut response = (StatusCode::from_u16(r.status).expect("status"), r.body).into_response();
    for (name, value) in r.headers {
        response
            .headers_mut()
            .insert(name, value.parse().expect("header value"));
    }
    response
}

/// A closed loopback port: bound, then released.
async fn closed_port() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("address").to_string();
    drop(l);
    addr
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn b64url(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

/// An unsigned JWT-shaped token with the given claims (providers only read `exp`).
fn fake_jwt(claims: &str) -> String {
    format!(
        "{}.{}.c2ln",
        b64url(r#"{"alg":"RS256","typ":"JWT"}"#),
        b64url(claims)
    )
}

/// Parses a `provider:` block the way a registry file carries it.
fn spec(yaml: &str) -> ProviderSpec {
    serde_yaml_ng::from_str(yaml).expect("provider spec parses")
}

async fn fetch_err(p: &Arc<dyn Provider>) -> ProviderError {
    p.fetch().await.expect_err("fetch must fail")
}

/// `spec` built for a credential-provider request carrying the Pod's `token` and its
/// ServiceAccount's `annotations` (the image's repository matters to no provider used here).
async fn for_pod(
    spec: &ProviderSpec,
    token: Option<pullkeeper::sensitive::Sensitive>,
    annotations: &std::collections::BTreeMap<String, String>,
) -> Arc<dyn Provider> {
    spec.build_for_pod(token, annotations, "registry.example/team/app")
        .await
        .expect("builds")
}

/// Builds `spec` for a credential-provider request carrying `token` and `annotations`, and
/// fetches: the fetch must fail as `local_input` (so before anything is sent), saying `says`.
async fn refused_locally(
    spec: &ProviderSpec,
    token: Option<pullkeeper::sensitive::Sensitive>,
    annotations: &std::collections::BTreeMap<String, String>,
    says: &str,
) {
    let secret = token.as_ref().map(|t| t.expose().to_string());
    let err = fetch_err(&for_pod(spec, token, annotations).await).await;
    assert_eq!(err.category, ErrorCategory::LocalInput, "{}", err.message);
    assert!(err.message.contains(says), "{}", err.message);
    assert_clean(&err, &[secret.as_deref().unwrap_or("(no token)")]);
}

/// No error message may carry what the provider or the caller treats as secret.
fn assert_clean(err: &ProviderError, secrets: &[&str]) {
    for s in secrets {
        assert!(
            !err.message.contains(s),
            "error leaks {s:?}: {}",
            err.message
        );
    }
}

#[cfg(feature = "ecr")]
mod ecr {
    use aws_config::BehaviorVersion;
    use aws_config::retry::RetryConfig;
    use aws_types::os_shim_internal::Env;
    use pullkeeper::providers::ecr::{EcrConfig, EcrPublicConfig};

    use super::*;

    const SECRET_KEY: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

    fn moto() -> String {
        peer_env("PK_MOTO_URL")
    }

    /// An SDK configuration whose identity chain sees only `vars` (plus settings that keep it
    /// off the real machine: no IMDS, no profile files), with retries off so error answers are
    /// seen as they are.
    async fn sdk(vars: &[(&str, &str)]) -> aws_config::SdkConfig {
        let mut all = vec![
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("AWS_CONFIG_FILE", "/nonexistent/pullkeeper-test/config"),
            (
                "AWS_SHARED_CREDENTIALS_FILE",
                "/nonexistent/pullkeeper-test/credentials",
            ),
            ("AWS_REGION", "us-east-1"),
        ];
        all.extend_from_slice(vars);
        aws_config::defaults(BehaviorVersion::latest())
            .env(Env::from_slice(&all))
            .retry_config(RetryConfig::disabled())
            .load()
            .await
    }

    fn static_keys() -> Vec<(&'static str, &'static str)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        ]
    }

    fn ecr(yaml: &str) -> EcrConfig {
        serde_yaml_ng::from_str(yaml).expect("ecr config parses")
    }

    async fn build(config: &EcrConfig, vars: &[(&str, &str)]) -> Arc<dyn Provider> {
        config
            .build_with_sdk_config(&sdk(vars).await)
            .await
            .expect("provider builds")
    }

    /// moto answers `base64("AWS:<account>-auth-token")` for `https://<account>.dkr.ecr.<region>…`
    /// and a fixed expiry of 2015-01-01 (local time of the moto process).
    fn assert_moto_login(login: &pullkeeper::credential::Login, account: &str, region: &str) {
        assert_eq!(
            login.server.as_deref(),
            Some(format!("{account}.dkr.ecr.{region}.amazonaws.com").as_str())
        );
        assert_eq!(login.username, "AWS");
        assert_eq!(login.password.expose(), format!("{account}-auth-token"));
    }

    #[tokio::test]
    async fn static_keys_fetch_one_login_per_region_from_moto_with_the_earliest_expiry() {
        let config = ecr(&format!(
            "regions: [eu-west-1, us-east-2]\nendpointUrl: {}",
            moto()
        ));
        let provider = build(&config, &static_keys()).await;
        let credential = provider.fetch().await.expect("moto answers");
        assert_eq!(credential.logins.len(), 2);
        assert_moto_login(&credential.logins[0], "123456789012", "eu-west-1");
        assert_moto_login(&credential.logins[1], "123456789012", "us-east-2");
        let expiry = credential.expires_at.expect("moto states an expiry");
        // moto's fixed 2015-01-01, whatever the time zone moto runs in.
        assert!(
            (expiry.timestamp() - 1_420_070_400).abs() <= 14 * 3600,
            "{expiry}"
        );
        assert!(credential.validate().is_ok());
    }

    #[tokio::test]
    async fn irsa_exchanges_the_web_identity_token_file_for_the_role_at_moto() {
        let dir = tempfile::tempdir().expect("tempdir");
        let token_file = dir.path().join("token");
        std::fs::write(
            &token_file,
            fake_jwt(r#"{"sub":"system:serviceaccount:pullkeeper:pullkeeper","aud":"sts.amazonaws.com"}"#),
        )
        .expect("write token");
        let token_path = token_file.to_str().expect("utf-8 path");
        let moto = moto();
        let vars = [
            (
                "AWS_ROLE_ARN",
                "arn:aws:iam::333333333333:role/pullkeeper-irsa",
            ),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", token_path),
            ("AWS_ROLE_SESSION_NAME", "pullkeeper"),
            ("AWS_ENDPOINT_URL", moto.as_str()),
        ];
        let provider = build(&ecr("regions: [eu-central-1]"), &vars).await;
        let credential = provider.fetch().await.expect("IRSA works against moto");
        assert_eq!(credential.logins.len(), 1);
        assert_eq!(credential.logins[0].username, "AWS");
        let server = credential.logins[0].server.as_deref().expect("server");
        assert_eq!(server, "333333333333.dkr.ecr.eu-central-1.amazonaws.com");

        // Without the token file, the same chain fails locally and names the file.
        std::fs::remove_file(&token_file).expect("remove token");
        let provider = build(&ecr("regions: [eu-central-1]"), &vars).await;
        let err = fetch_err(&provider).await;
        assert_eq!(err.category, ErrorCategory::LocalInput, "{}", err.message);
    }

    #[tokio::test]
    async fn an_assumed_role_at_moto_fetches_for_the_role() {
        let config = ecr(&format!(
            "regions: [ap-southeast-2]\nroleArn: arn:aws:iam::444444444444:role/cross-account-pull\n\
             externalId: pullkeeper-ext\nsessionName: pk-test\nendpointUrl: {}",
            moto()
        ));
        let provider = build(&config, &static_keys()).await;
        let credential = provider
            .fetch()
            .await
            .expect("assume-role works against moto");
        assert_eq!(credential.logins.len(), 1);
        let server = credential.logins[0].server.as_deref().expect("server");
        assert_eq!(server, "444444444444.dkr.ecr.ap-southeast-2.amazonaws.com");
    }

    const ASSUMED_XML: &str = r#"<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleResult>
    <Credentials>
      <AccessKeyId>ASIAASSUMEDEXAMPLE01</AccessKeyId>
      <SecretAccessKey>assumed-secret-key-example</SecretAccessKey>
      <SessionToken>assumed-session-token-example</SessionToken>
      <Expiration>2099-01-01T00:00:00Z</Expiration>
    </Credentials>
    <AssumedRoleUser>
      <AssumedRoleId>AROAEXAMPLE:pk-test</AssumedRoleId>
      <Arn>arn:aws:sts::555555555555:assumed-role/puller/pk-test</Arn>
    </AssumedRoleUser>
  </AssumeRoleResult>
  <ResponseMetadata><RequestId>00000000-0000-0000-0000-000000000001</RequestId></ResponseMetadata>
</AssumeRoleResponse>"#;

    /// An STS endpoint whose role trusts only the external id `right`.
    async fn sts_requiring_external_id() -> Stub {
        Stub::start(|r| {
            if r.form.get("Action").map(String::as_str) != Some("AssumeRole") {
                return reply(400, "unexpected action");
            }
            if r.form.get("ExternalId").map(String::as_str) == Some("right") {
                let mut rep = reply(200, ASSUMED_XML);
                rep.headers = vec![("content-type", "text/xml".into())];
                rep
            } else {
                let mut rep = reply(
                    403,
                    "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error>\
                     <Type>Sender</Type><Code>AccessDenied</Code><Message>User is not authorized \
                     to perform: sts:AssumeRole</Message></Error><RequestId>1</RequestId></ErrorResponse>",
                );
                rep.headers = vec![("content-type", "text/xml".into())];
                rep
            }
        })
        .await
    }

    #[tokio::test]
    async fn the_role_arn_external_id_and_session_name_reach_sts_and_its_credentials_sign_ecr() {
        let sts = sts_requiring_external_id().await;
        let ecr_stub = Stub::start(|_| {
            reply(
                200,
                format!(
                    r#"{{"authorizationData":[{{"authorizationToken":"{}","expiresAt":4070908800,"proxyEndpoint":"https://555555555555.dkr.ecr.eu-west-1.amazonaws.com"}}]}}"#,
                    b64("AWS:assumed-password")
                ),
            )
        })
        .await;
        let mut vars = static_keys();
        vars.push(("AWS_ENDPOINT_URL_STS", &sts.url));
        vars.push(("AWS_ENDPOINT_URL_ECR", &ecr_stub.url));
        let config = ecr(
            "regions: [eu-west-1]\nroleArn: arn:aws:iam::555555555555:role/puller\n\
             externalId: right\nsessionName: pk-test",
        );
        let credential = build(&config, &vars)
            .await
            .fetch()
            .await
            .expect("role assumed");
        let calls = sts.seen();
        assert_eq!(calls.len(), 1);
        assert_eq!(
            calls[0].form.get("RoleArn").map(String::as_str),
            Some("arn:aws:iam::555555555555:role/puller")
        );
        assert_eq!(
            calls[0].form.get("RoleSessionName").map(String::as_str),
            Some("pk-test")
        );
        let ecr_calls = ecr_stub.seen();
        assert_eq!(ecr_calls.len(), 1);
        let auth = ecr_calls[0].headers["authorization"]
            .to_str()
            .expect("ascii");
        assert!(
            auth.contains("Credential=ASIAASSUMEDEXAMPLE01/"),
            "ECR must be signed with the assumed keys: {auth}"
        );
        assert_eq!(
            credential.logins[0].server.as_deref(),
            Some("555555555555.dkr.ecr.eu-west-1.amazonaws.com")
        );
        assert_eq!(credential.logins[0].password.expose(), "assumed-password");
        assert_eq!(
            credential.expires_at.map(|t| t.timestamp()),
            Some(4_070_908_800)
        );
    }

    #[tokio::test]
    async fn a_role_that_cannot_be_assumed_is_auth_denied_without_leaking_keys() {
        let sts = sts_requiring_external_id().await;
        let ecr_stub = Stub::start(|_| reply(500, "{}")).await;
        let mut vars = static_keys();
        vars.push(("AWS_ENDPOINT_URL_STS", &sts.url));
        vars.push(("AWS_ENDPOINT_URL_ECR", &ecr_stub.url));
        let config = ecr(
            "regions: [eu-west-1]\nroleArn: arn:aws:iam::555555555555:role/puller\nexternalId: wrong",
        );
        let err = fetch_err(&build(&config, &vars).await).await;
        assert_eq!(err.category, ErrorCategory::AuthDenied, "{}", err.message);
        assert!(err.message.contains("eu-west-1"), "{}", err.message);
        assert_clean(&err, &[SECRET_KEY]);
        assert!(
            ecr_stub.seen().is_empty(),
            "ECR must not be called unsigned"
        );
    }

    #[tokio::test]
    async fn pod_identity_uses_the_agent_with_the_token_file_as_authorization() {
        let dir = tempfile::tempdir().expect("tempdir");
        let token_file = dir.path().join("eks-pod-identity-token");
        std::fs::write(&token_file, "pod-identity-token-1").expect("write token");
        let agent = Stub::start(|r| {
            let authorised = r
                .headers
                .get("authorization")
                .is_some_and(|v| v == "pod-identity-token-1");
            if r.path != "/v1/credentials" || !authorised {
                return reply(
                    401,
                    r#"{"code":"AccessDeniedException","message":"invalid token"}"#,
                );
            }
            reply(
                200,
                r#"{"AccessKeyId":"ASIAPODIDENTITY00001","SecretAccessKey":"pod-secret","Token":"pod-session","AccountId":"123456789012","Expiration":"2099-01-01T00:00:00Z"}"#,
            )
        })
        .await;
        let uri = format!("{}/v1/credentials", agent.url);
        let token_path = token_file.to_str().expect("utf-8 path");
        let moto = moto();
        let vars = [
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", uri.as_str()),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", token_path),
            ("AWS_ENDPOINT_URL", moto.as_str()),
        ];
        let config = ecr("regions: [us-west-2]");
        let credential = build(&config, &vars)
            .await
            .fetch()
            .await
            .expect("pod identity works");
        assert_moto_login(&credential.logins[0], "123456789012", "us-west-2");
        assert!(!agent.seen().is_empty(), "the agent must have been asked");

        // A token the agent does not accept: the fetch is refused, not silently anonymous.
        std::fs::write(&token_file, "stale-token").expect("rewrite token");
        let err = fetch_err(&build(&config, &vars).await).await;
        assert_eq!(err.category, ErrorCategory::AuthDenied, "{}", err.message);
        assert_clean(&err, &["stale-token", "pod-identity-token-1"]);

        // No token file at all: a local problem, not the agent's refusal.
        std::fs::remove_file(&token_file).expect("remove token");
        let asked = agent.seen().len();
        let err = fetch_err(&build(&config, &vars).await).await;
        assert_eq!(err.category, ErrorCategory::LocalInput, "{}", err.message);
        assert_eq!(
            agent.seen().len(),
            asked,
            "the agent is not asked without a token"
        );
    }

    /// An ECR endpoint answering every call with `status` and an awsJson 1.1 body.
    async fn ecr_answering(
        status: u16,
        body: &'static str,
        extra: &'static [(&'static str, &'static str)],
    ) -> Stub {
        Stub::start(move |r| {
            let target = r.headers.get("x-amz-target").and_then(|v| v.to_str().ok());
            assert!(
                target.is_some_and(|t| t.ends_with(".GetAuthorizationToken")),
                "{target:?}"
            );
            let mut rep = reply(status, body);
            rep.headers = vec![("content-type", "application/x-amz-json-1.1".into())];
            for (k, v) in extra {
                rep.headers.push((k, (*v).to_string()));
            }
            rep
        })
        .await
    }

    #[tokio::test]
    async fn ecr_error_answers_map_to_bounded_categories() {
        let cases: [(u16, &'static str, ErrorCategory); 5] = [
            (
                400,
                r#"{"__type":"com.amazonaws.ecr#AccessDeniedException","message":"not authorized"}"#,
                ErrorCategory::AuthDenied,
            ),
            (
                400,
                r#"{"__type":"UnrecognizedClientException","message":"The security token included in the request is invalid."}"#,
                ErrorCategory::AuthDenied,
            ),
            (
                400,
                r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#,
                ErrorCategory::Throttled,
            ),
            (
                500,
                r#"{"__type":"ServerException","message":"internal"}"#,
                ErrorCategory::BadResponse,
            ),
            (
                200,
                r#"{"authorizationData": 17"#,
                ErrorCategory::BadResponse,
            ),
        ];
        for (status, body, want) in cases {
            let stub = ecr_answering(status, body, &[]).await;
            let config = ecr(&format!("regions: [eu-west-1]\nendpointUrl: {}", stub.url));
            let err = fetch_err(&build(&config, &static_keys()).await).await;
            assert_eq!(err.category, want, "{status} {body}: {}", err.message);
            assert_clean(&err, &[SECRET_KEY]);
        }
    }

    #[tokio::test]
    async fn a_response_without_a_proxy_endpoint_or_a_decodable_token_is_a_bad_response() {
        for body in [
            r#"{"authorizationData":[]}"#,
            r#"{"authorizationData":[{"authorizationToken":"QVdTOnB3","expiresAt":4070908800}]}"#,
            r#"{"authorizationData":[{"authorizationToken":"bm8tY29sb24=","proxyEndpoint":"https://1.dkr.ecr.eu-west-1.amazonaws.com"}]}"#,
        ] {
            let stub = ecr_answering(200, body, &[]).await;
            let config = ecr(&format!("regions: [eu-west-1]\nendpointUrl: {}", stub.url));
            let err = fetch_err(&build(&config, &static_keys()).await).await;
            assert_eq!(
                err.category,
                ErrorCategory::BadResponse,
                "{body}: {}",
                err.message
            );
            assert_clean(&err, &["QVdTOnB3", "bm8tY29sb24=", "no-colon"]);
        }
    }

    #[tokio::test]
    async fn one_failing_region_fails_the_whole_fetch() {
        let closed = closed_port().await;
        let moto = moto();
        // eu-west-1 goes to moto, us-east-1 to a closed port: no partial credential.
        let mut vars = static_keys();
        vars.push(("AWS_ENDPOINT_URL_ECR", moto.as_str()));
        let ok = build(&ecr("regions: [eu-west-1]"), &vars).await;
        assert!(ok.fetch().await.is_ok());
        let config = ecr(&format!(
            "regions: [eu-west-1, us-east-1]\nendpointUrl: http://{closed}"
        ));
        let err = fetch_err(&build(&config, &static_keys()).await).await;
        assert_eq!(err.category, ErrorCategory::Unreachable, "{}", err.message);
    }

    #[tokio::test]
    async fn ecr_public_signs_for_us_east_1_and_returns_public_ecr_aws() {
        let stub = ecr_answering(
            200,
            r#"{"authorizationData":{"authorizationToken":"QVdTOnB1YmxpYy1wYXNzd29yZA==","expiresAt":4070908800.5}}"#,
            &[],
        )
        .await;
        let config: EcrPublicConfig =
            serde_yaml_ng::from_str(&format!("endpointUrl: {}", stub.url)).expect("parses");
        let mut vars = static_keys();
        vars.push(("AWS_REGION", "eu-west-1"));
        let provider = config
            .build_with_sdk_config(&sdk(&vars).await)
            .await
            .expect("builds");
        let credential = provider.fetch().await.expect("fetches");
        assert_eq!(credential.logins.len(), 1);
        let login = &credential.logins[0];
        assert_eq!(login.server.as_deref(), Some("public.ecr.aws"));
        assert_eq!(login.username, "AWS");
        assert_eq!(login.password.expose(), "public-password");
        assert_eq!(
            credential.expires_at.map(|t| t.timestamp_millis()),
            Some(4_070_908_800_500)
        );
        let seen = stub.seen();
        let auth = seen[0].headers["authorization"].to_str().expect("ascii");
        assert!(
            auth.contains("/us-east-1/ecr-public/aws4_request"),
            "ECR Public is always us-east-1: {auth}"
        );
    }

    #[tokio::test]
    async fn ecr_public_errors_map_to_bounded_categories() {
        for (status, body, want) in [
            (
                400,
                r#"{"__type":"AccessDeniedException","message":"no sts:GetServiceBearerToken"}"#,
                ErrorCategory::AuthDenied,
            ),
            (
                400,
                r#"{"__type":"ThrottlingException","message":"slow down"}"#,
                ErrorCategory::Throttled,
            ),
            (503, "<html>unavailable</html>", ErrorCategory::BadResponse),
            (
                200,
                r#"{"authorizationData":{}}"#,
                ErrorCategory::BadResponse,
            ),
        ] {
            let stub = ecr_answering(status, body, &[]).await;
            let config: EcrPublicConfig =
                serde_yaml_ng::from_str(&format!("endpointUrl: {}", stub.url)).expect("parses");
            let provider = config
                .build_with_sdk_config(&sdk(&static_keys()).await)
                .await
                .expect("builds");
            let err = fetch_err(&provider).await;
            assert_eq!(err.category, want, "{status} {body}: {}", err.message);
        }
    }

    #[tokio::test]
    async fn an_ecr_registry_file_block_validates_and_builds_through_the_provider_spec() {
        let s = spec("type: ecr\nregions: [eu-west-1]\nroleArn: arn:aws:iam::123456789012:role/x");
        assert_eq!(s.type_name(), "ecr");
        assert!(s.provides_servers());
        let mut problems = pullkeeper::problems::FieldProblems::new(std::path::Path::new("e.yaml"));
        problems.scoped("provider", |p| s.validate(p));
        assert!(problems.is_empty());
        let s = spec("type: ecr\nregions: [mars-north-1x]");
        let mut problems = pullkeeper::problems::FieldProblems::new(std::path::Path::new("e.yaml"));
        problems.scoped("provider", |p| s.validate(p));
        let v: Vec<String> = problems
            .into_vec()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            v,
            [
                "e.yaml: provider.regions[0]: `mars-north-1x` is not an AWS region name (expected e.g. `eu-west-1`)"
            ]
        );
    }
}

#[cfg(feature = "gcp")]
mod gcp {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::rsa::{KeyPair, KeySize};
    use base64::Engine as _;

    use super::*;

    fn pem(label: &str, der: &[u8]) -> String {
        let b = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).expect("ascii"))
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
    }

    /// A throw-away RSA key: (private key PKCS#8 PEM, public key SPKI PEM).
    fn rsa_key() -> (String, String) {
        let pair = KeyPair::generate(KeySize::Rsa2048).expect("generate RSA key");
        let private = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&pair).expect("pkcs8");
        let public = aws_lc_rs::signature::KeyPair::public_key(&pair)
            .as_der()
            .expect("spki");
        (
            pem("PRIVATE KEY", private.as_ref()),
            pem("PUBLIC KEY", public.as_ref()),
        )
    }

    async fn metadata_with(
        answer: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    ) -> (Stub, Arc<dyn Provider>) {
        let stub = Stub::start(answer).await;
        let provider = spec(&format!(
            "type: gcp\nsource: metadata\nmetadataHost: {}",
            stub.addr
        ))
        .build()
        .await
        .expect("builds");
        (stub, provider)
    }

    const POOL: &str = "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/k8s/providers/cluster-a";
    const GSA: &str = "puller@team-project.iam.gserviceaccount.com";

    /// Google's STS token exchange and the IAM credentials API on one loopback endpoint,
    /// checking what the real services require: the exchange takes `pod_token` for `POOL`, the
    /// impersonation of `GSA` takes the federated token.
    async fn federation_endpoints(pod_token: &'static str) -> Stub {
        Stub::start(move |r| match (r.method.as_str(), r.path.as_str()) {
            ("POST", "/v1/token") => {
                let f = |k: &str| r.form.get(k).map(String::as_str);
                let ok = f("grant_type") == Some("urn:ietf:params:oauth:grant-type:token-exchange")
                    && f("audience") == Some(POOL)
                    && f("requested_token_type")
                        == Some("urn:ietf:params:oauth:token-type:access_token")
                    && f("subject_token_type") == Some("urn:ietf:params:oauth:token-type:jwt")
                    && f("scope") == Some("https://www.googleapis.com/auth/cloud-platform");
                if !ok {
                    return reply(400, r#"{"error":"invalid_request"}"#);
                }
                if f("subject_token") != Some(pod_token) {
                    return reply(
                        400,
                        r#"{"error":"invalid_grant","error_description":"The audience in ID Token does not match the expected audience."}"#,
                    );
                }
                reply(
                    200,
                    r#"{"access_token":"federated-sts-token","issued_token_type":"urn:ietf:params:oauth:token-type:access_token","token_type":"Bearer","expires_in":3600}"#,
                )
            }
            ("POST", p) if p == format!("/v1/projects/-/serviceAccounts/{GSA}:generateAccessToken") => {
                let bearer = r.headers.get("authorization").and_then(|v| v.to_str().ok());
                let body: serde_json::Value =
                    serde_json::from_str(&r.body).unwrap_or_default();
                if bearer != Some("Bearer federated-sts-token") {
                    return reply(401, r#"{"error":{"code":401,"status":"UNAUTHENTICATED"}}"#);
                }
                if body["scope"][0] != "https://www.googleapis.com/auth/cloud-platform" {
                    return reply(400, r#"{"error":{"code":400,"status":"INVALID_ARGUMENT"}}"#);
                }
                reply(
                    200,
                    r#"{"accessToken":"impersonated-ar-token","expireTime":"2099-01-01T00:00:00Z"}"#,
                )
            }
            ("POST", _) => reply(
                403,
                r#"{"error":{"code":403,"message":"Permission 'iam.serviceAccounts.getAccessToken' denied","status":"PERMISSION_DENIED"}}"#,
            ),
            _ => reply(404, "{}"),
        })
        .await
    }

    /// Per-workload identity on the credential-provider route (KEP-4412): the pulling Pod's
    /// token exchanged at STS for the pool provider, then the Google service account its
    /// ServiceAccount names in `iam.gke.io/gcp-service-account` impersonated. Another
    /// ServiceAccount without the annotation, or no token, sends nothing; a service account the
    /// federated identity may not impersonate is auth_denied.
    #[tokio::test]
    async fn pod_workload_identity_exchanges_the_pods_token_and_impersonates_its_service_account() {
        use pullkeeper::sensitive::Sensitive;
        use std::collections::BTreeMap;
        let pod_token = "eyJhbGciOiJSUzI1NiJ9.pod-token-of-team-puller.sig";
        let stub = federation_endpoints(pod_token).await;
        let file = spec(&format!(
            "type: gcp\nsource: podWorkloadIdentity\nworkloadIdentityProvider: {POOL}\n\
             stsEndpoint: {0}/v1/token\niamCredentialsEndpoint: {0}",
            stub.url
        ));
        let token = Sensitive::new(pod_token);
        let annotated = |gsa: &str| {
            BTreeMap::from([(
                "iam.gke.io/gcp-service-account".to_string(),
                gsa.to_string(),
            )])
        };
        let provider = for_pod(&file, Some(token.clone()), &annotated(GSA)).await;
        let credential = provider.fetch().await.expect("federation works");
        assert_eq!(credential.logins[0].username, "oauth2accesstoken");
        assert_eq!(
            credential.logins[0].password.expose(),
            "impersonated-ar-token"
        );
        assert_eq!(
            credential.expires_at.map(|t| t.to_rfc3339()),
            Some("2099-01-01T00:00:00+00:00".to_string())
        );
        assert_eq!(stub.seen().len(), 2, "the exchange, then the impersonation");

        let other = for_pod(
            &file,
            Some(token.clone()),
            &annotated("admin@team-project.iam.gserviceaccount.com"),
        )
        .await;
        let err = fetch_err(&other).await;
        assert_eq!(err.category, ErrorCategory::AuthDenied, "{}", err.message);
        assert_clean(&err, &[pod_token, "federated-sts-token"]);

        refused_locally(
            &file,
            Some(token.clone()),
            &BTreeMap::new(),
            "no annotation `iam.gke.io/gcp-service-account`",
        )
        .await;
        refused_locally(&file, None, &annotated(GSA), "tokenAttributes").await;
        assert_eq!(stub.seen().len(), 4, "nothing sent without an identity");
    }

    #[tokio::test]
    async fn the_metadata_server_token_becomes_an_oauth2accesstoken_login_with_its_expiry() {
        let (stub, provider) = metadata_with(|r| {
            let flavour = r
                .headers
                .get("metadata-flavor")
                .is_some_and(|v| v == "Google");
            if r.path != "/computeMetadata/v1/instance/service-accounts/default/token" || !flavour {
                return reply(403, "missing Metadata-Flavor:Google header");
            }
            reply(
                200,
                r#"{"access_token":"ya29.metadata-token","expires_in":3599,"token_type":"Bearer"}"#,
            )
        })
        .await;
        let before = Utc::now();
        let credential = provider.fetch().await.expect("metadata answers");
        let after = Utc::now();
        assert_eq!(credential.logins.len(), 1);
        let login = &credential.logins[0];
        assert_eq!(login.server, None, "servers come from the registry file");
        assert_eq!(login.username, "oauth2accesstoken");
        assert_eq!(login.password.expose(), "ya29.metadata-token");
        let expiry = credential.expires_at.expect("expiry");
        assert!(expiry >= before + chrono::Duration::seconds(3599));
        assert!(expiry <= after + chrono::Duration::seconds(3599));
        assert_eq!(stub.seen()[0].method, Method::GET);
    }

    #[tokio::test]
    async fn metadata_error_answers_map_to_categories_with_retry_after() {
        let cases: [(u16, &'static str, Option<&'static str>, ErrorCategory); 6] = [
            (401, "{}", None, ErrorCategory::AuthDenied),
            (403, "forbidden", None, ErrorCategory::AuthDenied),
            (429, "{}", Some("17"), ErrorCategory::Throttled),
            (500, "oops", None, ErrorCategory::BadResponse),
            (
                200,
                r#"{"access_token": 12345, "expires_in": 10}"#,
                None,
                ErrorCategory::BadResponse,
            ),
            (
                200,
                r#"{"access_token": "  ", "expires_in": 10}"#,
                None,
                ErrorCategory::BadResponse,
            ),
        ];
        for (status, body, retry, want) in cases {
            let (_stub, provider) = metadata_with(move |_| {
                let mut r = reply(status, body);
                if let Some(s) = retry {
                    r.headers.push(("retry-after", s.to_string()));
                }
                r
            })
            .await;
            let err = fetch_err(&provider).await;
            assert_eq!(err.category, want, "{status}: {}", err.message);
            assert_eq!(
                err.retry_after,
                retry.map(|s| std::time::Duration::from_secs(s.parse().expect("n")))
            );
            assert_clean(&err, &["12345"]);
        }
        let closed = closed_port().await;
        let provider = spec(&format!(
            "type: gcp\nsource: metadata\nmetadataHost: {closed}"
        ))
        .build()
        .await
        .expect("builds");
        assert_eq!(
            fetch_err(&provider).await.category,
            ErrorCategory::Unreachable
        );
    }

    struct KeyFixture {
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
        public_pem: String,
    }

    fn key_file(token_uri: &str) -> KeyFixture {
        let (private_pem, public_pem) = rsa_key();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key.json");
        let key = serde_json::json!({
            "type": "service_account",
            "project_id": "pk-test",
            "private_key_id": "kid-1",
            "private_key": private_pem,
            "client_email": "puller@pk-test.iam.gserviceaccount.com",
            "client_id": "1",
            "token_uri": token_uri,
        });
        std::fs::write(&path, key.to_string()).expect("write key");
        KeyFixture {
            _dir: dir,
            path,
            public_pem,
        }
    }

    #[tokio::test]
    async fn a_service_account_key_signs_an_rs256_assertion_that_the_token_endpoint_accepts() {
        let public = Arc::new(Mutex::new(String::new()));
        let public_in = public.clone();
        let stub = Stub::start(move |r| {
            if r.form.get("grant_type").map(String::as_str)
                != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
            {
                return reply(400, r#"{"error":"unsupported_grant_type"}"#);
            }
            let Some(assertion) = r.form.get("assertion") else {
                return reply(400, r#"{"error":"invalid_request"}"#);
            };
            let key = jsonwebtoken::DecodingKey::from_rsa_pem(public_in.lock().expect("lock").as_bytes())
                .expect("public key");
            let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
            validation.set_audience(&[format!("http://{}/token", r.headers["host"].to_str().expect("host"))]);
            validation.set_issuer(&["puller@pk-test.iam.gserviceaccount.com"]);
            match jsonwebtoken::decode::<serde_json::Value>(assertion, &key, &validation) {
                Ok(data) => {
                    let c = data.claims;
                    let lifetime = c["exp"].as_i64().expect("exp") - c["iat"].as_i64().expect("iat");
                    if c["scope"] != "https://www.googleapis.com/auth/cloud-platform"
                        || lifetime != 3600
                        || data.header.kid.as_deref() != Some("kid-1")
                    {
                        return reply(400, r#"{"error":"invalid_scope"}"#);
                    }
                    reply(200, r#"{"access_token":"ya29.key-token","expires_in":3600,"token_type":"Bearer"}"#)
                }
                Err(_) => reply(400, r#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#),
            }
        })
        .await;
        let fixture = key_file(&format!("{}/token", stub.url));
        *public.lock().expect("lock") = fixture.public_pem.clone();
        let provider = spec(&format!(
            "type: gcp\nsource: serviceAccountKey\nkeyFile: {}",
            fixture.path.display()
        ))
        .build()
        .await
        .expect("builds");
        let credential = provider
            .fetch()
            .await
            .expect("token endpoint accepts the assertion");
        assert_eq!(credential.logins[0].username, "oauth2accesstoken");
        assert_eq!(credential.logins[0].password.expose(), "ya29.key-token");
        assert!(credential.expires_at.is_some());

        // A key the endpoint does not know (another key pair): invalid_grant → auth denied.
        *public.lock().expect("lock") = rsa_key().1;
        let err = fetch_err(&provider).await;
        assert_eq!(err.category, ErrorCategory::AuthDenied, "{}", err.message);
        assert!(err.message.contains("invalid_grant"), "{}", err.message);
        assert!(!err.message.contains("Signature"), "{}", err.message);
    }

    #[tokio::test]
    async fn token_endpoint_errors_map_to_categories_and_keep_retry_after() {
        let cases: [(u16, &'static str, Option<&'static str>, ErrorCategory); 5] = [
            (
                401,
                r#"{"error":"invalid_client"}"#,
                None,
                ErrorCategory::AuthDenied,
            ),
            (403, "denied", None, ErrorCategory::AuthDenied),
            (
                429,
                r#"{"error":"rate_limit_exceeded"}"#,
                Some("30"),
                ErrorCategory::Throttled,
            ),
            (500, "internal", None, ErrorCategory::BadResponse),
            (
                200,
                "<html>captive portal</html>",
                None,
                ErrorCategory::BadResponse,
            ),
        ];
        for (status, body, retry, want) in cases {
            let stub = Stub::start(move |_| {
                let mut r = reply(status, body);
                if let Some(s) = retry {
                    r.headers.push(("retry-after", s.to_string()));
                }
                r
            })
            .await;
            let fixture = key_file(&format!("{}/token", stub.url));
            let provider = spec(&format!(
                "type: gcp\nsource: serviceAccountKey\nkeyFile: {}",
                fixture.path.display()
            ))
            .build()
            .await
            .expect("builds");
            let err = fetch_err(&provider).await;
            assert_eq!(err.category, want, "{status}: {}", err.message);
            assert_eq!(
                err.retry_after.map(|d| d.as_secs()),
                retry.map(|s| s.parse::<u64>().expect("n"))
            );
            assert_clean(&err, &["PRIVATE KEY", "captive"]);
        }
    }

    #[tokio::test]
    async fn a_missing_or_broken_key_file_is_a_local_input_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("absent.json");
        let provider = spec(&format!(
            "type: gcp\nsource: serviceAccountKey\nkeyFile: {}",
            missing.display()
        ))
        .build()
        .await
        .expect("builds without reading the file");
        let err = fetch_err(&provider).await;
        assert_eq!(err.category, ErrorCategory::LocalInput);
        assert!(err.message.contains("absent.json"), "{}", err.message);

        let broken = dir.path().join("broken.json");
        std::fs::write(
            &broken,
            r#"{"client_email":"a@b","private_key":"-----BEGIN PRIVATE KEY-----\nnot-a-key\n-----END PRIVATE KEY-----\n","token_uri":"https://oauth2.googleapis.com/token"}"#,
        )
        .expect("write");
        let provider = spec(&format!(
            "type: gcp\nsource: serviceAccountKey\nkeyFile: {}",
            broken.display()
        ))
        .build()
        .await
        .expect("builds");
        let err = fetch_err(&provider).await;
        assert_eq!(err.category, ErrorCategory::LocalInput);
        assert!(err.message.contains("private_key"), "{}", err.message);
        assert_clean(&err, &["not-a-key"]);

        std::fs::write(&broken, r#"{"client_email": 42}"#).expect("write");
        let err = fetch_err(&provider).await;
        assert_eq!(err.category, ErrorCategory::LocalInput);
        assert_clean(&err, &["42"]);
    }
}

#[cfg(feature = "azure")]
mod azure {
    use super::*;

    const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
    const CLIENT: &str = "11111111-2222-3333-4444-555555555555";
    const ENTRA_TOKEN: &str = "entra-access-token-for-acr";

    /// Entra ID, IMDS and the ACR exchange on one loopback endpoint, checking every field the
    /// real services require. `refresh` is the refresh token the exchange hands out.
    async fn azure_endpoints(federated: &'static str, refresh: String) -> Stub {
        Stub::start(move |r| {
            let entra_ok = || reply(200, format!(r#"{{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"{ENTRA_TOKEN}"}}"#));
            match (r.method.as_str(), r.path.as_str()) {
                ("POST", p) if p == format!("/{TENANT}/oauth2/v2.0/token") => {
                    let f = |k: &str| r.form.get(k).map(String::as_str);
                    if f("grant_type") != Some("client_credentials")
                        || f("client_id") != Some(CLIENT)
                        || f("scope") != Some("https://containerregistry.azure.net/.default")
                    {
                        return reply(400, r#"{"error":"invalid_request"}"#);
                    }
                    let by_assertion = f("client_assertion_type")
                        == Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
                        && f("client_assertion") == Some(federated);
                    let by_secret = f("client_secret") == Some("app-secret-value");
                    if by_assertion || by_secret {
                        entra_ok()
                    } else {
                        reply(400, r#"{"error":"invalid_client","error_description":"AADSTS700016: Application not found. Trace ID: x"}"#)
                    }
                }
                ("GET", "/metadata/identity/oauth2/token") => {
                    let q = |k: &str| r.query.get(k).map(String::as_str);
                    if r.headers.get("metadata").is_none_or(|v| v != "true")
                        || q("resource") != Some("https://containerregistry.azure.net")
                        || q("api-version").is_none()
                    {
                        return reply(400, r#"{"error":"invalid_request"}"#);
                    }
                    entra_ok()
                }
                ("POST", "/oauth2/exchange") => {
                    let f = |k: &str| r.form.get(k).map(String::as_str);
                    let host = r.headers["host"].to_str().expect("host");
                    if f("grant_type") != Some("access_token")
                        || f("service") != Some(host)
                        || f("access_token") != Some(ENTRA_TOKEN)
                    {
                        return reply(401, r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#);
                    }
                    reply(200, format!(r#"{{"refresh_token":"{refresh}"}}"#))
                }
                _ => reply(404, "{}"),
            }
        })
        .await
    }

    fn refresh_token(exp: i64) -> String {
        fake_jwt(&format!(r#"{{"jti":"x","exp":{exp},"tenant":"{TENANT}"}}"#))
    }

    fn leak(s: String) -> &'static str {
        Box::leak(s.into_boxed_str())
    }

    /// A built ACR provider on workload identity: the registry (plain HTTP) at `registry`, the
    /// Entra authority at `authority`, the federated token read from `token_file`.
    async fn workload_identity(
        registry: &str,
        authority: &str,
        token_file: &std::path::Path,
    ) -> std::sync::Arc<dyn pullkeeper::providers::Provider> {
        spec(&format!(
            "type: azure\nregistry: {registry}\nregistryScheme: http\nsource: workloadIdentity\n\
             tenantId: {TENANT}\nclientId: {CLIENT}\ntokenFile: {}\nauthorityHost: {authority}",
            token_file.display(),
        ))
        .build()
        .await
        .expect("builds")
    }

    #[tokio::test]
    async fn workload_identity_exchanges_the_federated_token_for_an_acr_refresh_token() {
        let exp = Utc::now().timestamp() + 3 * 3600;
        let federated = leak(fake_jwt(&format!(r#"{{"exp":{exp}}}"#)));
        let refresh = refresh_token(exp);
        let stub = azure_endpoints(federated, refresh.clone()).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let token_file = dir.path().join("azure-identity-token");
        std::fs::write(&token_file, format!("{federated}\n")).expect("write token");
        let provider = workload_identity(&stub.addr, &format!("{}/", stub.url), &token_file).await;
        let credential = provider.fetch().await.expect("exchange works");
        assert_eq!(credential.logins.len(), 1);
        let login = &credential.logins[0];
        assert_eq!(login.server.as_deref(), Some(stub.addr.as_str()));
        assert_eq!(login.username, "00000000-0000-0000-0000-000000000000");
        assert_eq!(login.password.expose(), refresh);
        assert_eq!(credential.expires_at.map(|t| t.timestamp()), Some(exp));
        let seen = stub.seen();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[1].form.get("tenant").map(String::as_str), Some(TENANT));
    }

    #[tokio::test]
    async fn managed_identity_and_client_secret_reach_the_same_exchange() {
        let exp = Utc::now().timestamp() + 3600;
        let stub = azure_endpoints("unused", refresh_token(exp)).await;
        let mi = spec(&format!(
            "type: azure\nregistry: {}\nregistryScheme: http\nsource: managedIdentity\n\
             imdsEndpoint: {}/metadata/identity/oauth2/token",
            stub.addr, stub.url
        ))
        .build()
        .await
        .expect("builds");
        let credential = mi.fetch().await.expect("managed identity works");
        assert_eq!(credential.expires_at.map(|t| t.timestamp()), Some(exp));

        let dir = tempfile::tempdir().expect("tempdir");
        let secret_file = dir.path().join("client-secret");
        std::fs::write(&secret_file, "app-secret-value\n").expect("write secret");
        let cs = spec(&format!(
            "type: azure\nregistry: {}\nregistryScheme: http\nsource: clientSecret\n\
             tenantId: {TENANT}\nclientId: {CLIENT}\nclientSecret: {{file: {}}}\nauthorityHost: {}",
            stub.addr,
            secret_file.display(),
            stub.url
        ))
        .build()
        .await
        .expect("builds");
        cs.fetch().await.expect("client secret works");

        std::fs::write(&secret_file, "wrong-secret").expect("rewrite secret");
        let err = fetch_err(&cs).await;
        assert_eq!(err.category, ErrorCategory::AuthDenied, "{}", err.message);
        assert!(
            err.message.contains("invalid_client, AADSTS700016"),
            "{}",
            err.message
        );
        assert_clean(&err, &["wrong-secret", "Trace"]);
    }

    #[tokio::test]
    async fn an_expired_or_missing_federated_token_fails_locally_and_names_the_file() {
        let stub = azure_endpoints("never", refresh_token(0)).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let token_file = dir.path().join("azure-identity-token");
        let expired = fake_jwt(&format!(r#"{{"exp":{}}}"#, Utc::now().timestamp() - 60));
        std::fs::write(&token_file, &expired).expect("write token");
        let provider = workload_identity(&stub.addr, &stub.url, &token_file).await;
        let err = fetch_err(&provider).await;
        assert_eq!(err.category, ErrorCategory::LocalInput);
        assert!(err.message.contains("expired"), "{}", err.message);
        assert!(
            err.message.contains("azure-identity-token"),
            "{}",
            err.message
        );
        assert_clean(&err, &[&expired]);

        std::fs::remove_file(&token_file).expect("remove");
        let err = fetch_err(&provider).await;
        assert_eq!(err.category, ErrorCategory::LocalInput);
        assert!(
            err.message.contains("azure-identity-token"),
            "{}",
            err.message
        );
        assert!(
            stub.seen().is_empty(),
            "nothing may be sent without a valid token"
        );
    }

    /// Per-workload identity on the credential-provider route (KEP-4412): the pulling Pod's
    /// own token, which the kubelet passes, federated to the app its ServiceAccount names in
    /// `azure.workload.identity/client-id`; the tenant from `azure.workload.identity/tenant-id`
    /// when set. A ServiceAccount without the annotation, or no token, sends nothing.
    #[tokio::test]
    async fn pod_workload_identity_federates_the_pods_token_to_the_app_its_service_account_names() {
        use pullkeeper::sensitive::Sensitive;
        use std::collections::BTreeMap;
        let exp = Utc::now().timestamp() + 3600;
        let pod_token = leak(fake_jwt(&format!(
            r#"{{"exp":{exp},"aud":["api://AzureADTokenExchange"],"sub":"system:serviceaccount:team:puller"}}"#
        )));
        let refresh = refresh_token(exp);
        let stub = azure_endpoints(pod_token, refresh.clone()).await;
        let file = spec(&format!(
            "type: azure\nregistry: {}\nregistryScheme: http\nsource: podWorkloadIdentity\n\
             tenantId: other-tenant.example\nauthorityHost: {}/",
            stub.addr, stub.url
        ));
        let token = Sensitive::new(pod_token);
        let annotated = BTreeMap::from([
            (
                "azure.workload.identity/client-id".to_string(),
                CLIENT.to_string(),
            ),
            (
                "azure.workload.identity/tenant-id".to_string(),
                TENANT.to_string(),
            ),
        ]);
        let provider = for_pod(&file, Some(token.clone()), &annotated).await;
        let credential = provider.fetch().await.expect("federation works");
        assert_eq!(credential.logins[0].password.expose(), refresh);
        assert_eq!(credential.expires_at.map(|t| t.timestamp()), Some(exp));
        let seen = stub.seen();
        assert_eq!(seen.len(), 2, "Entra, then the ACR exchange");
        assert_eq!(
            seen[0].path,
            format!("/{TENANT}/oauth2/v2.0/token"),
            "the ServiceAccount's tenant, not the file's"
        );
        assert_eq!(
            seen[0].form.get("client_assertion").map(String::as_str),
            Some(pod_token)
        );

        // The neighbour's ServiceAccount names no app: no credential, and why.
        refused_locally(
            &file,
            Some(token.clone()),
            &BTreeMap::new(),
            "no annotation `azure.workload.identity/client-id`",
        )
        .await;
        // No token: the Secret route, or a provider entry without tokenAttributes.
        refused_locally(&file, None, &annotated, "tokenAttributes").await;
        assert_eq!(stub.seen().len(), 2, "nothing sent without an identity");
    }

    #[tokio::test]
    async fn entra_refusing_an_expired_assertion_is_auth_denied_with_its_code() {
        let stub = Stub::start(|_| {
            reply(400, r#"{"error":"invalid_client","error_description":"AADSTS700024: Client assertion is not within its valid time range. Current time: 2026-01-01T00:00:00Z, assertion valid from x"}"#)
        })
        .await;
        let dir = tempfile::tempdir().expect("tempdir");
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "opaque-federated-token").expect("write");
        let provider = workload_identity(&stub.addr, &stub.url, &token_file).await;
        let err = fetch_err(&provider).await;
        assert_eq!(err.category, ErrorCategory::AuthDenied);
        assert!(err.message.contains("AADSTS700024"), "{}", err.message);
        assert_clean(&err, &["opaque-federated-token", "valid from"]);
    }

    #[tokio::test]
    async fn exchange_errors_map_to_categories_and_keep_retry_after() {
        let cases: [(u16, &'static str, Option<&'static str>, ErrorCategory); 5] = [
            (
                401,
                r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#,
                None,
                ErrorCategory::AuthDenied,
            ),
            (403, "{}", None, ErrorCategory::AuthDenied),
            (429, "{}", Some("12"), ErrorCategory::Throttled),
            (500, "{}", None, ErrorCategory::BadResponse),
            (
                200,
                r#"{"access_token":"not what we asked for"}"#,
                None,
                ErrorCategory::BadResponse,
            ),
        ];
        for (status, body, retry, want) in cases {
            let stub = Stub::start(move |r| {
                if r.path == "/oauth2/exchange" {
                    let mut rep = reply(status, body);
                    if let Some(s) = retry {
                        rep.headers.push(("retry-after", s.to_string()));
                    }
                    rep
                } else {
                    reply(200, format!(r#"{{"access_token":"{ENTRA_TOKEN}"}}"#))
                }
            })
            .await;
            let provider = spec(&format!(
                "type: azure\nregistry: {}\nregistryScheme: http\nsource: managedIdentity\n\
                 imdsEndpoint: {}/metadata/identity/oauth2/token",
                stub.addr, stub.url
            ))
            .build()
            .await
            .expect("builds");
            let err = fetch_err(&provider).await;
            assert_eq!(err.category, want, "{status}: {}", err.message);
            assert_eq!(
                err.retry_after.map(|d| d.as_secs()),
                retry.map(|s| s.parse::<u64>().expect("n"))
            );
            assert_clean(&err, &[ENTRA_TOKEN, "not what we asked for"]);
        }
    }

    #[tokio::test]
    async fn a_refresh_token_that_is_not_a_jwt_has_no_stated_expiry() {
        let stub = azure_endpoints("unused", "opaque-refresh-token".into()).await;
        let provider = spec(&format!(
            "type: azure\nregistry: {}\nregistryScheme: http\nsource: managedIdentity\n\
             imdsEndpoint: {}/metadata/identity/oauth2/token",
            stub.addr, stub.url
        ))
        .build()
        .await
        .expect("builds");
        let credential = provider.fetch().await.expect("fetches");
        assert_eq!(credential.expires_at, None);
        assert_eq!(
            credential.logins[0].password.expose(),
            "opaque-refresh-token"
        );
    }
}

mod verification {
    use pullkeeper::sensitive::Sensitive;
    use pullkeeper::verify::{VerifyError, VerifySpec, verify};

    use super::*;

    fn verify_spec(yaml: &str) -> VerifySpec {
        serde_yaml_ng::from_str(yaml).expect("verify spec parses")
    }

    /// (repository, tag) of the image the harness pushed to both registries.
    fn test_image() -> (String, String) {
        let image = peer_env("PK_TEST_IMAGE");
        let (repo, tag) = image
            .rsplit_once(':')
            .unwrap_or_else(|| panic!("PK_TEST_IMAGE={image} is not repo:tag"));
        (repo.to_string(), tag.to_string())
    }

    async fn check(
        server: &str,
        yaml: &str,
        user: &str,
        password: &str,
    ) -> Result<(), VerifyError> {
        verify(&verify_spec(yaml), server, user, &Sensitive::new(password)).await
    }

    fn assert_rejected(result: Result<(), VerifyError>, secret: &str) {
        let err = result.expect_err("must be refused");
        assert_eq!(err.category(), "rejected", "{err}");
        let text = format!("{err} {err:?}");
        assert!(!text.contains(secret), "error leaks the password: {text}");
    }

    /// Both real registries: (address, user, password).
    fn registries() -> [(String, String, String); 2] {
        [
            (
                peer_env("PK_REGISTRY_HTPASSWD"),
                peer_env("PK_REGISTRY_HTPASSWD_USER"),
                peer_env("PK_REGISTRY_HTPASSWD_PASSWORD"),
            ),
            (
                peer_env("PK_REGISTRY_TOKEN"),
                peer_env("PK_REGISTRY_TOKEN_USER"),
                peer_env("PK_REGISTRY_TOKEN_PASSWORD"),
            ),
        ]
    }

    /// The digest the htpasswd registry stores for `repo:tag` (the same image was pushed to
    /// both registries the same way).
    async fn stored_digest(repo: &str, tag: &str) -> String {
        let resp = reqwest::Client::new()
            .head(format!(
                "http://{}/v2/{repo}/manifests/{tag}",
                peer_env("PK_REGISTRY_HTPASSWD")
            ))
            .basic_auth(
                peer_env("PK_REGISTRY_HTPASSWD_USER"),
                Some(peer_env("PK_REGISTRY_HTPASSWD_PASSWORD")),
            )
            .header(
                "accept",
                "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json",
            )
            .send()
            .await
            .expect("htpasswd registry answers");
        assert_eq!(
            resp.status(),
            200,
            "{repo}:{tag} is in the htpasswd registry"
        );
        resp.headers()["docker-content-digest"]
            .to_str()
            .expect("ascii digest")
            .to_string()
    }

    #[tokio::test]
    async fn a_good_credential_passes_the_handshake_and_the_manifest_head_on_both_registries() {
        let (repo, tag) = test_image();
        let digest = stored_digest(&repo, &tag).await;
        for (server, user, password) in registries() {
            check(&server, "scheme: http", &user, &password)
                .await
                .unwrap_or_else(|e| panic!("{server}: /v2/ login: {e}"));
            check(
                &server,
                &format!("scheme: http\nrepository: {repo}\nreference: {tag}"),
                &user,
                &password,
            )
            .await
            .unwrap_or_else(|e| panic!("{server}: manifest: {e}"));
            check(
                &server,
                &format!("scheme: http\nrepository: {repo}\nreference: {digest}"),
                &user,
                &password,
            )
            .await
            .unwrap_or_else(|e| panic!("{server}: manifest by digest: {e}"));
        }
    }

    #[tokio::test]
    async fn a_wrong_password_is_rejected_by_both_registries() {
        let (repo, tag) = test_image();
        for (server, user, _) in registries() {
            let wrong = "definitely-not-the-password";
            assert_rejected(check(&server, "scheme: http", &user, wrong).await, wrong);
            assert_rejected(
                check(
                    &server,
                    &format!("scheme: http\nrepository: {repo}\nreference: {tag}"),
                    &user,
                    wrong,
                )
                .await,
                wrong,
            );
            assert_rejected(check(&server, "scheme: http", "nobody", wrong).await, wrong);
        }
    }

    #[tokio::test]
    async fn a_tag_that_does_not_exist_is_rejected_and_named() {
        let (repo, _) = test_image();
        for (server, user, password) in registries() {
            let err = check(
                &server,
                &format!("scheme: http\nrepository: {repo}\nreference: no-such-tag"),
                &user,
                &password,
            )
            .await
            .expect_err("missing tag");
            assert_eq!(err.category(), "rejected", "{err}");
            assert!(err.to_string().contains("no-such-tag"), "{err}");
        }
    }

    #[tokio::test]
    async fn an_unreachable_registry_is_unreachable() {
        let closed = closed_port().await;
        let err = check(&closed, "scheme: http\ntimeout: 2s", "u", "p")
            .await
            .expect_err("nothing listens");
        assert_eq!(err.category(), "unreachable", "{err}");
    }

    #[tokio::test]
    async fn odd_registry_answers_are_bad_responses() {
        // 401 without any challenge.
        let stub = Stub::start(|_| reply(401, "{}")).await;
        let err = check(&stub.addr, "scheme: http", "u", "p")
            .await
            .expect_err("no challenge");
        assert_eq!(err.category(), "bad_response", "{err}");
        // A token service that answers no token.
        let stub = Stub::start(|_| reply(200, r#"{"nothing":"here"}"#)).await;
        let realm = format!("Bearer realm=\"{}/token\",service=\"stub\"", stub.url);
        let stub2 = Stub::start(move |_| {
            let mut rep = reply(401, "{}");
            rep.headers.push(("www-authenticate", realm.clone()));
            rep
        })
        .await;
        let err = check(&stub2.addr, "scheme: http", "u", "p")
            .await
            .expect_err("no token");
        assert_eq!(err.category(), "bad_response", "{err}");
        // The realm points back at `stub`, which answered the token request.
        assert_eq!(stub.seen().len(), 1);
        assert_eq!(
            stub.seen()[0].query.get("service").map(String::as_str),
            Some("stub")
        );
    }

    #[tokio::test]
    async fn the_token_request_asks_for_pull_on_the_configured_repository_with_basic_auth() {
        let token_service = Stub::start(|r| {
            let basic = format!("Basic {}", b64("robot:s3cret"));
            if r.headers
                .get("authorization")
                .is_none_or(|v| v != basic.as_str())
            {
                return reply(401, "{}");
            }
            reply(200, r#"{"access_token":"registry-bearer"}"#)
        })
        .await;
        let realm = format!(
            "Bearer realm=\"{}/token\",service=\"registry.test\"",
            token_service.url
        );
        let registry = Stub::start(move |r| {
            if r.headers
                .get("authorization")
                .is_some_and(|v| v == "Bearer registry-bearer")
            {
                return reply(200, "{}");
            }
            let mut rep = reply(401, "{}");
            rep.headers.push(("www-authenticate", realm.clone()));
            rep
        })
        .await;
        check(
            &registry.addr,
            "scheme: http\nrepository: team/app\nreference: v2",
            "robot",
            "s3cret",
        )
        .await
        .expect("verified");
        let asked = token_service.seen();
        assert_eq!(
            asked[0].query.get("scope").map(String::as_str),
            Some("repository:team/app:pull")
        );
        assert_eq!(
            asked[0].query.get("service").map(String::as_str),
            Some("registry.test")
        );
        let heads: Vec<Seen> = registry
            .seen()
            .into_iter()
            .filter(|s| s.method == Method::HEAD)
            .collect();
        assert_eq!(heads.len(), 1);
        assert_eq!(heads[0].path, "/v2/team/app/manifests/v2");
        let accept = heads[0].headers["accept"].to_str().expect("ascii");
        assert!(
            accept.contains("application/vnd.oci.image.index.v1+json"),
            "{accept}"
        );
        assert!(
            accept.contains("application/vnd.docker.distribution.manifest.v2+json"),
            "{accept}"
        );
    }
}

/// The daemon's own `build()` reads the process environment (AWS chain, `GCE_METADATA_HOST`,
/// the `AZURE_*` workload identity variables). Setting variables in this multi-threaded test
/// process would race, so these tests run the provider in a child process (this test binary,
/// filtered to [`child::fetch_from_environment`]) with an environment made from scratch.
mod from_environment {
    use std::process::Stdio;

    use super::*;

    /// Runs `spec` in a child whose whole environment is `vars`; returns the login it fetched
    /// as `server|username|password-length`, or the error as `error|category|message`.
    async fn fetch_in_child(spec: &str, vars: &[(&str, &str)]) -> String {
        let exe = std::env::current_exe().expect("test binary");
        let out = tokio::process::Command::new(exe)
            .args([
                "child::fetch_from_environment",
                "--exact",
                "--include-ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env_clear()
            .envs(vars.iter().copied())
            .env("PK_CHILD_SPEC", spec)
            .stdin(Stdio::null())
            .output()
            .await
            .expect("child runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        stdout
            .lines()
            .find_map(|l| l.split_once("PK_CHILD_RESULT ").map(|(_, r)| r))
            .unwrap_or_else(|| {
                panic!(
                    "child printed no result: {stdout}\n{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })
            .to_string()
    }

    #[cfg(feature = "ecr")]
    #[tokio::test]
    async fn ecr_takes_irsa_and_the_endpoint_from_the_process_environment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let token_file = dir.path().join("token");
        std::fs::write(
            &token_file,
            fake_jwt(r#"{"sub":"system:serviceaccount:pk:pk"}"#),
        )
        .expect("write token");
        let moto = peer_env("PK_MOTO_URL");
        let vars = [
            (
                "AWS_ROLE_ARN",
                "arn:aws:iam::666666666666:role/pullkeeper-irsa",
            ),
            (
                "AWS_WEB_IDENTITY_TOKEN_FILE",
                token_file.to_str().expect("utf-8"),
            ),
            ("AWS_ENDPOINT_URL", moto.as_str()),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("AWS_CONFIG_FILE", "/nonexistent/pullkeeper-test/config"),
            (
                "AWS_SHARED_CREDENTIALS_FILE",
                "/nonexistent/pullkeeper-test/credentials",
            ),
        ];
        // No AWS_REGION: STS is reached through the first configured region.
        let got = fetch_in_child("type: ecr\nregions: [eu-north-1]", &vars).await;
        assert_eq!(
            got, "666666666666.dkr.ecr.eu-north-1.amazonaws.com|AWS|23",
            "moto's token for the IRSA role's account"
        );
    }

    #[cfg(feature = "gcp")]
    #[tokio::test]
    async fn gcp_honours_gce_metadata_host() {
        let stub = Stub::start(|r| {
            if r.headers
                .get("metadata-flavor")
                .is_none_or(|v| v != "Google")
            {
                return reply(403, "{}");
            }
            reply(
                200,
                r#"{"access_token":"ya29.env","expires_in":3599,"token_type":"Bearer"}"#,
            )
        })
        .await;
        let got = fetch_in_child(
            "type: gcp\nsource: metadata",
            &[("GCE_METADATA_HOST", stub.addr.as_str())],
        )
        .await;
        assert_eq!(got, "-|oauth2accesstoken|8");
        assert_eq!(stub.seen().len(), 1);
    }

    #[cfg(feature = "azure")]
    #[tokio::test]
    async fn azure_takes_the_workload_identity_webhook_variables() {
        let stub = Stub::start(|r| match r.path.as_str() {
            "/tenant-from-env/oauth2/v2.0/token"
                if r.form.get("client_id").map(String::as_str) == Some("client-from-env")
                    && r.form.get("client_assertion").map(String::as_str)
                        == Some("federated-from-env") =>
            {
                reply(200, r#"{"access_token":"entra"}"#)
            }
            "/oauth2/exchange"
                if r.form.get("tenant").map(String::as_str) == Some("tenant-from-env") =>
            {
                reply(200, r#"{"refresh_token":"acr-refresh"}"#)
            }
            _ => reply(400, r#"{"error":"invalid_request"}"#),
        })
        .await;
        let dir = tempfile::tempdir().expect("tempdir");
        let token_file = dir.path().join("azure-identity-token");
        std::fs::write(&token_file, "federated-from-env\n").expect("write token");
        let authority = format!("{}/", stub.url);
        let got = fetch_in_child(
            &format!(
                "type: azure\nregistry: {}\nregistryScheme: http\nsource: workloadIdentity",
                stub.addr
            ),
            &[
                ("AZURE_TENANT_ID", "tenant-from-env"),
                ("AZURE_CLIENT_ID", "client-from-env"),
                (
                    "AZURE_FEDERATED_TOKEN_FILE",
                    token_file.to_str().expect("utf-8"),
                ),
                ("AZURE_AUTHORITY_HOST", authority.as_str()),
            ],
        )
        .await;
        assert_eq!(
            got,
            format!("{}|00000000-0000-0000-0000-000000000000|11", stub.addr)
        );
    }
}

mod child {
    use super::*;

    /// Only meaningful inside a child started by the `from_environment` tests, which set
    /// `PK_CHILD_SPEC`; it prints what it fetched for the parent to check.
    #[tokio::test]
    #[ignore = "runs only as the child process of the from_environment tests"]
    async fn fetch_from_environment() {
        let Ok(yaml) = std::env::var("PK_CHILD_SPEC") else {
            // Run directly (`--include-ignored`): there is nothing to fetch for a parent.
            return;
        };
        let result = match spec(&yaml).build().await {
            Err(e) => format!("error|{}|{}", e.category(), e.message),
            Ok(provider) => match provider.fetch().await {
                Err(e) => format!("error|{}|{}", e.category(), e.message),
                Ok(c) => {
                    let l = &c.logins[0];
                    format!(
                        "{}|{}|{}",
                        l.server.as_deref().unwrap_or("-"),
                        l.username,
                        l.password.expose().len()
                    )
                }
            },
        };
        println!("PK_CHILD_RESULT {result}");
    }
}
