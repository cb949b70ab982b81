//! Redis key layout. Pure functions, no I/O.
//!
//! Every key one script touches carries the shard's hash tag `{SKU#s}`, so a
//! script never crosses slots (no `CROSSSLOT` on Redis Cluster) and the shards
//! of one SKU hash to different slots, so they can live on different masters.
//!
//! | key                       | type   | what                                              |
//! |---------------------------|--------|---------------------------------------------------|
//! | `fg:{SKU}:meta`           | hash   | shard count, shard tags, loaded_at (cached)       |
//! | `fg:skus`                 | set    | every preloaded SKU (the sweeper's list)           |
//! | `fg:{SKU#s}:stock`        | string | units available on shard s (never negative)       |
//! | `fg:{SKU#s}:books`        | hash   | initial, held, sold, xin, xout                     |
//! | `fg:{SKU#s}:holds`        | zset   | reservation id → deadline (ms): the expiry list   |
//! | `fg:layout`               | string | Redis's data layout (`DATA_LAYOUT`)               |
//! | `fg:{SKU#s}:r:<rid>`      | string | the reservation (lua/lib.lua); also the key's     |
//! |                           |        | verdict here: `<rid>` = `SKU.s.<claim's token>`;   |
//! |                           |        | or the key's walk-on marker `M|<fp>` (layout 5)   |
//! | `fg:{SKU#s}:idem:<key>`   | string | `M|<fp>` or `R|<rid>|<fp>` for a key with no token |
//! |                           |        | (promoter; layout 2); `M` of layout 3, still read  |
//! |                           |        | (`<key>`: always a `ScopedKey`, domain.rs)         |
//! | `fg:{SKU#s}:events`       | stream | outbox of every stock change (for the ledger)     |
//! |                           |        | (a reserve.lua call's holds: one `held` entry)     |
//! | `fg:{SKU#s}:xfers`        | hash   | transfers out of this shard not yet applied       |
//! | `fg:{SKU#s}:xin`          | zset   | transfer ids applied to this shard (a day)        |
//! | `fg:{claim~H}:<id>`       | string | a key's claim: `<sku>\n<fp>\nk:..\nt:<token>`, its |
//! |                           |        | first request; on one server then `\0<rid>|<record>`|
//! |                           |        | (the hold that request made, layout 6); `<id>`: 16 |
//! |                           |        | hex of SipHash(`fg:claimkey`, key), H its first    |
//! | `fg:claimkey`             | string | the store's claim hash key (32 hex; [`CLAIM_SECRET`]) |
//! | `fg:{idem~NN}:<key>`      | string | a claim of layout 5 or before (migrate-layout      |
//! |                           |        | moves it to `fg:{claim~H}:<id>`; none read it)     |
//! | `fg:{cap@S:SKU:<user>}`   | hash   | purchase cap: total, k:<key> → qty per reservation; |
//! |                           |        | S the storefront (`fg:{cap:SKU:<user>}` without one) |
//! | `fg:{SKU#s}:wlopen`       | string | gate: present while the SKU's waitlist has waiters |
//! | `fg:{SKU#s}:keys`         | set    | idempotency keys of the shard's live and sold holds |
//! | `fg:{wl:SKU}:…`           | …      | the waitlist: queue, stream, tickets (waitlist.rs) |
//! | `fg:{carts~X}:c:<id>`     | hash   | a cart: status, owner, user, lines, their holds (cart.rs); |
//! |                           |        | X = the cart id's first hex digit: 16 buckets        |
//! | `fg:{carts~X}:pending`    | zset   | carts in a transitional state → deadline (the sweeper's) |
//! | `fg:{carts~X}:events`     | stream | outbox of the bucket's cart state changes (the ledger's) |
//! | `fg:{wl:SKU}:rate`        | hash   | tickets promoted per second, last 60 s (lib.lua)  |

use crate::domain::{ReservationId, ScopedKey, Sku};

/// The keys of one shard of one SKU.
#[derive(Clone, Debug)]
pub struct ShardKeys {
    prefix: String,
}

