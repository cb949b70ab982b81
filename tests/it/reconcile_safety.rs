//! Reconcile must never make the books worse (issue 25): a paid sale whose
//! outbox entries were lost stays sold, a reload after a Redis wipe counts no
//! unit twice, transfers balance per SKU, one poison stream entry stalls
//! nothing, and concurrent fixes are serialised and audited. Every test runs
//! against a real redis-server and a real PostgreSQL.

use crate::support;

use std::collections::HashMap;
use std::process::Output;

use flashgate::config::Config;
use flashgate::reconcile::Options;
use hyper::StatusCode;
use support::ledger::{config, flashgate, ledger_rows, options, reconcile, reconciler, WAIT};
use support::postgres::PostgresServer;
use support::{RedisServer, TestApp};

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

// ------------------------------------------------------------------ item 2

fn preload_cli(redis: &RedisServer, pg: &PostgresServer, extra: &[&str]) -> Output {
    let mut args = vec![
        "preload",
        "--from-postgres",
        "--redis-url",
        &*Box::leak(redis.url().into_boxed_str()),
        "--postgres-url",
        &*Box::leak(pg.url().into_boxed_str()),
    ];
    args.extend_from_slice(extra);
    flashgate(&args)
}

/// The sum of the ledger's preload rows of one SKU.
fn ledger_preloaded(pg: &PostgresServer, sku: &str) -> String {
    pg.psql(&format!(
        "SELECT coalesce(sum(qty), 0) FROM ledger_events WHERE sku = '{sku}' AND kind = 'preload'"
    ))
}

/// A SKU sold one unit, then Redis lost everything (a restart without
/// persistence). Returns the app (its writer drains into `pg`).
async fn sold_one_then_wiped(redis: &mut RedisServer, pg: &PostgresServer, sku: &str) -> TestApp {
    let app = spawn(config(redis, Some(pg))).await;
    let out = flashgate(&["migrate", "--postgres-url", &pg.url()]);
    assert!(out.status.success(), "{}", text(&out));
    pg.psql(&format!(
        "INSERT INTO skus (sku, stock, shards) VALUES ('{sku}', 4, 1)"
    ));
    let out = preload_cli(redis, pg, &["--sku", sku]);
    assert!(out.status.success(), "{}", text(&out));
    let a = app.reserve("k-1", sku, 1, "buyer").await;
    assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
    let rid = rid_of(&a);
    assert_eq!(app.action(&rid, "confirm").await.status, StatusCode::OK);
    assert!(
        support::eventually(WAIT, || async {
            ledger_rows(pg, sku)
                .await
                .contains_key(&("confirmed".to_string(), rid.clone()))
        })
        .await,
        "the sale reaches the ledger"
    );
    redis.restart();
    app
}

/// `preload --from-postgres --if-absent` after a wipe is a reload after loss:
/// it restores the SKU from the ledger (1 sold, 3 on sale) instead of loading
/// the catalogue's 4 units again and emitting them a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reload_after_a_redis_wipe_counts_the_stock_once() {
    let mut redis = RedisServer::start();
    let pg = PostgresServer::start();
    let app = sold_one_then_wiped(&mut redis, &pg, "wiped").await;

    let out = preload_cli(&redis, &pg, &["--if-absent", "--sku", "wiped"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("reload after loss"),
        "the preload says it is a reload: {}",
        text(&out)
    );
    let st = app.assert_books("wiped").await;
    assert_eq!(
        (st.available, st.sold, st.initial),
        (3, 1, 4),
        "the sold unit is not back on sale: {st:?}"
    );
    // the writer may still be draining: wait until the stream is on the ledger
    let report = reconcile(&app, &pg, true).await;
    assert_eq!(
        report.exit_code(),
        0,
        "{}",
        flashgate::reconcile::table(&report)
    );
    assert_eq!(ledger_preloaded(&pg, "wiped"), "4", "stock counted once");
    let st = app.assert_books("wiped").await;
    assert_eq!((st.available, st.sold, st.initial), (3, 1, 4), "{st:?}");
}

