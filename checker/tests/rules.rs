//! Hand-written histories, each breaking one of flashgate's promises: the
//! checker rejects each with the right rule and names the first line that
//! broke it; a valid history passes; an unresolved unknown is flagged.

mod support;

use flashgate_checker::Status;
use serde_json::{json, Value};
use support::*;

/// Two buyers, one sold and one released; the base of most tests below.
fn sale() -> Run {
    let mut r = Run::default();
    r.op(
        1,
        "reserve",
        reserve_value("k1", "u1", 1),
        "ok",
        Some(201),
        hold("S1.0.a", "u1", 1, "held", 60_000),
    );
    r.op(
        1,
        "confirm",
        rid_value("S1.0.a"),
        "ok",
        Some(200),
        hold("S1.0.a", "u1", 1, "confirmed", 60_000),
    );
    r.op(
        2,
        "reserve",
        reserve_value("k2", "u2", 1),
        "ok",
        Some(201),
        hold("S1.1.b", "u2", 1, "held", 60_000),
    );
    r.op(
        2,
        "release",
        rid_value("S1.1.b"),
        "ok",
        Some(200),
        hold("S1.1.b", "u2", 1, "released", 60_000),
    );
    r.op(
        1,
        "get_reservation",
        json!({"reservation_id": "S1.0.a", "instance": 0, "phase": "resolve"}),
        "ok",
        Some(200),
        hold("S1.0.a", "u1", 1, "confirmed", 60_000),
    );
    r
}

#[test]
fn a_valid_sale_is_accepted() {
    all_ok(&sale().check(&final_json(2, 1, &["S1.0.a"])));
}

#[test]
fn oversell_is_caught_at_the_hold_that_exceeds_the_stock() {
    let mut r = Run::default();
    r.op(
        1,
        "reserve",
        reserve_value("k1", "u1", 1),
        "ok",
        Some(201),
        hold("S1.0.a", "u1", 1, "held", 60_000),
    );
    r.op(
        1,
        "extend",
        rid_value("S1.0.a"),
        "ok",
        Some(200),
        hold("S1.0.a", "u1", 1, "held", 90_000),
    );
    let over = r.op(
        2,
        "reserve",
        reserve_value("k2", "u2", 1),
        "ok",
        Some(201),
        hold("S1.1.b", "u2", 1, "held", 60_000),
    );
    let (rule, first, msg) = broken(&r.check(&final_json(1, 0, &[])));
    assert_eq!(rule, "no_oversell");
    assert_eq!(first, Some(over as u64));
    assert!(
        msg.contains("S1.1.b") && msg.contains("S1.0.a") && msg.contains("stock 1"),
        "{msg}"
    );
}

#[test]
fn a_released_or_expired_hold_frees_its_units() {
    // released before the second hold
    let mut r = Run::default();
    r.op(
        1,
        "reserve",
        reserve_value("k1", "u1", 1),
        "ok",
        Some(201),
        hold("S1.0.a", "u1", 1, "held", 60_000),
    );
    r.op(
        1,
        "release",
        rid_value("S1.0.a"),
        "ok",
        Some(200),
        hold("S1.0.a", "u1", 1, "released", 60_000),
    );
    r.op(
        2,
        "reserve",
        reserve_value("k2", "u2", 1),
        "ok",
        Some(201),
        hold("S1.1.b", "u2", 1, "held", 60_000),
    );
    all_ok(&r.check(&final_json(1, 0, &[])));
    // a release with an unknown outcome may have freed it too
    let mut r = Run::default();
    r.op(
        1,
        "reserve",
        reserve_value("k1", "u1", 1),
        "ok",
        Some(201),
        hold("S1.0.a", "u1", 1, "held", 60_000),
    );
    r.op(
        1,
        "get_reservation",
        rid_value("S1.0.a"),
        "ok",
        Some(200),
        hold("S1.0.a", "u1", 1, "held", 60_000),
    );
    r.op(
        1,
        "release",
        rid_value("S1.0.a"),
        "info",
        Some(503),
        error("redis_unavailable"),
    );
    r.op(
        2,
        "reserve",
        reserve_value("k2", "u2", 1),
        "ok",
        Some(201),
        hold("S1.1.b", "u2", 1, "held", 60_000),
    );
    all_ok(&r.check(&final_json(1, 0, &[])));
    // expired (expires_at 30 ms after the start) before the second hold
    let mut r = Run::default();
    r.op(
        1,
        "reserve",
        reserve_value("k1", "u1", 1),
        "ok",
        Some(201),
        hold("S1.0.a", "u1", 1, "held", 30),
    );
    r.now += 1_000.0;
    r.op(
        2,
        "reserve",
        reserve_value("k2", "u2", 1),
        "ok",
        Some(201),
        hold("S1.1.b", "u2", 1, "held", 60_000),
    );
    all_ok(&r.check(&final_json(1, 0, &[])));
}

