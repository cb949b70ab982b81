//! flashgate-faults: a sale run under injected faults (issue 18). Each
//! fault gets a run of its own: a fresh redis-server (AOF everysec),
//! PostgreSQL, two flashgate instances and a ledger writer; buyers with
//! retries; the fault's windows; a resolve phase; then `history.jsonl` and
//! `final.json` in `<out>/<run-id>/` (docs/faults-history.md), then the
//! verdict of `flashgate-checker <run-dir>` when that binary exists (it
//! writes verdict.json and plot.svg, the timeline with the fault windows
//! shaded). Exits 1 when a checker verdict fails or a run breaks.
//!
//! Layout: `history` (the file), `client` (one recorded operation),
//! `workload` (the buyers), `procs` + `stack` (the processes), `nemesis`
//! (the faults), `cluster` (the cluster and its two faults), `run` (one run
//! end to end).

mod client;
mod cluster;
mod history;
mod nemesis;
mod procs;
mod run;
mod stack;
mod workload;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "A flashgate sale under injected faults, checked by flashgate-checker")]
struct Cli {
    /// The flashgate binary (debug or release).
    #[arg(long, default_value = "target/debug/flashgate")]
    flashgate_bin: PathBuf,
    /// Faults to run, one run each: redis-kill, redis-pause, flashgate-kill,
    /// writer-kill, postgres-restart, client-timeout, mixed (each in turn,
    /// some overlapping), none on a single Redis; cluster-failover,
    /// slot-migrate, cluster-mixed, cluster-none on a 3-master cluster with
    /// replicas; or all (each fault on its own, mixed and cluster-mixed).
    #[arg(long, value_delimiter = ',', default_value = "all")]
    faults: Vec<String>,
    /// Seconds of sale per run (faults on a schedule within it).
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    #[arg(long, default_value_t = 12)]
    clients: u32,
    /// flashgate's hold_seconds; extends reach 2x, tickets last it + 3 s.
    /// Short holds make the resolve phase (every hold ended) short.
    #[arg(long, default_value_t = 5)]
    hold_seconds: u64,
    /// The clients' normal timeout (longer than the server's 3 s request
    /// timeout; the client-timeout fault shortens it).
    #[arg(long, default_value_t = 6000)]
    client_timeout_ms: u64,
    /// The share of buyers who make a cart of 2–3 SKUs instead of one
    /// reserve (docs/carts.md).
    #[arg(long, default_value_t = 0.25)]
    cart_share: f64,
    /// 0: from the clock.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value = "faults-results")]
    out_dir: PathBuf,
    /// The checker; default: flashgate-checker beside this binary, else on PATH.
    #[arg(long)]
    checker: Option<PathBuf>,
}

fn find_checker(flag: Option<PathBuf>) -> Option<PathBuf> {
    if flag.is_some() {
        return flag;
    }
    let beside = std::env::current_exe()
        .ok()?
        .parent()?
        .join("flashgate-checker");
    if beside.exists() {
        return Some(beside);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("flashgate-checker"))
            .find(|p| p.exists())
    })
}

fn check(checker: &Option<PathBuf>, run_dir: &Path) -> Option<bool> {
    let bin = checker.as_ref()?;
    let status = std::process::Command::new(bin).arg(run_dir).status();
    match status {
        Ok(s) => Some(s.success()),
        Err(e) => {
            eprintln!("cannot run {}: {e}", bin.display());
            Some(false)
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut faults: Vec<String> = Vec::new();
    for f in &cli.faults {
        if f == "all" {
            faults.extend(nemesis::SINGLE.iter().map(|s| s.to_string()));
            faults.push("mixed".into());
            faults.extend(nemesis::CLUSTER.iter().map(|s| s.to_string()));
            faults.push("cluster-mixed".into());
        } else if nemesis::known(f) {
            faults.push(f.clone());
        } else {
            eprintln!("unknown fault {f:?}");
            return ExitCode::from(2);
        }
    }
    if !cli.flashgate_bin.exists() {
        eprintln!(
            "{} not found (cargo build -p flashgate)",
            cli.flashgate_bin.display()
        );
        return ExitCode::from(2);
    }
    let checker = find_checker(cli.checker.clone());
    if checker.is_none() {
        eprintln!("flashgate-checker not found: runs are recorded but not checked");
    }
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let seed = if cli.seed == 0 { stamp } else { cli.seed };
    let mut failed = Vec::new();
    let mut summary = Vec::new();
    for fault in &faults {
        let run_id = format!("{fault}-{stamp}");
        let plan = run::Plan {
            fault: fault.clone(),
            seconds: cli.seconds,
            clients: cli.clients,
            seed,
            flashgate: cli.flashgate_bin.clone(),
            run_dir: cli.out_dir.join(&run_id),
            client_timeout_ms: cli.client_timeout_ms,
            hold_seconds: cli.hold_seconds.max(2),
            cart_share: cli.cart_share.clamp(0.0, 1.0),
        };
        eprintln!(
            "run {run_id}: {fault} for {} s, {} clients, seed {seed}",
            cli.seconds, cli.clients
        );
        let verdict = match run::run(&plan).await {
            Err(e) => {
                eprintln!("run {run_id} broke: {e:#}");
                Some(false)
            }
            Ok(()) => check(&checker, &plan.run_dir),
        };
        let word = match verdict {
            Some(true) => "pass",
            Some(false) => "FAIL",
            None => "unchecked",
        };
        summary.push(format!("{run_id}: {word}"));
        if verdict == Some(false) {
            failed.push(run_id);
        }
    }
    eprintln!("\n{}", summary.join("\n"));
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("failed: {}", failed.join(", "));
        ExitCode::from(1)
    }
}
