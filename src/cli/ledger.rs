//! `flashgate ledger`: a ledger writer on its own (outbox streams in Redis
//! -> PostgreSQL) until SIGTERM or SIGINT, with an optional metrics endpoint.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::{connect, db_of, CommonArgs, LedgerArgs};
use crate::ledger::{self, LedgerSettings, Writer};
use crate::metrics::Metrics;

/// `flashgate ledger`: a writer on its own, until SIGTERM or SIGINT. With
/// `--listen`, it serves its metrics (`GET /metrics`, `GET /healthz`) there.
/// `flashgate ledger`.
#[derive(Args, Debug)]
pub struct LedgerCmdArgs {
    /// Serve this writer's metrics here (`GET /metrics`, `GET /healthz`).
    #[arg(long, env = "FLASHGATE_LISTEN")]
    pub listen: Option<SocketAddr>,
    #[command(flatten)]
    pub ledger: LedgerArgs,
    #[command(flatten)]
    pub common: CommonArgs,
}

pub(super) async fn run(args: LedgerCmdArgs) -> Result<(), String> {
    let mut config = args
        .ledger
        .resolve(&args.common)
        .map_err(|e| e.to_string())?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }

    super::init_tracing(&config.log_format);
    let db = db_of(&config)?;
    let metrics = Arc::new(Metrics::new(1));
    let inventory = connect(&config, metrics.clone()).await?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    if args.listen.is_some() {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
        tracing::info!(addr = %config.listen, "ledger metrics at /metrics");
        tokio::spawn(serve_metrics(listener, metrics.clone(), rx.clone()));
    }
    let writer = Writer::new(
        inventory.clone(),
        db,
        metrics,
        LedgerSettings::from_config(&config),
    );
    let task = tokio::spawn(ledger::run(
        writer,
        crate::shutdown::Heartbeat::default(),
        rx,
    ));
    crate::shutdown::signal(Duration::from_secs(config.drain_seconds)).await;
    let _ = tx.send(true);
    let _ = task.await;
    inventory.close().await;
    Ok(())
}

/// The standalone writer's own tiny HTTP endpoint: its metrics and liveness.
async fn serve_metrics(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    use hyper::{Response, StatusCode};
    loop {
        let stream = tokio::select! {
            a = listener.accept() => match a {
                Ok((s, _)) => s,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let metrics = metrics.clone();
        let service =
            hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                async move {
                    let (status, ctype, body) = match (req.method(), req.uri().path()) {
                        (&hyper::Method::GET, "/metrics") => (
                            StatusCode::OK,
                            crate::metrics::CONTENT_TYPE,
                            metrics.render(),
                        ),
                        (&hyper::Method::GET, "/healthz") => {
                            (StatusCode::OK, "text/plain", "ok\n".to_string())
                        }
                        _ => (
                            StatusCode::NOT_FOUND,
                            "text/plain",
                            "not found\n".to_string(),
                        ),
                    };
                    Response::builder()
                        .status(status)
                        .header("content-type", ctype)
                        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                }
            });
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = conn.await;
        });
    }
}
