//! `flashgate verify-draw`: check a SKU's fair draw from the public API
//! alone — `GET /v1/skus/{sku}` (the commitment, published before
//! `opens_at`) and `GET /v1/skus/{sku}/draw` (the pre-queue, its digest, the
//! revealed seed and the order) — with `fairness::verify`. Exit 0 and one
//! line, `draw verified: N tickets`; or exit 1 naming the first problem.
//!
//! Whoever answers at `--url` is not trusted: every document is read within
//! `--max-document-bytes` and `--timeout-seconds`, and anything malformed is
//! a named failure, never a panic. Beyond the rule `fairness::verify`
//! checks, both documents must agree (SKU, commitment, seed), the ticket
//! list must be what the document promises (sorted, no id twice) and every
//! id a ticket id of this SKU (122 random bits: an operator cannot pass a
//! chosen id off as a buyer's). `--commitment` is the commitment the buyer
//! recorded before `opens_at`: the one published now must still be it.

use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::{Request, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::domain::Sku;
use crate::fairness::{self, DrawDocument};
use crate::inventory::waitlist::TicketId;

#[derive(Args, Debug)]
pub struct VerifyDrawArgs {
    /// The SKU whose draw to check.
    #[arg(long)]
    pub sku: String,
    /// Where flashgate's public API answers (http:// or https://, with any path prefix).
    #[arg(long, env = "FLASHGATE_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The fairness_commitment you recorded before opens_at (64 hex digits).
    #[arg(long)]
    pub commitment: Option<String>,
    /// A storefront API key, if the API asks for one (sent as a Bearer token).
    #[arg(long, env = "FLASHGATE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Give up on a document not fully received within this many seconds.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout_seconds: u64,
    /// Refuse a document larger than this (bytes).
    #[arg(long, default_value_t = 512 << 20, value_parser = clap::value_parser!(u64).range(1..=(1 << 34)))]
    pub max_document_bytes: u64,
}

pub(super) async fn run(args: VerifyDrawArgs) -> Result<(), String> {
    let sku = Sku::parse(&args.sku).map_err(|e| format!("--sku: {e}"))?;
    let commitment = match &args.commitment {
        Some(c) if is_hex64(c) => Some(c.as_str()),
        Some(_) => return Err("--commitment: a commitment is 64 hex digits".into()),
        None => None,
    };
    let base = base_url(&args.url)?;
    let fetch = Fetch::new(&args)?;
    let sku_doc = fetch.json(&format!("{base}/v1/skus/{sku}")).await?;
    let draw_doc = fetch.json(&format!("{base}/v1/skus/{sku}/draw")).await?;
    let draw: DrawDocument = serde_json::from_value(draw_doc)
        .map_err(|e| format!("draw NOT verified: malformed draw document: {e}"))?;
    let n =
        check(&sku, &sku_doc, &draw, commitment).map_err(|p| format!("draw NOT verified: {p}"))?;
    println!("draw verified: {n} tickets");
    Ok(())
}

/// `--url` without its trailing slashes; http or https with a host.
fn base_url(url: &str) -> Result<String, String> {
    let uri: Uri = url.parse().map_err(|e| format!("--url {url:?}: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") if uri.authority().is_some() => {}
        _ => return Err(format!("--url {url:?}: not an http:// or https:// URL")),
    }
    if uri.query().is_some() {
        return Err(format!("--url {url:?}: no query string, please"));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// Every check, first failure first; the number of tickets drawn. Every
/// value a message repeats from a document is checked for its form first
/// (or cut short), so a hostile document cannot make the message huge.
pub fn check(
    sku: &Sku,
    sku_doc: &serde_json::Value,
    draw: &DrawDocument,
    commitment: Option<&str>,
) -> Result<usize, String> {
    if draw.sku != sku.as_str() {
        return Err(format!(
            "the draw document is for SKU {}, not {sku}",
            shown(&draw.sku)
        ));
    }
    let published = match sku_doc.get("fairness_commitment") {
        Some(serde_json::Value::String(c)) => c.as_str(),
        None | Some(serde_json::Value::Null) => {
            return Err(format!(
                "the SKU document of {sku} has no fairness_commitment (a SKU without opens_at has no draw)"
            ))
        }
        Some(_) => return Err("the SKU document's fairness_commitment is not a string".into()),
    };
    let sku_seed = match sku_doc.get("fairness_seed") {
        Some(serde_json::Value::String(c)) => Some(c.as_str()),
        None | Some(serde_json::Value::Null) => None,
        Some(_) => return Err("the SKU document's fairness_seed is not a string".into()),
    };
    for (what, value) in [
        ("the SKU document's fairness_commitment", Some(published)),
        ("the SKU document's fairness_seed", sku_seed),
        (
            "the draw document's fairness_commitment",
            Some(draw.fairness_commitment.as_str()),
        ),
        (
            "the draw document's prequeue_digest",
            draw.prequeue_digest.as_deref(),
        ),
        (
            "the draw document's fairness_seed",
            draw.fairness_seed.as_deref(),
        ),
    ] {
        if let Some(v) = value {
            if !is_hex64(v) {
                return Err(format!("{what} is not 64 hex digits: {}", shown(v)));
            }
        }
    }
    if !published.eq_ignore_ascii_case(&draw.fairness_commitment) {
        return Err(format!(
            "the SKU document publishes the commitment {published}, the draw document {}",
            draw.fairness_commitment
        ));
    }
    if let Some(recorded) = commitment {
        if !recorded.eq_ignore_ascii_case(published) {
            return Err(format!(
                "the commitment published now, {published}, is not the one you recorded, {recorded}"
            ));
        }
    }
    if let Some(a) = sku_seed {
        if !draw
            .fairness_seed
            .as_deref()
            .is_some_and(|b| a.eq_ignore_ascii_case(b))
        {
            return Err(format!(
                "the SKU document reveals the seed {a}, the draw document {}",
                draw.fairness_seed.as_deref().unwrap_or("none")
            ));
        }
    }
    let of_sku = |id: &str| TicketId::parse(id).is_ok_and(|t| t.sku() == sku);
    for (i, id) in draw.tickets.iter().enumerate() {
        if !of_sku(id) {
            return Err(format!(
                "pre-queue entry {i} ({}) is not a ticket id of {sku}",
                shown(id)
            ));
        }
        if i > 0 {
            let prev = &draw.tickets[i - 1];
            if prev == id {
                return Err(format!("ticket {id} is listed twice in the pre-queue"));
            }
            if prev > id {
                return Err(format!(
                    "the pre-queue list is not sorted ascending at entry {i} ({id} after {prev})"
                ));
            }
        }
    }
    for (i, id) in draw.order.iter().enumerate() {
        if !of_sku(id) {
            return Err(format!(
                "order entry {i} ({}) is not a ticket id of {sku}",
                shown(id)
            ));
        }
    }
    fairness::verify(draw, commitment).map_err(|p| p.to_string())?;
    Ok(draw.tickets.len())
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// An id as shown in a message: at most 80 characters of it, escaped.
fn shown(id: &str) -> String {
    let s: String = id.chars().take(80).collect();
    format!("{s:?}")
}

struct Fetch {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    api_key: Option<String>,
    timeout: Duration,
    max_bytes: usize,
}

impl Fetch {
    fn new(args: &VerifyDrawArgs) -> Result<Fetch, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Fetch {
            client: Client::builder(TokioExecutor::new()).build(https),
            api_key: args.api_key.clone(),
            timeout: Duration::from_secs(args.timeout_seconds),
            max_bytes: usize::try_from(args.max_document_bytes).unwrap_or(usize::MAX),
        })
    }

    /// GET `url` as JSON: 200 only, whole within the timeout and size limit.
    async fn json(&self, url: &str) -> Result<serde_json::Value, String> {
        match tokio::time::timeout(self.timeout, self.get(url)).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "GET {url}: no complete answer within {} s",
                self.timeout.as_secs()
            )),
        }
    }

    async fn get(&self, url: &str) -> Result<serde_json::Value, String> {
        let mut req = Request::get(url).header("accept", "application/json");
        if let Some(key) = &self.api_key {
            req = req.header("authorization", format!("Bearer {key}"));
        }
        let req = req
            .body(Empty::new())
            .map_err(|e| format!("GET {url}: {e}"))?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| format!("GET {url}: cannot reach the API: {}", chain(&e)))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), self.max_bytes)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    format!(
                        "GET {url}: the document is larger than {} bytes (--max-document-bytes)",
                        self.max_bytes
                    )
                } else {
                    format!("GET {url}: the answer broke off: {e}")
                }
            })?
            .to_bytes();
        let json: Result<serde_json::Value, _> = serde_json::from_slice(&body);
        if status != StatusCode::OK {
            // the service's errors are {"error": {"code", "message"}}
            let why = json
                .ok()
                .and_then(|j| {
                    let e = j.get("error")?;
                    Some(format!(
                        " ({}: {})",
                        e.get("code")?.as_str()?,
                        e.get("message")?.as_str()?
                    ))
                })
                .unwrap_or_default();
            let hint = if status == StatusCode::NOT_FOUND {
                " — no such SKU, or this flashgate publishes no draw"
            } else {
                ""
            };
            return Err(format!("GET {url} answered {status}{why}{hint}"));
        }
        json.map_err(|e| format!("GET {url}: not a JSON document: {e}"))
    }
}

