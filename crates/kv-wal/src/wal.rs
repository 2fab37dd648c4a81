//! The log itself: opening, the write path with group commit, truncation and purging.
//!
//! Writers encode frames into a pending buffer under one mutex. Who writes and fsyncs that
//! buffer depends on the sync policy: the appending thread itself (`Always`, `Never`,
//! `Interval`), or the committer thread that every `Wal` owns (`Batch`): while one fdatasync
//! runs, new appends queue up, and the next round writes them all with one `write` and one
//! `fdatasync`. Segments roll under the same mutex; the old segment is sealed and fsynced
//! before the new one is created, so only the active segment ever holds unsynced bytes.

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use rand::Rng;

use crate::compress::write_plain_segment;
use crate::compressed::{CompressedLayout, SegmentCodec};
use crate::durable::write_file_atomic;
use crate::error::{Error, IoContext, Result};
use crate::failpoint;
use crate::frame::{self, FRAME_HEADER_BYTES, KIND_RECORD, RECORD_BYTES_MAX};
use crate::fs::{DirLock, FileSystem, WalFile};
use crate::options::{RecoveryMode, SyncPolicy, WalOptions, SEGMENT_BYTES_MIN};
use crate::recovery::{self, Recovered};
use crate::report::RecoveryReport;
use crate::segment::{
    encode_seal, segment_path, SegmentHeader, SkipRange, SparseIndex, SEAL_BYTES,
    SEGMENT_HEADER_BYTES,
};
use crate::stats::{Stats, WalStats};
use crate::ticket::AppendTicket;
use crate::watermark::Watermark;

/// File holding the log's identity.
pub(crate) const META_FILE: &str = "wal.meta";
/// Present while a truncation is in progress; open completes it.
pub(crate) const TRUNCATE_MARKER_FILE: &str = "truncate.pending";
/// Held while the log is open.
pub(crate) const LOCK_FILE: &str = "wal.lock";
const META_MAGIC: &[u8; 8] = b"KVWALMET";
const MARKER_MAGIC: &[u8; 8] = b"KVWALTRN";

/// One segment file as the running log sees it. Shared with readers.
#[derive(Debug)]
pub(crate) struct Segment {
    pub sequence: u64,
    pub first_id: u64,
    pub path: PathBuf,
    /// Last record id (`first_id - 1` when empty).
    last_id: AtomicU64,
    /// End of the last readable frame.
    end_offset: AtomicU64,
    /// Bytes in the file, seal included.
    file_bytes: AtomicU64,
    sealed: AtomicBool,
    /// `None` until built (sealed segments are not scanned at open).
    pub index: Mutex<Option<SparseIndex>>,
    /// Damaged regions readers jump over (SkipCorrupt).
    pub skips: Mutex<Vec<SkipRange>>,
    /// The blocks of a compressed sealed segment (`None`: a plain segment). Never changes: a
    /// segment that is compressed, or rewritten plain, gets a new `Segment`.
    pub compressed: Option<Arc<CompressedLayout>>,
    /// Compressing it did not make it smaller: later passes leave it plain.
    pub incompressible: AtomicBool,
}

impl Segment {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        sequence: u64,
        first_id: u64,
        path: PathBuf,
        last_id: u64,
        end_offset: u64,
        file_bytes: u64,
        sealed: bool,
        index_and_skips: Option<(SparseIndex, Vec<SkipRange>)>,
    ) -> Segment {
        let (index, skips) = match index_and_skips {
            Some((index, skips)) => (Some(index), skips),
            None => (None, Vec::new()),
        };
        Segment {
            sequence,
            first_id,
            path,
            last_id: AtomicU64::new(last_id),
            end_offset: AtomicU64::new(end_offset),
            file_bytes: AtomicU64::new(file_bytes),
            sealed: AtomicBool::new(sealed),
            index: Mutex::new(index),
            skips: Mutex::new(skips),
            compressed: None,
            incompressible: AtomicBool::new(false),
        }
    }

    /// A compressed sealed segment.
    pub(crate) fn new_compressed(
        sequence: u64,
        first_id: u64,
        path: PathBuf,
        layout: CompressedLayout,
        file_bytes: u64,
    ) -> Segment {
        let last_id = layout.last_id().unwrap_or(first_id - 1);
        Segment {
            sequence,
            first_id,
            path,
            last_id: AtomicU64::new(last_id),
            end_offset: AtomicU64::new(file_bytes),
            file_bytes: AtomicU64::new(file_bytes),
            sealed: AtomicBool::new(true),
            index: Mutex::new(None),
            skips: Mutex::new(Vec::new()),
            compressed: Some(Arc::new(layout)),
            incompressible: AtomicBool::new(false),
        }
    }
    pub(crate) fn last_id(&self) -> u64 {
        self.last_id.load(Ordering::Acquire)
    }
    pub(crate) fn end_offset(&self) -> u64 {
        self.end_offset.load(Ordering::Acquire)
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.last_id() < self.first_id
    }
    pub(crate) fn is_sealed(&self) -> bool {
        self.sealed.load(Ordering::Acquire)
    }
    pub(crate) fn file_bytes(&self) -> u64 {
        self.file_bytes.load(Ordering::Acquire)
    }
}

/// A segment as [`Wal::segments`] describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// The file.
    pub path: PathBuf,
    /// Its sequence number.
    pub sequence: u64,
    /// Bytes in the file.
    pub size_bytes: u64,
    /// First id the segment was created for.
    pub first_id: u64,
    /// Last id in it (`None` when empty).
    pub last_id: Option<u64>,
    /// Whether appends go here.
    pub is_active: bool,
    /// The codec of a compressed sealed segment; `None` for a plain one.
    pub codec: Option<SegmentCodec>,
    /// What the segment holds uncompressed: the size it has (or had) as a plain file.
    pub original_bytes: u64,
}

