//! The observability and container files agree with the code and with each other,
//! checked without Docker, Prometheus or Grafana:
//!
//! - every `flashgate_*` metric the Grafana dashboard and the Prometheus alert rules
//!   query is registered by `flashgate::metrics::Metrics` (names read from its rendered
//!   `# TYPE` lines, not from a list kept here), so a renamed metric fails this test
//!   instead of blanking a panel or silencing an alert mid-sale;
//! - every path the Dockerfile, docker-compose.yml and the Prometheus and Grafana
//!   provisioning refer to exists in the repository, the image build copies everything
//!   the build reads, and the containers agree on the port;
//! - Prometheus's own `promtool` checks the alert rules, runs their unit tests
//!   (`prometheus/alerts.test.yml`: each alert fires, and stays quiet), parses every
//!   dashboard query and checks `prometheus/prometheus.yml`; every alert names a
//!   runbook section;
//! - the dashboard draws rates as rates and durations as durations.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use flashgate::metrics::Metrics;

use crate::support;
use serde_json::Value as Json;
use serde_norway::Value as Yaml;

const DASHBOARD: &str = "grafana/dashboards/flashgate-overview.json";
const ALERTS: &str = "prometheus/alerts.yml";
const PROMETHEUS: &str = "prometheus/prometheus.yml";
const DATASOURCES: &str = "grafana/provisioning/datasources/prometheus.yml";
const DASHBOARD_PROVIDERS: &str = "grafana/provisioning/dashboards/flashgate.yml";
const COMPOSE: &str = "docker-compose.yml";
const DOCKERFILE: &str = "Dockerfile";
/// Where the Grafana image reads provisioning files (`GF_PATHS_PROVISIONING`).
const GRAFANA_PROVISIONING: &str = "/etc/grafana/provisioning";
/// The port the service listens on inside its container.
const PORT: &str = "8080";

// ---------------------------------------------------------------------------------------
// (a) metric names

/// Metric families the service registers, name -> type, read from the `# TYPE` lines of
/// a rendered page. A labelled metric is only rendered once it has a series, so every
/// recording method is called once first; a new labelled metric needs its call here.
fn registered_metrics() -> BTreeMap<String, String> {
    let m = Metrics::new(8);
    m.observe_http("reserve", 200, Duration::from_millis(1));
    m.observe_script("reserve", Duration::from_micros(300));
    m.outcome("held");
    m.redis_error("timeout");
    assert!(m.set_sku("probe", 10, 1, 1, 0));
    m.set_waitlist("probe", 0);
    m.set_sale("probe", 0, 0);
    let families: BTreeMap<String, String> = m
        .render()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_owned(), kind.to_owned()))
        .collect();
    assert!(
        families.len() >= 10,
        "suspiciously few metric families rendered: {families:?}"
    );
    families
}

/// Every `flashgate_*` identifier in a PromQL expression.
fn metric_names_in(expr: &str) -> Vec<String> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("flashgate_") {
        let preceded_by_ident = rest[..at].chars().next_back().is_some_and(is_ident);
        let tail = &rest[at..];
        let len = tail.find(|c: char| !is_ident(c)).unwrap_or(tail.len());
        if !preceded_by_ident {
            names.push(tail[..len].to_owned());
        }
        rest = &tail[len..];
    }
    names
}

/// The registered family a queried name belongs to: itself, or the histogram whose
/// `_bucket` / `_sum` / `_count` series it is.
fn family_of<'a>(name: &'a str, registered: &BTreeMap<String, String>) -> Option<&'a str> {
    if registered.contains_key(name) {
        return Some(name);
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = name.strip_suffix(suffix)?;
        (registered.get(base).map(String::as_str) == Some("histogram")).then_some(base)
    })
}

/// Checks every `(where, expr)` queries only registered metrics, and that together they
/// query at least one (a parser that finds nothing would pass vacuously).
#[track_caller]
fn assert_queries_registered(file: &str, exprs: &[(String, String)]) {
    assert_queries_in(file, exprs, &registered_metrics());
}

