//! A real Redis Cluster for tests: `masters` primaries with `replicas`
//! replicas each, `redis-server --cluster-enabled yes` processes on free ports
//! (client and bus port both picked free) in one temp dir, joined with
//! `redis-cli --cluster create … --cluster-yes`. Every process is killed on
//! `Drop`. Faults are injected by breaking the real thing: SIGKILL a master,
//! `CLUSTER FAILOVER` on a replica, `CLUSTER SETSLOT`/`MIGRATE` a slot, a
//! replica paused (SIGSTOP) and cut off (`CLIENT KILL TYPE replica`) so that
//! its master's next writes never reach it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use tempfile::TempDir;

use crate::{free_ports, log_stdio};

/// How long a node may be silent before the others mark it failed (and its
/// replica is promoted). Short so that the failover test is quick; long
/// enough that a busy 2-core machine does not fail nodes over by accident.
pub const NODE_TIMEOUT_MS: u64 = 2_000;

/// How to start a [`Cluster`].
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub masters: usize,
    /// Replicas per master.
    pub replicas: usize,
    /// `--cluster-node-timeout`: how long a node may be silent before the
    /// others mark it failed.
    pub node_timeout_ms: u64,
    /// The `redis-server` binary (default: the one on `PATH`).
    pub server_bin: PathBuf,
    /// The `redis-cli` binary (default: the one on `PATH`).
    pub cli_bin: PathBuf,
    /// Each node's stdout goes to `redis-<port>.log` here; else nowhere.
    pub log_dir: Option<PathBuf>,
}

impl ClusterOptions {
    /// `masters` primaries with `replicas` replicas each, a
    /// [`NODE_TIMEOUT_MS`] node timeout, the binaries on `PATH`, no logs.
    pub fn new(masters: usize, replicas: usize) -> ClusterOptions {
        ClusterOptions {
            masters,
            replicas,
            node_timeout_ms: NODE_TIMEOUT_MS,
            server_bin: "redis-server".into(),
            cli_bin: "redis-cli".into(),
            log_dir: None,
        }
    }
}

/// `redis-server` arguments of one cluster node: client port, cluster bus
/// port (picked free too, not the default port + 10000), no persistence, its
/// `nodes.conf` in `dir`.
pub fn node_args(port: u16, bus_port: u16, dir: &Path, node_timeout_ms: u64) -> Vec<String> {
    [
        "--port",
        &port.to_string(),
        "--cluster-port",
        &bus_port.to_string(),
        "--bind",
        "127.0.0.1",
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-node-timeout",
        &node_timeout_ms.to_string(),
        // a replica that saw its master recently may be promoted at once
        "--cluster-replica-validity-factor",
        "0",
        // a master down leaves its slots uncovered until its replica is
        // promoted: the other masters keep serving theirs meanwhile
        // (with the default `yes` every node refuses every command once
        // the dead master is marked failed)
        "--cluster-require-full-coverage",
        "no",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--dir",
    ]
    .iter()
    .map(|a| a.to_string())
    .chain([dir.display().to_string()])
    .collect()
}

/// `redis-cli` arguments that join `ports` into a cluster with `replicas`
/// replicas per master (the slots split evenly), without asking for
/// confirmation.
pub fn create_args(ports: &[u16], replicas: usize) -> Vec<String> {
    let mut args = vec!["--cluster".to_string(), "create".to_string()];
    args.extend(ports.iter().map(|p| format!("127.0.0.1:{p}")));
    args.extend(["--cluster-replicas".to_string(), replicas.to_string()]);
    args.push("--cluster-yes".to_string());
    args
}

/// The `redis-cluster://` URL flashgate and fred take: the first node, the
/// others as `node=` seeds.
pub fn cluster_url(ports: &[u16]) -> String {
    let mut it = ports.iter();
    let first = it.next().copied().unwrap_or(0);
    let seeds: Vec<String> = it.map(|p| format!("node=127.0.0.1:{p}")).collect();
    if seeds.is_empty() {
        format!("redis-cluster://127.0.0.1:{first}")
    } else {
        format!("redis-cluster://127.0.0.1:{first}?{}", seeds.join("&"))
    }
}

/// Whether one node's `CLUSTER INFO` shows a freshly made cluster ready to
/// serve: state ok, every slot assigned and healthy, and all `nodes` known
/// to it.
pub fn info_ready(info: &str, nodes: usize) -> bool {
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    field("cluster_state") == Some("ok")
        && field("cluster_slots_assigned") == Some("16384")
        && field("cluster_slots_ok") == Some("16384")
        && field("cluster_known_nodes").and_then(|n| n.parse().ok()) == Some(nodes)
}

