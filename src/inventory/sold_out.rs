//! The sold-out shortcut: while a SKU is known empty, refusals are answered
//! from memory (no Redis command, nothing written), the keys that won a unit
//! still walk and are replayed, and when the mark runs out one request
//! re-checks the shards read-only (single flight). Why that is sound is the
//! "Refusals" paragraph of the `inventory` module doc.

use std::time::{Duration, Instant};

use fred::interfaces::{KeysInterface, SetsInterface};

use super::InventoryError;
use super::{keys, FastMap, FastSet, Inventory, SkuMeta};
use crate::domain::{ScopedKey, Sku};

/// A memory that runs out and is then re-checked by one request at a time
/// (single flight): the sold-out mark below, and the stock document's
/// snapshot (stock_doc.rs). While the re-check is in flight the crowd keeps
/// the old answer, for at most `grace` past the period.
pub(super) struct Period {
    until: Instant,
    probing: bool,
}

/// What a [`Period`] says to one request.
#[derive(Debug, PartialEq)]
pub(super) enum Turn {
    /// Within the period: the memory stands.
    Fresh,
    /// The period ran out and this request re-checks (single flight).
    Recheck,
    /// Another request is re-checking: the memory stands until it is done,
    /// for at most `grace` past the period.
    Keep,
    /// Past the grace (the re-checking request was cancelled, or its reads
    /// failed): the memory no longer stands.
    Lapsed,
}

impl Period {
    pub(super) fn starting_now(len: Duration) -> Period {
        Period {
            until: Instant::now() + len,
            probing: false,
        }
    }

    pub(super) fn turn(&mut self, now: Instant, grace: Duration) -> Turn {
        if now < self.until {
            Turn::Fresh
        } else if !self.probing {
            self.probing = true;
            Turn::Recheck
        } else if now < self.until + grace {
            Turn::Keep
        } else {
            Turn::Lapsed
        }
    }

    /// Within the period and nobody re-checking.
    pub(super) fn settled(&self, now: Instant) -> bool {
        !self.probing && now < self.until
    }

    /// Run out now: the next request re-checks.
    pub(super) fn lapse(&mut self) {
        self.until = Instant::now();
        self.probing = false;
    }
}

/// The sold-out fast path's memory of one SKU.
pub(super) struct SoldOutMark {
    period: Period,
    /// The idempotency keys of the SKU's live and sold holds when the mark
    /// was made: their retries are replayed, everyone else is refused from
    /// memory.
    winners: FastSet<String>,
    /// The SKU's waitlist was full when last seen (a join took the last
    /// place or answered `full`, or the mark's walk or re-check counted the
    /// queue; a ticket this instance ends clears it): `waitlist: true`
    /// requests are refused from memory too, unless their key already joined.
    waitlist_full: bool,
    /// Every shard carried the waitlist's gate when last seen: units that
    /// come back go to the queue, not to new buyers, so a return keeps the
    /// mark (the promoter clears it when it lifts the gates; a lift by
    /// another instance is seen by the next re-check).
    gated: bool,
}

/// What the sold-out fast path says about one request.
#[derive(Debug, PartialEq)]
pub(super) enum FastPath {
    /// Refuse from memory: no Redis command (a `waitlist: true` request
    /// also needs the waitlist known full).
    SoldOut { waitlist_full: bool },
    /// The mark ran out and this request re-checks it (single flight):
    /// a read-only look at the shards and the waitlist ([`Inventory::probe`]).
    Probe,
    /// Walk the shards (not marked, or the key won).
    Walk,
}

