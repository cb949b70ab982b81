//! Repairing a shard (`--fix`): the Redis books set to the ledger's by
//! `lua/fix.lua`, guarded by the snapshot's newest outbox id so a fix from a
//! stale reading never lands; the ledger backfills; the audit, durable before
//! Redis changes; one fix per SKU at a time (a PostgreSQL advisory lock); and
//! the layout of a SKU Redis lost, restored from the ledger.

use std::collections::BTreeMap;

use fred::interfaces::{HashesInterface, SetsInterface};

use super::compare::Plan;
use super::snapshot::Snapshot;
use super::{ReconcileError, Reconciler, ShardReport};
use crate::db::{AuditRow, FixLock, FixScope};
use crate::domain::Sku;
use crate::inventory::replies::{array, at, text};
use crate::inventory::scripts;
use crate::inventory::{SkuMeta, MAX_SHARDS};

impl Reconciler {
    /// Apply the plan for one shard: ledger rows and audit rows in one
    /// transaction, with the Redis fix run inside it (so a refused fix writes
    /// nothing). Returns the shard's fix status.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn fix(
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
        let scope = FixScope {
            run_id,
            sku,
            shard,
            forced,
        };

        // (1) the audit, durable before Redis changes
        let mut rows = Vec::new();
        for ((field, was), (_, now)) in snap.books.fields().iter().zip(target.fields().iter()) {
            if was == now {
                continue;
            }
            rows.push(AuditRow {
                what: field,
                rid: "",
                before: Some(*was),
                after: Some(*now),
                detail: format!("redis {field} {was} -> {now} (the ledger's books)"),
            });
        }
        for r in &report.records {
            rows.push(AuditRow {
                what: r.finding,
                rid: &r.rid,
                before: None,
                after: None,
                detail: format!(
                    "ledger {} / redis {} ({} units): {}",
                    r.ledger, r.redis, r.qty, r.repair
                ),
            });
        }
        self.db.audit_intended(scope, &rows).await?;

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
            self.db.audit_mark(scope, "abandoned").await?;
            return Ok("skipped: the shard changed during reconcile; run it again".into());
        }

        // (3) the ledger's half, and the audit marked done
        self.db.backfill_and_done(scope, &plan.backfill).await?;
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
    pub(super) async fn finish_interrupted(
        &self,
        sku: &Sku,
        shard: u16,
        run_id: &str,
    ) -> Result<u64, ReconcileError> {
        Ok(self
            .db
            .audit_finish_interrupted(sku.as_str(), shard, run_id)
            .await?)
    }

    /// Take the SKU's `--fix` lock on a session of its own; the session is
    /// kept (and the lock with it) until `Db::fix_unlock`.
    pub(super) async fn lock(&self, sku: &Sku) -> Result<FixLock, ReconcileError> {
        Ok(self.db.fix_lock(sku.as_str()).await?)
    }

    /// Write the SKU's layout back into Redis from the ledger: the shard hash
    /// tags from the outbox stream names its events came from (default tags
    /// for shards with none), the shard count from the catalogue or the
    /// ledger. The books stay empty here: each shard's fix sets them.
    pub(super) async fn restore_layout(
        &self,
        sku: &Sku,
        run_id: &str,
    ) -> Result<(), ReconcileError> {
        let rows = self.db.ledger_streams(sku.as_str()).await?;
        let row = self
            .db
            .catalogue(Some(sku.as_str()))
            .await?
            .into_iter()
            .next();
        let catalogue: i64 = row.as_ref().map(|r| i64::from(r.shards)).unwrap_or(0);
        // the cap from the catalogue, if it has one (Redis's is gone)
        let max_per_user: i32 = row.as_ref().and_then(|r| r.max_per_user).unwrap_or(0);
        let mut tags: BTreeMap<u16, String> = BTreeMap::new();
        for (shard, stream) in &rows {
            let tag = stream
                .strip_prefix("fg:{")
                .and_then(|t| t.strip_suffix("}:events"))
                .map(str::to_string);
            if let (Ok(shard), Some(tag)) = (u16::try_from(*shard), tag) {
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
        // the sale window from the catalogue, if it has one: a restored SKU
        // must not sell before its opens_at (nor after closes_at)
        let ms = |t: Option<std::time::SystemTime>| {
            t.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .and_then(|d| i64::try_from(d.as_millis()).ok())
        };
        let opens_at = ms(row.as_ref().and_then(|r| r.opens_at));
        let closes_at = ms(row.as_ref().and_then(|r| r.closes_at));
        let layout = if opens_at.is_some() || closes_at.is_some() {
            crate::inventory::keys::LAYOUT_WINDOW
        } else {
            crate::inventory::keys::LAYOUT
        };
        let mut fields = vec![
            ("shard_count", shards.to_string()),
            ("layout", layout.to_owned()),
            ("tags", tags.join(",")),
            ("max_per_user", max_per_user.max(0).to_string()),
            ("loaded_at", crate::inventory::now_ms().to_string()),
            ("restored_by", format!("reconcile {run_id}")),
        ];
        if let Some(o) = opens_at {
            fields.push(("opens_at", o.to_string()));
        }
        if let Some(c) = closes_at {
            fields.push(("closes_at", c.to_string()));
        }
        let redis = self.inventory.pool().next();
        let _: () = redis
            .hset(crate::inventory::keys::meta(sku), fields)
            .await
            .map_err(|e| self.err(e))?;
        let _: () = redis
            .sadd(crate::inventory::keys::SKUS, sku.as_str())
            .await
            .map_err(|e| self.err(e))?;
        self.db
            .audit_layout(
                run_id,
                sku.as_str(),
                &format!(
                    "Redis had lost {sku}: its layout ({shards} shards) restored from the ledger"
                ),
            )
            .await?;
        tracing::warn!(%sku, shards, "restored a SKU Redis had lost, from the ledger");
        Ok(())
    }
}
