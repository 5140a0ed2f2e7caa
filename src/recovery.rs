//! Pod recovery's I/O: what `reconcile` is for `plan`, this is for `recover`. It reads the
//! stuck Pods from the Pod cache and the index, lets [`recover::Memory::decide`] decide, and
//! carries the decisions out with the applier and the event publisher it is handed: the gauge,
//! one Event per Pod that cannot recover, and the deletions.
//!
//! A round runs as soon as something that can free a Pod happened — a write of the reconciler
//! (a ServiceAccount now listing the Secret, a Secret written), a change of a pending Pod, the
//! daemon becoming ready — and otherwise every recovery interval. A Pod recreated within moments
//! of its ServiceAccount listing the Secret is the point: a stuck replica serves nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::Store as Cache;
use tokio::sync::{Notify, watch};
use tracing::{error, info, warn};

use crate::apply::{Applier, WriteError};
use crate::cli::RecoveryMode;
use crate::events::{EventType, Events, pod_reference};
use crate::index::Index;
use crate::metrics::RecoveryMetrics;
use crate::recover::{self, Stuck, Verdict};
use crate::refresh::error_chain;
use crate::store::Store;

/// Recovery of Pods stuck before their credential existed (off by default).
#[derive(Clone, Debug)]
pub struct RecoverySettings {
    pub mode: RecoveryMode,
    /// The longest wait between two rounds (rounds also run at once on a change).
    pub interval: Duration,
    pub limits: recover::Limits,
}

/// How long a wake-up waits for the changes that come with it (a sweep's writes, a burst of Pod
/// updates) so they make one round.
const SETTLE: Duration = Duration::from_millis(100);

/// Deletions in flight at once in one round.
const CONCURRENT_DELETES: usize = 8;

/// What recovery reads and remembers.
pub struct Recovery {
    pub settings: RecoverySettings,
    pub store: Arc<Store>,
    pub index: Arc<Index>,
    pub pods: Cache<Pod>,
    pub metrics: RecoveryMetrics,
    memory: recover::Memory,
}

/// What recovery acts with, handed over by the daemon.
pub struct Hands<'a> {
    pub applier: &'a Applier,
    pub events: &'a Events,
    pub leader: &'a watch::Receiver<bool>,
}

impl Recovery {
    pub fn new(
        settings: RecoverySettings,
        store: Arc<Store>,
        index: Arc<Index>,
        pods: Cache<Pod>,
        metrics: RecoveryMetrics,
    ) -> Self {
        Self {
            settings,
            store,
            index,
            pods,
            metrics,
            memory: recover::Memory::default(),
        }
    }

    /// Runs a round whenever `wake` is notified, and at least every interval.
    pub async fn run(mut self, wake: Arc<Notify>, hands: Hands<'_>) {
        loop {
            let _ = tokio::time::timeout(self.settings.interval, wake.notified()).await;
            tokio::time::sleep(SETTLE).await;
            self.round(&hands).await;
        }
    }

    /// One round: count, tell, delete.
    pub async fn round(&mut self, hands: &Hands<'_>) {
        let stuck = self.stuck_pods();
        let act = self.settings.mode == RecoveryMode::On && *hands.leader.borrow();
        let decisions = self
            .memory
            .decide(&self.settings.limits, stuck, act, Utc::now());
        let generation = self.store.current();
        let registries: Vec<&str> = generation
            .config
            .registries
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        self.metrics
            .stuck(&registries, &recover::PULL_REASONS, &decisions.counts);
        for s in &decisions.tell {
            tell(hands.events, s).await;
        }
        self.delete(hands, &decisions.delete).await;
    }

