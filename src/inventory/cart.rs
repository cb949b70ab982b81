//! Carts: several lines (SKU, qty) held all or nothing, across shards and
//! cluster masters, by a saga of ordinary holds (docs/carts.md argues it).
//!
//! **The record first.** A cart is a hash `fg:{carts~X}:c:<id>` in its
//! bucket's slot (X: the id's first hex digit), written by
//! `lua/cart_begin.lua` in status `pending` before any line is reserved, and
//! put on the work list `fg:{carts~X}:pending` with a deadline
//! (`lua/cart_pend.lua`). Every later change of its state is one
//! compare-and-set on its status (`lua/cart_move.lua`); each change of
//! status is also appended, in the same step, to the bucket's outbox
//! `fg:{carts~X}:events`, which the ledger writer drains into `cart_events`
//! (docs/carts.md, "Ledger").
//!
//! **Each line through the ordinary walk,** under the key `<owner>
//! cart:<id>:<i>` (`ScopedKey::cart_line`: two spaces, a form no client key
//! can take) and a hold token derived from the cart id and the line, so the
//! saga run again — a client's retry, a duplicate in flight — replays the
//! same holds instead of making new ones, and whoever gives a line back can
//! name its hold (`SKU.s.<token>`) even when the saga died before writing it
//! into the record. A line that cannot be held (sold out, purchase cap)
//! moves the cart to `compensating`, every line already held is released,
//! and the cart ends `failed`. The `Idempotency-Key` of the POST is claimed
//! like a reservation's (`#cart\n<id>\n<fingerprint>`, a body no reserve can
//! have), so a retry finds the same cart and another body is refused.
//!
//! **The sweeper finishes what a dead instance left.** Carts whose deadline
//! passed in a transitional state — `pending` (the saga's instance died),
//! `compensating`, `confirming`, `releasing` — are finished by
//! [`Inventory::sweep_carts`] from the expiry task: a pending cart is
//! compensated (it holds nothing afterwards), the others are rolled forward.
//!
//! **Failpoints** (tests; off unless `FLASHGATE_FAILPOINT` is set): the
//! process exits at the named step, as if killed there: `cart_after_claim`,
//! `cart_after_begin`, `cart_after_line:<i>`, `cart_before_held`,
//! `cart_after_compensating`, `cart_confirm_after_line:<i>`.

use std::collections::HashMap;
use std::sync::Arc;

use fred::interfaces::{HashesInterface, SortedSetsInterface};
use fred::types::Value;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::batch;
use super::keys;
use super::replies::{array, at, int, text};
use super::{
    ms_to_rfc3339, Inventory, InventoryError, Reservation, ReserveOutcome, ReserveRequest,
};
use crate::domain::{CartId, Qty, ReservationId, ScopedKey, Sku, Tenant, UserId};

/// Most due carts one sweep takes from the work list.
const SWEEP_CARTS: i64 = 100;

/// One line of a cart request.
#[derive(Clone, Debug)]
pub struct CartLineRequest {
    pub sku: Sku,
    pub qty: Qty,
}

/// A parsed, validated cart request (no SKU twice: the HTTP layer refuses it).
#[derive(Clone, Debug)]
pub struct CartRequest {
    /// The client's key in its owner's namespace; its owner owns the cart.
    pub key: ScopedKey,
    pub user: UserId,
    pub lines: Vec<CartLineRequest>,
}

impl CartRequest {
    /// What makes two requests with one key "the same cart":
    /// `<user>\n<sku>:<qty>,<sku>:<qty>…` (a user id has no control
    /// character and a SKU neither `:` nor `,`).
    fn fingerprint(&self) -> String {
        let mut fp = String::with_capacity(self.user.as_str().len() + 24 * self.lines.len());
        fp.push_str(self.user.as_str());
        fp.push('\n');
        let mut n = itoa::Buffer::new();
        for (i, l) in self.lines.iter().enumerate() {
            if i > 0 {
                fp.push(',');
            }
            fp.push_str(l.sku.as_str());
            fp.push(':');
            fp.push_str(n.format(l.qty.get()));
        }
        fp
    }
}

