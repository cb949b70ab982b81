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

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::interfaces::ClientLike;
use fred::types::{ClusterHash, CustomCommand, Value};
use tokio::sync::watch;

use crate::config::Config;
use crate::db::{Db, DbError};
use crate::error::InventoryError;
use crate::inventory::scripts::{classify, text};
use crate::inventory::Inventory;
use crate::metrics::Metrics;

/// The consumer group every ledger writer reads through.
pub const GROUP: &str = "ledger";
/// Entries from one stream per pass at most (in batches), so one busy shard
/// cannot starve the others.
const BATCHES_PER_STREAM: usize = 20;
/// How often lag is measured, streams trimmed and stale entries claimed.
const CHORE_INTERVAL: Duration = Duration::from_secs(1);
/// Most entries counted one by one when Redis cannot tell a group's lag.
const UNDELIVERED_CAP: usize = 100_000;
/// How often idle consumers of dead writers are dropped from the group.
const FORGET_INTERVAL: Duration = Duration::from_secs(60);
/// A consumer idle this long, with nothing pending, belongs to a gone writer.
const FORGET_IDLE_MS: i64 = 3_600_000;
/// How long a stopping writer lets its batch in flight finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Longest pause between attempts while Postgres or Redis is down.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

const INSERT: &str = "INSERT INTO ledger_events
        (stream, entry_id, sku, shard, kind, rid, qty, user_id, event_at)
    SELECT s, e, k, sh, t, r, q, u, to_timestamp(ts::double precision / 1000.0)
    FROM unnest($1::text[], $2::text[], $3::text[], $4::int4[], $5::text[],
                $6::text[], $7::int8[], $8::text[], $9::int8[])
         AS x(s, e, k, sh, t, r, q, u, ts)
    ON CONFLICT DO NOTHING";

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

/// One shard's outbox stream.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Stream {
    pub key: String,
    pub sku: String,
    pub shard: u16,
}

/// One outbox entry; `fields` is None for an entry deleted from the stream
/// while it was pending (nothing left to write).
#[derive(Clone, Debug)]
struct Entry {
    id: String,
    fields: Option<HashMap<String, String>>,
}

/// One row of `ledger_events` from an outbox entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// The stream entry's id; `<id>/<i>` for the i-th hold of a batched
    /// `held` entry, so that each has its own unique `(stream, entry_id)`.
    pub entry_id: String,
    pub kind: String,
    pub rid: String,
    pub qty: i64,
    pub user: String,
    /// Milliseconds, the Redis server's clock.
    pub ts: i64,
}

/// The events of one outbox entry (`fields`: its field/value pairs). Every
/// script writes one event per entry — `type`, `rid`, `qty`, `user`, `ts` —
/// except `reserve.lua`, which writes the holds of one call as one `held`
/// entry whose `holds` field has a line `rid|qty|user` per hold (the user
/// last: it may contain `|`, never a line break).
pub fn events_of(entry_id: &str, fields: &HashMap<String, String>) -> Vec<Event> {
    let get = |k: &str| fields.get(k).cloned().unwrap_or_default();
    let kind = get("type");
    // the entry id's milliseconds are the server's clock too
    let ts = get("ts")
        .parse::<i64>()
        .unwrap_or_else(|_| id_ms(entry_id).unwrap_or(0));
    match fields.get("holds") {
        Some(holds) => holds
            .split('\n')
            .enumerate()
            .map(|(i, line)| {
                let mut p = line.splitn(3, '|');
                let rid = p.next().unwrap_or_default().to_owned();
                let qty = p.next().and_then(|q| q.parse().ok()).unwrap_or(0);
                let user = p.next().unwrap_or_default().to_owned();
                Event {
                    entry_id: format!("{entry_id}/{i}"),
                    kind: kind.clone(),
                    rid,
                    qty,
                    user,
                    ts,
                }
            })
            .collect(),
        None => vec![Event {
            entry_id: entry_id.to_owned(),
            kind,
            rid: get("rid"),
            qty: get("qty").parse::<i64>().unwrap_or(0),
            user: get("user"),
            ts,
        }],
    }
}

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PassStats {
    /// Entries read (new, own pending, or claimed).
    pub delivered: u64,
    /// Rows inserted (redeliveries insert nothing).
    pub written: u64,
    /// Entries that were gone from the stream before they could be written.
    pub lost: u64,
}

