//! flashgate on a real Redis Cluster (3 masters, 3 replicas): the core sale,
//! shard placement, a slot migrated mid-sale, a master killed mid-sale.

mod support;

use std::collections::HashSet;
use std::sync::Arc;

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