#[track_caller]
fn assert_queries_in(
    file: &str,
    exprs: &[(String, String)],
    registered: &BTreeMap<String, String>,
) {
    let mut used = BTreeSet::new();
    let mut unknown = Vec::new();
    for (place, expr) in exprs {
        for name in metric_names_in(expr) {
            match family_of(&name, registered) {
                Some(family) => {
                    used.insert(family.to_owned());
                }
                None => unknown.push(format!("{place}: {name}")),
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "{file} queries metrics that flashgate::metrics does not register:\n  {}\nregistered: {:?}",
        unknown.join("\n  "),
        registered.keys().collect::<Vec<_>>()
    );
    assert!(!used.is_empty(), "no flashgate_* metric found in {file}");
}

/// Every string under an `expr`, `query` or `definition` key of the dashboard (panel
/// targets and template variables), with the title of the panel or variable it is in.
fn dashboard_queries(value: &Json, place: &str, out: &mut Vec<(String, String)>) {
    match value {
        Json::Object(map) => {
            let place = map
                .get("title")
                .or_else(|| map.get("name"))
                .and_then(Json::as_str)
                .unwrap_or(place);
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr" | "query" | "definition", Json::String(s)) => {
                        out.push((place.to_owned(), s.clone()));
                    }
                    _ => dashboard_queries(v, place, out),
                }
            }
        }
        Json::Array(items) => items.iter().for_each(|v| dashboard_queries(v, place, out)),
        _ => {}
    }
}

#[test]
fn dashboard_queries_only_registered_metrics() {
    let dashboard = json(DASHBOARD);
    let mut exprs = Vec::new();
    dashboard_queries(&dashboard, "dashboard", &mut exprs);
    assert_queries_registered(DASHBOARD, &exprs);
}

#[test]
fn alert_rules_query_registered_metrics_and_say_what_to_do() {
    let alerts = yaml(ALERTS);
    let mut exprs = Vec::new();
    let groups = seq(&alerts["groups"], "groups");
    assert!(!groups.is_empty(), "{ALERTS}: no rule groups");
    for group in groups {
        for rule in seq(&group["rules"], "rules") {
            let name = rule["alert"]
                .as_str()
                .or_else(|| rule["record"].as_str())
                .unwrap_or_else(|| panic!("{ALERTS}: rule without alert or record: {rule:?}"));
            let expr = text(&rule["expr"], &format!("{name}: expr"));
            exprs.push((name.to_owned(), expr.to_owned()));
            if rule["alert"].is_string() {
                for annotation in ["summary", "description"] {
                    let a = text(
                        &rule["annotations"][annotation],
                        &format!("{name}: annotation"),
                    );
                    assert!(
                        !a.trim().is_empty(),
                        "{ALERTS}: {name} has an empty {annotation}"
                    );
                }
            }
        }
    }
    assert_queries_registered(ALERTS, &exprs);
}

#[test]
fn dashboard_uses_the_provisioned_datasource() {
    let provisioned = yaml(DATASOURCES);
    let datasources = seq(&provisioned["datasources"], "datasources");
    let prometheus = datasources
        .iter()
        .find(|d| d["type"].as_str() == Some("prometheus"))
        .expect("a prometheus datasource is provisioned");
    let uid = text(&prometheus["uid"], "datasource uid");

    let dashboard = json(DASHBOARD);
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("dashboard has template variables");
    let ds_var = variables
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("dashboard has a datasource variable");
    assert_eq!(ds_var["query"], "prometheus", "datasource variable type");
    assert_eq!(
        ds_var["current"]["value"].as_str(),
        Some(uid),
        "the datasource variable defaults to the provisioned datasource"
    );
    let reference = format!("${{{}}}", ds_var["name"].as_str().expect("variable name"));

    // Every datasource reference of a panel, target or variable goes through the variable.
    let mut refs = Vec::new();
    datasource_refs(&dashboard["panels"], &mut refs);
    datasource_refs(&dashboard["templating"], &mut refs);
    assert!(!refs.is_empty(), "no datasource references found");
    let stray: Vec<_> = refs.iter().filter(|r| **r != reference).collect();
    assert!(stray.is_empty(), "panels not using {reference}: {stray:?}");
}

fn datasource_refs(value: &Json, out: &mut Vec<String>) {
    match value {
        Json::Object(map) => {
            if let Some(ds) = map.get("datasource") {
                out.push(ds["uid"].as_str().unwrap_or("<no uid>").to_owned());
            }
            map.values().for_each(|v| datasource_refs(v, out));
        }
        Json::Array(items) => items.iter().for_each(|v| datasource_refs(v, out)),
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------
// (b) paths

/// One instruction of the Dockerfile, continuation lines joined.
struct Instruction {
    keyword: String,
    args: String,
}

fn dockerfile() -> Vec<Instruction> {
    let text = read(DOCKERFILE);
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if current.is_empty() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                let (keyword, args) = current
                    .split_once(char::is_whitespace)
                    .unwrap_or((&current, ""));
                out.push(Instruction {
                    keyword: keyword.to_ascii_uppercase(),
                    args: args.trim().to_owned(),
                });
                current.clear();
            }
        }
    }
    out
}

