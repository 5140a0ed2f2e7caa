//! What `plan` prints: a report built from the namespace plans, as text for people or as JSON
//! with a stable schema (`apiVersion: pullkeeper.dev/v1`, `kind: Plan`). It names objects,
//! registries, hosts and at most a 12-digit prefix of a content hash; a credential value has no
//! field to land in.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use super::PlannedCredential;
use crate::config::Registry;
use crate::ownership::Owner;
use crate::plan::{
    self, AccountState, Drift, NamespacePlan, NamespaceState, SecretChange, SecretState,
};

/// The `apiVersion` and `kind` of the JSON document.
pub const API_VERSION: &str = crate::ownership::REPORT_API_VERSION;
pub const KIND: &str = "Plan";
/// Digits of a content hash shown.
const HASH_PREFIX: usize = 12;

/// One namespace as planned, with what it was planned from.
pub struct Planned {
    pub namespace: NamespaceState,
    pub secrets: Vec<SecretState>,
    pub accounts: Vec<Arc<AccountState>>,
    pub plan: NamespacePlan,
}

/// Where the credential a registry is planned with comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CredentialSource {
    /// `--fetch`: one provider call, as `run` makes it.
    Fetched,
    /// Taken as unchanged from the registry's Secrets.
    ExistingSecret,
    /// No Secret yet and no `--fetch`: the content is not known.
    Unknown,
}

