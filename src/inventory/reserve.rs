//! The reserve walk: a request's claim (the first request with a key fixes
//! its body, its shard count and the shards it leaves out), then one
//! `lua/reserve.lua` step per shard in the key's fixed order, pulling units
//! from donor shards before the last step says "sold out". Why this gives at
//! most one reservation per key is the module doc of `inventory`.

use fred::types::Value;

use super::batch::{self, ReserveReply};
use super::replies::text;
use super::sold_out::FastPath;
use super::ticket::Ticket;
use super::InventoryError;
use super::{keys, placement, stock_doc};
use super::{ms_to_rfc3339, Inventory, Reservation, SkuMeta, MAX_SHARDS};
use crate::domain::{Qty, ReservationId, ScopedKey, Sku, Tenant, UserId};

/// What a reserve request came to. Outcomes, not errors: each is a normal
/// answer of a sale.
#[derive(Debug)]
pub enum ReserveOutcome {
    /// A new hold (201).
    Held(Reservation),
    /// The key already holds this reservation; the first answer again (200).
    Replayed(Reservation),
    /// Every shard is empty (409).
    SoldOut,
    /// Sold out, and the buyer joined the waitlist (202).
    Waitlisted(Ticket),
    /// The key already joined the waitlist: its ticket as it is now (200).
    WaitlistReplayed(Ticket),
}

/// A parsed, validated reserve request.
#[derive(Clone, Debug)]
pub struct ReserveRequest {
    pub sku: Sku,
    pub qty: Qty,
    pub user: UserId,
    /// The key in its owner's namespace: the caller's, or the promoter's.
    pub key: ScopedKey,
    /// Join the SKU's waitlist when it is sold out.
    pub waitlist: bool,
}

impl ReserveRequest {
    /// What makes two requests with one key "the same request":
    /// `<qty>:<user>`, or `<qty>;w:<user>` with `waitlist`. Unambiguous:
    /// qty is digits only, so the character after them tells the two apart
    /// and the rest is the user id, whatever it holds (an earlier
    /// `<qty>:[w:]<user>` gave user `w:bob` and user `bob` with `waitlist`
    /// one fingerprint). Plain requests — the promoter's among them — keep
    /// the earlier form, so only `waitlist` keys in flight across an upgrade
    /// see a change (README, "Upgrading").
    pub(super) fn fingerprint(&self) -> String {
        let sep = if self.waitlist { ";w:" } else { ":" };
        let mut qty = itoa::Buffer::new();
        [qty.format(self.qty.get()), sep, self.user.as_str()].concat()
    }
}

/// One shard's verdict on a reserve.
pub(super) enum Step {
    Held(Reservation),
    Replay(Reservation),
    WalkOn(i64),
    Mismatch,
    /// The claim made in this call found another body (the earlier one).
    Claimed(String),
    Dry(i64),
    Unloaded,
    /// The sale window has not opened: ms left.
    NotOpen(i64),
    Closed,
}

/// The claim record's body: the request's `<sku>\n<fingerprint>`, the
/// shard count its walks use (`\nk:4`), then the shards its walks leave
/// out, if any (`\nx:1,3`), then the key's token (`\nt:<32 hex>`, data
/// layout 3): every walk of the key uses it, so the hold it made on shard s
/// is `SKU.s.<token>` and its record is the shard's verdict for the key (no
/// `R` verdict key; `lua/reserve.lua`). (An instance older than the count,
/// or than the token, reads such a body as another request's: 422, never a
/// walk over the wrong shards or a second hold.)
pub(super) fn claim_body(
    request: &str,
    shards: u16,
    left_out: &[u16],
    token: &uuid::Uuid,
) -> String {
    // (pushed piece by piece: `format!` was ≈ 870 instructions per hold)
    let mut n = itoa::Buffer::new();
    let mut body = String::with_capacity(request.len() + 44 + 6 * left_out.len());
    body.push_str(request);
    body.push_str("\nk:");
    body.push_str(n.format(shards));
    for (i, s) in left_out.iter().enumerate() {
        body.push_str(if i == 0 { "\nx:" } else { "," });
        body.push_str(n.format(*s));
    }
    body.push_str("\nt:");
    let mut hex = [0u8; 32];
    body.push_str(token.simple().encode_lower(&mut hex));
    body
}

