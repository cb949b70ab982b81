//! Every reserve whose outcome is unknown (`info`, or never completed) is
//! resolved: a later reserve with the same Idempotency-Key (per storefront)
//! got a definite answer (`ok` or `fail`), so none is left ambiguous.

use std::collections::HashMap;

use super::INFO_RESOLVED;
use crate::history::{History, Kind};
use crate::verdict::{Culprit, RuleResult};

pub fn check(h: &History) -> RuleResult {
    // (storefront, key) -> line of its last definite answer
    let mut last_definite: HashMap<(String, String), usize> = HashMap::new();
    for (i, l) in h.completions() {
        if l.f == "reserve" && matches!(l.kind, Kind::Ok | Kind::Fail) {
            if let Some(k) = l.idem_key() {
                last_definite.insert(k, i);
            }
        }
    }
    // in the order their outcome became unknown (the info line, else the invoke)
    let mut ops: Vec<_> = h
        .ops
        .iter()
        .filter(|op| h.lines[op.invoke].f == "reserve" && h.unknown_outcome(op))
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
                    "reserve at index {} has no Idempotency-Key: it cannot be resolved",
                    h.lines[at].index
                ),
            );
        };
        let resolved = last_definite.get(&key).is_some_and(|&d| d > at);
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
                    "reserve with Idempotency-Key {:?} (storefront {:?}) at index {} {how} and no later reserve with the key got a definite answer",
                    key.1, key.0, h.lines[at].index
                ),
            );
        }
    }
    RuleResult::ok(
        INFO_RESOLVED,
        format!("{unknown} unknown reserves, each resolved"),
    )
}
