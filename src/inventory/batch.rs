//! Coalescing of concurrent requests into one script call per lane: the
//! reserves of one shard into one `reserve.lua` call, the idempotency claims
//! of one bucket into one `claim.lua` call. The script decides the requests
//! one after the other, in arrival order, and answers each.
//!
//! A request joins its lane; if no call is in flight for the lane, a drain
//! task starts and sends everything queued as one call, then whatever queued
//! meanwhile, until the lane is empty. There is no timer: an idle lane answers
//! a lone request at once, and under load a request waits at most for the
//! call in flight on its lane (one round trip, itself bounded by
//! `redis_timeout_ms`) — the batch grows with the load.
//!
//! The drain runs in its own task, so a request that is cancelled (client
//! gone, request timeout) never strands the others. A failed call fails every
//! request of the batch with the same error (503; the outcome is unknown, and
//! every request is safe to retry with its key: both scripts are idempotent
//! per key). `reserve_batch_max = 1` turns coalescing off (one call per
//! request, no lane), for comparison.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use fred::types::Value;
use tokio::sync::oneshot;

use super::keys::ShardKeys;
use super::nodes::Nodes;
use super::replies::array;
/// Decoded in `scripts.rs` with the other replies; named here too.
pub use super::replies::{decode_reserve, ReserveReply};
use super::scripts::{self, Script};
use super::InventoryError;
use crate::metrics::Metrics;

/// A script call that can carry many requests of one lane.
pub trait Batch: Send + Sync + 'static {
    type Item: Send + 'static;
    type Reply: Send + 'static;
    /// One call for `items` of `lane`: one reply per item, in order.
    fn call(
        &self,
        lane: &str,
        items: Vec<Self::Item>,
    ) -> impl Future<Output = Result<Vec<Self::Reply>, InventoryError>> + Send;
}

type Waiter<R> = oneshot::Sender<Result<R, InventoryError>>;
/// Requests waiting for a lane's next call.
type Queue<I, R> = Vec<(I, Waiter<R>)>;
/// Every lane with a drain in flight, and what queued behind it.
/// (foldhash: the lanes are shard tags and claim buckets, named by
/// flashgate, and SipHash on every submit was ≈ 190 instructions of a hold)
type Queues<B> = Mutex<
    HashMap<String, Queue<<B as Batch>::Item, <B as Batch>::Reply>, foldhash::fast::RandomState>,
>;

/// The lanes of one kind of call.
pub struct Lanes<B: Batch> {
    batch: B,
    max_batch: usize,
    /// Lanes with a drain in flight, and what queued behind it.
    queued: Queues<B>,
}

impl<B: Batch> Lanes<B> {
    pub fn new(batch: B, max_batch: usize) -> Arc<Lanes<B>> {
        Arc::new(Lanes {
            batch,
            max_batch: max_batch.max(1),
            queued: Mutex::new(HashMap::default()),
        })
    }

    /// This request's reply, from a call shared with the lane's other
    /// requests of the moment.
    pub async fn submit(
        self: &Arc<Self>,
        lane: &str,
        item: B::Item,
    ) -> Result<B::Reply, InventoryError> {
        if self.max_batch == 1 {
            // (coalescing off: boxed, as in the drain, so the common path's
            // future stays small)
            let mut replies = Box::pin(self.batch.call(lane, vec![item])).await?;
            return replies
                .pop()
                .ok_or_else(|| InventoryError::Protocol("a script answered nothing".into()));
        }
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut queued = self
                .queued
                .lock()
                .map_err(|_| InventoryError::Protocol("batch lanes poisoned".into()))?;
            match queued.get_mut(lane) {
                Some(q) => {
                    q.push((item, tx));
                    false
                }
                None => {
                    queued.insert(lane.to_owned(), vec![(item, tx)]);
                    true
                }
            }
        };
        if start {
            let me = self.clone();
            let lane = lane.to_owned();
            tokio::spawn(async move { me.drain(lane).await });
        }
        rx.await.unwrap_or_else(|_| {
            Err(InventoryError::OutcomeUnknown(
                "the batch was dropped".into(),
            ))
        })
    }

    /// Send the lane's queue as calls until it is empty, then close the lane.
    async fn drain(&self, lane: String) {
        loop {
            let taken = match self.queued.lock() {
                Ok(mut queued) => match queued.get_mut(&lane) {
                    Some(q) if !q.is_empty() => {
                        let n = q.len().min(self.max_batch);
                        Some(q.drain(..n).collect::<Vec<_>>())
                    }
                    _ => {
                        queued.remove(&lane);
                        None
                    }
                },
                Err(_) => None,
            };
            let Some(batch) = taken else { return };
            let (items, waiters): (Vec<B::Item>, Vec<Waiter<B::Reply>>) = batch.into_iter().unzip();
            let n = items.len();
            // The call's future (the script, its retries) is large: on the
            // heap, the spawned drain stays small, and spawning no longer
            // copies it three times (≈ 5k instructions per batch, callgrind).
            match Box::pin(self.batch.call(&lane, items)).await {
                Ok(replies) if replies.len() == n => {
                    for (w, r) in waiters.into_iter().zip(replies) {
                        let _ = w.send(Ok(r)); // a cancelled request no longer listens
                    }
                }
                Ok(replies) => {
                    let m = format!("a batch of {n} got {} replies", replies.len());
                    for w in waiters {
                        let _ = w.send(Err(InventoryError::Protocol(m.clone())));
                    }
                }
                Err(e) => {
                    for w in waiters {
                        let _ = w.send(Err(same(&e)));
                    }
                }
            }
        }
    }
}

