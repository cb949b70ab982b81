//! `lua/fix.lua` run directly on a real Redis: the guard on the newest outbox
//! id, the invariant check before any write, the records it settles and the
//! ones it leaves alone.

use crate::support;

use flashgate::inventory::keys::ShardKeys;
use flashgate::inventory::scripts::{self, Scripts};
use flashgate::metrics::Metrics;
use fred::clients::Pool;
use fred::interfaces::{HashesInterface, KeysInterface, SortedSetsInterface, StreamsInterface};
use fred::types::Value;
use std::collections::HashMap;
use support::{test_config, RedisServer};

/// A one-unit reservation record as reserve.lua writes it (lua/lib.lua,
/// rec_encode): `status|qty|created|exp|first_exp|ended|fixed|user` and the
/// idempotency key after a newline.
fn record_value(status: &str, rid: &str) -> String {
    format!("{status}|1|1000|61000|61000|||buyer-{rid}\nkey-{rid}")
}

struct Fixture {
    _redis: RedisServer,
    pool: Pool,
    scripts: Scripts,
    metrics: Metrics,
    k: ShardKeys,
}

async fn fixture() -> Fixture {
    let redis = RedisServer::start();
    let pool = flashgate::inventory::connect(&test_config(&redis))
        .await
        .expect("connect");
    Fixture {
        _redis: redis,
        pool,
        scripts: Scripts::new(),
        metrics: Metrics::new(10),
        k: ShardKeys::new("fix-sku#0"),
    }
}

impl Fixture {
    /// Books of a sold shard that someone tampered with: 10 initial, 2 held
    /// (one live hold `h1`, one record `h2` still "held" that the ledger has
    /// confirmed), 3 sold, available 9 instead of 5.
    async fn tampered(&self) -> String {
        let c = self.pool.next();
        let _: () = c.set(self.k.stock(), 9, None, None, false).await.unwrap();
        let _: () = c
            .hset(
                self.k.books(),
                [
                    ("initial", 10),
                    ("held", 2),
                    ("sold", 3),
                    ("xin", 0),
                    ("xout", 0),
                ],
            )
            .await
            .unwrap();
        // records as the service writes them now (one string, lua/lib.lua's
        // rec_encode). Records an earlier version wrote as hashes are
        // compatibility coverage of their own in lua.rs
        // (records_an_earlier_version_wrote_as_hashes_…); this file wrote
        // hashes only because it predates the string format (cc8985e).
        for (rid, status) in [("h1", "held"), ("h2", "held"), ("c1", "confirmed")] {
            let _: () = c
                .set(
                    self.record(rid),
                    record_value(status, rid),
                    None,
                    None,
                    false,
                )
                .await
                .unwrap();
        }
        let _: () = c
            .zadd(
                self.k.holds(),
                None,
                None,
                false,
                false,
                vec![(1.0, "h1"), (1.0, "h2")],
            )
            .await
            .unwrap();
        let id: String = c
            .xadd(self.k.events(), false, None, "*", vec![("type", "held")])
            .await
            .unwrap();
        id
    }

    fn record(&self, rid: &str) -> String {
        format!("{}{}", self.k.record_prefix(), rid)
    }

    async fn fix(
        &self,
        seen: &str,
        books: [i64; 6],
        settle: &[(&str, &str)],
    ) -> Result<Vec<String>, String> {
        let mut keys = vec![
            self.k.stock(),
            self.k.books(),
            self.k.holds(),
            self.k.events(),
        ];
        let mut args = vec![seen.to_string()];
        args.extend(books.iter().map(i64::to_string));
        for (rid, status) in settle {
            keys.push(self.record(rid));
            args.push(rid.to_string());
            args.push(status.to_string());
        }
        let nodes = flashgate::inventory::nodes::Nodes::pool_only(self.pool.clone());
        scripts::run(&nodes, &self.metrics, &self.scripts.fix, keys, args)
            .await
            .map(|v| {
                scripts::array(v)
                    .unwrap()
                    .iter()
                    .map(|x| scripts::text(x).unwrap())
                    .collect()
            })
            .map_err(|e| e.to_string())
    }

    async fn books(&self) -> (i64, HashMap<String, i64>) {
        let c = self.pool.next();
        let stock: Option<i64> = c.get(self.k.stock()).await.unwrap();
        let books: HashMap<String, i64> = c.hgetall(self.k.books()).await.unwrap();
        (stock.unwrap_or(-1), books)
    }

