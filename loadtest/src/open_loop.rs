//! Open-loop load (`--scenario open-loop`, `make bench-open`): requests sent
//! on a fixed schedule, whether or not earlier ones were answered, and each
//! request's latency measured from the time the schedule meant to send it
//! (coordinated omission corrected: a stall delays the sends behind it, and
//! their wait counts). A closed loop, as the rest of the load test runs,
//! sends the next request only when one is answered, so a stall hides the
//! requests that would have arrived during it.
//!
//! The run measures the closed-loop capacity of two answers first — new
//! holds (a SKU with more stock than the run can take) and sold-out answers
//! (a SKU with none) — then offers 25 %, 50 % and 75 % of each capacity
//! open loop and reports p50/p99/p99.9 (`--rate R` offers R instead and
//! skips the capacity runs).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::cli::Args;
use crate::http::{loopback_base, Answer, Api};
use crate::stats::{new_histogram, Outcome, Phase};
use crate::{procs, sale};

fn log(msg: impl AsRef<str>) {
    eprintln!("[loadtest] {}", msg.as_ref());
}

/// Most requests in flight at once: past it the schedule waits (and the
/// wait counts in the latency of the requests behind it).
pub const MAX_IN_FLIGHT: usize = 4_096;

/// The pacer's shortest sleep: a request goes at most this late for the
/// pacer's sake, and at 30,000 requests/s it wakes 4,000 times a second,
/// not 30,000 (each wake costs the cores the service runs on).
const PACE_QUANTUM: Duration = Duration::from_micros(250);

/// Latency percentiles in ms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Tail {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

pub fn tail_of(h: &Histogram<u64>) -> Tail {
    if h.is_empty() {
        return Tail::default();
    }
    let ms = |us: u64| us as f64 / 1000.0;
    Tail {
        p50_ms: ms(h.value_at_quantile(0.50)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        p999_ms: ms(h.value_at_quantile(0.999)),
        max_ms: ms(h.max()),
    }
}

/// One open-loop run at one rate.
#[derive(Debug, Clone, Serialize)]
pub struct OpenRun {
    pub kind: &'static str,
    /// Share of the closed-loop capacity offered (None with `--rate`).
    pub share: Option<f64>,
    pub offered_per_sec: f64,
    pub answered_per_sec: f64,
    pub requests: u64,
    /// Answers of the kind measured (holds, or sold-out answers).
    pub expected: u64,
    pub outcomes: BTreeMap<&'static str, u64>,
    /// From the intended send time to the answer: what a user waits.
    pub latency: Tail,
    /// From the actual send to the answer: the service's part alone (what a
    /// closed loop reports).
    pub service: Tail,
    /// How late the schedule sent, at worst and at p99 (timer, a full
    /// in-flight window, the generator's own CPU).
    pub send_lag_p99_ms: f64,
    pub send_lag_max_ms: f64,
}

/// When request `i` of a schedule at `rate` per second is meant to go,
/// after `start`.
pub fn intended(start: Instant, rate: f64, i: u64) -> Instant {
    start + Duration::from_secs_f64(i as f64 / rate)
}

/// Send `make(i)` at `rate` per second for `duration` (each request at
/// [`intended`], never before; every request that is due when the pacer
/// wakes goes at once), at most [`MAX_IN_FLIGHT`] in flight.
/// Returns each answer with its intended send time (µs since `epoch`, the
/// epoch of the [`Api`] that sends them).
///
/// The schedule is kept by a thread of its own ([`pace`]), not by the
/// runtime's timer: tokio's timer wakes on whole milliseconds, so every
/// request went out up to ~1 ms after its time and that wait counted in
/// every latency (send lag p99 ≈ 2 ms even at 25 % of capacity;
/// bench/notes/2026-12-05-open-loop-connections.md).
///
/// With [`Pacing::Spin`] a task on the runtime keeps it instead (`--pin`).
pub async fn schedule<F, Fut>(
    rate: f64,
    duration: Duration,
    epoch: Instant,
    pacing: Pacing,
    make: F,
) -> (Vec<(u64, Answer)>, f64)
where
    F: Fn(u64) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Answer> + Send + 'static,
{
    let n = (rate * duration.as_secs_f64()).round().max(1.0) as u64;
    let start = Instant::now() + Duration::from_millis(5);
    let mut sends = Sends::new(start, rate, n, epoch);
    if let Pacing::Spin = pacing {
        let task = tokio::spawn(spin(sends, make));
        let out = task.await.unwrap_or_default();
        return (out, start.elapsed().as_secs_f64());
    }
    let (due, mut due_rx) = tokio::sync::mpsc::unbounded_channel();
    let pacer = std::thread::spawn(move || pace(start, rate, n, &due));
    while let Some(i) = due_rx.recv().await {
        if !sends.send(i, make(i)).await {
            break;
        }
        sends.collect();
    }
    let _ = pacer.join();
    (sends.finish().await, start.elapsed().as_secs_f64())
}

/// How [`schedule`] keeps time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pacing {
    /// A thread of its own, sleeping with the OS timer ([`pace`]): it costs
    /// the machine little, but on one CPU it, the thread that sends and the
    /// runtime's worker take turns, and each turn is a thread switch.
    Thread,
    /// A task on the runtime's worker that reads the clock, sends what is
    /// due and yields, over and over ([`spin`]): no thread switch, no
    /// timer, but its CPU never idles. For `--pin`, where the generator has
    /// a CPU of its own.
    Spin,
}

