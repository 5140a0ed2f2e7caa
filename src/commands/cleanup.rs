//! `pullkeeper cleanup`: removes what one installation left in the cluster after its uninstall
//! (`helm uninstall`, `kubectl delete -k`) — its Secrets, the `imagePullSecrets` entries it
//! recorded on ServiceAccounts with that record, and its leader-election Lease.
//!
//! What to remove is decided by [`plan`], a pure function of the observed objects; the entries
//! of a ServiceAccount are the daemon's own pruning rule ([`plan::account_patch`] wanting
//! nothing), so cleanup removes exactly what `run` would prune if every registry left its
//! config. [`running`] refuses while the installation still holds its Lease. The writes are the
//! applier's (UID-preconditioned deletes, guarded patches) and the Lease's own module's.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Arc;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, ListParams};
use serde::Serialize;

use crate::access;
use crate::apply::{Applier, WriteError};
use crate::commands::plan::PreviewError;
use crate::leader;
use crate::metrics::WriteMetrics;
use crate::ownership::Owner;
use crate::ownership::owned_entries;
use crate::plan::{self, AccountChange, AccountState};
use crate::refresh::error_chain;

/// The `apiVersion` and `kind` of the JSON document.
pub const API_VERSION: &str = crate::ownership::REPORT_API_VERSION;
pub const KIND: &str = "Cleanup";

/// Errors that stop `cleanup` before it removes anything.
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error(transparent)]
    Observe(#[from] PreviewError),
    #[error("cannot read lease {namespace}/{name}")]
    ReadLease {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "instance {instance} is still running: lease {lease} is held by {holder}, renewed {renewed_ago_seconds}s ago (lease duration {duration_seconds}s); uninstall it first (helm uninstall / kubectl delete -k), or pass --force"
    )]
    Running {
        instance: String,
        lease: String,
        holder: String,
        renewed_ago_seconds: i64,
        duration_seconds: i32,
    },
    #[error("cannot check this identity's permissions")]
    Review(#[source] kube::Error),
    #[error(
        "this identity may not {}; nothing was removed. Run cleanup with an admin kubeconfig (--kubeconfig)",
        .missing.join(", ")
    )]
    Forbidden { missing: Vec<String> },
}

/// One thing to remove.
#[derive(Clone, Debug, PartialEq)]
pub enum Removal {
    /// A Secret of this installation, deleted only if it is still the one observed (`uid`).
    Secret {
        namespace: String,
        name: String,
        uid: Option<String>,
    },
    /// The entries this installation recorded on a ServiceAccount, and the record.
    Account {
        namespace: String,
        /// The entries the patch removes, sorted.
        entries: Vec<String>,
        /// The annotation that recorded them (removed with them).
        annotation: String,
        change: AccountChange,
    },
    /// The leader-election Lease, deleted only if it is still the version observed.
    Lease {
        namespace: String,
        name: String,
        resource_version: Option<String>,
    },
}

impl Removal {
    fn kind(&self) -> &'static str {
        match self {
            Self::Secret { .. } => "Secret",
            Self::Account { .. } => "ServiceAccount",
            Self::Lease { .. } => "Lease",
        }
    }

    fn namespace(&self) -> &str {
        match self {
            Self::Secret { namespace, .. }
            | Self::Account { namespace, .. }
            | Self::Lease { namespace, .. } => namespace,
        }
    }

    fn name(&self) -> &str {
        match self {
            Self::Secret { name, .. } | Self::Lease { name, .. } => name,
            Self::Account { change, .. } => &change.name,
        }
    }

    /// The line saying what was (`done`) or would be done.
    fn line(&self, done: bool) -> String {
        let (ns, name) = (self.namespace(), self.name());
        match self {
            Self::Secret { .. } if done => format!("deleted secret {ns}/{name}"),
            Self::Secret { .. } => format!("would delete secret {ns}/{name}"),
            Self::Lease { .. } if done => format!("deleted lease {ns}/{name}"),
            Self::Lease { .. } => format!("would delete lease {ns}/{name}"),
            Self::Account {
                entries,
                annotation,
                ..
            } => {
                let verb = if done { "removed" } else { "would remove" };
                if entries.is_empty() {
                    // The record names entries the list no longer holds: only the record goes.
                    format!("serviceaccount {ns}/{name}: {verb} annotation {annotation}")
                } else {
                    format!(
                        "serviceaccount {ns}/{name}: {verb} imagePullSecrets {}",
                        entries.join(", ")
                    )
                }
            }
        }
    }

    /// The permission the removal needs: verb, API group, resource, and the name when a role
    /// may grant it by name (pullkeeper's grants Secrets only by name).
    fn permission(&self) -> (&'static str, &'static str, &'static str, Option<&str>) {
        match self {
            Self::Secret { name, .. } => ("delete", "", "secrets", Some(name)),
            Self::Account { .. } => ("patch", "", "serviceaccounts", None),
            Self::Lease { .. } => ("delete", "coordination.k8s.io", "leases", None),
        }
    }
}

