//! Sale windows, the pre-queue and the fair draw on a real Redis
//! (docs/fair-draw.md): refusals before `opens_at` and after `closes_at`,
//! holds that outlive the close, 1,000 pre-queued buyers admitted in exactly
//! the committed order, a drawing instance killed mid-draw, and the
//! attacker's cases (a pre-queue flood, two tickets for one buyer, the seed
//! read early).

use crate::support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use flashgate::domain::{IdempotencyKey, ScopedKey, Sku, Tenant};
use flashgate::fairness::{self, DrawDocument, Seed};
use flashgate::inventory::{keys::WaitKeys, PreloadSpec, Window};
use fred::interfaces::{HashesInterface, KeysInterface, StreamsInterface};
use hyper::{Method, StatusCode};
use support::{eventually, free_port, spawn_app_with, RedisServer, TestApp};

/// The Redis clock now (ms): every window is judged by it.
async fn redis_now(app: &TestApp) -> i64 {
    app.state
        .inventory
        .redis_now_ms("fg:skus")
        .await
        .expect("TIME")
}

async fn load(app: &TestApp, sku: &str, stock: i64, force: bool, window: Window) {
    let sku = Sku::parse(sku).expect("sku");
    app.state
        .inventory
        .preload_with(
            &sku,
            PreloadSpec {
                stock,
                shards: 2,
                force,
                max_per_user: None,
                window,
            },
        )
        .await
        .expect("preload");
}

fn opens(at: i64) -> Window {
    Window {
        opens_at_ms: Some(at),
        closes_at_ms: None,
    }
}

async fn reserve(
    app: &TestApp,
    key: &str,
    sku: &str,
    user: &str,
    waitlist: bool,
) -> support::Answer {
    let body = serde_json::json!({"sku": sku, "qty": 1, "user_id": user, "waitlist": waitlist});
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

async fn draw_doc(app: &TestApp, sku: &str) -> DrawDocument {
    let a = app.get(&format!("/v1/skus/{sku}/draw")).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    // final once drawn: a CDN may keep it for good; before, never cached
    let cache = a.headers.get("cache-control").and_then(|v| v.to_str().ok());
    let drawn = a.body["status"] == "drawn";
    assert_eq!(
        cache,
        Some(if drawn {
            "public, max-age=31536000, immutable"
        } else {
            "no-cache"
        }),
        "{:?}",
        a.body["status"]
    );
    serde_json::from_value(a.body).expect("a draw document")
}

async fn wait_drawn(app: &TestApp, sku: &str) -> DrawDocument {
    assert!(
        eventually(Duration::from_secs(60), || async {
            draw_doc(app, sku).await.status == "drawn"
        })
        .await,
        "the draw was applied: {:?}",
        draw_doc(app, sku).await
    );
    draw_doc(app, sku).await
}

#[tokio::test]
async fn a_reserve_before_opens_at_is_refused_with_retry_after_and_never_marked_sold_out() {
    let redis = RedisServer::start();
    let app = spawn_app_with(&redis, |_| {}).await;
    let t0 = redis_now(&app).await;
    load(&app, "early", 5, false, opens(t0 + 60_000)).await;
    let a = app.reserve("e-1", "early", 1, "u1").await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{:?}", a.body);
    assert_eq!(a.code(), "sale_not_open");
    let retry: u64 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    let want = flashgate::inventory::ms_to_rfc3339(t0 + 60_000);
    assert_eq!(a.body["error"]["opens_at"], want.as_str());
    let doc = app.sku("early").await;
    assert_eq!(doc["opens_at"], want.as_str());
    assert_eq!(doc["available"], 5, "nothing was taken");

    // the crowd before the opening costs Redis (almost) nothing: answered
    // from memory, never more than one walk per 2 s, and nothing written
    // (reserve.lua calls, as this instance's metrics count them: the
    // promoter's own scripts run meanwhile)
    let reserves = || {
        app.state
            .metrics
            .script_duration
            .with_label_values(&["reserve"])
            .get_sample_count()
    };
    let before = reserves();
    for i in 0..200 {
        let a = app
            .reserve(&format!("crowd-{i}"), "early", 1, &format!("c{i}"))
            .await;
        assert_eq!(a.code(), "sale_not_open");
        let retry: u64 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "Retry-After {retry}");
        assert_eq!(a.body["error"]["opens_at"], want.as_str());
    }
    let walks = reserves() - before;
    assert!(walks < 10, "{walks} reserve.lua calls for 200 refusals");
    // (a refusal from memory writes no claim; the walk's refusal did)
    let claim = |k: &str| {
        let key = ScopedKey::new(&Tenant::Anonymous, &IdempotencyKey::parse(k).unwrap());
        redis.cli(&["EXISTS", &support::claim_name(&redis, &key)])
    };
    assert_eq!(claim("e-1"), "1");
    assert_eq!(claim("crowd-7"), "0");

    // the window moves to 1.5 s from now; the crowd keeps asking until it
    // opens, and the first answer that is not "not open" is a hold: the
    // refusals marked nothing as sold out (a mark would answer 409 sold_out
    // from memory right after the opening)
    let t1 = redis_now(&app).await;
    load(&app, "early", 5, true, opens(t1 + 1_500)).await;
    let mut i = 0;
    let first = loop {
        i += 1;
        let a = app
            .reserve(&format!("c-{i}"), "early", 1, &format!("u{i}"))
            .await;
        if a.code() != "sale_not_open" {
            break a;
        }
        assert!(i < 100_000, "the sale never opened");
    };
    assert!(i > 1, "the refusals ran before the opening");
    assert_eq!(first.status, StatusCode::CREATED, "{:?}", first.body);
    // a retry of a refused key holds too: the refusal wrote no verdict
    let again = app.reserve("e-1", "early", 1, "u1").await;
    assert_eq!(again.status, StatusCode::CREATED, "{:?}", again.body);
    app.assert_books("early").await;
}

