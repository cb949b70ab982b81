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
//! that cannot serve a key writes the walk-on verdict for it in the same step
//! that refuses it; a shard that serves it records the reservation. Those
//! verdicts are sticky, so every request carrying the key — a retry, a
//! duplicate in flight, a request replayed after stock came back — sees the
//! same verdicts in the same order, and at most one reservation exists per key.
//! The last shard of the walk is the exception that keeps "no false sold out":
//! it refuses without a walk-on verdict first, pulls units from the shards that
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
//! (`fg:{claim~H}:<id>`, the same `SET NX` that fixes the request body), and
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
//! `tests/it/cluster.rs`, `a_master_killed_mid_sale…`).
//!
//! **Refusals leave nothing behind; walk-on verdicts are never taken back.** A
//! walk that ends "sold out" has written its key's claim and a `moved`
//! walk-on verdict on every shard, kept for the key retention (24 h). Deleting
//! them after the refusal would break the sticky verdicts: request B with
//! key K is past shard 0 when A (also K) ends its walk and deletes K's
//! walk-on verdicts; stock comes back to shard 0, C (K again) reserves there
//! while B reserves on shard 1 — two holds for one key. A short TTL on a
//! refusal's walk-on verdicts has the same hole for any duplicate slower than the
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
//! leave a walk-on verdict on every shard for the attempt's key, and the next round would
//! use a fresh key).
//!
//! **Where each rule lives.** This file: [`Inventory`], its connection and
//! settings, the script runner. `layout` (a SKU's meta: shard count, tags,
//! cap; the cache and the layout upgrade), `reserve` (the claim and the walk
//! argued above), `sold_out` (the refusals from memory), `cap` (the
//! purchase cap's count), `holds` (confirm, release, extend, get, the
//! sweeper's step), `transfers` (units moved between shards), `preload`,
//! `books` (the shard invariant and `status`), `waitlist`; below them
//! `scripts` (the Lua scripts, their calls and their replies), `batch`
//! (coalesced calls), `keys`, `nodes`, `placement`, `durability`,
//! `preflight`, `expiry` (the sweeper task).

pub mod batch;
mod books;
mod cap;
pub mod cart;
mod draw;
mod durability;
mod error;
pub mod expiry;
mod holds;
pub mod keys;
mod layout;
pub mod nodes;
pub mod placement;
pub mod preflight;
mod preload;
pub mod replies;
mod reserve;
pub mod scripts;
mod sold_out;
pub mod stock_doc;
mod ticket;
mod transfers;
pub mod waitlist;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fred::clients::Pool;
use fred::interfaces::{ClientLike, LuaInterface};
use fred::prelude::{Builder, Config as RedisConfig, ReconnectPolicy};
use fred::types::Value;
use serde::Serialize;

use crate::config::Config;
use crate::domain::Sku;
use crate::metrics::Metrics;
use replies::{array, at, int};
use scripts::Scripts;
use sold_out::SoldOutMark;

pub use books::{Books, ShardStatus, SkuStatus};
pub use cart::{Cart, CartLineRequest, CartOutcome, CartRequest};
pub use draw::DrawBody;
pub use error::InventoryError;
pub use layout::{ClaimKeyChange, ClaimRenames, LayoutMigration, SkuMeta, Window};
pub use preload::{split, PreloadOutcome, PreloadSpec};
pub use reserve::{ReserveOutcome, ReserveRequest};

/// Largest shard count one SKU may have.
pub const MAX_SHARDS: u16 = 256;

/// Most units one SKU may be preloaded with. Every counter of a shard
/// (stock, initial, held, sold, transfers) then stays far below 10^14, the
/// largest integer Lua's number formatting (`%.14g`, used when a script
/// hands a number back to Redis) writes exactly: above it `SET` would store
/// "1e+17" and every later `INCRBY` on the key would fail.
pub const MAX_STOCK: i64 = 1_000_000_000_000;

/// A reservation as the API shows it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Reservation {
    pub reservation_id: String,
    pub sku: String,
    pub qty: u32,
    pub user_id: String,
    pub status: &'static str,
    pub expires_at: String,
    /// The deadline `expires_at` shows, in ms since the epoch (the token's `exp`).
    #[serde(skip)]
    pub expires_at_ms: i64,
    /// The hold's signed token (`signing`), set by the HTTP layer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

