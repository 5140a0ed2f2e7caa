//! What must change in one namespace: a pure function of the config, the current credentials
//! and the cached cluster objects. The applier only executes what this returns.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, RemoveOperation, TestOperation};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{LocalObjectReference, Secret};
use kube::api::ObjectMeta;
use serde_json::{Value, json};

use crate::config::{NamespaceTargets, Registry, TargetMiss};
use crate::ownership::{
    EXPIRES_ANNOTATION, HASH_ANNOTATION, INSTANCE_LABEL, MANAGED_BY_LABEL, MANAGED_BY_VALUE,
    OPT_OUT_ANNOTATION, Owner, REGISTRY_LABEL, SYSTEM_NAMESPACE_PREFIX, parse_record,
};
use crate::render::{DATA_KEY, Rendered, SECRET_TYPE};

pub mod state;

pub use state::{AccountState, Digest, NamespaceState, SecretState};

/// The current good credential of one registry, rendered once and shared by every namespace.
/// `Debug` shows the content hash and hosts only ([`Rendered`] redacts its bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    pub rendered: Rendered,
    pub expires_at: Option<DateTime<Utc>>,
}

/// What the cluster looks like in one namespace, from the caches.
pub struct Observed<'a> {
    pub namespace: &'a NamespaceState,
    /// The Secrets here whose name a registry uses (or used): pullkeeper's own and same-named
    /// ones that are someone else's (`owned: false`).
    pub secrets: &'a [SecretState],
    pub service_accounts: &'a [Arc<AccountState>],
    /// Secret names nothing is planned for now: the role does not let pullkeeper read them, or
    /// their watch has not listed yet. Their Secrets are neither written nor pruned, and
    /// entries naming them stay as they are.
    pub frozen: &'a BTreeSet<String>,
}

/// The Secret pullkeeper wants for a registry in a namespace. The credential stays inside
/// [`Issued`] (whose `Debug` redacts it) until the applier builds the request with
/// [`DesiredSecret::to_secret`], so no plan can print it.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredSecret {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub issued: Arc<Issued>,
}

impl DesiredSecret {
    /// The API object (for the request body only: it carries the credential).
    pub fn to_secret(&self) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some(self.labels.clone()),
                annotations: Some(self.annotations.clone()),
                ..ObjectMeta::default()
            },
            type_: Some(SECRET_TYPE.into()),
            data: Some(BTreeMap::from([(
                DATA_KEY.to_string(),
                ByteString(self.issued.rendered.bytes.clone()),
            )])),
            ..Secret::default()
        }
    }
}

/// One change to a Secret.
#[derive(Clone, Debug, PartialEq)]
pub enum SecretChange {
    /// Create (`existing: false`: the cache has no Secret of that name here; a conflict shows
    /// one that appeared since) or update by server-side apply.
    Apply {
        registry: String,
        secret: Box<DesiredSecret>,
        existing: bool,
        /// Data keys someone else added to pullkeeper's Secret. Server-side apply cannot
        /// remove a field another manager owns, so the applier removes them first with a
        /// JSON patch guarded by `resource_version`; the Secret then holds exactly
        /// pullkeeper's content and costs no further write.
        stray_keys: Vec<String>,
        resource_version: Option<String>,
    },
    /// Remove a Secret pullkeeper wrote that left scope or config, only if it is still the
    /// one observed (`uid`).
    Delete {
        name: String,
        registry: Option<String>,
        uid: Option<String>,
    },
}

/// One `ServiceAccount` whose `imagePullSecrets` must change, with the full set of entries
/// pullkeeper wants there (used to recompute the patch after a conflict).
#[derive(Clone, Debug, PartialEq)]
pub struct AccountChange {
    pub name: String,
    pub wanted: BTreeSet<String>,
    pub patch: Patch,
}

