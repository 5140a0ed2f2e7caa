//! The other route, on the real node: the kubelet of `tests/cluster/up` started with
//! `PK_CREDENTIAL_PROVIDER` execs `pullkeeper credential-provider` for images on
//! `*.pullkeeper.test`. Pods here carry no `imagePullSecrets` anywhere (no Secret exists) and
//! still pull from the private htpasswd registry, with the credential the plugin fetched through
//! a registry file's provider. Each test gives containerd its own alias host of the loopback
//! registry (`certs.d/ALIAS/hosts.toml`) and the plugin its own registry file, and counts the
//! plugin's invocations in the log it appends to (one JSON line each, no credential).

mod support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::RawQuery;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::Client;
use serde_json::Value;
use support::{Registry, TestNamespaces};

/// Liveness bound, far above what the node needs.
const WAIT: Duration = Duration::from_mins(2);

/// One host the plugin serves: an alias of a loopback registry, its registry file, its password.
struct PluginHost {
    /// `NAME.pullkeeper.test`: the image host, the registry file's `servers` entry.
    host: String,
    registry_file: PathBuf,
    secret_files: Vec<PathBuf>,
    hosts_dir: PathBuf,
}

impl PluginHost {
    /// An alias of `backend` for containerd, and a registry file whose provider is `provider`
    /// (YAML lines under `provider:`), with `refresh` (YAML lines under `refresh:`).
    fn new(test: &str, backend: &str, provider: &str, refresh: &str) -> Self {
        let name = format!("{test}-{}", support::random_string(6));
        let host = format!("{name}.{}", support::env("PK_CREDENTIAL_PROVIDER_DOMAIN"));
        let hosts_dir = PathBuf::from(support::env("PK_NODE_CERTS_D")).join(&host);
        std::fs::create_dir_all(&hosts_dir).expect("certs.d dir");
        // No credentials here: containerd only learns where the alias lives.
        std::fs::write(
            hosts_dir.join("hosts.toml"),
            format!(
                "server = \"http://{backend}\"\n\n[host.\"http://{backend}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
            ),
        )
        .expect("hosts.toml");
        let config = PathBuf::from(support::env("PK_CREDENTIAL_PROVIDER_CONFIG_DIR"));
        let registry_file = config.join(format!("{name}.yaml"));
        let text = format!(
            "provider:\n{provider}servers: [\"{host}\"]\nsecretName: {name}\nrefresh:\n{refresh}"
        );
        // Written whole (hidden name, then renamed): the plugin may read the directory any time.
        let tmp = config.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).expect("registry file");
        std::fs::rename(&tmp, &registry_file).expect("rename registry file");
        Self {
            host,
            registry_file,
            secret_files: Vec::new(),
            hosts_dir,
        }
    }

    /// A `static` provider with `username` and the password in a fresh file.
    fn static_provider(test: &str, backend: &Registry, password: &str, refresh: &str) -> Self {
        let password_file = support::write_scratch_file("secrets", ".txt", password);
        let provider = format!(
            "  type: static\n  username: {{value: \"{}\"}}\n  password: {{file: {}}}\n",
            backend.username,
            password_file.display()
        );
        let mut host = Self::new(test, &backend.host, &provider, refresh);
        host.secret_files.push(password_file);
        host
    }

    /// The test image under this host.
    fn image(&self) -> String {
        format!("{}/{}", self.host, support::test_image())
    }

    /// The plugin's invocations for this host, in order.
    fn invocations(&self) -> Vec<Value> {
        let log = support::env("PK_CREDENTIAL_PROVIDER_LOG");
        std::fs::read_to_string(&log)
            .unwrap_or_else(|e| panic!("cannot read {log}: {e}"))
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["imageHost"] == self.host.as_str())
            .collect()
    }

    /// Removes the registry file first (the plugin checks the files a config names), then the
    /// secret files and the alias.
    fn remove(self) {
        let _ = std::fs::remove_file(&self.registry_file);
        for f in &self.secret_files {
            let _ = std::fs::remove_file(f);
        }
        let _ = std::fs::remove_dir_all(&self.hosts_dir);
    }
}

