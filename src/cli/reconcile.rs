//! `flashgate reconcile`: compare the books in Redis with the ledger and,
//! with `--fix`, repair Redis; `--retire` takes a SKU out of reconcile. The
//! rules are the library's (`crate::reconcile`); this file parses the flags
//! and maps the report's verdict to the exit code.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::{connect, db_of, CommonArgs, Format, LedgerArgs};
use crate::domain::Sku;
use crate::ledger::{self, LedgerSettings};
use crate::metrics::Metrics;
use crate::reconcile::{table, Options, Reconciler, Report};

/// `flashgate reconcile`.
#[derive(Args, Debug)]
pub struct ReconcileArgs {
    /// Only this SKU (default: every SKU loaded in Redis or on the ledger).
    #[arg(long)]
    pub sku: Option<String>,
    /// Correct the Redis books to the ledger's, atomically per shard, with an audit row per correction.
    #[arg(long)]
    pub fix: bool,
    /// Fix even a SKU that still looks live (holds outstanding or recent stock changes).
    #[arg(long, requires = "fix")]
    pub force: bool,
    /// Mark --sku retired (cleaned out of Redis on purpose): later runs skip it and
    /// --fix never restores it. Refused while the SKU is loaded in Redis.
    #[arg(long, requires = "sku", conflicts_with = "fix")]
    pub retire: bool,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// How long to wait for the ledger to catch up with the outbox streams.
    #[arg(long, default_value_t = 60)]
    pub wait_seconds: u64,
    /// A SKU whose last stock change is younger than this counts as live.
    #[arg(long, default_value_t = 60)]
    pub quiet_seconds: u64,
    #[command(flatten)]
    pub ledger: LedgerArgs,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// `flashgate reconcile`: exit 0 when clean (or every drift repaired by
/// `--fix`), 1 when drift is left, 2 when reconcile could not run.
pub(super) async fn run(args: ReconcileArgs) -> ExitCode {
    if args.retire {
        return match retire_cmd(&args).await {
            Ok(msg) => {
                println!("{msg}");
                ExitCode::SUCCESS
            }
            Err(msg) => {
                eprintln!("flashgate reconcile --retire: {msg}");
                ExitCode::from(2)
            }
        };
    }
    match reconcile_cmd(&args).await {
        Ok(report) => {
            match args.format {
                Format::Json => match serde_json::to_string_pretty(&report) {
                    Ok(j) => println!("{j}"),
                    Err(e) => {
                        eprintln!("flashgate: {e}");
                        return ExitCode::from(2);
                    }
                },
                Format::Table => print!("{}", table(&report)),
            }
            ExitCode::from(report.exit_code())
        }
        Err(msg) => {
            eprintln!("flashgate reconcile: {msg}");
            ExitCode::from(2)
        }
    }
}

/// `flashgate reconcile --retire --sku S`: S was cleaned out of Redis on
/// purpose; record it so reconcile stops reporting it and never restores it.
async fn retire_cmd(args: &ReconcileArgs) -> Result<String, String> {
    let config = args
        .ledger
        .resolve(&args.common)
        .map_err(|e| e.to_string())?;
    let sku = Sku::parse(args.sku.as_deref().unwrap_or_default())?;
    let db = db_of(&config)?;
    db.migrate().await.map_err(|e| e.to_string())?;
    let inventory = connect(&config, Arc::new(Metrics::new(1))).await?;
    let loaded = inventory
        .meta(&sku)
        .await
        .map_err(|e| crate::error::ApiError::from(e).message())?
        .is_some();
    inventory.close().await;
    if loaded {
        return Err(format!(
            "{sku} is loaded in Redis; retire a SKU only once its keys are cleaned out"
        ));
    }
    db.retire(sku.as_str()).await.map_err(|e| e.to_string())?;
    Ok(format!(
        "{sku} retired: reconcile skips it and --fix never restores it (its ledger rows stay)"
    ))
}

async fn reconcile_cmd(args: &ReconcileArgs) -> Result<Report, String> {
    let config = args
        .ledger
        .resolve(&args.common)
        .map_err(|e| e.to_string())?;
    let sku = args.sku.as_deref().map(Sku::parse).transpose()?;
    let db = db_of(&config)?;
    let metrics = Arc::new(Metrics::new(1));
    let inventory = connect(&config, metrics.clone()).await?;
    let mut settings = LedgerSettings::from_config(&config);
    settings.consumer = ledger::default_consumer("reconcile");
    let mut r = Reconciler::new(inventory.clone(), db, metrics, settings);
    let result = r
        .run(&Options {
            sku,
            fix: args.fix,
            force: args.force,
            wait: Duration::from_secs(args.wait_seconds),
            quiet_ms: i64::try_from(args.quiet_seconds.saturating_mul(1000)).unwrap_or(i64::MAX),
        })
        .await;
    inventory.close().await;
    result.map_err(|e| e.to_string())
}
