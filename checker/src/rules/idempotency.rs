//! One Idempotency-Key (per storefront) gives at most one reservation: every
//! `ok` reserve with the key names the same reservation (or ticket), SKU,
//! qty and buyer as the first one — a replay answers the first body — and
//! those are the request's own.

use std::collections::HashMap;

use serde_json::Value;

use super::IDEMPOTENCY;
use crate::history::{History, Kind, Line};
use crate::verdict::{Culprit, RuleResult};

/// The fields of a reserve's answer that a replay must repeat (status and
/// `expires_at` may move on: a hold is confirmed or extended meanwhile).
#[derive(Clone, Debug, PartialEq)]
struct Stable {
    id: String,
    sku: Option<String>,
    qty: Option<i64>,
    user_id: Option<String>,
}

impl Stable {
    fn of(l: &Line) -> Option<Stable> {
        let id = l
            .body_str("reservation_id")
            .filter(|_| l.body_str("ticket_id").is_none());
        let id = match (id, l.body_str("ticket_id")) {
            (Some(r), _) => format!("reservation {r}"),
            (None, Some(t)) => format!("ticket {t}"),
            (None, None) => return None,
        };
        Some(Stable {
            id,
            sku: l.body_str("sku").map(str::to_string),
            qty: l.body_i64("qty"),
            user_id: l.body_str("user_id").map(str::to_string),
        })
    }

    fn describe(&self) -> String {
        format!(
            "{} (sku {}, qty {}, user {})",
            self.id,
            self.sku.as_deref().unwrap_or("?"),
            self.qty.map_or("?".into(), |q| q.to_string()),
            self.user_id.as_deref().unwrap_or("?")
        )
    }

    /// A field of the answer that differs from the request's.
    fn differs_from_request(&self, l: &Line) -> Option<&'static str> {
        let v = &l.value;
        let req_str = |f: &str| v.get(f).and_then(Value::as_str);
        if self.sku.is_some() && req_str("sku").is_some() && self.sku.as_deref() != req_str("sku") {
            return Some("sku");
        }
        if self.qty.is_some()
            && v.get("qty").and_then(Value::as_i64).is_some()
            && self.qty != v.get("qty").and_then(Value::as_i64)
        {
            return Some("qty");
        }
        if self.user_id.is_some()
            && req_str("user_id").is_some()
            && self.user_id.as_deref() != req_str("user_id")
        {
            return Some("user_id");
        }
        None
    }
}

pub fn check(h: &History) -> RuleResult {
    let mut first: HashMap<(String, String), (usize, Stable)> = HashMap::new();
    let mut answers = 0usize;
    for (i, l) in h.completions() {
        if l.f != "reserve" || l.kind != Kind::Ok {
            continue;
        }
        let (Some(key), Some(this)) = (l.idem_key(), Stable::of(l)) else {
            continue;
        };
        answers += 1;
        let (sf, k) = &key;
        if let Some(field) = this.differs_from_request(l) {
            return RuleResult::broken(
                IDEMPOTENCY,
                Some(Culprit::at(h, i)),
                format!(
                    "Idempotency-Key {k:?} (storefront {sf:?}): answered {} whose {field} is not the request's",
                    this.describe()
                ),
            );
        }
        match first.get(&key) {
            None => {
                first.insert(key, (i, this));
            }
            Some((j, was)) if *was != this => {
                return RuleResult::broken(
                    IDEMPOTENCY,
                    Some(Culprit::at(h, i)),
                    format!(
                        "Idempotency-Key {k:?} (storefront {sf:?}): index {} answered {}, index {} answers {}",
                        h.lines[*j].index,
                        was.describe(),
                        l.index,
                        this.describe()
                    ),
                );
            }
            Some(_) => {}
        }
    }
    RuleResult::ok(
        IDEMPOTENCY,
        format!("{answers} ok reserves over {} keys", first.len()),
    )
}
