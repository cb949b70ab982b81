//! The Lua scripts of `lua/`, embedded at compile time. Each script is the
//! shared prelude `lua/lib.lua` followed by the script's own file (but
//! `claim.lua`, which uses none of it). They are
//! loaded at start (start fails if a load fails) and called by SHA; after a
//! Redis restart, failover or `SCRIPT FLUSH` the server answers `NOSCRIPT`,
//! and the call reloads the script and retries once, transparently.
//!
//! The scripts' replies are decoded in `replies.rs` (re-exported here for
//! the tests and tools that name `scripts::array`, `scripts::text`, …).

use std::time::{Duration, Instant};

use fred::clients::{Client, Pool};
use fred::interfaces::LuaInterface;
use fred::types::{Key, Value};
use fred::util::{redis_keyslot, sha1_hash};

use super::nodes::Nodes;
use super::InventoryError;
use crate::metrics::Metrics;

pub use super::replies::{
    array, at, decode_records, decode_reserve, int, text, ReserveReply, StoredRecord,
};

const PRELUDE: &str = include_str!("../../lua/lib.lua");

/// One script: its name (for metrics), full source and SHA-1.
#[derive(Clone)]
pub struct Script {
    pub name: &'static str,
    pub source: String,
    pub sha: String,
}

/// lib.lua's switch of records riding in claims (one Redis server only).
const CLAIM_RECORDS_ON: &str = "local CLAIM_RECORDS = true";

impl Script {
    /// lib.lua's prelude, then `body`; on Redis Cluster (`cluster`) with
    /// the prelude's switch of records riding in claims off.
    fn new(name: &'static str, body: &str, cluster: bool) -> Script {
        if cluster {
            let prelude = PRELUDE.replacen(CLAIM_RECORDS_ON, "local CLAIM_RECORDS = false", 1);
            Script::bare(name, &format!("{prelude}\n{body}"))
        } else {
            Script::bare(name, &format!("{PRELUDE}\n{body}"))
        }
    }

    /// A script of `source` alone (one that needs nothing of the prelude).
    fn bare(name: &'static str, source: &str) -> Script {
        let source = source.to_owned();
        let sha = sha1_hash(&source);
        Script { name, source, sha }
    }
}

/// Every script flashgate runs.
pub struct Scripts {
    pub claim: Script,
    pub reserve: Script,
    pub confirm: Script,
    pub release: Script,
    pub extend: Script,
    pub expire: Script,
    pub preload: Script,
    pub transfer_out: Script,
    pub transfer_in: Script,
    pub transfer_done: Script,
    pub cap_take: Script,
    pub cap_give: Script,
    /// `reconcile --fix`: the ledger's books back into one shard.
    pub fix: Script,
    pub wl_join: Script,
    pub wl_end: Script,
    pub wl_expire: Script,
    pub wl_next: Script,
    pub wl_lease: Script,
    pub wl_gate: Script,
    pub wl_bump: Script,
    /// A waiting ticket's position and the SKU's promotion rate.
    pub wl_wait: Script,
    /// The fair draw of a pre-queue: close, then apply the order.
    pub wl_draw: Script,
    /// `replica_ack`: the write a batch of acknowledgements waits behind.
    pub touch: Script,
    /// Reservation records, read (their format is `lua/lib.lua`'s).
    pub records: Script,
    /// A SKU's meta in this version's data layout (keys.rs, `LAYOUT`).
    pub meta_upgrade: Script,
    /// Carts (cart.rs): the record, its transitions, the sweeper's work list.
    pub cart_begin: Script,
    pub cart_move: Script,
    pub cart_pend: Script,
}

impl Default for Scripts {
    fn default() -> Self {
        Self::new()
    }
}

impl Scripts {
    /// The scripts for one Redis server (records ride in claims, lib.lua).
    pub fn new() -> Scripts {
        Scripts::for_cluster(false)
    }

