//! `pullkeeper diagnose`: why a Pod cannot pull, and the fix. For each container of a Pod that
//! waits to pull (or every container of a Pod named on the command line that does not run), a
//! pure function of the config, the Pod, its namespace, its ServiceAccount, the Secrets of that
//! name, the Pod's Events and `now` names one cause. The I/O around it only reads (get and list);
//! Secret values are parsed for their `auths` hosts and never shown. Given the kubelet
//! credential provider's invocation log, the diagnosis also says which route supplied the
//! credential, or which should have ([`plugin`]).

mod plugin;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{
    Event, LocalObjectReference, Namespace, Pod, Secret, ServiceAccount,
};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use serde::Serialize;

use crate::config::Registry;
use crate::ownership::{EXPIRES_ANNOTATION, Owner};
use crate::plan::{self, NamespaceState};
use crate::recover::{PULL_REASONS, image_host};
use crate::render::DATA_KEY;
use plugin::PluginRoute;
pub use plugin::{PluginCall, read_log};

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
    /// The kubelet asked pullkeeper's credential provider, and no registry file on the node
    /// serves the host.
    ProviderNoMatch,
    /// pullkeeper's credential provider failed for the host (its invocation log says how).
    ProviderFailed,
    /// Everything pullkeeper controls is in place; the kubelet's message says the rest.
    Other,
}

/// A way a credential reaches the kubelet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Route {
    /// pullkeeper's Secret holding the host, listed by the Pod (from its ServiceAccount).
    Secret,
    /// pullkeeper's kubelet credential provider answered for the host.
    CredentialProvider,
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
    /// The routes that supplied a credential for the host to this Pod (the credential
    /// provider's only when its invocation log was read).
    pub routes: Vec<Route>,
    /// When no route supplied one: why the credential provider route did not either.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential_provider: Option<String>,
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
    /// The credential provider's calls on the Pod's node, oldest first (`None`: not read).
    pub plugin: Option<&'a [PluginCall]>,
}

/// A registry whose refreshes fail, from pullkeeper's `RotationFailed` Events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failing {
    /// The earliest such Event still kept (the API server keeps Events about an hour).
    pub since: String,
    /// What the newest one said (the error chain; never credential material).
    pub last: String,
}

fn to_utc(t: &k8s_openapi::jiff::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.as_second(), t.subsec_nanosecond().try_into().unwrap_or(0))
}

/// When an Event was first and last seen: its time, and the last repeat of its series.
fn event_times(e: &Event) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let first = e
        .event_time
        .as_ref()
        .map(|t| t.0)
        .or(e.first_timestamp.as_ref().map(|t| t.0))
        .or(e.last_timestamp.as_ref().map(|t| t.0))?;
    let last = e
        .series
        .as_ref()
        .and_then(|s| s.last_observed_time.as_ref())
        .map(|t| t.0)
        .or(e.last_timestamp.as_ref().map(|t| t.0))
        .filter(|l| *l > first)
        .unwrap_or(first);
    Some((to_utc(&first)?, to_utc(&last)?))
}

/// Groups pullkeeper's `RotationFailed` Events (`registry NAME: error`, once also with
/// `; retrying in Ns`) by registry: since the earliest, with the error of the one seen last.
pub fn failing_registries(events: &[Event]) -> BTreeMap<String, Failing> {
    let mut timed: Vec<(DateTime<Utc>, DateTime<Utc>, &str, &str)> = events
        .iter()
        .filter(|e| e.reason.as_deref() == Some("RotationFailed"))
        .filter_map(|e| {
            let (first, last) = event_times(e)?;
            let message = e.message.as_deref()?;
            let (name, rest) = message.strip_prefix("registry ")?.split_once(": ")?;
            Some((first, last, name, rest))
        })
        .collect();
    timed.sort_by_key(|(_, last, _, _)| *last);
    let mut out: BTreeMap<String, Failing> = BTreeMap::new();
    for (first, _, name, rest) in timed {
        let last = rest
            .rsplit_once("; retrying in")
            .map_or(rest, |(e, _)| e)
            .to_string();
        let since = first.to_rfc3339();
        out.entry(name.to_string())
            .and_modify(|f| {
                f.last.clone_from(&last);
                if since < f.since {
                    f.since.clone_from(&since);
                }
            })
            .or_insert(Failing { since, last });
    }
    out
}

