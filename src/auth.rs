//! Who is calling: storefronts (API keys, for `/v1/`) and operators (admin
//! keys, for `/admin/` and also `/v1/`). Keys are Bearer tokens, compared in
//! constant time against every configured key (no early exit, so the time
//! taken does not tell which key nearly matched), and never logged.
//!
//! **A storefront's identity** owns its idempotency keys, reservations and
//! tickets (docs/tenancy.md), so it must stay the same across restarts,
//! config edits and instances whose key lists are ordered differently: a
//! key's position would not. An entry `name:secret` names its storefront;
//! several secrets may name one storefront (key rotation). An entry without
//! a name is the storefront `SHA-256("flashgate storefront\0" + secret)`,
//! first 16 hex digits — stable as long as the secret is; to rotate such a
//! key, give the new secret that id as its name.

use hyper::header::HeaderValue;
use subtle::ConstantTimeEq;

use crate::config::Config;
// (`api_key` lives in domain.rs, beside `StorefrontId`: config.rs needs it
// too, to redact, and config is below auth)
pub use crate::domain::api_key;
use crate::domain::{StorefrontId, Tenant};
use crate::error::ApiError;

/// An authenticated caller. The number identifies the key (its position in
/// the configuration; for a storefront, its first key's), valid only with
/// the [`Auth`] that answered it (a reload makes a new one): it is no
/// identity to store (see [`Auth::tenant`], [`Auth::bucket`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    Storefront(usize),
    Admin(usize),
    /// `insecure_no_auth` with no keys configured.
    Anonymous,
}

pub struct Auth {
    api: Vec<Vec<u8>>,
    /// The storefront of each of `api`'s keys.
    storefronts: Vec<StorefrontId>,
    /// For each of `api`'s keys, the first key of its storefront: a
    /// storefront's keys share its rate-limit bucket.
    first_of: Vec<usize>,
    admin: Vec<Vec<u8>>,
    /// The rate-limit bucket of each of `api`'s keys (its storefront's) and
    /// of each admin key: a hash that stays the same across reloads, however
    /// the keys are ordered.
    api_buckets: Vec<u64>,
    admin_buckets: Vec<u64>,
    open: bool,
}

/// A stable 64-bit bucket key: the first 8 bytes of a SHA-256 with a prefix
/// naming the kind of caller (a storefront named like an admin key's hash
/// still gets a bucket of its own).
fn bucket_of(kind: &[u8], id: &[u8]) -> u64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(b"flashgate bucket\0")
        .chain_update(kind)
        .chain_update(b"\0")
        .chain_update(id)
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

impl Auth {
    pub fn from_config(c: &Config) -> Auth {
        let (storefronts, api): (Vec<StorefrontId>, Vec<Vec<u8>>) = c
            .api_keys
            .iter()
            .map(|k| {
                let (id, secret) = api_key(k);
                (id, secret.as_bytes().to_vec())
            })
            .unzip();
        let first_of = (0..storefronts.len())
            .map(|i| {
                storefronts
                    .iter()
                    .position(|s| *s == storefronts[i])
                    .unwrap_or(i)
            })
            .collect();
        let api_buckets = storefronts
            .iter()
            .map(|s| bucket_of(b"storefront", s.to_string().as_bytes()))
            .collect();
        let admin: Vec<Vec<u8>> = c.admin_keys.iter().map(|k| k.as_bytes().to_vec()).collect();
        Auth {
            api,
            storefronts,
            first_of,
            admin_buckets: admin.iter().map(|k| bucket_of(b"admin", k)).collect(),
            admin,
            api_buckets,
            open: c.insecure_no_auth && c.api_keys.is_empty() && c.admin_keys.is_empty(),
        }
    }

    /// The caller's per-client rate-limit bucket (none for an anonymous one).
    pub fn bucket(&self, caller: Caller) -> Option<u64> {
        match caller {
            Caller::Storefront(i) => self.api_buckets.get(i).copied(),
            Caller::Admin(i) => self.admin_buckets.get(i).copied(),
            Caller::Anonymous => None,
        }
    }

