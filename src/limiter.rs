//! Admission control: token buckets (governor's GCRA) that shed abusive
//! clients before they cost Redis anything. Three layers, checked in this
//! order: the whole instance, the storefront (API key), the buyer
//! (`user_id`); each can be turned off. A refusal carries the earliest time a
//! retry can pass, which becomes `Retry-After`.
//!
//! The buyer's layer only slows honest clients: `user_id` is the client's
//! word, and a bot that invents a fresh one per request has a fresh bucket
//! each time. The storefront's and the instance's layers are the ones no
//! client can step around, which is why they are on by default (sized in
//! docs/rate-limits.md).
//!
//! Buckets are per instance: N flashgate instances admit N× the configured
//! rate. (The purchase cap is global: it lives in Redis.)
//!
//! A buyer's bucket is keyed by a 64-bit keyed hash of its storefront's
//! scope and its `user_id` (each storefront's buyers are its own; SipHash
//! with this process's random key), not by the string: no
//! allocation per check and a smaller bucket map. Two buyers share a bucket
//! only if their hashes collide — for a million buyers the chance that any
//! two do is about 3e-8 — and a client cannot aim for it without the key.
//!
//! The bucket maps do not hash their keys again: a buyer's key already is a
//! keyed hash, and a storefront's is a hash of its id, which no client picks
//! ([`Spread`], [`crate::auth::Auth::bucket`]). SipHash over the key a second
//! time was ≈ 3 % of a sold-out answer's instructions (callgrind).
//!
//! The keyed maps grow with every distinct user; [`Limiter::prune`] drops the
//! buckets that are indistinguishable from fresh ones (`retain_recent`) and
//! returns the memory (`shrink_to_fit`). The app runs it on a timer.
//!
//! **Reload.** A reload that changes a layer's rate or burst
//! ([`Limiter::reconfigured`]) gives that layer fresh buckets: every client
//! starts the new quota with a full burst, as after a restart; a bucket's
//! state under the old quota means nothing under the new one (GCRA keeps a
//! time, not a count). A layer whose quota stays keeps its buckets, so a
//! reload that only adds a key hands no one a second burst. A storefront's
//! bucket is keyed by its id, not its key's position, so reordering or
//! adding keys moves no storefront onto another's bucket.

use std::hash::{BuildHasher, RandomState};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

type Keyed<K, C> =
    RateLimiter<K, DashMapStateStore<K, Spread>, C, NoOpMiddleware<<C as Clock>::Instant>>;
type Direct<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// A bucket: `rate` tokens per second, at most `burst` at once. A rate of 0
/// turns the layer off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bucket {
    pub rate_per_second: u32,
    pub burst: u32,
}

impl Bucket {
    fn quota(self) -> Option<Quota> {
        let rate = NonZeroU32::new(self.rate_per_second)?;
        let burst = NonZeroU32::new(self.burst).unwrap_or(rate);
        Some(Quota::per_second(rate).allow_burst(burst))
    }
}

/// Which layer refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Instance,
    Client,
    User,
}

/// A refusal: retry after `wait`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limited {
    pub scope: Scope,
    pub wait: Duration,
}

impl Limited {
    /// `Retry-After` in whole seconds, rounded up (never 0: a client told
    /// "0" would retry at once and be refused again).
    pub fn retry_after_secs(&self) -> u64 {
        let s = self.wait.as_secs() + u64::from(self.wait.subsec_nanos() > 0);
        s.max(1)
    }
}

/// The bucket maps' hasher: a key's 64 bits, spread by one multiplication
/// (Fibonacci hashing) so small storefront indices use the high bits that
/// the map picks its shard with. A buyer's key is already uniform.
#[derive(Clone, Copy, Default, Debug)]
pub struct Spread;

#[derive(Default)]
pub struct SpreadHasher(u64);

impl std::hash::Hasher for SpreadHasher {
    fn finish(&self) -> u64 {
        self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
    fn write(&mut self, bytes: &[u8]) {
        // not reached by u64/usize keys; any other key still hashes
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x100_0000_01B3);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
    fn write_usize(&mut self, n: usize) {
        self.0 ^= n as u64;
    }
}

impl BuildHasher for Spread {
    type Hasher = SpreadHasher;
    fn build_hasher(&self) -> SpreadHasher {
        SpreadHasher(0)
    }
}

/// The service's clock: the monotonic clock plus an offset that only a test
/// moves ([`AppClock::advance`], through `AppState::live`'s limiter's
/// [`Limiter::clock`]), so that a test of the running app sees its buckets
/// refill without sleeping. In the service the offset stays 0 (one relaxed
/// atomic load per check).
#[derive(Clone, Debug, Default)]
pub struct AppClock {
    ahead_nanos: Arc<AtomicU64>,
}

impl AppClock {
    /// Move this clock (and every clone of it) `by` ahead of the monotonic
    /// clock.
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .ahead_nanos
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_add(nanos))
            });
    }
}

