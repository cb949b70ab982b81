//! `--scenario scheduled` (issue 21): a sale with `opens_at`, every buyer
//! pre-queued before it, bots first.
//!
//! The SKU is loaded with `opens_at` = now + `--opens-in-ms`. The bots
//! (`--bot-share` of `--buyers`) all join the pre-queue at once, the moment
//! the SKU is loaded; the other buyers arrive spread over the first 60 % of
//! the time left. Each buyer's arrival rank is the order its `202 prequeued`
//! came back. At `opens_at` the draw orders the pre-queue; the report sets
//! the admission order (the draw's `order`, whose first `--stock` tickets
//! are promoted into holds) against the arrival order: Spearman's rank
//! correlation (≈ 0 when arrival buys nothing) and the bots' share of the
//! units against their share of the buyers.
//!
//! It fails (exit 2) when the draw does not verify (`fairness::verify`: the
//! commitment seen before `opens_at`, the digest, the order), when a ticket
//! of the first `--stock` is not promoted or one after them is, or when two
//! tickets share a reservation. Redis and flashgate are its own.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use flashgate::fairness::{self, DrawDocument};
use serde::Serialize;
use tokio::process::Command;

use crate::cli::Args;
use crate::http::Api;
use crate::procs;
use crate::stats::{Outcome, Phase};

fn log(msg: impl AsRef<str>) {
    eprintln!("[scheduled] {}", msg.as_ref());
}

#[derive(Debug, Default, Serialize)]
struct ScheduledReport {
    run_id: String,
    sku: String,
    buyers: u64,
    bots: u64,
    stock: u64,
    opens_in_ms: u64,
    prequeued: u64,
    /// Joins not answered `202` (each a buyer missing from the draw).
    joins_refused: u64,
    /// Spearman's rank correlation of arrival rank and admission rank, over
    /// every pre-queued ticket.
    spearman_arrival_vs_admission: f64,
    bots_share_of_buyers: f64,
    /// Of the units (the first `stock` of the order), the bots' share.
    bots_share_of_units: f64,
    /// Of the admitted, how many arrived among the first `stock` (FIFO
    /// would admit exactly those).
    admitted_from_first_arrivals: u64,
    draw_status: String,
    draw_verified: bool,
    /// From `opens_at` to the draw document answering `drawn`, as this
    /// client saw it (polled every 20 ms).
    draw_seen_after_ms: u64,
    promoted: u64,
    problems: Vec<String>,
}

/// Spearman's rank correlation of two rankings of the same items
/// (ranks 0..n, no ties): 1 − 6 Σd² / (n (n² − 1)).
pub fn spearman(a: &[usize], b: &[usize]) -> f64 {
    let n = a.len().min(b.len());
    if n < 2 {
        return 0.0;
    }
    let d2: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| {
            let d = *x as f64 - *y as f64;
            d * d
        })
        .sum();
    let n = n as f64;
    1.0 - 6.0 * d2 / (n * (n * n - 1.0))
}

