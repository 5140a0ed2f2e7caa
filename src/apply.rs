//! Executes a namespace plan against the API server: server-side apply for Secrets, guarded
//! JSON patches for ServiceAccounts, precondition-guarded deletes. Every write is rate limited,
//! counted by kind, operation and outcome, and logged from the same place.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::ownership::Owner;
use crate::plan::{AccountChange, account_patch};

/// The field manager of every server-side apply pullkeeper makes.
pub const FIELD_MANAGER: &str = "pullkeeper";

/// How many times a ServiceAccount patch is recomputed after its `test` failed.
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

/// The result of asking to write a Secret.
#[derive(Debug, PartialEq, Eq)]
pub enum SecretOutcome {
    Written,
    /// A Secret of that name exists and is not pullkeeper's: left untouched.
    Foreign,
}

/// Writes Secrets and ServiceAccount patches.
pub struct Applier {
    owner: Owner,
    client: Client,
    metrics: Metrics,
    limiter: WriteLimiter,
}

fn is_status(err: &kube::Error, codes: &[u16]) -> bool {
    matches!(err, kube::Error::Api(s) if codes.contains(&s.code))
}

impl Applier {
    pub fn new(owner: Owner, client: Client, metrics: Metrics, writes_per_second: f64) -> Self {
        Self {
            owner,
            client,
            metrics,
            limiter: WriteLimiter::new(writes_per_second),
        }
    }

    fn count(&self, kind: &str, operation: &str, outcome: &str) {
        self.metrics
            .writes
            .with_label_values(&[kind, operation, outcome])
            .inc();
    }

    /// Creates or updates a Secret by server-side apply. When the cache held no managed Secret of
    /// that name, reads it first: a Secret pullkeeper does not own is never overwritten.
    pub async fn apply_secret(
        &self,
        secret: &Secret,
        known_managed: bool,
    ) -> Result<SecretOutcome, WriteError> {
        let ns = secret.metadata.namespace.clone().unwrap_or_default();
        let name = secret.metadata.name.clone().unwrap_or_default();
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &ns);
        let err = |operation, source| WriteError::Api {
            kind: "secret",
            operation,
            namespace: ns.clone(),
            name: name.clone(),
            source,
        };
        if !known_managed {
            let current = api.get_opt(&name).await.map_err(|e| err("get", e))?;
            if let Some(current) = current
                && !self.owner.owns(&current.metadata)
            {
                return Ok(SecretOutcome::Foreign);
            }
        }
        self.limiter.wait().await;
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match api.patch(&name, &params, &Patch::Apply(secret)).await {
            Ok(_) => {
                self.count("secret", "apply", "success");
                info!(namespace = %ns, secret = %name, "secret applied");
                Ok(SecretOutcome::Written)
            }
            Err(e) => {
                self.count(
                    "secret",
                    "apply",
                    if is_status(&e, &[409]) {
                        "conflict"
                    } else {
                        "error"
                    },
                );
                Err(err("apply", e))
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
                self.count("secret", "delete", "success");
                info!(namespace, secret = name, "secret pruned");
                Ok(())
            }
            Err(e) if is_status(&e, &[404]) => Ok(()),
            Err(e) => {
                self.count(
                    "secret",
                    "delete",
                    if is_status(&e, &[409]) {
                        "conflict"
                    } else {
                        "error"
                    },
                );
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

    /// Applies a ServiceAccount change; when the guarded `test` fails because someone else
    /// changed the list, re-reads the ServiceAccount and recomputes the patch.
    pub async fn patch_account(
        &self,
        namespace: &str,
        change: &AccountChange,
    ) -> Result<(), WriteError> {
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
                Ok(_) => {
                    self.count("serviceaccount", "patch", "success");
                    info!(namespace, serviceaccount = %change.name, wanted = ?change.wanted, "serviceaccount imagePullSecrets updated");
                    return Ok(());
                }
                Err(e) if is_status(&e, &[404]) => return Ok(()),
                // A failed `test` (422) or a write race (409): re-read and recompute.
                Err(e) if is_status(&e, &[409, 422]) => {
                    self.count("serviceaccount", "patch", "conflict");
                    debug!(namespace, serviceaccount = %change.name, attempt, "serviceaccount changed under us; retrying");
                    let Some(fresh) = api.get_opt(&change.name).await.map_err(|e| err("get", e))?
                    else {
                        return Ok(());
                    };
                    match account_patch(&self.owner, &fresh, &change.wanted) {
                        Some(p) => patch = p,
                        None => return Ok(()),
                    }
                }
                Err(e) => {
                    self.count("serviceaccount", "patch", "error");
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
