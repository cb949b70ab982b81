//! What flashgate requires of the Redis it runs on, checked on every master
//! when it connects (a failed check refuses the start) and again by
//! `/readyz` (at most every [`RECHECK`]; a failed check answers 503 until it
//! passes):
//!
//! - **Redis ≥ 7.0** (`INFO server`, `redis_version`). The reserve scripts'
//!   batch uses `SET … NX GET`, a syntax error before 7.0 — raised mid-batch,
//!   after the requests ahead of it were recorded: holds with no stock taken.
//! - **`maxmemory-policy noeviction`** (`CONFIG GET`). Under any `volatile-*`
//!   or `allkeys-*` policy Redis deletes claims, reservation records and
//!   purchase caps when memory runs short, first those with a TTL: a retry
//!   then reserves twice, held units are stranded. With `noeviction` a full
//!   Redis refuses writes instead (503s, nothing lost). An operator who has
//!   made sure memory cannot run short may say so with
//!   `allow_eviction_policy`; a Redis that hides `CONFIG` (renamed, or denied
//!   by an ACL) needs that override too, since its policy cannot be read.
//!
//! The parsing is pure (unit-tested here); the commands go to every master
//! `nodes::Nodes::masters` knows.

use fred::interfaces::ClientLike;
use fred::types::{ClusterHash, CustomCommand, Value};

use super::nodes::Nodes;
use super::InventoryError;

/// How long `/readyz` trusts the last check.
pub const RECHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// The oldest Redis flashgate runs on.
pub const MIN_VERSION: Version = Version(7, 0, 0);

/// A Redis server version: major, minor, patch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// `redis_version` of an `INFO server` reply ("7.0.15" → 7.0.15; a missing
/// patch or minor reads as 0, anything after a '-' is ignored).
pub fn redis_version(info: &str) -> Option<Version> {
    let v = info
        .lines()
        .find_map(|l| l.trim().strip_prefix("redis_version:"))?
        .trim();
    let v = v.split('-').next()?;
    let mut parts = v.split('.');
    let mut next = |required: bool| match parts.next() {
        Some(p) => p.parse::<u32>().ok(),
        None if !required => Some(0),
        None => None,
    };
    Some(Version(next(true)?, next(false)?, next(false)?))
}

/// The version check for the master `node`, from its `INFO server` text.
pub fn check_version(node: &str, info: &str) -> Result<Version, String> {
    let Some(v) = redis_version(info) else {
        return Err(format!(
            "redis at {node} reports no redis_version in INFO server; flashgate needs Redis >= {MIN_VERSION}"
        ));
    };
    if v < MIN_VERSION {
        return Err(format!(
            "redis at {node} is version {v}; flashgate needs Redis >= 7.0 (SET NX GET in its scripts is a syntax error before 7.0, which would oversell)"
        ));
    }
    Ok(v)
}

/// The eviction check for the master `node`: `policy` is what `CONFIG GET
/// maxmemory-policy` answered, or why it could not be read.
pub fn check_policy(node: &str, policy: Result<String, String>, allow: bool) -> Result<(), String> {
    match policy {
        Ok(p) if p == "noeviction" => Ok(()),
        _ if allow => Ok(()),
        Ok(p) => Err(format!(
            "redis at {node} has maxmemory-policy {p}: it may evict idempotency claims, reservation records and purchase caps (double reservations, stranded units). Set `maxmemory-policy noeviction`, or start with --allow-eviction-policy (allow_eviction_policy) if its memory cannot run short"
        )),
        Err(e) => Err(format!(
            "cannot read maxmemory-policy of redis at {node} (CONFIG GET refused: {e}); flashgate needs noeviction. Check it by hand and start with --allow-eviction-policy (allow_eviction_policy)"
        )),
    }
}

/// The policy out of a `CONFIG GET maxmemory-policy` reply (an array
/// `[name, value]` in RESP2, a map in RESP3).
fn policy_of(reply: Value) -> Option<String> {
    let flat: Vec<Value> = match reply {
        Value::Array(a) => a,
        Value::Map(m) => m
            .inner()
            .into_iter()
            .flat_map(|(k, v)| [Value::from(k), v])
            .collect(),
        _ => return None,
    };
    flat.get(1).and_then(|v| v.as_string())
}

/// What one master is: `host:port`, its version, and the check's verdict.
pub struct MasterCheck {
    pub node: String,
    pub version: Option<Version>,
    pub verdict: Result<(), String>,
}

/// Run both checks on every master, concurrently. A master that cannot be
/// reached is an `Unavailable` error in its place; a master that fails a
/// check is reported in its verdict.
pub async fn check(
    nodes: &Nodes,
    allow_eviction: bool,
) -> Result<Vec<Result<MasterCheck, InventoryError>>, InventoryError> {
    let mut masters = nodes.masters();
    if masters.is_empty() {
        // a cluster whose slot map was not known yet
        nodes.refresh().await;
        masters = nodes.masters();
    }
    if masters.is_empty() {
        return Err(InventoryError::Unavailable(
            "no redis master known to check".into(),
        ));
    }
    let mut asks = tokio::task::JoinSet::new();
    for (node, client) in masters {
        asks.spawn(check_master(node, client, allow_eviction));
    }
    let mut out = Vec::new();
    while let Some(done) = asks.join_next().await {
        out.push(done.map_err(|e| InventoryError::Protocol(format!("preflight check: {e}")))?);
    }
    Ok(out)
}