/// The hash tag of shard `shard` of `sku` unless placement chose another
/// (Redis Cluster: tags picked so the shards land on different masters; the
/// chosen tags are stored in the SKU's meta).
pub fn default_tag(sku: &Sku, shard: u16) -> String {
    format!("{sku}#{shard}")
}

impl ShardKeys {
    /// The keys of the shard whose hash tag is `tag` (without braces).
    pub fn new(tag: &str) -> ShardKeys {
        ShardKeys {
            prefix: format!("fg:{{{tag}}}:"),
        }
    }

    /// `fg:{tag}:`, the start of every key of the shard.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    pub fn stock(&self) -> String {
        [self.prefix.as_str(), "stock"].concat()
    }
    pub fn books(&self) -> String {
        [self.prefix.as_str(), "books"].concat()
    }
    pub fn holds(&self) -> String {
        [self.prefix.as_str(), "holds"].concat()
    }
    pub fn events(&self) -> String {
        [self.prefix.as_str(), "events"].concat()
    }
    pub fn xfers(&self) -> String {
        [self.prefix.as_str(), "xfers"].concat()
    }
    /// Purchase-cap give-backs owed for holds that ended here without a
    /// sale (expired by the sweeper, settled by reconcile): fields
    /// `<buyer>\n<idempotency key>`, drained by the sweeper (`lua/expire.lua`).
    pub fn capback(&self) -> String {
        [self.prefix.as_str(), "capback"].concat()
    }
    /// The shard's live holds of more than one unit: rid -> qty
    /// (`lua/lib.lua`, `live_of`), so the sweeper can return a due hold whose
    /// record vanished (no field: 1 unit).
    pub fn live(&self) -> String {
        [self.prefix.as_str(), "live"].concat()
    }
    /// Transfers out of this shard that were completed: transfer id ->
    /// completion time (ms), kept while a resend of `transfer_out` is possible.
    pub fn xdone(&self) -> String {
        [self.prefix.as_str(), "xdone"].concat()
    }
    /// Transfer ids applied to this shard (`:xin`, a zset: not the books'
    /// `xin` field, which counts the units).
    pub fn applied_transfers(&self) -> String {
        [self.prefix.as_str(), "xin"].concat()
    }
    /// The waitlist gate: present while the SKU's waitlist has waiters.
    pub fn wlopen(&self) -> String {
        [self.prefix.as_str(), "wlopen"].concat()
    }
    /// The idempotency keys of the shard's live and sold holds (read by the
    /// sold-out fast path; a key leaves it when its hold ends unsold).
    pub fn reserved_keys(&self) -> String {
        [self.prefix.as_str(), "keys"].concat()
    }
    pub fn idem(&self, key: &ScopedKey) -> String {
        [self.prefix.as_str(), "idem:", key.as_str()].concat()
    }
    /// Prefix of reservation records; the expiry script appends the id.
    pub fn record_prefix(&self) -> String {
        [self.prefix.as_str(), "r:"].concat()
    }
    pub fn record(&self, rid: &ReservationId) -> String {
        [self.prefix.as_str(), "r:", &rid.to_string()].concat()
    }
}

/// The keys of a SKU's waitlist: one slot, `{wl:SKU}`.
#[derive(Clone, Debug)]
pub struct WaitKeys {
    prefix: String,
}

