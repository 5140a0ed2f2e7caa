//! Recovering Pods stuck before their credential existed: a pure verdict per Pod, and the
//! limits on how many may be deleted. The ServiceAccount admission plugin copies
//! `imagePullSecrets` into a Pod only at creation, so a Pod created before its ServiceAccount
//! listed the registry's Secret keeps failing to pull forever; deleting it lets its controller
//! create a new one that carries the reference. [`Memory::decide`] turns one round's stuck Pods
//! into decisions (what to count, whom to tell, what to delete) as values; `recovery` does the
//! watching, deleting and telling.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use k8s_openapi::api::core::v1::Pod;

use crate::config::Registry;
use crate::plan::{self, AccountState, Issued, NamespaceState};

/// The kubelet's waiting reasons of a container whose image cannot be pulled.
pub const PULL_REASONS: [&str; 2] = ["ErrImagePull", "ImagePullBackOff"];

/// Owner kinds whose controller recreates a deleted Pod.
pub const RECREATING_OWNERS: [&str; 4] = ["ReplicaSet", "StatefulSet", "DaemonSet", "Job"];

/// What to do about one Pod waiting for an image on a managed registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Delete it: its controller recreates it, and admission then copies the reference.
    Recover {
        owner_kind: String,
        owner_name: String,
        owner_uid: String,
    },
    /// It already names the Secret: the kubelet's next retry pulls once the Secret is right.
    HasReference,
    /// The namespace is not ready yet (no Secret, or the ServiceAccount does not list it): a
    /// recreated Pod would be stuck the same way.
    NotReady,
    /// No controller would recreate it (a bare Pod, or an owner kind that does not).
    CannotRecover { why: String },
}

/// One Pod waiting for an image on a managed registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stuck {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub registry: String,
    pub secret: String,
    pub image: String,
    /// The kubelet's waiting reason (`ErrImagePull`, `ImagePullBackOff`).
    pub reason: String,
    pub verdict: Verdict,
}

/// The registry host of an image reference, as the kubelet resolves it (`docker.io` when the
/// first component is not a host).
pub fn image_host(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first,
        _ => "docker.io",
    }
}

/// What the planner and the caches know about one namespace, for the verdicts.
pub struct NamespaceView<'a> {
    pub namespace: &'a NamespaceState,
    /// Names of pullkeeper's Secrets present in the namespace.
    pub secrets: &'a [String],
    pub service_accounts: &'a [Arc<AccountState>],
}

/// The registries (with their Secret) whose hosts serve `host`.
fn registry_for<'r>(
    registries: &[&'r Arc<Registry>],
    credentials: &HashMap<String, Arc<Issued>>,
    host: &str,
) -> Option<&'r Arc<Registry>> {
    registries.iter().copied().find(|r| {
        r.servers.iter().any(|s| s == host)
            || credentials
                .get(&r.name)
                .is_some_and(|c| c.rendered.servers.iter().any(|s| s == host))
    })
}

/// The Pod's containers (and init containers) waiting to pull, with their image and reason.
fn waiting_to_pull(pod: &Pod) -> Vec<(String, String)> {
    let Some(status) = &pod.status else {
        return Vec::new();
    };
    status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .filter_map(|c| {
            let reason = c.state.as_ref()?.waiting.as_ref()?.reason.as_deref()?;
            PULL_REASONS
                .contains(&reason)
                .then(|| (c.image.clone(), reason.to_string()))
        })
        .collect()
}

