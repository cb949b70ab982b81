//! The SQL of `reconcile --fix`: its per-SKU lock and its audit trail
//! (`reconcile_audit`), whose rows are written `intended` before Redis is
//! corrected and marked `done` with the ledger's backfills in one
//! transaction (the order is `reconcile::repair`'s to keep).

use super::{Db, DbError, LedgerBackfill};

/// Takes the per-SKU lock of `reconcile --fix` on the calling session
/// (`$1`: the SKU); answers whether it was free. A PostgreSQL advisory lock:
/// released by `pg_advisory_unlock` or when the session ends (a crashed run
/// never leaves it held).
pub const FIX_LOCK_SQL: &str =
    "SELECT pg_try_advisory_lock(hashtextextended('flashgate reconcile --fix ' || $1, 0))";
const FIX_UNLOCK_SQL: &str =
    "SELECT pg_advisory_unlock(hashtextextended('flashgate reconcile --fix ' || $1, 0))";

const AUDIT: &str = "INSERT INTO reconcile_audit
        (run_id, sku, shard, what, rid, redis_before, redis_after, detail, forced, state)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'intended')";
const MARK: &str = "UPDATE reconcile_audit SET state = $4
     WHERE run_id = $1 AND sku = $2 AND shard = $3 AND state = 'intended'";

/// The shard one fix is about, and the run doing it.
#[derive(Clone, Copy, Debug)]
pub struct FixScope<'a> {
    pub run_id: &'a str,
    pub sku: &'a str,
    pub shard: u16,
    pub forced: bool,
}

/// One correction a fix intends: a counter (`rid` empty, the values before
/// and after) or a reservation (`what`: the finding).
#[derive(Clone, Debug)]
pub struct AuditRow<'a> {
    pub what: &'a str,
    pub rid: &'a str,
    pub before: Option<i64>,
    pub after: Option<i64>,
    pub detail: String,
}

/// A fix lock and the session that holds it (see [`Db::fix_lock`]).
pub struct FixLock {
    session: deadpool_postgres::Object,
    /// Whether this session got the lock (false: another run holds it).
    pub held: bool,
}

impl Db {
    /// Take the SKU's `--fix` lock on a session of its own; the session is
    /// kept (and the lock with it) until [`Db::fix_unlock`].
    pub async fn fix_lock(&self, sku: &str) -> Result<FixLock, DbError> {
        let session = self.get().await?;
        let held: bool = session.query_one(FIX_LOCK_SQL, &[&sku]).await?.get(0);
        Ok(FixLock { session, held })
    }

    /// Release a lock [`Db::fix_lock`] took.
    pub async fn fix_unlock(lock: FixLock, sku: &str) {
        if let Err(e) = lock.session.query_one(FIX_UNLOCK_SQL, &[&sku]).await {
            // the lock stays with the session; drop the session so it goes
            tracing::warn!(%sku, error = %e, "reconcile: cannot release the fix lock; closing its session");
            drop(deadpool_postgres::Object::take(lock.session));
        }
    }

    /// Step (1) of a fix: its audit rows, `intended`, in one transaction.
    pub async fn audit_intended(
        &self,
        at: FixScope<'_>,
        rows: &[AuditRow<'_>],
    ) -> Result<(), DbError> {
        let mut client = self.get().await?;
        let shard = i32::from(at.shard);
        let tx = client.transaction().await?;
        for r in rows {
            tx.execute(
                AUDIT,
                &[
                    &at.run_id, &at.sku, &shard, &r.what, &r.rid, &r.before, &r.after, &r.detail,
                    &at.forced,
                ],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The intended rows of this fix, marked `state` (`abandoned`: the Redis
    /// half refused to run).
    pub async fn audit_mark(&self, at: FixScope<'_>, state: &str) -> Result<(), DbError> {
        let client = self.get().await?;
        client
            .execute(MARK, &[&at.run_id, &at.sku, &i32::from(at.shard), &state])
            .await?;
        Ok(())
    }

    /// Step (3) of a fix: the ledger backfills (source `reconcile`) and the
    /// audit marked `done`, in one transaction.
    pub async fn backfill_and_done(
        &self,
        at: FixScope<'_>,
        fills: &[LedgerBackfill],
    ) -> Result<(), DbError> {
        let mut client = self.get().await?;
        let shard = i32::from(at.shard);
        let tx = client.transaction().await?;
        for b in fills {
            tx.execute(
                "INSERT INTO ledger_events
                     (stream, entry_id, sku, shard, kind, rid, qty, user_id, event_at, source)
                 VALUES ('reconcile', $1, $2, $3, $4, $5, $6, $7,
                         to_timestamp($8::bigint::double precision / 1000.0), 'reconcile')
                 ON CONFLICT DO NOTHING",
                &[
                    &format!("{}:{}", b.rid, b.kind),
                    &at.sku,
                    &shard,
                    &b.kind,
                    &b.rid,
                    &b.qty,
                    &b.user,
                    &b.ts,
                ],
            )
            .await?;
        }
        tx.execute(MARK, &[&at.run_id, &at.sku, &shard, &"done"])
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Close the audit rows an earlier run left `intended` on this shard
    /// (marked `finished`, with a note naming `run_id`); returns how many.
    pub async fn audit_finish_interrupted(
        &self,
        sku: &str,
        shard: u16,
        run_id: &str,
    ) -> Result<u64, DbError> {
        let client = self.get().await?;
        Ok(client
            .execute(
                "UPDATE reconcile_audit
                 SET state = 'finished',
                     detail = detail || ' [cut off before done; re-checked and finished by run ' || $3 || ']'
                 WHERE sku = $1 AND shard = $2 AND state = 'intended' AND run_id <> $3",
                &[&sku, &i32::from(shard), &run_id],
            )
            .await?)
    }

    /// The audit row of a SKU whose layout reconcile restored (shard -1).
    pub async fn audit_layout(&self, run_id: &str, sku: &str, detail: &str) -> Result<(), DbError> {
        let client = self.get().await?;
        client
            .execute(
                "INSERT INTO reconcile_audit (run_id, sku, shard, what, detail, forced)
                 VALUES ($1, $2, -1, 'layout', $3, false)",
                &[&run_id, &sku, &detail],
            )
            .await?;
        Ok(())
    }
}
