//! What marks an object as pullkeeper's: the labels, annotations and installation name
//! (`Owner`) shared by the planner, the applier, the config checks and the operator commands.

use std::collections::BTreeSet;

/// The `apiVersion` of every JSON report pullkeeper prints (`plan`, `diagnose`, `cleanup`).
pub const REPORT_API_VERSION: &str = "pullkeeper.dev/v1";

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::ObjectMeta;

/// Label marking every object pullkeeper owns.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "pullkeeper";
/// Label naming the registry file a Secret comes from.
pub const REGISTRY_LABEL: &str = "pullkeeper.dev/registry";
/// Annotation with the hex SHA-256 of the Secret's `.dockerconfigjson`.
pub const HASH_ANNOTATION: &str = "pullkeeper.dev/content-hash";
/// Annotation with the credential's expiry (RFC 3339), when the provider states one.
pub const EXPIRES_ANNOTATION: &str = "pullkeeper.dev/expires-at";
/// Annotation on a `ServiceAccount` listing the `imagePullSecrets` entries pullkeeper added.
pub const SA_ANNOTATION: &str = "pullkeeper.dev/image-pull-secrets";
/// Namespace annotation that opts a namespace out (`"true"`).
pub const OPT_OUT_ANNOTATION: &str = "pullkeeper.dev/ignore";
/// Label naming the pullkeeper installation that owns an object.
pub const INSTANCE_LABEL: &str = "pullkeeper.dev/instance";
/// The instance name of a default installation.
pub const DEFAULT_INSTANCE: &str = "pullkeeper";

/// Which pullkeeper installation this is. Several independent installations (one per team, or
/// one per test) can share a cluster: each owns only the objects labelled with its instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub instance: String,
}

impl Default for Owner {
    fn default() -> Self {
        Self {
            instance: DEFAULT_INSTANCE.into(),
        }
    }
}

impl Owner {
    pub fn new(instance: impl Into<String>) -> Self {
        Self {
            instance: instance.into(),
        }
    }

    /// Label selector for this installation's Secrets.
    pub fn selector(&self) -> String {
        format!(
            "{MANAGED_BY_LABEL}={MANAGED_BY_VALUE},{INSTANCE_LABEL}={}",
            self.instance
        )
    }

    /// The `ServiceAccount` annotation recording this installation's entries.
    pub fn account_annotation(&self) -> String {
        if self.instance == DEFAULT_INSTANCE {
            SA_ANNOTATION.to_string()
        } else {
            format!("{SA_ANNOTATION}.{}", self.instance)
        }
    }

    /// Whether an object carries this installation's labels.
    pub fn owns(&self, meta: &ObjectMeta) -> bool {
        let labels = meta.labels.as_ref();
        let label = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
        label(MANAGED_BY_LABEL) == Some(MANAGED_BY_VALUE)
            && label(INSTANCE_LABEL) == Some(&self.instance)
    }
}

/// Label and annotation prefixes a registry file may not set on its Secrets.
pub const RESERVED_PREFIXES: [&str; 2] = [MANAGED_BY_LABEL, "pullkeeper.dev/"];

/// The prefix of system namespaces, in scope only when named exactly.
pub const SYSTEM_NAMESPACE_PREFIX: &str = "kube-";

/// The entries pullkeeper recorded as its own on a `ServiceAccount`.
pub fn owned_entries(owner: &Owner, sa: &ServiceAccount) -> BTreeSet<String> {
    parse_record(
        sa.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(&owner.account_annotation()))
            .map(String::as_str),
    )
}

/// The entries a record annotation's value names (comma-separated).
pub fn parse_record(value: Option<&str>) -> BTreeSet<String> {
    value
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}
