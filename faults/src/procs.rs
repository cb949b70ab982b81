//! The processes a run owns and breaks: redis-server (AOF `everysec`, its
//! files kept across restarts), PostgreSQL, the flashgate instances and the
//! ledger writer. Each keeps its command line so the nemesis can SIGKILL it
//! and start it again on the same port and files. Children are killed on
//! drop; PostgreSQL is stopped `-m immediate`.
//!
//! PostgreSQL is flashgate-testkit's server; redis-server and the cluster
//! nodes are [`Proc`]s here because the faults restart them in place on the
//! same port and files (testkit's own follow the tests' needs).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// A restartable child: program, arguments, environment, log file.
pub struct Proc {
    pub name: String,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    pub fn new(
        name: &str,
        program: &Path,
        args: Vec<String>,
        env: Vec<(String, String)>,
        log: PathBuf,
    ) -> Proc {
        Proc {
            name: name.to_owned(),
            program: program.to_owned(),
            args,
            env,
            log,
            child: None,
        }
    }

    /// Start (again); the log is appended to across restarts.
    pub fn start(&mut self) -> anyhow::Result<()> {
        self.start_with(&[])
    }

    /// [`Proc::start`] with `extra` over its environment, this once.
    pub fn start_with(&mut self, extra: &[(String, String)]) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let err = log.try_clone()?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(extra.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} ({})", self.name, self.program.display()))?;
        self.child = Some(child);
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// SIGKILL and reap.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// Send a signal by name (STOP, CONT) with kill(1).
    pub async fn signal(&self, sig: &str) -> anyhow::Result<()> {
        let pid = self.pid().context("not running")?;
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .await?
            .success();
        anyhow::ensure!(ok, "kill -{sig} {pid} failed");
        Ok(())
    }

    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(c) = self.child.as_mut() {
            if let Some(status) = c.try_wait()? {
                bail!(
                    "{} exited: {status} (see {})",
                    self.name,
                    self.log.display()
                );
            }
        }
        Ok(())
    }

    /// Whether it is started and has not exited.
    pub fn running(&mut self) -> bool {
        self.child.is_some() && self.check_alive().is_ok()
    }
}

/// Run a command to its end within `limit`: (exit code, stdout, stderr).
pub async fn run_tool(
    program: &Path,
    args: &[String],
    env: &[(String, String)],
    limit: Duration,
) -> anyhow::Result<(i32, String, String)> {
    let out = tokio::time::timeout(
        limit,
        Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .with_context(|| {
        format!(
            "{} {} ran over {limit:?}",
            program.display(),
            args.join(" ")
        )
    })?
    .with_context(|| format!("running {}", program.display()))?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// redis-server with AOF `everysec` (RDB snapshots off), its files in `dir`,
/// so a restart after SIGKILL loads what the AOF kept.
pub fn redis(dir: &Path, port: u16, log: PathBuf) -> Proc {
    let args = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--maxmemory-policy",
        "noeviction",
        "--dir",
        &dir.display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    Proc::new(
        "redis-server",
        Path::new("redis-server"),
        args,
        Vec::new(),
        log,
    )
}

/// Poll `redis-cli PING` until PONG (loading the AOF answers LOADING).
pub async fn wait_redis(port: u16, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    let args = ["-p".to_string(), port.to_string(), "PING".into()];
    loop {
        if let Ok((0, out, _)) =
            run_tool(Path::new("redis-cli"), &args, &[], Duration::from_secs(2)).await
        {
            if out.trim() == "PONG" {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            bail!("redis on port {port} not ready within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The run's PostgreSQL: testkit's server (initdb into a temp dir, as the
/// `postgres` user under root, `fsync=off`), which the nemesis stops
/// (`-m immediate`, like a crash) and starts again on the same port and data.
pub struct Postgres {
    server: flashgate_testkit::postgres::PostgresServer,
    /// Stopped by the nemesis and not started since.
    down: bool,
}

impl Postgres {
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// initdb and start on a free port (on the blocking pool).
    pub async fn init() -> anyhow::Result<Postgres> {
        let server =
            tokio::task::spawn_blocking(flashgate_testkit::postgres::PostgresServer::try_start)
                .await??;
        Ok(Postgres {
            server,
            down: false,
        })
    }

    /// Stop at once, like a crash.
    pub async fn stop(&mut self) {
        tokio::task::block_in_place(|| self.server.stop());
        self.down = true;
    }

    /// Start again on the same port and data (a no-op while it runs).
    pub async fn start(&mut self) -> anyhow::Result<()> {
        if !self.down {
            return Ok(());
        }
        let server = &mut self.server;
        // testkit's restart stops first (a no-op when stopped) and asserts
        // it came back within 30 s: a panic here is a run that broke
        tokio::task::block_in_place(|| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| server.restart()))
        })
        .map_err(|_| anyhow::anyhow!("postgres did not restart"))?;
        self.down = false;
        Ok(())
    }
}
