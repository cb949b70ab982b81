//! Builds the service from a [`Config`] and runs it: the HTTP server and the
//! background tasks (expiry sweeper), all stopped by one shutdown signal.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{Config, ConfigError};
use crate::error::InventoryError;
use crate::inventory::{expiry, Inventory};
use crate::metrics::Metrics;

/// Everything a request handler may use.
pub struct AppState {
    pub config: Config,
    pub inventory: Arc<Inventory>,
    pub metrics: Arc<Metrics>,
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
        tracing::info!(addr = %self.local_addr(), "flashgate serving");
        crate::http::serve(self.listener, self.state.clone(), stop).await;
        let _ = tx.send(true);
        let _ = sweeper.await;
        self.state.inventory.close().await;
        tracing::info!("flashgate stopped");
    }
}
