//! Rolling upgrades: the data layout is versioned in each SKU's meta, so an
//! instance of an earlier version, which reads the shard count from the
//! field `shards` only, refuses a SKU this version has touched (404) instead
//! of misreading scoped keys, counted claims and the rest; and this version
//! refuses a layout newer than its own (lua/meta_upgrade.lua).
//!
//! Data layout 3 (issue 23): a hold's verdict is its record, named by the
//! token in the key's claim (no `R` verdict key), and Redis holds the
//! store's layout in `fg:layout`: an instance that finds one it does not know
//! refuses to serve (`/readyz` and reserves 503); `flashgate migrate-layout`
//! upgrades a store between sales.

use crate::support;

use std::process::Command;
use std::time::Duration;

use hyper::{Method, StatusCode};
use support::{eventually, spawn_app_with, Answer, RedisServer, TestApp};

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
    // layout 3: an instance of layout 2 refuses it (503), one of layout 1
    // answers it as unknown
    assert_eq!(redis.cli(&["HGET", meta, "layout"]), "3");
    assert_eq!(redis.cli(&["GET", "fg:layout"]), "5");
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
    assert_eq!(redis.cli(&["HGET", meta, "layout"]), "3");
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
    // (4 is a SKU with a sale window, keys::LAYOUT_WINDOW: this test, with
    // 4, is how layout-3 versions refuse such a SKU — tests/it/sale_window.rs)
    redis.cli(&["HSET", "fg:{future}:meta", "layout", "5"]);
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

