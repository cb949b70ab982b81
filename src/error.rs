//! HTTP's errors, and the one place that maps them (and inventory's
//! [`InventoryError`], which knows nothing of HTTP) to HTTP, by who is at fault:
//! a client mistake is a 4xx with a useful message, a dependency that is down
//! is a 503, a bug is a 500 with a generic body (the cause goes to the log).

use hyper::StatusCode;

use crate::inventory::InventoryError;

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
    /// A configuration reload refused: nothing changed.
    #[error("the configuration was not reloaded, nothing changed: {0}")]
    InvalidConfig(String),
    #[error("{0} is already loaded (a live sale?); nothing changed — pass force to overwrite its available units")]
    AlreadyLoaded(String),
    #[error("this buyer already holds or bought the most units of this SKU allowed per buyer")]
    PurchaseCap,
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
    /// A cart's line could not be held (`code`: sold_out, purchase_limit);
    /// the body names the line (its index and SKU).
    #[error("line {line} ({sku}) of the cart could not be held; the cart holds nothing")]
    CartLine {
        line: usize,
        sku: String,
        code: &'static str,
    },
    #[error("no such cart")]
    CartNotFound,
    /// The cart's state does not allow the operation (docs/carts.md).
    #[error("the cart is {0}")]
    CartState(&'static str),
    /// The cart ended `incomplete` (docs/carts.md): some lines are sold, the
    /// lines in `unsold` (indexes; also in the body) are not.
    #[error("the cart is incomplete: lines {} are not sold, every other line is sold", list(.unsold))]
    CartIncomplete { unsold: Vec<usize> },
    #[error("too many carts are being made right now; retry shortly")]
    CartsBusy,
    /// `/readyz`: not ready for a reason other than Redis being unreachable
    /// (a Redis flashgate must not run on, a stalled background task).
    #[error("{message}")]
    NotReady { code: &'static str, message: String },
    // The sale window and its pre-queue (docs/fair-draw.md).
    #[error("{0}")]
    InvalidSaleWindow(String),
    /// Carries `opens_at` (RFC 3339) for the body and the seconds left
    /// (rounded up) for `Retry-After`.
    #[error("the sale has not opened yet; it opens at {opens_at}")]
    SaleNotOpen {
        opens_at: String,
        retry_after_secs: u64,
    },
    #[error("the sale has closed")]
    SaleClosed,
    #[error("the pre-queue has closed and its draw is being applied; retry in a second")]
    DrawPending,
    /// `GET /v1/skus/{sku}/draw` of a SKU loaded without `opens_at`.
    #[error("{0} has no opens_at, so no pre-queue draw")]
    NoDraw(String),
}

impl ApiError {
    /// Every `code` an error body can carry: the values of [`Self::code`]
    /// (the test below holds the two together). `openapi.yaml` lists exactly
    /// these (tests/it/openapi.rs).
    pub const CODES: &'static [&'static str] = &[
        "invalid_request",
        "idempotency_key_reused",
        "unknown_sku",
        "reservation_not_found",
        "not_found",
        "method_not_allowed",
        "headers_too_large",
        "too_many_connections",
        "sold_out",
        "waitlist_full",
        "already_waitlisted",
        "ticket_not_found",
        "ticket_promoted",
        "ticket_expired",
        "purchase_limit",
        "already_loaded",
        "unauthorized",
        "forbidden",
        "rate_limited",
        "reservation_confirmed",
        "reservation_released",
        "reservation_expired",
        "redis_unavailable",
        "timeout",
        "internal",
        "invalid_config",
        // carts (docs/carts.md); a cart's refused line carries `sold_out`
        // or `purchase_limit`
        "cart_not_found",
        "cart_pending",
        "cart_failed",
        "cart_confirmed",
        "cart_released",
        "cart_expired",
        "cart_incomplete",
        "carts_busy",
        Self::REDIS_UNSUITABLE,
        Self::TASK_STALLED,
        "invalid_sale_window",
        "sale_not_open",
        "sale_closed",
        "draw_pending",
        "no_draw",
    ];
    /// [`Self::NotReady`]: Redis is reachable but not one flashgate may run on.
    pub const REDIS_UNSUITABLE: &'static str = "redis_unsuitable";
    /// [`Self::NotReady`]: a background task stopped making progress.
    pub const TASK_STALLED: &'static str = "task_stalled";

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest(_)
            | ApiError::IdempotencyKeyReused
            | ApiError::InvalidConfig(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::InvalidSaleWindow(_) => StatusCode::BAD_REQUEST,
            ApiError::SaleNotOpen { .. } | ApiError::SaleClosed => StatusCode::CONFLICT,
            ApiError::DrawPending => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::NoDraw(_) => StatusCode::NOT_FOUND,
            ApiError::UnknownSku(_)
            | ApiError::ReservationNotFound
            | ApiError::TicketNotFound
            | ApiError::RouteNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::SoldOut
            | ApiError::ReservationState(_)
            | ApiError::PurchaseCap
            | ApiError::AlreadyLoaded(_)
            | ApiError::WaitlistFull
            | ApiError::AlreadyWaitlisted(_)
            | ApiError::TicketState(_)
            | ApiError::CartLine { .. }
            | ApiError::CartState(_)
            | ApiError::CartIncomplete { .. } => StatusCode::CONFLICT,
            ApiError::CartNotFound => StatusCode::NOT_FOUND,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::RedisUnavailable(_)
            | ApiError::Timeout
            | ApiError::TooManyConnections
            | ApiError::CartsBusy
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
            ApiError::PurchaseCap => "purchase_limit",
            ApiError::AlreadyLoaded(_) => "already_loaded",
            ApiError::InvalidConfig(_) => "invalid_config",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden => "forbidden",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::ReservationState("confirmed") => "reservation_confirmed",
            ApiError::ReservationState("released") => "reservation_released",
            ApiError::ReservationState(_) => "reservation_expired",
            ApiError::RedisUnavailable(_) => "redis_unavailable",
            ApiError::Timeout => "timeout",
            ApiError::Internal(_) => "internal",
            ApiError::CartLine { code, .. } => code,
            ApiError::CartNotFound => "cart_not_found",
            ApiError::CartState("pending") => "cart_pending",
            ApiError::CartState("failed") => "cart_failed",
            ApiError::CartState("confirmed") => "cart_confirmed",
            ApiError::CartState("released") => "cart_released",
            ApiError::CartState("incomplete") | ApiError::CartIncomplete { .. } => {
                "cart_incomplete"
            }
            ApiError::CartState(_) => "cart_expired",
            ApiError::CartsBusy => "carts_busy",
            ApiError::NotReady { code, .. } => code,
            ApiError::InvalidSaleWindow(_) => "invalid_sale_window",
            ApiError::SaleNotOpen { .. } => "sale_not_open",
            ApiError::SaleClosed => "sale_closed",
            ApiError::DrawPending => "draw_pending",
            ApiError::NoDraw(_) => "no_draw",
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

/// Line indexes as `1, 2`, for a message.
fn list(lines: &[usize]) -> String {
    lines
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The second half of a 503's message when the request may have run.
const UNKNOWN_OUTCOME: &str = "the outcome of this request is unknown (it may have taken \
     effect); retrying with the same Idempotency-Key is safe and answers with the first \
     outcome, never a second reservation";

impl From<InventoryError> for ApiError {
    fn from(e: InventoryError) -> Self {
        match e {
            InventoryError::Unavailable(_) | InventoryError::OutcomeUnknown(_) => {
                ApiError::RedisUnavailable(e)
            }
            InventoryError::Protocol(_) => ApiError::Internal(e),
            InventoryError::Unsuitable(message) => ApiError::NotReady {
                code: ApiError::REDIS_UNSUITABLE,
                message,
            },
            InventoryError::InvalidRequest(m) => ApiError::InvalidRequest(m),
            InventoryError::IdempotencyKeyReused => ApiError::IdempotencyKeyReused,
            InventoryError::UnknownSku(sku) => ApiError::UnknownSku(sku),
            InventoryError::ReservationNotFound => ApiError::ReservationNotFound,
            InventoryError::ReservationState(state) => ApiError::ReservationState(state),
            InventoryError::PurchaseCap => ApiError::PurchaseCap,
            InventoryError::WaitlistFull => ApiError::WaitlistFull,
            InventoryError::AlreadyWaitlisted(ticket) => ApiError::AlreadyWaitlisted(ticket),
            InventoryError::TicketNotFound => ApiError::TicketNotFound,
            InventoryError::TicketState(state) => ApiError::TicketState(state),
            InventoryError::CartLine { line, sku, code } => ApiError::CartLine { line, sku, code },
            InventoryError::CartNotFound => ApiError::CartNotFound,
            InventoryError::CartState(state) => ApiError::CartState(state),
            InventoryError::CartIncomplete { unsold } => ApiError::CartIncomplete { unsold },
            InventoryError::CartsBusy => ApiError::CartsBusy,
            InventoryError::InvalidSaleWindow(m) => ApiError::InvalidSaleWindow(m),
            InventoryError::SaleNotOpen {
                opens_at_ms,
                left_ms,
            } => ApiError::SaleNotOpen {
                opens_at: crate::inventory::ms_to_rfc3339(opens_at_ms),
                retry_after_secs: u64::try_from(left_ms).unwrap_or(0).div_ceil(1000).max(1),
            },
            InventoryError::SaleClosed => ApiError::SaleClosed,
            InventoryError::DrawPending => ApiError::DrawPending,
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

    /// One error of every kind, each state of the kinds that carry one, and
    /// every code [`ApiError::NotReady`] is built with.
    fn one_of_each() -> Vec<ApiError> {
        let redis = || InventoryError::Unavailable("x".into());
        let not_ready = |code| ApiError::NotReady {
            code,
            message: "x".into(),
        };
        vec![
            ApiError::InvalidRequest("x".into()),
            ApiError::IdempotencyKeyReused,
            ApiError::UnknownSku("x".into()),
            ApiError::ReservationNotFound,
            ApiError::RouteNotFound("/x".into()),
            ApiError::MethodNotAllowed("GET"),
            ApiError::HeadersTooLarge(1),
            ApiError::TooManyConnections,
            ApiError::SoldOut,
            ApiError::WaitlistFull,
            ApiError::AlreadyWaitlisted("x".into()),
            ApiError::TicketNotFound,
            ApiError::TicketState("promoted"),
            ApiError::TicketState("expired"),
            ApiError::AlreadyLoaded("x".into()),
            ApiError::PurchaseCap,
            ApiError::Unauthorized,
            ApiError::Forbidden,
            ApiError::RateLimited {
                retry_after_secs: 1,
            },
            ApiError::ReservationState("confirmed"),
            ApiError::ReservationState("released"),
            ApiError::ReservationState("expired"),
            ApiError::RedisUnavailable(redis()),
            ApiError::Timeout,
            ApiError::Internal(redis()),
            ApiError::InvalidConfig("x".into()),
            ApiError::CartNotFound,
            ApiError::CartState("pending"),
            ApiError::CartState("failed"),
            ApiError::CartState("confirmed"),
            ApiError::CartState("released"),
            ApiError::CartState("expired"),
            ApiError::CartState("incomplete"),
            ApiError::CartIncomplete { unsold: vec![1] },
            ApiError::CartsBusy,
            not_ready(ApiError::REDIS_UNSUITABLE),
            not_ready(ApiError::TASK_STALLED),
            ApiError::InvalidSaleWindow("x".into()),
            ApiError::SaleNotOpen {
                opens_at: "x".into(),
                retry_after_secs: 1,
            },
            ApiError::SaleClosed,
            ApiError::DrawPending,
            ApiError::NoDraw("x".into()),
        ]
    }

    /// Does not compile when a variant is added: give it a sample in
    /// [`one_of_each`] (and its code in [`ApiError::CODES`]) first.
    fn _every_variant_has_a_sample(e: &ApiError) {
        match e {
            ApiError::InvalidRequest(_)
            | ApiError::IdempotencyKeyReused
            | ApiError::UnknownSku(_)
            | ApiError::ReservationNotFound
            | ApiError::RouteNotFound(_)
            | ApiError::MethodNotAllowed(_)
            | ApiError::HeadersTooLarge(_)
            | ApiError::TooManyConnections
            | ApiError::SoldOut
            | ApiError::WaitlistFull
            | ApiError::AlreadyWaitlisted(_)
            | ApiError::TicketNotFound
            | ApiError::TicketState(_)
            | ApiError::AlreadyLoaded(_)
            | ApiError::PurchaseCap
            | ApiError::Unauthorized
            | ApiError::Forbidden
            | ApiError::RateLimited { .. }
            | ApiError::ReservationState(_)
            | ApiError::RedisUnavailable(_)
            | ApiError::Timeout
            | ApiError::Internal(_)
            | ApiError::InvalidConfig(_)
            | ApiError::CartLine { .. }
            | ApiError::CartNotFound
            | ApiError::CartState(_)
            | ApiError::CartIncomplete { .. }
            | ApiError::CartsBusy
            | ApiError::NotReady { .. }
            | ApiError::InvalidSaleWindow(_)
            | ApiError::SaleNotOpen { .. }
            | ApiError::SaleClosed
            | ApiError::DrawPending
            | ApiError::NoDraw(_) => {}
        }
    }

    #[test]
    fn codes_lists_every_code_an_error_can_carry() {
        let emitted: std::collections::BTreeSet<&str> =
            one_of_each().iter().map(ApiError::code).collect();
        let listed: std::collections::BTreeSet<&str> = ApiError::CODES.iter().copied().collect();
        assert_eq!(listed.len(), ApiError::CODES.len(), "a code listed twice");
        assert_eq!(emitted, listed);
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

    #[test]
    fn inventory_refusals_keep_their_wire_status_code_and_message() {
        let cases = [
            (
                InventoryError::InvalidRequest("stock must be".into()),
                422,
                "invalid_request",
                "stock must be",
            ),
            (
                InventoryError::IdempotencyKeyReused,
                422,
                "idempotency_key_reused",
                "the Idempotency-Key was already used with a different request body",
            ),
            (
                InventoryError::UnknownSku("A".into()),
                404,
                "unknown_sku",
                "unknown sku A",
            ),
            (
                InventoryError::ReservationNotFound,
                404,
                "reservation_not_found",
                "no such reservation",
            ),
            (
                InventoryError::ReservationState("confirmed"),
                409,
                "reservation_confirmed",
                "the reservation is confirmed",
            ),
            (
                InventoryError::ReservationState("released"),
                409,
                "reservation_released",
                "the reservation is released",
            ),
            (
                InventoryError::ReservationState("expired"),
                409,
                "reservation_expired",
                "the reservation is expired",
            ),
            (
                InventoryError::PurchaseCap,
                409,
                "purchase_limit",
                "this buyer already holds or bought the most units of this SKU allowed per buyer",
            ),
            (
                InventoryError::WaitlistFull,
                409,
                "waitlist_full",
                "the waitlist of this SKU is full",
            ),
            (
                InventoryError::AlreadyWaitlisted("t1".into()),
                409,
                "already_waitlisted",
                "this buyer already waits for this SKU with ticket t1",
            ),
            (
                InventoryError::TicketNotFound,
                404,
                "ticket_not_found",
                "no such waitlist ticket",
            ),
            (
                InventoryError::TicketState("promoted"),
                409,
                "ticket_promoted",
                "the ticket is promoted",
            ),
            (
                InventoryError::TicketState("expired"),
                409,
                "ticket_expired",
                "the ticket is expired",
            ),
            (
                InventoryError::Protocol("x".into()),
                500,
                "internal",
                "internal error",
            ),
            (
                InventoryError::Unsuitable("old".into()),
                503,
                "redis_unsuitable",
                "old",
            ),
        ];
        for (e, status, code, message) in cases {
            // the inventory's own text is the wire's (logs and CLI read it)
            let own = e.to_string();
            let api = ApiError::from(e);
            assert_eq!(
                (api.status().as_u16(), api.code(), api.message().as_str()),
                (status, code, message)
            );
            if status != 500 {
                assert_eq!(own, message);
            }
        }
    }
}
