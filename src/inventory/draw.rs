//! The fair draw of a SKU's pre-queue: commit, close, reveal, order
//! (docs/fair-draw.md). The arithmetic is `crate::fairness`'s; this file
//! keeps it in Redis exactly once.
//!
//! **Commit.** Loading a SKU with `opens_at` draws a seed once
//! (`fg:{wl:SKU}:seed`, `SET NX`: a forced reload keeps it) and publishes
//! its SHA-256 in the SKU's meta (`commitment`), before any ticket can
//! exist. No API reads the seed key; the draw copies the seed into the
//! draw's state only when it reveals it.
//!
//! **Close, order, reveal.** From `opens_at` on (the Redis clock), any
//! instance's promoter runs [`Inventory::draw_if_due`]: `wl_draw.lua close`
//! freezes the list of pre-queued tickets (atomically with joins: a join is
//! in the list or refused, `lua/wl_join.lua`), the service orders it by the
//! rule, and `wl_draw.lua apply` makes the tickets `waiting` in that order at
//! the head of the queue, in chunks, then marks the draw `drawn` and reveals
//! the seed and the digest. Every step is idempotent and the order is a pure
//! function of the frozen list and the seed, both in Redis: several
//! instances drawing at once, or one that dies half-way (the failpoints
//! `draw_after_close`, `draw_mid_apply`), give the same order, applied once.

use std::sync::Arc;
use std::time::Instant;

use fred::interfaces::{HashesInterface, KeysInterface};
use fred::types::SetOptions;

use super::keys::WaitKeys;
use super::replies::{array, at, int, text};
use super::{ms_to_rfc3339, Inventory, InventoryError, SkuMeta};
use crate::domain::Sku;
use crate::fairness::{self, DrawDocument, Seed};

/// Most tickets one `wl_draw.lua apply` call makes waiting: a pre-queue of
/// `waitlist_capacity` (10,000 by default) is applied in calls of a few
/// milliseconds each, never one long script.
const APPLY_CHUNK: usize = 1_000;

/// A draw document with its JSON, encoded once: a drawn document never
/// changes, and one of a full pre-queue is ~450 kB (10,000 ids twice), so a
/// crowd polling `/draw` after the opening costs a copy of an `Arc`, not an
/// encoding per GET.
pub struct DrawBody {
    pub doc: DrawDocument,
    pub json: bytes::Bytes,
    /// `drawn`: final, cacheable for good by a CDN or a browser.
    pub fin: bool,
}

impl DrawBody {
    fn new(doc: DrawDocument) -> Result<DrawBody, InventoryError> {
        let json = serde_json::to_vec(&doc)
            .map_err(|e| InventoryError::Protocol(format!("draw document: {e}")))?;
        Ok(DrawBody {
            fin: doc.status == "drawn",
            doc,
            json: bytes::Bytes::from(json),
        })
    }
}

/// `FLASHGATE_FAILPOINT`: abort the process at a named point of the draw
/// (tests of a crash mid-draw; off unless the variable names the point).
fn failpoint(name: &str) {
    if std::env::var("FLASHGATE_FAILPOINT").is_ok_and(|v| v == name) {
        tracing::error!(failpoint = name, "FLASHGATE_FAILPOINT: aborting");
        std::process::abort();
    }
}

impl Inventory {
    /// The SKU's draw seed: made once (`SET NX GET`), the same ever after.
    pub(super) async fn draw_seed(&self, sku: &Sku) -> Result<Seed, InventoryError> {
        let key = WaitKeys::new(sku).seed();
        let fresh = Seed::generate();
        let earlier: Option<String> = self
            .nodes
            .client_for_key(&key)
            .set(&key, fresh.to_hex(), None, Some(SetOptions::NX), true)
            .await
            .map_err(|e| self.err(e))?;
        match earlier {
            Some(hex) => Seed::from_hex(&hex).map_err(InventoryError::Protocol),
            None => Ok(fresh),
        }
    }

    /// The seed as the draw revealed it; None until then.
    pub(super) async fn revealed_seed(&self, sku: &Sku) -> Result<Option<String>, InventoryError> {
        let key = WaitKeys::new(sku).draw();
        let f: Vec<Option<String>> = self
            .nodes
            .client_for_key(&key)
            .hmget(&key, vec!["status", "seed"])
            .await
            .map_err(|e| self.err(e))?;
        Ok(match (f.first(), f.get(1)) {
            (Some(Some(s)), Some(Some(seed))) if s == "drawn" => Some(seed.clone()),
            _ => None,
        })
    }

