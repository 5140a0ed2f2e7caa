use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    LocalObjectReference, Namespace, NamespaceStatus, Secret, ServiceAccount,
};
use kube::api::ObjectMeta;
use serde_json::json;

use super::*;
use crate::config::ServiceAccountTargets;
use crate::credential::{Credential, Login};
use crate::ownership::{OPT_OUT_ANNOTATION, SA_ANNOTATION, owned_entries};
use crate::plan::state::{AccountState, NamespaceState, SecretState};
use crate::render::render;
use crate::sensitive::Sensitive;
use crate::testing::registry;

fn ns(name: &str) -> Namespace {
    crate::testing::namespace(name, &[])
}

fn sa(name: &str, pull: &[&str], owned: Option<&str>) -> Arc<ServiceAccount> {
    Arc::new(ServiceAccount {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("team-a".into()),
            resource_version: Some("42".into()),
            annotations: owned
                .map(|o| BTreeMap::from([(SA_ANNOTATION.to_string(), o.to_string())])),
            ..ObjectMeta::default()
        },
        image_pull_secrets: if pull.is_empty() {
            None
        } else {
            Some(
                pull.iter()
                    .map(|n| LocalObjectReference { name: (*n).into() })
                    .collect(),
            )
        },
        ..ServiceAccount::default()
    })
}

fn issued(reg: &crate::config::Registry, password: &str) -> Arc<Issued> {
    let cred = Credential {
        logins: vec![Login {
            server: None,
            username: "robot".into(),
            password: Sensitive::new(password),
        }],
        expires_at: None,
    };
    Arc::new(Issued {
        rendered: render(reg, &cred).expect("renders"),
        expires_at: None,
    })
}

fn creds(pairs: &[(&str, Arc<Issued>)]) -> HashMap<String, Arc<Issued>> {
    pairs
        .iter()
        .map(|(n, i)| ((*n).to_string(), i.clone()))
        .collect()
}

/// Plans `namespace` for the default installation from these cached objects.
fn plan_with(
    registries: &[Arc<crate::config::Registry>],
    credentials: &HashMap<String, Arc<Issued>>,
    namespace: &Namespace,
    secrets: Vec<Arc<Secret>>,
    service_accounts: Vec<Arc<ServiceAccount>>,
    foreign: &HashSet<String>,
) -> NamespacePlan {
    #![allow(clippy::needless_pass_by_value)] // the tests build the lists in the call
    plan_as(
        &Owner::default(),
        registries,
        credentials,
        namespace,
        &secrets,
        &service_accounts,
        foreign,
    )
}

/// Plans `namespace` for `owner` from API objects, in the planning form the caches hold; the
/// names in `foreign` are same-named Secrets someone else owns.
fn plan_as(
    owner: &Owner,
    registries: &[Arc<crate::config::Registry>],
    credentials: &HashMap<String, Arc<Issued>>,
    namespace: &Namespace,
    secrets: &[Arc<Secret>],
    service_accounts: &[Arc<ServiceAccount>],
    foreign: &HashSet<String>,
) -> NamespacePlan {
    let namespace = NamespaceState::of(namespace);
    let secrets: Vec<SecretState> = secrets
        .iter()
        .map(|s| SecretState::of(s, owner))
        .chain(foreign.iter().map(|name| SecretState {
            name: name.clone(),
            ..SecretState::default()
        }))
        .collect();
    let accounts: Vec<Arc<AccountState>> = service_accounts
        .iter()
        .map(|sa| Arc::new(AccountState::of(sa, owner)))
        .collect();
    let observed = Observed {
        namespace: &namespace,
        secrets: &secrets,
        service_accounts: &accounts,
        frozen: &BTreeSet::new(),
        now: chrono::Utc::now(),
    };
    plan_namespace(owner, registries, credentials, &observed)
}

/// The Secret as pullkeeper writes it, as the cache would hold it.
fn secret_of(
    owner: &Owner,
    reg: &crate::config::Registry,
    namespace: &str,
    issued: &Issued,
) -> Secret {
    desired_secret(owner, reg, namespace, &Arc::new(issued.clone())).to_secret()
}

