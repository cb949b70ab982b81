//! Everything a single-node run starts: redis-server (AOF everysec),
//! PostgreSQL, two `flashgate serve` instances (no ledger writer of their
//! own) and one `flashgate ledger` writer with a fixed consumer name (a
//! restarted writer rereads its own pending entries at once instead of
//! waiting for another to claim them).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::cluster::Cluster;
use crate::procs::{self, Postgres, Proc};

pub const STOREFRONT: &str = "sf1";
pub const STOREFRONT_KEY: &str = "faults-storefront-key-0001";
pub const ADMIN_KEY: &str = "faults-admin-key-0000000001";

/// The sale's timing, short enough that holds and tickets end during the
/// resolve phase.
#[derive(Debug, Clone)]
pub struct Timing {
    pub hold_seconds: u64,
    pub extend_seconds: u64,
    pub max_hold_seconds: u64,
    pub ticket_seconds: u64,
    pub redis_timeout_ms: u64,
    pub request_timeout_ms: u64,
    /// flashgate's `cart_saga_ms` (docs/carts.md), set through a config file.
    pub cart_saga_ms: u64,
}

pub struct Stack {
    pub bin: PathBuf,
    pub timing: Timing,
    /// The single node (not started in a cluster run).
    pub redis: Proc,
    /// The single node's port, or the first cluster node's.
    pub redis_port: u16,
    /// A cluster run's Redis instead of the single node.
    pub cluster: Option<Cluster>,
    pub pg: Postgres,
    pub instances: Vec<Proc>,
    pub ports: Vec<u16>,
    pub writer: Proc,
}

impl Stack {
    pub fn redis_url(&self) -> String {
        match &self.cluster {
            Some(c) => c.url(),
            None => format!("redis://127.0.0.1:{}", self.redis_port),
        }
    }

    pub fn bases(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect()
    }

    /// The environment of a command that reads both Redis and PostgreSQL.
    pub fn tool_env(&self) -> Vec<(String, String)> {
        vec![
            ("FLASHGATE_REDIS_URL".into(), self.redis_url()),
            ("FLASHGATE_POSTGRES_URL".into(), self.pg.url()),
            ("FLASHGATE_REDIS_TIMEOUT_MS".into(), "2000".into()),
        ]
    }

