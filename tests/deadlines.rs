//! An API server that accepts connections and never answers (issue 18 item 7, issue 20's
//! "never hang"): `plan`, `diagnose`, `cleanup` and `once` give up after the deadline the user
//! set (`--request-timeout`, `--sync-timeout` for `once`), exit 2 and say so in one line of
//! pullkeeper's own, without the Kubernetes client's log line. Needs no test platform: the
//! "API server" is a loopback listener made here that holds every connection open in silence.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

/// A loopback listener that accepts every connection and never writes a byte; it counts the
/// connections so a test can show the command really reached it.
struct Silent {
    port: u16,
    accepted: Arc<Mutex<Vec<TcpStream>>>,
}

impl Silent {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let held = accepted.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                // Read what the client sends (its TLS hello) so it never sees a reset; answer
                // nothing.
                let mut reader = stream.try_clone().expect("clone");
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
                });
                held.lock().expect("lock").push(stream);
            }
        });
        Self { port, accepted }
    }

    fn connections(&self) -> usize {
        self.accepted.lock().expect("lock").len()
    }
}

fn kubeconfig(dir: &Path, port: u16) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: silent\n  cluster:\n    server: https://127.0.0.1:{port}\n    insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n    token: not-a-secret\ncontexts:\n- name: silent\n  context: {{cluster: silent, user: u}}\ncurrent-context: silent\n"
        ),
    )
    .expect("write kubeconfig");
    path
}

fn config_dir(dir: &Path) -> std::path::PathBuf {
    let config = dir.join("config");
    std::fs::create_dir(&config).expect("config dir");
    std::fs::write(dir.join("password"), "pw").expect("password");
    std::fs::write(
        config.join("static.yaml"),
        format!(
            "provider:\n  type: static\n  username:\n    value: puller\n  password:\n    file: {}\nservers: [registry.example.com]\nsecretName: example-pull\nnamespaces:\n  include: [\"*\"]\n",
            dir.join("password").display()
        ),
    )
    .expect("registry file");
    config
}

fn run(args: &[&str], kubeconfig: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pullkeeper"))
        .args(args)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .env_remove("KUBECONFIG")
        .env_remove("PULLKEEPER_LOG")
        .output()
        .expect("run pullkeeper")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn read_only_commands_give_up_on_a_silent_api_server_after_their_deadline() {
    let silent = Silent::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let kc = kubeconfig(tmp.path(), silent.port);
    let config = config_dir(tmp.path());
    let config = config.to_str().expect("utf-8 path");
    // cleanup's deadline comes on top of its --wait (1 s here).
    let cases: [(&str, &str, Vec<&str>); 3] = [
        (
            "plan",
            "2s",
            vec!["plan", "--config", config, "--request-timeout", "2s"],
        ),
        (
            "diagnose",
            "2s",
            vec![
                "diagnose",
                "--config",
                config,
                "-A",
                "--request-timeout",
                "2s",
            ],
        ),
        (
            "cleanup",
            "3s",
            vec!["cleanup", "--wait", "1s", "--request-timeout", "2s"],
        ),
    ];
    for (command, limit, args) in cases {
        let before = silent.connections();
        let out = run(&args, &kc);
        let err = stderr(&out);
        eprintln!("{command}: exit {:?}, stderr: {err}", out.status.code());
        assert_eq!(out.status.code(), Some(2), "{command} exits 2: {err}");
        assert!(
            silent.connections() > before,
            "{command} reached the silent server"
        );
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{command} says it in one line: {err}");
        assert!(
            lines[0].starts_with(&format!("pullkeeper {command}: gave up after {limit}")),
            "{command}: {err}"
        );
        assert!(lines[0].contains("--request-timeout"), "{command}: {err}");
        assert!(!err.contains("kube_client"), "{command}: {err}");
        assert!(!err.contains("not-a-secret"), "{command}: {err}");
    }
}

#[test]
fn once_gives_up_after_its_sync_timeout_and_exits_2_naming_what_did_not_list() {
    let silent = Silent::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let kc = kubeconfig(tmp.path(), silent.port);
    let config = config_dir(tmp.path());
    let out = run(
        &[
            "once",
            "--config",
            config.to_str().expect("utf-8 path"),
            "--sync-timeout",
            "2s",
            "--log-format",
            "text",
        ],
        &kc,
    );
    let err = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    eprintln!("once: exit {:?}\n{err}", out.status.code());
    assert_eq!(out.status.code(), Some(2), "once exits 2: {err}");
    assert!(silent.connections() > 0, "once reached the silent server");
    let line = err
        .lines()
        .find(|l| l.contains("the watches did not list in time"))
        .unwrap_or_else(|| panic!("once names the deadline: {err}"));
    for watch in [
        "namespaces",
        "serviceaccounts",
        "secrets named example-pull",
    ] {
        assert!(line.contains(watch), "once names the {watch} watch: {line}");
    }
    assert!(!err.contains("not-a-secret"), "{err}");
}
