//! The HTTP edge against a hostile client (issue 17, findings 5 and 6):
//! oversized heads, too many connections, a client that never reads, `405`
//! without `Allow`, `503` that misstates what happened, and rate limits that
//! a storefront evades by inventing buyer ids.

use crate::support;

use std::time::Duration;

use governor::clock::FakeRelativeClock;
use hyper::{Method, StatusCode};
use support::{eventually, spawn_app_with, RedisServer, TestApp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use flashgate::config::Config;
use flashgate::limiter::{Limiter, Scope};

/// Send `req` as raw bytes and read until the server closes or `limit`
/// passes: everything received (a reset after the data keeps the data).
async fn send_raw(app: &TestApp, req: &[u8], limit: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect(app.addr).await.expect("connect");
    let _ = tokio::time::timeout(limit, s.write_all(req)).await;
    read_to_close(&mut s, limit).await
}

async fn read_to_close(s: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// One `GET` on a kept-alive connection: the response's status line and body.
async fn get_on(s: &mut TcpStream, path: &str) -> (String, String) {
    let req = format!("GET {path} HTTP/1.1\r\nhost: t\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("an answer in time")
            .expect("read");
        assert!(
            n > 0,
            "closed mid-answer: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .expect("content-length");
            if got.len() >= end + 4 + len {
                let status = text.lines().next().unwrap_or_default().to_string();
                return (status, text[end + 4..end + 4 + len].to_string());
            }
        }
    }
}

fn status_line(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

// ---- finding 6: the HTTP edge ----

#[tokio::test]
async fn a_head_over_the_cap_is_refused_with_431_and_a_json_body() {
    let redis = RedisServer::start();
    let app = spawn_app_with(&redis, |_| {}).await;
    let cap = Config::default().max_header_bytes;
    assert_eq!(cap, 16 * 1024);

    let fits = "a".repeat(cap / 2);
    let a = app
        .request(
            Method::GET,
            "/healthz",
            &[("x-junk", fits.as_str())],
            vec![],
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "half the cap passes");

    let big = "a".repeat(cap + 4096);
    let a = app
        .request(Method::GET, "/healthz", &[("x-junk", big.as_str())], vec![])
        .await;
    assert_eq!(
        a.status,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "{:?}",
        a.body
    );
    assert_eq!(a.code(), "headers_too_large");
    assert!(a.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("16384"));

    // many small headers add up the same
    let many: Vec<(String, String)> = (0..40)
        .map(|i| (format!("x-h{i}"), "b".repeat(500)))
        .collect();
    let refs: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let a = app.request(Method::GET, "/healthz", &refs, vec![]).await;
    assert_eq!(a.code(), "headers_too_large");
}

#[tokio::test]
async fn a_64_kib_header_is_answered_431_not_200() {
    let redis = RedisServer::start();
    let app = spawn_app_with(&redis, |_| {}).await;
    let req = format!(
        "GET /healthz HTTP/1.1\r\nhost: t\r\nx-junk: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let raw = send_raw(&app, req.as_bytes(), Duration::from_secs(10)).await;
    // past twice the cap the parser refuses the head before buffering it:
    // a bare 431 and the connection closed
    assert!(
        status_line(&raw).starts_with("HTTP/1.1 431"),
        "{:?}",
        String::from_utf8_lossy(&raw)
    );
}

#[tokio::test]
async fn connections_past_the_cap_are_refused_while_the_first_are_served() {
    let redis = RedisServer::start();
    let app = spawn_app_with(&redis, |c| {
        c.max_connections = 3;
        c.header_read_timeout_ms = 3000;
    })
    .await;
    let mut first = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(app.addr).await.expect("connect");
        let (status, _) = get_on(&mut s, "/healthz").await;
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        first.push(s);
    }
    // the fourth: answered 503 at once and closed, without being read
    let mut extra = TcpStream::connect(app.addr).await.expect("connect");
    let raw = read_to_close(&mut extra, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 503"), "{text:?}");
    assert!(
        text.to_ascii_lowercase().contains("retry-after: 1"),
        "{text}"
    );
    assert!(text.contains("too_many_connections"), "{text}");
    assert_eq!(app.state.metrics.connections_refused.get(), 1);
    assert_eq!(app.state.metrics.connections_open.get(), 3);
    // the first three are still served
    for s in &mut first {
        let (status, _) = get_on(s, "/healthz").await;
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    }
    // one closes: its place is free again
    drop(first.pop());
    let served = eventually(Duration::from_secs(10), || async {
        let Ok(mut s) = TcpStream::connect(app.addr).await else {
            return false;
        };
        let raw = send_raw_on(
            &mut s,
            b"GET /healthz HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n",
        )
        .await;
        status_line(&raw).starts_with("HTTP/1.1 200")
    })
    .await;
    assert!(served, "a freed place was never taken");
}

async fn send_raw_on(s: &mut TcpStream, req: &[u8]) -> Vec<u8> {
    let _ = s.write_all(req).await;
    read_to_close(s, Duration::from_secs(5)).await
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected() {
    let redis = RedisServer::start();
    let app = spawn_app_with(&redis, |c| c.write_timeout_ms = 300).await;
    // a small receive window, and a few thousand pipelined /metrics requests
    // whose answers (kilobytes each) are far more than the socket buffers hold
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut s = socket.connect(app.addr).await.expect("connect");
    let n = 3000;
    let reqs = "GET /metrics HTTP/1.1\r\nhost: t\r\n\r\n".repeat(n);
    let _ = tokio::time::timeout(Duration::from_secs(10), s.write_all(reqs.as_bytes())).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.state.metrics.connections_open.get() == 1
        })
        .await,
        "the connection is counted"
    );
    // nothing is read: the server's writes stall, and it gives up on us
    let dropped = eventually(Duration::from_secs(30), || async {
        app.state.metrics.connections_open.get() == 0
    })
    .await;
    assert!(dropped, "the server held a client that never reads");
    let raw = read_to_close(&mut s, Duration::from_secs(10)).await;
    let answered = String::from_utf8_lossy(&raw)
        .matches("HTTP/1.1 200")
        .count();
    assert!(answered < n, "every request was answered: {answered}");
}

#[tokio::test]
async fn a_head_sent_too_slowly_and_an_idle_connection_are_closed() {
    let redis = RedisServer::start();
    let app = spawn_app_with(&redis, |c| c.header_read_timeout_ms = 300).await;
    let open = || app.state.metrics.connections_open.get();
    // half a head, then nothing (slowloris)
    let mut slow = TcpStream::connect(app.addr).await.expect("connect");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: t\r\nx-a: ")
        .await
        .expect("write");
    assert!(eventually(Duration::from_secs(5), || async { open() == 1 }).await);
    assert!(
        eventually(Duration::from_secs(5), || async { open() == 0 }).await,
        "a head that never ends holds its connection"
    );
    // a served request, then the keep-alive connection left idle
    let mut idle = TcpStream::connect(app.addr).await.expect("connect");
    let (status, _) = get_on(&mut idle, "/healthz").await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(
        eventually(Duration::from_secs(5), || async { open() == 0 }).await,
        "an idle keep-alive connection is held"
    );
    assert!(read_to_close(&mut idle, Duration::from_secs(5))
        .await
        .is_empty());
}

#[tokio::test]
async fn method_not_allowed_names_the_allowed_methods() {
    let redis = RedisServer::start();
    let app = spawn_app_with(&redis, |_| {}).await;
    for (method, path, allow) in [
        (Method::PUT, "/v1/reservations", "POST"),
        (Method::GET, "/v1/reservations", "POST"),
        (Method::DELETE, "/v1/reservations/x.0.abc", "GET"),
        (Method::GET, "/v1/reservations/x.0.abc/confirm", "POST"),
        (Method::POST, "/v1/skus/x", "GET"),
        (Method::POST, "/v1/waitlist/x", "GET, DELETE"),
        (Method::GET, "/admin/v1/skus/x/preload", "POST"),
        (Method::DELETE, "/healthz", "GET"),
        (Method::POST, "/metrics", "GET"),
    ] {
        let a = app.request(method.clone(), path, &[], vec![]).await;
        assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert_eq!(a.code(), "method_not_allowed");
        assert_eq!(
            a.headers.get("allow").map(|v| v.to_str().unwrap()),
            Some(allow),
            "{method} {path}"
        );
    }
}

#[tokio::test]
async fn a_redis_that_hangs_answers_503_with_retry_after_and_an_unknown_outcome() {
    let redis = RedisServer::start();
    let app = spawn_app_with(&redis, |c| c.redis_timeout_ms = 300).await;
    app.preload("hang", 10, 2).await;
    assert_eq!(
        app.reserve("warm", "hang", 1, "u0").await.status,
        StatusCode::CREATED
    );

    redis.pause();
    let a = app.reserve("k-hang", "hang", 1, "u1").await;
    redis.resume();
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", a.body);
    assert_eq!(a.code(), "redis_unavailable");
    let retry: u64 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1);
    let msg = a.body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("unknown"), "{msg}");
    assert!(msg.contains("same Idempotency-Key"), "{msg}");
    assert!(!msg.contains("nothing was changed"), "{msg}");

    // the retry the message promises is safe: one hold for the key, not two
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let b = app.reserve("k-hang", "hang", 1, "u1").await;
        if matches!(b.status, StatusCode::CREATED | StatusCode::OK) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the retry never went through: {:?}",
            b.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let again = app.reserve("k-hang", "hang", 1, "u1").await;
    assert_eq!(again.status, StatusCode::OK, "a replay");
    assert_eq!(
        app.assert_books("hang").await.held,
        2,
        "warm + k-hang, once"
    );
}