impl WaitKeys {
    pub fn new(sku: &Sku) -> WaitKeys {
        WaitKeys {
            prefix: format!("fg:{{wl:{sku}}}:"),
        }
    }
    pub fn queue(&self) -> String {
        [self.prefix.as_str(), "queue"].concat()
    }
    pub fn stream(&self) -> String {
        [self.prefix.as_str(), "stream"].concat()
    }
    pub fn users(&self) -> String {
        [self.prefix.as_str(), "users"].concat()
    }
    pub fn idem(&self, key: &ScopedKey) -> String {
        [self.prefix.as_str(), "idem:", key.as_str()].concat()
    }
    pub fn seq(&self) -> String {
        [self.prefix.as_str(), "seq"].concat()
    }
    pub fn exp(&self) -> String {
        [self.prefix.as_str(), "exp"].concat()
    }
    pub fn state(&self) -> String {
        [self.prefix.as_str(), "state"].concat()
    }
    pub fn lease(&self) -> String {
        [self.prefix.as_str(), "lease"].concat()
    }
    /// The promotion rate's one-second buckets (lua/lib.lua, `wl_rate_count`).
    pub fn rate(&self) -> String {
        [self.prefix.as_str(), "rate"].concat()
    }
    /// The fair draw's state (hash: `status` closed|drawn, `tickets`,
    /// `digest`, `seed` once revealed, `closed_at`, `drawn_at`, `applied`).
    pub fn draw(&self) -> String {
        [self.prefix.as_str(), "draw"].concat()
    }
    /// The draw's secret seed (64 hex), written once when the SKU is first
    /// loaded with `opens_at`; read by the draw only, never by an API.
    pub fn seed(&self) -> String {
        [self.prefix.as_str(), "seed"].concat()
    }
    pub fn ticket_prefix(&self) -> String {
        [self.prefix.as_str(), "t:"].concat()
    }
    pub fn ticket(&self, ticket: &str) -> String {
        format!("{}t:{ticket}", self.prefix)
    }
}

/// The data layout this version writes in a SKU's meta (`layout`, beside
/// the shard count `shard_count`; the store's is [`STORE_LAYOUT`]). Layout 1,
/// every version before 2, kept the count in `shards`, the only field those
/// versions read: a meta of layout 2 or later has no such field, so such an
/// instance answers its SKU as unknown instead of misreading what this
/// version writes (`lua/meta_upgrade.lua`). Layout 3: a hold's verdict is
/// its record, named by the token in the key's claim (no `R` verdict key;
/// `lua/reserve.lua`); a layout-2 instance refuses a layout-3 meta (503). A
/// meta of a later layout is refused here.
pub const LAYOUT: &str = "3";

/// The `layout` of a SKU meta with a sale window (`opens_at`/`closes_at`,
/// docs/fair-draw.md): layout 3 plus the window. An instance of layout 3
/// does not know windows and would sell before `opens_at`: it refuses a
/// meta whose layout is not its own (503 for that SKU only), so across a
/// rolling upgrade only SKUs without a window are served by old instances.
pub const LAYOUT_WINDOW: &str = "4";

/// The data layout this version writes in Redis's [`DATA_LAYOUT`] (the
/// store's; a SKU's meta keeps [`LAYOUT`] or [`LAYOUT_WINDOW`], the
/// numbers sharing one sequence). Layout 5: the walk-on verdict of a key
/// with a token is a marker `M|<fp>` at its record key `r:<SKU.s.token>`,
/// not at `idem:<key>`, and a hold whose claim `claim.lua` has just made
/// new is written with NX without reading the verdicts (`lua/reserve.lua`).
/// A layout-3 instance would misread the marker and, beside a layout-5
/// one, could hold where that one's walk moved on: it refuses a store of
/// layout 5; a layout-5 instance reads everything layout 3 wrote.
/// Layout 6: a key's claim is named by a keyed hash of the key,
/// `fg:{claim~H}:<16 hex>` ([`ClaimHasher::claim`], the store's
/// [`CLAIM_SECRET`]), not `fg:{idem~NN}:<key>` ([`idem_global`]), and on one
/// Redis server the record of the hold its first request made rides in the
/// claim after a NUL (`lua/lib.lua`; a later step's record, a cart line's,
/// and every record on a cluster stay at `r:<rid>`). A layout-5 instance
/// would look for claims under the old names and hold a retried key a
/// second time: it refuses a store of layout 6. This version reads every
/// record and verdict layouts 2 to 5 wrote (records at `r:<rid>`, a claim's
/// old token), but finds their claims only at their new names: it refuses
/// a store of layout 2, 3 or 5 until `flashgate migrate-layout` has renamed
/// them (`Inventory::migrate_layout`), and a store of layout 6 without a
/// valid claim key (docs/UPGRADING.md).
pub const STORE_LAYOUT: &str = "6";

/// The store layouts `flashgate migrate-layout` upgrades from (none: layout 2).
pub const STORE_LAYOUTS_BEFORE: [&str; 2] = ["3", "5"];

