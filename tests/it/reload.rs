//! Reload without restart, on the real binary: `flashgate serve` with a
//! config file, the file changed, `kill -HUP` (or `POST /admin/v1/reload`).
//! Keys and rate limits change for the next request, a request in flight
//! completes, a bad file changes nothing, a restart-only setting is
//! reported and keeps its running value.

use crate::support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{free_port, RedisServer};

const SHOP_A: &str = "shop-a:storefront-key-aaaaaaaa";
const SHOP_B: &str = "shop-b:storefront-key-bbbbbbbb";
const ADMIN: &str = "admin-key-0123456789abcdef";

/// The bearer of an API-key entry (`name:secret` → `secret`).
fn bearer(entry: &str) -> &str {
    entry.split_once(':').map_or(entry, |(_, s)| s)
}

/// A `flashgate serve` process reading `file`; killed on drop.
struct Served {
    child: Child,
    port: u16,
    file: PathBuf,
    _dir: tempfile::TempDir,
    logs: Option<std::thread::JoinHandle<String>>,
}

/// The config file's text: these keys and extra lines, on `port` and `redis`.
fn config_text(port: u16, redis: &str, keys: &[&str], extra: &str) -> String {
    let keys: Vec<String> = keys.iter().map(|k| format!("{k:?}")).collect();
    format!(
        "listen = \"127.0.0.1:{port}\"\nredis_url = \"{redis}\"\napi_keys = [{}]\n\
         admin_keys = [\"{ADMIN}\"]\nuser_rate_per_second = 0\nclient_rate_per_second = 0\n\
         global_rate_per_second = 0\ndrain_seconds = 5\n{extra}\n",
        keys.join(", ")
    )
}

