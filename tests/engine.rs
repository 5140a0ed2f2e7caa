//! The rotation engine end to end on the real control plane: the `pullkeeper` binary runs under
//! its own `ServiceAccount` with the shipped RBAC, each test in its own namespaces with its own
//! daemon and credential endpoint.

mod daemon;
mod support;

use std::time::Duration;

use base64::Engine;
use daemon::{Answer, FAST, SLOW, TokenEndpoint, config_dir, write_config};
use k8s_openapi::api::core::v1::{Event, Pod, Secret, ServiceAccount};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(90);

/// An admin client and the test's own throw-away namespaces.
async fn setup(test: &str) -> (Client, support::TestNamespaces) {
    let client = support::admin_client().await;
    let namespaces = support::TestNamespaces::new(client.clone(), test);
    (client, namespaces)
}

/// A credential endpoint first answering `answer`, and a config directory with one registry
/// file `NAME.yaml` using it: server `registry.NAME.test`, Secret `NAME-pull`, the namespaces of
/// `test`.
async fn one_registry(
    test: &str,
    name: &str,
    answer: Answer,
    refresh: &str,
) -> (TokenEndpoint, std::path::PathBuf) {
    let endpoint = TokenEndpoint::start(answer).await;
    let dir = config_dir();
    write_http_registry(
        &dir,
        &endpoint,
        &format!("{name}.yaml"),
        &format!("registry.{name}.test"),
        &format!("{name}-pull"),
        test,
        refresh,
    );
    (endpoint, dir)
}

/// Writes a registry file using `endpoint` for the namespaces of `test`.
fn write_http_registry(
    dir: &std::path::Path,
    endpoint: &TokenEndpoint,
    file: &str,
    server: &str,
    secret: &str,
    test: &str,
    refresh: &str,
) {
    write_config(
        dir,
        file,
        &endpoint.registry_file(server, secret, &support::test_selector(test), refresh),
    );
}

fn token(password: &str) -> Answer {
    Answer::Token {
        username: "robot".into(),
        password: password.into(),
        expires_in: 3600,
    }
}

#[tokio::test]
async fn one_fetch_fans_out_to_every_target_namespace_and_its_default_account() {
    let test = "engine-fan-out";
    let (client, namespaces) = setup(test).await;
    let outsiders = support::TestNamespaces::new(client.clone(), "engine-fan-out-other");
    let mut names = Vec::new();
    for _ in 0..12 {
        names.push(namespaces.create().await);
    }
    let outsider = outsiders.create().await;
    let (endpoint, dir) = one_registry(test, "fanout", token("fan-out-pw"), SLOW).await;
    let d = daemon::start(&client, &dir, "info").await;

    for ns in &names {
        let s = support::wait_password(
            &client,
            ns,
            "fanout-pull",
            "registry.fanout.test",
            "fan-out-pw",
        )
        .await;
        assert_eq!(s.type_.as_deref(), Some("kubernetes.io/dockerconfigjson"));
        support::wait_pull_secrets(&client, ns, "default", &["fanout-pull"]).await;
    }
    // One provider call for all twelve namespaces.
    assert_eq!(endpoint.calls(), 1);
    assert_eq!(
        d.sample("pullkeeper_refresh_total{registry=\"fanout\",result=\"success\"}")
            .await,
        1.0
    );
    // A namespace outside the selector gets nothing.
    assert!(
        support::get_secret(&client, &outsider, "fanout-pull")
            .await
            .is_none()
    );
    assert!(
        support::pull_secrets(&client, &outsider, "default")
            .await
            .is_empty()
    );
    d.stop().await;
    namespaces.cleanup().await;
    outsiders.cleanup().await;
}

#[tokio::test]
async fn a_namespace_created_later_gets_the_secret_and_new_pods_carry_it() {
    let test = "engine-later";
    let (client, namespaces) = setup(test).await;
    let (_endpoint, dir) = one_registry(test, "later", token("later-pw"), SLOW).await;
    let d = daemon::start(&client, &dir, "info").await;

    let ns = namespaces.create().await;
    support::wait_password(
        &client,
        &ns,
        "later-pull",
        "registry.later.test",
        "later-pw",
    )
    .await;
    support::wait_pull_secrets(&client, &ns, "default", &["later-pull"]).await;
    // The ServiceAccount admission plugin copies the reference into a Pod created now.
    // Held back from scheduling: the image's host exists nowhere, and no node may try it.
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "app"},
        "spec": {
            "schedulingGates": [{"name": "pullkeeper.dev/admission-only"}],
            "containers": [{"name": "app", "image": "registry.later.test/team/app:1"}]
        }
    }))
    .expect("pod");
    let created = Api::<Pod>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &pod)
        .await
        .expect("create pod");
    assert_eq!(support::pod_pull_secrets(&created), ["later-pull"]);
    // And a ServiceAccount created later is left alone (only `default` is targeted).
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "builder"}})).expect("sa");
    Api::<ServiceAccount>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &sa)
        .await
        .expect("create sa");
    // Make pullkeeper sync this namespace again after the ServiceAccount exists: it repairs a
    // deleted Secret, and the same sync would have patched `builder` were it targeted.
    let before = support::get_secret(&client, &ns, "later-pull")
        .await
        .expect("secret");
    Api::<Secret>::namespaced(client.clone(), &ns)
        .delete("later-pull", &DeleteParams::default())
        .await
        .expect("delete");
    support::wait_for_named("later-pull recreated", WAIT, || async {
        support::get_secret(&client, &ns, "later-pull")
            .await
            .filter(|s| s.metadata.uid != before.metadata.uid)
    })
    .await;
    assert!(
        support::pull_secrets(&client, &ns, "builder")
            .await
            .is_empty()
    );
    d.stop().await;
    namespaces.cleanup().await;
}

