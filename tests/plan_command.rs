//! `pullkeeper plan` on the real control plane, run as a child process with the token of
//! pullkeeper's own ServiceAccount (the shipped RBAC) and the `--instance` of the daemon under
//! test. What plan predicts is compared with what the daemon then writes: its
//! `pullkeeper_writes_total` counters and the objects that result.
// A scenario test reads top to bottom as the story it checks; splitting it hides the order.
#![allow(clippy::too_many_lines)]

mod daemon;
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use daemon::{Answer, SLOW, TokenEndpoint, config_dir, write_config};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(90);

/// What one `pullkeeper plan` printed and returned.
struct Planned {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Planned {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "plan -o json printed no JSON ({e}):\n{}\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

async fn plan(kubeconfig: &Path, config: &Path, instance: &str, extra: &[&str]) -> Planned {
    // The role grants the names of the config planned, as the installation's would.
    daemon::grant_config(config).await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_pullkeeper"))
        .arg("plan")
        .arg("--config")
        .arg(config)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["--instance", instance])
        .args(extra)
        .env_remove("KUBECONFIG")
        .kill_on_drop(true)
        .output()
        .await
        .expect("run pullkeeper plan");
    Planned {
        code: output.status.code().expect("plan exited"),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn token(password: &str) -> Answer {
    Answer::Token {
        username: "robot".into(),
        password: password.into(),
        expires_in: 3600,
    }
}

/// A registry file for `endpoint`, with extra top-level lines.
fn registry_file(
    endpoint: &TokenEndpoint,
    name: &str,
    selector: &str,
    extra: &str,
) -> (String, String) {
    (
        format!("{name}.yaml"),
        endpoint.registry_file(
            &format!("registry.{name}.test"),
            &format!("{name}-pull"),
            selector,
            &format!("{SLOW}{extra}"),
        ),
    )
}

/// A config directory holding exactly these files.
fn config_with(files: &[&(String, String)]) -> PathBuf {
    let dir = config_dir();
    for (name, text) in files {
        write_config(&dir, name, text);
    }
    dir
}

async fn wait_gone(client: &Client, ns: &str, name: &str) {
    support::wait_for_named(&format!("secret {ns}/{name} pruned"), WAIT, || async {
        support::get_secret(client, ns, name).await.is_none()
    })
    .await;
}

async fn create_account(client: &Client, ns: &str, name: &str) {
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": name}})).expect("serviceaccount");
    Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &sa)
        .await
        .expect("create serviceaccount");
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

/// Waits until the daemon has fetched `registry` after `after`, then for a sweep over every
/// namespace that started after that: every write the new config causes has been made.
async fn wait_settled(d: &daemon::Daemon, registry: &str, after: f64) {
    let fetched = support::wait_for_named(&format!("a refresh of {registry}"), WAIT, || async {
        Some(
            d.sample(&format!(
                "pullkeeper_last_success_timestamp_seconds{{registry=\"{registry}\"}}"
            ))
            .await,
        )
        .filter(|t| *t > after)
    })
    .await;
    let from = fetched.max(unix_now());
    support::wait_for_named("a sweep after it", WAIT, || async {
        d.sample("pullkeeper_last_sweep_timestamp_seconds").await > from
    })
    .await;
}

/// Successful writes by `kind/operation`, as `pullkeeper_writes_total` counts them.
fn writes(metrics: &str) -> BTreeMap<&'static str, f64> {
    [
        ("secret/apply", "secret", "apply"),
        ("secret/patch", "secret", "patch"),
        ("secret/delete", "secret", "delete"),
        ("serviceaccount/patch", "serviceaccount", "patch"),
    ]
    .into_iter()
    .map(|(key, kind, op)| {
        let series = format!(
            "pullkeeper_writes_total{{kind=\"{kind}\",operation=\"{op}\",outcome=\"success\"}}"
        );
        (key, daemon::sample(metrics, &series))
    })
    .collect()
}

fn failed_writes(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("pullkeeper_writes_total") && l.contains("outcome=\"error\""))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// The writes plan predicts, keyed like [`writes`].
fn predicted(report: &Value) -> BTreeMap<&'static str, f64> {
    let w = &report["summary"]["writes"];
    let n = |k: &str| {
        w[k].as_f64()
            .unwrap_or_else(|| panic!("summary.writes.{k}"))
    };
    BTreeMap::from([
        ("secret/apply", n("secretApply")),
        ("secret/patch", n("secretPatch")),
        ("secret/delete", n("secretDelete")),
        ("serviceaccount/patch", n("serviceAccountPatch")),
    ])
}

/// What the daemon wrote between two scrapes.
fn delta(
    before: &BTreeMap<&'static str, f64>,
    after: &BTreeMap<&'static str, f64>,
) -> BTreeMap<&'static str, f64> {
    after.iter().map(|(k, v)| (*k, v - before[k])).collect()
}

