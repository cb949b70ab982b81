//! The SQL of carts on the ledger (`cart_events`, migration 0006): the
//! writer's batch insert and what reconcile reads of carts and their lines.

use super::{Db, DbError};

const INSERT: &str = "INSERT INTO cart_events
        (stream, entry_id, cart_id, seq, status, owner, user_id, lines, why, bad, event_at)
    SELECT s, e, c, q, st, o, u, l, w, b, to_timestamp(ts::double precision / 1000.0)
    FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[], $6::text[],
                $7::text[], $8::text[], $9::text[], $10::text[], $11::int8[])
         AS x(s, e, c, q, st, o, u, l, w, b, ts)
    ON CONFLICT DO NOTHING";

/// Rows for `cart_events`, column by column (one statement per batch).
#[derive(Clone, Debug, Default)]
pub struct CartEventColumns {
    pub stream: Vec<String>,
    pub entry_id: Vec<String>,
    pub cart_id: Vec<String>,
    pub seq: Vec<i64>,
    pub status: Vec<String>,
    pub owner: Vec<String>,
    pub user: Vec<String>,
    pub lines: Vec<String>,
    pub why: Vec<String>,
    pub bad: Vec<String>,
    /// Milliseconds.
    pub ts: Vec<i64>,
}

/// A cart as its last event on the ledger left it.
#[derive(Clone, Debug, PartialEq)]
pub struct LedgerCart {
    pub cart_id: String,
    pub status: String,
    /// `<sku>|<qty>|<reservation id or ''>`, one a line.
    pub lines: String,
    pub bad: String,
}

impl Db {
    /// Insert a batch of cart events in one statement; rows already there
    /// (a redelivered entry) are no-ops. Returns the rows inserted.
    pub async fn insert_cart_events(&self, c: &CartEventColumns) -> Result<u64, DbError> {
        let client = self.get().await?;
        let stmt = client.prepare_cached(INSERT).await?;
        Ok(client
            .execute(
                &stmt,
                &[
                    &c.stream,
                    &c.entry_id,
                    &c.cart_id,
                    &c.seq,
                    &c.status,
                    &c.owner,
                    &c.user,
                    &c.lines,
                    &c.why,
                    &c.bad,
                    &c.ts,
                ],
            )
            .await?)
    }

    /// Up to `limit` carts with an id after `after`, in id order, each as
    /// its last event left it (keyset pages over `cart_events_by_cart`).
    pub async fn ledger_carts(&self, after: &str, limit: i64) -> Result<Vec<LedgerCart>, DbError> {
        let client = self.get().await?;
        let rows = client
            .query(
                "SELECT DISTINCT ON (cart_id) cart_id, status, lines, bad
                 FROM cart_events WHERE cart_id > $1
                 ORDER BY cart_id, seq DESC, id DESC LIMIT $2",
                &[&after, &limit],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| LedgerCart {
                cart_id: r.get(0),
                status: r.get(1),
                lines: r.get(2),
                bad: r.get(3),
            })
            .collect())
    }

    /// The ledger's events (held, confirmed, released, expired) of the
    /// reservations `rids`, as (rid, kind).
    pub async fn hold_events(&self, rids: &[String]) -> Result<Vec<(String, String)>, DbError> {
        if rids.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.get().await?;
        let rows = client
            .query(
                "SELECT rid, kind FROM ledger_events WHERE rid = ANY($1)
                 AND kind IN ('held', 'confirmed', 'released', 'expired')",
                &[&rids],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}
