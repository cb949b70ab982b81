//! The HTTP server: accept loop, per-connection hyper service, graceful drain.
//! Requests go through [`router::handle`], which owns the one `match` on
//! (method, path) and the one mapping from errors to responses.
//!
//! What one client can make the server hold is bounded here: connections
//! (`max_connections`; one more is answered 503 and closed at accept), a
//! request's head (`max_header_bytes`: the router answers 431 past it, hyper
//! refuses a head past twice it before buffering more), the time to send a
//! head or to come back on an idle keep-alive connection
//! (`header_read_timeout_ms`), and the time a response may stall because the
//! client stopped reading (`write_timeout_ms`, [`io::WriteTimeout`]).

pub mod body;
pub mod io;
mod route;
pub mod router;
pub mod state;

pub use route::table as route_table;
pub use state::{AppState, Tasks};

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Serve `listener` until `stop` resolves, then stop accepting and give
/// in-flight requests up to the drain time it yields to finish.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    stop: impl std::future::Future<Output = Duration>,
) {
    let graceful = GracefulShutdown::new();
    let config = &state.config;
    let max_connections = within_file_limit(config.max_connections, file_limit());
    if max_connections < config.max_connections {
        tracing::warn!(
            configured = config.max_connections,
            serving = max_connections,
            "max_connections is above what the open-file limit (ulimit -n) leaves; serving fewer"
        );
    }
    let places = Arc::new(Semaphore::new(max_connections));
    let header_read_timeout = Duration::from_millis(config.header_read_timeout_ms);
    let write_timeout = Duration::from_millis(config.write_timeout_ms);
    // hyper's own ceiling on a head: past it, a bare 431 and the connection
    // closed, before more of the head is buffered; below it the router
    // answers 431 with the JSON body. The read buffer holds a head and a body.
    let head_ceiling = config.max_header_bytes.saturating_mul(2);
    let read_buffer = (head_ceiling + config.body_limit_bytes).max(8192);
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
                let Ok(place) = places.clone().try_acquire_owned() else {
                    refuse(&state, stream);
                    continue;
                };
                let place = Place::new(place, &state);
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                let service = service_fn(move |req| {
                    let state = state.clone();
                    let handled = router::handle(state, req);
                    async move { Ok::<_, Infallible>(handled.await) }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_read_timeout)
                    .max_header_size(head_ceiling)
                    .max_buf_size(read_buffer)
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(io::WriteTimeout::new(stream, write_timeout)), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    drop(place);
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

/// A connection's place under `max_connections`, counted in
/// `flashgate_http_connections_open` while it is held.
struct Place {
    _permit: OwnedSemaphorePermit,
    open: prometheus::IntGauge,
}

impl Place {
    fn new(permit: OwnedSemaphorePermit, state: &AppState) -> Place {
        let open = state.metrics.connections_open.clone();
        open.inc();
        Place {
            _permit: permit,
            open,
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// `max_connections` are open: answer this one 503 and close it, at once and
/// without reading from it (a single non-blocking write into an empty send
/// buffer; if even that fails the close alone says it).
fn refuse(state: &AppState, stream: TcpStream) {
    state.metrics.connections_refused.inc();
    let _ = stream.try_write(&body::TOO_MANY_CONNECTIONS);
    tracing::debug!("max_connections open: a connection refused");
}

/// File descriptors kept for everything but client connections: Redis and
/// Postgres pools, the listener, logs, a restarting ledger writer.
const OTHER_FILES: u64 = 256;

/// `want` connections, or fewer if the open-file limit cannot hold them and
/// the other files: at the limit `accept` fails (EMFILE) and a client waits in
/// the backlog instead of being told 503.
fn within_file_limit(want: usize, limit: Option<u64>) -> usize {
    let Some(limit) = limit else { return want };
    let room = limit.saturating_sub(OTHER_FILES).max(limit / 2).max(1);
    want.min(usize::try_from(room).unwrap_or(usize::MAX))
}

/// This process's soft open-file limit (Linux: /proc/self/limits), if known.
fn file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_file_limit(&limits)
}

fn parse_file_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_connections_leaves_room_under_the_file_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             63448                63448                processes \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_file_limit(limits), Some(1024));
        assert_eq!(
            parse_file_limit("Max open files  unlimited unlimited files"),
            None
        );
        assert_eq!(within_file_limit(10_000, Some(1024)), 768);
        assert_eq!(within_file_limit(10_000, Some(300)), 150);
        assert_eq!(within_file_limit(10_000, Some(1_048_576)), 10_000);
        assert_eq!(within_file_limit(10_000, None), 10_000);
        assert!(file_limit().is_some(), "readable on Linux");
    }
}
