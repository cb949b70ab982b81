//! Test harness: the real service on `127.0.0.1:0` in this process, its
//! test config and an HTTP client, over real `redis-server`, Redis Cluster
//! and PostgreSQL processes from the `flashgate-testkit` crate (free ports,
//! temp dirs). Everything is stopped on `Drop`.
#![allow(dead_code)]

pub mod cluster;
pub mod ledger;

pub use flashgate_testkit::postgres;
pub use flashgate_testkit::{free_port, RedisServer};

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

/// The service, running in this test process.
pub struct TestApp {
    pub addr: std::net::SocketAddr,
    pub state: Arc<AppState>,
    client: Client<HttpConnector, Full<Bytes>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

pub fn test_config(redis: &RedisServer) -> Config {
    config_for(redis.url())
}

/// The tests' config for the Redis at `redis_url` (one server; the cluster
/// tests' starts from it: `support::cluster::test_config`).
pub fn config_for(redis_url: String) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        redis_url,
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

    /// [`TestApp::preload`] with a purchase cap of `cap` units per buyer.
    pub async fn preload_capped(&self, sku: &str, stock: i64, shards: u16, cap: u32) {
        let sku = flashgate::domain::Sku::parse(sku).expect("sku");
        self.state
            .inventory
            .preload_with(
                &sku,
                flashgate::inventory::PreloadSpec {
                    stock,
                    shards,
                    force: false,
                    max_per_user: Some(cap),
                    window: Default::default(),
                },
            )
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

/// Commands `redis` has run, by name (`INFO commandstats`; commands run
/// inside scripts count too). The reading's own INFO is among them.
pub fn command_calls(redis: &RedisServer) -> std::collections::BTreeMap<String, u64> {
    redis
        .cli(&["INFO", "commandstats"])
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.split("calls=").nth(1)?.split(',').next()?;
            Some((name.to_string(), calls.parse().ok()?))
        })
        .collect()
}

/// Commands other than INFO `redis` has run since `before` (a [`command_calls`]).
pub fn commands_since(
    redis: &RedisServer,
    before: &std::collections::BTreeMap<String, u64>,
) -> u64 {
    command_calls(redis)
        .iter()
        .filter(|(name, _)| name.as_str() != "info")
        .map(|(name, n)| n - before.get(name).copied().unwrap_or(0))
        .sum()
}

/// Where the record of reservation `rid` lives on one Redis server
/// (lua/lib.lua): the claim its token names, `<body>\0<rid>|<record>` (data
/// layout 6: a hold made by its key's first request), else
/// `fg:{SKU#s}:r:<rid>` (default shard tags). The key and the record's text,
/// or None when neither holds it.
pub fn record_at(redis: &RedisServer, rid: &str) -> Option<(String, String)> {
    let token = rid.get(rid.len().saturating_sub(32)..)?;
    let claim = flashgate::inventory::keys::claim_of_token(&uuid::Uuid::try_parse(token).ok()?);
    let v = redis.cli(&["GET", &claim.record]);
    let head = format!("\0{rid}|");
    if let Some(at) = v.find(&head) {
        return Some((claim.record, v[at + head.len()..].to_string()));
    }
    let (sku_shard, _) = rid.rsplit_once('.')?;
    let (sku, shard) = sku_shard.rsplit_once('.')?;
    let key = format!("fg:{{{sku}#{shard}}}:r:{rid}");
    let v = redis.cli(&["GET", &key]);
    (!v.is_empty()).then_some((key, v))
}

/// Rewrite the record of `rid` where it lives ([`record_at`]), its TTL kept
/// (a test's hand-made damage). Panics when there is none.
pub fn set_record(redis: &RedisServer, rid: &str, record: &str) {
    let (key, _) = record_at(redis, rid).unwrap_or_else(|| panic!("no record of {rid}"));
    // (in a script: a claim holds a NUL, which no command-line argument can)
    let script = "local v = redis.call('GET', KEYS[1]) \
        local z = string.find(v, '\\0', 1, true) \
        if z then v = string.sub(v, 1, z) .. ARGV[1] .. '|' .. ARGV[2] else v = ARGV[2] end \
        return redis.call('SET', KEYS[1], v, 'KEEPTTL')";
    assert_eq!(
        redis.cli(&["EVAL", script, "1", &key, rid, record]),
        "OK",
        "rewrote the record of {rid}"
    );
}

/// The name of `key`'s claim in this store (keys.rs, `ClaimHasher`: from
/// the store's `fg:claimkey`, which the service made at its start).
pub fn claim_name(redis: &RedisServer, key: &flashgate::domain::ScopedKey) -> String {
    let hex = redis.cli(&["GET", flashgate::inventory::keys::CLAIM_SECRET]);
    flashgate::inventory::keys::ClaimHasher::parse(&hex)
        .unwrap_or_else(|| panic!("no claim key in the store: {hex:?}"))
        .claim(key)
        .record
}
