//! The deployment files run, checked without Docker or a Kubernetes cluster:
//!
//! - docker-compose.yml: each service's command, with its environment (interpolated
//!   from .env.example as compose does), runs as a local process on free ports: Redis
//!   with the compose flags, the one-shot preload, then flashgate; a reserve with the
//!   storefront key from .env.example gets its hold, and the stock runs out;
//! - deploy/kubernetes/base: every resource kustomization.yaml lists is validated
//!   against the Kubernetes schemas (`kubernetes-validate`); the Prometheus Operator
//!   resources, which it does not know, are checked here: the PrometheusRule holds
//!   exactly prometheus/alerts.yml, the ServiceMonitor selects the Service's port;
//! - deploy/systemd/flashgate.service: hardened, and stops slower than flashgate drains.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_norway::Value as Yaml;

mod support;

const COMPOSE: &str = "docker-compose.yml";
const ENV_EXAMPLE: &str = ".env.example";
const DOCKERFILE: &str = "Dockerfile";

// ---------------------------------------------------------------------------------------
// compose

/// `KEY=value` lines of an env file (comments and blank lines skipped).
fn env_file(rel: &str) -> BTreeMap<String, String> {
    read(rel)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("{rel}: not KEY=value: {l}"));
            (k.trim().to_owned(), v.trim().to_owned())
        })
        .collect()
}

/// Compose's interpolation of `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`,
/// `${VAR:?error}` and `$$`, from `vars` (the `.env` file).
fn interpolate(s: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at + 1..];
        if let Some(after) = tail.strip_prefix('$') {
            out.push('$');
            rest = after;
        } else if let Some(body) = tail.strip_prefix('{') {
            let end = body
                .find('}')
                .unwrap_or_else(|| panic!("{COMPOSE}: unclosed ${{ in {s}"));
            let expr = &body[..end];
            let name_len = expr
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(expr.len());
            let (name, op) = expr.split_at(name_len);
            let set = vars.get(name).cloned();
            let non_empty = set.clone().filter(|v| !v.is_empty());
            let resolved = if let Some(default) = op.strip_prefix(":-") {
                non_empty.unwrap_or_else(|| default.to_owned())
            } else if let Some(default) = op.strip_prefix('-') {
                set.unwrap_or_else(|| default.to_owned())
            } else if let Some(error) = op.strip_prefix(":?") {
                non_empty.unwrap_or_else(|| panic!("{COMPOSE}: {name} is unset: {error}"))
            } else if let Some(error) = op.strip_prefix('?') {
                set.unwrap_or_else(|| panic!("{COMPOSE}: {name} is unset: {error}"))
            } else {
                assert!(op.is_empty(), "{COMPOSE}: unsupported ${{{expr}}}");
                set.unwrap_or_default()
            };
            out.push_str(&resolved);
            rest = &body[end + 1..];
        } else {
            let len = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            out.push_str(vars.get(&tail[..len]).map_or("", String::as_str));
            rest = &tail[len..];
        }
    }
    out.push_str(rest);
    out
}

/// One compose service as a process would see it: its command and environment.
struct Service {
    command: Vec<String>,
    env: BTreeMap<String, String>,
}

fn service(compose: &Yaml, name: &str, vars: &BTreeMap<String, String>) -> Service {
    let s = &compose["services"][name];
    assert!(s.is_mapping(), "{COMPOSE}: no service {name}");
    let command = match &s["command"] {
        Yaml::Sequence(words) => words
            .iter()
            .map(|w| match w {
                Yaml::String(w) => interpolate(w, vars),
                other => panic!("{COMPOSE}: {name}: command word {other:?} is not a string"),
            })
            .collect(),
        Yaml::Null => image_cmd(),
        other => panic!("{COMPOSE}: {name}: give command as a list, not {other:?}"),
    };
    let env = match &s["environment"] {
        Yaml::Mapping(m) => m
            .iter()
            .map(|(k, v)| {
                let k = k.as_str().expect("variable name").to_owned();
                let v = match v {
                    Yaml::String(v) => interpolate(v, vars),
                    Yaml::Number(n) => n.to_string(),
                    Yaml::Bool(b) => b.to_string(),
                    other => panic!("{COMPOSE}: {name}: {k} = {other:?}"),
                };
                (k, v)
            })
            .collect(),
        Yaml::Null => BTreeMap::new(),
        other => panic!("{COMPOSE}: {name}: give environment as a mapping, not {other:?}"),
    };
    Service { command, env }
}

/// The image's CMD (JSON form), for a service that does not set `command`.
fn image_cmd() -> Vec<String> {
    let cmd = read(DOCKERFILE)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("CMD "))
        .last()
        .expect("Dockerfile has a CMD")
        .to_owned();
    serde_json::from_str(&cmd).expect("CMD in JSON form")
}

/// `depends_on` of a service: name -> condition.
fn depends_on(compose: &Yaml, name: &str) -> BTreeMap<String, String> {
    compose["services"][name]["depends_on"]
        .as_mapping()
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            (
                k.as_str().unwrap_or_default().to_owned(),
                v["condition"]
                    .as_str()
                    .unwrap_or("service_started")
                    .to_owned(),
            )
        })
        .collect()
}

/// The value after `--flag` or in `--flag=value`.
fn flag<'a>(command: &'a [String], name: &str) -> Option<&'a str> {
    command.iter().enumerate().find_map(|(i, w)| {
        if w == name {
            command.get(i + 1).map(String::as_str)
        } else {
            w.strip_prefix(name).and_then(|v| v.strip_prefix('='))
        }
    })
}

