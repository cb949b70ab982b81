//! The buyers: each client does one operation at a time, as a storefront
//! would for its shoppers. A reserve whose outcome is unknown (`info`) is
//! retried with the same Idempotency-Key, on either instance; a hold is
//! then confirmed, released, extended or abandoned (left to expire); some
//! buyers join the waitlist when sold out, poll their ticket, confirm a
//! promoted hold or cancel. Some buyers make a cart of 2–3 SKUs instead
//! (docs/carts.md), retried with its key like a reserve, then confirm,
//! release, extend or abandon it. Everything the clients learn
//! (reservation, ticket and cart ids, reserves and carts left unknown) is
//! kept for the resolve phase.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::client::{self, Api, Done, Op};
use crate::history::Kind;
use crate::stack::STOREFRONT;

/// A small deterministic generator (xorshift64*): a run's choices follow
/// from its seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

/// What the clients saw, for the resolve phase.
#[derive(Default)]
pub struct Seen {
    pub reservations: BTreeSet<String>,
    pub tickets: BTreeSet<String>,
    /// Reserves and cart creates whose last attempt had an unknown
    /// outcome, by key (cart keys start `ck-`, reserve keys `k-`).
    pub unknown_reserves: BTreeMap<String, Op>,
    /// Every cart id an answer named.
    pub carts: BTreeSet<String>,
    /// The resolve phase's read of each cart: status code and body.
    pub cart_reads: BTreeMap<String, (Option<u16>, serde_json::Value)>,
    /// (completion time, reservation id, operation) of every acknowledged
    /// write: a hold (reserve), confirm, release, extend.
    pub acks: Vec<(f64, String, &'static str)>,
    /// The last resolve-phase answer for each reservation: status code and
    /// the reservation's `status`.
    pub last_read: BTreeMap<String, (Option<u16>, Option<String>)>,
}

impl Seen {
    /// Note the ids an answer names.
    pub fn observe(&mut self, done: &Done) {
        if done.kind != Kind::Ok {
            return;
        }
        if let Some(rid) = done.str_field("reservation_id") {
            self.reservations.insert(rid);
        }
        if let Some(t) = done.str_field("ticket_id") {
            self.tickets.insert(t);
        }
        if let Some(c) = done.str_field("cart_id") {
            self.carts.insert(c);
            self.reservations.extend(client::cart_line_ids(&done.body));
        }
    }
}

pub struct Sale {
    pub api: Api,
    pub skus: Vec<String>,
    /// The share of buyers who make a cart instead of a single reserve.
    pub cart_share: f64,
    pub seen: Mutex<Seen>,
    pub stop: AtomicBool,
}

impl Sale {
    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        match self.seen.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Run `make(instance)` until its outcome is known or `tries` are spent;
    /// each attempt goes to a random instance.
    async fn with_retries(
        &self,
        p: u32,
        rng: &mut Rng,
        tries: u32,
        make: impl Fn(usize) -> Op,
    ) -> (Done, Op) {
        let n = self.api.bases.len() as u64;
        let mut attempt = 0;
        loop {
            let op = make(rng.below(n) as usize);
            let done = self.api.call(p, &op).await;
            {
                let mut seen = self.seen();
                seen.observe(&done);
                if done.kind == Kind::Ok && op.f != "get_reservation" && op.f != "get_ticket" {
                    let t = self.api.history.now_ms();
                    if let Some(rid) = done.str_field("reservation_id") {
                        seen.acks.push((t, rid, op.f));
                    }
                    // a cart's write is a write of each of its lines
                    let as_line = match op.f {
                        "create_cart" => Some("reserve"),
                        "confirm_cart" => Some("confirm"),
                        "release_cart" => Some("release"),
                        "extend_cart" => Some("extend"),
                        _ => None,
                    };
                    if let Some(f) = as_line {
                        for rid in client::cart_line_ids(&done.body) {
                            seen.acks.push((t, rid, f));
                        }
                    }
                }
            }
            attempt += 1;
            if done.kind != Kind::Info || attempt >= tries || self.stop.load(Ordering::Relaxed) {
                return (done, op);
            }
            tokio::time::sleep(Duration::from_millis(100 + rng.below(200))).await;
        }
    }

    /// One client until the sale stops.
    pub async fn client(self: Arc<Self>, p: u32, seed: u64) {
        let mut rng = Rng::new(seed ^ (u64::from(p) << 32) ^ 0xF1A5);
        let mut tickets: Vec<String> = Vec::new();
        let mut n = 0u64;
        while !self.stop.load(Ordering::Relaxed) {
            n += 1;
            if !tickets.is_empty() && rng.chance(0.3) {
                let i = rng.below(tickets.len() as u64) as usize;
                let t = tickets.swap_remove(i);
                self.ticket(p, &mut rng, t, &mut tickets).await;
            } else if rng.chance(self.cart_share) {
                self.cart_buyer(p, n, &mut rng).await;
            } else {
                self.buyer(p, n, &mut rng, &mut tickets).await;
            }
            if rng.chance(0.05) {
                let sku = self.skus[rng.below(self.skus.len() as u64) as usize].clone();
                let inst = rng.below(self.api.bases.len() as u64) as usize;
                self.api.call(p, &client::get_sku(&sku, inst, false)).await;
            }
            tokio::time::sleep(Duration::from_millis(10 + rng.below(60))).await;
        }
    }

