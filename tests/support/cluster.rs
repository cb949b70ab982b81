//! A real Redis Cluster for tests: `masters` primaries with `replicas`
//! replicas each, `redis-server --cluster-enabled yes` processes on free ports
//! (client and bus port both picked free) in one temp dir, joined with
//! `redis-cli --cluster create … --cluster-yes`. Every process is killed on
//! `Drop`. Faults are injected by breaking the real thing: SIGKILL a master,
//! `CLUSTER FAILOVER` on a replica, `CLUSTER SETSLOT`/`MIGRATE` a slot, a
//! replica paused (SIGSTOP) and cut off (`CLIENT KILL TYPE replica`) so that
//! its master's next writes never reach it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::free_port;

/// How long a node may be silent before the others mark it failed (and its
/// replica is promoted). Short so that the failover test is quick; long
/// enough that a busy 2-core machine does not fail nodes over by accident.
pub const NODE_TIMEOUT_MS: u64 = 2_000;

pub struct ClusterNode {
    pub port: u16,
    bus_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl ClusterNode {
    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--cluster-port", &self.bus_port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", "nodes.conf"])
            .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
            // a replica that saw its master recently may be promoted at once
            .args(["--cluster-replica-validity-factor", "0"])
            // a master down leaves its slots uncovered until its replica is
            // promoted: the other masters keep serving theirs meanwhile
            // (with the default `yes` every node refuses every command once
            // the dead master is marked failed)
            .args(["--cluster-require-full-coverage", "no"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(child) = child else { return false };
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if cli(self.port, &["PING"]) == "PONG" {
                return true;
            }
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return false; // exited: a port was taken
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// SIGKILL, like a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP: the process hangs (a stalled replica acknowledges nothing).
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`ClusterNode::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status();
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Cluster {
    pub nodes: Vec<ClusterNode>,
    _dir: TempDir,
}

/// One line of `CLUSTER NODES`.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub id: String,
    pub port: u16,
    pub master: bool,
    pub failed: bool,
    /// The master's id, for a replica.
    pub master_id: Option<String>,
    /// Slot ranges served (masters).
    pub slots: Vec<(u16, u16)>,
}

/// Run one command with redis-cli against `port`; stdout, trimmed.
pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("timeout")
        .args(["10", "redis-cli", "-p", &port.to_string()])
        .args(args)
        .stderr(Stdio::null())
        .output();
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        Err(_) => String::new(),
    }
}

/// The CRC16 hash slot of a key (Redis Cluster's `CLUSTER KEYSLOT`).
pub fn keyslot(key: &str) -> u16 {
    fred::util::redis_keyslot(key.as_bytes())
}

impl Cluster {
    /// Start and join `masters` primaries with `replicas` replicas each;
    /// returns once every node reports `cluster_state:ok`, agrees on the
    /// layout, and every replica's link to its master is up.
    pub fn start(masters: usize, replicas: usize) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut nodes = Vec::new();
        for i in 0..masters * (1 + replicas) {
            let node_dir = dir.path().join(format!("n{i}"));
            std::fs::create_dir_all(&node_dir).expect("node dir");
            let mut started = None;
            for _ in 0..5 {
                let mut n = ClusterNode {
                    port: free_port(),
                    bus_port: free_port(),
                    dir: node_dir.clone(),
                    child: None,
                };
                if n.spawn() {
                    started = Some(n);
                    break;
                }
                let _ = std::fs::remove_file(node_dir.join("nodes.conf"));
            }
            nodes.push(started.expect("could not start a cluster node (redis-server installed?)"));
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let c = Cluster { nodes, _dir: dir };
        c.wait_healthy(Duration::from_secs(60));
        c
    }

    /// `redis-cluster://` URL with every live node as a seed (a killed node
    /// is left out, so a process started after a failover does not try it).
    pub fn url(&self) -> String {
        let mut ports = self.live_ports().into_iter();
        let first = ports.next().unwrap_or(0);
        let rest: Vec<String> = ports.map(|p| format!("node=127.0.0.1:{p}")).collect();
        format!("redis-cluster://127.0.0.1:{first}?{}", rest.join("&"))
    }

    fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.is_running())
            .map(|n| n.port)
            .collect()
    }

    /// Wait until every live node says `cluster_state:ok`, they agree on who
    /// serves every slot, and every live replica is in sync with its master.
    pub fn wait_healthy(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if self.is_healthy() {
                return;
            }
            assert!(Instant::now() < deadline, "cluster not healthy in time");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn is_healthy(&self) -> bool {
        let ports = self.live_ports();
        let mut views = Vec::new();
        for &p in &ports {
            if !cli(p, &["CLUSTER", "INFO"]).contains("cluster_state:ok") {
                return false;
            }
            let nodes = self.nodes_from(p);
            let mut owners: Vec<(u16, u16, u16)> = nodes
                .iter()
                .filter(|n| n.master && !n.failed)
                .flat_map(|n| n.slots.iter().map(move |&(a, b)| (a, b, n.port)))
                .collect();
            owners.sort();
            let covered: u32 = owners.iter().map(|&(a, b, _)| u32::from(b - a) + 1).sum();
            if covered != 16384 {
                return false;
            }
            views.push(owners);
            let info = cli(p, &["INFO", "replication"]);
            if info.contains("role:slave") && !info.contains("master_link_status:up") {
                return false;
            }
        }
        views.windows(2).all(|w| w[0] == w[1])
    }

    /// `CLUSTER NODES` as seen by the node on `port`.
    pub fn nodes_from(&self, port: u16) -> Vec<NodeInfo> {
        cli(port, &["CLUSTER", "NODES"])
            .lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                if f.len() < 8 {
                    return None;
                }
                let port = f[1].split('@').next()?.rsplit(':').next()?.parse().ok()?;
                let flags = f[2];
                let slots = f[8..]
                    .iter()
                    .filter(|s| !s.starts_with('['))
                    .filter_map(|s| match s.split_once('-') {
                        Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                        None => s.parse().ok().map(|a| (a, a)),
                    })
                    .collect();
                Some(NodeInfo {
                    id: f[0].to_string(),
                    port,
                    master: flags.contains("master"),
                    failed: flags.contains("fail") && !flags.contains("fail?"),
                    master_id: (f[3] != "-").then(|| f[3].to_string()),
                    slots,
                })
            })
            .collect()
    }

    /// The cluster's layout as a live node sees it.
    pub fn layout(&self) -> Vec<NodeInfo> {
        let port = self.live_ports().first().copied().unwrap_or(0);
        self.nodes_from(port)
    }

    /// The port of the master serving `slot`.
    pub fn owner(&self, slot: u16) -> u16 {
        self.layout()
            .iter()
            .find(|n| n.master && !n.failed && n.slots.iter().any(|&(a, b)| a <= slot && slot <= b))
            .map(|n| n.port)
            .expect("every slot has an owner")
    }

    /// Masters and the slots each serves.
    pub fn masters(&self) -> BTreeMap<u16, Vec<(u16, u16)>> {
        self.layout()
            .into_iter()
            .filter(|n| n.master && !n.failed && !n.slots.is_empty())
            .map(|n| (n.port, n.slots))
            .collect()
    }

    pub fn node(&self, port: u16) -> &ClusterNode {
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .expect("a node of this cluster")
    }

    pub fn node_mut(&mut self, port: u16) -> &mut ClusterNode {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of this cluster")
    }

    /// A replica of the master on `port`.
    pub fn replica_of(&self, port: u16) -> u16 {
        let layout = self.layout();
        let id = layout
            .iter()
            .find(|n| n.port == port)
            .map(|n| n.id.clone())
            .expect("master known");
        layout
            .iter()
            .find(|n| n.master_id.as_deref() == Some(id.as_str()) && !n.failed)
            .map(|n| n.port)
            .expect("the master has a replica")
    }

    /// Wait until the replica on `replica` has acknowledged every byte of its
    /// master's replication stream (its offset, as the master last heard it
    /// in `REPLCONF ACK`, equals the master's own): the replica then has
    /// every write the master made so far.
    pub fn wait_replica_synced(&self, master: u16, replica: u16, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let info = cli(master, &["INFO", "replication"]);
            let own = info
                .lines()
                .find_map(|l| l.trim().strip_prefix("master_repl_offset:"))
                .and_then(|v| v.parse::<u64>().ok());
            let acked = info.lines().find_map(|l| {
                let fields = l.trim().split_once(':')?.1;
                let f = |k: &str| {
                    fields
                        .split(',')
                        .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
                };
                (f("port")? == replica.to_string() && f("state")? == "online")
                    .then(|| f("offset")?.parse::<u64>().ok())
                    .flatten()
            });
            if own.is_some() && own == acked {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "replica {replica} not in sync with {master}: {info}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Cut the master on `master` off from its replicas (`CLIENT KILL TYPE
    /// replica`): what it writes from now on reaches no replica. With the
    /// replica paused (SIGSTOP) it cannot reconnect and resync either.
    /// Returns how many replica links were closed.
    pub fn cut_replica_links(&self, master: u16) -> usize {
        cli(master, &["CLIENT", "KILL", "TYPE", "replica"])
            .parse()
            .unwrap_or(0)
    }

    /// Promote the replica on `replica` now (`CLUSTER FAILOVER TAKEOVER`: no
    /// agreement from its master or the other masters needed) and wait until
    /// it says it is a master.
    pub fn take_over(&self, replica: u16, limit: Duration) {
        let answer = cli(replica, &["CLUSTER", "FAILOVER", "TAKEOVER"]);
        assert_eq!(answer, "OK", "CLUSTER FAILOVER TAKEOVER on {replica}");
        let deadline = Instant::now() + limit;
        while !cli(replica, &["ROLE"]).starts_with("master") {
            assert!(Instant::now() < deadline, "{replica} was not promoted");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Move `slot` and its keys from its master to the master on `to`, the way
    /// `redis-cli --cluster reshard` does it: IMPORTING/MIGRATING, then
    /// `MIGRATE` in batches (clients meanwhile get `ASK`), then `SETSLOT NODE`
    /// everywhere (clients then get `MOVED`). `pause` runs between the
    /// batches, so a sale can go on while keys are half-moved.
    pub fn migrate_slot(&self, slot: u16, to: u16, pause: impl FnMut()) {
        let m = self.begin_migration(slot, to);
        self.finish_migration(&m, pause);
    }

    /// The first half of [`Cluster::migrate_slot`]: `slot` IMPORTING on `to`,
    /// MIGRATING on its master; every key still on the master.
    pub fn begin_migration(&self, slot: u16, to: u16) -> Migration {
        let from = self.owner(slot);
        assert_ne!(from, to, "slot already there");
        let layout = self.layout();
        let id_of = |p: u16| {
            layout
                .iter()
                .find(|n| n.port == p)
                .map(|n| n.id.clone())
                .expect("node id")
        };
        let (from_id, to_id) = (id_of(from), id_of(to));
        let s = slot.to_string();
        assert_eq!(
            cli(to, &["CLUSTER", "SETSLOT", &s, "IMPORTING", &from_id]),
            "OK"
        );
        assert_eq!(
            cli(from, &["CLUSTER", "SETSLOT", &s, "MIGRATING", &to_id]),
            "OK"
        );
        Migration {
            slot,
            from,
            to,
            to_id,
        }
    }

    /// The second half: the keys in batches (`pause` between them), then
    /// the slot's new owner everywhere.
    pub fn finish_migration(&self, m: &Migration, mut pause: impl FnMut()) {
        let (from, to, s) = (m.from, m.to, m.slot.to_string());
        let to_id = m.to_id.as_str();
        loop {
            let keys = cli(from, &["CLUSTER", "GETKEYSINSLOT", &s, "100"]);
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let mut args = vec!["MIGRATE", "127.0.0.1"];
            let port = to.to_string();
            args.push(&port);
            args.extend(["", "0", "5000", "KEYS"]);
            args.extend(keys.iter().copied());
            let out = cli(from, &args);
            assert!(out == "OK" || out == "NOKEY", "MIGRATE answered {out:?}");
            pause();
        }
        // the new owner first, so it never refuses its own slot
        cli(to, &["CLUSTER", "SETSLOT", &s, "NODE", to_id]);
        for n in self.live_ports() {
            cli(n, &["CLUSTER", "SETSLOT", &s, "NODE", to_id]);
        }
    }
}

/// A slot half-way between two masters ([`Cluster::begin_migration`]).
pub struct Migration {
    pub slot: u16,
    pub from: u16,
    pub to: u16,
    to_id: String,
}
