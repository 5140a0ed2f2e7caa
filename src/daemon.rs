//! The daemon: watches Namespaces (metadata only), every ServiceAccount and — one watch per
//! name, cluster-wide, with a `metadata.name` field selector — the Secrets of the names it
//! manages, into the [`Index`]; runs one refresh task per registry; and syncs namespaces — when
//! their objects change (through the [`WorkQueue`], at once: no debounce is needed, since every
//! write's result is in the index before the next plan) and in sweeps over every namespace after
//! a rotation, a reload, on becoming leader, after a watch re-listed and at each resync
//! interval. Sweeps do not go through the queue, so a namespace whose objects change all the time
//! still gets every rotation.
//!
//! The Secret names watched are the config's names that the role covers, and the names of
//! removed registries this installation still has entries for (so their Secrets are pruned).
//! A config name the role does not cover is not served; its registry is reported, and its
//! Secrets and entries are left as they are.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::{StreamExt, future};

use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, ServiceAccount};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tracing::{Instrument, error, info, info_span, warn};

use crate::access::{self, SecretAccess};
use crate::apply::Applier;
use crate::cli::RecoveryMode;
use crate::config::LoadOptions;
use crate::events::{EventType, Events, PodIdentity};
use crate::index::Index;
use crate::metrics::{Metrics, Outcome, WatchMetrics};
use crate::ownership::Owner;
use crate::plan::{AccountState, NamespaceState, SecretState};
use crate::queue::WorkQueue;
use crate::reconcile::{ReconcileError, Reconciler};
pub use crate::recovery::RecoverySettings;
use crate::recovery::{Hands, Recovery};
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
    /// pullkeeper's own namespace: where the role's rules are reviewed.
    pub home_namespace: String,
    pub fetch_timeout: Duration,
    /// How long `once` waits for the watches' first listing.
    pub sync_timeout: Duration,
    /// How long one watch request stays open (see [`watch_config`]).
    pub watch_timeout: Duration,
    pub recovery: RecoverySettings,
}

/// A watcher config whose requests the API server ends after `timeout` (at least a second).
/// The watcher drops a watch that delivered nothing (not even a bookmark) for `timeout` plus
/// 5 s — a connection that stalled silently, since the API server would have ended it — and
/// watches again from the last version it saw; kube's default would wait 295 s.
fn watch_config(timeout: Duration) -> watcher::Config {
    let seconds = u32::try_from(timeout.as_secs()).unwrap_or(u32::MAX).max(1);
    watcher::Config::default().timeout(seconds)
}

/// A namespace as its watch delivers it: metadata only.
type NamespaceMeta = PartialObjectMeta<Namespace>;

/// The longest a namespace whose syncs keep failing waits before the next try.
const RETRY_MAX: Duration = Duration::from_mins(1);

/// How long a namespace whose sync failed `failures` times in a row waits before it is synced
/// again: 1 s, doubling up to [`RETRY_MAX`]. A passing 429 or 5xx costs about a second; an API
/// server that keeps failing is asked once a minute per namespace, never in a hot loop.
fn retry_delay(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(6)).min(RETRY_MAX)
}

/// What every watch task shares.
#[derive(Clone)]
struct WatchContext {
    owner: Owner,
    client: Client,
    index: Arc<Index>,
    metrics: WatchMetrics,
    /// Namespaces whose objects changed, to sync (only once ready: the first sweep covers
    /// everything before).
    queue: Arc<WorkQueue>,
    ready: Arc<AtomicBool>,
    /// Woken when every namespace must be looked at.
    sweep: Arc<Notify>,
    /// Woken when a Secret watch listed for the first time.
    listed: Arc<Notify>,
    /// How long one watch request stays open.
    timeout: Duration,
}

impl WatchContext {
    fn trigger(&self, namespace: &str) {
        if self.ready.load(Ordering::SeqCst) {
            self.queue.push(namespace);
        }
    }

