//! Property tests of the planner over random namespaces, configs, credentials and cached
//! objects (proptest): what must hold whatever the cluster looks like.
//!
//! - entries pullkeeper did not add to a ServiceAccount are never removed or reordered;
//! - planning the result of an applied plan yields no change;
//! - a Secret that is not this installation's is never written, deleted or newly referenced;
//! - prune deletes only Secrets with pullkeeper's labels and this installation's instance.
//!
//! Objects are generated as API objects (labels, annotations, data) and read into the planning
//! form by the real `state::*::of`, so ownership is decided by the real rule. "Applied" means
//! what the API server does: Secrets as the applier writes them, each ServiceAccount patch
//! applied with `json_patch` to the object it was computed from (its `test` must hold).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{TimeZone as _, Utc};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{LocalObjectReference, Namespace, Secret, ServiceAccount};
use kube::api::ObjectMeta;
use proptest::prelude::*;

use super::*;
use crate::config::{LabelSelector, ServiceAccountTargets};
use crate::credential::{Credential, Login};
use crate::ownership::{OPT_OUT_ANNOTATION, parse_record};
use crate::render::render;
use crate::sensitive::Sensitive;
use crate::testing::registry;

/// Secret names the generated objects draw from: the configured registries' (`r0`..`r2`), one
/// pullkeeper wrote for a registry no longer configured, and one a person created.
const SECRET_NAMES: [&str; 5] = ["r0-pull", "r1-pull", "r2-pull", "old-pull", "user-pull"];
/// What a person may have listed in `imagePullSecrets` (including an empty name).
const ENTRY_NAMES: [&str; 7] = [
    "r0-pull",
    "r1-pull",
    "r2-pull",
    "old-pull",
    "user-pull",
    "user-x",
    "",
];
const ACCOUNTS: [&str; 3] = ["default", "builder", "app"];

/// One registry's config and credential.
#[derive(Clone, Debug)]
struct RegistryCase {
    /// 0 `*`, 1 `[team-a]`, 2 `[other]`, 3 `[team-*]`.
    include: u8,
    exclude_team_a: bool,
    selector: bool,
    /// `None`: every ServiceAccount.
    accounts: Option<BTreeSet<String>>,
    /// Which credential is current (`None`: no good fetch yet).
    password: Option<u8>,
    expires: bool,
}

/// What a Secret of one name looks like in the namespace.
#[derive(Clone, Copy, Debug)]
enum SecretCase {
    Absent,
    /// Written by this installation with credential `n` (maybe not the current one).
    Ours(u8),
    /// This installation's labels, then edited by hand (data no longer matches its hash).
    OursEdited,
    /// This installation's, with a data key someone added.
    OursWithStrayKey(u8),
    /// Another installation's (same managed-by label, another instance).
    OtherInstance,
    /// Only the managed-by label, no instance label.
    ManagedByOnly,
    /// A person's, without labels.
    Unlabelled,
}

#[derive(Clone, Debug)]
struct AccountCase {
    name: String,
    pull: Option<Vec<String>>,
    record: Option<BTreeSet<String>>,
    other_annotation: bool,
}

#[derive(Clone, Debug)]
struct Scenario {
    registries: Vec<RegistryCase>,
    namespace: String,
    prod: bool,
    opted_out: bool,
    terminating: bool,
    secrets: Vec<SecretCase>,
    accounts: Vec<AccountCase>,
    frozen: BTreeSet<String>,
}

fn registry_case() -> impl Strategy<Value = RegistryCase> {
    (
        0u8..4,
        any::<bool>(),
        any::<bool>(),
        prop_oneof![
            Just(None),
            proptest::sample::subsequence(ACCOUNTS.to_vec(), 0..=3)
                .prop_map(|v| Some(v.into_iter().map(String::from).collect())),
        ],
        prop_oneof![Just(None), (0u8..2).prop_map(Some)],
        any::<bool>(),
    )
        .prop_map(
            |(include, exclude_team_a, selector, accounts, password, expires)| RegistryCase {
                include,
                exclude_team_a,
                selector,
                accounts,
                password,
                expires,
            },
        )
}

fn secret_case() -> impl Strategy<Value = SecretCase> {
    prop_oneof![
        3 => Just(SecretCase::Absent),
        3 => (0u8..2).prop_map(SecretCase::Ours),
        1 => Just(SecretCase::OursEdited),
        1 => (0u8..2).prop_map(SecretCase::OursWithStrayKey),
        1 => Just(SecretCase::OtherInstance),
        1 => Just(SecretCase::ManagedByOnly),
        1 => Just(SecretCase::Unlabelled),
    ]
}