/// Applies a JSON patch to the `ServiceAccount` the way the API server would.
fn patched(account: &ServiceAccount, patch: &Patch) -> ServiceAccount {
    let mut doc = serde_json::to_value(account).expect("to json");
    json_patch::patch(&mut doc, patch).expect("patch applies to the observed object");
    serde_json::from_value(doc).expect("from json")
}

fn pull_names(account: &ServiceAccount) -> Vec<String> {
    account
        .image_pull_secrets
        .iter()
        .flatten()
        .map(|r| r.name.clone())
        .collect()
}

#[test]
fn new_namespace_gets_the_secret_and_a_patched_default_account() {
    let reg = Arc::new(registry("harbor", |_| {}));
    let c = creds(&[("harbor", issued(&reg, "pw1"))]);
    let namespace = ns("team-a");
    let foreign = HashSet::new();
    let default = sa("default", &[], None);
    let plan = plan_with(
        &[reg],
        &c,
        &namespace,
        vec![],
        vec![default.clone(), sa("builder", &[], None)],
        &foreign,
    );
    assert_eq!(plan.secrets.len(), 1);
    let SecretChange::Apply {
        secret, existing, ..
    } = &plan.secrets[0]
    else {
        panic!("expected apply")
    };
    assert!(!existing);
    let secret = secret.to_secret();
    assert_eq!(
        secret.type_.as_deref(),
        Some("kubernetes.io/dockerconfigjson")
    );
    let labels = secret.metadata.labels.clone().expect("labels");
    assert_eq!(
        labels.get(MANAGED_BY_LABEL).map(String::as_str),
        Some("pullkeeper")
    );
    assert_eq!(
        labels.get(REGISTRY_LABEL).map(String::as_str),
        Some("harbor")
    );
    // Only `default` is targeted; `builder` is untouched.
    assert_eq!(plan.accounts.len(), 1);
    let after = patched(&default, &plan.accounts[0].patch);
    assert_eq!(pull_names(&after), ["harbor-pull"]);
    assert_eq!(
        owned_entries(&Owner::default(), &after),
        BTreeSet::from(["harbor-pull".to_string()])
    );
}

#[test]
fn an_unchanged_namespace_plans_no_write() {
    let reg = Arc::new(registry("harbor", |_| {}));
    let i = issued(&reg, "pw1");
    let secret = Arc::new(secret_of(&Owner::default(), &reg, "team-a", &i));
    let namespace = ns("team-a");
    let foreign = HashSet::new();
    let plan = plan_with(
        &[reg],
        &creds(&[("harbor", i)]),
        &namespace,
        vec![secret],
        vec![sa("default", &["harbor-pull"], Some("harbor-pull"))],
        &foreign,
    );
    assert!(
        plan.secrets.is_empty() && plan.accounts.is_empty(),
        "{plan:?}"
    );
}

#[test]
fn a_hand_edited_secret_is_planned_for_repair_and_a_rotation_for_update() {
    let reg = Arc::new(registry("harbor", |_| {}));
    let i = issued(&reg, "pw1");
    let mut edited = secret_of(&Owner::default(), &reg, "team-a", &i);
    edited.data = Some(BTreeMap::from([(
        DATA_KEY.to_string(),
        ByteString(b"{\"auths\":{}}".to_vec()),
    )]));
    let namespace = ns("team-a");
    let foreign = HashSet::new();
    let plan = plan_with(
        std::slice::from_ref(&reg),
        &creds(&[("harbor", i.clone())]),
        &namespace,
        vec![Arc::new(edited)],
        vec![],
        &foreign,
    );
    assert!(matches!(
        &plan.secrets[..],
        [SecretChange::Apply { existing: true, .. }]
    ));

    let current = Arc::new(secret_of(&Owner::default(), &reg, "team-a", &i));
    let plan = plan_with(
        std::slice::from_ref(&reg),
        &creds(&[("harbor", issued(&reg, "pw2"))]),
        &namespace,
        vec![current],
        vec![],
        &foreign,
    );
    assert!(matches!(
        &plan.secrets[..],
        [SecretChange::Apply { existing: true, .. }]
    ));
}

