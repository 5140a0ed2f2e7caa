//! Refreshing credentials: one provider call per registry per rotation, validated, rendered and
//! optionally verified, offered to the credential store, then scheduled again (or retried with
//! backoff). Only the leader refreshes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tracing::{Instrument, info, info_span, warn};

use crate::config::{Config, Registry};
use crate::credential::CredentialError;
use crate::events::{EventType, Events};
use crate::metrics::{Outcome, RefreshMetrics};
use crate::plan::Issued;
use crate::providers::{ErrorCategory, ProviderError};
use crate::render;
use crate::schedule;
use crate::store::{Generation, Offer, Store, same_source};
use crate::verify::VerifyError;

/// Why a refresh failed, with a bounded category.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("fetching from the {provider} provider failed")]
    Provider {
        provider: &'static str,
        #[source]
        source: ProviderError,
    },
    #[error("the {provider} provider did not answer within {timeout:?}")]
    Timeout {
        provider: &'static str,
        timeout: Duration,
    },
    #[error("the provider returned an unusable credential")]
    Invalid(#[source] CredentialError),
    #[error("the new credential was refused by the registry")]
    Verification(#[source] VerifyError),
}

impl RefreshError {
    pub fn category(&self) -> &'static str {
        match self {
            Self::Provider { source, .. } => source.category(),
            Self::Timeout { .. } => "unreachable",
            Self::Invalid(_) => "invalid_credential",
            Self::Verification(_) => "verification_failed",
        }
    }

    /// How long the provider asked us to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Provider { source, .. } => source.retry_after,
            _ => None,
        }
    }
}

/// Renders an error with its sources, once each (never containing credential material: no
/// error in this crate carries any).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Fetches, validates, renders and (optionally) verifies one registry's credential.
pub async fn fetch(
    generation: &Generation,
    registry: &Registry,
    metrics: &RefreshMetrics,
    timeout: Duration,
) -> Result<Issued, RefreshError> {
    let provider_type = registry.provider.type_name();
    let Some(provider) = generation.source(&registry.name) else {
        return Err(RefreshError::Provider {
            provider: provider_type,
            source: ProviderError::new(ErrorCategory::LocalInput, "provider was not built"),
        });
    };
    let timer = metrics.provider_timer(provider_type);
    let result = tokio::time::timeout(timeout, provider.fetch()).await;
    timer.observe_duration();
    let mut credential = match result {
        Ok(Ok(c)) => c,
        Ok(Err(source)) => {
            metrics.provider_failed(provider_type, source.category());
            return Err(RefreshError::Provider {
                provider: provider_type,
                source,
            });
        }
        Err(_) => {
            metrics.provider_failed(provider_type, ErrorCategory::Unreachable.as_str());
            return Err(RefreshError::Timeout {
                provider: provider_type,
                timeout,
            });
        }
    };
    if let Some(stated) = credential.drop_past_expiry(Utc::now()) {
        warn!(registry = %registry.name, stated = %stated.to_rfc3339(),
            "the provider stated an expiry that has already passed; the credential is written as if it stated none");
    }
    let rendered = render::render(registry, &credential).map_err(RefreshError::Invalid)?;
    if let Some(spec) = &registry.verify {
        // Every `auths` entry the Secret will carry, aliases included.
        for (server, login) in render::logins_by_server(registry, &credential) {
            let result =
                crate::verify::verify(spec, server, &login.username, &login.password).await;
            metrics.verified(&registry.name, Outcome::of(&result));
            result.map_err(RefreshError::Verification)?;
        }
    }
    Ok(Issued {
        rendered,
        expires_at: credential.expires_at,
    })
}

/// What a successful refresh did.
#[derive(Debug)]
pub struct Refreshed {
    pub expires_at: Option<DateTime<Utc>>,
    pub offer: Offer,
}

/// Refreshes registries and tells the daemon when a credential rotated.
pub struct Refresher {
    pub store: Arc<Store>,
    pub metrics: RefreshMetrics,
    pub events: Events,
    pub fetch_timeout: Duration,
    pub leader: watch::Receiver<bool>,
    /// Woken after every rotation: the daemon then sweeps every namespace.
    pub rotated: Arc<Notify>,
}

