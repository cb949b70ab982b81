//! Test harness: real `redis-server` processes on free ports in temp dirs,
//! and the real service on `127.0.0.1:0`. Everything is stopped on `Drop`.
#![allow(dead_code)]

pub mod cluster;
pub mod ledger;
pub mod postgres;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flashgate::app::{App, AppState};
use flashgate::config::Config;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tempfile::TempDir;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

/// A `redis-server` of our own.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: TempDir,
    persistent: bool,
    /// More `redis-server` arguments (`start_with_args`).
    extra: Vec<String>,
}

impl RedisServer {
    /// Memory only (`--save '' --appendonly no`).
    pub fn start() -> RedisServer {
        Self::start_with(false)
    }

    /// With an fsync-always AOF, so that a killed and restarted server comes
    /// back with its data (and an empty script cache).
    pub fn start_persistent() -> RedisServer {
        Self::start_with(true)
    }

    /// Memory only, with more `redis-server` arguments (e.g.
    /// `["--maxmemory-policy", "allkeys-lru"]`).
    pub fn start_with_args(args: &[&str]) -> RedisServer {
        Self::start_full(false, args)
    }

    fn start_with(persistent: bool) -> RedisServer {
        Self::start_full(persistent, &[])
    }

    fn start_full(persistent: bool, args: &[&str]) -> RedisServer {
        for _ in 0..5 {
            let mut s = RedisServer {
                port: free_port(),
                child: None,
                dir: tempfile::tempdir().expect("temp dir"),
                persistent,
                extra: args.iter().map(|a| a.to_string()).collect(),
            };
            if s.spawn() {
                return s;
            }
        }
        panic!("could not start redis-server (is it installed? `make test` installs it)");
    }

    fn spawn(&mut self) -> bool {
        let mut cmd = Command::new("redis-server");
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
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.persistent {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        cmd.args(&self.extra);
        let Ok(child) = cmd.spawn() else { return false };
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping() {
                return true;
            }
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return false; // exited: port taken?
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
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
        while !self.spawn() {
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
        let out = Command::new("redis-cli")
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

/// The service, running in this test process.
pub struct TestApp {
    pub addr: std::net::SocketAddr,
    pub state: Arc<AppState>,
    client: Client<HttpConnector, Full<Bytes>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

pub fn test_config(redis: &RedisServer) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        redis_url: redis.url(),
        redis_timeout_ms: 2000,
        sweep_interval_ms: 50,
        drain_seconds: 1,
        insecure_no_auth: true,
        // tests fire bursts far beyond the shipped protective buckets; the
        // tests of those buckets set them explicitly
        user_rate_per_second: 0,
        client_rate_per_second: 0,
        global_rate_per_second: 0,
        ..Config::default()
    }
}

/// The service on the test defaults, adjusted by `tweak`.
pub async fn spawn_app_with(redis: &RedisServer, tweak: impl FnOnce(&mut Config)) -> TestApp {
    let mut c = test_config(redis);
    tweak(&mut c);
    spawn_app(c).await
}

pub async fn spawn_app(config: Config) -> TestApp {
    let app = App::build(config).await.expect("app starts");
    let addr = app.local_addr();
    let state = app.state();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until(async move {
        let _ = rx.await;
        Duration::from_secs(1)
    }));
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(512)
        .build(connector);
    TestApp {
        addr,
        state,
        client,
        stop: Some(tx),
        task: Some(task),
    }
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: Value,
}

impl Answer {
    /// The machine-readable error code, if this is an error body.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

impl TestApp {
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Answer {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("http://{}{}", self.addr, path));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(Bytes::from(body))).expect("request");
        let resp = tokio::time::timeout(Duration::from_secs(30), self.client.request(req))
            .await
            .expect("the service answers (no hang)")
            .expect("http");
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
        Answer {
            status,
            headers,
            body,
        }
    }

    pub async fn reserve(&self, key: &str, sku: &str, qty: i64, user: &str) -> Answer {
        let body = serde_json::json!({"sku": sku, "qty": qty, "user_id": user});
        self.request(
            Method::POST,
            "/v1/reservations",
            &[
                ("content-type", "application/json"),
                ("idempotency-key", key),
            ],
            body.to_string().into_bytes(),
        )
        .await
    }

    pub async fn action(&self, rid: &str, action: &str) -> Answer {
        self.request(
            Method::POST,
            &format!("/v1/reservations/{rid}/{action}"),
            &[],
            vec![],
        )
        .await
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.request(Method::GET, path, &[], vec![]).await
    }

    pub async fn sku(&self, sku: &str) -> Value {
        self.get(&format!("/v1/skus/{sku}")).await.body
    }

    pub async fn preload(&self, sku: &str, stock: i64, shards: u16) {
        let sku = flashgate::domain::Sku::parse(sku).expect("sku");
        self.state
            .inventory
            .preload(&sku, stock, shards, false)
            .await
            .expect("preload");
    }

    /// The books of every shard add up, and no counter is negative.
    pub async fn assert_books(&self, sku: &str) -> flashgate::inventory::SkuStatus {
        let sku = flashgate::domain::Sku::parse(sku).expect("sku");
        let st = self.state.inventory.status(&sku).await.expect("status");
        for s in &st.per_shard {
            assert_eq!(s.drift(), 0, "shard books do not add up: {s:?}");
            assert!(
                s.available >= 0 && s.held >= 0 && s.sold >= 0,
                "negative counter: {s:?}"
            );
        }
        assert_eq!(st.in_transit, 0, "units left in transit: {st:?}");
        st
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Poll `f` until it returns true, for at most `limit` (a deadline for
/// waiting, never a performance threshold).
pub async fn eventually<F, Fut>(limit: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
