//! What the protocol logic needs to know about a log, as a trait: the real implementation
//! reads a [`kv_store::Store`]; tests use a `Vec` on virtual time.

use kv_store::Store;

use crate::error::{Error, Result};

/// A read-only view of one node's log.
pub trait LogView {
    /// The first id still held (`next_id()` when the log is empty).
    fn first_id(&self) -> u64;
    /// The last id held (0 when none).
    fn last_id(&self) -> u64;
    /// The highest id this node holds under its sync policy: on stable storage under
    /// `always`/`batch`; written (to the OS) under `interval`/`never`, which by choice do not
    /// wait for the disk. This is what a fetch acknowledges and what commits count.
    fn durable_id(&self) -> u64;
    /// The epoch of entry `id`, if held.
    fn epoch_at(&self, id: u64) -> Option<u64>;
    /// The last id written in an epoch `<= epoch`.
    fn end_of_epoch(&self, epoch: u64) -> u64;
    /// Frames from `from_id`, at most `bytes_max` bytes (at least one frame), through
    /// `through_id`.
    fn read_frames(&self, from_id: u64, bytes_max: usize, through_id: u64) -> Result<Vec<u8>>;
    /// The id the next entry gets.
    fn next_id(&self) -> u64 {
        self.last_id() + 1
    }
}

impl LogView for Store {
    fn first_id(&self) -> u64 {
        // Where entries start: the first record, or — for an empty log (a new leader with an
        // append queued, a follower that just installed a snapshot) — where the first will go.
        self.wal()
            .first_id()
            .unwrap_or_else(|| self.wal().start_id().max(self.snapshot_base() + 1))
    }
    fn last_id(&self) -> u64 {
        Store::last_id(self)
    }
    fn durable_id(&self) -> u64 {
        let wal = self.wal();
        let held = if wal.sync_policy().is_durable_on_return() {
            wal.durable_id()
        } else {
            wal.durable_id().max(wal.last_id().unwrap_or(0))
        };
        held.max(self.snapshot_base())
    }
    fn epoch_at(&self, id: u64) -> Option<u64> {
        Store::epoch_at(self, id)
    }
    fn end_of_epoch(&self, epoch: u64) -> u64 {
        Store::end_of_epoch(self, epoch)
    }
    fn read_frames(&self, from_id: u64, bytes_max: usize, through_id: u64) -> Result<Vec<u8>> {
        match self.wal().read_frames(from_id, bytes_max, through_id) {
            Ok(Some(batch)) if batch.first_id == from_id => Ok(batch.bytes),
            Ok(Some(batch)) => Err(Error::LogGap {
                asked_id: from_id,
                found_id: batch.first_id,
            }),
            Ok(None) => Ok(Vec::new()),
            Err(error) => Err(kv_store::Error::from(error).into()),
        }
    }
    fn next_id(&self) -> u64 {
        Store::next_id(self)
    }
}
