//! Proof that the test platform is real: each test passes only because the piece it names is
//! there (the controller manager, the `ServiceAccount` admission plugin, RBAC with the shipped
//! `ClusterRole`, and registries that check credentials). They need the platform's env (see
//! tests/support/mod.rs); `make test` provides it.

mod support;

use std::time::Duration;

use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, LocalObjectReference, Namespace, Pod, PodSpec, Secret, ServiceAccount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use support::{Registry, TestNamespaces};

#[tokio::test]
async fn a_new_namespace_gets_its_default_service_account_from_the_controller_manager() {
    let client = support::admin_client().await;
    let namespaces = TestNamespaces::new(client.clone(), "default-sa");
    let ns = namespaces.create().await;

    let service_accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let sa = support::wait_for_named(
        &format!("ServiceAccount {ns}/default"),
        Duration::from_mins(1),
        || async { service_accounts.get_opt("default").await.ok().flatten() },
    )
    .await;
    assert_eq!(sa.metadata.namespace.as_deref(), Some(ns.as_str()));

    namespaces.cleanup().await;
}

fn pull_secret_refs(names: &[&str]) -> Vec<LocalObjectReference> {
    names
        .iter()
        .map(|n| LocalObjectReference {
            name: n.to_string(),
        })
        .collect()
}

fn pod(name: &str, service_account: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            service_account_name: Some(service_account.to_string()),
            containers: vec![Container {
                name: "app".to_string(),
                image: Some(Registry::htpasswd().test_image_ref()),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

#[tokio::test]
async fn a_pod_created_with_a_service_account_gets_its_image_pull_secrets_copied_in_by_admission() {
    let client = support::admin_client().await;
    let namespaces = TestNamespaces::new(client.clone(), "admission");
    let ns = namespaces.create().await;

    let service_accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some("puller".to_string()),
            ..ObjectMeta::default()
        },
        image_pull_secrets: Some(pull_secret_refs(&["pk-first", "pk-second"])),
        ..ServiceAccount::default()
    };
    service_accounts
        .create(&PostParams::default(), &sa)
        .await
        .expect("create ServiceAccount puller");

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let created = pods
        .create(&PostParams::default(), &pod("app", "puller"))
        .await
        .expect("create a Pod that names ServiceAccount puller and no imagePullSecrets");
    let copied = created
        .spec
        .expect("the created Pod has a spec")
        .image_pull_secrets;
    assert_eq!(
        copied,
        Some(pull_secret_refs(&["pk-first", "pk-second"])),
        "the ServiceAccount admission plugin must copy the ServiceAccount's imagePullSecrets into the Pod"
    );

    // The same plugin rejects a Pod that names a ServiceAccount which does not exist.
    let err = pods
        .create(&PostParams::default(), &pod("orphan", "no-such-account"))
        .await
        .expect_err("a Pod naming a missing ServiceAccount must be rejected at admission");
    assert!(
        err.to_string().contains("no-such-account"),
        "unexpected rejection: {err}"
    );

    namespaces.cleanup().await;
}

#[tokio::test]
async fn a_client_holding_only_the_pullkeeper_service_account_token_is_refused_what_its_cluster_role_does_not_grant()
 {
    let admin = support::admin_client().await;
    support::install_rbac(&admin).await;
    let namespaces = TestNamespaces::new(admin.clone(), "rbac");
    let ns = namespaces.create().await;

    let token = support::sa_token(
        &admin,
        support::PULLKEEPER_NAMESPACE,
        support::PULLKEEPER_SERVICE_ACCOUNT,
    )
    .await;
    let client = support::client_for_token(&token).await;

    // The client really is the ServiceAccount, not the admin.
    let me = Api::<SelfSubjectReview>::all(client.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .expect("SelfSubjectReview");
    let username = me.status.and_then(|s| s.user_info).and_then(|u| u.username);
    assert_eq!(
        username.as_deref(),
        Some("system:serviceaccount:pullkeeper:pullkeeper")
    );

    // What the ClusterRole grants works...
    Api::<Namespace>::all(client.clone())
        .list(&ListParams::default())
        .await
        .expect("the role grants listing namespaces");
    Api::<ServiceAccount>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .expect("the role grants listing ServiceAccounts");
    // (Secrets only of pullkeeper's own kind: tests/least_privilege.rs tries the others.)
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "pk-rbac-probe", "labels": {
            "app.kubernetes.io/managed-by": "pullkeeper", "pullkeeper.dev/instance": "probe"}},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": "eyJhdXRocyI6e319"},
    }))
    .expect("secret");
    Api::<Secret>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &secret)
        .await
        .expect("the role grants creating Secrets");

    // ...and what it does not grant is refused with 403 Forbidden.
    let config_map = ConfigMap {
        metadata: ObjectMeta {
            name: Some("pk-rbac-probe".to_string()),
            ..ObjectMeta::default()
        },
        ..ConfigMap::default()
    };
    let err = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &config_map)
        .await
        .expect_err("the role does not grant creating ConfigMaps");
    assert!(support::is_forbidden(&err), "expected 403, got {err}");

    let err = Api::<Namespace>::all(client.clone())
        .delete(&ns, &DeleteParams::default())
        .await
        .expect_err("the role does not grant deleting namespaces");
    assert!(support::is_forbidden(&err), "expected 403, got {err}");

    let err = Api::<Pod>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .expect_err("the role does not grant listing Pods");
    assert!(support::is_forbidden(&err), "expected 403, got {err}");

    namespaces.cleanup().await;
}

async fn assert_pulls_only_with_the_right_credentials(registry: &Registry) {
    let image = registry.test_image_ref();

    let good = support::write_scratch_file("authfiles", ".json", &registry.dockerconfigjson());
    support::skopeo_pull(&image, &good)
        .await
        .unwrap_or_else(|e| panic!("pull of {image} with the right credentials failed: {e}"));

    let wrong_password = support::write_scratch_file(
        "authfiles",
        ".json",
        &support::dockerconfigjson(&registry.host, &registry.username, "not-the-password"),
    );
    let err = support::skopeo_pull(&image, &wrong_password)
        .await
        .expect_err("a pull with a wrong password must be refused");
    assert!(err.contains("unauthorized"), "unexpected failure: {err}");

    let other_host = support::write_scratch_file(
        "authfiles",
        ".json",
        &support::dockerconfigjson("127.0.0.1:1", &registry.username, &registry.password),
    );
    let err = support::skopeo_pull(&image, &other_host)
        .await
        .expect_err("a pull without credentials for this registry must be refused");
    assert!(err.contains("unauthorized"), "unexpected failure: {err}");
}

#[tokio::test]
async fn skopeo_pulls_the_test_image_from_the_htpasswd_and_the_token_registry_with_a_right_dockerconfigjson_and_is_refused_with_a_wrong_one()
 {
    assert_pulls_only_with_the_right_credentials(&Registry::htpasswd()).await;
    assert_pulls_only_with_the_right_credentials(&Registry::token()).await;
}