/// Arguments of an instruction in shell form or JSON (exec) form.
fn words(args: &str) -> Vec<String> {
    if args.starts_with('[') {
        serde_json::from_str(args)
            .unwrap_or_else(|e| panic!("{DOCKERFILE}: bad JSON form {args}: {e}"))
    } else {
        args.split_whitespace().map(str::to_owned).collect()
    }
}

/// `(sources, destination)` of every COPY/ADD from the build context (not `--from`).
fn context_copies() -> Vec<(Vec<String>, String)> {
    dockerfile()
        .into_iter()
        .filter(|i| i.keyword == "COPY" || i.keyword == "ADD")
        .filter_map(|i| {
            let words = words(&i.args);
            if words.iter().any(|w| w.starts_with("--from")) {
                return None;
            }
            let mut paths: Vec<String> =
                words.into_iter().filter(|w| !w.starts_with("--")).collect();
            let dest = paths.pop().expect("COPY has a destination");
            Some((paths, dest))
        })
        .collect()
}

/// Repository-relative, normalised (`a/./b/../c` -> `a/c`).
fn normalise(path: &Path) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                parts.pop();
            }
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            _ => {}
        }
    }
    parts.join("/")
}

fn is_under(path: &str, dir: &str) -> bool {
    path == dir || path.starts_with(&format!("{dir}/"))
}

#[test]
fn docker_build_copies_everything_the_build_reads() {
    let copies = context_copies();
    assert!(
        !copies.is_empty(),
        "{DOCKERFILE} copies nothing from the build context"
    );
    let mut copied = Vec::new();
    for (sources, dest) in &copies {
        for source in sources {
            let rel = normalise(Path::new(source));
            assert!(
                root().join(&rel).exists(),
                "{DOCKERFILE}: COPY source {source} does not exist"
            );
            // Keep the repository layout, or relative include_str! paths break.
            let dest = dest.trim_start_matches("./").trim_end_matches('/');
            assert!(
                dest.is_empty() || dest == "." || dest == rel,
                "{DOCKERFILE}: COPY {source} {dest} moves it out of the repository layout"
            );
            copied.push(rel);
        }
    }
    let covered = |path: &str| copied.iter().any(|c| is_under(path, c));

    // Cargo needs the manifests, every workspace member and the root package's targets.
    let manifest: toml::Table = toml::from_str(&read("Cargo.toml")).expect("Cargo.toml parses");
    let mut needed: Vec<String> = vec!["Cargo.toml".into(), "Cargo.lock".into()];
    if let Some(members) = manifest
        .get("workspace")
        .and_then(|w| w.get("members"))
        .and_then(|m| m.as_array())
    {
        needed.extend(
            members
                .iter()
                .filter_map(|m| m.as_str())
                .filter(|m| *m != ".")
                .map(|m| normalise(Path::new(m))),
        );
    }
    if let Some(path) = manifest
        .get("lib")
        .and_then(|l| l.get("path"))
        .and_then(|p| p.as_str())
    {
        needed.push(normalise(Path::new(path)));
    }
    for (kind, dir) in [
        ("bin", "src/bin"),
        ("test", "tests"),
        ("bench", "benches"),
        ("example", "examples"),
    ] {
        for target in manifest
            .get(kind)
            .and_then(|t| t.as_array())
            .into_iter()
            .flatten()
        {
            let name = target
                .get("name")
                .and_then(|n| n.as_str())
                .unwrap_or_default();
            let path = match target.get("path").and_then(|p| p.as_str()) {
                Some(p) => normalise(Path::new(p)),
                None if root().join(dir).join(format!("{name}.rs")).exists() => {
                    format!("{dir}/{name}.rs")
                }
                None => format!("{dir}/{name}"),
            };
            needed.push(path);
        }
    }
    if root().join("build.rs").exists() {
        needed.push("build.rs".into());
    }
    // Files compiled into the binary.
    needed.extend(included_files(&root().join("src")));

    let missing: Vec<_> = needed.iter().filter(|p| !covered(p)).collect();
    assert!(
        missing.is_empty(),
        "{DOCKERFILE} does not COPY what the build reads: {missing:?} (copied: {copied:?})"
    );

    // .dockerignore must not drop what is copied.
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).unwrap_or_default();
    for pattern in ignore.lines().map(str::trim) {
        if pattern.is_empty() || pattern.starts_with('#') || pattern.starts_with('!') {
            continue;
        }
        let pattern = pattern.trim_matches('/');
        for c in &copied {
            let hit = match pattern.strip_prefix("**/") {
                Some(name) if !name.contains(['*', '?', '[']) => {
                    c.split('/').any(|part| part == name)
                }
                _ if pattern.contains(['*', '?', '[']) => false,
                _ => is_under(c, pattern),
            };
            assert!(
                !hit,
                ".dockerignore pattern {pattern} excludes COPY source {c}"
            );
        }
    }
}

