//! Reconcile must never make the books worse (issue 25): a paid sale whose
//! outbox entries were lost stays sold, a reload after a Redis wipe counts no
//! unit twice, transfers balance per SKU, one poison stream entry stalls
//! nothing, and concurrent fixes are serialised and audited. Every test runs
//! against a real redis-server and a real PostgreSQL.

mod support;

use std::collections::HashMap;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use flashgate::config::Config;
use flashgate::db::Db;
use flashgate::ledger::LedgerSettings;
use flashgate::metrics::Metrics;
use flashgate::reconcile::{Options, Reconciler, Report};
use hyper::StatusCode;
use support::postgres::PostgresServer;
use support::{test_config, RedisServer, TestApp};

const WAIT: Duration = Duration::from_secs(60);

fn config(redis: &RedisServer, pg: Option<&PostgresServer>) -> Config {
    let mut c = test_config(redis);
    if let Some(pg) = pg {
        c.postgres_url = pg.url();
    }
    c.ledger_interval_ms = 20;
    c.ledger_claim_idle_ms = 300;
    c.ledger_batch = 50;
    c
}

fn reconciler(app: &TestApp, pg: &PostgresServer) -> Reconciler {
    let c = &app.state.config;
    let mut settings = LedgerSettings::from_config(c);
    settings.consumer = format!("reconcile-test-{}", uuid::Uuid::new_v4().simple());
    Reconciler::new(
        app.state.inventory.clone(),
        Db::new(&pg.url(), 2).expect("db"),
        Arc::new(Metrics::new(10)),
        settings,
    )
}

fn options(fix: bool) -> Options {
    Options {
        sku: None,
        fix,
        force: false,
        wait: WAIT,
        quiet_ms: 0,
    }
}

async fn reconcile(app: &TestApp, pg: &PostgresServer, fix: bool) -> Report {
    reconciler(app, pg)
        .run(&options(fix))
        .await
        .expect("reconcile runs")
}

fn flashgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flashgate"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("flashgate runs")
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn rid_of(a: &support::Answer) -> String {
    a.body["reservation_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no reservation id in {:?}", a.body))
        .to_string()
}

/// The ids of the outbox entries of `stream` that mention `rid` (a batched
/// `held` entry names it in its `holds` field), as `(id, fields)`.
fn entries_naming(redis: &RedisServer, stream: &str, rid: &str) -> Vec<String> {
    // redis-cli prints an entry as its id line, then field / value lines
    let raw = redis.cli(&["XRANGE", stream, "-", "+"]);
    let lines: Vec<&str> = raw.lines().collect();
    let mut out = Vec::new();
    let mut current: Option<&str> = None;
    for l in &lines {
        if l.contains('-') && l.split('-').all(|p| p.parse::<u64>().is_ok()) {
            current = Some(l);
        } else if l.contains(rid) {
            if let Some(id) = current {
                if !out.iter().any(|o: &String| o == id) {
                    out.push(id.to_string());
                }
            }
        }
    }
    out
}

/// Ledger rows of one SKU: (kind, rid) → count.
async fn ledger_rows(pg: &PostgresServer, sku: &str) -> HashMap<(String, String), i64> {
    let c = pg.client().await;
    c.query(
        "SELECT kind, rid, count(*) FROM ledger_events WHERE sku = $1 GROUP BY kind, rid",
        &[&sku],
    )
    .await
    .map(|rows| {
        rows.iter()
            .map(|r| ((r.get(0), r.get(1)), r.get(2)))
            .collect()
    })
    .unwrap_or_default()
}

// ------------------------------------------------------------------ item 1

/// The reproduction: 4 units on 1 shard, one hold confirmed, the
/// hold's and the confirm's outbox entries lost before the ledger got them
/// (as `MAXLEN ~` trimming does while the writer lags). `reconcile --fix
/// --force` must backfill the sale from the record, not put the unit back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paid_sale_whose_events_were_lost_stays_sold_after_fix() {
    let redis = RedisServer::start();
    let pg = PostgresServer::start();
    // no ledger writer in the service: the entries wait in the stream
    let app = spawn(config(&redis, None)).await;
    app.preload("lostpay", 4, 1).await;
    let a = app.reserve("k-1", "lostpay", 1, "buyer").await;
    assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
    let rid = rid_of(&a);
    assert_eq!(app.action(&rid, "confirm").await.status, StatusCode::OK);

    let stream = "fg:{lostpay#0}:events";
    let gone = entries_naming(&redis, stream, &rid);
    assert_eq!(
        gone.len(),
        2,
        "the hold's and the confirm's entries: {gone:?}"
    );
    for id in &gone {
        assert_eq!(redis.cli(&["XDEL", stream, id]), "1");
    }

    let out = flashgate(&[
        "reconcile",
        "--sku",
        "lostpay",
        "--fix",
        "--force",
        "--redis-url",
        &redis.url(),
        "--postgres-url",
        &pg.url(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let r = app.get(&format!("/v1/reservations/{rid}")).await;
    assert_eq!(r.body["status"], "confirmed", "{:?}", r.body);
    let st = app.assert_books("lostpay").await;
    assert_eq!(
        (st.available, st.held, st.sold),
        (3, 0, 1),
        "the paid unit stays sold: {st:?}"
    );
    let rows = ledger_rows(&pg, "lostpay").await;
    assert_eq!(
        rows.get(&("confirmed".to_string(), rid.clone())),
        Some(&1),
        "the sale is backfilled into the ledger: {rows:?}"
    );
    let again = reconcile(&app, &pg, false).await;
    assert!(!again.drift(), "{}", flashgate::reconcile::table(&again));
}

async fn spawn(c: Config) -> TestApp {
    support::spawn_app(c).await
}
