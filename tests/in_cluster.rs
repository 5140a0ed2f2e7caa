//! pullkeeper as users run it: its image (built by `tests/checks/static-build.sh` without a
//! container engine and pushed to the test registry) installed onto the real node by the shipped
//! kustomize base and Helm chart, two replicas behind a Lease, with the Pods' own ServiceAccount
//! token and the kubelet's ConfigMap volume.
//!
//! What a test install changes, and why only this platform needs it:
//! - the image reference: there is no public registry here, the image is in the local one;
//! - `imagePullSecrets` for pullkeeper's own image: the local registry requires a login;
//! - the registry file (static provider, password from a Secret through an env var): the one
//!   credential source a Pod can use here — the Pod network reaches the API server and nothing
//!   else (tests/cluster/README.md, "The node").
//!
//! Nothing else: no API server address (the `kubernetes` Service address 10.0.0.1 is made local
//! by the platform, so the in-cluster config works unmodified), no host networking (the Pods run
//! on the node's local-only Pod network, each with its own address, so two replicas and their
//! probes on one node do not collide), probes, security context and RBAC as shipped.
//!
//! Who wrote what is read from the API server's audit log (`PK_AUDIT_LOG`): each write carries
//! the bound token's Pod name and the writing process's User-Agent (`pullkeeper/VERSION
//! (LEASE-IDENTITY)`). The figures (time to Ready, hand-over after a graceful delete and after a
//! hard kill) are printed, never asserted against a time.
//!
//! The two installs run one after the other (one lock): both are the default instance
//! `pullkeeper`, as a user installs it.
// A scenario test reads top to bottom as the story it checks; splitting it hides the order.
#![allow(clippy::too_many_lines)]

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, ServiceAccount};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::{Registry, TestNamespaces};

const WAIT: Duration = Duration::from_mins(3);
const SECRET: &str = "incluster-pull";
const USER_SECRET: &str = "team-pull";
const PASSWORD_ENV: &str = "PK_REGISTRY_PASSWORD";
const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/helm/pullkeeper");
const BASE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/kustomize/base");
const PULLKEEPER: &str = env!("CARGO_BIN_EXE_pullkeeper");

/// The Helm release: not named `pullkeeper`, as a user may name it, so its cluster-wide objects
/// (`pk-pullkeeper`) are the release's own, apart from the kustomize base's (and the other tests').
const RELEASE: &str = "pk";
const HELM_ACCOUNT: &str = "pk-pullkeeper";
const HELM_CONFIGMAP: &str = "pk-pullkeeper-config";

/// Prints a measured figure and appends it to `PK_TEST_DIR/logs/figures.txt`, which
/// tests/run-all.sh shows in its summary (a passing test's output is otherwise captured).
macro_rules! figure {
    ($($arg:tt)*) => {{
        let line = format!($($arg)*);
        println!("{line}");
        let path = support::test_dir().join("logs").join("figures.txt");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
        std::io::Write::write_all(&mut file, format!("{line}\n").as_bytes())
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }};
}

static ONE_INSTALL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------------------------
// The image, the tools, the registry file
// ---------------------------------------------------------------------------------------------

/// The images `tests/checks/static-build.sh` pushed (`PK_IMAGE_ENV`, sourced by run-all.sh).
struct Image {
    repository: String,
    digest: String,
    next_digest: String,
    bytes: String,
    pull_bytes: String,
}

fn image() -> Image {
    let reference = support::env("PK_IMAGE");
    let Some((repository, _tag)) = reference.rsplit_once(':') else {
        panic!("PK_IMAGE {reference} has no tag")
    };
    let repository = repository.to_string();
    Image {
        repository,
        digest: support::env("PK_IMAGE_DIGEST"),
        next_digest: support::env("PK_IMAGE_NEXT_DIGEST"),
        bytes: support::env("PK_IMAGE_BYTES"),
        pull_bytes: support::env("PK_IMAGE_PULL_BYTES"),
    }
}

/// Runs a command to completion; panics with its output when it fails. Returns stdout.
async fn run(program: &str, args: &[&str]) -> String {
    let out = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{program} {} failed ({}):\n{stdout}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn helm() -> String {
    support::env("PK_HELM")
}

/// The registry file of these tests: the htpasswd registry's static login, the password from
/// the environment (a Secret's key, as a user with a static login sets it up), into exactly
/// `namespaces`.
fn registry_file(namespaces: &[String]) -> serde_json::Value {
    let registry = Registry::htpasswd();
    json!({
        "provider": {
            "type": "static",
            "username": {"value": registry.username},
            "password": {"env": PASSWORD_ENV},
        },
        "servers": [registry.host],
        "secretName": SECRET,
        "namespaces": {"include": namespaces},
        "serviceAccounts": ["default"],
    })
}

fn yaml(value: &serde_json::Value) -> String {
    serde_yaml_ng::to_string(value).expect("YAML")
}

/// The two Secrets a user creates in pullkeeper's namespace for this setup: the pull Secret for
/// pullkeeper's own image and the static login's password.
fn install_secrets(ns: &str) -> [serde_json::Value; 2] {
    let registry = Registry::htpasswd();
    [
        json!({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
            "metadata": {"name": "pullkeeper-image", "namespace": ns},
            "stringData": {".dockerconfigjson": registry.dockerconfigjson()},
        }),
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "registry-login", "namespace": ns},
            "stringData": {"password": registry.password},
        }),
    ]
}

fn password_env() -> serde_json::Value {
    json!({"name": PASSWORD_ENV, "valueFrom": {"secretKeyRef": {"name": "registry-login", "key": "password"}}})
}

/// `to` relative to the directory `from` (both absolute), as kustomize wants its resources.
fn relative(to: &Path, from: &Path) -> PathBuf {
    let to: Vec<_> = to.components().collect();
    let from: Vec<_> = from.components().collect();
    let common = to.iter().zip(&from).take_while(|(a, b)| a == b).count();
    let mut path = PathBuf::new();
    for _ in common..from.len() {
        path.push("..");
    }
    for c in &to[common..] {
        path.push(c);
    }
    path
}

// ---------------------------------------------------------------------------------------------
// The user's namespaces: a ServiceAccount that already names a pull Secret of the team's own
// ---------------------------------------------------------------------------------------------

async fn user_namespace(client: &Client, namespaces: &TestNamespaces) -> String {
    let ns = namespaces.create().await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": USER_SECRET},
        "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": support::dockerconfigjson("registry.team.test", "team", "team-pw")},
    }))
    .expect("secret");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("create the team's Secret");
    support::wait_account(client, &ns, "default").await;
    Api::<ServiceAccount>::namespaced(client.clone(), &ns)
        .patch(
            "default",
            &PatchParams::default(),
            &Patch::Merge(json!({"imagePullSecrets": [{"name": USER_SECRET}]})),
        )
        .await
        .expect("patch the team's entry");
    ns
}