/// Repository-relative paths named by `include_str!` / `include_bytes!` under `dir`.
fn included_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            out.extend(included_files(&path));
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let source = std::fs::read_to_string(&path).expect("read source");
        for mac in ["include_str!(", "include_bytes!("] {
            let mut rest = source.as_str();
            while let Some(at) = rest.find(mac) {
                rest = &rest[at + mac.len()..];
                let args = balanced(rest);
                let literals = string_literals(args);
                let joined: String = literals
                    .iter()
                    .filter(|l| *l != "CARGO_MANIFEST_DIR")
                    .map(String::as_str)
                    .collect();
                let base = if args.contains("CARGO_MANIFEST_DIR") {
                    root().to_path_buf()
                } else {
                    path.parent().expect("file has a dir").to_path_buf()
                };
                let full = base.join(joined.trim_start_matches('/'));
                let rel = full.strip_prefix(root()).unwrap_or(&full);
                out.push(normalise(rel));
            }
        }
    }
    out
}

/// The text up to the parenthesis closing an already opened one.
fn balanced(s: &str) -> &str {
    let mut depth = 1;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return &s[..i];
                }
            }
            _ => {}
        }
    }
    s
}

fn string_literals(s: &str) -> Vec<String> {
    s.split('"').skip(1).step_by(2).map(str::to_owned).collect()
}

/// Bind mounts of one compose service: (container path, repository-relative host path).
fn mounts(service: &Yaml) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for volume in service["volumes"].as_sequence().into_iter().flatten() {
        let (source, target) = match volume {
            Yaml::String(short) => {
                let mut parts = short.split(':');
                let source = parts.next().unwrap_or_default().to_owned();
                let target = parts.next().unwrap_or_default().to_owned();
                (source, target)
            }
            long => (
                long["source"].as_str().unwrap_or_default().to_owned(),
                long["target"].as_str().unwrap_or_default().to_owned(),
            ),
        };
        if source.starts_with('.') {
            out.push((target, normalise(Path::new(&source))));
        }
    }
    out
}

/// The repository path a container path of `service` is mounted from, if any.
fn host_path(mounts: &[(String, String)], container_path: &str) -> Option<String> {
    mounts
        .iter()
        .filter(|(target, _)| is_under(container_path, target.trim_end_matches('/')))
        .max_by_key(|(target, _)| target.len())
        .map(|(target, host)| {
            let rest = container_path[target.trim_end_matches('/').len()..].trim_start_matches('/');
            if rest.is_empty() {
                host.clone()
            } else {
                format!("{host}/{rest}")
            }
        })
}

#[track_caller]
fn assert_mounted_file(
    service: &str,
    mounts: &[(String, String)],
    container_path: &str,
    expected: &str,
) {
    let host = host_path(mounts, container_path).unwrap_or_else(|| {
        panic!("{COMPOSE}: {service} reads {container_path}, which no bind mount provides")
    });
    assert!(
        root().join(&host).exists(),
        "{COMPOSE}: {service}: {host} does not exist"
    );
    assert_eq!(
        host, expected,
        "{COMPOSE}: {service} reads {container_path} from {host}"
    );
}

