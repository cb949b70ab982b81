//! The command line: `serve`, `preload`, `status`, `config`. Every `serve`
//! flag can also be set in the config file and by a `FLASHGATE_*` environment
//! variable; flags win over the environment, which wins over the file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::app::App;
use crate::config::Config;
use crate::domain::Sku;
use crate::inventory::{Inventory, PreloadOutcome, SkuStatus};
use crate::metrics::Metrics;

#[derive(Parser, Debug)]
#[command(
    name = "flashgate",
    version,
    about = "Flash-sale gatekeeper: sharded, idempotent stock reservations in front of Redis"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the HTTP service.
    Serve(ServeArgs),
    /// Load a SKU's stock into Redis before the sale (refuses to overwrite a live SKU without --force).
    Preload(PreloadArgs),
    /// Show a SKU's books: available / held / sold, per shard.
    Status(StatusArgs),
    /// Print the effective configuration (secrets redacted).
    Config(ServeArgs),
    /// Apply the PostgreSQL schema migrations (idempotent).
    Migrate(ServeArgs),
    /// Run a ledger writer alone: outbox streams in Redis -> PostgreSQL, until SIGTERM/SIGINT.
    Ledger(ServeArgs),
    /// Compare the books in Redis with the ledger in PostgreSQL; --fix repairs Redis.
    Reconcile(crate::reconcile::ReconcileArgs),
}

/// Settings shared by every command; each overrides the config file.
#[derive(Args, Debug, Clone, Default)]
pub struct ServeArgs {
    /// Config file (default: config/flashgate.toml when present).
    #[arg(long, env = "FLASHGATE_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(long, env = "FLASHGATE_LISTEN")]
    pub listen: Option<SocketAddr>,
    #[arg(long, env = "FLASHGATE_REDIS_URL")]
    pub redis_url: Option<String>,
    #[arg(long, env = "FLASHGATE_REDIS_POOL_SIZE")]
    pub redis_pool_size: Option<usize>,
    #[arg(long, env = "FLASHGATE_RESERVE_BATCH_MAX")]
    pub reserve_batch_max: Option<usize>,
    #[arg(long, env = "FLASHGATE_REDIS_TIMEOUT_MS")]
    pub redis_timeout_ms: Option<u64>,
    /// Answer a hold only once this many replicas have it (Redis WAIT; 0 = off).
    #[arg(long, env = "FLASHGATE_REPLICA_ACK")]
    pub replica_ack: Option<u32>,
    #[arg(long, env = "FLASHGATE_REPLICA_ACK_TIMEOUT_MS")]
    pub replica_ack_timeout_ms: Option<u64>,
    #[arg(long, env = "FLASHGATE_POSTGRES_URL", hide_env_values = true)]
    pub postgres_url: Option<String>,
    #[arg(long, env = "FLASHGATE_POSTGRES_POOL_SIZE")]
    pub postgres_pool_size: Option<usize>,
    #[arg(long, env = "FLASHGATE_LEDGER_BATCH")]
    pub ledger_batch: Option<usize>,
    #[arg(long, env = "FLASHGATE_LEDGER_INTERVAL_MS")]
    pub ledger_interval_ms: Option<u64>,
    #[arg(long, env = "FLASHGATE_LEDGER_CLAIM_IDLE_MS")]
    pub ledger_claim_idle_ms: Option<u64>,
    #[arg(long, env = "FLASHGATE_LEDGER_CONSUMER")]
    pub ledger_consumer: Option<String>,
    #[arg(long, env = "FLASHGATE_HOLD_SECONDS")]
    pub hold_seconds: Option<u64>,
    #[arg(long, env = "FLASHGATE_EXTEND_SECONDS")]
    pub extend_seconds: Option<u64>,
    #[arg(long, env = "FLASHGATE_MAX_HOLD_SECONDS")]
    pub max_hold_seconds: Option<u64>,
    #[arg(long, env = "FLASHGATE_IDEMPOTENCY_TTL_SECONDS")]
    pub idempotency_ttl_seconds: Option<u64>,
    #[arg(long, env = "FLASHGATE_MAX_QTY_PER_REQUEST")]
    pub max_qty_per_request: Option<u32>,
    #[arg(long, env = "FLASHGATE_BODY_LIMIT_BYTES")]
    pub body_limit_bytes: Option<usize>,
    #[arg(long, env = "FLASHGATE_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,
    #[arg(long, env = "FLASHGATE_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    #[arg(long, env = "FLASHGATE_MAX_HEADER_BYTES")]
    pub max_header_bytes: Option<usize>,
    #[arg(long, env = "FLASHGATE_HEADER_READ_TIMEOUT_MS")]
    pub header_read_timeout_ms: Option<u64>,
    #[arg(long, env = "FLASHGATE_WRITE_TIMEOUT_MS")]
    pub write_timeout_ms: Option<u64>,
    #[arg(long, env = "FLASHGATE_SWEEP_INTERVAL_MS")]
    pub sweep_interval_ms: Option<u64>,
    #[arg(long, env = "FLASHGATE_SWEEP_BATCH")]
    pub sweep_batch: Option<u32>,
    #[arg(long, env = "FLASHGATE_DRAIN_SECONDS")]
    pub drain_seconds: Option<u64>,
    /// text or json
    #[arg(long, env = "FLASHGATE_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Storefront API keys, comma-separated (prefer the environment variable: flags show in `ps`).
    #[arg(
        long,
        env = "FLASHGATE_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Option<Vec<String>>,
    /// Admin keys, comma-separated.
    #[arg(
        long,
        env = "FLASHGATE_ADMIN_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub admin_keys: Option<Vec<String>>,
    /// Serve without authentication (local demos only).
    #[arg(long, env = "FLASHGATE_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
    /// Run on a Redis whose maxmemory-policy is not noeviction (docs/operations.md).
    #[arg(long, env = "FLASHGATE_ALLOW_EVICTION_POLICY")]
    pub allow_eviction_policy: bool,
    #[arg(long, env = "FLASHGATE_USER_RATE_PER_SECOND")]
    pub user_rate_per_second: Option<u32>,
    #[arg(long, env = "FLASHGATE_USER_BURST")]
    pub user_burst: Option<u32>,
    #[arg(long, env = "FLASHGATE_CLIENT_RATE_PER_SECOND")]
    pub client_rate_per_second: Option<u32>,
    #[arg(long, env = "FLASHGATE_CLIENT_BURST")]
    pub client_burst: Option<u32>,
    #[arg(long, env = "FLASHGATE_GLOBAL_RATE_PER_SECOND")]
    pub global_rate_per_second: Option<u32>,
    #[arg(long, env = "FLASHGATE_GLOBAL_BURST")]
    pub global_burst: Option<u32>,
    #[arg(long, env = "FLASHGATE_LIMITER_PRUNE_SECONDS")]
    pub limiter_prune_seconds: Option<u64>,
    #[arg(long, env = "FLASHGATE_SOLD_OUT_CACHE_MS")]
    pub sold_out_cache_ms: Option<u64>,
    #[arg(long, env = "FLASHGATE_WAITLIST_CAPACITY")]
    pub waitlist_capacity: Option<u64>,
    #[arg(long, env = "FLASHGATE_WAITLIST_TICKET_SECONDS")]
    pub waitlist_ticket_seconds: Option<u64>,
    #[arg(long, env = "FLASHGATE_WAITLIST_WEBHOOK_URL")]
    pub waitlist_webhook_url: Option<String>,
    #[arg(long, env = "FLASHGATE_TASK_STALL_MS")]
    pub task_stall_ms: Option<u64>,
    /// Tests only: `task:N` makes a background task panic in its first N rounds.
    #[arg(long, env = "FLASHGATE_FAULT_TASK_PANICS", hide = true)]
    pub fault_task_panics: Option<String>,
}