#[tokio::test]
async fn entries_people_added_survive_rotation_and_removal() {
    let test = "engine-user-entries";
    let (client, namespaces) = setup(test).await;
    let ns = namespaces.create().await;
    support::wait_account(&client, &ns, "default").await;
    let sas = Api::<ServiceAccount>::namespaced(client.clone(), &ns);
    sas.patch(
        "default",
        &PatchParams::default(),
        &Patch::Merge(json!({"imagePullSecrets": [{"name": "team-own"}, {"name": "legacy"}]})),
    )
    .await
    .expect("user patch");
    let (endpoint, dir) = one_registry(test, "users", token("user-pw1"), FAST).await;
    // Its only registry file is removed below: running with none must be allowed explicitly.
    let d = daemon::start_args(&client, &dir, "info", &["--allow-empty-config"]).await;

    support::wait_pull_secrets(
        &client,
        &ns,
        "default",
        &["team-own", "legacy", "users-pull"],
    )
    .await;
    // Someone adds another entry while pullkeeper runs; a rotation follows.
    sas.patch(
        "default",
        &PatchParams::default(),
        &Patch::Json::<()>(
            serde_json::from_value(json!([
                {"op": "add", "path": "/imagePullSecrets/-", "value": {"name": "late-addition"}}
            ]))
            .expect("patch"),
        ),
    )
    .await
    .expect("second user patch");
    endpoint.set(token("user-pw2"));
    support::wait_password(
        &client,
        &ns,
        "users-pull",
        "registry.users.test",
        "user-pw2",
    )
    .await;
    assert_eq!(
        support::pull_secrets(&client, &ns, "default").await,
        ["team-own", "legacy", "users-pull", "late-addition"]
    );
    // The registry leaves the config: only pullkeeper's entry goes.
    std::fs::remove_file(dir.join("users.yaml")).expect("remove config");
    support::wait_pull_secrets(
        &client,
        &ns,
        "default",
        &["team-own", "legacy", "late-addition"],
    )
    .await;
    support::wait_for_named("users-pull pruned", WAIT, || async {
        support::get_secret(&client, &ns, "users-pull")
            .await
            .is_none()
    })
    .await;
    d.stop().await;
    namespaces.cleanup().await;
}

#[tokio::test]
async fn an_edited_or_deleted_secret_and_a_dropped_reference_are_repaired() {
    let test = "engine-drift";
    let (client, namespaces) = setup(test).await;
    let ns = namespaces.create().await;
    let (endpoint, dir) = one_registry(test, "drift", token("drift-pw"), SLOW).await;
    let d = daemon::start(&client, &dir, "info").await;
    let original = support::wait_password(
        &client,
        &ns,
        "drift-pull",
        "registry.drift.test",
        "drift-pw",
    )
    .await;
    support::wait_pull_secrets(&client, &ns, "default", &["drift-pull"]).await;
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns);

    // Edited by hand: repaired in place (same UID, so never a window without a Secret).
    let bogus = base64::engine::general_purpose::STANDARD.encode(r#"{"auths":{"registry.drift.test":{"username":"x","password":"tampered","auth":"eDp0YW1wZXJlZA=="}}}"#);
    secrets
        .patch(
            "drift-pull",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {".dockerconfigjson": bogus}})),
        )
        .await
        .expect("tamper");
    let repaired = support::wait_password(
        &client,
        &ns,
        "drift-pull",
        "registry.drift.test",
        "drift-pw",
    )
    .await;
    assert_eq!(repaired.metadata.uid, original.metadata.uid);

    // Deleted: recreated.
    secrets
        .delete("drift-pull", &DeleteParams::default())
        .await
        .expect("delete");
    let recreated = support::wait_password(
        &client,
        &ns,
        "drift-pull",
        "registry.drift.test",
        "drift-pw",
    )
    .await;
    assert_ne!(recreated.metadata.uid, original.metadata.uid);

    // Reference dropped by hand: added back.
    Api::<ServiceAccount>::namespaced(client.clone(), &ns)
        .patch(
            "default",
            &PatchParams::default(),
            &Patch::Json::<()>(
                serde_json::from_value(json!([
                    {"op": "remove", "path": "/imagePullSecrets/0"}
                ]))
                .expect("patch"),
            ),
        )
        .await
        .expect("drop reference");
    support::wait_pull_secrets(&client, &ns, "default", &["drift-pull"]).await;
    assert_eq!(endpoint.calls(), 1, "repairs reuse the current credential");
    d.stop().await;
    namespaces.cleanup().await;
}

