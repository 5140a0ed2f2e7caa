//! Pod recovery on the real node: the seed's whole routine. A Deployment created before
//! pullkeeper ran sits in `ImagePullBackOff` (admission copied no `imagePullSecrets`); with
//! `--pod-recovery on` pullkeeper deletes the stuck Pod and its ReplicaSet recreates it with the
//! reference, which then pulls and runs. With `observe` the Pod stays stuck and the gauge says
//! so. Recovery never touches a bare Pod, a Pod that already names the Secret, or a Pod of a
//! registry pullkeeper does not manage, and keeps to its rate limit.
//!
//! These tests run the daemon as the ServiceAccount `pullkeeper-recovery`: the shipped base
//! ClusterRole plus the optional component `deploy/kustomize/components/pod-recovery`, bound to
//! it here, so that the plain `pullkeeper` ServiceAccount of the other tests never gets it.
// A scenario test reads top to bottom as the story it checks; splitting it hides the order.
#![allow(clippy::too_many_lines)]

mod daemon;
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use daemon::{config_dir, write_config};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::{Registry, TestNamespaces};

const WAIT: Duration = Duration::from_secs(150);
const RECOVERY_RBAC: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/kustomize/components/pod-recovery/rbac.yaml"
);
const RECOVERY_SA: &str = support::RECOVERY_SERVICE_ACCOUNT;

/// A config directory with one registry file for the htpasswd registry (static provider, the
/// password from a file).
fn htpasswd_config(test: &str) -> PathBuf {
    let registry = Registry::htpasswd();
    let dir = config_dir();
    let password = support::write_scratch_file("password", "", &registry.password);
    write_config(
        &dir,
        "htpasswd.yaml",
        &format!(
            "provider:\n  type: static\n  username: {{value: \"{}\"}}\n  password: {{file: {}}}\n\
             servers: [\"{}\"]\nsecretName: htpasswd-pull\nnamespaces:\n  selector: \"{}\"\n",
            registry.username,
            password.display(),
            registry.host,
            support::test_selector(test)
        ),
    );
    dir
}

/// A kubeconfig for `pullkeeper-recovery`: the base ClusterRole and the pod-recovery one.
async fn recovery_kubeconfig(admin: &Client) -> PathBuf {
    support::install_rbac(admin).await;
    let apply = PatchParams::apply("pullkeeper-tests").force();
    let sa: ServiceAccount = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": RECOVERY_SA, "namespace": support::PULLKEEPER_NAMESPACE},
    }))
    .expect("sa");
    Api::<ServiceAccount>::namespaced(admin.clone(), support::PULLKEEPER_NAMESPACE)
        .patch(RECOVERY_SA, &apply, &Patch::Apply(&sa))
        .await
        .expect("apply the recovery ServiceAccount");
    let text = std::fs::read_to_string(RECOVERY_RBAC).expect("read the pod-recovery RBAC");
    let role: ClusterRole = serde_yaml_ng::Deserializer::from_str(&text)
        .find_map(|doc| {
            let value = <serde_yaml_ng::Value as serde::Deserialize>::deserialize(doc).ok()?;
            (value.get("kind")?.as_str()? == "ClusterRole")
                .then(|| serde_yaml_ng::from_value(value).ok())
                .flatten()
        })
        .expect("the component has a ClusterRole");
    let role_name = role.metadata.name.clone().expect("named");
    Api::<ClusterRole>::all(admin.clone())
        .patch(&role_name, &apply, &Patch::Apply(&role))
        .await
        .expect("apply the pod-recovery ClusterRole");
    for role in ["pullkeeper", role_name.as_str()] {
        let binding: ClusterRoleBinding = serde_json::from_value(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": format!("{role}-tests-recovery")},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": RECOVERY_SA, "namespace": support::PULLKEEPER_NAMESPACE}],
        }))
        .expect("binding");
        Api::<ClusterRoleBinding>::all(admin.clone())
            .patch(
                binding.metadata.name.as_deref().expect("named"),
                &apply,
                &Patch::Apply(&binding),
            )
            .await
            .expect("apply a recovery binding");
    }
    // The shipped guardrails, for this identity.
    support::install_policy_for(admin, support::PULLKEEPER_NAMESPACE, RECOVERY_SA).await;
    let token = support::sa_token(admin, support::PULLKEEPER_NAMESPACE, RECOVERY_SA).await;
    let as_recovery = support::client_for_token(&token).await;
    for verb in ["list", "watch", "delete"] {
        support::wait_for_named(&format!("pods {verb} allowed"), WAIT, || async {
            may(&as_recovery, verb, "pods").await
        })
        .await;
    }
    support::wait_for_named("namespaces list allowed", WAIT, || async {
        may(&as_recovery, "list", "namespaces").await
    })
    .await;
    support::kubeconfig_for_token(&token)
}

