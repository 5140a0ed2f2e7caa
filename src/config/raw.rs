//! The YAML shapes as written, before validation. Every struct rejects unknown fields.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::providers::ProviderSpec;
use crate::verify::VerifySpec;

/// One registry file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawRegistry {
    /// Defaults to the file name without extension.
    pub name: Option<String>,
    pub provider: ProviderSpec,
    /// Registry hosts written as `auths` keys (`host[:port]`).
    #[serde(default)]
    pub servers: Vec<String>,
    pub secret_name: String,
    pub namespaces: Option<RawNamespaces>,
    pub service_accounts: Option<Vec<String>>,
    pub refresh: Option<RawRefresh>,
    pub verify: Option<VerifySpec>,
    /// Extra labels put on every Secret of this registry.
    #[serde(default)]
    pub secret_labels: BTreeMap<String, String>,
}

/// Which namespaces receive the Secret.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawNamespaces {
    pub include: Option<Vec<String>>,
    pub exclude: Option<Vec<String>>,
    /// Equality-based label selector: `k=v`, `k!=v`, `k`, `!k`, comma-separated.
    pub selector: Option<String>,
}

/// When to refresh.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawRefresh {
    /// Cron expression, 5 fields (minute first) or 6 fields (second first), UTC.
    pub schedule: Option<String>,
    /// Fraction of the credential's lifetime after which it is renewed (0 < f < 1).
    pub renew_at: Option<f64>,
    pub min_interval: Option<String>,
    pub max_interval: Option<String>,
    /// Fraction of the computed delay added or removed at random (0 ≤ j < 1).
    pub jitter: Option<f64>,
    pub backoff_initial: Option<String>,
    pub backoff_max: Option<String>,
    /// Assumed lifetime of a credential whose provider gives no expiry.
    pub default_lifetime: Option<String>,
}

/// The optional `defaults.yaml`: values used by every registry file that does not set them.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawDefaults {
    pub namespaces: Option<RawNamespaces>,
    pub service_accounts: Option<Vec<String>>,
    pub refresh: Option<RawRefresh>,
}
