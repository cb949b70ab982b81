//! flashgate on a real Redis Cluster (3 masters, 3 replicas): the core sale,
//! shard placement, a slot migrated mid-sale, a master killed mid-sale.

mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flashgate::config::Config;
use futures::future::join_all;
use hyper::StatusCode;
use support::cluster::{keyslot, Cluster};
use support::{spawn_app, TestApp};

fn cluster_config(cluster: &Cluster) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        redis_url: cluster.url(),
        // a debug build with six redis-servers on two cores queues commands
        // for longer than the single-node tests' 300 ms under 2,000 buyers
        redis_timeout_ms: 3000,
        sweep_interval_ms: 50,
        drain_seconds: 1,
        insecure_no_auth: true,
        user_rate_per_second: 0,
        ..Config::default()
    }
}

/// The core concurrency test, unchanged but for the Redis it runs against.
async fn two_thousand_buyers(app: &Arc<TestApp>, sku: &str) {
    app.preload(sku, 100, 4).await;
    let answers = join_all((0..2000).map(|i| {
        let app = app.clone();
        let sku = sku.to_string();
        tokio::spawn(async move {
            app.reserve(&format!("buyer-{i}"), &sku, 1, &format!("user-{i}"))
                .await
        })
    }))
    .await;
    let answers: Vec<_> = answers.into_iter().map(|a| a.expect("task")).collect();
    let held: Vec<&support::Answer> = answers
        .iter()
        .filter(|a| a.status == StatusCode::CREATED)
        .collect();
    let sold_out = answers.iter().filter(|a| a.code() == "sold_out").count();
    let mut other: Vec<String> = answers
        .iter()
        .filter(|a| a.status != StatusCode::CREATED && a.code() != "sold_out")
        .map(|a| format!("{} {}", a.status, a.body))
        .collect();
    other.dedup();
    assert!(
        other.is_empty(),
        "unexpected answers: {:?}",
        &other[..other.len().min(5)]
    );
    assert_eq!(held.len(), 100, "exactly the stock is held");
    assert_eq!(sold_out, 1900, "everyone else hears sold out");
    let ids: HashSet<&str> = held
        .iter()
        .map(|a| a.body["reservation_id"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(ids.len(), 100);
    let st = app.assert_books(sku).await;
    assert_eq!((st.available, st.held, st.sold), (0, 100, 0));

    let ends = join_all(held.iter().enumerate().map(|(i, a)| {
        let app = app.clone();
        let rid = a.body["reservation_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        async move {
            app.action(&rid, if i % 2 == 0 { "confirm" } else { "release" })
                .await
                .status
        }
    }))
    .await;
    assert!(ends.iter().all(|s| *s == StatusCode::OK));
    let st = app.assert_books(sku).await;
    assert_eq!(
        (st.available, st.held, st.sold, st.initial),
        (50, 0, 50, 100)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_sale_on_a_cluster_and_shards_on_different_masters() {
    let cluster = Cluster::start(3, 1);
    let app = Arc::new(spawn_app(cluster_config(&cluster)).await);
    assert_eq!(app.get("/readyz").await.status, StatusCode::OK);
    two_thousand_buyers(&app, "hot").await;

    let sku = flashgate::domain::Sku::parse("hot").expect("sku");
    let meta = app
        .state
        .inventory
        .meta(&sku)
        .await
        .expect("meta")
        .expect("loaded");
    let owners: HashSet<u16> = meta
        .tags
        .iter()
        .map(|t| cluster.owner(keyslot(&format!("{{{t}}}"))))
        .collect();
    assert!(owners.len() >= 2, "shards on {owners:?}");
    assert_eq!(owners.len(), 3, "4 shards placed over all 3 masters");

    // status names the master of every shard, as the slot map has it
    let st = app.state.inventory.status(&sku).await.expect("status");
    for (s, tag) in st.per_shard.iter().zip(&meta.tags) {
        let owner = cluster.owner(keyslot(&format!("{{{tag}}}")));
        assert_eq!(s.node, Some(format!("127.0.0.1:{owner}")), "{s:?}");
    }
    let table = flashgate::cli::status_table(&st);
    assert!(
        table.contains("node") && table.contains("127.0.0.1:"),
        "{table}"
    );
}

/// Median and 99th percentile of `n` sequential reserves (for the report;
/// nothing is asserted on wall-clock time).
async fn latency(app: &TestApp, sku: &str, prefix: &str, n: usize) -> (Duration, Duration) {
    let mut took = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let a = app
            .reserve(&format!("{prefix}-{i}"), sku, 1, &format!("u-{prefix}-{i}"))
            .await;
        took.push(t.elapsed());
        assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
    }
    took.sort();
    (took[n / 2], took[n * 99 / 100])
}

#[tokio::test]
async fn replica_ack_waits_for_the_replica_and_fails_closed_without_it() {
    let cluster = Cluster::start(3, 1);
    let mut config = cluster_config(&cluster);
    config.redis_timeout_ms = 1000;
    let plain = spawn_app(config.clone()).await;
    config.replica_ack = 1;
    config.replica_ack_timeout_ms = 300;
    let acked = spawn_app(config).await;
    acked.preload("dur", 10_000, 4).await;

    let (p50, p99) = latency(&plain, "dur", "plain", 300).await;
    let (a50, a99) = latency(&acked, "dur", "acked", 300).await;
    eprintln!(
        "reserve latency, 300 sequential: replica_ack=0 p50 {p50:?} p99 {p99:?}; replica_ack=1 p50 {a50:?} p99 {a99:?}"
    );

    // a key whose first shard's replica hangs: the hold is made, but not answered
    let sku = flashgate::domain::Sku::parse("dur").expect("sku");
    let meta = acked
        .state
        .inventory
        .meta(&sku)
        .await
        .expect("meta")
        .expect("loaded");
    let key = "stalled-1";
    let first = {
        let k = flashgate::domain::IdempotencyKey::parse(key).expect("key");
        (k.stable_hash() % u64::from(meta.shards)) as usize
    };
    let master = cluster.owner(keyslot(&format!("{{{}}}", meta.tags[first])));
    let replica = cluster.replica_of(master);
    cluster.node(replica).pause();
    let a = acked.reserve(key, "dur", 1, "stalled").await;
    cluster.node(replica).resume();
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "redis_unavailable"),
        "{:?}",
        a.body
    );
    let st = acked.assert_books("dur").await;
    assert_eq!(st.held, 601, "the hold stays");
    // the retry replays it, now replicated
    let b = acked.reserve(key, "dur", 1, "stalled").await;
    assert_eq!(b.status, StatusCode::OK, "{:?}", b.body);
    assert_eq!(acked.assert_books("dur").await.held, 601);
}

/// What one buyer finally got, and how many 503s it retried through.
struct Bought {
    key: String,
    answer: support::Answer,
    retries: u32,
}

/// One buyer: reserve, and on 503 retry with the same key (what a storefront
/// does), up to `max_retries` times.
async fn buy(app: &TestApp, sku: &str, key: String, max_retries: u32) -> Bought {
    let mut retries = 0;
    loop {
        let answer = app.reserve(&key, sku, 1, &format!("user-{key}")).await;
        if answer.status == StatusCode::SERVICE_UNAVAILABLE && retries < max_retries {
            retries += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        return Bought {
            key,
            answer,
            retries,
        };
    }
}

/// `concurrency` buyers at a time, each worker taking a fresh key as soon as
/// its last buyer is done, until `stop`; `served` counts the 201s as they come.
fn sale(
    app: Arc<TestApp>,
    sku: &'static str,
    concurrency: usize,
    max_retries: u32,
    stop: Arc<AtomicBool>,
    served: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<Vec<Bought>> {
    tokio::spawn(async move {
        let workers = (0..concurrency).map(|w| {
            let (app, stop, served) = (app.clone(), stop.clone(), served.clone());
            async move {
                let mut mine = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    let key = format!("{sku}-{w}-{n}");
                    n += 1;
                    let b = buy(&app, sku, key, max_retries).await;
                    if b.answer.status == StatusCode::CREATED {
                        served.fetch_add(1, Ordering::SeqCst);
                    }
                    mine.push(b);
                }
                mine
            }
        });
        join_all(workers).await.into_iter().flatten().collect()
    })
}

async fn held_now(app: &TestApp, sku: &str) -> i64 {
    let sku = flashgate::domain::Sku::parse(sku).expect("sku");
    match app.state.inventory.status(&sku).await {
        Ok(st) => st.held,
        Err(e) => {
            eprintln!("status: {e}");
            0
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_slot_migrated_mid_sale_loses_nothing() {
    let cluster = Arc::new(Cluster::start(3, 1));
    let app = Arc::new(spawn_app(cluster_config(&cluster)).await);
    app.preload("mig", 100_000, 4).await;
    let sku = flashgate::domain::Sku::parse("mig").expect("sku");
    let meta = app
        .state
        .inventory
        .meta(&sku)
        .await
        .expect("meta")
        .expect("loaded");
    let slot = keyslot(&format!("{{{}}}", meta.tags[0]));
    let from = cluster.owner(slot);
    let to = *cluster
        .masters()
        .keys()
        .find(|p| **p != from)
        .expect("another master");

    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let buyers = sale(app.clone(), "mig", 20, 100, stop.clone(), served);
    assert!(
        support::eventually(Duration::from_secs(30), || async {
            held_now(&app, "mig").await >= 200
        })
        .await,
        "the sale is under way"
    );
    // shard 0's slot moves to another master while buyers keep coming
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.migrate_slot(slot, to, || {}))
        .await
        .expect("migrated");
    let after = held_now(&app, "mig").await;
    assert!(
        support::eventually(Duration::from_secs(30), || async {
            held_now(&app, "mig").await >= after + 200
        })
        .await,
        "the sale goes on after the move"
    );
    stop.store(true, Ordering::SeqCst);
    let bought = buyers.await.expect("sale");
    assert_eq!(cluster.owner(slot), to, "the slot moved");

    let retries: u32 = bought.iter().map(|b| b.retries).sum();
    let failed: Vec<String> = bought
        .iter()
        .filter(|b| b.answer.status != StatusCode::CREATED)
        .map(|b| format!("{} {}", b.answer.status, b.answer.body))
        .collect();
    eprintln!(
        "{} buyers, {retries} retries of a 503 during the move",
        bought.len()
    );
    assert!(
        failed.is_empty(),
        "beyond retries: {:?}",
        &failed[..failed.len().min(5)]
    );
    let ids: HashSet<&str> = bought
        .iter()
        .map(|b| b.answer.body["reservation_id"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(ids.len(), bought.len(), "one hold per buyer");
    let st = app.assert_books("mig").await;
    assert_eq!(st.held, bought.len() as i64, "exactly one hold per 201");
    assert_eq!(st.available + st.held, 100_000);
    // shard 0 serves from its new master, and the keys' verdicts moved with it
    assert!(
        bought
            .iter()
            .rev()
            .take(100)
            .any(|b| b.answer.body["reservation_id"]
                .as_str()
                .is_some_and(|r| r.starts_with("mig.0."))),
        "shard 0 serves after the move"
    );
    for b in bought.iter().step_by(97) {
        let again = app
            .reserve(&b.key, "mig", 1, &format!("user-{}", b.key))
            .await;
        assert_eq!(again.status, StatusCode::OK);
        assert_eq!(again.body, b.answer.body, "a replay after the move");
    }
    assert_eq!(app.assert_books("mig").await.held, bought.len() as i64);
    let st = app.state.inventory.status(&sku).await.expect("status");
    assert_eq!(st.per_shard[0].node, Some(format!("127.0.0.1:{to}")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_mid_sale_fails_over_without_a_wrong_answer() {
    let mut cluster = Cluster::start(3, 1);
    let mut config = cluster_config(&cluster);
    config.redis_timeout_ms = 500;
    let app = Arc::new(spawn_app(config).await);
    app.preload("fo", 100_000, 4).await;
    let sku = flashgate::domain::Sku::parse("fo").expect("sku");
    let meta = app
        .state
        .inventory
        .meta(&sku)
        .await
        .expect("meta")
        .expect("loaded");
    let victim = cluster.owner(keyslot(&format!("{{{}}}", meta.tags[0])));
    let replica = cluster.replica_of(victim);
    let survivors: HashSet<u16> = meta
        .tags
        .iter()
        .map(|t| cluster.owner(keyslot(&format!("{{{t}}}"))))
        .filter(|m| *m != victim)
        .collect();
    assert!(!survivors.is_empty(), "some shards live elsewhere");

    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    // retries for up to ~30 s: long enough to outlast the failover
    let buyers = sale(app.clone(), "fo", 10, 600, stop.clone(), served.clone());
    assert!(
        support::eventually(Duration::from_secs(30), || async {
            served.load(Ordering::SeqCst) >= 200
        })
        .await,
        "the sale is under way"
    );

    cluster.node_mut(victim).kill();
    let at_kill = served.load(Ordering::SeqCst);
    // the replica takes over once the others agree the master failed
    let promoted = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if support::cluster::cli(replica, &["ROLE"]).starts_with("master") {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    })
    .await
    .expect("poll");
    assert!(promoted, "the replica was promoted");
    let during = served.load(Ordering::SeqCst) - at_kill;
    cluster.wait_healthy(Duration::from_secs(30));
    let after_failover = served.load(Ordering::SeqCst);
    assert!(
        support::eventually(Duration::from_secs(30), || async {
            served.load(Ordering::SeqCst) >= after_failover + 200
        })
        .await,
        "the sale goes on after the failover"
    );
    stop.store(true, Ordering::SeqCst);
    let bought = buyers.await.expect("sale");

    let retries: u32 = bought.iter().map(|b| b.retries).sum();
    // a 503 whose script had run (the reply was lost in the failover) is
    // answered by the retry as a replay of the buyer's own hold: 200, same id
    let failed: Vec<String> = bought
        .iter()
        .filter(|b| {
            let replay = b.answer.status == StatusCode::OK && b.retries > 0;
            b.answer.status != StatusCode::CREATED && !replay
        })
        .map(|b| format!("{} {}", b.answer.status, b.answer.body))
        .collect();
    assert!(
        failed.is_empty(),
        "beyond retries: {:?}",
        &failed[..failed.len().min(5)]
    );
    let ids: HashSet<&str> = bought
        .iter()
        .map(|b| b.answer.body["reservation_id"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(ids.len(), bought.len(), "one hold per buyer");
    // every shard's books add up on the new master too; holds acknowledged
    // by the dead master but not yet replicated are the only possible loss
    let st = app.assert_books("fo").await;
    let lost = bought.len() as i64 - st.held;
    eprintln!(
        "{} buyers, {retries} retries of a 503, {during} served while the master was down, {lost} acknowledged holds lost in the failover",
        bought.len()
    );
    assert!(lost >= 0, "never more holds than 201s");
    assert_eq!(st.available + st.held, 100_000);
    // the failed-over shard serves again
    let mut k = 0;
    let key = loop {
        let key = format!("after-{k}");
        let ik = flashgate::domain::IdempotencyKey::parse(&key).expect("key");
        if ik.stable_hash().is_multiple_of(u64::from(meta.shards)) {
            break key;
        }
        k += 1;
    };
    let a = buy(&app, "fo", key, 100).await;
    assert_eq!(a.answer.status, StatusCode::CREATED, "{:?}", a.answer.body);
    assert!(a.answer.body["reservation_id"]
        .as_str()
        .is_some_and(|r| r.starts_with("fo.0.")));
    let st = app.state.inventory.status(&sku).await.expect("status");
    assert_eq!(st.per_shard[0].node, Some(format!("127.0.0.1:{replica}")));
}

/// Reserves per second through the HTTP API, one node vs a 3-master cluster,
/// stock never running out (every request reaches Redis). A measurement for
/// the README, not a test: `cargo test --release --test cluster -- --ignored
/// --nocapture throughput`. On one small machine everything shares the same
/// cores, so this shows the per-request cost of cluster mode, not scale-out.
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn throughput_one_node_vs_cluster() {
    async fn run(app: Arc<TestApp>, label: &str) {
        let prefix: String = label.chars().filter(char::is_ascii_alphanumeric).collect();
        if app.sku("tp").await["shards"].is_null() {
            app.preload("tp", 10_000_000, 6).await;
        }
        let n = 20_000usize;
        let workers = 64usize;
        let next = Arc::new(AtomicUsize::new(0));
        let t = Instant::now();
        let tasks = (0..workers).map(|_| {
            let (app, next, prefix) = (app.clone(), next.clone(), prefix.clone());
            tokio::spawn(async move {
                let mut errors = 0;
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= n {
                        return errors;
                    }
                    let a = app
                        .reserve(&format!("tp-{prefix}-{i}"), "tp", 1, &format!("u{i}"))
                        .await;
                    if a.status != StatusCode::CREATED {
                        errors += 1;
                    }
                }
            })
        });
        let errors: usize = join_all(tasks)
            .await
            .into_iter()
            .map(|e| e.unwrap_or(0))
            .sum();
        let secs = t.elapsed().as_secs_f64();
        eprintln!(
            "{label}: {n} reserves, {workers} in flight: {:.0}/s ({errors} not 201)",
            n as f64 / secs
        );
    }
    let redis = support::RedisServer::start();
    let one = Arc::new(spawn_app(support::test_config(&redis)).await);
    run(one, "one redis-server").await;
    let cluster = Cluster::start(3, 1);
    let many = Arc::new(spawn_app(cluster_config(&cluster)).await);
    run(many.clone(), "cluster, 3 masters + 3 replicas").await;
    drop(many);
    let mut acked = cluster_config(&cluster);
    acked.replica_ack = 1;
    acked.replica_ack_timeout_ms = 1000;
    let acked = Arc::new(spawn_app(acked).await);
    acked
        .state
        .inventory
        .preload(
            &flashgate::domain::Sku::parse("tp").expect("sku"),
            10_000_000,
            6,
            true,
        )
        .await
        .expect("reload");
    run(acked, "cluster with replica_ack = 1").await;
}
