//! Faults survived (issue 20): each test says what it injects and asserts what must hold.
//!
//! - A provider that accepts connections and never answers, and one that answers one byte a
//!   second: each fetch times out, the refresh loop keeps retrying, and a healthy registry in
//!   the same namespaces is served all along.
//! - A registry file truncated mid-write, and one whose symlink dangles (a ConfigMap swap caught
//!   half-way): the reload is rejected, the old config keeps running (it still repairs), nothing
//!   is pruned, and a fixed file is taken.

mod daemon;
mod support;

use std::time::Duration;

use daemon::{Answer, SLOW, TokenEndpoint, config_dir, write_config};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::DeleteParams;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(90);

fn token(password: &str) -> Answer {
    Answer::Token {
        username: "robot".into(),
        password: password.into(),
        expires_in: 3600,
    }
}

/// A loopback "provider" that accepts every connection, reads the request and then either never
/// answers (`drip == false`) or sends a valid-looking answer one byte a second.
async fn bad_provider(drip: bool) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/token", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                if !drip {
                    // Hold the connection open in silence until the client gives up.
                    let _ = stream.read(&mut buf).await;
                    return;
                }
                let body = r#"{"robot": {"name": "robot", "secret": "never-complete"}, "expires_in": 3600}"#;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                for byte in answer.as_bytes() {
                    if stream.write_all(&[*byte]).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            });
        }
    });
    url
}

/// An `http` registry file on `url` with a 2 s request timeout and quick retries.
fn bad_registry_file(url: &str, server: &str, secret: &str, selector: &str) -> String {
    format!(
        "provider:\n  type: http\n  url: {url}\n  timeout: 2s\n  response:\n    username: /robot/name\n    password: /robot/secret\n    expiresIn: /expires_in\n\
         servers: [\"{server}\"]\nsecretName: {secret}\nnamespaces:\n  selector: \"{selector}\"\n\
         refresh:\n  minInterval: 1s\n  maxInterval: 2s\n  backoffInitial: 1s\n  backoffMax: 2s\n"
    )
}

#[tokio::test]
async fn a_hung_or_dripping_provider_times_out_while_other_registries_are_served() {
    let test = "faults-provider";
    let client = support::admin_client().await;
    let namespaces = support::TestNamespaces::new(client.clone(), test);
    let ns = namespaces.create().await;
    let selector = support::test_selector(test);
    let good = TokenEndpoint::start(token("good-pw")).await;
    let dir = config_dir();
    write_config(
        &dir,
        "good.yaml",
        &good.registry_file("registry.good.test", "good-pull", &selector, SLOW),
    );
    let hang = bad_provider(false).await;
    let drip = bad_provider(true).await;
    write_config(
        &dir,
        "hang.yaml",
        &bad_registry_file(&hang, "registry.hang.test", "hang-pull", &selector),
    );
    write_config(
        &dir,
        "drip.yaml",
        &bad_registry_file(&drip, "registry.drip.test", "drip-pull", &selector),
    );
    let d = daemon::start(&client, &dir, "info").await;

    // The healthy registry is served while the other two hang.
    support::wait_password(&client, &ns, "good-pull", "registry.good.test", "good-pw").await;
    support::wait_pull_secrets(&client, &ns, "default", &["good-pull"]).await;

    // Each bad provider's fetch times out, and is retried: at least three failed attempts each.
    for registry in ["hang", "drip"] {
        let series =
            format!("pullkeeper_refresh_failures_total{{registry=\"{registry}\",category=\"unreachable\"}}");
        let failures = support::wait_for_named(&format!("{registry}: three timeouts"), WAIT, || async {
            let n = d.sample(&series).await;
            (n >= 3.0).then_some(n)
        })
        .await;
        eprintln!("{registry}: {failures} failed fetches (unreachable) so far");
    }
    // After those attempts: neither wrote anything, the healthy one is still exactly what the
    // ServiceAccount lists, and the daemon answers its probes.
    for secret in ["hang-pull", "drip-pull"] {
        assert!(
            support::get_secret(&client, &ns, secret).await.is_none(),
            "{secret} was never written"
        );
    }
    assert_eq!(
        support::pull_secrets(&client, &ns, "default").await,
        vec!["good-pull".to_string()]
    );
    assert!(
        d.sample("pullkeeper_refresh_total{registry=\"good\",result=\"success\"}")
            .await
            >= 1.0
    );
    let logs = d.logs();
    assert!(
        logs.contains("registry.hang.test") || logs.contains("\"registry\":\"hang\""),
        "the failing registry is named in the log"
    );
    assert!(!logs.contains("never-complete"), "no credential in the log");
    assert!(!logs.contains("good-pw"), "no credential in the log");
    d.stop().await;
    namespaces.cleanup().await;
}

