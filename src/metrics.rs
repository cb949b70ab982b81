//! Prometheus metrics: what an SRE watching a flash sale needs to answer at a glance —
//! is stock moving, who is turned away and why, are Redis and its scripts healthy and
//! fast, do the background tasks (expiry sweeper, ledger writer) keep up, and do the
//! books balance.
//!
//! Metrics are owned by the app instance: one [`Registry`] per [`Metrics`], no global
//! registry, so several apps in one test process don't clash and a test reads exactly
//! the numbers its own app produced.
//!
//! The dashboard `grafana/dashboards/flashgate-overview.json` and the alert rules
//! `prometheus/alerts.yml` query these names; `tests/it/observability_files.rs` checks that
//! every `flashgate_*` name they use is registered here, so renaming a metric without
//! updating them fails a test instead of blanking a panel in the middle of a sale.
//!
//! Cardinality is bounded on purpose: every label takes values from a closed set
//! ([`ROUTES`], [`SCRIPTS`], [`OUTCOMES`], [`REDIS_ERROR_KINDS`], the HTTP status codes the
//! service emits) except `sku`, which comes from the catalogue and is capped by
//! `sku_gauge_cap` distinct values per instance.
//!
//! Longer than most modules (≈680 lines, a third of them unit tests): one
//! registry, every metric's name, help and doc in one list, so a metric is
//! added or renamed in one place.