fn no_pull_secrets(pod: &Pod) {
    assert_eq!(
        pod.spec.as_ref().and_then(|s| s.image_pull_secrets.clone()),
        None,
        "the Pod must carry no imagePullSecrets"
    );
}

/// The kubelet's Events of a Pod with `reason`, their messages.
async fn kubelet_events(client: &Client, pod: &Pod, reason: &str) -> Vec<String> {
    let ns = pod.metadata.namespace.as_deref().expect("namespace");
    support::events_of(client, ns, &support::pod_uid(pod))
        .await
        .into_iter()
        .filter(|e: &Event| e.reason.as_deref() == Some(reason))
        .filter(|e| e.source.as_ref().and_then(|s| s.component.as_deref()) == Some("kubelet"))
        .filter_map(|e| e.message)
        .collect()
}

/// Creates Pod `name` (pull policy Always: every Pod pulls, so every Pod needs a credential) and
/// waits until it runs; returns it.
async fn run_pod(client: &Client, ns: &str, name: &str, image: &str) -> Pod {
    let pod = support::create_node_pod(client, ns, name, &[("app", image)], "Always").await;
    no_pull_secrets(&pod);
    let pod = support::wait_pod_running(client, ns, name, WAIT).await;
    let pulled = support::wait_for_named(
        &format!("the kubelet's Pulled event of {name}"),
        WAIT,
        || async {
            let events = kubelet_events(client, &pod, "Pulled").await;
            events.into_iter().find(|m| m.contains(image))
        },
    )
    .await;
    println!("{name}: {pulled}");
    pod
}

#[tokio::test]
async fn a_pod_without_pull_secrets_pulls_the_private_image_through_the_plugin_which_the_kubelet_calls_once_per_cache_duration()
 {
    let test = "cp-static";
    let client = support::admin_client().await;
    let namespaces = TestNamespaces::new(client.clone(), test);
    let ns = namespaces.create().await;
    let backend = Registry::htpasswd();
    // Static logins state no expiry: cached for renewAt × defaultLifetime = 0.5 × 40 s = 20 s.
    let host = PluginHost::static_provider(
        test,
        &backend,
        &backend.password,
        "  defaultLifetime: 40s\n  renewAt: 0.5\n",
    );
    let image = host.image();

    run_pod(&client, &ns, "first", &image).await;
    let calls = host.invocations();
    assert_eq!(
        calls.len(),
        1,
        "one invocation for the first pull: {calls:?}"
    );
    assert_eq!(calls[0]["outcome"], "served");
    assert_eq!(calls[0]["provider"], "static");
    assert_eq!(calls[0]["cacheDurationSeconds"], 20);
    println!("invocation: {}", calls[0]);

    // More Pods of the same registry within the cache duration: pulled with the cached answer.
    for name in ["second", "third"] {
        run_pod(&client, &ns, name, &image).await;
    }
    let calls = host.invocations();
    let first_at = chrono::DateTime::parse_from_rfc3339(calls[0]["time"].as_str().expect("time"))
        .expect("RFC 3339 time");
    let within = chrono::Utc::now().signed_duration_since(first_at);
    assert!(
        within < chrono::TimeDelta::seconds(20),
        "the Pods took {within} to run; the cache check needs them within 20 s"
    );
    assert_eq!(
        calls.len(),
        1,
        "3 Pods of one registry within cacheDuration: the kubelet called the plugin once: {calls:?}"
    );
    println!("3 Pods within {within}: {} invocation", calls.len());

    // After the duration the kubelet asks again.
    let until = first_at + chrono::TimeDelta::seconds(21);
    support::wait_for_named("the cache duration to pass", WAIT, || async {
        chrono::Utc::now() > until
    })
    .await;
    run_pod(&client, &ns, "after-expiry", &image).await;
    let calls = host.invocations();
    assert_eq!(
        calls.len(),
        2,
        "a pull after cacheDuration invokes the plugin again: {calls:?}"
    );
    println!(
        "4 Pods, one after the cache duration: {} invocations",
        calls.len()
    );

    namespaces.cleanup().await;
    host.remove();
}