impl Clock for AppClock {
    type Instant = Instant;

    fn now(&self) -> Instant {
        let now = Instant::now();
        let ahead = Duration::from_nanos(self.ahead_nanos.load(Ordering::Relaxed));
        now.checked_add(ahead).unwrap_or(now)
    }
}

/// The three layers, each shared (`Arc`) so that a reload keeps the state
/// of the layers whose quota it does not change.
pub struct Limiter<C: Clock + Clone = AppClock> {
    clock: C,
    /// The quotas this limiter was built with: instance, client, user.
    buckets: [Bucket; 3],
    instance: Option<Arc<Direct<C>>>,
    client: Option<Arc<Keyed<u64, C>>>,
    user: Option<Arc<Keyed<u64, C>>>,
    /// The key of the buyers' hashes (random per process, kept by a reload).
    user_hash: RandomState,
}

impl Limiter<AppClock> {
    pub fn new(instance: Bucket, client: Bucket, user: Bucket) -> Self {
        Self::with_clock(instance, client, user, AppClock::default())
    }
}

impl<C: Clock + Clone> Limiter<C> {
    /// With a clock of the caller's (a fake one in tests).
    pub fn with_clock(instance: Bucket, client: Bucket, user: Bucket, clock: C) -> Self {
        Limiter {
            buckets: [instance, client, user],
            instance: Self::direct(instance, &clock),
            client: Self::keyed(client, &clock),
            user: Self::keyed(user, &clock),
            user_hash: RandomState::new(),
            clock,
        }
    }

    /// The buckets' clock (a test moves the app's: [`AppClock::advance`]).
    pub fn clock(&self) -> &C {
        &self.clock
    }

    fn direct(b: Bucket, clock: &C) -> Option<Arc<Direct<C>>> {
        b.quota()
            .map(|q| Arc::new(RateLimiter::direct_with_clock(q, clock.clone())))
    }

    fn keyed(b: Bucket, clock: &C) -> Option<Arc<Keyed<u64, C>>> {
        b.quota().map(|q| {
            Arc::new(RateLimiter::dashmap_with_clock_and_hasher(
                q,
                clock.clone(),
                Spread,
            ))
        })
    }

    /// This limiter with new quotas, for a reload: a layer whose quota is
    /// unchanged shares this one's buckets, a changed one starts fresh (see
    /// the module's "Reload").
    pub fn reconfigured(&self, instance: Bucket, client: Bucket, user: Bucket) -> Self {
        let [i, c, u] = self.buckets;
        Limiter {
            buckets: [instance, client, user],
            instance: if i == instance {
                self.instance.clone()
            } else {
                Self::direct(instance, &self.clock)
            },
            client: if c == client {
                self.client.clone()
            } else {
                Self::keyed(client, &self.clock)
            },
            user: if u == user {
                self.user.clone()
            } else {
                Self::keyed(user, &self.clock)
            },
            user_hash: self.user_hash.clone(),
            clock: self.clock.clone(),
        }
    }

    fn refusal(&self, scope: Scope, not_until: governor::NotUntil<C::Instant>) -> Limited {
        Limited {
            scope,
            wait: not_until.wait_time_from(self.clock.now()),
        }
    }

    /// The instance-wide and per-storefront buckets (every `/v1/` request).
    pub fn check_client(&self, client: Option<u64>) -> Result<(), Limited> {
        if let Some(l) = &self.instance {
            l.check().map_err(|n| self.refusal(Scope::Instance, n))?;
        }
        if let (Some(l), Some(id)) = (&self.client, client) {
            l.check_key(&id)
                .map_err(|n| self.refusal(Scope::Client, n))?;
        }
        Ok(())
    }

    /// The bucket of buyer `user` of the storefront whose scope is `scope`
    /// (`Tenant::scope`; reserve requests). A buyer is its storefront's:
    /// another storefront that names a buyer alike, by chance or to use up
    /// that buyer's bucket, has a bucket of its own.
    pub fn check_user(&self, scope: &str, user: &str) -> Result<(), Limited> {
        if let Some(l) = &self.user {
            l.check_key(&self.user_hash.hash_one((scope, user)))
                .map_err(|n| self.refusal(Scope::User, n))?;
        }
        Ok(())
    }

