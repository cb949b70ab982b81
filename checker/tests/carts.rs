//! Hand-written histories with carts (docs/carts.md), each breaking one of
//! the cart promises: the checker rejects each with the right rule and the
//! line that broke it; near misses pass.

mod support;

use flashgate_checker::Status;
use serde_json::{json, Value};
use support::*;

/// final.json with S1 and S2 (`initial`, `sold` each), the given confirmed
/// reservations and `carts`.
fn fin(s1: (i64, i64), s2: (i64, i64), confirmed: &[&str], carts: Value) -> Value {
    let mut f = final_json(s1.0, s1.1, confirmed);
    let books = json!({"sku": "S2", "available": s2.0 - s2.1, "held": 0, "sold": s2.1,
                       "shards": 2, "waitlist": 0});
    f["skus"]["S2"] =
        json!({"initial": s2.0, "admin": books.clone(), "public": books, "ledger_sold": s2.1});
    f["carts"] = carts;
    f
}

const C1: &str = "c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1";
const C2: &str = "c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2";

/// Cart C1 (S1 x1, S2 x2) held then confirmed; cart C2 (S1 x1) held then
/// released. Returns the run and the lines of C1's and C2's 201.
fn carts() -> (Run, usize, usize) {
    let mut r = Run::default();
    let c1_lines = [("S1", 1, Some("S1.0.a")), ("S2", 2, Some("S2.1.b"))];
    let made = r.op(
        1,
        "create_cart",
        cart_value("ck1", "u1", &[("S1", 1), ("S2", 2)]),
        "ok",
        Some(201),
        cart(C1, "u1", "held", &c1_lines, 60_000),
    );
    r.op(
        1,
        "confirm_cart",
        cart_id_value(C1),
        "ok",
        Some(200),
        cart(C1, "u1", "confirmed", &c1_lines, 60_000),
    );
    let c2_lines = [("S1", 1, Some("S1.1.c"))];
    let made2 = r.op(
        2,
        "create_cart",
        cart_value("ck2", "u2", &[("S1", 1)]),
        "ok",
        Some(201),
        cart(C2, "u2", "held", &c2_lines, 60_000),
    );
    r.op(
        2,
        "release_cart",
        cart_id_value(C2),
        "ok",
        Some(200),
        cart(C2, "u2", "released", &c2_lines, 60_000),
    );
    (r, made, made2)
}

fn final_carts() -> Value {
    json!({
        C1: final_cart("confirmed", &[("S1.0.a", Some("confirmed")), ("S2.1.b", Some("confirmed"))]),
        C2: final_cart("released", &[("S1.1.c", Some("released"))]),
    })
}

#[test]
fn whole_carts_are_accepted() {
    let (r, _, _) = carts();
    all_ok(&r.check(&fin((2, 1), (2, 2), &["S1.0.a", "S2.1.b"], final_carts())));
}

#[test]
fn a_partial_cart_at_the_end_is_caught_at_its_acknowledgement() {
    let (r, made, _) = carts();
    // one line sold, the other never confirmed (it expired)
    let mut carts = final_carts();
    carts[C1] = final_cart(
        "confirmed",
        &[("S1.0.a", Some("confirmed")), ("S2.1.b", Some("expired"))],
    );
    let (rule, first, msg) = broken(&r.check(&fin((2, 1), (2, 0), &["S1.0.a"], carts.clone())));
    assert_eq!((rule, first), ("cart_whole", Some(made as u64)));
    assert!(msg.contains(C1) && msg.contains("partial"), "{msg}");
    // a line a fault was allowed to lose is excused
    let mut f = fin((2, 1), (2, 0), &["S1.0.a"], carts);
    f["expected_loss"] = json!(["S2.1.b"]);
    all_ok(&r.check(&f));
}

