//! A real Redis Cluster for tests (`flashgate_testkit::cluster`), and the
//! hash slot of a key as flashgate's Redis client computes it.

pub use flashgate_testkit::cluster::*;

/// The CRC16 hash slot of a key (Redis Cluster's `CLUSTER KEYSLOT`).
pub fn keyslot(key: &str) -> u16 {
    fred::util::redis_keyslot(key.as_bytes())
}

/// The service's config for a test against `cluster`: tests/it/cluster.rs's
/// settings, which the other areas' cluster tests start from.
pub fn test_config(cluster: &Cluster) -> flashgate::config::Config {
    flashgate::config::Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        redis_url: cluster.url(),
        // a debug build with six redis-servers on two cores queues commands
        // for longer than the single-node tests' 300 ms under 2,000 buyers
        redis_timeout_ms: 3000,
        sweep_interval_ms: 50,
        drain_seconds: 1,
        insecure_no_auth: true,
        // as tests/support's test_config: no token bucket (the 2,000-buyer
        // sales and the ignored throughput measurement go past the defaults)
        user_rate_per_second: 0,
        client_rate_per_second: 0,
        global_rate_per_second: 0,
        ..flashgate::config::Config::default()
    }
}