/// `reserve.lua`'s qty argument: the units, `;<units>` for a waitlist
/// join. One to nine units, nearly every request, without an allocation.
fn qty_arg(qty: u32, waitlist: bool) -> std::borrow::Cow<'static, str> {
    const PLAIN: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    match (waitlist, PLAIN.get(qty as usize)) {
        (false, Some(s)) => std::borrow::Cow::Borrowed(s),
        (false, None) => itoa::Buffer::new().format(qty).to_owned().into(),
        (true, _) => [";", itoa::Buffer::new().format(qty)].concat().into(),
    }
}

/// The token a walk names its hold with (`SKU.s.<token>`), and how a
/// replay is told from this request's own resent step.
#[derive(Clone, Copy, Debug)]
pub(super) struct WalkToken {
    id: uuid::Uuid,
    /// The token came from an earlier request's claim: a hold found under
    /// it is that request's (a replay, 200), not this one's own.
    earlier: bool,
    /// The key's claim carries no token (the waitlist promoter's keys, which
    /// have no claim; a claim of data layout 2): its holds write the `R`
    /// verdict, which every walk of such a key reads.
    verdicts: bool,
    /// This request's claim was new when `claim.lua` made it, apart from
    /// the walk (Redis Cluster): no shard had a verdict for the key then,
    /// so a step that holds need not read them (`lua/reserve.lua`, claim
    /// body `!`; its hold is written with NX, which a duplicate's or a
    /// resent step's verdict fails, and every other answer reads first).
    claimed_apart: bool,
}

impl WalkToken {
    /// A token of this request's own claim.
    pub(super) fn own(id: uuid::Uuid) -> WalkToken {
        WalkToken {
            id,
            earlier: false,
            verdicts: false,
            claimed_apart: false,
        }
    }

    /// A token of this request's own claim, just made new by `claim.lua`.
    fn claimed_apart(id: uuid::Uuid) -> WalkToken {
        WalkToken {
            claimed_apart: true,
            ..WalkToken::own(id)
        }
    }

    /// A walk whose key has no token: a fresh one, and `R` verdicts.
    pub(super) fn with_verdicts() -> WalkToken {
        WalkToken {
            id: uuid::Uuid::new_v4(),
            earlier: false,
            verdicts: true,
            claimed_apart: false,
        }
    }

    /// The token of an earlier claim with this request's body.
    fn of_claim(claim: &ClaimInfo) -> WalkToken {
        match claim.token {
            Some(id) => WalkToken {
                id,
                earlier: true,
                verdicts: false,
                claimed_apart: false,
            },
            None => WalkToken::with_verdicts(),
        }
    }
}

/// What an earlier claim with the same request body fixed.
#[derive(Debug, PartialEq)]
pub(super) struct ClaimInfo {
    /// The key's shard count; None in a claim written before it was recorded
    /// (its walks used the SKU's count of the moment).
    shards: Option<u16>,
    left_out: Vec<u16>,
    /// The key's token; None in a claim of data layout 2.
    token: Option<uuid::Uuid>,
}

/// The earlier claim's count and left-out shards, or None when the earlier
/// body is another request's (a reused key).
pub(super) fn parse_claim(earlier: &str, request: &str) -> Option<ClaimInfo> {
    // (the body only: on one server a claim may carry its hold's record
    // after a NUL, lua/lib.lua)
    let body = earlier.split('\0').next().unwrap_or(earlier);
    let mut rest = body.strip_prefix(request)?;
    let mut shards = None;
    if let Some(r) = rest.strip_prefix("\nk:") {
        let end = r.find('\n').unwrap_or(r.len());
        shards = Some(
            r[..end]
                .parse()
                .ok()
                .filter(|k| (1..=MAX_SHARDS).contains(k))?,
        );
        rest = &r[end..];
    }
    let mut left_out = Vec::new();
    if let Some(r) = rest.strip_prefix("\nx:") {
        let end = r.find('\n').unwrap_or(r.len());
        left_out = r[..end]
            .split(',')
            .map(|s| s.parse().ok())
            .collect::<Option<Vec<u16>>>()?;
        rest = &r[end..];
    }
    let mut token = None;
    if let Some(t) = rest.strip_prefix("\nt:") {
        if t.len() != 32 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        token = Some(uuid::Uuid::try_parse(t).ok()?);
        rest = "";
    }
    if !rest.is_empty() {
        return None;
    }
    Some(ClaimInfo {
        shards,
        left_out,
        token,
    })
}