    /// The scripts for Redis Cluster (`cluster`: a script touches its own
    /// slot only, so no record rides in a claim) or for one server.
    pub fn for_cluster(cluster: bool) -> Scripts {
        let c = cluster;
        Scripts {
            // (without the prelude, which it does not use: building its
            // functions on every call was ~2.8k Redis instructions per hold
            // on a 3-master cluster at B = 25, 71.6k -> 68.8k)
            claim: Script::bare("claim", include_str!("../../lua/claim.lua")),
            reserve: Script::new("reserve", include_str!("../../lua/reserve.lua"), c),
            confirm: Script::new("confirm", include_str!("../../lua/confirm.lua"), c),
            release: Script::new("release", include_str!("../../lua/release.lua"), c),
            extend: Script::new("extend", include_str!("../../lua/extend.lua"), c),
            expire: Script::new("expire", include_str!("../../lua/expire.lua"), c),
            preload: Script::new("preload", include_str!("../../lua/preload.lua"), c),
            transfer_out: Script::new(
                "transfer_out",
                include_str!("../../lua/transfer_out.lua"),
                c,
            ),
            transfer_in: Script::new("transfer_in", include_str!("../../lua/transfer_in.lua"), c),
            transfer_done: Script::new(
                "transfer_done",
                include_str!("../../lua/transfer_done.lua"),
                c,
            ),
            cap_take: Script::new("cap_take", include_str!("../../lua/cap_take.lua"), c),
            cap_give: Script::new("cap_give", include_str!("../../lua/cap_give.lua"), c),
            wl_join: Script::new("wl_join", include_str!("../../lua/wl_join.lua"), c),
            wl_end: Script::new("wl_end", include_str!("../../lua/wl_end.lua"), c),
            wl_expire: Script::new("wl_expire", include_str!("../../lua/wl_expire.lua"), c),
            wl_next: Script::new("wl_next", include_str!("../../lua/wl_next.lua"), c),
            wl_lease: Script::new("wl_lease", include_str!("../../lua/wl_lease.lua"), c),
            wl_gate: Script::new("wl_gate", include_str!("../../lua/wl_gate.lua"), c),
            wl_bump: Script::new("wl_bump", include_str!("../../lua/wl_bump.lua"), c),
            wl_wait: Script::new("wl_wait", include_str!("../../lua/wl_wait.lua"), c),
            wl_draw: Script::new("wl_draw", include_str!("../../lua/wl_draw.lua"), c),
            fix: Script::new("fix", include_str!("../../lua/fix.lua"), c),
            touch: Script::new("touch", include_str!("../../lua/touch.lua"), c),
            records: Script::new("records", include_str!("../../lua/records.lua"), c),
            meta_upgrade: Script::new(
                "meta_upgrade",
                include_str!("../../lua/meta_upgrade.lua"),
                c,
            ),
            cart_begin: Script::new("cart_begin", include_str!("../../lua/cart_begin.lua"), c),
            cart_move: Script::new("cart_move", include_str!("../../lua/cart_move.lua"), c),
            cart_pend: Script::new("cart_pend", include_str!("../../lua/cart_pend.lua"), c),
        }
    }

    pub fn all(&self) -> [&Script; 28] {
        [
            &self.claim,
            &self.reserve,
            &self.confirm,
            &self.release,
            &self.extend,
            &self.expire,
            &self.preload,
            &self.transfer_out,
            &self.transfer_in,
            &self.transfer_done,
            &self.cap_take,
            &self.cap_give,
            &self.fix,
            &self.wl_join,
            &self.wl_end,
            &self.wl_expire,
            &self.wl_next,
            &self.wl_lease,
            &self.wl_gate,
            &self.wl_bump,
            &self.wl_wait,
            &self.wl_draw,
            &self.touch,
            &self.records,
            &self.meta_upgrade,
            &self.cart_begin,
            &self.cart_move,
            &self.cart_pend,
        ]
    }

    /// `SCRIPT LOAD` every script (on every primary of a cluster).
    pub async fn load_all(&self, pool: &Pool) -> Result<(), InventoryError> {
        for s in self.all() {
            let sha: String = pool.next().script_load_cluster(s.source.as_str()).await?;
            if sha != s.sha {
                return Err(InventoryError::Protocol(format!(
                    "script {} loaded with sha {sha}, expected {}",
                    s.name, s.sha
                )));
            }
        }
        Ok(())
    }
}

