//! The daemon: watches Namespaces, ServiceAccounts and pullkeeper's own Secrets into caches,
//! refreshes each registry's credential on its schedule (once per rotation, shared by every
//! namespace), and reconciles namespaces through the pure planner and the applier.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::channel::mpsc;
use futures::{StreamExt, future};
use k8s_openapi::api::core::v1::{Namespace, ObjectReference, Secret, ServiceAccount};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::task::JoinHandle;
use tracing::{Instrument, error, info, info_span, warn};

use crate::apply::{Applier, SecretOutcome, WriteError};
use crate::config::{self, Config, Registry};
use crate::metrics::Metrics;
use crate::ownership::{self, Owner};
use crate::plan::{self, Issued, Observed, SecretChange};
use crate::providers::{Provider, ProviderError};
use crate::render;
use crate::schedule;

/// Process-level settings (from the command line).
#[derive(Clone, Debug)]
pub struct Settings {
    pub owner: Owner,
    pub config_dir: PathBuf,
    pub reload_interval: Duration,
    pub concurrency: u16,
    pub writes_per_second: f64,
    /// The object failed-rotation events are attached to (pullkeeper's own Pod), if known.
    pub event_object: Option<ObjectReference>,
    pub fetch_timeout: Duration,
    /// How long a Secret found to be someone else's is left alone before it is looked at again
    /// (its deletion is not watched: only pullkeeper's own Secrets are).
    pub foreign_recheck: Duration,
}

/// Why a refresh failed, with a bounded category.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("fetching from the {provider} provider failed")]
    Provider {
        provider: &'static str,
        #[source]
        source: ProviderError,
    },
    #[error("the {provider} provider did not answer within {timeout:?}")]
    Timeout {
        provider: &'static str,
        timeout: Duration,
    },
    #[error("the provider returned an unusable credential")]
    Invalid(#[source] crate::credential::CredentialError),
    #[error("the new credential was refused by the registry")]
    Verification(#[source] crate::verify::VerifyError),
}

impl RefreshError {
    pub fn category(&self) -> &'static str {
        match self {
            Self::Provider { source, .. } => source.category(),
            Self::Timeout { .. } => "unreachable",
            Self::Invalid(_) => "invalid_credential",
            Self::Verification(_) => "verification_failed",
        }
    }
}

/// Errors of one namespace reconcile.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("{failed} write(s) failed in namespace {namespace}")]
    Writes { namespace: String, failed: usize },
}

/// State shared by the refresh tasks, the reconciler and the admin server.
pub struct Shared {
    pub metrics: Metrics,
    pub settings: Settings,
    config: RwLock<Arc<Config>>,
    providers: RwLock<HashMap<String, Arc<dyn Provider>>>,
    credentials: RwLock<HashMap<String, Arc<Issued>>>,
    foreign: ForeignMarks,
    namespaces: Store<Namespace>,
    secrets: Store<Secret>,
    accounts: Store<ServiceAccount>,
    applier: Applier,
    recorder: Recorder,
    trigger: mpsc::UnboundedSender<()>,
    leader: tokio::sync::watch::Receiver<bool>,
    pub ready: AtomicBool,
}