    fn failed(&self, watch: &'static str, error: &watcher::Error) {
        let category = match error {
            watcher::Error::InitialListFailed(kube::Error::Api(s))
            | watcher::Error::WatchStartFailed(kube::Error::Api(s))
                if s.code == 403 =>
            {
                "forbidden"
            }
            watcher::Error::WatchError(_) => "rejected",
            _ => "unreachable",
        };
        self.metrics.failed(
            watch,
            category,
            &error_chain(error as &dyn std::error::Error),
        );
    }
}

/// The objects of one watch listing, gathered until it is complete.
struct Listing<T>(Option<Vec<(String, T)>>);

impl<T> Listing<T> {
    fn start(&mut self) {
        self.0 = Some(Vec::new());
    }

    fn push(&mut self, namespace: String, item: T) {
        if let Some(items) = self.0.as_mut() {
            items.push((namespace, item));
        }
    }

    fn take(&mut self) -> Vec<(String, T)> {
        self.0.take().unwrap_or_default()
    }
}

/// Feeds every namespace (its metadata) into the index.
async fn watch_namespaces(ctx: WatchContext, synced: Arc<AtomicBool>) {
    let stream = watcher(
        Api::<NamespaceMeta>::all(ctx.client.clone()),
        watch_config(ctx.timeout).any_semantic(),
    )
    .default_backoff();
    futures::pin_mut!(stream);
    let mut listing: Listing<NamespaceState> = Listing(None);
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Init) => listing.start(),
            Ok(watcher::Event::InitApply(ns)) => {
                let state = NamespaceState::of_meta(&ns.metadata);
                listing.push(state.name.clone(), state);
            }
            Ok(watcher::Event::InitDone) => {
                let listed: Vec<NamespaceState> =
                    listing.take().into_iter().map(|(_, s)| s).collect();
                ctx.index.replace_namespaces(&listed);
                if synced.swap(true, Ordering::SeqCst) {
                    ctx.sweep.notify_one();
                }
                ctx.listed.notify_one();
            }
            Ok(watcher::Event::Apply(ns)) => {
                let state = NamespaceState::of_meta(&ns.metadata);
                if ctx.index.put_namespace(&state) {
                    ctx.trigger(&state.name);
                }
            }
            Ok(watcher::Event::Delete(ns)) => {
                ctx.index.remove_namespace(&ns.name_any());
            }
            Err(e) => ctx.failed("namespaces", &e),
        }
    }
}

/// Feeds every ServiceAccount into the index. After the first listing, a re-listing (the watch
/// lost its place) asks for a sweep: whatever changed meanwhile is then planned.
async fn watch_accounts(ctx: WatchContext, synced: Arc<AtomicBool>) {
    let stream = watcher(
        Api::<ServiceAccount>::all(ctx.client.clone()),
        watch_config(ctx.timeout).any_semantic(),
    )
    .default_backoff();
    futures::pin_mut!(stream);
    let mut listing = Listing(None);
    while let Some(event) = stream.next().await {
        let state = |sa: &ServiceAccount| {
            (
                sa.namespace().unwrap_or_default(),
                AccountState::of(sa, &ctx.owner),
            )
        };
        match event {
            Ok(watcher::Event::Init) => listing.start(),
            Ok(watcher::Event::InitApply(sa)) => {
                let (ns, account) = state(&sa);
                listing.push(ns, account);
            }
            Ok(watcher::Event::InitDone) => {
                ctx.index.replace_accounts(listing.take());
                if synced.swap(true, Ordering::SeqCst) {
                    ctx.sweep.notify_one();
                }
                ctx.listed.notify_one();
            }
            Ok(watcher::Event::Apply(sa)) => {
                let (ns, account) = state(&sa);
                if ctx.index.put_account(&ns, account) {
                    ctx.trigger(&ns);
                }
            }
            Ok(watcher::Event::Delete(sa)) => {
                let ns = sa.namespace().unwrap_or_default();
                if ctx.index.remove_account(&ns, &sa.name_any()) {
                    ctx.trigger(&ns);
                }
            }
            Err(e) => ctx.failed("serviceaccounts", &e),
        }
    }
}

