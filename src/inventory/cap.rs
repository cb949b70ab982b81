//! The purchase cap (`max_per_user`): units one buyer may hold and buy
//! together, counted per user and key in `lua/cap_take.lua` before a walk and
//! given back (`lua/cap_give.lua`, idempotent) when the key definitely holds
//! no live unit. The decisions of when to count and give back are made where
//! the hold's fate is known: the reserve walk (`reserve.rs`), a release or an
//! expiry (`holds.rs`), the waitlist (`waitlist.rs`).

use super::replies::int;
use super::InventoryError;
use super::{keys, Inventory, ReserveRequest, SkuMeta};
use crate::domain::ScopedKey;

impl Inventory {
    pub(super) async fn cap_take(
        &self,
        meta: &SkuMeta,
        req: &ReserveRequest,
    ) -> Result<i64, InventoryError> {
        int(&self
            .run(
                &self.scripts.cap_take,
                vec![keys::cap(&meta.sku, req.key.owner(), req.user.as_str())],
                vec![
                    req.key.as_str().to_string(),
                    req.qty.get().to_string(),
                    meta.max_per_user.to_string(),
                    self.settings.idem_ttl_ms.to_string(),
                ],
            )
            .await?)
    }

    /// Uncount the reservation made with `key` (as stored: its scope first)
    /// from `user`'s cap (idempotent).
    pub async fn cap_give(
        &self,
        meta: &SkuMeta,
        user: &str,
        key: &str,
    ) -> Result<i64, InventoryError> {
        int(&self
            .run(
                &self.scripts.cap_give,
                vec![keys::cap(&meta.sku, ScopedKey::owner_of(key), user)],
                vec![key.to_string()],
            )
            .await?)
    }
}
