use super::*;

fn entry() -> Entry {
    Entry {
        match_images: vec![
            "*.dkr.ecr.*.amazonaws.com".into(),
            "registry.example.com".into(),
        ],
        node_config_dir: PathBuf::from("/etc/kubernetes/image-credential-provider/pullkeeper.d"),
        default_cache_duration: "1m".into(),
    }
}

const EKS_JSON: &str = r#"{
  "apiVersion": "kubelet.config.k8s.io/v1",
  "kind": "CredentialProviderConfig",
  "providers": [
    {
      "name": "ecr-credential-provider",
      "matchImages": ["*.dkr.ecr.*.amazonaws.com", "*.dkr.ecr.*.amazonaws.com.cn"],
      "defaultCacheDuration": "12h",
      "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
      "args": ["get-credentials"],
      "env": [{"name": "AWS_REGION", "value": "eu-west-1"}]
    }
  ]
}
"#;

const OTHER_YAML: &str = "\
apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
  - name: acr-credential-provider
    apiVersion: credentialprovider.kubelet.k8s.io/v1
    matchImages: ['*.azurecr.io']
    defaultCacheDuration: 10m
    args: [/etc/kubernetes/azure.json]
  - name: pullkeeper
    apiVersion: credentialprovider.kubelet.k8s.io/v1
    matchImages: ['old.example.com']
    defaultCacheDuration: 5m
    args: [credential-provider, --config, /old]
  - name: gcp-credential-provider
    apiVersion: credentialprovider.kubelet.k8s.io/v1
    matchImages: ['*.pkg.dev']
    defaultCacheDuration: 1m
";

fn parse(text: &str) -> Value {
    serde_yaml_ng::from_str(text).expect("parses")
}

fn providers(doc: &Value) -> Vec<Value> {
    doc["providers"].as_array().expect("a list").clone()
}

#[test]
fn merging_into_the_platforms_json_config_keeps_its_provider_and_appends_pullkeepers_as_json() {
    let file = Path::new("/etc/eks/image-credential-provider/config.json");
    let merged = merge_provider_config(file, Some(EKS_JSON), &entry())
        .expect("merges")
        .expect("changes");
    assert!(merged.trim_start().starts_with('{'), "stays JSON: {merged}");
    let merged: Value = serde_json::from_str(&merged).expect("valid JSON");
    let before = providers(&parse(EKS_JSON));
    let after = providers(&merged);
    assert_eq!(after.len(), 2);
    assert_eq!(
        after[0], before[0],
        "the platform's provider is kept as it was"
    );
    assert_eq!(after[1], entry().to_value());
    assert_eq!(after[1]["name"], "pullkeeper");
    assert_eq!(
        after[1]["args"],
        json!([
            "credential-provider",
            "--config",
            "/etc/kubernetes/image-credential-provider/pullkeeper.d"
        ])
    );
    assert_eq!(merged["kind"], "CredentialProviderConfig");
}