    /// Start everything; with `cluster`, a 3-master Redis Cluster with a
    /// replica each instead of the single node.
    pub async fn start(
        bin: &Path,
        dir: &Path,
        timing: Timing,
        cluster: bool,
    ) -> anyhow::Result<Stack> {
        let redis_dir = dir.join("redis");
        std::fs::create_dir_all(&redis_dir)?;
        let mut redis_port = procs::free_port()?;
        let mut redis = procs::redis(&redis_dir, redis_port, dir.join("redis.log"));
        let (cluster, redis_url) = if cluster {
            let c = Cluster::start(&redis_dir, 3)
                .await
                .context("starting the cluster")?;
            redis_port = c.ports[0];
            let url = c.url();
            (Some(c), url)
        } else {
            redis.start()?;
            procs::wait_redis(redis_port, Duration::from_secs(10)).await?;
            (None, format!("redis://127.0.0.1:{redis_port}"))
        };
        let pg = Postgres::init().await.context("starting PostgreSQL")?;

        let t = &timing;
        let serve_env: Vec<(String, String)> = [
            ("FLASHGATE_REDIS_URL", redis_url.as_str()),
            (
                "FLASHGATE_API_KEYS",
                &format!("{STOREFRONT}:{STOREFRONT_KEY}"),
            ),
            ("FLASHGATE_ADMIN_KEYS", ADMIN_KEY),
            ("FLASHGATE_HOLD_SECONDS", &t.hold_seconds.to_string()),
            ("FLASHGATE_EXTEND_SECONDS", &t.extend_seconds.to_string()),
            (
                "FLASHGATE_MAX_HOLD_SECONDS",
                &t.max_hold_seconds.to_string(),
            ),
            (
                "FLASHGATE_WAITLIST_TICKET_SECONDS",
                &t.ticket_seconds.to_string(),
            ),
            (
                "FLASHGATE_REDIS_TIMEOUT_MS",
                &t.redis_timeout_ms.to_string(),
            ),
            (
                "FLASHGATE_REQUEST_TIMEOUT_MS",
                &t.request_timeout_ms.to_string(),
            ),
            // the buckets would answer 429s that test nothing here
            ("FLASHGATE_USER_RATE_PER_SECOND", "0"),
            ("FLASHGATE_CLIENT_RATE_PER_SECOND", "0"),
            ("FLASHGATE_GLOBAL_RATE_PER_SECOND", "0"),
            ("FLASHGATE_SWEEP_INTERVAL_MS", "100"),
            ("FLASHGATE_DRAIN_SECONDS", "1"),
            ("FLASHGATE_POSTGRES_URL", ""),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();

        // cart_saga_ms has no environment variable: the config file flashgate
        // would read from here (if any) with it added
        let base = std::fs::read_to_string("config/flashgate.toml").unwrap_or_default();
        let mut text = format!("cart_saga_ms = {}\n", t.cart_saga_ms);
        text += &base
            .lines()
            .filter(|l| !l.trim_start().starts_with("cart_saga_ms"))
            .map(|l| format!("{l}\n"))
            .collect::<String>();
        let conf = dir.join("flashgate.toml");
        std::fs::write(&conf, text)?;
        let mut serve_env = serve_env;
        serve_env.push(("FLASHGATE_CONFIG".into(), conf.display().to_string()));
        let mut ports = Vec::new();
        let mut instances = Vec::new();
        for i in 0..2 {
            let port = procs::free_port()?;
            let args = vec![
                "serve".into(),
                "--listen".into(),
                format!("127.0.0.1:{port}"),
            ];
            let mut p = Proc::new(
                &format!("flashgate-{i}"),
                bin,
                args,
                serve_env.clone(),
                dir.join(format!("flashgate-{i}.log")),
            );
            p.start()?;
            ports.push(port);
            instances.push(p);
        }
        let writer_env = vec![
            ("FLASHGATE_REDIS_URL".to_owned(), redis_url.clone()),
            ("FLASHGATE_POSTGRES_URL".to_owned(), pg.url()),
            (
                "FLASHGATE_LEDGER_CONSUMER".to_owned(),
                "faults-writer".into(),
            ),
            ("FLASHGATE_LEDGER_CLAIM_IDLE_MS".to_owned(), "2000".into()),
            ("FLASHGATE_LEDGER_INTERVAL_MS".to_owned(), "50".into()),
        ];
        let mut writer = Proc::new(
            "ledger-writer",
            bin,
            vec!["ledger".into()],
            writer_env,
            dir.join("ledger-writer.log"),
        );
        let mut stack = Stack {
            bin: bin.to_owned(),
            timing,
            redis,
            redis_port,
            cluster,
            pg,
            instances,
            ports,
            writer: Proc::new("none", bin, vec![], vec![], dir.join("unused.log")),
        };
        let env = stack.tool_env();
        let (code, out, err) =
            procs::run_tool(bin, &["migrate".into()], &env, Duration::from_secs(60)).await?;
        if code != 0 {
            bail!("flashgate migrate failed: {out}{err}");
        }
        writer.start()?;
        stack.writer = writer;
        for i in 0..stack.instances.len() {
            stack.wait_instance(i, Duration::from_secs(30)).await?;
        }
        Ok(stack)
    }

    /// Poll an instance's `/healthz` until 200.
    pub async fn wait_instance(&mut self, i: usize, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        let port = self.ports[i];
        loop {
            self.instances[i].check_alive()?;
            if healthz(port).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("flashgate-{i} not healthy within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `flashgate preload --sku S --stock N --shards K`.
    pub async fn preload(&self, sku: &str, stock: u64, shards: u32) -> anyhow::Result<()> {
        let args: Vec<String> = [
            "preload",
            "--sku",
            sku,
            "--stock",
            &stock.to_string(),
            "--shards",
            &shards.to_string(),
        ]
        .map(String::from)
        .to_vec();
        let (code, out, err) =
            procs::run_tool(&self.bin, &args, &self.tool_env(), Duration::from_secs(30)).await?;
        if code != 0 {
            bail!("flashgate preload {sku} failed: {out}{err}");
        }
        Ok(())
    }

    /// A flashgate command's JSON output and exit code (status, reconcile).
    pub async fn json_tool(&self, args: &[&str]) -> anyhow::Result<(i32, serde_json::Value)> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let (code, out, err) =
            procs::run_tool(&self.bin, &args, &self.tool_env(), Duration::from_secs(180)).await?;
        let json = serde_json::from_str(&out).unwrap_or_else(
            |_| serde_json::json!({"unparsed_stdout": out, "stderr": err, "exit_code": code}),
        );
        Ok((code, json))
    }

    /// Bring every process back (after the faults): Redis answering,
    /// PostgreSQL up, both instances healthy, the writer running.
    pub async fn heal(&mut self) -> anyhow::Result<()> {
        if let Some(c) = self.cluster.as_mut() {
            c.heal().await?;
        } else {
            if !self.redis.running() {
                self.redis.start()?;
            }
            let _ = self.redis.signal("CONT").await;
            procs::wait_redis(self.redis_port, Duration::from_secs(30)).await?;
        }
        self.pg.start().await?;
        for i in 0..self.instances.len() {
            if !self.instances[i].running() {
                self.instances[i].start()?;
            }
            self.wait_instance(i, Duration::from_secs(30)).await?;
        }
        if !self.writer.running() {
            self.writer.start()?;
        }
        Ok(())
    }

    pub async fn shutdown(&mut self) {
        for p in self.instances.iter_mut() {
            p.kill().await;
        }
        self.writer.kill().await;
        let _ = self.redis.signal("CONT").await;
        self.redis.kill().await;
        if let Some(c) = self.cluster.as_mut() {
            c.shutdown().await;
        }
        self.pg.stop().await;
    }
}

/// `GET /healthz` answers 200 within a second.
pub async fn healthz(port: u16) -> bool {
    let probe = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf.starts_with(b"HTTP/1.1 200"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), probe).await,
        Ok(Ok(true))
    )
}
