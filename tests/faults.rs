//! Faults survived (issue 20): each test says what it injects and asserts what must hold.
//!
//! - A provider that accepts connections and never answers, and one that answers one byte a
//!   second: each fetch times out, the refresh loop keeps retrying, and a healthy registry in
//!   the same namespaces is served all along.
//! - A registry file truncated mid-write, and one whose symlink dangles (a ConfigMap swap caught
//!   half-way): the reload is rejected, the old config keeps running (it still repairs), nothing
//!   is pruned, and a fixed file is taken.
//! - The API server (or etcd) killed mid-rotation, writes refused with 429/503, the role's
//!   bindings withdrawn, and a watch that stalls silently: everything converges afterwards,
//!   nothing lost or duplicated.
//! - The provider down for longer than the credential's lifetime: the last good Secret stays,
//!   retries back off, and the expiry alert fires in a real Prometheus before the expiry.
//! - An upgrade in place from the previous release (`PK_PREVIOUS_BIN`, built by
//!   tests/upgrade/build-previous), both running during the rollout: nothing is rewritten.
// A scenario test reads top to bottom as the story it checks; splitting it hides the order.
#![allow(clippy::too_many_lines)]

mod daemon;
mod support;

use std::time::Duration;

use daemon::{Answer, SLOW, TokenEndpoint, config_dir, write_config};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::DeleteParams;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(90);

fn token_answer(password: &str) -> Answer {
    Answer::Token {
        username: "robot".into(),
        password: password.into(),
        expires_in: 3600,
    }
}

/// A loopback "provider" that accepts every connection, reads the request and then either never
/// answers (`drip == false`) or sends a valid-looking answer one byte a second.
async fn bad_provider(drip: bool) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/token", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                if !drip {
                    // Hold the connection open in silence until the client gives up.
                    let _ = stream.read(&mut buf).await;
                    return;
                }
                let body = r#"{"robot": {"name": "robot", "secret": "never-complete"}, "expires_in": 3600}"#;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                for byte in answer.as_bytes() {
                    if stream.write_all(&[*byte]).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            });
        }
    });
    url
}

/// An `http` registry file on `url` with a 2 s request timeout and quick retries.
fn bad_registry_file(url: &str, server: &str, secret: &str, selector: &str) -> String {
    format!(
        "provider:\n  type: http\n  url: {url}\n  timeout: 2s\n  response:\n    username: /robot/name\n    password: /robot/secret\n    expiresIn: /expires_in\n\
         servers: [\"{server}\"]\nsecretName: {secret}\nnamespaces:\n  selector: \"{selector}\"\n\
         refresh:\n  minInterval: 1s\n  maxInterval: 2s\n  backoffInitial: 1s\n  backoffMax: 2s\n"
    )
}

#[tokio::test]
async fn a_hung_or_dripping_provider_times_out_while_other_registries_are_served() {
    let test = "faults-provider";
    let client = support::admin_client().await;
    let namespaces = support::TestNamespaces::new(client.clone(), test);
    let ns = namespaces.create().await;
    let selector = support::test_selector(test);
    let good = TokenEndpoint::start(token_answer("good-pw")).await;
    let dir = config_dir();
    write_config(
        &dir,
        "good.yaml",
        &good.registry_file("registry.good.test", "good-pull", &selector, SLOW),
    );
    let hang = bad_provider(false).await;
    let drip = bad_provider(true).await;
    write_config(
        &dir,
        "hang.yaml",
        &bad_registry_file(&hang, "registry.hang.test", "hang-pull", &selector),
    );
    write_config(
        &dir,
        "drip.yaml",
        &bad_registry_file(&drip, "registry.drip.test", "drip-pull", &selector),
    );
    let d = daemon::start(&client, &dir, "info").await;

    // The healthy registry is served while the other two hang.
    support::wait_password(&client, &ns, "good-pull", "registry.good.test", "good-pw").await;
    support::wait_pull_secrets(&client, &ns, "default", &["good-pull"]).await;

    // Each bad provider's fetch times out, and is retried: at least three failed attempts each.
    for registry in ["hang", "drip"] {
        let series = format!(
            "pullkeeper_refresh_failures_total{{registry=\"{registry}\",category=\"unreachable\"}}"
        );
        let failures =
            support::wait_for_named(&format!("{registry}: three timeouts"), WAIT, || async {
                let n = d.sample(&series).await;
                (n >= 3.0).then_some(n)
            })
            .await;
        eprintln!("{registry}: {failures} failed fetches (unreachable) so far");
    }
    // After those attempts: neither wrote anything, the healthy one is still exactly what the
    // ServiceAccount lists, and the daemon answers its probes.
    for secret in ["hang-pull", "drip-pull"] {
        assert!(
            support::get_secret(&client, &ns, secret).await.is_none(),
            "{secret} was never written"
        );
    }
    assert_eq!(
        support::pull_secrets(&client, &ns, "default").await,
        vec!["good-pull".to_string()]
    );
    assert!(
        d.sample("pullkeeper_refresh_total{registry=\"good\",result=\"success\"}")
            .await
            >= 1.0
    );
    let logs = d.logs();
    assert!(
        logs.contains("registry.hang.test") || logs.contains("\"registry\":\"hang\""),
        "the failing registry is named in the log"
    );
    assert!(!logs.contains("never-complete"), "no credential in the log");
    assert!(!logs.contains("good-pw"), "no credential in the log");
    d.stop().await;
    namespaces.cleanup().await;
}

