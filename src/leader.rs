//! Leader election on a `coordination.k8s.io/v1` Lease: one replica writes, the others keep
//! warm caches. Two writers would keep overwriting each other with different tokens.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams, Preconditions};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::metrics::{LeaderMetrics, LeaseLook};

/// Lease settings.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub duration: Duration,
    /// How often the leader renews.
    pub renew_every: Duration,
    /// How long a leader keeps leading without a renewal that the API server confirmed: past
    /// it, it steps down. Shorter than `duration`, so it has stopped before another replica
    /// can take the Lease, even when its connection to the API server went silent.
    pub renew_deadline: Duration,
    /// How often a follower looks whether the Lease became free (a released Lease is taken
    /// within this time).
    pub retry_every: Duration,
}

impl LeaseConfig {
    /// The Lease of installation `instance` in `namespace` (what `run` holds and `cleanup`
    /// removes), with the timings every replica uses: held 15 s, renewed every 5 s, given up
    /// 10 s after the last confirmed renewal, a free Lease looked for every 2 s.
    pub fn of(instance: &str, namespace: impl Into<String>, identity: String) -> Self {
        Self {
            namespace: namespace.into(),
            name: lease_name(instance),
            identity,
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
            renew_deadline: Duration::from_secs(10),
            retry_every: Duration::from_secs(2),
        }
    }
}

/// The name of installation `instance`'s Lease.
pub fn lease_name(instance: &str) -> String {
    format!("{instance}-leader")
}

/// This process's identity in the Lease: `--identity` (the Pod name) and a random suffix, so a
/// restarted container is a new holder that waits for the old one's Lease like any follower.
pub fn process_identity(base: Option<&str>) -> String {
    format!(
        "{}_{:08x}",
        base.unwrap_or("pullkeeper"),
        rand::random::<u32>()
    )
}

/// What one look at the Lease decided.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Lead,
    Follow,
}

/// The holder of `lease` at `now`, when it has one that renewed it within its duration (a
/// released Lease has no holder; an expired one is free to take).
pub fn holder(lease: &LeaseSpec, now: Timestamp) -> Option<&str> {
    let holder = lease.holder_identity.as_deref().filter(|h| !h.is_empty())?;
    let duration = SignedDuration::from_secs(i64::from(lease.lease_duration_seconds.unwrap_or(15)));
    lease
        .renew_time
        .as_ref()
        .is_some_and(|t| t.0 + duration >= now)
        .then_some(holder)
}

/// Whether `lease` may be taken by `me` at `now`: it is free, ours, or its holder stopped
/// renewing for longer than its duration.
fn can_take(lease: &LeaseSpec, me: &str, now: Timestamp) -> bool {
    holder(lease, now).is_none_or(|h| h == me)
}

async fn try_lead(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<Step, kube::Error> {
    let now = Timestamp::now();
    let seconds = i32::try_from(cfg.duration.as_secs()).unwrap_or(15);
    let Some(mut lease) = api.get_opt(&cfg.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(cfg.name.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(cfg.identity.clone()),
                lease_duration_seconds: Some(seconds),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(Step::Lead),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Step::Follow),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    if !can_take(spec, &cfg.identity, now) {
        return Ok(Step::Follow);
    }
    if spec.holder_identity.as_deref() != Some(&cfg.identity) {
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        spec.acquire_time = Some(MicroTime(now));
        spec.holder_identity = Some(cfg.identity.clone());
    }
    spec.renew_time = Some(MicroTime(now));
    spec.lease_duration_seconds = Some(seconds);
    // The replace carries the resourceVersion we read: a concurrent writer makes it fail.
    match api.replace(&cfg.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(Step::Lead),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(Step::Follow),
        Err(e) => Err(e),
    }
}

/// Campaigns for the Lease and keeps it renewed, publishing leadership on `tx`. Returns when
/// leadership, once held, is lost: another replica holds the Lease, or no renewal was
/// confirmed within the renew deadline (the caller stops writing and exits so a restart begins
/// as a follower). Every look at the Lease is bounded in time: a connection that stopped
/// answering (a network cut drops packets, it does not refuse them) must not keep a leader
/// waiting on its renewal while believing it still leads.
pub async fn run(
    client: Client,
    cfg: LeaseConfig,
    metrics: LeaderMetrics,
    tx: watch::Sender<bool>,
) {
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    // When the last renewal the API server confirmed was sent (its renewTime is no earlier).
    let mut last_renewed: Option<Instant> = None;
    loop {
        let leading = *tx.borrow();
        let sent = Instant::now();
        let bound = look_bound(&cfg, leading, last_renewed, sent);
        let step = match tokio::time::timeout(bound, try_lead(&api, &cfg)).await {
            Ok(Ok(step)) => Ok(step),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "no answer from the API server within {:.1} s",
                bound.as_secs_f64()
            )),
        };
        metrics.looked(match &step {
            Ok(Step::Lead) => LeaseLook::Lead,
            Ok(Step::Follow) => LeaseLook::Follow,
            Err(_) => LeaseLook::Error,
        });
        match step {
            Ok(Step::Lead) => {
                last_renewed = Some(sent);
                if !leading {
                    info!(lease = %cfg.name, identity = %cfg.identity, "became leader");
                    metrics.set(true);
                    let _ = tx.send(true);
                }
            }
            Ok(Step::Follow) if leading => {
                warn!(lease = %cfg.name, "leadership lost to another replica");
                break;
            }
            Ok(Step::Follow) => {}
            Err(e) => {
                warn!(lease = %cfg.name, error = %e, "lease renewal failed");
                if leading && past_deadline(&cfg, last_renewed, Instant::now()) {
                    warn!(lease = %cfg.name, "lease not renewed within its renew deadline; stepping down");
                    break;
                }
            }
        }
        let leading = *tx.borrow();
        let pause = if leading {
            // Wake up at the deadline at the latest, to step down on time.
            cfg.renew_every
                .min(until_deadline(&cfg, last_renewed, Instant::now()))
        } else {
            cfg.retry_every
        };
        tokio::time::sleep(pause).await;
    }
    metrics.set(false);
    let _ = tx.send(false);
}

