//! Signals, each with one meaning. SIGTERM: stop accepting, let in-flight
//! requests finish within the drain time. SIGINT (Ctrl-C): leave quickly.

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
