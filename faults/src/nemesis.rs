//! The faults, one window at a time: each writes a `start` line to the
//! history, breaks a real process (or the clients' patience), waits, heals
//! and writes a `stop` line. `mixed` takes every single-node fault in turn,
//! sometimes with a second one on top of it; `cluster-mixed` alternates the
//! cluster's two.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::history::History;
use crate::procs;
use crate::stack::Stack;
use crate::workload::Rng;

/// The single-node faults, by their history names.
pub const SINGLE: [&str; 6] = [
    "redis-kill",
    "redis-pause",
    "flashgate-kill",
    "writer-kill",
    "postgres-restart",
    "client-timeout",
];

/// The faults of a cluster run.
pub const CLUSTER: [&str; 2] = ["cluster-failover", "slot-migrate"];

pub fn known(name: &str) -> bool {
    SINGLE.contains(&name) || on_cluster(name) || ["mixed", "none", "cluster-none"].contains(&name)
}

/// Whether `fault` runs on the cluster.
pub fn on_cluster(fault: &str) -> bool {
    CLUSTER.contains(&fault) || fault == "cluster-mixed" || fault == "cluster-none"
}

/// Whether `fault` takes down something the processes need to start
/// (Redis, PostgreSQL): healed before the others when two overlap.
fn is_dependency(fault: &str) -> bool {
    matches!(fault, "redis-kill" | "redis-pause" | "postgres-restart")
}

/// The order to stop overlapping faults in: the later one first, except
/// that a dependency's fault is always healed before the others.
fn stop_order<'a>(first: &'a str, second: Option<&'a str>) -> Vec<&'a str> {
    let mut order: Vec<&str> = second.into_iter().chain([first]).collect();
    order.sort_by_key(|f| !is_dependency(f));
    order
}

/// How long a fault stays on, and the quiet gap after it.
fn window(fault: &str) -> (Duration, Duration) {
    let ms = Duration::from_millis;
    match fault {
        "redis-kill" => (ms(1000), ms(5000)),
        // longer than the command timeout (redis_timeout_ms, 500 ms)
        "redis-pause" => (ms(2500), ms(4000)),
        "flashgate-kill" => (ms(1000), ms(4000)),
        // killed repeatedly under load: some kills land between a batch's
        // insert and its XACK
        "writer-kill" => (ms(300), ms(1200)),
        "postgres-restart" => (ms(3000), ms(5000)),
        "client-timeout" => (ms(4000), ms(4000)),
        // the stop waits for the promotion (node timeout 2 s) and the
        // restarted node's resync; the migration is the window itself
        "cluster-failover" => (ms(0), ms(6000)),
        "slot-migrate" => (ms(0), ms(4000)),
        _ => (ms(0), ms(5000)),
    }
}

pub struct Nemesis {
    pub history: Arc<History>,
    pub client_timeout_ms: Arc<AtomicU64>,
    pub normal_timeout_ms: u64,
    pub rng: Rng,
    /// Which instance flashgate-kill takes next.
    next_instance: usize,
    writer_kills: u64,
    /// The killed master's port and its slot (cluster-failover), or the
    /// slot moving (slot-migrate).
    cluster_fault: Option<(u16, u16)>,
    moved_from: u16,
}

impl Nemesis {
    pub fn new(
        history: Arc<History>,
        client_timeout_ms: Arc<AtomicU64>,
        normal_timeout_ms: u64,
        seed: u64,
    ) -> Nemesis {
        Nemesis {
            history,
            client_timeout_ms,
            normal_timeout_ms,
            rng: Rng::new(seed ^ 0x4E4D),
            next_instance: 0,
            writer_kills: 0,
            cluster_fault: None,
            moved_from: 0,
        }
    }

