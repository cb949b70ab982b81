//! Inventory's errors: Redis failures by what is known of the command's fate,
//! and refusals by the stock's rules. No HTTP here: `crate::error` maps each
//! to a status, code and message.

/// What can go wrong below the HTTP layer: Redis out of reach or
/// misbehaving, or a refusal of the request by the stock's rules.
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
    // The refusals: the request is wrong for the stock as it is. The HTTP
    // layer (`crate::error`) gives each its status, code and message.
    /// A preload outside its bounds, or one that would drop shards.
    #[error("{0}")]
    InvalidRequest(String),
    #[error("the Idempotency-Key was already used with a different request body")]
    IdempotencyKeyReused,
    #[error("unknown sku {0}")]
    UnknownSku(String),
    #[error("no such reservation")]
    ReservationNotFound,
    /// The reservation's state (confirmed, released, expired) does not allow
    /// the operation.
    #[error("the reservation is {0}")]
    ReservationState(&'static str),
    #[error("this buyer already holds or bought the most units of this SKU allowed per buyer")]
    PurchaseCap,
    #[error("the waitlist of this SKU is full")]
    WaitlistFull,
    /// Carries the buyer's ticket id.
    #[error("this buyer already waits for this SKU with ticket {0}")]
    AlreadyWaitlisted(String),
    #[error("no such waitlist ticket")]
    TicketNotFound,
    /// The ticket's state (promoted, expired).
    #[error("the ticket is {0}")]
    TicketState(&'static str),
    /// A cart's line could not be held (`code`: sold_out or
    /// purchase_limit); the cart holds nothing (cart.rs).
    #[error("line {line} ({sku}) of the cart could not be held: {code}; the cart holds nothing")]
    CartLine {
        line: usize,
        sku: String,
        code: &'static str,
    },
    #[error("no such cart")]
    CartNotFound,
    /// The cart's state (pending, failed, confirmed, released, expired,
    /// incomplete) does not allow the operation.
    #[error("the cart is {0}")]
    CartState(&'static str),
    /// The cart ended `incomplete`: `unsold` are its lines not sold (the
    /// others are sold; docs/carts.md).
    #[error("the cart is incomplete")]
    CartIncomplete { unsold: Vec<usize> },
    /// The list of carts in progress is full (`max_pending_carts`).
    #[error("too many carts are being made right now; retry shortly")]
    CartsBusy,
    // The sale window (docs/fair-draw.md).
    /// A sale window that cannot be: unparseable, or `closes_at` not after
    /// `opens_at`.
    #[error("{0}")]
    InvalidSaleWindow(String),
    /// The SKU's sale has not opened: it opens at `opens_at_ms`, `left_ms`
    /// from now (both on the Redis clock).
    #[error("the sale has not opened yet")]
    SaleNotOpen { opens_at_ms: i64, left_ms: i64 },
    /// The SKU's sale window has closed.
    #[error("the sale has closed")]
    SaleClosed,
    /// The pre-queue has closed and its draw is not applied yet: a
    /// waitlist join is refused for the moment (retry in a second).
    #[error("the pre-queue's draw is under way")]
    DrawPending,
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

    /// A refusal by the stock's rules (not a Redis failure).
    pub fn is_refusal(&self) -> bool {
        !matches!(
            self,
            InventoryError::Unavailable(_)
                | InventoryError::OutcomeUnknown(_)
                | InventoryError::Protocol(_)
                | InventoryError::Unsuitable(_)
        )
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
