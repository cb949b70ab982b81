use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    flashgate::cli::run(flashgate::cli::Cli::parse()).await
}
