//! Command-line interface: `run`, `once`, `check`, `plan`, `diagnose` and `cleanup`, with
//! environment equivalents.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "pullkeeper",
    version,
    about = "Keeps registry pull credentials fresh in every namespace"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log output format.
    #[arg(long, env = "PULLKEEPER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `pullkeeper=debug`.
    #[arg(long, env = "PULLKEEPER_LOG", default_value = "info", global = true)]
    pub log_filter: String,
}

/// What pullkeeper does about Pods stuck before their credential existed.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum RecoveryMode {
    Off,
    Observe,
    On,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon.
    Run(RunArgs),
    /// Do one full pass (fetch every registry, sync every namespace) and exit; the exit code
    /// says whether everything succeeded.
    Once(RunArgs),
    /// Validate a config directory without touching a cluster; exit 2 when invalid.
    Check {
        #[arg(long, env = "PULLKEEPER_CONFIG")]
        config: PathBuf,
        /// Do not require the files the config names (mounted Secrets, token files, CAs) to
        /// exist: for validating, outside the pod, a config meant for it.
        #[arg(long)]
        no_file_checks: bool,
        /// Accept a directory without any registry file (by default an error: a daemon running
        /// it would prune every Secret it manages).
        #[arg(long, env = "PULLKEEPER_ALLOW_EMPTY_CONFIG")]
        allow_empty_config: bool,
        /// Print, instead of the summary, the ClusterRole `pullkeeper-secrets` that grants
        /// pullkeeper the Secret names of this directory (the base's list to replace).
        #[arg(long)]
        rbac: bool,
    },
    /// Show what `run` would change in the live cluster, without writing: per namespace the
    /// Secrets to create, update or prune, the imagePullSecrets entries to add or remove, and
    /// the same-named Secrets pullkeeper does not own that block a registry there.
    ///
    /// Reads only (list namespaces, serviceaccounts and secrets; get secrets). Without
    /// --fetch no provider is called and credential content is taken as unchanged. No
    /// credential value is ever printed. Exit code: 0 no change, 1 changes, 2 error.
    Plan(PlanArgs),
    /// Explain why Pods cannot pull their images and say the fix, read-only: one Pod
    /// (`-n NS POD`), a namespace (`-n NS`) or every Pod waiting to pull. Exit 0 when nothing
    /// is wrong, 1 when a cause was found, 2 on usage or config errors.
    Diagnose(DiagnoseArgs),
    /// Remove what an installation left behind after its uninstall (`helm uninstall`,
    /// `kubectl delete -k`): every Secret carrying its labels, exactly the imagePullSecrets
    /// entries its ServiceAccount annotation records (other entries stay, in their order) with
    /// that annotation, and its leader-election Lease. Another installation's objects and
    /// Secrets without its labels are never touched.
    ///
    /// Run it after the uninstall, with an admin kubeconfig: a running daemon would write
    /// everything again. It refuses (exit 2) while the Lease `<instance>-leader` is held and
    /// renewed within its duration; a daemon without --leader-elect has no Lease, so nothing
    /// can tell that it still runs. Exit code: 0 nothing (left) to clean, 1 with --dry-run
    /// when something would be removed, 2 on an error or a refusal.
    Cleanup(CleanupArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Directory with one YAML file per registry (and an optional defaults.yaml).
    #[arg(long, env = "PULLKEEPER_CONFIG")]
    pub config: PathBuf,
    /// Kubeconfig file; in-cluster config (or $KUBECONFIG) when absent.
    #[arg(long, env = "PULLKEEPER_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Address of the admin server (`/metrics`, `/livez`, `/readyz`).
    #[arg(long, env = "PULLKEEPER_ADMIN_ADDR", default_value = "0.0.0.0:9090")]
    pub admin_addr: SocketAddr,
    /// How often the config directory is checked for changes.
    #[arg(long, env = "PULLKEEPER_RELOAD_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub reload_interval: Duration,
    /// Namespaces reconciled at once.
    #[arg(long, env = "PULLKEEPER_CONCURRENCY", default_value_t = 8)]
    pub concurrency: u16,
    /// Upper bound on write requests per second to the API server (0: unlimited).
    #[arg(long, env = "PULLKEEPER_WRITES_PER_SECOND", default_value_t = 50.0)]
    pub writes_per_second: f64,
    /// Name of this installation: it owns only Secrets and `ServiceAccount` entries labelled with
    /// it, so several installations can share a cluster.
    #[arg(long, env = "PULLKEEPER_INSTANCE", default_value = "pullkeeper", value_parser = parse_instance)]
    pub instance: String,
    /// Elect a leader among replicas through a Lease named after the instance; only the leader
    /// fetches and writes.
    #[arg(long, env = "PULLKEEPER_LEADER_ELECT", default_value_t = false)]
    pub leader_elect: bool,
    /// Namespace of the leader-election Lease (pullkeeper's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "pullkeeper")]
    pub lease_namespace: String,
    /// This replica's identity in the Lease (the Pod name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Accept a config directory without any registry file, at start and on reload. Without
    /// it such a directory (an emptied `ConfigMap`) is rejected and the running config stays:
    /// running with none would prune every Secret and `ServiceAccount` entry pullkeeper manages.
    #[arg(long, env = "PULLKEEPER_ALLOW_EMPTY_CONFIG", default_value_t = false)]
    pub allow_empty_config: bool,
    /// How often every namespace is looked at even without a watch event (0s: never). Bounds
    /// how long any change can wait, however busy a namespace's objects are.
    #[arg(long, env = "PULLKEEPER_RESYNC_INTERVAL", default_value = "10m", value_parser = humantime::parse_duration)]
    pub resync_interval: Duration,
    /// Pods stuck in `ErrImagePull`/`ImagePullBackOff` on a managed registry because they were
    /// created before their `ServiceAccount` listed the Secret: `off` (default) ignores Pods,
    /// `observe` counts them (`pullkeeper_pods_stuck`) and `on` also deletes those owned by a
    /// `ReplicaSet`, `StatefulSet`, `DaemonSet` or Job so they are recreated with the reference.
    /// Needs the optional pod-recovery RBAC.
    #[arg(long, env = "PULLKEEPER_POD_RECOVERY", value_enum, default_value_t = RecoveryMode::Off)]
    pub pod_recovery: RecoveryMode,
    /// How often stuck Pods are looked for.
    #[arg(long, env = "PULLKEEPER_RECOVERY_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub recovery_interval: Duration,
    /// Most stuck Pods deleted per minute, across registries.
    #[arg(long, env = "PULLKEEPER_RECOVERY_PER_MINUTE", default_value_t = 20)]
    pub recovery_per_minute: u32,
    /// Most stuck Pods deleted per minute for one registry.
    #[arg(
        long,
        env = "PULLKEEPER_RECOVERY_PER_REGISTRY_PER_MINUTE",
        default_value_t = 10
    )]
    pub recovery_per_registry_per_minute: u32,
    /// Largest share of one owner's stuck Pods deleted in one round (at least one is).
    #[arg(long, env = "PULLKEEPER_RECOVERY_MAX_SHARE", default_value_t = 0.5)]
    pub recovery_max_share: f64,
    /// Time limit of one provider call.
    #[arg(long, env = "PULLKEEPER_FETCH_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub fetch_timeout: Duration,
    /// How long `once` waits for its watches to list (an unreachable API server or a watch the
    /// role forbids then ends it with exit 1, naming what did not list).
    #[arg(long, env = "PULLKEEPER_SYNC_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub sync_timeout: Duration,
}

