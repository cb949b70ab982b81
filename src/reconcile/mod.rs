//! Post-sale reconciliation: prove that every unit is accounted for by
//! comparing the books in Redis with the ledger in PostgreSQL, per SKU and
//! shard, and repair Redis when they disagree (`--fix`).
//!
//! **What is compared.** Per shard, Redis's counters (available, held, sold,
//! initial, transferred in/out) against the same books worked out from the
//! ledger (initial = the shard's last first load + later preload changes,
//! sold = units of reservations with a `confirmed` event, held = units of reservations held and not ended, available
//! = the rest), and Redis's own invariant `initial + xin - xout = available +
//! held + sold`. Then per reservation: the ledger's state of every reservation
//! it knows and of every hold Redis has, against Redis's record of it.
//!
//! **Who is right.** The ledger is the book of record: what it holds happened
//! (an event is appended in the same atomic step as the change, and written to
//! Postgres only from there). Redis can lose acknowledged writes (a crash
//! before fsync, a failover to a lagging replica), so a unit the ledger has
//! and Redis does not is restored in Redis. The one exception is an outbox
//! entry lost *before* it reached the ledger (the stream capped while the
//! ledger was down for long, an entry deleted by hand): then Redis's
//! reservation record proves the event, and reconcile backfills it into the
//! ledger (source `reconcile`) rather than undo a sale. A hold the ledger has
//! but Redis lost can never be confirmed (its id answers 404), so it is closed
//! in the ledger as `expired` and its units go back on sale.
//!
//! **Consistency.** A shard is read between two reads of its newest outbox id
//! (equal, or it is read again), the ledger is read only once the consumer
//! group has every entry up to that id committed, and the fix
//! (`lua/fix.lua`) refuses to write if the shard's newest id moved since. A
//! fix computed from a stale snapshot therefore never lands. One `--fix` per
//! SKU at a time (a PostgreSQL advisory lock), and its audit is committed
//! before Redis is touched (see `try_fix`).
//!
//! **Never worse.** Every record of a shard is read (a SCAN), so a sale
//! whose events were all lost is backfilled, not undone; a confirm on the
//! ledger is a sale whatever other end it shows; transfers are balanced per
//! SKU; ledger preloads above the catalogue's stock are refused. The rules
//! and the exit codes are in docs/reconcile.md.
//!
//! **Live sales.** `--fix` refuses a SKU that still has holds outstanding in
//! Redis or whose last stock change is younger than `--quiet-seconds`: its
//! books are still moving, and a correction would race buyers. `--force`
//! overrides that (the per-shard guard above still applies).
//!
//! **Carts.** A whole run also judges every cart the ledger has in a final
//! state against its lines' events (`carts`): a partial cart is reported,
//! never fixed.
//!
//! **Where.** `snapshot` reads a shard (Redis and the ledger) consistently;
//! `compare` (pure) turns the two readings into findings, the ledger's
//! books and a repair plan; `repair` applies a plan under the SKU's lock
//! with its audit; `report` holds the report, its verdict and exit code,
//! and the human table. This file runs them over every SKU.

mod carts;
mod compare;
mod repair;
mod report;
mod snapshot;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::interfaces::KeysInterface;

pub use crate::db::FIX_LOCK_SQL;
use crate::db::{Db, DbError};
use crate::domain::Sku;
use crate::inventory::InventoryError;
use crate::inventory::{scripts, Inventory};
use crate::ledger::{LedgerError, LedgerSettings, Writer};
use crate::metrics::Metrics;
pub use carts::CartFinding;
use compare::{balance_transfers, compare};
pub use compare::{Books, CounterDrift, RecordDrift};
pub use report::{table, Report, ShardReport, SkuReport, REPORT_VERSION};