#[tokio::test]
async fn a_foreign_secret_of_the_same_name_is_never_overwritten() {
    let test = "engine-foreign";
    let (client, namespaces) = setup(test).await;
    let theirs = namespaces.create().await;
    let ours = namespaces.create().await;
    support::wait_account(&client, &theirs, "default").await;
    let foreign: Secret = serde_json::from_value(json!({
        "metadata": {"name": "foreign-pull"},
        "type": "Opaque",
        "stringData": {"note": "made by hand"}
    }))
    .expect("secret");
    let before = Api::<Secret>::namespaced(client.clone(), &theirs)
        .create(&PostParams::default(), &foreign)
        .await
        .expect("create");
    let endpoint = TokenEndpoint::start(token("foreign-pw")).await;
    let dir = config_dir();
    write_config(
        &dir,
        "foreign.yaml",
        &endpoint.registry_file(
            "registry.foreign.test",
            "foreign-pull",
            &support::test_selector(test),
            SLOW,
        ),
    );
    let kubeconfig = daemon::pullkeeper_kubeconfig(&client).await;
    let flags = ["--reload-interval", "1s"];
    let d = daemon::start_with(
        &kubeconfig,
        &dir,
        "info",
        &daemon::unique_instance(),
        &flags,
    )
    .await;

    support::wait_password(
        &client,
        &ours,
        "foreign-pull",
        "registry.foreign.test",
        "foreign-pw",
    )
    .await;
    support::wait_for_named("foreign secret gauge", WAIT, || async {
        d.sample("pullkeeper_foreign_secrets{registry=\"foreign\"}")
            .await
            >= 1.0
    })
    .await;
    let events = support::wait_for_named("ForeignSecret event", WAIT, || async {
        let list = Api::<Event>::namespaced(client.clone(), &theirs)
            .list(&ListParams::default())
            .await
            .expect("events");
        list.items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("ForeignSecret"))
    })
    .await;
    assert_eq!(events.involved_object.name.as_deref(), Some("foreign-pull"));
    let after = support::get_secret(&client, &theirs, "foreign-pull")
        .await
        .expect("still there");
    assert_eq!(
        after.metadata.resource_version,
        before.metadata.resource_version
    );
    assert_eq!(after.type_.as_deref(), Some("Opaque"));
    assert!(
        support::pull_secrets(&client, &theirs, "default")
            .await
            .is_empty(),
        "never reference a Secret pullkeeper does not own"
    );
    assert!(d.logs().contains("not pullkeeper's"));
    // Once its owner removes it, pullkeeper's own Secret takes its place (the watch of that
    // name sees the deletion).
    Api::<Secret>::namespaced(client.clone(), &theirs)
        .delete("foreign-pull", &DeleteParams::default())
        .await
        .expect("owner deletes it");
    support::wait_password(
        &client,
        &theirs,
        "foreign-pull",
        "registry.foreign.test",
        "foreign-pw",
    )
    .await;
    support::wait_pull_secrets(&client, &theirs, "default", &["foreign-pull"]).await;
    support::wait_for_named("foreign secret gauge back to 0", WAIT, || async {
        d.sample("pullkeeper_foreign_secrets{registry=\"foreign\"}")
            .await
            == 0.0
    })
    .await;
    d.stop().await;
    namespaces.cleanup().await;
}

#[tokio::test]
async fn failed_fetches_keep_the_last_good_secret_and_are_counted() {
    let test = "engine-failures";
    let (client, namespaces) = setup(test).await;
    let ns = namespaces.create().await;
    let (endpoint, dir) = one_registry(test, "flaky", token("good-pw"), FAST).await;
    let d = daemon::start(&client, &dir, "info").await;
    let good =
        support::wait_password(&client, &ns, "flaky-pull", "registry.flaky.test", "good-pw").await;

    for (answer, category) in [
        (Answer::Status(500), "bad_response"),
        (Answer::Malformed, "bad_response"),
        (Answer::MissingPassword, "bad_response"),
        (Answer::Status(401), "auth_denied"),
    ] {
        let series = format!(
            "pullkeeper_refresh_failures_total{{registry=\"flaky\",category=\"{category}\"}}"
        );
        let before = d.sample(&series).await;
        endpoint.set(answer.clone());
        support::wait_for_named(
            &format!("a counted failure for {answer:?}"),
            WAIT,
            || async { d.sample(&series).await > before },
        )
        .await;
        let now = support::get_secret(&client, &ns, "flaky-pull")
            .await
            .expect("secret stays");
        assert_eq!(
            now.metadata.resource_version, good.metadata.resource_version,
            "{answer:?} changed the Secret"
        );
    }
    assert!(
        d.sample("pullkeeper_refresh_total{registry=\"flaky\",result=\"failure\"}")
            .await
            >= 4.0
    );
    // Recovery rotates in place.
    endpoint.set(token("new-pw"));
    let rotated =
        support::wait_password(&client, &ns, "flaky-pull", "registry.flaky.test", "new-pw").await;
    assert_eq!(rotated.metadata.uid, good.metadata.uid);
    d.stop().await;
    namespaces.cleanup().await;
}

