//! Configuration: one YAML file per registry in a directory, plus an optional `defaults.yaml`.
//!
//! Files are parsed into raw serde types (unknown fields rejected; every shape problem of a file
//! reported, see `shape.rs`), then validated into typed config. Validation reports every problem at once, each naming its file and field; a directory
//! with any problem is rejected as a whole, so a bad reload never replaces a running config.

mod cron_expr;
pub mod raw;
pub mod schema;
mod selector;
mod shape;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

pub use crate::problems::{FieldProblems, Problem};
pub use cron_expr::parse_cron;
pub use selector::{LabelSelector, glob_match};

use crate::ownership::{RESERVED_PREFIXES, SYSTEM_NAMESPACE_PREFIX};
use crate::providers::ProviderSpec;
use crate::verify::VerifySpec;
use raw::{RawDefaults, RawNamespaces, RawRefresh, RawRegistry};

/// The longest refresh duration accepted: longer ones mean nothing to a rotation schedule and
/// would take the scheduler's times past the calendar's end.
const MAX_REFRESH_DURATION: Duration = Duration::from_hours(24 * 3650);

/// The largest config file read: a ConfigMap holds at most 1 MiB, and a bigger file is not a
/// registry file written by hand.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Name of the optional daemon-wide defaults file inside the config directory.
pub const DEFAULTS_FILE: &str = "defaults.yaml";

/// A validated configuration: every registry pullkeeper manages.
#[derive(Clone, Debug)]
pub struct Config {
    pub registries: Vec<Arc<Registry>>,
    /// Hash of every file read; a reload with the same fingerprint is a no-op.
    pub fingerprint: String,
}

/// One registry, validated.
#[derive(Clone, Debug)]
pub struct Registry {
    /// Bounded identifier (from `name` or the file stem), used in labels and metrics.
    pub name: String,
    pub file: PathBuf,
    /// Hash of the registry file and the defaults file: equal hashes mean an unchanged source.
    pub source_hash: String,
    pub provider: ProviderSpec,
    pub servers: Vec<String>,
    pub secret_name: String,
    pub namespaces: NamespaceTargets,
    pub service_accounts: ServiceAccountTargets,
    pub refresh: RefreshPolicy,
    pub verify: Option<VerifySpec>,
    pub secret_labels: BTreeMap<String, String>,
}

/// Which namespaces get the Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceTargets {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub selector: LabelSelector,
}

impl NamespaceTargets {
    /// Whether a namespace with this name and these labels is in scope: some `include` pattern
    /// matches it (an exact name is a pattern without wildcards), no `exclude` pattern does, and
    /// every `selector` requirement holds. A `kube-*` namespace must also be named exactly in
    /// `include`: a glob never reaches the system namespaces.
    pub fn matches(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        self.miss(name, labels).is_none()
    }

    /// Which of these rules leaves the namespace out, or `None` when [`Self::matches`] holds.
    pub fn miss(&self, name: &str, labels: &BTreeMap<String, String>) -> Option<TargetMiss> {
        if name.starts_with(SYSTEM_NAMESPACE_PREFIX) {
            if !self.include.iter().any(|p| p == name) {
                return Some(TargetMiss::SystemNotNamed);
            }
        } else if !self.include.iter().any(|p| glob_match(p, name)) {
            return Some(TargetMiss::NotIncluded);
        }
        if let Some(p) = self.exclude.iter().find(|p| glob_match(p, name)) {
            return Some(TargetMiss::Excluded(p.clone()));
        }
        if !self.selector.matches(labels) {
            return Some(TargetMiss::Selector);
        }
        None
    }
}

/// The rule of [`NamespaceTargets`] that leaves a namespace out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetMiss {
    /// A `kube-*` namespace not named exactly in `include`.
    SystemNotNamed,
    /// No `include` pattern matches.
    NotIncluded,
    /// This `exclude` pattern matches.
    Excluded(String),
    /// The labels do not satisfy `selector`.
    Selector,
}

/// Which `ServiceAccounts` reference the Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceAccountTargets {
    Names(BTreeSet<String>),
    /// Every `ServiceAccount` in the namespace (written `["*"]`).
    All,
}

impl ServiceAccountTargets {
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Self::All => true,
            Self::Names(names) => names.contains(name),
        }
    }
}

/// When a registry's credential is renewed (see `schedule.rs`).
#[derive(Clone, Debug)]
pub struct RefreshPolicy {
    pub schedule: Option<cron::Schedule>,
    pub renew_at: f64,
    pub min_interval: Duration,
    pub max_interval: Duration,
    pub jitter: f64,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub default_lifetime: Duration,
}

