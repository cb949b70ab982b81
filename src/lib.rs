//! flashgate: a flash-sale gatekeeper in front of Redis.
//!
//! # Layout
//! A request's path: HTTP (`http::route`: the route table, the path matched
//! once into a `Route` that names the metric label; `http::router`: one
//! match on (method, route), JSON parsed into `domain` types at the edge) →
//! `inventory` (shard choice, the walk over shards, transfers) → one Lua
//! script per atomic step (`lua/*.lua`, run by `inventory::scripts`, replies
//! decoded in `inventory::replies`) → a typed outcome or an
//! `InventoryError` (no HTTP in inventory) → the response (`error` maps
//! inventory's errors to status, code and message; `http::body` renders; a
//! held reservation's answer carries a token `signing` made, whose keys
//! `GET /.well-known/jwks.json` publishes).
//!
//! Background tasks, owned by `app::App`, each restarted after a panic and
//! watched by `/readyz` (`app::supervise`), all stopped by one shutdown
//! signal: the expiry sweeper (`inventory::expiry`), which returns expired
//! holds to stock, completes interrupted transfers and refreshes the per-SKU
//! gauges; the waitlist promoter (`inventory::waitlist`); the rate-limiter
//! pruner. With a `postgres_url`, the ledger writer (`ledger`) drains every
//! shard's outbox stream into PostgreSQL (`db`); `reconcile` proves the books
//! after the sale (Redis against the ledger) and repairs Redis (`lua/fix.lua`).
//!
//! Before anything is served, `inventory::preflight` checks every Redis
//! master: version >= 7.0, `maxmemory-policy noeviction`.
//!
//! Ground floor every module may use: `config`, `domain`, `metrics`.
//! `error` is HTTP's (and the CLI's) view of inventory's errors.

pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
pub mod db;
pub mod domain;
pub mod error;
pub mod fairness;
pub mod http;
pub mod inventory;
pub mod ledger;
pub mod limiter;
pub mod metrics;
pub mod reconcile;
pub mod shutdown;
pub mod signing;
pub mod webhook;
