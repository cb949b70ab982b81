//! The overflow waitlist. A buyer who meets "sold out" may queue
//! (`"waitlist": true`); as units come back (releases, expiries) waiting
//! tickets are promoted, strictly in arrival order, into ordinary holds.
//!
//! **Keys.** One slot per SKU, `{wl:SKU}`: a sorted set `queue` (ticket →
//! arrival number: order and positions), a stream of ticket ids read through
//! the consumer group `promoters`, ticket hashes, one live ticket per buyer.
//!
//! **Returned units go to the queue first.** While a SKU's queue has waiters
//! each of its shards carries a gate key (`fg:{SKU#s}:wlopen`); reserve
//! refuses on a gated shard, so a unit that comes back cannot be taken by a
//! new arrival — only the promoter reserves past the gate. When the queue
//! empties the promoter lifts the gates, with a re-check so that a buyer who
//! joins meanwhile gets them back (`lua/wl_gate.lua`). The one window where a
//! new arrival can take a unit ahead of a waiter: a unit returned in the
//! milliseconds between a ticket's creation and its gates being set.
//!
//! **Exactly-once promotion.** One promoter per SKU at a time holds a lease,
//! so promotion follows arrival order; it takes entries from the consumer
//! group — first everything still pending (claimed with XAUTOCLAIM, e.g. from a
//! promoter that died mid-promotion), then new ones. A ticket is promoted by
//! the ordinary sharded reserve walk under the idempotency key
//! `<owner>  wl:<ticket>:<attempt>` (the ticket owner's scope, then two
//! spaces: a form no client key can take, `ScopedKey` in domain.rs — a
//! client that could send it could make every round fail as a reused key),
//! so running a promotion twice (two promoters, or a
//! retry after a crash between creating the hold and acknowledging the entry)
//! replays the same hold instead of making a second. `wl_end.lua` then moves
//! the ticket from waiting to promoted exactly once and acknowledges the
//! entry. An attempt that found every shard empty leaves sticky `moved`
//! verdicts for its key, so the next attempt uses a fresh key (`wl_bump.lua`).
//! Promotion is head-of-line: a waiter for 3 units is not skipped for one
//! asking for 1.
//!

use std::sync::Arc;
use std::time::Duration;

use fred::interfaces::{HashesInterface, KeysInterface, SortedSetsInterface};
use tokio::sync::watch;

use super::keys::WaitKeys;
use super::replies::{array, at, int, text};
use super::stock_doc;
pub use super::ticket::{Ticket, TicketId};
use super::InventoryError;
use super::{ms_to_rfc3339, Inventory, ReserveOutcome, ReserveRequest, SkuMeta};
use crate::domain::{Qty, ScopedKey, Sku, Tenant, UserId};
use crate::metrics::Metrics;

/// What one promotion step came to.
enum Step {
    /// The ticket left the queue (promoted, expired, cancelled); go on.
    Done,
    /// No stock for the ticket at the head of the queue: stop for now.
    NoStock,
}

