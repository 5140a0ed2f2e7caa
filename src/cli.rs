//! Command-line interface: `run`, `once`, `check`, `plan`, `diagnose` and `cleanup`, with
//! environment equivalents; `completions` and `man` generated from this definition. The flags
//! several commands share (`--config`, `--kubeconfig`/`--context`, `--instance`, `-o`) are
//! declared once, in the `#[command(flatten)]` structs at the end.
//!
//! Installed as `kubectl-pullkeeper` (a symlink or copy on PATH), the binary is a kubectl plugin:
//! `kubectl pullkeeper diagnose -n NS --context CTX`; kubectl passes every argument through.

use std::ffi::OsString;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

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

/// The name kubectl looks for on PATH to run `kubectl pullkeeper …`.
pub const KUBECTL_PLUGIN_NAME: &str = "kubectl-pullkeeper";

impl Cli {
    /// Parses the process's arguments; invoked as `kubectl-pullkeeper` (the kubectl plugin),
    /// usage and help say `kubectl pullkeeper`.
    pub fn parse_args() -> Self {
        Self::parse_from_args(std::env::args_os())
    }

    /// As [`Cli::parse_args`], from the given arguments (the first is the program's name).
    pub fn parse_from_args(args: impl IntoIterator<Item = impl Into<OsString> + Clone>) -> Self {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let mut command = Self::command();
        if args
            .first()
            .is_some_and(|program| is_kubectl_plugin(Path::new(program)))
        {
            command = command.bin_name("kubectl pullkeeper");
        }
        let matches = command.get_matches_from(args);
        Self::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }
}

/// Whether the program was started under the kubectl plugin's name.
fn is_kubectl_plugin(program: &Path) -> bool {
    program
        .file_name()
        .and_then(|name| name.to_str())
        .is_some_and(|name| name == KUBECTL_PLUGIN_NAME)
}

/// Writes the completion script for `shell` (for `pullkeeper`, and for `kubectl-pullkeeper`
/// when `plugin`).
pub fn write_completions(
    shell: clap_complete::Shell,
    plugin: bool,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let name = if plugin {
        KUBECTL_PLUGIN_NAME
    } else {
        "pullkeeper"
    };
    let mut command = Cli::command();
    let mut buffer = Vec::new();
    clap_complete::generate(shell, &mut command, name, &mut buffer);
    out.write_all(&buffer)
}

/// Writes the man page `pullkeeper(1)` (with `dir`: one page per subcommand as well, named
/// `pullkeeper-SUBCOMMAND.1`, into that directory).
pub fn write_man(dir: Option<&Path>, out: &mut dyn Write) -> std::io::Result<()> {
    let command = Cli::command();
    match dir {
        None => clap_mangen::Man::new(command).render(out),
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            clap_mangen::generate_to(command, dir)?;
            writeln!(out, "man pages written to {}", dir.display())
        }
    }
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
    Check(CheckArgs),
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
    /// The kubelet's image credential provider plugin (`credentialprovider.kubelet.k8s.io/v1`):
    /// reads one CredentialProviderRequest on stdin, fetches once through the provider of the
    /// registry file serving the image's host, and writes one CredentialProviderResponse on
    /// stdout (an empty `auth` when no file serves it). The same files as the Secret route.
    /// Errors: one line on stderr and exit 1, never a credential.
    CredentialProvider(CredentialProviderArgs),
    /// Install the credential-provider route on this node, from a DaemonSet Pod whose image has
    /// no shell: copy this executable into the kubelet's provider bin dir as `pullkeeper`, the
    /// config directory's registry files into --node-config-dir, and merge the `providers`
    /// entry named `pullkeeper` into the kubelet's CredentialProviderConfig (YAML or JSON;
    /// every other provider kept; created when absent; a file of another kind refused). Writes
    /// only what differs, each file atomically; then checks again every --interval (a ConfigMap
    /// update, a node bootstrap rewriting the file) until SIGTERM, or exits with --once. The
    /// kubelet must already be started with --image-credential-provider-config and
    /// --image-credential-provider-bin-dir naming these paths; it reads them at start. Exit 1
    /// on an error (nothing of that run's later steps written).
    NodeInstall(NodeInstallArgs),
    /// Print a shell completion script: `source <(pullkeeper completions bash)`, or save it
    /// where the shell loads completions from (zsh: a `_pullkeeper` file on `$fpath`; fish:
    /// `~/.config/fish/completions/pullkeeper.fish`).
    Completions(CompletionsArgs),
    /// Print the man page pullkeeper(1), generated from this command line: `pullkeeper man |
    /// man -l -`; with --dir, write it and one page per subcommand into a directory.
    Man(ManArgs),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub config: ConfigDir,
    /// Do not require the files the config names (mounted Secrets, token files, CAs) to
    /// exist: for validating, outside the pod, a config meant for it.
    #[arg(long)]
    pub no_file_checks: bool,
    /// Accept a directory without any registry file (by default an error: a daemon running
    /// it would prune every Secret it manages).
    #[arg(long, env = "PULLKEEPER_ALLOW_EMPTY_CONFIG")]
    pub allow_empty_config: bool,
    /// Print, instead of the summary, the ClusterRole `pullkeeper-secrets` that grants
    /// pullkeeper the Secret names of this directory (the base's list to replace).
    #[arg(long)]
    pub rbac: bool,
}

