//! The rules of reconcile, without I/O: given one reading of a shard in
//! Redis and on the ledger, which reservations disagree and how (the
//! findings of `RecordDrift`), what the ledger says the shard's books must be,
//! and the plan that repairs it (ledger backfills, records to settle). Across
//! a SKU's shards, whether every transferred unit arrived.
//!
//! Longer than most modules (≈600 lines) because its unit tests live here:
//! one per kind of drift, built from readings by hand, no Redis needed.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::report::ShardReport;
use super::snapshot::{LedgerRid, LedgerShard, Snapshot};
#[cfg(test)]
use crate::inventory::replies::StoredRecord;

/// A ledger row reconcile adds (source `reconcile`).
pub(super) type Backfill = crate::db::LedgerBackfill;

const TERMINAL: [&str; 3] = ["confirmed", "released", "expired"];

/// One shard's books, as Redis has them or as the ledger says they must be.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Books {
    pub available: i64,
    pub held: i64,
    pub sold: i64,
    pub initial: i64,
    /// `xfer_in` in the report's JSON and the ledger's row kinds.
    #[serde(rename = "xfer_in")]
    pub transferred_in: i64,
    /// `xfer_out` in the report's JSON and the ledger's row kinds.
    #[serde(rename = "xfer_out")]
    pub transferred_out: i64,
}

impl Books {
    pub(super) fn fields(&self) -> [(&'static str, i64); 6] {
        [
            ("available", self.available),
            ("held", self.held),
            ("sold", self.sold),
            ("initial", self.initial),
            ("xfer_in", self.transferred_in),
            ("xfer_out", self.transferred_out),
        ]
    }

    /// `initial + xin - xout - (available + held + sold)`: the books
    /// invariant, as the inventory states it once (`inventory::Books`).
    pub(super) fn unaccounted(&self) -> i64 {
        self.as_inventory().drift()
    }

    /// The same counters under the inventory's names.
    fn as_inventory(&self) -> crate::inventory::Books {
        crate::inventory::Books {
            initial: self.initial,
            transferred_in: self.transferred_in,
            transferred_out: self.transferred_out,
            available: self.available,
            held: self.held,
            sold: self.sold,
        }
    }
}

/// A counter on which Redis and the ledger disagree.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CounterDrift {
    pub field: &'static str,
    pub redis: i64,
    pub ledger: i64,
}

/// A reservation on which Redis and the ledger disagree.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RecordDrift {
    pub rid: String,
    pub qty: i64,
    /// `none`, `held`, or how it ended.
    pub ledger: String,
    /// `absent`, or the record's status.
    pub redis: String,
    /// `ledger_missing` (the outbox lost events Redis proves: backfilled into
    /// the ledger), `hold_lost` (Redis lost a hold: closed as expired in the
    /// ledger), `record_behind` (Redis lost the end of a hold: its record is
    /// settled), `status_conflict` (both ended, differently: the ledger wins,
    /// the record is set to its status).
    pub finding: &'static str,
    pub repair: String,
}

impl LedgerShard {
    pub(super) fn books(&self) -> Books {
        let mut b = Books {
            initial: self.initial,
            transferred_in: self.transferred_in,
            transferred_out: self.transferred_out,
            ..Books::default()
        };
        for r in self.rids.values() {
            match r.end.as_deref() {
                Some("confirmed") => b.sold += r.qty,
                None if r.held => b.held += r.qty,
                _ => {}
            }
        }
        // what the invariant leaves free once holds and sales are counted
        b.available = b.unaccounted();
        b
    }
}

/// What `--fix` would do on one shard.
pub(super) struct Plan {
    pub(super) backfill: Vec<Backfill>,
    /// Records whose status differs from the ledger's, with the ledger's status.
    pub(super) settle: Vec<(String, String)>,
}

