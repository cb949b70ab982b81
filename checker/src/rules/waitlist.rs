//! Waitlist promotions in ticket order (per SKU, by `seq`) and at most once
//! per ticket.
//!
//! * Once: every reservation id the history shows for a ticket (its GET or
//!   cancel bodies) and final.json's `waitlist_promotions` name one id.
//! * Order, seen live: a ticket ahead of another (a lower `seq`, or its join
//!   acknowledged before the other's key was first sent) is never seen
//!   `waiting` by an op invoked after the other was seen `promoted`.
//! * Order, from the holds: promoted holds all get the same hold time, so a
//!   ticket with a lower `seq` has a hold deadline (`expires_at` of its
//!   promoted ticket) no later than a ticket with a higher one.

use std::collections::{BTreeMap, HashMap};

use super::WAITLIST;
use crate::final_state::Final;
use crate::history::{History, Kind};
use crate::holds::rfc3339_ms;
use crate::verdict::{Culprit, RuleResult};

#[derive(Default)]
struct Ticket {
    sku: Option<String>,
    /// Completion time of the first ok join that answered this ticket.
    joined: Option<f64>,
    /// Invoke time of the first reserve sent with the ticket's key.
    key_sent: Option<f64>,
    seq: Option<i64>,
    /// First proof of promotion (completion time, line).
    promoted_seen: Option<(f64, usize)>,
    /// Hold deadline of the promotion (ms) and the line that showed it.
    hold_exp: Option<(f64, usize)>,
    /// The reservation id first seen for it, and its line (None: final.json).
    rid: Option<(String, Option<usize>)>,
}

