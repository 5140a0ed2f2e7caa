//! The cluster as the planner reads it, by namespace: the namespace's labels and state, the
//! Secrets of the watched names and every ServiceAccount, each in a compact planning form
//! ([`NamespaceState`], [`SecretState`], [`AccountState`]), never a whole object and never a
//! credential. The watches feed it, and so do pullkeeper's own writes
//! (write-through): a namespace planned right after a write sees that write without waiting for
//! its watch event, so no re-plan works from a state older than its own last write. A namespace
//! sync reads only its own slot; the per-Secret-name counts behind the inventory gauges are kept
//! up to date on every change instead of being recounted.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

use crate::ownership::parse_record;
use crate::plan::{AccountState, NamespaceState, SecretState};

/// Whether an object at `incoming` may replace one at `cached`. resourceVersions are opaque to
/// clients, but the API server's are etcd revisions: where both read as numbers, an older one
/// (a watch event that arrives after pullkeeper's own write returned a newer version) never
/// replaces a newer one. Anything else replaces.
fn not_older(incoming: Option<&str>, cached: Option<&str>) -> bool {
    match (
        incoming.and_then(|v| v.parse::<u64>().ok()),
        cached.and_then(|v| v.parse::<u64>().ok()),
    ) {
        (Some(i), Some(c)) => i >= c,
        _ => true,
    }
}

/// Per Secret name: how many Secrets of it are this installation's or someone else's, and how
/// many ServiceAccounts list it as an entry pullkeeper recorded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub owned: usize,
    pub foreign: usize,
    pub referencing: usize,
}

/// A namespace as the index keeps it: its labels as a sorted list (a map costs far more for the
/// one or two labels a namespace has).
#[derive(Clone, Debug, PartialEq, Eq)]
struct NamespaceEntry {
    labels: Box<[(Box<str>, Box<str>)]>,
    opted_out: bool,
    terminating: bool,
}

impl NamespaceEntry {
    fn of(state: &NamespaceState) -> Self {
        Self {
            labels: state
                .labels
                .iter()
                .map(|(k, v)| (Box::from(k.as_str()), Box::from(v.as_str())))
                .collect(),
            opted_out: state.opted_out,
            terminating: state.terminating,
        }
    }

    fn state(&self, name: &str) -> NamespaceState {
        NamespaceState {
            name: name.to_string(),
            labels: self
                .labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            opted_out: self.opted_out,
            terminating: self.terminating,
        }
    }
}

#[derive(Default)]
struct Slot {
    namespace: Option<NamespaceEntry>,
    secrets: Vec<SecretState>,
    accounts: Vec<Arc<AccountState>>,
}

impl Slot {
    fn is_empty(&self) -> bool {
        self.namespace.is_none() && self.secrets.is_empty() && self.accounts.is_empty()
    }
}

#[derive(Default)]
struct Inner {
    slots: HashMap<Arc<str>, Slot>,
    counts: HashMap<String, Counts>,
}

/// The names an account counts as referencing: recorded as pullkeeper's and listed.
fn referenced(account: &AccountState) -> BTreeSet<String> {
    let mut names = parse_record(account.record.as_deref());
    names.retain(|n| account.lists(n));
    names
}

impl Inner {
    fn slot(&mut self, namespace: &str) -> &mut Slot {
        self.slots.entry(Arc::from(namespace)).or_default()
    }

    fn tidy(&mut self, namespace: &str) {
        if self.slots.get(namespace).is_some_and(Slot::is_empty) {
            self.slots.remove(namespace);
        }
    }

    fn count_secret(&mut self, secret: &SecretState, delta: isize) {
        let c = self.counts.entry(secret.name.clone()).or_default();
        let n = if secret.owned {
            &mut c.owned
        } else {
            &mut c.foreign
        };
        *n = n.saturating_add_signed(delta);
    }

    fn count_account(&mut self, account: &AccountState, delta: isize) {
        for name in referenced(account) {
            let c = self.counts.entry(name).or_default();
            c.referencing = c.referencing.saturating_add_signed(delta);
        }
    }

