//! `pullkeeper diagnose`: why a Pod cannot pull, and the fix. For each container of a Pod that
//! waits to pull (or every container of a Pod named on the command line that does not run), a
//! pure function of the config, the Pod, its namespace, its ServiceAccount, the Secrets of that
//! name, the Pod's Events and `now` names one cause. The I/O around it only reads (get and list);
//! Secret values are parsed for their `auths` hosts and never shown.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{Event, Namespace, Pod, Secret, ServiceAccount};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use serde::Serialize;

use crate::config::{NamespaceTargets, Registry, glob_match};
use crate::ownership::{EXPIRES_ANNOTATION, OPT_OUT_ANNOTATION, Owner, SYSTEM_NAMESPACE_PREFIX};
use crate::recover::{PULL_REASONS, image_host};
use crate::render::DATA_KEY;

/// Why one image cannot be pulled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cause {
    /// No registry file serves the image's host.
    UnmanagedRegistry,
    /// The registry's namespace rules leave this namespace out.
    NamespaceOutOfScope,
    /// The registry does not target the Pod's ServiceAccount.
    ServiceAccountNotTargeted,
    /// A Secret of that name exists and is not pullkeeper's: it was left alone.
    ForeignSecret,
    /// pullkeeper has not written the Secret here.
    SecretMissing,
    /// The Secret has no `auths` entry for the image's host.
    NoAuthsEntry,
    /// The ServiceAccount does not list the Secret (yet).
    ServiceAccountLacksSecret,
    /// The Pod was created before its ServiceAccount listed the Secret.
    CreatedBeforeServiceAccount,
    /// The registry refused the credential (expired or wrong).
    CredentialRefused,
    /// The image or tag does not exist: not a credential problem.
    ImageNotFound,
    /// Everything pullkeeper controls is in place; the kubelet's message says the rest.
    Other,
}

/// One finding: a container's image, its cause and the fix.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    pub container: String,
    pub image: String,
    pub host: String,
    /// The kubelet's waiting reason, when the container waits.
    pub waiting: Option<String>,
    pub cause: Cause,
    pub message: String,
    pub fix: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// The `auths` hosts the Secret holds (names only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub secret_hosts: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// The kubelet's last `Failed` message for this image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubelet: Option<String>,
}

/// What diagnose reads about one Secret name in the Pod's namespace.
#[derive(Clone, Debug, Default)]
pub struct SecretView {
    pub exists: bool,
    pub managed: bool,
    pub hosts: Vec<String>,
    pub expires_at: Option<DateTime<Utc>>,
}

impl SecretView {
    /// Reads names, labels and the `auths` keys of a Secret; never its values.
    pub fn of(secret: &Secret, owner: &Owner) -> Self {
        let hosts = secret
            .data
            .as_ref()
            .and_then(|d| d.get(DATA_KEY))
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b.0).ok())
            .and_then(|doc| {
                doc.get("auths")
                    .and_then(|a| a.as_object())
                    .map(|a| a.keys().cloned().collect())
            })
            .unwrap_or_default();
        let expires_at = secret
            .annotations()
            .get(EXPIRES_ANNOTATION)
            .and_then(|v| DateTime::parse_from_rfc3339(v).ok())
            .map(|t| t.with_timezone(&Utc));
        Self {
            exists: true,
            managed: owner.owns(&secret.metadata),
            hosts,
            expires_at,
        }
    }
}

/// Everything one Pod's diagnosis reads.
pub struct PodView<'a> {
    pub pod: &'a Pod,
    pub namespace: &'a Namespace,
    pub service_account: Option<&'a ServiceAccount>,
    /// By Secret name: the Secrets the registries would write here.
    pub secrets: &'a BTreeMap<String, SecretView>,
    /// The Pod's own Events (by UID), oldest first.
    pub events: &'a [Event],
    /// By registry name: pullkeeper's `RotationFailed` Events about it (see [`Failing`]).
    pub failing: &'a BTreeMap<String, Failing>,
}

/// A registry whose refreshes fail, from pullkeeper's `RotationFailed` Events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failing {
    /// The earliest such Event still kept (the API server keeps Events about an hour).
    pub since: String,
    /// What the latest one said (the error chain; never credential material).
    pub last: String,
}