/// A SKU found not open by a walk: `sale_not_open` from memory until
/// `until`. The walk's call was sent at `sent`, and Redis judged the window
/// after that, so the opening is no earlier than `sent + left` on this
/// instance's clock: memory answers only before it, less 0.1 % (clock rate
/// drift), and for at most [`NOT_OPEN_MEMORY`], so a reload that moves
/// `opens_at` earlier reaches this instance as soon as its meta does.
#[derive(Clone, Copy, Debug)]
pub(super) struct NotOpenMark {
    until: std::time::Instant,
    opens: std::time::Instant,
    opens_at_ms: i64,
}

/// The longest a "not open" answer is kept in memory: the meta cache's TTL.
const NOT_OPEN_MEMORY: std::time::Duration = super::layout::META_TTL;

impl Inventory {
    /// The "not open" answer from memory, if this instance has one for `sku`.
    fn not_open_answer(&self, sku: &Sku) -> Option<InventoryError> {
        let now = std::time::Instant::now();
        let mut marks = self.not_open.lock().ok()?;
        let m = *marks.get(sku)?;
        if now >= m.until {
            marks.remove(sku);
            return None;
        }
        let left = m.opens.saturating_duration_since(now).as_millis();
        Some(InventoryError::SaleNotOpen {
            opens_at_ms: m.opens_at_ms,
            left_ms: i64::try_from(left).unwrap_or(i64::MAX).max(1),
        })
    }

    /// A preload through this instance may have moved the window.
    pub(super) fn forget_not_open(&self, sku: &Sku) {
        if let Ok(mut marks) = self.not_open.lock() {
            marks.remove(sku);
        }
    }

    /// Keep a walk's "not open" (see [`NotOpenMark`]).
    fn not_open_mark(&self, sku: &Sku, sent: std::time::Instant, opens_at_ms: i64, left_ms: i64) {
        let left = std::time::Duration::from_millis(u64::try_from(left_ms).unwrap_or(0));
        let keep = (left - left / 1000).min(NOT_OPEN_MEMORY);
        if keep.is_zero() {
            return;
        }
        if let Ok(mut marks) = self.not_open.lock() {
            // one entry per SKU a walk found loaded: bounded by the catalogue
            marks.insert(
                sku.clone(),
                NotOpenMark {
                    until: sent + keep,
                    opens: sent + left,
                    opens_at_ms,
                },
            );
        }
    }

    pub async fn reserve(&self, req: &ReserveRequest) -> Result<ReserveOutcome, InventoryError> {
        self.reserve_as(req, None).await
    }

    /// [`Inventory::reserve`], the key's holds named with `token` when the
    /// key has no claim yet (a cart's line: the token follows from the cart
    /// and the line, so whoever gives the line back can name its hold
    /// without reading the claim; `cart.rs`). None: a fresh random token.
    pub(super) async fn reserve_as(
        &self,
        req: &ReserveRequest,
        token: Option<uuid::Uuid>,
    ) -> Result<ReserveOutcome, InventoryError> {
        // Redis's data layout is one this version does not know: refuse
        // (503) rather than write beside it (`check_data_layout`)
        if let Some(why) = self.layout_refusal() {
            return Err(InventoryError::Unsuitable(why));
        }
        // The sold-out fast path: refuse from memory, no Redis command. The
        // keys that won a unit are known, so their retries still walk (and
        // are replayed). Only a preloaded SKU is ever marked (a walk found
        // its shards empty), and none is ever removed, so the mark comes
        // before the layout. The walk's future is large (the batches, the
        // claim, the shards) and a sold-out answer need not build it: it
        // lives on the heap, made only when there is something to walk
        // (its copy was ≈ 4 % of a sold-out answer's instructions).
        let waitlist_full = match self.fast_path(&req.sku, &req.key) {
            FastPath::SoldOut { waitlist_full } => Some(waitlist_full),
            // (rare, once per re-check period: boxed, so the future every
            // reserve builds and moves stays small)
            FastPath::Probe => match Box::pin(self.probe(&req.sku)).await {
                Ok(still) => still,
                Err(e) => {
                    // the request walks; the mark is re-made by a walk
                    tracing::debug!(error = %e, sku = %req.sku, "sold-out probe failed");
                    None
                }
            },
            FastPath::Walk => None,
        };
        // Before opens_at: a plain reserve is refused from memory once a walk
        // has seen the window shut (a pre-queue join still walks)
        if !req.waitlist {
            if let Some(e) = self.not_open_answer(&req.sku) {
                return Err(e);
            }
        }
        if let Some(full) = waitlist_full {
            if !req.waitlist {
                return Ok(ReserveOutcome::SoldOut);
            }
            // a key that joined already walks to its ticket (a replay)
            if full && !Box::pin(self.joined_waitlist(&req.sku, &req.key)).await? {
                return Err(InventoryError::WaitlistFull);
            }
        }
        Box::pin(self.reserve_walk(req, token)).await
    }