#[tokio::test]
async fn after_closes_at_reserves_are_refused_and_holds_still_confirm_release_and_extend() {
    let redis = RedisServer::start();
    let app = spawn_app_with(&redis, |_| {}).await;
    let t0 = redis_now(&app).await;
    let window = Window {
        opens_at_ms: None,
        closes_at_ms: Some(t0 + 1_500),
    };
    // (stock for every probe below: a SKU found sold out answers
    // `sold_out` from memory, closed or not)
    load(&app, "late", 100_000, false, window).await;
    let mut rids = Vec::new();
    for i in 0..3 {
        let a = app
            .reserve(&format!("h-{i}"), "late", 1, &format!("u{i}"))
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
        rids.push(a.body["reservation_id"].as_str().unwrap().to_owned());
    }
    assert!(
        eventually(Duration::from_secs(30), || async {
            app.reserve(&format!("x-{}", uuid::Uuid::new_v4()), "late", 1, "x")
                .await
                .code()
                == "sale_closed"
        })
        .await,
        "the sale closed"
    );
    let w = reserve(&app, "w-1", "late", "w", true).await;
    assert_eq!((w.status, w.code()), (StatusCode::CONFLICT, "sale_closed"));
    // a retry of a key that got its hold before the close is still its hold
    let replay = app.reserve("h-0", "late", 1, "u0").await;
    assert_eq!(replay.status, StatusCode::OK, "{:?}", replay.body);
    assert_eq!(replay.body["reservation_id"], rids[0].as_str());
    assert_eq!(app.action(&rids[0], "confirm").await.status, StatusCode::OK);
    assert_eq!(app.action(&rids[1], "release").await.status, StatusCode::OK);
    assert_eq!(app.action(&rids[2], "extend").await.status, StatusCode::OK);
    let st = app.assert_books("late").await;
    assert_eq!(st.sold, 1);
    let extended = app.get(&format!("/v1/reservations/{}", rids[2])).await.body;
    assert_eq!(extended["status"], "held");
}

