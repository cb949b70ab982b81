//! Every unit accounted for after reconcile: per SKU, `initial = available +
//! held + sold` (plus units in transit between shards, which only the admin
//! doc shows) in the admin and the public doc, and `sold` equals the ledger's.
//! A final-state rule: no history line breaks it.

use serde_json::Value;

use super::BOOKS;
use crate::final_state::Final;
use crate::verdict::RuleResult;

fn field(doc: &Value, name: &str) -> Option<i64> {
    doc.get(name)?.as_i64()
}

pub fn check(fin: &Final) -> RuleResult {
    let Some(skus) = &fin.skus else {
        return RuleResult::not_checked(BOOKS, "final.json has no skus");
    };
    let mut gaps = Vec::new();
    let mut checked = 0usize;
    for (sku, s) in skus {
        let Some(initial) = s.initial else {
            gaps.push(format!("{sku}: no initial"));
            continue;
        };
        for (name, doc) in [("admin", &s.admin), ("public", &s.public)] {
            let Some(doc) = doc else {
                gaps.push(format!("{sku}: no {name} doc"));
                continue;
            };
            let (Some(available), Some(held), Some(sold)) = (
                field(doc, "available"),
                field(doc, "held"),
                field(doc, "sold"),
            ) else {
                gaps.push(format!("{sku}: the {name} doc lacks available/held/sold"));
                continue;
            };
            // the public doc does not show units in transit between shards;
            // they are the admin doc's (0 once the sweeper completed them)
            let in_transit = field(doc, "in_transit")
                .or_else(|| s.admin.as_ref().and_then(|a| field(a, "in_transit")))
                .unwrap_or(0);
            let total = available + held + sold + in_transit;
            if total != initial {
                return RuleResult::broken(
                    BOOKS,
                    None,
                    format!(
                        "SKU {sku} ({name} doc): initial {initial} ≠ available {available} + held {held} + sold {sold} + in transit {in_transit} = {total} ({} units {})",
                        (initial - total).abs(),
                        if total < initial { "missing" } else { "created" }
                    ),
                );
            }
            match s.ledger_sold {
                Some(ledger) if ledger != sold => {
                    return RuleResult::broken(
                        BOOKS,
                        None,
                        format!(
                            "SKU {sku} ({name} doc): sold {sold} but the ledger has {ledger} sold"
                        ),
                    );
                }
                Some(_) => {}
                None => gaps.push(format!("{sku}: no ledger_sold")),
            }
            checked += 1;
        }
    }
    if checked == 0 || !gaps.is_empty() {
        gaps.dedup();
        return RuleResult::not_checked(BOOKS, gaps.join("; "));
    }
    RuleResult::ok(
        BOOKS,
        format!("{} SKUs add up and match the ledger", skus.len()),
    )
}
