//! The Lua scripts' replies, each decoded into a typed value in one place:
//! `decode_reserve` (reserve.lua), `decode_records` (records.lua),
//! `hold_reply` (confirm/release/extend), and the `array`, `text`, `int`,
//! `at` helpers every caller uses for the rest. A reply a script sends in a
//! shape it should not is a protocol error, never a panic.

use fred::types::Value;

use super::{ms_to_rfc3339, InventoryError, Reservation};
use crate::domain::ReservationId;

/// A reservation record as `records.lua` answers it (`lua/lib.lua` owns the
/// format); times in server ms, 0 when not set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRecord {
    pub status: String,
    pub qty: i64,
    pub created: i64,
    pub exp: i64,
    /// The deadline of the first answer, once `extend` moved `exp`.
    pub first_exp: Option<i64>,
    pub ended: i64,
    pub user: String,
    pub idem: String,
}

/// `records.lua`'s reply: one entry per key asked for, `None` where there is
/// no record.
pub fn decode_records(v: Value) -> Result<Vec<Option<StoredRecord>>, InventoryError> {
    let ms = |v: &Value| -> Result<i64, InventoryError> {
        let s = text(v)?;
        if s.is_empty() {
            return Ok(0);
        }
        s.parse()
            .map_err(|_| InventoryError::Protocol(format!("record: bad number {s:?}")))
    };
    array(v)?
        .into_iter()
        .map(|entry| {
            let f = match entry {
                Value::Null | Value::Boolean(false) => return Ok(None),
                other => array(other)?,
            };
            if f.len() != 8 {
                return Err(InventoryError::Protocol(format!(
                    "record: {} fields, expected 8",
                    f.len()
                )));
            }
            let first_exp = ms(&f[4])?;
            Ok(Some(StoredRecord {
                status: text(&f[0])?,
                qty: ms(&f[1])?,
                created: ms(&f[2])?,
                exp: ms(&f[3])?,
                first_exp: (first_exp != 0).then_some(first_exp),
                ended: ms(&f[5])?,
                user: text(&f[6])?,
                idem: text(&f[7])?,
            }))
        })
        .collect()
}

pub fn array(v: Value) -> Result<Vec<Value>, InventoryError> {
    match v {
        Value::Array(items) => Ok(items),
        other => Err(InventoryError::Protocol(format!(
            "expected an array, got {other:?}"
        ))),
    }
}

pub fn text(v: &Value) -> Result<String, InventoryError> {
    match v {
        Value::String(s) => Ok(s.to_string()),
        Value::Bytes(b) => Ok(String::from_utf8_lossy(b).into_owned()),
        Value::Integer(i) => Ok(i.to_string()),
        Value::Null => Ok(String::new()),
        other => Err(InventoryError::Protocol(format!(
            "expected a string, got {other:?}"
        ))),
    }
}

pub fn int(v: &Value) -> Result<i64, InventoryError> {
    match v {
        Value::Integer(i) => Ok(*i),
        Value::String(s) => s
            .parse()
            .map_err(|_| InventoryError::Protocol(format!("expected an integer, got {s:?}"))),
        Value::Bytes(b) => String::from_utf8_lossy(b)
            .parse()
            .map_err(|_| InventoryError::Protocol("expected an integer".into())),
        other => Err(InventoryError::Protocol(format!(
            "expected an integer, got {other:?}"
        ))),
    }
}

/// Item `i` of a reply array, or a protocol error.
pub fn at(items: &[Value], i: usize) -> Result<&Value, InventoryError> {
    items
        .get(i)
        .ok_or_else(|| InventoryError::Protocol(format!("reply has no item {i}")))
}

pub(super) fn status_name(s: &str) -> Result<&'static str, InventoryError> {
    Ok(match s {
        "held" => "held",
        "confirmed" => "confirmed",
        "released" => "released",
        "expired" => "expired",
        other => {
            return Err(InventoryError::Protocol(format!(
                "unknown status {other:?}"
            )))
        }
    })
}

/// Parse the `{code, status, qty, user, exp}` reply of confirm/release/extend.
pub(super) fn hold_reply(rid: &ReservationId, reply: Value) -> Result<Reservation, InventoryError> {
    let items = array(reply)?;
    let code = text(at(&items, 0)?)?;
    if code == "missing" {
        return Err(InventoryError::ReservationNotFound);
    }
    let status = status_name(&text(at(&items, 1)?)?)?;
    if code == "conflict" {
        return Err(InventoryError::ReservationState(status));
    }
    let exp = int(at(&items, 4)?)?;
    Ok(Reservation {
        reservation_id: rid.to_string(),
        sku: rid.sku().to_string(),
        qty: u32::try_from(int(at(&items, 2)?)?)
            .map_err(|_| InventoryError::Protocol("bad qty".into()))?,
        user_id: text(at(&items, 3)?)?,
        status,
        expires_at: ms_to_rfc3339(exp),
        expires_at_ms: exp,
        token: None,
    })
}

/// `reserve.lua`'s answer to one request.
#[derive(Clone, Debug, PartialEq)]
pub enum ReserveReply {
    /// A new hold, with the request's own rid, until `expires_at_ms`.
    Held { expires_at_ms: i64 },
    /// The claim made in this call found another request body (this one).
    Claimed(String),
    /// The key already holds this reservation here; `expires_at_ms` is the
    /// deadline its first answer gave (0 if the record is gone).
    Replay {
        rid: String,
        qty: String,
        user: String,
        expires_at_ms: i64,
    },
    /// The key was refused here before (walk on); the shard's units now.
    WalkOn(i64),
    /// The key was used with another request body.
    Mismatch,
    /// Too few units here (this many).
    Dry(i64),
    /// The shard has no counters.
    Unloaded,
    /// The SKU's sale window has not opened yet: this many ms left (Redis clock).
    NotOpen(i64),
    /// The SKU's sale window has closed.
    Closed,
}