/// Waits until `ns` holds pullkeeper's Secret with the registry's login and `default` lists it
/// after the team's entry.
async fn wait_served(client: &Client, ns: &str) {
    let registry = Registry::htpasswd();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    support::wait_for_named(&format!("{ns}/{SECRET} written"), WAIT, || async {
        let secret = secrets
            .get_opt(SECRET)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no Secret yet")?;
        let bytes = secret
            .data
            .and_then(|d| d.get(".dockerconfigjson").cloned())
            .ok_or("no .dockerconfigjson")?;
        let config: serde_json::Value =
            serde_json::from_slice(&bytes.0).map_err(|e| e.to_string())?;
        let auth = &config["auths"][&registry.host];
        if auth["username"] == registry.username.as_str()
            && auth["password"] == registry.password.as_str()
        {
            Ok(())
        } else {
            Err("another login".to_string())
        }
    })
    .await;
    support::wait_pull_secrets(client, ns, "default", &[USER_SECRET, SECRET]).await;
}

/// A Pod of the team's own, created after pullkeeper served `ns`, pulls the private test image
/// on the node with what admission copied from `default`.
async fn a_pod_pulls(client: &Client, ns: &str) {
    let image = Registry::htpasswd().test_image_ref();
    let pod =
        support::create_node_pod(client, ns, "app", &[("app", image.as_str())], "Always").await;
    assert_eq!(
        support::pod_pull_secrets(&pod),
        [USER_SECRET, SECRET],
        "admission copied the ServiceAccount's entries"
    );
    support::wait_pod_running(client, ns, "app", WAIT).await;
}

// ---------------------------------------------------------------------------------------------
// pullkeeper's Pods: readiness, metrics, the Lease
// ---------------------------------------------------------------------------------------------

const POD_SELECTOR: &str =
    "app.kubernetes.io/name=pullkeeper,app.kubernetes.io/component=controller";

fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_name(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

fn pod_ip(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_else(|| panic!("Pod {} has no address", pod_name(pod)))
}

/// Waits until exactly `count` pullkeeper Pods of `ns` are Ready (their real probes passed) and
/// none is terminating; `digest` (when given) must be the image they run.
async fn wait_ready(client: &Client, ns: &str, count: usize, digest: Option<&str>) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    support::wait_for_named(
        &format!("{count} pullkeeper Pods Ready in {ns}"),
        WAIT,
        || async {
            let list = pods
                .list(&ListParams::default().labels(POD_SELECTOR))
                .await
                .map_err(|e| e.to_string())?;
            let on_image = |p: &Pod| {
                digest.is_none_or(|d| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.container_statuses.as_ref())
                        .is_some_and(|cs| cs.iter().all(|c| c.image_id.ends_with(d)))
                })
            };
            let ready: Vec<Pod> = list
                .items
                .iter()
                .filter(|p| is_ready(p) && on_image(p))
                .cloned()
                .collect();
            if ready.len() == count && list.items.len() == count {
                Ok(ready)
            } else {
                Err(list
                    .items
                    .iter()
                    .map(|p| format!("{}: {}", pod_name(p), support::pod_summary(p)))
                    .collect::<Vec<_>>()
                    .join("; "))
            }
        },
    )
    .await
}

async fn scrape(pod: &Pod) -> Result<String, String> {
    let url = format!("http://{}:9090/metrics", pod_ip(pod));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())?;
    let response = client
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    response.text().await.map_err(|e| e.to_string())
}

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The Lease holder's identity (`POD-NAME_SUFFIX`) in `ns`.
async fn lease_holder(client: &Client, ns: &str) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), ns)
        .get_opt("pullkeeper-leader")
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec?.holder_identity)
        .filter(|h| !h.is_empty())
}

/// The leader Pod among `pods`: the Lease names it and it says so on /metrics.
async fn leader_of(client: &Client, ns: &str, pods: &[Pod]) -> (Pod, String) {
    support::wait_for_named(
        &format!("a leader among the Pods of {ns}"),
        WAIT,
        || async {
            let holder = lease_holder(client, ns).await.ok_or("no holder")?;
            let pod = pods
                .iter()
                .find(|p| holder.starts_with(&format!("{}_", pod_name(p))))
                .ok_or(format!("holder {holder} is none of the Ready Pods"))?;
            let text = scrape(pod).await?;
            if sample(&text, "pullkeeper_leader") == Some(1.0) {
                Ok((pod.clone(), holder))
            } else {
                Err(format!("{} does not say it leads", pod_name(pod)))
            }
        },
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// The audit log: every write by pullkeeper's ServiceAccount, from the API server's side
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Write {
    received: DateTime<Utc>,
    completed: DateTime<Utc>,
    pod: String,
    agent: String,
    what: String,
}

/// The writes to Secrets and ServiceAccounts made by `system:serviceaccount:NS:SA` with a
/// Pod-bound token, received at or after `since`.
fn writes(ns: &str, sa: &str, since: DateTime<Utc>) -> Vec<Write> {
    let path = support::env("PK_AUDIT_LOG");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    let user = format!("system:serviceaccount:{ns}:{sa}");
    let time = |v: &serde_json::Value| {
        v.as_str()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.with_timezone(&Utc))
    };
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|e| e["stage"] == "ResponseComplete" && e["user"]["username"] == user.as_str())
        .filter(|e| {
            matches!(
                e["objectRef"]["resource"].as_str(),
                Some("secrets" | "serviceaccounts")
            ) && matches!(
                e["verb"].as_str(),
                Some("create" | "update" | "patch" | "delete")
            )
        })
        .filter_map(|e| {
            let pod = e["user"]["extra"]["authentication.kubernetes.io/pod-name"][0]
                .as_str()?
                .to_string();
            Some(Write {
                received: time(&e["requestReceivedTimestamp"])?,
                completed: time(&e["stageTimestamp"])?,
                pod,
                agent: e["userAgent"].as_str().unwrap_or_default().to_string(),
                what: format!(
                    "{} {} {}/{} -> {}",
                    e["verb"].as_str().unwrap_or_default(),
                    e["objectRef"]["resource"].as_str().unwrap_or_default(),
                    e["objectRef"]["namespace"].as_str().unwrap_or_default(),
                    e["objectRef"]["name"].as_str().unwrap_or_default(),
                    e["responseStatus"]["code"]
                ),
            })
        })
        .filter(|w| w.received >= since)
        .collect()
}

