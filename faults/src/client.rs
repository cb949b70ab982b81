//! The buyers' HTTP side: one operation of the v1 API, recorded in the
//! history as an invoke and exactly one completion. The client timeout is
//! shared and may be shortened by the `client-timeout` nemesis while
//! requests are in flight.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Map, Value};

use crate::history::{History, Kind, Process};

/// One v1 operation, as the history names it.
#[derive(Debug, Clone)]
pub struct Op {
    pub f: &'static str,
    pub method: Method,
    pub path: String,
    /// JSON body and Idempotency-Key (reserve only).
    pub body: Option<(Value, String)>,
    /// The history's `value`.
    pub value: Value,
    pub instance: usize,
    /// Send the admin key instead of the storefront's.
    pub admin: bool,
}

/// How one operation ended.
#[derive(Debug, Clone)]
pub struct Done {
    pub kind: Kind,
    pub status: Option<u16>,
    pub body: Value,
}

impl Done {
    pub fn str_field(&self, name: &str) -> Option<String> {
        self.body.get(name)?.as_str().map(str::to_owned)
    }
}

#[derive(Clone)]
pub struct Api {
    client: Client<HttpConnector, Full<Bytes>>,
    /// `http://127.0.0.1:PORT` of each flashgate instance.
    pub bases: Arc<Vec<String>>,
    storefront_bearer: String,
    admin_bearer: String,
    /// The client timeout in ms, read at each request.
    pub timeout_ms: Arc<AtomicU64>,
    pub history: Arc<History>,
}