impl ServeArgs {
    /// Defaults < file < environment < flags.
    pub fn resolve(&self) -> Result<Config, crate::config::ConfigError> {
        let mut c = Config::from_file(self.config.as_deref())?;
        macro_rules! overlay {
            ($($f:ident),*) => { $( if let Some(v) = &self.$f { c.$f = v.clone(); } )* };
        }
        overlay!(
            listen,
            redis_url,
            redis_pool_size,
            reserve_batch_max,
            redis_timeout_ms,
            replica_ack,
            replica_ack_timeout_ms,
            postgres_url,
            postgres_pool_size,
            ledger_batch,
            ledger_interval_ms,
            ledger_claim_idle_ms,
            ledger_consumer,
            hold_seconds,
            extend_seconds,
            max_hold_seconds,
            idempotency_ttl_seconds,
            max_qty_per_request,
            body_limit_bytes,
            request_timeout_ms,
            max_connections,
            max_header_bytes,
            header_read_timeout_ms,
            write_timeout_ms,
            sweep_interval_ms,
            sweep_batch,
            drain_seconds,
            log_format,
            api_keys,
            admin_keys,
            user_rate_per_second,
            user_burst,
            client_rate_per_second,
            client_burst,
            global_rate_per_second,
            global_burst,
            limiter_prune_seconds,
            sold_out_cache_ms,
            waitlist_capacity,
            waitlist_ticket_seconds,
            waitlist_webhook_url,
            task_stall_ms,
            fault_task_panics
        );
        if self.insecure_no_auth {
            c.insecure_no_auth = true;
        }
        if self.allow_eviction_policy {
            c.allow_eviction_policy = true;
        }
        // empty entries from "a,,b" or an empty variable are not keys
        c.api_keys.retain(|k| !k.is_empty());
        c.admin_keys.retain(|k| !k.is_empty());
        c.validate()?;
        Ok(c)
    }
}

