//! The processes a run owns and breaks: redis-server (AOF `everysec`, its
//! files kept across restarts), PostgreSQL, the flashgate instances and the
//! ledger writer. Each keeps its command line so the nemesis can SIGKILL it
//! and start it again on the same port and files. Children are killed on
//! drop; PostgreSQL is stopped `-m immediate`.
//!
//! The recipes are loadtest/src/procs.rs's and tests/support's (free ports
//! on 127.0.0.1, readiness polled with a deadline, PostgreSQL run as the
//! `postgres` user under root); what is new here is restarting in place.

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

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn pg_bin_dir() -> anyhow::Result<PathBuf> {
    if let Ok(out) = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
    {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if p.join("initdb").exists() {
            return Ok(p);
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let major = e.file_name().to_str()?.parse().ok()?;
                    Some((major, e.path().join("bin")))
                })
                .filter(|(_, p)| p.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
        .pop()
        .map(|(_, p)| p)
        .context("PostgreSQL server binaries not found (install the postgresql package)")
}

/// A PostgreSQL of the run's own that the nemesis can stop (`-m immediate`,
/// like a crash) and start again on the same port and data.
pub struct Postgres {
    pub port: u16,
    bin: PathBuf,
    dir: tempfile::TempDir,
    root: bool,
    running: bool,
}

impl Postgres {
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn as_server_user(&self, program: &str) -> std::process::Command {
        let program = self.bin.join(program);
        if self.root {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            std::process::Command::new(program)
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// initdb into a temp dir, then start on a free port.
    pub async fn init() -> anyhow::Result<Postgres> {
        tokio::task::spawn_blocking(|| {
            let root = is_root();
            let dir = tempfile::tempdir().context("temp dir for postgres")?;
            if root {
                let ok = std::process::Command::new("chown")
                    .args(["-R", "postgres:"])
                    .arg(dir.path())
                    .status()
                    .is_ok_and(|s| s.success());
                anyhow::ensure!(ok, "cannot hand the temp dir to the postgres user");
            }
            let mut pg = Postgres {
                port: 0,
                bin: pg_bin_dir()?,
                dir,
                root,
                running: false,
            };
            let out = pg
                .as_server_user("initdb")
                .arg("-D")
                .arg(pg.data())
                .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C"])
                .arg("--no-sync")
                .stdout(Stdio::null())
                .output()
                .context("running initdb")?;
            anyhow::ensure!(
                out.status.success(),
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            for _ in 0..5 {
                pg.port = free_port()?;
                if pg.start_blocking() {
                    return Ok(pg);
                }
            }
            bail!("could not start postgres")
        })
        .await?
    }

    fn start_blocking(&mut self) -> bool {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off",
            self.port,
            self.dir.path().display()
        );
        self.running = self
            .as_server_user("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.path().join("postgres.log"))
            .args(["-o", &opts, "-w", "-t", "30", "start"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        self.running
    }

    fn stop_blocking(&mut self) {
        if self.running {
            let _ = self
                .as_server_user("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .args(["-m", "immediate", "-w", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            self.running = false;
        }
    }

    /// Stop at once, like a crash.
    pub async fn stop(&mut self) {
        tokio::task::block_in_place(|| self.stop_blocking());
    }

    /// Start again on the same port and data (retried for up to 30 s).
    pub async fn start(&mut self) -> anyhow::Result<()> {
        if self.running {
            return Ok(());
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if tokio::task::block_in_place(|| self.start_blocking()) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("postgres did not restart on port {}", self.port);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop_blocking();
    }
}
