//! Carts on the ledger (issue 22, docs/carts.md "Ledger"): every change of a
//! cart's status reaches `cart_events` exactly once, across a ledger writer
//! killed before its commit and one that commits but cannot acknowledge; and
//! reconcile judges carts against their lines: nothing on a clean sale with
//! carts, a partial cart named (and left alone by `--fix`) when an operator
//! made one, and none where a storefront acted on a line on its own (the
//! cart ends `incomplete`). Real redis-server and PostgreSQL per test.

use crate::carts::{cart_action, lines, post_cart, rids};
use crate::support;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};

use hyper::StatusCode;
use support::ledger::{config, flashgate, reconcile, WAIT};
use support::postgres::PostgresServer;
use support::{eventually, spawn_app, RedisServer};

use flashgate::inventory::keys::CART_EVENT_STREAMS;

/// Entries of every cart stream.
fn cart_entries(redis: &RedisServer) -> i64 {
    CART_EVENT_STREAMS
        .iter()
        .map(|k| redis.cli(&["XLEN", k]).trim().parse::<i64>().unwrap_or(0))
        .sum()
}

/// Entries pending in the ledger group over the cart streams (for one
/// consumer, or for all with None).
fn cart_pending(redis: &RedisServer, consumer: Option<&str>) -> i64 {
    CART_EVENT_STREAMS
        .iter()
        .map(|k| {
            let mut args = vec!["XPENDING", k, "ledger", "-", "+", "1000"];
            if let Some(c) = consumer {
                args.push(c);
            }
            // one entry prints as 4 lines: id, consumer, idle ms, deliveries
            redis
                .cli(&args)
                .lines()
                .filter(|l| {
                    let p: Vec<&str> = l.split('-').collect();
                    p.len() == 2 && p.iter().all(|x| x.parse::<u64>().is_ok())
                })
                .count() as i64
        })
        .sum()
}

