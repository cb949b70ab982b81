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
//!
//! Data layout 6: a key's claim is named by a keyed hash of the key
//! (`fg:{claim~H}:<16 hex>`, the store's `fg:claimkey`), no longer
//! `fg:{idem~NN}:<key>`, and on one server a new hold's record rides in its
//! claim. A store of layout 5 or earlier is refused until `migrate-layout`
//! has moved every old claim to its new name; a store of layout 6 that lost
//! its claim key is refused until `migrate-layout` makes a new one. The
//! tests simulate older stores by moving what this version wrote back to
//! the old names (`as_layout_5`).

use crate::support;

use std::process::Command;
use std::time::Duration;

use flashgate::domain::{IdempotencyKey, ScopedKey, Tenant};
use flashgate::inventory::keys;
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
    assert_eq!(redis.cli(&["GET", "fg:layout"]), "6");
    // the store's claim key, made with the store
    let secret = redis.cli(&["GET", "fg:claimkey"]);
    assert!(keys::ClaimHasher::parse(&secret).is_some(), "{secret:?}");
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
    migrate_layout_at(&redis.url(), force)
}

/// [`migrate_layout`] on the Redis (or Redis Cluster) at `url`.
fn migrate_layout_at(url: &str, force: bool) -> (bool, String) {
    let mut args = vec!["migrate-layout"];
    if force {
        args.push("--force");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_flashgate"))
        .args(&args)
        .env("FLASHGATE_REDIS_URL", url)
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

fn message(a: &Answer) -> String {
    a.body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The stored form of the client key `key` of the implicit storefront (the
/// tests run without auth).
fn scoped(key: &str) -> ScopedKey {
    ScopedKey::new(
        &Tenant::Anonymous,
        &IdempotencyKey::parse(key).expect("an idempotency key"),
    )
}

/// The store's claim key (`fg:claimkey`) as read from `get` (a GET of it).
fn claim_hasher(hex: &str) -> keys::ClaimHasher {
    keys::ClaimHasher::parse(hex).unwrap_or_else(|| panic!("no valid claim key: {hex:?}"))
}

/// The name of `key`'s claim in data layout 6 on this store.
fn claim_name(redis: &RedisServer, key: &str) -> String {
    claim_hasher(&redis.cli(&["GET", "fg:claimkey"]))
        .claim(&scoped(key))
        .record
}

/// The name of `key`'s claim in data layout 5 and earlier.
fn old_claim_name(key: &str) -> String {
    keys::idem_global(&scoped(key)).1
}

/// Move `key`'s claim back to where layout 5 kept it: its body, unchanged
/// (its token too), at the old name ([`keys::idem_global`]); the record of
/// the hold riding in it (on one server, after the NUL: `<rid>|<record>`)
/// at its own key `fg:{SKU#s}:r:<rid>`; both with the claim's remaining
/// TTL. Returns the body.
fn claim_as_layout_5(redis: &RedisServer, key: &str) -> String {
    let name = claim_name(redis, key);
    let value = redis.cli(&["GET", &name]);
    assert!(!value.is_empty(), "no claim of {key:?} at {name}");
    let ttl = redis.cli(&["PTTL", &name]);
    assert!(ttl.parse::<i64>().is_ok_and(|t| t > 0), "{ttl}");
    let (body, record) = match value.split_once('\0') {
        Some((body, record)) => (body, Some(record)),
        None => (value.as_str(), None),
    };
    if let Some(record) = record {
        let (rid, record) = record.split_once('|').expect("<rid>|<record>");
        let mut parts = rid.rsplitn(3, '.');
        let (_token, shard, sku) = (parts.next(), parts.next(), parts.next());
        let (shard, sku) = (shard.expect("SKU.s.token"), sku.expect("SKU.s.token"));
        let rkey = format!("fg:{{{sku}#{shard}}}:r:{rid}");
        assert_eq!(redis.cli(&["EXISTS", &rkey]), "0", "{rkey}");
        redis.cli(&["SET", &rkey, record, "PX", &ttl]);
    }
    redis.cli(&["SET", &old_claim_name(key), body, "PX", &ttl]);
    redis.cli(&["DEL", &name]);
    body.to_owned()
}

/// Rewrite the store as a layout-5 instance left it: the claims of
/// `claim_keys` at their old names (records out of them), `fg:layout` 5,
/// no claim key.
fn as_layout_5(redis: &RedisServer, claim_keys: &[&str]) {
    for key in claim_keys {
        claim_as_layout_5(redis, key);
    }
    redis.cli(&["SET", "fg:layout", "5"]);
    redis.cli(&["DEL", "fg:claimkey"]);
}

/// Rewrite what this version wrote for `sku` and its key `key` (held as
/// `rid`, fingerprint `fp`) as a layout-2 instance writes it: the meta's
/// `layout` 2, no `fg:layout` (nor claim key), the claim at its old name
/// without its token, the hold's record at `r:<rid>`, and the `R` verdict
/// on the holding shard.
fn as_layout_2(redis: &RedisServer, sku: &str, key: &str, rid: &str, fp: &str) {
    as_layout_5(redis, &[key]);
    redis.cli(&["HSET", &format!("fg:{{{sku}}}:meta"), "layout", "2"]);
    redis.cli(&["DEL", "fg:layout"]);
    let claim = old_claim_name(key);
    let body = redis.cli(&["GET", &claim]);
    let body = body.trim_end_matches('\n');
    let at = body.find("\nt:").expect("a layout-3 claim carries a token");
    redis.cli(&["SET", &claim, &body[..at], "KEEPTTL"]);
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
    // the claim, named by the keyed hash of the key (layout 6), names the
    // hold's token, and the token names the claim (its first 16 digits)
    assert_eq!(keys(&redis, "fg:{idem~*}:*"), Vec::<String>::new());
    let claim = claim_name(&redis, "a");
    assert!(claim.ends_with(&format!(":{}", &token[..16])), "{claim}");
    let value = redis.cli(&["GET", &claim]);
    let (body, record) = value.split_once('\0').expect("a record rides in it");
    assert!(
        body.ends_with(&format!("\nt:{token}")),
        "the claim names the hold's token: {body:?}"
    );
    // on one server the hold's record rides in the claim: no key of its own
    assert!(
        record.starts_with(&format!("{}|held|", rid(&held))),
        "{record:?}"
    );
    assert_eq!(keys(&redis, "fg:{tee#*}:r:*"), Vec::<String>::new());
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
    redis.cli(&["SET", "fg:layout", "6"]);
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
    assert_eq!(redis.cli(&["EXISTS", "fg:claimkey"]), "0");
    assert_eq!(redis.cli(&["HGET", "fg:{two}:meta", "layout"]), "2");
    assert_eq!(keys(&redis, "fg:{idem~*}:*"), vec![old_claim_name("k1")]);
    let body = redis.cli(&["GET", &old_claim_name("k1")]);
    assert!(!body.contains("\nt:"), "{body:?}");
    let (ok, out) = migrate_layout(&redis, true);
    assert!(ok, "{out}");
    assert!(out.contains("two"), "{out}");
    assert_eq!(redis.cli(&["GET", "fg:layout"]), "6");
    assert_eq!(redis.cli(&["HGET", "fg:{two}:meta", "layout"]), "3");
    // the claim at its new name, still without a token
    assert_eq!(keys(&redis, "fg:{idem~*}:*"), Vec::<String>::new());
    assert_eq!(redis.cli(&["GET", &claim_name(&redis, "k1")]), body);
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
    assert_eq!(redis.cli(&["GET", "fg:layout"]), "6");
    app.stop().await;
}

/// Data layout 5 (issue 23): the walk-on verdict of a key with a token is a
/// marker at its record key, not `idem:<key>`. A store of layout 3 is
/// refused until `migrate-layout` (which refuses while holds are out, as
/// for layout 2), and what layout 3 wrote still holds afterwards: a key it
/// sent on from every shard is still sold out on retry after a unit came
/// back (its `idem:` verdicts are read, by the token of its claim, moved to
/// its layout-6 name), never held.
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
    // and its claims at their old names
    as_layout_5(&redis, &["a", "b"]);
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
    assert_eq!(redis.cli(&["GET", "fg:layout"]), "6");
    assert_eq!(keys(&redis, "fg:{idem~*}:*"), Vec::<String>::new());
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
    assert_eq!(redis.cli(&["GET", "fg:layout"]), "6");
    assert_eq!(redis.cli(&["HGET", "fg:{later}:meta", "layout"]), "4");
    assert_eq!(redis.cli(&["HGET", "fg:{plain}:meta", "layout"]), "3");
    let (ok, out) = migrate_layout(&redis, false);
    assert!(ok, "a second run is a no-op: {out}");
}

/// Data layout 6: a store of layout 5 (claims at `fg:{idem~NN}:<key>`,
/// records at `r:<rid>`, no claim key) is refused until `migrate-layout`
/// has moved every claim to its new name; a request made before the
/// upgrade and retried after it is then answered as the replay of its hold
/// (its claim found under the new name, walked with its old token), never
/// held a second time.
#[tokio::test]
async fn a_layout_5_store_is_refused_until_migrated_and_a_retry_across_the_upgrade_replays_its_hold(
) {
    let redis = RedisServer::start();
    let first = spawn_app_with(&redis, |c| c.sold_out_cache_ms = 0).await;
    first.preload("five", 2, 2).await;
    let held = first.reserve("k1", "five", 1, "ann").await;
    assert_eq!(held.status, StatusCode::CREATED, "{:?}", held.body);
    first.stop().await;
    as_layout_5(&redis, &["k1"]);
    let old = old_claim_name("k1");
    let body = redis.cli(&["GET", &old]);
    let token = rid(&held).rsplit('.').next().unwrap_or("").to_owned();
    assert!(body.ends_with(&format!("\nt:{token}")), "{body:?}");
    let ttl: i64 = redis.cli(&["PTTL", &old]).parse().expect("a TTL");

    // a layout-6 instance on it: not ready, reserves refused
    let app = spawn_app_with(&redis, |c| c.sold_out_cache_ms = 0).await;
    let ready = readyz(&app).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    let m = message(&ready);
    assert!(
        m.contains("layout 5") && m.contains("migrate-layout"),
        "{m}"
    );
    let before = redis.cli(&["DBSIZE"]);
    let r = app.reserve("k1", "five", 1, "ann").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    assert!(message(&r).contains("layout 5"), "{:?}", r.body);
    assert_eq!(redis.cli(&["DBSIZE"]), before, "a refused reserve wrote");

    // a hold is out: refused, and nothing written (no claim key either)
    let (ok, out) = migrate_layout(&redis, false);
    assert!(!ok && out.contains("holds are outstanding"), "{out}");
    assert_eq!(redis.cli(&["GET", "fg:layout"]), "5");
    assert_eq!(redis.cli(&["EXISTS", "fg:claimkey"]), "0");
    assert_eq!(keys(&redis, "fg:{idem~*}:*"), vec![old.clone()]);
    let (ok, out) = migrate_layout(&redis, true);
    assert!(ok, "{out}");
    assert!(out.contains("moved 1 claim(s)"), "{out}");
    assert_eq!(redis.cli(&["GET", "fg:layout"]), "6");
    // the claim at its new name: its body (and old token) and its TTL kept
    assert_eq!(keys(&redis, "fg:{idem~*}:*"), Vec::<String>::new());
    let new = claim_name(&redis, "k1");
    assert_eq!(redis.cli(&["GET", &new]), body);
    let left: i64 = redis.cli(&["PTTL", &new]).parse().expect("a TTL");
    assert!(0 < left && left <= ttl, "{left} of {ttl}");
    let (ok, out) = migrate_layout(&redis, false);
    assert!(ok, "a second run is a no-op: {out}");
    assert!(!out.contains("moved"), "{out}");
    assert_eq!(redis.cli(&["GET", &new]), body);

    assert!(
        eventually(Duration::from_secs(10), || async {
            readyz(&app).await.status == StatusCode::OK
        })
        .await
    );
    // the retry across the upgrade: the first hold, replayed
    let again = app.reserve("k1", "five", 1, "ann").await;
    assert_eq!(again.status, StatusCode::OK, "{:?}", again.body);
    assert_eq!(rid(&again), rid(&held));
    let other = app.reserve("k1", "five", 1, "bob").await;
    assert_eq!(other.code(), "idempotency_key_reused", "{:?}", other.body);
    let books = app.assert_books("five").await;
    assert_eq!((books.available, books.held, books.sold), (1, 1, 0));
    let path = format!("/v1/reservations/{}/confirm", rid(&held));
    let confirmed = app.request(Method::POST, &path, &[], Vec::new()).await;
    assert_eq!(confirmed.status, StatusCode::OK, "{:?}", confirmed.body);
    let after = app.reserve("k1", "five", 1, "ann").await;
    assert_eq!(after.status, StatusCode::OK, "{:?}", after.body);
    assert_eq!(rid(&after), rid(&held));
    let books = app.assert_books("five").await;
    assert_eq!((books.available, books.held, books.sold), (1, 0, 1));
    // a new key after the upgrade: layout 6, its record in its claim
    let new_key = app.reserve("k2", "five", 1, "cat").await;
    assert_eq!(new_key.status, StatusCode::CREATED, "{:?}", new_key.body);
    assert!(redis
        .cli(&["GET", &claim_name(&redis, "k2")])
        .contains(&format!("\0{}|held|", rid(&new_key))));
    app.stop().await;
}

/// A run of `migrate-layout` cut short (the claim key made, a claim copied
/// to its new name but not yet deleted at the old one, the others not
/// moved, `fg:layout` still 5) is finished by running it again: the key
/// made is kept, so are the names it gave.
#[tokio::test]
async fn a_migration_cut_short_is_finished_by_running_it_again() {
    let redis = RedisServer::start();
    let first = spawn_app_with(&redis, |_| {}).await;
    first.preload("cut", 5, 1).await;
    let mut held = Vec::new();
    for k in ["c1", "c2", "c3"] {
        let a = first.reserve(k, "cut", 1, k).await;
        assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
        held.push(a);
    }
    first.stop().await;
    let secret = redis.cli(&["GET", "fg:claimkey"]);
    as_layout_5(&redis, &["c1", "c2", "c3"]);
    // the first run: its claim key, then c1 copied, then cut
    redis.cli(&["SET", "fg:claimkey", &secret]);
    let copied = redis.cli(&["GET", &old_claim_name("c1")]);
    redis.cli(&["SET", &claim_name(&redis, "c1"), &copied, "PX", "60000"]);

    let (ok, out) = migrate_layout(&redis, true);
    assert!(ok, "{out}");
    assert_eq!(redis.cli(&["GET", "fg:claimkey"]), secret, "the key kept");
    assert_eq!(keys(&redis, "fg:{idem~*}:*"), Vec::<String>::new());
    assert_eq!(redis.cli(&["GET", "fg:layout"]), "6");
    let app = spawn_app_with(&redis, |_| {}).await;
    for (k, first) in ["c1", "c2", "c3"].into_iter().zip(&held) {
        let again = app.reserve(k, "cut", 1, k).await;
        assert_eq!(again.status, StatusCode::OK, "{k}: {:?}", again.body);
        assert_eq!(rid(&again), rid(first), "{k}");
    }
    let books = app.assert_books("cut").await;
    assert_eq!((books.available, books.held), (2, 3));
    app.stop().await;
}

/// Data layout 6: every claim's name follows from the store's claim key
/// (`fg:claimkey`). A store of layout 6 without it (deleted by hand) or
/// with a malformed one is refused (`/readyz` and reserves 503, saying
/// why) until `migrate-layout` makes a new one — with units held only with
/// `--force`, as the claims named from the lost key are found no more: a
/// retry of a request made before then holds a second time.
#[tokio::test]
async fn a_layout_6_store_without_its_claim_key_is_refused() {
    let redis = RedisServer::start();
    let app = spawn_app_with(&redis, |c| c.sold_out_cache_ms = 0).await;
    app.preload("lost", 5, 2).await;
    let held = app.reserve("k1", "lost", 1, "ann").await;
    assert_eq!(held.status, StatusCode::CREATED, "{:?}", held.body);
    assert_eq!(readyz(&app).await.status, StatusCode::OK);

    redis.cli(&["DEL", "fg:claimkey"]);
    // /readyz reads it again (at most every 2 s)
    assert!(
        eventually(Duration::from_secs(10), || async {
            readyz(&app).await.status == StatusCode::SERVICE_UNAVAILABLE
        })
        .await
    );
    let m = message(&readyz(&app).await);
    assert!(
        m.contains("fg:claimkey: missing") && m.contains("migrate-layout"),
        "{m}"
    );
    let before = redis.cli(&["DBSIZE"]);
    let r = app.reserve("k2", "lost", 1, "bob").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    assert!(message(&r).contains("claim key"), "{:?}", r.body);
    assert_eq!(redis.cli(&["DBSIZE"]), before, "a refused reserve wrote");
    // a new instance refuses from its start
    let fresh = spawn_app_with(&redis, |_| {}).await;
    assert_eq!(readyz(&fresh).await.status, StatusCode::SERVICE_UNAVAILABLE);
    fresh.stop().await;

    // a unit is held: a new key needs --force, and says what it costs
    let (ok, out) = migrate_layout(&redis, false);
    assert!(!ok, "{out}");
    assert!(
        out.contains("fg:claimkey")
            && out.contains("missing")
            && out.contains("second time")
            && out.contains("--force")
            && out.contains("lost: 1 units held"),
        "{out}"
    );
    assert_eq!(redis.cli(&["EXISTS", "fg:claimkey"]), "0");
    let (ok, out) = migrate_layout(&redis, true);
    assert!(ok, "{out}");
    assert!(out.contains("made a new one"), "{out}");
    let secret = redis.cli(&["GET", "fg:claimkey"]);
    assert!(keys::ClaimHasher::parse(&secret).is_some(), "{secret:?}");
    assert_eq!(redis.cli(&["GET", "fg:layout"]), "6");
    let (ok, out) = migrate_layout(&redis, false);
    assert!(
        ok && !out.contains("claim key"),
        "a second run is a no-op: {out}"
    );
    assert_eq!(redis.cli(&["GET", "fg:claimkey"]), secret);

    assert!(
        eventually(Duration::from_secs(10), || async {
            readyz(&app).await.status == StatusCode::OK
        })
        .await
    );
    let r = app.reserve("k2", "lost", 1, "bob").await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    // the hold made before the loss is still there (its record is found by
    // its id)...
    let path = format!("/v1/reservations/{}/confirm", rid(&held));
    let confirmed = app.request(Method::POST, &path, &[], Vec::new()).await;
    assert_eq!(confirmed.status, StatusCode::OK, "{:?}", confirmed.body);
    // ...but its key's claim is not: the retry is a new request (what
    // --force accepts)
    let again = app.reserve("k1", "lost", 1, "ann").await;
    assert_eq!(again.status, StatusCode::CREATED, "{:?}", again.body);
    assert_ne!(rid(&again), rid(&held));

    // a malformed key: refused alike, and replaced
    redis.cli(&["SET", "fg:claimkey", "not-a-key"]);
    assert!(
        eventually(Duration::from_secs(10), || async {
            readyz(&app).await.status == StatusCode::SERVICE_UNAVAILABLE
        })
        .await
    );
    let m = message(&readyz(&app).await);
    assert!(m.contains("fg:claimkey: malformed"), "{m}");
    let (ok, out) = migrate_layout(&redis, true);
    assert!(ok && out.contains("made a new one"), "{out}");
    let replaced = redis.cli(&["GET", "fg:claimkey"]);
    assert!(
        keys::ClaimHasher::parse(&replaced).is_some(),
        "{replaced:?}"
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            readyz(&app).await.status == StatusCode::OK
        })
        .await
    );
    let books = app.assert_books("lost").await;
    assert_eq!((books.held, books.sold), (2, 1));
    app.stop().await;
}

/// On Redis Cluster the claims of layout 5 are spread over the masters (16
/// buckets' slots) and their new names are in other slots: `migrate-layout`
/// looks for them on every master (SCAN walks one node) and copies each to
/// its new name's master. Every retry after the upgrade is a replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_layout_moves_the_claims_of_every_cluster_master() {
    use std::collections::BTreeSet;
    use support::cluster::{cli, keyslot, Cluster};
    let cluster = Cluster::start(3, 0);
    let config = || support::cluster::test_config(&cluster);
    let app = support::spawn_app(config()).await;
    app.preload("spread", 24, 3).await;
    let mut held = Vec::new();
    for i in 0..24 {
        let a = app
            .reserve(&format!("s{i}"), "spread", 1, &format!("u{i}"))
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
        held.push(a);
    }
    app.stop().await;

    // as layout 5: every claim back at its old name (on a cluster no
    // record rides in a claim), fg:layout 5, no claim key
    let at = |key: &str| cluster.owner(keyslot(key));
    let hasher = claim_hasher(&cli(at("fg:claimkey"), &["GET", "fg:claimkey"]));
    let mut old_masters = BTreeSet::new();
    for i in 0..24 {
        let key = scoped(&format!("s{i}"));
        let new = hasher.claim(&key).record;
        let (_, old) = keys::idem_global(&key);
        let value = cli(at(&new), &["GET", &new]);
        assert!(value.contains("\nt:") && !value.contains('\0'), "{value:?}");
        let ttl = cli(at(&new), &["PTTL", &new]);
        cli(at(&old), &["SET", &old, &value, "PX", &ttl]);
        cli(at(&new), &["DEL", &new]);
        old_masters.insert(at(&old));
    }
    assert!(old_masters.len() >= 2, "{old_masters:?}");
    cli(at("fg:layout"), &["SET", "fg:layout", "5"]);
    cli(at("fg:claimkey"), &["DEL", "fg:claimkey"]);

    let (ok, out) = migrate_layout_at(&cluster.url(), true);
    assert!(ok, "{out}");
    assert!(out.contains("moved 24 claim(s)"), "{out}");
    for port in cluster.masters().keys() {
        assert_eq!(cli(*port, &["KEYS", "fg:{idem~*}:*"]), "", "master {port}");
    }
    let app = support::spawn_app(config()).await;
    assert_eq!(readyz(&app).await.status, StatusCode::OK);
    for (i, first) in held.iter().enumerate() {
        let again = app
            .reserve(&format!("s{i}"), "spread", 1, &format!("u{i}"))
            .await;
        assert_eq!(again.status, StatusCode::OK, "s{i}: {:?}", again.body);
        assert_eq!(rid(&again), rid(first), "s{i}");
    }
    let books = app.assert_books("spread").await;
    assert_eq!((books.available, books.held), (0, 24));
    app.stop().await;
}
