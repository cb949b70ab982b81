//! Where a command goes: on one Redis, the pool; on Redis Cluster, the
//! scripts (and the other single-key commands routed here) go to a client of
//! their own per master, chosen by the hash slot of their first key.
//!
//! Why not the cluster pool for everything: when one master dies, fred 10.1's
//! cluster router reconnects the whole client — it needs a connection to
//! every master of its slot map — and writes no command at all until that
//! succeeds, i.e. until the failover. Every shard on every master then
//! answers 503 for the whole outage. With one plain (centralized) client per
//! master, a dead master's client only times out its own commands
//! (`redis_timeout_ms` → 503) while the other masters' clients go on.
//!
//! The slot → master map is read from `CLUSTER SLOTS` (asked of every live
//! master's client at once; the pool's cached map when none answers). It is
//! refreshed when a command meets `MOVED`/`ASK`/`TRYAGAIN` (a reshard: the
//! caller resends after the refresh, see `scripts::run`) or fails to reach
//! its master (a timeout, a lost connection, `CLUSTERDOWN`: refreshed in the
//! background, the caller answers 503 and the client's retry finds the
//! promoted replica). A master that appears gets a client (same fail-fast
//! settings as the pool: `inventory::connect`); one that left the map has its
//! client closed. Refreshes run one at a time and at most every
//! [`MIN_REFRESH`].
//!
//! With `replica_ack`, every master (or the one Redis) also gets a client for
//! the acknowledgements alone (`ack_client_for_slot`): `WAIT` blocks its
//! connection on the server, and on a connection of its own it holds up
//! only other acknowledgements, never a reserve script.
//!
//! A change of the map is passed on to the pool (`sync_cluster`). The pool
//! keeps everything else (multi-key reads, `SCRIPT LOAD` on every
//! primary, the ledger's stream reads, status), and stays the fallback for a
//! slot the map does not know.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use fred::clients::{Client, Pool};
use fred::interfaces::{ClientLike, ClusterInterface};
use fred::prelude::Config as RedisConfig;
use fred::types::cluster::ClusterRouting;
use fred::types::config::ServerConfig;
use fred::types::Value;
use fred::util::redis_keyslot;

use super::InventoryError;
use crate::config::Config;

/// Refreshes of the slot map are at least this far apart.
const MIN_REFRESH: Duration = Duration::from_millis(100);

/// The Redis clients, and the routing of commands to them.
#[derive(Clone)]
pub struct Nodes {
    pool: Pool,
    cluster: Option<Arc<Masters>>,
    /// One Redis with `replica_ack`: the acknowledgements' own client.
    ack: Option<Client>,
}

/// One client per cluster master, and the slot map they serve.
struct Masters {
    /// The seed config (credentials, protocol); its server is replaced per master.
    template: RedisConfig,
    timeout: Duration,
    routes: RwLock<Arc<Routes>>,
    /// The time of the last refresh (and the lock that serializes them).
    refreshed: tokio::sync::Mutex<Instant>,
    /// A background refresh is queued or running.
    pending: AtomicBool,
    pool: Pool,
    /// `replica_ack` is on: each master gets an acknowledgement client too.
    acks: bool,
}

#[derive(Default)]
struct Routes {
    /// (first slot, last slot, master `host:port`), sorted.
    ranges: Vec<(u16, u16, String)>,
    clients: HashMap<String, Client>,
    /// The acknowledgement clients (only with `replica_ack`).
    ack_clients: HashMap<String, Client>,
}

impl Routes {
    fn master_of(&self, slot: u16) -> Option<&str> {
        let i = self.ranges.partition_point(|r| r.1 < slot);
        self.ranges
            .get(i)
            .filter(|r| r.0 <= slot)
            .map(|r| r.2.as_str())
    }
}

impl Nodes {
    /// On one Redis: the pool alone. On a cluster: also one client per
    /// master in the pool's slot map (connecting in the background).
    pub fn new(pool: Pool, config: &Config) -> Result<Nodes, InventoryError> {
        let template = RedisConfig::from_url(&config.redis_url)
            .map_err(|e| InventoryError::Unavailable(format!("bad redis_url: {e}")))?;
        let acks = config.replica_ack > 0;
        if !template.server.is_clustered() {
            let ack = if acks {
                Some(connected(template, config.redis_timeout())?)
            } else {
                None
            };
            return Ok(Nodes {
                pool,
                cluster: None,
                ack,
            });
        }
        let masters = Arc::new(Masters {
            template,
            timeout: config.redis_timeout(),
            routes: RwLock::new(Arc::new(Routes::default())),
            refreshed: tokio::sync::Mutex::new(Instant::now()),
            pending: AtomicBool::new(false),
            pool: pool.clone(),
            acks,
        });
        if let Some(routing) = pool.next().cached_cluster_state() {
            masters.install(&routing);
        }
        Ok(Nodes {
            pool,
            cluster: Some(masters),
            ack: None,
        })
    }

