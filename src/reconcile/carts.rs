//! Carts on the ledger against their lines (docs/reconcile.md, "Carts").
//!
//! A cart's last state on the ledger (`cart_events`, from the carts' outbox)
//! must agree with the ledger's events of its lines, which are ordinary
//! holds (`ledger_events`):
//!
//! | cart | every line must be |
//! |---|---|
//! | `confirmed` | sold (a `confirmed` event) |
//! | `incomplete` | sold, except the lines in `bad`, which are not |
//! | `failed`, `released`, `expired` | not sold and not still held |
//!
//! A line whose hold is not recorded in the cart (its saga died between the
//! hold and the record) is looked up under every id it can have had
//! (`cart::line_hold_ids`). Carts in a transitional state are not judged
//! (the sweeper finishes them).
//!
//! **Report only.** A disagreement is a partial cart: some units sold or
//! held that the cart's answer to its buyer says are not, or the reverse.
//! Either fix would be wrong in some case: selling the missing lines sells
//! units nobody paid for, and undoing the sold ones undoes a sale (never,
//! docs/reconcile.md); and the cart's state on the ledger is what the API
//! answered. The storefront decides (refund or ship part), so reconcile
//! names the cart and its lines and exits 1; `--fix` changes nothing of it.

use std::collections::{BTreeSet, HashMap};

use serde::Serialize;

use super::{ReconcileError, Reconciler};
use crate::db::LedgerCart;
use crate::domain::{CartId, Sku};
use crate::inventory::cart::line_hold_ids;

/// Carts read from the ledger per page.
const PAGE: i64 = 500;
/// Reservation ids looked up per query.
const LOOKUP: usize = 5_000;

/// One line of a cart that disagrees with the cart's state.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CartFinding {
    pub cart_id: String,
    /// The cart's last state on the ledger.
    pub status: String,
    pub line: usize,
    pub sku: String,
    /// Its recorded hold ('' when the cart never recorded one).
    pub reservation_id: String,
    /// The line on the ledger: `sold`, `held`, `ended` or `none`.
    pub ledger: &'static str,
    pub finding: String,
}

/// A line's state from its hold's events on the ledger.
fn line_state(kinds: &[&str]) -> &'static str {
    let has = |k: &str| kinds.contains(&k);
    if has("confirmed") {
        "sold"
    } else if has("released") || has("expired") {
        "ended"
    } else if has("held") {
        "held"
    } else {
        "none"
    }
}

/// A line of a cart as the ledger's cart event has it.
struct Line {
    sku: String,
    rid: String,
}

fn lines_of(c: &LedgerCart) -> Vec<Line> {
    if c.lines.is_empty() {
        return Vec::new();
    }
    c.lines
        .split('\n')
        .map(|l| {
            let mut p = l.splitn(3, '|');
            let sku = p.next().unwrap_or_default().to_owned();
            let _qty = p.next();
            Line {
                sku,
                rid: p.next().unwrap_or_default().to_owned(),
            }
        })
        .collect()
}

fn judged(status: &str) -> bool {
    matches!(
        status,
        "confirmed" | "incomplete" | "failed" | "released" | "expired"
    )
}

/// The findings of one cart; `state(line, ids)`: the line's state over the
/// ids it can have been held under.
fn judge(c: &LedgerCart, mut state: impl FnMut(usize, &Line) -> &'static str) -> Vec<CartFinding> {
    let bad: BTreeSet<usize> = c.bad.split(',').filter_map(|i| i.parse().ok()).collect();
    let mut out = Vec::new();
    for (i, line) in lines_of(c).iter().enumerate() {
        let st = state(i, line);
        let finding = match c.status.as_str() {
            "confirmed" if st != "sold" => "the cart is confirmed but this line is not sold",
            "incomplete" if bad.contains(&i) && st == "sold" => {
                "the cart is incomplete naming this line unsold, but it is sold"
            }
            "incomplete" if !bad.contains(&i) && st != "sold" => {
                "the cart is incomplete but this line, not named unsold, is not sold"
            }
            "failed" | "released" | "expired" if st == "sold" => {
                "the cart holds nothing by its state, but this line is sold"
            }
            "failed" | "released" | "expired" if st == "held" => {
                "the cart holds nothing by its state, but this line is still held"
            }
            _ => continue,
        };
        out.push(CartFinding {
            cart_id: c.cart_id.clone(),
            status: c.status.clone(),
            line: i,
            sku: line.sku.clone(),
            reservation_id: line.rid.clone(),
            ledger: st,
            finding: finding.to_owned(),
        });
    }
    out
}

