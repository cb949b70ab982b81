//! One run: start the stack, load the SKUs, run the sale with one fault's
//! windows, heal, resolve (resend every unknown reserve with its key, read
//! every reservation and ticket, wait for the holds to expire and the
//! ledger to drain, reconcile and fix), write `final.json`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};

use crate::client::{self, Api};
use crate::history::{History, Kind};
use crate::nemesis::Nemesis;
use crate::stack::{Stack, Timing, ADMIN_KEY, STOREFRONT_KEY};
use crate::workload::{Sale, Seen};

/// What a run needs to know.
pub struct Plan {
    pub fault: String,
    pub seconds: u64,
    pub clients: u32,
    pub seed: u64,
    pub flashgate: PathBuf,
    pub run_dir: PathBuf,
    pub client_timeout_ms: u64,
    pub hold_seconds: u64,
    /// The share of buyers who make a cart (2–3 lines) instead of a reserve.
    pub cart_share: f64,
}

/// The resolve phase's reads go through this process id (after the clients').
fn resolver(plan: &Plan) -> u32 {
    plan.clients
}

pub async fn run(plan: &Plan) -> anyhow::Result<()> {
    std::fs::create_dir_all(&plan.run_dir)?;
    let epoch = Instant::now();
    let history = Arc::new(History::create(&plan.run_dir.join("history.jsonl"), epoch)?);
    let timing = Timing {
        hold_seconds: plan.hold_seconds,
        extend_seconds: plan.hold_seconds - 1,
        max_hold_seconds: 2 * plan.hold_seconds,
        ticket_seconds: plan.hold_seconds + 3,
        redis_timeout_ms: 500,
        request_timeout_ms: 3000,
        // confirm refuses within 2 x this of a cart's expiry: short enough
        // that a cart held for a few seconds can still be confirmed
        cart_saga_ms: 500,
    };
    let cluster = crate::nemesis::on_cluster(&plan.fault);
    let mut stack = Stack::start(&plan.flashgate, &plan.run_dir, timing, cluster)
        .await
        .context("starting the stack")?;
    let result = sale(plan, &mut stack, history).await;
    stack.shutdown().await;
    result
}

async fn sale(plan: &Plan, stack: &mut Stack, history: Arc<History>) -> anyhow::Result<()> {
    // S1 sells out at once (waitlist and returns matter); S2 lasts about
    // the run, so faults land on live sales; S3 is the third SKU carts take
    let skus = [
        ("S1".to_owned(), 40u64, 2u32),
        ("S2".to_owned(), 25 * plan.seconds.max(10), 4),
        ("S3".to_owned(), 20 * plan.seconds.max(10), 2),
    ];
    for (sku, stock, shards) in &skus {
        stack.preload(sku, *stock, *shards).await?;
    }
    let timeout = Arc::new(AtomicU64::new(plan.client_timeout_ms));
    let api = Api::new(
        stack.bases(),
        STOREFRONT_KEY,
        ADMIN_KEY,
        timeout.clone(),
        history.clone(),
    );
    let sale = Arc::new(Sale {
        api: api.clone(),
        skus: skus.iter().map(|s| s.0.clone()).collect(),
        cart_share: plan.cart_share,
        seen: Mutex::new(Seen::default()),
        stop: AtomicBool::new(false),
    });
    let clients: Vec<_> = (0..plan.clients)
        .map(|p| tokio::spawn(sale.clone().client(p, plan.seed)))
        .collect();
    let end = Instant::now() + Duration::from_secs(plan.seconds);
    let mut nemesis = Nemesis::new(
        history.clone(),
        timeout.clone(),
        plan.client_timeout_ms,
        plan.seed,
    );
    let faults = nemesis.run(stack, &plan.fault, end).await;
    tokio::time::sleep_until(end.into()).await;
    sale.stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    timeout.store(plan.client_timeout_ms, Ordering::Relaxed);
    stack.heal().await.context("healing after the faults")?;
    let starts = faults?;
    eprintln!("  sale over: {} fault windows; resolving", starts.len());

    let p = resolver(plan);
    let t0 = Instant::now();
    let mut unresolved = resolve_unknown(&sale, p).await;
    let mut quiet = wait_quiet(&api, &skus, stack).await;
    // a key still unknown once the holds ended gets another pass: on a
    // cluster, a key whose first request met a master known down never
    // walks that shard, and answers 503 while the others have no unit
    // (docs/cluster.md); the expired holds gave units back
    let first_pass = unresolved.clone();
    for _ in 0..2 {
        if unresolved.is_empty() {
            break;
        }
        eprintln!(
            "  {} reserves still unknown after the holds ended: {:?}; resending",
            unresolved.len(),
            unresolved.iter().take(5).collect::<Vec<_>>()
        );
        unresolved = resolve_unknown(&sale, p).await;
        quiet = wait_quiet(&api, &skus, stack).await;
    }
    // tickets first: a promoted one names a hold to read too
    read_all(&sale, p).await;
    eprintln!(
        "  resolved in {:.1} s (quiet: {quiet})",
        t0.elapsed().as_secs_f64()
    );

    let mut fin = final_state(plan, stack, &api, &skus, &sale, &starts, quiet).await?;
    fin["unknown_after_first_resolve"] = json!(first_pass);
    fin["unknown_at_end"] = json!(unresolved);
    std::fs::write(
        plan.run_dir.join("final.json"),
        serde_json::to_string_pretty(&fin)?,
    )?;
    Ok(())
}

