//! The books after the sale: nothing oversold, every shard's invariant holds,
//! the API agrees with Redis, and every 201 the buyers got ends in exactly one
//! known state. Pure functions over what was read; reading is elsewhere.

use std::collections::BTreeMap;

use serde::Serialize;

/// One shard's counters as stored in Redis (`fg:{SKU#s}:stock` and the
/// `fg:{SKU#s}:books` hash).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ShardBooks {
    pub shard: u32,
    pub stock: i64,
    pub initial: i64,
    pub held: i64,
    pub sold: i64,
    pub xin: i64,
    pub xout: i64,
    /// Units taken out of this shard by a transfer not yet applied to the
    /// recipient (the `fg:{SKU#s}:xfers` hash).
    pub in_transit: i64,
}

impl ShardBooks {
    /// `initial + xin − xout − (stock + held + sold)`: 0 when the shard
    /// balances ([`flashgate::inventory::Books::drift`], the service's one
    /// statement of the invariant).
    pub fn drift(&self) -> i64 {
        flashgate::inventory::Books {
            initial: self.initial,
            transferred_in: self.xin,
            transferred_out: self.xout,
            available: self.stock,
            held: self.held,
            sold: self.sold,
        }
        .drift()
    }
}

/// `GET /v1/skus/{sku}` totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SkuTotals {
    pub available: i64,
    pub held: i64,
    pub sold: i64,
}

/// What a holder did with a hold after the wave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Confirm,
    Release,
    Abandon,
}

/// One reservation id from a 201, what its holder did, and its final status
/// from `GET /v1/reservations/{id}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldRecord {
    pub reservation_id: String,
    pub action: Action,
    /// Did the confirm/release get a 200? None for Abandon.
    pub action_ok: Option<bool>,
    pub final_status: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct BookReport {
    pub expected_initial: Option<i64>,
    pub redis_shards: Vec<ShardBooks>,
    pub api: Option<SkuTotals>,
    pub oversold: i64,
    pub distinct_holds: u64,
    pub holds_in_wave: u64,
    pub confirmed_ok: u64,
    pub released_ok: u64,
    pub abandoned: u64,
    pub action_lost: u64,
    /// Final statuses of the 201 reservation ids, by status.
    pub final_statuses: BTreeMap<String, u64>,
    /// Whether every abandoned hold had expired when the books were read.
    pub expiry_done: bool,
    pub violations: Vec<String>,
}

impl BookReport {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

pub struct BookInput<'a> {
    /// Units we preloaded on a fresh SKU (None with --no-preload).
    pub expected_initial: Option<i64>,
    pub redis_shards: Option<&'a [ShardBooks]>,
    pub api: Option<SkuTotals>,
    pub holds: &'a [HoldRecord],
    /// Distinct reservation ids the wave's 201s carried (no unit came back
    /// to stock during the wave, so more than the stock is an oversell).
    pub holds_in_wave: u64,
}