/// One namespace of a JSON report, or `Null` when it lists none of that name.
fn namespace<'r>(report: &'r Value, name: &str) -> &'r Value {
    report["namespaces"]
        .as_array()
        .expect("namespaces")
        .iter()
        .find(|n| n["name"] == name)
        .unwrap_or(&Value::Null)
}

/// A daemon started on an empty config (nothing to write), so that every write it makes
/// comes from a config change a test makes after planning it.
async fn idle_daemon(kubeconfig: &Path, instance: &str) -> daemon::Daemon {
    let d = daemon::start_with(
        kubeconfig,
        &config_dir(),
        "info",
        instance,
        &[
            "--reload-interval",
            "1s",
            "--resync-interval",
            "1s",
            "--allow-empty-config",
        ],
    )
    .await;
    let now = unix_now();
    support::wait_for_named("the first sweep", WAIT, || async {
        d.sample("pullkeeper_last_sweep_timestamp_seconds").await > now
    })
    .await;
    d
}

/// Replaces the daemon's config with `files`, as a ConfigMap update would.
async fn deploy(d: &daemon::Daemon, files: &[&(String, String)]) {
    for entry in std::fs::read_dir(&d.config_dir).expect("config dir") {
        let path = entry.expect("entry").path();
        if !files
            .iter()
            .any(|(name, _)| path.file_name() == Some(name.as_ref()))
        {
            std::fs::remove_file(&path).expect("remove config file");
        }
    }
    // The role grants the new names before the config names them, as a Helm upgrade applies
    // both at once.
    let dir = config_dir();
    for (name, text) in files {
        write_config(&dir, name, text);
    }
    daemon::grant_config(&dir).await;
    for (name, text) in files {
        write_config(&d.config_dir, name, text);
    }
}

#[tokio::test]
async fn a_converged_cluster_plans_no_change_and_plan_writes_nothing() {
    let test = "plan-converged";
    let client = support::admin_client().await;
    let namespaces = support::TestNamespaces::new(client.clone(), test);
    let a = namespaces.create().await;
    let b = namespaces.create().await;
    let endpoint = TokenEndpoint::start(token("converged-pw")).await;
    let file = registry_file(&endpoint, "conv", &support::test_selector(test), "");
    let dir = config_with(&[&file]);
    let kubeconfig = daemon::pullkeeper_kubeconfig(&client).await;
    let instance = daemon::unique_instance();
    let d = daemon::start_with(
        &kubeconfig,
        &dir,
        "info",
        &instance,
        &["--reload-interval", "1s", "--resync-interval", "1s"],
    )
    .await;
    for ns in [&a, &b] {
        support::wait_password(
            &client,
            ns,
            "conv-pull",
            "registry.conv.test",
            "converged-pw",
        )
        .await;
        support::wait_pull_secrets(&client, ns, "default", &["conv-pull"]).await;
    }
    let now = unix_now();
    support::wait_for_named("a sweep after convergence", WAIT, || async {
        d.sample("pullkeeper_last_sweep_timestamp_seconds").await > now
    })
    .await;
    let before = support::get_secret(&client, &a, "conv-pull")
        .await
        .expect("secret");
    let writes_before = writes(&d.metrics().await);
    let calls = endpoint.calls();

    let text = plan(&kubeconfig, &dir, &instance, &[]).await;
    assert_eq!(text.code, 0, "{}{}", text.stdout, text.stderr);
    assert!(text.stdout.contains("No changes:"), "{}", text.stdout);
    assert!(
        text.stdout
            .contains("registry conv: Secret conv-pull in 2 namespaces")
    );

    let report = plan(&kubeconfig, &dir, &instance, &["-o", "json"]).await;
    assert_eq!(report.code, 0, "{}", report.stderr);
    let report = report.json();
    assert_eq!(report["apiVersion"], "pullkeeper.dev/v1");
    assert_eq!(report["kind"], "Plan");
    assert_eq!(report["instance"], instance.as_str());
    assert_eq!(report["namespaces"], json!([]));
    assert_eq!(report["summary"]["changes"], false);
    assert_eq!(report["summary"]["writes"]["total"], 0);
    assert_eq!(report["registries"][0]["namespacesInScope"], 2);
    assert_eq!(
        report["registries"][0]["credential"]["source"],
        "existing-secret"
    );
    assert_eq!(
        report["registries"][0]["credential"]["hosts"],
        json!(["registry.conv.test"])
    );
    assert_eq!(
        endpoint.calls(),
        calls,
        "without --fetch no provider is called"
    );

    // The same credential fetched again (its expiry slid) changes nothing either.
    let fetched = plan(&kubeconfig, &dir, &instance, &["--fetch", "-o", "json"]).await;
    assert_eq!(fetched.code, 0, "{}{}", fetched.stdout, fetched.stderr);
    let fetched = fetched.json();
    assert_eq!(fetched["fetched"], true);
    assert_eq!(fetched["registries"][0]["credential"]["source"], "fetched");
    assert_eq!(
        fetched["registries"][0]["credential"]["sha256Prefix"],
        report["registries"][0]["credential"]["sha256Prefix"]
    );
    assert_eq!(
        endpoint.calls(),
        calls + 1,
        "one provider call per registry"
    );

    let after = support::get_secret(&client, &a, "conv-pull")
        .await
        .expect("secret");
    assert_eq!(
        after.metadata.resource_version, before.metadata.resource_version,
        "plan writes nothing"
    );
    assert_eq!(writes(&d.metrics().await), writes_before);
    d.stop().await;
    namespaces.cleanup().await;
}

