//! The daemon: watches Namespaces, `ServiceAccounts` and pullkeeper's own Secrets into caches,
//! runs one refresh task per registry, and syncs namespaces — on their watch events (through a
//! debounced controller), and in sweeps over every namespace after a rotation, a reload, on
//! becoming leader and at each resync interval. Sweeps do not go through the debounced queue,
//! so a namespace whose objects change all the time still gets every rotation.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use futures::{StreamExt, future};

use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, ServiceAccount};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store as Cache};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::{Notify, watch};
use tracing::{Instrument, error, info, info_span, warn};

use crate::apply::Applier;
use crate::cli::RecoveryMode;
use crate::config::LoadOptions;
use crate::events::{Events, PodIdentity, pod_reference};
use crate::metrics::{Metrics, Outcome};
use crate::ownership::{self, Owner};
use crate::reconcile::{Caches, ReconcileError, Reconciler};
use crate::recover;
use crate::refresh::{Refresher, Refreshers, error_chain};
use crate::reload::{Reload, Reloader};
use crate::store::{Generation, Store};

/// Process-level settings (from the command line).
#[derive(Clone, Debug)]
pub struct Settings {
    pub owner: Owner,
    pub config_dir: std::path::PathBuf,
    pub load: LoadOptions,
    pub reload_interval: Duration,
    /// How often every namespace is looked at even without an event (0: never).
    pub resync_interval: Duration,
    pub concurrency: u16,
    pub writes_per_second: f64,
    /// pullkeeper's own Pod (Events about rotations land there), when the downward API says.
    pub pod: Option<PodIdentity>,
    pub fetch_timeout: Duration,
    /// How long a Secret found to be someone else's is left alone before it is looked at again
    /// (its deletion is not watched: only pullkeeper's own Secrets are).
    pub foreign_recheck: Duration,
    pub recovery: RecoverySettings,
}

/// Recovery of Pods stuck before their credential existed (off by default).
#[derive(Clone, Debug)]
pub struct RecoverySettings {
    pub mode: RecoveryMode,
    pub interval: Duration,
    pub limits: recover::Limits,
}

/// Everything the daemon's tasks share.
struct Daemon {
    settings: Settings,
    metrics: Metrics,
    store: Arc<Store>,
    caches: Caches,
    reconciler: Reconciler,
    refresher: Arc<Refresher>,
    /// Woken when every namespace must be looked at (rotation, reload, leadership).
    sweep: Arc<Notify>,
    ready: Arc<AtomicBool>,
}

