//! When each reservation certainly held units, from what the history proves.
//!
//! A lower bound, so unknown outcomes never raise a false alarm: a
//! reservation occupies its units from the first completion that proves it
//! held or sold (an `ok` body with status `held`/`confirmed` — a reserve's
//! only when `201`: a replay repeats the first body whatever the hold became
//! — or a `409 reservation_confirmed`) until the earliest moment it could have ended
//! without a sale: the invoke of a release that did not fail, the invoke of an
//! op that saw it ended (`released`/`expired` body, `404`/`409` ended), or
//! its `expires_at` (the latest one an `ok` body showed) placed on the
//! history's clock — but never before its last proof of `held`. A reservation
//! proven `confirmed` occupies its units for good. Without a wall-clock anchor
//! a hold counts only up to its last proof of `held`.

use std::collections::BTreeMap;
use std::time::UNIX_EPOCH;

use serde_json::Value;

use crate::final_state::Final;
use crate::history::{History, Kind};

/// How much earlier than `expires_at` a hold may already count as expired:
/// flashgate's clock is Redis's `TIME`, the history's the harness's
/// monotonic clock anchored once; both on one machine, so a generous margin.
pub const EXPIRY_SLACK_MS: f64 = 100.0;

/// A reservation's certain occupancy of its SKU's units.
#[derive(Clone, Debug, PartialEq)]
pub struct Span {
    pub rid: String,
    pub sku: String,
    pub qty: i64,
    /// Time of the first proof, and its line.
    pub start: f64,
    pub start_line: usize,
    /// Held (not yet sold) until here; `f64::INFINITY` never happens here:
    /// see `sold_from`.
    pub held_until: f64,
    /// Proven sold from here on (time, line).
    pub sold_from: Option<(f64, usize)>,
}

impl Span {
    /// The units are certainly taken until this time.
    pub fn end(&self) -> f64 {
        if self.sold_from.is_some() {
            f64::INFINITY
        } else {
            self.held_until
        }
    }
}

#[derive(Default)]
struct Facts {
    sku: Option<String>,
    qty: Option<i64>,
    first_proof: Option<(f64, usize)>,
    last_held: Option<f64>,
    sold_from: Option<(f64, usize)>,
    expires_wall_ms: Option<f64>,
    /// Earliest invoke of an op that released it or saw it ended.
    ended_by: Option<f64>,
}

fn min_opt(a: Option<f64>, b: f64) -> Option<f64> {
    Some(a.map_or(b, |a| a.min(b)))
}

/// Parse an RFC 3339 time as flashgate writes it (`…Z`) into Unix ms.
pub fn rfc3339_ms(s: &str) -> Option<f64> {
    let t = humantime::parse_rfc3339_weak(s).ok()?;
    let d = t.duration_since(UNIX_EPOCH).ok()?;
    Some(d.as_secs_f64() * 1000.0)
}

/// The wall clock (Unix ms) at `time_ms` 0, if the run recorded one.
pub fn anchor(h: &History, fin: &Final) -> Option<f64> {
    fin.started_at_unix_ms.or_else(|| {
        h.lines
            .iter()
            .find_map(|l| l.wall_ms.map(|w| w - l.time_ms))
    })
}

const ENDED_CODES: [&str; 3] = [
    "reservation_expired",
    "reservation_released",
    "reservation_not_found",
];

fn error_code(body: Option<&Value>) -> Option<&str> {
    body?.get("error")?.get("code")?.as_str()
}

/// The cart ops (docs/faults-history.md): their bodies name every line's
/// reservation, so a cart's lines are counted as reservations are.
pub const CART_OPS: [&str; 5] = [
    "create_cart",
    "get_cart",
    "confirm_cart",
    "release_cart",
    "extend_cart",
];

/// Cart refusals that say the cart's lines ended without a sale.
const CART_ENDED_CODES: [&str; 4] = [
    "cart_expired",
    "cart_released",
    "cart_failed",
    "cart_not_found",
];