#[tokio::test]
async fn a_wrong_password_from_the_plugin_ends_in_err_image_pull_with_the_registrys_401() {
    let test = "cp-wrong";
    let client = support::admin_client().await;
    let namespaces = TestNamespaces::new(client.clone(), test);
    let ns = namespaces.create().await;
    let backend = Registry::htpasswd();
    let host = PluginHost::static_provider(
        test,
        &backend,
        &format!("wrong-{}", support::random_string(8)),
        "  defaultLifetime: 10m\n",
    );
    let image = host.image();

    let pod = support::create_node_pod(&client, &ns, "wrong", &[("app", &image)], "Always").await;
    no_pull_secrets(&pod);
    support::wait_container_waiting(&client, &ns, "wrong", "ErrImagePull", WAIT).await;
    let failed = support::wait_for_named("the kubelet's Failed event", WAIT, || async {
        kubelet_events(&client, &pod, "Failed")
            .await
            .into_iter()
            .find(|m| {
                let m = m.to_ascii_lowercase();
                m.contains(&image) && (m.contains("401") || m.contains("unauthorized"))
            })
    })
    .await;
    println!("kubelet: {failed}");
    let calls = host.invocations();
    assert!(
        !calls.is_empty() && calls.iter().all(|c| c["outcome"] == "served"),
        "the plugin served the (wrong) credential; the registry refused it: {calls:?}"
    );

    // diagnose, given the node's invocation log, names the route and the refusal: not a
    // missing Secret (there is none, by design).
    let (code, out) = diagnose(&ns, "wrong");
    println!("diagnose:\n{out}");
    assert_eq!(code, Some(1), "a cause was found: {out}");
    assert!(
        out.contains(&format!(
            "cause: registry {} refused the credential pullkeeper's credential provider served at",
            host.host
        )) && out.contains("route: kubelet credential provider"),
        "{out}"
    );

    // A Pod pulling from a host no provider entry matches (the registry itself, under its
    // loopback name): 401 too, and diagnose says the plugin was never asked for it.
    let direct = format!("{}/{}", backend.host, support::test_image());
    let pod = support::create_node_pod(&client, &ns, "direct", &[("app", &direct)], "Always").await;
    no_pull_secrets(&pod);
    support::wait_container_waiting(&client, &ns, "direct", "ErrImagePull", WAIT).await;
    let (code, out) = diagnose(&ns, "direct");
    println!("diagnose:\n{out}");
    assert_eq!(code, Some(1), "a cause was found: {out}");
    assert!(
        out.contains(&format!(
            "credential provider: the kubelet has not asked pullkeeper's credential provider for {} for this Pod",
            backend.host
        )),
        "{out}"
    );
    assert!(
        !out.contains(&backend.password),
        "no credential in the output"
    );

    namespaces.cleanup().await;
    host.remove();
}

/// `pullkeeper diagnose -n NS POD` with the plugin's registry files and the node's invocation
/// log: its exit code and text output.
fn diagnose(ns: &str, pod: &str) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pullkeeper"))
        .arg("diagnose")
        .arg("--config")
        .arg(support::env("PK_CREDENTIAL_PROVIDER_CONFIG_DIR"))
        .arg("--credential-provider-log")
        .arg(support::env("PK_CREDENTIAL_PROVIDER_LOG"))
        // Other tests add and remove their files meanwhile: a password file removed between
        // reading a registry file and checking it must not fail this one.
        .arg("--no-file-checks")
        .args(["-n", ns, pod])
        .output()
        .expect("run pullkeeper diagnose");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// A JSON answer (this crate's axum has no `json` feature).
fn json_reply(body: &Value) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}

