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
    #[arg(long, env = "FLASHGATE_REDIS_TIMEOUT_MS")]
    pub redis_timeout_ms: Option<u64>,
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
    #[arg(long, env = "FLASHGATE_SWEEP_INTERVAL_MS")]
    pub sweep_interval_ms: Option<u64>,
    #[arg(long, env = "FLASHGATE_SWEEP_BATCH")]
    pub sweep_batch: Option<u32>,
    #[arg(long, env = "FLASHGATE_DRAIN_SECONDS")]
    pub drain_seconds: Option<u64>,
    /// text or json
    #[arg(long, env = "FLASHGATE_LOG_FORMAT")]
    pub log_format: Option<String>,
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
            redis_timeout_ms,
            hold_seconds,
            extend_seconds,
            max_hold_seconds,
            idempotency_ttl_seconds,
            max_qty_per_request,
            body_limit_bytes,
            request_timeout_ms,
            sweep_interval_ms,
            sweep_batch,
            drain_seconds,
            log_format
        );
        c.validate()?;
        Ok(c)
    }
}

#[derive(Args, Debug)]
pub struct PreloadArgs {
    #[arg(long)]
    pub sku: String,
    /// Units for sale, split evenly over the shards.
    #[arg(long)]
    pub stock: i64,
    /// Shard keys to spread the SKU over (more shards: more Redis Cluster masters can serve it).
    #[arg(long, default_value_t = 4)]
    pub shards: u16,
    /// Overwrite a SKU that is already loaded (holds and sales already made stay on the books).
    #[arg(long)]
    pub force: bool,
    /// Succeed without change when the SKU is already loaded (for scripts that may run twice).
    #[arg(long, conflicts_with = "force")]
    pub if_absent: bool,
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
        Command::Preload(args) => preload(args).await,
        Command::Status(args) => status(args).await,
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
        .preload(&sku, args.stock, args.shards, args.force)
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
        "sku {}: available {}  held {}  sold {}  initial {}  shards {}  drift {}\n",
        st.sku,
        st.available,
        st.held,
        st.sold,
        st.initial,
        st.shards,
        st.drift()
    );
    out.push_str(&format!(
        "{:>5} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6}\n",
        "shard", "available", "held", "sold", "initial", "xfer_in", "xfer_out", "drift"
    ));
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
    }
    out
}
