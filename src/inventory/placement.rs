//! Shard placement on Redis Cluster: which hash tag each shard of a SKU gets.
//!
//! One hash tag is one slot is one master, so a SKU spread over 4 shards is
//! only spread over masters if its 4 tags hash to slots served by different
//! masters — which a plain `SKU#0..SKU#3` does only by luck (with 3 masters,
//! 4 tags all land on one master about 4 % of the time, and some master is
//! left idle most of the time). So at preload, in cluster mode, each *new*
//! shard's tag is chosen by its slot: candidates `SKU#s`, `SKU#s.1`,
//! `SKU#s.2`, … are hashed locally (CRC16, the cluster's own `KEYSLOT`) and
//! the first whose slot a chosen master serves (per the client's cached slot
//! map) wins. Masters are chosen least-loaded first — counting the shards of
//! this SKU already there — so the shards go round-robin over the masters.
//!
//! Tags already in use are never changed: keys are named after their tag, so
//! a renamed shard would strand its stock, holds and outbox. The chosen tags
//! are stored in the SKU's meta (`tags`), and every later call reads them from
//! there, so placement is decided once, at preload; a later reshard moves
//! slots (and thus shards) between masters without renaming anything.
//!
//! Tags only use `[A-Za-z0-9_#.-]` (a SKU is `[A-Za-z0-9_-]`): they sit in key
//! names and in the comma-separated meta field. Reservation ids carry the
//! shard's index, not its tag, so placement never shows in the API.
//!
//! On a single Redis (no slot map) every shard keeps its default tag `SKU#s`.

use fred::clients::Pool;
use fred::interfaces::ClusterInterface;
use fred::types::cluster::ClusterRouting;
use fred::util::redis_keyslot;

use super::keys;
use crate::domain::Sku;

/// How many candidates to try per shard before giving up on a master (with
/// 3 masters a candidate hits a given one with p ≈ 1/3: 64 misses in a row
/// happen with p ≈ 1e-11; more masters need more tries, still far below this).
const MAX_CANDIDATES: u32 = 4096;

/// The slot every key of the shard tagged `tag` hashes to.
pub fn slot_of(tag: &str) -> u16 {
    redis_keyslot(format!("{{{tag}}}").as_bytes())
}

/// Candidate tag number `n` for shard `shard` of `sku`: `SKU#s`, then
/// `SKU#s.1`, `SKU#s.2`, …
pub fn candidate(sku: &Sku, shard: u16, n: u32) -> String {
    let base = keys::default_tag(sku, shard);
    if n == 0 {
        base
    } else {
        format!("{base}.{n}")
    }
}

/// The cluster's slot map as the client last saw it; None on a single Redis.
pub fn routing(pool: &Pool) -> Option<ClusterRouting> {
    pool.next().cached_cluster_state().filter(|r| r.len() > 0)
}

/// The master (`host:port`) serving the shard tagged `tag`, when on a cluster.
pub fn node_of(routing: Option<&ClusterRouting>, tag: &str) -> Option<String> {
    routing
        .and_then(|r| r.get_server(slot_of(tag)))
        .map(|s| format!("{}:{}", s.host, s.port))
}