fn account_case(name: &'static str) -> impl Strategy<Value = AccountCase> {
    (
        prop_oneof![
            1 => Just(None),
            4 => proptest::collection::vec(proptest::sample::select(ENTRY_NAMES.to_vec()), 0..7)
                .prop_map(|v| Some(v.into_iter().map(String::from).collect())),
        ],
        prop_oneof![
            Just(None),
            proptest::sample::subsequence(SECRET_NAMES.to_vec(), 0..=5)
                .prop_map(|v| Some(v.into_iter().map(String::from).collect())),
        ],
        any::<bool>(),
    )
        .prop_map(move |(pull, record, other_annotation)| AccountCase {
            name: name.to_string(),
            pull,
            record,
            other_annotation,
        })
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        proptest::collection::vec(registry_case(), 0..=3),
        proptest::sample::select(vec!["team-a", "other", "kube-system"]),
        any::<bool>(),
        proptest::bool::weighted(0.1),
        proptest::bool::weighted(0.1),
        proptest::collection::vec(secret_case(), SECRET_NAMES.len()),
        (
            proptest::option::of(account_case("default")),
            proptest::option::of(account_case("builder")),
            proptest::option::of(account_case("app")),
        ),
        proptest::sample::subsequence(SECRET_NAMES[..4].to_vec(), 0..=2),
    )
        .prop_map(
            |(registries, namespace, prod, opted_out, terminating, secrets, accounts, frozen)| {
                Scenario {
                    registries,
                    namespace: namespace.to_string(),
                    prod,
                    opted_out,
                    terminating,
                    secrets,
                    accounts: [accounts.0, accounts.1, accounts.2]
                        .into_iter()
                        .flatten()
                        .collect(),
                    frozen: frozen.into_iter().map(String::from).collect(),
                }
            },
        )
}

/// The world a scenario describes, as the planner is handed it.
struct World {
    owner: Owner,
    registries: Vec<Arc<Registry>>,
    credentials: HashMap<String, Arc<Issued>>,
    namespace: NamespaceState,
    secrets: Vec<SecretState>,
    accounts: Vec<ServiceAccount>,
    frozen: BTreeSet<String>,
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0)
        .single()
        .expect("a valid time")
}

fn issued_for(reg: &Registry, password: u8, expires: bool) -> Arc<Issued> {
    let credential = Credential {
        logins: vec![Login {
            server: None,
            username: "robot".into(),
            password: Sensitive::new(format!("pw-{password}")),
        }],
        expires_at: None,
    };
    Arc::new(Issued {
        rendered: render(reg, &credential).expect("renders"),
        expires_at: expires.then(|| now() + chrono::TimeDelta::hours(12)),
    })
}

fn build(s: &Scenario) -> World {
    let owner = Owner::default();
    let registries: Vec<Arc<Registry>> = s
        .registries
        .iter()
        .enumerate()
        .map(|(i, c)| {
            Arc::new(registry(&format!("r{i}"), |r| {
                r.namespaces.include = vec![
                    match c.include {
                        0 => "*",
                        1 => "team-a",
                        2 => "other",
                        _ => "team-*",
                    }
                    .to_string(),
                ];
                if c.exclude_team_a {
                    r.namespaces.exclude = vec!["team-a".into()];
                }
                if c.selector {
                    r.namespaces.selector = "env=prod".parse::<LabelSelector>().expect("selector");
                }
                r.service_accounts = c
                    .accounts
                    .clone()
                    .map_or(ServiceAccountTargets::All, ServiceAccountTargets::Names);
            }))
        })
        .collect();
    let credentials: HashMap<String, Arc<Issued>> = s
        .registries
        .iter()
        .zip(&registries)
        .filter_map(|(c, reg)| {
            c.password
                .map(|p| (reg.name.clone(), issued_for(reg, p, c.expires)))
        })
        .collect();
    let mut annotations = BTreeMap::new();
    if s.opted_out {
        annotations.insert(OPT_OUT_ANNOTATION.to_string(), "true".to_string());
    }
    let namespace = NamespaceState::of(&Namespace {
        metadata: ObjectMeta {
            name: Some(s.namespace.clone()),
            labels: s
                .prod
                .then(|| BTreeMap::from([("env".to_string(), "prod".to_string())])),
            annotations: Some(annotations),
            deletion_timestamp: s.terminating.then_some(
                k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
                ),
            ),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    });
    let secrets = SECRET_NAMES
        .iter()
        .zip(&s.secrets)
        .enumerate()
        .filter_map(|(i, (name, case))| {
            secret_object(&owner, &registries, &s.namespace, name, *case, i)
                .map(|secret| SecretState::of(&secret, &owner))
        })
        .collect();
    let accounts = s
        .accounts
        .iter()
        .map(|a| account_object(&owner, a))
        .collect();
    World {
        owner,
        registries,
        credentials,
        namespace,
        secrets,
        accounts,
        frozen: s.frozen.clone(),
    }
}

