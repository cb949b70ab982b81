//! JSON in and out: body limits, content type, the error body shape.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde::Serialize;

use crate::error::ApiError;

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
pub async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, ApiError> {
    let is_json = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(ApiError::InvalidRequest(
            "Content-Type must be application/json".into(),
        ));
    }
    let bytes = Limited::new(req.into_body(), limit)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ApiError::InvalidRequest(format!("request body is larger than {limit} bytes"))
            } else {
                ApiError::InvalidRequest(format!("cannot read request body: {e}"))
            }
        })?
        .to_bytes();
    Ok(bytes)
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
}

fn error_body(e: &ApiError) -> ErrorBody<'static> {
    ErrorBody {
        error: ErrorDetail {
            code: e.code(),
            message: e.message(),
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
/// `Retry-After` on 429, `WWW-Authenticate` on 401).
pub fn error(e: &ApiError) -> Response<Body> {
    let mut resp = match e {
        // the answer most of a sale's crowd gets: encoded once
        ApiError::SoldOut => with_type(e.status(), SOLD_OUT.clone(), "application/json"),
        _ => json(e.status(), &error_body(e)),
    };
    match e {
        ApiError::RateLimited { retry_after_secs } => {
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
        _ => {}
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

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
