use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::ByteString;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{LocalObjectReference, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::ObjectMeta;

use super::*;
use crate::ownership::{INSTANCE_LABEL, MANAGED_BY_LABEL, MANAGED_BY_VALUE, owned_entries};

fn secret(ns: &str, name: &str, instance: Option<&str>) -> Arc<Secret> {
    Arc::new(Secret {
        metadata: ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            uid: Some(format!("uid-{ns}-{name}")),
            labels: instance.map(|i| {
                BTreeMap::from([
                    (MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string()),
                    (INSTANCE_LABEL.to_string(), i.to_string()),
                ])
            }),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            ".dockerconfigjson".to_string(),
            ByteString(b"{\"auths\":{\"h\":{\"password\":\"CANARY-pw\"}}}".to_vec()),
        )])),
        ..Secret::default()
    })
}

/// A ServiceAccount listing `pull` in this order, with `records` as (annotation key, value).
fn account(ns: &str, name: &str, pull: &[&str], records: &[(String, &str)]) -> Arc<ServiceAccount> {
    Arc::new(ServiceAccount {
        metadata: ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            resource_version: Some("7".into()),
            annotations: (!records.is_empty()).then(|| {
                records
                    .iter()
                    .map(|(k, v)| (k.clone(), (*v).to_string()))
                    .collect()
            }),
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

fn lease(holder: Option<&str>, renewed_secs_ago: i64, now: Timestamp) -> Lease {
    Lease {
        metadata: ObjectMeta {
            namespace: Some("pullkeeper".into()),
            name: Some("pullkeeper-leader".into()),
            resource_version: Some("99".into()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: holder.map(String::from),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(now - SignedDuration::from_secs(renewed_secs_ago))),
            ..LeaseSpec::default()
        }),
    }
}

/// Applies a JSON patch the way the API server would.
fn patched(sa: &ServiceAccount, patch: &json_patch::Patch) -> ServiceAccount {
    let mut doc = serde_json::to_value(sa).expect("to json");
    json_patch::patch(&mut doc, patch).expect("the patch applies to the observed object");
    serde_json::from_value(doc).expect("from json")
}

fn names(sa: &ServiceAccount) -> Vec<String> {
    sa.image_pull_secrets
        .iter()
        .flatten()
        .map(|r| r.name.clone())
        .collect()
}

fn change_of(removal: &Removal) -> &AccountChange {
    match removal {
        Removal::Account { change, .. } => change,
        other => panic!("not an account removal: {other:?}"),
    }
}

#[test]
fn only_recorded_entries_go_and_user_entries_keep_their_order() {
    let owner = Owner::default();
    let key = owner.account_annotation();
    let sa = account(
        "team-a",
        "default",
        &[
            "user-first",
            "harbor-pull",
            "user-middle",
            "quay-pull",
            "user-last",
        ],
        &[(key.clone(), "harbor-pull,quay-pull")],
    );
    let removals = plan(&owner, &[], std::slice::from_ref(&sa), None);
    assert_eq!(removals.len(), 1);
    let Removal::Account {
        entries,
        annotation,
        change,
        namespace,
    } = &removals[0]
    else {
        panic!("{removals:?}")
    };
    assert_eq!(namespace, "team-a");
    assert_eq!(entries, &["harbor-pull", "quay-pull"]);
    assert_eq!(annotation, &key);
    assert!(change.wanted.is_empty());
    let after = patched(&sa, &change.patch);
    assert_eq!(names(&after), ["user-first", "user-middle", "user-last"]);
    assert!(
        after
            .metadata
            .annotations
            .as_ref()
            .is_none_or(|a| !a.contains_key(&key)),
        "the record goes with the entries: {:?}",
        after.metadata.annotations
    );
    // A second look finds nothing left: cleanup is idempotent.
    assert!(plan(&owner, &[], &[Arc::new(after)], None).is_empty());
}

#[test]
fn an_entry_a_person_listed_before_pullkeeper_recorded_it_stays() {
    // The daemon records only what it added; `user-pull` was there first and stays the user's.
    let owner = Owner::default();
    let sa = account(
        "team-a",
        "default",
        &["user-pull", "harbor-pull"],
        &[(owner.account_annotation(), "harbor-pull")],
    );
    let removals = plan(&owner, &[], std::slice::from_ref(&sa), None);
    assert_eq!(
        names(&patched(&sa, &change_of(&removals[0]).patch)),
        ["user-pull"]
    );
}

#[test]
fn another_installations_secrets_entries_and_record_are_never_touched() {
    let owner = Owner::new("blue");
    let other = Owner::new("green");
    let sa = account(
        "team-a",
        "default",
        &["green-pull", "blue-pull", "user-pull"],
        &[
            (owner.account_annotation(), "blue-pull"),
            (other.account_annotation(), "green-pull"),
        ],
    );
    let secrets = [
        secret("team-a", "blue-pull", Some("blue")),
        secret("team-a", "green-pull", Some("green")),
        secret("team-b", "blue-pull", None),
    ];
    let removals = plan(&owner, &secrets, std::slice::from_ref(&sa), None);
    let deleted: Vec<(&str, &str)> = removals
        .iter()
        .filter_map(|r| match r {
            Removal::Secret {
                namespace, name, ..
            } => Some((namespace.as_str(), name.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(
        deleted,
        [("team-a", "blue-pull")],
        "only blue's labelled Secret; green's and the unlabelled same-named one stay"
    );
    let after = patched(&sa, &change_of(&removals[0]).patch);
    assert_eq!(names(&after), ["green-pull", "user-pull"]);
    assert!(owned_entries(&owner, &after).is_empty());
    assert_eq!(
        owned_entries(&other, &after),
        BTreeSet::from(["green-pull".to_string()])
    );
    assert!(
        after
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(&other.account_annotation())
                && !a.contains_key(&owner.account_annotation()))
    );
}

#[test]
fn accounts_go_first_then_secrets_then_the_lease_each_with_its_precondition() {
    let owner = Owner::default();
    let now = Timestamp::now();
    let record = [(owner.account_annotation(), "harbor-pull")];
    let removals = plan(
        &owner,
        &[
            secret("team-b", "harbor-pull", Some("pullkeeper")),
            secret("team-a", "harbor-pull", Some("pullkeeper")),
        ],
        &[
            account("team-b", "default", &["harbor-pull"], &record),
            account("team-a", "default", &["harbor-pull"], &record),
            account("team-a", "builder", &["mine"], &[]),
        ],
        Some(&lease(None, 3, now)),
    );
    let order: Vec<(&str, &str, &str)> = removals
        .iter()
        .map(|r| (r.kind(), r.namespace(), r.name()))
        .collect();
    assert_eq!(
        order,
        [
            ("ServiceAccount", "team-a", "default"),
            ("ServiceAccount", "team-b", "default"),
            ("Secret", "team-a", "harbor-pull"),
            ("Secret", "team-b", "harbor-pull"),
            ("Lease", "pullkeeper", "pullkeeper-leader"),
        ]
    );
    assert!(
        matches!(&removals[2], Removal::Secret { uid: Some(u), .. } if u == "uid-team-a-harbor-pull")
    );
    assert!(matches!(&removals[4], Removal::Lease { resource_version: Some(v), .. } if v == "99"));
}

#[test]
fn a_record_whose_entries_are_already_gone_is_removed_alone() {
    let owner = Owner::default();
    let sa = account(
        "team-a",
        "default",
        &["user-pull"],
        &[(owner.account_annotation(), "harbor-pull")],
    );
    let removals = plan(&owner, &[], std::slice::from_ref(&sa), None);
    let Removal::Account { entries, .. } = &removals[0] else {
        panic!("{removals:?}")
    };
    assert!(entries.is_empty());
    assert_eq!(
        removals[0].line(true),
        "serviceaccount team-a/default: removed annotation pullkeeper.dev/image-pull-secrets"
    );
    let after = patched(&sa, &change_of(&removals[0]).patch);
    assert_eq!(names(&after), ["user-pull"]);
    assert!(owned_entries(&owner, &after).is_empty());
}

#[test]
fn a_cluster_without_anything_of_the_installation_has_nothing_to_clean() {
    let owner = Owner::default();
    let removals = plan(
        &owner,
        &[secret("team-a", "harbor-pull", None)],
        &[account("team-a", "default", &["harbor-pull"], &[])],
        None,
    );
    assert!(removals.is_empty());
    let report = Report {
        instance: "pullkeeper".into(),
        dry_run: false,
        actions: Vec::new(),
    };
    assert_eq!(
        report.to_text(),
        "nothing to clean for instance pullkeeper\n"
    );
    assert_eq!(report.exit_code(), 0);
}

#[test]
fn a_held_and_fresh_lease_refuses_and_names_holder_and_age() {
    let owner = Owner::default();
    let now = Timestamp::now();
    let refusal = running(&owner, &lease(Some("pullkeeper-7d9f"), 4, now), now).expect("refuses");
    let text = refusal.to_string();
    assert!(
        text.contains("lease pullkeeper/pullkeeper-leader is held by pullkeeper-7d9f, renewed 4s ago (lease duration 15s)"),
        "{text}"
    );
    assert!(text.contains("--force"), "{text}");
}

#[test]
fn a_released_or_expired_lease_means_the_installation_stopped() {
    let owner = Owner::default();
    let now = Timestamp::now();
    assert!(
        running(&owner, &lease(None, 1, now), now).is_none(),
        "released on SIGTERM"
    );
    assert!(running(&owner, &lease(Some(""), 1, now), now).is_none());
    assert!(
        running(&owner, &lease(Some("pullkeeper-7d9f"), 16, now), now).is_none(),
        "not renewed within its 15 s"
    );
}

fn removals_for_report() -> Vec<Removal> {
    let owner = Owner::default();
    plan(
        &owner,
        &[secret("team-a", "harbor-pull", Some("pullkeeper"))],
        &[account(
            "team-a",
            "default",
            &["user-pull", "harbor-pull", "quay-pull"],
            &[(owner.account_annotation(), "harbor-pull,quay-pull")],
        )],
        Some(&lease(None, 1, Timestamp::now())),
    )
}

#[test]
fn dry_run_says_would_for_every_action_and_exits_one() {
    let report = Report {
        instance: "pullkeeper".into(),
        dry_run: true,
        actions: removals_for_report()
            .into_iter()
            .map(|r| (r, Outcome::Planned))
            .collect(),
    };
    assert_eq!(
        report.to_text(),
        "serviceaccount team-a/default: would remove imagePullSecrets harbor-pull, quay-pull\n\
         would delete secret team-a/harbor-pull\n\
         would delete lease pullkeeper/pullkeeper-leader\n\
         instance pullkeeper: would remove 1 Secret(s), 1 ServiceAccount(s) (2 entries), 1 Lease(s); nothing was changed (--dry-run)\n"
    );
    assert_eq!(report.exit_code(), 1);
}

#[test]
fn a_finished_cleanup_prints_what_it_removed_and_exits_zero() {
    let report = Report {
        instance: "pullkeeper".into(),
        dry_run: false,
        actions: removals_for_report()
            .into_iter()
            .map(|r| (r, Outcome::Done))
            .collect(),
    };
    assert_eq!(
        report.to_text(),
        "serviceaccount team-a/default: removed imagePullSecrets harbor-pull, quay-pull\n\
         deleted secret team-a/harbor-pull\n\
         deleted lease pullkeeper/pullkeeper-leader\n\
         instance pullkeeper: removed 1 Secret(s), 1 ServiceAccount(s) (2 entries), 1 Lease(s)\n"
    );
    assert_eq!(report.exit_code(), 0);
    assert!(report.errors().is_empty());
}

#[test]
fn a_failed_removal_is_an_error_line_and_exit_two() {
    let mut actions: Vec<(Removal, Outcome)> = removals_for_report()
        .into_iter()
        .map(|r| (r, Outcome::Done))
        .collect();
    actions[1].1 = Outcome::Failed("delete secret team-a/harbor-pull failed: forbidden".into());
    let report = Report {
        instance: "pullkeeper".into(),
        dry_run: false,
        actions,
    };
    assert_eq!(report.exit_code(), 2);
    assert_eq!(
        report.errors(),
        [
            "cannot remove secret team-a/harbor-pull: delete secret team-a/harbor-pull failed: forbidden"
        ]
    );
    assert!(!report.to_text().contains("deleted secret"));
}

#[test]
fn json_lists_every_action_with_its_result() {
    let report = Report {
        instance: "pullkeeper".into(),
        dry_run: true,
        actions: removals_for_report()
            .into_iter()
            .map(|r| (r, Outcome::Planned))
            .collect(),
    };
    let doc: serde_json::Value =
        serde_json::from_str(&report.to_json().expect("json")).expect("valid json");
    assert_eq!(
        doc,
        serde_json::json!({
            "apiVersion": "pullkeeper.dev/v1",
            "kind": "Cleanup",
            "instance": "pullkeeper",
            "dryRun": true,
            "actions": [
                {"kind": "ServiceAccount", "namespace": "team-a", "name": "default",
                 "removeEntries": ["harbor-pull", "quay-pull"],
                 "removeAnnotation": "pullkeeper.dev/image-pull-secrets", "result": "planned"},
                {"kind": "Secret", "namespace": "team-a", "name": "harbor-pull", "result": "planned"},
                {"kind": "Lease", "namespace": "pullkeeper", "name": "pullkeeper-leader",
                 "result": "planned"}
            ],
            "summary": {"secrets": 1, "serviceAccounts": 1, "entries": 2, "leases": 1, "failed": 0}
        })
    );
}

#[test]
fn no_output_or_debug_carries_a_secrets_value() {
    let report = Report {
        instance: "pullkeeper".into(),
        dry_run: false,
        actions: removals_for_report()
            .into_iter()
            .map(|r| (r, Outcome::Done))
            .collect(),
    };
    for text in [
        report.to_text(),
        report.to_json().expect("json"),
        format!("{report:?}"),
    ] {
        assert!(!text.contains("CANARY"), "{text}");
    }
}
