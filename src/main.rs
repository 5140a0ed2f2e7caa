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
        } => pullkeeper::commands::check(&config, !no_file_checks),
        Command::Run(args) => pullkeeper::commands::run(args, false).await?,
        Command::Once(args) => pullkeeper::commands::run(args, true).await?,
    };
    std::process::exit(code);
}
