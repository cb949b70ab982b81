//! A confirm acknowledged `200` is never lost: after the faults healed, the
//! reservation reads `confirmed` (every resolve-phase GET with a definite
//! answer) and its id is in
//! the ledger (`ledger_confirmed`) — unless `reconcile_before` reported it
//! (or its SKU as lost from Redis) and `reconcile_after` is clean, which is
//! what the README promises for a Redis that lost writes, or the harness
//! listed it in `expected_loss`.

use std::collections::{BTreeMap, HashSet};

use super::CONFIRM_DURABLE;
use crate::final_state::{Final, Reconcile};
use crate::history::{History, Kind, Line};
use crate::verdict::{Culprit, RuleResult};

fn describe_read(l: &Line) -> String {
    match l.kind {
        Kind::Ok => format!("status {}", l.body_str("status").unwrap_or("?")),
        _ => {
            let code = l
                .body
                .as_ref()
                .and_then(|b| b.get("error")?.get("code")?.as_str())
                .or(l.error.as_deref())
                .unwrap_or("?");
            format!(
                "{} {}",
                l.status.map_or("no answer".into(), |s| s.to_string()),
                code
            )
        }
    }
}

pub fn check(h: &History, fin: &Final) -> RuleResult {
    // rid -> first line of an ok confirm
    let mut confirmed: BTreeMap<&str, usize> = BTreeMap::new();
    // rid -> its resolve-phase GETs with a definite answer (an `info` read
    // proves nothing either way)
    let mut gets: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, l) in h.completions() {
        let Some(rid) = l.value_str("reservation_id") else {
            continue;
        };
        match l.f.as_str() {
            "confirm" if l.kind == Kind::Ok => {
                confirmed.entry(rid).or_insert(i);
            }
            "get_reservation" if l.in_resolve() && l.kind != Kind::Info => {
                gets.entry(rid).or_default().push(i);
            }
            _ => {}
        }
    }
    let after_clean = fin
        .reconcile_after
        .as_ref()
        .is_some_and(|r| Reconcile(r).verdict() == Some("clean"));
    let mut order: Vec<(usize, &str)> = confirmed.iter().map(|(r, i)| (*i, *r)).collect();
    order.sort();
    let ledger: Option<HashSet<&str>> = fin
        .ledger_confirmed
        .as_ref()
        .map(|l| l.iter().map(String::as_str).collect());
    let mut no_get = Vec::new();
    let mut excused = 0usize;
    for (i, rid) in order {
        if fin.expected_loss(rid) {
            excused += 1;
            continue;
        }
        let l = &h.lines[i];
        let sku = l.body_str("sku");
        let mut lost = Vec::new();
        match gets.get(rid) {
            None => no_get.push(rid),
            Some(reads) => {
                // every read after the heal must find the sale, not only the last
                let bad = reads.iter().map(|&g| &h.lines[g]).find(|read| {
                    !(read.kind == Kind::Ok && read.body_str("status") == Some("confirmed"))
                });
                if let Some(read) = bad {
                    lost.push(format!(
                        "its resolve GET (index {}) reads {}",
                        read.index,
                        describe_read(read)
                    ));
                }
            }
        }
        if let Some(ledger) = &ledger {
            if !ledger.contains(rid) {
                lost.push("it is not in ledger_confirmed".into());
            }
        }
        if lost.is_empty() {
            continue;
        }
        let reported = fin
            .reconcile_before
            .as_ref()
            .is_some_and(|r| Reconcile(r).reported(rid, sku));
        if reported && after_clean {
            excused += 1;
            continue;
        }
        let why_not_excused = if reported {
            "reconcile_before reported it but reconcile_after is not clean"
        } else {
            "reconcile_before did not report it"
        };
        return RuleResult::broken(
            CONFIRM_DURABLE,
            Some(Culprit::of(l)),
            format!(
                "confirm of {rid} acknowledged {} at index {} is lost: {}; {why_not_excused}, and it is not in expected_loss",
                l.status.map_or("ok".into(), |s| s.to_string()),
                l.index,
                lost.join("; ")
            ),
        );
    }
    let mut gaps = Vec::new();
    if fin.ledger_confirmed.is_none() {
        gaps.push("ledger_confirmed is null: the ledger side was not checked".to_string());
    }
    if let Some(first) = no_get.first() {
        gaps.push(format!(
            "{} confirmed reservations have no resolve-phase GET (first: {first})",
            no_get.len()
        ));
    }
    if !gaps.is_empty() {
        return RuleResult::not_checked(CONFIRM_DURABLE, gaps.join("; "));
    }
    RuleResult::ok(
        CONFIRM_DURABLE,
        format!(
            "{} acknowledged confirms found confirmed and in the ledger ({excused} excused: expected_loss or reported and repaired)",
            confirmed.len() - excused
        ),
    )
}
