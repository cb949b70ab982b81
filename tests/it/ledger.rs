//! The ledger (outbox streams → PostgreSQL) and reconcile, end to end against
//! a real redis-server and a real PostgreSQL per test. Faults are injected by
//! breaking the real dependencies: a writer process killed while Postgres
//! holds its insert, a Redis user not allowed to XACK, Postgres stopped, Redis
//! counters and outbox entries changed behind flashgate's back.

use crate::support;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use flashgate::config::Config;
use flashgate::domain::Sku;
use flashgate::reconcile::{Options, Report};
use futures::future::join_all;
use hyper::StatusCode;
use support::postgres::PostgresServer;
use support::{eventually, spawn_app, RedisServer};

use support::ledger::{config, flashgate, ledger_rows, options, reconcile, reconciler, WAIT};

fn rid_of(a: &support::Answer) -> String {
    a.body["reservation_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no reservation id in {:?}", a.body))
        .to_string()
}

fn count_kind(rows: &HashMap<(String, String), i64>, kind: &str) -> i64 {
    rows.iter()
        .filter(|((k, _), _)| k == kind)
        .map(|(_, n)| n)
        .sum()
}

/// Every reservation has exactly one `held` row and at most one end row.
fn assert_each_reservation_once(rows: &HashMap<(String, String), i64>) {
    let mut ends: HashMap<&str, i64> = HashMap::new();
    for ((kind, rid), n) in rows {
        match kind.as_str() {
            "held" => assert_eq!(*n, 1, "{rid} held {n} times on the ledger"),
            "confirmed" | "released" | "expired" => {
                assert_eq!(*n, 1, "{rid} {kind} {n} times on the ledger");
                *ends.entry(rid.as_str()).or_default() += 1;
            }
            _ => {}
        }
    }
    for (rid, n) in ends {
        assert_eq!(n, 1, "{rid} ended {n} times on the ledger");
    }
}