#[tokio::test]
async fn an_invalid_reload_keeps_the_old_config_and_removing_a_registry_prunes_it() {
    let test = "engine-reload";
    let (client, namespaces) = setup(test).await;
    let ns = namespaces.create().await;
    let endpoint = TokenEndpoint::start(token("reload-pw")).await;
    let dir = config_dir();
    let a = endpoint.registry_file(
        "registry.a.test",
        "a-pull",
        &support::test_selector(test),
        SLOW,
    );
    let b = endpoint.registry_file(
        "registry.b.test",
        "b-pull",
        &support::test_selector(test),
        SLOW,
    );
    write_config(&dir, "a.yaml", &a);
    write_config(&dir, "b.yaml", &b);
    let d = daemon::start(&client, &dir, "info").await;
    support::wait_password(&client, &ns, "a-pull", "registry.a.test", "reload-pw").await;
    support::wait_password(&client, &ns, "b-pull", "registry.b.test", "reload-pw").await;
    support::wait_pull_secrets_unordered(&client, &ns, "default", &["a-pull", "b-pull"]).await;

    // An invalid edit to b and the removal of a arrive together: rejected as a whole.
    write_config(&dir, "b.yaml", &format!("{b}secretNmae: typo\n"));
    std::fs::remove_file(dir.join("a.yaml")).expect("remove a");
    support::wait_for_named("rejected reload", WAIT, || async {
        d.sample("pullkeeper_config_reloads_total{result=\"failure\"}")
            .await
            >= 1.0
    })
    .await;
    assert_eq!(
        d.sample("pullkeeper_config_last_reload_successful").await,
        0.0
    );
    assert!(
        d.logs().contains("secretNmae"),
        "the log names the bad field"
    );
    // The old config keeps running: it still repairs a's Secret.
    let old = support::get_secret(&client, &ns, "a-pull")
        .await
        .expect("a-pull");
    Api::<Secret>::namespaced(client.clone(), &ns)
        .delete("a-pull", &DeleteParams::default())
        .await
        .expect("delete a-pull");
    support::wait_for_named("a-pull repaired by the old config", WAIT, || async {
        support::get_secret(&client, &ns, "a-pull")
            .await
            .filter(|s| s.metadata.uid != old.metadata.uid)
    })
    .await;

    // Fixed: a's removal now takes effect, b stays.
    write_config(&dir, "b.yaml", &b);
    support::wait_for_named("a-pull pruned", WAIT, || async {
        support::get_secret(&client, &ns, "a-pull").await.is_none()
    })
    .await;
    support::wait_pull_secrets(&client, &ns, "default", &["b-pull"]).await;
    assert!(support::get_secret(&client, &ns, "b-pull").await.is_some());
    assert_eq!(
        d.sample("pullkeeper_config_last_reload_successful").await,
        1.0
    );
    d.stop().await;
    namespaces.cleanup().await;
}

#[tokio::test]
async fn a_written_secret_lets_skopeo_pull_from_real_registries() {
    let test = "engine-pull";
    let (client, namespaces) = setup(test).await;
    let ns = namespaces.create().await;
    let dir = config_dir();
    for (file, reg) in [
        ("htpasswd.yaml", support::Registry::htpasswd()),
        ("token.yaml", support::Registry::token()),
    ] {
        let password_file = support::write_scratch_file("secrets", ".txt", &reg.password);
        let name = file.trim_end_matches(".yaml");
        write_config(
            &dir,
            file,
            &format!(
                "provider:\n  type: static\n  username: {{value: \"{}\"}}\n  password: {{file: {}}}\nservers: [\"{}\"]\nsecretName: {name}-pull\nnamespaces:\n  selector: \"{}\"\n",
                reg.username,
                password_file.display(),
                reg.host,
                support::test_selector(test)
            ),
        );
    }
    let d = daemon::start(&client, &dir, "info").await;
    for (name, reg) in [
        ("htpasswd", support::Registry::htpasswd()),
        ("token", support::Registry::token()),
    ] {
        let secret = support::wait_password(
            &client,
            &ns,
            &format!("{name}-pull"),
            &reg.host,
            &reg.password,
        )
        .await;
        let authfile = support::scratch_path("authfiles", ".json");
        std::fs::write(
            &authfile,
            &secret.data.as_ref().expect("data")[".dockerconfigjson"].0,
        )
        .expect("authfile");
        support::skopeo_pull(&reg.test_image_ref(), &authfile)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    d.stop().await;
    namespaces.cleanup().await;
}

#[tokio::test]
async fn a_canary_credential_never_reaches_logs_metrics_or_events() {
    let test = "engine-canary";
    let (client, namespaces) = setup(test).await;
    let ns = namespaces.create().await;
    let canary = format!("pk-canary-{}", std::process::id());
    let endpoint = TokenEndpoint::start(token(&canary)).await;
    let dir = config_dir();
    write_http_registry(
        &dir,
        &endpoint,
        "canary.yaml",
        "registry.canary.test",
        "canary-pull",
        test,
        FAST,
    );
    let d = daemon::start(&client, &dir, "trace").await;
    support::wait_password(&client, &ns, "canary-pull", "registry.canary.test", &canary).await;
    // Exercise the error paths with the canary still the current credential.
    for answer in [
        Answer::Status(500),
        Answer::Malformed,
        Answer::MissingPassword,
    ] {
        let before = d
            .sample("pullkeeper_refresh_total{registry=\"canary\",result=\"failure\"}")
            .await;
        endpoint.set(answer);
        support::wait_for_named("a failure", WAIT, || async {
            d.sample("pullkeeper_refresh_total{registry=\"canary\",result=\"failure\"}")
                .await
                > before
        })
        .await;
    }
    let metrics = d.metrics().await;
    let logs = d.stop().await;
    assert!(logs.lines().count() > 20, "trace logging produced output");
    let b64 = base64::engine::general_purpose::STANDARD;
    let forms = [
        canary.clone(),
        b64.encode(&canary),
        b64.encode(format!("robot:{canary}")),
    ];
    let events = Api::<Event>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .expect("events");
    let events = serde_json::to_string(&events.items).expect("json");
    for form in &forms {
        assert!(
            !logs.contains(form.as_str()),
            "credential form {form} leaked into the log"
        );
        assert!(
            !metrics.contains(form.as_str()),
            "credential leaked into metrics"
        );
        assert!(
            !events.contains(form.as_str()),
            "credential leaked into events"
        );
    }
    namespaces.cleanup().await;
}

#[tokio::test]
async fn once_exits_zero_after_a_full_pass_and_non_zero_when_a_fetch_fails() {
    let test = "engine-once";
    let (client, namespaces) = setup(test).await;
    let ns = namespaces.create().await;
    let (endpoint, dir) = one_registry(test, "once", token("once-pw"), SLOW).await;
    let kubeconfig = daemon::pullkeeper_kubeconfig(&client).await;
    daemon::grant_config(&dir).await;
    let instance = daemon::unique_instance();
    let run = || {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_pullkeeper"))
            .args(["once", "--instance", &instance, "--config"])
            .arg(&dir)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .output()
    };
    let out = run().await.expect("run once");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = support::get_secret(&client, &ns, "once-pull")
        .await
        .expect("written by once");
    assert_eq!(
        support::password_in(&s, "registry.once.test").as_deref(),
        Some("once-pw")
    );
    endpoint.set(Answer::Status(503));
    let out = run().await.expect("run once");
    assert_eq!(out.status.code(), Some(1));
    let after = support::get_secret(&client, &ns, "once-pull")
        .await
        .expect("kept");
    assert_eq!(after.metadata.resource_version, s.metadata.resource_version);
    namespaces.cleanup().await;
}

#[test]
fn check_lists_every_problem_with_file_and_field_and_exits_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("a.yaml"), "provider: {type: static, username: {value: u}, password: {value: inline}}\nsecretName: a\nservers: [r.test]\nrefresh: {schedule: \"99 * * * *\"}\n").expect("a");
    std::fs::write(
        dir.path().join("b.yaml"),
        "provider: {type: teleport}\nsecretName: b\n",
    )
    .expect("b");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pullkeeper"))
        .args(["check", "--config"])
        .arg(dir.path())
        .output()
        .expect("run check");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("a.yaml: provider.password.value"), "{err}");
    assert!(err.contains("a.yaml: refresh.schedule"), "{err}");
    assert!(err.contains("b.yaml: provider.type"), "{err}");
    assert!(
        !err.contains("inline"),
        "a secret given inline is not echoed back: {err}"
    );
}