/// Why `reg`'s Secret does not belong in namespace `ns`, or `None` when it does: the daemon's
/// own rule ([`plan::scope`]), in words.
pub fn out_of_scope(reg: &Registry, ns: &Namespace) -> Option<String> {
    let state = NamespaceState::of(ns);
    plan::scope(reg, &state)
        .err()
        .map(|why| why.describe(&state.name, &reg.namespaces))
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
    let pod_refs = names(spec.and_then(|s| s.image_pull_secrets.as_ref()));
    let sa_refs = names(
        view.service_account
            .and_then(|sa| sa.image_pull_secrets.as_ref()),
    );
    let created = view
        .pod
        .metadata
        .creation_timestamp
        .as_ref()
        .and_then(|t| to_utc(&t.0));
    containers(view.pod, all)
        .into_iter()
        .map(|(container, image, waiting)| {
            let host = image_host(&image).to_string();
            let kubelet = kubelet_failure(view.events, &image).map(String::from);
            let pull = Pull {
                host: &host,
                sa_name: &sa_name,
                pod_refs: &pod_refs,
                sa_refs: &sa_refs,
                not_found: kubelet
                    .as_deref()
                    .is_some_and(|m| mentions(m, &["not found", "manifest unknown", "404"])),
                refused: kubelet.as_deref().is_some_and(|m| {
                    mentions(m, &["401", "403", "unauthorized", "denied", "forbidden"])
                }),
            };
            let registry = serving_registry(registries, view, &host);
            let secret = registry
                .and_then(|r| view.secrets.get(&r.secret_name))
                .cloned()
                .unwrap_or_default();
            // The Secret route supplies the host when the Pod lists pullkeeper's Secret
            // holding it; the plugin's answer is the kubelet's other source.
            let secret_serves = registry.is_some_and(|r| {
                secret.managed && secret.hosts.contains(&host) && pod_refs.contains(&r.secret_name)
            });
            let plugin_route = plugin::route(view.plugin, &host, created, now);
            let mut routes = Vec::new();
            if secret_serves {
                routes.push(Route::Secret);
            }
            if matches!(plugin_route, PluginRoute::Answered(c) if c.outcome == "served") {
                routes.push(Route::CredentialProvider);
            }
            let verdict = match (plugin_route, registry) {
                (PluginRoute::Answered(call), _) if !secret_serves => {
                    plugin::verdict_for(call, &pull)
                }
                (_, None) => unmanaged(registries, &pull),
                (_, Some(reg)) => scope_verdict(reg, view, &pull)
                    .or_else(|| secret_verdict(reg, view, &secret, &pull))
                    .or_else(|| reference_verdict(reg, &pull))
                    .unwrap_or_else(|| pull_verdict(reg, &secret, &pull, now)),
            };
            let credential_provider = match plugin_route {
                PluginRoute::NotAsked { latest } if !secret_serves => {
                    Some(plugin::not_asked_note(&host, latest))
                }
                _ => None,
            };
            Finding {
                container,
                image,
                host: host.clone(),
                waiting,
                cause: verdict.cause,
                message: verdict.message,
                fix: verdict.fix,
                registry: registry.map(|r| r.name.clone()),
                secret: registry.map(|r| r.secret_name.clone()),
                // Empty when no registry serves the host (the default view).
                secret_hosts: secret.hosts.clone(),
                expires_at: secret.expires_at.map(|t| t.to_rfc3339()),
                kubelet,
                routes,
                credential_provider,
            }
        })
        .collect()
}

/// The names of a list of references.
fn names(refs: Option<&Vec<LocalObjectReference>>) -> BTreeSet<String> {
    refs.into_iter().flatten().map(|r| r.name.clone()).collect()
}

