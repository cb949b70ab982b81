//! Wait estimates on a real Redis: a waiting ticket's
//! `estimated_wait_seconds` is its position ÷ the tickets promoted per second
//! over the last minute (counted by `wl_end.lua` in `fg:{wl:SKU}:rate`, read
//! by `wl_wait.lua`), `null` while nothing was promoted lately, never
//! negative or NaN, and the rate's state stays bounded.
//! (docs/waitlist-estimates.md)

use crate::support;

use std::time::Duration;

use fred::interfaces::{HashesInterface, KeysInterface};
use hyper::{Method, StatusCode};
use serde_json::Value;
use support::{eventually, RedisServer, TestApp};

async fn join(app: &TestApp, key: &str, sku: &str, user: &str) -> support::Answer {
    let body = serde_json::json!({"sku": sku, "qty": 1, "user_id": user, "waitlist": true});
    app.request(
        Method::POST,
        "/v1/reservations",
        &[
            ("content-type", "application/json"),
            ("idempotency-key", key),
        ],
        body.to_string().into_bytes(),
    )
    .await
}

/// Sell `sku` (preloaded with `n` units) out; the holds' reservation ids.
async fn sell_out(app: &TestApp, sku: &str, n: usize) -> Vec<String> {
    let mut rids = Vec::new();
    for i in 0..n {
        let a = app
            .reserve(&format!("{sku}-buy-{i}"), sku, 1, &format!("buyer-{i}"))
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
        rids.push(a.body["reservation_id"].as_str().unwrap().to_string());
    }
    rids
}

/// `n` waiters join; their ticket ids, in arrival order.
async fn waiters(app: &TestApp, sku: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let a = join(
            app,
            &format!("{sku}-w{i}"),
            sku,
            &format!("{sku}-waiter-{i}"),
        )
        .await;
        assert_eq!(a.status, StatusCode::ACCEPTED, "{:?}", a.body);
        ids.push(a.body["ticket_id"].as_str().unwrap().to_string());
    }
    ids
}

async fn ticket(app: &TestApp, id: &str) -> Value {
    let a = app.get(&format!("/v1/waitlist/{id}")).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    a.body
}

/// The Redis clock, ms (the one the rate is counted by).
async fn redis_ms(app: &TestApp, sku: &str) -> i64 {
    app.state
        .inventory
        .redis_now_ms(&format!("fg:{{wl:{sku}}}:queue"))
        .await
        .unwrap()
}

/// The estimate as the wire has it: `Some(None)` for `null`, `None` when
/// the field is absent. Anything but null or a non-negative integer fails.
fn estimate(t: &Value) -> Option<Option<u64>> {
    let v = t.as_object().unwrap().get("estimated_wait_seconds")?;
    if v.is_null() {
        return Some(None);
    }
    Some(Some(v.as_u64().unwrap_or_else(|| {
        panic!("estimated_wait_seconds is not a non-negative integer: {t}")
    })))
}

/// `ceil(position × elapsed_ms / (promoted × 1000))` with elapsed clamped
/// as the service clamps it: the estimate for a known pace.
fn expected(position: i64, promoted: i64, elapsed_ms: i64) -> u64 {
    let e = elapsed_ms.clamp(1_000, 60_000);
    ((position * e) as u64).div_ceil((promoted * 1_000) as u64)
}

