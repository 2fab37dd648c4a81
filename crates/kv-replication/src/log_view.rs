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
    /// The applied id of the newest snapshot a follower may install from here (0: none).
    fn newest_snapshot_id(&self) -> u64 {
        0
    }
}

impl LogView for Store {
    fn first_id(&self) -> u64 {
        Store::first_id(self)
    }
    fn last_id(&self) -> u64 {
        Store::last_id(self)
    }
    fn durable_id(&self) -> u64 {
        Store::held_id(self)
    }
    fn epoch_at(&self, id: u64) -> Option<u64> {
        Store::epoch_at(self, id)
    }
    fn end_of_epoch(&self, epoch: u64) -> u64 {
        Store::end_of_epoch(self, epoch)
    }
    fn read_frames(&self, from_id: u64, bytes_max: usize, through_id: u64) -> Result<Vec<u8>> {
        match Store::read_frames(self, from_id, bytes_max, through_id)? {
            Some(batch) if batch.first_id == from_id => Ok(batch.bytes),
            Some(batch) => Err(Error::LogGap {
                asked_id: from_id,
                found_id: batch.first_id,
            }),
            None => Ok(Vec::new()),
        }
    }
    fn next_id(&self) -> u64 {
        Store::next_id(self)
    }
    fn newest_snapshot_id(&self) -> u64 {
        Store::newest_snapshot_id(self)
    }
}