fn assert_clean(report: &Report) {
    assert!(
        !report.drift(),
        "reconcile found drift:\n{}",
        flashgate::reconcile::table(report)
    );
    assert_eq!(report.exit_code(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_sale_lands_on_the_ledger_exactly_once_and_reconciles_clean() {
    let redis = RedisServer::start();
    let pg = PostgresServer::start();
    let app = Arc::new(spawn_app(config(&redis, Some(&pg))).await);
    // a second instance with 1 s holds: its holds expire; two ledger writers share the work
    let mut short = config(&redis, Some(&pg));
    short.hold_seconds = 1;
    short.max_hold_seconds = 1;
    let app2 = spawn_app(short).await;

    // the catalogue comes from Postgres
    let out = flashgate(&["migrate", "--postgres-url", &pg.url()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    pg.psql(
        "INSERT INTO skus (sku, stock, shards, max_per_user) VALUES ('sale', 40, 4, NULL), ('other', 5, 2, 2)",
    );
    let out = flashgate(&[
        "preload",
        "--from-postgres",
        "--redis-url",
        &redis.url(),
        "--postgres-url",
        &pg.url(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("loaded sale: 40 units over 4 shards"));
    assert_eq!(
        pg.psql("SELECT count(*) FROM skus WHERE loaded_at IS NOT NULL"),
        "2"
    );
    assert_eq!(redis.cli(&["HGET", "fg:{other}:meta", "max_per_user"]), "2");
    assert_eq!(redis.cli(&["HGET", "fg:{sale}:meta", "max_per_user"]), "0");
    // loading again refuses (a live sale is never overwritten) ...
    let again = flashgate(&[
        "preload",
        "--from-postgres",
        "--redis-url",
        &redis.url(),
        "--postgres-url",
        &pg.url(),
    ]);
    assert!(!again.status.success());
    // ... unless told that is fine
    let again = flashgate(&[
        "preload",
        "--from-postgres",
        "--if-absent",
        "--sku",
        "sale",
        "--redis-url",
        &redis.url(),
        "--postgres-url",
        &pg.url(),
    ]);
    assert!(again.status.success());

    // 36 buyers at once on the long-hold instance
    let answers = join_all((0..36).map(|i| {
        let app = app.clone();
        async move {
            app.reserve(&format!("buy-{i}"), "sale", 1, &format!("u{i}"))
                .await
        }
    }))
    .await;
    let held: Vec<String> = answers
        .iter()
        .filter(|a| a.status == StatusCode::CREATED)
        .map(rid_of)
        .collect();
    // the stock left goes to 4 buyers on the short-hold instance: they never pay
    let mut expiring = Vec::new();
    for i in 0..4 {
        let a = app2
            .reserve(&format!("late-{i}"), "sale", 1, &format!("l{i}"))
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
        expiring.push(rid_of(&a));
    }
    assert_eq!(held.len(), 36);
    assert_eq!(
        app.reserve("too-late", "sale", 1, "x").await.code(),
        "sold_out"
    );
    for rid in &held[..24] {
        assert_eq!(app.action(rid, "confirm").await.status, StatusCode::OK);
    }
    for rid in &held[24..] {
        assert_eq!(app.action(rid, "release").await.status, StatusCode::OK);
    }
    // released units sell again, some as qty 3 (units moved between shards)
    let mut more = Vec::new();
    for i in 0..4 {
        let a = app
            .reserve(&format!("multi-{i}"), "sale", 3, &format!("m{i}"))
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
        more.push(rid_of(&a));
    }
    for rid in &more {
        assert_eq!(app.action(rid, "confirm").await.status, StatusCode::OK);
    }
    assert!(
        eventually(WAIT, || async { app.sku("sale").await["held"] == 0 }).await,
        "the short holds expire"
    );

    // every event on the ledger exactly once
    let holds = (held.len() + expiring.len() + more.len()) as i64;
    assert!(
        eventually(WAIT, || async {
            let rows = ledger_rows(&pg, "sale").await;
            count_kind(&rows, "held") == holds
                && count_kind(&rows, "confirmed") == 28
                && count_kind(&rows, "released") == 12
                && count_kind(&rows, "expired") == 4
        })
        .await,
        "the ledger catches up: {:?}",
        ledger_rows(&pg, "sale").await.len()
    );
    let rows = ledger_rows(&pg, "sale").await;
    assert_each_reservation_once(&rows);
    assert_eq!(count_kind(&rows, "preload"), 4, "one preload per shard");
    assert_eq!(
        count_kind(&rows, "xfer_out"),
        count_kind(&rows, "xfer_in"),
        "every transfer has both halves"
    );
    let c = pg.client().await;
    let dup: i64 = c
        .query_one(
            "SELECT count(*) - count(DISTINCT (stream, entry_id)) FROM ledger_events",
            &[],
        )
        .await
        .expect("query")
        .get(0);
    assert_eq!(dup, 0);
    let sold: i64 = c
        .query_one(
            "SELECT sum(qty)::bigint FROM ledger_events WHERE sku = 'sale' AND kind = 'confirmed'",
            &[],
        )
        .await
        .expect("query")
        .get(0);
    assert_eq!(sold, 24 + 12);
    let st = app.assert_books("sale").await;
    assert_eq!(st.sold, sold, "sold in Redis = confirmed on the ledger");

    // lag metric drops to 0, written counter counts
    assert!(
        eventually(WAIT, || async { app.state.metrics.ledger_lag.get() == 0 }).await,
        "lag gauge reaches 0"
    );
    let total: i64 = c
        .query_one("SELECT count(*) FROM ledger_events", &[])
        .await
        .expect("query")
        .get(0);
    assert!(
        eventually(WAIT, || async {
            app.state.metrics.ledger_written.get() + app2.state.metrics.ledger_written.get()
                == total as u64
        })
        .await,
        "each row written once, by one of the two writers"
    );
    let metrics = app.get("/metrics").await.body;
    assert!(metrics
        .as_str()
        .unwrap_or_default()
        .contains("flashgate_ledger_events_written_total"));

    // acknowledged entries are trimmed: the streams stay short
    let meta = app
        .state
        .inventory
        .meta(&Sku::parse("sale").unwrap())
        .await
        .expect("meta")
        .expect("loaded");
    assert!(
        eventually(WAIT, || async {
            let mut len = 0;
            for s in 0..meta.shards {
                len += redis
                    .cli(&["XLEN", &meta.keys(s).events()])
                    .parse::<i64>()
                    .unwrap_or(99);
            }
            len <= i64::from(meta.shards) // at most the last delivered entry each
        })
        .await,
        "streams trimmed"
    );

    assert_clean(&reconcile(&app, &pg, false).await);
    // the command: table for humans, JSON for machines, exit 0 when clean
    let out = flashgate(&[
        "reconcile",
        "--redis-url",
        &redis.url(),
        "--postgres-url",
        &pg.url(),
    ]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{table}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(table.contains("sku sale  clean"), "{table}");
    assert!(table.contains("no drift"), "{table}");
    let out = flashgate(&[
        "reconcile",
        "--sku",
        "sale",
        "--format",
        "json",
        "--redis-url",
        &redis.url(),
        "--postgres-url",
        &pg.url(),
    ]);
    assert_eq!(out.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json report");
    assert_eq!(json["skus"][0]["sku"], "sale");
    assert_eq!(
        json["skus"][0]["per_shard"].as_array().map(Vec::len),
        Some(4)
    );
    assert_eq!(json["skus"][0]["catalogue_stock"], 40);
}

/// A plain HTTP/1.0 GET; the body, or "" when nothing answers.
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .is_err()
    {
        return String::new();
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// Entries pending for `consumer` in the group of `stream`.
fn pending_of(redis: &RedisServer, stream: &str, consumer: &str) -> i64 {
    let out = redis.cli(&["XPENDING", stream, "ledger", "-", "+", "1000", consumer]);
    // one entry prints as 4 lines: id, consumer, idle ms, deliveries
    out.lines()
        .filter(|l| {
            let parts: Vec<&str> = l.split('-').collect();
            parts.len() == 2 && parts.iter().all(|p| p.parse::<u64>().is_ok())
        })
        .count() as i64
}

fn spawn_writer(redis_url: &str, pg: &PostgresServer, consumer: &str) -> Child {
    spawn_writer_with(redis_url, pg, consumer, &[])
}

fn spawn_writer_with(
    redis_url: &str,
    pg: &PostgresServer,
    consumer: &str,
    extra: &[&str],
) -> Child {
    Command::new(env!("CARGO_BIN_EXE_flashgate"))
        .args([
            "ledger",
            "--redis-url",
            redis_url,
            "--postgres-url",
            &pg.url(),
            "--ledger-batch",
            "50",
            "--ledger-interval-ms",
            "20",
            "--ledger-claim-idle-ms",
            "300",
            "--ledger-consumer",
            consumer,
        ])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("flashgate ledger starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_writer_killed_mid_batch_loses_nothing_and_duplicates_nothing() {
    let redis = RedisServer::start();
    let pg = PostgresServer::start();
    // the sale runs without a ledger writer of its own
    let app = spawn_app(config(&redis, None)).await;
    app.preload("kill", 400, 1).await;
    let mut rids = Vec::new();
    for i in 0..150 {
        let a = app
            .reserve(&format!("k-{i}"), "kill", 1, &format!("u{i}"))
            .await;
        rids.push(rid_of(&a));
    }
    for rid in &rids[..100] {
        assert_eq!(app.action(rid, "confirm").await.status, StatusCode::OK);
    }
    let stream = "fg:{kill#0}:events";
    let expected = 1 + 150 + 100; // preload, holds, confirms

    // 1. killed before its commit: Postgres holds its insert behind a table lock
    let out = flashgate(&["migrate", "--postgres-url", &pg.url()]);
    assert!(out.status.success());
    let locker = pg.client().await;
    locker
        .batch_execute("BEGIN; LOCK TABLE ledger_events IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock");
    let mut victim = spawn_writer(&redis.url(), &pg, "victim-1");
    assert!(
        eventually(WAIT, || async {
            pending_of(&redis, stream, "victim-1") > 0
        })
        .await,
        "the writer reads a batch and blocks on its insert"
    );
    let _ = victim.kill();
    let _ = victim.wait();
    locker.batch_execute("ROLLBACK").await.expect("unlock");
    assert_eq!(pg.psql("SELECT count(*) FROM ledger_events"), "0");

    // 2. killed between its commit and its XACK: a Redis user that may do
    // everything but acknowledge takes over the first writer's batch, commits
    // it, and can never acknowledge it
    redis.cli(&[
        "ACL", "SETUSER", "noack", "on", ">pw", "~*", "&*", "+@all", "-xack",
    ]);
    let noack_url = format!("redis://noack:pw@127.0.0.1:{}", redis.port);
    let mut victim = spawn_writer(&noack_url, &pg, "victim-2");
    assert!(
        eventually(WAIT, || async {
            pg.psql("SELECT count(*) FROM ledger_events") != "0"
                && pending_of(&redis, stream, "victim-1") == 0
        })
        .await,
        "the second writer claims the first one's batch and commits it"
    );
    let _ = victim.kill();
    let _ = victim.wait();
    let committed: i64 = pg
        .psql("SELECT count(*) FROM ledger_events")
        .parse()
        .expect("count");
    let unacked = pending_of(&redis, stream, "victim-2");
    assert!(unacked > 0, "nothing acknowledged");
    assert!(
        committed >= unacked,
        "its pending entries are on the ledger already"
    );

    // 3. a healthy writer claims everything left pending and acknowledges it
    let port = support::free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut healthy = spawn_writer_with(&redis.url(), &pg, "healthy", &["--listen", &listen]);
    assert!(
        eventually(WAIT, || async {
            pg.psql("SELECT count(*) FROM ledger_events") == expected.to_string()
                && redis.cli(&["XPENDING", stream, "ledger"]).starts_with('0')
        })
        .await,
        "every pending entry claimed and acknowledged: {}",
        redis.cli(&["XPENDING", stream, "ledger"])
    );
    // the standalone writer serves its own metrics
    assert!(
        eventually(WAIT, || async {
            let page = http_get(port, "/metrics");
            page.contains("flashgate_ledger_lag_events 0")
                && !page.contains("flashgate_ledger_events_written_total 0")
        })
        .await,
        "{}",
        http_get(port, "/metrics")
    );
    let _ = healthy.kill();
    let _ = healthy.wait();

    let rows = ledger_rows(&pg, "kill").await;
    assert_each_reservation_once(&rows);
    assert_eq!(count_kind(&rows, "held"), 150);
    assert_eq!(count_kind(&rows, "confirmed"), 100);
    assert_eq!(
        pg.psql("SELECT count(*) FROM ledger_events"),
        expected.to_string()
    );
    assert_clean(&reconcile(&app, &pg, false).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn induced_drift_is_found_fixed_audited_and_then_clean() {
    let redis = RedisServer::start();
    let pg = PostgresServer::start();
    let app = spawn_app(config(&redis, None)).await;
    app.preload("drift", 12, 2).await;
    let mut rids = Vec::new();
    for i in 0..9 {
        let a = app
            .reserve(&format!("d-{i}"), "drift", 1, &format!("u{i}"))
            .await;
        assert_eq!(a.status, StatusCode::CREATED);
        rids.push(rid_of(&a));
    }
    for rid in &rids[..4] {
        app.action(rid, "confirm").await;
    }
    for rid in &rids[4..6] {
        app.action(rid, "release").await;
    }
    // everything so far is on the ledger
    assert_clean(&reconcile(&app, &pg, false).await);

    // (a) Redis loses a hold the ledger has (a crash before fsync): record,
    // work-list entry and counters roll back as if the reserve never ran
    let lost = rids[6].clone();
    let lost_shard: u16 = lost
        .split('.')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("shard");
    let tag = format!("fg:{{drift#{lost_shard}}}");
    let (lost_at, _) = support::record_at(&redis, &lost).expect("its record");
    redis.cli(&["DEL", &lost_at]);
    redis.cli(&["ZREM", &format!("{tag}:holds"), &lost]);
    redis.cli(&["HINCRBY", &format!("{tag}:books"), "held", "-1"]);
    redis.cli(&["INCRBY", &format!("{tag}:stock"), "1"]);

    // (b) an outbox entry lost before the ledger got it: a confirm happens,
    // and its entry vanishes from the stream
    let paid = rids[7].clone();
    app.action(&rids[8], "release").await;
    assert_eq!(app.action(&paid, "confirm").await.status, StatusCode::OK);
    let paid_shard: u16 = paid
        .split('.')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("shard");
    let stream = format!("fg:{{drift#{paid_shard}}}:events");
    let entries = redis.cli(&["XRANGE", &stream, "-", "+"]);
    let lines: Vec<&str> = entries.lines().collect();
    // redis-cli prints an entry as: id, type, <type>, rid, <rid>, …
    let at = (4..lines.len())
        .find(|&i| lines[i] == paid && lines[i - 2] == "confirmed")
        .expect("the confirm's entry");
    assert_eq!(redis.cli(&["XDEL", &stream, lines[at - 4]]), "1");

    // (c) a counter changed behind flashgate's back
    redis.cli(&["INCRBY", "fg:{drift#0}:stock", "5"]);

    // (d) Redis loses a confirm the ledger has: the record is back to held
    let unpaid = rids[0].clone();
    let unpaid_shard: u16 = unpaid
        .split('.')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("shard");
    let tag = format!("fg:{{drift#{unpaid_shard}}}");
    let (_, stored) = support::record_at(&redis, &unpaid).expect("its record");
    let back = stored
        .strip_prefix("confirmed|")
        .expect("a confirmed record");
    support::set_record(&redis, &unpaid, &format!("held|{back}"));
    redis.cli(&["HINCRBY", &format!("{tag}:books"), "sold", "-1"]);
    redis.cli(&["HINCRBY", &format!("{tag}:books"), "held", "1"]);
    redis.cli(&["ZADD", &format!("{tag}:holds"), "99999999999999", &unpaid]);

    let report = reconcile(&app, &pg, false).await;
    let table = flashgate::reconcile::table(&report);
    assert!(report.drift(), "{table}");
    assert_eq!(report.exit_code(), 1);
    let sku = &report.skus[0];
    let findings: Vec<(&str, &str)> = sku
        .per_shard
        .iter()
        .flat_map(|s| s.records.iter().map(|r| (r.rid.as_str(), r.finding)))
        .collect();
    assert!(findings.contains(&(lost.as_str(), "hold_lost")), "{table}");
    assert!(
        findings.contains(&(paid.as_str(), "ledger_missing")),
        "{table}"
    );
    assert!(
        findings.contains(&(unpaid.as_str(), "record_behind")),
        "{table}"
    );
    let s0 = &sku.per_shard[0];
    assert!(
        s0.counters
            .iter()
            .any(|c| c.field == "available" && c.redis == c.ledger + 5),
        "{table}"
    );
    assert!(s0.redis_unaccounted != 0, "{table}");
    assert!(table.contains("DRIFT"), "{table}");

    // the command agrees, and exits 1
    let out = flashgate(&[
        "reconcile",
        "--redis-url",
        &redis.url(),
        "--postgres-url",
        &pg.url(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Redis shows a hold outstanding: the sale looks live, --fix refuses
    let refused = reconcile(&app, &pg, true).await;
    let table = flashgate::reconcile::table(&refused);
    assert_eq!(refused.exit_code(), 1, "{table}");
    assert!(
        table.contains("refused: the sale looks live (1 holds outstanding)"),
        "{table}"
    );
    assert_eq!(pg.psql("SELECT count(*) FROM reconcile_audit"), "0");

    let fixed = reconciler(&app, &pg)
        .run(&Options {
            force: true,
            ..options(true)
        })
        .await
        .expect("reconcile --fix --force runs");
    let table = flashgate::reconcile::table(&fixed);
    for s in &fixed.skus[0].per_shard {
        if s.drift() {
            assert_eq!(s.fix.as_deref(), Some("fixed"), "{table}");
        }
    }
    assert_eq!(fixed.exit_code(), 0, "{table}");
    let audit = pg.psql("SELECT what || ':' || rid FROM reconcile_audit ORDER BY id");
    assert!(audit.contains(&format!("hold_lost:{lost}")), "{audit}");
    assert!(audit.contains(&format!("ledger_missing:{paid}")), "{audit}");
    assert!(audit.lines().any(|l| l == "available:"), "{audit}");
    assert!(
        audit.contains(&format!("record_behind:{unpaid}")),
        "{audit}"
    );
    assert_eq!(
        app.get(&format!("/v1/reservations/{unpaid}")).await.body["status"],
        "confirmed"
    );
    assert_eq!(
        pg.psql("SELECT count(DISTINCT run_id) || ' ' || bool_and(forced) FROM reconcile_audit"),
        "1 true"
    );
    assert_eq!(
        pg.psql(&format!(
            "SELECT count(*) FROM ledger_events WHERE source = 'reconcile' AND rid = '{paid}' AND kind = 'confirmed'"
        )),
        "1"
    );

    assert_clean(&reconcile(&app, &pg, false).await);
    let st = app.assert_books("drift").await;
    // 5 confirmed, the lost hold's unit back on sale, the +5 gone
    assert_eq!((st.sold, st.held, st.available), (5, 0, 7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sale_goes_on_while_postgres_is_down_and_the_ledger_catches_up() {
    let redis = RedisServer::start();
    let mut pg = PostgresServer::start();
    let app = spawn_app(config(&redis, Some(&pg))).await;
    app.preload("down", 50, 2).await;
    assert!(
        eventually(WAIT, || async {
            count_kind(&ledger_rows(&pg, "down").await, "preload") == 2
        })
        .await
    );

    pg.stop();
    let mut rids = Vec::new();
    for i in 0..30 {
        let a = app
            .reserve(&format!("p-{i}"), "down", 1, &format!("u{i}"))
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
        rids.push(rid_of(&a));
    }
    for rid in &rids[..20] {
        assert_eq!(app.action(rid, "confirm").await.status, StatusCode::OK);
    }
    assert!(
        eventually(WAIT, || async { app.state.metrics.ledger_lag.get() >= 50 }).await,
        "the lag shows the unwritten events: {}",
        app.state.metrics.ledger_lag.get()
    );

    // reconcile needs Postgres, and says so
    let out = flashgate(&[
        "reconcile",
        "--redis-url",
        &redis.url(),
        "--postgres-url",
        &pg.url(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("postgres unavailable at {}", pg.url())),
        "{err}"
    );

    pg.restart();
    assert!(
        eventually(WAIT, || async {
            let rows = ledger_rows(&pg, "down").await;
            count_kind(&rows, "held") == 30 && count_kind(&rows, "confirmed") == 20
        })
        .await,
        "the ledger catches up once Postgres is back"
    );
    assert_each_reservation_once(&ledger_rows(&pg, "down").await);
    assert!(eventually(WAIT, || async { app.state.metrics.ledger_lag.get() == 0 }).await);
    for rid in &rids[20..] {
        app.action(rid, "release").await;
    }
    assert_clean(&reconcile(&app, &pg, false).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_ledger_and_reconcile_work_on_a_redis_cluster() {
    let cluster = support::cluster::Cluster::start(3, 0);
    let pg = PostgresServer::start();
    let c = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        redis_url: cluster.url(),
        redis_timeout_ms: 3000,
        sweep_interval_ms: 50,
        drain_seconds: 1,
        insecure_no_auth: true,
        user_rate_per_second: 0,
        postgres_url: pg.url(),
        ledger_interval_ms: 20,
        ledger_claim_idle_ms: 300,
        ..Config::default()
    };
    let app = Arc::new(spawn_app(c).await);
    app.preload("spread", 40, 4).await;
    let answers = join_all((0..50).map(|i| {
        let app = app.clone();
        async move {
            app.reserve(&format!("c-{i}"), "spread", 1, &format!("u{i}"))
                .await
        }
    }))
    .await;
    let held: Vec<String> = answers
        .iter()
        .filter(|a| a.status == StatusCode::CREATED)
        .map(rid_of)
        .collect();
    assert_eq!(held.len(), 40);
    for rid in &held[..30] {
        assert_eq!(app.action(rid, "confirm").await.status, StatusCode::OK);
    }
    for rid in &held[30..] {
        assert_eq!(app.action(rid, "release").await.status, StatusCode::OK);
    }
    assert!(
        eventually(WAIT, || async {
            let rows = ledger_rows(&pg, "spread").await;
            count_kind(&rows, "held") == 40
                && count_kind(&rows, "confirmed") == 30
                && count_kind(&rows, "released") == 10
        })
        .await,
        "the ledger drains every shard, wherever its slot lives"
    );
    assert_each_reservation_once(&ledger_rows(&pg, "spread").await);
    assert_clean(&reconcile(&app, &pg, false).await);

    // drift on one shard, repaired by fix.lua on the master that owns it
    let meta = app
        .state
        .inventory
        .meta(&Sku::parse("spread").unwrap())
        .await
        .expect("meta")
        .expect("loaded");
    let port = cluster.layout()[0].port;
    support::cluster::cli(port, &["-c", "INCRBY", &meta.keys(2).stock(), "3"]);
    let report = reconcile(&app, &pg, false).await;
    assert!(report.drift());
    let fixed = reconcile(&app, &pg, true).await;
    assert_eq!(
        fixed.exit_code(),
        0,
        "{}",
        flashgate::reconcile::table(&fixed)
    );
    assert_clean(&reconcile(&app, &pg, false).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sku_redis_lost_entirely_is_restored_from_the_ledger() {
    let mut redis = RedisServer::start(); // no persistence: a restart loses everything
    let pg = PostgresServer::start();
    let app = spawn_app(config(&redis, Some(&pg))).await;
    app.preload("gone", 20, 2).await;
    let mut rids = Vec::new();
    for i in 0..12 {
        let a = app
            .reserve(&format!("g-{i}"), "gone", 1, &format!("u{i}"))
            .await;
        assert_eq!(a.status, StatusCode::CREATED);
        rids.push(rid_of(&a));
    }
    for rid in &rids[..8] {
        assert_eq!(app.action(rid, "confirm").await.status, StatusCode::OK);
    }
    for rid in &rids[8..10] {
        assert_eq!(app.action(rid, "release").await.status, StatusCode::OK);
    }
    assert!(
        eventually(WAIT, || async {
            let rows = ledger_rows(&pg, "gone").await;
            count_kind(&rows, "held") == 12
                && count_kind(&rows, "confirmed") == 8
                && count_kind(&rows, "released") == 2
        })
        .await
    );

    redis.restart();
    pg.psql("INSERT INTO skus (sku, stock, shards, max_per_user) VALUES ('gone', 20, 2, 3)");
    let report = reconcile(&app, &pg, false).await;
    let table = flashgate::reconcile::table(&report);
    assert!(report.skus[0].missing_in_redis, "{table}");
    assert_eq!(report.exit_code(), 1);

    let fixed = reconcile(&app, &pg, true).await;
    let table = flashgate::reconcile::table(&fixed);
    assert!(fixed.skus[0].restored, "{table}");
    assert_eq!(fixed.exit_code(), 0, "{table}");
    let lost: usize = fixed.skus[0]
        .per_shard
        .iter()
        .map(|s| {
            s.records
                .iter()
                .filter(|r| r.finding == "hold_lost")
                .count()
        })
        .sum();
    assert_eq!(
        lost, 2,
        "the two open holds could never be confirmed: {table}"
    );
    assert_clean(&reconcile(&app, &pg, false).await);
    let st = app.assert_books("gone").await;
    assert_eq!((st.sold, st.held, st.available, st.initial), (8, 0, 12, 20));
    assert_eq!(
        redis.cli(&["HGET", "fg:{gone}:meta", "max_per_user"]),
        "3",
        "the cap comes back from the catalogue"
    );

    // the sale goes on, and so does the ledger (its consumer group is new)
    let a = app.reserve("after", "gone", 1, "late").await;
    assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
    assert!(
        eventually(WAIT, || async {
            count_kind(&ledger_rows(&pg, "gone").await, "held") == 13
        })
        .await,
        "the writer recreates the group and goes on"
    );
}
