//! Admission control end to end: API keys, token buckets, purchase caps.

use crate::support;

use support::spawn_app_with as app_with;

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use hyper::{Method, StatusCode};
use support::{eventually, free_port, RedisServer, TestApp};

const STOREFRONT: &str = "storefront-key-0123456789";
const ADMIN: &str = "admin-key-abcdefghijklmnop";

async fn reserve_as(app: &TestApp, bearer: Option<&str>, key: &str, user: &str) -> support::Answer {
    let auth = bearer.map(|b| format!("Bearer {b}"));
    let mut headers = vec![
        ("content-type", "application/json"),
        ("idempotency-key", key),
    ];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    let body = serde_json::json!({"sku": "sku-a", "qty": 1, "user_id": user});
    app.request(
        Method::POST,
        "/v1/reservations",
        &headers,
        body.to_string().into_bytes(),
    )
    .await
}

#[tokio::test]
async fn keys_guard_the_api_and_admin_endpoints() {
    let redis = RedisServer::start();
    let app = app_with(&redis, |c| {
        c.insecure_no_auth = false;
        c.api_keys = vec![STOREFRONT.into()];
        c.admin_keys = vec![ADMIN.into()];
    })
    .await;
    app.preload("sku-a", 10, 2).await;

    let none = reserve_as(&app, None, "k1", "u").await;
    assert_eq!(
        (none.status, none.code()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    assert_eq!(none.headers["www-authenticate"], "Bearer");
    let wrong = reserve_as(&app, Some("storefront-key-012345678X"), "k1", "u").await;
    assert_eq!(wrong.code(), "unauthorized");
    let ok = reserve_as(&app, Some(STOREFRONT), "k1", "u").await;
    assert_eq!(ok.status, StatusCode::CREATED);
    // an admin key works on /v1/ too
    assert_eq!(
        reserve_as(&app, Some(ADMIN), "k2", "u2").await.status,
        StatusCode::CREATED
    );

    let get = |path: &'static str, bearer: &'static str| {
        let app = &app;
        async move {
            let auth = format!("Bearer {bearer}");
            app.request(
                Method::GET,
                path,
                &[("authorization", auth.as_str())],
                vec![],
            )
            .await
        }
    };
    let a = get("/admin/v1/skus/sku-a", STOREFRONT).await;
    assert_eq!((a.status, a.code()), (StatusCode::FORBIDDEN, "forbidden"));
    let a = get("/admin/v1/skus/sku-a", "not-a-key-at-all-000000").await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let a = get("/admin/v1/skus/sku-a", ADMIN).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body["per_shard"].as_array().map(Vec::len), Some(2));
    assert_eq!(a.body["held"], 2);
    // ops endpoints stay open for probes and scrapers
    assert_eq!(app.get("/healthz").await.status, StatusCode::OK);
    assert_eq!(app.get("/metrics").await.status, StatusCode::OK);
    // unknown routes are 404 before auth, known ones need a key
    assert_eq!(app.get("/nope").await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        app.get("/v1/skus/sku-a").await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn admin_preload_refuses_a_live_sku_unless_forced() {
    let redis = RedisServer::start();
    let app = app_with(&redis, |c| {
        c.insecure_no_auth = false;
        c.admin_keys = vec![ADMIN.into()];
    })
    .await;
    let auth = format!("Bearer {ADMIN}");
    let post = |body: serde_json::Value| {
        let (app, auth) = (&app, auth.clone());
        async move {
            app.request(
                Method::POST,
                "/admin/v1/skus/drop-1/preload",
                &[
                    ("authorization", auth.as_str()),
                    ("content-type", "application/json"),
                ],
                body.to_string().into_bytes(),
            )
            .await
        }
    };
    assert_eq!(
        post(serde_json::json!({"stock": 40, "shards": 4}))
            .await
            .status,
        StatusCode::CREATED
    );
    let again = post(serde_json::json!({"stock": 4000})).await;
    assert_eq!(
        (again.status, again.code()),
        (StatusCode::CONFLICT, "already_loaded")
    );
    assert_eq!(
        post(serde_json::json!({"stock": 8, "shards": 4, "force": true}))
            .await
            .status,
        StatusCode::CREATED
    );
    let shrink = post(serde_json::json!({"stock": 8, "shards": 2, "force": true})).await;
    assert_eq!(shrink.code(), "invalid_request");
    let bad = post(serde_json::json!({"stock": -1, "force": true})).await;
    assert_eq!(bad.code(), "invalid_request");
    let st = app.assert_books("drop-1").await;
    assert_eq!((st.available, st.shards), (8, 4));
}

#[tokio::test]
async fn burst_then_429_with_retry_after_then_refill() {
    let redis = RedisServer::start();
    let app = app_with(&redis, |c| {
        c.user_rate_per_second = 1;
        c.user_burst = 3;
    })
    .await;
    app.preload("sku-a", 100, 2).await;
    for i in 0..3 {
        assert_eq!(
            reserve_as(&app, None, &format!("b{i}"), "eager")
                .await
                .status,
            StatusCode::CREATED
        );
    }
    let limited = reserve_as(&app, None, "b3", "eager").await;
    assert_eq!(
        (limited.status, limited.code()),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
    );
    let retry_after: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(retry_after, 1, "1 token per second: retry in 1 s");
    // someone else is not affected
    assert_eq!(
        reserve_as(&app, None, "other", "calm").await.status,
        StatusCode::CREATED
    );
    // a refused request cost nothing in Redis: 4 holds
    assert_eq!(app.assert_books("sku-a").await.held, 4);
    // the app's limiter clock moves on by Retry-After (no real second
    // slept): the bucket has refilled one token, exactly one
    app.state
        .live()
        .limiter
        .clock()
        .advance(Duration::from_secs(retry_after));
    assert_eq!(
        reserve_as(&app, None, "b3", "eager").await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        reserve_as(&app, None, "b4", "eager").await.code(),
        "rate_limited"
    );
    let m = app.state.metrics.render();
    assert!(m.contains(r#"flashgate_reservation_outcomes_total{outcome="rate_limited"} 2"#));
}

#[tokio::test]
async fn purchase_cap_holds_across_concurrent_attempts_and_frees_on_release() {
    let redis = RedisServer::start();
    let app = Arc::new(app_with(&redis, |_| {}).await);
    let sku = flashgate::domain::Sku::parse("capped").unwrap();
    app.preload_capped(sku.as_str(), 100, 4, 2).await;
    let answers = join_all((0..40).map(|i| {
        let app = app.clone();
        tokio::spawn(async move {
            app.reserve(&format!("greedy-{i}"), "capped", 1, "greedy")
                .await
        })
    }))
    .await;
    let answers: Vec<_> = answers.into_iter().map(|a| a.unwrap()).collect();
    let held: Vec<_> = answers
        .iter()
        .filter(|a| a.status == StatusCode::CREATED)
        .collect();
    assert_eq!(held.len(), 2, "at most 2 units per buyer");
    assert!(answers
        .iter()
        .filter(|a| a.status != StatusCode::CREATED)
        .all(|a| a.code() == "purchase_limit"));
    assert_eq!(app.assert_books("capped").await.held, 2);
    // a replay of a counted reservation is still a replay, not a refusal
    let first_key = answers
        .iter()
        .position(|a| a.status == StatusCode::CREATED)
        .unwrap();
    let replay = app
        .reserve(&format!("greedy-{first_key}"), "capped", 1, "greedy")
        .await;
    assert_eq!(replay.status, StatusCode::OK);
    // more than the cap in one request
    let big = app.reserve("big", "capped", 3, "other").await;
    assert_eq!(big.code(), "purchase_limit");
    // releasing frees the cap; confirming keeps counting
    let rid0 = held[0].body["reservation_id"].as_str().unwrap().to_string();
    let rid1 = held[1].body["reservation_id"].as_str().unwrap().to_string();
    assert_eq!(app.action(&rid0, "release").await.status, StatusCode::OK);
    assert_eq!(app.action(&rid1, "confirm").await.status, StatusCode::OK);
    assert_eq!(
        app.reserve("after-release", "capped", 1, "greedy")
            .await
            .status,
        StatusCode::CREATED
    );
    assert_eq!(
        app.reserve("one-too-many", "capped", 1, "greedy")
            .await
            .code(),
        "purchase_limit"
    );
    // other buyers are not capped by greedy's units
    assert_eq!(
        app.reserve("someone", "capped", 2, "someone").await.status,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn expiry_frees_the_purchase_cap() {
    let redis = RedisServer::start();
    let app = app_with(&redis, |c| {
        c.hold_seconds = 1;
        c.max_hold_seconds = 1;
    })
    .await;
    let sku = flashgate::domain::Sku::parse("capped").unwrap();
    app.preload_capped(sku.as_str(), 10, 2, 1).await;
    assert_eq!(
        app.reserve("e1", "capped", 1, "u").await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        app.reserve("e2", "capped", 1, "u").await.code(),
        "purchase_limit"
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.sku("capped").await["held"] == 0
        })
        .await
    );
    assert_eq!(
        app.reserve("e3", "capped", 1, "u").await.status,
        StatusCode::CREATED
    );
    // sold out gives the count back too
    app.state
        .inventory
        .preload_with(
            &sku,
            flashgate::inventory::PreloadSpec {
                stock: 0,
                shards: 2,
                force: true,
                max_per_user: Some(2),
                window: Default::default(),
            },
        )
        .await
        .unwrap();
    assert_eq!(app.reserve("e4", "capped", 1, "u").await.code(), "sold_out");
    assert_eq!(
        app.reserve("e5", "capped", 1, "u").await.code(),
        "sold_out",
        "not purchase_limit: e4 gave its count back"
    );
}

fn flashgate_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_flashgate"))
}

#[test]
fn serve_refuses_to_start_without_keys() {
    let out = flashgate_bin()
        .args([
            "serve",
            "--redis-url",
            "redis://127.0.0.1:1",
            "--config",
            "config/flashgate.toml",
        ])
        .env_remove("FLASHGATE_API_KEYS")
        .env_remove("FLASHGATE_ADMIN_KEYS")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--insecure-no-auth"), "{err}");
}

#[tokio::test]
async fn keys_never_reach_the_logs() {
    let redis = RedisServer::start();
    let port = free_port();
    let mut child = flashgate_bin()
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--redis-url",
            &redis.url(),
        ])
        .env("FLASHGATE_API_KEYS", STOREFRONT)
        .env("FLASHGATE_ADMIN_KEYS", ADMIN)
        .env("RUST_LOG", "trace")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // read the logs while the service runs: at trace level they outgrow a pipe
    // buffer, and a service blocked on a full pipe answers nothing
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut logs = String::new();
        let _ = stderr.read_to_string(&mut logs);
        logs
    });
    let base = format!("127.0.0.1:{port}");
    assert!(
        eventually(Duration::from_secs(20), || async {
            std::net::TcpStream::connect(&base).is_ok()
        })
        .await,
        "the service came up"
    );
    // good key, bad key, admin key, idempotency key: none may be logged
    for bearer in [STOREFRONT, "storefront-key-wrong-0000", ADMIN] {
        let body = r#"{"sku":"x","qty":1,"user_id":"u"}"#;
        let request = format!(
            "POST /v1/reservations HTTP/1.1\r\nHost: {base}\r\nAuthorization: Bearer {bearer}\r\n\
             Content-Type: application/json\r\nIdempotency-Key: secret-idem-key-77\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let mut s = std::net::TcpStream::connect(&base).unwrap();
        std::io::Write::write_all(&mut s, request.as_bytes()).unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 "), "{answer}");
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let logs = reader.join().unwrap();
    assert!(
        logs.contains("flashgate serving"),
        "logs were captured: {logs}"
    );
    for secret in [
        STOREFRONT,
        ADMIN,
        "storefront-key-wrong",
        "secret-idem-key-77",
    ] {
        assert!(!logs.contains(secret), "{secret} leaked into the logs");
    }
}
