//! What the operator and the platform can get wrong before the first buyer
//! arrives, and what flashgate does about it: absurd preload numbers, a
//! preload that failed half-way, a Redis that may evict keys or is too old,
//! and background tasks that panic. Real redis-server (and postgres) only.

use crate::support;

use std::process::Command;

use flashgate::domain::Sku;
use flashgate::inventory::keys::{self, ShardKeys};
use flashgate::inventory::PreloadOutcome;
use hyper::{Method, StatusCode};
use support::{spawn_app_with, RedisServer};

const ADMIN: &str = "admin-key-0123456789";

/// Every key Redis holds (these tests own their redis-server).
fn all_keys(redis: &RedisServer) -> Vec<String> {
    let out = redis.cli(&["--scan"]);
    let mut keys: Vec<String> = out.lines().map(str::to_owned).collect();
    keys.sort();
    keys
}

async fn admin_preload(
    app: &support::TestApp,
    sku: &str,
    body: serde_json::Value,
) -> support::Answer {
    let auth = format!("Bearer {ADMIN}");
    app.request(
        Method::POST,
        &format!("/admin/v1/skus/{sku}/preload"),
        &[
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ],
        body.to_string().into_bytes(),
    )
    .await
}

// ------------------------------------------------------------ #17.7 bounds