#[derive(Debug, Args)]
pub struct CredentialProviderArgs {
    #[command(flatten)]
    pub config: ConfigDir,
    /// Time limit of the provider call (the kubelet waits about a minute for a plugin).
    #[arg(long, env = "PULLKEEPER_FETCH_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub fetch_timeout: Duration,
    /// Append one JSON line per invocation to this file: time, image host, registry, provider,
    /// outcome, cacheDuration and elapsed milliseconds (never a credential).
    #[arg(long, env = "PULLKEEPER_CREDENTIAL_PROVIDER_LOG", value_name = "FILE")]
    pub invocation_log: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct NodeInstallArgs {
    /// The registry files to install (the mounted ConfigMap); checked first.
    #[command(flatten)]
    pub config: ConfigDir,
    /// The kubelet's --image-credential-provider-bin-dir, as a path on the node.
    #[arg(long, value_name = "NODE_DIR")]
    pub bin_dir: PathBuf,
    /// The kubelet's --image-credential-provider-config, as a path on the node.
    #[arg(long, value_name = "NODE_FILE")]
    pub provider_config: PathBuf,
    /// Where on the node the registry files go (pullkeeper's alone: files it did not install
    /// are removed); the entry's `args` name it.
    #[arg(long, value_name = "NODE_DIR")]
    pub node_config_dir: PathBuf,
    /// Where this process reaches the node's paths: the DaemonSet mounts each host directory
    /// at this prefix plus its node path.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub host_prefix: PathBuf,
    /// The entry's `matchImages`, comma-separated (the kubelet's patterns, e.g.
    /// `*.dkr.ecr.*.amazonaws.com,registry.example.com`).
    #[arg(long, value_delimiter = ',', required = true)]
    pub match_images: Vec<String>,
    /// The entry's `defaultCacheDuration` (used only when a response gives none).
    #[arg(long, default_value = "1m")]
    pub default_cache_duration: String,
    /// How often to check again after installing.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Install once and exit (0 installed or unchanged, 1 error).
    #[arg(long)]
    pub once: bool,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh, fish (also elvish, powershell).
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
    /// Complete the kubectl plugin's name, `kubectl-pullkeeper`, instead of `pullkeeper`.
    #[arg(long)]
    pub kubectl_plugin: bool,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write pullkeeper.1 and one page per subcommand into this directory instead of printing
    /// pullkeeper.1.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigDir,
    #[command(flatten)]
    pub kube: KubeArgs,
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
    #[command(flatten)]
    pub instance: InstanceArg,
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
    /// The longest wait between two looks for stuck Pods; pullkeeper also looks at once when
    /// it wrote a Secret or a ServiceAccount, or a pending Pod changed.
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
    /// Largest share of one owner's stuck Pods deleted in one round (at least one is). Default
    /// 1: all of them, since a Pod stuck pulling has never started and serves nothing; the
    /// per-minute limits stop a runaway.
    #[arg(long, env = "PULLKEEPER_RECOVERY_MAX_SHARE", default_value_t = crate::recover::DEFAULT_MAX_SHARE)]
    pub recovery_max_share: f64,
    /// Time limit of one provider call.
    #[arg(long, env = "PULLKEEPER_FETCH_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub fetch_timeout: Duration,
    /// Longest a watch request stays open: the API server then ends it and pullkeeper watches
    /// on from where it was. A watch that delivers nothing for this long plus 5 s (a
    /// connection that stalled silently) is dropped and opened again, so no change waits
    /// longer than that to be seen.
    #[arg(long, env = "PULLKEEPER_WATCH_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub watch_timeout: Duration,
    /// How long `once` waits for its watches to list (an unreachable API server or a watch the
    /// role forbids then ends it with exit 2, naming what did not list); also bounds the
    /// permission review at start.
    #[arg(long, env = "PULLKEEPER_SYNC_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub sync_timeout: Duration,
}

/// How a command prints its report.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct DiagnoseArgs {
    #[command(flatten)]
    pub config: ConfigDir,
    #[command(flatten)]
    pub kube: KubeArgs,
    #[command(flatten)]
    pub instance: InstanceArg,
    /// Only Pods of this namespace (with POD: the Pod's namespace).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Every namespace (also the default without --namespace), as kubectl's -A.
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    pub all_namespaces: bool,
    /// One Pod to explain (every container that does not run); needs --namespace.
    #[arg(requires = "namespace")]
    pub pod: Option<String>,
    /// Do not require the files the config names to exist (from a laptop).
    #[arg(long)]
    pub no_file_checks: bool,
    /// The invocation log of pullkeeper's kubelet credential provider on the Pod's node (the
    /// file `credential-provider --invocation-log` appends to): the diagnosis then also says
    /// which route supplied the credential, or why the credential provider did not.
    #[arg(long, value_name = "FILE")]
    pub credential_provider_log: Option<PathBuf>,
    #[command(flatten)]
    pub deadline: DeadlineArg,
    #[command(flatten)]
    pub output: OutputArg,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub config: ConfigDir,
    #[command(flatten)]
    pub kube: KubeArgs,
    #[command(flatten)]
    pub instance: InstanceArg,
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
    #[command(flatten)]
    pub deadline: DeadlineArg,
    #[command(flatten)]
    pub output: OutputArg,
}

