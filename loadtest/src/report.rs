//! The run's results: one serialisable [`Report`] (written as summary.json)
//! and the table printed to stdout.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::books::BookReport;
use crate::redis::{RedisBaseline, RedisCost};
use crate::sale::{StockPoint, WaveFacts};
use crate::sql::SqlBaseline;
use crate::stats::{Bucket, FalseSoldOut, Outcome, PhaseSummary};

#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub target: String,
    pub redis_url: String,
    /// A Redis Cluster (`redis-cluster://`), and how many masters it has (1
    /// for one redis-server).
    pub redis_cluster: bool,
    pub redis_masters: usize,
    pub spawned: bool,
    pub sku: String,
    pub buyers: u64,
    pub stock: u64,
    pub shards: u32,
    pub connections: usize,
    pub ramp_ms: u64,
    pub retry_share: f64,
    pub abusive_share: f64,
    pub abusive_requests: u32,
    pub confirm_share: f64,
    pub release_share: f64,
    pub hold_seconds: u64,
    pub max_per_user: Option<u32>,
    pub api_key_sent: bool,
    pub soldout_seconds: u64,
    pub loadgen_threads: usize,
    pub seed: u64,
    pub cpus: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct SoldOutPhase {
    pub summary: PhaseSummary,
    /// 201s during the phase (stock was not gone after all).
    pub holds_created: u64,
    /// Redis calls per command over the phase (INFO commandstats delta).
    pub redis_calls: BTreeMap<String, u64>,
    pub evalsha_per_request: f64,
    /// Same, after subtracting the service's background EVALSHA rate (sweeper)
    /// measured over an idle second before the phase.
    pub evalsha_per_request_net: f64,
    pub background_evalsha_per_sec: f64,
    /// All Redis commands per request, including those run inside scripts.
    pub redis_commands_per_request: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Ratios {
    /// Sustained 201/s of the capacity phase over the baselines.
    pub sustained_reserves_over_healthz: Option<f64>,
    pub sustained_reserves_over_sql_tps: Option<f64>,
    pub sustained_reserves_over_redis_reserve: Option<f64>,
    pub admitted_reserves_over_healthz: Option<f64>,
    pub sold_out_answers_over_healthz: Option<f64>,
    pub wave_answers_over_healthz: Option<f64>,
    pub admitted_reserves_over_sql_tps: Option<f64>,
    pub admitted_reserves_over_redis_reserve: Option<f64>,
    pub sold_out_answers_over_redis_dry: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub run_id: String,
    pub started_unix: u64,
    pub settings: Settings,
    pub wave: PhaseSummary,
    pub wave_facts: WaveFacts,
    pub time_to_sell_out_ms: Option<f64>,
    /// 201s per second from T0 until the last 201 of the wave.
    pub admitted_reserves_per_sec: f64,
    pub false_sold_out: FalseSoldOut,
    pub sold_out_phase: Option<SoldOutPhase>,
    pub followup: PhaseSummary,
    pub healthz: PhaseSummary,
    /// `/healthz` right before the sold-out phase, as long as it: the sold-out
    /// ratio is over its mean with [`Report::healthz`] (right after it).
    pub soldout_healthz_before: PhaseSummary,
    pub books: BookReport,
    /// Reserve on a SKU that cannot run out: the sustained rate.
    pub capacity: Option<PhaseSummary>,
    /// `/healthz` right before and right after the capacity phase, as long as
    /// it: the sustained rate's ratio is over their mean.
    pub capacity_healthz: Option<[PhaseSummary; 2]>,
    /// Redis's work per hold in the capacity phase (all masters).
    pub capacity_redis: Option<RedisCost>,
    pub redis_baseline: Option<RedisBaseline>,
    pub sql_baseline: Option<SqlBaseline>,
    pub ratios: Ratios,
    /// Phases that could not run, and why.
    pub skipped: Vec<String>,
    /// Caveats on how to read this run.
    pub notes: Vec<String>,
    pub timeline: Vec<Bucket>,
    pub stock_timeline: Vec<StockPoint>,
    /// CPU used per answer by each process in the fixed-length phases.
    pub cpu: Vec<CpuLine>,
}

/// CPU one process used in one phase (`/proc/<pid>/stat`, 10 ms resolution).
#[derive(Debug, Clone, Serialize)]
pub struct CpuLine {
    pub phase: String,
    pub process: String,
    pub cpu_seconds: f64,
    pub us_per_answer: f64,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.books.ok() && self.wave_facts.replay_mismatches == 0
    }
}