pub fn check(h: &History, fin: &Final) -> RuleResult {
    let mut tickets: BTreeMap<String, Ticket> = BTreeMap::new();
    // (storefront, key) -> first invoke time of a reserve with it
    let mut key_sent: HashMap<(String, String), f64> = HashMap::new();
    // (ticket, invoke time, line) of each `waiting` observation
    let mut waiting: Vec<(String, f64, usize)> = Vec::new();
    let mut violations: Vec<(Option<usize>, String)> = Vec::new();

    for (i, l) in h.lines.iter().enumerate() {
        if l.f == "reserve" && l.kind == Kind::Invoke {
            if let Some(k) = l.idem_key() {
                key_sent.entry(k).or_insert(l.time_ms);
            }
        }
        if l.kind != Kind::Ok && l.kind != Kind::Fail {
            continue;
        }
        let invoke_t = h.invoke_of(i).map_or(l.time_ms, |v| v.time_ms);
        let tid = l
            .body_str("ticket_id")
            .or_else(|| l.value_str("ticket_id"))
            .map(str::to_string);
        let Some(tid) = tid else { continue };
        let t = tickets.entry(tid.clone()).or_default();
        if let Some(s) = l.body_str("sku") {
            t.sku.get_or_insert_with(|| s.to_string());
        }
        if l.kind == Kind::Fail {
            let code = l
                .body
                .as_ref()
                .and_then(|b| b.get("error")?.get("code")?.as_str());
            if code == Some("ticket_promoted") {
                t.promoted_seen.get_or_insert((l.time_ms, i));
            }
            continue;
        }
        if l.f == "reserve" {
            t.joined.get_or_insert(l.time_ms);
            if let Some(k) = l.idem_key() {
                if let Some(&s) = key_sent.get(&k) {
                    t.key_sent = Some(t.key_sent.map_or(s, |x| x.min(s)));
                }
            }
        }
        match l.body_str("status") {
            Some("waiting") => waiting.push((tid.clone(), invoke_t, i)),
            Some("promoted") => {
                t.promoted_seen.get_or_insert((l.time_ms, i));
                if let Some(e) = l.body_str("expires_at").and_then(rfc3339_ms) {
                    t.hold_exp.get_or_insert((e, i));
                }
            }
            _ => {}
        }
        if let Some(rid) = l.body_str("reservation_id") {
            match &t.rid {
                None => t.rid = Some((rid.to_string(), Some(i))),
                Some((first, at)) if first != rid => violations.push((
                    Some(i),
                    format!(
                        "ticket {tid} promoted twice: reservation {first} (index {}) and {rid} (index {})",
                        at.map_or("?".into(), |a| h.lines[a].index.to_string()),
                        l.index
                    ),
                )),
                Some(_) => {}
            }
        }
    }

    if let Some(promotions) = &fin.waitlist_promotions {
        for p in promotions {
            let t = tickets.entry(p.ticket_id.clone()).or_default();
            t.sku.get_or_insert_with(|| p.sku.clone());
            match t.seq {
                Some(s) if s != p.seq => violations.push((
                    None,
                    format!("ticket {} listed with seq {s} and {}", p.ticket_id, p.seq),
                )),
                _ => t.seq = Some(p.seq),
            }
            match &t.rid {
                None => t.rid = Some((p.reservation_id.clone(), None)),
                Some((first, _)) if *first != p.reservation_id => violations.push((
                    None,
                    format!(
                        "ticket {} promoted twice: reservation {first} and {} (waitlist_promotions)",
                        p.ticket_id, p.reservation_id
                    ),
                )),
                Some(_) => {}
            }
        }
    }

    // order, seen live
    for (a, t_w, line) in &waiting {
        let ta = &tickets[a];
        for (b, tb) in &tickets {
            if b == a || tb.sku.is_none() || tb.sku != ta.sku {
                continue;
            }
            let Some((t_p, p_line)) = tb.promoted_seen else {
                continue;
            };
            if t_p >= *t_w {
                continue;
            }
            let by_seq = matches!((ta.seq, tb.seq), (Some(x), Some(y)) if x < y);
            let by_join = matches!((ta.joined, tb.key_sent), (Some(j), Some(s)) if j < s);
            if by_seq || by_join {
                violations.push((
                    Some(*line),
                    format!(
                        "ticket {a} is still waiting (index {}) after {b}, behind it in the queue ({}), was seen promoted (index {})",
                        h.lines[*line].index,
                        if by_seq { "higher seq" } else { "joined later" },
                        h.lines[p_line].index
                    ),
                ));
            }
        }
    }

    // order, from the promoted holds' deadlines
    let mut by_sku: BTreeMap<&str, Vec<(i64, f64, usize, &str)>> = BTreeMap::new();
    for (id, t) in &tickets {
        if let (Some(sku), Some(seq), Some((exp, line))) = (&t.sku, t.seq, t.hold_exp) {
            by_sku.entry(sku).or_default().push((seq, exp, line, id));
        }
    }
    for list in by_sku.values_mut() {
        list.sort_by_key(|x| x.0);
        // the ticket with the latest deadline among the lower seqs so far
        let mut latest: Option<&(i64, f64, usize, &str)> = None;
        for hi in list.iter() {
            if let Some(lo) = latest.filter(|lo| lo.1 > hi.1 && lo.0 < hi.0) {
                violations.push((
                    Some(lo.2.max(hi.2)),
                    format!(
                        "ticket {} (seq {}) was promoted before {} (seq {}): its hold ends {:.0} ms earlier",
                        hi.3,
                        hi.0,
                        lo.3,
                        lo.0,
                        lo.1 - hi.1
                    ),
                ));
            }
            if latest.is_none_or(|l| hi.1 > l.1) {
                latest = Some(hi);
            }
        }
    }

    // the earliest line wins; final-state findings after every line
    violations.sort_by_key(|(line, _)| line.unwrap_or(usize::MAX));
    if let Some((line, msg)) = violations.into_iter().next() {
        return RuleResult::broken(WAITLIST, line.map(|l| Culprit::at(h, l)), msg);
    }
    let promoted = tickets.values().filter(|t| t.rid.is_some()).count();
    if fin.waitlist_promotions.is_none() && !tickets.is_empty() {
        return RuleResult::not_checked(
            WAITLIST,
            format!(
                "waitlist_promotions is null: seq order and the final promotions not checked ({} tickets in the history showed no violation)",
                tickets.len()
            ),
        );
    }
    RuleResult::ok(
        WAITLIST,
        format!(
            "{} tickets, {promoted} promoted, in order and once each",
            tickets.len()
        ),
    )
}