impl Refresher {
    /// One refresh of a registry, shared by the refresh loop and `once`: fetch, count and log
    /// the outcome, and keep the credential in the current generation.
    pub async fn refresh(
        &self,
        registry: &Registry,
        attempt: u32,
    ) -> Result<Refreshed, RefreshError> {
        let name = registry.name.as_str();
        let generation = self.store.current();
        let timer = self.metrics.timer(name);
        let result = fetch(&generation, registry, &self.metrics, self.fetch_timeout).await;
        timer.observe_duration();
        let now = Utc::now();
        match result {
            Ok(issued) => {
                let expires_at = issued.expires_at;
                let offer = generation.offer(registry, issued);
                self.metrics
                    .succeeded(name, now, expires_at, offer == Offer::Rotated);
                if offer == Offer::Rotated {
                    self.rotated.notify_one();
                }
                Ok(Refreshed { expires_at, offer })
            }
            Err(e) => {
                self.metrics
                    .failed(name, e.category(), attempt, &error_chain(&e));
                Err(e)
            }
        }
    }

    /// One registry's refresh loop: refresh, schedule the next refresh (or retry), repeat.
    async fn run(self: Arc<Self>, registry: Arc<Registry>) {
        let name = registry.name.clone();
        let mut attempt = 0u32;
        let mut leader = self.leader.clone();
        loop {
            // Only the leader fetches: one provider call per rotation across all replicas.
            let _ = leader.wait_for(|leading| *leading).await;
            let span =
                info_span!("refresh", registry = %name, provider = registry.provider.type_name());
            let now = Utc::now();
            let next = match self.refresh(&registry, attempt + 1).instrument(span).await {
                Ok(refreshed) => {
                    attempt = 0;
                    schedule::next_refresh(
                        &registry.refresh,
                        now,
                        now,
                        refreshed.expires_at,
                        rand::random_range(-1.0..=1.0),
                    )
                }
                Err(e) => {
                    attempt += 1;
                    let current_expiry = self
                        .store
                        .current()
                        .credential(&name)
                        .and_then(|c| c.expires_at);
                    let wait = schedule::backoff(
                        &registry.refresh,
                        attempt,
                        now,
                        current_expiry,
                        e.retry_after(),
                        rand::random_range(0.0..=1.0),
                    );
                    info!(registry = %name, retry_in_seconds = wait.as_secs(), "refresh retry scheduled");
                    // One Event per registry and error: a repeat is counted on it, a new
                    // error is an Event of its own (the wait is in the log line, not the note,
                    // so repeats stay one series).
                    self.events
                        .on_own_pod(
                            EventType::Warning,
                            "RotationFailed",
                            "Refresh",
                            None,
                            format!("registry {name}: {}", error_chain(&e)),
                        )
                        .await;
                    now + chrono::TimeDelta::from_std(wait).unwrap_or_default()
                }
            };
            self.metrics.scheduled(&name, next);
            let sleep = (next - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            tokio::time::sleep(sleep).await;
        }
    }
}

/// Keeps one refresh task per registry, restarting only the registries whose file changed.
#[derive(Default)]
pub struct Refreshers {
    tasks: HashMap<String, (Arc<Registry>, JoinHandle<()>)>,
}

impl Refreshers {
    pub fn sync(&mut self, refresher: &Arc<Refresher>, config: &Config) {
        let wanted: HashMap<&str, &Arc<Registry>> = config
            .registries
            .iter()
            .map(|r| (r.name.as_str(), r))
            .collect();
        self.tasks.retain(|name, (reg, handle)| {
            let keep = wanted
                .get(name.as_str())
                .is_some_and(|w| same_source(w, reg));
            if !keep {
                handle.abort();
            }
            keep
        });
        for (name, reg) in wanted {
            if !self.tasks.contains_key(name) {
                refresher.metrics.register(name);
                let handle = tokio::spawn(refresher.clone().run(reg.clone()));
                self.tasks.insert(name.to_string(), (reg.clone(), handle));
            }
        }
    }

    pub fn stop(&mut self) {
        for (_, (_, handle)) in self.tasks.drain() {
            handle.abort();
        }
    }
}

impl Drop for Refreshers {
    /// Refresh tasks end with their owner: a stopped daemon fetches nothing more.
    fn drop(&mut self) {
        self.stop();
    }
}
