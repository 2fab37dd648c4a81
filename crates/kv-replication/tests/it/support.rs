//! An in-memory log for the protocol logic, and seed handling.

use std::sync::Arc;
use std::time::Duration;

use kv_replication::LogView;
use kv_store::{Op, Store, StoreOptions, Value};

/// A store in `dir` (WAL and snapshots), with small segments so compaction has some to drop.
pub fn open(dir: &std::path::Path) -> Arc<Store> {
    open_in_mode(dir, kv_wal::RecoveryMode::default()).0
}

/// [`open`] under `mode`, with its recovery report.
pub fn open_in_mode(
    dir: &std::path::Path,
    mode: kv_wal::RecoveryMode,
) -> (Arc<Store>, kv_wal::RecoveryReport) {
    let mut options = StoreOptions {
        snapshot_dir: Some(dir.join("snapshots")),
        ..StoreOptions::default()
    };
    options.wal.segment_bytes_max = 8192;
    options.wal.recovery_mode = mode;
    let (store, report) = Store::open(dir.join("wal"), options).expect("open store");
    (Arc::new(store), report)
}

/// A store in `dir` whose disk takes the faults of the returned plan.
pub fn open_on_a_faulty_disk(
    dir: &std::path::Path,
) -> (Arc<kv_store::Store>, Arc<kv_wal::fs::FaultPlan>) {
    let plan = kv_wal::fs::FaultPlan::new();
    let mut store_options = kv_store::StoreOptions {
        snapshot_dir: Some(dir.join("snapshots")),
        ..kv_store::StoreOptions::default()
    };
    store_options.wal.file_system = Arc::new(kv_wal::fs::FaultyFs::new(
        Arc::new(kv_wal::fs::StdFs),
        plan.clone(),
    ));
    let store = Arc::new(
        kv_store::Store::open(dir.join("wal"), store_options)
            .expect("open")
            .0,
    );
    (store, plan)
}

/// Waits (up to 10 s) until `condition` holds.
pub async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Chunk `offset..offset + len` of `node`'s snapshot `applied_id`, as a transport returns it.
pub fn chunk_of(
    node: &kv_replication::Node,
    applied_id: u64,
    offset: u64,
    len: u32,
) -> Result<Vec<u8>, kv_replication::TransportError> {
    use kv_replication::{TransportError, TransportErrorKind};
    node.snapshot_chunk(applied_id, offset, len)
        .ok_or_else(|| TransportError::new(TransportErrorKind::Status, "no such snapshot"))?
        .map_err(|error| TransportError::new(TransportErrorKind::Status, error.to_string()))
}

/// `SET key = value` (a JSON number).
pub fn set(key: String, value: u64) -> Op {
    Op::Set {
        key: key.into_bytes(),
        value: Value::json(value.to_string()),
    }
}

/// A log as a `Vec`: `(id, epoch, payload)` from `first_id`, durable through `durable_id`.
/// `base` is the `(id, epoch)` of the last entry a snapshot holds, for a log that continues a
/// snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VecLog {
    pub first_id: u64,
    pub entries: Vec<(u64, u64, Vec<u8>)>,
    pub durable_id: u64,
    pub base: Option<(u64, u64)>,
    /// `(id, epoch)` of entries purged from the front.
    pub purged: Vec<(u64, u64)>,
}

impl VecLog {
    pub fn new() -> VecLog {
        VecLog {
            first_id: 1,
            entries: Vec::new(),
            durable_id: 0,
            base: None,
            purged: Vec::new(),
        }
    }

    /// An empty log continuing a snapshot whose last entry is `id`, written in `epoch`.
    pub fn after_snapshot(id: u64, epoch: u64) -> VecLog {
        VecLog {
            first_id: id + 1,
            entries: Vec::new(),
            durable_id: id,
            base: Some((id, epoch)),
            purged: Vec::new(),
        }
    }

