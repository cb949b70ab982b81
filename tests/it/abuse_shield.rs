//! The sold-out shield against a hostile crowd, on a real Redis: a client
//! cannot switch it off with no-op releases, refused requests leave (almost)
//! nothing in Redis, the shard key sets stay bounded, a replayed waitlist
//! join does not leave the gates up, and request fingerprints do not collide.
//! Every figure is a count read from Redis itself (INFO commandstats, DBSIZE,
//! used_memory), never a wall-clock time.

use crate::support;

use std::collections::HashMap;
use std::time::Duration;

use hyper::{Method, StatusCode};
use serde_json::Value;
use support::{eventually, spawn_app_with, RedisServer, TestApp};

async fn reserve_body(app: &TestApp, key: &str, body: Value) -> support::Answer {
    app.request(
        Method::POST,
        "/v1/reservations",
        &[
            ("content-type", "application/json"),
            ("idempotency-key", key),
        ],
        body.to_string().into_bytes(),
    )
    .await
}

async fn join(app: &TestApp, key: &str, sku: &str, user: &str) -> support::Answer {
    let body = serde_json::json!({"sku": sku, "qty": 1, "user_id": user, "waitlist": true});
    reserve_body(app, key, body).await
}

fn rid_of(a: &support::Answer) -> String {
    a.body["reservation_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no reservation id in {:?}", a.body))
        .to_string()
}

/// `cmdstat_<name>` → calls, from INFO commandstats.
fn command_calls(redis: &RedisServer) -> HashMap<String, u64> {
    let info = redis.cli(&["INFO", "commandstats"]);
    let mut calls = HashMap::new();
    for line in info.lines() {
        let Some(rest) = line.strip_prefix("cmdstat_") else {
            continue;
        };
        let Some((name, stats)) = rest.split_once(':') else {
            continue;
        };
        let n = stats
            .split(',')
            .find_map(|f| f.strip_prefix("calls="))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        calls.insert(name.to_string(), n);
    }
    calls
}

/// Commands the service sent between two readings (the readings' own INFO,
/// and the CLI's connection chatter, left out).
fn commands_between(before: &HashMap<String, u64>, after: &HashMap<String, u64>) -> u64 {
    after
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), "info" | "command" | "hello"))
        .map(|(name, n)| n - before.get(name).copied().unwrap_or(0))
        .sum()
}

/// Redis's `used_memory`. Between two readings it moves by tens of KB
/// with the connections' query and output buffers alone (counted apart,
/// and late, by Redis's client cron), so it only bounds the gross case; the
/// exact figure of what requests leave behind is [`keyspace_bytes`].
fn used_memory(redis: &RedisServer) -> i64 {
    redis
        .cli(&["INFO", "memory"])
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("used_memory")
}

/// The memory of every key in the database (`MEMORY USAGE … SAMPLES 0`,
/// summed in one script): new keys and existing keys that grew.
fn keyspace_bytes(redis: &RedisServer) -> i64 {
    redis
        .cli(&[
            "EVAL",
            "local t = 0 for _, k in ipairs(redis.call('KEYS', '*')) do \
             t = t + (redis.call('MEMORY', 'USAGE', k, 'SAMPLES', '0') or 0) end return t",
            "0",
        ])
        .parse()
        .expect("keyspace bytes")
}

fn dbsize(redis: &RedisServer) -> i64 {
    redis.cli(&["DBSIZE"]).parse().expect("DBSIZE")
}