#[test]
fn compose_mounts_and_provisioning_paths_exist() {
    let compose = yaml(COMPOSE);
    let services = compose["services"]
        .as_mapping()
        .expect("compose has services");
    let service_names: BTreeSet<&str> = services.keys().filter_map(Yaml::as_str).collect();
    let declared_volumes: BTreeSet<&str> = compose["volumes"]
        .as_mapping()
        .map(|m| m.keys().filter_map(Yaml::as_str).collect())
        .unwrap_or_default();

    for (name, service) in services {
        let name = name.as_str().expect("service name");
        if let Some(build) = service.get("build") {
            let context = build
                .as_str()
                .or_else(|| build["context"].as_str())
                .unwrap_or(".");
            assert!(
                root().join(context).is_dir(),
                "{COMPOSE}: {name}: build context {context} missing"
            );
            let dockerfile = build["dockerfile"].as_str().unwrap_or("Dockerfile");
            assert!(
                root().join(context).join(dockerfile).is_file(),
                "{COMPOSE}: {name}: {dockerfile} missing"
            );
        }
        for volume in service["volumes"].as_sequence().into_iter().flatten() {
            let source = volume.as_str().map_or_else(
                || volume["source"].as_str().unwrap_or_default(),
                |s| s.split(':').next().unwrap_or_default(),
            );
            if source.starts_with('.') {
                assert!(
                    root().join(source).exists(),
                    "{COMPOSE}: {name} mounts {source}, which does not exist"
                );
            } else if !source.starts_with('/') {
                assert!(
                    declared_volumes.contains(source),
                    "{COMPOSE}: {name}: volume {source} is not declared"
                );
            }
        }
        for dep in service["depends_on"].as_sequence().into_iter().flatten() {
            let dep = dep.as_str().unwrap_or_default();
            assert!(
                service_names.contains(dep),
                "{COMPOSE}: {name} depends on unknown {dep}"
            );
        }
        for dep in service["depends_on"]
            .as_mapping()
            .into_iter()
            .flat_map(|m| m.keys())
        {
            let dep = dep.as_str().unwrap_or_default();
            assert!(
                service_names.contains(dep),
                "{COMPOSE}: {name} depends on unknown {dep}"
            );
        }
    }

    // Prometheus: its config file and rule files come from the repository.
    let prometheus = &compose["services"]["prometheus"];
    let prom_mounts = mounts(prometheus);
    let config_file = prometheus["command"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(Yaml::as_str)
        .find_map(|arg| arg.strip_prefix("--config.file="))
        .unwrap_or("/etc/prometheus/prometheus.yml");
    assert_mounted_file("prometheus", &prom_mounts, config_file, PROMETHEUS);
    let prom_config = yaml(PROMETHEUS);
    let rule_files: Vec<&str> = seq(&prom_config["rule_files"], "rule_files")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(rule_files.len(), 1, "{PROMETHEUS}: one rule file expected");
    assert_mounted_file("prometheus", &prom_mounts, rule_files[0], ALERTS);
    for job in seq(&prom_config["scrape_configs"], "scrape_configs") {
        for sc in seq(&job["static_configs"], "static_configs") {
            for target in seq(&sc["targets"], "targets") {
                let target = target.as_str().expect("target is a string");
                let (host, port) = target.split_once(':').expect("target is host:port");
                assert!(
                    service_names.contains(host),
                    "{PROMETHEUS}: scrapes {target}, not a compose service"
                );
                if host == "flashgate" {
                    assert_eq!(
                        port, PORT,
                        "{PROMETHEUS}: scrapes flashgate on the wrong port"
                    );
                }
            }
        }
    }

    // Grafana: provisioning files, the dashboards they load, the home dashboard.
    let grafana = &compose["services"]["grafana"];
    let graf_mounts = mounts(grafana);
    for (sub, file) in [
        ("datasources", DATASOURCES),
        ("dashboards", DASHBOARD_PROVIDERS),
    ] {
        let file_name = Path::new(file)
            .file_name()
            .expect("file name")
            .to_string_lossy();
        assert_mounted_file(
            "grafana",
            &graf_mounts,
            &format!("{GRAFANA_PROVISIONING}/{sub}/{file_name}"),
            file,
        );
    }
    for provider in seq(&yaml(DASHBOARD_PROVIDERS)["providers"], "providers") {
        let path = text(&provider["options"]["path"], "provider options.path");
        let host = host_path(&graf_mounts, path)
            .unwrap_or_else(|| panic!("{DASHBOARD_PROVIDERS}: {path} is not mounted into grafana"));
        assert!(
            root().join(&host).is_dir(),
            "{COMPOSE}: grafana: {host} is not a directory"
        );
        assert!(
            is_under(DASHBOARD, &host),
            "{DASHBOARD_PROVIDERS}: {path} ({host}) does not hold {DASHBOARD}"
        );
    }
    if let Some(home) = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"].as_str()
    {
        assert_mounted_file("grafana", &graf_mounts, home, DASHBOARD);
    }
    for ds in seq(&yaml(DATASOURCES)["datasources"], "datasources") {
        let url = text(&ds["url"], "datasource url");
        let host = url
            .split("://")
            .nth(1)
            .and_then(|r| r.split([':', '/']).next())
            .unwrap_or_default();
        assert!(
            service_names.contains(host),
            "{DATASOURCES}: {url} is not a compose service"
        );
    }
}

#[test]
fn image_compose_and_scrape_agree_on_the_port() {
    let instructions = dockerfile();
    let args = |keyword: &str| -> Vec<String> {
        instructions
            .iter()
            .filter(|i| i.keyword == keyword)
            .map(|i| i.args.clone())
            .collect()
    };
    assert_eq!(args("EXPOSE"), [PORT], "{DOCKERFILE}: EXPOSE");
    let cmd = words(args("CMD").last().expect("CMD"));
    let listen = cmd
        .windows(2)
        .find(|w| w[0] == "--listen")
        .map(|w| w[1].clone())
        .expect("CMD passes --listen");
    assert_eq!(
        listen,
        format!("0.0.0.0:{PORT}"),
        "{DOCKERFILE}: CMD listens elsewhere"
    );
    let healthcheck = args("HEALTHCHECK").join(" ");
    assert!(
        healthcheck.contains(&format!("/{PORT}")) && healthcheck.contains("/healthz"),
        "{DOCKERFILE}: HEALTHCHECK does not probe /healthz on {PORT}: {healthcheck}"
    );

    let compose = yaml(COMPOSE);
    let ports = seq(
        &compose["services"]["flashgate"]["ports"],
        "flashgate ports",
    );
    assert!(
        ports
            .iter()
            .filter_map(Yaml::as_str)
            .any(|p| p.ends_with(&format!(":{PORT}"))),
        "{COMPOSE}: flashgate does not publish container port {PORT}"
    );
}

// ---------------------------------------------------------------------------------------
// helpers

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[track_caller]
fn read(rel: &str) -> String {
    let path: PathBuf = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

#[track_caller]
fn json(rel: &str) -> Json {
    serde_json::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not valid JSON: {e}"))
}

#[track_caller]
fn yaml(rel: &str) -> Yaml {
    serde_norway::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not valid YAML: {e}"))
}

#[track_caller]
fn seq<'a>(value: &'a Yaml, what: &str) -> &'a [Yaml] {
    value
        .as_sequence()
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("{what}: expected a list, got {value:?}"))
}