#[tokio::test]
async fn a_bad_window_is_refused_with_400_and_nothing_is_loaded() {
    let redis = RedisServer::start();
    let app = spawn_app_with(&redis, |_| {}).await;
    for body in [
        r#"{"stock":5,"opens_at":"2030-01-01T10:00:00Z","closes_at":"2030-01-01T10:00:00Z"}"#,
        r#"{"stock":5,"opens_at":"2030-01-01T10:00:00Z","closes_at":"2030-01-01T09:00:00Z"}"#,
        r#"{"stock":5,"opens_at":"tomorrow"}"#,
        r#"{"stock":5,"closes_at":"2030-01-01"}"#,
        r#"{"stock":5,"opens_at":"2030-01-01T10:00:00+24:00"}"#,
    ] {
        let a = app
            .request(
                Method::POST,
                "/admin/v1/skus/bad/preload",
                &[("content-type", "application/json")],
                body.as_bytes().to_vec(),
            )
            .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body}: {:?}", a.body);
        assert_eq!(a.code(), "invalid_sale_window", "{body}");
    }
    assert_eq!(app.get("/v1/skus/bad").await.status, StatusCode::NOT_FOUND);
    // the CLI refuses the same before touching Redis
    let out = Command::new(env!("CARGO_BIN_EXE_flashgate"))
        .args([
            "preload",
            "--sku",
            "bad",
            "--stock",
            "5",
            "--opens-at",
            "noon",
        ])
        .env("FLASHGATE_REDIS_URL", redis.url())
        .output()
        .expect("run flashgate");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("RFC 3339"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // a good one through the API: opens_at and the commitment are public
    let a = app
        .request(
            Method::POST,
            "/admin/v1/skus/good/preload",
            &[("content-type", "application/json")],
            br#"{"stock":5,"opens_at":"2030-01-01T11:00:00+01:00","closes_at":"2030-01-02T10:00:00Z"}"#
                .to_vec(),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
    let doc = app.sku("good").await;
    assert_eq!(doc["opens_at"], "2030-01-01T10:00:00.000Z");
    assert_eq!(doc["closes_at"], "2030-01-02T10:00:00.000Z");
    assert_eq!(doc["fairness_commitment"].as_str().map(str::len), Some(64));
    assert!(doc["fairness_seed"].is_null());
    // a SKU with a window is meta layout 4, which instances of layout 3
    // (before windows) refuse with a 503 rather than sell before opens_at
    // (tests/it/upgrade.rs, a layout newer than the instance's); one without
    // stays 3, served by old and new alike
    assert_eq!(redis.cli(&["HGET", "fg:{good}:meta", "layout"]), "4");
    app.preload("plain", 5, 1).await;
    assert_eq!(redis.cli(&["HGET", "fg:{plain}:meta", "layout"]), "3");
}

/// Pre-queue `n` buyers of `sku` (one key and one buyer each); their ticket
/// ids in arrival order.
async fn prequeue(app: &TestApp, sku: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let a = reserve(
            app,
            &format!("{sku}-pq-{i}"),
            sku,
            &format!("buyer-{i}"),
            true,
        )
        .await;
        assert_eq!(a.status, StatusCode::ACCEPTED, "{:?}", a.body);
        assert_eq!(a.body["status"], "prequeued");
        assert!(a.body["position"].is_null(), "no position before the draw");
        ids.push(a.body["ticket_id"].as_str().unwrap().to_owned());
    }
    ids
}

