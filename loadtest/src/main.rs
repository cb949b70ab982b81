//! flashgate-loadtest: a simulated flash sale against a running flashgate
//! (or one it starts itself with `--spawn`), with the books checked after it
//! and three baselines measured in the same run.
//!
//! Layout: `cli` (flags) → `run` (the phases in order) → `sale` (buyers, the
//! wave, fixed-duration hammering), `http` (the v1 client), `redis`
//! (books, commandstats, redis-benchmark), `sql` (hot-row baseline), `procs`
//! (spawned redis-server/flashgate) → `stats`, `books` (pure maths, unit
//! tested) → `report`, `chart` (outputs). `instructions` counts flashgate's
//! CPU instructions per answer under callgrind instead of running a sale;
//! `hostile` runs the sale with abusive clients alongside it (issue 17);
//! `reshard` adds shards and stock mid-sale and runs `flashgate reconcile`
//! on a ledger of its own (issue 24); `open_loop` offers holds and sold-out
//! answers on a fixed schedule and measures latency from the intended send
//! time (issue 23); `scheduled` pre-queues buyers (bots first) before a
//! sale's `opens_at` and reports admission order against arrival order
//! (issue 21); `carts` sells several SKUs to buyers of whom a share make
//! carts of 2–3 lines (issue 22).

mod books;
mod carts;
mod chart;
mod cli;
mod hostile;
mod http;
mod instructions;
mod open_loop;
mod procs;
mod redis;
mod report;
mod reshard;
mod run;
mod sale;
mod scheduled;
mod sql;
mod stats;

use clap::Parser;

// The same allocator as the server's: with glibc malloc, allocation was the
// load generator's largest user-space item (perf, 2026-12-02), and a reserve
// allocates more than a /healthz, so the client's own cost leaned on the
// sold-out ratio.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let args = cli::Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("flashgate-loadtest: cannot start the runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let result = rt.block_on(async {
        let sale = async {
            match (args.instructions, args.scenario) {
                (Some(n), _) => instructions::run(&args, n).await,
                (None, cli::Scenario::Hostile) => hostile::run(args).await,
                (None, cli::Scenario::Reshard) => reshard::run(args).await,
                (None, cli::Scenario::OpenLoop) => open_loop::run(args).await,
                (None, cli::Scenario::Scheduled) => scheduled::run(args).await,
                (None, cli::Scenario::Carts) => carts::run(args).await,
                (None, cli::Scenario::Sale) => run::run(args).await,
            }
        };
        tokio::select! {
            r = sale => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    match result {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("flashgate-loadtest: the books or the idempotency checks failed (see above)");
            std::process::ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("flashgate-loadtest: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