/// The requests of one [`schedule`] in flight and answered: each sent as its
/// own task, at most [`MAX_IN_FLIGHT`] at once, and each answer kept with
/// its intended send time (µs since `epoch`).
struct Sends {
    start: Instant,
    rate: f64,
    n: u64,
    epoch: Instant,
    slots: Arc<tokio::sync::Semaphore>,
    running: tokio::task::JoinSet<(u64, Answer)>,
    out: Vec<(u64, Answer)>,
}

impl Sends {
    fn new(start: Instant, rate: f64, n: u64, epoch: Instant) -> Sends {
        Sends {
            start,
            rate,
            n,
            epoch,
            slots: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
            running: tokio::task::JoinSet::new(),
            out: Vec::with_capacity(n as usize),
        }
    }

    /// Send request `i`, `fut` (once a place in flight is free); false when
    /// no more can be sent.
    async fn send<Fut>(&mut self, i: u64, fut: Fut) -> bool
    where
        Fut: std::future::Future<Output = Answer> + Send + 'static,
    {
        let Ok(slot) = self.slots.clone().acquire_owned().await else {
            return false;
        };
        let at_us = intended(self.start, self.rate, i)
            .saturating_duration_since(self.epoch)
            .as_micros() as u64;
        self.running.spawn(async move {
            let a = fut.await;
            drop(slot);
            (at_us, a)
        });
        true
    }

    /// Keep the answers that have come.
    fn collect(&mut self) {
        while let Some(done) = self.running.try_join_next() {
            if let Ok(r) = done {
                self.out.push(r);
            }
        }
    }

    /// Every answer, once the last has come.
    async fn finish(mut self) -> Vec<(u64, Answer)> {
        while let Some(done) = self.running.join_next().await {
            if let Ok(r) = done {
                self.out.push(r);
            }
        }
        self.out
    }
}

/// [`Pacing::Spin`]: every request of `sends` sent at its [`intended`] time
/// by this task, which yields between looks at the clock (the answers are
/// read in between, on the same thread).
async fn spin<F, Fut>(mut sends: Sends, make: F) -> Vec<(u64, Answer)>
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = Answer> + Send + 'static,
{
    let mut i = 0;
    while i < sends.n {
        let now = Instant::now();
        while i < sends.n && intended(sends.start, sends.rate, i) <= now {
            if !sends.send(i, make(i)).await {
                return sends.finish().await;
            }
            i += 1;
        }
        sends.collect();
        tokio::task::yield_now().await;
    }
    sends.finish().await
}