/// Groups pullkeeper's `RotationFailed` Events (`registry NAME: error; retrying in Ns`) by
/// registry, oldest first.
pub fn failing_registries(events: &[Event]) -> BTreeMap<String, Failing> {
    let mut timed: Vec<(DateTime<Utc>, &str, &str)> = events
        .iter()
        .filter(|e| e.reason.as_deref() == Some("RotationFailed"))
        .filter_map(|e| {
            let at = e
                .event_time
                .as_ref()
                .map(|t| t.0)
                .or(e.first_timestamp.as_ref().map(|t| t.0))
                .or(e.last_timestamp.as_ref().map(|t| t.0))?;
            let at = DateTime::from_timestamp(at.as_second(), 0)?;
            let message = e.message.as_deref()?;
            let (name, rest) = message.strip_prefix("registry ")?.split_once(": ")?;
            Some((at, name, rest))
        })
        .collect();
    timed.sort_by_key(|(at, _, _)| *at);
    let mut out: BTreeMap<String, Failing> = BTreeMap::new();
    for (at, name, rest) in timed {
        let last = rest
            .rsplit_once("; retrying in")
            .map_or(rest, |(e, _)| e)
            .to_string();
        out.entry(name.to_string())
            .and_modify(|f| f.last.clone_from(&last))
            .or_insert(Failing {
                since: at.to_rfc3339(),
                last,
            });
    }
    out
}

/// Why `targets` leaves namespace `name` out, or `None` when it is in scope.
pub fn out_of_scope(targets: &NamespaceTargets, ns: &Namespace) -> Option<String> {
    let name = ns.name_any();
    if ns
        .annotations()
        .get(OPT_OUT_ANNOTATION)
        .is_some_and(|v| v == "true")
    {
        return Some(format!(
            "namespace {name} opted out with {OPT_OUT_ANNOTATION}: \"true\""
        ));
    }
    let named = targets.include.iter().any(|p| p == &name);
    if name.starts_with(SYSTEM_NAMESPACE_PREFIX) && !named {
        return Some(format!(
            "{SYSTEM_NAMESPACE_PREFIX}* namespaces are in scope only when named exactly in namespaces.include"
        ));
    }
    if !targets.include.iter().any(|p| glob_match(p, &name)) {
        return Some(format!(
            "no namespaces.include pattern matches it (include: {:?})",
            targets.include
        ));
    }
    if let Some(p) = targets.exclude.iter().find(|p| glob_match(p, &name)) {
        return Some(format!("namespaces.exclude pattern {p:?} matches it"));
    }
    let empty = BTreeMap::new();
    let labels = ns.metadata.labels.as_ref().unwrap_or(&empty);
    if !targets.selector.matches(labels) {
        return Some("its labels do not satisfy namespaces.selector".into());
    }
    None
}

/// The kubelet's last `Failed` message naming `image`.
fn kubelet_failure<'e>(events: &'e [Event], image: &str) -> Option<&'e str> {
    events
        .iter()
        .rev()
        .filter(|e| e.reason.as_deref() == Some("Failed"))
        .filter_map(|e| e.message.as_deref())
        .find(|m| m.contains(image))
}

fn mentions(message: &str, words: &[&str]) -> bool {
    let m = message.to_ascii_lowercase();
    words.iter().any(|w| m.contains(w))
}

