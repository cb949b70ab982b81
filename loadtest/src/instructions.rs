//! `--instructions N`: flashgate's CPU instructions per answer, counted by
//! valgrind's callgrind, for `/healthz`, a sold-out answer and a new hold.
//!
//! Rates and even CPU seconds on a shared two-core machine move by ±30 %
//! from one minute to the next; an instruction count hardly does (the
//! background tasks that run on timers — the expiry sweeper, the sold-out
//! mark's re-check — are slowed to once a minute here, so what is counted
//! is the requests' own work). So this is the figure for A/B
//! comparisons of the request path. It counts user-space instructions only
//! (no kernel, no cache misses) of requests sent one at a time over one
//! kept-alive connection: a hold here is a batch of one, unlike under load.
//! So a fourth kind, `hold_x64`, sends the same holds 64 at a time over 64
//! connections: they queue on flashgate's shard lanes and share script
//! calls as under load (the line also gives the script calls per hold).
//!
//! The run: a throw-away redis-server, two SKUs preloaded (one with as many
//! units as shards, sold out before counting; one with stock to spare),
//! flashgate under `valgrind --tool=callgrind`, a warm-up, then per kind of
//! request `callgrind_control --zero`, N requests, `callgrind_control
//! --dump`, and the dump's total divided by N.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use tokio::process::Command;

use crate::cli::Args;
use crate::http::Api;
use crate::procs;
use crate::stats::Phase;

/// Instructions per answer of one kind of request.
#[derive(Debug, Serialize)]
pub struct Count {
    pub kind: &'static str,
    pub requests: u64,
    pub instructions_per_request: f64,
    /// ÷ the `/healthz` figure of the same run.
    pub vs_healthz: f64,
    /// `EVALSHA` calls Redis ran per request of this kind.
    pub script_calls_per_request: f64,
}

/// Requests in flight at once for `hold_x64`.
const CONCURRENT: usize = 64;

