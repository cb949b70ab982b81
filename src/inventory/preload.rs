//! Preload: a SKU's stock split over its shards, all or nothing as the
//! service sees it (the meta naming the shards is written last), repeatable
//! after a failure half-way, and able to add shards to a loaded SKU but never
//! to drop one.

use fred::interfaces::{HashesInterface, KeysInterface, SetsInterface};

use super::keys::{self, ShardKeys};
use super::layout::Window;
use super::replies::{array, at, text};
use super::InventoryError;
use super::{now_ms, placement, Inventory, SkuMeta, MAX_SHARDS, MAX_STOCK};
use crate::domain::Sku;

/// What to preload.
#[derive(Clone, Copy, Debug)]
pub struct PreloadSpec {
    pub stock: i64,
    pub shards: u16,
    pub force: bool,
    pub max_per_user: Option<u32>,
    /// The sale window (none: the SKU's earlier one, if any, is kept).
    pub window: Window,
}

impl PreloadSpec {
    /// The bounds of a preload, checked before anything is written: stock
    /// within `0..=MAX_STOCK`, shards within `1..=MAX_SHARDS`.
    pub fn validate(&self) -> Result<(), InventoryError> {
        self.window.check()?;
        if !(1..=MAX_SHARDS).contains(&self.shards) {
            return Err(InventoryError::InvalidRequest(format!(
                "shards must be within 1..={MAX_SHARDS}, not {}",
                self.shards
            )));
        }
        if !(0..=MAX_STOCK).contains(&self.stock) {
            return Err(InventoryError::InvalidRequest(format!(
                "stock must be an integer within 0..={MAX_STOCK}, not {}",
                self.stock
            )));
        }
        Ok(())
    }
}

/// How preload.lua treats one shard's counters.
#[derive(Clone, Copy)]
pub(super) enum ShardLoad {
    /// Set its available units; holds and sales stay on the books.
    Force,
    /// A shard no meta names yet (never served): start it afresh.
    New,
}

/// What `preload` did.
#[derive(Debug, PartialEq)]
pub enum PreloadOutcome {
    Loaded {
        per_shard: Vec<i64>,
    },
    /// The SKU already has counters; nothing changed (use force to overwrite).
    AlreadyLoaded,
}

/// Split `stock` over `shards` as evenly as possible (the first shards get
/// the remainder).
pub fn split(stock: i64, shards: u16) -> Vec<i64> {
    let k = i64::from(shards);
    (0..k)
        .map(|s| stock / k + i64::from(s < stock % k))
        .collect()
}

impl Inventory {
    /// Load `stock` units for `sku`, split evenly over `shards` shards.
    /// Refuses (AlreadyLoaded) when the SKU already has counters, unless
    /// `force`: then each shard's available units are set anew and holds and
    /// sales already made stay on the books.
    pub async fn preload(
        &self,
        sku: &Sku,
        stock: i64,
        shards: u16,
        force: bool,
    ) -> Result<PreloadOutcome, InventoryError> {
        self.preload_with(
            sku,
            PreloadSpec {
                stock,
                shards,
                force,
                max_per_user: None,
                window: Window::default(),
            },
        )
        .await
    }

