//! The processes a `--spawn` run owns: a throw-away redis-server (or, with
//! `--cluster-masters N`, an N-master Redis Cluster) and a flashgate, each on
//! free 127.0.0.1 ports, killed when dropped (also on an early return or
//! error). And `flashgate preload`, which the run calls itself.

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

/// `redis-server` arguments of one cluster node: client port, cluster bus
/// port (picked free too, not the default port + 10000), no persistence, its
/// `nodes.conf` in `dir`. The node timeout is long enough that a loaded
/// 2-core machine does not fail a node over by accident.
pub fn cluster_node_args(port: u16, bus_port: u16, dir: &Path) -> Vec<String> {
    [
        "--port",
        &port.to_string(),
        "--cluster-port",
        &bus_port.to_string(),
        "--bind",
        "127.0.0.1",
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-node-timeout",
        "15000",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
    ]
    .iter()
    .map(|a| a.to_string())
    .chain([dir.display().to_string()])
    .collect()
}

/// `redis-cli` arguments that join `ports` into a cluster of masters only
/// (the slots split evenly), without asking for confirmation.
pub fn cluster_create_args(ports: &[u16]) -> Vec<String> {
    let mut args = vec!["--cluster".to_string(), "create".to_string()];
    args.extend(ports.iter().map(|p| format!("127.0.0.1:{p}")));
    args.extend(["--cluster-replicas", "0", "--cluster-yes"].map(String::from));
    args
}

/// The `redis-cluster://` URL flashgate and fred take: the first node, the
/// others as `node=` seeds.
pub fn cluster_url(ports: &[u16]) -> String {
    let mut it = ports.iter();
    let first = it.next().copied().unwrap_or(0);
    let seeds: Vec<String> = it.map(|p| format!("node=127.0.0.1:{p}")).collect();
    if seeds.is_empty() {
        format!("redis-cluster://127.0.0.1:{first}")
    } else {
        format!("redis-cluster://127.0.0.1:{first}?{}", seeds.join("&"))
    }
}

/// Whether one node's `CLUSTER INFO` shows a cluster ready to serve: state
/// ok, every slot assigned and healthy, and all `nodes` known to it.
pub fn cluster_info_ready(info: &str, nodes: usize) -> bool {
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    field("cluster_state") == Some("ok")
        && field("cluster_slots_assigned") == Some("16384")
        && field("cluster_slots_ok") == Some("16384")
        && field("cluster_known_nodes").and_then(|n| n.parse().ok()) == Some(nodes)
}

/// Distinct free ports (a port just probed free is not reserved, so two
/// probes can return the same one).
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let mut ports: Vec<u16> = Vec::with_capacity(n);
    for _ in 0..n * 20 {
        if ports.len() == n {
            break;
        }
        let p = free_port()?;
        if !ports.contains(&p) {
            ports.push(p);
        }
    }
    anyhow::ensure!(ports.len() == n, "could not find {n} free ports");
    Ok(ports)
}