    /// [`Inventory::reserve`] past the sold-out fast path.
    pub(super) async fn reserve_walk(
        &self,
        req: &ReserveRequest,
        token: Option<uuid::Uuid>,
    ) -> Result<ReserveOutcome, InventoryError> {
        let meta = self.meta_of(&req.sku).await?;
        let fp = req.fingerprint();

        // The key's first request fixes its body, across SKUs too: claim.lua
        // (SET NX GET, batched per bucket) answers the earlier body if any.
        // The first request also fixes the shards the key's walks leave out:
        // those whose master is known to be down right now (see the module
        // docs: sound because no request with this key ever reaches them).
        let mine = [req.sku.as_str(), "\n", &fp].concat();
        let claim = self.claim_of(&req.key)?;
        // On one Redis server no master can be down and a script may touch
        // any slot: the claim rides in the walk's first reserve.lua call
        // (one round trip instead of two; bench/README.md), and a hold that
        // call makes rides in the claim (data layout 6, lua/lib.lua): its
        // token names the claim. Not with a purchase cap, which is counted
        // between the claim and the walk, nor for a cart's line, whose
        // token is the line's (cart.rs). The claim also fixes the shard
        // count the key walks for good (see `walk`): the SKU's count now,
        // as this instance knows it.
        let (shards, left_out, token, in_walk) =
            if !self.nodes.per_master() && meta.max_per_user == 0 && token.is_none() {
                let token = claim.token();
                let body = claim_body(&mine, meta.shards, &[], &token);
                (
                    meta.shards,
                    Vec::new(),
                    WalkToken::own(token),
                    Some(batch::Claim {
                        record: claim.record,
                        body,
                    }),
                )
            } else {
                let token = token.unwrap_or_else(uuid::Uuid::new_v4);
                let down = self.shards_known_down(&meta, 0..meta.shards);
                let body = claim_body(&mine, meta.shards, &down, &token);
                let earlier = Box::pin(self.claims.submit(
                    claim.bucket,
                    batch::Claim {
                        record: claim.record,
                        body,
                    },
                ))
                .await?;
                let (shards, left_out, token) = match earlier {
                    Value::Null => (meta.shards, down, WalkToken::claimed_apart(token)),
                    v => match parse_claim(&text(&v)?, &mine) {
                        Some(c) => (
                            c.shards.unwrap_or(meta.shards),
                            c.left_out.clone(),
                            WalkToken::of_claim(&c),
                        ),
                        None => return Err(InventoryError::IdempotencyKeyReused),
                    },
                };
                (shards, left_out, token, None)
            };

        // The purchase cap: counted before the walk, given back when the walk
        // definitely failed. An unknown outcome (timeout) keeps the count: too
        // tight rather than too loose.
        let mut counted_now = false;
        if meta.max_per_user > 0 {
            if req.qty.get() > meta.max_per_user {
                return Err(InventoryError::PurchaseCap);
            }
            match Box::pin(self.cap_take(&meta, req)).await? {
                0 => return Err(InventoryError::PurchaseCap),
                1 => counted_now = true,
                _ => {}
            }
        }
        let in_walk = in_walk.map(|c| (mine.as_str(), c));
        let sent = std::time::Instant::now();
        let mut result = self
            .walk(req, &meta, true, shards, &left_out, token, in_walk)
            .await;
        if let Err(InventoryError::SaleNotOpen {
            opens_at_ms,
            left_ms,
        }) = &result
        {
            self.not_open_mark(&req.sku, sent, *opens_at_ms, *left_ms);
        }
        if let Ok(ReserveOutcome::Held(r)) = &result {
            // a probe (or anyone) found stock: the SKU is open again
            self.clear_sold_out(&req.sku);
            let q = i64::from(r.qty);
            self.stock_moved(
                &req.sku,
                stock_doc::Moved {
                    available: -q,
                    held: q,
                    ..Default::default()
                },
            );
        }
        // The cap's count for this key is given back whenever the key
        // definitely holds no live unit, whoever counted it: this request
        // (`counted_now`) or an earlier attempt whose outcome was unknown
        // (cap_take answered "already counted"). A sold-out walk is definite:
        // every shard of the key's walk holds its walk-on verdict, so no
        // request with the key can ever hold a unit (until the key expires).
        let capped = meta.max_per_user > 0;
        if req.waitlist && matches!(result, Err(InventoryError::SaleNotOpen { .. })) {
            // before opens_at: the pre-queue (wl_join.lua decides by the
            // Redis clock; the cap is counted when the ticket is promoted)
            if counted_now {
                Box::pin(self.cap_give(&meta, req.user.as_str(), req.key.as_str())).await?;
            }
            result = Box::pin(self.join_waitlist(&meta, req, &fp)).await;
        } else if req.waitlist && matches!(result, Ok(ReserveOutcome::SoldOut)) {
            if capped {
                // the cap is counted again when the ticket is promoted
                Box::pin(self.cap_give(&meta, req.user.as_str(), req.key.as_str())).await?;
            }
            result = Box::pin(self.join_waitlist(&meta, req, &fp)).await;
        } else if capped {
            let give = match &result {
                Ok(ReserveOutcome::SoldOut) => true,
                // (a mismatch: the count under this key is the other request's)
                Err(e) if e.is_refusal() => counted_now,
                // a replay of a hold that ended unsold: the cap_take above
                // counted it again (or an earlier give-back failed)
                Ok(ReserveOutcome::Replayed(r)) => Box::pin(self.ended_unsold(r)).await,
                _ => false,
            };
            if give {
                if let Err(e) =
                    Box::pin(self.cap_give(&meta, req.user.as_str(), req.key.as_str())).await
                {
                    tracing::warn!(error = %e, sku = %req.sku, "could not give back a purchase-cap count; the buyer stays capped until reconcile");
                }
            }
        }
        if self.settings.replica_ack == 0 {
            return result;
        }
        Box::pin(self.replicated(result, &meta)).await
    }

