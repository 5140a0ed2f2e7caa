//! The YAML shapes as written, before validation. Every struct rejects unknown fields. The JSON
//! Schemas under `config/` are generated from these types (`config::schema`).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::providers::ProviderSpec;
use crate::verify::VerifySpec;

/// One registry file.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawRegistry {
    /// Defaults to the file name without extension.
    pub name: Option<String>,
    /// Where the credential comes from: `type` (static, http, ecr, ecr-public, gcp, azure) and
    /// that provider's settings.
    pub provider: ProviderSpec,
    /// Registry hosts written as `auths` keys (`host[:port]`).
    #[serde(default)]
    pub servers: Vec<String>,
    /// Name of the `kubernetes.io/dockerconfigjson` Secret written into each target namespace.
    pub secret_name: String,
    /// Which namespaces receive the Secret (default: every namespace but `kube-*`).
    pub namespaces: Option<RawNamespaces>,
    /// ServiceAccounts whose `imagePullSecrets` list the Secret: names, or `["*"]` for all
    /// (default: `[default]`).
    pub service_accounts: Option<Vec<String>>,
    /// When the credential is renewed.
    pub refresh: Option<RawRefresh>,
    /// Optional proof of a new credential against the registry before it is written.
    pub verify: Option<VerifySpec>,
    /// Extra labels put on every Secret of this registry.
    #[serde(default)]
    pub secret_labels: BTreeMap<String, String>,
}

/// Which namespaces receive the Secret.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawNamespaces {
    /// Namespace names or globs (`team-*`); `kube-*` namespaces only when named exactly.
    pub include: Option<Vec<String>>,
    /// Names or globs taken out of `include`.
    pub exclude: Option<Vec<String>>,
    /// Equality-based label selector: `k=v`, `k!=v`, `k`, `!k`, comma-separated.
    pub selector: Option<String>,
}

/// When to refresh.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawRefresh {
    /// Cron expression, 5 fields (minute first) or 6 fields (second first), UTC.
    pub schedule: Option<String>,
    /// Fraction of the credential's lifetime after which it is renewed (0 < f < 1).
    pub renew_at: Option<f64>,
    /// Shortest time between two refreshes, a duration (`1m`).
    pub min_interval: Option<String>,
    /// Longest time between two refreshes, a duration (`6h`).
    pub max_interval: Option<String>,
    /// Fraction of the computed delay added or removed at random (0 ≤ j < 1).
    pub jitter: Option<f64>,
    /// First wait after a failed refresh, a duration, doubled on each further failure.
    pub backoff_initial: Option<String>,
    /// Longest wait after failed refreshes, a duration.
    pub backoff_max: Option<String>,
    /// Assumed lifetime of a credential whose provider gives no expiry.
    pub default_lifetime: Option<String>,
}

/// The optional `defaults.yaml`: values used by every registry file that does not set them.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawDefaults {
    /// Which namespaces receive the Secrets of registry files without `namespaces`.
    pub namespaces: Option<RawNamespaces>,
    /// ServiceAccounts for registry files without `serviceAccounts`.
    pub service_accounts: Option<Vec<String>>,
    /// Refresh settings for registry files that leave them out (field by field).
    pub refresh: Option<RawRefresh>,
}
