//! Every outbound call honours the proxy the environment names, as users expect of a program in a
//! corporate network: `HTTPS_PROXY`/`https_proxy` for https, `HTTP_PROXY`/`http_proxy` for http,
//! `NO_PROXY`/`no_proxy` for exceptions; and the Kubernetes client a kubeconfig's `proxy-url`.
//!
//! A real proxy (Debian's tinyproxy, on loopback, from tests/prereqs.sh) logs every request it
//! forwards; `pullkeeper plan --fetch` (the binary, in a process whose environment is made here)
//! calls each provider once, as `run` does: ECR with an assumed role (STS and ECR at moto), ECR
//! Public, an http endpoint over plain HTTP and one over HTTPS (a CONNECT tunnel), GCP with a
//! service-account key (the OAuth token endpoint), Azure (Entra and the ACR exchange), and
//! verification against the htpasswd registry, besides the API server. Each appears in the
//! proxy's log; an endpoint named in `NO_PROXY` does not, and is still reached.
// A scenario test reads top to bottom as the story it checks; splitting it hides the order.
#![allow(clippy::too_many_lines)]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use serde_json::Value;

/// tinyproxy on a free loopback port, in the foreground, logging every request.
struct Proxy {
    child: std::process::Child,
    url: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind loopback")
        .local_addr()
        .expect("address")
        .port()
}

impl Proxy {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("tinyproxy.log");
        let port = free_port();
        // No `ConnectPort` line: CONNECT is allowed to every port (the loopback registries and
        // the API server are not on 443). Only loopback may use it.
        let conf = format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 60\nLogFile \"{}\"\nLogLevel Connect\n\
             MaxClients 64\nAllow 127.0.0.1\nDisableViaHeader Yes\n",
            log.display()
        );
        let conf_path = dir.path().join("tinyproxy.conf");
        std::fs::write(&conf_path, conf).expect("write tinyproxy.conf");
        let child = std::process::Command::new("tinyproxy")
            .arg("-d")
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("this test needs tinyproxy (tests/prereqs.sh installs it)");
        let addr = format!("127.0.0.1:{port}");
        support::wait_for_named("tinyproxy listening", Duration::from_secs(10), || {
            let addr = addr.clone();
            async move { tokio::net::TcpStream::connect(addr).await.is_ok() }
        })
        .await;
        Self {
            child,
            url: format!("http://{addr}"),
            log,
            _dir: dir,
        }
    }

    /// Every request the proxy was asked for, `METHOD TARGET` (`GET http://h:p/path`,
    /// `CONNECT h:p`), in order.
    fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once("): ").filter(|_| l.contains(" Request (")))
            .map(|(_, r)| r.trim_end_matches(" HTTP/1.1").to_string())
            .collect()
    }

    /// How many requests went to each `host:port`.
    fn count_by_authority(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for request in self.requests() {
            let target = request.split_once(' ').map_or("", |(_, t)| t);
            let rest = target
                .strip_prefix("http://")
                .or_else(|| target.strip_prefix("https://"))
                .unwrap_or(target);
            let authority = rest.split('/').next().unwrap_or(rest).to_string();
            *out.entry(authority).or_insert(0) += 1;
        }
        out
    }
}

/// A local HTTP endpoint on loopback answering through `handler` and counting requests.
/// The requests a stub saw: method and path.
type Seen = Arc<Mutex<Vec<(Method, String)>>>;

struct Stub {
    addr: String,
    seen: Seen,
}

