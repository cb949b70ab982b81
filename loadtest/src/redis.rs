//! Redis side of the run: reading a SKU's shard books, `INFO commandstats`
//! deltas, and the Redis-limit baseline (the reserve script called by
//! `redis-benchmark` without HTTP in front of it).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use fred::prelude::*;
use fred::types::config::Server;
use fred::types::InfoKind;
use serde::Serialize;

use flashgate::domain::Sku;
use flashgate::inventory::keys::{self, ShardKeys};

use crate::books::ShardBooks;

/// `(host, port)` of a `redis://127.0.0.1:PORT[/db]` URL, or of the first
/// node of a cluster's `redis-cluster://127.0.0.1:PORT?node=127.0.0.1:PORT&…`
/// (every `node=` is checked too); other hosts are refused.
pub fn loopback_redis(url: &str) -> anyhow::Result<(String, u16)> {
    let (rest, cluster) = if let Some(r) = url.strip_prefix("redis-cluster://") {
        (r, true)
    } else if let Some(r) = url.strip_prefix("redis://") {
        (r, false)
    } else {
        bail!("not a redis:// or redis-cluster:// URL: {url:?}")
    };
    let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
    let first = loopback_node(main.split('/').next().unwrap_or(""), url)?;
    if cluster {
        for node in query.split('&').filter_map(|kv| kv.strip_prefix("node=")) {
            loopback_node(node, url)?;
        }
    }
    Ok(first)
}

/// Whether `url` names a Redis Cluster (`redis-cluster://`).
pub fn is_cluster_url(url: &str) -> bool {
    url.starts_with("redis-cluster://")
}

fn loopback_node(hostport: &str, url: &str) -> anyhow::Result<(String, u16)> {
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

/// The default hash tag of a SKU's shard (`SKU#s`), as the service names it
/// when placement did not choose another (`flashgate::inventory::keys`).
pub fn default_tag(sku: &str, shard: u32) -> String {
    match (Sku::parse(sku), u16::try_from(shard)) {
        (Ok(sku), Ok(shard)) => keys::default_tag(&sku, shard),
        _ => format!("{sku}#{shard}"),
    }
}

/// The hash tags of a SKU's shards, as `fg:{SKU}:meta` records them
/// (`shards`, and `tags` when placement chose other tags than `SKU#s`).
pub fn tags_from_meta(sku: &str, meta: &BTreeMap<String, String>) -> Option<Vec<String>> {
    // `shard_count` since flashgate's data layout 2, `shards` before
    let shards: usize = meta
        .get("shard_count")
        .or_else(|| meta.get("shards"))?
        .parse()
        .ok()?;
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
        tags.push(default_tag(sku, s as u32));
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
    let parsed = Sku::parse(sku).map_err(|e| anyhow::anyhow!("sku {sku:?}: {e}"))?;
    let meta: BTreeMap<String, String> = client.hgetall(keys::meta(&parsed)).await?;
    let tags = tags_from_meta(sku, &meta)
        .unwrap_or_else(|| (0..fallback_shards).map(|s| default_tag(sku, s)).collect());
    let mut out = Vec::new();
    for (s, tag) in tags.iter().enumerate() {
        let s = s as u32;
        let k = ShardKeys::new(tag);
        let stock: Option<i64> = client.get(k.stock()).await?;
        let books: BTreeMap<String, i64> = client.hgetall(k.books()).await?;
        let Some(stock) = stock else {
            bail!("shard {s} of {sku} has no stock key ({})", k.stock())
        };
        // Pending transfers out: `<to>|<units>|<ts>` (lua/transfer_out.lua).
        let xfers: Vec<String> = client.hvals(k.xfers()).await?;
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
    parse_commandstats_field(info, "calls")
}

/// One integer field (`calls`, `usec`, …) per command from `INFO commandstats`.
pub fn parse_commandstats_field(info: &str, field: &str) -> BTreeMap<String, u64> {
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            let v = rest
                .split(',')
                .find_map(|kv| kv.strip_prefix(field)?.strip_prefix('='))?
                .parse()
                .ok()?;
            Some((name.to_owned(), v))
        })
        .collect()
}

/// `used_cpu_sys + used_cpu_user` (seconds) from `INFO cpu`.
pub fn parse_cpu_seconds(info: &str) -> Option<f64> {
    let field = |name: &str| -> Option<f64> {
        info.lines()
            .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))?
            .trim()
            .parse()
            .ok()
    };
    Some(field("used_cpu_sys")? + field("used_cpu_user")?)
}