// ---- finding 5: rate limits a storefront cannot evade ----

#[test]
fn the_shipped_defaults_limit_a_storefront_that_invents_buyer_ids() {
    let defaults = Config::default();
    let file = Config::from_file(Some(std::path::Path::new("config/flashgate.toml"))).unwrap();
    assert_eq!(
        file.buckets(),
        defaults.buckets(),
        "the file ships the defaults"
    );
    let [instance, client, _user] = defaults.buckets();
    assert!(client.rate_per_second > 0 && instance.rate_per_second > 0);
    assert!(
        client.rate_per_second < instance.rate_per_second,
        "one storefront cannot take the whole instance"
    );

    let clock = FakeRelativeClock::default();
    let [i, c, u] = defaults.buckets();
    let l = Limiter::with_clock(i, c, u, clock.clone());
    // storefront 0 sends a burst, a fresh buyer id on every request
    let mut refused = None;
    for n in 0..(client.burst.max(client.rate_per_second) + 1) {
        let admitted = l
            .check_client(Some(0))
            .and_then(|()| l.check_user("", &format!("invented-{n}")));
        if let Err(e) = admitted {
            refused = Some(e);
            break;
        }
    }
    let refused = refused.expect("an invented buyer id on every request is never refused");
    assert_eq!(refused.scope, Scope::Client);
    assert!(refused.retry_after_secs() >= 1);
    // another storefront is still served, and so is the first, later
    assert!(l.check_client(Some(1)).is_ok());
    clock.advance(Duration::from_secs(1));
    assert!(l.check_client(Some(0)).is_ok());
}

