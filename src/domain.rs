//! Domain types parsed at the edge. Nothing deeper than the HTTP layer and the
//! CLI handles raw strings: a `Sku`, `UserId`, `Qty`, `IdempotencyKey` or
//! `ReservationId` that exists has already been validated.

use std::fmt;

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

/// The client's `Idempotency-Key`: 1..=255 visible ASCII characters.
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

/// A reservation id: `<sku>.<shard>.<32 hex digits>` — 122 random bits (UUID
/// v4), so ids are unguessable; it carries its SKU and shard so confirm,
/// release and extend go straight to the right shard without a lookup.
/// Clients treat it as opaque.
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
        assert_eq!(k.redacted(), "…6789");
        assert_eq!(
            k.stable_hash(),
            IdempotencyKey::parse("order-123456789")
                .unwrap()
                .stable_hash()
        );
    }
}
