//! The outbox streams (`fg:{SKU#s}:events`, one per shard) and the
//! consumer group every writer reads through: creating the group, its view
//! of a stream (lag), the newest id, trimming acknowledged entries and
//! forgetting the consumers of gone writers.

use fred::interfaces::ClientLike;
use fred::types::{ClusterHash, CustomCommand, Value};

use super::event::{id_lt, items, pairs};
use super::writer::Writer;
use super::GROUP;
use crate::inventory::replies::text;
use crate::inventory::scripts::classify;
use crate::inventory::Inventory;
use crate::inventory::InventoryError;
use crate::metrics::Metrics;

/// Most entries counted one by one when Redis cannot tell a group's lag.
const UNDELIVERED_CAP: usize = 100_000;
/// A consumer idle this long, with nothing pending, belongs to a gone writer.
const FORGET_IDLE_MS: i64 = 3_600_000;

/// One shard's outbox stream, or (`cart`) one bucket's cart stream: then
/// `sku` is empty and `shard` the bucket.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Stream {
    pub key: String,
    pub sku: String,
    pub shard: u16,
    pub cart: bool,
}

/// `XGROUP CREATE … 0 MKSTREAM`: from the stream's first entry, so nothing
/// appended before the first writer started is skipped. An existing group is fine.
pub async fn ensure_group(
    inventory: &Inventory,
    metrics: &Metrics,
    key: &str,
) -> Result<(), InventoryError> {
    let slot = fred::util::redis_keyslot(key.as_bytes());
    let command = CustomCommand::new_static("XGROUP", ClusterHash::Custom(slot), false);
    let r: Result<Value, _> = inventory
        .pool()
        .next()
        .custom(command, vec!["CREATE", key, GROUP, "0", "MKSTREAM"])
        .await;
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.details().contains("BUSYGROUP") => Ok(()),
        Err(e) => Err(classify(metrics, e)),
    }
}

/// The group's view of one stream.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GroupState {
    /// Delivered to some writer, not yet acknowledged.
    pub pending: i64,
    /// The newest entry delivered (None: no group yet).
    pub last_delivered: Option<String>,
    /// Entries not yet on the ledger: pending + not yet delivered.
    pub unledgered: i64,
}

/// `XINFO GROUPS`; without a group every entry is unledgered (`XLEN`).
pub async fn group_state(
    inventory: &Inventory,
    metrics: &Metrics,
    key: &str,
) -> Result<GroupState, InventoryError> {
    let client = inventory.pool().next();
    let info: Result<Value, _> = client
        .custom(
            CustomCommand::new_static(
                "XINFO",
                ClusterHash::Custom(fred::util::redis_keyslot(key.as_bytes())),
                false,
            ),
            vec!["GROUPS", key],
        )
        .await;
    let groups = match info {
        Ok(v) => items(v),
        Err(e) if e.details().contains("no such key") => Vec::new(),
        Err(e) => return Err(classify(metrics, e)),
    };
    for g in groups {
        let f = pairs(g);
        if f.get("name").map(String::as_str) != Some(GROUP) {
            continue;
        }
        let pending = f.get("pending").and_then(|v| v.parse().ok()).unwrap_or(0);
        let last = f.get("last-delivered-id").cloned();
        let lag = match f.get("lag").and_then(|v| v.parse::<i64>().ok()) {
            Some(l) => l,
            // Redis cannot tell (entries deleted in the range): count them
            None => undelivered(inventory, metrics, key, last.as_deref()).await?,
        };
        return Ok(GroupState {
            pending,
            last_delivered: last,
            unledgered: pending + lag,
        });
    }
    let len: Value = client
        .custom(
            CustomCommand::new_static("XLEN", ClusterHash::Offset(0), false),
            vec![key],
        )
        .await
        .map_err(|e| classify(metrics, e))?;
    Ok(GroupState {
        pending: 0,
        last_delivered: None,
        unledgered: crate::inventory::replies::int(&len)?,
    })
}

async fn undelivered(
    inventory: &Inventory,
    metrics: &Metrics,
    key: &str,
    after: Option<&str>,
) -> Result<i64, InventoryError> {
    let start = match after {
        Some(id) => format!("({id}"),
        None => "-".into(),
    };
    let v: Value = inventory
        .pool()
        .next()
        .custom(
            CustomCommand::new_static("XRANGE", ClusterHash::Offset(0), false),
            // bounded: beyond this many the lag is reported as this many
            vec![
                key.to_string(),
                start,
                "+".into(),
                "COUNT".into(),
                UNDELIVERED_CAP.to_string(),
            ],
        )
        .await
        .map_err(|e| classify(metrics, e))?;
    Ok(items(v).len() as i64)
}

/// The newest entry id of a stream ("" when empty or absent).
pub async fn last_id(
    inventory: &Inventory,
    metrics: &Metrics,
    key: &str,
) -> Result<String, InventoryError> {
    let v: Value = inventory
        .pool()
        .next()
        .custom(
            CustomCommand::new_static("XREVRANGE", ClusterHash::Offset(0), false),
            vec![key, "+", "-", "COUNT", "1"],
        )
        .await
        .map_err(|e| classify(metrics, e))?;
    match items(v).into_iter().next() {
        Some(entry) => match items(entry).first() {
            Some(id) => text(id),
            None => Ok(String::new()),
        },
        None => Ok(String::new()),
    }
}

impl Writer {
    /// Drop acknowledged entries: everything older than both the oldest
    /// pending entry and the last delivered one. The group's state is read
    /// before the pending list, so an entry delivered in between (newer than
    /// the last-delivered id we saw) is never trimmed.
    pub(super) async fn trim(&self, key: &str, g: &GroupState) -> Result<(), InventoryError> {
        let Some(last) = &g.last_delivered else {
            return Ok(());
        };
        let mut min = last.clone();
        if g.pending > 0 {
            let reply = self
                .redis("XPENDING", 0, vec![key.to_string(), GROUP.to_string()])
                .await?;
            // [count, smallest id, largest id, [[consumer, count], ...]]
            let parts = items(reply);
            if let Some(oldest) = parts.get(1).map(text).transpose()? {
                if !oldest.is_empty() && id_lt(&oldest, &min) {
                    min = oldest;
                }
            }
        }
        if min == "0-0" {
            return Ok(());
        }
        self.redis("XTRIM", 0, vec![key.to_string(), "MINID".into(), min])
            .await?;
        Ok(())
    }

    /// Every process joins the group under a new name; drop the names of
    /// writers gone for [`FORGET_IDLE_MS`] with nothing pending, so the group
    /// does not grow with every restart. A consumer with pending entries is
    /// never dropped: those entries wait to be claimed.
    pub(super) async fn forget_idle_consumers(&self, key: &str) -> Result<(), InventoryError> {
        let reply = match self
            .redis(
                "XINFO",
                1,
                vec!["CONSUMERS".into(), key.into(), GROUP.into()],
            )
            .await
        {
            Ok(r) => r,
            Err(e) if e.to_string().contains("NOGROUP") => return Ok(()),
            Err(e) => return Err(e),
        };
        for c in items(reply) {
            let f = pairs(c);
            let n = |k: &str| f.get(k).and_then(|v| v.parse::<i64>().ok());
            let (Some(name), Some(0), Some(idle)) = (f.get("name"), n("pending"), n("idle")) else {
                continue;
            };
            if idle >= FORGET_IDLE_MS && *name != self.consumer() {
                self.redis(
                    "XGROUP",
                    1,
                    vec!["DELCONSUMER".into(), key.into(), GROUP.into(), name.clone()],
                )
                .await?;
            }
        }
        Ok(())
    }
}