/// Compare one shard; returns the report (with the ledger's books after the
/// planned repairs) and the plan. `now`: the time of the backfills it
/// invents (a lost hold closed as expired).
pub(super) fn compare(
    stream: String,
    shard: u16,
    snap: &Snapshot,
    mut ledger: LedgerShard,
    now: i64,
) -> (ShardReport, Plan) {
    let mut plan = Plan {
        backfill: Vec::new(),
        settle: Vec::new(),
    };
    let mut records = Vec::new();
    let rids: BTreeSet<String> = ledger
        .rids
        .keys()
        .cloned()
        .chain(snap.holds.iter().cloned())
        .chain(snap.records.keys().cloned())
        .collect();
    for rid in rids {
        let l = ledger.rids.get(&rid).cloned().unwrap_or_default();
        let known = ledger.rids.contains_key(&rid);
        let l_state = match (&l.end, l.held) {
            (Some(e), _) => e.clone(),
            (None, true) => "held".to_string(),
            (None, false) => "none".to_string(),
        };
        let rec = snap.records.get(&rid);
        let r_state = rec.map_or("absent".to_string(), |r| r.status.clone());
        let mut drift = |finding: &'static str, qty: i64, repair: String| {
            records.push(RecordDrift {
                rid: rid.clone(),
                qty,
                ledger: l_state.clone(),
                redis: r_state.clone(),
                finding,
                repair,
            })
        };
        match rec {
            Some(r) => {
                let fill = |kind: &str, ts: i64| Backfill {
                    rid: rid.clone(),
                    kind: kind.to_string(),
                    qty: r.qty,
                    user: r.user.clone(),
                    ts,
                };
                let mut entry = ledger.rids.get(&rid).cloned().unwrap_or(LedgerRid {
                    qty: r.qty,
                    user: r.user.clone(),
                    held: false,
                    end: None,
                });
                let r_end = TERMINAL.contains(&r.status.as_str());
                match (&l.end, r_end) {
                    (None, true) => {
                        let mut rows = Vec::new();
                        if !l.held {
                            rows.push(fill("held", r.created));
                        }
                        rows.push(fill(&r.status, r.ended.max(r.created)));
                        drift(
                            "ledger_missing",
                            r.qty,
                            format!("backfill {} into the ledger", kinds(&rows)),
                        );
                        entry.held = true;
                        entry.end = Some(r.status.clone());
                        plan.backfill.extend(rows);
                    }
                    (None, false) if !l.held => {
                        drift(
                            "ledger_missing",
                            r.qty,
                            "backfill held into the ledger".into(),
                        );
                        entry.held = true;
                        plan.backfill.push(fill("held", r.created));
                    }
                    (Some(end), false) => {
                        drift(
                            "record_behind",
                            l.qty,
                            format!("settle the Redis record as {end}"),
                        );
                        plan.settle.push((rid.clone(), end.clone()));
                    }
                    (Some(end), true) if *end != r.status => {
                        drift(
                            "status_conflict",
                            l.qty,
                            format!("the ledger's {end} stands: the Redis record is set to it"),
                        );
                        plan.settle.push((rid.clone(), end.clone()));
                    }
                    _ => {}
                }
                if entry.qty == 0 {
                    entry.qty = r.qty;
                }
                ledger.rids.insert(rid.clone(), entry);
            }
            None if known && l.held && l.end.is_none() => {
                drift(
                    "hold_lost",
                    l.qty,
                    "close it as expired in the ledger (its units go back on sale)".into(),
                );
                plan.backfill.push(Backfill {
                    rid: rid.clone(),
                    kind: "expired".into(),
                    qty: l.qty,
                    user: l.user.clone(),
                    ts: now,
                });
                if let Some(e) = ledger.rids.get_mut(&rid) {
                    e.end = Some("expired".into());
                }
            }
            None => {}
        }
    }
    let target = ledger.books();
    let counters = snap
        .books
        .fields()
        .iter()
        .zip(target.fields().iter())
        .filter(|(r, l)| r.1 != l.1)
        .map(|(r, l)| CounterDrift {
            field: r.0,
            redis: r.1,
            ledger: l.1,
        })
        .collect();
    (
        ShardReport {
            shard,
            stream,
            redis: snap.books,
            ledger: target,
            redis_unaccounted: snap.books.unaccounted(),
            counters,
            records,
            fix: None,
        },
        plan,
    )
}