/// The installation's Lease, as `run --leader-elect` names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRef {
    pub namespace: String,
    pub name: String,
}

impl LeaseRef {
    pub fn of(owner: &Owner, namespace: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: crate::leader::lease_name(&owner.instance),
        }
    }
}

/// Whether the installation still runs: its Lease has a holder that renewed it within its
/// duration (the daemon's own rule, [`leader::holder`]). A released Lease (no holder, as a
/// daemon stopped by SIGTERM leaves it) or an expired one means it does not.
pub fn running(owner: &Owner, lease: &Lease, now: Timestamp) -> Option<CleanupError> {
    let spec = lease.spec.as_ref()?;
    let holder = leader::holder(spec, now)?;
    let renewed_ago_seconds = spec
        .renew_time
        .as_ref()
        .map_or(0, |t| now.duration_since(t.0).as_secs());
    Some(CleanupError::Running {
        instance: owner.instance.clone(),
        lease: format!(
            "{}/{}",
            lease.metadata.namespace.as_deref().unwrap_or_default(),
            lease.metadata.name.as_deref().unwrap_or_default()
        ),
        holder: holder.to_string(),
        renewed_ago_seconds,
        duration_seconds: spec.lease_duration_seconds.unwrap_or(15),
    })
}

/// What to remove, in the order it is removed: ServiceAccount entries first (no account is
/// left naming a Secret already gone), then Secrets, then the Lease. Only objects carrying this
/// installation's labels, and only the entries its own annotation records (as `run` prunes
/// them: [`plan::account_patch`] with nothing wanted), are ever in it.
pub fn plan(
    owner: &Owner,
    secrets: &[Arc<Secret>],
    accounts: &[Arc<ServiceAccount>],
    lease: Option<&Lease>,
) -> Vec<Removal> {
    let key = |meta: &kube::api::ObjectMeta| {
        (
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
        )
    };
    let mut account_removals: BTreeMap<(String, String), Removal> = BTreeMap::new();
    for sa in accounts {
        let state = AccountState::of(sa, owner);
        let Some(patch) = plan::account_patch(owner, &state, &BTreeSet::new()) else {
            continue;
        };
        let (namespace, name) = key(&sa.metadata);
        let entries = plan::account_edits(&state, &patch).remove;
        account_removals.insert(
            (namespace.clone(), name.clone()),
            Removal::Account {
                namespace,
                entries,
                annotation: owner.account_annotation(),
                change: AccountChange {
                    name,
                    wanted: BTreeSet::new(),
                    patch,
                },
            },
        );
    }
    let secret_removals: BTreeMap<(String, String), Removal> = secrets
        .iter()
        .filter(|s| owner.owns(&s.metadata))
        .map(|s| {
            let (namespace, name) = key(&s.metadata);
            (
                (namespace.clone(), name.clone()),
                Removal::Secret {
                    namespace,
                    name,
                    uid: s.metadata.uid.clone(),
                },
            )
        })
        .collect();
    let lease = lease.map(|l| Removal::Lease {
        namespace: l.metadata.namespace.clone().unwrap_or_default(),
        name: l.metadata.name.clone().unwrap_or_default(),
        resource_version: l.metadata.resource_version.clone(),
    });
    account_removals
        .into_values()
        .chain(secret_removals.into_values())
        .chain(lease)
        .collect()
}