/// Every (Pod, image) in one namespace waiting for an image on a registry in scope, with a
/// verdict. Pure: the caller passes what the caches hold.
pub fn stuck_pods(
    registries: &[Arc<Registry>],
    credentials: &HashMap<String, Arc<Issued>>,
    view: &NamespaceView<'_>,
    pods: &[Arc<Pod>],
) -> Vec<Stuck> {
    let in_scope = plan::registries_in_scope(registries, view.namespace);
    let ns = view.namespace.name.clone();
    let mut found = Vec::new();
    for pod in pods {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let spec = pod.spec.as_ref();
        let sa_name = spec
            .and_then(|s| s.service_account_name.as_deref())
            .unwrap_or("default");
        for (image, reason) in waiting_to_pull(pod) {
            let Some(reg) = registry_for(&in_scope, credentials, image_host(&image)) else {
                continue;
            };
            let references = spec
                .and_then(|s| s.image_pull_secrets.as_ref())
                .is_some_and(|l| l.iter().any(|r| r.name == reg.secret_name));
            let verdict = if references {
                Verdict::HasReference
            } else if !reg.service_accounts.matches(sa_name)
                || !view.secrets.contains(&reg.secret_name)
                || !view
                    .service_accounts
                    .iter()
                    .any(|sa| sa.name == sa_name && sa.lists(&reg.secret_name))
            {
                Verdict::NotReady
            } else {
                controller_verdict(pod)
            };
            found.push(Stuck {
                namespace: ns.clone(),
                name: pod.metadata.name.clone().unwrap_or_default(),
                uid: pod.metadata.uid.clone().unwrap_or_default(),
                registry: reg.name.clone(),
                secret: reg.secret_name.clone(),
                image,
                reason,
                verdict,
            });
        }
    }
    found
}

fn controller_verdict(pod: &Pod) -> Verdict {
    let controller = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    match controller {
        None => Verdict::CannotRecover {
            why: "it has no controller that would recreate it; delete and recreate it yourself \
                  (new Pods get the reference from their ServiceAccount)"
                .into(),
        },
        Some(o) if RECREATING_OWNERS.contains(&o.kind.as_str()) => Verdict::Recover {
            owner_kind: o.kind.clone(),
            owner_name: o.name.clone(),
            owner_uid: o.uid.clone(),
        },
        Some(o) => Verdict::CannotRecover {
            why: format!(
                "its controller is a {} ({}), not one pullkeeper recreates Pods through; \
                 recreate it yourself",
                o.kind, o.name
            ),
        },
    }
}

/// How many recoveries are allowed, and how fast.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// Deletions per minute across all registries.
    pub per_minute: u32,
    /// Deletions per minute for one registry.
    pub per_registry_per_minute: u32,
    /// At most this share of one owner's stuck Pods is deleted in one round (at least one).
    /// By default all of them: a Pod waiting to pull has never started (recovery watches only
    /// `Pending` Pods), so it serves nothing and deleting it cannot lower availability. The
    /// rates above are what stop a runaway.
    pub max_share: f64,
}

/// The default [`Limits::max_share`]: every stuck Pod of an owner in one round.
pub const DEFAULT_MAX_SHARE: f64 = 1.0;

impl Default for Limits {
    fn default() -> Self {
        Self {
            per_minute: 20,
            per_registry_per_minute: 10,
            max_share: DEFAULT_MAX_SHARE,
        }
    }
}

/// What one round of recovery decided.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decisions {
    /// Pods waiting on a managed registry, by (registry, waiting reason): the gauge.
    pub counts: BTreeMap<(String, String), usize>,
    /// Pods that cannot recover by themselves, each told about once while it stays stuck.
    pub tell: Vec<Stuck>,
    /// Pods to delete now, within the limits.
    pub delete: Vec<Stuck>,
}

/// What recovery remembers from one round to the next: the deletions of the last minute (the
/// limits), the Pods already told about, and the Pods already deleted (a deleted Pod may show
/// as stuck until the watch delivers its deletion: it is not deleted or counted twice).
#[derive(Debug, Default)]
pub struct Memory {
    budget: Budget,
    told: HashSet<String>,
    deleted: HashSet<String>,
}

