//! Every Lua script run directly on a real Redis, edge cases included. The
//! books invariant (initial + xin - xout = stock + held + sold) is checked
//! after every step.

use crate::support;

use std::collections::HashMap;
use std::time::Duration;

use flashgate::domain::{IdempotencyKey, ReservationId, ScopedKey, Sku, Tenant};
use flashgate::inventory::batch::{decode_reserve, ReserveReply};
use flashgate::inventory::keys::{self, ShardKeys};
use flashgate::inventory::scripts::{self, Script, Scripts, StoredRecord};
use flashgate::metrics::Metrics;
use fred::clients::Pool;
use fred::interfaces::{HashesInterface, KeysInterface, SetsInterface, SortedSetsInterface};
use fred::types::Value;
use support::{test_config, RedisServer};

struct Fixture {
    _redis: RedisServer,
    pool: Pool,
    scripts: Scripts,
    metrics: Metrics,
    sku: Sku,
    k: ShardKeys,
}

async fn fixture() -> Fixture {
    let redis = RedisServer::start();
    let pool = flashgate::inventory::connect(&test_config(&redis))
        .await
        .expect("connect");
    let sku = Sku::parse("lua-sku").unwrap();
    let k = ShardKeys::new(&keys::default_tag(&sku, 0));
    // scripts are deliberately not loaded: the first call of each goes through
    // the NOSCRIPT reload path
    Fixture {
        _redis: redis,
        pool,
        scripts: Scripts::new(),
        metrics: Metrics::new(10),
        sku,
        k,
    }
}

fn strs(v: Value) -> Vec<String> {
    scripts::array(v)
        .unwrap()
        .iter()
        .map(|x| scripts::text(x).unwrap())
        .collect()
}

impl Fixture {
    async fn run(&self, s: &Script, keys: Vec<String>, args: Vec<String>) -> Value {
        scripts::run(
            &flashgate::inventory::nodes::Nodes::pool_only(self.pool.clone()),
            &self.metrics,
            s,
            keys,
            args,
        )
        .await
        .expect("script runs")
    }

    async fn preload(&self, units: i64, force: bool) -> Vec<String> {
        strs(
            self.run(
                &self.scripts.preload,
                vec![self.k.stock(), self.k.books(), self.k.events()],
                vec![units.to_string(), if force { "1" } else { "0" }.into()],
            )
            .await,
        )
    }

    fn rid(&self) -> ReservationId {
        ReservationId::new(&self.sku, 0, &uuid::Uuid::new_v4())
    }

    /// A rid for a request with `key` as the service makes one on one
    /// server (data layout 6): its token starts with the id of the key's
    /// claim, so the hold rides in the claim ([`test_hasher`]).
    fn rid_of(&self, key: &str) -> ReservationId {
        ReservationId::new(&self.sku, 0, &test_hasher().claim(&anon(key)).token())
    }