#[test]
fn entries_pullkeeper_did_not_add_are_never_removed_or_reordered() {
    let account = sa(
        "default",
        &["user-a", "harbor-pull", "user-b", "old-pull"],
        Some("harbor-pull,old-pull"),
    );
    // pullkeeper now wants nothing: only its two entries go, the user's keep their order.
    let patch = account_patch(
        &Owner::default(),
        &AccountState::of(&account, &Owner::default()),
        &BTreeSet::new(),
    )
    .expect("a change");
    let after = patched(&account, &patch);
    assert_eq!(pull_names(&after), ["user-a", "user-b"]);
    assert!(owned_entries(&Owner::default(), &after).is_empty());
    assert!(
        !after
            .metadata
            .annotations
            .expect("annotations")
            .contains_key(SA_ANNOTATION)
    );
    // The patch is guarded by a test of the observed list.
    assert_eq!(
        serde_json::to_value(&patch.0[0]).expect("json"),
        json!({"op": "test", "path": "/imagePullSecrets", "value": [{"name": "user-a"}, {"name": "harbor-pull"}, {"name": "user-b"}, {"name": "old-pull"}]})
    );
}

#[test]
fn an_entry_a_person_added_by_hand_stays_theirs() {
    let account = sa("default", &["harbor-pull"], None);
    assert!(
        account_patch(
            &Owner::default(),
            &AccountState::of(&account, &Owner::default()),
            &BTreeSet::from(["harbor-pull".to_string()])
        )
        .is_none()
    );
    assert!(
        account_patch(
            &Owner::default(),
            &AccountState::of(&account, &Owner::default()),
            &BTreeSet::new()
        )
        .is_none()
    );
}

#[test]
fn a_dropped_reference_is_added_back() {
    let account = sa("default", &["user-a"], Some("harbor-pull"));
    let patch = account_patch(
        &Owner::default(),
        &AccountState::of(&account, &Owner::default()),
        &BTreeSet::from(["harbor-pull".to_string()]),
    )
    .expect("a change");
    let after = patched(&account, &patch);
    assert_eq!(pull_names(&after), ["user-a", "harbor-pull"]);
}

#[test]
fn a_guarded_patch_fails_when_the_list_changed_since_it_was_observed() {
    let observed = sa("default", &["user-a"], None);
    let patch = account_patch(
        &Owner::default(),
        &AccountState::of(&observed, &Owner::default()),
        &BTreeSet::from(["harbor-pull".to_string()]),
    )
    .expect("a change");
    let changed = sa("default", &["user-a", "user-b"], None);
    let mut doc = serde_json::to_value(&*changed).expect("json");
    assert!(json_patch::patch(&mut doc, &patch).is_err());
}

#[test]
fn a_registry_removed_from_config_prunes_its_secret_and_only_its_references() {
    let reg = registry("harbor", |_| {});
    let i = issued(&reg, "pw1");
    let secret = Arc::new(secret_of(&Owner::default(), &reg, "team-a", &i));
    let namespace = ns("team-a");
    let foreign = HashSet::new();
    let account = sa("default", &["user-a", "harbor-pull"], Some("harbor-pull"));
    let plan = plan_with(
        &[],
        &HashMap::new(),
        &namespace,
        vec![secret],
        vec![account.clone()],
        &foreign,
    );
    assert_eq!(
        plan.secrets,
        [SecretChange::Delete {
            name: "harbor-pull".into(),
            registry: Some("harbor".into()),
            uid: None,
        }]
    );
    assert_eq!(
        pull_names(&patched(&account, &plan.accounts[0].patch)),
        ["user-a"]
    );
}

#[test]
fn a_foreign_secret_is_neither_written_nor_referenced() {
    let reg = Arc::new(registry("harbor", |_| {}));
    let namespace = ns("team-a");
    let foreign = HashSet::from(["harbor-pull".to_string()]);
    let plan = plan_with(
        std::slice::from_ref(&reg),
        &creds(&[("harbor", issued(&reg, "pw"))]),
        &namespace,
        vec![],
        vec![sa("default", &[], None)],
        &foreign,
    );
    assert!(
        plan.secrets.is_empty() && plan.accounts.is_empty(),
        "{plan:?}"
    );
}

