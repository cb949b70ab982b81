//! The hostile crowd (issue 17): an honest sale with the clients that try to
//! turn the shield into an amplifier running alongside it, and the figures
//! that say whether they can.
//!
//! - **Bots** reserve with a fresh Idempotency-Key and a fresh `user_id` on
//!   every request (no per-buyer bucket stops them), during the wave and
//!   after the sell-out, with `"waitlist": false` and `true`.
//! - **No-op release loopers** hold one reservation, release it, then loop
//!   re-releasing and re-confirming the dead id: if that clears the SKU's
//!   sold-out mark, every sold-out answer costs Redis work again.
//! - **Waitlist poisoners** join the waitlist first (head of the queue), read
//!   their ticket id from the 202 and send the promoter's own key format
//!   `wl:<ticket>:<attempt>` as their Idempotency-Key with another body: if
//!   the promoter's keys can be reached, the head ticket never gets promoted
//!   and the units that come back sit gated behind it.
//! - **A second storefront** replays the first one's Idempotency-Keys and
//!   reads its reservations.
//!
//! The run, in order (each step's clients stop before the next starts, so
//! each window's Redis deltas belong to it): spawn → loopers' holds (and the
//! second storefront's probe) → wave with bots → poisoners and fillers join
//! the waitlist until it is full → three windows (bots alone, loopers alone,
//! bots + loopers + poisoners) → follow-ups return units → stall check →
//! tickets settled, abandoned holds expire, remaining stock bought → the
//! waitlist refilled → the refused-request windows (memory, keys) → tickets
//! settled → books. Every 201 any client got is tracked and ends in a known
//! state, so the books (`books::check`) are exact or the run fails.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::Serialize;

use crate::books::{self, Action, BookInput, BookReport, HoldRecord};
use crate::cli::Args;
use crate::http::{sku_totals, Answer, Api};
use crate::redis::Footprint;
use crate::sale::{self, Hold, Shares, WaveConfig};
use crate::stats::{Outcome, Phase};
use crate::{procs, redis};

fn log(msg: impl AsRef<str>) {
    eprintln!("[hostile] {}", msg.as_ref());
}

// --- The targets of issue 17 ("Done when").

/// Redis commands per sold-out answer while the loopers run.
pub const TARGET_COMMANDS_PER_SOLD_OUT: f64 = 0.05;
/// Tickets still waiting while units are available, after the bound.
pub const TARGET_STALLED: u64 = 0;
/// Bytes of Redis memory a refused request may leave.
pub const TARGET_BYTES_PER_REFUSED: f64 = 1.0;
/// Refused fresh-key requests the official bytes figure averages over.
pub const OFFICIAL_REFUSED: u64 = 100_000;

/// The Idempotency-Keys the promoter uses for `ticket`'s first attempts
/// (`src/inventory/waitlist.rs`: `wl:<ticket>:<attempt>`).
pub fn poison_keys(ticket: &str) -> [String; 4] {
    std::array::from_fn(|a| format!("wl:{ticket}:{a}"))
}

/// Tickets that should have been promoted and were not: units available
/// and tickets waiting at the same time, past the bound (each ticket is for
/// one unit).
pub fn stalled(available: i64, waiting: i64) -> u64 {
    available.min(waiting).max(0) as u64
}

/// The stall that lasted through every reading of a period (none without
/// readings).
pub fn persistent_stall(readings: &[(i64, i64)]) -> u64 {
    readings
        .iter()
        .map(|&(a, w)| stalled(a, w))
        .min()
        .unwrap_or(0)
}

/// Commands Redis ran in a window: every `INFO commandstats` call count
/// (commands inside scripts included, so an upper bound on what the service
/// sent), less this tool's own `INFO` reads at the window's edges.
pub fn commands(delta: &BTreeMap<String, u64>) -> u64 {
    delta
        .iter()
        .filter(|(k, _)| k.as_str() != "info")
        .map(|(_, v)| v)
        .sum()
}

/// Script calls in a window (`EVALSHA`, `EVAL`, `FCALL` and their `_RO`s).
pub fn script_calls(delta: &BTreeMap<String, u64>) -> u64 {
    delta
        .iter()
        .filter(|(k, _)| k.starts_with("eval") || k.starts_with("fcall"))
        .map(|(_, v)| v)
        .sum()
}

pub fn per(x: f64, n: u64) -> Option<f64> {
    (n > 0).then(|| x / n as f64)
}

/// Answers of one window by outcome label.
pub fn tally<'a>(answers: impl IntoIterator<Item = &'a Answer>) -> BTreeMap<&'static str, u64> {
    tally_outcomes(answers.into_iter().map(|a| a.sample.outcome))
}

pub fn tally_outcomes(outcomes: impl IntoIterator<Item = Outcome>) -> BTreeMap<&'static str, u64> {
    let mut t = BTreeMap::new();
    for o in outcomes {
        *t.entry(o.label()).or_default() += 1;
    }
    t
}

fn count(t: &BTreeMap<&'static str, u64>, o: Outcome) -> u64 {
    t.get(o.label()).copied().unwrap_or(0)
}

/// A request refused without holding anything: sold out, waitlist full,
/// rate limited.
pub fn refused(o: Outcome) -> bool {
    matches!(
        o,
        Outcome::SoldOut | Outcome::WaitlistFull | Outcome::RateLimited
    )
}

/// A timed window of hammering: answers by outcome, Redis calls and their
/// background share.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    pub name: String,
    pub seconds: f64,
    pub answers: BTreeMap<&'static str, u64>,
    pub sold_out: u64,
    /// Requests the loopers (re-release, re-confirm) sent in the window.
    pub looper_requests: u64,
    /// Requests the poisoners sent in the window.
    pub poison_requests: u64,
    /// The loopers' answers (re-release, re-confirm of a dead reservation).
    pub looper_answers: BTreeMap<&'static str, u64>,
    /// The poisoners' answers (reserves under `wl:<ticket>:<n>`).
    pub poison_answers: BTreeMap<&'static str, u64>,
    pub redis_calls: BTreeMap<String, u64>,
    pub commands: u64,
    pub script_calls: u64,
    /// Commands per second Redis ran with no client load (sweeper,
    /// promoter), measured for 1 s right before the window.
    pub background_commands_per_sec: f64,
    pub commands_per_sold_out: Option<f64>,
    /// Less the background rate.
    pub commands_per_sold_out_net: Option<f64>,
    pub commands_per_looper_request: Option<f64>,
}

/// Redis's footprint over a window of refused fresh-key requests.
#[derive(Debug, Clone, Serialize)]
pub struct RefusedWindow {
    pub waitlist: bool,
    pub seconds: f64,
    pub answers: BTreeMap<&'static str, u64>,
    pub refused: u64,
    pub before: Footprint,
    pub after: Footprint,
    pub bytes_per_refused: Option<f64>,
    pub keys_per_refused: Option<f64>,
    pub commands_per_refused: Option<f64>,
    pub redis_calls: BTreeMap<String, u64>,
}

