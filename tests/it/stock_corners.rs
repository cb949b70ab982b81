//! Exactly once in the stock path's corners (issue 24): adding shards to a
//! live SKU, purchase caps given back exactly once, a hold whose record
//! vanished, a resent transfer after recovery. Each against a real Redis.

use crate::support;

use std::time::Duration;

use flashgate::domain::Sku;
use flashgate::inventory::PreloadSpec;
use hyper::StatusCode;
use support::{spawn_app_with as app_with, RedisServer, TestApp};

fn sku(s: &str) -> Sku {
    Sku::parse(s).expect("sku")
}

async fn preload(app: &TestApp, name: &str, stock: i64, shards: u16, force: bool, cap: u32) {
    app.state
        .inventory
        .preload_with(
            &sku(name),
            PreloadSpec {
                stock,
                shards,
                force,
                max_per_user: Some(cap),
                window: Default::default(),
            },
        )
        .await
        .expect("preload");
}

/// 24.1: 20 keys on a 1-shard SKU (15 held, 5 sold out), then a forced
/// preload to 2 shards. Every key keeps its first answer: the holders are
/// replayed (no second hold), the sold-out keys stay sold out — on the
/// instance that re-preloaded and on one that still caches 1 shard.
async fn adding_shards_keeps_every_key_to_its_first_answer(cap: u32) {
    let redis = RedisServer::start();
    // no sold-out fast path: a sold-out answer from memory records nothing,
    // so such a key is a new key to Redis (that path's own rule)
    let tweak = |c: &mut flashgate::config::Config| c.sold_out_cache_ms = 0;
    let a = app_with(&redis, tweak).await;
    let b = app_with(&redis, tweak).await;
    preload(&a, "grow", 15, 1, false, cap).await;

    let mut first = Vec::new();
    for i in 0..20 {
        let r = a
            .reserve(&format!("k{i}"), "grow", 1, &format!("u{i}"))
            .await;
        first.push(r);
    }
    let held = first
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .count();
    assert_eq!(held, 15);
    // instance b caches the 1-shard layout
    let r = b.reserve("k0", "grow", 1, "u0").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);

    preload(&a, "grow", 20, 2, true, cap).await;
    for app in [&a, &b] {
        for (i, was) in first.iter().enumerate() {
            let r = app
                .reserve(&format!("k{i}"), "grow", 1, &format!("u{i}"))
                .await;
            if was.status == StatusCode::CREATED {
                assert_eq!(r.status, StatusCode::OK, "k{i}: {:?}", r.body);
                assert_eq!(
                    r.body["reservation_id"], was.body["reservation_id"],
                    "k{i} got a second reservation"
                );
            } else {
                assert_eq!(
                    (r.status, r.code()),
                    (StatusCode::CONFLICT, "sold_out"),
                    "k{i} was sold out and must stay so: {:?}",
                    r.body
                );
            }
        }
    }
    // new keys on both instances, first on the stale one, then the fresh one
    for i in 0..10 {
        let key = format!("n{i}");
        let user = format!("v{i}");
        let (x, y) = if i % 2 == 0 { (&b, &a) } else { (&a, &b) };
        let one = x.reserve(&key, "grow", 1, &user).await;
        assert_eq!(one.status, StatusCode::CREATED, "{key}: {:?}", one.body);
        let two = y.reserve(&key, "grow", 1, &user).await;
        assert_eq!(two.status, StatusCode::OK, "{key}: {:?}", two.body);
        assert_eq!(one.body["reservation_id"], two.body["reservation_id"]);
    }
    let st = a.assert_books("grow").await;
    assert_eq!(st.held, 25, "one hold per key: {st:?}");
    // after the cache period, b walks with the new layout too
    tokio::time::sleep(Duration::from_millis(2100)).await;
    for (i, was) in first.iter().enumerate() {
        let r = b
            .reserve(&format!("k{i}"), "grow", 1, &format!("u{i}"))
            .await;
        let want = if was.status == StatusCode::CREATED {
            StatusCode::OK
        } else {
            StatusCode::CONFLICT
        };
        assert_eq!(r.status, want, "k{i}: {:?}", r.body);
    }
    assert_eq!(b.assert_books("grow").await.held, 25);
}

#[tokio::test]
async fn adding_shards_keeps_every_key_to_its_first_answer_without_a_cap() {
    adding_shards_keeps_every_key_to_its_first_answer(0).await;
}

#[tokio::test]
async fn adding_shards_keeps_every_key_to_its_first_answer_with_a_cap() {
    adding_shards_keeps_every_key_to_its_first_answer(1).await;
}

// ------------------------------------------------- 24.4 purchase caps

const CAP_U: &str = "fg:{cap:capped:u}";