#[tokio::test]
async fn only_the_elected_leader_writes_and_a_follower_takes_over() {
    let test = "engine-leader";
    let (client, namespaces) = setup(test).await;
    let ns = namespaces.create().await;
    let (endpoint, dir) = one_registry(test, "lead", token("leader-pw"), SLOW).await;
    let kubeconfig = daemon::pullkeeper_kubeconfig(&client).await;
    let instance = daemon::unique_instance();
    let flags = |id: &'static str| {
        [
            "--reload-interval",
            "1s",
            "--leader-elect",
            "--identity",
            id,
        ]
    };
    let first = daemon::start_with(&kubeconfig, &dir, "info", &instance, &flags("replica-a")).await;
    support::wait_password(&client, &ns, "lead-pull", "registry.lead.test", "leader-pw").await;
    let second =
        daemon::start_with(&kubeconfig, &dir, "info", &instance, &flags("replica-b")).await;
    // The second replica has looked at the Lease and found it held.
    support::wait_for_named("second replica follows", WAIT, || async {
        second
            .sample("pullkeeper_lease_looks_total{result=\"follow\"}")
            .await
            >= 1.0
    })
    .await;
    assert_eq!(first.sample("pullkeeper_leader").await, 1.0);
    assert_eq!(second.sample("pullkeeper_leader").await, 0.0);
    // The follower neither fetched nor wrote.
    assert_eq!(endpoint.calls(), 1);
    assert_eq!(
        second
            .sample(
                "pullkeeper_writes_total{kind=\"secret\",operation=\"apply\",outcome=\"success\"}"
            )
            .await,
        0.0
    );

    // The leader goes away; the follower takes the expired lease and repairs what drifted.
    first.stop().await;
    Api::<Secret>::namespaced(client.clone(), &ns)
        .delete("lead-pull", &DeleteParams::default())
        .await
        .expect("delete");
    support::wait_for_named("follower becomes leader", WAIT, || async {
        second.sample("pullkeeper_leader").await == 1.0
    })
    .await;
    support::wait_password(&client, &ns, "lead-pull", "registry.lead.test", "leader-pw").await;
    second.stop().await;
    namespaces.cleanup().await;
}

