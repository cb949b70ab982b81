//! Dispatch: one `match` on (method, [`Route`]), the route matched once from
//! the path (`route.rs`, the route table). Each endpoint has the same shape:
//! parse the request into domain types, apply it, render the outcome. Errors
//! become responses in exactly one place ([`body::error`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use tracing::Instrument;

use super::body::{self, Body};
use super::route::{Route, Segments};
use crate::domain::{IdempotencyKey, Qty, ReservationId, ScopedKey, Sku, Tenant, UserId};
use crate::error::ApiError;
use crate::http::AppState;
use crate::inventory::{Reservation, ReserveOutcome, ReserveRequest};

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Handle one request: route it, time it, count it, tag it with a request id.
pub async fn handle(state: Arc<AppState>, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    // The client's id if it is usable (a reference-counted copy of the
    // header), else a fresh one: the same value goes back on the response.
    let request_id = req
        .headers()
        .get(&REQUEST_ID)
        .filter(|v| {
            let b = v.as_bytes();
            !b.is_empty() && b.len() <= 128 && b.iter().all(u8::is_ascii_graphic)
        })
        .cloned()
        .unwrap_or_else(fresh_request_id);
    let request_id_str = request_id.to_str().unwrap_or_default();
    // A debug-level span: at the default level it costs nothing (formatting
    // its fields was 6 % of the server's CPU under load, bench/README.md);
    // the request's own warnings and errors below carry the id either way.
    let span = tracing::debug_span!("request", id = %request_id_str, method = %req.method(), path = %req.uri().path());
    let timeout = Duration::from_millis(state.config.request_timeout_ms);
    // The path's segments, split once and matched once into the route that
    // gives both the metric label and the dispatch (a clone of the parsed URI shares its buffer: the request itself moves
    // into the endpoint).
    let uri = req.uri().clone();
    let segs = Segments::of(uri.path());
    let (route, result) = async {
        let (matched, part) = Route::of(segs.as_slice());
        let route = matched.label();
        let cap = state.config.max_header_bytes;
        if head_bytes(&req) > cap {
            return (route, Err(ApiError::HeadersTooLarge(cap)));
        }
        // Boxed: the endpoint futures are kilobytes big, and hyper and tokio
        // move the request's future by value a few times — measured as 8 % of
        // the server's CPU in memcpy before (see bench/README.md).
        let endpoint = dispatch(&state, req, matched, part, uri.path());
        match tokio::time::timeout(timeout, Box::pin(endpoint)).await {
            Ok(result) => (route, result),
            Err(_) => (route, Err(ApiError::Timeout)),
        }
    }
    .instrument(span.clone())
    .await;
    let mut resp = match result {
        Ok(resp) => resp,
        Err(e) => {
            let _enter = span.enter();
            let id = request_id_str;
            match &e {
                ApiError::Internal(cause) => {
                    tracing::error!(request_id = id, route, error = %cause, "internal error")
                }
                ApiError::RedisUnavailable(cause) => {
                    tracing::warn!(request_id = id, route, error = %cause, "redis unavailable")
                }
                _ => tracing::debug!(code = e.code(), "request refused"),
            }
            body::error(&e)
        }
    };
    resp.headers_mut().insert(REQUEST_ID.clone(), request_id);
    state
        .metrics
        .observe_http(route, resp.status().as_u16(), started.elapsed());
    resp
}