/// How long a script keeps being resent while its slot is being migrated
/// (`TRYAGAIN`, `ASK`, `MOVED`).
const TRYAGAIN_BUDGET: Duration = Duration::from_secs(1);

/// Run `script` by SHA; on `NOSCRIPT`, load it and retry once.
///
/// On Redis Cluster the script goes to the client of the master serving its
/// first key's slot (`nodes.rs`: one master down leaves the others' scripts
/// alone). While the shard's slot moves to another master
/// (`redis-cli --cluster reshard`), a script is refused before it runs:
/// `TRYAGAIN` while its keys are split between the two masters, `ASK` once
/// they have all left, `MOVED` once the slot has moved. None of these ran
/// the script, so the slot map is refreshed and the script resent, with a
/// short backoff, for up to [`TRYAGAIN_BUDGET`] — the resend after the move
/// reaches the new owner; past the budget the caller gets 503 (retry with
/// the same key). A script whose declared keys are all still on the old
/// master runs there, and a key it names itself (same slot: `reserve.lua`'s
/// verdicts and records, `expire.lua`'s records) that is not on it — moved
/// already, or not created yet — ends it with "non local key": resent the
/// same way. That is sound because such a script has written nothing that a
/// resend would not see: `reserve.lua` reads a request's verdict before it
/// writes anything for the request, and in a half-moved slot that read fails
/// for every request that could get a unit (lua/reserve.lua); `expire.lua`
/// reads every due record before it writes anything. A script therefore
/// only ever completes on a master that has all of its keys. A script that could not reach its master (timeout, lost
/// connection, `CLUSTERDOWN`) is not resent — its outcome is unknown — but
/// the slot map is refreshed in the background, so that the client's retry
/// reaches a promoted replica.
pub async fn run(
    nodes: &Nodes,
    metrics: &Metrics,
    script: &Script,
    keys: Vec<String>,
    args: Vec<String>,
) -> Result<Value, InventoryError> {
    run_with(nodes, metrics, script, &keys, &args).await
}

