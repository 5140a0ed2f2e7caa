//! Prometheus metrics, registered once. Label values come from bounded sets only: registry
//! names from the config, provider types, results and error categories — never error text.

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

/// Every metric pullkeeper exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub refreshes: IntCounterVec,
    pub refresh_failures: IntCounterVec,
    pub refresh_duration: HistogramVec,
    pub credential_expiry: GaugeVec,
    pub last_success: GaugeVec,
    pub next_refresh: GaugeVec,
    pub managed_secrets: IntGaugeVec,
    pub managed_service_accounts: IntGaugeVec,
    pub foreign_secrets: IntGaugeVec,
    pub writes: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub config_last_reload_ok: IntGauge,
    pub registries_configured: IntGauge,
    pub leader: IntGauge,
    pub provider_duration: HistogramVec,
    pub provider_errors: IntCounterVec,
    pub verifications: IntCounterVec,
    pub build_info: GaugeVec,
    pub start_time: Gauge,
}

fn counter(
    reg: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    reg.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<GaugeVec> {
    let g = GaugeVec::new(Opts::new(name, help), labels)?;
    reg.register(Box::new(g.clone()))?;
    Ok(g)
}

fn int_gauge_vec(
    reg: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntGaugeVec> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    reg.register(Box::new(g.clone()))?;
    Ok(g)
}

fn int_gauge(reg: &Registry, name: &str, help: &str) -> prometheus::Result<IntGauge> {
    let g = IntGauge::new(name, help)?;
    reg.register(Box::new(g.clone()))?;
    Ok(g)
}

fn histogram(
    reg: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<HistogramVec> {
    let buckets = vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)?;
    reg.register(Box::new(h.clone()))?;
    Ok(h)
}

impl Metrics {
    /// Registers every metric. The names are constants, so a registration failure is a
    /// programming error caught by the unit test below.
    pub fn new() -> prometheus::Result<Self> {
        let r = Registry::new();
        let m = Self {
            refreshes: counter(
                &r,
                "pullkeeper_refresh_total",
                "Credential refreshes by registry and result.",
                &["registry", "result"],
            )?,
            refresh_failures: counter(
                &r,
                "pullkeeper_refresh_failures_total",
                "Failed refreshes by registry and error category.",
                &["registry", "category"],
            )?,
            refresh_duration: histogram(
                &r,
                "pullkeeper_refresh_duration_seconds",
                "Time to fetch (and verify) a credential.",
                &["registry"],
            )?,
            credential_expiry: gauge(
                &r,
                "pullkeeper_credential_expiry_timestamp_seconds",
                "When the current credential expires (unix seconds).",
                &["registry"],
            )?,
            last_success: gauge(
                &r,
                "pullkeeper_last_success_timestamp_seconds",
                "When the last refresh succeeded (unix seconds).",
                &["registry"],
            )?,
            next_refresh: gauge(
                &r,
                "pullkeeper_next_refresh_timestamp_seconds",
                "When the next refresh is due (unix seconds).",
                &["registry"],
            )?,
            managed_secrets: int_gauge_vec(
                &r,
                "pullkeeper_managed_secrets",
                "Namespaces where the registry's Secret is in place.",
                &["registry"],
            )?,
            managed_service_accounts: int_gauge_vec(
                &r,
                "pullkeeper_managed_service_accounts",
                "ServiceAccounts referencing the registry's Secret through pullkeeper.",
                &["registry"],
            )?,
            foreign_secrets: int_gauge_vec(
                &r,
                "pullkeeper_foreign_secrets",
                "Same-named Secrets owned by someone else, left untouched.",
                &["registry"],
            )?,
            writes: counter(
                &r,
                "pullkeeper_writes_total",
                "Write requests to the API server.",
                &["kind", "operation", "outcome"],
            )?,
            config_reloads: counter(
                &r,
                "pullkeeper_config_reloads_total",
                "Config loads by result.",
                &["result"],
            )?,
            config_last_reload_ok: int_gauge(
                &r,
                "pullkeeper_config_last_reload_successful",
                "1 when the last config load was accepted.",
            )?,
            registries_configured: int_gauge(
                &r,
                "pullkeeper_registries_configured",
                "Registries in the running config.",
            )?,
            leader: int_gauge(
                &r,
                "pullkeeper_leader",
                "1 while this replica is the leader and writes.",
            )?,
            provider_duration: histogram(
                &r,
                "pullkeeper_provider_request_duration_seconds",
                "Provider call duration.",
                &["provider"],
            )?,
            provider_errors: counter(
                &r,
                "pullkeeper_provider_errors_total",
                "Provider call errors by category.",
                &["provider", "category"],
            )?,
            verifications: counter(
                &r,
                "pullkeeper_verifications_total",
                "Credential verifications against the registry.",
                &["registry", "result"],
            )?,
            build_info: gauge(
                &r,
                "pullkeeper_build_info",
                "Build information.",
                &["version"],
            )?,
            start_time: {
                let g = Gauge::new(
                    "pullkeeper_start_time_seconds",
                    "Process start (unix seconds).",
                )?;
                r.register(Box::new(g.clone()))?;
                g
            },
            registry: r,
        };
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1.0);
        m.start_time.set(chrono::Utc::now().timestamp() as f64);
        Ok(m)
    }

    /// Removes every per-registry series of a registry that left the config.
    pub fn forget_registry(&self, name: &str) {
        for g in [
            &self.credential_expiry,
            &self.last_success,
            &self.next_refresh,
        ] {
            let _ = g.remove_label_values(&[name]);
        }
        for g in [
            &self.managed_secrets,
            &self.managed_service_accounts,
            &self.foreign_secrets,
        ] {
            let _ = g.remove_label_values(&[name]);
        }
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

    #[test]
    fn every_metric_registers_and_renders_with_the_pullkeeper_prefix() {
        let m = Metrics::new().expect("metrics register");
        m.refreshes.with_label_values(&["harbor", "success"]).inc();
        let text = m.render();
        assert!(
            text.contains("pullkeeper_refresh_total{registry=\"harbor\",result=\"success\"} 1")
        );
        assert!(text.contains("pullkeeper_build_info{version="));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("pullkeeper_"), "{line}");
        }
    }
}