/// An error with its sources, one after another.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fairness::{draw_order, prequeue_digest, Seed};

    fn drawn(sku: &str, n: usize) -> (serde_json::Value, DrawDocument) {
        let seed = Seed::from_bytes([7; 32]);
        let mut tickets: Vec<String> = (0..n).map(|i| format!("{sku}.w.{i:032x}")).collect();
        tickets.sort();
        let doc = DrawDocument {
            sku: sku.into(),
            status: "drawn".into(),
            opens_at: "2026-12-04T20:00:00Z".into(),
            fairness_commitment: seed.commitment(),
            prequeue_digest: Some(prequeue_digest(&tickets)),
            fairness_seed: Some(seed.to_hex()),
            order: draw_order(&seed, &tickets),
            tickets,
        };
        let sku_doc = serde_json::json!({"sku": sku, "fairness_commitment": seed.commitment()});
        (sku_doc, doc)
    }

    #[test]
    fn a_true_draw_passes_and_each_inconsistency_is_named() {
        let sku = Sku::parse("s").unwrap();
        let (sku_doc, doc) = drawn("s", 20);
        assert_eq!(check(&sku, &sku_doc, &doc, None), Ok(20));
        let c = doc.fairness_commitment.clone();
        assert_eq!(check(&sku, &sku_doc, &doc, Some(&c)), Ok(20));

        let other = Sku::parse("t").unwrap();
        assert!(check(&other, &sku_doc, &doc, None)
            .unwrap_err()
            .contains("for SKU"));
        let no_commitment = serde_json::json!({"sku": "s"});
        assert!(check(&sku, &no_commitment, &doc, None)
            .unwrap_err()
            .contains("no fairness_commitment"));
        let wrong_type = serde_json::json!({"fairness_commitment": 5});
        let short = serde_json::json!({"fairness_commitment": "ab"});
        assert!(check(&sku, &short, &doc, None)
            .unwrap_err()
            .contains("not 64 hex digits"));
        assert!(check(&sku, &wrong_type, &doc, None)
            .unwrap_err()
            .contains("not a string"));
        let moved = serde_json::json!({"fairness_commitment": "00".repeat(32)});
        assert!(check(&sku, &moved, &doc, None)
            .unwrap_err()
            .contains("publishes the commitment"));
        let mut seeded = sku_doc.clone();
        seeded["fairness_seed"] = "11".repeat(32).into();
        assert!(check(&sku, &seeded, &doc, None)
            .unwrap_err()
            .contains("reveals the seed"));
        seeded["fairness_seed"] = doc.fairness_seed.clone().unwrap().into();
        assert_eq!(check(&sku, &seeded, &doc, None), Ok(20));

        let mut twice = doc.clone();
        twice.tickets[1] = twice.tickets[0].clone();
        assert!(check(&sku, &sku_doc, &twice, None)
            .unwrap_err()
            .contains("listed twice"));
        let mut unsorted = doc.clone();
        unsorted.tickets.swap(0, 1);
        assert!(check(&sku, &sku_doc, &unsorted, None)
            .unwrap_err()
            .contains("not sorted"));
        let mut foreign = doc.clone();
        foreign.tickets[3] = format!("t.w.{:032x}", 3);
        assert!(check(&sku, &sku_doc, &foreign, None)
            .unwrap_err()
            .contains("not a ticket id of s"));
        let mut chosen = doc.clone();
        chosen.tickets[3] = "s.w.operator-chose-this".into();
        assert!(check(&sku, &sku_doc, &chosen, None)
            .unwrap_err()
            .contains("entry 3"));
        // the rule's own checks come through with their words
        let mut order = doc.clone();
        order.order.swap(4, 5);
        assert!(check(&sku, &sku_doc, &order, None)
            .unwrap_err()
            .contains("position 4"));
        assert!(check(&sku, &sku_doc, &doc, Some(&"ab".repeat(32)))
            .unwrap_err()
            .contains("not the one you recorded"));
        let mut bad_order = doc.clone();
        bad_order.order[2] = "x".repeat(10_000);
        let e = check(&sku, &sku_doc, &bad_order, None).unwrap_err();
        assert!(e.contains("order entry 2") && e.len() < 300, "{e}");
    }

    #[test]
    fn urls_are_http_or_https_with_a_host() {
        assert_eq!(base_url("http://h:1/").unwrap(), "http://h:1");
        assert_eq!(base_url("https://h/api//").unwrap(), "https://h/api");
        for bad in ["ftp://h", "h:80", "/v1", "http://h/?x=1", "not a url", ""] {
            assert!(base_url(bad).is_err(), "{bad}");
        }
    }
}
