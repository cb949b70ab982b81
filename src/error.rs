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
    #[error("method not allowed")]
    MethodNotAllowed,
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
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
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
            ApiError::RedisUnavailable(_) | ApiError::Timeout | ApiError::NotReady { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
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
            ApiError::MethodNotAllowed => "method_not_allowed",
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
    pub fn message(&self) -> String {
        match self {
            ApiError::RedisUnavailable(_) => {
                "the stock store is unavailable; nothing was changed, retry with the same Idempotency-Key".into()
            }
            ApiError::Timeout => {
                "the request took too long; retry with the same Idempotency-Key".into()
            }
            ApiError::Internal(_) => "internal error".into(),
            other => other.to_string(),
        }
    }
}

/// What can go wrong below the HTTP layer.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// Redis could not be reached or did not answer in time. The outcome of
    /// the command is unknown; every script is idempotent, so a retry is safe.
    #[error("redis unavailable: {0}")]
    Unavailable(String),
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

impl From<ApiError> for InventoryError {
    fn from(e: ApiError) -> Self {
        InventoryError::Api(Box::new(e))
    }
}

impl From<InventoryError> for ApiError {
    fn from(e: InventoryError) -> Self {
        match e {
            InventoryError::Unavailable(_) => ApiError::RedisUnavailable(e),
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
            ErrorKind::IO
            | ErrorKind::Timeout
            | ErrorKind::Canceled
            | ErrorKind::Backpressure
            | ErrorKind::Routing
            | ErrorKind::Cluster
            | ErrorKind::Auth => InventoryError::Unavailable(e.to_string()),
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