    fn put_secret(&mut self, namespace: &str, secret: SecretState) -> bool {
        let slot = self.slot(namespace);
        let at = slot.secrets.iter().position(|s| s.name == secret.name);
        if let Some(cached) = at.map(|i| &slot.secrets[i])
            && (*cached == secret
                || !not_older(
                    secret.resource_version.as_deref(),
                    cached.resource_version.as_deref(),
                ))
        {
            return false;
        }
        self.count_secret(&secret, 1);
        let slot = self.slot(namespace);
        let old = if let Some(i) = at {
            Some(std::mem::replace(&mut slot.secrets[i], secret))
        } else {
            // Most namespaces hold one or two: no room reserved beyond them.
            slot.secrets.reserve_exact(1);
            slot.secrets.push(secret);
            None
        };
        if let Some(old) = old {
            self.count_secret(&old, -1);
        }
        true
    }

    fn remove_secret(&mut self, namespace: &str, name: &str, uid: Option<&str>) -> bool {
        let Some(slot) = self.slots.get_mut(namespace) else {
            return false;
        };
        let Some(i) = slot
            .secrets
            .iter()
            .position(|s| s.name == name && (uid.is_none() || s.uid.as_deref() == uid))
        else {
            return false;
        };
        let old = slot.secrets.swap_remove(i);
        self.count_secret(&old, -1);
        self.tidy(namespace);
        true
    }

    fn put_account(&mut self, namespace: &str, account: AccountState) -> bool {
        let slot = self.slot(namespace);
        let at = slot.accounts.iter().position(|a| a.name == account.name);
        if let Some(cached) = at.map(|i| &slot.accounts[i])
            && (**cached == account
                || !not_older(
                    account.resource_version.as_deref(),
                    cached.resource_version.as_deref(),
                ))
        {
            return false;
        }
        self.count_account(&account, 1);
        let slot = self.slot(namespace);
        let account = Arc::new(account);
        let old = if let Some(i) = at {
            Some(std::mem::replace(&mut slot.accounts[i], account))
        } else {
            slot.accounts.reserve_exact(1);
            slot.accounts.push(account);
            None
        };
        if let Some(old) = old {
            self.count_account(&old, -1);
        }
        true
    }

    fn remove_account(&mut self, namespace: &str, name: &str) -> bool {
        let Some(slot) = self.slots.get_mut(namespace) else {
            return false;
        };
        let Some(i) = slot.accounts.iter().position(|a| a.name == name) else {
            return false;
        };
        let old = slot.accounts.swap_remove(i);
        self.count_account(&old, -1);
        self.tidy(namespace);
        true
    }
}

/// The compact cluster state by namespace (see the module doc).
#[derive(Default)]
pub struct Index {
    inner: RwLock<Inner>,
}

impl Index {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps a namespace (from its metadata watch). Returns whether it changed.
    pub fn put_namespace(&self, state: &NamespaceState) -> bool {
        let entry = NamespaceEntry::of(state);
        let mut inner = self.write();
        let slot = inner.slot(&state.name);
        if slot.namespace.as_ref() == Some(&entry) {
            return false;
        }
        slot.namespace = Some(entry);
        true
    }

    /// Forgets a deleted namespace. Returns whether it was known.
    pub fn remove_namespace(&self, name: &str) -> bool {
        let mut inner = self.write();
        let Some(slot) = inner.slots.get_mut(name) else {
            return false;
        };
        let known = slot.namespace.take().is_some();
        inner.tidy(name);
        known
    }

    /// Replaces every namespace with a fresh listing.
    pub fn replace_namespaces(&self, listed: &[NamespaceState]) {
        let mut inner = self.write();
        let names: Vec<Arc<str>> = inner.slots.keys().cloned().collect();
        for name in names {
            if let Some(slot) = inner.slots.get_mut(&name) {
                slot.namespace = None;
            }
            inner.tidy(&name);
        }
        for state in listed {
            inner.slot(&state.name).namespace = Some(NamespaceEntry::of(state));
        }
    }

    /// One namespace, when it exists.
    pub fn namespace_state(&self, name: &str) -> Option<NamespaceState> {
        let inner = self.read();
        let (key, slot) = inner.slots.get_key_value(name)?;
        slot.namespace.as_ref().map(|n| n.state(key))
    }