#[tokio::test]
async fn an_ecr_token_from_moto_lands_in_the_namespace_under_each_region_host() {
    let test = "engine-ecr";
    let (client, namespaces) = setup(test).await;
    let ns = namespaces.create().await;
    let dir = config_dir();
    write_config(
        &dir,
        "ecr.yaml",
        &format!(
            "provider:\n  type: ecr\n  regions: [eu-west-1, us-east-1]\n  endpointUrl: {}\nsecretName: ecr-pull\nnamespaces:\n  selector: \"{}\"\n",
            support::moto_url(),
            support::test_selector(test)
        ),
    );
    let kubeconfig = daemon::pullkeeper_kubeconfig(&client).await;
    let envs = [
        ("AWS_ACCESS_KEY_ID", "AKIAPULLKEEPERTEST01"),
        ("AWS_SECRET_ACCESS_KEY", "pullkeeper-test-secret-key"),
        ("AWS_REGION", "eu-west-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    let d = daemon::start_with_env(
        &kubeconfig,
        &dir,
        "info",
        &daemon::unique_instance(),
        &["--reload-interval", "1s"],
        &envs,
    )
    .await;
    // moto answers account 123456789012 with password "<account>-auth-token" and the region's
    // proxy endpoint; one token per region, each under its own host.
    for region in ["eu-west-1", "us-east-1"] {
        let host = format!("123456789012.dkr.ecr.{region}.amazonaws.com");
        let secret =
            support::wait_password(&client, &ns, "ecr-pull", &host, "123456789012-auth-token")
                .await;
        let doc: serde_json::Value =
            serde_json::from_slice(&secret.data.expect("data")[".dockerconfigjson"].0)
                .expect("json");
        assert_eq!(
            doc.pointer(&format!("/auths/{host}/username")),
            Some(&json!("AWS"))
        );
        assert_eq!(
            doc.pointer(&format!("/auths/{host}/auth")),
            Some(&json!(
                base64::engine::general_purpose::STANDARD.encode("AWS:123456789012-auth-token")
            ))
        );
    }
    support::wait_pull_secrets(&client, &ns, "default", &["ecr-pull"]).await;
    // moto's expiry is a fixed date in the past: it is not believed, the default lifetime (12 h)
    // schedules the next refresh, and the scheduler does not spin on it.
    let next = support::wait_for_named("next refresh scheduled", WAIT, || async {
        Some(
            d.sample("pullkeeper_next_refresh_timestamp_seconds{registry=\"ecr\"}")
                .await,
        )
        .filter(|t| *t > 0.0)
    })
    .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!(next - now > 3600.0, "next refresh in {} s", next - now);
    assert!(
        d.sample("pullkeeper_credential_expiry_timestamp_seconds{registry=\"ecr\"}")
            .await
            == 0.0,
        "no expiry gauge claims the credential has expired"
    );
    assert_eq!(
        d.sample("pullkeeper_refresh_total{registry=\"ecr\",result=\"success\"}")
            .await,
        1.0
    );
    d.stop().await;
    namespaces.cleanup().await;
}

#[tokio::test]
async fn a_credential_the_registry_refuses_is_not_written_and_the_old_secret_stays() {
    let test = "engine-verify";
    let (client, namespaces) = setup(test).await;
    let ns = namespaces.create().await;
    let reg = support::Registry::htpasswd();
    let repo = support::test_image();
    let (repository, reference) = repo.split_once(':').expect("repo:tag");
    let password_file = support::write_scratch_file("secrets", ".txt", &reg.password);
    let dir = config_dir();
    write_config(
        &dir,
        "verified.yaml",
        &format!(
            "provider:\n  type: static\n  username: {{value: \"{}\"}}\n  password: {{file: {}}}\nservers: [\"{}\"]\nsecretName: verified-pull\n\
             namespaces:\n  selector: \"{}\"\nrefresh:\n  minInterval: 1s\n  maxInterval: 2s\n  backoffInitial: 1s\n  backoffMax: 2s\n\
             verify:\n  repository: {repository}\n  reference: {reference}\n  scheme: http\n",
            reg.username,
            password_file.display(),
            reg.host,
            support::test_selector(test)
        ),
    );
    let d = daemon::start(&client, &dir, "info").await;
    let good =
        support::wait_password(&client, &ns, "verified-pull", &reg.host, &reg.password).await;
    assert!(
        d.sample("pullkeeper_verifications_total{registry=\"verified\",result=\"success\"}")
            .await
            >= 1.0
    );

    // The source now hands out a wrong password: the registry refuses it, nothing is written.
    std::fs::write(&password_file, "not-the-password").expect("rotate to a bad password");
    support::wait_for_named("a refused verification", WAIT, || async {
        d.sample("pullkeeper_refresh_failures_total{registry=\"verified\",category=\"verification_failed\"}").await >= 1.0
    })
    .await;
    assert!(
        d.sample("pullkeeper_verifications_total{registry=\"verified\",result=\"failure\"}")
            .await
            >= 1.0
    );
    let kept = support::get_secret(&client, &ns, "verified-pull")
        .await
        .expect("kept");
    assert_eq!(
        kept.metadata.resource_version,
        good.metadata.resource_version
    );
    let events = Api::<Event>::namespaced(client.clone(), support::PULLKEEPER_NAMESPACE)
        .list(&ListParams::default())
        .await
        .expect("events");
    assert!(
        events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("RotationFailed")
                && e.message
                    .as_deref()
                    .is_some_and(|m| m.contains("registry verified"))),
        "a RotationFailed event names the registry"
    );
    d.stop().await;
    namespaces.cleanup().await;
}