/// A cart as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct Cart {
    pub cart_id: String,
    pub user_id: String,
    /// pending, held, confirming, confirmed, releasing, released, expired,
    /// compensating, failed, incomplete (docs/carts.md).
    pub status: &'static str,
    /// When the first of its holds expires (none before every line is held).
    pub expires_at: Option<String>,
    /// `expires_at` in ms since the epoch (the lines' tokens' `exp`).
    #[serde(skip)]
    pub expires_at_ms: Option<i64>,
    pub lines: Vec<CartLine>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CartLine {
    pub sku: String,
    pub qty: u32,
    pub reservation_id: Option<String>,
    /// The line's hold, signed (`signing`), while the cart is held and a
    /// key signs; set by the HTTP layer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// What a cart request came to.
#[derive(Debug)]
pub enum CartOutcome {
    /// Every line held now (201).
    Created(Cart),
    /// The key's cart, as it is now (200).
    Replayed(Cart),
}

/// The cart record, read.
#[derive(Clone, Debug)]
struct Record {
    id: CartId,
    status: &'static str,
    owner: String,
    user: String,
    deadline: i64,
    exp: Option<i64>,
    /// why a failed cart failed: `sold_out:<i>`, `purchase_limit:<i>`,
    /// `abandoned`, `busy`; a released cart's end (`released`, `expired`)
    why: String,
    /// what a `releasing` cart ends as
    end: String,
    /// an `incomplete` cart's lines that are not sold (indexes)
    bad: Vec<usize>,
    lines: Vec<(Sku, u32, Option<String>)>,
}

fn state(s: &str) -> Result<&'static str, InventoryError> {
    Ok(match s {
        "pending" => "pending",
        "held" => "held",
        "compensating" => "compensating",
        "failed" => "failed",
        "confirming" => "confirming",
        "confirmed" => "confirmed",
        "releasing" => "releasing",
        "released" => "released",
        "expired" => "expired",
        "incomplete" => "incomplete",
        other => return Err(InventoryError::Protocol(format!("cart status {other:?}"))),
    })
}

impl Record {
    fn parse(id: &CartId, flat: &[Value]) -> Result<Option<Record>, InventoryError> {
        if flat.is_empty() {
            return Ok(None);
        }
        let mut f: HashMap<String, String> = HashMap::with_capacity(flat.len() / 2);
        for pair in flat.chunks(2) {
            if let [k, v] = pair {
                f.insert(text(k)?, text(v)?);
            }
        }
        Self::of(id, f)
    }

    fn of(id: &CartId, mut f: HashMap<String, String>) -> Result<Option<Record>, InventoryError> {
        let Some(status) = f.get("status") else {
            return Ok(None);
        };
        let bad = |what: &str| InventoryError::Protocol(format!("cart {id}: bad {what}"));
        let status = state(status)?;
        let n: usize = f
            .get("n")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| bad("n"))?;
        let mut lines = Vec::with_capacity(n);
        for i in 0..n {
            let l = f.get(&format!("l{i}")).ok_or_else(|| bad("line"))?;
            let (sku, qty) = l.split_once('|').ok_or_else(|| bad("line"))?;
            let sku = Sku::parse(sku).map_err(|_| bad("line sku"))?;
            let qty: u32 = qty.parse().map_err(|_| bad("line qty"))?;
            lines.push((sku, qty, f.remove(&format!("r{i}"))));
        }
        let num = |k: &str| f.get(k).and_then(|v| v.parse::<i64>().ok());
        Ok(Some(Record {
            id: id.clone(),
            status,
            deadline: num("deadline").unwrap_or(0),
            exp: num("exp"),
            owner: f.remove("owner").unwrap_or_default(),
            user: f.remove("user").unwrap_or_default(),
            why: f.remove("why").unwrap_or_default(),
            end: f.remove("end").unwrap_or_default(),
            bad: f
                .get("bad")
                .map(|b| b.split(',').filter_map(|i| i.parse().ok()).collect())
                .unwrap_or_default(),
            lines,
        }))
    }

    /// The cart as the API shows it; `now`: the server clock, to show a held
    /// cart past its expiry as expired.
    fn view(&self, now: Option<i64>) -> Cart {
        let mut status = self.status;
        if status == "held" {
            if let (Some(now), Some(exp)) = (now, self.exp) {
                if now >= exp {
                    status = "expired";
                }
            }
        }
        Cart {
            cart_id: self.id.to_string(),
            user_id: self.user.clone(),
            status,
            expires_at: self.exp.map(ms_to_rfc3339),
            expires_at_ms: self.exp,
            lines: self
                .lines
                .iter()
                .map(|(sku, qty, rid)| CartLine {
                    sku: sku.to_string(),
                    qty: *qty,
                    reservation_id: rid.clone(),
                    token: None,
                })
                .collect(),
        }
    }

    /// The refusal a failed cart answers (a retry of its POST, an action on it).
    fn failure(&self) -> InventoryError {
        if let Some((code, line)) = self.why.split_once(':') {
            let code = match code {
                "sold_out" => "sold_out",
                "purchase_limit" => "purchase_limit",
                _ => return InventoryError::CartState("failed"),
            };
            if let Some((i, (sku, _, _))) = line
                .parse::<usize>()
                .ok()
                .and_then(|i| self.lines.get(i).map(|l| (i, l)))
            {
                return InventoryError::CartLine {
                    line: i,
                    sku: sku.to_string(),
                    code,
                };
            }
        }
        InventoryError::CartState("failed")
    }
}