/// `flashgate migrate-layout` as an operator runs it: (success, stdout + stderr).
fn migrate_layout(redis: &RedisServer, force: bool) -> (bool, String) {
    let mut args = vec!["migrate-layout"];
    if force {
        args.push("--force");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_flashgate"))
        .args(&args)
        .env("FLASHGATE_REDIS_URL", redis.url())
        .output()
        .expect("run flashgate");
    let text = [out.stdout, out.stderr].concat();
    (
        out.status.success(),
        String::from_utf8_lossy(&text).into_owned(),
    )
}

/// The keys matching `pattern`, sorted.
fn keys(redis: &RedisServer, pattern: &str) -> Vec<String> {
    let mut k: Vec<String> = redis
        .cli(&["KEYS", pattern])
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    k.sort();
    k
}

/// The record keys matching `pattern` that hold a walk-on marker (data
/// layout 5), sorted.
fn walk_on_markers(redis: &RedisServer, pattern: &str) -> Vec<String> {
    keys(redis, pattern)
        .into_iter()
        .filter(|k| redis.cli(&["GET", k]).starts_with("M|"))
        .collect()
}

fn rid(a: &Answer) -> String {
    a.body["reservation_id"].as_str().unwrap_or("").to_owned()
}

async fn readyz(app: &TestApp) -> Answer {
    app.request(Method::GET, "/readyz", &[], Vec::new()).await
}

/// Rewrite what a layout-3 instance wrote for `sku` and its key `key` (held
/// as `rid`, fingerprint `fp`) as a layout-2 instance writes it: the meta's
/// `layout` 2, no `fg:layout`, the claim without its token, and the `R`
/// verdict on the holding shard.
fn as_layout_2(redis: &RedisServer, sku: &str, key: &str, rid: &str, fp: &str) {
    redis.cli(&["HSET", &format!("fg:{{{sku}}}:meta"), "layout", "2"]);
    redis.cli(&["DEL", "fg:layout"]);
    let claim = keys(redis, &format!("fg:{{idem~*}}:{key}"));
    assert_eq!(claim.len(), 1, "{claim:?}");
    let body = redis.cli(&["GET", &claim[0]]);
    let body = body.trim_end_matches('\n');
    let at = body.find("\nt:").expect("a layout-3 claim carries a token");
    redis.cli(&["SET", &claim[0], &body[..at], "KEEPTTL"]);
    let shard = rid.split('.').nth(1).expect("SKU.s.token");
    redis.cli(&[
        "SET",
        &format!("fg:{{{sku}#{shard}}}:idem:{key}"),
        &format!("R|{rid}|{fp}"),
        "PX",
        "86400000",
    ]);
}

#[tokio::test]
async fn a_hold_writes_no_verdict_key_and_every_retry_answers_the_first_answer() {
    let redis = RedisServer::start();
    let app = spawn_app_with(&redis, |c| c.sold_out_cache_ms = 0).await;
    app.preload("tee", 1, 2).await;
    app.preload("cup", 5, 1).await;

    let held = app.reserve("a", "tee", 1, "ann").await;
    assert_eq!(held.status, StatusCode::CREATED, "{:?}", held.body);
    // the record is the key's verdict: no `R` verdict key
    assert_eq!(keys(&redis, "fg:{tee#*}:idem:*"), Vec::<String>::new());
    let token = rid(&held).rsplit('.').next().unwrap_or("").to_owned();
    let claim = keys(&redis, "fg:{idem~*}:a");
    assert_eq!(claim.len(), 1, "{claim:?}");
    assert!(
        redis
            .cli(&["GET", &claim[0]])
            .trim_end()
            .ends_with(&format!("\nt:{token}")),
        "the claim names the hold's token"
    );
    let again = app.reserve("a", "tee", 1, "ann").await;
    assert_eq!(again.status, StatusCode::OK, "{:?}", again.body);
    assert_eq!(again.body, held.body, "a retry answers the first body");

    // sold out: the retry too
    let dry = app.reserve("b", "tee", 1, "bob").await;
    assert_eq!(dry.code(), "sold_out", "{:?}", dry.body);
    let dry_again = app.reserve("b", "tee", 1, "bob").await;
    assert_eq!(
        (dry_again.status, dry_again.code()),
        (dry.status, "sold_out")
    );
    // the sold-out key's walk-on verdicts stay where the walk needs them:
    // since layout 5, a marker at the record key its token names on each
    // shard (no `idem:` key), which no reader takes for a reservation
    assert_eq!(keys(&redis, "fg:{tee#*}:idem:b"), Vec::<String>::new());
    let markers = walk_on_markers(&redis, "fg:{tee#*}:r:*");
    assert_eq!(markers.len(), 2, "{markers:?}");

    // another body with the key, on this SKU or another: refused
    let other = app.reserve("a", "tee", 1, "eve").await;
    assert_eq!(other.code(), "idempotency_key_reused", "{:?}", other.body);
    let elsewhere = app.reserve("a", "cup", 1, "ann").await;
    assert_eq!(
        elsewhere.code(),
        "idempotency_key_reused",
        "{:?}",
        elsewhere.body
    );
    let b_elsewhere = app.reserve("b", "cup", 1, "bob").await;
    assert_eq!(b_elsewhere.code(), "idempotency_key_reused");

    // after the hold ended: still the first hold, never a second one
    let path = format!("/v1/reservations/{}/release", rid(&held));
    let released = app.request(Method::POST, &path, &[], Vec::new()).await;
    assert_eq!(released.status, StatusCode::OK, "{:?}", released.body);
    let after = app.reserve("a", "tee", 1, "ann").await;
    assert_eq!(after.status, StatusCode::OK, "{:?}", after.body);
    assert_eq!(rid(&after), rid(&held));
    let books = app.assert_books("tee").await;
    assert_eq!((books.available, books.held), (1, 0));
    app.stop().await;
}

#[tokio::test]
async fn with_a_purchase_cap_the_claim_is_made_apart_and_still_names_the_hold() {
    let redis = RedisServer::start();
    let app = spawn_app_with(&redis, |_| {}).await;
    let admin = app
        .request(
            Method::POST,
            "/admin/v1/skus/capped/preload",
            &[("content-type", "application/json")],
            serde_json::json!({"stock": 3, "shards": 2, "max_per_user": 2})
                .to_string()
                .into_bytes(),
        )
        .await;
    assert!(admin.status.is_success(), "{:?}", admin.body);
    let held = app.reserve("c1", "capped", 1, "ann").await;
    assert_eq!(held.status, StatusCode::CREATED, "{:?}", held.body);
    assert_eq!(keys(&redis, "fg:{capped#*}:idem:*"), Vec::<String>::new());
    let again = app.reserve("c1", "capped", 1, "ann").await;
    assert_eq!(again.status, StatusCode::OK, "{:?}", again.body);
    assert_eq!(again.body, held.body);
    let other = app.reserve("c1", "capped", 1, "bob").await;
    assert_eq!(other.code(), "idempotency_key_reused", "{:?}", other.body);
    // the cap counted the key once
    let second = app.reserve("c2", "capped", 1, "ann").await;
    assert_eq!(second.status, StatusCode::CREATED, "{:?}", second.body);
    let third = app.reserve("c3", "capped", 1, "ann").await;
    assert_eq!(third.code(), "purchase_limit", "{:?}", third.body);
    app.stop().await;
}

#[tokio::test]
async fn an_unknown_store_layout_is_refused_on_readyz_and_reserve() {
    let redis = RedisServer::start();
    let app = spawn_app_with(&redis, |_| {}).await;
    app.preload("lay", 4, 2).await;
    assert_eq!(readyz(&app).await.status, StatusCode::OK);
    redis.cli(&["SET", "fg:layout", "9"]);
    // /readyz reads it again (at most every 2 s)
    assert!(
        eventually(Duration::from_secs(10), || async {
            readyz(&app).await.status == StatusCode::SERVICE_UNAVAILABLE
        })
        .await
    );
    let ready = readyz(&app).await;
    let message = ready.body["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains("layout"), "{:?}", ready.body);
    let before = redis.cli(&["DBSIZE"]);
    let r = app.reserve("k1", "lay", 1, "u1").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    assert!(r.body["error"]["message"]
        .as_str()
        .unwrap_or("")
        .contains("layout"));
    assert_eq!(redis.cli(&["DBSIZE"]), before, "a refused reserve wrote");
    app.stop().await;

    // a new instance refuses from its start
    let fresh = spawn_app_with(&redis, |_| {}).await;
    assert_eq!(readyz(&fresh).await.status, StatusCode::SERVICE_UNAVAILABLE);
    let r = fresh.reserve("k1", "lay", 1, "u1").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    // and migrate-layout does not touch a newer store
    let (ok, out) = migrate_layout(&redis, true);
    assert!(!ok, "{out}");
    assert_eq!(redis.cli(&["GET", "fg:layout"]), "9");

    // this version's layout again: served
    redis.cli(&["SET", "fg:layout", "5"]);
    assert!(
        eventually(Duration::from_secs(10), || async {
            readyz(&fresh).await.status == StatusCode::OK
        })
        .await
    );
    let r = fresh.reserve("k1", "lay", 1, "u1").await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    fresh.stop().await;
}

#[tokio::test]
async fn a_layout_2_store_is_refused_until_migrated_and_its_holds_stay_exactly_once() {
    let redis = RedisServer::start();
    let first = spawn_app_with(&redis, |c| c.sold_out_cache_ms = 0).await;
    first.preload("two", 2, 2).await;
    let held = first.reserve("k1", "two", 1, "u1").await;
    assert_eq!(held.status, StatusCode::CREATED, "{:?}", held.body);
    first.stop().await;
    as_layout_2(&redis, "two", "k1", &rid(&held), "1:u1");

    // a new instance on a layout-2 store: not ready, reserves refused
    let app = spawn_app_with(&redis, |c| c.sold_out_cache_ms = 0).await;
    let ready = readyz(&app).await;
    assert_eq!(
        ready.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{:?}",
        ready.body
    );
    assert!(
        ready.body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("migrate-layout"),
        "{:?}",
        ready.body
    );
    let r = app.reserve("k1", "two", 1, "u1").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);

    // a hold is outstanding: migrate-layout refuses, and changes nothing
    let (ok, out) = migrate_layout(&redis, false);
    assert!(!ok, "{out}");
    assert!(out.contains("--force") && out.contains("two"), "{out}");
    assert_eq!(redis.cli(&["EXISTS", "fg:layout"]), "0");
    assert_eq!(redis.cli(&["HGET", "fg:{two}:meta", "layout"]), "2");
    let (ok, out) = migrate_layout(&redis, true);
    assert!(ok, "{out}");
    assert!(out.contains("two"), "{out}");
    assert_eq!(redis.cli(&["GET", "fg:layout"]), "5");
    assert_eq!(redis.cli(&["HGET", "fg:{two}:meta", "layout"]), "3");
    let (ok, out) = migrate_layout(&redis, false);
    assert!(ok, "a second run is a no-op: {out}");

    assert!(
        eventually(Duration::from_secs(10), || async {
            readyz(&app).await.status == StatusCode::OK
        })
        .await
    );
    // the layout-2 hold (a claim with no token, an `R` verdict): replayed
    let again = app.reserve("k1", "two", 1, "u1").await;
    assert_eq!(again.status, StatusCode::OK, "{:?}", again.body);
    assert_eq!(rid(&again), rid(&held));
    let other = app.reserve("k1", "two", 1, "u2").await;
    assert_eq!(other.code(), "idempotency_key_reused");
    // a new key takes the last unit, layout 3
    let new = app.reserve("k2", "two", 1, "u2").await;
    assert_eq!(new.status, StatusCode::CREATED, "{:?}", new.body);
    assert_eq!(keys(&redis, "fg:{two#*}:idem:k2"), Vec::<String>::new());
    let new_again = app.reserve("k2", "two", 1, "u2").await;
    assert_eq!(new_again.body, new.body);
    let none = app.reserve("k3", "two", 1, "u3").await;
    assert_eq!(none.code(), "sold_out", "{:?}", none.body);
    let path = format!("/v1/reservations/{}/confirm", rid(&held));
    let confirmed = app.request(Method::POST, &path, &[], Vec::new()).await;
    assert_eq!(confirmed.status, StatusCode::OK, "{:?}", confirmed.body);
    let books = app.assert_books("two").await;
    assert_eq!((books.available, books.held, books.sold), (0, 1, 1));
    app.stop().await;
}

#[tokio::test]
async fn migrate_layout_refuses_while_holds_are_out_and_passes_once_they_ended() {
    let redis = RedisServer::start();
    let app = spawn_app_with(&redis, |_| {}).await;
    app.preload("sale", 3, 1).await;
    let held = app.reserve("k1", "sale", 1, "u1").await;
    assert_eq!(held.status, StatusCode::CREATED, "{:?}", held.body);
    redis.cli(&["DEL", "fg:layout"]);
    let (ok, out) = migrate_layout(&redis, false);
    assert!(!ok, "{out}");
    assert!(out.contains("holds are outstanding"), "{out}");
    assert_eq!(redis.cli(&["EXISTS", "fg:layout"]), "0");
    let path = format!("/v1/reservations/{}/release", rid(&held));
    let released = app.request(Method::POST, &path, &[], Vec::new()).await;
    assert_eq!(released.status, StatusCode::OK, "{:?}", released.body);
    let (ok, out) = migrate_layout(&redis, false);
    assert!(ok, "{out}");
    assert_eq!(redis.cli(&["GET", "fg:layout"]), "5");
    app.stop().await;
}

/// Data layout 5 (issue 23): the walk-on verdict of a key with a token is a
/// marker at its record key, not `idem:<key>`. A store of layout 3 is
/// refused until `migrate-layout` (which refuses while holds are out, as
/// for layout 2), and what layout 3 wrote still holds afterwards: a key it
/// sent on from every shard is still sold out on retry after a unit came
/// back (its `idem:` verdicts are read), never held.
#[tokio::test]
async fn a_layout_3_store_is_refused_until_migrated_and_its_walk_on_verdicts_still_hold() {
    let redis = RedisServer::start();
    let first = spawn_app_with(&redis, |c| c.sold_out_cache_ms = 0).await;
    first.preload("three", 1, 2).await;
    let held = first.reserve("a", "three", 1, "ann").await;
    assert_eq!(held.status, StatusCode::CREATED, "{:?}", held.body);
    let dry = first.reserve("b", "three", 1, "bob").await;
    assert_eq!(dry.code(), "sold_out", "{:?}", dry.body);
    first.stop().await;
    // as layout 3 wrote it: the walk-on verdicts at `idem:b`, no markers
    let markers = walk_on_markers(&redis, "fg:{three#*}:r:*");
    assert_eq!(markers.len(), 2, "{markers:?}");
    for m in &markers {
        let shard_prefix = &m[..m.find(":r:").expect("a record key")];
        redis.cli(&["DEL", m]);
        redis.cli(&[
            "SET",
            &format!("{shard_prefix}:idem:b"),
            "M|1:bob",
            "PX",
            "86400000",
        ]);
    }
    redis.cli(&["SET", "fg:layout", "3"]);

    let app = spawn_app_with(&redis, |c| c.sold_out_cache_ms = 0).await;
    let ready = readyz(&app).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    let message = ready.body["error"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("layout 3") && message.contains("migrate-layout"),
        "{message}"
    );
    let r = app.reserve("c", "three", 1, "cat").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    let (ok, out) = migrate_layout(&redis, false);
    assert!(!ok && out.contains("holds are outstanding"), "{out}");
    assert_eq!(redis.cli(&["GET", "fg:layout"]), "3");
    let (ok, out) = migrate_layout(&redis, true);
    assert!(ok, "{out}");
    assert_eq!(redis.cli(&["GET", "fg:layout"]), "5");
    assert!(
        eventually(Duration::from_secs(10), || async {
            readyz(&app).await.status == StatusCode::OK
        })
        .await
    );
    // the unit comes back; b, sent on from both shards, stays sold out
    let path = format!("/v1/reservations/{}/release", rid(&held));
    let released = app.request(Method::POST, &path, &[], Vec::new()).await;
    assert_eq!(released.status, StatusCode::OK, "{:?}", released.body);
    let again = app.reserve("b", "three", 1, "bob").await;
    assert_eq!(again.code(), "sold_out", "{:?}", again.body);
    let other = app.reserve("b", "three", 1, "eve").await;
    assert_eq!(other.code(), "idempotency_key_reused", "{:?}", other.body);
    // a new key takes the unit
    let new = app.reserve("c", "three", 1, "cat").await;
    assert_eq!(new.status, StatusCode::CREATED, "{:?}", new.body);
    let books = app.assert_books("three").await;
    assert_eq!((books.available, books.held), (0, 1));
    app.stop().await;
}

/// A store with a windowed SKU (meta layout 4) is this version's to migrate,
/// not "newer": `migrate-layout` from layout 3 passes and leaves the meta
/// as it is (it used to refuse, taking meta layout 4 for a newer layout).
#[tokio::test]
async fn migrate_layout_takes_a_store_with_a_windowed_sku() {
    use flashgate::inventory::{PreloadSpec, Window};
    let redis = RedisServer::start();
    let app = spawn_app_with(&redis, |_| {}).await;
    let sku = flashgate::domain::Sku::parse("later").expect("sku");
    app.state
        .inventory
        .preload_with(
            &sku,
            PreloadSpec {
                stock: 5,
                shards: 2,
                force: false,
                max_per_user: None,
                window: Window {
                    opens_at_ms: Some(4_102_444_800_000), // 2100-01-01
                    closes_at_ms: None,
                },
            },
        )
        .await
        .expect("preload");
    app.preload("plain", 3, 1).await;
    app.stop().await;
    assert_eq!(redis.cli(&["HGET", "fg:{later}:meta", "layout"]), "4");
    redis.cli(&["SET", "fg:layout", "3"]);
    let (ok, out) = migrate_layout(&redis, false);
    assert!(ok, "{out}");
    assert_eq!(redis.cli(&["GET", "fg:layout"]), "5");
    assert_eq!(redis.cli(&["HGET", "fg:{later}:meta", "layout"]), "4");
    assert_eq!(redis.cli(&["HGET", "fg:{plain}:meta", "layout"]), "3");
    let (ok, out) = migrate_layout(&redis, false);
    assert!(ok, "a second run is a no-op: {out}");
}
