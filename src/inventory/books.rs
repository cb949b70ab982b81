//! The books: the invariant every shard keeps,
//! `initial + transferred_in - transferred_out = available + held + sold`,
//! stated once here ([`Books::drift`]), and a SKU's books as `status` reads
//! them (per shard, and the transfer imbalance between shards).

use std::collections::HashMap;

use fred::interfaces::{HashesInterface, KeysInterface, SortedSetsInterface};
use serde::Serialize;

use super::InventoryError;
use super::{placement, Inventory};
use crate::domain::Sku;

/// One shard's books, as its stock key and books hash keep them. The one
/// statement of the invariant every script keeps ([`Books::drift`]); the
/// status below, and anything else that reads a shard's counters, asks it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Books {
    /// Units the shard was preloaded with.
    pub initial: i64,
    /// Units moved into the shard by transfers (books field `xin`).
    pub transferred_in: i64,
    /// Units moved out of the shard by transfers (books field `xout`).
    pub transferred_out: i64,
    /// The shard's stock key: units free for a hold.
    pub available: i64,
    pub held: i64,
    pub sold: i64,
}

impl Books {
    /// `initial + transferred_in - transferred_out - (available + held + sold)`:
    /// 0 when the books add up; positive when units vanished, negative when
    /// units were created.
    pub fn drift(&self) -> i64 {
        self.initial + self.transferred_in
            - self.transferred_out
            - (self.available + self.held + self.sold)
    }
}

/// Per-shard books.
#[derive(Clone, Debug, Serialize, Default, PartialEq)]
pub struct ShardStatus {
    pub shard: u16,
    pub available: i64,
    pub held: i64,
    pub sold: i64,
    pub initial: i64,
    pub transferred_in: i64,
    pub transferred_out: i64,
    /// Holds waiting in the shard's expiry list.
    pub outstanding_holds: i64,
    /// Units taken out of this shard by a transfer not yet applied elsewhere.
    pub in_transit: i64,
    /// The cluster master (`host:port`) serving the shard; None on a single Redis.
    pub node: Option<String>,
}

impl ShardStatus {
    /// The shard's counters as [`Books`].
    pub fn books(&self) -> Books {
        Books {
            initial: self.initial,
            transferred_in: self.transferred_in,
            transferred_out: self.transferred_out,
            available: self.available,
            held: self.held,
            sold: self.sold,
        }
    }

    /// [`Books::drift`] of the shard: 0 when its books add up.
    pub fn drift(&self) -> i64 {
        self.books().drift()
    }
}

/// A SKU's books, summed over its shards.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SkuStatus {
    pub sku: String,
    pub available: i64,
    pub held: i64,
    pub sold: i64,
    pub shards: u16,
    pub initial: i64,
    pub in_transit: i64,
    /// Units sent between the SKU's shards that neither arrived nor are in
    /// transit (`Σ xout - Σ xin - in_transit`): positive when a transfer's
    /// second half was lost (units vanished), negative when its first half
    /// was (units created). Each shard's own books add up either way.
    pub transfer_imbalance: i64,
    /// Buyers waiting on the SKU's waitlist.
    pub waitlist: i64,
    pub per_shard: Vec<ShardStatus>,
}

impl SkuStatus {
    /// Units unaccounted for: the shards' own drift plus the transfer
    /// imbalance between them (0 when the books add up; units in transit are
    /// accounted on both sides). The shards are read one after the other, so
    /// a transfer completing during the read can show for one call.
    pub fn drift(&self) -> i64 {
        self.per_shard.iter().map(ShardStatus::drift).sum::<i64>() + self.transfer_imbalance
    }
}

impl Inventory {
    pub async fn status(&self, sku: &Sku) -> Result<SkuStatus, InventoryError> {
        let meta = self.meta_of(sku).await?;
        let k = meta.shards;
        let routing = placement::routing(&self.pool);
        let mut per_shard = Vec::with_capacity(usize::from(k));
        for s in 0..k {
            let sk = meta.keys(s);
            let client = self.nodes.client_for_key(&sk.stock());
            // concurrent single commands (fred pipelines them on the
            // connection all the same), to the shard's master; one that
            // meets a slot move (MOVED/ASK) fails the status once (503) and
            // has the slot map re-read
            let (stock, books, holds, xfers) = tokio::try_join!(
                client.get::<Option<i64>, _>(sk.stock()),
                client.hgetall::<HashMap<String, i64>, _>(sk.books()),
                client.zcard::<i64, _>(sk.holds()),
                client.hvals::<Vec<String>, _>(sk.xfers()),
            )
            .map_err(|e| self.err(e))?;
            let f = |name: &str| books.get(name).copied().unwrap_or(0);
            let in_transit = xfers
                .iter()
                .filter_map(|v| v.split('|').nth(1).and_then(|n| n.parse::<i64>().ok()))
                .sum();
            per_shard.push(ShardStatus {
                shard: s,
                available: stock.unwrap_or(0),
                held: f("held"),
                sold: f("sold"),
                initial: f("initial"),
                transferred_in: f("xin"),
                transferred_out: f("xout"),
                outstanding_holds: holds,
                in_transit,
                node: meta.tags.get(usize::from(s)).and_then(|t| {
                    self.nodes
                        .master_of(placement::slot_of(t))
                        .or_else(|| placement::node_of(routing.as_ref(), t))
                }),
            });
        }
        let sum = |f: fn(&ShardStatus) -> i64| per_shard.iter().map(f).sum::<i64>();
        Ok(SkuStatus {
            sku: sku.to_string(),
            available: sum(|s| s.available),
            held: sum(|s| s.held),
            sold: sum(|s| s.sold),
            initial: sum(|s| s.initial),
            in_transit: sum(|s| s.in_transit),
            transfer_imbalance: sum(|s| s.transferred_out)
                - sum(|s| s.transferred_in)
                - sum(|s| s.in_transit),
            waitlist: self.waitlist_len(sku).await?,
            shards: k,
            per_shard,
        })
    }
}
