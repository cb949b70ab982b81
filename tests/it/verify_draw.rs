//! `flashgate verify-draw`'s plumbing, against a tiny local HTTP server that
//! serves the two documents it reads (`GET /v1/skus/{sku}`, `GET
//! /v1/skus/{sku}/draw`): exit 0 and one line for a true draw; exit 1 naming
//! the first problem for a tampered seed, order, digest or commitment, a
//! 404, bad JSON, a document too large, a server that never answers or is
//! not there — and never a panic. (The end-to-end test against a real draw
//! of the service belongs with the draw route.)

use std::sync::Arc;

use flashgate::fairness::{draw_order, prequeue_digest, DrawDocument, Seed};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the server answers to one path.
#[derive(Clone)]
enum Reply {
    Json(u16, String),
    Raw(u16, Vec<u8>),
    /// Headers, then silence.
    Hang,
    /// Claims `n` bytes and sends them, slowly enough not to matter.
    Huge(u64),
}

type Handler = Arc<dyn Fn(&str) -> Reply + Send + Sync>;

/// Serves `handler` on a local port until the test ends; its base URL.
async fn serve(handler: Handler) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let path = head.split(' ').nth(1).unwrap_or("").to_owned();
                let (status, body): (u16, Vec<u8>) = match handler(&path) {
                    Reply::Json(s, b) => (s, b.into_bytes()),
                    Reply::Raw(s, b) => (s, b),
                    Reply::Hang => {
                        let _ = conn
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n{")
                            .await;
                        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                        return;
                    }
                    Reply::Huge(n) => {
                        let _ = conn
                            .write_all(
                                format!("HTTP/1.1 200 OK\r\ncontent-length: {n}\r\n\r\n")
                                    .as_bytes(),
                            )
                            .await;
                        let chunk = vec![b' '; 64 * 1024];
                        while conn.write_all(&chunk).await.is_ok() {}
                        return;
                    }
                };
                let _ = conn
                    .write_all(
                        format!(
                            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
                let _ = conn.write_all(&body).await;
            });
        }
    });
    format!("http://{addr}")
}

/// A true draw of `n` tickets of SKU `sku`: (SKU document, draw document).
fn drawn(sku: &str, n: usize) -> (serde_json::Value, DrawDocument) {
    let seed = Seed::from_bytes([42; 32]);
    let mut tickets: Vec<String> = (0..n)
        .map(|i| format!("{sku}.w.{:032x}", (i as u128 + 1) * 0x9e37_79b9_7f4a_7c15))
        .collect();
    tickets.sort();
    let doc = DrawDocument {
        sku: sku.into(),
        status: "drawn".into(),
        opens_at: "2026-12-04T20:00:00Z".into(),
        fairness_commitment: seed.commitment(),
        prequeue_digest: Some(prequeue_digest(&tickets)),
        fairness_seed: Some(seed.to_hex()),
        order: draw_order(&seed, &tickets),
        tickets,
    };
    let sku_doc = serde_json::json!({
        "sku": sku, "available": 0, "held": 0, "sold": 0, "shards": 1, "waitlist": 0,
        "fairness_commitment": seed.commitment(), "fairness_seed": seed.to_hex(),
    });
    (sku_doc, doc)
}

/// A server answering the two documents as given.
async fn documents(sku_doc: serde_json::Value, draw: serde_json::Value) -> String {
    let (a, b) = (sku_doc.to_string(), draw.to_string());
    serve(Arc::new(move |path: &str| {
        if path.ends_with("/draw") {
            Reply::Json(200, b.clone())
        } else if path.starts_with("/v1/skus/") {
            Reply::Json(200, a.clone())
        } else {
            Reply::Json(
                404,
                r#"{"error":{"code":"not_found","message":"no route"}}"#.into(),
            )
        }
    }))
    .await
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

async fn verify(url: &str, extra: &[&str]) -> Run {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_flashgate"))
        .args(["verify-draw", "--sku", "drop", "--url", url])
        .args(extra)
        .env_remove("FLASHGATE_URL")
        .env_remove("FLASHGATE_API_KEY")
        .output()
        .await
        .expect("run flashgate");
    let run = Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        !run.stderr.contains("panicked"),
        "verify-draw panicked: {}",
        run.stderr
    );
    run
}

