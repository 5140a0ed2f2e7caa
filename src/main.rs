//! The `pullkeeper` binary: parses arguments and calls into the library.

use clap::Parser;
use pullkeeper::cli::{Cli, Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    pullkeeper::logging::init(cli.log_format, &cli.log_filter)
        .map_err(|e| anyhow::anyhow!("invalid log filter: {e}"))?;
    let code = match cli.command {
        Command::Check {
            config,
            no_file_checks,
            allow_empty_config,
            rbac,
        } => pullkeeper::commands::check(
            &config,
            pullkeeper::config::LoadOptions {
                check_files: !no_file_checks,
                allow_empty: allow_empty_config,
            },
            rbac,
        ),
        Command::Run(args) => pullkeeper::commands::run(args, false).await?,
        Command::Once(args) => pullkeeper::commands::run(args, true).await?,
        Command::Plan(args) => pullkeeper::commands::plan(args).await,
        Command::Diagnose(args) => pullkeeper::commands::diagnose(args).await,
        Command::Cleanup(args) => pullkeeper::commands::cleanup(args).await,
    };
    std::process::exit(code);
}
