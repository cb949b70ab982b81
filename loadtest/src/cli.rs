//! Command-line flags. Every load loop the flags start is bounded twice: by a
//! count and by a time limit, and every address must be on 127.0.0.1.

use std::path::PathBuf;

use clap::Parser;

/// Simulate a flash sale against a running flashgate, check the books and
/// compare with three baselines (HTTP ceiling, Redis limit, naive SQL).
#[derive(Debug, Clone, Parser)]
#[command(name = "flashgate-loadtest", version)]
pub struct Args {
    /// Base URL of the flashgate under test (127.0.0.1 only). Ignored with --spawn.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub target: String,

    /// Redis the service uses (127.0.0.1 only): `redis://HOST:PORT`, or a
    /// cluster's `redis-cluster://HOST:PORT?node=HOST:PORT&…`. Ignored with --spawn.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,

    /// Storefront API key sent as `Authorization: Bearer` on /v1/ requests.
    /// With --spawn a fresh key is made and given to the spawned flashgate.
    #[arg(long, env = "FLASHGATE_LOADTEST_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Preload the SKU with this purchase cap per buyer (default: none).
    #[arg(long)]
    pub max_per_user: Option<u32>,

    /// Start our own redis-server (temp dir, no persistence) and flashgate
    /// (`--flashgate-bin serve`) on free ports, and stop both at the end.
    #[arg(long)]
    pub spawn: bool,

    /// The flashgate binary: used for `preload`, and for `serve` with --spawn.
    #[arg(long, default_value = "target/release/flashgate")]
    pub flashgate_bin: PathBuf,

    /// redis-server binary for --spawn.
    #[arg(long, default_value = "redis-server")]
    pub redis_server_bin: PathBuf,

    /// With --spawn, start a Redis Cluster of this many masters (no
    /// replicas: `redis-server --cluster-enabled yes` on free ports, joined
    /// with `redis-cli --cluster create`) instead of one redis-server, and run
    /// flashgate on it with a `redis-cluster://` URL. At least 3 (redis-cli
    /// creates no smaller cluster). To test a cluster started by hand, pass
    /// its `redis-cluster://127.0.0.1:PORT?node=…` URL as --redis-url instead.
    #[arg(long, requires = "spawn")]
    pub cluster_masters: Option<u32>,

    /// redis-cli binary (joins the nodes with --cluster-masters).
    #[arg(long, default_value = "redis-cli")]
    pub redis_cli_bin: PathBuf,

    /// Hold duration the service uses (passed to `serve` with --spawn). It
    /// should exceed the wave plus the sold-out phase: until the first hold
    /// can expire, stock only goes down, which the false-sold-out proof needs.
    /// The wait for abandoned holds to expire is derived from it.
    #[arg(long, default_value_t = 60)]
    pub hold_seconds: u64,

    /// Longest wait for abandoned holds to expire before the books are checked
    /// (default: hold_seconds + 15).
    #[arg(long)]
    pub expiry_wait_seconds: Option<u64>,

    /// SKU to sell (default: a fresh `LT<unix seconds>`, so books start empty).
    #[arg(long)]
    pub sku: Option<String>,

    /// Buyers (each makes one reserve attempt, plus retries/abuse below).
    #[arg(long, default_value_t = 50_000)]
    pub buyers: u64,

    /// Units for sale.
    #[arg(long, default_value_t = 500)]
    pub stock: u64,

    /// Shards the SKU's stock is split over.
    #[arg(long, default_value_t = 4)]
    pub shards: u32,

    /// Concurrent HTTP connections (= concurrent in-flight requests).
    #[arg(long, default_value_t = 256)]
    pub connections: usize,

    /// Spread buyer arrivals evenly over this many ms (0 = everyone at T0).
    #[arg(long, default_value_t = 0)]
    pub ramp_ms: u64,

    /// Share of buyers whose client retries the same request (same
    /// Idempotency-Key and body) after the first answer, as after a lost response.
    #[arg(long, default_value_t = 0.05)]
    pub retry_share: f64,

    /// Share of buyers who hammer reserve with fresh keys.
    #[arg(long, default_value_t = 0.01)]
    pub abusive_share: f64,

    /// Reserve requests each abusive buyer sends.
    #[arg(long, default_value_t = 20)]
    pub abusive_requests: u32,

    /// Share of holders who confirm.
    #[arg(long, default_value_t = 0.6)]
    pub confirm_share: f64,

    /// Share of holders who release (the rest abandon; their holds expire).
    #[arg(long, default_value_t = 0.2)]
    pub release_share: f64,

