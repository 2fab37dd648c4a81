//! An in-memory log for the protocol logic, and seed handling.

use kv_replication::LogView;

/// A log as a `Vec`: `(id, epoch, payload)` from `first_id`, durable through `durable_id`.
/// `base` is the `(id, epoch)` of the last entry a snapshot holds, for a log that continues a
/// snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VecLog {
    pub first_id: u64,
    pub entries: Vec<(u64, u64, Vec<u8>)>,
    pub durable_id: u64,
    pub base: Option<(u64, u64)>,
}

impl VecLog {
    pub fn new() -> VecLog {
        VecLog {
            first_id: 1,
            entries: Vec::new(),
            durable_id: 0,
            base: None,
        }
    }

    /// An empty log continuing a snapshot whose last entry is `id`, written in `epoch`.
    pub fn after_snapshot(id: u64, epoch: u64) -> VecLog {
        VecLog {
            first_id: id + 1,
            entries: Vec::new(),
            durable_id: id,
            base: Some((id, epoch)),
        }
    }

    /// Drops the entries before `before_id` (a leader compacting after a snapshot).
    pub fn purge_before(&mut self, before_id: u64) {
        self.entries.retain(|(id, _, _)| *id >= before_id);
        self.first_id = self.first_id.max(before_id);
    }

    pub fn append(&mut self, epoch: u64, payload: Vec<u8>) -> u64 {
        let id = self.next_id();
        self.entries.push((id, epoch, payload));
        id
    }

    pub fn append_frames(&mut self, frames: &[u8], epoch_of: impl Fn(&[u8]) -> u64) {
        for frame in kv_wal::frame::decode_all(frames).expect("checked frames") {
            assert_eq!(frame.id, self.next_id(), "frames must continue the log");
            self.entries
                .push((frame.id, epoch_of(frame.payload), frame.payload.to_vec()));
            // never compressed here
        }
    }

    pub fn truncate_after(&mut self, after_id: u64) {
        self.entries.retain(|(id, _, _)| *id <= after_id);
        self.durable_id = self.durable_id.min(after_id);
    }

    pub fn sync(&mut self) {
        self.durable_id = self.last_id();
    }
}

/// Payloads in the simulation carry their epoch in the first 8 bytes.
pub fn payload(epoch: u64, tag: &str) -> Vec<u8> {
    let mut bytes = epoch.to_le_bytes().to_vec();
    bytes.extend_from_slice(tag.as_bytes());
    bytes
}

pub fn epoch_of(payload: &[u8]) -> u64 {
    u64::from_le_bytes(payload[..8].try_into().expect("epoch prefix"))
}

impl LogView for VecLog {
    fn first_id(&self) -> u64 {
        self.entries.first().map_or(self.first_id, |(id, _, _)| *id)
    }
    fn last_id(&self) -> u64 {
        self.entries
            .last()
            .map_or(self.first_id - 1, |(id, _, _)| *id)
    }
    fn durable_id(&self) -> u64 {
        self.durable_id
    }
    fn epoch_at(&self, id: u64) -> Option<u64> {
        self.entries
            .iter()
            .find(|(entry_id, _, _)| *entry_id == id)
            .map(|(_, epoch, _)| *epoch)
            .or_else(|| {
                self.base
                    .filter(|(base_id, _)| *base_id == id)
                    .map(|(_, epoch)| epoch)
            })
    }
    fn end_of_epoch(&self, epoch: u64) -> u64 {
        match self
            .entries
            .iter()
            .find(|(_, entry_epoch, _)| *entry_epoch > epoch)
        {
            Some((id, _, _)) => id - 1,
            None => self.last_id(),
        }
    }
    fn read_frames(
        &self,
        from_id: u64,
        bytes_max: usize,
        through_id: u64,
    ) -> kv_replication::Result<Vec<u8>> {
        let mut out = Vec::new();
        for (id, _, payload) in &self.entries {
            if *id < from_id || *id > through_id {
                continue;
            }
            let frame = kv_wal::frame::encode_record(*id, payload);
            if !out.is_empty() && out.len() + frame.len() > bytes_max {
                break;
            }
            out.extend(frame);
        }
        Ok(out)
    }
}

pub fn seed_from_env() -> u64 {
    std::env::var("KV_TEST_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(rand::random)
}