async fn may(client: &Client, verb: &str, resource: &str) -> bool {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
    };
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                resource: Some(resource.into()),
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    };
    Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .ok()
        .and_then(|r| r.status)
        .is_some_and(|s| s.allowed)
}

/// Creates a one-replica Deployment `name` of `image` on the test node.
async fn create_deployment(client: &Client, ns: &str, name: &str, image: &str) {
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": support::node_pod_spec(&[("app", image)], "Always", None),
            },
        },
    }))
    .expect("a valid Deployment");
    Api::<Deployment>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &deployment)
        .await
        .expect("create the Deployment");
}

/// The Pods of Deployment `app` (label `app=NAME`).
async fn pods_of(client: &Client, ns: &str, app: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .expect("list pods")
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

/// Waits for the single Pod of Deployment `app` to wait in `ImagePullBackOff`; returns it.
async fn stuck_pod_of(client: &Client, ns: &str, app: &str) -> Pod {
    let name = support::wait_for_named(&format!("a Pod of {app}"), WAIT, || async {
        pods_of(client, ns, app)
            .await
            .first()
            .and_then(|p| p.metadata.name.clone())
    })
    .await;
    support::wait_container_waiting(client, ns, &name, "ImagePullBackOff", WAIT).await
}

async fn event_reasons(client: &Client, ns: &str, pod: &Pod) -> Vec<String> {
    support::events_of(client, ns, &support::pod_uid(pod))
        .await
        .into_iter()
        .filter_map(|e| e.reason)
        .collect()
}

async fn start(kubeconfig: &Path, dir: &Path, extra: &[&str]) -> daemon::Daemon {
    let mut args = vec!["--reload-interval", "1s", "--recovery-interval", "1s"];
    args.extend_from_slice(extra);
    daemon::start_with(kubeconfig, dir, "info", &daemon::unique_instance(), &args).await
}

#[tokio::test]
async fn a_deployment_stuck_before_pullkeeper_ran_is_recovered_and_runs_with_the_written_secret() {
    let test = "recovery-seed";
    let client = support::admin_client().await;
    let namespaces = TestNamespaces::new(client.clone(), test);
    let ns = namespaces.create().await;
    let image = Registry::htpasswd().test_image_ref();
    create_deployment(&client, &ns, "app", &image).await;
    let stuck = stuck_pod_of(&client, &ns, "app").await;
    assert!(
        stuck
            .spec
            .as_ref()
            .and_then(|s| s.image_pull_secrets.as_ref())
            .is_none(),
        "created before any credential: admission copied nothing"
    );

    let kubeconfig = recovery_kubeconfig(&client).await;
    let started = std::time::Instant::now();
    let d = start(
        &kubeconfig,
        &htpasswd_config(test),
        &["--pod-recovery", "on"],
    )
    .await;
    let running = support::wait_for_named("the replacement Pod running", WAIT, || async {
        let pods = pods_of(&client, &ns, "app").await;
        let pod = pods
            .into_iter()
            .find(|p| support::pod_uid(p) != support::pod_uid(&stuck))?;
        let name = pod.metadata.name.clone()?;
        let pod = Api::<Pod>::namespaced(client.clone(), &ns)
            .get(&name)
            .await
            .ok()?;
        (pod.status.as_ref()?.phase.as_deref() == Some("Running")).then_some(pod)
    })
    .await;
    println!(
        "seed scenario: stuck Pod replaced and Running {:?} after pullkeeper started",
        started.elapsed()
    );
    let refs: Vec<String> = running
        .spec
        .as_ref()
        .and_then(|s| s.image_pull_secrets.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(
        refs,
        ["htpasswd-pull"],
        "the new Pod carries the written Secret"
    );
    let reasons = support::wait_for_named("the new Pod's Pulled event", WAIT, || async {
        Some(event_reasons(&client, &ns, &running).await)
            .filter(|r| r.iter().any(|x| x == "Pulled"))
    })
    .await;
    assert!(reasons.iter().any(|r| r == "Pulled"), "{reasons:?}");
    let old_reasons = event_reasons(&client, &ns, &stuck).await;
    assert!(
        old_reasons.iter().any(|r| r == "Recovered"),
        "pullkeeper's Event on the deleted Pod: {old_reasons:?}"
    );
    assert_eq!(
        d.sample("pullkeeper_pods_recovered_total{registry=\"htpasswd\"}")
            .await,
        1.0
    );
    d.stop().await;
    namespaces.cleanup().await;
}

#[tokio::test]
async fn with_recovery_only_observing_the_stuck_pod_stays_and_the_gauge_counts_it() {
    let test = "recovery-observe";
    let client = support::admin_client().await;
    let namespaces = TestNamespaces::new(client.clone(), test);
    let ns = namespaces.create().await;
    create_deployment(&client, &ns, "app", &Registry::htpasswd().test_image_ref()).await;
    let stuck = stuck_pod_of(&client, &ns, "app").await;

    let kubeconfig = recovery_kubeconfig(&client).await;
    let d = start(
        &kubeconfig,
        &htpasswd_config(test),
        &["--pod-recovery", "observe"],
    )
    .await;
    // The namespace is ready for a recreated Pod (Secret written, ServiceAccount patched) and
    // the gauge counts the stuck one.
    support::wait_for_named("the stuck-Pods gauge", WAIT, || async {
        d.sample("pullkeeper_pods_stuck{registry=\"htpasswd\",reason=\"ImagePullBackOff\"}")
            .await
            >= 1.0
    })
    .await;
    let sa: ServiceAccount = Api::namespaced(client.clone(), &ns)
        .get("default")
        .await
        .expect("default sa");
    assert!(
        sa.image_pull_secrets
            .iter()
            .flatten()
            .any(|r| r.name == "htpasswd-pull")
    );
    let pods = pods_of(&client, &ns, "app").await;
    assert_eq!(pods.len(), 1);
    assert_eq!(
        support::pod_uid(&pods[0]),
        support::pod_uid(&stuck),
        "observe never deletes"
    );
    assert_eq!(
        d.sample("pullkeeper_pods_recovered_total{registry=\"htpasswd\"}")
            .await,
        0.0
    );
    d.stop().await;
    namespaces.cleanup().await;
}

#[tokio::test]
async fn recovery_deletes_only_what_its_rules_allow_and_keeps_to_its_rate() {
    let test = "recovery-rules";
    let client = support::admin_client().await;
    let namespaces = TestNamespaces::new(client.clone(), test);
    let ns = namespaces.create().await;
    let image = Registry::htpasswd().test_image_ref();
    // Two stuck Deployments (only one may be recovered in the first minute), a bare Pod, a Pod
    // that already names the Secret, and a Pod of a registry pullkeeper does not manage (a
    // loopback port where nothing listens).
    create_deployment(&client, &ns, "first", &image).await;
    create_deployment(&client, &ns, "second", &image).await;
    let bare = support::create_node_pod(&client, &ns, "bare", &[("app", &image)], "Always").await;
    let with_ref: Pod = serde_json::from_value(json!({
        "metadata": {"name": "with-ref"},
        "spec": {
            "imagePullSecrets": [{"name": "htpasswd-pull"}],
            "nodeName": support::node_name(),
            "hostNetwork": true,
            "terminationGracePeriodSeconds": 5,
            "containers": [{"name": "app", "image": image, "imagePullPolicy": "Always"}],
        },
    }))
    .expect("pod");
    let with_ref = Api::<Pod>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &with_ref)
        .await
        .expect("create with-ref");
    let unmanaged = support::create_node_pod(
        &client,
        &ns,
        "unmanaged",
        &[("app", "127.0.0.1:1/none/app:v1")],
        "Always",
    )
    .await;
    let first = stuck_pod_of(&client, &ns, "first").await;
    let second = stuck_pod_of(&client, &ns, "second").await;
    support::wait_container_waiting(&client, &ns, "bare", "ImagePullBackOff", WAIT).await;
    support::wait_container_waiting(&client, &ns, "unmanaged", "ImagePullBackOff", WAIT).await;

    let kubeconfig = recovery_kubeconfig(&client).await;
    let started = std::time::Instant::now();
    let d = start(
        &kubeconfig,
        &htpasswd_config(test),
        &["--pod-recovery", "on", "--recovery-per-minute", "1"],
    )
    .await;
    support::wait_for_named("one recovery", WAIT, || async {
        d.sample("pullkeeper_pods_recovered_total{registry=\"htpasswd\"}")
            .await
            >= 1.0
    })
    .await;
    let alive = |name: String| {
        let client = client.clone();
        let ns = ns.clone();
        async move {
            Api::<Pod>::namespaced(client, &ns)
                .get_opt(&name)
                .await
                .expect("get pod")
                .map(|p| support::pod_uid(&p))
        }
    };
    let name = |p: &Pod| p.metadata.name.clone().unwrap_or_default();
    let (recovered, held_back) = if alive(name(&first)).await.is_none() {
        ("first", &second)
    } else {
        ("second", &first)
    };
    // Many 1 s rounds pass while the recovered Deployment's new Pod starts; the other stuck
    // Deployment keeps its Pod all along: one deletion a minute.
    support::wait_for_named(
        "the recovered Deployment's new Pod running",
        WAIT,
        || async {
            let pods = pods_of(&client, &ns, recovered).await;
            pods.iter()
                .any(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .then_some(())
        },
    )
    .await;
    // One deletion a minute: either the other Deployment's Pod is still there, or (on a slow
    // machine, once the minute has passed) its Recovered Event came at least a minute later.
    let recovered_total = d
        .sample("pullkeeper_pods_recovered_total{registry=\"htpasswd\"}")
        .await;
    if recovered_total == 1.0 {
        assert_eq!(
            alive(name(held_back)).await,
            Some(support::pod_uid(held_back)),
            "held back by the rate limit"
        );
    } else {
        assert_eq!(
            recovered_total, 2.0,
            "only the two Deployments' Pods may be recovered"
        );
        let recovered_at = |pod: Pod| {
            let client = client.clone();
            let ns = ns.clone();
            async move {
                support::events_of(&client, &ns, &support::pod_uid(&pod))
                    .await
                    .into_iter()
                    .find(|e| e.reason.as_deref() == Some("Recovered"))
                    .and_then(|e| e.event_time.map(|t| t.0).or(e.first_timestamp.map(|t| t.0)))
                    .expect("a Recovered Event with a time")
            }
        };
        let a = recovered_at(first.clone()).await;
        let b = recovered_at(second.clone()).await;
        let gap = a.duration_since(b).abs();
        assert!(
            gap >= k8s_openapi::jiff::SignedDuration::from_secs(59),
            "two recoveries {gap:?} apart with one allowed a minute"
        );
    }
    assert_eq!(
        alive("bare".into()).await,
        Some(support::pod_uid(&bare)),
        "a bare Pod is never deleted"
    );
    assert_eq!(
        alive("unmanaged".into()).await,
        Some(support::pod_uid(&unmanaged)),
        "not pullkeeper's registry"
    );
    // The bare Pod gets pullkeeper's Event saying why it cannot recover.
    support::wait_for_named("CannotRecover on the bare Pod", WAIT, || async {
        event_reasons(&client, &ns, &bare)
            .await
            .iter()
            .any(|r| r == "CannotRecover")
    })
    .await;
    // The Pod that named the Secret pulls at the kubelet's next retry, without recreation.
    let with_ref_running = support::wait_pod_running(&client, &ns, "with-ref", WAIT).await;
    assert_eq!(
        support::pod_uid(&with_ref_running),
        support::pod_uid(&with_ref)
    );
    println!(
        "a Pod already naming the Secret ran {:?} after pullkeeper started (kubelet back-off retry)",
        started.elapsed()
    );
    d.stop().await;
    namespaces.cleanup().await;
}

#[tokio::test]
async fn recovery_enabled_without_its_permission_says_so_and_stays_off() {
    let test = "recovery-denied";
    let client = support::admin_client().await;
    let namespaces = TestNamespaces::new(client.clone(), test);
    let ns = namespaces.create().await;
    // The plain pullkeeper ServiceAccount: the shipped base RBAC, no pod permission.
    let kubeconfig = daemon::pullkeeper_kubeconfig(&client).await;
    let d = start(
        &kubeconfig,
        &htpasswd_config(test),
        &["--pod-recovery", "on"],
    )
    .await;
    assert!(
        d.logs()
            .contains("pod recovery is enabled but not permitted"),
        "start-up says so"
    );
    // Everything else works.
    support::wait_for_named("the Secret written", WAIT, || async {
        Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), &ns)
            .get_opt("htpasswd-pull")
            .await
            .ok()
            .flatten()
    })
    .await;
    assert!(!d.metrics().await.contains("pullkeeper_pods_stuck{"));
    d.stop().await;
    namespaces.cleanup().await;
}
