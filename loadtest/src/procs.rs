//! The processes a `--spawn` run owns: a throw-away redis-server (or, with
//! `--cluster-masters N`, an N-master Redis Cluster) and a flashgate, each on
//! free 127.0.0.1 ports, killed when dropped (also on an early return or
//! error). And `flashgate preload`, which the run calls itself.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use flashgate_testkit::cluster::{Cluster, ClusterOptions};
use flashgate_testkit::{RedisOptions, RedisServer};
use tokio::process::{Child, Command};

pub use flashgate_testkit::postgres::PostgresServer as Postgres;

/// A port the OS just had free on 127.0.0.1.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(flashgate_testkit::free_port())
}

/// A process of the run, stopped on drop (also on an early return or
/// error): a child of ours (flashgate), or a testkit server.
pub struct Owned {
    pub name: &'static str,
    child: Option<Child>,
    /// A testkit server's process id (its handle lives in `_server`, or, for
    /// a cluster node, with the first node's).
    server_pid: Option<u32>,
    _server: Option<Box<dyn Send>>,
}

impl Owned {
    fn server(name: &'static str, pid: Option<u32>, server: Option<Box<dyn Send>>) -> Owned {
        Owned {
            name,
            child: None,
            server_pid: pid,
            _server: server,
        }
    }

    pub async fn stop(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// Fail if the process (a child of ours) has already exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(c) = self.child.as_mut() {
            if let Some(status) = c.try_wait()? {
                bail!("{} exited early: {status}", self.name);
            }
        }
        Ok(())
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
    }
}

fn log_file(dir: &Path, name: &str) -> anyhow::Result<std::fs::File> {
    std::fs::File::create(dir.join(name)).with_context(|| format!("creating {name}"))
}

/// redis-server with no persistence (flashgate-testkit), its stdout in
/// `log_dir/redis.log`; ready when PING works.
pub async fn spawn_redis(bin: &Path, log_dir: &Path) -> anyhow::Result<(Owned, String)> {
    let opts = RedisOptions {
        bin: bin.to_path_buf(),
        log: Some(log_dir.join("redis.log")),
        ..RedisOptions::default()
    };
    let redis = tokio::task::spawn_blocking(move || RedisServer::try_start(opts)).await??;
    let url = redis.url();
    Ok((
        Owned::server("redis-server", redis.pid(), Some(Box::new(redis))),
        url,
    ))
}

