//! Executes a namespace plan against the API server: server-side apply for Secrets, guarded
//! JSON patches for `ServiceAccounts`, precondition-guarded deletes. Every write is rate limited,
//! counted by kind, operation and outcome, and logged from the same place.

use std::time::Duration;

use json_patch::jsonptr::PointerBuf;
use json_patch::{PatchOperation, RemoveOperation, TestOperation};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::metrics::{WriteKind, WriteMetrics, WriteOp, WriteOutcome};
use crate::ownership::Owner;
use crate::plan::{AccountChange, AccountState, DesiredSecret, account_patch};

/// The field manager of every server-side apply pullkeeper makes.
pub const FIELD_MANAGER: &str = "pullkeeper";

/// How many times a `ServiceAccount` patch is recomputed after its `test` failed.
const ACCOUNT_RETRIES: usize = 6;

/// Errors of a single write.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{operation} {kind} {namespace}/{name} failed")]
    Api {
        kind: &'static str,
        operation: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "serviceaccount {namespace}/{name} kept changing; gave up after {ACCOUNT_RETRIES} attempts"
    )]
    Contended { namespace: String, name: String },
}

impl WriteError {
    /// Bounded category for metrics and event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Api {
                source: kube::Error::Api(s),
                ..
            } if s.code == 403 => "forbidden",
            Self::Api {
                source: kube::Error::Api(_),
                ..
            } => "rejected",
            Self::Api { .. } => "unreachable",
            Self::Contended { .. } => "conflict",
        }
    }
}

/// Spaces writes at most `per_second` apart, across all tasks.
#[derive(Debug)]
pub struct WriteLimiter {
    gap: Duration,
    next: Mutex<Instant>,
}

impl WriteLimiter {
    pub fn new(per_second: f64) -> Self {
        let gap = if per_second > 0.0 {
            Duration::from_secs_f64(1.0 / per_second)
        } else {
            Duration::ZERO
        };
        Self {
            gap,
            next: Mutex::new(Instant::now()),
        }
    }