/// Everything to do in one namespace.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NamespacePlan {
    pub secrets: Vec<SecretChange>,
    /// The `ServiceAccount` changes when every planned Secret can be written.
    pub accounts: Vec<AccountChange>,
    /// Registry names in scope here (for gauges).
    pub in_scope: Vec<String>,
    /// Registries in scope whose Secret name is taken here by a Secret that is not this
    /// installation's, as (Secret name, registry): never written, never referenced.
    pub blocked: Vec<(String, String)>,
    /// Each observed `ServiceAccount` with the Secrets it should list; lets
    /// [`NamespacePlan::accounts_without`] answer without planning again.
    targets: Vec<(Arc<AccountState>, BTreeSet<String>)>,
}

impl NamespacePlan {
    /// The `ServiceAccount` changes when the Secrets named in `blocked` turned out to be someone
    /// else's while writing: a `ServiceAccount` must never be made to reference those.
    pub fn accounts_without(&self, owner: &Owner, blocked: &HashSet<String>) -> Vec<AccountChange> {
        if blocked.is_empty() {
            return self.accounts.clone();
        }
        account_changes(owner, &self.targets, blocked)
    }

    /// Whether the plan writes nothing.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty() && self.accounts.is_empty()
    }
}

fn account_changes(
    owner: &Owner,
    targets: &[(Arc<AccountState>, BTreeSet<String>)],
    blocked: &HashSet<String>,
) -> Vec<AccountChange> {
    targets
        .iter()
        .filter_map(|(sa, wanted)| {
            let wanted: BTreeSet<String> = wanted
                .iter()
                .filter(|s| !blocked.contains(*s))
                .cloned()
                .collect();
            let patch = account_patch(owner, sa, &wanted)?;
            Some(AccountChange {
                name: sa.name.clone(),
                wanted,
                patch,
            })
        })
        .collect()
}

/// Why a registry's Secret does not belong in a namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutOfScope {
    /// The namespace is being deleted.
    Terminating,
    /// The namespace opted out with the `pullkeeper.dev/ignore: "true"` annotation.
    OptedOut,
    /// The registry's `namespaces` rules leave it out.
    Targets(TargetMiss),
}

impl OutOfScope {
    /// The rule in a reader's words, for `diagnose`.
    pub fn describe(&self, ns: &str, targets: &NamespaceTargets) -> String {
        match self {
            Self::Terminating => format!("namespace {ns} is being deleted"),
            Self::OptedOut => {
                format!("namespace {ns} opted out with {OPT_OUT_ANNOTATION}: \"true\"")
            }
            Self::Targets(TargetMiss::SystemNotNamed) => format!(
                "{SYSTEM_NAMESPACE_PREFIX}* namespaces are in scope only when named exactly in namespaces.include"
            ),
            Self::Targets(TargetMiss::NotIncluded) => format!(
                "no namespaces.include pattern matches it (include: {:?})",
                targets.include
            ),
            Self::Targets(TargetMiss::Excluded(p)) => {
                format!("namespaces.exclude pattern {p:?} matches it")
            }
            Self::Targets(TargetMiss::Selector) => {
                "its labels do not satisfy namespaces.selector".into()
            }
        }
    }
}

/// Whether `reg`'s Secret belongs in namespace `ns`: not while it terminates or when it opted
/// out, otherwise when the registry's namespace rules select it. The one scope rule of the
/// daemon, `plan`, `diagnose`, `cleanup` and pod recovery.
pub fn scope(reg: &Registry, ns: &NamespaceState) -> Result<(), OutOfScope> {
    if ns.terminating {
        return Err(OutOfScope::Terminating);
    }
    if ns.opted_out {
        return Err(OutOfScope::OptedOut);
    }
    match reg.namespaces.miss(&ns.name, &ns.labels) {
        Some(miss) => Err(OutOfScope::Targets(miss)),
        None => Ok(()),
    }
}

/// The registries whose Secret belongs in this namespace (see [`scope`]).
pub fn registries_in_scope<'r>(
    registries: &'r [Arc<Registry>],
    ns: &NamespaceState,
) -> Vec<&'r Arc<Registry>> {
    registries.iter().filter(|r| scope(r, ns).is_ok()).collect()
}

