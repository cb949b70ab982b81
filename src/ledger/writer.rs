//! The ledger writer: one consumer of the group, draining every shard's
//! stream into `ledger_events` in batches (exactly once on the books: see
//! the module above), and the task `flashgate serve` and `flashgate ledger`
//! run it in.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::interfaces::ClientLike;
use fred::types::{ClusterHash, CustomCommand, Value};
use tokio::sync::watch;

use super::event::{cart_event_of, events_of, items, parse_entries, Entry};
use super::outbox::{ensure_group, group_state, GroupState, Stream};
use super::{LedgerError, LedgerSettings, GROUP};
use crate::config::Config;
use crate::db::{CartEventColumns, Db, DbError, EventColumns};
use crate::inventory::replies::text;
use crate::inventory::scripts::classify;
use crate::inventory::Inventory;
use crate::inventory::InventoryError;
use crate::metrics::Metrics;

/// Entries from one stream per pass at most (in batches), so one busy shard
/// cannot starve the others.
const BATCHES_PER_STREAM: usize = 20;
/// How often lag is measured, streams trimmed and stale entries claimed.
const CHORE_INTERVAL: Duration = Duration::from_secs(1);
/// How often idle consumers of dead writers are dropped from the group.
const FORGET_INTERVAL: Duration = Duration::from_secs(60);
/// How long a stopping writer lets its batch in flight finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Longest pause between attempts while Postgres or Redis is down.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

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

    /// Every shard stream of every preloaded SKU, then the 16 cart streams.
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
                    cart: false,
                });
            }
        }
        for (b, key) in crate::inventory::keys::CART_EVENT_STREAMS
            .iter()
            .enumerate()
        {
            out.push(Stream {
                key: (*key).to_owned(),
                sku: String::new(),
                shard: b as u16, // < 16
                cart: true,
            });
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
            for s in streams.iter().filter(|s| self.known(s)) {
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
                for s in streams.iter().filter(|s| self.known(s)) {
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
        if s.cart && !self.grouped.contains(&s.key) && !self.exists(&s.key).await? {
            // no cart has written to this bucket yet: nothing to drain, and
            // no empty stream created (the group starts at its first entry)
            return Ok(());
        }
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
        let parked = self
            .db
            .dead_letter(
                &s.key,
                &e.id,
                &s.sku,
                s.shard,
                &fields,
                &why.escape_default().to_string(),
            )
            .await?;
        if parked {
            self.metrics.ledger_dead_letters.inc();
        }
        tracing::error!(stream = %s.key, entry = %e.id, error = %why,
            "ledger: an outbox entry Postgres refuses was parked in ledger_dead_letters");
        Ok(())
    }

    /// One statement — one transaction — per batch; redelivered entries are no-ops.
    async fn insert(&self, s: &Stream, entries: &[&Entry]) -> Result<u64, DbError> {
        if s.cart {
            return self.insert_carts(s, entries).await;
        }
        let mut c = EventColumns::default();
        for e in entries {
            let Some(f) = &e.fields else { continue };
            for ev in events_of(&e.id, f) {
                c.stream.push(s.key.clone());
                c.entry_id.push(ev.entry_id);
                c.sku.push(s.sku.clone());
                c.shard.push(i32::from(s.shard));
                c.kind.push(ev.kind);
                c.rid.push(ev.rid);
                c.qty.push(ev.qty);
                c.user.push(ev.user);
                c.ts.push(ev.ts);
            }
        }
        self.db.insert_events(&c).await
    }

    /// A cart stream's entries into `cart_events` (unique on the stream entry).
    async fn insert_carts(&self, s: &Stream, entries: &[&Entry]) -> Result<u64, DbError> {
        let mut c = CartEventColumns::default();
        for e in entries {
            let Some(f) = &e.fields else { continue };
            let ev = cart_event_of(&e.id, f);
            c.stream.push(s.key.clone());
            c.entry_id.push(ev.entry_id);
            c.cart_id.push(ev.cart_id);
            c.seq.push(ev.seq);
            c.status.push(ev.status);
            c.owner.push(ev.owner);
            c.user.push(ev.user);
            c.lines.push(ev.lines);
            c.why.push(ev.why);
            c.bad.push(ev.bad);
            c.ts.push(ev.ts);
        }
        self.db.insert_cart_events(&c).await
    }

    /// A shard stream, or a cart stream this writer has a group on.
    fn known(&self, s: &Stream) -> bool {
        !s.cart || self.grouped.contains(&s.key)
    }

    async fn exists(&self, key: &str) -> Result<bool, InventoryError> {
        let v = self.redis("EXISTS", 0, vec![key.to_owned()]).await?;
        Ok(crate::inventory::replies::int(&v)? > 0)
    }

    pub(super) async fn redis(
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

    pub(super) async fn group_state(&self, key: &str) -> Result<GroupState, InventoryError> {
        group_state(&self.inventory, &self.metrics, key).await
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
