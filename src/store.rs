//! The credential store. One generation holds a config, the sources (built providers) of its
//! registries and their current credentials; a reload builds the next generation and swaps it
//! in one step, so a reader never sees a config with another config's providers or credentials.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::config::{Config, Registry};
use crate::plan::Issued;
use crate::providers::Provider;

/// The built provider of each registry, by registry name.
pub type Sources = HashMap<String, Arc<dyn Provider>>;

/// One config with its sources and credentials.
pub struct Generation {
    pub config: Arc<Config>,
    sources: Sources,
    credentials: RwLock<HashMap<String, Arc<Issued>>>,
}

/// What offering a freshly fetched credential to the store did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offer {
    /// The content changed: every namespace must be looked at again.
    Rotated,
    /// Same content; only the stated expiry may have moved (a sliding `expires_in`, also past
    /// the old one). Nothing needs re-planning: content that did not change costs no write, and
    /// the expiry annotation is rewritten only with new content.
    Unchanged,
    /// The registry is no longer in this generation (a reload replaced it): dropped.
    Stale,
}

fn read<T: Clone>(lock: &RwLock<T>) -> T {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Two registries have the same source when their file (and the defaults file) is unchanged.
pub fn same_source(a: &Registry, b: &Registry) -> bool {
    a.source_hash == b.source_hash && a.file == b.file
}

impl Generation {
    /// A generation for `config`, keeping the credentials of `previous` for every registry
    /// whose source did not change.
    pub fn new(config: Config, sources: Sources, previous: Option<&Generation>) -> Self {
        let mut credentials = HashMap::new();
        if let Some(old) = previous {
            let old_creds = old.credentials();
            for reg in &config.registries {
                let unchanged = old
                    .config
                    .registries
                    .iter()
                    .any(|o| o.name == reg.name && same_source(o, reg));
                if let Some(c) = old_creds.get(&reg.name).filter(|_| unchanged) {
                    credentials.insert(reg.name.clone(), c.clone());
                }
            }
        }
        Self {
            config: Arc::new(config),
            sources,
            credentials: RwLock::new(credentials),
        }
    }

    pub fn source(&self, registry: &str) -> Option<Arc<dyn Provider>> {
        self.sources.get(registry).cloned()
    }

    /// A snapshot of every current credential.
    pub fn credentials(&self) -> HashMap<String, Arc<Issued>> {
        read(&self.credentials)
    }

    pub fn credential(&self, registry: &str) -> Option<Arc<Issued>> {
        read(&self.credentials).get(registry).cloned()
    }

    /// Keeps a freshly fetched credential of `registry` (as this generation knows it).
    pub fn offer(&self, registry: &Registry, issued: Issued) -> Offer {
        let current = self
            .config
            .registries
            .iter()
            .any(|r| r.name == registry.name && same_source(r, registry));
        if !current {
            return Offer::Stale;
        }
        let mut credentials = write(&self.credentials);
        let offer = match credentials.get(&registry.name) {
            None => Offer::Rotated,
            Some(old) if old.rendered.hash != issued.rendered.hash => Offer::Rotated,
            Some(old) if **old == issued => return Offer::Unchanged,
            Some(_) => Offer::Unchanged,
        };
        credentials.insert(registry.name.clone(), Arc::new(issued));
        offer
    }
}

/// The current generation, swapped whole on reload.
pub struct Store {
    current: RwLock<Arc<Generation>>,
}

impl Store {
    pub fn new(generation: Generation) -> Self {
        Self {
            current: RwLock::new(Arc::new(generation)),
        }
    }

    pub fn current(&self) -> Arc<Generation> {
        read(&self.current)
    }

    pub fn swap(&self, next: Generation) -> Arc<Generation> {
        let next = Arc::new(next);
        *write(&self.current) = next.clone();
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credential::{Credential, Login};
    use crate::render::render;
    use crate::sensitive::Sensitive;
    use crate::testing::registry;
    use chrono::{DateTime, Utc};

    fn issued(reg: &Registry, password: &str, expires_at: Option<DateTime<Utc>>) -> Issued {
        let cred = Credential {
            logins: vec![Login {
                server: None,
                username: "robot".into(),
                password: Sensitive::new(password),
            }],
            expires_at,
        };
        Issued {
            rendered: render(reg, &cred).expect("renders"),
            expires_at,
        }
    }

    fn generation(regs: Vec<Registry>) -> Generation {
        Generation::new(
            Config {
                registries: regs.into_iter().map(Arc::new).collect(),
                fingerprint: String::new(),
            },
            Sources::new(),
            None,
        )
    }

    #[test]
    fn only_new_content_counts_as_a_rotation() {
        let reg = registry("harbor", |_| {});
        let g = generation(vec![reg.clone()]);
        let now = Utc::now();
        let hour = chrono::TimeDelta::hours(1);
        assert_eq!(
            g.offer(&reg, issued(&reg, "a", Some(now + hour))),
            Offer::Rotated
        );
        // Same password, the provider slid its expiry: no re-plan.
        assert_eq!(
            g.offer(&reg, issued(&reg, "a", Some(now + hour * 2))),
            Offer::Unchanged
        );
        assert_eq!(
            g.credential("harbor").and_then(|c| c.expires_at),
            Some(now + hour * 2)
        );
        assert_eq!(
            g.offer(&reg, issued(&reg, "b", Some(now + hour * 2))),
            Offer::Rotated
        );
        // The stored expiry passed and the provider re-issued the same content: still no
        // re-plan (no write for content that did not change).
        let later = now + hour * 3;
        assert_eq!(
            g.offer(&reg, issued(&reg, "b", Some(later + hour))),
            Offer::Unchanged
        );
        assert_eq!(
            g.credential("harbor").and_then(|c| c.expires_at),
            Some(later + hour)
        );
        let gone = registry("other", |_| {});
        assert_eq!(g.offer(&gone, issued(&gone, "x", None)), Offer::Stale);
    }

    #[test]
    fn a_new_generation_keeps_credentials_of_unchanged_sources_only() {
        let a = registry("a", |_| {});
        let b = registry("b", |_| {});
        let old = generation(vec![a.clone(), b.clone()]);
        old.offer(&a, issued(&a, "pa", None));
        old.offer(&b, issued(&b, "pb", None));
        let mut b2 = b.clone();
        b2.source_hash = "changed".into();
        let next = Generation::new(
            Config {
                registries: vec![Arc::new(a), Arc::new(b2)],
                fingerprint: String::new(),
            },
            Sources::new(),
            Some(&old),
        );
        assert!(next.credential("a").is_some());
        assert!(next.credential("b").is_none());
    }
}