/// 17.1: a looping client re-releasing one reservation that already ended
/// changes nothing, so it must not switch the sold-out shield off. The mark
/// lasts longer than the test (no re-check probes), the sweeper and the
/// promoter sleep: every command the loop causes is the no-op release
/// itself (one script call each) or something the release wrongly set off.
#[tokio::test]
async fn no_op_releases_do_not_switch_the_sold_out_shield_off() {
    let redis = RedisServer::start();
    let app = spawn_app_with(&redis, |c| {
        c.sold_out_cache_ms = 600_000;
        c.sweep_interval_ms = 600_000;
    })
    .await;
    app.preload("loop", 1, 2).await;
    let a = app.reserve("loop-a", "loop", 1, "alice").await;
    assert_eq!(a.status, StatusCode::CREATED);
    let dead = rid_of(&a);
    assert_eq!(app.action(&dead, "release").await.status, StatusCode::OK);
    let b = app.reserve("loop-b", "loop", 1, "bob").await;
    assert_eq!(b.status, StatusCode::CREATED);
    // a confirmed one too: confirm never returns units
    assert_eq!(
        app.action(&rid_of(&b), "confirm").await.status,
        StatusCode::OK
    );
    // the walk that makes the mark
    assert_eq!(
        app.reserve("loop-first", "loop", 1, "x").await.code(),
        "sold_out"
    );

    let rounds = 300u64;
    let no_ops = || async {
        let r = app.action(&dead, "release").await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        let c = app.action(&rid_of(&b), "confirm").await;
        assert_eq!(c.status, StatusCode::OK, "{:?}", c.body);
    };
    // what the no-op calls cost by themselves (their scripts' commands)
    let before = command_calls(&redis);
    for _ in 0..rounds {
        no_ops().await;
    }
    let own = commands_between(&before, &command_calls(&redis));
    let before = command_calls(&redis);
    for i in 0..rounds {
        no_ops().await;
        let s = app
            .reserve(&format!("loop-{i}"), "loop", 1, &format!("bot-{i}"))
            .await;
        assert_eq!(s.code(), "sold_out");
    }
    let after = command_calls(&redis);
    let extra = commands_between(&before, &after).saturating_sub(own);
    let per_answer = extra as f64 / rounds as f64;
    eprintln!("{rounds} sold-out answers amid no-op calls: {extra} extra Redis commands");
    let by_name: Vec<(&String, u64)> = after
        .iter()
        .map(|(name, n)| (name, n - before.get(name).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    assert!(
        per_answer <= 0.05,
        "{extra} Redis commands beyond the no-op calls for {rounds} sold-out answers ({per_answer:.2} per answer): {by_name:?}"
    );
    app.assert_books("loop").await;
}

/// 17.1: the shard key set (the winners the fast path loads) stays bounded
/// by the live and sold holds, however many holds come and go.
#[tokio::test]
async fn the_shard_key_set_stays_bounded_across_hold_and_release_cycles() {
    let redis = RedisServer::start();
    let app = spawn_app_with(&redis, |c| c.hold_seconds = 1).await;
    app.preload("cycle", 3, 1).await;
    for i in 0..200 {
        let a = app
            .reserve(&format!("cycle-{i}"), "cycle", 1, &format!("u{i}"))
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
        assert_eq!(
            app.action(&rid_of(&a), "release").await.status,
            StatusCode::OK
        );
    }
    // one sold, two that expire through the sweeper
    let sold = app.reserve("cycle-sold", "cycle", 1, "s").await;
    assert_eq!(
        app.action(&rid_of(&sold), "confirm").await.status,
        StatusCode::OK
    );
    for i in 0..2 {
        let a = app
            .reserve(&format!("cycle-exp-{i}"), "cycle", 1, "e")
            .await;
        assert_eq!(a.status, StatusCode::CREATED);
    }
    let swept = eventually(Duration::from_secs(10), || async {
        app.sku("cycle").await["available"].as_i64() == Some(2)
    })
    .await;
    assert!(swept, "the two holds expired");
    let members: i64 = redis
        .cli(&["SCARD", "fg:{cycle#0}:keys"])
        .parse()
        .expect("SCARD");
    assert!(
        members <= 1,
        "the key set holds {members} members for 1 sold unit and no live hold"
    );
    // and the key that bought is still replayed while the SKU is sold out
    let live = app.reserve("cycle-live-1", "cycle", 1, "l").await;
    assert_eq!(live.status, StatusCode::CREATED);
    let live2 = app.reserve("cycle-live-2", "cycle", 1, "l").await;
    assert_eq!(live2.status, StatusCode::CREATED);
    assert_eq!(
        app.reserve("cycle-none", "cycle", 1, "n").await.code(),
        "sold_out"
    );
    let again = app.reserve("cycle-sold", "cycle", 1, "s").await;
    assert_eq!(again.status, StatusCode::OK, "{:?}", again.body);
    app.assert_books("cycle").await;
}

/// 17.4: refused requests — `waitlist: true` ones answered `waitlist_full`
/// and plain ones answered `sold_out` — leave no per-request state in Redis.
#[tokio::test]
async fn refused_requests_leave_no_state_in_redis() {
    let redis = RedisServer::start();
    let app = spawn_app_with(&redis, |c| c.waitlist_capacity = 1).await;
    app.preload("full", 1, 8).await;
    let a = app.reserve("full-a", "full", 1, "alice").await;
    assert_eq!(a.status, StatusCode::CREATED);
    let b = join(&app, "full-b", "full", "bob").await;
    assert_eq!(b.status, StatusCode::ACCEPTED, "{:?}", b.body);
    // warm up: the first refusals walk and make the marks
    assert_eq!(
        join(&app, "full-w", "full", "w").await.code(),
        "waitlist_full"
    );
    assert_eq!(
        app.reserve("full-p", "full", 1, "p").await.code(),
        "sold_out"
    );

    let n = 2000i64;
    let (keys0, bytes0, mem0) = (dbsize(&redis), keyspace_bytes(&redis), used_memory(&redis));
    for i in 0..n {
        let r = join(&app, &format!("wf-{i}"), "full", &format!("bot-{i}")).await;
        assert_eq!(r.code(), "waitlist_full", "{:?}", r.body);
        let p = app
            .reserve(&format!("so-{i}"), "full", 1, &format!("bot-{i}"))
            .await;
        assert_eq!(p.code(), "sold_out", "{:?}", p.body);
    }
    let (keys1, bytes1, mem1) = (dbsize(&redis), keyspace_bytes(&redis), used_memory(&redis));
    let refused = 2 * n;
    let per_request = (bytes1 - bytes0) as f64 / refused as f64;
    let gross = (mem1 - mem0) as f64 / refused as f64;
    eprintln!(
        "{refused} refused requests: {} new keys, keyspace {} bytes ({per_request:.2} per request), used_memory {} bytes ({gross:.1} per request)",
        keys1 - keys0,
        bytes1 - bytes0,
        mem1 - mem0
    );
    assert!(
        keys1 - keys0 <= 3,
        "{} new keys after {refused} refused requests",
        keys1 - keys0
    );
    assert!(
        per_request <= 1.0,
        "{} bytes more in Redis's keyspace after {refused} refused requests ({per_request:.1} per request)",
        bytes1 - bytes0
    );
    // the unfixed code left ~800 bytes per request; buffers move <= ~100 KB
    assert!(
        gross <= 64.0,
        "used_memory grew {} bytes after {refused} refused requests ({gross:.1} per request)",
        mem1 - mem0
    );
    // the buyer who joined still gets their ticket back, not "full"
    let again = join(&app, "full-b", "full", "bob").await;
    assert_eq!(again.status, StatusCode::OK, "{:?}", again.body);
    let st = app.assert_books("full").await;
    assert_eq!(st.held + st.sold + st.available, 1, "0 oversold");
}

/// 24.2: a replayed join after the queue emptied must not put the gates
/// back up for good.
#[tokio::test]
async fn a_replayed_join_does_not_leave_the_gates_up() {
    let redis = RedisServer::start();
    let app = spawn_app_with(&redis, |_| {}).await;
    app.preload("gate", 1, 1).await;
    let a = app.reserve("gate-a", "gate", 1, "alice").await;
    assert_eq!(a.status, StatusCode::CREATED);
    let b = join(&app, "gate-b", "gate", "bob").await;
    assert_eq!(b.status, StatusCode::ACCEPTED, "{:?}", b.body);
    let ticket = b.body["ticket_id"].as_str().expect("ticket").to_string();
    assert_eq!(
        app.action(&rid_of(&a), "release").await.status,
        StatusCode::OK
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let b_rid = loop {
        let t = app.get(&format!("/v1/waitlist/{ticket}")).await.body;
        if t["status"] == "promoted" {
            break t["reservation_id"].as_str().unwrap_or("").to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "bob's ticket was not promoted: {t}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(app.action(&b_rid, "release").await.status, StatusCode::OK);
    let replay = join(&app, "gate-b", "gate", "bob").await;
    assert_eq!(replay.status, StatusCode::OK, "{:?}", replay.body);
    assert_eq!(replay.body["status"], "promoted");
    let mut n = 0;
    let sold = eventually(Duration::from_secs(5), || {
        n += 1;
        let key = format!("gate-c-{n}");
        let app = &app;
        async move { app.reserve(&key, "gate", 1, "carol").await.status == StatusCode::CREATED }
    })
    .await;
    let st = app.sku("gate").await;
    assert!(
        sold,
        "the returned unit stays unsellable: {st} (waitlist empty, gates up)"
    );
    app.assert_books("gate").await;
}

/// 24.3: `qty`, `waitlist` and `user_id` are encoded so that no two
/// different bodies share a fingerprint.
#[tokio::test]
async fn a_waitlist_flag_cannot_hide_in_the_user_id() {
    let redis = RedisServer::start();
    let app = spawn_app_with(&redis, |_| {}).await;
    app.preload("fp", 5, 1).await;
    let first = app.reserve("fp-k", "fp", 1, "w:bob").await;
    assert_eq!(first.status, StatusCode::CREATED);
    let second = join(&app, "fp-k", "fp", "bob").await;
    assert_eq!(
        second.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{:?}",
        second.body
    );
    assert_eq!(second.code(), "idempotency_key_reused");
    // and the other way round
    let w = join(&app, "fp-k2", "fp", "bob").await;
    assert_eq!(w.status, StatusCode::CREATED, "{:?}", w.body);
    let plain = app.reserve("fp-k2", "fp", 1, "w:bob").await;
    assert_eq!(plain.code(), "idempotency_key_reused", "{:?}", plain.body);
    // the same bodies are still the same request
    let again = join(&app, "fp-k2", "fp", "bob").await;
    assert_eq!(again.status, StatusCode::OK, "{:?}", again.body);
    app.assert_books("fp").await;
}

/// 17.4: a unit that comes back while buyers wait goes to the queue, not to
/// new buyers: the return keeps the sold-out mark, so the crowd's refusals
/// after it do not walk (and leave their keys' claims and tombstones).
#[tokio::test]
async fn a_return_that_goes_to_the_queue_keeps_the_shield_up() {
    let redis = RedisServer::start();
    let app = spawn_app_with(&redis, |c| c.waitlist_capacity = 2).await;
    app.preload("queue", 2, 2).await;
    let a0 = app.reserve("queue-a0", "queue", 1, "a0").await;
    let a1 = app.reserve("queue-a1", "queue", 1, "a1").await;
    assert_eq!(
        (a0.status, a1.status),
        (StatusCode::CREATED, StatusCode::CREATED)
    );
    for who in ["b", "c"] {
        let j = join(&app, &format!("queue-{who}"), "queue", who).await;
        assert_eq!(j.status, StatusCode::ACCEPTED, "{:?}", j.body);
    }
    // past one mark period: the next refusal re-checks and sees the gates
    tokio::time::sleep(Duration::from_millis(250)).await;
    for i in 0..3 {
        let r = app
            .reserve(&format!("queue-pre-{i}"), "queue", 1, "x")
            .await;
        assert_eq!(r.code(), "sold_out");
    }
    assert_eq!(
        app.action(&rid_of(&a0), "release").await.status,
        StatusCode::OK
    );
    for i in 0..200 {
        let r = app
            .reserve(&format!("post-{i}"), "queue", 1, &format!("bot-{i}"))
            .await;
        assert_eq!(r.code(), "sold_out", "{:?}", r.body);
    }
    let claims = redis.cli(&["--scan", "--pattern", "fg:{idem~*}:post-*"]);
    let walked = claims.lines().filter(|l| !l.is_empty()).count();
    assert_eq!(walked, 0, "refusals after the return walked: {claims}");
    // the returned unit went to the head of the queue
    let st = app.assert_books("queue").await;
    assert_eq!(st.held + st.sold, 2);
    assert_eq!(st.waitlist, 1);
}

/// 17.1 + 17.4 together, concurrently: bots with fresh keys (plain and
/// `waitlist: true`) and no-op release loopers against an 8-shard SKU that
/// is sold out with a full waitlist. Nothing is left behind in Redis, and
/// no refusal walks the shards. The mark period is 1 s here so that a
/// re-check slowed by a busy test machine cannot overrun it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_crowd_leaves_nothing_behind() {
    let redis = RedisServer::start();
    let app = std::sync::Arc::new(
        spawn_app_with(&redis, |c| {
            c.waitlist_capacity = 1;
            c.sold_out_cache_ms = 1000;
        })
        .await,
    );
    app.preload("crowd", 1, 8).await;
    let a = app.reserve("crowd-a", "crowd", 1, "alice").await;
    let dead = rid_of(&a);
    assert_eq!(app.action(&dead, "release").await.status, StatusCode::OK);
    let b = app.reserve("crowd-b", "crowd", 1, "bob").await;
    assert_eq!(b.status, StatusCode::CREATED);
    let j = join(&app, "crowd-j", "crowd", "joe").await;
    assert_eq!(j.status, StatusCode::ACCEPTED, "{:?}", j.body);

    let keys_before: std::collections::HashSet<String> = redis
        .cli(&["KEYS", "*"])
        .lines()
        .map(String::from)
        .collect();
    let bytes0 = keyspace_bytes(&redis);
    let mut tasks = Vec::new();
    for t in 0..24 {
        let app = app.clone();
        let dead = dead.clone();
        tasks.push(tokio::spawn(async move {
            let mut refused = 0i64;
            for i in 0..100 {
                if t < 4 {
                    let r = app.action(&dead, "release").await;
                    assert_eq!(r.status, StatusCode::OK);
                } else if t % 2 == 0 {
                    let r = app
                        .reserve(&format!("c-{t}-{i}"), "crowd", 1, &format!("u{t}-{i}"))
                        .await;
                    assert_eq!(r.code(), "sold_out", "{:?}", r.body);
                    refused += 1;
                } else {
                    let r = join(&app, &format!("w-{t}-{i}"), "crowd", &format!("u{t}-{i}")).await;
                    assert_eq!(r.code(), "waitlist_full", "{:?}", r.body);
                    refused += 1;
                }
            }
            refused
        }));
    }
    let mut refused = 0;
    for t in tasks {
        refused += t.await.expect("crowd task");
    }
    let keys_after: std::collections::HashSet<String> = redis
        .cli(&["KEYS", "*"])
        .lines()
        .map(String::from)
        .collect();
    let mut new: Vec<&String> = keys_after.difference(&keys_before).collect();
    new.sort();
    let grown = keyspace_bytes(&redis) - bytes0;
    eprintln!(
        "{refused} refused amid no-op loops: {} new keys, {grown} bytes",
        new.len()
    );
    // the promoter's lease may come and go
    new.retain(|k| !k.ends_with(":lease"));
    assert!(new.is_empty(), "refusals left keys behind: {new:?}");
    assert!(
        grown as f64 / refused as f64 <= 1.0,
        "{grown} bytes more in Redis's keyspace after {refused} refusals"
    );
    let st = app.assert_books("crowd").await;
    assert_eq!((st.held, st.available, st.waitlist), (1, 0, 1));
}

/// A re-check of the sold-out mark that is slow (a loaded or paused Redis)
/// must not send the crowd walking: before, one period after the mark ran
/// out every request walked, and each walk left its key's claim and a
/// tombstone per shard. Now the crowd keeps the answer until the re-check
/// is done (bounded by two Redis timeouts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_re_check_does_not_send_the_crowd_walking() {
    let redis = RedisServer::start();
    let app = std::sync::Arc::new(
        spawn_app_with(&redis, |c| {
            c.sold_out_cache_ms = 100;
            c.sweep_interval_ms = 600_000;
        })
        .await,
    );
    app.preload("slow", 1, 4).await;
    assert_eq!(
        app.reserve("slow-a", "slow", 1, "alice").await.status,
        StatusCode::CREATED
    );
    // the walk that makes the mark
    assert_eq!(
        app.reserve("slow-0", "slow", 1, "x").await.code(),
        "sold_out"
    );
    tokio::time::sleep(Duration::from_millis(150)).await; // the mark runs out
    let keys_before = redis.cli(&["DBSIZE"]);

    redis.pause();
    // this one re-checks, and waits on the paused Redis
    let probe = {
        let app = app.clone();
        tokio::spawn(async move { app.reserve("slow-probe", "slow", 1, "p").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await; // past one more period
    let crowd: Vec<_> = (0..20)
        .map(|i| {
            let app = app.clone();
            tokio::spawn(async move {
                app.reserve(&format!("slow-crowd-{i}"), "slow", 1, &format!("c{i}"))
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answered_while_paused = crowd.iter().filter(|t| t.is_finished()).count();
    redis.resume();
    for t in crowd {
        let a = t.await.expect("task");
        assert_eq!(a.code(), "sold_out", "{:?}", a.body);
    }
    assert_eq!(probe.await.expect("task").code(), "sold_out");
    assert_eq!(
        answered_while_paused, 20,
        "the crowd waited on Redis instead of keeping the answer"
    );
    assert_eq!(
        redis.cli(&["DBSIZE"]),
        keys_before,
        "refusals during a slow re-check left keys in Redis"
    );
}
