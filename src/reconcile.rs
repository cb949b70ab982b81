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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::interfaces::{
    ClientLike, HashesInterface, KeysInterface, SetsInterface, SortedSetsInterface,
};
use fred::types::{ClusterHash, CustomCommand, Value};
use serde::Serialize;

use crate::db::{Db, DbError};
use crate::domain::Sku;
use crate::error::InventoryError;
use crate::inventory::scripts::{self, array, at, int, text, StoredRecord};
use crate::inventory::{Inventory, SkuMeta, MAX_SHARDS};
use crate::ledger::{self, LedgerError, LedgerSettings, Writer};
use crate::metrics::Metrics;

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

/// One shard's books, as Redis has them or as the ledger says they must be.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Books {
    pub available: i64,
    pub held: i64,
    pub sold: i64,
    pub initial: i64,
    pub xfer_in: i64,
    pub xfer_out: i64,
}

impl Books {
    fn fields(&self) -> [(&'static str, i64); 6] {
        [
            ("available", self.available),
            ("held", self.held),
            ("sold", self.sold),
            ("initial", self.initial),
            ("xfer_in", self.xfer_in),
            ("xfer_out", self.xfer_out),
        ]
    }

    /// `initial + xin - xout - (available + held + sold)`.
    fn unaccounted(&self) -> i64 {
        self.initial + self.xfer_in - self.xfer_out - (self.available + self.held + self.sold)
    }
}

/// A counter on which Redis and the ledger disagree.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CounterDrift {
    pub field: &'static str,
    pub redis: i64,
    pub ledger: i64,
}

/// A reservation on which Redis and the ledger disagree.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RecordDrift {
    pub rid: String,
    pub qty: i64,
    /// `none`, `held`, or how it ended.
    pub ledger: String,
    /// `absent`, or the record's status.
    pub redis: String,
    /// `ledger_missing` (the outbox lost events Redis proves: backfilled into
    /// the ledger), `hold_lost` (Redis lost a hold: closed as expired in the
    /// ledger), `record_behind` (Redis lost the end of a hold: its record is
    /// settled), `status_conflict` (both ended, differently: the ledger wins,
    /// the record is set to its status).
    pub finding: &'static str,
    pub repair: String,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ShardReport {
    pub shard: u16,
    pub stream: String,
    pub redis: Books,
    /// The books the ledger says this shard must have (after the repairs listed in `records`).
    pub ledger: Books,
    /// Redis's own books do not add up by this many units (0 when they do).
    pub redis_unaccounted: i64,
    pub counters: Vec<CounterDrift>,
    pub records: Vec<RecordDrift>,
    /// What `--fix` did: `fixed`, `refused: …`, `skipped: …`, `failed: …` (None without --fix or drift).
    pub fix: Option<String>,
}

