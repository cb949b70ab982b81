//! What was measured, and the maths on it. Every request becomes one
//! [`Sample`] (times relative to the run's epoch, in µs); summaries, the
//! per-bucket timeline and the false-sold-out count are pure functions of the
//! samples, so they are unit-tested here without a server.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

/// The load phases, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Buyers reserve (first attempts, idempotent retries, abusive hammering).
    Wave,
    /// Stock is gone; reserve is hammered with fresh keys for a fixed time.
    SoldOut,
    /// Holders confirm or release.
    Followup,
    /// `GET /healthz` under the same connection count: the HTTP ceiling.
    Healthz,
    /// Reserve on a SKU with more stock than the phase can take: the
    /// sustained reserve rate, comparable with the SQL and Redis baselines.
    Capacity,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Wave => "wave",
            Phase::SoldOut => "sold_out",
            Phase::Followup => "followup",
            Phase::Healthz => "healthz",
            Phase::Capacity => "capacity",
        }
    }
}

/// How one request ended, from the client's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// 201: a new hold.
    Held,
    /// 200 on reserve: an idempotent replay.
    Replayed,
    /// 409 `sold_out`.
    SoldOut,
    /// 409 `purchase_limit`: the buyer's cap for the SKU is reached.
    PurchaseLimit,
    /// 202 on reserve with `"waitlist": true`: a waitlist ticket.
    Waitlisted,
    /// 409 `waitlist_full`.
    WaitlistFull,
    /// 429 `rate_limited`.
    RateLimited,
    /// 503 (`redis_unavailable`).
    Unavailable,
    /// 200 on anything but reserve.
    Ok,
    /// 409 with another code (confirm after expiry, idempotency mismatch, ...).
    Conflict,
    /// Any other 4xx.
    ClientError,
    /// Any other 5xx.
    ServerError,
    /// No answer within the request timeout.
    Timeout,
    /// Connection refused/reset, unreadable body.
    Transport,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Held => "held_201",
            Outcome::Replayed => "replayed_200",
            Outcome::SoldOut => "sold_out_409",
            Outcome::PurchaseLimit => "purchase_limit_409",
            Outcome::Waitlisted => "waitlisted_202",
            Outcome::WaitlistFull => "waitlist_full_409",
            Outcome::RateLimited => "rate_limited_429",
            Outcome::Unavailable => "unavailable_503",
            Outcome::Ok => "ok_200",
            Outcome::Conflict => "conflict_409",
            Outcome::ClientError => "client_error_4xx",
            Outcome::ServerError => "server_error_5xx",
            Outcome::Timeout => "timeout",
            Outcome::Transport => "transport_error",
        }
    }

    /// Classify an HTTP answer. `code` is `error.code` of the JSON body, if any.
    pub fn classify(reserve: bool, status: u16, code: Option<&str>) -> Outcome {
        match (status, code) {
            (201, _) => Outcome::Held,
            (200, _) if reserve => Outcome::Replayed,
            (202, _) if reserve => Outcome::Waitlisted,
            (200..=299, _) => Outcome::Ok,
            (409, Some("sold_out")) => Outcome::SoldOut,
            (409, Some("purchase_limit")) => Outcome::PurchaseLimit,
            (409, Some("waitlist_full")) => Outcome::WaitlistFull,
            (409, _) => Outcome::Conflict,
            (429, _) => Outcome::RateLimited,
            (503, _) => Outcome::Unavailable,
            (400..=499, _) => Outcome::ClientError,
            _ => Outcome::ServerError,
        }
    }
}

/// One request. Times are µs since the run's epoch (the wave's T0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub phase: Phase,
    pub outcome: Outcome,
    pub sent_us: u64,
    pub recv_us: u64,
}

impl Sample {
    pub fn latency_us(&self) -> u64 {
        self.recv_us.saturating_sub(self.sent_us)
    }
}

/// Latency percentiles in ms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Latencies from 1 µs to 10 min, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("static histogram bounds are valid")
}