/// Every write came from one process at a time: grouped by User-Agent (one per process, as the
/// Lease identity is), no two processes' spans of writes overlap. Returns the writers in order.
fn assert_one_writer_at_a_time(writes: &[Write]) -> Vec<(String, DateTime<Utc>, DateTime<Utc>)> {
    let mut spans: BTreeMap<String, (DateTime<Utc>, DateTime<Utc>)> = BTreeMap::new();
    for w in writes {
        assert!(
            w.agent.starts_with("pullkeeper/") && w.agent.contains(&format!("({}_", w.pod)),
            "a write whose User-Agent does not name its Pod's process: {w:?}"
        );
        let span = spans
            .entry(w.agent.clone())
            .or_insert((w.received, w.completed));
        span.0 = span.0.min(w.received);
        span.1 = span.1.max(w.completed);
    }
    let mut ordered: Vec<_> = spans.into_iter().map(|(a, (f, l))| (a, f, l)).collect();
    ordered.sort_by_key(|(_, first, _)| *first);
    for pair in ordered.windows(2) {
        assert!(
            pair[1].1 > pair[0].2,
            "two writers at once: {} wrote until {}, {} from {}",
            pair[0].0,
            pair[0].2,
            pair[1].0,
            pair[1].1
        );
    }
    ordered
}

// ---------------------------------------------------------------------------------------------
// Shared checks of both renderings
// ---------------------------------------------------------------------------------------------

/// The restricted Pod Security level is enforced in pullkeeper's namespace (a Pod below it is
/// refused there), so pullkeeper's own Pods there met it.
async fn restricted_level_holds(client: &Client, ns: &str) {
    let namespace = Api::<Namespace>::all(client.clone())
        .get(ns)
        .await
        .expect("namespace");
    assert_eq!(
        namespace
            .metadata
            .labels
            .unwrap_or_default()
            .get("pod-security.kubernetes.io/enforce")
            .map(String::as_str),
        Some("restricted"),
        "{ns} enforces the restricted level"
    );
    // A Pod without the restricted level's settings (non-root, no privilege escalation, no
    // capabilities, a seccomp profile): what the baseline level allows, restricted refuses.
    let unrestricted: Pod = serde_json::from_value(json!({
        "metadata": {"name": "unrestricted-probe"},
        "spec": {"containers": [{"name": "c", "image": "x"}]},
    }))
    .expect("pod");
    let refused = Api::<Pod>::namespaced(client.clone(), ns)
        .create(
            &PostParams {
                dry_run: true,
                ..PostParams::default()
            },
            &unrestricted,
        )
        .await
        .expect_err("a Pod below the restricted level must be refused where pullkeeper runs");
    assert!(
        refused.to_string().contains("PodSecurity"),
        "refused by Pod Security admission: {refused}"
    );
}

/// pullkeeper's Pods talk to the API server as their ServiceAccount, with the mounted token:
/// no kubeconfig in the Pod spec, and the writes so far came from the leader's Pod-bound token.
fn uses_the_mounted_token(pods: &[Pod], writes: &[Write], leader: &Pod) {
    for pod in pods {
        let spec = pod.spec.as_ref().expect("spec");
        let container = &spec.containers[0];
        let args = container.args.clone().unwrap_or_default();
        assert!(
            !args.iter().any(|a| a.contains("kubeconfig")),
            "no --kubeconfig: {args:?}"
        );
        assert!(
            !container
                .env
                .clone()
                .unwrap_or_default()
                .iter()
                .any(|e| e.name == "KUBECONFIG"),
            "no KUBECONFIG"
        );
        assert_ne!(spec.automount_service_account_token, Some(false));
    }
    assert!(
        !writes.is_empty(),
        "the install wrote nothing the audit log saw"
    );
    assert!(
        writes.iter().all(|w| w.pod == pod_name(leader)),
        "only the leader {} wrote: {writes:#?}",
        pod_name(leader)
    );
}

/// The kubelet's target of `..data` in the config volume of `pod` (its atomic-writer swap).
fn config_volume_target(pod: &Pod) -> PathBuf {
    let uid = pod.metadata.uid.as_deref().expect("uid");
    let link = PathBuf::from(support::env("PK_NODE_KUBELET_ROOT"))
        .join("pods")
        .join(uid)
        .join("volumes/kubernetes.io~configmap/config/..data");
    std::fs::read_link(&link).unwrap_or_else(|e| panic!("cannot read {}: {e}", link.display()))
}

/// Waits until `series` on every Pod's /metrics satisfies `ok`.
async fn wait_sample(pods: &[Pod], what: &str, series: &str, ok: impl Fn(Option<f64>) -> bool) {
    for pod in pods {
        support::wait_for_named(&format!("{} {what}", pod_name(pod)), WAIT, || async {
            let value = sample(&scrape(pod).await?, series);
            if ok(value) {
                Ok(())
            } else {
                Err(format!("{series} = {value:?}"))
            }
        })
        .await;
    }
}

/// Edits the registry file in the live ConfigMap, as `kubectl edit` does.
async fn edit_config(client: &Client, ns: &str, configmap: &str, key: &str, file: &str) {
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .patch(
            configmap,
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {key: file}})),
        )
        .await
        .expect("edit the ConfigMap");
}

/// A ConfigMap edit reaches both replicas through the kubelet's symlink swap and is applied; an
/// invalid one is rejected by both while the old config keeps working; the valid file back clears
/// the rejection. Leaves the config serving `namespaces`.
async fn config_edits(
    client: &Client,
    ns: &str,
    configmap: &str,
    key: &str,
    pods: &[Pod],
    namespaces: &[String],
) {
    let before: Vec<PathBuf> = pods.iter().map(config_volume_target).collect();
    let edited = Instant::now();
    edit_config(
        client,
        ns,
        configmap,
        key,
        &yaml(&registry_file(namespaces)),
    )
    .await;
    for n in namespaces {
        wait_served(client, n).await;
    }
    let took = edited.elapsed();
    // The follower's volume may be swapped a sync period later than the leader's.
    for (pod, old) in pods.iter().zip(&before) {
        support::wait_for_named(
            &format!("the kubelet swapping {}'s config volume", pod_name(pod)),
            WAIT,
            || async { config_volume_target(pod) != *old },
        )
        .await;
    }
    wait_sample(
        pods,
        "reloaded",
        "pullkeeper_config_reloads_total{result=\"success\"}",
        |v| v.is_some_and(|n| n >= 1.0),
    )
    .await;
    figure!("in-cluster: a ConfigMap edit served a new namespace {took:.1?} after the edit");

    // An invalid edit: rejected by both replicas, the old config keeps working.
    let mut invalid = registry_file(namespaces);
    invalid["secretNmae"] = json!("typo");
    edit_config(client, ns, configmap, key, &yaml(&invalid)).await;
    wait_sample(
        pods,
        "rejects the edit",
        "pullkeeper_config_last_reload_successful",
        |v| v == Some(0.0),
    )
    .await;
    let last = namespaces.last().expect("a namespace");
    Api::<Secret>::namespaced(client.clone(), last)
        .delete(SECRET, &DeleteParams::default())
        .await
        .expect("delete the Secret");
    wait_served(client, last).await;
    edit_config(
        client,
        ns,
        configmap,
        key,
        &yaml(&registry_file(namespaces)),
    )
    .await;
    wait_sample(
        pods,
        "accepts the file again",
        "pullkeeper_config_last_reload_successful",
        |v| v == Some(1.0),
    )
    .await;
}