/// Redis's data layout, one string for the whole store: an instance that
/// finds one it does not know refuses to serve (`/readyz` and reserves
/// 503); `flashgate migrate-layout` writes it (docs/UPGRADING.md). Absent on
/// a store a layout-2 version wrote.
pub const DATA_LAYOUT: &str = "fg:layout";

pub fn meta(sku: &Sku) -> String {
    format!("fg:{{{sku}}}:meta")
}

pub const SKUS: &str = "fg:skus";

/// A buyer's purchase-cap counter for one SKU: a slot of its own, so the cap
/// holds across the SKU's shards. A buyer is its storefront's: the user ids
/// of storefront `scope` (its keys' scope, `ScopedKey::owner`) are counted
/// at `fg:{cap@<scope>:SKU:<user>}`, so another storefront that names a
/// buyer alike (by chance, or to use up the cap of that storefront's buyer)
/// counts apart. Without a scope (no keys configured) `fg:{cap:SKU:<user>}`,
/// as every version wrote before; the two forms never meet (`cap@` against
/// `cap:`).
pub fn cap(sku: &Sku, scope: &str, user: &str) -> String {
    if scope.is_empty() {
        format!("fg:{{cap:{sku}:{user}}}")
    } else {
        format!("fg:{{cap@{scope}:{sku}:{user}}}")
    }
}

/// Buckets of cross-SKU idempotency records (see [`idem_global`]). 16: at
/// 256 requests in flight, 64 buckets left claims nearly unbatched (0.79
/// script calls per hold in all, flashgate 38-40 µs of CPU per hold); 16 gave
/// 0.32 calls and 32-34 µs (bench/README.md).
pub const IDEM_BUCKETS: u64 = 16;

/// The cross-SKU idempotency record of `key` and its bucket's hash tag, as
/// data layout 5 and earlier named it (since layout 6: [`ClaimHasher::claim`];
/// `flashgate migrate-layout` moves the old ones). The
/// records are spread over [`IDEM_BUCKETS`] hash tags — enough slots to spread
/// over a cluster's masters — so that the claims of one bucket that arrive
/// together go to Redis as one `claim.lua` call.
pub fn idem_global(key: &ScopedKey) -> (String, String) {
    let bucket = idem_bucket(key);
    let record = ["fg:{", bucket, "}:", key.as_str()].concat();
    (bucket.to_owned(), record)
}

/// A cart's record (`lua/cart_begin.lua`): `fg:{carts~X}:c:<id>`, in the
/// slot of its bucket ([`cart_bucket`]), so that the script that moves it
/// also appends the move to the bucket's outbox stream ([`cart_events`]) in
/// the same atomic step, on one master.
pub fn cart(id: &crate::domain::CartId) -> String {
    ["fg:{carts~", CART_HEX[cart_bucket(id)], "}:c:", id.as_str()].concat()
}

/// The 16 cart buckets' tags' digits.
const CART_HEX: [&str; 16] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "a", "b", "c", "d", "e", "f",
];

/// The carts in a transitional state, by deadline (`lua/cart_pend.lua`):
/// 16 buckets `fg:{carts~X}:pending`, X the cart id's first hex digit, so
/// on a cluster they spread over the masters and a master down stops only
/// the carts of its buckets.
pub const CART_LIST_BUCKETS: [&str; 16] = [
    "fg:{carts~0}:pending",
    "fg:{carts~1}:pending",
    "fg:{carts~2}:pending",
    "fg:{carts~3}:pending",
    "fg:{carts~4}:pending",
    "fg:{carts~5}:pending",
    "fg:{carts~6}:pending",
    "fg:{carts~7}:pending",
    "fg:{carts~8}:pending",
    "fg:{carts~9}:pending",
    "fg:{carts~a}:pending",
    "fg:{carts~b}:pending",
    "fg:{carts~c}:pending",
    "fg:{carts~d}:pending",
    "fg:{carts~e}:pending",
    "fg:{carts~f}:pending",
];