fn parse_instance(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 40
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(s.to_string())
    } else {
        Err("an instance name is 1-40 lowercase letters, digits or '-'".into())
    }
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum PlanOutput {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct DiagnoseArgs {
    /// Directory with one YAML file per registry (and an optional defaults.yaml).
    #[arg(long, env = "PULLKEEPER_CONFIG")]
    pub config: PathBuf,
    /// Kubeconfig file; in-cluster config (or $KUBECONFIG) when absent.
    #[arg(long, env = "PULLKEEPER_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The installation whose Secrets count as pullkeeper's (the `--instance` of the daemon).
    #[arg(long, env = "PULLKEEPER_INSTANCE", default_value = "pullkeeper", value_parser = parse_instance)]
    pub instance: String,
    /// Only Pods of this namespace (with POD: the Pod's namespace).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// One Pod to explain (every container that does not run); needs --namespace.
    #[arg(requires = "namespace")]
    pub pod: Option<String>,
    /// Do not require the files the config names to exist (from a laptop).
    #[arg(long)]
    pub no_file_checks: bool,
    /// Output format: `text` for people, `json` for tools (schema in the README).
    #[arg(short = 'o', long, value_enum, default_value_t = PlanOutput::Text)]
    pub output: PlanOutput,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Directory with one YAML file per registry (and an optional defaults.yaml).
    #[arg(long, env = "PULLKEEPER_CONFIG")]
    pub config: PathBuf,
    /// Kubeconfig file; in-cluster config (or $KUBECONFIG) when absent.
    #[arg(long, env = "PULLKEEPER_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The installation to plan for (the `--instance` of the daemon).
    #[arg(long, env = "PULLKEEPER_INSTANCE", default_value = "pullkeeper", value_parser = parse_instance)]
    pub instance: String,
    /// Accept a config directory without any registry file (then every Secret and entry the
    /// installation manages shows as pruned).
    #[arg(long, env = "PULLKEEPER_ALLOW_EMPTY_CONFIG", default_value_t = false)]
    pub allow_empty_config: bool,
    /// Call each registry's provider once, as `run` does, so credential content changes show;
    /// without it content is taken as unchanged and no provider is called.
    #[arg(long, default_value_t = false)]
    pub fetch: bool,
    /// Time limit of one provider call (with --fetch).
    #[arg(long, env = "PULLKEEPER_FETCH_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub fetch_timeout: Duration,
    /// Do not require the files the config names to exist (to plan, from outside the pod, a
    /// config whose mounted files exist only inside it). Not with --fetch.
    #[arg(long, conflicts_with = "fetch")]
    pub no_file_checks: bool,
    /// Output format: `text` for people, `json` for tools (schema in the README).
    #[arg(short = 'o', long, value_enum, default_value_t = PlanOutput::Text)]
    pub output: PlanOutput,
}

#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// Kubeconfig file; in-cluster config (or $KUBECONFIG) when absent.
    #[arg(long, env = "PULLKEEPER_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The installation to clean up (the `--instance` of the daemon).
    #[arg(long, env = "PULLKEEPER_INSTANCE", default_value = "pullkeeper", value_parser = parse_instance)]
    pub instance: String,
    /// Namespace of the installation's leader-election Lease (its `--lease-namespace`).
    #[arg(long, env = "POD_NAMESPACE", default_value = "pullkeeper")]
    pub lease_namespace: String,
    /// Say what would be removed, remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Clean up even though the Lease says the installation still runs.
    #[arg(long)]
    pub force: bool,
    /// How long to wait for a held Lease to be released or to expire before refusing (right
    /// after an uninstall the last leader's Lease can outlive its Pod by up to its duration).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub wait: Duration,
    /// Output format: `text` for people, `json` for tools (schema in the README).
    #[arg(short = 'o', long, value_enum, default_value_t = PlanOutput::Text)]
    pub output: PlanOutput,
}
