//! JSON in and out: body limits, content type, the error body shape.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body as _;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, ETAG};
use hyper::{Request, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde::Serialize;

use crate::error::ApiError;
use crate::inventory::stock_doc::StockDoc;
use crate::inventory::Reservation;

pub type Body = Full<Bytes>;

/// Read a JSON body of at most `limit` bytes into `T`. Wrong content type,
/// an oversized body, malformed JSON, missing or unknown fields are all the
/// client's mistake: 422 `invalid_request` with what was wrong.
pub async fn read_json<T: DeserializeOwned>(
    req: Request<Incoming>,
    limit: usize,
) -> Result<T, ApiError> {
    decode(&read_body(req, limit).await?)
}

/// The JSON body of [`read_body`] as `T`, which may borrow from it (no copy
/// of its strings on the reserve path).
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::InvalidRequest(format!("invalid JSON body: {e}")))
}

/// The body of a JSON request, at most `limit` bytes, under the same rules as
/// [`read_json`]; [`decode`] it.
pub async fn read_body<B>(req: Request<B>, limit: usize) -> Result<Bytes, ApiError>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // (bytes, not str: the UTF-8 check and the char search were ≈ 300
    // instructions; a parameter after `;` is not looked at either way)
    let is_json = req.headers().get(CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        // (what `to_str` accepts: visible ASCII, space and tab)
        if !v.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b)) {
            return false;
        }
        let media = v.iter().position(|&b| b == b';').map_or(v, |end| &v[..end]);
        media.trim_ascii().eq_ignore_ascii_case(b"application/json")
    });
    if !is_json {
        return Err(ApiError::InvalidRequest(
            "Content-Type must be application/json".into(),
        ));
    }
    // Frame by frame rather than `collect`: a small body arrives as one
    // frame, which is then the answer as it is (no buffer list, no copy).
    let mut body = Limited::new(req.into_body(), limit);
    let mut first: Option<Bytes> = None;
    let mut joined: Option<bytes::BytesMut> = None;
    // (a body whose declared length has arrived ends without another poll)
    while let Some(frame) = if first.is_some() && body.is_end_stream() {
        None
    } else {
        body.frame().await
    } {
        let frame = frame.map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ApiError::InvalidRequest(format!("request body is larger than {limit} bytes"))
            } else {
                ApiError::InvalidRequest(format!("cannot read request body: {e}"))
            }
        })?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers: not part of the JSON
        };
        match (&mut joined, first.take()) {
            (Some(all), _) => all.extend_from_slice(&data),
            (None, None) => first = Some(data),
            (None, Some(one)) => {
                let mut all = bytes::BytesMut::with_capacity(one.len() + data.len());
                all.extend_from_slice(&one);
                all.extend_from_slice(&data);
                joined = Some(all);
            }
        }
    }
    Ok(match joined {
        Some(all) => all.freeze(),
        None => first.unwrap_or_default(),
    })
}

pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(bytes) => with_type(status, Bytes::from(bytes), "application/json"),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode response");
            with_type(
                StatusCode::INTERNAL_SERVER_ERROR,
                Bytes::from_static(br#"{"error":{"code":"internal","message":"internal error"}}"#),
                "application/json",
            )
        }
    }
}

/// A reservation as [`json`] would encode it, byte for byte, written
/// directly: the answer of every hold (serde_json escapes a string one
/// character at a time; these fields rarely need any escaping).
pub fn reservation(status: StatusCode, r: &Reservation) -> Response<Body> {
    let mut out = Vec::with_capacity(
        128 + r.reservation_id.len()
            + r.sku.len()
            + r.user_id.len()
            + r.expires_at.len()
            + r.token.as_ref().map_or(0, |t| t.len() + 10),
    );
    out.extend_from_slice(b"{\"reservation_id\":");
    push_str(&mut out, &r.reservation_id);
    out.extend_from_slice(b",\"sku\":");
    push_str(&mut out, &r.sku);
    out.extend_from_slice(b",\"qty\":");
    out.extend_from_slice(itoa::Buffer::new().format(r.qty).as_bytes());
    out.extend_from_slice(b",\"user_id\":");
    push_str(&mut out, &r.user_id);
    out.extend_from_slice(b",\"status\":");
    push_str(&mut out, r.status);
    out.extend_from_slice(b",\"expires_at\":");
    push_str(&mut out, &r.expires_at);
    if let Some(token) = &r.token {
        // (base64url and dots: never escaped)
        out.extend_from_slice(b",\"token\":");
        push_str(&mut out, token);
    }
    out.push(b'}');
    with_type(status, Bytes::from(out), "application/json")
}