/// `reserve.lua`'s flat reply (the calls' shared deadline, then one string
/// per request) as one [`ReserveReply`] per request.
pub fn decode_reserve(reply: Value) -> Result<Vec<ReserveReply>, InventoryError> {
    let bad = |what: &str| InventoryError::Protocol(format!("reserve.lua replied {what}"));
    let mut items = array(reply)?.into_iter();
    let exp = items
        .next()
        .and_then(|v| v.as_i64())
        .ok_or_else(|| bad("no deadline"))?;
    items
        .map(|v| {
            let s = v.as_str().ok_or_else(|| bad("a non-string"))?;
            let s: &str = &s;
            // the kind is the first byte, always ASCII (anything else is a
            // bad reply, never a split inside a character)
            let (kind, rest) = match s.as_bytes().first() {
                Some(&k) if k.is_ascii() => (k, &s[1..]),
                _ => return Err(bad(&format!("{s:?}"))),
            };
            let num = || rest.parse::<i64>().map_err(|_| bad(&format!("{s:?}")));
            Ok(match kind {
                b'h' => ReserveReply::Held { expires_at_ms: exp },
                b'c' => ReserveReply::Claimed(rest.to_owned()),
                b'r' => {
                    // rid|qty|expires_at|user (the user last: it may hold '|')
                    let mut p = rest.splitn(4, '|');
                    let (Some(rid), Some(qty), Some(e), Some(user)) =
                        (p.next(), p.next(), p.next(), p.next())
                    else {
                        return Err(bad(&format!("{s:?}")));
                    };
                    ReserveReply::Replay {
                        rid: rid.to_owned(),
                        qty: qty.to_owned(),
                        user: user.to_owned(),
                        expires_at_ms: e.parse().unwrap_or(0),
                    }
                }
                b'v' => ReserveReply::WalkOn(num()?),
                b'm' => ReserveReply::Mismatch,
                b'd' => ReserveReply::Dry(num()?),
                b'u' => ReserveReply::Unloaded,
                b'w' => ReserveReply::NotOpen(num()?),
                b'x' if rest.is_empty() => ReserveReply::Closed,
                _ => return Err(bad(&format!("{s:?}"))),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Value {
        Value::String(x.into())
    }

    #[test]
    fn records_decode_fields_and_refuse_malformed_replies() {
        let one = Value::Array(vec![
            s("held"),
            s("2"),
            s("100"),
            s("200"),
            s(""),
            s(""),
            s("ann|x"),
            s("k|1"),
        ]);
        let got = decode_records(Value::Array(vec![one, Value::Null])).unwrap();
        assert_eq!(
            got,
            vec![
                Some(StoredRecord {
                    status: "held".into(),
                    qty: 2,
                    created: 100,
                    exp: 200,
                    first_exp: None,
                    ended: 0,
                    user: "ann|x".into(),
                    idem: "k|1".into(),
                }),
                None
            ]
        );
        for bad in [
            s("held"),
            Value::Array(vec![Value::Array(vec![s("held"), s("2")])]),
            Value::Array(vec![Value::Array(
                ["held", "two", "1", "2", "", "", "u", "k"].map(s).to_vec(),
            )]),
        ] {
            assert!(matches!(
                decode_records(bad),
                Err(InventoryError::Protocol(_))
            ));
        }
    }

    #[test]
    fn reserve_replies_decode_one_per_request() {
        let reply = Value::Array(vec![
            Value::Integer(1_700_000_060_000),
            s("h"),
            s("csku\n1:u"),
            s("rsku.0.ab|2|1700000050000|user | with bars"),
            s("rsku.0.cd|||"),
            s("v7"),
            s("m"),
            s("d0"),
            s("u"),
            s("w1500"),
            s("x"),
        ]);
        assert_eq!(
            decode_reserve(reply).unwrap(),
            [
                ReserveReply::Held {
                    expires_at_ms: 1_700_000_060_000
                },
                ReserveReply::Claimed("sku\n1:u".into()),
                ReserveReply::Replay {
                    rid: "sku.0.ab".into(),
                    qty: "2".into(),
                    user: "user | with bars".into(),
                    expires_at_ms: 1_700_000_050_000,
                },
                // the record is gone: the id still answers
                ReserveReply::Replay {
                    rid: "sku.0.cd".into(),
                    qty: "".into(),
                    user: "".into(),
                    expires_at_ms: 0,
                },
                ReserveReply::WalkOn(7),
                ReserveReply::Mismatch,
                ReserveReply::Dry(0),
                ReserveReply::Unloaded,
                ReserveReply::NotOpen(1500),
                ReserveReply::Closed,
            ]
        );
        for bad in [
            vec![s("h")],                       // no deadline
            vec![Value::Integer(0), s("q1")],   // unknown kind
            vec![Value::Integer(0), s("x1")],   // "closed" carries nothing
            vec![Value::Integer(0), s("w")],    // "not open" carries the ms left
            vec![Value::Integer(0), s("dzz")],  // no number
            vec![Value::Integer(0), s("r1|2")], // a short replay
            vec![Value::Integer(0), s("")],
            vec![Value::Integer(0), s("éh")], // never split inside a character
        ] {
            assert!(decode_reserve(Value::Array(bad)).is_err());
        }
    }
}
