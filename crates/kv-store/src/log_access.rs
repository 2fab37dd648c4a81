//! What the layers above kv-store may see and do of the log under the store, each method named
//! for what it is for: replication's view of the log (where it starts, what is held, frames to
//! ship, waiting for new entries, appending a leader's frames), maintenance (segments, sealing,
//! compressing) and the numbers `/health`, `/segments` and `/metrics` show. Nothing above
//! kv-store reaches the [`kv_wal::Wal`] itself (`.ci/run` checks it).

use std::path::Path;

use kv_wal::{AppendTicket, CompressReport, FrameBatch, SegmentInfo, WalStats, WatermarkWait};

use crate::error::Result;
use crate::store::Store;

/// The log's ids and health, as `/health` and `/metrics` show them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogStatus {
    /// The last id written, in the log or the snapshot it starts after (`None`: none yet).
    pub last_id: Option<u64>,
    /// The highest id on stable storage.
    pub durable_id: u64,
    /// The id the next record gets.
    pub next_id: u64,
    /// Why the log refuses writes, once an I/O failure poisoned it.
    pub poisoned: Option<String>,
    /// Why the last try at a new segment found no room on the disk, while no later one
    /// succeeded: writes that need a new segment fail meanwhile (`kv_wal::Error::OutOfSpace`).
    pub out_of_space: Option<String>,
    /// How long the oldest write or `fdatasync` of the log in flight has waited for the disk
    /// (zero: none; `kv_wal::WalStats::disk_wait_seconds`).
    pub disk_wait: std::time::Duration,
}

impl Store {
    /// Where the log's entries start: its first record or — for an empty log (a new leader
    /// with an append queued, a follower that just installed a snapshot) — where the first
    /// will go.
    pub fn first_id(&self) -> u64 {
        let wal = self.wal();
        wal.first_id()
            .unwrap_or_else(|| wal.start_id().max(self.snapshot_base() + 1))
    }

    /// The highest id this node holds under its sync policy: on stable storage under
    /// `always`/`batch`; written (to the OS) under `interval`/`never`, which by choice do not
    /// wait for the disk; never below the snapshot the store rests on. What a follower's
    /// fetch acknowledges and what commits count.
    pub fn held_id(&self) -> u64 {
        let wal = self.wal();
        let held = if wal.sync_policy().is_durable_on_return() {
            wal.durable_id()
        } else {
            wal.durable_id().max(wal.last_id().unwrap_or(0))
        };
        held.max(self.snapshot_base())
    }

    /// Whether a submit writes its records to the log file itself, holding the log's locks
    /// while the disk takes them (`interval`/`never`; under `always`/`batch` the commit writes
    /// them, on whichever thread waits on its ticket or on the log's committer).
    pub fn submit_writes(&self) -> bool {
        !self.wal().sync_policy().is_durable_on_return()
    }

    /// The bytes appends may still add to the log's active segment before it rolls (a hint:
    /// [`kv_wal::Wal::active_room`]). A roll waits on the disk inside a submit, holding the
    /// store's and the log's locks.
    pub fn active_segment_room(&self) -> u64 {
        self.wal().active_room()
    }

    /// Consecutive frames from `from_id`, in the form replication ships them (see
    /// [`kv_wal::Wal::read_frames`]): at most `bytes_max` bytes (at least one frame), no id past
    /// `through_id`. `None` when there is nothing to read.
    pub fn read_frames(
        &self,
        from_id: u64,
        bytes_max: usize,
        through_id: u64,
    ) -> Result<Option<FrameBatch>> {
        Ok(self.wal().read_frames(from_id, bytes_max, through_id)?)
    }

    /// Resolves once the log holds id `id` (written, not necessarily durable), or the log
    /// fails: a leader's long-polled fetch waits on it for new entries.
    pub fn wait_for_id(&self, id: u64) -> WatermarkWait {
        self.wal().last_watermark().wait(id)
    }

    /// [`Store::submit_frames`] under the store's own sync policy: a follower appending its
    /// leader's frames.
    pub fn submit_leader_frames(&self, frames: &[u8]) -> Result<AppendTicket> {
        self.submit_frames(frames, self.wal().sync_policy())
    }

    /// The log's segment files, oldest first.
    pub fn segments(&self) -> Vec<SegmentInfo> {
        self.wal().segments()
    }

    /// How large a segment grows before the log rolls to a new one.
    pub fn segment_bytes_max(&self) -> u64 {
        self.wal().segment_bytes_max()
    }

    /// The directory of the log's segments.
    pub fn log_dir(&self) -> &Path {
        self.wal().dir()
    }

    /// Seals the active segment if it holds at least `min_bytes` (only sealed segments can be
    /// purged); true if it did.
    pub fn seal_active_segment(&self, min_bytes: u64) -> Result<bool> {
        Ok(self.wal().seal_active(min_bytes)?)
    }

    /// Rewrites the log's sealed, still plain segments compressed with the codec the log was
    /// opened with (blocking; appends and reads go on meanwhile).
    pub fn compress_sealed_segments(&self) -> Result<CompressReport> {
        Ok(self.wal().compress_sealed()?)
    }

    /// Whether a new log segment fits on the disk again after one found no room (see
    /// [`kv_wal::Wal::check_room`]; blocking, a probe file's allocation while the log lacks
    /// room, nothing otherwise).
    pub fn check_room(&self) -> Result<bool> {
        Ok(self.wal().check_room()?)
    }

    /// The log's counters (appends, writes, fsyncs, group-commit batch sizes).
    pub fn wal_stats(&self) -> WalStats {
        self.wal().stats()
    }

    /// The log's ids and health.
    pub fn log_status(&self) -> LogStatus {
        let wal = self.wal();
        LogStatus {
            // The store's: a log a snapshot emptied (every entry purged) still ends at the
            // snapshot's id, as `/cluster_status` says; the log's own would be `None`.
            last_id: Some(self.last_id()).filter(|&id| id > 0),
            // Never below the snapshot the store rests on (itself on stable storage): a
            // follower that just installed one said 0.
            durable_id: wal.durable_id().max(self.snapshot_base()),
            next_id: wal.next_id(),
            poisoned: wal.poisoned(),
            out_of_space: wal.out_of_space(),
            disk_wait: std::time::Duration::from_secs_f64(wal.stats().disk_wait_seconds.max(0.0)),
        }
    }
}
