//! The simulated sale: who the buyers are (a seeded plan), the reserve wave,
//! the sold-out phase, the holders' follow-ups and the healthz baseline.
//!
//! Why confirms and releases wait until the wave is over: while the wave
//! runs, no unit comes back to stock, so stock only goes down and a 409
//! followed by a later 201 proves the 409 false (see `stats::false_sold_out`).
//! Holds outlive the wave as long as `--hold-seconds` exceeds its duration.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Notify;

use crate::books::Action;
use crate::http::{sku_totals, Api};
use crate::stats::{Outcome, Phase, Sample};

/// splitmix64: a small, seedable generator, enough to assign roles.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buyer {
    pub idx: u64,
    /// Sends its request twice with the same Idempotency-Key and body.
    pub retries: bool,
    /// Sends `abusive_requests` reserves with fresh keys.
    pub abusive: bool,
    /// What it does with a hold.
    pub action: Action,
}

#[derive(Debug, Clone, Copy)]
pub struct Shares {
    pub retry: f64,
    pub abusive: f64,
    pub confirm: f64,
    pub release: f64,
}

pub fn pick_action(rng: &mut Rng, s: &Shares) -> Action {
    let a = rng.unit();
    if a < s.confirm {
        Action::Confirm
    } else if a < s.confirm + s.release {
        Action::Release
    } else {
        Action::Abandon
    }
}

/// The buyers, in arrival order; the same seed gives the same sale.
pub fn plan(buyers: u64, shares: &Shares, seed: u64) -> Vec<Buyer> {
    let mut rng = Rng::new(seed);
    (0..buyers)
        .map(|idx| {
            let abusive = rng.unit() < shares.abusive;
            let retries = !abusive && rng.unit() < shares.retry;
            Buyer {
                idx,
                retries,
                abusive,
                action: pick_action(&mut rng, shares),
            }
        })
        .collect()
}

/// A reservation id from a 201, who got it and what they will do with it.
#[derive(Debug, Clone)]
pub struct Hold {
    pub reservation_id: String,
    pub user: String,
    pub abusive: bool,
    pub action: Action,
}

/// One GET /v1/skus poll during the wave.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct StockPoint {
    pub t_ms: f64,
    pub available: i64,
    pub held: i64,
    pub sold: i64,
    /// Taken right after the first sold-out answer.
    pub sell_out_probe: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct WaveFacts {
    pub buyers: u64,
    pub retrying_buyers: u64,
    pub abusive_buyers: u64,
    pub duration_s: f64,
    pub unstarted_buyers: u64,
    /// Retries whose answer named another reservation than the first 201.
    pub replay_mismatches: u64,
    /// Retries of a 201 answered 200 with the same reservation id.
    pub replays_ok: u64,
    /// Retries of a 201 that got no replay (429, 503, timeout...).
    pub replays_unanswered: u64,
    pub holds_by_abusive_buyers: u64,
    pub max_holds_per_user: u64,
    pub available_at_first_sold_out: Option<i64>,
}

pub struct Wave {
    pub samples: Vec<Sample>,
    pub holds: Vec<Hold>,
    pub stock: Vec<StockPoint>,
    pub facts: WaveFacts,
}

pub struct WaveConfig {
    pub sku: String,
    pub run_id: String,
    pub connections: usize,
    pub ramp: Duration,
    pub abusive_requests: u32,
    pub max_duration: Duration,
}

#[derive(Default)]
struct WorkerOut {
    samples: Vec<Sample>,
    holds: Vec<Hold>,
    replay_mismatches: u64,
    replays_ok: u64,
    replays_unanswered: u64,
}