/// Feeds the Secrets of one name, in every namespace, into the index (a field-selected watch:
/// the role may grant it by name). A same-named Secret that is not pullkeeper's arrives on the
/// same watch, so it is known before any write.
async fn watch_secrets(ctx: WatchContext, name: String, synced: Arc<AtomicBool>) {
    let stream = watcher(
        Api::<Secret>::all(ctx.client.clone()),
        watch_config(ctx.timeout)
            .fields(&format!("metadata.name={name}"))
            .any_semantic(),
    )
    .default_backoff();
    futures::pin_mut!(stream);
    let mut listing = Listing(None);
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Init) => listing.start(),
            Ok(watcher::Event::InitApply(s)) => {
                listing.push(
                    s.namespace().unwrap_or_default(),
                    SecretState::of(&s, &ctx.owner),
                );
            }
            Ok(watcher::Event::InitDone) => {
                ctx.index.replace_secrets_named(&name, listing.take());
                if synced.swap(true, Ordering::SeqCst) {
                    ctx.sweep.notify_one();
                }
                ctx.listed.notify_one();
            }
            Ok(watcher::Event::Apply(s)) => {
                let ns = s.namespace().unwrap_or_default();
                if ctx.index.put_secret(&ns, SecretState::of(&s, &ctx.owner)) {
                    ctx.trigger(&ns);
                }
            }
            Ok(watcher::Event::Delete(s)) => {
                let ns = s.namespace().unwrap_or_default();
                if ctx
                    .index
                    .remove_secret(&ns, &name, s.metadata.uid.as_deref())
                {
                    ctx.trigger(&ns);
                }
            }
            Err(e) => ctx.failed("secrets", &e),
        }
    }
}

/// One running Secret watch.
struct SecretWatch {
    task: JoinHandle<()>,
    synced: Arc<AtomicBool>,
}

/// The running Secret watches, by name.
#[derive(Default)]
struct SecretWatches(BTreeMap<String, SecretWatch>);

impl SecretWatches {
    /// Starts a watch for every name not watched yet and stops (and forgets) the others.
    fn set(&mut self, ctx: &WatchContext, names: &BTreeSet<String>) {
        let gone: Vec<String> = self
            .0
            .keys()
            .filter(|n| !names.contains(*n))
            .cloned()
            .collect();
        for name in gone {
            if let Some(w) = self.0.remove(&name) {
                w.task.abort();
            }
            ctx.index.forget_secrets_named(&name);
            info!(secret = %name, "stopped watching secrets of this name");
        }
        for name in names {
            if !self.0.contains_key(name) {
                let synced = Arc::new(AtomicBool::new(false));
                let task = tokio::spawn(watch_secrets(ctx.clone(), name.clone(), synced.clone()));
                info!(secret = %name, "watching secrets of this name");
                self.0.insert(name.clone(), SecretWatch { task, synced });
            }
        }
    }

    /// The watched names that have not listed yet.
    fn unsynced(&self) -> BTreeSet<String> {
        self.0
            .iter()
            .filter(|(_, w)| !w.synced.load(Ordering::SeqCst))
            .map(|(n, _)| n.clone())
            .collect()
    }

    fn names(&self) -> BTreeSet<String> {
        self.0.keys().cloned().collect()
    }

    fn stop(&mut self) {
        for w in self.0.values() {
            w.task.abort();
        }
    }
}

/// What the role lets pullkeeper do, as last reviewed, and what that means for the config.
#[derive(Default)]
struct AccessState {
    /// `None` until reviewed (or when the review failed: every name is then tried).
    secrets: Option<SecretAccess>,
    reviewed: Option<Instant>,
    /// Registries whose Secret name the role does not cover, with the line that says so.
    denied: BTreeMap<String, String>,
    /// Denied registries already reported by an Event.
    told: HashSet<String>,
}

impl AccessState {
    fn covers(&self, name: &str) -> bool {
        self.secrets.as_ref().is_none_or(|a| a.covers(name))
    }
}

