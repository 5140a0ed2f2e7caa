//! Prometheus metrics, registered once and grouped by subsystem. Label values come from bounded
//! sets only: registry names from the config, provider types, typed results and error
//! categories — never error text. Where an outcome is also worth a log line, the method that
//! counts it logs it, so dashboards and logs never disagree.

use chrono::{DateTime, Utc};
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramTimer, HistogramVec,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use tracing::{debug, error, info, warn};

use crate::problems::Problem;

/// Every metric pullkeeper exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Every metric registered, for the contract.
    exported: Vec<Exported>,
    pub refresh: RefreshMetrics,
    pub inventory: InventoryMetrics,
    pub writes: WriteMetrics,
    pub config: ConfigMetrics,
    pub leader: LeaderMetrics,
    pub recovery: RecoveryMetrics,
    pub sweeps: SweepMetrics,
    pub watches: WatchMetrics,
}

/// Unix seconds with sub-second precision (so a test or a query can order two moments in the
/// same second).
fn unix_seconds(at: DateTime<Utc>) -> f64 {
    at.timestamp_millis() as f64 / 1000.0
}

/// Success or failure of one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
}

impl Outcome {
    pub const ALL: [Outcome; 2] = [Self::Success, Self::Failure];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
        }
    }

    pub fn of<T, E>(result: &Result<T, E>) -> Self {
        if result.is_ok() {
            Self::Success
        } else {
            Self::Failure
        }
    }
}

/// Credential refreshes, provider calls and verifications.
#[derive(Clone)]
pub struct RefreshMetrics {
    refreshes: IntCounterVec,
    failures: IntCounterVec,
    duration: HistogramVec,
    expiry: GaugeVec,
    last_success: GaugeVec,
    next_refresh: GaugeVec,
    provider_duration: HistogramVec,
    provider_errors: IntCounterVec,
    verifications: IntCounterVec,
}

impl RefreshMetrics {
    /// Creates a registry's refresh series at zero, so `increase()` sees even the first failure.
    pub fn register(&self, registry: &str) {
        for outcome in Outcome::ALL {
            self.refreshes
                .with_label_values(&[registry, outcome.as_str()]);
        }
    }

    /// Times one refresh (fetch and verification) of a registry.
    pub fn timer(&self, registry: &str) -> HistogramTimer {
        self.duration.with_label_values(&[registry]).start_timer()
    }

    /// Times one provider call.
    pub fn provider_timer(&self, provider: &str) -> HistogramTimer {
        self.provider_duration
            .with_label_values(&[provider])
            .start_timer()
    }

    /// Counts a failed provider call by its bounded category.
    pub fn provider_failed(&self, provider: &str, category: &str) {
        self.provider_errors
            .with_label_values(&[provider, category])
            .inc();
    }

    /// Counts one verification of a new credential against its registry.
    pub fn verified(&self, registry: &str, outcome: Outcome) {
        self.verifications
            .with_label_values(&[registry, outcome.as_str()])
            .inc();
    }

    /// Counts and logs a successful refresh.
    pub fn succeeded(
        &self,
        registry: &str,
        now: DateTime<Utc>,
        expires_at: Option<DateTime<Utc>>,
        changed: bool,
    ) {
        self.refreshes
            .with_label_values(&[registry, Outcome::Success.as_str()])
            .inc();
        self.last_success
            .with_label_values(&[registry])
            .set(unix_seconds(now));
        match expires_at {
            Some(e) => self
                .expiry
                .with_label_values(&[registry])
                .set(e.timestamp() as f64),
            None => {
                let _ = self.expiry.remove_label_values(&[registry]);
            }
        }
        info!(registry, changed, expires_at = ?expires_at.map(|e| e.to_rfc3339()), "credential refreshed");
    }

    /// Counts and logs a failed refresh; `error` is the whole chain, free of credential material.
    pub fn failed(&self, registry: &str, category: &str, attempt: u32, error: &str) {
        self.refreshes
            .with_label_values(&[registry, Outcome::Failure.as_str()])
            .inc();
        self.failures.with_label_values(&[registry, category]).inc();
        warn!(
            registry,
            category, attempt, error, "refresh failed; the last good Secret stays"
        );
    }

    /// Publishes when the next refresh (or retry) of a registry is due.
    pub fn scheduled(&self, registry: &str, next: DateTime<Utc>) {
        self.next_refresh
            .with_label_values(&[registry])
            .set(next.timestamp() as f64);
    }