/// Redis's own accounting at one moment, summed over every master.
#[derive(Debug, Clone, Default)]
pub struct Accounting {
    pub calls: BTreeMap<String, u64>,
    /// Microseconds spent executing each command (a script's includes the
    /// commands it calls, which are also counted under their own names).
    pub usec: BTreeMap<String, u64>,
    /// CPU seconds the server processes used (user + system): execution,
    /// protocol parsing, network syscalls.
    pub cpu_s: f64,
}

pub async fn accounting(client: &Client) -> anyhow::Result<Accounting> {
    let mut a = Accounting::default();
    for node in masters(client)? {
        let (stats, cpu): (String, String) = match node {
            Some(server) => {
                let c = client.with_cluster_node(server);
                (
                    c.info(Some(InfoKind::CommandStats)).await?,
                    c.info(Some(InfoKind::Cpu)).await?,
                )
            }
            None => (
                client.info(Some(InfoKind::CommandStats)).await?,
                client.info(Some(InfoKind::Cpu)).await?,
            ),
        };
        a.calls = sum_commandstats([a.calls, parse_commandstats(&stats)]);
        a.usec = sum_commandstats([a.usec, parse_commandstats_field(&stats, "usec")]);
        a.cpu_s += parse_cpu_seconds(&cpu).context("no used_cpu_sys/used_cpu_user in INFO cpu")?;
    }
    Ok(a)
}

/// What Redis spent per unit of work (a hold) between two [`Accounting`]s.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RedisCost {
    pub units: u64,
    /// Server CPU (all masters) per unit, µs.
    pub cpu_us_per_unit: f64,
    /// Calls per unit, by command (in-script calls included).
    pub calls_per_unit: BTreeMap<String, f64>,
    /// Execution time per call, by command, µs.
    pub usec_per_call: BTreeMap<String, f64>,
}

pub fn cost(before: &Accounting, after: &Accounting, units: u64) -> Option<RedisCost> {
    if units == 0 {
        return None;
    }
    let calls = delta(&before.calls, &after.calls);
    let usec = delta(&before.usec, &after.usec);
    Some(RedisCost {
        units,
        cpu_us_per_unit: (after.cpu_s - before.cpu_s).max(0.0) * 1e6 / units as f64,
        calls_per_unit: calls
            .iter()
            .map(|(k, c)| (k.clone(), *c as f64 / units as f64))
            .collect(),
        usec_per_call: calls
            .iter()
            .map(|(k, c)| {
                (
                    k.clone(),
                    usec.get(k).copied().unwrap_or(0) as f64 / *c as f64,
                )
            })
            .collect(),
    })
}

/// The masters a command may run on: one server, or every primary of the
/// cluster's slot map (as the client last read it).
pub fn masters(client: &Client) -> anyhow::Result<Vec<Option<Server>>> {
    if !client.is_clustered() {
        return Ok(vec![None]);
    }
    let primaries = client
        .cached_cluster_state()
        .map(|s| s.unique_primary_nodes())
        .unwrap_or_default();
    anyhow::ensure!(!primaries.is_empty(), "the cluster's slot map is empty");
    Ok(primaries.into_iter().map(Some).collect())
}

/// `INFO commandstats` of one server, or summed over every cluster master.
pub async fn commandstats(client: &Client) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut per_master = Vec::new();
    for node in masters(client)? {
        let info: String = match node {
            Some(server) => {
                client
                    .with_cluster_node(server)
                    .info(Some(InfoKind::CommandStats))
                    .await?
            }
            None => client.info(Some(InfoKind::CommandStats)).await?,
        };
        per_master.push(parse_commandstats(&info));
    }
    Ok(sum_commandstats(per_master))
}

/// Redis's memory and key count at one moment, summed over every master:
/// `used_memory` (INFO memory) and the keys of every database (INFO
/// keyspace, the figure `DBSIZE` gives per database).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Footprint {
    pub used_memory: u64,
    pub keys: u64,
}

