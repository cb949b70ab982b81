//! The ledger writer: drains every shard's outbox stream (`fg:{SKU#s}:events`,
//! appended by the same Lua script that changes the stock) into PostgreSQL's
//! `ledger_events`, so every stock change is on a durable book of record.
//!
//! **Exactly once on the books, whoever dies when.** Entries are read through
//! the consumer group [`GROUP`], written in one statement (one transaction)
//! per batch with `ON CONFLICT DO NOTHING` (unique: the stream entry, and one
//! `confirmed` per reservation — a confirm retried after a failover appends
//! a second one), and `XACK`ed
//! only after the commit. A writer killed before the commit leaves its batch
//! pending: it rereads its own pending entries when it comes back, and any
//! other writer claims them (`XAUTOCLAIM`) once they have been idle for
//! `ledger_claim_idle_ms`. A writer killed between the commit and the `XACK`
//! has its batch delivered again, and the unique key makes the second insert a
//! no-op. Several writers (one per `flashgate serve`, plus `flashgate ledger`)
//! share the group and the work.
//!
//! **Never on the sale's path.** Reads are non-blocking (`XREADGROUP` without
//! `BLOCK`, polled every `ledger_interval_ms`), so they can share the service's
//! Redis pool without tying up a connection (ECOSYSTEM pitfall 9). While
//! Postgres is down the writer backs off and retries; the sale goes on and the
//! entries wait in Redis.
//!
//! **Bounded streams.** Acknowledged entries are trimmed (`XTRIM MINID` up to
//! the oldest entry still pending or not yet delivered). The streams also carry
//! an approximate `MAXLEN` (lua/lib.lua) so that a ledger that stays down for
//! over a million changes per shard cannot exhaust Redis memory; entries lost
//! that way show up as drift in `flashgate reconcile`.
//!
//! **Carts.** The 16 cart streams `fg:{carts~X}:events` (one per work-list
//! bucket, appended by `cart_begin.lua`/`cart_move.lua` with each change of a
//! cart's status) are drained the same way into `cart_events`; a stream no
//! cart has written yet is skipped, not created (docs/carts.md, "Ledger").
//!
//! **Where.** `event`: the outbox entry format and its rows on the ledger
//! (pure); `outbox`: the streams and their consumer group (lag, trimming,
//! forgotten consumers); `writer`: the writer task. Its SQL is in `db`.

mod event;
mod outbox;
mod writer;

use std::time::Duration;

use crate::config::Config;
use crate::db::DbError;
use crate::inventory::InventoryError;

pub use event::{cart_event_of, events_of, id_lt, parse_id, CartEvent, Event};
pub use outbox::{ensure_group, group_state, last_id, GroupState, Stream};
pub use writer::{run, task, PassStats, Writer, MAX_BACKOFF};

/// The consumer group every ledger writer reads through.
pub const GROUP: &str = "ledger";

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    Redis(#[from] InventoryError),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// How a writer behaves; from [`Config`].
#[derive(Clone, Debug)]
pub struct LedgerSettings {
    /// Entries per read and per insert.
    pub batch: usize,
    /// Pause between passes when the streams are drained.
    pub interval: Duration,
    /// Pending entries idle this long belong to a writer presumed dead.
    pub claim_idle_ms: u64,
    /// This writer's name in the consumer group (unique per process).
    pub consumer: String,
}

impl LedgerSettings {
    pub fn from_config(c: &Config) -> LedgerSettings {
        LedgerSettings {
            batch: c.ledger_batch.max(1),
            interval: Duration::from_millis(c.ledger_interval_ms.max(1)),
            claim_idle_ms: c.ledger_claim_idle_ms,
            consumer: if c.ledger_consumer.is_empty() {
                default_consumer("writer")
            } else {
                c.ledger_consumer.clone()
            },
        }
    }
}

/// `<role>-<host>-<pid>-<random>`: unique per process, readable in `XINFO CONSUMERS`.
pub fn default_consumer(role: &str) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "flashgate".into());
    let rand = uuid::Uuid::new_v4().simple().to_string();
    format!("{role}-{host}-{}-{}", std::process::id(), &rand[..6])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_names_are_unique() {
        assert_ne!(default_consumer("w"), default_consumer("w"));
        assert!(default_consumer("w").starts_with("w-"));
    }
}