type Handler = Arc<dyn Fn(&Method, &str, &HeaderMap) -> (u16, &'static str, String) + Send + Sync>;

impl Stub {
    async fn start(
        handler: impl Fn(&Method, &str, &HeaderMap) -> (u16, &'static str, String)
        + Send
        + Sync
        + 'static,
    ) -> Self {
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
        Self { addr, seen }
    }

    fn port(&self) -> &str {
        self.addr.rsplit_once(':').map_or("", |(_, p)| p)
    }

    fn seen(&self) -> usize {
        self.seen.lock().expect("lock").len()
    }
}

async fn answer(
    State((handler, seen)): State<(Handler, Seen)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    _body: Bytes,
) -> impl IntoResponse {
    let (status, content_type, body) = handler(&method, uri.path(), &headers);
    seen.lock()
        .expect("lock")
        .push((method, uri.path().to_string()));
    (
        StatusCode::from_u16(status).expect("status"),
        [("content-type", content_type)],
        body,
    )
}

const JSON: &str = "application/json";

/// A JSON token endpoint as the `http` provider reads it.
fn token_endpoint() -> (u16, &'static str, String) {
    (
        200,
        JSON,
        r#"{"username":"robot","password":"pw-proxy","expires_in":3600}"#.into(),
    )
}

/// An HTTPS endpoint (`openssl s_server -WWW`, a certificate for 127.0.0.1 signed by a fresh CA)
/// serving one file: the token.
struct TlsStub {
    child: std::process::Child,
    addr: String,
    ca: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for TlsStub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("this test needs the `openssl` command");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn tls_stub() -> TlsStub {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec![
        "req",
        "-x509",
        "-days",
        "2",
        "-subj",
        "/CN=pullkeeper proxy test CA",
    ];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    ca.extend(["-addext", "basicConstraints=critical,CA:TRUE"]);
    ca.extend(["-addext", "keyUsage=critical,keyCertSign"]);
    openssl(d, &ca);
    let mut csr = vec!["req", "-subj", "/CN=127.0.0.1"];
    csr.extend(ec);
    csr.extend(["-keyout", "server.key", "-out", "server.csr"]);
    openssl(d, &csr);
    std::fs::write(
        d.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
    )
    .expect("write ext.cnf");
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.pem",
        ],
    );
    std::fs::write(d.join("token"), token_endpoint().2).expect("write token");
    let addr = format!("127.0.0.1:{}", free_port());
    let child = std::process::Command::new("openssl")
        .args(["s_server", "-quiet", "-WWW", "-accept", &addr])
        .args(["-cert", "server.pem", "-key", "server.key"])
        .current_dir(d)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_server");
    let probe = addr.clone();
    support::wait_for_named(
        "openssl s_server listening",
        Duration::from_secs(10),
        || {
            let probe = probe.clone();
            async move { tokio::net::TcpStream::connect(probe).await.is_ok() }
        },
    )
    .await;
    TlsStub {
        child,
        addr,
        ca: d.join("ca.pem"),
        _dir: dir,
    }
}

/// A throw-away RSA key as PKCS#8 PEM, for a GCP service-account key file.
fn rsa_private_key_pem() -> String {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::rsa::{KeyPair, KeySize};
    use base64::Engine as _;
    let pair = KeyPair::generate(KeySize::Rsa2048).expect("generate RSA key");
    let der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&pair).expect("pkcs8");
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).expect("ascii"))
        .collect();
    format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        lines.join("\n")
    )
}

/// The host:port of a URL such as `http://127.0.0.1:5000`.
fn authority(url: &str) -> String {
    url.split("://")
        .nth(1)
        .unwrap_or(url)
        .trim_end_matches('/')
        .to_string()
}

