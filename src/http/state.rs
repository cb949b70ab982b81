//! What every request handler may use: [`AppState`], built by `app::App`
//! and shared by the accept loop and the router, and [`Tasks`], the
//! background tasks' heartbeats that `/readyz` reads. It lives here, beside
//! the handlers, so the arrows point one way: `app` → `http` → the rest.

use std::sync::Arc;
use std::time::Duration;

use crate::auth::Auth;
use crate::config::Config;
use crate::inventory::Inventory;
use crate::limiter::Limiter;
use crate::metrics::Metrics;
use crate::shutdown::Heartbeat;

/// Everything a request handler may use.
pub struct AppState {
    pub config: Config,
    pub inventory: Arc<Inventory>,
    pub metrics: Arc<Metrics>,
    pub auth: Auth,
    pub limiter: Limiter,
    /// The supervised background tasks (filled by `app::App::run_until`).
    pub tasks: Tasks,
}

/// The background tasks' heartbeats, for `/readyz`.
#[derive(Default)]
pub struct Tasks {
    entries: std::sync::Mutex<Vec<TaskEntry>>,
}

struct TaskEntry {
    name: &'static str,
    heartbeat: Heartbeat,
    /// Stalled after this long without a completed round.
    bound: Duration,
}

impl Tasks {
    pub(crate) fn register(&self, name: &'static str, heartbeat: Heartbeat, bound: Duration) {
        if let Ok(mut e) = self.entries.lock() {
            e.push(TaskEntry {
                name,
                heartbeat,
                bound,
            });
        }
    }

    /// One line per task that has not completed a round within its bound.
    pub fn stalled(&self) -> Vec<String> {
        let Ok(entries) = self.entries.lock() else {
            return vec!["task registry poisoned".into()];
        };
        entries
            .iter()
            .filter_map(|t| {
                let since = t.heartbeat.since();
                (since > t.bound).then(|| {
                    format!(
                        "background task {} has not completed a round for {:.1} s (bound {:.1} s)",
                        t.name,
                        since.as_secs_f64(),
                        t.bound.as_secs_f64()
                    )
                })
            })
            .collect()
    }
}
