//! Redis side of the run: reading a SKU's shard books, `INFO commandstats`
//! deltas, and the Redis-limit baseline (the reserve script called by
//! `redis-benchmark` without HTTP in front of it).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use fred::prelude::*;
use fred::types::InfoKind;
use serde::Serialize;

use crate::books::ShardBooks;

/// `(host, port)` of a `redis://127.0.0.1:PORT[/db]` URL; other hosts are refused.
pub fn loopback_redis(url: &str) -> anyhow::Result<(String, u16)> {
    let rest = url
        .strip_prefix("redis://")
        .with_context(|| format!("not a redis:// URL: {url:?}"))?;
    let hostport = rest.split(['/', '?']).next().unwrap_or("");
    if hostport.contains('@') {
        bail!("Redis URLs with credentials are not supported here");
    }
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .with_context(|| format!("bad port in {url:?}"))?,
        ),
        None => (hostport, 6379),
    };
    if host != "127.0.0.1" && host != "localhost" {
        bail!("refusing Redis at {host:?}: only 127.0.0.1 is allowed");
    }
    Ok(("127.0.0.1".into(), port))
}

/// A client that fails fast: bounded command time, one attempt, no endless
/// reconnects (a load test should report a dead Redis, not hang on it).
pub async fn connect(url: &str) -> anyhow::Result<Client> {
    let config = Config::from_url(url)?;
    let client = Builder::from_config(config)
        .with_performance_config(|p| p.default_command_timeout = Duration::from_secs(10))
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(3);
            c.internal_command_timeout = Duration::from_secs(3);
            c.max_command_attempts = 1;
        })
        .build()?;
    client
        .init()
        .await
        .with_context(|| format!("connecting to {url}"))?;
    Ok(client)
}

pub fn shard_prefix(sku: &str, shard: u32) -> String {
    format!("fg:{{{sku}#{shard}}}:")
}