/// The outcome of one removal.
#[derive(Debug)]
pub enum Outcome {
    /// `--dry-run`: not attempted.
    Planned,
    Done,
    Failed(String),
}

/// What `cleanup` did or would do.
#[derive(Debug)]
pub struct Report {
    pub instance: String,
    pub dry_run: bool,
    pub actions: Vec<(Removal, Outcome)>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonReport<'r> {
    api_version: &'static str,
    kind: &'static str,
    instance: &'r str,
    dry_run: bool,
    actions: Vec<JsonAction<'r>>,
    summary: Summary,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonAction<'r> {
    kind: &'static str,
    namespace: &'r str,
    name: &'r str,
    /// For a ServiceAccount: the entries removed and the annotation removed with them.
    #[serde(skip_serializing_if = "Option::is_none")]
    remove_entries: Option<&'r [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    remove_annotation: Option<&'r str>,
    /// `planned` (`--dry-run`), `done` or `failed`.
    result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'r str>,
}

/// Counts by kind.
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub secrets: usize,
    pub service_accounts: usize,
    pub entries: usize,
    pub leases: usize,
    pub failed: usize,
}

impl Report {
    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for (removal, outcome) in &self.actions {
            match removal {
                Removal::Secret { .. } => s.secrets += 1,
                Removal::Account { entries, .. } => {
                    s.service_accounts += 1;
                    s.entries += entries.len();
                }
                Removal::Lease { .. } => s.leases += 1,
            }
            if matches!(outcome, Outcome::Failed(_)) {
                s.failed += 1;
            }
        }
        s
    }

    /// Whether a removal failed.
    pub fn failed(&self) -> bool {
        self.actions
            .iter()
            .any(|(_, o)| matches!(o, Outcome::Failed(_)))
    }

    /// The exit code: 0 nothing (left) to clean, 1 with `--dry-run` when something would be
    /// removed, 2 when a removal failed.
    pub fn exit_code(&self) -> i32 {
        if self.failed() {
            2
        } else {
            i32::from(self.dry_run && !self.actions.is_empty())
        }
    }

    /// One line per action done or planned (failures are in [`Report::errors`]) and a summary.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        if self.actions.is_empty() {
            let _ = writeln!(out, "nothing to clean for instance {}", self.instance);
            return out;
        }
        for (removal, outcome) in &self.actions {
            match outcome {
                Outcome::Planned => out.push_str(&removal.line(false)),
                Outcome::Done => out.push_str(&removal.line(true)),
                Outcome::Failed(_) => continue,
            }
            out.push('\n');
        }
        let s = self.summary();
        let counts = format!(
            "{} Secret(s), {} ServiceAccount(s) ({} entries), {} Lease(s)",
            s.secrets, s.service_accounts, s.entries, s.leases
        );
        let _ = if self.dry_run {
            writeln!(
                out,
                "instance {}: would remove {counts}; nothing was changed (--dry-run)",
                self.instance
            )
        } else if s.failed > 0 {
            writeln!(
                out,
                "instance {}: {} of {} removals failed; run cleanup again once the cause is fixed",
                self.instance,
                s.failed,
                self.actions.len()
            )
        } else {
            writeln!(out, "instance {}: removed {counts}", self.instance)
        };
        out
    }

    /// One line per failed removal, for stderr.
    pub fn errors(&self) -> Vec<String> {
        self.actions
            .iter()
            .filter_map(|(removal, outcome)| match outcome {
                Outcome::Failed(e) => Some(format!(
                    "cannot remove {} {}/{}: {e}",
                    removal.kind().to_ascii_lowercase(),
                    removal.namespace(),
                    removal.name()
                )),
                _ => None,
            })
            .collect()
    }

    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        let actions = self
            .actions
            .iter()
            .map(|(removal, outcome)| {
                let (remove_entries, remove_annotation) = match removal {
                    Removal::Account {
                        entries,
                        annotation,
                        ..
                    } => (Some(entries.as_slice()), Some(annotation.as_str())),
                    _ => (None, None),
                };
                let (result, error) = match outcome {
                    Outcome::Planned => ("planned", None),
                    Outcome::Done => ("done", None),
                    Outcome::Failed(e) => ("failed", Some(e.as_str())),
                };
                JsonAction {
                    kind: removal.kind(),
                    namespace: removal.namespace(),
                    name: removal.name(),
                    remove_entries,
                    remove_annotation,
                    result,
                    error,
                }
            })
            .collect();
        serde_json::to_string_pretty(&JsonReport {
            api_version: API_VERSION,
            kind: KIND,
            instance: &self.instance,
            dry_run: self.dry_run,
            actions,
            summary: self.summary(),
        })
    }
}