impl RefusedWindow {
    fn bytes(&self) -> i64 {
        self.after.used_memory as i64 - self.before.used_memory as i64
    }
    fn keys(&self) -> i64 {
        self.after.keys as i64 - self.before.keys as i64
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct StallCheck {
    /// Units returned by the follow-ups (releases that answered 200).
    pub units_returned: u64,
    pub bound_seconds: f64,
    /// The last reading.
    pub available: i64,
    pub waiting: i64,
    /// Units available beside waiting tickets in every reading of the
    /// bound's last second.
    pub stalled: u64,
    /// The poisoners' tickets' statuses at the end of the bound.
    pub poisoned_tickets: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct StorefrontProbe {
    pub keys_tried: u64,
    /// Storefront B's reserve with A's key and body answered with A's reservation.
    pub replays_of_other_storefront: u64,
    /// Storefront B's `GET /v1/reservations/{id}` of A's reservation answered 200.
    pub reads_of_other_storefront: u64,
    /// B's answers to the replays, by outcome.
    pub answers: BTreeMap<&'static str, u64>,
}

/// One figure next to its target.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub name: String,
    pub measured: Option<f64>,
    pub target: String,
    pub met: Option<bool>,
    /// Enforced figures fail the run when missed; the others are benchmarks.
    pub enforced: bool,
}

#[derive(Debug, Serialize)]
pub struct HostileReport {
    pub run_id: String,
    pub sku: String,
    pub stock: u64,
    pub shards: u32,
    pub buyers: u64,
    pub connections: usize,
    pub bot_connections: usize,
    pub loopers: usize,
    pub poisoners: usize,
    pub waitlist_capacity: u64,
    pub refused_requested: u64,
    pub hold_seconds: u64,
    /// `--serve-env` given to the spawned flashgate.
    pub serve_env: Vec<String>,
    pub wave: BTreeMap<&'static str, u64>,
    pub wave_bots: BTreeMap<&'static str, u64>,
    pub storefront_probe: StorefrontProbe,
    pub waitlist_joins: BTreeMap<&'static str, u64>,
    pub windows: Vec<Window>,
    pub stall: StallCheck,
    pub refused_windows: Vec<RefusedWindow>,
    pub books: BookReport,
    pub figures: Vec<Figure>,
    pub notes: Vec<String>,
}

impl HostileReport {
    /// The run fails on wrong books or an oversell only.
    pub fn passed(&self) -> bool {
        self.books.ok() && self.books.oversold == 0
    }
}

/// The table: each figure, its target, and whether it is met.
pub fn figures(
    loop_window: Option<&Window>,
    quiet_window: Option<&Window>,
    loopers_window: Option<&Window>,
    stall: &StallCheck,
    refused: &[RefusedWindow],
    books: &BookReport,
    probe: &StorefrontProbe,
) -> Vec<Figure> {
    let le = |v: Option<f64>, t: f64| v.map(|v| v <= t);
    let mut f = Vec::new();
    let c = loop_window.and_then(|w| w.commands_per_sold_out);
    f.push(Figure {
        name: "Redis commands per sold-out answer, loopers running".into(),
        measured: c,
        target: format!("<= {TARGET_COMMANDS_PER_SOLD_OUT}"),
        met: le(c, TARGET_COMMANDS_PER_SOLD_OUT),
        enforced: false,
    });
    f.push(Figure {
        name: "  same, less the background rate (sweeper, promoter)".into(),
        measured: loop_window.and_then(|w| w.commands_per_sold_out_net),
        target: String::new(),
        met: None,
        enforced: false,
    });
    f.push(Figure {
        name: "  script calls per sold-out answer, loopers running".into(),
        measured: loop_window.and_then(|w| per(w.script_calls as f64, w.sold_out)),
        target: String::new(),
        met: None,
        enforced: false,
    });
    f.push(Figure {
        name: "  same, without loopers (reference)".into(),
        measured: quiet_window.and_then(|w| w.commands_per_sold_out),
        target: String::new(),
        met: None,
        enforced: false,
    });
    f.push(Figure {
        name: "  Redis commands per no-op release/confirm (reference)".into(),
        measured: loopers_window.and_then(|w| w.commands_per_looper_request),
        target: String::new(),
        met: None,
        enforced: false,
    });
    f.push(Figure {
        name: "stalled waitlist tickets".into(),
        measured: Some(stall.stalled as f64),
        target: format!("{TARGET_STALLED}"),
        met: Some(stall.stalled == TARGET_STALLED),
        enforced: false,
    });
    let total_refused: u64 = refused.iter().map(|w| w.refused).sum();
    let total_bytes: i64 = refused.iter().map(RefusedWindow::bytes).sum();
    for w in refused {
        let kind = if w.waitlist {
            "waitlist: true"
        } else {
            "waitlist: false"
        };
        f.push(Figure {
            name: format!("Redis bytes per refused request ({kind})"),
            measured: w.bytes_per_refused,
            target: format!("<= {TARGET_BYTES_PER_REFUSED}"),
            met: le(w.bytes_per_refused, TARGET_BYTES_PER_REFUSED),
            enforced: false,
        });
    }
    let all = per(total_bytes as f64, total_refused);
    f.push(Figure {
        name: format!("Redis bytes per refused request (all {total_refused})"),
        measured: all,
        target: format!("<= {TARGET_BYTES_PER_REFUSED} over >= {OFFICIAL_REFUSED}"),
        // the official figure needs enough refusals to average over
        met: le(all, TARGET_BYTES_PER_REFUSED).map(|m| m && total_refused >= OFFICIAL_REFUSED),
        enforced: false,
    });
    f.push(Figure {
        name: "other storefront's reservations replayed or read".into(),
        measured: Some(
            (probe.replays_of_other_storefront + probe.reads_of_other_storefront) as f64,
        ),
        target: "0".into(),
        met: Some(probe.replays_of_other_storefront + probe.reads_of_other_storefront == 0),
        enforced: false,
    });
    f.push(Figure {
        name: "oversold".into(),
        measured: Some(books.oversold as f64),
        target: "0".into(),
        met: Some(books.oversold == 0),
        enforced: true,
    });
    f.push(Figure {
        name: "books (violations)".into(),
        measured: Some(books.violations.len() as f64),
        target: "exact (0)".into(),
        met: Some(books.ok()),
        enforced: true,
    });
    f
}

fn num(x: f64) -> String {
    if x.abs() >= 100.0 || x == x.trunc() {
        format!("{x:.0}")
    } else {
        format!("{x:.3}")
    }
}

pub fn render(r: &HostileReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "hostile crowd {}: {} units / {} shards, {} honest buyers, bots on {} connections, {} loopers, {} poisoners, waitlist capacity {}",
        r.run_id, r.stock, r.shards, r.buyers, r.bot_connections, r.loopers, r.poisoners, r.waitlist_capacity
    );
    let _ = writeln!(
        out,
        "\n{:<58} {:>12}  {:<22} met",
        "figure", "measured", "target (issue 17)"
    );
    for f in &r.figures {
        let _ = writeln!(
            out,
            "{:<58} {:>12}  {:<22} {}",
            f.name,
            f.measured.map_or_else(|| "n/a".into(), num),
            f.target,
            match (f.met, f.enforced) {
                (None, _) => "",
                (Some(true), _) => "yes",
                (Some(false), true) => "NO (fails the run)",
                (Some(false), false) => "no",
            }
        );
    }
    let _ = writeln!(
        out,
        "\nwindows (Redis calls include commands inside scripts):"
    );
    for w in &r.windows {
        let _ = writeln!(
            out,
            "  {:<26} {:>5.1} s  sold out {:>8}  loopers {:>7}  poison {:>5}  commands {:>8} (scripts {:>7}, background {:.0}/s)  per sold-out {}  net {}",
            w.name,
            w.seconds,
            w.sold_out,
            w.looper_requests,
            w.poison_requests,
            w.commands,
            w.script_calls,
            w.background_commands_per_sec,
            w.commands_per_sold_out.map_or_else(|| "n/a".into(), num),
            w.commands_per_sold_out_net.map_or_else(|| "n/a".into(), num),
        );
        let _ = writeln!(
            out,
            "  {:<26} bots' answers {:?}; loopers' {:?}; poisoners' {:?}",
            "", w.answers, w.looper_answers, w.poison_answers
        );
    }
    for w in &r.refused_windows {
        let _ = writeln!(
            out,
            "  refused, waitlist {:<5}     {:>5.1} s  refused {:>8}  memory {:+} B  keys {:+}  commands per refused {}  answers {:?}",
            w.waitlist,
            w.seconds,
            w.refused,
            w.bytes(),
            w.keys(),
            w.commands_per_refused.map_or_else(|| "n/a".into(), num),
            w.answers
        );
    }
    let s = &r.stall;
    let _ = writeln!(
        out,
        "stall check: {} units returned; {:.1} s later available {}, waiting {} → stalled {}; poisoners' tickets {:?}",
        s.units_returned, s.bound_seconds, s.available, s.waiting, s.stalled, s.poisoned_tickets
    );
    let p = &r.storefront_probe;
    let _ = writeln!(
        out,
        "second storefront: {} of A's keys replayed → {} answered with A's reservation, {} of A's reservations readable; answers {:?}",
        p.keys_tried, p.replays_of_other_storefront, p.reads_of_other_storefront, p.answers
    );
    let b = &r.books;
    let _ = writeln!(
        out,
        "books: {} distinct holds, statuses {:?}, oversold {}, API {:?}",
        b.distinct_holds, b.final_statuses, b.oversold, b.api
    );
    for v in &b.violations {
        let _ = writeln!(out, "  VIOLATION: {v}");
    }
    for n in &r.notes {
        let _ = writeln!(out, "note: {n}");
    }
    out
}

/// A hold any client got, whose API key owns it and what became of it.
#[derive(Debug, Clone)]
struct Tracked {
    hold: Hold,
    /// 0 = storefront A, 1 = storefront B.
    storefront: usize,
    /// Did its confirm/release answer 200 (None: abandoned, or not yet).
    action_ok: Option<bool>,
}

/// Everything the run's clients got that must end in a known state.
#[derive(Default)]
struct Crowd {
    holds: Mutex<Vec<Tracked>>,
    tickets: Mutex<Vec<String>>,
}

impl Crowd {
    /// Keep a 201's hold (released at the follow-ups) and a 202's ticket.
    fn keep(&self, a: &Answer, user: &str, storefront: usize) {
        if let (Outcome::Held, Some(rid)) = (a.sample.outcome, &a.reservation_id) {
            self.holds.lock().unwrap().push(Tracked {
                hold: Hold {
                    reservation_id: rid.clone(),
                    user: user.to_owned(),
                    abusive: true,
                    action: Action::Release,
                },
                storefront,
                action_ok: None,
            });
        }
        if let (Outcome::Waitlisted, Some(t)) = (a.sample.outcome, &a.ticket_id) {
            let mut tickets = self.tickets.lock().unwrap();
            if !tickets.contains(t) {
                tickets.push(t.clone());
            }
        }
    }
}

/// `connections` workers send `make(i)` until `stop` is set or `max` requests.
async fn until_stopped<F, Fut>(
    connections: usize,
    stop: Arc<AtomicBool>,
    max: u64,
    make: F,
) -> Vec<Answer>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Answer> + Send,
{
    let make = Arc::new(make);
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (make, next, stop) = (make.clone(), next.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= max {
                    break;
                }
                out.push(make(i).await);
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    all
}

/// Fresh-key, fresh-user reserves: the bots.
fn bot(
    api: &Api,
    crowd: &Arc<Crowd>,
    sku: &str,
    prefix: String,
    waitlist: bool,
) -> impl Fn(u64) -> std::pin::Pin<Box<dyn std::future::Future<Output = Answer> + Send>>
       + Send
       + Sync
       + 'static {
    let (api, crowd, sku) = (api.clone(), crowd.clone(), sku.to_owned());
    move |i| {
        let (api, crowd, sku) = (api.clone(), crowd.clone(), sku.clone());
        let (user, key) = (format!("{prefix}{i}"), format!("{prefix}-k{i}"));
        Box::pin(async move {
            let a = api
                .reserve_or_wait(Phase::SoldOut, &sku, &user, &key, waitlist)
                .await;
            crowd.keep(&a, &user, 0);
            a
        })
    }
}

/// Loopers: alternate release and confirm of their dead reservations until
/// stopped; the number of requests they sent.
fn start_loopers(
    api: &Api,
    dead: &[String],
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<Outcome>>> {
    dead.iter()
        .map(|rid| {
            let (api, rid, stop) = (api.clone(), rid.clone(), stop.clone());
            tokio::spawn(async move {
                let mut out = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let confirm = out.len() % 2 == 1;
                    out.push(api.end(Phase::Followup, &rid, confirm).await.sample.outcome);
                }
                out
            })
        })
        .collect()
}

/// Poisoners: send the promoter's keys for their tickets with another body
/// (another `user_id`), each key every 250 ms (under the per-buyer rate
/// limit: one user per key), until stopped.
fn start_poisoners(
    api: &Api,
    crowd: &Arc<Crowd>,
    sku: &str,
    tickets: &[(String, String)],
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<Outcome>>> {
    tickets
        .iter()
        .map(|(user, ticket)| {
            let (api, crowd, sku, stop) =
                (api.clone(), crowd.clone(), sku.to_owned(), stop.clone());
            let (user, keys) = (user.clone(), poison_keys(ticket));
            tokio::spawn(async move {
                let mut out = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    for (a, key) in keys.iter().enumerate() {
                        let other = format!("{user}-x{a}");
                        let ans = api.reserve(Phase::SoldOut, &sku, &other, key).await;
                        crowd.keep(&ans, &other, 0);
                        out.push(ans.sample.outcome);
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                out
            })
        })
        .collect()
}

async fn join_all(tasks: Vec<tokio::task::JoinHandle<Vec<Outcome>>>) -> Vec<Outcome> {
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    all
}

/// Commands per second Redis runs on its own (sweeper, promoter), over 1 s.
async fn background_rate(rc: &fred::prelude::Client) -> anyhow::Result<f64> {
    let a = redis::commandstats(rc).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let b = redis::commandstats(rc).await?;
    // the second INFO is counted in b, and is ours
    Ok(commands(&redis::delta(&a, &b)) as f64)
}

struct WindowSpec<'a> {
    name: &'a str,
    /// In the bots' keys and user ids (no spaces: a key is visible ASCII).
    tag: &'a str,
    bots: bool,
    loopers: bool,
    poisoners: bool,
}

#[allow(clippy::too_many_arguments)]
async fn window(
    spec: WindowSpec<'_>,
    args: &Args,
    rc: &fred::prelude::Client,
    api: &Api,
    crowd: &Arc<Crowd>,
    sku: &str,
    run_id: &str,
    dead: &[String],
    poison: &[(String, String)],
) -> anyhow::Result<Window> {
    let secs = Duration::from_secs(args.hostile_window_seconds);
    let background = background_rate(rc).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let cs0 = redis::commandstats(rc).await?;
    let t0 = Instant::now();
    let loopers = if spec.loopers {
        start_loopers(api, dead, stop.clone())
    } else {
        Vec::new()
    };
    let poisoners = if spec.poisoners {
        start_poisoners(api, crowd, sku, poison, stop.clone())
    } else {
        Vec::new()
    };
    let answers = if spec.bots {
        let make = bot(api, crowd, sku, format!("{run_id}-{}-", spec.tag), false);
        sale::hammer(args.connections, secs, args.phase_max_requests, make)
            .await
            .0
    } else {
        tokio::time::sleep(secs).await;
        Vec::new()
    };
    stop.store(true, Ordering::Relaxed);
    let looper_outcomes = join_all(loopers).await;
    let poison_outcomes = join_all(poisoners).await;
    let (looper_requests, poison_requests) =
        (looper_outcomes.len() as u64, poison_outcomes.len() as u64);
    let seconds = t0.elapsed().as_secs_f64();
    let cs1 = redis::commandstats(rc).await?;
    let calls = redis::delta(&cs0, &cs1);
    let answers = tally(&answers);
    let sold_out = count(&answers, Outcome::SoldOut);
    let commands = commands(&calls);
    let w = Window {
        name: spec.name.to_owned(),
        seconds,
        sold_out,
        looper_requests,
        poison_requests,
        looper_answers: tally_outcomes(looper_outcomes),
        poison_answers: tally_outcomes(poison_outcomes),
        script_calls: script_calls(&calls),
        commands,
        background_commands_per_sec: background,
        commands_per_sold_out: per(commands as f64, sold_out),
        commands_per_sold_out_net: per((commands as f64 - background * seconds).max(0.0), sold_out),
        commands_per_looper_request: per(commands as f64, looper_requests),
        redis_calls: calls,
        answers,
    };
    log(format!(
        "window {}: {} sold-out answers, {} looper requests, {} commands → {} per sold-out answer",
        w.name,
        w.sold_out,
        w.looper_requests,
        w.commands,
        w.commands_per_sold_out.map_or_else(|| "n/a".into(), num)
    ));
    Ok(w)
}

/// End every ticket: cancel it; one already promoted has its hold released
/// (and tracked). Returns the tickets' final statuses.
async fn settle_tickets(api: &Api, crowd: &Crowd) -> BTreeMap<String, u64> {
    let tickets = crowd.tickets.lock().unwrap().clone();
    let mut statuses = BTreeMap::new();
    // from the tail: cancelling the head first would promote the next one
    for t in tickets.iter().rev() {
        let code = api.cancel_ticket(t).await;
        let st = api.ticket(t).await;
        if let Some((_, Some(rid))) = &st {
            let known = crowd
                .holds
                .lock()
                .unwrap()
                .iter()
                .any(|h| &h.hold.reservation_id == rid);
            if !known {
                let ok = api.release(rid).await.status == 200;
                crowd.holds.lock().unwrap().push(Tracked {
                    hold: Hold {
                        reservation_id: rid.clone(),
                        user: "promoted".into(),
                        abusive: true,
                        action: Action::Release,
                    },
                    storefront: 0,
                    action_ok: Some(ok),
                });
            }
        }
        let name = st.map_or_else(|| format!("unreadable ({code})"), |(s, _)| s);
        *statuses.entry(name).or_default() += 1;
    }
    statuses
}

async fn sku_now(api: &Api, sku: &str) -> Option<(crate::books::SkuTotals, i64)> {
    let j = api.sku(sku).await.ok()?;
    let waitlist = j.get("waitlist").and_then(|w| w.as_i64()).unwrap_or(0);
    Some((sku_totals(&j)?, waitlist))
}

pub async fn run(args: Args) -> anyhow::Result<bool> {
    args.validate()?;
    anyhow::ensure!(
        args.spawn,
        "--scenario hostile starts its own Redis and flashgate: add --spawn"
    );
    let started_unix = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let run_id = format!("HC{started_unix}");
    let sku = args.sku.clone().unwrap_or_else(|| run_id.clone());
    let run_dir = args.out_dir.join(&run_id);
    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let run_dir = run_dir.canonicalize()?;
    let timeout = Duration::from_millis(args.request_timeout_ms);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    let keys = [
        format!("hostile-a-{run_id}-{nanos:x}"),
        format!("hostile-b-{run_id}-{nanos:x}"),
    ];
    let mut notes = Vec::new();

    // --- Redis and flashgate, with a small waitlist so it fills.
    let mut owned = Vec::new();
    let redis_url = match args.cluster_masters {
        Some(masters) => {
            let (nodes, url) = procs::spawn_cluster(
                &args.redis_server_bin,
                &args.redis_cli_bin,
                masters as usize,
                &run_dir,
            )
            .await?;
            owned.extend(nodes);
            url
        }
        None => {
            let (r, url) = procs::spawn_redis(&args.redis_server_bin, &run_dir).await?;
            owned.push(r);
            url
        }
    };
    let capacity = args.hostile_waitlist_capacity.to_string();
    let mut env = vec![("FLASHGATE_WAITLIST_CAPACITY", capacity.as_str())];
    // validated: FLASHGATE_NAME=VALUE; later ones win over the capacity
    env.extend(args.serve_env.iter().filter_map(|e| e.split_once('=')));
    let (fg, base) = procs::spawn_flashgate_under(
        &[],
        &env,
        &args.flashgate_bin,
        &redis_url,
        args.hold_seconds,
        &run_dir,
        &keys.join(","),
    )
    .await?;
    owned.push(fg);
    log(format!(
        "redis {redis_url}, flashgate {base} (hold {} s, waitlist capacity {capacity}, two storefronts)",
        args.hold_seconds
    ));
    let rc = redis::connect(&redis_url).await?;
    let epoch = Instant::now();
    let a = |conns| Api::new(&base, conns, timeout, epoch).with_api_key(Some(&keys[0]));
    let setup = a(8)?;
    let other = Api::new(&base, 4, timeout, epoch).with_api_key(Some(&keys[1]))?;
    setup.wait_healthy(Duration::from_secs(10)).await?;
    let out = procs::preload(
        &args.flashgate_bin,
        &redis_url,
        &sku,
        args.stock,
        args.shards,
        args.max_per_user,
    )
    .await?;
    log(format!("preloaded {sku}: {}", out.trim()));
    let crowd = Arc::new(Crowd::default());

    // --- Loopers get their holds; storefront B tries A's keys; the loopers
    // release (their ids are now dead).
    let mut dead = Vec::new();
    let mut probe = StorefrontProbe::default();
    let mut probe_answers = Vec::new();
    for i in 0..args.hostile_loopers {
        let (user, key) = (format!("looper{i}"), format!("{run_id}-looper-{i}"));
        let ans = setup.reserve(Phase::Wave, &sku, &user, &key).await;
        let Some(rid) = ans
            .reservation_id
            .clone()
            .filter(|_| ans.sample.outcome == Outcome::Held)
        else {
            anyhow::bail!(
                "looper {i} got no hold: {:?} ({})",
                ans.sample.outcome,
                ans.status
            );
        };
        // storefront B: the same key and body, then a read of A's hold
        let b = other.reserve(Phase::Wave, &sku, &user, &key).await;
        probe.keys_tried += 1;
        if b.sample.outcome == Outcome::Replayed && b.reservation_id.as_deref() == Some(&rid) {
            probe.replays_of_other_storefront += 1;
        } else {
            crowd.keep(&b, &user, 1);
        }
        if other.reservation_status(&rid).await.is_some() {
            probe.reads_of_other_storefront += 1;
        }
        probe_answers.push(b);
        let ok = setup.release(&rid).await.status == 200;
        crowd.holds.lock().unwrap().push(Tracked {
            hold: Hold {
                reservation_id: rid.clone(),
                user,
                abusive: true,
                action: Action::Release,
            },
            storefront: 0,
            action_ok: Some(ok),
        });
        dead.push(rid);
    }
    probe.answers = tally(&probe_answers);
    // B's own holds go back now, before the wave
    let b_holds: Vec<(usize, String)> = crowd
        .holds
        .lock()
        .unwrap()
        .iter()
        .enumerate()
        .filter(|(_, h)| h.storefront == 1)
        .map(|(i, h)| (i, h.hold.reservation_id.clone()))
        .collect();
    for (i, rid) in b_holds {
        let ok = other.release(&rid).await.status == 200;
        crowd.holds.lock().unwrap()[i].action_ok = Some(ok);
    }
    log(format!(
        "{} loopers hold-and-release done; storefront B: {} replays, {} reads of A's reservations",
        dead.len(),
        probe.replays_of_other_storefront,
        probe.reads_of_other_storefront
    ));

    // --- The wave, with bots alongside until it ends.
    let shares = Shares {
        retry: args.retry_share,
        abusive: 0.0,
        confirm: args.confirm_share,
        release: args.release_share,
    };
    let buyers = Arc::new(sale::plan(args.buyers, &shares, args.seed));
    let api = a(args.connections)?;
    let bots_api = a(args.connections.max(args.hostile_bot_connections))?;
    sale::hammer(
        args.connections,
        Duration::from_secs(5),
        args.connections as u64,
        {
            let api = api.clone();
            move |_| {
                let api = api.clone();
                async move { api.healthz().await }
            }
        },
    )
    .await;
    let cfg = WaveConfig {
        sku: sku.clone(),
        run_id: run_id.clone(),
        connections: args.connections,
        ramp: Duration::from_millis(args.ramp_ms),
        abusive_requests: 1,
        max_duration: Duration::from_secs(args.wave_max_seconds),
    };
    let stop_bots = Arc::new(AtomicBool::new(false));
    let bots_task = tokio::spawn(until_stopped(
        args.hostile_bot_connections,
        stop_bots.clone(),
        args.phase_max_requests,
        bot(&bots_api, &crowd, &sku, format!("{run_id}-wavebot-"), false),
    ));
    let monitor = a(1)?;
    let wave = sale::run_wave(&api, &monitor, buyers, &cfg).await;
    stop_bots.store(true, Ordering::Relaxed);
    let bot_answers = bots_task.await.unwrap_or_default();
    let wave_tally = tally_outcomes(wave.samples.iter().map(|s| s.outcome));
    let bots_tally = tally(&bot_answers);
    let holds_in_wave = {
        let mut ids: Vec<&str> = wave
            .holds
            .iter()
            .map(|h| h.reservation_id.as_str())
            .chain(
                bot_answers
                    .iter()
                    .filter(|a| a.sample.outcome == Outcome::Held)
                    .filter_map(|a| a.reservation_id.as_deref()),
            )
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids.len() as u64
    };
    log(format!(
        "wave: honest {wave_tally:?}; bots {bots_tally:?}; {holds_in_wave} holds"
    ));
    if holds_in_wave < args.stock {
        notes.push(format!(
            "the wave did not sell out ({holds_in_wave} of {} units held): sold-out windows also met stock",
            args.stock
        ));
    }
    let honest: Vec<Hold> = wave.holds;

    // --- Poisoners join first (head of the queue), then fillers until full.
    let mut joins = Vec::new();
    let mut poison = Vec::new();
    for i in 0..args.hostile_poisoners {
        let (user, key) = (format!("poisoner{i}"), format!("{run_id}-poisoner-{i}"));
        let ans = setup
            .reserve_or_wait(Phase::SoldOut, &sku, &user, &key, true)
            .await;
        crowd.keep(&ans, &user, 0);
        if let Some(t) = ans.ticket_id.clone() {
            poison.push((user, t));
        }
        joins.push(ans);
    }
    let fill = |tag: &'static str| {
        let (setup, crowd, sku, run_id, cap) = (
            setup.clone(),
            crowd.clone(),
            sku.clone(),
            run_id.clone(),
            args.hostile_waitlist_capacity,
        );
        async move {
            let mut out = Vec::new();
            for i in 0..cap + 16 {
                let (user, key) = (format!("{tag}{i}"), format!("{run_id}-{tag}-{i}"));
                let ans = setup
                    .reserve_or_wait(Phase::SoldOut, &sku, &user, &key, true)
                    .await;
                crowd.keep(&ans, &user, 0);
                let full = ans.sample.outcome == Outcome::WaitlistFull;
                out.push(ans);
                if full {
                    break;
                }
            }
            out
        }
    };
    joins.extend(fill("filler").await);
    let join_tally = tally(&joins);
    log(format!(
        "waitlist: {} poisoners' tickets; joins {join_tally:?}",
        poison.len()
    ));
    if poison.len() < args.hostile_poisoners {
        notes.push(format!(
            "only {} of {} poisoners got a ticket (the SKU was not sold out?)",
            poison.len(),
            args.hostile_poisoners
        ));
    }

    // --- The three windows.
    let mut windows = Vec::new();
    for spec in [
        WindowSpec {
            name: "bots alone",
            tag: "quiet",
            bots: true,
            loopers: false,
            poisoners: false,
        },
        WindowSpec {
            name: "loopers alone",
            tag: "loop",
            bots: false,
            loopers: true,
            poisoners: false,
        },
        WindowSpec {
            name: "bots + loopers + poison",
            tag: "hostile",
            bots: true,
            loopers: true,
            poisoners: true,
        },
    ] {
        windows.push(
            window(
                spec, &args, &rc, &bots_api, &crowd, &sku, &run_id, &dead, &poison,
            )
            .await?,
        );
    }

    // --- Follow-ups: honest holders confirm/release; the bots' holds go back.
    let mut tracked: Vec<Tracked> = honest
        .into_iter()
        .map(|h| Tracked {
            hold: h,
            storefront: 0,
            action_ok: None,
        })
        .collect();
    tracked.append(&mut crowd.holds.lock().unwrap());
    let todo: Vec<(usize, Hold)> = tracked
        .iter()
        .enumerate()
        .filter(|(_, t)| t.action_ok.is_none() && t.hold.action != Action::Abandon)
        .map(|(i, t)| (i, t.hold.clone()))
        .collect();
    let results = sale::for_each(args.connections, todo, {
        let api = api.clone();
        move |(i, h): &(usize, Hold)| {
            let (api, h, i) = (api.clone(), h.clone(), *i);
            async move {
                let a = api
                    .end(
                        Phase::Followup,
                        &h.reservation_id,
                        h.action == Action::Confirm,
                    )
                    .await;
                (i, a.status == 200, h.action == Action::Release)
            }
        }
    })
    .await;
    let mut returned = 0;
    for (i, ok, release) in results {
        tracked[i].action_ok = Some(ok);
        returned += u64::from(ok && release);
    }
    let returns_done = Instant::now();
    log(format!("follow-ups: {returned} units returned"));

    // --- Stall check: within the bound, every returned unit should go to a waiter.
    let bound = Duration::from_secs(args.hostile_stall_seconds);
    let mut stall = StallCheck {
        units_returned: returned,
        ..StallCheck::default()
    };
    // readings of (available, waiting) in the bound's last second: a unit
    // that came back a moment ago (an expiring hold) and is being promoted
    // is not a stall; one that sits beside waiters for a whole second is
    let mut last_second: Vec<(Instant, i64, i64)> = Vec::new();
    loop {
        if let Some((t, waiting)) = sku_now(&setup, &sku).await {
            last_second.push((Instant::now(), t.available, waiting));
        }
        if returns_done.elapsed() >= bound {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let edge = Instant::now() - Duration::from_secs(1);
    let readings: Vec<(i64, i64)> = last_second
        .iter()
        .filter(|(at, _, _)| *at >= edge)
        .map(|&(_, a, w)| (a, w))
        .collect();
    stall.bound_seconds = returns_done.elapsed().as_secs_f64();
    stall.stalled = persistent_stall(&readings);
    if let Some(&(a, w)) = readings.last() {
        (stall.available, stall.waiting) = (a, w);
    }
    for (_, t) in &poison {
        let st = setup
            .ticket(t)
            .await
            .map_or_else(|| "unreadable".to_owned(), |(s, _)| s);
        *stall.poisoned_tickets.entry(st).or_default() += 1;
    }
    log(format!(
        "stall check: available {}, waiting {} → {} stalled",
        stall.available, stall.waiting, stall.stalled
    ));

    // --- Settle: tickets ended, abandoned holds expire, the rest bought.
    crowd.holds.lock().unwrap().append(&mut tracked);
    settle_tickets(&setup, &crowd).await;
    let deadline = returns_done
        + Duration::from_secs(args.expiry_wait_seconds.unwrap_or(args.hold_seconds + 15));
    log("waiting for abandoned holds to expire");
    while Instant::now() < deadline {
        if sku_now(&setup, &sku)
            .await
            .is_some_and(|(t, _)| t.held == 0)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // the units that came back: bought and confirmed, so the SKU is sold out
    let mop_deadline = Instant::now() + Duration::from_secs(20);
    let mut i = 0u64;
    while Instant::now() < mop_deadline {
        match sku_now(&setup, &sku).await {
            Some((t, _)) if t.available == 0 => break,
            // gated for waiters until the promoter lifts the gates
            Some((_, waiting)) if waiting > 0 => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            _ => {}
        }
        let (user, key) = (format!("mop{i}"), format!("{run_id}-mop-{i}"));
        i += 1;
        let ans = setup.reserve(Phase::Followup, &sku, &user, &key).await;
        match (ans.sample.outcome, ans.reservation_id) {
            (Outcome::Held, Some(rid)) => {
                let ok = setup.confirm(&rid).await.status == 200;
                crowd.holds.lock().unwrap().push(Tracked {
                    hold: Hold {
                        reservation_id: rid,
                        user,
                        abusive: false,
                        action: Action::Confirm,
                    },
                    storefront: 0,
                    action_ok: Some(ok),
                });
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }

    // --- Refused requests: the waitlist full again, then fresh-key bots.
    crowd.tickets.lock().unwrap().clear();
    let refill = tally(&fill("refill").await);
    log(format!("waitlist refilled: {refill:?}"));
    let mut refused_windows = Vec::new();
    for waitlist in [false, true] {
        let n = args.hostile_refused / 2 + u64::from(waitlist) * (args.hostile_refused % 2);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = redis::footprint(&rc).await?;
        let cs0 = redis::commandstats(&rc).await?;
        let t0 = Instant::now();
        let tag = if waitlist { "wlbot" } else { "sobot" };
        let (answers, _) = sale::hammer(
            args.connections,
            Duration::from_secs(args.hostile_refused_max_seconds),
            n,
            bot(
                &bots_api,
                &crowd,
                &sku,
                format!("{run_id}-{tag}-"),
                waitlist,
            ),
        )
        .await;
        let seconds = t0.elapsed().as_secs_f64();
        let cs1 = redis::commandstats(&rc).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = redis::footprint(&rc).await?;
        let refused_n = answers.iter().filter(|a| refused(a.sample.outcome)).count() as u64;
        let calls = redis::delta(&cs0, &cs1);
        let w = RefusedWindow {
            waitlist,
            seconds,
            answers: tally(&answers),
            refused: refused_n,
            before,
            after,
            bytes_per_refused: per(
                after.used_memory as f64 - before.used_memory as f64,
                refused_n,
            ),
            keys_per_refused: per(after.keys as f64 - before.keys as f64, refused_n),
            commands_per_refused: per(commands(&calls) as f64, refused_n),
            redis_calls: calls,
        };
        log(format!(
            "refused (waitlist {waitlist}): {refused_n} in {seconds:.1} s, {:+} B, {:+} keys",
            w.bytes(),
            w.keys()
        ));
        if refused_n < n {
            notes.push(format!(
                "refused window (waitlist {waitlist}): {refused_n} of {n} requests refused within {} s",
                args.hostile_refused_max_seconds
            ));
        }
        refused_windows.push(w);
    }
    if args.hostile_refused < OFFICIAL_REFUSED {
        notes.push(format!(
            "{} refused requests: the official bytes figure averages over >= {OFFICIAL_REFUSED} (--hostile-refused {OFFICIAL_REFUSED})",
            args.hostile_refused
        ));
    }

    // --- Books: every ticket ended, every hold in a known state.
    settle_tickets(&setup, &crowd).await;
    let settle_deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < settle_deadline {
        if sku_now(&setup, &sku)
            .await
            .is_some_and(|(t, _)| t.held == 0)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let all: Vec<Tracked> = std::mem::take(&mut *crowd.holds.lock().unwrap());
    let mut records = Vec::with_capacity(all.len());
    for t in &all {
        let owner = if t.storefront == 1 { &other } else { &setup };
        records.push(HoldRecord {
            reservation_id: t.hold.reservation_id.clone(),
            action: t.hold.action,
            action_ok: t.action_ok,
            final_status: owner.reservation_status(&t.hold.reservation_id).await,
        });
    }
    let api_totals = sku_now(&setup, &sku).await.map(|(t, _)| t);
    let shards = redis::read_shards(&rc, &sku, args.shards).await.ok();
    let book_report = books::check(&BookInput {
        expected_initial: Some(args.stock as i64),
        redis_shards: shards.as_deref(),
        api: api_totals,
        holds: &records,
        holds_in_wave,
    });

    for mut p in owned {
        if let Err(e) = p.check_alive() {
            notes.push(format!("{e:#}"));
        }
        p.stop().await;
    }

    for (name, t) in windows
        .iter()
        .map(|w| (w.name.as_str(), &w.answers))
        .chain(refused_windows.iter().map(|w| ("refused", &w.answers)))
    {
        let odd: u64 = [
            Outcome::ClientError,
            Outcome::ServerError,
            Outcome::Conflict,
            Outcome::Timeout,
            Outcome::Transport,
            Outcome::Unavailable,
        ]
        .into_iter()
        .map(|o| count(t, o))
        .sum();
        if odd > 0 {
            notes.push(format!(
                "window {name}: {odd} answers were errors, not refusals ({t:?}): its figures are not comparable"
            ));
        }
    }
    let figures = figures(
        windows.iter().find(|w| w.loopers_and_bots()),
        windows.iter().find(|w| w.name == "bots alone"),
        windows.iter().find(|w| w.name == "loopers alone"),
        &stall,
        &refused_windows,
        &book_report,
        &probe,
    );
    notes.push(
        "commands are INFO commandstats calls (commands inside scripts counted too) over every master, \
         this tool's INFO reads left out; the sweeper's and promoter's background work is included \
         (the net figure subtracts the rate measured for 1 s before each window)"
            .into(),
    );
    let report = HostileReport {
        run_id: run_id.clone(),
        sku,
        stock: args.stock,
        shards: args.shards,
        buyers: args.buyers,
        connections: args.connections,
        bot_connections: args.hostile_bot_connections,
        loopers: args.hostile_loopers,
        poisoners: args.hostile_poisoners,
        waitlist_capacity: args.hostile_waitlist_capacity,
        refused_requested: args.hostile_refused,
        hold_seconds: args.hold_seconds,
        serve_env: args.serve_env.clone(),
        wave: wave_tally,
        wave_bots: bots_tally,
        storefront_probe: probe,
        waitlist_joins: join_tally,
        windows,
        stall,
        refused_windows,
        books: book_report,
        figures,
        notes,
    };
    let json_path = run_dir.join("hostile.json");
    std::fs::write(&json_path, serde_json::to_vec_pretty(&report)?)?;
    let table = render(&report);
    std::fs::write(run_dir.join("hostile.txt"), &table)?;
    println!("{table}");
    println!(
        "files: {}, {}",
        json_path.display(),
        run_dir.join("hostile.txt").display()
    );
    Ok(report.passed())
}

impl Window {
    fn loopers_and_bots(&self) -> bool {
        self.looper_requests > 0 && self.sold_out > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole scenario, tiny, against a real redis-server and a built
    /// flashgate (`FLASHGATE_BIN`, default `target/release/flashgate` of the
    /// workspace). Ignored by default: it needs that binary built first.
    /// `cargo build --release -p flashgate && cargo nextest run -p
    /// flashgate-loadtest --run-ignored all hostile_scenario_smoke`
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs a built flashgate binary and redis-server"]
    async fn hostile_scenario_smoke() {
        use clap::Parser;
        let bin = std::env::var("FLASHGATE_BIN").unwrap_or_else(|_| {
            concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/flashgate").into()
        });
        assert!(
            std::path::Path::new(&bin).exists(),
            "build flashgate first (or set FLASHGATE_BIN): {bin}"
        );
        let out = tempfile::tempdir().unwrap();
        let lua = concat!(env!("CARGO_MANIFEST_DIR"), "/../lua");
        let args = Args::try_parse_from([
            "flashgate-loadtest",
            "--spawn",
            "--scenario",
            "hostile",
            "--flashgate-bin",
            &bin,
            "--lua-dir",
            lua,
            "--out-dir",
            out.path().to_str().unwrap(),
            "--buyers",
            "300",
            "--stock",
            "40",
            "--shards",
            "2",
            "--connections",
            "16",
            "--hostile-bot-connections",
            "4",
            "--hostile-loopers",
            "2",
            "--hostile-waitlist-capacity",
            "10",
            "--hostile-window-seconds",
            "1",
            "--hostile-stall-seconds",
            "2",
            "--hostile-refused",
            "200",
            // outlives the wave and the windows: honest confirms succeed
            "--hold-seconds",
            "12",
        ])
        .unwrap();
        assert!(run(args).await.unwrap(), "books or oversell failed");
        // one run directory with the report, every figure of the table in it
        let dir = std::fs::read_dir(out.path())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("hostile.json")).unwrap()).unwrap();
        assert_eq!(r["books"]["oversold"], 0);
        assert!(r["books"]["confirmed_ok"].as_u64().unwrap() > 0);
        assert_eq!(r["windows"].as_array().unwrap().len(), 3);
        let refused: u64 = r["refused_windows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["refused"].as_u64().unwrap())
            .sum();
        assert_eq!(refused, 200, "{}", r["refused_windows"]);
        let loops = &r["windows"][2];
        assert!(loops["looper_requests"].as_u64().unwrap() > 0);
        assert!(loops["sold_out"].as_u64().unwrap() > 0);
        assert!(r["figures"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["name"].is_string() && f["target"].is_string()));
    }

    #[test]
    fn poison_keys_are_the_promoters_first_four_attempts() {
        let k = poison_keys("S.w.abc");
        assert_eq!(
            k,
            [
                "wl:S.w.abc:0",
                "wl:S.w.abc:1",
                "wl:S.w.abc:2",
                "wl:S.w.abc:3"
            ]
        );
    }

    #[test]
    fn a_ticket_is_stalled_only_while_units_wait_with_it() {
        assert_eq!(stalled(3, 10), 3);
        assert_eq!(stalled(10, 2), 2);
        assert_eq!(stalled(0, 10), 0);
        assert_eq!(stalled(5, 0), 0);
        assert_eq!(stalled(-1, 4), 0);
        // a unit promoted within the period was not stalled
        assert_eq!(persistent_stall(&[(1, 5), (0, 4), (0, 4)]), 0);
        assert_eq!(persistent_stall(&[(3, 9), (4, 9), (3, 8)]), 3);
        assert_eq!(persistent_stall(&[]), 0);
    }

    #[test]
    fn commands_leave_out_our_info_and_count_scripts() {
        let d: BTreeMap<String, u64> = [
            ("evalsha".to_string(), 70),
            ("smembers".to_string(), 10),
            ("hget".to_string(), 20),
            ("info".to_string(), 3),
        ]
        .into();
        assert_eq!(commands(&d), 100);
        assert_eq!(script_calls(&d), 70);
        assert_eq!(per(100.0, 0), None);
        assert_eq!(per(100.0, 4), Some(25.0));
    }

    #[test]
    fn refusals_are_sold_out_waitlist_full_and_rate_limited() {
        for o in [
            Outcome::SoldOut,
            Outcome::WaitlistFull,
            Outcome::RateLimited,
        ] {
            assert!(refused(o), "{o:?}");
        }
        for o in [
            Outcome::Held,
            Outcome::Waitlisted,
            Outcome::Replayed,
            Outcome::Timeout,
        ] {
            assert!(!refused(o), "{o:?}");
        }
        assert_eq!(
            Outcome::classify(true, 409, Some("waitlist_full")),
            Outcome::WaitlistFull
        );
        assert_eq!(Outcome::classify(true, 202, None), Outcome::Waitlisted);
    }

    fn window(sold_out: u64, commands: u64, loopers: u64) -> Window {
        Window {
            name: "w".into(),
            seconds: 1.0,
            answers: BTreeMap::new(),
            sold_out,
            looper_requests: loopers,
            poison_requests: 0,
            looper_answers: BTreeMap::new(),
            poison_answers: BTreeMap::new(),
            redis_calls: BTreeMap::new(),
            commands,
            script_calls: 0,
            background_commands_per_sec: 0.0,
            commands_per_sold_out: per(commands as f64, sold_out),
            commands_per_sold_out_net: None,
            commands_per_looper_request: None,
        }
    }

    fn refused_window(waitlist: bool, refused: u64, bytes: u64) -> RefusedWindow {
        RefusedWindow {
            waitlist,
            seconds: 1.0,
            answers: BTreeMap::new(),
            refused,
            before: Footprint {
                used_memory: 1_000_000,
                keys: 10,
            },
            after: Footprint {
                used_memory: 1_000_000 + bytes,
                keys: 10,
            },
            bytes_per_refused: per(bytes as f64, refused),
            keys_per_refused: Some(0.0),
            commands_per_refused: None,
            redis_calls: BTreeMap::new(),
        }
    }

    #[test]
    fn the_table_puts_each_figure_next_to_its_target_and_only_the_books_fail_the_run() {
        let loops = window(1000, 6800, 500);
        let quiet = window(1000, 10, 0);
        let stall = StallCheck {
            available: 4,
            waiting: 30,
            stalled: 4,
            ..StallCheck::default()
        };
        let refused = [
            refused_window(false, 50_000, 1_600_000),
            refused_window(true, 50_000, 0),
        ];
        let books = BookReport::default();
        let probe = StorefrontProbe::default();
        let f = figures(
            Some(&loops),
            Some(&quiet),
            None,
            &stall,
            &refused,
            &books,
            &probe,
        );
        let get = |name: &str| f.iter().find(|x| x.name.starts_with(name)).unwrap();
        let c = get("Redis commands per sold-out answer, loopers");
        assert_eq!((c.measured, c.met), (Some(6.8), Some(false)));
        assert_eq!(get("stalled").met, Some(false));
        let b = get("Redis bytes per refused request (waitlist: false)");
        assert_eq!((b.measured, b.met), (Some(32.0), Some(false)));
        assert_eq!(
            get("Redis bytes per refused request (waitlist: true)").met,
            Some(true)
        );
        let all = get("Redis bytes per refused request (all 100000)");
        assert_eq!(all.measured, Some(16.0));
        assert_eq!(get("books").met, Some(true));
        assert!(f.iter().filter(|x| x.enforced).all(|x| x.met == Some(true)));

        let report = HostileReport {
            run_id: "HC1".into(),
            sku: "S".into(),
            stock: 10,
            shards: 2,
            buyers: 100,
            connections: 8,
            bot_connections: 8,
            loopers: 2,
            poisoners: 1,
            waitlist_capacity: 10,
            refused_requested: 100_000,
            hold_seconds: 20,
            serve_env: vec![],
            wave: BTreeMap::new(),
            wave_bots: BTreeMap::new(),
            storefront_probe: probe,
            waitlist_joins: BTreeMap::new(),
            windows: vec![quiet, loops],
            stall,
            refused_windows: refused.to_vec(),
            books,
            figures: f,
            notes: vec![],
        };
        // missed benchmarks are reported, not enforced
        assert!(report.passed());
        let table = render(&report);
        assert!(table.contains("<= 0.05"), "{table}");
        assert!(table.contains("stalled waitlist tickets"), "{table}");

        // a wrong book fails the run, and says so in the table
        let mut bad = report;
        bad.books.violations.push("OVERSOLD by 1 units".into());
        bad.books.oversold = 1;
        bad.figures = figures(
            None,
            None,
            None,
            &bad.stall,
            &bad.refused_windows,
            &bad.books,
            &bad.storefront_probe,
        );
        assert!(!bad.passed());
        assert!(render(&bad).contains("NO (fails the run)"));
    }

    #[test]
    fn a_small_run_cannot_meet_the_official_bytes_figure() {
        let refused = [refused_window(false, 500, 0), refused_window(true, 500, 0)];
        let f = figures(
            None,
            None,
            None,
            &StallCheck::default(),
            &refused,
            &BookReport::default(),
            &StorefrontProbe::default(),
        );
        let all = f.iter().find(|x| x.name.contains("(all 1000)")).unwrap();
        assert_eq!((all.measured, all.met), (Some(0.0), Some(false)));
    }
}