#[test]
fn a_given_back_cart_that_still_holds_a_line_is_caught() {
    let (r, _, made2) = carts();
    let mut carts = final_carts();
    // C2 released, its only line still held: the status and the line disagree
    carts[C2] = final_cart("released", &[("S1.1.c", Some("held"))]);
    let (rule, first, msg) =
        broken(&r.check(&fin((2, 1), (2, 2), &["S1.0.a", "S2.1.b"], carts.clone())));
    // the first line that acknowledged C2 is its 201
    assert_eq!((rule, first), ("cart_whole", Some(made2 as u64)));
    assert!(msg.contains(C2) && msg.contains("disagrees"), "{msg}");
    // a line read 404 at the end holds nothing
    carts[C2] = final_cart("released", &[("S1.1.c", None)]);
    all_ok(&r.check(&fin((2, 1), (2, 2), &["S1.0.a", "S2.1.b"], carts)));
}

#[test]
fn a_201_cart_without_every_line_held_is_caught() {
    let mut r = Run::default();
    let made = r.op(
        1,
        "create_cart",
        cart_value("ck1", "u1", &[("S1", 1), ("S2", 2)]),
        "ok",
        Some(201),
        cart(
            C1,
            "u1",
            "held",
            &[("S1", 1, Some("S1.0.a")), ("S2", 2, None)],
            60_000,
        ),
    );
    let (rule, first, msg) = broken(&r.check(&fin((2, 0), (2, 0), &[], json!({}))));
    assert_eq!((rule, first), ("cart_whole", Some(made as u64)));
    assert!(msg.contains("1 of 2 lines"), "{msg}");
    // a 201 that drops a requested line
    let mut r = Run::default();
    let made = r.op(
        1,
        "create_cart",
        cart_value("ck1", "u1", &[("S1", 1), ("S2", 2)]),
        "ok",
        Some(201),
        cart(C1, "u1", "held", &[("S1", 1, Some("S1.0.a"))], 60_000),
    );
    let (rule, first, _) = broken(&r.check(&fin((2, 0), (2, 0), &[], json!({}))));
    assert_eq!((rule, first), ("cart_whole", Some(made as u64)));
}

#[test]
fn a_cart_key_answering_another_cart_is_caught() {
    let (mut r, _, _) = carts();
    // a replay showing the cart as it is now (confirmed) repeats it
    r.op(
        1,
        "create_cart",
        cart_value("ck1", "u1", &[("S1", 1), ("S2", 2)]),
        "ok",
        Some(200),
        cart(
            C1,
            "u1",
            "confirmed",
            &[("S1", 1, Some("S1.0.a")), ("S2", 2, Some("S2.1.b"))],
            60_000,
        ),
    );
    // the same key in another storefront is another key
    let mut other = cart_value("ck1", "u9", &[("S1", 1)]);
    other["storefront"] = json!("sf2");
    r.op(
        9,
        "create_cart",
        other,
        "fail",
        Some(409),
        error("sold_out"),
    );
    let f = fin((2, 1), (2, 2), &["S1.0.a", "S2.1.b"], final_carts());
    all_ok(&r.check(&f));
    // a replay that names another line hold
    let mut bad = Run {
        lines: r.lines.clone(),
        now: r.now,
    };
    let wrong = bad.op(
        1,
        "create_cart",
        cart_value("ck1", "u1", &[("S1", 1), ("S2", 2)]),
        "ok",
        Some(200),
        cart(
            C1,
            "u1",
            "confirmed",
            &[("S1", 1, Some("S1.0.a")), ("S2", 2, Some("S2.0.z"))],
            60_000,
        ),
    );
    let (rule, first, msg) = broken(&bad.check(&f));
    assert_eq!((rule, first), ("cart_replay", Some(wrong as u64)));
    assert!(msg.contains("S2.0.z") && msg.contains("\"ck1\""), "{msg}");
    // a refusal after the cart was made
    let mut bad = Run {
        lines: r.lines.clone(),
        now: r.now,
    };
    let refused = bad.op(
        2,
        "create_cart",
        cart_value("ck2", "u2", &[("S1", 1)]),
        "fail",
        Some(409),
        error("sold_out"),
    );
    let (rule, first, _) = broken(&bad.check(&f));
    assert_eq!((rule, first), ("cart_replay", Some(refused as u64)));
}