impl Inventory {
    /// Answer "sold out" from memory? When the mark runs out, exactly one
    /// request re-checks the shards (single flight, read-only) while the
    /// others keep the answer until it is done (at most `probe_grace`); so a
    /// crowd costs one re-check per period, and units returned through
    /// another instance are seen one period plus one re-check later (through
    /// this one, at once: `units_returned`).
    // (#[inline]: called once per reserve from reserve.rs; it sat in the
    // same module, so the same codegen unit, as `reserve` before the split)
    #[inline]
    pub(super) fn fast_path(&self, sku: &Sku, key: &ScopedKey) -> FastPath {
        let Ok(mut marks) = self.sold_out.lock() else {
            return FastPath::Walk;
        };
        let Some(mark) = marks.get_mut(sku) else {
            return FastPath::Walk;
        };
        if mark.winners.contains(key.as_str()) {
            return FastPath::Walk; // a retry of a request that got a unit
        }
        let answer = FastPath::SoldOut {
            waitlist_full: mark.waitlist_full,
        };
        // While the re-check is in flight the crowd keeps the answer until
        // it is done, for as long as its Redis reads may take. A bound of one
        // more period (as before) let a re-check slowed by load send the
        // whole crowd walking, each walk leaving a claim and a walk-on verdict
        // per shard for 24 h (`make bench-hostile`: ~100 walks per 50,000
        // refusals). Past the bound (the re-checking request was cancelled,
        // or its reads failed) the next requests walk and the walk marks anew.
        match mark.period.turn(Instant::now(), self.settings.probe_grace) {
            Turn::Fresh | Turn::Keep => answer,
            Turn::Recheck => FastPath::Probe,
            Turn::Lapsed => FastPath::Walk,
        }
    }

    /// The sold-out mark's re-check, read-only: is every shard still empty
    /// for new buyers (no stock, or gated for the waitlist)? Then the mark is
    /// made again, with the winners read anew and the waitlist counted, and
    /// `Some(waitlist full)` is the answer; else the mark goes and the
    /// request walks (`None`). Writing nothing is what lets the re-check
    /// refuse: a walk would leave its key's claim and a walk-on verdict on every
    /// shard, for 24 h, for a refusal (see the module docs, "Refusals").
    pub(super) async fn probe(&self, sku: &Sku) -> Result<Option<bool>, InventoryError> {
        let seen = self.returns_seen.load(std::sync::atomic::Ordering::SeqCst);
        let meta = self.meta_of(sku).await?;
        // every shard at once (one round trip, not K: while it runs the
        // crowd keeps the answer for one more period only); per shard, stock
        // and gate in one MGET (one slot) and the key set
        let mut reads = tokio::task::JoinSet::new();
        for s in 0..meta.shards {
            let sk = meta.keys(s);
            let client = self.nodes.client_for_key(&sk.stock());
            reads.spawn(async move {
                tokio::try_join!(
                    client.mget::<Vec<Option<String>>, _>(vec![sk.stock(), sk.wlopen()]),
                    client.smembers::<Vec<String>, _>(sk.reserved_keys()),
                )
            });
        }
        let waiting = self.waitlist_len(sku).await?;
        let mut shards = Vec::with_capacity(usize::from(meta.shards));
        while let Some(read) = reads.join_next().await {
            let read = read.map_err(|e| InventoryError::Protocol(format!("probe task: {e}")))?;
            shards.push(read.map_err(|e| self.err(e))?);
        }
        let mut winners = FastSet::default();
        let mut all_gated = true;
        for (counters, keys) in shards {
            let stock = counters
                .first()
                .and_then(|v| v.as_deref())
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(0);
            let gated = counters.get(1).is_some_and(Option::is_some);
            if stock > 0 && !gated {
                self.clear_sold_out(sku);
                return Ok(None);
            }
            winners.extend(keys);
            all_gated &= gated;
        }
        let waitlist_full = u64::try_from(waiting).unwrap_or(0) >= self.settings.waitlist_capacity;
        if let Ok(mut marks) = self.sold_out.lock() {
            if seen != self.returns_seen.load(std::sync::atomic::Ordering::SeqCst) {
                // units came back meanwhile: walk
                return Ok(None);
            }
            marks.insert(
                sku.clone(),
                SoldOutMark {
                    period: Period::starting_now(self.settings.sold_out_cache),
                    winners,
                    waitlist_full,
                    gated: all_gated,
                },
            );
        }
        Ok(Some(waitlist_full))
    }

