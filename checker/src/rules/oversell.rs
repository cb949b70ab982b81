//! No oversell at any moment: the units certainly held or sold (holds.rs)
//! never exceed the SKU's stock (final.json `initial`).

use std::collections::{BTreeMap, BTreeSet};

use super::NO_OVERSELL;
use crate::final_state::Final;
use crate::history::History;
use crate::holds::{self, Span};
use crate::verdict::{Culprit, RuleResult};

pub fn check(h: &History, fin: &Final) -> RuleResult {
    let spans = holds::spans(h, fin);
    let mut by_sku: BTreeMap<&str, Vec<&Span>> = BTreeMap::new();
    for s in &spans {
        by_sku.entry(s.sku.as_str()).or_default().push(s);
    }
    let mut unknown_stock = Vec::new();
    // (line of the first excess, message) over every SKU; the earliest wins
    let mut first: Option<(usize, String)> = None;
    // per SKU: the most units certainly taken at once, of the stock
    let mut peaks = Vec::new();
    for (sku, spans) in &by_sku {
        let Some(stock) = fin.initial_of(sku) else {
            unknown_stock.push(sku.to_string());
            continue;
        };
        match first_excess(sku, stock, spans) {
            Ok(peak) => peaks.push(format!("{sku} {peak}/{stock}")),
            Err((line, msg)) => {
                if first.as_ref().is_none_or(|(l, _)| line < *l) {
                    first = Some((line, msg));
                }
            }
        }
    }
    if let Some((line, msg)) = first {
        return RuleResult::broken(NO_OVERSELL, Some(Culprit::at(h, line)), msg);
    }
    let anchored = holds::anchor(h, fin).is_some();
    let scope = if anchored {
        "holds counted until they could have been released or expired"
    } else {
        "no wall-clock anchor (started_at_unix_ms / wall_ms): holds counted only up to their last proof of `held`"
    };
    if !unknown_stock.is_empty() && unknown_stock.len() == by_sku.len() {
        return RuleResult::not_checked(
            NO_OVERSELL,
            format!(
                "no `initial` in final.json for {}",
                unknown_stock.join(", ")
            ),
        );
    }
    let mut msg = format!(
        "{} reservations on {} SKUs, most units certainly taken at once {}; {scope}",
        spans.len(),
        by_sku.len(),
        peaks.join(", ")
    );
    if !unknown_stock.is_empty() {
        msg.push_str(&format!(
            "; not checked (no `initial`): {}",
            unknown_stock.join(", ")
        ));
    }
    RuleResult::ok(NO_OVERSELL, msg)
}

/// Sweep the SKU's spans in time order (ends before starts at the same
/// instant, the generous reading) and return the line where the units first
/// exceed the stock.
/// `Ok(peak units)` when they never exceed the stock.
fn first_excess(sku: &str, stock: i64, spans: &[&Span]) -> Result<i64, (usize, String)> {
    // (time, 0 = end / 1 = start, line, span number)
    let mut events: Vec<(f64, u8, usize, usize)> = Vec::new();
    // a span that ends where it starts (a hold seen once, no anchor) holds
    // nothing for certain
    for (n, s) in spans.iter().enumerate().filter(|(_, s)| s.end() > s.start) {
        events.push((s.start, 1, s.start_line, n));
        if s.end().is_finite() {
            events.push((s.end(), 0, s.start_line, n));
        }
    }
    events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut live: BTreeSet<usize> = BTreeSet::new();
    let mut taken = 0i64;
    let mut peak = 0i64;
    for (t, kind, line, n) in events {
        let s = spans[n];
        if kind == 0 {
            if live.remove(&n) {
                taken -= s.qty;
            }
            continue;
        }
        live.insert(n);
        taken += s.qty;
        peak = peak.max(taken);
        if taken > stock {
            let mut others: Vec<String> = live
                .iter()
                .filter(|&&x| x != n)
                .take(5)
                .map(|&x| format!("{} ({})", spans[x].rid, spans[x].qty))
                .collect();
            if live.len() > 6 {
                others.push(format!("… {} more", live.len() - 6));
            }
            return Err((
                line,
                format!(
                    "SKU {sku}: {taken} units held or sold at {t:.3} ms with stock {stock}: \
                     reservation {} ({} units) acknowledged on top of {}",
                    s.rid,
                    s.qty,
                    others.join(", ")
                ),
            ));
        }
    }
    Ok(peak)
}