use std::collections::HashSet;
use std::fmt::{self, Write as _};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{
    Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// `Content-Type` of the body [`Metrics::render`] returns (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

/// Values of the `route` label of the HTTP metrics: one per route of the
/// route table (`http::router::Route`, in its order; a test there holds them
/// together).
pub const ROUTES: [&str; 22] = [
    "reserve",
    "get_reservation",
    "confirm",
    "release",
    "extend",
    "sku",
    "waitlist",
    "admin_sku",
    "admin_preload",
    "admin_reload",
    "healthz",
    "readyz",
    "metrics",
    "openapi",
    "carts",
    "get_cart",
    "cart_confirm",
    "cart_release",
    "cart_extend",
    "jwks",
    "sku_draw",
    "not_found",
];

/// Values of the `script` label: one per Lua script in `lua/` (its file
/// name; `lib.lua` is the prelude of every script, not one itself). A test
/// in `inventory::scripts` holds them to `lua/*.lua` and `Scripts::all`.
pub const SCRIPTS: [&str; 28] = [
    "claim",
    "reserve",
    "confirm",
    "release",
    "extend",
    "expire",
    "preload",
    "transfer_out",
    "transfer_in",
    "transfer_done",
    "cap_take",
    "cap_give",
    "fix",
    "wl_join",
    "wl_end",
    "wl_expire",
    "wl_next",
    "wl_lease",
    "wl_gate",
    "wl_bump",
    "wl_wait",
    "wl_draw",
    "touch",
    "records",
    "meta_upgrade",
    "cart_begin",
    "cart_move",
    "cart_pend",
];

/// Values of the `outcome` label: what happened to a reservation request or a hold.
pub const OUTCOMES: [&str; 10] = [
    "held",
    "replayed",
    "sold_out",
    "rate_limited",
    "purchase_limit",
    "waitlisted",
    "promoted",
    "confirmed",
    "released",
    "expired",
];

/// Values of the `outcome` label of [`Metrics::carts`]: what a cart came to
/// (docs/carts.md).
pub const CART_OUTCOMES: [&str; 9] = [
    "held",
    "replayed",
    "sold_out",
    "purchase_limit",
    "abandoned",
    "confirmed",
    "released",
    "expired",
    "incomplete",
];

/// Values of the `task` label: the background tasks `app.rs` supervises.
pub const TASKS: [&str; 4] = ["sweeper", "promoter", "ledger", "limiter_pruner"];

/// Values of the `outcome` label of [`Metrics::config_reloads`].
pub const RELOAD_OUTCOMES: [&str; 3] = ["ok", "restart_needed", "invalid"];

/// Values of the `kind` label of [`Metrics::redis_errors`].
pub const REDIS_ERROR_KINDS: [&str; 4] = ["timeout", "connection", "noscript", "other"];

/// Latency buckets in seconds, 100 µs to 10 s: a reserve script answers in well under a
/// millisecond when Redis is healthy, the reserve target is 10 ms (an exact bucket bound,
/// so the p99 alert compares against a measured edge, not an interpolation), and a
/// timed-out Redis call lands in the seconds range.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The service's metrics, registered in a registry of their own.
///
/// Record through the methods where there is one (they keep label values and the SKU
/// cap consistent); the fields are public for the background tasks that own a single
/// number (sweeper, ledger writer, limiter pruning).
pub struct Metrics {
    registry: Registry,
    /// `flashgate_http_requests_total{route,status}` — how many requests each endpoint
    /// answered, and with which status: the 429 (rate limited) and 503 (dependency down)
    /// rates come from here.
    pub http_requests: IntCounterVec,
    /// `flashgate_http_request_duration_seconds{route}` — how long each endpoint took from
    /// parsed request to rendered response; the reserve p99 is the service's latency target.
    pub http_duration: HistogramVec,
    /// `flashgate_script_duration_seconds{script}` — how long each Lua script took as seen
    /// by the client, network included: separates "Redis is slow" from "we are slow".
    pub script_duration: HistogramVec,
    /// `flashgate_reservation_outcomes_total{outcome}` — what the sale is doing: holds
    /// granted, turned away (sold out, rate limited, over the purchase limit), queued on
    /// the waitlist, and how holds ended (confirmed, released, expired, promoted).
    pub outcomes: IntCounterVec,
    /// The counter of each of [`OUTCOMES`], in its order, resolved once: a
    /// sold-out answer counts one, and a label lookup per answer (hashing
    /// the label, a lock) was ≈ 2 % of its instructions.
    outcome_counters: [IntCounter; OUTCOMES.len()],
    /// `flashgate_redis_errors_total{kind}` — Redis calls that failed, by kind; any steady
    /// rate means requests are being refused (stock fails closed).
    pub redis_errors: IntCounterVec,
    /// `flashgate_sku_available_units{sku}` — units still for sale, summed over shards.
    pub sku_available: IntGaugeVec,
    /// `flashgate_sku_held_units{sku}` — units in unexpired holds, not yet confirmed.
    pub sku_held: IntGaugeVec,
    /// `flashgate_sku_sold_units{sku}` — units confirmed as sold.
    pub sku_sold: IntGaugeVec,
    /// `flashgate_sku_waitlist_length{sku}` — tickets waiting for a unit to come back.
    pub sku_waitlist: IntGaugeVec,
    /// `flashgate_waitlist_promotions_total{sku}` — waitlist tickets promoted into
    /// holds by this instance's promoter (sum over instances: the promotions per
    /// second that wait estimates divide by; the same promotions as
    /// `flashgate_reservation_outcomes_total{outcome="promoted"}`, per SKU).
    pub waitlist_promotions: IntCounterVec,
    /// `flashgate_books_drift_units{sku}` — live per-SKU check in Redis of
    /// `initial + transferred_in - transferred_out - (available + held + sold)`; anything
    /// but 0 means units were lost or created and the books need a reconcile.
    pub books_drift: IntGaugeVec,
    /// `flashgate_sweeper_runs_total` — expiry sweeps completed; a flat line means the
    /// sweeper is stuck and expired holds are not coming back to stock.
    pub sweeper_runs: IntCounter,
    /// `flashgate_sweeper_expired_holds_total` — holds the sweeper expired and returned.
    pub sweeper_expired: IntCounter,
    /// `flashgate_sweeper_lag_seconds` — how late, past its expiry time, the oldest hold
    /// returned by the last sweep was: how long expired units sat unsellable.
    pub sweeper_lag: Gauge,
    /// `flashgate_ledger_lag_events` — outbox events in Redis not yet written to Postgres:
    /// how far the durable record trails the live sale.
    pub ledger_lag: IntGauge,
    /// `flashgate_ledger_events_written_total` — outbox events written to Postgres.
    pub ledger_written: IntCounter,
    /// `flashgate_ledger_dead_letters_total` — outbox entries Postgres refused, parked
    /// in `ledger_dead_letters` so their stream goes on.
    pub ledger_dead_letters: IntCounter,
    /// `flashgate_rate_limiter_buckets` — per-user buckets held in memory by this instance;
    /// should fall back after each prune, growth without bound is a leak.
    pub limiter_buckets: IntGauge,
    /// `flashgate_http_connections_open` — client connections being served now;
    /// near `max_connections` means the next ones are refused.
    pub connections_open: IntGauge,
    /// `flashgate_http_connections_refused_total` — connections closed at accept
    /// because `max_connections` were open (answered `503 too_many_connections`).
    pub connections_refused: IntCounter,
    /// `flashgate_task_restarts_total{task}` — background tasks restarted after a panic
    /// (one of [`TASKS`]); any increase is a bug to read in the logs.
    pub task_restarts: IntCounterVec,
    /// `flashgate_config_reloads_total{outcome}` — configuration reloads (SIGHUP,
    /// `POST /admin/v1/reload`) by outcome: `ok`, `restart_needed` (applied, but some
    /// changed settings wait for a restart), `invalid` (refused, nothing changed).
    pub config_reloads: IntCounterVec,
    /// `flashgate_carts_total{outcome}` — carts by what they came to (one of
    /// [`CART_OUTCOMES`]): created whole, refused with nothing held, abandoned
    /// by a dead instance and compensated by the sweeper, confirmed, ...
    pub carts: IntCounterVec,
    /// `flashgate_cart_compensations_total` — carts whose held lines were given
    /// back because another line could not be held, or because the instance
    /// running the saga died (the sweeper's). Each is a cart left holding nothing.
    pub cart_compensations: IntCounter,
    /// The most distinct SKUs the per-SKU gauges track; later SKUs are refused.
    pub sku_gauge_cap: usize,
    /// `flashgate_sku_series_refused_total` — per-SKU updates refused because the cap was
    /// reached: nonzero means the per-SKU panels miss some SKUs (raise the cap).
    sku_refused: IntCounter,
    /// SKUs that own series in the per-SKU gauges; never more than `sku_gauge_cap`.
    tracked_skus: Mutex<HashSet<String>>,
    /// Sale windows and the fair draw (docs/fair-draw.md).
    pub sale: SaleMetrics,
}

/// The sale window's and the fair draw's metrics.
pub struct SaleMetrics {
    /// `flashgate_sku_seconds_to_open{sku}` — seconds until the SKU's `opens_at` (Redis
    /// clock, as last seen by this instance's promoter); 0 once open.
    pub seconds_to_open: IntGaugeVec,
    /// `flashgate_sku_prequeue_length{sku}` — tickets pre-queued before `opens_at`, not yet drawn.
    pub prequeue: IntGaugeVec,
    /// `flashgate_draw_duration_seconds` — from the pre-queue's close to its draw applied,
    /// on the instance that applied it.
    pub draw_duration: prometheus::Histogram,
}

impl SaleMetrics {
    fn new(reg: &Registrar<'_>) -> SaleMetrics {
        let gauge =
            |name: &str, help: &str| reg.add(IntGaugeVec::new(Opts::new(name, help), &["sku"]));
        SaleMetrics {
            seconds_to_open: gauge(
                "flashgate_sku_seconds_to_open",
                "Seconds until the SKU's sale opens (0 once open).",
            ),
            prequeue: gauge(
                "flashgate_sku_prequeue_length",
                "Tickets pre-queued before the SKU's opens_at, not yet drawn.",
            ),
            draw_duration: reg.add(prometheus::Histogram::with_opts(
                HistogramOpts::new(
                    "flashgate_draw_duration_seconds",
                    "From a pre-queue's close to its draw applied.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )),
        }
    }
}

impl Metrics {
    /// Creates the metrics and registers them in a fresh registry, with
    /// `flashgate_build_info{version}` set to 1 and every counter whose label values are
    /// known up front present at 0: `rate()` and `increase()` only see an increase from
    /// an existing sample, so the first Redis error after start would otherwise be missed.
    #[must_use]
    pub fn new(sku_gauge_cap: usize) -> Self {
        let registry = Registry::new();
        let reg = Registrar(&registry);

        let http_requests = reg.add(IntCounterVec::new(
            Opts::new(
                "flashgate_http_requests_total",
                "HTTP requests answered, by route and status code.",
            ),
            &["route", "status"],
        ));
        let http_duration = reg.add(HistogramVec::new(
            HistogramOpts::new(
                "flashgate_http_request_duration_seconds",
                "Time from parsed request to rendered response, by route.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        ));
        let script_duration = reg.add(HistogramVec::new(
            HistogramOpts::new(
                "flashgate_script_duration_seconds",
                "Round trip of each Lua script call to Redis, by script.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["script"],
        ));
        let outcomes = reg.add(IntCounterVec::new(
            Opts::new(
                "flashgate_reservation_outcomes_total",
                "Reservation requests and holds, by what happened to them.",
            ),
            &["outcome"],
        ));
        let redis_errors = reg.add(IntCounterVec::new(
            Opts::new(
                "flashgate_redis_errors_total",
                "Failed Redis calls, by kind (timeout, connection, noscript, other).",
            ),
            &["kind"],
        ));
        let sku_gauge =
            |name: &str, help: &str| reg.add(IntGaugeVec::new(Opts::new(name, help), &["sku"]));
        let sku_available = sku_gauge(
            "flashgate_sku_available_units",
            "Units of the SKU still for sale, over all shards.",
        );
        let sku_held = sku_gauge(
            "flashgate_sku_held_units",
            "Units of the SKU in unexpired holds, not yet confirmed.",
        );
        let sku_sold = sku_gauge(
            "flashgate_sku_sold_units",
            "Units of the SKU confirmed as sold.",
        );
        let sku_waitlist = sku_gauge(
            "flashgate_sku_waitlist_length",
            "Waitlist tickets of the SKU waiting for a unit.",
        );
        let waitlist_promotions = reg.add(IntCounterVec::new(
            Opts::new(
                "flashgate_waitlist_promotions_total",
                "Waitlist tickets of the SKU promoted into holds by this instance.",
            ),
            &["sku"],
        ));
        let books_drift = sku_gauge(
            "flashgate_books_drift_units",
            "initial + transferred_in - transferred_out - (available + held + sold) in Redis; nonzero means drift.",
        );
        let sweeper_runs = reg.add(IntCounter::new(
            "flashgate_sweeper_runs_total",
            "Expiry sweeps completed.",
        ));
        let sweeper_expired = reg.add(IntCounter::new(
            "flashgate_sweeper_expired_holds_total",
            "Holds expired by the sweeper and returned to stock.",
        ));
        let sweeper_lag = reg.add(Gauge::new(
            "flashgate_sweeper_lag_seconds",
            "How late past its expiry the oldest hold returned by the last sweep was.",
        ));
        let ledger_lag = reg.add(IntGauge::new(
            "flashgate_ledger_lag_events",
            "Outbox events not yet written to Postgres.",
        ));
        let ledger_written = reg.add(IntCounter::new(
            "flashgate_ledger_events_written_total",
            "Outbox events written to Postgres.",
        ));
        let ledger_dead_letters = reg.add(IntCounter::new(
            "flashgate_ledger_dead_letters_total",
            "Outbox entries Postgres refused, parked in ledger_dead_letters.",
        ));
        let limiter_buckets = reg.add(IntGauge::new(
            "flashgate_rate_limiter_buckets",
            "Per-user rate limiter buckets held in memory by this instance.",
        ));
        let connections_open = reg.add(IntGauge::new(
            "flashgate_http_connections_open",
            "Client connections being served.",
        ));
        let connections_refused = reg.add(IntCounter::new(
            "flashgate_http_connections_refused_total",
            "Client connections refused at accept because max_connections were open.",
        ));
        let task_restarts = reg.add(IntCounterVec::new(
            Opts::new(
                "flashgate_task_restarts_total",
                "Background tasks restarted after a panic, by task.",
            ),
            &["task"],
        ));
        for task in TASKS {
            task_restarts.with_label_values(&[task]);
        }
        let carts = reg.add(IntCounterVec::new(
            Opts::new(
                "flashgate_carts_total",
                "Carts by outcome (held, sold_out, abandoned, confirmed, ...).",
            ),
            &["outcome"],
        ));
        for outcome in CART_OUTCOMES {
            carts.with_label_values(&[outcome]);
        }
        let cart_compensations = reg.add(IntCounter::new(
            "flashgate_cart_compensations_total",
            "Carts whose held lines were all given back (a line refused, or the saga's instance died).",
        ));
        let config_reloads = reg.add(IntCounterVec::new(
            Opts::new(
                "flashgate_config_reloads_total",
                "Configuration reloads by outcome (ok, restart_needed, invalid).",
            ),
            &["outcome"],
        ));
        for outcome in RELOAD_OUTCOMES {
            config_reloads.with_label_values(&[outcome]);
        }
        let sku_refused = reg.add(IntCounter::new(
            "flashgate_sku_series_refused_total",
            "Per-SKU gauge updates refused because sku_gauge_cap SKUs are already tracked.",
        ));
        let build_info = reg.add(IntGaugeVec::new(
            Opts::new(
                "flashgate_build_info",
                "Always 1; the version label says which build is running.",
            ),
            &["version"],
        ));
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);

        let sale = SaleMetrics::new(&reg);
        let outcome_counters = OUTCOMES.map(|outcome| outcomes.with_label_values(&[outcome]));
        for kind in REDIS_ERROR_KINDS {
            redis_errors.with_label_values(&[kind]);
        }

        Metrics {
            registry,
            http_requests,
            http_duration,
            script_duration,
            outcomes,
            outcome_counters,
            redis_errors,
            sku_available,
            sku_held,
            sku_sold,
            sku_waitlist,
            waitlist_promotions,
            books_drift,
            sweeper_runs,
            sweeper_expired,
            sweeper_lag,
            ledger_lag,
            ledger_written,
            ledger_dead_letters,
            limiter_buckets,
            connections_open,
            connections_refused,
            task_restarts,
            config_reloads,
            carts,
            cart_compensations,
            sku_gauge_cap,
            sku_refused,
            tracked_skus: Mutex::new(HashSet::new()),
            sale,
        }
    }

    /// One pre-queue drawn and applied by this instance.
    pub fn draw_done(&self, took: Duration, _tickets: usize) {
        self.sale.draw_duration.observe(took.as_secs_f64());
    }

    /// A SKU with `opens_at`: seconds until it (0 once open) and its
    /// pre-queue's length; under the same cap as [`Metrics::set_sku`].
    pub fn set_sale(&self, sku: &str, seconds_to_open: i64, prequeue: i64) {
        if self.track_sku(sku) {
            self.sale
                .seconds_to_open
                .with_label_values(&[sku])
                .set(seconds_to_open.max(0));
            self.sale.prequeue.with_label_values(&[sku]).set(prequeue);
        }
    }

    /// Count a configuration reload by its outcome (one of [`RELOAD_OUTCOMES`]).
    pub fn config_reload(&self, outcome: &str) {
        self.config_reloads.with_label_values(&[outcome]).inc();
    }

    /// Every metric of this instance in the Prometheus text format, the body of `GET /metrics`
    /// (serve it with [`CONTENT_TYPE`]). A labelled metric appears once it has a series.
    #[must_use]
    pub fn render(&self) -> String {
        let mut body = String::new();
        if let Err(e) = TextEncoder::new().encode_utf8(&self.registry.gather(), &mut body) {
            // Only a malformed family (a bug in this module) fails to encode. The scrape
            // still gets what was encoded; the comment says why the rest is missing.
            let _ = write!(body, "\n# flashgate: metrics encoding failed: {e}\n");
        }
        body
    }

    /// Records one answered HTTP request: its route, status code and duration.
    pub fn observe_http(&self, route: &'static str, status: u16, elapsed: Duration) {
        self.http_requests
            .with_label_values(&[route, status_label(status)])
            .inc();
        self.http_duration
            .with_label_values(&[route])
            .observe(elapsed.as_secs_f64());
    }

    /// Records one Lua script call and its round trip to Redis.
    pub fn observe_script(&self, script: &'static str, elapsed: Duration) {
        self.script_duration
            .with_label_values(&[script])
            .observe(elapsed.as_secs_f64());
    }

    /// Counts one reservation outcome (one of [`OUTCOMES`]).
    pub fn outcome(&self, outcome: &'static str) {
        match OUTCOMES.iter().position(|&o| o == outcome) {
            Some(i) => self.outcome_counters[i].inc(),
            None => self.outcomes.with_label_values(&[outcome]).inc(),
        }
    }

    /// Counts one cart outcome (one of [`CART_OUTCOMES`]).
    pub fn cart(&self, outcome: &'static str) {
        self.carts.with_label_values(&[outcome]).inc();
    }

    /// Counts one failed Redis call (kind is one of [`REDIS_ERROR_KINDS`]).
    pub fn redis_error(&self, kind: &'static str) {
        self.redis_errors.with_label_values(&[kind]).inc();
    }

    /// Sets the stock gauges and the books drift of one SKU. Returns `false`, and creates
    /// no series, when `sku_gauge_cap` other SKUs are already tracked: a catalogue of a
    /// million SKUs must not become a million series per gauge.
    pub fn set_sku(&self, sku: &str, available: i64, held: i64, sold: i64, drift: i64) -> bool {
        if !self.track_sku(sku) {
            return false;
        }
        self.sku_available.with_label_values(&[sku]).set(available);
        self.sku_held.with_label_values(&[sku]).set(held);
        self.sku_sold.with_label_values(&[sku]).set(sold);
        self.books_drift.with_label_values(&[sku]).set(drift);
        true
    }

    /// Sets the waitlist length of one SKU; under the same cap as [`Metrics::set_sku`]
    /// (a SKU first seen here counts towards it), dropped when the cap is reached.
    pub fn set_waitlist(&self, sku: &str, len: i64) {
        if self.track_sku(sku) {
            self.sku_waitlist.with_label_values(&[sku]).set(len);
            // the SKU's promotions series exists (at 0) from its first round on
            self.waitlist_promotions.with_label_values(&[sku]);
        }
    }

    /// Counts one waitlist ticket of `sku` promoted; under the same cap as
    /// [`Metrics::set_sku`].
    pub fn promoted(&self, sku: &str) {
        if self.track_sku(sku) {
            self.waitlist_promotions.with_label_values(&[sku]).inc();
        }
    }

    /// Whether `sku` may own per-SKU series: it already does, or there is room under the cap.
    fn track_sku(&self, sku: &str) -> bool {
        // The set is only ever inserted into whole, so a panic elsewhere while the lock was
        // held cannot leave it inconsistent: recover from poisoning instead of panicking.
        let mut tracked = self
            .tracked_skus
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if tracked.contains(sku) {
            return true;
        }
        if tracked.len() >= self.sku_gauge_cap {
            drop(tracked);
            self.sku_refused.inc();
            return false;
        }
        tracked.insert(sku.to_owned());
        true
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tracked = self
            .tracked_skus
            .lock()
            .map_or_else(|e| e.into_inner().len(), |t| t.len());
        f.debug_struct("Metrics")
            .field("sku_gauge_cap", &self.sku_gauge_cap)
            .field("tracked_skus", &tracked)
            .finish_non_exhaustive()
    }
}

/// Registers our own static metric definitions. They are fixed at compile time, so a
/// failure (a malformed name, two metrics with one name) is a bug in this module that
/// every test run hits: panicking is the right answer.
struct Registrar<'a>(&'a Registry);

impl Registrar<'_> {
    fn add<C>(&self, metric: prometheus::Result<C>) -> C
    where
        C: Collector + Clone + 'static,
    {
        let metric = metric.expect("static metric definition is valid");
        self.0
            .register(Box::new(metric.clone()))
            .expect("static metric name is registered once");
        metric
    }
}

/// "100" "101" … "999": the `status` label of every code hyper can answer,
/// as static text (no allocation per request).
static STATUS_TEXT: [u8; 2700] = {
    let mut digits = [0u8; 2700];
    let mut i = 0;
    while i < 900 {
        let code = i + 100;
        digits[3 * i] = b'0' + (code / 100) as u8;
        digits[3 * i + 1] = b'0' + (code / 10 % 10) as u8;
        digits[3 * i + 2] = b'0' + (code % 10) as u8;
        i += 1;
    }
    digits
};

/// The `status` label of an HTTP status code ("other" outside 100..=999).
fn status_label(status: u16) -> &'static str {
    if !(100..=999).contains(&status) {
        return "other";
    }
    let at = usize::from(status - 100) * 3;
    std::str::from_utf8(&STATUS_TEXT[at..at + 3]).unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_outcome_counts_under_its_own_label() {
        let m = Metrics::new(1);
        for (i, outcome) in OUTCOMES.iter().enumerate() {
            for _ in 0..=i {
                m.outcome(outcome);
            }
        }
        for (i, outcome) in OUTCOMES.iter().enumerate() {
            assert_eq!(
                m.outcomes.with_label_values(&[outcome]).get(),
                i as u64 + 1,
                "{outcome}"
            );
        }
    }

    #[test]
    fn status_labels_are_the_codes() {
        assert_eq!(status_label(200), "200");
        assert_eq!(status_label(100), "100");
        assert_eq!(status_label(409), "409");
        assert_eq!(status_label(999), "999");
        assert_eq!(status_label(99), "other");
        assert_eq!(status_label(1000), "other");
    }

    /// Names from the `# TYPE` lines of a rendered page.
    fn families(page: &str) -> Vec<(String, String)> {
        page.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_once(' '))
            .map(|(name, kind)| (name.to_owned(), kind.to_owned()))
            .collect()
    }

    fn exercised() -> Metrics {
        let m = Metrics::new(10);
        m.observe_http("reserve", 200, Duration::from_micros(700));
        m.observe_script("reserve", Duration::from_micros(300));
        m.outcome("held");
        m.redis_error("timeout");
        assert!(m.set_sku("sku-1", 90, 7, 3, 0));
        m.set_waitlist("sku-1", 4);
        m.promoted("sku-1");
        m.set_sale("sku-1", 30, 2);
        m.draw_done(Duration::from_millis(3), 2);
        m
    }

    #[test]
    fn render_contains_every_metric_with_its_type() {
        let page = exercised().render();
        let got = families(&page);
        let expected = [
            ("flashgate_http_requests_total", "counter"),
            ("flashgate_http_request_duration_seconds", "histogram"),
            ("flashgate_script_duration_seconds", "histogram"),
            ("flashgate_reservation_outcomes_total", "counter"),
            ("flashgate_redis_errors_total", "counter"),
            ("flashgate_sku_available_units", "gauge"),
            ("flashgate_sku_held_units", "gauge"),
            ("flashgate_sku_sold_units", "gauge"),
            ("flashgate_sku_waitlist_length", "gauge"),
            ("flashgate_waitlist_promotions_total", "counter"),
            ("flashgate_sku_seconds_to_open", "gauge"),
            ("flashgate_sku_prequeue_length", "gauge"),
            ("flashgate_draw_duration_seconds", "histogram"),
            ("flashgate_books_drift_units", "gauge"),
            ("flashgate_sweeper_runs_total", "counter"),
            ("flashgate_sweeper_expired_holds_total", "counter"),
            ("flashgate_sweeper_lag_seconds", "gauge"),
            ("flashgate_ledger_lag_events", "gauge"),
            ("flashgate_ledger_events_written_total", "counter"),
            ("flashgate_ledger_dead_letters_total", "counter"),
            ("flashgate_rate_limiter_buckets", "gauge"),
            ("flashgate_http_connections_open", "gauge"),
            ("flashgate_http_connections_refused_total", "counter"),
            ("flashgate_sku_series_refused_total", "counter"),
            ("flashgate_task_restarts_total", "counter"),
            ("flashgate_build_info", "gauge"),
            ("flashgate_config_reloads_total", "counter"),
            ("flashgate_carts_total", "counter"),
            ("flashgate_cart_compensations_total", "counter"),
        ];
        for (name, kind) in expected {
            assert!(
                got.iter().any(|(n, k)| n == name && k == kind),
                "{name} ({kind}) missing from:\n{page}"
            );
        }
        assert_eq!(got.len(), expected.len(), "unexpected families:\n{page}");
        assert!(page.contains(r#"flashgate_http_requests_total{route="reserve",status="200"} 1"#));
        assert!(page.contains(r#"flashgate_sku_held_units{sku="sku-1"} 7"#));
        assert!(page.contains(r#"flashgate_sku_waitlist_length{sku="sku-1"} 4"#));
        assert!(page.contains(r#"flashgate_waitlist_promotions_total{sku="sku-1"} 1"#));
        assert!(page.contains(&format!(
            r#"flashgate_build_info{{version="{}"}} 1"#,
            env!("CARGO_PKG_VERSION")
        )));
    }

    #[test]
    fn buckets_run_from_100us_to_10s() {
        let page = exercised().render();
        for le in ["0.0001", "0.01", "10", "+Inf"] {
            let line = format!(
                r#"flashgate_script_duration_seconds_bucket{{script="reserve",le="{le}"}}"#
            );
            assert!(page.contains(&line), "{line} missing");
        }
        // 300 µs lands in the 0.0005 bucket, not the 0.00025 one.
        assert!(page.contains(
            r#"flashgate_script_duration_seconds_bucket{script="reserve",le="0.00025"} 0"#
        ));
        assert!(page.contains(
            r#"flashgate_script_duration_seconds_bucket{script="reserve",le="0.0005"} 1"#
        ));
    }

    #[test]
    fn known_counters_start_at_zero() {
        let page = Metrics::new(1).render();
        for outcome in OUTCOMES {
            let line = format!(r#"flashgate_reservation_outcomes_total{{outcome="{outcome}"}} 0"#);
            assert!(page.contains(&line), "{line} missing");
        }
        for kind in REDIS_ERROR_KINDS {
            let line = format!(r#"flashgate_redis_errors_total{{kind="{kind}"}} 0"#);
            assert!(page.contains(&line), "{line} missing");
        }
    }

    #[test]
    fn sku_cap_bounds_the_series() {
        let m = Metrics::new(2);
        assert!(m.set_sku("a", 1, 0, 0, 0));
        assert!(m.set_sku("b", 1, 0, 0, 0));
        assert!(
            !m.set_sku("c", 1, 0, 0, 0),
            "third SKU admitted over a cap of 2"
        );
        m.set_waitlist("d", 5);
        m.promoted("d");
        // Already-tracked SKUs keep updating.
        assert!(m.set_sku("a", 0, 1, 0, 0));
        m.set_waitlist("b", 3);

        let page = m.render();
        assert!(
            !page.contains(r#"sku="c""#),
            "refused SKU got a series:\n{page}"
        );
        assert!(
            !page.contains(r#"sku="d""#),
            "refused SKU got a series:\n{page}"
        );
        assert!(page.contains(r#"flashgate_sku_held_units{sku="a"} 1"#));
        assert!(page.contains(r#"flashgate_sku_waitlist_length{sku="b"} 3"#));
        // c's gauges, d's waitlist length, d's promotion
        assert!(page.contains("flashgate_sku_series_refused_total 3"));
        assert_eq!(m.sku_available.collect()[0].get_metric().len(), 2);
    }

    #[test]
    fn zero_cap_tracks_nothing() {
        let m = Metrics::new(0);
        assert!(!m.set_sku("a", 1, 0, 0, 0));
        assert!(!m.render().contains("flashgate_sku_available_units"));
    }

    #[test]
    fn two_instances_do_not_clash() {
        // Same names registered twice in one process: fine, each has its own registry.
        let a = Metrics::new(10);
        let b = Metrics::new(10);
        a.outcome("held");
        a.outcome("held");
        b.outcome("sold_out");
        a.sweeper_runs.inc();

        let (pa, pb) = (a.render(), b.render());
        assert!(pa.contains(r#"flashgate_reservation_outcomes_total{outcome="held"} 2"#));
        assert!(pa.contains(r#"flashgate_reservation_outcomes_total{outcome="sold_out"} 0"#));
        assert!(pb.contains(r#"flashgate_reservation_outcomes_total{outcome="held"} 0"#));
        assert!(pb.contains(r#"flashgate_reservation_outcomes_total{outcome="sold_out"} 1"#));
        assert!(pa.contains("flashgate_sweeper_runs_total 1"));
        assert!(pb.contains("flashgate_sweeper_runs_total 0"));
    }

    #[test]
    fn metrics_can_be_shared_across_tasks() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Metrics>();
    }
}