impl ShardReport {
    pub fn drift(&self) -> bool {
        self.redis_unaccounted != 0 || !self.counters.is_empty() || !self.records.is_empty()
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SkuReport {
    pub sku: String,
    pub shards: u16,
    /// Stock in the `skus` catalogue table, when the SKU has a row.
    pub catalogue_stock: Option<i64>,
    /// Why the SKU counts as still selling (None: quiet).
    pub live: Option<String>,
    /// Not loaded in Redis although the ledger has events for it.
    pub missing_in_redis: bool,
    /// Redis had lost the SKU; `--fix` loaded its layout back from the ledger
    /// (shard count and hash tags) and its books with the shards' fixes.
    pub restored: bool,
    /// What reconcile could not decide for the SKU as a whole, and why (its
    /// fix is refused while any is left).
    pub problems: Vec<String>,
    /// Transfers between the SKU's shards still in transit (a pending
    /// record on the donor, not yet applied): `<id>: <n> units <from> -> <to>`.
    /// The sweeper completes them; not drift.
    pub pending_transfers: Vec<String>,
    /// Reconcile could not check this SKU (the others are still reported).
    pub error: Option<String>,
    pub per_shard: Vec<ShardReport>,
}

impl SkuReport {
    fn failed(sku: &Sku, e: &ReconcileError) -> SkuReport {
        SkuReport {
            sku: sku.to_string(),
            shards: 0,
            catalogue_stock: None,
            live: None,
            missing_in_redis: false,
            restored: false,
            problems: Vec::new(),
            pending_transfers: Vec::new(),
            error: Some(e.to_string()),
            per_shard: Vec::new(),
        }
    }

    pub fn drift(&self) -> bool {
        self.missing_in_redis
            || self.restored
            || self.error.is_some()
            || !self.problems.is_empty()
            || self.per_shard.iter().any(ShardReport::drift)
    }
}

/// The version of the JSON report's layout; raised when a field changes meaning.
pub const REPORT_VERSION: u32 = 2;

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Report {
    /// [`REPORT_VERSION`].
    pub version: u32,
    /// `clean`, `repaired` (exit 0), `drift` (exit 1), or `failed` (exit 2:
    /// a SKU could not be checked or a fix failed).
    pub verdict: &'static str,
    pub run_id: String,
    pub fix: bool,
    pub force: bool,
    /// Outbox entries not yet on the ledger when reconcile started.
    pub ledger_lag_at_start: i64,
    /// Retired SKUs (`--retire`) the ledger still has, not checked.
    pub retired: Vec<String>,
    pub skus: Vec<SkuReport>,
}

impl Report {
    pub fn drift(&self) -> bool {
        self.skus.iter().any(SkuReport::drift)
    }

    /// Every shard with drift was fixed in this run.
    pub fn repaired(&self) -> bool {
        self.skus.iter().all(|s| {
            !s.missing_in_redis
                && s.error.is_none()
                && s.problems.is_empty()
                && s.per_shard
                    .iter()
                    .all(|sh| !sh.drift() || sh.fix.as_deref() == Some("fixed"))
        })
    }

    /// A SKU could not be checked, or a fix failed.
    pub fn failed(&self) -> bool {
        self.skus.iter().any(|s| {
            s.error.is_some()
                || s.per_shard
                    .iter()
                    .any(|sh| sh.fix.as_deref().is_some_and(|f| f.starts_with("failed")))
        })
    }

    /// `clean`, `repaired`, `drift` or `failed`; see [`Report::exit_code`].
    pub fn verdict(&self) -> &'static str {
        if self.failed() {
            "failed"
        } else if !self.drift() {
            "clean"
        } else if self.fix && self.repaired() {
            "repaired"
        } else {
            "drift"
        }
    }

    /// 0: clean (or every drift repaired), 1: drift left, 2: a SKU could
    /// not be checked or a fix failed (the report still covers every SKU).
    pub fn exit_code(&self) -> u8 {
        match self.verdict() {
            "failed" => 2,
            "drift" => 1,
            _ => 0,
        }
    }
}

/// One reservation as the ledger has it.
#[derive(Clone, Debug, Default)]
struct LedgerRid {
    qty: i64,
    user: String,
    held: bool,
    end: Option<String>,
}

/// One shard as the ledger has it.
#[derive(Clone, Debug, Default)]
struct LedgerShard {
    initial: i64,
    /// First loads of the shard (more than one: reloaded after a loss).
    loads: u32,
    xfer_in: i64,
    xfer_out: i64,
    /// Transfers into this shard: transfer id → (donor shard, units).
    ins: BTreeMap<String, (u16, i64)>,
    /// Transfers out of this shard: transfer id → (recipient shard, units).
    outs: BTreeMap<String, (u16, i64)>,
    rids: BTreeMap<String, LedgerRid>,
}

impl LedgerShard {
    fn books(&self) -> Books {
        let mut b = Books {
            initial: self.initial,
            xfer_in: self.xfer_in,
            xfer_out: self.xfer_out,
            ..Books::default()
        };
        for r in self.rids.values() {
            match r.end.as_deref() {
                Some("confirmed") => b.sold += r.qty,
                None if r.held => b.held += r.qty,
                _ => {}
            }
        }
        b.available = b.initial + b.xfer_in - b.xfer_out - b.held - b.sold;
        b
    }
}

/// A consistent read of one shard in Redis.
struct Snapshot {
    last_id: String,
    books: Books,
    holds: Vec<String>,
    records: HashMap<String, StoredRecord>,
    /// Transfers out of the shard not yet applied (its `xfers` hash):
    /// transfer id → (recipient shard, units).
    pending_xfers: BTreeMap<String, (u16, i64)>,
}

/// A ledger row reconcile adds (source `reconcile`).
struct Backfill {
    rid: String,
    kind: String,
    qty: i64,
    user: String,
    ts: i64,
}

/// Reconciles Redis against the ledger.
pub struct Reconciler {
    inventory: Arc<Inventory>,
    db: Db,
    metrics: Arc<Metrics>,
    writer: Writer,
}

const SNAPSHOT_RETRY: Duration = Duration::from_millis(100);
/// Pause before reading a shard that moved under us again.
const BUSY_RETRY: Duration = Duration::from_millis(10);
/// Reservation records read per pipeline.
const RECORD_CHUNK: usize = 500;
/// Takes the per-SKU lock of `reconcile --fix` on the calling session
/// (`$1`: the SKU); answers whether it was free. A PostgreSQL advisory lock:
/// released by `pg_advisory_unlock` or when the session ends (a crashed run
/// never leaves it held).
pub const FIX_LOCK_SQL: &str =
    "SELECT pg_try_advisory_lock(hashtextextended('flashgate reconcile --fix ' || $1, 0))";
const FIX_UNLOCK_SQL: &str =
    "SELECT pg_advisory_unlock(hashtextextended('flashgate reconcile --fix ' || $1, 0))";

/// Keys asked for per SCAN call when looking for a shard's records.
const SCAN_COUNT: usize = 1000;
const TERMINAL: [&str; 3] = ["confirmed", "released", "expired"];

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
        let client = self.db.get().await?;
        for row in client
            .query("SELECT DISTINCT sku FROM ledger_events", &[])
            .await
            .map_err(DbError::from)?
        {
            skus.insert(row.get(0));
        }
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
        for row in client
            .query("SELECT sku FROM retired_skus ORDER BY sku", &[])
            .await
            .map_err(DbError::from)?
        {
            let name: String = row.get(0);
            if !loaded.contains(&name) && skus.remove(&name) {
                retired.push(name);
            }
        }
        drop(client);
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
            let busy = matches!(lock, Some((_, false)));
            let r = self.sku(&sku, opts, deadline, &report.run_id, busy).await;
            if let Some((c, true)) = lock {
                self.unlock(c, &sku).await;
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
        let (mut fills, pending_transfers) = balance_transfers(&mut read, &mut problems);
        let mut per_shard = Vec::new();
        for (s, (snap, ledger)) in read.into_iter().enumerate() {
            let s = s as u16; // < meta.shards
            let (mut report, mut plan) = compare(&meta, s, &snap, ledger);
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

    /// Write the SKU's layout back into Redis from the ledger: the shard hash
    /// tags from the outbox stream names its events came from (default tags
    /// for shards with none), the shard count from the catalogue or the
    /// ledger. The books stay empty here: each shard's fix sets them.
    async fn restore_layout(&self, sku: &Sku, run_id: &str) -> Result<(), ReconcileError> {
        let client = self.db.get().await?;
        let rows = client
            .query(
                "SELECT shard, min(stream) FROM ledger_events
                 WHERE sku = $1 AND source = 'outbox' GROUP BY shard ORDER BY shard",
                &[&sku.as_str()],
            )
            .await
            .map_err(DbError::from)?;
        let row = client
            .query_opt(
                "SELECT shards, max_per_user FROM skus WHERE sku = $1",
                &[&sku.as_str()],
            )
            .await
            .map_err(DbError::from)?;
        let catalogue: i64 = row
            .as_ref()
            .map(|r| i64::from(r.get::<_, i32>(0)))
            .unwrap_or(0);
        // the cap from the catalogue, if it has one (Redis's is gone)
        let max_per_user: i32 = row
            .as_ref()
            .and_then(|r| r.get::<_, Option<i32>>(1))
            .unwrap_or(0);
        let mut tags: BTreeMap<u16, String> = BTreeMap::new();
        for r in &rows {
            let shard: i32 = r.get(0);
            let stream: String = r.get(1);
            let tag = stream
                .strip_prefix("fg:{")
                .and_then(|t| t.strip_suffix("}:events"))
                .map(str::to_string);
            if let (Ok(shard), Some(tag)) = (u16::try_from(shard), tag) {
                tags.insert(shard, tag);
            }
        }
        let from_ledger = tags.keys().max().map_or(0, |m| i64::from(*m) + 1);
        let shards = u16::try_from(catalogue.max(from_ledger))
            .ok()
            .filter(|k| (1..=MAX_SHARDS).contains(k))
            .ok_or_else(|| {
                ReconcileError::UnknownSku(format!("{sku} (no shard layout on the ledger)"))
            })?;
        let tags: Vec<String> = (0..shards)
            .map(|s| {
                tags.get(&s)
                    .cloned()
                    .unwrap_or_else(|| crate::inventory::keys::default_tag(sku, s))
            })
            .collect();
        let redis = self.inventory.pool().next();
        let _: () = redis
            .hset(
                crate::inventory::keys::meta(sku),
                [
                    ("shard_count", shards.to_string()),
                    ("layout", crate::inventory::keys::LAYOUT.to_owned()),
                    ("tags", tags.join(",")),
                    ("max_per_user", max_per_user.max(0).to_string()),
                    ("loaded_at", crate::inventory::now_ms().to_string()),
                    ("restored_by", format!("reconcile {run_id}")),
                ],
            )
            .await
            .map_err(|e| self.err(e))?;
        let _: () = redis
            .sadd(crate::inventory::keys::SKUS, sku.as_str())
            .await
            .map_err(|e| self.err(e))?;
        client
            .execute(
                "INSERT INTO reconcile_audit (run_id, sku, shard, what, detail, forced)
                 VALUES ($1, $2, -1, 'layout', $3, false)",
                &[
                    &run_id,
                    &sku.as_str(),
                    &format!("Redis had lost {sku}: its layout ({shards} shards) restored from the ledger"),
                ],
            )
            .await
            .map_err(DbError::from)?;
        tracing::warn!(%sku, shards, "restored a SKU Redis had lost, from the ledger");
        Ok(())
    }

    /// Why the SKU still looks like it is selling, if it does.
    async fn live(
        &self,
        meta: &SkuMeta,
        read: &[(Snapshot, LedgerShard)],
        quiet_ms: i64,
    ) -> Result<Option<String>, ReconcileError> {
        let snaps: Vec<&Snapshot> = read.iter().map(|(s, _)| s).collect();
        let holds: usize = snaps.iter().map(|s| s.holds.len()).sum();
        if holds > 0 {
            return Ok(Some(format!("{holds} holds outstanding")));
        }
        let now = self.redis_now_ms().await?;
        let newest = snaps
            .iter()
            .filter_map(|s| ledger::parse_id(&s.last_id))
            .map(|(ms, _)| ms as i64)
            .max();
        if let Some(ms) = newest {
            if now - ms < quiet_ms {
                return Ok(Some(format!(
                    "last stock change {:.1}s ago on {}",
                    (now - ms) as f64 / 1000.0,
                    meta.sku
                )));
            }
        }
        Ok(None)
    }

    async fn redis_now_ms(&self) -> Result<i64, ReconcileError> {
        let v: Value = self
            .inventory
            .pool()
            .next()
            .custom(
                CustomCommand::new_static("TIME", ClusterHash::Random, false),
                Vec::<String>::new(),
            )
            .await
            .map_err(|e| scripts::classify(&self.metrics, e))?;
        let parts = array(v)?;
        Ok(int(at(&parts, 0)?)? * 1000 + int(at(&parts, 1)?)? / 1000)
    }

    /// Read one shard between two equal reads of its newest outbox id, and
    /// wait until the ledger has every entry up to that id.
    async fn snapshot(
        &mut self,
        meta: &SkuMeta,
        shard: u16,
        deadline: Instant,
    ) -> Result<Snapshot, ReconcileError> {
        let sk = meta.keys(shard);
        let stream = sk.events();
        loop {
            let l1 = ledger::last_id(&self.inventory, &self.metrics, &stream).await?;
            let client = self.inventory.pool().next();
            let stock: Option<i64> = client.get(sk.stock()).await.map_err(|e| self.err(e))?;
            let books: HashMap<String, i64> =
                client.hgetall(sk.books()).await.map_err(|e| self.err(e))?;
            let holds: Vec<String> = client
                .zrange(sk.holds(), 0, -1, None, false, None, false)
                .await
                .map_err(|e| self.err(e))?;
            let xfers: HashMap<String, String> =
                client.hgetall(sk.xfers()).await.map_err(|e| self.err(e))?;
            // `to|units|ts` (lua/transfer_out.lua)
            let pending_xfers = xfers
                .into_iter()
                .filter_map(|(xid, v)| {
                    let mut p = v.split('|');
                    let to = p.next()?.parse::<u16>().ok()?;
                    let n = p.next()?.parse::<i64>().ok()?;
                    Some((xid, (to, n)))
                })
                .collect();
            let l2 = ledger::last_id(&self.inventory, &self.metrics, &stream).await?;
            if l1 != l2 {
                if Instant::now() >= deadline {
                    return Err(ReconcileError::Busy {
                        stream,
                        waited: deadline.elapsed(),
                    });
                }
                tokio::time::sleep(BUSY_RETRY).await;
                continue;
            }
            self.wait_for_ledger(&stream, &l1, deadline).await?;
            let f = |k: &str| books.get(k).copied().unwrap_or(0);
            return Ok(Snapshot {
                last_id: l1,
                books: Books {
                    available: stock.unwrap_or(0),
                    held: f("held"),
                    sold: f("sold"),
                    initial: f("initial"),
                    xfer_in: f("xin"),
                    xfer_out: f("xout"),
                },
                holds,
                records: HashMap::new(),
                pending_xfers,
            });
        }
    }

    /// One shard, Redis and ledger, as of one newest outbox id.
    async fn read_shard(
        &mut self,
        meta: &SkuMeta,
        shard: u16,
        deadline: Instant,
    ) -> Result<(Snapshot, LedgerShard), ReconcileError> {
        loop {
            let snap = self.snapshot(meta, shard, deadline).await?;
            let ledger = self.ledger_shard(&meta.sku, shard).await?;
            if let Some(snap) = self.complete(meta, shard, snap, &ledger).await? {
                return Ok((snap, ledger));
            }
            if Instant::now() >= deadline {
                return Err(ReconcileError::Busy {
                    stream: meta.keys(shard).events(),
                    waited: deadline.elapsed(),
                });
            }
            tokio::time::sleep(BUSY_RETRY).await;
        }
    }

    /// Add the records of `ledger`'s reservations and of the live holds to
    /// the snapshot; None when the shard moved since (read it all again).
    async fn complete(
        &mut self,
        meta: &SkuMeta,
        shard: u16,
        mut snap: Snapshot,
        ledger: &LedgerShard,
    ) -> Result<Option<Snapshot>, ReconcileError> {
        let sk = meta.keys(shard);
        // Every record the shard has, not only those the ledger or the
        // expiry list name: a reservation whose outbox entries were all lost
        // (the stream capped while the ledger was down) is known to neither,
        // and its record is the only proof of the sale.
        let scanned = self.scan_records(&sk).await?;
        let rids: Vec<&String> = ledger
            .rids
            .keys()
            .chain(snap.holds.iter())
            .chain(scanned.iter())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        // one records.lua call per chunk: the shard's records share its slot
        for chunk in rids.chunks(RECORD_CHUNK) {
            let keys: Vec<String> = chunk
                .iter()
                .map(|rid| format!("{}{}", sk.record_prefix(), rid))
                .collect();
            let reply = scripts::run(
                self.inventory.nodes(),
                &self.metrics,
                &self.inventory.scripts().records,
                keys,
                vec![],
            )
            .await?;
            let records = scripts::decode_records(reply)?;
            if records.len() != chunk.len() {
                return Err(InventoryError::Protocol(format!(
                    "records.lua answered {} of {} records",
                    records.len(),
                    chunk.len()
                ))
                .into());
            }
            for (rid, record) in chunk.iter().zip(records) {
                if let Some(r) = record {
                    snap.records.insert((*rid).clone(), r);
                }
            }
        }
        let l3 = ledger::last_id(&self.inventory, &self.metrics, &sk.events()).await?;
        Ok((l3 == snap.last_id).then_some(snap))
    }

    /// The ids of every reservation record of one shard: `SCAN … MATCH
    /// fg:{tag}:r:*` on the node that owns the shard's slot (on a cluster, its
    /// master; SCAN walks only that node's keys). Costs a walk of that node's
    /// keyspace, which reconcile, after the sale, can afford.
    async fn scan_records(
        &self,
        sk: &crate::inventory::keys::ShardKeys,
    ) -> Result<Vec<String>, ReconcileError> {
        let prefix = sk.record_prefix();
        let pattern = format!("{}*", glob_escape(&prefix));
        let slot = fred::util::redis_keyslot(prefix.as_bytes());
        let client = self.inventory.pool().next();
        let mut cursor = "0".to_string();
        let mut out = Vec::new();
        loop {
            let v: Value = client
                .custom(
                    CustomCommand::new_static("SCAN", ClusterHash::Custom(slot), false),
                    vec![
                        cursor.clone(),
                        "MATCH".into(),
                        pattern.clone(),
                        "COUNT".into(),
                        SCAN_COUNT.to_string(),
                    ],
                )
                .await
                .map_err(|e| self.err(e))?;
            let parts = array(v)?;
            cursor = text(at(&parts, 0)?)?;
            let keys = match parts.into_iter().nth(1) {
                Some(v) => array(v)?,
                None => Vec::new(),
            };
            for k in &keys {
                if let Some(rid) = text(k)?.strip_prefix(prefix.as_str()) {
                    out.push(rid.to_string());
                }
            }
            if cursor == "0" {
                return Ok(out);
            }
        }
    }

    /// Every entry of `stream` up to `id` is committed to the ledger: the group
    /// delivered it and no entry at or below it is still pending.
    async fn wait_for_ledger(
        &mut self,
        stream: &str,
        id: &str,
        deadline: Instant,
    ) -> Result<(), ReconcileError> {
        if id.is_empty() {
            return Ok(());
        }
        loop {
            let g = ledger::group_state(&self.inventory, &self.metrics, stream).await?;
            let delivered = g
                .last_delivered
                .as_deref()
                .is_some_and(|last| !ledger::id_lt(last, id));
            if delivered {
                let oldest = self.oldest_pending(stream).await?;
                if oldest.is_none_or(|o| ledger::id_lt(id, &o)) {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(ReconcileError::Lag {
                    stream: stream.to_string(),
                    id: id.to_string(),
                    waited: deadline.elapsed(),
                });
            }
            if let Err(e) = self.writer.pass(true).await {
                tracing::debug!(error = %e, "reconcile: ledger pass");
            }
            tokio::time::sleep(SNAPSHOT_RETRY).await;
        }
    }

    async fn oldest_pending(&self, stream: &str) -> Result<Option<String>, ReconcileError> {
        let v: Value = self
            .inventory
            .pool()
            .next()
            .custom(
                CustomCommand::new_static("XPENDING", ClusterHash::Offset(0), false),
                vec![stream, ledger::GROUP],
            )
            .await
            .map_err(|e| scripts::classify(&self.metrics, e))?;
        let parts = array(v).unwrap_or_default();
        if parts.first().and_then(|c| int(c).ok()).unwrap_or(0) == 0 {
            return Ok(None);
        }
        Ok(parts.get(1).and_then(|v| text(v).ok()))
    }

    async fn ledger_shard(&self, sku: &Sku, shard: u16) -> Result<LedgerShard, ReconcileError> {
        let client = self.db.get().await?;
        let rows = client
            .query(
                "SELECT kind, rid, qty, user_id FROM ledger_events
                 WHERE sku = $1 AND shard = $2 ORDER BY event_at, id",
                &[&sku.as_str(), &i32::from(shard)],
            )
            .await
            .map_err(DbError::from)?;
        let mut l = LedgerShard::default();
        for r in rows {
            let kind: String = r.get(0);
            let rid: String = r.get(1);
            let qty: i64 = r.get(2);
            let user: String = r.get(3);
            match kind.as_str() {
                // a first load of the shard (rid 'load') replaces what came
                // before: it only happens on a shard with no counters, i.e.
                // a new SKU or a Redis that lost it, so an earlier load's
                // units are not there to add to (a reload after a wipe
                // would otherwise count the stock twice)
                "preload" if rid == "load" => {
                    l.loads += 1;
                    l.initial = qty;
                }
                "preload" => l.initial += qty,
                // rid: the transfer id; user: the other shard
                "xfer_in" => {
                    l.xfer_in += qty;
                    l.ins.insert(rid, (user.parse().unwrap_or(u16::MAX), qty));
                }
                "xfer_out" => {
                    l.xfer_out += qty;
                    l.outs.insert(rid, (user.parse().unwrap_or(u16::MAX), qty));
                }
                "held" | "confirmed" | "released" | "expired" => {
                    let e = l.rids.entry(rid).or_default();
                    e.qty = qty;
                    if e.user.is_empty() {
                        e.user = user;
                    }
                    if kind == "held" {
                        e.held = true;
                    } else if kind == "confirmed" || e.end.is_none() {
                        // A hold ends once in any one Redis history, but a
                        // failover can leave the ledger two ends (the old
                        // primary's and the survivor's), in any order of
                        // writing or of time. A confirm answered 200 to a
                        // buyer: it is a sale whatever else the ledger shows.
                        // Otherwise the first end in event order (released
                        // and expired both return the units).
                        e.end = Some(kind);
                    }
                }
                other => tracing::debug!(kind = other, "reconcile ignores this ledger event kind"),
            }
        }
        Ok(l)
    }

    /// Apply the plan for one shard: ledger rows and audit rows in one
    /// transaction, with the Redis fix run inside it (so a refused fix writes
    /// nothing). Returns the shard's fix status.
    #[allow(clippy::too_many_arguments)]
    async fn fix(
        &self,
        meta: &SkuMeta,
        shard: u16,
        snap: &Snapshot,
        report: &ShardReport,
        plan: &Plan,
        run_id: &str,
        forced: bool,
    ) -> String {
        match self
            .try_fix(meta, shard, snap, report, plan, run_id, forced)
            .await
        {
            Ok(status) => status,
            Err(e) => format!("failed: {e}"),
        }
    }

    /// The fix of one shard, in three steps so that no Redis correction is
    /// ever unaudited: (1) the audit rows, as `intended`, committed; (2)
    /// `fix.lua` (atomic, guarded by the snapshot's newest outbox id); (3)
    /// the ledger backfills and the audit marked `done`, in one transaction.
    /// Cut off between (2) and (3), the rows stay `intended`; the next run
    /// finds the backfills again (their evidence is still there), writes
    /// them and marks those rows `finished` (see `finish_interrupted`).
    #[allow(clippy::too_many_arguments)]
    async fn try_fix(
        &self,
        meta: &SkuMeta,
        shard: u16,
        snap: &Snapshot,
        report: &ShardReport,
        plan: &Plan,
        run_id: &str,
        forced: bool,
    ) -> Result<String, ReconcileError> {
        let target = report.ledger;
        if target.fields().iter().any(|(_, v)| *v < 0) {
            return Ok(format!(
                "skipped: the ledger's books are negative ({target:?}); this needs a human"
            ));
        }
        let sku = meta.sku.as_str();
        let shard_i = i32::from(shard);
        let mut client = self.db.get().await?;

        // (1) the audit, durable before Redis changes
        let tx = client.transaction().await.map_err(DbError::from)?;
        let audit = "INSERT INTO reconcile_audit
                (run_id, sku, shard, what, rid, redis_before, redis_after, detail, forced, state)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'intended')";
        for ((field, was), (_, now)) in snap.books.fields().iter().zip(target.fields().iter()) {
            if was == now {
                continue;
            }
            tx.execute(
                audit,
                &[
                    &run_id,
                    &sku,
                    &shard_i,
                    field,
                    &"",
                    was,
                    now,
                    &format!("redis {field} {was} -> {now} (the ledger's books)"),
                    &forced,
                ],
            )
            .await
            .map_err(DbError::from)?;
        }
        for r in &report.records {
            tx.execute(
                audit,
                &[
                    &run_id,
                    &sku,
                    &shard_i,
                    &r.finding,
                    &r.rid,
                    &None::<i64>,
                    &None::<i64>,
                    &format!(
                        "ledger {} / redis {} ({} units): {}",
                        r.ledger, r.redis, r.qty, r.repair
                    ),
                    &forced,
                ],
            )
            .await
            .map_err(DbError::from)?;
        }
        tx.commit().await.map_err(DbError::from)?;
        let mark = "UPDATE reconcile_audit SET state = $4
             WHERE run_id = $1 AND sku = $2 AND shard = $3 AND state = 'intended'";

        // (2) the Redis half, guarded by the newest outbox id of the snapshot
        let sk = meta.keys(shard);
        let mut keys = vec![sk.stock(), sk.books(), sk.holds(), sk.events()];
        let mut args = vec![snap.last_id.clone()];
        args.extend(target.fields().iter().map(|(_, v)| v.to_string()));
        for (rid, status) in &plan.settle {
            keys.push(format!("{}{}", sk.record_prefix(), rid));
            args.push(rid.clone());
            args.push(status.clone());
        }
        // an error here leaves the rows intended: whether the script ran is
        // unknown, and the next run re-checks the shard either way
        let reply = scripts::run(
            self.inventory.nodes(),
            &self.metrics,
            &self.inventory.scripts().fix,
            keys,
            args,
        )
        .await?;
        let items = array(reply)?;
        if text(at(&items, 0)?)? == "changed" {
            client
                .execute(mark, &[&run_id, &sku, &shard_i, &"abandoned"])
                .await
                .map_err(DbError::from)?;
            return Ok("skipped: the shard changed during reconcile; run it again".into());
        }

        // (3) the ledger's half, and the audit marked done
        let tx = client.transaction().await.map_err(DbError::from)?;
        for b in &plan.backfill {
            tx.execute(
                "INSERT INTO ledger_events
                     (stream, entry_id, sku, shard, kind, rid, qty, user_id, event_at, source)
                 VALUES ('reconcile', $1, $2, $3, $4, $5, $6, $7,
                         to_timestamp($8::bigint::double precision / 1000.0), 'reconcile')
                 ON CONFLICT DO NOTHING",
                &[
                    &format!("{}:{}", b.rid, b.kind),
                    &sku,
                    &shard_i,
                    &b.kind,
                    &b.rid,
                    &b.qty,
                    &b.user,
                    &b.ts,
                ],
            )
            .await
            .map_err(DbError::from)?;
        }
        tx.execute(mark, &[&run_id, &sku, &shard_i, &"done"])
            .await
            .map_err(DbError::from)?;
        tx.commit().await.map_err(DbError::from)?;
        // A hold the fix ended (held in Redis, released or expired on the
        // ledger) gives its buyer's purchase cap back, as release and expiry
        // do. The cap is its own slot, so this is a call of its own after
        // fix.lua; cap_give is idempotent per key, so a rerun is harmless,
        // and a crash before it leaves the buyer capped too tightly (the safe side).
        let mut caps = 0;
        for (rid, status) in &plan.settle {
            let Some(r) = snap.records.get(rid) else {
                continue;
            };
            if r.status == "held" && status != "confirmed" && !r.idem.is_empty() {
                caps += self.inventory.cap_give(meta, &r.user, &r.idem).await?;
            }
        }
        if caps > 0 {
            tracing::info!(
                sku,
                shard,
                units = caps,
                "reconcile: purchase caps given back"
            );
        }
        Ok("fixed".into())
    }

    /// Close the audit rows an earlier run left `intended` on this shard (it
    /// was cut off after correcting Redis, or before): this run, holding the
    /// SKU's lock, has just re-checked the shard and repaired what was left.
    async fn finish_interrupted(
        &self,
        sku: &Sku,
        shard: u16,
        run_id: &str,
    ) -> Result<u64, ReconcileError> {
        let client = self.db.get().await?;
        Ok(client
            .execute(
                "UPDATE reconcile_audit
                 SET state = 'finished',
                     detail = detail || ' [cut off before done; re-checked and finished by run ' || $3 || ']'
                 WHERE sku = $1 AND shard = $2 AND state = 'intended' AND run_id <> $3",
                &[&sku.as_str(), &i32::from(shard), &run_id],
            )
            .await
            .map_err(DbError::from)?)
    }

    /// Take the SKU's `--fix` lock on a session of its own; the session is
    /// kept (and the lock with it) until [`Reconciler::unlock`].
    async fn lock(&self, sku: &Sku) -> Result<(deadpool_postgres::Object, bool), ReconcileError> {
        let c = self.db.get().await?;
        let got: bool = c
            .query_one(FIX_LOCK_SQL, &[&sku.as_str()])
            .await
            .map_err(DbError::from)?
            .get(0);
        Ok((c, got))
    }

    async fn unlock(&self, c: deadpool_postgres::Object, sku: &Sku) {
        if let Err(e) = c.query_one(FIX_UNLOCK_SQL, &[&sku.as_str()]).await {
            // the lock stays with the session; drop the session so it goes
            tracing::warn!(%sku, error = %e, "reconcile: cannot release the fix lock; closing its session");
            drop(deadpool_postgres::Object::take(c));
        }
    }

    fn err(&self, e: fred::error::Error) -> InventoryError {
        scripts::classify(&self.metrics, e)
    }
}

/// What `--fix` would do on one shard.
struct Plan {
    backfill: Vec<Backfill>,
    /// Records whose status differs from the ledger's, with the ledger's status.
    settle: Vec<(String, String)>,
}

/// Compare one shard; returns the report (with the ledger's books after the
/// planned repairs) and the plan.
fn compare(
    meta: &SkuMeta,
    shard: u16,
    snap: &Snapshot,
    mut ledger: LedgerShard,
) -> (ShardReport, Plan) {
    let mut plan = Plan {
        backfill: Vec::new(),
        settle: Vec::new(),
    };
    let mut records = Vec::new();
    let rids: BTreeSet<String> = ledger
        .rids
        .keys()
        .cloned()
        .chain(snap.holds.iter().cloned())
        .chain(snap.records.keys().cloned())
        .collect();
    for rid in rids {
        let l = ledger.rids.get(&rid).cloned().unwrap_or_default();
        let known = ledger.rids.contains_key(&rid);
        let l_state = match (&l.end, l.held) {
            (Some(e), _) => e.clone(),
            (None, true) => "held".to_string(),
            (None, false) => "none".to_string(),
        };
        let rec = snap.records.get(&rid);
        let r_state = rec.map_or("absent".to_string(), |r| r.status.clone());
        let mut drift = |finding: &'static str, qty: i64, repair: String| {
            records.push(RecordDrift {
                rid: rid.clone(),
                qty,
                ledger: l_state.clone(),
                redis: r_state.clone(),
                finding,
                repair,
            })
        };
        match rec {
            Some(r) => {
                let fill = |kind: &str, ts: i64| Backfill {
                    rid: rid.clone(),
                    kind: kind.to_string(),
                    qty: r.qty,
                    user: r.user.clone(),
                    ts,
                };
                let mut entry = ledger.rids.get(&rid).cloned().unwrap_or(LedgerRid {
                    qty: r.qty,
                    user: r.user.clone(),
                    held: false,
                    end: None,
                });
                let r_end = TERMINAL.contains(&r.status.as_str());
                match (&l.end, r_end) {
                    (None, true) => {
                        let mut rows = Vec::new();
                        if !l.held {
                            rows.push(fill("held", r.created));
                        }
                        rows.push(fill(&r.status, r.ended.max(r.created)));
                        drift(
                            "ledger_missing",
                            r.qty,
                            format!("backfill {} into the ledger", kinds(&rows)),
                        );
                        entry.held = true;
                        entry.end = Some(r.status.clone());
                        plan.backfill.extend(rows);
                    }
                    (None, false) if !l.held => {
                        drift(
                            "ledger_missing",
                            r.qty,
                            "backfill held into the ledger".into(),
                        );
                        entry.held = true;
                        plan.backfill.push(fill("held", r.created));
                    }
                    (Some(end), false) => {
                        drift(
                            "record_behind",
                            l.qty,
                            format!("settle the Redis record as {end}"),
                        );
                        plan.settle.push((rid.clone(), end.clone()));
                    }
                    (Some(end), true) if *end != r.status => {
                        drift(
                            "status_conflict",
                            l.qty,
                            format!("the ledger's {end} stands: the Redis record is set to it"),
                        );
                        plan.settle.push((rid.clone(), end.clone()));
                    }
                    _ => {}
                }
                if entry.qty == 0 {
                    entry.qty = r.qty;
                }
                ledger.rids.insert(rid.clone(), entry);
            }
            None if known && l.held && l.end.is_none() => {
                drift(
                    "hold_lost",
                    l.qty,
                    "close it as expired in the ledger (its units go back on sale)".into(),
                );
                plan.backfill.push(Backfill {
                    rid: rid.clone(),
                    kind: "expired".into(),
                    qty: l.qty,
                    user: l.user.clone(),
                    ts: crate::inventory::now_ms(),
                });
                if let Some(e) = ledger.rids.get_mut(&rid) {
                    e.end = Some("expired".into());
                }
            }
            None => {}
        }
    }
    let target = ledger.books();
    let counters = snap
        .books
        .fields()
        .iter()
        .zip(target.fields().iter())
        .filter(|(r, l)| r.1 != l.1)
        .map(|(r, l)| CounterDrift {
            field: r.0,
            redis: r.1,
            ledger: l.1,
        })
        .collect();
    (
        ShardReport {
            shard,
            stream: meta.keys(shard).events(),
            redis: snap.books,
            ledger: target,
            redis_unaccounted: snap.books.unaccounted(),
            counters,
            records,
            fix: None,
        },
        plan,
    )
}

/// Ledger backfills per shard, each with the finding it repairs.
type Fills = BTreeMap<u16, Vec<(RecordDrift, Backfill)>>;

/// Check the SKU's transfers as a whole: every unit a shard sent (ledger
/// `xfer_out`, or a pending record in Redis) arrived on its recipient
/// (`xfer_in`) or is still in transit. Each shard's books add up on their own
/// even when one half of a transfer is lost, so only this finds a unit that
/// vanished (the `xfer_in` lost) or was created (the `xfer_out` lost). The
/// half the other proves is backfilled into the ledger (its counters follow
/// through the shard's fix), and the ledger books in `read` are adjusted.
/// Returns the backfills per shard and the transfers in transit.
fn balance_transfers(
    read: &mut [(Snapshot, LedgerShard)],
    problems: &mut Vec<String>,
) -> (Fills, Vec<String>) {
    let mut fills = Fills::new();
    let mut pending = Vec::new();
    let shards = read.len();
    let now = crate::inventory::now_ms();
    let add = |fills: &mut Fills,
               at: u16,
               kind: &str,
               xid: &str,
               n: i64,
               other: u16,
               finding: &'static str,
               why: String| {
        fills.entry(at).or_default().push((
            RecordDrift {
                rid: xid.to_string(),
                qty: n,
                ledger: "none".into(),
                redis: "-".into(),
                finding,
                repair: format!("backfill {kind} into the ledger ({why})"),
            },
            Backfill {
                rid: xid.to_string(),
                kind: kind.to_string(),
                qty: n,
                user: other.to_string(),
                ts: now,
            },
        ));
    };
    let mut ins: Vec<(u16, i64)> = Vec::new();
    let mut outs: Vec<(u16, i64)> = Vec::new();
    for from in 0..shards {
        let (snap, l) = &read[from];
        // < shards <= MAX_SHARDS
        let from = from as u16;
        // sent: on the ledger, or proven by the donor's pending record
        let mut sent: BTreeMap<&String, (u16, i64)> = l.outs.iter().map(|(x, v)| (x, *v)).collect();
        for (xid, v) in &snap.pending_xfers {
            if !sent.contains_key(xid) {
                add(
                    &mut fills,
                    from,
                    "xfer_out",
                    xid,
                    v.1,
                    v.0,
                    "transfer_out_missing",
                    "the donor's pending transfer record proves it".into(),
                );
                outs.push((from, v.1));
                sent.insert(xid, *v);
            }
        }
        for (xid, (to, n)) in sent {
            let Some((_, rl)) = read.get(usize::from(to)) else {
                problems.push(format!("transfer {xid} of {n} units from shard {from} names shard {to}, which the SKU does not have"));
                continue;
            };
            if rl.ins.contains_key(xid) {
                continue;
            }
            if snap.pending_xfers.contains_key(xid) {
                pending.push(format!("{xid}: {n} units {from} -> {to}"));
                continue;
            }
            add(
                &mut fills,
                to,
                "xfer_in",
                xid,
                n,
                from,
                "transfer_in_lost",
                format!(
                    "shard {from} sent {n} units that never arrived and are no longer in transit"
                ),
            );
            ins.push((to, n));
        }
        // received without a send on the ledger: the donor's half was lost
        for (xid, (donor, n)) in &l.ins {
            let Some((dsnap, dl)) = read.get(usize::from(*donor)) else {
                problems.push(format!("transfer {xid} of {n} units into shard {from} names shard {donor}, which the SKU does not have"));
                continue;
            };
            if dl.outs.contains_key(xid) || dsnap.pending_xfers.contains_key(xid) {
                continue;
            }
            add(
                &mut fills,
                *donor,
                "xfer_out",
                xid,
                *n,
                from,
                "transfer_out_lost",
                format!("shard {from} received {n} units its donor never gave"),
            );
            outs.push((*donor, *n));
        }
    }
    for (s, n) in ins {
        read[usize::from(s)].1.xfer_in += n;
    }
    for (s, n) in outs {
        read[usize::from(s)].1.xfer_out += n;
    }
    (fills, pending)
}

/// `s` with the glob characters of SCAN's MATCH escaped (a placement tag
/// is free text to the pattern).
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn kinds(rows: &[Backfill]) -> String {
    rows.iter()
        .map(|b| b.kind.as_str())
        .collect::<Vec<_>>()
        .join(" + ")
}

// ------------------------------------------------------------------ rendering

/// The human report: one aligned row per shard, `redis≠ledger` where they differ.
pub fn table(report: &Report) -> String {
    let mut out = format!(
        "reconcile run {}: ledger lag at start {} events{}\n",
        report.run_id,
        report.ledger_lag_at_start,
        if report.fix { ", --fix" } else { "" }
    );
    for s in &report.skus {
        out.push('\n');
        let verdict = if s.drift() { "DRIFT" } else { "clean" };
        out.push_str(&format!(
            "sku {}  {}  ({} shards{}{})\n",
            s.sku,
            verdict,
            s.shards,
            s.catalogue_stock
                .map(|c| format!(", catalogue stock {c}"))
                .unwrap_or_default(),
            s.live
                .as_deref()
                .map(|l| format!(", live: {l}"))
                .unwrap_or_default(),
        ));
        if let Some(e) = &s.error {
            out.push_str(&format!("  could not be checked: {e}\n"));
            continue;
        }
        if s.missing_in_redis {
            out.push_str(
                "  not loaded in Redis, but the ledger has events for it (Redis lost it?): `--fix` restores it from the ledger\n",
            );
            continue;
        }
        for p in &s.problems {
            out.push_str(&format!("  cannot decide: {p}\n"));
        }
        for t in &s.pending_transfers {
            out.push_str(&format!("  transfer in transit: {t}\n"));
        }
        if s.restored {
            out.push_str(
                "  Redis had lost this SKU: layout restored from the ledger, books below\n",
            );
        }
        let cell = |r: i64, l: i64| {
            if r == l {
                r.to_string()
            } else {
                format!("{r}≠{l}")
            }
        };
        let header = [
            "shard",
            "available",
            "held",
            "sold",
            "initial",
            "xfer_in",
            "xfer_out",
            "unacc.",
            "fix",
        ];
        let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
        for sh in &s.per_shard {
            let (r, l) = (sh.redis, sh.ledger);
            rows.push(vec![
                sh.shard.to_string(),
                cell(r.available, l.available),
                cell(r.held, l.held),
                cell(r.sold, l.sold),
                cell(r.initial, l.initial),
                cell(r.xfer_in, l.xfer_in),
                cell(r.xfer_out, l.xfer_out),
                sh.redis_unaccounted.to_string(),
                sh.fix.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
        let widths: Vec<usize> = (0..header.len())
            .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        for row in &rows {
            let mut line = String::from(" ");
            for (c, v) in row.iter().enumerate() {
                let pad = widths[c] - v.chars().count();
                if c + 1 == row.len() {
                    line.push_str(&format!(" {v}"));
                } else {
                    line.push_str(&format!(" {}{v}", " ".repeat(pad)));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        for sh in &s.per_shard {
            for r in &sh.records {
                out.push_str(&format!(
                    "  shard {} {} ({} units): ledger {}, redis {} -> {}: {}\n",
                    sh.shard, r.rid, r.qty, r.ledger, r.redis, r.finding, r.repair
                ));
            }
        }
    }
    for r in &report.retired {
        out.push_str(&format!("\nsku {r}  retired (not checked)\n"));
    }
    out.push_str(&format!(
        "\n{}\n",
        match (report.drift(), report.fix && report.repaired()) {
            _ if report.failed() => "FAILED: a SKU could not be checked or a fix failed (see above); exit 2".to_string(),
            (false, _) => "no drift: every unit is accounted for".to_string(),
            (true, true) => "drift found and repaired (see reconcile_audit); run reconcile again to confirm".to_string(),
            (true, false) => "DRIFT: the books above do not agree (redis≠ledger); `--fix` repairs Redis from the ledger".to_string(),
        }
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rid(l: &mut LedgerShard, id: &str, qty: i64, held: bool, end: Option<&str>) {
        l.rids.insert(
            id.into(),
            LedgerRid {
                qty,
                user: "u".into(),
                held,
                end: end.map(str::to_string),
            },
        );
    }

    #[test]
    fn a_tag_cannot_widen_the_record_scan() {
        assert_eq!(glob_escape("fg:{a*b#0}:r:"), "fg:{a\\*b#0}:r:");
        assert_eq!(glob_escape("fg:{s#1}:r:"), "fg:{s#1}:r:");
    }

    #[test]
    fn ledger_books_count_each_reservation_once() {
        let mut l = LedgerShard {
            initial: 10,
            ..LedgerShard::default()
        };
        rid(&mut l, "a", 2, true, Some("confirmed"));
        rid(&mut l, "b", 1, true, None);
        rid(&mut l, "c", 3, true, Some("expired"));
        rid(&mut l, "d", 1, false, Some("confirmed")); // its held event is missing
        let b = l.books();
        assert_eq!((b.sold, b.held, b.available), (3, 1, 6));
        assert_eq!(b.unaccounted(), 0);
    }
}
