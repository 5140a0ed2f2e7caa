//! Reconciling one namespace: plan it once from the caches and the current generation, then
//! let the applier write. Same-named Secrets found to be someone else's are remembered for a
//! while (their deletion is not watched). One namespace is synced by one task at a time,
//! whether the sync came from a watch event, a rotation sweep or `once`.

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::RwLock;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::runtime::reflector::Store as Cache;
use tokio::sync::{Mutex, watch};
use tracing::{error, warn};

use crate::apply::{Applier, SecretOutcome};
use crate::events::{Events, core_reference};
use crate::ownership::Owner;
use crate::plan::{self, Observed, SecretChange};
use crate::refresh::error_chain;
use crate::store::Generation;

/// Errors of one namespace reconcile.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("{failed} write(s) failed in namespace {namespace}")]
    Writes { namespace: String, failed: usize },
}

/// Same-named Secrets found to be someone else's, each with the time until which it is left
/// alone. A mark expires and the Secret is looked at again; a namespace still blocked renews
/// it on every look.
#[derive(Default)]
pub struct ForeignMarks(RwLock<HashMap<(String, String), DateTime<Utc>>>);

impl ForeignMarks {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<(String, String), DateTime<Utc>>> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<(String, String), DateTime<Utc>>> {
        self.0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The Secret names marked in a namespace and not expired at `now`.
    pub fn in_namespace(&self, namespace: &str, now: DateTime<Utc>) -> HashSet<String> {
        self.read()
            .iter()
            .filter(|((ns, _), until)| ns == namespace && **until > now)
            .map(|((_, name), _)| name.clone())
            .collect()
    }

    pub fn mark(&self, namespace: &str, name: &str, until: DateTime<Utc>) {
        self.write()
            .insert((namespace.to_string(), name.to_string()), until);
    }

    pub fn clear(&self, namespace: &str, name: &str) {
        self.write()
            .remove(&(namespace.to_string(), name.to_string()));
    }

    /// Drops marks that expired before `stale_before`: their namespace left scope or was
    /// deleted.
    pub fn prune(&self, stale_before: DateTime<Utc>) {
        self.write().retain(|_, until| *until > stale_before);
    }

    /// How many marks name this Secret, across namespaces.
    pub fn count(&self, name: &str) -> usize {
        self.read().keys().filter(|(_, n)| n == name).count()
    }
}

/// One lock per stripe of namespaces: two tasks never sync the same namespace at once (a
/// second one would plan from a cache that has not seen the first one's writes).
pub struct NamespaceLocks(Vec<Mutex<()>>);

impl NamespaceLocks {
    fn new(stripes: usize) -> Self {
        Self((0..stripes.max(1)).map(|_| Mutex::new(())).collect())
    }

