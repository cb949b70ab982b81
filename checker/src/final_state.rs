//! final.json: the state after the faults healed, the ledger drained and the
//! holds expired. Every field may be null when a run did not collect it; the
//! rule that needs it then says it was not checked.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Final {
    #[serde(default)]
    pub skus: Option<BTreeMap<String, SkuFinal>>,
    #[serde(default)]
    pub reconcile_before: Option<Value>,
    #[serde(default)]
    pub reconcile_fix: Option<Value>,
    #[serde(default)]
    pub reconcile_after: Option<Value>,
    #[serde(default)]
    pub ledger_confirmed: Option<Vec<String>>,
    #[serde(default)]
    pub waitlist_promotions: Option<Vec<Promotion>>,
    #[serde(default)]
    pub expected_loss: Option<Vec<String>>,
    /// Optional: the wall clock (Unix ms) at `time_ms` 0, which places each
    /// hold's `expires_at` on the history's clock (else a line's `wall_ms`).
    #[serde(default)]
    pub started_at_unix_ms: Option<f64>,
    /// Every cart the clients saw, read after the holds ended: cart id →
    /// `{"status": <GET /v1/carts/{id} code>, "body": <its body>, "lines":
    /// [{"reservation_id", "status": <the line's reservation status, or
    /// null>, "code": <GET /v1/reservations/{rid} code>}]}`.
    #[serde(default)]
    pub carts: Option<BTreeMap<String, Value>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct SkuFinal {
    #[serde(default)]
    pub initial: Option<i64>,
    #[serde(default)]
    pub admin: Option<Value>,
    #[serde(default)]
    pub public: Option<Value>,
    #[serde(default)]
    pub ledger_sold: Option<i64>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Promotion {
    pub ticket_id: String,
    pub sku: String,
    pub seq: i64,
    pub reservation_id: String,
}

impl Final {
    pub fn initial_of(&self, sku: &str) -> Option<i64> {
        self.skus.as_ref()?.get(sku)?.initial
    }

    pub fn expected_loss(&self, rid: &str) -> bool {
        self.expected_loss
            .as_ref()
            .is_some_and(|l| l.iter().any(|r| r == rid))
    }
}

/// What a `flashgate reconcile --format json` report says, read loosely
/// (only the fields the checker needs; the report's version may grow).
pub struct Reconcile<'a>(pub &'a Value);

impl Reconcile<'_> {
    pub fn verdict(&self) -> Option<&str> {
        self.0.get("verdict")?.as_str()
    }

    fn skus(&self) -> impl Iterator<Item = &Value> {
        self.0
            .get("skus")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
    }

    /// The reservation appears among the report's record findings, or its
    /// SKU was reported missing from Redis (reconcile restores it whole).
    pub fn reported(&self, rid: &str, sku: Option<&str>) -> bool {
        self.skus().any(|s| {
            let missing = s.get("missing_in_redis").and_then(Value::as_bool) == Some(true)
                || s.get("restored").and_then(Value::as_bool) == Some(true);
            let same_sku = sku.is_some() && s.get("sku").and_then(Value::as_str) == sku;
            (missing && same_sku)
                || s.get("per_shard")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|sh| sh.get("records").and_then(Value::as_array))
                    .flatten()
                    .any(|r| r.get("rid").and_then(Value::as_str) == Some(rid))
        })
    }
}