/// [`run`] with keys and arguments borrowed from wherever they are (a
/// batched call's requests, constants), copied once into one buffer.
pub async fn run_with<K: AsRef<str> + Sync, A: AsRef<str> + Sync>(
    nodes: &Nodes,
    metrics: &Metrics,
    script: &Script,
    keys: &[K],
    args: &[A],
) -> Result<Value, InventoryError> {
    // the slot picks the master's client; one Redis has one client for all
    let slot = if nodes.per_master() {
        keys.first().map(|k| redis_keyslot(k.as_ref().as_bytes()))
    } else {
        None
    };
    let (keys, args) = pack(keys, args);
    let started = Instant::now();
    let mut backoff = Duration::from_millis(2);
    loop {
        let client = nodes.client_for_slot(slot);
        let result = run_once(&client, metrics, script, &keys, &args).await;
        let e = match result {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let details = e.details();
        let redirected = e.is_moved() || e.is_ask();
        let again = redirected
            || details.starts_with("TRYAGAIN")
            || details.contains("non local key")
            || details.contains("Too many redirections");
        if again && started.elapsed() < TRYAGAIN_BUDGET {
            if redirected {
                // (rare: boxed, so the common path's future stays small)
                Box::pin(nodes.refresh()).await;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(50));
            continue;
        }
        let e = classify(metrics, e);
        if e.is_unavailable() {
            nodes.refresh_soon();
        }
        return Err(e);
    }
}

/// The keys and arguments of one call as slices of one buffer: a batched
/// call has hundreds of them, and each attempt hands fred its own copy of
/// the list. Slices of one shared buffer make that copy a reference count
/// per item; a `String` each would cost an allocation per item and attempt
/// (measured: 5 % of the service's CPU under load, bench/README.md).
fn pack<K: AsRef<str>, A: AsRef<str>>(keys: &[K], args: &[A]) -> (Vec<Key>, Vec<Value>) {
    let all = || keys.iter().map(K::as_ref).chain(args.iter().map(A::as_ref));
    let total = all().map(str::len).sum();
    let mut buf = bytes::BytesMut::with_capacity(total);
    for s in all() {
        buf.extend_from_slice(s.as_bytes());
    }
    let buf = buf.freeze();
    let mut at = 0;
    let mut next = |len: usize| {
        let b = buf.slice(at..at + len);
        at += len;
        b
    };
    let keys = keys
        .iter()
        .map(|k| Key::from(next(k.as_ref().len())))
        .collect();
    let args = args
        .iter()
        .map(|a| Value::Bytes(next(a.as_ref().len())))
        .collect();
    (keys, args)
}

/// `script` on this `client` (one connection), with `NOSCRIPT` handled as in
/// [`run`] but no re-routing: for a call that must share its connection with
/// the next command (`WAIT` after `touch.lua`, durability.rs).
pub async fn run_on<K: AsRef<str>, A: AsRef<str>>(
    client: &Client,
    metrics: &Metrics,
    script: &Script,
    keys: &[K],
    args: &[A],
) -> Result<Value, fred::error::Error> {
    let (keys, args) = pack(keys, args);
    run_once(client, metrics, script, &keys, &args).await
}

async fn run_once(
    client: &Client,
    metrics: &Metrics,
    script: &Script,
    keys: &[Key],
    args: &[Value],
) -> Result<Value, fred::error::Error> {
    let started = Instant::now();
    let first = client
        .evalsha::<Value, _, _, _>(script.sha.as_str(), keys.to_vec(), args.to_vec())
        .await;
    let result = match first {
        Err(e) if e.details().starts_with("NOSCRIPT") => {
            metrics.redis_error("noscript");
            tracing::info!(script = script.name, "NOSCRIPT: reloading the script");
            // (rare: boxed, so the common path's future stays small)
            Box::pin(async {
                client
                    .script_load_cluster::<String, _>(script.source.as_str())
                    .await?;
                client
                    .evalsha::<Value, _, _, _>(script.sha.as_str(), keys.to_vec(), args.to_vec())
                    .await
            })
            .await
        }
        other => other,
    };
    metrics.observe_script(script.name, started.elapsed());
    result
}

/// Count a Redis error by kind and turn it into an [`InventoryError`].
pub fn classify(metrics: &Metrics, e: fred::error::Error) -> InventoryError {
    let kind = match e.kind() {
        fred::error::ErrorKind::Timeout => "timeout",
        fred::error::ErrorKind::IO | fred::error::ErrorKind::Canceled => "connection",
        _ => "other",
    };
    metrics.redis_error(kind);
    InventoryError::from(e)
}

// ---- reply parsing: Redis answers arrays of strings and integers ----

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metrics_script_labels_are_every_script_of_lua() {
        let lua = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("lua");
        let mut files: Vec<String> = std::fs::read_dir(&lua)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter_map(|f| f.strip_suffix(".lua").map(str::to_owned))
            .filter(|f| f != "lib")
            .collect();
        files.sort();
        let mut labels: Vec<String> = crate::metrics::SCRIPTS.map(str::to_owned).to_vec();
        labels.sort();
        assert_eq!(labels, files, "metrics::SCRIPTS against lua/*.lua");
        let scripts = Scripts::new();
        let names: Vec<&str> = scripts.all().iter().map(|s| s.name).collect();
        assert_eq!(
            names,
            crate::metrics::SCRIPTS,
            "Scripts::all against metrics::SCRIPTS"
        );
        for script in scripts.all() {
            // each name is its own file's: the prelude, then lua/<name>.lua
            // (claim.lua alone: it uses nothing of the prelude)
            let body = std::fs::read_to_string(lua.join(format!("{}.lua", script.name))).unwrap();
            let want = if script.name == "claim" {
                body
            } else {
                format!("{PRELUDE}\n{body}")
            };
            assert_eq!(script.source, want, "{}", script.name);
        }
    }
}
