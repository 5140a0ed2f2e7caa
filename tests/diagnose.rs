//! `pullkeeper diagnose` on the real node: each cause is set up for real (a Pod that really
//! fails to pull, with the kubelet's own Events), and the command's text and JSON name it. A
//! canary password never appears in its output.

mod daemon;
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use daemon::{config_dir, write_config};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use support::{Registry, TestNamespaces};

const WAIT: Duration = Duration::from_secs(150);

/// A config directory with one registry file for the htpasswd registry, whose password is
/// `password` (a wrong one makes the registry refuse it), for the namespaces of `test`.
fn config(test: &str, password: &str, servers: &[&str]) -> PathBuf {
    config_with_password_file(test, password, servers).0
}

/// [`config`], also returning the password file (re-read at every refresh, every 1–2 s).
fn config_with_password_file(test: &str, password: &str, servers: &[&str]) -> (PathBuf, PathBuf) {
    let registry = Registry::htpasswd();
    let dir = config_dir();
    let file = support::write_scratch_file("password", "", password);
    let servers: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    write_config(
        &dir,
        "htpasswd.yaml",
        &format!(
            "provider:\n  type: static\n  username: {{value: \"{}\"}}\n  password: {{file: {}}}\n\
             servers: [{}]\nsecretName: htpasswd-pull\nnamespaces:\n  selector: \"{}\"\n\
             refresh:\n  minInterval: 1s\n  maxInterval: 2s\n",
            registry.username,
            file.display(),
            servers.join(", "),
            support::test_selector(test)
        ),
    );
    (dir, file)
}

fn htpasswd_config(test: &str) -> PathBuf {
    let r = Registry::htpasswd();
    config(test, &r.password, &[&r.host])
}

struct Output {
    code: i32,
    text: String,
    json: Value,
}

/// Runs `pullkeeper diagnose -n NS POD --instance INSTANCE` (text and JSON) with the admin
/// kubeconfig; `instance` is the daemon's whose Secrets count as pullkeeper's.
fn diagnose(dir: &Path, instance: &str, ns: &str, pod: &str) -> Output {
    let run = |format: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_pullkeeper"))
            .args(["diagnose", "--config"])
            .arg(dir)
            .args(["--instance", instance])
            .args(["-n", ns, pod, "-o", format, "--log-filter", "trace"])
            .output()
            .expect("run pullkeeper diagnose")
    };
    let text = run("text");
    let json = run("json");
    let out =
        String::from_utf8_lossy(&text.stdout).into_owned() + &String::from_utf8_lossy(&text.stderr);
    let all = out.clone()
        + &String::from_utf8_lossy(&json.stdout)
        + &String::from_utf8_lossy(&json.stderr);
    assert!(
        !all.contains(&Registry::htpasswd().password),
        "a credential in diagnose's output: {all}"
    );
    assert_eq!(text.status.code(), json.status.code());
    Output {
        code: text.status.code().unwrap_or(-1),
        text: out,
        json: serde_json::from_slice(&json.stdout)
            .unwrap_or_else(|e| panic!("diagnose -o json is not JSON ({e}): {all}")),
    }
}

/// The cause the JSON names for the Pod's only finding.
fn cause(out: &Output) -> String {
    out.json
        .pointer("/pods/0/images/0/cause")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no finding: {}", out.json))
        .to_string()
}

async fn stuck_pod(client: &Client, ns: &str, name: &str, image: &str) -> Pod {
    support::create_node_pod(client, ns, name, &[("app", image)], "Always").await;
    support::wait_container_waiting(client, ns, name, "ImagePullBackOff", WAIT).await
}

async fn wait_secret(client: &Client, ns: &str) {
    support::wait_for_named("pullkeeper's Secret", WAIT, || async {
        Api::<Secret>::namespaced(client.clone(), ns)
            .get_opt("htpasswd-pull")
            .await
            .ok()
            .flatten()
    })
    .await;
}

async fn wait_sa_lists_secret(client: &Client, ns: &str) {
    support::wait_for_named(
        "the default ServiceAccount listing the Secret",
        WAIT,
        || async {
            Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client.clone(), ns)
                .get_opt("default")
                .await
                .ok()
                .flatten()
                .and_then(|sa| sa.image_pull_secrets)
                .is_some_and(|l| l.iter().any(|r| r.name == "htpasswd-pull"))
        },
    )
    .await;
}

