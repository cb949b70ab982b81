//! The overflow waitlist on a real Redis: joins, fair promotion, cancellation,
//! expiry, capacity, idempotency, concurrent and crashing promoters.

use crate::support;

use support::spawn_app_with as app_with;

use std::sync::Arc;
use std::time::Duration;

use flashgate::domain::{ReservationId, Sku, Tenant};
use flashgate::inventory::waitlist::TicketId;
use flashgate::inventory::Inventory;
use flashgate::metrics::Metrics;
use fred::interfaces::HashesInterface;
use hyper::{Method, StatusCode};
use serde_json::Value;
use support::{eventually, test_config, RedisServer, TestApp};

async fn join(app: &TestApp, key: &str, sku: &str, qty: i64, user: &str) -> support::Answer {
    let body = serde_json::json!({"sku": sku, "qty": qty, "user_id": user, "waitlist": true});
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

/// Sell `sku` out with `n` holds of 1 unit; returns their reservation ids.
async fn sell_out(app: &TestApp, sku: &str, n: usize) -> Vec<String> {
    let mut rids = Vec::new();
    for i in 0..n {
        let a = app
            .reserve(&format!("{sku}-buy-{i}"), sku, 1, &format!("buyer-{i}"))
            .await;
        assert_eq!(a.status, StatusCode::CREATED);
        rids.push(a.body["reservation_id"].as_str().unwrap().to_string());
    }
    assert_eq!(
        app.reserve(&format!("{sku}-late"), sku, 1, "late")
            .await
            .code(),
        "sold_out"
    );
    rids
}

async fn ticket(app: &TestApp, id: &str) -> Value {
    app.get(&format!("/v1/waitlist/{id}")).await.body
}

#[tokio::test]
async fn releases_promote_exactly_the_first_waiters_in_order() {
    let redis = RedisServer::start();
    let app = app_with(&redis, |_| {}).await;
    app.preload("drop", 10, 2).await;
    let holds = sell_out(&app, "drop", 10).await;
    let mut tickets = Vec::new();
    for i in 0..50 {
        let a = join(
            &app,
            &format!("wait-{i}"),
            "drop",
            1,
            &format!("waiter-{i}"),
        )
        .await;
        assert_eq!(a.status, StatusCode::ACCEPTED, "{:?}", a.body);
        assert_eq!(a.body["status"], "waiting");
        assert_eq!(a.body["position"], i + 1);
        tickets.push(a.body["ticket_id"].as_str().unwrap().to_string());
    }
    assert_eq!(app.sku("drop").await["waitlist"], 50);
    for rid in &holds {
        assert_eq!(app.action(rid, "release").await.status, StatusCode::OK);
    }
    assert!(
        eventually(Duration::from_secs(20), || async {
            app.sku("drop").await["waitlist"] == 40
        })
        .await,
        "10 promotions"
    );
    let mut promoted_at = Vec::new();
    for (i, id) in tickets.iter().enumerate() {
        let t = ticket(&app, id).await;
        if i < 10 {
            assert_eq!(t["status"], "promoted", "ticket {i}: {t}");
            let rid = t["reservation_id"].as_str().unwrap();
            let r = app.get(&format!("/v1/reservations/{rid}")).await.body;
            assert_eq!(
                (r["status"].as_str(), r["user_id"].as_str()),
                (Some("held"), Some(format!("waiter-{i}").as_str()))
            );
            let ended: i64 = app
                .state
                .inventory
                .pool()
                .next()
                .hget(format!("fg:{{wl:drop}}:t:{id}"), "ended")
                .await
                .unwrap();
            promoted_at.push(ended);
        } else {
            assert_eq!(t["status"], "waiting", "ticket {i}");
            assert_eq!(t["position"], i as i64 - 9, "the rest keep their order");
        }
    }
    assert!(
        promoted_at.windows(2).all(|w| w[0] <= w[1]),
        "promoted in arrival order: {promoted_at:?}"
    );
    let st = app.assert_books("drop").await;
    assert_eq!((st.available, st.held), (0, 10));
}

#[tokio::test]
async fn new_arrivals_do_not_jump_the_queue() {
    let redis = RedisServer::start();
    let app = app_with(&redis, |c| c.sweep_interval_ms = 2_000).await;
    app.preload("fair", 4, 4).await;
    let holds = sell_out(&app, "fair", 4).await;
    let first = join(&app, "w-first", "fair", 1, "first").await;
    let ticket_id = first.body["ticket_id"].as_str().unwrap().to_string();
    // a unit comes back; a buyer arriving now finds the SKU sold out — the
    // returned unit belongs to the waiter
    assert_eq!(
        app.action(&holds[0], "release").await.status,
        StatusCode::OK
    );
    for i in 0..20 {
        let a = app
            .reserve(&format!("jumper-{i}"), "fair", 1, &format!("jumper-{i}"))
            .await;
        assert_eq!(a.code(), "sold_out", "a new arrival took a returned unit");
    }
    assert!(
        eventually(Duration::from_secs(20), || async {
            ticket(&app, &ticket_id).await["status"] == "promoted"
        })
        .await
    );
    // once nobody waits, the SKU opens again
    assert_eq!(
        app.action(&holds[1], "release").await.status,
        StatusCode::OK
    );
    assert!(
        eventually(Duration::from_secs(20), || async {
            // a fresh key per try: a key that heard 409 keeps hearing it
            let key = format!("after-queue-{}", uuid::Uuid::new_v4());
            app.reserve(&key, "fair", 1, "newcomer").await.status == StatusCode::CREATED
        })
        .await
    );
    let st = app.assert_books("fair").await;
    assert_eq!((st.available, st.held), (0, 4));
}

#[tokio::test]
async fn expiry_promotes_and_tickets_expire_or_get_cancelled() {
    let redis = RedisServer::start();
    let app = app_with(&redis, |c| {
        c.hold_seconds = 1;
        c.max_hold_seconds = 1;
        c.waitlist_ticket_seconds = 3;
    })
    .await;
    app.preload("exp", 2, 2).await;
    sell_out(&app, "exp", 2).await;
    let a = join(&app, "w-a", "exp", 1, "a").await.body["ticket_id"]
        .as_str()
        .unwrap()
        .to_string();
    let b = join(&app, "w-b", "exp", 1, "b").await.body["ticket_id"]
        .as_str()
        .unwrap()
        .to_string();
    let c = join(&app, "w-c", "exp", 1, "c").await.body["ticket_id"]
        .as_str()
        .unwrap()
        .to_string();
    // b leaves the queue; c moves up
    let cancelled = app
        .request(Method::DELETE, &format!("/v1/waitlist/{b}"), &[], vec![])
        .await;
    assert_eq!(
        (cancelled.status, cancelled.body["status"].as_str()),
        (StatusCode::OK, Some("cancelled"))
    );
    assert_eq!(
        app.request(Method::DELETE, &format!("/v1/waitlist/{b}"), &[], vec![])
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(ticket(&app, &c).await["position"], 2);
    // the two holds expire after 1 s: a and c are promoted, b is not
    assert!(
        eventually(Duration::from_secs(20), || async {
            ticket(&app, &a).await["status"] == "promoted"
                && ticket(&app, &c).await["status"] == "promoted"
        })
        .await
    );
    assert_eq!(ticket(&app, &b).await["status"], "cancelled");
    // promoted holds are ordinary holds: they expire too, and a lone waiter's ticket can expire
    let d = join(&app, "w-d", "exp", 1, "d").await;
    let d_id = d.body["ticket_id"].as_str().unwrap().to_string();
    assert!(
        eventually(Duration::from_secs(20), || async {
            let s = ticket(&app, &d_id).await["status"].clone();
            s == "promoted" || s == "expired"
        })
        .await
    );
    let gone = app
        .request(
            Method::DELETE,
            "/v1/waitlist/nope.w.0123456789abcdef0123456789abcdef",
            &[],
            vec![],
        )
        .await;
    assert_eq!(
        (gone.status, gone.code()),
        (StatusCode::NOT_FOUND, "ticket_not_found")
    );
    app.assert_books("exp").await;
}

#[tokio::test]
async fn a_ticket_expires_when_no_unit_comes_back() {
    let redis = RedisServer::start();
    let app = app_with(&redis, |c| c.waitlist_ticket_seconds = 1).await;
    app.preload("slow", 1, 1).await;
    sell_out(&app, "slow", 1).await;
    let t = join(&app, "w", "slow", 1, "u").await.body["ticket_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        eventually(Duration::from_secs(10), || async {
            ticket(&app, &t).await["status"] == "expired"
        })
        .await
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.sku("slow").await["waitlist"] == 0
        })
        .await
    );
    // the same buyer may queue again
    assert_eq!(
        join(&app, "w2", "slow", 1, "u").await.status,
        StatusCode::ACCEPTED
    );
}

