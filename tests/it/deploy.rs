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

use crate::support;

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
        .next_back()
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
// kubernetes

const K8S_BASE: &str = "deploy/kubernetes/base";
const ALERTS: &str = "prometheus/alerts.yml";
const PROMETHEUS_RULE: &str = "deploy/kubernetes/base/prometheusrule.yaml";

/// Runs a tool from the repository root; panics with its output unless it succeeds.
/// scripts/test.sh installs the tools (see scripts/deps.sh).
#[track_caller]
fn tool(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} ({e}); scripts/test.sh installs it"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{program} {}: {}\n{text}",
        args.join(" "),
        out.status
    );
    text
}

/// The base's resources, as kustomize would gather them: every file kustomization.yaml
/// lists, each document of it (kustomize itself is not installable here).
fn base_resources() -> Vec<(String, Yaml)> {
    let kustomization = yaml(&format!("{K8S_BASE}/kustomization.yaml"));
    assert_eq!(kustomization["kind"].as_str(), Some("Kustomization"));
    let files: Vec<String> = kustomization["resources"]
        .as_sequence()
        .expect("kustomization.yaml lists resources")
        .iter()
        .map(|r| format!("{K8S_BASE}/{}", r.as_str().expect("resource path")))
        .collect();
    // nothing in the directory is left out of the base by mistake
    let mut on_disk: Vec<String> = std::fs::read_dir(root().join(K8S_BASE))
        .expect("read base")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .map(|n| format!("{K8S_BASE}/{n}"))
        .collect();
    on_disk.sort();
    let mut listed = files.clone();
    listed.sort();
    assert_eq!(
        listed, on_disk,
        "{K8S_BASE}: files not in kustomization.yaml"
    );
    files
        .into_iter()
        .flat_map(|f| {
            let text = read(&f);
            serde_norway::Deserializer::from_str(&text)
                .map(|d| {
                    let v: Yaml =
                        serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{f}: {e}"));
                    (f.clone(), v)
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn find<'a>(resources: &'a [(String, Yaml)], kind: &str) -> &'a Yaml {
    resources
        .iter()
        .map(|(_, r)| r)
        .find(|r| r["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("{K8S_BASE}: no {kind}"))
}

#[test]
fn kubernetes_base_validates_against_the_kubernetes_schemas() {
    let resources = base_resources();
    let mut files: Vec<&str> = resources
        .iter()
        .filter(|(_, r)| {
            !r["apiVersion"]
                .as_str()
                .unwrap_or_default()
                .starts_with("monitoring.coreos.com/")
        })
        .map(|(f, _)| f.as_str())
        .collect();
    files.dedup();
    assert!(files.len() >= 6, "{files:?}");
    let mut args = vec!["-m", "kubernetes_validate", "--strict", "--quiet"];
    args.extend(files.iter().copied());
    let report = tool("python3", &args);
    // an unknown kind is only a warning to the tool: here it is a failure
    assert!(
        !report.contains("WARN") && !report.contains("ERROR"),
        "{report}"
    );
}

#[test]
fn kubernetes_deployment_probes_drains_and_runs_unprivileged() {
    let resources = base_resources();
    let deployment = find(&resources, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let containers = pod["containers"].as_sequence().expect("containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let probe = |name: &str| {
        c[name]["httpGet"]["path"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(probe("readinessProbe"), "/readyz");
    assert_eq!(probe("livenessProbe"), "/healthz");
    let port = c["ports"][0]["containerPort"].as_u64();
    assert_eq!(port, Some(8080));
    let args: Vec<&str> = c["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(args, ["serve", "--listen", "0.0.0.0:8080"]);

    // preStop pause, then the drain, then SIGKILL
    let pause: u64 = match c["lifecycle"]["preStop"]["exec"]["command"].as_sequence() {
        Some(cmd) => {
            assert_eq!(cmd[0].as_str(), Some("sleep"), "preStop: {cmd:?}");
            cmd[1]
                .as_str()
                .and_then(|s| s.parse().ok())
                .expect("sleep seconds")
        }
        None => c["lifecycle"]["preStop"]["sleep"]["seconds"]
            .as_u64()
            .expect("a preStop pause"),
    };
    assert!(
        pause >= 10,
        "preStop {pause} s: shorter than a load balancer's deregistration"
    );
    let configmap = find(&resources, "ConfigMap");
    let drain: u64 = configmap["data"]["FLASHGATE_DRAIN_SECONDS"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(flashgate::config::Config::default().drain_seconds);
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("grace period");
    assert!(
        grace > pause + drain,
        "terminationGracePeriodSeconds {grace} <= preStop {pause} + drain {drain}"
    );

    // config and keys come from the ConfigMap and the Secret, by name
    let secret = find(&resources, "Secret");
    let from: Vec<(&str, &str)> = c["envFrom"]
        .as_sequence()
        .expect("envFrom")
        .iter()
        .flat_map(|e| {
            [
                ("ConfigMap", e["configMapRef"]["name"].as_str()),
                ("Secret", e["secretRef"]["name"].as_str()),
            ]
        })
        .filter_map(|(k, n)| Some((k, n?)))
        .collect();
    assert!(from.contains(&("ConfigMap", configmap["metadata"]["name"].as_str().unwrap())));
    assert!(from.contains(&("Secret", secret["metadata"]["name"].as_str().unwrap())));
    for key in ["FLASHGATE_API_KEYS", "FLASHGATE_ADMIN_KEYS"] {
        assert!(secret["stringData"][key].is_string(), "Secret has {key}");
        assert!(
            configmap["data"][key].is_null(),
            "{key} is in the ConfigMap"
        );
    }
    // the placeholder keys are refused, so a forgotten Secret fails closed
    let placeholder = secret["stringData"]["FLASHGATE_API_KEYS"].as_str().unwrap();
    let config = flashgate::config::Config {
        api_keys: vec![placeholder.to_owned()],
        ..Default::default()
    };
    assert!(
        config.validate().is_err(),
        "placeholder key accepted: {placeholder}"
    );

    // resources, and nothing runs as root or gains privileges
    assert!(c["resources"]["requests"]["cpu"].is_string());
    assert!(c["resources"]["requests"]["memory"].is_string());
    assert!(c["resources"]["limits"]["memory"].is_string());
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    assert_ne!(pod["securityContext"]["runAsUser"].as_u64(), Some(0));
    let sc = &c["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(sc["capabilities"]["drop"][0].as_str(), Some("ALL"));
}

#[test]
fn kubernetes_service_budget_autoscaler_and_monitor_point_at_the_deployment() {
    let resources = base_resources();
    let deployment = find(&resources, "Deployment");
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let selects_pods = |selector: &Yaml, what: &str| {
        let m = selector
            .as_mapping()
            .unwrap_or_else(|| panic!("{what}: no selector"));
        assert!(!m.is_empty(), "{what}: empty selector");
        for (k, v) in m {
            assert_eq!(
                &pod_labels[k.as_str().unwrap()],
                v,
                "{what}: selects {k:?}={v:?}"
            );
        }
    };
    let service = find(&resources, "Service");
    selects_pods(&service["spec"]["selector"], "Service");
    // the Prometheus Operator names the job after the Service: the alerts' job
    assert_eq!(service["metadata"]["name"].as_str(), Some("flashgate"));
    let port_name = service["spec"]["ports"][0]["name"]
        .as_str()
        .expect("named port");
    let pdb = find(&resources, "PodDisruptionBudget");
    selects_pods(
        &pdb["spec"]["selector"]["matchLabels"],
        "PodDisruptionBudget",
    );
    let hpa = find(&resources, "HorizontalPodAutoscaler");
    assert_eq!(
        hpa["spec"]["scaleTargetRef"]["kind"].as_str(),
        Some("Deployment")
    );
    assert_eq!(
        hpa["spec"]["scaleTargetRef"]["name"],
        deployment["metadata"]["name"]
    );
    assert!(
        hpa["spec"]["minReplicas"].as_u64() >= Some(2),
        "one pod is no budget"
    );

    let monitor = find(&resources, "ServiceMonitor");
    assert_eq!(
        monitor["apiVersion"].as_str(),
        Some("monitoring.coreos.com/v1")
    );
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .expect("ServiceMonitor selector")
    {
        assert_eq!(&service["metadata"]["labels"][k.as_str().unwrap()], v);
    }
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"].as_str(), Some(port_name));
    assert_eq!(endpoint["path"].as_str(), Some("/metrics"));
}

#[test]
fn kubernetes_prometheus_rule_is_generated_from_the_alert_rules() {
    // the committed file is what the script writes now
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("prometheusrule.yaml");
    tool(
        "scripts/gen-prometheusrule.sh",
        &[out.to_str().expect("utf-8 path")],
    );
    let generated = std::fs::read_to_string(&out).expect("generated file");
    assert!(
        generated == read(PROMETHEUS_RULE),
        "{PROMETHEUS_RULE} is out of date: run scripts/gen-prometheusrule.sh"
    );
    // and it holds exactly the rules, in a PrometheusRule
    let rule = yaml(PROMETHEUS_RULE);
    assert_eq!(
        rule["apiVersion"].as_str(),
        Some("monitoring.coreos.com/v1")
    );
    assert_eq!(rule["kind"].as_str(), Some("PrometheusRule"));
    assert!(rule["metadata"]["name"].is_string());
    let alerts = yaml(ALERTS);
    assert!(alerts["groups"]
        .as_sequence()
        .is_some_and(|g| !g.is_empty()));
    assert_eq!(rule["spec"]["groups"], alerts["groups"]);
    assert_eq!(
        rule["spec"].as_mapping().map(|m| m.len()),
        Some(1),
        "spec holds only groups"
    );
}

// ---------------------------------------------------------------------------------------
// systemd

const UNIT: &str = "deploy/systemd/flashgate.service";

/// `Key=value` settings of a unit file's section (a key may repeat).
fn unit_settings(section: &str) -> Vec<(String, String)> {
    let mut current = String::new();
    let mut out = Vec::new();
    for line in read(UNIT).lines().map(str::trim) {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.to_owned();
        } else if current == section {
            let (k, v) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("{UNIT}: {line}"));
            out.push((k.to_owned(), v.to_owned()));
        }
    }
    out
}

#[test]
fn systemd_unit_verifies_is_hardened_and_outlasts_the_drain() {
    // systemd's own check, with ExecStart pointed at the binary this build made (it
    // checks the program exists); unknown keys are only warnings to it: none allowed
    let dir = tempfile::tempdir().expect("temp dir");
    let unit = dir.path().join("flashgate.service");
    let text = read(UNIT).replace("/usr/local/bin/flashgate", env!("CARGO_BIN_EXE_flashgate"));
    std::fs::write(&unit, text).expect("write unit");
    let report = tool(
        "systemd-analyze",
        &["verify", unit.to_str().expect("utf-8 path")],
    );
    assert!(report.trim().is_empty(), "systemd-analyze verify: {report}");

    let service = unit_settings("Service");
    let get = |key: &str| {
        service
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .next_back()
    };
    for (key, value) in [
        ("DynamicUser", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("KillSignal", "SIGTERM"),
    ] {
        assert_eq!(get(key), Some(value), "{UNIT}: {key}");
    }
    let exec = get("ExecStart").expect("ExecStart");
    assert!(exec.contains(" serve "), "{UNIT}: {exec}");

    let defaults = flashgate::config::Config::default();
    let nofile: usize = get("LimitNOFILE")
        .and_then(|v| v.parse().ok())
        .expect("LimitNOFILE");
    assert!(
        nofile > defaults.max_connections + 1000,
        "{UNIT}: LimitNOFILE {nofile} leaves no room above max_connections {}",
        defaults.max_connections
    );
    let drain: u64 = service
        .iter()
        .filter(|(k, _)| k == "Environment")
        .find_map(|(_, v)| v.strip_prefix("FLASHGATE_DRAIN_SECONDS="))
        .map_or(defaults.drain_seconds, |v| {
            v.parse().expect("drain seconds")
        });
    let stop: u64 = get("TimeoutStopSec")
        .and_then(|v| v.parse().ok())
        .expect("TimeoutStopSec in seconds");
    assert!(
        stop > drain + 5,
        "{UNIT}: TimeoutStopSec {stop} s does not outlast the {drain} s drain"
    );
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
