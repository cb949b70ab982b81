//! The stock document storefronts poll (`GET /v1/skus/{sku}`: "N left"),
//! served from a per-instance snapshot instead of every shard's books. The
//! snapshot is read from Redis at most every `stock_cache_ms`, by one request
//! at a time (the sold-out mark's [`Period`], single flight: the crowd keeps
//! the old document while one request re-reads); this instance's own holds,
//! releases and expiries move it at once (`stock_moved`), a preload drops it.
//! Other instances' changes show within one period plus one read. The admin
//! document (`status`) stays live.
//!
//! **Bounded by what exists.** Only a preloaded SKU gets a snapshot, at most
//! [`MAX_DOCS`] of them (the stalest evicted first). A name that is not
//! loaded is remembered as absent for one period, at most [`MAX_ABSENT`]
//! names (the memory is emptied when full): a storefront polling a SKU
//! before its preload costs one meta read per period, a flood of random names
//! one read each and a bounded map, and a preload through this instance is
//! seen at once.
//!
//! **A change racing a re-read** may be counted twice or not at all (the
//! reply of a reserve can arrive after a read that already saw it) until the
//! next read, one period later: the same staleness another instance's change
//! has. Counters never show below zero. A change this instance cannot
//! express as a delta (a confirm, whose reply does not say whether it sold
//! now or was a replay; a promoter round) ends the period instead
//! (`stock_changed`): the next request re-reads, and a read that was already
//! in flight is answered but not kept.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::interfaces::{HashesInterface, KeysInterface};
use serde::Serialize;

use super::sold_out::{Period, Turn};
use super::InventoryError;
use super::{FastMap, Inventory};
use crate::domain::Sku;

/// Most SKUs with a snapshot on one instance.
pub const MAX_DOCS: usize = 10_000;
/// Most names remembered as not loaded.
pub const MAX_ABSENT: usize = 1_024;

/// The public stock document of one SKU, encoded once per change.
#[derive(Debug, Clone, PartialEq)]
pub struct StockDoc {
    /// The JSON body: `{"sku","available","held","sold","shards","waitlist"}`.
    pub body: Bytes,
    /// A strong entity tag, quoted: a hash of the body (the same content
    /// gives the same tag on every instance, so a CDN in front of several
    /// keeps its copy).
    pub etag: String,
}

/// The counters the document shows.
#[derive(Clone, Debug, Serialize, PartialEq)]
struct Counts {
    available: i64,
    held: i64,
    sold: i64,
    shards: u16,
    waitlist: i64,
    /// A SKU with a sale window (docs/fair-draw.md).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    sale: Option<Box<Sale>>,
}

/// The sale window and the fair draw's public values.
#[derive(Clone, Debug, Serialize, PartialEq)]
struct Sale {
    #[serde(skip_serializing_if = "Option::is_none")]
    opens_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    closes_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fairness_commitment: Option<String>,
    /// Revealed once the draw is applied (`null` until then).
    #[serde(skip_serializing_if = "Option::is_none")]
    fairness_seed: Option<Option<String>>,
}

#[derive(Serialize)]
struct View<'a> {
    sku: &'a str,
    #[serde(flatten)]
    counts: &'a Counts,
}

impl StockDoc {
    fn of(sku: &Sku, counts: &Counts) -> StockDoc {
        let body = serde_json::to_vec(&View {
            sku: sku.as_str(),
            counts,
        })
        // (a struct of a string and integers always encodes)
        .unwrap_or_default();
        let etag = format!("\"{:016x}\"", fnv1a(&body));
        StockDoc {
            body: Bytes::from(body),
            etag,
        }
    }
}

/// FNV-1a, 64 bits: deterministic across instances and versions (unlike
/// the maps' seeded hashers), and ~100 bytes cost nanoseconds.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// One SKU's snapshot.
pub(super) struct Snapshot {
    period: Period,
    counts: Counts,
    doc: Arc<StockDoc>,
    /// Bumped by `stock_changed`: a read begun before must not be kept.
    changes: u64,
}

/// What this instance just did to a SKU's counters.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Moved {
    pub available: i64,
    pub held: i64,
    pub waitlist: i64,
}