/// Computes the plan for one namespace.
pub fn plan_namespace(
    owner: &Owner,
    registries: &[Arc<Registry>],
    credentials: &HashMap<String, Arc<Issued>>,
    observed: &Observed<'_>,
) -> NamespacePlan {
    let ns = observed.namespace;
    let mut plan = NamespacePlan::default();
    if ns.terminating {
        return plan;
    }
    // An opted-out namespace has no registry in scope: pullkeeper's own objects there are pruned.
    let in_scope = registries_in_scope(registries, ns);
    let managed: BTreeMap<&str, &SecretState> = observed
        .secrets
        .iter()
        .filter(|s| s.owned)
        .map(|s| (s.name.as_str(), s))
        .collect();
    let foreign: HashSet<&str> = observed
        .secrets
        .iter()
        .filter(|s| !s.owned)
        .map(|s| s.name.as_str())
        .collect();

    // Secrets that should exist here (secret name → registry).
    let mut present: BTreeMap<&str, &Arc<Registry>> = BTreeMap::new();
    for reg in &in_scope {
        plan.in_scope.push(reg.name.clone());
        let name = reg.secret_name.as_str();
        if observed.frozen.contains(name) {
            continue;
        }
        if foreign.contains(name) {
            plan.blocked
                .push((reg.secret_name.clone(), reg.name.clone()));
            continue;
        }
        let existing = managed.get(name);
        match credentials.get(&reg.name) {
            Some(issued) => {
                let desired = desired_secret(owner, reg, &ns.name, issued);
                if existing.is_none_or(|s| !secret_up_to_date(s, &desired)) {
                    plan.secrets.push(SecretChange::Apply {
                        registry: reg.name.clone(),
                        secret: Box::new(desired),
                        existing: existing.is_some(),
                        stray_keys: existing.map(|s| s.stray_keys.clone()).unwrap_or_default(),
                        resource_version: existing.and_then(|s| s.resource_version.clone()),
                    });
                }
                present.insert(name, reg);
            }
            // No good credential yet (first fetch failing): keep what is there, write nothing.
            None if existing.is_some() => {
                present.insert(name, reg);
            }
            None => {}
        }
    }

    for (name, secret) in &managed {
        if !present.contains_key(name) && !observed.frozen.contains(*name) {
            plan.secrets.push(SecretChange::Delete {
                name: (*name).to_string(),
                registry: secret.registry().map(String::from),
                uid: secret.uid.clone(),
            });
        }
    }

    plan.targets = observed
        .service_accounts
        .iter()
        .map(|sa| {
            let owned = parse_record(sa.record.as_deref());
            let wanted: BTreeSet<String> = present
                .iter()
                .filter(|(_, reg)| reg.service_accounts.matches(&sa.name))
                .map(|(secret, _)| (*secret).to_string())
                // A frozen name pullkeeper listed stays listed (and recorded) as it is.
                .chain(
                    observed
                        .frozen
                        .iter()
                        .filter(|f| owned.contains(*f) && sa.lists(f))
                        .cloned(),
                )
                .collect();
            (sa.clone(), wanted)
        })
        .collect();
    plan.accounts = account_changes(owner, &plan.targets, &HashSet::new());
    plan
}

/// The Secret pullkeeper wants for a registry in a namespace.
pub fn desired_secret(
    owner: &Owner,
    reg: &Registry,
    namespace: &str,
    issued: &Arc<Issued>,
) -> DesiredSecret {
    let mut labels = reg.secret_labels.clone();
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY_VALUE.into());
    labels.insert(INSTANCE_LABEL.into(), owner.instance.clone());
    labels.insert(REGISTRY_LABEL.into(), reg.name.clone());
    let mut annotations =
        BTreeMap::from([(HASH_ANNOTATION.to_string(), issued.rendered.hash.clone())]);
    if let Some(exp) = issued.expires_at {
        annotations.insert(
            EXPIRES_ANNOTATION.into(),
            exp.to_rfc3339_opts(SecondsFormat::Secs, true),
        );
    }
    DesiredSecret {
        namespace: namespace.to_string(),
        name: reg.secret_name.clone(),
        labels,
        annotations,
        issued: issued.clone(),
    }
}

