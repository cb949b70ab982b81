//! Domain types parsed at the edge. Nothing deeper than the HTTP layer and the
//! CLI handles raw strings: a `Sku`, `UserId`, `Qty`, `IdempotencyKey` or
//! `ReservationId` that exists has already been validated.

use std::fmt;

use sha2::{Digest, Sha256};

/// A stock-keeping unit. 1..=64 characters of `[A-Za-z0-9_-]`, so that it can
/// sit inside Redis key names and hash tags, and inside reservation ids,
/// without escaping.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sku(String);

impl Sku {
    pub const MAX_LEN: usize = 64;

    pub fn parse(s: &str) -> Result<Sku, String> {
        if s.is_empty() {
            return Err("sku must not be empty".into());
        }
        if s.len() > Self::MAX_LEN {
            return Err(format!("sku is longer than {} characters", Self::MAX_LEN));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("sku may contain only letters, digits, '-' and '_'".into());
        }
        Ok(Sku(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Sku {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The buyer, as the storefront names them. 1..=128 printable characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UserId(String);

impl UserId {
    pub const MAX_LEN: usize = 128;

    pub fn parse(s: &str) -> Result<UserId, String> {
        if s.trim().is_empty() {
            return Err("user_id must not be empty".into());
        }
        if s.len() > Self::MAX_LEN {
            return Err(format!("user_id is longer than {} bytes", Self::MAX_LEN));
        }
        if s.chars().any(char::is_control) {
            return Err("user_id must not contain control characters".into());
        }
        Ok(UserId(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Units asked for in one reservation: 1..=max (the configured per-request max).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Qty(u32);

impl Qty {
    pub fn parse(n: i64, max: u32) -> Result<Qty, String> {
        if n < 1 {
            return Err("qty must be at least 1".into());
        }
        if n > i64::from(max) {
            return Err(format!("qty must be at most {max}"));
        }
        // n is within 1..=max, which fits u32
        Ok(Qty(n as u32))
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

/// The client's `Idempotency-Key`: 1..=255 visible ASCII characters. No
/// space: [`ScopedKey`]'s namespaces rely on it. Redis sees it only inside
/// a [`ScopedKey`], in its owner's namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub const MAX_LEN: usize = 255;

    pub fn parse(s: &str) -> Result<IdempotencyKey, String> {
        if s.is_empty() {
            return Err("Idempotency-Key must not be empty".into());
        }
        if s.len() > Self::MAX_LEN {
            return Err(format!(
                "Idempotency-Key is longer than {} characters",
                Self::MAX_LEN
            ));
        }
        if !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("Idempotency-Key must be visible ASCII without spaces".into());
        }
        Ok(IdempotencyKey(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A storefront's stable name: the name given to its API key in the
/// configuration (`name:secret`), else derived from the secret (see
/// `auth.rs`). 1..=64 characters of `[A-Za-z0-9_-]`: never a space, which
/// [`ScopedKey`] relies on.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StorefrontId(std::sync::Arc<str>);

impl StorefrontId {
    pub const MAX_LEN: usize = 64;

    pub fn parse(s: &str) -> Result<StorefrontId, String> {
        if s.is_empty() || s.len() > Self::MAX_LEN {
            return Err(format!(
                "a storefront name has 1..={} characters",
                Self::MAX_LEN
            ));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("a storefront name may contain only letters, digits, '-' and '_'".into());
        }
        Ok(StorefrontId(s.into()))
    }

    /// The id of an unnamed key: `hash` as 16 hex digits.
    pub fn derived(hash: u64) -> StorefrontId {
        StorefrontId(format!("{hash:016x}").into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StorefrontId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whose idempotency keys, reservations and tickets a caller makes, and
/// which it may see (docs/tenancy.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tenant {
    /// A storefront: its own keys; it sees what it made, and what was made
    /// unscoped (before keys were scoped, or by an instance without keys).
    Storefront(StorefrontId),
    /// An admin key: keys of the operators' own scope; sees everything.
    Operator,
    /// `insecure_no_auth`, the one implicit storefront: unscoped keys (the
    /// layout of earlier versions); sees everything, as it may use `/admin/`.
    Anonymous,
}

/// The owner scope of flashgate's admin keys in a [`ScopedKey`]: not a
/// storefront name (`~` is refused there).
const OPERATOR_SCOPE: &str = "~";

impl Tenant {
    /// May this caller see a reservation or ticket whose owner scope is
    /// `owner` (see [`ScopedKey::owner`]; "" is unscoped)?
    pub fn sees(&self, owner: &str) -> bool {
        match self {
            Tenant::Storefront(id) => owner.is_empty() || owner == id.as_str(),
            Tenant::Operator | Tenant::Anonymous => true,
        }
    }

    /// The scope its new keys get ("" = unscoped).
    pub fn scope(&self) -> &str {
        match self {
            Tenant::Storefront(id) => id.as_str(),
            Tenant::Operator => OPERATOR_SCOPE,
            Tenant::Anonymous => "",
        }
    }

    /// What the Lua scripts that check ownership are passed: the scope a
    /// record must have (or be unscoped), or `*` for "any".
    pub fn lua_scope(&self) -> &str {
        match self {
            Tenant::Storefront(id) => id.as_str(),
            Tenant::Operator | Tenant::Anonymous => "*",
        }
    }
}

/// The idempotency key as flashgate stores it: the client's key in its
/// owner's namespace, or a key flashgate makes for itself. Every Redis name
/// and record that carries a key carries this form. The forms, by shape:
///
/// | form                       | made for                                  |
/// |----------------------------|-------------------------------------------|
/// | `<client key>`             | the implicit storefront (no auth): unscoped, the layout of earlier versions |
/// | `<scope> <client key>`     | a storefront (`<scope>` its id) or an admin key (`~`) |
/// | `<scope>  wl:<ticket>:<n>` | the waitlist promoter, for a ticket of `<scope>` ("" for an unscoped ticket) |
/// | `<scope>  cart:<id>:<i>`   | line `i` of cart `<id>` of `<scope>` (the cart saga, docs/carts.md) |
///
/// A client key is visible ASCII without spaces, and a scope has no space
/// either, so a client's key has at most one space and never two in a row:
/// no client value can produce a promoter's key (issue 17, finding 2), and
/// two storefronts' keys differ in their scope (finding 3). The owner of a
/// stored key is the text before its first space ("" when none).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ScopedKey(String);

impl ScopedKey {
    /// The client's `key` in `tenant`'s namespace.
    pub fn new(tenant: &Tenant, key: &IdempotencyKey) -> ScopedKey {
        let scope = tenant.scope();
        if scope.is_empty() {
            return ScopedKey(key.as_str().to_owned());
        }
        ScopedKey([scope, " ", key.as_str()].concat())
    }

    /// The promoter's key for attempt `attempt` of waitlist ticket `ticket`
    /// owned by `owner` (a scope as [`ScopedKey::owner`] answers it). An
    /// owner with a space (a corrupt ticket) is refused.
    pub fn promotion(owner: &str, ticket: &str, attempt: &str) -> Result<ScopedKey, String> {
        if owner.contains(' ') || ticket.contains(' ') || attempt.contains(' ') {
            return Err(format!("bad waitlist ticket {ticket:?} of {owner:?}"));
        }
        Ok(ScopedKey([owner, "  wl:", ticket, ":", attempt].concat()))
    }

    /// The key of line `line` of cart `cart` owned by `owner` (a scope as
    /// [`ScopedKey::owner`] answers it): every walk of the line, the
    /// saga's first and every resumed one, uses it, so they replay one hold.
    /// Two spaces, as the promoter's: no client key can take this form.
    pub fn cart_line(owner: &str, cart: &CartId, line: usize) -> Result<ScopedKey, String> {
        if owner.contains(' ') {
            return Err(format!("bad cart owner {owner:?}"));
        }
        let mut n = itoa::Buffer::new();
        Ok(ScopedKey(
            [owner, "  cart:", cart.as_str(), ":", n.format(line)].concat(),
        ))
    }

    /// The key whose stored form (as [`ScopedKey::as_str`] gave it, e.g.
    /// in the name of a claim of data layout 5 or earlier) is `stored`; None
    /// for "". For `flashgate migrate-layout` only, which renames the claims
    /// it finds in Redis (`Inventory::migrate_layout`): it checks no form,
    /// as the text was one of these keys when it was written. A request's
    /// key is always built with [`ScopedKey::new`] (or the promoter's and
    /// the cart's constructors), never from text.
    pub fn from_stored(stored: &str) -> Option<ScopedKey> {
        (!stored.is_empty()).then(|| ScopedKey(stored.to_owned()))
    }

    /// The owner scope of a stored key: "" when unscoped.
    pub fn owner_of(stored: &str) -> &str {
        stored.split_once(' ').map_or("", |(scope, _)| scope)
    }

    pub fn owner(&self) -> &str {
        Self::owner_of(&self.0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A short, non-reversible form for logs: keys are client secrets of a
    /// sort (whoever knows one can replay a reservation), so logs never carry
    /// a whole key.
    pub fn redacted(&self) -> String {
        let tail: String = self
            .0
            .chars()
            .rev()
            .take(4)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!("…{tail}")
    }

    /// A stable hash (FNV-1a), used to pick the key's first shard. Stable
    /// across processes and versions: every instance must walk the shards of
    /// one key in the same order.
    pub fn stable_hash(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.0.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h
    }
}

/// A reservation id: `<sku>.<shard>.<32 hex digits>`, the token of its
/// key's walk: on one Redis server (data layout 6) the first 16 digits are
/// the id of the key's claim, a keyed hash no client can compute, and the
/// last 16 random (62 bits of a UUID v4), so a hold's record is found in its
/// claim; elsewhere a UUID v4 (122 random bits). Either way ids are
/// unguessable. It carries its SKU and shard so confirm, release and extend
/// go straight to the right shard without a lookup. Clients treat it as
/// opaque.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ReservationId {
    sku: Sku,
    shard: u16,
    token: String,
}

impl ReservationId {
    pub fn new(sku: &Sku, shard: u16, token: &uuid::Uuid) -> ReservationId {
        ReservationId {
            sku: sku.clone(),
            shard,
            token: token.simple().to_string(),
        }
    }

    /// The text of `ReservationId::new(sku, shard, token)`, built directly
    /// (the reserve path formats one per shard it visits).
    pub fn text_of(sku: &Sku, shard: u16, token: &uuid::Uuid) -> String {
        let mut hex = [0u8; 32];
        let hex = token.simple().encode_lower(&mut hex);
        let mut shard_buf = itoa::Buffer::new();
        let shard = shard_buf.format(shard);
        let mut s = String::with_capacity(sku.as_str().len() + shard.len() + 34);
        for part in [sku.as_str(), ".", shard, ".", hex] {
            s.push_str(part);
        }
        s
    }

    pub fn parse(s: &str) -> Result<ReservationId, String> {
        let bad = || "malformed reservation id".to_string();
        let mut parts = s.rsplitn(3, '.');
        let token = parts.next().ok_or_else(bad)?;
        let shard = parts.next().ok_or_else(bad)?;
        let sku = parts.next().ok_or_else(bad)?;
        if token.len() != 32
            || !token
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(bad());
        }
        let shard: u16 = shard.parse().map_err(|_| bad())?;
        let sku = Sku::parse(sku).map_err(|_| bad())?;
        Ok(ReservationId {
            sku,
            shard,
            token: token.to_owned(),
        })
    }

    pub fn sku(&self) -> &Sku {
        &self.sku
    }

    pub fn shard(&self) -> u16 {
        self.shard
    }
}

impl fmt::Display for ReservationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.sku, self.shard, self.token)
    }
}

/// A cart id: 32 lowercase hex digits of a UUID v4 (122 random bits), so
/// unguessable; it names the cart's record `fg:{carts~X}:c:<id>` (X: its first digit).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CartId(String);

impl CartId {
    pub fn random() -> CartId {
        CartId(uuid::Uuid::new_v4().simple().to_string())
    }

    pub fn parse(s: &str) -> Result<CartId, String> {
        if s.len() != 32 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err("malformed cart id".into());
        }
        Ok(CartId(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CartId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One `api_keys` entry: its storefront and its secret. `name:secret` when
/// the text before the first `:` is a storefront name (else the whole entry
/// is the secret — a secret with a `:` in it needs a name in front).
pub fn api_key(entry: &str) -> (StorefrontId, &str) {
    if let Some((name, secret)) = entry.split_once(':') {
        if let Ok(id) = StorefrontId::parse(name) {
            return (id, secret);
        }
    }
    (derived_id(entry), entry)
}

/// The storefront of an unnamed secret: 16 hex digits of a SHA-256 with a
/// prefix of its own (so the id is no plain hash of the secret).
fn derived_id(secret: &str) -> StorefrontId {
    let digest = Sha256::new()
        .chain_update(b"flashgate storefront\0")
        .chain_update(secret.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    StorefrontId::derived(u64::from_be_bytes(first))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reservation_id_built_directly_is_the_formatted_one() {
        let sku = Sku::parse("tshirt-XL_2").unwrap();
        for shard in [0, 7, 15, 65_535] {
            let token = uuid::Uuid::new_v4();
            let text = ReservationId::text_of(&sku, shard, &token);
            assert_eq!(text, ReservationId::new(&sku, shard, &token).to_string());
            assert_eq!(ReservationId::parse(&text).unwrap().shard(), shard);
        }
    }

    #[test]
    fn sku_rules() {
        assert!(Sku::parse("tshirt-XL_2").is_ok());
        assert!(Sku::parse("").is_err());
        assert!(Sku::parse("a{b}").is_err());
        assert!(Sku::parse("a.b").is_err());
        assert!(Sku::parse(&"x".repeat(65)).is_err());
    }

    #[test]
    fn qty_bounds() {
        assert!(Qty::parse(0, 10).is_err());
        assert!(Qty::parse(-3, 10).is_err());
        assert!(Qty::parse(11, 10).is_err());
        assert_eq!(Qty::parse(10, 10).map(Qty::get), Ok(10));
    }

    #[test]
    fn reservation_id_round_trip() {
        let sku = Sku::parse("sku-1").unwrap();
        let id = ReservationId::new(&sku, 3, &uuid::Uuid::new_v4());
        let parsed = ReservationId::parse(&id.to_string()).unwrap();
        assert_eq!(parsed, id);
        assert_eq!(parsed.shard(), 3);
        assert!(ReservationId::parse("sku-1.3.nothex").is_err());
        assert!(ReservationId::parse("nonsense").is_err());
        assert!(ReservationId::parse("bad{sku.1.0123456789abcdef0123456789abcdef").is_err());
    }

    #[test]
    fn idempotency_key_rules_and_redaction() {
        assert!(IdempotencyKey::parse("").is_err());
        assert!(IdempotencyKey::parse("has space").is_err());
        let k = IdempotencyKey::parse("order-123456789").unwrap();
        let scoped = ScopedKey::new(&Tenant::Anonymous, &k);
        assert_eq!(scoped.redacted(), "…6789");
        assert_eq!(
            scoped.stable_hash(),
            ScopedKey::new(&Tenant::Anonymous, &k.clone()).stable_hash()
        );
    }

    fn shop(name: &str) -> Tenant {
        Tenant::Storefront(StorefrontId::parse(name).unwrap())
    }

    #[test]
    fn scoped_keys_keep_owners_apart_and_no_client_key_is_a_promoters() {
        let k = IdempotencyKey::parse("order-1").unwrap();
        let a = ScopedKey::new(&shop("shop-a"), &k);
        let b = ScopedKey::new(&shop("shop-b"), &k);
        let anon = ScopedKey::new(&Tenant::Anonymous, &k);
        let op = ScopedKey::new(&Tenant::Operator, &k);
        assert_eq!(a.as_str(), "shop-a order-1");
        assert_eq!(anon.as_str(), "order-1", "unscoped: the earlier layout");
        assert_eq!(op.as_str(), "~ order-1");
        assert_eq!(
            [a.owner(), b.owner(), anon.owner(), op.owner()],
            ["shop-a", "shop-b", "", "~"]
        );
        // a storefront named like another's key, or a key that looks scoped
        let tricky = ScopedKey::new(
            &Tenant::Anonymous,
            &IdempotencyKey::parse("shop-a").unwrap(),
        );
        assert_eq!(tricky.owner(), "", "an unscoped key has no owner");
        assert!(StorefrontId::parse("~").is_err());
        assert!(StorefrontId::parse("a b").is_err());
        // the promoter's key of a ticket, for every owner: no client key of
        // any tenant is it, however the client spells it
        for owner in ["", "shop-a", "~"] {
            let p = ScopedKey::promotion(owner, "drop.w.0123", "0").unwrap();
            assert_eq!(p.owner(), owner);
            assert!(p.as_str().contains("  "), "{p:?}");
            for client in ["wl:drop.w.0123:0", " wl:drop.w.0123:0", "a"] {
                if let Ok(c) = IdempotencyKey::parse(client) {
                    for t in [shop("shop-a"), Tenant::Anonymous, Tenant::Operator] {
                        assert_ne!(ScopedKey::new(&t, &c), p);
                    }
                }
            }
        }
        assert!(ScopedKey::promotion("a b", "t", "0").is_err());
    }

    #[test]
    fn a_storefront_sees_its_own_and_unscoped_things_only() {
        let a = shop("shop-a");
        assert!(a.sees("shop-a") && a.sees(""));
        assert!(!a.sees("shop-b") && !a.sees("~"));
        assert!(Tenant::Operator.sees("shop-b") && Tenant::Anonymous.sees("shop-b"));
        assert_eq!(a.lua_scope(), "shop-a");
        assert_eq!(Tenant::Operator.lua_scope(), "*");
    }
}
