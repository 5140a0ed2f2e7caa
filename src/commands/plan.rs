//! `pullkeeper plan`: what `run` would change, read from the live cluster without writing.
//!
//! It lists Namespaces and ServiceAccounts once, and the Secrets of each configured name (a
//! `metadata.name` field selector, as `run` watches them: the role may grant them by name; a
//! same-named Secret that is not pullkeeper's shows up there too), takes each registry's
//! credential either as unchanged (the content its Secrets already hold) or from one provider
//! call per registry (`--fetch`, the same call `run` makes), and asks the planner `run` uses,
//! [`plan::plan_namespace`], for every namespace. The only requests are `list`, and the
//! access review that says which Secret names the identity may read. [`report`] turns the
//! plans into text or JSON.

pub mod report;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::api::{Api, ListParams};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;

use crate::access;
use crate::config::Registry;
use crate::metrics::RefreshMetrics;
use crate::ownership::{EXPIRES_ANNOTATION, HASH_ANNOTATION, Owner, REGISTRY_LABEL};
use crate::plan::{self, AccountState, Issued, NamespaceState, Observed, SecretState};
use crate::refresh::{self, RefreshError, error_chain};
use crate::render::{DATA_KEY, Rendered, content_hash};
use crate::store::Generation;

pub use report::{CredentialSource, Planned, Report};

/// Objects per page when listing.
const PAGE: u32 = 500;

/// Errors of `plan`.
#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    #[error("cannot list {resource} in the cluster")]
    List {
        resource: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("cannot list secrets named {name}")]
    ListNamed {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("{}", .lines.join("; "))]
    NotPermitted { lines: Vec<String> },
    #[error("fetching credentials failed: {}", failures.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Fetch { failures: Vec<FetchFailure> },
}

/// One registry whose `--fetch` failed.
#[derive(Debug)]
pub struct FetchFailure {
    pub registry: String,
    pub error: RefreshError,
}

impl std::fmt::Display for FetchFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "registry {}: {}",
            self.registry,
            error_chain(&self.error)
        )
    }
}

/// The credential a registry is planned with, and where it comes from.
#[derive(Clone, Debug)]
pub struct PlannedCredential {
    pub source: CredentialSource,
    pub issued: Arc<Issued>,
}

/// What `plan` reads from the cluster.
#[derive(Default)]
pub struct Cluster {
    pub namespaces: Vec<Namespace>,
    /// The Secrets of the configured names, pullkeeper's and others' (as `run` watches them).
    pub secrets: Vec<Arc<Secret>>,
    pub accounts: Vec<Arc<ServiceAccount>>,
}

/// How `plan` obtains credentials.
pub enum Credentials<'a> {
    /// As unchanged: the content the registry's Secrets hold already.
    Assumed,
    /// One provider call per registry, as `run` makes it.
    Fetch {
        generation: &'a Generation,
        metrics: &'a RefreshMetrics,
        timeout: Duration,
    },
}

/// Lists every page of a resource.
async fn list_all<K>(
    api: Api<K>,
    params: ListParams,
    resource: &'static str,
) -> Result<Vec<K>, PreviewError>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let mut items = Vec::new();
    let mut params = params.limit(PAGE);
    loop {
        let page = api
            .list(&params)
            .await
            .map_err(|source| PreviewError::List { resource, source })?;
        items.extend(page.items);
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => return Ok(items),
        }
    }
}

