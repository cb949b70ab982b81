//! The stock of a sale, as Redis keeps it: reserve, confirm, release, extend,
//! expire, preload. Every change is one atomic Lua script on one shard
//! (`lua/`); this module picks the shard, walks on when a shard is dry, moves
//! units between shards so that no request meets a false "sold out", and turns
//! script replies into typed outcomes.
//!
//! **Idempotency across shards.** A key's first shard is a stable hash of the
//! key; after that the walk goes round the shards in one fixed order — over
//! the SKU's shard count at the key's first request, which its claim records,
//! so shards added later do not reorder it (`walk`, docs/resharding.md). A shard
//! that cannot serve a key writes the `moved` tombstone for it in the same step
//! that refuses it; a shard that serves it records the reservation. Those
//! verdicts are sticky, so every request carrying the key — a retry, a
//! duplicate in flight, a request replayed after stock came back — sees the
//! same verdicts in the same order, and at most one reservation exists per key.
//! The last shard of the walk is the exception that keeps "no false sold out":
//! it refuses without a tombstone first, pulls units from the shards that
//! reported some (see `lua/transfer_out.lua`), and then decides for good.
//!
//! **An unreachable shard is skipped only by keys that never met it.** A
//! walk that cannot reach a shard (timeout, lost connection) ends with 503
//! even when later shards have stock: a script that timed out has an unknown
//! outcome — it may have made a hold there, and a duplicate in flight, or a
//! resend after a reconnect, may still make one once the shard is back (a
//! promoted replica may have it too). Skipping such a shard could leave the
//! key with a hold there *and* one further on: a double reservation. Skipping
//! is sound for a key whose verdict on that shard cannot exist — one that no
//! request ever sent there — and that is decided at the key's *first*
//! request: the shards whose master is known down right then (its client has
//! no connection, `nodes.rs`) are written into the key's claim record
//! (`fg:{idem~NN}:<key>`, the same `SET NX` that fixes the request body), and
//! every request with the key — the first one, retries, duplicates in flight,
//! which all read the stored record — walks without them; the sticky-verdict
//! argument holds for the shorter walk. Such a key never hears "sold out"
//! (the left-out shards may have units): a walk that finds nothing answers
//! 503, and the key's retries keep leaving those shards out. Whether the
//! master really was down does not matter for soundness, only for how much
//! stock the key can reach. So while a master is down: new keys are served by
//! the other shards, keys that already met the dead shard get 503 until the
//! failover (then their retries succeed, exactly once), keys whose claim
//! bucket is on the dead master get 503; keys needing only live masters are
//! served throughout, each master having its own client (`nodes.rs`;
//! `tests/cluster.rs`, `a_master_killed_mid_sale…`).
//!
//! **Refusals leave nothing behind; tombstones are never taken back.** A
//! walk that ends "sold out" has written its key's claim and a `moved`
//! tombstone on every shard, kept for the key retention (24 h). Deleting
//! them after the refusal would break the sticky verdicts: request B with
//! key K is past shard 0 when A (also K) ends its walk and deletes K's
//! tombstones; stock comes back to shard 0, C (K again) reserves there
//! while B reserves on shard 1 — two holds for one key. A short TTL on a
//! refusal's tombstones has the same hole for any duplicate slower than the
//! TTL (a fred resend, a client retry), so neither is done. Instead, while
//! the SKU is known empty, refusals do not reach the shards at all: the
//! sold-out mark (see `reserve`) answers `sold_out` — and `waitlist_full`
//! for `waitlist: true` requests while the waitlist is known full — from
//! memory. That is sound because such an answer reads no verdict and
//! writes nothing: the key has no state from this request, so whatever its
//! other requests do (one in flight, a retry later) is decided by the
//! verdicts they write themselves, exactly as if this request had never
//! come; the only difference a client can see is that a later retry of a
//! refused key may succeed. Keys that *do* have state are kept off that
//! path: the keys of the SKU's live and sold holds (the mark's winners,
//! each shard's `fg:{SKU#s}:keys`) walk and are replayed, and a
//! `waitlist: true` key that joined the waitlist (one `EXISTS` of its
//! `fg:{wl:SKU}:idem:<key>`) walks to its ticket. When the mark runs out,
//! one request re-checks it (single flight) read-only — each shard's stock,
//! gate and key set, and the waitlist's length — and only a shard with
//! units for new buyers sends requests back to walking. So refused requests
//! cost Redis memory only for the walks made before the SKU is first seen
//! empty and after each real return of units (a release, an expiry, not a
//! no-op release) — and not even then while every shard is gated, since
//! returned units then go to the waitlist's queue, not to new buyers (the
//! mark stands until the promoter lifts the gates) — never per refusal.
//! The promoter, likewise, reads the stock before it walks for the head
//! ticket: a round that finds too little writes nothing (a walk would
//! tombstone every shard for the attempt's key, and the next round would
//! use a fresh key).

pub mod batch;
mod durability;
pub mod expiry;
pub mod keys;
pub mod nodes;
pub mod placement;
pub mod preflight;
pub mod scripts;
pub mod waitlist;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fred::clients::Pool;
use fred::interfaces::{
    ClientLike, HashesInterface, KeysInterface, LuaInterface, SetsInterface, SortedSetsInterface,
};
use fred::prelude::{Builder, Config as RedisConfig, ReconnectPolicy};
use fred::types::Value;
use serde::Serialize;

use crate::config::Config;
use crate::domain::{Qty, ReservationId, ScopedKey, Sku, Tenant, UserId};
use crate::error::{ApiError, InventoryError};
use crate::metrics::Metrics;
use batch::ReserveReply;
use keys::ShardKeys;
use scripts::{array, at, int, text, Scripts};

/// Largest shard count one SKU may have.
pub const MAX_SHARDS: u16 = 256;
/// Most units one SKU may be preloaded with. Every counter of a shard
/// (stock, initial, held, sold, transfers) then stays far below 10^14, the
/// largest integer Lua's number formatting (`%.14g`, used when a script
/// hands a number back to Redis) writes exactly: above it `SET` would store
/// "1e+17" and every later `INCRBY` on the key would fail.
pub const MAX_STOCK: i64 = 1_000_000_000_000;
/// How long SKU metadata (shard count) is cached before it is read again.
const META_TTL: Duration = Duration::from_secs(2);

/// A reservation as the API shows it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Reservation {
    pub reservation_id: String,
    pub sku: String,
    pub qty: u32,
    pub user_id: String,
    pub status: &'static str,
    pub expires_at: String,
}

/// What a reserve request came to. Outcomes, not errors: each is a normal
/// answer of a sale.
#[derive(Debug)]
pub enum ReserveOutcome {
    /// A new hold (201).
    Held(Reservation),
    /// The key already holds this reservation; the first answer again (200).
    Replayed(Reservation),
    /// Every shard is empty (409).
    SoldOut,
    /// Sold out, and the buyer joined the waitlist (202).
    Waitlisted(waitlist::Ticket),
    /// The key already joined the waitlist: its ticket as it is now (200).
    WaitlistReplayed(waitlist::Ticket),
}

/// A parsed, validated reserve request.
#[derive(Clone, Debug)]
pub struct ReserveRequest {
    pub sku: Sku,
    pub qty: Qty,
    pub user: UserId,
    /// The key in its owner's namespace: the caller's, or the promoter's.
    pub key: ScopedKey,
    /// Join the SKU's waitlist when it is sold out.
    pub waitlist: bool,
}

