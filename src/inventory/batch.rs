//! Coalescing of concurrent reserves for one shard into one `reserve.lua`
//! call (the script decides them one after the other, in arrival order, and
//! answers each).
//!
//! Each shard has a lane. A reserve joins its shard's lane; if no call is in
//! flight for the lane, a drain task starts and sends everything queued as
//! one call, then whatever queued meanwhile, until the lane is empty. There is
//! no timer: an idle shard answers a lone request at once, and under load a
//! request waits at most for the call in flight on its shard (one round trip,
//! itself bounded by `redis_timeout_ms`) — the batch grows with the load.
//!
//! The drain runs in its own task, so a request that is cancelled (client
//! gone, request timeout) never strands the others. A failed call fails every
//! request of the batch with the same error (503; the outcome is unknown, and
//! every request is safe to retry with its key: the script is idempotent per
//! key). `reserve_batch_max = 1` turns coalescing off (one call per request,
//! no lane), for comparison.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use fred::clients::Pool;
use fred::types::Value;
use tokio::sync::oneshot;

use super::keys::ShardKeys;
use super::scripts::{self, array, Script};
use crate::error::InventoryError;
use crate::metrics::Metrics;

/// One request's part of a `reserve.lua` call.
pub struct ReserveCall {
    pub idem_key: String,
    pub record_key: String,
    pub rid: String,
    pub qty: String,
    pub user: String,
    pub fingerprint: String,
    pub mark_moved: bool,
    pub gate: bool,
    pub key: String,
}

/// What one lane's calls share: the shard's keys and the SKU.
#[derive(Clone)]
struct Shard {
    keys: [String; 6],
    sku: String,
}

type Waiter = oneshot::Sender<Result<Value, InventoryError>>;

struct Lane {
    shard: Shard,
    pending: Vec<(ReserveCall, Waiter)>,
}

/// The reserve lanes of one instance.
pub struct Reserver {
    pool: Pool,
    metrics: Arc<Metrics>,
    script: Script,
    /// hold_ms, idem_ttl_ms, record_ttl_ms (ARGV[1..=3])
    ttls: [String; 3],
    max_batch: usize,
    /// Lanes with a drain in flight, by shard hash tag.
    lanes: Mutex<HashMap<String, Lane>>,
}

impl Reserver {
    pub fn new(
        pool: Pool,
        metrics: Arc<Metrics>,
        script: Script,
        ttls: [u64; 3],
        max_batch: usize,
    ) -> Reserver {
        Reserver {
            pool,
            metrics,
            script,
            ttls: ttls.map(|t| t.to_string()),
            max_batch: max_batch.max(1),
            lanes: Mutex::new(HashMap::new()),
        }
    }

    /// Reserve on the shard `sk` (hash tag `tag`) of `sku`: this request's
    /// reply of `reserve.lua`.
    pub async fn reserve(
        self: &Arc<Self>,
        tag: &str,
        sk: &ShardKeys,
        sku: &str,
        call: ReserveCall,
    ) -> Result<Value, InventoryError> {
        let shard = || Shard {
            keys: [
                sk.stock(),
                sk.books(),
                sk.holds(),
                sk.events(),
                sk.wlopen(),
                sk.reserved_keys(),
            ],
            sku: sku.to_owned(),
        };
        if self.max_batch == 1 {
            let mut replies = self.call(&shard(), vec![call]).await?;
            return replies
                .pop()
                .ok_or_else(|| InventoryError::Protocol("reserve.lua answered nothing".into()));
        }
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut lanes = self
                .lanes
                .lock()
                .map_err(|_| InventoryError::Protocol("reserve lanes poisoned".into()))?;
            match lanes.get_mut(tag) {
                Some(lane) => {
                    lane.pending.push((call, tx));
                    false
                }
                None => {
                    lanes.insert(
                        tag.to_owned(),
                        Lane {
                            shard: shard(),
                            pending: vec![(call, tx)],
                        },
                    );
                    true
                }
            }
        };
        if start {
            let me = self.clone();
            let tag = tag.to_owned();
            tokio::spawn(async move { me.drain(tag).await });
        }
        rx.await.unwrap_or_else(|_| {
            Err(InventoryError::Unavailable(
                "the reserve batch was dropped".into(),
            ))
        })
    }

    /// Send the lane's queue as calls until it is empty, then close the lane.
    async fn drain(&self, tag: String) {
        loop {
            let taken = match self.lanes.lock() {
                Ok(mut lanes) => match lanes.get_mut(&tag) {
                    Some(lane) if !lane.pending.is_empty() => {
                        let n = lane.pending.len().min(self.max_batch);
                        Some((
                            lane.shard.clone(),
                            lane.pending.drain(..n).collect::<Vec<_>>(),
                        ))
                    }
                    _ => {
                        lanes.remove(&tag);
                        None
                    }
                },
                Err(_) => None,
            };
            let Some((shard, batch)) = taken else { return };
            let (calls, waiters): (Vec<ReserveCall>, Vec<Waiter>) = batch.into_iter().unzip();
            match self.call(&shard, calls).await {
                Ok(replies) => {
                    for (w, r) in waiters.into_iter().zip(replies) {
                        let _ = w.send(Ok(r)); // a cancelled request no longer listens
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

    /// One `reserve.lua` call for `calls`, in order: one reply each.
    async fn call(
        &self,
        shard: &Shard,
        calls: Vec<ReserveCall>,
    ) -> Result<Vec<Value>, InventoryError> {
        let n = calls.len();
        let mut keys = Vec::with_capacity(6 + 2 * n);
        keys.extend(shard.keys.iter().cloned());
        let mut args = Vec::with_capacity(4 + 7 * n);
        args.extend(self.ttls.iter().cloned());
        args.push(shard.sku.clone());
        for c in calls {
            keys.push(c.idem_key);
            keys.push(c.record_key);
            args.extend([
                c.rid,
                c.qty,
                c.user,
                c.fingerprint,
                flag(c.mark_moved),
                flag(c.gate),
                c.key,
            ]);
        }
        let replies =
            array(scripts::run(&self.pool, &self.metrics, &self.script, keys, args).await?)?;
        if replies.len() != n {
            return Err(InventoryError::Protocol(format!(
                "reserve.lua answered {} of {n} requests",
                replies.len(),
            )));
        }
        Ok(replies)
    }
}

fn flag(b: bool) -> String {
    if b { "1" } else { "0" }.to_string()
}

/// The error of a batch's call, for each of its requests.
fn same(e: &InventoryError) -> InventoryError {
    match e {
        InventoryError::Unavailable(m) => InventoryError::Unavailable(m.clone()),
        InventoryError::Protocol(m) => InventoryError::Protocol(m.clone()),
        InventoryError::Api(api) => InventoryError::Protocol(format!("reserve batch: {api}")),
    }
}