impl Api {
    pub fn new(
        bases: Vec<String>,
        storefront_key: &str,
        admin_key: &str,
        timeout_ms: Arc<AtomicU64>,
        history: Arc<History>,
    ) -> Api {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(1)));
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(64)
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Api {
            client,
            bases: Arc::new(bases),
            storefront_bearer: format!("Bearer {storefront_key}"),
            admin_bearer: format!("Bearer {admin_key}"),
            timeout_ms,
            history,
        }
    }

    /// The HTTP request of `op` (None for an instance that does not exist
    /// or a header a client could not send).
    fn request(&self, op: &Op) -> Option<Request<Full<Bytes>>> {
        let base = self.bases.get(op.instance)?;
        let bearer = if op.admin {
            &self.admin_bearer
        } else {
            &self.storefront_bearer
        };
        let mut req = Request::builder()
            .method(op.method.clone())
            .uri(format!("{base}{}", op.path))
            .header(hyper::header::AUTHORIZATION, bearer);
        let body = match &op.body {
            Some((json, key)) => {
                req = req
                    .header(hyper::header::CONTENT_TYPE, "application/json")
                    .header("idempotency-key", key.as_str());
                Full::new(Bytes::from(json.to_string()))
            }
            None => Full::new(Bytes::new()),
        };
        req.body(body).ok()
    }

    /// Send `op` within `timeout`: status and body bytes, or why not.
    async fn send(&self, op: &Op, timeout: Duration) -> Result<(u16, Bytes), &'static str> {
        let req = self.request(op).ok_or("bad request")?;
        let answer = tokio::time::timeout(timeout, async {
            let resp = self.client.request(req).await.map_err(|_| "connect")?;
            let status = resp.status().as_u16();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|_| "reset")?
                .to_bytes();
            Ok((status, bytes))
        })
        .await;
        answer.unwrap_or(Err("timeout"))
    }

    /// Send without recording (the harness's own reads: the books at the
    /// end). Status and parsed body, or None on no answer.
    pub async fn raw(&self, op: &Op, timeout: Duration) -> Option<(u16, Value)> {
        let (status, bytes) = self.send(op, timeout).await.ok()?;
        Some((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    /// Run `op` as `process`: its invoke line, the request under the
    /// current client timeout, and its completion line.
    pub async fn call(&self, process: u32, op: &Op) -> Done {
        let p = Process::Client(process);
        self.history.record(p, "invoke", op.f, &op.value, None);
        let timeout = Duration::from_millis(self.timeout_ms.load(Ordering::Relaxed).max(1));
        let outcome = self.send(op, timeout).await;
        let (status, body, error) = match outcome {
            Ok((status, bytes)) => {
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let code = body
                    .get("error")
                    .and_then(|e| e.get("code"))
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                let error = match Kind::of_status(Some(status)) {
                    Kind::Ok => None,
                    _ => Some(code.unwrap_or_else(|| format!("http {status}"))),
                };
                (Some(status), body, error)
            }
            Err(e) => (None, Value::Null, Some(e.to_string())),
        };
        let kind = Kind::of_status(status);
        let mut extra = Map::new();
        extra.insert("status".into(), json!(status));
        extra.insert("body".into(), body.clone());
        extra.insert("error".into(), json!(error));
        self.history
            .record(p, kind.as_str(), op.f, &op.value, Some(extra));
        Done { kind, status, body }
    }
}

/// `POST /v1/reservations` for one unit.
pub fn reserve(
    sku: &str,
    user: &str,
    key: &str,
    instance: usize,
    waitlist: bool,
    storefront: &str,
) -> Op {
    let body = if waitlist {
        json!({"sku": sku, "qty": 1, "user_id": user, "waitlist": true})
    } else {
        json!({"sku": sku, "qty": 1, "user_id": user})
    };
    Op {
        f: "reserve",
        method: Method::POST,
        path: "/v1/reservations".into(),
        body: Some((body, key.to_owned())),
        value: json!({"sku": sku, "qty": 1, "user_id": user, "key": key,
                      "instance": instance, "storefront": storefront, "waitlist": waitlist}),
        instance,
        admin: false,
    }
}

/// `POST /v1/carts`: one line per SKU, `qty` units each (docs/carts.md).
pub fn create_cart(
    lines: &[(String, u32)],
    user: &str,
    key: &str,
    instance: usize,
    storefront: &str,
) -> Op {
    let lines: Vec<Value> = lines
        .iter()
        .map(|(sku, qty)| json!({"sku": sku, "qty": qty}))
        .collect();
    Op {
        f: "create_cart",
        method: Method::POST,
        path: "/v1/carts".into(),
        body: Some((json!({"user_id": user, "lines": lines}), key.to_owned())),
        value: json!({"user_id": user, "lines": lines, "key": key,
                      "instance": instance, "storefront": storefront}),
        instance,
        admin: false,
    }
}

/// confirm_cart | release_cart | extend_cart (POST) or get_cart (GET) on
/// the cart `id`.
pub fn on_cart(f: &'static str, id: &str, instance: usize) -> Op {
    let (method, path) = match f {
        "confirm_cart" => (Method::POST, format!("/v1/carts/{id}/confirm")),
        "release_cart" => (Method::POST, format!("/v1/carts/{id}/release")),
        "extend_cart" => (Method::POST, format!("/v1/carts/{id}/extend")),
        _ => (Method::GET, format!("/v1/carts/{id}")),
    };
    Op {
        f,
        method,
        path,
        body: None,
        value: json!({"cart_id": id, "instance": instance}),
        instance,
        admin: false,
    }
}

/// The reservation id of each line a cart body names.
pub fn cart_line_ids(body: &Value) -> Vec<String> {
    body.get("lines")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|l| l.get("reservation_id")?.as_str().map(str::to_owned))
        .collect()
}

/// confirm | release | extend (POST) or get_reservation (GET) on `rid`.
pub fn on_reservation(f: &'static str, rid: &str, instance: usize) -> Op {
    let (method, path) = match f {
        "get_reservation" => (Method::GET, format!("/v1/reservations/{rid}")),
        _ => (Method::POST, format!("/v1/reservations/{rid}/{f}")),
    };
    Op {
        f,
        method,
        path,
        body: None,
        value: json!({"reservation_id": rid, "instance": instance}),
        instance,
        admin: false,
    }
}

/// get_ticket (GET) or cancel_ticket (DELETE) on `ticket`.
pub fn on_ticket(f: &'static str, ticket: &str, instance: usize) -> Op {
    let method = if f == "cancel_ticket" {
        Method::DELETE
    } else {
        Method::GET
    };
    Op {
        f,
        method,
        path: format!("/v1/waitlist/{ticket}"),
        body: None,
        value: json!({"ticket_id": ticket, "instance": instance}),
        instance,
        admin: false,
    }
}

/// `GET /v1/skus/{sku}` (public) or `/admin/v1/skus/{sku}` (admin).
pub fn get_sku(sku: &str, instance: usize, admin: bool) -> Op {
    Op {
        f: "get_sku",
        method: Method::GET,
        path: if admin {
            format!("/admin/v1/skus/{sku}")
        } else {
            format!("/v1/skus/{sku}")
        },
        body: None,
        value: json!({"sku": sku, "instance": instance}),
        instance,
        admin,
    }
}

/// Add `"phase": "resolve"` to an operation's value.
pub fn in_resolve(mut op: Op) -> Op {
    if let Some(v) = op.value.as_object_mut() {
        v.insert("phase".into(), json!("resolve"));
    }
    op
}