#[tokio::test]
async fn after_a_config_change_plan_predicts_exactly_the_writes_run_makes() {
    let test = "plan-change";
    let client = support::admin_client().await;
    let namespaces = support::TestNamespaces::new(client.clone(), test);
    let tier = |t: &str| BTreeMap::from([("tier".to_string(), t.to_string())]);
    let stay1 = namespaces.create_labelled(tier("a")).await;
    let stay2 = namespaces.create_labelled(tier("a")).await;
    let leave = namespaces.create_labelled(tier("b")).await;
    for ns in [&stay1, &stay2, &leave] {
        support::wait_account(&client, ns, "default").await;
        create_account(&client, ns, "builder").await;
    }
    let main = TokenEndpoint::start(token("main-pw")).await;
    let extra = TokenEndpoint::start(token("extra-pw")).await;
    let kubeconfig = daemon::pullkeeper_kubeconfig(&client).await;
    let instance = daemon::unique_instance();
    let d = idle_daemon(&kubeconfig, &instance).await;

    // Converge on the first config.
    let first = registry_file(&main, "main", &support::test_selector(test), "");
    deploy(&d, &[&first]).await;
    for ns in [&stay1, &stay2, &leave] {
        support::wait_password(&client, ns, "main-pull", "registry.main.test", "main-pw").await;
        support::wait_pull_secrets(&client, ns, "default", &["main-pull"]).await;
    }
    wait_settled(&d, "main", 0.0).await;
    let converged = plan(&kubeconfig, &d.config_dir, &instance, &["-o", "json"]).await;
    assert_eq!(
        converged.code, 0,
        "{}{}",
        converged.stdout, converged.stderr
    );

    // Change 1: `builder` joins serviceAccounts and the selector narrows to tier=a.
    let narrowed = registry_file(
        &main,
        "main",
        &format!("{},tier=a", support::test_selector(test)),
        "serviceAccounts: [default, builder]\n",
    );
    let proposed = config_with(&[&narrowed]);
    let planned = plan(&kubeconfig, &proposed, &instance, &["-o", "json"]).await;
    assert_eq!(planned.code, 1, "{}{}", planned.stdout, planned.stderr);
    let report = planned.json();
    for ns in [&stay1, &stay2] {
        assert_eq!(
            namespace(&report, ns),
            &json!({"name": ns, "secrets": [], "blocked": [], "serviceAccounts": [
                {"name": "builder", "add": ["main-pull"], "remove": [], "recordsOwnership": true}]}),
        );
    }
    assert_eq!(
        namespace(&report, &leave),
        &json!({"name": leave, "blocked": [],
            "secrets": [{"name": "main-pull", "registry": "main", "action": "prune", "reasons": []}],
            "serviceAccounts": [
                {"name": "default", "add": [], "remove": ["main-pull"], "recordsOwnership": true}]}),
    );
    let text = plan(&kubeconfig, &proposed, &instance, &[]).await;
    assert!(
        text.stdout.contains(
            "Plan: 0 Secrets to create, 0 to update, 1 to prune; 3 ServiceAccounts to patch \
             (+2 / -1 entries); 4 writes in 3 of"
        ),
        "{}",
        text.stdout
    );

    let before = writes(&d.metrics().await);
    let at = unix_now();
    deploy(&d, &[&narrowed]).await;
    for ns in [&stay1, &stay2] {
        support::wait_pull_secrets(&client, ns, "builder", &["main-pull"]).await;
    }
    wait_gone(&client, &leave, "main-pull").await;
    support::wait_pull_secrets(&client, &leave, "default", &[]).await;
    wait_settled(&d, "main", at).await;
    let metrics = d.metrics().await;
    assert_eq!(delta(&before, &writes(&metrics)), predicted(&report));
    assert_eq!(failed_writes(&metrics), 0.0);
    for ns in [&stay1, &stay2] {
        assert_eq!(
            support::pull_secrets(&client, ns, "default").await,
            ["main-pull"]
        );
    }
    assert_eq!(
        support::pull_secrets(&client, &leave, "builder").await,
        Vec::<String>::new()
    );
    let settled = plan(&kubeconfig, &d.config_dir, &instance, &[]).await;
    assert_eq!(settled.code, 0, "{}{}", settled.stdout, settled.stderr);

    // Change 2: a second registry for every namespace of the test.
    let second = registry_file(&extra, "extra", &support::test_selector(test), "");
    let proposed = config_with(&[&narrowed, &second]);
    let unfetched = plan(&kubeconfig, &proposed, &instance, &["-o", "json"]).await;
    assert_eq!(unfetched.code, 1, "{}", unfetched.stderr);
    let unfetched = unfetched.json();
    let extra_entry = |r: &Value| {
        r["registries"]
            .as_array()
            .expect("registries")
            .iter()
            .find(|r| r["name"] == "extra")
            .cloned()
            .expect("extra registry")
    };
    assert_eq!(extra_entry(&unfetched)["credential"]["source"], "unknown");
    assert_eq!(
        extra_entry(&unfetched)["credential"]["sha256Prefix"],
        Value::Null
    );
    let calls = (main.calls(), extra.calls());
    let fetched = plan(
        &kubeconfig,
        &proposed,
        &instance,
        &["--fetch", "-o", "json"],
    )
    .await;
    assert_eq!(fetched.code, 1, "{}", fetched.stderr);
    assert_eq!(
        (main.calls(), extra.calls()),
        (calls.0 + 1, calls.1 + 1),
        "--fetch calls each provider once"
    );
    let report = fetched.json();
    assert_eq!(extra_entry(&report)["credential"]["source"], "fetched");
    assert_eq!(predicted(&report), predicted(&unfetched));
    for ns in [&stay1, &stay2, &leave] {
        let planned = namespace(&report, ns);
        assert_eq!(
            planned["secrets"],
            json!([{"name": "extra-pull", "registry": "extra", "action": "create", "reasons": []}])
        );
        assert_eq!(
            planned["serviceAccounts"],
            json!([{"name": "default", "add": ["extra-pull"], "remove": [], "recordsOwnership": true}])
        );
    }
    assert_eq!(report["summary"]["create"], 3);
    assert_eq!(report["summary"]["serviceAccounts"], 3);

    let before = writes(&d.metrics().await);
    let at = unix_now();
    deploy(&d, &[&narrowed, &second]).await;
    for ns in [&stay1, &stay2, &leave] {
        support::wait_password(&client, ns, "extra-pull", "registry.extra.test", "extra-pw").await;
    }
    for ns in [&stay1, &stay2] {
        support::wait_pull_secrets(&client, ns, "default", &["main-pull", "extra-pull"]).await;
    }
    support::wait_pull_secrets(&client, &leave, "default", &["extra-pull"]).await;
    wait_settled(&d, "extra", at).await;
    let metrics = d.metrics().await;
    assert_eq!(delta(&before, &writes(&metrics)), predicted(&report));
    assert_eq!(failed_writes(&metrics), 0.0);
    d.stop().await;
    namespaces.cleanup().await;
}