pub async fn run(args: Args) -> anyhow::Result<bool> {
    args.validate()?;
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.bot_share),
        "--bot-share must be within 0..=1"
    );
    let started_unix = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let run_id = format!("SC{started_unix}");
    let sku = args.sku.clone().unwrap_or_else(|| run_id.clone());
    let run_dir = args.out_dir.join(&run_id);
    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let run_dir = run_dir.canonicalize()?;
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    let api_key = format!("scheduled-{run_id}-{nanos:x}");
    let bots = (args.buyers as f64 * args.bot_share).round() as u64;
    let mut report = ScheduledReport {
        run_id: run_id.clone(),
        sku: sku.clone(),
        buyers: args.buyers,
        bots,
        stock: args.stock,
        opens_in_ms: args.opens_in_ms,
        ..ScheduledReport::default()
    };

    let (redis_proc, redis_url) = procs::spawn_redis(&args.redis_server_bin, &run_dir).await?;
    let capacity = (args.buyers * 2).to_string();
    let env = [
        ("FLASHGATE_WAITLIST_CAPACITY", capacity.as_str()),
        ("FLASHGATE_USER_RATE_PER_SECOND", "0"),
    ];
    let (fg, base) = procs::spawn_flashgate_under(
        &[],
        &env,
        &args.flashgate_bin,
        &redis_url,
        args.hold_seconds,
        &run_dir,
        &api_key,
    )
    .await?;
    let timeout = Duration::from_millis(args.request_timeout_ms);
    let api =
        Api::new(&base, args.connections, timeout, Instant::now()).with_api_key(Some(&api_key))?;
    api.wait_healthy(Duration::from_secs(10)).await?;

    // --- the SKU, opening in --opens-in-ms
    let opens_at_ms =
        SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64 + args.opens_in_ms as i64;
    let opens_at = flashgate::inventory::ms_to_rfc3339(opens_at_ms);
    let preload_args: Vec<String> = [
        "preload",
        "--sku",
        &sku,
        "--stock",
        &args.stock.to_string(),
        "--shards",
        &args.shards.to_string(),
        "--opens-at",
        &opens_at,
    ]
    .map(str::to_owned)
    .to_vec();
    let out = procs::run_tool(
        Command::new(&args.flashgate_bin)
            .args(&preload_args)
            .env("FLASHGATE_REDIS_URL", &redis_url),
        &args.flashgate_bin,
        &preload_args,
        Duration::from_secs(30),
    )
    .await?;
    let loaded = Instant::now();
    log(format!(
        "preloaded {sku}: {} (opens at {opens_at})",
        out.trim()
    ));
    let commitment = api
        .sku(&sku)
        .await?
        .get("fairness_commitment")
        .and_then(|c| c.as_str())
        .map(str::to_owned)
        .context("no fairness_commitment published at load")?;

    // --- the pre-queue: bots at once, people spread over 60 % of the lead
    let arrivals: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
    let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let spread = Duration::from_millis(args.opens_in_ms * 6 / 10);
    let people = args.buyers - bots;
    let mut tasks = tokio::task::JoinSet::new();
    let gate = Arc::new(tokio::sync::Semaphore::new(args.connections.max(1)));
    for i in 0..args.buyers {
        let bot = i < bots;
        let at = if bot {
            Duration::ZERO
        } else {
            spread.mul_f64((i - bots) as f64 / people.max(1) as f64)
        };
        let (api, sku, arrivals, refused, gate) = (
            api.clone(),
            sku.clone(),
            arrivals.clone(),
            refused.clone(),
            gate.clone(),
        );
        tasks.spawn(async move {
            tokio::time::sleep_until((loaded + at).into()).await;
            let Ok(_permit) = gate.acquire().await else {
                return;
            };
            let who = if bot { "bot" } else { "person" };
            let a = api
                .reserve_or_wait(
                    Phase::Wave,
                    &sku,
                    &format!("{who}-{i}"),
                    &format!("{who}-{i}-k"),
                    true,
                )
                .await;
            match (a.sample.outcome, a.ticket_id) {
                (Outcome::Waitlisted, Some(t)) => {
                    if let Ok(mut v) = arrivals.lock() {
                        v.push((t, bot));
                    }
                }
                _ => {
                    refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let arrivals = std::mem::take(&mut *arrivals.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    report.prequeued = arrivals.len() as u64;
    report.joins_refused = refused.load(std::sync::atomic::Ordering::Relaxed);
    log(format!(
        "{} pre-queued ({} refused) {:.1} s after the load",
        report.prequeued,
        report.joins_refused,
        loaded.elapsed().as_secs_f64()
    ));
    let opening = loaded + Duration::from_millis(args.opens_in_ms);
    if Instant::now() >= opening {
        report.problems.push(
            "the pre-queue took longer than --opens-in-ms: late joins were refused or queued FIFO"
                .into(),
        );
    }

    // --- the opening: wait for the draw
    tokio::time::sleep_until(opening.into()).await;
    let path = format!("/v1/skus/{sku}/draw");
    let deadline = Instant::now() + Duration::from_secs(60);
    let doc: DrawDocument = loop {
        let d: DrawDocument = serde_json::from_value(api.get_json(&path).await?)?;
        if d.status == "drawn" || Instant::now() >= deadline {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    report.draw_seen_after_ms = opening.elapsed().as_millis() as u64;
    report.draw_status = doc.status.clone();
    match fairness::verify(&doc, Some(&commitment)) {
        Ok(()) => report.draw_verified = true,
        Err(e) => report
            .problems
            .push(format!("the draw does not verify: {e:?}")),
    }
    let listed: BTreeSet<&String> = doc.tickets.iter().collect();
    let arrived: BTreeSet<&String> = arrivals.iter().map(|(t, _)| t).collect();
    if listed != arrived {
        report.problems.push(format!(
            "the draw lists {} tickets, {} buyers pre-queued",
            listed.len(),
            arrived.len()
        ));
    }

    // --- admission: the first `stock` of the order get holds
    let admitted_n = (args.stock as usize).min(doc.order.len());
    let want_waiting = doc.order.len() - admitted_n;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let w = api
            .sku(&sku)
            .await?
            .get("waitlist")
            .and_then(|w| w.as_u64());
        if w == Some(want_waiting as u64) || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut rids = BTreeSet::new();
    for (i, t) in doc.order.iter().enumerate() {
        let Some((status, rid)) = api.ticket(t).await else {
            report.problems.push(format!("ticket {t} unreadable"));
            continue;
        };
        let should = i < admitted_n;
        if (status == "promoted") != should {
            report.problems.push(format!(
                "#{i} of the order is {status}, should be admitted: {should}"
            ));
        }
        if status == "promoted" {
            report.promoted += 1;
            if let Some(r) = rid {
                if !rids.insert(r.clone()) {
                    report.problems.push(format!("reservation {r} twice"));
                }
            }
        }
    }

    // --- the figures
    let arrival_rank: BTreeMap<&String, usize> = arrivals
        .iter()
        .enumerate()
        .map(|(i, (t, _))| (t, i))
        .collect();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for (i, t) in doc.order.iter().enumerate() {
        if let Some(r) = arrival_rank.get(t) {
            a.push(*r);
            b.push(i);
        }
    }
    report.spearman_arrival_vs_admission = spearman(&a, &b);
    let is_bot: BTreeMap<&String, bool> = arrivals.iter().map(|(t, bot)| (t, *bot)).collect();
    let admitted = &doc.order[..admitted_n];
    let bot_units = admitted
        .iter()
        .filter(|t| is_bot.get(t).copied().unwrap_or(false))
        .count();
    report.bots_share_of_buyers = if arrivals.is_empty() {
        0.0
    } else {
        arrivals.iter().filter(|(_, b)| *b).count() as f64 / arrivals.len() as f64
    };
    report.bots_share_of_units = if admitted_n == 0 {
        0.0
    } else {
        bot_units as f64 / admitted_n as f64
    };
    report.admitted_from_first_arrivals = admitted
        .iter()
        .filter(|t| arrival_rank.get(t).is_some_and(|r| *r < admitted_n))
        .count() as u64;

    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(run_dir.join("scheduled.json"), &json)?;
    println!("{json}");
    log(format!(
        "admission vs arrival: Spearman {:.3}; bots {:.1} % of buyers, {:.1} % of units; {} of {} admitted arrived among the first {}; report {}",
        report.spearman_arrival_vs_admission,
        100.0 * report.bots_share_of_buyers,
        100.0 * report.bots_share_of_units,
        report.admitted_from_first_arrivals,
        admitted_n,
        admitted_n,
        run_dir.join("scheduled.json").display()
    ));
    for p in &report.problems {
        log(format!("PROBLEM: {p}"));
    }
    fg.stop().await;
    redis_proc.stop().await;
    Ok(report.problems.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spearman_is_one_for_the_same_order_minus_one_for_the_reverse() {
        let a: Vec<usize> = (0..10).collect();
        let rev: Vec<usize> = (0..10).rev().collect();
        assert!((spearman(&a, &a) - 1.0).abs() < 1e-12);
        assert!((spearman(&a, &rev) + 1.0).abs() < 1e-12);
        assert_eq!(spearman(&[0], &[0]), 0.0);
    }
}