/// Containers to explain: those waiting to pull, or (`all`) every container that does not run.
fn containers(pod: &Pod, all: bool) -> Vec<(String, String, Option<String>)> {
    let spec_images: BTreeMap<String, String> = pod
        .spec
        .iter()
        .flat_map(|s| {
            s.init_containers
                .iter()
                .flatten()
                .chain(s.containers.iter())
        })
        .map(|c| (c.name.clone(), c.image.clone().unwrap_or_default()))
        .collect();
    let statuses: BTreeMap<String, Option<String>> = pod
        .status
        .iter()
        .flat_map(|s| {
            s.init_container_statuses
                .iter()
                .flatten()
                .chain(s.container_statuses.iter().flatten())
        })
        .map(|c| {
            let waiting = c
                .state
                .as_ref()
                .and_then(|st| st.waiting.as_ref())
                .and_then(|w| w.reason.clone());
            let running = c.state.as_ref().is_some_and(|st| st.running.is_some());
            (
                c.name.clone(),
                if running {
                    Some("Running".into())
                } else {
                    waiting
                },
            )
        })
        .collect();
    spec_images
        .into_iter()
        .filter_map(|(name, image)| {
            let state = statuses.get(&name).cloned().flatten();
            let pulling = state.as_deref().is_some_and(|w| PULL_REASONS.contains(&w));
            let keep = pulling || (all && state.as_deref() != Some("Running"));
            keep.then_some((name, image, state.filter(|s| s != "Running")))
        })
        .collect()
}