    async fn wait(&self) {
        if self.gap.is_zero() {
            return;
        }
        let at = {
            let mut next = self.next.lock().await;
            let at = (*next).max(Instant::now());
            *next = at + self.gap;
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

/// The result of asking to write a Secret, with the Secret as the API server returned or
/// showed it (the caller keeps its planning form; nobody keeps the object).
#[derive(Debug)]
pub enum SecretOutcome {
    Written(Box<Secret>),
    /// A Secret of that name exists and is not pullkeeper's: left untouched.
    Foreign(Box<Secret>),
}

/// Writes Secrets and `ServiceAccount` patches.
pub struct Applier {
    owner: Owner,
    client: Client,
    metrics: WriteMetrics,
    limiter: WriteLimiter,
}

pub fn is_status(err: &kube::Error, codes: &[u16]) -> bool {
    matches!(err, kube::Error::Api(s) if codes.contains(&s.code))
}

/// The outcome label of a failed write.
fn failed(err: &kube::Error) -> WriteOutcome {
    if is_status(err, &[409, 422]) {
        WriteOutcome::Conflict
    } else {
        WriteOutcome::Error
    }
}

impl Applier {
    pub fn new(
        owner: Owner,
        client: Client,
        metrics: WriteMetrics,
        writes_per_second: f64,
    ) -> Self {
        Self {
            owner,
            client,
            metrics,
            limiter: WriteLimiter::new(writes_per_second),
        }
    }

    fn count(&self, kind: WriteKind, op: WriteOp, outcome: WriteOutcome) {
        self.metrics.record(kind, op, outcome);
    }

    /// Creates a Secret the cache has not seen (`known_managed: false`), or updates
    /// pullkeeper's own by server-side apply. A create costs one request; when it conflicts, a
    /// Secret of that name appeared since the cache was read: it is read once, and left
    /// untouched unless it is this installation's (a Secret pullkeeper does not own is never
    /// overwritten). Data keys another field manager added (`stray_keys`) are removed first by a
    /// JSON patch guarded by the observed `resource_version`: server-side apply alone cannot
    /// remove them.
    pub async fn apply_secret(
        &self,
        desired: &DesiredSecret,
        known_managed: bool,
        stray_keys: &[String],
        resource_version: Option<&str>,
    ) -> Result<SecretOutcome, WriteError> {
        let ns = desired.namespace.as_str();
        let name = desired.name.as_str();
        let api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let err = |operation, source| WriteError::Api {
            kind: "secret",
            operation,
            namespace: ns.to_string(),
            name: name.to_string(),
            source,
        };
        if !known_managed {
            self.limiter.wait().await;
            let params = PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PostParams::default()
            };
            match api.create(&params, &desired.to_secret()).await {
                Ok(created) => {
                    self.count(WriteKind::Secret, WriteOp::Create, WriteOutcome::Success);
                    info!(namespace = %ns, secret = %name, "secret created");
                    return Ok(SecretOutcome::Written(Box::new(created)));
                }
                Err(e) if is_status(&e, &[409]) => {
                    self.count(WriteKind::Secret, WriteOp::Create, WriteOutcome::Conflict);
                    let Some(current) = api.get_opt(name).await.map_err(|e| err("get", e))? else {
                        // Created and deleted again meanwhile: the next sync creates it.
                        return Err(err("create", e));
                    };
                    if !self.owner.owns(&current.metadata) {
                        return Ok(SecretOutcome::Foreign(Box::new(current)));
                    }
                }
                Err(e) => {
                    self.count(WriteKind::Secret, WriteOp::Create, failed(&e));
                    return Err(err("create", e));
                }
            }
        }
        if !stray_keys.is_empty() {
            self.remove_keys(&api, ns, name, stray_keys, resource_version)
                .await
                .map_err(|e| err("patch", e))?;
        }
        self.limiter.wait().await;
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match api
            .patch(name, &params, &Patch::Apply(desired.to_secret()))
            .await
        {
            Ok(applied) => {
                self.count(WriteKind::Secret, WriteOp::Apply, WriteOutcome::Success);
                info!(namespace = %ns, secret = %name, "secret applied");
                Ok(SecretOutcome::Written(Box::new(applied)))
            }
            Err(e) => {
                self.count(WriteKind::Secret, WriteOp::Apply, failed(&e));
                Err(err("apply", e))
            }
        }
    }

    /// Removes data keys from a Secret, only if it is still the version observed.
    async fn remove_keys(
        &self,
        api: &Api<Secret>,
        ns: &str,
        name: &str,
        keys: &[String],
        resource_version: Option<&str>,
    ) -> Result<(), kube::Error> {
        let mut ops = vec![PatchOperation::Test(TestOperation {
            path: PointerBuf::from_tokens(["metadata", "resourceVersion"]),
            value: serde_json::Value::String(resource_version.unwrap_or_default().to_string()),
        })];
        ops.extend(keys.iter().map(|k| {
            PatchOperation::Remove(RemoveOperation {
                path: PointerBuf::from_tokens(["data", k.as_str()]),
            })
        }));
        self.limiter.wait().await;
        match api
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Json::<()>(json_patch::Patch(ops)),
            )
            .await
        {
            Ok(_) => {
                self.count(WriteKind::Secret, WriteOp::Patch, WriteOutcome::Success);
                info!(namespace = %ns, secret = %name, removed = ?keys, "data keys pullkeeper did not write removed from its secret");
                Ok(())
            }
            Err(e) => {
                self.count(WriteKind::Secret, WriteOp::Patch, failed(&e));
                Err(e)
            }
        }
    }

    /// Deletes a Secret pullkeeper wrote, only if it is still the one observed (same UID).
    pub async fn delete_secret(
        &self,
        namespace: &str,
        name: &str,
        uid: Option<String>,
    ) -> Result<(), WriteError> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        self.limiter.wait().await;
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid,
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(name, &params).await {
            Ok(_) => {
                self.count(WriteKind::Secret, WriteOp::Delete, WriteOutcome::Success);
                info!(namespace, secret = name, "secret pruned");
                Ok(())
            }
            Err(e) if is_status(&e, &[404]) => Ok(()),
            Err(e) => {
                self.count(WriteKind::Secret, WriteOp::Delete, failed(&e));
                Err(WriteError::Api {
                    kind: "secret",
                    operation: "delete",
                    namespace: namespace.into(),
                    name: name.into(),
                    source: e,
                })
            }
        }
    }