/// A SKU loaded again by hand after a wipe (`preload` without the ledger):
/// a second first load of the shard replaces the first on the ledger's
/// books, so `--fix` sets 1 sold + 3 on sale, never 7.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_first_load_replaces_the_first_and_fix_invents_no_units() {
    let mut redis = RedisServer::start();
    let pg = PostgresServer::start();
    let app = sold_one_then_wiped(&mut redis, &pg, "again").await;
    app.preload("again", 4, 1).await; // the catalogue's 4, again
    let fixed = reconciler(&app, &pg)
        .run(&Options {
            force: true,
            ..options(true)
        })
        .await
        .expect("reconcile runs");
    let table = flashgate::reconcile::table(&fixed);
    assert_eq!(fixed.exit_code(), 0, "{table}");
    let st = app.assert_books("again").await;
    assert_eq!(
        (st.available, st.sold, st.initial),
        (3, 1, 4),
        "no unit invented: {table}"
    );
    let again = reconcile(&app, &pg, false).await;
    assert!(!again.drift(), "{}", flashgate::reconcile::table(&again));
}

/// A ledger whose preloads exceed the catalogue's stock (an older flashgate
/// counted a reload twice) is not trusted to raise stock: `--fix` refuses and
/// says why, exit 1, Redis untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fix_refuses_to_raise_stock_above_the_catalogue() {
    let mut redis = RedisServer::start();
    let pg = PostgresServer::start();
    let app = sold_one_then_wiped(&mut redis, &pg, "dup").await;
    let out = preload_cli(&redis, &pg, &["--if-absent", "--sku", "dup"]);
    assert!(out.status.success(), "{}", text(&out));
    // as an old reload would have left it: a second full preload row
    pg.psql(
        "INSERT INTO ledger_events (stream, entry_id, sku, shard, kind, rid, qty, event_at)
         VALUES ('fg:{dup#0}:events', '1-1', 'dup', 0, 'preload', '', 4, now())",
    );
    let before = app.assert_books("dup").await;
    let report = reconciler(&app, &pg)
        .run(&Options {
            force: true,
            ..options(true)
        })
        .await
        .expect("reconcile runs");
    let table = flashgate::reconcile::table(&report);
    assert_eq!(report.exit_code(), 1, "{table}");
    assert!(table.contains("catalogue"), "{table}");
    let after = app.assert_books("dup").await;
    assert_eq!(
        (after.available, after.sold, after.initial),
        (before.available, before.sold, before.initial),
        "{table}"
    );
}

// ------------------------------------------------------------------ item 3

/// The entries of a stream as (id, fields), parsed from redis-cli's output.
fn stream_entries(redis: &RedisServer, stream: &str) -> Vec<(String, HashMap<String, String>)> {
    let raw = redis.cli(&["XRANGE", stream, "-", "+"]);
    let lines: Vec<&str> = raw.lines().collect();
    let is_id = |l: &str| {
        l.split_once('-')
            .is_some_and(|(a, b)| a.parse::<u64>().is_ok() && b.parse::<u64>().is_ok())
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if is_id(lines[i]) {
            let id = lines[i].to_string();
            let mut f = HashMap::new();
            i += 1;
            while i + 1 < lines.len() && !is_id(lines[i]) {
                f.insert(lines[i].to_string(), lines[i + 1].to_string());
                i += 2;
            }
            out.push((id, f));
        } else {
            i += 1;
        }
    }
    out
}

/// 4 units over 2 shards (2 + 2); a hold of 3 makes one shard pull a unit
/// from the other, then is released. Returns (donor, recipient, xid).
async fn one_transfer(app: &TestApp, redis: &RedisServer, sku: &str) -> (u16, u16, String) {
    app.preload(sku, 4, 2).await;
    let a = app.reserve("big", sku, 3, "buyer").await;
    assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
    assert_eq!(
        app.action(&rid_of(&a), "release").await.status,
        StatusCode::OK
    );
    for donor in 0..2u16 {
        let stream = format!("fg:{{{sku}#{donor}}}:events");
        if let Some((_, f)) = stream_entries(redis, &stream)
            .into_iter()
            .find(|(_, f)| f.get("type").map(String::as_str) == Some("xfer_out"))
        {
            let to: u16 = f["user"].parse().expect("recipient");
            assert_eq!(f["qty"], "1", "{f:?}");
            return (donor, to, f["rid"].clone());
        }
    }
    panic!("no transfer happened");
}

