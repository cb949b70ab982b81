//! Every reserve (or cart create) whose outcome is unknown (`info`, or never
//! completed) is resolved: a later one of the same op with the same
//! Idempotency-Key (per storefront) got a definite answer (`ok` or `fail`),
//! so none is left ambiguous.

use std::collections::HashMap;

use super::INFO_RESOLVED;
use crate::history::{History, Kind};
use crate::verdict::{Culprit, RuleResult};

/// The ops with an Idempotency-Key whose unknown outcome a retry settles.
const KEYED: [&str; 2] = ["reserve", "create_cart"];

pub fn check(h: &History) -> RuleResult {
    // (storefront, key) -> line of its last definite answer
    let mut last_definite: HashMap<(String, String, String), usize> = HashMap::new();
    for (i, l) in h.completions() {
        if KEYED.contains(&l.f.as_str()) && matches!(l.kind, Kind::Ok | Kind::Fail) {
            if let Some((sf, k)) = l.idem_key() {
                last_definite.insert((l.f.clone(), sf, k), i);
            }
        }
    }
    // in the order their outcome became unknown (the info line, else the invoke)
    let mut ops: Vec<_> = h
        .ops
        .iter()
        .filter(|op| KEYED.contains(&h.lines[op.invoke].f.as_str()) && h.unknown_outcome(op))
        .map(|op| (op.complete.unwrap_or(op.invoke), op))
        .collect();
    ops.sort_by_key(|(at, _)| *at);
    let unknown = ops.len();
    for (at, op) in ops {
        let inv = &h.lines[op.invoke];
        let Some(key) = inv.idem_key() else {
            return RuleResult::broken(
                INFO_RESOLVED,
                Some(Culprit::at(h, at)),
                format!(
                    "{} at index {} has no Idempotency-Key: it cannot be resolved",
                    inv.f, h.lines[at].index
                ),
            );
        };
        let resolved = last_definite
            .get(&(inv.f.clone(), key.0.clone(), key.1.clone()))
            .is_some_and(|&d| d > at);
        if !resolved {
            let how = match op.complete {
                Some(c) => format!(
                    "answered info ({})",
                    h.lines[c].error.as_deref().unwrap_or("unknown")
                ),
                None => "never completed".into(),
            };
            return RuleResult::broken(
                INFO_RESOLVED,
                Some(Culprit::at(h, at)),
                format!(
                    "{} with Idempotency-Key {:?} (storefront {:?}) at index {} {how} and no later one with the key got a definite answer",
                    inv.f, key.1, key.0, h.lines[at].index
                ),
            );
        }
    }
    RuleResult::ok(
        INFO_RESOLVED,
        format!("{unknown} unknown reserves and cart creates, each resolved"),
    )
}