    /// [`Inventory::preload`] with every option; `max_per_user: None` keeps
    /// the SKU's current cap (none for a new SKU).
    ///
    /// All or nothing, as the service sees it: the SKU exists once its meta
    /// names its shards, and that is written last, after every shard has its
    /// counters (and after the sweeper's list has the SKU). Before the first
    /// shard is written, the layout this preload is about to write is noted in
    /// the meta (`pending`), so a preload that fails half-way (a timeout, a
    /// lost connection, an ACL that refuses one shard's keys) can be repeated: "already loaded" is
    /// decided by the meta alone, the shards the failed attempt wrote are
    /// overwritten (they were never served: no meta named them), and shards
    /// it wrote that the new layout lacks are deleted.
    pub async fn preload_with(
        &self,
        sku: &Sku,
        spec: PreloadSpec,
    ) -> Result<PreloadOutcome, InventoryError> {
        spec.validate()?;
        let PreloadSpec {
            stock,
            shards,
            force,
            max_per_user,
            window,
        } = spec;
        // read past the cache: preload must see what is there now
        if let Ok(mut cache) = self.meta.write() {
            cache.remove(sku);
        }
        let old = self.meta(sku).await?;
        if let Some(old) = &old {
            if !force {
                return Ok(PreloadOutcome::AlreadyLoaded);
            }
            if old.shards > shards {
                // a dropped shard would strand its holds and the units they return
                return Err(InventoryError::InvalidRequest(format!(
                    "{sku} has {} shards; a loaded SKU can gain shards but not lose them",
                    old.shards
                )));
            }
        }
        let meta_key = keys::meta(sku);
        let client = self.nodes.client_for_key(&meta_key);
        let pending: Vec<String> = client
            .hget::<Option<String>, _, _>(&meta_key, "pending")
            .await
            .map_err(|e| self.err(e))?
            .map(|t| t.split(',').map(str::to_owned).collect())
            .unwrap_or_default();
        let loaded = old.as_ref().map(|m| m.shards).unwrap_or(0);
        let old_tags = old.as_ref().map(|m| m.tags.clone()).unwrap_or_default();
        // an earlier attempt's layout extends the loaded one (placement keeps
        // existing tags): keep its tags, so its shards are found again
        let base = if pending.len() > old_tags.len() && pending.starts_with(&old_tags) {
            pending.clone()
        } else {
            old_tags
        };
        let max_per_user = max_per_user
            .or(old.as_ref().map(|m| m.max_per_user))
            .unwrap_or(0);
        // new shards are placed on the cluster's least-loaded masters
        let tags = placement::tags_for(&self.pool, sku, &base, shards);
        // shards an earlier attempt wrote beyond this layout: never served
        let stray: Vec<String> = base
            .get(tags.len().max(usize::from(loaded))..)
            .unwrap_or_default()
            .to_vec();
        let mut noted = tags.clone();
        noted.extend(stray.iter().cloned());
        let _: () = client
            .hset(&meta_key, [("pending", noted.join(","))])
            .await
            .map_err(|e| self.err(e))?;
        // the window: the one given, else the SKU's earlier one
        let window = if window.is_some() {
            window
        } else {
            old.as_ref().map(|m| m.window).unwrap_or_default()
        };
        // A SKU with opens_at: its draw's seed, drawn once and never again
        // (a forced reload keeps it, so the published commitment stands),
        // before the meta that publishes its commitment.
        let commitment = match window.opens_at_ms {
            Some(_) => Some(self.draw_seed(sku).await?.commitment()),
            None => None,
        };
        let meta = SkuMeta {
            sku: sku.clone(),
            shards,
            tags,
            max_per_user,
            window_arg: window.arg().into(),
            window,
            commitment: commitment.clone(),
        };
        let per_shard = split(stock, shards);
        for (s, units) in per_shard.iter().enumerate() {
            // s < shards <= MAX_SHARDS. A shard the meta does not name yet
            // (a new SKU, or one this preload adds) was never served: what
            // an earlier failed attempt left there is replaced. A loaded
            // shard is only reached with force (a loaded SKU without force
            // was refused above).
            let mode = if s >= usize::from(loaded) {
                ShardLoad::New
            } else {
                ShardLoad::Force
            };
            if !self
                .preload_shard(&meta.keys(s as u16), *units, mode)
                .await?
            {
                return Ok(PreloadOutcome::AlreadyLoaded);
            }
        }
        for tag in &stray {
            let sk = ShardKeys::new(tag);
            let _: i64 = self
                .nodes
                .client_for_key(&sk.stock())
                .del(vec![sk.stock(), sk.books(), sk.events()])
                .await
                .map_err(|e| self.err(e))?;
        }
        let _: () = self
            .pool
            .next()
            .sadd(keys::SKUS, sku.as_str())
            .await
            .map_err(|e| self.err(e))?;
        // last: from here on the SKU exists with this layout
        let now = now_ms().to_string();
        // a SKU with a window is layout 4: a layout-3 instance, which knows
        // no window and would sell before opens_at, refuses it (keys.rs)
        let layout = if window.is_some() {
            keys::LAYOUT_WINDOW
        } else {
            keys::LAYOUT
        };
        let mut fields = vec![
            ("shard_count", shards.to_string()),
            ("layout", layout.to_owned()),
            ("tags", meta.tags.join(",")),
            ("max_per_user", max_per_user.to_string()),
            ("loaded_at", now),
        ];
        if let Some(o) = window.opens_at_ms {
            fields.push(("opens_at", o.to_string()));
        }
        if let Some(c) = window.closes_at_ms {
            fields.push(("closes_at", c.to_string()));
        }
        if let Some(c) = commitment {
            fields.push(("commitment", c));
        }
        let _: () = client
            .hset(&meta_key, fields)
            .await
            .map_err(|e| self.err(e))?;
        let _: i64 = client
            .hdel(&meta_key, "pending")
            .await
            .map_err(|e| self.err(e))?;
        if let Ok(mut cache) = self.meta.write() {
            cache.remove(sku);
        }
        // new units, maybe on new shards without a gate: open up at once
        self.clear_sold_out(sku);
        self.forget_not_open(sku);
        self.forget_stock(sku);
        self.returned.notify_one();
        Ok(PreloadOutcome::Loaded { per_shard })
    }

    pub(super) async fn preload_shard(
        &self,
        sk: &ShardKeys,
        units: i64,
        mode: ShardLoad,
    ) -> Result<bool, InventoryError> {
        let mode = match mode {
            ShardLoad::Force => "1",
            ShardLoad::New => "2",
        };
        let reply = array(
            self.run(
                &self.scripts.preload,
                vec![sk.stock(), sk.books(), sk.events()],
                vec![units.to_string(), mode.to_string()],
            )
            .await?,
        )?;
        Ok(text(at(&reply, 0)?)? == "ok")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_even_and_complete() {
        assert_eq!(split(10, 4), vec![3, 3, 2, 2]);
        assert_eq!(split(3, 4), vec![1, 1, 1, 0]);
        assert_eq!(split(0, 2), vec![0, 0]);
        for (n, k) in [(100, 4), (7, 3), (1, 1), (999, 16)] {
            assert_eq!(split(n, k).iter().sum::<i64>(), n);
        }
    }
}