/// `flashgate ledger` with small batches, so a kill lands mid-way.
fn writer(redis_url: &str, pg: &PostgresServer, consumer: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_flashgate"))
        .args([
            "ledger",
            "--redis-url",
            redis_url,
            "--postgres-url",
            &pg.url(),
            "--ledger-batch",
            "4",
            "--ledger-interval-ms",
            "20",
            "--ledger-claim-idle-ms",
            "300",
            "--ledger-consumer",
            consumer,
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("flashgate ledger starts")
}

fn count(pg: &PostgresServer, sql: &str) -> i64 {
    pg.psql(sql).trim().parse().unwrap_or(-1)
}

/// A sale with carts of every ending: `n` each confirmed, released, and
/// failed (line 1 sold out). Returns (cart id → its final status, the
/// cart events it must have made).
async fn sale_with_carts(app: &support::TestApp, n: usize) -> (HashMap<String, String>, i64) {
    app.preload("ca", 1000, 2).await;
    app.preload("cb", 1000, 2).await;
    app.preload("gone", 0, 1).await;
    let mut carts = HashMap::new();
    let mut events = 0;
    for i in 0..n {
        let a = post_cart(app, &format!("c-{i}"), "u", &lines(&[("ca", 1), ("cb", 2)])).await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
        let id = a.body["cart_id"].as_str().unwrap().to_string();
        let c = cart_action(app, None, &id, "confirm").await;
        assert_eq!(c.status, StatusCode::OK, "{}", c.body);
        carts.insert(id, "confirmed".to_string());
        events += 4; // pending, held, confirming, confirmed

        let a = post_cart(app, &format!("r-{i}"), "u", &lines(&[("cb", 1), ("ca", 1)])).await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
        let id = a.body["cart_id"].as_str().unwrap().to_string();
        let r = cart_action(app, None, &id, "release").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        carts.insert(id, "released".to_string());
        events += 4; // pending, held, releasing, released

        let a = post_cart(
            app,
            &format!("f-{i}"),
            "u",
            &lines(&[("ca", 1), ("gone", 1)]),
        )
        .await;
        assert_eq!(
            (a.status, a.code()),
            (StatusCode::CONFLICT, "sold_out"),
            "{}",
            a.body
        );
        events += 3; // pending, compensating, failed
    }
    (carts, events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cart_events_reach_the_ledger_once_each_across_killed_writers() {
    let redis = RedisServer::start();
    let pg = PostgresServer::start();
    // the sale runs without a ledger writer of its own
    let app = spawn_app(config(&redis, None)).await;
    let (carts, expected) = sale_with_carts(&app, 12).await;
    assert_eq!(
        cart_entries(&redis),
        expected,
        "every change of a cart's status is one entry of its bucket's stream"
    );
    let out = flashgate(&["migrate", "--postgres-url", &pg.url()]);
    assert!(out.status.success());

    // 1. killed before its commit: Postgres holds its insert behind a lock
    let locker = pg.client().await;
    locker
        .batch_execute("BEGIN; LOCK TABLE cart_events IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock");
    let mut victim = writer(&redis.url(), &pg, "victim-1");
    assert!(
        eventually(WAIT, || async {
            cart_pending(&redis, Some("victim-1")) > 0
        })
        .await,
        "the writer reads a batch of cart events and blocks on its insert"
    );
    let _ = victim.kill();
    let _ = victim.wait();
    locker.batch_execute("ROLLBACK").await.expect("unlock");
    assert_eq!(count(&pg, "SELECT count(*) FROM cart_events"), 0);

    // 2. killed between its commit and its XACK: a Redis user that may do
    // everything but acknowledge claims the batch, commits it, never acks
    redis.cli(&[
        "ACL", "SETUSER", "noack", "on", ">pw", "~*", "&*", "+@all", "-xack",
    ]);
    let noack = format!("redis://noack:pw@127.0.0.1:{}", redis.port);
    let mut victim = writer(&noack, &pg, "victim-2");
    assert!(
        eventually(WAIT, || async {
            count(&pg, "SELECT count(*) FROM cart_events") > 0
                && cart_pending(&redis, Some("victim-1")) == 0
        })
        .await,
        "the second writer claims the first one's batch and commits it: {} rows, {} pending",
        count(&pg, "SELECT count(*) FROM cart_events"),
        cart_pending(&redis, Some("victim-1"))
    );
    let _ = victim.kill();
    let _ = victim.wait();
    assert!(
        cart_pending(&redis, Some("victim-2")) > 0,
        "nothing acknowledged"
    );

    // 3. a healthy writer claims what is left pending: delivered again,
    // inserted never twice
    let mut healthy = writer(&redis.url(), &pg, "healthy");
    assert!(
        eventually(WAIT, || async {
            cart_pending(&redis, None) == 0
                && count(&pg, "SELECT count(*) FROM cart_events") == expected
        })
        .await,
        "every cart event on the ledger, every pending one claimed and acknowledged: {} rows, {} pending",
        count(&pg, "SELECT count(*) FROM cart_events"),
        cart_pending(&redis, None)
    );
    let _ = healthy.kill();
    let _ = healthy.wait();
    assert_eq!(count(&pg, "SELECT count(*) FROM cart_events"), expected);
    assert_eq!(
        count(
            &pg,
            "SELECT count(*) FROM (SELECT cart_id, seq FROM cart_events
             GROUP BY 1, 2 HAVING count(*) > 1) d"
        ),
        0,
        "each change of each cart once"
    );
    assert_eq!(
        count(
            &pg,
            "SELECT count(*) FROM (SELECT cart_id FROM cart_events
             GROUP BY 1 HAVING min(seq) <> 1 OR max(seq) <> count(*)) d"
        ),
        0,
        "each cart's events are 1..n without a gap"
    );
    // the ledger's last state of each cart is the API's
    for (id, status) in &carts {
        assert_eq!(
            pg.psql(&format!("SELECT status FROM carts WHERE cart_id = '{id}'"))
                .trim(),
            status
        );
        let lines = pg.psql(&format!("SELECT lines FROM carts WHERE cart_id = '{id}'"));
        let api = cart_action(&app, None, id, "").await;
        for rid in rids(&api) {
            assert!(lines.contains(&rid), "{lines} names {rid}");
        }
    }
    assert_eq!(
        count(
            &pg,
            "SELECT count(*) FROM carts WHERE status = 'failed' AND why = 'sold_out:1'"
        ),
        12
    );
    // and reconcile finds the books and the carts clean
    let report = reconcile(&app, &pg, false).await;
    assert!(!report.drift(), "{}", flashgate::reconcile::table(&report));
    assert_eq!(report.carts_checked, 36);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconcile_finds_nothing_on_a_clean_sale_with_carts() {
    let redis = RedisServer::start();
    let pg = PostgresServer::start();
    let app = spawn_app(config(&redis, Some(&pg))).await;
    let (_, expected) = sale_with_carts(&app, 3).await;
    // and an incomplete one: a line released on its own before the confirm
    let a = post_cart(&app, "inc", "u", &lines(&[("ca", 1), ("cb", 1)])).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let id = a.body["cart_id"].as_str().unwrap().to_string();
    assert_eq!(
        app.action(&rids(&a)[1], "release").await.status,
        StatusCode::OK
    );
    let c = cart_action(&app, None, &id, "confirm").await;
    assert_eq!(c.code(), "cart_incomplete", "{}", c.body);
    let report = reconcile(&app, &pg, false).await;
    assert!(!report.drift(), "{}", flashgate::reconcile::table(&report));
    assert_eq!(report.exit_code(), 0);
    assert_eq!(report.carts_checked, 10, "every cart judged");
    assert_eq!(
        count(&pg, "SELECT count(*) FROM cart_events"),
        expected + 4,
        "(the incomplete cart: pending, held, confirming, incomplete)"
    );
}

async fn books(app: &support::TestApp) -> (i64, i64, i64, i64) {
    let a = app.assert_books("pa").await;
    let b = app.assert_books("pb").await;
    (a.held, a.sold, b.held, b.sold)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconcile_names_a_partial_cart_and_fix_leaves_it_alone() {
    let redis = RedisServer::start();
    let pg = PostgresServer::start();
    let app = spawn_app(config(&redis, Some(&pg))).await;
    app.preload("pa", 10, 2).await;
    app.preload("pb", 10, 2).await;

    // 1. a storefront confirms one line on its own, then releases the cart:
    // the cart ends `incomplete` (issue 22), its line 0 stays sold, line 1
    // is released — an honest cart reconcile finds clean
    let a = post_cart(&app, "p1", "u", &lines(&[("pa", 1), ("pb", 2)])).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let sold_line = rids(&a)[0].clone();
    assert_eq!(
        app.action(&sold_line, "confirm").await.status,
        StatusCode::OK
    );
    let r = cart_action(&app, None, a.body["cart_id"].as_str().unwrap(), "release").await;
    assert_eq!(r.code(), "cart_incomplete", "{}", r.body);

    // 2. an operator (or a bug) moves a held cart to `failed` by hand, with
    // the script every move goes through: its lines stay held
    let a = post_cart(&app, "p2", "u", &lines(&[("pa", 2), ("pb", 1)])).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let held_id = flashgate::domain::CartId::parse(a.body["cart_id"].as_str().unwrap()).unwrap();
    let held_lines = rids(&a);
    let s = flashgate::inventory::scripts::Scripts::new();
    let moved = redis.cli(&[
        "EVAL",
        &s.cart_move.source,
        "2",
        &flashgate::inventory::keys::cart(&held_id),
        flashgate::inventory::keys::cart_events(&held_id),
        ",held,",
        "failed",
        "",
        "",
        "why",
        "operator",
    ]);
    assert!(moved.starts_with('1'), "{moved}");

    let before = books(&app).await;
    assert_eq!(before, (2, 1, 1, 0));

    for fix in [false, true] {
        let report = reconcile(&app, &pg, fix).await;
        let table = flashgate::reconcile::table(&report);
        assert_eq!(report.verdict, "drift", "{table}");
        assert_eq!(report.exit_code(), 1, "{table}");
        // the stock's books agree: only the carts do not
        assert!(report.skus.iter().all(|s| !s.drift()), "{table}");
        let mut found: Vec<(String, usize, &str)> = report
            .carts
            .iter()
            .map(|f| (f.cart_id.clone(), f.line, f.ledger))
            .collect();
        found.sort();
        let mut want = vec![
            (held_id.to_string(), 0, "held"),
            (held_id.to_string(), 1, "held"),
        ];
        want.sort();
        assert_eq!(found, want, "{table}");
        assert!(!table.contains(&sold_line), "{table}");
        for l in &held_lines {
            assert!(table.contains(l), "{table}");
        }
        // --fix sells nothing and gives nothing back
        assert_eq!(books(&app).await, before, "{table}");
    }
}