pub struct ClusterNode {
    pub port: u16,
    bus_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl ClusterNode {
    /// Ok(false) when the node exited (a port was taken) or did not answer.
    fn spawn(&mut self, o: &ClusterOptions) -> anyhow::Result<bool> {
        let log = o
            .log_dir
            .as_ref()
            .map(|d| d.join(format!("redis-{}.log", self.port)));
        let child = Command::new(&o.server_bin)
            .args(node_args(
                self.port,
                self.bus_port,
                &self.dir,
                o.node_timeout_ms,
            ))
            .stdin(Stdio::null())
            .stdout(log_stdio(log.as_deref())?)
            .stderr(Stdio::null())
            .spawn();
        let Ok(child) = child else { return Ok(false) };
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if cli_with(&o.cli_bin, self.port, &["PING"]) == "PONG" {
                return Ok(true);
            }
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Ok(false); // exited: a port was taken
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        Ok(false)
    }

    /// The node's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
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
    cli_bin: PathBuf,
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

/// The nodes of a `CLUSTER NODES` answer (lines it cannot read are left out).
/// Also used by the fault harness, which runs its own cluster processes.
pub fn parse_nodes(text: &str) -> Vec<NodeInfo> {
    text.lines()
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

/// Run one command with redis-cli against `port`; stdout, trimmed.
pub fn cli(port: u16, args: &[&str]) -> String {
    cli_with(Path::new("redis-cli"), port, args)
}

/// [`cli`] with the `redis-cli` binary `bin` (at most 10 s).
pub fn cli_with(bin: &Path, port: u16, args: &[&str]) -> String {
    let out = Command::new("timeout")
        .arg("10")
        .arg(bin)
        .args(["-p", &port.to_string()])
        .args(args)
        .stderr(Stdio::null())
        .output();
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        Err(_) => String::new(),
    }
}

impl Cluster {
    /// Start and join `masters` primaries with `replicas` replicas each;
    /// returns once every node reports `cluster_state:ok`, agrees on the
    /// layout, and every replica's link to its master is up.
    pub fn start(masters: usize, replicas: usize) -> Cluster {
        Self::try_start(&ClusterOptions::new(masters, replicas)).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// [`Cluster::start`] with options; an error instead of a panic.
    pub fn try_start(o: &ClusterOptions) -> anyhow::Result<Cluster> {
        let dir = tempfile::tempdir().context("temp dir")?;
        let mut nodes = Vec::new();
        for i in 0..o.masters * (1 + o.replicas) {
            let node_dir = dir.path().join(format!("n{i}"));
            std::fs::create_dir_all(&node_dir).context("node dir")?;
            let mut started = None;
            for _ in 0..5 {
                let ports = free_ports(2)?;
                let mut n = ClusterNode {
                    port: ports[0],
                    bus_port: ports[1],
                    dir: node_dir.clone(),
                    child: None,
                };
                if n.spawn(o)? {
                    started = Some(n);
                    break;
                }
                let _ = std::fs::remove_file(node_dir.join("nodes.conf"));
            }
            nodes.push(started.with_context(|| {
                format!(
                    "could not start a cluster node ({} installed?)",
                    o.server_bin.display()
                )
            })?);
        }
        let ports: Vec<u16> = nodes.iter().map(|n| n.port).collect();
        let out = Command::new(&o.cli_bin)
            .args(create_args(&ports, o.replicas))
            .stdin(Stdio::null())
            .output()
            .context("redis-cli --cluster create")?;
        anyhow::ensure!(
            out.status.success(),
            "cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let c = Cluster {
            nodes,
            cli_bin: o.cli_bin.clone(),
            _dir: dir,
        };
        let limit = Duration::from_secs(60);
        let deadline = Instant::now() + limit;
        for &p in &ports {
            while !info_ready(&c.cli(p, &["CLUSTER", "INFO"]), ports.len()) {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "cluster node on port {p} not ready within {limit:?}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        c.try_wait_healthy(deadline.saturating_duration_since(Instant::now()))?;
        Ok(c)
    }

    /// One command with this cluster's redis-cli against `port`.
    fn cli(&self, port: u16, args: &[&str]) -> String {
        cli_with(&self.cli_bin, port, args)
    }

    /// The ports of the nodes started (a killed one included).
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// `redis-cluster://` URL with every live node as a seed (a killed node
    /// is left out, so a process started after a failover does not try it).
    pub fn url(&self) -> String {
        cluster_url(&self.live_ports())
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
        self.try_wait_healthy(limit)
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// [`Cluster::wait_healthy`]; an error instead of a panic.
    pub fn try_wait_healthy(&self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if self.is_healthy() {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "cluster not healthy in time");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn is_healthy(&self) -> bool {
        let ports = self.live_ports();
        let mut views = Vec::new();
        for &p in &ports {
            if !self
                .cli(p, &["CLUSTER", "INFO"])
                .contains("cluster_state:ok")
            {
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
            let info = self.cli(p, &["INFO", "replication"]);
            if info.contains("role:slave") && !info.contains("master_link_status:up") {
                return false;
            }
        }
        views.windows(2).all(|w| w[0] == w[1])
    }

    /// `CLUSTER NODES` as seen by the node on `port`.
    pub fn nodes_from(&self, port: u16) -> Vec<NodeInfo> {
        parse_nodes(&self.cli(port, &["CLUSTER", "NODES"]))
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
            let info = self.cli(master, &["INFO", "replication"]);
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
        self.cli(master, &["CLIENT", "KILL", "TYPE", "replica"])
            .parse()
            .unwrap_or(0)
    }

    /// Promote the replica on `replica` now (`CLUSTER FAILOVER TAKEOVER`: no
    /// agreement from its master or the other masters needed) and wait until
    /// it says it is a master.
    pub fn take_over(&self, replica: u16, limit: Duration) {
        let answer = self.cli(replica, &["CLUSTER", "FAILOVER", "TAKEOVER"]);
        assert_eq!(answer, "OK", "CLUSTER FAILOVER TAKEOVER on {replica}");
        let deadline = Instant::now() + limit;
        while !self.cli(replica, &["ROLE"]).starts_with("master") {
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
            self.cli(to, &["CLUSTER", "SETSLOT", &s, "IMPORTING", &from_id]),
            "OK"
        );
        assert_eq!(
            self.cli(from, &["CLUSTER", "SETSLOT", &s, "MIGRATING", &to_id]),
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
            let keys = self.cli(from, &["CLUSTER", "GETKEYSINSLOT", &s, "100"]);
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let mut args = vec!["MIGRATE", "127.0.0.1"];
            let port = to.to_string();
            args.push(&port);
            args.extend(["", "0", "5000", "KEYS"]);
            args.extend(keys.iter().copied());
            let out = self.cli(from, &args);
            assert!(out == "OK" || out == "NOKEY", "MIGRATE answered {out:?}");
            pause();
        }
        // the new owner first, so it never refuses its own slot
        self.cli(to, &["CLUSTER", "SETSLOT", &s, "NODE", to_id]);
        for n in self.live_ports() {
            self.cli(n, &["CLUSTER", "SETSLOT", &s, "NODE", to_id]);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_are_created_as_masters_only() {
        assert_eq!(
            create_args(&[7000, 7001, 7002], 0),
            [
                "--cluster",
                "create",
                "127.0.0.1:7000",
                "127.0.0.1:7001",
                "127.0.0.1:7002",
                "--cluster-replicas",
                "0",
                "--cluster-yes"
            ]
        );
        let args = node_args(7000, 17123, Path::new("/tmp/n0"), 15_000);
        let after = |flag: &str| {
            let i = args.iter().position(|a| a == flag).expect(flag);
            args[i + 1].as_str()
        };
        assert_eq!(after("--port"), "7000");
        assert_eq!(after("--cluster-port"), "17123");
        assert_eq!(after("--cluster-enabled"), "yes");
        assert_eq!(after("--cluster-node-timeout"), "15000");
        assert_eq!(after("--bind"), "127.0.0.1");
        assert_eq!(after("--save"), "");
        assert_eq!(after("--appendonly"), "no");
        assert_eq!(after("--dir"), "/tmp/n0");
    }

    #[test]
    fn cluster_url_names_every_node() {
        assert_eq!(
            cluster_url(&[7000, 7001, 7002]),
            "redis-cluster://127.0.0.1:7000?node=127.0.0.1:7001&node=127.0.0.1:7002"
        );
        assert_eq!(cluster_url(&[7000]), "redis-cluster://127.0.0.1:7000");
    }

    #[test]
    fn cluster_ready_needs_every_slot_and_node() {
        let info = "cluster_state:ok\r\ncluster_slots_assigned:16384\r\ncluster_slots_ok:16384\r\ncluster_slots_pfail:0\r\ncluster_known_nodes:3\r\ncluster_size:3\r\n";
        assert!(info_ready(info, 3));
        assert!(!info_ready(info, 4), "a node not met yet");
        assert!(!info_ready(&info.replace("state:ok", "state:fail"), 3));
        assert!(!info_ready(
            &info.replace("slots_ok:16384", "slots_ok:16000"),
            3
        ));
        assert!(!info_ready("", 3));
    }
}
