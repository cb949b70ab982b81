//! Builds the service from a [`Config`] and runs it: the HTTP server and the
//! background tasks (expiry sweeper), all stopped by one shutdown signal.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::auth::Auth;
use crate::config::{Config, ConfigError};
use crate::error::InventoryError;
use crate::inventory::{expiry, Inventory};
use crate::limiter::Limiter;
use crate::metrics::Metrics;

/// Everything a request handler may use.
pub struct AppState {
    pub config: Config,
    pub inventory: Arc<Inventory>,
    pub metrics: Arc<Metrics>,
    pub auth: Auth,
    pub limiter: Limiter,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start against redis: {0}")]
    Redis(#[from] InventoryError),
}

/// A bound, connected, not yet running service.
pub struct App {
    listener: TcpListener,
    state: Arc<AppState>,
}

/// How many per-SKU gauge series /metrics may carry.
const SKU_GAUGE_CAP: usize = 1000;

impl App {
    /// Validate the config, connect to Redis, load the scripts, bind the
    /// listener. Fails rather than starting half-ready.
    pub async fn build(config: Config) -> Result<App, StartError> {
        config.validate()?;
        config.validate_auth()?;
        let metrics = Arc::new(Metrics::new(SKU_GAUGE_CAP));
        let inventory = Arc::new(Inventory::connect(&config, metrics.clone()).await?);
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Bind {
                    addr: config.listen,
                    source,
                })?;
        Ok(App {
            listener,
            state: Arc::new(AppState {
                auth: Auth::from_config(&config),
                limiter: config.limiter(),
                config,
                inventory,
                metrics,
            }),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or(self.state.config.listen)
    }

    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Serve until `stop` resolves; it yields how long in-flight requests may
    /// take to drain. Background tasks finish their current step, then the
    /// Redis connections close.
    pub async fn run_until(self, stop: impl Future<Output = Duration>) {
        let (tx, rx) = watch::channel(false);
        let sweeper = tokio::spawn(expiry::run(
            self.state.inventory.clone(),
            self.state.metrics.clone(),
            Duration::from_millis(self.state.config.sweep_interval_ms),
            rx,
        ));
        let pruner = tokio::spawn(prune_limiter(self.state.clone(), tx.subscribe()));
        let promoter = tokio::spawn(crate::inventory::waitlist::run(
            self.state.inventory.clone(),
            self.state.metrics.clone(),
            Duration::from_millis(self.state.config.sweep_interval_ms),
            crate::webhook::Webhook::from_url(&self.state.config.waitlist_webhook_url),
            tx.subscribe(),
        ));
        let ledger = crate::ledger::spawn(&self.state, tx.subscribe());
        tracing::info!(addr = %self.local_addr(), "flashgate serving");
        crate::http::serve(self.listener, self.state.clone(), stop).await;
        let _ = tx.send(true);
        let _ = sweeper.await;
        let _ = pruner.await;
        let _ = promoter.await;
        if let Some(ledger) = ledger {
            let _ = ledger.await;
        }
        self.state.inventory.close().await;
        tracing::info!("flashgate stopped");
    }
}

/// Forget idle rate-limit buckets on a timer so a crowd of distinct users
/// cannot grow memory without bound; export the bucket count.
async fn prune_limiter(state: Arc<AppState>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(state.config.limiter_prune_seconds));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            return;
        }
        let left = state.limiter.prune();
        state.metrics.limiter_buckets.set(left as i64);
    }
}
