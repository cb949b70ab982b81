//! `openapi.yaml` is the API's contract, held against the service the way
//! `observability_files.rs` holds the dashboard against a live scrape:
//!
//! - its paths and methods are the route table's (`http::route_table`), and a live
//!   instance answers every one of them (no `404 not_found`, no `405`) and refuses every
//!   other method on those paths with exactly the documented ones in `Allow`;
//! - the error codes it lists are exactly the ones the service can emit (`ApiError::CODES`,
//!   itself held against `ApiError::code` in `src/error.rs`);
//! - schemathesis, generating requests from the document, finds no server error and no
//!   status-code, content-type or response-schema mismatch on a live instance, once with a
//!   storefront key and once with an admin key (docs/openapi.md).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Instant;

use flashgate::error::ApiError;
use flashgate::http::route_table;
use hyper::{Method, StatusCode};
use serde_json::Value as Json;

use crate::support::{self, RedisServer, TestApp};

const STOREFRONT: &str = "shop-a:storefront-secret-0000001";
const STOREFRONT_SECRET: &str = "storefront-secret-0000001";
const ADMIN: &str = "admin-secret-00000000000001";
/// The SKU the live instance sells (the document's example SKU).
const SKU: &str = "demo-tee";
/// A SKU loaded with no stock: the document's waitlist example gets a ticket (202).
const SOLD_OUT: &str = "sold-out-tee";
const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

fn document_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("openapi.yaml")
}

/// The document as JSON values (YAML anchors resolved).
fn document() -> Json {
    let text = std::fs::read_to_string(document_path()).expect("openapi.yaml is readable");
    let yaml: serde_norway::Value = serde_norway::from_str(&text).expect("openapi.yaml is YAML");
    let doc: Json = serde_json::to_value(yaml).expect("openapi.yaml maps to JSON");
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "an OpenAPI 3.1 document"
    );
    doc
}

/// A path with every `{parameter}` written `{}`: the router's and the document's
/// names for a segment may differ.
fn shape(path: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => in_param = true,
            '}' => {
                in_param = false;
                out.push_str("{}");
            }
            _ if !in_param => out.push(c),
            _ => {}
        }
    }
    out
}

/// path -> its methods (upper case), from the document.
fn documented_operations(doc: &Json) -> BTreeMap<String, BTreeSet<String>> {
    let paths = doc["paths"].as_object().expect("paths");
    paths
        .iter()
        .map(|(path, item)| {
            let methods = METHODS
                .iter()
                .filter(|m| item.get(**m).is_some())
                .map(|m| m.to_uppercase())
                .collect();
            (path.clone(), methods)
        })
        .collect()
}

/// Every string under an `enum` of a property named `code`, anywhere in `v`.
fn codes_in(v: &Json, out: &mut BTreeSet<String>) {
    match v {
        Json::Object(map) => {
            for (k, child) in map {
                if k == "code" {
                    if let Some(values) = child.get("enum").and_then(Json::as_array) {
                        out.extend(values.iter().filter_map(Json::as_str).map(str::to_owned));
                    }
                }
                codes_in(child, out);
            }
        }
        Json::Array(items) => items.iter().for_each(|i| codes_in(i, out)),
        _ => {}
    }
}

#[test]
fn the_document_has_exactly_the_routers_routes_and_methods() {
    let doc = document();
    let documented: BTreeSet<(String, String)> = documented_operations(&doc)
        .into_iter()
        .flat_map(|(path, methods)| methods.into_iter().map(move |m| (shape(&path), m)))
        .collect();
    let routed: BTreeSet<(String, String)> = route_table()
        .flat_map(|(path, methods)| {
            methods
                .split(", ")
                .map(move |m| (shape(path), m.to_owned()))
        })
        .collect();
    let missing: Vec<_> = routed.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&routed).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "routes the document lacks: {missing:?}; operations the router lacks: {unknown:?}"
    );
}

#[test]
fn the_document_lists_every_error_code_the_service_emits_and_no_other() {
    let doc = document();
    let emitted: BTreeSet<String> = ApiError::CODES.iter().map(|c| c.to_string()).collect();
    let mut documented = BTreeSet::new();
    codes_in(&doc, &mut documented);
    let undocumented: Vec<_> = emitted.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&emitted).collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "codes the document lacks: {undocumented:?}; codes the service never emits: {unknown:?}"
    );
    // the one list of them all, which every response's narrower list refines
    let all: BTreeSet<String> = doc["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .expect("components.schemas.ErrorCode.enum")
        .iter()
        .filter_map(Json::as_str)
        .map(str::to_owned)
        .collect();
    assert_eq!(all, emitted, "ErrorCode lists every code");
}

/// The live instance schemathesis and the route probe talk to: Redis, the service with
/// one storefront key and one admin key, a key signing holds (their `token` and the
/// key set are held to the document too), the example SKUs loaded.
async fn live() -> (RedisServer, TestApp) {
    let redis = RedisServer::start();
    let keys = tempfile::tempdir().expect("tempdir");
    let signing = keys.path().join("signing.pem");
    std::fs::write(
        &signing,
        flashgate::signing::generate_pem().expect("a key").0,
    )
    .expect("key");
    let app = support::spawn_app_with(&redis, |c| {
        c.signing_key_file = signing.display().to_string();
        c.insecure_no_auth = false;
        c.api_keys = vec![STOREFRONT.into()];
        c.admin_keys = vec![ADMIN.into()];
    })
    .await;
    app.preload(SKU, 1000, 4).await;
    app.preload(SOLD_OUT, 0, 1).await;
    (redis, app)
}