struct Settings {
    /// Replicas a hold must reach before it is answered (0 = off; durability.rs).
    replica_ack: u32,
    sold_out_cache: Duration,
    /// The stock document's snapshot: its period (0 = live) and how long the
    /// crowd keeps it while one request re-reads it (stock_doc.rs).
    stock_cache: Duration,
    stock_grace: Duration,
    /// How long the crowd keeps a run-out sold-out mark while one request
    /// re-checks it (sold_out.rs, `fast_path`): the re-check's two Redis
    /// round trips at their timeout, and never less than one period.
    probe_grace: Duration,
    waitlist_capacity: u64,
    ticket_ttl_ms: u64,
    lease_ms: u64,
    extend_ms: u64,
    max_hold_ms: u64,
    idem_ttl_ms: u64,
    sweep_batch: u32,
    /// Carts (cart.rs): a transitional state's deadline, the record's TTL,
    /// the work list's bound.
    cart_saga_ms: u64,
    cart_ttl_ms: u64,
    max_pending_carts: u64,
}

/// The stock store: a Redis connection pool, the scripts, and the settings.
pub struct Inventory {
    /// Woken when units come back to stock (release, expiry): the waitlist
    /// promoter need not wait for its next tick.
    pub returned: tokio::sync::Notify,
    /// SKUs that answered "sold out": until when, and whether one request is
    /// already re-checking the shards (the sold-out fast path).
    sold_out: std::sync::Mutex<FastMap<Sku, SoldOutMark>>,
    /// SKUs a walk found not open yet: until when this instance answers
    /// `sale_not_open` from memory, and when (its clock) the sale opens
    /// (reserve.rs, `not_open_mark`).
    not_open: std::sync::Mutex<FastMap<Sku, reserve::NotOpenMark>>,
    /// Bumped whenever this instance sees units come back, so a walk that
    /// ended "sold out" before a return does not mark the SKU after it.
    returns_seen: std::sync::atomic::AtomicU64,
    /// The stock documents' snapshots, the names known not loaded, and a
    /// counter bumped by every preload through this instance (stock_doc.rs).
    stock_docs: std::sync::Mutex<stock_doc::Docs>,
    absent: std::sync::Mutex<stock_doc::Absent>,
    stock_generation: std::sync::atomic::AtomicU64,
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
    /// Redis's data layout (`keys::DATA_LAYOUT`) is this version's, as last
    /// read (at start and by `/readyz`); else why not, for every reserve's 503.
    layout_ok: std::sync::atomic::AtomicBool,
    layout_refused: RwLock<Option<String>>,
    /// The store's claim hash key (`keys::CLAIM_SECRET`), as last read with
    /// the layout; None until read (every reserve is refused until then).
    claim_hasher: RwLock<Option<keys::ClaimHasher>>,
    /// SKUs whose pre-queue draw this instance saw applied, with the draw's
    /// document once read (it never changes after): draw.rs.
    drawn: RwLock<FastMap<Sku, Option<Arc<draw::DrawBody>>>>,
}

/// The maps every reserve reads (the sold-out marks, the layout cache, the
/// winners of a mark): foldhash, seeded at random per map, instead of
/// SipHash — two lookups per sold-out answer were ≈ 4 % of its
/// instructions (callgrind). Their keys are SKUs that were preloaded and
/// idempotency keys that won a unit, not whatever a client sends.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// The last millisecond RFC 3339 (four-digit years) can write:
/// 9999-12-31T23:59:59.999Z.
const RFC3339_MAX_MS: i64 = 253_402_300_799_999;