#[track_caller]
fn text<'a>(value: &'a Yaml, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, got {value:?}"))
}

/// The metric names every query of the dashboard and the alert rules uses.
fn all_queries() -> Vec<(String, String)> {
    let mut exprs = Vec::new();
    dashboard_queries(&json(DASHBOARD), "dashboard", &mut exprs);
    for group in seq(&yaml(ALERTS)["groups"], "groups") {
        for rule in seq(&group["rules"], "rules") {
            let name = rule["alert"]
                .as_str()
                .or_else(|| rule["record"].as_str())
                .unwrap_or("rule");
            exprs.push((name.to_owned(), text(&rule["expr"], name).to_owned()));
        }
    }
    exprs
}

/// The running service, after some traffic, exposes every metric the
/// dashboard and the alert rules query (names from a real scrape of /metrics).
#[tokio::test]
async fn a_live_scrape_has_every_metric_the_dashboard_and_alerts_use() {
    use hyper::StatusCode;
    let redis = support::RedisServer::start();
    let app = support::spawn_app(support::test_config(&redis)).await;
    app.preload("scrape", 3, 2).await;
    let a = app.reserve("s1", "scrape", 1, "u1").await;
    let b = app.reserve("s2", "scrape", 2, "u2").await;
    assert_eq!(
        (a.status, b.status),
        (StatusCode::CREATED, StatusCode::CREATED)
    );
    assert_eq!(
        app.reserve("s3", "scrape", 1, "u3").await.code(),
        "sold_out"
    );
    app.action(a.body["reservation_id"].as_str().unwrap(), "confirm")
        .await;
    app.action(b.body["reservation_id"].as_str().unwrap(), "release")
        .await;
    app.get("/v1/skus/scrape").await;
    app.get("/readyz").await;
    // a SKU with a sale window: its time to open and pre-queue (the promoter's)
    let soon = flashgate::inventory::now_ms() + 3_600_000;
    app.state
        .inventory
        .preload_with(
            &flashgate::domain::Sku::parse("scheduled").unwrap(),
            flashgate::inventory::PreloadSpec {
                stock: 1,
                shards: 1,
                force: false,
                max_per_user: None,
                window: flashgate::inventory::Window {
                    opens_at_ms: Some(soon),
                    closes_at_ms: None,
                },
            },
        )
        .await
        .expect("preload with a window");
    // per-SKU gauges come from the sweeper's chores (once a second)
    assert!(
        support::eventually(Duration::from_secs(10), || async {
            app.get("/metrics")
                .await
                .body
                .as_str()
                .unwrap_or("")
                .contains(r#"flashgate_sku_available_units{sku="scrape"}"#)
        })
        .await
    );
    assert!(
        support::eventually(Duration::from_secs(10), || async {
            app.get("/metrics")
                .await
                .body
                .as_str()
                .unwrap_or("")
                .contains(r#"flashgate_sku_seconds_to_open{sku="scheduled"}"#)
        })
        .await
    );
    let page = app
        .get("/metrics")
        .await
        .body
        .as_str()
        .unwrap_or("")
        .to_owned();
    let scraped: BTreeMap<String, String> = page
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_owned(), kind.to_owned()))
        .collect();
    assert!(
        page.contains(r#"flashgate_reservation_outcomes_total{outcome="held"} 2"#),
        "{page}"
    );
    assert_queries_in("dashboard + alerts (live scrape)", &all_queries(), &scraped);
}

// ---------------------------------------------------------------------------------------
// (c) Prometheus's own tools on the alert rules

const ALERT_TESTS: &str = "prometheus/alerts.test.yml";
const RUNBOOK: &str = "docs/operations.md";

/// Runs a tool from the repository root; panics with its output unless it succeeds.
/// The tools are installed by scripts/test.sh (Debian's `prometheus` package has
/// promtool; `pip install kubernetes-validate`).
#[track_caller]
fn tool(program: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(program)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} ({e}); scripts/test.sh installs it (see scripts/deps.sh)")
        });
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

