//! The HTTP server: accept loop, per-connection hyper service, graceful drain.
//! Requests go through [`router::handle`], which owns the one `match` on
//! (method, path) and the one mapping from errors to responses.

pub mod body;
pub mod router;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::app::AppState;

/// Serve `listener` until `stop` resolves, then stop accepting and give
/// in-flight requests up to the drain time it yields to finish.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    stop: impl std::future::Future<Output = Duration>,
) {
    let graceful = GracefulShutdown::new();
    tokio::pin!(stop);
    let drain = loop {
        tokio::select! {
            drain = &mut stop => break drain,
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off briefly instead of spinning
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                let service = service_fn(move |req| {
                    let state = state.clone();
                    let handled = router::handle(state, req);
                    async move { Ok::<_, Infallible>(handled.await) }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
        }
    };
    drop(listener);
    tracing::info!(
        drain_seconds = drain.as_secs_f64(),
        "stopped accepting; draining in-flight requests"
    );
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain time over; closing the remaining connections");
    }
}