/// The watches and the state built on them; `run` or `once` drives them.
pub struct Started {
    daemon: Arc<Daemon>,
    controller: Controller<Namespace>,
    /// The watch of pending Pods, when recovery is not off.
    pods: Option<(Cache<Pod>, futures::stream::BoxStream<'static, ()>)>,
}

/// Drops from a cached object what planning never reads.
fn slim<K: Resource>(object: &mut K) {
    object.managed_fields_mut().clear();
    if let Some(annotations) = object.meta_mut().annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// Starts the watches and builds the daemon's state. The generation must already be valid.
pub fn start(
    client: &Client,
    metrics: Metrics,
    settings: Settings,
    generation: Generation,
    leader: watch::Receiver<bool>,
) -> Started {
    // The caches hold what planning reads and no more: managedFields and kubectl's
    // last-applied copy are dropped as objects arrive (at 10,000 namespaces they are most of
    // the memory).
    let (namespaces, namespace_writer) = reflector::store();
    let (secrets, secret_writer) = reflector::store();
    let (accounts, account_writer) = reflector::store();
    let namespace_stream = watcher(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(slim)
    .reflect(namespace_writer)
    .applied_objects();
    let secret_stream = watcher(
        Api::<Secret>::all(client.clone()),
        watcher::Config::default().labels(&settings.owner.selector()),
    )
    .default_backoff()
    .modify(slim)
    .reflect(secret_writer)
    .touched_objects();
    let account_stream = watcher(
        Api::<ServiceAccount>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(slim)
    .reflect(account_writer)
    .touched_objects();
    let controller = Controller::for_stream(namespace_stream, namespaces.clone())
        .with_config(
            // The debounce lets the watch events of a namespace's own writes arrive before it
            // is planned again; without it a re-plan from a cache that has not seen the last
            // patch yet sends it again and gets a failed `test` (measured: 10-28 % extra
            // write requests). Rotations do not wait for it: they sweep.
            kube::runtime::controller::Config::default()
                .concurrency(settings.concurrency)
                .debounce(Duration::from_millis(500)),
        )
        .watches_stream(secret_stream, |s: Secret| {
            s.metadata.namespace.map(|ns| ObjectRef::new(&ns))
        })
        .watches_stream(account_stream, |s: ServiceAccount| {
            s.metadata.namespace.map(|ns| ObjectRef::new(&ns))
        });
    // Only Pods not yet running can be stuck pulling: the field selector keeps the cache small.
    let pods = (settings.recovery.mode != RecoveryMode::Off).then(|| {
        let (pods, pod_writer) = reflector::store();
        let stream = watcher(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default().fields("status.phase=Pending"),
        )
        .default_backoff()
        .modify(slim)
        .reflect(pod_writer)
        .touched_objects()
        .map(|_| ())
        .boxed();
        (pods, stream)
    });
    let events = Events::new(client.clone(), settings.pod.as_ref());
    let applier = Applier::new(
        settings.owner.clone(),
        client.clone(),
        metrics.writes.clone(),
        settings.writes_per_second,
    );
    metrics.config.accepted(generation.config.registries.len());
    let store = Arc::new(Store::new(generation));
    let sweep = Arc::new(Notify::new());
    let refresher = Arc::new(Refresher {
        store: store.clone(),
        metrics: metrics.refresh.clone(),
        events: events.clone(),
        fetch_timeout: settings.fetch_timeout,
        leader: leader.clone(),
        rotated: sweep.clone(),
    });
    let reconciler = Reconciler::new(
        settings.owner.clone(),
        applier,
        events,
        settings.foreign_recheck,
        leader,
    );
    Started {
        daemon: Arc::new(Daemon {
            settings,
            metrics,
            store,
            caches: Caches {
                namespaces,
                secrets,
                accounts,
            },
            reconciler,
            refresher,
            sweep,
            ready: Arc::new(AtomicBool::new(false)),
        }),
        controller,
        pods,
    }
}

/// Waits until all three caches have listed once. A store's readiness signal wakes only its
/// most recent waiter (the controller also waits on the namespace store), so poll it.
async fn caches_synced(caches: &Caches) -> bool {
    async fn ready<K>(store: &Cache<K>) -> bool
    where
        K: kube::runtime::reflector::Lookup + Clone + 'static,
        K::DynamicType: Eq + std::hash::Hash + Clone,
    {
        loop {
            if let Ok(result) =
                tokio::time::timeout(Duration::from_millis(200), store.wait_until_ready()).await
            {
                return result.is_ok();
            }
        }
    }
    ready(&caches.namespaces).await && ready(&caches.secrets).await && ready(&caches.accounts).await
}

impl Daemon {
    /// Syncs one namespace with the current generation.
    async fn sync(&self, ns: &Namespace) -> Result<bool, ReconcileError> {
        let name = ns.name_any();
        let generation = self.store.current();
        self.reconciler
            .sync_namespace(&generation, &self.caches, ns)
            .instrument(info_span!("sync", namespace = %name))
            .await
    }

    /// Syncs every cached namespace, a bounded number at once. Returns whether every write
    /// succeeded.
    async fn sweep_all(&self) -> bool {
        let started = Utc::now();
        let namespaces = self.caches.namespaces.state();
        let count = namespaces.len();
        let failures = std::sync::atomic::AtomicUsize::new(0);
        futures::stream::iter(namespaces)
            .for_each_concurrent(usize::from(self.settings.concurrency.max(1)), |ns| {
                let failures = &failures;
                async move {
                    if let Err(e) = self.sync(&ns).await {
                        failures.fetch_add(1, Ordering::Relaxed);
                        error!(error = %error_chain(&e), "namespace sync failed");
                    }
                }
            })
            .await;
        let ok = failures.load(Ordering::Relaxed) == 0;
        self.metrics.sweeps.completed(
            started,
            count,
            if ok {
                Outcome::Success
            } else {
                Outcome::Failure
            },
        );
        ok
    }

    /// Recomputes the per-registry gauges from the caches.
    fn update_gauges(&self) {
        let recheck = TimeDelta::from_std(self.settings.foreign_recheck).unwrap_or_default();
        self.reconciler.foreign.prune(Utc::now() - recheck);
        let generation = self.store.current();
        let owner = &self.settings.owner;
        for reg in &generation.config.registries {
            let secrets = self.caches.secrets.state_filter(|s| {
                s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(ownership::REGISTRY_LABEL))
                    == Some(&reg.name)
                    && s.metadata.name.as_deref() == Some(&reg.secret_name)
            });
            let accounts = self.caches.accounts.state_filter(|sa| {
                ownership::owned_entries(owner, sa).contains(&reg.secret_name)
                    && sa
                        .image_pull_secrets
                        .iter()
                        .flatten()
                        .any(|r| r.name == reg.secret_name)
            });
            self.metrics.inventory.set(
                &reg.name,
                secrets.len(),
                accounts.len(),
                self.reconciler.foreign.count(&reg.secret_name),
            );
        }
    }
}

/// Sweeps whenever asked to, and at each resync interval.
async fn sweeper(daemon: Arc<Daemon>) {
    let resync = daemon.settings.resync_interval;
    loop {
        if resync.is_zero() {
            daemon.sweep.notified().await;
        } else {
            let _ = tokio::time::timeout(resync, daemon.sweep.notified()).await;
        }
        if daemon.reconciler.is_leader() && daemon.ready.load(Ordering::SeqCst) {
            daemon.sweep_all().await;
        }
    }
}

impl Started {
    /// Whether the initial watches have synced (for `/readyz`).
    pub fn ready_flag(&self) -> Arc<AtomicBool> {
        self.daemon.ready.clone()
    }

    /// Runs the daemon until `stop` completes (a shutdown signal, or leadership lost). Writes
    /// stop before this returns: in-flight namespace syncs finish, no new one starts.
    pub async fn run(self, stop: impl std::future::Future<Output = ()> + Send + Sync + 'static) {
        let Started {
            daemon,
            controller,
            pods,
        } = self;
        let recovery = pods.map(|(cache, stream)| {
            let daemon = daemon.clone();
            tokio::spawn(async move {
                let watch = tokio::spawn(stream.for_each(|()| future::ready(())));
                recovery_loop(&daemon, &cache).await;
                watch.abort();
            })
        });
        let mut refreshers = Refreshers::default();
        refreshers.sync(&daemon.refresher, &daemon.store.current().config);

        let background = {
            let daemon = daemon.clone();
            tokio::spawn(async move {
                // Readiness: all three caches have listed once; then the first sweep.
                if caches_synced(&daemon.caches).await {
                    daemon.ready.store(true, Ordering::SeqCst);
                    info!("caches synced; ready");
                    daemon.sweep.notify_one();
                }
                let sweeps = tokio::spawn(sweeper(daemon.clone()));
                // A new leader sweeps every namespace once.
                let on_leader = {
                    let daemon = daemon.clone();
                    let mut leader = daemon.refresher.leader.clone();
                    tokio::spawn(async move {
                        loop {
                            if leader.wait_for(|l| *l).await.is_err() {
                                return;
                            }
                            daemon.sweep.notify_one();
                            if leader.wait_for(|l| !*l).await.is_err() {
                                return;
                            }
                        }
                    })
                };
                let mut reloader =
                    Reloader::new(daemon.settings.config_dir.clone(), daemon.settings.load);
                let mut tick = tokio::time::interval(daemon.settings.reload_interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let _stop_with = scopeguard(sweeps, on_leader);
                loop {
                    tick.tick().await;
                    if let Reload::Loaded(generation) =
                        reloader.reload(&daemon.store, &daemon.metrics).await
                    {
                        refreshers.sync(&daemon.refresher, &generation.config);
                        daemon.sweep.notify_one();
                    }
                    daemon.update_gauges();
                }
            })
        };
        let ctx = daemon.clone();
        controller
            .graceful_shutdown_on(stop)
            .run(
                |ns: Arc<Namespace>, daemon: Arc<Daemon>| async move {
                    // Planning from caches that have not listed yet would re-apply Secrets
                    // that exist and miss ServiceAccounts entirely: wait for the first sync.
                    if !daemon.ready.load(Ordering::SeqCst) {
                        return Ok(Action::requeue(Duration::from_millis(500)));
                    }
                    let blocked = daemon.sync(&ns).await?;
                    Ok::<_, ReconcileError>(if blocked {
                        Action::requeue(daemon.settings.foreign_recheck + Duration::from_secs(1))
                    } else {
                        Action::await_change()
                    })
                },
                |_ns, _err, _ctx| Action::requeue(Duration::from_secs(15)),
                ctx,
            )
            .for_each(|_| future::ready(()))
            .await;
        background.abort();
        if let Some(recovery) = recovery {
            recovery.abort();
        }
        info!("stopped writing");
    }

    /// One full pass: fetch every registry once, wait for the caches, sync every namespace.
    /// Returns whether every registry refreshed and every write succeeded.
    pub async fn once(self) -> bool {
        let Started {
            daemon, controller, ..
        } = self;
        // Drive the watches (the controller owns their streams) while the pass runs.
        let driver = tokio::spawn(
            controller
                .run(
                    |_ns, _ctx: Arc<()>| async { Ok::<_, ReconcileError>(Action::await_change()) },
                    |_, _, _| Action::await_change(),
                    Arc::new(()),
                )
                .for_each(|_| future::ready(())),
        );
        let mut ok = true;
        for reg in daemon.store.current().config.registries.clone() {
            let span =
                info_span!("refresh", registry = %reg.name, provider = reg.provider.type_name());
            if daemon
                .refresher
                .refresh(&reg, 1)
                .instrument(span)
                .await
                .is_err()
            {
                ok = false;
            }
        }
        if !caches_synced(&daemon.caches).await {
            error!("caches never synced");
            driver.abort();
            return false;
        }
        ok &= daemon.sweep_all().await;
        driver.abort();
        ok
    }
}

/// Looks for stuck Pods every recovery interval: publishes the stuck-Pods gauge, tells once
/// about each Pod that cannot recover by itself, and (mode `on`, leader only) deletes what the
/// limits allow.
async fn recovery_loop(daemon: &Daemon, pods: &Cache<Pod>) {
    let settings = &daemon.settings.recovery;
    let mut budget = recover::Budget::default();
    let mut told: HashSet<String> = HashSet::new();
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // Ready means the three caches have listed once.
        if !daemon.ready.load(Ordering::SeqCst) {
            continue;
        }
        let stuck = daemon.stuck_pods(pods);
        let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
        for s in &stuck {
            *counts
                .entry((s.registry.clone(), s.reason.clone()))
                .or_default() += 1;
        }
        let generation = daemon.store.current();
        let registries: Vec<&str> = generation
            .config
            .registries
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        daemon
            .metrics
            .recovery
            .stuck(&registries, &recover::PULL_REASONS, &counts);
        if settings.mode != RecoveryMode::On || !daemon.reconciler.is_leader() {
            continue;
        }
        told.retain(|uid| stuck.iter().any(|s| &s.uid == uid));
        for s in &stuck {
            if let recover::Verdict::CannotRecover { why } = &s.verdict
                && told.insert(s.uid.clone())
            {
                warn!(namespace = %s.namespace, pod = %s.name, registry = %s.registry, "{why}");
                daemon
                    .reconciler
                    .events
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
        }
        for s in budget.choose(&settings.limits, &stuck, Utc::now()) {
            let recover::Verdict::Recover {
                owner_kind,
                owner_name,
                ..
            } = &s.verdict
            else {
                continue;
            };
            match daemon
                .reconciler
                .applier
                .delete_pod(&s.namespace, &s.name, &s.uid)
                .await
            {
                Ok(deleted) => {
                    budget.spent(Utc::now(), &s.registry);
                    if !deleted {
                        continue;
                    }
                    daemon.metrics.recovery.recovered(&s.registry);
                    let note = format!(
                        "deleted so that {owner_kind} {owner_name} recreates it with imagePullSecrets {} (it was created before its ServiceAccount listed it; image {})",
                        s.secret, s.image
                    );
                    let events = &daemon.reconciler.events;
                    events
                        .normal(
                            &pod_reference(&s.namespace, &s.name, &s.uid),
                            "Recovered",
                            "Delete",
                            note.clone(),
                        )
                        .await;
                    events
                        .on_own_pod(
                            kube::runtime::events::EventType::Normal,
                            "RecoveredPod",
                            "Delete",
                            format!("Pod {}/{}: {note}", s.namespace, s.name),
                        )
                        .await;
                }
                Err(e) => {
                    error!(namespace = %s.namespace, pod = %s.name, category = e.category(), error = %error_chain(&e), "deleting a stuck pod failed");
                }
            }
        }
    }
}

impl Daemon {
    /// Every Pod waiting for an image on a managed registry, with a verdict.
    fn stuck_pods(&self, pods: &Cache<Pod>) -> Vec<recover::Stuck> {
        let generation = self.store.current();
        let credentials = generation.credentials();
        let mut by_namespace: BTreeMap<String, Vec<Arc<Pod>>> = BTreeMap::new();
        for pod in pods.state() {
            if let Some(ns) = pod.metadata.namespace.clone() {
                by_namespace.entry(ns).or_default().push(pod);
            }
        }
        let mut stuck = Vec::new();
        for (ns, pods) in by_namespace {
            let Some(namespace) = self.caches.namespaces.get(&ObjectRef::new(&ns)) else {
                continue;
            };
            let secrets: Vec<String> = self
                .caches
                .secrets
                .state_filter(|s| s.metadata.namespace.as_deref() == Some(ns.as_str()))
                .iter()
                .filter_map(|s| s.metadata.name.clone())
                .collect();
            let accounts = self
                .caches
                .accounts
                .state_filter(|s| s.metadata.namespace.as_deref() == Some(ns.as_str()));
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

/// Aborts the sweeper and the leadership watcher when the reload loop ends (it is aborted on
/// shutdown).
fn scopeguard(a: tokio::task::JoinHandle<()>, b: tokio::task::JoinHandle<()>) -> impl Drop {
    struct Guard(tokio::task::JoinHandle<()>, tokio::task::JoinHandle<()>);
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.abort();
            self.1.abort();
        }
    }
    Guard(a, b)
}