/// A credential broker on loopback: `GET /pull` answers a login with `expires_in`, keeping
/// each request's query string.
async fn start_broker(
    username: String,
    password: String,
    expires_in: u64,
) -> (String, Arc<Mutex<Vec<String>>>) {
    let asked = Arc::new(Mutex::new(Vec::new()));
    let seen = asked.clone();
    let app = axum::Router::new().route(
        "/pull",
        axum::routing::get(move |RawQuery(query): RawQuery| {
            let (username, password, seen) = (username.clone(), password.clone(), seen.clone());
            async move {
                seen.lock().expect("lock").push(query.unwrap_or_default());
                json_reply(&serde_json::json!({
                    "username": username, "password": password, "expires_in": expires_in,
                }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let url = format!("http://{}/pull", listener.local_addr().expect("address"));
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("broker serves");
    });
    (url, asked)
}

/// A plugin host whose registry file's http provider asks a loopback broker for the htpasswd
/// registry's login (`expires_in: 600`, `renewAt: 0.5`), with `extra` provider lines; the
/// broker's requests' query strings.
async fn broker_host(test: &str, extra: &str) -> (Registry, PluginHost, Arc<Mutex<Vec<String>>>) {
    let backend = Registry::htpasswd();
    let (url, asked) = start_broker(backend.username.clone(), backend.password.clone(), 600).await;
    let provider = format!(
        "  type: http\n  url: {url}\n{extra}  response:\n    username: /username\n    password: /password\n    expiresIn: /expires_in\n"
    );
    let host = PluginHost::new(test, &backend.host, &provider, "  renewAt: 0.5\n");
    (backend, host, asked)
}

#[tokio::test]
async fn an_http_broker_behind_the_plugin_serves_the_pull_cached_for_renew_at_of_its_expires_in() {
    let test = "cp-http";
    let client = support::admin_client().await;
    let namespaces = TestNamespaces::new(client.clone(), test);
    let ns = namespaces.create().await;
    let (_, host, broker_calls) = broker_host(test, "").await;

    run_pod(&client, &ns, "from-broker", &host.image()).await;
    let calls = host.invocations();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["provider"], "http");
    // expires_in 600 s at renewAt 0.5 (a second may pass between the answer and the rule).
    let cached = calls[0]["cacheDurationSeconds"].as_u64().expect("seconds");
    assert!((299..=300).contains(&cached), "{}", calls[0]);
    assert_eq!(
        broker_calls.lock().expect("lock").len(),
        1,
        "one broker call per invocation"
    );
    println!("invocation: {}", calls[0]);

    namespaces.cleanup().await;
    host.remove();
}

/// A broker that answers per repository (`imageQuery`): the plugin's answer is keyed by the
/// repository and cached per image, so the kubelet asks again for another repository of the
/// same host, and not for a second Pod of the same one. (The kubelet hands the plugin the
/// repository without tag or digest, so a second tag of one repository is served from the
/// cache too.)
#[tokio::test]
async fn a_broker_asked_per_repository_is_cached_per_image_by_the_kubelet() {
    let test = "cp-image";
    let client = support::admin_client().await;
    let namespaces = TestNamespaces::new(client.clone(), test);
    let ns = namespaces.create().await;
    let (backend, host, broker_calls) = broker_host(test, "  imageQuery: repository\n").await;
    // A second repository on the same registry: the test image copied there.
    let (repo, tag) = support::test_image()
        .rsplit_once(':')
        .map(|(r, t)| (r.to_string(), t.to_string()))
        .expect("a tagged test image");
    let second_repo = format!("{repo}-{}", support::random_string(6));
    let creds = format!("{}:{}", backend.username, backend.password);
    let copied = std::process::Command::new("skopeo")
        .args([
            "--policy",
            &support::env("PK_SKOPEO_POLICY"),
            "copy",
            "--quiet",
        ])
        .args(["--src-tls-verify=false", "--dest-tls-verify=false"])
        .args(["--src-creds", &creds, "--dest-creds", &creds])
        .arg(format!("docker://{}/{repo}:{tag}", backend.host))
        .arg(format!("docker://{}/{second_repo}:{tag}", backend.host))
        .output()
        .expect("run skopeo");
    assert!(
        copied.status.success(),
        "copying the test image: {}",
        String::from_utf8_lossy(&copied.stderr)
    );
    let first = host.image();
    let second = format!("{}/{second_repo}:{tag}", host.host);

    run_pod(&client, &ns, "first", &first).await;
    run_pod(&client, &ns, "first-again", &first).await;
    let calls = host.invocations();
    assert_eq!(calls.len(), 1, "the same image again is cached: {calls:?}");
    run_pod(&client, &ns, "second", &second).await;
    let calls = host.invocations();
    assert_eq!(
        calls.len(),
        2,
        "another repository of the host asks again (a Registry answer would have served it): {calls:?}"
    );
    let asked = broker_calls.lock().expect("lock").clone();
    let query = |r: &str| {
        format!(
            "repository={}",
            url::form_urlencoded::byte_serialize(format!("{}/{r}", host.host).as_bytes())
                .collect::<String>()
        )
    };
    assert_eq!(
        asked,
        vec![query(&repo), query(&second_repo)],
        "the broker was asked for each repository"
    );
    println!(
        "3 Pods of 2 repositories on {}: {} invocations, broker asked {asked:?}",
        host.host,
        calls.len()
    );

    namespaces.cleanup().await;
    host.remove();
}

#[test]
fn the_node_runs_the_plugin_built_from_this_tree() {
    // The kubelet's bin dir holds a copy of the binary PK_CREDENTIAL_PROVIDER named at `up`.
    let config = PathBuf::from(support::env("PK_CREDENTIAL_PROVIDER_CONFIG_DIR"));
    let bin = config
        .parent()
        .map(|p| p.join("bin/pullkeeper"))
        .expect("credential-provider dir");
    assert!(Path::new(&bin).is_file(), "{} missing", bin.display());
    let out = std::process::Command::new(&bin)
        .args(["credential-provider", "--help"])
        .output()
        .expect("run the plugin");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("CredentialProviderRequest"));
}

/// The audience the test kubelet's `tokenAttributes` ask the Pod's ServiceAccount token for.
fn token_audience() -> String {
    support::env("PK_CREDENTIAL_PROVIDER_AUDIENCE")
}

/// A broker that knows workloads, not nodes: `GET /pull` with `Authorization: Bearer TOKEN`
/// asks the API server who TOKEN is (a TokenReview for the kubelet's audience) and answers the
/// login only for `allowed` (`system:serviceaccount:NS:NAME`); 403 for anyone else. Records the
/// identities it saw.
async fn start_identity_broker(
    client: Client,
    allowed: String,
    login: (String, String),
) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    let handler = move |headers: HeaderMap| {
        let (client, allowed, login, record) = (
            client.clone(),
            allowed.clone(),
            login.clone(),
            record.clone(),
        );
        async move {
            let Some(token) = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
            else {
                record.lock().expect("lock").push("(no token)".into());
                return StatusCode::UNAUTHORIZED.into_response();
            };
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token: token.to_string(),
                    audiences: Some(vec![token_audience()]),
                },
                ..TokenReview::default()
            };
            let reviewed = kube::Api::<TokenReview>::all(client)
                .create(&kube::api::PostParams::default(), &review)
                .await;
            let user = reviewed
                .ok()
                .and_then(|r| r.status)
                .filter(|s| s.authenticated == Some(true))
                .and_then(|s| s.user)
                .and_then(|u| u.username)
                .unwrap_or_else(|| "(not authenticated)".into());
            record.lock().expect("lock").push(user.clone());
            if user == allowed {
                json_reply(&serde_json::json!({"username": login.0, "password": login.1, "expires_in": 600}))
                    .into_response()
            } else {
                StatusCode::FORBIDDEN.into_response()
            }
        }
    };
    let app = axum::Router::new().route("/pull", axum::routing::get(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let url = format!("http://{}/pull", listener.local_addr().expect("address"));
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("broker serves");
    });
    (url, seen)
}