/// A concrete path for a documented one: its parameters as well-formed values.
fn concrete(path: &str) -> String {
    path.replace("{id}", &format!("{SKU}.0.0123456789abcdef0123456789abcdef"))
        .replace(
            "{ticket}",
            &format!("{SKU}.w.0123456789abcdef0123456789abcdef"),
        )
        .replace("{sku}", SKU)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_instance_answers_every_documented_operation_and_only_those() {
    let doc = document();
    let (_redis, app) = live().await;
    let bearer = format!("Bearer {ADMIN}");
    let headers = [
        ("authorization", bearer.as_str()),
        ("content-type", "application/json"),
        ("idempotency-key", "openapi-probe"),
    ];
    let operations = documented_operations(&doc);
    assert!(operations.len() >= 10, "{operations:?}");
    for (path, methods) in &operations {
        let target = concrete(path);
        assert!(!target.contains('{'), "a parameter left in {target}");
        for m in METHODS {
            let method = Method::from_bytes(m.to_uppercase().as_bytes()).expect("method");
            // `{}`: routed before it is read; a 422 says the route exists
            let a = app
                .request(method.clone(), &target, &headers, b"{}".to_vec())
                .await;
            assert!(
                a.headers.contains_key("x-request-id"),
                "{method} {path}: no X-Request-Id"
            );
            assert_ne!(a.code(), "not_found", "{method} {path}: {:?}", a.body);
            if methods.contains(method.as_str()) {
                assert_ne!(
                    a.status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} is documented"
                );
            } else {
                assert_eq!(
                    a.status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} is not documented: {:?}",
                    a.body
                );
                let allow: BTreeSet<String> = a.headers["allow"]
                    .to_str()
                    .expect("Allow")
                    .split(',')
                    .map(|s| s.trim().to_owned())
                    .collect();
                assert_eq!(&allow, methods, "Allow of {path}");
            }
        }
    }
    // the document it serves is this one
    let served = app.get("/openapi.yaml").await;
    assert_eq!(served.status, StatusCode::OK);
    assert_eq!(served.headers["content-type"], "application/yaml");
    let file = std::fs::read_to_string(document_path()).expect("openapi.yaml");
    assert_eq!(served.body, Json::String(file));
}

/// The schemathesis command: `FLASHGATE_SCHEMATHESIS` (scripts/test.sh sets it), else
/// the virtualenv `scripts/deps.sh` installs it into, else `schemathesis` on `PATH`.
fn schemathesis() -> PathBuf {
    if let Some(p) = std::env::var_os("FLASHGATE_SCHEMATHESIS") {
        return PathBuf::from(p);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/tools/schemathesis/bin/schemathesis");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("schemathesis")
}

/// Examples per operation and phase: enough to walk every schema's corners in well
/// under a minute per key on a debug build.
const EXAMPLES: &str = "50";
/// Fixed, so that a failure in CI reproduces locally with the same command.
const SEED: &str = "1";

/// One schemathesis run against `app` with `key`; panics with its report on any failure.
async fn fuzz(app: &TestApp, key: &str, label: &str) {
    let work = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    let out = tokio::process::Command::new(schemathesis())
        .current_dir(work.path())
        .arg("run")
        .arg(document_path())
        .args(["--url", &format!("http://{}", app.addr)])
        .args(["--header", &format!("Authorization: Bearer {key}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        ])
        .args(["--max-examples", EXAMPLES, "--seed", SEED])
        // one worker: CPython 3.11's `ast.parse` (hypothesis describing its lambdas) is
        // not safe on two threads at once ("AST constructor recursion depth mismatch")
        .args(["--workers", "1", "--generation-database", "none"])
        .args(["--no-color", "--request-timeout", "30"])
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {:?} ({e}): install it with `. scripts/deps.sh && ensure_schemathesis` \
                 or run scripts/test.sh",
                schemathesis()
            )
        });
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // "N generated, N passed" and "== … in 12.3s ==": what ran, how long
    let summary: Vec<&str> = report
        .lines()
        .filter(|l| l.contains(" generated, ") || (l.contains(" in ") && l.contains("====")))
        .map(str::trim)
        .collect();
    eprintln!(
        "schemathesis with the {label} key: {} ({:.1} s)",
        summary.join(" "),
        started.elapsed().as_secs_f64()
    );
    assert!(
        out.status.success(),
        "schemathesis with the {label} key found failures:\n{report}"
    );
    assert!(
        report.contains("passed") && !report.contains("No tests were run"),
        "schemathesis with the {label} key ran no test:\n{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_or_mismatch_with_either_key() {
    let (_redis, app) = live().await;
    // the storefront key first: the admin run may force-preload the SKU away
    fuzz(&app, STOREFRONT_SECRET, "storefront").await;
    fuzz(&app, ADMIN, "admin").await;
}
