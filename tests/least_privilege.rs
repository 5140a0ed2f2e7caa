//! Least privilege, tried as an attacker holding pullkeeper's token would, against the real
//! control plane with the shipped role (`deploy/kustomize/base/rbac.yaml`) and admission policy
//! (`admission-policy.yaml`): every Secret pullkeeper does not manage is out of reach, the
//! service-account-token escalation that a `create secrets` grant opens is refused by the policy
//! (and shown to work under the old role, so the test can fail), and each write pullkeeper never
//! makes is refused with the policy's message. A registry whose Secret name the role lacks is
//! reported and not served, while the others are.
// A scenario test reads top to bottom as the story it checks; splitting it hides the order.
#![allow(clippy::too_many_lines)]

mod daemon;
mod support;

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchParams};
use serde_json::{Value, json};
use support::TestNamespaces;

const WAIT: Duration = Duration::from_mins(1);
const POLICY: &str = "ValidatingAdmissionPolicy 'pullkeeper-guardrails'";

/// A client holding only pullkeeper's own ServiceAccount token.
async fn as_pullkeeper(admin: &Client) -> Client {
    support::install_rbac(admin).await;
    let token = support::sa_token(
        admin,
        support::PULLKEEPER_NAMESPACE,
        support::PULLKEEPER_SERVICE_ACCOUNT,
    )
    .await;
    support::client_for_token(&token).await
}

fn secret(name: &str, type_: &str, labels: &Value, extra: &Value) -> Secret {
    let mut doc = json!({
        "metadata": {"name": name, "labels": labels},
        "type": type_,
    });
    if let (Some(doc), Some(extra)) = (doc.as_object_mut(), extra.as_object()) {
        doc.extend(extra.clone());
    }
    serde_json::from_value(doc).expect("secret")
}

fn ours() -> Value {
    json!({"app.kubernetes.io/managed-by": "pullkeeper", "pullkeeper.dev/instance": "lp-test"})
}

fn pull_data() -> Value {
    json!({"data": {".dockerconfigjson": "eyJhdXRocyI6e319"}})
}

/// Asserts a request was refused by the API server, and returns its message.
fn refused<T: std::fmt::Debug>(result: Result<T, kube::Error>, what: &str) -> String {
    match result {
        Err(kube::Error::Api(s)) if s.code == 403 => {
            println!("refused as expected: {what}: {}", s.message);
            s.message
        }
        other => panic!("{what}: expected 403 Forbidden, got {other:?}"),
    }
}

/// Asserts a request was refused by pullkeeper's admission policy, with the message given.
fn refused_by_policy<T: std::fmt::Debug>(result: Result<T, kube::Error>, what: &str, says: &str) {
    let message = refused(result, what);
    assert!(
        message.contains(POLICY),
        "{what}: not the policy: {message}"
    );
    assert!(message.contains(says), "{what}: {message}");
}

/// The admission policy takes a moment to be enforced after it is created: waits until a
/// request it must refuse is refused by it.
async fn wait_policy_enforced(client: &Client, ns: &str, policy: &str) {
    let api = Api::<Secret>::namespaced(client.clone(), ns);
    support::wait_for_named("the admission policy enforced", WAIT, || async {
        let probe = secret("lp-policy-probe", "Opaque", &json!({}), &json!({}));
        match api.create(&PostParams::default(), &probe).await {
            Err(kube::Error::Api(s)) if s.message.contains(policy) => true,
            Ok(_) => {
                let _ = api
                    .delete("lp-policy-probe", &DeleteParams::default())
                    .await;
                false
            }
            Err(_) => false,
        }
    })
    .await;
}

