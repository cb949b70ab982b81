//! `flashgate migrate-layout`: upgrade the data in Redis to this version's
//! layout between sales (`Inventory::migrate_layout`, docs/UPGRADING.md).

use clap::Args;

use super::CommonArgs;

#[derive(Args, Debug)]
pub struct MigrateLayoutArgs {
    /// Migrate even while holds are outstanding (they stay valid: this
    /// version reads what the earlier layout wrote). Also needed, with units
    /// held, to replace a claim key a store of this layout lost (a retry of
    /// a request made before the loss could then hold twice).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub common: CommonArgs,
}

pub(super) async fn run(args: MigrateLayoutArgs) -> Result<(), String> {
    use crate::inventory::{keys, ClaimKeyChange};
    let inventory = super::inventory_of(&args.common).await?;
    let done = inventory.migrate_layout(args.force).await;
    inventory.close().await;
    let done = done.map_err(|e| crate::error::ApiError::from(e).message())?;
    let layout = keys::STORE_LAYOUT;
    if done.converted.is_empty() {
        println!("Redis's data is in layout {layout}; no SKU needed converting");
    } else {
        let names: Vec<&str> = done.converted.iter().map(|s| s.as_str()).collect();
        println!(
            "Redis's data is in layout {layout}; converted {} SKU(s): {}",
            names.len(),
            names.join(", ")
        );
    }
    match done.claim_key {
        ClaimKeyChange::Kept => {}
        ClaimKeyChange::New => println!("made the store's claim key ({})", keys::CLAIM_SECRET),
        ClaimKeyChange::Replaced => println!(
            "the store's claim key ({}) was missing or malformed: made a new one; the claims \
             made before are found no more (a retry of a request made before it is a new request)",
            keys::CLAIM_SECRET
        ),
    }
    let c = done.claims;
    if c.renamed > 0 {
        println!(
            "moved {} claim(s) of the earlier layout to their new names",
            c.renamed
        );
    }
    if c.superseded > 0 {
        println!(
            "deleted {} claim(s) of the earlier layout whose new name held a newer claim \
             (written by an old instance after the migration): the newer ones stand",
            c.superseded
        );
    }
    if c.skipped > 0 {
        println!(
            "left {} key(s) matching fg:{{idem~*}}:* that are no claim's name",
            c.skipped
        );
    }
    Ok(())
}
