//! Data layout 6 on one Redis server: a key's claim is named by a keyed
//! hash of the key (`fg:claimkey`), and the record of a hold made by the
//! key's first request rides in that claim (lua/lib.lua, lua/reserve.lua):
//! one key per hold instead of two. Every path that starts from the
//! reservation id (GET, confirm, release, extend, the sweeper, a retry)
//! finds it there.

use crate::support;

use std::time::Duration;

use flashgate::domain::{IdempotencyKey, ScopedKey, Tenant};
use hyper::StatusCode;
use support::{spawn_app_with, RedisServer};

fn rid(a: &support::Answer) -> String {
    a.body["reservation_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no reservation id in {:?}", a.body))
        .to_string()
}

fn anon(key: &str) -> ScopedKey {
    ScopedKey::new(&Tenant::Anonymous, &IdempotencyKey::parse(key).unwrap())
}

fn keys(redis: &RedisServer, pattern: &str) -> Vec<String> {
    let out = redis.cli(&["KEYS", pattern]);
    let mut keys: Vec<String> = out
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    keys.sort();
    keys
}

async fn sweep(app: &support::TestApp) -> i64 {
    flashgate::inventory::expiry::sweep(&app.state.inventory, &app.state.metrics, true)
        .await
        .expect("sweep")
}

#[tokio::test]
async fn a_new_hold_rides_in_its_claim_and_every_path_finds_it_there() {
    let redis = RedisServer::start();
    let app = spawn_app_with(&redis, |c| {
        c.hold_seconds = 1;
        c.max_hold_seconds = 4;
        c.sweep_interval_ms = 3_600_000;
    })
    .await;
    app.preload("ride", 5, 1).await;

    // a hold: its record is in its key's claim, and no `r:` key is written
    let held = app.reserve("order-1", "ride", 2, "ann").await;
    assert_eq!(held.status, StatusCode::CREATED, "{:?}", held.body);
    let id = rid(&held);
    assert_eq!(keys(&redis, "fg:{ride#0}:r:*"), Vec::<String>::new());
    let claim = support::claim_name(&redis, &anon("order-1"));
    let (at, record) = support::record_at(&redis, &id).expect("its record");
    assert_eq!(at, claim, "the record rides in the key's claim");
    assert!(record.starts_with("held|2|"), "{record:?}");
    assert!(record.ends_with("ann\norder-1"), "{record:?}");
    // the claim lives as long as a record must (max hold + idempotency TTL)
    let ttl: i64 = redis.cli(&["PTTL", &claim]).parse().expect("a TTL");
    assert!(ttl > 86_400_000, "the claim's TTL {ttl} ms");
    // no Redis key is named by what the client chose
    assert_eq!(keys(&redis, "*order-1*"), Vec::<String>::new());

    // a retry is answered from the claim: the same hold, nothing new
    let again = app.reserve("order-1", "ride", 2, "ann").await;
    assert_eq!((again.status, rid(&again)), (StatusCode::OK, id.clone()));
    let other = app.reserve("order-1", "ride", 1, "ann").await;
    assert_eq!(
        other.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{:?}",
        other.body
    );
    assert_eq!(app.assert_books("ride").await.held, 2);

    // GET, extend and confirm read and write it where it is
    let path = format!("/v1/reservations/{id}");
    let got = app.get(&path).await;
    assert_eq!(got.body["status"], "held", "{:?}", got.body);
    let ext = app.action(&id, "extend").await;
    assert_eq!(ext.status, StatusCode::OK, "{:?}", ext.body);
    let ttl_after: i64 = redis.cli(&["PTTL", &claim]).parse().expect("a TTL");
    assert!(
        ttl_after > 86_400_000,
        "extend kept the claim: {ttl_after} ms"
    );
    let paid = app.action(&id, "confirm").await;
    assert_eq!(paid.status, StatusCode::OK, "{:?}", paid.body);
    assert_eq!(app.get(&path).await.body["status"], "confirmed");
    let (_, record) = support::record_at(&redis, &id).expect("its record");
    assert!(record.starts_with("confirmed|2|"), "{record:?}");
    // the claim still fixes the key's body after the sale
    let after = app.reserve("order-1", "ride", 2, "ann").await;
    assert_eq!(after.status, StatusCode::OK, "{:?}", after.body);
    assert_eq!(rid(&after), id);

    // release returns the units once
    let second = app.reserve("order-2", "ride", 1, "bob").await;
    assert_eq!(second.status, StatusCode::CREATED);
    let gone = app.action(&rid(&second), "release").await;
    assert_eq!(gone.status, StatusCode::OK, "{:?}", gone.body);
    assert_eq!(
        app.action(&rid(&second), "release").await.status,
        StatusCode::OK
    );
    let st = app.assert_books("ride").await;
    assert_eq!((st.available, st.held, st.sold), (3, 0, 2), "{st:?}");

    // the sweeper expires one once
    let third = app.reserve("order-3", "ride", 1, "cy").await;
    assert_eq!(third.status, StatusCode::CREATED);
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    assert_eq!(sweep(&app).await, 1);
    assert_eq!(sweep(&app).await, 0, "a second sweep changes nothing");
    let expired = app.get(&format!("/v1/reservations/{}", rid(&third))).await;
    assert_eq!(expired.body["status"], "expired", "{:?}", expired.body);
    let st = app.assert_books("ride").await;
    assert_eq!((st.available, st.held, st.sold), (3, 0, 2), "{st:?}");
    assert_eq!(keys(&redis, "fg:{ride#0}:r:*"), Vec::<String>::new());
}

