//! PostgreSQL, the book of record: the connection pool, the schema
//! migrations of `migrations/` (embedded at compile time), and the SKU
//! catalogue that `preload --from-postgres` reads. Every SQL statement of
//! flashgate lives under this module: the ledger's in `ledger`, those of
//! `reconcile --fix` in `audit`.
//!
//! Redis is where the sale happens; Postgres is where it is remembered. Every
//! function here fails fast with a [`DbError`] naming the database (password
//! redacted) instead of hanging while Postgres is down: callers on the sale's
//! path never wait for it (the ledger writer retries on its own time).

mod audit;
mod carts;
mod ledger;

pub use audit::{AuditRow, FixLock, FixScope, FIX_LOCK_SQL};
pub use carts::{CartEventColumns, LedgerCart};
pub use ledger::{EventColumns, LedgerBackfill, LedgerRow};

use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

/// The migrations, in order. A shipped migration is never edited: add one.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "ledger",
        include_str!("../../migrations/0001_ledger.sql"),
    ),
    (
        2,
        "skus_max_per_user",
        include_str!("../../migrations/0002_skus_max_per_user.sql"),
    ),
    (
        3,
        "ledger_dead_letters",
        include_str!("../../migrations/0003_ledger_dead_letters.sql"),
    ),
    (
        4,
        "reconcile_audit_state",
        include_str!("../../migrations/0004_reconcile_audit_state.sql"),
    ),
    (
        5,
        "retired_skus_one_confirm",
        include_str!("../../migrations/0005_retired_skus_one_confirm.sql"),
    ),
    (
        6,
        "cart_events",
        include_str!("../../migrations/0006_cart_events.sql"),
    ),
    (
        7,
        "skus_sale_window",
        include_str!("../../migrations/0007_skus_sale_window.sql"),
    ),
];

/// Serialises concurrent migrators (any constant unique to flashgate).
const MIGRATION_LOCK: i64 = 0x666c_6173_6867_6174; // "flashgat"

/// How long connecting, or waiting for a pooled connection, may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("bad postgres_url: {0}")]
    BadUrl(String),
    #[error("no postgres_url configured (set --postgres-url or FLASHGATE_POSTGRES_URL)")]
    NotConfigured,
    #[error("postgres unavailable at {url}: {cause}")]
    Unavailable { url: String, cause: String },
    #[error("postgres error: {0}")]
    Query(String),
    /// The statement failed on the data it was given (SQLSTATE class 22, a
    /// data exception: e.g. a NUL byte in text): sending it again fails again.
    #[error("postgres refused the data: {0}")]
    Refused(String),
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> Self {
        // the cause chain carries the server's message ("relation … does not exist")
        let mut msg = e.to_string();
        if let Some(db) = e.as_db_error() {
            msg = format!("{msg}: {}", db.message());
        }
        match e.code() {
            Some(c) if c.code().starts_with("22") => DbError::Refused(msg),
            _ => DbError::Query(msg),
        }
    }
}

/// A pool of Postgres connections that fails fast while the server is down.
#[derive(Clone)]
pub struct Db {
    pool: Pool,
    url: String,
}

