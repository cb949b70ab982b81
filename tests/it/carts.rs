//! Carts (issue 22, docs/carts.md): several lines held all or nothing, by a
//! saga of ordinary holds. On a real Redis and a real cluster: many
//! concurrent carts on scarce stock are each whole or empty and the books
//! are exact; retries replay; hostile requests get a clear 4xx; another
//! storefront sees nothing; an instance killed at each step of the saga
//! (`FLASHGATE_FAILPOINT`) leaves, once the sweeper passed, a whole cart or
//! nothing held; a master failover gives no partial or double cart.

use crate::support;

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flashgate::config::Config;
use futures::future::join_all;
use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use support::cluster::{keyslot, Cluster};
use support::{eventually, free_port, spawn_app, spawn_app_with, RedisServer, TestApp};

/// Longest wait for anything polled (never a performance limit).
const WAIT: Duration = Duration::from_secs(60);

pub(crate) type Lines = Vec<(String, i64)>;

pub(crate) async fn post_cart(
    app: &TestApp,
    key: &str,
    user: &str,
    lines: &[(String, i64)],
) -> support::Answer {
    post_cart_as(app, None, key, user, lines).await
}

async fn post_cart_as(
    app: &TestApp,
    bearer: Option<&str>,
    key: &str,
    user: &str,
    lines: &[(String, i64)],
) -> support::Answer {
    let body = json!({
        "user_id": user,
        "lines": lines.iter().map(|(s, q)| json!({"sku": s, "qty": q})).collect::<Vec<_>>(),
    });
    let auth = bearer.map(|b| format!("Bearer {b}"));
    let mut headers = vec![
        ("content-type", "application/json"),
        ("idempotency-key", key),
    ];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    app.request(
        Method::POST,
        "/v1/carts",
        &headers,
        body.to_string().into_bytes(),
    )
    .await
}