fn n(x: u64) -> String {
    let s = x.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn f(x: f64) -> String {
    if x >= 100.0 {
        n(x.round() as u64)
    } else {
        format!("{x:.2}")
    }
}

fn opt(x: Option<f64>, suffix: &str) -> String {
    x.map_or_else(|| "n/a".into(), |v| format!("{}{suffix}", f(v)))
}

fn phase_table(out: &mut String, p: &PhaseSummary) {
    let _ = writeln!(
        out,
        "  {:<18} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9}",
        "outcome", "count", "per s", "p50 ms", "p90 ms", "p99 ms", "max ms"
    );
    for o in &p.outcomes {
        let l = o.latency;
        let _ = writeln!(
            out,
            "  {:<18} {:>10} {:>10} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            o.outcome,
            n(o.count),
            f(o.per_sec),
            l.p50_ms,
            l.p90_ms,
            l.p99_ms,
            l.max_ms
        );
    }
    let l = p.latency;
    let _ = writeln!(
        out,
        "  {:<18} {:>10} {:>10} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
        "all",
        n(p.requests),
        f(p.per_sec),
        l.p50_ms,
        l.p90_ms,
        l.p99_ms,
        l.max_ms
    );
}

/// Redis's work per hold: CPU, and calls and execution time of the
/// commands a reserve sends (EVALSHA = the shard's script; SET = the key's
/// idempotency record, plus the SETs inside scripts).
fn redis_cost_line(c: &RedisCost) -> String {
    let per = |cmd: &str| {
        let calls = c.calls_per_unit.get(cmd).copied().unwrap_or(0.0);
        let us = c.usec_per_call.get(cmd).copied().unwrap_or(0.0);
        format!("{calls:.2} {} x {us:.1} µs", cmd.to_uppercase())
    };
    let all: f64 = c.calls_per_unit.values().sum();
    format!(
        "  Redis per hold: {:.1} µs server CPU (all masters); {}, {} (executing); {all:.1} commands incl. inside scripts",
        c.cpu_us_per_unit,
        per("evalsha"),
        per("set")
    )
}

/// "one redis-server" or "Redis Cluster of N masters".
fn redis_kind(s: &Settings) -> String {
    match (s.redis_cluster, s.redis_masters) {
        (false, _) => "one redis-server".into(),
        (true, 1) => "Redis Cluster of 1 master".into(),
        (true, m) => format!("Redis Cluster of {m} masters"),
    }
}

pub fn render(r: &Report) -> String {
    let s = &r.settings;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "flashgate load test {}: {} buyers, {} units over {} shards, {} connections, {}; {}; {} CPUs shared by load generator ({} thread{}), flashgate and Redis",
        r.run_id,
        n(s.buyers),
        n(s.stock),
        s.shards,
        s.connections,
        if s.ramp_ms == 0 { "burst at T0".to_string() } else { format!("ramp over {} ms", s.ramp_ms) },
        redis_kind(s),
        s.cpus,
        s.loadgen_threads,
        if s.loadgen_threads == 1 { "" } else { "s" },
    );
    let _ = writeln!(
        o,
        "  retry share {}, abusive share {} x {} requests, confirm {} / release {} / abandon {}, holds last {} s, purchase cap {}",
        s.retry_share,
        s.abusive_share,
        s.abusive_requests,
        s.confirm_share,
        s.release_share,
        ((1.0 - s.confirm_share - s.release_share) * 100.0).round() / 100.0,
        s.hold_seconds,
        s.max_per_user.map_or("none".into(), |m| m.to_string())
    );

    let w = &r.wave_facts;
    let _ = writeln!(
        o,
        "\n== Sale wave: {:.3} s, {} requests, {} answers/s",
        r.wave.duration_s,
        n(r.wave.requests),
        f(r.wave.per_sec)
    );
    phase_table(&mut o, &r.wave);
    let _ = writeln!(
        o,
        "  time to sell out: {}; admitted reserves/s: {}",
        opt(r.time_to_sell_out_ms, " ms"),
        f(r.admitted_reserves_per_sec)
    );
    let fs = &r.false_sold_out;
    let _ = writeln!(
        o,
        "  false sold-out: {} proven of {} sold-out answers in the wave and sold-out phase (first 409 at {}, last 201 sent at {} within the no-expiry window ending at {}; {} 201s after it); available at the sell-out probe: {}",
        n(fs.proven_false),
        n(fs.sold_out_answers),
        opt(fs.first_sold_out_ms, " ms"),
        opt(fs.last_hold_sent_ms, " ms"),
        opt(fs.window_end_ms, " ms"),
        n(fs.holds_after_window),
        w.available_at_first_sold_out.map_or("n/a".into(), |a| a.to_string())
    );
    let _ = writeln!(
        o,
        "  retrying buyers {}: replays ok {}, mismatched {}, unanswered {}; abusive buyers {}: holds {}; max holds per user {}; unstarted buyers {}",
        n(w.retrying_buyers),
        n(w.replays_ok),
        n(w.replay_mismatches),
        n(w.replays_unanswered),
        n(w.abusive_buyers),
        n(w.holds_by_abusive_buyers),
        w.max_holds_per_user,
        n(w.unstarted_buyers)
    );

    if let Some(so) = &r.sold_out_phase {
        let _ = writeln!(
            o,
            "\n== Sold-out phase: {:.2} s, {} answers/s",
            so.summary.duration_s,
            f(so.summary.per_sec)
        );
        phase_table(&mut o, &so.summary);
        let _ = writeln!(
            o,
            "  Redis per request: {:.3} EVALSHA ({:.3} net of {:.1}/s background), {:.2} commands incl. inside scripts; holds created {}",
            so.evalsha_per_request,
            so.evalsha_per_request_net,
            so.background_evalsha_per_sec,
            so.redis_commands_per_request,
            so.holds_created
        );
    }

    let _ = writeln!(
        o,
        "\n== Follow-ups (confirm/release): {:.2} s",
        r.followup.duration_s
    );
    phase_table(&mut o, &r.followup);

    let b = &r.books;
    let _ = writeln!(
        o,
        "\n== Books: {}",
        if b.ok() { "OK" } else { "VIOLATIONS" }
    );
    if let Some(api) = b.api {
        let _ = writeln!(
            o,
            "  API: available {}, held {}, sold {} (initial {}); expiry done: {}",
            api.available,
            api.held,
            api.sold,
            b.expected_initial.map_or("?".into(), |i| i.to_string()),
            b.expiry_done
        );
    }
    for sh in &b.redis_shards {
        let _ =
            writeln!(
            o,
            "  shard {}: initial {} + xin {} - xout {} = stock {} + held {} + sold {}  (drift {})",
            sh.shard, sh.initial, sh.xin, sh.xout, sh.stock, sh.held, sh.sold, sh.drift()
        );
    }
    let _ = writeln!(
        o,
        "  201s: {} distinct ids ({} in the wave) -> confirmed {} + released {} + abandoned {} + lost confirm/release {}; final statuses {:?}",
        b.distinct_holds, b.holds_in_wave, b.confirmed_ok, b.released_ok, b.abandoned, b.action_lost, b.final_statuses
    );
    let _ = writeln!(o, "  oversold: {}", b.oversold);
    for v in b.violations.iter().take(20) {
        let _ = writeln!(o, "  VIOLATION: {v}");
    }
    if b.violations.len() > 20 {
        let _ = writeln!(
            o,
            "  ... and {} more (summary.json)",
            b.violations.len() - 20
        );
    }

    if !r.cpu.is_empty() {
        let _ = writeln!(o, "\n== CPU per answer (µs; user + system, all threads)");
        let mut phases: Vec<&str> = r.cpu.iter().map(|c| c.phase.as_str()).collect();
        phases.dedup();
        for p in phases {
            let parts: Vec<String> = r
                .cpu
                .iter()
                .filter(|c| c.phase == p)
                .map(|c| format!("{} {:.1}", c.process, c.us_per_answer))
                .collect();
            let _ = writeln!(o, "  {p:<9} {}", parts.join(", "));
        }
    }
    let _ = writeln!(o, "\n== Baselines");
    let h = &r.healthz;
    let _ = writeln!(
        o,
        "  HTTP ceiling  GET /healthz, {} conns, {:.1} s: {} req/s, p50 {:.2} ms, p99 {:.2} ms (non-200: {})",
        s.connections,
        h.duration_s,
        f(h.per_sec),
        h.latency.p50_ms,
        h.latency.p99_ms,
        h.requests - h.count(Outcome::Ok)
    );
    // the windows around the sold-out and capacity phases
    let mut windows: Vec<(&str, &PhaseSummary)> = Vec::new();
    windows.push(("before sold-out", &r.soldout_healthz_before));
    if let Some([before, after]) = &r.capacity_healthz {
        windows.push(("before capacity", before));
        windows.push(("after  capacity", after));
    }
    for (when, h) in windows {
        let _ = writeln!(
            o,
            "  HTTP ceiling  {when}, {:.1} s: {} req/s, p99 {:.2} ms (non-200: {})",
            h.duration_s,
            f(h.per_sec),
            h.latency.p99_ms,
            h.requests - h.count(Outcome::Ok)
        );
    }
    if let Some(c) = &r.capacity {
        let _ = writeln!(
            o,
            "  flashgate     reserve with stock to spare, {} conns, {:.1} s: {} holds/s, p50 {:.2} ms, p99 {:.2} ms (all answers {}/s)",
            s.connections,
            c.duration_s,
            f(c.rate(Outcome::Held)),
            c.outcome_latency(Outcome::Held).p50_ms,
            c.outcome_latency(Outcome::Held).p99_ms,
            f(c.per_sec)
        );
        if let Some(rc) = &r.capacity_redis {
            let _ = writeln!(o, "{}", redis_cost_line(rc));
        }
    }
    match &r.redis_baseline {
        Some(rb) => {
            for (i, (name, line, cost)) in [
                ("held", &rb.reserve_held, &rb.held_cost),
                ("dry ", &rb.reserve_dry, &rb.dry_cost),
            ]
            .into_iter()
            .enumerate()
            {
                if let Some(l) = line {
                    let per_master = if rb.masters > 1 {
                        let rates: Vec<String> = rb
                            .per_master
                            .iter()
                            .map(|m| f(if i == 0 { m.1.rps } else { m.2.rps }))
                            .collect();
                        format!(
                            " ({} masters at once: {}; p50/p99 of the worst)",
                            rb.masters,
                            rates.join(" + ")
                        )
                    } else {
                        String::new()
                    };
                    let _ = writeln!(
                        o,
                        "  Redis limit   EVALSHA reserve.lua ({name}), {} clients, {} calls: {} calls/s, p50 {:.3} ms, p99 {:.3} ms{per_master}",
                        rb.clients,
                        n(rb.requests),
                        f(l.rps),
                        l.p50_ms,
                        l.p99_ms
                    );
                    if let Some(c) = cost {
                        let _ = writeln!(
                            o,
                            "                {:.1} µs server CPU per call (all masters), EVALSHA {:.1} µs executing",
                            c.cpu_us_per_unit,
                            c.usec_per_call.get("evalsha").copied().unwrap_or(0.0)
                        );
                    }
                }
            }
        }
        None => {
            let _ = writeln!(o, "  Redis limit   not measured");
        }
    }
    match &r.sql_baseline {
        Some(q) => {
            let _ = writeln!(
                o,
                "  naive SQL     UPDATE one hot row, {} clients, {:.1} s (synchronous_commit={}): {} tps, p50 {:.2} ms, p99 {:.2} ms, errors {}",
                q.clients,
                q.duration_s,
                q.synchronous_commit,
                f(q.tps),
                q.latency.p50_ms,
                q.latency.p99_ms,
                q.errors
            );
        }
        None => {
            let _ = writeln!(o, "  naive SQL     not measured");
        }
    }
    let ra = &r.ratios;
    let _ = writeln!(o, "\n== Ratios");
    let rows = [
        (
            "sustained reserves/s / healthz req/s (around it)",
            ra.sustained_reserves_over_healthz,
        ),
        (
            "sustained reserves/s / SQL tps",
            ra.sustained_reserves_over_sql_tps,
        ),
        (
            "sustained reserves/s / Redis reserve calls/s",
            ra.sustained_reserves_over_redis_reserve,
        ),
        (
            "admitted reserves/s (sale) / healthz req/s",
            ra.admitted_reserves_over_healthz,
        ),
        (
            "admitted reserves/s (sale) / SQL tps",
            ra.admitted_reserves_over_sql_tps,
        ),
        (
            "admitted reserves/s (sale) / Redis reserve calls/s",
            ra.admitted_reserves_over_redis_reserve,
        ),
        (
            "sold-out answers/s / healthz req/s (around it)",
            ra.sold_out_answers_over_healthz,
        ),
        (
            "sold-out answers/s / Redis dry calls/s",
            ra.sold_out_answers_over_redis_dry,
        ),
        (
            "wave answers/s / healthz req/s",
            ra.wave_answers_over_healthz,
        ),
    ];
    for (name, v) in rows {
        let _ = writeln!(o, "  {name:<52} {}", opt(v, ""));
    }
    for sk in &r.skipped {
        let _ = writeln!(o, "  skipped: {sk}");
    }
    for n in &r.notes {
        let _ = writeln!(o, "  note: {n}");
    }
    let _ = writeln!(o, "\nverdict: {}", if r.passed() { "PASS" } else { "FAIL" });
    o
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_header_names_the_redis() {
        let mut s = super::Settings {
            target: String::new(),
            redis_url: String::new(),
            redis_cluster: false,
            redis_masters: 1,
            spawned: true,
            sku: String::new(),
            buyers: 1,
            stock: 1,
            shards: 1,
            connections: 1,
            ramp_ms: 0,
            retry_share: 0.0,
            abusive_share: 0.0,
            abusive_requests: 0,
            confirm_share: 0.0,
            release_share: 0.0,
            hold_seconds: 1,
            max_per_user: None,
            api_key_sent: false,
            soldout_seconds: 1,
            loadgen_threads: 1,
            seed: 0,
            cpus: 2,
        };
        assert_eq!(super::redis_kind(&s), "one redis-server");
        s.redis_cluster = true;
        s.redis_masters = 3;
        assert_eq!(super::redis_kind(&s), "Redis Cluster of 3 masters");
    }

    #[test]
    fn redis_cost_line() {
        let c = crate::redis::RedisCost {
            units: 1000,
            cpu_us_per_unit: 98.76,
            calls_per_unit: [("evalsha".to_string(), 1.0), ("set".to_string(), 2.0)]
                .into_iter()
                .collect(),
            usec_per_call: [("evalsha".to_string(), 30.04), ("set".to_string(), 1.5)]
                .into_iter()
                .collect(),
        };
        assert_eq!(
            super::redis_cost_line(&c),
            "  Redis per hold: 98.8 µs server CPU (all masters); 1.00 EVALSHA x 30.0 µs, 2.00 SET x 1.5 µs (executing); 3.0 commands incl. inside scripts"
        );
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(super::n(0), "0");
        assert_eq!(super::n(999), "999");
        assert_eq!(super::n(1000), "1,000");
        assert_eq!(super::n(1234567), "1,234,567");
        assert_eq!(super::f(12.345), "12.35");
        assert_eq!(super::f(12345.6), "12,346");
    }
}