/// Alert names of the rules file.
fn alert_names() -> Vec<String> {
    seq(&yaml(ALERTS)["groups"], "groups")
        .iter()
        .flat_map(|g| seq(&g["rules"], "rules").iter())
        .filter_map(|r| r["alert"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn promtool_checks_the_rules_and_their_unit_tests_pass() {
    tool("promtool", &["check", "rules", ALERTS]);
    let report = tool("promtool", &["test", "rules", ALERT_TESTS]);
    assert!(report.contains("SUCCESS"), "{report}");

    // every alert has a case where it fires and one where it stays quiet
    let tests = yaml(ALERT_TESTS);
    let files: Vec<&str> = seq(&tests["rule_files"], "rule_files")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(files, ["alerts.yml"], "{ALERT_TESTS} tests {ALERTS}");
    let (mut fires, mut quiet) = (BTreeSet::new(), BTreeSet::new());
    for case in seq(&tests["tests"], "tests") {
        for check in seq(&case["alert_rule_test"], "alert_rule_test") {
            let name = text(&check["alertname"], "alertname").to_owned();
            match check["exp_alerts"].as_sequence() {
                Some(expected) if !expected.is_empty() => fires.insert(name),
                _ => quiet.insert(name),
            };
        }
    }
    for alert in alert_names() {
        assert!(
            fires.contains(&alert),
            "{ALERT_TESTS}: no case where {alert} fires"
        );
        assert!(
            quiet.contains(&alert),
            "{ALERT_TESTS}: no case where {alert} stays quiet"
        );
    }
}

/// GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces
/// to dashes.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn every_alert_has_a_runbook_section_and_pages_only_when_people_must_act() {
    let anchors: BTreeSet<String> = read(RUNBOOK)
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|l| anchor(l.trim_start_matches('#')))
        .collect();
    let mut absent_target = false;
    for group in seq(&yaml(ALERTS)["groups"], "groups") {
        for rule in seq(&group["rules"], "rules") {
            let Some(name) = rule["alert"].as_str() else {
                continue;
            };
            let url = text(
                &rule["annotations"]["runbook_url"],
                &format!("{name}: runbook_url"),
            );
            let (file, fragment) = url
                .split_once('#')
                .unwrap_or_else(|| panic!("{name}: runbook_url {url} has no #section"));
            assert_eq!(file, RUNBOOK, "{name}: runbook_url {url}");
            assert!(
                anchors.contains(fragment),
                "{name}: {RUNBOOK} has no heading for #{fragment}"
            );
            let severity = text(&rule["labels"]["severity"], &format!("{name}: severity"));
            assert!(
                ["critical", "warning"].contains(&severity),
                "{name}: severity {severity}"
            );
            let expr = text(&rule["expr"], name);
            absent_target |= expr
                .replace(' ', "")
                .contains(r#"absent(up{job="flashgate"})"#);
        }
    }
    assert!(
        absent_target,
        "{ALERTS}: no alert on absent(up{{job=\"flashgate\"}}): with no target, nothing fires"
    );
}

// ---------------------------------------------------------------------------------------
// (d) dashboard units

/// Grafana's time units: a series drawn in one of these is read as a duration.
const TIME_UNITS: &[&str] = &[
    "ns",
    "µs",
    "ms",
    "s",
    "m",
    "h",
    "d",
    "dtdurations",
    "dtdurationms",
];

/// The unit each target of a panel is drawn in: the panel's default, or an override
/// matching its refId.
fn target_units(panel: &Json) -> Vec<(String, String, String)> {
    let default = panel["fieldConfig"]["defaults"]["unit"]
        .as_str()
        .unwrap_or("short");
    let overrides = panel["fieldConfig"]["overrides"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let title = panel["title"].as_str().unwrap_or("?");
    panel["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            let ref_id = t["refId"].as_str().unwrap_or_default();
            let unit = overrides
                .iter()
                .filter(|o| {
                    o["matcher"]["id"] == "byFrameRefID" && o["matcher"]["options"] == ref_id
                })
                .flat_map(|o| o["properties"].as_array().cloned().unwrap_or_default())
                .filter(|p| p["id"] == "unit")
                .filter_map(|p| p["value"].as_str().map(str::to_owned))
                .next_back()
                .unwrap_or_else(|| default.to_owned());
            (
                format!("{title} / {ref_id}"),
                t["expr"].as_str().unwrap_or_default().to_owned(),
                unit,
            )
        })
        .collect()
}

#[test]
fn dashboard_draws_rates_as_rates_and_durations_as_durations() {
    let dashboard = json(DASHBOARD);
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for (place, expr, unit) in target_units(panel) {
            let quantile = expr.contains("histogram_quantile");
            let rate = !quantile && (expr.contains("rate(") || expr.contains("increase("));
            let seconds_gauge = !quantile && !rate && expr.contains("_seconds");
            if rate {
                assert!(
                    !TIME_UNITS.contains(&unit.as_str()),
                    "{DASHBOARD}: {place} plots a rate ({expr}) in the time unit {unit}"
                );
            }
            if quantile || seconds_gauge {
                assert_eq!(unit, "s", "{DASHBOARD}: {place} plots seconds ({expr})");
            }
            checked += 1;
        }
    }
    assert!(checked > 10, "only {checked} targets found");
}

/// A loaded SKU has a waitlist length from the start (0), not only once a buyer has
/// joined its waitlist: a sale without a waitlist yet still draws the panel and
/// evaluates the queries on it.
#[tokio::test]
async fn the_waitlist_gauge_exists_from_preload_onward() {
    let redis = support::RedisServer::start();
    let app = support::spawn_app(support::test_config(&redis)).await;
    app.preload("fresh", 5, 2).await;
    let series = r#"flashgate_sku_waitlist_length{sku="fresh"} 0"#;
    let found = support::eventually(Duration::from_secs(10), || async {
        app.get("/metrics")
            .await
            .body
            .as_str()
            .unwrap_or("")
            .contains(series)
    })
    .await;
    let page = app.get("/metrics").await.body;
    assert!(found, "no `{series}` on /metrics after preload:\n{page}");
}

/// promtool parses every dashboard query (Grafana's variables replaced by values it
/// would send), as recording rules: a PromQL syntax error fails here, not on the
/// wall screen mid-sale. And the shipped Prometheus config checks with its rule file.
#[test]
fn promtool_parses_every_dashboard_query_and_the_prometheus_config() {
    let mut exprs = Vec::new();
    dashboard_queries(&json(DASHBOARD), "dashboard", &mut exprs);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let mut n = 0;
    for (place, expr) in &exprs {
        if !expr.contains("flashgate_") {
            continue; // the datasource variable's query is not PromQL
        }
        // Grafana's label_values(metric, label) queries the metric's series
        let expr = match expr.strip_prefix("label_values(") {
            Some(args) => args.split(',').next().unwrap_or_default().to_owned(),
            None => expr.clone(),
        };
        let expr = expr
            .replace("$__rate_interval", "1m")
            .replace("$sku", ".*")
            .replace("$__all", ".*");
        assert!(
            !expr.contains('$'),
            "{DASHBOARD}: {place}: unknown variable in {expr}"
        );
        n += 1;
        rules.push_str(&format!(
            "      - record: dashboard:query_{n}\n        expr: {}\n",
            serde_json::to_string(&expr).expect("json string")
        ));
    }
    assert!(n > 10, "only {n} dashboard queries found");
    let rules_file = dir.path().join("dashboard-rules.yml");
    std::fs::write(&rules_file, rules).expect("write rules");
    tool(
        "promtool",
        &["check", "rules", rules_file.to_str().expect("utf-8")],
    );

    // prometheus.yml names the rule file where the container mounts it
    let config = read(PROMETHEUS).replace(
        "/etc/prometheus/alerts.yml",
        root().join(ALERTS).to_str().expect("utf-8"),
    );
    let config_file = dir.path().join("prometheus.yml");
    std::fs::write(&config_file, config).expect("write config");
    tool(
        "promtool",
        &["check", "config", config_file.to_str().expect("utf-8")],
    );
}