#[test]
fn a_replay_is_not_a_proof_that_the_hold_still_stands() {
    // a replay answers the first body ("held", the first expires_at) even
    // after the hold was released
    let mut r = Run::default();
    r.op(
        1,
        "reserve",
        reserve_value("k1", "u1", 1),
        "ok",
        Some(201),
        hold("S1.0.a", "u1", 1, "held", 60_000),
    );
    r.op(
        1,
        "release",
        rid_value("S1.0.a"),
        "ok",
        Some(200),
        hold("S1.0.a", "u1", 1, "released", 60_000),
    );
    r.op(
        2,
        "reserve",
        reserve_value("k2", "u2", 1),
        "ok",
        Some(201),
        hold("S1.1.b", "u2", 1, "held", 60_000),
    );
    r.op(
        1,
        "reserve",
        reserve_value("k1", "u1", 1),
        "ok",
        Some(200),
        hold("S1.0.a", "u1", 1, "held", 60_000),
    );
    all_ok(&r.check(&final_json(1, 0, &[])));
}

#[test]
fn without_a_clock_anchor_sales_still_count() {
    let mut r = Run::default();
    r.op(
        1,
        "reserve",
        reserve_value("k1", "u1", 1),
        "ok",
        Some(201),
        hold("S1.0.a", "u1", 1, "held", 60_000),
    );
    r.op(
        1,
        "confirm",
        rid_value("S1.0.a"),
        "ok",
        Some(200),
        hold("S1.0.a", "u1", 1, "confirmed", 60_000),
    );
    let over = r.op(
        2,
        "reserve",
        reserve_value("k2", "u2", 1),
        "ok",
        Some(201),
        hold("S1.1.b", "u2", 1, "held", 60_000),
    );
    r.op(
        2,
        "confirm",
        rid_value("S1.1.b"),
        "ok",
        Some(200),
        hold("S1.1.b", "u2", 1, "confirmed", 60_000),
    );
    let mut fin = final_json(1, 1, &["S1.0.a", "S1.1.b"]);
    fin["started_at_unix_ms"] = Value::Null;
    let v = r.check(&fin);
    let o = v.rule("no_oversell").unwrap();
    assert_eq!(o.status, Status::Broken, "{o:?}");
    assert_eq!(o.first.as_ref().map(|c| c.index), Some(over as u64));
}

#[test]
fn one_key_answering_two_reservations_is_caught_at_the_second_answer() {
    let mut r = sale();
    let second = r.op(
        3,
        "reserve",
        reserve_value("k1", "u1", 1),
        "ok",
        Some(200),
        hold("S1.1.z", "u1", 1, "held", 60_000),
    );
    let (rule, first, msg) = broken(&r.check(&final_json(2, 1, &["S1.0.a"])));
    assert_eq!(rule, "idempotency");
    assert_eq!(first, Some(second as u64));
    assert!(
        msg.contains("\"k1\"") && msg.contains("S1.0.a") && msg.contains("S1.1.z"),
        "{msg}"
    );
}

#[test]
fn a_replay_answering_another_body_is_caught() {
    let mut r = sale();
    // same reservation, another qty: not the first body
    let replay = r.op(
        3,
        "reserve",
        reserve_value("k2", "u2", 1),
        "ok",
        Some(200),
        hold("S1.1.b", "u2", 2, "held", 60_000),
    );
    let (rule, first, _) = broken(&r.check(&final_json(2, 1, &["S1.0.a"])));
    assert_eq!(rule, "idempotency");
    assert_eq!(first, Some(replay as u64));
    // the same key in another storefront is another key
    let mut r = sale();
    let mut other = reserve_value("k2", "u2", 1);
    other["storefront"] = json!("sf2");
    r.op(
        3,
        "reserve",
        other,
        "ok",
        Some(201),
        hold("S1.0.c", "u2", 1, "held", 60_000),
    );
    all_ok(&r.check(&final_json(3, 1, &["S1.0.a"])));
}