#[test]
fn an_existing_pullkeeper_entry_is_replaced_in_place_and_the_others_are_kept() {
    let file = Path::new("/var/lib/kubelet/credential-provider-config.yaml");
    let merged = merge_provider_config(file, Some(OTHER_YAML), &entry())
        .expect("merges")
        .expect("changes");
    assert!(
        !merged.trim_start().starts_with('{'),
        "stays YAML: {merged}"
    );
    let before = providers(&parse(OTHER_YAML));
    let after = providers(&parse(&merged));
    let names: Vec<_> = after
        .iter()
        .map(|p| p["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        names,
        [
            "acr-credential-provider",
            "pullkeeper",
            "gcp-credential-provider"
        ]
    );
    assert_eq!(after[0], before[0]);
    assert_eq!(after[2], before[2]);
    assert_eq!(after[1], entry().to_value());
}

#[test]
fn a_second_merge_of_its_own_output_changes_nothing() {
    for (file, text) in [("config.json", EKS_JSON), ("config.yaml", OTHER_YAML)] {
        let file = Path::new(file);
        let once = merge_provider_config(file, Some(text), &entry())
            .expect("merges")
            .expect("changes");
        assert_eq!(
            merge_provider_config(file, Some(&once), &entry()).expect("merges"),
            None
        );
    }
}

#[test]
fn an_absent_file_becomes_a_config_with_only_pullkeepers_entry() {
    let merged = merge_provider_config(Path::new("/etc/kubelet/cp.yaml"), None, &entry())
        .expect("merges")
        .expect("creates");
    let doc = parse(&merged);
    assert_eq!(doc["apiVersion"], CONFIG_API_VERSION);
    assert_eq!(doc["kind"], CONFIG_KIND);
    assert_eq!(providers(&doc), vec![entry().to_value()]);
    let json = merge_provider_config(Path::new("/etc/kubelet/cp.json"), None, &entry())
        .expect("merges")
        .expect("creates");
    assert_eq!(serde_json::from_str::<Value>(&json).expect("JSON"), doc);
}

#[test]
fn a_file_that_is_no_credential_provider_config_is_refused_naming_the_file() {
    let kubelet_config = "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n";
    for text in [
        kubelet_config,
        "- a\n- list\n",
        "apiVersion: kubelet.config.k8s.io/v1alpha1\nkind: CredentialProviderConfig\n",
    ] {
        let err = merge_provider_config(
            Path::new("/var/lib/kubelet/config.yaml"),
            Some(text),
            &entry(),
        )
        .expect_err("refused");
        let msg = err.to_string();
        assert!(
            matches!(err, InstallError::NotProviderConfig { .. }),
            "{msg}"
        );
        assert!(
            msg.contains("/var/lib/kubelet/config.yaml is not a CredentialProviderConfig"),
            "{msg}"
        );
    }
    let err = merge_provider_config(
        Path::new("/x/cp.yaml"),
        Some("providers: [unclosed\n"),
        &entry(),
    )
    .expect_err("refused");
    assert!(
        err.to_string()
            .starts_with("/x/cp.yaml is neither YAML nor JSON"),
        "{err}"
    );
    let err = merge_provider_config(
        Path::new("/x/cp.yaml"),
        Some("apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders: {a: 1}\n"),
        &entry(),
    )
    .expect_err("refused");
    assert!(
        matches!(err, InstallError::ProvidersNotList { .. }),
        "{err}"
    );
}

#[test]
fn duplicate_pullkeeper_entries_collapse_into_one() {
    let text = format!(
        "{OTHER_YAML}  - name: pullkeeper\n    apiVersion: credentialprovider.kubelet.k8s.io/v1\n    matchImages: [x]\n    defaultCacheDuration: 1m\n"
    );
    let merged = merge_provider_config(Path::new("c.yaml"), Some(&text), &entry())
        .expect("merges")
        .expect("changes");
    let after = providers(&parse(&merged));
    assert_eq!(
        after.iter().filter(|p| p["name"] == "pullkeeper").count(),
        1
    );
    assert_eq!(after.len(), 3);
}

/// A node laid out under a temporary host prefix, and a ConfigMap-like source directory.
struct Node {
    root: PathBuf,
    settings: Settings,
}

impl Node {
    fn new(tag: &str, existing: Option<&str>) -> Self {
        let root =
            std::env::temp_dir().join(format!("pk-node-install-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let source = root.join("configmap");
        let data = source.join("..2026_12_06_05_00_00.1");
        fs::create_dir_all(&data).expect("mkdir");
        fs::write(
            data.join("registry.yaml"),
            "provider:\n  type: static\n  username: {value: u}\n  password: {file: /etc/pullkeeper-node/password}\nservers: [registry.example.com]\nsecretName: registry-pull\n",
        )
        .expect("write");
        std::os::unix::fs::symlink("..2026_12_06_05_00_00.1", source.join("..data"))
            .expect("symlink");
        std::os::unix::fs::symlink("..data/registry.yaml", source.join("registry.yaml"))
            .expect("symlink");
        let host = root.join("host");
        let bin_dir = PathBuf::from("/etc/eks/image-credential-provider");
        fs::create_dir_all(host.join("etc/eks/image-credential-provider")).expect("mkdir");
        let provider_config = bin_dir.join("config.json");
        if let Some(text) = existing {
            fs::write(
                host.join("etc/eks/image-credential-provider/config.json"),
                text,
            )
            .expect("write");
        }
        let exe = root.join("pullkeeper-exe");
        fs::write(&exe, b"\x7fELF pretend executable").expect("write");
        let settings = Settings {
            exe,
            source_config_dir: source,
            bin_dir,
            provider_config,
            host_prefix: host,
            entry: Entry {
                node_config_dir: PathBuf::from("/etc/eks/image-credential-provider/pullkeeper.d"),
                ..entry()
            },
        };
        Self { root, settings }
    }

    fn host(&self, node_path: &str) -> PathBuf {
        self.settings.on_host(Path::new(node_path))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

#[test]
fn install_copies_the_executable_and_registry_files_merges_the_entry_and_a_second_run_writes_nothing()
 {
    let node = Node::new("full", Some(EKS_JSON));
    let report = install(&node.settings).expect("installs");
    let written: Vec<_> = report
        .written
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    assert_eq!(
        written,
        [
            "/etc/eks/image-credential-provider/pullkeeper",
            "/etc/eks/image-credential-provider/pullkeeper.d/registry.yaml",
            "/etc/eks/image-credential-provider/config.json",
        ]
    );
    let bin = node.host("/etc/eks/image-credential-provider/pullkeeper");
    assert_eq!(fs::read(&bin).expect("bin"), b"\x7fELF pretend executable");
    assert_eq!(
        fs::metadata(&bin).expect("meta").permissions().mode() & 0o777,
        0o755
    );
    let registry = node.host("/etc/eks/image-credential-provider/pullkeeper.d/registry.yaml");
    assert!(
        fs::read_to_string(&registry)
            .expect("registry")
            .contains("registry.example.com")
    );
    assert_eq!(
        fs::metadata(&registry).expect("meta").permissions().mode() & 0o777,
        0o600
    );
    let config = fs::read_to_string(node.host("/etc/eks/image-credential-provider/config.json"))
        .expect("config");
    let after = providers(&serde_json::from_str(&config).expect("JSON"));
    assert_eq!(after[0], providers(&parse(EKS_JSON))[0]);
    assert_eq!(
        after[1]["args"][2],
        "/etc/eks/image-credential-provider/pullkeeper.d"
    );
    // No temporary file left behind.
    let leftovers: Vec<_> = fs::read_dir(node.host("/etc/eks/image-credential-provider"))
        .expect("dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let modified = fs::metadata(node.host("/etc/eks/image-credential-provider/config.json"))
        .and_then(|m| m.modified())
        .expect("mtime");
    assert_eq!(
        install(&node.settings).expect("installs again"),
        Report::default()
    );
    assert_eq!(
        fs::metadata(node.host("/etc/eks/image-credential-provider/config.json"))
            .and_then(|m| m.modified())
            .expect("mtime"),
        modified
    );
}

#[test]
fn a_registry_file_gone_from_the_config_map_is_removed_from_the_node() {
    let node = Node::new("stale", None);
    let stale = node.host("/etc/eks/image-credential-provider/pullkeeper.d/old.yaml");
    fs::create_dir_all(stale.parent().expect("parent")).expect("mkdir");
    fs::write(&stale, "provider: {type: static}\n").expect("write");
    let report = install(&node.settings).expect("installs");
    assert_eq!(
        report.removed,
        [PathBuf::from(
            "/etc/eks/image-credential-provider/pullkeeper.d/old.yaml"
        )]
    );
    assert!(!stale.exists());
    // The absent provider config was created with only pullkeeper's entry.
    let config = fs::read_to_string(node.host("/etc/eks/image-credential-provider/config.json"))
        .expect("config");
    assert_eq!(
        providers(&serde_json::from_str(&config).expect("JSON")).len(),
        1
    );
}

#[test]
fn a_foreign_provider_config_or_an_invalid_config_dir_installs_nothing() {
    let node = Node::new("foreign", Some("apiVersion: v1\nkind: ConfigMap\n"));
    let err = install(&node.settings).expect_err("refused");
    assert!(
        err.to_string().contains(
            "/etc/eks/image-credential-provider/config.json is not a CredentialProviderConfig"
        ),
        "{err}"
    );
    assert_eq!(
        fs::read_to_string(node.host("/etc/eks/image-credential-provider/config.json"))
            .expect("kept"),
        "apiVersion: v1\nkind: ConfigMap\n"
    );

    let node = Node::new("invalid", Some(EKS_JSON));
    fs::write(
        node.settings.source_config_dir.join("broken.yaml"),
        "provider: {type: nonsense}\n",
    )
    .expect("write");
    let err = install(&node.settings).expect_err("refused");
    assert!(matches!(err, InstallError::Config { .. }), "{err}");
    assert!(
        !node
            .host("/etc/eks/image-credential-provider/pullkeeper")
            .exists(),
        "nothing installed"
    );
    assert_eq!(
        fs::read_to_string(node.host("/etc/eks/image-credential-provider/config.json"))
            .expect("kept"),
        EKS_JSON
    );
}