#[tokio::test]
async fn a_storefront_inventing_buyer_ids_gets_429_and_another_is_still_served() {
    const A: &str = "storefront-a-key-0001";
    const B: &str = "storefront-b-key-0002";
    let redis = RedisServer::start();
    let app = spawn_app_with(&redis, |c| {
        c.insecure_no_auth = false;
        c.api_keys = vec![A.into(), B.into()];
        c.client_rate_per_second = 2;
        c.client_burst = 10;
        c.user_rate_per_second = 5;
        c.user_burst = 10;
    })
    .await;
    app.preload("crowd", 1000, 2).await;
    let reserve = |key: &'static str, n: usize| {
        let body = serde_json::json!({"sku": "crowd", "qty": 1, "user_id": format!("bot-{n}")});
        let idem = format!("{key}-{n}");
        let app = &app;
        async move {
            app.request(
                Method::POST,
                "/v1/reservations",
                &[
                    ("authorization", &format!("Bearer {key}")),
                    ("content-type", "application/json"),
                    ("idempotency-key", &idem),
                ],
                body.to_string().into_bytes(),
            )
            .await
        }
    };
    let mut limited = None;
    for n in 0..40 {
        let a = reserve(A, n).await;
        if a.status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(a);
            break;
        }
        assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
    }
    let a = limited.expect("fresh buyer ids evade every limit");
    assert_eq!(a.code(), "rate_limited");
    assert!(a.headers.contains_key("retry-after"));
    let b = reserve(B, 0).await;
    assert_eq!(b.status, StatusCode::CREATED, "{:?}", b.body);
}