/// Hand the requests `0..n` to `due` at their [`intended`] times: sleep
/// until the next one is due (the OS timer: tens of µs late, not a whole
/// millisecond), but at least [`PACE_QUANTUM`], then hand over every
/// request that is due by then.
fn pace(start: Instant, rate: f64, n: u64, due: &tokio::sync::mpsc::UnboundedSender<u64>) {
    let mut i = 0;
    while i < n {
        let now = Instant::now();
        let at = intended(start, rate, i);
        if at > now {
            std::thread::sleep((at - now).max(PACE_QUANTUM));
            continue;
        }
        while i < n && intended(start, rate, i) <= now {
            if due.send(i).is_err() {
                return;
            }
            i += 1;
        }
    }
}

/// The figures of one open-loop run.
pub fn summarize(
    kind: &'static str,
    expected: Outcome,
    share: Option<f64>,
    rate: f64,
    answers: &[(u64, Answer)],
    secs: f64,
) -> OpenRun {
    let (mut latency, mut service, mut lag) = (new_histogram(), new_histogram(), new_histogram());
    let mut outcomes = BTreeMap::new();
    for (at_us, a) in answers {
        let s = a.sample;
        latency.saturating_record(s.recv_us.saturating_sub(*at_us).max(1));
        service.saturating_record(s.latency_us().max(1));
        lag.saturating_record(s.sent_us.saturating_sub(*at_us).max(1));
        *outcomes.entry(s.outcome.label()).or_insert(0) += 1;
    }
    let requests = answers.len() as u64;
    OpenRun {
        kind,
        share,
        offered_per_sec: rate,
        answered_per_sec: if secs > 0.0 {
            requests as f64 / secs
        } else {
            0.0
        },
        requests,
        expected: outcomes.get(expected.label()).copied().unwrap_or(0),
        outcomes,
        latency: tail_of(&latency),
        service: tail_of(&service),
        send_lag_p99_ms: lag.value_at_quantile(0.99) as f64 / 1000.0,
        send_lag_max_ms: lag.max() as f64 / 1000.0,
    }
}

/// The two answers measured.
#[derive(Clone, Copy)]
enum Kind {
    Hold,
    SoldOut,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Hold => "hold",
            Kind::SoldOut => "sold_out",
        }
    }

    fn outcome(self) -> Outcome {
        match self {
            Kind::Hold => Outcome::Held,
            Kind::SoldOut => Outcome::SoldOut,
        }
    }
}

/// Request `i` of a kind: one unit, a fresh key and buyer.
fn request(
    api: &Api,
    kind: Kind,
    sku: &str,
    tag: &str,
    i: u64,
) -> impl std::future::Future<Output = Answer> + Send + 'static {
    let (api, sku) = (api.clone(), sku.to_owned());
    let (user, key) = (format!("u{i}"), format!("{tag}-{i}"));
    let phase = match kind {
        Kind::Hold => Phase::Capacity,
        Kind::SoldOut => Phase::SoldOut,
    };
    async move { api.reserve(phase, &sku, &user, &key).await }
}

/// Closed-loop capacity of one kind.
#[derive(Debug, Clone, Serialize)]
pub struct Capacity {
    pub kind: &'static str,
    pub connections: usize,
    pub per_sec: f64,
    pub expected_share: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct OpenReport {
    pub capacity: Vec<Capacity>,
    pub runs: Vec<OpenRun>,
    pub seconds_per_run: u64,
    pub target_p99_ms: f64,
    /// `--pin`: which CPUs ran what.
    pub pinned: Option<String>,
}

/// A CPU list as Linux writes it (`0-3,8,10-11`), in order; None when
/// malformed.
fn cpu_list(s: &str) -> Option<Vec<usize>> {
    let mut out = Vec::new();
    for part in s.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
                if a > b || b - a > 4096 {
                    return None;
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().ok()?),
        }
    }
    Some(out)
}

