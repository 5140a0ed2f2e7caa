//! Proof that the test node is real: the kubelet of `tests/cluster/up` pulls through containerd
//! from the loopback registries with exactly the credentials a Pod carries. Without a credential
//! it fails with the registry's 401; with the Secrets pullkeeper writes (the daemon runs as a
//! child process under the shipped RBAC), Pods run, also after a rotation that invalidates the
//! old password. Pods use the host network (the test image needs none) and are read back through
//! the API and the kubelet's `podLogsDir`, never by dialling the node.

mod daemon;
mod support;

use std::path::Path;
use std::time::Duration;

use daemon::{config_dir, write_config};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Client;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use support::{Registry, TestNamespaces};

/// Liveness bounds, far above what the node needs (a Pod runs within a few seconds; the first
/// ImagePullBackOff comes after about 15 s).
const WAIT: Duration = Duration::from_mins(2);

/// A registry file for pullkeeper's `static` provider: `username`, the password read from
/// `password_file` (re-read at every refresh, every 1–2 s), for `server`.
fn static_registry(
    username: &str,
    password_file: &Path,
    server: &str,
    secret: &str,
    test: &str,
) -> String {
    format!(
        "provider:\n  type: static\n  username: {{value: \"{username}\"}}\n  password: {{file: {}}}\n\
         servers: [\"{server}\"]\nsecretName: {secret}\nnamespaces:\n  selector: \"{}\"\n\
         refresh:\n  minInterval: 1s\n  maxInterval: 2s\n  backoffInitial: 1s\n  backoffMax: 2s\n",
        password_file.display(),
        support::test_selector(test)
    )
}

async fn wait_default_sa_pull_secrets(client: &Client, ns: &str, want: &[&str]) {
    support::wait_for_named(
        &format!("ServiceAccount {ns}/default naming {want:?}"),
        WAIT,
        || async {
            let names = support::pull_secrets(client, ns, "default").await;
            want.iter().all(|w| names.iter().any(|n| n == w))
        },
    )
    .await;
}

/// The password a dockerconfigjson Secret holds for `server`.
async fn secret_password(client: &Client, ns: &str, name: &str, server: &str) -> Option<String> {
    let secret: Secret = Api::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .ok()
        .flatten()?;
    let bytes = secret.data?.get(".dockerconfigjson")?.0.clone();
    let doc: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    doc.pointer(&format!("/auths/{server}/password"))?
        .as_str()
        .map(String::from)
}

/// The container ran the test image's entrypoint (pk-sleep), as the kubelet's log shows, and the
/// image it runs is the registries' test image.
async fn assert_ran_the_test_image(pod: &Pod, container: &str) {
    let digest = support::test_image_digest();
    let status = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == container))
        .unwrap_or_else(|| panic!("no status for container {container}"));
    assert!(
        status.image_id.ends_with(&digest),
        "container {container} runs {} instead of the test image {digest}",
        status.image_id
    );
    let log = support::wait_for_named(
        &format!("the kubelet's log of container {container}"),
        WAIT,
        || async { support::node_container_log(pod, container).filter(|l| !l.is_empty()) },
    )
    .await;
    assert!(
        log.contains("running until SIGTERM"),
        "container {container} did not run pk-sleep; its log: {log}"
    );
}

#[tokio::test]
async fn a_pod_without_a_credential_for_the_private_registry_ends_in_image_pull_back_off_with_the_kubelets_401_event()
 {
    let client = support::admin_client().await;
    let namespaces = TestNamespaces::new(client.clone(), "node-no-credential");
    let ns = namespaces.create().await;
    let image = Registry::htpasswd().test_image_ref();

    let pod =
        support::create_node_pod(&client, &ns, "no-credential", &[("app", &image)], "Always").await;
    assert_eq!(
        pod.spec.as_ref().and_then(|s| s.image_pull_secrets.clone()),
        None,
        "the Pod must carry no credential"
    );
    support::wait_container_waiting(&client, &ns, "no-credential", "ImagePullBackOff", WAIT).await;

    let events = support::events_of(&client, &ns, &support::pod_uid(&pod)).await;
    let failed: Vec<String> = events
        .iter()
        .filter(|e| e.reason.as_deref() == Some("Failed"))
        .filter(|e| e.source.as_ref().and_then(|s| s.component.as_deref()) == Some("kubelet"))
        .filter_map(|e| e.message.clone())
        .collect();
    assert!(
        failed.iter().any(|m| {
            let m = m.to_ascii_lowercase();
            m.contains(&image) && (m.contains("401") || m.contains("unauthorized"))
        }),
        "expected the kubelet's Failed event naming {image} with 401/unauthorized; got {failed:?}"
    );

    namespaces.cleanup().await;
}

