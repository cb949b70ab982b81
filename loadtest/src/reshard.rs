//! `--scenario reshard` (issue 24): a sale whose SKU gains shards and stock
//! mid-way, with retries and waitlist replays throughout, checked end to end.
//!
//! The sale: a SKU preloaded with `--shards` shards; a first wave of buyers
//! takes about half the stock; a forced `flashgate preload` raises the shard
//! count to `--reshard-to` and adds `--reshard-add` units while those holds
//! are outstanding; every first-wave key is resent at once (inside the
//! instances' 2 s layout cache) and again after it; a second wave sells out,
//! some of its buyers with `waitlist: true`, and late joiners queue and
//! resend their join. Holders confirm, release or abandon; returned units
//! promote tickets, whose holders resend their join after the promotion and
//! then confirm or release.
//!
//! It fails (exit 2) on: books not exact (`books::check`, with the stock the
//! preloads set), an oversell, more than one reservation or ticket for one
//! Idempotency-Key, a unit stuck behind the waitlist gates (units available,
//! nobody waiting, a new buyer told `sold_out`), or a `flashgate reconcile
//! --sku S` whose verdict is not `clean`. Redis, PostgreSQL (the ledger) and
//! flashgate are its own (`--spawn`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::Serialize;

use crate::books::{self, Action, BookInput, BookReport, HoldRecord};
use crate::cli::Args;
use crate::http::{sku_totals, Answer, Api};
use crate::procs;
use crate::redis;
use crate::sale::{self, Rng, Shares};
use crate::stats::{Outcome, Phase};

/// What one Idempotency-Key was answered, over all its requests.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KeyAnswers {
    /// Distinct reservation ids of its 201s and 200 replays.
    pub reservations: BTreeSet<String>,
    /// Distinct ticket ids of its 202s and 200 replays.
    pub tickets: BTreeSet<String>,
    /// Its first answer was `409 sold_out`.
    pub first_sold_out: bool,
    pub requests: u64,
}

/// Every key's answers; the one-verdict-per-key check is pure.
#[derive(Debug, Default)]
pub struct KeyBook {
    pub keys: BTreeMap<String, KeyAnswers>,
}

impl KeyBook {
    pub fn note(&mut self, key: &str, a: &Answer) {
        let k = self.keys.entry(key.to_owned()).or_default();
        if k.requests == 0 && a.sample.outcome == Outcome::SoldOut {
            k.first_sold_out = true;
        }
        k.requests += 1;
        if let Some(r) = &a.reservation_id {
            k.reservations.insert(r.clone());
        }
        if let Some(t) = &a.ticket_id {
            k.tickets.insert(t.clone());
        }
    }

    /// A key with more than one reservation, more than one ticket, or both a
    /// reservation and a ticket: each was handed two verdicts.
    pub fn violations(&self) -> Vec<String> {
        let mut v = Vec::new();
        for (key, k) in &self.keys {
            if k.reservations.len() > 1 {
                v.push(format!(
                    "key {key}: {} reservations {:?}",
                    k.reservations.len(),
                    k.reservations
                ));
            }
            if k.tickets.len() > 1 {
                v.push(format!(
                    "key {key}: {} tickets {:?}",
                    k.tickets.len(),
                    k.tickets
                ));
            }
            if !k.reservations.is_empty() && !k.tickets.is_empty() {
                v.push(format!(
                    "key {key}: both a reservation {:?} and a ticket {:?}",
                    k.reservations, k.tickets
                ));
            }
        }
        v
    }

    /// Keys first answered `sold_out` that later got a hold: allowed only for
    /// a sold-out answered from memory (docs/resharding.md), so a figure,
    /// not a failure.
    pub fn sold_out_then_held(&self) -> u64 {
        self.keys
            .values()
            .filter(|k| k.first_sold_out && !k.reservations.is_empty())
            .count() as u64
    }

    pub fn max_reservations_per_key(&self) -> u64 {
        self.keys
            .values()
            .map(|k| k.reservations.len() as u64)
            .max()
            .unwrap_or(0)
    }
}

/// A unit stuck behind the gates: units available, nobody waiting, and a
/// new buyer (no waitlist) still told `sold_out`.
pub fn stuck_behind_gates(available: i64, waiting: i64, probe: Outcome) -> bool {
    available > 0 && waiting == 0 && probe == Outcome::SoldOut
}