pub(crate) async fn cart_action(
    app: &TestApp,
    bearer: Option<&str>,
    id: &str,
    action: &str,
) -> support::Answer {
    let auth = bearer.map(|b| format!("Bearer {b}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("authorization", a)])
        .unwrap_or_default();
    let (method, path) = if action.is_empty() {
        (Method::GET, format!("/v1/carts/{id}"))
    } else {
        (Method::POST, format!("/v1/carts/{id}/{action}"))
    };
    app.request(method, &path, &headers, vec![]).await
}

pub(crate) fn lines(l: &[(&str, i64)]) -> Lines {
    l.iter().map(|(s, q)| (s.to_string(), *q)).collect()
}

pub(crate) fn rids(a: &support::Answer) -> Vec<String> {
    a.body["lines"]
        .as_array()
        .unwrap_or_else(|| panic!("no lines in {}", a.body))
        .iter()
        .map(|l| l["reservation_id"].as_str().expect("rid").to_string())
        .collect()
}

async fn held_units(app: &TestApp, sku: &str) -> i64 {
    app.assert_books(sku).await.held
}

/// Carts on the work list, over its 16 buckets; `redis_cli(key, args)` runs
/// a command on the server holding `key`.
fn pending_carts(redis_cli: impl Fn(&str, &[&str]) -> String) -> i64 {
    flashgate::inventory::keys::CART_LIST_BUCKETS
        .iter()
        .map(|k| {
            redis_cli(k, &["ZCARD", k])
                .trim()
                .parse::<i64>()
                .unwrap_or(1_000_000)
        })
        .sum()
}

/// Every cart answered 2xx holds each of its lines (or had it confirmed),
/// and per SKU the units held are exactly those of those carts: a cart that
/// was refused holds nothing, and no line is held twice. `lost`: lines whose
/// record is gone (a failover may lose acknowledged writes); they are
/// counted and returned, never as held.
async fn assert_whole_or_empty(
    app: &TestApp,
    carts: &[(Lines, support::Answer)],
    skus: &[&str],
) -> usize {
    let mut want: BTreeMap<String, i64> = skus.iter().map(|s| (s.to_string(), 0)).collect();
    let mut lost = 0;
    for (ls, a) in carts {
        if !a.status.is_success() {
            continue;
        }
        let ids = rids(a);
        assert_eq!(ids.len(), ls.len(), "{}", a.body);
        for ((sku, qty), rid) in ls.iter().zip(ids) {
            let r = app.get(&format!("/v1/reservations/{rid}")).await;
            if r.status == StatusCode::NOT_FOUND {
                lost += 1;
                continue;
            }
            assert_eq!(r.status, StatusCode::OK, "{}", r.body);
            assert_eq!(r.body["status"], "held", "line {rid} of {}", a.body);
            assert_eq!(r.body["qty"].as_i64(), Some(*qty));
            assert_eq!(r.body["sku"].as_str(), Some(sku.as_str()));
            *want.entry(sku.clone()).or_default() += qty;
        }
    }
    for (sku, units) in &want {
        let st = app.assert_books(sku).await;
        assert_eq!(
            st.held, *units,
            "{sku}: units held are exactly those of the whole carts ({st:?})"
        );
        assert_eq!(st.initial, st.available + st.held + st.sold, "{st:?}");
    }
    lost
}

// ------------------------------------------------------------- the API

#[tokio::test]
async fn a_cart_holds_every_line_and_confirms_releases_and_extends_them_all() {
    let redis = RedisServer::start();
    let app = spawn_app_with(&redis, |c| c.hold_seconds = 600).await;
    for sku in ["ca", "cb", "cc"] {
        app.preload(sku, 10, 2).await;
    }
    let l = lines(&[("ca", 2), ("cb", 1), ("cc", 3)]);
    let a = post_cart(&app, "k1", "u1", &l).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(a.body["status"], "held");
    let id = a.body["cart_id"].as_str().expect("id").to_string();
    assert_eq!(id.len(), 32, "122 random bits as 32 hex digits");
    assert!(a.body["expires_at"].is_string());
    assert_whole_or_empty(&app, &[(l.clone(), a)], &["ca", "cb", "cc"]).await;

    let got = cart_action(&app, None, &id, "").await;
    assert_eq!(
        (got.status, got.body["status"].clone()),
        (StatusCode::OK, json!("held"))
    );
    let ext = cart_action(&app, None, &id, "extend").await;
    assert_eq!(ext.status, StatusCode::OK, "{}", ext.body);
    let conf = cart_action(&app, None, &id, "confirm").await;
    assert_eq!(conf.status, StatusCode::OK, "{}", conf.body);
    assert_eq!(conf.body["status"], "confirmed");
    for (sku, q) in &l {
        let st = app.assert_books(sku).await;
        assert_eq!((st.held, st.sold), (0, *q), "{sku}");
    }
    // confirm again: the same cart; release now: refused, nothing changes
    assert_eq!(
        cart_action(&app, None, &id, "confirm").await.status,
        StatusCode::OK
    );
    let rel = cart_action(&app, None, &id, "release").await;
    assert_eq!(
        (rel.status, rel.code()),
        (StatusCode::CONFLICT, "cart_confirmed")
    );

    // a second cart, released: every unit back
    let b = post_cart(&app, "k2", "u2", &lines(&[("ca", 1), ("cc", 1)])).await;
    assert_eq!(b.status, StatusCode::CREATED, "{}", b.body);
    let bid = b.body["cart_id"].as_str().expect("id").to_string();
    let rel = cart_action(&app, None, &bid, "release").await;
    assert_eq!(
        (rel.status, rel.body["status"].clone()),
        (StatusCode::OK, json!("released"))
    );
    for rid in rids(&b) {
        let r = app.get(&format!("/v1/reservations/{rid}")).await;
        assert_eq!(r.body["status"], "released");
    }
    let conf = cart_action(&app, None, &bid, "confirm").await;
    assert_eq!(conf.code(), "cart_released");
    assert_eq!(held_units(&app, "ca").await, 0);
    let page = app.get("/metrics").await.body;
    let page = page.as_str().unwrap_or_default().to_string();
    assert!(
        page.contains(r#"flashgate_carts_total{outcome="held"} 2"#),
        "{page}"
    );
    assert!(page.contains(r#"flashgate_carts_total{outcome="confirmed"} 1"#));
    assert!(page.contains(r#"flashgate_carts_total{outcome="released"} 1"#));
}

#[tokio::test]
async fn a_sold_out_line_is_named_and_the_cart_holds_nothing_and_a_retry_answers_the_same() {
    let redis = RedisServer::start();
    let app = spawn_app_with(&redis, |c| c.sold_out_cache_ms = 0).await;
    app.preload("sa", 5, 2).await;
    app.preload("sb", 1, 2).await;
    app.preload("sc", 5, 2).await;
    let blocker = app.reserve("blocker", "sb", 1, "other").await;
    assert_eq!(blocker.status, StatusCode::CREATED);
    let l = lines(&[("sa", 2), ("sc", 1), ("sb", 1)]);
    let a = post_cart(&app, "soldout-1", "u", &l).await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::CONFLICT, "sold_out"),
        "{}",
        a.body
    );
    assert_eq!(a.body["error"]["line"], 2);
    assert_eq!(a.body["error"]["sku"], "sb");
    assert_eq!(held_units(&app, "sa").await, 0, "line 0 was given back");
    assert_eq!(held_units(&app, "sc").await, 0, "line 1 was given back");
    assert_eq!(held_units(&app, "sb").await, 1, "only the blocker");
    // the retry answers the first result, even once stock is back
    app.action(blocker.body["reservation_id"].as_str().unwrap(), "release")
        .await;
    let again = post_cart(&app, "soldout-1", "u", &l).await;
    assert_eq!(
        (again.status, again.body["error"].clone()),
        (a.status, a.body["error"].clone())
    );
    assert_eq!(held_units(&app, "sa").await, 0);
    let page = app.get("/metrics").await.body;
    let page = page.as_str().unwrap_or_default().to_string();
    assert!(
        page.contains("flashgate_cart_compensations_total 1"),
        "{page}"
    );
    assert!(
        page.contains(r#"flashgate_carts_total{outcome="sold_out"} 1"#),
        "{page}"
    );
}

#[tokio::test]
async fn a_retry_replays_the_cart_and_another_body_with_the_key_is_refused() {
    let redis = RedisServer::start();
    let app = spawn_app(support::test_config(&redis)).await;
    app.preload("ra", 10, 4).await;
    app.preload("rb", 10, 4).await;
    let l = lines(&[("ra", 1), ("rb", 2)]);
    let first = post_cart(&app, "rk", "u", &l).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    for _ in 0..3 {
        let again = post_cart(&app, "rk", "u", &l).await;
        assert_eq!(again.status, StatusCode::OK, "{}", again.body);
        assert_eq!(again.body["cart_id"], first.body["cart_id"]);
        assert_eq!(rids(&again), rids(&first));
    }
    // the same key, another cart body or a reservation: refused
    let other = post_cart(&app, "rk", "u", &lines(&[("ra", 2), ("rb", 2)])).await;
    assert_eq!(other.code(), "idempotency_key_reused", "{}", other.body);
    let other = post_cart(&app, "rk", "v", &l).await;
    assert_eq!(other.code(), "idempotency_key_reused");
    let r = app.reserve("rk", "ra", 1, "u").await;
    assert_eq!(r.code(), "idempotency_key_reused", "{}", r.body);
    // a reservation's key, then a cart with it: refused
    assert_eq!(
        app.reserve("rk2", "ra", 1, "u").await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        post_cart(&app, "rk2", "u", &l).await.code(),
        "idempotency_key_reused"
    );
    // exactly the first cart and the one reservation are held
    assert_eq!(held_units(&app, "ra").await, 2);
    assert_eq!(held_units(&app, "rb").await, 2);
    // concurrent duplicates of one new cart: one cart
    let dup = join_all((0..20).map(|_| post_cart(&app, "dup", "u", &l))).await;
    let ids: std::collections::HashSet<String> = dup
        .iter()
        .map(|a| {
            assert!(a.status.is_success(), "{}", a.body);
            a.body["cart_id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(held_units(&app, "ra").await, 3);
    assert_eq!(held_units(&app, "rb").await, 4);
}

#[tokio::test]
async fn hostile_cart_requests_get_a_clear_4xx_and_hold_nothing() {
    let redis = RedisServer::start();
    let app = spawn_app_with(&redis, |c| c.max_cart_lines = 3).await;
    app.preload("ha", 10, 2).await;
    app.preload("hb", 10, 2).await;
    let cases: Vec<(Value, u16, &str)> = vec![
        (json!({"user_id": "u", "lines": []}), 422, "invalid_request"),
        (
            json!({"user_id": "u", "lines": (0..4).map(|i| json!({"sku": format!("x{i}"), "qty": 1})).collect::<Vec<_>>()}),
            422,
            "invalid_request",
        ),
        (
            json!({"user_id": "u", "lines": [{"sku": "ha", "qty": 0}]}),
            422,
            "invalid_request",
        ),
        (
            json!({"user_id": "u", "lines": [{"sku": "ha", "qty": 1_000_000_000_000i64}]}),
            422,
            "invalid_request",
        ),
        (
            json!({"user_id": "u", "lines": [{"sku": "ha", "qty": -1}]}),
            422,
            "invalid_request",
        ),
        (
            json!({"user_id": "u", "lines": [{"sku": "ha", "qty": 1}, {"sku": "ha", "qty": 1}]}),
            422,
            "invalid_request",
        ),
        (
            json!({"user_id": "u", "lines": [{"sku": "ha", "qty": 1}, {"sku": "nope", "qty": 1}]}),
            404,
            "unknown_sku",
        ),
        (
            json!({"user_id": "u", "lines": [{"sku": "bad sku", "qty": 1}]}),
            422,
            "invalid_request",
        ),
        (
            json!({"user_id": "", "lines": [{"sku": "ha", "qty": 1}]}),
            422,
            "invalid_request",
        ),
        (
            json!({"user_id": "u", "lines": [{"sku": "ha", "qty": 1, "x": 1}]}),
            422,
            "invalid_request",
        ),
        (json!({"user_id": "u"}), 422, "invalid_request"),
        (json!([1, 2]), 422, "invalid_request"),
    ];
    for (i, (body, status, code)) in cases.into_iter().enumerate() {
        let a = app
            .request(
                Method::POST,
                "/v1/carts",
                &[
                    ("content-type", "application/json"),
                    ("idempotency-key", &format!("h{i}")),
                ],
                body.to_string().into_bytes(),
            )
            .await;
        assert_eq!(
            (a.status.as_u16(), a.code()),
            (status, code),
            "case {i}: {body} → {}",
            a.body
        );
    }
    // no key; a 10 MB body
    let ok = json!({"user_id": "u", "lines": [{"sku": "ha", "qty": 1}]}).to_string();
    let a = app
        .request(
            Method::POST,
            "/v1/carts",
            &[("content-type", "application/json")],
            ok.into_bytes(),
        )
        .await;
    assert_eq!(a.code(), "invalid_request");
    let huge = vec![b' '; 10 * 1024 * 1024];
    let a = app
        .request(
            Method::POST,
            "/v1/carts",
            &[
                ("content-type", "application/json"),
                ("idempotency-key", "huge"),
            ],
            huge,
        )
        .await;
    assert!(a.status.is_client_error(), "{} {}", a.status, a.body);
    // bad and unknown ids: not found
    for id in [
        "x",
        "0123456789abcdef0123456789abcdeg",
        "0123456789abcdef0123456789abcdef",
        "../../x",
    ] {
        for action in ["", "confirm", "release", "extend"] {
            let a = cart_action(&app, None, id, action).await;
            assert!(
                a.status == StatusCode::NOT_FOUND,
                "{id}/{action}: {} {}",
                a.status,
                a.body
            );
        }
    }
    assert_eq!(
        cart_action(&app, None, "0123456789abcdef0123456789abcdef", "confirm")
            .await
            .code(),
        "cart_not_found"
    );
    assert_eq!(held_units(&app, "ha").await, 0);
    assert_eq!(held_units(&app, "hb").await, 0);
    assert_eq!(pending_carts(|_, a| redis.cli(a)), 0);
}

#[tokio::test]
async fn a_cart_confirmed_too_late_sells_nothing_and_gives_every_line_back() {
    let redis = RedisServer::start();
    let app = spawn_app_with(&redis, |c| {
        c.hold_seconds = 1;
        c.cart_saga_ms = 100;
    })
    .await;
    app.preload("la", 5, 2).await;
    app.preload("lb", 5, 2).await;
    let a = post_cart(&app, "late", "u", &lines(&[("la", 1), ("lb", 2)])).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let id = a.body["cart_id"].as_str().unwrap().to_string();
    assert!(
        eventually(WAIT, || async {
            cart_action(&app, None, &id, "").await.body["status"] == "expired"
        })
        .await
    );
    let c = cart_action(&app, None, &id, "confirm").await;
    assert_eq!(
        (c.status, c.code()),
        (StatusCode::CONFLICT, "cart_expired"),
        "{}",
        c.body
    );
    for sku in ["la", "lb"] {
        let st = app.assert_books(sku).await;
        assert_eq!(
            (st.held, st.sold),
            (0, 0),
            "{sku}: nothing sold, nothing held"
        );
    }
    assert_eq!(
        cart_action(&app, None, &id, "").await.body["status"],
        "expired"
    );
    assert_eq!(
        cart_action(&app, None, &id, "confirm").await.code(),
        "cart_expired"
    );
}

#[tokio::test]
async fn a_line_released_on_its_own_makes_the_confirm_incomplete_and_the_rest_stays_sold() {
    let redis = RedisServer::start();
    let app = spawn_app(support::test_config(&redis)).await;
    app.preload("ia", 5, 2).await;
    app.preload("ib", 5, 2).await;
    let a = post_cart(&app, "inc", "u", &lines(&[("ia", 1), ("ib", 2)])).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let id = a.body["cart_id"].as_str().unwrap().to_string();
    let line1 = rids(&a)[1].clone();
    assert_eq!(app.action(&line1, "release").await.status, StatusCode::OK);
    let c = cart_action(&app, None, &id, "confirm").await;
    assert_eq!(
        (c.status, c.code()),
        (StatusCode::CONFLICT, "cart_incomplete"),
        "{}",
        c.body
    );
    assert_eq!(
        c.body["error"]["unsold"],
        serde_json::json!([1]),
        "{}",
        c.body
    );
    let st = app.assert_books("ia").await;
    assert_eq!((st.held, st.sold), (0, 1), "line 0 stays sold");
    let st = app.assert_books("ib").await;
    assert_eq!((st.held, st.sold), (0, 0));
    assert_eq!(
        cart_action(&app, None, &id, "").await.body["status"],
        "incomplete"
    );
    assert_eq!(pending_carts(|_, a| redis.cli(a)), 0);
}

/// Issue 22: a line confirmed on its own through `/v1/reservations`, then
/// the cart released. The release used to skip the sold line and end the
/// cart `released` — a cart whose state said "nothing sold" with a line sold.
#[tokio::test]
async fn a_line_confirmed_on_its_own_makes_the_release_incomplete_and_stays_sold() {
    let redis = RedisServer::start();
    let app = spawn_app(support::test_config(&redis)).await;
    for sku in ["ra", "rb", "rc"] {
        app.preload(sku, 5, 2).await;
    }
    let a = post_cart(&app, "rel", "u", &lines(&[("ra", 1), ("rb", 2), ("rc", 3)])).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let id = a.body["cart_id"].as_str().unwrap().to_string();
    let line1 = rids(&a)[1].clone();
    assert_eq!(app.action(&line1, "confirm").await.status, StatusCode::OK);
    for _ in 0..2 {
        // and again: the answer does not change
        let r = cart_action(&app, None, &id, "release").await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::CONFLICT, "cart_incomplete"),
            "{}",
            r.body
        );
        assert_eq!(
            r.body["error"]["unsold"],
            serde_json::json!([0, 2]),
            "{}",
            r.body
        );
    }
    let g = cart_action(&app, None, &id, "").await;
    assert_eq!(g.body["status"], "incomplete", "{}", g.body);
    let st = app.assert_books("rb").await;
    assert_eq!((st.held, st.sold), (0, 2), "the sold line stays sold");
    for sku in ["ra", "rc"] {
        let st = app.assert_books(sku).await;
        assert_eq!((st.held, st.sold), (0, 0), "{sku}: released");
    }
    let key = flashgate::inventory::keys::cart(&flashgate::domain::CartId::parse(&id).unwrap());
    let rec = redis.cli(&["HGET", &key, "bad"]);
    assert_eq!(rec.trim(), "0,2", "bad names the lines not sold");
    assert_eq!(pending_carts(|_, a| redis.cli(a)), 0);
    // the cart can be neither confirmed nor extended any more
    for action in ["confirm", "extend"] {
        assert_eq!(
            cart_action(&app, None, &id, action).await.code(),
            "cart_incomplete"
        );
    }
}

/// The same through a confirm too late: the cart's release (it ends
/// `expired` when nothing is sold) meets the line sold on its own.
#[tokio::test]
async fn a_line_confirmed_on_its_own_makes_a_too_late_confirm_incomplete() {
    let redis = RedisServer::start();
    let app = spawn_app_with(&redis, |c| {
        c.hold_seconds = 1;
        c.cart_saga_ms = 100;
    })
    .await;
    app.preload("ta", 5, 2).await;
    app.preload("tb", 5, 2).await;
    let a = post_cart(&app, "late", "u", &lines(&[("ta", 1), ("tb", 2)])).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let id = a.body["cart_id"].as_str().unwrap().to_string();
    assert_eq!(
        app.action(&rids(&a)[0], "confirm").await.status,
        StatusCode::OK
    );
    assert!(
        eventually(WAIT, || async {
            cart_action(&app, None, &id, "").await.body["status"] == "expired"
        })
        .await
    );
    let c = cart_action(&app, None, &id, "confirm").await;
    assert_eq!(
        (c.status, c.code()),
        (StatusCode::CONFLICT, "cart_incomplete"),
        "{}",
        c.body
    );
    assert_eq!(
        c.body["error"]["unsold"],
        serde_json::json!([1]),
        "{}",
        c.body
    );
    assert_eq!(
        cart_action(&app, None, &id, "").await.body["status"],
        "incomplete"
    );
    let st = app.assert_books("ta").await;
    assert_eq!((st.held, st.sold), (0, 1));
    let st = app.assert_books("tb").await;
    assert_eq!((st.held, st.sold), (0, 0));
}

#[tokio::test]
async fn each_skus_purchase_cap_applies_to_its_line() {
    let redis = RedisServer::start();
    let app = spawn_app(support::test_config(&redis)).await;
    app.preload("pa", 10, 2).await;
    let capped = flashgate::domain::Sku::parse("pc").unwrap();
    app.preload_capped(capped.as_str(), 10, 2, 1).await;
    let over = post_cart(&app, "cap-1", "buyer", &lines(&[("pa", 1), ("pc", 2)])).await;
    assert_eq!(over.code(), "purchase_limit", "{}", over.body);
    assert_eq!(
        (
            over.body["error"]["line"].clone(),
            over.body["error"]["sku"].clone()
        ),
        (json!(1), json!("pc"))
    );
    assert_eq!(held_units(&app, "pa").await, 0);
    let first = post_cart(&app, "cap-2", "buyer", &lines(&[("pa", 1), ("pc", 1)])).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    let second = post_cart(&app, "cap-3", "buyer", &lines(&[("pc", 1), ("pa", 1)])).await;
    assert_eq!(
        (second.code(), second.body["error"]["line"].clone()),
        ("purchase_limit", json!(0))
    );
    // the first cart released: the buyer's cap is free again
    let id = first.body["cart_id"].as_str().unwrap();
    assert_eq!(
        cart_action(&app, None, id, "release").await.status,
        StatusCode::OK
    );
    let third = post_cart(&app, "cap-4", "buyer", &lines(&[("pc", 1)])).await;
    assert_eq!(third.status, StatusCode::CREATED, "{}", third.body);
    assert_eq!(held_units(&app, "pc").await, 1);
    assert_eq!(held_units(&app, "pa").await, 0);
}

#[tokio::test]
async fn the_work_list_is_bounded_pruned_and_cart_records_expire() {
    let redis = RedisServer::start();
    // one cart per bucket of the list
    let app = spawn_app_with(&redis, |c| c.max_pending_carts = 16).await;
    app.preload("wa", 10, 2).await;
    let l = lines(&[("wa", 1)]);
    // a cart in progress elsewhere in every bucket (far deadlines): full
    let far = "99999999999999";
    let buckets = flashgate::inventory::keys::CART_LIST_BUCKETS;
    let fake = |i: usize| format!("{i:x}").repeat(32);
    for (i, b) in buckets.iter().enumerate() {
        redis.cli(&["ZADD", b, far, &fake(i)]);
    }
    let a = post_cart(&app, "busy", "u", &l).await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "carts_busy"),
        "{}",
        a.body
    );
    assert_eq!(held_units(&app, "wa").await, 0, "nothing held");
    // entries whose cart is gone, or that name no cart, leave once due
    for (i, b) in buckets.iter().enumerate() {
        redis.cli(&["ZADD", b, "1", &fake(i)]);
    }
    redis.cli(&["ZADD", buckets[3], "1", "not-a-cart-id"]);
    assert!(
        eventually(WAIT, || async { pending_carts(|_, a| redis.cli(a)) == 0 }).await,
        "the sweeper pruned the list"
    );
    let a = post_cart(&app, "busy-2", "u", &l).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(
        pending_carts(|_, a| redis.cli(a)),
        0,
        "a held cart leaves the list"
    );
    // the record expires (garbage collection: the longest hold plus the
    // key retention)
    let id = a.body["cart_id"].as_str().unwrap();
    let ttl: i64 = redis
        .cli(&["PTTL", &format!("fg:{{carts~{}}}:c:{id}", &id[..1])])
        .trim()
        .parse()
        .unwrap();
    let cfg = support::test_config(&redis);
    let bound = ((cfg.max_hold_seconds + cfg.idempotency_ttl_seconds) * 1000) as i64;
    assert!(ttl > 0 && ttl <= bound, "record ttl {ttl} ms");
}

const SHOP_A: &str = "shopa:cart-secret-of-shop-a-0123456789";
const SHOP_B: &str = "shopb:cart-secret-of-shop-b-0123456789";

#[tokio::test]
async fn another_storefront_can_neither_see_nor_act_on_a_cart() {
    let redis = RedisServer::start();
    let app = spawn_app_with(&redis, |c| {
        c.insecure_no_auth = false;
        c.api_keys = vec![SHOP_A.into(), SHOP_B.into()];
    })
    .await;
    app.preload("ta", 10, 2).await;
    let (a_key, b_key) = (
        SHOP_A.split_once(':').unwrap().1,
        SHOP_B.split_once(':').unwrap().1,
    );
    let l = lines(&[("ta", 1)]);
    let a = post_cart_as(&app, Some(a_key), "same-key", "u", &l).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let id = a.body["cart_id"].as_str().unwrap().to_string();
    for action in ["", "confirm", "release", "extend"] {
        let b = cart_action(&app, Some(b_key), &id, action).await;
        assert_eq!(b.code(), "cart_not_found", "{action}: {}", b.body);
    }
    // the same client key in shop B's namespace is another cart
    let b = post_cart_as(&app, Some(b_key), "same-key", "u", &l).await;
    assert_eq!(b.status, StatusCode::CREATED, "{}", b.body);
    assert_ne!(b.body["cart_id"], a.body["cart_id"]);
    assert_eq!(
        cart_action(&app, Some(a_key), &id, "").await.status,
        StatusCode::OK
    );
    assert_eq!(held_units(&app, "ta").await, 2);
}

// ------------------------------------------------------------- concurrency

/// `n` carts of 3 lines (1 or 2 units each, lines in rotating order) at once.
async fn many_carts(
    app: &Arc<TestApp>,
    n: usize,
    skus: [&'static str; 3],
) -> Vec<(Lines, support::Answer)> {
    let answers = join_all((0..n).map(|i| {
        let app = app.clone();
        tokio::spawn(async move {
            let mut l: Lines = (0..3)
                .map(|j| (skus[(i + j) % 3].to_string(), 1 + ((i * 7 + j) % 2) as i64))
                .collect();
            if i % 2 == 1 {
                l.reverse();
            }
            let a = post_cart(&app, &format!("cart-{i}"), &format!("user-{i}"), &l).await;
            (l, a)
        })
    }))
    .await;
    answers.into_iter().map(|a| a.expect("task")).collect()
}

fn check_answers(carts: &[(Lines, support::Answer)]) -> (usize, usize) {
    let mut whole = 0;
    let mut refused = 0;
    for (l, a) in carts {
        match (a.status, a.code()) {
            (StatusCode::CREATED, _) => whole += 1,
            (StatusCode::CONFLICT, "sold_out") => {
                let line = a.body["error"]["line"].as_u64().expect("line") as usize;
                assert_eq!(
                    a.body["error"]["sku"].as_str(),
                    Some(l[line].0.as_str()),
                    "{}",
                    a.body
                );
                refused += 1;
            }
            _ => panic!("unexpected answer {} {}", a.status, a.body),
        }
    }
    (whole, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_three_line_carts_on_scarce_stock_are_each_whole_or_empty() {
    let redis = RedisServer::start();
    let app = Arc::new(
        spawn_app_with(&redis, |c| {
            c.request_timeout_ms = 120_000;
            c.sold_out_cache_ms = 0;
        })
        .await,
    );
    let skus = ["m1", "m2", "m3"];
    for (s, stock) in skus.iter().zip([420, 300, 360]) {
        app.preload(s, stock, 4).await;
    }
    let carts = many_carts(&app, 1000, skus).await;
    let (whole, refused) = check_answers(&carts);
    eprintln!("{whole} whole carts, {refused} refused");
    assert!(
        whole > 0 && refused > 0,
        "scarce: some carts whole, some refused"
    );
    assert_whole_or_empty(&app, &carts, &skus).await;
    assert_eq!(
        pending_carts(|_, a| redis.cli(a)),
        0,
        "no cart left in a transitional state"
    );
    // retries answer the first result
    for (i, (l, first)) in carts.iter().enumerate().step_by(10) {
        let again = post_cart(&app, &format!("cart-{i}"), &format!("user-{i}"), l).await;
        if first.status == StatusCode::CREATED {
            assert_eq!(again.status, StatusCode::OK, "{}", again.body);
            assert_eq!(rids(&again), rids(first));
        } else {
            assert_eq!(again.body["error"], first.body["error"]);
        }
    }
    assert_whole_or_empty(&app, &carts, &skus).await;
}

fn cluster_config(cluster: &Cluster) -> Config {
    Config {
        request_timeout_ms: 120_000,
        sold_out_cache_ms: 0,
        ..support::cluster::test_config(cluster)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_carts_on_a_cluster_span_masters_and_are_each_whole_or_empty() {
    let cluster = Cluster::start(3, 0);
    let app = Arc::new(spawn_app(cluster_config(&cluster)).await);
    let skus = ["k1", "k2", "k3"];
    for (s, stock) in skus.iter().zip([130, 90, 110]) {
        app.preload(s, stock, 4).await;
    }
    let carts = many_carts(&app, 300, skus).await;
    let (whole, refused) = check_answers(&carts);
    eprintln!("cluster: {whole} whole carts, {refused} refused");
    assert!(whole > 0 && refused > 0);
    // the lines of one cart live on several masters
    let (_, a) = carts
        .iter()
        .find(|(_, a)| a.status == StatusCode::CREATED)
        .unwrap();
    let mut masters = std::collections::HashSet::new();
    for rid in rids(a) {
        let r = flashgate::domain::ReservationId::parse(&rid).unwrap();
        let meta = app.state.inventory.meta(r.sku()).await.unwrap().unwrap();
        masters.insert(cluster.owner(keyslot(&format!(
            "{{{}}}",
            meta.tags[usize::from(r.shard())]
        ))));
    }
    eprintln!("one cart's lines on masters {masters:?}");
    assert_whole_or_empty(&app, &carts, &skus).await;
    assert_eq!(
        pending_carts(|k, a| support::cluster::cli(cluster.owner(keyslot(k)), a)),
        0
    );
}

// ------------------------------------------------------------- crashes

/// A flashgate process on `redis`, with `FLASHGATE_FAILPOINT=point` and a
/// short saga deadline (300 ms).
struct Child {
    proc: std::process::Child,
    addr: String,
    _dir: tempfile::TempDir,
}

fn spawn_child(redis: &RedisServer, point: &str) -> Child {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("flashgate.toml");
    std::fs::write(&conf, "cart_saga_ms = 300\nsweep_interval_ms = 3600000\n").expect("config");
    let port = free_port();
    let proc = Command::new(env!("CARGO_BIN_EXE_flashgate"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--redis-url",
            &redis.url(),
            "--insecure-no-auth",
            "--config",
            conf.to_str().unwrap(),
        ])
        .env("FLASHGATE_FAILPOINT", point)
        .env_remove("FLASHGATE_API_KEYS")
        .env_remove("FLASHGATE_ADMIN_KEYS")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("flashgate starts");
    Child {
        proc,
        addr: format!("127.0.0.1:{port}"),
        _dir: dir,
    }
}

impl Child {
    fn wait_up(&self) {
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(&self.addr).is_err() {
            assert!(Instant::now() < deadline, "the child came up");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Send one request; the answer, if the process lived to give one.
    fn send(&self, method: &str, path: &str, key: &str, body: &str) -> String {
        let mut s = std::net::TcpStream::connect(&self.addr).expect("connect");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Idempotency-Key: {key}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).expect("write");
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer
    }

    /// The process exited at its failpoint (code 86).
    fn died_at_failpoint(mut self) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(st) = self.proc.try_wait().expect("wait") {
                assert_eq!(st.code(), Some(86), "exited at the failpoint");
                return;
            }
            assert!(Instant::now() < deadline, "the failpoint fired");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.proc.kill();
        let _ = self.proc.wait();
    }
}

fn cart_body(l: &Lines) -> String {
    json!({
        "user_id": "crash",
        "lines": l.iter().map(|(s, q)| json!({"sku": s, "qty": q})).collect::<Vec<_>>(),
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_at_each_saga_step_leaves_a_whole_cart_or_nothing_once_swept() {
    let redis = RedisServer::start();
    // the survivor: its sweeper finishes what the dead instance left
    let app = spawn_app_with(&redis, |c| c.cart_saga_ms = 300).await;
    let points = [
        "cart_after_claim",
        "cart_after_begin",
        "cart_after_line:0",
        "cart_after_line:1",
        "cart_before_held",
        "cart_after_compensating",
    ];
    for (n, point) in points.iter().enumerate() {
        let skus: Vec<String> = (0..3).map(|j| format!("fp{n}x{j}")).collect();
        for s in &skus {
            app.preload(s, 10, 2).await;
        }
        let l: Lines = skus.iter().map(|s| (s.clone(), 2)).collect();
        let mut blocker = None;
        if *point == "cart_after_compensating" {
            // the last line is sold out: the saga compensates
            let b = app
                .reserve(&format!("block-{n}"), &skus[2], 10, "other")
                .await;
            assert_eq!(b.status, StatusCode::CREATED, "{}", b.body);
            blocker = Some(b);
        }
        let child = spawn_child(&redis, point);
        child.wait_up();
        let key = format!("crash-{n}");
        let answer = child.send("POST", "/v1/carts", &key, &cart_body(&l));
        assert!(
            !answer.contains("HTTP/1.1 2"),
            "{point}: died before answering: {answer}"
        );
        child.died_at_failpoint();

        // once the deadline and the sweeper passed, no cart is in between
        assert!(
            eventually(WAIT, || async { pending_carts(|_, a| redis.cli(a)) == 0 }).await,
            "{point}: the sweeper finished the cart"
        );
        let held: i64 = join_all(skus.iter().take(2).map(|s| held_units(&app, s)))
            .await
            .into_iter()
            .sum();
        assert_eq!(held, 0, "{point}: nothing held after the sweep");

        // the client's retry: a whole cart or a refusal, never a part
        let again = post_cart(&app, &key, "crash", &l).await;
        eprintln!("{point}: retry → {} {}", again.status, again.body);
        if blocker.is_none() {
            if matches!(*point, "cart_after_claim" | "cart_after_begin") {
                // no record, or a pending one not yet on the work list
                // (nothing of it held): the retry makes or resumes the cart
                assert_eq!(again.status, StatusCode::CREATED, "{}", again.body);
            } else {
                assert_eq!(
                    (again.status, again.code()),
                    (StatusCode::CONFLICT, "cart_failed"),
                    "{point}: abandoned and given back"
                );
            }
        } else {
            assert_eq!(again.code(), "sold_out", "{}", again.body);
            assert_eq!(again.body["error"]["line"], 2);
        }
        let carts = vec![(l.clone(), again)];
        let sku_refs: Vec<&str> = skus.iter().take(2).map(String::as_str).collect();
        assert_whole_or_empty(&app, &carts, &sku_refs).await;
    }
    let page = app.get("/metrics").await.body;
    let page = page.as_str().unwrap_or_default().to_string();
    assert_eq!(
        metric(&page, r#"flashgate_carts_total{outcome="abandoned"}"#),
        3.0,
        "after_line:0, after_line:1, before_held abandoned (after_compensating had failed already)"
    );
}

fn metric(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_mid_confirm_is_rolled_forward_by_the_sweeper() {
    let redis = RedisServer::start();
    let app = spawn_app_with(&redis, |c| c.cart_saga_ms = 300).await;
    for s in ["cf0", "cf1", "cf2"] {
        app.preload(s, 10, 2).await;
    }
    let l = lines(&[("cf0", 1), ("cf1", 2), ("cf2", 3)]);
    let a = post_cart(&app, "conf", "u", &l).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let id = a.body["cart_id"].as_str().unwrap().to_string();
    let child = spawn_child(&redis, "cart_confirm_after_line:0");
    child.wait_up();
    let answer = child.send("POST", &format!("/v1/carts/{id}/confirm"), "-", "");
    assert!(!answer.contains("HTTP/1.1 2"), "{answer}");
    child.died_at_failpoint();
    assert!(
        eventually(WAIT, || async {
            cart_action(&app, None, &id, "").await.body["status"] == "confirmed"
        })
        .await,
        "the sweeper confirmed the rest"
    );
    for (sku, q) in &l {
        let st = app.assert_books(sku).await;
        assert_eq!((st.held, st.sold), (0, *q), "{sku}: every line sold");
    }
    assert_eq!(pending_carts(|_, a| redis.cli(a)), 0);
}

// ------------------------------------------------------------- failover

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_failover_during_carts_gives_no_partial_or_double_cart() {
    let mut cluster = Cluster::start(3, 1);
    let mut config = cluster_config(&cluster);
    config.redis_timeout_ms = 500;
    config.cart_saga_ms = 2_000;
    let app = Arc::new(spawn_app(config).await);
    let skus = ["f1", "f2", "f3"];
    for s in skus {
        app.preload(s, 100_000, 4).await;
    }
    let sku = flashgate::domain::Sku::parse("f1").unwrap();
    let meta = app.state.inventory.meta(&sku).await.unwrap().unwrap();
    let victim = cluster.owner(keyslot(&format!("{{{}}}", meta.tags[0])));
    let replica = cluster.replica_of(victim);

    let stop = Arc::new(AtomicBool::new(false));
    let retried = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // 8 workers, each cart retried on 503 with its key until definite
    let workers = (0..8).map(|w| {
        let (app, stop, retried) = (app.clone(), stop.clone(), retried.clone());
        tokio::spawn(async move {
            let mut mine: Vec<(String, Lines, support::Answer)> = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let key = format!("fo-{w}-{n}");
                n += 1;
                let l: Lines = skus.iter().map(|s| (s.to_string(), 1)).collect();
                let mut a = post_cart(&app, &key, &key, &l).await;
                let mut tries = 0;
                while a.status == StatusCode::SERVICE_UNAVAILABLE && tries < 600 {
                    tries += 1;
                    retried.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    a = post_cart(&app, &key, &key, &l).await;
                }
                mine.push((key, l, a));
            }
            mine
        })
    });
    let workers: Vec<_> = workers.collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.node_mut(victim).kill();
    let promoted = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if support::cluster::cli(replica, &["ROLE"]).starts_with("master") {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    })
    .await
    .unwrap();
    assert!(promoted, "the replica was promoted");
    cluster.wait_healthy(Duration::from_secs(30));
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    let mut carts: Vec<(Lines, support::Answer)> = Vec::new();
    let mut by_status: HashMap<String, usize> = HashMap::new();
    for w in workers {
        for (key, l, a) in w.await.unwrap() {
            *by_status
                .entry(format!("{} {}", a.status.as_u16(), a.code()))
                .or_default() += 1;
            // a definite answer: the cart whole, or refused (abandoned
            // after 503s and given back); never anything else
            assert!(
                a.status.is_success() || matches!(a.code(), "cart_failed"),
                "{key}: {} {}",
                a.status,
                a.body
            );
            carts.push((l, a));
        }
    }
    let retried = retried.load(Ordering::SeqCst);
    eprintln!("carts across the failover: {by_status:?}, {retried} retries of a 503");
    assert!(
        retried > 0,
        "the failover was felt (503s), else this test proves little"
    );
    // every cart in a transitional state is finished by the sweeper
    assert!(
        eventually(WAIT, || async {
            pending_carts(|k, a| support::cluster::cli(cluster.owner(keyslot(k)), a)) == 0
        })
        .await,
        "no cart left in between"
    );
    let lost = assert_whole_or_empty(&app, &carts, &skus).await;
    eprintln!(
        "{} carts, {lost} acknowledged lines lost in the failover",
        carts.len()
    );
}