/// After the uninstall: `pullkeeper cleanup` removes what pullkeeper left in the user's
/// namespaces; then nothing of pullkeeper's is left and every user entry is intact.
async fn cleanup_leaves_nothing(client: &Client, lease_namespace: &str, namespaces: &[String]) {
    let kubeconfig = support::env("KUBECONFIG");
    let started = Instant::now();
    let out = run(
        PULLKEEPER,
        &[
            "cleanup",
            "--kubeconfig",
            &kubeconfig,
            "--lease-namespace",
            lease_namespace,
        ],
    )
    .await;
    figure!(
        "in-cluster: pullkeeper cleanup took {:.1?}: {}",
        started.elapsed(),
        out.lines().last().unwrap_or_default()
    );
    println!("{out}");
    let managed =
        Api::<Secret>::all(client.clone())
            .list(&ListParams::default().labels(
                "app.kubernetes.io/managed-by=pullkeeper,pullkeeper.dev/instance=pullkeeper",
            ))
            .await
            .expect("list");
    assert!(
        managed.items.is_empty(),
        "pullkeeper Secrets left: {:?}",
        managed
            .items
            .iter()
            .map(|s| &s.metadata.name)
            .collect::<Vec<_>>()
    );
    for ns in namespaces {
        let sa = Api::<ServiceAccount>::namespaced(client.clone(), ns)
            .get("default")
            .await
            .expect("default");
        assert_eq!(
            support::account_pull_secrets(&sa),
            [USER_SECRET],
            "{ns}/default keeps the team's entry only"
        );
        let annotations = sa.metadata.annotations.unwrap_or_default();
        assert!(
            !annotations.keys().any(|k| k.starts_with("pullkeeper.dev/")),
            "{ns}/default keeps a pullkeeper annotation: {annotations:?}"
        );
        Api::<Secret>::namespaced(client.clone(), ns)
            .get(USER_SECRET)
            .await
            .unwrap_or_else(|e| panic!("the team's Secret in {ns} must stay: {e}"));
    }
    let lease = Api::<Lease>::namespaced(client.clone(), lease_namespace)
        .get_opt("pullkeeper-leader")
        .await
        .expect("get lease");
    assert!(lease.is_none(), "the Lease is left");
}

// ---------------------------------------------------------------------------------------------
// Drift and hand-over
// ---------------------------------------------------------------------------------------------

/// Deletes `ns/SECRET` whenever it exists, so the leader keeps writing; stops on drop.
struct Drift {
    stop: Arc<AtomicBool>,
    deletions: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drift {
    fn start(client: &Client, ns: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let deletions = Arc::new(AtomicUsize::new(0));
        let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
        let task = tokio::spawn({
            let stop = stop.clone();
            let deletions = deletions.clone();
            async move {
                while !stop.load(Ordering::SeqCst) {
                    if secrets
                        .delete(SECRET, &DeleteParams::default())
                        .await
                        .is_ok()
                    {
                        deletions.fetch_add(1, Ordering::SeqCst);
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        });
        Self {
            stop,
            deletions,
            task,
        }
    }

    async fn stop(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
        self.deletions.load(Ordering::SeqCst)
    }
}

/// The hand-over after `at` (the delete or kill of the leader process `identity`): waits for the
/// first Secret write by another process received after `at`, and returns it with the old
/// process's last write since `since`.
async fn next_leader(
    ns: &str,
    since: DateTime<Utc>,
    at: DateTime<Utc>,
    identity: &str,
) -> (Write, DateTime<Utc>) {
    let old = agent_of(identity);
    let first = support::wait_for_named("a write by another process", WAIT, || async {
        writes(ns, "pullkeeper", at)
            .into_iter()
            .find(|w| w.agent != old && w.what.contains(" secrets "))
            .ok_or("none yet")
    })
    .await;
    let old_last = writes(ns, "pullkeeper", since)
        .into_iter()
        .filter(|w| w.agent == old)
        .map(|w| w.completed)
        .max()
        .expect("the old leader wrote");
    (first, old_last)
}

/// Waits until the process behind `agent` has repaired the drift twice from now on.
async fn keeps_writing(ns: &str, agent: &str) {
    let from = Utc::now();
    support::wait_for_named(&format!("{agent} repairing the drift"), WAIT, || async {
        let n = writes(ns, "pullkeeper", from)
            .iter()
            .filter(|w| w.agent == agent && w.what.contains(" secrets "))
            .count();
        if n >= 2 {
            Ok(())
        } else {
            Err(format!("{n} writes"))
        }
    })
    .await;
}

fn seconds(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_milliseconds() as f64 / 1000.0
}

fn agent_of(identity: &str) -> String {
    format!("pullkeeper/{} ({identity})", env!("CARGO_PKG_VERSION"))
}

/// Kills the container of `pod` with SIGKILL through containerd, as an OOM kill or a crash
/// would end it: no shutdown, no Lease release.
async fn kill_hard(pod: &Pod) {
    let id = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.first()?.container_id.clone())
        .expect("container id");
    let id = id.strip_prefix("containerd://").unwrap_or(&id).to_string();
    let socket = support::env("PK_NODE_CONTAINERD_SOCK");
    run(
        "ctr",
        &[
            "--address",
            &socket,
            "-n",
            "k8s.io",
            "task",
            "kill",
            "--signal",
            "SIGKILL",
            &id,
        ],
    )
    .await;
}

/// The `kubernetes` Service address, which the node makes local: a Pod's only path to the API
/// server (tests/cluster/node.sh).
const SERVICE_IP: &str = "10.0.0.1";

/// A network cut between one Pod and the API server: every packet from the Pod to the Service
/// address and back is dropped (iptables on the host, where the bridge delivers them), as a
/// partition would. Nothing is refused: open connections go silent. Heals on drop.
struct Cut {
    /// `(chain, match and target)` of each rule.
    rules: Vec<(&'static str, Vec<String>)>,
}

impl Cut {
    async fn start(pod: &Pod) -> Self {
        let ip = pod_ip(pod);
        let comment = format!("pullkeeper in-cluster test: cut {}", pod_name(pod));
        let rule = |from: &str, to: &str, port: &str| -> Vec<String> {
            let spec = ["-s", from, "-d", to, "-p", "tcp", port, "443"];
            let tail = ["-m", "comment", "--comment", &comment, "-j", "DROP"];
            spec.iter().chain(&tail).map(ToString::to_string).collect()
        };
        // Built before the rules go in: a failure half-way still removes what was added.
        let cut = Self {
            rules: vec![
                ("INPUT", rule(&ip, SERVICE_IP, "--dport")),
                ("OUTPUT", rule(SERVICE_IP, &ip, "--sport")),
            ],
        };
        for (chain, spec) in &cut.rules {
            let mut args = vec!["-w", "-I", chain, "1"];
            args.extend(spec.iter().map(String::as_str));
            run("iptables", &args).await;
        }
        cut
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        for (chain, spec) in &self.rules {
            let status = std::process::Command::new("iptables")
                .args(["-w", "-D", chain])
                .args(spec)
                .status();
            if !status.as_ref().is_ok_and(std::process::ExitStatus::success) {
                eprintln!("could not remove the cut rule {chain} {spec:?}: {status:?}");
            }
        }
    }
}

/// When the container of `pod` last exited at the latest, if that was after `since` (the
/// kubelet's record, in whole seconds, so one is added: the current state while it waits to be
/// restarted, the last state once it runs again).
async fn exited_since(
    client: &Client,
    ns: &str,
    pod: &Pod,
    since: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let status = Api::<Pod>::namespaced(client.clone(), ns)
        .get(&pod_name(pod))
        .await
        .ok()?
        .status?
        .container_statuses?
        .into_iter()
        .next()?;
    [status.state, status.last_state]
        .into_iter()
        .flatten()
        .filter_map(|s| s.terminated?.finished_at)
        .filter_map(|t| DateTime::from_timestamp(t.0.as_second(), 0))
        .filter(|t| *t >= since - chrono::Duration::seconds(1))
        .max()
        .map(|t| t + chrono::Duration::seconds(1))
}

/// How often the container of `pod` has been restarted, as its Pod's status says now.
async fn restarts(client: &Client, ns: &str, pod: &Pod) -> i32 {
    Api::<Pod>::namespaced(client.clone(), ns)
        .get(&pod_name(pod))
        .await
        .expect("get the Pod")
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|cs| cs.first().map(|c| c.restart_count))
        .unwrap_or_default()
}

/// Waits until the last write to `ns` is at least two seconds old and the drifted Secret is
/// back: nothing of the leader's is on the wire.
async fn quiet(client: &Client, ns: &str, drift_ns: &str) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), drift_ns);
    support::wait_for_named("no write for 2 s", WAIT, || async {
        if secrets.get_opt(SECRET).await.ok().flatten().is_none() {
            return Err("the Secret is not back yet".to_string());
        }
        let last = writes(ns, "pullkeeper", Utc::now() - chrono::Duration::seconds(2));
        if last.is_empty() {
            Ok(())
        } else {
            Err(format!("{} writes in the last 2 s", last.len()))
        }
    })
    .await;
}