/// A cart body's lines that name their hold: (reservation id, sku, qty).
pub fn cart_lines(body: &Value) -> Vec<(String, String, i64)> {
    body.get("lines")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|l| {
            Some((
                l.get("reservation_id")?.as_str()?.to_string(),
                l.get("sku")?.as_str()?.to_string(),
                l.get("qty")?.as_i64()?,
            ))
        })
        .collect()
}

/// Every cart's line reservations, from every body that showed them.
pub fn cart_line_ids(h: &History) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (_, l) in h.completions() {
        if !CART_OPS.contains(&l.f.as_str()) {
            continue;
        }
        let (Some(body), Some(id)) = (l.body.as_ref(), l.body_str("cart_id")) else {
            continue;
        };
        let rids = out.entry(id.to_string()).or_default();
        for (rid, _, _) in cart_lines(body) {
            if !rids.contains(&rid) {
                rids.push(rid);
            }
        }
    }
    out
}

/// What one `ok` body says of one reservation (a reservation's own body,
/// or a cart line under the cart's status and `expires_at`).
fn note_ok(
    f: &mut Facts,
    status: Option<&str>,
    expires_at: Option<&str>,
    proof: (f64, usize),
    invoke_t: f64,
) {
    let expires = expires_at.and_then(rfc3339_ms);
    let see_expiry = |f: &mut Facts| {
        if let Some(e) = expires {
            f.expires_wall_ms = Some(f.expires_wall_ms.map_or(e, |x| x.max(e)));
        }
    };
    if status.is_none() {
        see_expiry(f);
    }
    match status {
        Some("held") => {
            f.first_proof.get_or_insert(proof);
            f.last_held = Some(f.last_held.map_or(proof.0, |t| t.max(proof.0)));
            see_expiry(f);
        }
        Some("confirmed") => {
            f.first_proof.get_or_insert(proof);
            f.sold_from.get_or_insert(proof);
        }
        Some("released") | Some("expired") | Some("failed") => {
            f.ended_by = min_opt(f.ended_by, invoke_t);
        }
        _ => {}
    }
}