/// How long one look at the Lease may take: a leader's ends at its renew deadline, a
/// follower's after the renew deadline too (a slow look only delays a take-over).
fn look_bound(
    cfg: &LeaseConfig,
    leading: bool,
    last_renewed: Option<Instant>,
    now: Instant,
) -> Duration {
    if leading {
        until_deadline(cfg, last_renewed, now)
    } else {
        cfg.renew_deadline
    }
}

/// Time left before a leader whose last confirmed renewal was sent at `last_renewed` must step
/// down (none when it never renewed).
fn until_deadline(cfg: &LeaseConfig, last_renewed: Option<Instant>, now: Instant) -> Duration {
    last_renewed.map_or(Duration::ZERO, |t| {
        (t + cfg.renew_deadline).saturating_duration_since(now)
    })
}

fn past_deadline(cfg: &LeaseConfig, last_renewed: Option<Instant>, now: Instant) -> bool {
    until_deadline(cfg, last_renewed, now).is_zero()
}

/// Gives the Lease up if this replica holds it, so another replica takes over at its next
/// look instead of waiting for the Lease to expire. Call only after writes have stopped.
/// Returns whether a Lease was released.
pub async fn release(client: &Client, cfg: &LeaseConfig) -> Result<bool, kube::Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), &cfg.namespace);
    let Some(mut lease) = api.get_opt(&cfg.name).await? else {
        return Ok(false);
    };
    let Some(spec) = lease.spec.as_mut() else {
        return Ok(false);
    };
    if spec.holder_identity.as_deref() != Some(&cfg.identity) {
        return Ok(false);
    }
    spec.holder_identity = None;
    spec.renew_time = Some(MicroTime(Timestamp::now()));
    spec.lease_duration_seconds = Some(1);
    // The replace carries the resourceVersion read: a replica that took over meanwhile wins.
    match api.replace(&cfg.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Deletes the Lease, only if it is still the version observed (`resource_version`): a
/// replica that renewed it since keeps it. Returns false when it was already gone.
pub async fn delete(
    client: &Client,
    namespace: &str,
    name: &str,
    resource_version: Option<String>,
) -> Result<bool, kube::Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: None,
            resource_version,
        }),
        ..DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, renewed_secs_ago: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(String::from),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(
                Timestamp::now() - SignedDuration::from_secs(renewed_secs_ago),
            )),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_restarted_process_is_a_new_holder_that_must_wait() {
        let before = process_identity(Some("pullkeeper-7b7796b6b4-5nksg"));
        let after = process_identity(Some("pullkeeper-7b7796b6b4-5nksg"));
        assert!(
            before.starts_with("pullkeeper-7b7796b6b4-5nksg_"),
            "{before}"
        );
        assert_ne!(before, after);
        // The Lease the killed process still holds is not the restarted one's to take.
        assert!(!can_take(&spec(Some(&before), 5), &after, Timestamp::now()));
        assert!(process_identity(None).starts_with("pullkeeper_"));
    }

    #[test]
    fn a_lease_is_taken_only_when_free_ours_or_expired() {
        let now = Timestamp::now();
        assert!(can_take(&spec(None, 0), "me", now));
        assert!(can_take(&spec(Some("me"), 1), "me", now));
        assert!(!can_take(&spec(Some("other"), 5), "me", now));
        assert!(can_take(&spec(Some("other"), 30), "me", now));
    }

    #[test]
    fn a_leader_steps_down_before_its_lease_can_be_taken() {
        let cfg = LeaseConfig::of("pk", "pullkeeper", "me".into());
        assert!(cfg.renew_deadline < cfg.duration);
        assert!(cfg.renew_every < cfg.renew_deadline);
        let renewed = Instant::now();
        let at = |secs| renewed + Duration::from_secs(secs);
        // A look by the leader may last only until the deadline of its last renewal.
        assert_eq!(
            look_bound(&cfg, true, Some(renewed), at(5)),
            Duration::from_secs(5)
        );
        assert_eq!(
            look_bound(&cfg, true, Some(renewed), at(12)),
            Duration::ZERO
        );
        assert_eq!(
            look_bound(&cfg, false, None, at(0)),
            cfg.renew_deadline,
            "a follower's look is bounded too"
        );
        assert!(!past_deadline(&cfg, Some(renewed), at(9)));
        assert!(past_deadline(&cfg, Some(renewed), at(10)));
        assert!(
            past_deadline(&cfg, None, at(0)),
            "never renewed: never leading"
        );
    }

    #[test]
    fn a_lease_has_a_holder_only_while_renewed_within_its_duration() {
        let now = Timestamp::now();
        assert_eq!(holder(&spec(Some("pod-a"), 5), now), Some("pod-a"));
        assert_eq!(holder(&spec(Some("pod-a"), 15), now), Some("pod-a"));
        assert_eq!(holder(&spec(Some("pod-a"), 16), now), None, "expired");
        assert_eq!(holder(&spec(None, 0), now), None, "released");
        assert_eq!(holder(&spec(Some(""), 0), now), None, "released");
        let never_renewed = LeaseSpec {
            renew_time: None,
            ..spec(Some("pod-a"), 0)
        };
        assert_eq!(holder(&never_renewed, now), None);
    }
}