/// The findings for one Pod. `all` explains every container that does not run (a Pod named
/// on the command line), otherwise only those waiting to pull.
// Still to be split by cause (issue 18 item 4): one rule chain, read top to bottom today.
#[allow(clippy::too_many_lines)]
pub fn diagnose_pod(
    registries: &[Arc<Registry>],
    view: &PodView<'_>,
    all: bool,
    now: DateTime<Utc>,
) -> Vec<Finding> {
    let spec = view.pod.spec.as_ref();
    let sa_name = spec
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let pod_refs: BTreeSet<String> = spec
        .and_then(|s| s.image_pull_secrets.as_ref())
        .into_iter()
        .flatten()
        .map(|r| r.name.clone())
        .collect();
    let sa_refs: BTreeSet<String> = view
        .service_account
        .and_then(|sa| sa.image_pull_secrets.as_ref())
        .into_iter()
        .flatten()
        .map(|r| r.name.clone())
        .collect();
    let mut findings = Vec::new();
    for (container, image, waiting) in containers(view.pod, all) {
        let host = image_host(&image).to_string();
        let kubelet = kubelet_failure(view.events, &image).map(String::from);
        // A registry serves the host when its file lists it, or when its Secret here holds it
        // (hosts a provider names itself, such as ECR's).
        let registry = registries.iter().find(|r| {
            r.servers.iter().any(|s| s == &host)
                || view
                    .secrets
                    .get(&r.secret_name)
                    .is_some_and(|s| s.managed && s.hosts.iter().any(|h| h == &host))
        });
        let mut f = Finding {
            container,
            image,
            host: host.clone(),
            waiting,
            cause: Cause::Other,
            message: String::new(),
            fix: String::new(),
            registry: registry.map(|r| r.name.clone()),
            secret: registry.map(|r| r.secret_name.clone()),
            secret_hosts: Vec::new(),
            expires_at: None,
            kubelet: kubelet.clone(),
        };
        let not_found = kubelet
            .as_deref()
            .is_some_and(|m| mentions(m, &["not found", "manifest unknown", "404"]));
        let refused = kubelet
            .as_deref()
            .is_some_and(|m| mentions(m, &["401", "403", "unauthorized", "denied", "forbidden"]));
        let Some(reg) = registry else {
            let served: BTreeSet<&str> = registries
                .iter()
                .flat_map(|r| r.servers.iter().map(String::as_str))
                .collect();
            if not_found {
                set(
                    &mut f,
                    Cause::ImageNotFound,
                    format!("the registry {host} has no such image or tag"),
                    "check the image name and tag; this is not a credential problem",
                );
            } else {
                set(
                    &mut f,
                    Cause::UnmanagedRegistry,
                    format!(
                        "registry {host} is not managed by pullkeeper (its registry files serve: {})",
                        served.into_iter().collect::<Vec<_>>().join(", ")
                    ),
                    "add a registry file for this host, or check the image's registry name",
                );
            }
            findings.push(f);
            continue;
        };
        let ns_name = view.namespace.name_any();
        let secret_name = reg.secret_name.clone();
        let secret = view.secrets.get(&secret_name).cloned().unwrap_or_default();
        f.secret_hosts.clone_from(&secret.hosts);
        f.expires_at = secret.expires_at.map(|t| t.to_rfc3339());
        if let Some(why) = out_of_scope(&reg.namespaces, view.namespace) {
            set(
                &mut f,
                Cause::NamespaceOutOfScope,
                format!(
                    "registry {} does not target namespace {ns_name}: {why}",
                    reg.name
                ),
                format!(
                    "widen namespaces in {} if this namespace should get Secret {secret_name}",
                    reg.file.display()
                ),
            );
        } else if !reg.service_accounts.matches(&sa_name) {
            set(
                &mut f,
                Cause::ServiceAccountNotTargeted,
                format!(
                    "registry {} does not target ServiceAccount {sa_name}, which the Pod runs as",
                    reg.name
                ),
                format!(
                    "add {sa_name} to serviceAccounts in {}, or run the Pod as a targeted ServiceAccount",
                    reg.file.display()
                ),
            );
        } else if secret.exists && !secret.managed {
            set(
                &mut f,
                Cause::ForeignSecret,
                format!(
                    "Secret {ns_name}/{secret_name} exists and is not pullkeeper's, so pullkeeper leaves it alone"
                ),
                format!(
                    "delete or rename that Secret (pullkeeper then writes its own), or give registry {} another secretName",
                    reg.name
                ),
            );
        } else if !secret.exists {
            match view.failing.get(&reg.name) {
                Some(failing) => set(
                    &mut f,
                    Cause::SecretMissing,
                    format!(
                        "Secret {ns_name}/{secret_name} does not exist: registry {} has been failing since {}: {}",
                        reg.name, failing.since, failing.last
                    ),
                    format!(
                        "fix what registry {}'s refresh reports (pullkeeper_refresh_failures_total by category); the Secret is written at the next successful refresh",
                        reg.name
                    ),
                ),
                None => set(
                    &mut f,
                    Cause::SecretMissing,
                    format!(
                        "Secret {ns_name}/{secret_name} does not exist: pullkeeper has not written it here"
                    ),
                    format!(
                        "check that pullkeeper runs and that registry {} refreshes (pullkeeper_refresh_failures_total, its RotationFailed Events)",
                        reg.name
                    ),
                ),
            }
        } else if !secret.hosts.iter().any(|h| h == &host) {
            set(
                &mut f,
                Cause::NoAuthsEntry,
                format!(
                    "Secret {ns_name}/{secret_name} has no auths entry for {host} (it has: {})",
                    secret.hosts.join(", ")
                ),
                format!("list {host} in servers of {}", reg.file.display()),
            );
        } else if !pod_refs.contains(&secret_name) && !sa_refs.contains(&secret_name) {
            set(
                &mut f,
                Cause::ServiceAccountLacksSecret,
                format!("neither the Pod nor ServiceAccount {sa_name} lists Secret {secret_name}"),
                "wait for pullkeeper to patch the ServiceAccount (check its logs), then recreate the Pod",
            );
        } else if !pod_refs.contains(&secret_name) {
            set(
                &mut f,
                Cause::CreatedBeforeServiceAccount,
                format!(
                    "the Pod was created before ServiceAccount {sa_name} listed Secret {secret_name}; admission copies imagePullSecrets only at creation"
                ),
                "delete the Pod so its controller recreates it (or run pullkeeper with --pod-recovery on)",
            );
        } else if not_found {
            set(
                &mut f,
                Cause::ImageNotFound,
                format!("registry {host} has no such image or tag"),
                "check the image name and tag; the credential is in place, this is not a credential problem",
            );
        } else if refused {
            let expired = secret.expires_at.is_some_and(|t| t <= now);
            let when = secret
                .expires_at
                .map(|t| format!(" (the Secret says it expires at {})", t.to_rfc3339()))
                .unwrap_or_default();
            set(
                &mut f,
                Cause::CredentialRefused,
                if expired {
                    format!(
                        "registry {host} refused the credential in Secret {secret_name}: it expired{when}"
                    )
                } else {
                    format!("registry {host} refused the credential in Secret {secret_name}{when}")
                },
                format!(
                    "check registry {}'s refreshes (pullkeeper_refresh_failures_total) and the provider's account; the kubelet retries with the Secret as it is updated",
                    reg.name
                ),
            );
        } else {
            set(
                &mut f,
                Cause::Other,
                format!(
                    "the Pod references Secret {secret_name}, which holds {host}; nothing pullkeeper controls is missing"
                ),
                "read the kubelet's message below",
            );
        }
        findings.push(f);
    }
    findings
}

