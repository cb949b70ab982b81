//! The settings a command reads: flags over `FLASHGATE_*` environment
//! variables over the config file over the defaults, resolved into one
//! validated [`Config`]. A command takes only the groups it uses, so its
//! `--help` lists only its own flags: [`CommonArgs`] (every command: the
//! config file, Redis, Postgres, logs), [`LedgerArgs`] (commands that run
//! a ledger writer) and [`ServeArgs`] (the service: all of them).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use crate::config::{Config, ConfigError};

/// `$(if let Some(v) = &self.$f { c.$f = v.clone(); })*`
macro_rules! overlay {
    ($args:expr, $c:expr, $($f:ident),* $(,)?) => {
        $( if let Some(v) = &$args.$f { $c.$f = v.clone(); } )*
    };
}

/// Settings every command shares; each overrides the config file.
#[derive(Args, Debug, Clone, Default)]
pub struct CommonArgs {
    /// Config file (default: config/flashgate.toml when present).
    #[arg(long, env = "FLASHGATE_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(long, env = "FLASHGATE_REDIS_URL")]
    pub redis_url: Option<String>,
    #[arg(long, env = "FLASHGATE_REDIS_POOL_SIZE")]
    pub redis_pool_size: Option<usize>,
    #[arg(long, env = "FLASHGATE_REDIS_TIMEOUT_MS")]
    pub redis_timeout_ms: Option<u64>,
    /// Answer a hold only once this many replicas have it (Redis WAIT; 0 = off).
    #[arg(long, env = "FLASHGATE_REPLICA_ACK")]
    pub replica_ack: Option<u32>,
    #[arg(long, env = "FLASHGATE_REPLICA_ACK_TIMEOUT_MS")]
    pub replica_ack_timeout_ms: Option<u64>,
    /// Run on a Redis whose maxmemory-policy is not noeviction (docs/operations.md).
    #[arg(long, env = "FLASHGATE_ALLOW_EVICTION_POLICY")]
    pub allow_eviction_policy: bool,
    #[arg(long, env = "FLASHGATE_POSTGRES_URL", hide_env_values = true)]
    pub postgres_url: Option<String>,
    #[arg(long, env = "FLASHGATE_POSTGRES_POOL_SIZE")]
    pub postgres_pool_size: Option<usize>,
    /// text or json
    #[arg(long, env = "FLASHGATE_LOG_FORMAT")]
    pub log_format: Option<String>,
}

impl CommonArgs {
    /// Defaults < file < environment < flags, for the settings every command shares.
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        finish(self.base()?)
    }

    /// The file's configuration with these settings over it, not yet validated.
    fn base(&self) -> Result<Config, ConfigError> {
        let mut c = Config::from_file(self.config.as_deref())?;
        overlay!(
            self,
            c,
            redis_url,
            redis_pool_size,
            redis_timeout_ms,
            replica_ack,
            replica_ack_timeout_ms,
            postgres_url,
            postgres_pool_size,
            log_format,
        );
        if self.allow_eviction_policy {
            c.allow_eviction_policy = true;
        }
        Ok(c)
    }
}

/// A ledger writer's settings (`serve`, `ledger`, `reconcile`).
#[derive(Args, Debug, Clone, Default)]
pub struct LedgerArgs {
    #[arg(long, env = "FLASHGATE_LEDGER_BATCH")]
    pub ledger_batch: Option<usize>,
    #[arg(long, env = "FLASHGATE_LEDGER_INTERVAL_MS")]
    pub ledger_interval_ms: Option<u64>,
    #[arg(long, env = "FLASHGATE_LEDGER_CLAIM_IDLE_MS")]
    pub ledger_claim_idle_ms: Option<u64>,
    #[arg(long, env = "FLASHGATE_LEDGER_CONSUMER")]
    pub ledger_consumer: Option<String>,
}

impl LedgerArgs {
    fn apply(&self, c: &mut Config) {
        overlay!(
            self,
            c,
            ledger_batch,
            ledger_interval_ms,
            ledger_claim_idle_ms,
            ledger_consumer,
        );
    }

    /// [`CommonArgs::resolve`] with these settings too.
    pub fn resolve(&self, common: &CommonArgs) -> Result<Config, ConfigError> {
        let mut c = common.base()?;
        self.apply(&mut c);
        finish(c)
    }
}

/// The service's settings (`serve`, and `config`, which prints them).
#[derive(Args, Debug, Clone, Default)]
pub struct ServeArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub ledger: LedgerArgs,
    #[arg(long, env = "FLASHGATE_LISTEN")]
    pub listen: Option<SocketAddr>,
    #[arg(long, env = "FLASHGATE_RESERVE_BATCH_MAX")]
    pub reserve_batch_max: Option<usize>,
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
    #[arg(long, env = "FLASHGATE_STOCK_CACHE_MS")]
    pub stock_cache_ms: Option<u64>,
    #[arg(long, env = "FLASHGATE_WAITLIST_CAPACITY")]
    pub waitlist_capacity: Option<u64>,
    #[arg(long, env = "FLASHGATE_WAITLIST_TICKET_SECONDS")]
    pub waitlist_ticket_seconds: Option<u64>,
    #[arg(long, env = "FLASHGATE_WAITLIST_WEBHOOK_URL")]
    pub waitlist_webhook_url: Option<String>,
    /// The webhook's signing secret (prefer the environment variable: flags show in `ps`).
    #[arg(
        long,
        env = "FLASHGATE_WAITLIST_WEBHOOK_SECRET",
        hide_env_values = true
    )]
    pub waitlist_webhook_secret: Option<String>,
    #[arg(long, env = "FLASHGATE_WAITLIST_WEBHOOK_CA_FILE")]
    pub waitlist_webhook_ca_file: Option<String>,
    /// Signed holds: the Ed25519 private key (PKCS#8 PEM) that signs them.
    #[arg(long, env = "FLASHGATE_SIGNING_KEY_FILE")]
    pub signing_key_file: Option<String>,
    /// Keys that signed before, still published in the JWKS (PEM files, comma-separated).
    #[arg(long, env = "FLASHGATE_PREVIOUS_SIGNING_KEYS", value_delimiter = ',')]
    pub previous_signing_keys: Option<Vec<String>>,
    #[arg(long, env = "FLASHGATE_TASK_STALL_MS")]
    pub task_stall_ms: Option<u64>,
    /// Tests only: `task:N` makes a background task panic in its first N rounds.
    #[arg(long, env = "FLASHGATE_FAULT_TASK_PANICS", hide = true)]
    pub fault_task_panics: Option<String>,
}

impl ServeArgs {
    /// Defaults < file < environment < flags.
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        let mut c = self.common.base()?;
        self.ledger.apply(&mut c);
        overlay!(
            self,
            c,
            listen,
            reserve_batch_max,
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
            stock_cache_ms,
            waitlist_capacity,
            waitlist_ticket_seconds,
            waitlist_webhook_url,
            waitlist_webhook_secret,
            waitlist_webhook_ca_file,
            signing_key_file,
            previous_signing_keys,
            task_stall_ms,
            fault_task_panics,
        );
        if self.insecure_no_auth {
            c.insecure_no_auth = true;
        }
        finish(c)
    }
}

/// The last step of every resolve: tidy what layering left, then validate.
fn finish(mut c: Config) -> Result<Config, ConfigError> {
    // empty entries from "a,,b" or an empty variable are not keys
    c.api_keys.retain(|k| !k.is_empty());
    c.admin_keys.retain(|k| !k.is_empty());
    c.previous_signing_keys.retain(|k| !k.is_empty());
    c.validate()?;
    Ok(c)
}
