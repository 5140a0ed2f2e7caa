//! `pullkeeper cleanup` on the real control plane: a daemon with `--leader-elect` writes its
//! Secrets and ServiceAccount entries beside a user's and another installation's; cleanup
//! refuses while it runs, and after its SIGTERM removes exactly what it wrote.
// A scenario test reads top to bottom as the story it checks; splitting it hides the order.
#![allow(clippy::too_many_lines)]

mod daemon;
mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use daemon::{Answer, SLOW, TokenEndpoint, config_dir, write_config};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(90);
const SA_ANNOTATION: &str = "pullkeeper.dev/image-pull-secrets";

/// What one `pullkeeper cleanup` printed and returned.
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

async fn cleanup(kubeconfig: &Path, instance: &str, extra: &[&str]) -> Ran {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_pullkeeper"))
        .arg("cleanup")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["--instance", instance])
        .args(["--lease-namespace", support::PULLKEEPER_NAMESPACE])
        .args(["--log-filter", "warn"])
        .args(extra)
        .env_remove("KUBECONFIG")
        .env_remove("POD_NAMESPACE")
        .kill_on_drop(true)
        .output()
        .await
        .expect("run pullkeeper cleanup");
    Ran {
        code: output.status.code().expect("cleanup exited"),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn admin_kubeconfig() -> std::path::PathBuf {
    support::env("KUBECONFIG").into()
}

fn token(password: &str) -> Answer {
    Answer::Token {
        username: "robot".into(),
        password: password.into(),
        expires_in: 3600,
    }
}

async fn get_secret(client: &Client, ns: &str, name: &str) -> Option<Secret> {
    Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .expect("get secret")
}

async fn get_account(client: &Client, ns: &str, name: &str) -> ServiceAccount {
    Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .expect("get serviceaccount")
}

fn pull_names(sa: &ServiceAccount) -> Vec<String> {
    sa.image_pull_secrets
        .iter()
        .flatten()
        .map(|r| r.name.clone())
        .collect()
}

fn annotation<'a>(sa: &'a ServiceAccount, key: &str) -> Option<&'a str> {
    sa.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// Waits until `default` lists `user` and then `ours` (in the order the registries' first
/// fetches happened to finish).
async fn wait_pull_secrets(client: &Client, ns: &str, user: &str, ours: &[&str]) {
    support::wait_for_named(
        &format!("serviceaccount {ns}/default imagePullSecrets == {user} then {ours:?}"),
        WAIT,
        || async {
            let sa = Api::<ServiceAccount>::namespaced(client.clone(), ns)
                .get_opt("default")
                .await
                .ok()
                .flatten();
            let have = sa.as_ref().map(pull_names).unwrap_or_default();
            let mut added = have.get(1..).unwrap_or_default().to_vec();
            added.sort();
            if have.first().map(String::as_str) == Some(user) && added == ours {
                Ok(())
            } else {
                Err(format!("{have:?}"))
            }
        },
    )
    .await;
}

/// Appends an entry to `default`'s `imagePullSecrets`, as a person would.
async fn append_entry(client: &Client, ns: &str, name: &str) {
    let sa = get_account(client, ns, "default").await;
    let op = if sa.image_pull_secrets.is_some() {
        json!([{"op": "add", "path": "/imagePullSecrets/-", "value": {"name": name}}])
    } else {
        json!([{"op": "add", "path": "/imagePullSecrets", "value": [{"name": name}]}])
    };
    let patch: json_patch::Patch = serde_json::from_value(op).expect("patch");
    Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .patch(
            "default",
            &PatchParams::default(),
            &Patch::Json::<()>(patch),
        )
        .await
        .expect("append an imagePullSecrets entry");
}

