//! A SKU's layout: its shard count, each shard's hash tag and its purchase
//! cap, as preload wrote them in the SKU's meta hash (`keys::meta`). Every
//! request reads it first, through a short cache ([`META_TTL`]); a meta an
//! earlier version wrote (data layout 1) is converted on first read by
//! `lua/meta_upgrade.lua`, and a layout newer than this version's is refused
//! rather than misread (`keys::LAYOUT`, docs on upgrading).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::interfaces::{HashesInterface, SetsInterface};

use super::keys::{self, ShardKeys};
use super::replies::{array, text};
use super::InventoryError;
use super::{Inventory, MAX_SHARDS};
use crate::domain::Sku;

/// How long SKU metadata (shard count) is cached before it is read again.
pub(super) const META_TTL: Duration = Duration::from_secs(2);

/// A SKU's shard layout, as preload wrote it: shard count and each shard's
/// hash tag.
#[derive(Clone, Debug)]
pub struct SkuMeta {
    pub sku: Sku,
    pub shards: u16,
    pub tags: Vec<String>,
    /// Units one buyer may hold and buy together (0 = no cap).
    pub max_per_user: u32,
}

impl SkuMeta {
    pub fn keys(&self, shard: u16) -> ShardKeys {
        match self.tags.get(usize::from(shard)) {
            Some(tag) => ShardKeys::new(tag),
            None => ShardKeys::new(&keys::default_tag(&self.sku, shard)),
        }
    }
}

impl Inventory {
    /// The SKU's layout (cached for [`META_TTL`]), or None when not preloaded.
    pub async fn meta(&self, sku: &Sku) -> Result<Option<Arc<SkuMeta>>, InventoryError> {
        let mut stale = None;
        if let Ok(cache) = self.meta.read() {
            if let Some((m, at)) = cache.get(sku) {
                if at.elapsed() < META_TTL {
                    return Ok(Some(m.clone()));
                }
                stale = Some(m.clone());
            }
        }
        // routed like the scripts: a dead master elsewhere does not block it
        let key = keys::meta(sku);
        let read = self
            .nodes
            .client_for_key(&key)
            .hgetall::<HashMap<String, String>, _>(key)
            .await;
        let fields = match read {
            Ok(fields) => fields,
            Err(e) => {
                let e = self.err(e);
                // The layout only ever grows by an operator's preload, which
                // the cache already lets a walk miss for META_TTL: while the
                // meta's master is out of reach (down, or its slot moving),
                // keep the layout last read rather than failing every
                // request of the SKU.
                return match (stale, &e) {
                    (Some(m), e) if e.is_unavailable() => {
                        tracing::debug!(error = %e, sku = %sku, "meta unreadable: using the last layout read");
                        Ok(Some(m))
                    }
                    _ => Err(e),
                };
            }
        };
        // A meta an earlier version wrote (layout 1) is converted first: from
        // then on older instances refuse the SKU (keys.rs, `LAYOUT`).
        let fields = if fields.contains_key("shards") {
            self.upgrade_meta(sku).await?
        } else {
            fields
        };
        match fields.get("layout").map(String::as_str) {
            Some(keys::LAYOUT) => {}
            None if !fields.contains_key("shard_count") => return Ok(None),
            other => {
                return Err(InventoryError::Unsuitable(format!(
                    "{sku} was loaded in data layout {other:?}, which this version of flashgate \
                     (layout {}) cannot read: upgrade this instance",
                    keys::LAYOUT
                )))
            }
        }
        let Some(shards) = fields.get("shard_count") else {
            return Ok(None);
        };
        let shards: u16 = shards
            .parse()
            .ok()
            .filter(|k| (1..=MAX_SHARDS).contains(k))
            .ok_or_else(|| {
                InventoryError::Protocol(format!("bad shard count {shards:?} for {sku}"))
            })?;
        let mut tags: Vec<String> = fields
            .get("tags")
            .map(|t| t.split(',').map(str::to_owned).collect())
            .unwrap_or_default();
        for s in tags.len()..usize::from(shards) {
            // s < shards <= MAX_SHARDS
            tags.push(keys::default_tag(sku, s as u16));
        }
        let max_per_user = fields
            .get("max_per_user")
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        let m = Arc::new(SkuMeta {
            sku: sku.clone(),
            shards,
            tags,
            max_per_user,
        });
        if let Ok(mut cache) = self.meta.write() {
            cache.insert(sku.clone(), (m.clone(), Instant::now()));
        }
        Ok(Some(m))
    }

    /// Convert `sku`'s meta from layout 1 (`lua/meta_upgrade.lua`); its
    /// fields afterwards.
    pub(super) async fn upgrade_meta(
        &self,
        sku: &Sku,
    ) -> Result<HashMap<String, String>, InventoryError> {
        let reply = self
            .run(
                &self.scripts.meta_upgrade,
                vec![keys::meta(sku)],
                vec![keys::LAYOUT.to_owned()],
            )
            .await?;
        let flat = array(reply)?;
        let mut fields = HashMap::with_capacity(flat.len() / 2);
        for pair in flat.chunks(2) {
            if let [k, v] = pair {
                fields.insert(text(k)?, text(v)?);
            }
        }
        tracing::info!(sku = %sku, "SKU meta converted to data layout {}: older instances now refuse it", keys::LAYOUT);
        Ok(fields)
    }

    /// The SKU's layout as Redis has it now, past the cache.
    pub(super) async fn meta_past_cache(&self, sku: &Sku) -> Result<Arc<SkuMeta>, InventoryError> {
        if let Ok(mut cache) = self.meta.write() {
            cache.remove(sku);
        }
        self.meta_of(sku).await
    }

    /// The SKU's layout, or `unknown_sku`.
    pub(super) async fn meta_of(&self, sku: &Sku) -> Result<Arc<SkuMeta>, InventoryError> {
        match self.meta(sku).await? {
            Some(m) => Ok(m),
            None => Err(InventoryError::UnknownSku(sku.to_string())),
        }
    }

    /// Every SKU that was preloaded.
    pub async fn skus(&self) -> Result<Vec<Sku>, InventoryError> {
        let names: Vec<String> = self
            .nodes
            .client_for_key(keys::SKUS)
            .smembers(keys::SKUS)
            .await
            .map_err(|e| self.err(e))?;
        let mut skus: Vec<Sku> = names.iter().filter_map(|n| Sku::parse(n).ok()).collect();
        skus.sort();
        Ok(skus)
    }
}