#[tokio::test]
async fn a_foreign_secret_is_reported_as_blocking_and_run_leaves_it_alone() {
    let test = "plan-foreign";
    let client = support::admin_client().await;
    let namespaces = support::TestNamespaces::new(client.clone(), test);
    let theirs = namespaces.create().await;
    let ours = namespaces.create().await;
    for ns in [&theirs, &ours] {
        support::wait_account(&client, ns, "default").await;
    }
    let foreign: Secret = serde_json::from_value(json!({
        "metadata": {"name": "fgn-pull"},
        "type": "Opaque",
        "stringData": {"note": "made by hand"}
    }))
    .expect("secret");
    let made = Api::<Secret>::namespaced(client.clone(), &theirs)
        .create(&PostParams::default(), &foreign)
        .await
        .expect("create the foreign secret");
    let endpoint = TokenEndpoint::start(token("fgn-pw")).await;
    let file = registry_file(&endpoint, "fgn", &support::test_selector(test), "");
    let proposed = config_with(&[&file]);
    let kubeconfig = daemon::pullkeeper_kubeconfig(&client).await;
    let instance = daemon::unique_instance();
    let d = idle_daemon(&kubeconfig, &instance).await;

    let planned = plan(&kubeconfig, &proposed, &instance, &["-o", "json"]).await;
    assert_eq!(planned.code, 1, "{}{}", planned.stdout, planned.stderr);
    let report = planned.json();
    assert_eq!(
        namespace(&report, &theirs),
        &json!({"name": theirs, "secrets": [], "serviceAccounts": [],
            "blocked": [{"secret": "fgn-pull", "registry": "fgn"}]}),
        "blocked, and no ServiceAccount is made to reference it"
    );
    assert_eq!(namespace(&report, &ours)["secrets"][0]["action"], "create");
    assert_eq!(report["summary"]["blocked"], 1);
    let text = plan(&kubeconfig, &proposed, &instance, &[]).await;
    assert!(
        text.stdout.contains(&format!(
            "namespace {theirs}\n  ! Secret fgn-pull (registry fgn): blocked: a Secret of that name exists and is not pullkeeper's"
        )),
        "{}",
        text.stdout
    );

    let before = writes(&d.metrics().await);
    let at = unix_now();
    deploy(&d, &[&file]).await;
    support::wait_password(&client, &ours, "fgn-pull", "registry.fgn.test", "fgn-pw").await;
    support::wait_pull_secrets(&client, &ours, "default", &["fgn-pull"]).await;
    wait_settled(&d, "fgn", at).await;
    assert_eq!(
        delta(&before, &writes(&d.metrics().await)),
        predicted(&report)
    );
    let after = support::get_secret(&client, &theirs, "fgn-pull")
        .await
        .expect("still there");
    assert_eq!(
        after.metadata.resource_version,
        made.metadata.resource_version
    );
    assert!(
        support::pull_secrets(&client, &theirs, "default")
            .await
            .is_empty()
    );

    // Nothing left to write; the block is still reported.
    let again = plan(&kubeconfig, &d.config_dir, &instance, &["-o", "json"]).await;
    assert_eq!(again.code, 0, "{}{}", again.stdout, again.stderr);
    let again = again.json();
    assert_eq!(again["summary"]["blocked"], 1);
    assert_eq!(again["summary"]["changes"], false);
    d.stop().await;
    namespaces.cleanup().await;
}

