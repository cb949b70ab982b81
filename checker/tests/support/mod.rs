//! A small writer of hand-made histories: each op gets an invoke and a
//! completion 1 ms apart, the clock moving 10 ms per op.
#![allow(dead_code)]

use flashgate_checker::{check, Final, History, Status, Verdict};
use serde_json::{json, Value};

/// The wall clock at time_ms 0 in these histories (2025-12-04T00:00:00Z).
pub const ANCHOR_MS: f64 = 1_764_806_400_000.0;

/// `expires_at` at `ms` after the anchor.
pub fn at(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ANCHOR_MS as u64 + ms);
    humantime::format_rfc3339_millis(t).to_string()
}

pub struct Run {
    pub lines: Vec<Value>,
    pub now: f64,
}

impl Default for Run {
    fn default() -> Self {
        Run {
            lines: Vec::new(),
            now: 0.0,
        }
    }
}

pub fn reserve_value(key: &str, user: &str, qty: i64) -> Value {
    json!({"sku": "S1", "qty": qty, "user_id": user, "key": key, "instance": 0,
           "storefront": "sf1", "waitlist": false})
}

pub fn hold(rid: &str, user: &str, qty: i64, status: &str, expires_ms: u64) -> Value {
    json!({"reservation_id": rid, "sku": "S1", "qty": qty, "user_id": user,
           "status": status, "expires_at": at(expires_ms)})
}

pub fn rid_value(rid: &str) -> Value {
    json!({"reservation_id": rid, "instance": 0})
}

pub fn error(code: &str) -> Value {
    json!({"error": {"code": code, "message": code}})
}

impl Run {
    fn push(&mut self, process: Value, kind: &str, f: &str, value: &Value, extra: Value) -> usize {
        let index = self.lines.len();
        let mut line = json!({"index": index, "time_ms": self.now, "process": process,
                              "type": kind, "f": f, "value": value});
        if let (Some(l), Some(e)) = (line.as_object_mut(), extra.as_object()) {
            l.extend(e.clone());
        }
        self.lines.push(line);
        index
    }

    /// Invoke now; returns the invoke's index.
    pub fn invoke(&mut self, p: i64, f: &str, value: Value) -> usize {
        self.now += 10.0;
        self.push(json!(p), "invoke", f, &value, json!({}))
    }

    /// Complete process p's open op 1 ms later; returns the completion's index.
    pub fn complete(
        &mut self,
        p: i64,
        kind: &str,
        f: &str,
        value: Value,
        status: Option<u16>,
        body: Value,
    ) -> usize {
        self.now += 1.0;
        let error = match (kind, body.pointer("/error/code")) {
            ("ok", _) => Value::Null,
            (_, Some(c)) => c.clone(),
            _ => json!("timeout"),
        };
        self.push(
            json!(p),
            kind,
            f,
            &value,
            json!({"status": status, "body": body, "error": error}),
        )
    }

    /// A whole op; returns the completion's index.
    pub fn op(
        &mut self,
        p: i64,
        f: &str,
        value: Value,
        kind: &str,
        status: Option<u16>,
        body: Value,
    ) -> usize {
        self.invoke(p, f, value.clone());
        self.complete(p, kind, f, value, status, body)
    }

    pub fn nemesis(&mut self, f: &str, fault: &str) -> usize {
        self.now += 10.0;
        self.push(
            json!("nemesis"),
            "info",
            f,
            &json!({"fault": fault, "detail": "test"}),
            json!({}),
        )
    }

    pub fn jsonl(&self) -> String {
        self.lines.iter().map(|l| format!("{l}\n")).collect()
    }

    pub fn check(&self, fin: &Value) -> Verdict {
        let h = History::parse(&self.jsonl()).expect("a well-formed history");
        let fin: Final = serde_json::from_value(fin.clone()).expect("a well-formed final.json");
        check(&h, &fin)
    }
}

/// final.json of a SKU S1 with `initial` units, `sold` of them sold and the
/// rest available, everything else clean and empty.
pub fn final_json(initial: i64, sold: i64, confirmed: &[&str]) -> Value {
    let books = json!({"sku": "S1", "available": initial - sold, "held": 0, "sold": sold,
                       "shards": 2, "waitlist": 0});
    json!({
        "skus": {"S1": {"initial": initial, "admin": books.clone(), "public": books, "ledger_sold": sold}},
        "reconcile_before": {"version": 2, "verdict": "clean", "skus": []},
        "reconcile_fix": null,
        "reconcile_after": null,
        "ledger_confirmed": confirmed,
        "waitlist_promotions": [],
        "expected_loss": [],
        "started_at_unix_ms": ANCHOR_MS
    })
}

/// A create_cart's value: lines of (sku, qty).
pub fn cart_value(key: &str, user: &str, lines: &[(&str, i64)]) -> Value {
    let lines: Vec<Value> = lines
        .iter()
        .map(|(s, q)| json!({"sku": s, "qty": q}))
        .collect();
    json!({"user_id": user, "lines": lines, "key": key, "instance": 0, "storefront": "sf1"})
}

/// A cart body: lines of (sku, qty, reservation id).
pub fn cart(
    id: &str,
    user: &str,
    status: &str,
    lines: &[(&str, i64, Option<&str>)],
    expires_ms: u64,
) -> Value {
    let lines: Vec<Value> = lines
        .iter()
        .map(|(s, q, r)| json!({"sku": s, "qty": q, "reservation_id": r}))
        .collect();
    json!({"cart_id": id, "user_id": user, "status": status, "expires_at": at(expires_ms),
           "lines": lines})
}

pub fn cart_id_value(id: &str) -> Value {
    json!({"cart_id": id, "instance": 0})
}

/// final.json's `carts` entry of a cart read at the end: the cart's status
/// and each line's (reservation id, reservation status or None for a 404).
pub fn final_cart(status: &str, lines: &[(&str, Option<&str>)]) -> Value {
    let lines: Vec<Value> = lines
        .iter()
        .map(|(r, s)| match s {
            Some(s) => json!({"reservation_id": r, "status": s, "code": 200}),
            None => json!({"reservation_id": r, "status": null, "code": 404}),
        })
        .collect();
    json!({"status": 200, "body": {"status": status}, "lines": lines})
}

/// The one broken rule, with the index of its first line.
pub fn broken(v: &Verdict) -> (&'static str, Option<u64>, String) {
    let broken: Vec<_> = v
        .rules
        .iter()
        .filter(|r| r.status == Status::Broken)
        .collect();
    assert_eq!(broken.len(), 1, "exactly one rule broken: {:#?}", v.rules);
    assert!(!v.valid);
    let r = broken[0];
    (r.rule, r.first.as_ref().map(|c| c.index), r.message.clone())
}

/// Every rule ok, and the verdict valid.
pub fn all_ok(v: &Verdict) {
    assert!(
        v.rules.iter().all(|r| r.status == Status::Ok),
        "every rule ok: {:#?}",
        v.rules
    );
    assert!(v.valid);
}
