//! The HTTP client side of the v1 API: one request in, one [`Answer`] out,
//! timed against the run's epoch. Requests go to 127.0.0.1 only.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::stats::{Outcome, Phase, Sample};

/// `http://127.0.0.1:PORT` from a URL whose host is 127.0.0.1 or localhost;
/// anything else is refused (this tool generates load only locally).
pub fn loopback_base(url: &str) -> anyhow::Result<String> {
    let uri: hyper::Uri = url.parse().with_context(|| format!("bad URL {url:?}"))?;
    if uri.scheme_str() != Some("http") {
        bail!("only http:// targets are supported, got {url:?}");
    }
    let host = uri.host().unwrap_or("");
    if host != "127.0.0.1" && host != "localhost" {
        bail!("refusing to load-test {host:?}: only 127.0.0.1 is allowed");
    }
    let port = uri.port_u16().unwrap_or(80);
    Ok(format!("http://127.0.0.1:{port}"))
}

/// One answer: its sample, the status, and the fields the sale needs.
#[derive(Debug, Clone)]
pub struct Answer {
    pub sample: Sample,
    pub status: u16,
    /// `reservation_id` of a 201/200 reserve answer.
    pub reservation_id: Option<String>,
    /// `ticket_id` of a 202 (or its 200 replay) waitlist answer.
    pub ticket_id: Option<String>,
}

#[derive(Clone)]
pub struct Api {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    timeout: Duration,
    epoch: Instant,
    /// `Authorization: Bearer <storefront key>` for `/v1/` requests.
    bearer: Option<hyper::header::HeaderValue>,
}

impl Api {
    /// A client that keeps up to `connections` connections open.
    pub fn new(base: &str, connections: usize, timeout: Duration, epoch: Instant) -> Api {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(connections)
            .pool_idle_timeout(Duration::from_secs(300))
            .build(connector);
        Api {
            client,
            base: base.to_owned(),
            timeout,
            epoch,
            bearer: None,
        }
    }