    /// Drops the entries before `before_id` (a leader compacting after a snapshot). Their
    /// epochs are remembered, as the store's epoch history remembers them.
    pub fn purge_before(&mut self, before_id: u64) {
        let purged = self.entries.iter().filter(|(id, _, _)| *id < before_id);
        self.purged
            .extend(purged.map(|(id, epoch, _)| (*id, *epoch)));
        self.entries.retain(|(id, _, _)| *id >= before_id);
        self.first_id = self.first_id.max(before_id);
    }

    /// A log that installed this one's snapshot at `id`: it continues after `id` and knows
    /// the epochs of every id up to it (a snapshot carries the epoch history).
    pub fn snapshot_through(&self, id: u64) -> VecLog {
        let epochs = self
            .purged
            .iter()
            .copied()
            .chain(self.entries.iter().map(|(id, epoch, _)| (*id, *epoch)))
            .filter(|(entry_id, _)| *entry_id <= id)
            .collect();
        VecLog {
            first_id: id + 1,
            entries: Vec::new(),
            durable_id: id,
            base: self.epoch_at(id).map(|epoch| (id, epoch)),
            purged: epochs,
        }
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
        if id > self.last_id() {
            return None;
        }
        self.entries
            .iter()
            .map(|(entry_id, epoch, _)| (*entry_id, *epoch))
            .chain(self.purged.iter().copied())
            .find(|(entry_id, _)| *entry_id == id)
            .map(|(_, epoch)| epoch)
            .or_else(|| {
                self.base
                    .filter(|(base_id, _)| *base_id == id)
                    .map(|(_, epoch)| epoch)
            })
    }
    fn end_of_epoch(&self, epoch: u64) -> u64 {
        match self
            .purged
            .iter()
            .copied()
            .chain(self.entries.iter().map(|(id, epoch, _)| (*id, *epoch)))
            .find(|(_, entry_epoch)| *entry_epoch > epoch)
        {
            Some((id, _)) => (id - 1).min(self.last_id()),
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

/// A [`VecLog`] missing the ids of `gap`, as a log that went on past a snapshot covering them
/// (opened behind its snapshot): reading from inside the gap fails as the store's log view
/// does, with [`kv_replication::Error::LogGap`] naming the first id after it.
pub struct GappedLog {
    pub log: VecLog,
    pub gap: std::ops::RangeInclusive<u64>,
    /// The newest snapshot's applied id (the gap's end when it covers it).
    pub snapshot_id: u64,
}

impl GappedLog {
    /// `log` without the ids of `gap`, beside a snapshot that covers them.
    pub fn new(mut log: VecLog, gap: std::ops::RangeInclusive<u64>) -> GappedLog {
        log.entries.retain(|(id, _, _)| !gap.contains(id));
        let snapshot_id = *gap.end();
        GappedLog {
            log,
            gap,
            snapshot_id,
        }
    }
}

impl LogView for GappedLog {
    fn first_id(&self) -> u64 {
        self.log.first_id()
    }
    fn last_id(&self) -> u64 {
        self.log.last_id()
    }
    fn durable_id(&self) -> u64 {
        self.log.durable_id()
    }
    fn epoch_at(&self, id: u64) -> Option<u64> {
        self.log.epoch_at(id)
    }
    fn end_of_epoch(&self, epoch: u64) -> u64 {
        self.log.end_of_epoch(epoch)
    }
    fn newest_snapshot_id(&self) -> u64 {
        self.snapshot_id
    }
    fn read_frames(
        &self,
        from_id: u64,
        bytes_max: usize,
        through_id: u64,
    ) -> kv_replication::Result<Vec<u8>> {
        if self.gap.contains(&from_id) {
            return Err(kv_replication::Error::LogGap {
                asked_id: from_id,
                found_id: self.gap.end() + 1,
            });
        }
        // Like the store's, a read stops at the gap.
        let through_id = if from_id < *self.gap.start() {
            through_id.min(self.gap.start() - 1)
        } else {
            through_id
        };
        self.log.read_frames(from_id, bytes_max, through_id)
    }
}