    /// Run the SKU's draw if `opens_at` has come and it is not applied yet
    /// (see the module docs). Ok(true) once the draw is applied (now or
    /// before; a SKU without `opens_at` has none to wait for), Ok(false)
    /// before `opens_at`.
    pub async fn draw_if_due(&self, meta: &SkuMeta) -> Result<bool, InventoryError> {
        let Some(opens) = meta.window.opens_at_ms else {
            return Ok(true);
        };
        if self.drawn_known(&meta.sku) {
            return Ok(true);
        }
        let wk = WaitKeys::new(&meta.sku);
        let keys = vec![wk.queue(), wk.stream(), wk.draw()];
        let reply = array(
            self.run(
                &self.scripts.wl_draw,
                keys.clone(),
                vec!["close".into(), opens.to_string()],
            )
            .await?,
        )?;
        match text(at(&reply, 0)?)?.as_str() {
            "early" => return Ok(false),
            "drawn" => {
                self.note_drawn(&meta.sku);
                return Ok(true);
            }
            "closed" => {}
            other => {
                return Err(InventoryError::Protocol(format!(
                    "wl_draw close replied {other:?}"
                )))
            }
        }
        let started = Instant::now();
        let closed_at = int(at(&reply, 2)?).unwrap_or(0);
        let tickets: Vec<String> = text(at(&reply, 1)?)?
            .split('\n')
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect();
        failpoint("draw_after_close");
        // The seed was made before the meta that names the SKU's opens_at;
        // `SET NX GET` reads it (and only a SKU whose meta was restored by
        // reconcile after Redis lost both gets a seed here: one, whoever
        // draws, but committed to nowhere — its draw document is a 404).
        let seed = self.draw_seed(&meta.sku).await?;
        let digest = fairness::prequeue_digest(&tickets);
        let order = fairness::draw_order(&seed, &tickets);
        let total = order.len().to_string();
        let seed_hex = seed.to_hex();
        let mut first = 0usize;
        // each round applies a chunk or learns where another drawer got to
        for _ in 0..(order.len() / APPLY_CHUNK + 2) * 4 {
            let chunk = &order[first.min(order.len())..(first + APPLY_CHUNK).min(order.len())];
            let mut args = vec![
                "apply".to_owned(),
                first.to_string(),
                total.clone(),
                wk.ticket_prefix(),
                digest.clone(),
                seed_hex.clone(),
            ];
            args.extend(chunk.iter().cloned());
            let reply = array(self.run(&self.scripts.wl_draw, keys.clone(), args).await?)?;
            match text(at(&reply, 0)?)?.as_str() {
                "drawn" => {
                    self.note_drawn(&meta.sku);
                    self.metrics.draw_done(started.elapsed(), order.len());
                    tracing::info!(sku = %meta.sku, tickets = order.len(), closed_at = %ms_to_rfc3339(closed_at), "pre-queue drawn; seed revealed");
                    // the drawn tickets are in the stream: promote them now
                    self.returned.notify_one();
                    self.stock_changed(&meta.sku);
                    return Ok(true);
                }
                "applied" | "at" => {
                    let n = int(at(&reply, 1)?)?;
                    first = usize::try_from(n).unwrap_or(0);
                    failpoint("draw_mid_apply");
                }
                other => {
                    return Err(InventoryError::Protocol(format!(
                        "wl_draw apply replied {other:?}"
                    )))
                }
            }
        }
        Err(InventoryError::Protocol(format!(
            "{}: the draw did not finish applying",
            meta.sku
        )))
    }

    fn drawn_known(&self, sku: &Sku) -> bool {
        self.drawn
            .read()
            .map(|d| d.contains_key(sku))
            .unwrap_or(false)
    }

    fn note_drawn(&self, sku: &Sku) {
        if let Ok(mut d) = self.drawn.write() {
            // bounded by the SKUs loaded with opens_at (a key per SKU)
            d.entry(sku.clone()).or_insert(None);
        }
    }

    /// `GET /v1/skus/{sku}/draw`: None for a SKU without `opens_at`. Once
    /// drawn the document never changes: kept per instance.
    pub async fn draw_document(&self, sku: &Sku) -> Result<Option<Arc<DrawBody>>, InventoryError> {
        if let Ok(d) = self.drawn.read() {
            if let Some(Some(doc)) = d.get(sku) {
                return Ok(Some(doc.clone()));
            }
        }
        let meta = self.meta_of(sku).await?;
        let (Some(opens), Some(commitment)) = (meta.window.opens_at_ms, meta.commitment.clone())
        else {
            return Ok(None);
        };
        let key = WaitKeys::new(sku).draw();
        let f: Vec<Option<String>> = self
            .nodes
            .client_for_key(&key)
            .hmget(&key, vec!["status", "tickets", "seed", "opens_at"])
            .await
            .map_err(|e| self.err(e))?;
        let field = |i: usize| f.get(i).cloned().flatten();
        let status = field(0).unwrap_or_else(|| "open".into());
        let mut tickets: Vec<String> = match status.as_str() {
            "open" => Vec::new(),
            _ => field(1)
                .unwrap_or_default()
                .split('\n')
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect(),
        };
        tickets.sort_unstable();
        let digest = (status != "open").then(|| fairness::prequeue_digest(&tickets));
        let seed = match (status.as_str(), field(2)) {
            ("drawn", Some(s)) => Some(s),
            _ => None,
        };
        let order = match &seed {
            Some(s) => fairness::draw_order(
                &Seed::from_hex(s).map_err(InventoryError::Protocol)?,
                &tickets,
            ),
            None => Vec::new(),
        };
        // once closed, the opens_at the close was judged by (not this
        // instance's cached meta, which a reload may have moved)
        let opens = field(3).and_then(|o| o.parse().ok()).unwrap_or(opens);
        let doc = Arc::new(DrawBody::new(DrawDocument {
            sku: sku.to_string(),
            status: status.clone(),
            opens_at: ms_to_rfc3339(opens),
            fairness_commitment: commitment,
            prequeue_digest: digest,
            fairness_seed: seed,
            tickets,
            order,
        })?);
        if doc.fin {
            if let Ok(mut d) = self.drawn.write() {
                d.insert(sku.clone(), Some(doc.clone()));
            }
        }
        Ok(Some(doc))
    }
}
