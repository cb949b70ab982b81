//! The SQL of the ledger (`ledger_events`, `ledger_dead_letters`,
//! `retired_skus`): the writer's batch insert and what reconcile reads.

use super::{Db, DbError};

const INSERT: &str = "INSERT INTO ledger_events
        (stream, entry_id, sku, shard, kind, rid, qty, user_id, event_at)
    SELECT s, e, k, sh, t, r, q, u, to_timestamp(ts::double precision / 1000.0)
    FROM unnest($1::text[], $2::text[], $3::text[], $4::int4[], $5::text[],
                $6::text[], $7::int8[], $8::text[], $9::int8[])
         AS x(s, e, k, sh, t, r, q, u, ts)
    ON CONFLICT DO NOTHING";

/// Rows for `ledger_events`, column by column (one statement per batch).
#[derive(Clone, Debug, Default)]
pub struct EventColumns {
    pub stream: Vec<String>,
    pub entry_id: Vec<String>,
    pub sku: Vec<String>,
    pub shard: Vec<i32>,
    pub kind: Vec<String>,
    pub rid: Vec<String>,
    pub qty: Vec<i64>,
    pub user: Vec<String>,
    /// Milliseconds.
    pub ts: Vec<i64>,
}

/// One event of a shard as the ledger has it.
#[derive(Clone, Debug, PartialEq)]
pub struct LedgerRow {
    pub kind: String,
    pub rid: String,
    pub qty: i64,
    pub user: String,
}

/// A ledger row reconcile adds (source `reconcile`).
#[derive(Clone, Debug, PartialEq)]
pub struct LedgerBackfill {
    pub rid: String,
    pub kind: String,
    pub qty: i64,
    pub user: String,
    /// Milliseconds.
    pub ts: i64,
}

impl Db {
    /// Insert a batch in one statement — one transaction; rows already
    /// there (a redelivered entry) are no-ops. Returns the rows inserted.
    pub async fn insert_events(&self, c: &EventColumns) -> Result<u64, DbError> {
        let client = self.get().await?;
        let stmt = client.prepare_cached(INSERT).await?;
        Ok(client
            .execute(
                &stmt,
                &[
                    &c.stream,
                    &c.entry_id,
                    &c.sku,
                    &c.shard,
                    &c.kind,
                    &c.rid,
                    &c.qty,
                    &c.user,
                    &c.ts,
                ],
            )
            .await?)
    }

    /// Park an outbox entry Postgres refused; true when it was not parked yet.
    pub async fn dead_letter(
        &self,
        stream: &str,
        entry_id: &str,
        sku: &str,
        shard: u16,
        fields: &str,
        error: &str,
    ) -> Result<bool, DbError> {
        let client = self.get().await?;
        let parked = client
            .execute(
                "INSERT INTO ledger_dead_letters (stream, entry_id, sku, shard, fields, error)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (stream, entry_id) DO NOTHING",
                &[&stream, &entry_id, &sku, &i32::from(shard), &fields, &error],
            )
            .await?;
        Ok(parked > 0)
    }

    /// Every SKU the ledger has an event of.
    pub async fn ledger_skus(&self) -> Result<Vec<String>, DbError> {
        let client = self.get().await?;
        let rows = client
            .query("SELECT DISTINCT sku FROM ledger_events", &[])
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Every retired SKU (`reconcile --retire`), in order.
    pub async fn retired_skus(&self) -> Result<Vec<String>, DbError> {
        let client = self.get().await?;
        let rows = client
            .query("SELECT sku FROM retired_skus ORDER BY sku", &[])
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// A shard's events, in event order.
    pub async fn ledger_rows(&self, sku: &str, shard: u16) -> Result<Vec<LedgerRow>, DbError> {
        let client = self.get().await?;
        let rows = client
            .query(
                "SELECT kind, rid, qty, user_id FROM ledger_events
                 WHERE sku = $1 AND shard = $2 ORDER BY event_at, id",
                &[&sku, &i32::from(shard)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| LedgerRow {
                kind: r.get(0),
                rid: r.get(1),
                qty: r.get(2),
                user: r.get(3),
            })
            .collect())
    }

    /// Per shard of `sku`, the first outbox stream its events came from.
    pub async fn ledger_streams(&self, sku: &str) -> Result<Vec<(i32, String)>, DbError> {
        let client = self.get().await?;
        let rows = client
            .query(
                "SELECT shard, min(stream) FROM ledger_events
                 WHERE sku = $1 AND source = 'outbox' GROUP BY shard ORDER BY shard",
                &[&sku],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}