/// Records `entry` as installation `instance`'s on `default`, as its daemon would.
async fn record_for(client: &Client, ns: &str, instance: &str, entry: &str) {
    let patch =
        json!({"metadata": {"annotations": {format!("{SA_ANNOTATION}.{instance}"): entry}}});
    Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .patch("default", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("annotate serviceaccount");
}

/// A Secret, with pullkeeper's labels of `instance` or none.
async fn create_secret(client: &Client, ns: &str, name: &str, instance: Option<&str>) -> Secret {
    let labels: BTreeMap<String, String> = instance
        .map(|i| {
            BTreeMap::from([
                (
                    "app.kubernetes.io/managed-by".to_string(),
                    "pullkeeper".to_string(),
                ),
                ("pullkeeper.dev/instance".to_string(), i.to_string()),
            ])
        })
        .unwrap_or_default();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": support::dockerconfigjson("registry.user.test", "u", "p")},
    }))
    .expect("secret");
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await
        .expect("create secret")
}

fn leases(client: &Client) -> Api<Lease> {
    Api::namespaced(client.clone(), support::PULLKEEPER_NAMESPACE)
}

/// The resourceVersion of every object a test looks at, to prove nothing was written.
async fn versions(client: &Client, objects: &[(&str, &str, &str)]) -> Vec<Option<String>> {
    let mut out = Vec::new();
    for (kind, ns, name) in objects {
        let rv = match *kind {
            "secret" => get_secret(client, ns, name)
                .await
                .and_then(|s| s.metadata.resource_version),
            "serviceaccount" => {
                get_account(client, ns, name)
                    .await
                    .metadata
                    .resource_version
            }
            "lease" => Api::<Lease>::namespaced(client.clone(), ns)
                .get_opt(name)
                .await
                .expect("get lease")
                .and_then(|l| l.metadata.resource_version),
            other => panic!("unknown kind {other}"),
        };
        out.push(rv);
    }
    out
}