    /// Whose keys, reservations and tickets the caller makes and sees
    /// (`identify` answers only configured keys: any other is unauthorized).
    pub fn tenant(&self, caller: Caller) -> Result<Tenant, ApiError> {
        Ok(match caller {
            Caller::Storefront(i) => Tenant::Storefront(
                self.storefronts
                    .get(i)
                    .ok_or(ApiError::Unauthorized)?
                    .clone(),
            ),
            Caller::Admin(_) => Tenant::Operator,
            Caller::Anonymous => Tenant::Anonymous,
        })
    }

    pub fn storefronts(&self) -> usize {
        self.api.len()
    }

    /// Identify the caller from its `Authorization` header.
    pub fn identify(&self, header: Option<&HeaderValue>) -> Result<Caller, ApiError> {
        if self.open {
            return Ok(Caller::Anonymous);
        }
        let token = header
            .and_then(|h| h.as_bytes().strip_prefix(b"Bearer "))
            .map(|t| t.trim_ascii())
            .ok_or(ApiError::Unauthorized)?;
        if let Some(i) = find(&self.admin, token) {
            return Ok(Caller::Admin(i));
        }
        find(&self.api, token)
            .map(|i| Caller::Storefront(self.first_of.get(i).copied().unwrap_or(i)))
            .ok_or(ApiError::Unauthorized)
    }

    /// `/admin/` endpoints: an admin key, else 403 (a valid storefront key)
    /// or 401 (no valid key).
    pub fn require_admin(&self, caller: Caller) -> Result<(), ApiError> {
        match caller {
            Caller::Admin(_) | Caller::Anonymous => Ok(()),
            Caller::Storefront(_) => Err(ApiError::Forbidden),
        }
    }
}

/// Position of `token` among `keys`, comparing with every key in constant time.
fn find(keys: &[Vec<u8>], token: &[u8]) -> Option<usize> {
    let mut found = None;
    for (i, k) in keys.iter().enumerate() {
        if bool::from(same(k, token)) {
            found = Some(i);
        }
    }
    found
}