/// Ledger backfills per shard, each with the finding it repairs.
type Fills = BTreeMap<u16, Vec<(RecordDrift, Backfill)>>;

/// Check the SKU's transfers as a whole: every unit a shard sent (ledger
/// `transferred_out`, or a pending record in Redis) arrived on its recipient
/// (`transferred_in`) or is still in transit. Each shard's books add up on their own
/// even when one half of a transfer is lost, so only this finds a unit that
/// vanished (the `transferred_in` lost) or was created (the `transferred_out` lost). The
/// half the other proves is backfilled into the ledger (its counters follow
/// through the shard's fix), and the ledger books in `read` are adjusted.
/// Returns the backfills per shard and the transfers in transit.
pub(super) fn balance_transfers(
    read: &mut [(Snapshot, LedgerShard)],
    problems: &mut Vec<String>,
    now: i64,
) -> (Fills, Vec<String>) {
    let mut fills = Fills::new();
    let mut pending = Vec::new();
    let shards = read.len();
    let add = |fills: &mut Fills,
               at: u16,
               kind: &str,
               xid: &str,
               n: i64,
               other: u16,
               finding: &'static str,
               why: String| {
        fills.entry(at).or_default().push((
            RecordDrift {
                rid: xid.to_string(),
                qty: n,
                ledger: "none".into(),
                redis: "-".into(),
                finding,
                repair: format!("backfill {kind} into the ledger ({why})"),
            },
            Backfill {
                rid: xid.to_string(),
                kind: kind.to_string(),
                qty: n,
                user: other.to_string(),
                ts: now,
            },
        ));
    };
    let mut ins: Vec<(u16, i64)> = Vec::new();
    let mut outs: Vec<(u16, i64)> = Vec::new();
    for from in 0..shards {
        let (snap, l) = &read[from];
        // < shards <= MAX_SHARDS
        let from = from as u16;
        // sent: on the ledger, or proven by the donor's pending record
        let mut sent: BTreeMap<&String, (u16, i64)> = l.outs.iter().map(|(x, v)| (x, *v)).collect();
        for (xid, v) in &snap.pending_xfers {
            if !sent.contains_key(xid) {
                add(
                    &mut fills,
                    from,
                    "xfer_out",
                    xid,
                    v.1,
                    v.0,
                    "transfer_out_missing",
                    "the donor's pending transfer record proves it".into(),
                );
                outs.push((from, v.1));
                sent.insert(xid, *v);
            }
        }
        for (xid, (to, n)) in sent {
            let Some((_, rl)) = read.get(usize::from(to)) else {
                problems.push(format!("transfer {xid} of {n} units from shard {from} names shard {to}, which the SKU does not have"));
                continue;
            };
            if rl.ins.contains_key(xid) {
                continue;
            }
            if snap.pending_xfers.contains_key(xid) {
                pending.push(format!("{xid}: {n} units {from} -> {to}"));
                continue;
            }
            add(
                &mut fills,
                to,
                "xfer_in",
                xid,
                n,
                from,
                "transfer_in_lost",
                format!(
                    "shard {from} sent {n} units that never arrived and are no longer in transit"
                ),
            );
            ins.push((to, n));
        }
        // received without a send on the ledger: the donor's half was lost
        for (xid, (donor, n)) in &l.ins {
            let Some((dsnap, dl)) = read.get(usize::from(*donor)) else {
                problems.push(format!("transfer {xid} of {n} units into shard {from} names shard {donor}, which the SKU does not have"));
                continue;
            };
            if dl.outs.contains_key(xid) || dsnap.pending_xfers.contains_key(xid) {
                continue;
            }
            add(
                &mut fills,
                *donor,
                "xfer_out",
                xid,
                *n,
                from,
                "transfer_out_lost",
                format!("shard {from} received {n} units its donor never gave"),
            );
            outs.push((*donor, *n));
        }
    }
    for (s, n) in ins {
        read[usize::from(s)].1.transferred_in += n;
    }
    for (s, n) in outs {
        read[usize::from(s)].1.transferred_out += n;
    }
    (fills, pending)
}