/// The leader's path to the API server cut while the follower keeps its own: the leader steps
/// down by itself before its Lease expires, the follower takes over once it has, and after the
/// cut heals the old leader's process writes nothing (it left when it stepped down; the one the
/// kubelet restarts is a follower). The drift pauses around the cut so that no write of the
/// leader is on the wire at that instant: the kernel would deliver such a request after the
/// heal whoever leads by then (TCP retransmits it), which no Lease can fence.
async fn cut_off(client: &Client, ns: &str, drift_ns: &str, since: DateTime<Utc>) -> usize {
    let pods = wait_ready(client, ns, 2, None).await;
    let (leader, identity) = leader_of(client, ns, &pods).await;
    quiet(client, ns, drift_ns).await;
    let restarted_before = restarts(client, ns, &leader).await;
    let cut = Cut::start(&leader).await;
    let cut_at = Utc::now();
    let drift = Drift::start(client, drift_ns);

    // The old leader stops leading on its own: its process exits (the kubelet's record of the
    // exit has the time; the restart may wait out a crash back-off), or its metrics say so.
    let stepped_down =
        support::wait_for_named("the cut-off leader stepping down", WAIT, || async {
            if let Some(at) = exited_since(client, ns, &leader, cut_at).await {
                return Ok(at);
            }
            match scrape(&leader).await {
                Ok(text) if sample(&text, "pullkeeper_leader") == Some(1.0) => {
                    Err("it still says it leads".to_string())
                }
                Ok(_) => Ok(Utc::now()),
                Err(e) => Err(e),
            }
        })
        .await;
    let (first, old_last) = next_leader(ns, since, cut_at, &identity).await;
    figure!(
        "in-cluster: leader {}'s path to the API server cut: it stepped down {:.2} s after the cut; {} ({}) wrote {:.2} s after the cut ({:.2} s after the old leader's last write)",
        pod_name(&leader),
        seconds(cut_at, stepped_down),
        first.pod,
        first.agent,
        seconds(cut_at, first.received),
        seconds(old_last, first.received)
    );
    assert!(
        stepped_down < first.received,
        "the old leader stepped down ({stepped_down}) before the new one wrote ({})",
        first.received
    );
    keeps_writing(ns, &first.agent).await;

    drop(cut);
    let healed = Instant::now();
    let healed_at = Utc::now();
    wait_ready(client, ns, 2, None).await;
    figure!(
        "in-cluster: cut healed; the old leader's Pod Ready again {:.1?} later ({} restart(s) since the cut)",
        healed.elapsed(),
        restarts(client, ns, &leader).await - restarted_before
    );
    keeps_writing(ns, &first.agent).await;
    let deletions = drift.stop().await;
    let old = agent_of(&identity);
    let stale: Vec<Write> = writes(ns, "pullkeeper", cut_at)
        .into_iter()
        .filter(|w| w.agent == old || (w.pod == pod_name(&leader) && w.received >= healed_at))
        .collect();
    assert!(
        stale.is_empty(),
        "the cut-off leader's Pod wrote after the cut: {stale:#?}"
    );
    deletions
}

