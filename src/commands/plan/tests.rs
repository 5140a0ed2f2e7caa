use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use base64::Engine as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{LocalObjectReference, Namespace, Secret, ServiceAccount};
use kube::api::ObjectMeta;

use super::report::{Action, build};
use super::*;
use crate::config::ServiceAccountTargets;
use crate::credential::{Credential, Login};
use crate::ownership::SA_ANNOTATION;
use crate::plan::desired_secret;
use crate::render::render;
use crate::sensitive::Sensitive;
use crate::testing::registry;

const CANARY: &str = "canary-pw-5d1e";

fn ns(name: &str) -> Namespace {
    crate::testing::namespace(name, &[])
}

fn sa(namespace: &str, name: &str, pull: &[&str], owned: &str) -> Arc<ServiceAccount> {
    Arc::new(ServiceAccount {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            resource_version: Some("1".into()),
            annotations: (!owned.is_empty())
                .then(|| BTreeMap::from([(SA_ANNOTATION.to_string(), owned.to_string())])),
            ..ObjectMeta::default()
        },
        image_pull_secrets: (!pull.is_empty()).then(|| {
            pull.iter()
                .map(|n| LocalObjectReference { name: (*n).into() })
                .collect()
        }),
        ..ServiceAccount::default()
    })
}

fn issued(reg: &Registry, password: &str, expires_at: Option<DateTime<Utc>>) -> Arc<Issued> {
    let cred = Credential {
        logins: vec![Login {
            server: None,
            username: "robot".into(),
            password: Sensitive::new(password),
        }],
        expires_at,
    };
    Arc::new(Issued {
        rendered: render(reg, &cred).expect("renders"),
        expires_at,
    })
}

/// The Secret as pullkeeper writes it.
fn written(reg: &Registry, namespace: &str, issued: &Arc<Issued>) -> Arc<Secret> {
    let mut s = desired_secret(&Owner::default(), reg, namespace, issued).to_secret();
    s.metadata.resource_version = Some("5".into());
    Arc::new(s)
}

fn fetched(pairs: &[(&Registry, &Arc<Issued>)]) -> HashMap<String, PlannedCredential> {
    pairs
        .iter()
        .map(|(r, i)| {
            (
                r.name.clone(),
                PlannedCredential {
                    source: CredentialSource::Fetched,
                    issued: (*i).clone(),
                },
            )
        })
        .collect()
}

fn issued_of(credentials: &HashMap<String, PlannedCredential>) -> HashMap<String, Arc<Issued>> {
    credentials
        .iter()
        .map(|(n, c)| (n.clone(), c.issued.clone()))
        .collect()
}

#[test]
fn the_assumed_credential_is_what_most_intact_secrets_hold_and_unknown_without_any() {
    let reg = registry("harbor", |_| {});
    let other = registry("quay", |_| {});
    // The annotation keeps whole seconds.
    let now = DateTime::from_timestamp(Utc::now().timestamp(), 0).expect("now");
    let hour = chrono::TimeDelta::hours(1);
    let current = issued(&reg, "pw-new", Some(now + hour));
    let later = issued(&reg, "pw-new", Some(now + hour * 2));
    let old = issued(&reg, "pw-old", Some(now - hour));
    let mut tampered = (*written(&reg, "d", &current)).clone();
    tampered.data = Some(BTreeMap::from([(
        DATA_KEY.to_string(),
        ByteString(b"{\"auths\":{\"evil.example\":{}}}".to_vec()),
    )]));
    let secrets = vec![
        written(&reg, "a", &current),
        written(&reg, "b", &later),
        written(&reg, "c", &old),
        Arc::new(tampered.clone()),
        Arc::new(tampered),
    ];
    let assumed = assumed(
        &Owner::default(),
        &[Arc::new(reg.clone()), Arc::new(other)],
        &secrets,
    );
    let harbor = &assumed["harbor"];
    assert_eq!(harbor.source, CredentialSource::ExistingSecret);
    assert_eq!(harbor.issued.rendered.hash, current.rendered.hash);
    assert_eq!(harbor.issued.rendered.bytes, current.rendered.bytes);
    assert_eq!(harbor.issued.rendered.servers, ["registry.example"]);
    assert_eq!(harbor.issued.expires_at, Some(now + hour * 2));
    let quay = &assumed["quay"];
    assert_eq!(quay.source, CredentialSource::Unknown);
    assert!(quay.issued.rendered.bytes.is_empty());
}