    /// Buckets held in memory (users + storefronts).
    pub fn len(&self) -> usize {
        self.user.as_ref().map_or(0, |l| l.len()) + self.client.as_ref().map_or(0, |l| l.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forget buckets that are full again (a fresh bucket would behave the
    /// same) and give the memory back. Returns the buckets left.
    pub fn prune(&self) -> usize {
        if let Some(l) = &self.user {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Some(l) = &self.client {
            l.retain_recent();
            l.shrink_to_fit();
        }
        self.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    const OFF: Bucket = Bucket {
        rate_per_second: 0,
        burst: 0,
    };

    fn users(rate: u32, burst: u32) -> (Limiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let l = Limiter::with_clock(
            OFF,
            OFF,
            Bucket {
                rate_per_second: rate,
                burst,
            },
            clock.clone(),
        );
        (l, clock)
    }

    #[test]
    fn burst_then_refusal_with_the_time_to_wait() {
        let (l, clock) = users(2, 3);
        for _ in 0..3 {
            assert!(l.check_user("", "alice").is_ok());
        }
        let refused = l.check_user("", "alice").unwrap_err();
        assert_eq!(refused.scope, Scope::User);
        assert_eq!(
            refused.wait,
            Duration::from_millis(500),
            "2/s: one token every 500 ms"
        );
        assert_eq!(refused.retry_after_secs(), 1);
        // other users are not affected
        assert!(l.check_user("", "bob").is_ok());
        // after the wait, exactly one more passes
        clock.advance(Duration::from_millis(500));
        assert!(l.check_user("", "alice").is_ok());
        assert!(l.check_user("", "alice").is_err());
    }

    #[test]
    fn each_storefronts_buyers_have_buckets_of_their_own() {
        let (l, _clock) = users(1, 1);
        assert!(l.check_user("shop-a", "bob").is_ok());
        assert!(l.check_user("shop-a", "bob").is_err());
        // another storefront's "bob" is another buyer; so is the unscoped one
        assert!(l.check_user("shop-b", "bob").is_ok());
        assert!(l.check_user("", "bob").is_ok());
        // (and the split between scope and user is not the text's)
        assert!(l.check_user("shop-a", "bobx").is_ok());
        assert!(l.check_user("shop-ab", "ob").is_ok());
    }

    #[test]
    fn retry_after_rounds_up_and_is_never_zero() {
        let l = |ms| Limited {
            scope: Scope::User,
            wait: Duration::from_millis(ms),
        };
        assert_eq!(l(1).retry_after_secs(), 1);
        assert_eq!(l(0).retry_after_secs(), 1);
        assert_eq!(l(1000).retry_after_secs(), 1);
        assert_eq!(l(1001).retry_after_secs(), 2);
    }

    #[test]
    fn pruning_keeps_the_map_bounded() {
        let (l, clock) = users(10, 1);
        for i in 0..10_000 {
            assert!(l.check_user("", &format!("user-{i}")).is_ok());
        }
        assert_eq!(l.len(), 10_000);
        // still refilling: nothing may be forgotten yet (it would hand out a fresh burst)
        assert_eq!(l.prune(), 10_000);
        // once a bucket is full again it is indistinguishable from a new one
        // (governor keeps it one emission interval longer, to be safe)
        clock.advance(Duration::from_millis(250));
        assert_eq!(l.prune(), 0);
        assert!(l.is_empty());
    }

    #[test]
    fn a_reload_resets_only_the_layers_whose_quota_changed() {
        let clock = FakeRelativeClock::default();
        let b = |rate, burst| Bucket {
            rate_per_second: rate,
            burst,
        };
        let l = Limiter::with_clock(b(100, 100), b(1, 1), b(1, 1), clock.clone());
        assert!(l.check_client(Some(7)).is_ok());
        assert!(l.check_user("", "alice").is_ok());
        assert!(l.check_client(Some(7)).is_err());
        assert!(l.check_user("", "alice").is_err());
        // the user layer's quota changes, the client's does not
        let r = l.reconfigured(b(100, 100), b(1, 1), b(1, 2));
        assert_eq!(
            r.check_client(Some(7)).unwrap_err().scope,
            Scope::Client,
            "an unchanged layer keeps its buckets: no second burst"
        );
        assert!(
            r.check_user("", "alice").is_ok(),
            "a changed layer starts fresh"
        );
        assert!(r.check_user("", "alice").is_ok(), "with the new burst of 2");
        assert!(r.check_user("", "alice").is_err());
        // a layer turned off and on again starts fresh too
        let off = r.reconfigured(b(100, 100), OFF, b(1, 2));
        assert!(off.check_client(Some(7)).is_ok());
    }

    #[test]
    fn instance_and_client_layers() {
        let clock = FakeRelativeClock::default();
        let l = Limiter::with_clock(
            Bucket {
                rate_per_second: 100,
                burst: 3,
            },
            Bucket {
                rate_per_second: 1,
                burst: 2,
            },
            OFF,
            clock.clone(),
        );
        assert!(l.check_client(Some(0)).is_ok());
        assert!(l.check_client(Some(0)).is_ok());
        assert_eq!(l.check_client(Some(0)).unwrap_err().scope, Scope::Client);
        assert_eq!(l.check_client(Some(1)).unwrap_err().scope, Scope::Instance);
        clock.advance(Duration::from_secs(1));
        assert!(l.check_client(Some(1)).is_ok());
        assert!(l.check_user("", "anyone").is_ok(), "the user layer is off");
    }
}
