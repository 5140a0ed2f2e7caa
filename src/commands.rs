//! The three commands, as library functions returning the process exit code.

use std::path::Path;

use kube::Client;
use tracing::{error, info};

use crate::cli::RunArgs;
use crate::config;
use crate::engine::{self, Settings};
use crate::metrics::Metrics;

/// Errors that stop `run`/`once` before the daemon starts.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot build a Kubernetes client")]
    Client(#[source] kube::Error),
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
}

/// `pullkeeper check`: prints every problem; 0 when valid, 2 when not.
pub fn check(dir: &Path, check_files: bool) -> i32 {
    match config::load_dir_with(dir, check_files) {
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

async fn client(args: &RunArgs) -> Result<Client, StartError> {
    match &args.kubeconfig {
        None => Client::try_default().await.map_err(StartError::Client),
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|source| {
                StartError::Kubeconfig {
                    path: path.display().to_string(),
                    source,
                }
            })?;
            let cfg = kube::Config::from_custom_kubeconfig(
                kc,
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            .map_err(|source| StartError::Kubeconfig {
                path: path.display().to_string(),
                source,
            })?;
            Client::try_from(cfg).map_err(StartError::Client)
        }
    }
}

/// `pullkeeper run` (and `once`): returns the exit code.
pub async fn run(args: RunArgs, once: bool) -> Result<i32, StartError> {
    let config = match config::load_dir(&args.config) {
        Ok(c) => c,
        Err(problems) => {
            for p in &problems {
                error!(file = %p.file.display(), field = %p.field, problem = %p.message, "invalid config");
            }
            return Ok(2);
        }
    };
    let providers = match engine::build_providers(&config).await {
        Ok(p) => p,
        Err(problems) => {
            for p in &problems {
                error!(file = %p.file.display(), field = %p.field, problem = %p.message, "cannot build provider");
            }
            return Ok(2);
        }
    };
    let client = client(&args).await?;
    let metrics = Metrics::new().map_err(StartError::Metrics)?;
    let settings = Settings {
        owner: crate::ownership::Owner::new(args.instance.clone()),
        config_dir: args.config.clone(),
        reload_interval: args.reload_interval,
        concurrency: args.concurrency,
        writes_per_second: args.writes_per_second,
        event_object: engine::own_pod_reference(),
        fetch_timeout: args.fetch_timeout,
        foreign_recheck: args.foreign_recheck,
    };
    info!(registries = config.registries.len(), once, "starting");
    let (leader_tx, leader_rx) = tokio::sync::watch::channel(!args.leader_elect || once);
    let leadership_lost: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + Sync>> =
        if args.leader_elect && !once {
            let lease = crate::leader::LeaseConfig {
                namespace: args.lease_namespace.clone(),
                name: format!("{}-leader", args.instance),
                identity: args
                    .identity
                    .clone()
                    .unwrap_or_else(|| format!("pullkeeper-{}", std::process::id())),
                duration: std::time::Duration::from_secs(15),
                renew_every: std::time::Duration::from_secs(5),
            };
            info!(lease = %lease.name, identity = %lease.identity, "campaigning for leadership");
            let campaign = tokio::spawn(crate::leader::run(
                client.clone(),
                lease,
                metrics.clone(),
                leader_tx,
            ));
            Box::pin(async move {
                let _ = campaign.await;
            })
        } else {
            metrics.leader.set(1);
            drop(leader_tx);
            Box::pin(std::future::pending())
        };
    let caches = engine::start(
        client.clone(),
        metrics.clone(),
        settings,
        config,
        providers,
        leader_rx,
    )
    .await;
    if once {
        return Ok(if caches.once().await { 0 } else { 1 });
    }
    let shared = caches.shared();
    let listener = tokio::net::TcpListener::bind(args.admin_addr)
        .await
        .map_err(StartError::Admin)?;
    info!(addr = %args.admin_addr, "admin server listening");
    let admin = tokio::spawn(async move {
        let ready = shared.clone();
        let app = crate::admin::router(
            shared.metrics.clone(),
            std::sync::Arc::new(move || ready.ready.load(std::sync::atomic::Ordering::SeqCst)),
        );
        if let Err(e) = axum::serve(listener, app).await {
            error!(error = %e, "admin server stopped");
        }
    });
    let clean = caches.run(leadership_lost).await;
    admin.abort();
    Ok(if clean { 0 } else { 1 })
}
