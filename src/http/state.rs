//! What every request handler may use: [`AppState`], built by `app::App`
//! and shared by the accept loop and the router, and [`Tasks`], the
//! background tasks' heartbeats that `/readyz` reads. It lives here, beside
//! the handlers, so the arrows point one way: `app` → `http` → the rest.
//!
//! **Reload.** What a reload may change (keys, rate limits, the webhook:
//! [`crate::config::RELOADABLE`]) is read through [`AppState::live`], a
//! pointer swapped whole ([`arc_swap`]): a request reads it without a lock
//! and sees either the old or the new settings, never a mix. A request
//! admitted under the old keys completes under them; the next request meets
//! the new ones. A reload ([`AppState::reload`]) re-reads the settings,
//! takes the reloadable ones that changed, lists the others as needing a
//! restart, and changes nothing if any setting is invalid
//! (docs/operations.md).

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::{ArcSwap, Guard};
use serde::Serialize;

use crate::auth::Auth;
use crate::config::{Config, ConfigError};
use crate::inventory::Inventory;
use crate::limiter::Limiter;
use crate::metrics::Metrics;
use crate::shutdown::Heartbeat;
use crate::signing::Signing;
use crate::webhook::Webhook;

/// Everything a request handler may use.
pub struct AppState {
    /// The configuration the instance started with. Its reloadable settings
    /// are those of the start: read the running ones from [`Self::live`].
    pub config: Config,
    pub inventory: Arc<Inventory>,
    pub metrics: Arc<Metrics>,
    /// Where promotions go (the reload swaps its target).
    pub webhook: Webhook,
    /// The supervised background tasks (filled by `app::App::run_until`).
    pub tasks: Tasks,
    live: ArcSwap<Live>,
    /// Where a reload reads the settings from (`serve`: the config file,
    /// environment and flags, as at start).
    source: OnceLock<ConfigSource>,
    /// One reload at a time.
    reloading: Mutex<()>,
}

/// Reads the settings afresh, validated.
pub type ConfigSource = Box<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>;

/// The settings a reload may change, and what is built from them.
pub struct Live {
    /// The running configuration: the start's, with the reloadable settings
    /// of the last reload.
    pub config: Config,
    pub auth: Auth,
    pub limiter: Limiter,
    /// The key that signs holds and the key set published (`signing`).
    pub signing: Signing,
}

/// A reload's answer: which settings changed, which differ but need a
/// restart (names only, never values).
#[derive(Debug, Serialize)]
pub struct Reloaded {
    pub changed: Vec<&'static str>,
    pub restart_needed: Vec<String>,
}

impl AppState {
    /// The state of a service started with `config` (validated). Fails only
    /// on a webhook CA file or a signing key file that cannot be used.
    pub fn new(
        config: Config,
        inventory: Arc<Inventory>,
        metrics: Arc<Metrics>,
    ) -> Result<AppState, ConfigError> {
        let live = Live {
            auth: Auth::from_config(&config),
            limiter: config.limiter(),
            signing: Signing::from_config(&config)?,
            config: config.clone(),
        };
        Ok(AppState {
            webhook: Webhook::from_config(&config)?,
            config,
            inventory,
            metrics,
            tasks: Tasks::default(),
            live: ArcSwap::from_pointee(live),
            source: OnceLock::new(),
            reloading: Mutex::new(()),
        })
    }

    /// The running keys, rate limits and settings: a snapshot, cheap to
    /// take (no lock, no reference count in the common case). Hold it only
    /// briefly: take it again after an await.
    pub fn live(&self) -> Guard<Arc<Live>> {
        self.live.load()
    }

    /// Where [`Self::reload`] reads the settings (set once, by `serve`).
    pub fn reload_from(&self, source: ConfigSource) {
        let _ = self.source.set(source);
    }

    /// Re-read the settings and apply them: see [`Self::apply`].
    pub fn reload(&self) -> Result<Reloaded, ConfigError> {
        let new = match self.source.get() {
            Some(read) => read(),
            None => Err(ConfigError::Invalid(
                "this instance has no configuration source to re-read".into(),
            )),
        };
        self.apply(new)
    }

    /// Take the reloadable settings of `new` that changed, list the others
    /// that differ, count the outcome in `flashgate_config_reloads_total`
    /// and log it. A `new` that is an error or invalid changes nothing.
    pub fn apply(&self, new: Result<Config, ConfigError>) -> Result<Reloaded, ConfigError> {
        let result = {
            let _one = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
            self.swap(new)
        };
        match &result {
            Ok(r) if r.restart_needed.is_empty() => {
                self.metrics.config_reload("ok");
                tracing::info!(changed = ?r.changed, "configuration reloaded");
            }
            Ok(r) => {
                self.metrics.config_reload("restart_needed");
                tracing::warn!(changed = ?r.changed, restart_needed = ?r.restart_needed,
                    "configuration reloaded; the settings in restart_needed keep their running value until a restart");
            }
            Err(e) => {
                self.metrics.config_reload("invalid");
                tracing::warn!(error = %e.redacted(), "configuration reload refused; nothing changed");
            }
        }
        result
    }

    fn swap(&self, new: Result<Config, ConfigError>) -> Result<Reloaded, ConfigError> {
        let current = self.live.load_full();
        let plan = current.config.reload_plan(&new?)?;
        // key files are read again on every reload (a key may have been
        // rotated under the same name); one that cannot be used refuses the
        // reload before anything changed
        let signing = Signing::from_config(&plan.config)?;
        if plan
            .changed
            .iter()
            .any(|c| c.starts_with("waitlist_webhook"))
            // a CA file is read again on every reload (its certificates may
            // have been rotated under the same name)
            || !plan.config.waitlist_webhook_ca_file.is_empty()
        {
            // the last step that can fail: nothing has changed before it
            self.webhook.reconfigure(&plan.config)?;
        }
        let [instance, client, user] = plan.config.buckets();
        let live = Live {
            signing,
            auth: Auth::from_config(&plan.config),
            limiter: current.limiter.reconfigured(instance, client, user),
            config: plan.config,
        };
        self.live.store(Arc::new(live));
        Ok(Reloaded {
            changed: plan.changed,
            restart_needed: plan.restart_needed,
        })
    }
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