    /// The names of every namespace.
    pub fn namespace_names(&self) -> Vec<Arc<str>> {
        self.read()
            .slots
            .iter()
            .filter(|(_, s)| s.namespace.is_some())
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// How many namespaces exist.
    pub fn namespace_count(&self) -> usize {
        self.read()
            .slots
            .values()
            .filter(|s| s.namespace.is_some())
            .count()
    }

    /// The Secrets and ServiceAccounts of one namespace.
    pub fn namespace(&self, namespace: &str) -> (Vec<SecretState>, Vec<Arc<AccountState>>) {
        self.read()
            .slots
            .get(namespace)
            .map(|s| (s.secrets.clone(), s.accounts.clone()))
            .unwrap_or_default()
    }

    /// One ServiceAccount.
    pub fn account(&self, namespace: &str, name: &str) -> Option<Arc<AccountState>> {
        self.read()
            .slots
            .get(namespace)?
            .accounts
            .iter()
            .find(|a| a.name == name)
            .cloned()
    }

    /// The names of the Secrets in one namespace.
    pub fn secret_names(&self, namespace: &str) -> Vec<String> {
        self.read()
            .slots
            .get(namespace)
            .map(|s| s.secrets.iter().map(|s| s.name.clone()).collect())
            .unwrap_or_default()
    }

    /// Keeps a Secret (from a watch event or a write's response). Returns whether it changed.
    pub fn put_secret(&self, namespace: &str, secret: SecretState) -> bool {
        self.write().put_secret(namespace, secret)
    }

    /// Forgets a deleted Secret, if the one cached has this UID (a newer one of the same name
    /// that pullkeeper already created stays).
    pub fn remove_secret(&self, namespace: &str, name: &str, uid: Option<&str>) -> bool {
        self.write().remove_secret(namespace, name, uid)
    }

    /// Replaces every Secret of one name with a fresh listing of that name.
    pub fn replace_secrets_named(&self, name: &str, listed: Vec<(String, SecretState)>) {
        let mut inner = self.write();
        inner.forget_named(name);
        for (namespace, secret) in listed {
            inner.put_secret(&namespace, secret);
        }
    }

    /// Forgets every Secret of one name (its watch stopped).
    pub fn forget_secrets_named(&self, name: &str) {
        self.write().forget_named(name);
    }

    /// Keeps a ServiceAccount. Returns whether it changed.
    pub fn put_account(&self, namespace: &str, account: AccountState) -> bool {
        self.write().put_account(namespace, account)
    }

    pub fn remove_account(&self, namespace: &str, name: &str) -> bool {
        self.write().remove_account(namespace, name)
    }

    /// Replaces every ServiceAccount with a fresh listing.
    pub fn replace_accounts(&self, listed: Vec<(String, AccountState)>) {
        let mut inner = self.write();
        let namespaces: Vec<Arc<str>> = inner.slots.keys().cloned().collect();
        for ns in namespaces {
            if let Some(slot) = inner.slots.get_mut(&ns) {
                let old = std::mem::take(&mut slot.accounts);
                for a in old {
                    inner.count_account(&a, -1);
                }
            }
            inner.tidy(&ns);
        }
        for (namespace, account) in listed {
            inner.put_account(&namespace, account);
        }
    }

    /// The counts of one Secret name.
    pub fn counts(&self, secret: &str) -> Counts {
        self.read().counts.get(secret).copied().unwrap_or_default()
    }

    /// The Secret names this installation recorded as its entries on any ServiceAccount that
    /// still lists them.
    pub fn recorded_names(&self) -> BTreeSet<String> {
        self.read()
            .counts
            .iter()
            .filter(|(_, c)| c.referencing > 0)
            .map(|(n, _)| n.clone())
            .collect()
    }
}

impl Inner {
    fn forget_named(&mut self, name: &str) {
        let namespaces: Vec<Arc<str>> = self
            .slots
            .iter()
            .filter(|(_, s)| s.secrets.iter().any(|s| s.name == name))
            .map(|(ns, _)| ns.clone())
            .collect();
        for ns in namespaces {
            if let Some(slot) = self.slots.get_mut(&ns)
                && let Some(i) = slot.secrets.iter().position(|s| s.name == name)
            {
                let old = slot.secrets.swap_remove(i);
                self.count_secret(&old, -1);
            }
            self.tidy(&ns);
        }
        if let Some(c) = self.counts.get_mut(name) {
            c.owned = 0;
            c.foreign = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(name: &str, rv: &str, owned: bool) -> SecretState {
        SecretState {
            name: name.into(),
            uid: Some(format!("uid-{name}-{rv}")),
            resource_version: Some(rv.into()),
            owned,
            ..SecretState::default()
        }
    }

    fn account(name: &str, rv: &str, listed: &[&str], record: Option<&str>) -> AccountState {
        AccountState {
            name: name.into(),
            resource_version: Some(rv.into()),
            pull_secrets: Some(listed.iter().map(|s| (*s).to_string()).collect()),
            record: record.map(String::from),
            has_annotations: record.is_some(),
        }
    }

    #[test]
    fn an_older_watch_event_never_replaces_a_newer_write() {
        let index = Index::default();
        assert!(index.put_account("a", account("default", "10", &["p"], Some("p"))));
        // The watch delivers the version before pullkeeper's patch after the patch returned.
        assert!(!index.put_account("a", account("default", "9", &[], None)));
        assert_eq!(
            index.account("a", "default").map(|a| a.lists("p")),
            Some(true)
        );
        // Its own echo changes nothing; a newer change by someone else replaces it.
        assert!(!index.put_account("a", account("default", "10", &["p"], Some("p"))));
        assert!(index.put_account("a", account("default", "11", &["x", "p"], Some("p"))));
    }

    #[test]
    fn counts_follow_every_change_without_a_recount() {
        let index = Index::default();
        index.put_secret("a", secret("pull", "1", true));
        index.put_secret("b", secret("pull", "2", false));
        index.put_account("a", account("default", "3", &["pull"], Some("pull")));
        index.put_account("b", account("default", "4", &["pull"], None));
        assert_eq!(
            index.counts("pull"),
            Counts {
                owned: 1,
                foreign: 1,
                referencing: 1
            }
        );
        assert_eq!(index.recorded_names(), BTreeSet::from(["pull".to_string()]));
        index.put_account("a", account("default", "5", &[], None));
        index.remove_secret("a", "pull", Some("uid-pull-1"));
        assert_eq!(
            index.counts("pull"),
            Counts {
                owned: 0,
                foreign: 1,
                referencing: 0
            }
        );
        index.replace_secrets_named("pull", vec![("c".into(), secret("pull", "7", true))]);
        assert_eq!(index.counts("pull").owned, 1);
        assert_eq!(index.counts("pull").foreign, 0);
        assert!(index.secret_names("b").is_empty());
        index.replace_accounts(vec![(
            "c".into(),
            account("default", "8", &["pull"], Some("pull")),
        )]);
        assert_eq!(index.counts("pull").referencing, 1);
        assert!(index.account("b", "default").is_none());
    }

    #[test]
    fn namespaces_come_and_go_with_their_labels_and_keep_their_objects_apart() {
        let index = Index::default();
        let ns = NamespaceState {
            name: "team-a".into(),
            labels: [("team".to_string(), "payments".to_string())].into(),
            ..NamespaceState::default()
        };
        assert!(index.put_namespace(&ns));
        assert!(
            !index.put_namespace(&ns),
            "an unchanged namespace is no change"
        );
        index.put_secret("team-a", secret("pull", "1", true));
        assert_eq!(index.namespace_state("team-a"), Some(ns.clone()));
        assert!(index.remove_namespace("team-a"));
        assert_eq!(index.namespace_state("team-a"), None);
        assert_eq!(index.secret_names("team-a"), vec!["pull".to_string()]);
        index.replace_namespaces(&[ns]);
        assert_eq!(index.namespace_names().len(), 1);
        assert_eq!(index.namespace_count(), 1);
    }

    #[test]
    fn a_delete_of_an_older_secret_keeps_the_one_created_since() {
        let index = Index::default();
        index.put_secret("a", secret("pull", "20", true));
        assert!(!index.remove_secret("a", "pull", Some("uid-pull-10")));
        assert_eq!(index.secret_names("a"), vec!["pull".to_string()]);
        assert!(index.remove_secret("a", "pull", Some("uid-pull-20")));
    }
}