/// `s` as a JSON string: as it is when no byte needs escaping, else escaped
/// by serde_json.
fn push_str(out: &mut Vec<u8>, s: &str) {
    if !needs_escape(s.as_bytes()) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else if serde_json::to_writer(&mut *out, s).is_err() {
        // (writing into a Vec cannot fail; never an invalid document)
        out.extend_from_slice(b"\"\"");
    }
}

/// The stock document with its cache headers: `ETag`, and `Cache-Control:
/// public, max-age=` the snapshot's period in whole seconds, rounded up
/// (`no-cache` when it is read live). A request whose `If-None-Match` names
/// the document's tag (or `*`) gets `304` and no body.
pub fn stock_document(
    doc: &StockDoc,
    stock_cache_ms: u64,
    if_none_match: Option<&HeaderValue>,
) -> Response<Body> {
    let fresh = if_none_match.is_some_and(|v| etag_matches(v.as_bytes(), doc.etag.as_bytes()));
    let mut resp = if fresh {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        with_type(StatusCode::OK, doc.body.clone(), "application/json")
    };
    let headers = resp.headers_mut();
    if let Ok(tag) = HeaderValue::from_str(&doc.etag) {
        headers.insert(ETAG, tag);
    }
    let control = if stock_cache_ms == 0 {
        HeaderValue::from_static("no-cache")
    } else {
        let secs = stock_cache_ms.div_ceil(1000);
        HeaderValue::from_str(&format!("public, max-age={secs}"))
            .unwrap_or(HeaderValue::from_static("no-cache"))
    };
    headers.insert(CACHE_CONTROL, control);
    resp
}

/// `If-None-Match` against a strong tag, by the weak comparison RFC 9110
/// prescribes for it: a list of tags, each possibly `W/`-prefixed, or `*`.
fn etag_matches(header: &[u8], tag: &[u8]) -> bool {
    header.split(|b| *b == b',').any(|t| {
        let t = t.trim_ascii();
        let t = t.strip_prefix(b"W/").unwrap_or(t);
        t == b"*" || t == tag
    })
}

/// Does `s` hold a byte JSON escapes (a control character, `"` or `\\`)?
/// Eight bytes at a time (the byte loop was ≈ 230 instructions per field
/// of a hold's answer, callgrind): a word has a byte below 0x20 iff
/// `(w - 0x20…) & !w & 0x80…` is not 0, and a byte equal to `c` iff the
/// same holds for `w ^ c…` below 1 (exact for "any byte", the classic
/// has-less / has-zero tests).
fn needs_escape(s: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below = |w: u64, n: u64| w.wrapping_sub(ONES * n) & !w & HIGH != 0;
    let mut words = s.chunks_exact(8);
    for c in &mut words {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let w = u64::from_le_bytes(w);
        if below(w, 0x20) || below(w ^ (ONES * 0x22), 1) || below(w ^ (ONES * 0x5c), 1) {
            return true;
        }
    }
    words
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

/// `GET /v1/skus/{sku}/draw`: the bytes encoded once. A drawn document is
/// final (`immutable`, a CDN may keep it for good); before that it changes
/// at the close and the reveal, so it is not cached.
pub fn draw_document(d: &crate::inventory::DrawBody) -> Response<Body> {
    let mut resp = with_type(StatusCode::OK, d.json.clone(), "application/json");
    let cache = if d.fin {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    resp.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        HeaderValue::from_static(cache),
    );
    resp
}

pub fn with_type(status: StatusCode, body: Bytes, content_type: &'static str) -> Response<Body> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: String,
    /// A cart's refused line: its index and SKU.
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sku: Option<String>,
    /// `sale_not_open`: when the sale opens (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    opens_at: Option<String>,
    /// An `incomplete` cart's lines that are not sold (every other is).
    #[serde(skip_serializing_if = "Option::is_none")]
    unsold: Option<Vec<usize>>,
}

fn error_body(e: &ApiError) -> ErrorBody<'static> {
    let (line, sku) = match e {
        ApiError::CartLine { line, sku, .. } => (Some(*line), Some(sku.clone())),
        _ => (None, None),
    };
    let unsold = match e {
        ApiError::CartIncomplete { unsold } => Some(unsold.clone()),
        _ => None,
    };
    ErrorBody {
        error: ErrorDetail {
            code: e.code(),
            message: e.message(),
            line,
            sku,
            opens_at: match e {
                ApiError::SaleNotOpen { opens_at, .. } => Some(opens_at.clone()),
                _ => None,
            },
            unsold,
        },
    }
}

