//! A PostgreSQL server of our own: `initdb` into a temp dir, started with
//! `pg_ctl` on a free port (`fsync=off`: a test database need not survive a
//! power cut), stopped on `Drop`. PostgreSQL refuses to run as root, so as
//! root every server command runs as the `postgres` user (`runuser`), and the
//! temp dir is handed to that user.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use tempfile::TempDir;

pub struct PostgresServer {
    pub port: u16,
    dir: TempDir,
    bin: PathBuf,
    running: bool,
}

/// The newest of the PostgreSQL server binary directories given: Debian's
/// `/usr/lib/postgresql/<major>/bin` with the highest major version.
pub fn newest_pg_bin_dir(candidates: &[PathBuf]) -> Option<PathBuf> {
    candidates
        .iter()
        .filter_map(|p| {
            let major = p
                .parent()?
                .file_name()?
                .to_str()?
                .parse::<u32>()
                .unwrap_or(0);
            Some((major, p))
        })
        .max_by_key(|(major, _)| *major)
        .map(|(_, p)| p.clone())
}

/// PostgreSQL's server binaries: `pg_config --bindir` first, else the newest
/// of Debian's per-version dirs that has an `initdb`.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if p.join("initdb").exists() {
            return Ok(p);
        }
    }
    // Debian keeps the server binaries off PATH, one dir per major version
    let found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    newest_pg_bin_dir(&found).context(
        "PostgreSQL server binaries not found (`make test` installs the postgresql package)",
    )
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl PostgresServer {
    /// [`PostgresServer::try_start`], panicking when it cannot.
    pub fn start() -> PostgresServer {
        Self::try_start().unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// `initdb` into a temp dir and start on a free port (five tries).
    /// Blocking (initdb takes a second or two): async callers run it on the
    /// blocking pool.
    pub fn try_start() -> anyhow::Result<PostgresServer> {
        let bin = bin_dir()?;
        let dir = tempfile::tempdir().context("temp dir")?;
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(dir.path())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            anyhow::ensure!(ok, "cannot hand the temp dir to the postgres user");
        }
        let mut s = PostgresServer {
            port: 0,
            dir,
            bin,
            running: false,
        };
        let out = s
            .as_server_user(&s.bin.join("initdb"))
            .arg("-D")
            .arg(s.data())
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .stdout(Stdio::null())
            .output()
            .context("initdb runs")?;
        anyhow::ensure!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for _ in 0..5 {
            s.port = crate::free_port();
            if s.try_start_server() {
                return Ok(s);
            }
        }
        anyhow::bail!("could not start postgres; log:\n{}", s.log_text())
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// The server's log so far (its start-up errors).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    fn as_server_user(&self, program: &Path) -> Command {
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    }

    fn try_start_server(&mut self) -> bool {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off -c max_connections=100",
            self.port,
            self.dir.path().display()
        );
        let ok = self
            .as_server_user(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.log())
            .args(["-o", &opts, "-w", "-t", "30", "start"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        self.running = ok && self.ready();
        self.running
    }

    fn ready(&self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let ok = Command::new(self.bin.join("pg_isready"))
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "postgres",
                ])
                .stdout(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stop at once (`-m immediate`: no checkpoint, like a crash).
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        let _ = self
            .as_server_user(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        self.running = false;
    }

    /// Start again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.try_start_server() {
            assert!(Instant::now() < deadline, "postgres did not restart");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Run SQL with psql; returns its unaligned, tuples-only output.
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-d", "postgres", "-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
            .output()
            .expect("psql runs");
        assert!(
            out.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A connected client (its connection task runs on the test's runtime).
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .expect("connect to the test postgres");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_postgres_major_wins() {
        let dirs = [
            PathBuf::from("/usr/lib/postgresql/15/bin"),
            PathBuf::from("/usr/lib/postgresql/17/bin"),
            PathBuf::from("/usr/lib/postgresql/9/bin"),
        ];
        assert_eq!(
            newest_pg_bin_dir(&dirs),
            Some(PathBuf::from("/usr/lib/postgresql/17/bin"))
        );
        assert_eq!(newest_pg_bin_dir(&[]), None);
    }
}