fn read<T: Clone>(lock: &RwLock<T>) -> T {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

/// A write guard; a panicked writer leaves plain data that is still usable.
fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Same-named Secrets found to be someone else's, each with the time until which it is left
/// alone. Only pullkeeper's own Secrets are watched, so a mark expires and the Secret is looked
/// at again; a namespace still blocked renews it on every look.
#[derive(Default)]
struct ForeignMarks(RwLock<HashMap<(String, String), DateTime<Utc>>>);

impl ForeignMarks {
    /// The Secret names marked in a namespace and not expired.
    fn in_namespace(&self, namespace: &str) -> HashSet<String> {
        let now = Utc::now();
        read(&self.0)
            .iter()
            .filter(|((ns, _), until)| ns == namespace && **until > now)
            .map(|((_, name), _)| name.clone())
            .collect()
    }

    fn mark(&self, namespace: &str, name: &str, for_: Duration) {
        let until = Utc::now() + chrono::TimeDelta::from_std(for_).unwrap_or_default();
        write(&self.0).insert((namespace.to_string(), name.to_string()), until);
    }

    fn clear(&self, namespace: &str, name: &str) {
        write(&self.0).remove(&(namespace.to_string(), name.to_string()));
    }

    /// Drops marks that were not renewed for a whole `recheck` period after expiring: their
    /// namespace left scope or was deleted.
    fn prune(&self, recheck: Duration) {
        let stale_before = Utc::now() - chrono::TimeDelta::from_std(recheck).unwrap_or_default();
        write(&self.0).retain(|_, until| *until > stale_before);
    }

    /// How many marks name this Secret, across namespaces.
    fn count(&self, name: &str) -> usize {
        read(&self.0).keys().filter(|(_, n)| n == name).count()
    }
}

/// What a successful refresh did.
struct Refreshed {
    expires_at: Option<DateTime<Utc>>,
    changed: bool,
}

impl Shared {
    pub fn config(&self) -> Arc<Config> {
        read(&self.config)
    }

    fn credentials(&self) -> HashMap<String, Arc<Issued>> {
        read(&self.credentials)
    }

    fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    async fn wait_for_leadership(&self) {
        let mut rx = self.leader.clone();
        let _ = rx.wait_for(|leading| *leading).await;
    }

    fn reconcile_all(&self) {
        let _ = self.trigger.unbounded_send(());
    }

    async fn event(
        &self,
        reference: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, reference).await {
            warn!(error = %e, reason, "could not publish event");
        }
    }

    /// Plans and applies one namespace.
    /// Returns whether a Secret someone else owns blocks a registry here (its deletion is not
    /// watched, so the caller looks again later).
    pub async fn sync_namespace(&self, ns: &Namespace) -> Result<bool, ReconcileError> {
        // Followers keep warm caches and write nothing.
        if !self.is_leader() {
            return Ok(false);
        }
        let name = ns.metadata.name.clone().unwrap_or_default();
        let config = self.config();
        let credentials = self.credentials();
        let secrets = self
            .secrets
            .state_filter(|s| s.metadata.namespace.as_deref() == Some(&name));
        let accounts = self
            .accounts
            .state_filter(|s| s.metadata.namespace.as_deref() == Some(&name));
        let mut foreign = self.foreign.in_namespace(&name);
        let mut failed = 0;

        let observed = Observed {
            namespace: ns,
            secrets: secrets.clone(),
            service_accounts: accounts.clone(),
            foreign: &foreign,
        };
        let plan = plan::plan_namespace(
            &self.settings.owner,
            &config.registries,
            &credentials,
            &observed,
        );
        let mut found_foreign = false;
        for change in &plan.secrets {
            match change {
                SecretChange::Apply {
                    registry,
                    secret,
                    existing,
                } => match self.applier.apply_secret(secret, *existing).await {
                    Ok(SecretOutcome::Written) => self
                        .foreign
                        .clear(&name, secret.metadata.name.as_deref().unwrap_or_default()),
                    Ok(SecretOutcome::Foreign) => {
                        let secret_name = secret.metadata.name.clone().unwrap_or_default();
                        warn!(namespace = %name, secret = %secret_name, registry = %registry,
                            "a Secret of that name exists and is not pullkeeper's; leaving it untouched");
                        self.foreign
                            .mark(&name, &secret_name, self.settings.foreign_recheck);
                        foreign.insert(secret_name.clone());
                        found_foreign = true;
                        let reference = ObjectReference {
                            api_version: Some("v1".into()),
                            kind: Some("Secret".into()),
                            namespace: Some(name.clone()),
                            name: Some(secret_name.clone()),
                            ..ObjectReference::default()
                        };
                        self.event(&reference, EventType::Warning, "ForeignSecret", "Skip",
                            format!("Secret {secret_name} is not managed by pullkeeper (registry {registry}); it was left untouched")).await;
                    }
                    Err(e) => {
                        failed += 1;
                        error!(namespace = %name, registry = %registry, category = e.category(), error = %error_chain(&e), "writing secret failed");
                    }
                },
                SecretChange::Delete {
                    name: secret_name,
                    registry,
                } => {
                    let uid = secrets
                        .iter()
                        .find(|s| s.metadata.name.as_deref() == Some(secret_name))
                        .and_then(|s| s.metadata.uid.clone());
                    if let Err(e) = self.applier.delete_secret(&name, secret_name, uid).await {
                        failed += 1;
                        error!(namespace = %name, registry = ?registry, category = e.category(), error = %error_chain(&e), "pruning secret failed");
                    }
                }
            }
        }
        // ServiceAccounts must never reference a Secret someone else owns: re-plan with what the
        // writes just learnt.
        let accounts_plan = if found_foreign {
            let observed = Observed {
                namespace: ns,
                secrets,
                service_accounts: accounts,
                foreign: &foreign,
            };
            plan::plan_namespace(
                &self.settings.owner,
                &config.registries,
                &credentials,
                &observed,
            )
            .accounts
        } else {
            plan.accounts
        };
        for change in &accounts_plan {
            if let Err(e) = self.applier.patch_account(&name, change).await {
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
        Ok(!foreign.is_empty())
    }

    /// One refresh of a registry, shared by the refresh loop and `once`: fetch, count the
    /// outcome, and keep the credential when it differs from the current one (the caller
    /// triggers a resync then).
    async fn refresh(&self, registry: &Registry) -> Result<Refreshed, RefreshError> {
        let name = registry.name.as_str();
        let now = Utc::now();
        let timer = self
            .metrics
            .refresh_duration
            .with_label_values(&[name])
            .start_timer();
        let result = self.fetch(registry).await;
        timer.observe_duration();
        let issued = match result {
            Ok(issued) => issued,
            Err(e) => {
                self.metrics
                    .refreshes
                    .with_label_values(&[name, "failure"])
                    .inc();
                self.metrics
                    .refresh_failures
                    .with_label_values(&[name, e.category()])
                    .inc();
                return Err(e);
            }
        };
        self.metrics
            .refreshes
            .with_label_values(&[name, "success"])
            .inc();
        self.metrics
            .last_success
            .with_label_values(&[name])
            .set(now.timestamp() as f64);
        match issued.expires_at {
            Some(e) => self
                .metrics
                .credential_expiry
                .with_label_values(&[name])
                .set(e.timestamp() as f64),
            None => {
                let _ = self.metrics.credential_expiry.remove_label_values(&[name]);
            }
        }
        let expires_at = issued.expires_at;
        let mut credentials = write(&self.credentials);
        let changed = credentials.get(name).is_none_or(|c| **c != issued);
        if changed {
            credentials.insert(name.to_string(), Arc::new(issued));
        }
        Ok(Refreshed {
            expires_at,
            changed,
        })
    }

    /// Fetches, validates, renders and (optionally) verifies one registry's credential.
    pub async fn fetch(&self, registry: &Registry) -> Result<Issued, RefreshError> {
        let provider_type = registry.provider.type_name();
        let provider = read(&self.providers).get(&registry.name).cloned();
        let Some(provider) = provider else {
            return Err(RefreshError::Provider {
                provider: provider_type,
                source: ProviderError::new(
                    crate::providers::ErrorCategory::LocalInput,
                    "provider was not built",
                ),
            });
        };
        let timer = self
            .metrics
            .provider_duration
            .with_label_values(&[provider_type])
            .start_timer();
        let result = tokio::time::timeout(self.settings.fetch_timeout, provider.fetch()).await;
        timer.observe_duration();
        let credential = match result {
            Ok(Ok(c)) => c,
            Ok(Err(source)) => {
                self.metrics
                    .provider_errors
                    .with_label_values(&[provider_type, source.category()])
                    .inc();
                return Err(RefreshError::Provider {
                    provider: provider_type,
                    source,
                });
            }
            Err(_) => {
                self.metrics
                    .provider_errors
                    .with_label_values(&[provider_type, "unreachable"])
                    .inc();
                return Err(RefreshError::Timeout {
                    provider: provider_type,
                    timeout: self.settings.fetch_timeout,
                });
            }
        };
        let rendered = render::render(registry, &credential).map_err(RefreshError::Invalid)?;
        if let Some(spec) = &registry.verify {
            // Every `auths` entry the Secret will carry, aliases included.
            for (server, login) in render::logins_by_server(registry, &credential) {
                let result =
                    crate::verify::verify(spec, server, &login.username, &login.password).await;
                let outcome = if result.is_ok() { "success" } else { "failure" };
                self.metrics
                    .verifications
                    .with_label_values(&[&registry.name, outcome])
                    .inc();
                result.map_err(RefreshError::Verification)?;
            }
        }
        Ok(Issued {
            rendered,
            expires_at: credential.expires_at,
        })
    }
}

/// Renders an error with its sources, once each (never containing credential material: no
/// error in this crate carries any).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Builds every provider of a config; any failure rejects the config.
pub async fn build_providers(
    config: &Config,
) -> Result<HashMap<String, Arc<dyn Provider>>, Vec<config::Problem>> {
    let mut built = HashMap::new();
    let mut problems = Vec::new();
    for reg in &config.registries {
        match reg.provider.build().await {
            Ok(p) => {
                built.insert(reg.name.clone(), p);
            }
            Err(e) => problems.push(config::Problem {
                file: reg.file.clone(),
                field: "provider".into(),
                message: e.to_string(),
            }),
        }
    }
    if problems.is_empty() {
        Ok(built)
    } else {
        Err(problems)
    }
}

/// One registry's refresh loop: fetch, store the credential if it changed, schedule the next
/// refresh (or the next retry), repeat.
async fn refresh_loop(shared: Arc<Shared>, registry: Arc<Registry>) {
    let name = registry.name.clone();
    let mut attempt = 0u32;
    loop {
        // Only the leader fetches: one provider call per rotation across all replicas.
        shared.wait_for_leadership().await;
        let span =
            info_span!("refresh", registry = %name, provider = registry.provider.type_name());
        let now = Utc::now();
        let result = shared.refresh(&registry).instrument(span.clone()).await;
        let next = match result {
            Ok(refreshed) => {
                attempt = 0;
                let next = schedule::next_refresh(
                    &registry.refresh,
                    now,
                    now,
                    refreshed.expires_at,
                    rand::random_range(-1.0..=1.0),
                );
                info!(parent: &span, changed = refreshed.changed, next_refresh = %next.to_rfc3339(), "credential refreshed");
                if refreshed.changed {
                    shared.reconcile_all();
                }
                next
            }
            Err(e) => {
                attempt += 1;
                let category = e.category();
                let current_expiry = read(&shared.credentials)
                    .get(&name)
                    .and_then(|c| c.expires_at);
                let retry_after = match &e {
                    RefreshError::Provider { source, .. } => source.retry_after,
                    _ => None,
                };
                let wait = schedule::backoff(
                    &registry.refresh,
                    attempt,
                    now,
                    current_expiry,
                    retry_after,
                    rand::random_range(0.0..=1.0),
                );
                let chain = error_chain(&e);
                warn!(parent: &span, category, attempt, retry_in = ?wait, error = %chain, "refresh failed; the last good Secret stays");
                if let Some(reference) = &shared.settings.event_object {
                    shared
                        .event(
                            reference,
                            EventType::Warning,
                            "RotationFailed",
                            "Refresh",
                            format!("registry {name}: {chain}; retrying in {}s", wait.as_secs()),
                        )
                        .await;
                }
                now + chrono::TimeDelta::from_std(wait).unwrap_or_default()
            }
        };
        shared
            .metrics
            .next_refresh
            .with_label_values(&[&name])
            .set(next.timestamp() as f64);
        let sleep = (next - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        tokio::time::sleep(sleep).await;
    }
}

/// Keeps one refresh task per registry, restarting only the registries whose file changed.
struct Refreshers {
    tasks: HashMap<String, (Arc<Registry>, JoinHandle<()>)>,
}

impl Refreshers {
    fn sync(&mut self, shared: &Arc<Shared>, config: &Config) {
        let wanted: HashMap<&str, &Arc<Registry>> = config
            .registries
            .iter()
            .map(|r| (r.name.as_str(), r))
            .collect();
        self.tasks.retain(|name, (reg, handle)| {
            let keep = wanted
                .get(name.as_str())
                .is_some_and(|w| same_source(w, reg));
            if !keep {
                handle.abort();
            }
            keep
        });
        for (name, reg) in wanted {
            if !self.tasks.contains_key(name) {
                // Create the series at zero so `increase()` sees even the very first failure.
                for result in ["success", "failure"] {
                    shared.metrics.refreshes.with_label_values(&[name, result]);
                }
                let handle = tokio::spawn(refresh_loop(shared.clone(), reg.clone()));
                self.tasks.insert(name.to_string(), (reg.clone(), handle));
            }
        }
    }
}

/// Two registries have the same source when their file (and the defaults file) is unchanged.
fn same_source(a: &Registry, b: &Registry) -> bool {
    a.source_hash == b.source_hash && a.file == b.file
}

/// Loads a new config: validate, build providers, swap; the old one keeps running on failure.
async fn reload(shared: &Arc<Shared>, refreshers: &mut Refreshers) -> bool {
    let dir = &shared.settings.config_dir;
    let config = match config::load_dir(dir) {
        Ok(c) => c,
        Err(problems) => return reject(shared, &problems),
    };
    if config.fingerprint == shared.config().fingerprint {
        return true;
    }
    let providers = match build_providers(&config).await {
        Ok(p) => p,
        Err(problems) => return reject(shared, &problems),
    };
    let old = shared.config();
    for gone in old
        .registries
        .iter()
        .filter(|o| !config.registries.iter().any(|n| n.name == o.name))
    {
        write(&shared.credentials).remove(&gone.name);
        shared.metrics.forget_registry(&gone.name);
    }
    // A registry whose file changed gets a fresh credential from its (possibly new) provider.
    for reg in &config.registries {
        if old
            .registries
            .iter()
            .any(|o| o.name == reg.name && !same_source(o, reg))
        {
            write(&shared.credentials).remove(&reg.name);
        }
    }
    *write(&shared.providers) = providers;
    let config = Arc::new(config);
    *write(&shared.config) = config.clone();
    refreshers.sync(shared, &config);
    shared
        .metrics
        .config_reloads
        .with_label_values(&["success"])
        .inc();
    shared.metrics.config_last_reload_ok.set(1);
    shared
        .metrics
        .registries_configured
        .set(config.registries.len() as i64);
    info!(registries = config.registries.len(), "config loaded");
    shared.reconcile_all();
    true
}

fn reject(shared: &Shared, problems: &[config::Problem]) -> bool {
    shared
        .metrics
        .config_reloads
        .with_label_values(&["failure"])
        .inc();
    shared.metrics.config_last_reload_ok.set(0);
    for p in problems {
        error!(file = %p.file.display(), field = %p.field, problem = %p.message, "config rejected; the previous config keeps running");
    }
    false
}

/// Recomputes the per-registry gauges from the caches.
fn update_gauges(shared: &Shared) {
    shared.foreign.prune(shared.settings.foreign_recheck);
    let config = shared.config();
    for reg in &config.registries {
        let secrets = shared.secrets.state_filter(|s| {
            s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(ownership::REGISTRY_LABEL))
                == Some(&reg.name)
                && s.metadata.name.as_deref() == Some(&reg.secret_name)
        });
        let accounts = shared.accounts.state_filter(|sa| {
            ownership::owned_entries(&shared.settings.owner, sa).contains(&reg.secret_name)
                && sa
                    .image_pull_secrets
                    .iter()
                    .flatten()
                    .any(|r| r.name == reg.secret_name)
        });
        let foreign = shared.foreign.count(&reg.secret_name);
        shared
            .metrics
            .managed_secrets
            .with_label_values(&[&reg.name])
            .set(secrets.len() as i64);
        shared
            .metrics
            .managed_service_accounts
            .with_label_values(&[&reg.name])
            .set(accounts.len() as i64);
        shared
            .metrics
            .foreign_secrets
            .with_label_values(&[&reg.name])
            .set(foreign as i64);
    }
}

/// Drops from a cached object what planning never reads.
fn slim<K: Resource>(object: &mut K) {
    object.managed_fields_mut().clear();
    if let Some(annotations) = object.meta_mut().annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// Waits until all three caches have listed once. A store's readiness signal wakes only its
/// most recent waiter (the controller also waits on the namespace store), so poll it.
async fn caches_synced(shared: &Shared) -> bool {
    async fn ready<K>(store: &Store<K>) -> bool
    where
        K: kube::runtime::reflector::Lookup + Clone + 'static,
        K::DynamicType: Eq + std::hash::Hash + Clone,
    {
        loop {
            match tokio::time::timeout(Duration::from_millis(200), store.wait_until_ready()).await {
                Ok(result) => return result.is_ok(),
                Err(_) => continue,
            }
        }
    }
    ready(&shared.namespaces).await && ready(&shared.secrets).await && ready(&shared.accounts).await
}

/// The caches and their watch streams.
pub struct Caches {
    shared: Arc<Shared>,
    controller: Controller<Namespace>,
    trigger_rx: mpsc::UnboundedReceiver<()>,
}

/// Starts the watches and builds the shared state. The config must already be valid.
pub async fn start(
    client: Client,
    metrics: Metrics,
    settings: Settings,
    config: Config,
    providers: HashMap<String, Arc<dyn Provider>>,
    leader: tokio::sync::watch::Receiver<bool>,
) -> Caches {
    let (trigger, trigger_rx) = mpsc::unbounded();
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
    let controller = Controller::for_stream(namespace_stream, namespaces.clone()).with_config(
        // The debounce lets the watch events of a namespace's own writes arrive before it is
        // planned again; without it a re-plan from a cache that has not seen the last patch yet
        // sends it again and gets a failed `test` (measured: 10-28 % extra write requests).
        kube::runtime::controller::Config::default()
            .concurrency(settings.concurrency)
            .debounce(Duration::from_millis(500)),
    );
    let controller = controller
        .watches_stream(secret_stream, |s: Secret| {
            s.metadata.namespace.map(|ns| ObjectRef::new(&ns))
        })
        .watches_stream(account_stream, |s: ServiceAccount| {
            s.metadata.namespace.map(|ns| ObjectRef::new(&ns))
        });
    let reporter = Reporter {
        controller: "pullkeeper".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let applier = Applier::new(
        settings.owner.clone(),
        client.clone(),
        metrics.clone(),
        settings.writes_per_second,
    );
    metrics.config_reloads.with_label_values(&["success"]).inc();
    metrics.config_last_reload_ok.set(1);
    metrics
        .registries_configured
        .set(config.registries.len() as i64);
    let shared = Arc::new(Shared {
        recorder: Recorder::new(client.clone(), reporter),
        metrics,
        settings,
        config: RwLock::new(Arc::new(config)),
        providers: RwLock::new(providers),
        credentials: RwLock::default(),
        foreign: ForeignMarks::default(),
        namespaces,
        secrets,
        accounts,
        applier,
        trigger,
        leader,
        ready: AtomicBool::new(false),
    });
    Caches {
        shared,
        controller,
        trigger_rx,
    }
}

impl Caches {
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Runs the daemon until a shutdown signal.
    /// Runs the daemon until a shutdown signal or until `leadership_lost` completes. Returns
    /// false when it stopped because leadership was lost.
    pub async fn run(
        self,
        leadership_lost: impl std::future::Future<Output = ()> + Send + Sync + 'static,
    ) -> bool {
        let Caches {
            shared,
            controller,
            trigger_rx,
        } = self;
        let lost = Arc::new(AtomicBool::new(false));
        let lost_flag = lost.clone();
        let leadership_lost = async move {
            leadership_lost.await;
            lost_flag.store(true, Ordering::SeqCst);
            error!("leadership lost; stopping so a restart begins as a follower");
        };
        // A new leader resyncs every namespace once.
        let on_leader = {
            let shared = shared.clone();
            tokio::spawn(async move {
                shared.wait_for_leadership().await;
                shared.reconcile_all();
            })
        };
        let mut refreshers = Refreshers {
            tasks: HashMap::new(),
        };
        refreshers.sync(&shared, &shared.config());

        // Readiness: all three caches have listed once.
        let ready = {
            let shared = shared.clone();
            tokio::spawn(async move {
                let ok = caches_synced(&shared).await;
                if ok {
                    shared.ready.store(true, Ordering::SeqCst);
                    info!("caches synced; ready");
                }
            })
        };
        let reloader = {
            let shared = shared.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(shared.settings.reload_interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    reload(&shared, &mut refreshers).await;
                    update_gauges(&shared);
                }
            })
        };
        let ctx = shared.clone();
        controller
            .reconcile_all_on(trigger_rx)
            .graceful_shutdown_on(leadership_lost)
            .shutdown_on_signal()
            .run(
                |ns: Arc<Namespace>, ctx: Arc<Shared>| async move {
                    // Planning from caches that have not listed yet would re-apply Secrets
                    // that exist and miss ServiceAccounts entirely: wait for the first sync.
                    if !ctx.ready.load(Ordering::SeqCst) {
                        return Ok(Action::requeue(Duration::from_millis(500)));
                    }
                    let name = ns.metadata.name.clone().unwrap_or_default();
                    let blocked = ctx
                        .sync_namespace(&ns)
                        .instrument(info_span!("sync", namespace = %name))
                        .await?;
                    Ok::<_, ReconcileError>(if blocked {
                        Action::requeue(ctx.settings.foreign_recheck + Duration::from_secs(1))
                    } else {
                        Action::await_change()
                    })
                },
                |_ns, _err, _ctx| Action::requeue(Duration::from_secs(15)),
                ctx,
            )
            .for_each(|_| future::ready(()))
            .await;
        reloader.abort();
        ready.abort();
        on_leader.abort();
        info!("shut down");
        !lost.load(Ordering::SeqCst)
    }

    /// One full pass: fetch every registry once, wait for the caches, sync every namespace.
    /// Returns whether every registry refreshed and every write succeeded.
    pub async fn once(self) -> bool {
        let Caches {
            shared,
            controller,
            trigger_rx: _,
        } = self;
        // Drive the watches (the controller owns their streams) while the pass runs.
        let driver = tokio::spawn(
            controller
                .run(
                    |_ns, _ctx: Arc<()>| async { Ok::<_, WriteError>(Action::await_change()) },
                    |_, _, _| Action::await_change(),
                    Arc::new(()),
                )
                .for_each(|_| future::ready(())),
        );
        let mut ok = true;
        for reg in shared.config().registries.clone() {
            let span =
                info_span!("refresh", registry = %reg.name, provider = reg.provider.type_name());
            match shared.refresh(&reg).instrument(span.clone()).await {
                Ok(_) => info!(parent: &span, "credential fetched"),
                Err(e) => {
                    ok = false;
                    error!(parent: &span, category = e.category(), error = %error_chain(&e), "refresh failed; the last good Secret stays");
                }
            }
        }
        if !caches_synced(&shared).await {
            error!("caches never synced");
            driver.abort();
            return false;
        }
        for ns in shared.namespaces.state() {
            let name = ns.metadata.name.clone().unwrap_or_default();
            if let Err(e) = shared
                .sync_namespace(&ns)
                .instrument(info_span!("sync", namespace = %name))
                .await
            {
                ok = false;
                error!(error = %e, "namespace sync failed");
            }
        }
        driver.abort();
        ok
    }
}

/// The event target for failed rotations: pullkeeper's own Pod, when the downward API says.
pub fn own_pod_reference() -> Option<ObjectReference> {
    let name = std::env::var("POD_NAME").ok()?;
    let namespace = std::env::var("POD_NAMESPACE").ok()?;
    Some(ObjectReference {
        api_version: Some(k8s_openapi::api::core::v1::Pod::api_version(&()).into_owned()),
        kind: Some("Pod".into()),
        name: Some(name),
        namespace: Some(namespace),
        ..ObjectReference::default()
    })
}