#[tokio::test]
async fn a_truncated_or_dangling_registry_file_keeps_the_old_config_and_prunes_nothing() {
    let test = "faults-config";
    let client = support::admin_client().await;
    let namespaces = support::TestNamespaces::new(client.clone(), test);
    let ns = namespaces.create().await;
    let endpoint = TokenEndpoint::start(token_answer("cfg-pw")).await;
    let dir = config_dir();
    let text = endpoint.registry_file(
        "registry.cfg.test",
        "cfg-pull",
        &support::test_selector(test),
        SLOW,
    );
    write_config(&dir, "cfg.yaml", &text);
    // A second registry keeps the directory valid without cfg.yaml: a broken cfg.yaml read as
    // "no such registry" would then prune cfg-pull everywhere.
    write_config(
        &dir,
        "other.yaml",
        &endpoint.registry_file(
            "registry.other.test",
            "other-pull",
            &support::test_selector(test),
            SLOW,
        ),
    );
    let d = daemon::start(&client, &dir, "info").await;
    support::wait_password(&client, &ns, "cfg-pull", "registry.cfg.test", "cfg-pw").await;
    support::wait_pull_secrets_unordered(&client, &ns, "default", &["cfg-pull", "other-pull"])
        .await;

    type Breakage = (&'static str, Box<dyn Fn()>);
    let broken: [Breakage; 2] = [
        (
            "truncated mid-write",
            Box::new({
                let path = dir.join("cfg.yaml");
                let half = text[..text.find("secretName").expect("secretName") + 6].to_string();
                // Written in place, not renamed: a reader sees the half-written file.
                move || std::fs::write(&path, &half).expect("truncate")
            }),
        ),
        (
            "a dangling symlink",
            Box::new({
                let path = dir.join("cfg.yaml");
                move || {
                    std::fs::remove_file(&path).expect("remove");
                    std::os::unix::fs::symlink("..data/cfg.yaml", &path).expect("symlink");
                }
            }),
        ),
    ];
    for (how, break_it) in broken {
        let before = d
            .sample("pullkeeper_config_reloads_total{result=\"failure\"}")
            .await;
        break_it();
        support::wait_for_named(&format!("{how}: reload rejected"), WAIT, || async {
            d.sample("pullkeeper_config_reloads_total{result=\"failure\"}")
                .await
                > before
        })
        .await;
        assert_eq!(
            d.sample("pullkeeper_config_last_reload_successful").await,
            0.0,
            "{how}"
        );
        // Nothing pruned, and the old config still repairs its Secret.
        let mut listed = support::pull_secrets(&client, &ns, "default").await;
        listed.sort();
        assert_eq!(listed, ["cfg-pull", "other-pull"], "{how}");
        let old = support::get_secret(&client, &ns, "cfg-pull")
            .await
            .unwrap_or_else(|| panic!("{how}: cfg-pull was pruned"));
        Api::<Secret>::namespaced(client.clone(), &ns)
            .delete("cfg-pull", &DeleteParams::default())
            .await
            .expect("delete cfg-pull");
        support::wait_for_named(
            &format!("{how}: repaired by the old config"),
            WAIT,
            || async {
                support::get_secret(&client, &ns, "cfg-pull")
                    .await
                    .filter(|s| s.metadata.uid != old.metadata.uid)
            },
        )
        .await;
        // Put right again: taken.
        let _ = std::fs::remove_file(dir.join("cfg.yaml"));
        write_config(&dir, "cfg.yaml", &text);
        support::wait_for_named(&format!("{how}: fixed file taken"), WAIT, || async {
            d.sample("pullkeeper_config_last_reload_successful").await >= 1.0
        })
        .await;
    }
    let logs = d.logs();
    assert!(logs.contains("cfg.yaml"), "the log names the file");
    assert!(!logs.contains("cfg-pw"), "no credential in the log");
    d.stop().await;
    namespaces.cleanup().await;
}

/// A control plane of this test's own (`PK_NO_NODE=1 tests/cluster/up`), so that killing its
/// API server or etcd disturbs no other test; stopped (`tests/cluster/down`) when dropped.
struct OwnPlane {
    dir: std::path::PathBuf,
}

impl OwnPlane {
    fn start(name: &str) -> Self {
        let dir = support::scratch_path(name, "");
        let status = std::process::Command::new(script("up"))
            .arg(&dir)
            .env("PK_NO_NODE", "1")
            .status()
            .expect("run tests/cluster/up");
        assert!(
            status.success(),
            "tests/cluster/up {} failed",
            dir.display()
        );
        Self { dir }
    }

    fn kubeconfig(&self) -> std::path::PathBuf {
        self.dir.join("kubeconfig")
    }

    async fn client(&self) -> kube::Client {
        let kc = kube::config::Kubeconfig::read_from(self.kubeconfig()).expect("kubeconfig");
        let cfg =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .expect("config");
        kube::Client::try_from(cfg).expect("client")
    }

    /// `tests/cluster/fault DIR COMPONENT ACTION`.
    fn fault(&self, component: &str, action: &str) {
        let status = std::process::Command::new(script("fault"))
            .arg(&self.dir)
            .args([component, action])
            .status()
            .expect("run tests/cluster/fault");
        assert!(status.success(), "fault {component} {action} failed");
    }
}

impl Drop for OwnPlane {
    fn drop(&mut self) {
        let _ = std::process::Command::new(script("down"))
            .arg(&self.dir)
            .status();
    }
}

fn script(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/cluster")
        .join(name)
}

/// Every namespace's Secret holds `password` and its `default` ServiceAccount lists exactly the
/// hand-made entry and then pullkeeper's (nothing lost, nothing twice).
async fn converged(client: &kube::Client, namespaces: &[String], password: &str) -> bool {
    use k8s_openapi::api::core::v1::ServiceAccount;
    for ns in namespaces {
        let Ok(Some(secret)) = Api::<Secret>::namespaced(client.clone(), ns)
            .get_opt("wave-pull")
            .await
        else {
            return false;
        };
        if support::password_in(&secret, "registry.wave.test").as_deref() != Some(password) {
            return false;
        }
        let Ok(Some(sa)) = Api::<ServiceAccount>::namespaced(client.clone(), ns)
            .get_opt("default")
            .await
        else {
            return false;
        };
        if support::account_pull_secrets(&sa) != ["hand-made", "wave-pull"] {
            return false;
        }
    }
    true
}

/// Waits for [`converged`] and returns how long it took.
async fn time_to_converge(client: &kube::Client, namespaces: &[String], password: &str) -> f64 {
    let started = std::time::Instant::now();
    support::wait_for_named(
        &format!("every namespace converged on {password}"),
        Duration::from_mins(5),
        || async { converged(client, namespaces, password).await },
    )
    .await;
    started.elapsed().as_secs_f64()
}

#[tokio::test]
async fn the_api_server_killed_and_etcd_stopped_mid_rotation_lose_and_duplicate_nothing() {
    use k8s_openapi::api::core::v1::ServiceAccount;
    use kube::api::{Patch, PatchParams};
    const NAMESPACES: usize = 200;
    let test = "faults-plane";
    let plane = OwnPlane::start("faults-plane");
    let client = plane.client().await;
    let namespaces = support::TestNamespaces::new(client.clone(), test);
    let mut names = Vec::new();
    for _ in 0..NAMESPACES {
        names.push(namespaces.create().await);
    }
    // A hand-made entry in every default ServiceAccount, before pullkeeper starts.
    for ns in &names {
        support::wait_account(&client, ns, "default").await;
        Api::<ServiceAccount>::namespaced(client.clone(), ns)
            .patch(
                "default",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"imagePullSecrets": [{"name": "hand-made"}]})),
            )
            .await
            .expect("hand-made entry");
    }
    let endpoint = TokenEndpoint::start(token_answer("wave-1")).await;
    let dir = config_dir();
    write_config(
        &dir,
        "wave.yaml",
        &endpoint.registry_file(
            "registry.wave.test",
            "wave-pull",
            &support::test_selector(test),
            "refresh:\n  minInterval: 1s\n  maxInterval: 3s\n  backoffInitial: 1s\n  backoffMax: 2s\n",
        ),
    );
    // The admin's identity on this plane (RBAC is the least-privilege tests' subject, not this
    // one's); the default write rate (50/s) makes a wave of 400 writes last about 8 s.
    let d = daemon::spawn(
        &plane.kubeconfig(),
        &dir,
        "info",
        &daemon::unique_instance(),
        &["--reload-interval", "1s"],
        &[],
    )
    .await;
    let first = time_to_converge(&client, &names, "wave-1").await;
    eprintln!("first pass over {NAMESPACES} namespaces: {first:.1} s");

    // 1. kube-apiserver SIGKILLed in the middle of a rotation wave, restarted 3 s later.
    endpoint.set(token_answer("wave-2"));
    support::wait_for_named("the wave began", Duration::from_mins(1), || async {
        for ns in &names {
            if let Ok(Some(s)) = Api::<Secret>::namespaced(client.clone(), ns)
                .get_opt("wave-pull")
                .await
                && support::password_in(&s, "registry.wave.test").as_deref() == Some("wave-2")
            {
                return Some(ns.clone());
            }
        }
        None
    })
    .await;
    plane.fault("apiserver", "kill");
    tokio::time::sleep(Duration::from_secs(3)).await;
    plane.fault("apiserver", "start");
    // Created while pullkeeper's watches are still reconnecting: served after their re-list.
    let late = namespaces.create().await;
    let after_apiserver = time_to_converge(&client, &names, "wave-2").await;
    eprintln!(
        "API server killed mid-wave: every namespace current {after_apiserver:.1} s after it served again"
    );
    support::wait_password(&client, &late, "wave-pull", "registry.wave.test", "wave-2").await;
    support::wait_pull_secrets(&client, &late, "default", &["wave-pull"]).await;

    // 2. etcd SIGKILLed, the credential rotated while it is down, etcd restarted 6 s later.
    plane.fault("etcd", "kill");
    endpoint.set(token_answer("wave-3"));
    tokio::time::sleep(Duration::from_secs(6)).await;
    plane.fault("etcd", "start");
    let after_etcd = time_to_converge(&client, &names, "wave-3").await;
    eprintln!(
        "etcd down for 6 s during a rotation: every namespace current {after_etcd:.1} s after it served again"
    );

    // The daemon lived through both, and says it is ready.
    let ready = reqwest::get(format!("http://{}/readyz", d.admin))
        .await
        .expect("readyz");
    assert!(ready.status().is_success(), "the daemon is ready again");
    let logs = d.stop().await;
    assert!(
        !logs.contains("wave-2") && !logs.contains("wave-3"),
        "no credential in the log"
    );
    namespaces.cleanup().await;
    drop(plane);
}