/// team-a: current Secret, `builder` lacks the entry. team-b: a stray data key, a Secret of a
/// registry no longer configured. team-c: a same-named Secret someone else owns. team-d:
/// converged.
fn cluster(reg: &Registry, current: &Arc<Issued>) -> Cluster {
    let mut stray = (*written(reg, "team-b", current)).clone();
    stray
        .data
        .as_mut()
        .expect("data")
        .insert("extra".into(), ByteString(b"x".to_vec()));
    let gone = registry("gone", |_| {});
    let gone_issued = issued(&gone, "gone-pw", None);
    Cluster {
        namespaces: ["team-a", "team-b", "team-c", "team-d"]
            .into_iter()
            .map(ns)
            .collect(),
        secrets: vec![
            written(reg, "team-a", current),
            Arc::new(stray),
            written(&gone, "team-b", &gone_issued),
            written(reg, "team-d", current),
        ],
        accounts: vec![
            sa("team-a", "default", &["harbor-pull"], "harbor-pull"),
            sa("team-a", "builder", &[], ""),
            sa(
                "team-b",
                "default",
                &["mine", "harbor-pull", "gone-pull"],
                "harbor-pull,gone-pull",
            ),
            sa("team-c", "default", &[], ""),
            sa("team-d", "default", &["harbor-pull"], "harbor-pull"),
        ],
    }
}

fn harbor() -> Registry {
    registry("harbor", |r| {
        r.service_accounts = ServiceAccountTargets::Names(BTreeSet::from([
            "default".to_string(),
            "builder".to_string(),
        ]));
    })
}

#[test]
fn the_report_lists_every_change_the_planner_makes_and_counts_its_writes() {
    let reg = harbor();
    let current = issued(&reg, CANARY, None);
    let cluster = cluster(&reg, &current);
    let registries = vec![Arc::new(reg.clone())];
    let credentials = fetched(&[(&reg, &current)]);
    let mut cluster = cluster;
    cluster.secrets.push(Arc::new(Secret {
        metadata: ObjectMeta {
            name: Some("harbor-pull".into()),
            namespace: Some("team-c".into()),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        ..Secret::default()
    }));
    let owner = Owner::default();
    let plans = plan_cluster(&owner, &registries, &issued_of(&credentials), &cluster);
    let report = build(&owner, &registries, &credentials, true, &plans);

    let names: Vec<&str> = report.namespaces.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["team-a", "team-b", "team-c"], "team-d is converged");
    let [a, b, c] = report.namespaces.as_slice() else {
        panic!("three namespaces")
    };
    assert!(a.secrets.is_empty());
    assert_eq!(a.service_accounts.len(), 1);
    assert_eq!(a.service_accounts[0].name, "builder");
    assert_eq!(a.service_accounts[0].add, ["harbor-pull"]);

    let actions: Vec<(&str, Action, Vec<&str>)> = b
        .secrets
        .iter()
        .map(|s| (s.name.as_str(), s.action, s.reasons.clone()))
        .collect();
    assert_eq!(
        actions,
        [
            ("gone-pull", Action::Prune, vec![]),
            ("harbor-pull", Action::Update, vec!["stray-keys"]),
        ]
    );
    assert_eq!(b.service_accounts[0].remove, ["gone-pull"]);
    assert!(b.service_accounts[0].add.is_empty());

    assert!(c.secrets.is_empty() && c.service_accounts.is_empty());
    assert_eq!(c.blocked.len(), 1);
    assert_eq!(c.blocked[0].secret, "harbor-pull");
    assert_eq!(c.blocked[0].registry.as_deref(), Some("harbor"));

    let s = &report.summary;
    assert_eq!((s.create, s.update, s.prune, s.blocked), (0, 1, 1, 1));
    assert_eq!(
        (s.service_accounts, s.entries_added, s.entries_removed),
        (2, 1, 1)
    );
    assert_eq!(
        (
            s.writes.secret_apply,
            s.writes.secret_patch,
            s.writes.secret_delete,
            s.writes.service_account_patch,
            s.writes.total
        ),
        (1, 1, 1, 2, 5)
    );
    assert!(s.changes);
    assert_eq!(s.namespaces, 4);
    assert_eq!(s.namespaces_changed, 2);
    assert_eq!(report.registries[0].namespaces_in_scope, 4);

    let text = report.to_text();
    for line in [
        "  - Secret gone-pull (registry gone): prune",
        "  ~ Secret harbor-pull (registry harbor): update (data keys pullkeeper did not write are removed)",
        "  ~ ServiceAccount builder: imagePullSecrets +harbor-pull",
        "  ~ ServiceAccount default: imagePullSecrets -gone-pull",
        "  ! Secret harbor-pull (registry harbor): blocked:",
        "Plan: 0 Secrets to create, 1 to update, 1 to prune; 2 ServiceAccounts to patch (+1 / -1 entries); 1 blocked; 5 writes in 2 of 4 namespaces.",
    ] {
        assert!(text.contains(line), "{line:?} missing from:\n{text}");
    }
}