/// The body of every 409 `sold_out`, as [`error`] would encode it.
static SOLD_OUT: std::sync::LazyLock<Bytes> = std::sync::LazyLock::new(|| {
    serde_json::to_vec(&error_body(&ApiError::SoldOut))
        .map(Bytes::from)
        .unwrap_or_else(|_| {
            Bytes::from_static(br#"{"error":{"code":"sold_out","message":"sold out"}}"#)
        })
});

/// `{"error":{"code":"...","message":"..."}}` with the error's status (and
/// `Retry-After` on 429 and 503, `WWW-Authenticate` on 401, `Allow` on 405).
pub fn error(e: &ApiError) -> Response<Body> {
    let mut resp = match e {
        // the answer most of a sale's crowd gets: encoded once
        ApiError::SoldOut => with_type(e.status(), SOLD_OUT.clone(), "application/json"),
        _ => json(e.status(), &error_body(e)),
    };
    match e {
        ApiError::RateLimited { retry_after_secs }
        | ApiError::SaleNotOpen {
            retry_after_secs, ..
        } => {
            if let Ok(v) = HeaderValue::from_str(&retry_after_secs.to_string()) {
                resp.headers_mut().insert(hyper::header::RETRY_AFTER, v);
            }
        }
        ApiError::Unauthorized => {
            resp.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            );
        }
        ApiError::MethodNotAllowed(allow) => {
            resp.headers_mut()
                .insert(hyper::header::ALLOW, HeaderValue::from_static(allow));
        }
        _ if e.status() == StatusCode::SERVICE_UNAVAILABLE => {
            // Redis is back within a reconnect or two, and a retry is safe
            resp.headers_mut()
                .insert(hyper::header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        _ => {}
    }
    resp
}

/// The whole HTTP/1.1 answer to a connection refused at accept
/// (`max_connections` open), written before it is closed: no request was read.
pub static TOO_MANY_CONNECTIONS: std::sync::LazyLock<Bytes> = std::sync::LazyLock::new(|| {
    let e = ApiError::TooManyConnections;
    let body = serde_json::to_string(&error_body(&e)).unwrap_or_default();
    Bytes::from(format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    ))
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_incomplete_cart_names_its_unsold_lines() {
        let e = ApiError::CartIncomplete { unsold: vec![0, 2] };
        let v = serde_json::to_value(error_body(&e)).unwrap();
        assert_eq!(v["error"]["code"], "cart_incomplete");
        assert_eq!(v["error"]["unsold"], serde_json::json!([0, 2]));
        assert_eq!(
            v["error"]["message"],
            "the cart is incomplete: lines 0, 2 are not sold, every other line is sold"
        );
        // other errors carry no such field
        let v = serde_json::to_value(error_body(&ApiError::CartState("released"))).unwrap();
        assert!(v["error"].get("unsold").is_none(), "{v}");
    }

    #[test]
    fn needs_escape_finds_every_escaped_byte_at_every_position() {
        let plain: Vec<u8> = (0x20u8..=0xff)
            .filter(|&b| b != b'"' && b != b'\\')
            .collect();
        assert!(!needs_escape(&plain));
        assert!(!needs_escape("ünïcödé ✓ 買い物 and more text".as_bytes()));
        for len in 1..=20 {
            for at in 0..len {
                for bad in (0u8..0x20).chain([b'"', b'\\']) {
                    let mut s = vec![b'a'; len];
                    s[at] = bad;
                    assert!(needs_escape(&s), "{bad:#x} at {at} of {len}");
                    // next to bytes that could borrow into it
                    let mut s = vec![0xffu8; len];
                    s[at] = bad;
                    assert!(needs_escape(&s), "{bad:#x} at {at} of {len}");
                }
                let mut s = vec![b'a'; len];
                s[at] = 0x7f;
                assert!(!needs_escape(&s));
                s[at] = 0x21;
                assert!(!needs_escape(&s));
            }
        }
    }

    #[tokio::test]
    async fn a_reservation_is_encoded_as_serde_json_would() {
        for user in [
            "u-1",
            "name with \"quotes\" and \\ backslash",
            "ünïcödé ✓ 買い物",
            "tab\tand\u{7f}del",
            "",
        ] {
            for token in [None, Some("eyJhbGciOiJFZERTQSJ9.e30.c2ln-_".to_string())] {
                let r = Reservation {
                    reservation_id: "sku-1.3.0123456789abcdef0123456789abcdef".into(),
                    sku: "sku-1".into(),
                    qty: 12,
                    user_id: user.into(),
                    status: "held",
                    expires_at: "2026-12-02T05:27:46.271Z".into(),
                    expires_at_ms: 1_764_653_266_271,
                    token,
                };
                let resp = reservation(StatusCode::CREATED, &r);
                assert_eq!(resp.status(), StatusCode::CREATED);
                assert_eq!(resp.headers()[CONTENT_TYPE], "application/json");
                let bytes = resp.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(bytes, serde_json::to_vec(&r).unwrap(), "{user:?}");
            }
        }
    }
    use http_body_util::BodyExt;

    type Frames = http_body_util::StreamBody<
        futures::stream::Iter<
            std::vec::IntoIter<Result<hyper::body::Frame<Bytes>, std::convert::Infallible>>,
        >,
    >;

    /// A JSON request whose body arrives in these frames.
    fn chunked(parts: &[&'static str]) -> Request<Frames> {
        let frames: Vec<_> = parts
            .iter()
            .map(|p| Ok(hyper::body::Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        Request::builder()
            .header(CONTENT_TYPE, "application/json; charset=utf-8")
            .body(http_body_util::StreamBody::new(futures::stream::iter(
                frames,
            )))
            .unwrap()
    }

    #[tokio::test]
    async fn a_body_in_one_frame_or_many_reads_the_same() {
        let whole = r#"{"sku":"A","qty":1,"user_id":"u"}"#;
        assert_eq!(read_body(chunked(&[whole]), 1024).await.unwrap(), whole);
        let parts = [r#"{"sku":"#, r#""A","qty":1,"#, r#""user_id":"u"}"#];
        assert_eq!(read_body(chunked(&parts), 1024).await.unwrap(), whole);
        assert_eq!(read_body(chunked(&[]), 1024).await.unwrap(), "");
        // the limit counts every frame
        let err = read_body(chunked(&parts), 20).await.unwrap_err();
        assert!(
            matches!(&err, ApiError::InvalidRequest(m) if m.contains("larger than 20 bytes")),
            "{err:?}"
        );
        let mut plain = chunked(&[whole]);
        plain
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(matches!(
            read_body(plain, 1024).await,
            Err(ApiError::InvalidRequest(_))
        ));
    }

    #[tokio::test]
    async fn the_cached_sold_out_body_is_the_encoded_error() {
        let resp = error(&ApiError::SoldOut);
        assert_eq!(resp.status(), StatusCode::CONFLICT);
        assert_eq!(resp.headers()[CONTENT_TYPE], "application/json");
        let got = resp.into_body().collect().await.unwrap().to_bytes();
        let want = serde_json::to_vec(&error_body(&ApiError::SoldOut)).unwrap();
        assert_eq!(got, want);
        let v: serde_json::Value = serde_json::from_slice(&got).unwrap();
        assert_eq!(v["error"]["code"], "sold_out");
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    }
}
