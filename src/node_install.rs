//! `pullkeeper node-install`: puts the credential-provider route on a node from a DaemonSet Pod.
//! The pullkeeper image has no shell, so pullkeeper does the copying itself: its own executable
//! into the kubelet's credential-provider bin dir, the registry files of its config directory
//! (a ConfigMap) into a directory of its own on the node, and its `providers` entry into the
//! `CredentialProviderConfig` the kubelet already reads — replacing only the entry named
//! `pullkeeper` and leaving every other provider as it was.
//!
//! The rules are pure ([`merge_provider_config`], [`Entry::to_value`]); [`install`] does the
//! file I/O, each write atomic (a temporary file in the same directory, then a rename) and only
//! when the content differs, so a second run changes nothing. It cannot change the kubelet's
//! flags: the kubelet must already be started with `--image-credential-provider-config` and
//! `--image-credential-provider-bin-dir` naming those paths.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::config::{self, LoadOptions};

/// The entry's name: the kubelet runs the executable of this name in its bin dir.
pub const PROVIDER_NAME: &str = "pullkeeper";
/// The only `CredentialProviderConfig` version this merges into.
pub const CONFIG_API_VERSION: &str = "kubelet.config.k8s.io/v1";
pub const CONFIG_KIND: &str = "CredentialProviderConfig";

/// pullkeeper's `providers` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The kubelet's `matchImages` patterns: which images reach the plugin.
    pub match_images: Vec<String>,
    /// The registry files' directory as the kubelet sees it (a path on the node).
    pub node_config_dir: PathBuf,
    /// Used by the kubelet only when a response gives none (pullkeeper always gives one).
    pub default_cache_duration: String,
}

impl Entry {
    /// The entry as it is written into `providers`.
    pub fn to_value(&self) -> Value {
        json!({
            "name": PROVIDER_NAME,
            "apiVersion": crate::credential_provider::API_VERSION,
            "matchImages": self.match_images,
            "defaultCacheDuration": self.default_cache_duration,
            "args": [
                "credential-provider",
                "--config",
                self.node_config_dir.display().to_string(),
            ],
        })
    }
}

/// Why nothing was installed. Each names the file concerned; none carries file content.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(
        "{file} is not a {CONFIG_KIND} ({found}); refusing to change it (expected apiVersion {CONFIG_API_VERSION}, kind {CONFIG_KIND})"
    )]
    NotProviderConfig { file: String, found: String },
    #[error("{file} is neither YAML nor JSON: {reason}")]
    Parse { file: String, reason: String },
    #[error("{file}: `providers` is not a list; refusing to change it")]
    ProvidersNotList { file: String },
    #[error("config {dir} is invalid: {problems}")]
    Config { dir: String, problems: String },
    #[error("--match-images names no pattern: the kubelet would send no image to the plugin")]
    NoMatchImages,
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// How the merged file is written: as the existing one was (a file starting with `{` is JSON),
/// else by its extension.
fn is_json(file: &Path, existing: Option<&str>) -> bool {
    match existing {
        Some(text) => text.trim_start().starts_with('{'),
        None => file.extension().is_some_and(|e| e == "json"),
    }
}

/// The provider config with pullkeeper's entry: `Ok(None)` when `existing` already has exactly
/// that entry (nothing to write), else the new text. `existing` is `None` for an absent file
/// (then a config with only pullkeeper's entry). pullkeeper's entry keeps its place; every other
/// provider and field is kept (YAML comments and key order are not: the file is rewritten from
/// its parsed form).
pub fn merge_provider_config(
    file: &Path,
    existing: Option<&str>,
    entry: &Entry,
) -> Result<Option<String>, InstallError> {
    let name = file.display().to_string();
    let current: Option<Value> = existing
        .map(|text| {
            serde_yaml_ng::from_str::<Value>(text).map_err(|e| InstallError::Parse {
                file: name.clone(),
                reason: e.to_string(),
            })
        })
        .transpose()?;
    let mut merged = match &current {
        None => json!({
            "apiVersion": CONFIG_API_VERSION,
            "kind": CONFIG_KIND,
            "providers": [],
        }),
        Some(doc) => {
            let field = |key: &str| doc.get(key).and_then(Value::as_str).unwrap_or("");
            if !doc.is_object()
                || field("apiVersion") != CONFIG_API_VERSION
                || field("kind") != CONFIG_KIND
            {
                let found = if doc.is_object() {
                    format!(
                        "apiVersion {:?}, kind {:?}",
                        field("apiVersion"),
                        field("kind")
                    )
                } else {
                    "not a mapping".to_string()
                };
                return Err(InstallError::NotProviderConfig { file: name, found });
            }
            doc.clone()
        }
    };
    let providers = merged
        .as_object_mut()
        .map(|o| o.entry("providers").or_insert_with(|| json!([])))
        .and_then(Value::as_array_mut)
        .ok_or_else(|| InstallError::ProvidersNotList { file: name.clone() })?;
    let ours = entry.to_value();
    let mut placed = false;
    providers.retain_mut(|p| {
        if p.get("name").and_then(Value::as_str) != Some(PROVIDER_NAME) {
            return true;
        }
        if placed {
            return false; // a second pullkeeper entry: the kubelet refuses duplicate names
        }
        placed = true;
        *p = ours.clone();
        true
    });
    if !placed {
        providers.push(ours);
    }
    if current.as_ref() == Some(&merged) {
        return Ok(None);
    }
    let text = if is_json(file, existing) {
        serde_json::to_string_pretty(&merged)
            .map(|t| t + "\n")
            .map_err(|e| e.to_string())
    } else {
        serde_yaml_ng::to_string(&merged).map_err(|e| e.to_string())
    }
    .map_err(|reason| InstallError::Parse { file: name, reason })?;
    Ok(Some(text))
}

