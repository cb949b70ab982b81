//! Transfers: units moved from one shard of a SKU to another, so that no
//! request meets a false "sold out" while another shard has units. Two
//! halves (`lua/transfer_out.lua`, `lua/transfer_in.lua`), each atomic on its
//! own shard; a mover that dies between them leaves the units in transit,
//! and the sweeper completes them (`recover_transfers`).

use std::collections::HashMap;

use fred::interfaces::HashesInterface;

use super::replies::int;
use super::InventoryError;
use super::{Inventory, SkuMeta};

impl Inventory {
    /// Move up to `need` units from `donors` into shard `to`.
    pub(super) async fn pull(
        &self,
        meta: &SkuMeta,
        to: u16,
        mut need: i64,
        donors: &[(u16, i64)],
    ) -> Result<(), InventoryError> {
        for &(from, _) in donors {
            if need <= 0 {
                break;
            }
            need -= self.transfer(meta, from, to, need).await?;
        }
        Ok(())
    }

    /// Move up to `want` units from shard `from` to shard `to`; returns the
    /// units moved. Crash-safe: see `lua/transfer_out.lua`.
    pub(super) async fn transfer(
        &self,
        meta: &SkuMeta,
        from: u16,
        to: u16,
        want: i64,
    ) -> Result<i64, InventoryError> {
        let xid = uuid::Uuid::new_v4().simple().to_string();
        let donor = meta.keys(from);
        let taken = int(&self
            .run(
                &self.scripts.transfer_out,
                vec![
                    donor.stock(),
                    donor.books(),
                    donor.xfers(),
                    donor.events(),
                    donor.xdone(),
                ],
                vec![xid.clone(), to.to_string(), want.to_string()],
            )
            .await?)?;
        if taken > 0 {
            self.transfer_in(meta, from, to, &xid, taken).await?;
        }
        Ok(taken)
    }

    pub(super) async fn transfer_in(
        &self,
        meta: &SkuMeta,
        from: u16,
        to: u16,
        xid: &str,
        units: i64,
    ) -> Result<(), InventoryError> {
        let rec = meta.keys(to);
        let keep = self.settings.idem_ttl_ms.to_string();
        self.run(
            &self.scripts.transfer_in,
            vec![
                rec.stock(),
                rec.books(),
                rec.applied_transfers(),
                rec.events(),
            ],
            vec![
                xid.to_string(),
                units.to_string(),
                from.to_string(),
                keep.clone(),
            ],
        )
        .await?;
        let donor = meta.keys(from);
        self.run(
            &self.scripts.transfer_done,
            vec![donor.xfers(), donor.xdone()],
            vec![xid.to_string(), keep],
        )
        .await?;
        Ok(())
    }

    /// Complete transfers that left shard `shard` more than `older_than_ms`
    /// ago and were never applied (their mover died between the halves).
    /// Their age is read on the donor's Redis clock, the clock that stamped
    /// them: a local clock running ahead would complete a transfer while its
    /// mover (or a resend of its `transfer_out`) is still under way. One
    /// older than the applied-id retention (`idempotency_ttl_seconds`, less
    /// a minute for clocks of different masters) is left pending, with an
    /// error in the log: whether it was applied can no longer be told, and
    /// a unit shown in transit beats one counted twice.
    pub async fn recover_transfers(
        &self,
        meta: &SkuMeta,
        shard: u16,
        older_than_ms: i64,
    ) -> Result<i64, InventoryError> {
        let xfers = meta.keys(shard).xfers();
        let pending: HashMap<String, String> = self
            .nodes
            .client_for_key(&xfers)
            .hgetall(&xfers)
            .await
            .map_err(|e| self.err(e))?;
        if pending.is_empty() {
            return Ok(0);
        }
        let now = self.redis_now_ms(&xfers).await?;
        let too_old = self.settings.idem_ttl_ms as i64 - 60_000;
        let mut recovered = 0;
        for (xid, v) in pending {
            let mut parts = v.split('|');
            let (Some(to), Some(n), Some(ts)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            let (Ok(to), Ok(n), Ok(ts)) = (to.parse::<u16>(), n.parse::<i64>(), ts.parse::<i64>())
            else {
                continue;
            };
            if now - ts < older_than_ms {
                continue;
            }
            if now - ts >= too_old {
                tracing::error!(sku = %meta.sku, from = shard, to, units = n, transfer = %xid, "a transfer pending longer than the applied-id retention: left in transit for an operator (reconcile)");
                continue;
            }
            tracing::warn!(sku = %meta.sku, from = shard, to, units = n, "completing an interrupted transfer");
            self.transfer_in(meta, shard, to, &xid, n).await?;
            recovered += n;
        }
        if recovered > 0 {
            // units in transit are in no shard's stock: they came back now
            self.units_returned(&meta.sku);
        }
        Ok(recovered)
    }
}
