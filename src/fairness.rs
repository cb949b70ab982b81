//! The fair draw's arithmetic: commitment, pre-queue digest and order.
//!
//! Pure functions, no Redis and no HTTP, shared by the service (which draws)
//! and by `flashgate verify-draw` (which checks a draw from the public API
//! alone). The rule, exactly as the README states it:
//!
//! - `fairness_commitment` = hex(SHA-256(seed)), the seed being 32 random
//!   bytes drawn when a SKU with `opens_at` is loaded, published at once;
//! - `prequeue_digest` = hex(SHA-256(ids sorted ascending, joined by `\n`)),
//!   published with the full list of pre-queued ticket ids when the
//!   pre-queue closes at `opens_at`;
//! - the order: ascending by hex(HMAC-SHA256(key = the seed's 32 raw bytes,
//!   message = UTF-8 `prequeue_digest + ":" + ticket_id`)); ties (which
//!   would need a SHA-256 collision) fall back to the ticket id.
//!
//! Hex is lower case everywhere.

use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

type HmacSha256 = hmac::Hmac<Sha256>;

/// A draw's seed: 32 random bytes, kept secret until the pre-queue closes.
#[derive(Clone, PartialEq, Eq)]
pub struct Seed([u8; 32]);

impl std::fmt::Debug for Seed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // never print a seed by accident before its reveal
        f.write_str("Seed(..)")
    }
}

impl Seed {
    /// A fresh seed from the operating system's generator (through uuid's
    /// `fast-rng`, which seeds from the OS): 2 × 122 random bits plus 12
    /// more bytes, far over the 128 bits a commitment needs.
    pub fn generate() -> Seed {
        let mut out = [0u8; 32];
        out[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        out[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        Seed(out)
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Seed {
        Seed(bytes)
    }

    /// Parses 64 lower- or upper-case hex digits.
    pub fn from_hex(s: &str) -> Result<Seed, String> {
        let bytes = from_hex(s).ok_or_else(|| "a seed is 64 hex digits".to_string())?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| "a seed is 64 hex digits".to_string())?;
        Ok(Seed(arr))
    }

    pub fn to_hex(&self) -> String {
        to_hex(&self.0)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// hex(SHA-256(seed)): published before any ticket exists.
    pub fn commitment(&self) -> String {
        to_hex(&Sha256::digest(self.0))
    }
}

/// hex(SHA-256 of the ids, sorted ascending by bytes, joined by `\n`).
/// The input order does not matter; duplicates are kept (a list with a
/// duplicate is not a valid pre-queue, and the digest shows it).
pub fn prequeue_digest<S: AsRef<str>>(ids: &[S]) -> String {
    let mut sorted: Vec<&str> = ids.iter().map(AsRef::as_ref).collect();
    sorted.sort_unstable();
    let mut h = Sha256::new();
    for (i, id) in sorted.iter().enumerate() {
        if i > 0 {
            h.update(b"\n");
        }
        h.update(id.as_bytes());
    }
    to_hex(&h.finalize())
}

/// A ticket's draw key: hex(HMAC-SHA256(seed, digest + ":" + id)).
pub fn draw_key(seed: &Seed, digest: &str, ticket_id: &str) -> String {
    // HMAC takes a key of any length, so this cannot fail
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(seed.as_bytes())
        .expect("HMAC accepts a 32-byte key");
    mac.update(digest.as_bytes());
    mac.update(b":");
    mac.update(ticket_id.as_bytes());
    to_hex(&mac.finalize().into_bytes())
}

/// The admission order of a closed pre-queue: ids ascending by draw key.
pub fn draw_order<S: AsRef<str>>(seed: &Seed, ids: &[S]) -> Vec<String> {
    let digest = prequeue_digest(ids);
    let mut keyed: Vec<(String, &str)> = ids
        .iter()
        .map(|id| (draw_key(seed, &digest, id.as_ref()), id.as_ref()))
        .collect();
    keyed.sort_unstable();
    keyed.into_iter().map(|(_, id)| id.to_owned()).collect()
}

/// `GET /v1/skus/{sku}/draw`: what a buyer needs to check the draw.
///
/// Before `opens_at`: `status` is `open` (the pre-queue takes tickets),
/// `tickets` is empty and `prequeue_digest`/`fairness_seed` are null. After
/// the close, `tickets` is the full pre-queue sorted ascending (the digest's
/// input) and `order` the admission order; `fairness_seed` is set once
/// revealed (`status` `drawn`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DrawDocument {
    pub sku: String,
    /// `open` (taking pre-queue tickets) | `closed` (frozen, seed not yet
    /// revealed) | `drawn` (seed revealed, order final)
    pub status: String,
    /// RFC 3339, the Redis clock's instant the pre-queue closes.
    pub opens_at: String,
    pub fairness_commitment: String,
    pub prequeue_digest: Option<String>,
    pub fairness_seed: Option<String>,
    /// Every pre-queued ticket id, sorted ascending.
    pub tickets: Vec<String>,
    /// The admission order (empty until `drawn`).
    pub order: Vec<String>,
}

/// What `verify-draw` found wrong, first failure first.
#[derive(Debug, PartialEq, Eq)]
pub enum DrawProblem {
    NotDrawn(String),
    /// SHA-256(seed) is not the commitment.
    Commitment {
        published: String,
        computed: String,
    },
    /// The digest is not that of the published list.
    Digest {
        published: String,
        computed: String,
    },
    /// The order is not the one the rule gives; the first position differing.
    Order {
        position: usize,
        published: Option<String>,
        expected: Option<String>,
    },
    Malformed(String),
}

impl std::fmt::Display for DrawProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DrawProblem::NotDrawn(s) => write!(f, "the draw is not revealed yet (status {s})"),
            DrawProblem::Commitment {
                published,
                computed,
            } => write!(
                f,
                "SHA-256 of the revealed seed is {computed}, but the published commitment is {published}"
            ),
            DrawProblem::Digest {
                published,
                computed,
            } => write!(
                f,
                "the digest of the published ticket list is {computed}, but the published prequeue_digest is {published}"
            ),
            DrawProblem::Order {
                position,
                published,
                expected,
            } => write!(
                f,
                "the order differs at position {position}: published {}, the rule gives {}",
                published.as_deref().unwrap_or("nothing"),
                expected.as_deref().unwrap_or("nothing")
            ),
            DrawProblem::Malformed(s) => write!(f, "malformed draw document: {s}"),
        }
    }
}

