//! flashgate's promises, one file per rule; each returns a [`RuleResult`].
//! docs/faults-checker.md states each rule exactly as checked.

mod books;
mod carts;
mod confirms;
mod idempotency;
mod info_resolved;
mod oversell;
mod waitlist;

use crate::final_state::Final;
use crate::history::History;
use crate::verdict::RuleResult;

pub const NO_OVERSELL: &str = "no_oversell";
pub const IDEMPOTENCY: &str = "idempotency";
pub const CONFIRM_DURABLE: &str = "confirm_durable";
pub const BOOKS: &str = "books";
pub const WAITLIST: &str = "waitlist";
pub const INFO_RESOLVED: &str = "info_resolved";
pub const CART_WHOLE: &str = "cart_whole";
pub const CART_REPLAY: &str = "cart_replay";

pub fn check_all(h: &History, fin: &Final) -> Vec<RuleResult> {
    vec![
        oversell::check(h, fin),
        idempotency::check(h),
        confirms::check(h, fin),
        books::check(fin),
        waitlist::check(h, fin),
        info_resolved::check(h),
        carts::check_whole(h, fin),
        carts::check_replay(h),
    ]
}