#[tokio::test]
async fn with_the_pods_own_service_account_token_the_broker_serves_one_workload_and_refuses_its_neighbour()
 {
    use k8s_openapi::api::core::v1::ServiceAccount;
    let test = "cp-identity";
    let client = support::admin_client().await;
    let namespaces = TestNamespaces::new(client.clone(), test);
    let ns = namespaces.create().await;
    let accounts: kube::Api<ServiceAccount> = kube::Api::namespaced(client.clone(), &ns);
    for name in ["puller", "neighbour"] {
        let sa: ServiceAccount =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))
                .expect("ServiceAccount");
        accounts
            .create(&kube::api::PostParams::default(), &sa)
            .await
            .expect("create ServiceAccount");
    }
    let backend = Registry::htpasswd();
    let allowed = format!("system:serviceaccount:{ns}:puller");
    let (url, seen) = start_identity_broker(
        client.clone(),
        allowed.clone(),
        (backend.username.clone(), backend.password.clone()),
    )
    .await;
    let provider = format!(
        "  type: http\n  url: {url}\n  auth: podServiceAccountToken\n  response:\n    username: /username\n    password: /password\n    expiresIn: /expires_in\n"
    );
    let host = PluginHost::new(test, &backend.host, &provider, "  renewAt: 0.5\n");
    let image = host.image();
    let pods: kube::Api<Pod> = kube::Api::namespaced(client.clone(), &ns);
    for (pod, sa) in [("allowed", "puller"), ("refused", "neighbour")] {
        let mut spec =
            support::node_pod_spec(&[("app", &image)], "Always", Some(&support::node_name()));
        spec["serviceAccountName"] = Value::from(sa);
        let p: Pod =
            serde_json::from_value(serde_json::json!({"metadata": {"name": pod}, "spec": spec}))
                .expect("Pod");
        pods.create(&kube::api::PostParams::default(), &p)
            .await
            .expect("create Pod");
    }

    support::wait_pod_running(&client, &ns, "allowed", WAIT).await;
    let refused =
        support::wait_container_waiting(&client, &ns, "refused", "ErrImagePull", WAIT).await;
    no_pull_secrets(&refused);
    let failed = support::wait_for_named("the refused Pod's Failed event", WAIT, || async {
        kubelet_events(&client, &refused, "Failed")
            .await
            .into_iter()
            .find(|m| m.contains(&image))
    })
    .await;
    println!("neighbour: {failed}");

    let identities = seen.lock().expect("lock").clone();
    println!("broker saw: {identities:?}");
    assert!(identities.contains(&allowed), "{identities:?}");
    assert!(
        identities.contains(&format!("system:serviceaccount:{ns}:neighbour")),
        "the neighbour's own token reached the broker: {identities:?}"
    );
    let calls = host.invocations();
    println!("invocations: {calls:?}");
    assert!(calls.iter().any(|c| c["outcome"] == "served"), "{calls:?}");
    assert!(
        calls.iter().any(|c| c["outcome"] == "auth_denied"),
        "{calls:?}"
    );

    namespaces.cleanup().await;
    host.remove();
}

