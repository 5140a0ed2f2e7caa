//! Runs the real `pullkeeper` binary as a child process for integration tests, with only the
//! permissions of its own `ServiceAccount` (the shipped RBAC), and a local credential endpoint
//! that speaks plain HTTP/JSON like a generic token broker.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kube::Client;
use serde_json::json;
use tokio::process::{Child, Command};

use crate::support;

/// A running daemon.
pub struct Daemon {
    pub child: Child,
    pub admin: SocketAddr,
    pub log: PathBuf,
    pub config_dir: PathBuf,
    /// The daemon's `--instance`: each test's daemon owns only its own objects.
    pub instance: String,
}

/// A unique instance name, so that daemons of tests running in parallel never prune each
/// other's Secrets.
pub fn unique_instance() -> String {
    let n: u64 = rand::random();
    format!("t{:012x}", n & 0xffff_ffff_ffff)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A kubeconfig carrying only a token of pullkeeper's own `ServiceAccount`.
pub async fn pullkeeper_kubeconfig(admin: &Client) -> PathBuf {
    support::install_rbac(admin).await;
    let token = support::sa_token(
        admin,
        support::PULLKEEPER_NAMESPACE,
        support::PULLKEEPER_SERVICE_ACCOUNT,
    )
    .await;
    support::kubeconfig_for_token(&token)
}

/// The Secret names the registry files in `dir` use (files that do not parse are skipped: some
/// tests start from an invalid config on purpose).
pub fn secret_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.path()
                .extension()
                .is_some_and(|x| x == "yaml" || x == "yml")
        })
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|text| serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&text).ok())
        .filter_map(|doc| doc.get("secretName")?.as_str().map(String::from))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Grants pullkeeper's ServiceAccount the Secret names of the registry files in `dir`, as a
/// user adds them to the role (the shipped role grants Secrets only by name).
pub async fn grant_config(dir: &Path) {
    let admin = support::admin_client().await;
    support::grant_secret_names(&admin, &secret_names(dir)).await;
}

/// Starts `pullkeeper run` on `config_dir` under pullkeeper's RBAC.
pub async fn start(admin: &Client, config_dir: &Path, log_filter: &str) -> Daemon {
    let kubeconfig = pullkeeper_kubeconfig(admin).await;
    let instance = unique_instance();
    start_with(
        &kubeconfig,
        config_dir,
        log_filter,
        &instance,
        &["--reload-interval", "1s"],
    )
    .await
}

/// Like [`start`], with extra flags after `--reload-interval 1s`.
pub async fn start_args(
    admin: &Client,
    config_dir: &Path,
    log_filter: &str,
    extra: &[&str],
) -> Daemon {
    let kubeconfig = pullkeeper_kubeconfig(admin).await;
    let mut args = vec!["--reload-interval", "1s"];
    args.extend_from_slice(extra);
    start_with(
        &kubeconfig,
        config_dir,
        log_filter,
        &unique_instance(),
        &args,
    )
    .await
}

pub async fn start_with(
    kubeconfig: &Path,
    config_dir: &Path,
    log_filter: &str,
    instance: &str,
    extra: &[&str],
) -> Daemon {
    start_with_env(kubeconfig, config_dir, log_filter, instance, extra, &[]).await
}

/// Like [`start_with`], with extra environment variables for the daemon (cloud identities).
pub async fn start_with_env(
    kubeconfig: &Path,
    config_dir: &Path,
    log_filter: &str,
    instance: &str,
    extra: &[&str],
    envs: &[(&str, &str)],
) -> Daemon {
    grant_config(config_dir).await;
    spawn(kubeconfig, config_dir, log_filter, instance, extra, envs).await
}

/// Like [`start_with_env`], without granting the config's Secret names first (the role stays
/// as it is), and waits for `/readyz`.
pub async fn spawn(
    kubeconfig: &Path,
    config_dir: &Path,
    log_filter: &str,
    instance: &str,
    extra: &[&str],
    envs: &[(&str, &str)],
) -> Daemon {
    spawn_bin(
        Path::new(env!("CARGO_BIN_EXE_pullkeeper")),
        kubeconfig,
        config_dir,
        log_filter,
        instance,
        extra,
        envs,
    )
    .await
}

/// [`spawn`] with another pullkeeper executable (an earlier release, for the upgrade test).
pub async fn spawn_bin(
    bin: &Path,
    kubeconfig: &Path,
    config_dir: &Path,
    log_filter: &str,
    instance: &str,
    extra: &[&str],
    envs: &[(&str, &str)],
) -> Daemon {
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let log = support::scratch_path("daemon", ".log");
    let file = std::fs::File::create(&log).expect("log file");
    let child = Command::new(bin)
        .arg("run")
        .arg("--config")
        .arg(config_dir)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--admin-addr")
        .arg(admin.to_string())
        .args([
            "--log-format",
            "json",
            "--log-filter",
            log_filter,
            "--instance",
            instance,
        ])
        .args(extra)
        .env("POD_NAME", "pullkeeper-test")
        .env("POD_NAMESPACE", support::PULLKEEPER_NAMESPACE)
        .envs(envs.iter().copied())
        .stdout(Stdio::from(file.try_clone().expect("clone")))
        .stderr(Stdio::from(file))
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
    let d = Daemon {
        child,
        admin,
        log,
        config_dir: config_dir.to_path_buf(),
        instance: instance.to_string(),
    };
    let url = format!("http://{admin}/readyz");
    support::wait_for_named("pullkeeper /readyz", Duration::from_mins(1), || {
        let url = url.clone();
        async move { matches!(reqwest::get(&url).await, Ok(r) if r.status().is_success()) }
    })
    .await;
    d
}