fn entry_of(redis: &RedisServer, stream: &str, kind: &str, xid: &str) -> String {
    stream_entries(redis, stream)
        .into_iter()
        .find(|(_, f)| {
            f.get("type").map(String::as_str) == Some(kind)
                && f.get("rid").map(String::as_str) == Some(xid)
        })
        .map(|(id, _)| id)
        .unwrap_or_else(|| panic!("no {kind} entry for {xid} in {stream}"))
}

async fn total(app: &TestApp, sku: &str) -> (i64, i64) {
    let st = app
        .state
        .inventory
        .status(&flashgate::domain::Sku::parse(sku).expect("sku"))
        .await
        .expect("status");
    (st.available + st.held + st.sold, st.drift())
}

/// A failover loses a transfer's second half and its event: each shard's
/// books still add up, so only the per-SKU balance sees the unit vanish.
/// `status` reports it as drift; reconcile reports it and `--fix` puts the
/// unit back on the recipient.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_transfer_in_is_found_per_sku_and_the_unit_comes_back() {
    let redis = RedisServer::start();
    let pg = PostgresServer::start();
    let app = spawn(config(&redis, None)).await;
    let (_donor, to, xid) = one_transfer(&app, &redis, "xlost").await;
    let tag = format!("fg:{{xlost#{to}}}");
    let stream = format!("{tag}:events");
    let id = entry_of(&redis, &stream, "xfer_in", &xid);
    redis.cli(&["XDEL", &stream, &id]);
    redis.cli(&["DECRBY", &format!("{tag}:stock"), "1"]);
    redis.cli(&["HINCRBY", &format!("{tag}:books"), "xin", "-1"]);
    redis.cli(&["ZREM", &format!("{tag}:xin"), &xid]);
    assert_eq!(
        total(&app, "xlost").await,
        (3, 1),
        "status shows the unit missing"
    );

    let report = reconcile(&app, &pg, false).await;
    let table = flashgate::reconcile::table(&report);
    assert_eq!(report.exit_code(), 1, "{table}");
    assert!(table.contains(&xid), "{table}");
    let fixed = reconcile(&app, &pg, true).await;
    assert_eq!(
        fixed.exit_code(),
        0,
        "{}",
        flashgate::reconcile::table(&fixed)
    );
    assert_eq!(total(&app, "xlost").await, (4, 0));
    let again = reconcile(&app, &pg, false).await;
    assert!(!again.drift(), "{}", flashgate::reconcile::table(&again));
}

/// A failover loses a transfer's first half and its event: the donor has
/// its unit again while the recipient has it too — a unit created. `--fix`
/// takes it back from the donor.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_transfer_out_is_found_per_sku_and_no_unit_is_created() {
    let redis = RedisServer::start();
    let pg = PostgresServer::start();
    let app = spawn(config(&redis, None)).await;
    let (donor, _to, xid) = one_transfer(&app, &redis, "xmade").await;
    let tag = format!("fg:{{xmade#{donor}}}");
    let stream = format!("{tag}:events");
    let id = entry_of(&redis, &stream, "xfer_out", &xid);
    redis.cli(&["XDEL", &stream, &id]);
    redis.cli(&["INCRBY", &format!("{tag}:stock"), "1"]);
    redis.cli(&["HINCRBY", &format!("{tag}:books"), "xout", "-1"]);
    assert_eq!(
        total(&app, "xmade").await,
        (5, -1),
        "status shows the unit created"
    );

    let report = reconcile(&app, &pg, false).await;
    let table = flashgate::reconcile::table(&report);
    assert_eq!(report.exit_code(), 1, "{table}");
    assert!(table.contains(&xid), "{table}");
    let fixed = reconcile(&app, &pg, true).await;
    assert_eq!(
        fixed.exit_code(),
        0,
        "{}",
        flashgate::reconcile::table(&fixed)
    );
    assert_eq!(total(&app, "xmade").await, (4, 0));
    let again = reconcile(&app, &pg, false).await;
    assert!(!again.drift(), "{}", flashgate::reconcile::table(&again));
}