/// Reads and validates a config directory, including that every file it names can be read.
/// On failure, returns every problem found.
pub fn load_dir(dir: &Path) -> Result<Config, Vec<Problem>> {
    load_dir_with(dir, true)
}

/// [`load_dir`], optionally without checking that the files the config names exist (to
/// validate, outside the pod, a config whose mounted files exist only inside it).
pub fn load_dir_with(dir: &Path, check_files: bool) -> Result<Config, Vec<Problem>> {
    load_files(&list_files(dir)?, check_files)
}

/// Validates config files already read, as (path, text) sorted by path: what [`load_dir_with`]
/// does after reading the directory (the fuzz targets start here).
pub fn load_files(files: &[(PathBuf, String)], check_files: bool) -> Result<Config, Vec<Problem>> {
    let mut hasher = Sha256::new();
    let mut problems = Vec::new();
    let mut defaults = RawDefaults::default();
    let mut raws = Vec::new();
    let defaults_text = files
        .iter()
        .find(|(p, _)| p.file_name().is_some_and(|n| n == DEFAULTS_FILE))
        .map_or("", |(_, t)| t.as_str());
    for (path, text) in files {
        hasher.update(path.as_os_str().as_encoded_bytes());
        hasher.update([0]);
        hasher.update(text.as_bytes());
        hasher.update([0]);
        let is_defaults = path.file_name().is_some_and(|n| n == DEFAULTS_FILE);
        if is_defaults {
            match shape::parse::<RawDefaults>(path, text, false) {
                Ok(d) => defaults = d,
                Err(p) => problems.extend(p),
            }
        } else {
            match shape::parse::<RawRegistry>(path, text, true) {
                Ok(r) => {
                    let source = hex::encode(Sha256::digest(format!("{text}\0{defaults_text}")));
                    raws.push((path.clone(), source, r));
                }
                Err(p) => problems.extend(p),
            }
        }
    }
    let defaults_path = files
        .iter()
        .map(|(p, _)| p.as_path())
        .find(|p| p.file_name().is_some_and(|n| n == DEFAULTS_FILE))
        .map_or_else(|| PathBuf::from(DEFAULTS_FILE), Path::to_path_buf);
    let mut registries = Vec::new();
    for (path, source_hash, raw) in raws {
        match validate_registry(
            &path,
            source_hash,
            raw,
            (&defaults, &defaults_path),
            check_files,
        ) {
            Ok(r) => registries.push(r),
            Err(p) => problems.extend(p),
        }
    }
    problems.extend(cross_check(&registries));
    // A defaults value every registry inherits is reported by each: once is enough.
    let mut seen = BTreeSet::new();
    problems.retain(|p| seen.insert(p.to_string()));
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Config {
        registries: registries.into_iter().map(Arc::new).collect(),
        fingerprint: hex::encode(hasher.finalize()),
    })
}

/// The YAML files of a config directory, sorted by name. Hidden entries (a mounted `ConfigMap`'s
/// `..data` and timestamped directories) are skipped; symlinks are followed.
fn list_files(dir: &Path) -> Result<Vec<(PathBuf, String)>, Vec<Problem>> {
    let whole = |message: String| {
        vec![Problem {
            file: dir.to_path_buf(),
            field: String::new(),
            message,
        }]
    };
    let entries =
        std::fs::read_dir(dir).map_err(|e| whole(format!("cannot read directory: {e}")))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or(".");
            let yaml = p
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"));
            !name.starts_with('.') && yaml
        })
        .collect();
    paths.sort();
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for path in paths {
        // A registry file that cannot be read is a problem, never a file that is not there: a
        // dangling symlink (a ConfigMap swap caught half-way) must not read as a removed
        // registry, whose Secrets the daemon would prune.
        let unreadable = match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => continue,
            Ok(m) if m.is_file() => None,
            Ok(_) => Some("not a regular file".to_string()),
            Err(e) => Some(match std::fs::read_link(&path) {
                Ok(target) => format!(
                    "a symlink to {}, which cannot be read: {e}",
                    target.display()
                ),
                Err(_) => e.to_string(),
            }),
        };
        if let Some(why) = unreadable {
            problems.push(Problem {
                file: path,
                field: String::new(),
                message: format!("cannot read file: {why}"),
            });
            continue;
        }
        match read_text(&path) {
            Ok(text) => files.push((path, text)),
            Err(message) => problems.push(Problem {
                file: path,
                field: String::new(),
                message,
            }),
        }
    }
    if problems.is_empty() {
        Ok(files)
    } else {
        Err(problems)
    }
}