    fn forget(&self, registry: &str) {
        for g in [&self.expiry, &self.last_success, &self.next_refresh] {
            let _ = g.remove_label_values(&[registry]);
        }
    }
}

/// The watches, and whether the role lets pullkeeper serve each registry's Secret name.
#[derive(Clone)]
pub struct WatchMetrics {
    errors: IntCounterVec,
    access: IntGaugeVec,
}

impl WatchMetrics {
    /// Counts a failed watch or list request (`watch` names the watched resource: a bounded
    /// set) and logs it; the watch retries with backoff.
    pub fn failed(&self, watch: &'static str, category: &'static str, error: &str) {
        self.errors.with_label_values(&[watch, category]).inc();
        warn!(
            watch,
            category, error, "watch request failed; retrying with backoff"
        );
    }

    /// Whether the registry's Secret name is covered by the role (1) or not (0).
    pub fn access(&self, registry: &str, permitted: bool) {
        self.access
            .with_label_values(&[registry])
            .set(i64::from(permitted));
    }

    fn forget(&self, registry: &str) {
        let _ = self.access.remove_label_values(&[registry]);
    }
}

/// What pullkeeper manages, kept from the index.
#[derive(Clone)]
pub struct InventoryMetrics {
    secrets: IntGaugeVec,
    accounts: IntGaugeVec,
    foreign: IntGaugeVec,
}

impl InventoryMetrics {
    pub fn set(&self, registry: &str, secrets: usize, accounts: usize, foreign: usize) {
        let n = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        self.secrets.with_label_values(&[registry]).set(n(secrets));
        self.accounts
            .with_label_values(&[registry])
            .set(n(accounts));
        self.foreign.with_label_values(&[registry]).set(n(foreign));
    }

    fn forget(&self, registry: &str) {
        for g in [&self.secrets, &self.accounts, &self.foreign] {
            let _ = g.remove_label_values(&[registry]);
        }
    }
}

/// The kind of object written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteKind {
    Secret,
    ServiceAccount,
    Pod,
}

/// The write operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOp {
    /// A new Secret (one request; a conflict means one of that name appeared meanwhile).
    Create,
    Apply,
    /// A guarded JSON patch (`ServiceAccounts`, and data keys another manager added to a Secret).
    Patch,
    Delete,
}

/// How a write ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    Success,
    /// A precondition or `test` failed, or the object changed under us.
    Conflict,
    Error,
}

impl WriteKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Secret => "secret",
            Self::ServiceAccount => "serviceaccount",
            Self::Pod => "pod",
        }
    }
}

impl WriteOp {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Apply => "apply",
            Self::Patch => "patch",
            Self::Delete => "delete",
        }
    }
}

impl WriteOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Conflict => "conflict",
            Self::Error => "error",
        }
    }
}

/// Write requests to the API server.
#[derive(Clone)]
pub struct WriteMetrics {
    writes: IntCounterVec,
}

impl WriteMetrics {
    pub fn record(&self, kind: WriteKind, op: WriteOp, outcome: WriteOutcome) {
        self.writes
            .with_label_values(&[kind.as_str(), op.as_str(), outcome.as_str()])
            .inc();
    }
}

/// Config loads and reloads.
#[derive(Clone)]
pub struct ConfigMetrics {
    reloads: IntCounterVec,
    last_ok: IntGauge,
    registries: IntGauge,
}

impl ConfigMetrics {
    /// Counts and logs an accepted config.
    pub fn accepted(&self, registries: usize) {
        self.reloads
            .with_label_values(&[Outcome::Success.as_str()])
            .inc();
        self.last_ok.set(1);
        self.registries
            .set(i64::try_from(registries).unwrap_or(i64::MAX));
        info!(registries, "config loaded");
    }

    /// Counts and logs a rejected config (the previous one keeps running).
    pub fn rejected(&self, problems: &[Problem]) {
        self.reloads
            .with_label_values(&[Outcome::Failure.as_str()])
            .inc();
        self.last_ok.set(0);
        for p in problems {
            error!(file = %p.file.display(), field = %p.field, problem = %p.message, "config rejected; the previous config keeps running");
        }
    }

    /// The running config is (again) what the directory holds: a failure state clears.
    pub fn current(&self) {
        self.last_ok.set(1);
    }

    pub fn last_ok(&self) -> bool {
        self.last_ok.get() == 1
    }
}