    /// Did `key` join the SKU's waitlist? (Its retry is answered its ticket,
    /// never `waitlist_full`.) One EXISTS, no write.
    pub(super) async fn joined_waitlist(
        &self,
        sku: &Sku,
        key: &ScopedKey,
    ) -> Result<bool, InventoryError> {
        let idem = keys::WaitKeys::new(sku).idem(key);
        let n: i64 = self
            .nodes
            .client_for_key(&idem)
            .exists(idem)
            .await
            .map_err(|e| self.err(e))?;
        Ok(n > 0)
    }

    /// What a join found about the SKU's waitlist: full, or not. Kept with
    /// the SKU's sold-out mark, if there is one.
    pub(super) fn waitlist_seen_full(&self, sku: &Sku, full: bool) {
        if let Ok(mut marks) = self.sold_out.lock() {
            if let Some(mark) = marks.get_mut(sku) {
                mark.waitlist_full = full;
            }
        }
    }

    /// A walk that started when `returns_seen` was `seen` found every shard
    /// empty: remember it, with the keys that won the SKU's units, unless a
    /// fresh mark exists (the crowd that found it empty at once loads the
    /// keys once) or units came back through this instance meanwhile.
    pub(super) async fn mark_sold_out(
        &self,
        meta: &SkuMeta,
        seen: u64,
    ) -> Result<(), InventoryError> {
        if self.settings.sold_out_cache.is_zero() {
            return Ok(());
        }
        let fresh = |marks: &FastMap<Sku, SoldOutMark>| {
            marks
                .get(&meta.sku)
                .is_some_and(|m| m.period.settled(Instant::now()))
        };
        if self.sold_out.lock().map(|m| fresh(&m)).unwrap_or(true) {
            return Ok(());
        }
        let waiting = self.waitlist_len(&meta.sku).await?;
        let mut winners = FastSet::default();
        let mut gated = true;
        for s in 0..meta.shards {
            let sk = meta.keys(s);
            let client = self.nodes.client_for_key(&sk.stock());
            let (keys, gate) = tokio::try_join!(
                client.smembers::<Vec<String>, _>(sk.reserved_keys()),
                client.exists::<i64, _>(sk.wlopen()),
            )
            .map_err(|e| self.err(e))?;
            winners.extend(keys);
            gated &= gate > 0;
        }
        if let Ok(mut marks) = self.sold_out.lock() {
            if seen != self.returns_seen.load(std::sync::atomic::Ordering::SeqCst) {
                return Ok(());
            }
            marks.insert(
                meta.sku.clone(),
                SoldOutMark {
                    period: Period::starting_now(self.settings.sold_out_cache),
                    winners,
                    waitlist_full: u64::try_from(waiting).unwrap_or(0)
                        >= self.settings.waitlist_capacity,
                    gated,
                },
            );
        }
        Ok(())
    }

    pub(super) fn clear_sold_out(&self, sku: &Sku) {
        if let Ok(mut m) = self.sold_out.lock() {
            self.returns_seen
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            m.remove(sku);
        }
    }

    /// Units came back to `sku` through this instance: stop answering sold
    /// out — unless every shard is gated, when they belong to the waitlist
    /// (a crowd of refusals would otherwise walk, and leave walk-on verdicts, after
    /// every return). The promoter is woken either way.
    pub(super) fn units_returned(&self, sku: &Sku) {
        let gated = self
            .sold_out
            .lock()
            .map(|m| m.get(sku).is_some_and(|m| m.gated))
            .unwrap_or(false);
        if !gated {
            self.clear_sold_out(sku);
        }
        self.returned.notify_one();
    }
}