fn set(f: &mut Finding, cause: Cause, message: impl Into<String>, fix: impl Into<String>) {
    f.cause = cause;
    f.message = message.into();
    f.fix = fix.into();
}

/// Which Pods to diagnose.
pub enum Target {
    Pod {
        namespace: String,
        name: String,
    },
    Namespace(String),
    /// Every Pod that waits to pull, in every namespace.
    All,
}

/// One Pod's findings.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodReport {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub images: Vec<Finding>,
}

/// The whole answer.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub pods: Vec<PodReport>,
}

impl Report {
    /// Whether any cause was found.
    pub fn found(&self) -> bool {
        self.pods.iter().any(|p| !p.images.is_empty())
    }

    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string_pretty(self)
    }

    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for pod in &self.pods {
            if pod.images.is_empty() {
                let _ = writeln!(
                    out,
                    "Pod {}/{}: nothing keeps it from pulling",
                    pod.namespace, pod.name
                );
                continue;
            }
            for f in &pod.images {
                let waiting = f.waiting.as_deref().unwrap_or("not running");
                let _ = writeln!(
                    out,
                    "Pod {}/{} container {} ({waiting}) image {}",
                    pod.namespace, pod.name, f.container, f.image
                );
                let _ = writeln!(out, "  cause: {}", f.message);
                let _ = writeln!(out, "  fix:   {}", f.fix);
                if let Some(k) = &f.kubelet {
                    let _ = writeln!(out, "  kubelet: {k}");
                }
            }
        }
        if self.pods.is_empty() {
            out.push_str("no Pod waits to pull\n");
        }
        out
    }
}

