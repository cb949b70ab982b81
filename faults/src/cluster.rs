//! A Redis Cluster of 3 masters with a replica each, for the cluster
//! faults: a master SIGKILLed (its replica promoted, then the old master
//! restarted as a replica) and a slot migrated while the sale goes on.
//! The recipe is testkit/src/cluster.rs's (short node timeout, replicas
//! always eligible, no full coverage required), driven through redis-cli.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::procs::{self, Proc};

/// A node marked failed after this long silent; its replica then takes over.
pub const NODE_TIMEOUT_MS: u64 = 2_000;

pub struct Cluster {
    pub nodes: Vec<Proc>,
    pub ports: Vec<u16>,
}

/// One line of `CLUSTER NODES`, read by testkit's parser.
pub use flashgate_testkit::cluster::{parse_nodes, NodeInfo};

/// `redis-cli -p port args…`, stdout trimmed ("" when it cannot answer).
pub async fn cli(port: u16, args: &[&str]) -> String {
    let mut all = vec!["-p".to_string(), port.to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    match procs::run_tool(Path::new("redis-cli"), &all, &[], Duration::from_secs(10)).await {
        Ok((_, out, _)) => out.trim().to_owned(),
        Err(_) => String::new(),
    }
}

impl Cluster {
    pub async fn start(dir: &Path, masters: usize) -> anyhow::Result<Cluster> {
        let mut nodes = Vec::new();
        let mut ports = Vec::new();
        for i in 0..masters * 2 {
            let node_dir = dir.join(format!("node{i}"));
            std::fs::create_dir_all(&node_dir)?;
            let (port, bus) = (procs::free_port()?, procs::free_port()?);
            let args = [
                "--port",
                &port.to_string(),
                "--cluster-port",
                &bus.to_string(),
                "--bind",
                "127.0.0.1",
                "--dir",
                &node_dir.display().to_string(),
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                &NODE_TIMEOUT_MS.to_string(),
                "--cluster-replica-validity-factor",
                "0",
                "--cluster-require-full-coverage",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
            ]
            .map(String::from)
            .to_vec();
            let mut p = Proc::new(
                &format!("redis-node-{i}"),
                Path::new("redis-server"),
                args,
                Vec::new(),
                dir.join(format!("redis-node-{i}.log")),
            );
            p.start()?;
            procs::wait_redis(port, Duration::from_secs(10)).await?;
            nodes.push(p);
            ports.push(port);
        }
        let mut args = vec!["--cluster".to_string(), "create".into()];
        args.extend(ports.iter().map(|p| format!("127.0.0.1:{p}")));
        args.extend(["--cluster-replicas", "1", "--cluster-yes"].map(String::from));
        let (code, out, err) =
            procs::run_tool(Path::new("redis-cli"), &args, &[], Duration::from_secs(60)).await?;
        if code != 0 {
            bail!("redis-cli --cluster create failed: {out}{err}");
        }
        let mut c = Cluster { nodes, ports };
        c.wait_healthy(Duration::from_secs(60)).await?;
        Ok(c)
    }

    fn live_ports(&mut self) -> Vec<u16> {
        let mut out = Vec::new();
        for (p, n) in self.ports.iter().zip(self.nodes.iter_mut()) {
            if n.running() {
                out.push(*p);
            }
        }
        out
    }

    /// `redis-cluster://` with every node as a seed.
    pub fn url(&self) -> String {
        let rest: Vec<String> = self.ports[1..]
            .iter()
            .map(|p| format!("node=127.0.0.1:{p}"))
            .collect();
        format!(
            "redis-cluster://127.0.0.1:{}?{}",
            self.ports[0],
            rest.join("&")
        )
    }

    pub async fn layout(&mut self) -> Vec<NodeInfo> {
        for p in self.live_ports() {
            let nodes = parse_nodes(&cli(p, &["CLUSTER", "NODES"]).await);
            if !nodes.is_empty() {
                return nodes;
            }
        }
        Vec::new()
    }

    /// Every live node says ok, agrees on who serves all 16384 slots, and
    /// every live replica's link is up.
    pub async fn healthy(&mut self) -> bool {
        let mut views = Vec::new();
        for p in self.live_ports() {
            if !cli(p, &["CLUSTER", "INFO"])
                .await
                .contains("cluster_state:ok")
            {
                return false;
            }
            let mut owners: Vec<(u16, u16, u16)> =
                parse_nodes(&cli(p, &["CLUSTER", "NODES"]).await)
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
            let info = cli(p, &["INFO", "replication"]).await;
            if info.contains("role:slave") && !info.contains("master_link_status:up") {
                return false;
            }
        }
        views.windows(2).all(|w| w[0] == w[1])
    }

    pub async fn wait_healthy(&mut self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        while !self.healthy().await {
            if Instant::now() >= deadline {
                bail!("cluster not healthy within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    /// The slot of a key (`CLUSTER KEYSLOT`).
    pub async fn keyslot(&mut self, key: &str) -> anyhow::Result<u16> {
        let p = *self.live_ports().first().context("no live node")?;
        cli(p, &["CLUSTER", "KEYSLOT", key])
            .await
            .parse()
            .context("CLUSTER KEYSLOT")
    }

    pub async fn owner(&mut self, slot: u16) -> Option<NodeInfo> {
        self.layout()
            .await
            .into_iter()
            .find(|n| n.master && !n.failed && n.slots.iter().any(|&(a, b)| a <= slot && slot <= b))
    }

    fn index_of(&self, port: u16) -> Option<usize> {
        self.ports.iter().position(|p| *p == port)
    }

    /// SIGKILL the master serving `slot`; returns its port.
    pub async fn kill_owner(&mut self, slot: u16) -> anyhow::Result<u16> {
        let owner = self.owner(slot).await.context("slot has no owner")?;
        let i = self.index_of(owner.port).context("owner not ours")?;
        self.nodes[i].kill().await;
        Ok(owner.port)
    }

    /// Wait until another master serves `slot` (the replica was promoted),
    /// then start the killed node again: it rejoins as a replica.
    pub async fn recover(&mut self, slot: u16, killed: u16) -> anyhow::Result<u16> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let new_owner = loop {
            if let Some(o) = self.owner(slot).await {
                if o.port != killed {
                    break o.port;
                }
            }
            if Instant::now() >= deadline {
                bail!("no replica took over slot {slot} within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        if let Some(i) = self.index_of(killed) {
            self.nodes[i].start()?;
        }
        self.wait_healthy(Duration::from_secs(60)).await?;
        Ok(new_owner)
    }

    /// Move `slot` to another master the way `redis-cli --cluster reshard`
    /// does (IMPORTING/MIGRATING, MIGRATE in small batches with a pause
    /// between them while clients get ASK, then SETSLOT NODE everywhere).
    /// Returns (from, to).
    pub async fn migrate(&mut self, slot: u16, pause: Duration) -> anyhow::Result<(u16, u16)> {
        let layout = self.layout().await;
        let from = self.owner(slot).await.context("slot has no owner")?;
        let to = layout
            .iter()
            .find(|n| n.master && !n.failed && n.port != from.port && !n.slots.is_empty())
            .cloned()
            .context("no other master")?;
        let s = slot.to_string();
        let ok1 = cli(to.port, &["CLUSTER", "SETSLOT", &s, "IMPORTING", &from.id]).await;
        let ok2 = cli(from.port, &["CLUSTER", "SETSLOT", &s, "MIGRATING", &to.id]).await;
        if ok1 != "OK" || ok2 != "OK" {
            bail!("SETSLOT IMPORTING/MIGRATING answered {ok1:?} / {ok2:?}");
        }
        let to_port = to.port.to_string();
        loop {
            let keys = cli(from.port, &["CLUSTER", "GETKEYSINSLOT", &s, "2"]).await;
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let mut args = vec!["MIGRATE", "127.0.0.1", &to_port, "", "0", "5000", "KEYS"];
            args.extend(keys.iter().copied());
            let out = cli(from.port, &args).await;
            if out != "OK" && out != "NOKEY" {
                bail!("MIGRATE answered {out:?}");
            }
            tokio::time::sleep(pause).await;
        }
        cli(to.port, &["CLUSTER", "SETSLOT", &s, "NODE", &to.id]).await;
        for p in self.live_ports() {
            cli(p, &["CLUSTER", "SETSLOT", &s, "NODE", &to.id]).await;
        }
        Ok((from.port, to.port))
    }

    /// Every node running again (after the faults).
    pub async fn heal(&mut self) -> anyhow::Result<()> {
        for n in self.nodes.iter_mut() {
            if !n.running() {
                n.start()?;
            }
        }
        self.wait_healthy(Duration::from_secs(90)).await
    }

    pub async fn shutdown(&mut self) {
        for n in self.nodes.iter_mut() {
            n.kill().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_lines_parse() {
        let text = "a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460\n\
                    b2 127.0.0.1:7001@17001 master,fail - 0 0 2 connected\n\
                    c3 127.0.0.1:7002@17002 slave a1 0 0 1 connected\n\
                    d4 127.0.0.1:7003@17003 master - 0 0 3 connected 5461-10922 12000 [93->-e5]\n";
        let n = parse_nodes(text);
        assert_eq!(n.len(), 4);
        assert_eq!((n[0].port, n[0].master, n[0].failed), (7000, true, false));
        assert_eq!(n[0].slots, [(0, 5460)]);
        assert!(n[1].failed);
        assert!(!n[2].master);
        assert_eq!(n[3].slots, [(5461, 10922), (12000, 12000)]);
    }
}