/// Resend every reserve whose outcome stayed unknown, with its key, until
/// it answers (a few tries); the keys still unknown after that.
async fn resolve_unknown(sale: &Sale, p: u32) -> Vec<String> {
    let ops: Vec<_> = {
        let seen = lock(&sale.seen);
        seen.unknown_reserves.values().cloned().collect()
    };
    for op in ops {
        let key = op.body.as_ref().map(|b| b.1.clone()).unwrap_or_default();
        let op = client::in_resolve(op);
        for _ in 0..5 {
            let done = sale.api.call(p, &op).await;
            let known = done.kind != Kind::Info;
            {
                let mut seen = lock(&sale.seen);
                seen.observe(&done);
                if known {
                    seen.unknown_reserves.remove(&key);
                }
            }
            if known {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    lock(&sale.seen).unknown_reserves.keys().cloned().collect()
}

/// GET every ticket, then every cart (its lines join the reservations),
/// then every reservation, the clients or the resolve phase ever saw.
async fn read_all(sale: &Sale, p: u32) {
    let tickets: Vec<String> = lock(&sale.seen).tickets.iter().cloned().collect();
    for t in tickets {
        let done = sale
            .api
            .call(
                p,
                &client::in_resolve(client::on_ticket("get_ticket", &t, 0)),
            )
            .await;
        lock(&sale.seen).observe(&done);
    }
    let carts: Vec<String> = lock(&sale.seen).carts.iter().cloned().collect();
    for id in carts {
        let op = client::in_resolve(client::on_cart("get_cart", &id, 0));
        let done = sale.api.call(p, &op).await;
        let mut seen = lock(&sale.seen);
        seen.observe(&done);
        let status = done.status.filter(|s| *s != 503);
        seen.cart_reads.insert(id, (status, done.body.clone()));
    }
    let rids: Vec<String> = lock(&sale.seen).reservations.iter().cloned().collect();
    for rid in rids {
        let op = client::in_resolve(client::on_reservation("get_reservation", &rid, 0));
        let done = sale.api.call(p, &op).await;
        let status = done.status.filter(|s| *s != 503);
        lock(&sale.seen)
            .last_read
            .insert(rid, (status, done.str_field("status")));
    }
}

/// Wait until no SKU has a hold or a waiting ticket (holds expire, tickets
/// are promoted or expire). False when the deadline passed first.
async fn wait_quiet(api: &Api, skus: &[(String, u64, u32)], stack: &Stack) -> bool {
    let t = &stack.timing;
    let deadline = Instant::now() + Duration::from_secs(t.max_hold_seconds + t.ticket_seconds + 30);
    loop {
        let mut quiet = true;
        for (sku, _, _) in skus {
            let ans = api
                .raw(&client::get_sku(sku, 0, false), Duration::from_secs(5))
                .await;
            let busy = match ans {
                Some((200, b)) => {
                    b["held"].as_i64() != Some(0) || b["waitlist"].as_i64() != Some(0)
                }
                _ => true,
            };
            quiet &= !busy;
        }
        if quiet {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn final_state(
    plan: &Plan,
    stack: &Stack,
    api: &Api,
    skus: &[(String, u64, u32)],
    sale: &Sale,
    starts: &[(String, f64)],
    quiet: bool,
) -> anyhow::Result<Value> {
    let (code_before, before) = stack
        .json_tool(&["reconcile", "--format", "json", "--quiet-seconds", "3"])
        .await?;
    let (fix, after) = if code_before == 1 {
        let (_, fix) = stack
            .json_tool(&[
                "reconcile",
                "--fix",
                "--format",
                "json",
                "--quiet-seconds",
                "3",
            ])
            .await?;
        let (_, after) = stack
            .json_tool(&["reconcile", "--format", "json", "--quiet-seconds", "3"])
            .await?;
        (fix, after)
    } else {
        (Value::Null, Value::Null)
    };

    let db = pg_client(&stack.pg.url()).await?;
    let mut out = serde_json::Map::new();
    for (sku, stock, _) in skus {
        let admin = api
            .raw(&client::get_sku(sku, 0, true), Duration::from_secs(5))
            .await
            .map(|a| a.1)
            .unwrap_or(Value::Null);
        let public = api
            .raw(&client::get_sku(sku, 0, false), Duration::from_secs(5))
            .await
            .map(|a| a.1)
            .unwrap_or(Value::Null);
        let sold: i64 = db
            .query_one(
                "SELECT COALESCE(SUM(qty), 0)::bigint FROM ledger_events WHERE sku = $1 AND kind = 'confirmed'",
                &[sku],
            )
            .await?
            .get(0);
        let (_, status) = stack
            .json_tool(&["status", "--sku", sku, "--format", "json"])
            .await?;
        out.insert(
            sku.clone(),
            json!({"initial": stock, "admin": admin, "public": public,
                   "ledger_sold": sold, "status": status}),
        );
    }
    let confirmed: Vec<String> = db
        .query(
            "SELECT DISTINCT rid FROM ledger_events WHERE kind = 'confirmed' ORDER BY rid",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let promotions = promotions(
        &plan.run_dir.join("history.jsonl"),
        stack.redis_port,
        stack.cluster.is_some(),
    )
    .await?;
    let (loss, lost, carts) = {
        let seen = lock(&sale.seen);
        (
            expected_loss(&seen, starts),
            acked_then_lost(&seen),
            final_carts(&seen),
        )
    };
    eprintln!(
        "  {} acknowledged writes allowed to be lost, {} found lost: {:?}",
        loss.len(),
        lost.len(),
        lost.iter().take(5).collect::<Vec<_>>()
    );
    Ok(json!({
        "run_id": plan.run_dir.file_name().and_then(|n| n.to_str()),
        "fault": plan.fault,
        "seconds": plan.seconds,
        "clients": plan.clients,
        "seed": plan.seed,
        "quiet": quiet,
        "started_at_unix_ms": api.history.started_at_unix_ms,
        "timing": {"hold_seconds": stack.timing.hold_seconds,
                   "extend_seconds": stack.timing.extend_seconds,
                   "max_hold_seconds": stack.timing.max_hold_seconds,
                   "waitlist_ticket_seconds": stack.timing.ticket_seconds,
                   "redis_timeout_ms": stack.timing.redis_timeout_ms,
                   "request_timeout_ms": stack.timing.request_timeout_ms,
                   "client_timeout_ms": plan.client_timeout_ms},
        "skus": out,
        "reconcile_before": before,
        "reconcile_fix": fix,
        "reconcile_after": after,
        "ledger_confirmed": confirmed,
        "waitlist_promotions": promotions,
        "expected_loss": loss,
        "acked_then_lost": lost,
        "carts": carts,
    }))
}

/// final.json's `carts`: every cart the clients saw, its resolve-phase
/// read, and each line's reservation as its own resolve-phase read found
/// it (`status` null when the read had no definite answer; `code` 404 when
/// the hold is gone).
pub fn final_carts(seen: &Seen) -> Value {
    let mut out = serde_json::Map::new();
    for id in &seen.carts {
        let Some((code, body)) = seen.cart_reads.get(id) else {
            out.insert(id.clone(), Value::Null);
            continue;
        };
        let lines: Vec<Value> = body
            .get("lines")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|l| {
                let rid = l.get("reservation_id").and_then(Value::as_str);
                let read = rid.and_then(|r| seen.last_read.get(r));
                json!({"sku": l.get("sku"), "qty": l.get("qty"), "reservation_id": rid,
                       "code": read.and_then(|r| r.0),
                       "status": read.and_then(|r| r.1.clone())})
            })
            .collect();
        out.insert(
            id.clone(),
            json!({"status": code, "body": body, "lines": lines}),
        );
    }
    Value::Object(out)
}

/// Acknowledged writes a Redis crash may take with it: AOF `everysec`
/// fsyncs once a second, and a cluster replica lags its master, so a hold
/// (or its confirm, release, extend) acknowledged within 2 s before a
/// SIGKILL of Redis or of a cluster master is allowed to be lost.
pub fn expected_loss(seen: &Seen, starts: &[(String, f64)]) -> Vec<String> {
    let kills: Vec<f64> = starts
        .iter()
        .filter(|(f, _)| f == "redis-kill" || f == "cluster-failover")
        .map(|s| s.1)
        .collect();
    let set: BTreeSet<String> = seen
        .acks
        .iter()
        .filter(|(t, _, _)| kills.iter().any(|k| *t <= *k && *t >= *k - 2000.0))
        .map(|(_, rid, _)| rid.clone())
        .collect();
    set.into_iter().collect()
}

/// Acknowledged writes the final reads contradict (a measurement for
/// docs/faults.md; the checker judges): a hold acknowledged but unknown at
/// the end, or a confirm or release acknowledged but the reservation ended
/// otherwise. Each as "rid (operation -> final status)".
pub fn acked_then_lost(seen: &Seen) -> Vec<String> {
    let mut out = BTreeSet::new();
    for (_, rid, f) in &seen.acks {
        let Some((code, status)) = seen.last_read.get(rid) else {
            continue;
        };
        let want = match *f {
            "confirm" => Some("confirmed"),
            "release" => Some("released"),
            _ => None,
        };
        let lost = match (code, want) {
            (Some(404), _) => true,
            (Some(200), Some(w)) => status.as_deref() != Some(w),
            _ => false,
        };
        if lost {
            out.insert(format!(
                "{rid} ({f} -> {})",
                status.as_deref().unwrap_or("404")
            ));
        }
    }
    out.into_iter().collect()
}

/// Promotions as the tickets' answers name them (ticket, SKU, hold), with
/// each ticket's arrival number (`seq` in its hash in Redis, which lives
/// for the idempotency TTL).
async fn promotions(history: &Path, redis_port: u16, cluster: bool) -> anyhow::Result<Vec<Value>> {
    let text = std::fs::read_to_string(history).unwrap_or_default();
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let b = &v["body"];
        if v["type"] == "ok" && v["f"] == "get_ticket" && b["status"] == "promoted" {
            let (Some(t), Some(rid), Some(sku)) = (
                b["ticket_id"].as_str(),
                b["reservation_id"].as_str(),
                b["sku"].as_str(),
            ) else {
                continue;
            };
            if seen.insert(t.to_owned()) {
                out.push((t.to_owned(), sku.to_owned(), rid.to_owned()));
            }
        }
    }
    // one redis-cli per ticket: on a cluster, `-c` prints its redirections
    // among the replies, so a pipelined list would not line up
    let mut promotions = Vec::new();
    for (t, sku, rid) in out {
        let key = format!("fg:{{wl:{sku}}}:t:{t}");
        let mut args = vec!["-p".to_string(), redis_port.to_string()];
        if cluster {
            args.push("-c".into());
        }
        args.extend(["HGET".to_string(), key, "seq".into()]);
        let (_, reply, _) =
            crate::procs::run_tool(Path::new("redis-cli"), &args, &[], Duration::from_secs(10))
                .await?;
        let seq = reply
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .and_then(|l| l.trim().parse::<i64>().ok());
        if let Some(seq) = seq {
            promotions.push(json!({"ticket_id": t, "sku": sku, "seq": seq, "reservation_id": rid}));
        }
    }
    Ok(promotions)
}

async fn pg_client(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_postgres::connect(url, tokio_postgres::NoTls),
    )
    .await
    .context("PostgreSQL connect timed out")??;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_acks_just_before_a_redis_kill_may_be_lost() {
        let seen = Seen {
            acks: vec![
                (1000.0, "early".into(), "reserve"),
                (8500.0, "window".into(), "confirm"),
                (10_000.0, "at-kill".into(), "reserve"),
                (10_001.0, "after".into(), "reserve"),
            ],
            ..Seen::default()
        };
        let starts = vec![
            ("redis-kill".to_owned(), 10_000.0),
            ("redis-pause".to_owned(), 1000.0),
        ];
        assert_eq!(expected_loss(&seen, &starts), ["at-kill", "window"]);
        assert!(expected_loss(&seen, &[]).is_empty());
    }

    #[test]
    fn a_write_is_lost_when_the_final_read_contradicts_its_ack() {
        let mut seen = Seen {
            acks: vec![
                (1.0, "kept".into(), "confirm"),
                (2.0, "gone".into(), "reserve"),
                (3.0, "undone".into(), "confirm"),
                (4.0, "unread".into(), "release"),
            ],
            ..Seen::default()
        };
        let read = |c: u16, s: Option<&str>| (Some(c), s.map(str::to_owned));
        seen.last_read
            .insert("kept".into(), read(200, Some("confirmed")));
        seen.last_read.insert("gone".into(), read(404, None));
        seen.last_read
            .insert("undone".into(), read(200, Some("expired")));
        assert_eq!(
            acked_then_lost(&seen),
            ["gone (reserve -> 404)", "undone (confirm -> expired)"]
        );
    }

    #[test]
    fn final_carts_show_each_line_as_its_reservation_was_read() {
        let mut seen = Seen::default();
        seen.carts.insert("c1".into());
        seen.carts.insert("unread".into());
        seen.cart_reads.insert(
            "c1".into(),
            (
                Some(200),
                json!({"cart_id": "c1", "status": "confirmed", "lines": [
                    {"sku": "S1", "qty": 1, "reservation_id": "S1.0.a"},
                    {"sku": "S2", "qty": 2, "reservation_id": "S2.1.b"}]}),
            ),
        );
        seen.last_read
            .insert("S1.0.a".into(), (Some(200), Some("confirmed".into())));
        seen.last_read.insert("S2.1.b".into(), (Some(404), None));
        let f = final_carts(&seen);
        assert_eq!(f["unread"], Value::Null);
        assert_eq!(f["c1"]["status"], 200);
        assert_eq!(f["c1"]["body"]["status"], "confirmed");
        assert_eq!(f["c1"]["lines"][0]["status"], "confirmed");
        assert_eq!(f["c1"]["lines"][1]["code"], 404);
        assert_eq!(f["c1"]["lines"][1]["status"], Value::Null);
        assert_eq!(f["c1"]["lines"][1]["qty"], 2);
    }
}