    /// Do not preload the SKU (it must already be loaded with --stock/--shards).
    #[arg(long)]
    pub no_preload: bool,

    /// Time limit of the reserve wave, seconds.
    #[arg(long, default_value_t = 120)]
    pub wave_max_seconds: u64,

    /// Duration of the sold-out phase (reserve hammered after stock is gone).
    #[arg(long, default_value_t = 5)]
    pub soldout_seconds: u64,

    /// Duration of the healthz baseline the wave and the sold-out phase are
    /// compared with (default: the longer of the two, 2..=30 s). The capacity
    /// phase has its own, as long as it, right before and after it.
    #[arg(long)]
    pub healthz_seconds: Option<u64>,

    /// Cap on requests of any fixed-duration phase.
    #[arg(long, default_value_t = 5_000_000)]
    pub phase_max_requests: u64,

    /// Per-request timeout, ms.
    #[arg(long, default_value_t = 10_000)]
    pub request_timeout_ms: u64,

    /// Duration of the capacity phase: reserve hammered on a second SKU with
    /// more stock than it can take, for the sustained reserve rate (0 = skip).
    #[arg(long, default_value_t = 5)]
    pub capacity_seconds: u64,

    /// Skip the Redis baseline (redis-benchmark EVALSHA of lua/reserve.lua).
    #[arg(long)]
    pub no_redis_baseline: bool,

    /// Directory holding the service's Lua scripts (lib.lua + reserve.lua).
    #[arg(long, default_value = "lua")]
    pub lua_dir: PathBuf,

    /// redis-benchmark binary.
    #[arg(long, default_value = "redis-benchmark")]
    pub redis_benchmark_bin: PathBuf,

    /// Requests per redis-benchmark run.
    #[arg(long, default_value_t = 200_000)]
    pub redis_bench_requests: u64,

    /// Skip the naive SQL baseline.
    #[arg(long)]
    pub no_sql: bool,