/// Exit 1, nothing on stdout, and stderr names `what`.
fn refused(run: &Run, what: &str) {
    assert_eq!(run.code, Some(1), "{} / {}", run.stdout, run.stderr);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    assert!(
        run.stderr.contains(what),
        "expected {what:?} in: {}",
        run.stderr
    );
    assert_eq!(run.stderr.trim_end().lines().count(), 1, "{}", run.stderr);
}

fn doc(d: &DrawDocument) -> serde_json::Value {
    serde_json::to_value(d).unwrap()
}

#[tokio::test]
async fn a_true_draw_verifies_with_and_without_the_recorded_commitment() {
    let (sku_doc, d) = drawn("drop", 250);
    let url = documents(sku_doc, doc(&d)).await;
    let run = verify(&url, &[]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.stdout, "draw verified: 250 tickets\n");
    let run = verify(
        &format!("{url}/"),
        &["--commitment", &d.fairness_commitment],
    )
    .await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    // a recorded commitment in upper case is the same commitment
    let upper = d.fairness_commitment.to_uppercase();
    assert_eq!(verify(&url, &["--commitment", &upper]).await.code, Some(0));
    // an empty pre-queue is a draw too
    let (sku_doc, d) = drawn("drop", 0);
    let url = documents(sku_doc, doc(&d)).await;
    let run = verify(&url, &[]).await;
    assert_eq!(run.stdout, "draw verified: 0 tickets\n", "{}", run.stderr);
}

#[tokio::test]
async fn a_tampered_seed_order_digest_or_commitment_is_named() {
    let (sku_doc, d) = drawn("drop", 40);

    // another seed revealed than the one committed to
    let mut seed = d.clone();
    seed.fairness_seed = Some(Seed::from_bytes([43; 32]).to_hex());
    let mut sd = sku_doc.clone();
    sd["fairness_seed"] = serde_json::Value::Null;
    refused(
        &verify(&documents(sd.clone(), doc(&seed)).await, &[]).await,
        "published commitment",
    );
    // ... with the commitment moved to match it: the buyer's record catches it
    let mut both = seed.clone();
    both.fairness_commitment = Seed::from_bytes([43; 32]).commitment();
    let mut sd2 = sd.clone();
    sd2["fairness_commitment"] = both.fairness_commitment.clone().into();
    let url = documents(sd2, doc(&both)).await;
    refused(
        &verify(&url, &["--commitment", &d.fairness_commitment]).await,
        "is not the one you recorded",
    );
    // (without the record, the moved commitment is consistent: the reason to record it)

    // two tickets swapped in the order
    let mut order = d.clone();
    order.order.swap(10, 11);
    refused(
        &verify(&documents(sku_doc.clone(), doc(&order)).await, &[]).await,
        "order differs at position 10",
    );
    // a ticket admitted twice, one left out
    let mut dup = d.clone();
    dup.order[39] = dup.order[0].clone();
    refused(
        &verify(&documents(sku_doc.clone(), doc(&dup)).await, &[]).await,
        "position 39",
    );
    // a ticket slipped into the list after the digest was published
    let mut extra = d.clone();
    extra.tickets.push(format!("drop.w.{}", "f".repeat(32)));
    refused(
        &verify(&documents(sku_doc.clone(), doc(&extra)).await, &[]).await,
        "prequeue_digest",
    );
    // the SKU document and the draw document disagree
    let mut other = sku_doc.clone();
    other["fairness_commitment"] = "0".repeat(64).into();
    refused(
        &verify(&documents(other, doc(&d)).await, &[]).await,
        "publishes the commitment",
    );
    // not drawn yet
    let mut closed = d.clone();
    closed.status = "closed".into();
    closed.fairness_seed = None;
    refused(
        &verify(&documents(sd, doc(&closed)).await, &[]).await,
        "not revealed yet",
    );
    // a malformed --commitment is refused before anything is fetched
    refused(
        &verify("http://127.0.0.1:9", &["--commitment", "xyz"]).await,
        "64 hex",
    );
}