#[test]
fn a_lost_confirm_is_caught_at_the_acknowledged_confirm() {
    let mut r = Run::default();
    r.op(
        1,
        "reserve",
        reserve_value("k1", "u1", 1),
        "ok",
        Some(201),
        hold("S1.0.a", "u1", 1, "held", 60_000),
    );
    r.nemesis("start", "redis-kill");
    let confirm = r.op(
        1,
        "confirm",
        rid_value("S1.0.a"),
        "ok",
        Some(200),
        hold("S1.0.a", "u1", 1, "confirmed", 60_000),
    );
    r.nemesis("stop", "redis-kill");
    r.op(
        1,
        "get_reservation",
        json!({"reservation_id": "S1.0.a", "instance": 0, "phase": "resolve"}),
        "fail",
        Some(404),
        error("reservation_not_found"),
    );
    let fin = final_json(2, 0, &[]);
    let (rule, first, msg) = broken(&r.check(&fin));
    assert_eq!(rule, "confirm_durable");
    assert_eq!(first, Some(confirm as u64));
    assert!(
        msg.contains("S1.0.a")
            && msg.contains("404 reservation_not_found")
            && msg.contains("ledger_confirmed"),
        "{msg}"
    );

    // reported by reconcile and repaired: the README's promise holds
    let mut fixed = fin.clone();
    fixed["reconcile_before"] = json!({"verdict": "drift", "skus": [{"sku": "S1", "per_shard": [
        {"shard": 0, "records": [{"rid": "S1.0.a", "qty": 1, "ledger": "none", "redis": "absent",
                                  "finding": "hold_lost", "repair": "…"}]}]}]});
    fixed["reconcile_after"] = json!({"verdict": "clean", "skus": []});
    assert_eq!(
        r.check(&fixed).rule("confirm_durable").unwrap().status,
        Status::Ok
    );
    // reported, but drift is left after the fix: still lost
    fixed["reconcile_after"] = json!({"verdict": "drift", "skus": []});
    assert_eq!(
        r.check(&fixed).rule("confirm_durable").unwrap().status,
        Status::Broken
    );
    // a loss the harness declared allowed
    let mut allowed = fin;
    allowed["expected_loss"] = json!(["S1.0.a"]);
    assert_eq!(
        r.check(&allowed).rule("confirm_durable").unwrap().status,
        Status::Ok
    );
}

#[test]
fn a_confirm_lost_in_one_resolve_read_is_caught_even_if_a_later_read_finds_it() {
    let mut r = sale();
    let resolve = json!({"reservation_id": "S1.0.a", "instance": 0, "phase": "resolve"});
    let gone = r.op(
        3,
        "get_reservation",
        resolve.clone(),
        "fail",
        Some(404),
        error("reservation_not_found"),
    );
    r.op(
        3,
        "get_reservation",
        resolve.clone(),
        "info",
        Some(503),
        error("redis_unavailable"),
    );
    r.op(
        3,
        "get_reservation",
        resolve,
        "ok",
        Some(200),
        hold("S1.0.a", "u1", 1, "confirmed", 60_000),
    );
    let (rule, first, msg) = broken(&r.check(&final_json(2, 1, &["S1.0.a"])));
    assert_eq!((rule, first), ("confirm_durable", Some(3)));
    assert!(
        msg.contains(&format!(
            "resolve GET (index {gone}) reads 404 reservation_not_found"
        )),
        "{msg}"
    );
}

#[test]
fn a_confirm_missing_from_the_ledger_is_caught() {
    let (rule, first, msg) = broken(&sale().check(&final_json(2, 1, &[])));
    assert_eq!(rule, "confirm_durable");
    assert_eq!(first, Some(3), "the confirm's ok line");
    assert!(msg.contains("not in ledger_confirmed"), "{msg}");
}