impl Served {
    fn start(redis: &RedisServer, keys: &[&str], extra: &str) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("flashgate.toml");
        let port = free_port();
        std::fs::write(&file, config_text(port, &redis.url(), keys, extra)).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_flashgate"))
            .arg("serve")
            .arg("--config")
            .arg(&file)
            .env_remove("FLASHGATE_API_KEYS")
            .env_remove("FLASHGATE_ADMIN_KEYS")
            .env_remove("FLASHGATE_LISTEN")
            .env_remove("FLASHGATE_REDIS_URL")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let logs = std::thread::spawn(move || {
            let mut logs = String::new();
            let _ = stderr.read_to_string(&mut logs);
            logs
        });
        let served = Served {
            child,
            port,
            file,
            _dir: dir,
            logs: Some(logs),
        };
        assert!(
            poll(|| served.call("GET", "/healthz", None, &[], "").0 == 200),
            "the service came up"
        );
        served
    }

    fn rewrite(&self, text: &str) {
        // written beside and renamed: the reload never reads half a file
        let tmp = self.file.with_extension("new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.file).unwrap();
    }

    fn hangup(&self) {
        let ok = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -HUP");
    }

    /// `flashgate_config_reloads_total{outcome}` as scraped.
    fn reloads(&self, outcome: &str) -> u64 {
        let (_, metrics) = self.call("GET", "/metrics", None, &[], "");
        let want = format!("flashgate_config_reloads_total{{outcome=\"{outcome}\"}} ");
        metrics
            .as_str()
            .unwrap_or("")
            .lines()
            .find_map(|l| l.strip_prefix(&want))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// SIGHUP, then wait until the reload is counted with `outcome`.
    fn reload_by_signal(&self, outcome: &str) {
        let before = self.reloads(outcome);
        self.hangup();
        assert!(
            poll(|| self.reloads(outcome) > before),
            "the reload was counted as {outcome}"
        );
    }

    /// One request on a fresh connection: status and JSON body.
    fn call(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, Value) {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return (0, Value::Null);
        };
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let _ = s.write_all(head(method, path, bearer, headers, body.len()).as_bytes());
        let _ = s.write_all(body.as_bytes());
        answer(&mut s)
    }

    fn reserve(&self, bearer: &str, key: &str) -> (u16, Value) {
        let body = r#"{"sku":"drop","qty":1,"user_id":"u1"}"#;
        self.call(
            "POST",
            "/v1/reservations",
            Some(bearer),
            &[("Idempotency-Key", key)],
            body,
        )
    }

    fn preload(&self) {
        let (status, body) = self.call(
            "POST",
            "/admin/v1/skus/drop/preload",
            Some(ADMIN),
            &[],
            r#"{"stock":100,"shards":2}"#,
        );
        assert_eq!(status, 201, "{body}");
    }

    fn logs(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.logs
            .take()
            .map(|t| t.join().unwrap())
            .unwrap_or_default()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn head(
    method: &str,
    path: &str,
    bearer: Option<&str>,
    headers: &[(&str, &str)],
    len: usize,
) -> String {
    let mut h = format!(
        "{method} {path} HTTP/1.1\r\nHost: flashgate\r\nConnection: close\r\nContent-Length: {len}\r\n"
    );
    if len > 0 {
        h.push_str("Content-Type: application/json\r\n");
    }
    if let Some(b) = bearer {
        h.push_str(&format!("Authorization: Bearer {b}\r\n"));
    }
    for (k, v) in headers {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str("\r\n");
    h
}

/// Read a whole `Connection: close` answer.
fn answer(s: &mut TcpStream) -> (u16, Value) {
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let value = serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_string()));
    (status, value)
}

/// Poll `f` for up to 20 s (a deadline for waiting, not a threshold).
fn poll(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

#[test]
fn a_key_added_by_sighup_is_accepted_and_one_removed_is_refused() {
    let redis = RedisServer::start();
    let app = Served::start(&redis, &[SHOP_A], "");
    app.preload();
    assert_eq!(app.reserve(bearer(SHOP_A), "a-1").0, 201);
    assert_eq!(app.reserve(bearer(SHOP_B), "b-1").0, 401);

    app.rewrite(&config_text(app.port, &redis.url(), &[SHOP_B], ""));
    app.reload_by_signal("ok");

    let (status, body) = app.reserve(bearer(SHOP_B), "b-2");
    assert_eq!(status, 201, "the added key is accepted: {body}");
    let (status, body) = app.reserve(bearer(SHOP_A), "a-2");
    assert_eq!(status, 401, "the removed key is refused: {body}");
    assert_eq!(body["error"]["code"], "unauthorized");
    // the same instance all along: shop-a's hold is still there
    assert_eq!(app.reloads("invalid"), 0);
    let logs = app.logs();
    assert!(logs.contains("configuration reloaded"), "{logs}");
    assert!(
        logs.contains("api_keys"),
        "the log names what changed: {logs}"
    );
    assert!(
        !logs.contains("storefront-key-"),
        "no key in the logs: {logs}"
    );
}

#[test]
fn a_request_in_flight_when_its_key_is_removed_completes() {
    let redis = RedisServer::start();
    let app = Served::start(&redis, &[SHOP_A, SHOP_B], "");
    app.preload();
    // the head and half the body of a reserve: admitted, waiting for the rest
    let body = r#"{"sku":"drop","qty":1,"user_id":"slow-buyer"}"#;
    let mut slow = TcpStream::connect(("127.0.0.1", app.port)).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    slow.write_all(
        head(
            "POST",
            "/v1/reservations",
            Some(bearer(SHOP_A)),
            &[("Idempotency-Key", "slow-1")],
            body.len(),
        )
        .as_bytes(),
    )
    .unwrap();
    slow.write_all(&body.as_bytes()[..10]).unwrap();

    app.rewrite(&config_text(app.port, &redis.url(), &[SHOP_B], ""));
    app.reload_by_signal("ok");
    assert_eq!(
        app.reserve(bearer(SHOP_A), "a-new").0,
        401,
        "the key is gone for new requests"
    );

    slow.write_all(&body.as_bytes()[10..]).unwrap();
    let (status, answer) = answer(&mut slow);
    assert_eq!(
        status, 201,
        "the request admitted before the reload completes: {answer}"
    );
    assert_eq!(answer["status"], "held");
}

#[test]
fn a_bad_file_changes_nothing_and_says_why() {
    let redis = RedisServer::start();
    let app = Served::start(&redis, &[SHOP_A], "");
    app.preload();
    // not TOML: the secret on the broken line must not come back
    app.rewrite(&format!(
        "api_keys = [\"{SHOP_B}\"\nadmin_keys = [\"{ADMIN}\"]\n"
    ));
    app.reload_by_signal("invalid");
    assert_eq!(app.reserve(bearer(SHOP_A), "a-1").0, 201, "old keys kept");
    assert_eq!(app.reserve(bearer(SHOP_B), "b-1").0, 401);
    let (status, body) = app.call("POST", "/admin/v1/reload", Some(ADMIN), &[], "");
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_config");
    let why = body["error"]["message"].as_str().unwrap();
    assert!(why.contains("flashgate.toml"), "{why}");
    assert!(!why.contains("storefront-key-"), "{why}");

    // valid TOML, invalid setting, next to a key that would be valid
    app.rewrite(&config_text(
        app.port,
        &redis.url(),
        &[SHOP_B],
        "hold_seconds = 0",
    ));
    let (status, body) = app.call("POST", "/admin/v1/reload", Some(ADMIN), &[], "");
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("hold_seconds"),
        "{body}"
    );
    assert_eq!(app.reserve(bearer(SHOP_B), "b-2").0, 401, "nothing changed");
    assert_eq!(app.reloads("invalid"), 3);
    assert_eq!(app.reloads("ok"), 0);
    let logs = app.logs();
    assert!(logs.contains("reload refused"), "{logs}");
    assert!(
        !logs.contains("storefront-key-"),
        "no key in the logs: {logs}"
    );
}

#[test]
fn a_restart_only_change_is_reported_and_not_applied() {
    let redis = RedisServer::start();
    let app = Served::start(&redis, &[SHOP_A], "");
    app.preload();
    let other_port = free_port();
    let other_redis = RedisServer::start();
    app.rewrite(&config_text(
        other_port,
        &other_redis.url(),
        &[SHOP_A, SHOP_B],
        "hold_seconds = 60",
    ));
    let (status, body) = app.call("POST", "/admin/v1/reload", Some(ADMIN), &[], "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["changed"], serde_json::json!(["api_keys"]));
    assert_eq!(
        body["restart_needed"],
        serde_json::json!(["hold_seconds", "listen", "redis_url"])
    );
    assert_eq!(app.reloads("restart_needed"), 1);
    // applied: the key; not applied: the port, the Redis, the hold time
    assert!(TcpStream::connect(("127.0.0.1", other_port)).is_err());
    let (status, held) = app.reserve(bearer(SHOP_B), "b-1");
    assert_eq!(status, 201, "{held}");
    let expires = humantime::parse_rfc3339_weak(held["expires_at"].as_str().unwrap()).unwrap();
    let left = expires
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    assert!(
        left > Duration::from_secs(120),
        "hold_seconds keeps its running value (600), not 60: {held}"
    );
    assert_eq!(
        other_redis.cli(&["DBSIZE"]),
        "0",
        "the new Redis is not used"
    );
}

#[test]
fn a_reload_changes_rate_limits_for_the_next_request() {
    let redis = RedisServer::start();
    let tight = "client_rate_per_second = 1\nclient_burst = 1";
    let text = |extra: &str| {
        config_text(0, &redis.url(), &[SHOP_A], extra)
            .replace("client_rate_per_second = 0\n", "")
            .replace("listen = \"127.0.0.1:0\"", "")
    };
    let app = Served::start(&redis, &[SHOP_A], "");
    // the listen address as started, with the tight client bucket
    let with_listen = |extra: &str| format!("listen = \"127.0.0.1:{}\"\n{}", app.port, text(extra));
    app.rewrite(&with_listen(tight));
    app.reload_by_signal("ok");
    let get = || {
        app.call("GET", "/v1/skus/none", Some(bearer(SHOP_A)), &[], "")
            .0
    };
    assert_eq!(get(), 404, "the first request passes the bucket");
    assert_eq!(get(), 429, "the burst of 1 is spent");
    app.rewrite(&with_listen(
        "client_rate_per_second = 1000\nclient_burst = 1000",
    ));
    app.reload_by_signal("ok");
    assert_eq!(get(), 404, "a raised limit admits at once");
}

#[test]
fn only_an_admin_key_reloads() {
    let redis = RedisServer::start();
    let app = Served::start(&redis, &[SHOP_A], "");
    let (status, _) = app.call("POST", "/admin/v1/reload", Some(bearer(SHOP_A)), &[], "");
    assert_eq!(status, 403);
    let (status, _) = app.call("POST", "/admin/v1/reload", None, &[], "");
    assert_eq!(status, 401);
    let (status, body) = app.call("GET", "/admin/v1/reload", Some(ADMIN), &[], "");
    assert_eq!(status, 405, "{body}");
    let (status, body) = app.call("POST", "/admin/v1/reload", Some(ADMIN), &[], "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        serde_json::json!({"changed": [], "restart_needed": []})
    );
    assert_eq!(app.reloads("ok"), 1);
}