/// Checks a draw document against the rule. `commitment_seen_before` is the
/// commitment as published before `opens_at` (from the SKU document), when
/// the verifier recorded it; it must equal the draw document's.
pub fn verify(doc: &DrawDocument, commitment_seen_before: Option<&str>) -> Result<(), DrawProblem> {
    if doc.status != "drawn" {
        return Err(DrawProblem::NotDrawn(doc.status.clone()));
    }
    if let Some(before) = commitment_seen_before {
        if !before.eq_ignore_ascii_case(&doc.fairness_commitment) {
            return Err(DrawProblem::Commitment {
                published: before.to_owned(),
                computed: doc.fairness_commitment.clone(),
            });
        }
    }
    let seed_hex = doc
        .fairness_seed
        .as_deref()
        .ok_or_else(|| DrawProblem::Malformed("status drawn without fairness_seed".into()))?;
    let seed = Seed::from_hex(seed_hex).map_err(DrawProblem::Malformed)?;
    let computed = seed.commitment();
    if !computed.eq_ignore_ascii_case(&doc.fairness_commitment) {
        return Err(DrawProblem::Commitment {
            published: doc.fairness_commitment.clone(),
            computed,
        });
    }
    let computed = prequeue_digest(&doc.tickets);
    let published = doc.prequeue_digest.clone().unwrap_or_default();
    if !computed.eq_ignore_ascii_case(&published) {
        return Err(DrawProblem::Digest {
            published,
            computed,
        });
    }
    let expected = draw_order(&seed, &doc.tickets);
    let n = expected.len().max(doc.order.len());
    for i in 0..n {
        if expected.get(i) != doc.order.get(i) {
            return Err(DrawProblem::Order {
                position: i,
                published: doc.order.get(i).cloned(),
                expected: expected.get(i).cloned(),
            });
        }
    }
    Ok(())
}

pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let nib = |c: u8| -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    };
    s.as_bytes()
        .chunks(2)
        .map(|p| Some(nib(p[0])? << 4 | nib(p[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed() -> Seed {
        Seed::from_bytes([7u8; 32])
    }

    #[test]
    fn the_commitment_is_sha256_of_the_raw_seed() {
        // python3: hashlib.sha256(bytes([7]*32)).hexdigest()
        assert_eq!(
            seed().commitment(),
            "4bb06f8e4e3a7715d201d573d0aa423762e55dabd61a2c02278fa56cc6d294e0"
        );
        assert_eq!(Seed::from_hex(&seed().to_hex()).unwrap(), seed());
    }

    #[test]
    fn the_digest_ignores_input_order_and_joins_by_newline() {
        let a = prequeue_digest(&["b", "a", "c"]);
        let b = prequeue_digest(&["c", "b", "a"]);
        assert_eq!(a, b);
        assert_eq!(a, to_hex(&Sha256::digest(b"a\nb\nc")));
        assert_eq!(prequeue_digest::<&str>(&[]), to_hex(&Sha256::digest(b"")));
    }

    #[test]
    fn the_draw_key_matches_pythons_hmac() {
        // d = hashlib.sha256(b"a\nb").hexdigest()
        // hmac.new(bytes([7]*32), (d + ":a").encode(), "sha256").hexdigest()
        let d = prequeue_digest(&["b", "a"]);
        assert_eq!(
            d,
            "7e18f737311b2dc3b2f269dd78396b0351f14fb66efa879f768cb23181883c78"
        );
        assert_eq!(
            draw_key(&seed(), &d, "a"),
            "3a325b43463ef8e86dd559e5e7e873c672e882efda5be412a146b93ea002bdca"
        );
    }

    #[test]
    fn the_order_is_ascending_hmac_and_independent_of_arrival() {
        let ids: Vec<String> = (0..50).map(|i| format!("S.w.{i:032x}")).collect();
        let mut rev = ids.clone();
        rev.reverse();
        let o1 = draw_order(&seed(), &ids);
        assert_eq!(o1, draw_order(&seed(), &rev));
        assert_ne!(o1, ids, "50 ids in arrival order by chance: 1 in 50!");
        let d = prequeue_digest(&ids);
        let keys: Vec<String> = o1.iter().map(|id| draw_key(&seed(), &d, id)).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        assert_ne!(o1, draw_order(&Seed::from_bytes([8u8; 32]), &ids));
    }

    fn drawn(ids: &[String]) -> DrawDocument {
        let mut tickets = ids.to_vec();
        tickets.sort();
        DrawDocument {
            sku: "S".into(),
            status: "drawn".into(),
            opens_at: "2026-12-04T20:00:00Z".into(),
            fairness_commitment: seed().commitment(),
            prequeue_digest: Some(prequeue_digest(ids)),
            fairness_seed: Some(seed().to_hex()),
            order: draw_order(&seed(), ids),
            tickets,
        }
    }

    #[test]
    fn verify_accepts_a_true_draw_and_names_each_tampering() {
        let ids: Vec<String> = (0..20).map(|i| format!("S.w.{i:032x}")).collect();
        let doc = drawn(&ids);
        assert_eq!(verify(&doc, Some(&seed().commitment())), Ok(()));

        let mut d = doc.clone();
        d.fairness_seed = Some(Seed::from_bytes([9u8; 32]).to_hex());
        assert!(matches!(
            verify(&d, None),
            Err(DrawProblem::Commitment { .. })
        ));

        let mut d = doc.clone();
        d.order.swap(3, 4);
        assert!(matches!(
            verify(&d, None),
            Err(DrawProblem::Order { position: 3, .. })
        ));

        let mut d = doc.clone();
        d.tickets
            .push("S.w.ffffffffffffffffffffffffffffffff".into());
        assert!(matches!(verify(&d, None), Err(DrawProblem::Digest { .. })));

        assert!(matches!(
            verify(&doc, Some(&Seed::from_bytes([1; 32]).commitment())),
            Err(DrawProblem::Commitment { .. })
        ));
        let mut d = doc;
        d.status = "closed".into();
        assert!(matches!(verify(&d, None), Err(DrawProblem::NotDrawn(_))));
    }
}