    /// The record's status, read by records.lua, '' when there is none.
    async fn status(&self, rid: &str) -> String {
        let nodes = flashgate::inventory::nodes::Nodes::pool_only(self.pool.clone());
        let v = scripts::run(
            &nodes,
            &self.metrics,
            &self.scripts.records,
            vec![self.record(rid)],
            vec![],
        )
        .await
        .unwrap();
        match scripts::decode_records(v).unwrap().pop() {
            Some(Some(r)) => r.status,
            _ => String::new(),
        }
    }
}

#[tokio::test]
async fn fix_sets_the_books_and_settles_records_the_ledger_ended() {
    let f = fixture().await;
    let seen = f.tampered().await;
    // ledger truth: h2 was confirmed → held 1, sold 4, available 5
    let reply = f
        .fix(&seen, [5, 1, 4, 10, 0, 0], &[("h2", "confirmed")])
        .await
        .expect("fix runs");
    assert_eq!(
        reply,
        vec!["ok", "9", "2", "3", "10", "0", "0"],
        "the values before"
    );
    let (stock, books) = f.books().await;
    assert_eq!(stock, 5);
    assert_eq!((books["held"], books["sold"], books["initial"]), (1, 4, 10));
    assert_eq!(f.status("h2").await, "confirmed");
    assert_eq!(
        f.status("h1").await,
        "held",
        "a hold the ledger agrees on stays"
    );
    let holds: Vec<String> = f
        .pool
        .next()
        .zrange(f.k.holds(), 0, -1, None, false, None, false)
        .await
        .unwrap();
    assert_eq!(holds, vec!["h1"], "the settled record left the expiry list");
    // books add up: 10 = 5 + 1 + 4
    assert_eq!(books["initial"], stock + books["held"] + books["sold"]);

    // a second identical fix is a no-op on the books
    let again = f
        .fix(&seen, [5, 1, 4, 10, 0, 0], &[("h2", "confirmed")])
        .await
        .unwrap();
    assert_eq!(again, vec!["ok", "5", "1", "4", "10", "0", "0"]);
}

#[tokio::test]
async fn fix_refuses_when_the_shard_moved_since_the_snapshot() {
    let f = fixture().await;
    let seen = f.tampered().await;
    let _: String = f
        .pool
        .next()
        .xadd(f.k.events(), false, None, "*", vec![("type", "confirmed")])
        .await
        .unwrap();
    let reply = f
        .fix(&seen, [5, 1, 4, 10, 0, 0], &[("h2", "confirmed")])
        .await
        .unwrap();
    assert_eq!(reply[0], "changed");
    assert_ne!(reply[1], seen);
    let (stock, books) = f.books().await;
    assert_eq!(
        (stock, books["held"], books["sold"]),
        (9, 2, 3),
        "nothing written"
    );
    assert_eq!(f.status("h2").await, "held");

    // an empty stream is '' on both sides
    let f = fixture().await;
    let reply = f.fix("", [0, 0, 0, 0, 0, 0], &[]).await.unwrap();
    assert_eq!(reply[0], "ok");
}

#[tokio::test]
async fn fix_refuses_books_that_do_not_add_up() {
    let f = fixture().await;
    let seen = f.tampered().await;
    for bad in [[6, 1, 4, 10, 0, 0], [-1, 1, 10, 10, 0, 0]] {
        let err = f.fix(&seen, bad, &[("h2", "confirmed")]).await.unwrap_err();
        assert!(err.contains("fix:"), "{err}");
    }
    let err = f.fix(&seen, [5, 1, 4, 10, 0, 0], &[]).await;
    assert!(err.is_ok(), "no records is fine");
    let f = fixture().await;
    let seen = f.tampered().await;
    let (stock, _) = f.books().await;
    assert_eq!(stock, 9);
    // an ended record takes the ledger's status too; a missing one stays missing
    let reply = f
        .fix(
            &seen,
            [5, 1, 4, 10, 0, 0],
            &[("c1", "expired"), ("gone", "confirmed")],
        )
        .await
        .unwrap();
    assert_eq!(reply[0], "ok");
    assert_eq!(f.status("c1").await, "expired");
    assert_eq!(f.status("gone").await, "");
    let _ = Value::Null;
}