async fn redis_cli(bin: &Path, args: &[String], limit: Duration) -> anyhow::Result<String> {
    run_tool(Command::new(bin).args(args), bin, args, limit).await
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

/// A Redis Cluster of `masters` masters and no replicas: one
/// `redis-server --cluster-enabled yes` per master on free ports (its files
/// in a subdirectory of `dir`), joined with `redis-cli --cluster create`;
/// ready when every node reports the cluster ok with all slots and nodes.
/// Returns the nodes (killed on drop) and the cluster's URL.
pub async fn spawn_cluster(
    server_bin: &Path,
    cli_bin: &Path,
    masters: usize,
    dir: &Path,
    log_dir: &Path,
) -> anyhow::Result<(Vec<Owned>, String)> {
    let ports = free_ports(masters * 2)?;
    let (client_ports, bus_ports) = ports.split_at(masters);
    let mut nodes = Vec::with_capacity(masters);
    for (i, (&port, &bus)) in client_ports.iter().zip(bus_ports).enumerate() {
        let node_dir = dir.join(format!("node{i}"));
        std::fs::create_dir_all(&node_dir)
            .with_context(|| format!("creating {}", node_dir.display()))?;
        let child = Command::new(server_bin)
            .args(cluster_node_args(port, bus, &node_dir))
            .stdout(log_file(log_dir, &format!("redis-{port}.log"))?)
            .stderr(Stdio::inherit())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", server_bin.display()))?;
        nodes.push(Owned {
            name: "redis-server (cluster node)",
            child: Some(child),
        });
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for (node, port) in nodes.iter_mut().zip(client_ports) {
        let args = ["-p".to_string(), port.to_string(), "PING".into()];
        loop {
            node.check_alive()?;
            let pong = redis_cli(cli_bin, &args, Duration::from_secs(5)).await;
            if pong.is_ok_and(|p| p.trim() == "PONG") {
                break;
            }
            if Instant::now() >= deadline {
                bail!("cluster node on port {port} not ready within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    redis_cli(
        cli_bin,
        &cluster_create_args(client_ports),
        Duration::from_secs(60),
    )
    .await
    .context("joining the cluster")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    for port in client_ports {
        let args = [
            "-p".to_string(),
            port.to_string(),
            "CLUSTER".into(),
            "INFO".into(),
        ];
        loop {
            let info = redis_cli(cli_bin, &args, Duration::from_secs(5))
                .await
                .unwrap_or_default();
            if cluster_info_ready(&info, masters) {
                break;
            }
            if Instant::now() >= deadline {
                bail!("cluster node on port {port} not ready within 60 s: {info}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok((nodes, cluster_url(client_ports)))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_are_created_as_masters_only() {
        assert_eq!(
            cluster_create_args(&[7000, 7001, 7002]),
            [
                "--cluster",
                "create",
                "127.0.0.1:7000",
                "127.0.0.1:7001",
                "127.0.0.1:7002",
                "--cluster-replicas",
                "0",
                "--cluster-yes"
            ]
        );
        let args = cluster_node_args(7000, 17123, Path::new("/tmp/n0"));
        let after = |flag: &str| {
            let i = args.iter().position(|a| a == flag).expect(flag);
            args[i + 1].as_str()
        };
        assert_eq!(after("--port"), "7000");
        assert_eq!(after("--cluster-port"), "17123");
        assert_eq!(after("--cluster-enabled"), "yes");
        assert_eq!(after("--bind"), "127.0.0.1");
        assert_eq!(after("--save"), "");
        assert_eq!(after("--appendonly"), "no");
        assert_eq!(after("--dir"), "/tmp/n0");
    }

    #[test]
    fn cluster_url_names_every_node() {
        assert_eq!(
            cluster_url(&[7000, 7001, 7002]),
            "redis-cluster://127.0.0.1:7000?node=127.0.0.1:7001&node=127.0.0.1:7002"
        );
        assert_eq!(cluster_url(&[7000]), "redis-cluster://127.0.0.1:7000");
    }

    #[test]
    fn cluster_ready_needs_every_slot_and_node() {
        let info = "cluster_state:ok\r\ncluster_slots_assigned:16384\r\ncluster_slots_ok:16384\r\ncluster_slots_pfail:0\r\ncluster_known_nodes:3\r\ncluster_size:3\r\n";
        assert!(cluster_info_ready(info, 3));
        assert!(!cluster_info_ready(info, 4), "a node not met yet");
        assert!(!cluster_info_ready(
            &info.replace("state:ok", "state:fail"),
            3
        ));
        assert!(!cluster_info_ready(
            &info.replace("slots_ok:16384", "slots_ok:16000"),
            3
        ));
        assert!(!cluster_info_ready("", 3));
    }
}

/// The newest of the PostgreSQL server binary directories found: `pg_config
/// --bindir` first, else Debian's `/usr/lib/postgresql/<major>/bin` with the
/// highest major version that has an `initdb`.
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
    let found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    newest_pg_bin_dir(&found)
        .context("PostgreSQL server binaries not found (install the postgresql package)")
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A throw-away PostgreSQL (the same recipe as tests/support/postgres.rs):
/// `initdb` into a temp dir, `pg_ctl start` on a free 127.0.0.1 port with
/// `fsync=off`; as root every server command runs as the `postgres` user
/// (PostgreSQL refuses root). Stopped (`-m immediate`) on drop.
pub struct Postgres {
    pub url: String,
    bin: PathBuf,
    dir: tempfile::TempDir,
    root: bool,
    running: bool,
}

impl Postgres {
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

    /// The server's log (its start-up errors).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running {
            let _ = self
                .as_server_user("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .args(["-m", "immediate", "-w", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Start a [`Postgres`]; blocking (initdb takes a second or two), so it runs
/// on the blocking pool.
pub async fn spawn_postgres() -> anyhow::Result<Postgres> {
    tokio::task::spawn_blocking(start_postgres).await?
}

fn start_postgres() -> anyhow::Result<Postgres> {
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
        url: String::new(),
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
        let port = free_port()?;
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off",
            pg.dir.path().display()
        );
        let ok = pg
            .as_server_user("pg_ctl")
            .arg("-D")
            .arg(pg.data())
            .arg("-l")
            .arg(pg.dir.path().join("postgres.log"))
            .args(["-o", &opts, "-w", "-t", "30", "start"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            pg.running = true;
            pg.url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
            return Ok(pg);
        }
    }
    bail!("could not start postgres; log:\n{}", pg.log())
}

#[cfg(test)]
mod pg_tests {
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