/// Every reservation's certain occupancy, reservations the harness listed in
/// `expected_loss` left out (a fault was allowed to lose them). A cart's
/// lines count as reservations: a `201` cart (or a cart op's `ok` body)
/// `held` proves each line held until the cart's `expires_at`, `confirmed`
/// proves each sold; a cart release that did not fail, or a cart seen
/// `released`/`expired`/`failed`, may have ended every line.
pub fn spans(h: &History, fin: &Final) -> Vec<Span> {
    let anchor = anchor(h, fin);
    let mut facts: BTreeMap<String, Facts> = BTreeMap::new();
    let cart_rids = cart_line_ids(h);
    for (i, l) in h.completions() {
        let invoke_t = h.invoke_of(i).map_or(l.time_ms, |v| v.time_ms);
        if CART_OPS.contains(&l.f.as_str()) {
            cart_facts(&mut facts, &cart_rids, l, i, invoke_t);
            continue;
        }
        let reservation_op = matches!(
            l.f.as_str(),
            "reserve" | "confirm" | "release" | "extend" | "get_reservation"
        );
        if !reservation_op {
            continue;
        }
        // a release whose outcome is not a refusal may have ended the hold
        if l.f == "release" && l.kind != Kind::Fail {
            if let Some(rid) = l.value_str("reservation_id") {
                let f = facts.entry(rid.to_string()).or_default();
                f.ended_by = min_opt(f.ended_by, invoke_t);
            }
        }
        match l.kind {
            Kind::Ok => {
                let Some(body) = l.body.as_ref() else {
                    continue;
                };
                if body.get("ticket_id").is_some() {
                    continue;
                }
                let Some(rid) = l.body_str("reservation_id") else {
                    continue;
                };
                let f = facts.entry(rid.to_string()).or_default();
                if let Some(s) = l.body_str("sku") {
                    f.sku.get_or_insert_with(|| s.to_string());
                }
                if let Some(q) = l.body_i64("qty") {
                    f.qty.get_or_insert(q);
                }
                // a replay (200) answers the first body — "held" and the first
                // expires_at — whatever the hold became since: no proof of now
                let status = if l.f == "reserve" && l.status != Some(201) {
                    None
                } else {
                    l.body_str("status")
                };
                note_ok(
                    f,
                    status,
                    l.body_str("expires_at"),
                    (l.time_ms, i),
                    invoke_t,
                );
            }
            Kind::Fail => {
                let Some(rid) = l.value_str("reservation_id") else {
                    continue;
                };
                let code = error_code(l.body.as_ref()).or(l.error.as_deref());
                let f = facts.entry(rid.to_string()).or_default();
                if code == Some("reservation_confirmed") {
                    let proof = (l.time_ms, i);
                    f.first_proof.get_or_insert(proof);
                    f.sold_from.get_or_insert(proof);
                } else if code.is_some_and(|c| ENDED_CODES.contains(&c)) {
                    f.ended_by = min_opt(f.ended_by, invoke_t);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    for (rid, f) in facts {
        let (Some(sku), Some(qty), Some((start, start_line))) = (f.sku, f.qty, f.first_proof)
        else {
            continue;
        };
        if fin.expected_loss(&rid) {
            continue;
        }
        let expiry = match (anchor, f.expires_wall_ms) {
            (Some(a), Some(e)) => Some(e - a - EXPIRY_SLACK_MS),
            _ => None,
        };
        let last_held = f.last_held.unwrap_or(start);
        let could_end = match (expiry, f.ended_by) {
            (Some(x), Some(e)) => Some(x.min(e)),
            (x, e) => x.or(e),
        };
        // no anchor: expiry may come at any moment after the last proof
        let could_end = if anchor.is_some() { could_end } else { None };
        let held_until = could_end.map_or(last_held, |c| c.max(last_held));
        out.push(Span {
            rid,
            sku,
            qty,
            start,
            start_line,
            held_until,
            sold_from: f.sold_from,
        });
    }
    out
}

/// What a cart op's completion proves of its lines.
fn cart_facts(
    facts: &mut BTreeMap<String, Facts>,
    cart_rids: &BTreeMap<String, Vec<String>>,
    l: &crate::history::Line,
    i: usize,
    invoke_t: f64,
) {
    let cart_id = l.body_str("cart_id").or_else(|| l.value_str("cart_id"));
    let known = cart_id.and_then(|c| cart_rids.get(c));
    let end_all = |facts: &mut BTreeMap<String, Facts>| {
        for rid in known.into_iter().flatten() {
            let f = facts.entry(rid.clone()).or_default();
            f.ended_by = min_opt(f.ended_by, invoke_t);
        }
    };
    // a cart release that was not refused may have given every line back
    if l.f == "release_cart" && l.kind != Kind::Fail {
        end_all(facts);
    }
    match l.kind {
        Kind::Ok => {
            let Some(body) = l.body.as_ref() else {
                return;
            };
            // a replay (200) shows the cart as it is now, but the harness
            // cannot tell it from the first answer's time: no proof
            let status = if l.f == "create_cart" && l.status != Some(201) {
                None
            } else {
                l.body_str("status")
            };
            for (rid, sku, qty) in cart_lines(body) {
                let f = facts.entry(rid).or_default();
                f.sku.get_or_insert(sku);
                f.qty.get_or_insert(qty);
                note_ok(
                    f,
                    status,
                    l.body_str("expires_at"),
                    (l.time_ms, i),
                    invoke_t,
                );
            }
        }
        Kind::Fail => {
            let code = error_code(l.body.as_ref()).or(l.error.as_deref());
            if code.is_some_and(|c| CART_ENDED_CODES.contains(&c)) {
                end_all(facts);
            }
        }
        _ => {}
    }
}