impl Inventory {
    /// Sold out: put the buyer on the SKU's waitlist (or answer the ticket
    /// this key already has).
    pub(super) async fn join_waitlist(
        &self,
        meta: &SkuMeta,
        req: &ReserveRequest,
        fp: &str,
    ) -> Result<ReserveOutcome, InventoryError> {
        let wk = WaitKeys::new(&req.sku);
        let ticket = TicketId::new(&req.sku).to_string();
        let reply = array(
            self.run(
                &self.scripts.wl_join,
                vec![
                    wk.queue(),
                    wk.stream(),
                    wk.users(),
                    wk.idem(&req.key),
                    wk.seq(),
                    wk.ticket(&ticket),
                    wk.exp(),
                    wk.state(),
                    wk.draw(),
                ],
                vec![
                    ticket,
                    req.qty.get().to_string(),
                    req.user.as_str().to_string(),
                    fp.to_string(),
                    self.settings.waitlist_capacity.to_string(),
                    self.settings.ticket_ttl_ms.to_string(),
                    self.settings.idem_ttl_ms.to_string(),
                    wk.ticket_prefix(),
                    req.key.owner().to_string(),
                    meta.window
                        .opens_at_ms
                        .map(|o| o.to_string())
                        .unwrap_or_default(),
                ],
            )
            .await?,
        )?;
        let kind = text(at(&reply, 0)?)?;
        match kind.as_str() {
            "joined" | "replay" => {
                // A new ticket: gates on every shard, returned units now go
                // to the queue. A replay raises none: its ticket may have
                // left the queue long ago (promoted, expired), and gates
                // raised for an empty queue would keep returned units from
                // every new buyer. (A joiner that died before its gates were
                // set is covered by the promoter, which sets them while
                // anyone waits.)
                if kind == "joined" {
                    self.set_gates(meta).await?;
                    // the last place taken: later joins are refused from memory
                    let position = at(&reply, 2).and_then(int).unwrap_or(0);
                    if u64::try_from(position).unwrap_or(0) >= self.settings.waitlist_capacity {
                        self.waitlist_seen_full(&req.sku, true);
                    }
                }
                let id =
                    TicketId::parse(&text(at(&reply, 1)?)?).map_err(InventoryError::Protocol)?;
                // the key's own ticket: the key's scope is its owner
                let t = self.ticket(&id, &Tenant::Operator).await?;
                Ok(if kind == "joined" {
                    self.stock_moved(
                        &req.sku,
                        stock_doc::Moved {
                            waitlist: 1,
                            ..Default::default()
                        },
                    );
                    ReserveOutcome::Waitlisted(t)
                } else {
                    ReserveOutcome::WaitlistReplayed(t)
                })
            }
            "mismatch" => Err(InventoryError::IdempotencyKeyReused),
            "full" => {
                // the sold-out mark refuses further joins from memory
                self.waitlist_seen_full(&req.sku, true);
                Err(InventoryError::WaitlistFull)
            }
            "already" => Err(InventoryError::AlreadyWaitlisted(text(at(&reply, 1)?)?)),
            "drawing" => {
                // opens_at has come and the draw is not applied yet: let
                // this instance's promoter try it now
                self.returned.notify_one();
                Err(InventoryError::DrawPending)
            }
            other => Err(InventoryError::Protocol(format!(
                "wl_join replied {other:?}"
            ))),
        }
    }