/// One request's part of a `reserve.lua` call (its own keys are named in
/// the script from the shard's prefix).
pub struct ReserveCall {
    /// The idempotency key.
    pub key: String,
    pub rid: String,
    /// The units, `;<units>` for a waitlist join (`reserve.lua` builds the
    /// request's fingerprint from qty and user: `<qty>:<user>`, or
    /// `<qty>;w:<user>` for a join, as `ReserveRequest::fingerprint`).
    pub qty: std::borrow::Cow<'static, str>,
    pub user: String,
    pub mark_walk_on: bool,
    pub gate: bool,
    /// Write the `R` verdict with a hold (a key whose claim has no token).
    pub verdict: bool,
    /// The key's claim, made inside this call (one Redis server only; see
    /// `lua/reserve.lua`), or None when it was made apart or earlier.
    pub claim: Option<Claim>,
    /// With no `claim`: the key's claim was new when `claim.lua` made it
    /// apart (claim body `!`): the script skips reading the shard's
    /// verdicts for a new hold, which it writes with NX (data layout 5).
    pub claimed_apart: bool,
    /// The SKU's sale window as `reserve.lua`'s ARGV[4] (`SkuMeta::window_arg`;
    /// "" for none). One call serves one shard, so one SKU: the call sends
    /// its first request's.
    pub window: std::sync::Arc<str>,
}

/// `reserve.lua` on one shard; the lane is the shard's hash tag.
pub struct ReserveBatch {
    pub nodes: Nodes,
    pub metrics: Arc<Metrics>,
    pub script: Script,
    /// hold_ms, idem_ttl_ms, record_ttl_ms (ARGV[1..=3])
    pub ttls: [String; 3],
}

impl Batch for ReserveBatch {
    type Item = ReserveCall;
    type Reply = ReserveReply;

    async fn call(
        &self,
        tag: &str,
        calls: Vec<ReserveCall>,
    ) -> Result<Vec<ReserveReply>, InventoryError> {
        let sk = ShardKeys::new(tag);
        let keys = [
            sk.stock(),
            sk.books(),
            sk.holds(),
            sk.events(),
            sk.wlopen(),
            sk.reserved_keys(),
        ];
        // borrowed from the requests: packed once into one buffer by run_with
        let mut args: Vec<&str> = Vec::with_capacity(4 + 7 * calls.len());
        args.extend(self.ttls.iter().map(String::as_str));
        args.push(calls.first().map_or("", |c| &*c.window));
        for c in &calls {
            let (claim_key, claim_body) = match &c.claim {
                Some(claim) => (claim.record.as_str(), claim.body.as_str()),
                None if c.claimed_apart => ("", "!"),
                None => ("", ""),
            };
            args.extend([
                c.key.as_str(),
                c.rid.as_str(),
                &*c.qty,
                c.user.as_str(),
                flags(c.mark_walk_on, c.gate, c.verdict),
                claim_key,
                claim_body,
            ]);
        }
        decode_reserve(
            scripts::run_with(&self.nodes, &self.metrics, &self.script, &keys, &args).await?,
        )
    }
}

/// One key's claim: its record (`fg:{claim~H}:<id>`, keys.rs's `ClaimHasher`)
/// and the request's body.
pub struct Claim {
    pub record: String,
    pub body: String,
}

/// `claim.lua` on one bucket of idempotency records; the lane is the bucket.
pub struct ClaimBatch {
    pub nodes: Nodes,
    pub metrics: Arc<Metrics>,
    pub script: Script,
    pub ttl_ms: String,
}

impl Batch for ClaimBatch {
    type Item = Claim;
    type Reply = Value;

    async fn call(&self, _bucket: &str, claims: Vec<Claim>) -> Result<Vec<Value>, InventoryError> {
        let mut keys = Vec::with_capacity(claims.len());
        let mut args = Vec::with_capacity(1 + claims.len());
        args.push(self.ttl_ms.clone());
        for c in claims {
            keys.push(c.record);
            args.push(c.body);
        }
        array(scripts::run(&self.nodes, &self.metrics, &self.script, keys, args).await?)
    }
}