#[tokio::test]
async fn a_canary_credential_never_appears_in_plan_output_at_any_verbosity() {
    let test = "plan-canary";
    let client = support::admin_client().await;
    let namespaces = support::TestNamespaces::new(client.clone(), test);
    let ns = namespaces.create().await;
    let old = format!("pk-canary-old-{}", std::process::id());
    let new = format!("pk-canary-new-{}", std::process::id());
    let endpoint = TokenEndpoint::start(token(&old)).await;
    let file = registry_file(&endpoint, "canary", &support::test_selector(test), "");
    let dir = config_with(&[&file]);
    let kubeconfig = daemon::pullkeeper_kubeconfig(&client).await;
    let instance = daemon::unique_instance();
    let d = daemon::start_with(
        &kubeconfig,
        &dir,
        "info",
        &instance,
        &["--reload-interval", "1s"],
    )
    .await;
    support::wait_password(&client, &ns, "canary-pull", "registry.canary.test", &old).await;
    support::wait_pull_secrets(&client, &ns, "default", &["canary-pull"]).await;
    d.stop().await;
    // The provider now hands out another credential; only `plan --fetch` sees it.
    endpoint.set(token(&new));

    let b64 = base64::engine::general_purpose::STANDARD;
    let forms: Vec<String> = [&old, &new]
        .into_iter()
        .flat_map(|pw| {
            [
                pw.clone(),
                b64.encode(pw),
                b64.encode(format!("robot:{pw}")),
            ]
        })
        .collect();
    let secret = support::get_secret(&client, &ns, "canary-pull")
        .await
        .expect("secret");
    let stored = b64.encode(&secret.data.as_ref().expect("data")[".dockerconfigjson"].0);
    let mut runs = 0;
    for fetch in [true, false] {
        for output in ["text", "json"] {
            for log_format in ["text", "json"] {
                let mut args = vec![
                    "-o",
                    output,
                    "--log-format",
                    log_format,
                    "--log-filter",
                    "trace",
                ];
                if fetch {
                    args.push("--fetch");
                }
                let run = plan(&kubeconfig, &dir, &instance, &args).await;
                runs += 1;
                assert_eq!(
                    run.code,
                    i32::from(fetch),
                    "{args:?}: {}\n{}",
                    run.stdout,
                    run.stderr
                );
                assert!(
                    run.stderr.lines().count() > 20,
                    "trace logging produced output"
                );
                for form in forms.iter().chain([&stored]) {
                    assert!(
                        !run.stdout.contains(form.as_str()) && !run.stderr.contains(form.as_str()),
                        "credential form {form} printed by plan {args:?}"
                    );
                }
                if fetch && output == "text" {
                    assert!(
                        run.stdout.contains(
                            "~ Secret canary-pull (registry canary): update (credential content changes"
                        ),
                        "{}",
                        run.stdout
                    );
                }
                if fetch && output == "json" {
                    let report = run.json();
                    assert_eq!(
                        namespace(&report, &ns)["secrets"][0]["reasons"][0],
                        "content"
                    );
                }
            }
        }
    }
    assert_eq!(runs, 8);
    namespaces.cleanup().await;
}