impl ReserveRequest {
    /// What makes two requests with one key "the same request":
    /// `<qty>:<user>`, or `<qty>;w:<user>` with `waitlist`. Unambiguous:
    /// qty is digits only, so the character after them tells the two apart
    /// and the rest is the user id, whatever it holds (an earlier
    /// `<qty>:[w:]<user>` gave user `w:bob` and user `bob` with `waitlist`
    /// one fingerprint). Plain requests — the promoter's among them — keep
    /// the earlier form, so only `waitlist` keys in flight across an upgrade
    /// see a change (README, "Upgrading").
    fn fingerprint(&self) -> String {
        let sep = if self.waitlist { ";w:" } else { ":" };
        let mut qty = itoa::Buffer::new();
        [qty.format(self.qty.get()), sep, self.user.as_str()].concat()
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
    /// `initial + xin - xout - (available + held + sold)`: 0 when the books add up.
    pub fn drift(&self) -> i64 {
        self.initial + self.transferred_in
            - self.transferred_out
            - (self.available + self.held + self.sold)
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

/// What to preload.
#[derive(Clone, Copy, Debug)]
pub struct PreloadSpec {
    pub stock: i64,
    pub shards: u16,
    pub force: bool,
    pub max_per_user: Option<u32>,
}

impl PreloadSpec {
    /// The bounds of a preload, checked before anything is written: stock
    /// within `0..=MAX_STOCK`, shards within `1..=MAX_SHARDS`.
    pub fn validate(&self) -> Result<(), ApiError> {
        if !(1..=MAX_SHARDS).contains(&self.shards) {
            return Err(ApiError::InvalidRequest(format!(
                "shards must be within 1..={MAX_SHARDS}, not {}",
                self.shards
            )));
        }
        if !(0..=MAX_STOCK).contains(&self.stock) {
            return Err(ApiError::InvalidRequest(format!(
                "stock must be an integer within 0..={MAX_STOCK}, not {}",
                self.stock
            )));
        }
        Ok(())
    }
}

/// How preload.lua treats one shard's counters.
#[derive(Clone, Copy)]
enum ShardLoad {
    /// Set its available units; holds and sales stay on the books.
    Force,
    /// A shard no meta names yet (never served): start it afresh.
    New,
}

/// What `preload` did.
#[derive(Debug, PartialEq)]
pub enum PreloadOutcome {
    Loaded {
        per_shard: Vec<i64>,
    },
    /// The SKU already has counters; nothing changed (use force to overwrite).
    AlreadyLoaded,
}

/// A SKU's shard layout, as preload wrote it: shard count and each shard's
/// hash tag.
#[derive(Clone, Debug)]
pub struct SkuMeta {
    pub sku: Sku,
    pub shards: u16,
    pub tags: Vec<String>,
    /// Units one buyer may hold and buy together (0 = no cap).
    pub max_per_user: u32,
}

impl SkuMeta {
    pub fn keys(&self, shard: u16) -> ShardKeys {
        match self.tags.get(usize::from(shard)) {
            Some(tag) => ShardKeys::new(tag),
            None => ShardKeys::new(&keys::default_tag(&self.sku, shard)),
        }
    }
}

struct Settings {
    /// Replicas a hold must reach before it is answered (0 = off; durability.rs).
    replica_ack: u32,
    sold_out_cache: Duration,
    waitlist_capacity: u64,
    ticket_ttl_ms: u64,
    lease_ms: u64,
    extend_ms: u64,
    max_hold_ms: u64,
    idem_ttl_ms: u64,
    sweep_batch: u32,
}

/// The stock store: a Redis connection pool, the scripts, and the settings.
pub struct Inventory {
    /// Woken when units come back to stock (release, expiry): the waitlist
    /// promoter need not wait for its next tick.
    pub returned: tokio::sync::Notify,
    /// SKUs that answered "sold out": until when, and whether one request is
    /// already re-checking the shards (the sold-out fast path).
    sold_out: std::sync::Mutex<FastMap<Sku, SoldOutMark>>,
    /// Bumped whenever this instance sees units come back, so a walk that
    /// ended "sold out" before a return does not mark the SKU after it.
    returns_seen: std::sync::atomic::AtomicU64,
    pool: Pool,
    /// Where scripts go: the pool, or on a cluster the master of their slot.
    nodes: nodes::Nodes,
    scripts: Scripts,
    /// reserve.lua calls, coalesced per shard (batch.rs).
    reserver: Arc<batch::Lanes<batch::ReserveBatch>>,
    /// claim.lua calls, coalesced per bucket of idempotency records.
    claims: Arc<batch::Lanes<batch::ClaimBatch>>,
    /// `replica_ack` acknowledgements, coalesced per shard (durability.rs).
    acks: Arc<batch::Lanes<batch::AckBatch>>,
    metrics: Arc<Metrics>,
    settings: Settings,
    meta: RwLock<FastMap<Sku, (Arc<SkuMeta>, Instant)>>,
    /// `allow_eviction_policy`, and the last preflight verdict `/readyz`
    /// gave (re-checked at most every `preflight::RECHECK`).
    allow_eviction: bool,
    preflight: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
}

/// The maps every reserve reads (the sold-out marks, the layout cache, the
/// winners of a mark): foldhash, seeded at random per map, instead of
/// SipHash — two lookups per sold-out answer were ≈ 4 % of its
/// instructions (callgrind). Their keys are SKUs that were preloaded and
/// idempotency keys that won a unit, not whatever a client sends.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// The sold-out fast path's memory of one SKU.
struct SoldOutMark {
    until: Instant,
    probing: bool,
    /// The idempotency keys of the SKU's live and sold holds when the mark
    /// was made: their retries are replayed, everyone else is refused from
    /// memory.
    winners: FastSet<String>,
    /// The SKU's waitlist was full when last seen (a join took the last
    /// place or answered `full`, or the mark's walk or re-check counted the
    /// queue; a ticket this instance ends clears it): `waitlist: true`
    /// requests are refused from memory too, unless their key already joined.
    waitlist_full: bool,
    /// Every shard carried the waitlist's gate when last seen: units that
    /// come back go to the queue, not to new buyers, so a return keeps the
    /// mark (the promoter clears it when it lifts the gates; a lift by
    /// another instance is seen by the next re-check).
    gated: bool,
}

/// What the sold-out fast path says about one request.
#[derive(Debug, PartialEq)]
enum FastPath {
    /// Refuse from memory: no Redis command (a `waitlist: true` request
    /// also needs the waitlist known full).
    SoldOut { waitlist_full: bool },
    /// The mark ran out and this request re-checks it (single flight):
    /// a read-only look at the shards and the waitlist ([`Inventory::probe`]).
    Probe,
    /// Walk the shards (not marked, or the key won).
    Walk,
}

/// One shard's verdict on a reserve.
enum Step {
    Held(Reservation),
    Replay(Reservation),
    Moved(i64),
    Mismatch,
    /// The claim made in this call found another body (the earlier one).
    Claimed(String),
    Dry(i64),
    Unloaded,
}

pub fn ms_to_rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Connect a fred pool that fails fast: every command times out after
/// `redis_timeout_ms` (so a request answers 503 instead of hanging while Redis
/// is down), the command queue is bounded, dead connections are detected, and
/// a command is attempted at most twice (scripts are idempotent, so a resend
/// of an in-flight script is harmless).
pub async fn connect(config: &Config) -> Result<Pool, InventoryError> {
    let redis_config = RedisConfig::from_url(&config.redis_url)
        .map_err(|e| InventoryError::Unavailable(format!("bad redis_url: {e}")))?;
    let timeout = config.redis_timeout();
    // Redis Cluster, two fred 10.1 defects around redirections:
    // - following an ASK, fred writes ASKING on a connection that has other
    //   commands in flight and takes the next reply as ASKING's "OK": every
    //   later reply on that connection goes to the wrong command (seen in
    //   tests/cluster.rs as a reserve answered with another command's reply);
    // - a command that runs out of write attempts while it follows a MOVED
    //   ends the client's router task (every later command times out).
    // So fred follows no redirection (max_redirections 0): on MOVED it still
    // refreshes its slot map and fails the command, on ASK it just fails it,
    // and `scripts::run` resends (see there) — a resend goes to the new owner
    // once the slot has moved. Attempts get room all the same.
    let clustered = redis_config.server.is_clustered();
    let (attempts, redirections) = if clustered { (12, 0) } else { (2, 5) };
    let pool = builder(redis_config, timeout, attempts, redirections)
        .build_pool(config.redis_pool_size)
        .map_err(|e| InventoryError::Unavailable(e.to_string()))?;
    pool.init().await?;
    Ok(pool)
}

/// The fail-fast settings of every fred client flashgate makes (the pool,
/// and on a cluster the per-master clients of `nodes.rs`).
fn builder(
    redis_config: RedisConfig,
    timeout: Duration,
    attempts: u32,
    redirections: u32,
) -> Builder {
    let mut builder = Builder::from_config(redis_config);
    builder
        .with_performance_config(|p| {
            p.default_command_timeout = timeout;
        })
        .with_connection_config(|c| {
            c.connection_timeout = timeout.max(Duration::from_millis(200));
            c.internal_command_timeout = timeout.max(Duration::from_secs(1));
            c.max_command_attempts = attempts;
            c.max_redirections = redirections;
            c.max_command_buffer_len = 50_000;
            c.unresponsive.max_timeout = Some(timeout.max(Duration::from_secs(1)));
            c.unresponsive.interval = Duration::from_millis(250);
            c.tcp.nodelay = Some(true);
        })
        .set_policy(ReconnectPolicy::new_constant(0, 100));
    builder
}

impl Inventory {
    /// Connect to Redis and load every script; fails if either fails.
    pub async fn connect(
        config: &Config,
        metrics: Arc<Metrics>,
    ) -> Result<Inventory, InventoryError> {
        let pool = connect(config).await?;
        let scripts = Scripts::new();
        scripts.load_all(&pool).await?;
        let nodes = nodes::Nodes::new(pool.clone(), config)?;
        for c in preflight::require(&nodes, config.allow_eviction_policy, false).await? {
            tracing::info!(master = %c.node, version = ?c.version, "redis checked");
        }
        if config.allow_eviction_policy {
            tracing::warn!("allow_eviction_policy: running on a Redis that may evict keys; claims, records and caps can vanish under memory pressure");
        }
        let hold_ms = config.hold_seconds * 1000;
        let max_hold_ms = config.max_hold_seconds * 1000;
        let idem_ttl_ms = config.idempotency_ttl_seconds * 1000;
        let record_ttl_ms = max_hold_ms + idem_ttl_ms;
        let reserver = batch::Lanes::new(
            batch::ReserveBatch {
                nodes: nodes.clone(),
                metrics: metrics.clone(),
                script: scripts.reserve.clone(),
                ttls: [hold_ms, idem_ttl_ms, record_ttl_ms].map(|t| t.to_string()),
            },
            config.reserve_batch_max,
        );
        let claims = batch::Lanes::new(
            batch::ClaimBatch {
                nodes: nodes.clone(),
                metrics: metrics.clone(),
                script: scripts.claim.clone(),
                ttl_ms: idem_ttl_ms.to_string(),
            },
            config.reserve_batch_max,
        );
        let acks = batch::Lanes::new(
            batch::AckBatch {
                nodes: nodes.clone(),
                metrics: metrics.clone(),
                script: scripts.touch.clone(),
                replicas: config.replica_ack,
                timeout_ms: config.replica_ack_timeout_ms,
                record_ttl_ms: record_ttl_ms.to_string(),
            },
            batch::ack_batch_max(config.reserve_batch_max),
        );
        Ok(Inventory {
            pool,
            nodes,
            scripts,
            reserver,
            claims,
            acks,
            metrics,
            settings: Settings {
                replica_ack: config.replica_ack,
                extend_ms: config.extend_seconds * 1000,
                max_hold_ms,
                idem_ttl_ms,
                // the record outlives its longest possible hold by the key retention
                sweep_batch: config.sweep_batch,
                waitlist_capacity: config.waitlist_capacity,
                sold_out_cache: Duration::from_millis(config.sold_out_cache_ms),
                ticket_ttl_ms: config.waitlist_ticket_seconds * 1000,
                lease_ms: config.waitlist_lease_ms,
            },
            meta: RwLock::new(FastMap::default()),
            returned: tokio::sync::Notify::new(),
            sold_out: std::sync::Mutex::new(FastMap::default()),
            returns_seen: std::sync::atomic::AtomicU64::new(0),
            allow_eviction: config.allow_eviction_policy,
            preflight: tokio::sync::Mutex::new(Some((Instant::now(), Ok(())))),
        })
    }

    /// Every master's `host:port` and Redis version (`INFO server`).
    pub async fn server_versions(
        &self,
    ) -> Result<Vec<(String, preflight::Version)>, InventoryError> {
        let mut out = Vec::new();
        for c in preflight::check(&self.nodes, true).await? {
            let c = c?;
            if let Some(v) = c.version {
                out.push((c.node, v));
            }
        }
        Ok(out)
    }

    /// The preflight checks again (version, eviction policy on every
    /// master), at most every `preflight::RECHECK`: a policy changed at
    /// runtime fails `/readyz` until it is put back.
    async fn recheck_server(&self) -> Result<(), InventoryError> {
        let mut last = self.preflight.lock().await;
        if let Some((at, verdict)) = last.as_ref() {
            if at.elapsed() < preflight::RECHECK {
                return verdict.clone().map_err(InventoryError::Unsuitable);
            }
        }
        let verdict = match preflight::require(&self.nodes, self.allow_eviction, true).await {
            Ok(_) => Ok(()),
            Err(InventoryError::Unsuitable(m)) => Err(m),
            // no master known: not cached, reported as it is
            Err(e) => return Err(e),
        };
        *last = Some((Instant::now(), verdict.clone()));
        verdict.map_err(InventoryError::Unsuitable)
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The routing of scripts (per master on a cluster).
    pub fn nodes(&self) -> &nodes::Nodes {
        &self.nodes
    }

    pub fn scripts(&self) -> &Scripts {
        &self.scripts
    }

    pub async fn close(&self) {
        self.nodes.close().await;
        let _ = self.pool.quit().await;
    }

    async fn run(
        &self,
        script: &scripts::Script,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Value, InventoryError> {
        scripts::run(&self.nodes, &self.metrics, script, keys, args).await
    }

    /// Count and classify a Redis error; one that did not reach its master
    /// (or met a slot move) has the cluster's slot map re-read (nodes.rs).
    fn err(&self, e: fred::error::Error) -> InventoryError {
        let e = scripts::classify(&self.metrics, e);
        if e.is_unavailable() {
            self.nodes.refresh_soon();
        }
        e
    }

    /// Ready to serve: Redis answers, every master passes the preflight
    /// checks (`preflight.rs`) and every script is in its cache.
    pub async fn ready(&self) -> Result<(), InventoryError> {
        self.recheck_server().await?;
        let shas: Vec<String> = self.scripts.all().iter().map(|s| s.sha.clone()).collect();
        let loaded: Vec<bool> = self
            .pool
            .next()
            .script_exists(shas)
            .await
            .map_err(|e| self.err(e))?;
        if loaded.iter().all(|l| *l) {
            return Ok(());
        }
        // After a restart the cache is empty: load now rather than report unready.
        self.scripts.load_all(&self.pool).await
    }

    /// The SKU's layout (cached for [`META_TTL`]), or None when not preloaded.
    pub async fn meta(&self, sku: &Sku) -> Result<Option<Arc<SkuMeta>>, InventoryError> {
        let mut stale = None;
        if let Ok(cache) = self.meta.read() {
            if let Some((m, at)) = cache.get(sku) {
                if at.elapsed() < META_TTL {
                    return Ok(Some(m.clone()));
                }
                stale = Some(m.clone());
            }
        }
        // routed like the scripts: a dead master elsewhere does not block it
        let key = keys::meta(sku);
        let read = self
            .nodes
            .client_for_key(&key)
            .hgetall::<HashMap<String, String>, _>(key)
            .await;
        let fields = match read {
            Ok(fields) => fields,
            Err(e) => {
                let e = self.err(e);
                // The layout only ever grows by an operator's preload, which
                // the cache already lets a walk miss for META_TTL: while the
                // meta's master is out of reach (down, or its slot moving),
                // keep the layout last read rather than failing every
                // request of the SKU.
                return match (stale, &e) {
                    (Some(m), e) if e.is_unavailable() => {
                        tracing::debug!(error = %e, sku = %sku, "meta unreadable: using the last layout read");
                        Ok(Some(m))
                    }
                    _ => Err(e),
                };
            }
        };
        // A meta an earlier version wrote (layout 1) is converted first: from
        // then on older instances refuse the SKU (keys.rs, `LAYOUT`).
        let fields = if fields.contains_key("shards") {
            self.upgrade_meta(sku).await?
        } else {
            fields
        };
        match fields.get("layout").map(String::as_str) {
            Some(keys::LAYOUT) => {}
            None if !fields.contains_key("shard_count") => return Ok(None),
            other => {
                return Err(InventoryError::Unsuitable(format!(
                    "{sku} was loaded in data layout {other:?}, which this version of flashgate \
                     (layout {}) cannot read: upgrade this instance",
                    keys::LAYOUT
                )))
            }
        }
        let Some(shards) = fields.get("shard_count") else {
            return Ok(None);
        };
        let shards: u16 = shards
            .parse()
            .ok()
            .filter(|k| (1..=MAX_SHARDS).contains(k))
            .ok_or_else(|| {
                InventoryError::Protocol(format!("bad shard count {shards:?} for {sku}"))
            })?;
        let mut tags: Vec<String> = fields
            .get("tags")
            .map(|t| t.split(',').map(str::to_owned).collect())
            .unwrap_or_default();
        for s in tags.len()..usize::from(shards) {
            // s < shards <= MAX_SHARDS
            tags.push(keys::default_tag(sku, s as u16));
        }
        let max_per_user = fields
            .get("max_per_user")
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        let m = Arc::new(SkuMeta {
            sku: sku.clone(),
            shards,
            tags,
            max_per_user,
        });
        if let Ok(mut cache) = self.meta.write() {
            cache.insert(sku.clone(), (m.clone(), Instant::now()));
        }
        Ok(Some(m))
    }

    /// Convert `sku`'s meta from layout 1 (`lua/meta_upgrade.lua`); its
    /// fields afterwards.
    async fn upgrade_meta(&self, sku: &Sku) -> Result<HashMap<String, String>, InventoryError> {
        let reply = self
            .run(
                &self.scripts.meta_upgrade,
                vec![keys::meta(sku)],
                vec![keys::LAYOUT.to_owned()],
            )
            .await?;
        let flat = array(reply)?;
        let mut fields = HashMap::with_capacity(flat.len() / 2);
        for pair in flat.chunks(2) {
            if let [k, v] = pair {
                fields.insert(text(k)?, text(v)?);
            }
        }
        tracing::info!(sku = %sku, "SKU meta converted to data layout {}: older instances now refuse it", keys::LAYOUT);
        Ok(fields)
    }

    /// The SKU's layout as Redis has it now, past the cache.
    async fn meta_past_cache(&self, sku: &Sku) -> Result<Arc<SkuMeta>, InventoryError> {
        if let Ok(mut cache) = self.meta.write() {
            cache.remove(sku);
        }
        self.meta_of(sku).await
    }

    /// The SKU's layout, or `unknown_sku`.
    async fn meta_of(&self, sku: &Sku) -> Result<Arc<SkuMeta>, InventoryError> {
        match self.meta(sku).await? {
            Some(m) => Ok(m),
            None => Err(ApiError::UnknownSku(sku.to_string()).into()),
        }
    }

    /// Every SKU that was preloaded.
    pub async fn skus(&self) -> Result<Vec<Sku>, InventoryError> {
        let names: Vec<String> = self
            .nodes
            .client_for_key(keys::SKUS)
            .smembers(keys::SKUS)
            .await
            .map_err(|e| self.err(e))?;
        let mut skus: Vec<Sku> = names.iter().filter_map(|n| Sku::parse(n).ok()).collect();
        skus.sort();
        Ok(skus)
    }

    // ------------------------------------------------------------------ reserve

    pub async fn reserve(&self, req: &ReserveRequest) -> Result<ReserveOutcome, InventoryError> {
        // The sold-out fast path: refuse from memory, no Redis command. The
        // keys that won a unit are known, so their retries still walk (and
        // are replayed). Only a preloaded SKU is ever marked (a walk found
        // its shards empty), and none is ever removed, so the mark comes
        // before the layout. The walk's future is large (the batches, the
        // claim, the shards) and a sold-out answer need not build it: it
        // lives on the heap, made only when there is something to walk
        // (its copy was ≈ 4 % of a sold-out answer's instructions).
        let waitlist_full = match self.fast_path(&req.sku, &req.key) {
            FastPath::SoldOut { waitlist_full } => Some(waitlist_full),
            FastPath::Probe => match self.probe(&req.sku).await {
                Ok(still) => still,
                Err(e) => {
                    // the request walks; the mark is re-made by a walk
                    tracing::debug!(error = %e, sku = %req.sku, "sold-out probe failed");
                    None
                }
            },
            FastPath::Walk => None,
        };
        if let Some(full) = waitlist_full {
            if !req.waitlist {
                return Ok(ReserveOutcome::SoldOut);
            }
            // a key that joined already walks to its ticket (a replay)
            if full && !self.joined_waitlist(&req.sku, &req.key).await? {
                return Err(ApiError::WaitlistFull.into());
            }
        }
        Box::pin(self.reserve_walk(req)).await
    }

    /// [`Inventory::reserve`] past the sold-out fast path.
    async fn reserve_walk(&self, req: &ReserveRequest) -> Result<ReserveOutcome, InventoryError> {
        let meta = self.meta_of(&req.sku).await?;
        let fp = req.fingerprint();

        // The key's first request fixes its body, across SKUs too: claim.lua
        // (SET NX GET, batched per bucket) answers the earlier body if any.
        // The first request also fixes the shards the key's walks leave out:
        // those whose master is known to be down right now (see the module
        // docs: sound because no request with this key ever reaches them).
        let mine = [req.sku.as_str(), "\n", &fp].concat();
        // On one Redis server no master can be down and a script may touch
        // any slot: the claim rides in the walk's first reserve.lua call
        // (one round trip instead of two; bench/README.md). Not with a
        // purchase cap, which is counted between the claim and the walk.
        // The claim also fixes the shard count the key walks for good (see
        // `walk`): the SKU's count now, as this instance knows it.
        let (shards, left_out, in_walk) = if !self.nodes.per_master() && meta.max_per_user == 0 {
            let record = keys::idem_record(&req.key);
            let body = claim_body(&mine, meta.shards, &[]);
            (meta.shards, Vec::new(), Some(batch::Claim { record, body }))
        } else {
            let (bucket, record) = keys::idem_global(&req.key);
            // (one Redis: no master can be known down, so no slot is hashed)
            let down: Vec<u16> = if self.nodes.per_master() {
                (0..meta.shards)
                    .filter(|&s| match meta.tags.get(usize::from(s)) {
                        Some(t) => self.nodes.known_down(placement::slot_of(t)),
                        None => false,
                    })
                    .collect()
            } else {
                Vec::new()
            };
            let body = claim_body(&mine, meta.shards, &down);
            let earlier = self
                .claims
                .submit(&bucket, batch::Claim { record, body })
                .await?;
            let (shards, left_out) = match earlier {
                Value::Null => (meta.shards, down),
                v => match parse_claim(&text(&v)?, &mine) {
                    Some(c) => (c.shards.unwrap_or(meta.shards), c.left_out),
                    None => return Err(ApiError::IdempotencyKeyReused.into()),
                },
            };
            (shards, left_out, None)
        };

        // The purchase cap: counted before the walk, given back when the walk
        // definitely failed. An unknown outcome (timeout) keeps the count: too
        // tight rather than too loose.
        let mut counted_now = false;
        if meta.max_per_user > 0 {
            if req.qty.get() > meta.max_per_user {
                return Err(ApiError::PurchaseLimit.into());
            }
            match self.cap_take(&meta, req).await? {
                0 => return Err(ApiError::PurchaseLimit.into()),
                1 => counted_now = true,
                _ => {}
            }
        }
        let in_walk = in_walk.map(|c| (mine.as_str(), c));
        let mut result = self
            .walk(req, &meta, &fp, true, shards, &left_out, in_walk)
            .await;
        if matches!(result, Ok(ReserveOutcome::Held(_))) {
            // a probe (or anyone) found stock: the SKU is open again
            self.clear_sold_out(&req.sku);
        }
        // The cap's count for this key is given back whenever the key
        // definitely holds no live unit, whoever counted it: this request
        // (`counted_now`) or an earlier attempt whose outcome was unknown
        // (cap_take answered "already counted"). A sold-out walk is definite:
        // every shard of the key's walk holds its `moved` tombstone, so no
        // request with the key can ever hold a unit (until the key expires).
        let capped = meta.max_per_user > 0;
        if req.waitlist && matches!(result, Ok(ReserveOutcome::SoldOut)) {
            if capped {
                // the cap is counted again when the ticket is promoted
                self.cap_give(&meta, req.user.as_str(), req.key.as_str())
                    .await?;
            }
            result = self.join_waitlist(&meta, req, &fp).await;
        } else if capped {
            let give = match &result {
                Ok(ReserveOutcome::SoldOut) => true,
                // (a mismatch: the count under this key is the other request's)
                Err(InventoryError::Api(_)) => counted_now,
                // a replay of a hold that ended unsold: the cap_take above
                // counted it again (or an earlier give-back failed)
                Ok(ReserveOutcome::Replayed(r)) => self.ended_unsold(r).await,
                _ => false,
            };
            if give {
                if let Err(e) = self
                    .cap_give(&meta, req.user.as_str(), req.key.as_str())
                    .await
                {
                    tracing::warn!(error = %e, sku = %req.sku, "could not give back a purchase-cap count; the buyer stays capped until reconcile");
                }
            }
        }
        self.replicated(result, &meta).await
    }

    /// Did the reservation a replay answered end without a sale (released,
    /// expired, or its record gone)? Unknown (Redis unreachable) counts as
    /// no: the cap stays counted, too tight rather than too loose.
    async fn ended_unsold(&self, r: &Reservation) -> bool {
        let Ok(rid) = ReservationId::parse(&r.reservation_id) else {
            return false;
        };
        // the replay answered the caller's own key: its reservation is the
        // caller's, read here without an owner check
        match self.get(&rid, &Tenant::Operator).await {
            Ok(now) => now.status == "released" || now.status == "expired",
            Err(InventoryError::Api(e)) => matches!(*e, ApiError::ReservationNotFound),
            Err(_) => false,
        }
    }

    /// Answer "sold out" from memory? When the mark runs out, exactly one
    /// request re-checks the shards (single flight) while the others keep
    /// the answer for at most one more period; so a crowd costs one walk per
    /// period, and returned units are seen within two periods at the most.
    fn fast_path(&self, sku: &Sku, key: &ScopedKey) -> FastPath {
        let Ok(mut marks) = self.sold_out.lock() else {
            return FastPath::Walk;
        };
        let Some(mark) = marks.get_mut(sku) else {
            return FastPath::Walk;
        };
        if mark.winners.contains(key.as_str()) {
            return FastPath::Walk; // a retry of a request that got a unit
        }
        let now = Instant::now();
        let answer = FastPath::SoldOut {
            waitlist_full: mark.waitlist_full,
        };
        if now < mark.until {
            return answer;
        }
        if !mark.probing {
            mark.probing = true;
            return FastPath::Probe;
        }
        if now < mark.until + self.settings.sold_out_cache {
            answer
        } else {
            FastPath::Walk
        }
    }

    /// The sold-out mark's re-check, read-only: is every shard still empty
    /// for new buyers (no stock, or gated for the waitlist)? Then the mark is
    /// made again, with the winners read anew and the waitlist counted, and
    /// `Some(waitlist full)` is the answer; else the mark goes and the
    /// request walks (`None`). Writing nothing is what lets the re-check
    /// refuse: a walk would leave its key's claim and a tombstone on every
    /// shard, for 24 h, for a refusal (see the module docs, "Refusals").
    async fn probe(&self, sku: &Sku) -> Result<Option<bool>, InventoryError> {
        let seen = self.returns_seen.load(std::sync::atomic::Ordering::SeqCst);
        let meta = self.meta_of(sku).await?;
        // every shard at once (one round trip, not K: while it runs the
        // crowd keeps the answer for one more period only); per shard, stock
        // and gate in one MGET (one slot) and the key set
        let mut reads = tokio::task::JoinSet::new();
        for s in 0..meta.shards {
            let sk = meta.keys(s);
            let client = self.nodes.client_for_key(&sk.stock());
            reads.spawn(async move {
                tokio::try_join!(
                    client.mget::<Vec<Option<String>>, _>(vec![sk.stock(), sk.wlopen()]),
                    client.smembers::<Vec<String>, _>(sk.reserved_keys()),
                )
            });
        }
        let waiting = self.waitlist_len(sku).await?;
        let mut shards = Vec::with_capacity(usize::from(meta.shards));
        while let Some(read) = reads.join_next().await {
            let read = read.map_err(|e| InventoryError::Protocol(format!("probe task: {e}")))?;
            shards.push(read.map_err(|e| self.err(e))?);
        }
        let mut winners = FastSet::default();
        let mut all_gated = true;
        for (counters, keys) in shards {
            let stock = counters
                .first()
                .and_then(|v| v.as_deref())
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(0);
            let gated = counters.get(1).is_some_and(Option::is_some);
            if stock > 0 && !gated {
                self.clear_sold_out(sku);
                return Ok(None);
            }
            winners.extend(keys);
            all_gated &= gated;
        }
        let waitlist_full = u64::try_from(waiting).unwrap_or(0) >= self.settings.waitlist_capacity;
        if let Ok(mut marks) = self.sold_out.lock() {
            if seen != self.returns_seen.load(std::sync::atomic::Ordering::SeqCst) {
                // units came back meanwhile: walk
                return Ok(None);
            }
            marks.insert(
                sku.clone(),
                SoldOutMark {
                    until: Instant::now() + self.settings.sold_out_cache,
                    probing: false,
                    winners,
                    waitlist_full,
                    gated: all_gated,
                },
            );
        }
        Ok(Some(waitlist_full))
    }

    /// Did `key` join the SKU's waitlist? (Its retry is answered its ticket,
    /// never `waitlist_full`.) One EXISTS, no write.
    async fn joined_waitlist(&self, sku: &Sku, key: &ScopedKey) -> Result<bool, InventoryError> {
        let idem = keys::WaitKeys::new(sku).idem(key);
        let n: i64 = self
            .nodes
            .client_for_key(&idem)
            .exists(idem)
            .await
            .map_err(|e| self.err(e))?;
        Ok(n > 0)
    }

    /// What a join found about the SKU's waitlist: full, or not. Kept with
    /// the SKU's sold-out mark, if there is one.
    pub(super) fn waitlist_seen_full(&self, sku: &Sku, full: bool) {
        if let Ok(mut marks) = self.sold_out.lock() {
            if let Some(mark) = marks.get_mut(sku) {
                mark.waitlist_full = full;
            }
        }
    }

    /// A walk that started when `returns_seen` was `seen` found every shard
    /// empty: remember it, with the keys that won the SKU's units, unless a
    /// fresh mark exists (the crowd that found it empty at once loads the
    /// keys once) or units came back through this instance meanwhile.
    async fn mark_sold_out(&self, meta: &SkuMeta, seen: u64) -> Result<(), InventoryError> {
        if self.settings.sold_out_cache.is_zero() {
            return Ok(());
        }
        let fresh = |marks: &FastMap<Sku, SoldOutMark>| {
            marks
                .get(&meta.sku)
                .is_some_and(|m| !m.probing && Instant::now() < m.until)
        };
        if self.sold_out.lock().map(|m| fresh(&m)).unwrap_or(true) {
            return Ok(());
        }
        let waiting = self.waitlist_len(&meta.sku).await?;
        let mut winners = FastSet::default();
        let mut gated = true;
        for s in 0..meta.shards {
            let sk = meta.keys(s);
            let client = self.nodes.client_for_key(&sk.stock());
            let (keys, gate) = tokio::try_join!(
                client.smembers::<Vec<String>, _>(sk.reserved_keys()),
                client.exists::<i64, _>(sk.wlopen()),
            )
            .map_err(|e| self.err(e))?;
            winners.extend(keys);
            gated &= gate > 0;
        }
        if let Ok(mut marks) = self.sold_out.lock() {
            if seen != self.returns_seen.load(std::sync::atomic::Ordering::SeqCst) {
                return Ok(());
            }
            marks.insert(
                meta.sku.clone(),
                SoldOutMark {
                    until: Instant::now() + self.settings.sold_out_cache,
                    probing: false,
                    winners,
                    waitlist_full: u64::try_from(waiting).unwrap_or(0)
                        >= self.settings.waitlist_capacity,
                    gated,
                },
            );
        }
        Ok(())
    }

    fn clear_sold_out(&self, sku: &Sku) {
        if let Ok(mut m) = self.sold_out.lock() {
            self.returns_seen
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            m.remove(sku);
        }
    }

    /// Units came back to `sku` through this instance: stop answering sold
    /// out — unless every shard is gated, when they belong to the waitlist
    /// (a crowd of refusals would otherwise walk, and leave tombstones, after
    /// every return). The promoter is woken either way.
    fn units_returned(&self, sku: &Sku) {
        let gated = self
            .sold_out
            .lock()
            .map(|m| m.get(sku).is_some_and(|m| m.gated))
            .unwrap_or(false);
        if !gated {
            self.clear_sold_out(sku);
        }
        self.returned.notify_one();
    }

    /// Walk the shards for `req` (see the module docs).
    /// `shards`: the key's shard count, fixed by its claim — the SKU's count
    /// at the key's first request. The key walks shards `0..shards` only,
    /// starting at `hash % shards`, whatever the SKU's count is now: a
    /// forced preload that adds shards changes neither the start nor the
    /// order of a key that was already seen, so its sticky verdicts stay
    /// first in its walk (a holder is replayed, a sold-out key stays sold
    /// out); the new shards serve keys first seen after it. An instance
    /// still caching the older, smaller count (`META_TTL`) reads the
    /// layout again when a key's claim names more shards than it knows.
    /// `left_out`: shards this key's walks never visit (its claim fixed
    /// them); a walk that meets no unit on the others cannot say "sold out".
    /// `claim`: the request body (`<sku>\n<fingerprint>`) and the key's
    /// claim, to be made in the first step's call (one Redis server only).
    #[allow(clippy::too_many_arguments)]
    async fn walk(
        &self,
        req: &ReserveRequest,
        meta: &SkuMeta,
        fp: &str,
        gate: bool,
        shards: u16,
        left_out: &[u16],
        claim: Option<(&str, batch::Claim)>,
    ) -> Result<ReserveOutcome, InventoryError> {
        let (mine, mut claim) = match claim {
            Some((mine, c)) => (mine, Some(c)),
            None => ("", None),
        };
        let fresh;
        let meta = if shards > meta.shards {
            fresh = self.meta_past_cache(&req.sku).await?;
            if fresh.shards < shards {
                return Err(InventoryError::Protocol(format!(
                    "{} has {} shards, a claim names {shards}",
                    req.sku, fresh.shards
                )));
            }
            &*fresh
        } else {
            meta
        };
        let k = shards;
        let returns_seen = self.returns_seen.load(std::sync::atomic::Ordering::SeqCst);
        let token = uuid::Uuid::new_v4();
        let start = (req.key.stable_hash() % u64::from(k)) as u16;
        let order: Vec<u16> = (0..k)
            .map(|i| (start + i) % k)
            .filter(|s| !left_out.contains(s))
            .collect();
        if order.is_empty() {
            return Err(InventoryError::Unavailable(
                "every shard of the SKU was unreachable at this key's first request".into(),
            ));
        }
        // shards seen during this walk with some (but too few) units: donors
        let mut donors: Vec<(u16, i64)> = Vec::new();
        let mut all_unloaded = true;
        for (i, &s) in order.iter().enumerate() {
            let last = i + 1 == order.len();
            let mark = !last || donors.is_empty();
            let mut step = self
                .reserve_on(req, meta, fp, s, &token, mark, gate, claim.take())
                .await?;
            if last && !mark {
                if let Step::Dry(have) = step {
                    let need = i64::from(req.qty.get()) - have;
                    self.pull(meta, s, need, &donors).await?;
                    step = self
                        .reserve_on(req, meta, fp, s, &token, true, gate, None)
                        .await?;
                }
            }
            match step {
                Step::Held(r) => return Ok(ReserveOutcome::Held(r)),
                Step::Replay(r) => return Ok(ReserveOutcome::Replayed(r)),
                Step::Mismatch => return Err(ApiError::IdempotencyKeyReused.into()),
                // the first step's claim met an earlier body: nothing was
                // done; the same request with shards left out (written on a
                // cluster) walks again without them, another one is refused
                Step::Claimed(earlier) => {
                    return match parse_claim(&earlier, mine) {
                        None => Err(ApiError::IdempotencyKeyReused.into()),
                        Some(c) => {
                            let k = c.shards.unwrap_or(meta.shards);
                            Box::pin(self.walk(req, meta, fp, gate, k, &c.left_out, None)).await
                        }
                    };
                }
                Step::Moved(avail) | Step::Dry(avail) => {
                    all_unloaded = false;
                    if avail > 0 {
                        donors.push((s, avail));
                    }
                }
                Step::Unloaded => {}
            }
        }
        if all_unloaded && left_out.is_empty() {
            return Err(ApiError::UnknownSku(req.sku.to_string()).into());
        }
        if !left_out.is_empty() {
            // the left-out shards may hold units: no "sold out" (nor a mark)
            return Err(InventoryError::Unavailable(format!(
                "shards {left_out:?} were unreachable at this key's first request and the others have no unit for it"
            )));
        }
        if donors.is_empty() && k == meta.shards {
            // every shard reported no unit at all (not just too few, and not
            // just a sticky verdict of this key): the SKU is empty right now
            // (a key walking a count from before shards were added saw only
            // some of them: no mark)
            if let Err(e) = self.mark_sold_out(meta, returns_seen).await {
                // the answer stands; the next request simply walks again
                tracing::debug!(error = %e, sku = %req.sku, "could not load the sold-out mark");
            }
        }
        Ok(ReserveOutcome::SoldOut)
    }

    async fn cap_take(&self, meta: &SkuMeta, req: &ReserveRequest) -> Result<i64, InventoryError> {
        int(&self
            .run(
                &self.scripts.cap_take,
                vec![keys::cap(&meta.sku, req.user.as_str())],
                vec![
                    req.key.as_str().to_string(),
                    req.qty.get().to_string(),
                    meta.max_per_user.to_string(),
                    self.settings.idem_ttl_ms.to_string(),
                ],
            )
            .await?)
    }

    /// Uncount the reservation made with `key` from `user`'s cap (idempotent).
    pub async fn cap_give(
        &self,
        meta: &SkuMeta,
        user: &str,
        key: &str,
    ) -> Result<i64, InventoryError> {
        int(&self
            .run(
                &self.scripts.cap_give,
                vec![keys::cap(&meta.sku, user)],
                vec![key.to_string()],
            )
            .await?)
    }

    // one shard's step of a walk: the walk's request, layout, fingerprint and
    // token, plus the shard and the two switches of reserve.lua
    #[allow(clippy::too_many_arguments)]
    async fn reserve_on(
        &self,
        req: &ReserveRequest,
        meta: &SkuMeta,
        fp: &str,
        shard: u16,
        token: &uuid::Uuid,
        mark_moved: bool,
        gate: bool,
        claim: Option<batch::Claim>,
    ) -> Result<Step, InventoryError> {
        let rid_s = ReservationId::text_of(&req.sku, shard, token);
        let tag = match meta.tags.get(usize::from(shard)) {
            Some(t) => std::borrow::Cow::Borrowed(t.as_str()),
            None => std::borrow::Cow::Owned(keys::default_tag(&req.sku, shard)),
        };
        let call = batch::ReserveCall {
            key: req.key.as_str().to_owned(),
            rid: rid_s.clone(),
            qty: itoa::Buffer::new().format(req.qty.get()).to_owned(),
            user: req.user.as_str().to_owned(),
            fingerprint: fp.to_owned(),
            mark_moved,
            gate,
            claim,
        };
        let view = |id: String, exp: i64| Reservation {
            reservation_id: id,
            sku: req.sku.as_str().to_owned(),
            qty: req.qty.get(),
            user_id: req.user.as_str().to_string(),
            status: "held",
            expires_at: ms_to_rfc3339(exp),
        };
        Ok(match self.reserver.submit(&tag, call).await? {
            ReserveReply::Held { expires_at_ms } => Step::Held(view(rid_s, expires_at_ms)),
            ReserveReply::Replay {
                rid, expires_at_ms, ..
            } => {
                // our own attempt, resent by the client library after a lost reply
                if rid == rid_s {
                    Step::Held(view(rid, expires_at_ms))
                } else {
                    Step::Replay(view(rid, expires_at_ms))
                }
            }
            ReserveReply::Moved(avail) => Step::Moved(avail),
            ReserveReply::Mismatch => Step::Mismatch,
            ReserveReply::Claimed(earlier) => Step::Claimed(earlier),
            ReserveReply::Dry(avail) => Step::Dry(avail),
            ReserveReply::Unloaded => Step::Unloaded,
        })
    }

    /// Move up to `need` units from `donors` into shard `to`.
    async fn pull(
        &self,
        meta: &SkuMeta,
        to: u16,
        mut need: i64,
        donors: &[(u16, i64)],
    ) -> Result<(), InventoryError> {
        for &(from, _) in donors {
            if need <= 0 {
                break;
            }
            need -= self.transfer(meta, from, to, need).await?;
        }
        Ok(())
    }

    /// Move up to `want` units from shard `from` to shard `to`; returns the
    /// units moved. Crash-safe: see `lua/transfer_out.lua`.
    async fn transfer(
        &self,
        meta: &SkuMeta,
        from: u16,
        to: u16,
        want: i64,
    ) -> Result<i64, InventoryError> {
        let xid = uuid::Uuid::new_v4().simple().to_string();
        let donor = meta.keys(from);
        let taken = int(&self
            .run(
                &self.scripts.transfer_out,
                vec![
                    donor.stock(),
                    donor.books(),
                    donor.xfers(),
                    donor.events(),
                    donor.xdone(),
                ],
                vec![xid.clone(), to.to_string(), want.to_string()],
            )
            .await?)?;
        if taken > 0 {
            self.transfer_in(meta, from, to, &xid, taken).await?;
        }
        Ok(taken)
    }

    async fn transfer_in(
        &self,
        meta: &SkuMeta,
        from: u16,
        to: u16,
        xid: &str,
        units: i64,
    ) -> Result<(), InventoryError> {
        let rec = meta.keys(to);
        let keep = self.settings.idem_ttl_ms.to_string();
        self.run(
            &self.scripts.transfer_in,
            vec![rec.stock(), rec.books(), rec.xin(), rec.events()],
            vec![
                xid.to_string(),
                units.to_string(),
                from.to_string(),
                keep.clone(),
            ],
        )
        .await?;
        let donor = meta.keys(from);
        self.run(
            &self.scripts.transfer_done,
            vec![donor.xfers(), donor.xdone()],
            vec![xid.to_string(), keep],
        )
        .await?;
        Ok(())
    }

    // -------------------------------------------------- confirm, release, extend

    // Ownership (docs/tenancy.md): confirm, release and extend check it in
    // their script, which reads the record anyway (no extra round trip);
    // `get` checks the record it read. Another storefront's reservation is
    // not found, exactly as one that does not exist.

    /// `viewer` confirms `rid` (404 unless it may see it).
    pub async fn confirm(
        &self,
        rid: &ReservationId,
        viewer: &Tenant,
    ) -> Result<Reservation, InventoryError> {
        self.end(&self.scripts.confirm, rid, viewer).await
    }

    /// `viewer` releases `rid` (404 unless it may see it).
    pub async fn release(
        &self,
        rid: &ReservationId,
        viewer: &Tenant,
    ) -> Result<Reservation, InventoryError> {
        self.end(&self.scripts.release, rid, viewer).await
    }

    async fn end(
        &self,
        script: &scripts::Script,
        rid: &ReservationId,
        viewer: &Tenant,
    ) -> Result<Reservation, InventoryError> {
        let meta = self.meta_for(rid).await?;
        let sk = meta.keys(rid.shard());
        let reply = self
            .run(
                script,
                vec![
                    sk.record(rid),
                    sk.stock(),
                    sk.books(),
                    sk.holds(),
                    sk.events(),
                    sk.reserved_keys(),
                ],
                vec![rid.to_string(), viewer.lua_scope().to_owned()],
            )
            .await?;
        let items = array(reply)?;
        let status = text(at(&items, 1).unwrap_or(&Value::Null))?;
        // Only units that came back now lift the sold-out mark: a release or
        // confirm of a hold that had already ended returns none (a client
        // looping them must not switch the shield off), nor does a sale.
        if items.len() >= 7 && int(at(&items, 6)?)? > 0 {
            self.units_returned(rid.sku());
        }
        if meta.max_per_user > 0 && items.len() >= 6 {
            // a hold that ended without a sale frees the buyer's cap (idempotent)
            if status == "released" || status == "expired" {
                let (user, key) = (text(at(&items, 3)?)?, text(at(&items, 5)?)?);
                self.cap_give(&meta, &user, &key).await?;
            }
        }
        hold_reply(rid, Value::Array(items))
    }

    /// `viewer` extends `rid` (404 unless it may see it).
    pub async fn extend(
        &self,
        rid: &ReservationId,
        viewer: &Tenant,
    ) -> Result<Reservation, InventoryError> {
        let sk = self.shard_keys_of(rid).await?;
        let reply = self
            .run(
                &self.scripts.extend,
                vec![sk.record(rid), sk.holds()],
                vec![
                    rid.to_string(),
                    self.settings.extend_ms.to_string(),
                    self.settings.max_hold_ms.to_string(),
                    viewer.lua_scope().to_owned(),
                ],
            )
            .await?;
        hold_reply(rid, reply)
    }

    /// The keys of the reservation's shard. An id naming a SKU or shard that
    /// does not exist is simply not found: ids are opaque to clients.
    async fn shard_keys_of(&self, rid: &ReservationId) -> Result<ShardKeys, InventoryError> {
        Ok(self.meta_for(rid).await?.keys(rid.shard()))
    }

    async fn meta_for(&self, rid: &ReservationId) -> Result<Arc<SkuMeta>, InventoryError> {
        match self.meta(rid.sku()).await? {
            Some(m) if rid.shard() < m.shards => Ok(m),
            _ => Err(ApiError::ReservationNotFound.into()),
        }
    }

    /// The reservation `rid` as `viewer` may see it (404 when it may not).
    pub async fn get(
        &self,
        rid: &ReservationId,
        viewer: &Tenant,
    ) -> Result<Reservation, InventoryError> {
        let key = self.shard_keys_of(rid).await?.record(rid);
        let reply = self
            .run(&self.scripts.records, vec![key.clone()], vec![])
            .await?;
        let Some(Some(record)) = scripts::decode_records(reply)?.into_iter().next() else {
            return Err(ApiError::ReservationNotFound.into());
        };
        // the owner never changes: reading it with the record is race-free
        if !viewer.sees(ScopedKey::owner_of(&record.idem)) {
            return Err(ApiError::ReservationNotFound.into());
        }
        let exp = record.exp;
        let mut status = status_name(&record.status)?;
        // Past its deadline a hold is expired, whether or not the sweeper has
        // returned its units yet: confirm would refuse it. The deadline is
        // judged on the Redis clock, as confirm judges it.
        if status == "held" && self.redis_now_ms(&key).await? >= exp {
            status = "expired";
        }
        Ok(Reservation {
            reservation_id: rid.to_string(),
            sku: rid.sku().to_string(),
            qty: u32::try_from(record.qty)
                .map_err(|_| InventoryError::Protocol("bad qty".into()))?,
            user_id: record.user,
            status,
            expires_at: ms_to_rfc3339(exp),
        })
    }

    // -------------------------------------------------------- status, preload

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

    /// Load `stock` units for `sku`, split evenly over `shards` shards.
    /// Refuses (AlreadyLoaded) when the SKU already has counters, unless
    /// `force`: then each shard's available units are set anew and holds and
    /// sales already made stay on the books.
    pub async fn preload(
        &self,
        sku: &Sku,
        stock: i64,
        shards: u16,
        force: bool,
    ) -> Result<PreloadOutcome, InventoryError> {
        self.preload_with(
            sku,
            PreloadSpec {
                stock,
                shards,
                force,
                max_per_user: None,
            },
        )
        .await
    }

    /// [`Inventory::preload`] with every option; `max_per_user: None` keeps
    /// the SKU's current cap (none for a new SKU).
    ///
    /// All or nothing, as the service sees it: the SKU exists once its meta
    /// names its shards, and that is written last, after every shard has its
    /// counters (and after the sweeper's list has the SKU). Before the first
    /// shard is written, the layout this preload is about to write is noted in
    /// the meta (`pending`), so a preload that fails half-way (a timeout, a
    /// lost connection, an ACL that refuses one shard's keys) can be repeated: "already loaded" is
    /// decided by the meta alone, the shards the failed attempt wrote are
    /// overwritten (they were never served: no meta named them), and shards
    /// it wrote that the new layout lacks are deleted.
    pub async fn preload_with(
        &self,
        sku: &Sku,
        spec: PreloadSpec,
    ) -> Result<PreloadOutcome, InventoryError> {
        spec.validate()?;
        let PreloadSpec {
            stock,
            shards,
            force,
            max_per_user,
        } = spec;
        // read past the cache: preload must see what is there now
        if let Ok(mut cache) = self.meta.write() {
            cache.remove(sku);
        }
        let old = self.meta(sku).await?;
        if let Some(old) = &old {
            if !force {
                return Ok(PreloadOutcome::AlreadyLoaded);
            }
            if old.shards > shards {
                // a dropped shard would strand its holds and the units they return
                return Err(ApiError::InvalidRequest(format!(
                    "{sku} has {} shards; a loaded SKU can gain shards but not lose them",
                    old.shards
                ))
                .into());
            }
        }
        let meta_key = keys::meta(sku);
        let client = self.nodes.client_for_key(&meta_key);
        let pending: Vec<String> = client
            .hget::<Option<String>, _, _>(&meta_key, "pending")
            .await
            .map_err(|e| self.err(e))?
            .map(|t| t.split(',').map(str::to_owned).collect())
            .unwrap_or_default();
        let loaded = old.as_ref().map(|m| m.shards).unwrap_or(0);
        let old_tags = old.as_ref().map(|m| m.tags.clone()).unwrap_or_default();
        // an earlier attempt's layout extends the loaded one (placement keeps
        // existing tags): keep its tags, so its shards are found again
        let base = if pending.len() > old_tags.len() && pending.starts_with(&old_tags) {
            pending.clone()
        } else {
            old_tags
        };
        let max_per_user = max_per_user
            .or(old.as_ref().map(|m| m.max_per_user))
            .unwrap_or(0);
        // new shards are placed on the cluster's least-loaded masters
        let tags = placement::tags_for(&self.pool, sku, &base, shards);
        // shards an earlier attempt wrote beyond this layout: never served
        let stray: Vec<String> = base
            .get(tags.len().max(usize::from(loaded))..)
            .unwrap_or_default()
            .to_vec();
        let mut noted = tags.clone();
        noted.extend(stray.iter().cloned());
        let _: () = client
            .hset(&meta_key, [("pending", noted.join(","))])
            .await
            .map_err(|e| self.err(e))?;
        let meta = SkuMeta {
            sku: sku.clone(),
            shards,
            tags,
            max_per_user,
        };
        let per_shard = split(stock, shards);
        for (s, units) in per_shard.iter().enumerate() {
            // s < shards <= MAX_SHARDS. A shard the meta does not name yet
            // (a new SKU, or one this preload adds) was never served: what
            // an earlier failed attempt left there is replaced. A loaded
            // shard is only reached with force (a loaded SKU without force
            // was refused above).
            let mode = if s >= usize::from(loaded) {
                ShardLoad::New
            } else {
                ShardLoad::Force
            };
            if !self
                .preload_shard(&meta.keys(s as u16), *units, mode)
                .await?
            {
                return Ok(PreloadOutcome::AlreadyLoaded);
            }
        }
        for tag in &stray {
            let sk = ShardKeys::new(tag);
            let _: i64 = self
                .nodes
                .client_for_key(&sk.stock())
                .del(vec![sk.stock(), sk.books(), sk.events()])
                .await
                .map_err(|e| self.err(e))?;
        }
        let _: () = self
            .pool
            .next()
            .sadd(keys::SKUS, sku.as_str())
            .await
            .map_err(|e| self.err(e))?;
        // last: from here on the SKU exists with this layout
        let now = now_ms().to_string();
        let _: () = client
            .hset(
                &meta_key,
                [
                    ("shard_count", shards.to_string()),
                    ("layout", keys::LAYOUT.to_owned()),
                    ("tags", meta.tags.join(",")),
                    ("max_per_user", max_per_user.to_string()),
                    ("loaded_at", now),
                ],
            )
            .await
            .map_err(|e| self.err(e))?;
        let _: i64 = client
            .hdel(&meta_key, "pending")
            .await
            .map_err(|e| self.err(e))?;
        if let Ok(mut cache) = self.meta.write() {
            cache.remove(sku);
        }
        // new units, maybe on new shards without a gate: open up at once
        self.clear_sold_out(sku);
        self.returned.notify_one();
        Ok(PreloadOutcome::Loaded { per_shard })
    }

    async fn preload_shard(
        &self,
        sk: &ShardKeys,
        units: i64,
        mode: ShardLoad,
    ) -> Result<bool, InventoryError> {
        let mode = match mode {
            ShardLoad::Force => "1",
            ShardLoad::New => "2",
        };
        let reply = array(
            self.run(
                &self.scripts.preload,
                vec![sk.stock(), sk.books(), sk.events()],
                vec![units.to_string(), mode.to_string()],
            )
            .await?,
        )?;
        Ok(text(at(&reply, 0)?)? == "ok")
    }

    // ------------------------------------------------------------------ expiry

    /// One sweeper step on one shard; returns (holds expired, lateness ms of the oldest).
    pub async fn expire_shard(
        &self,
        meta: &SkuMeta,
        shard: u16,
    ) -> Result<(i64, i64), InventoryError> {
        let sk = meta.keys(shard);
        let capback = sk.capback();
        let reply = array(
            self.run(
                &self.scripts.expire,
                vec![
                    sk.holds(),
                    sk.stock(),
                    sk.books(),
                    sk.events(),
                    sk.reserved_keys(),
                    capback.clone(),
                ],
                vec![
                    sk.record_prefix(),
                    self.settings.sweep_batch.to_string(),
                    if meta.max_per_user > 0 { "1" } else { "0" }.to_string(),
                ],
            )
            .await?,
        )?;
        if int(at(&reply, 0)?)? > 0 {
            self.units_returned(&meta.sku);
        }
        // the give-backs owed (durable in capback until done: a failure here
        // leaves the rest for the next step)
        for pair in reply.get(3..).unwrap_or_default().chunks(2) {
            if let [user, key] = pair {
                let (user, key) = (text(user)?, text(key)?);
                self.cap_give(meta, &user, &key).await?;
                let _: i64 = self
                    .nodes
                    .client_for_key(&capback)
                    .hdel(&capback, [user, key].join("\n"))
                    .await
                    .map_err(|e| self.err(e))?;
            }
        }
        Ok((int(at(&reply, 0)?)?, int(at(&reply, 1)?)?))
    }

    /// The clock (ms) of the Redis master serving `key`: the clock every
    /// script decides by (lib.lua's now_ms), not this machine's.
    pub async fn redis_now_ms(&self, key: &str) -> Result<i64, InventoryError> {
        let slot = fred::util::redis_keyslot(key.as_bytes());
        let v: Value = self
            .nodes
            .client_for_key(key)
            .custom(
                fred::types::CustomCommand::new_static(
                    "TIME",
                    fred::types::ClusterHash::Custom(slot),
                    false,
                ),
                Vec::<String>::new(),
            )
            .await
            .map_err(|e| self.err(e))?;
        let parts = array(v)?;
        Ok(int(at(&parts, 0)?)? * 1000 + int(at(&parts, 1)?)? / 1000)
    }

    pub fn sweep_batch(&self) -> i64 {
        i64::from(self.settings.sweep_batch)
    }

    /// Complete transfers that left shard `shard` more than `older_than_ms`
    /// ago and were never applied (their mover died between the halves).
    /// Their age is read on the donor's Redis clock, the clock that stamped
    /// them: a local clock running ahead would complete a transfer while its
    /// mover (or a resend of its `transfer_out`) is still under way. One
    /// older than the applied-id retention (`idempotency_ttl_seconds`, less
    /// a minute for clocks of different masters) is left pending, with an
    /// error in the log: whether it was applied can no longer be told, and
    /// a unit shown in transit beats one counted twice.
    pub async fn recover_transfers(
        &self,
        meta: &SkuMeta,
        shard: u16,
        older_than_ms: i64,
    ) -> Result<i64, InventoryError> {
        let xfers = meta.keys(shard).xfers();
        let pending: HashMap<String, String> = self
            .nodes
            .client_for_key(&xfers)
            .hgetall(&xfers)
            .await
            .map_err(|e| self.err(e))?;
        if pending.is_empty() {
            return Ok(0);
        }
        let now = self.redis_now_ms(&xfers).await?;
        let too_old = self.settings.idem_ttl_ms as i64 - 60_000;
        let mut recovered = 0;
        for (xid, v) in pending {
            let mut parts = v.split('|');
            let (Some(to), Some(n), Some(ts)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            let (Ok(to), Ok(n), Ok(ts)) = (to.parse::<u16>(), n.parse::<i64>(), ts.parse::<i64>())
            else {
                continue;
            };
            if now - ts < older_than_ms {
                continue;
            }
            if now - ts >= too_old {
                tracing::error!(sku = %meta.sku, from = shard, to, units = n, transfer = %xid, "a transfer pending longer than the applied-id retention: left in transit for an operator (reconcile)");
                continue;
            }
            tracing::warn!(sku = %meta.sku, from = shard, to, units = n, "completing an interrupted transfer");
            self.transfer_in(meta, shard, to, &xid, n).await?;
            recovered += n;
        }
        if recovered > 0 {
            // units in transit are in no shard's stock: they came back now
            self.units_returned(&meta.sku);
        }
        Ok(recovered)
    }
}

fn status_name(s: &str) -> Result<&'static str, InventoryError> {
    Ok(match s {
        "held" => "held",
        "confirmed" => "confirmed",
        "released" => "released",
        "expired" => "expired",
        other => {
            return Err(InventoryError::Protocol(format!(
                "unknown status {other:?}"
            )))
        }
    })
}

/// Parse the `{code, status, qty, user, exp}` reply of confirm/release/extend.
fn hold_reply(rid: &ReservationId, reply: Value) -> Result<Reservation, InventoryError> {
    let items = array(reply)?;
    let code = text(at(&items, 0)?)?;
    if code == "missing" {
        return Err(ApiError::ReservationNotFound.into());
    }
    let status = status_name(&text(at(&items, 1)?)?)?;
    if code == "conflict" {
        return Err(ApiError::ReservationState(status).into());
    }
    Ok(Reservation {
        reservation_id: rid.to_string(),
        sku: rid.sku().to_string(),
        qty: u32::try_from(int(at(&items, 2)?)?)
            .map_err(|_| InventoryError::Protocol("bad qty".into()))?,
        user_id: text(at(&items, 3)?)?,
        status,
        expires_at: ms_to_rfc3339(int(at(&items, 4)?)?),
    })
}

/// Split `stock` over `shards` as evenly as possible (the first shards get
/// the remainder).
pub fn split(stock: i64, shards: u16) -> Vec<i64> {
    let k = i64::from(shards);
    (0..k)
        .map(|s| stock / k + i64::from(s < stock % k))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::IdempotencyKey;

    #[test]
    fn split_is_even_and_complete() {
        assert_eq!(split(10, 4), vec![3, 3, 2, 2]);
        assert_eq!(split(3, 4), vec![1, 1, 1, 0]);
        assert_eq!(split(0, 2), vec![0, 0]);
        for (n, k) in [(100, 4), (7, 3), (1, 1), (999, 16)] {
            assert_eq!(split(n, k).iter().sum::<i64>(), n);
        }
    }

    #[test]
    fn fingerprints_tell_every_body_apart() {
        let req = |qty: i64, user: &str, waitlist: bool| ReserveRequest {
            sku: Sku::parse("s").unwrap(),
            qty: Qty::parse(qty, 100).unwrap(),
            user: UserId::parse(user).unwrap(),
            key: ScopedKey::new(&Tenant::Anonymous, &IdempotencyKey::parse("k").unwrap()),
            waitlist,
        };
        let bodies = [
            req(1, "w:bob", false),
            req(1, "bob", true),
            req(1, "bob", false),
            req(1, ";w:bob", false),
            req(11, "bob", false),
            req(1, "1:bob", false),
            req(1, "w:bob", true),
        ];
        let fps: std::collections::HashSet<String> =
            bodies.iter().map(ReserveRequest::fingerprint).collect();
        assert_eq!(fps.len(), bodies.len(), "{fps:?}");
        // plain requests (the promoter's among them) keep the earlier form
        assert_eq!(req(2, "bob", false).fingerprint(), "2:bob");
    }

    #[test]
    fn rfc3339() {
        assert_eq!(ms_to_rfc3339(0), "1970-01-01T00:00:00.000Z");
    }
}

/// The claim record's body: the request's `<sku>\n<fingerprint>`, the
/// shard count its walks use (`\nk:4`), then the shards its walks leave
/// out, if any (`\nx:1,3`). (An instance older than the count reads such a
/// body as another request's: 422, never a walk over the wrong shards.)
fn claim_body(request: &str, shards: u16, left_out: &[u16]) -> String {
    let mut body = format!("{request}\nk:{shards}");
    if !left_out.is_empty() {
        let list: Vec<String> = left_out.iter().map(u16::to_string).collect();
        body.push_str("\nx:");
        body.push_str(&list.join(","));
    }
    body
}

/// What an earlier claim with the same request body fixed.
#[derive(Debug, PartialEq)]
struct ClaimInfo {
    /// The key's shard count; None in a claim written before it was recorded
    /// (its walks used the SKU's count of the moment).
    shards: Option<u16>,
    left_out: Vec<u16>,
}

/// The earlier claim's count and left-out shards, or None when the earlier
/// body is another request's (a reused key).
fn parse_claim(earlier: &str, request: &str) -> Option<ClaimInfo> {
    let mut rest = earlier.strip_prefix(request)?;
    let mut shards = None;
    if let Some(r) = rest.strip_prefix("\nk:") {
        let end = r.find('\n').unwrap_or(r.len());
        shards = Some(
            r[..end]
                .parse()
                .ok()
                .filter(|k| (1..=MAX_SHARDS).contains(k))?,
        );
        rest = &r[end..];
    }
    if rest.is_empty() {
        return Some(ClaimInfo {
            shards,
            left_out: Vec::new(),
        });
    }
    let left_out = rest
        .strip_prefix("\nx:")?
        .split(',')
        .map(|s| s.parse().ok())
        .collect::<Option<Vec<u16>>>()?;
    Some(ClaimInfo { shards, left_out })
}

#[cfg(test)]
mod claim_tests {
    use super::*;

    #[test]
    fn a_claim_carries_the_left_out_shards_and_only_the_same_request_matches() {
        let c = |shards, left_out: &[u16]| {
            Some(ClaimInfo {
                shards,
                left_out: left_out.to_vec(),
            })
        };
        assert_eq!(claim_body("A\n1:u", 2, &[]), "A\n1:u\nk:2");
        assert_eq!(claim_body("A\n1:u", 4, &[1, 3]), "A\n1:u\nk:4\nx:1,3");
        assert_eq!(parse_claim("A\n1:u\nk:2", "A\n1:u"), c(Some(2), &[]));
        assert_eq!(
            parse_claim("A\n1:u\nk:4\nx:1,3", "A\n1:u"),
            c(Some(4), &[1, 3])
        );
        // written before the count was recorded
        assert_eq!(parse_claim("A\n1:u", "A\n1:u"), c(None, &[]));
        assert_eq!(parse_claim("A\n1:u\nx:1,3", "A\n1:u"), c(None, &[1, 3]));
        assert_eq!(parse_claim("A\n1:u\nk:0", "A\n1:u"), None);
        // another body, also one that merely starts like this one
        assert_eq!(parse_claim("A\n1:v", "A\n1:u"), None);
        assert_eq!(parse_claim("A\n1:uu", "A\n1:u"), None);
        assert_eq!(parse_claim("B\n1:u", "A\n1:u"), None);
        assert_eq!(parse_claim("A\n1:u\nx:zz", "A\n1:u"), None);
    }
}
