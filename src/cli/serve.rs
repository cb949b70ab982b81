//! `flashgate serve`: the HTTP service until SIGTERM (drain) or SIGINT;
//! SIGHUP reloads the configuration (docs/operations.md).

use std::time::Duration;

use super::ServeArgs;
use crate::app::App;

pub(super) async fn run(args: ServeArgs) -> Result<(), String> {
    // before anything slow: a SIGHUP that came before the handler would
    // end the process (its default action)
    let mut hangups = crate::shutdown::hangups();
    let config = args.resolve().map_err(|e| e.to_string())?;
    super::init_tracing(&config.log_format);
    let drain = Duration::from_secs(config.drain_seconds);
    let app = App::build(config).await.map_err(|e| e.to_string())?;
    let state = app.state();
    // the file and environment as at start, read again (a process's
    // environment cannot change from outside; the flags stay)
    state.reload_from(Box::new(move || args.resolve()));
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the configuration");
            let _ = state.reload();
        }
    });
    app.run_until(crate::shutdown::signal(drain)).await;
    Ok(())
}