/// Two replicas, one writer: the writes so far all came from the leader; a graceful delete of
/// the leader Pod hands over within the follower's retry period (the Lease is released); a hard
/// kill of the new leader's container hands over once its Lease expires; so does a network cut
/// between the next leader and the API server. Never two writers.
async fn hand_over(client: &Client, ns: &str, drift_ns: &str, since: DateTime<Utc>) {
    let pods = wait_ready(client, ns, 2, None).await;
    let (leader, identity) = leader_of(client, ns, &pods).await;
    let drift = Drift::start(client, drift_ns);
    keeps_writing(ns, &agent_of(&identity)).await;

    // Graceful: the kubelet sends SIGTERM; pullkeeper stops writing, then releases the Lease.
    let deleted = Utc::now();
    Api::<Pod>::namespaced(client.clone(), ns)
        .delete(&pod_name(&leader), &DeleteParams::default())
        .await
        .expect("delete the leader Pod");
    let (first, old_last) = next_leader(ns, since, deleted, &identity).await;
    figure!(
        "in-cluster: graceful delete of leader {}: {} wrote {:.2} s after the delete ({:.2} s after the old leader's last write)",
        pod_name(&leader),
        first.pod,
        seconds(deleted, first.received),
        seconds(old_last, first.received)
    );
    assert_ne!(first.pod, pod_name(&leader), "the other replica took over");

    // Hard: SIGKILL through containerd; the Lease stays held until it expires.
    let pods = wait_ready(client, ns, 2, None).await;
    let (leader, identity) = leader_of(client, ns, &pods).await;
    let killed = Utc::now();
    kill_hard(&leader).await;
    let (first, old_last) = next_leader(ns, since, killed, &identity).await;
    figure!(
        "in-cluster: hard kill of leader {}'s container: {} ({}) wrote {:.2} s after the kill ({:.2} s after the old leader's last write)",
        pod_name(&leader),
        first.pod,
        first.agent,
        seconds(killed, first.received),
        seconds(old_last, first.received)
    );
    keeps_writing(ns, &first.agent).await;
    let mut deletions = drift.stop().await;
    deletions += cut_off(client, ns, drift_ns, since).await;
    assert!(
        deletions >= 3,
        "the drift kept the leader writing: {deletions} deletions"
    );

    let all = writes(ns, "pullkeeper", since);
    let writers = assert_one_writer_at_a_time(&all);
    figure!(
        "in-cluster: {} writes by {} processes, one at a time: {}",
        all.len(),
        writers.len(),
        writers
            .iter()
            .map(|(agent, first, last)| format!("{agent} {first}..{last}"))
            .collect::<Vec<_>>()
            .join("; ")
    );
    assert!(writers.len() >= 4, "four leaders in turn: {writers:?}");
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_kustomize_base_installs_two_replicas_that_hand_over_and_uninstall_clean() {
    let _one = ONE_INSTALL.lock().await;
    let client = support::admin_client().await;
    let image = image();
    let namespaces = TestNamespaces::new(client.clone(), "ick");
    let first = user_namespace(&client, &namespaces).await;
    let second = user_namespace(&client, &namespaces).await;
    let ns = "pullkeeper";

    // The test overlay: the shipped base, and only what this platform needs.
    let overlay = support::scratch_path("kustomize-overlay", "");
    std::fs::create_dir_all(&overlay).expect("overlay dir");
    let secrets: Vec<String> = install_secrets(ns).iter().map(yaml).collect();
    std::fs::write(overlay.join("secrets.yaml"), secrets.join("---\n")).expect("write");
    let patch_deployment = json!([
        {"op": "add", "path": "/spec/template/spec/imagePullSecrets", "value": [{"name": "pullkeeper-image"}]},
        {"op": "add", "path": "/spec/template/spec/containers/0/env/-", "value": password_env()},
    ]);
    let patch_config = json!([
        {"op": "replace", "path": "/data", "value": {"incluster.yaml": yaml(&registry_file(std::slice::from_ref(&first)))}},
    ]);
    // The role grants Secrets by name: the registry file's, as every overlay sets it.
    let patch_names = json!([
        {"op": "replace", "path": "/rules/0/resourceNames", "value": [SECRET]},
    ]);
    let kustomization = json!({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [relative(Path::new(BASE), &overlay).display().to_string(), "secrets.yaml"],
        "images": [{"name": "ghcr.io/pullkeeper/pullkeeper", "newName": image.repository, "digest": image.digest}],
        "patches": [
            {"target": {"kind": "Deployment", "name": "pullkeeper"}, "patch": yaml(&patch_deployment)},
            {"target": {"kind": "ConfigMap", "name": "pullkeeper-config"}, "patch": yaml(&patch_config)},
            {"target": {"kind": "ClusterRole", "name": "pullkeeper-secrets"}, "patch": yaml(&patch_names)},
        ],
    });
    std::fs::write(overlay.join("kustomization.yaml"), yaml(&kustomization)).expect("write");
    let overlay_dir = overlay.display().to_string();

    let since = Utc::now();
    let applied = Instant::now();
    run("kubectl", &["apply", "-k", &overlay_dir]).await;
    let pods = wait_ready(&client, ns, 2, Some(&image.digest)).await;
    figure!(
        "in-cluster (kustomize): image {} ({} bytes pulled, {} unpacked); both replicas Ready {:.1?} after kubectl apply -k",
        image.digest,
        image.pull_bytes,
        image.bytes,
        applied.elapsed()
    );
    wait_served(&client, &first).await;
    a_pod_pulls(&client, &first).await;
    restricted_level_holds(&client, ns).await;
    let (leader, _) = leader_of(&client, ns, &pods).await;
    uses_the_mounted_token(&pods, &writes(ns, "pullkeeper", since), &leader);

    let both = [first.clone(), second.clone()];
    config_edits(
        &client,
        ns,
        "pullkeeper-config",
        "incluster.yaml",
        &pods,
        &both,
    )
    .await;
    hand_over(&client, ns, &first, since).await;

    // Uninstall, then the documented clean-up.
    run("kubectl", &["delete", "-k", &overlay_dir, "--wait=true"]).await;
    support::wait_for_named("namespace pullkeeper gone", WAIT, || async {
        Api::<Namespace>::all(client.clone())
            .get_opt(ns)
            .await
            .is_ok_and(|n| n.is_none())
    })
    .await;
    cleanup_leaves_nothing(&client, ns, &both).await;
    namespaces.cleanup().await;
}

#[tokio::test]
async fn the_helm_chart_installs_upgrades_without_a_gap_and_uninstalls_clean() {
    let _one = ONE_INSTALL.lock().await;
    let client = support::admin_client().await;
    let image = image();
    let namespaces = TestNamespaces::new(client.clone(), "ich");
    let first = user_namespace(&client, &namespaces).await;
    let second = user_namespace(&client, &namespaces).await;
    // The release namespace, labelled for the restricted level as deploy/README.md tells.
    let ns = namespaces
        .create_labelled(BTreeMap::from([(
            "pod-security.kubernetes.io/enforce".to_string(),
            "restricted".to_string(),
        )]))
        .await;
    for secret in install_secrets(&ns) {
        let secret: Secret = serde_json::from_value(secret).expect("secret");
        Api::<Secret>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &secret)
            .await
            .expect("create");
    }
    let values = |namespaces: &[String], tag: &str| {
        let path = support::scratch_path("helm-values", ".yaml");
        let values = json!({
            "image": {"repository": image.repository, "tag": tag},
            "imagePullSecrets": [{"name": "pullkeeper-image"}],
            "registries": {"incluster": registry_file(namespaces)},
            "extraEnv": [password_env()],
        });
        std::fs::write(&path, yaml(&values)).expect("values");
        path.display().to_string()
    };
    let helm = helm();
    let since = Utc::now();
    let installed = Instant::now();
    run(
        &helm,
        &[
            "install",
            RELEASE,
            CHART,
            "-n",
            &ns,
            "-f",
            &values(std::slice::from_ref(&first), "ci"),
            "--wait",
            "--timeout",
            "3m",
        ],
    )
    .await;
    let pods = wait_ready(&client, &ns, 2, Some(&image.digest)).await;
    figure!(
        "in-cluster (helm): both replicas Ready {:.1?} after helm install",
        installed.elapsed()
    );
    wait_served(&client, &first).await;
    a_pod_pulls(&client, &first).await;
    restricted_level_holds(&client, &ns).await;
    let (leader, _) = leader_of(&client, &ns, &pods).await;
    uses_the_mounted_token(&pods, &writes(&ns, HELM_ACCOUNT, since), &leader);
    let both = [first.clone(), second.clone()];
    config_edits(&client, &ns, HELM_CONFIGMAP, "incluster.yaml", &pods, &both).await;

    // Upgrade to the next image while every Secret is read every 50 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn({
        let client = client.clone();
        let both = both.clone();
        let stop = stop.clone();
        async move {
            let mut reads = 0usize;
            let mut gaps: HashMap<String, usize> = HashMap::new();
            let mut contents: HashMap<String, Vec<u8>> = HashMap::new();
            while !stop.load(Ordering::SeqCst) {
                for ns in &both {
                    reads += 1;
                    let got = Api::<Secret>::namespaced(client.clone(), ns)
                        .get_opt(SECRET)
                        .await;
                    match got {
                        Ok(Some(s)) => {
                            let bytes = s
                                .data
                                .and_then(|d| d.get(".dockerconfigjson").cloned())
                                .map(|b| b.0)
                                .unwrap_or_default();
                            let seen = contents.entry(ns.clone()).or_insert_with(|| bytes.clone());
                            if *seen != bytes {
                                *gaps.entry(format!("{ns}: other content")).or_default() += 1;
                            }
                        }
                        Ok(None) => *gaps.entry(format!("{ns}: missing")).or_default() += 1,
                        Err(e) => *gaps.entry(format!("{ns}: {e}")).or_default() += 1,
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (reads, gaps)
        }
    });
    let holder_before = lease_holder(&client, &ns).await;
    let upgraded = Instant::now();
    run(
        &helm,
        &[
            "upgrade",
            RELEASE,
            CHART,
            "-n",
            &ns,
            "-f",
            &values(&both, "ci-next"),
            "--wait",
            "--timeout",
            "3m",
        ],
    )
    .await;
    let pods = wait_ready(&client, &ns, 2, Some(&image.next_digest)).await;
    let (leader, holder_after) = leader_of(&client, &ns, &pods).await;
    // A few more samples after the new leader took over.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    let (reads, gaps) = sampler.await.expect("sampler");
    figure!(
        "in-cluster (helm): upgrade to {} done in {:.1?}; leader {:?} -> {holder_after} ({}); {reads} reads of the Secrets, problems {gaps:?}",
        image.next_digest,
        upgraded.elapsed(),
        holder_before,
        pod_name(&leader)
    );
    assert!(
        gaps.is_empty(),
        "every read during the upgrade found the Secret unchanged: {gaps:?}"
    );
    assert_ne!(
        holder_before.as_deref(),
        Some(holder_after.as_str()),
        "the upgrade replaced the leader"
    );
    assert!(reads > 20, "the sampler kept reading: {reads}");
    assert_one_writer_at_a_time(&writes(&ns, HELM_ACCOUNT, since));

    // Uninstall, then the documented clean-up (the release namespace and its Lease stay).
    run(&helm, &["uninstall", RELEASE, "-n", &ns, "--wait"]).await;
    support::wait_for_named("pullkeeper's Pods gone", WAIT, || async {
        Api::<Pod>::namespaced(client.clone(), &ns)
            .list(&ListParams::default().labels(POD_SELECTOR))
            .await
            .is_ok_and(|l| l.items.is_empty())
    })
    .await;
    cleanup_leaves_nothing(&client, &ns, &both).await;
    namespaces.cleanup().await;
}

/// A write by process `POD_ID`, `s` seconds after the epoch.
fn fake_write(pod: &str, id: &str, s: i64) -> Write {
    let at = DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::seconds(s);
    Write {
        received: at,
        completed: at,
        pod: pod.into(),
        agent: agent_of(&format!("{pod}_{id}")),
        what: "patch secrets a/b -> 200".into(),
    }
}

/// The audit check can fail: two processes whose writes interleave are two writers at once.
#[test]
#[should_panic(expected = "two writers at once")]
fn the_one_writer_check_refuses_interleaved_writers() {
    assert_one_writer_at_a_time(&[
        fake_write("p-a", "1", 1),
        fake_write("p-b", "2", 2),
        fake_write("p-a", "1", 3),
    ]);
}

/// ... and passes writers that took turns.
#[test]
fn the_one_writer_check_passes_writers_in_turn() {
    let writers = assert_one_writer_at_a_time(&[
        fake_write("p-a", "1", 1),
        fake_write("p-a", "1", 2),
        fake_write("p-b", "2", 3),
        fake_write("p-b", "3", 5),
    ]);
    assert_eq!(writers.len(), 3);
}

/// The optional node installer (`components/credential-provider-installer`) on the real node:
/// its DaemonSet Pod runs under the privileges the component states (root, no capability, two
/// hostPath directories, its namespace at the `privileged` Pod Security level), copies the
/// pullkeeper executable into the kubelet's provider bin dir and the ConfigMap's registry file
/// into its own directory, and merges its entry into the CredentialProviderConfig there, keeping
/// the platform's entry. The two hostPath directories are this test's own (the test kubelet reads
/// its provider config only at start, so it is not the one written here); the installed copy then
/// answers a CredentialProviderRequest from the installed files as the kubelet would exec it.
#[tokio::test]
async fn the_node_installer_daemonset_puts_the_plugin_and_its_entry_on_the_node() {
    const COMPONENT: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/kustomize/components/credential-provider-installer"
    );
    let client = support::admin_client().await;
    let image = image();
    let ns = "pullkeeper-node";
    let registry = Registry::htpasswd();

    // The node's side: a bin dir and the directory of a provider config the platform already
    // uses (one entry of its own), and the password file the registry file names.
    let node = support::scratch_path("node-installer", "");
    let (bin_dir, config_dir) = (node.join("bin"), node.join("config"));
    std::fs::create_dir_all(&bin_dir).expect("bin dir");
    std::fs::create_dir_all(&config_dir).expect("config dir");
    let platform_entry = "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders:\n  - name: platform-plugin\n    apiVersion: credentialprovider.kubelet.k8s.io/v1\n    matchImages: [\"*.platform.invalid\"]\n    defaultCacheDuration: 1h\n";
    std::fs::write(config_dir.join("config.yaml"), platform_entry).expect("provider config");
    let password_file = support::write_scratch_file("node-installer", ".txt", &registry.password);
    let registry_file = json!({
        "provider": {
            "type": "static",
            "username": {"value": registry.username},
            "password": {"file": password_file.display().to_string()},
        },
        "servers": [registry.host],
        "secretName": "node-route",
    });

    let overlay = support::scratch_path("node-installer-overlay", "");
    std::fs::create_dir_all(&overlay).expect("overlay dir");
    std::fs::write(overlay.join("node.yaml"), yaml(&registry_file)).expect("registry file");
    std::fs::write(overlay.join("secrets.yaml"), yaml(&install_secrets(ns)[0]))
        .expect("pull secret");
    let patch = json!([
        {"op": "add", "path": "/spec/template/spec/imagePullSecrets", "value": [{"name": "pullkeeper-image"}]},
        {"op": "replace", "path": "/spec/template/spec/containers/0/args/10",
         "value": format!("--match-images={}", registry.host)},
        {"op": "replace", "path": "/spec/template/spec/volumes/1/hostPath/path", "value": bin_dir.display().to_string()},
        {"op": "replace", "path": "/spec/template/spec/volumes/2/hostPath/path", "value": config_dir.display().to_string()},
    ]);
    let kustomization = json!({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["secrets.yaml"],
        "components": [relative(Path::new(COMPONENT), &overlay).display().to_string()],
        "configMapGenerator": [{"name": "pullkeeper-node-config", "namespace": ns, "files": ["node.yaml"]}],
        "images": [{"name": "ghcr.io/pullkeeper/pullkeeper", "newName": image.repository, "digest": image.digest}],
        "patches": [{"target": {"kind": "DaemonSet", "name": "pullkeeper-node-installer"}, "patch": yaml(&patch)}],
    });
    std::fs::write(overlay.join("kustomization.yaml"), yaml(&kustomization)).expect("write");
    let overlay_dir = overlay.display().to_string();
    // The namespace first: the Secret in the same apply needs it.
    run(
        "kubectl",
        &["apply", "-f", &format!("{COMPONENT}/namespace.yaml")],
    )
    .await;
    let applied = Instant::now();
    run("kubectl", &["apply", "-k", &overlay_dir]).await;

    let installed = bin_dir.join("pullkeeper");
    let provider_config = config_dir.join("config.yaml");
    let node_config = config_dir.join("pullkeeper.d");
    let merged = support::wait_for_named("the installer's files on the node", WAIT, || async {
        let merged = std::fs::read_to_string(&provider_config).unwrap_or_default();
        if installed.exists()
            && node_config.join("node.yaml").exists()
            && merged.contains("name: pullkeeper")
        {
            Ok(merged)
        } else {
            let pods = Api::<Pod>::namespaced(client.clone(), ns)
                .list(&ListParams::default())
                .await
                .map(|l| {
                    l.items
                        .iter()
                        .map(support::pod_summary)
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .unwrap_or_default();
            Err(format!("not yet; Pods: {pods}"))
        }
    })
    .await;
    figure!(
        "node installer: plugin, registry file and entry on the node {:.1?} after kubectl apply -k",
        applied.elapsed()
    );
    assert!(
        merged.contains("name: platform-plugin"),
        "the platform's entry is kept:\n{merged}"
    );
    assert!(
        merged.contains(&format!(
            "{}/pullkeeper.d",
            "/etc/kubernetes/image-credential-provider"
        )) && merged.contains(&registry.host),
        "the entry names the node's config dir and the images:\n{merged}"
    );
    assert!(
        !merged.contains(&registry.password),
        "no credential in the provider config"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&installed)
            .expect("installed plugin")
            .permissions(),
    );
    assert_eq!(mode & 0o111, 0o111, "executable: {mode:o}");
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .expect("list installer Pods")
        .items;
    assert_eq!(pods.len(), 1, "one Pod on the one node");
    let spec = pods[0].spec.as_ref().expect("spec");
    assert_eq!(spec.automount_service_account_token, Some(false));
    let security = spec.containers[0]
        .security_context
        .as_ref()
        .expect("securityContext");
    assert_eq!(security.privileged, Some(false));
    assert_eq!(security.allow_privilege_escalation, Some(false));

    // The installed copy serves as the kubelet would exec it, from the installed files.
    let request = json!({
        "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
        "kind": "CredentialProviderRequest",
        "image": format!("{}/{}", registry.host, support::test_image()),
    });
    let mut child = tokio::process::Command::new(&installed)
        .args(["credential-provider", "--config"])
        .arg(&node_config)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the installed plugin");
    tokio::io::AsyncWriteExt::write_all(
        child.stdin.as_mut().expect("stdin"),
        request.to_string().as_bytes(),
    )
    .await
    .expect("write the request");
    drop(child.stdin.take());
    let out = child.wait_with_output().await.expect("the plugin ends");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a response");
    assert_eq!(
        answer["auth"][registry.host.as_str()]["password"],
        registry.password.as_str(),
        "the installed plugin answers with the installed registry file's login"
    );

    run("kubectl", &["delete", "-k", &overlay_dir, "--wait=true"]).await;
    run(
        "kubectl",
        &[
            "delete",
            "namespace",
            ns,
            "--wait=true",
            "--ignore-not-found",
        ],
    )
    .await;
    let _ = std::fs::remove_dir_all(&node);
    let _ = std::fs::remove_file(&password_file);
}
