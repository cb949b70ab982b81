//! A single `redis-server` of our own.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::{free_port, log_stdio};

/// How to start a [`RedisServer`].
#[derive(Clone, Debug)]
pub struct RedisOptions {
    /// The `redis-server` binary (default: the one on `PATH`).
    pub bin: PathBuf,
    /// `redis-cli` for [`RedisServer::cli`] (default: the one on `PATH`).
    pub cli_bin: PathBuf,
    /// An fsync-always AOF, so that a killed and restarted server comes back
    /// with its data (and an empty script cache); else memory only
    /// (`--save '' --appendonly no`).
    pub persistent: bool,
    /// More `redis-server` arguments (e.g. `--maxmemory-policy allkeys-lru`).
    pub args: Vec<String>,
    /// The server's stdout goes here (appended); else nowhere.
    pub log: Option<PathBuf>,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            bin: "redis-server".into(),
            cli_bin: "redis-cli".into(),
            persistent: false,
            args: Vec::new(),
            log: None,
        }
    }
}

/// A `redis-server` on a free port, its files in a temp dir; killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: TempDir,
    opts: RedisOptions,
}

impl RedisServer {
    /// Memory only (`--save '' --appendonly no`).
    pub fn start() -> RedisServer {
        Self::start_opts(RedisOptions::default())
    }

    /// With an fsync-always AOF, so that a killed and restarted server comes
    /// back with its data (and an empty script cache).
    pub fn start_persistent() -> RedisServer {
        Self::start_opts(RedisOptions {
            persistent: true,
            ..RedisOptions::default()
        })
    }

    /// Memory only, with more `redis-server` arguments (e.g.
    /// `["--maxmemory-policy", "allkeys-lru"]`).
    pub fn start_with_args(args: &[&str]) -> RedisServer {
        Self::start_opts(RedisOptions {
            args: args.iter().map(|a| a.to_string()).collect(),
            ..RedisOptions::default()
        })
    }

    /// [`RedisServer::try_start`], panicking when it cannot.
    pub fn start_opts(opts: RedisOptions) -> RedisServer {
        Self::try_start(opts).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Start on a free port (five tries: a port probed free can be taken by
    /// the time the server binds it); ready when it answers PING.
    pub fn try_start(opts: RedisOptions) -> anyhow::Result<RedisServer> {
        for _ in 0..5 {
            let mut s = RedisServer {
                port: free_port(),
                child: None,
                dir: tempfile::tempdir()?,
                opts: opts.clone(),
            };
            if s.spawn()? {
                return Ok(s);
            }
        }
        anyhow::bail!(
            "could not start {} (is it installed? `make test` installs it)",
            opts.bin.display()
        )
    }

    /// Ok(false) when the server exited or did not answer in time.
    fn spawn(&mut self) -> anyhow::Result<bool> {
        let mut cmd = Command::new(&self.opts.bin);
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--save")
            .arg("")
            .arg("--daemonize")
            .arg("no")
            .stdin(Stdio::null())
            .stdout(log_stdio(self.opts.log.as_deref())?)
            .stderr(Stdio::null());
        if self.opts.persistent {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        cmd.args(&self.opts.args);
        let Ok(child) = cmd.spawn() else {
            return Ok(false);
        };
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping() {
                return Ok(true);
            }
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Ok(false); // exited: port taken?
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        Ok(false)
    }

    pub fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        if s.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 16];
        matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Fail if the server has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => Ok(()),
            Some(Ok(Some(status))) => anyhow::bail!("redis-server exited early: {status}"),
            Some(Err(e)) => Err(e.into()),
            None => anyhow::bail!("redis-server is not running"),
        }
    }

    /// SIGKILL: no goodbye, like a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same port and directory.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.spawn().unwrap_or(false) {
            assert!(Instant::now() < deadline, "redis-server did not restart");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGSTOP: the server hangs with its connections open (commands sent to
    /// it are neither answered nor refused) until [`RedisServer::resume`].
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`RedisServer::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("redis-server running").id();
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig} {pid} failed");
    }

    /// Run one command with redis-cli; returns its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(&self.opts.cli_bin)
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
