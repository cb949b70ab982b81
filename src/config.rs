//! Configuration in layers, validated once: built-in defaults, then the TOML
//! file (`config/flashgate.toml` or `--config`), then `FLASHGATE_*`
//! environment variables, then command-line flags (clap merges the last two,
//! flags win). Units are in the key names.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP server listens on.
    pub listen: SocketAddr,
    /// `redis://host:port[/db]`, or `redis-cluster://host:port?node=host:port` for a cluster.
    pub redis_url: String,
    /// Connections to Redis (commands are pipelined on each).
    pub redis_pool_size: usize,
    /// Most reserves for one shard coalesced into one `reserve.lua` call
    /// (1 = one call per request; see src/inventory/batch.rs).
    pub reserve_batch_max: usize,
    /// Every Redis command fails after this long: the request answers 503
    /// instead of hanging while Redis is down or slow.
    pub redis_timeout_ms: u64,
    /// A hold is answered only once this many replicas of its shard's master
    /// have it (Redis `WAIT`); 0 = off (asynchronous replication).
    pub replica_ack: u32,
    /// How long to wait for those replicas before answering 503 (the hold
    /// stays; a retry with the same key replays it). Below `redis_timeout_ms`.
    pub replica_ack_timeout_ms: u64,
    /// PostgreSQL for the ledger (`postgres://user:pass@host/db` or
    /// `host=… user=…`). Empty: `serve` runs no ledger writer.
    pub postgres_url: String,
    /// Connections to Postgres per process.
    pub postgres_pool_size: usize,
    /// Outbox entries per ledger read and per insert.
    pub ledger_batch: usize,
    /// How often the ledger writer polls the outbox streams when idle.
    pub ledger_interval_ms: u64,
    /// Entries pending this long with another writer are taken over (the
    /// writer is presumed dead).
    pub ledger_claim_idle_ms: u64,
    /// This process's name in the ledger's consumer group (empty: host-pid-random).
    pub ledger_consumer: String,
    /// How long a hold lasts before it expires and its units return to stock.
    pub hold_seconds: u64,
    /// `extend` moves the deadline to at least now + this.
    pub extend_seconds: u64,
    /// No hold lasts longer than this from its creation, however often extended.
    pub max_hold_seconds: u64,
    /// How long an idempotency key is remembered (at least 24 h is the norm).
    pub idempotency_ttl_seconds: u64,
    /// Largest `qty` one reservation may ask for.
    pub max_qty_per_request: u32,
    /// Request bodies larger than this are refused with 422.
    pub body_limit_bytes: usize,
    /// A request that takes longer than this answers 503 `timeout`.
    pub request_timeout_ms: u64,
    /// Open client connections at most; one more is answered `503
    /// too_many_connections` and closed at once. Capped below the process's
    /// open-file limit (`ulimit -n`), which Redis connections and logs share.
    pub max_connections: usize,
    /// A request's head (request line and headers) larger than this answers
    /// `431 headers_too_large`; one larger than twice this is refused by the
    /// HTTP parser itself (bare 431, connection closed) before it is buffered.
    pub max_header_bytes: usize,
    /// A client must send a request's head within this long, and an idle
    /// keep-alive connection is closed after it.
    pub header_read_timeout_ms: u64,
    /// A connection whose response makes no progress for this long (a client
    /// that stopped reading) is closed.
    pub write_timeout_ms: u64,
    /// How often the expiry sweeper visits every shard.
    pub sweep_interval_ms: u64,
    /// Holds returned per shard per sweeper step (bounds one script's run time).
    pub sweep_batch: u32,
    /// On SIGTERM, in-flight requests get this long to finish.
    pub drain_seconds: u64,
    /// `text` (human) or `json` logs.
    pub log_format: String,

    /// Once a SKU answered "sold out", answer further reserves for it from
    /// memory for this long (0 = off). Units that come back are missed for at
    /// most this long by this instance (at once when they come back through it).
    pub sold_out_cache_ms: u64,
    /// `GET /v1/skus/{sku}` is served from a per-instance snapshot of the
    /// SKU's stock, read from Redis at most this often (0 = read live every
    /// time); this instance's own holds and returns show at once, other
    /// instances' within this long. Also the document's `Cache-Control:
    /// max-age` (rounded up to whole seconds).
    pub stock_cache_ms: u64,
    /// Most buyers waiting for one SKU; joining a full waitlist is refused.
    pub waitlist_capacity: u64,
    /// A waitlist ticket not promoted within this long expires.
    pub waitlist_ticket_seconds: u64,
    /// One promoter per SKU holds a lease this long (renewed while it works).
    pub waitlist_lease_ms: u64,
    /// Optional: POST each promotion to this URL (`https://…`, or `http://…`
    /// on a trusted network), with retries. Reloadable.
    pub waitlist_webhook_url: String,
    /// The secret every delivery is signed with (`Flashgate-Signature`,
    /// docs/webhooks.md); required with a URL, at least 16 characters.
    /// Reloadable.
    pub waitlist_webhook_secret: String,
    /// PEM file of the certificates an https:// webhook's server must chain
    /// to (a private CA); empty: the public webpki roots. Reloadable.
    pub waitlist_webhook_ca_file: String,

    /// Signed holds (docs/signed-holds.md): a PKCS#8 PEM Ed25519 private key
    /// (`flashgate gen-signing-key --out FILE`); every answer describing a
    /// held reservation then carries `token`, a JWS checkout can verify
    /// with `GET /.well-known/jwks.json`. Empty: no tokens. Reloadable.
    pub signing_key_file: String,
    /// PEM files of keys that signed before (public keys, or the old
    /// private key files): still published in the JWKS so their tokens keep
    /// verifying. Keep a retired key listed for at least `max_hold_seconds`
    /// after it stopped signing. Reloadable.
    pub previous_signing_keys: Vec<String>,

    /// Storefront API keys (`Authorization: Bearer <secret>`) for `/v1/`:
    /// `name:secret` names the storefront that owns what the key makes
    /// (several secrets may share a name), a bare `secret` is a storefront
    /// of its own (docs/tenancy.md).
    pub api_keys: Vec<String>,
    /// Admin keys for `/admin/` (an admin key also works on `/v1/`).
    pub admin_keys: Vec<String>,
    /// Serve without any authentication. Refused unless set explicitly.
    pub insecure_no_auth: bool,
    /// Per-buyer token bucket on reserve (0 = off).
    pub user_rate_per_second: u32,
    pub user_burst: u32,
    /// Per-storefront (API key) bucket on every `/v1/` request (0 = off).
    /// On by default, below the instance's: one storefront cannot take all
    /// of it (docs/rate-limits.md).
    pub client_rate_per_second: u32,
    pub client_burst: u32,
    /// Whole-instance bucket on every `/v1/` request (0 = off). On by
    /// default, at a rate a 2-core instance serves as holds (docs/rate-limits.md).
    pub global_rate_per_second: u32,
    pub global_burst: u32,
    /// How often idle buckets are forgotten, to keep memory bounded.
    pub limiter_prune_seconds: u64,
    /// Run on a Redis whose `maxmemory-policy` is not `noeviction` (or whose
    /// policy cannot be read). Off: such a Redis refuses the start and fails
    /// `/readyz` (docs/operations.md).
    pub allow_eviction_policy: bool,
    /// A background task (sweeper, promoter, ledger writer, limiter pruner)
    /// that has not completed a round for max(this, 5 × its interval) fails
    /// `/readyz`; a task that panics is restarted (docs/operations.md).
    pub task_stall_ms: u64,
    /// Tests only (fault injection), empty = off: `task:N` makes the named
    /// task panic in its first N rounds.
    pub fault_task_panics: String,
    /// Most lines one cart may have (docs/carts.md).
    pub max_cart_lines: usize,
    /// A cart still being made (or confirmed, released, given back) this
    /// long after its step began is taken to be abandoned by a dead
    /// instance: the sweeper finishes it (docs/carts.md).
    pub cart_saga_ms: u64,
    /// Most carts in a transitional state at once (the sweeper's work list,
    /// `fg:{carts~X}:pending`, 16 buckets of a 16th each); past it a new
    /// cart answers 503 `carts_busy`.
    pub max_pending_carts: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_pool_size: 4,
            reserve_batch_max: 64,
            redis_timeout_ms: 500,
            replica_ack: 0,
            replica_ack_timeout_ms: 100,
            postgres_url: String::new(),
            postgres_pool_size: 4,
            ledger_batch: 500,
            ledger_interval_ms: 100,
            ledger_claim_idle_ms: 30_000,
            ledger_consumer: String::new(),
            hold_seconds: 600,
            extend_seconds: 300,
            max_hold_seconds: 1800,
            idempotency_ttl_seconds: 86_400,
            max_qty_per_request: 10,
            body_limit_bytes: 8 * 1024,
            request_timeout_ms: 5_000,
            max_connections: 10_000,
            max_header_bytes: 16 * 1024,
            header_read_timeout_ms: 10_000,
            write_timeout_ms: 10_000,
            sweep_interval_ms: 200,
            sweep_batch: 200,
            drain_seconds: 10,
            log_format: "text".into(),
            sold_out_cache_ms: 100,
            stock_cache_ms: 500,
            waitlist_capacity: 10_000,
            waitlist_ticket_seconds: 1800,
            waitlist_lease_ms: 5000,
            waitlist_webhook_url: String::new(),
            waitlist_webhook_secret: String::new(),
            waitlist_webhook_ca_file: String::new(),
            signing_key_file: String::new(),
            previous_signing_keys: Vec::new(),
            api_keys: Vec::new(),
            admin_keys: Vec::new(),
            insecure_no_auth: false,
            user_rate_per_second: 5,
            user_burst: 10,
            // on by default: a buyer's bucket stops no one who invents
            // user ids; sized in docs/rate-limits.md
            client_rate_per_second: 5_000,
            client_burst: 5_000,
            global_rate_per_second: 10_000,
            global_burst: 10_000,
            limiter_prune_seconds: 30,
            allow_eviction_policy: false,
            task_stall_ms: 10_000,
            fault_task_panics: String::new(),
            max_cart_lines: 10,
            cart_saga_ms: 30_000,
            max_pending_carts: 100_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl ConfigError {
    /// The error without the file's text: a TOML parse error quotes the line
    /// it failed on, which may hold a key or a secret. What a reload logs
    /// and answers.
    pub fn redacted(&self) -> String {
        match self {
            ConfigError::Parse { path, source } => format!(
                "invalid config file {}: {} (at byte {})",
                path.display(),
                source.message().trim().replace('\n', "; "),
                source.span().map_or(0, |s| s.start)
            ),
            other => other.to_string(),
        }
    }
}