impl Moved {
    /// `units` back from holds to stock.
    pub(super) fn returned(units: i64) -> Moved {
        Moved {
            available: units,
            held: -units,
            waitlist: 0,
        }
    }
}

impl Inventory {
    /// The SKU's public stock document: the snapshot while it is fresh, else
    /// read from Redis (by one request at a time while a snapshot exists);
    /// `unknown_sku` when it was never loaded.
    pub async fn stock_document(&self, sku: &Sku) -> Result<Arc<StockDoc>, InventoryError> {
        let period = self.settings.stock_cache;
        if period.is_zero() {
            return Ok(Arc::new(StockDoc::of(sku, &self.read_counts(sku).await?)));
        }
        let now = Instant::now();
        if let Ok(absent) = self.absent.lock() {
            if absent.get(sku).is_some_and(|until| now < *until) {
                return Err(InventoryError::UnknownSku(sku.to_string()));
            }
        }
        let mut changes = 0;
        if let Ok(mut docs) = self.stock_docs.lock() {
            if let Some(snap) = docs.get_mut(sku) {
                match snap.period.turn(now, self.settings.stock_grace) {
                    Turn::Fresh | Turn::Keep => return Ok(snap.doc.clone()),
                    Turn::Recheck | Turn::Lapsed => changes = snap.changes,
                }
            }
        }
        let generation = self.stock_generation.load(Ordering::SeqCst);
        match self.read_counts(sku).await {
            Ok(counts) => Ok(self.install(sku, counts, (generation, changes))),
            Err(e @ InventoryError::UnknownSku(_)) => {
                self.forget_stock(sku);
                if let Ok(mut absent) = self.absent.lock() {
                    if absent.len() >= MAX_ABSENT {
                        absent.clear(); // amortised over the names that filled it
                    }
                    absent.insert(sku.clone(), Instant::now() + period);
                }
                Err(e)
            }
            // the snapshot stays re-checking: the crowd keeps it for the
            // grace, then reads for itself (and meets the same error)
            Err(e) => Err(e),
        }
    }

    /// Keep `counts` as the SKU's snapshot for one period, unless a preload
    /// (the generation) or a change without a delta (the snapshot's
    /// `changes`) went through this instance since the read began.
    fn install(
        &self,
        sku: &Sku,
        counts: Counts,
        (generation, changes): (u64, u64),
    ) -> Arc<StockDoc> {
        let doc = Arc::new(StockDoc::of(sku, &counts));
        let Ok(mut docs) = self.stock_docs.lock() else {
            return doc;
        };
        if generation != self.stock_generation.load(Ordering::SeqCst) {
            return doc;
        }
        if let Some(snap) = docs.get_mut(sku) {
            if snap.changes != changes {
                // the period was ended meanwhile: the next request re-reads
                snap.period.lapse();
                return doc;
            }
        }
        if docs.len() >= MAX_DOCS && !docs.contains_key(sku) {
            let now = Instant::now();
            docs.retain(|_, s| s.period.settled(now));
            if docs.len() >= MAX_DOCS {
                if let Some(k) = docs.keys().next().cloned() {
                    docs.remove(&k);
                }
            }
        }
        docs.insert(
            sku.clone(),
            Snapshot {
                period: Period::starting_now(self.settings.stock_cache),
                counts,
                doc: doc.clone(),
                changes,
            },
        );
        doc
    }

