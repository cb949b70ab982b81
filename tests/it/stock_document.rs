//! The public stock document (`GET /v1/skus/{sku}`) served from a
//! per-instance snapshot: fresh after this instance's own changes, within
//! `stock_cache_ms` after another's, cheap in Redis commands, cacheable by
//! its ETag, bounded in memory; the admin document stays live.

use crate::support;

use support::spawn_app_with as app_with;

use std::time::Duration;

use futures::future::join_all;
use hyper::{Method, StatusCode};
use support::{command_calls, commands_since, eventually, RedisServer};

/// No sweeper or promoter rounds: every command counted is a request's.
fn quiet(c: &mut flashgate::config::Config, stock_cache_ms: u64) {
    c.stock_cache_ms = stock_cache_ms;
    c.sweep_interval_ms = 3_600_000;
}

fn counts(doc: &serde_json::Value) -> (i64, i64, i64) {
    (
        doc["available"].as_i64().unwrap(),
        doc["held"].as_i64().unwrap(),
        doc["sold"].as_i64().unwrap(),
    )
}

#[tokio::test]
async fn this_instance_s_holds_and_releases_show_at_once_others_within_the_period() {
    let redis = RedisServer::start();
    // a period far longer than the test: what `a` shows without reading
    // Redis again is what it changed itself
    let a = app_with(&redis, |c| quiet(c, 60_000)).await;
    let b = app_with(&redis, |c| quiet(c, 60_000)).await;
    a.preload("tee", 10, 4).await;
    assert_eq!(counts(&a.sku("tee").await), (10, 0, 0));

    let held = a.reserve("k1", "tee", 2, "alice").await;
    assert_eq!(held.status, StatusCode::CREATED);
    assert_eq!(counts(&a.sku("tee").await), (8, 2, 0), "own hold, at once");
    // another instance's hold is not read again within the period...
    assert_eq!(
        b.reserve("k2", "tee", 1, "bob").await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        counts(&a.sku("tee").await),
        (8, 2, 0),
        "a snapshot, not a read"
    );
    // ...while the admin document reads the books every time
    let admin = a.get("/admin/v1/skus/tee").await;
    assert_eq!(counts(&admin.body), (7, 3, 0), "the admin document is live");

    let rid = held.body["reservation_id"].as_str().unwrap();
    assert_eq!(a.action(rid, "release").await.status, StatusCode::OK);
    assert_eq!(
        counts(&a.sku("tee").await),
        (10, 0, 0),
        "own release, at once"
    );
    // a no-op release returns nothing: the document does not move
    assert_eq!(a.action(rid, "release").await.status, StatusCode::OK);
    assert_eq!(counts(&a.sku("tee").await), (10, 0, 0));
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn another_instance_s_hold_shows_within_the_period() {
    let redis = RedisServer::start();
    let a = app_with(&redis, |c| c.stock_cache_ms = 200).await;
    let b = app_with(&redis, |c| c.stock_cache_ms = 200).await;
    a.preload("cap", 5, 2).await;
    assert_eq!(counts(&a.sku("cap").await), (5, 0, 0));
    assert_eq!(
        b.reserve("k", "cap", 1, "u").await.status,
        StatusCode::CREATED
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            counts(&a.sku("cap").await) == (4, 1, 0)
        })
        .await,
        "another instance's hold is seen within one period and a read"
    );
}

#[tokio::test]
async fn a_poll_storm_costs_at_most_one_redis_command_per_hundred_gets() {
    let redis = RedisServer::start();
    let app = app_with(&redis, |c| quiet(c, 60_000)).await;
    // 64 shards: a live read is 2 commands per shard, 129 per GET
    app.preload("hot", 640, 64).await;
    assert_eq!(counts(&app.sku("hot").await), (640, 0, 0));

    let before = command_calls(&redis);
    let n = 1_000u64;
    for _ in 0..(n / 100) {
        let batch = join_all((0..100).map(|_| app.get("/v1/skus/hot"))).await;
        assert!(batch.iter().all(|a| a.status == StatusCode::OK));
    }
    let used = commands_since(&redis, &before);
    assert!(
        used <= n.div_ceil(100),
        "{n} GETs of the stock document ran {used} Redis commands"
    );
}