impl Config {
    /// Defaults overlaid with a TOML file. An explicitly named file must
    /// exist; the default path is optional.
    pub fn from_file(path: Option<&Path>) -> Result<Config, ConfigError> {
        let (path, required) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from("config/flashgate.toml"), false),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|source| ConfigError::Parse { path, source }),
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
                Ok(Config::default())
            }
            Err(source) => Err(ConfigError::Read { path, source }),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.into()));
        if !self.postgres_url.is_empty()
            && self.postgres_url.parse::<tokio_postgres::Config>().is_err()
        {
            return bad("postgres_url is not a valid PostgreSQL connection string");
        }
        if self.postgres_pool_size == 0 || self.ledger_batch == 0 || self.ledger_interval_ms == 0 {
            return bad("postgres_pool_size, ledger_batch and ledger_interval_ms must be > 0");
        }
        if self.hold_seconds == 0 {
            return bad("hold_seconds must be > 0");
        }
        if self.max_hold_seconds < self.hold_seconds {
            return bad("max_hold_seconds must be >= hold_seconds");
        }
        if self.idempotency_ttl_seconds < self.max_hold_seconds {
            return bad("idempotency_ttl_seconds must be >= max_hold_seconds");
        }
        if self.max_qty_per_request == 0 {
            return bad("max_qty_per_request must be >= 1");
        }
        if self.reserve_batch_max == 0 || self.reserve_batch_max > 1000 {
            return bad("reserve_batch_max must be within 1..=1000");
        }
        if self.redis_pool_size == 0 || self.redis_pool_size > 64 {
            return bad("redis_pool_size must be within 1..=64");
        }
        if self.replica_ack > 0
            && (self.replica_ack_timeout_ms == 0
                || self.replica_ack_timeout_ms >= self.redis_timeout_ms)
        {
            return bad("replica_ack_timeout_ms must be > 0 and below redis_timeout_ms");
        }
        if self.redis_timeout_ms == 0 || self.request_timeout_ms == 0 {
            return bad("timeouts must be > 0");
        }
        if self.sweep_interval_ms == 0 || self.sweep_batch == 0 {
            return bad("sweep_interval_ms and sweep_batch must be > 0");
        }
        if self.max_connections == 0 {
            return bad("max_connections must be > 0");
        }
        if !(1024..=1024 * 1024).contains(&self.max_header_bytes) {
            return bad("max_header_bytes must be within 1024..=1048576");
        }
        if self.header_read_timeout_ms == 0 || self.write_timeout_ms == 0 {
            return bad("header_read_timeout_ms and write_timeout_ms must be > 0");
        }
        if self.body_limit_bytes < 64 {
            return bad("body_limit_bytes must be >= 64");
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return bad("log_format must be text or json");
        }
        if self.waitlist_capacity == 0
            || self.waitlist_ticket_seconds == 0
            || self.waitlist_lease_ms < 100
        {
            return bad("waitlist_capacity and waitlist_ticket_seconds must be > 0, waitlist_lease_ms >= 100");
        }
        if !self.waitlist_webhook_url.is_empty() {
            if !(self.waitlist_webhook_url.starts_with("http://")
                || self.waitlist_webhook_url.starts_with("https://"))
                || self.waitlist_webhook_url.parse::<hyper::Uri>().is_err()
            {
                return bad("waitlist_webhook_url must be an https:// or http:// URL (or empty)");
            }
            let s = &self.waitlist_webhook_secret;
            if s.len() < 16 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return bad("waitlist_webhook_secret must be set with waitlist_webhook_url: at least 16 characters, without spaces (every delivery is signed, docs/webhooks.md)");
            }
        }
        if self.task_stall_ms == 0 {
            return bad("task_stall_ms must be > 0");
        }
        if !(1..=100).contains(&self.max_cart_lines)
            || self.cart_saga_ms < 100
            || self.max_pending_carts == 0
        {
            return bad(
                "max_cart_lines must be within 1..=100, cart_saga_ms >= 100, max_pending_carts > 0",
            );
        }
        if !self.fault_task_panics.is_empty() && self.fault_panics().is_none() {
            return bad("fault_task_panics must be task:N, task one of sweeper, promoter, ledger, limiter_pruner");
        }
        if self.limiter_prune_seconds == 0 {
            return bad("limiter_prune_seconds must be > 0");
        }
        if self
            .api_keys
            .iter()
            .map(|k| crate::domain::api_key(k).1)
            .chain(self.admin_keys.iter().map(String::as_str))
            .any(|k| k.len() < 16 || k.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return bad("API and admin keys must be at least 16 characters, without spaces");
        }
        let mut secrets: Vec<&str> = self
            .api_keys
            .iter()
            .map(|k| crate::domain::api_key(k).1)
            .collect();
        secrets.sort_unstable();
        if secrets.windows(2).any(|w| w[0] == w[1]) {
            return bad("an API key's secret is listed twice");
        }
        Ok(())
    }

    /// `serve` needs keys, or an explicit `insecure_no_auth`.
    pub fn validate_auth(&self) -> Result<(), ConfigError> {
        if self.api_keys.is_empty() && self.admin_keys.is_empty() && !self.insecure_no_auth {
            return Err(ConfigError::Invalid(
                "no api_keys or admin_keys configured: set them (config file, FLASHGATE_API_KEYS, FLASHGATE_ADMIN_KEYS) or pass --insecure-no-auth".into(),
            ));
        }
        Ok(())
    }

    /// The token buckets, in the order [`crate::limiter::Limiter::new`]
    /// takes them: the whole instance, a storefront, a buyer.
    pub fn buckets(&self) -> [crate::limiter::Bucket; 3] {
        use crate::limiter::Bucket;
        [
            Bucket {
                rate_per_second: self.global_rate_per_second,
                burst: self.global_burst,
            },
            Bucket {
                rate_per_second: self.client_rate_per_second,
                burst: self.client_burst,
            },
            Bucket {
                rate_per_second: self.user_rate_per_second,
                burst: self.user_burst,
            },
        ]
    }

    pub fn limiter(&self) -> crate::limiter::Limiter {
        let [instance, client, user] = self.buckets();
        crate::limiter::Limiter::new(instance, client, user)
    }

    /// `fault_task_panics` parsed: the task and how many rounds panic.
    pub fn fault_panics(&self) -> Option<(&str, u32)> {
        let (task, n) = self.fault_task_panics.split_once(':')?;
        let n = n.parse().ok()?;
        crate::metrics::TASKS.contains(&task).then_some((task, n))
    }

    pub fn hold(&self) -> Duration {
        Duration::from_secs(self.hold_seconds)
    }

    pub fn redis_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout_ms)
    }

    /// The effective configuration as TOML, with the password in the Redis
    /// URL redacted.
    pub fn redacted_toml(&self) -> String {
        let mut c = self.clone();
        c.redis_url = redact_url(&c.redis_url);
        c.postgres_url = redact_dsn(&c.postgres_url);
        // a storefront's id is no secret (it is in Redis key names), and the
        // operator needs it to rotate an unnamed key (docs/tenancy.md)
        for k in c.api_keys.iter_mut() {
            *k = format!("{}:***", crate::domain::api_key(k).0);
        }
        for k in c.admin_keys.iter_mut() {
            *k = "***".into();
        }
        if !c.waitlist_webhook_secret.is_empty() {
            c.waitlist_webhook_secret = "***".into();
        }
        toml::to_string_pretty(&c).unwrap_or_else(|e| format!("# cannot render: {e}"))
    }
}