#[tokio::test]
async fn an_absurd_preload_over_the_admin_api_is_refused_and_writes_nothing() {
    let redis = RedisServer::start();
    let app = spawn_app_with(&redis, |c| {
        c.insecure_no_auth = false;
        c.admin_keys = vec![ADMIN.into()];
    })
    .await;
    let before = all_keys(&redis);
    for body in [
        // Lua would write this as "1e+17": every later reserve a 500
        serde_json::json!({"stock": 100_000_000_000_000_000i64, "shards": 4}),
        serde_json::json!({"stock": 1_000_000_000_001i64, "shards": 1}),
        serde_json::json!({"stock": -1, "shards": 4}),
        serde_json::json!({"stock": 1.5, "shards": 4}),
        serde_json::json!({"stock": 10, "shards": 0}),
        serde_json::json!({"stock": 10, "shards": 257}),
        serde_json::json!({"stock": 10, "shards": 4, "max_per_user": -1}),
        serde_json::json!({"stock": 10, "shards": 4, "max_per_user": 5_000_000_000i64}),
    ] {
        let a = admin_preload(&app, "absurd", body.clone()).await;
        assert_eq!(
            (a.status, a.code()),
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
            "{body}: {:?}",
            a.body
        );
        assert!(
            !a.body["error"]["message"].as_str().unwrap_or("").is_empty(),
            "{body}: a human message"
        );
        assert_eq!(all_keys(&redis), before, "{body} wrote to Redis");
    }
    let auth = format!("Bearer {ADMIN}");
    let sku = app
        .request(
            Method::GET,
            "/v1/skus/absurd",
            &[("authorization", &auth)],
            vec![],
        )
        .await;
    assert_eq!(sku.status, StatusCode::NOT_FOUND);
    // the largest stock allowed loads, and every counter stays a counter
    let a = admin_preload(
        &app,
        "huge",
        serde_json::json!({"stock": flashgate::inventory::MAX_STOCK, "shards": 3}),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
    let body = serde_json::json!({"sku": "huge", "qty": 2, "user_id": "u1"});
    let r = app
        .request(
            Method::POST,
            "/v1/reservations",
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
                ("idempotency-key", "k-huge"),
            ],
            body.to_string().into_bytes(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let st = app.assert_books("huge").await;
    assert_eq!(st.available, flashgate::inventory::MAX_STOCK - 2);
    assert_eq!(st.initial, flashgate::inventory::MAX_STOCK);
}

#[tokio::test]
async fn preload_lua_refuses_a_number_it_cannot_count_exactly() {
    let redis = RedisServer::start();
    let pool = flashgate::inventory::connect(&support::test_config(&redis))
        .await
        .expect("connect");
    let scripts = flashgate::inventory::scripts::Scripts::new();
    let metrics = flashgate::metrics::Metrics::new(1);
    let nodes = flashgate::inventory::nodes::Nodes::pool_only(pool);
    let k = ShardKeys::new(&keys::default_tag(&Sku::parse("lua").unwrap(), 0));
    for units in [
        "100000000000000000",
        "1000000000001",
        "-1",
        "1.5",
        "1e3",
        "",
        "x",
    ] {
        let r = flashgate::inventory::scripts::run(
            &nodes,
            &metrics,
            &scripts.preload,
            vec![k.stock(), k.books(), k.events()],
            vec![units.into(), "0".into()],
        )
        .await;
        assert!(r.is_err(), "preload.lua took {units:?}: {r:?}");
        assert_eq!(all_keys(&redis), Vec::<String>::new(), "{units:?} wrote");
    }
    // a stock key that is not a counter (an older flashgate wrote "1e+17"):
    // a forced preload refuses before it writes anything
    redis.cli(&["SET", &k.stock(), "1e+17"]);
    let r = flashgate::inventory::scripts::run(
        &nodes,
        &metrics,
        &scripts.preload,
        vec![k.stock(), k.books(), k.events()],
        vec!["5".into(), "1".into()],
    )
    .await;
    assert!(r.is_err(), "{r:?}");
    assert_eq!(all_keys(&redis), vec![k.stock()]);
    assert_eq!(redis.cli(&["GET", &k.stock()]), "1e+17");
}

#[test]
fn the_cli_refuses_an_absurd_preload_and_writes_nothing() {
    let redis = RedisServer::start();
    for args in [
        ["--stock", "100000000000000000", "--shards", "4"],
        ["--stock=-5", "--shards", "4", "--force"],
        ["--stock", "10", "--shards", "0"],
        ["--stock", "10", "--shards", "300"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_flashgate"))
            .args(["preload", "--sku", "cli-absurd"])
            .args(args)
            .env("FLASHGATE_REDIS_URL", redis.url())
            .output()
            .expect("run flashgate");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains("stock") || err.contains("shards"), "{err}");
        assert_eq!(all_keys(&redis), Vec::<String>::new(), "{args:?} wrote");
    }
}

// ---------------------------------------------------- #24.7 partial preload

/// The service connects as ACL user `fg`, which may not touch the keys of
/// shard `bad`: a preload fails there half-way, after the shards before it
/// were written (as a timeout or a lost connection would leave it). Then the
/// operator fixes the ACL.
async fn fail_midway(redis: &RedisServer, sku: &Sku, bad: u16, shards: u16) -> support::TestApp {
    let mut acl = vec!["ACL", "SETUSER", "fg", "on", ">fg-password", "+@all"];
    let allowed: Vec<String> = (0..shards)
        .filter(|s| *s != bad)
        .map(|s| format!("~fg:{{{sku}#{s}}}:*"))
        // (fg:layout and fg:claimkey: the store's data layout and claim
        // key, read at start)
        .chain([
            format!("~fg:{{{sku}}}:*"),
            "~fg:skus".into(),
            "~fg:layout".into(),
            "~fg:claimkey".into(),
        ])
        .collect();
    acl.extend(allowed.iter().map(String::as_str));
    assert_eq!(redis.cli(&acl), "OK");
    let url = format!("redis://fg:fg-password@127.0.0.1:{}", redis.port);
    let app = spawn_app_with(redis, |c| c.redis_url = url).await;
    let r = app.state.inventory.preload(sku, 10, shards, false).await;
    assert!(r.is_err(), "the preload met the ACL: {r:?}");
    // the shards before it were written: a partial preload
    let first = ShardKeys::new(&keys::default_tag(sku, 0)).stock();
    assert_eq!(redis.cli(&["EXISTS", &first]), "1");
    assert_eq!(
        app.get(&format!("/v1/skus/{sku}")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(redis.cli(&["ACL", "SETUSER", "fg", "allkeys"]), "OK");
    app
}

#[tokio::test]
async fn a_preload_that_failed_midway_completes_on_the_next_try() {
    let redis = RedisServer::start();
    let sku = Sku::parse("partial").unwrap();
    let app = fail_midway(&redis, &sku, 2, 4).await;
    // the same preload again, without force: it completes the SKU
    let again = app
        .state
        .inventory
        .preload(&sku, 10, 4, false)
        .await
        .expect("preload");
    assert_eq!(
        again,
        PreloadOutcome::Loaded {
            per_shard: vec![3, 3, 2, 2]
        }
    );
    // and now a later one is refused: the SKU is loaded
    assert_eq!(
        app.state
            .inventory
            .preload(&sku, 99, 4, false)
            .await
            .unwrap(),
        PreloadOutcome::AlreadyLoaded
    );
    let st = app.assert_books("partial").await;
    assert_eq!((st.initial, st.available, st.shards), (10, 10, 4));
    // the outbox agrees: each shard's preload events add up to its initial
    // units (the failed attempt's events were not left behind to count twice)
    for s in &st.per_shard {
        let events = ShardKeys::new(&keys::default_tag(&sku, s.shard)).events();
        let dump = redis.cli(&["XRANGE", &events, "-", "+"]);
        let lines: Vec<&str> = dump.lines().collect();
        let preloaded: i64 = lines
            .windows(2)
            .filter(|w| w[0] == "qty")
            .map(|w| w[1].parse::<i64>().expect("qty"))
            .sum();
        assert_eq!(preloaded, s.initial, "shard {}: {dump}", s.shard);
    }
    for i in 0..10 {
        let r = app
            .reserve(&format!("k{i}"), "partial", 1, &format!("u{i}"))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    }
    let r = app.reserve("k-late", "partial", 1, "late").await;
    assert_eq!(r.code(), "sold_out");
    let st = app.assert_books("partial").await;
    assert_eq!((st.initial, st.available, st.held), (10, 0, 10));
}

#[tokio::test]
async fn a_retry_with_fewer_shards_leaves_no_stray_stock() {
    let redis = RedisServer::start();
    let sku = Sku::parse("fewer").unwrap();
    // shards 0, 1 and 2 written, shard 3 refused
    let app = fail_midway(&redis, &sku, 3, 4).await;
    let again = app
        .state
        .inventory
        .preload(&sku, 10, 2, false)
        .await
        .expect("preload");
    assert_eq!(
        again,
        PreloadOutcome::Loaded {
            per_shard: vec![5, 5]
        }
    );
    // the shard the first attempt wrote but the layout does not have is gone
    let stray = ShardKeys::new(&keys::default_tag(&sku, 2));
    assert_eq!(redis.cli(&["EXISTS", &stray.stock(), &stray.books()]), "0");
    let st = app.assert_books("fewer").await;
    assert_eq!((st.initial, st.available, st.shards), (10, 10, 2));
    let r = app.reserve("k1", "fewer", 1, "u1").await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
}

#[test]
fn a_catalogue_with_one_absurd_row_loads_nothing() {
    let redis = RedisServer::start();
    let pg = support::postgres::PostgresServer::start();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_flashgate"))
            .args(args)
            .env("FLASHGATE_REDIS_URL", redis.url())
            .env("FLASHGATE_POSTGRES_URL", pg.url())
            .output()
            .expect("run flashgate")
    };
    assert!(run(&["migrate"]).status.success());
    pg.psql(
        "INSERT INTO skus (sku, stock, shards) VALUES ('a-good', 10, 2), ('z-bad', 100000000000000000, 4)",
    );
    let out = run(&["preload", "--from-postgres"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("z-bad") && err.contains("stock"), "{err}");
    assert_eq!(
        all_keys(&redis),
        Vec::<String>::new(),
        "a refused catalogue wrote"
    );
    assert_eq!(
        pg.psql("SELECT count(*) FROM skus WHERE loaded_at IS NOT NULL"),
        "0"
    );
}

// ------------------------------------ #17.9 eviction, #24.8 Redis version

/// `/readyz` until it answers `want` (a deadline for waiting, not a
/// performance bound); the last answer.
async fn poll_readyz(app: &support::TestApp, want: StatusCode) -> support::Answer {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let a = app.get("/readyz").await;
        if a.status == want {
            return a;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "readyz stayed {} {:?}",
            a.status,
            a.body
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn a_redis_that_may_evict_keys_is_refused_at_start_unless_overridden() {
    let redis = RedisServer::start_with_args(&["--maxmemory-policy", "allkeys-lru"]);
    let err = match flashgate::app::App::build(support::test_config(&redis)).await {
        Ok(_) => panic!("started on a Redis that evicts keys"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("maxmemory-policy")
            && err.contains("allkeys-lru")
            && err.contains("noeviction")
            && err.contains("allow-eviction-policy"),
        "{err}"
    );
    // the override is explicit, and then the service serves
    let app = spawn_app_with(&redis, |c| c.allow_eviction_policy = true).await;
    assert_eq!(app.get("/readyz").await.status, StatusCode::OK);
    app.preload("evict", 3, 1).await;
    let r = app.reserve("k1", "evict", 1, "u1").await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
}

#[test]
fn the_cli_refuses_a_redis_that_may_evict_keys() {
    let redis = RedisServer::start_with_args(&["--maxmemory-policy", "volatile-ttl"]);
    let out = Command::new(env!("CARGO_BIN_EXE_flashgate"))
        .args(["preload", "--sku", "cli-evict", "--stock", "5"])
        .env("FLASHGATE_REDIS_URL", redis.url())
        .output()
        .expect("run flashgate");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("volatile-ttl"), "{err}");
    assert_eq!(all_keys(&redis), Vec::<String>::new());
}

#[tokio::test]
async fn a_redis_that_hides_config_is_refused_unless_overridden() {
    let redis = RedisServer::start();
    // an ACL user without CONFIG, as managed Redis services hand out
    let acl = [
        "ACL",
        "SETUSER",
        "fg",
        "on",
        ">fg-password",
        "+@all",
        "-config",
        "~*",
        "&*",
    ];
    assert_eq!(redis.cli(&acl), "OK");
    let mut config = support::test_config(&redis);
    config.redis_url = format!("redis://fg:fg-password@127.0.0.1:{}", redis.port);
    let err = match flashgate::app::App::build(config.clone()).await {
        Ok(_) => panic!("started without knowing the eviction policy"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("cannot read maxmemory-policy") && err.contains("allow-eviction-policy"),
        "{err}"
    );
    config.allow_eviction_policy = true;
    let app = support::spawn_app(config).await;
    assert_eq!(app.get("/readyz").await.status, StatusCode::OK);
}

#[tokio::test]
async fn readyz_fails_while_the_eviction_policy_is_changed_at_runtime() {
    let redis = RedisServer::start();
    let app = spawn_app_with(&redis, |_| {}).await;
    assert_eq!(app.get("/readyz").await.status, StatusCode::OK);
    assert_eq!(
        redis.cli(&["CONFIG", "SET", "maxmemory-policy", "volatile-lru"]),
        "OK"
    );
    let a = poll_readyz(&app, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(a.code(), "redis_unsuitable", "{:?}", a.body);
    let msg = a.body["error"]["message"].as_str().unwrap_or("");
    assert!(msg.contains("volatile-lru"), "{msg}");
    redis.cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    poll_readyz(&app, StatusCode::OK).await;
}

#[tokio::test]
async fn on_a_cluster_every_master_is_checked() {
    let cluster = support::cluster::Cluster::start(3, 0);
    let masters: Vec<u16> = cluster.masters().keys().copied().collect();
    let last = *masters.last().expect("masters");
    support::cluster::cli(
        last,
        &["CONFIG", "SET", "maxmemory-policy", "allkeys-random"],
    );
    let mut config = flashgate::config::Config {
        redis_url: cluster.url(),
        ..flashgate::config::Config::default()
    };
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.insecure_no_auth = true;
    config.redis_timeout_ms = 2000;
    let err = match flashgate::app::App::build(config.clone()).await {
        Ok(_) => panic!("started on a cluster with a master that evicts keys"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("allkeys-random") && err.contains(&last.to_string()),
        "{err}"
    );
    support::cluster::cli(last, &["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    let app = flashgate::app::App::build(config).await.expect("starts");
    drop(app);
}

#[test]
fn a_redis_older_than_7_is_refused() {
    use flashgate::inventory::preflight;
    // the real INFO text of the test redis (7.x), and the same text as a
    // Redis 6.2 would write it
    let redis = RedisServer::start();
    let info = redis.cli(&["INFO", "server"]);
    let v = preflight::redis_version(&info).expect("a version in INFO");
    assert!(v >= preflight::Version(7, 0, 0), "{v:?}");
    assert!(preflight::check_version("127.0.0.1:1", &info).is_ok());
    let line = info
        .lines()
        .find(|l| l.starts_with("redis_version:"))
        .expect("redis_version line");
    let old = info.replace(line, "redis_version:6.2.14");
    let err = preflight::check_version("127.0.0.1:1", &old).unwrap_err();
    assert!(
        err.contains("6.2.14") && err.contains("7.0") && err.contains("127.0.0.1:1"),
        "{err}"
    );
}

#[tokio::test]
async fn a_redis_7_is_accepted_at_start() {
    let redis = RedisServer::start();
    let app = flashgate::app::App::build(support::test_config(&redis))
        .await
        .expect("starts on redis 7");
    let versions = app.state().inventory.server_versions().await.expect("INFO");
    assert_eq!(versions.len(), 1);
    assert!(versions[0].1 >= flashgate::inventory::preflight::Version(7, 0, 0));
}

// --------------------------------------------- #17.8 supervised background tasks

/// The value of `flashgate_task_restarts_total{task="<task>"}` on /metrics.
async fn restarts(app: &support::TestApp, task: &str) -> Option<u64> {
    let page = app.get("/metrics").await.body;
    let page = page.as_str().unwrap_or("").to_owned();
    let series = format!("flashgate_task_restarts_total{{task=\"{task}\"}} ");
    page.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn a_sweeper_that_panics_is_restarted_counted_and_named_by_readyz() {
    let redis = RedisServer::start();
    let app = spawn_app_with(&redis, |c| {
        c.sweep_interval_ms = 20;
        // stalled after max(200 ms, 5 x 20 ms) without a completed round
        c.task_stall_ms = 200;
        // the sweeper panics at the end of its first 4 rounds; restarts
        // back off 0.1 + 0.2 + 0.4 + 0.8 s, so it is stalled for ~1.5 s
        c.fault_task_panics = "sweeper:4".into();
        c.hold_seconds = 1;
        c.max_hold_seconds = 1;
    })
    .await;
    app.preload("sup", 1, 1).await;
    let held = app.reserve("k1", "sup", 1, "u1").await;
    assert_eq!(held.status, StatusCode::CREATED, "{:?}", held.body);

    // Stalled, and named: the sweeper alone. (On a machine loaded by other
    // test processes another task can miss its 200 ms bound for a moment
    // too, seen once: so the answers are read until one names the sweeper
    // alone, which must come while it is down, ~1.5 s.)
    let mut seen = Vec::new();
    loop {
        let stalled = poll_readyz(&app, StatusCode::SERVICE_UNAVAILABLE).await;
        assert_eq!(stalled.code(), "task_stalled", "{:?}", stalled.body);
        let msg = stalled.body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        assert!(msg.contains("sweeper"), "{msg}");
        if !msg.contains("promoter") && !msg.contains("ledger") {
            break;
        }
        seen.push(msg);
        // (each read waits at most poll_readyz's 20 s; 40 answers are 1 s)
        assert!(seen.len() < 40, "never the sweeper alone: {seen:?}");
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }

    // restarted until the fault is spent, then ready again
    poll_readyz(&app, StatusCode::OK).await;
    assert_eq!(restarts(&app, "sweeper").await, Some(4));
    assert_eq!(restarts(&app, "promoter").await, Some(0));
    // and the restarted sweeper does its work: the 1 s hold expires
    assert!(
        support::eventually(std::time::Duration::from_secs(10), || async {
            app.sku("sup").await["available"] == 1
        })
        .await,
        "the hold never came back: the sweeper is not running"
    );
    app.assert_books("sup").await;
}