#[test]
fn without_a_good_credential_the_existing_secret_stays_and_nothing_is_written() {
    let reg = Arc::new(registry("harbor", |_| {}));
    let old = Arc::new(secret_of(
        &Owner::default(),
        &reg,
        "team-a",
        &issued(&reg, "old"),
    ));
    let namespace = ns("team-a");
    let foreign = HashSet::new();
    let plan = plan_with(
        std::slice::from_ref(&reg),
        &HashMap::new(),
        &namespace,
        vec![old],
        vec![sa("default", &["harbor-pull"], Some("harbor-pull"))],
        &foreign,
    );
    assert!(
        plan.secrets.is_empty() && plan.accounts.is_empty(),
        "{plan:?}"
    );
    // And without any Secret yet, nothing is created or referenced.
    let plan = plan_with(
        &[reg],
        &HashMap::new(),
        &namespace,
        vec![],
        vec![sa("default", &[], None)],
        &foreign,
    );
    assert!(plan.secrets.is_empty() && plan.accounts.is_empty());
}

#[test]
fn system_terminating_and_opted_out_namespaces_are_left_alone() {
    let reg = Arc::new(registry("harbor", |_| {}));
    let c = creds(&[("harbor", issued(&reg, "pw"))]);
    let foreign = HashSet::new();
    let mut system = ns("kube-system");
    let plan_for =
        |n: &Namespace| plan_with(std::slice::from_ref(&reg), &c, n, vec![], vec![], &foreign);
    assert!(plan_for(&system).secrets.is_empty());
    let named = Arc::new(registry("harbor", |r| {
        r.namespaces.include = vec!["kube-system".into()];
    }));
    assert_eq!(
        plan_with(&[named], &c, &system, vec![], vec![], &foreign)
            .secrets
            .len(),
        1
    );

    system.metadata.name = Some("team-t".into());
    system.status = Some(NamespaceStatus {
        phase: Some("Terminating".into()),
        ..NamespaceStatus::default()
    });
    assert!(plan_for(&system).secrets.is_empty());

    let mut opted = ns("team-o");
    opted.metadata.annotations = Some(BTreeMap::from([(
        OPT_OUT_ANNOTATION.to_string(),
        "true".to_string(),
    )]));
    assert!(plan_for(&opted).secrets.is_empty());
}

#[test]
fn all_service_accounts_can_be_targeted() {
    let reg = Arc::new(registry("harbor", |r| {
        r.service_accounts = ServiceAccountTargets::All;
    }));
    let namespace = ns("team-a");
    let foreign = HashSet::new();
    let plan = plan_with(
        std::slice::from_ref(&reg),
        &creds(&[("harbor", issued(&reg, "pw"))]),
        &namespace,
        vec![],
        vec![sa("default", &[], None), sa("builder", &["x"], None)],
        &foreign,
    );
    assert_eq!(plan.accounts.len(), 2);
}

#[test]
fn a_label_selector_limits_the_namespaces() {
    let reg = Arc::new(registry("harbor", |r| {
        r.namespaces.selector = "team=payments".parse().expect("selector");
    }));
    let c = creds(&[("harbor", issued(&reg, "pw"))]);
    let foreign = HashSet::new();
    let mut n = ns("team-a");
    assert!(
        plan_with(std::slice::from_ref(&reg), &c, &n, vec![], vec![], &foreign)
            .secrets
            .is_empty()
    );
    n.metadata.labels = Some(BTreeMap::from([(
        "team".to_string(),
        "payments".to_string(),
    )]));
    assert_eq!(
        plan_with(&[reg], &c, &n, vec![], vec![], &foreign)
            .secrets
            .len(),
        1
    );
}

