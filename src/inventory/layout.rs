//! A SKU's layout: its shard count, each shard's hash tag and its purchase
//! cap, as preload wrote them in the SKU's meta hash (`keys::meta`). Every
//! request reads it first, through a short cache ([`META_TTL`]); a meta an
//! earlier version wrote (data layout 1) is converted on first read by
//! `lua/meta_upgrade.lua`, and a layout newer than this version's is refused
//! rather than misread (`keys::LAYOUT`, docs on upgrading).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::interfaces::{ClientLike, HashesInterface, KeysInterface, SetsInterface};
use fred::types::{ClusterHash, CustomCommand, Expiration, SetOptions, Value};

use super::keys::{self, ShardKeys};
use super::replies::{array, at, text};
use super::InventoryError;
use super::{Inventory, MAX_SHARDS};
use crate::domain::{ScopedKey, Sku};

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
    /// The sale window (ms, Redis clock), if any (docs/fair-draw.md).
    pub window: Window,
    /// `reserve.lua`'s ARGV[4]: `<opens>|<closes>`, "" without a window
    /// (built once per meta read, shared by every reserve call).
    pub window_arg: Arc<str>,
    /// hex SHA-256 of the draw's seed (a SKU with `opens_at`).
    pub commitment: Option<String>,
}

/// A SKU's sale window: `opens_at` and `closes_at` in ms on the Redis
/// clock; either may be absent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window {
    pub opens_at_ms: Option<i64>,
    pub closes_at_ms: Option<i64>,
}

impl Window {
    pub fn is_some(&self) -> bool {
        self.opens_at_ms.is_some() || self.closes_at_ms.is_some()
    }

    /// The window as `reserve.lua` reads it (ARGV[4]).
    pub fn arg(&self) -> String {
        if !self.is_some() {
            return String::new();
        }
        let f = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_default();
        format!("{}|{}", f(self.opens_at_ms), f(self.closes_at_ms))
    }

    /// `closes_at` after `opens_at`, both after 1970 and before 9999.
    pub fn check(&self) -> Result<(), InventoryError> {
        const MAX: i64 = 253_402_300_799_000; // 9999-12-31T23:59:59Z
        for v in [self.opens_at_ms, self.closes_at_ms].into_iter().flatten() {
            if !(0..=MAX).contains(&v) {
                return Err(InventoryError::InvalidSaleWindow(
                    "opens_at and closes_at must lie between 1970 and 9999".into(),
                ));
            }
        }
        if let (Some(o), Some(c)) = (self.opens_at_ms, self.closes_at_ms) {
            if c <= o {
                return Err(InventoryError::InvalidSaleWindow(
                    "closes_at must be after opens_at".into(),
                ));
            }
        }
        Ok(())
    }

