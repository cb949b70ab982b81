//! How much memory the per-buyer token buckets take, and that pruning gives
//! it back: 1,000,000 distinct buyers each make one request, then the idle
//! buckets are pruned. Prints resident memory (RSS) at each step.
//!
//! `cargo bench --bench limiter_memory` (release build; figures, no asserts).

use std::time::{Duration, Instant};

use flashgate::limiter::{Bucket, Limiter};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4)
}

fn main() {
    const USERS: usize = 1_000_000;
    let off = Bucket {
        rate_per_second: 0,
        burst: 0,
    };
    // 20 tokens/s per buyer: a bucket is full again 50 ms after its last use
    let limiter = Limiter::new(
        off,
        off,
        Bucket {
            rate_per_second: 20,
            burst: 1,
        },
    );
    let names: Vec<String> = (0..USERS).map(|i| format!("user-{i:08}")).collect();
    let base = rss_kib();
    let started = Instant::now();
    for n in &names {
        let _ = limiter.check_user("", n);
    }
    let fill = started.elapsed();
    let full = rss_kib();
    println!(
        "limiter_memory: {USERS} distinct buyers, one request each, in {:.0} ms ({:.0} ns/check)",
        fill.as_secs_f64() * 1e3,
        fill.as_nanos() as f64 / USERS as f64
    );
    println!(
        "  buckets held: {}   RSS growth: {} KiB ({:.0} bytes/bucket)",
        limiter.len(),
        full - base,
        (full - base) as f64 * 1024.0 / USERS as f64
    );
    std::thread::sleep(Duration::from_millis(150));
    let started = Instant::now();
    let left = limiter.prune();
    let pruned = rss_kib();
    println!(
        "  after prune ({:.0} ms): buckets held: {left}   RSS growth: {} KiB",
        started.elapsed().as_secs_f64() * 1e3,
        pruned.saturating_sub(base)
    );
    // the bound: a second wave of a million new buyers reuses the memory
    let names2: Vec<String> = (0..USERS).map(|i| format!("wave2-{i:08}")).collect();
    let after_names = rss_kib();
    for n in &names2 {
        let _ = limiter.check_user("", n);
    }
    std::thread::sleep(Duration::from_millis(150));
    limiter.prune();
    println!("  second wave of {USERS} new buyers + prune: buckets held: {}   RSS growth over the names: {} KiB", limiter.len(), rss_kib().saturating_sub(after_names));
}