#[test]
fn rendered_secret_matches_snapshot() {
    let reg = registry("harbor", |r| r.servers = vec!["harbor.example".into()]);
    let cred = Credential {
        logins: vec![Login {
            server: None,
            username: "robot".into(),
            password: Sensitive::new("s3cret"),
        }],
        expires_at: Some(
            chrono::DateTime::parse_from_rfc3339("2026-01-01T12:00:00Z")
                .expect("t")
                .with_timezone(&chrono::Utc),
        ),
    };
    let i = Issued {
        rendered: render(&reg, &cred).expect("renders"),
        expires_at: cred.expires_at,
    };
    let secret: Secret = secret_of(&Owner::default(), &reg, "team-a", &i);
    let value = serde_json::to_value(&secret).expect("json");
    assert_eq!(
        value,
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": "harbor-pull",
                "namespace": "team-a",
                "labels": {
                    "app.kubernetes.io/managed-by": "pullkeeper",
                    "pullkeeper.dev/instance": "pullkeeper",
                    "pullkeeper.dev/registry": "harbor"
                },
                "annotations": {
                    "pullkeeper.dev/content-hash": i.rendered.hash,
                    "pullkeeper.dev/expires-at": "2026-01-01T12:00:00Z"
                }
            },
            "type": "kubernetes.io/dockerconfigjson",
            // {"auths":{"harbor.example":{"username":"robot","password":"s3cret","auth":"cm9ib3Q6czNjcmV0"}}}
            "data": {".dockerconfigjson": "eyJhdXRocyI6eyJoYXJib3IuZXhhbXBsZSI6eyJ1c2VybmFtZSI6InJvYm90IiwicGFzc3dvcmQiOiJzM2NyZXQiLCJhdXRoIjoiY205aWIzUTZjek5qY21WMCJ9fX0="}
        })
    );
}

#[test]
fn two_installations_never_touch_each_others_objects() {
    let blue = Owner::new("blue");
    let reg = Arc::new(registry("harbor", |_| {}));
    let theirs = Arc::new(secret_of(
        &Owner::default(),
        &reg,
        "team-a",
        &issued(&reg, "pw"),
    ));
    assert!(Owner::default().owns(&theirs.metadata));
    assert!(!blue.owns(&theirs.metadata));
    // An account carrying the default installation's entry: blue neither removes nor claims it.
    let account = sa("default", &["harbor-pull"], Some("harbor-pull"));
    assert!(account_patch(&blue, &AccountState::of(&account, &blue), &BTreeSet::new()).is_none());
    let patch = account_patch(
        &blue,
        &AccountState::of(&account, &blue),
        &BTreeSet::from(["blue-pull".to_string()]),
    )
    .expect("change");
    let after = patched(&account, &patch);
    assert_eq!(pull_names(&after), ["harbor-pull", "blue-pull"]);
    assert_eq!(
        owned_entries(&Owner::default(), &after),
        BTreeSet::from(["harbor-pull".to_string()])
    );
    assert_eq!(
        owned_entries(&blue, &after),
        BTreeSet::from(["blue-pull".to_string()])
    );
}

#[test]
fn a_named_installation_removes_its_own_entry() {
    let blue = Owner::new("t1234");
    let mut account = (*sa("default", &["team-own", "legacy"], None)).clone();
    let patch = account_patch(
        &blue,
        &AccountState::of(&account, &blue),
        &BTreeSet::from(["users-pull".to_string()]),
    )
    .expect("add");
    account = patched(&account, &patch);
    account
        .image_pull_secrets
        .as_mut()
        .expect("list")
        .push(LocalObjectReference {
            name: "late".into(),
        });
    let patch =
        account_patch(&blue, &AccountState::of(&account, &blue), &BTreeSet::new()).expect("remove");
    assert_eq!(
        pull_names(&patched(&account, &patch)),
        ["team-own", "legacy", "late"]
    );
}

fn with_expiry(issued: &Issued, at: chrono::DateTime<chrono::Utc>) -> Arc<Issued> {
    let mut i = issued.clone();
    i.expires_at = Some(at);
    Arc::new(i)
}

#[test]
fn the_same_credential_with_a_later_expiry_plans_no_write() {
    let reg = Arc::new(registry("harbor", |_| {}));
    let now = chrono::Utc::now();
    let hour = chrono::TimeDelta::hours(1);
    let first = with_expiry(&issued(&reg, "pw"), now + hour);
    let later = with_expiry(&first, now + hour * 2);
    let existing = Arc::new(secret_of(&Owner::default(), &reg, "team-a", &first));
    let namespace = ns("team-a");
    let foreign = HashSet::new();
    let plan = plan_with(
        std::slice::from_ref(&reg),
        &creds(&[("harbor", later)]),
        &namespace,
        vec![existing],
        vec![],
        &foreign,
    );
    assert!(plan.secrets.is_empty(), "{plan:?}");
}