/// A child process killed on drop, its stderr kept in a file for the failure message.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A flashgate command of the compose file as the container would run it: the binary
/// for `flashgate`, only the service's environment, in a directory without a config
/// file (the image has none).
fn flashgate_command(svc: &Service, dir: &Path) -> Command {
    assert_eq!(
        svc.command.first().map(String::as_str),
        Some("flashgate"),
        "{COMPOSE}: not a flashgate command: {:?}",
        svc.command
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flashgate"));
    cmd.args(&svc.command[1..])
        .env_clear()
        .envs(&svc.env)
        .current_dir(dir);
    cmd
}

/// One HTTP/1.1 request; returns the status code and the body.
fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).expect("send");
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

#[test]
fn the_compose_stack_runs_as_written_and_sells_out() {
    let compose = yaml(COMPOSE);
    let vars = env_file(ENV_EXAMPLE);
    let dir = tempfile::tempdir().expect("temp dir");

    // the start order compose enforces
    let fg_deps = depends_on(&compose, "flashgate");
    assert_eq!(
        fg_deps.get("preload").map(String::as_str),
        Some("service_completed_successfully"),
        "{COMPOSE}: flashgate must wait for the preload to finish"
    );
    assert_eq!(
        depends_on(&compose, "preload")
            .get("redis")
            .map(String::as_str),
        Some("service_healthy"),
        "{COMPOSE}: preload must wait for a healthy redis"
    );

    // redis with the compose command's flags (on a free port, in a temp dir)
    let redis_svc = service(&compose, "redis", &vars);
    assert_eq!(redis_svc.command[0], "redis-server");
    let flags: Vec<&str> = redis_svc.command[1..].iter().map(String::as_str).collect();
    let redis = support::RedisServer::start_with_args(&flags);
    assert_eq!(
        redis.cli(&["CONFIG", "GET", "maxmemory-policy"]),
        "maxmemory-policy\nnoeviction",
        "{COMPOSE}: redis must run with noeviction"
    );
    // the postgres image cannot run here: a local server stands in for it
    let pg = support::postgres::PostgresServer::start();
    let local = |env: &mut BTreeMap<String, String>| {
        for (k, v) in env.iter_mut() {
            if k == "FLASHGATE_REDIS_URL" {
                assert_eq!(v, "redis://redis:6379", "{COMPOSE}: {k}");
                *v = redis.url();
            }
            if k == "FLASHGATE_POSTGRES_URL" {
                assert!(v.contains("@postgres:5432/"), "{COMPOSE}: {k} = {v}");
                *v = pg.url();
            }
        }
    };

    // the one-shot preload, twice: a restarted stack must not fail on a loaded SKU
    let mut preload = service(&compose, "preload", &vars);
    local(&mut preload.env);
    let sku = flag(&preload.command, "--sku")
        .expect("preload --sku")
        .to_owned();
    let stock: i64 = flag(&preload.command, "--stock")
        .and_then(|s| s.parse().ok())
        .expect("preload --stock");
    assert!((1..=1000).contains(&stock), "demo stock {stock}");
    for round in 1..=2 {
        let out = flashgate_command(&preload, dir.path())
            .output()
            .expect("run preload");
        assert!(
            out.status.success(),
            "{COMPOSE}: preload (run {round}) failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // flashgate with its compose environment, listening on a free port
    let mut fg = service(&compose, "flashgate", &vars);
    local(&mut fg.env);
    assert_eq!(flag(&fg.command, "--listen"), Some("0.0.0.0:8080"));
    let addr = format!("127.0.0.1:{}", support::free_port());
    let at = fg
        .command
        .iter()
        .position(|w| w == "--listen")
        .expect("--listen");
    fg.command[at + 1] = addr.clone();
    let log = dir.path().join("flashgate.log");
    let child = flashgate_command(&fg, dir.path())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start flashgate");
    let mut server = Proc { child, log };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!("{COMPOSE}: flashgate exited ({status}):\n{}", server.log());
        }
        if TcpStream::connect(&addr).is_ok() && http(&addr, "GET", "/readyz", &[], "").0 == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "flashgate not ready in 30 s:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // a buyer reserves with the storefront key of .env.example
    let key = vars["FLASHGATE_API_KEYS"].split(',').next().expect("a key");
    let secret = key.rsplit(':').next().unwrap_or(key);
    let bearer = format!("Bearer {secret}");
    let max_qty = i64::from(flashgate::config::Config::default().max_qty_per_request);
    let reserve = |n: usize, qty: i64| {
        let body = format!(r#"{{"sku":"{sku}","qty":{qty},"user_id":"buyer-{n}"}}"#);
        let idem = format!("smoke-{n}");
        http(
            &addr,
            "POST",
            "/v1/reservations",
            &[
                ("Authorization", &bearer),
                ("Idempotency-Key", &idem),
                ("Content-Type", "application/json"),
            ],
            &body,
        )
    };
    let (status, body) = http(&addr, "POST", "/v1/reservations", &[], "{}");
    assert_eq!(status, 401, "no key, no hold: {body}");
    let (status, body) = reserve(0, 1);
    assert_eq!(status, 201, "first reserve: {body}\n{}", server.log());
    // the rest of the stock, then one unit more than there is
    let (mut left, mut n) = (stock - 1, 1);
    while left > 0 {
        let qty = left.min(max_qty);
        let (status, body) = reserve(n, qty);
        assert_eq!(status, 201, "reserve {qty} of the {left} left: {body}");
        left -= qty;
        n += 1;
    }
    let (status, body) = reserve(n, 1);
    assert_eq!(status, 409, "the last unit is gone: {body}");
    assert!(body.contains("sold_out"), "{body}");
    drop(server);
}

// ---------------------------------------------------------------------------------------
// helpers

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[track_caller]
fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

#[track_caller]
fn yaml(rel: &str) -> Yaml {
    serde_norway::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not valid YAML: {e}"))
}