/// Lists what the planner reads, once: every Namespace and ServiceAccount, and the Secrets of
/// each configured name. A name the identity may not read is an error naming it and the role
/// line it needs (the plan would be wrong without it).
pub async fn observe(
    client: &Client,
    registries: &[Arc<Registry>],
) -> Result<Cluster, PreviewError> {
    let names: BTreeSet<&str> = registries.iter().map(|r| r.secret_name.as_str()).collect();
    let lines: Vec<String> = match access::secret_access(client, "default").await {
        Ok(access) => names
            .iter()
            .filter_map(|n| {
                let missing: Vec<&str> = access
                    .missing(n)
                    .into_iter()
                    .filter(|v| matches!(*v, "get" | "list" | "watch"))
                    .collect();
                (!missing.is_empty()).then(|| access::missing_line(n, &missing))
            })
            .collect(),
        // Without a review, the listings below say what is refused.
        Err(_) => Vec::new(),
    };
    if !lines.is_empty() {
        return Err(PreviewError::NotPermitted { lines });
    }
    let namespaces = list_all(
        Api::<Namespace>::all(client.clone()),
        ListParams::default(),
        "namespaces",
    );
    let secrets = async {
        let mut all = Vec::new();
        for name in &names {
            let named = list_all(
                Api::<Secret>::all(client.clone()),
                ListParams::default().fields(&format!("metadata.name={name}")),
                "secrets",
            )
            .await
            .map_err(|e| match e {
                PreviewError::List { source, .. } => PreviewError::ListNamed {
                    name: (*name).to_string(),
                    source,
                },
                other => other,
            })?;
            all.extend(named);
        }
        Ok::<_, PreviewError>(all)
    };
    let accounts = list_all(
        Api::<ServiceAccount>::all(client.clone()),
        ListParams::default(),
        "serviceaccounts",
    );
    let (namespaces, secrets, accounts) = futures::try_join!(namespaces, secrets, accounts)?;
    Ok(Cluster {
        namespaces,
        secrets: secrets.into_iter().map(Arc::new).collect(),
        accounts: accounts.into_iter().map(Arc::new).collect(),
    })
}

/// The registry's credential taken as unchanged: the content most of its Secrets hold (those
/// whose content still matches their hash annotation; ties go to the latest expiry), or, when
/// it has no Secret yet, a placeholder of unknown content that is never written.
pub fn assumed(
    owner: &Owner,
    registries: &[Arc<Registry>],
    secrets: &[Arc<Secret>],
) -> HashMap<String, PlannedCredential> {
    let ours: Vec<Arc<Secret>> = secrets
        .iter()
        .filter(|s| owner.owns(&s.metadata))
        .cloned()
        .collect();
    registries
        .iter()
        .map(|reg| {
            let credential = current_content(reg, &ours).unwrap_or_else(|| PlannedCredential {
                source: CredentialSource::Unknown,
                issued: Arc::new(Issued {
                    rendered: Rendered {
                        bytes: Vec::new(),
                        hash: String::new(),
                        servers: reg.servers.clone(),
                    },
                    expires_at: None,
                }),
            });
            (reg.name.clone(), credential)
        })
        .collect()
}

fn current_content(reg: &Registry, secrets: &[Arc<Secret>]) -> Option<PlannedCredential> {
    struct Seen<'s> {
        bytes: &'s [u8],
        count: usize,
        intact: bool,
        expires_at: Option<DateTime<Utc>>,
    }
    let mut by_hash: BTreeMap<String, Seen<'_>> = BTreeMap::new();
    for secret in secrets.iter().filter(|s| {
        s.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(REGISTRY_LABEL))
            == Some(&reg.name)
    }) {
        let Some(bytes) = secret.data.as_ref().and_then(|d| d.get(DATA_KEY)) else {
            continue;
        };
        let hash = content_hash(&bytes.0);
        let annotation = |key: &str| {
            secret
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(key))
        };
        let expires_at = annotation(EXPIRES_ANNOTATION)
            .and_then(|v| DateTime::parse_from_rfc3339(v).ok())
            .map(|t| t.with_timezone(&Utc));
        let intact = annotation(HASH_ANNOTATION) == Some(&hash);
        let seen = by_hash.entry(hash).or_insert(Seen {
            bytes: &bytes.0,
            count: 0,
            intact,
            expires_at,
        });
        seen.count += 1;
        seen.intact |= intact;
        seen.expires_at = seen.expires_at.max(expires_at);
    }
    let (hash, seen) = by_hash
        .into_iter()
        .max_by_key(|(_, s)| (s.intact, s.count, s.expires_at))?;
    Some(PlannedCredential {
        source: CredentialSource::ExistingSecret,
        issued: Arc::new(Issued {
            rendered: Rendered {
                bytes: seen.bytes.to_vec(),
                hash,
                servers: auths_hosts(seen.bytes),
            },
            expires_at: seen.expires_at,
        }),
    })
}