/// The whole plan.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub instance: String,
    /// Whether the providers were called (`--fetch`).
    pub fetched: bool,
    pub registries: Vec<RegistryReport>,
    /// Only namespaces with a change or a blocked Secret, by name.
    pub namespaces: Vec<NamespaceReport>,
    pub summary: Summary,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistryReport {
    pub name: String,
    pub secret_name: String,
    pub namespaces_in_scope: usize,
    pub credential: CredentialReport,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CredentialReport {
    pub source: CredentialSource,
    /// The first digits of the SHA-256 of the `.dockerconfigjson`, when known.
    pub sha256_prefix: Option<String>,
    /// The `auths` hosts (for unknown content: the `servers` of the registry file).
    pub hosts: Vec<String>,
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceReport {
    pub name: String,
    pub secrets: Vec<SecretReport>,
    pub service_accounts: Vec<AccountReport>,
    pub blocked: Vec<BlockedReport>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Create,
    Update,
    Prune,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretReport {
    pub name: String,
    pub registry: Option<String>,
    pub action: Action,
    /// For an update, what differs: `type`, `content`, `content-unknown`, `stray-keys`,
    /// `labels`, `annotations`.
    pub reasons: Vec<&'static str>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountReport {
    pub name: String,
    /// `imagePullSecrets` entries added.
    pub add: Vec<String>,
    /// `imagePullSecrets` entries removed (only ones pullkeeper added).
    pub remove: Vec<String>,
    /// Whether the annotation recording pullkeeper's entries is rewritten.
    pub records_ownership: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockedReport {
    pub secret: String,
    pub registry: Option<String>,
}

/// Counts over every namespace.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// Namespaces looked at (every namespace in the cluster).
    pub namespaces: usize,
    pub namespaces_changed: usize,
    pub create: usize,
    pub update: usize,
    pub prune: usize,
    pub service_accounts: usize,
    pub entries_added: usize,
    pub entries_removed: usize,
    pub blocked: usize,
    pub writes: Writes,
    /// Whether `run` would write anything (exit code 1).
    pub changes: bool,
}

/// Write requests `run` would make, by the `kind`/`operation` of `pullkeeper_writes_total`.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Writes {
    /// New Secrets (one create each).
    pub secret_create: usize,
    /// Secrets updated in place (server-side apply).
    pub secret_apply: usize,
    pub secret_patch: usize,
    pub secret_delete: usize,
    pub service_account_patch: usize,
    pub total: usize,
}

fn reason(drift: Drift, source: Option<CredentialSource>) -> &'static str {
    match drift {
        Drift::Content if source == Some(CredentialSource::Unknown) => "content-unknown",
        other => other.as_str(),
    }
}

fn credential_report(credential: Option<&PlannedCredential>) -> CredentialReport {
    match credential {
        Some(c) => CredentialReport {
            source: c.source,
            sha256_prefix: (c.source != CredentialSource::Unknown)
                .then(|| c.issued.rendered.hash.chars().take(HASH_PREFIX).collect()),
            hosts: c.issued.rendered.servers.clone(),
            expires_at: c.issued.expires_at,
        },
        None => CredentialReport {
            source: CredentialSource::Unknown,
            sha256_prefix: None,
            hosts: Vec::new(),
            expires_at: None,
        },
    }
}

fn namespace_report(
    planned: &Planned,
    credentials: &HashMap<String, PlannedCredential>,
    writes: &mut Writes,
) -> NamespaceReport {
    let name = planned.namespace.name.clone();
    let mut secrets = Vec::new();
    for change in &planned.plan.secrets {
        match change {
            SecretChange::Apply {
                registry,
                secret,
                existing,
                stray_keys,
                ..
            } => {
                if *existing {
                    writes.secret_apply += 1;
                } else {
                    writes.secret_create += 1;
                }
                if !stray_keys.is_empty() {
                    writes.secret_patch += 1;
                }
                let observed = planned
                    .secrets
                    .iter()
                    .find(|s| s.owned && s.name == secret.name);
                let source = credentials.get(registry).map(|c| c.source);
                let (action, reasons) = match observed.filter(|_| *existing) {
                    Some(observed) => (
                        Action::Update,
                        plan::secret_drift(observed, secret)
                            .into_iter()
                            .map(|d| reason(d, source))
                            .collect(),
                    ),
                    None => (Action::Create, Vec::new()),
                };
                secrets.push(SecretReport {
                    name: secret.name.clone(),
                    registry: Some(registry.clone()),
                    action,
                    reasons,
                });
            }
            SecretChange::Delete { name, registry, .. } => {
                writes.secret_delete += 1;
                secrets.push(SecretReport {
                    name: name.clone(),
                    registry: registry.clone(),
                    action: Action::Prune,
                    reasons: Vec::new(),
                });
            }
        }
    }
    secrets.sort_by(|a, b| a.name.cmp(&b.name));
    let mut service_accounts: Vec<AccountReport> = planned
        .plan
        .accounts
        .iter()
        .map(|change| {
            writes.service_account_patch += 1;
            let edits = planned
                .accounts
                .iter()
                .find(|sa| sa.name == change.name)
                .map(|sa| plan::account_edits(sa, &change.patch))
                .unwrap_or_default();
            AccountReport {
                name: change.name.clone(),
                add: edits.add,
                remove: edits.remove,
                records_ownership: edits.records,
            }
        })
        .collect();
    service_accounts.sort_by(|a, b| a.name.cmp(&b.name));
    let mut blocked: Vec<BlockedReport> = planned
        .plan
        .blocked
        .iter()
        .map(|(secret, registry)| BlockedReport {
            secret: secret.clone(),
            registry: Some(registry.clone()),
        })
        .collect();
    blocked.sort_by(|a, b| a.secret.cmp(&b.secret));
    NamespaceReport {
        name,
        secrets,
        service_accounts,
        blocked,
    }
}

/// Builds the report from every namespace's plan.
pub fn build(
    owner: &Owner,
    registries: &[Arc<Registry>],
    credentials: &HashMap<String, PlannedCredential>,
    fetched: bool,
    plans: &[Planned],
) -> Report {
    let mut summary = Summary {
        namespaces: plans.len(),
        ..Summary::default()
    };
    let mut in_scope: HashMap<&str, usize> = HashMap::new();
    let mut namespaces = Vec::new();
    for planned in plans {
        for reg in plan::registries_in_scope(registries, &planned.namespace) {
            *in_scope.entry(reg.name.as_str()).or_default() += 1;
        }
        let ns = namespace_report(planned, credentials, &mut summary.writes);
        if !planned.plan.is_empty() {
            summary.namespaces_changed += 1;
        }
        for s in &ns.secrets {
            match s.action {
                Action::Create => summary.create += 1,
                Action::Update => summary.update += 1,
                Action::Prune => summary.prune += 1,
            }
        }
        summary.service_accounts += ns.service_accounts.len();
        summary.entries_added += ns
            .service_accounts
            .iter()
            .map(|a| a.add.len())
            .sum::<usize>();
        summary.entries_removed += ns
            .service_accounts
            .iter()
            .map(|a| a.remove.len())
            .sum::<usize>();
        summary.blocked += ns.blocked.len();
        if !(ns.secrets.is_empty() && ns.service_accounts.is_empty() && ns.blocked.is_empty()) {
            namespaces.push(ns);
        }
    }
    namespaces.sort_by(|a, b| a.name.cmp(&b.name));
    let w = &mut summary.writes;
    w.total = w.secret_create
        + w.secret_apply
        + w.secret_patch
        + w.secret_delete
        + w.service_account_patch;
    summary.changes = w.total > 0;
    Report {
        api_version: API_VERSION,
        kind: KIND,
        instance: owner.instance.clone(),
        fetched,
        registries: registries
            .iter()
            .map(|r| RegistryReport {
                name: r.name.clone(),
                secret_name: r.secret_name.clone(),
                namespaces_in_scope: in_scope.get(r.name.as_str()).copied().unwrap_or(0),
                credential: credential_report(credentials.get(&r.name)),
            })
            .collect(),
        namespaces,
        summary,
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn reason_text(reason: &str) -> &str {
    match reason {
        "content" => "credential content changes",
        "content-unknown" => "credential content not known without --fetch",
        "type" => "type is not kubernetes.io/dockerconfigjson",
        "stray-keys" => "data keys pullkeeper did not write are removed",
        "labels" => "labels",
        "annotations" => "content-hash annotation",
        other => other,
    }
}

fn credential_text(c: &CredentialReport) -> String {
    let hash = c
        .sha256_prefix
        .as_deref()
        .map(|h| format!(" sha256:{h}…"))
        .unwrap_or_default();
    let hosts = if c.hosts.is_empty() {
        String::new()
    } else {
        format!(", hosts {}", c.hosts.join(" "))
    };
    let expiry = c
        .expires_at
        .map(|e| format!(", expires {}", e.to_rfc3339_opts(SecondsFormat::Secs, true)))
        .unwrap_or_default();
    match c.source {
        CredentialSource::Fetched => format!("fetched{hash}{hosts}{expiry}"),
        CredentialSource::ExistingSecret => {
            format!("as its Secrets hold it{hash}{hosts}{expiry}")
        }
        CredentialSource::Unknown => {
            format!("unknown until the first fetch (no Secret yet){hosts}")
        }
    }
}

impl Report {
    /// The stable JSON document.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string_pretty(self)
    }

    /// The plan for people.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let how = if self.fetched {
            "credentials fetched once per registry"
        } else {
            "credential content taken as unchanged; --fetch calls the providers"
        };
        let _ = writeln!(
            out,
            "pullkeeper plan for instance {} ({how})",
            self.instance
        );
        for r in &self.registries {
            let _ = writeln!(
                out,
                "  registry {}: Secret {} in {}; credential {}",
                r.name,
                r.secret_name,
                plural(r.namespaces_in_scope, "namespace", "namespaces"),
                credential_text(&r.credential)
            );
        }
        for ns in &self.namespaces {
            let _ = writeln!(out, "\nnamespace {}", ns.name);
            for s in &ns.secrets {
                let registry = s
                    .registry
                    .as_deref()
                    .map(|r| format!(" (registry {r})"))
                    .unwrap_or_default();
                let (mark, what) = secret_change_text(s);
                let _ = writeln!(out, "  {mark} Secret {}{registry}: {what}", s.name);
            }
            for a in &ns.service_accounts {
                let entries: Vec<String> = a
                    .add
                    .iter()
                    .map(|n| format!("+{n}"))
                    .chain(a.remove.iter().map(|n| format!("-{n}")))
                    .collect();
                let what = if entries.is_empty() {
                    "record of pullkeeper's entries rewritten".to_string()
                } else {
                    format!("imagePullSecrets {}", entries.join(" "))
                };
                let _ = writeln!(out, "  ~ ServiceAccount {}: {what}", a.name);
            }
            for b in &ns.blocked {
                let registry = b
                    .registry
                    .as_deref()
                    .map(|r| format!(" (registry {r})"))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "  ! Secret {}{registry}: blocked: a Secret of that name exists and is not \
                     pullkeeper's; run leaves it alone and no ServiceAccount will reference it",
                    b.secret
                );
            }
        }
        let s = &self.summary;
        let blocked = if s.blocked > 0 {
            format!("; {} blocked", s.blocked)
        } else {
            String::new()
        };
        if s.changes {
            let _ = writeln!(
                out,
                "\nPlan: {} to create, {} to update, {} to prune; {} to patch (+{} / -{} entries){blocked}; {} in {} of {}.",
                plural(s.create, "Secret", "Secrets"),
                s.update,
                s.prune,
                plural(s.service_accounts, "ServiceAccount", "ServiceAccounts"),
                s.entries_added,
                s.entries_removed,
                plural(s.writes.total, "write", "writes"),
                s.namespaces_changed,
                plural(s.namespaces, "namespace", "namespaces"),
            );
        } else {
            let _ = writeln!(
                out,
                "\nNo changes: {} already match the config{blocked}.",
                plural(s.namespaces, "namespace", "namespaces"),
            );
        }
        out
    }
}

/// The mark and the words of one Secret's change in `plan`'s text.
fn secret_change_text(s: &SecretReport) -> (&'static str, String) {
    match s.action {
        Action::Create => ("+", "create".to_string()),
        Action::Update => {
            // A new content always comes with a new hash annotation: say it once.
            let content = s.reasons.iter().any(|r| r.starts_with("content"));
            let reasons: Vec<&str> = s
                .reasons
                .iter()
                .filter(|r| !(content && **r == "annotations"))
                .map(|r| reason_text(r))
                .collect();
            ("~", format!("update ({})", reasons.join(", ")))
        }
        Action::Prune => ("-", "prune".to_string()),
    }
}