impl Memory {
    /// Decides one round from the stuck Pods found (see [`stuck_pods`]). With `act` false
    /// (observe mode, or not the leader) only the counts are decided.
    pub fn decide(
        &mut self,
        limits: &Limits,
        stuck: Vec<Stuck>,
        act: bool,
        now: DateTime<Utc>,
    ) -> Decisions {
        let mut decisions = Decisions::default();
        for s in &stuck {
            *decisions
                .counts
                .entry((s.registry.clone(), s.reason.clone()))
                .or_default() += 1;
        }
        if !act {
            return decisions;
        }
        let uids: HashSet<&str> = stuck.iter().map(|s| s.uid.as_str()).collect();
        self.told.retain(|uid| uids.contains(uid.as_str()));
        self.deleted.retain(|uid| uids.contains(uid.as_str()));
        for s in &stuck {
            if matches!(s.verdict, Verdict::CannotRecover { .. }) && self.told.insert(s.uid.clone())
            {
                decisions.tell.push(s.clone());
            }
        }
        let candidates: Vec<Stuck> = stuck
            .into_iter()
            .filter(|s| !self.deleted.contains(&s.uid))
            .collect();
        decisions.delete = self
            .budget
            .choose(limits, &candidates, now)
            .into_iter()
            .cloned()
            .collect();
        decisions
    }

    /// Records a deletion of `stuck` made at `at` (also when the Pod turned out to be gone
    /// already: the attempt counts against the limits).
    pub fn deleted(&mut self, stuck: &Stuck, at: DateTime<Utc>) {
        self.budget.spent(at, &stuck.registry);
        self.deleted.insert(stuck.uid.clone());
    }
}

/// Remembers recent deletions and picks which recoveries may go ahead now.
#[derive(Debug, Default)]
pub struct Budget {
    recent: VecDeque<(DateTime<Utc>, String)>,
}