#[test]
fn a_refused_cart_key_that_later_makes_a_cart_is_caught() {
    let mut r = Run::default();
    r.op(
        1,
        "create_cart",
        cart_value("ck1", "u1", &[("S1", 1)]),
        "fail",
        Some(409),
        error("sold_out"),
    );
    // a 422 or a 503 decides nothing
    r.op(
        1,
        "create_cart",
        cart_value("ck1", "u1", &[("S1", 1)]),
        "info",
        Some(503),
        error("redis_unavailable"),
    );
    r.op(
        1,
        "create_cart",
        cart_value("ck1", "u1", &[("S1", 1)]),
        "fail",
        Some(409),
        error("sold_out"),
    );
    all_ok(&r.check(&fin((2, 0), (2, 0), &[], json!({}))));
    let made = r.op(
        1,
        "create_cart",
        cart_value("ck1", "u1", &[("S1", 1)]),
        "ok",
        Some(201),
        cart(C1, "u1", "held", &[("S1", 1, Some("S1.0.a"))], 60_000),
    );
    let carts = json!({C1: final_cart("expired", &[("S1.0.a", Some("expired"))])});
    let (rule, first, msg) = broken(&r.check(&fin((2, 0), (2, 0), &[], carts)));
    assert_eq!((rule, first), ("cart_replay", Some(made as u64)));
    assert!(msg.contains("409 sold_out"), "{msg}");
}

#[test]
fn cart_units_count_in_the_no_oversell_bound() {
    // one S1 unit held alone, then a cart holding S1 x2 with stock 2
    let mut r = Run::default();
    r.op(
        1,
        "reserve",
        reserve_value("k1", "u1", 1),
        "ok",
        Some(201),
        hold("S1.0.a", "u1", 1, "held", 60_000),
    );
    let over = r.op(
        2,
        "create_cart",
        cart_value("ck2", "u2", &[("S1", 2), ("S2", 1)]),
        "ok",
        Some(201),
        cart(
            C2,
            "u2",
            "held",
            &[("S1", 2, Some("S1.1.c")), ("S2", 1, Some("S2.0.d"))],
            60_000,
        ),
    );
    let carts = json!({C2: final_cart("expired", &[("S1.1.c", Some("expired")), ("S2.0.d", Some("expired"))])});
    let (rule, first, msg) = broken(&r.check(&fin((2, 0), (2, 0), &[], carts.clone())));
    assert_eq!((rule, first), ("no_oversell", Some(over as u64)));
    assert!(msg.contains("S1.1.c") && msg.contains("S1.0.a"), "{msg}");
    // the same cart after the hold was released fits
    let mut ok = Run::default();
    ok.op(
        1,
        "reserve",
        reserve_value("k1", "u1", 1),
        "ok",
        Some(201),
        hold("S1.0.a", "u1", 1, "held", 60_000),
    );
    ok.op(
        1,
        "release",
        rid_value("S1.0.a"),
        "ok",
        Some(200),
        hold("S1.0.a", "u1", 1, "released", 60_000),
    );
    ok.op(
        2,
        "create_cart",
        cart_value("ck2", "u2", &[("S1", 2), ("S2", 1)]),
        "ok",
        Some(201),
        cart(
            C2,
            "u2",
            "held",
            &[("S1", 2, Some("S1.1.c")), ("S2", 1, Some("S2.0.d"))],
            60_000,
        ),
    );
    all_ok(&ok.check(&fin((2, 0), (2, 0), &[], carts.clone())));
    // a cart released (by its cart id) frees every line for the next hold
    ok.op(
        2,
        "release_cart",
        cart_id_value(C2),
        "info",
        None,
        Value::Null,
    );
    ok.op(
        3,
        "reserve",
        reserve_value("k3", "u3", 2),
        "ok",
        Some(201),
        hold("S1.0.e", "u3", 2, "held", 60_000),
    );
    all_ok(&ok.check(&fin((2, 0), (2, 0), &[], carts)));
}