#[derive(Args, Debug)]
pub struct PreloadArgs {
    /// Load every SKU of the PostgreSQL `skus` table (or just --sku) instead of --stock/--shards.
    #[arg(long, conflicts_with = "stock")]
    pub from_postgres: bool,
    #[arg(long, required_unless_present = "from_postgres", default_value = "")]
    pub sku: String,
    /// Units for sale, split evenly over the shards (at most 10^12).
    #[arg(long, required_unless_present = "from_postgres", default_value_t = 0,
          value_parser = clap::value_parser!(i64).range(0..=crate::inventory::MAX_STOCK))]
    pub stock: i64,
    /// Shard keys to spread the SKU over (more shards: more Redis Cluster masters can serve it; 1..=256).
    #[arg(long, default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(1..=i64::from(crate::inventory::MAX_SHARDS)))]
    pub shards: u16,
    /// Overwrite a SKU that is already loaded (holds and sales already made stay on the books).
    #[arg(long)]
    pub force: bool,
    /// Succeed without change when the SKU is already loaded (for scripts that may run twice).
    #[arg(long, conflicts_with = "force")]
    pub if_absent: bool,
    /// At most this many units of the SKU per buyer, held and confirmed together (0 = no cap).
    #[arg(long)]
    pub max_per_user: Option<u32>,
    #[command(flatten)]
    pub common: ServeArgs,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[arg(long)]
    pub sku: String,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    #[command(flatten)]
    pub common: ServeArgs,
}

pub async fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Preload(args) if args.from_postgres => {
            crate::reconcile::preload_from_postgres(args).await
        }
        Command::Preload(args) => preload(args).await,
        Command::Status(args) => status(args).await,
        Command::Migrate(args) => crate::reconcile::migrate(args).await,
        Command::Ledger(args) => crate::reconcile::ledger(args).await,
        Command::Reconcile(args) => return crate::reconcile::main(args).await,
        Command::Config(args) => args
            .resolve()
            .map(|c| print!("{}", c.redacted_toml()))
            .map_err(|e| e.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("flashgate: {msg}");
            ExitCode::FAILURE
        }
    }
}

pub fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    let config = args.resolve().map_err(|e| e.to_string())?;
    init_tracing(&config.log_format);
    let drain = Duration::from_secs(config.drain_seconds);
    let app = App::build(config).await.map_err(|e| e.to_string())?;
    app.run_until(crate::shutdown::signal(drain)).await;
    Ok(())
}

async fn connect(args: &ServeArgs) -> Result<Inventory, String> {
    let config = args.resolve().map_err(|e| e.to_string())?;
    Inventory::connect(&config, Arc::new(Metrics::new(1)))
        .await
        .map_err(|e| format!("cannot reach redis at {}: {e}", config.redis_url))
}

async fn preload(args: PreloadArgs) -> Result<(), String> {
    let sku = Sku::parse(&args.sku)?;
    let inventory = connect(&args.common).await?;
    let outcome = inventory
        .preload_with(
            &sku,
            crate::inventory::PreloadSpec {
                stock: args.stock,
                shards: args.shards,
                force: args.force,
                max_per_user: args.max_per_user,
            },
        )
        .await
        .map_err(|e| crate::error::ApiError::from(e).message())?;
    inventory.close().await;
    match outcome {
        PreloadOutcome::Loaded { per_shard } => {
            println!("loaded {sku}: {} units over {} shards {:?}", args.stock, args.shards, per_shard);
            Ok(())
        }
        PreloadOutcome::AlreadyLoaded if args.if_absent => {
            println!("{sku} is already loaded; left as it is");
            Ok(())
        }
        PreloadOutcome::AlreadyLoaded => Err(format!(
            "{sku} is already loaded (a live sale?); nothing changed. Use --force to overwrite its available units"
        )),
    }
}

async fn status(args: StatusArgs) -> Result<(), String> {
    let sku = Sku::parse(&args.sku)?;
    let inventory = connect(&args.common).await?;
    let st = inventory
        .status(&sku)
        .await
        .map_err(|e| crate::error::ApiError::from(e).message())?;
    inventory.close().await;
    match args.format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&st).map_err(|e| e.to_string())?
        ),
        Format::Table => print!("{}", status_table(&st)),
    }
    Ok(())
}

/// The human report of `flashgate status`.
pub fn status_table(st: &SkuStatus) -> String {
    let mut out = format!(
        "sku {}: available {}  held {}  sold {}  initial {}  shards {}  waitlist {}  drift {}\n",
        st.sku,
        st.available,
        st.held,
        st.sold,
        st.initial,
        st.shards,
        st.waitlist,
        st.drift()
    );
    if st.transfer_imbalance != 0 {
        out.push_str(&format!(
            "  transfers between shards do not balance by {} units (sent - received - in transit {}): run reconcile\n",
            st.transfer_imbalance, st.in_transit
        ));
    }
    out.push_str(&format!(
        "{:>5} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6}\n",
        "shard", "available", "held", "sold", "initial", "xfer_in", "xfer_out", "drift"
    ));
    if st.per_shard.iter().any(|s| s.node.is_some()) {
        out.pop();
        out.push_str("  node\n");
    }
    for s in &st.per_shard {
        out.push_str(&format!(
            "{:>5} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6}\n",
            s.shard,
            s.available,
            s.held,
            s.sold,
            s.initial,
            s.transferred_in,
            s.transferred_out,
            s.drift()
        ));
        // on a cluster: the master serving the shard
        if let Some(node) = &s.node {
            out.pop();
            out.push_str(&format!("  {node}\n"));
        }
    }
    out
}
