//! The outbox entry format (written by the Lua scripts, `lua/lib.lua`) and
//! its rows on the ledger; stream ids and reply parsing. Pure: no I/O.

use std::collections::HashMap;

use fred::types::Value;

use crate::inventory::replies::text;
use crate::inventory::InventoryError;

/// One outbox entry; `fields` is None for an entry deleted from the stream
/// while it was pending (nothing left to write).
#[derive(Clone, Debug)]
pub(super) struct Entry {
    pub(super) id: String,
    pub(super) fields: Option<HashMap<String, String>>,
}

/// One row of `ledger_events` from an outbox entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// The stream entry's id; `<id>/<i>` for the i-th hold of a batched
    /// `held` entry, so that each has its own unique `(stream, entry_id)`.
    pub entry_id: String,
    pub kind: String,
    pub rid: String,
    pub qty: i64,
    pub user: String,
    /// Milliseconds, the Redis server's clock.
    pub ts: i64,
}

/// The events of one outbox entry (`fields`: its field/value pairs). Every
/// script writes one event per entry — `type`, `rid`, `qty`, `user`, `ts` —
/// except `reserve.lua`, which writes the holds of one call as one `held`
/// entry whose `holds` field has a line `rid|qty|user` per hold (the user
/// last: it may contain `|`, never a line break).
pub fn events_of(entry_id: &str, fields: &HashMap<String, String>) -> Vec<Event> {
    let get = |k: &str| fields.get(k).cloned().unwrap_or_default();
    let kind = get("type");
    // the entry id's milliseconds are the server's clock too
    let ts = get("ts")
        .parse::<i64>()
        .unwrap_or_else(|_| id_ms(entry_id).unwrap_or(0));
    match fields.get("holds") {
        Some(holds) => holds
            .split('\n')
            .enumerate()
            .map(|(i, line)| {
                let mut p = line.splitn(3, '|');
                let rid = p.next().unwrap_or_default().to_owned();
                let qty = p.next().and_then(|q| q.parse().ok()).unwrap_or(0);
                let user = p.next().unwrap_or_default().to_owned();
                Event {
                    entry_id: format!("{entry_id}/{i}"),
                    kind: kind.clone(),
                    rid,
                    qty,
                    user,
                    ts,
                }
            })
            .collect(),
        None => vec![Event {
            entry_id: entry_id.to_owned(),
            kind,
            rid: get("rid"),
            qty: get("qty").parse::<i64>().unwrap_or(0),
            user: get("user"),
            ts,
        }],
    }
}

/// One row of `cart_events` from a cart outbox entry (`lua/lib.lua`
/// `cart_emit`: the cart as one status change left it).
#[derive(Clone, Debug, PartialEq)]
pub struct CartEvent {
    pub entry_id: String,
    pub cart_id: String,
    pub seq: i64,
    pub status: String,
    pub owner: String,
    pub user: String,
    /// `<sku>|<qty>|<reservation id or ''>`, one a line.
    pub lines: String,
    pub why: String,
    pub bad: String,
    /// Milliseconds, the Redis server's clock.
    pub ts: i64,
}

/// The row of one cart outbox entry.
pub fn cart_event_of(entry_id: &str, fields: &HashMap<String, String>) -> CartEvent {
    let get = |k: &str| fields.get(k).cloned().unwrap_or_default();
    CartEvent {
        entry_id: entry_id.to_owned(),
        cart_id: get("cart"),
        seq: get("seq").parse().unwrap_or(0),
        status: get("status"),
        owner: get("owner"),
        user: get("user"),
        lines: get("lines"),
        why: get("why"),
        bad: get("bad"),
        ts: get("ts")
            .parse::<i64>()
            .unwrap_or_else(|_| id_ms(entry_id).unwrap_or(0)),
    }
}

pub(super) fn items(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a,
        Value::Map(m) => m
            .inner()
            .into_iter()
            .flat_map(|(k, v)| [Value::from(k), v])
            .collect(),
        _ => Vec::new(),
    }
}

/// A flat `[k, v, k, v…]` array (or a map) as strings; nested values are skipped.
pub(super) fn pairs(v: Value) -> HashMap<String, String> {
    let flat = items(v);
    flat.chunks(2)
        .filter_map(|kv| match kv {
            [k, v] => Some((text(k).ok()?, text(v).ok()?)),
            _ => None,
        })
        .collect()
}

pub(super) fn parse_entries(v: Value) -> Result<Vec<Entry>, InventoryError> {
    let mut out = Vec::new();
    for e in items(v) {
        let mut parts = items(e).into_iter();
        let Some(id) = parts.next() else { continue };
        let id = text(&id)?;
        let fields = match parts.next() {
            Some(Value::Null) | None => None,
            Some(f) => Some(pairs(f)),
        };
        out.push(Entry { id, fields });
    }
    Ok(out)
}

/// A stream id `ms-seq` as numbers.
pub fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

fn id_ms(id: &str) -> Option<i64> {
    parse_id(id).and_then(|(ms, _)| i64::try_from(ms).ok())
}

/// `a < b` as stream ids (unparsable ids compare as equal: never trim on them).
pub fn id_lt(a: &str, b: &str) -> bool {
    match (parse_id(a), parse_id(b)) {
        (Some(a), Some(b)) => a < b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_order_numerically() {
        assert!(id_lt("9-0", "10-0"));
        assert!(id_lt("10-2", "10-10"));
        assert!(!id_lt("10-10", "10-2"));
        assert!(!id_lt("x", "10-2"));
        assert_eq!(parse_id("1700000000000-3"), Some((1_700_000_000_000, 3)));
    }

    #[test]
    fn a_batched_held_entry_is_a_row_per_hold_and_other_entries_one_row() {
        let f = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let held = f(&[
            ("type", "held"),
            ("ts", "1700000000123"),
            ("holds", "s.0.a|1|u-1\ns.0.b|3|name with | bar"),
        ]);
        let rows = events_of("1700000000124-0", &held);
        assert_eq!(
            rows,
            [
                Event {
                    entry_id: "1700000000124-0/0".into(),
                    kind: "held".into(),
                    rid: "s.0.a".into(),
                    qty: 1,
                    user: "u-1".into(),
                    ts: 1_700_000_000_123,
                },
                Event {
                    entry_id: "1700000000124-0/1".into(),
                    kind: "held".into(),
                    rid: "s.0.b".into(),
                    qty: 3,
                    user: "name with | bar".into(),
                    ts: 1_700_000_000_123,
                },
            ]
        );
        let confirmed = f(&[
            ("type", "confirmed"),
            ("rid", "s.0.a"),
            ("qty", "1"),
            ("user", "u-1"),
        ]);
        assert_eq!(
            events_of("1700000000999-2", &confirmed),
            [Event {
                entry_id: "1700000000999-2".into(),
                kind: "confirmed".into(),
                rid: "s.0.a".into(),
                qty: 1,
                user: "u-1".into(),
                // no ts field: the entry id's milliseconds
                ts: 1_700_000_000_999,
            }]
        );
    }
}