#[tokio::test]
async fn pullkeeper_reads_only_the_secrets_the_role_names() {
    let admin = support::admin_client().await;
    let namespaces = TestNamespaces::new(admin.clone(), "lp-read");
    let ns = namespaces.create().await;
    let client = as_pullkeeper(&admin).await;
    support::grant_secret_names(&admin, &["lp-read-pull".to_string()]).await;
    let secrets = Api::<Secret>::namespaced(admin.clone(), &ns);
    for (name, type_) in [
        ("lp-read-pull", "kubernetes.io/dockerconfigjson"),
        ("db-password", "Opaque"),
    ] {
        let data = if type_ == "Opaque" {
            json!({"stringData": {"password": "not-yours"}})
        } else {
            pull_data()
        };
        secrets
            .create(&PostParams::default(), &secret(name, type_, &ours(), &data))
            .await
            .expect("admin creates the secret");
    }
    let mine = Api::<Secret>::namespaced(client.clone(), &ns);
    let everywhere = Api::<Secret>::all(client.clone());

    // Its own name works: get, list and watch by name, cluster-wide.
    mine.get("lp-read-pull").await.expect("get its own secret");
    let listed = everywhere
        .list(&ListParams::default().fields("metadata.name=lp-read-pull"))
        .await
        .expect("list its own name cluster-wide");
    assert!(
        listed
            .items
            .iter()
            .any(|s| s.metadata.namespace.as_deref() == Some(&ns))
    );
    let mut watch = everywhere
        .watch(
            &WatchParams::default()
                .fields("metadata.name=lp-read-pull")
                .timeout(5),
            "0",
        )
        .await
        .expect("watch its own name cluster-wide")
        .boxed();
    let first = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("an event within 10 s");
    assert!(matches!(first, Some(Ok(_))), "{first:?}");

    // Everything else is refused.
    refused(mine.get("db-password").await, "get another Secret by name");
    refused(
        mine.list(&ListParams::default()).await,
        "list Secrets in one namespace",
    );
    refused(
        everywhere.list(&ListParams::default()).await,
        "list Secrets cluster-wide",
    );
    refused(
        everywhere
            .list(&ListParams::default().fields("metadata.name=db-password"))
            .await,
        "list another Secret's name cluster-wide",
    );
    refused(
        everywhere
            .watch(&WatchParams::default().timeout(5), "0")
            .await
            .map(|_| ()),
        "watch every Secret",
    );
    refused(
        mine.watch(
            &WatchParams::default()
                .fields("metadata.name=db-password")
                .timeout(5),
            "0",
        )
        .await
        .map(|_| ()),
        "watch another Secret's name",
    );
    namespaces.cleanup().await;
}

/// Whether `client` may do anything at all (`kubectl auth can-i '*' '*'`).
async fn can_do_everything(client: &Client) -> bool {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some("*".into()),
                group: Some("*".into()),
                resource: Some("*".into()),
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    };
    Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("review")
        .status
        .is_some_and(|s| s.allowed)
}

/// The attempt: a `service-account-token` Secret for `target` in kube-system, under `name`;
/// returns the token the controller fills in, if it could be created and read back.
async fn mint(client: &Client, name: &str, target: &str) -> Result<String, kube::Error> {
    let api = Api::<Secret>::namespaced(client.clone(), "kube-system");
    let attempt = secret(
        name,
        "kubernetes.io/service-account-token",
        &json!({}),
        &json!({"metadata": {"name": name, "annotations": {"kubernetes.io/service-account.name": target}}}),
    );
    api.create(&PostParams::default(), &attempt).await?;
    let token = support::wait_for_named("the token controller fills the Secret", WAIT, || async {
        let read = api.get(name).await.ok()?;
        let token = read.data?.get("token")?.0.clone();
        String::from_utf8(token).ok()
    })
    .await;
    Ok(token)
}