/// The hash tags of a SKU's shards, as `fg:{SKU}:meta` records them
/// (`shards`, and `tags` when placement chose other tags than `SKU#s`).
pub fn tags_from_meta(sku: &str, meta: &BTreeMap<String, String>) -> Option<Vec<String>> {
    let shards: usize = meta.get("shards")?.parse().ok()?;
    let mut tags: Vec<String> = meta
        .get("tags")
        .map(|t| {
            t.split(',')
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    tags.truncate(shards);
    for s in tags.len()..shards {
        tags.push(format!("{sku}#{s}"));
    }
    Some(tags)
}

/// Every shard's `stock` and `books` counters. Shards come from the SKU's
/// meta; `fallback_shards` default tags are used if it has none.
pub async fn read_shards(
    client: &Client,
    sku: &str,
    fallback_shards: u32,
) -> anyhow::Result<Vec<ShardBooks>> {
    let meta: BTreeMap<String, String> = client.hgetall(format!("fg:{{{sku}}}:meta")).await?;
    let tags = tags_from_meta(sku, &meta)
        .unwrap_or_else(|| (0..fallback_shards).map(|s| format!("{sku}#{s}")).collect());
    let mut out = Vec::new();
    for (s, tag) in tags.iter().enumerate() {
        let s = s as u32;
        let p = format!("fg:{{{tag}}}:");
        let stock: Option<i64> = client.get(format!("{p}stock")).await?;
        let books: BTreeMap<String, i64> = client.hgetall(format!("{p}books")).await?;
        let Some(stock) = stock else {
            bail!("shard {s} of {sku} has no stock key ({p}stock)")
        };
        // Pending transfers out: `<to>|<units>|<ts>` (lua/transfer_out.lua).
        let xfers: Vec<String> = client.hvals(format!("{p}xfers")).await?;
        let in_transit = xfers
            .iter()
            .filter_map(|x| x.split('|').nth(1)?.parse::<i64>().ok())
            .sum();
        let f = |k: &str| books.get(k).copied().unwrap_or(0);
        out.push(ShardBooks {
            shard: s,
            stock,
            initial: f("initial"),
            held: f("held"),
            sold: f("sold"),
            xin: f("xin"),
            xout: f("xout"),
            in_transit,
        });
    }
    Ok(out)
}

/// Calls per command from `INFO commandstats` (`cmdstat_evalsha:calls=12,...`).
pub fn parse_commandstats(info: &str) -> BTreeMap<String, u64> {
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

pub async fn commandstats(client: &Client) -> anyhow::Result<BTreeMap<String, u64>> {
    let info: String = client.info(Some(InfoKind::CommandStats)).await?;
    Ok(parse_commandstats(&info))
}

/// `after − before` per command (commands with no new calls left out).
pub fn delta(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, a)| {
            (
                k.clone(),
                a.saturating_sub(before.get(k).copied().unwrap_or(0)),
            )
        })
        .filter(|(_, d)| *d > 0)
        .collect()
}

/// One `redis-benchmark --csv` result line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchLine {
    pub rps: f64,
    pub avg_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// The first data line of `redis-benchmark --csv` output (Redis 7 columns:
/// test, rps, avg, min, p50, p95, p99, max).
pub fn parse_benchmark_csv(out: &str) -> Option<BenchLine> {
    let header: Vec<String> = out
        .lines()
        .next()?
        .split(',')
        .map(|c| c.trim_matches('"').to_owned())
        .collect();
    let line = out.lines().skip(1).find(|l| !l.trim().is_empty())?;
    // The test name is quoted and may itself contain commas: take fields from the end.
    let fields: Vec<&str> = line.rsplitn(header.len(), "\",\"").collect();
    let get = |name: &str| -> Option<f64> {
        let pos = header.iter().position(|h| h == name)?;
        let from_end = header.len() - 1 - pos;
        fields.get(from_end)?.trim_matches('"').parse().ok()
    };
    Some(BenchLine {
        rps: get("rps")?,
        avg_ms: get("avg_latency_ms")?,
        p50_ms: get("p50_latency_ms")?,
        p99_ms: get("p99_latency_ms")?,
        max_ms: get("max_latency_ms")?,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct RedisBaseline {
    pub clients: usize,
    pub requests: u64,
    /// Every call creates a hold (stock never runs out).
    pub reserve_held: Option<BenchLine>,
    /// Every call finds the shard dry (the sold-out answer's Redis cost on one shard).
    pub reserve_dry: Option<BenchLine>,
    pub script_sha: String,
}

/// Load `lib.lua` + `reserve.lua` the way the service does (prelude, newline,
/// body), give a throw-away shard of its own enough (or no) stock, and let
/// `redis-benchmark` EVALSHA it with fresh idempotency keys.
pub async fn baseline(
    client: &Client,
    redis_url: &str,
    lua_dir: &Path,
    bench_bin: &Path,
    clients: usize,
    requests: u64,
    run_id: &str,
) -> anyhow::Result<RedisBaseline> {
    let lib = std::fs::read_to_string(lua_dir.join("lib.lua")).context("reading lua/lib.lua")?;
    let body =
        std::fs::read_to_string(lua_dir.join("reserve.lua")).context("reading lua/reserve.lua")?;
    let sha: String = client
        .script_load(format!("{lib}\n{body}"))
        .await
        .context("SCRIPT LOAD reserve")?;
    let (host, port) = loopback_redis(redis_url)?;
    let sku = format!("{run_id}-redisbase");
    let p = shard_prefix(&sku, 0);
    let keys = [
        format!("{p}stock"),
        format!("{p}books"),
        format!("{p}holds"),
        format!("{p}events"),
        format!("{p}wlopen"),
        format!("{p}keys"),
    ];

    let run = |stock: u64| {
        let (sha, host, keys, p, sku) = (
            sha.clone(),
            host.clone(),
            keys.clone(),
            p.clone(),
            sku.clone(),
        );
        async move {
            client.del::<(), _>(keys.to_vec()).await?;
            client
                .set::<(), _, _>(&keys[0], stock, None, None, false)
                .await?;
            client
                .hset::<(), _, _>(
                    &keys[1],
                    [
                        ("initial", stock),
                        ("held", 0),
                        ("sold", 0),
                        ("xin", 0),
                        ("xout", 0),
                    ],
                )
                .await?;
            // A batch of one request (lua/reserve.lua): KEYS stock books holds
            // events wlopen keys, then the request's idem and record keys; ARGV
            // hold_ms idem_ttl_ms record_ttl_ms sku, then the request's rid qty
            // user fp mark_moved gate key: the same work as the service's call.
            let args: Vec<String> = vec![
                "-h".into(),
                host,
                "-p".into(),
                port.to_string(),
                "-c".into(),
                clients.to_string(),
                "-n".into(),
                requests.to_string(),
                "-r".into(),
                "1000000000".into(),
                "--csv".into(),
                "EVALSHA".into(),
                sha,
                "8".into(),
                keys[0].clone(),
                keys[1].clone(),
                keys[2].clone(),
                keys[3].clone(),
                keys[4].clone(),
                keys[5].clone(),
                format!("{p}idem:bk__rand_int__"),
                format!("{p}r:br__rand_int__"),
                "600000".into(),
                "120000".into(),
                "120000".into(),
                sku,
                "br__rand_int__".into(),
                "1".into(),
                "bench-user".into(),
                "fp".into(),
                "1".into(),
                "1".into(),
                "bk__rand_int__".into(),
            ];
            let child = tokio::process::Command::new(bench_bin)
                .args(&args)
                .kill_on_drop(true)
                .stdin(std::process::Stdio::null())
                .output();
            let out = tokio::time::timeout(Duration::from_secs(120), child)
                .await
                .context("redis-benchmark ran over 120 s")?
                .with_context(|| format!("running {}", bench_bin.display()))?;
            let text = String::from_utf8_lossy(&out.stdout);
            if !out.status.success() {
                bail!(
                    "redis-benchmark failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            // A script error shows up only as an error reply: check the books moved.
            let held: Option<i64> = client.hget(&keys[1], "held").await?;
            let expect_held = if stock > 0 { requests as i64 } else { 0 };
            let held = held.unwrap_or(0);
            if (stock > 0 && held < expect_held * 9 / 10) || (stock == 0 && held != 0) {
                bail!(
                    "reserve script did not run as expected: held {held}, expected ~{expect_held}"
                );
            }
            client.del::<(), _>(keys.to_vec()).await?;
            parse_benchmark_csv(&text)
                .with_context(|| format!("unreadable redis-benchmark output: {text}"))
        }
    };
    let held = run(requests + 1).await;
    let dry = run(0).await;
    let (reserve_held, reserve_dry) = match (held, dry) {
        (Err(e), _) | (_, Err(e)) => return Err(e),
        (Ok(h), Ok(d)) => (Some(h), Some(d)),
    };
    Ok(RedisBaseline {
        clients,
        requests,
        reserve_held,
        reserve_dry,
        script_sha: sha,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commandstats_parse_and_delta() {
        let before = parse_commandstats(
            "# Commandstats\r\ncmdstat_evalsha:calls=10,usec=5,usec_per_call=0.5,rejected_calls=0,failed_calls=0\r\ncmdstat_get:calls=3,usec=1\r\n",
        );
        assert_eq!(before["evalsha"], 10);
        assert_eq!(before["get"], 3);
        let after = parse_commandstats(
            "cmdstat_evalsha:calls=25,usec=9\ncmdstat_get:calls=3,usec=1\ncmdstat_config|get:calls=1,usec=2\n",
        );
        let d = delta(&before, &after);
        assert_eq!(d.get("evalsha"), Some(&15));
        assert_eq!(d.get("get"), None);
        assert_eq!(d.get("config|get"), Some(&1));
    }

    #[test]
    fn benchmark_csv() {
        let out = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\"EVALSHA abc 6 fg:{a,b#0}:stock x\",\"80000.00\",\"0.042\",\"0.016\",\"0.039\",\"0.071\",\"0.095\",\"0.207\"\n";
        let l = parse_benchmark_csv(out).unwrap();
        assert_eq!(
            l,
            BenchLine {
                rps: 80000.0,
                avg_ms: 0.042,
                p50_ms: 0.039,
                p99_ms: 0.095,
                max_ms: 0.207
            }
        );
        assert!(parse_benchmark_csv("").is_none());
    }

    #[test]
    fn only_loopback_redis() {
        assert_eq!(
            loopback_redis("redis://127.0.0.1:6390/0").unwrap(),
            ("127.0.0.1".into(), 6390)
        );
        assert_eq!(loopback_redis("redis://localhost").unwrap().1, 6379);
        assert!(loopback_redis("redis://10.1.1.1:6379").is_err());
        assert!(loopback_redis("redis://:pw@127.0.0.1:6379").is_err());
        assert!(loopback_redis("http://127.0.0.1:6379").is_err());
    }

    #[test]
    fn shard_tags_from_meta() {
        let mut meta = BTreeMap::new();
        assert_eq!(tags_from_meta("A", &meta), None);
        meta.insert("shards".to_string(), "3".to_string());
        assert_eq!(tags_from_meta("A", &meta).unwrap(), ["A#0", "A#1", "A#2"]);
        meta.insert("tags".to_string(), "x,y".to_string());
        assert_eq!(tags_from_meta("A", &meta).unwrap(), ["x", "y", "A#2"]);
    }

    #[test]
    fn shard_keys_match_the_service_layout() {
        assert_eq!(shard_prefix("LT1", 3), "fg:{LT1#3}:");
    }
}
