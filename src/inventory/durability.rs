//! `replica_ack`: a hold is answered (201, or 200 on a replay) only once it
//! has reached N replicas of its shard's master — Redis `WAIT N timeout`.
//!
//! Redis replicates asynchronously: a master that acknowledged a hold and
//! died before its replicas had it takes the hold with it when a replica is
//! promoted (the buyer holds an id that no longer exists). With
//! `replica_ack = N` the answer waits until N replicas confirm, so that loss
//! needs the master *and* N replicas to fail within the window; when they do
//! not confirm within `replica_ack_timeout_ms` the request answers 503 and the
//! hold stays — a retry with the same key replays it and waits again.
//!
//! `WAIT` counts the replicas that have every write *of the connection it is
//! sent on*, and a pool spreads commands over several connections. So the
//! acknowledgment goes on one client, routed by the shard's slot to its
//! master: first `lua/touch.lua`, a `PEXPIRE` of the reservation's record (a
//! write, so the connection's replication offset moves past the hold's,
//! whichever connection created it — this also covers a replay), then
//! `WAIT`. A touch that finds no record means the hold itself is gone (a
//! failover lost it since): 503 as well, never a 200 for a hold that does
//! not exist.
//!
//! The acknowledgements waiting on one master are coalesced
//! (`batch::AckBatch`, the lanes of batch.rs): one touch per shard of its
//! queued records, one `WAIT` for all of them, on a connection that carries
//! nothing else (`Nodes::ack_client_for_slot`). `WAIT` blocks its connection
//! on the server — every command sent after it there waits for it — which
//! matters most when the replicas lag: measured, a burst against a replica
//! still in its first sync took 1.0–1.7 s per 503 with a WAIT per request on
//! the pooled connections, on a 100 ms timeout, and held up the sold-out
//! answers behind them (bench/README.md). `WAIT` is sent as a custom, non-blocking
//! command on the fred side, so the client's other commands keep being
//! written meanwhile. Off (N = 0) by default.

use super::replies::{array, at, int};
use super::InventoryError;
use super::{Inventory, ReserveOutcome, SkuMeta};
use crate::domain::ReservationId;

impl Inventory {
    /// Hold back a `Held`/`Replayed` answer until `replica_ack` replicas have
    /// the hold (see the module docs); every other answer passes through.
    pub(super) async fn replicated(
        &self,
        result: Result<ReserveOutcome, InventoryError>,
        meta: &SkuMeta,
    ) -> Result<ReserveOutcome, InventoryError> {
        let n = self.settings.replica_ack;
        if n == 0 {
            return result;
        }
        let r = match &result {
            Ok(ReserveOutcome::Held(r)) | Ok(ReserveOutcome::Replayed(r)) => r,
            _ => return result,
        };
        let rid = ReservationId::parse(&r.reservation_id).map_err(InventoryError::Protocol)?;
        let shard = rid.shard();
        let tag = meta
            .tags
            .get(usize::from(shard))
            .cloned()
            .unwrap_or_else(|| super::keys::default_tag(&meta.sku, shard));
        let (touched, acked) = self
            .wait_for_replicas(&meta.keys(shard).record(&rid), &tag)
            .await?;
        if !touched {
            tracing::warn!(rid = %rid, "the hold is gone from its shard (lost in a failover?)");
            return Err(InventoryError::OutcomeUnknown(
                "the hold was lost by its Redis shard; retry with the same Idempotency-Key".into(),
            ));
        }
        if acked < i64::from(n) {
            tracing::warn!(rid = %rid, acked, wanted = n, "replicas did not acknowledge the hold in time");
            return Err(InventoryError::OutcomeUnknown(format!(
                "the hold reached {acked} of {n} replicas in time; retry with the same Idempotency-Key"
            )));
        }
        result
    }

    /// The record's touch then `WAIT replica_ack timeout`, on one connection to the
    /// shard's master, shared with the other holds of the shard queued at the
    /// moment (`batch::AckBatch`). Returns (record exists, replicas that
    /// acknowledged).
    async fn wait_for_replicas(
        &self,
        record: &str,
        tag: &str,
    ) -> Result<(bool, i64), InventoryError> {
        // the lane: the master serving the shard (one Redis: one lane)
        let lane = match self.nodes.master_of(super::placement::slot_of(tag)) {
            Some(master) => master,
            None if self.nodes.per_master() => tag.to_owned(),
            None => String::new(),
        };
        let ack = super::batch::Ack {
            tag: tag.to_owned(),
            record: record.to_owned(),
        };
        let reply = self.acks.submit(&lane, ack).await?;
        let items = array(reply)?;
        let touched = int(at(&items, 0)?)?;
        let acked = int(at(&items, 1)?)?;
        Ok((touched == 1, acked))
    }
}
