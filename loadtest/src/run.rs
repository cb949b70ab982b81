//! One run, start to end: (spawn Redis and flashgate) → preload → wave →
//! healthz → sold-out phase → follow-ups → healthz → wait for expiry →
//! books → Redis and SQL baselines → healthz, capacity phase, healthz →
//! summary.json, chart.png and the table.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;

use crate::books::{self, Action, BookInput, HoldRecord};
use crate::cli::Args;
use crate::http::{loopback_base, sku_totals, Api};
use crate::report::{CpuLine, Ratios, Report, Settings, SoldOutPhase};
use crate::sale::{self, Hold, Rng, Shares, WaveConfig};
use crate::stats::{self, ratio, Outcome, Phase, PhaseSummary};
use crate::{chart, procs, redis, sql};

fn log(msg: impl AsRef<str>) {
    eprintln!("[loadtest] {}", msg.as_ref());
}

pub async fn run(args: Args) -> anyhow::Result<bool> {
    args.validate()?;
    let started_unix = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let run_id = format!("LT{started_unix}");
    let sku = args.sku.clone().unwrap_or_else(|| run_id.clone());
    let run_dir = args.out_dir.join(&run_id);
    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let run_dir = run_dir.canonicalize()?;
    let timeout = Duration::from_millis(args.request_timeout_ms);

    // A spawned flashgate gets a fresh storefront key; else --api-key, if any.
    let api_key = if args.spawn {
        Some(format!(
            "loadtest-{run_id}-{:x}",
            SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos()
        ))
    } else {
        args.api_key.clone()
    };

    // Processes we own live until the end of this function (killed on drop).
    let mut owned = Vec::new();
    let (base, redis_url) = if args.spawn {
        let url = match args.cluster_masters {
            Some(masters) => {
                let (nodes, url) = procs::spawn_cluster(
                    &args.redis_server_bin,
                    &args.redis_cli_bin,
                    masters as usize,
                    &run_dir,
                )
                .await?;
                log(format!("Redis Cluster of {masters} masters at {url}"));
                owned.extend(nodes);
                url
            }
            None => {
                let (r, url) = procs::spawn_redis(&args.redis_server_bin, &run_dir).await?;
                log(format!("redis-server at {url}"));
                owned.push(r);
                url
            }
        };
        let (fg, base) = procs::spawn_flashgate(
            &args.flashgate_bin,
            &url,
            args.hold_seconds,
            &run_dir,
            api_key.as_deref().unwrap_or_default(),
        )
        .await?;
        log(format!(
            "flashgate at {base} (hold {} s)",
            args.hold_seconds
        ));
        owned.push(fg);
        (base, url)
    } else {
        (loopback_base(&args.target)?, args.redis_url.clone())
    };
    redis::loopback_redis(&redis_url)?;
    let rc = redis::connect(&redis_url).await?;
    // CPU used per answer, by process, for the fixed-length phases (spawned
    // processes only): a cost that contention on a shared machine moves far
    // less than a rate does.
    let meter = CpuMeter {
        procs: owned.iter().map(|o| (o.name, o.pid())).collect(),
    };
    let mut cpu: Vec<CpuLine> = Vec::new();
    // one server, or the cluster's masters (books, commandstats and the
    // Redis baseline read every one of them)
    let redis_masters = redis::masters(&rc)?.len();
    if redis::is_cluster_url(&redis_url) {
        log(format!("Redis Cluster: {redis_masters} masters"));
    }

    let setup = Api::new(&base, 4, timeout, Instant::now()).with_api_key(api_key.as_deref())?;
    setup.wait_healthy(Duration::from_secs(10)).await?;
    if !args.no_preload {
        let out = procs::preload(
            &args.flashgate_bin,
            &redis_url,
            &sku,
            args.stock,
            args.shards,
            args.max_per_user,
        )
        .await?;
        log(format!(
            "preloaded {sku}: {} units over {} shards: {}",
            args.stock,
            args.shards,
            out.trim()
        ));
    }
    let before = setup
        .sku(&sku)
        .await
        .context("the SKU is not readable through the API")?;
    log(format!("GET /v1/skus/{sku} before the sale: {before}"));

    // --- The wave.
    let shares = Shares {
        retry: args.retry_share,
        abusive: args.abusive_share,
        confirm: args.confirm_share,
        release: args.release_share,
    };
    let buyers = Arc::new(sale::plan(args.buyers, &shares, args.seed));
    let epoch = Instant::now();
    let api = Api::new(&base, args.connections, timeout, epoch).with_api_key(api_key.as_deref())?;
    let monitor = Api::new(&base, 1, timeout, epoch).with_api_key(api_key.as_deref())?;
    // Open the connections before T0, so the wave measures requests, not handshakes.
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
    let wave_cfg = WaveConfig {
        sku: sku.clone(),
        run_id: run_id.clone(),
        connections: args.connections,
        ramp: Duration::from_millis(args.ramp_ms),
        abusive_requests: args.abusive_requests,
        max_duration: Duration::from_secs(args.wave_max_seconds),
    };
    log(format!(
        "wave: {} buyers on {} connections",
        args.buyers, args.connections
    ));
    let wave_t0_us = epoch.elapsed().as_micros() as u64;
    let mut wave = sale::run_wave(&api, &monitor, buyers.clone(), &wave_cfg).await;
    let wave_end_us = epoch.elapsed().as_micros() as u64;
    // run_wave measures from its own start; shift its samples onto our epoch.
    let shift = |us: u64| us + wave_t0_us;
    for s in &mut wave.samples {
        s.sent_us = shift(s.sent_us);
        s.recv_us = shift(s.recv_us);
    }
    for p in &mut wave.stock {
        p.t_ms += wave_t0_us as f64 / 1000.0;
    }
    let mut samples = std::mem::take(&mut wave.samples);
    let mut holds: Vec<Hold> = std::mem::take(&mut wave.holds);
    let holds_in_wave = {
        let mut ids: Vec<&str> = holds.iter().map(|h| h.reservation_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        ids.len() as u64
    };
    let wave_summary = stats::summarize(Phase::Wave, &samples, wave.facts.duration_s);
    log(format!(
        "wave done in {:.2} s: {} held, {} sold out",
        wave.facts.duration_s,
        wave_summary.count(Outcome::Held),
        wave_summary.count(Outcome::SoldOut)
    ));

    let mut skipped = Vec::new();
    let mut notes = Vec::new();

    // --- The sold-out phase's ceiling, part 1: /healthz right before it, as
    // long as it (part 2 is the HTTP ceiling window after the follow-ups).
    let so_hz_secs = args.soldout_seconds.clamp(2, 30);
    let soldout_healthz_before =
        healthz_window(&api, &args, so_hz_secs, &meter, &mut cpu, "hz_pre_so").await;

    // --- Sold-out phase, with the service's background Redis rate measured first.
    let idle = Duration::from_secs(1);
    let cs0 = redis::commandstats(&rc).await?;
    tokio::time::sleep(idle).await;
    let cs1 = redis::commandstats(&rc).await?;
    let cpu_before = meter.read();
    let bg = redis::delta(&cs0, &cs1);
    let bg_evalsha_per_sec = bg.get("evalsha").copied().unwrap_or(0) as f64 / idle.as_secs_f64();
    let so_start_us = epoch.elapsed().as_micros() as u64;
    let (so_answers, so_secs) = sale::hammer(
        args.connections,
        Duration::from_secs(args.soldout_seconds),
        args.phase_max_requests,
        {
            let (api, sku, run_id) = (api.clone(), sku.clone(), run_id.clone());
            move |i| {
                let (api, sku) = (api.clone(), sku.clone());
                let (user, key) = (format!("late{i}"), format!("{run_id}-late-{i}"));
                async move { api.reserve(Phase::SoldOut, &sku, &user, &key).await }
            }
        },
    )
    .await;
    let cs2 = redis::commandstats(&rc).await?;
    let so_end_us = epoch.elapsed().as_micros() as u64;
    let so_calls = redis::delta(&cs1, &cs2);
    let mut rng = Rng::new(args.seed ^ 0x5eed);
    let mut so_holds = 0;
    for a in &so_answers {
        samples.push(a.sample);
        if let (Outcome::Held, Some(rid)) = (a.sample.outcome, &a.reservation_id) {
            so_holds += 1;
            holds.push(Hold {
                reservation_id: rid.clone(),
                user: "late".into(),
                abusive: false,
                action: sale::pick_action(&mut rng, &shares),
            });
        }
    }
    let so_summary = stats::summarize(Phase::SoldOut, &samples, so_secs);
    cpu.extend(meter.per_answer("sold_out", &cpu_before, so_summary.requests));
    let so_requests = so_summary.requests.max(1) as f64;
    let evalsha = so_calls.get("evalsha").copied().unwrap_or(0) as f64;
    let sold_out_phase = SoldOutPhase {
        holds_created: so_holds,
        evalsha_per_request: evalsha / so_requests,
        evalsha_per_request_net: (evalsha - bg_evalsha_per_sec * so_secs).max(0.0) / so_requests,
        background_evalsha_per_sec: bg_evalsha_per_sec,
        redis_commands_per_request: so_calls.values().sum::<u64>() as f64 / so_requests,
        redis_calls: so_calls,
        summary: so_summary,
    };
    log(format!(
        "sold-out phase: {} answers/s",
        stats::ratio(sold_out_phase.summary.requests as f64, so_secs)
            .unwrap_or(0.0)
            .round()
    ));

    // --- Follow-ups: confirm or release; abandoned holds are left to expire.
    let fu_start = Instant::now();
    let fu_items: Vec<Hold> = holds.clone();
    let fu_results = sale::for_each(args.connections, fu_items, {
        let api = api.clone();
        move |h: &Hold| {
            let (api, h) = (api.clone(), h.clone());
            async move {
                match h.action {
                    Action::Confirm => Some(api.confirm(&h.reservation_id).await),
                    Action::Release => Some(api.release(&h.reservation_id).await),
                    Action::Abandon => None,
                }
            }
        }
    })
    .await;
    let fu_secs = fu_start.elapsed().as_secs_f64();
    for a in fu_results.iter().flatten() {
        samples.push(a.sample);
    }
    let followup = stats::summarize(Phase::Followup, &samples, fu_secs);
    let followups_done = Instant::now();
    if (followups_done - epoch).as_secs_f64() >= args.hold_seconds as f64 {
        notes.push(format!(
            "the wave, sold-out phase and follow-ups took longer than a hold ({} s): holds may have expired before \
             their follow-up (counted as lost confirm/release) and units may have come back during the sold-out \
             phase (201s after the no-expiry window prove nothing); raise --hold-seconds",
            args.hold_seconds
        ));
    }

    // --- HTTP ceiling: healthz on the same connections, as long as the
    // sold-out phase (or the wave, if longer) that it is compared with.
    let hz_secs = args.healthz_seconds.unwrap_or_else(|| {
        (wave.facts.duration_s.ceil() as u64)
            .max(args.soldout_seconds)
            .clamp(2, 30)
    });
    log(format!("healthz baseline for {hz_secs} s"));
    let healthz = healthz_window(&api, &args, hz_secs, &meter, &mut cpu, "healthz").await;

    // --- Wait for abandoned holds to expire (held == 0), within a deadline.
    let wait = Duration::from_secs(args.expiry_wait_seconds.unwrap_or(args.hold_seconds + 15));
    let deadline = followups_done + wait;
    log(format!(
        "waiting up to {:.0} s for abandoned holds to expire",
        deadline
            .saturating_duration_since(Instant::now())
            .as_secs_f64()
    ));
    let mut api_totals = None;
    loop {
        if let Ok(j) = setup.sku(&sku).await {
            api_totals = sku_totals(&j);
        }
        if api_totals.is_some_and(|t| t.held == 0) || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // --- Books: final status of every 201, API totals, Redis shards.
    let statuses = sale::for_each(args.connections.min(32), holds.clone(), {
        let api = setup.clone();
        move |h: &Hold| {
            let (api, id) = (api.clone(), h.reservation_id.clone());
            async move { api.reservation_status(&id).await }
        }
    })
    .await;
    let records: Vec<HoldRecord> = holds
        .iter()
        .zip(fu_results.iter())
        .zip(statuses)
        .map(|((h, fu), st)| HoldRecord {
            reservation_id: h.reservation_id.clone(),
            action: h.action,
            action_ok: fu.as_ref().map(|a| a.status == 200),
            final_status: st,
        })
        .collect();
    if let Ok(j) = setup.sku(&sku).await {
        api_totals = sku_totals(&j);
    }
    let shards = match redis::read_shards(&rc, &sku, args.shards).await {
        Ok(s) => Some(s),
        Err(e) => {
            skipped.push(format!("Redis shard books: {e:#}"));
            None
        }
    };
    let book_report = books::check(&BookInput {
        expected_initial: (!args.no_preload).then_some(args.stock as i64),
        redis_shards: shards.as_deref(),
        api: api_totals,
        holds: &records,
        holds_in_wave,
    });

    // --- Baselines without HTTP.
    let redis_baseline = if args.no_redis_baseline {
        None
    } else {
        log("Redis baseline (redis-benchmark)");
        match redis::baseline(
            &rc,
            &redis_url,
            &args.lua_dir,
            &args.redis_benchmark_bin,
            args.connections,
            args.redis_bench_requests,
            &run_id,
        )
        .await
        {
            Ok(b) => Some(b),
            Err(e) => {
                skipped.push(format!("Redis baseline: {e:#}"));
                None
            }
        }
    };
    let sql_baseline = if args.no_sql {
        None
    } else {
        let clients = args.connections.min(64);
        log(format!("SQL baseline ({clients} clients)"));
        match sql::baseline(
            &args.pg,
            clients,
            Duration::from_secs(args.sql_seconds),
            args.phase_max_requests,
        )
        .await
        {
            Ok(b) => Some(b),
            Err(e) => {
                skipped.push(format!("SQL baseline: {e:#}"));
                None
            }
        }
    };

    // --- Capacity: reserve with stock to spare (run last: its holds expire
    // later and would otherwise load Redis during the other baselines).
    let mut capacity_redis = None;
    let mut capacity_healthz: Option<[PhaseSummary; 2]> = None;
    let capacity = if args.capacity_seconds == 0 || args.no_preload {
        None
    } else {
        let cap_sku = format!("{sku}-cap");
        let cap_stock = args.phase_max_requests + 1;
        match procs::preload(
            &args.flashgate_bin,
            &redis_url,
            &cap_sku,
            cap_stock,
            args.shards,
            None,
        )
        .await
        {
            Err(e) => {
                skipped.push(format!("capacity phase: {e:#}"));
                None
            }
            Ok(_) => {
                // the capacity's own ceiling: healthz right before and right
                // after it, as long as it (the machine's speed drifts)
                log(format!(
                    "healthz, capacity phase on {cap_sku}, healthz: {} s each",
                    args.capacity_seconds
                ));
                let hz_secs = args.capacity_seconds.clamp(2, 30);
                let cap_hz_before =
                    healthz_window(&api, &args, hz_secs, &meter, &mut cpu, "hz_before").await;
                let cpu_before = meter.read();
                let acct0 = redis::accounting(&rc).await;
                let (answers, secs) = sale::hammer(
                    args.connections,
                    Duration::from_secs(args.capacity_seconds),
                    args.phase_max_requests,
                    {
                        let (api, run_id) = (api.clone(), run_id.clone());
                        move |i| {
                            let (api, sku) = (api.clone(), cap_sku.clone());
                            let (user, key) = (format!("cap{i}"), format!("{run_id}-cap-{i}"));
                            async move { api.reserve(Phase::Capacity, &sku, &user, &key).await }
                        }
                    },
                )
                .await;
                let acct1 = redis::accounting(&rc).await;
                let cap_samples: Vec<_> = answers.iter().map(|a| a.sample).collect();
                let summary = stats::summarize(Phase::Capacity, &cap_samples, secs);
                cpu.extend(meter.per_answer("capacity", &cpu_before, summary.requests));
                let cap_hz_after =
                    healthz_window(&api, &args, hz_secs, &meter, &mut cpu, "hz_after").await;
                capacity_healthz = Some([cap_hz_before, cap_hz_after]);
                // Redis's work per hold over the phase (the sweeper's few
                // background calls included)
                match (acct0, acct1) {
                    (Ok(a0), Ok(a1)) => {
                        capacity_redis = redis::cost(&a0, &a1, summary.count(Outcome::Held));
                    }
                    (Err(e), _) | (_, Err(e)) => {
                        skipped.push(format!("Redis cost of the capacity phase: {e:#}"));
                    }
                }
                Some(summary)
            }
        }
    };

    for mut p in owned {
        if let Err(e) = p.check_alive() {
            skipped.push(format!("{e:#}"));
        }
        p.stop().await;
    }

    // --- Report.
    let time_to_sell_out_ms =
        stats::time_to_sell_out_ms(&samples).map(|ms| ms - wave_t0_us as f64 / 1000.0);
    let held_in_wave = wave_summary.count(Outcome::Held) as f64;
    let sold_out_in_wave = book_report.holds_in_wave >= args.stock;
    let admitted_window_s = if sold_out_in_wave {
        time_to_sell_out_ms.unwrap_or(0.0) / 1000.0
    } else {
        wave.facts.duration_s
    };
    let admitted_reserves_per_sec = ratio(held_in_wave, admitted_window_s).unwrap_or(0.0);
    let mut false_sold_out = stats::false_sold_out(&samples, args.hold_seconds * 1_000_000);
    let t0_ms = wave_t0_us as f64 / 1000.0;
    false_sold_out.first_sold_out_ms = false_sold_out.first_sold_out_ms.map(|t| t - t0_ms);
    false_sold_out.last_hold_sent_ms = false_sold_out.last_hold_sent_ms.map(|t| t - t0_ms);
    false_sold_out.window_end_ms = false_sold_out.window_end_ms.map(|t| t - t0_ms);
    let hz_rate = healthz.per_sec;
    let so_rate = sold_out_phase.summary.rate(Outcome::SoldOut);
    let sustained = capacity.as_ref().map_or(0.0, |c| c.rate(Outcome::Held));
    // the capacity phase against the healthz windows around it (their mean)
    let capacity_hz_rate = capacity_healthz
        .as_ref()
        .map_or(hz_rate, |[b, a]| (b.per_sec + a.per_sec) / 2.0);
    let ratios = Ratios {
        sustained_reserves_over_healthz: ratio(sustained, capacity_hz_rate),
        sustained_reserves_over_sql_tps: sql_baseline
            .as_ref()
            .and_then(|q| ratio(sustained, q.tps)),
        sustained_reserves_over_redis_reserve: redis_baseline
            .as_ref()
            .and_then(|b| b.reserve_held.as_ref())
            .and_then(|l| ratio(sustained, l.rps)),
        admitted_reserves_over_healthz: ratio(admitted_reserves_per_sec, hz_rate),
        // over the windows right before and (after the short follow-ups) after it
        sold_out_answers_over_healthz: ratio(
            so_rate,
            (soldout_healthz_before.per_sec + hz_rate) / 2.0,
        ),
        wave_answers_over_healthz: ratio(wave_summary.per_sec, hz_rate),
        admitted_reserves_over_sql_tps: sql_baseline
            .as_ref()
            .and_then(|q| ratio(admitted_reserves_per_sec, q.tps)),
        admitted_reserves_over_redis_reserve: redis_baseline
            .as_ref()
            .and_then(|b| b.reserve_held.as_ref())
            .and_then(|l| ratio(admitted_reserves_per_sec, l.rps)),
        sold_out_answers_over_redis_dry: redis_baseline
            .as_ref()
            .and_then(|b| b.reserve_dry.as_ref())
            .and_then(|l| ratio(so_rate, l.rps)),
    };
    let chart_samples: Vec<_> = samples
        .iter()
        .copied()
        .filter(|s| matches!(s.phase, Phase::Wave | Phase::SoldOut))
        .collect();
    let mut timeline = stats::timeline(
        &chart_samples,
        wave_t0_us,
        so_end_us.max(wave_end_us),
        args.bucket_ms,
    );
    for b in &mut timeline {
        b.start_ms -= wave_t0_us / 1000;
    }
    let mut stock_timeline = wave.stock.clone();
    for p in &mut stock_timeline {
        p.t_ms -= t0_ms;
    }
    if !sold_out_in_wave {
        notes.push(format!(
            "the wave did not sell out ({holds_in_wave} of {} units held): the sold-out phase did not measure sold-out answers only",
            args.stock
        ));
    }
    notes.push(
        "latencies are from send to the whole answer on a closed loop of --connections workers (no coordinated-omission \
         correction); the load generator, flashgate and Redis share the machine's CPUs"
            .into(),
    );
    let marks = vec![((so_start_us - wave_t0_us) as f64 / 1e6, "sold-out phase")];

    let report = Report {
        cpu,
        run_id: run_id.clone(),
        started_unix,
        settings: Settings {
            target: base.clone(),
            redis_url: redis_url.clone(),
            redis_cluster: redis::is_cluster_url(&redis_url),
            redis_masters,
            spawned: args.spawn,
            sku: sku.clone(),
            buyers: args.buyers,
            stock: args.stock,
            shards: args.shards,
            connections: args.connections,
            ramp_ms: args.ramp_ms,
            retry_share: args.retry_share,
            abusive_share: args.abusive_share,
            abusive_requests: args.abusive_requests,
            confirm_share: args.confirm_share,
            release_share: args.release_share,
            hold_seconds: args.hold_seconds,
            max_per_user: args.max_per_user,
            api_key_sent: api_key.is_some(),
            soldout_seconds: args.soldout_seconds,
            loadgen_threads: args.threads,
            seed: args.seed,
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        },
        wave: wave_summary,
        wave_facts: wave.facts,
        time_to_sell_out_ms: if sold_out_in_wave {
            time_to_sell_out_ms
        } else {
            None
        },
        admitted_reserves_per_sec,
        false_sold_out,
        sold_out_phase: Some(sold_out_phase),
        followup,
        healthz,
        books: book_report,
        soldout_healthz_before,
        capacity,
        capacity_healthz,
        capacity_redis,
        redis_baseline,
        sql_baseline,
        ratios,
        skipped,
        notes,
        timeline,
        stock_timeline,
    };
    let json_path = run_dir.join("summary.json");
    std::fs::write(&json_path, serde_json::to_vec_pretty(&report)?)?;
    let png_path = run_dir.join("chart.png");
    let text = chart::load_font(&args.font);
    let title = format!(
        "flashgate {}: {} buyers, {} units / {} shards, {} connections",
        run_id, args.buyers, args.stock, args.shards, args.connections
    );
    if let Err(e) = chart::draw(
        &png_path,
        &title,
        &report.timeline,
        &report.stock_timeline,
        &marks,
        text,
    ) {
        log(format!("chart not drawn: {e:#}"));
    }
    let table = crate::report::render(&report);
    std::fs::write(run_dir.join("summary.txt"), &table)?;
    println!("{table}");
    println!(
        "files: {}, {}, {}",
        json_path.display(),
        png_path.display(),
        run_dir.join("summary.txt").display()
    );
    Ok(report.passed())
}

/// `GET /healthz` on every connection for `secs`: the HTTP ceiling of the
/// moment, with its CPU per answer recorded under `label`.
async fn healthz_window(
    api: &Api,
    args: &Args,
    secs: u64,
    meter: &CpuMeter,
    cpu: &mut Vec<CpuLine>,
    label: &str,
) -> PhaseSummary {
    let cpu_before = meter.read();
    let (hz, hz_elapsed) = sale::hammer(
        args.connections,
        Duration::from_secs(secs),
        args.phase_max_requests,
        {
            let api = api.clone();
            move |_| {
                let api = api.clone();
                async move { api.healthz().await }
            }
        },
    )
    .await;
    let samples: Vec<_> = hz.iter().map(|a| a.sample).collect();
    let summary = stats::summarize(Phase::Healthz, &samples, hz_elapsed);
    cpu.extend(meter.per_answer(label, &cpu_before, summary.requests));
    summary
}

/// CPU seconds of the spawned processes and of the load generator itself.
struct CpuMeter {
    procs: Vec<(&'static str, Option<u32>)>,
}

impl CpuMeter {
    fn read(&self) -> Vec<Option<f64>> {
        let mut v: Vec<Option<f64>> = self
            .procs
            .iter()
            .map(|(_, pid)| pid.and_then(|p| procs::cpu_seconds(Some(p))))
            .collect();
        v.push(procs::cpu_seconds(None));
        v
    }

    /// µs of CPU per answer of the phase that started at `before`.
    fn per_answer(&self, phase: &str, before: &[Option<f64>], answers: u64) -> Vec<CpuLine> {
        let names = self.procs.iter().map(|(n, _)| *n).chain(["loadtest"]);
        names
            .zip(before.iter().zip(self.read()))
            .filter_map(|(process, (b, a))| {
                let used = a? - (*b)?;
                Some(CpuLine {
                    phase: phase.to_string(),
                    process: process.to_string(),
                    cpu_seconds: used,
                    us_per_answer: used * 1e6 / answers.max(1) as f64,
                })
            })
            .collect()
    }
}