#[tokio::test]
async fn hostile_or_broken_servers_get_a_named_error_never_a_panic() {
    let (sku_doc, d) = drawn("drop", 5);
    let good = doc(&d);

    // 404 with the service's error body
    let url = serve(Arc::new(|_: &str| {
        Reply::Json(
            404,
            r#"{"error":{"code":"unknown_sku","message":"no such SKU"}}"#.into(),
        )
    }))
    .await;
    refused(
        &verify(&url, &[]).await,
        "404 Not Found (unknown_sku: no such SKU)",
    );
    // a draw route that is not there
    let s = sku_doc.to_string();
    let url = serve(Arc::new(move |p: &str| {
        if p.ends_with("/draw") {
            Reply::Raw(404, b"<html>nope</html>".to_vec())
        } else {
            Reply::Json(200, s.clone())
        }
    }))
    .await;
    refused(&verify(&url, &[]).await, "/draw answered 404");
    // a 500, a redirect
    let url = serve(Arc::new(|_: &str| Reply::Raw(500, Vec::new()))).await;
    refused(&verify(&url, &[]).await, "answered 500");
    let url = serve(Arc::new(|_: &str| Reply::Raw(301, Vec::new()))).await;
    refused(&verify(&url, &[]).await, "answered 301");

    // bodies that are not the documents
    let bad_bodies: Vec<(Vec<u8>, &str)> = vec![
        (b"not json".to_vec(), "not a JSON document"),
        (br#"{"sku": "drop", "status": "drawn""#.to_vec(), "not a JSON document"),
        (vec![0xff, 0xfe, 0x00], "not a JSON document"),
        (
            format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(),
            "not a JSON document",
        ),
        (b"[]".to_vec(), "malformed draw document"),
        (b"null".to_vec(), "malformed draw document"),
        (
            br#"{"sku":"drop","status":"drawn","opens_at":"x","fairness_commitment":7,"prequeue_digest":null,"fairness_seed":null,"tickets":[],"order":[]}"#.to_vec(),
            "malformed draw document",
        ),
        (
            br#"{"sku":"drop","status":"drawn","opens_at":"x","fairness_commitment":"00","prequeue_digest":null,"fairness_seed":null,"tickets":[1,2],"order":[]}"#.to_vec(),
            "malformed draw document",
        ),
    ];
    for (body, what) in bad_bodies {
        let s = sku_doc.to_string();
        let url = serve(Arc::new(move |p: &str| {
            if p.ends_with("/draw") {
                Reply::Raw(200, body.clone())
            } else {
                Reply::Json(200, s.clone())
            }
        }))
        .await;
        refused(&verify(&url, &[]).await, what);
    }
    // hostile values inside a well-formed document
    let hostile: Vec<(serde_json::Value, &str)> = vec![
        (
            {
                let mut v = good.clone();
                v["fairness_seed"] = "zz".repeat(32).into();
                v
            },
            "fairness_seed is not 64 hex digits",
        ),
        (
            {
                let mut v = good.clone();
                v["fairness_seed"] = "ab".repeat(100_000).into();
                v
            },
            "fairness_seed is not 64 hex digits",
        ),
        (
            {
                let mut v = good.clone();
                v["prequeue_digest"] = "0".repeat(1_000_000).into();
                v
            },
            "prequeue_digest is not 64 hex digits",
        ),
        (
            {
                let mut v = good.clone();
                v["order"][2] = "x".repeat(1_000_000).into();
                v
            },
            "order entry 2",
        ),
        (
            {
                let mut v = good.clone();
                v["fairness_seed"] = serde_json::Value::Null;
                v
            },
            "without fairness_seed",
        ),
        (
            {
                let mut v = good.clone();
                v["tickets"][0] = "drop.w.\u{0}\n\u{202e}".into();
                v
            },
            "is not a ticket id of drop",
        ),
        (
            {
                let mut v = good.clone();
                v["sku"] = "other".into();
                v
            },
            "for SKU \"other\"",
        ),
    ];
    // (the SKU document reveals no seed here, so the draw document's is the one checked)
    let mut unseeded = sku_doc.clone();
    unseeded["fairness_seed"] = serde_json::Value::Null;
    for (draw, what) in hostile {
        let run = verify(&documents(unseeded.clone(), draw).await, &[]).await;
        refused(&run, what);
        assert!(
            run.stderr.len() < 1_000,
            "a message kept short: {}",
            run.stderr.len()
        );
    }
    // the SKU document without a commitment (a SKU with no draw)
    refused(
        &verify(
            &documents(serde_json::json!({"sku": "drop"}), good.clone()).await,
            &[],
        )
        .await,
        "no fairness_commitment",
    );

    // a document larger than the limit
    let url = serve(Arc::new(|_: &str| Reply::Huge(1 << 40))).await;
    refused(
        &verify(&url, &["--max-document-bytes", "100000"]).await,
        "larger than 100000 bytes",
    );
    // a server that sends headers, then nothing
    let url = serve(Arc::new(|_: &str| Reply::Hang)).await;
    refused(
        &verify(&url, &["--timeout-seconds", "1"]).await,
        "no complete answer within 1 s",
    );
    // nobody listening
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    refused(
        &verify(&format!("http://127.0.0.1:{port}"), &[]).await,
        "cannot reach the API",
    );
    // not a URL this command speaks
    refused(&verify("ftp://127.0.0.1/", &[]).await, "not an http");
}

/// End to end against the service's own draw: a SKU with `opens_at` a few
/// seconds ahead, 20 buyers pre-queued, the commitment recorded before the
/// close; once drawn, `verify-draw --commitment` accepts it, and the same
/// documents served with the seed or the order tampered are refused. After
/// the draw's admissions (promotions), the tickets still waiting show a wait
/// estimate.
#[tokio::test]
async fn a_real_draw_verifies_and_a_tampered_copy_does_not() {
    use hyper::{Method, StatusCode};
    use std::time::{Duration, UNIX_EPOCH};
    let redis = crate::support::RedisServer::start();
    let app = crate::support::spawn_app_with(&redis, |_| {}).await;
    let now = app.state.inventory.redis_now_ms("fg:skus").await.unwrap();
    let opens = UNIX_EPOCH + Duration::from_millis((now + 3_000) as u64);
    let body = format!(
        r#"{{"stock":3,"shards":2,"opens_at":"{}"}}"#,
        humantime::format_rfc3339_millis(opens)
    );
    let a = app
        .request(
            Method::POST,
            "/admin/v1/skus/drop/preload",
            &[("content-type", "application/json")],
            body.into_bytes(),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
    let recorded = app.sku("drop").await["fairness_commitment"]
        .as_str()
        .expect("a commitment before opens_at")
        .to_owned();
    let mut tickets = Vec::new();
    for i in 0..20 {
        let body = serde_json::json!({"sku": "drop", "qty": 1, "user_id": format!("b{i}"), "waitlist": true});
        let a = app
            .request(
                Method::POST,
                "/v1/reservations",
                &[
                    ("content-type", "application/json"),
                    ("idempotency-key", &format!("pq-{i}")),
                ],
                body.to_string().into_bytes(),
            )
            .await;
        assert_eq!(a.status, StatusCode::ACCEPTED, "{:?}", a.body);
        tickets.push(a.body["ticket_id"].as_str().unwrap().to_owned());
    }
    assert!(
        crate::support::eventually(Duration::from_secs(60), || async {
            app.get("/v1/skus/drop/draw").await.body["status"] == "drawn"
        })
        .await,
        "drawn"
    );
    let url = format!("http://{}", app.addr);
    let run = verify(&url, &["--commitment", &recorded]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.stdout, "draw verified: 20 tickets\n");

    // the same documents, tampered, from a server of our own
    let sku_doc = app.sku("drop").await;
    let draw: DrawDocument =
        serde_json::from_value(app.get("/v1/skus/drop/draw").await.body).unwrap();
    let mut seed = draw.clone();
    seed.fairness_seed = Some(Seed::from_bytes([1; 32]).to_hex());
    let mut unseeded = sku_doc.clone();
    unseeded["fairness_seed"] = serde_json::Value::Null;
    refused(
        &verify(&documents(unseeded, doc(&seed)).await, &[]).await,
        "published commitment",
    );
    let mut order = draw.clone();
    order.order.swap(0, 19);
    refused(
        &verify(&documents(sku_doc, doc(&order)).await, &[]).await,
        "order differs at position 0",
    );

    // 3 admitted in draw order: the rest wait, with an estimate
    assert!(
        crate::support::eventually(Duration::from_secs(30), || async {
            app.sku("drop").await["held"] == 3
        })
        .await
    );
    let first_waiting = &draw.order[3];
    let t = app.get(&format!("/v1/waitlist/{first_waiting}")).await.body;
    if t["status"] == "waiting" {
        assert!(t["estimated_wait_seconds"].as_u64().is_some(), "{t}");
    }
}
