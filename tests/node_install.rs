//! `pullkeeper node-install --once`, the real binary, on a node laid out under a temporary
//! `--host-prefix` (what the installer DaemonSet's hostPath mounts give it): it copies its own
//! executable, installs the registry files and merges its entry beside the platform's provider;
//! a second run writes nothing; a file of another kind is refused, naming it, and nothing is
//! installed. Needs no test platform.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const PLATFORM_CONFIG: &str = "\
apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
  - name: ecr-credential-provider
    matchImages: ['*.dkr.ecr.*.amazonaws.com']
    defaultCacheDuration: 12h
    apiVersion: credentialprovider.kubelet.k8s.io/v1
";

struct Node {
    root: PathBuf,
}

impl Node {
    fn new(tag: &str) -> Self {
        let root =
            std::env::temp_dir().join(format!("pk-node-install-bin-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("host/etc/kubernetes/cp/bin")).expect("mkdir");
        fs::create_dir_all(root.join("configmap")).expect("mkdir");
        fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples/static.yaml"),
            root.join("configmap/static.yaml"),
        )
        .expect("copy example");
        Self { root }
    }

    fn host(&self, node_path: &str) -> PathBuf {
        self.root
            .join("host")
            .join(node_path.trim_start_matches('/'))
    }

    fn run(&self) -> Output {
        Command::new(env!("CARGO_BIN_EXE_pullkeeper"))
            .args(["node-install", "--once", "--config"])
            .arg(self.root.join("configmap"))
            .args(["--host-prefix"])
            .arg(self.root.join("host"))
            .args([
                "--bin-dir",
                "/etc/kubernetes/cp/bin",
                "--provider-config",
                "/etc/kubernetes/cp/config.yaml",
                "--node-config-dir",
                "/etc/kubernetes/cp/pullkeeper.d",
                "--match-images",
                "registry.example.com,*.registry.example.com",
            ])
            .output()
            .expect("runs")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn node_install_copies_itself_and_merges_its_entry_beside_the_platforms_and_a_second_run_changes_nothing()
 {
    let node = Node::new("ok");
    fs::write(node.host("/etc/kubernetes/cp/config.yaml"), PLATFORM_CONFIG).expect("write");
    let out = node.run();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("credential provider installed on the node"),
        "{}",
        text(&out)
    );

    let installed =
        fs::read(node.host("/etc/kubernetes/cp/bin/pullkeeper")).expect("binary installed");
    assert_eq!(
        installed,
        fs::read(env!("CARGO_BIN_EXE_pullkeeper")).expect("own binary")
    );
    // The installed copy is a working pullkeeper.
    let help = Command::new(node.host("/etc/kubernetes/cp/bin/pullkeeper"))
        .args(["credential-provider", "--help"])
        .output()
        .expect("installed binary runs");
    assert!(help.status.success(), "{}", text(&help));

    let config: serde_json::Value = serde_yaml_ng::from_str(
        &fs::read_to_string(node.host("/etc/kubernetes/cp/config.yaml")).expect("config"),
    )
    .expect("YAML");
    let platform: serde_json::Value = serde_yaml_ng::from_str(PLATFORM_CONFIG).expect("YAML");
    assert_eq!(
        config["providers"][0], platform["providers"][0],
        "the platform's entry is kept"
    );
    assert_eq!(
        config["providers"][1],
        serde_json::json!({
            "name": "pullkeeper",
            "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
            "matchImages": ["registry.example.com", "*.registry.example.com"],
            "defaultCacheDuration": "1m",
            "args": ["credential-provider", "--config", "/etc/kubernetes/cp/pullkeeper.d"],
        })
    );
    assert_eq!(
        fs::read(node.host("/etc/kubernetes/cp/pullkeeper.d/static.yaml")).expect("registry file"),
        fs::read(node.root.join("configmap/static.yaml")).expect("source")
    );

    let before = fs::read(node.host("/etc/kubernetes/cp/config.yaml")).expect("config");
    let again = node.run();
    assert!(again.status.success(), "{}", text(&again));
    assert!(text(&again).contains("up to date"), "{}", text(&again));
    assert_eq!(
        fs::read(node.host("/etc/kubernetes/cp/config.yaml")).expect("config"),
        before
    );
}

#[test]
fn node_install_refuses_a_provider_config_path_holding_another_kind_and_installs_nothing() {
    let node = Node::new("foreign");
    let kubelet_config = "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n";
    fs::write(node.host("/etc/kubernetes/cp/config.yaml"), kubelet_config).expect("write");
    let out = node.run();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("/etc/kubernetes/cp/config.yaml is not a CredentialProviderConfig"),
        "{}",
        text(&out)
    );
    assert_eq!(
        fs::read_to_string(node.host("/etc/kubernetes/cp/config.yaml")).expect("kept"),
        kubelet_config
    );
    assert!(!node.host("/etc/kubernetes/cp/bin/pullkeeper").exists());
    assert!(!node.host("/etc/kubernetes/cp/pullkeeper.d").exists());
}