    /// PostgreSQL for the SQL baseline (127.0.0.1 only).
    #[arg(
        long,
        default_value = "host=127.0.0.1 port=5432 user=postgres dbname=test"
    )]
    pub pg: String,

    /// Duration of the SQL baseline, seconds.
    #[arg(long, default_value_t = 5)]
    pub sql_seconds: u64,

    /// Runtime worker threads of the load generator (it shares the machine
    /// with the service and Redis).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,

    /// Instead of a sale: count flashgate's CPU instructions per answer
    /// (healthz, sold out, new hold) under valgrind's callgrind, this many
    /// requests of each, one at a time. Repeatable where rates are not; see
    /// bench/README.md. Starts its own redis-server and flashgate.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub instructions: Option<u64>,

    /// What to run: `sale` (the sale and its baselines), `hostile` (the
    /// sale with bots, no-op release loopers and waitlist poisoners alongside
    /// it, and the figures of issue 17; needs --spawn; bench/README.md) or
    /// `reshard` (shards and stock added mid-sale, retries and waitlist
    /// replays, books and `flashgate reconcile` checked; needs --spawn and
    /// PostgreSQL's server binaries; issue 24) or `open-loop` (holds and
    /// sold-out answers on a fixed schedule at 25/50/75 % of their
    /// closed-loop capacity, or at --rate; issue 23).
    #[arg(long, value_enum, default_value_t = Scenario::Sale)]
    pub scenario: Scenario,

    /// carts: the share of buyers who POST /v1/carts with 2–3 lines (one
    /// unit of each of 2–3 SKUs) instead of one reserve.
    #[arg(long, default_value_t = 0.5)]
    pub cart_mix: f64,

    /// carts: how many SKUs are on sale (each with --stock units on
    /// --shards shards; a cart takes 2–3 distinct ones).
    #[arg(long, default_value_t = 3)]
    pub cart_skus: u32,

    /// carts: flashgate's `cart_saga_ms` for a spawned flashgate (confirm
    /// refuses within 2 x this of a cart's expiry, so keep it well under
    /// hold_seconds).
    #[arg(long, default_value_t = 2_000)]
    pub cart_saga_ms: u64,

    /// open-loop: offer this many requests per second instead of 25/50/75 %
    /// of the measured closed-loop capacity (which is then not measured).
    #[arg(long)]
    pub rate: Option<f64>,

    /// open-loop: seconds of each capacity run and each open-loop rate.
    #[arg(long, default_value_t = 5)]
    pub open_seconds: u64,

    /// open-loop with --spawn (Linux, `taskset`): the generator on a CPU of
    /// its own (the last), redis-server and flashgate (one tokio worker per
    /// CPU left) on the others. On one machine, the nearest to a generator
    /// on another: its threads no longer take turns with the service's. The
    /// schedule is then kept by a task that spins on its CPU, not by a
    /// sleeping thread (no thread switches: bench/notes/2026-12-05-round3-limits.md).
    #[arg(long)]
    pub pin: bool,

    /// hostile: refused fresh-key requests the Redis-bytes figure averages
    /// over, half with `"waitlist": false`, half with `true` (the official
    /// figure needs 100000).
    #[arg(long, default_value_t = 20_000)]
    pub hostile_refused: u64,

    /// hostile: time limit of each refused-request window, seconds.
    #[arg(long, default_value_t = 120)]
    pub hostile_refused_max_seconds: u64,

    /// hostile: no-op release loopers (one dead reservation each).
    #[arg(long, default_value_t = 4)]
    pub hostile_loopers: usize,

    /// hostile: waitlist poisoners (one ticket each, at the head of the queue).
    #[arg(long, default_value_t = 2)]
    pub hostile_poisoners: usize,

    /// hostile: connections of the bots that run alongside the wave.
    #[arg(long, default_value_t = 32)]
    pub hostile_bot_connections: usize,

    /// hostile: length of each commands-per-answer window, seconds.
    #[arg(long, default_value_t = 5)]
    pub hostile_window_seconds: u64,

    /// hostile: the spawned flashgate's waitlist_capacity (small, so bots fill it).
    #[arg(long, default_value_t = 100)]
    pub hostile_waitlist_capacity: u64,

    /// hostile: how long after the last returned unit a ticket still waiting
    /// beside an available unit counts as stalled, seconds.
    #[arg(long, default_value_t = 5)]
    pub hostile_stall_seconds: u64,

    /// hostile: an environment variable for the spawned `flashgate serve`
    /// (`FLASHGATE_NAME=value`, repeatable), e.g. a rate limit to try
    /// against the crowd.
    #[arg(long, value_name = "FLASHGATE_NAME=VALUE")]
    pub serve_env: Vec<String>,

    /// reshard: the SKU's shard count after the forced preload mid-sale
    /// (at least --shards: a loaded SKU gains shards, never loses them).
    #[arg(long, default_value_t = 4)]
    pub reshard_to: u32,

    /// reshard: units the forced preload adds to what is available then.
    #[arg(long, default_value_t = 50)]
    pub reshard_add: u64,

    /// reshard: late buyers who join the waitlist after the sell-out (each
    /// sends its join twice); about as many second-wave buyers send
    /// `waitlist: true` too.
    #[arg(long, default_value_t = 20)]
    pub reshard_waitlisters: u64,

    /// reshard: how long units available beside waiting tickets are watched
    /// before wave 3 (a stall if they stay there throughout), seconds.
    #[arg(long, default_value_t = 3)]
    pub reshard_stall_seconds: u64,

    /// scheduled: the sale opens this many ms after the preload; every
    /// buyer pre-queues before it.
    #[arg(long, default_value_t = 8_000)]
    pub opens_in_ms: u64,

    /// scheduled: share of buyers who are bots: they all join at once, first,
    /// the moment the SKU is loaded; the others arrive spread over the
    /// pre-queue's time.
    #[arg(long, default_value_t = 0.2)]
    pub bot_share: f64,

    /// Seed for buyer roles (retry, abusive, confirm/release/abandon).
    #[arg(long, default_value_t = 8)]
    pub seed: u64,

    /// Width of a chart/timeline bucket, ms.
    #[arg(long, default_value_t = 100)]
    pub bucket_ms: u64,

    /// Where the run's summary.json, chart.png and logs go (a run subdirectory is created).
    #[arg(long, default_value = "bench-results")]
    pub out_dir: PathBuf,

    /// TTF font for the chart's labels (the chart is drawn without text if absent).
    #[arg(
        long,
        default_value = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
    )]
    pub font: PathBuf,
}

/// The run's scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    Sale,
    Hostile,
    Reshard,
    OpenLoop,
    /// A sale with `opens_at`: buyers pre-queue, bots first (issue 21).
    Scheduled,
    /// Buyers of several SKUs, a share of them with carts (docs/carts.md).
    Carts,
}