/// Reads what the diagnosis needs, read-only: the Pods, their namespaces, ServiceAccounts,
/// the Secrets of the registries' names, and the Pods' Events.
pub async fn diagnose(
    client: &Client,
    owner: &Owner,
    registries: &[Arc<Registry>],
    target: &Target,
    now: DateTime<Utc>,
) -> Result<Report, kube::Error> {
    let (pods, all): (Vec<Pod>, bool) = match target {
        Target::Pod { namespace, name } => (
            vec![
                Api::<Pod>::namespaced(client.clone(), namespace)
                    .get(name)
                    .await?,
            ],
            true,
        ),
        Target::Namespace(ns) => (
            Api::<Pod>::namespaced(client.clone(), ns)
                .list(&ListParams::default())
                .await?
                .items,
            false,
        ),
        Target::All => (
            Api::<Pod>::all(client.clone())
                .list(&ListParams::default().fields("status.phase=Pending"))
                .await?
                .items,
            false,
        ),
    };
    let secret_names: BTreeSet<&str> = registries.iter().map(|r| r.secret_name.as_str()).collect();
    // pullkeeper's failed rotations, wherever its Pod runs.
    let failing = failing_registries(
        &Api::<Event>::all(client.clone())
            .list(&ListParams::default().fields("reason=RotationFailed"))
            .await?
            .items,
    );
    let mut reports = Vec::new();
    for pod in &pods {
        if !all && containers(pod, false).is_empty() {
            continue;
        }
        let ns = pod.namespace().unwrap_or_default();
        let namespace = Api::<Namespace>::all(client.clone()).get(&ns).await?;
        let sa_name = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into());
        let service_account = Api::<ServiceAccount>::namespaced(client.clone(), &ns)
            .get_opt(&sa_name)
            .await?;
        let secrets_api = Api::<Secret>::namespaced(client.clone(), &ns);
        let mut secrets = BTreeMap::new();
        for name in &secret_names {
            if let Some(s) = secrets_api.get_opt(name).await? {
                secrets.insert((*name).to_string(), SecretView::of(&s, owner));
            }
        }
        let uid = pod.uid().unwrap_or_default();
        let mut events = Api::<Event>::namespaced(client.clone(), &ns)
            .list(&ListParams::default().fields(&format!("involvedObject.uid={uid}")))
            .await?
            .items;
        events.sort_by_key(|e| {
            e.last_timestamp
                .as_ref()
                .map(|t| t.0)
                .or(e.event_time.as_ref().map(|t| t.0))
        });
        let view = PodView {
            pod,
            namespace: &namespace,
            service_account: service_account.as_ref(),
            secrets: &secrets,
            events: &events,
            failing: &failing,
        };
        reports.push(PodReport {
            namespace: ns,
            name: pod.name_any(),
            uid,
            images: diagnose_pod(registries, &view, all, now),
        });
    }
    Ok(Report {
        api_version: crate::ownership::REPORT_API_VERSION,
        kind: "Diagnosis",
        pods: reports,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use kube::api::ObjectMeta;

    use crate::config::LabelSelector;

    fn ns(name: &str, labels: &[(&str, &str)], opted_out: bool) -> Namespace {
        Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                        .collect(),
                ),
                annotations: opted_out.then(|| {
                    BTreeMap::from([(OPT_OUT_ANNOTATION.to_string(), "true".to_string())])
                }),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        }
    }

    fn targets(include: &[&str], exclude: &[&str], selector: &str) -> NamespaceTargets {
        NamespaceTargets {
            include: include.iter().map(|s| (*s).to_string()).collect(),
            exclude: exclude.iter().map(|s| (*s).to_string()).collect(),
            selector: selector.parse::<LabelSelector>().expect("selector"),
        }
    }

    #[test]
    fn out_of_scope_names_the_rule_that_leaves_a_namespace_out() {
        let t = targets(&["team-*", "kube-public"], &["team-sandbox"], "tier=prod");
        let prod = [("tier", "prod")];
        assert_eq!(out_of_scope(&t, &ns("team-a", &prod, false)), None);
        assert_eq!(out_of_scope(&t, &ns("kube-public", &prod, false)), None);
        let why = |n: Namespace| out_of_scope(&t, &n).expect("out of scope");
        assert!(why(ns("team-a", &prod, true)).contains("opted out"));
        assert!(why(ns("kube-system", &prod, false)).contains("named exactly"));
        assert!(why(ns("other", &prod, false)).contains("namespaces.include"));
        assert!(why(ns("team-sandbox", &prod, false)).contains("\"team-sandbox\""));
        assert!(why(ns("team-a", &[], false)).contains("namespaces.selector"));
    }

    fn event(minute: u32, message: &str) -> Event {
        let at = k8s_openapi::jiff::Timestamp::from_second(1_800_000_000 + i64::from(minute) * 60)
            .expect("time");
        Event {
            reason: Some("RotationFailed".into()),
            message: Some(message.into()),
            event_time: Some(MicroTime(at)),
            ..Event::default()
        }
    }

    #[test]
    fn rotation_failures_are_grouped_by_registry_with_the_first_time_and_the_last_error() {
        let events = [
            event(
                2,
                "registry harbor: fetching failed: HTTP 503; retrying in 20s",
            ),
            event(
                1,
                "registry harbor: fetching failed: HTTP 401; retrying in 10s",
            ),
            event(3, "registry ecr: unreachable; retrying in 5s"),
        ];
        let f = failing_registries(&events);
        assert_eq!(f.len(), 2);
        assert_eq!(f["harbor"].last, "fetching failed: HTTP 503");
        assert!(
            f["harbor"].since.starts_with("2027-01-15T08:01:00"),
            "{}",
            f["harbor"].since
        );
        assert_eq!(f["ecr"].last, "unreachable");
    }

    #[test]
    fn a_secret_view_holds_hosts_and_never_the_credential() {
        let body = br#"{"auths":{"r.example":{"username":"u","password":"canary-pw","auth":"dTpjYW5hcnktcHc="}}}"#;
        let secret = Secret {
            data: Some(BTreeMap::from([(
                DATA_KEY.to_string(),
                k8s_openapi::ByteString(body.to_vec()),
            )])),
            ..Secret::default()
        };
        let view = SecretView::of(&secret, &Owner::default());
        assert_eq!(view.hosts, ["r.example"]);
        assert!(!format!("{view:?}").contains("canary"));
    }
}