#[tokio::test]
async fn a_pod_created_before_its_service_account_listed_the_secret_is_told_to_be_recreated() {
    let test = "diagnose-too-early";
    let client = support::admin_client().await;
    let namespaces = TestNamespaces::new(client.clone(), test);
    let ns = namespaces.create().await;
    stuck_pod(
        &client,
        &ns,
        "early",
        &Registry::htpasswd().test_image_ref(),
    )
    .await;
    let dir = htpasswd_config(test);
    let d = daemon::start(&client, &dir, "info").await;
    wait_secret(&client, &ns).await;
    wait_sa_lists_secret(&client, &ns).await;
    let out = diagnose(&dir, &d.instance, &ns, "early");
    assert_eq!(out.code, 1, "{}", out.text);
    assert_eq!(cause(&out), "created-before-service-account");
    assert!(out.text.contains("delete the Pod"), "{}", out.text);
    assert!(out.text.contains("--pod-recovery on"), "{}", out.text);
    d.stop().await;
    namespaces.cleanup().await;
}

#[tokio::test]
async fn a_missing_secret_a_foreign_one_and_a_namespace_out_of_scope_are_told_apart() {
    let test = "diagnose-missing";
    let client = support::admin_client().await;
    let namespaces = TestNamespaces::new(client.clone(), test);
    let image = Registry::htpasswd().test_image_ref();
    // In scope, but pullkeeper has not written anything (it does not run).
    let missing = namespaces.create().await;
    stuck_pod(&client, &missing, "app", &image).await;
    // A Secret of that name that is someone else's.
    let foreign = namespaces.create().await;
    let theirs: Secret = serde_json::from_value(json!({
        "metadata": {"name": "htpasswd-pull"},
        "type": "Opaque",
        "stringData": {"note": "someone else's"},
    }))
    .expect("secret");
    Api::<Secret>::namespaced(client.clone(), &foreign)
        .create(&PostParams::default(), &theirs)
        .await
        .expect("create the foreign Secret");
    stuck_pod(&client, &foreign, "app", &image).await;
    // Another test's label: the selector leaves it out.
    let other = TestNamespaces::new(client.clone(), "diagnose-elsewhere");
    let out_of_scope = other.create().await;
    stuck_pod(&client, &out_of_scope, "app", &image).await;

    let dir = htpasswd_config(test);
    let out = diagnose(&dir, "pullkeeper", &missing, "app");
    assert_eq!(
        (out.code, cause(&out).as_str()),
        (1, "secret-missing"),
        "{}",
        out.text
    );
    assert!(out.text.contains("has not written it"), "{}", out.text);
    let out = diagnose(&dir, "pullkeeper", &foreign, "app");
    assert_eq!(cause(&out), "foreign-secret", "{}", out.text);
    assert!(out.text.contains("not pullkeeper's"), "{}", out.text);
    let out = diagnose(&dir, "pullkeeper", &out_of_scope, "app");
    assert_eq!(cause(&out), "namespace-out-of-scope", "{}", out.text);
    assert!(out.text.contains("namespaces.selector"), "{}", out.text);
    namespaces.cleanup().await;
    other.cleanup().await;
}

