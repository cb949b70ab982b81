//! Throw-away server processes for flashgate's integration tests
//! (`tests/it/`) and the load test (`loadtest/`): a `redis-server`
//! ([`RedisServer`]), a Redis Cluster ([`cluster::Cluster`]) and a PostgreSQL
//! ([`postgres::PostgresServer`], run as the `postgres` user when we are
//! root). Each listens on free 127.0.0.1 ports, keeps its files in a temp dir
//! and is stopped on `Drop`. The binaries are found on `PATH` (or in
//! PostgreSQL's bin dir) unless the options name them; `scripts/deps.sh`
//! installs them.
//!
//! The `start…` constructors panic with a readable message (what a test
//! wants); the `try_…` ones return an error (what the load test wants).

pub mod cluster;
pub mod postgres;
mod redis;

pub use redis::{RedisOptions, RedisServer};

use std::net::TcpListener;

/// A port the OS just had free on 127.0.0.1 (not reserved: a caller that
/// fails to bind it picks another).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

/// `n` distinct free ports (two probes in a row can return the same one).
pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let mut ports: Vec<u16> = Vec::with_capacity(n);
    for _ in 0..n * 20 {
        if ports.len() == n {
            break;
        }
        let p = free_port();
        if !ports.contains(&p) {
            ports.push(p);
        }
    }
    anyhow::ensure!(ports.len() == n, "could not find {n} free ports");
    Ok(ports)
}

/// Where a child's stdout goes: a log file (appended to, so a restart keeps
/// the first run's lines) or nowhere.
fn log_stdio(log: Option<&std::path::Path>) -> anyhow::Result<std::process::Stdio> {
    use anyhow::Context;
    match log {
        Some(p) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map(Into::into)
            .with_context(|| format!("opening {}", p.display())),
        None => Ok(std::process::Stdio::null()),
    }
}