/// How `cleanup` runs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Decide and report, write nothing.
    pub dry_run: bool,
    /// Clean up even while the Lease says the installation runs.
    pub force: bool,
    /// How long a held Lease may take to be released or to expire before cleanup refuses:
    /// right after an uninstall the last leader's Lease can outlive its Pod (its release is
    /// forbidden once the RBAC is gone), for at most the Lease duration.
    pub wait: std::time::Duration,
}

/// Reads the cluster once, refuses while the installation runs (unless `force`), checks that
/// this identity may make every removal, and makes them (none with `dry_run`). A removal that
/// fails is reported and the others are still made.
pub async fn cleanup(
    client: &Client,
    owner: &Owner,
    lease: &LeaseRef,
    writes: WriteMetrics,
    options: Options,
) -> Result<Report, CleanupError> {
    let read_lease = || async {
        Api::<Lease>::namespaced(client.clone(), &lease.namespace)
            .get_opt(&lease.name)
            .await
            .map_err(|source| CleanupError::ReadLease {
                namespace: lease.namespace.clone(),
                name: lease.name.clone(),
                source,
            })
    };
    let deadline = tokio::time::Instant::now() + options.wait;
    let mut observed_lease = read_lease().await?;
    if !options.force {
        let mut said = false;
        while let Some(refusal) = observed_lease
            .as_ref()
            .and_then(|l| running(owner, l, Timestamp::now()))
        {
            if tokio::time::Instant::now() >= deadline {
                return Err(refusal);
            }
            if !said {
                eprintln!(
                    "{refusal}; waiting up to {} for it to be released or to expire",
                    humantime::format_duration(options.wait)
                );
                said = true;
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            observed_lease = read_lease().await?;
        }
    }
    let (secrets, accounts) = observe(client, owner).await?;
    let removals = plan(owner, &secrets, &accounts, observed_lease.as_ref());
    let mut report = Report {
        instance: owner.instance.clone(),
        dry_run: options.dry_run,
        actions: Vec::with_capacity(removals.len()),
    };
    if options.dry_run {
        report.actions = removals
            .into_iter()
            .map(|r| (r, Outcome::Planned))
            .collect();
        return Ok(report);
    }
    let missing = missing_permissions(client, &removals).await?;
    if !missing.is_empty() {
        return Err(CleanupError::Forbidden { missing });
    }
    // Requests are made one after the other, which paces them; the applier's limit is off.
    let applier = Applier::new(owner.clone(), client.clone(), writes, 0.0);
    for removal in removals {
        let outcome = match remove(&applier, client, &removal).await {
            Ok(()) => Outcome::Done,
            Err(e) => Outcome::Failed(e),
        };
        report.actions.push((removal, outcome));
    }
    Ok(report)
}

/// Lists every ServiceAccount and the installation's Secrets: by its labels when this identity
/// may list every Secret (an admin, after an uninstall), otherwise by name — the names its
/// ServiceAccount records hold and those the role grants by name — as `run` reads them.
async fn observe(
    client: &Client,
    owner: &Owner,
) -> Result<(Vec<Arc<Secret>>, Vec<Arc<ServiceAccount>>), CleanupError> {
    let list_error = |resource| move |source| PreviewError::List { resource, source };
    let accounts: Vec<Arc<ServiceAccount>> = Api::<ServiceAccount>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(list_error("serviceaccounts"))?
        .items
        .into_iter()
        .map(Arc::new)
        .collect();
    let secrets_api = Api::<Secret>::all(client.clone());
    let everything = access::allowed(client, "list", "", "secrets", None, None)
        .await
        .map_err(CleanupError::Review)?;
    let secrets: Vec<Secret> = if everything {
        secrets_api
            .list(&ListParams::default().labels(&owner.selector()))
            .await
            .map_err(list_error("secrets"))?
            .items
    } else {
        let mut names: BTreeSet<String> = accounts
            .iter()
            .flat_map(|sa| owned_entries(owner, sa))
            .collect();
        if let Ok(granted) = access::secret_access(client, "default").await {
            names.extend(granted.covered_names());
        }
        let mut found = Vec::new();
        for name in names {
            let listed = secrets_api
                .list(&ListParams::default().fields(&format!("metadata.name={name}")))
                .await
                .map_err(|source| PreviewError::ListNamed { name, source })?;
            found.extend(listed.items);
        }
        found
    };
    Ok((
        secrets
            .into_iter()
            .filter(|s| owner.owns(&s.metadata))
            .map(Arc::new)
            .collect(),
        accounts,
    ))
}

async fn remove(applier: &Applier, client: &Client, removal: &Removal) -> Result<(), String> {
    let chain = |e: &WriteError| error_chain(e);
    match removal {
        Removal::Secret {
            namespace,
            name,
            uid,
        } => applier
            .delete_secret(namespace, name, uid.clone())
            .await
            .map_err(|e| chain(&e)),
        Removal::Account {
            namespace, change, ..
        } => applier
            .patch_account(namespace, change)
            .await
            .map(|_| ())
            .map_err(|e| chain(&e)),
        Removal::Lease {
            namespace,
            name,
            resource_version,
        } => match leader::delete(client, namespace, name, resource_version.clone()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Err(format!(
                "lease {namespace}/{name} changed since cleanup read it: did pullkeeper start again?"
            )),
            Err(kube::Error::Api(s)) => Err(format!(
                "delete lease {namespace}/{name} failed: {}",
                s.message
            )),
            Err(e) => Err(format!(
                "delete lease {namespace}/{name} failed: {}",
                error_chain(&e)
            )),
        },
    }
}

/// The permissions the removals need that this identity lacks, as readable phrases. Each
/// permission is asked cluster-wide first (one review for an admin) and, when that is denied,
/// per namespace involved.
async fn missing_permissions(
    client: &Client,
    removals: &[Removal],
) -> Result<Vec<String>, CleanupError> {
    let mut needed: BTreeMap<(&str, &str, &str, Option<&str>), BTreeSet<&str>> = BTreeMap::new();
    for removal in removals {
        needed
            .entry(removal.permission())
            .or_default()
            .insert(removal.namespace());
    }
    let mut missing = Vec::new();
    for ((verb, group, resource, name), namespaces) in needed {
        if allowed(client, verb, group, resource, None, name).await? {
            continue;
        }
        let mut denied = Vec::new();
        for ns in namespaces {
            if !allowed(client, verb, group, resource, Some(ns), name).await? {
                denied.push(ns);
            }
        }
        if !denied.is_empty() {
            let resource = if group.is_empty() {
                resource.to_string()
            } else {
                format!("{resource}.{group}")
            };
            let named = name.map(|n| format!(" named {n}")).unwrap_or_default();
            missing.push(format!(
                "{verb} {resource}{named} in namespace {}",
                denied.join(", ")
            ));
        }
    }
    Ok(missing)
}

async fn allowed(
    client: &Client,
    verb: &str,
    group: &str,
    resource: &str,
    namespace: Option<&str>,
    name: Option<&str>,
) -> Result<bool, CleanupError> {
    access::allowed(client, verb, group, resource, namespace, name)
        .await
        .map_err(CleanupError::Review)
}

#[cfg(test)]
mod tests;
