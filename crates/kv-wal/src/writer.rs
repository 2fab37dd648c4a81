//! The writer's state: the next id, the frames waiting to be written, and the active segment
//! they go to. It lives behind one mutex in [`crate::shared::Shared`]; the write path that
//! changes it is in `append.rs`, the group commit in `committer.rs`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::fs::WalFile;
use crate::segment_file::SEGMENT_HEADER_BYTES;
use crate::segments::Segment;

/// The longest the committer gathers appends before a commit (`committer.rs`,
/// `gather_window`).
pub(crate) const GATHER_WAIT_MAX: Duration = Duration::from_millis(1);

/// The fewest writers a commit must have released for the next one to wait for them: with
/// fewer, a wait would delay the next commit for little (`committer.rs`).
pub(crate) const GATHER_RELEASED_MIN: u64 = 4;

/// The id the next record gets, and a copy of it readers take without the writer's lock
/// ([`crate::Wal::next_id`]): a write holds the lock for its whole `write` — a second or more
/// for a record of tens of MiB on a slow disk — and `/health`, `/metrics` and the node's
/// heartbeat ask for the next id.
pub(crate) struct NextId {
    value: u64,
    published: Arc<AtomicU64>,
}

impl NextId {
    pub fn new(value: u64) -> NextId {
        NextId {
            value,
            published: Arc::new(AtomicU64::new(value)),
        }
    }

    pub fn get(&self) -> u64 {
        self.value
    }

    pub fn set(&mut self, value: u64) {
        self.value = value;
        self.published.store(value, Ordering::Release);
    }

    /// The copy, for readers without the lock.
    pub fn published(&self) -> Arc<AtomicU64> {
        self.published.clone()
    }
}

/// The writer's state, behind one mutex.
pub(crate) struct Writer {
    pub next_id: NextId,
    /// Encoded frames not yet written.
    pub pending: Vec<u8>,
    /// (id, offset within `pending`) of each pending frame.
    pub pending_frames: Vec<(u64, usize)>,
    pub active: Arc<Segment>,
    pub active_file: Arc<dyn WalFile>,
    pub next_sequence: u64,
    /// Where the next frame goes in the active file.
    pub write_offset: u64,
    /// In a preallocated active segment, how far its free space has been written with zeros
    /// ahead of the appends (`append.rs`, `zeros_ahead`); at or below `write_offset`: not at
    /// all. Reset to 0 whenever the active segment or its end changes.
    pub zeroed_through: u64,
    /// A write of queued frames to the active file is under way without the lock
    /// (`append.rs`, `write_unlocked`): `write_offset` already counts its bytes, the segment's
    /// end and the `last` watermark do not yet. Only one at a time; whatever else writes to or
    /// changes the active file (a roll, a truncation, a flush under the lock) first waits for
    /// it to end (`Shared::settle`). Appends do not: they queue, so an append never waits on
    /// the disk for another's write.
    pub writing: bool,
    /// Threads waiting for that write to end (`Shared::settle`): only then is its end
    /// signalled (a `futex` syscall).
    pub settling: u32,
    /// A `Batch` or `Always` appender is waiting for the committer.
    pub commit_wanted: bool,
    /// An append fsync is in flight: the committer's, or an appender's own (a write-group
    /// leader's, `append.rs`). At most one at a time; appends queue behind it.
    pub fsync_in_flight: bool,
    /// A write group's leader: an append that found the log idle, its frames written, whose
    /// ticket will run the commit when first waited on, unless the committer takes it over
    /// first (`append.rs`, `committer.rs`). `None` once its commit began.
    pub leader: Option<Leader>,
    /// Tokens handed to leaders so far.
    pub leader_tokens: u64,
    /// For each queued `Always` append call, how many pending frames run through its last one:
    /// the committer gives each its own fsync (`committer.rs`).
    pub always_ends: VecDeque<usize>,
    pub last_sync: Instant,
    pub closed: bool,
    /// `pending` starts with room for a durability mark (filled in when it is written).
    pub mark_pending: bool,
    /// What the last durability mark written to the active segment claimed.
    pub last_mark_claim: u64,
    /// Ids the last append commit made durable (its writers, released at once), when that
    /// commit ended, and how long its fdatasync took: the committer's gathering
    /// (`committer.rs`) expects that many writers back soon.
    pub last_commit_released: u64,
    pub last_commit_end: Instant,
    pub last_fsync: Duration,
    /// While the committer gathers appends for its next commit: how many queued frames end
    /// the wait (the appender that queues the last of them wakes it).
    pub gather_until: Option<usize>,
}

impl Writer {
    /// Whether the next batch should carry a durability mark: the active segment was synced
    /// further than the last mark says.
    pub(crate) fn mark_due(&self) -> bool {
        let synced_through = self.active.synced_through();
        synced_through > self.last_mark_claim && synced_through > SEGMENT_HEADER_BYTES as u64
    }

    /// Whether the last commit released enough writers lately for the committer to gather
    /// them for the next (`committer.rs`): an append then queues rather than commit alone.
    pub(crate) fn expects_writers_back(&self) -> bool {
        self.last_commit_released >= GATHER_RELEASED_MIN
            && self.last_commit_end.elapsed() < GATHER_WAIT_MAX
    }

    pub(crate) fn active_has_records(&self) -> bool {
        !self.active.is_empty() || !self.pending_frames.is_empty()
    }
}

/// A write group's leader whose commit has not begun (`Writer::leader`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Leader {
    /// Its ticket's claim: the commit is the ticket's while this is the log's leader.
    pub token: u64,
    /// An `Always` append: its commit is an fsync of its own frames, taking nothing else queued.
    pub own_fsync: bool,
    /// The last id of its frames (the first queued: it found the log idle).
    pub last_id: u64,
}

impl Leader {
    /// For an `Always` leader, the last id of the frames its commit writes (those still
    /// queued) and fsyncs alone (`Shared::commit_once`).
    pub(crate) fn always_through(&self) -> Option<u64> {
        self.own_fsync.then_some(self.last_id)
    }
}
