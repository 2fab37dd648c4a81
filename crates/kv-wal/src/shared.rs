//! What the writer, the committer and readers share: the directory and its file system, the
//! segment list, the watermarks, the writer's mutex, and the counters.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::codec::SegmentCodec;
use crate::durability::Durability;
use crate::error::{Error, IoContext, Result};
use crate::fs::{DirLock, FileSystem};
use crate::mutex::lock;
use crate::options::{RecoveryMode, SyncPolicy};
use crate::segment_file::segment_path;
use crate::segments::Segment;
use crate::stats::Stats;
use crate::watermark::Watermark;
use crate::writer::Writer;

pub(crate) struct Shared {
    pub dir: PathBuf,
    pub fs: Arc<dyn FileSystem>,
    pub log_id: u64,
    pub segment_bytes_max: u64,
    /// `WalOptions::preallocated_segment_bytes`: how long a new segment file is made.
    pub preallocated_segment_bytes: u64,
    pub compress_records_above: Option<usize>,
    pub compress_sealed_segments: Option<SegmentCodec>,
    pub sync_policy: SyncPolicy,
    pub recovery_mode: RecoveryMode,
    /// `WalOptions::inline_commit_when_idle`.
    pub inline_commit_when_idle: bool,
    pub writer: Mutex<Writer>,
    /// The writer's next id, read without its lock (`writer.rs`, [`crate::writer::NextId`]).
    pub next_id: Arc<AtomicU64>,
    pub commit_needed: Condvar,
    /// Signalled when a write without the lock ends (`Writer::writing`).
    pub write_done: Condvar,
    pub segments: RwLock<Vec<Arc<Segment>>>,
    /// Last id written (readable).
    pub last: Arc<Watermark>,
    /// The bytes appends may still add to the active segment before it rolls, as of the last
    /// change (`Shared::note_room`): read without the writer lock ([`crate::Wal::active_room`]).
    pub active_room: AtomicU64,
    /// The durable id, the failure latch and the fsyncs in flight.
    pub durability: Durability,
    /// Why the last try at a new segment found no room (cleared by the next that succeeds):
    /// appends needing a new segment fail with `Error::OutOfSpace` meanwhile.
    pub out_of_space: Mutex<Option<String>>,
    /// Bumped by every truncation, so iterators notice.
    pub truncations: AtomicU64,
    /// Held while segment files are replaced or removed (truncation, purging, the last step of
    /// compressing a segment), so a compressed file never lands after its segment was dropped.
    /// Taken before the writer lock when both are needed.
    pub maintenance: Mutex<()>,
    /// One compression pass at a time.
    pub compressing: Mutex<()>,
    pub stats: Stats,
    /// The newest segment `wal.meta` records as created ([`Shared::record_newest_sequence`]);
    /// 0 before the first record.
    pub newest_recorded: AtomicU64,
    pub _lock: Box<dyn DirLock>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn writer(&self) -> MutexGuard<'_, Writer> {
        lock(&self.writer)
    }

    /// Waits (the lock released meanwhile) until no write of queued frames is under way
    /// without the lock (`Writer::writing`), for whoever is about to write to or change the
    /// active file under the lock.
    pub(crate) fn settle<'a>(&self, mut writer: MutexGuard<'a, Writer>) -> MutexGuard<'a, Writer> {
        while writer.writing {
            writer.settling += 1;
            writer = self
                .write_done
                .wait(writer)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            writer.settling -= 1;
        }
        writer
    }

    pub(crate) fn segments_read(&self) -> RwLockReadGuard<'_, Vec<Arc<Segment>>> {
        self.segments
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Removes a segment's file. For a compressed one, also its plain twin if a failed
    /// removal during compression left it (open would otherwise bring it back).
    pub(crate) fn remove_segment_files(&self, segment: &Segment) -> Result<()> {
        self.fs.remove_file(&segment.path).at(&segment.path)?;
        if segment.compressed.is_some() {
            let plain = segment_path(&self.dir, segment.sequence, segment.first_id);
            match self.fs.remove_file(&plain) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(error).at(&plain),
            }
        }
        Ok(())
    }

    /// Records in `wal.meta` that segment `sequence` is the newest whose creation completed
    /// (its header durable, its name in the directory), so that open refuses a log whose
    /// newest segments are gone or zeroed instead of taking their loss for a crash. Raised
    /// after a new segment is named; lowered before a newest segment is removed on purpose
    /// (an empty one replaced) and after a truncation (which a marker covers meanwhile).
    /// Under the writer lock. A failure to raise it is not an error: the record only stays
    /// lower, and open checks less; a failure to lower it is (`Error::Io`).
    pub(crate) fn record_newest_sequence(&self, sequence: u64) -> Result<()> {
        use std::sync::atomic::Ordering;
        let recorded = self.newest_recorded.load(Ordering::Acquire);
        if recorded == sequence {
            return Ok(());
        }
        let written = crate::durable::write_file_atomic(
            &*self.fs,
            &self.dir,
            crate::meta::META_FILE,
            &crate::meta::encode_meta(self.log_id, sequence),
        );
        match written {
            Ok(()) => {
                self.newest_recorded.store(sequence, Ordering::Release);
                Ok(())
            }
            Err(_) if sequence > recorded => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Whether `segment` is still one of the log's segments (not replaced or removed).
    pub(crate) fn holds(&self, segment: &Arc<Segment>) -> bool {
        self.segments_read()
            .iter()
            .any(|held| Arc::ptr_eq(held, segment))
    }

    pub(crate) fn segments_write(&self) -> RwLockWriteGuard<'_, Vec<Arc<Segment>>> {
        self.segments
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Latches a write-path failure: appends fail from now on, and durability waiters that have
    /// not reached their target end with the reason.
    pub(crate) fn poison(&self, reason: String) -> Error {
        self.durability.poison(reason)
    }

    /// Runs a fallible I/O step of the write path; a failure poisons the log.
    pub(crate) fn guarded<T>(&self, step: Result<T>) -> Result<T> {
        step.map_err(|error| self.poison(error.to_string()))
    }

    /// Fails if the log no longer takes writes.
    pub(crate) fn check_writable(&self, writer: &Writer) -> Result<()> {
        if let Some(reason) = self.durability.failure() {
            return Err(Error::Poisoned(reason));
        }
        if writer.closed {
            return Err(Error::Closed);
        }
        Ok(())
    }
}
