//! The naive SQL baseline: every reservation is one autocommit
//! `UPDATE ... SET available = available - 1 WHERE available >= 1` on one hot
//! row, which serialises all buyers on that row's lock (and a WAL flush per
//! commit). This is what flashgate is meant to beat.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use tokio_postgres::NoTls;

use crate::stats::{latency_of, new_histogram, Latency};

pub const TABLE: &str = "loadtest_inventory";

/// The PostgreSQL connection string must point at 127.0.0.1.
pub fn check_loopback(conn: &str) -> anyhow::Result<()> {
    let cfg: tokio_postgres::Config = conn.parse().context("bad --pg connection string")?;
    for h in cfg.get_hosts() {
        match h {
            tokio_postgres::config::Host::Tcp(h) if h == "127.0.0.1" || h == "localhost" => {}
            other => bail!("refusing PostgreSQL at {other:?}: only 127.0.0.1 is allowed"),
        }
    }
    if cfg.get_hosts().is_empty() {
        bail!("--pg must name host=127.0.0.1");
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize)]
pub struct SqlBaseline {
    pub clients: usize,
    pub duration_s: f64,
    pub updates: u64,
    /// Updates that took a unit (1 row updated).
    pub tps: f64,
    pub latency: Latency,
    pub errors: u64,
    pub synchronous_commit: String,
}

async fn connect(conn: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) =
        tokio::time::timeout(Duration::from_secs(5), tokio_postgres::connect(conn, NoTls))
            .await
            .context("PostgreSQL connect timed out")??;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

pub async fn baseline(
    conn: &str,
    clients: usize,
    duration: Duration,
    max_updates: u64,
) -> anyhow::Result<SqlBaseline> {
    check_loopback(conn)?;
    let admin = connect(conn).await?;
    let sku = "hot";
    admin
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {TABLE} (sku text PRIMARY KEY, available bigint NOT NULL)"
        ))
        .await?;
    // More stock than the run can take, so every update is a successful reserve.
    admin
        .execute(
            &format!("INSERT INTO {TABLE} (sku, available) VALUES ($1, $2) ON CONFLICT (sku) DO UPDATE SET available = $2"),
            &[&sku, &(max_updates as i64 + 1)],
        )
        .await?;
    let synchronous_commit: String = admin
        .query_one("SHOW synchronous_commit", &[])
        .await?
        .get(0);

    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(connect(conn).await?);
    }
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for c in conns {
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let stmt = c
                .prepare(&format!("UPDATE {TABLE} SET available = available - 1 WHERE sku = $1 AND available >= 1"))
                .await?;
            let mut h = new_histogram();
            let (mut ok, mut errors) = (0u64, 0u64);
            loop {
                if next.fetch_add(1, Ordering::Relaxed) >= max_updates || Instant::now() >= deadline {
                    break;
                }
                let t = Instant::now();
                match c.execute(&stmt, &[&sku]).await {
                    Ok(1) => ok += 1,
                    Ok(_) | Err(_) => errors += 1,
                }
                h.saturating_record(t.elapsed().as_micros().max(1) as u64);
            }
            Ok::<_, anyhow::Error>((h, ok, errors))
        }));
    }
    let mut hist = new_histogram();
    let (mut ok, mut errors) = (0, 0);
    for t in tasks {
        let (h, o, e) = t.await??;
        hist.add(&h).expect("same histogram bounds");
        ok += o;
        errors += e;
    }
    let duration_s = start.elapsed().as_secs_f64();
    admin
        .execute(&format!("DELETE FROM {TABLE} WHERE sku = $1"), &[&sku])
        .await?;
    Ok(SqlBaseline {
        clients,
        duration_s,
        updates: ok,
        tps: ok as f64 / duration_s,
        latency: latency_of(&hist),
        errors,
        synchronous_commit,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_loopback_postgres() {
        assert!(
            super::check_loopback("host=127.0.0.1 port=5432 user=postgres dbname=test").is_ok()
        );
        assert!(super::check_loopback("host=db.example.com user=postgres").is_err());
        assert!(super::check_loopback("user=postgres").is_err());
    }
}