#[tokio::test]
async fn a_refused_credential_a_missing_image_and_an_unmanaged_registry_are_named() {
    let test = "diagnose-refused";
    let client = support::admin_client().await;
    let namespaces = TestNamespaces::new(client.clone(), test);
    let ns = namespaces.create().await;
    let registry = Registry::htpasswd();
    // pullkeeper writes a credential the registry refuses.
    let (dir, password_file) =
        config_with_password_file(test, "not-the-password", &[&registry.host]);
    let d = daemon::start(&client, &dir, "info").await;
    wait_secret(&client, &ns).await;
    wait_sa_lists_secret(&client, &ns).await;
    stuck_pod(&client, &ns, "refused", &registry.test_image_ref()).await;
    let out = diagnose(&dir, &d.instance, &ns, "refused");
    assert_eq!(cause(&out), "credential-refused", "{}", out.text);
    let kubelet = out
        .json
        .pointer("/pods/0/images/0/kubelet")
        .and_then(Value::as_str)
        .unwrap_or_default();
    assert!(
        kubelet.contains("401") || kubelet.to_ascii_lowercase().contains("unauthorized"),
        "{kubelet}"
    );

    // With the right credential, an image that does not exist is not a credential problem.
    std::fs::write(&password_file, &registry.password).expect("fix the password");
    let right = dir;
    support::wait_for_named("the right password in the Secret", WAIT, || async {
        let s = Api::<Secret>::namespaced(client.clone(), &ns)
            .get_opt("htpasswd-pull")
            .await
            .ok()
            .flatten()?;
        let doc: Value = serde_json::from_slice(&s.data?.get(".dockerconfigjson")?.0).ok()?;
        (doc.pointer(&format!("/auths/{}/password", registry.host))?
            .as_str()?
            == registry.password)
            .then_some(())
    })
    .await;
    let missing_image = format!("{}/pullkeeper/no-such-image:v404", registry.host);
    stuck_pod(&client, &ns, "no-image", &missing_image).await;
    let out = diagnose(&right, &d.instance, &ns, "no-image");
    assert_eq!(cause(&out), "image-not-found", "{}", out.text);
    assert!(
        out.text.contains("not a credential problem"),
        "{}",
        out.text
    );

    // An image on a registry no file serves (a loopback port where nothing listens).
    stuck_pod(&client, &ns, "elsewhere", "127.0.0.1:1/none/app:v1").await;
    let out = diagnose(&right, &d.instance, &ns, "elsewhere");
    assert_eq!(cause(&out), "unmanaged-registry", "{}", out.text);
    assert!(
        out.text.contains(&registry.host),
        "names the hosts it does serve: {}",
        out.text
    );

    // And a Pod that runs has nothing wrong: exit 0.
    support::create_node_pod(
        &client,
        &ns,
        "fine",
        &[("app", &registry.test_image_ref())],
        "Always",
    )
    .await;
    support::wait_pod_running(&client, &ns, "fine", WAIT).await;
    let out = diagnose(&right, &d.instance, &ns, "fine");
    assert_eq!(out.code, 0, "{}", out.text);
    assert!(
        out.text.contains("nothing keeps it from pulling"),
        "{}",
        out.text
    );
    d.stop().await;
    namespaces.cleanup().await;
}

#[tokio::test]
async fn a_secret_without_the_images_host_lists_the_hosts_it_has() {
    let test = "diagnose-hosts";
    let client = support::admin_client().await;
    let namespaces = TestNamespaces::new(client.clone(), test);
    let ns = namespaces.create().await;
    let registry = Registry::htpasswd();
    // pullkeeper wrote the Secret for another host; the registry file now also lists the
    // image's host, but no daemon has applied that yet.
    let before = config(test, &registry.password, &["registry.before.test"]);
    let d = daemon::start(&client, &before, "info").await;
    wait_secret(&client, &ns).await;
    wait_sa_lists_secret(&client, &ns).await;
    let instance = d.instance.clone();
    d.stop().await;
    support::create_node_pod(
        &client,
        &ns,
        "app",
        &[("app", &registry.test_image_ref())],
        "Always",
    )
    .await;
    support::wait_container_waiting(&client, &ns, "app", "ImagePullBackOff", WAIT).await;
    let after = config(
        test,
        &registry.password,
        &["registry.before.test", &registry.host],
    );
    let out = diagnose(&after, &instance, &ns, "app");
    assert_eq!(cause(&out), "no-auths-entry", "{}", out.text);
    assert!(
        out.text.contains("registry.before.test"),
        "lists the hosts it has: {}",
        out.text
    );
    namespaces.cleanup().await;
}