/// The writer's state, behind one mutex.
struct Writer {
    next_id: u64,
    /// Encoded frames not yet written.
    pending: Vec<u8>,
    /// (id, offset within `pending`) of each pending frame.
    pending_frames: Vec<(u64, usize)>,
    active: Arc<Segment>,
    active_file: Arc<dyn WalFile>,
    next_sequence: u64,
    /// Where the next frame goes in the active file.
    write_offset: u64,
    /// A `Batch` appender is waiting for the committer.
    commit_wanted: bool,
    last_sync: Instant,
    closed: bool,
}

impl Writer {
    fn pending_last_id(&self) -> Option<u64> {
        self.pending_frames.last().map(|&(id, _)| id)
    }
    fn active_has_records(&self) -> bool {
        !self.active.is_empty() || !self.pending_frames.is_empty()
    }
}

pub(crate) struct Shared {
    pub dir: PathBuf,
    pub fs: Arc<dyn FileSystem>,
    pub log_id: u64,
    pub segment_bytes_max: u64,
    pub compress_records_above: Option<usize>,
    pub compress_sealed_segments: Option<SegmentCodec>,
    pub sync_policy: SyncPolicy,
    pub recovery_mode: RecoveryMode,
    writer: Mutex<Writer>,
    commit_needed: Condvar,
    pub segments: RwLock<Vec<Arc<Segment>>>,
    /// Last id written (readable).
    pub last: Arc<Watermark>,
    /// Last id fsynced.
    pub durable: Arc<Watermark>,
    /// Bumped by every truncation, so iterators notice.
    pub truncations: AtomicU64,
    /// Held while segment files are replaced or removed (truncation, purging, the last step of
    /// compressing a segment), so a compressed file never lands after its segment was dropped.
    /// Taken before the writer lock when both are needed.
    pub maintenance: Mutex<()>,
    /// One compression pass at a time.
    pub compressing: Mutex<()>,
    pub stats: Stats,
    /// Why the log refuses writes, once a write or fsync failed. Set before anything else can
    /// observe the failure's consequences (see [`Shared::sync_and_advance`]).
    failure: Failure,
    /// The fsyncs of segments in flight, and the durable ids they proved that wait to be
    /// published (see [`Shared::sync_and_advance`]).
    fsyncs: Mutex<FsyncsInFlight>,
    _lock: Box<dyn DirLock>,
}

/// Segment fsyncs that have started and not reported, and the successes not yet published.
#[derive(Debug, Default)]
struct FsyncsInFlight {
    count: usize,
    /// `(target, generation)` of each success since the last publication.
    succeeded: Vec<(u64, Option<u64>)>,
}

/// The log's write failure, latched: the first reason wins and never clears.
#[derive(Debug, Default)]
struct Failure {
    failed: AtomicBool,
    reason: Mutex<Option<String>>,
}

