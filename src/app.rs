//! Builds the service from a [`Config`] and runs it: the HTTP server and the
//! background tasks (expiry sweeper, waitlist promoter, ledger writer, rate
//! limiter pruner), all stopped by one shutdown signal.
//!
//! **Supervision.** Every background task runs under [`supervise`]: a task
//! that panics (a bug; nothing a client or Redis sends should make one) is
//! restarted after a backoff (0.1 s doubling to 5 s, reset once it has run a
//! while), and counted in `flashgate_task_restarts_total{task}`. Each task
//! beats a [`Heartbeat`] after every round it completes — a failed round
//! still counts: the task is alive and retrying, and Redis or Postgres being
//! down is reported elsewhere. One that has not beaten for max(`task_stall_ms`,
//! 5 × its interval) — crash-looping, or hung on an await — fails `/readyz`
//! with `503 task_stalled` naming it ([`Tasks::stalled`]).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{Config, ConfigError};
use crate::inventory::InventoryError;
use crate::inventory::{expiry, Inventory};
use crate::metrics::Metrics;
use crate::shutdown::Heartbeat;

/// The handlers' state lives in `http`; named here too for the callers that
/// build an [`App`] and read its state.
pub use crate::http::{AppState, Tasks};

/// The first restart of a panicked task waits this long, the next ones
/// twice as long as the one before, up to [`RESTART_BACKOFF_MAX`].
const RESTART_BACKOFF_MIN: Duration = Duration::from_millis(100);
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A task that ran this long before it failed restarts with the short backoff.
const RESTART_BACKOFF_RESET: Duration = Duration::from_secs(60);

/// Run the task `make` builds under supervision, as `name` (one of
/// `metrics::TASKS`), whose rounds come every `interval`: restart it after
/// a panic (or an end that was not asked for) with a backoff, count the
/// restart, and register its heartbeat for `/readyz`. Ends when `shutdown`
/// turns true and the task has returned.
fn supervise<F, Fut>(
    state: &Arc<AppState>,
    name: &'static str,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
    make: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn(Heartbeat, watch::Receiver<bool>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let panics = state
        .config
        .fault_panics()
        .filter(|(task, _)| *task == name)
        .map_or(0, |(_, n)| n);
    let heartbeat = Heartbeat::new(panics);
    let bound = Duration::from_millis(state.config.task_stall_ms).max(interval * 5);
    state.tasks.register(name, heartbeat.clone(), bound);
    let metrics = state.metrics.clone();
    tokio::spawn(async move {
        let mut backoff = RESTART_BACKOFF_MIN;
        loop {
            let started = std::time::Instant::now();
            let ended = tokio::spawn(make(heartbeat.clone(), shutdown.clone())).await;
            if *shutdown.borrow() {
                return;
            }
            if started.elapsed() >= RESTART_BACKOFF_RESET {
                backoff = RESTART_BACKOFF_MIN;
            }
            match ended {
                Ok(()) => {
                    tracing::error!(task = name, "background task ended by itself; restarting")
                }
                Err(e) => {
                    let why = match e.try_into_panic() {
                        Ok(p) => p
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| p.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "a panic".into()),
                        Err(e) => e.to_string(),
                    };
                    tracing::error!(task = name, panic = %why, backoff_ms = backoff.as_millis() as u64, "background task panicked; restarting");
                }
            }
            metrics.task_restarts.with_label_values(&[name]).inc();
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                return;
            }
            backoff = (backoff * 2).min(RESTART_BACKOFF_MAX);
        }
    })
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
            state: Arc::new(AppState::new(config, inventory, metrics)?),
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
        let state = &self.state;
        let sweep_interval = Duration::from_millis(state.config.sweep_interval_ms);
        let (inventory, metrics) = (state.inventory.clone(), state.metrics.clone());
        let sweeper = supervise(state, "sweeper", sweep_interval, rx, move |beat, stop| {
            expiry::run(
                inventory.clone(),
                metrics.clone(),
                sweep_interval,
                beat,
                stop,
            )
        });
        let pruner = {
            let s = state.clone();
            let every = Duration::from_secs(state.config.limiter_prune_seconds);
            supervise(
                state,
                "limiter_pruner",
                every,
                tx.subscribe(),
                move |beat, stop| prune_limiter(s.clone(), beat, stop),
            )
        };
        let promoter = {
            let (inventory, metrics) = (state.inventory.clone(), state.metrics.clone());
            let webhook = state.webhook.clone();
            supervise(
                state,
                "promoter",
                sweep_interval,
                tx.subscribe(),
                move |beat, stop| {
                    crate::inventory::waitlist::run(
                        inventory.clone(),
                        metrics.clone(),
                        sweep_interval,
                        webhook.clone(),
                        beat,
                        stop,
                    )
                },
            )
        };
        // the ledger writer's idle wait grows to ledger::MAX_BACKOFF while
        // Postgres is down
        let ledger =
            crate::ledger::task(&state.config, &state.inventory, &state.metrics).map(|make| {
                let every = Duration::from_millis(state.config.ledger_interval_ms)
                    .max(crate::ledger::MAX_BACKOFF);
                supervise(state, "ledger", every, tx.subscribe(), make)
            });
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
async fn prune_limiter(
    state: Arc<AppState>,
    heartbeat: Heartbeat,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(state.config.limiter_prune_seconds));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            return;
        }
        // the running limiter: a reload may have replaced it
        let left = state.live().limiter.prune();
        state.metrics.limiter_buckets.set(left as i64);
        heartbeat.beat();
    }
}