/// The outbox streams of the carts' state changes, one per bucket
/// (`cart_begin.lua`, `cart_move.lua` append; the ledger writer drains a
/// fixed, known set of 16).
pub const CART_EVENT_STREAMS: [&str; 16] = [
    "fg:{carts~0}:events",
    "fg:{carts~1}:events",
    "fg:{carts~2}:events",
    "fg:{carts~3}:events",
    "fg:{carts~4}:events",
    "fg:{carts~5}:events",
    "fg:{carts~6}:events",
    "fg:{carts~7}:events",
    "fg:{carts~8}:events",
    "fg:{carts~9}:events",
    "fg:{carts~a}:events",
    "fg:{carts~b}:events",
    "fg:{carts~c}:events",
    "fg:{carts~d}:events",
    "fg:{carts~e}:events",
    "fg:{carts~f}:events",
];

/// The bucket (0..16) of cart `id`: its first hex digit.
pub fn cart_bucket(id: &crate::domain::CartId) -> usize {
    let digit = id.as_str().as_bytes().first().copied().unwrap_or(b'0');
    usize::from(match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        _ => 0,
    })
}

/// The work-list bucket of cart `id`.
pub fn cart_list(id: &crate::domain::CartId) -> &'static str {
    CART_LIST_BUCKETS[cart_bucket(id)]
}

/// The outbox stream of cart `id`'s bucket.
pub fn cart_events(id: &crate::domain::CartId) -> &'static str {
    CART_EVENT_STREAMS[cart_bucket(id)]
}

/// The store's claim hash key (32 hex digits, 128 bits: SipHash-1-3's two
/// keys), made once with the store (`SET NX`, data layout 6) and read by
/// every instance, so that every instance names a key's claim alike, and a
/// client, who cannot compute the hash, cannot aim two keys at one claim
/// (nor a key at another's). Losing it loses every claim's name: an
/// instance refuses a layout-6 store without it (`check_data_layout`).
pub const CLAIM_SECRET: &str = "fg:claimkey";

/// Names the claims of idempotency keys from the store's [`CLAIM_SECRET`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClaimHasher {
    k0: u64,
    k1: u64,
}

/// A key's claim: its bucket's hash tag (`claim~H`, 16 buckets: the calls of
/// `claim.lua` batch per bucket), its record's name and its 64-bit id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyClaim {
    pub bucket: &'static str,
    pub record: String,
    pub id: [u8; 8],
}

impl KeyClaim {
    /// A token for the key's holds that names this claim: the claim's id,
    /// then 64 random bits (so every claim of a key reused after its claim
    /// expired gets its own reservation ids). A reservation id
    /// `SKU.s.<token>` so names the claim (`lua/lib.lua`, rec_load).
    pub fn token(&self) -> uuid::Uuid {
        let mut b = *uuid::Uuid::new_v4().as_bytes();
        b[..8].copy_from_slice(&self.id);
        uuid::Uuid::from_bytes(b)
    }
}

impl ClaimHasher {
    /// A new random key, as stored at [`CLAIM_SECRET`].
    pub fn random_hex() -> String {
        uuid::Uuid::new_v4().simple().to_string()
    }

    /// The key stored at [`CLAIM_SECRET`]: 32 hex digits.
    pub fn parse(hex: &str) -> Option<ClaimHasher> {
        if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(ClaimHasher {
            k0: u64::from_str_radix(&hex[..16], 16).ok()?,
            k1: u64::from_str_radix(&hex[16..], 16).ok()?,
        })
    }

    /// The claim of `key`: `fg:{claim~H}:<16 hex>`.
    pub fn claim(&self, key: &ScopedKey) -> KeyClaim {
        use std::hash::Hasher;
        let mut h = siphasher::sip::SipHasher13::new_with_keys(self.k0, self.k1);
        h.write(key.as_str().as_bytes());
        claim_of_id(h.finish().to_be_bytes())
    }
}

/// The claim a token names: the one whose id is the token's first 8 bytes
/// (`KeyClaim::token`; `lua/lib.lua`'s claim_of, which reads a record's).
pub fn claim_of_token(token: &uuid::Uuid) -> KeyClaim {
    let mut id = [0u8; 8];
    id.copy_from_slice(&token.as_bytes()[..8]);
    claim_of_id(id)
}