#[tokio::test]
async fn a_truncated_or_dangling_registry_file_keeps_the_old_config_and_prunes_nothing() {
    let test = "faults-config";
    let client = support::admin_client().await;
    let namespaces = support::TestNamespaces::new(client.clone(), test);
    let ns = namespaces.create().await;
    let endpoint = TokenEndpoint::start(token("cfg-pw")).await;
    let dir = config_dir();
    let text = endpoint.registry_file(
        "registry.cfg.test",
        "cfg-pull",
        &support::test_selector(test),
        SLOW,
    );
    write_config(&dir, "cfg.yaml", &text);
    let d = daemon::start(&client, &dir, "info").await;
    support::wait_password(&client, &ns, "cfg-pull", "registry.cfg.test", "cfg-pw").await;
    support::wait_pull_secrets(&client, &ns, "default", &["cfg-pull"]).await;

    let broken: [(&str, Box<dyn Fn()>); 2] = [
        (
            "truncated mid-write",
            Box::new({
                let path = dir.join("cfg.yaml");
                let half = text[..text.find("secretName").expect("secretName") + 6].to_string();
                // Written in place, not renamed: a reader sees the half-written file.
                move || std::fs::write(&path, &half).expect("truncate")
            }),
        ),
        (
            "a dangling symlink",
            Box::new({
                let path = dir.join("cfg.yaml");
                move || {
                    std::fs::remove_file(&path).expect("remove");
                    std::os::unix::fs::symlink("..data/cfg.yaml", &path).expect("symlink");
                }
            }),
        ),
    ];
    for (how, break_it) in broken {
        let before = d
            .sample("pullkeeper_config_reloads_total{result=\"failure\"}")
            .await;
        break_it();
        support::wait_for_named(&format!("{how}: reload rejected"), WAIT, || async {
            d.sample("pullkeeper_config_reloads_total{result=\"failure\"}")
                .await
                > before
        })
        .await;
        assert_eq!(
            d.sample("pullkeeper_config_last_reload_successful").await,
            0.0,
            "{how}"
        );
        // Nothing pruned, and the old config still repairs its Secret.
        assert_eq!(
            support::pull_secrets(&client, &ns, "default").await,
            vec!["cfg-pull".to_string()],
            "{how}"
        );
        let old = support::get_secret(&client, &ns, "cfg-pull")
            .await
            .unwrap_or_else(|| panic!("{how}: cfg-pull was pruned"));
        Api::<Secret>::namespaced(client.clone(), &ns)
            .delete("cfg-pull", &DeleteParams::default())
            .await
            .expect("delete cfg-pull");
        support::wait_for_named(&format!("{how}: repaired by the old config"), WAIT, || async {
            support::get_secret(&client, &ns, "cfg-pull")
                .await
                .filter(|s| s.metadata.uid != old.metadata.uid)
        })
        .await;
        // Put right again: taken.
        let _ = std::fs::remove_file(dir.join("cfg.yaml"));
        write_config(&dir, "cfg.yaml", &text);
        support::wait_for_named(&format!("{how}: fixed file taken"), WAIT, || async {
            d.sample("pullkeeper_config_last_reload_successful").await >= 1.0
        })
        .await;
    }
    let logs = d.logs();
    assert!(logs.contains("cfg.yaml"), "the log names the file");
    assert!(!logs.contains("cfg-pw"), "no credential in the log");
    d.stop().await;
    namespaces.cleanup().await;
}
