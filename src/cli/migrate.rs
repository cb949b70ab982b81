//! `flashgate migrate`: apply the PostgreSQL schema migrations (idempotent).

use super::{db_of, CommonArgs};

/// `flashgate migrate`.
pub(super) async fn run(args: CommonArgs) -> Result<(), String> {
    let config = args.resolve().map_err(|e| e.to_string())?;
    let db = db_of(&config)?;
    let applied = db.migrate().await.map_err(|e| e.to_string())?;
    let latest = crate::db::MIGRATIONS.last().map_or(0, |m| m.0);
    if applied.is_empty() {
        println!("schema is up to date (version {latest}) at {}", db.url());
    } else {
        println!(
            "applied migrations {applied:?} at {}; schema version {latest}",
            db.url()
        );
    }
    Ok(())
}