#[tokio::test]
async fn claim_names_are_a_keyed_hash_of_the_key_that_no_client_can_aim() {
    // two stores: each makes its own claim key, so one key's claim is
    // named differently in each, and nothing in a name is the key
    let (one, two) = (RedisServer::start(), RedisServer::start());
    let a = spawn_app_with(&one, |_| {}).await;
    let b = spawn_app_with(&two, |_| {}).await;
    let secret = |r: &RedisServer| r.cli(&["GET", flashgate::inventory::keys::CLAIM_SECRET]);
    assert_eq!(secret(&one).len(), 32);
    assert_ne!(secret(&one), secret(&two));
    let k = anon("buyer-7");
    assert_ne!(support::claim_name(&one, &k), support::claim_name(&two, &k));
    assert_ne!(
        support::claim_name(&one, &k),
        support::claim_name(&one, &anon("buyer-8"))
    );
    assert!(!support::claim_name(&one, &k).contains("buyer-7"));
    // the claim key outlives every instance: a restart names claims alike
    a.preload("aim", 3, 1).await;
    let first = a.reserve("buyer-7", "aim", 1, "u").await;
    assert_eq!(first.status, StatusCode::CREATED);
    a.stop().await;
    let again = spawn_app_with(&one, |_| {}).await;
    let retry = again.reserve("buyer-7", "aim", 1, "u").await;
    assert_eq!((retry.status, rid(&retry)), (StatusCode::OK, rid(&first)));
    drop(b);
}

#[tokio::test]
async fn a_key_reused_after_its_claim_is_gone_gets_a_new_reservation_id() {
    let redis = RedisServer::start();
    let app = spawn_app_with(&redis, |_| {}).await;
    app.preload("again", 4, 1).await;
    let first = app.reserve("k-1", "again", 1, "u").await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(
        app.action(&rid(&first), "confirm").await.status,
        StatusCode::OK
    );
    // the claim expired (here: deleted): the key is a new request, and its
    // hold must not reuse the id the ledger already has a row for
    let claim = support::claim_name(&redis, &anon("k-1"));
    assert_eq!(redis.cli(&["DEL", &claim]), "1");
    let second = app.reserve("k-1", "again", 1, "u").await;
    assert_eq!(second.status, StatusCode::CREATED, "{:?}", second.body);
    let (a, b) = (rid(&first), rid(&second));
    assert_ne!(a, b, "a fresh reservation id");
    // both name the key's claim: the same first 16 hex digits of the token
    let id16 = |r: &str| r[r.len() - 32..r.len() - 16].to_string();
    assert_eq!(id16(&a), id16(&b));
    assert_eq!(support::record_at(&redis, &b).map(|(k, _)| k), Some(claim));
    let st = app.assert_books("again").await;
    assert_eq!((st.available, st.held, st.sold), (2, 1, 1), "{st:?}");
}

#[tokio::test]
async fn an_instance_nothing_probes_stops_naming_claims_once_the_claim_key_is_gone() {
    let redis = RedisServer::start();
    let app = spawn_app_with(&redis, |c| c.sweep_interval_ms = 100).await;
    app.preload("lost", 3, 1).await;
    assert_eq!(
        app.reserve("k-1", "lost", 1, "u").await.status,
        StatusCode::CREATED
    );
    // someone deletes the claim key (never to be done: docs/UPGRADING.md);
    // no `/readyz` is asked, yet the instance stops within seconds rather
    // than go on naming claims from a key a new one would replace
    assert_eq!(
        redis.cli(&["DEL", flashgate::inventory::keys::CLAIM_SECRET]),
        "1"
    );
    let refused = support::eventually(Duration::from_secs(5), || async {
        app.reserve("k-2", "lost", 1, "u").await.status == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    assert!(
        refused,
        "the instance still reserves without the store's claim key"
    );
    // (k-2 may have held before the re-check; the books still add up: the
    // status document is refused too, so they are read from Redis)
    let stock: i64 = redis.cli(&["GET", "fg:{lost#0}:stock"]).parse().unwrap();
    let held: i64 = redis
        .cli(&["HGET", "fg:{lost#0}:books", "held"])
        .parse()
        .unwrap();
    assert_eq!(stock + held, 3, "stock {stock} held {held}");
}
