//! The cart mix (`--scenario carts`, issue 22, docs/carts.md): several SKUs
//! on sale, a share of the buyers (`--cart-mix`) POST /v1/carts with 2–3
//! lines (one unit of each of 2–3 distinct SKUs) instead of one reserve.
//! An answer of unknown outcome (503, timeout) is retried with the same
//! Idempotency-Key, twice at most. Holders confirm, release or abandon.
//!
//! After the holds expired the run checks, per SKU, the books in Redis
//! (every shard's [`ShardBooks::drift`] 0, nothing oversold, nothing left
//! held) and that the units sold are exactly the units the buyers were told
//! were sold (when no confirm was left unknown); and for every `201` cart,
//! read back with each line's reservation, that its lines ended together
//! (all sold, or none).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use hyper::Method;
use serde::Serialize;
use serde_json::{json, Value};

use crate::books::ShardBooks;
use crate::cli::Args;
use crate::http::{loopback_base, Api};
use crate::open_loop::{tail_of, Tail};
use crate::sale::{self, Rng};
use crate::stats::new_histogram;
use crate::{procs, redis};

fn log(msg: impl AsRef<str>) {
    eprintln!("[loadtest] {}", msg.as_ref());
}

/// What a buyer does with what it got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Then {
    Confirm,
    Release,
    Abandon,
}

/// One planned buyer: a cart of these SKU indexes (2–3), or one reserve of
/// one SKU (a single index).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub idx: u64,
    pub cart: bool,
    pub skus: Vec<usize>,
    pub then: Then,
}

/// The buyers, deterministic from the seed: `mix` of them with carts of
/// 2–3 distinct SKUs out of `n_skus`.
pub fn plan(
    buyers: u64,
    n_skus: usize,
    mix: f64,
    confirm: f64,
    release: f64,
    seed: u64,
) -> Vec<Plan> {
    let mut rng = Rng::new(seed ^ 0xCA27);
    (0..buyers)
        .map(|idx| {
            let cart = rng.unit() < mix;
            let want = if cart {
                (2 + (rng.next_u64() % 2) as usize).min(n_skus)
            } else {
                1
            };
            let mut pool: Vec<usize> = (0..n_skus).collect();
            let mut skus = Vec::with_capacity(want);
            while skus.len() < want {
                let i = (rng.next_u64() % pool.len() as u64) as usize;
                skus.push(pool.swap_remove(i));
            }
            let r = rng.unit();
            let then = if r < confirm {
                Then::Confirm
            } else if r < confirm + release {
                Then::Release
            } else {
                Then::Abandon
            };
            Plan {
                idx,
                cart,
                skus,
                then,
            }
        })
        .collect()
}

/// How a buyer's POST ended (after its retries with the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Got {
    /// 201 (or a 200 replay): every line held; the cart or reservation id
    /// and the line holds.
    Whole { id: String, lines: Vec<String> },
    /// 409 sold_out / purchase_limit (a cart: nothing held).
    Refused,
    /// 503 (carts_busy, redis_unavailable) or no answer, after the retries.
    Unavailable,
    /// Any other answer (its code).
    Other(String),
}

/// The outcome label of a POST's answer.
pub fn classify(status: u16, body: &Value) -> Got {
    let code = body
        .pointer("/error/code")
        .and_then(Value::as_str)
        .unwrap_or("");
    match status {
        200 | 201 => {
            let id = body
                .get("cart_id")
                .or_else(|| body.get("reservation_id"))
                .and_then(Value::as_str);
            let lines: Vec<String> = match body.get("lines").and_then(Value::as_array) {
                Some(ls) => ls
                    .iter()
                    .filter_map(|l| l.get("reservation_id")?.as_str().map(str::to_owned))
                    .collect(),
                None => id.map(str::to_owned).into_iter().collect(),
            };
            match id {
                Some(id) => Got::Whole {
                    id: id.to_owned(),
                    lines,
                },
                None => Got::Other(format!("{status} without an id")),
            }
        }
        409 if code == "sold_out" || code == "purchase_limit" => Got::Refused,
        0 | 503 => Got::Unavailable,
        _ => Got::Other(format!("{status} {code}")),
    }
}