impl Db {
    /// Build the pool. Does not connect: the first query does (and fails
    /// with [`DbError::Unavailable`] while Postgres is down).
    pub fn new(url: &str, size: usize) -> Result<Db, DbError> {
        if url.trim().is_empty() {
            return Err(DbError::NotConfigured);
        }
        let mut pg = tokio_postgres::Config::from_str(url)
            .map_err(|e| DbError::BadUrl(format!("{}: {e}", crate::config::redact_dsn(url))))?;
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(CONNECT_TIMEOUT);
        }
        if pg.get_options().is_none() {
            // a statement stuck on a lock fails and is retried instead of
            // hanging the ledger writer for ever
            pg.options("-c statement_timeout=30000");
        }
        if pg.get_application_name().is_none() {
            pg.application_name("flashgate");
        }
        pg.keepalives(true).keepalives_idle(Duration::from_secs(10));
        let manager = Manager::from_config(
            pg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| DbError::BadUrl(e.to_string()))?;
        Ok(Db {
            pool,
            url: crate::config::redact_dsn(url),
        })
    }

    /// A pooled connection, or [`DbError::Unavailable`].
    pub async fn get(&self) -> Result<deadpool_postgres::Object, DbError> {
        self.pool.get().await.map_err(|e| DbError::Unavailable {
            url: self.url.clone(),
            cause: pool_cause(&e),
        })
    }

    /// The URL with its password replaced by `***`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Apply every migration not yet applied, in one transaction under an
    /// advisory lock: safe to call from several writers at once and on every
    /// start. Returns the versions applied now.
    pub async fn migrate(&self) -> Result<Vec<i32>, DbError> {
        let mut client = self.get().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version    integer PRIMARY KEY,
                 name       text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await?;
        let done: Vec<i32> = tx
            .query("SELECT version FROM schema_migrations", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut applied = Vec::new();
        for (version, name, sql) in MIGRATIONS {
            if done.contains(version) {
                continue;
            }
            tx.batch_execute(sql).await.map_err(|e| {
                DbError::Query(format!(
                    "migration {version} ({name}): {}",
                    DbError::from(e)
                ))
            })?;
            tx.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                &[version, name],
            )
            .await?;
            applied.push(*version);
        }
        tx.commit().await?;
        Ok(applied)
    }

    /// The catalogue rows (`skus` table), all or one SKU.
    pub async fn catalogue(&self, sku: Option<&str>) -> Result<Vec<CatalogueRow>, DbError> {
        let client = self.get().await?;
        let rows = client
            .query(
                "SELECT sku, stock, shards, max_per_user, opens_at, closes_at FROM skus
                 WHERE $1::text IS NULL OR sku = $1 ORDER BY sku",
                &[&sku],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| CatalogueRow {
                sku: r.get(0),
                stock: r.get(1),
                shards: r.get(2),
                max_per_user: r.get(3),
                opens_at: r.get(4),
                closes_at: r.get(5),
            })
            .collect())
    }

    /// The units the ledger has preloaded for `sku`, summed over its
    /// shards; None when it has no preload at all (never loaded).
    pub async fn ledger_preloaded(&self, sku: &str) -> Result<Option<i64>, DbError> {
        let client = self.get().await?;
        let row = client
            .query_one(
                "SELECT count(*), coalesce(sum(qty), 0)::bigint FROM ledger_events
                 WHERE sku = $1 AND kind = 'preload'",
                &[&sku],
            )
            .await?;
        let n: i64 = row.get(0);
        Ok((n > 0).then(|| row.get(1)))
    }

    /// Whether `sku` was retired (`reconcile --retire`).
    pub async fn retired(&self, sku: &str) -> Result<bool, DbError> {
        let client = self.get().await?;
        let row = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM retired_skus WHERE sku = $1)",
                &[&sku],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Mark `sku` retired (`reconcile --retire`); retiring twice is a no-op.
    pub async fn retire(&self, sku: &str) -> Result<(), DbError> {
        let client = self.get().await?;
        client
            .execute(
                "INSERT INTO retired_skus (sku) VALUES ($1) ON CONFLICT DO NOTHING",
                &[&sku],
            )
            .await?;
        Ok(())
    }

    /// Record that a catalogue row was loaded into Redis.
    pub async fn mark_loaded(&self, sku: &str) -> Result<(), DbError> {
        let client = self.get().await?;
        client
            .execute("UPDATE skus SET loaded_at = now() WHERE sku = $1", &[&sku])
            .await?;
        Ok(())
    }
}

/// One row of the `skus` table.
#[derive(Clone, Debug, PartialEq)]
pub struct CatalogueRow {
    pub sku: String,
    pub stock: i64,
    pub shards: i32,
    /// Purchase cap per buyer; None: no cap (or keep the loaded SKU's).
    pub max_per_user: Option<i32>,
    /// The sale window (NULL: none, or keep the loaded SKU's).
    pub opens_at: Option<std::time::SystemTime>,
    pub closes_at: Option<std::time::SystemTime>,
}

fn pool_cause(e: &deadpool_postgres::PoolError) -> String {
    use deadpool_postgres::PoolError;
    match e {
        PoolError::Backend(e) => match std::error::Error::source(e) {
            Some(src) => format!("{e}: {src}"),
            None => e.to_string(),
        },
        PoolError::Timeout(_) => "timed out connecting".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order() {
        for (i, (v, _, sql)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(*v as usize, i + 1);
            assert!(!sql.trim().is_empty());
        }
    }

    #[test]
    fn empty_url_is_not_configured() {
        assert!(matches!(Db::new("", 1), Err(DbError::NotConfigured)));
        assert!(matches!(
            Db::new("postgres://h:notaport/x", 1),
            Err(DbError::BadUrl(_))
        ));
    }
}