    /// Run `fault`'s windows from now until `end` (a window never starts
    /// within 3 s of it). Returns the times (ms) each window started.
    pub async fn run(
        &mut self,
        stack: &mut Stack,
        fault: &str,
        end: Instant,
    ) -> anyhow::Result<Vec<(String, f64)>> {
        let mut starts = Vec::new();
        let mut windows = 0usize;
        let offset = self.rng.below(SINGLE.len() as u64) as usize;
        tokio::time::sleep(Duration::from_secs(3)).await;
        while Instant::now() + Duration::from_secs(3) < end {
            if fault == "none" || fault == "cluster-none" {
                tokio::time::sleep_until(end.into()).await;
                break;
            }
            // mixed: every single fault in turn, some with a second on top;
            // cluster-mixed: failover and migration in turn
            let first = match fault {
                "mixed" => SINGLE[(windows + offset) % SINGLE.len()],
                "cluster-mixed" => CLUSTER[windows % CLUSTER.len()],
                f => f,
            };
            windows += 1;
            let second = (fault == "mixed" && self.rng.chance(0.33))
                .then(|| SINGLE[self.rng.below(SINGLE.len() as u64) as usize])
                .filter(|s| *s != first);
            let (on, gap) = window(first);
            let t = self.start(stack, first).await?;
            starts.push((first.to_owned(), t));
            if let Some(s) = second {
                let t = self.start(stack, s).await?;
                starts.push((s.to_owned(), t));
            }
            tokio::time::sleep(on).await;
            // heal what the others need first: a flashgate or a ledger
            // writer restarted while Redis or PostgreSQL is still down
            // refuses to start
            for f in stop_order(first, second) {
                self.stop(stack, f).await?;
            }
            tokio::time::sleep(gap + Duration::from_millis(self.rng.below(1000))).await;
        }
        Ok(starts)
    }

    async fn start(&mut self, stack: &mut Stack, fault: &str) -> anyhow::Result<f64> {
        let detail = match fault {
            "redis-kill" => {
                let pid = stack.redis.pid();
                stack.redis.kill().await;
                format!("SIGKILL redis-server pid {pid:?}")
            }
            // on top of a redis-kill (mixed) there is no process to pause
            "redis-pause" if !stack.redis.running() => {
                "redis-server not running (killed by the other fault): nothing to pause".to_owned()
            }
            "redis-pause" => {
                stack.redis.signal("STOP").await?;
                "SIGSTOP redis-server".to_owned()
            }
            "flashgate-kill" => {
                let i = self.next_instance % stack.instances.len();
                self.next_instance += 1;
                stack.instances[i].kill().await;
                format!("SIGKILL flashgate-{i} under load")
            }
            "writer-kill" => {
                stack.writer.kill().await;
                self.writer_kills += 1;
                if self.writer_kills.is_multiple_of(2) {
                    // between insert and XACK: the writer comes back as a
                    // Redis user that may do everything but XACK, so each
                    // batch it commits stays pending; the stop kills it
                    let acl = [
                        "-p",
                        &stack.redis_port.to_string(),
                        "ACL",
                        "SETUSER",
                        "noack",
                        "on",
                        ">noack-pw",
                        "~*",
                        "&*",
                        "+@all",
                        "-xack",
                    ]
                    .map(String::from);
                    procs::run_tool(Path::new("redis-cli"), &acl, &[], Duration::from_secs(5))
                        .await?;
                    let url = format!("redis://noack:noack-pw@127.0.0.1:{}", stack.redis_port);
                    stack
                        .writer
                        .start_with(&[("FLASHGATE_REDIS_URL".to_owned(), url)])?;
                    "SIGKILL the ledger writer; back as a user without XACK (commits, never acknowledges)".to_owned()
                } else {
                    "SIGKILL the ledger writer under load".to_owned()
                }
            }
            "postgres-restart" => {
                stack.pg.stop().await;
                "pg_ctl stop -m immediate".to_owned()
            }
            "cluster-failover" | "slot-migrate" => {
                let c = stack.cluster.as_mut().context("no cluster in this run")?;
                // a shard of the long-selling SKU (its keys' hash tag)
                let tag = format!("S2#{}", self.rng.below(4));
                let slot = c.keyslot(&format!("fg:{{{tag}}}:meta")).await?;
                if fault == "cluster-failover" {
                    let port = c.kill_owner(slot).await?;
                    self.cluster_fault = Some((port, slot));
                    format!("SIGKILL the master :{port} serving slot {slot} ({{{tag}}})")
                } else {
                    // the start line first: the migration is the window
                    let t = self.history.nemesis(
                        "start",
                        fault,
                        &format!("slot {slot} ({{{tag}}}) to another master, 2 keys per MIGRATE, 250 ms apart"),
                    );
                    let (from, to) = c.migrate(slot, Duration::from_millis(250)).await?;
                    self.cluster_fault = Some((to, slot));
                    self.moved_from = from;
                    return Ok(t);
                }
            }
            "client-timeout" => {
                let ms = 20 + self.rng.below(130);
                self.client_timeout_ms.store(ms, Ordering::Relaxed);
                format!(
                    "client timeout {ms} ms (server request_timeout {} ms, redis_timeout {} ms)",
                    stack.timing.request_timeout_ms, stack.timing.redis_timeout_ms
                )
            }
            other => bail!("unknown fault {other}"),
        };
        Ok(self.history.nemesis("start", fault, &detail))
    }