/// `--pin`: the last CPU for the generator, the others for the service.
struct Pins {
    generator: String,
    service: String,
    service_cpus: usize,
}

impl Pins {
    /// The CPUs this process may run on (`Cpus_allowed_list` of
    /// /proc/self/status): the last for the generator, the rest for the
    /// service.
    fn plan() -> anyhow::Result<Pins> {
        let status = std::fs::read_to_string("/proc/self/status")
            .context("--pin reads /proc/self/status (Linux only)")?;
        let cpus = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .and_then(|l| cpu_list(l.trim()))
            .context("no Cpus_allowed_list in /proc/self/status")?;
        anyhow::ensure!(
            cpus.len() >= 2,
            "--pin needs 2 CPUs or more (this process may use {cpus:?})"
        );
        let which = std::process::Command::new("taskset").arg("-V").output();
        anyhow::ensure!(
            which.is_ok_and(|o| o.status.success()),
            "--pin needs taskset (Debian: apt-get install util-linux)"
        );
        let (last, rest) = cpus.split_last().context("no CPU")?;
        let service: Vec<String> = rest.iter().map(usize::to_string).collect();
        Ok(Pins {
            generator: last.to_string(),
            service: service.join(","),
            service_cpus: rest.len(),
        })
    }

    /// Every thread of process `pid` onto `cpus` (threads it starts later
    /// inherit it).
    fn pin(&self, pid: u32, cpus: &str) -> anyhow::Result<()> {
        let out = std::process::Command::new("taskset")
            .args(["-a", "-p", "-c", cpus, &pid.to_string()])
            .output()
            .context("running taskset")?;
        anyhow::ensure!(
            out.status.success(),
            "taskset -a -p -c {cpus} {pid}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }

    fn describe(&self) -> String {
        format!(
            "pinned: the generator on CPU {}, redis-server and flashgate ({} tokio worker{}) on CPU {}",
            self.generator,
            self.service_cpus,
            if self.service_cpus == 1 { "" } else { "s" },
            self.service
        )
    }
}

/// The target of issue 23: p99 ≤ 5 ms at 50 % of capacity.
pub const TARGET_P99_MS: f64 = 5.0;

pub fn render(r: &OpenReport) -> String {
    let mut s = String::new();
    if let Some(p) = &r.pinned {
        s.push_str(p);
        s.push('\n');
    }
    s.push_str("closed-loop capacity (the 100 % below):\n");
    for c in &r.capacity {
        s.push_str(&format!(
            "  {:<9} {:>9.0}/s on {} connections ({:.1} % of answers were the kind measured)\n",
            c.kind,
            c.per_sec,
            c.connections,
            c.expected_share * 100.0
        ));
    }
    s.push_str(&format!(
        "open loop, {} s per rate; latency from the intended send time (service time from the actual send):\n",
        r.seconds_per_run
    ));
    s.push_str(
        "  kind      share  offered/s answered/s   p50 ms   p99 ms p99.9 ms   max ms | service p50/p99/p99.9 ms | send lag p99/max ms | verdict\n",
    );
    for o in &r.runs {
        let share = o
            .share
            .map_or("rate".to_string(), |f| format!("{:.0} %", f * 100.0));
        let verdict = match o.share {
            Some(f) if (f - 0.5).abs() < 1e-9 => {
                if o.latency.p99_ms <= r.target_p99_ms {
                    format!("p99 <= {} ms: met", r.target_p99_ms)
                } else if o.answered_per_sec < 0.99 * o.offered_per_sec {
                    // (answers came slower than the schedule sent: this
                    // window measured a backlog, the generator's or the
                    // service's; the service time tells which)
                    format!(
                        "p99 <= {} ms: NOT met (a backlog: {:.1} % answered at the offered rate)",
                        r.target_p99_ms,
                        100.0 * o.answered_per_sec / o.offered_per_sec.max(1e-9)
                    )
                } else {
                    format!("p99 <= {} ms: NOT met", r.target_p99_ms)
                }
            }
            _ => String::new(),
        };
        s.push_str(&format!(
            "  {:<9} {:>5} {:>10.0} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} | {:>6.2} {:>6.2} {:>7.2}  | {:>8.2} {:>8.2} | {}\n",
            o.kind,
            share,
            o.offered_per_sec,
            o.answered_per_sec,
            o.latency.p50_ms,
            o.latency.p99_ms,
            o.latency.p999_ms,
            o.latency.max_ms,
            o.service.p50_ms,
            o.service.p99_ms,
            o.service.p999_ms,
            o.send_lag_p99_ms,
            o.send_lag_max_ms,
            verdict
        ));
        let other: Vec<String> = o
            .outcomes
            .iter()
            .filter(|(k, _)| {
                **k != Kind::Hold.outcome().label() && **k != Kind::SoldOut.outcome().label()
            })
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        if !other.is_empty() {
            s.push_str(&format!(
                "            other answers: {}\n",
                other.join(", ")
            ));
        }
    }
    s
}

/// `--scenario open-loop`.
pub async fn run(args: Args) -> anyhow::Result<bool> {
    args.validate()?;
    let unix = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let run_id = format!("OL{unix}");
    let run_dir = args.out_dir.join(&run_id);
    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let run_dir = run_dir.canonicalize()?;
    let timeout = Duration::from_millis(args.request_timeout_ms);
    let api_key = if args.spawn {
        Some(format!(
            "loadtest-{run_id}-{:x}",
            SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos()
        ))
    } else {
        args.api_key.clone()
    };
    let mut owned = Vec::new();
    let pins = if args.pin { Some(Pins::plan()?) } else { None };
    let (base, redis_url) = if args.spawn {
        let (r, url) = procs::spawn_redis(&args.redis_server_bin, &run_dir).await?;
        if let (Some(p), Some(pid)) = (&pins, r.pid()) {
            p.pin(pid, &p.service)?;
        }
        owned.push(r);
        // holds outlive the run: none comes back to stock while it measures
        let wrapper = pins.as_ref().map_or(Vec::new(), |p| {
            vec!["taskset".to_string(), "-c".to_string(), p.service.clone()]
        });
        let workers = pins.as_ref().map(|p| p.service_cpus.to_string());
        let env: Vec<(&str, &str)> = workers
            .iter()
            .map(|w| ("TOKIO_WORKER_THREADS", w.as_str()))
            .collect();
        let (fg, base) = procs::spawn_flashgate_under(
            &wrapper,
            &env,
            &args.flashgate_bin,
            &url,
            args.hold_seconds,
            &run_dir,
            api_key.as_deref().unwrap_or_default(),
        )
        .await?;
        owned.push(fg);
        if let Some(p) = &pins {
            p.pin(std::process::id(), &p.generator)?;
            log(p.describe());
        }
        log(format!("redis-server at {url}, flashgate at {base}"));
        (base, url)
    } else {
        (loopback_base(&args.target)?, args.redis_url.clone())
    };
    crate::redis::loopback_redis(&redis_url)?;
    let (open, empty) = (format!("{run_id}-open"), format!("{run_id}-empty"));
    // more stock than the run can take, and none at all
    procs::preload(
        &args.flashgate_bin,
        &redis_url,
        &open,
        1_000_000_000,
        args.shards,
        None,
    )
    .await?;
    procs::preload(
        &args.flashgate_bin,
        &redis_url,
        &empty,
        0,
        args.shards,
        None,
    )
    .await?;
    let epoch = Instant::now();
    // Every connection the schedule opens stays open for the next request:
    // with an idle pool of only `--connections`, each moment of more than
    // that in flight opened connections that were closed right after, and
    // the connects and closes took the 2 cores from the service (a run at
    // 50 % spent more time in the kernel than in user space, and its p99
    // went from 3.8 to 96 ms; bench/notes/2026-12-05-open-loop-connections.md)
    let api = Api::new(&base, MAX_IN_FLIGHT.max(args.connections), timeout, epoch)
        .with_api_key(api_key.as_deref())?;
    api.wait_healthy(Duration::from_secs(10)).await?;
    // the empty SKU's first walk makes the sold-out mark
    let _ = api
        .reserve(Phase::SoldOut, &empty, "first", &format!("{run_id}-first"))
        .await;

    let secs = args.open_seconds;
    let mut capacity = Vec::new();
    let mut runs = Vec::new();
    for kind in [Kind::Hold, Kind::SoldOut] {
        let sku = match kind {
            Kind::Hold => open.clone(),
            Kind::SoldOut => empty.clone(),
        };
        let rates: Vec<(Option<f64>, f64)> = match args.rate {
            Some(r) => vec![(None, r)],
            None => {
                let (answers, took) = sale::hammer(
                    args.connections,
                    Duration::from_secs(secs),
                    args.phase_max_requests,
                    {
                        let (api, sku) = (api.clone(), sku.clone());
                        let tag = format!("{run_id}-c{}", kind.name());
                        move |i| request(&api, kind, &sku, &tag, i)
                    },
                )
                .await;
                let got = answers
                    .iter()
                    .filter(|a| a.sample.outcome == kind.outcome())
                    .count() as f64;
                let per_sec = got / took.max(1e-9);
                log(format!(
                    "{}: closed-loop capacity {per_sec:.0}/s on {} connections",
                    kind.name(),
                    args.connections
                ));
                capacity.push(Capacity {
                    kind: kind.name(),
                    connections: args.connections,
                    per_sec,
                    expected_share: got / (answers.len().max(1) as f64),
                });
                [0.25, 0.5, 0.75]
                    .iter()
                    .map(|f| (Some(*f), per_sec * f))
                    .collect()
            }
        };
        for (share, rate) in rates {
            if rate < 1.0 {
                continue;
            }
            let tag = format!(
                "{run_id}-o{}{}",
                kind.name(),
                share.map_or(0, |f| (f * 100.0) as u32)
            );
            let pacing = if pins.is_some() {
                Pacing::Spin
            } else {
                Pacing::Thread
            };
            let (answers, took) = schedule(rate, Duration::from_secs(secs), epoch, pacing, {
                let (api, sku) = (api.clone(), sku.clone());
                move |i| request(&api, kind, &sku, &tag, i)
            })
            .await;
            let o = summarize(kind.name(), kind.outcome(), share, rate, &answers, took);
            log(format!(
                "{} at {:.0}/s: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms",
                o.kind, rate, o.latency.p50_ms, o.latency.p99_ms, o.latency.p999_ms
            ));
            runs.push(o);
        }
    }
    let report = OpenReport {
        capacity,
        runs,
        seconds_per_run: secs,
        target_p99_ms: TARGET_P99_MS,
        pinned: pins.as_ref().map(Pins::describe),
    };
    std::fs::write(
        run_dir.join("open_loop.json"),
        serde_json::to_vec_pretty(&report)?,
    )?;
    println!("{}", render(&report));
    println!("results: {}", run_dir.display());
    for o in owned {
        o.stop().await;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_is_fixed_by_the_rate_alone() {
        let t0 = Instant::now();
        assert_eq!(intended(t0, 1000.0, 0), t0);
        assert_eq!(intended(t0, 1000.0, 250), t0 + Duration::from_millis(250));
        assert_eq!(intended(t0, 4.0, 3), t0 + Duration::from_millis(750));
    }

    #[test]
    fn the_pacer_hands_over_every_request_in_order_never_early() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let start = Instant::now() + Duration::from_millis(2);
        pace(start, 20_000.0, 200, &tx);
        let mut got = Vec::new();
        while let Ok(i) = rx.try_recv() {
            got.push(i);
        }
        assert_eq!(got, (0..200).collect::<Vec<u64>>());
        // the last request was due 9.95 ms after the start: not handed early
        assert!(Instant::now() >= intended(start, 20_000.0, 199));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn the_spinning_pacer_sends_every_request_once_and_never_early() {
        let epoch = Instant::now();
        let make = move |i: u64| async move {
            let now_us = epoch.elapsed().as_micros() as u64;
            Answer {
                sample: crate::stats::Sample {
                    phase: Phase::SoldOut,
                    outcome: Outcome::SoldOut,
                    sent_us: now_us,
                    recv_us: now_us,
                },
                status: 409,
                // (the request's number, to check each was sent once)
                reservation_id: Some(i.to_string()),
                ticket_id: None,
            }
        };
        let (answers, _) = schedule(
            20_000.0,
            Duration::from_millis(20),
            epoch,
            Pacing::Spin,
            make,
        )
        .await;
        let mut seen: Vec<u64> = answers
            .iter()
            .filter_map(|(_, a)| a.reservation_id.as_deref()?.parse().ok())
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..400).collect::<Vec<u64>>());
        for (at_us, a) in &answers {
            assert!(a.sample.sent_us >= *at_us, "sent before its time");
        }
    }

    #[test]
    fn cpu_lists_read_as_linux_writes_them() {
        assert_eq!(cpu_list("0-1"), Some(vec![0, 1]));
        assert_eq!(cpu_list("0-2,5,7-8"), Some(vec![0, 1, 2, 5, 7, 8]));
        assert_eq!(cpu_list("3"), Some(vec![3]));
        for bad in ["", "a", "2-1", "0-", "0,,1"] {
            assert_eq!(cpu_list(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_verdict_at_half_capacity_names_a_backlog() {
        let run = |answered: f64, p99: f64| OpenRun {
            kind: "sold_out",
            share: Some(0.5),
            offered_per_sec: 50_000.0,
            answered_per_sec: answered,
            requests: 0,
            expected: 0,
            outcomes: BTreeMap::new(),
            latency: Tail {
                p99_ms: p99,
                ..Tail::default()
            },
            service: Tail::default(),
            send_lag_p99_ms: 0.0,
            send_lag_max_ms: 0.0,
        };
        let report = |r: OpenRun| OpenReport {
            capacity: vec![],
            runs: vec![r],
            seconds_per_run: 5,
            target_p99_ms: TARGET_P99_MS,
            pinned: Some("pinned: test".into()),
        };
        let met = render(&report(run(50_000.0, 3.0)));
        assert!(met.contains("p99 <= 5 ms: met") && met.starts_with("pinned: test"));
        let late = render(&report(run(50_000.0, 9.0)));
        assert!(
            late.contains("NOT met") && !late.contains("backlog"),
            "{late}"
        );
        let backlog = render(&report(run(45_000.0, 900.0)));
        assert!(
            backlog.contains("NOT met (a backlog: 90.0 % answered"),
            "{backlog}"
        );
    }

    #[test]
    fn latency_counts_from_the_intended_send_not_the_actual_one() {
        let answer = |sent_us, recv_us| Answer {
            sample: crate::stats::Sample {
                phase: Phase::SoldOut,
                outcome: Outcome::SoldOut,
                sent_us,
                recv_us,
            },
            status: 409,
            reservation_id: None,
            ticket_id: None,
        };
        // a stall: meant at 0, 1000 and 2000 µs, all sent at 10,000 µs and
        // answered 500 µs later
        let answers: Vec<(u64, Answer)> =
            (0..3).map(|i| (i * 1000, answer(10_000, 10_500))).collect();
        let o = summarize(
            "sold_out",
            Outcome::SoldOut,
            Some(0.5),
            1000.0,
            &answers,
            1.0,
        );
        assert_eq!(o.expected, 3);
        assert!((o.service.max_ms - 0.5).abs() < 0.01, "{:?}", o.service);
        // the first request waited 10.5 ms from its intended send
        assert!((o.latency.max_ms - 10.5).abs() < 0.05, "{:?}", o.latency);
        assert!((o.latency.p50_ms - 9.5).abs() < 0.05, "{:?}", o.latency);
        assert!((o.send_lag_max_ms - 10.0).abs() < 0.05);
    }
}