#[tokio::test]
async fn plan_exits_2_on_an_invalid_config_an_unreachable_cluster_or_a_failed_fetch() {
    let test = "plan-errors";
    let client = support::admin_client().await;
    let namespaces = support::TestNamespaces::new(client.clone(), test);
    let _ns = namespaces.create().await;
    let kubeconfig = daemon::pullkeeper_kubeconfig(&client).await;
    let instance = daemon::unique_instance();

    let invalid = config_with(&[&(
        "broken.yaml".to_string(),
        "provider: {type: nope}\n".to_string(),
    )]);
    let run = plan(&kubeconfig, &invalid, &instance, &[]).await;
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("broken.yaml"), "{}", run.stderr);
    assert!(run.stdout.is_empty());

    let endpoint = TokenEndpoint::start(Answer::Status(500)).await;
    let file = registry_file(&endpoint, "down", &support::test_selector(test), "");
    let dir = config_with(&[&file]);
    let unfetched = plan(&kubeconfig, &dir, &instance, &[]).await;
    assert_eq!(
        unfetched.code, 1,
        "without --fetch the provider is not asked"
    );
    assert_eq!(endpoint.calls(), 0);
    let run = plan(&kubeconfig, &dir, &instance, &["--fetch"]).await;
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("registry down"), "{}", run.stderr);
    assert!(run.stdout.is_empty());
    assert_eq!(endpoint.calls(), 1);

    let unreachable = support::write_scratch_file(
        "kubeconfigs",
        ".yaml",
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: \"https://127.0.0.1:1\", insecure-skip-tls-verify: true}}]\n\
         users: [{name: u, user: {token: x}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\n",
    );
    let run = plan(&unreachable, &dir, &instance, &[]).await;
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("cannot list"), "{}", run.stderr);
    namespaces.cleanup().await;
}