#[tokio::test]
async fn cleanup_refuses_while_the_daemon_runs_and_afterwards_removes_exactly_its_objects() {
    let test = "cleanup-after-uninstall";
    let client = support::admin_client().await;
    let namespaces = support::TestNamespaces::new(client.clone(), test);
    let a = namespaces.create().await;
    let b = namespaces.create().await;
    let c = namespaces.create().await;
    for ns in [&a, &b, &c] {
        support::wait_account(&client, ns, "default").await;
    }
    let other = daemon::unique_instance();
    // A user's entry before pullkeeper's, a user Secret, another installation's Secret and
    // recorded entry, and in `c` user Secrets of pullkeeper's names (so pullkeeper skips `c`).
    append_entry(&client, &a, "user-before").await;
    create_secret(&client, &a, "user-before", None).await;
    create_secret(&client, &a, "other-pull", Some(&other)).await;
    append_entry(&client, &b, "other-pull").await;
    record_for(&client, &b, &other, "other-pull").await;
    create_secret(&client, &b, "other-pull", Some(&other)).await;
    create_secret(&client, &c, "alpha-pull", None).await;
    create_secret(&client, &c, "beta-pull", None).await;

    let selector = format!("{}-name={test}", support::TEST_LABEL);
    let endpoint = TokenEndpoint::start(token("cleanup-pw")).await;
    let dir = config_dir();
    for name in ["alpha", "beta"] {
        write_config(
            &dir,
            &format!("{name}.yaml"),
            &endpoint.registry_file(
                &format!("registry.{name}.test"),
                &format!("{name}-pull"),
                &selector,
                SLOW,
            ),
        );
    }
    let kubeconfig = daemon::pullkeeper_kubeconfig(&client).await;
    let instance = daemon::unique_instance();
    let mut d = daemon::start_with(
        &kubeconfig,
        &dir,
        "info",
        &instance,
        &[
            "--reload-interval",
            "1s",
            "--leader-elect",
            "--identity",
            "cleanup-replica",
        ],
    )
    .await;
    wait_pull_secrets(&client, &a, "user-before", &["alpha-pull", "beta-pull"]).await;
    wait_pull_secrets(&client, &b, "other-pull", &["alpha-pull", "beta-pull"]).await;
    // Entries a user adds after pullkeeper's.
    append_entry(&client, &a, "user-after").await;
    append_entry(&client, &b, "user-after").await;
    for ns in [&a, &b] {
        for name in ["alpha-pull", "beta-pull"] {
            assert!(get_secret(&client, ns, name).await.is_some(), "{ns}/{name}");
        }
    }
    assert_eq!(
        pull_names(&get_account(&client, &c, "default").await),
        Vec::<String>::new(),
        "the user's Secrets in {c} are not pullkeeper's: not referenced"
    );
    let lease_name = format!("{instance}-leader");
    let watched: Vec<(&str, &str, &str)> = vec![
        ("secret", &a, "alpha-pull"),
        ("secret", &a, "beta-pull"),
        ("secret", &b, "alpha-pull"),
        ("secret", &b, "beta-pull"),
        ("secret", &a, "user-before"),
        ("secret", &a, "other-pull"),
        ("secret", &b, "other-pull"),
        ("secret", &c, "alpha-pull"),
        ("secret", &c, "beta-pull"),
        ("serviceaccount", &a, "default"),
        ("serviceaccount", &b, "default"),
        ("serviceaccount", &c, "default"),
        ("lease", support::PULLKEEPER_NAMESPACE, &lease_name),
    ];

    // While the daemon runs: refused, nothing written. The SA patches settle first (the daemon
    // leaves user entries alone, so their resourceVersions stay).
    let before = versions(&client, &watched).await;
    // Waiting does not get round it: the daemon keeps renewing its Lease.
    let refused = cleanup(&admin_kubeconfig(), &instance, &["--wait", "3s"]).await;
    assert_eq!(refused.code, 2, "{refused}");
    assert!(refused.stderr.contains("waiting up to 3s"), "{refused}");
    let want = format!(
        "instance {instance} is still running: lease pullkeeper/{lease_name} is held by cleanup-replica_"
    );
    assert!(refused.stderr.contains(&want), "{refused}");
    assert!(refused.stderr.contains("--force"), "{refused}");
    assert!(refused.stdout.is_empty(), "{refused}");
    let refused_dry = cleanup(
        &admin_kubeconfig(),
        &instance,
        &["--dry-run", "--wait", "0s"],
    )
    .await;
    assert_eq!(refused_dry.code, 2, "{refused_dry}");
    // The Lease is renewed every 5 s, so only the objects other than the Lease must be equal.
    let after_refusal = versions(&client, &watched).await;
    assert_eq!(
        before[..before.len() - 1],
        after_refusal[..after_refusal.len() - 1],
        "a refused cleanup writes nothing"
    );

    // The uninstall: SIGTERM, the daemon releases its Lease (it stays, with no holder).
    let status = d.terminate().await;
    assert!(status.success(), "{status:?}");
    let lease = leases(&client).get(&lease_name).await.expect("lease stays");
    assert_eq!(lease.spec.and_then(|s| s.holder_identity), None);

    let before = versions(&client, &watched).await;
    let dry = cleanup(&admin_kubeconfig(), &instance, &["--dry-run"]).await;
    assert_eq!(dry.code, 1, "{dry}");
    // Accounts, then Secrets, then the Lease; each by namespace (random suffixes) and name.
    let (first, second) = if a < b { (&a, &b) } else { (&b, &a) };
    let mut expected = Vec::new();
    for ns in [first, second] {
        expected.push(format!(
            "serviceaccount {ns}/default: would remove imagePullSecrets alpha-pull, beta-pull"
        ));
    }
    for ns in [first, second] {
        for name in ["alpha-pull", "beta-pull"] {
            expected.push(format!("would delete secret {ns}/{name}"));
        }
    }
    expected.push(format!("would delete lease pullkeeper/{lease_name}"));
    expected.push(format!(
        "instance {instance}: would remove 4 Secret(s), 2 ServiceAccount(s) (4 entries), 1 Lease(s); nothing was changed (--dry-run)"
    ));
    assert_eq!(dry.stdout, expected.join("\n") + "\n", "{dry}");
    assert_eq!(
        versions(&client, &watched).await,
        before,
        "--dry-run writes nothing"
    );
    let dry_json = cleanup(&admin_kubeconfig(), &instance, &["--dry-run", "-o", "json"]).await;
    assert_eq!(dry_json.code, 1, "{dry_json}");
    let doc: Value = serde_json::from_str(&dry_json.stdout).expect("json");
    assert_eq!(doc["kind"], "Cleanup");
    assert_eq!(doc["dryRun"], true);
    assert_eq!(
        doc["summary"],
        json!({"secrets": 4, "serviceAccounts": 2, "entries": 4, "leases": 1, "failed": 0})
    );
    assert!(
        doc["actions"]
            .as_array()
            .expect("actions")
            .iter()
            .all(|a| a["result"] == "planned")
    );

    let done = cleanup(&admin_kubeconfig(), &instance, &[]).await;
    assert_eq!(done.code, 0, "{done}");
    assert!(done.stdout.contains(&format!(
        "serviceaccount {a}/default: removed imagePullSecrets alpha-pull, beta-pull\n"
    )));
    assert!(
        done.stdout
            .contains(&format!("deleted secret {b}/beta-pull\n"))
    );
    assert!(
        done.stdout
            .contains(&format!("deleted lease pullkeeper/{lease_name}\n"))
    );
    assert!(
        done.stdout.contains(&format!(
            "instance {instance}: removed 4 Secret(s), 2 ServiceAccount(s) (4 entries), 1 Lease(s)"
        )),
        "{done}"
    );
    assert!(!done.stdout.contains("cleanup-pw") && !done.stderr.contains("cleanup-pw"));

    for ns in [&a, &b] {
        for name in ["alpha-pull", "beta-pull"] {
            assert!(
                get_secret(&client, ns, name).await.is_none(),
                "{ns}/{name} deleted"
            );
        }
    }
    let sa_a = get_account(&client, &a, "default").await;
    assert_eq!(pull_names(&sa_a), ["user-before", "user-after"]);
    assert_eq!(annotation(&sa_a, SA_ANNOTATION), None, "the record is gone");
    let sa_b = get_account(&client, &b, "default").await;
    assert_eq!(pull_names(&sa_b), ["other-pull", "user-after"]);
    assert_eq!(annotation(&sa_b, SA_ANNOTATION), None);
    assert_eq!(
        annotation(&sa_b, &format!("{SA_ANNOTATION}.{other}")),
        Some("other-pull"),
        "the other installation's record stays"
    );
    assert!(get_secret(&client, &a, "user-before").await.is_some());
    assert!(get_secret(&client, &a, "other-pull").await.is_some());
    assert!(get_secret(&client, &b, "other-pull").await.is_some());
    for name in ["alpha-pull", "beta-pull"] {
        assert!(
            get_secret(&client, &c, name).await.is_some(),
            "a user Secret of pullkeeper's name, without its labels, stays"
        );
    }
    assert!(
        leases(&client)
            .get_opt(&lease_name)
            .await
            .expect("get lease")
            .is_none()
    );

    let again = cleanup(&admin_kubeconfig(), &instance, &[]).await;
    assert_eq!(again.code, 0, "{again}");
    assert_eq!(
        again.stdout,
        format!("nothing to clean for instance {instance}\n")
    );
    let again_dry = cleanup(&admin_kubeconfig(), &instance, &["--dry-run", "-o", "json"]).await;
    assert_eq!(again_dry.code, 0, "{again_dry}");
    let doc: Value = serde_json::from_str(&again_dry.stdout).expect("json");
    assert_eq!(doc["actions"], json!([]));
    namespaces.cleanup().await;
}