/// The settings a running instance takes on a reload (SIGHUP or `POST
/// /admin/v1/reload`, docs/operations.md): who may call, how fast, and where
/// promotions go and how they are signed, which key signs holds and which
/// are published. Every other setting shapes
/// something built once at start (the listener, the Redis and Postgres
/// pools, the background tasks' timers, the scripts' arguments) and needs a
/// restart.
pub const RELOADABLE: &[&str] = &[
    "api_keys",
    "admin_keys",
    "global_rate_per_second",
    "global_burst",
    "client_rate_per_second",
    "client_burst",
    "user_rate_per_second",
    "user_burst",
    "waitlist_webhook_url",
    "waitlist_webhook_secret",
    "waitlist_webhook_ca_file",
    "signing_key_file",
    "previous_signing_keys",
];

/// What a reload does ([`Config::reload_plan`]).
#[derive(Debug)]
pub struct ReloadPlan {
    /// Reloadable settings whose value changes.
    pub changed: Vec<&'static str>,
    /// Settings that differ from the running value but need a restart; they
    /// keep their running value.
    pub restart_needed: Vec<String>,
    /// The running configuration with the changed settings taken.
    pub config: Config,
}

impl Config {
    /// Reloading `new` over `self` (the running configuration): the
    /// reloadable settings that differ are taken, the others that differ are
    /// listed and keep their running value. `new` must be valid on its own,
    /// and the result too (e.g. with `insecure_no_auth` off at start, a
    /// reload cannot remove the last key). Names only: no value (a key, a
    /// secret) reaches the plan.
    pub fn reload_plan(&self, new: &Config) -> Result<ReloadPlan, ConfigError> {
        new.validate()?;
        let as_map = |c: &Config| match serde_json::to_value(c) {
            Ok(serde_json::Value::Object(m)) => Ok(m),
            _ => Err(ConfigError::Invalid("cannot compare configurations".into())),
        };
        let (mut running, next) = (as_map(self)?, as_map(new)?);
        let mut changed = Vec::new();
        let mut restart_needed = Vec::new();
        for (name, value) in &next {
            if running.get(name) == Some(value) {
                continue;
            }
            match RELOADABLE.iter().find(|r| **r == name) {
                Some(r) => {
                    changed.push(*r);
                    running.insert(name.clone(), value.clone());
                }
                None => restart_needed.push(name.clone()),
            }
        }
        changed.sort_unstable();
        restart_needed.sort_unstable();
        let config: Config = serde_json::from_value(serde_json::Value::Object(running))
            .map_err(|e| ConfigError::Invalid(format!("cannot merge configurations: {e}")))?;
        config.validate()?;
        config.validate_auth()?;
        Ok(ReloadPlan {
            changed,
            restart_needed,
            config,
        })
    }
}