/// A Secret named `name` as `case` describes it.
fn secret_object(
    owner: &Owner,
    registries: &[Arc<Registry>],
    namespace: &str,
    name: &str,
    case: SecretCase,
    i: usize,
) -> Option<Secret> {
    let reg_name = name.trim_end_matches("-pull");
    // The registry the Secret was written for: a configured one, or one since removed.
    let reg = registries
        .iter()
        .find(|r| r.name == reg_name)
        .cloned()
        .unwrap_or_else(|| Arc::new(registry(reg_name, |r| r.secret_name = name.to_string())));
    let ours = |password: u8| {
        let mut s =
            desired_secret(owner, &reg, namespace, &issued_for(&reg, password, false)).to_secret();
        s.metadata.uid = Some(format!("uid-{i}"));
        s.metadata.resource_version = Some(format!("{i}"));
        s
    };
    let mut secret = match case {
        SecretCase::Absent => return None,
        SecretCase::Ours(p) => ours(p),
        SecretCase::OursEdited => {
            let mut s = ours(0);
            s.data = Some(BTreeMap::from([(
                DATA_KEY.to_string(),
                ByteString(b"{\"auths\":{}}".to_vec()),
            )]));
            s
        }
        SecretCase::OursWithStrayKey(p) => {
            let mut s = ours(p);
            s.data
                .get_or_insert_default()
                .insert("extra".into(), ByteString(b"x".to_vec()));
            s
        }
        SecretCase::OtherInstance => {
            let mut s = ours(0);
            s.metadata
                .labels
                .get_or_insert_default()
                .insert(INSTANCE_LABEL.into(), "someone-else".into());
            s
        }
        SecretCase::ManagedByOnly => {
            let mut s = ours(0);
            s.metadata
                .labels
                .get_or_insert_default()
                .remove(INSTANCE_LABEL);
            s
        }
        SecretCase::Unlabelled => {
            let mut s = ours(0);
            s.metadata.labels = None;
            s
        }
    };
    secret.metadata.name = Some(name.to_string());
    Some(secret)
}

fn account_object(owner: &Owner, a: &AccountCase) -> ServiceAccount {
    let mut annotations = BTreeMap::new();
    if let Some(record) = &a.record {
        annotations.insert(
            owner.account_annotation(),
            record.iter().cloned().collect::<Vec<_>>().join(","),
        );
    }
    if a.other_annotation {
        annotations.insert("team.example/owner".into(), "a".into());
    }
    ServiceAccount {
        metadata: ObjectMeta {
            name: Some(a.name.clone()),
            resource_version: Some("7".into()),
            annotations: (!annotations.is_empty()).then_some(annotations),
            ..ObjectMeta::default()
        },
        image_pull_secrets: a.pull.as_ref().map(|l| {
            l.iter()
                .map(|n| LocalObjectReference { name: n.clone() })
                .collect()
        }),
        ..ServiceAccount::default()
    }
}

fn plan_of(w: &World) -> NamespacePlan {
    let accounts: Vec<Arc<AccountState>> = w
        .accounts
        .iter()
        .map(|sa| Arc::new(AccountState::of(sa, &w.owner)))
        .collect();
    plan_namespace(
        &w.owner,
        &w.registries,
        &w.credentials,
        &Observed {
            namespace: &w.namespace,
            secrets: &w.secrets,
            service_accounts: &accounts,
            frozen: &w.frozen,
        },
    )
}

/// Applies one patch as the API server would: its `test` must hold on the observed object.
fn patched(account: &ServiceAccount, patch: &json_patch::Patch) -> ServiceAccount {
    let mut doc = serde_json::to_value(account).expect("to json");
    json_patch::patch(&mut doc, patch).expect("the patch applies to the object it came from");
    serde_json::from_value(doc).expect("from json")
}

fn names(account: &ServiceAccount) -> Vec<String> {
    account
        .image_pull_secrets
        .iter()
        .flatten()
        .map(|r| r.name.clone())
        .collect()
}