/// A Lease as a replica holds it: renewed now, for an hour.
async fn create_held_lease(client: &Client, name: &str, holder: Option<&str>) {
    let lease = Lease {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..kube::api::ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: holder.map(String::from),
            lease_duration_seconds: Some(3600),
            renew_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
            ..LeaseSpec::default()
        }),
    };
    leases(client)
        .create(&PostParams::default(), &lease)
        .await
        .expect("create lease");
}

#[tokio::test]
async fn too_weak_rbac_stops_cleanup_before_it_removes_anything() {
    let test = "cleanup-rbac";
    let client = support::admin_client().await;
    let namespaces = support::TestNamespaces::new(client.clone(), test);
    let ns = namespaces.create().await;
    support::wait_account(&client, &ns, "default").await;
    // pullkeeper's namespace (for the Lease) and RBAC, as the installation had them.
    support::install_rbac(&client).await;
    support::grant_secret_names(&client, &["left-pull".to_string()]).await;
    let instance = daemon::unique_instance();
    let lease_name = format!("{instance}-leader");
    // What a stopped daemon leaves: its Secret, its recorded entry, its released Lease.
    create_secret(&client, &ns, "left-pull", Some(&instance)).await;
    append_entry(&client, &ns, "left-pull").await;
    record_for(&client, &ns, &instance, "left-pull").await;
    create_held_lease(&client, &lease_name, None).await;
    let watched: Vec<(&str, &str, &str)> = vec![
        ("secret", &ns, "left-pull"),
        ("serviceaccount", &ns, "default"),
        ("lease", support::PULLKEEPER_NAMESPACE, &lease_name),
    ];
    let before = versions(&client, &watched).await;

    // An identity without any right cannot even look (at the Lease, the first read).
    let nobody = Api::<ServiceAccount>::namespaced(client.clone(), &ns);
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "nobody"}})).expect("sa");
    nobody
        .create(&PostParams::default(), &sa)
        .await
        .expect("create sa");
    let nobody = support::kubeconfig_for_token(&support::sa_token(&client, &ns, "nobody").await);
    let blind = cleanup(&nobody, &instance, &[]).await;
    assert_eq!(blind.code, 2, "{blind}");
    assert!(
        blind
            .stderr
            .contains("pullkeeper cleanup: cannot read lease ")
            && blind.stderr.contains("forbidden"),
        "{blind}"
    );
    assert!(blind.stderr.contains("forbidden"), "{blind}");

    // pullkeeper's own RBAC may delete Secrets and patch ServiceAccounts but not delete its
    // Lease: the permission check refuses before the first write, naming what is missing.
    let own = daemon::pullkeeper_kubeconfig(&client).await;
    let dry = cleanup(&own, &instance, &["--dry-run"]).await;
    assert_eq!(dry.code, 1, "a dry run only reads: {dry}");
    let weak = cleanup(&own, &instance, &[]).await;
    assert_eq!(weak.code, 2, "{weak}");
    assert!(
        weak.stderr.contains(
            "pullkeeper cleanup: this identity may not delete leases.coordination.k8s.io in namespace pullkeeper; nothing was removed. Run cleanup with an admin kubeconfig (--kubeconfig)"
        ),
        "{weak}"
    );
    assert!(weak.stdout.is_empty(), "{weak}");
    assert_eq!(versions(&client, &watched).await, before, "nothing written");

    // A Lease held and renewed refuses even the admin; --force overrides.
    leases(&client)
        .delete(&lease_name, &kube::api::DeleteParams::default())
        .await
        .expect("delete lease");
    create_held_lease(&client, &lease_name, Some("elsewhere-0")).await;
    let refused = cleanup(&admin_kubeconfig(), &instance, &["--wait", "0s"]).await;
    assert_eq!(refused.code, 2, "{refused}");
    assert!(
        refused.stderr.contains("is held by elsewhere-0"),
        "{refused}"
    );
    let forced = cleanup(&admin_kubeconfig(), &instance, &["--force", "-o", "json"]).await;
    assert_eq!(forced.code, 0, "{forced}");
    let doc: Value = serde_json::from_str(&forced.stdout).expect("json");
    assert_eq!(
        doc["summary"],
        json!({"secrets": 1, "serviceAccounts": 1, "entries": 1, "leases": 1, "failed": 0})
    );
    assert!(get_secret(&client, &ns, "left-pull").await.is_none());
    assert_eq!(
        pull_names(&get_account(&client, &ns, "default").await),
        Vec::<String>::new()
    );
    namespaces.cleanup().await;
}