pub async fn run(args: &Args, n: u64) -> anyhow::Result<bool> {
    for tool in ["valgrind", "callgrind_control"] {
        which(tool).with_context(|| {
            format!("{tool} not found: install valgrind (Debian: apt-get install valgrind)")
        })?;
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let run_dir = args.out_dir.join(format!("instructions-{stamp}"));
    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let run_dir = run_dir.canonicalize()?;
    let (redis, url) = procs::spawn_redis(&args.redis_server_bin, &run_dir).await?;
    let shards = args.shards;
    for (sku, stock) in [("IC-SOLDOUT", u64::from(shards)), ("IC-HOLD", 10_000_000)] {
        procs::preload(&args.flashgate_bin, &url, sku, stock, shards, None).await?;
    }
    let key = format!("instructions-{stamp}-key-0123456789");
    let out = run_dir.join("callgrind.out");
    let wrapper = vec![
        "valgrind".to_string(),
        "--tool=callgrind".to_string(),
        format!("--callgrind-out-file={}", out.display()),
    ];
    // The background tasks run on timers, not per request: at valgrind's
    // speed their share of a phase would grow ~50-fold. Once a minute each
    // (the expiry sweeper with its chores, the sold-out mark's re-check).
    let background = [
        ("FLASHGATE_SWEEP_INTERVAL_MS", "60000"),
        ("FLASHGATE_SOLD_OUT_CACHE_MS", "60000"),
    ];
    let (fg, base) = procs::spawn_flashgate_under(
        &wrapper,
        &background,
        &args.flashgate_bin,
        &url,
        600,
        &run_dir,
        &key,
    )
    .await?;
    let pid = fg.pid().context("flashgate exited")?;
    let api =
        Api::new(&base, 1, Duration::from_secs(60), Instant::now()).with_api_key(Some(&key))?;
    let crowd = Api::new(&base, CONCURRENT, Duration::from_secs(120), Instant::now())
        .with_api_key(Some(&key))?;
    let stats = crate::redis::connect(&url).await?;
    eprintln!("[instructions] flashgate under callgrind at {base}; {n} requests per kind");

    let mut seq = 0u64;
    let mut next = || {
        seq += 1;
        (format!("icu{seq}"), format!("ick-{stamp}-{seq}"))
    };
    // sell IC-SOLDOUT out (one unit per shard), then warm every path up
    for _ in 0..u64::from(shards) {
        let (user, k) = next();
        api.reserve(Phase::Wave, "IC-SOLDOUT", &user, &k).await;
    }
    for _ in 0..50 {
        api.healthz().await;
        let (user, k) = next();
        api.reserve(Phase::Wave, "IC-SOLDOUT", &user, &k).await;
        let (user, k) = next();
        api.reserve(Phase::Wave, "IC-HOLD", &user, &k).await;
    }

    let mut counts = Vec::new();
    let mut healthz = None;
    for (kind, want) in [
        ("healthz", 200u16),
        ("sold_out", 409),
        ("hold", 201),
        ("hold_x64", 201),
    ] {
        let calls_before = evalsha_calls(&stats).await?;
        control(pid, "--zero").await?;
        let statuses: Vec<u16> = if kind == "hold_x64" {
            use futures::stream::{self, StreamExt};
            let reqs: Vec<(String, String)> = (0..n).map(|_| next()).collect();
            stream::iter(reqs)
                .map(|(user, k)| {
                    let crowd = &crowd;
                    async move {
                        crowd
                            .reserve(Phase::Capacity, "IC-HOLD", &user, &k)
                            .await
                            .status
                    }
                })
                .buffer_unordered(CONCURRENT)
                .collect()
                .await
        } else {
            let mut statuses = Vec::new();
            for _ in 0..n {
                statuses.push(match kind {
                    "healthz" => api.healthz().await.status,
                    _ => {
                        let (user, k) = next();
                        let sku = if kind == "hold" {
                            "IC-HOLD"
                        } else {
                            "IC-SOLDOUT"
                        };
                        api.reserve(Phase::Capacity, sku, &user, &k).await.status
                    }
                });
            }
            statuses
        };
        let wrong = statuses.iter().filter(|&&s| s != want).count();
        control(pid, "--dump").await?;
        if wrong > 0 {
            bail!("{wrong} of {n} {kind} requests did not answer {want}");
        }
        let total = newest_total(&out).await?;
        let per = total as f64 / n as f64;
        let h = *healthz.get_or_insert(per);
        let calls = evalsha_calls(&stats).await?.saturating_sub(calls_before);
        counts.push(Count {
            kind,
            requests: n,
            instructions_per_request: per,
            vs_healthz: per / h,
            script_calls_per_request: calls as f64 / n as f64,
        });
    }
    fg.stop().await;
    redis.stop().await;

    println!(
        "flashgate instructions per answer (callgrind, user space, one request at a time, {n} each; hold_x64: {CONCURRENT} at a time)"
    );
    for c in &counts {
        println!(
            "  {:9} {:>9.0}   {:.2}x healthz   {:.3} script calls per answer",
            c.kind, c.instructions_per_request, c.vs_healthz, c.script_calls_per_request
        );
    }
    let json = run_dir.join("instructions.json");
    std::fs::write(&json, serde_json::to_vec_pretty(&counts)?)?;
    println!("  written to {}", json.display());
    Ok(true)
}

/// `EVALSHA` calls the server has run (INFO commandstats).
async fn evalsha_calls(client: &fred::clients::Client) -> anyhow::Result<u64> {
    Ok(crate::redis::commandstats(client)
        .await?
        .get("evalsha")
        .copied()
        .unwrap_or(0))
}

fn which(tool: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow::anyhow!("{tool} is not on PATH"))
}

async fn control(pid: u32, what: &str) -> anyhow::Result<()> {
    let args = [what.to_string(), pid.to_string()];
    let bin = Path::new("callgrind_control");
    procs::run_tool(
        Command::new(bin).args(&args),
        bin,
        &args,
        Duration::from_secs(60),
    )
    .await?;
    Ok(())
}

/// The instruction total of the newest dump `<out>.<n>`, once it is written.
async fn newest_total(out: &Path) -> anyhow::Result<u64> {
    let dir = out.parent().context("dump directory")?;
    let name = out
        .file_name()
        .and_then(|n| n.to_str())
        .context("dump name")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut newest: Option<(u32, PathBuf)> = None;
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let part = path
                .file_name()
                .and_then(|f| f.to_str())
                .and_then(|f| f.strip_prefix(name))
                .and_then(|f| f.strip_prefix('.'))
                .and_then(|f| f.parse::<u32>().ok());
            if let Some(part) = part {
                if newest.as_ref().is_none_or(|(p, _)| part > *p) {
                    newest = Some((part, path));
                }
            }
        }
        if let Some((_, path)) = &newest {
            if let Some(total) = dump_total(&std::fs::read_to_string(path)?) {
                return Ok(total);
            }
        }
        if Instant::now() >= deadline {
            bail!("no complete callgrind dump {}.N within 30 s", out.display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `summary:` (or `totals:`) line of a callgrind dump: instructions.
pub fn dump_total(dump: &str) -> Option<u64> {
    dump.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_total_of_a_dump() {
        let dump = "# callgrind format\nversion: 1\nevents: Ir\nfn=main\n3 10\nsummary: 73414065\ntotals: 73414065\n";
        assert_eq!(dump_total(dump), Some(73_414_065));
        assert_eq!(dump_total("events: Ir\nfn=x\n"), None);
    }
}