#[tokio::test]
async fn a_restarted_daemon_on_an_unchanged_cluster_makes_no_write() {
    let test = "engine-restart";
    let (client, namespaces) = setup(test).await;
    let mut names = Vec::new();
    for _ in 0..10 {
        names.push(namespaces.create().await);
    }
    let (_endpoint, dir) = one_registry(test, "restart", token("restart-pw"), SLOW).await;
    let kubeconfig = daemon::pullkeeper_kubeconfig(&client).await;
    let instance = daemon::unique_instance();
    // Fewer workers than namespaces, so reconciles queue up while the caches fill.
    let flags = ["--reload-interval", "1s", "--concurrency", "2"];
    let first = daemon::start_with(&kubeconfig, &dir, "info", &instance, &flags).await;
    for ns in &names {
        support::wait_password(
            &client,
            ns,
            "restart-pull",
            "registry.restart.test",
            "restart-pw",
        )
        .await;
        support::wait_pull_secrets(&client, ns, "default", &["restart-pull"]).await;
    }
    first.stop().await;

    let second = daemon::start_with(&kubeconfig, &dir, "info", &instance, &flags).await;
    // Let it fetch (same credential) and reconcile every namespace from its fresh caches.
    let refreshed = support::wait_for_named("the restarted daemon's refresh", WAIT, || async {
        Some(
            second
                .sample("pullkeeper_last_success_timestamp_seconds{registry=\"restart\"}")
                .await,
        )
        .filter(|t| *t > 0.0)
    })
    .await;
    // A sweep over every namespace that started after that refresh has finished (it may start
    // within the refresh's millisecond).
    support::wait_for_named("a sweep after the refresh", WAIT, || async {
        second
            .sample("pullkeeper_last_sweep_timestamp_seconds")
            .await
            >= refreshed
    })
    .await;
    let metrics = second.metrics().await;
    let writes: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("pullkeeper_writes_total"))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum();
    assert_eq!(
        writes, 0.0,
        "an unchanged cluster costs no write:\n{metrics}"
    );
    for ns in &names {
        assert_eq!(
            support::pull_secrets(&client, ns, "default").await,
            ["restart-pull"]
        );
    }
    second.stop().await;
    namespaces.cleanup().await;
}

/// Seconds since the epoch, as the daemon's timestamp gauges state them.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

/// Waits for a sweep over every namespace that started after `after` (unix seconds).
async fn wait_sweep_after(d: &daemon::Daemon, after: f64) {
    support::wait_for_named("a sweep over every namespace", WAIT, || async {
        d.sample("pullkeeper_last_sweep_timestamp_seconds").await > after
    })
    .await;
}

fn applies(text: &str) -> f64 {
    daemon::sample(
        text,
        "pullkeeper_writes_total{kind=\"secret\",operation=\"apply\",outcome=\"success\"}",
    )
}

#[tokio::test]
async fn a_data_key_added_by_hand_is_removed_and_the_repaired_secret_costs_no_more_writes() {
    let test = "engine-stray-key";
    let (client, namespaces) = setup(test).await;
    let ns = namespaces.create().await;
    let (_endpoint, dir) = one_registry(test, "stray", token("stray-pw"), SLOW).await;
    let d = daemon::start_args(&client, &dir, "info", &["--resync-interval", "1s"]).await;
    support::wait_password(
        &client,
        &ns,
        "stray-pull",
        "registry.stray.test",
        "stray-pw",
    )
    .await;

    // As `kubectl patch secret stray-pull -p '{"data":{"extra":"eA=="}}'` would.
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns);
    secrets
        .patch(
            "stray-pull",
            &PatchParams {
                field_manager: Some("kubectl-patch".into()),
                ..PatchParams::default()
            },
            &Patch::Merge(json!({"data": {"extra": "eA=="}})),
        )
        .await
        .expect("add a key by hand");
    let repaired = support::wait_for_named("the extra key removed", WAIT, || async {
        support::get_secret(&client, &ns, "stray-pull")
            .await
            .filter(|s| {
                s.data
                    .as_ref()
                    .is_some_and(|d| d.keys().eq([".dockerconfigjson"]))
            })
    })
    .await;
    assert_eq!(
        support::password_in(&repaired, "registry.stray.test").as_deref(),
        Some("stray-pw")
    );

    // Converged: several more sweeps over this namespace write nothing.
    let writes = applies(&d.metrics().await);
    for _ in 0..3 {
        wait_sweep_after(&d, unix_now()).await;
    }
    assert_eq!(applies(&d.metrics().await), writes, "no further apply");
    let after = support::get_secret(&client, &ns, "stray-pull")
        .await
        .expect("secret");
    assert_eq!(
        after.metadata.resource_version, repaired.metadata.resource_version,
        "the repaired Secret is not written again"
    );
    d.stop().await;
    namespaces.cleanup().await;
}

#[tokio::test]
async fn a_namespace_whose_service_account_churns_still_gets_every_rotation() {
    let test = "engine-churn";
    let (client, namespaces) = setup(test).await;
    let ns = namespaces.create().await;
    support::wait_account(&client, &ns, "default").await;
    let sas = Api::<ServiceAccount>::namespaced(client.clone(), &ns);
    sas.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "busy"}})).expect("sa"),
    )
    .await
    .expect("create busy");
    let (endpoint, dir) = one_registry(test, "churn", token("churn-0"), FAST).await;
    let d = daemon::start(&client, &dir, "info").await;
    support::wait_password(&client, &ns, "churn-pull", "registry.churn.test", "churn-0").await;

    // Another controller patches a ServiceAccount here about ten times a second.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let sas = sas.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let mut patches = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                sas.patch(
                    "busy",
                    &PatchParams::default(),
                    &Patch::Merge(
                        json!({"metadata": {"annotations": {"churn": patches.to_string()}}}),
                    ),
                )
                .await
                .expect("churn patch");
                patches += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (patches, started.elapsed())
        })
    };
    for round in 1..=4 {
        let password = format!("churn-{round}");
        endpoint.set(token(&password));
        support::wait_password(&client, &ns, "churn-pull", "registry.churn.test", &password).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (patches, elapsed) = churn.await.expect("churn task");
    let rate = f64::from(patches) / elapsed.as_secs_f64();
    println!("churn: {patches} patches in {elapsed:?} ({rate:.1}/s)");
    assert!(
        rate >= 5.0,
        "the churn must reach 5 patches/s, was {rate:.1}"
    );
    d.stop().await;
    namespaces.cleanup().await;
}