    async fn reserve_with(
        &self,
        rid: &ReservationId,
        key: &str,
        qty: u32,
        hold_ms: u64,
        mark: bool,
    ) -> Vec<String> {
        self.reserve_as(rid, key, qty, "user-1", hold_ms, mark)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn reserve_as(
        &self,
        rid: &ReservationId,
        key: &str,
        qty: u32,
        user: &str,
        hold_ms: u64,
        mark: bool,
    ) -> Vec<String> {
        // + 4: the `R` verdict, so a later call with another rid (another
        // request with the key) finds the hold by it, as the promoter's walks
        // and layout-2 keys do; a key with a claim token is tests/upgrade.rs's
        let flags = if mark { "7" } else { "6" };
        self.reserve_flags(rid, key, qty, user, hold_ms, flags)
            .await
    }

    /// A batch of one with reserve.lua's flags argument as given.
    #[allow(clippy::too_many_arguments)]
    async fn reserve_flags(
        &self,
        rid: &ReservationId,
        key: &str,
        qty: u32,
        user: &str,
        hold_ms: u64,
        flags: &str,
    ) -> Vec<String> {
        self.reserve_claimed(rid, key, qty, user, hold_ms, flags, "")
            .await
    }

    /// [`Fixture::reserve_flags`] with the claim body as given: '' (the
    /// claim was made earlier, or by another request) or '!' (claim.lua has
    /// just made it new, apart from this call, as on a cluster).
    #[allow(clippy::too_many_arguments)]
    async fn reserve_claimed(
        &self,
        rid: &ReservationId,
        key: &str,
        qty: u32,
        user: &str,
        hold_ms: u64,
        flags: &str,
        claim: &str,
    ) -> Vec<String> {
        let key = ScopedKey::new(&Tenant::Anonymous, &IdempotencyKey::parse(key).unwrap());
        // a batch of one (lua/reserve.lua answers one reply per request)
        let replies = self
            .run(
                &self.scripts.reserve,
                self.shard_keys(),
                vec![
                    hold_ms.to_string(),
                    "86400000".into(),
                    "90000000".into(),
                    String::new(), // no sale window
                    key.as_str().into(),
                    rid.to_string(),
                    qty.to_string(),
                    user.into(),
                    flags.into(),
                    String::new(), // no claim in this call
                    claim.into(),
                ],
            )
            .await;
        let mut replies = decode_reserve(replies).expect("reserve.lua's reply");
        assert_eq!(replies.len(), 1, "one reply per request");
        parts(replies.remove(0), rid)
    }

    /// reserve.lua's KEYS: the shard's own keys.
    fn shard_keys(&self) -> Vec<String> {
        vec![
            self.k.stock(),
            self.k.books(),
            self.k.holds(),
            self.k.events(),
            self.k.wlopen(),
            self.k.reserved_keys(),
        ]
    }

    async fn reserve(&self, key: &str, qty: u32, hold_ms: u64) -> Vec<String> {
        self.reserve_with(&self.rid(), key, qty, hold_ms, true)
            .await
    }

    async fn end(&self, s: &Script, rid: &str) -> Vec<String> {
        let rid = ReservationId::parse(rid).unwrap();
        strs(
            self.run(
                s,
                vec![
                    self.k.record(&rid),
                    self.k.stock(),
                    self.k.books(),
                    self.k.holds(),
                    self.k.events(),
                    self.k.reserved_keys(),
                ],
                vec![rid.to_string(), "*".into()],
            )
            .await,
        )
    }

    /// The reservation's record, as records.lua reads it.
    async fn record(&self, rid: &str) -> Option<StoredRecord> {
        let rid = ReservationId::parse(rid).unwrap();
        let v = self
            .run(&self.scripts.records, vec![self.k.record(&rid)], vec![])
            .await;
        scripts::decode_records(v).unwrap().pop().flatten()
    }

    async fn extend(&self, rid: &str, grace: u64, max_total: u64) -> Vec<String> {
        let rid = ReservationId::parse(rid).unwrap();
        strs(
            self.run(
                &self.scripts.extend,
                vec![self.k.record(&rid), self.k.holds()],
                vec![
                    rid.to_string(),
                    grace.to_string(),
                    max_total.to_string(),
                    "*".into(),
                ],
            )
            .await,
        )
    }

    async fn expire(&self) -> Vec<String> {
        strs(
            self.run(
                &self.scripts.expire,
                vec![
                    self.k.holds(),
                    self.k.stock(),
                    self.k.books(),
                    self.k.events(),
                    self.k.reserved_keys(),
                    self.k.capback(),
                ],
                // "1": the SKU has a purchase cap, its buyers are named
                vec![self.k.record_prefix(), "100".into(), "1".into()],
            )
            .await,
        )
    }

    /// (stock, held, sold), after checking the invariant.
    async fn books(&self) -> (i64, i64, i64) {
        books_of(&self.pool, &self.k).await
    }

    /// The shard's outbox events (a batched `held` entry counts each hold).
    async fn events(&self) -> i64 {
        let entries: Vec<(String, HashMap<String, String>)> = self
            .pool
            .next()
            .xrange(self.k.events(), "-", "+", None)
            .await
            .unwrap();
        entries
            .iter()
            .map(|(id, fields)| flashgate::ledger::events_of(id, fields).len() as i64)
            .sum()
    }
}

async fn books_of(pool: &Pool, k: &ShardKeys) -> (i64, i64, i64) {
    let stock: i64 = pool.next().get(k.stock()).await.unwrap();
    let b: HashMap<String, i64> = pool.next().hgetall(k.books()).await.unwrap();
    let f = |n: &str| b.get(n).copied().unwrap_or(0);
    assert_eq!(
        f("initial") + f("xin") - f("xout"),
        stock + f("held") + f("sold"),
        "books: {b:?} stock {stock}"
    );
    assert!(stock >= 0 && f("held") >= 0 && f("sold") >= 0);
    (stock, f("held"), f("sold"))
}

use fred::interfaces::StreamsInterface;

#[tokio::test]
async fn preload_refuses_a_live_shard_unless_forced() {
    let f = fixture().await;
    assert_eq!(f.preload(10, false).await, vec!["ok", "10"]);
    assert_eq!(f.preload(99, false).await, vec!["exists", "10"]);
    assert_eq!(f.books().await, (10, 0, 0));
    let r = f.reserve("k1", 3, 60_000).await;
    assert_eq!(r[0], "held");
    // force: available becomes 5, the 3 held units stay on the books
    assert_eq!(f.preload(5, true).await, vec!["ok", "5"]);
    assert_eq!(f.books().await, (5, 3, 0));
    let initial: i64 = f.pool.next().hget(f.k.books(), "initial").await.unwrap();
    assert_eq!(initial, 8);
}

#[tokio::test]
async fn reserve_checks_and_decrements_atomically() {
    let f = fixture().await;
    // unknown / unloaded shard
    assert_eq!(f.reserve("k0", 1, 60_000).await, vec!["unloaded"]);
    f.preload(3, false).await;
    // more than the stock: refused, nothing taken, tombstone written
    assert_eq!(f.reserve("big", 4, 60_000).await, vec!["dry", "3"]);
    assert_eq!(f.books().await, (3, 0, 0));
    assert_eq!(f.reserve("big", 4, 60_000).await, vec!["moved", "3"]);
    let r = f.reserve("k1", 2, 60_000).await;
    assert_eq!(r[0], "held");
    assert_eq!(f.books().await, (1, 2, 0));
    let events_after_hold = f.events().await;
    // replay: the same reservation, nothing taken
    let again = f.reserve("k1", 2, 60_000).await;
    assert_eq!(again[0], "replay");
    assert_eq!(again[1], r[1]);
    assert_eq!(again[2], "2");
    assert_eq!(again[4], r[2], "replay answers the first deadline");
    assert_eq!(f.books().await, (1, 2, 0));
    assert_eq!(
        f.events().await,
        events_after_hold,
        "a replay changes nothing"
    );
    // same key, other body
    assert_eq!(
        f.reserve_with(&f.rid(), "k1", 1, 60_000, true).await,
        vec!["mismatch"]
    );
    assert_eq!(
        f.reserve_with(&f.rid(), "big", 1, 60_000, true).await,
        vec!["mismatch"]
    );
    // dry without the tombstone leaves no trace: the key can still reserve here later
    assert_eq!(
        f.reserve_with(&f.rid(), "k2", 2, 60_000, false).await,
        vec!["dry", "1"]
    );
    assert_eq!(f.reserve("k2", 1, 60_000).await[0], "held");
}

/// reserve.lua's flags argument, '0'..'7', switches exactly what it names
/// (1 = mark_walk_on, 2 = gate, 4 = verdict): the script tests each switch by
/// comparing the argument with the values that have it (no table), so every
/// value is run here. With the SKU's waitlist open, a gated request is dry
/// with 0 and leaves its walk-on verdict only with mark_walk_on; an ungated
/// one holds a unit and writes the `R` verdict only with verdict; one asking
/// for more than the stock is dry and leaves its walk-on verdict only with
/// mark_walk_on.
#[tokio::test]
async fn every_flags_value_switches_what_it_names() {
    let f = fixture().await;
    f.preload(100, false).await;
    let _: () = f
        .pool
        .next()
        .set(f.k.wlopen(), "1", None, None, false)
        .await
        .unwrap();
    let verdict = |key: &str| {
        let idem = f.k.idem(&ScopedKey::new(
            &Tenant::Anonymous,
            &IdempotencyKey::parse(key).unwrap(),
        ));
        let pool = &f.pool;
        async move {
            let v: Option<String> = pool.next().get(idem).await.unwrap();
            v
        }
    };
    // the walk-on verdict: at `idem:<key>` for a key without a token
    // (verdict), else the marker at the record key its token names (layout 5)
    let walk_on = |key: &str, rid: &ReservationId, with_verdict: bool| {
        let at = if with_verdict {
            f.k.idem(&ScopedKey::new(
                &Tenant::Anonymous,
                &IdempotencyKey::parse(key).unwrap(),
            ))
        } else {
            f.k.record(rid)
        };
        let pool = &f.pool;
        async move {
            let v: Option<String> = pool.next().get(at).await.unwrap();
            v
        }
    };
    let mut stock = 100;
    for n in 0..8u8 {
        let flags = n.to_string();
        let (mark, gate, with_verdict) = (n & 1 != 0, n & 2 != 0, n & 4 != 0);
        let key = format!("f{n}");
        let rid = f.rid();
        let r = f
            .reserve_flags(&rid, &key, 1, "user-1", 60_000, &flags)
            .await;
        let seen = verdict(&key).await;
        if gate {
            assert_eq!(
                r,
                vec!["dry", "0"],
                "flags {flags}: the open waitlist gates it"
            );
            assert_eq!(
                walk_on(&key, &rid, with_verdict).await,
                mark.then(|| "M|1:user-1".to_string()),
                "flags {flags}: a walk-on verdict iff mark_walk_on"
            );
        } else {
            assert_eq!(r[0], "held", "flags {flags}: not gated");
            stock -= 1;
            assert_eq!(
                seen,
                with_verdict.then(|| format!("R|{rid}|1:user-1")),
                "flags {flags}: an R verdict iff verdict"
            );
            // more than the stock: dry, its walk-on verdict iff mark_walk_on
            let big = format!("g{n}");
            let big_rid = f.rid();
            let r = f
                .reserve_flags(&big_rid, &big, 1000, "user-1", 60_000, &flags)
                .await;
            assert_eq!(
                r,
                vec!["dry".to_string(), stock.to_string()],
                "flags {flags}"
            );
            assert_eq!(
                walk_on(&big, &big_rid, with_verdict).await,
                mark.then(|| "M|1000:user-1".to_string()),
                "flags {flags}: a walk-on verdict iff mark_walk_on"
            );
        }
        assert_eq!(f.books().await, (stock, 100 - stock, 0));
    }
    // and a quantity other than one (tonumber, not the one-unit shortcut)
    let _: () = f.pool.next().del(f.k.wlopen()).await.unwrap();
    let r = f
        .reserve_flags(&f.rid(), "q12", 12, "user-1", 60_000, "1")
        .await;
    assert_eq!(r[0], "held");
    assert_eq!(f.books().await, (stock - 12, 100 - stock + 12, 0));
}

/// The claim key of the tests (the store's `fg:claimkey` in the service).
fn test_hasher() -> keys::ClaimHasher {
    keys::ClaimHasher::parse("00112233445566778899aabbccddeeff").expect("32 hex")
}

/// The token of a reservation id (its last 32 hex digits).
fn token_of(rid: &ReservationId) -> uuid::Uuid {
    let s = rid.to_string();
    uuid::Uuid::try_parse(&s[s.len() - 32..]).expect("a token")
}

/// One `reserve.lua` call deciding `reqs` (key, qty) in order; every reply.
async fn reserve_batch(
    f: &Fixture,
    reqs: &[(&str, u32)],
    rids: &[ReservationId],
) -> Vec<Vec<String>> {
    let reqs: Vec<(&str, u32, Option<&str>)> = reqs.iter().map(|&(k, q)| (k, q, None)).collect();
    reserve_batch_claiming(f, &reqs, rids).await
}

/// [`reserve_batch`] where a request may carry its key's claim body (the
/// claim made inside the call, as on one Redis server).
async fn reserve_batch_claiming(
    f: &Fixture,
    reqs: &[(&str, u32, Option<&str>)],
    rids: &[ReservationId],
) -> Vec<Vec<String>> {
    // (the fourth: no sale window)
    let mut args: Vec<String> = vec![
        "60000".into(),
        "86400000".into(),
        "90000000".into(),
        String::new(),
    ];
    for ((key, qty, claim), rid) in reqs.iter().zip(rids) {
        let key = ScopedKey::new(&Tenant::Anonymous, &IdempotencyKey::parse(key).unwrap());
        args.extend([
            key.as_str().to_string(),
            rid.to_string(),
            qty.to_string(),
            "user-1".into(),
            // + 4 (the `R` verdict) for a request without its claim: a later
            // one with the key and another rid finds the hold by it
            if claim.is_some() { "3" } else { "7" }.into(),
            match claim {
                Some(_) => keys::claim_of_token(&token_of(rid)).record,
                None => String::new(),
            },
            claim.unwrap_or_default().to_string(),
        ]);
    }
    let replies = decode_reserve(f.run(&f.scripts.reserve, f.shard_keys(), args).await)
        .expect("reserve.lua's reply");
    assert_eq!(replies.len(), reqs.len(), "one reply per request");
    replies
        .into_iter()
        .zip(rids)
        .map(|(r, rid)| parts(r, rid))
        .collect()
}

/// A reply as the words and values it carries: `held rid expires_at`,
/// `replay rid qty user expires_at`, `claimed body`, `moved n`, `dry n`,
/// `mismatch`, `unloaded` (`sent`: the rid the request carried).
fn parts(r: ReserveReply, sent: &ReservationId) -> Vec<String> {
    match r {
        ReserveReply::Held { expires_at_ms } => {
            vec!["held".into(), sent.to_string(), expires_at_ms.to_string()]
        }
        ReserveReply::Replay {
            rid,
            qty,
            user,
            expires_at_ms,
        } => vec!["replay".into(), rid, qty, user, expires_at_ms.to_string()],
        ReserveReply::Claimed(body) => vec!["claimed".into(), body],
        ReserveReply::WalkOn(n) => vec!["moved".into(), n.to_string()],
        ReserveReply::Dry(n) => vec!["dry".into(), n.to_string()],
        ReserveReply::Mismatch => vec!["mismatch".into()],
        ReserveReply::Unloaded => vec!["unloaded".into()],
        ReserveReply::NotOpen(n) => vec!["not_open".into(), n.to_string()],
        ReserveReply::Closed => vec!["closed".into()],
    }
}

#[tokio::test]
async fn a_batch_is_decided_in_arrival_order_and_a_resent_batch_changes_nothing() {
    let f = fixture().await;
    f.preload(3, false).await;
    let reqs = [("b1", 1), ("b2", 1), ("b1", 1), ("b3", 2), ("b4", 1)];
    let rids: Vec<ReservationId> = reqs.iter().map(|_| f.rid()).collect();
    let first = reserve_batch(&f, &reqs, &rids).await;
    let kinds: Vec<&str> = first.iter().map(|r| r[0].as_str()).collect();
    // b1, b2 take a unit each; b1 again is its own hold; b3 wants 2 of the 1
    // left (dry, tombstone); b4 takes the last one
    assert_eq!(kinds, ["held", "held", "replay", "dry", "held"]);
    assert_eq!(
        first[2][1],
        rids[0].to_string(),
        "the replay names b1's hold"
    );
    assert_eq!(first[3][1], "1");
    assert_eq!(f.books().await, (0, 3, 0));
    assert_eq!(f.events().await, 1 + 3, "preload + three holds");
    // the client library resends the whole call after a lost reply
    let again = reserve_batch(&f, &reqs, &rids).await;
    let kinds: Vec<&str> = again.iter().map(|r| r[0].as_str()).collect();
    // each hold answers with its own id (the service reads that as its hold)
    assert_eq!(kinds, ["replay", "replay", "replay", "moved", "replay"]);
    for (i, j) in [(0, 0), (1, 1), (2, 0), (4, 4)] {
        assert_eq!(again[i][1], rids[j].to_string());
    }
    assert_eq!(f.books().await, (0, 3, 0));
    assert_eq!(f.events().await, 4, "nothing new happened");
    let mut won: Vec<String> = f.pool.next().smembers(f.k.reserved_keys()).await.unwrap();
    won.sort();
    assert_eq!(
        won,
        ["b1", "b2", "b4"],
        "the keys that won units, for the sold-out fast path"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reserves_for_one_shard_share_script_calls() {
    use flashgate::inventory::batch::{Lanes, ReserveBatch, ReserveCall};
    let f = fixture().await;
    f.preload(150, false).await;
    let reserver = Lanes::new(
        ReserveBatch {
            nodes: flashgate::inventory::nodes::Nodes::pool_only(f.pool.clone()),
            metrics: std::sync::Arc::new(Metrics::new(10)),
            script: f.scripts.reserve.clone(),
            ttls: ["60000".into(), "86400000".into(), "90000000".into()],
        },
        64,
    );
    let calls_before = evalsha_calls(&f._redis);
    let tag = keys::default_tag(&f.sku, 0);
    let answers = futures::future::join_all((0..200).map(|i| {
        let (reserver, f, tag) = (reserver.clone(), &f, tag.clone());
        async move {
            let key = ScopedKey::new(
                &Tenant::Anonymous,
                &IdempotencyKey::parse(&format!("c{i}")).unwrap(),
            );
            let rid = f.rid();
            let call = ReserveCall {
                key: key.as_str().to_string(),
                rid: rid.to_string(),
                qty: "1".into(),
                user: format!("u{i}"),
                mark_walk_on: true,
                gate: true,
                verdict: false,
                claim: None,
                claimed_apart: false,
                window: "".into(),
            };
            parts(reserver.submit(&tag, call).await.unwrap(), &rid)
        }
    }))
    .await;
    let held = answers.iter().filter(|a| a[0] == "held").count();
    let dry = answers.iter().filter(|a| a[0] == "dry").count();
    assert_eq!(
        (held, dry),
        (150, 50),
        "exactly the stock, every other request dry"
    );
    assert_eq!(f.books().await, (0, 150, 0));
    let calls = evalsha_calls(&f._redis) - calls_before;
    // 200 requests queued at once: the first goes alone, the rest in batches
    // of at most 64 (a NOSCRIPT reload adds one call)
    assert!(
        calls <= 8,
        "200 concurrent reserves took {calls} script calls"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_replica_acks_share_one_touch_per_shard_and_one_wait() {
    use flashgate::inventory::batch::{Ack, AckBatch, Lanes};
    let f = fixture().await;
    // 40 records that exist, 10 that a failover lost, over two shards
    let tags = [keys::default_tag(&f.sku, 0), keys::default_tag(&f.sku, 1)];
    let mut records = Vec::new();
    for i in 0..50 {
        let tag = tags[i % 2].clone();
        let rid = ReservationId::new(&f.sku, (i % 2) as u16, &uuid::Uuid::new_v4());
        let record = ShardKeys::new(&tag).record(&rid);
        if i < 40 {
            let _: i64 = f
                .pool
                .next()
                .hset(&record, ("status", "held"))
                .await
                .unwrap();
        }
        records.push((tag, record, i < 40));
    }
    // no replica: every WAIT 1 blocks its connection for the whole timeout
    let acks = Lanes::new(
        AckBatch {
            nodes: flashgate::inventory::nodes::Nodes::pool_only(f.pool.clone()),
            metrics: std::sync::Arc::new(Metrics::new(10)),
            script: f.scripts.touch.clone(),
            replicas: 1,
            timeout_ms: 200,
            record_ttl_ms: "90000000".into(),
        },
        64,
    );
    let (evalsha_before, wait_before) = (evalsha_calls(&f._redis), calls_of(&f._redis, "wait"));
    let replies = futures::future::join_all(records.iter().map(|(tag, record, _)| {
        let acks = acks.clone();
        let ack = Ack {
            tag: tag.clone(),
            record: record.clone(),
        };
        // one lane, as for the shards of one master
        async move { acks.submit("master", ack).await.unwrap() }
    }))
    .await;
    for ((_, record, exists), reply) in records.iter().zip(replies) {
        let items = scripts::array(reply).unwrap();
        let touched = scripts::int(&items[0]).unwrap();
        let acked = scripts::int(&items[1]).unwrap();
        assert_eq!((touched == 1, acked), (*exists, 0), "{record}");
        let pttl: i64 = f.pool.next().pttl(record).await.unwrap();
        if *exists {
            assert!(pttl > 0 && pttl <= 90_000_000, "{record} PTTL {pttl}");
        } else {
            assert_eq!(pttl, -2, "a lost record is not created by the touch");
        }
    }
    // 50 acknowledgements at once: the first alone, the rest behind its WAIT
    // in one batch of two touches (a NOSCRIPT reload adds one script call)
    let touches = evalsha_calls(&f._redis) - evalsha_before;
    let waits = calls_of(&f._redis, "wait") - wait_before;
    assert!(
        touches <= 5,
        "50 concurrent acks took {touches} touch calls"
    );
    assert!(waits <= 3, "50 concurrent acks took {waits} WAITs");
}

/// `calls=` of `cmdstat_<cmd>` in `INFO commandstats` (0 before the first).
fn calls_of(r: &RedisServer, cmd: &str) -> u64 {
    let prefix = format!("cmdstat_{cmd}:");
    r.cli(&["INFO", "commandstats"])
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

fn evalsha_calls(r: &RedisServer) -> u64 {
    calls_of(r, "evalsha")
}

#[tokio::test]
async fn a_claim_inside_reserve_stops_a_reused_key_before_the_shard_changes() {
    let f = fixture().await;
    f.preload(3, false).await;
    // "x1" was first used for another request (another SKU, say)
    let x1 = test_hasher().claim(&anon("x1")).record;
    let _: Value = f
        .run(
            &f.scripts.claim,
            vec![x1.clone()],
            vec!["60000".into(), "OTHER\n1:u".into()],
        )
        .await;
    let body = format!("{}\n1:user-1", f.sku);
    let reqs = [
        ("a1", 1, Some(body.as_str())),
        ("a1", 1, Some("another body")), // the same key, another request
        ("x1", 1, Some(body.as_str())),
        ("a2", 1, None), // a later step of a walk: claimed apart
        ("a3", 1, Some(body.as_str())),
    ];
    let rids: Vec<ReservationId> = reqs.iter().map(|r| f.rid_of(r.0)).collect();
    let first = reserve_batch_claiming(&f, &reqs, &rids).await;
    let kinds: Vec<&str> = first.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(kinds, ["held", "claimed", "claimed", "held", "held"]);
    assert_eq!(first[1][1], body, "the earlier body is answered");
    assert_eq!(first[2][1], "OTHER\n1:u");
    assert_eq!(f.books().await, (0, 3, 0));
    assert_eq!(f.events().await, 1 + 3, "preload + three holds");
    let x1_here: bool = f.pool.next().exists(f.k.idem(&anon("x1"))).await.unwrap();
    assert!(!x1_here, "a refused claim leaves no trace on the shard");
    let a1: String = f
        .pool
        .next()
        .get(test_hasher().claim(&anon("a1")).record)
        .await
        .unwrap();
    assert_eq!(
        a1.split_once('\0').map(|(b, _)| b),
        Some(body.as_str()),
        "the first request's body is the key's claim, then its hold: {a1:?}"
    );
    // the client library resends the whole call after a lost reply
    let again = reserve_batch_claiming(&f, &reqs, &rids).await;
    let kinds: Vec<&str> = again.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(kinds, ["replay", "claimed", "claimed", "replay", "replay"]);
    for i in [0, 3, 4] {
        assert_eq!(
            again[i][1],
            rids[i].to_string(),
            "each hold answers its own id"
        );
    }
    assert_eq!(f.books().await, (0, 3, 0));
    assert_eq!(f.events().await, 4, "nothing new happened");
}

#[tokio::test]
async fn a_claim_fixes_the_first_body_of_each_key_and_a_resend_changes_nothing() {
    let f = fixture().await;
    let rec = |k: &str| test_hasher().claim(&anon(k)).record;
    let claim = |pairs: Vec<(&str, &str)>| {
        let keys: Vec<String> = pairs.iter().map(|(k, _)| rec(k)).collect();
        let mut args = vec!["60000".to_string()];
        args.extend(pairs.iter().map(|(_, b)| b.to_string()));
        let f = &f;
        async move {
            scripts::array(f.run(&f.scripts.claim, keys, args).await)
                .unwrap()
                .iter()
                .map(|v| scripts::text(v).unwrap())
                .collect::<Vec<_>>()
        }
    };
    // one key twice in a batch: the second sees the first's body
    let batch = vec![("c1", "A\n1:u"), ("c2", "A\n1:v"), ("c1", "B\n1:u")];
    assert_eq!(claim(batch.clone()).await, ["", "", "A\n1:u"]);
    // resent: every key answers its first body (the same request, or a reuse)
    assert_eq!(claim(batch).await, ["A\n1:u", "A\n1:v", "A\n1:u"]);
    let ttl: i64 = f.pool.next().pttl(rec("c1")).await.unwrap();
    assert!(
        ttl > 0 && ttl <= 60_000,
        "the record expires with the key retention"
    );
}

#[tokio::test]
async fn a_resent_reserve_returns_the_first_result() {
    // The client library may resend an in-flight script after a dropped
    // connection: the second run must not reserve again.
    let f = fixture().await;
    f.preload(5, false).await;
    let rid = f.rid();
    let first = f.reserve_with(&rid, "k", 1, 60_000, true).await;
    let second = f.reserve_with(&rid, "k", 1, 60_000, true).await;
    assert_eq!(first[0], "held");
    assert_eq!(second[0], "replay");
    assert_eq!(second[1], rid.to_string());
    assert_eq!(f.books().await, (4, 1, 0));
}

/// A step whose claim claim.lua has just made new (claim body '!', Redis
/// Cluster) holds without reading the shard's verdicts: its record is
/// written with NX, so this very call resent (the client library resends
/// after a dropped connection) and a duplicate of the request that held
/// first are answered with the hold, never a second one.
#[tokio::test]
async fn a_hold_claimed_apart_is_written_with_nx_and_its_resend_replays_it() {
    let f = fixture().await;
    f.preload(5, false).await;
    let rid = f.rid();
    let apart = |rid: ReservationId| {
        let f = &f;
        async move {
            f.reserve_claimed(&rid, "a1", 1, "user-1", 60_000, "3", "!")
                .await
        }
    };
    let first = apart(rid.clone()).await;
    assert_eq!(first[0], "held", "{first:?}");
    let resent = apart(rid.clone()).await;
    assert_eq!(resent[0..2], ["replay".to_string(), rid.to_string()]);
    assert_eq!(f.books().await, (4, 1, 0), "one unit for the key");

    // a duplicate in flight (its claim not new: '') holds first under the
    // same token; the first request's step, made apart, finds it by NX
    let rid = f.rid();
    let dup = f
        .reserve_claimed(&rid, "a2", 1, "user-1", 60_000, "3", "")
        .await;
    assert_eq!(dup[0], "held", "{dup:?}");
    let own = f
        .reserve_claimed(&rid, "a2", 1, "user-1", 60_000, "3", "!")
        .await;
    assert_eq!(own[0..2], ["replay".to_string(), rid.to_string()]);
    assert_eq!(f.books().await, (3, 2, 0));

    // and with the shard dry by then, the refusal reads the verdicts first:
    // the hold, not "dry"
    f.reserve("x", 3, 60_000).await;
    assert_eq!(f.books().await.0, 0);
    let late = f
        .reserve_claimed(&rid, "a2", 1, "user-1", 60_000, "3", "!")
        .await;
    assert_eq!(late[0..2], ["replay".to_string(), rid.to_string()]);
    assert_eq!(f.books().await, (0, 5, 0));
}

/// Data layout 5: a key with a token is told to walk on by a marker at its
/// record key, so a step made apart that meets it by NX walks on too. The
/// step of a claim made apart refuses ("dry", marker written); the shard
/// gets a unit back; the step is resent, as the client library does after a
/// lost reply. The resend must walk on, not hold: the walk it belongs to
/// has moved on and may hold elsewhere. (With the walk-on verdict at
/// `idem:<key>`, where layout 3 kept it, the resend's NX write succeeded.)
#[tokio::test]
async fn a_resent_step_after_a_walk_on_never_holds_where_the_key_moved_on() {
    let f = fixture().await;
    f.preload(1, false).await;
    let other = f.reserve("x", 1, 60_000).await;
    assert_eq!(other[0], "held");
    let rid = f.rid();
    let step = || f.reserve_claimed(&rid, "b1", 1, "user-1", 60_000, "3", "!");
    assert_eq!(step().await, ["dry", "0"]);
    // the marker is no reservation to anyone who reads records
    assert!(f.record(&rid.to_string()).await.is_none());
    let missing = f.end(&f.scripts.confirm, &rid.to_string()).await;
    let never = f.end(&f.scripts.confirm, &f.rid().to_string()).await;
    assert_eq!(missing, never, "a marker confirms as no reservation");
    assert_eq!(
        f.extend(&rid.to_string(), 1000, 60_000).await[0],
        f.extend(&f.rid().to_string(), 1000, 60_000).await[0]
    );
    // a unit comes back
    let released = f.end(&f.scripts.release, &other[1]).await;
    assert_eq!(released[0..2], ["ok", "released"], "{released:?}");
    assert_eq!(f.books().await, (1, 0, 0));
    assert_eq!(step().await, ["moved", "1"], "the resend walks on");
    // and so does a later retry, its claim not new
    let retry = f
        .reserve_claimed(&rid, "b1", 1, "user-1", 60_000, "3", "")
        .await;
    assert_eq!(retry, ["moved", "1"]);
    // another body with the key is told apart by the marker
    let other_body = f
        .reserve_claimed(&rid, "b1", 2, "user-1", 60_000, "3", "")
        .await;
    assert_eq!(other_body, ["mismatch"]);
    assert_eq!(f.books().await, (1, 0, 0), "nothing held");
    assert_eq!(f.expire().await[0], "0", "the marker is no hold to expire");
}

#[tokio::test]
async fn confirm_release_are_idempotent_and_exclusive() {
    let f = fixture().await;
    f.preload(5, false).await;
    let a = f.reserve("a", 2, 60_000).await[1].clone();
    let b = f.reserve("b", 1, 60_000).await[1].clone();
    assert_eq!(
        f.end(&f.scripts.confirm, &a).await[..2],
        ["ok", "confirmed"]
    );
    assert_eq!(
        f.end(&f.scripts.confirm, &a).await[..2],
        ["ok", "confirmed"]
    );
    assert_eq!(
        f.end(&f.scripts.release, &a).await[..2],
        ["conflict", "confirmed"]
    );
    assert_eq!(f.books().await, (2, 1, 2));
    assert_eq!(f.end(&f.scripts.release, &b).await[..2], ["ok", "released"]);
    assert_eq!(f.end(&f.scripts.release, &b).await[..2], ["ok", "released"]);
    assert_eq!(
        f.end(&f.scripts.confirm, &b).await[..2],
        ["conflict", "released"]
    );
    assert_eq!(f.books().await, (3, 0, 2));
    let missing = f.rid().to_string();
    assert_eq!(f.end(&f.scripts.confirm, &missing).await, vec!["missing"]);
    assert_eq!(f.end(&f.scripts.release, &missing).await, vec!["missing"]);
    let holds: i64 = f.pool.next().zcard(f.k.holds()).await.unwrap();
    assert_eq!(holds, 0, "ended holds leave the expiry list");
}

#[tokio::test]
async fn a_record_keeps_free_text_users_and_keys_through_extend_replay_and_confirm() {
    let f = fixture().await;
    f.preload(5, false).await;
    // a record is one string (lua/lib.lua): the user's length tells where
    // it ends, so '|' in the user or the key cannot shift a field
    let (user, key) = ("ann|o'neil \"7\" \u{fc}|", "k|1|2");
    let rid = f.rid();
    let held = f.reserve_as(&rid, key, 2, user, 60_000, true).await;
    assert_eq!(held[0], "held");
    let exp0: i64 = held[2].parse().unwrap();
    let r = f.record(&held[1]).await.expect("the record");
    assert_eq!(
        (r.status.as_str(), r.qty, r.user.as_str(), r.idem.as_str()),
        ("held", 2, user, key)
    );
    assert_eq!((r.exp, r.first_exp, r.ended), (exp0, None, 0));
    assert!(r.created > 0 && r.created < exp0);

    // extend moves the deadline and the record's TTL with it, and keeps the
    // first deadline for replays
    let rkey = f.k.record(&rid);
    let ttl0: i64 = f.pool.next().pttl(&rkey).await.unwrap();
    let e = f.extend(&held[1], 120_000, 600_000).await;
    assert_eq!(e[..4], ["ok", "held", "2", user]);
    let exp1: i64 = e[4].parse().unwrap();
    assert!(exp1 > exp0);
    let ttl1: i64 = f.pool.next().pttl(&rkey).await.unwrap();
    assert!(
        ttl1 >= ttl0 + (exp1 - exp0) - 5_000,
        "TTL {ttl0} -> {ttl1} for a deadline moved by {}",
        exp1 - exp0
    );
    let r = f.record(&held[1]).await.expect("the record");
    assert_eq!((r.exp, r.first_exp), (exp1, Some(exp0)));
    assert_eq!((r.user.as_str(), r.idem.as_str()), (user, key));

    let again = f.reserve_as(&f.rid(), key, 2, user, 60_000, true).await;
    assert_eq!(again, ["replay", &held[1], "2", user, &held[2]]);

    let c = f.end(&f.scripts.confirm, &held[1]).await;
    assert_eq!(
        c,
        ["ok", "confirmed", "2", user, &exp1.to_string(), key, "0"]
    );
    let r = f.record(&held[1]).await.expect("the record");
    assert_eq!(r.status, "confirmed");
    assert!(r.ended >= r.created);
    assert_eq!((r.qty, r.user.as_str(), r.idem.as_str()), (2, user, key));
    assert_eq!((r.exp, r.first_exp), (exp1, Some(exp0)));
    assert_eq!(f.books().await, (3, 0, 2));
    assert_eq!(f.record(&f.rid().to_string()).await, None);
}

#[tokio::test]
async fn records_an_earlier_version_wrote_as_hashes_still_replay_and_end_exactly_once() {
    let f = fixture().await;
    f.preload(6, false).await;
    // three holds whose records are rewritten the way versions before
    // 2026-12-02 wrote them: a hash of fields with a TTL
    let mut held = Vec::new();
    for (key, hold_ms) in [("old-c", 60_000), ("old-r", 60_000), ("old-x", 30)] {
        let h = f.reserve(key, 1, hold_ms).await;
        assert_eq!(h[0], "held");
        let rec = f.record(&h[1]).await.expect("the record");
        let rkey = f.k.record(&ReservationId::parse(&h[1]).unwrap());
        let c = f.pool.next();
        let _: i64 = c.del(&rkey).await.unwrap();
        let _: i64 = c
            .hset(
                &rkey,
                vec![
                    ("qty", "1".to_string()),
                    ("user", "user-1".into()),
                    ("status", "held".into()),
                    ("created", rec.created.to_string()),
                    ("exp", rec.exp.to_string()),
                    ("idem", key.into()),
                ],
            )
            .await
            .unwrap();
        let _: bool = c.pexpire(&rkey, 90_000_000, None).await.unwrap();
        held.push((h, rkey));
    }
    let kind: String = f.pool.next().r#type(&held[0].1).await.unwrap();
    assert_eq!(kind, "hash");
    let r = f
        .record(&held[0].0[1])
        .await
        .expect("records.lua reads a hash");
    assert_eq!((r.status.as_str(), r.qty), ("held", 1));
    assert_eq!((r.user.as_str(), r.idem.as_str()), ("user-1", "old-c"));

    let again = f.reserve("old-c", 1, 60_000).await;
    assert_eq!(
        again,
        ["replay", &held[0].0[1], "1", "user-1", &held[0].0[2]]
    );
    for _ in 0..2 {
        assert_eq!(
            f.end(&f.scripts.confirm, &held[0].0[1]).await[..2],
            ["ok", "confirmed"]
        );
        assert_eq!(
            f.end(&f.scripts.release, &held[1].0[1]).await[..2],
            ["ok", "released"]
        );
    }
    tokio::time::sleep(Duration::from_millis(60)).await;
    let swept = f.expire().await;
    assert_eq!((swept[0].as_str(), swept[2].as_str()), ("1", "1"));
    assert_eq!(swept[3..], ["user-1", "old-x"]);
    assert_eq!(f.expire().await[0], "0", "a second sweep changes nothing");
    assert_eq!(f.books().await, (5, 0, 1));

    // each was written back as a string, its TTL kept
    for ((h, rkey), status) in held.iter().zip(["confirmed", "released", "expired"]) {
        let kind: String = f.pool.next().r#type(rkey).await.unwrap();
        assert_eq!(kind, "string");
        let ttl: i64 = f.pool.next().pttl(rkey).await.unwrap();
        assert!(ttl > 80_000_000, "TTL kept: {ttl}");
        let r = f.record(&h[1]).await.expect("the record");
        assert_eq!((r.status.as_str(), r.qty), (status, 1));
        assert!(r.ended > 0);
    }
}

#[tokio::test]
async fn confirm_after_the_deadline_loses_to_expiry_even_before_the_sweeper() {
    let f = fixture().await;
    f.preload(2, false).await;
    let a = f.reserve("a", 1, 30).await[1].clone();
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(
        f.end(&f.scripts.confirm, &a).await[..2],
        ["conflict", "expired"]
    );
    assert_eq!(
        f.books().await,
        (2, 0, 0),
        "the expired unit is back in stock"
    );
    // the sweeper finds nothing left to do: no second restock
    assert_eq!(f.expire().await[0], "0");
    assert_eq!(f.books().await, (2, 0, 0));
    let b = f.reserve("b", 1, 30).await[1].clone();
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(
        f.end(&f.scripts.release, &b).await[..2],
        ["conflict", "expired"]
    );
    assert_eq!(f.books().await, (2, 0, 0));
}

#[tokio::test]
async fn expire_returns_each_due_hold_exactly_once() {
    let f = fixture().await;
    f.preload(10, false).await;
    for i in 0..4 {
        f.reserve(&format!("short-{i}"), 1, 20).await;
    }
    let long = f.reserve("long", 2, 600_000).await[1].clone();
    assert_eq!(f.books().await, (4, 6, 0));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let first = f.expire().await;
    assert_eq!(first[0], "4");
    assert_eq!(first[2], "4");
    assert_eq!(f.books().await, (8, 2, 0));
    assert_eq!(f.expire().await[0], "0", "a second sweep changes nothing");
    assert_eq!(f.books().await, (8, 2, 0));
    assert_eq!(
        f.end(&f.scripts.confirm, &long).await[..2],
        ["ok", "confirmed"]
    );
    assert_eq!(f.books().await, (8, 0, 2));
}

#[tokio::test]
async fn extend_moves_the_deadline_within_the_maximum() {
    let f = fixture().await;
    f.preload(3, false).await;
    let r = f.reserve("a", 1, 1_000).await;
    let (rid, exp0): (String, i64) = (r[1].clone(), r[2].parse().unwrap());
    let e = f.extend(&rid, 5_000, 3_000).await;
    assert_eq!(e[..2], ["ok", "held"]);
    let exp1: i64 = e[4].parse().unwrap();
    let created = f.record(&rid).await.expect("the record").created;
    assert_eq!(exp1, created + 3_000, "bounded by the maximum total hold");
    assert!(exp1 > exp0);
    let score: f64 = f
        .pool
        .next()
        .zscore(f.k.holds(), rid.as_str())
        .await
        .unwrap();
    assert_eq!(score as i64, exp1, "the expiry list follows the deadline");
    // a second extend moves nothing further (the maximum), and a replay of
    // the key answers what its first answer said, not the moved deadline
    assert_eq!(f.extend(&rid, 5_000, 3_000).await[4], exp1.to_string());
    let replay = f.reserve("a", 1, 1_000).await;
    assert_eq!(replay[..2], ["replay".to_string(), rid.clone()]);
    assert_eq!(replay[4], exp0.to_string(), "the first answer's deadline");
    // ended holds cannot be extended
    f.end(&f.scripts.release, &rid).await;
    assert_eq!(
        f.extend(&rid, 5_000, 3_000).await[..2],
        ["conflict", "released"]
    );
    assert_eq!(
        f.extend(&f.rid().to_string(), 5_000, 3_000).await,
        vec!["missing"]
    );
}

#[tokio::test]
async fn transfers_move_units_once_and_keep_the_books() {
    let f = fixture().await;
    let to = ShardKeys::new(&keys::default_tag(&f.sku, 1));
    f.preload(5, false).await;
    f.run(
        &f.scripts.preload,
        vec![to.stock(), to.books(), to.events()],
        vec!["0".into(), "0".into()],
    )
    .await;
    let out = |xid: &str, want: i64| {
        f.run(
            &f.scripts.transfer_out,
            vec![
                f.k.stock(),
                f.k.books(),
                f.k.xfers(),
                f.k.events(),
                f.k.xdone(),
            ],
            vec![xid.into(), "1".into(), want.to_string()],
        )
    };
    // takes at most what the donor has, and a resent call takes nothing more
    assert_eq!(scripts::int(&out("x1", 8).await).unwrap(), 5);
    assert_eq!(scripts::int(&out("x1", 8).await).unwrap(), 5);
    assert_eq!(f.books().await, (0, 0, 0));
    assert_eq!(
        scripts::int(&out("x2", 1).await).unwrap(),
        0,
        "an empty donor gives nothing"
    );
    let into = || {
        f.run(
            &f.scripts.transfer_in,
            vec![to.stock(), to.books(), to.applied_transfers(), to.events()],
            vec!["x1".into(), "5".into(), "0".into()],
        )
    };
    assert_eq!(scripts::int(&into().await).unwrap(), 5);
    assert_eq!(
        scripts::int(&into().await).unwrap(),
        0,
        "applied once per transfer id"
    );
    assert_eq!(books_of(&f.pool, &to).await, (5, 0, 0));
}

#[tokio::test]
async fn the_purchase_cap_counts_each_reservation_once() {
    let f = fixture().await;
    let cap = keys::cap(&f.sku, "", "buyer");
    let take = |key: &str, qty: u32| {
        f.run(
            &f.scripts.cap_take,
            vec![cap.clone()],
            vec![key.into(), qty.to_string(), "3".into(), "60000".into()],
        )
    };
    let give = |key: &str| f.run(&f.scripts.cap_give, vec![cap.clone()], vec![key.into()]);
    let n = |v: Value| scripts::int(&v).unwrap();
    assert_eq!(n(take("a", 2).await), 1, "counted");
    assert_eq!(
        n(take("a", 2).await),
        2,
        "the same reservation again: not counted twice"
    );
    assert_eq!(n(take("b", 2).await), 0, "2 + 2 > 3");
    assert_eq!(n(take("c", 1).await), 1);
    assert_eq!(n(take("d", 1).await), 0, "at the cap");
    assert_eq!(n(give("a").await), 2);
    assert_eq!(n(give("a").await), 0, "given back once");
    assert_eq!(n(give("never").await), 0);
    assert_eq!(n(take("b", 2).await), 1, "room again");
    let total: i64 = f.pool.next().hget(&cap, "total").await.unwrap();
    assert_eq!(total, 3);
}

#[tokio::test]
async fn expire_names_the_buyers_whose_holds_ended() {
    let f = fixture().await;
    f.preload(5, false).await;
    f.reserve("short-key", 1, 10).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let r = f.expire().await;
    assert_eq!(
        r,
        vec![
            "1".to_string(),
            r[1].clone(),
            "1".into(),
            "user-1".into(),
            "short-key".into()
        ]
    );
}

/// A client's key as the implicit storefront (no auth) stores it.
fn anon(key: &str) -> ScopedKey {
    ScopedKey::new(&Tenant::Anonymous, &IdempotencyKey::parse(key).unwrap())
}