#[tokio::test]
async fn the_service_account_token_escalation_works_under_the_old_role_and_is_refused_now() {
    let admin = support::admin_client().await;
    let namespaces = TestNamespaces::new(admin.clone(), "lp-escalate");
    let ns = namespaces.create().await;
    let suffix = support::random_string(6);
    let apply = PatchParams::apply("pullkeeper-tests").force();
    // A privileged controller's ServiceAccount, as every real cluster has one.
    let privileged = format!("pk-privileged-{suffix}");
    Api::<ServiceAccount>::namespaced(admin.clone(), "kube-system")
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": privileged}})).expect("sa"),
        )
        .await
        .expect("create the privileged ServiceAccount");
    let bindings = Api::<ClusterRoleBinding>::all(admin.clone());
    let roles = Api::<ClusterRole>::all(admin.clone());
    let binding = |name: &str, role: &str, sa_ns: &str, sa: &str| -> ClusterRoleBinding {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": sa_ns}],
        }))
        .expect("binding")
    };
    let admin_binding = format!("pk-privileged-{suffix}");
    bindings
        .patch(
            &admin_binding,
            &apply,
            &Patch::Apply(binding(
                &admin_binding,
                "cluster-admin",
                "kube-system",
                &privileged,
            )),
        )
        .await
        .expect("bind cluster-admin");

    // The old role (Secrets cluster-wide, as shipped before), for another identity.
    let old = format!("pk-old-role-{suffix}");
    let old_role: ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": old},
        "rules": [{"apiGroups": [""], "resources": ["secrets"],
                   "verbs": ["get", "list", "watch", "create", "patch", "delete"]}],
    }))
    .expect("role");
    roles
        .patch(&old, &apply, &Patch::Apply(old_role))
        .await
        .expect("old role");
    Api::<ServiceAccount>::namespaced(admin.clone(), &ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "old-pullkeeper"}})).expect("sa"),
        )
        .await
        .expect("sa");
    bindings
        .patch(
            &old,
            &apply,
            &Patch::Apply(binding(&old, &old, &ns, "old-pullkeeper")),
        )
        .await
        .expect("bind the old role");
    let old_client =
        support::client_for_token(&support::sa_token(&admin, &ns, "old-pullkeeper").await).await;
    let minted = support::wait_for_named("the old role to count", WAIT, || async {
        match mint(&old_client, &format!("ecr-pull-{suffix}"), &privileged).await {
            Ok(token) => Some(token),
            Err(kube::Error::Api(s)) if s.code == 403 => None,
            Err(e) => panic!("unexpected: {e}"),
        }
    })
    .await;
    let stolen = support::client_for_token(&minted).await;
    assert!(
        can_do_everything(&stolen).await,
        "under the old role the minted token is cluster-admin"
    );
    println!(
        "old role: a service-account-token Secret was filled and read back; its token may do everything"
    );

    // pullkeeper's shipped identity, with the Secret name it would read granted: refused.
    let client = as_pullkeeper(&admin).await;
    let name = format!("lp-escalate-{suffix}");
    support::grant_secret_names(&admin, std::slice::from_ref(&name)).await;
    wait_policy_enforced(&client, &ns, POLICY).await;
    refused_by_policy(
        mint(&client, &name, &privileged).await,
        "a service-account-token Secret in kube-system",
        "pullkeeper may create only Secrets of type kubernetes.io/dockerconfigjson",
    );
    assert!(
        Api::<Secret>::namespaced(admin.clone(), "kube-system")
            .get_opt(&name)
            .await
            .expect("read")
            .is_none(),
        "nothing was created"
    );

    for secret in [format!("ecr-pull-{suffix}")] {
        let _ = Api::<Secret>::namespaced(admin.clone(), "kube-system")
            .delete(&secret, &DeleteParams::default())
            .await;
    }
    let _ = Api::<ServiceAccount>::namespaced(admin.clone(), "kube-system")
        .delete(&privileged, &DeleteParams::default())
        .await;
    for b in [&admin_binding, &old] {
        let _ = bindings.delete(b, &DeleteParams::default()).await;
    }
    let _ = roles.delete(&old, &DeleteParams::default()).await;
    namespaces.cleanup().await;
}