#[tokio::test]
async fn a_matching_etag_is_answered_304_and_a_stale_one_200() {
    let redis = RedisServer::start();
    let app = app_with(&redis, |c| quiet(c, 1_500)).await;
    app.preload("mug", 3, 2).await;
    let first = app.get("/v1/skus/mug").await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.headers["cache-control"], "public, max-age=2");
    let tag = first.headers["etag"].to_str().unwrap().to_string();
    assert!(
        tag.starts_with('"') && tag.ends_with('"'),
        "a strong tag: {tag}"
    );

    let get_if = |tag: String| {
        let app = &app;
        async move {
            app.request(
                Method::GET,
                "/v1/skus/mug",
                &[("if-none-match", tag.as_str())],
                vec![],
            )
            .await
        }
    };
    for header in [
        tag.clone(),
        format!("W/{tag}"),
        format!("\"x\", {tag}"),
        "*".into(),
    ] {
        let same = get_if(header.clone()).await;
        assert_eq!(same.status, StatusCode::NOT_MODIFIED, "{header}");
        assert_eq!(
            same.body,
            serde_json::Value::String(String::new()),
            "no body"
        );
        assert_eq!(same.headers["etag"], tag.as_str());
        assert_eq!(same.headers["cache-control"], "public, max-age=2");
    }
    assert_eq!(get_if("\"other\"".into()).await.status, StatusCode::OK);

    // the stock moves: the old tag is stale, the new document has a new one
    assert_eq!(
        app.reserve("k", "mug", 1, "u").await.status,
        StatusCode::CREATED
    );
    let moved = get_if(tag.clone()).await;
    assert_eq!(moved.status, StatusCode::OK);
    assert_eq!(counts(&moved.body), (2, 1, 0));
    assert_ne!(moved.headers["etag"], tag.as_str());

    // read live: no caching allowed, the tag still works
    let live = app_with(&redis, |c| quiet(c, 0)).await;
    let doc = live.get("/v1/skus/mug").await;
    assert_eq!(doc.headers["cache-control"], "no-cache");
    assert_eq!(
        doc.headers["etag"], moved.headers["etag"],
        "same content, same tag"
    );
}

#[tokio::test]
async fn unknown_skus_stay_cheap_and_bounded_and_a_preload_shows_at_once() {
    let redis = RedisServer::start();
    let app = app_with(&redis, |c| quiet(c, 60_000)).await;
    // a flood of names that were never loaded: 404s, and the memory of them
    // stays within its bound
    let n = flashgate::inventory::stock_doc::MAX_ABSENT * 2 + 100;
    for chunk in (0..n).collect::<Vec<_>>().chunks(200) {
        let paths: Vec<String> = chunk.iter().map(|i| format!("/v1/skus/nope-{i}")).collect();
        let answers = join_all(paths.iter().map(|p| app.get(p))).await;
        assert!(answers.iter().all(|a| a.code() == "unknown_sku"));
    }
    let (docs, absent) = app.state.inventory.stock_cache_len();
    assert_eq!(docs, 0, "only loaded SKUs get a snapshot");
    assert!(
        absent <= flashgate::inventory::stock_doc::MAX_ABSENT,
        "{absent} names remembered"
    );

    // one name polled before its preload: one read per period, not per poll
    assert_eq!(app.get("/v1/skus/soon").await.code(), "unknown_sku");
    let before = command_calls(&redis);
    for _ in 0..50 {
        assert_eq!(app.get("/v1/skus/soon").await.code(), "unknown_sku");
    }
    assert_eq!(commands_since(&redis, &before), 0);
    // loaded through this instance: seen at once, not after the period
    app.preload("soon", 7, 2).await;
    assert_eq!(counts(&app.sku("soon").await), (7, 0, 0));
}