// ------------------------------------------------------------------ item 4

/// An outbox entry PostgreSQL refuses (a NUL byte, which no text column
/// takes) is parked in the dead-letter table with a metric, and no stream —
/// its own included — stalls behind it; reconcile of another SKU runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_entry_is_parked_and_stalls_no_stream() {
    use fred::interfaces::ClientLike;
    use fred::types::{ClusterHash, CustomCommand, Value};
    let redis = RedisServer::start();
    let pg = PostgresServer::start();
    let app = spawn(config(&redis, Some(&pg))).await;
    let skus = ["pa", "pb", "pc", "pd", "pe"];
    for s in skus {
        app.preload(s, 10, 1).await;
    }
    // the poison, on the first SKU's stream, ahead of every sale
    let _: Value = app
        .state
        .inventory
        .pool()
        .next()
        .custom(
            CustomCommand::new_static("XADD", ClusterHash::FirstKey, false),
            vec![
                "fg:{pa#0}:events".to_string(),
                "*".into(),
                "type".into(),
                "held".into(),
                "rid".into(),
                "bad\0rid".into(),
                "qty".into(),
                "1".into(),
                "user".into(),
                "u".into(),
            ],
        )
        .await
        .expect("xadd");
    let mut rids = Vec::new();
    for (i, s) in skus.iter().enumerate() {
        let a = app.reserve(&format!("k{i}"), s, 1, "buyer").await;
        assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
        rids.push(rid_of(&a));
    }
    for (s, rid) in skus.iter().zip(&rids) {
        assert!(
            support::eventually(WAIT, || async {
                ledger_rows(&pg, s)
                    .await
                    .contains_key(&("held".to_string(), rid.clone()))
            })
            .await,
            "{s}'s hold reaches the ledger"
        );
    }
    assert_eq!(
        pg.psql("SELECT count(*) || ' ' || min(stream) FROM ledger_dead_letters"),
        "1 fg:{pa#0}:events"
    );
    assert!(
        app.state
            .metrics
            .render()
            .contains("flashgate_ledger_dead_letters_total 1"),
        "the dead letter is counted"
    );
    assert!(
        support::eventually(WAIT, || async { app.state.metrics.ledger_lag.get() == 0 }).await,
        "nothing stays pending"
    );
    let out = flashgate(&[
        "reconcile",
        "--sku",
        "pb",
        "--redis-url",
        &redis.url(),
        "--postgres-url",
        &pg.url(),
    ]);
    assert_ne!(out.status.code(), Some(2), "{}", text(&out));
}

/// One SKU's stream is broken in Redis (not a stream any more: every command
/// on it fails). The writer goes on with every other stream, and reconcile of
/// another SKU runs (it used to exit 2 on the writer's first failing stream).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broken_stream_stalls_neither_the_others_nor_reconcile() {
    let redis = RedisServer::start();
    let pg = PostgresServer::start();
    let app = spawn(config(&redis, Some(&pg))).await;
    let skus = ["sa", "sb", "sc", "sd", "se", "sf", "sg", "sh"];
    app.preload("broken", 10, 1).await;
    for s in skus {
        app.preload(s, 10, 1).await;
    }
    redis.cli(&["DEL", "fg:{broken#0}:events"]);
    redis.cli(&["SET", "fg:{broken#0}:events", "not a stream"]);
    let mut rids = Vec::new();
    for (i, s) in skus.iter().enumerate() {
        let a = app.reserve(&format!("k{i}"), s, 1, "buyer").await;
        assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
        rids.push(rid_of(&a));
    }
    for (s, rid) in skus.iter().zip(&rids) {
        assert!(
            support::eventually(WAIT, || async {
                ledger_rows(&pg, s)
                    .await
                    .contains_key(&("held".to_string(), rid.clone()))
            })
            .await,
            "{s}'s hold reaches the ledger"
        );
    }
    let out = flashgate(&[
        "reconcile",
        "--sku",
        "sb",
        "--wait-seconds",
        "10",
        "--redis-url",
        &redis.url(),
        "--postgres-url",
        &pg.url(),
    ]);
    assert_ne!(out.status.code(), Some(2), "{}", text(&out));
}

// ------------------------------------------------------------------ item 6

