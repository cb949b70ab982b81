//! Reading a shard consistently: Redis's counters, holds, pending transfers
//! and every reservation record (a SCAN), between two equal reads of the
//! shard's newest outbox id, and the ledger's rows for it once the ledger has
//! every entry up to that id. Also whether the sale still looks live.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use fred::interfaces::{ClientLike, HashesInterface, KeysInterface, SortedSetsInterface};
use fred::types::{ClusterHash, CustomCommand, Value};

use super::{Books, ReconcileError, Reconciler};
use crate::db::LedgerRow;
use crate::domain::Sku;
use crate::inventory::replies::{self, array, at, int, text, StoredRecord};
use crate::inventory::scripts;
use crate::inventory::InventoryError;
use crate::inventory::SkuMeta;
use crate::ledger;

const SNAPSHOT_RETRY: Duration = Duration::from_millis(100);
/// Pause before reading a shard that moved under us again.
const BUSY_RETRY: Duration = Duration::from_millis(10);
/// Reservation records read per pipeline.
const RECORD_CHUNK: usize = 500;
/// Keys asked for per SCAN call when looking for a shard's records.
const SCAN_COUNT: usize = 1000;

/// One reservation as the ledger has it.
#[derive(Clone, Debug, Default)]
pub(super) struct LedgerRid {
    pub(super) qty: i64,
    pub(super) user: String,
    pub(super) held: bool,
    pub(super) end: Option<String>,
}

/// One shard as the ledger has it.
#[derive(Clone, Debug, Default)]
pub(super) struct LedgerShard {
    pub(super) initial: i64,
    /// First loads of the shard (more than one: reloaded after a loss).
    pub(super) loads: u32,
    pub(super) transferred_in: i64,
    pub(super) transferred_out: i64,
    /// Transfers into this shard: transfer id → (donor shard, units).
    pub(super) ins: BTreeMap<String, (u16, i64)>,
    /// Transfers out of this shard: transfer id → (recipient shard, units).
    pub(super) outs: BTreeMap<String, (u16, i64)>,
    pub(super) rids: BTreeMap<String, LedgerRid>,
}

/// A consistent read of one shard in Redis.
pub(super) struct Snapshot {
    pub(super) last_id: String,
    pub(super) books: Books,
    pub(super) holds: Vec<String>,
    pub(super) records: HashMap<String, StoredRecord>,
    /// Transfers out of the shard not yet applied (its `xfers` hash):
    /// transfer id → (recipient shard, units).
    pub(super) pending_xfers: BTreeMap<String, (u16, i64)>,
}

