//! The `pullkeeper` binary (also the kubectl plugin `kubectl-pullkeeper`): parses arguments and
//! calls into the library.

use pullkeeper::cli::{Cli, Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse_args();
    // The one-shot commands report a failed request in one line of their own; the Kubernetes
    // client's own log line for it would say the same thing twice, less clearly. The kubelet
    // shows a plugin's stderr only when it fails: there, only warnings and errors unless a
    // filter was asked for.
    let filter = match (&cli.command, cli.log_filter.as_str()) {
        (Command::Run(_) | Command::Once(_), filter) => filter.to_string(),
        (Command::CredentialProvider(_), "info") => "warn".to_string(),
        (_, "info") => "info,kube_client=off".to_string(),
        (_, filter) => filter.to_string(),
    };
    pullkeeper::logging::init(cli.log_format, &filter)
        .map_err(|e| anyhow::anyhow!("invalid log filter: {e}"))?;
    let code = match cli.command {
        Command::Check(args) => pullkeeper::commands::check(
            &args.config.dir,
            pullkeeper::config::LoadOptions {
                check_files: !args.no_file_checks,
                allow_empty: args.allow_empty_config,
            },
            args.rbac,
        ),
        Command::Run(args) => pullkeeper::commands::run(args, false).await?,
        Command::Once(args) => pullkeeper::commands::run(args, true).await?,
        Command::Plan(args) => pullkeeper::commands::plan(args).await,
        Command::Diagnose(args) => pullkeeper::commands::diagnose(args).await,
        Command::Cleanup(args) => pullkeeper::commands::cleanup(args).await,
        Command::CredentialProvider(args) => pullkeeper::commands::credential_provider(args).await,
        Command::NodeInstall(args) => pullkeeper::commands::node_install(args).await,
        Command::Completions(args) => pullkeeper::commands::completions(&args),
        Command::Man(args) => pullkeeper::commands::man(&args),
    };
    std::process::exit(code);
}