/// Where one installation reads and writes. Node paths (`bin_dir`, `provider_config`,
/// `node_config_dir`) are as the kubelet sees them; the process reaches them under
/// `host_prefix` (the DaemonSet mounts each host directory there, e.g. `/host/etc/…`).
#[derive(Clone, Debug)]
pub struct Settings {
    /// The executable to copy (the running one).
    pub exe: PathBuf,
    /// The registry files to install (the mounted ConfigMap).
    pub source_config_dir: PathBuf,
    pub bin_dir: PathBuf,
    pub provider_config: PathBuf,
    pub host_prefix: PathBuf,
    pub entry: Entry,
}

impl Settings {
    /// A node path as this process reaches it.
    pub fn on_host(&self, node_path: &Path) -> PathBuf {
        let relative = node_path.strip_prefix("/").unwrap_or(node_path);
        self.host_prefix.join(relative)
    }
}

/// What one run changed (node paths).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub written: Vec<PathBuf>,
    pub removed: Vec<PathBuf>,
}

impl Report {
    pub fn changed(&self) -> bool {
        !self.written.is_empty() || !self.removed.is_empty()
    }
}

fn read_err(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |source| InstallError::Read {
        path: path.display().to_string(),
        source,
    }
}

fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |source| InstallError::Write {
        path: path.display().to_string(),
        source,
    }
}

/// Reads a file, `None` when it does not exist.
fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, InstallError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(read_err(path)(e)),
    }
}

/// Writes `content` to `path` unless it holds exactly that: a temporary file in the same
/// directory, synced, then renamed over it (the kubelet never execs or reads half a file).
/// Returns whether it wrote.
fn write_if_changed(path: &Path, content: &[u8], mode: u32) -> Result<bool, InstallError> {
    if read_optional(path)?.as_deref() == Some(content) {
        return Ok(false);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.pullkeeper-tmp"));
    let result = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(content)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(write_err(path))?;
    Ok(true)
}

/// The registry files of a config directory: regular files (symlinks followed, as a ConfigMap
/// mount has them) whose names do not start with a dot, by name.
fn config_files(dir: &Path) -> Result<Vec<(String, Vec<u8>)>, InstallError> {
    let mut files = Vec::new();
    for item in fs::read_dir(dir).map_err(read_err(dir))? {
        let item = item.map_err(read_err(dir))?;
        let name = item.file_name().to_string_lossy().into_owned();
        let path = item.path();
        if name.starts_with('.') || !fs::metadata(&path).map_err(read_err(&path))?.is_file() {
            continue;
        }
        files.push((name, fs::read(&path).map_err(read_err(&path))?));
    }
    files.sort();
    Ok(files)
}

/// One installation: the registry files are checked first (an invalid directory installs
/// nothing), then the executable, the registry files (stale ones removed: the directory is
/// pullkeeper's alone), and last the provider config entry.
pub fn install(settings: &Settings) -> Result<Report, InstallError> {
    if settings.entry.match_images.is_empty() {
        return Err(InstallError::NoMatchImages);
    }
    let options = LoadOptions {
        // The files they name are the node's, not this Pod's.
        check_files: false,
        allow_empty: false,
    };
    config::load(&settings.source_config_dir, options).map_err(|problems| {
        InstallError::Config {
            dir: settings.source_config_dir.display().to_string(),
            problems: problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        }
    })?;
    // Decided before anything is written: a provider config pullkeeper may not change stops
    // the whole installation.
    let config_path = settings.on_host(&settings.provider_config);
    let existing = read_optional(&config_path)?
        .map(|bytes| {
            String::from_utf8(bytes).map_err(|_| InstallError::Parse {
                file: settings.provider_config.display().to_string(),
                reason: "not UTF-8".to_string(),
            })
        })
        .transpose()?;
    let merged = merge_provider_config(
        &settings.provider_config,
        existing.as_deref(),
        &settings.entry,
    )?;
    let mut report = Report::default();

    let exe = fs::read(&settings.exe).map_err(read_err(&settings.exe))?;
    let bin = settings.bin_dir.join(PROVIDER_NAME);
    if write_if_changed(&settings.on_host(&bin), &exe, 0o755)? {
        report.written.push(bin);
    }

    let files = config_files(&settings.source_config_dir)?;
    let node_dir = &settings.entry.node_config_dir;
    let host_dir = settings.on_host(node_dir);
    fs::create_dir_all(&host_dir).map_err(write_err(&host_dir))?;
    for (name, content) in &files {
        if write_if_changed(&host_dir.join(name), content, 0o600)? {
            report.written.push(node_dir.join(name));
        }
    }
    for (name, _) in config_files(&host_dir)? {
        if !files.iter().any(|(n, _)| *n == name) {
            let path = host_dir.join(&name);
            fs::remove_file(&path).map_err(write_err(&path))?;
            report.removed.push(node_dir.join(name));
        }
    }

    // Last: the kubelet finds the entry only once the executable and its files are in place.
    if let Some(text) = merged {
        let mode = fs::metadata(&config_path).map_or(0o644, |m| m.permissions().mode() & 0o7777);
        write_if_changed(&config_path, text.as_bytes(), mode)?;
        report.written.push(settings.provider_config.clone());
    }
    Ok(report)
}

#[cfg(test)]
#[path = "node_install/tests.rs"]
mod tests;
