//! A real Redis Cluster for tests (`flashgate_testkit::cluster`), and the
//! hash slot of a key as flashgate's Redis client computes it.

pub use flashgate_testkit::cluster::*;

/// The CRC16 hash slot of a key (Redis Cluster's `CLUSTER KEYSLOT`).
pub fn keyslot(key: &str) -> u16 {
    fred::util::redis_keyslot(key.as_bytes())
}

/// The service's config for a test against `cluster`: the single server's
/// (`support::config_for`), but a debug build with six redis-servers on two
/// cores queues commands for longer than its 2 s under 2,000 buyers.
pub fn test_config(cluster: &Cluster) -> flashgate::config::Config {
    flashgate::config::Config {
        redis_timeout_ms: 3000,
        ..super::config_for(cluster.url())
    }
}