#[tokio::test]
async fn a_thousand_prequeued_buyers_are_admitted_in_exactly_the_committed_order() {
    let redis = RedisServer::start();
    let app = spawn_app_with(&redis, |_| {}).await;
    let t0 = redis_now(&app).await;
    load(&app, "drop", 300, false, opens(t0 + 600_000)).await;
    let commitment = app.sku("drop").await["fairness_commitment"]
        .as_str()
        .expect("published at load")
        .to_owned();
    let ids = prequeue(&app, "drop", 1000).await;
    let before = draw_doc(&app, "drop").await;
    assert_eq!(before.status, "open");
    assert!(before.fairness_seed.is_none() && before.tickets.is_empty());
    assert_eq!(before.fairness_commitment, commitment);

    // the opening comes (a reload moves it to now; the seed stays)
    let t1 = redis_now(&app).await;
    load(&app, "drop", 300, true, opens(t1 + 200)).await;
    let doc = wait_drawn(&app, "drop").await;
    assert_eq!(
        doc.fairness_commitment, commitment,
        "the seed never changed"
    );
    fairness::verify(&doc, Some(&commitment)).expect("the draw verifies");
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(doc.tickets, sorted, "every pre-queued ticket, none else");
    let seed = Seed::from_hex(doc.fairness_seed.as_deref().unwrap()).unwrap();
    let order = fairness::draw_order(&seed, &ids);
    assert_eq!(doc.order, order);
    assert_ne!(order, ids, "not arrival order");
    assert_eq!(
        app.sku("drop").await["fairness_seed"],
        seed.to_hex().as_str(),
        "revealed in the stock document too"
    );

    // the first 300 of the order hold a unit, the rest wait in that order
    assert!(
        eventually(Duration::from_secs(120), || async {
            app.sku("drop").await["waitlist"] == 700
        })
        .await,
        "300 promotions: {}",
        app.sku("drop").await
    );
    let mut rids = std::collections::HashSet::new();
    for (i, id) in order.iter().enumerate() {
        let t = app.get(&format!("/v1/waitlist/{id}")).await.body;
        if i < 300 {
            assert_eq!(t["status"], "promoted", "#{i} {t}");
            assert!(rids.insert(t["reservation_id"].as_str().unwrap().to_owned()));
        } else {
            assert_eq!(t["status"], "waiting", "#{i} {t}");
            assert_eq!(t["position"], i - 299, "#{i} {t}");
        }
    }
    let st = app.assert_books("drop").await;
    assert_eq!((st.available, st.held), (0, 300));
    // a join after the opening queues FIFO behind the drawn ones
    let late = reserve(&app, "late-joiner", "drop", "late", true).await;
    assert_eq!(late.status, StatusCode::ACCEPTED, "{:?}", late.body);
    assert_eq!(late.body["status"], "waiting");
    assert_eq!(late.body["position"], 701);
}

#[tokio::test]
async fn the_pre_queue_is_bounded_one_ticket_per_buyer_and_the_seed_stays_secret_until_drawn() {
    let redis = RedisServer::start();
    let app = spawn_app_with(&redis, |c| c.waitlist_capacity = 5).await;
    let t0 = redis_now(&app).await;
    load(&app, "hot", 2, false, opens(t0 + 600_000)).await;
    let ids = prequeue(&app, "hot", 4).await;
    // idempotent on the key
    let again = reserve(&app, "hot-pq-0", "hot", "buyer-0", true).await;
    assert_eq!(again.status, StatusCode::OK, "{:?}", again.body);
    assert_eq!(again.body["ticket_id"], ids[0].as_str());
    // one live ticket per buyer: another key of the same buyer
    let dup = reserve(&app, "hot-second-key", "hot", "buyer-0", true).await;
    assert_eq!(
        (dup.status, dup.code()),
        (StatusCode::CONFLICT, "already_waitlisted")
    );
    // the flood: capacity 5
    assert_eq!(
        reserve(&app, "f-0", "hot", "flood-0", true).await.status,
        StatusCode::ACCEPTED
    );
    for i in 1..20 {
        let a = reserve(&app, &format!("f-{i}"), "hot", &format!("flood-{i}"), true).await;
        assert_eq!(
            (a.status, a.code()),
            (StatusCode::CONFLICT, "waitlist_full")
        );
    }
    // ticket ids: 122 random bits each, none like another
    for id in &ids {
        let token = id.rsplit('.').next().unwrap();
        assert_eq!(token.len(), 32);
        assert_eq!(&token[12..13], "4", "a v4 UUID");
    }
    // the seed is in Redis, and in no answer of any endpoint before the draw
    let seed: String = app
        .state
        .inventory
        .pool()
        .get(WaitKeys::new(&Sku::parse("hot").unwrap()).seed())
        .await
        .expect("the seed");
    assert_eq!(seed.len(), 64);
    let mut pages = vec![
        "/v1/skus/hot".to_owned(),
        "/v1/skus/hot/draw".into(),
        "/admin/v1/skus/hot".into(),
        "/metrics".into(),
    ];
    pages.extend(ids.iter().map(|id| format!("/v1/waitlist/{id}")));
    for p in &pages {
        let a = app.get(p).await;
        assert!(!a.body.to_string().contains(&seed), "{p} shows the seed");
    }
    // the opening: now every ticket is in the list, and the seed is revealed
    let t1 = redis_now(&app).await;
    load(&app, "hot", 2, true, opens(t1 + 100)).await;
    let doc = wait_drawn(&app, "hot").await;
    assert_eq!(doc.fairness_seed.as_deref(), Some(seed.as_str()));
    assert_eq!(doc.tickets.len(), 5);
    fairness::verify(&doc, None).expect("verifies");
}