impl Args {
    /// Reject settings that would make the run meaningless or unbounded.
    pub fn validate(&self) -> anyhow::Result<()> {
        let share = |name: &str, v: f64| {
            anyhow::ensure!(
                (0.0..=1.0).contains(&v),
                "{name} must be within 0..=1, got {v}"
            );
            Ok(())
        };
        share("--retry-share", self.retry_share)?;
        share("--abusive-share", self.abusive_share)?;
        share("--confirm-share", self.confirm_share)?;
        share("--release-share", self.release_share)?;
        anyhow::ensure!(
            self.confirm_share + self.release_share <= 1.0,
            "--confirm-share + --release-share must be <= 1"
        );
        anyhow::ensure!(self.buyers > 0, "--buyers must be > 0");
        anyhow::ensure!(self.shards > 0, "--shards must be > 0");
        anyhow::ensure!(
            self.connections > 0 && self.connections <= 10_000,
            "--connections must be within 1..=10000"
        );
        anyhow::ensure!(self.bucket_ms > 0, "--bucket-ms must be > 0");
        anyhow::ensure!(self.threads > 0, "--threads must be > 0");
        if self.pin {
            anyhow::ensure!(
                self.spawn && self.scenario == Scenario::OpenLoop,
                "--pin needs --spawn and --scenario open-loop (it pins the processes it starts)"
            );
        }
        if self.scenario == Scenario::Hostile {
            anyhow::ensure!(
                self.spawn,
                "--scenario hostile needs --spawn (it configures the flashgate it starts)"
            );
            anyhow::ensure!(
                self.hostile_loopers > 0 && self.hostile_loopers <= 64,
                "--hostile-loopers must be within 1..=64"
            );
            anyhow::ensure!(
                self.hostile_poisoners <= 64,
                "--hostile-poisoners must be within 0..=64"
            );
            anyhow::ensure!(
                (1..=10_000).contains(&self.hostile_bot_connections),
                "--hostile-bot-connections must be within 1..=10000"
            );
            anyhow::ensure!(
                (1..=10_000_000).contains(&self.hostile_refused),
                "--hostile-refused must be within 1..=10000000"
            );
            anyhow::ensure!(
                (1..=100_000).contains(&self.hostile_waitlist_capacity),
                "--hostile-waitlist-capacity must be within 1..=100000"
            );
            anyhow::ensure!(
                self.hostile_window_seconds > 0,
                "--hostile-window-seconds must be > 0"
            );
            for e in &self.serve_env {
                anyhow::ensure!(
                    e.split_once('=').is_some_and(
                        |(k, _)| k.starts_with("FLASHGATE_") && k != "FLASHGATE_API_KEYS"
                    ),
                    "--serve-env takes FLASHGATE_NAME=VALUE (not FLASHGATE_API_KEYS), got {e:?}"
                );
            }
        }
        if self.scenario == Scenario::Reshard {
            anyhow::ensure!(
                self.spawn && self.cluster_masters.is_none(),
                "--scenario reshard needs --spawn and one redis-server (it starts Redis, \
                 PostgreSQL and flashgate itself)"
            );
            anyhow::ensure!(
                (self.shards..=self.shards.max(1) * 16).contains(&self.reshard_to),
                "--reshard-to must be within --shards..=16 x --shards, got {}",
                self.reshard_to
            );
            anyhow::ensure!(
                self.reshard_waitlisters <= 100_000,
                "--reshard-waitlisters must be within 0..=100000"
            );
            anyhow::ensure!(self.stock > 0, "--stock must be > 0");
        }
        if let Some(r) = self.rate {
            anyhow::ensure!(
                self.scenario == Scenario::OpenLoop,
                "--rate needs --scenario open-loop"
            );
            anyhow::ensure!(
                r.is_finite() && (1.0..=1_000_000.0).contains(&r),
                "--rate must be within 1..=1000000 requests/s, got {r}"
            );
        }
        if self.scenario == Scenario::Carts {
            share("--cart-mix", self.cart_mix)?;
            anyhow::ensure!(
                (2..=10).contains(&self.cart_skus),
                "--cart-skus must be within 2..=10"
            );
            anyhow::ensure!(
                !self.spawn || self.cart_saga_ms * 2 < self.hold_seconds * 1000,
                "--cart-saga-ms x 2 must be under --hold-seconds (confirm would refuse every cart)"
            );
        }
        if self.scenario == Scenario::OpenLoop {
            anyhow::ensure!(
                self.cluster_masters.is_none(),
                "--scenario open-loop runs on one redis-server"
            );
            anyhow::ensure!(
                (1..=600).contains(&self.open_seconds),
                "--open-seconds must be within 1..=600"
            );
        }
        if let Some(m) = self.cluster_masters {
            anyhow::ensure!(
                (MIN_CLUSTER_MASTERS..=MAX_CLUSTER_MASTERS).contains(&m),
                "--cluster-masters must be within {MIN_CLUSTER_MASTERS}..={MAX_CLUSTER_MASTERS} \
                 (redis-cli --cluster create needs at least 3 masters), got {m}"
            );
        }
        Ok(())
    }
}