#[tokio::test]
async fn joins_are_idempotent_bounded_and_one_per_buyer() {
    let redis = RedisServer::start();
    let app = app_with(&redis, |c| c.waitlist_capacity = 3).await;
    app.preload("cap", 1, 1).await;
    sell_out(&app, "cap", 1).await;
    let first = join(&app, "k1", "cap", 1, "u1").await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    let again = join(&app, "k1", "cap", 1, "u1").await;
    assert_eq!(
        again.status,
        StatusCode::OK,
        "a retried join does not queue twice"
    );
    assert_eq!(again.body["ticket_id"], first.body["ticket_id"]);
    assert_eq!(
        join(&app, "k1", "cap", 2, "u1").await.code(),
        "idempotency_key_reused"
    );
    let twice = join(&app, "k1b", "cap", 1, "u1").await;
    assert_eq!(
        (twice.status, twice.code()),
        (StatusCode::CONFLICT, "already_waitlisted")
    );
    assert_eq!(
        join(&app, "k2", "cap", 1, "u2").await.status,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        join(&app, "k3", "cap", 1, "u3").await.status,
        StatusCode::ACCEPTED
    );
    let full = join(&app, "k4", "cap", 1, "u4").await;
    assert_eq!(
        (full.status, full.code()),
        (StatusCode::CONFLICT, "waitlist_full")
    );
    assert_eq!(app.sku("cap").await["waitlist"], 3);
    // with stock, waitlist: true is an ordinary reserve
    app.preload("open", 5, 1).await;
    assert_eq!(
        join(&app, "k5", "open", 1, "u5").await.status,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn two_promoters_never_promote_a_unit_twice() {
    let redis = RedisServer::start();
    let a = app_with(&redis, |c| c.sweep_interval_ms = 10).await;
    let b = app_with(&redis, |c| c.sweep_interval_ms = 10).await;
    a.preload("duo", 20, 4).await;
    let holds = sell_out(&a, "duo", 20).await;
    let mut tickets = Vec::new();
    for i in 0..30 {
        let app = if i % 2 == 0 { &a } else { &b };
        tickets.push(
            join(app, &format!("d{i}"), "duo", 1, &format!("w{i}"))
                .await
                .body["ticket_id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    for (i, rid) in holds.iter().enumerate() {
        let app = if i % 2 == 0 { &a } else { &b };
        assert_eq!(app.action(rid, "release").await.status, StatusCode::OK);
    }
    assert!(
        eventually(Duration::from_secs(30), || async {
            a.sku("duo").await["waitlist"] == 10
        })
        .await
    );
    let mut rids = std::collections::HashSet::new();
    for (i, t) in tickets.iter().enumerate() {
        let t = ticket(&a, t).await;
        if i < 20 {
            assert_eq!(t["status"], "promoted", "{i}");
            assert!(rids.insert(t["reservation_id"].as_str().unwrap().to_string()));
        } else {
            assert_eq!(t["status"], "waiting");
        }
    }
    let st = a.assert_books("duo").await;
    assert_eq!(
        (st.available, st.held),
        (0, 20),
        "one hold per promoted ticket, no more"
    );
}

#[tokio::test]
async fn a_promoter_killed_mid_promotion_still_promotes_exactly_once() {
    let redis = RedisServer::start();
    // the service only for setup; promotion below runs with our own promoters
    let app = app_with(&redis, |c| c.sweep_interval_ms = 3_600_000).await;
    let mut config = test_config(&redis);
    config.waitlist_lease_ms = 100;
    let inv = Arc::new(
        Inventory::connect(&config, Arc::new(Metrics::new(10)))
            .await
            .unwrap(),
    );
    app.preload("crash", 10, 2).await;
    let holds = sell_out(&app, "crash", 10).await;
    let mut tickets = Vec::new();
    for i in 0..15 {
        tickets.push(
            join(&app, &format!("c{i}"), "crash", 1, &format!("w{i}"))
                .await
                .body["ticket_id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    app.stop().await; // no background promoter from here on
    for rid in &holds {
        inv.release(&ReservationId::parse(rid).unwrap(), &Tenant::Operator)
            .await
            .unwrap();
    }
    let meta = inv
        .meta(&Sku::parse("crash").unwrap())
        .await
        .unwrap()
        .unwrap();
    // promoters killed at every stage of their work: reading, reserving, acknowledging
    for i in 0..40u64 {
        let (inv, meta) = (inv.clone(), meta.clone());
        let task = tokio::spawn(async move { inv.promote(&meta, &format!("doomed-{i}")).await });
        tokio::time::sleep(Duration::from_micros(300 * i)).await;
        task.abort();
        let _ = task.await;
        tokio::time::sleep(Duration::from_millis(110)).await; // the dead one's lease runs out
    }
    // a healthy promoter finishes the job
    for _ in 0..20 {
        inv.promote(&meta, "survivor").await.unwrap();
        tokio::time::sleep(Duration::from_millis(110)).await;
    }
    let mut rids = std::collections::HashSet::new();
    for (i, t) in tickets.iter().enumerate() {
        let t = inv
            .ticket(&TicketId::parse(t).unwrap(), &Tenant::Operator)
            .await
            .unwrap();
        if i < 10 {
            assert_eq!(t.status, "promoted", "ticket {i}");
            assert!(
                rids.insert(t.reservation_id.clone().unwrap()),
                "one reservation per ticket"
            );
        } else {
            assert_eq!(t.status, "waiting", "ticket {i}");
        }
    }
    let st = inv.status(&Sku::parse("crash").unwrap()).await.unwrap();
    assert_eq!(
        (st.available, st.held, st.waitlist),
        (0, 10, 5),
        "exactly 10 promoted holds: {st:?}"
    );
    assert!(st.per_shard.iter().all(|s| s.drift() == 0));
    // the stream holds exactly the 5 waiting tickets: every ended ticket's
    // entry was acknowledged and deleted, none lost, none left behind
    assert_eq!(redis.cli(&["XLEN", "fg:{wl:crash}:stream"]), "5");
    let pending: i64 = redis
        .cli(&["XPENDING", "fg:{wl:crash}:stream", "promoters"])
        .lines()
        .next()
        .and_then(|l| l.parse().ok())
        .unwrap();
    assert!(
        pending <= 5,
        "only waiting tickets may be pending: {pending}"
    );
}

const HOOK_SECRET: &str = "whsec-test-0123456789abcdef";

/// One webhook delivery read off `conn`, answered with `answer` (a status
/// line): the `Flashgate-Signature` header and the body.
async fn delivery<S>(conn: &mut S, answer: &str) -> (String, Vec<u8>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    let mut got = 0;
    loop {
        let n = conn.read(&mut buf[got..]).await.unwrap();
        got += n;
        let text = String::from_utf8_lossy(&buf[..got]).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let header = |name: &str| {
                text[..end].lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.trim()
                        .eq_ignore_ascii_case(name)
                        .then(|| v.trim().to_string())
                })
            };
            let len: usize = header("content-length").map_or(0, |v| v.parse().unwrap());
            if got >= end + 4 + len || n == 0 {
                let signature = header("flashgate-signature").unwrap_or_default();
                conn.write_all(
                    format!("{answer}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await
                .unwrap();
                let _ = conn.shutdown().await;
                return (signature, buf[end + 4..got].to_vec());
            }
        }
        assert!(n > 0, "connection closed early");
    }
}

/// A waitlisted buyer promoted on `app`: its ticket id.
async fn promote_one(app: &TestApp, sku: &str) -> String {
    app.preload(sku, 1, 1).await;
    let holds = sell_out(app, sku, 1).await;
    let t = join(app, "w", sku, 1, "waiter").await.body["ticket_id"]
        .as_str()
        .unwrap()
        .to_string();
    app.action(&holds[0], "release").await;
    t
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn promotions_are_posted_to_the_webhook_signed() {
    use flashgate::webhook::{verify, Unverified};
    let hook = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/promoted", hook.local_addr().unwrap());
    let redis = RedisServer::start();
    let app = app_with(&redis, |c| {
        c.waitlist_webhook_url = url;
        c.waitlist_webhook_secret = HOOK_SECRET.into();
    })
    .await;
    let t = promote_one(&app, "hook").await;
    // the first delivery is refused (500): flashgate retries
    let mut bodies = Vec::new();
    for answer in ["HTTP/1.1 500 Internal Server Error", "HTTP/1.1 200 OK"] {
        let (mut conn, _) = tokio::time::timeout(Duration::from_secs(20), hook.accept())
            .await
            .unwrap()
            .unwrap();
        bodies.push(delivery(&mut conn, answer).await);
    }
    for (signature, body) in &bodies {
        // what a receiver does: the delivery verifies with the secret...
        assert_eq!(
            verify(HOOK_SECRET.as_bytes(), signature, body, now(), 300),
            Ok(()),
            "{signature}"
        );
        // ...a tampered body or a wrong secret does not
        let tampered = String::from_utf8_lossy(body).replace("waiter", "waiteR");
        assert_ne!(tampered.as_bytes(), &body[..]);
        assert_eq!(
            verify(
                HOOK_SECRET.as_bytes(),
                signature,
                tampered.as_bytes(),
                now(),
                300
            ),
            Err(Unverified::Mismatch)
        );
        assert_eq!(
            verify(b"whsec-not-the-secret-000", signature, body, now(), 300),
            Err(Unverified::Mismatch)
        );
        let v: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["event"], "waitlist.promoted");
        assert_eq!(v["ticket"]["ticket_id"], t.as_str());
        assert_eq!(v["ticket"]["status"], "promoted");
    }
}

#[tokio::test]
async fn promotions_reach_an_https_webhook_that_chains_to_the_configured_ca() {
    // a server certificate for 127.0.0.1 and localhost, self-signed: the CA
    // file the webhook trusts is the certificate itself
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, cert.cert.pem()).unwrap();
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let hook = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = hook.local_addr().unwrap().port();

    let redis = RedisServer::start();
    let app = app_with(&redis, |c| {
        c.waitlist_webhook_url = format!("https://localhost:{port}/promoted");
        c.waitlist_webhook_secret = HOOK_SECRET.into();
        c.waitlist_webhook_ca_file = ca_file.to_string_lossy().into_owned();
    })
    .await;
    let t = promote_one(&app, "tls").await;
    let (tcp, _) = tokio::time::timeout(Duration::from_secs(20), hook.accept())
        .await
        .unwrap()
        .unwrap();
    let mut conn = acceptor.accept(tcp).await.expect("a TLS handshake");
    let (signature, body) = delivery(&mut conn, "HTTP/1.1 200 OK").await;
    assert_eq!(
        flashgate::webhook::verify(HOOK_SECRET.as_bytes(), &signature, &body, now(), 300),
        Ok(())
    );
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["ticket"]["ticket_id"], t.as_str());
}

#[tokio::test]
async fn an_https_webhook_whose_certificate_is_not_trusted_gets_nothing() {
    use tokio::io::AsyncReadExt;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let hook = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = hook.local_addr().unwrap().port();
    let redis = RedisServer::start();
    // no CA file: the public roots, which do not include this certificate
    let app = app_with(&redis, |c| {
        c.waitlist_webhook_url = format!("https://localhost:{port}/promoted");
        c.waitlist_webhook_secret = HOOK_SECRET.into();
    })
    .await;
    promote_one(&app, "untrusted").await;
    let (tcp, _) = tokio::time::timeout(Duration::from_secs(20), hook.accept())
        .await
        .unwrap()
        .unwrap();
    // the client refuses the certificate: the handshake fails or, if the
    // server side finishes first, nothing is sent after it
    if let Ok(mut conn) = acceptor.accept(tcp).await {
        let mut buf = [0u8; 64];
        let n = conn.read(&mut buf).await.unwrap_or(0);
        assert_eq!(n, 0, "no delivery over an untrusted connection");
    }
}

#[tokio::test]
async fn a_reload_moves_the_webhook_to_its_new_url_and_secret() {
    let old_hook = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let new_hook = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let redis = RedisServer::start();
    let app = app_with(&redis, |c| {
        c.waitlist_webhook_url = format!("http://{}/old", old_hook.local_addr().unwrap());
        c.waitlist_webhook_secret = HOOK_SECRET.into();
    })
    .await;
    let running = app.state.live().config.clone();
    // a CA file that is not there: refused, nothing changes
    let broken = flashgate::config::Config {
        waitlist_webhook_url: format!(
            "https://localhost:{}/new",
            new_hook.local_addr().unwrap().port()
        ),
        waitlist_webhook_ca_file: "/nonexistent/ca.pem".into(),
        ..running.clone()
    };
    let refused = app.state.apply(Ok(broken)).unwrap_err().redacted();
    assert!(refused.contains("waitlist_webhook_ca_file"), "{refused}");
    assert_eq!(app.state.live().config, running);

    let rotated = "whsec-rotated-0123456789ab";
    let reloaded = app
        .state
        .apply(Ok(flashgate::config::Config {
            waitlist_webhook_url: format!("http://{}/new", new_hook.local_addr().unwrap()),
            waitlist_webhook_secret: rotated.into(),
            ..running
        }))
        .unwrap();
    assert_eq!(
        reloaded.changed,
        ["waitlist_webhook_secret", "waitlist_webhook_url"]
    );
    assert!(reloaded.restart_needed.is_empty());
    promote_one(&app, "moved").await;
    let (mut conn, _) = tokio::time::timeout(Duration::from_secs(20), new_hook.accept())
        .await
        .unwrap()
        .unwrap();
    let (signature, body) = delivery(&mut conn, "HTTP/1.1 200 OK").await;
    use flashgate::webhook::{verify, Unverified};
    assert_eq!(
        verify(rotated.as_bytes(), &signature, &body, now(), 300),
        Ok(())
    );
    assert_eq!(
        verify(HOOK_SECRET.as_bytes(), &signature, &body, now(), 300),
        Err(Unverified::Mismatch),
        "the old secret no longer signs"
    );
}

/// A promoter that died between its walk (the hold made, the last unit
/// taken) and `wl_end` (the ticket told): the next promoter finds no stock,
/// yet must replay the attempt's hold and promote the ticket — not stop,
/// leaving the ticket waiting beside its own hold until the hold expires.
/// The dead promoter's state is made exactly: a promotion, then `wl_end`'s
/// part undone.
#[tokio::test]
async fn a_hold_left_by_a_dead_promoter_on_the_last_unit_still_promotes_its_ticket() {
    let redis = RedisServer::start();
    let app = app_with(&redis, |c| c.sweep_interval_ms = 3_600_000).await;
    let inv = Arc::new(
        Inventory::connect(&test_config(&redis), Arc::new(Metrics::new(10)))
            .await
            .unwrap(),
    );
    app.preload("last", 1, 2).await;
    let holds = sell_out(&app, "last", 1).await;
    let id = join(&app, "l0", "last", 1, "w0").await.body["ticket_id"]
        .as_str()
        .unwrap()
        .to_string();
    app.stop().await; // no background promoter from here on
    inv.release(&ReservationId::parse(&holds[0]).unwrap(), &Tenant::Operator)
        .await
        .unwrap();
    let meta = inv
        .meta(&Sku::parse("last").unwrap())
        .await
        .unwrap()
        .unwrap();
    let promoted = inv.promote(&meta, "doomed").await.unwrap();
    assert_eq!(promoted.len(), 1);
    let rid = promoted[0].reservation_id.clone().unwrap();

    // undo wl_end: the ticket waits again, first in the queue, its stream
    // entry pending for the dead promoter, whose lease has run out
    let tkey = format!("fg:{{wl:last}}:t:{id}");
    let stream = "fg:{wl:last}:stream";
    let (seq, expires) = (
        redis.cli(&["HGET", &tkey, "seq"]),
        redis.cli(&["HGET", &tkey, "expires"]),
    );
    redis.cli(&["HDEL", &tkey, "rid", "hold_exp", "ended"]);
    let entry = redis.cli(&["XADD", stream, "*", "ticket", &id]);
    redis.cli(&["HSET", &tkey, "status", "waiting", "entry", &entry]);
    redis.cli(&[
        "XREADGROUP",
        "GROUP",
        "promoters",
        "doomed",
        "COUNT",
        "1",
        "STREAMS",
        stream,
        ">",
    ]);
    redis.cli(&["ZADD", "fg:{wl:last}:queue", &seq, &id]);
    redis.cli(&["ZADD", "fg:{wl:last}:exp", &expires, &id]);
    redis.cli(&["HSET", "fg:{wl:last}:users", "w0", &id]);
    redis.cli(&["DEL", "fg:{wl:last}:lease"]);
    let t = inv
        .ticket(&TicketId::parse(&id).unwrap(), &Tenant::Operator)
        .await
        .unwrap();
    assert_eq!((t.status.as_str(), t.position), ("waiting", Some(1)));
    let st = inv.status(&Sku::parse("last").unwrap()).await.unwrap();
    assert_eq!(
        (st.available, st.held),
        (0, 1),
        "the hold took the last unit"
    );

    let again = inv.promote(&meta, "survivor").await.unwrap();
    assert_eq!(again.len(), 1, "the ticket is promoted");
    assert_eq!(
        again[0].reservation_id.as_deref(),
        Some(rid.as_str()),
        "with the dead promoter's hold, replayed"
    );
    let st = inv.status(&Sku::parse("last").unwrap()).await.unwrap();
    assert_eq!((st.available, st.held, st.waitlist), (0, 1, 0));
    assert_eq!(redis.cli(&["XLEN", stream]), "0");
}
