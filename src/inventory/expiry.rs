//! The expiry sweeper: a background task that visits every shard of every
//! preloaded SKU and returns due holds to stock (`lua/expire.lua`). Every
//! flashgate instance runs one; the script makes a second visit a no-op, so
//! instances need no coordination. It also completes transfers between shards
//! whose mover died half-way, finishes carts whose instance died half-way
//! (`cart.rs`), and refreshes the per-SKU gauges.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::Inventory;
use crate::metrics::Metrics;

/// A transfer pending this long is taken to be abandoned by its mover.
const TRANSFER_GRACE_MS: i64 = 5_000;
/// How often the slower chores (transfer recovery, gauges) run.
const CHORE_INTERVAL: Duration = Duration::from_secs(1);

/// Run until `shutdown` turns true, one sweep every `interval`.
pub async fn run(
    inventory: Arc<Inventory>,
    metrics: Arc<Metrics>,
    interval: Duration,
    heartbeat: crate::shutdown::Heartbeat,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_chores = Instant::now() - CHORE_INTERVAL;
    let started = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            return;
        }
        let chores = last_chores.elapsed() >= CHORE_INTERVAL;
        if chores {
            last_chores = Instant::now();
        }
        // Redis's data layout and claim key, read again once a second
        // even where nothing probes `/readyz`: an instance never names
        // claims for long from a claim key the store no longer has
        // (keys.rs, CLAIM_SECRET). A failure is the sweep's to report.
        if chores {
            if let Err(e) = inventory.check_data_layout().await {
                tracing::debug!(error = %e, "data layout re-check failed");
            }
        }
        if let Err(e) = sweep(&inventory, &metrics, chores).await {
            tracing::warn!(error = %e, "expiry sweep failed; retrying next tick");
        }
        // Carts an instance left half-way (cart.rs): after this, each is
        // whole or holds nothing. With the chores (once a second: their
        // deadline is seconds anyway), and not in the first round, so an
        // instance that just started costs Redis nothing until then.
        if chores && started.elapsed() >= CHORE_INTERVAL {
            if let Err(e) = inventory.sweep_carts().await {
                tracing::warn!(error = %e, "cart sweep failed; retrying next second");
            }
        }
        heartbeat.beat();
    }
}

/// One pass over every shard. Returns the number of holds expired.
pub async fn sweep(
    inventory: &Inventory,
    metrics: &Metrics,
    chores: bool,
) -> Result<i64, super::InventoryError> {
    let mut expired = 0;
    let mut lateness_ms = 0;
    // A shard that fails (its master down, a timeout) must not stop the
    // others' expiry: note the first error, go on, report it at the end.
    let mut first_error = None;
    for sku in inventory.skus().await? {
        let meta = match inventory.meta(&sku).await {
            Ok(Some(meta)) => meta,
            Ok(None) => continue,
            Err(e) => {
                first_error.get_or_insert(e);
                continue;
            }
        };
        for s in 0..meta.shards {
            let step: Result<(), super::InventoryError> = async {
                loop {
                    let (n, late) = inventory.expire_shard(&meta, s).await?;
                    expired += n;
                    lateness_ms = lateness_ms.max(late);
                    if n < inventory.sweep_batch() {
                        break;
                    }
                }
                if chores {
                    inventory
                        .recover_transfers(&meta, s, TRANSFER_GRACE_MS)
                        .await?;
                }
                Ok(())
            }
            .await;
            if let Err(e) = step {
                first_error.get_or_insert(e);
            }
        }
        if chores {
            match inventory.status(&sku).await {
                Ok(st) => {
                    metrics.set_sku(sku.as_str(), st.available, st.held, st.sold, st.drift());
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
    }
    metrics.sweeper_runs.inc();
    metrics.sweeper_expired.inc_by(expired as u64);
    metrics
        .outcomes
        .with_label_values(&["expired"])
        .inc_by(expired as u64);
    metrics.sweeper_lag.set(lateness_ms as f64 / 1000.0);
    match first_error {
        Some(e) => Err(e),
        None => Ok(expired),
    }
}
