//! What a reconcile run found, as data (`Report`, serialised by
//! `--format json`, versioned by [`REPORT_VERSION`]) and as the human table;
//! the verdict and the exit code it maps to.

use serde::Serialize;

use super::{Books, CartFinding, CounterDrift, ReconcileError, RecordDrift};
use crate::domain::Sku;

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
    pub(super) fn failed(sku: &Sku, e: &ReconcileError) -> SkuReport {
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
    /// Carts in a final state on the ledger judged against their lines (0
    /// with `--sku`: carts span SKUs).
    pub carts_checked: u64,
    /// Their lines that disagree with the cart's state: partial carts.
    /// Reported, never fixed (reconcile/carts.rs).
    pub carts: Vec<CartFinding>,
}

impl Report {
    pub fn drift(&self) -> bool {
        self.skus.iter().any(SkuReport::drift) || !self.carts.is_empty()
    }

    /// Every shard with drift was fixed in this run.
    pub fn repaired(&self) -> bool {
        // a partial cart is never fixed
        self.carts.is_empty()
            && self.skus.iter().all(|s| {
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
                cell(r.transferred_in, l.transferred_in),
                cell(r.transferred_out, l.transferred_out),
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
    if report.carts_checked > 0 || !report.carts.is_empty() {
        out.push_str(&format!(
            "\ncarts  {}  ({} in a final state checked against their lines)\n",
            if report.carts.is_empty() {
                "clean"
            } else {
                "PARTIAL"
            },
            report.carts_checked
        ));
        for c in &report.carts {
            out.push_str(&format!(
                "  cart {} {}: line {} {} {}: ledger {}: {} (report only: the storefront decides)\n",
                c.cart_id,
                c.status,
                c.line,
                c.sku,
                if c.reservation_id.is_empty() { "(no hold recorded)" } else { &c.reservation_id },
                c.ledger,
                c.finding
            ));
        }
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
