//! flashgate's integration tests: one test binary, one module per area
//! (docs/testing.md says what each proves). A new area is a new
//! `tests/it/<area>.rs` and one `mod` line here; run one area with
//! `cargo nextest run -E 'test(/^<area>::/)'`. The shared harness is
//! `support` (the service in this process, its config and HTTP client) on
//! top of the `flashgate-testkit` crate (redis-server, Redis Cluster,
//! PostgreSQL processes).

mod support;

mod abuse_edge;
mod abuse_shield;
mod abuse_startup;
mod abuse_tenancy;
mod admission;
mod api;
mod cart_ledger;
mod carts;
mod claim_records;
mod cli;
mod cluster;
mod deploy;
mod ledger;
mod lua;
mod lua_fix;
mod observability_files;
mod openapi;
mod reconcile_safety;
mod reload;
mod sale_window;
mod signed_holds;
mod stock_corners;
mod stock_document;
mod upgrade;
mod verify_draw;
mod wait_estimates;
mod waitlist;
