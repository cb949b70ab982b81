//! A hold after it was made: confirm (a sale), release, extend, read, and the
//! sweeper's expiry step. Each change is one script on the hold's shard;
//! units that came back lift the sold-out mark and wake the promoter, and a
//! hold that ended without a sale gives back its purchase-cap count.
//!
//! Ownership (docs/tenancy.md): confirm, release and extend check it in
//! their script, which reads the record anyway (no extra round trip);
//! `get` checks the record it read. Another storefront's reservation is
//! not found, exactly as one that does not exist.

use std::sync::Arc;

use fred::interfaces::HashesInterface;
use fred::types::Value;

use super::keys::ShardKeys;
use super::replies::{self, array, at, hold_reply, int, status_name, text};
use super::scripts;
use super::stock_doc;
use super::InventoryError;
use super::{ms_to_rfc3339, Inventory, Reservation, SkuMeta};
use crate::domain::{ReservationId, ScopedKey, Tenant};

impl Inventory {
    /// `viewer` confirms `rid` (404 unless it may see it).
    pub async fn confirm(
        &self,
        rid: &ReservationId,
        viewer: &Tenant,
    ) -> Result<Reservation, InventoryError> {
        self.end(&self.scripts.confirm, rid, viewer).await
    }

    /// `viewer` releases `rid` (404 unless it may see it).
    pub async fn release(
        &self,
        rid: &ReservationId,
        viewer: &Tenant,
    ) -> Result<Reservation, InventoryError> {
        self.end(&self.scripts.release, rid, viewer).await
    }

    pub(super) async fn end(
        &self,
        script: &scripts::Script,
        rid: &ReservationId,
        viewer: &Tenant,
    ) -> Result<Reservation, InventoryError> {
        let meta = self.meta_for(rid).await?;
        let sk = meta.keys(rid.shard());
        let reply = self
            .run(
                script,
                vec![
                    sk.record(rid),
                    sk.stock(),
                    sk.books(),
                    sk.holds(),
                    sk.events(),
                    sk.reserved_keys(),
                ],
                vec![rid.to_string(), viewer.lua_scope().to_owned()],
            )
            .await?;
        let items = array(reply)?;
        let status = text(at(&items, 1).unwrap_or(&Value::Null))?;
        // Only units that came back now lift the sold-out mark: a release or
        // confirm of a hold that had already ended returns none (a client
        // looping them must not switch the shield off), nor does a sale.
        let returned = if items.len() >= 7 {
            int(at(&items, 6)?)?
        } else {
            0
        };
        if returned > 0 {
            self.units_returned(rid.sku());
            self.stock_moved(rid.sku(), stock_doc::Moved::returned(returned));
        } else if status == "confirmed" {
            // a sale now, or a replay of one: the reply does not say which
            self.stock_changed(rid.sku());
        }
        if meta.max_per_user > 0 && items.len() >= 6 {
            // a hold that ended without a sale frees the buyer's cap (idempotent)
            if status == "released" || status == "expired" {
                let (user, key) = (text(at(&items, 3)?)?, text(at(&items, 5)?)?);
                self.cap_give(&meta, &user, &key).await?;
            }
        }
        hold_reply(rid, Value::Array(items))
    }

    /// `viewer` extends `rid` (404 unless it may see it).
    pub async fn extend(
        &self,
        rid: &ReservationId,
        viewer: &Tenant,
    ) -> Result<Reservation, InventoryError> {
        let sk = self.shard_keys_of(rid).await?;
        let reply = self
            .run(
                &self.scripts.extend,
                vec![sk.record(rid), sk.holds()],
                vec![
                    rid.to_string(),
                    self.settings.extend_ms.to_string(),
                    self.settings.max_hold_ms.to_string(),
                    viewer.lua_scope().to_owned(),
                ],
            )
            .await?;
        hold_reply(rid, reply)
    }

    /// The keys of the reservation's shard. An id naming a SKU or shard that
    /// does not exist is simply not found: ids are opaque to clients.
    pub(super) async fn shard_keys_of(
        &self,
        rid: &ReservationId,
    ) -> Result<ShardKeys, InventoryError> {
        Ok(self.meta_for(rid).await?.keys(rid.shard()))
    }

    pub(super) async fn meta_for(
        &self,
        rid: &ReservationId,
    ) -> Result<Arc<SkuMeta>, InventoryError> {
        match self.meta(rid.sku()).await? {
            Some(m) if rid.shard() < m.shards => Ok(m),
            _ => Err(InventoryError::ReservationNotFound),
        }
    }

    /// The reservation `rid` as `viewer` may see it (404 when it may not).
    pub async fn get(
        &self,
        rid: &ReservationId,
        viewer: &Tenant,
    ) -> Result<Reservation, InventoryError> {
        let key = self.shard_keys_of(rid).await?.record(rid);
        let reply = self
            .run(&self.scripts.records, vec![key.clone()], vec![])
            .await?;
        let Some(Some(record)) = replies::decode_records(reply)?.into_iter().next() else {
            return Err(InventoryError::ReservationNotFound);
        };
        // the owner never changes: reading it with the record is race-free
        if !viewer.sees(ScopedKey::owner_of(&record.idem)) {
            return Err(InventoryError::ReservationNotFound);
        }
        let exp = record.exp;
        let mut status = status_name(&record.status)?;
        // Past its deadline a hold is expired, whether or not the sweeper has
        // returned its units yet: confirm would refuse it. The deadline is
        // judged on the Redis clock, as confirm judges it.
        if status == "held" && self.redis_now_ms(&key).await? >= exp {
            status = "expired";
        }
        Ok(Reservation {
            reservation_id: rid.to_string(),
            sku: rid.sku().to_string(),
            qty: u32::try_from(record.qty)
                .map_err(|_| InventoryError::Protocol("bad qty".into()))?,
            user_id: record.user,
            status,
            expires_at: ms_to_rfc3339(exp),
            expires_at_ms: exp,
            token: None,
        })
    }

    /// One sweeper step on one shard; returns (holds expired, lateness ms of the oldest).
    pub async fn expire_shard(
        &self,
        meta: &SkuMeta,
        shard: u16,
    ) -> Result<(i64, i64), InventoryError> {
        let sk = meta.keys(shard);
        let capback = sk.capback();
        let reply = array(
            self.run(
                &self.scripts.expire,
                vec![
                    sk.holds(),
                    sk.stock(),
                    sk.books(),
                    sk.events(),
                    sk.reserved_keys(),
                    capback.clone(),
                ],
                vec![
                    sk.record_prefix(),
                    self.settings.sweep_batch.to_string(),
                    if meta.max_per_user > 0 { "1" } else { "0" }.to_string(),
                ],
            )
            .await?,
        )?;
        if int(at(&reply, 0)?)? > 0 {
            self.units_returned(&meta.sku);
            let units = int(at(&reply, 2)?)?;
            self.stock_moved(&meta.sku, stock_doc::Moved::returned(units));
        }
        // the give-backs owed (durable in capback until done: a failure here
        // leaves the rest for the next step)
        for pair in reply.get(3..).unwrap_or_default().chunks(2) {
            if let [user, key] = pair {
                let (user, key) = (text(user)?, text(key)?);
                self.cap_give(meta, &user, &key).await?;
                let _: i64 = self
                    .nodes
                    .client_for_key(&capback)
                    .hdel(&capback, [user, key].join("\n"))
                    .await
                    .map_err(|e| self.err(e))?;
            }
        }
        Ok((int(at(&reply, 0)?)?, int(at(&reply, 1)?)?))
    }
}