fn kinds(rows: &[Backfill]) -> String {
    rows.iter()
        .map(|b| b.kind.as_str())
        .collect::<Vec<_>>()
        .join(" + ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rid(l: &mut LedgerShard, id: &str, qty: i64, held: bool, end: Option<&str>) {
        l.rids.insert(
            id.into(),
            LedgerRid {
                qty,
                user: "u".into(),
                held,
                end: end.map(str::to_string),
            },
        );
    }

    #[test]
    fn ledger_books_count_each_reservation_once() {
        let mut l = LedgerShard {
            initial: 10,
            ..LedgerShard::default()
        };
        rid(&mut l, "a", 2, true, Some("confirmed"));
        rid(&mut l, "b", 1, true, None);
        rid(&mut l, "c", 3, true, Some("expired"));
        rid(&mut l, "d", 1, false, Some("confirmed")); // its held event is missing
        let b = l.books();
        assert_eq!((b.sold, b.held, b.available), (3, 1, 6));
        assert_eq!(b.unaccounted(), 0);
    }

    const NOW: i64 = 1_700_000_000_000;

    fn record(status: &str, qty: i64) -> StoredRecord {
        StoredRecord {
            status: status.into(),
            qty,
            created: NOW - 5_000,
            exp: NOW + 60_000,
            first_exp: None,
            ended: if status == "held" { 0 } else { NOW - 1_000 },
            user: "u".into(),
            idem: String::new(),
        }
    }

    /// A shard of 10 units whose Redis books are `books` and records `records`.
    fn snapshot(books: Books, records: &[(&str, StoredRecord)], holds: &[&str]) -> Snapshot {
        Snapshot {
            last_id: "1-0".into(),
            books,
            holds: holds.iter().map(|h| h.to_string()).collect(),
            records: records
                .iter()
                .map(|(id, r)| (id.to_string(), r.clone()))
                .collect(),
            pending_xfers: BTreeMap::new(),
        }
    }

    fn books(available: i64, held: i64, sold: i64) -> Books {
        Books {
            available,
            held,
            sold,
            initial: 10,
            ..Books::default()
        }
    }

    fn ledger10() -> LedgerShard {
        LedgerShard {
            initial: 10,
            loads: 1,
            ..LedgerShard::default()
        }
    }

    fn findings(r: &ShardReport) -> Vec<(&str, &'static str)> {
        r.records
            .iter()
            .map(|d| (d.rid.as_str(), d.finding))
            .collect()
    }

    #[test]
    fn books_that_agree_are_no_drift() {
        let mut l = ledger10();
        rid(&mut l, "a", 2, true, Some("confirmed"));
        rid(&mut l, "b", 1, true, None);
        let snap = snapshot(
            books(7, 1, 2),
            &[("a", record("confirmed", 2)), ("b", record("held", 1))],
            &["b"],
        );
        let (report, plan) = compare("s".into(), 0, &snap, l, NOW);
        assert!(!report.drift(), "{report:?}");
        assert!(plan.backfill.is_empty() && plan.settle.is_empty());
    }

    #[test]
    fn a_sale_the_outbox_lost_is_backfilled_not_undone() {
        // Redis sold 2 units; the ledger never heard of the reservation
        let snap = snapshot(books(8, 0, 2), &[("a", record("confirmed", 2))], &[]);
        let (report, plan) = compare("s".into(), 0, &snap, ledger10(), NOW);
        assert_eq!(findings(&report), [("a", "ledger_missing")]);
        let kinds: Vec<&str> = plan.backfill.iter().map(|b| b.kind.as_str()).collect();
        assert_eq!(kinds, ["held", "confirmed"]);
        // after the backfill the ledger agrees with Redis: no counter moves
        assert_eq!(report.ledger, snap.books);
        assert!(report.counters.is_empty(), "{:?}", report.counters);
    }

    #[test]
    fn a_hold_redis_lost_is_closed_as_expired_and_its_units_return() {
        let mut l = ledger10();
        rid(&mut l, "a", 3, true, None);
        // Redis lost the hold: no record, and its units are nowhere
        let snap = snapshot(books(7, 0, 0), &[], &[]);
        let (report, plan) = compare("s".into(), 0, &snap, l, NOW);
        assert_eq!(findings(&report), [("a", "hold_lost")]);
        assert_eq!(plan.backfill.len(), 1);
        assert_eq!(
            (
                plan.backfill[0].kind.as_str(),
                plan.backfill[0].qty,
                plan.backfill[0].ts
            ),
            ("expired", 3, NOW)
        );
        assert_eq!((report.ledger.available, report.ledger.held), (10, 0));
        let available = report.counters.iter().find(|c| c.field == "available");
        assert_eq!(available.map(|c| (c.redis, c.ledger)), Some((7, 10)));
    }

    #[test]
    fn a_record_behind_the_ledger_is_settled_and_the_ledger_wins_a_conflict() {
        let mut l = ledger10();
        rid(&mut l, "a", 1, true, Some("confirmed"));
        rid(&mut l, "b", 2, true, Some("released"));
        // Redis still holds `a` (lost its confirm) and says `b` expired
        let snap = snapshot(
            books(7, 1, 0),
            &[("a", record("held", 1)), ("b", record("expired", 2))],
            &["a"],
        );
        let (report, plan) = compare("s".into(), 0, &snap, l, NOW);
        assert_eq!(
            findings(&report),
            [("a", "record_behind"), ("b", "status_conflict")]
        );
        assert_eq!(
            plan.settle,
            [
                ("a".to_string(), "confirmed".to_string()),
                ("b".to_string(), "released".to_string())
            ]
        );
        assert!(plan.backfill.is_empty());
        assert_eq!((report.ledger.held, report.ledger.sold), (0, 1));
    }

    #[test]
    fn redis_books_that_do_not_add_up_are_reported() {
        // one unit vanished from Redis's counters, and no record explains it
        let snap = snapshot(books(9, 0, 0), &[], &[]);
        let (report, _) = compare("s".into(), 0, &snap, ledger10(), NOW);
        assert_eq!(report.redis_unaccounted, 1);
        assert!(report.drift());
        assert!(report.records.is_empty());
    }

    #[test]
    fn a_transfer_whose_receipt_was_lost_is_backfilled_on_its_recipient() {
        // shard 0 sent 3 units to shard 1 (on the ledger); shard 1's receipt is lost
        let mut donor = ledger10();
        donor.transferred_out = 3;
        donor.outs.insert("x1".into(), (1, 3));
        let mut read = vec![
            (
                snapshot(
                    Books {
                        transferred_out: 3,
                        ..books(7, 0, 0)
                    },
                    &[],
                    &[],
                ),
                donor,
            ),
            (snapshot(books(10, 0, 0), &[], &[]), ledger10()),
        ];
        let mut problems = Vec::new();
        let (fills, pending) = balance_transfers(&mut read, &mut problems, NOW);
        assert!(problems.is_empty() && pending.is_empty());
        let on_1 = &fills[&1];
        assert_eq!(on_1.len(), 1);
        assert_eq!(on_1[0].0.finding, "transfer_in_lost");
        assert_eq!(
            (
                on_1[0].1.kind.as_str(),
                on_1[0].1.qty,
                on_1[0].1.user.as_str()
            ),
            ("xfer_in", 3, "0")
        );
        // the recipient's ledger books now count the units it was sent
        assert_eq!(read[1].1.transferred_in, 3);
        assert_eq!(read[1].1.books().available, 13);
    }

    #[test]
    fn a_transfer_in_transit_is_not_drift() {
        let mut donor = ledger10();
        donor.transferred_out = 2;
        donor.outs.insert("x1".into(), (1, 2));
        let mut snap0 = snapshot(books(8, 0, 0), &[], &[]);
        snap0.pending_xfers.insert("x1".into(), (1, 2));
        let mut read = vec![
            (snap0, donor),
            (snapshot(books(10, 0, 0), &[], &[]), ledger10()),
        ];
        let mut problems = Vec::new();
        let (fills, pending) = balance_transfers(&mut read, &mut problems, NOW);
        assert!(fills.is_empty() && problems.is_empty());
        assert_eq!(pending, ["x1: 2 units 0 -> 1"]);
    }
}