/// Drift on a quiet SKU: 5 units added to shard 0's stock behind flashgate's back.
async fn drifted(app: &TestApp, redis: &RedisServer, pg: &PostgresServer, sku: &str) {
    app.preload(sku, 10, 2).await;
    // the preload events on the ledger first
    assert!(!reconcile(app, pg, false).await.drift());
    redis.cli(&["INCRBY", &format!("fg:{{{sku}#0}}:stock"), "5"]);
}

/// While another `reconcile --fix` holds the SKU's lock (a PostgreSQL
/// advisory lock), a second one refuses to fix it and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_concurrent_fix_refuses_while_the_first_holds_the_lock() {
    let redis = RedisServer::start();
    let pg = PostgresServer::start();
    let app = spawn(config(&redis, None)).await;
    drifted(&app, &redis, &pg, "locked").await;
    let holder = pg.client().await;
    let got: bool = holder
        .query_one(flashgate::reconcile::FIX_LOCK_SQL, &[&"locked"])
        .await
        .expect("lock")
        .get(0);
    assert!(got);
    let report = reconcile(&app, &pg, true).await;
    let table = flashgate::reconcile::table(&report);
    assert_eq!(report.exit_code(), 1, "{table}");
    assert!(table.contains("another reconcile --fix"), "{table}");
    assert_eq!(redis.cli(&["GET", "fg:{locked#0}:stock"]), "10", "{table}");
    drop(holder); // the session ends, and its lock with it
    let fixed = reconcile(&app, &pg, true).await;
    assert_eq!(
        fixed.exit_code(),
        0,
        "{}",
        flashgate::reconcile::table(&fixed)
    );
    assert_eq!(redis.cli(&["GET", "fg:{locked#0}:stock"]), "5");
}

/// The audit is written (as `intended`) before Redis is corrected: when
/// the audit cannot be written, Redis is not touched; when the fix is cut
/// off after Redis (here: marking it done fails), the intended rows stay,
/// and the next run finishes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_redis_correction_goes_unaudited() {
    let redis = RedisServer::start();
    let pg = PostgresServer::start();
    let app = spawn(config(&redis, None)).await;
    drifted(&app, &redis, &pg, "audited").await;
    pg.psql(
        "CREATE FUNCTION no_audit() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'audit refused (test)'; END $$;
         CREATE TRIGGER no_insert BEFORE INSERT ON reconcile_audit
           FOR EACH ROW EXECUTE FUNCTION no_audit();",
    );
    let report = reconcile(&app, &pg, true).await;
    let table = flashgate::reconcile::table(&report);
    assert!(table.contains("failed"), "{table}");
    assert_eq!(
        redis.cli(&["GET", "fg:{audited#0}:stock"]),
        "10",
        "no correction without its audit: {table}"
    );

    // now the fix is cut off after Redis, before it is marked done
    pg.psql(
        "DROP TRIGGER no_insert ON reconcile_audit;
         CREATE TRIGGER no_done BEFORE UPDATE ON reconcile_audit
           FOR EACH ROW EXECUTE FUNCTION no_audit();",
    );
    let report = reconcile(&app, &pg, true).await;
    let table = flashgate::reconcile::table(&report);
    assert!(table.contains("failed"), "{table}");
    assert_eq!(redis.cli(&["GET", "fg:{audited#0}:stock"]), "5", "{table}");
    assert_eq!(
        pg.psql("SELECT what || ' ' || redis_before || '->' || redis_after || ' ' || state FROM reconcile_audit"),
        "available 10->5 intended"
    );
    pg.psql("DROP TRIGGER no_done ON reconcile_audit");
    let report = reconcile(&app, &pg, true).await;
    assert_eq!(
        report.exit_code(),
        0,
        "{}",
        flashgate::reconcile::table(&report)
    );
    assert_eq!(
        pg.psql("SELECT count(*) FROM reconcile_audit WHERE state = 'intended'"),
        "0",
        "the next run finishes the interrupted fix"
    );
}

// ------------------------------------------------------------------ item 5