/// The fault-injecting proxy (tests/faults/apiproxy.py) in front of the platform's API server;
/// killed when dropped.
struct FaultProxy {
    child: std::process::Child,
    state: std::path::PathBuf,
    log: std::path::PathBuf,
    port: u16,
}

impl FaultProxy {
    async fn start(fail_share: f64) -> Self {
        let state = support::scratch_path("apiproxy-state", ".json");
        let log = support::scratch_path("apiproxy", ".log");
        let port_file = support::scratch_path("apiproxy-port", "");
        std::fs::write(&log, "").expect("proxy log");
        let mut proxy = Self {
            child: std::process::Command::new("python3")
                .arg(
                    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("tests/faults/apiproxy.py"),
                )
                .args([
                    support::env("PK_KUBE_SERVER"),
                    support::env("PK_KUBE_CA_FILE"),
                ])
                .args([&state, &log, &port_file])
                .spawn()
                .expect("start apiproxy.py"),
            state,
            log,
            port: 0,
        };
        proxy.set(fail_share);
        proxy.port = support::wait_for_named("apiproxy.py listening", WAIT, || async {
            std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|p| p.trim().parse::<u16>().ok())
        })
        .await;
        proxy
    }

    fn set(&self, fail_share: f64) {
        std::fs::write(&self.state, format!("{{\"fail_share\": {fail_share}}}")).expect("state");
    }

    /// Every watch open now stalls silently from its next event on; later watches pass.
    fn stall_watches(&self) {
        let now = unix_now();
        std::fs::write(
            &self.state,
            format!("{{\"fail_share\": 0, \"stall_before\": {now}}}"),
        )
        .expect("state");
    }

    /// The proxy's log lines so far.
    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    /// (injected, forwarded) write requests to Secrets and ServiceAccounts so far.
    fn writes(&self) -> (usize, usize) {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let writes = |kind: &str| {
            log.lines()
                .filter(|l| l.starts_with(kind))
                .filter(|l| {
                    let mut words = l.split(' ');
                    let method = words.nth(1).unwrap_or_default();
                    let path = words.next().unwrap_or_default();
                    matches!(method, "POST" | "PUT" | "PATCH")
                        && (path.contains("/secrets") || path.contains("/serviceaccounts"))
                })
                .count()
        };
        (writes("INJECT"), writes("FWD"))
    }

    /// A kubeconfig of `kubeconfig`'s identity that goes through the proxy.
    fn kubeconfig(&self, kubeconfig: &std::path::Path) -> std::path::PathBuf {
        let text = std::fs::read_to_string(kubeconfig).expect("kubeconfig");
        let mut doc: serde_json::Value = serde_yaml_ng::from_str(&text).expect("yaml");
        let cluster = &mut doc["clusters"][0]["cluster"];
        cluster["server"] = serde_json::json!(format!("https://127.0.0.1:{}", self.port));
        cluster["insecure-skip-tls-verify"] = serde_json::json!(true);
        if let Some(c) = cluster.as_object_mut() {
            c.remove("certificate-authority-data");
        }
        support::write_scratch_file(
            "kubeconfigs",
            ".yaml",
            &serde_yaml_ng::to_string(&doc).expect("yaml"),
        )
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn writes_refused_with_429_and_503_are_retried_with_backoff_and_nothing_is_lost() {
    const NAMESPACES: usize = 30;
    let test = "faults-throttle";
    let client = support::admin_client().await;
    let namespaces = support::TestNamespaces::new(client.clone(), test);
    let mut names = Vec::new();
    for _ in 0..NAMESPACES {
        names.push(namespaces.create().await);
    }
    let endpoint = TokenEndpoint::start(token_answer("busy-1")).await;
    let dir = config_dir();
    write_config(
        &dir,
        "busy.yaml",
        &endpoint.registry_file(
            "registry.busy.test",
            "busy-pull",
            &support::test_selector(test),
            "refresh:\n  minInterval: 1s\n  maxInterval: 3s\n  backoffInitial: 1s\n  backoffMax: 2s\n",
        ),
    );
    // 30 % of pullkeeper's writes to Secrets and ServiceAccounts are refused, half 429, half 503.
    let proxy = FaultProxy::start(0.3).await;
    daemon::grant_config(&dir).await;
    let kubeconfig = proxy.kubeconfig(&daemon::pullkeeper_kubeconfig(&client).await);
    let d = daemon::spawn(
        &kubeconfig,
        &dir,
        "info",
        &daemon::unique_instance(),
        &["--reload-interval", "1s"],
        &[],
    )
    .await;
    let started = std::time::Instant::now();
    for ns in &names {
        support::wait_password(&client, ns, "busy-pull", "registry.busy.test", "busy-1").await;
        support::wait_pull_secrets(&client, ns, "default", &["busy-pull"]).await;
    }
    let (injected, forwarded) = proxy.writes();
    eprintln!(
        "30 % refused: {NAMESPACES} namespaces in place after {:.1} s; {injected} writes refused, {forwarded} passed (needed: {})",
        started.elapsed().as_secs_f64(),
        2 * NAMESPACES
    );
    assert!(injected >= 3, "the proxy refused writes: {injected}");
    assert!(
        forwarded >= 2 * NAMESPACES,
        "every Secret and ServiceAccount write got through once: {forwarded}"
    );
    assert!(
        injected + forwarded <= 6 * NAMESPACES,
        "retries stay bounded: {injected} + {forwarded}"
    );

    // Every write refused for 20 s while a new credential arrives: retried with backoff (1, 2,
    // 4, 8 s…), not in a loop; then everything converges once the API server accepts again.
    proxy.set(1.0);
    let (before, _) = proxy.writes();
    endpoint.set(token_answer("busy-2"));
    let refused = std::time::Instant::now();
    support::wait_for_named("the rotation's first refused write", WAIT, || async {
        (proxy.writes().0 > before).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    let (during, _) = proxy.writes();
    let attempts = during - before;
    eprintln!(
        "all refused for {:.0} s: {attempts} write attempts for {NAMESPACES} namespaces",
        refused.elapsed().as_secs_f64()
    );
    assert!(
        attempts <= 8 * NAMESPACES,
        "no hot loop: {attempts} attempts in about 20 s"
    );
    proxy.set(0.0);
    let healed = std::time::Instant::now();
    for ns in &names {
        support::wait_password(&client, ns, "busy-pull", "registry.busy.test", "busy-2").await;
    }
    eprintln!(
        "accepted again: every namespace current {:.1} s later",
        healed.elapsed().as_secs_f64()
    );
    for ns in &names {
        assert_eq!(
            support::pull_secrets(&client, ns, "default").await,
            vec!["busy-pull".to_string()]
        );
    }
    let logs = d.stop().await;
    assert!(
        !logs.contains("busy-1") && !logs.contains("busy-2"),
        "no credential in the log"
    );
    namespaces.cleanup().await;
}

/// Whether `line` of the proxy's log is a namespace watch.
fn namespace_watch(line: &str) -> bool {
    line.split(' ')
        .nth(2)
        .is_some_and(|path| path.starts_with("/api/v1/namespaces?") && path.contains("watch=true"))
}

#[tokio::test]
async fn a_watch_that_stalls_silently_is_dropped_and_a_namespace_created_meanwhile_is_served() {
    // The API server ends each watch request after this; the watcher drops one silent for 5 s
    // more (a stalled connection) and watches again from where it was.
    const WATCH_TIMEOUT_S: u64 = 10;
    let test = "faults-stall";
    let client = support::admin_client().await;
    let namespaces = support::TestNamespaces::new(client.clone(), test);
    let first = namespaces.create().await;
    let endpoint = TokenEndpoint::start(token_answer("pw-stall-first")).await;
    let dir = config_dir();
    write_config(
        &dir,
        "stall.yaml",
        &endpoint.registry_file(
            "registry.stall.test",
            "stall-pull",
            &support::test_selector(test),
            SLOW,
        ),
    );
    let proxy = FaultProxy::start(0.0).await;
    daemon::grant_config(&dir).await;
    let kubeconfig = proxy.kubeconfig(&daemon::pullkeeper_kubeconfig(&client).await);
    let d = daemon::spawn(
        &kubeconfig,
        &dir,
        "info",
        &daemon::unique_instance(),
        &["--watch-timeout", &format!("{WATCH_TIMEOUT_S}s")],
        &[],
    )
    .await;
    support::wait_password(
        &client,
        &first,
        "stall-pull",
        "registry.stall.test",
        "pw-stall-first",
    )
    .await;
    support::wait_pull_secrets(&client, &first, "default", &["stall-pull"]).await;

    // Every watch pullkeeper has open goes silent, its connection kept open: the new
    // namespace's event reaches the namespace watch and is never forwarded.
    proxy.stall_watches();
    let stalled = std::time::Instant::now();
    let late = namespaces.create().await;
    let at = support::wait_for_named("the proxy stalling the namespace watch", WAIT, || async {
        proxy
            .lines()
            .iter()
            .position(|l| l.starts_with("STALL") && namespace_watch(l))
    })
    .await;
    support::wait_password(
        &client,
        &late,
        "stall-pull",
        "registry.stall.test",
        "pw-stall-first",
    )
    .await;
    support::wait_pull_secrets(&client, &late, "default", &["stall-pull"]).await;
    eprintln!(
        "watches stalled silently: the namespace created meanwhile served {:.1} s later (--watch-timeout {WATCH_TIMEOUT_S}s: a watch silent for {} s is dropped)",
        stalled.elapsed().as_secs_f64(),
        WATCH_TIMEOUT_S + 5
    );
    // It was the dropped watch, opened again, that brought the namespace.
    assert!(
        proxy.lines()[at..]
            .iter()
            .any(|l| l.starts_with("FWD") && namespace_watch(l)),
        "the namespace watch was opened again after it stalled"
    );
    let logs = d.stop().await;
    assert!(!logs.contains("pw-stall-first"), "no credential in the log");
    namespaces.cleanup().await;
}

/// Debian's Prometheus on loopback, scraping one daemon every second with dashboards/alerts.yaml,
/// `PullkeeperCredentialExpiresSoon`'s `for` compressed from 5 m to 5 s (the credential lives
/// 2 minutes, not 12 hours); killed when dropped.
struct Prometheus {
    child: std::process::Child,
    url: String,
}

impl Prometheus {
    async fn start(target: std::net::SocketAddr) -> Self {
        let rules = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards/alerts.yaml"),
        )
        .expect("dashboards/alerts.yaml");
        let (head, tail) = rules
            .split_once("alert: PullkeeperCredentialExpiresSoon")
            .expect("the expiry alert");
        assert!(tail.contains("for: 5m"), "the expiry alert waits 5m");
        let rules = format!(
            "{head}alert: PullkeeperCredentialExpiresSoon{}",
            tail.replacen("for: 5m", "for: 5s", 1)
        );
        let rules = support::write_scratch_file("prometheus", ".rules.yaml", &rules);
        let port = daemon::free_port();
        let config = support::write_scratch_file(
            "prometheus",
            ".yml",
            &format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: pullkeeper\n    static_configs:\n      - targets: [\"{target}\"]\n",
                rules.display()
            ),
        );
        let tsdb = support::scratch_path("prometheus", ".tsdb");
        let log = std::fs::File::create(support::scratch_path("prometheus", ".log")).expect("log");
        let child = std::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg(format!("--storage.tsdb.path={}", tsdb.display()))
            .arg("--log.level=warn")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start prometheus (Debian's package; tests/run-all.sh installs it)");
        let url = format!("http://127.0.0.1:{port}");
        support::wait_for_named("prometheus ready", WAIT, || async {
            reqwest::get(format!("{url}/-/ready"))
                .await
                .ok()
                .filter(|r| r.status().is_success())
                .map(|_| ())
        })
        .await;
        Self { child, url }
    }

    /// The state (`pending`, `firing`) of `alert` for `registry`, if it is active.
    async fn alert(&self, alert: &str, registry: &str) -> Option<String> {
        let doc: serde_json::Value = reqwest::get(format!("{}/api/v1/alerts", self.url))
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        doc["data"]["alerts"]
            .as_array()?
            .iter()
            .find(|a| a["labels"]["alertname"] == alert && a["labels"]["registry"] == registry)
            .and_then(|a| a["state"].as_str().map(String::from))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_provider_down_past_the_credentials_lifetime_keeps_the_last_secret_and_the_expiry_alert_fires_before_expiry()
 {
    const NAMESPACES: usize = 3;
    const LIFETIME_S: u64 = 120;
    let test = "faults-outage";
    let client = support::admin_client().await;
    let namespaces = support::TestNamespaces::new(client.clone(), test);
    let mut names = Vec::new();
    for _ in 0..NAMESPACES {
        names.push(namespaces.create().await);
    }
    let endpoint = TokenEndpoint::start(Answer::Token {
        username: "robot".into(),
        password: "pw-outage-first".into(),
        expires_in: LIFETIME_S,
    })
    .await;
    let dir = config_dir();
    // Renewal at 2/3 of the 2-minute lifetime; retries from 2 s doubling to 8 s, and at most a
    // quarter of the time left before expiry.
    write_config(
        &dir,
        "outage.yaml",
        &endpoint.registry_file(
            "registry.outage.test",
            "outage-pull",
            &support::test_selector(test),
            "refresh:\n  minInterval: 1s\n  backoffInitial: 2s\n  backoffMax: 8s\n",
        ),
    );
    daemon::grant_config(&dir).await;
    let kubeconfig = daemon::pullkeeper_kubeconfig(&client).await;
    let d = daemon::spawn(
        &kubeconfig,
        &dir,
        "info",
        &daemon::unique_instance(),
        &[],
        &[],
    )
    .await;
    for ns in &names {
        support::wait_password(
            &client,
            ns,
            "outage-pull",
            "registry.outage.test",
            "pw-outage-first",
        )
        .await;
    }
    let expiry = d
        .sample("pullkeeper_credential_expiry_timestamp_seconds{registry=\"outage\"}")
        .await;
    assert!(expiry > 0.0, "the daemon states the credential's expiry");
    let prometheus = Prometheus::start(d.admin).await;
    let now = unix_now;
    // The provider goes down now, long before the renewal, and stays down past the expiry.
    endpoint.set(Answer::Status(503));
    let calls_before = endpoint.calls();
    let down = now();
    let mut fired_at = None;
    let mut saw_inactive = false;
    while now() < expiry + 20.0 {
        let state = prometheus
            .alert("PullkeeperCredentialExpiresSoon", "outage")
            .await;
        if state.is_none() && now() < expiry - 0.25 * LIFETIME_S as f64 - 2.0 {
            saw_inactive = true;
        }
        if fired_at.is_none() && state.as_deref() == Some("firing") {
            fired_at = Some(now());
        }
        // The last good Secret stays, never overwritten nor emptied.
        for ns in &names {
            let secret = support::get_secret(&client, ns, "outage-pull")
                .await
                .unwrap_or_else(|| panic!("Secret {ns}/outage-pull is gone during the outage"));
            assert_eq!(
                support::password_in(&secret, "registry.outage.test").as_deref(),
                Some("pw-outage-first"),
                "Secret {ns}/outage-pull keeps the last good credential"
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let outage = now() - down;
    let calls = endpoint.calls() - calls_before;
    let fired_at = fired_at.expect("PullkeeperCredentialExpiresSoon fired during the outage");
    eprintln!(
        "provider down {outage:.0} s (credential lifetime {LIFETIME_S} s): {calls} failed fetches, the expiry alert firing {:.1} s before expiry; every Secret kept",
        expiry - fired_at
    );
    assert!(
        saw_inactive,
        "the alert was quiet while most of the lifetime was left"
    );
    assert!(
        fired_at < expiry,
        "the alert fired before the credential expired"
    );
    assert!(calls >= 3, "the refresh kept retrying: {calls} calls");
    assert!(
        calls as f64 <= outage,
        "retries follow the backoff, never faster than one a second: {calls} in {outage:.0} s"
    );
    assert!(
        d.sample("pullkeeper_refresh_total{registry=\"outage\",result=\"failure\"}")
            .await
            >= 3.0,
        "the failures are counted"
    );

    // The first successful fetch afterwards reaches every namespace.
    endpoint.set(Answer::Token {
        username: "robot".into(),
        password: "pw-outage-second".into(),
        expires_in: 3600,
    });
    let healed = std::time::Instant::now();
    for ns in &names {
        support::wait_password(
            &client,
            ns,
            "outage-pull",
            "registry.outage.test",
            "pw-outage-second",
        )
        .await;
    }
    eprintln!(
        "provider back: every namespace current {:.1} s later",
        healed.elapsed().as_secs_f64()
    );
    drop(prometheus);
    let logs = d.stop().await;
    assert!(
        !logs.contains("pw-outage-first") && !logs.contains("pw-outage-second"),
        "no credential in the log"
    );
    namespaces.cleanup().await;
}

#[tokio::test]
async fn an_upgrade_in_place_from_the_previous_release_rewrites_nothing() {
    use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
    const NAMESPACES: usize = 20;
    let test = "faults-upgrade";
    let previous_bin = support::env("PK_PREVIOUS_BIN");
    let client = support::admin_client().await;
    let namespaces = support::TestNamespaces::new(client.clone(), test);
    let mut names = Vec::new();
    for _ in 0..NAMESPACES {
        names.push(namespaces.create().await);
    }
    let endpoint = TokenEndpoint::start(token_answer("pw-upgrade-first")).await;
    let dir = config_dir();
    write_config(
        &dir,
        "upgrade.yaml",
        &endpoint.registry_file(
            "registry.upgrade.test",
            "upgrade-pull",
            &support::test_selector(test),
            SLOW,
        ),
    );
    daemon::grant_config(&dir).await;
    let current_kubeconfig = daemon::pullkeeper_kubeconfig(&client).await;
    // The previous release ran with the role it shipped (every Secret readable); an identity of
    // this test's own bound to cluster-admin stands in for it. Its writes are a ServiceAccount's,
    // so the audit log sees them.
    let sa = format!("pk-faults-previous-{}", support::random_string(5));
    let pp = kube::api::PostParams::default();
    create_service_account(&client, &sa).await;
    let crbs = Api::<ClusterRoleBinding>::all(client.clone());
    crbs.create(&pp, &binding(&sa, "cluster-admin", &sa))
        .await
        .expect("binding");
    let previous_kubeconfig = support::kubeconfig_for_token(
        &support::sa_token(&client, support::PULLKEEPER_NAMESPACE, &sa).await,
    );
    let instance = daemon::unique_instance();
    let elect = ["--leader-elect"];
    let started = chrono::Utc::now();
    let mut previous = daemon::spawn_bin(
        std::path::Path::new(&previous_bin),
        &previous_kubeconfig,
        &dir,
        "info",
        &instance,
        &elect,
        &[],
    )
    .await;
    for ns in &names {
        support::wait_password(
            &client,
            ns,
            "upgrade-pull",
            "registry.upgrade.test",
            "pw-upgrade-first",
        )
        .await;
        support::wait_pull_secrets(&client, ns, "default", &["upgrade-pull"]).await;
    }
    // The audit log saw the previous release's writes: the count after the upgrade is not
    // vacuous.
    let before = support::audit_writes(&names, started);
    assert!(
        before.len() >= 2 * NAMESPACES,
        "a Secret and a ServiceAccount write per namespace by the previous release: {before:#?}"
    );

    // The rollout: the current release starts beside it, as the Deployment's new Pod does, and
    // waits for the Lease; then the old Pod is stopped (SIGTERM: it releases the Lease).
    let rollout = chrono::Utc::now();
    let current = daemon::spawn(
        &current_kubeconfig,
        &dir,
        "info",
        &instance,
        &["--leader-elect", "--resync-interval", "5s"],
        &[],
    )
    .await;
    support::wait_for_named("the current release following", WAIT, || async {
        current
            .metrics()
            .await
            .lines()
            .any(|l| l == "pullkeeper_leader 0")
    })
    .await;
    let status = previous.terminate().await;
    assert!(
        status.success(),
        "the previous release stops cleanly: {status}"
    );
    support::wait_for_named("the current release leading", WAIT, || async {
        current.sample("pullkeeper_leader").await >= 1.0
    })
    .await;
    let leading = unix_now();
    // Two full sweeps as leader (every 5 s here) look at every namespace.
    for _ in 0..2 {
        let after = current
            .sample("pullkeeper_last_sweep_timestamp_seconds")
            .await;
        support::wait_for_named("a sweep as leader", WAIT, || async {
            let at = current
                .sample("pullkeeper_last_sweep_timestamp_seconds")
                .await;
            (at > after && at > leading).then_some(())
        })
        .await;
    }
    // A write the API server refused changed nothing: the previous release, still running
    // until it is stopped, may send a guarded ServiceAccount patch from a stale cache whose
    // `test` fails (422). Only the previous identity may have sent one.
    let (writes, refused): (Vec<String>, Vec<String>) = support::audit_writes(&names, rollout)
        .into_iter()
        .partition(|w| support::accepted(w));
    eprintln!(
        "upgrade from {}: {NAMESPACES} namespaces, {} writes by the previous release, {} during and after the rollout, {} refused (audit log)",
        previous_bin,
        before.len(),
        writes.len(),
        refused.len()
    );
    assert!(
        writes.is_empty(),
        "the upgrade rewrote Secrets or ServiceAccounts: {writes:#?}"
    );
    let previous_user = format!(
        " by system:serviceaccount:{}:{sa} ",
        support::PULLKEEPER_NAMESPACE
    );
    assert!(
        refused.iter().all(|w| w.contains(&previous_user)),
        "the current release sent writes during the rollout: {refused:#?}"
    );
    for ns in &names {
        assert_eq!(
            support::pull_secrets(&client, ns, "default").await,
            vec!["upgrade-pull".to_string()]
        );
    }
    let logs = current.stop().await;
    assert!(
        !logs.contains("pw-upgrade-first"),
        "no credential in the log"
    );
    let _ = crbs.delete(&sa, &DeleteParams::default()).await;
    namespaces.cleanup().await;
}

/// Seconds since the epoch, as the daemon's timestamp gauges and the proxy's state state them.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

/// ServiceAccount `pullkeeper/name`: an identity of a test's own.
async fn create_service_account(client: &kube::Client, name: &str) {
    use k8s_openapi::api::core::v1::ServiceAccount;
    Api::<ServiceAccount>::namespaced(client.clone(), support::PULLKEEPER_NAMESPACE)
        .create(
            &kube::api::PostParams::default(),
            &ServiceAccount {
                metadata: kube::api::ObjectMeta {
                    name: Some(name.into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .expect("service account");
}

/// A ClusterRoleBinding of `role` to ServiceAccount `pullkeeper/sa`.
fn binding(name: &str, role: &str, sa: &str) -> k8s_openapi::api::rbac::v1::ClusterRoleBinding {
    use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleRef, Subject};
    ClusterRoleBinding {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: role.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: sa.into(),
            namespace: Some(support::PULLKEEPER_NAMESPACE.into()),
            ..Default::default()
        }]),
    }
}

/// Whether `client`'s identity may patch Secret `name` in `ns` (a SelfSubjectAccessReview).
async fn may_patch_secret(client: &kube::Client, ns: &str, name: &str) -> bool {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
    };
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(ns.into()),
                verb: Some("patch".into()),
                resource: Some("secrets".into()),
                name: Some(name.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&kube::api::PostParams::default(), &review)
        .await
        .ok()
        .and_then(|r| r.status)
        .is_some_and(|s| s.allowed)
}

#[tokio::test]
async fn permissions_withdrawn_mid_run_give_clear_errors_and_full_recovery_once_restored() {
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule};
    let test = "faults-rbac";
    let client = support::admin_client().await;
    support::install_rbac(&client).await;
    let namespaces = support::TestNamespaces::new(client.clone(), test);
    let first = namespaces.create().await;
    // An identity of this test's own, bound to the shipped base role and to its Secret name,
    // so withdrawing its rights disturbs no other test.
    let sa = format!("pk-faults-rbac-{}", support::random_string(5));
    let pp = kube::api::PostParams::default();
    create_service_account(&client, &sa).await;
    let names_role = format!("{sa}-names");
    Api::<ClusterRole>::all(client.clone())
        .create(
            &pp,
            &ClusterRole {
                metadata: kube::api::ObjectMeta {
                    name: Some(names_role.clone()),
                    ..Default::default()
                },
                rules: Some(vec![PolicyRule {
                    api_groups: Some(vec![String::new()]),
                    resources: Some(vec!["secrets".into()]),
                    resource_names: Some(vec!["rbac-pull".into()]),
                    verbs: ["get", "list", "watch", "patch", "delete"]
                        .map(String::from)
                        .to_vec(),
                    ..Default::default()
                }]),
                ..Default::default()
            },
        )
        .await
        .expect("names role");
    let bindings = [
        binding(&format!("{sa}-base"), "pullkeeper", &sa),
        binding(&format!("{sa}-names"), &names_role, &sa),
    ];
    let crbs = Api::<ClusterRoleBinding>::all(client.clone());
    for b in &bindings {
        crbs.create(&pp, b).await.expect("binding");
    }
    let token = support::sa_token(&client, support::PULLKEEPER_NAMESPACE, &sa).await;
    let own = support::client_for_token(&token).await;
    support::wait_for_named("the bindings authorize", WAIT, || async {
        may_patch_secret(&own, &first, "rbac-pull").await
    })
    .await;

    let endpoint = TokenEndpoint::start(token_answer("pw-rbac-first")).await;
    let dir = config_dir();
    write_config(
        &dir,
        "rbac.yaml",
        &endpoint.registry_file(
            "registry.rbac.test",
            "rbac-pull",
            &support::test_selector(test),
            "refresh:\n  minInterval: 1s\n  maxInterval: 3s\n  backoffInitial: 1s\n  backoffMax: 2s\n",
        ),
    );
    let mut d = daemon::spawn(
        &support::kubeconfig_for_token(&token),
        &dir,
        "info",
        &daemon::unique_instance(),
        &["--reload-interval", "1s"],
        &[],
    )
    .await;
    support::wait_password(
        &client,
        &first,
        "rbac-pull",
        "registry.rbac.test",
        "pw-rbac-first",
    )
    .await;
    support::wait_pull_secrets(&client, &first, "default", &["rbac-pull"]).await;

    // Withdrawn: both bindings deleted. A new credential and a new namespace arrive meanwhile.
    for b in &bindings {
        crbs.delete(
            b.metadata.name.as_deref().expect("name"),
            &DeleteParams::default(),
        )
        .await
        .expect("delete binding");
    }
    support::wait_for_named("the rights are gone", WAIT, || async {
        !may_patch_secret(&own, &first, "rbac-pull").await
    })
    .await;
    endpoint.set(token_answer("pw-rbac-second"));
    let second = namespaces.create().await;
    let errors = support::wait_for_named("writes refused and said so", WAIT, || async {
        let logs = d.logs();
        let forbidden = logs
            .lines()
            .filter(|l| l.contains("forbidden") || l.contains("Forbidden"))
            .count();
        (forbidden >= 2).then_some(forbidden)
    })
    .await;
    eprintln!("rights withdrawn: {errors} log lines name the refusal so far");
    // Still running (no crash loop): it answers its metrics and has not exited.
    assert!(
        d.child.try_wait().expect("try_wait").is_none(),
        "the daemon still runs"
    );

    // Restored: everything converges, the namespace created meanwhile included.
    let restored = std::time::Instant::now();
    for b in &bindings {
        crbs.create(&pp, b).await.expect("binding again");
    }
    for ns in [&first, &second] {
        support::wait_password(
            &client,
            ns,
            "rbac-pull",
            "registry.rbac.test",
            "pw-rbac-second",
        )
        .await;
        support::wait_pull_secrets(&client, ns, "default", &["rbac-pull"]).await;
    }
    eprintln!(
        "rights restored: both namespaces current {:.1} s later",
        restored.elapsed().as_secs_f64()
    );
    let logs = d.stop().await;
    assert!(
        !logs.contains("pw-rbac-first") && !logs.contains("pw-rbac-second"),
        "no credential in the log"
    );
    for b in &bindings {
        let _ = crbs
            .delete(
                b.metadata.name.as_deref().expect("name"),
                &DeleteParams::default(),
            )
            .await;
    }
    let _ = Api::<ClusterRole>::all(client.clone())
        .delete(&names_role, &DeleteParams::default())
        .await;
    namespaces.cleanup().await;
}
