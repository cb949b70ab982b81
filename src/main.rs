use std::process::ExitCode;

use clap::Parser;

// glibc malloc was 10-12 % of the server's CPU under load (bench/README.md);
// mimalloc's thread-local free lists take most of that away.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    flashgate::cli::run(flashgate::cli::Cli::parse()).await
}