#[tokio::test]
async fn with_pullkeeper_running_a_deployment_created_afterwards_runs_on_the_node_pulling_from_the_htpasswd_and_the_token_registry()
 {
    let test = "node-deployment";
    let client = support::admin_client().await;
    let namespaces = TestNamespaces::new(client.clone(), test);
    let ns = namespaces.create().await;
    let (htpasswd, token) = (Registry::htpasswd(), Registry::token());

    let dir = config_dir();
    for (file, reg) in [("htpasswd", &htpasswd), ("token", &token)] {
        let password_file = support::write_scratch_file("secrets", ".txt", &reg.password);
        write_config(
            &dir,
            &format!("{file}.yaml"),
            &static_registry(
                &reg.username,
                &password_file,
                &reg.host,
                &format!("{file}-pull"),
                test,
            ),
        );
    }
    let d = daemon::start(&client, &dir, "info").await;
    wait_default_sa_pull_secrets(&client, &ns, &["htpasswd-pull", "token-pull"]).await;

    // No nodeName: the replicaset controller makes the Pod, the scheduler places it.
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "app"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "pk-node-test"}},
            "template": {
                "metadata": {"labels": {"app": "pk-node-test"}},
                "spec": support::node_pod_spec(
                    &[("from-htpasswd", &htpasswd.test_image_ref()), ("from-token", &token.test_image_ref())],
                    "Always",
                    None,
                ),
            },
        },
    }))
    .expect("a valid Deployment");
    Api::<Deployment>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &deployment)
        .await
        .expect("create the Deployment");

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let name = support::wait_for_named("the Deployment's Pod", WAIT, || async {
        pods.list(&ListParams::default().labels("app=pk-node-test"))
            .await
            .ok()
            .and_then(|l| l.items.into_iter().next())
            .and_then(|p| p.metadata.name)
    })
    .await;
    let pod = support::wait_pod_running(&client, &ns, &name, WAIT).await;

    let spec = pod.spec.clone().expect("spec");
    assert_eq!(spec.node_name, Some(support::node_name()));
    let refs: Vec<String> = spec
        .image_pull_secrets
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert!(
        refs.contains(&"htpasswd-pull".to_string()) && refs.contains(&"token-pull".to_string()),
        "admission copied pullkeeper's Secrets into the Pod: {refs:?}"
    );
    let events = support::events_of(&client, &ns, &support::pod_uid(&pod)).await;
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("Scheduled")),
        "the scheduler placed the Pod: {:?}",
        events.iter().map(|e| &e.reason).collect::<Vec<_>>()
    );
    assert_ran_the_test_image(&pod, "from-htpasswd").await;
    assert_ran_the_test_image(&pod, "from-token").await;

    d.stop().await;
    namespaces.cleanup().await;
}