impl Budget {
    /// From `candidates` (the `Recover` verdicts of one round), those that may be deleted at
    /// `now` within `limits`, oldest-first by input order. The caller records each deletion it
    /// actually made with [`Budget::spent`].
    pub fn choose<'a>(
        &mut self,
        limits: &Limits,
        candidates: &'a [Stuck],
        now: DateTime<Utc>,
    ) -> Vec<&'a Stuck> {
        let window = now - TimeDelta::from_std(Duration::from_mins(1)).unwrap_or_default();
        while self.recent.front().is_some_and(|(t, _)| *t <= window) {
            self.recent.pop_front();
        }
        let mut global = self.recent.len();
        let mut per_registry: HashMap<&str, usize> = HashMap::new();
        for (_, r) in &self.recent {
            *per_registry.entry(r.as_str()).or_default() += 1;
        }
        // Each owner's share, from how many of its Pods are stuck this round.
        let mut owners: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        for c in candidates {
            if let Verdict::Recover { owner_uid, .. } = &c.verdict {
                owners.entry(owner_uid.as_str()).or_default().0 += 1;
            }
        }
        let mut chosen = Vec::new();
        let mut seen_pods = std::collections::HashSet::new();
        for c in candidates {
            let Verdict::Recover { owner_uid, .. } = &c.verdict else {
                continue;
            };
            if !seen_pods.insert(c.uid.as_str()) {
                continue;
            }
            let reg = per_registry.entry(c.registry.as_str()).or_default();
            let (stuck, taken) = owners.entry(owner_uid.as_str()).or_default();
            let share = ((*stuck as f64) * limits.max_share).floor().max(1.0) as usize;
            if global >= limits.per_minute as usize
                || *reg >= limits.per_registry_per_minute as usize
                || *taken >= share
            {
                continue;
            }
            global += 1;
            *reg += 1;
            *taken += 1;
            chosen.push(c);
        }
        chosen
    }

    /// Records one deletion made at `at` for `registry`.
    pub fn spent(&mut self, at: DateTime<Utc>, registry: &str) {
        self.recent.push_back((at, registry.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateWaiting, ContainerStatus, LocalObjectReference, PodSpec,
        PodStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use kube::api::ObjectMeta;

    use crate::testing::registry;

    fn ns(name: &str) -> NamespaceState {
        NamespaceState {
            name: name.into(),
            ..NamespaceState::default()
        }
    }

    fn pod(name: &str, image: &str, reason: &str, owner: Option<&str>, refs: &[&str]) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("team-a".into()),
                uid: Some(format!("uid-{name}")),
                owner_references: owner.map(|kind| {
                    vec![OwnerReference {
                        api_version: "apps/v1".into(),
                        kind: kind.into(),
                        name: "app-5d4f".into(),
                        uid: "owner-1".into(),
                        controller: Some(true),
                        ..OwnerReference::default()
                    }]
                }),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                image_pull_secrets: (!refs.is_empty()).then(|| {
                    refs.iter()
                        .map(|n| LocalObjectReference { name: (*n).into() })
                        .collect()
                }),
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                container_statuses: Some(vec![ContainerStatus {
                    name: "app".into(),
                    image: image.into(),
                    state: Some(ContainerState {
                        waiting: Some(ContainerStateWaiting {
                            reason: Some(reason.into()),
                            message: None,
                        }),
                        ..ContainerState::default()
                    }),
                    ..ContainerStatus::default()
                }]),
                ..PodStatus::default()
            }),
        })
    }

    fn default_sa(lists: &[&str]) -> Arc<AccountState> {
        Arc::new(AccountState {
            name: "default".into(),
            pull_secrets: Some(lists.iter().map(|n| (*n).to_string()).collect()),
            ..AccountState::default()
        })
    }

    fn verdicts(pods: &[Arc<Pod>], secrets: &[String], sa: &[&str]) -> Vec<(String, Verdict)> {
        let reg = Arc::new(registry("harbor", |_| {}));
        let namespace = ns("team-a");
        let accounts = [default_sa(sa)];
        let view = NamespaceView {
            namespace: &namespace,
            secrets,
            service_accounts: &accounts,
        };
        stuck_pods(&[reg], &HashMap::new(), &view, pods)
            .into_iter()
            .map(|s| (s.name, s.verdict))
            .collect()
    }

    #[test]
    fn image_hosts_follow_the_kubelets_rules() {
        assert_eq!(
            image_host("registry.example/team/app:1"),
            "registry.example"
        );
        assert_eq!(image_host("127.0.0.1:5000/app"), "127.0.0.1:5000");
        assert_eq!(image_host("localhost/app"), "localhost");
        assert_eq!(image_host("library/nginx"), "docker.io");
        assert_eq!(image_host("nginx"), "docker.io");
    }

    #[test]
    fn only_controller_owned_pods_lacking_the_reference_are_recovered_once_the_namespace_is_ready()
    {
        let image = "registry.example/team/app:1";
        let pods = [
            pod("owned", image, "ImagePullBackOff", Some("ReplicaSet"), &[]),
            pod("bare", image, "ErrImagePull", None, &[]),
            pod(
                "has-ref",
                image,
                "ImagePullBackOff",
                Some("ReplicaSet"),
                &["harbor-pull"],
            ),
            pod(
                "unmanaged",
                "other.example/app:1",
                "ImagePullBackOff",
                Some("ReplicaSet"),
                &[],
            ),
            pod("custom", image, "ImagePullBackOff", Some("Rollout"), &[]),
            pod(
                "running",
                image,
                "ContainerCreating",
                Some("ReplicaSet"),
                &[],
            ),
        ];
        let secrets = ["harbor-pull".to_string()];
        let v = verdicts(&pods, &secrets, &["harbor-pull"]);
        let by_name: HashMap<_, _> = v.into_iter().collect();
        assert!(
            matches!(by_name["owned"], Verdict::Recover { ref owner_kind, .. } if owner_kind == "ReplicaSet")
        );
        assert!(matches!(by_name["bare"], Verdict::CannotRecover { .. }));
        assert_eq!(by_name["has-ref"], Verdict::HasReference);
        assert!(
            matches!(by_name["custom"], Verdict::CannotRecover { ref why } if why.contains("Rollout"))
        );
        assert!(
            !by_name.contains_key("unmanaged"),
            "an unmanaged registry is not ours"
        );
        assert!(!by_name.contains_key("running"));

        // Before the Secret exists or the ServiceAccount lists it, a recreated Pod would be
        // stuck the same way: nothing is deleted.
        let v = verdicts(&pods[..1], &[], &["harbor-pull"]);
        assert_eq!(v[0].1, Verdict::NotReady);
        let v = verdicts(&pods[..1], &secrets, &[]);
        assert_eq!(v[0].1, Verdict::NotReady);
    }

    fn candidate(name: &str, registry: &str, owner: &str) -> Stuck {
        Stuck {
            namespace: "team-a".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            registry: registry.into(),
            secret: format!("{registry}-pull"),
            image: "registry.example/app:1".into(),
            reason: "ImagePullBackOff".into(),
            verdict: Verdict::Recover {
                owner_kind: "ReplicaSet".into(),
                owner_name: owner.into(),
                owner_uid: owner.into(),
            },
        }
    }

    #[test]
    fn every_stuck_replica_of_an_owner_is_deleted_in_one_round_by_default() {
        // Three replicas of one Deployment stuck pulling serve nothing: all go at once; only
        // the runaway rates limit recovery by default.
        let stuck: Vec<Stuck> = (0..3)
            .map(|i| candidate(&format!("p{i}"), "a", "rs-1"))
            .collect();
        let mut memory = Memory::default();
        let now = Utc::now();
        let decided = memory.decide(&Limits::default(), stuck.clone(), true, now);
        assert_eq!(decided.delete.len(), 3, "{decided:?}");
        assert_eq!(decided.counts[&("a".into(), "ImagePullBackOff".into())], 3);
        for s in &decided.delete {
            memory.deleted(s, now);
        }
        // The next round (before the watch saw the deletions) deletes none of them again.
        let again = memory.decide(&Limits::default(), stuck, true, now);
        assert!(again.delete.is_empty(), "{again:?}");
    }

    #[test]
    fn a_pod_that_cannot_recover_is_told_once_and_observing_decides_only_counts() {
        let mut bare = candidate("bare", "a", "none");
        bare.verdict = Verdict::CannotRecover { why: "bare".into() };
        let mut memory = Memory::default();
        let now = Utc::now();
        let observed = memory.decide(&Limits::default(), vec![bare.clone()], false, now);
        assert!(observed.tell.is_empty() && observed.delete.is_empty());
        assert_eq!(observed.counts.values().sum::<usize>(), 1);
        let first = memory.decide(&Limits::default(), vec![bare.clone()], true, now);
        assert_eq!(first.tell, [bare.clone()]);
        assert!(first.delete.is_empty());
        let second = memory.decide(&Limits::default(), vec![bare.clone()], true, now);
        assert!(second.tell.is_empty(), "told once");
        // Once it is no longer stuck it is forgotten: stuck again, it is told again.
        memory.decide(&Limits::default(), Vec::new(), true, now);
        assert_eq!(
            memory
                .decide(&Limits::default(), vec![bare.clone()], true, now)
                .tell,
            [bare]
        );
    }

    #[test]
    fn recoveries_are_limited_per_owner_share_per_registry_and_globally() {
        let limits = Limits {
            per_minute: 5,
            per_registry_per_minute: 3,
            max_share: 0.5,
        };
        let now = Utc::now();
        let mut budget = Budget::default();
        // Four stuck Pods of one owner: half of them this round.
        let same_owner: Vec<Stuck> = (0..4)
            .map(|i| candidate(&format!("p{i}"), "a", "rs-1"))
            .collect();
        let chosen = budget.choose(&limits, &same_owner, now);
        assert_eq!(chosen.len(), 2);
        // A single stuck Pod is always allowed (at least one per owner).
        let one = [candidate("solo", "a", "rs-2")];
        assert_eq!(budget.choose(&limits, &one, now).len(), 1);

        // Per registry: three a minute.
        let many: Vec<Stuck> = (0..6)
            .map(|i| candidate(&format!("q{i}"), "a", &format!("rs-q{i}")))
            .collect();
        for c in budget.choose(&limits, &many, now) {
            budget.spent(now, &c.registry);
        }
        let again = budget.choose(&limits, &many, now);
        assert!(again.is_empty(), "registry a spent its 3 this minute");
        // Globally: five a minute across registries.
        let other: Vec<Stuck> = (0..6)
            .map(|i| candidate(&format!("r{i}"), "b", &format!("rs-r{i}")))
            .collect();
        assert_eq!(budget.choose(&limits, &other, now).len(), 2);
        // A minute later the budget is back.
        let later = now + TimeDelta::seconds(61);
        assert_eq!(budget.choose(&limits, &many, later).len(), 3);
    }
}
