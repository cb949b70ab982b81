//! `flashgate preload`: load a SKU's stock into Redis before the sale, from
//! flags or (`--from-postgres`) from the `skus` catalogue table, where a SKU
//! Redis lost but the ledger has sold from is restored from the ledger
//! (`reconcile --fix`), never loaded afresh.

use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::{connect, db_of, CommonArgs};
use crate::domain::Sku;
use crate::inventory::PreloadOutcome;
use crate::ledger::{self, LedgerSettings};
use crate::metrics::Metrics;
use crate::reconcile::{table, Options, Reconciler};

#[derive(Args, Debug)]
pub struct PreloadArgs {
    /// Load every SKU of the PostgreSQL `skus` table (or just --sku) instead of --stock/--shards.
    #[arg(long, conflicts_with = "stock")]
    pub from_postgres: bool,
    /// The SKU to load (with --from-postgres: only this row of the catalogue).
    #[arg(long, required_unless_present = "from_postgres")]
    pub sku: Option<String>,
    /// Units for sale, split evenly over the shards (at most 10^12).
    #[arg(long, required_unless_present = "from_postgres",
          value_parser = clap::value_parser!(i64).range(0..=crate::inventory::MAX_STOCK))]
    pub stock: Option<i64>,
    /// Shard keys to spread the SKU over (more shards: more Redis Cluster masters can serve it; 1..=256).
    #[arg(long, default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(1..=i64::from(crate::inventory::MAX_SHARDS)))]
    pub shards: u16,
    /// Overwrite a SKU that is already loaded (holds and sales already made stay on the books).
    #[arg(long)]
    pub force: bool,
    /// Succeed without change when the SKU is already loaded (for scripts that may run twice).
    #[arg(long, conflicts_with = "force")]
    pub if_absent: bool,
    /// At most this many units of the SKU per buyer, held and confirmed together (0 = no cap).
    #[arg(long)]
    pub max_per_user: Option<u32>,
    /// The sale opens at this RFC 3339 instant (Redis clock): reserves before it answer 409 sale_not_open, `"waitlist": true` pre-queues (docs/fair-draw.md).
    #[arg(long)]
    pub opens_at: Option<String>,
    /// The sale closes at this RFC 3339 instant: reserves from then on answer 409 sale_closed.
    #[arg(long)]
    pub closes_at: Option<String>,
    #[command(flatten)]
    pub common: CommonArgs,
}

pub(super) async fn run(args: PreloadArgs) -> Result<(), String> {
    let sku = Sku::parse(args.sku.as_deref().unwrap_or_default())?;
    let stock = args.stock.unwrap_or(0);
    let instant = |what: &str, v: &Option<String>| {
        v.as_deref()
            .map(|s| crate::inventory::Window::parse_instant(what, s))
            .transpose()
            .map_err(|e| crate::error::ApiError::from(e).message())
    };
    let window = crate::inventory::Window {
        opens_at_ms: instant("--opens-at", &args.opens_at)?,
        closes_at_ms: instant("--closes-at", &args.closes_at)?,
    };
    window
        .check()
        .map_err(|e| crate::error::ApiError::from(e).message())?;
    let inventory = super::inventory_of(&args.common).await?;
    let outcome = inventory
        .preload_with(
            &sku,
            crate::inventory::PreloadSpec {
                stock,
                shards: args.shards,
                force: args.force,
                max_per_user: args.max_per_user,
                window,
            },
        )
        .await
        .map_err(|e| crate::error::ApiError::from(e).message())?;
    inventory.close().await;
    match outcome {
        PreloadOutcome::Loaded { per_shard } => {
            println!("loaded {sku}: {} units over {} shards {:?}", stock, args.shards, per_shard);
            Ok(())
        }
        PreloadOutcome::AlreadyLoaded if args.if_absent => {
            println!("{sku} is already loaded; left as it is");
            Ok(())
        }
        PreloadOutcome::AlreadyLoaded => Err(format!(
            "{sku} is already loaded (a live sale?); nothing changed. Use --force to overwrite its available units"
        )),
    }
}