#[test]
fn an_expiry_annotation_that_has_passed_is_rewritten_once() {
    let reg = Arc::new(registry("harbor", |_| {}));
    let now = chrono::Utc::now();
    let hour = chrono::TimeDelta::hours(1);
    let written = with_expiry(&issued(&reg, "pw"), now - hour);
    let current = with_expiry(&written, now + hour);
    let namespace = ns("team-a");
    let foreign = HashSet::new();
    let stale = Arc::new(secret_of(&Owner::default(), &reg, "team-a", &written));
    let plan = plan_with(
        std::slice::from_ref(&reg),
        &creds(&[("harbor", current.clone())]),
        &namespace,
        vec![stale],
        vec![],
        &foreign,
    );
    let [SecretChange::Apply { secret, .. }] = plan.secrets.as_slice() else {
        panic!("expected one apply: {plan:?}")
    };
    let fresh = Arc::new(secret.to_secret());
    let plan = plan_with(
        std::slice::from_ref(&reg),
        &creds(&[("harbor", current)]),
        &namespace,
        vec![fresh],
        vec![],
        &foreign,
    );
    assert!(plan.secrets.is_empty(), "converged: {plan:?}");
}

#[test]
fn a_data_key_someone_added_is_planned_for_removal_and_then_costs_nothing() {
    let reg = Arc::new(registry("harbor", |_| {}));
    let i = issued(&reg, "pw");
    let mut edited = secret_of(&Owner::default(), &reg, "team-a", &i);
    edited.metadata.resource_version = Some("7".into());
    edited
        .data
        .as_mut()
        .expect("data")
        .insert("extra".into(), ByteString(b"x".to_vec()));
    let namespace = ns("team-a");
    let foreign = HashSet::new();
    let plan = plan_with(
        std::slice::from_ref(&reg),
        &creds(&[("harbor", i.clone())]),
        &namespace,
        vec![Arc::new(edited)],
        vec![],
        &foreign,
    );
    assert!(matches!(
        plan.secrets.as_slice(),
        [SecretChange::Apply { existing: true, stray_keys, resource_version: Some(rv), .. }]
            if stray_keys == &["extra".to_string()] && rv == "7"
    ));
    let repaired = Arc::new(secret_of(&Owner::default(), &reg, "team-a", &i));
    let plan = plan_with(
        std::slice::from_ref(&reg),
        &creds(&[("harbor", i)]),
        &namespace,
        vec![repaired],
        vec![],
        &foreign,
    );
    assert!(plan.is_empty(), "{plan:?}");
}

#[test]
fn a_foreign_secret_learnt_while_writing_is_never_added_to_an_account() {
    let reg = Arc::new(registry("harbor", |_| {}));
    let namespace = ns("team-a");
    let foreign = HashSet::new();
    let plan = plan_with(
        std::slice::from_ref(&reg),
        &creds(&[("harbor", issued(&reg, "pw"))]),
        &namespace,
        vec![],
        vec![sa("default", &[], None)],
        &foreign,
    );
    assert_eq!(plan.accounts.len(), 1);
    let blocked = HashSet::from(["harbor-pull".to_string()]);
    assert!(
        plan.accounts_without(&Owner::default(), &blocked)
            .is_empty()
    );
}

#[test]
fn no_plan_type_prints_the_credential_with_debug() {
    const CANARY: &str = "canary-7f3a9c";
    let reg = Arc::new(registry("harbor", |_| {}));
    let cred = Credential {
        logins: vec![Login {
            server: None,
            username: "robot".into(),
            password: Sensitive::new(CANARY),
        }],
        expires_at: None,
    };
    let i = Arc::new(Issued {
        rendered: render(&reg, &cred).expect("renders"),
        expires_at: None,
    });
    let encoded = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("robot:{CANARY}"),
    );
    let desired = desired_secret(&Owner::default(), &reg, "team-a", &i);
    let plan = plan_with(
        std::slice::from_ref(&reg),
        &creds(&[("harbor", i.clone())]),
        &ns("team-a"),
        vec![],
        vec![sa("default", &[], None)],
        &HashSet::new(),
    );
    let change = plan.secrets.first().cloned().expect("a change");
    let texts = [
        format!("{cred:?}"),
        format!("{:?}", cred.logins[0]),
        format!("{i:?}"),
        format!("{:?}", i.rendered),
        format!("{desired:?}"),
        format!("{desired:#?}"),
        format!("{change:?}"),
        format!("{plan:?}"),
        format!("{plan:#?}"),
    ];
    for text in texts {
        assert!(!text.contains(CANARY), "{text}");
        assert!(!text.contains(&encoded), "{text}");
    }
    // The request body, built only by the applier, does carry it.
    let body = serde_json::to_string(&desired.to_secret()).expect("json");
    let raw = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        &i.rendered.bytes,
    );
    assert!(body.contains(&raw));
}