/// What the rules know about one container's pull.
struct Pull<'a> {
    host: &'a str,
    /// The ServiceAccount the Pod runs as.
    sa_name: &'a str,
    /// The Secrets the Pod itself lists.
    pod_refs: &'a BTreeSet<String>,
    /// The Secrets its ServiceAccount lists.
    sa_refs: &'a BTreeSet<String>,
    /// The kubelet said the image or tag does not exist.
    not_found: bool,
    /// The kubelet said the registry refused the credential.
    refused: bool,
}

/// One cause, what it means here and the fix.
struct Verdict {
    cause: Cause,
    message: String,
    fix: String,
}

fn verdict(cause: Cause, message: impl Into<String>, fix: impl Into<String>) -> Verdict {
    Verdict {
        cause,
        message: message.into(),
        fix: fix.into(),
    }
}

/// The registry `run` acts on for this host here. A registry serves the host when its file
/// lists it, or when its Secret here holds it (hosts a provider names itself, such as ECR's).
/// Of those, the one whose scope takes this namespace is the one `run` acts on (several files
/// may serve one host for different namespaces); only when none does is the first one's scope
/// the cause.
fn serving_registry<'r>(
    registries: &'r [Arc<Registry>],
    view: &PodView<'_>,
    host: &str,
) -> Option<&'r Arc<Registry>> {
    let serving: Vec<&Arc<Registry>> = registries
        .iter()
        .filter(|r| {
            r.servers.iter().any(|s| s == host)
                || view
                    .secrets
                    .get(&r.secret_name)
                    .is_some_and(|s| s.managed && s.hosts.iter().any(|h| h == host))
        })
        .collect();
    serving
        .iter()
        .find(|r| out_of_scope(r, view.namespace).is_none())
        .or(serving.first())
        .copied()
}

/// No registry file serves the host.
fn unmanaged(registries: &[Arc<Registry>], pull: &Pull<'_>) -> Verdict {
    let host = pull.host;
    if pull.not_found {
        return verdict(
            Cause::ImageNotFound,
            format!("the registry {host} has no such image or tag"),
            "check the image name and tag; this is not a credential problem",
        );
    }
    let served: BTreeSet<&str> = registries
        .iter()
        .flat_map(|r| r.servers.iter().map(String::as_str))
        .collect();
    verdict(
        Cause::UnmanagedRegistry,
        format!(
            "registry {host} is not managed by pullkeeper (its registry files serve: {})",
            served.into_iter().collect::<Vec<_>>().join(", ")
        ),
        "add a registry file for this host, or check the image's registry name",
    )
}

/// The registry's scope leaves out the namespace or the Pod's ServiceAccount.
fn scope_verdict(reg: &Registry, view: &PodView<'_>, pull: &Pull<'_>) -> Option<Verdict> {
    let ns_name = view.namespace.name_any();
    let (name, file, secret_name) = (&reg.name, reg.file.display(), &reg.secret_name);
    if let Some(why) = out_of_scope(reg, view.namespace) {
        return Some(verdict(
            Cause::NamespaceOutOfScope,
            format!("registry {name} does not target namespace {ns_name}: {why}"),
            format!("widen namespaces in {file} if this namespace should get Secret {secret_name}"),
        ));
    }
    let sa_name = pull.sa_name;
    (!reg.service_accounts.matches(sa_name)).then(|| {
        verdict(
            Cause::ServiceAccountNotTargeted,
            format!(
                "registry {name} does not target ServiceAccount {sa_name}, which the Pod runs as"
            ),
            format!(
                "add {sa_name} to serviceAccounts in {file}, or run the Pod as a targeted ServiceAccount"
            ),
        )
    })
}

