//! Errors, and the one place that maps them to HTTP, by who is at fault:
//! a client mistake is a 4xx with a useful message, a dependency that is down
//! is a 503, a bug is a 500 with a generic body (the cause goes to the log).

use hyper::StatusCode;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("the Idempotency-Key was already used with a different request body")]
    IdempotencyKeyReused,
    #[error("unknown sku {0}")]
    UnknownSku(String),
    #[error("no such reservation")]
    ReservationNotFound,
    #[error("no route for {0}")]
    RouteNotFound(String),
    /// Carries the path's methods, for the `Allow` header (RFC 9110).
    #[error("method not allowed; this path allows {0}")]
    MethodNotAllowed(&'static str),
    /// The request's head (request line and headers) is over the limit.
    #[error("the request line and headers are larger than {0} bytes")]
    HeadersTooLarge(usize),
    /// Refused at accept: `max_connections` are open.
    #[error("too many open connections; retry shortly")]
    TooManyConnections,
    #[error("sold out")]
    SoldOut,
    #[error("the waitlist of this SKU is full")]
    WaitlistFull,
    #[error("this buyer already waits for this SKU with ticket {0}")]
    AlreadyWaitlisted(String),
    #[error("no such waitlist ticket")]
    TicketNotFound,
    #[error("the ticket is {0}")]
    TicketState(&'static str),
    #[error("{0} is already loaded (a live sale?); nothing changed — pass force to overwrite its available units")]
    AlreadyLoaded(String),
    #[error("this buyer already holds or bought the most units of this SKU allowed per buyer")]
    PurchaseLimit,
    #[error("missing or unknown API key")]
    Unauthorized,
    #[error("this key may not use this endpoint")]
    Forbidden,
    #[error("too many requests; retry after {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    /// The reservation is not in a state that allows the operation; carries
    /// the state it is in (confirmed, released, expired).
    #[error("the reservation is {0}")]
    ReservationState(&'static str),
    #[error("redis is unavailable")]
    RedisUnavailable(#[source] InventoryError),
    #[error("request timed out")]
    Timeout,
    #[error("internal error")]
    Internal(#[source] InventoryError),
    /// `/readyz`: not ready for a reason other than Redis being unreachable
    /// (a Redis flashgate must not run on, a stalled background task).
    #[error("{message}")]
    NotReady { code: &'static str, message: String },
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest(_) | ApiError::IdempotencyKeyReused => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::UnknownSku(_)
            | ApiError::ReservationNotFound
            | ApiError::TicketNotFound
            | ApiError::RouteNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::SoldOut
            | ApiError::ReservationState(_)
            | ApiError::PurchaseLimit
            | ApiError::AlreadyLoaded(_)
            | ApiError::WaitlistFull
            | ApiError::AlreadyWaitlisted(_)
            | ApiError::TicketState(_) => StatusCode::CONFLICT,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::RedisUnavailable(_)
            | ApiError::Timeout
            | ApiError::TooManyConnections
            | ApiError::NotReady { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The machine-readable code of the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidRequest(_) => "invalid_request",
            ApiError::IdempotencyKeyReused => "idempotency_key_reused",
            ApiError::UnknownSku(_) => "unknown_sku",
            ApiError::ReservationNotFound => "reservation_not_found",
            ApiError::RouteNotFound(_) => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::HeadersTooLarge(_) => "headers_too_large",
            ApiError::TooManyConnections => "too_many_connections",
            ApiError::SoldOut => "sold_out",
            ApiError::WaitlistFull => "waitlist_full",
            ApiError::AlreadyWaitlisted(_) => "already_waitlisted",
            ApiError::TicketNotFound => "ticket_not_found",
            ApiError::TicketState("promoted") => "ticket_promoted",
            ApiError::TicketState(_) => "ticket_expired",
            ApiError::PurchaseLimit => "purchase_limit",
            ApiError::AlreadyLoaded(_) => "already_loaded",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden => "forbidden",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::ReservationState("confirmed") => "reservation_confirmed",
            ApiError::ReservationState("released") => "reservation_released",
            ApiError::ReservationState(_) => "reservation_expired",
            ApiError::RedisUnavailable(_) => "redis_unavailable",
            ApiError::Timeout => "timeout",
            ApiError::Internal(_) => "internal",
            ApiError::NotReady { code, .. } => code,
        }
    }

    /// The human message. Internal causes stay in the log.
    ///
    /// A 503 says what is known of the outcome: Redis refused the command or
    /// was never reached (it did not run), or it did not answer in time (it
    /// may have run). Either way a retry is safe — every script is idempotent
    /// and a reserve replays its key's first outcome — but only the first
    /// may say the request was not carried out.
    pub fn message(&self) -> String {
        match self {
            ApiError::RedisUnavailable(InventoryError::OutcomeUnknown(_)) => {
                format!("the stock store did not answer in time: {UNKNOWN_OUTCOME}")
            }
            ApiError::Timeout => format!("the request took too long: {UNKNOWN_OUTCOME}"),
            ApiError::RedisUnavailable(_) => {
                "the stock store is unavailable and this request was not carried out; \
                 retry with the same Idempotency-Key"
                    .into()
            }
            ApiError::Internal(_) => "internal error".into(),
            other => other.to_string(),
        }
    }
}

/// The second half of a 503's message when the request may have run.
const UNKNOWN_OUTCOME: &str = "the outcome of this request is unknown (it may have taken \
     effect); retrying with the same Idempotency-Key is safe and answers with the first \
     outcome, never a second reservation";

/// What can go wrong below the HTTP layer.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// Redis refused the command (LOADING, READONLY, a full command queue…)
    /// or could not be reached before it was sent: it did not run.
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    /// Redis did not answer in time, or the connection broke with the command
    /// in flight: it may or may not have run. Every script is idempotent, so
    /// a retry is safe.
    #[error("no answer from redis: {0}")]
    OutcomeUnknown(String),
    /// Redis answered something the protocol does not allow: a bug.
    #[error("unexpected reply from redis: {0}")]
    Protocol(String),
    /// Redis is reachable but not one flashgate may run on (too old, or it
    /// may evict keys: `inventory/preflight.rs`). The message says why.
    #[error("{0}")]
    Unsuitable(String),
    #[error(transparent)]
    Api(Box<ApiError>),
}

impl InventoryError {
    /// Redis is out of reach or did not answer: [`Self::Unavailable`] or
    /// [`Self::OutcomeUnknown`] (both a 503, both "retry later").
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            InventoryError::Unavailable(_) | InventoryError::OutcomeUnknown(_)
        )
    }
}

impl From<ApiError> for InventoryError {
    fn from(e: ApiError) -> Self {
        InventoryError::Api(Box::new(e))
    }
}

impl From<InventoryError> for ApiError {
    fn from(e: InventoryError) -> Self {
        match e {
            InventoryError::Unavailable(_) | InventoryError::OutcomeUnknown(_) => {
                ApiError::RedisUnavailable(e)
            }
            InventoryError::Protocol(_) => ApiError::Internal(e),
            InventoryError::Unsuitable(message) => ApiError::NotReady {
                code: "redis_unsuitable",
                message,
            },
            InventoryError::Api(api) => *api,
        }
    }
}

impl From<fred::error::Error> for InventoryError {
    fn from(e: fred::error::Error) -> Self {
        use fred::error::ErrorKind;
        match e.kind() {
            // sent, or perhaps sent, and no answer: it may have run
            ErrorKind::IO | ErrorKind::Timeout | ErrorKind::Canceled => {
                InventoryError::OutcomeUnknown(e.to_string())
            }
            // never queued (a full command buffer), no route to a node, a
            // redirection, a refused login: it did not run
            ErrorKind::Backpressure | ErrorKind::Routing | ErrorKind::Cluster | ErrorKind::Auth => {
                InventoryError::Unavailable(e.to_string())
            }
            // LOADING / MASTERDOWN / CLUSTERDOWN / TRYAGAIN: the server is there but
            // cannot serve yet — the same "retry later" for the client.
            _ if [
                "LOADING",
                "MASTERDOWN",
                "CLUSTERDOWN",
                "TRYAGAIN",
                "READONLY",
            ]
            .iter()
            .any(|p| e.details().starts_with(p)) =>
            {
                InventoryError::Unavailable(e.to_string())
            }
            _ => InventoryError::Protocol(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fred::error::{Error, ErrorKind};

    fn answer(e: Error) -> (StatusCode, &'static str, String) {
        let api = ApiError::from(InventoryError::from(e));
        (api.status(), api.code(), api.message())
    }

    #[test]
    fn a_503_says_whether_the_command_ran() {
        // no answer: it may have run
        for kind in [ErrorKind::Timeout, ErrorKind::IO, ErrorKind::Canceled] {
            let (status, code, msg) = answer(Error::new(kind.clone(), "x"));
            assert_eq!(
                (status, code),
                (StatusCode::SERVICE_UNAVAILABLE, "redis_unavailable")
            );
            assert!(msg.contains("unknown"), "{kind:?}: {msg}");
        }
        // refused or never sent: it did not run
        for e in [
            Error::new(ErrorKind::Backpressure, "queue full"),
            Error::new(
                ErrorKind::Unknown,
                "LOADING Redis is loading the dataset in memory",
            ),
        ] {
            let (status, code, msg) = answer(e);
            assert_eq!(
                (status, code),
                (StatusCode::SERVICE_UNAVAILABLE, "redis_unavailable")
            );
            assert!(msg.contains("not carried out"), "{msg}");
            assert!(!msg.contains("unknown"), "{msg}");
        }
        assert!(ApiError::Timeout.message().contains("unknown"));
    }
}