/// The ledger holds two ends for one reservation (a failover: the old
/// primary's `expired` reached the ledger first, the surviving primary's
/// `confirmed`, answered 200 to the buyer, later). A confirm is a sale
/// whatever else the ledger shows, in whichever order the rows were written
/// or the events happened: `--fix` keeps it sold.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_confirmed_sale_counts_whatever_the_order_of_its_ends_on_the_ledger() {
    let redis = RedisServer::start();
    let pg = PostgresServer::start();
    let app = spawn(config(&redis, None)).await;
    let out = flashgate(&["migrate", "--postgres-url", &pg.url()]);
    assert!(out.status.success(), "{}", text(&out));
    app.preload("twoends", 4, 1).await;
    let a = app.reserve("k-1", "twoends", 1, "buyer").await;
    assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
    let rid = rid_of(&a);
    assert_eq!(app.action(&rid, "confirm").await.status, StatusCode::OK);
    // written before the writer gets the held and confirmed entries, and an
    // hour earlier in event time: first by both orders
    pg.psql(&format!(
        "INSERT INTO ledger_events (stream, entry_id, sku, shard, kind, rid, qty, user_id, event_at)
         VALUES ('fg:{{twoends#0}}:events', '1-0', 'twoends', 0, 'expired', '{rid}', 1, 'buyer',
                 now() - interval '1 hour')"
    ));
    let fixed = reconciler(&app, &pg)
        .run(&Options {
            force: true,
            ..options(true)
        })
        .await
        .expect("reconcile runs");
    let table = flashgate::reconcile::table(&fixed);
    assert_eq!(fixed.exit_code(), 0, "{table}");
    let r = app.get(&format!("/v1/reservations/{rid}")).await;
    assert_eq!(r.body["status"], "confirmed", "{table}");
    let st = app.assert_books("twoends").await;
    assert_eq!((st.available, st.sold), (3, 1), "{table}");
}

// ------------------------------------------------------------------ item 7

fn reconcile_cli(redis: &RedisServer, pg: &PostgresServer, extra: &[&str]) -> Output {
    let (r, p) = (redis.url(), pg.url());
    let mut args = vec!["reconcile", "--redis-url", &r, "--postgres-url", &p];
    args.extend_from_slice(extra);
    flashgate(&args)
}

