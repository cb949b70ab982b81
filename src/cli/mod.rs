//! The command line: one file per command, each a thin layer that parses its
//! flags, resolves the configuration and calls the library (`app`,
//! `inventory`, `ledger`, `reconcile`, `db`). The library never imports
//! `cli`. Every setting can also be set in the config file and by a
//! `FLASHGATE_*` environment variable; flags win over the environment, which
//! wins over the file (`args`).

mod args;
mod config;
mod layout;
mod ledger;
mod migrate;
mod preload;
mod reconcile;
mod serve;
mod signing_key;
mod status;
mod verify_draw;

pub use args::{CommonArgs, LedgerArgs, ServeArgs};
pub use ledger::LedgerCmdArgs;
pub use preload::PreloadArgs;
pub use reconcile::ReconcileArgs;
pub use status::{status_table, StatusArgs};
pub use verify_draw::VerifyDrawArgs;

use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::Config;
use crate::db::Db;
use crate::inventory::Inventory;
use crate::metrics::Metrics;

#[derive(Parser, Debug)]
#[command(
    name = "flashgate",
    version,
    about = "Flash-sale gatekeeper: sharded, idempotent stock reservations in front of Redis"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the HTTP service.
    Serve(ServeArgs),
    /// Load a SKU's stock into Redis before the sale (refuses to overwrite a live SKU without --force).
    Preload(PreloadArgs),
    /// Show a SKU's books: available / held / sold, per shard.
    Status(StatusArgs),
    /// Print the effective configuration (secrets redacted).
    Config(ServeArgs),
    /// Apply the PostgreSQL schema migrations (idempotent).
    Migrate(CommonArgs),
    /// Run a ledger writer alone: outbox streams in Redis -> PostgreSQL, until SIGTERM/SIGINT.
    Ledger(LedgerCmdArgs),
    /// Compare the books in Redis with the ledger in PostgreSQL; --fix repairs Redis.
    Reconcile(ReconcileArgs),
    /// Upgrade Redis's data to this version's layout, between sales (refuses while holds are outstanding without --force).
    MigrateLayout(layout::MigrateLayoutArgs),
    /// Write a new Ed25519 key for signed holds (PKCS#8 PEM) and print its kid (docs/signed-holds.md).
    GenSigningKey(signing_key::GenSigningKeyArgs),
    /// Check a SKU's fair draw from the public API alone: commitment, digest, order (exit 1 names the first problem).
    VerifyDraw(VerifyDrawArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

pub async fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Preload(args) if args.from_postgres => preload::from_postgres(args).await,
        Command::Preload(args) => preload::run(args).await,
        Command::Status(args) => status::run(args).await,
        Command::Migrate(args) => migrate::run(args).await,
        Command::MigrateLayout(args) => layout::run(args).await,
        Command::Ledger(args) => ledger::run(args).await,
        Command::Reconcile(args) => return reconcile::run(args).await,
        Command::Config(args) => config::run(args),
        Command::GenSigningKey(args) => signing_key::run(args),
        Command::VerifyDraw(args) => verify_draw::run(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("flashgate: {msg}");
            ExitCode::FAILURE
        }
    }
}

pub fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// The Redis side, for a command.
async fn connect(config: &Config, metrics: Arc<Metrics>) -> Result<Arc<Inventory>, String> {
    Inventory::connect(config, metrics)
        .await
        .map(Arc::new)
        .map_err(|e| format!("cannot reach redis at {}: {e}", config.redis_url))
}

/// The ledger's database, for a command.
fn db_of(config: &Config) -> Result<Db, String> {
    Db::new(&config.postgres_url, config.postgres_pool_size).map_err(|e| e.to_string())
}

/// The Redis side, for a command that needs no metrics.
async fn inventory_of(args: &CommonArgs) -> Result<Inventory, String> {
    let config = args.resolve().map_err(|e| e.to_string())?;
    Inventory::connect(&config, Arc::new(Metrics::new(1)))
        .await
        .map_err(|e| format!("cannot reach redis at {}: {e}", config.redis_url))
}
