//! `kubectl pullkeeper …`: the binary installed as `kubectl-pullkeeper` on PATH is found and run
//! by a real kubectl, which passes every argument through; `--context` picks the kubeconfig
//! context as kubectl's own flag does (the kubeconfig's current-context here points at a closed
//! port, so only the named context reaches the API server) and `-n` the namespace. Runs against
//! the control plane alone (`PK_NO_NODE=1` is enough). Also checks the krew manifest's shape.
// A scenario test reads top to bottom as the story it checks; splitting it hides the order.
#![allow(clippy::too_many_lines)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::Value;

/// A PATH entry holding `kubectl-pullkeeper`, a symlink to the binary under test, and a
/// kubeconfig whose current-context `nowhere` points at a closed port, beside the admin's
/// cluster and user as context `pk`.
struct Plugin {
    dir: tempfile::TempDir,
}

impl Plugin {
    fn install() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink(
            env!("CARGO_BIN_EXE_pullkeeper"),
            dir.path().join("kubectl-pullkeeper"),
        )
        .expect("symlink kubectl-pullkeeper");
        let admin = std::fs::read_to_string(support::env("KUBECONFIG")).expect("kubeconfig");
        let admin: serde_yaml_ng::Value = serde_yaml_ng::from_str(&admin).expect("yaml");
        let current = admin["current-context"].as_str().expect("current-context");
        let context = admin["contexts"]
            .as_sequence()
            .expect("contexts")
            .iter()
            .find(|c| c["name"].as_str() == Some(current))
            .expect("the current context");
        let cluster_name = context["context"]["cluster"].as_str().expect("cluster");
        let user_name = context["context"]["user"].as_str().expect("user");
        let cluster = admin["clusters"]
            .as_sequence()
            .expect("clusters")
            .iter()
            .find(|c| c["name"].as_str() == Some(cluster_name))
            .expect("the cluster")["cluster"]
            .clone();
        let user = admin["users"]
            .as_sequence()
            .expect("users")
            .iter()
            .find(|u| u["name"].as_str() == Some(user_name))
            .expect("the user")["user"]
            .clone();
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("address")
            .port();
        let mut nowhere = cluster.clone();
        nowhere["server"] = format!("https://127.0.0.1:{closed}").into();
        let kubeconfig = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "pk", "cluster": serde_json::to_value(&cluster).expect("json")},
                {"name": "nowhere", "cluster": serde_json::to_value(&nowhere).expect("json")},
            ],
            "users": [{"name": "admin", "user": serde_json::to_value(&user).expect("json")}],
            "contexts": [
                {"name": "pk", "context": {"cluster": "pk", "user": "admin"}},
                {"name": "nowhere", "context": {"cluster": "nowhere", "user": "admin"}},
            ],
            "current-context": "nowhere",
        });
        std::fs::write(
            dir.path().join("kubeconfig"),
            serde_yaml_ng::to_string(&kubeconfig).expect("yaml"),
        )
        .expect("write kubeconfig");
        Self { dir }
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// `kubectl ARGS` with this PATH entry first and this kubeconfig as `$KUBECONFIG`.
    async fn kubectl(&self, args: &[&str]) -> (i32, String, String) {
        let path = format!(
            "{}:{}",
            self.dir.path().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = tokio::process::Command::new("kubectl")
            .args(args)
            .env_clear()
            .env("PATH", path)
            .env("HOME", self.dir.path())
            .env("KUBECONFIG", self.kubeconfig())
            .stdin(Stdio::null())
            .output()
            .await
            .expect("kubectl runs");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

fn config_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("harbor.yaml"),
        "provider:\n  type: static\n  username: {value: robot}\n  password: {file: /in/the/pod/password}\n\
         servers: [harbor.example.com]\nsecretName: harbor-pull\n",
    )
    .expect("write registry file");
    dir
}