#[test]
fn units_that_do_not_add_up_are_caught_in_the_final_books() {
    let mut fin = final_json(2, 1, &["S1.0.a"]);
    fin["skus"]["S1"]["admin"]["available"] = json!(2);
    let (rule, first, msg) = broken(&sale().check(&fin));
    assert_eq!((rule, first), ("books", None));
    assert!(
        msg.contains("SKU S1 (admin doc)") && msg.contains("1 units created"),
        "{msg}"
    );

    // a unit in transit between shards is in neither doc's available
    let mut fin = final_json(2, 1, &["S1.0.a"]);
    fin["skus"]["S1"]["admin"]["available"] = json!(0);
    fin["skus"]["S1"]["public"]["available"] = json!(0);
    fin["skus"]["S1"]["admin"]["in_transit"] = json!(1);
    all_ok(&sale().check(&fin));
    fin["skus"]["S1"]["admin"]["in_transit"] = json!(0);
    let (rule, _, msg) = broken(&sale().check(&fin));
    assert_eq!(rule, "books");
    assert!(msg.contains("1 units missing"), "{msg}");

    let mut fin = final_json(2, 1, &["S1.0.a"]);
    fin["skus"]["S1"]["ledger_sold"] = json!(2);
    let (rule, _, msg) = broken(&sale().check(&fin));
    assert_eq!(rule, "books");
    assert!(msg.contains("sold 1 but the ledger has 2"), "{msg}");
}

fn ticket(tid: &str, user: &str, status: &str, rid: Option<&str>, expires_ms: u64) -> Value {
    let mut t = json!({"ticket_id": tid, "sku": "S1", "qty": 1, "user_id": user, "status": status});
    match rid {
        Some(rid) => {
            t["reservation_id"] = json!(rid);
            t["expires_at"] = json!(at(expires_ms));
        }
        None => t["position"] = json!(1),
    }
    t
}

fn join(r: &mut Run, p: i64, key: &str, user: &str, tid: &str) -> usize {
    let mut v = reserve_value(key, user, 1);
    v["waitlist"] = json!(true);
    r.op(
        p,
        "reserve",
        v,
        "ok",
        Some(202),
        ticket(tid, user, "waiting", None, 0),
    )
}

fn get_ticket(r: &mut Run, p: i64, body: Value) -> usize {
    let tid = body["ticket_id"].clone();
    r.op(
        p,
        "get_ticket",
        json!({"ticket_id": tid, "instance": 0}),
        "ok",
        Some(200),
        body,
    )
}

fn promotions(list: &[(&str, i64, &str)]) -> Value {
    list.iter()
        .map(
            |(t, seq, rid)| json!({"ticket_id": t, "sku": "S1", "seq": seq, "reservation_id": rid}),
        )
        .collect()
}

#[test]
fn a_later_ticket_promoted_while_an_earlier_one_waits_is_caught() {
    let mut r = Run::default();
    join(&mut r, 1, "k1", "u1", "S1.w.t1");
    join(&mut r, 2, "k2", "u2", "S1.w.t2");
    get_ticket(
        &mut r,
        2,
        ticket("S1.w.t2", "u2", "promoted", Some("S1.0.b"), 60_000),
    );
    let waiting = get_ticket(&mut r, 1, ticket("S1.w.t1", "u1", "waiting", None, 0));
    let mut fin = final_json(1, 0, &[]);
    fin["waitlist_promotions"] = promotions(&[("S1.w.t2", 2, "S1.0.b")]);
    let (rule, first, msg) = broken(&r.check(&fin));
    assert_eq!(rule, "waitlist");
    assert_eq!(first, Some(waiting as u64));
    assert!(
        msg.contains("S1.w.t1 is still waiting") && msg.contains("S1.w.t2"),
        "{msg}"
    );
}

#[test]
fn promotions_out_of_seq_order_are_caught_from_the_hold_deadlines() {
    let mut r = Run::default();
    get_ticket(
        &mut r,
        1,
        ticket("S1.w.t1", "u1", "promoted", Some("S1.0.a"), 61_000),
    );
    let second = get_ticket(
        &mut r,
        2,
        ticket("S1.w.t2", "u2", "promoted", Some("S1.0.b"), 60_000),
    );
    let mut fin = final_json(2, 0, &[]);
    fin["waitlist_promotions"] = promotions(&[("S1.w.t1", 1, "S1.0.a"), ("S1.w.t2", 2, "S1.0.b")]);
    let (rule, first, msg) = broken(&r.check(&fin));
    assert_eq!(rule, "waitlist");
    assert_eq!(first, Some(second as u64));
    assert!(
        msg.contains("S1.w.t2 (seq 2) was promoted before S1.w.t1 (seq 1)"),
        "{msg}"
    );
    // in order: fine
    fin["waitlist_promotions"] = promotions(&[("S1.w.t1", 2, "S1.0.a"), ("S1.w.t2", 1, "S1.0.b")]);
    all_ok(&r.check(&fin));
}