    /// The document's counters as Redis has them now: per shard the stock
    /// and the books' `held` and `sold` (two commands, every shard at once),
    /// and the waitlist's length.
    async fn read_counts(&self, sku: &Sku) -> Result<Counts, InventoryError> {
        let meta = self.meta_of(sku).await?;
        let mut reads = tokio::task::JoinSet::new();
        for s in 0..meta.shards {
            let sk = meta.keys(s);
            let client = self.nodes.client_for_key(&sk.stock());
            reads.spawn(async move {
                tokio::try_join!(
                    client.get::<Option<i64>, _>(sk.stock()),
                    client.hmget::<Vec<Option<i64>>, _, _>(sk.books(), vec!["held", "sold"]),
                )
            });
        }
        let waitlist = self.waitlist_len(sku).await?;
        let sale = if meta.window.is_some() {
            let fairness_seed = match &meta.commitment {
                Some(_) => Some(self.revealed_seed(sku).await?),
                None => None,
            };
            Some(Box::new(Sale {
                opens_at: meta.window.opens_at_ms.map(super::ms_to_rfc3339),
                closes_at: meta.window.closes_at_ms.map(super::ms_to_rfc3339),
                fairness_commitment: meta.commitment.clone(),
                fairness_seed,
            }))
        } else {
            None
        };
        let mut counts = Counts {
            available: 0,
            held: 0,
            sold: 0,
            shards: meta.shards,
            waitlist,
            sale,
        };
        while let Some(read) = reads.join_next().await {
            let read = read.map_err(|e| InventoryError::Protocol(format!("stock read: {e}")))?;
            let (stock, books) = read.map_err(|e| self.err(e))?;
            let field = |i: usize| books.get(i).copied().flatten().unwrap_or(0);
            counts.available += stock.unwrap_or(0);
            counts.held += field(0);
            counts.sold += field(1);
        }
        Ok(counts)
    }

    /// This instance moved units of `sku` (a hold, a return, a waitlist
    /// join or cancel): apply the change to its snapshot at once.
    pub(super) fn stock_moved(&self, sku: &Sku, m: Moved) {
        let Ok(mut docs) = self.stock_docs.lock() else {
            return;
        };
        if let Some(snap) = docs.get_mut(sku) {
            let c = &mut snap.counts;
            c.available = (c.available + m.available).max(0);
            c.held = (c.held + m.held).max(0);
            c.waitlist = (c.waitlist + m.waitlist).max(0);
            snap.doc = Arc::new(StockDoc::of(sku, &snap.counts));
        }
    }

    /// This instance changed `sku` in a way it cannot express as a delta:
    /// the next request re-reads it (single flight as ever).
    pub(super) fn stock_changed(&self, sku: &Sku) {
        if let Ok(mut docs) = self.stock_docs.lock() {
            if let Some(snap) = docs.get_mut(sku) {
                snap.changes += 1;
                snap.period.lapse();
            }
        }
    }

    /// The SKU was (re)loaded through this instance: drop what is known of
    /// it, so the next request reads it, and let no read begun before count.
    pub(super) fn forget_stock(&self, sku: &Sku) {
        if let Ok(mut docs) = self.stock_docs.lock() {
            self.stock_generation.fetch_add(1, Ordering::SeqCst);
            docs.remove(sku);
        }
        if let Ok(mut absent) = self.absent.lock() {
            absent.remove(sku);
        }
    }

    /// Snapshots and absent names held now (bounded by [`MAX_DOCS`] and
    /// [`MAX_ABSENT`]).
    pub fn stock_cache_len(&self) -> (usize, usize) {
        (
            self.stock_docs.lock().map(|d| d.len()).unwrap_or(0),
            self.absent.lock().map(|a| a.len()).unwrap_or(0),
        )
    }
}

/// The settings of the snapshot: (period, grace), the grace as the sold-out
/// mark's: the re-read's Redis round trips at their timeout, and never less
/// than one period.
pub(super) fn timing(stock_cache_ms: u64, redis_timeout: Duration) -> (Duration, Duration) {
    let period = Duration::from_millis(stock_cache_ms);
    (period, period.max(2 * redis_timeout))
}

pub(super) type Docs = FastMap<Sku, Snapshot>;
pub(super) type Absent = FastMap<Sku, Instant>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tag_follows_the_content_and_nothing_else() {
        let sku = Sku::parse("tee").unwrap();
        let c = Counts {
            available: 5,
            held: 1,
            sold: 0,
            shards: 4,
            waitlist: 0,
            sale: None,
        };
        let a = StockDoc::of(&sku, &c);
        assert_eq!(
            a.body.as_ref(),
            br#"{"sku":"tee","available":5,"held":1,"sold":0,"shards":4,"waitlist":0}"#
        );
        assert_eq!(a, StockDoc::of(&sku, &c));
        let b = StockDoc::of(
            &sku,
            &Counts {
                available: 4,
                ..c.clone()
            },
        );
        assert_ne!(a.etag, b.etag);
        assert!(a.etag.starts_with('"') && a.etag.ends_with('"') && a.etag.len() == 18);
    }
}
