//! `pullkeeper plan`: what `run` would change, read from the live cluster without writing.
//!
//! It lists Namespaces, ServiceAccounts and this installation's Secrets once, takes each
//! registry's credential either as unchanged (the content its Secrets already hold) or from one
//! provider call per registry (`--fetch`, the same call `run` makes), reads the Secrets it would
//! create by name to find same-named ones that are not pullkeeper's (as the applier does before
//! writing), and asks the planner `run` uses, [`plan::plan_namespace`], for every namespace.
//! The only requests are `list` and `get`. [`report`] turns the plans into text or JSON.

pub mod report;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::api::{Api, ListParams};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;

use crate::config::Registry;
use crate::metrics::RefreshMetrics;
use crate::ownership::{EXPIRES_ANNOTATION, HASH_ANNOTATION, Owner, REGISTRY_LABEL};
use crate::plan::{self, Issued, Observed, SecretChange};
use crate::refresh::{self, RefreshError, error_chain};
use crate::render::{DATA_KEY, Rendered, content_hash};
use crate::store::Generation;

pub use report::{CredentialSource, Planned, Report};

/// Objects per page when listing.
const PAGE: u32 = 500;
/// Secrets read by name at once when looking for same-named ones pullkeeper does not own.
const LOOKUPS: usize = 8;

/// Errors of `plan`.
#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    #[error("cannot list {resource} in the cluster")]
    List {
        resource: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("cannot read secret {namespace}/{name}")]
    Get {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
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
    /// This installation's Secrets (label-selected, as `run` watches them).
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

/// Lists what the planner reads, once: every Namespace and ServiceAccount, and this
/// installation's Secrets.
pub async fn observe(client: &Client, owner: &Owner) -> Result<Cluster, PreviewError> {
    let namespaces = list_all(
        Api::<Namespace>::all(client.clone()),
        ListParams::default(),
        "namespaces",
    );
    let secrets = list_all(
        Api::<Secret>::all(client.clone()),
        ListParams::default().labels(&owner.selector()),
        "secrets",
    );
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
    registries: &[Arc<Registry>],
    secrets: &[Arc<Secret>],
) -> HashMap<String, PlannedCredential> {
    registries
        .iter()
        .map(|reg| {
            let credential = current_content(reg, secrets).unwrap_or_else(|| PlannedCredential {
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

/// Plans every namespace with the planner `run` uses. `foreign` names, per namespace, the
/// Secrets found to be someone else's.
pub fn plan_cluster<'c>(
    owner: &Owner,
    registries: &[Arc<Registry>],
    credentials: &HashMap<String, Arc<Issued>>,
    cluster: &'c Cluster,
    foreign: &HashMap<String, HashSet<String>>,
    now: DateTime<Utc>,
) -> Vec<Planned<'c>> {
    let mut secrets: HashMap<&str, Vec<Arc<Secret>>> = HashMap::new();
    for s in &cluster.secrets {
        if let Some(ns) = s.metadata.namespace.as_deref() {
            secrets.entry(ns).or_default().push(s.clone());
        }
    }
    let mut accounts: HashMap<&str, Vec<Arc<ServiceAccount>>> = HashMap::new();
    for sa in &cluster.accounts {
        if let Some(ns) = sa.metadata.namespace.as_deref() {
            accounts.entry(ns).or_default().push(sa.clone());
        }
    }
    let none = HashSet::new();
    cluster
        .namespaces
        .iter()
        .map(|namespace| {
            let name = namespace.metadata.name.as_deref().unwrap_or_default();
            let foreign = foreign.get(name).unwrap_or(&none);
            let observed = Observed {
                namespace,
                secrets: secrets.get(name).cloned().unwrap_or_default(),
                service_accounts: accounts.get(name).cloned().unwrap_or_default(),
                foreign,
                now,
            };
            let plan = plan::plan_namespace(owner, registries, credentials, &observed);
            Planned {
                namespace,
                secrets: observed.secrets,
                accounts: observed.service_accounts,
                foreign: foreign.clone(),
                plan,
            }
        })
        .collect()
}

/// The Secrets the plans would create, as `(namespace, name)`: the applier reads each first,
/// since only pullkeeper's own Secrets are listed.
fn to_create(plans: &[Planned<'_>]) -> Vec<(String, String)> {
    plans
        .iter()
        .flat_map(|p| {
            p.plan.secrets.iter().filter_map(|change| match change {
                SecretChange::Apply {
                    secret,
                    existing: false,
                    ..
                } => Some((secret.namespace.clone(), secret.name.clone())),
                _ => None,
            })
        })
        .collect()
}

/// Reads each Secret the plans would create (metadata only) and returns, per namespace, the
/// names of those that exist and are not this installation's: `run` never overwrites them.
pub async fn find_foreign(
    client: &Client,
    owner: &Owner,
    plans: &[Planned<'_>],
) -> Result<HashMap<String, HashSet<String>>, PreviewError> {
    let found: Vec<Option<(String, String)>> = futures::stream::iter(to_create(plans))
        .map(|(namespace, name)| async move {
            let api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
            match api.get_metadata_opt(&name).await {
                Ok(Some(existing)) if !owner.owns(&existing.metadata) => {
                    Ok(Some((namespace, name)))
                }
                Ok(_) => Ok(None),
                Err(source) => Err(PreviewError::Get {
                    namespace,
                    name,
                    source,
                }),
            }
        })
        .buffer_unordered(LOOKUPS)
        .try_collect()
        .await?;
    let mut foreign: HashMap<String, HashSet<String>> = HashMap::new();
    for (namespace, name) in found.into_iter().flatten() {
        foreign.entry(namespace).or_default().insert(name);
    }
    Ok(foreign)
}

/// Everything `plan` does after the config is loaded: list, obtain credentials, plan, look up
/// the Secrets to create, plan again where some turned out to be someone else's, and report.
pub async fn preview(
    client: &Client,
    owner: &Owner,
    registries: &[Arc<Registry>],
    credentials: Credentials<'_>,
) -> Result<Report, PreviewError> {
    let cluster = observe(client, owner).await?;
    let (planned, fetched) = match credentials {
        Credentials::Assumed => (assumed(registries, &cluster.secrets), false),
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
    let now = Utc::now();
    let mut plans = plan_cluster(owner, registries, &issued, &cluster, &HashMap::new(), now);
    // Only the namespaces where a foreign Secret blocks are planned again, with it known.
    let foreign = find_foreign(client, owner, &plans).await?;
    for planned in &mut plans {
        let name = planned
            .namespace
            .metadata
            .name
            .as_deref()
            .unwrap_or_default();
        if let Some(blocked) = foreign.get(name) {
            let observed = Observed {
                namespace: planned.namespace,
                secrets: planned.secrets.clone(),
                service_accounts: planned.accounts.clone(),
                foreign: blocked,
                now,
            };
            planned.plan = plan::plan_namespace(owner, registries, &issued, &observed);
            planned.foreign.clone_from(blocked);
        }
    }
    Ok(report::build(
        owner, registries, &planned, fetched, &plans, now,
    ))
}

#[cfg(test)]
mod tests;