/// Leader election.
#[derive(Clone)]
pub struct LeaderMetrics {
    leader: IntGauge,
    looks: IntCounterVec,
}

/// What one look at the Lease found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseLook {
    Lead,
    Follow,
    Error,
}

impl LeaderMetrics {
    pub fn set(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Counts one look at the Lease.
    pub fn looked(&self, look: LeaseLook) {
        let result = match look {
            LeaseLook::Lead => "lead",
            LeaseLook::Follow => "follow",
            LeaseLook::Error => "error",
        };
        self.looks.with_label_values(&[result]).inc();
    }
}

/// Sweeps over every namespace (after a rotation, a reload, on becoming leader, at resync).
#[derive(Clone)]
pub struct SweepMetrics {
    completed: IntCounterVec,
    last_start: Gauge,
    duration: Histogram,
}

impl SweepMetrics {
    /// Records a finished sweep that started at `started`.
    pub fn completed(&self, started: DateTime<Utc>, namespaces: usize, outcome: Outcome) {
        self.completed.with_label_values(&[outcome.as_str()]).inc();
        self.last_start.set(unix_seconds(started));
        let seconds = (Utc::now() - started).num_milliseconds() as f64 / 1000.0;
        self.duration.observe(seconds);
        debug!(
            namespaces,
            seconds,
            result = outcome.as_str(),
            "sweep finished"
        );
    }
}

/// Recovery of Pods stuck before their credential existed.
#[derive(Clone)]
pub struct RecoveryMetrics {
    recovered: IntCounterVec,
    stuck: IntGaugeVec,
}

impl RecoveryMetrics {
    /// Counts one Pod deleted so its controller recreates it with the reference.
    pub fn recovered(&self, registry: &str) {
        self.recovered.with_label_values(&[registry]).inc();
    }

    /// Publishes how many Pods wait on a managed registry, by registry and reason: every
    /// configured registry and reason has a series (0 when none waits), so an alert sees the
    /// gauge rise from 0; series of registries that left the config go away.
    pub fn stuck(
        &self,
        registries: &[&str],
        reasons: &[&str],
        counts: &std::collections::BTreeMap<(String, String), usize>,
    ) {
        self.stuck.reset();
        for registry in registries {
            // The recovered counter starts at zero too, so `increase()` sees the first one.
            self.recovered.with_label_values(&[registry]);
            for reason in reasons {
                let pods = counts
                    .get(&((*registry).to_string(), (*reason).to_string()))
                    .copied()
                    .unwrap_or(0);
                self.stuck
                    .with_label_values(&[registry, reason])
                    .set(i64::try_from(pods).unwrap_or(i64::MAX));
            }
        }
    }

    fn forget(&self, registry: &str) {
        let _ = self.recovered.remove_label_values(&[registry]);
    }
}

/// One exported metric as the contract (`dashboards/metrics.txt`) lists it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Exported {
    pub name: String,
    pub kind: &'static str,
    pub labels: Vec<String>,
}

struct Builder(Registry, std::cell::RefCell<Vec<Exported>>);