impl Reconciler {
    /// Every cart on the ledger in a final state against its lines; the
    /// findings and the number of carts judged.
    pub(super) async fn carts(&mut self) -> Result<(Vec<CartFinding>, u64), ReconcileError> {
        let mut findings = Vec::new();
        let mut checked = 0u64;
        let mut shards: HashMap<String, u16> = HashMap::new();
        let mut after = String::new();
        loop {
            let page = self.db.ledger_carts(&after, PAGE).await?;
            let Some(last) = page.last() else { break };
            after = last.cart_id.clone();
            let page: Vec<LedgerCart> = page.into_iter().filter(|c| judged(&c.status)).collect();
            // the ids each line can have been held under
            let mut ids: HashMap<(usize, usize), Vec<String>> = HashMap::new();
            for (ci, c) in page.iter().enumerate() {
                let Ok(id) = CartId::parse(&c.cart_id) else {
                    continue;
                };
                for (li, line) in lines_of(c).iter().enumerate() {
                    let v = if !line.rid.is_empty() {
                        vec![line.rid.clone()]
                    } else if let Ok(sku) = Sku::parse(&line.sku) {
                        let n = match shards.get(&line.sku) {
                            Some(n) => *n,
                            None => {
                                let n = self.inventory.meta(&sku).await?.map_or(0, |m| m.shards);
                                shards.insert(line.sku.clone(), n);
                                n
                            }
                        };
                        line_hold_ids(&id, li, &sku, n)
                    } else {
                        Vec::new()
                    };
                    ids.insert((ci, li), v);
                }
            }
            let all: Vec<String> = ids.values().flatten().cloned().collect();
            let mut kinds: HashMap<String, Vec<String>> = HashMap::new();
            for chunk in all.chunks(LOOKUP) {
                for (rid, kind) in self.db.hold_events(chunk).await? {
                    kinds.entry(rid).or_default().push(kind);
                }
            }
            for (ci, c) in page.iter().enumerate() {
                checked += 1;
                findings.extend(judge(c, |li, _| {
                    let mut best = "none";
                    for rid in ids.get(&(ci, li)).into_iter().flatten() {
                        let k: Vec<&str> = kinds
                            .get(rid)
                            .map(|v| v.iter().map(String::as_str).collect())
                            .unwrap_or_default();
                        // over the possible ids: sold beats held beats ended
                        best = match (best, line_state(&k)) {
                            ("sold", _) | (_, "sold") => "sold",
                            ("held", _) | (_, "held") => "held",
                            ("ended", _) | (_, "ended") => "ended",
                            _ => "none",
                        };
                    }
                    best
                }));
            }
        }
        Ok((findings, checked))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cart(status: &str, lines: &str, bad: &str) -> LedgerCart {
        LedgerCart {
            cart_id: "0".repeat(32),
            status: status.into(),
            lines: lines.into(),
            bad: bad.into(),
        }
    }

    fn run(c: &LedgerCart, states: &[&'static str]) -> Vec<(usize, &'static str)> {
        judge(c, |i, _| states[i])
            .into_iter()
            .map(|f| (f.line, f.ledger))
            .collect()
    }

    #[test]
    fn a_line_is_sold_held_ended_or_unknown_by_its_events() {
        assert_eq!(line_state(&["held", "confirmed"]), "sold");
        // a confirm after a failover's expired end is still a sale
        assert_eq!(line_state(&["held", "expired", "confirmed"]), "sold");
        assert_eq!(line_state(&["held", "released"]), "ended");
        assert_eq!(line_state(&["held"]), "held");
        assert_eq!(line_state(&[]), "none");
    }

    #[test]
    fn each_final_state_names_the_lines_that_disagree() {
        let two = "A|1|A.0.x\nB|2|B.1.y";
        assert_eq!(run(&cart("confirmed", two, ""), &["sold", "sold"]), []);
        assert_eq!(
            run(&cart("confirmed", two, ""), &["sold", "held"]),
            [(1, "held")]
        );
        assert_eq!(run(&cart("incomplete", two, "1"), &["sold", "ended"]), []);
        assert_eq!(
            run(&cart("incomplete", two, "1"), &["ended", "sold"]),
            [(0, "ended"), (1, "sold")]
        );
        for s in ["failed", "released", "expired"] {
            assert_eq!(run(&cart(s, two, ""), &["ended", "none"]), []);
            assert_eq!(
                run(&cart(s, two, ""), &["sold", "held"]),
                [(0, "sold"), (1, "held")]
            );
        }
        // a cart still on its way is not judged
        for s in ["pending", "held", "compensating", "confirming", "releasing"] {
            assert!(!judged(s));
        }
        assert!(judged("failed"));
    }

    #[test]
    fn a_line_without_a_recorded_hold_keeps_its_sku() {
        let c = cart("failed", "A|1|\nB|2|B.0.z", "");
        let l = lines_of(&c);
        assert_eq!((l[0].sku.as_str(), l[0].rid.as_str()), ("A", ""));
        assert_eq!((l[1].sku.as_str(), l[1].rid.as_str()), ("B", "B.0.z"));
        assert!(lines_of(&cart("failed", "", "")).is_empty());
    }
}