#[test]
fn an_unknown_cart_create_must_be_resolved_with_its_key() {
    let (mut r, _, _) = carts();
    let unknown = r.op(
        3,
        "create_cart",
        cart_value("ck3", "u3", &[("S1", 1)]),
        "info",
        None,
        Value::Null,
    );
    let f = fin((2, 1), (2, 2), &["S1.0.a", "S2.1.b"], final_carts());
    let (rule, first, msg) = broken(&r.check(&f));
    assert_eq!((rule, first), ("info_resolved", Some(unknown as u64)));
    assert!(
        msg.contains("create_cart") && msg.contains("\"ck3\""),
        "{msg}"
    );
    let mut v = cart_value("ck3", "u3", &[("S1", 1)]);
    v["phase"] = json!("resolve");
    r.op(3, "create_cart", v, "fail", Some(409), error("sold_out"));
    all_ok(&r.check(&f));
}

#[test]
fn without_final_carts_the_end_state_is_not_checked() {
    let (r, _, _) = carts();
    let mut f = fin((2, 1), (2, 2), &["S1.0.a", "S2.1.b"], Value::Null);
    f.as_object_mut().map(|o| o.remove("carts"));
    let v = r.check(&f);
    assert!(v.valid);
    let w = v.rule("cart_whole").unwrap();
    assert_eq!(w.status, Status::NotChecked, "{w:?}");
    assert!(w.message.contains("no `carts`"), "{}", w.message);
}

#[test]
fn an_incomplete_cart_passes_only_after_a_confirm_lost_in_a_fault() {
    let lines = [("S1", 1, Some("S1.0.a")), ("S2", 1, Some("S2.1.b"))];
    let base = |fault: bool| {
        let mut r = Run::default();
        let made = r.op(
            1,
            "create_cart",
            cart_value("ck1", "u1", &[("S1", 1), ("S2", 1)]),
            "ok",
            Some(201),
            cart(C1, "u1", "held", &lines, 60_000),
        );
        if fault {
            r.nemesis("start", "cluster-failover");
        }
        r.op(
            1,
            "confirm_cart",
            cart_id_value(C1),
            "info",
            Some(503),
            error("redis_unavailable"),
        );
        if fault {
            r.nemesis("stop", "cluster-failover");
        }
        (r, made)
    };
    let carts = json!({C1: final_cart("incomplete", &[("S1.0.a", Some("confirmed")), ("S2.1.b", Some("expired"))])});
    // S1's line sold, S2's expired while its master was down: said openly
    let (r, _) = base(true);
    let v = r.check(&fin((2, 1), (2, 0), &[], carts.clone()));
    all_ok(&v);
    assert!(
        v.rule("cart_whole")
            .unwrap()
            .message
            .contains("1 shown `incomplete`"),
        "{:?}",
        v.rule("cart_whole")
    );
    // the same without a fault: a partial cart
    let (r, made) = base(false);
    let (rule, first, _) = broken(&r.check(&fin((2, 1), (2, 0), &[], carts.clone())));
    assert_eq!((rule, first), ("cart_whole", Some(made as u64)));
    // a buyer told `confirmed`, then the cart ends incomplete: never allowed
    let (mut r, made) = base(true);
    r.op(
        1,
        "confirm_cart",
        cart_id_value(C1),
        "ok",
        Some(200),
        cart(C1, "u1", "confirmed", &lines, 60_000),
    );
    let (rule, first, _) = broken(&r.check(&fin((2, 1), (2, 0), &[], carts)));
    assert_eq!((rule, first), ("cart_whole", Some(made as u64)));
}