pub async fn footprint(client: &Client) -> anyhow::Result<Footprint> {
    let mut f = Footprint::default();
    for node in masters(client)? {
        let (mem, keyspace): (String, String) = match node {
            Some(server) => {
                let c = client.with_cluster_node(server);
                (
                    c.info(Some(InfoKind::Memory)).await?,
                    c.info(Some(InfoKind::Keyspace)).await?,
                )
            }
            None => (
                client.info(Some(InfoKind::Memory)).await?,
                client.info(Some(InfoKind::Keyspace)).await?,
            ),
        };
        f.used_memory +=
            parse_info_u64(&mem, "used_memory").context("no used_memory in INFO memory")?;
        f.keys += parse_keyspace_keys(&keyspace);
    }
    Ok(f)
}

/// One integer field (`name:123`) of an INFO section.
pub fn parse_info_u64(info: &str, name: &str) -> Option<u64> {
    info.lines()
        .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))?
        .trim()
        .parse()
        .ok()
}

/// Keys over every database of `INFO keyspace` (`db0:keys=12,expires=3,…`).
pub fn parse_keyspace_keys(info: &str) -> u64 {
    info.lines()
        .filter(|l| l.trim().starts_with("db"))
        .filter_map(|l| {
            l.split_once(':')?
                .1
                .split(',')
                .find_map(|kv| kv.trim().strip_prefix("keys="))?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// Calls per command summed over several servers.
pub fn sum_commandstats(
    parts: impl IntoIterator<Item = BTreeMap<String, u64>>,
) -> BTreeMap<String, u64> {
    let mut total = BTreeMap::new();
    for part in parts {
        for (k, v) in part {
            *total.entry(k).or_default() += v;
        }
    }
    total
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
    /// Masters benchmarked at once (1: one redis-server). On a cluster each
    /// master gets a throw-away shard of its own, its share of the clients
    /// and requests, and its own redis-benchmark; the figures below are the
    /// sum of the rates and the worst master's latencies.
    pub masters: usize,
    /// Every call creates a hold (stock never runs out).
    pub reserve_held: Option<BenchLine>,
    /// Every call finds the shard dry (the sold-out answer's Redis cost on one shard).
    pub reserve_dry: Option<BenchLine>,
    /// Per master (`host:port`), held then dry.
    pub per_master: Vec<(String, BenchLine, BenchLine)>,
    /// Redis's own accounting per call (all masters): the reserve script's
    /// cost alone, without flashgate's other commands.
    pub held_cost: Option<RedisCost>,
    pub dry_cost: Option<RedisCost>,
    pub script_sha: String,
}

/// Many masters' redis-benchmark lines, run at the same time, as one: the
/// rates add up, the mean latency is weighted by rate, the percentiles and
/// the maximum are the worst master's (a bound, not a merged histogram).
pub fn combine(lines: &[BenchLine]) -> Option<BenchLine> {
    let rps: f64 = lines.iter().map(|l| l.rps).sum();
    let worst = |f: fn(&BenchLine) -> f64| lines.iter().map(f).fold(f64::NAN, f64::max);
    (!lines.is_empty() && rps > 0.0).then(|| BenchLine {
        rps,
        avg_ms: lines.iter().map(|l| l.avg_ms * l.rps).sum::<f64>() / rps,
        p50_ms: worst(|l| l.p50_ms),
        p99_ms: worst(|l| l.p99_ms),
        max_ms: worst(|l| l.max_ms),
    })
}

/// `total` split into `parts` shares that differ by at most one, none zero
/// when `total >= parts`.
pub fn split_evenly(total: u64, parts: usize) -> Vec<u64> {
    let parts = parts.max(1) as u64;
    (0..parts)
        .map(|i| total / parts + u64::from(i < total % parts))
        .collect()
}

/// A hash tag `<base>.<n>` whose slot `owns` accepts (the first n that
/// fits): a shard tag that lives on a chosen cluster master, found the way
/// the service's placement does it (CRC16 of the tag, locally).
pub fn tag_on_node(base: &str, owns: impl Fn(u16) -> bool) -> Option<String> {
    (0..1_000_000u32)
        .map(|n| format!("{base}.{n}"))
        .find(|t| owns(fred::util::redis_keyslot(t.as_bytes())))
}

/// One redis-benchmark run of the reserve script: where, on which shard.
#[derive(Debug, Clone)]
pub struct BenchTarget {
    pub host: String,
    pub port: u16,
    /// The throw-away shard's hash tag: every key of the call carries it.
    pub tag: String,
    pub clients: usize,
    pub requests: u64,
    /// Each call also makes the key's claim (SET NX GET of one more key), as
    /// the service does on one Redis server; on a cluster the claim is a
    /// call of its own. The claim key carries the shard's tag too, so every
    /// key the benchmark leaves matches the shard's prefix (dropped after it).
    pub claim: bool,
}

impl BenchTarget {
    fn prefix(&self) -> String {
        ShardKeys::new(&self.tag).prefix().to_string()
    }

    /// stock, books, holds, events, wlopen, keys: reserve.lua's KEYS.
    fn keys(&self) -> [String; 6] {
        let k = ShardKeys::new(&self.tag);
        [
            k.stock(),
            k.books(),
            k.holds(),
            k.events(),
            k.wlopen(),
            k.reserved_keys(),
        ]
    }
}

/// `redis-benchmark` arguments that EVALSHA `lua/reserve.lua` on `t`'s shard
/// with fresh idempotency keys and reservation ids (`__rand_int__`). All
/// keys share the shard's hash tag, as a cluster requires of one script.
pub fn benchmark_args(t: &BenchTarget, sha: &str, sku: &str) -> Vec<String> {
    let p = t.prefix();
    let [stock, books, holds, events, wlopen, keys] = t.keys();
    // A batch of one request (lua/reserve.lua): KEYS stock books holds
    // events wlopen keys; ARGV hold_ms idem_ttl_ms record_ttl_ms window, then the
    // request's key rid qty user flags claim_record claim_body (the script
    // builds the fingerprint from qty and user, and names the request's
    // verdict and record keys from the shard's prefix; with a claim, the
    // hold's record rides in it, data layout 6): the same work as the
    // service's call.
    let (claim_key, claim_body) = if t.claim {
        // (the service's body is `<sku>\n<fingerprint>`; a newline would
        // break redis-benchmark's CSV line, which repeats the command)
        (format!("{p}claim:bk__rand_int__"), format!("{sku}:fp"))
    } else {
        (String::new(), String::new())
    };
    [
        "-h",
        &t.host,
        "-p",
        &t.port.to_string(),
        "-c",
        &t.clients.to_string(),
        "-n",
        &t.requests.to_string(),
        "-r",
        "1000000000",
        "--csv",
        "EVALSHA",
        sha,
        "6",
        &stock,
        &books,
        &holds,
        &events,
        &wlopen,
        &keys,
        "600000",
        "120000",
        "120000",
        "", // no sale window
        "bk__rand_int__",
        &format!("{sku}.0.br__rand_int__"),
        "1",
        "bench-user",
        "3",
        &claim_key,
        &claim_body,
    ]
    .iter()
    .map(|a| a.to_string())
    .collect()
}

/// Load `lib.lua` + `reserve.lua` the way the service does (prelude, newline,
/// body; on every master of a cluster), give a throw-away shard of its own
/// enough (or no) stock — on a cluster one shard per master, each on a tag
/// that master serves — and let `redis-benchmark` EVALSHA it with fresh
/// idempotency keys, on every master at once.
///
/// Not `redis-benchmark --cluster` (7.0.15, tried): it spreads its clients
/// over the masters and, for keys written with `{tag}`, puts in a tag of its
/// own choosing per master (e.g. `{06S}`, `{63n}`), so the script would meet
/// shards nobody loaded; keys with a fixed tag make it stop at the first
/// `MOVED` (exit 1, no result). One plain redis-benchmark per master, each on
/// a shard we loaded on that master, measures the same thing under control.
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
        .script_load_cluster(format!("{lib}\n{body}"))
        .await
        .context("SCRIPT LOAD reserve")?;
    let sku = format!("{run_id}-redisbase");
    let mut targets = Vec::new();
    let masters = masters(client)?;
    let shares = split_evenly(clients as u64, masters.len())
        .into_iter()
        .zip(split_evenly(requests, masters.len()));
    for (node, (c, n)) in masters.iter().zip(shares) {
        let (host, port, tag) = match node {
            None => {
                let (host, port) = loopback_redis(redis_url)?;
                (host, port, default_tag(&sku, 0))
            }
            Some(server) => {
                let (host, port) =
                    loopback_node(&format!("{}:{}", server.host, server.port), redis_url)
                        .context("a master in the cluster's slot map")?;
                let state = client
                    .cached_cluster_state()
                    .context("the cluster's slot map")?;
                let tag = tag_on_node(&format!("{sku}#{port}"), |slot| {
                    state.get_server(slot) == Some(server)
                })
                .with_context(|| format!("no hash tag found for master {host}:{port}"))?;
                (host, port, tag)
            }
        };
        targets.push(BenchTarget {
            host,
            port,
            tag,
            clients: (c as usize).max(1),
            requests: n.max(1),
            claim: node.is_none(),
        });
    }

    let run = |held: bool| {
        let (targets, sha, sku) = (targets.clone(), sha.clone(), sku.clone());
        async move {
            for t in &targets {
                let stock = if held { t.requests + 1 } else { 0 };
                let [stock_key, books, ..] = t.keys();
                client.del::<(), _>(t.keys().to_vec()).await?;
                client
                    .set::<(), _, _>(&stock_key, stock, None, None, false)
                    .await?;
                client
                    .hset::<(), _, _>(
                        &books,
                        [
                            ("initial", stock),
                            ("held", 0),
                            ("sold", 0),
                            ("xin", 0),
                            ("xout", 0),
                        ],
                    )
                    .await?;
            }
            // every master's benchmark at once
            let acct0 = accounting(client).await?;
            let runs: Vec<_> = targets
                .iter()
                .map(|t| {
                    let mut cmd = tokio::process::Command::new(bench_bin);
                    cmd.args(benchmark_args(t, &sha, &sku))
                        .kill_on_drop(true)
                        .stdin(std::process::Stdio::null());
                    tokio::spawn(async move {
                        tokio::time::timeout(Duration::from_secs(120), cmd.output()).await
                    })
                })
                .collect();
            let mut outputs = Vec::new();
            for r in runs {
                outputs.push(
                    r.await
                        .context("redis-benchmark task")?
                        .context("redis-benchmark ran over 120 s")?
                        .with_context(|| format!("running {}", bench_bin.display()))?,
                );
            }
            let acct1 = accounting(client).await?;
            let calls: u64 = targets.iter().map(|t| t.requests).sum();
            let cost = cost(&acct0, &acct1, calls);
            let mut lines = Vec::new();
            for (t, out) in targets.iter().zip(outputs) {
                let text = String::from_utf8_lossy(&out.stdout);
                if !out.status.success() {
                    bail!(
                        "redis-benchmark failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                // A script error shows up only as an error reply: check the books moved.
                let [_, books, ..] = t.keys();
                let got: Option<i64> = client.hget(&books, "held").await?;
                let got = got.unwrap_or(0);
                let expect = if held { t.requests as i64 } else { 0 };
                if (held && got < expect * 9 / 10) || (!held && got != 0) {
                    bail!(
                        "reserve script did not run as expected on {}:{}: held {got}, expected ~{expect}",
                        t.host,
                        t.port
                    );
                }
                client.del::<(), _>(t.keys().to_vec()).await?;
                // the holds, records and claims the run made: they would
                // weigh on the phases after it (with its 600,000 keys left,
                // Redis's CPU per hold in the capacity phase was 80-85 µs,
                // 65 µs without: bench/README.md)
                let dropped = drop_matching(client, &format!("{}*", t.prefix())).await?;
                eprintln!(
                    "[loadtest] Redis baseline: dropped its {dropped} keys on {}:{}",
                    t.host, t.port
                );
                lines.push(
                    parse_benchmark_csv(&text)
                        .with_context(|| format!("unreadable redis-benchmark output: {text}"))?,
                );
            }
            anyhow::Ok((lines, cost))
        }
    };
    let (held, held_cost) = run(true).await?;
    let (dry, dry_cost) = run(false).await?;
    let per_master = targets
        .iter()
        .zip(held.iter().zip(&dry))
        .map(|(t, (h, d))| (format!("{}:{}", t.host, t.port), h.clone(), d.clone()))
        .collect();
    Ok(RedisBaseline {
        clients,
        requests,
        masters: targets.len(),
        reserve_held: combine(&held),
        reserve_dry: combine(&dry),
        per_master,
        held_cost,
        dry_cost,
        script_sha: sha,
    })
}

/// UNLINK every key matching `pattern` (a pattern with a hash tag: one
/// slot, so on a cluster it is scanned on the master serving it).
pub async fn drop_matching(client: &Client, pattern: &str) -> anyhow::Result<u64> {
    use futures::StreamExt;
    let mut keys = std::pin::pin!(client.scan_buffered(pattern.to_string(), Some(1000), None));
    let mut batch: Vec<Key> = Vec::new();
    let mut dropped = 0;
    while let Some(key) = keys.next().await {
        batch.push(key?);
        if batch.len() == 1000 {
            dropped += client.unlink::<u64, _>(std::mem::take(&mut batch)).await?;
        }
    }
    if !batch.is_empty() {
        dropped += client.unlink::<u64, _>(batch).await?;
    }
    Ok(dropped)
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
    fn memory_and_keyspace_parse() {
        let mem = "# Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\nused_memory_rss:2000000\r\n";
        assert_eq!(parse_info_u64(mem, "used_memory"), Some(1_048_576));
        assert_eq!(parse_info_u64(mem, "used_memory_rss"), Some(2_000_000));
        assert_eq!(parse_info_u64(mem, "maxmemory"), None);
        let ks = "# Keyspace\r\ndb0:keys=120,expires=7,avg_ttl=0,subexpiry=0\r\ndb3:keys=5,expires=0,avg_ttl=0\r\n";
        assert_eq!(parse_keyspace_keys(ks), 125);
        assert_eq!(parse_keyspace_keys("# Keyspace\r\n"), 0);
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
        let t = BenchTarget {
            host: "127.0.0.1".into(),
            port: 6379,
            tag: default_tag("LT1", 3),
            clients: 1,
            requests: 1,
            claim: false,
        };
        assert_eq!(t.prefix(), "fg:{LT1#3}:");
        assert_eq!(t.keys()[0], "fg:{LT1#3}:stock");
    }

    #[test]
    fn only_loopback_cluster_nodes() {
        let url = "redis-cluster://127.0.0.1:7000?node=127.0.0.1:7001&node=localhost:7002";
        assert_eq!(loopback_redis(url).unwrap(), ("127.0.0.1".into(), 7000));
        assert!(is_cluster_url(url));
        assert!(!is_cluster_url("redis://127.0.0.1:7000"));
        assert!(loopback_redis("redis-cluster://127.0.0.1:7000?node=10.0.0.2:7001").is_err());
        assert!(loopback_redis("redis-cluster://10.0.0.2:7000?node=127.0.0.1:7001").is_err());
        assert!(loopback_redis("redis-cluster://127.0.0.1:7000?node=u:p@127.0.0.1:7001").is_err());
    }

    #[test]
    fn cost_per_hold() {
        let before = Accounting {
            calls: parse_commandstats("cmdstat_evalsha:calls=10,usec=100\ncmdstat_set:calls=10,usec=20\n"),
            usec: parse_commandstats_field(
                "cmdstat_evalsha:calls=10,usec=100,usec_per_call=10.00\ncmdstat_set:calls=10,usec=20\n",
                "usec",
            ),
            cpu_s: 1.5,
        };
        let after = Accounting {
            calls: parse_commandstats("cmdstat_evalsha:calls=1010,usec=30100\ncmdstat_set:calls=2010,usec=4020\n"),
            usec: parse_commandstats_field(
                "cmdstat_evalsha:calls=1010,usec=30100,usec_per_call=29.80\ncmdstat_set:calls=2010,usec=4020\n",
                "usec",
            ),
            cpu_s: 1.6,
        };
        assert_eq!(before.usec["evalsha"], 100, "usec=, not usec_per_call=");
        let c = cost(&before, &after, 1000).unwrap();
        assert!((c.cpu_us_per_unit - 100.0).abs() < 1e-6);
        assert_eq!(c.calls_per_unit["evalsha"], 1.0);
        assert_eq!(c.calls_per_unit["set"], 2.0);
        assert_eq!(c.usec_per_call["evalsha"], 30.0);
        assert_eq!(c.usec_per_call["set"], 2.0);
        assert!(cost(&before, &after, 0).is_none());
        let cpu = "# CPU\r\nused_cpu_sys:1.250000\r\nused_cpu_user:2.500000\r\nused_cpu_sys_children:0.0\r\n";
        assert_eq!(parse_cpu_seconds(cpu), Some(3.75));
        assert_eq!(parse_cpu_seconds(""), None);
    }

    #[test]
    fn commandstats_add_up_over_masters() {
        let a = parse_commandstats("cmdstat_evalsha:calls=10,usec=5\ncmdstat_get:calls=3,usec=1\n");
        let b = parse_commandstats("cmdstat_evalsha:calls=5,usec=2\ncmdstat_set:calls=7,usec=1\n");
        let sum = sum_commandstats([a, b]);
        assert_eq!(sum["evalsha"], 15);
        assert_eq!(sum["get"], 3);
        assert_eq!(sum["set"], 7);
    }

    #[test]
    fn benchmark_keys_share_one_hash_tag() {
        let t = BenchTarget {
            host: "127.0.0.1".into(),
            port: 7001,
            tag: "LT1-redisbase#7001.42".into(),
            clients: 85,
            requests: 66_667,
            claim: false,
        };
        let args = benchmark_args(&t, "abc", "LT1-redisbase");
        let at = args.iter().position(|a| a == "EVALSHA").unwrap();
        assert_eq!(&args[at + 1..at + 3], ["abc", "6"]);
        let keys = &args[at + 3..at + 9];
        assert!(
            keys.iter()
                .all(|k| k.starts_with("fg:{LT1-redisbase#7001.42}:")),
            "{keys:?}"
        );
        let slots: std::collections::BTreeSet<u16> = keys
            .iter()
            .map(|k| fred::util::redis_keyslot(k.as_bytes()))
            .collect();
        assert_eq!(slots.len(), 1, "one slot: no CROSSSLOT");
        // one server: the claim rides along, like the service's call
        let one = benchmark_args(&BenchTarget { claim: true, ..t }, "abc", "LT1-redisbase");
        assert!(one.contains(&"fg:{LT1-redisbase#7001.42}:claim:bk__rand_int__".to_string()));
        assert!(
            one.iter().all(|a| !a.contains('\n')),
            "redis-benchmark's CSV output repeats the command on one line"
        );
        let flag = |f: &str| args[args.iter().position(|a| a == f).unwrap() + 1].clone();
        assert_eq!(
            (flag("-p"), flag("-c"), flag("-n")),
            ("7001".into(), "85".into(), "66667".into())
        );
    }

    #[tokio::test]
    async fn drop_matching_unlinks_exactly_the_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let (_redis, url) = crate::procs::spawn_redis(Path::new("redis-server"), dir.path())
            .await
            .unwrap();
        let client = connect(&url).await.unwrap();
        let pairs: Vec<(String, String)> = (0..2_500)
            .map(|i| {
                (
                    format!("fg:{{LT1-redisbase#0}}:idem:bk{i}"),
                    "x".to_string(),
                )
            })
            .chain((0..10).map(|i| (format!("fg:{{LT1#0}}:idem:bk{i}"), "y".to_string())))
            .collect();
        client.mset(pairs).await.unwrap();
        let dropped = drop_matching(&client, "fg:{LT1-redisbase#0}:*")
            .await
            .unwrap();
        assert_eq!(dropped, 2_500);
        let left: u64 = client.dbsize().await.unwrap();
        assert_eq!(left, 10, "the service's keys stay");
    }

    #[test]
    fn a_tag_on_the_chosen_master() {
        // a master serving slots 5461..=10922 (the middle third of 3)
        let tag = tag_on_node("LT1-redisbase#7001", |s| (5461..=10922).contains(&s)).unwrap();
        assert!(tag.starts_with("LT1-redisbase#7001."));
        let slot = fred::util::redis_keyslot(format!("fg:{{{tag}}}:stock").as_bytes());
        assert!((5461..=10922).contains(&slot), "{tag} → slot {slot}");
        assert_eq!(tag_on_node("x", |_| false), None);
    }

    #[test]
    fn shares_and_combined_rates() {
        assert_eq!(split_evenly(256, 3), [86, 85, 85]);
        assert_eq!(split_evenly(200_000, 1), [200_000]);
        assert_eq!(split_evenly(2, 3), [1, 1, 0]);
        let l = |rps: f64, avg: f64, p99: f64| BenchLine {
            rps,
            avg_ms: avg,
            p50_ms: avg,
            p99_ms: p99,
            max_ms: p99 * 2.0,
        };
        let c = combine(&[l(10_000.0, 1.0, 3.0), l(30_000.0, 2.0, 5.0)]).unwrap();
        assert_eq!(c.rps, 40_000.0);
        assert!((c.avg_ms - 1.75).abs() < 1e-9);
        assert_eq!((c.p50_ms, c.p99_ms, c.max_ms), (2.0, 5.0, 10.0));
        assert!(combine(&[]).is_none());
    }
}