pub fn latency_of(h: &Histogram<u64>) -> Latency {
    if h.is_empty() {
        return Latency::default();
    }
    let ms = |us: u64| us as f64 / 1000.0;
    Latency {
        p50_ms: ms(h.value_at_quantile(0.50)),
        p90_ms: ms(h.value_at_quantile(0.90)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        max_ms: ms(h.max()),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct OutcomeSummary {
    pub outcome: &'static str,
    pub count: u64,
    pub per_sec: f64,
    pub latency: Latency,
}

#[derive(Debug, Clone, Serialize)]
pub struct PhaseSummary {
    pub phase: &'static str,
    pub duration_s: f64,
    pub requests: u64,
    pub per_sec: f64,
    pub latency: Latency,
    pub outcomes: Vec<OutcomeSummary>,
}

impl PhaseSummary {
    pub fn count(&self, outcome: Outcome) -> u64 {
        self.outcomes
            .iter()
            .find(|o| o.outcome == outcome.label())
            .map_or(0, |o| o.count)
    }

    pub fn rate(&self, outcome: Outcome) -> f64 {
        self.outcomes
            .iter()
            .find(|o| o.outcome == outcome.label())
            .map_or(0.0, |o| o.per_sec)
    }

    pub fn outcome_latency(&self, outcome: Outcome) -> Latency {
        self.outcomes
            .iter()
            .find(|o| o.outcome == outcome.label())
            .map_or_else(Latency::default, |o| o.latency)
    }

    #[cfg(test)]
    pub fn outcome(&self, outcome: Outcome) -> Option<&OutcomeSummary> {
        self.outcomes.iter().find(|o| o.outcome == outcome.label())
    }
}

fn per_sec(count: u64, duration_s: f64) -> f64 {
    if duration_s > 0.0 {
        count as f64 / duration_s
    } else {
        0.0
    }
}

/// Counts, rates and latency per outcome of one phase's samples. Rates are
/// over `duration_s`, the phase's wall time.
pub fn summarize(phase: Phase, samples: &[Sample], duration_s: f64) -> PhaseSummary {
    let mut all = new_histogram();
    let mut by: BTreeMap<Outcome, (u64, Histogram<u64>)> = BTreeMap::new();
    let mut requests = 0;
    for s in samples.iter().filter(|s| s.phase == phase) {
        requests += 1;
        all.saturating_record(s.latency_us().max(1));
        let e = by.entry(s.outcome).or_insert_with(|| (0, new_histogram()));
        e.0 += 1;
        e.1.saturating_record(s.latency_us().max(1));
    }
    PhaseSummary {
        phase: phase.name(),
        duration_s,
        requests,
        per_sec: per_sec(requests, duration_s),
        latency: latency_of(&all),
        outcomes: by
            .into_iter()
            .map(|(o, (count, h))| OutcomeSummary {
                outcome: o.label(),
                count,
                per_sec: per_sec(count, duration_s),
                latency: latency_of(&h),
            })
            .collect(),
    }
}

/// One timeline bucket: answers per second by outcome and p99 latency of the
/// requests answered in the bucket.
#[derive(Debug, Clone, Serialize)]
pub struct Bucket {
    pub start_ms: u64,
    pub per_sec: BTreeMap<&'static str, f64>,
    pub total_per_sec: f64,
    pub held_per_sec: f64,
    pub p99_ms: f64,
}

/// Buckets of `bucket_ms` over `[from_us, to_us)`, by answer time. Empty
/// buckets are kept (with zeros) so the chart shows stalls.
pub fn timeline(samples: &[Sample], from_us: u64, to_us: u64, bucket_ms: u64) -> Vec<Bucket> {
    let width_us = bucket_ms.max(1) * 1000;
    let n = to_us.saturating_sub(from_us).div_ceil(width_us) as usize;
    let mut counts: Vec<BTreeMap<Outcome, u64>> = vec![BTreeMap::new(); n];
    let mut hists: Vec<Option<Histogram<u64>>> = vec![None; n];
    for s in samples {
        if s.recv_us < from_us || s.recv_us >= to_us {
            continue;
        }
        let i = ((s.recv_us - from_us) / width_us) as usize;
        *counts[i].entry(s.outcome).or_default() += 1;
        hists[i]
            .get_or_insert_with(new_histogram)
            .saturating_record(s.latency_us().max(1));
    }
    let scale = 1000.0 / bucket_ms.max(1) as f64;
    counts
        .into_iter()
        .zip(hists)
        .enumerate()
        .map(|(i, (c, h))| Bucket {
            start_ms: (from_us + i as u64 * width_us) / 1000,
            total_per_sec: c.values().sum::<u64>() as f64 * scale,
            held_per_sec: c.get(&Outcome::Held).copied().unwrap_or(0) as f64 * scale,
            per_sec: c
                .into_iter()
                .map(|(o, n)| (o.label(), n as f64 * scale))
                .collect(),
            p99_ms: h.map_or(0.0, |h| latency_of(&h).p99_ms),
        })
        .collect()
}

/// False "sold out" answers, proven from the client's side.
///
/// During the wave and the sold-out phase nobody confirms or releases (that
/// waits until both are over), so stock only goes down until the first hold
/// can expire: `hold` after the first 201 was sent. Within that window, a 409
/// received at t is provably false if some reserve *sent* after t (and
/// before the window ends) still got a 201: stock was > 0 after the 409 was
/// decided, so it was > 0 when it was decided. A lower bound (a 409 decided
/// while another shard had stock, with no later 201 to prove it, is not
/// counted). 201s sent after the window prove nothing: a unit may have come
/// back by expiry.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FalseSoldOut {
    pub sold_out_answers: u64,
    pub first_sold_out_ms: Option<f64>,
    /// The last 201 sent within the window.
    pub last_hold_sent_ms: Option<f64>,
    /// End of the window in which stock can only go down.
    pub window_end_ms: Option<f64>,
    /// 201s sent after the window (not used as proof).
    pub holds_after_window: u64,
    pub proven_false: u64,
}

pub fn false_sold_out(samples: &[Sample], hold_us: u64) -> FalseSoldOut {
    let sale = || {
        samples
            .iter()
            .filter(|s| matches!(s.phase, Phase::Wave | Phase::SoldOut))
    };
    let held = || sale().filter(|s| s.outcome == Outcome::Held);
    let window_end = held().map(|s| s.sent_us).min().map(|t| t + hold_us);
    let in_window = |s: &&Sample| window_end.is_some_and(|end| s.sent_us < end);
    let last_hold_sent = held().filter(in_window).map(|s| s.sent_us).max();
    let sold_out: Vec<&Sample> = sale().filter(|s| s.outcome == Outcome::SoldOut).collect();
    let proven_false = match last_hold_sent {
        Some(t) => sold_out.iter().filter(|s| s.recv_us < t).count() as u64,
        None => 0,
    };
    let ms = |us: u64| us as f64 / 1000.0;
    FalseSoldOut {
        sold_out_answers: sold_out.len() as u64,
        first_sold_out_ms: sold_out.iter().map(|s| s.recv_us).min().map(ms),
        last_hold_sent_ms: last_hold_sent.map(ms),
        window_end_ms: window_end.map(ms),
        holds_after_window: held().filter(|s| !in_window(s)).count() as u64,
        proven_false,
    }
}

/// Time from T0 to the answer of the wave's last hold: the moment stock ran
/// out, if it did.
pub fn time_to_sell_out_ms(samples: &[Sample]) -> Option<f64> {
    samples
        .iter()
        .filter(|s| s.phase == Phase::Wave && s.outcome == Outcome::Held)
        .map(|s| s.recv_us)
        .max()
        .map(|us| us as f64 / 1000.0)
}

/// `a / b`, or None when b is 0.
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(phase: Phase, outcome: Outcome, sent_us: u64, recv_us: u64) -> Sample {
        Sample {
            phase,
            outcome,
            sent_us,
            recv_us,
        }
    }

    #[test]
    fn percentiles_of_one_to_a_thousand_ms() {
        let samples: Vec<Sample> = (1..=1000)
            .map(|ms| s(Phase::Wave, Outcome::Held, 0, ms * 1000))
            .collect();
        let sum = summarize(Phase::Wave, &samples, 2.0);
        assert_eq!(sum.requests, 1000);
        assert_eq!(sum.per_sec, 500.0);
        let l = sum.latency;
        // 3 significant digits: within 0.1 %.
        assert!((l.p50_ms - 500.0).abs() <= 0.5, "{l:?}");
        assert!((l.p90_ms - 900.0).abs() <= 0.9, "{l:?}");
        assert!((l.p99_ms - 990.0).abs() <= 1.0, "{l:?}");
        assert!((l.max_ms - 1000.0).abs() <= 1.0, "{l:?}");
    }

    #[test]
    fn summary_splits_by_outcome_and_ignores_other_phases() {
        let samples = vec![
            s(Phase::Wave, Outcome::Held, 0, 2_000),
            s(Phase::Wave, Outcome::SoldOut, 0, 1_000),
            s(Phase::Wave, Outcome::SoldOut, 0, 3_000),
            s(Phase::Healthz, Outcome::Ok, 0, 100),
        ];
        let sum = summarize(Phase::Wave, &samples, 1.0);
        assert_eq!(sum.requests, 3);
        assert_eq!(sum.count(Outcome::Held), 1);
        assert_eq!(sum.count(Outcome::SoldOut), 2);
        assert_eq!(sum.count(Outcome::Ok), 0);
        assert_eq!(sum.rate(Outcome::SoldOut), 2.0);
        let so = sum.outcome(Outcome::SoldOut).unwrap().latency;
        assert!((so.max_ms - 3.0).abs() < 0.01);
        assert!((sum.latency.p50_ms - 2.0).abs() < 0.01);
    }

    #[test]
    fn empty_phase_has_zero_rates() {
        let sum = summarize(Phase::SoldOut, &[], 0.0);
        assert_eq!(sum.requests, 0);
        assert_eq!(sum.per_sec, 0.0);
        assert_eq!(sum.latency, Latency::default());
    }

    #[test]
    fn timeline_buckets_by_answer_time_and_keeps_gaps() {
        let samples = vec![
            s(Phase::Wave, Outcome::Held, 0, 50_000),
            s(Phase::Wave, Outcome::Held, 0, 99_999),
            s(Phase::Wave, Outcome::SoldOut, 250_000, 260_000),
            s(Phase::Wave, Outcome::SoldOut, 250_000, 400_000), // outside [0, 300 ms)
        ];
        let t = timeline(&samples, 0, 300_000, 100);
        assert_eq!(t.len(), 3);
        assert_eq!(t[0].held_per_sec, 20.0);
        assert_eq!(t[0].total_per_sec, 20.0);
        assert_eq!(t[1].total_per_sec, 0.0);
        assert_eq!(t[1].p99_ms, 0.0);
        assert_eq!(t[2].start_ms, 200);
        assert_eq!(t[2].per_sec["sold_out_409"], 10.0);
        assert!((t[2].p99_ms - 10.0).abs() < 0.02);
    }

    #[test]
    fn a_sold_out_followed_by_a_later_hold_is_false() {
        let samples = vec![
            s(Phase::Wave, Outcome::Held, 0, 10),
            s(Phase::Wave, Outcome::SoldOut, 5, 20), // 201 sent at 30 proves it false
            s(Phase::Wave, Outcome::SoldOut, 6, 40), // answered after the last 201 was sent
            s(Phase::Wave, Outcome::Held, 30, 50),
            s(Phase::Followup, Outcome::Ok, 100, 110), // other phase: ignored
        ];
        let f = false_sold_out(&samples, 1_000_000);
        assert_eq!(f.sold_out_answers, 2);
        assert_eq!(f.proven_false, 1);
        assert_eq!(f.first_sold_out_ms, Some(0.02));
        assert_eq!(f.last_hold_sent_ms, Some(0.03));
        assert_eq!(time_to_sell_out_ms(&samples), Some(0.05));
    }

    #[test]
    fn a_hold_in_the_sold_out_phase_proves_the_wave_wrong() {
        let samples = vec![
            s(Phase::Wave, Outcome::SoldOut, 0, 10),
            s(Phase::SoldOut, Outcome::SoldOut, 20, 30),
            s(Phase::SoldOut, Outcome::Held, 40, 50),
        ];
        let f = false_sold_out(&samples, 1_000_000);
        assert_eq!((f.sold_out_answers, f.proven_false), (2, 2));
        assert_eq!(time_to_sell_out_ms(&samples), None);
    }

    #[test]
    fn holds_after_the_first_could_expire_prove_nothing() {
        // Hold time 100 µs: the first 201 was sent at 0, so units may come
        // back from 100 on; the 201 sent at 150 is not a proof.
        let samples = vec![
            s(Phase::Wave, Outcome::Held, 0, 10),
            s(Phase::Wave, Outcome::SoldOut, 20, 30),
            s(Phase::SoldOut, Outcome::Held, 150, 160),
        ];
        let f = false_sold_out(&samples, 100);
        assert_eq!(f.proven_false, 0);
        assert_eq!(f.holds_after_window, 1);
        assert_eq!(f.window_end_ms, Some(0.1));
        assert_eq!(f.last_hold_sent_ms, Some(0.0));
        // With a longer hold the same 201 proves the 409 false.
        assert_eq!(false_sold_out(&samples, 1000).proven_false, 1);
    }

    #[test]
    fn no_holds_means_nothing_proven() {
        let samples = vec![s(Phase::Wave, Outcome::SoldOut, 0, 10)];
        assert_eq!(false_sold_out(&samples, 1_000_000).proven_false, 0);
        assert_eq!(time_to_sell_out_ms(&samples), None);
    }

    #[test]
    fn classification() {
        assert_eq!(Outcome::classify(true, 201, None), Outcome::Held);
        assert_eq!(Outcome::classify(true, 200, None), Outcome::Replayed);
        assert_eq!(Outcome::classify(false, 200, None), Outcome::Ok);
        assert_eq!(
            Outcome::classify(true, 409, Some("sold_out")),
            Outcome::SoldOut
        );
        assert_eq!(
            Outcome::classify(true, 409, Some("idempotency_mismatch")),
            Outcome::Conflict
        );
        assert_eq!(
            Outcome::classify(true, 409, Some("purchase_limit")),
            Outcome::PurchaseLimit
        );
        assert_eq!(
            Outcome::classify(true, 429, Some("rate_limited")),
            Outcome::RateLimited
        );
        assert_eq!(Outcome::classify(true, 503, None), Outcome::Unavailable);
        assert_eq!(Outcome::classify(true, 422, None), Outcome::ClientError);
        assert_eq!(Outcome::classify(true, 500, None), Outcome::ServerError);
    }

    #[test]
    fn ratio_guards_zero() {
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(ratio(1.0, 4.0), Some(0.25));
    }
}