/// The hold token of line `line` of cart `id`: 128 bits of SHA-256 over the
/// cart id (122 random bits), so as unguessable as the id.
fn line_token(id: &CartId, line: usize) -> uuid::Uuid {
    let digest = Sha256::new()
        .chain_update(b"flashgate cart line\0")
        .chain_update(id.as_str().as_bytes())
        .chain_update(b"\0")
        .chain_update(line.to_le_bytes())
        .finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    uuid::Uuid::from_bytes(b)
}

/// Every id line `line` of cart `id` can have been held under: one per
/// shard of its SKU (`<sku>.<s>.<token>`). The compensation releases them
/// all when the line's hold is not recorded; reconcile looks them up.
pub fn line_hold_ids(id: &CartId, line: usize, sku: &Sku, shards: u16) -> Vec<String> {
    let token = line_token(id, line);
    (0..shards)
        .map(|s| ReservationId::text_of(sku, s, &token))
        .collect()
}

/// The claim body of a cart: `#cart\n<id>\n<fingerprint>` (`#` is no SKU's,
/// so no reserve's body starts like it, and a key used for one is refused
/// for the other).
fn claim_body(id: &CartId, fp: &str) -> String {
    ["#cart\n", id.as_str(), "\n", fp].concat()
}

/// The cart an earlier claim names, if it was made with this fingerprint.
fn parse_claim(earlier: &str, fp: &str) -> Option<CartId> {
    let rest = earlier.strip_prefix("#cart\n")?;
    let (id, rest) = rest.split_once('\n')?;
    (rest == fp).then(|| CartId::parse(id).ok()).flatten()
}

/// `FLASHGATE_FAILPOINT`, read once: the saga step at which this process
/// exits (tests of crash safety). Off unless set.
fn failpoint(at: &str) {
    static POINT: std::sync::LazyLock<Option<String>> =
        std::sync::LazyLock::new(|| std::env::var("FLASHGATE_FAILPOINT").ok());
    if POINT.as_deref() == Some(at) {
        eprintln!("flashgate: failpoint {at}: exiting");
        std::process::exit(86);
    }
}

fn expiry_ms(r: &Reservation) -> i64 {
    humantime::parse_rfc3339(&r.expires_at)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as i64)
}