/// One way an observed Secret differs from the one pullkeeper wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Drift {
    /// Not of type `kubernetes.io/dockerconfigjson`.
    Type,
    /// Its `.dockerconfigjson` is missing or is not the current credential.
    Content,
    /// It holds data keys pullkeeper did not write.
    StrayKeys,
    /// A label pullkeeper sets is missing or different.
    Labels,
    /// The content-hash annotation is missing or different.
    Annotations,
}

impl Drift {
    /// A stable name for output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Type => "type",
            Self::Content => "content",
            Self::StrayKeys => "stray-keys",
            Self::Labels => "labels",
            Self::Annotations => "annotations",
        }
    }
}

/// How the observed Secret differs from the desired one; empty when it already carries the
/// desired content, type, labels and content hash (a hand-edited `.dockerconfigjson` no longer
/// matches its hash and is repaired).
///
/// The expiry annotation is not compared: content that did not change costs no write, whatever
/// its stated expiry does (a broker that re-issues one password with a sliding `expires_in`, a
/// stated expiry that passed while the password still works). The annotation records the expiry
/// the provider stated when this content was written, and is rewritten only with the content;
/// the credential's current expiry is the gauge `pullkeeper_credential_expiry_timestamp_seconds`.
pub fn secret_drift(observed: &SecretState, desired: &DesiredSecret) -> Vec<Drift> {
    let want = Digest::from_hex(&desired.issued.rendered.hash);
    let labels_ok = desired
        .labels
        .iter()
        .all(|(k, v)| observed.label(k) == Some(v.as_str()));
    [
        (observed.typed, Drift::Type),
        (want.is_some() && observed.data == want, Drift::Content),
        (observed.stray_keys.is_empty(), Drift::StrayKeys),
        (labels_ok, Drift::Labels),
        (
            want.is_some() && observed.content_hash == want,
            Drift::Annotations,
        ),
    ]
    .into_iter()
    .filter(|(ok, _)| !ok)
    .map(|(_, drift)| drift)
    .collect()
}

/// Whether the observed Secret already is the desired one (see [`secret_drift`]).
fn secret_up_to_date(observed: &SecretState, desired: &DesiredSecret) -> bool {
    secret_drift(observed, desired).is_empty()
}

/// What an [`AccountChange`]'s patch does to the ServiceAccount it was computed from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccountEdits {
    /// `imagePullSecrets` entries the patch appends.
    pub add: Vec<String>,
    /// `imagePullSecrets` entries the patch removes.
    pub remove: Vec<String>,
    /// Whether it rewrites the annotation recording pullkeeper's entries.
    pub records: bool,
}

/// Reads back the entries a patch from [`account_patch`] adds and removes on `sa` (the
/// ServiceAccount it was computed from), for showing a plan without applying it.
pub fn account_edits(sa: &AccountState, patch: &Patch) -> AccountEdits {
    let current: Vec<&str> = sa.listed().collect();
    let name_of = |v: &Value| v.get("name").and_then(Value::as_str).map(String::from);
    let mut edits = AccountEdits::default();
    for op in &patch.0 {
        match op {
            PatchOperation::Add(a) if a.path.starts_with(&pointer(&["metadata"])) => {
                edits.records = true;
            }
            PatchOperation::Remove(r) if r.path.starts_with(&pointer(&["metadata"])) => {
                edits.records = true;
            }
            PatchOperation::Add(a) => match &a.value {
                Value::Array(items) => edits.add.extend(items.iter().filter_map(name_of)),
                one => edits.add.extend(name_of(one)),
            },
            PatchOperation::Remove(r) => {
                let index = r
                    .path
                    .last()
                    .and_then(|t| t.decoded().parse::<usize>().ok());
                if let Some(name) = index.and_then(|i| current.get(i)) {
                    edits.remove.push((*name).to_string());
                }
            }
            _ => {}
        }
    }
    edits.remove.sort();
    edits
}