/// `a == b` in time that depends on the lengths only (as `subtle`'s slice
/// comparison, which also answers unequal lengths at once): the XOR of 8
/// bytes at a time is OR-ed together, and `subtle` turns the one word into
/// its answer. A byte at a time through `subtle` was ≈ 500 instructions
/// per request for two 40-byte keys (callgrind), 1.5 % of a sold-out answer.
fn same(a: &[u8], b: &[u8]) -> subtle::Choice {
    if a.len() != b.len() {
        return subtle::Choice::from(0);
    }
    let (wa, ra) = a.as_chunks::<8>();
    let (wb, rb) = b.as_chunks::<8>();
    let mut diff = 0u64;
    for (x, y) in wa.iter().zip(wb) {
        diff |= u64::from_ne_bytes(*x) ^ u64::from_ne_bytes(*y);
    }
    for (x, y) in ra.iter().zip(rb) {
        diff |= u64::from(x ^ y);
    }
    diff.ct_eq(&0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        Auth::from_config(&Config {
            api_keys: vec![
                "storefront-key-000001".into(),
                "storefront-key-000002".into(),
            ],
            admin_keys: vec!["admin-key-0000000001".into()],
            ..Config::default()
        })
    }

    fn h(v: &str) -> HeaderValue {
        HeaderValue::from_str(v).unwrap()
    }

    #[test]
    fn identifies_callers() {
        let a = auth();
        assert_eq!(
            a.identify(Some(&h("Bearer storefront-key-000002"))).ok(),
            Some(Caller::Storefront(1))
        );
        assert_eq!(
            a.identify(Some(&h("Bearer admin-key-0000000001"))).ok(),
            Some(Caller::Admin(0))
        );
        assert_eq!(
            a.identify(Some(&h("Bearer storefront-key-00000")))
                .unwrap_err()
                .code(),
            "unauthorized"
        );
        assert_eq!(
            a.identify(Some(&h("storefront-key-000001")))
                .unwrap_err()
                .code(),
            "unauthorized"
        );
        assert_eq!(a.identify(None).unwrap_err().code(), "unauthorized");
        assert_eq!(
            a.require_admin(Caller::Storefront(0)).unwrap_err().code(),
            "forbidden"
        );
        assert!(a.require_admin(Caller::Admin(0)).is_ok());
    }

    #[test]
    fn equal_only_when_every_byte_is() {
        // whole words, a tail, and both: a difference in any one byte counts
        for len in [0, 1, 7, 8, 9, 16, 21, 40] {
            let a: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            assert!(bool::from(same(&a, &a.clone())), "len {len}");
            for at in 0..len {
                for bit in [0x01, 0x80] {
                    let mut b = a.clone();
                    b[at] ^= bit;
                    assert!(!bool::from(same(&a, &b)), "len {len}, byte {at}");
                }
            }
            let mut longer = a.clone();
            longer.push(b'x');
            assert!(!bool::from(same(&a, &longer)));
            assert!(!bool::from(same(&longer, &a)));
        }
    }

    #[test]
    fn a_storefront_is_its_keys_name_or_a_hash_of_its_secret_not_its_position() {
        let a = Auth::from_config(&Config {
            api_keys: vec![
                "shop-a:storefront-key-000001".into(),
                "storefront-key-000002".into(),
                "shop-a:storefront-key-000003".into(),
            ],
            admin_keys: vec!["admin-key-0000000001".into()],
            ..Config::default()
        });
        let tenant = |token: &str| {
            let caller = a.identify(Some(&h(&format!("Bearer {token}")))).unwrap();
            (caller, a.tenant(caller).unwrap())
        };
        let shop_a = Tenant::Storefront(StorefrontId::parse("shop-a").unwrap());
        // a storefront's bucket is its id's, wherever its keys are listed
        let reordered = Auth::from_config(&Config {
            api_keys: vec![
                "storefront-key-000002".into(),
                "shop-a:storefront-key-000003".into(),
            ],
            ..Config::default()
        });
        let bucket = |auth: &Auth, token: &str| {
            auth.bucket(auth.identify(Some(&h(&format!("Bearer {token}")))).unwrap())
        };
        assert_eq!(
            bucket(&a, "storefront-key-000001"),
            bucket(&reordered, "storefront-key-000003")
        );
        assert_eq!(
            bucket(&a, "storefront-key-000002"),
            bucket(&reordered, "storefront-key-000002")
        );
        assert_ne!(
            bucket(&a, "storefront-key-000001"),
            bucket(&a, "storefront-key-000002")
        );
        // both secrets of shop-a: one storefront, one rate-limit bucket
        assert_eq!(
            tenant("storefront-key-000001"),
            (Caller::Storefront(0), shop_a.clone())
        );
        assert_eq!(
            tenant("storefront-key-000003"),
            (Caller::Storefront(0), shop_a)
        );
        assert!(a
            .identify(Some(&h("Bearer shop-a:storefront-key-000001")))
            .is_err());
        let (_, unnamed) = tenant("storefront-key-000002");
        assert_eq!(
            unnamed,
            Tenant::Storefront(api_key("storefront-key-000002").0)
        );
        assert_eq!(unnamed.scope().len(), 16);
        assert!(unnamed.scope().bytes().all(|b| b.is_ascii_hexdigit()));
        // the same secret elsewhere in another list: the same storefront
        let b = Auth::from_config(&Config {
            api_keys: vec!["storefront-key-000002".into()],
            ..Config::default()
        });
        let caller = b
            .identify(Some(&h("Bearer storefront-key-000002")))
            .unwrap();
        assert_eq!(b.tenant(caller).unwrap(), unnamed);
        assert_eq!(tenant("admin-key-0000000001").1, Tenant::Operator);
        // a secret with a ':' but no name in front is a secret
        assert_eq!(
            api_key("not a name:storefront-key").1,
            "not a name:storefront-key"
        );
    }

    #[test]
    fn open_only_when_asked_and_keyless() {
        let open = Auth::from_config(&Config {
            insecure_no_auth: true,
            ..Config::default()
        });
        assert_eq!(open.identify(None).ok(), Some(Caller::Anonymous));
        let keyed = Auth::from_config(&Config {
            insecure_no_auth: true,
            api_keys: vec!["storefront-key-000001".into()],
            ..Config::default()
        });
        assert!(
            keyed.identify(None).is_err(),
            "configured keys are always enforced"
        );
    }
}