#[tokio::test]
async fn a_missing_secret_of_a_failing_registry_says_since_when_and_why() {
    let test = "diagnose-failing";
    let client = support::admin_client().await;
    let namespaces = TestNamespaces::new(client.clone(), test);
    let ns = namespaces.create().await;
    let registry = Registry::htpasswd();
    // The registry's provider is an HTTP endpoint where nothing listens: every refresh fails.
    let dir = config_dir();
    write_config(
        &dir,
        "failing-diagnose.yaml",
        &format!(
            "provider:\n  type: http\n  url: http://127.0.0.1:1/token\n  timeout: 2s\n  response:\n    username: /u\n    password: /p\n\
             servers: [\"{}\"]\nsecretName: failing-pull\nnamespaces:\n  selector: \"{}\"\n\
             refresh:\n  backoffInitial: 1s\n  backoffMax: 2s\n",
            registry.host,
            support::test_selector(test)
        ),
    );
    let d = daemon::start(&client, &dir, "info").await;
    support::wait_for_named("pullkeeper's RotationFailed Event", WAIT, || async {
        Api::<k8s_openapi::api::core::v1::Event>::all(client.clone())
            .list(&kube::api::ListParams::default().fields("reason=RotationFailed"))
            .await
            .ok()?
            .items
            .into_iter()
            .find(|e| {
                e.message
                    .as_deref()
                    .is_some_and(|m| m.starts_with("registry failing-diagnose: "))
            })
    })
    .await;
    stuck_pod(&client, &ns, "app", &registry.test_image_ref()).await;
    let out = diagnose(&dir, &d.instance, &ns, "app");
    assert_eq!(cause(&out), "secret-missing", "{}", out.text);
    assert!(
        out.text
            .contains("registry failing-diagnose has been failing since"),
        "{}",
        out.text
    );
    assert!(
        out.text.contains("127.0.0.1:1"),
        "names the failing request: {}",
        out.text
    );
    d.stop().await;
    namespaces.cleanup().await;
}

/// A Pod held back from scheduling (no node involved): diagnose, named, explains every
/// container that does not run.
async fn gated_pod(client: &Client, ns: &str, name: &str, image: &str) {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "schedulingGates": [{"name": "pullkeeper.dev/diagnose-only"}],
            "containers": [{"name": "app", "image": image}],
        },
    }))
    .expect("pod");
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await
        .expect("create pod");
}

/// Issue 16 item 2: two registry files serve one host for different namespaces (`check`
/// accepts it); a Pod in each namespace is diagnosed against the file that targets it.
#[tokio::test]
async fn two_files_for_one_host_each_diagnose_the_namespace_they_target() {
    let test = "diagnose-one-host";
    let client = support::admin_client().await;
    let namespaces = TestNamespaces::new(client.clone(), test);
    let first = namespaces.create().await;
    let second = namespaces.create().await;
    let registry = Registry::htpasswd();
    let dir = config_dir();
    let password = support::write_scratch_file("password", "", "unused");
    for (file, ns) in [("aa-team1", &first), ("bb-team2", &second)] {
        write_config(
            &dir,
            &format!("{file}.yaml"),
            &format!(
                "provider:\n  type: static\n  username: {{value: u}}\n  password: {{file: {}}}\n\
                 servers: [\"{}\"]\nsecretName: {file}-pull\nnamespaces:\n  include: [\"{ns}\"]\n",
                password.display(),
                registry.host
            ),
        );
    }
    let image = registry.test_image_ref();
    gated_pod(&client, &first, "app", &image).await;
    gated_pod(&client, &second, "app", &image).await;
    // No daemon ran: in each namespace the Secret of the file that targets it is missing.
    for (ns, file) in [(&first, "aa-team1"), (&second, "bb-team2")] {
        let out = diagnose(&dir, "none", ns, "app");
        assert_eq!(cause(&out), "secret-missing", "{}", out.text);
        assert_eq!(
            out.json
                .pointer("/pods/0/images/0/registry")
                .and_then(Value::as_str),
            Some(file),
            "{}",
            out.text
        );
    }
    namespaces.cleanup().await;
}

/// Issue 16 item 5: a Pod that does not exist is one line of pullkeeper's own, exit 2.
#[tokio::test]
async fn a_pod_that_does_not_exist_is_one_line() {
    let test = "diagnose-no-pod";
    let client = support::admin_client().await;
    let namespaces = TestNamespaces::new(client.clone(), test);
    let ns = namespaces.create().await;
    let dir = htpasswd_config(test);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pullkeeper"))
        .args(["diagnose", "--config"])
        .arg(&dir)
        .args(["-n", &ns, "no-such-pod"])
        .output()
        .expect("run pullkeeper diagnose");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        format!("pullkeeper diagnose: pod {ns}/no-such-pod not found")
    );
    assert!(out.stdout.is_empty());
    namespaces.cleanup().await;
}