    /// Deletes the chosen Pods, [`CONCURRENT_DELETES`] at a time (the applier's write rate
    /// still applies), then tells about each one deleted: the Events wait for the deletions,
    /// never the other way round, and the next round waits for neither.
    async fn delete(&mut self, hands: &Hands<'_>, chosen: &[Stuck]) {
        // Batches joined in a plain loop: a closure returning a borrowing future would not be
        // `Send` for every lifetime the spawned task needs.
        let mut results: Vec<(&Stuck, Result<bool, WriteError>)> = Vec::new();
        for batch in chosen.chunks(CONCURRENT_DELETES) {
            let mut deletions = Vec::with_capacity(batch.len());
            for s in batch {
                deletions.push(hands.applier.delete_pod(&s.namespace, &s.name, &s.uid));
            }
            results.extend(batch.iter().zip(futures::future::join_all(deletions).await));
        }
        let now = Utc::now();
        let mut deleted = Vec::new();
        for (s, result) in results {
            match result {
                Ok(gone) => {
                    self.memory.deleted(s, now);
                    if gone {
                        self.metrics.recovered(&s.registry);
                        deleted.push(s.clone());
                    }
                }
                Err(e) => {
                    error!(namespace = %s.namespace, pod = %s.name, category = e.category(), error = %error_chain(&e), "deleting a stuck pod failed");
                }
            }
        }
        // The Events go out on their own task: the next round (Pods freed meanwhile) does not
        // wait for two Event requests per Pod of this one.
        let events = hands.events.clone();
        tokio::spawn(async move {
            for s in &deleted {
                recovered(&events, s).await;
            }
        });
    }

    /// Every Pod waiting for an image on a managed registry, with a verdict.
    fn stuck_pods(&self) -> Vec<Stuck> {
        let generation = self.store.current();
        let credentials = generation.credentials();
        let mut by_namespace: BTreeMap<String, Vec<Arc<Pod>>> = BTreeMap::new();
        for pod in self.pods.state() {
            if let Some(ns) = pod.metadata.namespace.clone() {
                by_namespace.entry(ns).or_default().push(pod);
            }
        }
        let mut stuck = Vec::new();
        for (ns, pods) in by_namespace {
            let Some(namespace) = self.index.namespace_state(&ns) else {
                continue;
            };
            let (secrets, accounts) = self.index.namespace(&ns);
            let secrets: Vec<String> = secrets
                .into_iter()
                .filter(|s| s.owned)
                .map(|s| s.name)
                .collect();
            let view = recover::NamespaceView {
                namespace: &namespace,
                secrets: &secrets,
                service_accounts: &accounts,
            };
            stuck.extend(recover::stuck_pods(
                &generation.config.registries,
                &credentials,
                &view,
                &pods,
            ));
        }
        stuck
    }
}

/// Tells about one recovered Pod: a log line, an Event on it, and an Event of its own on
/// pullkeeper's Pod naming it (and related to it).
async fn recovered(events: &Events, s: &Stuck) {
    let Verdict::Recover {
        owner_kind,
        owner_name,
        ..
    } = &s.verdict
    else {
        return;
    };
    let pod = pod_reference(&s.namespace, &s.name, &s.uid);
    let note = format!(
        "deleted so that {owner_kind} {owner_name} recreates it with imagePullSecrets {} (it was created before its ServiceAccount listed it; image {})",
        s.secret, s.image
    );
    info!(namespace = %s.namespace, pod = %s.name, registry = %s.registry, owner_kind = %owner_kind, owner = %owner_name, "stuck pod recovered");
    events
        .normal(&pod, "Recovered", "Delete", note.clone())
        .await;
    events
        .on_own_pod(
            EventType::Normal,
            "RecoveredPod",
            "Delete",
            Some(&pod),
            format!("Pod {}/{}: {note}", s.namespace, s.name),
        )
        .await;
}

/// Tells, once, about a Pod that cannot recover by itself (log line and an Event on it).
async fn tell(events: &Events, s: &Stuck) {
    let Verdict::CannotRecover { why } = &s.verdict else {
        return;
    };
    warn!(namespace = %s.namespace, pod = %s.name, registry = %s.registry, "{why}");
    events
        .warn(
            &pod_reference(&s.namespace, &s.name, &s.uid),
            "CannotRecover",
            "Recover",
            format!(
                "pullkeeper cannot recover this Pod (it lacks imagePullSecrets {} for {}): {why}",
                s.secret, s.image
            ),
        )
        .await;
}