    /// Deletes a Pod stuck before its credential existed, only if it is still the one observed
    /// (same UID), so its controller recreates it. Returns false when it was already gone.
    pub async fn delete_pod(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
    ) -> Result<bool, WriteError> {
        let api: Api<k8s_openapi::api::core::v1::Pod> =
            Api::namespaced(self.client.clone(), namespace);
        self.limiter.wait().await;
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid.to_string()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(name, &params).await {
            Ok(_) => {
                self.count(WriteKind::Pod, WriteOp::Delete, WriteOutcome::Success);
                info!(
                    namespace,
                    pod = name,
                    "stuck pod deleted so its controller recreates it"
                );
                Ok(true)
            }
            Err(e) if is_status(&e, &[404]) => Ok(false),
            Err(e) => {
                self.count(WriteKind::Pod, WriteOp::Delete, failed(&e));
                Err(WriteError::Api {
                    kind: "pod",
                    operation: "delete",
                    namespace: namespace.into(),
                    name: name.into(),
                    source: e,
                })
            }
        }
    }

    /// Applies a `ServiceAccount` change; when the guarded `test` fails because someone else
    /// changed the list, re-reads the `ServiceAccount` and recomputes the patch. Returns the
    /// ServiceAccount as the last request left it (`None` when it is gone).
    pub async fn patch_account(
        &self,
        namespace: &str,
        change: &AccountChange,
    ) -> Result<Option<ServiceAccount>, WriteError> {
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        let err = |operation, source| WriteError::Api {
            kind: "serviceaccount",
            operation,
            namespace: namespace.into(),
            name: change.name.clone(),
            source,
        };
        let mut patch = change.patch.clone();
        for attempt in 0..ACCOUNT_RETRIES {
            self.limiter.wait().await;
            match api
                .patch(
                    &change.name,
                    &PatchParams::default(),
                    &Patch::Json::<()>(patch.clone()),
                )
                .await
            {
                Ok(patched) => {
                    self.count(
                        WriteKind::ServiceAccount,
                        WriteOp::Patch,
                        WriteOutcome::Success,
                    );
                    info!(namespace, serviceaccount = %change.name, wanted = ?change.wanted, "serviceaccount imagePullSecrets updated");
                    return Ok(Some(patched));
                }
                Err(e) if is_status(&e, &[404]) => return Ok(None),
                // A failed `test` (422) or a write race (409): re-read and recompute.
                Err(e) if is_status(&e, &[409, 422]) => {
                    self.count(
                        WriteKind::ServiceAccount,
                        WriteOp::Patch,
                        WriteOutcome::Conflict,
                    );
                    debug!(namespace, serviceaccount = %change.name, attempt, "serviceaccount changed under us; retrying");
                    let Some(fresh) = api.get_opt(&change.name).await.map_err(|e| err("get", e))?
                    else {
                        return Ok(None);
                    };
                    match account_patch(
                        &self.owner,
                        &AccountState::of(&fresh, &self.owner),
                        &change.wanted,
                    ) {
                        Some(p) => patch = p,
                        None => return Ok(Some(fresh)),
                    }
                }
                Err(e) => {
                    self.count(
                        WriteKind::ServiceAccount,
                        WriteOp::Patch,
                        WriteOutcome::Error,
                    );
                    return Err(err("patch", e));
                }
            }
        }
        warn!(namespace, serviceaccount = %change.name, "serviceaccount patch kept conflicting");
        Err(WriteError::Contended {
            namespace: namespace.into(),
            name: change.name.clone(),
        })
    }
}