/// A 1-shard SKU `capped` with `stock` units and a cap of 1 per buyer.
async fn capped_app(redis: &RedisServer, stock: i64) -> TestApp {
    let app = app_with(redis, |c| {
        c.sold_out_cache_ms = 0;
        c.hold_seconds = 1;
        c.max_hold_seconds = 2;
        // the service's own sweeper stays out of the way: tests sweep by hand
        c.sweep_interval_ms = 3_600_000;
    })
    .await;
    preload(&app, "capped", stock, 1, false, 1).await;
    app
}

async fn sweep(app: &TestApp) -> Result<i64, String> {
    flashgate::inventory::expiry::sweep(&app.state.inventory, &app.state.metrics, true)
        .await
        .map_err(|e| e.to_string())
}

async fn wait_past_deadline(answer: &support::Answer) {
    let exp = humantime::parse_rfc3339(answer.body["expires_at"].as_str().expect("exp"))
        .expect("rfc3339");
    while std::time::SystemTime::now() <= exp + Duration::from_millis(50) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_replay_of_a_released_hold_does_not_count_the_cap_again() {
    let redis = RedisServer::start();
    let app = capped_app(&redis, 5).await;
    let first = app.reserve("k1", "capped", 1, "u").await;
    assert_eq!(first.status, StatusCode::CREATED);
    let rid = first.body["reservation_id"].as_str().unwrap().to_string();
    assert_eq!(app.action(&rid, "release").await.status, StatusCode::OK);
    let replay = app.reserve("k1", "capped", 1, "u").await;
    assert_eq!(replay.status, StatusCode::OK, "{:?}", replay.body);
    assert_eq!(
        redis.cli(&["HGET", CAP_U, "total"]),
        "",
        "the ended hold still counts"
    );
    let next = app.reserve("k2", "capped", 1, "u").await;
    assert_eq!(next.status, StatusCode::CREATED, "{:?}", next.body);
    app.assert_books("capped").await;
}

#[tokio::test]
async fn a_cap_counted_by_an_earlier_attempt_is_given_back_when_the_walk_sells_out() {
    let redis = RedisServer::start();
    let app = capped_app(&redis, 1).await;
    let w = app.reserve("kw", "capped", 1, "w").await;
    assert_eq!(w.status, StatusCode::CREATED);
    // an earlier attempt with key kx counted the cap, and its walk timed out
    redis.cli(&["HSET", CAP_U, "total", "1", "k:kx", "1"]);
    let r = app.reserve("kx", "capped", 1, "u").await;
    assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "sold_out"));
    assert_eq!(
        redis.cli(&["HGET", CAP_U, "total"]),
        "",
        "sold out, yet counted"
    );
    // the same with the waitlist: the ticket counts the cap when promoted
    redis.cli(&["HSET", CAP_U, "total", "1", "k:ky", "1"]);
    let body = serde_json::json!({"sku": "capped", "qty": 1, "user_id": "u", "waitlist": true});
    let r = app
        .request(
            hyper::Method::POST,
            "/v1/reservations",
            &[
                ("content-type", "application/json"),
                ("idempotency-key", "ky"),
            ],
            body.to_string().into_bytes(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    assert_eq!(
        redis.cli(&["HGET", CAP_U, "total"]),
        "",
        "waitlisted, yet counted"
    );
}

#[tokio::test]
async fn the_sweeper_gives_caps_back_after_a_failed_give_back() {
    let redis = RedisServer::start();
    let app = capped_app(&redis, 5).await;
    let first = app.reserve("k1", "capped", 1, "u").await;
    assert_eq!(first.status, StatusCode::CREATED);
    // the cap's slot answers errors for a while (WRONGTYPE stands in for a
    // lost reply or an unreachable master)
    redis.cli(&["RENAME", CAP_U, "saved-cap"]);
    redis.cli(&["SET", CAP_U, "broken"]);
    wait_past_deadline(&first).await;
    assert!(sweep(&app).await.is_err(), "the give-back must fail here");
    assert_eq!(app.assert_books("capped").await.held, 0, "the hold ended");
    redis.cli(&["DEL", CAP_U]);
    redis.cli(&["RENAME", "saved-cap", CAP_U]);
    sweep(&app).await.expect("sweep");
    assert_eq!(redis.cli(&["HGET", CAP_U, "total"]), "", "the cap was lost");
    let next = app.reserve("k2", "capped", 1, "u").await;
    assert_eq!(next.status, StatusCode::CREATED, "{:?}", next.body);
}

#[tokio::test]
async fn reconcile_fix_settling_a_held_record_gives_its_cap_back() {
    let redis = RedisServer::start();
    let app = capped_app(&redis, 5).await;
    let first = app.reserve("k1", "capped", 1, "u").await;
    assert_eq!(first.status, StatusCode::CREATED);
    let rid = first.body["reservation_id"].as_str().unwrap().to_string();
    let inv = &app.state.inventory;
    let meta = inv.meta(&sku("capped")).await.unwrap().unwrap();
    let k = meta.keys(0);
    let newest = redis.cli(&["XREVRANGE", &k.events(), "+", "-", "COUNT", "1"]);
    let newest = newest.lines().next().unwrap().to_string();
    // the ledger says the hold expired: books 5 available, nothing held
    let mut args = vec![newest];
    args.extend(["5", "0", "0", "5", "0", "0"].map(String::from));
    args.extend([rid.clone(), "expired".into()]);
    let keys = vec![
        k.stock(),
        k.books(),
        k.holds(),
        k.events(),
        format!("{}{rid}", k.record_prefix()),
    ];
    let reply = flashgate::inventory::scripts::run(
        inv.nodes(),
        &app.state.metrics,
        &inv.scripts().fix,
        keys,
        args,
    )
    .await
    .expect("fix");
    assert_eq!(
        flashgate::inventory::scripts::text(
            &flashgate::inventory::scripts::array(reply).unwrap()[0]
        )
        .unwrap(),
        "ok"
    );
    sweep(&app).await.expect("sweep");
    assert_eq!(
        redis.cli(&["HGET", CAP_U, "total"]),
        "",
        "the settled hold still counts"
    );
    let next = app.reserve("k2", "capped", 1, "u").await;
    assert_eq!(next.status, StatusCode::CREATED, "{:?}", next.body);
}

// ------------------------------------------------- 24.5 a vanished record

#[tokio::test]
async fn a_due_hold_whose_record_vanished_still_returns_its_units() {
    let redis = RedisServer::start();
    let app = capped_app(&redis, 5).await;
    let gone = app.reserve("k1", "capped", 1, "u").await;
    assert_eq!(gone.status, StatusCode::CREATED, "{:?}", gone.body);
    let kept = app.reserve("k2", "capped", 1, "v").await;
    assert_eq!(kept.status, StatusCode::CREATED);
    let rid = gone.body["reservation_id"].as_str().unwrap().to_string();
    // evicted, or expired by its TTL while the sweeper stalled
    assert_eq!(
        redis.cli(&[
            "DEL",
            &support::record_at(&redis, &rid).expect("its record").0
        ]),
        "1"
    );
    wait_past_deadline(&gone).await;
    wait_past_deadline(&kept).await;
    sweep(&app).await.expect("sweep");
    let st = app.assert_books("capped").await;
    assert_eq!((st.available, st.held, st.sold), (5, 0, 0), "{st:?}");
    assert_eq!(st.per_shard[0].outstanding_holds, 0);
    assert_eq!(
        sweep(&app).await.expect("sweep"),
        0,
        "a second sweep changes nothing"
    );
    assert_eq!(app.assert_books("capped").await.available, 5);

    // a hold of more than one unit (its qty is kept apart: lib.lua's live_of)
    preload(&app, "plain", 5, 1, false, 0).await;
    let gone = app.reserve("k3", "plain", 3, "u").await;
    assert_eq!(gone.status, StatusCode::CREATED, "{:?}", gone.body);
    let rid = gone.body["reservation_id"].as_str().unwrap().to_string();
    let k = app
        .state
        .inventory
        .meta(&sku("plain"))
        .await
        .unwrap()
        .unwrap()
        .keys(0);
    assert_eq!(
        redis.cli(&[
            "DEL",
            &support::record_at(&redis, &rid).expect("its record").0
        ]),
        "1"
    );
    wait_past_deadline(&gone).await;
    sweep(&app).await.expect("sweep");
    let st = app.assert_books("plain").await;
    assert_eq!((st.available, st.held, st.sold), (5, 0, 0), "{st:?}");
    assert_eq!(
        redis.cli(&["EXISTS", &k.live()]),
        "0",
        "nothing left behind"
    );
}

// ------------------------------------------------- 24.6 transfers and clocks

#[tokio::test]
async fn a_transfer_out_resent_after_recovery_completed_takes_nothing() {
    let redis = RedisServer::start();
    let app = app_with(&redis, |c| c.sweep_interval_ms = 3_600_000).await;
    preload(&app, "moving", 10, 2, false, 0).await;
    let inv = &app.state.inventory;
    let meta = inv.meta(&sku("moving")).await.unwrap().unwrap();
    let donor = meta.keys(0);
    let transfer_out = || {
        flashgate::inventory::scripts::run(
            inv.nodes(),
            &app.state.metrics,
            &inv.scripts().transfer_out,
            vec![
                donor.stock(),
                donor.books(),
                donor.xfers(),
                donor.events(),
                donor.xdone(),
            ],
            vec!["x1".into(), "1".into(), "2".into()],
        )
    };
    let taken = transfer_out().await.expect("transfer_out");
    assert_eq!(flashgate::inventory::scripts::int(&taken).unwrap(), 2);
    // its mover died: recovery completes it
    assert_eq!(inv.recover_transfers(&meta, 0, 0).await.unwrap(), 2);
    // the client library resends the first call
    transfer_out().await.expect("resent transfer_out");
    inv.recover_transfers(&meta, 0, 0).await.unwrap();
    let st = app.assert_books("moving").await;
    assert_eq!(
        (
            st.per_shard[0].available,
            st.per_shard[1].available,
            st.available
        ),
        (3, 7, 10),
        "{st:?}"
    );
}

#[tokio::test]
async fn a_transfer_pending_past_the_applied_id_retention_is_not_applied_blind() {
    let redis = RedisServer::start();
    let app = app_with(&redis, |c| {
        c.sweep_interval_ms = 3_600_000;
        c.hold_seconds = 30;
        c.max_hold_seconds = 60;
        c.idempotency_ttl_seconds = 120;
    })
    .await;
    preload(&app, "old-xfer", 10, 2, false, 0).await;
    let inv = &app.state.inventory;
    let meta = inv.meta(&sku("old-xfer")).await.unwrap().unwrap();
    let (donor, to) = (meta.keys(0), meta.keys(1));
    let run = |script, keys, args| {
        flashgate::inventory::scripts::run(inv.nodes(), &app.state.metrics, script, keys, args)
    };
    let s = inv.scripts();
    run(
        &s.transfer_out,
        vec![
            donor.stock(),
            donor.books(),
            donor.xfers(),
            donor.events(),
            donor.xdone(),
        ],
        vec!["x1".into(), "1".into(), "2".into()],
    )
    .await
    .expect("out");
    run(
        &s.transfer_in,
        vec![to.stock(), to.books(), to.applied_transfers(), to.events()],
        vec!["x1".into(), "2".into(), "0".into(), "120000".into()],
    )
    .await
    .expect("in");
    // its mover died before the donor's record was cleared, and it stayed
    // pending longer than the recipient keeps applied ids (they trimmed it)
    let now = inv.redis_now_ms(&donor.xfers()).await.unwrap();
    redis.cli(&[
        "HSET",
        &donor.xfers(),
        "x1",
        &format!("1|2|{}", now - 100_000),
    ]);
    redis.cli(&["ZREM", &to.applied_transfers(), "x1"]);
    inv.recover_transfers(&meta, 0, 5_000)
        .await
        .expect("recovery");
    let st = inv.status(&sku("old-xfer")).await.unwrap();
    assert_eq!(
        (st.per_shard[0].available, st.per_shard[1].available),
        (3, 7),
        "applied twice: {st:?}"
    );
    assert_eq!(st.in_transit, 2, "left in transit for an operator: {st:?}");
}

/// 24.1, the sold-out mark: a key that walks the old, smaller shard count
/// and finds it empty says nothing about the shards added since.
#[tokio::test]
async fn an_old_key_sold_out_on_the_old_shards_does_not_mark_the_sku_sold_out() {
    let redis = RedisServer::start();
    let app = app_with(&redis, |c| c.sold_out_cache_ms = 60_000).await;
    preload(&app, "grown", 1, 1, false, 0).await;
    assert_eq!(
        app.reserve("a", "grown", 1, "ua").await.status,
        StatusCode::CREATED
    );
    let b = app.reserve("b", "grown", 1, "ub").await;
    assert_eq!((b.status, b.code()), (StatusCode::CONFLICT, "sold_out"));
    // one unit more on each of 2 shards
    preload(&app, "grown", 2, 2, true, 0).await;
    // a new key that starts on shard 0 takes its unit
    let c = (0..)
        .map(|i| format!("c{i}"))
        .find(|k| {
            // the test app has no keys: the implicit storefront's keys are unscoped
            flashgate::domain::ScopedKey::new(
                &flashgate::domain::Tenant::Anonymous,
                &flashgate::domain::IdempotencyKey::parse(k).unwrap(),
            )
            .stable_hash()
            .is_multiple_of(2)
        })
        .unwrap();
    let r = app.reserve(&c, "grown", 1, "uc").await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert!(r.body["reservation_id"]
        .as_str()
        .unwrap()
        .starts_with("grown.0."));
    // b walks shard 0 only, and it is empty: still sold out for b
    let b = app.reserve("b", "grown", 1, "ub").await;
    assert_eq!((b.status, b.code()), (StatusCode::CONFLICT, "sold_out"));
    // but shard 1 has a unit for a new key
    let d = app.reserve("d", "grown", 1, "ud").await;
    assert_eq!(
        d.status,
        StatusCode::CREATED,
        "a false sold out: {:?}",
        d.body
    );
    app.assert_books("grown").await;
}