    /// Parse an RFC 3339 instant (the API's and the CLI's form: `Z` or a
    /// `±HH:MM` offset, optional fractions of a second) to ms since 1970.
    pub fn parse_instant(what: &str, s: &str) -> Result<i64, InventoryError> {
        let bad = || {
            InventoryError::InvalidSaleWindow(format!(
                "{what} must be an RFC 3339 instant such as 2026-12-24T18:00:00Z, not {:?}",
                s.chars().take(64).collect::<String>()
            ))
        };
        // an offset: `+HH:MM` / `-HH:MM` at the end; humantime reads `Z` only
        let (utc, offset_ms) = match s
            .len()
            .checked_sub(6)
            .and_then(|i| s.get(i..).map(|o| (i, o)))
        {
            Some((i, o))
                if matches!(o.as_bytes()[0], b'+' | b'-')
                    && o.as_bytes()[3] == b':'
                    && s.contains('T') =>
            {
                let h: i64 = o.get(1..3).and_then(|h| h.parse().ok()).ok_or_else(bad)?;
                let m: i64 = o.get(4..6).and_then(|m| m.parse().ok()).ok_or_else(bad)?;
                if h > 23 || m > 59 {
                    return Err(bad());
                }
                let sign = if o.starts_with('-') { -1 } else { 1 };
                (format!("{}Z", &s[..i]), sign * (h * 60 + m) * 60_000)
            }
            _ => (s.to_owned(), 0),
        };
        let t = humantime::parse_rfc3339(&utc).map_err(|_| bad())?;
        let ms = t
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| InventoryError::InvalidSaleWindow(format!("{what} must lie after 1970")))?
            .as_millis();
        i64::try_from(ms)
            .map_err(|_| InventoryError::InvalidSaleWindow(format!("{what} is out of range")))
            .map(|ms| ms - offset_ms)
    }
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
        // Redis's data layout is one this version does not know: nothing of
        // a SKU is read or written (reserve, confirm, the sweeper, ...)
        if let Some(why) = self.layout_refusal() {
            return Err(InventoryError::Unsuitable(why));
        }
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
        // (a cache miss, once per META_TTL: boxed, so the future of every
        // reserve that reads the cache stays small)
        let read = Box::pin(
            self.nodes
                .client_for_key(&key)
                .hgetall::<HashMap<String, String>, _>(key),
        )
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
        // A meta an earlier version wrote (layout 1 or 2) is converted first: from
        // then on older instances refuse the SKU (keys.rs, `LAYOUT`).
        let fields = if fields.contains_key("shards")
            || fields.get("layout").map(String::as_str) == Some("2")
        {
            self.upgrade_meta(sku).await?
        } else {
            fields
        };
        match fields.get("layout").map(String::as_str) {
            Some(keys::LAYOUT) | Some(keys::LAYOUT_WINDOW) => {}
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
        let ms = |f: &str| fields.get(f).and_then(|v| v.parse::<i64>().ok());
        let window = Window {
            opens_at_ms: ms("opens_at"),
            closes_at_ms: ms("closes_at"),
        };
        let m = Arc::new(SkuMeta {
            sku: sku.clone(),
            shards,
            tags,
            max_per_user,
            window_arg: window.arg().into(),
            window,
            commitment: fields.get("commitment").cloned(),
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

    /// Read Redis's data layout ([`keys::DATA_LAYOUT`]) and keep the
    /// verdict every reserve reads ([`Inventory::layout_refusal`]): Ok when
    /// it is this version's; on a store with no SKU yet, this version's is
    /// written first. A refusal is logged once per change. Err only when
    /// Redis could not be read.
    pub(super) async fn check_data_layout(&self) -> Result<Result<(), String>, InventoryError> {
        let client = self.nodes.client_for_key(keys::DATA_LAYOUT);
        let mut found: Option<String> = client
            .get(keys::DATA_LAYOUT)
            .await
            .map_err(|e| self.err(e))?;
        if found.is_none() {
            let skus: u64 = self
                .nodes
                .client_for_key(keys::SKUS)
                .scard(keys::SKUS)
                .await
                .map_err(|e| self.err(e))?;
            if skus == 0 {
                // a fresh store: its claim key, then this version's layout
                // (NX: a racing instance keeps the first, read below)
                let secret = self.nodes.client_for_key(keys::CLAIM_SECRET);
                let _: Option<String> = secret
                    .set(
                        keys::CLAIM_SECRET,
                        keys::ClaimHasher::random_hex(),
                        None::<Expiration>,
                        Some(SetOptions::NX),
                        false,
                    )
                    .await
                    .map_err(|e| self.err(e))?;
                let _: Option<String> = client
                    .set(
                        keys::DATA_LAYOUT,
                        keys::STORE_LAYOUT,
                        None::<Expiration>,
                        Some(SetOptions::NX),
                        false,
                    )
                    .await
                    .map_err(|e| self.err(e))?;
                found = client
                    .get(keys::DATA_LAYOUT)
                    .await
                    .map_err(|e| self.err(e))?;
            }
        }
        // an earlier layout, which migrate-layout upgrades
        let not_migrated = |which: String| {
            Err(format!(
                "Redis holds data of layout {which} and this version of flashgate writes \
                 layout {}: not serving until `flashgate migrate-layout` has upgraded it \
                 (docs/UPGRADING.md)",
                keys::STORE_LAYOUT
            ))
        };
        let verdict = match found.as_deref() {
            Some(keys::STORE_LAYOUT) => self.read_claim_key().await?,
            None => not_migrated(format!("2 (no {} key)", keys::DATA_LAYOUT)),
            Some(v) if keys::STORE_LAYOUTS_BEFORE.contains(&v) => {
                not_migrated(format!("{v} ({})", keys::DATA_LAYOUT))
            }
            Some(other) => Err(format!(
                "Redis holds data of layout {other:?} ({}) and this version of flashgate reads \
                 layout {} only: not serving; upgrade this instance (docs/UPGRADING.md)",
                keys::DATA_LAYOUT,
                keys::STORE_LAYOUT
            )),
        };
        let was_ok = self
            .layout_ok
            .swap(verdict.is_ok(), std::sync::atomic::Ordering::SeqCst);
        if let Ok(mut m) = self.layout_refused.write() {
            let changed = *m != verdict.as_ref().err().cloned();
            if changed || was_ok != verdict.is_ok() {
                match &verdict {
                    Err(msg) => tracing::error!("{msg}"),
                    Ok(()) if !was_ok => tracing::info!(
                        layout = keys::STORE_LAYOUT,
                        "Redis's data layout is this version's: serving"
                    ),
                    Ok(()) => {}
                }
            }
            *m = verdict.as_ref().err().cloned();
        }
        Ok(verdict)
    }

    /// Read the store's claim hash key (`keys::CLAIM_SECRET`): Err (refuse to
    /// serve) when a store of this layout has none or a malformed one, which
    /// only a hand-made edit leaves (every claim's name follows from it).
    async fn read_claim_key(&self) -> Result<Result<(), String>, InventoryError> {
        let hex: Option<String> = self
            .nodes
            .client_for_key(keys::CLAIM_SECRET)
            .get(keys::CLAIM_SECRET)
            .await
            .map_err(|e| self.err(e))?;
        let hasher = hex.as_deref().and_then(keys::ClaimHasher::parse);
        if let Ok(mut h) = self.claim_hasher.write() {
            *h = hasher;
        }
        Ok(match hasher {
            Some(_) => Ok(()),
            None => Err(format!(
                "Redis holds data of layout {} without a valid claim key ({}: {}): not \
                 serving, as every idempotency claim is named from it; `flashgate \
                 migrate-layout` makes one (docs/UPGRADING.md)",
                keys::STORE_LAYOUT,
                keys::CLAIM_SECRET,
                if hex.is_some() {
                    "malformed"
                } else {
                    "missing"
                }
            )),
        })
    }

    /// The claim of idempotency key `key`, named from the store's claim key.
    pub fn claim_of(
        &self,
        key: &crate::domain::ScopedKey,
    ) -> Result<keys::KeyClaim, InventoryError> {
        match self.claim_hasher.read().ok().and_then(|h| *h) {
            Some(h) => Ok(h.claim(key)),
            None => Err(InventoryError::Unsuitable(
                self.layout_refusal()
                    .unwrap_or_else(|| "the store's claim key is not read yet".into()),
            )),
        }
    }

    /// Why this instance refuses to serve Redis's data layout, if it does
    /// (the last [`Inventory::check_data_layout`]).
    pub fn layout_refusal(&self) -> Option<String> {
        if self.layout_ok.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        match self.layout_refused.read() {
            Ok(m) => m.clone(),
            Err(_) => Some("data layout unknown".into()),
        }
    }

    /// `flashgate migrate-layout`: upgrade a store of an earlier data
    /// layout (2, 3 or 5) to this version's (6), in this order, each step
    /// idempotent, so that a run cut short is simply run again:
    ///
    /// 1. the store's claim key ([`keys::CLAIM_SECRET`]): made if missing
    ///    (`SET NX`: a key an interrupted run made is kept, and with it the
    ///    names it gave), then read;
    /// 2. every SKU's meta written before layout 3 (`lua/meta_upgrade.lua`);
    /// 3. every claim of layout 5 or earlier, `fg:{idem~NN}:<key>`
    ///    ([`keys::idem_global`]), found with `SCAN` on every master, moved
    ///    to its layout-6 name ([`keys::ClaimHasher::claim`]) with its value
    ///    and remaining TTL ([`Inventory::rename_old_claims`]);
    /// 4. [`keys::DATA_LAYOUT`] = [`keys::STORE_LAYOUT`], last: until then
    ///    every instance of this version refuses the store, so none reads a
    ///    claim at its new name before every claim is there.
    ///
    /// Between sales: while any SKU has units held it refuses, unless
    /// `force`. The holds stay valid either way: this version reads what
    /// layouts 2 to 5 wrote — records at `r:<rid>`, claims without a token
    /// (walked with `R` verdicts), layout 3's walk-on verdicts at `idem:` —
    /// and a retry whose renamed claim carries an old token walks with it.
    ///
    /// On a store already of layout 6, step 3 renames what an old instance
    /// may have written in the seconds before it noticed the new layout (and
    /// nothing else), and step 1 makes a new claim key if the store lost its
    /// own (deleted by hand) or holds a malformed one: the claims named from
    /// the lost key are then found no more, so a retry of a request made
    /// before could hold a second time; with units held that too needs
    /// `force`. Refuses a store of a layout newer than this version's.
    pub async fn migrate_layout(&self, force: bool) -> Result<LayoutMigration, InventoryError> {
        let client = self.nodes.client_for_key(keys::DATA_LAYOUT);
        let found: Option<String> = client
            .get(keys::DATA_LAYOUT)
            .await
            .map_err(|e| self.err(e))?;
        let current = found.as_deref() == Some(keys::STORE_LAYOUT);
        if let Some(v) = found.as_deref() {
            if v != keys::STORE_LAYOUT && !keys::STORE_LAYOUTS_BEFORE.contains(&v) {
                return Err(InventoryError::Unsuitable(format!(
                    "Redis holds data of layout {v:?} ({}); this version writes layout {}: \
                     not migrating",
                    keys::DATA_LAYOUT,
                    keys::STORE_LAYOUT
                )));
            }
        }
        let stored_key = self.stored_claim_key().await?;
        // a store of this layout without a valid claim key: a new one loses
        // the name of every claim made so far
        let key_lost = current
            && stored_key
                .as_deref()
                .and_then(keys::ClaimHasher::parse)
                .is_none();
        // the holds matter only when the store changes under them
        let count_held = !current || key_lost;
        let mut old = Vec::new();
        let mut held = Vec::new();
        for sku in self.skus().await? {
            let key = keys::meta(&sku);
            let fields: HashMap<String, String> = self
                .nodes
                .client_for_key(&key)
                .hgetall(&key)
                .await
                .map_err(|e| self.err(e))?;
            let count = match fields.get("layout").map(String::as_str) {
                // (a store of this layout: only metas an older instance
                // wrote since are converted, holds or not)
                Some(keys::LAYOUT) | Some(keys::LAYOUT_WINDOW) if !count_held => continue,
                None | Some("2") | Some(keys::LAYOUT) | Some(keys::LAYOUT_WINDOW) => fields
                    .get("shard_count")
                    .or_else(|| fields.get("shards"))
                    .and_then(|c| c.parse::<u16>().ok())
                    .filter(|k| (1..=MAX_SHARDS).contains(k)),
                Some(other) => {
                    return Err(InventoryError::Unsuitable(format!(
                        "{sku} was loaded in data layout {other:?}, newer than this version's \
                         ({}): not migrating",
                        keys::LAYOUT
                    )))
                }
            };
            let Some(count) = count else { continue };
            let tags: Vec<String> = fields
                .get("tags")
                .map(|t| t.split(',').map(str::to_owned).collect())
                .unwrap_or_default();
            if count_held {
                let mut units = 0i64;
                for s in 0..count {
                    let sk = match tags.get(usize::from(s)) {
                        Some(t) => ShardKeys::new(t),
                        None => ShardKeys::new(&keys::default_tag(&sku, s)),
                    };
                    let books = sk.books();
                    let h: Option<String> = self
                        .nodes
                        .client_for_key(&books)
                        .hget(&books, "held")
                        .await
                        .map_err(|e| self.err(e))?;
                    units += h.and_then(|h| h.parse::<i64>().ok()).unwrap_or(0);
                }
                if units > 0 {
                    held.push(format!("{sku}: {units} units held"));
                }
            }
            if !matches!(
                fields.get("layout").map(String::as_str),
                Some(keys::LAYOUT) | Some(keys::LAYOUT_WINDOW)
            ) {
                old.push(sku);
            }
        }
        if !held.is_empty() && !force {
            return Err(InventoryError::Unsuitable(if key_lost {
                format!(
                    "the store's claim key ({}) is {} and holds are outstanding ({}): a new key \
                     names every claim anew, so the claims made so far are found no more and a \
                     retry of a request made before could hold a second time; make it between \
                     sales, once the holds have ended, or with --force",
                    keys::CLAIM_SECRET,
                    if stored_key.is_some() {
                        "malformed"
                    } else {
                        "missing"
                    },
                    held.join(", ")
                )
            } else {
                format!(
                    "holds are outstanding ({}): migrate between sales, once they have ended, \
                     or with --force",
                    held.join(", ")
                )
            }));
        }
        // 1. the claim key
        let (hasher, made) = self.make_claim_key(stored_key.as_deref()).await?;
        let claim_key = match (made, current) {
            (false, _) => ClaimKeyChange::Kept,
            (true, false) => ClaimKeyChange::New,
            (true, true) => {
                tracing::warn!(
                    key = keys::CLAIM_SECRET,
                    "the store's claim key was lost: made a new one; the claims named from the \
                     lost one are found no more (a retry of a request made before is a new request)"
                );
                ClaimKeyChange::Replaced
            }
        };
        // 2. the metas
        for sku in &old {
            self.upgrade_meta(sku).await?;
            if let Ok(mut cache) = self.meta.write() {
                cache.remove(sku);
            }
        }
        // 3. the claims
        let claims = self.rename_old_claims(hasher).await?;
        // 4. the layout
        let _: () = client
            .set(keys::DATA_LAYOUT, keys::STORE_LAYOUT, None, None, false)
            .await
            .map_err(|e| self.err(e))?;
        self.check_data_layout()
            .await?
            .map_err(InventoryError::Unsuitable)?;
        Ok(LayoutMigration {
            converted: old,
            claim_key,
            claims,
        })
    }

    /// The text at [`keys::CLAIM_SECRET`], if any.
    async fn stored_claim_key(&self) -> Result<Option<String>, InventoryError> {
        self.nodes
            .client_for_key(keys::CLAIM_SECRET)
            .get(keys::CLAIM_SECRET)
            .await
            .map_err(|e| self.err(e))
    }

    /// The store's claim key, made first when `stored` (what was read) is
    /// none (`SET NX`: a racing run's key wins) or malformed (replaced), and
    /// read back; and whether this call wrote it. (A claim key is made by
    /// the first start on an empty store too: `check_data_layout`.)
    async fn make_claim_key(
        &self,
        stored: Option<&str>,
    ) -> Result<(keys::ClaimHasher, bool), InventoryError> {
        if let Some(h) = stored.and_then(keys::ClaimHasher::parse) {
            return Ok((h, false));
        }
        let client = self.nodes.client_for_key(keys::CLAIM_SECRET);
        // (a malformed key names no claim: nothing is lost by replacing it)
        let only_if_missing = stored.is_none().then_some(SetOptions::NX);
        // (None: a racing run made it first)
        let wrote: Option<String> = client
            .set(
                keys::CLAIM_SECRET,
                keys::ClaimHasher::random_hex(),
                None::<Expiration>,
                only_if_missing,
                false,
            )
            .await
            .map_err(|e| self.err(e))?;
        let hex = self.stored_claim_key().await?;
        match hex.as_deref().and_then(keys::ClaimHasher::parse) {
            Some(h) => Ok((h, wrote.is_some())),
            None => Err(InventoryError::Protocol(format!(
                "{} is not 32 hex digits right after it was written",
                keys::CLAIM_SECRET
            ))),
        }
    }

    /// Move every claim of data layout 5 or earlier ([`keys::idem_global`],
    /// `fg:{idem~NN}:<key>`) to its layout-6 name `hasher` gives: `SCAN MATCH
    /// fg:{idem~*}:*` on every master (SCAN walks one node's keys: on Redis
    /// Cluster each master's in turn), then for each claim found its value
    /// and remaining TTL (GET, PTTL), `SET <new name> <value> PX <ttl> NX`
    /// on the new name's master (a cluster puts the two names in different
    /// slots: no RENAME), and DEL of the old name. Idempotent: a claim a
    /// run cut short had copied is found again, its copy's NX fails, and
    /// the old name goes. Costs a walk of every master's keyspace.
    async fn rename_old_claims(
        &self,
        hasher: keys::ClaimHasher,
    ) -> Result<ClaimRenames, InventoryError> {
        let mut masters = self.nodes.masters();
        if masters.is_empty() {
            // a cluster whose slot map was not known yet
            self.nodes.refresh().await;
            masters = self.nodes.masters();
        }
        if masters.is_empty() {
            return Err(InventoryError::Unavailable(
                "no redis master known to look for the claims of the earlier layout on".into(),
            ));
        }
        let mut done = ClaimRenames::default();
        for (node, client) in masters {
            let before = done;
            let mut cursor = "0".to_string();
            loop {
                let reply: Value = client
                    .custom(
                        CustomCommand::new_static("SCAN", ClusterHash::Random, false),
                        vec![
                            cursor.clone(),
                            "MATCH".into(),
                            OLD_CLAIMS.into(),
                            "COUNT".into(),
                            SCAN_COUNT.into(),
                        ],
                    )
                    .await
                    .map_err(|e| self.err(e))?;
                let parts = array(reply)?;
                cursor = text(at(&parts, 0)?)?;
                let names = match parts.into_iter().nth(1) {
                    Some(v) => array(v)?,
                    None => Vec::new(),
                };
                self.rename_claims(&client, hasher, names, &mut done)
                    .await?;
                if cursor == "0" {
                    break;
                }
            }
            tracing::info!(
                master = %node,
                renamed = done.renamed - before.renamed,
                superseded = done.superseded - before.superseded,
                skipped = done.skipped - before.skipped,
                "claims of the earlier layout moved to their new names"
            );
        }
        Ok(done)
    }

    /// [`Inventory::rename_old_claims`] for the names one SCAN page found on
    /// the master `source` reaches: their values and TTLs in one pipeline,
    /// then every copy and DEL at once.
    async fn rename_claims(
        &self,
        source: &fred::clients::Client,
        hasher: keys::ClaimHasher,
        names: Vec<Value>,
        done: &mut ClaimRenames,
    ) -> Result<(), InventoryError> {
        let mut claims = Vec::with_capacity(names.len());
        for name in names {
            let name = name
                .as_bytes()
                .and_then(|b| std::str::from_utf8(b).ok())
                .map(str::to_owned);
            match name.as_deref().and_then(old_claim_key) {
                Some(key) => claims.push((name.unwrap_or_default(), key)),
                None => {
                    tracing::warn!(name = ?name, "a key among the claims of the earlier layout that is none: left as it is");
                    done.skipped += 1;
                }
            }
        }
        if claims.is_empty() {
            return Ok(());
        }
        let pipe = source.pipeline();
        for (name, _) in &claims {
            let _: () = pipe.get(name.as_str()).await.map_err(|e| self.err(e))?;
            let _: () = pipe.pttl(name.as_str()).await.map_err(|e| self.err(e))?;
        }
        let read = pipe
            .try_all::<Value>()
            .await
            .into_iter()
            .collect::<Result<Vec<Value>, _>>()
            .map_err(|e| self.err(e))?;
        if read.len() != 2 * claims.len() {
            return Err(InventoryError::Protocol(format!(
                "GET and PTTL of {} claims answered {} replies",
                claims.len(),
                read.len()
            )));
        }
        let mut moves = tokio::task::JoinSet::new();
        for ((name, key), found) in claims.into_iter().zip(read.chunks_exact(2)) {
            let [value, ttl] = found else { continue };
            // (gone since the SCAN: expired, nothing to move)
            let Some(value) = value.clone().into_bytes() else {
                continue;
            };
            let ttl = match ttl {
                Value::Integer(-2) => continue,
                Value::Integer(t) if *t > 0 => Some(Expiration::PX(*t)),
                // (-1: no expiry, which no version wrote; kept so)
                Value::Integer(_) => None,
                other => return Err(InventoryError::Protocol(format!("PTTL answered {other:?}"))),
            };
            let new = hasher.claim(&key).record;
            let target = self.nodes.client_for_key(&new);
            let source = source.clone();
            moves.spawn(async move {
                let set: Value = target
                    .set(
                        new.as_str(),
                        value.clone(),
                        ttl,
                        Some(SetOptions::NX),
                        false,
                    )
                    .await?;
                let moved = if set.is_null() {
                    // the new name holds a claim already: this one's copy
                    // (a run cut short before its DEL), or a claim a
                    // layout-6 instance made since, which stands
                    let there: Option<bytes::Bytes> = target.get(new.as_str()).await?;
                    there.as_ref() == Some(&value)
                } else {
                    true
                };
                let _: i64 = source.del(name.as_str()).await?;
                Ok::<_, fred::error::Error>((moved, key))
            });
        }
        let mut failed = None;
        while let Some(joined) = moves.join_next().await {
            match joined {
                Ok(Ok((true, _))) => done.renamed += 1,
                Ok(Ok((false, key))) => {
                    tracing::warn!(key = %key.redacted(), "a claim of the earlier layout whose new name holds another claim: the new one stands, the old one is deleted");
                    done.superseded += 1;
                }
                // (the other moves go on: each is idempotent, a second run
                // finishes what is left)
                Ok(Err(e)) => failed = Some(self.err(e)),
                Err(e) => failed = Some(InventoryError::Protocol(format!("claim move: {e}"))),
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// The names of the claims of data layout 5 and earlier
/// ([`keys::idem_global`]), for `SCAN MATCH` (Redis's glob takes braces
/// literally).
const OLD_CLAIMS: &str = "fg:{idem~*}:*";

/// Keys asked for per SCAN call when looking for old claims.
const SCAN_COUNT: &str = "1000";

/// The idempotency key of an old claim's name `fg:{idem~NN}:<key>` (the
/// text after the first `}:`), if the name is exactly the one
/// [`keys::idem_global`] gives that key (the glob matches more).
fn old_claim_key(name: &str) -> Option<ScopedKey> {
    let (_, stored) = name.split_once("}:")?;
    let key = ScopedKey::from_stored(stored)?;
    (keys::idem_record(&key) == name).then_some(key)
}

/// What [`Inventory::migrate_layout`] did.
#[derive(Clone, Debug)]
pub struct LayoutMigration {
    /// The SKUs whose meta it converted (`lua/meta_upgrade.lua`).
    pub converted: Vec<Sku>,
    /// The store's claim key ([`keys::CLAIM_SECRET`]).
    pub claim_key: ClaimKeyChange,
    /// The claims of the earlier layout it moved to their new names.
    pub claims: ClaimRenames,
}

/// What [`Inventory::migrate_layout`] did to the store's claim key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimKeyChange {
    /// It was there: kept (and every claim's name with it).
    Kept,
    /// A store of an earlier layout had none: made.
    New,
    /// A store of layout 6 had lost its key (or held a malformed one): a new
    /// one made, and the claims named from the lost one are found no more.
    Replaced,
}

/// The claims of data layout 5 and earlier [`Inventory::migrate_layout`]
/// found (`fg:{idem~NN}:<key>`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClaimRenames {
    /// Moved to their layout-6 names, value and TTL kept.
    pub renamed: u64,
    /// Deleted, their new name holding another claim already (one a
    /// layout-6 instance made since: an old instance had written the old
    /// one after the store was migrated).
    pub superseded: u64,
    /// Keys the pattern matched that are no claim's name: left alone.
    pub skipped: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_old_claim_name_gives_back_its_key_and_nothing_else_does() {
        use crate::domain::{CartId, IdempotencyKey, StorefrontId, Tenant};
        let client = IdempotencyKey::parse("k-1}:x").expect("key");
        let shop = Tenant::Storefront(StorefrontId::parse("shop").expect("id"));
        let cart = CartId::random();
        for key in [
            ScopedKey::new(&Tenant::Anonymous, &client),
            ScopedKey::new(&shop, &client),
            ScopedKey::promotion("shop", "t1", "2").expect("promotion"),
            ScopedKey::cart_line("", &cart, 3).expect("cart line"),
        ] {
            let (_, old) = keys::idem_global(&key);
            assert_eq!(old_claim_key(&old), Some(key.clone()), "{old}");
        }
        let key = ScopedKey::new(&Tenant::Anonymous, &client);
        let (bucket, _) = keys::idem_global(&key);
        let other = if bucket == "idem~00" {
            "idem~01"
        } else {
            "idem~00"
        };
        for name in [
            format!("fg:{{{other}}}:{}", key.as_str()),
            "fg:{idem~99}:k".to_owned(),
            format!("fg:{{{bucket}}}:"),
            "fg:{idem~00}".to_owned(),
        ] {
            assert_eq!(old_claim_key(&name), None, "{name}");
        }
        assert_eq!(ScopedKey::from_stored(""), None);
    }

    #[test]
    fn sale_window_instants_parse_with_z_or_an_offset_and_bad_ones_are_refused() {
        let p = |s: &str| Window::parse_instant("opens_at", s);
        assert_eq!(p("1970-01-01T00:00:01Z").unwrap(), 1000);
        assert_eq!(p("1970-01-01T00:00:01.5Z").unwrap(), 1500);
        assert_eq!(p("1970-01-01T02:00:01+02:00").unwrap(), 1000);
        assert_eq!(p("1970-01-01T00:00:01-01:00").unwrap(), 3_601_000);
        for bad in [
            "",
            "tomorrow",
            "2026-12-24",
            "2026-12-24T18:00:00+25:00",
            "2026-13-01T00:00:00Z",
            "é",
            "-00:00",
        ] {
            assert!(
                matches!(p(bad), Err(InventoryError::InvalidSaleWindow(_))),
                "{bad:?}"
            );
        }
        let w = |o, c| Window {
            opens_at_ms: o,
            closes_at_ms: c,
        };
        assert!(w(Some(10), Some(10)).check().is_err());
        assert!(w(Some(10), Some(9)).check().is_err());
        assert!(w(Some(-1), None).check().is_err());
        assert!(w(Some(10), Some(11)).check().is_ok());
        assert_eq!(w(Some(10), None).arg(), "10|");
        assert_eq!(w(None, None).arg(), "");
    }
}