/// Runs the built binary as the kubelet does: `request` on stdin; returns (exit code, stdout,
/// stderr).
fn invoke_plugin(config: &Path, request: &str, extra: &[&str]) -> (i32, String, String) {
    use std::io::Write as _;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pullkeeper"))
        .args(["credential-provider", "--config"])
        .arg(config)
        .args(extra)
        .env_remove("PULLKEEPER_CREDENTIAL_PROVIDER_LOG")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the plugin");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(request.as_bytes())
        .expect("write the request");
    let out = child.wait_with_output().expect("the plugin ends");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// Multi-threaded: the broker answers on the runtime while the test waits for the plugin process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_provider_presents_the_token_the_kubelet_passed_and_without_one_says_why_in_one_line()
 {
    use axum::http::HeaderMap;
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let record = seen.clone();
    let app = axum::Router::new().route(
        "/pull",
        axum::routing::get(move |headers: HeaderMap| {
            let record = record.clone();
            async move {
                let auth = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("(none)")
                    .to_string();
                record.lock().expect("lock").push(auth);
                json_reply(&serde_json::json!({"username": "robot", "password": "broker-pw", "expires_in": 60}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let url = format!("http://{}/pull", listener.local_addr().expect("address"));
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("broker serves");
    });
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("broker.yaml"),
        format!(
            "provider:\n  type: http\n  url: {url}\n  auth: podServiceAccountToken\n  response: {{username: /username, password: /password, expiresIn: /expires_in}}\n\
             servers: [registry.example]\nsecretName: broker-pull\n"
        ),
    )
    .expect("registry file");
    let request = |token: Option<&str>| {
        let mut r = serde_json::json!({
            "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
            "kind": "CredentialProviderRequest",
            "image": "registry.example/team/app:v1",
        });
        if let Some(t) = token {
            r["serviceAccountToken"] = Value::from(t);
        }
        r.to_string()
    };

    let (code, stdout, stderr) = invoke_plugin(dir.path(), &request(Some("pod-token-1")), &[]);
    assert_eq!(code, 0, "{stderr}");
    let answer: Value = serde_json::from_str(&stdout).expect("one JSON response");
    assert_eq!(answer["auth"]["registry.example"]["password"], "broker-pw");
    // expires_in 60 s × renewAt 2/3, rounded down (the answer's age makes it 39 s at times).
    assert!(
        ["39s", "40s"].contains(&answer["cacheDuration"].as_str().unwrap_or_default()),
        "{answer}"
    );
    assert_eq!(
        *seen.lock().expect("lock"),
        vec!["Bearer pod-token-1".to_string()]
    );

    let (code, stdout, stderr) = invoke_plugin(dir.path(), &request(None), &[]);
    assert_eq!(code, 1);
    assert!(stdout.is_empty(), "no response on an error: {stdout}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("podServiceAccountToken"), "{stderr}");
    assert!(!stderr.contains("broker-pw"));
    println!("without a token: {}", stderr.trim_end());
    assert_eq!(
        seen.lock().expect("lock").len(),
        1,
        "no broker call without a token"
    );
}

#[test]
fn ecr_assumes_the_role_named_in_the_pods_service_account_annotation_with_the_pods_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config");
    std::fs::create_dir(&config).expect("config dir");
    std::fs::write(
        config.join("ecr.yaml"),
        format!(
            "provider:\n  type: ecr\n  regions: [us-east-1]\n  endpointUrl: {}\n  podRoleAnnotation: eks.amazonaws.com/role-arn\n\
             secretName: ecr-pull\n",
            support::moto_url()
        ),
    )
    .expect("registry file");
    let log = dir.path().join("invocations.log");
    let log_arg = log.to_str().expect("utf-8 path");
    let host = "666666666666.dkr.ecr.us-east-1.amazonaws.com";
    let request = |token: Option<&str>, role: Option<&str>| {
        let mut r = serde_json::json!({
            "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
            "kind": "CredentialProviderRequest",
            "image": format!("{host}/team/app:v1"),
            "serviceAccountAnnotations": {},
        });
        if let Some(t) = token {
            r["serviceAccountToken"] = Value::from(t);
        }
        if let Some(role) = role {
            r["serviceAccountAnnotations"]["eks.amazonaws.com/role-arn"] = Value::from(role);
        }
        r.to_string()
    };
    // A JWT-shaped token; moto does not verify its signature (AWS would, against the cluster's
    // OIDC issuer).
    let token =
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6YXBwOnB1bGxlciJ9.c2ln";

    let (code, stdout, stderr) = invoke_plugin(
        &config,
        &request(Some(token), Some("arn:aws:iam::666666666666:role/puller")),
        &["--invocation-log", log_arg],
    );
    assert_eq!(code, 0, "{stderr}");
    let answer: Value = serde_json::from_str(&stdout).expect("one JSON response");
    assert_eq!(answer["auth"][host]["username"], "AWS", "{answer}");
    let line: Value = serde_json::from_str(
        std::fs::read_to_string(&log)
            .expect("log")
            .lines()
            .last()
            .expect("a line"),
    )
    .expect("JSON line");
    // moto names the registry of the account whose credentials asked: the assumed role's.
    assert_eq!(line["loginServer"], host, "{line}");
    println!("with the Pod's role: {line}");

    for (token, role, says) in [
        (
            Some(token),
            None,
            "no annotation `eks.amazonaws.com/role-arn`",
        ),
        (
            None,
            Some("arn:aws:iam::666666666666:role/puller"),
            "ServiceAccount token",
        ),
        (Some(token), Some("not-an-arn"), "not an IAM role ARN"),
    ] {
        let (code, stdout, stderr) = invoke_plugin(&config, &request(token, role), &[]);
        assert_eq!(code, 1, "{stdout}");
        assert!(stdout.is_empty());
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
        assert!(!stderr.contains(token.unwrap_or("eyJ")), "{stderr}");
        println!("refused: {}", stderr.trim_end());
    }
}