/// A ledger writer: one consumer of the group.
pub struct Writer {
    inventory: Arc<Inventory>,
    db: Db,
    metrics: Arc<Metrics>,
    settings: LedgerSettings,
    /// Streams whose group is known to exist.
    grouped: HashSet<String>,
    /// Streams where this consumer may have pending entries of its own (all,
    /// at start; again after a failed write).
    recheck: HashSet<String>,
    fresh: bool,
    last_forget: Option<Instant>,
}

impl Writer {
    pub fn new(
        inventory: Arc<Inventory>,
        db: Db,
        metrics: Arc<Metrics>,
        settings: LedgerSettings,
    ) -> Writer {
        Writer {
            inventory,
            db,
            metrics,
            settings,
            grouped: HashSet::new(),
            recheck: HashSet::new(),
            fresh: true,
            last_forget: None,
        }
    }

    pub fn consumer(&self) -> &str {
        &self.settings.consumer
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Every shard stream of every preloaded SKU.
    pub async fn streams(&self) -> Result<Vec<Stream>, InventoryError> {
        let mut out = Vec::new();
        for sku in self.inventory.skus().await? {
            let Some(meta) = self.inventory.meta(&sku).await? else {
                continue;
            };
            for s in 0..meta.shards {
                out.push(Stream {
                    key: meta.keys(s).events(),
                    sku: sku.to_string(),
                    shard: s,
                });
            }
        }
        Ok(out)
    }

    /// Drain every stream once (up to [`BATCHES_PER_STREAM`] batches each).
    /// With `chores`, also claim entries of dead writers and trim.
    pub async fn pass(&mut self, chores: bool) -> Result<PassStats, LedgerError> {
        let streams = self.streams().await?;
        if self.fresh {
            self.recheck = streams.iter().map(|s| s.key.clone()).collect();
            self.fresh = false;
        }
        let mut stats = PassStats::default();
        let mut failed = None;
        // Streams are isolated: one that fails (its master down, a slot
        // moving) is retried next pass while the others go on. Only Postgres
        // being down stops the pass: every stream would fail the same way, slowly.
        for s in &streams {
            if let Err(e) = self.drain(s, chores, &mut stats).await {
                // our own reads of this stream may be pending now
                self.recheck.insert(s.key.clone());
                if is_nogroup(&e) {
                    self.grouped.remove(&s.key);
                }
                tracing::warn!(stream = %s.key, error = %e, "ledger: stream skipped this pass");
                let stop = matches!(e, LedgerError::Db(DbError::Unavailable { .. }));
                failed.get_or_insert(e);
                if stop {
                    break;
                }
            }
        }
        if chores {
            // also while Postgres is down: the lag is what an alert watches;
            // a stream that cannot be measured does not freeze the others'
            let mut lag = 0;
            for s in &streams {
                let g = match self.group_state(&s.key).await {
                    Ok(g) => g,
                    Err(e) => {
                        failed.get_or_insert(e.into());
                        continue;
                    }
                };
                lag += g.unledgered;
                if let Err(e) = self.trim(&s.key, &g).await {
                    failed.get_or_insert(e.into());
                }
            }
            self.metrics.ledger_lag.set(lag);
            if self
                .last_forget
                .is_none_or(|t| t.elapsed() >= FORGET_INTERVAL)
            {
                self.last_forget = Some(Instant::now());
                for s in &streams {
                    if let Err(e) = self.forget_idle_consumers(&s.key).await {
                        failed.get_or_insert(e.into());
                    }
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(stats),
        }
    }

    async fn drain(
        &mut self,
        s: &Stream,
        chores: bool,
        stats: &mut PassStats,
    ) -> Result<(), LedgerError> {
        self.ensure_group(&s.key).await?;
        if chores {
            self.claim(s, stats).await?;
        }
        let mut own = self.recheck.contains(&s.key);
        for _ in 0..BATCHES_PER_STREAM {
            let entries = self.read(&s.key, if own { "0" } else { ">" }).await?;
            let n = entries.len();
            if n == 0 && own {
                self.recheck.remove(&s.key);
                own = false;
                continue;
            }
            self.commit(s, entries, stats).await?;
            if n < self.settings.batch {
                if own {
                    continue; // the rest of our pending entries, then new ones
                }
                break;
            }
        }
        Ok(())
    }

    /// Write a batch, then acknowledge it.
    async fn commit(
        &self,
        s: &Stream,
        entries: Vec<Entry>,
        stats: &mut PassStats,
    ) -> Result<(), LedgerError> {
        if entries.is_empty() {
            return Ok(());
        }
        stats.delivered += entries.len() as u64;
        let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
        let live: Vec<&Entry> = entries.iter().filter(|e| e.fields.is_some()).collect();
        let gone = entries.len() - live.len();
        if gone > 0 {
            stats.lost += gone as u64;
            tracing::error!(
                stream = %s.key,
                entries = gone,
                "outbox entries were deleted before the ledger got them; reconcile will show the drift"
            );
        }
        if !live.is_empty() {
            let written = match self.insert(s, &live).await {
                Ok(n) => n,
                // some entry of the batch holds a value Postgres refuses:
                // write them one by one and park the ones refused, so one
                // poison entry is not re-read for ever, blocking its stream
                Err(DbError::Refused(_)) => {
                    let mut n = 0;
                    for e in &live {
                        match self.insert(s, &[*e]).await {
                            Ok(w) => n += w,
                            Err(DbError::Refused(why)) => self.dead_letter(s, e, &why).await?,
                            Err(other) => return Err(other.into()),
                        }
                    }
                    n
                }
                Err(e) => return Err(e.into()),
            };
            stats.written += written;
            self.metrics.ledger_written.inc_by(written);
        }
        self.ack(&s.key, ids).await?;
        Ok(())
    }

    /// Park an entry Postgres refused in `ledger_dead_letters` (its fields
    /// escaped, so the row itself is always accepted) and count it.
    async fn dead_letter(&self, s: &Stream, e: &Entry, why: &str) -> Result<(), DbError> {
        let fields: std::collections::BTreeMap<&String, &String> =
            e.fields.iter().flatten().collect();
        let fields = format!("{fields:?}").escape_default().to_string();
        let client = self.db.get().await?;
        let parked = client
            .execute(
                "INSERT INTO ledger_dead_letters (stream, entry_id, sku, shard, fields, error)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (stream, entry_id) DO NOTHING",
                &[
                    &s.key,
                    &e.id,
                    &s.sku,
                    &i32::from(s.shard),
                    &fields,
                    &why.escape_default().to_string(),
                ],
            )
            .await?;
        if parked > 0 {
            self.metrics.ledger_dead_letters.inc();
        }
        tracing::error!(stream = %s.key, entry = %e.id, error = %why,
            "ledger: an outbox entry Postgres refuses was parked in ledger_dead_letters");
        Ok(())
    }

    /// One statement — one transaction — per batch; redelivered entries are no-ops.
    async fn insert(&self, s: &Stream, entries: &[&Entry]) -> Result<u64, DbError> {
        let n = entries.len();
        let mut stream = Vec::with_capacity(n);
        let mut id = Vec::with_capacity(n);
        let mut sku = Vec::with_capacity(n);
        let mut shard = Vec::with_capacity(n);
        let mut kind = Vec::with_capacity(n);
        let mut rid = Vec::with_capacity(n);
        let mut qty = Vec::with_capacity(n);
        let mut user = Vec::with_capacity(n);
        let mut ts = Vec::with_capacity(n);
        for e in entries {
            let Some(f) = &e.fields else { continue };
            for ev in events_of(&e.id, f) {
                stream.push(s.key.clone());
                id.push(ev.entry_id);
                sku.push(s.sku.clone());
                shard.push(i32::from(s.shard));
                kind.push(ev.kind);
                rid.push(ev.rid);
                qty.push(ev.qty);
                user.push(ev.user);
                ts.push(ev.ts);
            }
        }
        let client = self.db.get().await?;
        let stmt = client.prepare_cached(INSERT).await?;
        let written = client
            .execute(
                &stmt,
                &[&stream, &id, &sku, &shard, &kind, &rid, &qty, &user, &ts],
            )
            .await?;
        Ok(written)
    }

    async fn redis(
        &self,
        cmd: &'static str,
        key_at: usize,
        args: Vec<String>,
    ) -> Result<Value, InventoryError> {
        // fred 10.1 honours only `ClusterHash::Custom` on a custom command
        // (`Offset` falls back to the first argument), so route by the key's slot
        let slot = fred::util::redis_keyslot(args.get(key_at).map_or(&[][..], |k| k.as_bytes()));
        let command = CustomCommand::new_static(cmd, ClusterHash::Custom(slot), false);
        self.inventory
            .pool()
            .next()
            .custom::<Value, String>(command, args)
            .await
            .map_err(|e| classify(&self.metrics, e))
    }

    async fn ensure_group(&mut self, key: &str) -> Result<(), InventoryError> {
        if self.grouped.contains(key) {
            return Ok(());
        }
        ensure_group(&self.inventory, &self.metrics, key).await?;
        self.grouped.insert(key.to_string());
        Ok(())
    }

    async fn read(&self, key: &str, from: &str) -> Result<Vec<Entry>, InventoryError> {
        let reply = self
            .redis(
                "XREADGROUP",
                6,
                vec![
                    "GROUP".into(),
                    GROUP.into(),
                    self.settings.consumer.clone(),
                    "COUNT".into(),
                    self.settings.batch.to_string(),
                    "STREAMS".into(),
                    key.into(),
                    from.into(),
                ],
            )
            .await?;
        // [[stream, [entry, ...]]] or nil
        let mut out = Vec::new();
        for stream in items(reply) {
            let mut parts = items(stream).into_iter();
            let _name = parts.next();
            if let Some(entries) = parts.next() {
                out.extend(parse_entries(entries)?);
            }
        }
        Ok(out)
    }

    /// Take over entries another writer (presumed dead) left pending.
    async fn claim(&self, s: &Stream, stats: &mut PassStats) -> Result<(), LedgerError> {
        let mut cursor = "0-0".to_string();
        for _ in 0..BATCHES_PER_STREAM {
            let reply = self
                .redis(
                    "XAUTOCLAIM",
                    0,
                    vec![
                        s.key.clone(),
                        GROUP.into(),
                        self.settings.consumer.clone(),
                        self.settings.claim_idle_ms.to_string(),
                        cursor.clone(),
                        "COUNT".into(),
                        self.settings.batch.to_string(),
                    ],
                )
                .await?;
            // [next cursor, [entry, ...], [deleted id, ...]] (Redis >= 7)
            let mut parts = items(reply).into_iter();
            let next = parts
                .next()
                .map(|v| text(&v))
                .transpose()?
                .unwrap_or_default();
            let claimed = parts
                .next()
                .map(parse_entries)
                .transpose()?
                .unwrap_or_default();
            let deleted: Vec<String> = parts
                .next()
                .map(items)
                .unwrap_or_default()
                .iter()
                .filter_map(|v| text(v).ok())
                .collect();
            if !deleted.is_empty() {
                // XAUTOCLAIM already dropped them from the pending list
                stats.lost += deleted.len() as u64;
                tracing::error!(stream = %s.key, entries = deleted.len(), "pending outbox entries were deleted before the ledger got them");
            }
            if !claimed.is_empty() {
                tracing::warn!(stream = %s.key, entries = claimed.len(), consumer = %self.settings.consumer, "claimed entries left pending by another ledger writer");
                self.commit(s, claimed, stats).await?;
            }
            if next.is_empty() || next == "0-0" {
                break;
            }
            cursor = next;
        }
        Ok(())
    }

    async fn ack(&self, key: &str, ids: Vec<String>) -> Result<(), InventoryError> {
        let mut args = vec![key.to_string(), GROUP.to_string()];
        args.extend(ids);
        self.redis("XACK", 0, args).await?;
        Ok(())
    }

    async fn group_state(&self, key: &str) -> Result<GroupState, InventoryError> {
        group_state(&self.inventory, &self.metrics, key).await
    }

    /// Drop acknowledged entries: everything older than both the oldest
    /// pending entry and the last delivered one. The group's state is read
    /// before the pending list, so an entry delivered in between (newer than
    /// the last-delivered id we saw) is never trimmed.
    async fn trim(&self, key: &str, g: &GroupState) -> Result<(), InventoryError> {
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
    async fn forget_idle_consumers(&self, key: &str) -> Result<(), InventoryError> {
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
            if idle >= FORGET_IDLE_MS && *name != self.settings.consumer {
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

    /// Events not yet on the ledger, summed over every stream.
    pub async fn lag(&self) -> Result<i64, InventoryError> {
        let mut lag = 0;
        for s in self.streams().await? {
            // a stream that cannot be read does not hide the others' lag
            match self.group_state(&s.key).await {
                Ok(g) => lag += g.unledgered,
                Err(e) => tracing::warn!(stream = %s.key, error = %e, "ledger: cannot measure lag"),
            }
        }
        self.metrics.ledger_lag.set(lag);
        Ok(lag)
    }
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
        unledgered: crate::inventory::scripts::int(&len)?,
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

/// Run a writer until `shutdown` turns true: apply the migrations (retrying
/// while Postgres is down), then drain every `interval`, backing off while
/// Postgres or Redis fails. The current batch finishes before it stops.
pub async fn run(
    mut writer: Writer,
    heartbeat: crate::shutdown::Heartbeat,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = writer.settings.interval;
    let mut failing = false;
    // migrations first: the writer cannot insert before the table exists
    loop {
        // a round that fails (Postgres down) still completes: the writer is
        // alive and retrying, and the sale goes on (the outbox holds the events)
        heartbeat.beat();
        match writer.db.migrate().await {
            Ok(applied) => {
                if !applied.is_empty() {
                    tracing::info!(?applied, "ledger: migrations applied");
                }
                break;
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "ledger: cannot migrate yet; retrying");
                    failing = true;
                }
                if wait(&mut shutdown, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    tracing::info!(consumer = %writer.consumer(), "ledger writer started");
    let mut last_chores: Option<Instant> = None;
    loop {
        heartbeat.beat();
        let chores = last_chores.is_none_or(|t| t.elapsed() >= CHORE_INTERVAL);
        if chores {
            last_chores = Some(Instant::now());
        }
        let result = {
            let pass = writer.pass(chores);
            tokio::pin!(pass);
            tokio::select! {
                r = &mut pass => r,
                _ = shutdown.changed() => {
                    // let the batch in flight finish, but not for ever (Postgres
                    // may hang): an abandoned batch stays pending and is claimed
                    match tokio::time::timeout(SHUTDOWN_GRACE, &mut pass).await {
                        Ok(r) => r,
                        Err(_) => {
                            tracing::warn!("ledger: stopping with a batch in flight; it stays pending and another writer claims it");
                            return;
                        }
                    }
                }
            }
        };
        match result {
            Ok(stats) => {
                if failing {
                    tracing::info!("ledger: writing again");
                    failing = false;
                }
                backoff = writer.settings.interval;
                if stats.delivered > 0 {
                    continue; // more may be waiting
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "ledger: pass failed; entries stay pending in Redis, retrying");
                    failing = true;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
        if wait(&mut shutdown, backoff).await {
            return;
        }
    }
}

/// The ledger writer of `flashgate serve`, when a `postgres_url` is
/// configured: a function that starts a fresh writer each time it is called
/// (the supervisor in `app.rs` calls it again after a panic).
#[allow(clippy::type_complexity)]
pub fn task(
    c: &Config,
    inventory: &Arc<Inventory>,
    metrics: &Arc<Metrics>,
) -> Option<
    impl Fn(
        crate::shutdown::Heartbeat,
        watch::Receiver<bool>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
> {
    if c.postgres_url.is_empty() {
        return None;
    }
    let db = match Db::new(&c.postgres_url, c.postgres_pool_size) {
        Ok(db) => db,
        Err(e) => {
            tracing::error!(error = %e, "ledger writer not started");
            return None;
        }
    };
    let (inventory, metrics, settings) = (
        inventory.clone(),
        metrics.clone(),
        LedgerSettings::from_config(c),
    );
    Some(move |heartbeat, shutdown| {
        let writer = Writer::new(
            inventory.clone(),
            db.clone(),
            metrics.clone(),
            settings.clone(),
        );
        Box::pin(run(writer, heartbeat, shutdown))
            as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
    })
}

/// Sleep for `d`; true when shutdown was asked for.
async fn wait(shutdown: &mut watch::Receiver<bool>, d: Duration) -> bool {
    if *shutdown.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = shutdown.changed() => {}
    }
    *shutdown.borrow()
}

fn is_nogroup(e: &LedgerError) -> bool {
    matches!(e, LedgerError::Redis(r) if r.to_string().contains("NOGROUP"))
}

// ---- reply parsing ----

fn items(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a,
        Value::Map(m) => m
            .inner()
            .into_iter()
            .flat_map(|(k, v)| [Value::from(k), v])
            .collect(),
        _ => Vec::new(),
    }
}

/// A flat `[k, v, k, v…]` array (or a map) as strings; nested values are skipped.
fn pairs(v: Value) -> HashMap<String, String> {
    let flat = items(v);
    flat.chunks(2)
        .filter_map(|kv| match kv {
            [k, v] => Some((text(k).ok()?, text(v).ok()?)),
            _ => None,
        })
        .collect()
}

fn parse_entries(v: Value) -> Result<Vec<Entry>, InventoryError> {
    let mut out = Vec::new();
    for e in items(v) {
        let mut parts = items(e).into_iter();
        let Some(id) = parts.next() else { continue };
        let id = text(&id)?;
        let fields = match parts.next() {
            Some(Value::Null) | None => None,
            Some(f) => Some(pairs(f)),
        };
        out.push(Entry { id, fields });
    }
    Ok(out)
}

/// A stream id `ms-seq` as numbers.
pub fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

fn id_ms(id: &str) -> Option<i64> {
    parse_id(id).and_then(|(ms, _)| i64::try_from(ms).ok())
}

/// `a < b` as stream ids (unparsable ids compare as equal: never trim on them).
pub fn id_lt(a: &str, b: &str) -> bool {
    match (parse_id(a), parse_id(b)) {
        (Some(a), Some(b)) => a < b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_order_numerically() {
        assert!(id_lt("9-0", "10-0"));
        assert!(id_lt("10-2", "10-10"));
        assert!(!id_lt("10-10", "10-2"));
        assert!(!id_lt("x", "10-2"));
        assert_eq!(parse_id("1700000000000-3"), Some((1_700_000_000_000, 3)));
    }

    #[test]
    fn a_batched_held_entry_is_a_row_per_hold_and_other_entries_one_row() {
        let f = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let held = f(&[
            ("type", "held"),
            ("ts", "1700000000123"),
            ("holds", "s.0.a|1|u-1\ns.0.b|3|name with | bar"),
        ]);
        let rows = events_of("1700000000124-0", &held);
        assert_eq!(
            rows,
            [
                Event {
                    entry_id: "1700000000124-0/0".into(),
                    kind: "held".into(),
                    rid: "s.0.a".into(),
                    qty: 1,
                    user: "u-1".into(),
                    ts: 1_700_000_000_123,
                },
                Event {
                    entry_id: "1700000000124-0/1".into(),
                    kind: "held".into(),
                    rid: "s.0.b".into(),
                    qty: 3,
                    user: "name with | bar".into(),
                    ts: 1_700_000_000_123,
                },
            ]
        );
        let confirmed = f(&[
            ("type", "confirmed"),
            ("rid", "s.0.a"),
            ("qty", "1"),
            ("user", "u-1"),
        ]);
        assert_eq!(
            events_of("1700000000999-2", &confirmed),
            [Event {
                entry_id: "1700000000999-2".into(),
                kind: "confirmed".into(),
                rid: "s.0.a".into(),
                qty: 1,
                user: "u-1".into(),
                // no ts field: the entry id's milliseconds
                ts: 1_700_000_000_999,
            }]
        );
    }

    #[test]
    fn consumer_names_are_unique() {
        assert_ne!(default_consumer("w"), default_consumer("w"));
        assert!(default_consumer("w").starts_with("w-"));
    }
}