/// Units that sat available beside waiting tickets in every reading (the
/// smallest such count; 0 if any reading had no units or nobody waiting).
pub fn stalled_throughout(readings: &[(i64, i64)]) -> i64 {
    if readings.is_empty() {
        return 0;
    }
    readings
        .iter()
        .map(|&(available, waiting)| if waiting > 0 { available.max(0) } else { 0 })
        .min()
        .unwrap_or(0)
}

/// New holds (201) among `answers` when `waiting` tickets were queued
/// before them: each took a unit the queue's head was owed.
pub fn queue_jumps(waiting: i64, answers: &[Answer]) -> u64 {
    if waiting <= 0 {
        return 0;
    }
    answers
        .iter()
        .filter(|a| a.sample.outcome == Outcome::Held)
        .count() as u64
}

/// The total stock the forced preload sets: what is available now plus the
/// units added (holds and sales stay on the books, `lua/preload.lua`).
pub fn reshard_stock(available_now: i64, add: u64) -> u64 {
    available_now.max(0) as u64 + add
}

/// The verdict of `flashgate reconcile --format json`, from its stdout.
pub fn reconcile_verdict(stdout: &str) -> Result<String, String> {
    let j: serde_json::Value = serde_json::from_str(stdout.trim())
        .map_err(|e| format!("reconcile printed no JSON report ({e}): {stdout:?}"))?;
    j.get("verdict")
        .and_then(|v| v.as_str())
        .map(str::to_owned)
        .ok_or_else(|| format!("reconcile report without a verdict: {stdout:?}"))
}

#[derive(Debug, Serialize)]
pub struct ReconcileRun {
    pub exit_code: Option<i32>,
    pub verdict: Option<String>,
    pub report: Option<serde_json::Value>,
    pub stderr: String,
}

#[derive(Debug, Default, Serialize)]
pub struct ReshardReport {
    pub run_id: String,
    pub sku: String,
    pub stock: u64,
    pub shards_before: u32,
    pub shards_after: u32,
    pub available_at_reshard: i64,
    pub stock_set_at_reshard: u64,
    pub expected_initial: i64,
    pub answers: BTreeMap<String, BTreeMap<&'static str, u64>>,
    pub keys: u64,
    pub max_reservations_per_key: u64,
    pub sold_out_then_held: u64,
    pub tickets: u64,
    pub ticket_statuses: BTreeMap<String, u64>,
    pub promoted: u64,
    /// (available, waiting) read over `--reshard-stall-seconds` after the
    /// cache window, before wave 3.
    pub readings_before_wave3: Vec<(i64, i64)>,
    pub stalled_beside_tickets: i64,
    pub queue_jumps: u64,
    pub stuck_probes: u64,
    pub probe_holds: u64,
    pub books: BookReport,
    pub reconcile: Option<ReconcileRun>,
    pub violations: Vec<String>,
    pub notes: Vec<String>,
}

fn log(msg: impl AsRef<str>) {
    eprintln!("[reshard] {}", msg.as_ref());
}

/// Holds and keys gathered by concurrent buyers.
#[derive(Default)]
struct Crowd {
    keys: Mutex<KeyBook>,
    /// (reservation id, action, action ok)
    holds: Mutex<Vec<(String, Action, Option<bool>)>>,
    /// (ticket id, key, user)
    tickets: Mutex<Vec<(String, String, String)>>,
}

impl Crowd {
    fn keep(&self, key: &str, user: &str, a: &Answer, action: Action) {
        self.keys.lock().unwrap().note(key, a);
        if a.sample.outcome == Outcome::Held {
            if let Some(r) = &a.reservation_id {
                self.holds.lock().unwrap().push((r.clone(), action, None));
            }
        }
        if a.sample.outcome == Outcome::Waitlisted && a.status == 202 {
            if let Some(t) = &a.ticket_id {
                self.tickets
                    .lock()
                    .unwrap()
                    .push((t.clone(), key.to_owned(), user.to_owned()));
            }
        }
    }
}

/// One buyer of a wave: key, user, waitlist, resend right after the answer.
#[derive(Clone)]
struct Buyer {
    key: String,
    user: String,
    waitlist: bool,
    retry: bool,
    action: Action,
}

