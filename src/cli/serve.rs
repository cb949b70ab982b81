//! `flashgate serve`: the HTTP service until SIGTERM (drain) or SIGINT.

use std::time::Duration;

use super::ServeArgs;
use crate::app::App;

pub(super) async fn run(args: ServeArgs) -> Result<(), String> {
    let config = args.resolve().map_err(|e| e.to_string())?;
    super::init_tracing(&config.log_format);
    let drain = Duration::from_secs(config.drain_seconds);
    let app = App::build(config).await.map_err(|e| e.to_string())?;
    app.run_until(crate::shutdown::signal(drain)).await;
    Ok(())
}
