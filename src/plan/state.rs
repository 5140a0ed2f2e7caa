//! What the planner reads about the cluster, and no more: a namespace's name, labels and
//! whether it is in play; a Secret's ownership, type, labels, annotations and a digest of its
//! data (never the data); a ServiceAccount's `imagePullSecrets` and pullkeeper's record of its
//! own entries. The daemon's caches hold these instead of whole objects; `plan`, `cleanup` and
//! the tests build them from API objects with the `of` constructors.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::api::ObjectMeta;
use sha2::{Digest as _, Sha256};

use crate::ownership::{
    EXPIRES_ANNOTATION, HASH_ANNOTATION, OPT_OUT_ANNOTATION, Owner, REGISTRY_LABEL,
};
use crate::render::{DATA_KEY, SECRET_TYPE};

/// A SHA-256 digest, kept as 32 bytes (the annotation carries it as hex).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// Parses 64 hex digits; `None` for anything else.
    pub fn from_hex(hex: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex, &mut out).ok()?;
        Some(Self(out))
    }

    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256:{}", &self.to_hex()[..12])
    }
}

/// A namespace as planning reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceState {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Opted out with the `pullkeeper.dev/ignore: "true"` annotation.
    pub opted_out: bool,
    /// Being deleted: its objects are going away anyway.
    pub terminating: bool,
}

impl NamespaceState {
    /// From a namespace's metadata (a metadata-only watch has no status: a namespace being
    /// deleted always carries a deletion timestamp).
    pub fn of_meta(meta: &ObjectMeta) -> Self {
        Self {
            name: meta.name.clone().unwrap_or_default(),
            labels: meta.labels.clone().unwrap_or_default(),
            opted_out: meta
                .annotations
                .as_ref()
                .and_then(|a| a.get(OPT_OUT_ANNOTATION))
                .is_some_and(|v| v == "true"),
            terminating: meta.deletion_timestamp.is_some(),
        }
    }

    pub fn of(ns: &Namespace) -> Self {
        let mut state = Self::of_meta(&ns.metadata);
        state.terminating |=
            ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
        state
    }
}

/// A Secret with a name some registry uses, as planning reads it: pullkeeper's own or
/// someone else's (`owned`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecretState {
    pub name: String,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    /// Carries this installation's labels.
    pub owned: bool,
    /// Of type `kubernetes.io/dockerconfigjson`.
    pub typed: bool,
    /// Its labels, sorted by key (a few: a list costs a fraction of a map).
    pub labels: Vec<(String, String)>,
    /// The content-hash annotation, when it holds a digest.
    pub content_hash: Option<Digest>,
    /// The expiry annotation as written.
    pub expires_at: Option<String>,
    /// The digest of `.dockerconfigjson` as it is now: a hand edit no longer matches
    /// `content_hash`.
    pub data: Option<Digest>,
    /// Data keys other than `.dockerconfigjson`.
    pub stray_keys: Vec<String>,
}

impl SecretState {
    pub fn of(secret: &Secret, owner: &Owner) -> Self {
        let meta = &secret.metadata;
        let annotation = |key: &str| meta.annotations.as_ref().and_then(|a| a.get(key));
        let owned = owner.owns(meta);
        Self {
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone(),
            resource_version: meta.resource_version.clone(),
            owned,
            typed: secret.type_.as_deref() == Some(SECRET_TYPE),
            // Someone else's Secret is only ever looked at for its existence.
            labels: if owned {
                meta.labels
                    .iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            } else {
                Vec::new()
            },
            content_hash: annotation(HASH_ANNOTATION).and_then(|h| Digest::from_hex(h)),
            expires_at: annotation(EXPIRES_ANNOTATION).cloned(),
            data: secret
                .data
                .as_ref()
                .and_then(|d| d.get(DATA_KEY))
                .map(|b| Digest::of(&b.0)),
            stray_keys: secret
                .data
                .iter()
                .flatten()
                .map(|(k, _)| k)
                .filter(|k| k.as_str() != DATA_KEY)
                .cloned()
                .collect(),
        }
    }

    /// The value of one label.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
            .map(|i| self.labels[i].1.as_str())
    }

    /// The registry label.
    pub fn registry(&self) -> Option<&str> {
        self.label(REGISTRY_LABEL)
    }
}

/// A ServiceAccount as planning reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccountState {
    pub name: String,
    pub resource_version: Option<String>,
    /// `imagePullSecrets` names in order; `None` when the list is absent.
    pub pull_secrets: Option<Vec<String>>,
    /// This installation's record of the entries it added (the annotation's value).
    pub record: Option<String>,
    /// Whether the ServiceAccount has any annotation (a JSON patch adds the map otherwise).
    pub has_annotations: bool,
}

impl AccountState {
    pub fn of(sa: &ServiceAccount, owner: &Owner) -> Self {
        let annotations = sa.metadata.annotations.as_ref();
        Self {
            name: sa.metadata.name.clone().unwrap_or_default(),
            resource_version: sa.metadata.resource_version.clone(),
            pull_secrets: sa
                .image_pull_secrets
                .as_ref()
                .map(|l| l.iter().map(|r| r.name.clone()).collect()),
            record: annotations
                .and_then(|a| a.get(&owner.account_annotation()))
                .cloned(),
            has_annotations: annotations.is_some(),
        }
    }

    /// The `imagePullSecrets` names, empty when the list is absent.
    pub fn listed(&self) -> impl Iterator<Item = &str> {
        self.pull_secrets.iter().flatten().map(String::as_str)
    }

    /// Whether the list names `secret`.
    pub fn lists(&self, secret: &str) -> bool {
        self.listed().any(|n| n == secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_reads_back_from_its_hex_and_refuses_anything_else() {
        let d = Digest::of(b"x");
        assert_eq!(Digest::from_hex(&d.to_hex()), Some(d));
        assert_eq!(Digest::from_hex("abc"), None);
        assert_eq!(Digest::from_hex(&"zz".repeat(32)), None);
        assert!(format!("{d:?}").starts_with("sha256:"));
    }
}