/// A flashgate process of its own (the drawing instance of the crash test).
fn instance(redis: &RedisServer, port: u16, failpoint: Option<&str>) -> Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_flashgate"));
    c.args([
        "serve",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--redis-url",
        &redis.url(),
        "--insecure-no-auth",
    ])
    .env("FLASHGATE_SWEEP_INTERVAL_MS", "50")
    .env_remove("FLASHGATE_API_KEYS")
    .env_remove("FLASHGATE_ADMIN_KEYS")
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    match failpoint {
        Some(f) => c.env("FLASHGATE_FAILPOINT", f),
        None => c.env_remove("FLASHGATE_FAILPOINT"),
    };
    c.spawn().expect("flashgate serve")
}

#[tokio::test]
async fn an_instance_killed_mid_draw_changes_nothing() {
    let redis = RedisServer::start();
    // the test's own instance only reads and joins: its promoter never runs
    // a round within the test (a sweep interval of an hour)
    let app = spawn_app_with(&redis, |c| c.sweep_interval_ms = 3_600_000).await;
    let t0 = redis_now(&app).await;
    load(&app, "crash", 20, false, opens(t0 + 600_000)).await;
    let ids = prequeue(&app, "crash", 50).await;
    let t1 = redis_now(&app).await;
    load(&app, "crash", 20, true, opens(t1 + 2_000)).await;

    // instance A draws and dies between the close and the order
    let mut a = instance(&redis, free_port(), Some("draw_after_close"));
    let mut exited = None;
    for _ in 0..600 {
        if let Some(s) = a.try_wait().expect("try_wait") {
            exited = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let Some(status) = exited else {
        let _ = a.kill();
        panic!("A never reached the failpoint");
    };
    assert!(!status.success(), "A aborted at the failpoint");
    let wk = WaitKeys::new(&Sku::parse("crash").unwrap());
    let state: Option<String> = app
        .state
        .inventory
        .pool()
        .hget(wk.draw(), "status")
        .await
        .unwrap();
    assert_eq!(
        state.as_deref(),
        Some("closed"),
        "A closed the pre-queue, then died"
    );
    // closed: the list is public, the seed not yet
    let closed = draw_doc(&app, "crash").await;
    assert_eq!(closed.status, "closed");
    assert!(closed.fairness_seed.is_none());
    assert_eq!(closed.tickets.len(), 50);
    // a join now is refused for the moment, never lost nor queued ahead
    let j = reserve(&app, "racer", "crash", "racer", true).await;
    assert_eq!(
        (j.status, j.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "draw_pending")
    );

    // instance B finishes it
    let port = free_port();
    let mut b = instance(&redis, port, None);
    let doc = wait_drawn(&app, "crash").await;
    fairness::verify(&doc, Some(&closed.fairness_commitment)).expect("verifies");
    assert_eq!(doc.tickets, closed.tickets, "the same frozen list");
    let seed = Seed::from_hex(doc.fairness_seed.as_deref().unwrap()).unwrap();
    assert_eq!(doc.order, fairness::draw_order(&seed, &ids));
    assert!(
        eventually(Duration::from_secs(60), || async {
            app.sku("crash").await["waitlist"] == 30
        })
        .await,
        "20 promotions: {}",
        app.sku("crash").await
    );
    let mut rids = std::collections::HashSet::new();
    for (i, id) in doc.order.iter().enumerate() {
        let t = app.get(&format!("/v1/waitlist/{id}")).await.body;
        if i < 20 {
            assert_eq!(t["status"], "promoted", "#{i} {t}");
            assert!(
                rids.insert(t["reservation_id"].as_str().unwrap().to_owned()),
                "admitted twice"
            );
        } else {
            assert_eq!(t["position"], i - 19, "#{i} {t}");
        }
    }
    // each drawn ticket was put in the stream once
    let entries: i64 = app.state.inventory.pool().xlen(wk.stream()).await.unwrap();
    assert!(
        entries <= 30,
        "{entries} stream entries for 30 waiting tickets"
    );
    let st = app.assert_books("crash").await;
    assert_eq!((st.available, st.held), (0, 20));
    let _ = b.kill();
    let _ = b.wait();
}

#[tokio::test]
async fn two_instances_drawing_at_once_apply_one_order_once() {
    let redis = RedisServer::start();
    let a = spawn_app_with(&redis, |_| {}).await;
    let b = spawn_app_with(&redis, |_| {}).await;
    let t0 = redis_now(&a).await;
    load(&a, "twin", 40, false, opens(t0 + 600_000)).await;
    let ids = prequeue(&a, "twin", 120).await;
    let t1 = redis_now(&a).await;
    load(&a, "twin", 40, true, opens(t1 + 300)).await;
    let doc = wait_drawn(&b, "twin").await;
    assert_eq!(
        doc,
        wait_drawn(&a, "twin").await,
        "one draw, as both see it"
    );
    let seed = Seed::from_hex(doc.fairness_seed.as_deref().unwrap()).unwrap();
    assert_eq!(doc.order, fairness::draw_order(&seed, &ids));
    assert!(
        eventually(Duration::from_secs(60), || async {
            a.sku("twin").await["waitlist"] == 80
        })
        .await,
        "40 promotions: {}",
        a.sku("twin").await
    );
    let mut rids = std::collections::HashSet::new();
    for (i, id) in doc.order.iter().enumerate() {
        let t = b.get(&format!("/v1/waitlist/{id}")).await.body;
        if i < 40 {
            assert_eq!(t["status"], "promoted", "#{i} {t}");
            assert!(rids.insert(t["reservation_id"].as_str().unwrap().to_owned()));
        } else {
            assert_eq!(t["position"], i - 39, "#{i} {t}");
        }
    }
    // every drawn ticket entered the stream once: the promoted ones left it
    let wk = WaitKeys::new(&Sku::parse("twin").unwrap());
    let entries: i64 = a.state.inventory.pool().xlen(wk.stream()).await.unwrap();
    assert_eq!(entries, 80);
    let st = a.assert_books("twin").await;
    assert_eq!((st.available, st.held), (0, 40));
}

#[tokio::test]
async fn a_cart_with_a_line_not_open_yet_holds_nothing() {
    let redis = RedisServer::start();
    let app = spawn_app_with(&redis, |_| {}).await;
    app.preload("open-now", 5, 2).await;
    let t0 = redis_now(&app).await;
    load(&app, "opens-later", 5, false, opens(t0 + 600_000)).await;
    let body = serde_json::json!({
        "user_id": "u1",
        "lines": [{"sku": "open-now", "qty": 1}, {"sku": "opens-later", "qty": 1}],
    });
    let a = app
        .request(
            Method::POST,
            "/v1/carts",
            &[
                ("content-type", "application/json"),
                ("idempotency-key", "cart-1"),
            ],
            body.to_string().into_bytes(),
        )
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::CONFLICT, "sale_not_open"),
        "{:?}",
        a.body
    );
    // the open line's hold was given back at once, not at the cart's deadline
    let st = app.assert_books("open-now").await;
    assert_eq!((st.available, st.held), (5, 0));
}