#[tokio::test]
async fn the_policy_refuses_every_write_pullkeeper_never_makes_and_lets_its_own_through() {
    let admin = support::admin_client().await;
    let namespaces = TestNamespaces::new(admin.clone(), "lp-policy");
    let ns = namespaces.create().await;
    support::wait_account(&admin, &ns, "default").await;
    let client = as_pullkeeper(&admin).await;
    support::grant_secret_names(
        &admin,
        &[
            "lp-opaque".to_string(),
            "lp-unlabelled".to_string(),
            "lp-theirs".to_string(),
            "lp-own".to_string(),
        ],
    )
    .await;
    wait_policy_enforced(&client, &ns, POLICY).await;
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns);
    let post = PostParams::default();

    refused_by_policy(
        secrets
            .create(
                &post,
                &secret(
                    "lp-opaque",
                    "Opaque",
                    &ours(),
                    &json!({"stringData": {"k": "v"}}),
                ),
            )
            .await,
        "an Opaque Secret",
        "pullkeeper may create only Secrets of type kubernetes.io/dockerconfigjson",
    );
    refused_by_policy(
        secrets
            .create(
                &post,
                &secret(
                    "lp-unlabelled",
                    "kubernetes.io/dockerconfigjson",
                    &json!({}),
                    &pull_data(),
                ),
            )
            .await,
        "a dockerconfigjson Secret without pullkeeper's labels",
        "labelled app.kubernetes.io/managed-by=pullkeeper",
    );
    // Someone else's pull Secret cannot be taken over by labelling it.
    Api::<Secret>::namespaced(admin.clone(), &ns)
        .create(
            &post,
            &secret(
                "lp-theirs",
                "kubernetes.io/dockerconfigjson",
                &json!({}),
                &pull_data(),
            ),
        )
        .await
        .expect("admin creates a user's pull Secret");
    refused_by_policy(
        secrets
            .patch(
                "lp-theirs",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": ours()}})),
            )
            .await,
        "labelling a user's pull Secret as pullkeeper's",
        "pullkeeper may update only Secrets",
    );
    refused_by_policy(
        secrets.delete("lp-theirs", &DeleteParams::default()).await,
        "deleting a user's pull Secret",
        "pullkeeper may delete only Secrets",
    );
    // Its own kind of Secret goes through, and can be changed and deleted.
    secrets
        .create(
            &post,
            &secret(
                "lp-own",
                "kubernetes.io/dockerconfigjson",
                &ours(),
                &pull_data(),
            ),
        )
        .await
        .expect("pullkeeper creates its own pull Secret");
    secrets
        .patch(
            "lp-own",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"pullkeeper.dev/content-hash": "x"}}}),
            ),
        )
        .await
        .expect("and changes it");

    // ServiceAccounts: imagePullSecrets and its record, nothing else.
    let accounts = Api::<ServiceAccount>::namespaced(client.clone(), &ns);
    accounts
        .patch(
            "default",
            &PatchParams::default(),
            &Patch::Merge(json!({
                "imagePullSecrets": [{"name": "lp-own"}],
                "metadata": {"annotations": {"pullkeeper.dev/image-pull-secrets": "lp-own"}},
            })),
        )
        .await
        .expect("pullkeeper adds its entry and its record");
    refused_by_policy(
        accounts
            .patch(
                "default",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"team": "attacker"}}})),
            )
            .await,
        "a label on a ServiceAccount",
        "pullkeeper may change only imagePullSecrets",
    );
    refused_by_policy(
        accounts
            .patch(
                "default",
                &PatchParams::default(),
                &Patch::Merge(json!({"automountServiceAccountToken": false})),
            )
            .await,
        "automountServiceAccountToken",
        "pullkeeper may change only imagePullSecrets",
    );
    refused_by_policy(
        accounts
            .patch(
                "default",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {"other": "x"}}})),
            )
            .await,
        "another annotation",
        "pullkeeper may change only imagePullSecrets",
    );
    secrets
        .delete("lp-own", &DeleteParams::default())
        .await
        .expect("pullkeeper deletes its own pull Secret");

    // Pods: only those stuck pulling that a controller recreates. The optional pod-recovery
    // role and the same policy go to an identity of this test's own (granting Pods to the
    // shared ServiceAccount would change what the other tests see it may do).
    let deleter = "lp-pod-deleter";
    Api::<ServiceAccount>::namespaced(admin.clone(), support::PULLKEEPER_NAMESPACE)
        .patch(
            deleter,
            &PatchParams::apply("pullkeeper-tests").force(),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": deleter}})),
        )
        .await
        .expect("sa");
    let recovery = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/kustomize/components/pod-recovery/rbac.yaml"
    ))
    .expect("pod-recovery rbac");
    let apply = PatchParams::apply("pullkeeper-tests").force();
    for doc in serde_yaml_ng::Deserializer::from_str(&recovery) {
        let mut value: Value = <Value as serde::Deserialize>::deserialize(doc).expect("yaml");
        let name = value["metadata"]["name"]
            .as_str()
            .expect("named")
            .to_string();
        match value["kind"].as_str() {
            Some("ClusterRole") => {
                Api::<ClusterRole>::all(admin.clone())
                    .patch(&name, &apply, &Patch::Apply(&value))
                    .await
                    .expect("apply");
            }
            Some("ClusterRoleBinding") => {
                let name = "lp-pod-deleter-recovery".to_string();
                value["metadata"]["name"] = json!(name);
                value["subjects"][0]["name"] = json!(deleter);
                Api::<ClusterRoleBinding>::all(admin.clone())
                    .patch(&name, &apply, &Patch::Apply(&value))
                    .await
                    .expect("apply");
            }
            _ => {}
        }
    }
    support::install_policy_for(&admin, support::PULLKEEPER_NAMESPACE, deleter).await;
    let deleter_client = support::client_for_token(
        &support::sa_token(&admin, support::PULLKEEPER_NAMESPACE, deleter).await,
    )
    .await;
    // The base role too (it may create Secrets), to see when the policy is enforced for this
    // identity before it may delete a Pod.
    let base: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "lp-pod-deleter-base"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "pullkeeper"},
        "subjects": [{"kind": "ServiceAccount", "name": deleter, "namespace": support::PULLKEEPER_NAMESPACE}],
    }))
    .expect("binding");
    Api::<ClusterRoleBinding>::all(admin.clone())
        .patch("lp-pod-deleter-base", &apply, &Patch::Apply(base))
        .await
        .expect("bind the base role");
    wait_policy_enforced(
        &deleter_client,
        &ns,
        "ValidatingAdmissionPolicy 'lp-pod-deleter-guardrails'",
    )
    .await;
    let pods = Api::<Pod>::namespaced(admin.clone(), &ns);
    // A real owner (the garbage collector removes Pods whose owner does not exist); the policy
    // asks for a controller, not for its kind.
    let owner = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(admin.clone(), &ns)
        .create(
            &post,
            &serde_json::from_value(json!({"metadata": {"name": "lp-owner"}})).expect("cm"),
        )
        .await
        .expect("owner");
    let owner_uid = owner.metadata.uid.expect("uid");
    let pod = |name: &str, owned: bool| -> Pod {
        let mut doc = json!({
            "metadata": {"name": name},
            // Bound to a node that does not exist: no scheduler or kubelet changes its status.
            "spec": {"nodeName": "lp-no-such-node",
                     "containers": [{"name": "app", "image": "registry.test/app:1"}]},
        });
        if owned {
            doc["metadata"]["ownerReferences"] = json!([{
                "apiVersion": "v1", "kind": "ConfigMap", "name": "lp-owner",
                "uid": owner_uid, "controller": true}]);
        }
        serde_json::from_value(doc).expect("pod")
    };
    pods.create(&post, &pod("lp-bare", false))
        .await
        .expect("a bare pod");
    pods.create(&post, &pod("lp-stuck", true))
        .await
        .expect("an owned pod");
    // The kubelet's view, written as the kubelet would: waiting to pull.
    pods.patch_status(
        "lp-stuck",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"containerStatuses": [{
            "name": "app", "image": "registry.test/app:1", "imageID": "", "ready": false,
            "restartCount": 0,
            "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}}]}})),
    )
    .await
    .expect("status");
    let as_recovery = Api::<Pod>::namespaced(deleter_client.clone(), &ns);
    let deleted = support::wait_for_named(
        "the pod-recovery role and policy to count",
        WAIT,
        || async {
            match as_recovery
                .delete("lp-bare", &DeleteParams::default())
                .await
            {
                Err(kube::Error::Api(s)) if s.message.contains("lp-pod-deleter-guardrails") => {
                    Some(s.message)
                }
                Err(kube::Error::Api(s)) if s.code == 403 => None,
                other => panic!("deleting a bare Pod: {other:?}"),
            }
        },
    )
    .await;
    assert!(
        deleted.contains("pullkeeper may delete only Pods that have a controller"),
        "{deleted}"
    );
    println!("refused as expected: deleting a Pod that is not stuck: {deleted}");
    as_recovery
        .delete("lp-stuck", &DeleteParams::default())
        .await
        .expect("a Pod stuck pulling with a controller may be deleted");

    // The policy never touches anyone else's writes: the admin does all of the above.
    Api::<ServiceAccount>::namespaced(admin.clone(), &ns)
        .patch(
            "default",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"team": "admins-may"}}})),
        )
        .await
        .expect("the admin labels a ServiceAccount");
    pods.delete("lp-bare", &DeleteParams::default())
        .await
        .expect("the admin deletes a bare Pod");
    for binding in ["lp-pod-deleter-recovery", "lp-pod-deleter-base"] {
        let _ = Api::<ClusterRoleBinding>::all(admin.clone())
            .delete(binding, &DeleteParams::default())
            .await;
    }
    namespaces.cleanup().await;
}

