//! A real Redis Cluster for tests (`flashgate_testkit::cluster`), and the
//! hash slot of a key as flashgate's Redis client computes it.

pub use flashgate_testkit::cluster::*;

/// The CRC16 hash slot of a key (Redis Cluster's `CLUSTER KEYSLOT`).
pub fn keyslot(key: &str) -> u16 {
    fred::util::redis_keyslot(key.as_bytes())
}