    async fn stop(&mut self, stack: &mut Stack, fault: &str) -> anyhow::Result<()> {
        let detail = match fault {
            "redis-kill" => {
                stack.redis.start()?;
                procs::wait_redis(stack.redis_port, Duration::from_secs(30)).await?;
                "redis-server restarted from its AOF".to_owned()
            }
            "redis-pause" if !stack.redis.running() => {
                "redis-server not running: nothing to resume".to_owned()
            }
            "redis-pause" => {
                stack.redis.signal("CONT").await?;
                "SIGCONT redis-server".to_owned()
            }
            "flashgate-kill" => {
                let mut restarted = Vec::new();
                for i in 0..stack.instances.len() {
                    if !stack.instances[i].running() {
                        stack.instances[i].start()?;
                        stack.wait_instance(i, Duration::from_secs(30)).await?;
                        restarted.push(i);
                    }
                }
                format!("restarted flashgate {restarted:?}")
            }
            "writer-kill" => {
                let between = stack.writer.running();
                stack.writer.kill().await;
                stack.writer.start()?;
                if between {
                    "SIGKILL the writer that could not XACK; restarted as itself".to_owned()
                } else {
                    "ledger writer restarted".to_owned()
                }
            }
            "postgres-restart" => {
                stack.pg.start().await?;
                "postgres started".to_owned()
            }
            "cluster-failover" => {
                let c = stack.cluster.as_mut().context("no cluster in this run")?;
                let (killed, slot) = self.cluster_fault.take().context("no master killed")?;
                let promoted = c.recover(slot, killed).await?;
                format!("slot {slot} served by the promoted replica :{promoted}; :{killed} restarted as a replica")
            }
            "slot-migrate" => {
                let (to, slot) = self.cluster_fault.take().context("no slot moved")?;
                format!("slot {slot} moved from :{} to :{to}", self.moved_from)
            }
            "client-timeout" => {
                self.client_timeout_ms
                    .store(self.normal_timeout_ms, Ordering::Relaxed);
                format!("client timeout back to {} ms", self.normal_timeout_ms)
            }
            other => bail!("unknown fault {other}"),
        };
        self.history.nemesis("stop", fault, &detail);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_heal_before_the_processes_that_need_them() {
        for (second, first) in [
            ("redis-kill", "flashgate-kill"),
            ("flashgate-kill", "redis-pause"),
        ] {
            let mut order: Vec<&str> = Some(second).into_iter().chain([first]).collect();
            order.sort_by_key(|f| !is_dependency(f));
            assert!(is_dependency(order[0]), "{order:?}");
        }
        assert!(!is_dependency("writer-kill") && is_dependency("postgres-restart"));
    }
}