    /// One buyer: a reserve (retried with its key), then what it does
    /// with the hold or ticket.
    async fn buyer(&self, p: u32, n: u64, rng: &mut Rng, tickets: &mut Vec<String>) {
        let sku = self.skus[rng.below(self.skus.len() as u64) as usize].clone();
        let user = format!("u{p}-{n}");
        let key = format!("k-{p}-{n}");
        let waitlist = rng.chance(0.3);
        let (done, op) = self
            .with_retries(p, rng, 4, |i| {
                client::reserve(&sku, &user, &key, i, waitlist, STOREFRONT)
            })
            .await;
        if done.kind == Kind::Info {
            self.seen().unknown_reserves.insert(key.clone(), op);
            return;
        }
        if done.kind != Kind::Ok {
            return;
        }
        if let Some(t) = done.str_field("ticket_id") {
            tickets.push(t);
            return;
        }
        let Some(rid) = done.str_field("reservation_id") else {
            return;
        };
        self.hold(p, rng, &rid).await;
    }

    /// What a buyer does with a hold: confirm (maybe after an extend),
    /// release, or extend and walk away, or just walk away (it expires).
    async fn hold(&self, p: u32, rng: &mut Rng, rid: &str) {
        tokio::time::sleep(Duration::from_millis(rng.below(300))).await;
        let roll = rng.below(100);
        if roll < 10 || (45..60).contains(&roll) {
            self.with_retries(p, rng, 3, |i| client::on_reservation("extend", rid, i))
                .await;
            tokio::time::sleep(Duration::from_millis(rng.below(500))).await;
        }
        let last = match roll {
            0..=44 => Some("confirm"),
            45..=64 => Some("release"),
            _ => None,
        };
        if let Some(f) = last {
            self.with_retries(p, rng, 3, |i| client::on_reservation(f, rid, i))
                .await;
        }
        if rng.chance(0.2) {
            self.with_retries(p, rng, 1, |i| {
                client::on_reservation("get_reservation", rid, i)
            })
            .await;
        }
    }

    /// A cart buyer: 2–3 distinct SKUs, 1–2 units each, retried with its
    /// key while the outcome is unknown; then confirm (maybe after an
    /// extend), release, or walk away (the lines expire together).
    async fn cart_buyer(&self, p: u32, n: u64, rng: &mut Rng) {
        let mut skus = self.skus.clone();
        let want = (2 + rng.below(2) as usize).min(skus.len());
        let mut lines = Vec::with_capacity(want);
        while lines.len() < want {
            let sku = skus.swap_remove(rng.below(skus.len() as u64) as usize);
            lines.push((sku, 1 + rng.below(2) as u32));
        }
        let user = format!("u{p}-{n}");
        let key = format!("ck-{p}-{n}");
        let (done, op) = self
            .with_retries(p, rng, 4, |i| {
                client::create_cart(&lines, &user, &key, i, STOREFRONT)
            })
            .await;
        if done.kind == Kind::Info {
            self.seen().unknown_reserves.insert(key, op);
            return;
        }
        let (Kind::Ok, Some(id)) = (done.kind, done.str_field("cart_id")) else {
            return;
        };
        // a client that lost the answer sends the same request again: the
        // key must replay the same cart
        // (retried and resolved like the first: an unknown answer must be
        // settled by a later one with the key, faults-checker.md)
        if rng.chance(0.15) {
            let (again, op) = self
                .with_retries(p, rng, 4, |i| {
                    client::create_cart(&lines, &user, &key, i, STOREFRONT)
                })
                .await;
            if again.kind == Kind::Info {
                self.seen().unknown_reserves.insert(key.clone(), op);
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.below(300))).await;
        let roll = rng.below(100);
        if roll < 10 {
            self.with_retries(p, rng, 3, |i| client::on_cart("extend_cart", &id, i))
                .await;
        }
        let last = match roll {
            0..=44 => Some("confirm_cart"),
            45..=64 => Some("release_cart"),
            _ => None,
        };
        if let Some(f) = last {
            self.with_retries(p, rng, 3, |i| client::on_cart(f, &id, i))
                .await;
        }
        if rng.chance(0.2) {
            self.with_retries(p, rng, 1, |i| client::on_cart("get_cart", &id, i))
                .await;
        }
    }

    /// Poll a ticket: a promoted one is confirmed or left to expire, a
    /// waiting one is cancelled or kept for later.
    async fn ticket(&self, p: u32, rng: &mut Rng, t: String, tickets: &mut Vec<String>) {
        let (done, _) = self
            .with_retries(p, rng, 1, |i| client::on_ticket("get_ticket", &t, i))
            .await;
        let status = done.str_field("status");
        match status.as_deref() {
            Some("promoted") => {
                if let Some(rid) = done.str_field("reservation_id") {
                    if rng.chance(0.6) {
                        self.with_retries(p, rng, 3, |i| {
                            client::on_reservation("confirm", &rid, i)
                        })
                        .await;
                    }
                }
            }
            Some("waiting") if rng.chance(0.3) => {
                self.with_retries(p, rng, 3, |i| client::on_ticket("cancel_ticket", &t, i))
                    .await;
            }
            Some("waiting") => tickets.push(t),
            _ if done.kind == Kind::Info => tickets.push(t),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_follows_its_seed() {
        let a: Vec<u64> = (0..5)
            .map({
                let mut r = Rng::new(7);
                move |_| r.next()
            })
            .collect();
        let b: Vec<u64> = (0..5)
            .map({
                let mut r = Rng::new(7);
                move |_| r.next()
            })
            .collect();
        assert_eq!(a, b);
        let mut r = Rng::new(8);
        assert_ne!(a[0], r.next());
        assert!((0..1000).all(|_| r.below(3) < 3));
    }
}