    /// Send `key` as the storefront API key on `/v1/` requests.
    pub fn with_api_key(mut self, key: Option<&str>) -> anyhow::Result<Api> {
        self.bearer = match key {
            Some(k) => Some(
                format!("Bearer {k}")
                    .parse()
                    .context("API key is not a valid header value")?,
            ),
            None => None,
        };
        Ok(self)
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// Send one request and read the whole answer. Never fails: a transport
    /// error or timeout is an outcome like any other. The body comes back as
    /// bytes; only the fields the sale needs are decoded ([`Reply`]), the
    /// same way for every endpoint, so a POST's answer costs this client no
    /// more to read than a `/healthz` of the same size.
    async fn send(
        &self,
        phase: Phase,
        reserve: bool,
        method: Method,
        path: &str,
        body: Option<(String, &str)>,
    ) -> (Answer, Bytes) {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path));
        if let (Some(b), true) = (&self.bearer, path.starts_with("/v1/")) {
            req = req.header(hyper::header::AUTHORIZATION, b.clone());
        }
        let body = match body {
            Some((json, idem)) => {
                req = req
                    .header(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("application/json"),
                    )
                    .header(IDEMPOTENCY_KEY.clone(), idem);
                Full::new(Bytes::from(json))
            }
            None => Full::new(Bytes::new()),
        };
        let req = req.body(body).expect("request parts are valid");
        let sent_us = self.now_us();
        let result = tokio::time::timeout(self.timeout, async {
            let resp = self.client.request(req).await?;
            let status = resp.status().as_u16();
            let bytes = resp.into_body().collect().await?.to_bytes();
            Ok::<_, anyhow::Error>((status, bytes))
        })
        .await;
        let recv_us = self.now_us();
        let (outcome, status, bytes, reservation_id, ticket_id) = match result {
            Err(_) => (Outcome::Timeout, 0, Bytes::new(), None, None),
            Ok(Err(_)) => (Outcome::Transport, 0, Bytes::new(), None, None),
            Ok(Ok((status, bytes))) => {
                let reply: Reply = serde_json::from_slice(&bytes).unwrap_or_default();
                let code = reply.error.as_ref().map(|e| e.code.as_ref());
                let mut outcome = Outcome::classify(reserve, status, code);
                let tid = if reserve && matches!(outcome, Outcome::Waitlisted | Outcome::Replayed) {
                    reply.ticket_id.map(Cow::into_owned)
                } else {
                    None
                };
                // a 200 that names a ticket replays a waitlist join, not a hold
                if tid.is_some() {
                    outcome = Outcome::Waitlisted;
                }
                let rid = if reserve && matches!(outcome, Outcome::Held | Outcome::Replayed) {
                    reply.reservation_id.map(Cow::into_owned)
                } else {
                    None
                };
                (outcome, status, bytes.clone(), rid, tid)
            }
        };
        let sample = Sample {
            phase,
            outcome,
            sent_us,
            recv_us,
        };
        (
            Answer {
                sample,
                status,
                reservation_id,
                ticket_id,
            },
            bytes,
        )
    }

    pub async fn reserve(&self, phase: Phase, sku: &str, user: &str, key: &str) -> Answer {
        self.reserve_or_wait(phase, sku, user, key, false).await
    }

    /// A reserve of one unit; with `waitlist`, a sold-out answer is a
    /// waitlist join (`202` with a `ticket_id`, or `409 waitlist_full`).
    pub async fn reserve_or_wait(
        &self,
        phase: Phase,
        sku: &str,
        user: &str,
        key: &str,
        waitlist: bool,
    ) -> Answer {
        let body = serde_json::to_string(&ReserveBody {
            sku,
            qty: 1,
            user_id: user,
            waitlist,
        })
        .unwrap_or_default();
        self.send(
            phase,
            true,
            Method::POST,
            "/v1/reservations",
            Some((body, key)),
        )
        .await
        .0
    }

    pub async fn confirm(&self, id: &str) -> Answer {
        let path = format!("/v1/reservations/{id}/confirm");
        self.send(Phase::Followup, false, Method::POST, &path, None)
            .await
            .0
    }

    pub async fn release(&self, id: &str) -> Answer {
        let path = format!("/v1/reservations/{id}/release");
        self.send(Phase::Followup, false, Method::POST, &path, None)
            .await
            .0
    }

    /// `POST /v1/reservations/{id}/release` or `/confirm` in a given phase.
    pub async fn end(&self, phase: Phase, id: &str, confirm: bool) -> Answer {
        let verb = if confirm { "confirm" } else { "release" };
        let path = format!("/v1/reservations/{id}/{verb}");
        self.send(phase, false, Method::POST, &path, None).await.0
    }

    /// `GET /v1/waitlist/{ticket}`: its `status` and, once promoted, its
    /// `reservation_id` (None if it did not answer 200).
    pub async fn ticket(&self, id: &str) -> Option<(String, Option<String>)> {
        let path = format!("/v1/waitlist/{id}");
        let (a, bytes) = self
            .send(Phase::Followup, false, Method::GET, &path, None)
            .await;
        if a.status != 200 {
            return None;
        }
        let json: Value = serde_json::from_slice(&bytes).ok()?;
        let status = json.get("status")?.as_str()?.to_owned();
        let rid = json
            .get("reservation_id")
            .and_then(Value::as_str)
            .map(str::to_owned);
        Some((status, rid))
    }

    /// `DELETE /v1/waitlist/{ticket}`: the HTTP status (0 without an answer).
    pub async fn cancel_ticket(&self, id: &str) -> u16 {
        let path = format!("/v1/waitlist/{id}");
        self.send(Phase::Followup, false, Method::DELETE, &path, None)
            .await
            .0
            .status
    }

    pub async fn healthz(&self) -> Answer {
        self.send(Phase::Healthz, false, Method::GET, "/healthz", None)
            .await
            .0
    }

    /// `status` of `GET /v1/reservations/{id}`, if it answered 200.
    pub async fn reservation_status(&self, id: &str) -> Option<String> {
        let path = format!("/v1/reservations/{id}");
        let (a, bytes) = self
            .send(Phase::Followup, false, Method::GET, &path, None)
            .await;
        if a.status != 200 {
            return None;
        }
        let json: Value = serde_json::from_slice(&bytes).ok()?;
        json.get("status")?.as_str().map(str::to_owned)
    }

    /// Any request: the status (0 without an answer), the body as JSON
    /// (Null if none), and the latency in µs. A POST with `body` sends it as
    /// JSON with the Idempotency-Key.
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<(String, &str)>,
    ) -> (u16, Value, u64) {
        let (a, bytes) = self.send(Phase::Followup, false, method, path, body).await;
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (a.status, json, a.sample.latency_us())
    }

    /// `GET /v1/skus/{sku}` as JSON.
    pub async fn sku(&self, sku: &str) -> anyhow::Result<Value> {
        self.get_json(&format!("/v1/skus/{sku}")).await
    }

    /// A `GET` answered `200` with JSON (`/v1/skus/{sku}/draw`, …).
    pub async fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        let (a, bytes) = self
            .send(Phase::Followup, false, Method::GET, path, None)
            .await;
        let json: Option<Value> = serde_json::from_slice(&bytes).ok();
        match (a.status, json) {
            (200, Some(j)) => Ok(j),
            (status, j) => bail!(
                "GET {path}: status {status} ({:?}), body {j:?}",
                a.sample.outcome
            ),
        }
    }

    /// Poll `/healthz` until it answers 200 or the deadline passes.
    pub async fn wait_healthy(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if self.healthz().await.status == 200 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("{}/healthz did not answer 200 within {within:?}", self.base);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

static IDEMPOTENCY_KEY: hyper::header::HeaderName =
    hyper::header::HeaderName::from_static("idempotency-key");

/// A reserve request's body (`waitlist` only sent when true, so a plain
/// reserve's body is the same as before waitlists existed).
#[derive(Serialize)]
struct ReserveBody<'a> {
    sku: &'a str,
    qty: u32,
    user_id: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    waitlist: bool,
}

