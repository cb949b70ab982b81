//! The processes a `--spawn` run owns: a throw-away redis-server and a
//! flashgate, each on a free 127.0.0.1 port, killed when dropped (also on an
//! early return or error). And `flashgate preload`, which the run calls itself.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

/// A port the OS just had free on 127.0.0.1.
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// A child killed (and reaped) on drop.
pub struct Owned {
    pub name: &'static str,
    child: Option<Child>,
}

impl Owned {
    pub async fn stop(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// Fail if the process has already exited.
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

/// redis-server with no persistence, its files in `dir`; ready when PING works.
pub async fn spawn_redis(
    bin: &Path,
    dir: &Path,
    log_dir: &Path,
) -> anyhow::Result<(Owned, String)> {
    let port = free_port()?;
    let child = Command::new(bin)
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(dir)
        .stdout(log_file(log_dir, "redis.log")?)
        .stderr(Stdio::inherit())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut owned = Owned {
        name: "redis-server",
        child: Some(child),
    };
    let url = format!("redis://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        owned.check_alive()?;
        if let Ok(c) = crate::redis::connect(&url).await {
            let pong: Result<String, _> = fred::interfaces::ClientLike::ping(&c, None).await;
            if pong.is_ok() {
                return Ok((owned, url));
            }
        }
        if Instant::now() >= deadline {
            bail!("redis-server on port {port} not ready within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `flashgate serve` on a free port; ready when `/healthz` answers 200.
pub async fn spawn_flashgate(
    bin: &Path,
    redis_url: &str,
    hold_seconds: u64,
    log_dir: &Path,
    api_key: &str,
) -> anyhow::Result<(Owned, String)> {
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let child = Command::new(bin)
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
    };
    let base = format!("http://{listen}");
    let probe = crate::http::Api::new(&base, 1, Duration::from_millis(500), Instant::now());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        owned
            .check_alive()
            .context("see flashgate.err.log in the run directory")?;
        if probe.healthz().await.status == 200 {
            return Ok((owned, base));
        }
        if Instant::now() >= deadline {
            bail!("flashgate on {listen} not healthy within 20 s");
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
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        Command::new(bin)
            .args(&args)
            .env("FLASHGATE_REDIS_URL", redis_url)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("flashgate preload ran over 30 s")?
    .with_context(|| format!("running {} preload", bin.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!(
            "flashgate {} failed ({}): {text}",
            args.join(" "),
            out.status
        );
    }
    Ok(text)
}

impl Owned {
    /// The child's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
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