#[tokio::test]
async fn after_a_rotation_that_invalidates_the_old_password_a_new_pod_still_pulls_with_image_pull_policy_always()
 {
    let test = "node-rotation";
    let client = support::admin_client().await;
    let namespaces = TestNamespaces::new(client.clone(), test);
    let ns = namespaces.create().await;
    let token = Registry::token();

    // A user of our own at the token server, so the rotation touches no other test's credential.
    let user = format!("pk-rotation-{}", support::random_string(8));
    let (old_password, new_password) = (support::random_string(20), support::random_string(20));
    support::set_token_registry_user(&user, Some(&old_password));
    let password_file = support::write_scratch_file("secrets", ".txt", &old_password);
    let dir = config_dir();
    write_config(
        &dir,
        "rotated.yaml",
        &static_registry(&user, &password_file, &token.host, "rotated-pull", test),
    );
    let d = daemon::start(&client, &dir, "info").await;
    wait_default_sa_pull_secrets(&client, &ns, &["rotated-pull"]).await;

    let image = token.test_image_ref();
    support::create_node_pod(&client, &ns, "before", &[("app", &image)], "Always").await;
    support::wait_pod_running(&client, &ns, "before", WAIT).await;

    // The credential source rotates: the old password stops working at the registry's token
    // server at once, and pullkeeper's source hands out the new one.
    support::set_token_registry_user(&user, Some(&new_password));
    std::fs::write(&password_file, &new_password).expect("rotate the password file");
    let old_authfile = support::write_scratch_file(
        "authfiles",
        ".json",
        &support::dockerconfigjson(&token.host, &user, &old_password),
    );
    let err = support::skopeo_pull(&image, &old_authfile)
        .await
        .expect_err("the old password must be refused after the rotation");
    assert!(err.contains("unauthorized"), "unexpected failure: {err}");
    support::wait_for_named("the Secret holding the new password", WAIT, || async {
        secret_password(&client, &ns, "rotated-pull", &token.host)
            .await
            .as_deref()
            == Some(new_password.as_str())
    })
    .await;

    // A new Pod with imagePullPolicy Always really pulls again, with the rotated Secret.
    let after = support::create_node_pod(&client, &ns, "after", &[("app", &image)], "Always").await;
    let running = support::wait_pod_running(&client, &ns, "after", WAIT).await;
    let events = support::events_of(&client, &ns, &support::pod_uid(&after)).await;
    assert!(
        events.iter().any(|e| e.reason.as_deref() == Some("Pulled")
            && e.message
                .as_deref()
                .is_some_and(|m| m.contains("Successfully pulled"))),
        "the new Pod pulled the image itself: {:?}",
        events
            .iter()
            .map(|e| (&e.reason, &e.message))
            .collect::<Vec<_>>()
    );
    assert_ran_the_test_image(&running, "app").await;

    d.stop().await;
    support::set_token_registry_user(&user, None);
    namespaces.cleanup().await;
}

/// The Pod network is local only: a Pod off the host network gets an address on the node's
/// bridge and exactly two routes, its subnet and the `kubernetes` Service address (made local on
/// the host, forwarded to the API server), which it reaches. Nothing else is routable from it.
/// Read from inside the Pod's network namespace (`nsenter` on its container's pid, from
/// containerd): no packet is sent anywhere but to 10.0.0.1.
#[tokio::test]
async fn a_pod_on_the_pod_network_can_reach_the_api_server_and_nothing_else() {
    let client = support::admin_client().await;
    let namespaces = TestNamespaces::new(client.clone(), "node-podnet");
    let ns = namespaces.create().await;
    let registry = Registry::htpasswd();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "pull"},
        "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": registry.dockerconfigjson()},
    }))
    .expect("secret");
    Api::<Secret>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &secret)
        .await
        .expect("create the pull Secret");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "podnet"},
        "spec": {
            "nodeName": support::node_name(),
            "terminationGracePeriodSeconds": 5,
            "imagePullSecrets": [{"name": "pull"}],
            "containers": [{"name": "app", "image": registry.test_image_ref()}],
        },
    }))
    .expect("pod");
    Api::<Pod>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &pod)
        .await
        .expect("create the Pod");
    let running = support::wait_pod_running(&client, &ns, "podnet", WAIT).await;
    let ip = running
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("a Pod address");
    assert!(
        ip.starts_with("10.88.0."),
        "an address on the node's bridge: {ip}"
    );

    let id = running
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.first()?.container_id.clone())
        .expect("container id");
    let id = id.trim_start_matches("containerd://").to_string();
    let socket = support::env("PK_NODE_CONTAINERD_SOCK");
    let tasks = command("ctr", &["--address", &socket, "-n", "k8s.io", "task", "ls"]).await;
    let pid = tasks
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next()? == id).then(|| f.next().map(str::to_string))?
        })
        .unwrap_or_else(|| panic!("no task {id} in:\n{tasks}"));

    let routes = command("nsenter", &["-t", &pid, "-n", "ip", "-4", "route", "show"]).await;
    let mut routes: Vec<String> = routes
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    routes.sort();
    assert_eq!(
        routes,
        [
            "10.0.0.1 via 10.88.0.1 dev eth0".to_string(),
            format!("10.88.0.0/24 dev eth0 proto kernel scope link src {ip}"),
        ],
        "the Pod's only routes"
    );
    let reached = command(
        "nsenter",
        &[
            "-t",
            &pid,
            "-n",
            "python3",
            "-c",
            "import socket; socket.create_connection(('10.0.0.1', 443), timeout=5).close(); print('connected')",
        ],
    )
    .await;
    assert_eq!(
        reached.trim(),
        "connected",
        "the API server through 10.0.0.1"
    );
    namespaces.cleanup().await;
}

/// Runs a command; panics with its output when it fails. Returns stdout.
async fn command(program: &str, args: &[&str]) -> String {
    let out = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