fn claim_of_id(id: [u8; 8]) -> KeyClaim {
    const BUCKETS: [&str; 16] = [
        "claim~0", "claim~1", "claim~2", "claim~3", "claim~4", "claim~5", "claim~6", "claim~7",
        "claim~8", "claim~9", "claim~a", "claim~b", "claim~c", "claim~d", "claim~e", "claim~f",
    ];
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut hex = [0u8; 16];
    for (i, b) in id.iter().enumerate() {
        hex[2 * i] = DIGITS[usize::from(b >> 4)];
        hex[2 * i + 1] = DIGITS[usize::from(b & 15)];
    }
    let bucket = BUCKETS[usize::from(id[0] >> 4)];
    // (the 16 digits are ASCII by construction)
    let hex = std::str::from_utf8(&hex).unwrap_or_default();
    KeyClaim {
        bucket,
        record: ["fg:{", bucket, "}:", hex].concat(),
        id,
    }
}

/// The record of [`idem_global`] alone: a claim's name before data layout 6
/// (`flashgate migrate-layout` finds the old claims by it).
pub fn idem_record(key: &ScopedKey) -> String {
    ["fg:{", idem_bucket(key), "}:", key.as_str()].concat()
}

/// `idem~NN`: the hash tag of `key`'s bucket.
fn idem_bucket(key: &ScopedKey) -> &'static str {
    const BUCKETS: [&str; IDEM_BUCKETS as usize] = [
        "idem~00", "idem~01", "idem~02", "idem~03", "idem~04", "idem~05", "idem~06", "idem~07",
        "idem~08", "idem~09", "idem~10", "idem~11", "idem~12", "idem~13", "idem~14", "idem~15",
    ];
    BUCKETS[(key.stable_hash() % IDEM_BUCKETS) as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shard_key_shares_one_hash_tag() {
        let sku = Sku::parse("hot-1").unwrap();
        let k = ShardKeys::new(&default_tag(&sku, 2));
        for key in [
            k.stock(),
            k.books(),
            k.holds(),
            k.events(),
            k.xfers(),
            k.applied_transfers(),
            k.capback(),
            k.live(),
            k.xdone(),
        ] {
            assert!(key.starts_with("fg:{hot-1#2}:"), "{key}");
        }
        assert_ne!(
            ShardKeys::new(&default_tag(&sku, 1)).stock(),
            ShardKeys::new(&default_tag(&sku, 2)).stock()
        );
    }

    #[test]
    fn the_key_names_are_exactly_the_layout() {
        let sku = Sku::parse("hot-1").unwrap();
        let k = ShardKeys::new(&default_tag(&sku, 2));
        let key = ScopedKey::new(
            &crate::domain::Tenant::Anonymous,
            &crate::domain::IdempotencyKey::parse("k-9").unwrap(),
        );
        let rid = ReservationId::new(&sku, 2, &uuid::Uuid::nil());
        assert_eq!(k.stock(), "fg:{hot-1#2}:stock");
        assert_eq!(k.reserved_keys(), "fg:{hot-1#2}:keys");
        assert_eq!(k.live(), "fg:{hot-1#2}:live");
        assert_eq!(k.capback(), "fg:{hot-1#2}:capback");
        assert_eq!(k.idem(&key), "fg:{hot-1#2}:idem:k-9");
        assert_eq!(k.record_prefix(), "fg:{hot-1#2}:r:");
        assert_eq!(k.record(&rid), format!("fg:{{hot-1#2}}:r:{rid}"));
        let (bucket, record) = idem_global(&key);
        assert_eq!(record, format!("fg:{{{bucket}}}:k-9"));
        assert_eq!(
            bucket,
            format!("idem~{:02}", key.stable_hash() % IDEM_BUCKETS)
        );
        assert_eq!(idem_record(&key), record);
        assert!(bucket.starts_with("idem~") && bucket.len() == 7, "{bucket}");
        let w = WaitKeys::new(&sku);
        assert_eq!(w.queue(), "fg:{wl:hot-1}:queue");
        assert_eq!(w.idem(&key), "fg:{wl:hot-1}:idem:k-9");
        assert_eq!(w.ticket("t1"), "fg:{wl:hot-1}:t:t1");
        assert_eq!(w.rate(), "fg:{wl:hot-1}:rate");
    }
}