/// Everything the daemon's tasks share.
struct Daemon {
    settings: Settings,
    client: Client,
    metrics: Metrics,
    store: Arc<Store>,
    index: Arc<Index>,
    reconciler: Reconciler,
    refresher: Arc<Refresher>,
    watch: WatchContext,
    secret_watches: Mutex<SecretWatches>,
    /// The namespace and ServiceAccount watches.
    watch_tasks: [JoinHandle<()>; 2],
    accounts_synced: Arc<AtomicBool>,
    namespaces_synced: Arc<AtomicBool>,
    /// Set when the daemon stops: sweeps and workers start no new sync.
    stopping: AtomicBool,
    /// Held by a running sweep (stopping waits for it to end its syncs in flight).
    sweeping: tokio::sync::Mutex<()>,
    access: Mutex<AccessState>,
    /// Namespaces whose last syncs failed, with how many times in a row.
    retries: Mutex<HashMap<String, u32>>,
    /// Woken when every namespace must be looked at (rotation, reload, leadership, re-list).
    sweep: Arc<Notify>,
    ready: Arc<AtomicBool>,
}

/// Pod recovery, when it is not off: its state, the watch of pending Pods that feeds its
/// cache, and what wakes it.
struct RecoveryParts {
    recovery: Recovery,
    pods: futures::stream::BoxStream<'static, ()>,
    wake: Arc<Notify>,
}

/// The watches and the state built on them; `run` or `once` drives them.
pub struct Started {
    daemon: Arc<Daemon>,
    recovery: Option<RecoveryParts>,
}