/// `redis-cli --cluster create` refuses fewer masters.
pub const MIN_CLUSTER_MASTERS: u32 = 3;
/// More masters than this on one load-test machine measure nothing new.
pub const MAX_CLUSTER_MASTERS: u32 = 16;

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("flashgate-loadtest").chain(args.iter().copied()))
    }

    #[test]
    fn one_redis_server_unless_asked_for_a_cluster() {
        let a = parse(&["--spawn"]).unwrap();
        assert_eq!(a.cluster_masters, None);
        assert!(a.validate().is_ok());
        let a = parse(&["--spawn", "--cluster-masters", "3"]).unwrap();
        assert_eq!(a.cluster_masters, Some(3));
        assert_eq!(a.redis_cli_bin, PathBuf::from("redis-cli"));
        assert!(a.validate().is_ok());
    }

    #[test]
    fn pinning_is_for_a_spawned_open_loop_only() {
        let ok = parse(&["--scenario", "open-loop", "--spawn", "--pin"]).unwrap();
        assert!(ok.pin && ok.validate().is_ok());
        for args in [
            &["--scenario", "open-loop", "--pin"][..],
            &["--spawn", "--pin"][..],
        ] {
            let err = parse(args).unwrap().validate().unwrap_err().to_string();
            assert!(err.contains("--pin needs"), "{args:?}: {err}");
        }
    }

    #[test]
    fn the_hostile_scenario_needs_spawn() {
        let a = parse(&["--scenario", "hostile"]).unwrap();
        assert_eq!(a.scenario, Scenario::Hostile);
        assert!(a.validate().unwrap_err().to_string().contains("--spawn"));
        let a = parse(&[
            "--scenario",
            "hostile",
            "--spawn",
            "--hostile-refused",
            "100000",
        ])
        .unwrap();
        assert!(a.validate().is_ok());
        assert_eq!(a.hostile_refused, 100_000);
        assert_eq!(parse(&["--spawn"]).unwrap().scenario, Scenario::Sale);
        let ok = [
            "--scenario",
            "hostile",
            "--spawn",
            "--serve-env",
            "FLASHGATE_CLIENT_RATE_PER_SECOND=500",
        ];
        assert!(parse(&ok).unwrap().validate().is_ok());
        for bad in ["PATH=/tmp", "FLASHGATE_API_KEYS=x", "FLASHGATE_X"] {
            let a = parse(&["--scenario", "hostile", "--spawn", "--serve-env", bad]).unwrap();
            assert!(a.validate().is_err(), "{bad}");
        }
        assert!(parse(&["--scenario", "friendly"]).is_err());
    }

    #[test]
    fn the_reshard_scenario_needs_spawn_and_more_shards() {
        let a = parse(&["--scenario", "reshard", "--spawn"]).unwrap();
        assert_eq!(a.scenario, Scenario::Reshard);
        assert!(a.validate().is_ok());
        assert!(parse(&["--scenario", "reshard"])
            .unwrap()
            .validate()
            .is_err());
        let fewer = [
            "--scenario",
            "reshard",
            "--spawn",
            "--shards",
            "4",
            "--reshard-to",
            "2",
        ];
        let err = parse(&fewer).unwrap().validate().unwrap_err().to_string();
        assert!(err.contains("--reshard-to"), "{err}");
        let cluster = ["--scenario", "reshard", "--spawn", "--cluster-masters", "3"];
        assert!(parse(&cluster).unwrap().validate().is_err());
    }

    #[test]
    fn cluster_masters_needs_spawn_and_three_or_more() {
        // the cluster is ours to start and stop: only with --spawn
        assert!(parse(&["--cluster-masters", "3"]).is_err());
        for bad in ["1", "2", "17"] {
            let a = parse(&["--spawn", "--cluster-masters", bad]).unwrap();
            let err = a.validate().unwrap_err().to_string();
            assert!(err.contains("--cluster-masters"), "{err}");
        }
        assert!(parse(&["--spawn", "--cluster-masters", "-1"]).is_err());
    }
}
