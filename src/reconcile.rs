//! Reconciling one namespace: plan it once from the index and the current generation, let the
//! applier write, and keep what each write returned in the index (write-through), so the next
//! plan of this namespace starts from its own writes. One namespace is synced by one task at a
//! time, whether the sync came from a watch event, a rotation sweep or `once`.

use std::collections::{BTreeSet, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex as SyncMutex, RwLock};

use tokio::sync::{Mutex, Notify, watch};
use tracing::{error, warn};

use crate::apply::{Applier, SecretOutcome};
use crate::events::{Events, core_reference};
use crate::index::Index;
use crate::ownership::Owner;
use crate::plan::{self, AccountState, NamespaceState, Observed, SecretChange, SecretState};
use crate::refresh::error_chain;
use crate::store::Generation;

/// Errors of one namespace reconcile.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("{failed} write(s) failed in namespace {namespace}")]
    Writes { namespace: String, failed: usize },
}

/// One lock per stripe of namespaces: two tasks never sync the same namespace at once (a
/// second one would plan without the first one's writes).
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

/// Secret names nothing is planned for now (see [`Observed::frozen`]), swapped whole.
#[derive(Default)]
pub struct Frozen(RwLock<Arc<BTreeSet<String>>>);

impl Frozen {
    pub fn get(&self) -> Arc<BTreeSet<String>> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn set(&self, names: BTreeSet<String>) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(names);
    }
}

/// Syncs namespaces. Followers keep warm caches and write nothing.
pub struct Reconciler {
    pub owner: Owner,
    pub applier: Applier,
    pub events: Events,
    pub index: Arc<Index>,
    pub frozen: Frozen,
    /// Same-named Secrets already reported (namespace, name, UID): one Event each.
    told: SyncMutex<HashSet<(String, String, String)>>,
    locks: NamespaceLocks,
    /// Namespace syncs in flight at once, whoever asks (the queue's workers and a sweep): each
    /// makes one request at a time, so this bounds pullkeeper's requests at the API server.
    in_flight: tokio::sync::Semaphore,
    leader: watch::Receiver<bool>,
    /// Woken after a sync wrote something (pod recovery then looks at once: a ServiceAccount
    /// that now lists the Secret frees the Pods stuck before it did).
    pub written: Option<Arc<Notify>>,
}

impl Reconciler {
    pub fn new(
        owner: Owner,
        applier: Applier,
        events: Events,
        index: Arc<Index>,
        leader: watch::Receiver<bool>,
        concurrency: usize,
    ) -> Self {
        Self {
            owner,
            applier,
            events,
            index,
            frozen: Frozen::default(),
            told: SyncMutex::default(),
            locks: NamespaceLocks::new(64),
            in_flight: tokio::sync::Semaphore::new(concurrency.max(1)),
            leader,
            written: None,
        }
    }

    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// Plans and applies one namespace.
    pub async fn sync_namespace(
        &self,
        generation: &Generation,
        ns: &NamespaceState,
    ) -> Result<(), ReconcileError> {
        if !self.is_leader() {
            return Ok(());
        }
        let name = ns.name.as_str();
        let _one_at_a_time = self.locks.of(name).lock().await;
        let Ok(_slot) = self.in_flight.acquire().await else {
            return Ok(());
        };
        let (secrets, accounts) = self.index.namespace(name);
        let frozen = self.frozen.get();
        let observed = Observed {
            namespace: ns,
            secrets: &secrets,
            service_accounts: &accounts,
            frozen: &frozen,
        };
        let plan = plan::plan_namespace(
            &self.owner,
            &generation.config.registries,
            &generation.credentials(),
            &observed,
        );
        self.tell_blocked(name, &plan.blocked, &secrets).await;
        let mut failed = 0;
        let mut wrote = false;
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
                    Ok(SecretOutcome::Written(written)) => {
                        wrote = true;
                        self.index
                            .put_secret(name, SecretState::of(&written, &self.owner));
                    }
                    Ok(SecretOutcome::Foreign(theirs)) => {
                        let theirs = SecretState::of(&theirs, &self.owner);
                        self.index.put_secret(name, theirs.clone());
                        self.tell_blocked(
                            name,
                            &[(secret.name.clone(), registry.clone())],
                            &[theirs],
                        )
                        .await;
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
                } => match self
                    .applier
                    .delete_secret(name, secret_name, uid.clone())
                    .await
                {
                    Ok(()) => {
                        self.index.remove_secret(name, secret_name, uid.as_deref());
                    }
                    Err(e) => {
                        failed += 1;
                        error!(namespace = %name, registry = ?registry, category = e.category(), error = %error_chain(&e), "pruning secret failed");
                    }
                },
            }
        }
        // ServiceAccounts must never reference a Secret someone else owns.
        let (patched, patch_failures) = self
            .patch_accounts(name, plan.accounts_without(&self.owner, &newly_foreign))
            .await;
        wrote |= patched;
        failed += patch_failures;
        if wrote && let Some(written) = &self.written {
            written.notify_one();
        }
        if failed > 0 {
            return Err(ReconcileError::Writes {
                namespace: name.to_string(),
                failed,
            });
        }
        Ok(())
    }

    /// Applies the ServiceAccount changes of one namespace, keeping what each patch returned in
    /// the index. Returns whether any was written, and how many failed.
    async fn patch_accounts(&self, name: &str, changes: Vec<plan::AccountChange>) -> (bool, usize) {
        let (mut wrote, mut failed) = (false, 0);
        for change in changes {
            match self.applier.patch_account(name, &change).await {
                Ok(Some(patched)) => {
                    wrote = true;
                    self.index
                        .put_account(name, AccountState::of(&patched, &self.owner));
                }
                Ok(None) => {}
                Err(e) => {
                    failed += 1;
                    error!(namespace = %name, serviceaccount = %change.name, category = e.category(), error = %error_chain(&e), "patching serviceaccount failed");
                }
            }
        }
        (wrote, failed)
    }

    /// Reports, once per Secret, each same-named Secret that keeps a registry out of this
    /// namespace (log and Event on that Secret).
    async fn tell_blocked(
        &self,
        namespace: &str,
        blocked: &[(String, String)],
        secrets: &[SecretState],
    ) {
        for (secret, registry) in blocked {
            let uid = secrets
                .iter()
                .find(|s| &s.name == secret)
                .and_then(|s| s.uid.clone())
                .unwrap_or_default();
            let first = self
                .told
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert((namespace.to_string(), secret.clone(), uid));
            if !first {
                continue;
            }
            warn!(
                namespace,
                secret,
                registry,
                "a Secret of that name exists and is not pullkeeper's; leaving it untouched"
            );
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_always_maps_to_the_same_lock() {
        let locks = NamespaceLocks::new(8);
        assert!(std::ptr::eq(locks.of("team-a"), locks.of("team-a")));
    }
}