/// The world after the plan is applied.
fn applied(w: &World, plan: &NamespacePlan) -> World {
    let mut secrets = w.secrets.clone();
    for (n, change) in plan.secrets.iter().enumerate() {
        match change {
            SecretChange::Apply { secret, .. } => {
                let mut object = secret.to_secret();
                object.metadata.uid = Some(format!("new-uid-{n}"));
                object.metadata.resource_version = Some(format!("new-{n}"));
                secrets.retain(|s| s.name != secret.name);
                secrets.push(SecretState::of(&object, &w.owner));
            }
            SecretChange::Delete { name, .. } => secrets.retain(|s| &s.name != name),
        }
    }
    let accounts = w
        .accounts
        .iter()
        .map(|sa| {
            let name = sa.metadata.name.as_deref().unwrap_or_default();
            match plan.accounts.iter().find(|c| c.name == name) {
                Some(change) => patched(sa, &change.patch),
                None => sa.clone(),
            }
        })
        .collect();
    World {
        owner: w.owner.clone(),
        registries: w.registries.clone(),
        credentials: w.credentials.clone(),
        namespace: w.namespace.clone(),
        secrets,
        accounts,
        frozen: w.frozen.clone(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn entries_pullkeeper_did_not_add_are_never_removed_or_reordered(s in scenario()) {
        let w = build(&s);
        let plan = plan_of(&w);
        for change in &plan.accounts {
            let before = w
                .accounts
                .iter()
                .find(|a| a.metadata.name.as_deref() == Some(change.name.as_str()))
                .expect("a change names an observed account");
            let owned = parse_record(
                before
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(&w.owner.account_annotation()))
                    .map(String::as_str),
            );
            let (old, new) = (names(before), names(&patched(before, &change.patch)));
            let theirs = |list: &[String]| -> Vec<String> {
                list.iter()
                    .filter(|n| !owned.contains(*n) && old.contains(n))
                    .cloned()
                    .collect()
            };
            prop_assert_eq!(theirs(&old), theirs(&new), "old {:?} new {:?}", old, new);
            // Anything removed was recorded as pullkeeper's; anything added is appended.
            let kept = new.iter().take_while(|n| old.contains(n)).count();
            prop_assert!(new[kept..].iter().all(|n| !old.contains(n)), "{:?} → {:?}", old, new);
        }
    }

    #[test]
    fn planning_the_result_of_an_applied_plan_yields_no_change(s in scenario()) {
        let w = build(&s);
        let first = plan_of(&w);
        let after = applied(&w, &first);
        let second = plan_of(&after);
        prop_assert!(
            second.is_empty(),
            "first {:#?}\nsecond {:#?}",
            first.secrets,
            second
        );
        // And once more: a resync of a converged namespace stays a no-op.
        prop_assert!(plan_of(&applied(&after, &second)).is_empty());
    }

    #[test]
    fn a_secret_that_is_not_this_installations_is_never_written_deleted_or_newly_referenced(
        s in scenario()
    ) {
        let w = build(&s);
        let plan = plan_of(&w);
        let foreign: BTreeSet<&str> = w
            .secrets
            .iter()
            .filter(|s| !s.owned)
            .map(|s| s.name.as_str())
            .collect();
        for change in &plan.secrets {
            let name = match change {
                SecretChange::Apply { secret, .. } => secret.name.as_str(),
                SecretChange::Delete { name, .. } => name.as_str(),
            };
            prop_assert!(!foreign.contains(name), "{} is someone else's", name);
        }
        for change in &plan.accounts {
            let before = w
                .accounts
                .iter()
                .find(|a| a.metadata.name.as_deref() == Some(change.name.as_str()))
                .expect("observed");
            let old = names(before);
            for added in names(&patched(before, &change.patch)).iter().filter(|n| !old.contains(n)) {
                prop_assert!(!foreign.contains(added.as_str()), "{} referenced", added);
            }
        }
    }

    #[test]
    fn prune_deletes_only_secrets_with_pullkeepers_labels_and_instance(s in scenario()) {
        let w = build(&s);
        let plan = plan_of(&w);
        for change in &plan.secrets {
            if let SecretChange::Delete { name, uid, .. } = change {
                let observed = w.secrets.iter().find(|s| &s.name == name).expect("observed");
                prop_assert!(observed.owned);
                prop_assert_eq!(observed.label(MANAGED_BY_LABEL), Some(MANAGED_BY_VALUE));
                prop_assert_eq!(observed.label(INSTANCE_LABEL), Some(w.owner.instance.as_str()));
                // Preconditioned on the very object observed.
                prop_assert_eq!(uid, &observed.uid);
                prop_assert!(!w.frozen.contains(name));
            }
        }
    }
}