/// One buyer's story.
#[derive(Debug, Clone)]
pub struct Story {
    pub plan: Plan,
    pub got: Got,
    /// Attempts of the POST (1 + retries with the key).
    pub attempts: u32,
    pub first_latency_us: u64,
    /// The follow-up's answer: status and `error.code` / `status`.
    pub then_answer: Option<(u16, String)>,
}

async fn buyer(api: &Api, run_id: &str, skus: &[String], p: &Plan) -> Story {
    let key = format!("{run_id}-{}", p.idx);
    let user = format!("u{}", p.idx);
    let (path, body) = if p.cart {
        let lines: Vec<Value> = p
            .skus
            .iter()
            .map(|&i| json!({"sku": skus[i], "qty": 1}))
            .collect();
        ("/v1/carts", json!({"user_id": user, "lines": lines}))
    } else {
        (
            "/v1/reservations",
            json!({"sku": skus[p.skus[0]], "qty": 1, "user_id": user}),
        )
    };
    let text = body.to_string();
    let mut attempts = 0;
    let mut first_latency_us = 0;
    let got = loop {
        attempts += 1;
        let (status, answer, us) = api
            .json(Method::POST, path, Some((text.clone(), key.as_str())))
            .await;
        if attempts == 1 {
            first_latency_us = us;
        }
        let got = classify(status, &answer);
        if got != Got::Unavailable || attempts >= 3 {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut then_answer = None;
    if let (Got::Whole { id, .. }, Then::Confirm | Then::Release) = (&got, p.then) {
        let verb = if p.then == Then::Confirm {
            "confirm"
        } else {
            "release"
        };
        let path = if p.cart {
            format!("/v1/carts/{id}/{verb}")
        } else {
            format!("/v1/reservations/{id}/{verb}")
        };
        let (status, answer, _) = api.json(Method::POST, &path, None).await;
        let what = answer
            .pointer("/error/code")
            .or_else(|| answer.get("status"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        then_answer = Some((status, what));
    }
    Story {
        plan: p.clone(),
        got,
        attempts,
        first_latency_us,
        then_answer,
    }
}

/// One SKU's books after the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SkuReport {
    pub sku: String,
    pub initial: i64,
    pub available: i64,
    pub held: i64,
    pub sold: i64,
    pub in_transit: i64,
    /// Σ over shards of [`ShardBooks::drift`] (each must be 0).
    pub drift: Vec<i64>,
    /// Units the buyers were told were sold (a 200 confirm of a cart line or
    /// a reservation).
    pub sold_told: i64,
    /// Units whose confirm had no definite answer (sold or not).
    pub sold_unknown: i64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CartsReport {
    pub run_id: String,
    pub buyers: u64,
    pub cart_mix: f64,
    pub seconds: f64,
    /// Cart POSTs by outcome: whole, refused, unavailable (503), other.
    pub carts: BTreeMap<String, u64>,
    /// Single reserves by outcome.
    pub reserves: BTreeMap<String, u64>,
    /// Cart confirms/releases by answer (`200 confirmed`, `409 cart_expired`, …).
    pub cart_followups: BTreeMap<String, u64>,
    /// Retries with the key (attempts past the first).
    pub retries: u64,
    pub cart_latency: Tail,
    pub reserve_latency: Tail,
    pub skus: Vec<SkuReport>,
    /// Whole carts read back after the holds expired: by final status.
    pub carts_final: BTreeMap<String, u64>,
    /// Whole carts whose lines did not end together (must be 0).
    pub partial_carts: Vec<String>,
    pub violations: Vec<String>,
}

fn bump(m: &mut BTreeMap<String, u64>, k: impl Into<String>) {
    *m.entry(k.into()).or_insert(0) += 1;
}

fn label(g: &Got) -> String {
    match g {
        Got::Whole { .. } => "whole".into(),
        Got::Refused => "refused".into(),
        Got::Unavailable => "unavailable".into(),
        Got::Other(c) => format!("other ({c})"),
    }
}

/// Units sold per SKU as the buyers were told, and units of unknown outcome.
pub fn told(stories: &[Story], n_skus: usize) -> (Vec<i64>, Vec<i64>) {
    let (mut sold, mut unknown) = (vec![0; n_skus], vec![0; n_skus]);
    for s in stories {
        if s.plan.then != Then::Confirm || !matches!(s.got, Got::Whole { .. }) {
            continue;
        }
        match &s.then_answer {
            Some((200, _)) => s.plan.skus.iter().for_each(|&i| sold[i] += 1),
            Some((0, _)) | Some((500..=599, _)) => {
                s.plan.skus.iter().for_each(|&i| unknown[i] += 1)
            }
            _ => {}
        }
    }
    (sold, unknown)
}

/// The lines' final statuses: whole when all the same (all confirmed, or
/// none holding anything).
pub fn lines_whole(statuses: &[Option<String>]) -> bool {
    let sold = |s: &Option<String>| s.as_deref() == Some("confirmed");
    statuses.iter().all(sold)
        || !statuses
            .iter()
            .any(|s| sold(s) || s.as_deref() == Some("held"))
}

pub async fn run(args: Args) -> anyhow::Result<bool> {
    args.validate()?;
    let started_unix = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let run_id = format!("CT{started_unix}");
    let base_sku = args.sku.clone().unwrap_or_else(|| run_id.clone());
    let skus: Vec<String> = (0..args.cart_skus)
        .map(|i| format!("{base_sku}S{i}"))
        .collect();
    let run_dir = args.out_dir.join(&run_id);
    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let run_dir = run_dir.canonicalize()?;
    let timeout = Duration::from_millis(args.request_timeout_ms);

    // --- Redis and flashgate (spawned, or the ones named).
    let mut owned = Vec::new();
    let (base, redis_url, api_key) = if args.spawn {
        let (nodes, redis_url) = match args.cluster_masters {
            Some(m) => {
                procs::spawn_cluster(
                    &args.redis_server_bin,
                    &args.redis_cli_bin,
                    m as usize,
                    &run_dir,
                )
                .await?
            }
            None => {
                let (r, url) = procs::spawn_redis(&args.redis_server_bin, &run_dir).await?;
                (vec![r], url)
            }
        };
        owned.extend(nodes);
        let conf = write_config(&run_dir, args.cart_saga_ms)?;
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
        let key = format!("carts-{run_id}-{nanos:x}");
        let env = [("FLASHGATE_CONFIG", conf.as_str())];
        let (fg, base) = procs::spawn_flashgate_under(
            &[],
            &env,
            &args.flashgate_bin,
            &redis_url,
            args.hold_seconds,
            &run_dir,
            &key,
        )
        .await?;
        owned.push(fg);
        (base, redis_url, Some(key))
    } else {
        (
            loopback_base(&args.target)?,
            args.redis_url.clone(),
            args.api_key.clone(),
        )
    };
    let result = sale_and_books(
        &args, &run_id, &run_dir, &skus, &base, &redis_url, api_key, timeout,
    )
    .await;
    for o in owned.into_iter().rev() {
        o.stop().await;
    }
    result
}

/// The config file a spawned flashgate reads: `cart_saga_ms` (it has no
/// environment variable).
fn write_config(dir: &Path, cart_saga_ms: u64) -> anyhow::Result<String> {
    let path = dir.join("flashgate.toml");
    std::fs::write(&path, format!("cart_saga_ms = {cart_saga_ms}\n"))?;
    Ok(path.display().to_string())
}

#[allow(clippy::too_many_arguments)]
async fn sale_and_books(
    args: &Args,
    run_id: &str,
    run_dir: &Path,
    skus: &[String],
    base: &str,
    redis_url: &str,
    api_key: Option<String>,
    timeout: Duration,
) -> anyhow::Result<bool> {
    let api = Api::new(base, args.connections, timeout, Instant::now())
        .with_api_key(api_key.as_deref())?;
    api.wait_healthy(Duration::from_secs(10)).await?;
    if !args.no_preload {
        for sku in skus {
            procs::preload(
                &args.flashgate_bin,
                redis_url,
                sku,
                args.stock,
                args.shards,
                args.max_per_user,
            )
            .await?;
        }
        log(format!(
            "preloaded {} SKUs x {} units on {} shards",
            skus.len(),
            args.stock,
            args.shards
        ));
    }
    let rc = redis::connect(redis_url).await?;
    let plans = plan(
        args.buyers,
        skus.len(),
        args.cart_mix,
        args.confirm_share,
        args.release_share,
        args.seed,
    );
    log(format!(
        "{} buyers, {:.0} % with carts, {} connections",
        plans.len(),
        args.cart_mix * 100.0,
        args.connections
    ));
    let t0 = Instant::now();
    let shared = Arc::new((api.clone(), run_id.to_owned(), skus.to_vec()));
    let stories = sale::for_each(args.connections, plans, move |p: &Plan| {
        let shared = shared.clone();
        let p = p.clone();
        async move { buyer(&shared.0, &shared.1, &shared.2, &p).await }
    })
    .await;
    let seconds = t0.elapsed().as_secs_f64();

    let mut r = CartsReport {
        run_id: run_id.to_owned(),
        buyers: args.buyers,
        cart_mix: args.cart_mix,
        seconds,
        ..CartsReport::default()
    };
    let (mut cart_h, mut res_h) = (new_histogram(), new_histogram());
    for s in &stories {
        r.retries += u64::from(s.attempts - 1);
        if s.plan.cart {
            bump(&mut r.carts, label(&s.got));
            cart_h.saturating_record(s.first_latency_us.max(1));
            if let Some((st, what)) = &s.then_answer {
                bump(
                    &mut r.cart_followups,
                    format!("{:?} {st} {what}", s.plan.then).to_lowercase(),
                );
            }
        } else {
            bump(&mut r.reserves, label(&s.got));
            res_h.saturating_record(s.first_latency_us.max(1));
        }
    }
    r.cart_latency = tail_of(&cart_h);
    r.reserve_latency = tail_of(&res_h);
    log(format!(
        "sale over in {seconds:.1} s: carts {:?}, reserves {:?}, retries {}",
        r.carts, r.reserves, r.retries
    ));

    // --- Wait for the abandoned holds to expire (nothing held anywhere).
    let wait = args.expiry_wait_seconds.unwrap_or(args.hold_seconds + 15);
    let deadline = Instant::now() + Duration::from_secs(wait);
    loop {
        let mut held = 0;
        for sku in skus {
            held += api
                .sku(sku)
                .await
                .ok()
                .and_then(|j| j.get("held").and_then(Value::as_i64))
                .unwrap_or(1);
        }
        if held == 0 || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // --- Per-SKU books.
    let (sold_told, sold_unknown) = told(&stories, skus.len());
    for (i, sku) in skus.iter().enumerate() {
        let shards: Vec<ShardBooks> = redis::read_shards(&rc, sku, args.shards).await?;
        let sum = |f: fn(&ShardBooks) -> i64| shards.iter().map(f).sum::<i64>();
        let s = SkuReport {
            sku: sku.clone(),
            initial: sum(|b| b.initial),
            available: sum(|b| b.stock),
            held: sum(|b| b.held),
            sold: sum(|b| b.sold),
            in_transit: sum(|b| b.in_transit),
            drift: shards.iter().map(ShardBooks::drift).collect(),
            sold_told: sold_told[i],
            sold_unknown: sold_unknown[i],
        };
        if s.drift.iter().any(|d| *d != 0) {
            r.violations
                .push(format!("{sku}: shard drift {:?}", s.drift));
        }
        if !args.no_preload && s.initial != args.stock as i64 {
            r.violations.push(format!(
                "{sku}: initial {} for stock {}",
                s.initial, args.stock
            ));
        }
        if s.held + s.sold > s.initial {
            r.violations.push(format!(
                "{sku}: oversold: {} held + {} sold of {}",
                s.held, s.sold, s.initial
            ));
        }
        if s.held != 0 {
            r.violations
                .push(format!("{sku}: {} units still held after the wait", s.held));
        }
        if s.sold < s.sold_told || s.sold > s.sold_told + s.sold_unknown {
            r.violations.push(format!(
                "{sku}: {} sold in Redis, the buyers were told {} (+{} unknown)",
                s.sold, s.sold_told, s.sold_unknown
            ));
        }
        r.skus.push(s);
    }

    // --- Every whole cart, read back: its lines ended together.
    let carts: Vec<(String, Vec<String>)> = stories
        .iter()
        .filter(|s| s.plan.cart)
        .filter_map(|s| match &s.got {
            Got::Whole { id, lines } => Some((id.clone(), lines.clone())),
            _ => None,
        })
        .collect();
    let api2 = api.clone();
    let reads = sale::for_each(
        args.connections.min(32),
        carts,
        move |(id, lines): &(String, Vec<String>)| {
            let api = api2.clone();
            let (id, lines) = (id.clone(), lines.clone());
            async move {
                let (_, cart, _) = api
                    .json(Method::GET, &format!("/v1/carts/{id}"), None)
                    .await;
                let status = cart
                    .get("status")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_owned();
                let mut ls = Vec::with_capacity(lines.len());
                for rid in &lines {
                    ls.push(api.reservation_status(rid).await);
                }
                (id, status, ls)
            }
        },
    )
    .await;
    for (id, status, lines) in reads {
        bump(&mut r.carts_final, status.clone());
        if !lines_whole(&lines) {
            r.partial_carts.push(format!("{id} ({status}: {lines:?})"));
        }
    }
    if !r.partial_carts.is_empty() {
        r.violations
            .push(format!("{} partial carts", r.partial_carts.len()));
    }

    let passed = r.violations.is_empty();
    let md = render(&r, passed);
    std::fs::write(
        run_dir.join("report.json"),
        serde_json::to_string_pretty(&r)? + "\n",
    )?;
    std::fs::write(run_dir.join("report.md"), &md)?;
    println!("{md}");
    log(format!("report in {}", run_dir.display()));
    Ok(passed)
}

pub fn render(r: &CartsReport, passed: bool) -> String {
    let mut s = format!(
        "# Cart mix {}\n\n{} buyers, {:.0} % with carts of 2–3 lines, {:.1} s; {} retries with the key\n\n",
        r.run_id,
        r.buyers,
        r.cart_mix * 100.0,
        r.seconds,
        r.retries
    );
    let row = |m: &BTreeMap<String, u64>| {
        m.iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    s += &format!(
        "| | answers | p50 ms | p99 ms |\n|---|---|---|---|\n| carts | {} | {:.2} | {:.2} |\n| single reserves | {} | {:.2} | {:.2} |\n\n",
        row(&r.carts),
        r.cart_latency.p50_ms,
        r.cart_latency.p99_ms,
        row(&r.reserves),
        r.reserve_latency.p50_ms,
        r.reserve_latency.p99_ms
    );
    s += &format!("Cart follow-ups: {}\n\n", row(&r.cart_followups));
    s += &format!(
        "Whole carts at the end: {}; partial: {}\n\n",
        row(&r.carts_final),
        r.partial_carts.len()
    );
    s += "| SKU | initial | available | held | sold | sold (told) | unknown | shard drift |\n|---|---|---|---|---|---|---|---|\n";
    for k in &r.skus {
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {:?} |\n",
            k.sku, k.initial, k.available, k.held, k.sold, k.sold_told, k.sold_unknown, k.drift
        );
    }
    s += &format!(
        "\n**{}**{}\n",
        if passed { "PASS" } else { "FAIL" },
        if r.violations.is_empty() {
            String::new()
        } else {
            format!(": {}", r.violations.join("; "))
        }
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_follows_the_seed_and_the_mix() {
        let a = plan(2000, 3, 0.5, 0.6, 0.2, 8);
        assert_eq!(a, plan(2000, 3, 0.5, 0.6, 0.2, 8));
        let carts = a.iter().filter(|p| p.cart).count();
        assert!((800..1200).contains(&carts), "{carts}");
        for p in &a {
            let n = p.skus.len();
            assert!(if p.cart { (2..=3).contains(&n) } else { n == 1 }, "{p:?}");
            let mut d = p.skus.clone();
            d.dedup();
            d.sort();
            d.dedup();
            assert_eq!(d.len(), n, "distinct SKUs: {p:?}");
            assert!(p.skus.iter().all(|&i| i < 3));
        }
        assert!(plan(100, 3, 0.0, 0.6, 0.2, 8).iter().all(|p| !p.cart));
        assert!(plan(100, 2, 1.0, 0.6, 0.2, 8)
            .iter()
            .all(|p| p.cart && p.skus.len() == 2));
    }

    #[test]
    fn answers_are_classified_whole_refused_or_unavailable() {
        let cart = json!({"cart_id": "c", "status": "held",
                          "lines": [{"reservation_id": "A.0.x"}, {"reservation_id": "B.1.y"}]});
        assert_eq!(
            classify(201, &cart),
            Got::Whole {
                id: "c".into(),
                lines: vec!["A.0.x".into(), "B.1.y".into()]
            }
        );
        let hold = json!({"reservation_id": "A.0.x", "status": "held"});
        assert_eq!(
            classify(201, &hold),
            Got::Whole {
                id: "A.0.x".into(),
                lines: vec!["A.0.x".into()]
            }
        );
        let err = |c: &str| json!({"error": {"code": c, "message": ""}});
        assert_eq!(classify(409, &err("sold_out")), Got::Refused);
        assert_eq!(classify(409, &err("purchase_limit")), Got::Refused);
        assert_eq!(classify(503, &err("carts_busy")), Got::Unavailable);
        assert_eq!(classify(0, &Value::Null), Got::Unavailable);
        assert_eq!(
            classify(422, &err("invalid_request")),
            Got::Other("422 invalid_request".into())
        );
    }

    #[test]
    fn lines_are_whole_when_they_ended_together() {
        let s = |x: &str| Some(x.to_owned());
        assert!(lines_whole(&[s("confirmed"), s("confirmed")]));
        assert!(lines_whole(&[s("expired"), s("released"), None]));
        assert!(!lines_whole(&[s("confirmed"), s("expired")]));
        assert!(!lines_whole(&[s("held"), s("released")]));
    }

    #[test]
    fn sold_units_count_every_line_of_a_confirmed_cart() {
        let story = |cart: bool, skus: Vec<usize>, st: u16| Story {
            plan: Plan {
                idx: 0,
                cart,
                skus,
                then: Then::Confirm,
            },
            got: Got::Whole {
                id: "x".into(),
                lines: vec![],
            },
            attempts: 1,
            first_latency_us: 1,
            then_answer: Some((st, String::new())),
        };
        let (sold, unknown) = told(
            &[
                story(true, vec![0, 2], 200),
                story(false, vec![1], 200),
                story(true, vec![0, 1], 409),
                story(true, vec![1, 2], 503),
            ],
            3,
        );
        assert_eq!(sold, [1, 1, 1]);
        assert_eq!(unknown, [0, 1, 1]);
    }
}