#[derive(Debug, Args)]
pub struct CleanupArgs {
    #[command(flatten)]
    pub kube: KubeArgs,
    #[command(flatten)]
    pub instance: InstanceArg,
    /// Namespace of the installation's leader-election Lease (its `--lease-namespace`: the
    /// namespace pullkeeper was installed in, hence `-n` as with kubectl).
    #[arg(
        short = 'n',
        long,
        visible_alias = "namespace",
        env = "POD_NAMESPACE",
        default_value = "pullkeeper"
    )]
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
    #[command(flatten)]
    pub deadline: DeadlineArg,
    #[command(flatten)]
    pub output: OutputArg,
}

// --- The flags several commands share, declared once. ----------------------------------------

/// `--config DIR`.
#[derive(Clone, Debug, Args)]
pub struct ConfigDir {
    /// Directory with one YAML file per registry (and an optional defaults.yaml).
    #[arg(long = "config", env = "PULLKEEPER_CONFIG", value_name = "DIR")]
    pub dir: PathBuf,
}

/// How to reach the cluster, as kubectl does: `--kubeconfig FILE` and `--context NAME`.
#[derive(Clone, Debug, Default, Args)]
pub struct KubeArgs {
    /// Kubeconfig file; $KUBECONFIG (or ~/.kube/config), then the in-cluster config, when
    /// absent.
    #[arg(long, env = "PULLKEEPER_KUBECONFIG", value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use instead of its current-context, as kubectl's --context.
    #[arg(long, env = "PULLKEEPER_CONTEXT", value_name = "NAME")]
    pub context: Option<String>,
}

/// `--request-timeout DURATION`: how long a read-only command waits for the cluster.
#[derive(Clone, Copy, Debug, Args)]
pub struct DeadlineArg {
    /// Give up (exit 2, one line saying so) when the cluster has not answered everything within
    /// this time, as kubectl's --request-timeout; `0` waits without limit. With --fetch, the
    /// provider calls count too; cleanup adds its --wait.
    #[arg(
        long = "request-timeout",
        env = "PULLKEEPER_REQUEST_TIMEOUT",
        default_value = "30s",
        value_parser = humantime::parse_duration
    )]
    pub request_timeout: Duration,
}

/// `--instance NAME`.
#[derive(Clone, Debug, Args)]
pub struct InstanceArg {
    /// Name of the installation (the daemon's --instance): it owns only Secrets and
    /// `ServiceAccount` entries labelled with it, so several installations can share a cluster.
    #[arg(long = "instance", env = "PULLKEEPER_INSTANCE", default_value = "pullkeeper", value_parser = parse_instance, value_name = "NAME")]
    pub name: String,
}