    /// Which of `shards` live on a master this instance knows is down right
    /// now (its client has no connection). One Redis: none (no slot is
    /// hashed).
    fn shards_known_down(&self, meta: &SkuMeta, shards: impl Iterator<Item = u16>) -> Vec<u16> {
        if !self.nodes.per_master() {
            return Vec::new();
        }
        shards
            .filter(|&s| match meta.tags.get(usize::from(s)) {
                Some(t) => self.nodes.known_down(placement::slot_of(t)),
                None => false,
            })
            .collect()
    }

    /// Did the reservation a replay answered end without a sale (released,
    /// expired, or its record gone)? Unknown (Redis unreachable) counts as
    /// no: the cap stays counted, too tight rather than too loose.
    pub(super) async fn ended_unsold(&self, r: &Reservation) -> bool {
        let Ok(rid) = ReservationId::parse(&r.reservation_id) else {
            return false;
        };
        // the replay answered the caller's own key: its reservation is the
        // caller's, read here without an owner check
        match self.get(&rid, &Tenant::Operator).await {
            Ok(now) => now.status == "released" || now.status == "expired",
            Err(InventoryError::ReservationNotFound) => true,
            Err(_) => false,
        }
    }

    /// Walk the shards for `req` (see the module docs).
    /// `shards`: the key's shard count, fixed by its claim — the SKU's count
    /// at the key's first request. The key walks shards `0..shards` only,
    /// starting at `hash % shards`, whatever the SKU's count is now: a
    /// forced preload that adds shards changes neither the start nor the
    /// order of a key that was already seen, so its sticky verdicts stay
    /// first in its walk (a holder is replayed, a sold-out key stays sold
    /// out); the new shards serve keys first seen after it. An instance
    /// still caching the older, smaller count (`META_TTL`) reads the
    /// layout again when a key's claim names more shards than it knows.
    /// `left_out`: shards this key's walks never visit (its claim fixed
    /// them); a walk that meets no unit on the others cannot say "sold out".
    /// `token`: what the walk's holds are named with (see [`WalkToken`]).
    /// `claim`: the request body (`<sku>\n<fingerprint>`) and the key's
    /// claim, to be made in the first step's call (one Redis server only).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn walk(
        &self,
        req: &ReserveRequest,
        meta: &SkuMeta,
        gate: bool,
        shards: u16,
        left_out: &[u16],
        token: WalkToken,
        claim: Option<(&str, batch::Claim)>,
    ) -> Result<ReserveOutcome, InventoryError> {
        let (mine, mut claim) = match claim {
            Some((mine, c)) => (mine, Some(c)),
            None => ("", None),
        };
        let fresh;
        let meta = if shards > meta.shards {
            fresh = Box::pin(self.meta_past_cache(&req.sku)).await?;
            if fresh.shards < shards {
                return Err(InventoryError::Protocol(format!(
                    "{} has {} shards, a claim names {shards}",
                    req.sku, fresh.shards
                )));
            }
            &*fresh
        } else {
            meta
        };
        let k = shards;
        let returns_seen = self.returns_seen.load(std::sync::atomic::Ordering::SeqCst);
        let start = (req.key.stable_hash() % u64::from(k)) as u16;
        let order: Vec<u16> = (0..k)
            .map(|i| (start + i) % k)
            .filter(|s| !left_out.contains(s))
            .collect();
        if order.is_empty() {
            return Err(InventoryError::Unavailable(
                "every shard of the SKU was unreachable at this key's first request".into(),
            ));
        }
        // shards seen during this walk with some (but too few) units: donors
        let mut donors: Vec<(u16, i64)> = Vec::new();
        let mut all_unloaded = true;
        let mut any_unloaded = false;
        for (i, &s) in order.iter().enumerate() {
            let last = i + 1 == order.len();
            let mark = !last || donors.is_empty();
            let mut step = self
                .reserve_on(req, meta, s, token, mark, gate, claim.take())
                .await?;
            if last && !mark {
                if let Step::Dry(have) = step {
                    let need = i64::from(req.qty.get()) - have;
                    Box::pin(self.pull(meta, s, need, &donors)).await?;
                    step = Box::pin(self.reserve_on(req, meta, s, token, true, gate, None)).await?;
                }
            }
            match step {
                Step::Held(r) => return Ok(ReserveOutcome::Held(r)),
                Step::Replay(r) => return Ok(ReserveOutcome::Replayed(r)),
                Step::Mismatch => return Err(InventoryError::IdempotencyKeyReused),
                // the first step's claim met an earlier body: nothing was
                // done; the same request with shards left out (written on a
                // cluster) walks again without them, another one is refused
                Step::Claimed(earlier) => {
                    return match parse_claim(&earlier, mine) {
                        None => Err(InventoryError::IdempotencyKeyReused),
                        Some(c) => {
                            let k = c.shards.unwrap_or(meta.shards);
                            let token = WalkToken::of_claim(&c);
                            Box::pin(self.walk(req, meta, gate, k, &c.left_out, token, None)).await
                        }
                    };
                }
                Step::WalkOn(avail) | Step::Dry(avail) => {
                    all_unloaded = false;
                    if avail > 0 {
                        donors.push((s, avail));
                    }
                }
                Step::Unloaded => any_unloaded = true,
                // the window is the SKU's, the same on every shard: no
                // verdict was written, nothing is marked (not "sold out")
                Step::NotOpen(left_ms) => {
                    return Err(InventoryError::SaleNotOpen {
                        opens_at_ms: meta.window.opens_at_ms.unwrap_or(0),
                        left_ms,
                    })
                }
                Step::Closed => return Err(InventoryError::SaleClosed),
            }
        }
        if all_unloaded && left_out.is_empty() {
            return Err(InventoryError::UnknownSku(req.sku.to_string()));
        }
        if !left_out.is_empty() {
            // Every shard this key walks now holds its walk-on verdict for it
            // (this walk met or left one on each; none was unloaded), so no
            // request with the key can ever hold a unit there. Once the
            // left-out shards' masters are back, the key walks every shard:
            // the verdicts it meets first are those same ones, and the
            // left-out shards come in the walk's fixed order and are never
            // skipped, so two such walks meet on the first left-out shard with
            // a unit (one holds, the other replays) and a left-out walk, which
            // stops before them, can hold nowhere. The key gets a definite
            // answer instead of a 503 on every retry until it expires
            // (docs/cluster.md).
            if !any_unloaded
                && self
                    .shards_known_down(meta, left_out.iter().copied())
                    .is_empty()
            {
                return Box::pin(self.walk(req, meta, gate, k, &[], token, None)).await;
            }
            // the left-out shards may hold units: no "sold out" (nor a mark)
            return Err(InventoryError::Unavailable(format!(
                "shards {left_out:?} were unreachable at this key's first request and the others have no unit for it"
            )));
        }
        if donors.is_empty() && k == meta.shards {
            // every shard reported no unit at all (not just too few, and not
            // just a sticky verdict of this key): the SKU is empty right now
            // (a key walking a count from before shards were added saw only
            // some of them: no mark)
            if let Err(e) = Box::pin(self.mark_sold_out(meta, returns_seen)).await {
                // the answer stands; the next request simply walks again
                tracing::debug!(error = %e, sku = %req.sku, "could not load the sold-out mark");
            }
        }
        Ok(ReserveOutcome::SoldOut)
    }

    // one shard's step of a walk: the walk's request, layout, fingerprint and
    // token, plus the shard and the two switches of reserve.lua
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn reserve_on(
        &self,
        req: &ReserveRequest,
        meta: &SkuMeta,
        shard: u16,
        token: WalkToken,
        mark_walk_on: bool,
        gate: bool,
        claim: Option<batch::Claim>,
    ) -> Result<Step, InventoryError> {
        let rid_s = ReservationId::text_of(&req.sku, shard, &token.id);
        let tag = match meta.tags.get(usize::from(shard)) {
            Some(t) => std::borrow::Cow::Borrowed(t.as_str()),
            None => std::borrow::Cow::Owned(keys::default_tag(&req.sku, shard)),
        };
        let call = batch::ReserveCall {
            key: req.key.as_str().to_owned(),
            rid: rid_s.clone(),
            qty: qty_arg(req.qty.get(), req.waitlist),
            user: req.user.as_str().to_owned(),
            mark_walk_on,
            gate,
            verdict: token.verdicts,
            claimed_apart: token.claimed_apart,
            claim,
            window: meta.window_arg.clone(),
        };
        let view = |id: String, exp: i64| Reservation {
            reservation_id: id,
            sku: req.sku.as_str().to_owned(),
            qty: req.qty.get(),
            user_id: req.user.as_str().to_string(),
            status: "held",
            expires_at: ms_to_rfc3339(exp),
            expires_at_ms: exp,
            token: None,
        };
        Ok(match self.reserver.submit(&tag, call).await? {
            ReserveReply::Held { expires_at_ms } => Step::Held(view(rid_s, expires_at_ms)),
            ReserveReply::Replay {
                rid, expires_at_ms, ..
            } => {
                // our own attempt, resent by the client library after a lost
                // reply (a hold under an earlier request's token is its own)
                if rid == rid_s && !token.earlier {
                    Step::Held(view(rid, expires_at_ms))
                } else {
                    Step::Replay(view(rid, expires_at_ms))
                }
            }
            ReserveReply::WalkOn(avail) => Step::WalkOn(avail),
            ReserveReply::Mismatch => Step::Mismatch,
            ReserveReply::Claimed(earlier) => Step::Claimed(earlier),
            ReserveReply::Dry(avail) => Step::Dry(avail),
            ReserveReply::Unloaded => Step::Unloaded,
            ReserveReply::NotOpen(left) => Step::NotOpen(left),
            ReserveReply::Closed => Step::Closed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::IdempotencyKey;

    #[test]
    fn the_qty_argument_is_the_units_and_a_join_says_so() {
        for q in [1u32, 2, 9, 10, 11, 100, 4_000_000] {
            assert_eq!(qty_arg(q, false), q.to_string());
            assert_eq!(qty_arg(q, true), format!(";{q}"));
        }
    }

    #[test]
    fn fingerprints_tell_every_body_apart() {
        let req = |qty: i64, user: &str, waitlist: bool| ReserveRequest {
            sku: Sku::parse("s").unwrap(),
            qty: Qty::parse(qty, 100).unwrap(),
            user: UserId::parse(user).unwrap(),
            key: ScopedKey::new(&Tenant::Anonymous, &IdempotencyKey::parse("k").unwrap()),
            waitlist,
        };
        let bodies = [
            req(1, "w:bob", false),
            req(1, "bob", true),
            req(1, "bob", false),
            req(1, ";w:bob", false),
            req(11, "bob", false),
            req(1, "1:bob", false),
            req(1, "w:bob", true),
        ];
        let fps: std::collections::HashSet<String> =
            bodies.iter().map(ReserveRequest::fingerprint).collect();
        assert_eq!(fps.len(), bodies.len(), "{fps:?}");
        // plain requests (the promoter's among them) keep the earlier form
        assert_eq!(req(2, "bob", false).fingerprint(), "2:bob");
    }
}

#[cfg(test)]
mod claim_tests {
    use super::*;

    #[test]
    fn a_claim_carries_the_left_out_shards_and_only_the_same_request_matches() {
        let c = |shards, left_out: &[u16]| {
            Some(ClaimInfo {
                shards,
                left_out: left_out.to_vec(),
                token: None,
            })
        };
        let t = uuid::Uuid::from_u128(0xabc);
        let hex = "00000000000000000000000000000abc";
        assert_eq!(
            claim_body("A\n1:u", 2, &[], &t),
            format!("A\n1:u\nk:2\nt:{hex}")
        );
        assert_eq!(
            claim_body("A\n1:u", 4, &[1, 3], &t),
            format!("A\n1:u\nk:4\nx:1,3\nt:{hex}")
        );
        let with_token = |shards, left_out: &[u16]| {
            Some(ClaimInfo {
                shards,
                left_out: left_out.to_vec(),
                token: Some(t),
            })
        };
        assert_eq!(
            parse_claim(&claim_body("A\n1:u", 4, &[1, 3], &t), "A\n1:u"),
            with_token(Some(4), &[1, 3])
        );
        assert_eq!(
            parse_claim(&claim_body("A\n1:u", 2, &[], &t), "A\n1:u"),
            with_token(Some(2), &[])
        );
        assert_eq!(parse_claim("A\n1:u\nk:2\nt:zz", "A\n1:u"), None);
        assert_eq!(
            parse_claim(&format!("A\n1:u\nk:2\nt:{hex}\nq"), "A\n1:u"),
            None
        );
        assert_eq!(parse_claim("A\n1:u\nk:2", "A\n1:u"), c(Some(2), &[]));
        assert_eq!(
            parse_claim("A\n1:u\nk:4\nx:1,3", "A\n1:u"),
            c(Some(4), &[1, 3])
        );
        // written before the count was recorded
        assert_eq!(parse_claim("A\n1:u", "A\n1:u"), c(None, &[]));
        assert_eq!(parse_claim("A\n1:u\nx:1,3", "A\n1:u"), c(None, &[1, 3]));
        assert_eq!(parse_claim("A\n1:u\nk:0", "A\n1:u"), None);
        // another body, also one that merely starts like this one
        assert_eq!(parse_claim("A\n1:v", "A\n1:u"), None);
        assert_eq!(parse_claim("A\n1:uu", "A\n1:u"), None);
        assert_eq!(parse_claim("B\n1:u", "A\n1:u"), None);
        assert_eq!(parse_claim("A\n1:u\nx:zz", "A\n1:u"), None);
    }
}