/// A config file's text: at most [`MAX_FILE_BYTES`], UTF-8. The size is checked while reading,
/// so a file growing (or a device) is not read whole.
fn read_text(path: &Path) -> Result<String, String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read file: {e}"))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read file: {e}"))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!(
            "larger than {} KiB; a config file is at most that (a ConfigMap's limit)",
            MAX_FILE_BYTES / 1024
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "not UTF-8 text (the first bad byte is at offset {}); save it as UTF-8",
            e.utf8_error().valid_up_to()
        )
    })
}

fn validate_registry(
    path: &Path,
    source_hash: String,
    raw: RawRegistry,
    (defaults, defaults_path): (&RawDefaults, &Path),
    check_files: bool,
) -> Result<Registry, Vec<Problem>> {
    let mut p = FieldProblems::new(path).with_file_checks(check_files);
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_string();
    let name = raw.name.clone().unwrap_or(stem);
    if !is_dns_label(&name) {
        p.push(
            if raw.name.is_some() { "name" } else { "" },
            format!(
                "registry name {name:?} must be a DNS label (lowercase letters, digits, '-'; at most 63); \
                 set `name` or rename the file"
            ),
        );
    }
    p.scoped("provider", |p| raw.provider.validate(p));
    if !is_dns_subdomain(&raw.secret_name) {
        p.push(
            "secretName",
            format!("{:?} is not a valid Secret name", raw.secret_name),
        );
    }
    if raw.servers.is_empty() && !raw.provider.provides_servers() {
        p.push(
            "servers",
            "list at least one registry host: this provider does not name one",
        );
    }
    for (i, server) in raw.servers.iter().enumerate() {
        if let Err(why) = check_server(server) {
            p.push(format!("servers[{i}]"), why);
        } else if let Some(why) = raw.provider.server_problem(server) {
            p.push(format!("servers[{i}]"), why);
        }
    }
    // Problems of values inherited from the defaults file are that file's (once: the caller
    // drops the copies other registry files report).
    let mut dp = FieldProblems::new(defaults_path).with_file_checks(check_files);
    let namespaces = match &raw.namespaces {
        Some(own) => namespaces(Some(own), &mut p),
        None => namespaces(defaults.namespaces.as_ref(), &mut dp),
    };
    let service_accounts = match &raw.service_accounts {
        Some(own) => service_accounts(Some(own), &mut p),
        None => service_accounts(defaults.service_accounts.as_ref(), &mut dp),
    };
    let refresh = refresh(
        raw.refresh.as_ref(),
        defaults.refresh.as_ref(),
        raw.provider.default_lifetime(),
        &mut p,
        &mut dp,
    );
    if let Some(v) = &raw.verify {
        p.scoped("verify", |p| v.validate(p));
    }
    for (k, v) in &raw.secret_labels {
        if RESERVED_PREFIXES.iter().any(|r| k.starts_with(r)) {
            p.push(
                format!("secretLabels.{k}"),
                "this label is reserved for pullkeeper",
            );
        }
        if v.len() > 63 {
            p.push(
                format!("secretLabels.{k}"),
                "label values are at most 63 characters",
            );
        }
    }
    if !p.is_empty() || !dp.is_empty() {
        let mut all = p.into_vec();
        all.extend(dp.into_vec());
        return Err(all);
    }
    Ok(Registry {
        name,
        file: path.to_path_buf(),
        source_hash,
        provider: raw.provider,
        servers: raw.servers,
        secret_name: raw.secret_name,
        namespaces,
        service_accounts,
        refresh,
        verify: raw.verify,
        secret_labels: raw.secret_labels,
    })
}