async fn send_all(
    api: &Api,
    crowd: &Arc<Crowd>,
    sku: &str,
    buyers: Vec<Buyer>,
    connections: usize,
    phase: Phase,
) -> Vec<Answer> {
    let (api, crowd, sku) = (api.clone(), crowd.clone(), sku.to_owned());
    let answers = sale::for_each(connections, buyers, move |b: &Buyer| {
        let (api, crowd, sku, b) = (api.clone(), crowd.clone(), sku.clone(), b.clone());
        async move {
            let mut out = Vec::new();
            for _ in 0..if b.retry { 2 } else { 1 } {
                let a = api
                    .reserve_or_wait(phase, &sku, &b.user, &b.key, b.waitlist)
                    .await;
                crowd.keep(&b.key, &b.user, &a, b.action);
                out.push(a);
            }
            out
        }
    })
    .await;
    answers.into_iter().flatten().collect()
}

fn tally(answers: &[Answer]) -> BTreeMap<&'static str, u64> {
    let mut t = BTreeMap::new();
    for a in answers {
        *t.entry(a.sample.outcome.label()).or_default() += 1;
    }
    t
}

async fn sku_now(api: &Api, sku: &str) -> Option<(books::SkuTotals, i64)> {
    let j = api.sku(sku).await.ok()?;
    let waitlist = j.get("waitlist").and_then(|w| w.as_i64()).unwrap_or(0);
    Some((sku_totals(&j)?, waitlist))
}