/// `-o text|json`.
#[derive(Clone, Copy, Debug, Args)]
pub struct OutputArg {
    /// Output format: `text` for people, `json` for tools (schema in docs/commands.md).
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn completions_generate_for_bash_zsh_and_fish() {
        use clap_complete::Shell;
        for (shell, marker) in [
            (Shell::Bash, "complete -F _pullkeeper"),
            (Shell::Zsh, "#compdef pullkeeper"),
            (Shell::Fish, "complete -c pullkeeper"),
        ] {
            let mut out = Vec::new();
            write_completions(shell, false, &mut out).expect("generates");
            let text = String::from_utf8(out).expect("utf8");
            assert!(text.contains(marker), "{shell}: no {marker:?}");
            // Every subcommand and the shared flags are completed.
            for word in [
                "diagnose",
                "plan",
                "cleanup",
                "completions",
                "kubeconfig",
                "context",
                "instance",
            ] {
                assert!(text.contains(word), "{shell}: {word} missing");
            }
        }
        let mut out = Vec::new();
        write_completions(Shell::Bash, true, &mut out).expect("generates");
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.contains("kubectl-pullkeeper"), "plugin name missing");
    }

    #[test]
    fn the_man_page_generates_from_the_definition() {
        let mut out = Vec::new();
        write_man(None, &mut out).expect("renders");
        let page = String::from_utf8(out).expect("utf8");
        assert!(
            page.starts_with(".ie \\n(.g .ds Aq"),
            "roff preamble: {}",
            &page[..40]
        );
        assert!(page.contains(".TH pullkeeper 1"), "title line");
        for word in ["diagnose", "cleanup", "log\\-format"] {
            assert!(page.contains(word), "{word} missing");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        write_man(Some(dir.path()), &mut Vec::new()).expect("writes");
        for page in [
            "pullkeeper.1",
            "pullkeeper-diagnose.1",
            "pullkeeper-plan.1",
            "pullkeeper-cleanup.1",
        ] {
            let text = std::fs::read_to_string(dir.path().join(page)).expect(page);
            assert!(text.contains(".TH"), "{page}");
        }
        let cleanup =
            std::fs::read_to_string(dir.path().join("pullkeeper-cleanup.1")).expect("read");
        assert!(
            cleanup.contains("lease\\-namespace"),
            "cleanup's own flags on its page"
        );
    }

    #[test]
    fn shared_flags_parse_the_same_on_every_command() {
        let cli = Cli::parse_from_args([
            "pullkeeper",
            "diagnose",
            "--config",
            "/c",
            "--kubeconfig",
            "/k",
            "--context",
            "prod",
            "--instance",
            "blue",
            "-n",
            "shop",
            "web-1",
            "-o",
            "json",
        ]);
        let Command::Diagnose(d) = cli.command else {
            panic!("diagnose")
        };
        assert_eq!(d.config.dir, Path::new("/c"));
        assert_eq!(d.kube.kubeconfig.as_deref(), Some(Path::new("/k")));
        assert_eq!(d.kube.context.as_deref(), Some("prod"));
        assert_eq!(d.instance.name, "blue");
        assert_eq!(d.namespace.as_deref(), Some("shop"));
        assert_eq!(d.pod.as_deref(), Some("web-1"));
        assert_eq!(d.output.format, OutputFormat::Json);

        let cli = Cli::parse_from_args([
            "kubectl-pullkeeper",
            "cleanup",
            "--context=staging",
            "-n",
            "platform",
            "--dry-run",
        ]);
        let Command::Cleanup(c) = cli.command else {
            panic!("cleanup")
        };
        assert_eq!(c.kube.context.as_deref(), Some("staging"));
        assert_eq!(c.lease_namespace, "platform");
        assert_eq!(c.instance.name, "pullkeeper");

        let cli = Cli::parse_from_args(["pullkeeper", "cleanup", "--namespace", "platform"]);
        let Command::Cleanup(c) = cli.command else {
            panic!("cleanup")
        };
        assert_eq!(c.lease_namespace, "platform");

        let cli =
            Cli::parse_from_args(["pullkeeper", "plan", "--config", "/c", "--context", "dev"]);
        let Command::Plan(p) = cli.command else {
            panic!("plan")
        };
        assert_eq!(p.kube.context.as_deref(), Some("dev"));
        assert_eq!(p.output.format, OutputFormat::Text);
    }

    #[test]
    fn the_plugin_name_is_recognized_from_argv0() {
        assert!(is_kubectl_plugin(Path::new(
            "/usr/local/bin/kubectl-pullkeeper"
        )));
        assert!(is_kubectl_plugin(Path::new("kubectl-pullkeeper")));
        assert!(!is_kubectl_plugin(Path::new("/usr/bin/pullkeeper")));
        let mut help = Vec::new();
        Cli::command()
            .bin_name("kubectl pullkeeper")
            .write_help(&mut help)
            .expect("help");
        assert!(
            String::from_utf8(help)
                .expect("utf8")
                .contains("kubectl pullkeeper")
        );
    }
}