/// The fields of an answer the sale looks at; every other field is skipped
/// unread. Strings are borrowed from the body unless they hold escapes.
#[derive(Deserialize, Default)]
struct Reply<'a> {
    #[serde(borrow, default)]
    reservation_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    ticket_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    error: Option<ReplyError<'a>>,
}

#[derive(Deserialize)]
struct ReplyError<'a> {
    #[serde(borrow)]
    code: Cow<'a, str>,
}

/// The totals of a `GET /v1/skus/{sku}` body.
pub fn sku_totals(j: &Value) -> Option<crate::books::SkuTotals> {
    Some(crate::books::SkuTotals {
        available: j.get("available")?.as_i64()?,
        held: j.get("held")?.as_i64()?,
        sold: j.get("sold")?.as_i64()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets() {
        assert_eq!(
            loopback_base("http://127.0.0.1:8080").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            loopback_base("http://localhost:9/").unwrap(),
            "http://127.0.0.1:9"
        );
        assert!(loopback_base("http://10.0.0.1:8080").is_err());
        assert!(loopback_base("http://example.com").is_err());
        assert!(loopback_base("https://127.0.0.1:8443").is_err());
    }

    #[test]
    fn replies_give_the_code_and_the_reservation() {
        let r: Reply = serde_json::from_slice(
            br#"{"error":{"code":"sold_out","message":"SKU \"A\" is sold out"},"request_id":"x"}"#,
        )
        .unwrap();
        assert_eq!(r.error.unwrap().code, "sold_out");
        assert!(r.reservation_id.is_none());
        let r: Reply = serde_json::from_slice(
            br#"{"reservation_id":"r-1","sku":"A","qty":1,"expires_at":"2026-12-02T00:00:00Z","extra":[1,{"a":null}]}"#,
        )
        .unwrap();
        assert_eq!(r.reservation_id.as_deref(), Some("r-1"));
        assert!(r.error.is_none());
        let r: Reply = serde_json::from_slice(br#"{"status":"ok"}"#).unwrap();
        assert!(r.reservation_id.is_none() && r.error.is_none());
        assert_eq!(
            serde_json::to_string(&ReserveBody {
                sku: "S\"1",
                qty: 1,
                user_id: "u",
                waitlist: false,
            })
            .unwrap(),
            r#"{"sku":"S\"1","qty":1,"user_id":"u"}"#
        );
        assert_eq!(
            serde_json::to_string(&ReserveBody {
                sku: "S",
                qty: 1,
                user_id: "u",
                waitlist: true,
            })
            .unwrap(),
            r#"{"sku":"S","qty":1,"user_id":"u","waitlist":true}"#
        );
        let r: Reply = serde_json::from_slice(
            br#"{"ticket_id":"S.w.abc","sku":"S","qty":1,"user_id":"u","status":"waiting","position":1}"#,
        )
        .unwrap();
        assert_eq!(r.ticket_id.as_deref(), Some("S.w.abc"));
    }

    #[test]
    fn sku_totals_from_json() {
        let j = serde_json::json!({"sku":"A","available":3,"held":1,"sold":2,"shards":4});
        let t = sku_totals(&j).unwrap();
        assert_eq!((t.available, t.held, t.sold), (3, 1, 2));
        assert!(sku_totals(&serde_json::json!({"available": 1})).is_none());
    }
}