/// A release that found the hold already ended, or no hold at all: done.
fn ended(r: Result<Reservation, InventoryError>) -> Result<(), InventoryError> {
    match r {
        Ok(_)
        | Err(InventoryError::ReservationNotFound)
        | Err(InventoryError::ReservationState(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

impl Inventory {
    /// Make the cart `req` asks for, or answer the one its key made.
    pub async fn cart_create(
        self: &Arc<Self>,
        req: CartRequest,
    ) -> Result<CartOutcome, InventoryError> {
        if let Some(why) = self.layout_refusal() {
            return Err(InventoryError::Unsuitable(why));
        }
        // every SKU loaded, before anything is written
        for l in &req.lines {
            if self.meta(&l.sku).await?.is_none() {
                return Err(InventoryError::UnknownSku(l.sku.to_string()));
            }
        }
        let fp = req.fingerprint();
        let claim = self.claim_of(&req.key)?;
        let mine = CartId::random();
        let body = claim_body(&mine, &fp);
        let record = claim.record;
        let id = match Box::pin(
            self.claims
                .submit(claim.bucket, batch::Claim { record, body }),
        )
        .await?
        {
            Value::Null => mine,
            v => parse_claim(&text(&v)?, &fp).ok_or(InventoryError::IdempotencyKeyReused)?,
        };
        failpoint("cart_after_claim");
        // The saga runs on its own: a client that goes away (or a request
        // timeout) does not cut it half-way.
        let this = self.clone();
        tokio::spawn(async move { this.saga(id, req, fp).await })
            .await
            .map_err(|e| InventoryError::Protocol(format!("cart saga: {e}")))?
    }

    async fn saga(
        &self,
        id: CartId,
        req: CartRequest,
        fp: String,
    ) -> Result<CartOutcome, InventoryError> {
        let ck = keys::cart(&id);
        let owner = req.key.owner().to_owned();
        let mut args = vec![
            owner.clone(),
            req.user.as_str().to_owned(),
            fp,
            self.settings.cart_saga_ms.to_string(),
            self.settings.cart_ttl_ms.to_string(),
        ];
        args.extend(
            req.lines
                .iter()
                .map(|l| [l.sku.as_str(), "|", &l.qty.get().to_string()].concat()),
        );
        let reply = array(
            self.run(
                &self.scripts.cart_begin,
                vec![ck.clone(), keys::cart_events(&id).to_owned()],
                args,
            )
            .await?,
        )?;
        let tag = text(at(&reply, 0)?)?;
        if tag == "mismatch" {
            return Err(InventoryError::IdempotencyKeyReused);
        }
        let rec = Record::parse(&id, &reply[1..])?
            .ok_or_else(|| InventoryError::Protocol("cart_begin wrote no record".into()))?;
        let fresh = tag == "new";
        failpoint("cart_after_begin");
        if rec.status != "pending" {
            return self.replay(&rec).await;
        }
        // on the sweeper's work list before any line is held
        if !self.pend(&id, rec.deadline).await? {
            // nothing of a fresh cart is held; a resumed one gives back what
            // its earlier run held
            let limit = if fresh { 0 } else { rec.lines.len() };
            let _ = self.fail(&rec, limit, "busy").await;
            return Err(InventoryError::CartsBusy);
        }
        let mut exps = Vec::with_capacity(req.lines.len());
        let mut rids = Vec::with_capacity(req.lines.len());
        for (i, l) in req.lines.iter().enumerate() {
            let key = ScopedKey::cart_line(&owner, &id, i).map_err(InventoryError::Protocol)?;
            let r = ReserveRequest {
                sku: l.sku.clone(),
                qty: l.qty,
                user: req.user.clone(),
                key,
                waitlist: false,
            };
            let held = match Box::pin(self.reserve_as(&r, Some(line_token(&id, i)))).await {
                Ok(ReserveOutcome::Held(h) | ReserveOutcome::Replayed(h)) => h,
                Ok(ReserveOutcome::SoldOut) => {
                    // a resumed saga may meet a hold its earlier run made on
                    // this very line (and did not record): give it back too
                    let limit = if fresh { i } else { i + 1 };
                    return self.fail(&rec, limit, &format!("sold_out:{i}")).await;
                }
                Err(InventoryError::PurchaseCap) => {
                    let limit = if fresh { i } else { i + 1 };
                    return self.fail(&rec, limit, &format!("purchase_limit:{i}")).await;
                }
                // a line whose SKU's sale window is shut (docs/fair-draw.md):
                // the cart holds nothing, and the buyer hears why
                Err(e @ (InventoryError::SaleNotOpen { .. } | InventoryError::SaleClosed)) => {
                    let limit = if fresh { i } else { i + 1 };
                    return match self.fail(&rec, limit, &format!("sale_window:{i}")).await {
                        Err(down) if down.is_unavailable() => Err(down),
                        _ => Err(e),
                    };
                }
                Ok(ReserveOutcome::Waitlisted(_) | ReserveOutcome::WaitlistReplayed(_)) => {
                    return Err(InventoryError::Protocol(
                        "a cart line cannot join a waitlist".into(),
                    ))
                }
                // Redis out of reach: the cart stays pending; a retry with the
                // key resumes it, else the sweeper gives it back after the deadline
                Err(e) => return Err(e),
            };
            let exp = expiry_ms(&held);
            exps.push(exp);
            let moved = self
                .move_cart(
                    &id,
                    ",pending,",
                    "pending",
                    false,
                    None,
                    &[(&format!("r{i}"), &held.reservation_id)],
                )
                .await?;
            if !moved.0 {
                // Overtaken. Given up (the sweeper took the cart for
                // abandoned, or another run of the saga met a refused
                // line): this hold is given back here too, in case it was
                // made after the compensation looked. Completed by another
                // run of the saga (a duplicate request): the hold is that
                // cart's line (one key, one hold), kept.
                if matches!(moved.1.as_str(), "compensating" | "failed") {
                    if let Ok(rid) = ReservationId::parse(&held.reservation_id) {
                        ended(self.release(&rid, &Tenant::Operator).await)?;
                    }
                }
                return self.answer(&id).await;
            }
            rids.push(held.reservation_id);
            failpoint(&format!("cart_after_line:{i}"));
        }
        failpoint("cart_before_held");
        let exp = exps.iter().copied().min().unwrap_or(0);
        let moved = self
            .move_cart(
                &id,
                ",pending,",
                "held",
                false,
                None,
                &[("exp", &exp.to_string())],
            )
            .await?;
        if !moved.0 {
            return self.answer(&id).await;
        }
        self.unpend(&id).await;
        self.metrics.cart("held");
        let mut rec = rec;
        rec.status = "held";
        rec.exp = Some(exp);
        for (line, rid) in rec.lines.iter_mut().zip(rids) {
            line.2 = Some(rid);
        }
        Ok(CartOutcome::Created(rec.view(None)))
    }

    /// A line could not be held (or the cart is given up): move the cart to
    /// compensating, give back every hold of lines `0..limit`, end it failed.
    async fn fail(
        &self,
        rec: &Record,
        limit: usize,
        why: &str,
    ) -> Result<CartOutcome, InventoryError> {
        let moved = self
            .move_cart(
                &rec.id,
                ",pending,",
                "compensating",
                false,
                Some(self.settings.cart_saga_ms),
                &[("why", why)],
            )
            .await?;
        if !moved.0 {
            return self.answer(&rec.id).await;
        }
        failpoint("cart_after_compensating");
        let now = self.load(&rec.id).await?.unwrap_or_else(|| rec.clone());
        self.compensate(&now, limit).await?;
        let mut done = now.clone();
        done.why = why.to_owned();
        let code = why.split(':').next().unwrap_or("");
        self.metrics.cart(match code {
            "sold_out" => "sold_out",
            "purchase_limit" => "purchase_limit",
            _ => "abandoned",
        });
        Err(done.failure())
    }

    /// Give back every hold of lines `0..limit` of a compensating cart, then
    /// end it `failed` and take it off the work list. A line whose hold is
    /// not recorded (its saga died between the hold and the record) is
    /// released by name on every shard: its token is the line's.
    async fn compensate(&self, rec: &Record, limit: usize) -> Result<(), InventoryError> {
        let mut gave_back = false;
        for (i, (sku, _, rid)) in rec.lines.iter().enumerate().take(limit) {
            let rids: Vec<ReservationId> = match rid {
                Some(r) => ReservationId::parse(r).into_iter().collect(),
                None => match self.meta(sku).await? {
                    Some(meta) => (0..meta.shards)
                        .map(|s| ReservationId::new(sku, s, &line_token(&rec.id, i)))
                        .collect(),
                    None => Vec::new(),
                },
            };
            for rid in rids {
                gave_back = true;
                ended(self.release(&rid, &Tenant::Operator).await)?;
            }
        }
        self.move_cart(&rec.id, ",compensating,", "failed", false, None, &[])
            .await?;
        self.unpend(&rec.id).await;
        if gave_back {
            self.metrics.cart_compensations.inc();
        }
        Ok(())
    }

    /// The cart's record as it is now.
    async fn load(&self, id: &CartId) -> Result<Option<Record>, InventoryError> {
        let ck = keys::cart(id);
        let f: HashMap<String, String> = self
            .nodes
            .client_for_key(&ck)
            .hgetall(&ck)
            .await
            .map_err(|e| self.err(e))?;
        Record::of(id, f)
    }

    /// The record `viewer` may see (not found otherwise, like a missing one).
    async fn load_for(&self, id: &CartId, viewer: &Tenant) -> Result<Record, InventoryError> {
        match self.load(id).await? {
            Some(r) if viewer.sees(&r.owner) => Ok(r),
            _ => Err(InventoryError::CartNotFound),
        }
    }

    /// The cart's answer to a retry of its POST, read now.
    async fn answer(&self, id: &CartId) -> Result<CartOutcome, InventoryError> {
        match self.load(id).await? {
            Some(rec) => self.replay(&rec).await,
            None => Err(InventoryError::CartNotFound),
        }
    }

    async fn replay(&self, rec: &Record) -> Result<CartOutcome, InventoryError> {
        match rec.status {
            "failed" | "compensating" => Err(rec.failure()),
            "pending" => Err(InventoryError::CartState("pending")),
            _ => {
                self.metrics.cart("replayed");
                let now = self.redis_now_ms(&keys::cart(&rec.id)).await?;
                Ok(CartOutcome::Replayed(rec.view(Some(now))))
            }
        }
    }

    /// `cart_move.lua`: (moved, status now).
    async fn move_cart(
        &self,
        id: &CartId,
        from: &str,
        to: &str,
        due: bool,
        deadline_in: Option<u64>,
        fields: &[(&str, &str)],
    ) -> Result<(bool, String), InventoryError> {
        let mut args = vec![
            from.to_owned(),
            to.to_owned(),
            if due { "1" } else { "" }.to_owned(),
            deadline_in.map(|d| d.to_string()).unwrap_or_default(),
        ];
        for (k, v) in fields {
            args.push((*k).to_owned());
            args.push((*v).to_owned());
        }
        let r = array(
            self.run(
                &self.scripts.cart_move,
                vec![keys::cart(id), keys::cart_events(id).to_owned()],
                args,
            )
            .await?,
        )?;
        Ok((int(at(&r, 0)?)? == 1, text(at(&r, 1)?)?))
    }

    /// On the work list with `deadline` (server ms); false when it is full.
    async fn pend(&self, id: &CartId, deadline: i64) -> Result<bool, InventoryError> {
        let r = self
            .run(
                &self.scripts.cart_pend,
                vec![keys::cart_list(id).to_owned()],
                vec![
                    id.to_string(),
                    deadline.to_string(),
                    // the bound of one of 16 buckets
                    self.settings.max_pending_carts.div_ceil(16).to_string(),
                ],
            )
            .await?;
        Ok(int(&r)? == 1)
    }

    /// Off the work list (best effort: the sweeper drops entries of carts
    /// that left their transitional state).
    async fn unpend(&self, id: &CartId) {
        let r: Result<i64, _> = self
            .nodes
            .client_for_key(keys::cart_list(id))
            .zrem(keys::cart_list(id), id.as_str())
            .await;
        if let Err(e) = r {
            tracing::debug!(error = %e, "could not take a cart off the work list; the sweeper will");
        }
    }

    /// The cart `id` as `viewer` may see it.
    pub async fn cart(&self, id: &CartId, viewer: &Tenant) -> Result<Cart, InventoryError> {
        let rec = self.load_for(id, viewer).await?;
        let now = self.redis_now_ms(&keys::cart(id)).await?;
        Ok(rec.view(Some(now)))
    }

    /// Confirm every line of a held cart (docs/carts.md, "Confirm").
    pub async fn cart_confirm(&self, id: &CartId, viewer: &Tenant) -> Result<Cart, InventoryError> {
        let rec = self.load_for(id, viewer).await?;
        let ck = keys::cart(id);
        match rec.status {
            "confirmed" => return Ok(rec.view(None)),
            "confirming" => {}
            "held" => {
                // Too close to the first line's expiry to confirm them all
                // (each line's deadline is at least the cart's): give every
                // line back instead, nothing is sold.
                let now = self.redis_now_ms(&ck).await?;
                let guard = 2 * self.settings.cart_saga_ms as i64;
                if rec.exp.is_none_or(|exp| now + guard >= exp) {
                    let _ = self.start_release(&rec, "expired").await?;
                    return Err(InventoryError::CartState("expired"));
                }
                let moved = self
                    .move_cart(
                        id,
                        ",held,",
                        "confirming",
                        false,
                        Some(self.settings.cart_saga_ms),
                        &[],
                    )
                    .await?;
                if !moved.0 {
                    return Err(self.state_error(id, &moved.1).await);
                }
                let deadline = now + self.settings.cart_saga_ms as i64;
                if !self.pend(id, deadline).await? {
                    // (not on the list: a crash from here leaves the
                    // client's retry to finish it)
                    tracing::warn!("cart work list full; a confirm goes on without it");
                }
            }
            other => return Err(self.refusal(&rec, other)),
        }
        self.finish_confirm(&rec).await
    }

    /// Confirm each line of a confirming cart; end it confirmed, or
    /// incomplete if a line could not be (docs/carts.md).
    async fn finish_confirm(&self, rec: &Record) -> Result<Cart, InventoryError> {
        let mut bad = Vec::new();
        for (i, (_, _, rid)) in rec.lines.iter().enumerate() {
            let Some(rid) = rid.as_deref().and_then(|r| ReservationId::parse(r).ok()) else {
                bad.push(i);
                continue;
            };
            match self.confirm(&rid, &Tenant::Operator).await {
                Ok(_) | Err(InventoryError::ReservationState("confirmed")) => {}
                Err(InventoryError::ReservationState(_) | InventoryError::ReservationNotFound) => {
                    bad.push(i)
                }
                Err(e) => return Err(e),
            }
            failpoint(&format!("cart_confirm_after_line:{i}"));
        }
        let (to, outcome) = if bad.is_empty() {
            ("confirmed", "confirmed")
        } else {
            ("incomplete", "incomplete")
        };
        let bad_s = bad
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let moved = self
            .move_cart(&rec.id, ",confirming,", to, false, None, &[("bad", &bad_s)])
            .await?;
        self.unpend(&rec.id).await;
        if moved.0 {
            self.metrics.cart(outcome);
        }
        let mut done = rec.clone();
        done.status = if moved.0 { to } else { state(&moved.1)? };
        match done.status {
            "confirmed" => Ok(done.view(None)),
            "incomplete" => Err(InventoryError::CartIncomplete { unsold: bad }),
            s => Err(InventoryError::CartState(s)),
        }
    }

    /// Release every line of a held cart.
    pub async fn cart_release(&self, id: &CartId, viewer: &Tenant) -> Result<Cart, InventoryError> {
        let rec = self.load_for(id, viewer).await?;
        match rec.status {
            "released" => Ok(rec.view(None)),
            "held" => self.start_release(&rec, "released").await,
            "releasing" => self.finish_release(&rec).await,
            other => Err(self.refusal(&rec, other)),
        }
    }

    async fn start_release(&self, rec: &Record, end: &str) -> Result<Cart, InventoryError> {
        let ck = keys::cart(&rec.id);
        let moved = self
            .move_cart(
                &rec.id,
                ",held,",
                "releasing",
                false,
                Some(self.settings.cart_saga_ms),
                &[("end", end)],
            )
            .await?;
        if !moved.0 {
            return Err(self.state_error(&rec.id, &moved.1).await);
        }
        let now = self.redis_now_ms(&ck).await?;
        if !self
            .pend(&rec.id, now + self.settings.cart_saga_ms as i64)
            .await?
        {
            tracing::warn!("cart work list full; a release goes on without it");
        }
        let mut r = rec.clone();
        r.status = "releasing";
        r.end = end.to_owned();
        self.finish_release(&r).await
    }

    /// Release each line of a releasing cart; end it released (or expired),
    /// or `incomplete` when a line is sold — confirmed on its own through
    /// `/v1/reservations`: a sale is never undone, and the cart's state must
    /// not say "nothing sold" (`bad` names the lines not sold, as a confirm's
    /// `incomplete` does, so "sold except `bad`" holds for both).
    async fn finish_release(&self, rec: &Record) -> Result<Cart, InventoryError> {
        let mut unsold = Vec::with_capacity(rec.lines.len());
        let mut sold = false;
        for (i, (_, _, rid)) in rec.lines.iter().enumerate() {
            if let Some(rid) = rid.as_deref().and_then(|r| ReservationId::parse(r).ok()) {
                match self.release(&rid, &Tenant::Operator).await {
                    Err(InventoryError::ReservationState("confirmed")) => {
                        sold = true;
                        continue;
                    }
                    r => ended(r)?,
                }
            }
            unsold.push(i);
        }
        let end = if sold {
            "incomplete"
        } else if rec.end == "expired" {
            "expired"
        } else {
            "released"
        };
        let bad_s = unsold
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let fields: &[(&str, &str)] = if sold { &[("bad", &bad_s)] } else { &[] };
        let moved = self
            .move_cart(&rec.id, ",releasing,", end, false, None, fields)
            .await?;
        self.unpend(&rec.id).await;
        if moved.0 {
            self.metrics.cart(end);
        }
        let mut done = rec.clone();
        done.status = if moved.0 { end } else { state(&moved.1)? };
        match done.status {
            "incomplete" => Err(InventoryError::CartIncomplete { unsold }),
            "released" | "expired" => Ok(done.view(None)),
            s => Err(self.refusal(&done, s)),
        }
    }

    /// Extend every line of a held cart; its expiry becomes the first of theirs.
    pub async fn cart_extend(&self, id: &CartId, viewer: &Tenant) -> Result<Cart, InventoryError> {
        let rec = self.load_for(id, viewer).await?;
        if rec.status != "held" {
            return Err(self.refusal(&rec, rec.status));
        }
        let mut exp = i64::MAX;
        for (_, _, rid) in &rec.lines {
            let Some(rid) = rid.as_deref().and_then(|r| ReservationId::parse(r).ok()) else {
                return Err(InventoryError::CartState("incomplete"));
            };
            match self.extend(&rid, &Tenant::Operator).await {
                Ok(r) => exp = exp.min(expiry_ms(&r)),
                Err(InventoryError::ReservationState(_) | InventoryError::ReservationNotFound) => {
                    return Err(InventoryError::CartState("expired"))
                }
                Err(e) => return Err(e),
            }
        }
        let exp_s = exp.to_string();
        let moved = self
            .move_cart(id, ",held,", "held", false, None, &[("exp", &exp_s)])
            .await?;
        if !moved.0 {
            return Err(self.state_error(id, &moved.1).await);
        }
        let mut r = rec;
        r.exp = Some(exp);
        Ok(r.view(None))
    }

    /// The refusal of an action on a cart in state `status`.
    fn refusal(&self, rec: &Record, status: &str) -> InventoryError {
        match status {
            "failed" | "compensating" => rec.failure(),
            "pending" => InventoryError::CartState("pending"),
            "confirming" | "confirmed" => InventoryError::CartState("confirmed"),
            "releasing" | "released" => InventoryError::CartState("released"),
            "incomplete" => InventoryError::CartIncomplete {
                unsold: rec.bad.clone(),
            },
            _ => InventoryError::CartState("expired"),
        }
    }

    async fn state_error(&self, id: &CartId, status: &str) -> InventoryError {
        match self.load(id).await {
            Ok(Some(rec)) => self.refusal(&rec, status),
            Ok(None) => InventoryError::CartNotFound,
            Err(e) => e,
        }
    }

    /// The sweeper's step for carts: finish each cart whose deadline passed
    /// in a transitional state (its instance died, or gave up on Redis):
    /// a pending cart is compensated — afterwards it holds nothing — and a
    /// compensating, confirming or releasing one is rolled forward. Entries
    /// of carts in any other state (or gone) leave the list. Returns the
    /// carts finished.
    pub async fn sweep_carts(&self) -> Result<u64, InventoryError> {
        let mut finished = 0;
        // one bucket or cart whose master is down must not stop the others:
        // note the first error, go on, report it at the end
        let mut first_error = None;
        for list in keys::CART_LIST_BUCKETS {
            let due = match self.due_carts(list).await {
                Ok(due) => due,
                Err(e) => {
                    first_error.get_or_insert(e);
                    continue;
                }
            };
            for entry in due {
                match self.sweep_cart(list, &entry).await {
                    Ok(true) => finished += 1,
                    Ok(false) => {}
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        Ok(finished)
    }

    /// The entries of one bucket of the work list whose deadline passed
    /// (at most [`SWEEP_CARTS`]), by this machine's clock: a rough cut,
    /// each is judged again on its cart master's clock (`sweep_cart`).
    async fn due_carts(&self, list: &str) -> Result<Vec<String>, InventoryError> {
        let now = super::now_ms();
        self.nodes
            .client_for_key(list)
            .zrangebyscore(list, "-inf", now, false, Some((0, SWEEP_CARTS)))
            .await
            .map_err(|e| self.err(e))
    }

    /// One due entry of the work list; true when a cart was finished.
    async fn sweep_cart(&self, list: &str, entry: &str) -> Result<bool, InventoryError> {
        let Ok(id) = CartId::parse(entry) else {
            let _: i64 = self
                .nodes
                .client_for_key(list)
                .zrem(list, entry)
                .await
                .map_err(|e| self.err(e))?;
            return Ok(false);
        };
        let Some(rec) = self.load(&id).await? else {
            self.unpend(&id).await;
            return Ok(false);
        };
        if !matches!(
            rec.status,
            "pending" | "compensating" | "confirming" | "releasing"
        ) {
            self.unpend(&id).await;
            return Ok(false);
        }
        // judged on the cart's own master's clock, as cart_move judges it
        let there = self.redis_now_ms(&keys::cart(&id)).await?;
        if rec.deadline > there {
            let _ = self.pend(&id, rec.deadline).await?;
            return Ok(false);
        }
        match rec.status {
            "pending" => {
                let moved = self
                    .move_cart(
                        &id,
                        ",pending,",
                        "compensating",
                        true,
                        Some(self.settings.cart_saga_ms),
                        &[("why", "abandoned")],
                    )
                    .await?;
                if !moved.0 {
                    return Ok(false);
                }
                tracing::info!(cart = %id, "a cart its instance left pending is given back");
                let rec = self.load(&id).await?.unwrap_or(rec);
                self.compensate(&rec, rec.lines.len()).await?;
                self.metrics.cart("abandoned");
            }
            "compensating" => self.compensate(&rec, rec.lines.len()).await?,
            "confirming" => match self.finish_confirm(&rec).await {
                Ok(_)
                | Err(InventoryError::CartState(_) | InventoryError::CartIncomplete { .. }) => {}
                Err(e) => return Err(e),
            },
            _ => match self.finish_release(&rec).await {
                Ok(_)
                | Err(InventoryError::CartState(_) | InventoryError::CartIncomplete { .. }) => {}
                Err(e) => return Err(e),
            },
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cart_claim_matches_only_its_own_body() {
        let id = CartId::parse("0123456789abcdef0123456789abcdef").unwrap();
        let body = claim_body(&id, "u\nA:1,B:2");
        assert_eq!(parse_claim(&body, "u\nA:1,B:2"), Some(id));
        assert_eq!(parse_claim(&body, "u\nA:1,B:3"), None);
        assert_eq!(parse_claim(&body, "u\nA:1"), None);
        // a reservation's claim body is never a cart's
        assert_eq!(parse_claim("cart\n1:u\nk:4", "u\nA:1"), None);
        assert_eq!(parse_claim("#cart\nzz\nu\nA:1", "u\nA:1"), None);
    }

    #[test]
    fn a_cart_goes_to_the_bucket_of_its_first_hex_digit() {
        for (i, b) in keys::CART_LIST_BUCKETS.iter().enumerate() {
            let id = CartId::parse(&format!("{i:x}").repeat(32)).unwrap();
            assert_eq!(keys::cart_list(&id), *b);
            assert_eq!(*b, format!("fg:{{carts~{i:x}}}:pending"));
        }
    }

    #[test]
    fn line_tokens_differ_by_line_and_cart() {
        let a = CartId::random();
        let b = CartId::random();
        assert_ne!(line_token(&a, 0), line_token(&a, 1));
        assert_ne!(line_token(&a, 0), line_token(&b, 0));
        assert_eq!(line_token(&a, 3), line_token(&a, 3));
    }
}
