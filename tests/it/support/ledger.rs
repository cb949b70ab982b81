//! What the ledger and reconcile tests share: the service's config with a
//! fast ledger writer, a reconciler built as `flashgate reconcile` builds it,
//! and the `flashgate` binary itself.

use std::collections::HashMap;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use flashgate::config::Config;
use flashgate::db::Db;
use flashgate::ledger::LedgerSettings;
use flashgate::metrics::Metrics;
use flashgate::reconcile::{Options, Reconciler, Report};

use super::postgres::PostgresServer;
use super::{test_config, RedisServer, TestApp};

/// How long a reconcile waits for the ledger to catch up.
pub const WAIT: Duration = Duration::from_secs(60);

/// The test defaults with a ledger writer that polls every 20 ms.
pub fn config(redis: &RedisServer, pg: Option<&PostgresServer>) -> Config {
    let mut c = test_config(redis);
    if let Some(pg) = pg {
        c.postgres_url = pg.url();
    }
    c.ledger_interval_ms = 20;
    c.ledger_claim_idle_ms = 300;
    c.ledger_batch = 50;
    c
}

/// A reconciler of our own, as `flashgate reconcile` builds it.
pub fn reconciler(app: &TestApp, pg: &PostgresServer) -> Reconciler {
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

pub fn options(fix: bool) -> Options {
    Options {
        sku: None,
        fix,
        force: false,
        wait: WAIT,
        // the tests' sales are over once their last request answered
        quiet_ms: 0,
    }
}

pub async fn reconcile(app: &TestApp, pg: &PostgresServer, fix: bool) -> Report {
    reconciler(app, pg)
        .run(&options(fix))
        .await
        .expect("reconcile runs")
}

/// The `flashgate` binary with `args`, its output captured.
pub fn flashgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flashgate"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("flashgate runs")
}

/// Ledger rows of one SKU: (kind, rid) → count.
pub async fn ledger_rows(pg: &PostgresServer, sku: &str) -> HashMap<(String, String), i64> {
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