/// A JSON patch bringing the `ServiceAccount`'s `imagePullSecrets` to contain `wanted`, removing
/// only entries pullkeeper itself added, guarded by a `test` of the list as observed (or of the
/// resourceVersion when the list is absent). `None` when nothing must change.
pub fn account_patch(owner: &Owner, sa: &AccountState, wanted: &BTreeSet<String>) -> Option<Patch> {
    let owned = parse_record(sa.record.as_deref());
    let key = owner.account_annotation();
    let current: Vec<Option<&str>> = sa
        .listed()
        .map(|n| Some(n).filter(|n| !n.is_empty()))
        .collect();
    let present: BTreeSet<&str> = current.iter().flatten().copied().collect();
    let remove: Vec<usize> = current
        .iter()
        .enumerate()
        .filter(|(_, n)| n.is_some_and(|n| owned.contains(n) && !wanted.contains(n)))
        .map(|(i, _)| i)
        .collect();
    let add: Vec<&String> = wanted
        .iter()
        .filter(|w| !present.contains(w.as_str()))
        .collect();
    // pullkeeper owns what it adds now, plus what it owned before and still wants; an entry a
    // person added by hand before pullkeeper wanted it stays theirs.
    let new_owned: BTreeSet<String> = owned
        .iter()
        .filter(|n| wanted.contains(*n) && present.contains(n.as_str()))
        .cloned()
        .chain(add.iter().map(|s| (*s).clone()))
        .collect();
    if remove.is_empty() && add.is_empty() && new_owned == owned {
        return None;
    }

    let mut ops = Vec::new();
    match &sa.pull_secrets {
        Some(list) => {
            let observed: Vec<LocalObjectReference> = list
                .iter()
                .map(|name| LocalObjectReference { name: name.clone() })
                .collect();
            ops.push(test(
                "/imagePullSecrets",
                serde_json::to_value(observed).unwrap_or(Value::Null),
            ));
        }
        None => ops.push(test(
            "/metadata/resourceVersion",
            json!(sa.resource_version.clone().unwrap_or_default()),
        )),
    }
    for i in remove.iter().rev() {
        ops.push(PatchOperation::Remove(RemoveOperation {
            path: pointer(&["imagePullSecrets", &i.to_string()]),
        }));
    }
    if sa.pull_secrets.is_some() {
        for name in &add {
            ops.push(add_op(&["imagePullSecrets", "-"], json!({ "name": name })));
        }
    } else if !add.is_empty() {
        let list: Vec<Value> = add.iter().map(|n| json!({ "name": n })).collect();
        ops.push(add_op(&["imagePullSecrets"], Value::Array(list)));
    }
    if new_owned != owned {
        let value = new_owned.iter().cloned().collect::<Vec<_>>().join(",");
        if new_owned.is_empty() {
            ops.push(PatchOperation::Remove(RemoveOperation {
                path: pointer(&["metadata", "annotations", &key]),
            }));
        } else if sa.has_annotations {
            ops.push(add_op(&["metadata", "annotations", &key], json!(value)));
        } else {
            ops.push(add_op(
                &["metadata", "annotations"],
                json!({ key.as_str(): value }),
            ));
        }
    }
    Some(Patch(ops))
}

fn pointer(tokens: &[&str]) -> PointerBuf {
    PointerBuf::from_tokens(tokens.iter().copied())
}

fn test(path: &str, value: Value) -> PatchOperation {
    let tokens: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    PatchOperation::Test(TestOperation {
        path: pointer(&tokens),
        value,
    })
}

fn add_op(tokens: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: pointer(tokens),
        value,
    })
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod props;