#[tokio::test]
async fn kubectl_runs_the_plugin_with_its_context_and_namespace() {
    let client = support::admin_client().await;
    let plugin = Plugin::install();
    let ns = format!("pk-plugin-{}", support::random_string(6));
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "metadata": {"name": ns, "labels": {"pullkeeper.dev/test": "true"}}
            }))
            .expect("namespace"),
        )
        .await
        .expect("create namespace");
    let config = config_dir();
    let config = config.path().to_str().expect("utf-8");
    let instance = format!("pk-plugin-{}", support::random_string(6));

    // kubectl finds it on PATH.
    let (code, stdout, stderr) = plugin.kubectl(&["plugin", "list"]).await;
    assert_eq!(code, 0, "kubectl plugin list: {stderr}");
    assert!(stdout.contains("kubectl-pullkeeper"), "{stdout}");

    // Help speaks as the plugin (argv[0] is the plugin's path).
    let (code, stdout, _) = plugin.kubectl(&["pullkeeper", "--help"]).await;
    assert_eq!(code, 0);
    assert!(stdout.contains("Usage: kubectl pullkeeper"), "{stdout}");

    // Without --context, the current context (a closed port) is used: the call fails.
    let (code, stdout, stderr) = plugin
        .kubectl(&[
            "pullkeeper",
            "diagnose",
            "--config",
            config,
            "--no-file-checks",
            "-n",
            &ns,
            "-o",
            "json",
        ])
        .await;
    assert_eq!(
        code, 2,
        "the current context must be used: {stdout}{stderr}"
    );

    // --context pk reaches the API server; -n scopes diagnose to the namespace.
    let (code, stdout, stderr) = plugin
        .kubectl(&[
            "pullkeeper",
            "diagnose",
            "--config",
            config,
            "--no-file-checks",
            "--context",
            "pk",
            "-n",
            &ns,
            "-o",
            "json",
            "--instance",
            &instance,
        ])
        .await;
    assert_eq!(code, 0, "diagnose --context pk: {stderr}");
    let report: Value = serde_json::from_str(&stdout).expect("diagnose JSON");
    assert_eq!(report["kind"], "Diagnosis");
    assert_eq!(report["pods"], serde_json::json!([]), "{report}");

    // plan with --context=NAME (the other spelling): the namespace is in scope and would get the
    // Secret, so exit 1 and a plan naming it.
    let (code, stdout, stderr) = plugin
        .kubectl(&[
            "pullkeeper",
            "plan",
            "--config",
            config,
            "--no-file-checks",
            "--context=pk",
            "--instance",
            &instance,
            "-o",
            "json",
        ])
        .await;
    assert_eq!(code, 1, "plan --context=pk: {stderr}");
    let plan: Value = serde_json::from_str(&stdout).expect("plan JSON");
    assert!(
        plan["namespaces"]
            .as_array()
            .expect("namespaces")
            .iter()
            .any(|n| n["name"] == ns.as_str()),
        "{plan}"
    );

    // cleanup -n NAMESPACE (its Lease's namespace), nothing to clean for a fresh instance.
    let (code, stdout, stderr) = plugin
        .kubectl(&[
            "pullkeeper",
            "cleanup",
            "--context",
            "pk",
            "-n",
            &ns,
            "--instance",
            &instance,
            "--dry-run",
            "-o",
            "json",
        ])
        .await;
    assert_eq!(code, 0, "cleanup --dry-run: {stderr}");
    let cleanup: Value = serde_json::from_str(&stdout).expect("cleanup JSON");
    assert_eq!(cleanup["kind"], "Cleanup");
    assert_eq!(cleanup["actions"], serde_json::json!([]), "{cleanup}");

    Api::<Namespace>::all(client)
        .delete(&ns, &DeleteParams::default())
        .await
        .expect("delete namespace");
}

/// The krew manifest installs the binary as the plugin kubectl looks for.
#[test]
fn the_krew_manifest_installs_kubectl_pullkeeper() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/krew/pullkeeper.yaml");
    let manifest: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&path).expect("read")).expect("yaml");
    assert_eq!(
        manifest["apiVersion"].as_str(),
        Some("krew.googlecontainertools.github.com/v1alpha2")
    );
    assert_eq!(manifest["kind"].as_str(), Some("Plugin"));
    assert_eq!(manifest["metadata"]["name"].as_str(), Some("pullkeeper"));
    let version = manifest["spec"]["version"].as_str().expect("version");
    assert_eq!(version, format!("v{}", env!("CARGO_PKG_VERSION")));
    let platforms = manifest["spec"]["platforms"]
        .as_sequence()
        .expect("platforms");
    assert!(platforms.len() >= 2);
    for p in platforms {
        assert_eq!(p["bin"].as_str(), Some("kubectl-pullkeeper"), "{p:?}");
        let uri = p["uri"].as_str().expect("uri");
        assert!(uri.contains(version) && uri.ends_with(".tar.gz"), "{uri}");
        let sha = p["sha256"].as_str().expect("sha256");
        assert!(
            sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()),
            "{sha}"
        );
        assert!(
            p["files"]
                .as_sequence()
                .expect("files")
                .iter()
                .any(|f| f["from"].as_str() == Some("kubectl-pullkeeper")),
            "{p:?}"
        );
    }
}

/// The binary prints a bash completion script bash accepts, and its man pages.
#[test]
fn the_binary_prints_completions_bash_accepts_and_man_pages() {
    let bin = env!("CARGO_BIN_EXE_pullkeeper");
    let out = std::process::Command::new(bin)
        .args(["completions", "bash"])
        .output()
        .expect("pullkeeper completions bash");
    assert!(out.status.success());
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("pullkeeper.bash");
    std::fs::write(&script, &out.stdout).expect("write");
    let check = std::process::Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .expect("bash -n");
    assert!(
        check.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    // Loaded, it completes the subcommands.
    let complete = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {}; COMP_WORDS=(pullkeeper d); COMP_CWORD=1; _pullkeeper pullkeeper d pullkeeper; echo \"${{COMPREPLY[@]}}\"",
            script.display()
        ))
        .output()
        .expect("bash completes");
    let words = String::from_utf8_lossy(&complete.stdout);
    assert!(words.split_whitespace().any(|w| w == "diagnose"), "{words}");

    let pages = dir.path().join("man");
    let out = std::process::Command::new(bin)
        .args(["man", "--dir"])
        .arg(&pages)
        .output()
        .expect("pullkeeper man --dir");
    assert!(out.status.success());
    for page in [
        "pullkeeper.1",
        "pullkeeper-plan.1",
        "pullkeeper-completions.1",
    ] {
        let text = std::fs::read_to_string(pages.join(page)).expect(page);
        assert!(text.contains(".TH "), "{page}");
    }
}