fn namespaces(raw: Option<&RawNamespaces>, p: &mut FieldProblems) -> NamespaceTargets {
    let raw = raw.cloned().unwrap_or_default();
    let include = raw.include.unwrap_or_else(|| vec!["*".to_string()]);
    if include.is_empty() {
        p.push(
            "namespaces.include",
            "an empty list selects no namespace; omit it to mean all",
        );
    }
    let selector = match raw.selector.as_deref().map(LabelSelector::from_str) {
        None => LabelSelector::default(),
        Some(Ok(s)) => s,
        Some(Err(why)) => {
            p.push("namespaces.selector", why);
            LabelSelector::default()
        }
    };
    let exclude = raw.exclude.unwrap_or_default();
    for (field, list) in [("include", &include), ("exclude", &exclude)] {
        for (i, pattern) in list.iter().enumerate() {
            if !is_namespace_pattern(pattern) {
                p.push(
                    format!("namespaces.{field}[{i}]"),
                    format!(
                        "{pattern:?} can never match a namespace name: use lowercase letters, \
                         digits and '-', with `*` for any run and `?` for one character"
                    ),
                );
            }
        }
    }
    NamespaceTargets {
        include,
        exclude,
        selector,
    }
}

fn service_accounts(raw: Option<&Vec<String>>, p: &mut FieldProblems) -> ServiceAccountTargets {
    let Some(list) = raw else {
        return ServiceAccountTargets::Names(BTreeSet::from(["default".to_string()]));
    };
    if list.iter().any(|n| n == "*") {
        if list.len() > 1 {
            p.push(
                "serviceAccounts",
                "\"*\" means every ServiceAccount; list nothing else with it",
            );
        }
        return ServiceAccountTargets::All;
    }
    if list.is_empty() {
        p.push(
            "serviceAccounts",
            "list at least one ServiceAccount (or \"*\")",
        );
    }
    for (i, n) in list.iter().enumerate() {
        if !is_dns_subdomain(n) {
            p.push(
                format!("serviceAccounts[{i}]"),
                format!("{n:?} is not a valid ServiceAccount name"),
            );
        }
    }
    ServiceAccountTargets::Names(list.iter().cloned().collect())
}

/// Where a value's problem goes: the registry file's list when the value is its own, else the
/// defaults file's.
fn origin<'a>(
    own: bool,
    p: &'a mut FieldProblems,
    dp: &'a mut FieldProblems,
) -> &'a mut FieldProblems {
    if own { p } else { dp }
}

/// One refresh duration (`field` in `refresh`), or its problem reported and `None`.
fn refresh_duration(field: &str, text: &str, p: &mut FieldProblems) -> Option<Duration> {
    match humantime::parse_duration(text) {
        Ok(d) if d > MAX_REFRESH_DURATION => {
            p.push(
                format!("refresh.{field}"),
                "must be at most 3650d (ten years)",
            );
            None
        }
        Ok(d) if !d.is_zero() => Some(d),
        Ok(_) => {
            p.push(format!("refresh.{field}"), "must be longer than zero");
            None
        }
        Err(e) => {
            p.push(
                format!("refresh.{field}"),
                format!("{text:?} is not a duration like \"90s\" or \"6h\": {e}"),
            );
            None
        }
    }
}

/// The refresh policy from the registry file's `refresh`, field by field over the defaults
/// file's. A value's own problem is reported in the file it is written in (`dp`: the defaults
/// file); one between two values, in the registry file.
fn refresh(
    raw: Option<&RawRefresh>,
    defaults: Option<&RawRefresh>,
    provider_lifetime: Duration,
    p: &mut FieldProblems,
    dp: &mut FieldProblems,
) -> RefreshPolicy {
    let empty = RawRefresh::default();
    let (r, d) = (raw.unwrap_or(&empty), defaults.unwrap_or(&empty));
    let mut duration =
        |field: &str, own: &Option<String>, def: &Option<String>, fallback: Duration| {
            let (text, p) = match (own, def) {
                (Some(text), _) => (text, &mut *p),
                (None, Some(text)) => (text, &mut *dp),
                (None, None) => return fallback,
            };
            refresh_duration(field, text, p).unwrap_or(fallback)
        };
    let min_interval = duration(
        "minInterval",
        &r.min_interval,
        &d.min_interval,
        Duration::from_mins(1),
    );
    let max_interval = duration(
        "maxInterval",
        &r.max_interval,
        &d.max_interval,
        Duration::from_hours(24),
    );
    let backoff_initial = duration(
        "backoffInitial",
        &r.backoff_initial,
        &d.backoff_initial,
        Duration::from_secs(10),
    );
    let backoff_max = duration(
        "backoffMax",
        &r.backoff_max,
        &d.backoff_max,
        Duration::from_mins(5),
    );
    let default_lifetime = duration(
        "defaultLifetime",
        &r.default_lifetime,
        &d.default_lifetime,
        provider_lifetime,
    );
    if min_interval > max_interval {
        p.push("refresh.minInterval", "must not be longer than maxInterval");
    }
    if backoff_initial > backoff_max {
        p.push(
            "refresh.backoffInitial",
            "must not be longer than backoffMax",
        );
    }
    let renew_at = r.renew_at.or(d.renew_at).unwrap_or(2.0 / 3.0);
    if !(renew_at > 0.0 && renew_at < 1.0) {
        origin(r.renew_at.is_some(), p, dp).push(
            "refresh.renewAt",
            format!("{renew_at} must be a fraction of the lifetime between 0 and 1"),
        );
    }
    let jitter = r.jitter.or(d.jitter).unwrap_or(0.1);
    if !(0.0..0.5).contains(&jitter) {
        origin(r.jitter.is_some(), p, dp).push(
            "refresh.jitter",
            format!("{jitter} must be at least 0 and below 0.5"),
        );
    }
    let schedule = match r.schedule.as_ref().or(d.schedule.as_ref()) {
        None => None,
        Some(expr) => match parse_cron(expr) {
            Ok(s) => Some(s),
            Err(why) => {
                origin(r.schedule.is_some(), p, dp).push("refresh.schedule", why);
                None
            }
        },
    };
    RefreshPolicy {
        schedule,
        renew_at,
        min_interval,
        max_interval,
        jitter,
        backoff_initial,
        backoff_max,
        default_lifetime,
    }
}