impl Daemon {
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// The value of one sample (`name{labels}` exactly as rendered), or 0 when absent.
    pub async fn sample(&self, series: &str) -> f64 {
        sample(&self.metrics().await, series)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM, as the kubelet does to a Pod being deleted, and waits for the exit.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("the daemon is running");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success(), "kill -TERM {pid} failed");
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the daemon exits within 30 s of SIGTERM")
            .expect("wait")
    }

    pub async fn stop(mut self) -> String {
        let _ = self.child.kill().await;
        self.logs()
    }
}

/// Splits `name{a="1",b="2"}` into the name and its sorted labels.
fn series_key(series: &str) -> (String, Vec<String>) {
    match series.split_once('{') {
        None => (series.to_string(), Vec::new()),
        Some((name, rest)) => {
            let mut labels: Vec<String> = rest
                .trim_end_matches('}')
                .split(',')
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect();
            labels.sort();
            (name.to_string(), labels)
        }
    }
}

/// The value of one sample in a text exposition (labels in any order), 0 when absent.
pub fn sample(text: &str, series: &str) -> f64 {
    let want = series_key(series);
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (s, v) = l.rsplit_once(' ')?;
            (series_key(s) == want)
                .then(|| v.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0.0)
}

/// What the local credential endpoint answers.
#[derive(Clone, Debug)]
pub enum Answer {
    Token {
        username: String,
        password: String,
        expires_in: u64,
    },
    Status(u16),
    Malformed,
    MissingPassword,
}

/// A local generic credential endpoint (`GET /token` → JSON) whose answer a test controls.
pub struct TokenEndpoint {
    pub url: String,
    answer: Arc<Mutex<Answer>>,
    pub calls: Arc<Mutex<u64>>,
}

type EndpointState = (Arc<Mutex<Answer>>, Arc<Mutex<u64>>);

async fn token(State((answer, calls)): State<EndpointState>) -> Response {
    *calls.lock().expect("calls") += 1;
    let answer = answer.lock().expect("answer").clone();
    match answer {
        Answer::Token {
            username,
            password,
            expires_in,
        } => json_response(
            &json!({"robot": {"name": username, "secret": password}, "expires_in": expires_in}),
        ),
        Answer::Status(code) => (
            StatusCode::from_u16(code).expect("status"),
            "upstream trouble",
        )
            .into_response(),
        Answer::Malformed => (
            StatusCode::OK,
            [("content-type", "application/json")],
            "{\"robot\": {\"name\": ",
        )
            .into_response(),
        Answer::MissingPassword => {
            json_response(&json!({"robot": {"name": "robot"}, "expires_in": 3600}))
        }
    }
}

fn json_response(value: &serde_json::Value) -> Response {
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        value.to_string(),
    )
        .into_response()
}

impl TokenEndpoint {
    pub async fn start(first: Answer) -> Self {
        let answer = Arc::new(Mutex::new(first));
        let calls = Arc::new(Mutex::new(0));
        let app = axum::Router::new()
            .route("/token", get(token))
            .with_state((answer.clone(), calls.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/token", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, answer, calls }
    }

    pub fn set(&self, answer: Answer) {
        *self.answer.lock().expect("answer") = answer;
    }

    pub fn calls(&self) -> u64 {
        *self.calls.lock().expect("calls")
    }

    /// A registry file using this endpoint through the `http` provider.
    /// Refreshes every 1–2 s (`FAST`) unless `refresh` says otherwise.
    pub fn registry_file(
        &self,
        server: &str,
        secret: &str,
        selector: &str,
        refresh: &str,
    ) -> String {
        format!(
            "provider:\n  type: http\n  url: {url}\n  timeout: 5s\n  response:\n    username: /robot/name\n    password: /robot/secret\n    expiresIn: /expires_in\n\
             servers: [\"{server}\"]\nsecretName: {secret}\nnamespaces:\n  selector: \"{selector}\"\n{refresh}",
            url = self.url
        )
    }
}

/// Refresh every 1–2 s, retry after 1–2 s.
pub const FAST: &str =
    "refresh:\n  minInterval: 1s\n  maxInterval: 2s\n  backoffInitial: 1s\n  backoffMax: 2s\n";
/// Refresh only when the (1 h) token is 2/3 through its life, i.e. not during a test.
pub const SLOW: &str = "refresh:\n  minInterval: 1s\n  maxInterval: 1h\n";

/// Writes a config file atomically (write, then rename), as a `ConfigMap` update would appear.
pub fn write_config(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, dir.join(name)).expect("rename config");
}

/// A fresh config directory.
pub fn config_dir() -> PathBuf {
    let dir = support::scratch_path("config", "");
    std::fs::create_dir_all(&dir).expect("config dir");
    dir
}