/// `replica_ack` (durability.rs): the acknowledgements of the holds waiting
/// at the moment on one master (the lane: the master, or the shard's tag
/// when its master is unknown). One call is `touch.lua` over the queued
/// records of each shard (a script stays in one slot), then one `WAIT
/// replicas timeout` on the same connection, the master's acknowledgement
/// client: one wait for the whole batch, one at a time per connection (a WAIT
/// holds back everything after it on its connection — so that connection
/// carries nothing else).
pub struct AckBatch {
    pub nodes: Nodes,
    pub metrics: Arc<Metrics>,
    pub script: Script,
    pub replicas: u32,
    pub timeout_ms: u64,
    pub record_ttl_ms: String,
}

/// How many acknowledgements one `WAIT` covers at most: far more than a
/// reserve batch, since a WAIT takes up to the whole timeout when the
/// replicas lag and the next batch waits behind it (a touch of a thousand
/// records is still cheap). Coalescing off (`reserve_batch_max = 1`) turns
/// it off here too.
pub fn ack_batch_max(reserve_batch_max: usize) -> usize {
    if reserve_batch_max <= 1 {
        1
    } else {
        reserve_batch_max.max(1024)
    }
}

/// One hold's acknowledgement: its shard's hash tag and its record key.
pub struct Ack {
    pub tag: String,
    pub record: String,
}

impl Batch for AckBatch {
    type Item = Ack;
    type Reply = Value;

    /// One reply per hold: `[touched (0/1), replicas that acknowledged]`.
    async fn call(&self, _master: &str, acks: Vec<Ack>) -> Result<Vec<Value>, InventoryError> {
        use fred::interfaces::ClientLike;
        use fred::types::{ClusterHash, CustomCommand};

        let Some(first) = acks.first() else {
            return Ok(Vec::new());
        };
        let slot = super::placement::slot_of(&first.tag);
        // one client, one connection: the touches and the WAIT behind them
        let client = self.nodes.ack_client_for_slot(slot);
        let mut touched = vec![Value::Integer(0); acks.len()];
        let mut tags: Vec<&str> = acks.iter().map(|a| a.tag.as_str()).collect();
        tags.sort_unstable();
        tags.dedup();
        for tag in tags {
            let (at, records): (Vec<usize>, Vec<&str>) = acks
                .iter()
                .enumerate()
                .filter(|(_, a)| a.tag == tag)
                .map(|(i, a)| (i, a.record.as_str()))
                .unzip();
            let reply = scripts::run_on(
                &client,
                &self.metrics,
                &self.script,
                &records,
                &[self.record_ttl_ms.as_str()],
            )
            .await
            .map_err(|e| scripts::classify(&self.metrics, e))?;
            let reply = array(reply)?;
            if reply.len() != records.len() {
                return Err(InventoryError::Protocol(format!(
                    "touch.lua answered {} of {} records",
                    reply.len(),
                    records.len()
                )));
            }
            for (i, t) in at.into_iter().zip(reply) {
                touched[i] = t;
            }
        }
        let acked: i64 = if touched.iter().any(|t| matches!(t, Value::Integer(1))) {
            let wait = CustomCommand::new_static("WAIT", ClusterHash::Custom(slot), false);
            client
                .custom(
                    wait,
                    vec![
                        Value::from(i64::from(self.replicas)),
                        Value::from(self.timeout_ms as i64),
                    ],
                )
                .await
                .map_err(|e| scripts::classify(&self.metrics, e))?
        } else {
            0 // every hold is gone: nothing to wait for
        };
        Ok(touched
            .into_iter()
            .map(|t| Value::Array(vec![t, Value::Integer(acked)]))
            .collect())
    }
}

/// reserve.lua's flags argument: 1 = mark_walk_on, + 2 = gate, + 4 = verdict.
fn flags(mark_walk_on: bool, gate: bool, verdict: bool) -> &'static str {
    const FLAGS: [&str; 8] = ["0", "1", "2", "3", "4", "5", "6", "7"];
    FLAGS[usize::from(mark_walk_on) + 2 * usize::from(gate) + 4 * usize::from(verdict)]
}

/// The error of a batch's call, for each of its requests.
fn same(e: &InventoryError) -> InventoryError {
    match e {
        InventoryError::Unavailable(m) => InventoryError::Unavailable(m.clone()),
        InventoryError::OutcomeUnknown(m) => InventoryError::OutcomeUnknown(m.clone()),
        InventoryError::Protocol(m) => InventoryError::Protocol(m.clone()),
        InventoryError::Unsuitable(m) => InventoryError::Unsuitable(m.clone()),
        refusal => InventoryError::Protocol(format!("batch: {refusal}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_carry_both_switches() {
        assert_eq!(flags(false, false, false), "0");
        assert_eq!(flags(true, false, false), "1");
        assert_eq!(flags(false, true, false), "2");
        assert_eq!(flags(true, true, false), "3");
        assert_eq!(flags(false, false, true), "4");
        assert_eq!(flags(true, true, true), "7");
    }
}