/// pullkeeper's `RotationFailed` Events about `registry`, as (nanoseconds last seen, error).
async fn rotation_failures(client: &Client, registry: &str) -> Vec<(i128, String)> {
    let prefix = format!("registry {registry}: ");
    let mut found: Vec<(i128, String)> = Api::<k8s_openapi::api::core::v1::Event>::namespaced(
        client.clone(),
        support::PULLKEEPER_NAMESPACE,
    )
    .list(&kube::api::ListParams::default().fields("reason=RotationFailed"))
    .await
    .expect("list events")
    .items
    .into_iter()
    .filter_map(|e| {
        let note = e.message.clone()?;
        let last = e
            .series
            .as_ref()
            .and_then(|s| s.last_observed_time.as_ref())
            .map(|t| t.0)
            .or(e.event_time.as_ref().map(|t| t.0))?;
        note.starts_with(&prefix)
            .then(|| (last.as_nanosecond(), note[prefix.len()..].to_string()))
    })
    .collect();
    found.sort();
    found
}

/// Issue 16 item 1: two registries failing at different times each get their own Event (the
/// second was folded into the first one's series), and diagnose names each one's newest error
/// (it named the first error for as long as failures kept coming).
#[tokio::test]
async fn two_registries_failing_at_different_times_each_have_their_own_event_and_newest_error() {
    use daemon::{Answer, FAST, TokenEndpoint};
    let test = "diagnose-two-failing";
    let client = support::admin_client().await;
    let namespaces = TestNamespaces::new(client.clone(), test);
    let ns = namespaces.create().await;
    let selector = support::test_selector(test);
    // Names of this run only: the API server keeps earlier runs' Events for an hour.
    let run = support::random_string(5);
    let (name_a, name_b) = (format!("twofail-a-{run}"), format!("twofail-b-{run}"));
    let a = TokenEndpoint::start(Answer::Status(503)).await;
    let b = TokenEndpoint::start(Answer::Status(500)).await;
    let dir = config_dir();
    write_config(
        &dir,
        &format!("{name_a}.yaml"),
        &a.registry_file(
            "registry.twofail-a.test",
            &format!("{name_a}-pull"),
            &selector,
            FAST,
        ),
    );
    let d = daemon::start(&client, &dir, "info").await;
    support::wait_for_named("twofail-a's RotationFailed Event", WAIT, || async {
        !rotation_failures(&client, &name_a).await.is_empty()
    })
    .await;
    // The second registry starts failing later (added by a reload).
    write_config(
        &dir,
        &format!("{name_b}.yaml"),
        &b.registry_file(
            "registry.twofail-b.test",
            &format!("{name_b}-pull"),
            &selector,
            FAST,
        ),
    );
    support::grant_secret_names(&client, &[format!("{name_b}-pull")]).await;
    support::wait_for_named("twofail-b's own RotationFailed Event", WAIT, || async {
        !rotation_failures(&client, &name_b).await.is_empty()
    })
    .await;
    // The first registry's error changes: a new Event, and it is the newest.
    a.set(Answer::Malformed);
    let failures = support::wait_for_named("twofail-a's second error", WAIT, || async {
        let f = rotation_failures(&client, &name_a).await;
        let distinct: std::collections::BTreeSet<&String> = f.iter().map(|(_, n)| n).collect();
        (distinct.len() >= 2).then_some(f)
    })
    .await;
    let (_, newest_a) = failures.last().expect("an event").clone();
    let (_, first_a) = failures.first().expect("an event").clone();
    assert_ne!(newest_a, first_a);
    let (_, newest_b) = rotation_failures(&client, &name_b)
        .await
        .last()
        .expect("an event")
        .clone();

    gated_pod(&client, &ns, "app-a", "registry.twofail-a.test/team/app:1").await;
    gated_pod(&client, &ns, "app-b", "registry.twofail-b.test/team/app:1").await;
    let out = diagnose(&dir, &d.instance, &ns, "app-a");
    assert_eq!(cause(&out), "secret-missing", "{}", out.text);
    assert!(
        out.text
            .contains(&format!("registry {name_a} has been failing since"))
            && out.text.contains(&newest_a),
        "names twofail-a's newest error ({newest_a}): {}",
        out.text
    );
    let out = diagnose(&dir, &d.instance, &ns, "app-b");
    assert_eq!(cause(&out), "secret-missing", "{}", out.text);
    assert!(
        out.text
            .contains(&format!("registry {name_b} has been failing since"))
            && out.text.contains(&newest_b),
        "names twofail-b's own error ({newest_b}): {}",
        out.text
    );
    d.stop().await;
    namespaces.cleanup().await;
}