/// Run the wave: `connections` workers take buyers in arrival order (each
/// waits for its buyer's arrival time when ramping) until all are served or
/// the time limit passes. A monitor polls `GET /v1/skus` every 100 ms and
/// once more right after the first sold-out answer.
pub async fn run_wave(api: &Api, monitor: &Api, buyers: Arc<Vec<Buyer>>, cfg: &WaveConfig) -> Wave {
    let t0 = Instant::now();
    let deadline = t0 + cfg.max_duration;
    let next = Arc::new(AtomicU64::new(0));
    let sold_out_seen = Arc::new(AtomicBool::new(false));
    let probe = Arc::new(Notify::new());
    let n = buyers.len() as u64;

    let stop_monitor = Arc::new(AtomicBool::new(false));
    let stock_points = Arc::new(Mutex::new(Vec::new()));
    let monitor_task = {
        let (monitor, sku, stop, probe, points) = (
            monitor.clone(),
            cfg.sku.clone(),
            stop_monitor.clone(),
            probe.clone(),
            stock_points.clone(),
        );
        let epoch = t0;
        tokio::spawn(async move {
            let (mut probed, mut first) = (false, true);
            while !stop.load(Ordering::Relaxed) {
                let woke_by_probe = if first {
                    first = false; // one reading at T0
                    false
                } else {
                    tokio::select! {
                        _ = probe.notified(), if !probed => true,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => false,
                    }
                };
                probed |= woke_by_probe;
                if let Ok(j) = monitor.sku(&sku).await {
                    if let Some(t) = sku_totals(&j) {
                        points.lock().unwrap().push(StockPoint {
                            t_ms: epoch.elapsed().as_secs_f64() * 1000.0,
                            available: t.available,
                            held: t.held,
                            sold: t.sold,
                            sell_out_probe: woke_by_probe,
                        });
                    }
                }
            }
        })
    };

    let mut tasks = Vec::with_capacity(cfg.connections);
    for _ in 0..cfg.connections {
        let (api, buyers, next, seen, probe) = (
            api.clone(),
            buyers.clone(),
            next.clone(),
            sold_out_seen.clone(),
            probe.clone(),
        );
        let (sku, run_id, ramp, abusive_requests) = (
            cfg.sku.clone(),
            cfg.run_id.clone(),
            cfg.ramp,
            cfg.abusive_requests,
        );
        tasks.push(tokio::spawn(async move {
            let mut out = WorkerOut::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n || Instant::now() >= deadline {
                    break;
                }
                let b = buyers[i as usize];
                if !ramp.is_zero() {
                    let at = t0 + ramp.mul_f64(i as f64 / n as f64);
                    tokio::time::sleep_until(at.into()).await;
                }
                let user = format!("u{}", b.idx);
                let attempts = if b.abusive {
                    abusive_requests.max(1)
                } else {
                    1
                };
                for a in 0..attempts {
                    let key = format!("{run_id}-{}-{a}", b.idx);
                    let first = api.reserve(Phase::Wave, &sku, &user, &key).await;
                    if first.sample.outcome == Outcome::SoldOut
                        && !seen.swap(true, Ordering::Relaxed)
                    {
                        probe.notify_one();
                    }
                    out.samples.push(first.sample);
                    if first.sample.outcome == Outcome::Held {
                        if let Some(rid) = &first.reservation_id {
                            out.holds.push(Hold {
                                reservation_id: rid.clone(),
                                user: user.clone(),
                                abusive: b.abusive,
                                action: b.action,
                            });
                        }
                    }
                    if b.retries {
                        // The client did not see the first answer and sends it again.
                        let again = api.reserve(Phase::Wave, &sku, &user, &key).await;
                        out.samples.push(again.sample);
                        let (o1, o2) = (first.sample.outcome, again.sample.outcome);
                        match (&first.reservation_id, &again.reservation_id) {
                            (Some(r1), Some(r2))
                                if o1 == Outcome::Held && o2 == Outcome::Replayed && r1 == r2 =>
                            {
                                out.replays_ok += 1
                            }
                            _ if o1 == Outcome::Held
                                && matches!(o2, Outcome::Held | Outcome::Replayed) =>
                            {
                                out.replay_mismatches += 1
                            }
                            _ if o1 == Outcome::Held => out.replays_unanswered += 1,
                            _ => {}
                        }
                        // A second 201 is a hold like any other (after a refusal it is
                        // legitimate; after a 201 it is also a replay mismatch).
                        if let (Outcome::Held, Some(r2)) = (o2, &again.reservation_id) {
                            out.holds.push(Hold {
                                reservation_id: r2.clone(),
                                user: user.clone(),
                                abusive: b.abusive,
                                action: b.action,
                            });
                        }
                    }
                }
            }
            out
        }));
    }
    let mut samples = Vec::with_capacity(n as usize);
    let mut holds = Vec::new();
    let mut facts = WaveFacts {
        buyers: n,
        retrying_buyers: buyers.iter().filter(|b| b.retries).count() as u64,
        abusive_buyers: buyers.iter().filter(|b| b.abusive).count() as u64,
        ..WaveFacts::default()
    };
    for t in tasks {
        let out = t.await.expect("wave worker panicked");
        samples.extend(out.samples);
        holds.extend(out.holds);
        facts.replay_mismatches += out.replay_mismatches;
        facts.replays_ok += out.replays_ok;
        facts.replays_unanswered += out.replays_unanswered;
    }
    facts.duration_s = samples.iter().map(|s| s.recv_us).max().unwrap_or(0) as f64 / 1e6;
    facts.unstarted_buyers = n.saturating_sub(next.load(Ordering::Relaxed).min(n));
    stop_monitor.store(true, Ordering::Relaxed);
    let _ = monitor_task.await;
    let stock = std::mem::take(&mut *stock_points.lock().unwrap());
    facts.available_at_first_sold_out =
        stock.iter().find(|p| p.sell_out_probe).map(|p| p.available);
    facts.holds_by_abusive_buyers = holds.iter().filter(|h| h.abusive).count() as u64;
    let mut per_user: HashMap<&str, u64> = HashMap::new();
    for h in &holds {
        *per_user.entry(h.user.as_str()).or_default() += 1;
    }
    facts.max_holds_per_user = per_user.values().copied().max().unwrap_or(0);
    Wave {
        samples,
        holds,
        stock,
        facts,
    }
}