/// Runs the pullkeeper binary with exactly `vars` as its environment (plus PATH); returns its
/// exit code, stdout and stderr.
async fn pullkeeper(args: &[&str], vars: &[(&str, String)]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pullkeeper"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .output()
        .await
        .expect("pullkeeper runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Registry files that reach no namespace (`plan` then only fetches): `name` → body.
fn write_config(files: &[(&str, String)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, body) in files {
        let text = format!(
            "{body}secretName: {name}-pull\nnamespaces:\n  include: [pk-proxy-no-such-namespace]\n"
        );
        std::fs::write(dir.path().join(format!("{name}.yaml")), text).expect("write registry file");
    }
    dir
}

#[tokio::test]
async fn every_provider_call_goes_through_the_environment_proxy_and_no_proxy_hosts_do_not() {
    let proxy = Proxy::start().await;
    let http = Stub::start(|_, _, _| token_endpoint()).await;
    let direct = Stub::start(|_, _, _| token_endpoint()).await;
    let tls = tls_stub().await;
    let gcp = Stub::start(|method, path, _| {
        if method == Method::POST && path == "/token" {
            (
                200,
                JSON,
                r#"{"access_token":"ya29.proxy","expires_in":3599,"token_type":"Bearer"}"#.into(),
            )
        } else {
            (404, JSON, "{}".into())
        }
    })
    .await;
    let azure = Stub::start(|_, path, _| match path {
        "/tenant-proxy/oauth2/v2.0/token" => (200, JSON, r#"{"access_token":"entra"}"#.into()),
        "/oauth2/exchange" => (200, JSON, r#"{"refresh_token":"acr-refresh"}"#.into()),
        _ => (400, JSON, r#"{"error":"invalid_request"}"#.into()),
    })
    .await;
    let ecr_public = Stub::start(|_, _, headers| {
        let target = headers
            .get("x-amz-target")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if target.ends_with(".GetAuthorizationToken") {
            (
                200,
                "application/x-amz-json-1.1",
                r#"{"authorizationData":{"authorizationToken":"QVdTOnB1YmxpYy1wYXNzd29yZA==","expiresAt":4070908800.5}}"#.into(),
            )
        } else {
            (400, "application/x-amz-json-1.1", "{}".into())
        }
    })
    .await;
    let moto = support::moto_url();
    let registry = support::Registry::htpasswd();
    let image = support::test_image();
    let (repository, reference) = image.split_once(':').expect("image is repo:tag");

    let scratch = tempfile::tempdir().expect("tempdir");
    let key_file = scratch.path().join("gcp-key.json");
    std::fs::write(
        &key_file,
        serde_json::json!({
            "type": "service_account",
            "client_email": "puller@proxy-test.iam.gserviceaccount.com",
            "private_key": rsa_private_key_pem(),
            "token_uri": format!("http://{}/token", gcp.addr),
        })
        .to_string(),
    )
    .expect("write key");
    let azure_token = scratch.path().join("azure-token");
    std::fs::write(&azure_token, "federated\n").expect("write token");

    let mapping =
        "  response: {username: /username, password: /password, expiresIn: /expires_in}\n";
    let config = write_config(&[
        (
            "ecr",
            format!(
                "provider:\n  type: ecr\n  regions: [eu-west-1]\n  endpointUrl: {moto}\n  \
                 roleArn: arn:aws:iam::666666666666:role/pullkeeper-proxy\n"
            ),
        ),
        (
            "ecr-public",
            format!(
                "provider:\n  type: ecr-public\n  endpointUrl: http://{}\n",
                ecr_public.addr
            ),
        ),
        (
            "http-plain",
            format!(
                "provider:\n  type: http\n  url: http://{}/token\n{mapping}servers: [plain.example]\n",
                http.addr
            ),
        ),
        (
            "http-tls",
            format!(
                "provider:\n  type: http\n  url: https://{}/token\n  caFile: {}\n{mapping}servers: [tls.example]\n",
                tls.addr,
                tls.ca.display()
            ),
        ),
        (
            "http-direct",
            format!(
                "provider:\n  type: http\n  url: http://localhost:{}/token\n{mapping}servers: [direct.example]\n",
                direct.port()
            ),
        ),
        (
            "gcp",
            format!(
                "provider:\n  type: gcp\n  source: serviceAccountKey\n  keyFile: {}\nservers: [europe-docker.pkg.dev]\n",
                key_file.display()
            ),
        ),
        (
            "azure",
            format!(
                "provider:\n  type: azure\n  source: workloadIdentity\n  registry: {}\n  registryScheme: http\n  \
                 tenantId: tenant-proxy\n  clientId: client-proxy\n  tokenFile: {}\n  authorityHost: http://{}/\n",
                azure.addr,
                azure_token.display(),
                azure.addr
            ),
        ),
        (
            "verified",
            format!(
                "provider:\n  type: static\n  username: {{env: PK_PROXY_USER}}\n  password: {{env: PK_PROXY_PASSWORD}}\n\
                 servers: [{}]\nverify: {{scheme: http, repository: {repository}, reference: {reference}}}\n",
                registry.host
            ),
        ),
    ]);

    let vars = [
        ("KUBECONFIG", support::env("KUBECONFIG")),
        // Both spellings, as users set them: upper case for https, lower case for http.
        ("HTTPS_PROXY", proxy.url.clone()),
        ("http_proxy", proxy.url.clone()),
        ("NO_PROXY", "localhost".to_string()),
        ("AWS_ACCESS_KEY_ID", "AKIAPROXYTEST0000000".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "proxy-test-secret".to_string()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
        (
            "AWS_CONFIG_FILE",
            "/nonexistent/pullkeeper-test/config".to_string(),
        ),
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/pullkeeper-test/credentials".to_string(),
        ),
        ("PK_PROXY_USER", registry.username.clone()),
        ("PK_PROXY_PASSWORD", registry.password.clone()),
    ];
    let dir = config.path().to_str().expect("utf-8").to_string();
    let instance = format!("pk-proxy-{}", support::random_string(6));
    let (code, stdout, stderr) = pullkeeper(
        &[
            "plan",
            "--config",
            &dir,
            "--fetch",
            "-o",
            "json",
            "--instance",
            &instance,
        ],
        &vars,
    )
    .await;
    let requests = proxy.requests();
    assert_eq!(
        code, 0,
        "plan --fetch through the proxy: {stderr}\n{stdout}\nproxy saw: {requests:#?}"
    );
    let plan: Value = serde_json::from_str(&stdout).expect("plan JSON");
    let fetched: BTreeMap<&str, &Value> = plan["registries"]
        .as_array()
        .expect("registries")
        .iter()
        .map(|r| (r["name"].as_str().expect("name"), &r["credential"]))
        .collect();
    assert_eq!(fetched.len(), 8, "{fetched:#?}");
    for (name, credential) in &fetched {
        assert_eq!(credential["source"], "fetched", "{name}: {credential}");
    }
    // The assumed role's account: STS answered before ECR did.
    assert_eq!(
        fetched["ecr"]["hosts"][0], "666666666666.dkr.ecr.eu-west-1.amazonaws.com",
        "{}",
        fetched["ecr"]
    );

    let counts = proxy.count_by_authority();
    let api = authority(&support::env("PK_KUBE_SERVER"));
    let moto = authority(&moto);
    let expected = [
        ("the API server (kube, CONNECT)", api.as_str(), 1),
        // AssumeRole at STS, then GetAuthorizationToken at ECR: both at moto.
        ("STS and ECR at moto", moto.as_str(), 2),
        ("ECR Public", ecr_public.addr.as_str(), 1),
        ("the http provider over http", http.addr.as_str(), 1),
        (
            "the http provider over https (CONNECT)",
            tls.addr.as_str(),
            1,
        ),
        ("GCP's token endpoint", gcp.addr.as_str(), 1),
        // Entra's token, then the ACR exchange.
        ("Entra and the ACR exchange", azure.addr.as_str(), 2),
        // The /v2/ challenge and the manifest HEAD.
        ("verification at the registry", registry.host.as_str(), 2),
    ];
    println!("requests the proxy forwarded:");
    for (what, at, _) in &expected {
        println!("  {what} ({at}): {}", counts.get(*at).copied().unwrap_or(0));
    }
    println!(
        "  the NO_PROXY endpoint (localhost:{}): none through the proxy, {} direct",
        direct.port(),
        direct.seen()
    );
    for (what, at, at_least) in expected {
        let got = counts.get(at).copied().unwrap_or(0);
        assert!(
            got >= at_least,
            "{what}: {got} requests through the proxy to {at}, expected at least {at_least}; \
             the proxy saw {requests:#?}"
        );
    }
    assert!(
        requests
            .iter()
            .any(|r| r == &format!("CONNECT {}", tls.addr)),
        "https goes through a CONNECT tunnel: {requests:#?}"
    );
    assert_eq!(http.seen(), 1, "the plain http endpoint was asked once");
    // NO_PROXY: reached directly, never through the proxy.
    assert_eq!(direct.seen(), 1, "the NO_PROXY endpoint was reached");
    assert!(
        !requests.iter().any(|r| r.contains("localhost")),
        "a NO_PROXY host went through the proxy: {requests:#?}"
    );
}

/// The Kubernetes client takes the kubeconfig's `proxy-url` (no proxy variable set): kubectl's
/// way for a cluster reached through a proxy.
#[tokio::test]
async fn the_kubeconfig_proxy_url_reaches_the_api_server_through_the_proxy() {
    let proxy = Proxy::start().await;
    let admin = std::fs::read_to_string(support::env("KUBECONFIG")).expect("read kubeconfig");
    let mut kubeconfig: serde_yaml_ng::Value = serde_yaml_ng::from_str(&admin).expect("kubeconfig");
    for cluster in kubeconfig["clusters"]
        .as_sequence_mut()
        .expect("clusters")
        .iter_mut()
    {
        cluster["cluster"]["proxy-url"] = proxy.url.clone().into();
    }
    let scratch = tempfile::tempdir().expect("tempdir");
    let path = scratch.path().join("kubeconfig");
    std::fs::write(&path, serde_yaml_ng::to_string(&kubeconfig).expect("yaml")).expect("write");
    let config = write_config(&[(
        "static",
        "provider:\n  type: static\n  username: {value: robot}\n  password: {env: PK_PW}\nservers: [r.example]\n"
            .to_string(),
    )]);
    let instance = format!("pk-proxy-{}", support::random_string(6));
    let (code, stdout, stderr) = pullkeeper(
        &[
            "plan",
            "--config",
            config.path().to_str().expect("utf-8"),
            "--no-file-checks",
            "--kubeconfig",
            path.to_str().expect("utf-8"),
            "--instance",
            &instance,
        ],
        &[],
    )
    .await;
    assert_eq!(
        code, 0,
        "plan through the kubeconfig's proxy-url: {stderr}\n{stdout}"
    );
    let api = authority(&support::env("PK_KUBE_SERVER"));
    let requests = proxy.requests();
    assert!(
        requests.iter().any(|r| r == &format!("CONNECT {api}")),
        "the API server was not reached through the proxy: {requests:#?}"
    );
}
