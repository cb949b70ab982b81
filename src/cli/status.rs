//! `flashgate status`: a SKU's books (available / held / sold, per shard)
//! as Redis has them, as a table or JSON.

use clap::Args;

use super::{CommonArgs, Format};
use crate::domain::Sku;
use crate::inventory::SkuStatus;

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The SKU to show.
    #[arg(long)]
    pub sku: String,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    #[command(flatten)]
    pub common: CommonArgs,
}

pub(super) async fn run(args: StatusArgs) -> Result<(), String> {
    let sku = Sku::parse(&args.sku)?;
    let inventory = super::inventory_of(&args.common).await?;
    let st = inventory
        .status(&sku)
        .await
        .map_err(|e| crate::error::ApiError::from(e).message())?;
    inventory.close().await;
    match args.format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&st).map_err(|e| e.to_string())?
        ),
        Format::Table => print!("{}", status_table(&st)),
    }
    Ok(())
}

/// The human report of `flashgate status`.
pub fn status_table(st: &SkuStatus) -> String {
    let mut out = format!(
        "sku {}: available {}  held {}  sold {}  initial {}  shards {}  waitlist {}  drift {}\n",
        st.sku,
        st.available,
        st.held,
        st.sold,
        st.initial,
        st.shards,
        st.waitlist,
        st.drift()
    );
    if st.transfer_imbalance != 0 {
        out.push_str(&format!(
            "  transfers between shards do not balance by {} units (sent - received - in transit {}): run reconcile\n",
            st.transfer_imbalance, st.in_transit
        ));
    }
    out.push_str(&format!(
        "{:>5} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6}\n",
        "shard", "available", "held", "sold", "initial", "xfer_in", "xfer_out", "drift"
    ));
    if st.per_shard.iter().any(|s| s.node.is_some()) {
        out.pop();
        out.push_str("  node\n");
    }
    for s in &st.per_shard {
        out.push_str(&format!(
            "{:>5} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6}\n",
            s.shard,
            s.available,
            s.held,
            s.sold,
            s.initial,
            s.transferred_in,
            s.transferred_out,
            s.drift()
        ));
        // on a cluster: the master serving the shard
        if let Some(node) = &s.node {
            out.pop();
            out.push_str(&format!("  {node}\n"));
        }
    }
    out
}