#[test]
fn drift_names_each_way_a_secret_differs_and_nothing_when_it_is_current() {
    let reg = registry("harbor", |_| {});
    let owner = Owner::default();
    let now = chrono::Utc::now();
    let i = with_expiry(&issued(&reg, "pw"), now + chrono::TimeDelta::hours(1));
    let desired = desired_secret(&owner, &reg, "team-a", &i);
    assert!(
        secret_drift(
            &SecretState::of(&desired.to_secret(), &Owner::default()),
            &desired,
            now
        )
        .is_empty()
    );

    let rotated = desired_secret(&owner, &reg, "team-a", &issued(&reg, "pw2"));
    assert_eq!(
        secret_drift(
            &SecretState::of(&desired.to_secret(), &Owner::default()),
            &rotated,
            now
        ),
        [Drift::Content, Drift::Annotations]
    );

    let mut edited = desired.to_secret();
    edited.type_ = Some("Opaque".into());
    edited
        .data
        .as_mut()
        .expect("data")
        .insert("extra".into(), ByteString(b"x".to_vec()));
    edited
        .metadata
        .labels
        .as_mut()
        .expect("labels")
        .remove(REGISTRY_LABEL);
    edited
        .metadata
        .annotations
        .as_mut()
        .expect("annotations")
        .remove(EXPIRES_ANNOTATION);
    assert_eq!(
        secret_drift(&SecretState::of(&edited, &Owner::default()), &desired, now),
        [Drift::Type, Drift::StrayKeys, Drift::Labels, Drift::Expiry]
    );
}

#[test]
fn account_edits_read_back_what_the_patch_adds_removes_and_records() {
    let owner = Owner::default();
    let wanted = |names: &[&str]| names.iter().map(|n| (*n).to_string()).collect();

    let fresh = sa("default", &[], None);
    let patch = account_patch(
        &owner,
        &AccountState::of(&fresh, &owner),
        &wanted(&["a-pull", "b-pull"]),
    )
    .expect("patch");
    assert_eq!(
        account_edits(&AccountState::of(&fresh, &owner), &patch),
        AccountEdits {
            add: vec!["a-pull".into(), "b-pull".into()],
            remove: vec![],
            records: true,
        }
    );

    let listed = sa(
        "default",
        &["user", "old-pull", "a-pull"],
        Some("old-pull,a-pull"),
    );
    let patch = account_patch(
        &owner,
        &AccountState::of(&listed, &owner),
        &wanted(&["a-pull", "new-pull"]),
    )
    .expect("patch");
    let edits = account_edits(&AccountState::of(&listed, &owner), &patch);
    assert_eq!(edits.add, ["new-pull"]);
    assert_eq!(edits.remove, ["old-pull"]);
    assert!(edits.records);
    // The edits describe what the API server does with the patch.
    assert_eq!(
        pull_names(&patched(&listed, &patch)),
        ["user", "a-pull", "new-pull"]
    );

    // An entry removed by hand: only the record of ownership is rewritten.
    let dropped = sa("default", &["user"], Some("a-pull"));
    let patch =
        account_patch(&owner, &AccountState::of(&dropped, &owner), &wanted(&[])).expect("patch");
    assert_eq!(
        account_edits(&AccountState::of(&dropped, &owner), &patch),
        AccountEdits {
            add: vec![],
            remove: vec![],
            records: true,
        }
    );
}