/// `scheme://user:password@host…` → `scheme://user:***@host…`; anything
/// else unchanged.
pub fn redact_url(url: &str) -> String {
    if let (Some(scheme_end), Some(at)) = (url.find("://"), url.rfind('@')) {
        if at > scheme_end {
            let creds = &url[scheme_end + 3..at];
            if let Some(colon) = creds.find(':') {
                return format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &creds[..colon],
                    &url[at..]
                );
            }
        }
    }
    url.to_string()
}

/// A database URL or key-value connection string with its password hidden:
/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`, and
/// `password=secret` → `password=***` in the key-value form.
pub fn redact_dsn(url: &str) -> String {
    if url.contains("://") {
        return redact_url(url);
    }
    url.split_whitespace()
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => kv.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_file_parses_and_validates() {
        let c = Config::from_file(Some(Path::new("config/flashgate.toml"))).unwrap();
        c.validate().unwrap();
    }

    #[test]
    fn serving_needs_keys_or_an_explicit_opt_out() {
        let c = Config::default();
        assert!(c.validate_auth().is_err());
        let c = Config {
            insecure_no_auth: true,
            ..Config::default()
        };
        assert!(c.validate_auth().is_ok());
        let c = Config {
            api_keys: vec!["short".into()],
            ..Config::default()
        };
        assert!(c.validate().is_err(), "weak keys are refused");
        let c = Config {
            api_keys: vec!["shop-a:short".into()],
            ..Config::default()
        };
        assert!(c.validate().is_err(), "a name does not count as secret");
        let c = Config {
            api_keys: vec![
                "shop-a:storefront-secret-0001".into(),
                "shop-b:storefront-secret-0001".into(),
            ],
            ..Config::default()
        };
        assert!(c.validate().is_err(), "one secret, two storefronts");
    }

    #[test]
    fn a_reload_takes_the_reloadable_settings_and_lists_the_rest() {
        let running = Config {
            api_keys: vec!["storefront-key-000001".into()],
            ..Config::default()
        };
        let new = Config {
            api_keys: vec!["storefront-key-000002".into()],
            user_burst: 99,
            listen: "127.0.0.1:9".parse().unwrap(),
            hold_seconds: 60,
            ..Config::default()
        };
        let plan = running.reload_plan(&new).unwrap();
        assert_eq!(plan.changed, ["api_keys", "user_burst"]);
        assert_eq!(plan.restart_needed, ["hold_seconds", "listen"]);
        assert_eq!(plan.config.api_keys, new.api_keys);
        assert_eq!(plan.config.user_burst, 99);
        assert_eq!(plan.config.listen, running.listen, "not applied");
        assert_eq!(plan.config.hold_seconds, running.hold_seconds);
        // nothing changes: an empty plan
        let same = running.reload_plan(&running).unwrap();
        assert!(same.changed.is_empty() && same.restart_needed.is_empty());
        // the last key cannot go without insecure_no_auth
        assert!(running.reload_plan(&Config::default()).is_err());
        // a bad value anywhere refuses the whole reload
        let bad = Config {
            hold_seconds: 0,
            ..running.clone()
        };
        assert!(running.reload_plan(&bad).is_err());
    }

    #[test]
    fn a_webhook_needs_a_signing_secret_and_http_or_https() {
        let hook = |url: &str, secret: &str| Config {
            waitlist_webhook_url: url.into(),
            waitlist_webhook_secret: secret.into(),
            ..Config::default()
        };
        assert!(hook("https://shop.example/hook", "whsec-0123456789abcdef")
            .validate()
            .is_ok());
        assert!(hook("http://10.0.0.1:8080/hook", "whsec-0123456789abcdef")
            .validate()
            .is_ok());
        assert!(hook("https://shop.example/hook", "").validate().is_err());
        assert!(hook("https://shop.example/hook", "short")
            .validate()
            .is_err());
        assert!(hook("ftp://shop.example/hook", "whsec-0123456789abcdef")
            .validate()
            .is_err());
        let shown = hook("https://shop.example/hook", "whsec-0123456789abcdef").redacted_toml();
        assert!(!shown.contains("whsec"), "{shown}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<Config>("hold_secs = 3").is_err());
    }

    #[test]
    fn validation_catches_nonsense() {
        let c = Config {
            hold_seconds: 0,
            ..Config::default()
        };
        assert!(c.validate().is_err());
        let c = Config {
            max_hold_seconds: 10,
            hold_seconds: 20,
            ..Config::default()
        };
        assert!(c.validate().is_err());
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_dsn("postgres://fg:s3cret@db:5432/flashgate"),
            "postgres://fg:***@db:5432/flashgate"
        );
        assert_eq!(
            redact_dsn("postgres://db/flashgate"),
            "postgres://db/flashgate"
        );
        assert_eq!(
            redact_dsn("host=127.0.0.1 password=s3cret user=fg"),
            "host=127.0.0.1 password=*** user=fg"
        );
    }

    #[test]
    fn password_is_redacted() {
        assert_eq!(redact_url("redis://u:secret@h:1"), "redis://u:***@h:1");
        assert_eq!(redact_url("redis://h:1"), "redis://h:1");
        let c = Config {
            redis_url: "redis://:pw@localhost:6379".into(),
            ..Config::default()
        };
        assert!(!c.redacted_toml().contains("pw"));
        let c = Config {
            api_keys: vec!["storefront-secret-0001".into()],
            admin_keys: vec!["admin-secret-000000001".into()],
            ..Config::default()
        };
        let shown = c.redacted_toml();
        assert!(!shown.contains("-secret-"), "{shown}");
        let c = Config {
            api_keys: vec!["shop-a:storefront-secret-0001".into()],
            ..Config::default()
        };
        let shown = c.redacted_toml();
        assert!(shown.contains("\"shop-a:***\""), "{shown}");
        assert!(!shown.contains("-secret-"), "{shown}");
    }
}
