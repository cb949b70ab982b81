//! Exactly once in the stock path's corners (issue 24): adding shards to a
//! live SKU, purchase caps given back exactly once, a hold whose record
//! vanished, a resent transfer after recovery. Each against a real Redis.

mod support;

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