/// Problems spanning files: duplicate registry names, and two registries that could write the
/// same Secret into the same namespace.
fn cross_check(registries: &[Registry]) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (i, a) in registries.iter().enumerate() {
        for b in &registries[..i] {
            if a.name == b.name {
                problems.push(Problem {
                    file: a.file.clone(),
                    field: "name".into(),
                    message: format!(
                        "registry name {:?} is also used by {}",
                        a.name,
                        b.file.display()
                    ),
                });
            }
            if a.secret_name == b.secret_name && could_overlap(&a.namespaces, &b.namespaces) {
                problems.push(Problem {
                    file: a.file.clone(),
                    field: "secretName".into(),
                    message: format!(
                        "Secret {:?} is also written by {} into namespaces this file selects too; \
                         give one a different secretName or make their namespace lists disjoint",
                        a.secret_name,
                        b.file.display()
                    ),
                });
            }
        }
    }
    problems
}

/// Conservative: two targets are disjoint only when both name exact namespaces (no globs) and
/// share none.
fn could_overlap(a: &NamespaceTargets, b: &NamespaceTargets) -> bool {
    let exact = |t: &NamespaceTargets| t.include.iter().all(|p| !p.contains(['*', '?']));
    if exact(a) && exact(b) {
        return a.include.iter().any(|n| b.include.contains(n));
    }
    true
}

fn check_server(server: &str) -> Result<(), String> {
    if server.contains("://") {
        return Err(format!(
            "{server:?}: write the bare host[:port], without a scheme"
        ));
    }
    if server.trim().is_empty() || server.contains(['/', ' ']) {
        return Err(format!("{server:?} is not a host[:port]"));
    }
    if let Some((_, port)) = server.rsplit_once(':')
        && port.parse::<u16>().is_err()
    {
        return Err(format!("{server:?} has an invalid port"));
    }
    Ok(())
}

/// A namespace name or glob that some namespace name could match: 1 to 63 characters of
/// lowercase letters, digits, '-' and the wildcards `*` and `?`.
fn is_namespace_pattern(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'*' | b'?')
        })
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// How a config directory is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// Require the files the config names (mounted Secrets, token files, CAs) to exist now.
    pub check_files: bool,
    /// Accept a directory without any registry file. Off by default: a daemon running such a
    /// config prunes every Secret and `ServiceAccount` entry it manages.
    pub allow_empty: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            check_files: true,
            allow_empty: false,
        }
    }
}

/// Reads and validates a config directory with `options` (see [`load_dir_with`]); a directory
/// without any registry file is refused unless `options.allow_empty`.
pub fn load(dir: &Path, options: LoadOptions) -> Result<Config, Vec<Problem>> {
    let config = load_dir_with(dir, options.check_files)?;
    if config.registries.is_empty() && !options.allow_empty {
        return Err(vec![Problem {
            file: dir.to_path_buf(),
            field: String::new(),
            message: "no registry file (*.yaml besides defaults.yaml) in the directory; running \
                      with none would prune every Secret and ServiceAccount entry pullkeeper \
                      manages. Pass --allow-empty-config if that is what you want"
                .into(),
        }]);
    }
    Ok(config)
}

#[cfg(test)]
mod tests;
