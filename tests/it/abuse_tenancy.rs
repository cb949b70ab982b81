//! Hostile clients against the namespaces flashgate keeps (issue 17, findings
//! 2 and 3): a client must not reach the keys flashgate makes for itself (the
//! waitlist promoter's), and a storefront must not reach another
//! storefront's idempotency keys, reservations or tickets.

use crate::support;

use support::spawn_app_with as app_with;

use std::time::Duration;

use hyper::{Method, StatusCode};
use serde_json::Value;
use support::{eventually, RedisServer, TestApp};

const SHOP_A: &str = "shop-a-secret-0000000001";
const SHOP_B: &str = "shop-b-secret-0000000002";
const ADMIN: &str = "admin-secret-00000000003";

/// A request as the storefront with `bearer` (None: no Authorization).
async fn call(
    app: &TestApp,
    bearer: Option<&str>,
    method: Method,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> support::Answer {
    let auth = bearer.map(|b| format!("Bearer {b}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    if let Some(k) = key {
        headers.push(("idempotency-key", k));
    }
    let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
    app.request(method, path, &headers, body).await
}

async fn reserve(
    app: &TestApp,
    bearer: Option<&str>,
    key: &str,
    sku: &str,
    user: &str,
    waitlist: bool,
) -> support::Answer {
    let body = serde_json::json!({"sku": sku, "qty": 1, "user_id": user, "waitlist": waitlist});
    call(
        app,
        bearer,
        Method::POST,
        "/v1/reservations",
        Some(key),
        Some(body),
    )
    .await
}

fn rid(a: &support::Answer) -> String {
    a.body["reservation_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no reservation id in {:?}", a.body))
        .to_string()
}

async fn two_storefronts(redis: &RedisServer) -> TestApp {
    app_with(redis, |c| {
        c.insecure_no_auth = false;
        c.api_keys = vec![SHOP_A.into(), SHOP_B.into()];
        c.admin_keys = vec![ADMIN.into()];
    })
    .await
}

// ------------------------------------------------------------- finding 17.2

#[tokio::test]
async fn a_client_sending_the_promoters_key_does_not_freeze_the_waitlist() {
    let redis = RedisServer::start();
    // no sold-out mark: every poisoning request reaches Redis (the mark only
    // hides the hole while it lasts)
    let app = app_with(&redis, |c| c.sold_out_cache_ms = 0).await;
    app.preload("drop", 1, 2).await;
    let hold = reserve(&app, None, "buy-1", "drop", "buyer", false).await;
    assert_eq!(hold.status, StatusCode::CREATED, "{:?}", hold.body);
    let joined = reserve(&app, None, "wait-1", "drop", "waiter", true).await;
    assert_eq!(joined.status, StatusCode::ACCEPTED, "{:?}", joined.body);
    let ticket = joined.body["ticket_id"]
        .as_str()
        .expect("ticket")
        .to_string();

    // the promoter's key for this ticket, sent first with another body
    for attempt in 0..3 {
        let poison = format!("wl:{ticket}:{attempt}");
        let a = reserve(&app, None, &poison, "drop", "mallory", false).await;
        assert_eq!(a.code(), "sold_out", "{:?}", a.body);
    }

    // a unit comes back: it belongs to the head of the queue
    let released = call(
        &app,
        None,
        Method::POST,
        &format!("/v1/reservations/{}/release", rid(&hold)),
        None,
        None,
    )
    .await;
    assert_eq!(released.status, StatusCode::OK);
    let promoted = eventually(Duration::from_secs(10), || async {
        app.get(&format!("/v1/waitlist/{ticket}")).await.body["status"] == "promoted"
    })
    .await;
    let t = app.get(&format!("/v1/waitlist/{ticket}")).await.body;
    assert!(promoted, "the head ticket is still waiting: {t}");
    let r = app
        .get(&format!(
            "/v1/reservations/{}",
            t["reservation_id"].as_str().expect("rid")
        ))
        .await;
    assert_eq!(
        (r.body["status"].as_str(), r.body["user_id"].as_str()),
        (Some("held"), Some("waiter")),
        "the unit is held for the waiter"
    );
    let st = app.assert_books("drop").await;
    assert_eq!((st.available, st.held), (0, 1));
    assert_eq!(app.sku("drop").await["waitlist"], 0);
}

// ------------------------------------------------------------- finding 17.3

#[tokio::test]
async fn a_storefront_replaying_anothers_key_gets_its_own_reservation_never_the_first() {
    let redis = RedisServer::start();
    let app = two_storefronts(&redis).await;
    app.preload("tee", 10, 2).await;

    let a = reserve(&app, Some(SHOP_A), "order-1", "tee", "ann", false).await;
    assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
    // the same key and the same body from the other storefront: a request of
    // its own, not a replay of the first storefront's hold
    let b = reserve(&app, Some(SHOP_B), "order-1", "tee", "ann", false).await;
    assert_eq!(b.status, StatusCode::CREATED, "{:?}", b.body);
    assert_ne!(rid(&b), rid(&a), "B was handed A's reservation");
    // each storefront's retry replays its own
    let a2 = reserve(&app, Some(SHOP_A), "order-1", "tee", "ann", false).await;
    assert_eq!((a2.status, rid(&a2)), (StatusCode::OK, rid(&a)));
    let b2 = reserve(&app, Some(SHOP_B), "order-1", "tee", "ann", false).await;
    assert_eq!((b2.status, rid(&b2)), (StatusCode::OK, rid(&b)));

    // the same key string with another body: B is not locked out by A's use
    let a3 = reserve(&app, Some(SHOP_A), "order-2", "tee", "ann", false).await;
    assert_eq!(a3.status, StatusCode::CREATED);
    let b3 = reserve(&app, Some(SHOP_B), "order-2", "tee", "bob", false).await;
    assert_eq!(b3.status, StatusCode::CREATED, "{:?}", b3.body);
    // and A's key still means A's first request to A
    let a4 = reserve(&app, Some(SHOP_A), "order-2", "tee", "bob", false).await;
    assert_eq!(a4.code(), "idempotency_key_reused", "{:?}", a4.body);

    let st = app.assert_books("tee").await;
    assert_eq!(st.held, 4);
}

#[tokio::test]
async fn another_storefronts_reservation_is_not_found_and_stays_untouched() {
    let redis = RedisServer::start();
    let app = two_storefronts(&redis).await;
    app.preload("tee", 10, 2).await;
    let a = reserve(&app, Some(SHOP_A), "order-1", "tee", "ann", false).await;
    assert_eq!(a.status, StatusCode::CREATED);
    let id = rid(&a);
    let path = format!("/v1/reservations/{id}");
    let before = call(&app, Some(SHOP_A), Method::GET, &path, None, None).await;
    assert_eq!(before.status, StatusCode::OK);

    let get = call(&app, Some(SHOP_B), Method::GET, &path, None, None).await;
    assert_eq!(
        (get.status, get.code()),
        (StatusCode::NOT_FOUND, "reservation_not_found"),
        "{:?}",
        get.body
    );
    for action in ["extend", "confirm", "release"] {
        let b = call(
            &app,
            Some(SHOP_B),
            Method::POST,
            &format!("{path}/{action}"),
            None,
            None,
        )
        .await;
        assert_eq!(
            (b.status, b.code()),
            (StatusCode::NOT_FOUND, "reservation_not_found"),
            "B's {action}: {:?}",
            b.body
        );
    }
    let after = call(&app, Some(SHOP_A), Method::GET, &path, None, None).await;
    assert_eq!(after.body, before.body, "A's hold is untouched");
    let st = app.assert_books("tee").await;
    assert_eq!((st.held, st.sold), (1, 0));

    // an admin key sees every storefront's reservations
    let admin = call(&app, Some(ADMIN), Method::GET, &path, None, None).await;
    assert_eq!(admin.body, before.body);
    // and A itself still can
    let confirmed = call(
        &app,
        Some(SHOP_A),
        Method::POST,
        &format!("{path}/confirm"),
        None,
        None,
    )
    .await;
    assert_eq!(
        confirmed.body["status"], "confirmed",
        "{:?}",
        confirmed.body
    );
}

#[tokio::test]
async fn another_storefronts_ticket_and_its_promotion_are_not_found() {
    let redis = RedisServer::start();
    let app = two_storefronts(&redis).await;
    app.preload("drop", 1, 1).await;
    let hold = reserve(&app, Some(SHOP_B), "buy-1", "drop", "buyer", false).await;
    assert_eq!(hold.status, StatusCode::CREATED);
    let joined = reserve(&app, Some(SHOP_A), "wait-1", "drop", "waiter", true).await;
    assert_eq!(joined.status, StatusCode::ACCEPTED, "{:?}", joined.body);
    let ticket = joined.body["ticket_id"]
        .as_str()
        .expect("ticket")
        .to_string();
    let path = format!("/v1/waitlist/{ticket}");

    let get = call(&app, Some(SHOP_B), Method::GET, &path, None, None).await;
    assert_eq!(
        (get.status, get.code()),
        (StatusCode::NOT_FOUND, "ticket_not_found"),
        "{:?}",
        get.body
    );
    let cancel = call(&app, Some(SHOP_B), Method::DELETE, &path, None, None).await;
    assert_eq!(
        (cancel.status, cancel.code()),
        (StatusCode::NOT_FOUND, "ticket_not_found"),
        "{:?}",
        cancel.body
    );
    let mine = call(&app, Some(SHOP_A), Method::GET, &path, None, None).await;
    assert_eq!(mine.body["status"], "waiting", "{:?}", mine.body);

    // the unit comes back; the promoted hold belongs to the ticket's storefront
    let released = call(
        &app,
        Some(SHOP_B),
        Method::POST,
        &format!("/v1/reservations/{}/release", rid(&hold)),
        None,
        None,
    )
    .await;
    assert_eq!(released.status, StatusCode::OK);
    assert!(
        eventually(Duration::from_secs(10), || async {
            call(&app, Some(SHOP_A), Method::GET, &path, None, None)
                .await
                .body["status"]
                == "promoted"
        })
        .await,
        "the ticket is promoted"
    );
    let t = call(&app, Some(SHOP_A), Method::GET, &path, None, None).await;
    let promoted = format!(
        "/v1/reservations/{}",
        t.body["reservation_id"].as_str().expect("rid")
    );
    let b = call(
        &app,
        Some(SHOP_B),
        Method::POST,
        &format!("{promoted}/confirm"),
        None,
        None,
    )
    .await;
    assert_eq!(b.code(), "reservation_not_found", "{:?}", b.body);
    let a = call(
        &app,
        Some(SHOP_A),
        Method::POST,
        &format!("{promoted}/confirm"),
        None,
        None,
    )
    .await;
    assert_eq!(a.body["status"], "confirmed", "{:?}", a.body);
    let st = app.assert_books("drop").await;
    assert_eq!(st.sold, 1);
}

#[tokio::test]
async fn a_storefront_is_named_by_its_configured_name_across_rotation_and_key_order() {
    let redis = RedisServer::start();
    const A_OLD: &str = "shop-a-old-secret-000001";
    const A_NEW: &str = "shop-a-new-secret-000002";
    let first = app_with(&redis, |c| {
        c.insecure_no_auth = false;
        c.api_keys = vec![format!("shop-a:{A_OLD}"), format!("shop-b:{SHOP_B}")];
    })
    .await;
    first.preload("tee", 10, 2).await;
    let a = reserve(&first, Some(A_OLD), "order-1", "tee", "ann", false).await;
    assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
    // the token is the secret alone, never the name
    let named = reserve(
        &first,
        Some(&format!("shop-a:{A_OLD}")),
        "order-9",
        "tee",
        "ann",
        false,
    )
    .await;
    assert_eq!(named.status, StatusCode::UNAUTHORIZED);
    first.stop().await;

    // another instance (or a restart): keys in another order, A's secret
    // rotated — both secrets name storefront shop-a
    let second = app_with(&redis, |c| {
        c.insecure_no_auth = false;
        c.api_keys = vec![
            format!("shop-b:{SHOP_B}"),
            format!("shop-a:{A_NEW}"),
            format!("shop-a:{A_OLD}"),
        ];
    })
    .await;
    let again = reserve(&second, Some(A_NEW), "order-1", "tee", "ann", false).await;
    assert_eq!((again.status, rid(&again)), (StatusCode::OK, rid(&a)));
    let b = call(
        &second,
        Some(SHOP_B),
        Method::GET,
        &format!("/v1/reservations/{}", rid(&a)),
        None,
        None,
    )
    .await;
    assert_eq!(b.code(), "reservation_not_found");
    let released = call(
        &second,
        Some(A_OLD),
        Method::POST,
        &format!("/v1/reservations/{}/release", rid(&a)),
        None,
        None,
    )
    .await;
    assert_eq!(released.body["status"], "released", "{:?}", released.body);
}

#[tokio::test]
async fn an_unnamed_key_is_the_same_storefront_whatever_its_position() {
    let redis = RedisServer::start();
    let first = app_with(&redis, |c| {
        c.insecure_no_auth = false;
        c.api_keys = vec![SHOP_A.into(), SHOP_B.into()];
    })
    .await;
    first.preload("tee", 10, 2).await;
    let a = reserve(&first, Some(SHOP_A), "order-1", "tee", "ann", false).await;
    assert_eq!(a.status, StatusCode::CREATED);
    first.stop().await;
    // the keys in the other order: A is still A, B still not A
    let second = app_with(&redis, |c| {
        c.insecure_no_auth = false;
        c.api_keys = vec![SHOP_B.into(), SHOP_A.into()];
    })
    .await;
    let again = reserve(&second, Some(SHOP_A), "order-1", "tee", "ann", false).await;
    assert_eq!((again.status, rid(&again)), (StatusCode::OK, rid(&a)));
    let path = format!("/v1/reservations/{}", rid(&a));
    let b = call(&second, Some(SHOP_B), Method::GET, &path, None, None).await;
    assert_eq!(b.code(), "reservation_not_found");
    let mine = call(&second, Some(SHOP_A), Method::GET, &path, None, None).await;
    assert_eq!(mine.body["status"], "held");
}

#[tokio::test]
async fn what_was_stored_unscoped_still_serves_after_keys_are_configured() {
    let redis = RedisServer::start();
    // without keys (the implicit storefront) keys are stored as the client
    // sent them: the layout every earlier version wrote
    let open = app_with(&redis, |c| c.sold_out_cache_ms = 0).await;
    open.preload("tee", 2, 1).await;
    let held = reserve(&open, None, "order-1", "tee", "ann", false).await;
    assert_eq!(held.status, StatusCode::CREATED);
    // (data layout 3: the record below is the key's verdict, no `idem:` key)
    assert_eq!(
        redis.cli(&["EXISTS", "fg:{tee#0}:idem:order-1"]).trim(),
        "0"
    );
    let (_, record) = support::record_at(&redis, &rid(&held)).expect("its record");
    assert!(record.trim_end().ends_with("ann\norder-1"), "{record:?}");
    let other = reserve(&open, None, "order-2", "tee", "bob", false).await;
    assert_eq!(other.status, StatusCode::CREATED);
    let joined = reserve(&open, None, "wait-1", "tee", "cy", true).await;
    assert_eq!(joined.status, StatusCode::ACCEPTED);
    let ticket = joined.body["ticket_id"]
        .as_str()
        .expect("ticket")
        .to_string();
    // a retry without keys is a replay, as before
    let again = reserve(&open, None, "order-1", "tee", "ann", false).await;
    assert_eq!((again.status, rid(&again)), (StatusCode::OK, rid(&held)));
    open.stop().await;

    // keys configured: unscoped reservations and tickets are shared, as
    // they were when they were made — any storefront can finish them
    let app = two_storefronts(&redis).await;
    let path = format!("/v1/reservations/{}", rid(&held));
    let a = call(&app, Some(SHOP_A), Method::GET, &path, None, None).await;
    assert_eq!(a.body["status"], "held", "{:?}", a.body);
    let c = call(
        &app,
        Some(SHOP_B),
        Method::POST,
        &format!("{path}/confirm"),
        None,
        None,
    )
    .await;
    assert_eq!(c.body["status"], "confirmed", "{:?}", c.body);
    let t = call(
        &app,
        Some(SHOP_A),
        Method::GET,
        &format!("/v1/waitlist/{ticket}"),
        None,
        None,
    )
    .await;
    assert_eq!(t.body["status"], "waiting", "{:?}", t.body);
    // the ticket is promoted when a unit comes back; its hold is unscoped too
    let r = call(
        &app,
        Some(SHOP_A),
        Method::POST,
        &format!("/v1/reservations/{}/release", rid(&other)),
        None,
        None,
    )
    .await;
    assert_eq!(r.body["status"], "released");
    assert!(
        eventually(Duration::from_secs(10), || async {
            call(
                &app,
                Some(SHOP_B),
                Method::GET,
                &format!("/v1/waitlist/{ticket}"),
                None,
                None,
            )
            .await
            .body["status"]
                == "promoted"
        })
        .await
    );
    // the hold of an unscoped ticket is unscoped as well: any storefront
    // can finish it (the promoter's key for it has no owner)
    let t = call(
        &app,
        Some(SHOP_A),
        Method::GET,
        &format!("/v1/waitlist/{ticket}"),
        None,
        None,
    )
    .await;
    let promoted = t.body["reservation_id"].as_str().expect("rid");
    let c = call(
        &app,
        Some(SHOP_B),
        Method::POST,
        &format!("/v1/reservations/{promoted}/confirm"),
        None,
        None,
    )
    .await;
    assert_eq!(c.body["status"], "confirmed", "{:?}", c.body);
    let st = app.assert_books("tee").await;
    assert_eq!((st.held, st.sold), (0, 2));
}

// ------------------------------------------- buyers are their storefront's

/// A storefront names its own buyers: another storefront that sends the
/// same user id (by chance, or to use up that buyer's purchase cap or
/// admission bucket) is another buyer. Before, both storefronts' "bob" were
/// one counter in Redis and one bucket in memory.
#[tokio::test]
async fn a_storefront_cannot_use_up_another_storefronts_buyer() {
    let redis = RedisServer::start();
    let app = app_with(&redis, |c| {
        c.insecure_no_auth = false;
        c.api_keys = vec![SHOP_A.into(), SHOP_B.into()];
        c.admin_keys = vec![ADMIN.into()];
        c.user_rate_per_second = 1;
        c.user_burst = 2;
    })
    .await;
    app.preload_capped("capped", 10, 2, 1).await;

    // storefront A's bob reaches his cap of 1, then his bucket of 2
    let mine = reserve(&app, Some(SHOP_A), "a-1", "capped", "bob", false).await;
    assert_eq!(mine.status, StatusCode::CREATED, "{:?}", mine.body);
    let more = reserve(&app, Some(SHOP_A), "a-2", "capped", "bob", false).await;
    assert_eq!(more.code(), "purchase_limit", "{:?}", more.body);
    let flood = reserve(&app, Some(SHOP_A), "a-3", "capped", "bob", false).await;
    assert_eq!(
        flood.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{:?}",
        flood.body
    );

    // storefront B's bob is someone else: his own cap and his own bucket
    let theirs = reserve(&app, Some(SHOP_B), "b-1", "capped", "bob", false).await;
    assert_eq!(theirs.status, StatusCode::CREATED, "{:?}", theirs.body);
    let st = app.assert_books("capped").await;
    assert_eq!((st.available, st.held), (8, 2), "{st:?}");

    // and B's release gives back B's bob's count only
    let rid = theirs.body["reservation_id"].as_str().expect("rid");
    let path = format!("/v1/reservations/{rid}/release");
    let gone = call(&app, Some(SHOP_B), Method::POST, &path, None, None).await;
    assert_eq!(gone.status, StatusCode::OK, "{:?}", gone.body);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let again = reserve(&app, Some(SHOP_B), "b-2", "capped", "bob", false).await;
    assert_eq!(again.status, StatusCode::CREATED, "{:?}", again.body);
    let still = reserve(&app, Some(SHOP_A), "a-4", "capped", "bob", false).await;
    assert_eq!(still.code(), "purchase_limit", "{:?}", still.body);
}

/// One live waitlist ticket per buyer, and a buyer is its storefront's:
/// another storefront's "bob" neither blocks this one's from joining nor is
/// told his ticket.
#[tokio::test]
async fn a_storefronts_waitlist_buyer_is_not_another_storefronts() {
    let redis = RedisServer::start();
    let app = two_storefronts(&redis).await;
    app.preload("queue", 1, 1).await;
    let sold = reserve(&app, Some(SHOP_A), "first", "queue", "cy", false).await;
    assert_eq!(sold.status, StatusCode::CREATED, "{:?}", sold.body);
    let a = reserve(&app, Some(SHOP_A), "a-w1", "queue", "bob", true).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{:?}", a.body);
    // the same storefront's bob again: his live ticket, as before
    let again = reserve(&app, Some(SHOP_A), "a-w2", "queue", "bob", true).await;
    assert_ne!(again.status, StatusCode::ACCEPTED, "{:?}", again.body);
    // storefront B's bob is another buyer: a ticket of his own
    let b = reserve(&app, Some(SHOP_B), "b-w1", "queue", "bob", true).await;
    assert_eq!(b.status, StatusCode::ACCEPTED, "{:?}", b.body);
    assert_ne!(b.body["ticket_id"], a.body["ticket_id"]);
    assert!(
        !b.body
            .to_string()
            .contains(a.body["ticket_id"].as_str().expect("ticket")),
        "{:?}",
        b.body
    );
}