/// Drops from a cached object what planning never reads.
fn slim<K: Resource>(object: &mut K) {
    object.managed_fields_mut().clear();
    if let Some(annotations) = object.meta_mut().annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// Starts the watches and builds the daemon's state. The generation must already be valid.
pub async fn start(
    client: &Client,
    metrics: Metrics,
    settings: Settings,
    generation: Generation,
    leader: watch::Receiver<bool>,
) -> Started {
    let queue = Arc::new(WorkQueue::default());
    let sweep = Arc::new(Notify::new());
    let ready = Arc::new(AtomicBool::new(false));
    let index = Arc::new(Index::default());
    let watch = WatchContext {
        owner: settings.owner.clone(),
        client: client.clone(),
        index: index.clone(),
        metrics: metrics.watches.clone(),
        queue,
        ready: ready.clone(),
        sweep: sweep.clone(),
        listed: Arc::new(Notify::new()),
        timeout: settings.watch_timeout,
    };
    let namespaces_synced = Arc::new(AtomicBool::new(false));
    // Only Pods not yet running can be stuck pulling: the field selector keeps the cache small.
    let recovery_wake = Arc::new(Notify::new());
    let pods = (settings.recovery.mode != RecoveryMode::Off).then(|| {
        let (pods, pod_writer) = reflector::store();
        let stream = watcher(
            Api::<Pod>::all(client.clone()),
            watch_config(settings.watch_timeout).fields("status.phase=Pending"),
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
    let refresher = Arc::new(Refresher {
        store: store.clone(),
        metrics: metrics.refresh.clone(),
        events: events.clone(),
        fetch_timeout: settings.fetch_timeout,
        leader: leader.clone(),
        rotated: sweep.clone(),
    });
    let accounts_synced = Arc::new(AtomicBool::new(false));
    let watch_tasks = [
        tokio::spawn(watch_namespaces(watch.clone(), namespaces_synced.clone())),
        tokio::spawn(watch_accounts(watch.clone(), accounts_synced.clone())),
    ];
    let mut reconciler = Reconciler::new(
        settings.owner.clone(),
        applier,
        events,
        index.clone(),
        leader,
        usize::from(settings.concurrency),
    );
    let recovery = pods.map(|(cache, pods)| {
        // A write can free stuck Pods (a ServiceAccount now lists the Secret): recovery looks
        // at once.
        reconciler.written = Some(recovery_wake.clone());
        RecoveryParts {
            recovery: Recovery::new(
                settings.recovery.clone(),
                store.clone(),
                index.clone(),
                cache,
                metrics.recovery.clone(),
            ),
            pods,
            wake: recovery_wake,
        }
    });
    let daemon = Arc::new(Daemon {
        settings,
        client: client.clone(),
        metrics,
        store,
        index,
        reconciler,
        refresher,
        watch,
        secret_watches: Mutex::new(SecretWatches::default()),
        watch_tasks,
        accounts_synced,
        namespaces_synced,
        stopping: AtomicBool::new(false),
        retries: Mutex::default(),
        sweeping: tokio::sync::Mutex::new(()),
        access: Mutex::new(AccessState::default()),
        sweep,
        ready,
    });
    daemon.review_access().await;
    daemon.set_watches();
    Started { daemon, recovery }
}

impl Daemon {
    fn watches(&self) -> std::sync::MutexGuard<'_, SecretWatches> {
        self.secret_watches
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn access_state(&self) -> std::sync::MutexGuard<'_, AccessState> {
        self.access
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Asks which Secret names the role covers, and reports each registry it leaves out (log,
    /// metric, an Event on pullkeeper's Pod, `/readyz`). A failed review keeps trying every
    /// name (the watches then say what fails).
    async fn review_access(&self) {
        // Bounded like the watches' first listing: an API server that never answers must not
        // hold up the start (the watches then say what fails).
        let reviewed = tokio::time::timeout(
            self.settings.sync_timeout,
            access::secret_access(&self.client, &self.settings.home_namespace),
        )
        .await;
        let generation = self.store.current();
        let mut newly_denied = Vec::new();
        {
            let mut state = self.access_state();
            state.reviewed = Some(Instant::now());
            match reviewed {
                Ok(Ok(secrets)) => {
                    if !secrets.may_create() {
                        warn!(
                            "the role does not let pullkeeper create secrets: new namespaces cannot get their Secret"
                        );
                    }
                    state.secrets = Some(secrets);
                }
                Ok(Err(e)) => {
                    warn!(error = %error_chain(&e), "cannot review this identity's secret permissions; trying every configured name");
                    state.secrets = None;
                }
                Err(_) => {
                    warn!(timeout = ?self.settings.sync_timeout, "the review of this identity's secret permissions did not answer in time; trying every configured name");
                    state.secrets = None;
                }
            }
            let mut denied = BTreeMap::new();
            for reg in &generation.config.registries {
                let missing = state
                    .secrets
                    .as_ref()
                    .map(|a| a.missing(&reg.secret_name))
                    .unwrap_or_default();
                self.metrics.watches.access(&reg.name, missing.is_empty());
                if !missing.is_empty() {
                    denied.insert(
                        reg.name.clone(),
                        access::missing_line(&reg.secret_name, &missing),
                    );
                }
            }
            state.told.retain(|r| denied.contains_key(r));
            for (registry, line) in &denied {
                if state.told.insert(registry.clone()) {
                    newly_denied.push((registry.clone(), line.clone()));
                }
            }
            state.denied = denied;
        }
        for (registry, line) in newly_denied {
            error!(registry = %registry, "registry not served: {line}");
            self.reconciler
                .events
                .on_own_pod(
                    EventType::Warning,
                    "SecretNotPermitted",
                    "Watch",
                    None,
                    format!("registry {registry} is not served: {line}"),
                )
                .await;
        }
    }

    /// Watches the Secret names to serve and to prune, and recomputes what is frozen.
    fn set_watches(&self) {
        let generation = self.store.current();
        let configured: BTreeSet<String> = generation
            .config
            .registries
            .iter()
            .map(|r| r.secret_name.clone())
            .collect();
        let (wanted, unprunable) = {
            let access = self.access_state();
            let mut wanted: BTreeSet<String> = configured
                .iter()
                .filter(|n| access.covers(n))
                .cloned()
                .collect();
            let mut unprunable = Vec::new();
            if self.accounts_synced.load(Ordering::SeqCst) {
                for name in self.index.recorded_names() {
                    if configured.contains(&name) {
                        continue;
                    }
                    if access.covers(&name) {
                        wanted.insert(name);
                    } else {
                        unprunable.push(name);
                    }
                }
            }
            (wanted, unprunable)
        };
        let previous = {
            let mut watches = self.watches();
            let previous = watches.names();
            watches.set(&self.watch, &wanted);
            previous
        };
        for name in unprunable.iter().filter(|n| !previous.contains(*n)) {
            warn!(secret = %name, "Secrets of a removed registry cannot be pruned: the role does not cover the name; their ServiceAccount entries are removed, `pullkeeper cleanup` removes the Secrets");
        }
        self.update_frozen();
    }

    /// Nothing is planned for a configured name the role does not cover, nor for a name whose
    /// watch has not listed yet.
    fn update_frozen(&self) {
        let generation = self.store.current();
        let mut frozen = self.watches().unsynced();
        let access = self.access_state();
        frozen.extend(
            generation
                .config
                .registries
                .iter()
                .filter(|r| !access.covers(&r.secret_name))
                .map(|r| r.secret_name.clone()),
        );
        self.reconciler.frozen.set(frozen);
    }

    /// `/readyz`: ready once the watches listed; the detail names each registry not served.
    fn readiness(&self) -> (bool, String) {
        let ready = self.ready.load(Ordering::SeqCst);
        let mut text = if ready {
            "ready\n".to_string()
        } else {
            "caches not synced yet\n".to_string()
        };
        for (registry, line) in &self.access_state().denied {
            let _ = writeln!(text, "registry {registry} not served: {line}");
        }
        (ready, text)
    }

    /// What has not listed yet: empty once every watch has.
    fn unsynced(&self) -> Vec<String> {
        let mut waiting = Vec::new();
        if !self.namespaces_synced.load(Ordering::SeqCst) {
            waiting.push("namespaces".to_string());
        }
        if !self.accounts_synced.load(Ordering::SeqCst) {
            waiting.push("serviceaccounts".to_string());
        }
        waiting.extend(
            self.watches()
                .unsynced()
                .into_iter()
                .map(|n| format!("secrets named {n}")),
        );
        waiting
    }

    /// Waits until every watch has listed once (or `deadline` passes: then returns what has
    /// not).
    async fn synced(&self, deadline: Option<Duration>) -> Result<(), Vec<String>> {
        let started = Instant::now();
        let mut retired_checked = false;
        loop {
            if self.accounts_synced.load(Ordering::SeqCst) && !retired_checked {
                // Names of removed registries are known only from the ServiceAccounts.
                self.set_watches();
                retired_checked = true;
            }
            let waiting = self.unsynced();
            if waiting.is_empty() && retired_checked {
                self.update_frozen();
                return Ok(());
            }
            if deadline.is_some_and(|d| started.elapsed() >= d) {
                return Err(waiting);
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), self.watch.listed.notified())
                .await;
        }
    }

    /// Syncs one namespace with the current generation (nothing when it no longer exists). A
    /// failed sync, whoever asked for it (the queue or a sweep), is queued again after
    /// [`retry_delay`]; nothing waits for the next resync.
    async fn sync(&self, namespace: &str) -> Result<(), ReconcileError> {
        let Some(ns) = self.index.namespace_state(namespace) else {
            return Ok(());
        };
        let generation = self.store.current();
        let result = self
            .reconciler
            .sync_namespace(&generation, &ns)
            .instrument(info_span!("sync", namespace = %ns.name))
            .await;
        let mut retries = self
            .retries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match &result {
            Ok(()) => {
                retries.remove(namespace);
            }
            Err(e) if !self.stopping.load(Ordering::SeqCst) => {
                let failures = retries.entry(namespace.to_string()).or_insert(0);
                *failures = failures.saturating_add(1);
                let delay = retry_delay(*failures);
                warn!(error = %error_chain(e), failures = *failures, "namespace sync failed; retrying in {delay:?}");
                let queue = self.watch.queue.clone();
                let namespace = namespace.to_string();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    queue.push(&namespace);
                });
            }
            Err(_) => {}
        }
        result
    }

    /// Syncs every namespace, a bounded number at once. Returns whether every write succeeded.
    async fn sweep_all(&self) -> bool {
        let _one_sweep = self.sweeping.lock().await;
        let started = Utc::now();
        let namespaces = self.index.namespace_names();
        let count = namespaces.len();
        let failures = std::sync::atomic::AtomicUsize::new(0);
        futures::stream::iter(namespaces)
            .for_each_concurrent(usize::from(self.settings.concurrency.max(1)), |ns| {
                let failures = &failures;
                async move {
                    if self.stopping.load(Ordering::SeqCst) {
                        return;
                    }
                    if self.sync(&ns).await.is_err() {
                        failures.fetch_add(1, Ordering::Relaxed);
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

    /// Publishes the per-registry gauges from the index's counts.
    fn update_gauges(&self) {
        let generation = self.store.current();
        for reg in &generation.config.registries {
            let counts = self.index.counts(&reg.secret_name);
            self.metrics
                .inventory
                .set(&reg.name, counts.owned, counts.referencing, counts.foreign);
        }
    }

    /// Reviews access again when the config changed, and otherwise at the resync interval
    /// (every 30 s while a registry is not served, so a fixed role is picked up soon).
    async fn maybe_review_access(&self, config_changed: bool) {
        let due = {
            let state = self.access_state();
            let every = if state.denied.is_empty() {
                self.settings.resync_interval
            } else {
                Duration::from_secs(30)
            };
            config_changed
                || state
                    .reviewed
                    .is_none_or(|at| !every.is_zero() && at.elapsed() >= every)
        };
        if due {
            let before = self.access_state().denied.clone();
            self.review_access().await;
            self.set_watches();
            if self.access_state().denied != before && !config_changed {
                self.sweep.notify_one();
            }
        }
    }
}

/// Sweeps whenever asked to, and at each resync interval; after each sweep the Secret names of
/// removed registries are looked at again (one whose entries are all gone stops being watched).
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
            daemon.set_watches();
        }
    }
}

/// Sweeps when a Secret watch listed for the first time after start (its names were frozen
/// until then).
async fn on_listed(daemon: Arc<Daemon>) {
    loop {
        daemon.watch.listed.notified().await;
        if !daemon.ready.load(Ordering::SeqCst) {
            continue;
        }
        let before = daemon.reconciler.frozen.get();
        daemon.update_frozen();
        if daemon.reconciler.frozen.get() != before {
            daemon.sweep.notify_one();
        }
    }
}

/// Syncs the namespaces the queue hands out until it closes (a failed sync queues itself
/// again, see [`Daemon::sync`]).
async fn worker(daemon: Arc<Daemon>) {
    let queue = daemon.watch.queue.clone();
    while let Some(ns) = queue.next().await {
        let _ = daemon.sync(&ns).await;
        queue.done(&ns);
    }
}

impl Started {
    /// `/readyz`: whether the initial watches have listed, with a detail text.
    pub fn readiness(&self) -> Arc<dyn Fn() -> (bool, String) + Send + Sync> {
        let daemon = self.daemon.clone();
        Arc::new(move || daemon.readiness())
    }

    /// Runs the daemon until `stop` completes (a shutdown signal, or leadership lost). Writes
    /// stop before this returns: in-flight namespace syncs finish, no new one starts.
    pub async fn run(self, stop: impl std::future::Future<Output = ()> + Send + Sync + 'static) {
        let Started { daemon, recovery } = self;
        let recovery = recovery.map(|parts| {
            let daemon = daemon.clone();
            tokio::spawn(async move {
                let RecoveryParts {
                    recovery,
                    pods,
                    wake,
                } = parts;
                // A change of a pending Pod (one starting to wait, one deleted) wakes recovery.
                let watch = tokio::spawn({
                    let wake = wake.clone();
                    pods.for_each(move |()| {
                        wake.notify_one();
                        future::ready(())
                    })
                });
                // Ready means the watches have listed once; then a first round at once.
                while !daemon.ready.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                wake.notify_one();
                let hands = Hands {
                    applier: &daemon.reconciler.applier,
                    events: &daemon.reconciler.events,
                    leader: &daemon.refresher.leader,
                };
                recovery.run(wake, hands).await;
                watch.abort();
            })
        });
        let mut refreshers = Refreshers::default();
        refreshers.sync(&daemon.refresher, &daemon.store.current().config);

        let background = {
            let daemon = daemon.clone();
            tokio::spawn(async move {
                // Readiness: every watch has listed once; then the first sweep.
                if daemon.synced(None).await.is_ok() {
                    daemon.ready.store(true, Ordering::SeqCst);
                    info!("caches synced; ready");
                    daemon.sweep.notify_one();
                }
                let tasks = [
                    tokio::spawn(sweeper(daemon.clone())),
                    tokio::spawn(on_listed(daemon.clone())),
                    // A new leader sweeps every namespace once.
                    tokio::spawn({
                        let daemon = daemon.clone();
                        let mut leader = daemon.refresher.leader.clone();
                        async move {
                            loop {
                                if leader.wait_for(|l| *l).await.is_err() {
                                    return;
                                }
                                daemon.sweep.notify_one();
                                if leader.wait_for(|l| !*l).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }),
                ];
                let _stop_with = AbortOnDrop(tasks.into());
                let mut reloader =
                    Reloader::new(daemon.settings.config_dir.clone(), daemon.settings.load);
                let mut tick = tokio::time::interval(daemon.settings.reload_interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let changed = if let Reload::Loaded(generation) =
                        reloader.reload(&daemon.store, &daemon.metrics).await
                    {
                        refreshers.sync(&daemon.refresher, &generation.config);
                        true
                    } else {
                        false
                    };
                    daemon.maybe_review_access(changed).await;
                    if changed {
                        daemon.sweep.notify_one();
                    }
                    daemon.update_gauges();
                }
            })
        };
        let workers: Vec<JoinHandle<()>> = (0..daemon.settings.concurrency.max(1))
            .map(|_| tokio::spawn(worker(daemon.clone())))
            .collect();
        stop.await;
        // Stop writing: no new sync starts; those in flight (queue and sweep) finish.
        daemon.stopping.store(true, Ordering::SeqCst);
        daemon.watch.queue.close();
        for w in workers {
            let _ = w.await;
        }
        let _sweep_ended = daemon.sweeping.lock().await;
        background.abort();
        if let Some(recovery) = recovery {
            recovery.abort();
        }
        daemon.stop_watches();
        info!("stopped writing");
    }

    /// One full pass: fetch every registry once, wait for the watches (at most the sync
    /// timeout), sync every namespace. Returns whether every registry refreshed and every
    /// write succeeded.
    pub async fn once(self) -> OnceOutcome {
        let Started { daemon, .. } = self;
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
        if let Err(waiting) = daemon.synced(Some(daemon.settings.sync_timeout)).await {
            error!(
                waiting = %waiting.join(", "),
                timeout = ?daemon.settings.sync_timeout,
                "the watches did not list in time (an unreachable API server, or a permission the role lacks: see the watch errors above)"
            );
            daemon.stop_watches();
            return OnceOutcome::NotListed;
        }
        // A registry the role leaves out was not served.
        ok &= daemon.access_state().denied.is_empty();
        ok &= daemon.sweep_all().await;
        daemon.stop_watches();
        if ok {
            OnceOutcome::Done
        } else {
            OnceOutcome::Failed
        }
    }
}

/// How `once` ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnceOutcome {
    /// Every registry refreshed and every write succeeded.
    Done,
    /// A refresh or a write failed, or a registry's Secret name is not granted.
    Failed,
    /// The watches did not list within `--sync-timeout` (nothing was written).
    NotListed,
}

impl OnceOutcome {
    /// 0, 1, or 2 when the cluster could not even be read.
    pub fn exit_code(self) -> i32 {
        match self {
            Self::Done => 0,
            Self::Failed => 1,
            Self::NotListed => 2,
        }
    }
}

impl Daemon {
    fn stop_watches(&self) {
        self.watches().stop();
        for task in &self.watch_tasks {
            task.abort();
        }
    }
}

/// Aborts the tasks it holds when dropped (the reload loop that owns it is aborted on
/// shutdown).
struct AbortOnDrop(Vec<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

#[cfg(test)]
mod retry_tests {
    use super::*;

    #[test]
    fn a_failing_namespace_is_retried_after_one_second_doubling_to_a_minute() {
        let delays: Vec<u64> = (1..=9).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(retry_delay(u32::MAX), RETRY_MAX);
    }
}