    /// Every command through the pool (no per-master clients).
    pub fn pool_only(pool: Pool) -> Nodes {
        Nodes {
            pool,
            cluster: None,
            ack: None,
        }
    }

    /// The client for `replica_ack`'s touch + `WAIT` of a shard on `slot`: the
    /// master's (or the one Redis's) acknowledgement client, else (acks off,
    /// or no such client yet) the one [`Nodes::client_for_slot`] gives.
    pub fn ack_client_for_slot(&self, slot: u16) -> Client {
        if let Some(c) = &self.ack {
            return c.clone();
        }
        if let Some(m) = &self.cluster {
            if let Ok(routes) = m.routes.read() {
                if let Some(c) = routes
                    .master_of(slot)
                    .and_then(|n| routes.ack_clients.get(n))
                {
                    return c.clone();
                }
            }
        }
        self.client_for_slot(Some(slot))
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The client for a command whose (first) key is `key`.
    pub fn client_for_key(&self, key: &str) -> Client {
        self.client_for_slot(Some(redis_keyslot(key.as_bytes())))
    }

    /// The client serving `slot` (the pool when not on a cluster, when the
    /// slot's master is unknown, or for a command without keys).
    pub fn client_for_slot(&self, slot: Option<u16>) -> Client {
        if let (Some(m), Some(slot)) = (&self.cluster, slot) {
            if let Ok(routes) = m.routes.read() {
                if let Some(c) = routes.master_of(slot).and_then(|n| routes.clients.get(n)) {
                    return c.clone();
                }
            }
        }
        self.pool.next().clone()
    }

    /// The master (`host:port`) serving `slot`, per the per-master routing
    /// (None on one Redis).
    pub fn master_of(&self, slot: u16) -> Option<String> {
        let m = self.cluster.as_ref()?;
        let routes = m.routes.read().ok()?;
        routes.master_of(slot).map(str::to_owned)
    }

    /// Whether the master serving `slot` is known to be unreachable right
    /// now: its client has no connection (on one Redis: never). A hint, not
    /// a verdict — see `Inventory::reserve` for why it may be wrong.
    pub fn known_down(&self, slot: u16) -> bool {
        let Some(m) = &self.cluster else { return false };
        let Ok(routes) = m.routes.read() else {
            return false;
        };
        routes
            .master_of(slot)
            .and_then(|n| routes.clients.get(n))
            .is_some_and(|c| !c.is_connected())
    }

    /// Every master, as `host:port` and a client that reaches it alone: on a
    /// cluster, the per-master clients of the current slot map; on one Redis,
    /// the pool. (`preflight.rs` asks each of them.)
    pub fn masters(&self) -> Vec<(String, Client)> {
        let Some(m) = &self.cluster else {
            let client = self.pool.next().clone();
            let name = match &client.client_config().server {
                ServerConfig::Centralized { server } => format!("{}:{}", server.host, server.port),
                _ => "redis".to_string(),
            };
            return vec![(name, client)];
        };
        let Ok(routes) = m.routes.read() else {
            return Vec::new();
        };
        let mut all: Vec<(String, Client)> = routes
            .clients
            .iter()
            .map(|(n, c)| (n.clone(), c.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Whether commands are routed per master (Redis Cluster).
    pub fn per_master(&self) -> bool {
        self.cluster.is_some()
    }

    /// Re-read the slot map now (a command met a redirection), unless a
    /// refresh ran within [`MIN_REFRESH`].
    pub async fn refresh(&self) {
        if let Some(m) = &self.cluster {
            m.refresh().await;
        }
    }

    /// Re-read the slot map in the background (a command could not reach
    /// its master: it may have died and a replica may be promoted).
    pub fn refresh_soon(&self) {
        if let Some(m) = &self.cluster {
            if m.pending.swap(true, Ordering::SeqCst) {
                return;
            }
            let m = m.clone();
            tokio::spawn(async move {
                m.refresh().await;
                m.pending.store(false, Ordering::SeqCst);
            });
        }
    }

    /// Close every per-master client (and the acknowledgement clients).
    pub async fn close(&self) {
        let mut clients: Vec<Client> = self.ack.iter().cloned().collect();
        if let Some(m) = &self.cluster {
            if let Ok(r) = m.routes.read() {
                clients.extend(r.clients.values().cloned());
                clients.extend(r.ack_clients.values().cloned());
            }
        }
        for c in clients {
            let _ = tokio::time::timeout(Duration::from_secs(1), c.quit()).await;
        }
    }
}

impl Masters {
    async fn refresh(&self) {
        let mut last = self.refreshed.lock().await;
        if last.elapsed() < MIN_REFRESH {
            return;
        }
        let routing = match self.ask_masters().await {
            Some(r) => Some(r),
            None => self.pool.next().cached_cluster_state(),
        };
        if let Some(routing) = routing.filter(|r| r.len() > 0) {
            self.install(&routing);
        }
        *last = Instant::now();
    }

    /// `CLUSTER SLOTS` from every known master at once; the first answer.
    async fn ask_masters(&self) -> Option<ClusterRouting> {
        let clients: Vec<(String, Client)> = match self.routes.read() {
            Ok(r) => r
                .clients
                .iter()
                .map(|(n, c)| (n.clone(), c.clone()))
                .collect(),
            Err(_) => return None,
        };
        let mut asks = tokio::task::JoinSet::new();
        let timeout = self.timeout;
        for (name, client) in clients {
            asks.spawn(async move {
                let host = name.rsplit_once(':').map(|(h, _)| h.to_string());
                let slots = tokio::time::timeout(timeout, client.cluster_slots::<Value>()).await;
                match (slots, host) {
                    (Ok(Ok(v)), Some(host)) => ClusterRouting::from_cluster_slots(v, host).ok(),
                    _ => None,
                }
            });
        }
        while let Some(r) = asks.join_next().await {
            if let Ok(Some(routing)) = r {
                if routing.len() > 0 {
                    return Some(routing);
                }
            }
        }
        None
    }

    /// Route by `routing`: clients for new masters, close the ones gone.
    fn install(&self, routing: &ClusterRouting) {
        let mut ranges: Vec<(u16, u16, String)> = routing
            .slots()
            .iter()
            .map(|r| {
                (
                    r.start,
                    r.end,
                    format!("{}:{}", r.primary.host, r.primary.port),
                )
            })
            .collect();
        ranges.sort();
        let Ok(mut routes) = self.routes.write() else {
            return;
        };
        if routes.ranges == ranges {
            return;
        }
        let mut clients = HashMap::new();
        let mut ack_clients = HashMap::new();
        for r in routing.slots() {
            let name = format!("{}:{}", r.primary.host, r.primary.port);
            if clients.contains_key(&name) {
                continue;
            }
            let client = match routes.clients.get(&name) {
                Some(c) => c.clone(),
                None => match self.client(&r.primary.host, r.primary.port) {
                    Ok(c) => {
                        tracing::info!(master = %name, "a client for a cluster master");
                        c
                    }
                    Err(e) => {
                        tracing::warn!(master = %name, error = %e, "no client for a cluster master; its slots go through the pool");
                        continue;
                    }
                },
            };
            if self.acks {
                let ack = match routes.ack_clients.get(&name) {
                    Some(c) => Some(c.clone()),
                    None => self
                        .client(&r.primary.host, r.primary.port)
                        .inspect_err(|e| tracing::warn!(master = %name, error = %e, "no acknowledgement client for a cluster master; its WAITs share the master's client"))
                        .ok(),
                };
                if let Some(ack) = ack {
                    ack_clients.insert(name.clone(), ack);
                }
            }
            clients.insert(name, client);
        }
        for (name, old) in routes.clients.iter().chain(routes.ack_clients.iter()) {
            if !clients.contains_key(name) {
                tracing::info!(master = %name, "no longer a cluster master: closing its client");
                let old = old.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(1), old.quit()).await;
                });
            }
        }
        let first = routes.ranges.is_empty();
        *routes = Arc::new(Routes {
            ranges,
            clients,
            ack_clients,
        });
        if !first {
            // the pool learns of the change too (it meets fewer MOVED now
            // that the scripts go elsewhere), for the commands it still sends
            let (pool, timeout) = (self.pool.clone(), self.timeout);
            tokio::spawn(async move {
                for c in pool.clients() {
                    let _ = tokio::time::timeout(timeout, c.sync_cluster()).await;
                }
            });
        }
    }

    /// A client of one master, connecting in the background.
    fn client(&self, host: &str, port: u16) -> Result<Client, InventoryError> {
        let mut config = self.template.clone();
        config.server = ServerConfig::new_centralized(host, port);
        connected(config, self.timeout)
    }
}

/// A client of its own (one connection, the pool's fail-fast settings),
/// connecting in the background.
fn connected(config: RedisConfig, timeout: Duration) -> Result<Client, InventoryError> {
    let client = super::builder(config, timeout, 2, 0)
        .build()
        .map_err(|e| InventoryError::Unavailable(e.to_string()))?;
    // the handle is the connection task; it ends when the client quits
    drop(client.connect());
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_maps_to_the_master_of_its_range() {
        let routes = Routes {
            ranges: vec![
                (0, 5460, "a:1".to_string()),
                (5461, 10922, "b:2".to_string()),
                (10924, 16383, "c:3".to_string()),
            ],
            clients: HashMap::new(),
            ack_clients: HashMap::new(),
        };
        assert_eq!(routes.master_of(0), Some("a:1"));
        assert_eq!(routes.master_of(5460), Some("a:1"));
        assert_eq!(routes.master_of(5461), Some("b:2"));
        assert_eq!(routes.master_of(10922), Some("b:2"));
        // a slot no master serves: none (the pool takes it)
        assert_eq!(routes.master_of(10923), None);
        assert_eq!(routes.master_of(16383), Some("c:3"));
        assert_eq!(Routes::default().master_of(7), None);
    }
}