/// The Secret here is another's, missing, or lacks the host.
fn secret_verdict(
    reg: &Registry,
    view: &PodView<'_>,
    secret: &SecretView,
    pull: &Pull<'_>,
) -> Option<Verdict> {
    let ns_name = view.namespace.name_any();
    let (name, secret_name, host) = (&reg.name, &reg.secret_name, pull.host);
    if secret.exists && !secret.managed {
        return Some(verdict(
            Cause::ForeignSecret,
            format!(
                "Secret {ns_name}/{secret_name} exists and is not pullkeeper's, so pullkeeper leaves it alone"
            ),
            format!(
                "delete or rename that Secret (pullkeeper then writes its own), or give registry {name} another secretName"
            ),
        ));
    }
    if !secret.exists {
        return Some(match view.failing.get(name) {
            Some(failing) => verdict(
                Cause::SecretMissing,
                format!(
                    "Secret {ns_name}/{secret_name} does not exist: registry {name} has been failing since {}: {}",
                    failing.since, failing.last
                ),
                format!(
                    "fix what registry {name}'s refresh reports (pullkeeper_refresh_failures_total by category); the Secret is written at the next successful refresh"
                ),
            ),
            None => verdict(
                Cause::SecretMissing,
                format!(
                    "Secret {ns_name}/{secret_name} does not exist: pullkeeper has not written it here"
                ),
                format!(
                    "check that pullkeeper runs and that registry {name} refreshes (pullkeeper_refresh_failures_total, its RotationFailed Events)"
                ),
            ),
        });
    }
    (!secret.hosts.iter().any(|h| h == host)).then(|| {
        verdict(
            Cause::NoAuthsEntry,
            format!(
                "Secret {ns_name}/{secret_name} has no auths entry for {host} (it has: {})",
                secret.hosts.join(", ")
            ),
            format!("list {host} in servers of {}", reg.file.display()),
        )
    })
}

/// Neither the Pod nor its ServiceAccount, or only the ServiceAccount, lists the Secret.
fn reference_verdict(reg: &Registry, pull: &Pull<'_>) -> Option<Verdict> {
    let (secret_name, sa_name) = (&reg.secret_name, pull.sa_name);
    if pull.pod_refs.contains(secret_name) {
        return None;
    }
    Some(if pull.sa_refs.contains(secret_name) {
        verdict(
            Cause::CreatedBeforeServiceAccount,
            format!(
                "the Pod was created before ServiceAccount {sa_name} listed Secret {secret_name}; admission copies imagePullSecrets only at creation"
            ),
            "delete the Pod so its controller recreates it (or run pullkeeper with --pod-recovery on)",
        )
    } else {
        verdict(
            Cause::ServiceAccountLacksSecret,
            format!("neither the Pod nor ServiceAccount {sa_name} lists Secret {secret_name}"),
            "wait for pullkeeper to patch the ServiceAccount (check its logs), then recreate the Pod",
        )
    })
}

/// Everything pullkeeper controls is in place: what the registry answered.
fn pull_verdict(
    reg: &Registry,
    secret: &SecretView,
    pull: &Pull<'_>,
    now: DateTime<Utc>,
) -> Verdict {
    let (host, secret_name) = (pull.host, &reg.secret_name);
    if pull.not_found {
        return verdict(
            Cause::ImageNotFound,
            format!("registry {host} has no such image or tag"),
            "check the image name and tag; the credential is in place, this is not a credential problem",
        );
    }
    if !pull.refused {
        return verdict(
            Cause::Other,
            format!(
                "the Pod references Secret {secret_name}, which holds {host}; nothing pullkeeper controls is missing"
            ),
            "read the kubelet's message below",
        );
    }
    // The annotation holds the expiry the provider stated when this content was written (it is
    // rewritten only with new content); the live expiry of a credential re-issued unchanged is
    // the daemon's gauge.
    let expired = secret.expires_at.is_some_and(|t| t <= now);
    let when = secret
        .expires_at
        .map(|t| {
            format!(
                " (issued with an expiry of {}, the Secret's {EXPIRES_ANNOTATION})",
                t.to_rfc3339()
            )
        })
        .unwrap_or_default();
    verdict(
        Cause::CredentialRefused,
        if expired {
            format!(
                "registry {host} refused the credential in Secret {secret_name}: the expiry stated when it was written has passed{when}"
            )
        } else {
            format!("registry {host} refused the credential in Secret {secret_name}{when}")
        },
        format!(
            "check registry {}'s refreshes (pullkeeper_refresh_failures_total; the credential's current expiry is pullkeeper_credential_expiry_timestamp_seconds) and the provider's account; the kubelet retries with the Secret as it is updated",
            reg.name
        ),
    )
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
                if !f.routes.is_empty() {
                    let routes: Vec<&str> = f
                        .routes
                        .iter()
                        .map(|r| match r {
                            Route::Secret => "Secret (imagePullSecrets)",
                            Route::CredentialProvider => "kubelet credential provider",
                        })
                        .collect();
                    let _ = writeln!(out, "  route: {}", routes.join(" and "));
                }
                if let Some(note) = &f.credential_provider {
                    let _ = writeln!(out, "  credential provider: {note}");
                }
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

/// Why `diagnose` could not read what it needs: one line each.
#[derive(Debug, thiserror::Error)]
pub enum DiagnoseError {
    #[error("pod {namespace}/{name} not found")]
    PodNotFound { namespace: String, name: String },
    /// The API server's own message only (the client's error would print its whole status
    /// object, the message three times).
    #[error("cannot read {what}: {}", api_message(error))]
    Read { what: String, error: kube::Error },
}

impl DiagnoseError {
    pub fn category(&self) -> &'static str {
        match self {
            Self::PodNotFound { .. } => "not_found",
            Self::Read { error, .. } => match error {
                kube::Error::Api(s) if s.code == 403 => "forbidden",
                kube::Error::Api(s) if s.code == 404 => "not_found",
                kube::Error::Api(_) => "rejected",
                _ => "unreachable",
            },
        }
    }
}