#[tokio::test]
async fn a_registry_the_role_does_not_cover_is_reported_and_the_others_are_served() {
    let test = "lp-denied";
    // A name no earlier run granted (grants stay in the cluster).
    let denied_name = format!("lp-denied-{}", support::random_string(6));
    let denied_name = denied_name.as_str();
    let admin = support::admin_client().await;
    let namespaces = TestNamespaces::new(admin.clone(), test);
    let ns = namespaces.create().await;
    support::wait_account(&admin, &ns, "default").await;
    let endpoint = daemon::TokenEndpoint::start(daemon::Answer::Token {
        username: "robot".into(),
        password: "denied-pw".into(),
        expires_in: 3600,
    })
    .await;
    let dir = daemon::config_dir();
    let selector = support::test_selector(test);
    let served = endpoint.registry_file(
        "registry.served.test",
        "lp-served-pull",
        &selector,
        daemon::SLOW,
    );
    let denied =
        endpoint.registry_file("registry.denied.test", denied_name, &selector, daemon::SLOW);
    daemon::write_config(&dir, "served.yaml", &served);
    daemon::write_config(&dir, "denied.yaml", &denied);
    let kubeconfig = daemon::pullkeeper_kubeconfig(&admin).await;
    // The role names only the first registry's Secret, as a user who forgot one would have it.
    support::grant_secret_names(&admin, &["lp-served-pull".to_string()]).await;
    let d = daemon::spawn(
        &kubeconfig,
        &dir,
        "info",
        &daemon::unique_instance(),
        &["--reload-interval", "1s"],
        &[],
    )
    .await;

    support::wait_password(
        &admin,
        &ns,
        "lp-served-pull",
        "registry.served.test",
        "denied-pw",
    )
    .await;
    support::wait_pull_secrets(&admin, &ns, "default", &["lp-served-pull"]).await;
    assert!(
        support::get_secret(&admin, &ns, denied_name)
            .await
            .is_none()
    );
    assert_eq!(
        d.sample("pullkeeper_registry_secret_access{registry=\"denied\"}")
            .await,
        0.0
    );
    assert_eq!(
        d.sample("pullkeeper_registry_secret_access{registry=\"served\"}")
            .await,
        1.0
    );
    let readyz = reqwest::get(format!("http://{}/readyz", d.admin))
        .await
        .expect("readyz");
    assert!(
        readyz.status().is_success(),
        "the other registries are served"
    );
    let body = readyz.text().await.expect("body");
    assert!(
        body.contains("registry denied not served") && body.contains(&format!("\"{denied_name}\"")),
        "{body}"
    );
    let logs = d.logs();
    assert!(
        logs.contains("registry not served")
            && logs.contains(&format!("add \\\"{denied_name}\\\"")),
        "{logs}"
    );
    // It never tried to read more than the role gives: no watch of that name was refused.
    assert_eq!(
        d.sample("pullkeeper_watch_errors_total{category=\"forbidden\",watch=\"secrets\"}")
            .await,
        0.0
    );

    // `plan` with pullkeeper's identity refuses, naming the Secret and the line to add.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pullkeeper"))
        .args(["plan", "--config"])
        .arg(&dir)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .output()
        .await
        .expect("plan");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("Secret {denied_name}"))
            && stderr.contains(&format!("add \"{denied_name}\" to the resourceNames")),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");

    // Once the role names it, the registry is served without a restart.
    support::grant_secret_names(&admin, &[denied_name.to_string()]).await;
    support::wait_password(
        &admin,
        &ns,
        denied_name,
        "registry.denied.test",
        "denied-pw",
    )
    .await;
    support::wait_pull_secrets(&admin, &ns, "default", &["lp-served-pull", denied_name]).await;
    assert_eq!(
        d.sample("pullkeeper_registry_secret_access{registry=\"denied\"}")
            .await,
        1.0
    );
    d.stop().await;
    namespaces.cleanup().await;
}