impl Failure {
    /// Latches `reason` (unless a failure is already latched); returns the latched reason.
    fn set(&self, reason: String) -> String {
        let mut latched = lock(&self.reason);
        let reason = latched.get_or_insert(reason).clone();
        self.failed.store(true, Ordering::SeqCst);
        reason
    }
    fn is_set(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }
    fn reason(&self) -> Option<String> {
        if !self.is_set() {
            return None;
        }
        lock(&self.reason).clone()
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    fn writer(&self) -> MutexGuard<'_, Writer> {
        lock(&self.writer)
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
    fn poison(&self, reason: String) -> Error {
        let reason = self.failure.set(reason);
        self.durable.fail(&reason);
        Error::Poisoned(reason)
    }

    /// Runs a fallible I/O step of the write path; a failure poisons the log.
    fn guarded<T>(&self, step: Result<T>) -> Result<T> {
        step.map_err(|error| self.poison(error.to_string()))
    }

    /// Fails if the log no longer takes writes.
    fn check_writable(&self, writer: &Writer) -> Result<()> {
        if let Some(reason) = self.failure.reason() {
            return Err(Error::Poisoned(reason));
        }
        if writer.closed {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// `fdatasync`s `file`; if that succeeds, the durable id will reach `target` (within
    /// `generation`, when given: a truncation meanwhile voids the target).
    ///
    /// Linux reports a writeback error once per open file: after one fsync fails, another
    /// fsync of the same file (a roll's, `sync`'s, an `Always` append's) returns success for
    /// the pages that were dropped, and two fsyncs running at once share one report. So a
    /// success proves nothing while another fsync is in flight: the durable id is raised only
    /// when no fsync is in flight and none has failed, by whichever fsync finishes last. A
    /// failure is latched under the same lock, before any later success can be published.
    /// Returns `Ok` once this fsync succeeded; its target may be published later (callers
    /// that acknowledge wait on the durable watermark).
    fn sync_and_advance(
        &self,
        file: &dyn WalFile,
        path: &Path,
        target: u64,
        generation: Option<u64>,
        records: u64,
    ) -> Result<()> {
        {
            let mut fsyncs = lock(&self.fsyncs);
            if let Some(reason) = self.failure.reason() {
                return Err(Error::Poisoned(reason));
            }
            fsyncs.count += 1;
        }
        let started = Instant::now();
        let synced = file.sync_data().at(path);
        let mut fsyncs = lock(&self.fsyncs);
        fsyncs.count -= 1;
        if let Err(error) = synced {
            fsyncs.succeeded.clear();
            let reason = self.failure.set(error.to_string());
            drop(fsyncs);
            self.durable.fail(&reason);
            return Err(Error::Poisoned(reason));
        }
        if let Some(reason) = self.failure.reason() {
            fsyncs.succeeded.clear();
            return Err(Error::Poisoned(reason));
        }
        self.stats.on_fsync(started.elapsed(), records);
        fsyncs.succeeded.push((target, generation));
        if fsyncs.count == 0 {
            for (target, generation) in fsyncs.succeeded.drain(..) {
                match generation {
                    Some(generation) => self.durable.advance_in_generation(target, generation),
                    None => self.durable.advance(target),
                }
            }
        }
        Ok(())
    }

    /// Waits until the durable id reaches `target` (published by the last fsync in flight).
    fn wait_durable(&self, target: u64, generation: u64) -> Result<()> {
        AppendTicket::pending(target..=target, self.durable.clone(), generation)
            .wait()
            .map(drop)
    }

    /// Writes the pending frames to the active segment with one `write`.
    fn flush_pending(&self, writer: &mut Writer) -> Result<()> {
        if writer.pending.is_empty() {
            return Ok(());
        }
        self.check_writable(writer)?;
        let path = writer.active.path.clone();
        let written = writer
            .active_file
            .write_all_at(&writer.pending, writer.write_offset)
            .at(&path);
        self.guarded(written)?;
        let base = writer.write_offset;
        {
            let mut index = lock(&writer.active.index);
            let index = index.get_or_insert_with(SparseIndex::default);
            for &(id, offset) in &writer.pending_frames {
                index.observe(id, base + offset as u64);
            }
        }
        let last_id = writer.pending_last_id().expect("pending frames");
        writer.write_offset += writer.pending.len() as u64;
        writer
            .active
            .end_offset
            .store(writer.write_offset, Ordering::Release);
        writer
            .active
            .file_bytes
            .store(writer.write_offset, Ordering::Release);
        writer.active.last_id.store(last_id, Ordering::Release);
        self.stats.on_write(writer.pending.len() as u64);
        writer.pending.clear();
        writer.pending_frames.clear();
        self.last.advance(last_id);
        Ok(())
    }

    /// Makes room for a frame of `frame_bytes`, rolling the segment if it would overflow.
    fn reserve(&self, writer: &mut Writer, frame_bytes: usize) -> Result<()> {
        let projected = writer.write_offset
            + writer.pending.len() as u64
            + frame_bytes as u64
            + SEAL_BYTES as u64;
        if projected > self.segment_bytes_max && writer.active_has_records() {
            let first_id = writer.next_id;
            self.roll(writer, first_id)?;
        }
        Ok(())
    }

    /// Seals the active segment (write, seal, fsync) and starts a new one at `first_id`. An
    /// empty active segment is replaced instead of sealed.
    fn roll(&self, writer: &mut Writer, first_id: u64) -> Result<()> {
        self.flush_pending(writer)?;
        let old = writer.active.clone();
        if old.is_empty() {
            let removed = self.fs.remove_file(&old.path).at(&old.path);
            self.guarded(removed)?;
            let sequence = old.sequence;
            let segment = self.create_segment(writer, sequence, first_id)?;
            let mut segments = self.segments_write();
            segments.pop();
            segments.push(segment);
            return Ok(());
        }
        let mut seal = Vec::with_capacity(SEAL_BYTES);
        let last_id = old.last_id();
        encode_seal(&mut seal, last_id, last_id - old.first_id + 1);
        let sealed = writer
            .active_file
            .write_all_at(&seal, writer.write_offset)
            .at(&old.path);
        self.guarded(sealed)?;
        self.sync_and_advance(&*writer.active_file, &old.path, last_id, None, 0)?;
        old.file_bytes
            .store(writer.write_offset + SEAL_BYTES as u64, Ordering::Release);
        old.sealed.store(true, Ordering::Release);
        let sequence = writer.next_sequence;
        let segment = self.create_segment(writer, sequence, first_id)?;
        self.segments_write().push(segment);
        Ok(())
    }

    /// Creates, fsyncs and installs a new active segment (and fsyncs the directory).
    fn create_segment(
        &self,
        writer: &mut Writer,
        sequence: u64,
        first_id: u64,
    ) -> Result<Arc<Segment>> {
        let path = segment_path(&self.dir, sequence, first_id);
        let header = SegmentHeader {
            log_id: self.log_id,
            sequence,
            first_id,
            codec: None,
        };
        let created = create_segment_file(&*self.fs, &self.dir, &path, &header);
        let file = self.guarded(created)?;
        let segment = Arc::new(Segment::new(
            sequence,
            first_id,
            path,
            first_id - 1,
            SEGMENT_HEADER_BYTES as u64,
            SEGMENT_HEADER_BYTES as u64,
            false,
            Some((SparseIndex::default(), Vec::new())),
        ));
        writer.active = segment.clone();
        writer.active_file = file;
        writer.write_offset = SEGMENT_HEADER_BYTES as u64;
        writer.next_sequence = sequence + 1;
        writer.next_id = first_id;
        Ok(segment)
    }

    /// Queues encoded frames (`encode_into` appends frame `index` with id `id`).
    fn submit(
        self: &Arc<Self>,
        count: usize,
        frame_bytes: impl Fn(usize) -> usize,
        first_id: Option<u64>,
        encode_into: impl Fn(usize, u64, &mut Vec<u8>),
        policy: SyncPolicy,
    ) -> Result<AppendTicket> {
        if count == 0 {
            return Err(Error::InvalidArgument(
                "an append needs at least one record".to_owned(),
            ));
        }
        let mut writer = self.writer();
        self.check_writable(&writer)?;
        failpoint::hit(failpoint::WAL_BEFORE_APPEND).at(&self.dir)?;
        if let Some(first_id) = first_id {
            if first_id < writer.next_id {
                return Err(Error::IdConflict {
                    first_id,
                    next_id: writer.next_id,
                });
            }
            if first_id > writer.next_id {
                // The history continues after a gap: start a segment whose header says so.
                self.roll(&mut writer, first_id)?;
            }
        }
        let first = writer.next_id;
        for index in 0..count {
            self.reserve(&mut writer, frame_bytes(index))?;
            let id = writer.next_id;
            let offset = writer.pending.len();
            encode_into(index, id, &mut writer.pending);
            writer.pending_frames.push((id, offset));
            writer.next_id += 1;
        }
        let last = writer.next_id - 1;
        self.stats.on_append(count as u64);
        match policy {
            SyncPolicy::Never => {
                self.flush_pending(&mut writer)?;
                Ok(AppendTicket::done(first..=last))
            }
            SyncPolicy::Interval(interval) => {
                self.flush_pending(&mut writer)?;
                if writer.last_sync.elapsed() >= interval {
                    writer.commit_wanted = true;
                    self.commit_needed.notify_one();
                }
                Ok(AppendTicket::done(first..=last))
            }
            SyncPolicy::Batch => {
                // Once `commit_wanted` is set the committer is bound to see it before it waits
                // again (only it clears the flag, under this lock), so appenders queued behind
                // the first one skip the notify, a `futex` syscall each.
                if !writer.commit_wanted {
                    writer.commit_wanted = true;
                    self.commit_needed.notify_one();
                }
                Ok(AppendTicket::pending(
                    first..=last,
                    self.durable.clone(),
                    self.durable.generation(),
                ))
            }
            SyncPolicy::Always => {
                self.flush_pending(&mut writer)?;
                let file = writer.active_file.clone();
                let path = writer.active.path.clone();
                let generation = self.durable.generation();
                drop(writer);
                failpoint::hit(failpoint::WAL_AFTER_WRITE_BEFORE_FSYNC)
                    .at(&path)
                    .map_err(|error| self.poison(error.to_string()))?;
                self.sync_and_advance(&*file, &path, last, Some(generation), count as u64)?;
                self.wait_durable(last, generation)?;
                failpoint::hit(failpoint::WAL_AFTER_FSYNC_BEFORE_ACK)
                    .map_err(|error| self.poison(error.to_string()))?;
                Ok(AppendTicket::done(first..=last))
            }
        }
    }

    /// The committer: writes and fsyncs whatever `Batch` appenders (and the interval) need.
    fn run_committer(self: Arc<Self>) {
        let mut writer = self.writer();
        loop {
            let interval = match self.sync_policy {
                SyncPolicy::Interval(interval) => Some(interval),
                _ => None,
            };
            let unsynced = self.last.get() > self.durable.get() || !writer.pending.is_empty();
            let interval_due =
                interval.is_some_and(|interval| unsynced && writer.last_sync.elapsed() >= interval);
            if self.failure.is_set() || (writer.closed && !unsynced) {
                return;
            }
            if !(writer.commit_wanted || interval_due || writer.closed) {
                writer = match interval {
                    Some(interval) => {
                        self.commit_needed
                            .wait_timeout(writer, interval)
                            .unwrap_or_else(|poisoned| poisoned.into_inner())
                            .0
                    }
                    None => self
                        .commit_needed
                        .wait(writer)
                        .unwrap_or_else(|poisoned| poisoned.into_inner()),
                };
                continue;
            }
            writer.commit_wanted = false;
            let batch_records = writer.pending_frames.len() as u64;
            if self.flush_pending(&mut writer).is_err() {
                return;
            }
            let target = self.last.get();
            writer.last_sync = Instant::now();
            if target <= self.durable.get() {
                continue;
            }
            let file = writer.active_file.clone();
            let path = writer.active.path.clone();
            let generation = self.durable.generation();
            drop(writer);
            // The appenders are released (by the advance) before the committer takes the lock
            // they are about to ask for. A truncation meanwhile (a new generation) voids this
            // fsync's target.
            let synced = failpoint::hit(failpoint::WAL_AFTER_WRITE_BEFORE_FSYNC)
                .at(&path)
                .map_err(|error| self.poison(error.to_string()))
                .and_then(|()| {
                    self.sync_and_advance(
                        &*file,
                        &path,
                        target,
                        Some(generation),
                        batch_records.max(1),
                    )
                });
            if synced.is_err() {
                return;
            }
            writer = self.writer();
            if self.durable.generation() != generation {
                writer.commit_wanted = true;
            }
            if let Err(error) = failpoint::hit(failpoint::WAL_AFTER_FSYNC_BEFORE_ACK) {
                self.poison(error.to_string());
                return;
            }
        }
    }
}

fn create_segment_file(
    fs: &dyn FileSystem,
    dir: &Path,
    path: &Path,
    header: &SegmentHeader,
) -> Result<Arc<dyn WalFile>> {
    let file = fs.create_new(path).at(path)?;
    file.write_all_at(&header.encode(), 0).at(path)?;
    file.sync_data().at(path)?;
    failpoint::hit(failpoint::WAL_ROLL_BEFORE_DIR_FSYNC).at(dir)?;
    fs.sync_dir(dir).at(dir)?;
    Ok(file)
}

fn encode_meta(log_id: u64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(24);
    bytes.extend_from_slice(META_MAGIC);
    bytes.extend_from_slice(&1u32.to_le_bytes());
    bytes.extend_from_slice(&log_id.to_le_bytes());
    let crc = frame::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes
}

fn decode_meta(bytes: &[u8]) -> Option<u64> {
    if bytes.len() != 24 || &bytes[..8] != META_MAGIC || bytes[8..12] != 1u32.to_le_bytes() {
        return None;
    }
    let crc = u32::from_le_bytes(bytes[20..24].try_into().ok()?);
    (frame::crc32c(&bytes[..20]) == crc)
        .then(|| u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes")))
}

fn encode_marker(after_id: u64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(20);
    bytes.extend_from_slice(MARKER_MAGIC);
    bytes.extend_from_slice(&after_id.to_le_bytes());
    let crc = frame::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes
}

fn decode_marker(bytes: &[u8]) -> Option<u64> {
    if bytes.len() != 20 || &bytes[..8] != MARKER_MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(bytes[16..20].try_into().ok()?);
    (frame::crc32c(&bytes[..16]) == crc)
        .then(|| u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")))
}

fn read_small_file(fs: &dyn FileSystem, path: &Path) -> Result<Option<Vec<u8>>> {
    match fs.open(path) {
        Ok(file) => {
            let len = file.size_bytes().at(path)?.min(4096);
            Ok(Some(crate::fs::read_range(&*file, 0, len).at(path)?))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error).at(path),
    }
}

/// A segmented, checksummed, group-committed write-ahead log of opaque records.
///
/// Cheap to share: wrap it in an [`Arc`]; every method takes `&self`. See the crate docs for
/// a complete example.
#[derive(Debug)]
pub struct Wal {
    pub(crate) shared: Arc<Shared>,
    committer: Mutex<Option<JoinHandle<()>>>,
}

impl Wal {
    /// Opens (or creates) the log in `dir`, recovering it under `options.recovery_mode`.
    ///
    /// Returns the log and a report of what recovery found and did. Fails with
    /// [`Error::Corrupt`] when the mode does not allow the damage found to be repaired, and
    /// with [`Error::Locked`] when another process holds the directory.
    pub fn open(dir: impl AsRef<Path>, options: WalOptions) -> Result<(Wal, RecoveryReport)> {
        let dir = dir.as_ref().to_owned();
        if options.segment_bytes_max < SEGMENT_BYTES_MIN {
            return Err(Error::InvalidArgument(format!(
                "segment size {} is below the minimum of {SEGMENT_BYTES_MIN} bytes",
                options.segment_bytes_max
            )));
        }
        if options.first_id == 0 {
            return Err(Error::InvalidArgument(
                "ids start at 1; first_id 0 is invalid".to_owned(),
            ));
        }
        let fs = options.file_system.clone();
        fs.create_dir_all(&dir).at(&dir)?;
        let lock_path = dir.join(LOCK_FILE);
        let dir_lock = fs
            .try_lock(&lock_path)
            .map_err(|error| match error.kind() {
                std::io::ErrorKind::WouldBlock => Error::Locked(dir.clone()),
                _ => Error::Io {
                    path: lock_path.clone(),
                    source: error,
                },
            })?;
        let mut report = RecoveryReport {
            mode: options.recovery_mode,
            ..RecoveryReport::default()
        };
        let found = recovery::list_segments(&*fs, &dir, &mut report)?;
        let meta_path = dir.join(META_FILE);
        let log_id = match read_small_file(&*fs, &meta_path)? {
            Some(bytes) => decode_meta(&bytes).ok_or_else(|| Error::Corrupt {
                segment: meta_path.clone(),
                offset: 0,
                reason: "the log's identity file is damaged".to_owned(),
            })?,
            None if found.is_empty() => {
                let log_id = rand::thread_rng().gen_range(1..u64::MAX);
                write_file_atomic(&*fs, &dir, META_FILE, &encode_meta(log_id))?;
                report.created = true;
                log_id
            }
            None => {
                return Err(Error::Corrupt {
                    segment: meta_path,
                    offset: 0,
                    reason: "the log's identity file is missing but segments exist".to_owned(),
                })
            }
        };
        let Recovered {
            mut segments,
            max_id_seen,
            next_sequence,
        } = recovery::recover(&*fs, log_id, &found, options.recovery_mode, &mut report)?;

        // The active segment: the last one, unless it is sealed or the ids must jump.
        let next_id = segments
            .last()
            .map_or(options.first_id, |segment| segment.last_id() + 1)
            .max(max_id_seen + 1);
        let reuse_last = segments.last().is_some_and(|segment| {
            !segment.sealed.load(Ordering::Acquire) && segment.last_id() + 1 == next_id
        });
        let (active, active_file, write_offset) = if reuse_last {
            let segment = segments.last().expect("segment").clone();
            let file = fs.open(&segment.path).at(&segment.path)?;
            file.sync_data().at(&segment.path)?;
            let end = segment.end_offset();
            (segment, file, end)
        } else {
            // An empty, unsealed last segment is replaced by the new one.
            let mut sequence = next_sequence;
            if let Some(last) = segments.last() {
                if last.is_empty() && !last.sealed.load(Ordering::Acquire) {
                    fs.remove_file(&last.path).at(&last.path)?;
                    sequence = last.sequence;
                    segments.pop();
                }
            }
            // What open replays must be durable before the log serves: a crash after a roll
            // wrote the seal but before its fdatasync leaves a sealed last segment whose
            // bytes may still be only in the page cache. (Segments before the last were
            // fsynced before the next one was created.)
            if let Some(last) = segments.last() {
                let file = fs.open(&last.path).at(&last.path)?;
                file.sync_data().at(&last.path)?;
            }
            let header = SegmentHeader {
                log_id,
                sequence,
                first_id: next_id,
                codec: None,
            };
            let path = segment_path(&dir, sequence, next_id);
            let file = create_segment_file(&*fs, &dir, &path, &header)?;
            let segment = Arc::new(Segment::new(
                sequence,
                next_id,
                path,
                next_id - 1,
                SEGMENT_HEADER_BYTES as u64,
                SEGMENT_HEADER_BYTES as u64,
                false,
                Some((SparseIndex::default(), Vec::new())),
            ));
            segments.push(segment.clone());
            (segment, file, SEGMENT_HEADER_BYTES as u64)
        };
        fs.sync_dir(&dir).at(&dir)?;
        let last_id = active.last_id();
        let next_sequence = active.sequence + 1;
        let writer = Writer {
            next_id,
            pending: Vec::new(),
            pending_frames: Vec::new(),
            active,
            active_file,
            next_sequence,
            write_offset,
            commit_wanted: false,
            last_sync: Instant::now(),
            closed: false,
        };
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            fs: fs.clone(),
            log_id,
            segment_bytes_max: options.segment_bytes_max,
            compress_records_above: options.compress_records_above,
            compress_sealed_segments: options.compress_sealed_segments,
            sync_policy: options.sync_policy,
            recovery_mode: options.recovery_mode,
            writer: Mutex::new(writer),
            commit_needed: Condvar::new(),
            segments: RwLock::new(segments),
            last: Arc::new(Watermark::new(last_id)),
            durable: Arc::new(Watermark::new(last_id)),
            truncations: AtomicU64::new(0),
            maintenance: Mutex::new(()),
            compressing: Mutex::new(()),
            stats: Stats::default(),
            failure: Failure::default(),
            fsyncs: Mutex::new(FsyncsInFlight::default()),
            _lock: dir_lock,
        });
        let committer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("kv-wal-commit".to_owned())
                .spawn(move || shared.run_committer())
                .at(&dir)?
        };
        let wal = Wal {
            shared,
            committer: Mutex::new(Some(committer)),
        };

        // A truncation interrupted by a crash is finished before anything else.
        let marker_path = dir.join(TRUNCATE_MARKER_FILE);
        if let Some(bytes) = read_small_file(&*fs, &marker_path)? {
            if let Some(after_id) = decode_marker(&bytes) {
                wal.truncate_after_inner(after_id)?;
                report.completed_truncation = Some(after_id);
            }
            fs.remove_file(&marker_path).at(&marker_path)?;
            fs.sync_dir(&dir).at(&dir)?;
        }
        report.segments = wal.shared.segments_read().len();
        report.first_id = wal.first_id();
        report.last_id = wal.last_id();
        report.next_id = wal.next_id();
        Ok((wal, report))
    }

    /// Appends one record under the log's sync policy; returns its id once the policy is met.
    pub fn append(&self, payload: &[u8]) -> Result<u64> {
        self.append_with(payload, self.shared.sync_policy)
    }

    /// Appends one record under `policy`.
    pub fn append_with(&self, payload: &[u8], policy: SyncPolicy) -> Result<u64> {
        Ok(*self.append_batch_with(&[payload], policy)?.start())
    }

    /// Appends records atomically with respect to other appenders (consecutive ids), under the
    /// log's sync policy. Returns their ids.
    pub fn append_batch<P: AsRef<[u8]>>(&self, payloads: &[P]) -> Result<RangeInclusive<u64>> {
        self.append_batch_with(payloads, self.shared.sync_policy)
    }

    /// Appends records under `policy`; returns their ids once the policy is met.
    pub fn append_batch_with<P: AsRef<[u8]>>(
        &self,
        payloads: &[P],
        policy: SyncPolicy,
    ) -> Result<RangeInclusive<u64>> {
        self.submit_with(payloads, policy)?.wait()
    }

    /// Queues records and returns at once with a ticket holding their ids. The ticket resolves
    /// when the log's sync policy is met: `.wait()` blocks the thread, `.await` suspends an async
    /// task (no runtime needed by this crate). Under [`SyncPolicy::Always`] the fsync runs
    /// before `submit` returns.
    pub fn submit<P: AsRef<[u8]>>(&self, payloads: &[P]) -> Result<AppendTicket> {
        self.submit_with(payloads, self.shared.sync_policy)
    }

    /// [`Wal::submit`] under an explicit policy.
    pub fn submit_with<P: AsRef<[u8]>>(
        &self,
        payloads: &[P],
        policy: SyncPolicy,
    ) -> Result<AppendTicket> {
        for payload in payloads {
            let len = payload.as_ref().len();
            if len > RECORD_BYTES_MAX {
                return Err(Error::RecordTooLarge {
                    len,
                    max: RECORD_BYTES_MAX,
                });
            }
        }
        // Compression happens here, before the writer lock is taken.
        let compressed: Vec<Option<Vec<u8>>> = payloads
            .iter()
            .map(|payload| {
                let payload = payload.as_ref();
                self.shared
                    .compress_records_above
                    .filter(|&threshold| payload.len() >= threshold)
                    .and_then(|_| frame::compress_payload(payload))
            })
            .collect();
        let stored = |index: usize| -> (u8, &[u8]) {
            match &compressed[index] {
                Some(bytes) => (frame::FLAG_LZ4, bytes),
                None => (0, payloads[index].as_ref()),
            }
        };
        self.shared.submit(
            payloads.len(),
            |index| FRAME_HEADER_BYTES + stored(index).1.len(),
            None,
            |index, id, out| {
                let (flags, bytes) = stored(index);
                frame::encode_flagged(out, KIND_RECORD, flags, id, bytes)
            },
            policy,
        )
    }

    /// Appends frames exactly as another log encoded them (replication): every frame's CRC and
    /// the continuity of ids are checked first, and the first id must be the log's next id or
    /// later (a later id starts a new segment: the source log had a gap). Nothing is written if
    /// any check fails.
    pub fn append_frames(&self, frames: &[u8], policy: SyncPolicy) -> Result<AppendTicket> {
        let decoded = frame::decode_all(frames).map_err(|(offset, reason)| Error::Corrupt {
            segment: PathBuf::from("<frames to append>"),
            offset: offset as u64,
            reason,
        })?;
        let Some(first) = decoded.first() else {
            return Err(Error::InvalidArgument("no frames to append".to_owned()));
        };
        let mut offsets = Vec::with_capacity(decoded.len());
        let mut offset = 0usize;
        for frame in &decoded {
            offsets.push((offset, frame.encoded_len()));
            offset += frame.encoded_len();
        }
        self.shared.submit(
            decoded.len(),
            |index| offsets[index].1,
            Some(first.id),
            |index, id, out| {
                debug_assert_eq!(id, decoded[index].id);
                let (start, len) = offsets[index];
                out.extend_from_slice(&frames[start..start + len]);
            },
            policy,
        )
    }

    /// Writes and fsyncs everything appended so far; returns the durable id.
    pub fn sync(&self) -> Result<u64> {
        let shared = &self.shared;
        let mut writer = shared.writer();
        shared.flush_pending(&mut writer)?;
        shared.check_writable(&writer)?;
        let target = shared.last.get();
        if target <= shared.durable.get() {
            return Ok(shared.durable.get());
        }
        let path = writer.active.path.clone();
        let generation = shared.durable.generation();
        shared.sync_and_advance(&*writer.active_file, &path, target, None, 0)?;
        shared.wait_durable(target, generation)?;
        Ok(shared.durable.get())
    }

    /// Makes the log continue at `next_id`, skipping the ids between its current next id and
    /// it: the active segment is sealed (or, when empty, replaced) and a new one starts at
    /// `next_id`, durably (its name carries its first id). Returns whether it moved. The ids
    /// skipped are never handed out, and records already in the log stay readable. For a
    /// caller whose state runs ahead of the log — a snapshot that covers ids the log does not
    /// hold (installed from a leader, or the log cut back by a power loss) — so that a new
    /// record never takes an id the snapshot already covers.
    pub fn skip_to(&self, next_id: u64) -> Result<bool> {
        let shared = &self.shared;
        let mut writer = shared.writer();
        shared.check_writable(&writer)?;
        shared.flush_pending(&mut writer)?;
        if next_id <= writer.next_id {
            return Ok(false);
        }
        shared.roll(&mut writer, next_id)?;
        Ok(true)
    }

    /// Seals the active segment now and starts a new one, if it holds records and at least
    /// `min_bytes`; returns whether it did. For compaction: only sealed segments can be
    /// purged, so a log whose active segment is large and already covered by a snapshot seals
    /// it to let [`Wal::purge_before`] reclaim it. The seal is fsynced like a roll.
    pub fn seal_active(&self, min_bytes: u64) -> Result<bool> {
        let shared = &self.shared;
        let mut writer = shared.writer();
        shared.check_writable(&writer)?;
        let bytes = writer.write_offset + writer.pending.len() as u64;
        if !writer.active_has_records() || bytes < min_bytes {
            return Ok(false);
        }
        let first_id = writer.next_id;
        shared.roll(&mut writer, first_id)?;
        Ok(true)
    }

    /// Drops every record after `after_id` (replication divergence). Crash-safe: a marker file
    /// is made durable first, so a crash at any point leaves either the old log or, once open
    /// completes the marked truncation, the new one. The next append gets `after_id + 1`: the
    /// caller is replacing the suffix with another history's records for the same ids, as Raft
    /// and Kafka followers do. Ids of records that were never truncated are never reused.
    pub fn truncate_after(&self, after_id: u64) -> Result<()> {
        let shared = &self.shared;
        {
            let mut writer = shared.writer();
            shared.check_writable(&writer)?;
            shared.flush_pending(&mut writer)?;
            if after_id >= writer.next_id - 1 {
                return Ok(());
            }
            let marked = write_file_atomic(
                &*shared.fs,
                &shared.dir,
                TRUNCATE_MARKER_FILE,
                &encode_marker(after_id),
            );
            shared.guarded(marked)?;
        }
        self.truncate_after_inner(after_id)?;
        let marker = shared.dir.join(TRUNCATE_MARKER_FILE);
        let _writer = shared.writer();
        let removed = shared
            .fs
            .remove_file(&marker)
            .at(&marker)
            .and_then(|()| shared.fs.sync_dir(&shared.dir).at(&shared.dir));
        shared.guarded(removed)
    }

    fn truncate_after_inner(&self, after_id: u64) -> Result<()> {
        let shared = &self.shared;
        let _maintenance = lock(&shared.maintenance);
        let mut writer = shared.writer();
        shared.flush_pending(&mut writer)?;
        let result = self.cut_segments(&mut writer, after_id);
        shared.guarded(result)?;
        shared.truncations.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    fn cut_segments(&self, writer: &mut Writer, after_id: u64) -> Result<()> {
        let shared = &self.shared;
        let mut segments = shared.segments_write();
        // Newest first, so a crash leaves a prefix (and the marker finishes the job).
        while segments.len() > 1
            && segments
                .last()
                .is_some_and(|segment| segment.first_id > after_id)
        {
            let segment = segments.pop().expect("segment");
            shared.remove_segment_files(&segment)?;
        }
        failpoint::hit(failpoint::WAL_TRUNCATE_BEFORE_CUT).at(&shared.dir)?;
        let target = segments.last().expect("a log always has a segment").clone();
        if target.first_id > after_id {
            // Everything goes: a fresh segment takes the same sequence, starting at after_id + 1.
            shared.remove_segment_files(&target)?;
            shared.fs.sync_dir(&shared.dir).at(&shared.dir)?;
            segments.pop();
            let sequence = target.sequence;
            drop(segments);
            let segment = shared.create_segment(writer, sequence, after_id + 1)?;
            shared.segments_write().push(segment);
        } else if target.compressed.is_some() {
            // A compressed segment is rewritten plain, cut after `after_id` and unsealed: it
            // becomes the active segment. A crash before the compressed file is removed leaves
            // both; open keeps the plain one, and the marker finishes the truncation.
            let file = shared.fs.open(&target.path).at(&target.path)?;
            let frames = crate::compress::frames_through(&*file, &target, after_id)?;
            drop(file);
            let header = SegmentHeader {
                log_id: shared.log_id,
                sequence: target.sequence,
                first_id: target.first_id,
                codec: None,
            };
            let rewrite = write_plain_segment(&*shared.fs, &shared.dir, header, &frames, None)?;
            shared.fs.remove_file(&target.path).at(&target.path)?;
            shared.fs.sync_dir(&shared.dir).at(&shared.dir)?;
            let image_len = rewrite.image.len() as u64;
            let scanned = crate::segment::scan(&rewrite.image, target.first_id);
            let last_id = scanned.clean_last_id.unwrap_or(target.first_id - 1);
            let segment = Arc::new(Segment::new(
                target.sequence,
                target.first_id,
                rewrite.path,
                last_id,
                image_len,
                image_len,
                false,
                Some((scanned.index, Vec::new())),
            ));
            *segments.last_mut().expect("the target") = segment.clone();
            writer.active = segment;
            writer.active_file = rewrite.file;
            writer.write_offset = image_len;
            writer.next_sequence = target.sequence + 1;
            writer.next_id = last_id + 1;
        } else {
            let file = shared.fs.open(&target.path).at(&target.path)?;
            let cut = if after_id >= target.last_id() {
                target.end_offset()
            } else {
                crate::read::offset_after(file.clone(), &target, after_id)?
            };
            file.set_len(cut).at(&target.path)?;
            file.sync_data().at(&target.path)?;
            shared.fs.sync_dir(&shared.dir).at(&shared.dir)?;
            if let Some(index) = lock(&target.index).as_mut() {
                index.truncate_after(after_id);
            }
            lock(&target.skips).retain(|skip| skip.to <= cut);
            let last_id = after_id.min(target.last_id());
            target.last_id.store(last_id, Ordering::Release);
            target.end_offset.store(cut, Ordering::Release);
            target.file_bytes.store(cut, Ordering::Release);
            target.sealed.store(false, Ordering::Release);
            writer.active = target.clone();
            writer.active_file = file;
            writer.write_offset = cut;
            writer.next_sequence = target.sequence + 1;
            writer.next_id = last_id + 1;
        }
        let last_id = writer.next_id - 1;
        shared.last.reset(last_id);
        // Always a new generation: appends still waiting for ids that were just dropped end
        // with `Error::Truncated` instead of waiting for ids that now mean other records.
        shared.durable.reset(shared.durable.get().min(last_id));
        Ok(())
    }

    /// Removes whole segments whose records all precede `before_id` (after a snapshot): log
    /// compaction. The active segment is never removed. Returns the paths removed.
    pub fn purge_before(&self, before_id: u64) -> Result<Vec<PathBuf>> {
        let shared = &self.shared;
        let _maintenance = lock(&shared.maintenance);
        // Out of the list under the lock, off the disk after it: deleting a large file can
        // take milliseconds, and readers (and the id lookups of every write path) take the
        // segment list's read lock. Oldest first, so a crash leaves a log without a hole.
        let purged: Vec<Arc<Segment>> = {
            let mut segments = shared.segments_write();
            let count = segments
                .iter()
                .take(segments.len().saturating_sub(1))
                .take_while(|segment| segment.last_id() < before_id)
                .count();
            segments.drain(..count).collect()
        };
        let mut removed = Vec::with_capacity(purged.len());
        for segment in purged {
            shared.remove_segment_files(&segment)?;
            removed.push(segment.path.clone());
        }
        if !removed.is_empty() {
            shared.fs.sync_dir(&shared.dir).at(&shared.dir)?;
        }
        Ok(removed)
    }

    /// The segments, oldest first.
    pub fn segments(&self) -> Vec<SegmentInfo> {
        let segments = self.shared.segments_read();
        let last_index = segments.len().saturating_sub(1);
        segments
            .iter()
            .enumerate()
            .map(|(position, segment)| {
                let size_bytes = segment.file_bytes();
                SegmentInfo {
                    path: segment.path.clone(),
                    sequence: segment.sequence,
                    size_bytes,
                    first_id: segment.first_id,
                    last_id: (!segment.is_empty()).then(|| segment.last_id()),
                    is_active: position == last_index,
                    codec: segment.compressed.as_ref().map(|layout| layout.codec),
                    original_bytes: segment
                        .compressed
                        .as_ref()
                        .map_or(size_bytes, |layout| layout.original_bytes()),
                }
            })
            .collect()
    }

    /// The first id still in the log, if any record is.
    pub fn first_id(&self) -> Option<u64> {
        let segments = self.shared.segments_read();
        segments
            .iter()
            .find(|segment| !segment.is_empty())
            .map(|segment| segment.first_id)
    }

    /// Where the log starts: the id of its first record, or of the first record it will hold
    /// when it is empty. Unlike [`Wal::next_id`] it does not move when appends are queued.
    pub fn start_id(&self) -> u64 {
        self.shared
            .segments_read()
            .first()
            .map_or(1, |segment| segment.first_id)
    }

    /// The last id written (readable), if any.
    pub fn last_id(&self) -> Option<u64> {
        let last = self.shared.last.get();
        let first = self
            .shared
            .segments_read()
            .first()
            .map_or(1, |segment| segment.first_id);
        (last >= first && last > 0).then_some(last)
    }

    /// The id the next append will get.
    pub fn next_id(&self) -> u64 {
        self.shared.writer().next_id
    }

    /// The highest id known to be on stable storage (0 when none).
    pub fn durable_id(&self) -> u64 {
        self.shared.durable.get()
    }

    /// The last-written watermark: wait on it to follow the tail.
    pub fn last_watermark(&self) -> &Arc<Watermark> {
        &self.shared.last
    }

    /// The durable watermark: wait on it to learn when ids reach stable storage.
    pub fn durable_watermark(&self) -> &Arc<Watermark> {
        &self.shared.durable
    }

    /// The configured segment size.
    pub fn segment_bytes_max(&self) -> u64 {
        self.shared.segment_bytes_max
    }

    /// The default sync policy.
    pub fn sync_policy(&self) -> SyncPolicy {
        self.shared.sync_policy
    }

    /// The recovery mode the log was opened with.
    pub fn recovery_mode(&self) -> RecoveryMode {
        self.shared.recovery_mode
    }

    /// The file system the log writes through (snapshots and other durable files beside the
    /// log use the same one, see [`crate::durable`]).
    pub fn file_system(&self) -> &Arc<dyn FileSystem> {
        &self.shared.fs
    }

    /// The directory the log lives in.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Counters: appends, writes, fsyncs, group-commit batch sizes.
    pub fn stats(&self) -> WalStats {
        self.shared.stats.snapshot()
    }

    /// Why the log refuses writes, if it does.
    pub fn poisoned(&self) -> Option<String> {
        self.shared.failure.reason()
    }

    /// Writes and fsyncs everything, stops the committer and refuses further appends. Reads keep
    /// working. Idempotent; also run (ignoring errors) on drop.
    pub fn close(&self) -> Result<()> {
        let result = if self.poisoned().is_none() {
            self.sync().map(|_| ())
        } else {
            Ok(())
        };
        {
            let mut writer = self.shared.writer();
            writer.closed = true;
            self.shared.commit_needed.notify_all();
        }
        if let Some(handle) = lock(&self.committer).take() {
            let _ = handle.join();
        }
        self.shared.durable.fail(crate::watermark::CLOSED);
        result
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        let _ = self.close();
    }
}