impl LedgerShard {
    /// A shard's books and reservations from its ledger rows, in event order.
    pub(super) fn from_rows(rows: Vec<LedgerRow>) -> LedgerShard {
        let mut l = LedgerShard::default();
        for LedgerRow {
            kind,
            rid,
            qty,
            user,
        } in rows
        {
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
                    l.transferred_in += qty;
                    l.ins.insert(rid, (user.parse().unwrap_or(u16::MAX), qty));
                }
                "xfer_out" => {
                    l.transferred_out += qty;
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
        l
    }
}

impl Reconciler {
    /// Why the SKU still looks like it is selling, if it does.
    pub(super) async fn live(
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
                    transferred_in: f("xin"),
                    transferred_out: f("xout"),
                },
                holds,
                records: HashMap::new(),
                pending_xfers,
            });
        }
    }

    /// One shard, Redis and ledger, as of one newest outbox id.
    pub(super) async fn read_shard(
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
        let mut scanned = self.scan_records(&sk).await?;
        let shard_of = [meta.sku.as_str(), ".", itoa::Buffer::new().format(shard)].concat();
        scanned.extend(
            self.claim_records()
                .await?
                .get(&shard_of)
                .into_iter()
                .flatten()
                .cloned(),
        );
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
            let records = replies::decode_records(reply)?;
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
        if l3 != snap.last_id {
            // the shard moved: its retry reads the claims' records again
            self.claim_rids = None;
        }
        Ok((l3 == snap.last_id).then_some(snap))
    }

    /// On one Redis server (data layout 6), the ids of the records that ride
    /// in claims (`fg:{claim~H}:<id>` = `<body>\0<rid>|<record>`, lua/lib.lua),
    /// by shard (`SKU.s`): one `SCAN` of the claims and an `MGET` per
    /// [`RECORD_CHUNK`] of them, kept for the run and read again when a
    /// shard's snapshot is retried (its stock moved meanwhile). A record
    /// made after the read is known by the shard's expiry list or its
    /// outbox, whose entries the snapshot's window covers; only one whose
    /// outbox entry is also lost (the stream capped while the ledger was
    /// down) within the run itself would be missed. None on Redis Cluster,
    /// where every record is at `r:` (scan_records).
    async fn claim_records(&mut self) -> Result<&HashMap<String, Vec<String>>, ReconcileError> {
        if self.claim_rids.is_none() {
            let mut by_shard: HashMap<String, Vec<String>> = HashMap::new();
            if !self.inventory.nodes().per_master() {
                let client = self.inventory.pool().next();
                let mut cursor = "0".to_string();
                loop {
                    let keys;
                    (cursor, keys) = self
                        .scan_page(client, ClusterHash::Random, &cursor, "fg:{claim~*}:*")
                        .await?;
                    for chunk in keys.chunks(RECORD_CHUNK) {
                        let names: Vec<String> =
                            chunk.iter().map(text).collect::<Result<_, _>>()?;
                        let values: Vec<Option<String>> =
                            client.mget(names).await.map_err(|e| self.err(e))?;
                        for v in values.into_iter().flatten() {
                            let Some((_, rec)) = v.split_once('\0') else {
                                continue;
                            };
                            let Some((rid, _)) = rec.split_once('|') else {
                                continue;
                            };
                            if let Some((shard, _)) = rid.rsplit_once('.') {
                                by_shard
                                    .entry(shard.to_owned())
                                    .or_default()
                                    .push(rid.to_owned());
                            }
                        }
                    }
                    if cursor == "0" {
                        break;
                    }
                }
            }
            self.claim_rids = Some(by_shard);
        }
        Ok(self.claim_rids.get_or_insert_with(HashMap::new))
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
            let keys;
            (cursor, keys) = self
                .scan_page(client, ClusterHash::Custom(slot), &cursor, &pattern)
                .await?;
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

    /// One `SCAN <cursor> MATCH <pattern> COUNT SCAN_COUNT` on the node
    /// `hash` routes to: the next cursor ("0" when done) and the names found.
    async fn scan_page(
        &self,
        client: &fred::clients::Client,
        hash: ClusterHash,
        cursor: &str,
        pattern: &str,
    ) -> Result<(String, Vec<Value>), ReconcileError> {
        let v: Value = client
            .custom(
                CustomCommand::new_static("SCAN", hash, false),
                vec![
                    cursor.to_owned(),
                    "MATCH".into(),
                    pattern.to_owned(),
                    "COUNT".into(),
                    SCAN_COUNT.to_string(),
                ],
            )
            .await
            .map_err(|e| self.err(e))?;
        let parts = array(v)?;
        let next = text(at(&parts, 0)?)?;
        let keys = match parts.into_iter().nth(1) {
            Some(v) => array(v)?,
            None => Vec::new(),
        };
        Ok((next, keys))
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
        let rows = self.db.ledger_rows(sku.as_str(), shard).await?;
        Ok(LedgerShard::from_rows(rows))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_cannot_widen_the_record_scan() {
        assert_eq!(glob_escape("fg:{a*b#0}:r:"), "fg:{a\\*b#0}:r:");
        assert_eq!(glob_escape("fg:{s#1}:r:"), "fg:{s#1}:r:");
    }
}
