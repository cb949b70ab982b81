//! Signals, each with one meaning. SIGTERM: stop accepting, let in-flight
//! requests finish within the drain time. SIGINT (Ctrl-C): leave quickly.
//! SIGHUP: reload the configuration ([`hangups`]), serving on.
//! Also the [`Heartbeat`] each background task beats between its rounds.

use std::time::Duration;

/// Resolves on SIGTERM (yielding `drain`) or SIGINT (yielding a short drain).
pub async fn signal(drain: Duration) -> Duration {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => { tracing::info!("SIGINT: leaving"); Duration::from_millis(500) }
        _ = term => { tracing::info!("SIGTERM: draining"); drain }
    }
}

/// Each SIGHUP, as a message (`None` never comes while the process runs).
/// Listening starts at the call, which replaces SIGHUP's default action
/// (ending the process). Where signals cannot be listened to, nothing comes.
pub fn hangups() -> tokio::sync::mpsc::Receiver<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    #[cfg(unix)]
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(mut s) => {
            tokio::spawn(async move {
                while s.recv().await.is_some() {
                    // a full channel: a reload is already due, it reads the
                    // file as it is by then
                    let _ = tx.try_send(());
                }
            });
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; reload with POST /admin/v1/reload")
        }
    }
    rx
}

/// What a background task reports after each round it completes (whatever
/// the round's outcome: a sweep that met a Redis error still completed);
/// the supervisor in `app.rs` reads it to tell a stalled task from a live
/// one (`/readyz`).
///
/// Fault injection, for tests only and off by default: a heartbeat armed
/// with `panics` (config `fault_task_panics`) panics instead of beating that
/// many times, counted across restarts — a task that panics in the middle of
/// its loop, as a bug would make it.
#[derive(Clone, Debug)]
pub struct Heartbeat {
    epoch: std::time::Instant,
    /// Milliseconds from `epoch` to the last completed round (or the start).
    last: std::sync::Arc<std::sync::atomic::AtomicU64>,
    panics: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat::new(0)
    }
}

impl Heartbeat {
    /// A heartbeat that beat just now; it panics instead of its next
    /// `panics` beats (0: never).
    pub fn new(panics: u32) -> Heartbeat {
        Heartbeat {
            epoch: std::time::Instant::now(),
            last: Default::default(),
            panics: std::sync::Arc::new(std::sync::atomic::AtomicU32::new(panics)),
        }
    }

    /// A round completed.
    pub fn beat(&self) {
        use std::sync::atomic::Ordering;
        let armed = self
            .panics
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if armed {
            panic!("fault injection (fault_task_panics): a background task panics");
        }
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::SeqCst);
    }

    /// How long since the last completed round.
    pub fn since(&self) -> Duration {
        let last = Duration::from_millis(self.last.load(std::sync::atomic::Ordering::SeqCst));
        self.epoch.elapsed().saturating_sub(last)
    }
}