/// What a reconcile run is asked to do.
#[derive(Clone, Debug)]
pub struct Options {
    pub sku: Option<Sku>,
    pub fix: bool,
    pub force: bool,
    pub wait: Duration,
    pub quiet_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("redis: {0}")]
    Redis(#[from] InventoryError),
    #[error("{0}")]
    Db(#[from] DbError),
    #[error("the ledger has not caught up with {stream}: entries up to {id} are not all written after {waited:?} (is a ledger writer stuck? its entries are taken over after ledger_claim_idle_ms)")]
    Lag {
        stream: String,
        id: String,
        waited: Duration,
    },
    #[error("{stream} kept changing for {waited:?}; the sale is still running (reconcile after it, or use --force with --fix)")]
    Busy { stream: String, waited: Duration },
    #[error("unknown sku {0}: neither loaded in Redis nor on the ledger")]
    UnknownSku(String),
}

impl From<LedgerError> for ReconcileError {
    fn from(e: LedgerError) -> Self {
        match e {
            LedgerError::Redis(r) => ReconcileError::Redis(r),
            LedgerError::Db(d) => ReconcileError::Db(d),
        }
    }
}

/// Reconciles Redis against the ledger.
pub struct Reconciler {
    inventory: Arc<Inventory>,
    db: Db,
    metrics: Arc<Metrics>,
    writer: Writer,
    /// On one Redis server, the ids of the records that ride in claims (data
    /// layout 6), by shard (`SKU.s`): snapshot.rs's `claim_records`.
    claim_rids: Option<HashMap<String, Vec<String>>>,
}

impl Reconciler {
    pub fn new(
        inventory: Arc<Inventory>,
        db: Db,
        metrics: Arc<Metrics>,
        settings: LedgerSettings,
    ) -> Reconciler {
        let writer = Writer::new(inventory.clone(), db.clone(), metrics.clone(), settings);
        Reconciler {
            inventory,
            db,
            metrics,
            writer,
            claim_rids: None,
        }
    }

    /// Reconcile (and with `opts.fix`, repair) every SKU or `opts.sku`.
    pub async fn run(&mut self, opts: &Options) -> Result<Report, ReconcileError> {
        self.db.migrate().await?;
        let run_id = uuid::Uuid::new_v4().simple().to_string();
        let lag_at_start = self.writer.lag().await?;
        // Catch the ledger up ourselves (one more writer in the group): with
        // no writer running, reconcile still sees every event.
        // Until a pass finds nothing new: entries pending with another (live)
        // writer are waited for per shard, below.
        let deadline = Instant::now() + opts.wait;
        // A stream that fails here (its master down) is not the other SKUs'
        // concern: each shard below waits for its own stream, and says so.
        while Instant::now() < deadline {
            match self.writer.pass(true).await {
                Ok(p) if p.delivered > 0 => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "reconcile: the ledger catch-up met an error; checking per shard");
                    break;
                }
            }
        }

        let mut skus: BTreeSet<String> = self
            .inventory
            .skus()
            .await?
            .iter()
            .map(|s| s.to_string())
            .collect();
        skus.extend(self.db.ledger_skus().await?);
        // retired SKUs stay on the ledger but out of reconcile, unless a
        // SKU of that name is loaded in Redis again
        let loaded: BTreeSet<String> = self
            .inventory
            .skus()
            .await?
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut retired = Vec::new();
        for name in self.db.retired_skus().await? {
            if !loaded.contains(&name) && skus.remove(&name) {
                retired.push(name);
            }
        }
        if let Some(only) = &opts.sku {
            retired.retain(|s| s == only.as_str());
            if !skus.contains(only.as_str()) && retired.is_empty() {
                return Err(ReconcileError::UnknownSku(only.to_string()));
            }
            skus.retain(|s| s == only.as_str());
        }
        let mut report = Report {
            version: REPORT_VERSION,
            verdict: "clean",
            run_id,
            fix: opts.fix,
            force: opts.force,
            ledger_lag_at_start: lag_at_start,
            retired,
            skus: Vec::new(),
            carts_checked: 0,
            carts: Vec::new(),
        };
        for name in skus {
            let Ok(sku) = Sku::parse(&name) else {
                continue; // not a name flashgate could have written
            };
            // one `--fix` per SKU at a time: a second one would pass the
            // per-shard guard too (fix.lua appends no event) and fix twice
            let lock = if opts.fix {
                match self.lock(&sku).await {
                    Ok(l) => Some(l),
                    Err(e) => {
                        report.skus.push(SkuReport::failed(&sku, &e));
                        continue;
                    }
                }
            } else {
                None
            };
            let busy = lock.as_ref().is_some_and(|l| !l.held);
            let r = self.sku(&sku, opts, deadline, &report.run_id, busy).await;
            if let Some(l) = lock.filter(|l| l.held) {
                Db::fix_unlock(l, sku.as_str()).await;
            }
            // an error on one SKU does not hide the others (some may be
            // fixed already): it is reported, and the run exits 2
            report.skus.push(match r {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(%sku, error = %e, "reconcile: cannot check this SKU");
                    SkuReport::failed(&sku, &e)
                }
            });
        }
        // Carts span SKUs: judged on a whole run only (report-only, carts.rs)
        if opts.sku.is_none() {
            let (findings, checked) = self.carts().await?;
            report.carts = findings;
            report.carts_checked = checked;
        }
        report.verdict = report.verdict();
        Ok(report)
    }

    async fn sku(
        &mut self,
        sku: &Sku,
        opts: &Options,
        deadline: Instant,
        run_id: &str,
        lock_busy: bool,
    ) -> Result<SkuReport, ReconcileError> {
        let catalogue_stock = self
            .db
            .catalogue(Some(sku.as_str()))
            .await?
            .first()
            .map(|r| r.stock);
        let mut restored = false;
        // past any cached layout: is it in Redis now?
        let present: i64 = self
            .inventory
            .pool()
            .next()
            .exists(crate::inventory::keys::meta(sku))
            .await
            .map_err(|e| self.err(e))?;
        let meta = match self.inventory.meta(sku).await?.filter(|_| present > 0) {
            Some(meta) => meta,
            // Redis lost the SKU (a restart without persistence): rebuild its
            // layout from the ledger; the shards' books follow below like any drift
            None if opts.fix && !lock_busy => {
                self.restore_layout(sku, run_id).await?;
                restored = true;
                match self.inventory.meta(sku).await? {
                    Some(meta) => meta,
                    None => return Err(ReconcileError::UnknownSku(sku.to_string())),
                }
            }
            None => {
                return Ok(SkuReport {
                    sku: sku.to_string(),
                    shards: 0,
                    catalogue_stock,
                    live: None,
                    missing_in_redis: true,
                    restored: false,
                    problems: Vec::new(),
                    pending_transfers: Vec::new(),
                    error: None,
                    per_shard: Vec::new(),
                })
            }
        };
        let mut read = Vec::new();
        for s in 0..meta.shards {
            read.push(self.read_shard(&meta, s, deadline).await?);
        }
        let live = self.live(&meta, &read, opts.quiet_ms).await?;
        let mut problems = Vec::new();
        // Reconcile never invents units: stock the ledger says was loaded
        // beyond what the catalogue has is not restored (an older reload
        // counted twice, a preload row added by hand): a human decides.
        let ledger_initial: i64 = read.iter().map(|(_, l)| l.initial).sum();
        if let Some(c) = catalogue_stock.filter(|c| ledger_initial > *c) {
            problems.push(format!(
                "the ledger's preloads ({ledger_initial} units) exceed the catalogue's stock ({c}): \
                 reconcile invents no units; correct the ledger or the catalogue"
            ));
        }
        let now = crate::inventory::now_ms();
        let (mut fills, pending_transfers) = balance_transfers(&mut read, &mut problems, now);
        let mut per_shard = Vec::new();
        for (s, (snap, ledger)) in read.into_iter().enumerate() {
            let s = s as u16; // < meta.shards
            let (mut report, mut plan) = compare(meta.keys(s).events(), s, &snap, ledger, now);
            for (drift, fill) in fills.remove(&s).unwrap_or_default() {
                report.records.push(drift);
                plan.backfill.push(fill);
            }
            if opts.fix && report.drift() {
                report.fix = Some(if lock_busy {
                    format!(
                        "refused: another reconcile --fix is running on {} (it holds the SKU's lock); run again after it",
                        meta.sku
                    )
                } else if let Some(p) = problems.first() {
                    format!("refused: {p}")
                } else if live.is_some() && !opts.force {
                    format!(
                        "refused: the sale looks live ({}); use --force",
                        live.as_deref().unwrap_or_default()
                    )
                } else {
                    self.fix(&meta, s, &snap, &report, &plan, run_id, opts.force)
                        .await
                });
            }
            let settled = !report.drift() || report.fix.as_deref() == Some("fixed");
            if opts.fix && !lock_busy && settled {
                self.finish_interrupted(sku, s, run_id).await?;
            }
            per_shard.push(report);
        }
        Ok(SkuReport {
            sku: sku.to_string(),
            shards: meta.shards,
            catalogue_stock,
            live,
            missing_in_redis: false,
            restored,
            problems,
            pending_transfers,
            error: None,
            per_shard,
        })
    }

    fn err(&self, e: fred::error::Error) -> InventoryError {
        scripts::classify(&self.metrics, e)
    }
}