/// The API server's message for a refused request (with its code), or the client's error
/// chain for anything else.
fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if !s.message.is_empty() => format!("{} ({})", s.message, s.code),
        kube::Error::Api(s) => format!("HTTP {}", s.code),
        other => crate::refresh::error_chain(other),
    }
}

fn read(what: String) -> impl FnOnce(kube::Error) -> DiagnoseError {
    move |error| DiagnoseError::Read { what, error }
}

/// The Pods a diagnosis looks at, and whether every one of them is reported (one named Pod) or
/// only those waiting for an image.
async fn target_pods(client: &Client, target: &Target) -> Result<(Vec<Pod>, bool), DiagnoseError> {
    Ok(match target {
        Target::Pod { namespace, name } => {
            let pod = Api::<Pod>::namespaced(client.clone(), namespace)
                .get_opt(name)
                .await
                .map_err(read(format!("pod {namespace}/{name}")))?
                .ok_or_else(|| DiagnoseError::PodNotFound {
                    namespace: namespace.clone(),
                    name: name.clone(),
                })?;
            (vec![pod], true)
        }
        Target::Namespace(ns) => (
            Api::<Pod>::namespaced(client.clone(), ns)
                .list(&ListParams::default())
                .await
                .map_err(read(format!("pods in namespace {ns}")))?
                .items,
            false,
        ),
        Target::All => (
            Api::<Pod>::all(client.clone())
                .list(&ListParams::default().fields("status.phase=Pending"))
                .await
                .map_err(read("pending pods".into()))?
                .items,
            false,
        ),
    })
}

