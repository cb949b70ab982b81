//! Rolling upgrades: the data layout is versioned in each SKU's meta, so an
//! instance of an earlier version, which reads the shard count from the
//! field `shards` only, refuses a SKU this version has touched (404) instead
//! of misreading scoped keys, counted claims and the rest; and this version
//! refuses a layout newer than its own (lua/meta_upgrade.lua).

use crate::support;

use hyper::StatusCode;
use support::{spawn_app_with, RedisServer};

/// Rewrite `sku`'s meta the way every version before layout 2 wrote it.
fn as_layout_1(redis: &RedisServer, sku: &str) {
    let meta = format!("fg:{{{sku}}}:meta");
    let count = redis.cli(&["HGET", &meta, "shard_count"]);
    assert!(!count.is_empty(), "preloaded in layout 2");
    redis.cli(&["HDEL", &meta, "shard_count", "layout"]);
    redis.cli(&["HSET", &meta, "shards", &count]);
}

#[tokio::test]
async fn a_preload_writes_the_layout_an_older_instance_cannot_read() {
    let redis = RedisServer::start();
    let app = spawn_app_with(&redis, |_| {}).await;
    app.preload("new", 4, 2).await;
    let meta = "fg:{new}:meta";
    assert_eq!(redis.cli(&["HGET", meta, "layout"]), "2");
    assert_eq!(redis.cli(&["HGET", meta, "shard_count"]), "2");
    // the one field an earlier version reads the SKU by: absent, so it
    // answers the SKU as unknown rather than serving it
    assert_eq!(redis.cli(&["HEXISTS", meta, "shards"]), "0");
    let r = app.reserve("k1", "new", 1, "u1").await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    app.stop().await;
}

#[tokio::test]
async fn a_sku_an_earlier_version_loaded_is_converted_and_still_sold_exactly_once() {
    let redis = RedisServer::start();
    let first = spawn_app_with(&redis, |_| {}).await;
    first.preload("old", 3, 2).await;
    let held = first.reserve("k1", "old", 1, "u1").await;
    assert_eq!(held.status, StatusCode::CREATED, "{:?}", held.body);
    first.stop().await;
    as_layout_1(&redis, "old");

    // a new instance (no cached layout) meets the layout-1 meta
    let app = spawn_app_with(&redis, |_| {}).await;
    let replay = app.reserve("k1", "old", 1, "u1").await;
    assert_eq!(replay.status, StatusCode::OK, "{:?}", replay.body);
    assert_eq!(replay.body["reservation_id"], held.body["reservation_id"]);
    let meta = "fg:{old}:meta";
    assert_eq!(redis.cli(&["HGET", meta, "layout"]), "2");
    assert_eq!(redis.cli(&["HGET", meta, "shard_count"]), "2");
    assert_eq!(redis.cli(&["HEXISTS", meta, "shards"]), "0");
    for i in 2..=3 {
        let r = app.reserve(&format!("k{i}"), "old", 1, "u").await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    }
    let r = app.reserve("k4", "old", 1, "u").await;
    assert_eq!(r.code(), "sold_out", "{:?}", r.body);
    let books = app.assert_books("old").await;
    assert_eq!((books.available, books.held), (0, 3));

    // an earlier instance's forced preload writing `shards` again after the
    // conversion: the larger count wins and the field goes again
    redis.cli(&["HSET", meta, "shards", "1"]);
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await; // the layout cache
    assert_eq!(app.sku("old").await["shards"], 2);
    assert_eq!(redis.cli(&["HEXISTS", meta, "shards"]), "0");
    app.stop().await;
}

#[tokio::test]
async fn a_layout_newer_than_this_version_is_refused_and_nothing_is_written() {
    let redis = RedisServer::start();
    let app = spawn_app_with(&redis, |_| {}).await;
    app.preload("future", 2, 1).await;
    app.stop().await;
    redis.cli(&["HSET", "fg:{future}:meta", "layout", "3"]);
    let keys_before = redis.cli(&["DBSIZE"]);

    let app = spawn_app_with(&redis, |_| {}).await;
    let r = app.reserve("k1", "future", 1, "u1").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    let message = r.body["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains("layout"), "{message}");
    assert_eq!(redis.cli(&["DBSIZE"]), keys_before, "a refused SKU wrote");
    assert_eq!(redis.cli(&["GET", "fg:{future#0}:stock"]), "2");
    app.stop().await;
}