/// `flashgate preload --from-postgres [--sku S] [--force | --if-absent]`.
pub(super) async fn from_postgres(args: PreloadArgs) -> Result<(), String> {
    let config = args.common.resolve().map_err(|e| e.to_string())?;
    let db = db_of(&config)?;
    db.migrate().await.map_err(|e| e.to_string())?;
    let only = args.sku.as_deref().filter(|s| !s.is_empty());
    let rows = db.catalogue(only).await.map_err(|e| e.to_string())?;
    if rows.is_empty() {
        return Err(match only {
            Some(s) => format!("no row for {s} in the skus table at {}", db.url()),
            None => format!("the skus table at {} is empty", db.url()),
        });
    }
    // every row is checked before any is loaded: a bad row refuses the run
    // and nothing is written
    let mut specs = Vec::with_capacity(rows.len());
    for row in rows {
        let sku = Sku::parse(&row.sku).map_err(|e| format!("skus row {:?}: {e}", row.sku))?;
        let shards = u16::try_from(row.shards).map_err(|_| format!("{sku}: bad shard count"))?;
        let max_per_user = row
            .max_per_user
            .map(|m| u32::try_from(m).map_err(|_| format!("{sku}: bad max_per_user {m}")))
            .transpose()?;
        let ms = |t: Option<std::time::SystemTime>| -> Result<Option<i64>, String> {
            t.map(|t| {
                t.duration_since(std::time::UNIX_EPOCH)
                    .ok()
                    .and_then(|d| i64::try_from(d.as_millis()).ok())
                    .ok_or_else(|| format!("{sku}: a sale window before 1970"))
            })
            .transpose()
        };
        let spec = crate::inventory::PreloadSpec {
            stock: row.stock,
            shards,
            force: args.force,
            max_per_user,
            window: crate::inventory::Window {
                opens_at_ms: ms(row.opens_at)?,
                closes_at_ms: ms(row.closes_at)?,
            },
        };
        spec.validate()
            .map_err(|e| format!("{sku}: {e}; nothing was loaded"))?;
        specs.push((sku, spec));
    }
    let metrics = Arc::new(Metrics::new(1));
    let inventory = connect(&config, metrics.clone()).await?;
    let mut refused = Vec::new();
    let mut failed: Vec<String> = Vec::new();
    for (sku, spec) in specs {
        // A SKU Redis does not have but the ledger has loaded before is a
        // reload after loss (a wipe, a restart without persistence): its
        // sales happened, so it is restored from the ledger (what is sold
        // stays sold, no unit is counted twice), not loaded afresh.
        let absent = inventory
            .meta(&sku)
            .await
            .map_err(|e| crate::error::ApiError::from(e).message())?
            .is_none();
        if absent && db.retired(sku.as_str()).await.map_err(|e| e.to_string())? {
            // its old sales are on the ledger under this name: a new sale
            // loaded under it would be reconciled against them
            failed.push(format!("{sku} (retired: sell it under a new SKU name)"));
            continue;
        }
        let loaded_before = absent
            && db
                .ledger_preloaded(sku.as_str())
                .await
                .map_err(|e| e.to_string())?
                .is_some();
        if loaded_before {
            let mut settings = LedgerSettings::from_config(&config);
            settings.consumer = ledger::default_consumer("preload");
            let mut r = Reconciler::new(inventory.clone(), db.clone(), metrics.clone(), settings);
            let report = r
                .run(&Options {
                    sku: Some(sku.clone()),
                    fix: true,
                    force: true,
                    wait: Duration::from_secs(60),
                    quiet_ms: 0,
                })
                .await
                .map_err(|e| format!("{sku}: reload after loss: {e}"))?;
            if report.exit_code() != 0 {
                print!("{}", table(&report));
                failed.push(format!("{sku} (reload after loss left drift)"));
                continue;
            }
            let (available, sold): (i64, i64) = report
                .skus
                .iter()
                .flat_map(|s| s.per_shard.iter())
                .fold((0, 0), |(a, s), sh| {
                    (a + sh.ledger.available, s + sh.ledger.sold)
                });
            let initial: i64 = report
                .skus
                .iter()
                .flat_map(|s| s.per_shard.iter())
                .map(|sh| sh.ledger.initial)
                .sum();
            println!(
                "{sku}: reload after loss: restored from the ledger ({available} available, {sold} sold of {initial}), not loaded afresh{}",
                if initial == spec.stock {
                    String::new()
                } else {
                    format!(
                        "; the catalogue says {} units: `preload --force` changes the stock",
                        spec.stock
                    )
                }
            );
            db.mark_loaded(sku.as_str())
                .await
                .map_err(|e| e.to_string())?;
            continue;
        }
        let outcome = inventory
            .preload_with(&sku, spec)
            .await
            .map_err(|e| crate::error::ApiError::from(e).message())?;
        match outcome {
            PreloadOutcome::Loaded { per_shard } => {
                db.mark_loaded(sku.as_str())
                    .await
                    .map_err(|e| e.to_string())?;
                println!(
                    "loaded {sku}: {} units over {} shards {per_shard:?}",
                    spec.stock, spec.shards
                );
            }
            PreloadOutcome::AlreadyLoaded if args.if_absent => {
                println!("{sku} is already loaded; left as it is");
            }
            PreloadOutcome::AlreadyLoaded => {
                println!("{sku} is already loaded (a live sale?); left as it is");
                refused.push(sku.to_string());
            }
        }
    }
    inventory.close().await;
    if refused.is_empty() && failed.is_empty() {
        Ok(())
    } else if failed.is_empty() {
        Err(format!(
            "{} already loaded, nothing changed for them; --force overwrites available units, --if-absent accepts this",
            refused.join(", ")
        ))
    } else {
        refused.extend(failed);
        Err(format!("nothing changed for {}", refused.join(", ")))
    }
}