#[tokio::test]
async fn a_waiting_ticket_shows_null_before_any_promotion() {
    let redis = RedisServer::start();
    let app = support::spawn_app_with(&redis, |_| {}).await;
    app.preload("calm", 3, 2).await;
    sell_out(&app, "calm", 3).await;
    for i in 0..3 {
        let a = join(&app, &format!("k{i}"), "calm", &format!("u{i}")).await;
        assert_eq!(a.status, StatusCode::ACCEPTED, "{:?}", a.body);
        // the 202 answer: the field is there, and null (nothing known)
        assert_eq!(estimate(&a.body), Some(None), "{}", a.body);
        let id = a.body["ticket_id"].as_str().unwrap();
        let t = ticket(&app, id).await;
        assert_eq!(t["position"], i + 1);
        assert_eq!(estimate(&t), Some(None), "{t}");
        // a replay of the join answers the same
        let again = join(&app, &format!("k{i}"), "calm", &format!("u{i}")).await;
        assert_eq!(estimate(&again.body), Some(None), "{}", again.body);
    }
    // nothing was counted: no rate key at all
    let n: i64 = app
        .state
        .inventory
        .pool()
        .next()
        .exists("fg:{wl:calm}:rate")
        .await
        .unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn the_estimate_follows_the_observed_promotion_pace() {
    let redis = RedisServer::start();
    let app = support::spawn_app_with(&redis, |_| {}).await;
    app.preload("pace", 10, 2).await;
    let holds = sell_out(&app, "pace", 10).await;
    let tickets = waiters(&app, "pace", 30).await;

    // two bursts of 5 promotions, at least 2 s apart on the Redis clock
    let a_start = redis_ms(&app, "pace").await;
    for rid in &holds[..5] {
        assert_eq!(app.action(rid, "release").await.status, StatusCode::OK);
    }
    assert!(
        eventually(Duration::from_secs(20), || async {
            app.sku("pace").await["waitlist"] == 25
        })
        .await,
        "5 promotions"
    );
    let a_end = redis_ms(&app, "pace").await;
    // a promoted ticket has no estimate
    assert_eq!(estimate(&ticket(&app, &tickets[0]).await), None);
    assert!(
        eventually(Duration::from_secs(20), || async {
            redis_ms(&app, "pace").await >= a_end + 2_000
        })
        .await
    );
    for rid in &holds[5..] {
        assert_eq!(app.action(rid, "release").await.status, StatusCode::OK);
    }
    assert!(
        eventually(Duration::from_secs(20), || async {
            app.sku("pace").await["waitlist"] == 20
        })
        .await,
        "10 promotions"
    );

    // every waiting ticket: position ÷ (10 promoted over the time since the
    // first second that saw one), within the bounds the measured clock gives
    let mut last = 0;
    for (i, id) in tickets.iter().enumerate().skip(10) {
        let before = redis_ms(&app, "pace").await;
        let t = ticket(&app, id).await;
        let after = redis_ms(&app, "pace").await;
        let position = i as i64 - 9;
        assert_eq!(t["status"], "waiting");
        assert_eq!(t["position"], position);
        let e = estimate(&t)
            .expect("a waiting ticket has the field")
            .unwrap_or_else(|| panic!("promotions were seen, yet no estimate: {t}"));
        // the oldest counted second began at or after a_start's second and
        // at or before a_end; the answer's clock lies in [before, after]
        let lo = expected(position, 10, before - a_end);
        let hi = expected(position, 10, after - a_start / 1_000 * 1_000);
        if after - a_start < 59_000 {
            assert!(
                (lo..=hi).contains(&e),
                "position {position}: estimate {e} s outside [{lo}, {hi}] s"
            );
            // ≥ 2 s between the bursts: the rate is ≤ 10 per 2 s, so the
            // wait is at least position / 5 per second
            assert!(e >= (position as u64).div_ceil(5), "{e}");
        }
        assert!(e >= last, "estimates grow with the position: {e} < {last}");
        last = e;
    }
}

#[tokio::test]
async fn the_rate_state_is_bounded_and_garbage_in_it_never_makes_a_bad_estimate() {
    let redis = RedisServer::start();
    let app = support::spawn_app_with(&redis, |_| {}).await;
    app.preload("junk", 1, 1).await;
    let holds = sell_out(&app, "junk", 1).await;
    let tickets = waiters(&app, "junk", 3).await;
    let pool = app.state.inventory.pool().next().clone();
    let rate = "fg:{wl:junk}:rate";
    let now_sec = redis_ms(&app, "junk").await / 1_000;
    // every bucket already taken by a second of long ago (as a store left
    // idle mid-window would have them), plus values no promotion writes:
    // unparseable, negative counts, NaN, a second from the future (a clock
    // that went back), an empty one
    let mut fields: Vec<(String, String)> = (0..60)
        .map(|b| {
            let sec = (now_sec - 3_600) / 60 * 60 + b;
            ((sec % 60).to_string(), format!("{sec}:7"))
        })
        .collect();
    let bad = ["x", "1:-5", ":", "", "1e400:1", "nan:nan"];
    for (i, v) in bad.iter().enumerate() {
        fields[i] = (fields[i].0.clone(), v.to_string());
    }
    fields[10].1 = format!("{}:1000000", now_sec + 3_600);
    // this second's and the last one's buckets, with counts no promotion writes
    fields[(now_sec % 60) as usize].1 = format!("{now_sec}:nan");
    fields[((now_sec - 1) % 60) as usize].1 = format!("{}:1e300", now_sec - 1);
    let _: () = pool.hset(rate, fields).await.unwrap();

    // nothing in the window counts: null, not a number made of garbage
    for id in &tickets {
        assert_eq!(estimate(&ticket(&app, id).await), Some(None));
    }

    // one promotion: it overwrites its own second's stale bucket, no more
    assert_eq!(
        app.action(&holds[0], "release").await.status,
        StatusCode::OK
    );
    assert!(
        eventually(Duration::from_secs(20), || async {
            app.sku("junk").await["waitlist"] == 2
        })
        .await
    );
    let len: i64 = pool.hlen(rate).await.unwrap();
    assert_eq!(len, 60, "the rate keeps one field per second of the window");
    let ttl: i64 = pool.pttl(rate).await.unwrap();
    assert!(
        ttl > 0 && ttl <= 120_000,
        "an idle SKU's rate expires: pttl {ttl}"
    );
    // 1 promoted in the last second: the next ticket waits about a second
    let t = ticket(&app, &tickets[1]).await;
    assert_eq!(t["position"], 1);
    let e = estimate(&t).unwrap().expect("one promotion was seen");
    assert!((1..=60).contains(&e), "{t}");
    let t = ticket(&app, &tickets[2]).await;
    let e2 = estimate(&t).unwrap().expect("one promotion was seen");
    assert!((e..=120).contains(&e2), "{t}");

    // a rate key of another type (a hand-made edit) breaks neither the
    // answer nor the next promotion: the estimate is just unknown
    let _: () = pool
        .set(rate, "not a hash", None, None, false)
        .await
        .unwrap();
    assert_eq!(estimate(&ticket(&app, &tickets[2]).await), Some(None));
    let first = ticket(&app, &tickets[0]).await;
    let rid = first["reservation_id"].as_str().expect("promoted");
    assert_eq!(app.action(rid, "release").await.status, StatusCode::OK);
    assert!(
        eventually(Duration::from_secs(20), || async {
            app.sku("junk").await["waitlist"] == 1
        })
        .await
    );
    assert_eq!(ticket(&app, &tickets[1]).await["status"], "promoted");
    assert_eq!(estimate(&ticket(&app, &tickets[2]).await), Some(None));
}