#[test]
fn a_ticket_promoted_twice_is_caught() {
    let mut r = Run::default();
    get_ticket(
        &mut r,
        1,
        ticket("S1.w.t1", "u1", "promoted", Some("S1.0.a"), 60_000),
    );
    let twice = get_ticket(
        &mut r,
        1,
        ticket("S1.w.t1", "u1", "promoted", Some("S1.1.c"), 60_000),
    );
    let mut fin = final_json(2, 0, &[]);
    fin["waitlist_promotions"] = promotions(&[("S1.w.t1", 1, "S1.0.a")]);
    let (rule, first, msg) = broken(&r.check(&fin));
    assert_eq!((rule, first), ("waitlist", Some(twice as u64)));
    assert!(
        msg.contains("promoted twice") && msg.contains("S1.1.c"),
        "{msg}"
    );
    // only the final state shows the second id
    let mut r = Run::default();
    get_ticket(
        &mut r,
        1,
        ticket("S1.w.t1", "u1", "promoted", Some("S1.0.a"), 60_000),
    );
    fin["waitlist_promotions"] = promotions(&[("S1.w.t1", 1, "S1.0.a"), ("S1.w.t1", 1, "S1.1.c")]);
    let (rule, first, _) = broken(&r.check(&fin));
    assert_eq!((rule, first), ("waitlist", None));
}

#[test]
fn an_unresolved_unknown_reserve_is_flagged() {
    let mut r = sale();
    let unknown = r.op(
        3,
        "reserve",
        reserve_value("k3", "u3", 1),
        "info",
        None,
        Value::Null,
    );
    // a later answer for another key resolves nothing
    r.op(
        4,
        "reserve",
        reserve_value("k4", "u4", 1),
        "fail",
        Some(409),
        error("sold_out"),
    );
    let (rule, first, msg) = broken(&r.check(&final_json(2, 1, &["S1.0.a"])));
    assert_eq!((rule, first), ("info_resolved", Some(unknown as u64)));
    assert!(msg.contains("\"k3\"") && msg.contains("timeout"), "{msg}");
    // an answer for the key before the info settles nothing
    let mut early = sale();
    let retry = early.op(
        1,
        "reserve",
        reserve_value("k1", "u1", 1),
        "info",
        Some(503),
        error("redis_unavailable"),
    );
    let (rule, first, _) = broken(&early.check(&final_json(2, 1, &["S1.0.a"])));
    assert_eq!((rule, first), ("info_resolved", Some(retry as u64)));
    // the resolve phase's retry with the key settles it
    let mut v = reserve_value("k3", "u3", 1);
    v["phase"] = json!("resolve");
    r.op(3, "reserve", v, "fail", Some(409), error("sold_out"));
    all_ok(&r.check(&final_json(2, 1, &["S1.0.a"])));
}

#[test]
fn an_op_the_history_never_completed_counts_as_unknown() {
    let mut r = sale();
    let open = r.invoke(3, "reserve", reserve_value("k3", "u3", 1));
    let (rule, first, msg) = broken(&r.check(&final_json(2, 1, &["S1.0.a"])));
    assert_eq!((rule, first), ("info_resolved", Some(open as u64)));
    assert!(msg.contains("never completed"), "{msg}");
}

#[test]
fn missing_final_fields_make_rules_not_checked_not_broken() {
    let fin = json!({"skus": null, "reconcile_before": null, "reconcile_fix": null,
                     "reconcile_after": null, "ledger_confirmed": null,
                     "waitlist_promotions": null, "expected_loss": null});
    let v = sale().check(&fin);
    assert!(v.valid, "{:#?}", v.rules);
    for rule in ["no_oversell", "confirm_durable", "books"] {
        let r = v.rule(rule).unwrap();
        assert_eq!(r.status, Status::NotChecked, "{r:?}");
        assert!(!r.message.is_empty());
    }
}

#[test]
fn a_malformed_history_is_refused() {
    let mut r = Run::default();
    r.complete(
        1,
        "ok",
        "reserve",
        reserve_value("k1", "u1", 1),
        Some(201),
        Value::Null,
    );
    let e = flashgate_checker::History::parse(&r.jsonl()).unwrap_err();
    assert!(e.to_string().contains("no open invoke"), "{e}");
    let e = flashgate_checker::History::parse("{\"index\": 3}\n").unwrap_err();
    assert_eq!(e.line, 1);
}