/// Run a command to its end within `limit`; its stdout + stderr, or an error
/// naming the command when it fails, runs over or cannot start.
pub async fn run_tool(
    cmd: &mut Command,
    bin: &Path,
    args: &[String],
    limit: Duration,
) -> anyhow::Result<String> {
    let out = tokio::time::timeout(limit, cmd.stdin(Stdio::null()).kill_on_drop(true).output())
        .await
        .with_context(|| format!("{} {} ran over {limit:?}", bin.display(), args.join(" ")))?
        .with_context(|| format!("running {}", bin.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!(
            "{} {} failed ({}): {text}",
            bin.display(),
            args.join(" "),
            out.status
        );
    }
    Ok(text)
}

/// A Redis Cluster of `masters` masters and no replicas (flashgate-testkit):
/// nodes on free ports, each node's stdout in `log_dir/redis-<port>.log`, a
/// node timeout long enough (15 s) that a loaded 2-core machine does not
/// fail a node over by accident; ready when every node reports the cluster
/// ok with all slots and nodes. Returns the nodes (all stopped when the
/// first is dropped) and the cluster's URL.
pub async fn spawn_cluster(
    server_bin: &Path,
    cli_bin: &Path,
    masters: usize,
    log_dir: &Path,
) -> anyhow::Result<(Vec<Owned>, String)> {
    let opts = ClusterOptions {
        node_timeout_ms: 15_000,
        server_bin: server_bin.to_path_buf(),
        cli_bin: cli_bin.to_path_buf(),
        log_dir: Some(log_dir.to_path_buf()),
        ..ClusterOptions::new(masters, 0)
    };
    let cluster = tokio::task::spawn_blocking(move || Cluster::try_start(&opts))
        .await?
        .context("starting the Redis Cluster")?;
    let url = cluster.url();
    let pids: Vec<Option<u32>> = cluster.nodes.iter().map(|n| n.pid()).collect();
    let mut cluster: Option<Box<dyn Send>> = Some(Box::new(cluster));
    let nodes = pids
        .into_iter()
        .map(|pid| Owned::server("redis-server (cluster node)", pid, cluster.take()))
        .collect();
    Ok((nodes, url))
}

/// `flashgate serve` on a free port; ready when `/healthz` answers 200.
pub async fn spawn_flashgate(
    bin: &Path,
    redis_url: &str,
    hold_seconds: u64,
    log_dir: &Path,
    api_key: &str,
) -> anyhow::Result<(Owned, String)> {
    spawn_flashgate_under(&[], &[], bin, redis_url, hold_seconds, log_dir, api_key).await
}

/// [`spawn_flashgate`] run by `wrapper` (e.g. `valgrind --tool=callgrind`),
/// if not empty: `wrapper… bin serve …`, with `env` added to its
/// environment. A wrapped flashgate gets two minutes to become healthy.
pub async fn spawn_flashgate_under(
    wrapper: &[String],
    env: &[(&str, &str)],
    bin: &Path,
    redis_url: &str,
    hold_seconds: u64,
    log_dir: &Path,
    api_key: &str,
) -> anyhow::Result<(Owned, String)> {
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let mut command = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    let child = command
        .args([
            "serve",
            "--listen",
            &listen,
            "--redis-url",
            redis_url,
            "--hold-seconds",
            &hold_seconds.to_string(),
        ])
        .env("FLASHGATE_API_KEYS", api_key)
        // the run measures the service's capacity: the shipped protective
        // buckets (docs/rate-limits.md) would measure themselves instead
        .env("FLASHGATE_CLIENT_RATE_PER_SECOND", "0")
        .env("FLASHGATE_GLOBAL_RATE_PER_SECOND", "0")
        .envs(env.iter().copied())
        .stdout(log_file(log_dir, "flashgate.log")?)
        .stderr(log_file(log_dir, "flashgate.err.log")?)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!(
                "starting {} (build it with `cargo build --release -p flashgate`)",
                bin.display()
            )
        })?;
    let mut owned = Owned {
        name: "flashgate",
        child: Some(child),
        server_pid: None,
        _server: None,
    };
    let base = format!("http://{listen}");
    let probe = crate::http::Api::new(&base, 1, Duration::from_millis(500), Instant::now());
    let within = Duration::from_secs(if wrapper.is_empty() { 20 } else { 120 });
    let deadline = Instant::now() + within;
    loop {
        owned
            .check_alive()
            .context("see flashgate.err.log in the run directory")?;
        if probe.healthz().await.status == 200 {
            return Ok((owned, base));
        }
        if Instant::now() >= deadline {
            bail!("flashgate on {listen} not healthy within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `flashgate preload --sku S --stock N --shards K --force`, with the Redis
/// URL in `FLASHGATE_REDIS_URL` (the service's config layer for it).
pub async fn preload(
    bin: &PathBuf,
    redis_url: &str,
    sku: &str,
    stock: u64,
    shards: u32,
    max_per_user: Option<u32>,
) -> anyhow::Result<String> {
    let mut args = vec![
        "preload".to_string(),
        "--sku".into(),
        sku.into(),
        "--stock".into(),
        stock.to_string(),
        "--shards".into(),
        shards.to_string(),
        "--force".into(),
    ];
    if let Some(m) = max_per_user {
        args.extend(["--max-per-user".to_string(), m.to_string()]);
    }
    run_tool(
        Command::new(bin)
            .args(&args)
            .env("FLASHGATE_REDIS_URL", redis_url),
        bin,
        &args,
        Duration::from_secs(30),
    )
    .await
}

impl Owned {
    /// The child's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id).or(self.server_pid)
    }
}

/// CPU seconds (user + system, all threads) a process has used so far, from
/// `/proc/<pid>/stat`; `None` for "self" means this process. None when the
/// process is gone or /proc is not there.
pub fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    parse_cpu_seconds(&std::fs::read_to_string(path).ok()?)
}

/// utime + stime of a `/proc/<pid>/stat` line, in seconds (the kernel's clock
/// tick is 100 Hz on every Linux this runs on).
pub fn parse_cpu_seconds(stat: &str) -> Option<f64> {
    // the command name (field 2) may hold spaces: count fields after its ')'
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is the state (field 3): utime is field 14, stime field 15
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// A throw-away PostgreSQL (flashgate-testkit): `initdb` into a temp dir,
/// started on a free 127.0.0.1 port, as the `postgres` user when we are
/// root; stopped on drop. Blocking (initdb takes a second or two), so it
/// runs on the blocking pool.
pub async fn spawn_postgres() -> anyhow::Result<Postgres> {
    tokio::task::spawn_blocking(Postgres::try_start).await?
}

#[cfg(test)]
mod cpu_tests {
    use super::*;

    #[test]
    fn cpu_seconds_come_from_utime_and_stime() {
        let line = "1234 (tokio rt) S 1 1234 1234 0 -1 4194560 1 0 0 0 250 50 0 0 20 0 3 0 1 1 1";
        assert_eq!(parse_cpu_seconds(line), Some(3.0));
        assert_eq!(parse_cpu_seconds("garbage"), None);
        assert!(
            cpu_seconds(None).is_some(),
            "this process has a /proc entry"
        );
    }
}