#[test]
fn a_rotation_shows_as_a_content_update_and_unknown_content_as_creates() {
    let reg = harbor();
    let old = issued(&reg, "old-pw", None);
    let new = issued(&reg, "new-pw", None);
    let cluster = Cluster {
        namespaces: vec![ns("team-a")],
        secrets: vec![written(&reg, "team-a", &old)],
        accounts: vec![sa("team-a", "default", &["harbor-pull"], "harbor-pull")],
    };
    let quay = registry("quay", |_| {});
    let registries = vec![Arc::new(reg.clone()), Arc::new(quay)];
    let mut credentials = assumed(&Owner::default(), &registries, &cluster.secrets);
    let owner = Owner::default();
    let plans = plan_cluster(&owner, &registries, &issued_of(&credentials), &cluster);
    let report = build(&owner, &registries, &credentials, false, &plans);
    let secrets = &report.namespaces[0].secrets;
    assert_eq!(secrets.len(), 1, "harbor unchanged; quay created");
    assert_eq!(
        (secrets[0].name.as_str(), secrets[0].action),
        ("quay-pull", Action::Create)
    );
    assert_eq!(report.namespaces[0].service_accounts[0].add, ["quay-pull"]);
    assert_eq!(
        report.registries[1].credential.source,
        CredentialSource::Unknown
    );
    assert!(
        report
            .to_text()
            .contains("credential unknown until the first fetch")
    );

    credentials.insert(
        "harbor".into(),
        PlannedCredential {
            source: CredentialSource::Fetched,
            issued: new,
        },
    );
    let plans = plan_cluster(&owner, &registries, &issued_of(&credentials), &cluster);
    let report = build(&owner, &registries, &credentials, true, &plans);
    let harbor = report.namespaces[0]
        .secrets
        .iter()
        .find(|s| s.name == "harbor-pull")
        .expect("harbor-pull updated");
    assert_eq!(harbor.action, Action::Update);
    assert_eq!(harbor.reasons, ["content", "annotations"]);
    assert!(
        report
            .to_text()
            .contains("update (credential content changes)\n")
    );
}

#[test]
fn a_converged_cluster_reports_no_change() {
    let reg = harbor();
    let current = issued(&reg, "pw", None);
    let cluster = Cluster {
        namespaces: vec![ns("team-a")],
        secrets: vec![written(&reg, "team-a", &current)],
        accounts: vec![sa("team-a", "default", &["harbor-pull"], "harbor-pull")],
    };
    let registries = vec![Arc::new(reg)];
    let credentials = assumed(&Owner::default(), &registries, &cluster.secrets);
    let owner = Owner::default();
    let plans = plan_cluster(&owner, &registries, &issued_of(&credentials), &cluster);
    let report = build(&owner, &registries, &credentials, false, &plans);
    assert!(report.namespaces.is_empty());
    assert!(!report.summary.changes);
    assert_eq!(report.summary.writes.total, 0);
    assert!(
        report
            .to_text()
            .contains("No changes: 1 namespace already match the config.")
    );
}

#[test]
fn neither_output_carries_the_credential_in_any_form() {
    let reg = harbor();
    let current = issued(&reg, CANARY, None);
    let cluster = cluster(&reg, &current);
    let registries = vec![Arc::new(reg)];
    let credentials = assumed(&Owner::default(), &registries, &cluster.secrets);
    let owner = Owner::default();
    let plans = plan_cluster(&owner, &registries, &issued_of(&credentials), &cluster);
    let report = build(&owner, &registries, &credentials, false, &plans);
    let b64 = base64::engine::general_purpose::STANDARD;
    let forms = [
        CANARY.to_string(),
        b64.encode(CANARY),
        b64.encode(format!("robot:{CANARY}")),
        b64.encode(&current.rendered.bytes),
        current.rendered.hash.clone(),
    ];
    let json = report.to_json().expect("json");
    for out in [report.to_text(), json.clone(), format!("{report:?}")] {
        for form in &forms {
            assert!(!out.contains(form.as_str()), "{form} in:\n{out}");
        }
    }
    let doc: serde_json::Value = serde_json::from_str(&json).expect("valid json");
    assert_eq!(doc["apiVersion"], "pullkeeper.dev/v1");
    assert_eq!(doc["kind"], "Plan");
    assert_eq!(
        doc["registries"][0]["credential"]["sha256Prefix"],
        current.rendered.hash[..12]
    );
    for key in [
        "namespaces",
        "namespacesChanged",
        "create",
        "update",
        "prune",
        "serviceAccounts",
        "entriesAdded",
        "entriesRemoved",
        "blocked",
        "writes",
        "changes",
    ] {
        assert!(doc["summary"].get(key).is_some(), "summary.{key}");
    }
}