/// Reads what the diagnosis needs, read-only: the Pods, their namespaces, ServiceAccounts,
/// the Secrets of the registries' names, and the Pods' Events. `plugin`: the credential
/// provider's calls, when its invocation log was given.
pub async fn diagnose(
    client: &Client,
    owner: &Owner,
    registries: &[Arc<Registry>],
    plugin: Option<&[PluginCall]>,
    target: &Target,
    now: DateTime<Utc>,
) -> Result<Report, DiagnoseError> {
    let (pods, all) = target_pods(client, target).await?;
    let secret_names: BTreeSet<&str> = registries.iter().map(|r| r.secret_name.as_str()).collect();
    // pullkeeper's failed rotations, wherever its Pod runs.
    let failing = failing_registries(
        &Api::<Event>::all(client.clone())
            .list(&ListParams::default().fields("reason=RotationFailed"))
            .await
            .map_err(read("pullkeeper's RotationFailed events".into()))?
            .items,
    );
    let mut reports = Vec::new();
    for pod in &pods {
        if !all && containers(pod, false).is_empty() {
            continue;
        }
        let ns = pod.namespace().unwrap_or_default();
        let namespace = Api::<Namespace>::all(client.clone())
            .get(&ns)
            .await
            .map_err(read(format!("namespace {ns}")))?;
        let sa_name = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into());
        let service_account = Api::<ServiceAccount>::namespaced(client.clone(), &ns)
            .get_opt(&sa_name)
            .await
            .map_err(read(format!("serviceaccount {ns}/{sa_name}")))?;
        let secrets_api = Api::<Secret>::namespaced(client.clone(), &ns);
        let mut secrets = BTreeMap::new();
        for name in &secret_names {
            if let Some(s) = secrets_api
                .get_opt(name)
                .await
                .map_err(read(format!("secret {ns}/{name}")))?
            {
                secrets.insert((*name).to_string(), SecretView::of(&s, owner));
            }
        }
        let uid = pod.uid().unwrap_or_default();
        let mut events = Api::<Event>::namespaced(client.clone(), &ns)
            .list(&ListParams::default().fields(&format!("involvedObject.uid={uid}")))
            .await
            .map_err(read(format!("events of pod {ns}/{}", pod.name_any())))?
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
            plugin,
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

    use crate::config::LabelSelector;
    use crate::ownership::OPT_OUT_ANNOTATION;

    fn ns(name: &str, labels: &[(&str, &str)], opted_out: bool) -> Namespace {
        let mut ns = crate::testing::namespace(name, labels);
        ns.metadata.annotations = opted_out
            .then(|| BTreeMap::from([(OPT_OUT_ANNOTATION.to_string(), "true".to_string())]));
        ns
    }

    fn scoped(include: &[&str], exclude: &[&str], selector: &str) -> Registry {
        crate::testing::registry("harbor", |r| {
            r.namespaces.include = include.iter().map(|s| (*s).to_string()).collect();
            r.namespaces.exclude = exclude.iter().map(|s| (*s).to_string()).collect();
            r.namespaces.selector = selector.parse::<LabelSelector>().expect("selector");
        })
    }

    #[test]
    fn out_of_scope_names_the_rule_that_leaves_a_namespace_out() {
        let r = scoped(&["team-*", "kube-public"], &["team-sandbox"], "tier=prod");
        let prod = [("tier", "prod")];
        assert_eq!(out_of_scope(&r, &ns("team-a", &prod, false)), None);
        assert_eq!(out_of_scope(&r, &ns("kube-public", &prod, false)), None);
        let why = |n: Namespace| out_of_scope(&r, &n).expect("out of scope");
        assert!(why(ns("team-a", &prod, true)).contains("opted out"));
        assert!(why(ns("kube-system", &prod, false)).contains("named exactly"));
        assert!(why(ns("other", &prod, false)).contains("namespaces.include"));
        assert!(why(ns("team-sandbox", &prod, false)).contains("\"team-sandbox\""));
        assert!(why(ns("team-a", &[], false)).contains("namespaces.selector"));
        let mut terminating = ns("team-a", &prod, false);
        terminating.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).expect("time"),
            ));
        assert!(why(terminating).contains("being deleted"));
    }

    /// diagnose and the daemon read one rule: for every namespace, diagnose finds a cause of
    /// scope exactly when the daemon's planner leaves the registry out.
    #[test]
    fn diagnose_and_the_daemon_agree_on_scope() {
        let r = Arc::new(scoped(
            &["*", "kube-public"],
            &["team-excluded"],
            "tier=prod",
        ));
        let prod = [("tier", "prod")];
        let mut terminating = ns("team-terminating", &prod, false);
        terminating.status = Some(k8s_openapi::api::core::v1::NamespaceStatus {
            phase: Some("Terminating".into()),
            ..Default::default()
        });
        let cases = [
            (ns("team-in", &prod, false), true),
            (terminating, false),
            (ns("team-excluded", &prod, false), false),
            (ns("team-unlabelled", &[], false), false),
            (ns("kube-system", &prod, false), false),
            (ns("kube-public", &prod, false), true),
            (ns("team-opted-out", &prod, true), false),
        ];
        for (namespace, in_scope) in cases {
            let state = NamespaceState::of(&namespace);
            let daemon = !plan::registries_in_scope(std::slice::from_ref(&r), &state).is_empty();
            let diagnosed = out_of_scope(&r, &namespace).is_none();
            assert_eq!(daemon, in_scope, "the daemon on {}", state.name);
            assert_eq!(diagnosed, in_scope, "diagnose on {}", state.name);
        }
    }

    /// Two registry files serve one host for different namespaces: each namespace is
    /// diagnosed against the file whose scope takes it.
    #[test]
    fn two_files_for_one_host_each_diagnose_their_own_namespace() {
        let team1 = Arc::new(crate::testing::registry("aa-team1", |r| {
            r.namespaces.include = vec!["team1".into()];
        }));
        let team2 = Arc::new(crate::testing::registry("bb-team2", |r| {
            r.namespaces.include = vec!["team2".into()];
        }));
        let registries = [team1, team2];
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "app", "namespace": "team2", "uid": "u"},
            "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]},
            "status": {"containerStatuses": [{"name": "app", "image": "registry.example/app:1",
                "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ImagePullBackOff"}}}]}
        }))
        .expect("pod");
        let secrets = BTreeMap::new();
        let failing = BTreeMap::new();
        let diagnose_in = |namespace: &str| {
            let namespace = ns(namespace, &[], false);
            let view = PodView {
                pod: &pod,
                namespace: &namespace,
                service_account: None,
                secrets: &secrets,
                events: &[],
                failing: &failing,
                plugin: None,
            };
            diagnose_pod(&registries, &view, true, Utc::now()).remove(0)
        };
        let f = diagnose_in("team2");
        assert_eq!(f.registry.as_deref(), Some("bb-team2"));
        assert_eq!(f.cause, Cause::SecretMissing, "{}", f.message);
        let f = diagnose_in("team1");
        assert_eq!(f.registry.as_deref(), Some("aa-team1"));
        assert_eq!(f.cause, Cause::SecretMissing, "{}", f.message);
        let f = diagnose_in("team3");
        assert_eq!(f.cause, Cause::NamespaceOutOfScope, "{}", f.message);
    }

    /// A Pod with no `imagePullSecrets` pulls through the kubelet's credential provider: the
    /// invocation log says whether the plugin served it (then a 401 is the registry refusing
    /// the plugin's credential, not a missing Secret), failed, matched no file, or was never
    /// asked (then the Secret-route cause stands and the note says why the plugin did not
    /// serve either).
    #[test]
    fn the_credential_provider_route_is_named_from_its_invocation_log() {
        let registries = [Arc::new(crate::testing::registry("harbor", |r| {
            r.servers = vec!["h.test".into()];
        }))];
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "app", "namespace": "team", "uid": "u",
                "creationTimestamp": "2026-12-06T09:58:00Z"},
            "spec": {"containers": [{"name": "app", "image": "h.test/app:1"}]},
            "status": {"containerStatuses": [{"name": "app", "image": "h.test/app:1",
                "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ErrImagePull"}}}]}
        }))
        .expect("pod");
        let failed: Event = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "app.1", "namespace": "team"},
            "involvedObject": {"kind": "Pod", "name": "app", "uid": "u"},
            "reason": "Failed",
            "message": "Failed to pull image \"h.test/app:1\": failed to authorize: 401 Unauthorized",
        }))
        .expect("event");
        let now = DateTime::parse_from_rfc3339("2026-12-06T10:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let line = |at: &str, outcome: &str| {
            format!(
                r#"{{"time":"{at}","imageHost":"h.test","registry":"harbor","provider":"static","outcome":"{outcome}","loginServer":null,"cacheDurationSeconds":60,"elapsedMs":1}}"#
            )
        };
        let namespace = ns("team", &[], false);
        let secrets = BTreeMap::new();
        let failing = BTreeMap::new();
        let diagnose_with = |log: Option<&str>| {
            let calls = log.map(read_log);
            let view = PodView {
                pod: &pod,
                namespace: &namespace,
                service_account: None,
                secrets: &secrets,
                events: std::slice::from_ref(&failed),
                failing: &failing,
                plugin: calls.as_deref(),
            };
            diagnose_pod(&registries, &view, true, now).remove(0)
        };

        let f = diagnose_with(Some(&line("2026-12-06T09:58:01.500Z", "served")));
        assert_eq!(f.cause, Cause::CredentialRefused, "{}", f.message);
        assert_eq!(f.routes, vec![Route::CredentialProvider]);
        assert!(
            f.message
                .contains("credential provider served at 2026-12-06T09:58:01Z")
                && f.message.contains("registry harbor, provider static"),
            "{}",
            f.message
        );
        assert!(f.fix.contains("60 s"), "{}", f.fix);

        let f = diagnose_with(Some(&line("2026-12-06T09:58:01Z", "timeout")));
        assert_eq!(f.cause, Cause::ProviderFailed, "{}", f.message);
        assert!(f.routes.is_empty());
        assert!(f.message.contains(": timeout"), "{}", f.message);

        let f = diagnose_with(Some(&line("2026-12-06T09:58:01Z", "no_match")));
        assert_eq!(f.cause, Cause::ProviderNoMatch, "{}", f.message);

        // Asked long before the Pod, cached 60 s: not this Pod's answer.
        let f = diagnose_with(Some(&line("2026-12-06T09:00:00Z", "served")));
        assert_eq!(f.cause, Cause::SecretMissing, "{}", f.message);
        let note = f.credential_provider.expect("a note on the plugin route");
        assert!(
            note.contains("has not asked")
                && note.contains("09:00:00Z")
                && note.contains("matchImages"),
            "{note}"
        );
        let text = Report {
            api_version: "v",
            kind: "Diagnosis",
            pods: vec![PodReport {
                namespace: "team".into(),
                name: "app".into(),
                uid: "u".into(),
                images: vec![diagnose_with(Some(""))],
            }],
        }
        .to_text();
        assert!(
            text.contains("  credential provider: the kubelet has not asked pullkeeper's credential provider for h.test for this Pod (no call for it in the invocation log)"),
            "{text}"
        );

        // Without the log, the plugin route is not looked at.
        let f = diagnose_with(None);
        assert_eq!(f.cause, Cause::SecretMissing, "{}", f.message);
        assert!(f.credential_provider.is_none() && f.routes.is_empty());
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
        // An error repeated as a series until minute 5 is harbor's newest, though first seen
        // before the 503.
        let mut repeated = event(0, "registry harbor: fetching failed: HTTP 500");
        repeated.series = Some(k8s_openapi::api::core::v1::EventSeries {
            count: Some(4),
            last_observed_time: Some(MicroTime(
                k8s_openapi::jiff::Timestamp::from_second(1_800_000_000 + 5 * 60).expect("time"),
            )),
        });
        let with_series = failing_registries(&[events[0].clone(), repeated]);
        assert_eq!(with_series["harbor"].last, "fetching failed: HTTP 500");
        assert!(
            with_series["harbor"]
                .since
                .starts_with("2027-01-15T08:00:00"),
            "{}",
            with_series["harbor"].since
        );
        assert_eq!(f["harbor"].last, "fetching failed: HTTP 503");
        assert!(
            f["harbor"].since.starts_with("2027-01-15T08:01:00"),
            "{}",
            f["harbor"].since
        );
        assert_eq!(f["ecr"].last, "unreachable");
    }

    #[test]
    fn a_read_the_api_server_refuses_is_one_line_with_its_message_once() {
        let message = "pods \"app\" is forbidden: User \"u\" cannot get resource \"pods\"";
        let mut status = kube::core::Status::failure(message, "Forbidden");
        status.code = 403;
        let e = read("pod team-a/app".into())(kube::Error::Api(Box::new(status)));
        let text = crate::refresh::error_chain(&e);
        assert_eq!(text, format!("cannot read pod team-a/app: {message} (403)"));
        assert_eq!(e.category(), "forbidden");
        let missing = DiagnoseError::PodNotFound {
            namespace: "team-a".into(),
            name: "app".into(),
        };
        assert_eq!(
            crate::refresh::error_chain(&missing),
            "pod team-a/app not found"
        );
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
