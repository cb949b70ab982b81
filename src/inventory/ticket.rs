//! A waitlist ticket as the API shows it, and its id. A leaf of
//! `inventory`: the reserve walk answers a ticket when a sold-out buyer joins
//! the waitlist, and the waitlist promotes tickets through the reserve walk,
//! so both name these types and neither imports the other for them.

use serde::Serialize;

use crate::domain::Sku;

/// A waitlist ticket as the API shows it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Ticket {
    pub ticket_id: String,
    pub sku: String,
    pub qty: u32,
    pub user_id: String,
    /// waiting | promoted | expired | cancelled
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<i64>,
    /// A waiting ticket's wait estimate: its position ÷ the tickets promoted
    /// per second lately (`waitlist::estimate_wait_seconds`). Absent unless
    /// the ticket waits (outer `None`); `null` while no promotion was seen
    /// in the last minute (`Some(None)`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimated_wait_seconds: Option<Option<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reservation_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Why a ticket was cancelled by flashgate (e.g. `purchase_limit`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A ticket id: `<sku>.w.<32 hex>` (122 random bits).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TicketId {
    sku: Sku,
    token: String,
}

impl TicketId {
    pub(super) fn new(sku: &Sku) -> TicketId {
        TicketId {
            sku: sku.clone(),
            token: uuid::Uuid::new_v4().simple().to_string(),
        }
    }

    pub fn parse(s: &str) -> Result<TicketId, String> {
        let bad = || "malformed ticket id".to_string();
        let mut parts = s.rsplitn(3, '.');
        let token = parts.next().ok_or_else(bad)?;
        if parts.next() != Some("w") {
            return Err(bad());
        }
        let sku = Sku::parse(parts.next().ok_or_else(bad)?).map_err(|_| bad())?;
        if token.len() != 32
            || !token
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(bad());
        }
        Ok(TicketId {
            sku,
            token: token.to_owned(),
        })
    }

    pub fn sku(&self) -> &Sku {
        &self.sku
    }
}

impl std::fmt::Display for TicketId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.w.{}", self.sku, self.token)
    }
}