/// The tags of a SKU with `shards` shards whose first shards already have
/// `existing` tags: those are kept, and each new shard gets a tag on the
/// least-loaded master (`owner(slot)` names a slot's master; it answers None
/// when there is no cluster, and then the new shards get their default tags).
pub fn place(
    sku: &Sku,
    existing: &[String],
    shards: u16,
    owner: impl Fn(u16) -> Option<String>,
) -> Vec<String> {
    let mut tags: Vec<String> = existing.iter().take(usize::from(shards)).cloned().collect();
    // masters in a fixed order, with the shards of this SKU each already has
    let mut load: Vec<(String, usize)> = Vec::new();
    for slot in 0..16384u16 {
        if let Some(m) = owner(slot) {
            if !load.iter().any(|(n, _)| *n == m) {
                load.push((m, 0));
            }
        }
    }
    if load.is_empty() {
        for s in tags.len()..usize::from(shards) {
            // s < shards <= MAX_SHARDS
            tags.push(keys::default_tag(sku, s as u16));
        }
        return tags;
    }
    load.sort();
    for t in &tags {
        if let Some(m) = owner(slot_of(t)) {
            if let Some(entry) = load.iter_mut().find(|(n, _)| *n == m) {
                entry.1 += 1;
            }
        }
    }
    for s in tags.len()..usize::from(shards) {
        let shard = s as u16; // s < shards <= MAX_SHARDS
                              // least-loaded master first; among equals, the earliest in the order
        let mut order: Vec<usize> = (0..load.len()).collect();
        order.sort_by_key(|&i| (load[i].1, i));
        let mut chosen = None;
        'masters: for &i in &order {
            for n in 0..MAX_CANDIDATES {
                let tag = candidate(sku, shard, n);
                if tags.contains(&tag) {
                    continue;
                }
                if owner(slot_of(&tag)).as_deref() == Some(load[i].0.as_str()) {
                    load[i].1 += 1;
                    chosen = Some(tag);
                    break 'masters;
                }
            }
        }
        tags.push(chosen.unwrap_or_else(|| keys::default_tag(sku, shard)));
    }
    tags
}

/// [`place`] against the pool's current slot map.
pub fn tags_for(pool: &Pool, sku: &Sku, existing: &[String], shards: u16) -> Vec<String> {
    let routing = routing(pool);
    place(sku, existing, shards, |slot| {
        routing
            .as_ref()
            .and_then(|r| r.get_server(slot))
            .map(|s| format!("{}:{}", s.host, s.port))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three masters over the usual even split of the 16384 slots.
    fn three(slot: u16) -> Option<String> {
        Some(
            match slot {
                0..=5460 => "a",
                5461..=10922 => "b",
                _ => "c",
            }
            .to_string(),
        )
    }

    fn masters_of(tags: &[String]) -> Vec<String> {
        tags.iter().filter_map(|t| three(slot_of(t))).collect()
    }

    #[test]
    fn shards_go_round_robin_over_masters() {
        let sku = Sku::parse("hot").unwrap();
        for k in [1u16, 2, 3, 4, 6, 7, 16] {
            let tags = place(&sku, &[], k, three);
            assert_eq!(tags.len(), usize::from(k));
            let m = masters_of(&tags);
            for name in ["a", "b", "c"] {
                let n = m.iter().filter(|x| *x == name).count();
                // as even as k allows
                assert!(
                    n >= usize::from(k) / 3 && n <= usize::from(k).div_ceil(3),
                    "{k} shards: {m:?}"
                );
            }
            let mut unique = tags.clone();
            unique.dedup();
            assert_eq!(unique.len(), tags.len());
            for t in &tags {
                assert!(
                    t.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_#.-".contains(c)),
                    "{t}"
                );
                assert!(t.starts_with("hot#"));
            }
        }
    }

    #[test]
    fn existing_tags_are_kept_and_new_shards_fill_the_emptiest_master() {
        let sku = Sku::parse("kept").unwrap();
        // two old shards, both (by their default tags or not) somewhere
        let old = vec!["kept#0".to_string(), "kept#1".to_string()];
        let tags = place(&sku, &old, 5, three);
        assert_eq!(&tags[..2], &old[..]);
        let m = masters_of(&tags);
        for name in ["a", "b", "c"] {
            assert!(m.iter().any(|x| x == name), "{m:?}");
        }
    }

    #[test]
    fn without_a_cluster_tags_are_the_defaults() {
        let sku = Sku::parse("one").unwrap();
        let tags = place(&sku, &[], 3, |_| None);
        assert_eq!(tags, vec!["one#0", "one#1", "one#2"]);
    }

    #[test]
    fn slot_of_a_tag_is_the_slot_of_its_keys() {
        let k = keys::ShardKeys::new("x#1.2");
        assert_eq!(slot_of("x#1.2"), redis_keyslot(k.stock().as_bytes()));
        assert_eq!(slot_of("x#1.2"), redis_keyslot(k.events().as_bytes()));
    }
}