pub fn check(input: &BookInput) -> BookReport {
    let mut v = Vec::new();
    let holds = input.holds;

    // Shards: each balances, none negative, transfers between them cancel out.
    let shards = input.redis_shards.unwrap_or(&[]);
    for s in shards {
        if s.drift() != 0 {
            v.push(format!(
                "shard {}: initial {} + xin {} - xout {} != stock {} + held {} + sold {} (drift {})",
                s.shard, s.initial, s.xin, s.xout, s.stock, s.held, s.sold, s.drift()
            ));
        }
        if s.stock < 0 || s.held < 0 || s.sold < 0 {
            v.push(format!("shard {}: negative counter {:?}", s.shard, s));
        }
    }
    let sum = |f: fn(&ShardBooks) -> i64| shards.iter().map(f).sum::<i64>();
    let (xin, xout, in_transit) = (sum(|s| s.xin), sum(|s| s.xout), sum(|s| s.in_transit));
    if xin + in_transit != xout {
        v.push(format!(
            "transfers do not cancel out: sum xin {xin} + in transit {in_transit} != sum xout {xout}"
        ));
    }
    let redis_totals = input.redis_shards.map(|_| SkuTotals {
        available: sum(|s| s.stock),
        held: sum(|s| s.held),
        sold: sum(|s| s.sold),
    });
    let redis_initial = input.redis_shards.map(|_| sum(|s| s.initial));

    if let (Some(exp), Some(got)) = (input.expected_initial, redis_initial) {
        if exp != got {
            v.push(format!("sum of initial {got} != units preloaded {exp}"));
        }
    }
    if let (Some(api), Some(redis)) = (input.api, redis_totals) {
        if api != redis {
            v.push(format!("API {api:?} != Redis shard sums {redis:?}"));
        }
    }
    let initial = input.expected_initial.or(redis_initial);
    let totals = input.api.or(redis_totals);
    if let (Some(initial), Some(t)) = (initial, totals) {
        if t.available + t.held + t.sold + in_transit != initial {
            v.push(format!(
                "available {} + held {} + sold {} + in transit {in_transit} != initial {initial}",
                t.available, t.held, t.sold
            ));
        }
    }

    // Client side: what each holder did, and the status it ended in.
    let count = |f: &dyn Fn(&HoldRecord) -> bool| holds.iter().filter(|h| f(h)).count() as u64;
    let confirmed_ok = count(&|h| h.action == Action::Confirm && h.action_ok == Some(true));
    let released_ok = count(&|h| h.action == Action::Release && h.action_ok == Some(true));
    let abandoned = count(&|h| h.action == Action::Abandon);
    let action_lost = count(&|h| h.action_ok == Some(false));
    let mut final_statuses: BTreeMap<String, u64> = BTreeMap::new();
    for h in holds {
        let st = h.final_status.clone().unwrap_or_else(|| "unknown".into());
        *final_statuses.entry(st).or_default() += 1;
    }
    let status = |s: &str| final_statuses.get(s).copied().unwrap_or(0);
    let expiry_done = totals.map(|t| t.held == 0).unwrap_or(false);

    let mut distinct: Vec<&str> = holds.iter().map(|h| h.reservation_id.as_str()).collect();
    distinct.sort_unstable();
    distinct.dedup();
    let distinct_holds = distinct.len() as u64;
    if distinct_holds != holds.len() as u64 {
        v.push(format!(
            "{} reservation ids were handed out in more than one 201",
            holds.len() as u64 - distinct_holds
        ));
    }

    for h in holds {
        let want: &[&str] = match (h.action, h.action_ok) {
            (Action::Confirm, Some(true)) => &["confirmed"],
            (Action::Release, Some(true)) => &["released"],
            // A confirm or release that lost (to expiry): the hold ended otherwise.
            (_, Some(false)) => &["expired", "released"],
            (Action::Abandon, _) if expiry_done => &["expired"],
            _ => &["held", "expired"],
        };
        match h.final_status.as_deref() {
            Some(st) if want.contains(&st) => {}
            got => v.push(format!(
                "reservation {} ({:?}, action ok {:?}): status {:?}, expected one of {:?}",
                h.reservation_id, h.action, h.action_ok, got, want
            )),
        }
    }
    let unknown = distinct_holds
        - (status("confirmed") + status("released") + status("expired") + status("held"))
            .min(distinct_holds);
    if unknown > 0 {
        v.push(format!(
            "{unknown} reservation ids from 201s are in no known state"
        ));
    }
    if let Some(t) = totals {
        if t.sold != status("confirmed") as i64 {
            v.push(format!(
                "sold {} != confirmed reservations {}",
                t.sold,
                status("confirmed")
            ));
        }
        if t.held != status("held") as i64 {
            v.push(format!(
                "held {} != reservations still held {}",
                t.held,
                status("held")
            ));
        }
    }

    // Oversold: units sold or held beyond what was preloaded, seen any way.
    let mut oversold = 0;
    if let Some(initial) = initial {
        oversold = oversold.max(input.holds_in_wave as i64 - initial);
        oversold = oversold.max(confirmed_ok as i64 - initial);
        if let Some(t) = totals {
            oversold = oversold.max(t.sold + t.held - initial);
        }
    }
    if shards.iter().any(|s| s.stock < 0) {
        oversold = oversold.max(-shards.iter().map(|s| s.stock.min(0)).sum::<i64>());
    }
    if oversold > 0 {
        v.push(format!("OVERSOLD by {oversold} units"));
    }

    BookReport {
        expected_initial: input.expected_initial,
        redis_shards: shards.to_vec(),
        api: input.api,
        oversold,
        distinct_holds,
        holds_in_wave: input.holds_in_wave,
        confirmed_ok,
        released_ok,
        abandoned,
        action_lost,
        final_statuses,
        expiry_done,
        violations: v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(shard: u32, initial: i64, stock: i64, held: i64, sold: i64) -> ShardBooks {
        ShardBooks {
            shard,
            stock,
            initial,
            held,
            sold,
            xin: 0,
            xout: 0,
            in_transit: 0,
        }
    }

    fn hold(id: &str, action: Action, ok: Option<bool>, st: &str) -> HoldRecord {
        HoldRecord {
            reservation_id: id.into(),
            action,
            action_ok: ok,
            final_status: Some(st.into()),
        }
    }

    /// 4 units on 2 shards; 3 holds: one confirmed, one released, one expired.
    fn clean() -> (Vec<ShardBooks>, Vec<HoldRecord>) {
        (
            vec![shard(0, 2, 1, 0, 1), shard(1, 2, 2, 0, 0)],
            vec![
                hold("a", Action::Confirm, Some(true), "confirmed"),
                hold("b", Action::Release, Some(true), "released"),
                hold("c", Action::Abandon, None, "expired"),
            ],
        )
    }

    fn input<'a>(shards: &'a [ShardBooks], holds: &'a [HoldRecord]) -> BookInput<'a> {
        BookInput {
            expected_initial: Some(4),
            redis_shards: Some(shards),
            api: Some(SkuTotals {
                available: 3,
                held: 0,
                sold: 1,
            }),
            holds,
            holds_in_wave: holds.len() as u64,
        }
    }

    #[test]
    fn clean_books_pass() {
        let (shards, holds) = clean();
        let r = check(&input(&shards, &holds));
        assert!(r.ok(), "{:?}", r.violations);
        assert_eq!(r.oversold, 0);
        assert_eq!(r.distinct_holds, 3);
        assert_eq!((r.confirmed_ok, r.released_ok, r.abandoned), (1, 1, 1));
        assert!(r.expiry_done);
    }

    #[test]
    fn transfers_balance_per_shard() {
        // Shard 1 lent one unit to shard 0, which sold it.
        let shards = vec![
            ShardBooks {
                shard: 0,
                stock: 0,
                initial: 1,
                held: 0,
                sold: 2,
                xin: 1,
                xout: 0,
                in_transit: 0,
            },
            ShardBooks {
                shard: 1,
                stock: 0,
                initial: 2,
                held: 0,
                sold: 1,
                xin: 0,
                xout: 1,
                in_transit: 0,
            },
        ];
        let holds: Vec<HoldRecord> = ["a", "b", "c"]
            .iter()
            .map(|id| hold(id, Action::Confirm, Some(true), "confirmed"))
            .collect();
        let mut inp = input(&shards, &holds);
        inp.expected_initial = Some(3);
        inp.api = Some(SkuTotals {
            available: 0,
            held: 0,
            sold: 3,
        });
        let r = check(&inp);
        assert!(r.ok(), "{:?}", r.violations);
    }

    #[test]
    fn units_in_transit_are_on_the_books() {
        // Shard 1 gave one unit away; shard 0 has not received it yet.
        let shards = vec![
            shard(0, 2, 1, 0, 1),
            ShardBooks {
                shard: 1,
                stock: 1,
                initial: 2,
                held: 0,
                sold: 0,
                xin: 0,
                xout: 1,
                in_transit: 1,
            },
        ];
        let holds = vec![hold("a", Action::Confirm, Some(true), "confirmed")];
        let mut inp = input(&shards, &holds);
        inp.api = Some(SkuTotals {
            available: 2,
            held: 0,
            sold: 1,
        });
        let r = check(&inp);
        assert!(r.ok(), "{:?}", r.violations);
        let mut lost = shards.clone();
        lost[1].in_transit = 0; // the unit vanished between the halves
        let r = check(&input(&lost, &holds));
        assert!(
            r.violations
                .iter()
                .any(|v| v.contains("transfers do not cancel out")),
            "{:?}",
            r.violations
        );
    }

    #[test]
    fn unbalanced_shard_is_reported() {
        let (mut shards, holds) = clean();
        shards[1].stock = 3; // a unit appeared from nowhere
        let r = check(&input(&shards, &holds));
        assert!(
            r.violations
                .iter()
                .any(|v| v.contains("shard 1") && v.contains("drift -1")),
            "{:?}",
            r.violations
        );
    }

    #[test]
    fn more_holds_in_the_wave_than_stock_is_an_oversell() {
        let (shards, holds) = clean();
        let mut inp = input(&shards, &holds);
        inp.holds_in_wave = 6;
        let r = check(&inp);
        assert_eq!(r.oversold, 2);
        assert!(!r.ok());
    }

    #[test]
    fn negative_stock_is_an_oversell() {
        let shards = vec![shard(0, 1, -1, 0, 2)];
        let holds = vec![
            hold("a", Action::Confirm, Some(true), "confirmed"),
            hold("b", Action::Confirm, Some(true), "confirmed"),
        ];
        let mut inp = input(&shards, &holds);
        inp.expected_initial = Some(1);
        inp.api = Some(SkuTotals {
            available: -1,
            held: 0,
            sold: 2,
        });
        let r = check(&inp);
        assert_eq!(r.oversold, 1);
    }

    #[test]
    fn confirmed_but_not_sold_is_reported() {
        let (shards, mut holds) = clean();
        holds[0].final_status = Some("held".into());
        let r = check(&input(&shards, &holds));
        assert!(
            r.violations.iter().any(|v| v.contains("reservation a")),
            "{:?}",
            r.violations
        );
        assert!(r
            .violations
            .iter()
            .any(|v| v.contains("sold 1 != confirmed reservations 0")));
    }

    #[test]
    fn a_lost_hold_is_unaccounted() {
        let (shards, mut holds) = clean();
        holds[2].final_status = None;
        let r = check(&input(&shards, &holds));
        assert!(
            r.violations.iter().any(|v| v.contains("in no known state")),
            "{:?}",
            r.violations
        );
    }

    #[test]
    fn duplicate_reservation_ids_are_reported() {
        let (shards, mut holds) = clean();
        holds[1].reservation_id = "a".into();
        let r = check(&input(&shards, &holds));
        assert!(
            r.violations.iter().any(|v| v.contains("more than one 201")),
            "{:?}",
            r.violations
        );
    }

    #[test]
    fn api_disagreeing_with_redis_is_reported() {
        let (shards, holds) = clean();
        let mut inp = input(&shards, &holds);
        inp.api = Some(SkuTotals {
            available: 2,
            held: 1,
            sold: 1,
        });
        let r = check(&inp);
        assert!(
            r.violations.iter().any(|v| v.starts_with("API")),
            "{:?}",
            r.violations
        );
    }

    #[test]
    fn before_expiry_abandoned_holds_may_still_be_held() {
        let shards = vec![shard(0, 2, 1, 1, 0), shard(1, 2, 2, 0, 0)];
        let holds = vec![hold("c", Action::Abandon, None, "held")];
        let mut inp = input(&shards, &holds);
        inp.api = Some(SkuTotals {
            available: 3,
            held: 1,
            sold: 0,
        });
        let r = check(&inp);
        assert!(r.ok(), "{:?}", r.violations);
        assert!(!r.expiry_done);
    }
}