/// Hammer one kind of request with `connections` workers for `duration` or
/// `max_requests`, whichever comes first. `make(n)` sends request number n.
pub async fn hammer<F, Fut>(
    connections: usize,
    duration: Duration,
    max_requests: u64,
    make: F,
) -> (Vec<crate::http::Answer>, f64)
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = crate::http::Answer> + Send,
{
    let make = Arc::new(make);
    let start = Instant::now();
    let deadline = start + duration;
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let (make, next) = (make.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= max_requests || Instant::now() >= deadline {
                    break;
                }
                out.push(make(i).await);
            }
            out
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.extend(t.await.expect("load worker panicked"));
    }
    (answers, start.elapsed().as_secs_f64())
}

/// Run `f` over `items` with `connections` workers; results in item order.
pub async fn for_each<T, R, F, Fut>(connections: usize, items: Vec<T>, f: F) -> Vec<R>
where
    T: Send + Sync + 'static,
    R: Send + 'static,
    F: Fn(&T) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = R> + Send,
{
    let items = Arc::new(items);
    let f = Arc::new(f);
    let next = Arc::new(AtomicU64::new(0));
    let n = items.len() as u64;
    let mut tasks = Vec::new();
    for _ in 0..connections.min(items.len()).max(1) {
        let (items, f, next) = (items.clone(), f.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                out.push((i, f(&items[i as usize]).await));
            }
            out
        }));
    }
    let mut all = Vec::with_capacity(n as usize);
    for t in tasks {
        all.extend(t.await.expect("worker panicked"));
    }
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHARES: Shares = Shares {
        retry: 0.05,
        abusive: 0.01,
        confirm: 0.6,
        release: 0.2,
    };

    #[test]
    fn plan_is_deterministic_and_honours_shares() {
        let a = plan(100_000, &SHARES, 8);
        assert_eq!(a, plan(100_000, &SHARES, 8));
        assert_ne!(a, plan(100_000, &SHARES, 9));
        let share = |f: &dyn Fn(&Buyer) -> bool| a.iter().filter(|b| f(b)).count() as f64 / 1e5;
        assert!((share(&|b| b.abusive) - 0.01).abs() < 0.002);
        assert!((share(&|b| b.retries) - 0.05 * 0.99).abs() < 0.004);
        assert!((share(&|b| b.action == Action::Confirm) - 0.6).abs() < 0.01);
        assert!((share(&|b| b.action == Action::Release) - 0.2).abs() < 0.01);
        assert!((share(&|b| b.action == Action::Abandon) - 0.2).abs() < 0.01);
        assert!(a.iter().all(|b| !(b.abusive && b.retries)));
        assert!(a.iter().enumerate().all(|(i, b)| b.idx == i as u64));
    }

    #[test]
    fn zero_shares_give_plain_buyers() {
        let s = Shares {
            retry: 0.0,
            abusive: 0.0,
            confirm: 1.0,
            release: 0.0,
        };
        assert!(plan(1000, &s, 1)
            .iter()
            .all(|b| !b.retries && !b.abusive && b.action == Action::Confirm));
    }

    #[test]
    fn rng_unit_is_in_range() {
        let mut r = Rng::new(0);
        for _ in 0..10_000 {
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
        }
    }
}