impl Builder {
    fn register<C: prometheus::core::Collector + Clone + 'static>(
        &self,
        kind: &'static str,
        c: C,
    ) -> prometheus::Result<C> {
        self.1
            .borrow_mut()
            .extend(c.desc().iter().map(|d| Exported {
                name: d.fq_name.clone(),
                kind,
                labels: d.variable_labels.clone(),
            }));
        self.0.register(Box::new(c.clone()))?;
        Ok(c)
    }

    fn counter(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> prometheus::Result<IntCounterVec> {
        self.register(
            "counter",
            IntCounterVec::new(Opts::new(name, help), labels)?,
        )
    }

    fn gauge(&self, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<GaugeVec> {
        self.register("gauge", GaugeVec::new(Opts::new(name, help), labels)?)
    }

    fn int_gauges(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> prometheus::Result<IntGaugeVec> {
        self.register("gauge", IntGaugeVec::new(Opts::new(name, help), labels)?)
    }

    fn int_gauge(&self, name: &str, help: &str) -> prometheus::Result<IntGauge> {
        self.register("gauge", IntGauge::new(name, help)?)
    }

    fn histogram(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> prometheus::Result<HistogramVec> {
        let buckets = vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
        self.register(
            "histogram",
            HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)?,
        )
    }
}

impl RefreshMetrics {
    fn registered(b: &Builder) -> prometheus::Result<Self> {
        Ok(RefreshMetrics {
            refreshes: b.counter(
                "pullkeeper_refresh_total",
                "Credential refreshes by registry and result.",
                &["registry", "result"],
            )?,
            failures: b.counter(
                "pullkeeper_refresh_failures_total",
                "Failed refreshes by registry and error category.",
                &["registry", "category"],
            )?,
            duration: b.histogram(
                "pullkeeper_refresh_duration_seconds",
                "Time to fetch (and verify) a credential.",
                &["registry"],
            )?,
            expiry: b.gauge(
                "pullkeeper_credential_expiry_timestamp_seconds",
                "When the current credential expires (unix seconds).",
                &["registry"],
            )?,
            last_success: b.gauge(
                "pullkeeper_last_success_timestamp_seconds",
                "When the last refresh succeeded (unix seconds).",
                &["registry"],
            )?,
            next_refresh: b.gauge(
                "pullkeeper_next_refresh_timestamp_seconds",
                "When the next refresh is due (unix seconds).",
                &["registry"],
            )?,
            provider_duration: b.histogram(
                "pullkeeper_provider_request_duration_seconds",
                "Provider call duration.",
                &["provider"],
            )?,
            provider_errors: b.counter(
                "pullkeeper_provider_errors_total",
                "Provider call errors by category.",
                &["provider", "category"],
            )?,
            verifications: b.counter(
                "pullkeeper_verifications_total",
                "Credential verifications against the registry.",
                &["registry", "result"],
            )?,
        })
    }
}

impl SweepMetrics {
    fn registered(b: &Builder) -> prometheus::Result<Self> {
        Ok(SweepMetrics {
            completed: b.counter(
                "pullkeeper_sweeps_total",
                "Completed sweeps over every namespace, by result.",
                &["result"],
            )?,
            last_start: b.register(
                "gauge",
                Gauge::new(
                    "pullkeeper_last_sweep_timestamp_seconds",
                    "When the last completed sweep over every namespace started (unix seconds).",
                )?,
            )?,
            duration: b.register(
                "histogram",
                Histogram::with_opts(
                    HistogramOpts::new(
                        "pullkeeper_sweep_duration_seconds",
                        "Time to sync every namespace once.",
                    )
                    .buckets(vec![
                        0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
                    ]),
                )?,
            )?,
        })
    }
}

impl InventoryMetrics {
    fn registered(b: &Builder) -> prometheus::Result<Self> {
        Ok(InventoryMetrics {
            secrets: b.int_gauges(
                "pullkeeper_managed_secrets",
                "Namespaces where the registry's Secret is in place.",
                &["registry"],
            )?,
            accounts: b.int_gauges(
                "pullkeeper_managed_service_accounts",
                "ServiceAccounts referencing the registry's Secret through pullkeeper.",
                &["registry"],
            )?,
            foreign: b.int_gauges(
                "pullkeeper_foreign_secrets",
                "Same-named Secrets owned by someone else, left untouched.",
                &["registry"],
            )?,
        })
    }
}

impl Metrics {
    /// Registers every metric. The names are constants, so a registration failure is a
    /// programming error caught by the unit test below.
    pub fn new() -> prometheus::Result<Self> {
        let b = Builder(Registry::new(), std::cell::RefCell::default());
        let refresh = RefreshMetrics::registered(&b)?;
        let inventory = InventoryMetrics::registered(&b)?;
        let writes = WriteMetrics {
            writes: b.counter(
                "pullkeeper_writes_total",
                "Write requests to the API server.",
                &["kind", "operation", "outcome"],
            )?,
        };
        let config = ConfigMetrics {
            reloads: b.counter(
                "pullkeeper_config_reloads_total",
                "Config loads by result.",
                &["result"],
            )?,
            last_ok: b.int_gauge(
                "pullkeeper_config_last_reload_successful",
                "1 when the running config is what the config directory holds.",
            )?,
            registries: b.int_gauge(
                "pullkeeper_registries_configured",
                "Registries in the running config.",
            )?,
        };
        let leader = LeaderMetrics {
            leader: b.int_gauge(
                "pullkeeper_leader",
                "1 while this replica is the leader and writes.",
            )?,
            looks: b.counter(
                "pullkeeper_lease_looks_total",
                "Looks at the leader-election Lease by what they found.",
                &["result"],
            )?,
        };
        let sweeps = SweepMetrics::registered(&b)?;
        let recovery = RecoveryMetrics {
            recovered: b.counter(
                "pullkeeper_pods_recovered_total",
                "Pods stuck on a managed registry deleted so their controller recreates them.",
                &["registry"],
            )?,
            stuck: b.int_gauges(
                "pullkeeper_pods_stuck",
                "Pods waiting for an image on a managed registry, by reason.",
                &["registry", "reason"],
            )?,
        };
        let build_info = b.gauge("pullkeeper_build_info", "Build information.", &["version"])?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1.0);
        let start_time = b.register(
            "gauge",
            Gauge::new(
                "pullkeeper_start_time_seconds",
                "Process start (unix seconds).",
            )?,
        )?;
        start_time.set(Utc::now().timestamp() as f64);
        let watches = WatchMetrics {
            errors: b.counter(
                "pullkeeper_watch_errors_total",
                "Failed watch or list requests, by watched resource and error category; each watch retries with backoff.",
                &["watch", "category"],
            )?,
            access: b.int_gauges(
                "pullkeeper_registry_secret_access",
                "1 when the role lets pullkeeper read and write the registry's Secret name, 0 when it does not (the registry is then not served).",
                &["registry"],
            )?,
        };
        let mut exported = b.1.into_inner();
        exported.sort();
        Ok(Self {
            registry: b.0,
            exported,
            refresh,
            inventory,
            writes,
            config,
            leader,
            recovery,
            sweeps,
            watches,
        })
    }

    /// Removes every per-registry series of a registry that left the config.
    pub fn forget_registry(&self, name: &str) {
        self.refresh.forget(name);
        self.inventory.forget(name);
        self.recovery.forget(name);
        self.watches.forget(name);
    }

    /// Every metric this process exports, with its type and labels, sorted by name.
    pub fn exported(&self) -> &[Exported] {
        &self.exported
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `dashboards/metrics.txt` is the contract the dashboard and the alerts are checked
    /// against (tests/checks/promtool.sh): it must list exactly what the binary exports.
    #[test]
    fn the_metrics_contract_lists_exactly_what_is_exported() {
        let m = Metrics::new().expect("metrics register");
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/dashboards/metrics.txt");
        let text = std::fs::read_to_string(path).expect("read the contract");
        let mut listed: Vec<Exported> = text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .map(|l| {
                let mut fields = l.split_whitespace();
                let name = fields.next().expect("name").to_string();
                let kind = match fields.next().expect("type") {
                    "counter" => "counter",
                    "gauge" => "gauge",
                    "histogram" => "histogram",
                    other => panic!("{path}: unknown type {other} for {name}"),
                };
                let labels = match fields.next().expect("labels") {
                    "-" => Vec::new(),
                    l => l.split(',').map(String::from).collect(),
                };
                Exported { name, kind, labels }
            })
            .collect();
        listed.sort();
        let exported = m.exported().to_vec();
        let missing: Vec<_> = exported.iter().filter(|e| !listed.contains(e)).collect();
        let stale: Vec<_> = listed.iter().filter(|l| !exported.contains(l)).collect();
        assert!(
            missing.is_empty() && stale.is_empty(),
            "{path} differs from what the binary exports:\n  not listed: {missing:?}\n  listed, not exported: {stale:?}"
        );
    }

    #[test]
    fn every_metric_registers_and_renders_with_the_pullkeeper_prefix() {
        let m = Metrics::new().expect("metrics register");
        m.refresh.succeeded("harbor", Utc::now(), None, true);
        m.writes
            .record(WriteKind::Secret, WriteOp::Apply, WriteOutcome::Success);
        let text = m.render();
        assert!(
            text.contains("pullkeeper_refresh_total{registry=\"harbor\",result=\"success\"} 1")
        );
        assert!(text.contains(
            "pullkeeper_writes_total{kind=\"secret\",operation=\"apply\",outcome=\"success\"} 1"
        ));
        assert!(text.contains("pullkeeper_build_info{version="));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("pullkeeper_"), "{line}");
        }
    }

    #[test]
    fn a_rejected_config_clears_when_the_running_one_is_current_again() {
        let m = Metrics::new().expect("metrics register");
        m.config.accepted(1);
        m.config.rejected(&[]);
        assert!(!m.config.last_ok());
        m.config.current();
        assert!(m.config.last_ok());
    }
}
