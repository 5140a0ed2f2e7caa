//! The commands, as library functions returning the process exit code. `run` is the one place
//! where the daemon is wired: client, metrics, leader election, admin server, daemon, and the
//! order in which they stop. The operator commands live in the submodules, each in one shape —
//! read the cluster, decide with a pure function, hand back a [`Report`] — and end through
//! [`finish`]: `plan` (what `run` would change), `diagnose` (why a Pod cannot pull), `cleanup`
//! (what an uninstalled installation left).

pub mod cleanup;
pub mod diagnose;
pub mod plan;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use kube::Client;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::cli::{
    CleanupArgs, CompletionsArgs, CredentialProviderArgs, DiagnoseArgs, KubeArgs, ManArgs,
    NodeInstallArgs, OutputFormat, PlanArgs, RecoveryMode, RunArgs,
};
use crate::config::{self, LoadOptions};
use crate::daemon::{self, RecoverySettings, Settings};
use crate::events::PodIdentity;
use crate::leader::{self, LeaseConfig};
use crate::metrics::Metrics;
use crate::ownership::Owner;
use crate::recover::Limits;
use crate::refresh::error_chain;
use crate::reload;

/// Errors that stop `run`/`once` before the daemon starts.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot build a Kubernetes client")]
    Client(#[source] kube::Error),
    #[error("no kubeconfig and no in-cluster config")]
    Infer(#[source] kube::config::InferConfigError),
    #[error("cannot read kubeconfig {path}")]
    Kubeconfig {
        path: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("cannot register metrics")]
    Metrics(#[source] prometheus::Error),
    #[error("cannot serve the admin port")]
    Admin(#[source] std::io::Error),
    #[error("cannot listen for shutdown signals")]
    Signals(#[source] std::io::Error),
}

/// `pullkeeper check`: prints every problem; 0 when valid, 2 when not. With `rbac`, a valid
/// directory prints the ClusterRole granting its Secret names instead of the summary.
pub fn check(dir: &Path, options: LoadOptions, rbac: bool) -> i32 {
    match config::load(dir, options) {
        Ok(c) if rbac => {
            print!("{}", secret_names_role(&c));
            0
        }
        Ok(c) => {
            println!(
                "{}: {} registr{} valid",
                dir.display(),
                c.registries.len(),
                if c.registries.len() == 1 { "y" } else { "ies" }
            );
            for r in &c.registries {
                println!(
                    "  {} ({}) → Secret {}",
                    r.name,
                    r.provider.type_name(),
                    r.secret_name
                );
            }
            println!(
                "Secret names for the role's resourceNames (--rbac prints the ClusterRole): {}",
                secret_names(&c).join(", ")
            );
            print!("{}", crate::credential_provider::ROUTE_FIELDS);
            for note in c
                .registries
                .iter()
                .filter_map(|r| crate::credential_provider::route_note(r))
            {
                println!("  note: {note}");
            }
            0
        }
        Err(problems) => {
            for p in &problems {
                eprintln!("{p}");
            }
            eprintln!("{} problem(s); config is invalid", problems.len());
            2
        }
    }
}

/// The Secret names of a config, sorted and once each.
fn secret_names(config: &config::Config) -> Vec<String> {
    let names: std::collections::BTreeSet<&str> = config
        .registries
        .iter()
        .map(|r| r.secret_name.as_str())
        .collect();
    names.into_iter().map(String::from).collect()
}

/// The kustomize base's ClusterRole `pullkeeper-secrets` with a config's Secret names.
pub fn secret_names_role(config: &config::Config) -> String {
    let names = secret_names(config)
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "apiVersion: rbac.authorization.k8s.io/v1\n\
         kind: ClusterRole\n\
         metadata:\n  name: pullkeeper-secrets\n  labels:\n    app.kubernetes.io/name: pullkeeper\n\
         rules:\n  - apiGroups: [\"\"]\n    resources: [\"secrets\"]\n    resourceNames: [{names}]\n    verbs: [{verbs}]\n",
        verbs = crate::access::SECRET_VERBS
            .iter()
            .map(|v| format!("\"{v}\""))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// A client from `--kubeconfig` (else `$KUBECONFIG` or `~/.kube/config`, else the in-cluster
/// config) and `--context` (else the kubeconfig's current-context), as kubectl chooses, whose
/// requests say `User-Agent: pullkeeper/VERSION (AGENT)`: audit logs and API server metrics then
/// tell pullkeeper's replicas (`agent` is the Lease identity) and its commands apart.
pub async fn client(cluster: &KubeArgs, agent: &str) -> Result<Client, StartError> {
    let options = kube::config::KubeConfigOptions {
        context: cluster.context.clone(),
        ..kube::config::KubeConfigOptions::default()
    };
    let mut cfg = match (&cluster.kubeconfig, &cluster.context) {
        (None, None) => kube::Config::infer().await.map_err(StartError::Infer)?,
        // A context names a kubeconfig entry: only a kubeconfig can have it.
        (None, Some(_)) => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|source| StartError::Kubeconfig {
                path: "from $KUBECONFIG or ~/.kube/config".into(),
                source,
            })?,
        (Some(path), _) => {
            let kubeconfig_error = |source| StartError::Kubeconfig {
                path: path.display().to_string(),
                source,
            };
            let kc = kube::config::Kubeconfig::read_from(path).map_err(kubeconfig_error)?;
            kube::Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(kubeconfig_error)?
        }
    };
    let value = format!("pullkeeper/{} ({agent})", env!("CARGO_PKG_VERSION"));
    // Identities come from Pod names and fixed words; one that is not a valid header value
    // (never seen) leaves the client without a User-Agent rather than failing the start.
    if let Ok(value) = axum::http::HeaderValue::from_str(&value) {
        cfg.headers.push((axum::http::header::USER_AGENT, value));
    }
    Client::try_from(cfg).map_err(StartError::Client)
}

/// The settings of `run`/`once`, from the command line.
fn settings(args: &RunArgs) -> Settings {
    Settings {
        owner: Owner::new(args.instance.name.clone()),
        config_dir: args.config.dir.clone(),
        load: LoadOptions {
            check_files: true,
            allow_empty: args.allow_empty_config,
        },
        reload_interval: args.reload_interval,
        resync_interval: args.resync_interval,
        concurrency: args.concurrency,
        writes_per_second: args.writes_per_second,
        pod: args.identity.clone().map(|name| PodIdentity {
            name,
            namespace: args.lease_namespace.clone(),
        }),
        home_namespace: args.lease_namespace.clone(),
        fetch_timeout: args.fetch_timeout,
        sync_timeout: args.sync_timeout,
        watch_timeout: args.watch_timeout,
        recovery: RecoverySettings {
            mode: args.pod_recovery,
            interval: args.recovery_interval,
            limits: Limits {
                per_minute: args.recovery_per_minute,
                per_registry_per_minute: args.recovery_per_registry_per_minute,
                max_share: args.recovery_max_share,
            },
        },
    }
}

/// Whether this identity may do what the recovery mode needs with Pods in every namespace.
async fn may_recover(client: &Client, mode: RecoveryMode) -> Result<bool, kube::Error> {
    let verbs: &[&str] = match mode {
        RecoveryMode::Off => return Ok(true),
        RecoveryMode::Observe => &["list", "watch"],
        RecoveryMode::On => &["list", "watch", "delete"],
    };
    for verb in verbs {
        if !crate::access::allowed(client, verb, "", "pods", None, None).await? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Completes on SIGTERM or SIGINT.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, StartError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(StartError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(StartError::Signals)?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM received; stopping"),
            _ = int.recv() => info!("SIGINT received; stopping"),
        }
    })
}

/// The recovery mode `run` may use: `mode` when this identity may do what it needs with Pods,
/// else off (said in the log).
async fn permitted_recovery(client: &Client, mode: RecoveryMode) -> RecoveryMode {
    if mode == RecoveryMode::Off {
        return mode;
    }
    match may_recover(client, mode).await {
        Ok(true) => {
            info!(mode = ?mode, "pod recovery enabled");
            mode
        }
        Ok(false) => {
            error!(mode = ?mode,
                "pod recovery is enabled but not permitted: pullkeeper may not list, watch and (for `on`) delete pods in every namespace; install the optional pod-recovery RBAC (see deploy/README.md). Recovery stays off");
            RecoveryMode::Off
        }
        Err(e) => {
            error!(error = %e, "cannot check the pod-recovery permissions; recovery stays off");
            RecoveryMode::Off
        }
    }
}

/// Completes on a signal, or when leadership once held is lost (then `lost` is set: a restart
/// begins as follower).
async fn stop_when(
    signal: impl std::future::Future<Output = ()>,
    mut leader: watch::Receiver<bool>,
    elect: bool,
    lost: Arc<AtomicBool>,
) {
    let leadership_lost = async {
        if !elect {
            return std::future::pending().await;
        }
        let _ = leader.wait_for(|l| *l).await;
        let _ = leader.wait_for(|l| !*l).await;
    };
    tokio::select! {
        () = signal => {}
        () = leadership_lost => {
            lost.store(true, Ordering::SeqCst);
            error!("leadership lost; stopping so a restart begins as a follower");
        }
    }
}

/// Ends the campaign and, unless leadership was lost, releases the Lease.
async fn hand_over(
    campaign: tokio::task::JoinHandle<()>,
    client: &Client,
    lease: &LeaseConfig,
    lost: bool,
) {
    campaign.abort();
    let _ = campaign.await;
    if lost {
        return;
    }
    match leader::release(client, lease).await {
        Ok(true) => info!(lease = %lease.name, "lease released"),
        Ok(false) => {}
        Err(e) => {
            warn!(lease = %lease.name, error = %e, "could not release the lease; it expires by itself");
        }
    }
}

/// `pullkeeper run` (and `once`): returns the exit code.
pub async fn run(args: RunArgs, once: bool) -> Result<i32, StartError> {
    let settings = settings(&args);
    let generation = match reload::load_first(&settings.config_dir, settings.load).await {
        Ok(g) => g,
        Err(problems) => {
            for p in &problems {
                error!(file = %p.file.display(), field = %p.field, problem = %p.message, "invalid config");
            }
            return Ok(2);
        }
    };
    let identity = leader::process_identity(args.identity.as_deref());
    let client = client(&args.kube, &identity).await?;
    let mut settings = settings;
    settings.recovery.mode = permitted_recovery(&client, settings.recovery.mode).await;
    let metrics = Metrics::new().map_err(StartError::Metrics)?;
    let stop_signal = shutdown_signal()?;
    info!(
        registries = generation.config.registries.len(),
        once, "starting"
    );

    let elect = args.leader_elect && !once;
    let (leader_tx, leader_rx) = watch::channel(!elect);
    let lease = LeaseConfig::of(&args.instance.name, args.lease_namespace.clone(), identity);
    let lost = Arc::new(AtomicBool::new(false));
    let campaign = if elect {
        info!(lease = %lease.name, identity = %lease.identity, "campaigning for leadership");
        Some(tokio::spawn(leader::run(
            client.clone(),
            lease.clone(),
            metrics.leader.clone(),
            leader_tx,
        )))
    } else {
        metrics.leader.set(true);
        drop(leader_tx);
        None
    };

    let started = daemon::start(
        &client,
        metrics.clone(),
        settings,
        generation,
        leader_rx.clone(),
    )
    .await;
    if once {
        return Ok(started.once().await.exit_code());
    }

    let listener = tokio::net::TcpListener::bind(args.admin_addr)
        .await
        .map_err(StartError::Admin)?;
    info!(addr = %args.admin_addr, "admin server listening");
    let admin = tokio::spawn(crate::admin::serve(
        listener,
        metrics.clone(),
        started.readiness(),
    ));

    let stop = stop_when(stop_signal, leader_rx, elect, lost.clone());
    started.run(stop).await;

    // Writes have stopped: give the Lease up so another replica takes over at once.
    if let Some(campaign) = campaign {
        hand_over(campaign, &client, &lease, lost.load(Ordering::SeqCst)).await;
        metrics.leader.set(false);
    }
    admin.abort();
    info!("shut down");
    Ok(i32::from(lost.load(Ordering::SeqCst)))
}

/// What an operator command (`plan`, `diagnose`, `cleanup`) found, in one shape: each reads
/// the cluster, decides with a pure function, and hands back a report that prints as text for
/// people or one JSON document, says its exit code (0 nothing to do, 1 something found or to
/// change, 2 an error or a refusal) and the lines that go to stderr.
pub trait Report {
    fn to_text(&self) -> String;
    fn to_json(&self) -> Result<String, serde_json::Error>;
    fn exit_code(&self) -> i32;
    /// Lines for stderr after the report (errors met on the way).
    fn errors(&self) -> Vec<String> {
        Vec::new()
    }
}

impl Report for plan::report::Report {
    fn to_text(&self) -> String {
        self.to_text()
    }
    fn to_json(&self) -> Result<String, serde_json::Error> {
        self.to_json()
    }
    fn exit_code(&self) -> i32 {
        i32::from(self.summary.changes)
    }
}

impl Report for diagnose::Report {
    fn to_text(&self) -> String {
        self.to_text()
    }
    fn to_json(&self) -> Result<String, serde_json::Error> {
        self.to_json()
    }
    fn exit_code(&self) -> i32 {
        i32::from(self.found())
    }
}

impl Report for cleanup::Report {
    fn to_text(&self) -> String {
        self.to_text()
    }
    fn to_json(&self) -> Result<String, serde_json::Error> {
        self.to_json()
    }
    fn exit_code(&self) -> i32 {
        self.exit_code()
    }
    fn errors(&self) -> Vec<String> {
        self.errors()
    }
}

/// One line on stderr naming the command, and exit code 2.
fn fail(command: &str, e: &dyn std::error::Error) -> i32 {
    eprintln!("pullkeeper {command}: {}", error_chain(e));
    2
}

/// The end every operator command shares: its cluster work within `limit` (`0`: no limit),
/// then the report on stdout in `format`, its errors on stderr, and its exit code; 2 when the
/// work failed, ran out of time or the report could not be written.
async fn finish<R: Report, E: std::error::Error>(
    command: &str,
    limit: std::time::Duration,
    format: OutputFormat,
    work: impl std::future::Future<Output = Result<R, E>>,
) -> i32 {
    use std::io::Write as _;
    let report = match within(command, limit, work).await {
        Some(Ok(r)) => r,
        Some(Err(e)) => return fail(command, &e),
        None => return 2,
    };
    let out = match format {
        OutputFormat::Text => Ok(report.to_text()),
        OutputFormat::Json => report.to_json().map(|j| j + "\n"),
    };
    let written = match out {
        Ok(out) => std::io::stdout().lock().write_all(out.as_bytes()),
        Err(e) => return fail(command, &e),
    };
    if let Err(e) = written {
        return fail(command, &e);
    }
    for line in report.errors() {
        eprintln!("pullkeeper {command}: {line}");
    }
    report.exit_code()
}

/// Runs a read-only command's cluster work within `--request-timeout` (`0`: no limit); `None`
/// after printing one line when the time ran out.
async fn within<T>(
    command: &str,
    limit: std::time::Duration,
    work: impl std::future::Future<Output = T>,
) -> Option<T> {
    if limit.is_zero() {
        return Some(work.await);
    }
    if let Ok(done) = tokio::time::timeout(limit, work).await {
        return Some(done);
    }
    eprintln!(
        "pullkeeper {command}: gave up after {}: the cluster did not answer in time \
         (--request-timeout; nothing was changed by the part that did not finish)",
        humantime::format_duration(limit)
    );
    None
}

/// The config problems on stderr, and exit code 2.
fn invalid_config(problems: &[crate::problems::Problem]) -> i32 {
    for p in problems {
        eprintln!("{p}");
    }
    eprintln!("{} problem(s); config is invalid", problems.len());
    2
}

/// `pullkeeper plan`: prints what `run` would change; 0 when nothing, 1 when something, 2 on
/// an invalid config, an unreachable cluster or a failed `--fetch`.
pub async fn plan(args: PlanArgs) -> i32 {
    let options = LoadOptions {
        check_files: !args.no_file_checks,
        allow_empty: args.allow_empty_config,
    };
    let generation = match reload::load_first(&args.config.dir, options).await {
        Ok(g) => g,
        Err(problems) => return invalid_config(&problems),
    };
    let client = match client(&args.kube, "plan").await {
        Ok(c) => c,
        Err(e) => return fail("plan", &e),
    };
    let metrics = match Metrics::new() {
        Ok(m) => m,
        Err(e) => return fail("plan", &StartError::Metrics(e)),
    };
    let credentials = if args.fetch {
        plan::Credentials::Fetch {
            generation: &generation,
            metrics: &metrics.refresh,
            timeout: args.fetch_timeout,
        }
    } else {
        plan::Credentials::Assumed
    };
    let owner = Owner::new(args.instance.name.clone());
    // Boxed: the listing and planning state is large for a future held on the stack.
    let work = Box::pin(plan::preview(
        &client,
        &owner,
        &generation.config.registries,
        credentials,
    ));
    finish(
        "plan",
        args.deadline.request_timeout,
        args.output.format,
        work,
    )
    .await
}

/// `pullkeeper diagnose`: prints the causes; 0 when nothing is wrong, 1 when a cause was found,
/// 2 on config or cluster errors.
pub async fn diagnose(args: DiagnoseArgs) -> i32 {
    let options = LoadOptions {
        check_files: !args.no_file_checks,
        allow_empty: true,
    };
    let config = match config::load(&args.config.dir, options) {
        Ok(c) => c,
        Err(problems) => return invalid_config(&problems),
    };
    let client = match client(&args.kube, "diagnose").await {
        Ok(c) => c,
        Err(e) => return fail("diagnose", &e),
    };
    let target = match (args.namespace, args.pod) {
        (Some(namespace), Some(name)) => diagnose::Target::Pod { namespace, name },
        (Some(ns), None) => diagnose::Target::Namespace(ns),
        (None, _) => diagnose::Target::All,
    };
    let plugin = match &args.credential_provider_log {
        None => None,
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => Some(diagnose::read_log(&text)),
            Err(e) => {
                eprintln!(
                    "pullkeeper diagnose: cannot read the credential provider's invocation log {}: {e}",
                    path.display()
                );
                return 2;
            }
        },
    };
    let owner = Owner::new(args.instance.name);
    let work = diagnose::diagnose(
        &client,
        &owner,
        &config.registries,
        plugin.as_deref(),
        &target,
        chrono::Utc::now(),
    );
    finish(
        "diagnose",
        args.deadline.request_timeout,
        args.output.format,
        work,
    )
    .await
}

/// `pullkeeper cleanup`: removes what the installation left behind; 0 when nothing is (left)
/// to clean, 1 with `--dry-run` when something would be removed, 2 on an error or a refusal.
pub async fn cleanup(args: CleanupArgs) -> i32 {
    let client = match client(&args.kube, "cleanup").await {
        Ok(c) => c,
        Err(e) => return fail("cleanup", &e),
    };
    let metrics = match Metrics::new() {
        Ok(m) => m,
        Err(e) => return fail("cleanup", &StartError::Metrics(e)),
    };
    let owner = Owner::new(args.instance.name);
    let lease = cleanup::LeaseRef::of(&owner, args.lease_namespace);
    let options = cleanup::Options {
        dry_run: args.dry_run,
        force: args.force,
        wait: args.wait,
    };
    // A held Lease may be waited for on purpose: the deadline comes on top of --wait.
    let limit = if args.deadline.request_timeout.is_zero() {
        args.deadline.request_timeout
    } else {
        args.deadline.request_timeout + args.wait
    };
    let work = cleanup::cleanup(&client, &owner, &lease, metrics.writes, options);
    finish("cleanup", limit, args.output.format, work).await
}

/// `pullkeeper credential-provider`: one kubelet plugin invocation; 0 with a response on stdout
/// (possibly with an empty `auth`), 1 with one line on stderr.
pub async fn credential_provider(args: CredentialProviderArgs) -> i32 {
    use crate::credential_provider::{self as plugin, Invocation, Settings};
    use std::io::Read as _;
    let started = std::time::Instant::now();
    let mut record = Invocation::starting(
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    );
    let settings = Settings {
        config_dir: &args.config.dir,
        fetch_timeout: args.fetch_timeout,
    };
    let mut request = String::new();
    let result = match std::io::stdin().lock().read_to_string(&mut request) {
        Ok(_) => {
            let mut out = std::io::stdout().lock();
            plugin::serve(&settings, &request, &mut out, &mut record).await
        }
        Err(e) => Err(plugin::PluginError::Request(e.to_string())),
    };
    let code = match &result {
        Ok(()) => 0,
        Err(e) => {
            record.outcome = e.category();
            eprintln!("{}", plugin::error_line(e));
            1
        }
    };
    record.elapsed_ms = started.elapsed().as_millis();
    if let Some(path) = &args.invocation_log
        && let Err(e) = append_line(path, &record)
    {
        eprintln!(
            "pullkeeper credential-provider: cannot append to {}: {e}",
            path.display()
        );
    }
    code
}

/// `pullkeeper node-install`: installs, then (without --once) checks again every interval
/// until SIGTERM. 0 on a clean stop or a successful --once, 1 on an error.
pub async fn node_install(args: NodeInstallArgs) -> i32 {
    use crate::node_install::{Entry, Settings, install};
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            error!(error = %e, "cannot find this executable to copy");
            return 1;
        }
    };
    let settings = Settings {
        exe,
        source_config_dir: args.config.dir.clone(),
        bin_dir: args.bin_dir.clone(),
        provider_config: args.provider_config.clone(),
        host_prefix: args.host_prefix.clone(),
        entry: Entry {
            match_images: args.match_images.clone(),
            node_config_dir: args.node_config_dir.clone(),
            default_cache_duration: args.default_cache_duration.clone(),
        },
    };
    let stop = match shutdown_signal() {
        Ok(stop) => stop,
        Err(e) => {
            error!(error = %error_chain(&e), "cannot start");
            return 1;
        }
    };
    tokio::pin!(stop);
    loop {
        match install(&settings) {
            Ok(report) if report.changed() => {
                let show = |paths: &[std::path::PathBuf]| {
                    paths
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                info!(
                    written = %show(&report.written),
                    removed = %show(&report.removed),
                    "credential provider installed on the node; the kubelet reads its provider config at start"
                );
            }
            Ok(_) => info!("credential provider on the node is up to date"),
            Err(e) => {
                error!(error = %error_chain(&e), "cannot install the credential provider on the node");
                return 1;
            }
        }
        if args.once {
            return 0;
        }
        tokio::select! {
            () = &mut stop => return 0,
            () = tokio::time::sleep(args.interval) => {}
        }
    }
}

/// Appends one JSON line to a file (created when missing).
fn append_line(path: &Path, value: &impl serde::Serialize) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut line = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    line.push(b'\n');
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?
        .write_all(&line)
}

/// `pullkeeper completions SHELL`: the completion script on stdout; 0, or 2 when it cannot be
/// written.
pub fn completions(args: &CompletionsArgs) -> i32 {
    let mut out = std::io::stdout().lock();
    match crate::cli::write_completions(args.shell, args.kubectl_plugin, &mut out) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("pullkeeper completions: {e}");
            2
        }
    }
}

/// `pullkeeper man [--dir DIR]`: the man page on stdout, or every page into DIR.
pub fn man(args: &ManArgs) -> i32 {
    let mut out = std::io::stdout().lock();
    match crate::cli::write_man(args.dir.as_deref(), &mut out) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("pullkeeper man: {e}");
            2
        }
    }
}