pub async fn run(args: Args) -> anyhow::Result<bool> {
    args.validate()?;
    let started_unix = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let run_id = format!("RS{started_unix}");
    let sku = args.sku.clone().unwrap_or_else(|| run_id.clone());
    let run_dir = args.out_dir.join(&run_id);
    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let run_dir = run_dir.canonicalize()?;
    let timeout = Duration::from_millis(args.request_timeout_ms);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    let api_key = format!("reshard-{run_id}-{nanos:x}");
    let mut report = ReshardReport {
        run_id: run_id.clone(),
        sku: sku.clone(),
        stock: args.stock,
        shards_before: args.shards,
        shards_after: args.reshard_to,
        ..ReshardReport::default()
    };

    // --- Redis, PostgreSQL (the ledger) and flashgate with its ledger writer.
    let (redis_proc, redis_url) = procs::spawn_redis(&args.redis_server_bin, &run_dir).await?;
    let pg = procs::spawn_postgres().await?;
    let pg_url = pg.url();
    let env = [
        ("FLASHGATE_POSTGRES_URL", pg_url.as_str()),
        ("FLASHGATE_WAITLIST_CAPACITY", "100000"),
    ];
    let (mut fg, base) = procs::spawn_flashgate_under(
        &[],
        &env,
        &args.flashgate_bin,
        &redis_url,
        args.hold_seconds,
        &run_dir,
        &api_key,
    )
    .await?;
    log(format!(
        "redis {redis_url}, postgres 127.0.0.1 (ledger), flashgate {base} (hold {} s)",
        args.hold_seconds
    ));
    let rc = redis::connect(&redis_url).await?;
    let epoch = Instant::now();
    let api = Api::new(&base, args.connections, timeout, epoch).with_api_key(Some(&api_key))?;
    api.wait_healthy(Duration::from_secs(10)).await?;
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
    let shares = Shares {
        retry: args.retry_share,
        abusive: 0.0,
        confirm: args.confirm_share,
        release: args.release_share,
    };
    let mut rng = Rng::new(args.seed);
    let mut buyer = |wave: &str, i: u64, waitlist: bool| Buyer {
        key: format!("{run_id}-{wave}-{i}"),
        user: format!("{wave}-u{i}"),
        waitlist,
        retry: rng.unit() < shares.retry,
        action: sale::pick_action(&mut rng, &shares),
    };

    // --- Wave 1: about half the stock, nobody sold out yet.
    let first_n = (args.stock / 2).max(1);
    let first: Vec<Buyer> = (0..first_n).map(|i| buyer("w1", i, false)).collect();
    let a1 = send_all(
        &api,
        &crowd,
        &sku,
        first.clone(),
        args.connections,
        Phase::Wave,
    )
    .await;
    report.answers.insert("wave1".into(), tally(&a1));
    log(format!("wave 1: {:?}", tally(&a1)));

    // --- The reshard: more shards, more units, holds outstanding.
    let (now, _) = sku_now(&api, &sku)
        .await
        .context("reading the SKU before the reshard")?;
    report.available_at_reshard = now.available;
    report.stock_set_at_reshard = reshard_stock(now.available, args.reshard_add);
    let out = procs::preload(
        &args.flashgate_bin,
        &redis_url,
        &sku,
        report.stock_set_at_reshard,
        args.reshard_to,
        args.max_per_user,
    )
    .await?;
    report.expected_initial =
        args.stock as i64 + report.stock_set_at_reshard as i64 - now.available;
    log(format!(
        "resharded {sku} to {} shards, {} available (was {}): {}",
        args.reshard_to,
        report.stock_set_at_reshard,
        now.available,
        out.trim()
    ));

    // --- Replays of wave 1 inside the layout cache window, with wave 2
    // starting beside them; then the replays again once every cache expired.
    let replays: Vec<Buyer> = first
        .iter()
        .map(|b| Buyer {
            retry: false,
            ..b.clone()
        })
        .collect();
    let second_n = args.buyers.saturating_sub(first_n).max(1);
    let wl_every = (second_n / args.reshard_waitlisters.max(1)).max(1);
    let second: Vec<Buyer> = (0..second_n)
        .map(|i| buyer("w2", i, i.is_multiple_of(wl_every)))
        .collect();
    let (r1, a2) = tokio::join!(
        send_all(
            &api,
            &crowd,
            &sku,
            replays.clone(),
            args.connections / 2 + 1,
            Phase::Wave
        ),
        send_all(&api, &crowd, &sku, second, args.connections, Phase::Wave),
    );
    report
        .answers
        .insert("wave1_replays_in_cache_window".into(), tally(&r1));
    report.answers.insert("wave2".into(), tally(&a2));
    log(format!("wave 1 replays (cache window): {:?}", tally(&r1)));
    log(format!("wave 2: {:?}", tally(&a2)));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r2 = send_all(&api, &crowd, &sku, replays, args.connections, Phase::Wave).await;
    report
        .answers
        .insert("wave1_replays_after_cache".into(), tally(&r2));
    log(format!("wave 1 replays (after cache): {:?}", tally(&r2)));
    for a in r1.iter().chain(&r2) {
        if a.sample.outcome == Outcome::Held {
            report.violations.push(format!(
                "a replay of a wave-1 key got a new hold {:?}",
                a.reservation_id
            ));
        }
    }

    // --- Tickets beside units: wave 2's tickets were taken while its keys
    // walked the old shards; once every cache knows the new ones, a ticket
    // still waiting beside available units after a grace period is stalled.
    let mut readings = Vec::new();
    for _ in 0..=args.reshard_stall_seconds * 5 {
        if let Some((t, waiting)) = sku_now(&api, &sku).await {
            readings.push((t.available, waiting));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    report.readings_before_wave3 = readings.clone();
    report.stalled_beside_tickets = stalled_throughout(&readings);
    if report.stalled_beside_tickets > 0 {
        report.notes.push(format!(
            "{} units stayed available for {} s while tickets waited (readings {:?})",
            report.stalled_beside_tickets,
            args.reshard_stall_seconds,
            readings.last()
        ));
    }
    let waiting_before_wave3 = readings.last().map_or(0, |r| r.1);

    // --- Wave 3: fresh buyers once every cache knows the new shards: they
    // sell out what is left; with tickets waiting, each hold jumped the queue.
    let third: Vec<Buyer> = (0..args.reshard_add + 20)
        .map(|i| buyer("w3", i, false))
        .collect();
    let a3 = send_all(&api, &crowd, &sku, third, args.connections, Phase::Wave).await;
    report.answers.insert("wave3".into(), tally(&a3));
    report.queue_jumps = queue_jumps(waiting_before_wave3, &a3);
    log(format!(
        "wave 3: {:?} ({} tickets waiting before it)",
        tally(&a3),
        waiting_before_wave3
    ));
    if report.queue_jumps > 0 {
        report.notes.push(format!(
            "{} new buyers got a hold while {waiting_before_wave3} tickets waited (queue jumped)",
            report.queue_jumps
        ));
    }

    // --- Late joiners: the SKU is sold out; they queue and resend the join.
    let late: Vec<Buyer> = (0..args.reshard_waitlisters)
        .map(|i| Buyer {
            retry: true,
            ..buyer("late", i, true)
        })
        .collect();
    let a4 = send_all(&api, &crowd, &sku, late, args.connections, Phase::SoldOut).await;
    report.answers.insert("late_joins".into(), tally(&a4));
    log(format!("late joins (each sent twice): {:?}", tally(&a4)));
    let holds_in_wave = {
        let mut ids: Vec<String> = crowd
            .holds
            .lock()
            .unwrap()
            .iter()
            .map(|h| h.0.clone())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids.len() as u64
    };

    // --- Follow-ups: confirm / release / abandon.
    let todo: Vec<(usize, String, Action)> = crowd
        .holds
        .lock()
        .unwrap()
        .iter()
        .enumerate()
        .filter(|(_, h)| h.1 != Action::Abandon)
        .map(|(i, h)| (i, h.0.clone(), h.1))
        .collect();
    let results = sale::for_each(args.connections, todo, {
        let api = api.clone();
        move |(i, rid, action): &(usize, String, Action)| {
            let (api, rid, action, i) = (api.clone(), rid.clone(), *action, *i);
            async move {
                let a = api
                    .end(Phase::Followup, &rid, action == Action::Confirm)
                    .await;
                (i, a.status == 200)
            }
        }
    })
    .await;
    for (i, ok) in results {
        crowd.holds.lock().unwrap()[i].2 = Some(ok);
    }
    log("follow-ups sent; serving the waitlist");

    // --- The waitlist: promoted holders resend their join, then confirm
    // (even) or release (odd); until nobody waits, or no unit can come back.
    let tickets = crowd.tickets.lock().unwrap().clone();
    report.tickets = tickets.len() as u64;
    let mut open: Vec<(String, String, String)> = tickets.clone();
    let mut promoted = 0u64;
    let deadline = Instant::now() + Duration::from_secs(args.hold_seconds * 3 + 30);
    let mut replays_after_promotion = Vec::new();
    while !open.is_empty() && Instant::now() < deadline {
        let mut still = Vec::new();
        for (t, key, user) in open {
            match api.ticket(&t).await {
                Some((st, Some(rid))) if st == "promoted" => {
                    promoted += 1;
                    let replay = api
                        .reserve_or_wait(Phase::Followup, &sku, &user, &key, true)
                        .await;
                    crowd.keys.lock().unwrap().note(&key, &replay);
                    replays_after_promotion.push(replay);
                    let confirm = promoted.is_multiple_of(2);
                    let ok = api.end(Phase::Followup, &rid, confirm).await.status == 200;
                    let action = if confirm {
                        Action::Confirm
                    } else {
                        Action::Release
                    };
                    crowd.holds.lock().unwrap().push((rid, action, Some(ok)));
                }
                Some((st, _)) if st == "waiting" => still.push((t, key, user)),
                _ => {}
            }
        }
        open = still;
        if open.is_empty() {
            break;
        }
        // nothing held and nothing available: no unit can come back
        if let Some((t, _)) = sku_now(&api, &sku).await {
            if t.held == 0 && t.available == 0 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    report.promoted = promoted;
    report.answers.insert(
        "join_replays_after_promotion".into(),
        tally(&replays_after_promotion),
    );
    // the rest of the queue gives up, from the tail
    for (t, _, _) in open.iter().rev() {
        api.cancel_ticket(t).await;
    }
    for (t, _, _) in &tickets {
        let st = api
            .ticket(t)
            .await
            .map_or_else(|| "unreadable".to_owned(), |(s, _)| s);
        *report.ticket_statuses.entry(st).or_default() += 1;
    }
    log(format!(
        "waitlist: {} tickets, {promoted} promoted, {:?}",
        tickets.len(),
        report.ticket_statuses
    ));

    // --- Every hold ended (abandoned ones expire).
    let deadline = Instant::now() + Duration::from_secs(args.hold_seconds + 15);
    while Instant::now() < deadline {
        if sku_now(&api, &sku).await.is_some_and(|(t, _)| t.held == 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // --- No unit stuck behind the gates: available units with nobody
    // waiting go to new buyers (who confirm them).
    let mut i = 0u64;
    let probe_deadline = Instant::now() + Duration::from_secs(30);
    let mut sold_out_since: Option<Instant> = None;
    while Instant::now() < probe_deadline {
        let Some((t, waiting)) = sku_now(&api, &sku).await else {
            break;
        };
        if t.available == 0 {
            break;
        }
        let (user, key) = (format!("probe-u{i}"), format!("{run_id}-probe-{i}"));
        i += 1;
        let a = api.reserve(Phase::Followup, &sku, &user, &key).await;
        crowd.keys.lock().unwrap().note(&key, &a);
        match (a.sample.outcome, &a.reservation_id) {
            (Outcome::Held, Some(rid)) => {
                sold_out_since = None;
                report.probe_holds += 1;
                let ok = api.confirm(rid).await.status == 200;
                crowd
                    .holds
                    .lock()
                    .unwrap()
                    .push((rid.clone(), Action::Confirm, Some(ok)));
            }
            (o, _) if stuck_behind_gates(t.available, waiting, o) => {
                report.stuck_probes += 1;
                // the promoter may be lifting the gates this instant: a stuck
                // unit is one still refused after 5 s
                let since = *sold_out_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= Duration::from_secs(5) {
                    report.violations.push(format!(
                        "unit stuck behind the gates: available {}, waitlist {waiting}, \
                         new buyers answered sold_out for 5 s",
                        t.available
                    ));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    log(format!(
        "probes: {} holds, {} sold_out beside available units",
        report.probe_holds, report.stuck_probes
    ));

    // --- Books.
    let all = crowd.holds.lock().unwrap().clone();
    let mut records = Vec::with_capacity(all.len());
    for (rid, action, action_ok) in &all {
        records.push(HoldRecord {
            reservation_id: rid.clone(),
            action: *action,
            action_ok: *action_ok,
            final_status: api.reservation_status(rid).await,
        });
    }
    let api_totals = sku_now(&api, &sku).await.map(|(t, _)| t);
    let shards = redis::read_shards(&rc, &sku, args.reshard_to).await.ok();
    if shards.as_ref().map(Vec::len) != Some(args.reshard_to as usize) {
        report.violations.push(format!(
            "Redis has {:?} shards for {sku}, expected {}",
            shards.as_ref().map(Vec::len),
            args.reshard_to
        ));
    }
    report.books = books::check(&BookInput {
        expected_initial: Some(report.expected_initial),
        redis_shards: shards.as_deref(),
        api: api_totals,
        holds: &records,
        holds_in_wave,
    });
    {
        let keys = crowd.keys.lock().unwrap();
        report.keys = keys.keys.len() as u64;
        report.max_reservations_per_key = keys.max_reservations_per_key();
        report.sold_out_then_held = keys.sold_out_then_held();
        report.violations.extend(keys.violations());
    }
    log(format!(
        "books: {} violations, oversold {}; keys {}, max reservations per key {}",
        report.books.violations.len(),
        report.books.oversold,
        report.keys,
        report.max_reservations_per_key
    ));

    // --- Reconcile against the ledger (it waits for the ledger to drain).
    if let Err(e) = fg.check_alive() {
        report.violations.push(format!("{e:#}"));
    }
    let rec_args = [
        "reconcile",
        "--sku",
        &sku,
        "--format",
        "json",
        "--wait-seconds",
        "60",
        "--redis-url",
        &redis_url,
        "--postgres-url",
        &pg_url,
    ];
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(&args.flashgate_bin)
            .args(rec_args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("flashgate reconcile ran over 120 s")?
    .context("running flashgate reconcile")?;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let verdict = reconcile_verdict(&stdout);
    let rec = ReconcileRun {
        exit_code: out.status.code(),
        verdict: verdict.clone().ok(),
        report: serde_json::from_str(stdout.trim()).ok(),
        stderr: String::from_utf8_lossy(&out.stderr)
            .chars()
            .take(4000)
            .collect(),
    };
    match verdict {
        Ok(v) if v == "clean" && out.status.success() => {}
        Ok(v) => report.violations.push(format!(
            "reconcile verdict {v:?} (exit {:?})",
            out.status.code()
        )),
        Err(e) => report.violations.push(format!(
            "reconcile: {e} (exit {:?}, stderr {})",
            out.status.code(),
            rec.stderr
        )),
    }
    log(format!(
        "reconcile: verdict {:?}, exit {:?}",
        rec.verdict, rec.exit_code
    ));
    report.reconcile = Some(rec);

    fg.stop().await;
    redis_proc.stop().await;
    drop(pg);

    let passed = report.books.ok() && report.violations.is_empty();
    let json_path = run_dir.join("reshard.json");
    std::fs::write(&json_path, serde_json::to_vec_pretty(&report)?)?;
    println!("{}", render(&report, passed));
    println!("file: {}", json_path.display());
    Ok(passed)
}

/// The run's summary as text.
pub fn render(r: &ReshardReport, passed: bool) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "reshard sale {} on {}: stock {} on {} shards -> {} shards, {} available set at the reshard \
         (was {}), expected initial {}\n",
        r.run_id,
        r.sku,
        r.stock,
        r.shards_before,
        r.shards_after,
        r.stock_set_at_reshard,
        r.available_at_reshard,
        r.expected_initial
    ));
    for (phase, t) in &r.answers {
        s.push_str(&format!("  {phase}: {t:?}\n"));
    }
    s.push_str(&format!(
        "  keys {}, max reservations per key {}, sold_out then held {}\n",
        r.keys, r.max_reservations_per_key, r.sold_out_then_held
    ));
    s.push_str(&format!(
        "  tickets {}, promoted {}, final {:?}\n",
        r.tickets, r.promoted, r.ticket_statuses
    ));
    s.push_str(&format!(
        "  after the cache window: {} units available beside waiting tickets throughout; \
         {} queue jumps in wave 3\n",
        r.stalled_beside_tickets, r.queue_jumps
    ));
    s.push_str(&format!(
        "  probes after the sale: {} holds, {} sold_out beside available units\n",
        r.probe_holds, r.stuck_probes
    ));
    s.push_str(&format!(
        "  books: api {:?}, oversold {}, final statuses {:?}, {} violations\n",
        r.books.api,
        r.books.oversold,
        r.books.final_statuses,
        r.books.violations.len()
    ));
    if let Some(rec) = &r.reconcile {
        s.push_str(&format!(
            "  reconcile: verdict {:?}, exit {:?}\n",
            rec.verdict, rec.exit_code
        ));
    }
    for v in r.books.violations.iter().chain(&r.violations) {
        s.push_str(&format!("  FAIL: {v}\n"));
    }
    for n in &r.notes {
        s.push_str(&format!("  note: {n}\n"));
    }
    s.push_str(if passed { "PASS\n" } else { "FAIL\n" });
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Sample;

    fn answer(outcome: Outcome, status: u16, rid: Option<&str>, tid: Option<&str>) -> Answer {
        Answer {
            sample: Sample {
                phase: Phase::Wave,
                outcome,
                sent_us: 0,
                recv_us: 1,
            },
            status,
            reservation_id: rid.map(str::to_owned),
            ticket_id: tid.map(str::to_owned),
        }
    }

    /// The whole scenario, small, against a real redis-server, PostgreSQL
    /// and a built flashgate (`FLASHGATE_BIN`, default the workspace's
    /// `target/release/flashgate`). Ignored by default: it needs that binary.
    /// `cargo build --release -p flashgate && cargo nextest run -p
    /// flashgate-loadtest --run-ignored all reshard_scenario_smoke`
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs a built flashgate binary, redis-server and PostgreSQL"]
    async fn reshard_scenario_smoke() {
        use clap::Parser;
        let bin = std::env::var("FLASHGATE_BIN").unwrap_or_else(|_| {
            concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/flashgate").into()
        });
        assert!(
            std::path::Path::new(&bin).exists(),
            "build flashgate first (or set FLASHGATE_BIN): {bin}"
        );
        let out = tempfile::tempdir().unwrap();
        let args = Args::try_parse_from([
            "flashgate-loadtest",
            "--spawn",
            "--scenario",
            "reshard",
            "--flashgate-bin",
            &bin,
            "--out-dir",
            out.path().to_str().unwrap(),
            "--buyers",
            "120",
            "--stock",
            "30",
            "--shards",
            "2",
            "--reshard-to",
            "4",
            "--reshard-add",
            "20",
            "--reshard-waitlisters",
            "6",
            "--connections",
            "8",
            "--retry-share",
            "0.3",
            // outlives the waves: no unit comes back before the follow-ups
            "--hold-seconds",
            "15",
        ])
        .unwrap();
        assert!(run(args).await.unwrap(), "the reshard sale failed");
        let dir = std::fs::read_dir(out.path())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("reshard.json")).unwrap()).unwrap();
        assert_eq!(r["books"]["oversold"], 0);
        assert_eq!(r["max_reservations_per_key"], 1);
        assert_eq!(r["expected_initial"], 50);
        assert_eq!(r["reconcile"]["verdict"], "clean");
        assert!(r["tickets"].as_u64().unwrap() > 0);
    }

    #[test]
    fn a_replay_of_the_same_hold_is_one_reservation() {
        let mut b = KeyBook::default();
        b.note("k", &answer(Outcome::Held, 201, Some("S.0.a"), None));
        b.note("k", &answer(Outcome::Replayed, 200, Some("S.0.a"), None));
        assert!(b.violations().is_empty());
        assert_eq!(b.max_reservations_per_key(), 1);
    }

    #[test]
    fn a_second_hold_for_one_key_is_a_violation() {
        let mut b = KeyBook::default();
        b.note("k", &answer(Outcome::Held, 201, Some("S.0.a"), None));
        b.note("k", &answer(Outcome::Held, 201, Some("S.1.b"), None));
        let v = b.violations();
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("2 reservations"));
        assert_eq!(b.max_reservations_per_key(), 2);
    }

    #[test]
    fn tickets_count_once_per_key_and_never_beside_a_hold() {
        let mut b = KeyBook::default();
        b.note("w", &answer(Outcome::Waitlisted, 202, None, Some("S.w.1")));
        b.note("w", &answer(Outcome::Waitlisted, 200, None, Some("S.w.1")));
        assert!(b.violations().is_empty());
        b.note("w", &answer(Outcome::Waitlisted, 202, None, Some("S.w.2")));
        assert_eq!(b.violations().len(), 1);
        let mut b = KeyBook::default();
        b.note("x", &answer(Outcome::Waitlisted, 202, None, Some("S.w.1")));
        b.note("x", &answer(Outcome::Held, 201, Some("S.2.c"), None));
        assert!(b.violations()[0].contains("both"));
    }

    #[test]
    fn sold_out_then_held_is_counted_not_failed() {
        let mut b = KeyBook::default();
        b.note("s", &answer(Outcome::SoldOut, 409, None, None));
        b.note("s", &answer(Outcome::Held, 201, Some("S.3.d"), None));
        b.note("h", &answer(Outcome::Held, 201, Some("S.0.e"), None));
        b.note("h", &answer(Outcome::SoldOut, 409, None, None));
        assert_eq!(b.sold_out_then_held(), 1);
        assert!(b.violations().is_empty());
    }

    #[test]
    fn stuck_means_available_nobody_waiting_and_refused() {
        assert!(stuck_behind_gates(1, 0, Outcome::SoldOut));
        assert!(!stuck_behind_gates(1, 1, Outcome::SoldOut));
        assert!(!stuck_behind_gates(0, 0, Outcome::SoldOut));
        assert!(!stuck_behind_gates(1, 0, Outcome::Held));
    }

    #[test]
    fn units_beside_tickets_stall_only_if_every_reading_shows_them() {
        assert_eq!(stalled_throughout(&[(60, 16), (60, 16), (58, 16)]), 58);
        assert_eq!(stalled_throughout(&[(60, 16), (0, 16)]), 0);
        assert_eq!(stalled_throughout(&[(60, 16), (60, 0)]), 0);
        assert_eq!(stalled_throughout(&[]), 0);
    }

    #[test]
    fn holds_made_while_tickets_wait_jump_the_queue() {
        let held = answer(Outcome::Held, 201, Some("S.2.a"), None);
        let sold = answer(Outcome::SoldOut, 409, None, None);
        let answers = [held.clone(), sold, held];
        assert_eq!(queue_jumps(3, &answers), 2);
        assert_eq!(queue_jumps(0, &answers), 0);
    }

    #[test]
    fn the_reshard_adds_to_what_is_available() {
        assert_eq!(reshard_stock(50, 60), 110);
        assert_eq!(reshard_stock(0, 60), 60);
        assert_eq!(reshard_stock(-3, 5), 5);
    }

    #[test]
    fn the_reconcile_verdict_comes_from_its_json() {
        assert_eq!(
            reconcile_verdict("{\"version\":2,\"verdict\":\"clean\",\"skus\":[]}\n").unwrap(),
            "clean"
        );
        assert_eq!(
            reconcile_verdict("{\"verdict\":\"drift\"}").unwrap(),
            "drift"
        );
        assert!(reconcile_verdict("").is_err());
        assert!(reconcile_verdict("{\"skus\":[]}").is_err());
    }
}