/// The size of the request's head as it came on the wire (request line,
/// headers, the blank line), within a few bytes: what `max_header_bytes`
/// caps. hyper refuses a head past twice that itself (src/http/mod.rs).
fn head_bytes<B>(req: &Request<B>) -> usize {
    let uri = req.uri();
    let target = uri.path_and_query().map_or(1, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len() + 8);
    let line = req.method().as_str().len() + target + 12;
    req.headers()
        .iter()
        .fold(line + 2, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}

/// A v4 UUID as 32 hex digits, formatted on the stack.
fn fresh_request_id() -> HeaderValue {
    let mut buf = [0u8; 32];
    let id = uuid::Uuid::new_v4().simple().encode_lower(&mut buf);
    HeaderValue::from_str(id).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// `route` and `part` are [`Route::of`] this request's `path`, computed once
/// by [`handle`].
async fn dispatch(
    state: &AppState,
    req: Request<Incoming>,
    route: Route,
    part: &str,
    path: &str,
) -> Result<Response<Body>, ApiError> {
    let method = req.method().clone();
    if route.is_ops() {
        return Box::pin(ops(state, &method, route)).await;
    }
    if route == Route::NotFound {
        return Err(ApiError::RouteNotFound(path.to_owned()));
    }
    // Admission, cheapest first and before any Redis call: who, then how
    // fast, with the keys and limits of one snapshot (a reload swaps them
    // whole; a request admitted here completes whatever comes after).
    let tenant = {
        let live = state.live();
        let caller = live
            .auth
            .identify(req.headers().get(hyper::header::AUTHORIZATION))?;
        if matches!(
            route,
            Route::AdminSku | Route::AdminPreload | Route::AdminReload
        ) {
            live.auth.require_admin(caller)?;
        } else {
            live.limiter
                .check_client(live.auth.bucket(caller))
                .map_err(|l| limited(state, l))?;
        }
        // whose keys, reservations and tickets these are (docs/tenancy.md)
        live.auth.tenant(caller)?
    };
    match (&method, route) {
        (&Method::POST, Route::Reserve) => Box::pin(reserve(state, req, &tenant)).await,
        (&Method::GET, Route::GetReservation) => {
            let rid = parse_rid(part)?;
            let r = Box::pin(state.inventory.get(&rid, &tenant)).await?;
            Ok(signed(state, StatusCode::OK, r))
        }
        (&Method::POST, Route::Confirm | Route::Release | Route::Extend) => {
            let rid = parse_rid(part)?;
            let r = match route {
                Route::Confirm => Box::pin(state.inventory.confirm(&rid, &tenant)).await,
                Route::Release => Box::pin(state.inventory.release(&rid, &tenant)).await,
                _ => Box::pin(state.inventory.extend(&rid, &tenant)).await,
            }
            .map_err(ApiError::from)?;
            match route {
                Route::Confirm => state.metrics.outcome("confirmed"),
                Route::Release => state.metrics.outcome("released"),
                _ => {}
            }
            Ok(signed(state, StatusCode::OK, r))
        }
        (&Method::GET, Route::Sku) => {
            let sku = parse_sku(part)?;
            let doc = Box::pin(state.inventory.stock_document(&sku)).await?;
            Ok(body::stock_document(
                &doc,
                state.config.stock_cache_ms,
                req.headers().get(hyper::header::IF_NONE_MATCH),
            ))
        }
        (&Method::GET, Route::SkuDraw) => {
            let sku = parse_sku(part)?;
            match Box::pin(state.inventory.draw_document(&sku)).await? {
                Some(doc) => Ok(body::draw_document(&doc)),
                None => Err(ApiError::NoDraw(sku.to_string())),
            }
        }
        (&Method::GET, Route::Waitlist) => {
            let id = parse_ticket(part)?;
            Ok(body::json(
                StatusCode::OK,
                &Box::pin(state.inventory.ticket(&id, &tenant)).await?,
            ))
        }
        (&Method::DELETE, Route::Waitlist) => {
            let id = parse_ticket(part)?;
            Ok(body::json(
                StatusCode::OK,
                &Box::pin(state.inventory.cancel_ticket(&id, &tenant)).await?,
            ))
        }
        (&Method::GET, Route::AdminSku) => {
            let sku = parse_sku(part)?;
            Ok(body::json(
                StatusCode::OK,
                &Box::pin(state.inventory.status(&sku)).await?,
            ))
        }
        (&Method::POST, Route::Carts) => Box::pin(carts::create(state, req, &tenant)).await,
        (&Method::GET, Route::GetCart) => {
            let id = carts::parse_id(part)?;
            let mut cart = Box::pin(state.inventory.cart(&id, &tenant)).await?;
            state.live().signing.sign_cart(&mut cart);
            Ok(body::json(StatusCode::OK, &cart))
        }
        (&Method::POST, Route::CartConfirm | Route::CartRelease | Route::CartExtend) => {
            Box::pin(carts::act(state, route, part, &tenant)).await
        }
        (&Method::POST, Route::AdminPreload) => Box::pin(admin_preload(state, part, req)).await,
        (&Method::POST, Route::AdminReload) => state
            .reload()
            .map(|r| body::json(StatusCode::OK, &r))
            .map_err(|e| ApiError::InvalidConfig(e.redacted())),
        _ => Err(ApiError::MethodNotAllowed(route.methods())),
    }
}

/// The cart endpoints (docs/carts.md): parse, apply, render.
mod carts {
    use std::borrow::Cow;
    use std::collections::HashSet;

    use hyper::body::Incoming;
    use hyper::{Request, Response, StatusCode};
    use serde::Deserialize;

    use super::super::body::{self, Body};
    use super::super::route::Route;
    use super::{idempotency_key, limited};
    use crate::domain::{CartId, Qty, Sku, Tenant, UserId};
    use crate::error::ApiError;
    use crate::http::AppState;
    use crate::inventory::{CartLineRequest, CartOutcome, CartRequest};

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct CartBody<'a> {
        #[serde(borrow)]
        user_id: Cow<'a, str>,
        #[serde(borrow)]
        lines: Vec<LineBody<'a>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct LineBody<'a> {
        #[serde(borrow)]
        sku: Cow<'a, str>,
        qty: i64,
    }

    pub(super) fn parse_id(id: &str) -> Result<CartId, ApiError> {
        // a malformed id cannot name a cart: not found, like any unknown id
        CartId::parse(id).map_err(|_| ApiError::CartNotFound)
    }

    pub(super) async fn create(
        state: &AppState,
        req: Request<Incoming>,
        tenant: &Tenant,
    ) -> Result<Response<Body>, ApiError> {
        let key = idempotency_key(&req, tenant)?;
        let bytes = body::read_body(req, state.config.body_limit_bytes).await?;
        let b: CartBody = body::decode(&bytes)?;
        let max = state.config.max_cart_lines;
        if b.lines.is_empty() || b.lines.len() > max {
            return Err(ApiError::InvalidRequest(format!(
                "a cart has 1..={max} lines"
            )));
        }
        let mut seen = HashSet::with_capacity(b.lines.len());
        let mut lines = Vec::with_capacity(b.lines.len());
        for (i, l) in b.lines.iter().enumerate() {
            let sku = Sku::parse(&l.sku)
                .map_err(|e| ApiError::InvalidRequest(format!("line {i}: {e}")))?;
            let qty = Qty::parse(l.qty, state.config.max_qty_per_request)
                .map_err(|e| ApiError::InvalidRequest(format!("line {i}: {e}")))?;
            if !seen.insert(sku.clone()) {
                return Err(ApiError::InvalidRequest(format!(
                    "line {i}: sku {sku} is already in the cart; put its units in one line"
                )));
            }
            lines.push(CartLineRequest { sku, qty });
        }
        let user = UserId::parse(&b.user_id).map_err(ApiError::InvalidRequest)?;
        state
            .live()
            .limiter
            .check_user(tenant.scope(), user.as_str())
            .map_err(|l| limited(state, l))?;
        let request = CartRequest { key, user, lines };
        let (status, mut cart) = match state.inventory.cart_create(request).await? {
            CartOutcome::Created(c) => (StatusCode::CREATED, c),
            CartOutcome::Replayed(c) => (StatusCode::OK, c),
        };
        state.live().signing.sign_cart(&mut cart);
        Ok(body::json(status, &cart))
    }

    pub(super) async fn act(
        state: &AppState,
        route: Route,
        part: &str,
        tenant: &Tenant,
    ) -> Result<Response<Body>, ApiError> {
        let id = parse_id(part)?;
        let inv = &state.inventory;
        let mut cart = match route {
            Route::CartConfirm => Box::pin(inv.cart_confirm(&id, tenant)).await,
            Route::CartRelease => Box::pin(inv.cart_release(&id, tenant)).await,
            _ => Box::pin(inv.cart_extend(&id, tenant)).await,
        }?;
        state.live().signing.sign_cart(&mut cart);
        Ok(body::json(StatusCode::OK, &cart))
    }
}

/// The request's `Idempotency-Key`, in `tenant`'s namespace (required).
fn idempotency_key<B>(req: &Request<B>, tenant: &Tenant) -> Result<ScopedKey, ApiError> {
    let Some(v) = req.headers().get(&IDEMPOTENCY_KEY) else {
        return Err(ApiError::InvalidRequest(
            "the Idempotency-Key header is required".into(),
        ));
    };
    let v = v
        .to_str()
        .map_err(|_| ApiError::InvalidRequest("Idempotency-Key must be visible ASCII".into()))?;
    Ok(ScopedKey::new(
        tenant,
        &IdempotencyKey::parse(v).map_err(ApiError::InvalidRequest)?,
    ))
}

/// The API's contract, served at `GET /openapi.yaml`.
const OPENAPI: &str = include_str!("../../openapi.yaml");

/// Health, readiness, metrics and the API document: no authentication (bind the port to the
/// internal network; they reveal no sale data beyond the per-SKU gauges).
async fn ops(state: &AppState, method: &Method, route: Route) -> Result<Response<Body>, ApiError> {
    if method != Method::GET {
        return Err(ApiError::MethodNotAllowed(route.methods()));
    }
    match route {
        Route::Healthz => Ok(body::json(
            StatusCode::OK,
            &serde_json::json!({"status": "ok"}),
        )),
        Route::Readyz => match state
            .inventory
            .ready()
            .await
            .map(|()| state.tasks.stalled())
        {
            Ok(stalled) if !stalled.is_empty() => Err(ApiError::NotReady {
                code: ApiError::TASK_STALLED,
                message: stalled.join("; "),
            }),
            Ok(_) => Ok(body::json(
                StatusCode::OK,
                &serde_json::json!({"status": "ready"}),
            )),
            Err(e @ crate::inventory::InventoryError::Unsuitable(_)) => Err(e.into()),
            Err(e) => Err(ApiError::RedisUnavailable(e)),
        },
        Route::Openapi => Ok(body::with_type(
            StatusCode::OK,
            Bytes::from_static(OPENAPI.as_bytes()),
            "application/yaml",
        )),
        Route::Jwks => {
            let mut resp = body::with_type(
                StatusCode::OK,
                state.live().signing.jwks(),
                "application/jwk-set+json",
            );
            // verifiers cache it; a new key is published before it signs
            // (docs/signed-holds.md, "Rotating the key")
            resp.headers_mut().insert(
                hyper::header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=60"),
            );
            Ok(resp)
        }
        _ => Ok(body::with_type(
            StatusCode::OK,
            Bytes::from(state.metrics.render()),
            "text/plain; version=0.0.4",
        )),
    }
}

/// A reservation's answer, with its signed token while it is held and a key
/// signs (`signing`; the key of the running settings, so a reload rotates it).
fn signed(state: &AppState, status: StatusCode, mut r: Reservation) -> Response<Body> {
    r.token = state.live().signing.token(&r);
    body::reservation(status, &r)
}

fn limited(state: &AppState, l: crate::limiter::Limited) -> ApiError {
    state.metrics.outcome("rate_limited");
    ApiError::RateLimited {
        retry_after_secs: l.retry_after_secs(),
    }
}

fn parse_sku(sku: &str) -> Result<Sku, ApiError> {
    // a malformed SKU cannot have been loaded
    Sku::parse(sku).map_err(|_| ApiError::UnknownSku(sku.to_string()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PreloadBody {
    stock: i64,
    #[serde(default = "default_shards")]
    shards: u16,
    #[serde(default)]
    force: bool,
    max_per_user: Option<u32>,
    /// RFC 3339 (docs/fair-draw.md)
    opens_at: Option<String>,
    closes_at: Option<String>,
}

fn default_shards() -> u16 {
    4
}

async fn admin_preload(
    state: &AppState,
    sku: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let sku = Sku::parse(sku).map_err(ApiError::InvalidRequest)?;
    let b: PreloadBody = body::read_json(req, state.config.body_limit_bytes).await?;
    let instant = |what: &str, v: &Option<String>| {
        v.as_deref()
            .map(|s| crate::inventory::Window::parse_instant(what, s))
            .transpose()
    };
    let spec = crate::inventory::PreloadSpec {
        stock: b.stock,
        shards: b.shards,
        force: b.force,
        max_per_user: b.max_per_user,
        window: crate::inventory::Window {
            opens_at_ms: instant("opens_at", &b.opens_at)?,
            closes_at_ms: instant("closes_at", &b.closes_at)?,
        },
    };
    match state.inventory.preload_with(&sku, spec).await? {
        crate::inventory::PreloadOutcome::Loaded { per_shard } => {
            tracing::info!(sku = %sku, stock = b.stock, shards = b.shards, force = b.force, "preloaded over the admin API");
            Ok(body::json(
                StatusCode::CREATED,
                &serde_json::json!({"sku": sku.as_str(), "per_shard": per_shard}),
            ))
        }
        crate::inventory::PreloadOutcome::AlreadyLoaded => {
            Err(ApiError::AlreadyLoaded(sku.to_string()))
        }
    }
}

fn parse_ticket(id: &str) -> Result<crate::inventory::waitlist::TicketId, ApiError> {
    crate::inventory::waitlist::TicketId::parse(id).map_err(|_| ApiError::TicketNotFound)
}

fn parse_rid(id: &str) -> Result<ReservationId, ApiError> {
    // A malformed id cannot name a reservation: not found, like any unknown id.
    ReservationId::parse(id).map_err(|_| ApiError::ReservationNotFound)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReserveBody<'a> {
    // borrowed from the body unless a JSON escape makes a copy necessary
    #[serde(borrow)]
    sku: std::borrow::Cow<'a, str>,
    qty: i64,
    #[serde(borrow)]
    user_id: std::borrow::Cow<'a, str>,
    #[serde(default)]
    waitlist: bool,
}

impl<'a> ReserveBody<'a> {
    /// The body as clients write it, `{"sku":"…","qty":N,"user_id":"…"}`
    /// with an optional `,"waitlist":true|false` before the `}`, no
    /// whitespace, no escape in its strings: read directly, as serde_json
    /// would read it (its decode was ≈ 1,800 instructions of every reserve,
    /// callgrind). Anything else — another order, whitespace, an escape, a
    /// number that is not a plain i64, an unknown field — is None, and
    /// serde_json decodes it (or says what is wrong with it).
    fn plain(b: &'a [u8]) -> Option<ReserveBody<'a>> {
        let rest = b.strip_prefix(br#"{"sku":""#)?;
        let (sku, rest) = plain_str(rest)?;
        let rest = rest.strip_prefix(br#","qty":"#)?;
        let (qty, rest) = plain_i64(rest)?;
        let rest = rest.strip_prefix(br#","user_id":""#)?;
        let (user_id, rest) = plain_str(rest)?;
        let (waitlist, rest) = match rest.strip_prefix(br#","waitlist":"#) {
            None => (false, rest),
            Some(r) => match r.strip_prefix(b"true") {
                Some(r) => (true, r),
                None => (false, r.strip_prefix(b"false")?),
            },
        };
        (rest == b"}").then_some(ReserveBody {
            sku: std::borrow::Cow::Borrowed(sku),
            qty,
            user_id: std::borrow::Cow::Borrowed(user_id),
            waitlist,
        })
    }
}

/// A JSON string's contents up to its closing quote, and what follows the
/// quote; None if it holds an escape or a control character (serde_json's
/// to read or refuse) or is not UTF-8.
fn plain_str(b: &[u8]) -> Option<(&str, &[u8])> {
    let end = b
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
    if b[end] != b'"' {
        return None;
    }
    Some((std::str::from_utf8(&b[..end]).ok()?, &b[end + 1..]))
}

/// A JSON integer that fits an i64 (`-?(0|[1-9][0-9]*)`), and what follows
/// it; None for anything else (a leading zero, a fraction, an exponent and
/// an overflow and -0 included).
fn plain_i64(b: &[u8]) -> Option<(i64, &[u8])> {
    let (neg, digits) = match b.strip_prefix(b"-") {
        Some(r) => (true, r),
        None => (false, b),
    };
    let len = digits.iter().take_while(|c| c.is_ascii_digit()).count();
    if len == 0 || (len > 1 && digits[0] == b'0') {
        return None;
    }
    let mut n: i64 = 0;
    for &c in &digits[..len] {
        let d = i64::from(c - b'0');
        n = n.checked_mul(10)?;
        n = if neg {
            n.checked_sub(d)?
        } else {
            n.checked_add(d)?
        };
    }
    // (serde_json reads -0 as a float, which a qty refuses)
    if neg && n == 0 {
        return None;
    }
    Some((n, &digits[len..]))
}

async fn reserve(
    state: &AppState,
    req: Request<Incoming>,
    tenant: &Tenant,
) -> Result<Response<Body>, ApiError> {
    let key = match req.headers().get(&IDEMPOTENCY_KEY) {
        None => {
            return Err(ApiError::InvalidRequest(
                "the Idempotency-Key header is required".into(),
            ))
        }
        Some(v) => {
            let v = v.to_str().map_err(|_| {
                ApiError::InvalidRequest("Idempotency-Key must be visible ASCII".into())
            })?;
            // the client's key, in its storefront's namespace
            ScopedKey::new(
                tenant,
                &IdempotencyKey::parse(v).map_err(ApiError::InvalidRequest)?,
            )
        }
    };
    let bytes = body::read_body(req, state.config.body_limit_bytes).await?;
    let b = match ReserveBody::plain(&bytes) {
        Some(b) => b,
        None => body::decode(&bytes)?,
    };
    let request = ReserveRequest {
        sku: Sku::parse(&b.sku).map_err(ApiError::InvalidRequest)?,
        qty: Qty::parse(b.qty, state.config.max_qty_per_request)
            .map_err(ApiError::InvalidRequest)?,
        user: UserId::parse(&b.user_id).map_err(ApiError::InvalidRequest)?,
        key,
        waitlist: b.waitlist,
    };
    state
        .live()
        .limiter
        .check_user(tenant.scope(), request.user.as_str())
        .map_err(|l| limited(state, l))?;
    let outcome = match state.inventory.reserve(&request).await {
        Err(crate::inventory::InventoryError::PurchaseCap) => {
            state.metrics.outcome("purchase_limit");
            return Err(ApiError::PurchaseCap);
        }
        other => other?,
    };
    tracing::debug!(sku = %request.sku, key = %request.key.redacted(), ?outcome, "reserve");
    match outcome {
        ReserveOutcome::Held(r) => {
            state.metrics.outcome("held");
            Ok(signed(state, StatusCode::CREATED, r))
        }
        ReserveOutcome::Replayed(r) => {
            state.metrics.outcome("replayed");
            Ok(signed(state, StatusCode::OK, r))
        }
        ReserveOutcome::SoldOut => {
            state.metrics.outcome("sold_out");
            Err(ApiError::SoldOut)
        }
        ReserveOutcome::Waitlisted(t) => {
            state.metrics.outcome("waitlisted");
            Ok(body::json(StatusCode::ACCEPTED, &t))
        }
        ReserveOutcome::WaitlistReplayed(t) => {
            state.metrics.outcome("replayed");
            Ok(body::json(StatusCode::OK, &t))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserve_body_borrows_its_strings_and_copies_only_escaped_ones() {
        let raw = br#"{"sku":"A-1","qty":2,"user_id":"u\u0031"}"#;
        let b: ReserveBody = body::decode(raw).unwrap();
        assert!(matches!(b.sku, std::borrow::Cow::Borrowed("A-1")));
        assert_eq!(b.user_id, "u1");
        assert_eq!((b.qty, b.waitlist), (2, false));
        let unknown = body::decode::<ReserveBody>(br#"{"sku":"A","qty":1,"user_id":"u","x":1}"#);
        assert!(matches!(unknown, Err(ApiError::InvalidRequest(_))));
    }

    #[test]
    fn the_plain_reserve_body_reads_as_serde_json_reads_it_and_nothing_else() {
        let bodies: Vec<String> = [
            r#"{"sku":"A-1","qty":2,"user_id":"u1"}"#,
            r#"{"sku":"A-1","qty":2,"user_id":"u1","waitlist":true}"#,
            r#"{"sku":"A-1","qty":2,"user_id":"u1","waitlist":false}"#,
            r#"{"sku":"","qty":0,"user_id":""}"#,
            r#"{"sku":"ü買","qty":-7,"user_id":"名前 with space"}"#,
            r#"{"sku":"A","qty":9223372036854775807,"user_id":"u"}"#,
            r#"{"sku":"A","qty":-9223372036854775808,"user_id":"u"}"#,
            // serde_json's to read (or refuse)
            r#"{"sku":"A","qty":9223372036854775808,"user_id":"u"}"#,
            r#"{"sku":"A","qty":01,"user_id":"u"}"#,
            r#"{"sku":"A","qty":-0,"user_id":"u"}"#,
            r#"{"sku":"A","qty":-01,"user_id":"u"}"#,
            r#"{"sku":"A","qty":1.0,"user_id":"u"}"#,
            r#"{"sku":"A","qty":1e2,"user_id":"u"}"#,
            r#"{"sku":"A","qty":-,"user_id":"u"}"#,
            r#"{"sku":"A","qty":"1","user_id":"u"}"#,
            r#"{"sku":"A\u0031","qty":1,"user_id":"u"}"#,
            r#"{"sku":"A","qty":1,"user_id":"u\"v"}"#,
            r#"{"sku":"A","qty":1,"user_id":"u\\v"}"#,
            r#"{"sku":"A","qty":1,"user_id":"u\v"}"#,
            "{\"sku\":\"A\tB\",\"qty\":1,\"user_id\":\"u\"}",
            r#"{"sku":"A","qty":1,"user_id":"u" }"#,
            r#"{"sku":"A","qty":1,"user_id":"u"} "#,
            r#"{"sku":"A","qty":1,"user_id":"u"}}"#,
            r#"{"sku":"A","qty":1,"user_id":"u","x":1}"#,
            r#"{"sku":"A","qty":1,"user_id":"u","waitlist":1}"#,
            r#"{"sku":"A","qty":1,"user_id":"u","waitlist":true,"waitlist":true}"#,
            r#"{"qty":1,"sku":"A","user_id":"u"}"#,
            r#"{"sku":"A","qty":1}"#,
            r#"{"sku":"A","qty":1,"user_id":"u""#,
            r#"{"sku":"A","qty":1,"user_id":"u"#,
            "",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut plain = 0;
        for body in &bodies {
            let serde = body::decode::<ReserveBody>(body.as_bytes()).ok().map(|b| {
                (
                    b.sku.into_owned(),
                    b.qty,
                    b.user_id.into_owned(),
                    b.waitlist,
                )
            });
            let fast = ReserveBody::plain(body.as_bytes());
            if let Some(f) = fast {
                plain += 1;
                let f = (
                    f.sku.into_owned(),
                    f.qty,
                    f.user_id.into_owned(),
                    f.waitlist,
                );
                assert_eq!(Some(f), serde, "{body}");
            }
        }
        assert_eq!(plain, 7, "the first seven are read directly");
        // every prefix of a plain body: never read as something else
        let whole = r#"{"sku":"A-1","qty":12,"user_id":"u1","waitlist":true}"#;
        for end in 0..whole.len() {
            assert!(
                ReserveBody::plain(&whole.as_bytes()[..end]).is_none(),
                "{end}"
            );
        }
        // invalid UTF-8 in a string: serde_json's to refuse
        assert!(ReserveBody::plain(b"{\"sku\":\"\xff\",\"qty\":1,\"user_id\":\"u\"}").is_none());
    }

    #[test]
    fn a_fresh_request_id_is_32_hex_digits() {
        let id = fresh_request_id();
        let s = id.to_str().unwrap();
        assert_eq!(s.len(), 32);
        assert!(s.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(fresh_request_id(), id);
    }
}