    /// Raise the gates of every shard. The waitlist's state says `open`
    /// first, whoever raises them: gates are only ever up while the state
    /// is there, and the promoter lifts them (`lift_gates`) once the queue
    /// is empty and the state is there — so no gate raised by a join that
    /// raced with a lift stays up for good.
    async fn set_gates(&self, meta: &SkuMeta) -> Result<(), InventoryError> {
        let _: () = self
            .pool
            .next()
            .set(WaitKeys::new(&meta.sku).state(), "open", None, None, false)
            .await
            .map_err(|e| self.err(e))?;
        for s in 0..meta.shards {
            let _: () = self
                .pool
                .next()
                .set(meta.keys(s).wlopen(), "1", None, None, false)
                .await
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    async fn clear_gates(&self, meta: &SkuMeta) -> Result<(), InventoryError> {
        for s in 0..meta.shards {
            let _: i64 = self
                .pool
                .next()
                .del(meta.keys(s).wlopen())
                .await
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// A ticket as it is now, as `viewer` may see it (404 when unknown, or
    /// another storefront's: a ticket belongs to the storefront whose
    /// request made it, field `owner`; none for a ticket made unscoped).
    pub async fn ticket(&self, id: &TicketId, viewer: &Tenant) -> Result<Ticket, InventoryError> {
        let wk = WaitKeys::new(id.sku());
        let key = id.to_string();
        let f: std::collections::HashMap<String, String> = self
            .pool
            .next()
            .hgetall(wk.ticket(&key))
            .await
            .map_err(|e| self.err(e))?;
        let (Some(status), Some(qty), Some(user), Some(expires)) = (
            f.get("status"),
            f.get("qty"),
            f.get("user"),
            f.get("expires"),
        ) else {
            return Err(InventoryError::TicketNotFound);
        };
        if !viewer.sees(f.get("owner").map_or("", String::as_str)) {
            return Err(InventoryError::TicketNotFound);
        }
        let mut status = status.clone();
        let mut position = None;
        let mut estimated_wait_seconds = None;
        if status == "prequeued" {
            // no position before the draw: the order is not known yet
            let now = self.redis_now_ms(&wk.ticket(&key)).await?;
            if expires.parse::<i64>().unwrap_or(0) <= now {
                status = "expired".into();
            }
        } else if status == "waiting" {
            // one call: the Redis clock (the deadline was stamped by it, so
            // it is judged by it too), the place in the queue, the rate
            let w = array(
                self.run(
                    &self.scripts.wl_wait,
                    vec![wk.queue(), wk.rate()],
                    vec![key.clone()],
                )
                .await?,
            )?;
            let now = int(at(&w, 0)?)?;
            if expires.parse::<i64>().unwrap_or(0) <= now {
                status = "expired".into();
            } else {
                let rank = int(at(&w, 1)?)?;
                if rank >= 0 {
                    position = Some(rank + 1);
                    let (promoted, oldest) = (int(at(&w, 2)?)?, int(at(&w, 3)?)?);
                    estimated_wait_seconds = Some(estimate_wait_seconds(
                        rank + 1,
                        promoted,
                        now.saturating_sub(oldest),
                    ));
                }
            }
        }
        Ok(Ticket {
            ticket_id: key,
            sku: id.sku().to_string(),
            qty: qty.parse().unwrap_or(0),
            user_id: user.clone(),
            position,
            estimated_wait_seconds,
            reservation_id: f.get("rid").cloned(),
            expires_at: f
                .get("hold_exp")
                .and_then(|e| e.parse().ok())
                .map(ms_to_rfc3339),
            reason: f.get("reason").cloned(),
            status,
        })
    }

    /// The buyer leaves the queue. Idempotent; a ticket already promoted,
    /// expired or cancelled is answered as it is (409 for promoted/expired).
    /// 404 unless `viewer` may see the ticket (its owner never changes, so
    /// the check before the change is race-free).
    pub async fn cancel_ticket(
        &self,
        id: &TicketId,
        viewer: &Tenant,
    ) -> Result<Ticket, InventoryError> {
        let t = self.ticket(id, viewer).await?;
        self.end_ticket(id.sku(), &t.ticket_id, "cancelled", "", 0, "")
            .await?;
        let t = self.ticket(id, viewer).await?;
        match t.status.as_str() {
            "cancelled" => Ok(t),
            "promoted" => Err(InventoryError::TicketState("promoted")),
            _ => Err(InventoryError::TicketState("expired")),
        }
    }

    async fn end_ticket(
        &self,
        sku: &Sku,
        ticket: &str,
        status: &str,
        rid: &str,
        hold_exp: i64,
        reason: &str,
    ) -> Result<EndTicket, InventoryError> {
        let wk = WaitKeys::new(sku);
        let reply = array(
            self.run(
                &self.scripts.wl_end,
                vec![
                    wk.queue(),
                    wk.exp(),
                    wk.users(),
                    wk.ticket(ticket),
                    wk.stream(),
                    wk.rate(),
                ],
                vec![
                    ticket.to_string(),
                    status.to_string(),
                    rid.to_string(),
                    hold_exp.to_string(),
                    reason.to_string(),
                ],
            )
            .await?,
        )?;
        match text(at(&reply, 0)?)?.as_str() {
            "ok" => {
                // a place in the queue came free
                self.waitlist_seen_full(sku, false);
                self.stock_moved(
                    sku,
                    stock_doc::Moved {
                        waitlist: -1,
                        ..Default::default()
                    },
                );
                Ok(EndTicket::Ended)
            }
            "ended" => Ok(EndTicket::Was(text(at(&reply, 1)?)?)),
            "missing" => Err(InventoryError::TicketNotFound),
            other => Err(InventoryError::Protocol(format!(
                "wl_end replied {other:?}"
            ))),
        }
    }

    /// Pre-queued tickets of a SKU not yet drawn (score 0, lua/wl_join.lua).
    pub async fn prequeue_len(&self, sku: &Sku) -> Result<i64, InventoryError> {
        self.pool
            .next()
            .zcount(WaitKeys::new(sku).queue(), 0.0, 0.0)
            .await
            .map_err(|e| self.err(e))
    }

    /// Waiting tickets of a SKU.
    pub async fn waitlist_len(&self, sku: &Sku) -> Result<i64, InventoryError> {
        self.pool
            .next()
            .zcard(WaitKeys::new(sku).queue())
            .await
            .map_err(|e| self.err(e))
    }

    /// One promoter round for one SKU: expire stale tickets, then promote
    /// from the head of the queue while stock allows, or lift the gates when
    /// nobody waits. `me` names this promoter (lease holder and consumer).
    /// Returns the tickets promoted.
    pub async fn promote(&self, meta: &SkuMeta, me: &str) -> Result<Vec<Ticket>, InventoryError> {
        let wk = WaitKeys::new(&meta.sku);
        let expired = int(&self
            .run(
                &self.scripts.wl_expire,
                vec![wk.queue(), wk.exp(), wk.users(), wk.stream()],
                vec![wk.ticket_prefix(), "100".into()],
            )
            .await?)?;
        if expired > 0 {
            self.waitlist_seen_full(&meta.sku, false);
        }
        let waiting = self.waitlist_len(&meta.sku).await?;
        let mut promoted = Vec::new();
        // A SKU with opens_at: its pre-queue is drawn first (from opens_at
        // on, once, by whichever instance gets there; draw.rs). Before that
        // nothing is promoted and the pre-queued tickets keep the gates up.
        if !self.draw_if_due(meta).await? {
            if waiting > 0 {
                self.set_gates(meta).await?;
            } else {
                self.lift_gates(meta, &wk).await?;
            }
            return Ok(promoted);
        }
        if waiting == 0 {
            self.lift_gates(meta, &wk).await?;
            return Ok(promoted);
        }
        let held = int(&self
            .run(
                &self.scripts.wl_lease,
                vec![wk.lease()],
                vec![me.to_string(), self.settings.lease_ms.to_string()],
            )
            .await?)?;
        if held != 1 {
            return Ok(promoted);
        }
        // gates could be missing if a joiner died between joining and gating
        self.set_gates(meta).await?;
        'rounds: for _ in 0..64 {
            let entries = array(
                self.run(
                    &self.scripts.wl_next,
                    vec![wk.stream()],
                    vec![me.to_string(), "16".into()],
                )
                .await?,
            )?;
            if entries.is_empty() {
                break;
            }
            for pair in entries.chunks(2) {
                let [_, ticket] = pair else { continue };
                let ticket = text(ticket)?;
                match self.promote_one(meta, &ticket).await? {
                    (Step::Done, Some(t)) => promoted.push(t),
                    (Step::Done, None) => {}
                    (Step::NoStock, _) => break 'rounds,
                }
            }
        }
        if expired > 0 || !promoted.is_empty() {
            // tickets left the queue (holds were counted by their walks)
            self.stock_changed(&meta.sku);
        }
        Ok(promoted)
    }

    async fn promote_one(
        &self,
        meta: &SkuMeta,
        ticket: &str,
    ) -> Result<(Step, Option<Ticket>), InventoryError> {
        let wk = WaitKeys::new(&meta.sku);
        let f: std::collections::HashMap<String, String> = self
            .pool
            .next()
            .hgetall(wk.ticket(ticket))
            .await
            .map_err(|e| self.err(e))?;
        let status = f.get("status").map(String::as_str).unwrap_or("");
        if status != "waiting" {
            // ended meanwhile (cancelled, expired): acknowledge the entry
            if !status.is_empty() {
                self.end_ticket(&meta.sku, ticket, status, "", 0, "")
                    .await?;
            }
            return Ok((Step::Done, None));
        }
        if f.get("expires")
            .and_then(|e| e.parse::<i64>().ok())
            .unwrap_or(0)
            <= self.redis_now_ms(&wk.ticket(ticket)).await?
        {
            self.end_ticket(&meta.sku, ticket, "expired", "", 0, "")
                .await?;
            return Ok((Step::Done, None));
        }
        let attempt = f.get("attempt").cloned().unwrap_or_else(|| "0".into());
        let (Some(qty), Some(user)) = (
            f.get("qty").and_then(|q| q.parse::<i64>().ok()),
            f.get("user").and_then(|u| UserId::parse(u).ok()),
        ) else {
            self.end_ticket(&meta.sku, ticket, "cancelled", "", 0, "corrupt")
                .await?;
            return Ok((Step::Done, None));
        };
        // the promoter's own key, in the ticket owner's namespace: no client
        // key can be it (domain.rs), and the hold belongs to the ticket's
        // storefront
        let owner = f.get("owner").map_or("", String::as_str);
        let Ok(key) = ScopedKey::promotion(owner, ticket, &attempt) else {
            self.end_ticket(&meta.sku, ticket, "cancelled", "", 0, "corrupt")
                .await?;
            return Ok((Step::Done, None));
        };
        // Not enough stock on all shards together: stop without walking. A
        // walk that finds nothing leaves a walk-on verdict on every shard for its
        // attempt's key (kept for the key retention) and a fresh key next
        // round: a head ticket waiting for returns would write K keys per
        // round for as long as it waits. Reading the stock writes nothing;
        // a walk that still finds too little is handled below as before.
        // Unless this attempt already holds its units: a promoter that died
        // between its walk and `wl_end` left the hold (an `R` verdict for the
        // attempt's key) and took the stock with it; only the walk's replay
        // moves the ticket on, so stopping here would leave it waiting
        // beside its own hold.
        if self.stock_total(meta).await? < qty && !self.attempt_has_hold(meta, &key).await? {
            return Ok((Step::NoStock, None));
        }
        let req = ReserveRequest {
            sku: meta.sku.clone(),
            qty: Qty::parse(qty, u32::MAX).map_err(InventoryError::Protocol)?,
            user,
            key,
            waitlist: false,
        };
        if meta.max_per_user > 0 && self.cap_take(meta, &req).await? == 0 {
            self.end_ticket(&meta.sku, ticket, "cancelled", "", 0, "purchase_limit")
                .await?;
            return Ok((Step::Done, None));
        }
        // (no claim: the attempt key walks the SKU's count of the moment,
        // with no token, so its holds write `R` verdicts)
        let token = super::reserve::WalkToken::with_verdicts();
        let walked = match self
            .walk(&req, meta, false, meta.shards, &[], token, None)
            .await
        {
            // outside the sale window (closed, or a reload moved opens_at
            // later): nothing was held; the tickets wait, and expire
            Err(InventoryError::SaleClosed | InventoryError::SaleNotOpen { .. }) => {
                if meta.max_per_user > 0 {
                    self.cap_give(meta, req.user.as_str(), req.key.as_str())
                        .await?;
                }
                return Ok((Step::NoStock, None));
            }
            other => other?,
        };
        match walked {
            ReserveOutcome::Held(r) | ReserveOutcome::Replayed(r) => {
                let exp = humantime::parse_rfc3339(&r.expires_at)
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_millis() as i64);
                match self
                    .end_ticket(&meta.sku, ticket, "promoted", &r.reservation_id, exp, "")
                    .await?
                {
                    EndTicket::Ended => {
                        let id = TicketId::parse(ticket).map_err(InventoryError::Protocol)?;
                        Ok((Step::Done, Some(self.ticket(&id, &Tenant::Operator).await?)))
                    }
                    EndTicket::Was(other) => {
                        // cancelled while we reserved: give the units back
                        if other != "promoted" {
                            let rid = crate::domain::ReservationId::parse(&r.reservation_id)
                                .map_err(InventoryError::Protocol)?;
                            match self.release(&rid, &Tenant::Operator).await {
                                Ok(_) => {}
                                Err(InventoryError::ReservationState(_)) => {}
                                Err(e) => return Err(e),
                            }
                        }
                        Ok((Step::Done, None))
                    }
                }
            }
            ReserveOutcome::SoldOut => {
                // definite: no hold under this attempt's key, whichever
                // attempt counted it (an earlier one may have, and failed)
                if meta.max_per_user > 0 {
                    self.cap_give(meta, req.user.as_str(), req.key.as_str())
                        .await?;
                }
                self.run(
                    &self.scripts.wl_bump,
                    vec![wk.ticket(ticket)],
                    vec![attempt],
                )
                .await?;
                Ok((Step::NoStock, None))
            }
            ReserveOutcome::Waitlisted(_) | ReserveOutcome::WaitlistReplayed(_) => Err(
                InventoryError::Protocol("a promotion cannot join the waitlist".into()),
            ),
        }
    }

    /// Whether a shard holds a hold for this promotion attempt's key (its
    /// `R` verdict, `R|<rid>|<fp>`, keys.rs): read-only, K reads.
    async fn attempt_has_hold(
        &self,
        meta: &SkuMeta,
        key: &ScopedKey,
    ) -> Result<bool, InventoryError> {
        for s in 0..meta.shards {
            let verdict = meta.keys(s).idem(key);
            let v: Option<String> = self
                .nodes
                .client_for_key(&verdict)
                .get(verdict.as_str())
                .await
                .map_err(|e| self.err(e))?;
            if v.is_some_and(|v| v.starts_with("R|")) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Units available on all of the SKU's shards together (read-only).
    async fn stock_total(&self, meta: &SkuMeta) -> Result<i64, InventoryError> {
        let mut total = 0;
        for s in 0..meta.shards {
            let stock = meta.keys(s).stock();
            let n: Option<i64> = self
                .nodes
                .client_for_key(&stock)
                .get(stock)
                .await
                .map_err(|e| self.err(e))?;
            total += n.unwrap_or(0);
        }
        Ok(total)
    }

    /// Nobody waits: lift the gates, unless a buyer joined meanwhile.
    async fn lift_gates(&self, meta: &SkuMeta, wk: &WaitKeys) -> Result<(), InventoryError> {
        let closing = int(&self
            .run(
                &self.scripts.wl_gate,
                vec![wk.queue(), wk.state()],
                vec!["close".into()],
            )
            .await?)?;
        if closing != 1 {
            return Ok(());
        }
        self.clear_gates(meta).await?;
        let closed = int(&self
            .run(
                &self.scripts.wl_gate,
                vec![wk.queue(), wk.state()],
                vec!["closed".into()],
            )
            .await?)?;
        if closed != 1 {
            self.set_gates(meta).await?;
        } else {
            // gates down: units in stock are for new buyers again
            self.clear_sold_out(&meta.sku);
        }
        Ok(())
    }
}

enum EndTicket {
    Ended,
    Was(String),
}

/// The window the promotion rate is measured over: `WL_RATE_BUCKETS`
/// one-second buckets in `lua/lib.lua` (keep the two equal).
pub const RATE_WINDOW_MS: i64 = 60_000;

/// Seconds a ticket at `position` (1 = next) may wait: its position ÷ the
/// tickets promoted per second lately, rounded up. `promoted` tickets were
/// promoted over the last `elapsed_ms` — from the start of the oldest second
/// in the window that saw one, to now; clamped to between one second (a
/// burst just now is not an infinite rate) and the window (older
/// promotions were not counted). `None` while nothing is known: no
/// promotion in the window (the queue may be stalled for good, or a unit may
/// come back in a second: no honest number), or a position that is not one.
/// Integer arithmetic: never negative, never NaN, never wraps (u128).
pub fn estimate_wait_seconds(position: i64, promoted: i64, elapsed_ms: i64) -> Option<u64> {
    if position < 1 || promoted < 1 {
        return None;
    }
    let elapsed = elapsed_ms.clamp(1_000, RATE_WINDOW_MS) as u128;
    // position / (promoted / elapsed s) = position × elapsed_ms / (promoted × 1000)
    let num = position as u128 * elapsed;
    let den = promoted as u128 * 1_000;
    // (saturates: past any waitlist_capacity, but never wraps)
    Some(u64::try_from(num.div_ceil(den)).unwrap_or(u64::MAX))
}

/// The promoter task: a round over every SKU each `interval`, or sooner when
/// units come back. Runs on every instance; the per-SKU lease makes one of
/// them do the work.
pub async fn run(
    inventory: Arc<Inventory>,
    metrics: Arc<Metrics>,
    interval: Duration,
    webhook: crate::webhook::Webhook,
    heartbeat: crate::shutdown::Heartbeat,
    mut shutdown: watch::Receiver<bool>,
) {
    let me = format!("promoter-{}", uuid::Uuid::new_v4().simple());
    loop {
        heartbeat.beat();
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = inventory.returned.notified() => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            return;
        }
        let skus = match inventory.skus().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "waitlist promoter: cannot list SKUs");
                continue;
            }
        };
        for sku in skus {
            let Ok(Some(meta)) = inventory.meta(&sku).await else {
                continue;
            };
            match inventory.promote(&meta, &me).await {
                Ok(promoted) => {
                    for t in promoted {
                        metrics.outcome("promoted");
                        metrics.promoted(sku.as_str());
                        tracing::info!(sku = %sku, ticket = %t.ticket_id, "waitlist ticket promoted");
                        webhook.send(&t.ticket_id, &t);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, sku = %sku, "waitlist promotion failed; retrying next round")
                }
            }
            if let Ok(n) = inventory.waitlist_len(&sku).await {
                metrics.set_waitlist(sku.as_str(), n);
            }
            if let Some(opens) = meta.window.opens_at_ms {
                // (this instance's clock: a gauge, not a rule)
                let left = (opens - super::now_ms() + 999).div_euclid(1000);
                let pre = inventory.prequeue_len(&sku).await.unwrap_or(0);
                metrics.set_sale(sku.as_str(), left, pre);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_is_position_over_the_recent_rate() {
        // nothing promoted lately: nothing known
        assert_eq!(estimate_wait_seconds(5, 0, 30_000), None);
        assert_eq!(estimate_wait_seconds(5, -3, 30_000), None);
        // not a position
        assert_eq!(estimate_wait_seconds(0, 10, 30_000), None);
        assert_eq!(estimate_wait_seconds(-1, 10, 30_000), None);
        // 30 promoted over 60 s = 0.5/s: position 10 waits 20 s
        assert_eq!(estimate_wait_seconds(10, 30, 60_000), Some(20));
        // 10 over 20 s = 0.5/s as well: the window started 20 s ago
        assert_eq!(estimate_wait_seconds(10, 10, 20_000), Some(20));
        // rounded up: 1 ticket at 3/s waits 1 s, not 0
        assert_eq!(estimate_wait_seconds(1, 3, 1_000), Some(1));
        assert_eq!(estimate_wait_seconds(4, 3, 1_000), Some(2));
        // a burst this very millisecond counts as over one second
        assert_eq!(estimate_wait_seconds(32, 16, 0), Some(2));
        // a clock that went backwards (negative elapsed) does the same
        assert_eq!(estimate_wait_seconds(32, 16, -5_000), Some(2));
        // promotions older than the window were not counted: at most 60 s
        assert_eq!(estimate_wait_seconds(2, 1, 3_600_000), Some(120));
        // extremes: finite, no overflow
        assert_eq!(
            estimate_wait_seconds(i64::MAX, 1, 1_000),
            Some(i64::MAX as u64)
        );
        assert_eq!(estimate_wait_seconds(i64::MAX, 1, i64::MAX), Some(u64::MAX));
        assert_eq!(estimate_wait_seconds(1, i64::MAX, 60_000), Some(1));
    }

    #[test]
    fn ticket_ids_round_trip_and_differ_from_reservation_ids() {
        let sku = Sku::parse("hot").unwrap();
        let t = TicketId::new(&sku);
        assert_eq!(TicketId::parse(&t.to_string()).unwrap(), t);
        assert!(TicketId::parse("hot.0.0123456789abcdef0123456789abcdef").is_err());
        assert!(crate::domain::ReservationId::parse(&t.to_string()).is_err());
    }
}