/// The `auths` keys of a `.dockerconfigjson` (never its values).
fn auths_hosts(bytes: &[u8]) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Hosts {
        auths: serde_json::Map<String, serde_json::Value>,
    }
    serde_json::from_slice::<Hosts>(bytes)
        .map(|h| {
            let mut hosts: Vec<String> = h.auths.into_iter().map(|(k, _)| k).collect();
            hosts.sort();
            hosts
        })
        .unwrap_or_default()
}

/// Fetches every registry's credential once, as `run` does; every failure is reported.
pub async fn fetch_all(
    generation: &Generation,
    metrics: &RefreshMetrics,
    timeout: Duration,
) -> Result<HashMap<String, PlannedCredential>, PreviewError> {
    let results = futures::future::join_all(generation.config.registries.iter().map(|reg| async {
        let result = refresh::fetch(generation, reg, metrics, timeout).await;
        (reg.name.clone(), result)
    }))
    .await;
    let mut fetched = HashMap::new();
    let mut failures = Vec::new();
    for (registry, result) in results {
        match result {
            Ok(issued) => {
                fetched.insert(
                    registry,
                    PlannedCredential {
                        source: CredentialSource::Fetched,
                        issued: Arc::new(issued),
                    },
                );
            }
            Err(error) => failures.push(FetchFailure { registry, error }),
        }
    }
    if failures.is_empty() {
        Ok(fetched)
    } else {
        Err(PreviewError::Fetch { failures })
    }
}

/// Plans every namespace with the planner `run` uses, from the planning form of what was
/// listed.
pub fn plan_cluster(
    owner: &Owner,
    registries: &[Arc<Registry>],
    credentials: &HashMap<String, Arc<Issued>>,
    cluster: &Cluster,
) -> Vec<Planned> {
    let mut secrets: HashMap<&str, Vec<SecretState>> = HashMap::new();
    for s in &cluster.secrets {
        if let Some(ns) = s.metadata.namespace.as_deref() {
            secrets
                .entry(ns)
                .or_default()
                .push(SecretState::of(s, owner));
        }
    }
    let mut accounts: HashMap<&str, Vec<Arc<AccountState>>> = HashMap::new();
    for sa in &cluster.accounts {
        if let Some(ns) = sa.metadata.namespace.as_deref() {
            accounts
                .entry(ns)
                .or_default()
                .push(Arc::new(AccountState::of(sa, owner)));
        }
    }
    let frozen = BTreeSet::new();
    cluster
        .namespaces
        .iter()
        .map(|namespace| {
            let namespace = NamespaceState::of(namespace);
            let secrets = secrets.remove(namespace.name.as_str()).unwrap_or_default();
            let accounts = accounts.remove(namespace.name.as_str()).unwrap_or_default();
            let plan = plan::plan_namespace(
                owner,
                registries,
                credentials,
                &Observed {
                    namespace: &namespace,
                    secrets: &secrets,
                    service_accounts: &accounts,
                    frozen: &frozen,
                },
            );
            Planned {
                namespace,
                secrets,
                accounts,
                plan,
            }
        })
        .collect()
}

/// Everything `plan` does after the config is loaded: list, obtain credentials, plan every
/// namespace, and report.
pub async fn preview(
    client: &Client,
    owner: &Owner,
    registries: &[Arc<Registry>],
    credentials: Credentials<'_>,
) -> Result<Report, PreviewError> {
    let cluster = observe(client, registries).await?;
    let (planned, fetched) = match credentials {
        Credentials::Assumed => (assumed(owner, registries, &cluster.secrets), false),
        Credentials::Fetch {
            generation,
            metrics,
            timeout,
        } => (fetch_all(generation, metrics, timeout).await?, true),
    };
    let issued: HashMap<String, Arc<Issued>> = planned
        .iter()
        .map(|(name, c)| (name.clone(), c.issued.clone()))
        .collect();
    let plans = plan_cluster(owner, registries, &issued, &cluster);
    Ok(report::build(owner, registries, &planned, fetched, &plans))
}

#[cfg(test)]
mod tests;