    fn of(&self, namespace: &str) -> &Mutex<()> {
        let mut h = DefaultHasher::new();
        namespace.hash(&mut h);
        let i = usize::try_from(h.finish() % self.0.len() as u64).unwrap_or(0);
        &self.0[i]
    }
}

/// The watched objects a reconcile reads.
#[derive(Clone)]
pub struct Caches {
    pub namespaces: Cache<Namespace>,
    pub secrets: Cache<Secret>,
    pub accounts: Cache<ServiceAccount>,
}

/// Syncs namespaces. Followers keep warm caches and write nothing.
pub struct Reconciler {
    pub owner: Owner,
    pub applier: Applier,
    pub events: Events,
    pub foreign: ForeignMarks,
    pub foreign_recheck: Duration,
    locks: NamespaceLocks,
    leader: watch::Receiver<bool>,
}

impl Reconciler {
    pub fn new(
        owner: Owner,
        applier: Applier,
        events: Events,
        foreign_recheck: Duration,
        leader: watch::Receiver<bool>,
    ) -> Self {
        Self {
            owner,
            applier,
            events,
            foreign: ForeignMarks::default(),
            foreign_recheck,
            locks: NamespaceLocks::new(64),
            leader,
        }
    }

    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// Plans and applies one namespace. Returns whether a Secret someone else owns blocks a
    /// registry here (the caller looks again later).
    pub async fn sync_namespace(
        &self,
        generation: &Generation,
        caches: &Caches,
        ns: &Namespace,
    ) -> Result<bool, ReconcileError> {
        if !self.is_leader() {
            return Ok(false);
        }
        let name = ns.metadata.name.clone().unwrap_or_default();
        let _one_at_a_time = self.locks.of(&name).lock().await;
        let now = Utc::now();
        let mut foreign = self.foreign.in_namespace(&name, now);
        let in_ns = |namespace: Option<&str>| namespace == Some(name.as_str());
        let observed = Observed {
            namespace: ns,
            secrets: caches
                .secrets
                .state_filter(|s| in_ns(s.metadata.namespace.as_deref())),
            service_accounts: caches
                .accounts
                .state_filter(|s| in_ns(s.metadata.namespace.as_deref())),
            foreign: &foreign,
            now,
        };
        let plan = plan::plan_namespace(
            &self.owner,
            &generation.config.registries,
            &generation.credentials(),
            &observed,
        );
        let mut failed = 0;
        let mut newly_foreign = HashSet::new();
        for change in &plan.secrets {
            match change {
                SecretChange::Apply {
                    registry,
                    secret,
                    existing,
                    stray_keys,
                    resource_version,
                } => match self
                    .applier
                    .apply_secret(secret, *existing, stray_keys, resource_version.as_deref())
                    .await
                {
                    Ok(SecretOutcome::Written) => self.foreign.clear(&name, &secret.name),
                    Ok(SecretOutcome::Foreign) => {
                        self.found_foreign(&name, &secret.name, registry, now).await;
                        newly_foreign.insert(secret.name.clone());
                    }
                    Err(e) => {
                        failed += 1;
                        error!(namespace = %name, registry = %registry, category = e.category(), error = %error_chain(&e), "writing secret failed");
                    }
                },
                SecretChange::Delete {
                    name: secret_name,
                    registry,
                    uid,
                } => {
                    if let Err(e) = self
                        .applier
                        .delete_secret(&name, secret_name, uid.clone())
                        .await
                    {
                        failed += 1;
                        error!(namespace = %name, registry = ?registry, category = e.category(), error = %error_chain(&e), "pruning secret failed");
                    }
                }
            }
        }
        // ServiceAccounts must never reference a Secret someone else owns.
        for change in plan.accounts_without(&self.owner, &newly_foreign) {
            if let Err(e) = self.applier.patch_account(&name, &change).await {
                failed += 1;
                error!(namespace = %name, serviceaccount = %change.name, category = e.category(), error = %error_chain(&e), "patching serviceaccount failed");
            }
        }
        if failed > 0 {
            return Err(ReconcileError::Writes {
                namespace: name,
                failed,
            });
        }
        foreign.extend(newly_foreign);
        Ok(!foreign.is_empty())
    }

    async fn found_foreign(
        &self,
        namespace: &str,
        secret: &str,
        registry: &str,
        now: DateTime<Utc>,
    ) {
        warn!(
            namespace,
            secret,
            registry,
            "a Secret of that name exists and is not pullkeeper's; leaving it untouched"
        );
        let until = now + TimeDelta::from_std(self.foreign_recheck).unwrap_or_default();
        self.foreign.mark(namespace, secret, until);
        self.events
            .warn(
                &core_reference("Secret", namespace, secret),
                "ForeignSecret",
                "Skip",
                format!(
                    "Secret {secret} is not managed by pullkeeper (registry {registry}); it was left untouched"
                ),
            )
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_marks_expire_at_the_time_given_and_are_pruned_later() {
        let marks = ForeignMarks::default();
        let now = Utc::now();
        let minute = TimeDelta::minutes(1);
        marks.mark("team-a", "pull", now + minute);
        assert!(marks.in_namespace("team-a", now).contains("pull"));
        assert!(marks.in_namespace("team-b", now).is_empty());
        assert!(marks.in_namespace("team-a", now + minute * 2).is_empty());
        assert_eq!(marks.count("pull"), 1);
        marks.prune(now);
        assert_eq!(marks.count("pull"), 1);
        marks.prune(now + minute * 2);
        assert_eq!(marks.count("pull"), 0);
    }

    #[test]
    fn a_namespace_always_maps_to_the_same_lock() {
        let locks = NamespaceLocks::new(8);
        assert!(std::ptr::eq(locks.of("team-a"), locks.of("team-a")));
    }
}