#[tokio::test]
async fn an_emptied_config_directory_is_refused_and_the_running_config_keeps_its_secrets() {
    let test = "engine-empty";
    let (client, namespaces) = setup(test).await;
    let ns = namespaces.create().await;
    let (_endpoint, dir) = one_registry(test, "empty", token("empty-pw"), SLOW).await;
    let d = daemon::start(&client, &dir, "info").await;
    support::wait_password(
        &client,
        &ns,
        "empty-pull",
        "registry.empty.test",
        "empty-pw",
    )
    .await;
    support::wait_pull_secrets(&client, &ns, "default", &["empty-pull"]).await;

    // A broken rollout empties the mounted ConfigMap.
    let text = std::fs::read_to_string(dir.join("empty.yaml")).expect("read");
    std::fs::remove_file(dir.join("empty.yaml")).expect("empty the directory");
    support::wait_for_named("the empty config rejected", WAIT, || async {
        d.sample("pullkeeper_config_reloads_total{result=\"failure\"}")
            .await
            >= 1.0
    })
    .await;
    assert_eq!(
        d.sample("pullkeeper_config_last_reload_successful").await,
        0.0,
        "the config-reload alert fires"
    );
    assert!(
        d.logs().contains("--allow-empty-config"),
        "the log says why and how"
    );
    // The running config still manages the namespace: it repairs a deleted Secret.
    let old = support::get_secret(&client, &ns, "empty-pull")
        .await
        .expect("kept");
    Api::<Secret>::namespaced(client.clone(), &ns)
        .delete("empty-pull", &DeleteParams::default())
        .await
        .expect("delete");
    support::wait_for_named("empty-pull repaired", WAIT, || async {
        support::get_secret(&client, &ns, "empty-pull")
            .await
            .filter(|s| s.metadata.uid != old.metadata.uid)
    })
    .await;
    assert_eq!(
        support::pull_secrets(&client, &ns, "default").await,
        ["empty-pull"]
    );

    // The file comes back: the failure state clears.
    write_config(&dir, "empty.yaml", &text);
    support::wait_for_named("reload status back to 1", WAIT, || async {
        d.sample("pullkeeper_config_last_reload_successful").await == 1.0
    })
    .await;
    d.stop().await;

    // Neither `run` nor `check` starts on an empty directory.
    let empty = config_dir();
    for args in [
        vec!["check", "--config"],
        vec!["run", "--kubeconfig", "/nonexistent", "--config"],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pullkeeper"))
            .args(&args)
            .arg(&empty)
            .output()
            .expect("run pullkeeper");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("no registry file"), "{args:?}: {text}");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pullkeeper"))
        .args(["check", "--allow-empty-config", "--config"])
        .arg(&empty)
        .output()
        .expect("run pullkeeper");
    assert_eq!(out.status.code(), Some(0));
    namespaces.cleanup().await;
}

#[tokio::test]
async fn a_leader_stopped_with_sigterm_stops_writing_then_releases_its_lease() {
    let test = "engine-release";
    let (client, namespaces) = setup(test).await;
    let ns = namespaces.create().await;
    let (_endpoint, dir) = one_registry(test, "release", token("release-pw"), SLOW).await;
    let kubeconfig = daemon::pullkeeper_kubeconfig(&client).await;
    let instance = daemon::unique_instance();
    let flags = |id: &'static str| {
        [
            "--reload-interval",
            "1s",
            "--leader-elect",
            "--identity",
            id,
        ]
    };
    let mut first =
        daemon::start_with(&kubeconfig, &dir, "info", &instance, &flags("replica-a")).await;
    support::wait_password(
        &client,
        &ns,
        "release-pull",
        "registry.release.test",
        "release-pw",
    )
    .await;
    let second =
        daemon::start_with(&kubeconfig, &dir, "info", &instance, &flags("replica-b")).await;
    support::wait_for_named("second replica follows", WAIT, || async {
        second
            .sample("pullkeeper_lease_looks_total{result=\"follow\"}")
            .await
            >= 1.0
    })
    .await;

    let stopped = std::time::Instant::now();
    let status = first.terminate().await;
    assert!(status.success(), "a graceful stop exits 0: {status:?}");
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), support::PULLKEEPER_NAMESPACE);
    let lease = leases
        .get(&format!("{instance}-leader"))
        .await
        .expect("lease");
    let holder = lease.spec.and_then(|s| s.holder_identity);
    // Lease identities are the --identity and a per-process suffix.
    assert!(
        !holder
            .as_deref()
            .is_some_and(|h| h.starts_with("replica-a_")),
        "the stopped leader must not keep the Lease until it expires: held by {holder:?}"
    );
    let logs = first.logs();
    let stopped_writing = logs
        .find("stopped writing")
        .expect("stopped writing logged");
    let released = logs.find("lease released").expect("lease released logged");
    assert!(
        stopped_writing < released,
        "writes stop before the Lease goes"
    );

    support::wait_for_named("second replica leads", WAIT, || async {
        second.sample("pullkeeper_leader").await == 1.0
    })
    .await;
    println!(
        "hand-over after SIGTERM: {:?} (Lease duration 15 s)",
        stopped.elapsed()
    );
    second.stop().await;
    namespaces.cleanup().await;
}
