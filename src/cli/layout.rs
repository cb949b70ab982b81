//! `flashgate migrate-layout`: upgrade the data in Redis to this version's
//! layout between sales (`Inventory::migrate_layout`, docs/UPGRADING.md).

use clap::Args;

use super::CommonArgs;

#[derive(Args, Debug)]
pub struct MigrateLayoutArgs {
    /// Migrate even while holds are outstanding (they stay valid: this
    /// version reads what the earlier layout wrote).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub common: CommonArgs,
}

pub(super) async fn run(args: MigrateLayoutArgs) -> Result<(), String> {
    let inventory = super::inventory_of(&args.common).await?;
    let done = inventory.migrate_layout(args.force).await;
    inventory.close().await;
    let converted = done.map_err(|e| crate::error::ApiError::from(e).message())?;
    let layout = crate::inventory::keys::STORE_LAYOUT;
    if converted.is_empty() {
        println!("Redis's data is in layout {layout}; no SKU needed converting");
    } else {
        let names: Vec<&str> = converted.iter().map(|s| s.as_str()).collect();
        println!(
            "Redis's data is in layout {layout}; converted {} SKU(s): {}",
            names.len(),
            names.join(", ")
        );
    }
    Ok(())
}