async fn check_master(
    node: String,
    client: fred::clients::Client,
    allow_eviction: bool,
) -> Result<MasterCheck, InventoryError> {
    let ask = |cmd: &'static str, args: Vec<&'static str>| {
        let client = client.clone();
        async move {
            client
                .custom::<Value, _>(
                    CustomCommand::new_static(cmd, ClusterHash::Random, false),
                    args,
                )
                .await
                .map_err(|e| match InventoryError::from(e) {
                    InventoryError::Unavailable(m) => Err(InventoryError::Unavailable(m)),
                    other => Ok(other.to_string()),
                })
        }
    };
    let info = match ask("INFO", vec!["server"]).await {
        Ok(v) => v.as_string().unwrap_or_default(),
        Err(Err(unreachable)) => return Err(unreachable),
        Err(Ok(refused)) => {
            return Ok(MasterCheck {
                verdict: Err(format!(
                    "cannot read INFO server of redis at {node} ({refused}); flashgate needs Redis >= {MIN_VERSION}"
                )),
                node,
                version: None,
            })
        }
    };
    let version = check_version(&node, &info);
    let policy = match ask("CONFIG", vec!["GET", "maxmemory-policy"]).await {
        Ok(reply) => policy_of(reply).ok_or_else(|| "an empty reply".to_string()),
        Err(Err(unreachable)) => return Err(unreachable),
        Err(Ok(refused)) => Err(refused),
    };
    let verdict = match &version {
        Err(e) => Err(e.clone()),
        Ok(_) => check_policy(&node, policy, allow_eviction),
    };
    Ok(MasterCheck {
        node,
        version: version.ok().or_else(|| redis_version(&info)),
        verdict,
    })
}

/// [`check`], every failed verdict joined into one `Unsuitable` error. An
/// unreachable master fails it (`Unavailable`) unless `skip_unreachable`:
/// `/readyz` leaves a master that is down to the failover (and to the
/// other readiness checks) and judges the masters it can reach.
pub async fn require(
    nodes: &Nodes,
    allow_eviction: bool,
    skip_unreachable: bool,
) -> Result<Vec<MasterCheck>, InventoryError> {
    let mut checks = Vec::new();
    for c in check(nodes, allow_eviction).await? {
        match c {
            Ok(c) => checks.push(c),
            Err(e) if !skip_unreachable => return Err(e),
            Err(_) => {}
        }
    }
    let failed: Vec<&str> = checks
        .iter()
        .filter_map(|c| c.verdict.as_ref().err().map(String::as_str))
        .collect();
    if !failed.is_empty() {
        return Err(InventoryError::Unsuitable(failed.join("; ")));
    }
    Ok(checks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_info_server() {
        let info = "# Server\r\nredis_version:7.0.15\r\nredis_git_sha1:00000000\r\n";
        assert_eq!(redis_version(info), Some(Version(7, 0, 15)));
        assert_eq!(redis_version("redis_version:7.2\n"), Some(Version(7, 2, 0)));
        assert_eq!(redis_version("redis_version:8\n"), Some(Version(8, 0, 0)));
        assert_eq!(
            redis_version("redis_version:7.4.0-rc1\n"),
            Some(Version(7, 4, 0))
        );
        assert_eq!(redis_version("redis_version:x.y\n"), None);
        assert_eq!(redis_version("redis_mode:standalone\n"), None);
    }

    #[test]
    fn below_7_is_refused_naming_the_node_and_the_version() {
        for (v, ok) in [
            ("6.2.14", false),
            ("6.0.0", false),
            ("5.0.7", false),
            ("7.0.0", true),
            ("7.0.15", true),
            ("7.2.4", true),
            ("8.0.1", true),
        ] {
            let r = check_version("h:1", &format!("redis_version:{v}\r\n"));
            assert_eq!(r.is_ok(), ok, "{v}: {r:?}");
            if let Err(e) = r {
                assert!(
                    e.contains(v) && e.contains("h:1") && e.contains("7.0"),
                    "{e}"
                );
            }
        }
        assert!(check_version("h:1", "").is_err());
    }

    #[test]
    fn only_noeviction_passes_unless_overridden() {
        assert!(check_policy("h:1", Ok("noeviction".into()), false).is_ok());
        for p in [
            "allkeys-lru",
            "volatile-lru",
            "allkeys-random",
            "volatile-ttl",
        ] {
            let e = check_policy("h:1", Ok(p.into()), false).unwrap_err();
            assert!(e.contains(p) && e.contains("allow-eviction-policy"), "{e}");
            assert!(check_policy("h:1", Ok(p.into()), true).is_ok());
        }
        let e = check_policy("h:1", Err("ERR unknown command 'CONFIG'".into()), false).unwrap_err();
        assert!(
            e.contains("CONFIG GET refused") && e.contains("allow-eviction-policy"),
            "{e}"
        );
        assert!(check_policy("h:1", Err("NOPERM".into()), true).is_ok());
    }
}