/// `ms` since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC), written
/// directly: every hold's answer carries one, and `humantime`'s `Display`
/// through `to_string` was ≈ 850 instructions of it (callgrind). Before the
/// epoch is the epoch; past year 9999 is its last millisecond (humantime's
/// `Display` fails there, and `to_string` panicked on it).
pub fn ms_to_rfc3339(ms: i64) -> String {
    let ms = ms.clamp(0, RFC3339_MAX_MS);
    let (days, in_day) = (ms / 86_400_000, ms % 86_400_000);
    let (y, m, d) = civil_from_days(days);
    let (h, min, s, milli) = (
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000,
    );
    let mut out = [0u8; 24];
    let mut put = |at: usize, n: i64, width: usize| {
        let mut n = n;
        for i in (at..at + width).rev() {
            out[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    put(0, y, 4);
    put(5, m, 2);
    put(8, d, 2);
    put(11, h, 2);
    put(14, min, 2);
    put(17, s, 2);
    put(20, milli, 3);
    for (at, c) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
        (23, b'Z'),
    ] {
        out[at] = c;
    }
    // (ASCII digits and separators only: the check cannot fail; lossy
    // decoding was ≈ 190 instructions of it)
    std::str::from_utf8(&out).unwrap_or_default().to_owned()
}

/// (year, month, day) of `days` since 1970-01-01, proleptic Gregorian
/// (H. Hinnant's `civil_from_days`), for days ≥ 0.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
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
    //   tests/it/cluster.rs as a reserve answered with another command's reply);
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
        let nodes = nodes::Nodes::new(pool.clone(), config)?;
        let scripts = Scripts::for_cluster(nodes.per_master());
        scripts.load_all(&pool).await?;
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
        let (stock_cache, stock_grace) =
            stock_doc::timing(config.stock_cache_ms, config.redis_timeout());
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
        let inventory = Inventory {
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
                probe_grace: Duration::from_millis(config.sold_out_cache_ms)
                    .max(2 * config.redis_timeout()),
                stock_cache,
                stock_grace,
                ticket_ttl_ms: config.waitlist_ticket_seconds * 1000,
                lease_ms: config.waitlist_lease_ms,
                cart_saga_ms: config.cart_saga_ms,
                cart_ttl_ms: record_ttl_ms,
                max_pending_carts: config.max_pending_carts,
            },
            meta: RwLock::new(FastMap::default()),
            returned: tokio::sync::Notify::new(),
            drawn: RwLock::new(FastMap::default()),
            sold_out: std::sync::Mutex::new(FastMap::default()),
            not_open: std::sync::Mutex::new(FastMap::default()),
            returns_seen: std::sync::atomic::AtomicU64::new(0),
            stock_docs: std::sync::Mutex::new(FastMap::default()),
            absent: std::sync::Mutex::new(FastMap::default()),
            stock_generation: std::sync::atomic::AtomicU64::new(0),
            allow_eviction: config.allow_eviction_policy,
            preflight: tokio::sync::Mutex::new(Some((Instant::now(), Ok(())))),
            layout_ok: std::sync::atomic::AtomicBool::new(true),
            layout_refused: RwLock::new(None),
            claim_hasher: RwLock::new(None),
        };
        // an unknown layout does not stop the start (`flashgate
        // migrate-layout` connects too): it is logged and refused per request
        let verdict = inventory.check_data_layout().await?;
        if let Err(m) = &verdict {
            *inventory.preflight.lock().await = Some((Instant::now(), Err(m.clone())));
        }
        Ok(inventory)
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
            Ok(_) => self.check_data_layout().await?,
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(ms_to_rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(ms_to_rfc3339(-5), "1970-01-01T00:00:00.000Z");
        assert_eq!(ms_to_rfc3339(i64::MAX), "9999-12-31T23:59:59.999Z");
        assert_eq!(ms_to_rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn rfc3339_writes_what_humantime_writes() {
        let humantime = |ms: i64| {
            let t = UNIX_EPOCH + Duration::from_millis(ms as u64);
            humantime::format_rfc3339_millis(t).to_string()
        };
        // every day of 1970..2500 at a varying time of day, and the edges
        let mut ms = 0i64;
        let mut step = 86_399_999i64;
        while ms < 16_725_225_600_000 {
            assert_eq!(ms_to_rfc3339(ms), humantime(ms), "{ms}");
            ms += step;
            step = step % 86_400_000 + 86_400_000 - 7_777;
        }
        for ms in [
            1,
            999,
            1000,
            59_999,
            3_599_999,
            86_399_999,
            86_400_000,
            RFC3339_MAX_MS,
        ] {
            assert_eq!(ms_to_rfc3339(ms), humantime(ms), "{ms}");
        }
    }
}
