//! Small builders shared by unit tests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{
    LabelSelector, NamespaceTargets, RefreshPolicy, Registry, ServiceAccountTargets,
};
use crate::providers::ProviderSpec;

/// A registry with a static provider reading the password from `$PK_TEST_PASSWORD`, serving
/// `registry.example`, writing Secret `<name>-pull` to every namespace and the `default` SA.
pub fn registry(name: &str, tweak: impl FnOnce(&mut Registry)) -> Registry {
    let provider: ProviderSpec = serde_yaml_ng::from_str(
        "type: static\nusername: {value: robot}\npassword: {env: PK_TEST_PASSWORD}\n",
    )
    .expect("static provider spec parses");
    let mut r = Registry {
        name: name.into(),
        file: PathBuf::from(format!("/config/{name}.yaml")),
        source_hash: String::new(),
        provider,
        servers: vec!["registry.example".into()],
        secret_name: format!("{name}-pull"),
        namespaces: NamespaceTargets {
            include: vec!["*".into()],
            exclude: vec![],
            selector: LabelSelector::default(),
        },
        service_accounts: ServiceAccountTargets::Names(BTreeSet::from(["default".to_string()])),
        refresh: policy(),
        verify: None,
        secret_labels: BTreeMap::new(),
    };
    tweak(&mut r);
    r
}

/// The default refresh policy.
pub fn policy() -> RefreshPolicy {
    RefreshPolicy {
        schedule: None,
        renew_at: 2.0 / 3.0,
        min_interval: Duration::from_mins(1),
        max_interval: Duration::from_hours(24),
        jitter: 0.0,
        backoff_initial: Duration::from_secs(10),
        backoff_max: Duration::from_mins(5),
        default_lifetime: Duration::from_hours(1),
    }
}

/// A Namespace object named `name` with `labels`.
pub fn namespace(name: &str, labels: &[(&str, &str)]) -> k8s_openapi::api::core::v1::Namespace {
    k8s_openapi::api::core::v1::Namespace {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            labels: (!labels.is_empty()).then(|| {
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                    .collect()
            }),
            ..kube::api::ObjectMeta::default()
        },
        ..k8s_openapi::api::core::v1::Namespace::default()
    }
}