/// A fix that fails exits 2 (reconcile could not do its job), not 1, and
/// the JSON report says so in a versioned, machine-readable verdict.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_fix_exits_2_and_the_json_report_has_a_version_and_a_verdict() {
    let redis = RedisServer::start();
    let pg = PostgresServer::start();
    let app = spawn(config(&redis, None)).await;
    drifted(&app, &redis, &pg, "failing").await;
    let out = reconcile_cli(&redis, &pg, &["--format", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(j["version"], 2, "{j}");
    assert_eq!(j["verdict"], "drift", "{j}");
    pg.psql(
        "CREATE FUNCTION no_audit() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'audit refused (test)'; END $$;
         CREATE TRIGGER no_insert BEFORE INSERT ON reconcile_audit
           FOR EACH ROW EXECUTE FUNCTION no_audit();",
    );
    let out = reconcile_cli(&redis, &pg, &["--fix", "--force", "--format", "json"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(j["verdict"], "failed", "{j}");
    pg.psql("DROP TRIGGER no_insert ON reconcile_audit");
    let out = reconcile_cli(&redis, &pg, &["--fix", "--force", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(j["verdict"], "repaired", "{j}");
}

/// One SKU reconcile cannot read (its books key is broken) does not hide
/// the others: the report covers every SKU, names the error, exits 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_error_on_one_sku_still_reports_every_other() {
    let redis = RedisServer::start();
    let pg = PostgresServer::start();
    let app = spawn(config(&redis, None)).await;
    for s in ["e1", "e2", "e3"] {
        app.preload(s, 4, 1).await;
    }
    redis.cli(&["DEL", "fg:{e2#0}:books"]);
    redis.cli(&["SET", "fg:{e2#0}:books", "not a hash"]);
    let out = reconcile_cli(&redis, &pg, &["--format", "json"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let skus = j["skus"].as_array().expect("skus");
    assert_eq!(skus.len(), 3, "{j}");
    let e2 = skus.iter().find(|s| s["sku"] == "e2").expect("e2");
    assert!(
        e2["error"]
            .as_str()
            .is_some_and(|e| e.contains("WRONGTYPE")),
        "{j}"
    );
    assert_eq!(j["verdict"], "failed", "{j}");
}

/// A SKU cleaned out of Redis on purpose is retired: later runs do not
/// report it missing, and `--fix` does not bring its old sales back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retired_sku_is_neither_missing_nor_restored() {
    let mut redis = RedisServer::start();
    let pg = PostgresServer::start();
    let _app = sold_one_then_wiped(&mut redis, &pg, "old").await;
    let out = reconcile_cli(&redis, &pg, &[]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "missing in Redis: {}",
        text(&out)
    );
    let out = reconcile_cli(&redis, &pg, &["--retire", "--sku", "old"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = reconcile_cli(&redis, &pg, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = reconcile_cli(&redis, &pg, &["--fix"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(redis.cli(&["EXISTS", "fg:{old}:meta"]), "0", "not restored");
    let out = preload_cli(&redis, &pg, &["--sku", "old"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("retired"), "{}", text(&out));
    assert_eq!(redis.cli(&["EXISTS", "fg:{old}:meta"]), "0", "not loaded");
}

/// A confirm retried after a failover appends a second `confirmed` entry
/// for the same reservation: the ledger keeps one row, and goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retried_confirm_leaves_one_confirmed_row() {
    let redis = RedisServer::start();
    let pg = PostgresServer::start();
    let app = spawn(config(&redis, Some(&pg))).await;
    app.preload("retry", 4, 1).await;
    let a = app.reserve("k-1", "retry", 1, "buyer").await;
    let rid = rid_of(&a);
    assert_eq!(app.action(&rid, "confirm").await.status, StatusCode::OK);
    redis.cli(&[
        "XADD",
        "fg:{retry#0}:events",
        "*",
        "type",
        "confirmed",
        "rid",
        &rid,
        "qty",
        "1",
        "user",
        "buyer",
        "ts",
        "1",
    ]);
    let b = app.reserve("k-2", "retry", 1, "other").await;
    let rid2 = rid_of(&b);
    assert!(
        support::eventually(WAIT, || async {
            ledger_rows(&pg, "retry")
                .await
                .contains_key(&("held".to_string(), rid2.clone()))
        })
        .await,
        "the writer goes on"
    );
    assert_eq!(
        pg.psql(&format!(
            "SELECT count(*) FROM ledger_events WHERE kind = 'confirmed' AND rid = '{rid}'"
        )),
        "1"
    );
}

/// A hold Redis still shows as held but the ledger has released: `--fix`
/// settles the record and gives the buyer's purchase cap back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hold_closed_by_fix_gives_the_purchase_cap_back() {
    let redis = RedisServer::start();
    let pg = PostgresServer::start();
    let app = spawn(config(&redis, None)).await;
    let sku = flashgate::domain::Sku::parse("capped").expect("sku");
    app.preload_capped(sku.as_str(), 4, 1, 1).await;
    let a = app.reserve("k-1", "capped", 1, "buyer").await;
    assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
    let rid = rid_of(&a);
    assert_eq!(
        app.reserve("k-2", "capped", 1, "buyer").await.code(),
        "purchase_limit"
    );
    assert!(!reconcile(&app, &pg, false).await.drift());
    // the release reached the ledger, Redis lost it (the record is back to held)
    pg.psql(&format!(
        "INSERT INTO ledger_events (stream, entry_id, sku, shard, kind, rid, qty, user_id, event_at)
         VALUES ('fg:{{capped#0}}:events', '9999999999999-0', 'capped', 0, 'released', '{rid}', 1,
                 'buyer', now())"
    ));
    let fixed = reconciler(&app, &pg)
        .run(&Options {
            force: true,
            ..options(true)
        })
        .await
        .expect("reconcile runs");
    let table = flashgate::reconcile::table(&fixed);
    assert_eq!(fixed.exit_code(), 0, "{table}");
    assert_eq!(
        app.get(&format!("/v1/reservations/{rid}")).await.body["status"],
        "released",
        "{table}"
    );
    let again = app.reserve("k-3", "capped", 1, "buyer").await;
    assert_eq!(
        again.status,
        StatusCode::CREATED,
        "the cap is given back: {:?} {table}",
        again.body
    );
}

// ------------------------------------------------------------------ together

/// The "done when": lost outbox entries (a sale's and a transfer's
/// second half), a poison entry, then a Redis wipe and reload. After
/// `--fix`, and again after the reload, every confirmed reservation is sold
/// and the SKU has exactly the catalogue's units.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_lost_entries_a_poison_entry_and_a_wipe_every_sale_stands_and_no_unit_is_invented() {
    let mut redis = RedisServer::start();
    let pg = PostgresServer::start();
    let app = spawn(config(&redis, None)).await; // entries wait in Redis
    let out = flashgate(&["migrate", "--postgres-url", &pg.url()]);
    assert!(out.status.success(), "{}", text(&out));
    pg.psql("INSERT INTO skus (sku, stock, shards) VALUES ('mix', 8, 2)");
    let out = preload_cli(&redis, &pg, &["--sku", "mix"]);
    assert!(out.status.success(), "{}", text(&out));
    // the poison: a NUL byte, which no PostgreSQL text column takes
    let _ = redis.cli(&[
        "EVAL",
        "redis.call('XADD', KEYS[1], '*', 'type', 'held', 'rid', 'bad\\0', 'qty', '1')",
        "1",
        "fg:{mix#0}:events",
    ]);
    // 5 units in one hold: one shard has 4, so a unit is transferred
    let big = app.reserve("k-big", "mix", 5, "a").await;
    assert_eq!(big.status, StatusCode::CREATED, "{:?}", big.body);
    let big = rid_of(&big);
    assert_eq!(app.action(&big, "confirm").await.status, StatusCode::OK);
    let one = app.reserve("k-one", "mix", 1, "b").await;
    let one = rid_of(&one);
    assert_eq!(app.action(&one, "confirm").await.status, StatusCode::OK);
    let gone = app.reserve("k-gone", "mix", 1, "c").await;
    let gone = rid_of(&gone);
    assert_eq!(app.action(&gone, "release").await.status, StatusCode::OK);
    // lost before the ledger got them: the single sale's entries, and the
    // transfer's second half (Redis applied it)
    let shard_of = |rid: &str| rid.split('.').nth(1).unwrap_or("0").to_string();
    let stream = format!("fg:{{mix#{}}}:events", shard_of(&one));
    for id in entries_naming(&redis, &stream, &one) {
        redis.cli(&["XDEL", &stream, &id]);
    }
    for s in 0..2 {
        let stream = format!("fg:{{mix#{s}}}:events");
        for (id, f) in stream_entries(&redis, &stream) {
            if f.get("type").map(String::as_str) == Some("xfer_in") {
                redis.cli(&["XDEL", &stream, &id]);
            }
        }
    }

    let fixed = reconciler(&app, &pg)
        .run(&Options {
            force: true,
            ..options(true)
        })
        .await
        .expect("reconcile runs");
    let table = flashgate::reconcile::table(&fixed);
    assert_eq!(fixed.exit_code(), 0, "{table}");
    for rid in [&big, &one] {
        assert_eq!(
            app.get(&format!("/v1/reservations/{rid}")).await.body["status"],
            "confirmed",
            "{table}"
        );
    }
    let st = app.assert_books("mix").await;
    assert_eq!((st.sold, st.held, st.available), (6, 0, 2), "{table}");
    assert_eq!(st.drift(), 0, "{st:?}");
    assert!(!reconcile(&app, &pg, false).await.drift());
    assert_eq!(
        pg.psql("SELECT count(*) FROM ledger_dead_letters"),
        "1",
        "the poison is parked"
    );

    // Redis loses everything; the catalogue is loaded again
    redis.restart();
    let out = preload_cli(&redis, &pg, &["--if-absent", "--sku", "mix"]);
    assert!(out.status.success(), "{}", text(&out));
    let st = app.assert_books("mix").await;
    assert_eq!(
        (st.sold, st.held, st.available, st.initial),
        (6, 0, 2, 8),
        "{}",
        text(&out)
    );
    let again = reconcile(&app, &pg, false).await;
    assert!(!again.drift(), "{}", flashgate::reconcile::table(&again));
}
