//! The write path: queueing frames, writing them with one `write`, rolling segments.
//!
//! Writers encode frames into a pending buffer under the writer mutex. Who writes and fsyncs
//! that buffer depends on the sync policy: under `Never` and `Interval` the appending thread
//! writes it at once (the committer fsyncs on the interval); under `Batch` and `Always` one
//! commit at a time writes and fsyncs it (`commit_once`): an append that found the log idle
//! leads its write group, and its ticket writes and fsyncs on the thread that waits on it
//! (`lead_commit`); everything else goes to the committer thread (`committer.rs`), which gives
//! each queued `Always` append an fsync of its own. A commit's `write`, like its `fdatasync`,
//! runs with the mutex released (`write_unlocked`, one at a time, `Writer::writing`): an
//! append never waits on the disk for another's write — a disk that hangs holds the thread
//! whose commit it is, and appends queue meanwhile (kvd's async workers submit; a hung disk
//! once held every one of them). Segments roll under the mutex, after any such write has
//! ended (`Shared::settle`): the new segment's file is made under a temporary name (a full
//! disk fails the roll here, with nothing changed), the old segment is sealed and fsynced, and
//! only then does the new one take its name and become active, so only the last segment ever
//! holds unsynced bytes.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::Instant;

use crate::durability::Fsync;
use crate::error::{is_out_of_space, Error, IoContext, Result};
use crate::fs::{FileSystem, WalFile};
use crate::mutex::lock;
use crate::options::SyncPolicy;
use crate::segment_file::{
    encode_mark, encode_seal, segment_path, SegmentHeader, MARK_BYTES, SEAL_BYTES,
    SEGMENT_HEADER_BYTES,
};
use crate::segment_scan::SparseIndex;
use crate::segments::Segment;
use crate::shared::Shared;
use crate::ticket::{AppendTicket, WriteGroup};
use crate::watermark::Watermark;
use crate::writer::{Leader, Writer};

/// Refuses `count` records from id `start` if they pass the last id: the next id after the
/// last record must be a `u64` too. Past it, ids would wrap to 0 and reuse the first ones
/// (before, a release build did so and a reopen lost the records; a debug build panicked).
pub(crate) fn check_id_room(start: u64, count: usize) -> Result<()> {
    if start.checked_add(count as u64).is_none() {
        return Err(Error::InvalidArgument(format!(
            "record ids end at {}: {count} record(s) from id {start} do not fit",
            u64::MAX - 1
        )));
    }
    Ok(())
}

/// What an `Error::OutOfSpace` of an append says after its cause.
const NOT_APPENDED_RETRY: &str =
    "; the write was not appended, and writes are taken again once there is room";

impl Shared {
    /// Writes the pending frames to the active segment with one `write`, under the lock.
    pub(crate) fn flush_pending(&self, writer: &mut Writer) -> Result<()> {
        let count = writer.pending_frames.len();
        self.flush_frames(writer, count)
    }

    /// Writes the first `count` pending frames to the active segment with one `write` (the
    /// committer gives each queued `Always` append its own), under the lock: for the rarer
    /// paths that change the file under it anyway (a roll, a truncation, the `Never` and
    /// `Interval` policies, an explicit sync), after [`Shared::settle`]. The rest stay queued.
    pub(crate) fn flush_frames(&self, writer: &mut Writer, count: usize) -> Result<()> {
        debug_assert!(
            !writer.writing,
            "a flush under the lock while a write is under way"
        );
        let Some(batch) = self.take_batch(writer, count)? else {
            return Ok(());
        };
        let written = self.write_batch(&writer.active_file, &batch);
        self.record_written(writer, batch, written)
    }

    /// Writes the first `count` pending frames as [`Shared::flush_frames`] does, but with the
    /// lock released for the `write` itself (and the zeros ahead), so that appends queue
    /// meanwhile instead of waiting on the disk — a disk that hangs holds this thread, never
    /// the appenders (which, in kvd, are the async runtime's workers). Waits first for a
    /// write under way; anything that would change the file under the lock waits for this one
    /// ([`Shared::settle`]). For the commits of the hot path: the committer's, and a write
    /// group leader's.
    pub(crate) fn write_unlocked<'a>(
        &'a self,
        writer: MutexGuard<'a, Writer>,
        count: impl FnOnce(&Writer) -> usize,
    ) -> (MutexGuard<'a, Writer>, Result<()>) {
        let mut writer = self.settle(writer);
        let count = count(&writer);
        let batch = match self.take_batch(&mut writer, count) {
            Ok(Some(batch)) => batch,
            Ok(None) => return (writer, Ok(())),
            Err(error) => return (writer, Err(error)),
        };
        writer.writing = true;
        let file = writer.active_file.clone();
        drop(writer);
        let written = self.write_batch(&file, &batch);
        let mut writer = self.writer();
        writer.writing = false;
        if writer.settling > 0 {
            self.write_done.notify_all();
        }
        let recorded = self.record_written(&mut writer, batch, written);
        (writer, recorded)
    }

    /// Takes the first `count` pending frames out of the queue to be written (with the
    /// durability mark in front when one is due), and reserves their place in the active file:
    /// `write_offset` moves past them. `None`: nothing to write.
    fn take_batch(&self, writer: &mut Writer, count: usize) -> Result<Option<Batch>> {
        if count == 0 {
            return Ok(None);
        }
        self.check_writable(writer)?;
        if !writer.mark_pending && writer.mark_due() {
            // An fsync completed since these frames were queued: room for its mark in front
            // (appends queued on an idle log reserve it up front, which saves this move).
            writer.pending.splice(0..0, [0u8; MARK_BYTES]);
            for (_, offset) in &mut writer.pending_frames {
                *offset += MARK_BYTES;
            }
            writer.mark_pending = true;
        }
        if writer.mark_pending {
            // The placeholder at the front of the batch becomes the durability mark: what was
            // synced before this write.
            let synced_through = writer.active.synced_through();
            let first_id = writer.pending_frames.first().expect("pending frames").0;
            let salt = writer.active.salt;
            encode_mark(&mut writer.pending, first_id, synced_through, salt);
            writer.last_mark_claim = synced_through;
            writer.mark_pending = false;
        }
        let split = writer
            .pending_frames
            .get(count)
            .map_or(writer.pending.len(), |&(_, offset)| offset);
        let (bytes, frames) = if count == writer.pending_frames.len() {
            writer.always_ends.clear();
            (
                std::mem::take(&mut writer.pending),
                std::mem::take(&mut writer.pending_frames),
            )
        } else {
            let rest = writer.pending.split_off(split);
            let rest_frames = writer.pending_frames.split_off(count);
            let bytes = std::mem::replace(&mut writer.pending, rest);
            let frames = std::mem::replace(&mut writer.pending_frames, rest_frames);
            for (_, offset) in &mut writer.pending_frames {
                *offset -= split;
            }
            writer.always_ends.retain(|&end| end > count);
            for end in &mut writer.always_ends {
                *end -= count;
            }
            (bytes, frames)
        };
        let offset = writer.write_offset;
        writer.write_offset += bytes.len() as u64;
        let zeros = self.zeros_ahead(writer);
        Ok(Some(Batch {
            bytes,
            frames,
            offset,
            zeros,
        }))
    }

    /// The `write` of a batch (and of the zeros ahead of it), timed as the disk's wait.
    fn write_batch(&self, file: &Arc<dyn WalFile>, batch: &Batch) -> BatchWritten {
        let busy = self
            .stats
            .disk_busy(crate::stats::DiskOp::Write, std::time::Instant::now());
        let data = file.write_all_at(&batch.bytes, batch.offset);
        // A failed zero write is no log failure (nothing was lost): the segment just gets no
        // more of it.
        let zeros = match (&data, batch.zeros) {
            (Ok(()), Some((from, to))) => Some(file.write_zeros(from, to - from).is_ok()),
            _ => None,
        };
        drop(busy);
        BatchWritten { data, zeros }
    }

    /// Makes a written batch visible: the segment's end, its index and the `last` watermark
    /// move past it. A failed write poisons the log.
    fn record_written(
        &self,
        writer: &mut Writer,
        batch: Batch,
        written: BatchWritten,
    ) -> Result<()> {
        let path = writer.active.path.clone();
        self.guarded(written.data.at(&path))?;
        let Batch {
            mut bytes,
            frames,
            offset: base,
            zeros,
        } = batch;
        {
            let mut index = lock(&writer.active.index);
            let index = index.get_or_insert_with(SparseIndex::default);
            for &(id, offset) in &frames {
                index.observe(id, base + offset as u64);
            }
        }
        let last_id = frames.last().expect("a batch has frames").0;
        let end = base + bytes.len() as u64;
        writer.active.end_offset.store(end, Ordering::Release);
        writer.active.file_bytes.store(end, Ordering::Release);
        writer
            .active
            .allocated_bytes
            .fetch_max(end, Ordering::AcqRel);
        writer.active.last_id.store(last_id, Ordering::Release);
        self.stats.on_write(bytes.len() as u64);
        if let (Some(ok), Some((_, to))) = (written.zeros, zeros) {
            writer.zeroed_through = if ok {
                to
            } else {
                writer.active.allocated_bytes()
            };
        }
        if writer.pending.is_empty() && writer.pending.capacity() < bytes.capacity() {
            // The queue's buffer went with the batch: give it back for the next appends.
            bytes.clear();
            writer.pending = bytes;
        }
        self.last.advance(last_id);
        Ok(())
    }

    /// Keeps the free space just past the active segment's data written with zeros, a chunk
    /// at a time: when fewer than [`ZERO_AHEAD_MIN_BYTES`] are left past `write_offset`, the
    /// range to write zeros into, up to [`ZERO_AHEAD_BYTES`] past it (within the
    /// preallocation); written with the batch ([`Shared::write_batch`]). Fallocated space is
    /// "unwritten" on ext4: the first write into a block of it makes the next `fdatasync`
    /// convert the extent — a synchronous metadata write, on every commit that reaches a new
    /// 4 KiB block (measured with `fsync-probe`: ~110 µs per `fdatasync` either way with 128 B
    /// per commit; with 4 KiB per commit, ~190–230 µs into fallocated space against ~120–130 µs
    /// into written zeros; with 64 KiB, 1.7× slower). One conversion covers a whole chunk, so
    /// the commit that carries the chunk pays it (and the chunk's bytes) once, and the commits
    /// after it write into written space. (Zeroing a block or two per commit instead converts
    /// on every commit: measured slower than not zeroing.) No byte changes value — free space
    /// reads as zeros already — so recovery finds the same.
    fn zeros_ahead(&self, writer: &Writer) -> Option<(u64, u64)> {
        let end = writer.write_offset;
        let allocated = writer.active.allocated_bytes();
        let from = writer.zeroed_through.max(end);
        if !writer.active.preallocated
            || from >= allocated
            || writer.zeroed_through >= end + ZERO_AHEAD_MIN_BYTES
        {
            return None;
        }
        let to = (end + ZERO_AHEAD_BYTES)
            .next_multiple_of(4096)
            .min(allocated);
        Some((from, to))
    }

    /// Makes room for a frame of `frame_bytes`, rolling the segment if it would overflow.
    pub(crate) fn reserve(&self, writer: &mut Writer, frame_bytes: usize) -> Result<()> {
        if self.overflows(writer, frame_bytes) && writer.active_has_records() {
            let first_id = writer.next_id.get();
            self.roll(writer, first_id)?;
        }
        Ok(())
    }

    /// Publishes the bytes appends may still add to the active segment
    /// ([`Shared::active_room`]): after every change to what is written or queued in it.
    pub(crate) fn note_room(&self, writer: &Writer) {
        self.active_room.store(self.room(writer), Ordering::Release);
    }

    /// The bytes appends may still add to the active segment, after what is written and
    /// queued, leaving room for its seal.
    fn room(&self, writer: &Writer) -> u64 {
        room_left(
            self.segment_bytes_max,
            writer.write_offset,
            writer.pending.len(),
        )
    }

    /// Whether `bytes` more (at least one) would leave no room for the active segment's seal.
    fn overflows(&self, writer: &Writer, bytes: usize) -> bool {
        bytes as u64 > self.room(writer)
    }

    /// Seals the active segment (write, seal, fsync) and starts a new one at `first_id`. An
    /// empty active segment is replaced instead of sealed.
    ///
    /// The whole roll counts as a write in flight ([`crate::stats::Stats::disk_busy`]): the
    /// new file's creation, allocation and `fsync`, the old one's shrink and seal, the renames
    /// and the directory's `fsync`s all wait on the disk, with every append behind them, and a
    /// disk that hangs at any of them must show in `WalStats::disk_wait_seconds` as it does
    /// in an append's own write or `fdatasync` (kvd's leader goes silent on it and is
    /// replaced).
    pub(crate) fn roll(&self, writer: &mut Writer, first_id: u64) -> Result<()> {
        debug_assert!(!writer.writing, "a roll while a write is under way");
        let _busy = self
            .stats
            .disk_busy(crate::stats::DiskOp::Write, std::time::Instant::now());
        self.flush_pending(writer)?;
        let old = writer.active.clone();
        if old.is_empty() {
            // Its replacement takes its sequence: made first under its temporary name (no
            // room: the empty one stays active), named once the empty one is gone.
            let sequence = old.sequence;
            let (path, header, file) = self.new_segment_file(sequence, first_id)?;
            // Until the replacement is named, the newest segment is the one before.
            let lowered = self.record_newest_sequence(sequence - 1);
            self.guarded(lowered)?;
            let removed = self.fs.remove_file(&old.path).at(&old.path);
            self.guarded(removed)?;
            let segment = self.install_segment(writer, sequence, first_id, path, header, file)?;
            let mut segments = self.segments_write();
            segments.pop();
            segments.push(segment);
            return Ok(());
        }
        let last_id = old.last_id();
        // The new segment's file comes first, under a temporary name, so a disk without room
        // for it fails the roll before the old one is sealed (`Error::OutOfSpace`: the log
        // stays as it was and takes writes again once there is room). It takes its name only
        // once the old one's seal is durable: until then a crash leaves the old one last, and
        // whatever of its seal did not reach the disk is a torn tail (open removes `.tmp`).
        let sequence = writer.next_sequence;
        let (path, header, file) = self.new_segment_file(sequence, first_id)?;
        if old.allocated_bytes() > writer.write_offset {
            // A sealed segment ends with its seal: the free space goes first, durably, so a
            // power cut can never leave a seal followed by zeros.
            let shrunk = writer
                .active_file
                .set_len(writer.write_offset)
                .at(&old.path);
            self.guarded(shrunk)?;
            self.sync_sealing(writer, last_id)?;
            old.allocated_bytes
                .store(writer.write_offset, Ordering::Release);
        }
        let mut seal = Vec::with_capacity(SEAL_BYTES);
        encode_seal(&mut seal, last_id, last_id - old.first_id + 1, old.salt);
        let sealed = writer
            .active_file
            .write_all_at(&seal, writer.write_offset)
            .at(&old.path);
        if let Err(error) = &sealed {
            if error.is_out_of_space() {
                // The disk filled after the new file was made: the seal grows the shrunk old
                // segment and finds no room. The roll fails as one without room for the new
                // segment does (`Error::OutOfSpace`, the log not poisoned): the new file goes,
                // the old one stays active, unsealed and as long as its data (what a crash
                // here leaves), and the next append rolls again once there is room. Before,
                // it poisoned the log: a follower stopped replicating until restarted.
                let _ = self.fs.remove_file(&temp_segment_path(&path));
                let reason =
                    format!("no room to seal the full log segment ({error}){NOT_APPENDED_RETRY}");
                *lock(&self.out_of_space) = Some(reason.clone());
                return Err(Error::OutOfSpace(reason));
            }
        }
        self.guarded(sealed)?;
        self.sync_sealing(writer, last_id)?;
        old.file_bytes
            .store(writer.write_offset + SEAL_BYTES as u64, Ordering::Release);
        old.allocated_bytes
            .store(writer.write_offset + SEAL_BYTES as u64, Ordering::Release);
        old.sealed.store(true, Ordering::Release);
        let segment = self.install_segment(writer, sequence, first_id, path, header, file)?;
        self.segments_write().push(segment);
        Ok(())
    }

    /// The `fdatasync`s of a roll, on the segment being sealed (through `last_id`).
    fn sync_sealing(&self, writer: &Writer, last_id: u64) -> Result<()> {
        let fsync = Fsync {
            file: &*writer.active_file,
            path: &writer.active.path,
            target: last_id,
            generation: None,
            records: 0,
            covers: None,
        };
        self.durability.sync(fsync, &self.stats)
    }

    /// Creates, fsyncs and installs a new active segment (and fsyncs the directory); a write
    /// in flight for the disk's wait, as [`Shared::roll`].
    pub(crate) fn create_segment(
        &self,
        writer: &mut Writer,
        sequence: u64,
        first_id: u64,
    ) -> Result<Arc<Segment>> {
        let _busy = self
            .stats
            .disk_busy(crate::stats::DiskOp::Write, std::time::Instant::now());
        let (path, header, file) = self.new_segment_file(sequence, first_id)?;
        self.install_segment(writer, sequence, first_id, path, header, file)
    }

    /// Creates and fsyncs a new segment file under a temporary name (`<name>.tmp`, which open
    /// removes), not yet installed ([`Shared::install_segment`] names it). A file system out
    /// of space (`ENOSPC`, `EDQUOT`) fails it with [`Error::OutOfSpace`] after removing what
    /// it created, and leaves the log writable: nothing was written to the log. Any other
    /// failure poisons the log. Returns the segment's final path.
    fn new_segment_file(
        &self,
        sequence: u64,
        first_id: u64,
    ) -> Result<(PathBuf, SegmentHeader, Arc<dyn WalFile>)> {
        let path = segment_path(&self.dir, sequence, first_id);
        let allocated_bytes = self.preallocated_segment_bytes;
        let header =
            SegmentHeader::new_active(self.log_id, sequence, first_id, allocated_bytes > 0);
        let temp_path = temp_segment_path(&path);
        match create_segment_file(&*self.fs, &self.dir, &temp_path, &header, allocated_bytes) {
            Ok(file) => {
                *lock(&self.out_of_space) = None;
                Ok((path, header, file))
            }
            Err(Error::Io { source, .. }) if is_out_of_space(&source) => {
                // What the failed creation left (a header, part of the allocation) goes, so
                // the space is there for the next try (open removes it otherwise).
                let _ = self.fs.remove_file(&temp_path);
                let reason = format!(
                    "no room for a new log segment ({}: {source}){NOT_APPENDED_RETRY}",
                    path.display()
                );
                *lock(&self.out_of_space) = Some(reason.clone());
                Err(Error::OutOfSpace(reason))
            }
            Err(error) => Err(self.poison(error.to_string())),
        }
    }

    /// [`crate::Wal::check_room`].
    pub(crate) fn check_room(&self) -> Result<bool> {
        if lock(&self.out_of_space).is_none() {
            return Ok(true);
        }
        let path = self.dir.join(ROOM_PROBE_FILE);
        let probe = || -> std::io::Result<()> {
            let _ = self.fs.remove_file(&path);
            let file = self.fs.create_new(&path)?;
            file.allocate(
                self.preallocated_segment_bytes
                    .max(SEGMENT_HEADER_BYTES as u64),
            )
        };
        let probed = probe();
        let removed = self.fs.remove_file(&path);
        match probed {
            Ok(()) => {
                removed.at(&path)?;
                *lock(&self.out_of_space) = None;
                Ok(true)
            }
            Err(error) if is_out_of_space(&error) => Ok(false),
            Err(error) => Err(error).at(&path),
        }
    }

    /// Gives a new segment file ([`Shared::new_segment_file`]) its name, durably, and makes
    /// it the active segment; returns it for the segment list. A failure poisons the log.
    fn install_segment(
        &self,
        writer: &mut Writer,
        sequence: u64,
        first_id: u64,
        path: PathBuf,
        header: SegmentHeader,
        file: Arc<dyn WalFile>,
    ) -> Result<Arc<Segment>> {
        let renamed = self
            .fs
            .rename(&temp_segment_path(&path), &path)
            .at(&path)
            .and_then(|()| self.fs.sync_dir(&self.dir).at(&self.dir))
            .and_then(|()| self.record_newest_sequence(sequence));
        self.guarded(renamed)?;
        let allocated_bytes = self.preallocated_segment_bytes;
        let segment = Arc::new(Segment::empty(
            sequence,
            first_id,
            path,
            header.salt,
            allocated_bytes,
        ));
        writer.active = segment.clone();
        writer.active_file = file;
        writer.write_offset = SEGMENT_HEADER_BYTES as u64;
        self.note_room(writer);
        writer.zeroed_through = 0;
        writer.last_mark_claim = 0;
        writer.next_sequence = sequence + 1;
        writer.next_id.set(first_id);
        Ok(segment)
    }

    /// Queues encoded frames (`encode_into` appends frame `index` with id `id`, sealed with the
    /// active segment's salt).
    pub(crate) fn submit(
        self: &Arc<Self>,
        count: usize,
        frame_bytes: impl Fn(usize) -> usize,
        first_id: Option<u64>,
        encode_into: impl Fn(usize, u64, u32, &mut Vec<u8>),
        policy: SyncPolicy,
    ) -> Result<AppendTicket> {
        if count == 0 {
            return Err(Error::InvalidArgument(
                "an append needs at least one record".to_owned(),
            ));
        }
        let mut writer = self.writer();
        self.check_writable(&writer)?;
        crate::fail_point!(WAL_BEFORE_APPEND).at(&self.dir)?;
        if writer.writing && self.changes_the_file(&writer, count, &frame_bytes, first_id, policy) {
            // Only an append that writes under the lock waits for the write under way.
            writer = self.settle(writer);
            self.check_writable(&writer)?;
        }
        check_id_room(first_id.unwrap_or(writer.next_id.get()), count)?;
        if let Some(first_id) = first_id {
            if first_id < writer.next_id.get() {
                return Err(Error::IdConflict {
                    first_id,
                    next_id: writer.next_id.get(),
                });
            }
            if first_id > writer.next_id.get() {
                // The history continues after a gap: start a segment whose header says so.
                self.roll(&mut writer, first_id)?;
            }
        }
        let first = writer.next_id.get();
        // Nothing queued, no commit in flight or promised, and no crowd of writers just
        // released by the last commit (the committer gathers them, `committer.rs`): this
        // append may commit itself.
        let idle = writer.pending_frames.is_empty()
            && !writer.fsync_in_flight
            && writer.leader.is_none()
            && !writer.expects_writers_back();
        self.queue_frames(&mut writer, count, &frame_bytes, &encode_into)?;
        let last = writer.next_id.get() - 1;
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
            SyncPolicy::Batch | SyncPolicy::Always => {
                if policy == SyncPolicy::Always {
                    // Its own fsync, never shared with another `Always` append's.
                    let end = writer.pending_frames.len();
                    writer.always_ends.push_back(end);
                }
                let generation = self.durability.durable.generation();
                if idle && self.inline_commit_when_idle && writer.pending_frames.len() == count {
                    return Ok(self.lead_group(&mut writer, first..=last, policy, generation));
                }
                // Once `commit_wanted` is set the committer is bound to see it before it waits
                // again (only it clears the flag, under this lock), so appenders queued behind
                // the first one skip the notify, a `futex` syscall each; so do appenders queued
                // behind a commit in flight, whose end wakes the committer if anything queued.
                // A leader that has not begun its commit does not hold them up: the committer,
                // woken, takes the group's commit from it.
                if !writer.commit_wanted && !writer.fsync_in_flight {
                    self.commit_needed.notify_one();
                } else if writer.gather_until.is_some_and(|wanted| {
                    policy == SyncPolicy::Always || writer.pending_frames.len() >= wanted
                }) {
                    // The committer gathers appends for its next commit: this one completes
                    // the number it waits for (an `Always` append does not wait for others).
                    writer.gather_until = None;
                    self.commit_needed.notify_one();
                }
                writer.commit_wanted = true;
                Ok(AppendTicket::pending(
                    first..=last,
                    self.durability.durable.clone(),
                    generation,
                ))
            }
        }
    }

    /// Encodes an append's `count` frames into the pending buffer under their ids, rolling the
    /// segment where they do not fit.
    fn queue_frames(
        &self,
        writer: &mut Writer,
        count: usize,
        frame_bytes: &impl Fn(usize) -> usize,
        encode_into: &impl Fn(usize, u64, u32, &mut Vec<u8>),
    ) -> Result<()> {
        if count > 1 {
            // A batch that does not fit what is left of the segment rolls before its first
            // frame, so a roll that finds no room fails it whole.
            self.reserve(writer, batch_bytes(count, frame_bytes))?;
        }
        for index in 0..count {
            match self.reserve(writer, frame_bytes(index) + MARK_BYTES) {
                Ok(()) => {}
                // The frames of this append before it went into the old segment (a batch
                // larger than a segment): it cannot fail whole any more. Said as it is (before,
                // the poison repeated the out-of-space text: "the write was not appended, and
                // writes are taken again once there is room", both untrue here).
                Err(Error::OutOfSpace(reason)) if index > 0 => {
                    let cause = reason.strip_suffix(NOT_APPENDED_RETRY).unwrap_or(&reason);
                    return Err(self.poison(format!(
                        "a batch larger than a segment filled one and found no room for the \
                         next: its first {index} record(s) are in the log, the rest are not; \
                         the log takes no more writes until it is opened again ({cause})"
                    )));
                }
                Err(error) => return Err(error),
            }
            if writer.pending.is_empty() && writer.mark_due() {
                // Room for a durability mark, written in front of the batch (`flush_pending`).
                writer.pending.resize(MARK_BYTES, 0);
                writer.mark_pending = true;
            }
            let id = writer.next_id.get();
            let offset = writer.pending.len();
            let salt = writer.active.salt;
            encode_into(index, id, salt, &mut writer.pending);
            writer.pending_frames.push((id, offset));
            writer.next_id.set(id + 1);
        }
        self.note_room(writer);
        Ok(())
    }

    /// Makes an append that found the log idle its write group's leader: its frames stay
    /// queued, and its ticket writes and fsyncs them on the caller's thread when it is first
    /// waited on (`lead_commit`) — or writes them sooner, without the fsync, when asked to
    /// (`lead_write`: kvd's leader, so that its streams push the frames to the followers
    /// during its fsync) — after the caller let go of its own locks: a disk that hangs then
    /// holds that thread alone. Appends arriving before the commit wake the committer, which
    /// takes the group's commit over (`run_committer`).
    fn lead_group(
        self: &Arc<Self>,
        writer: &mut Writer,
        ids: std::ops::RangeInclusive<u64>,
        policy: SyncPolicy,
        generation: u64,
    ) -> AppendTicket {
        writer.leader_tokens += 1;
        let token = writer.leader_tokens;
        writer.leader = Some(Leader {
            token,
            own_fsync: policy == SyncPolicy::Always,
            last_id: *ids.end(),
        });
        AppendTicket::leading(ids, self.clone(), token, generation)
    }

    /// Whether an append of `count` frames (`frame_bytes` each) writes to or changes the
    /// active file under the lock: it rolls the segment (it does not fit, or it continues
    /// after a gap), or its policy writes at once (`Never`, `Interval`).
    fn changes_the_file(
        &self,
        writer: &Writer,
        count: usize,
        frame_bytes: &impl Fn(usize) -> usize,
        first_id: Option<u64>,
        policy: SyncPolicy,
    ) -> bool {
        matches!(policy, SyncPolicy::Never | SyncPolicy::Interval(_))
            || first_id.is_some_and(|first_id| first_id > writer.next_id.get())
            || self.overflows(writer, batch_bytes(count, frame_bytes))
    }

    /// One commit, by whoever holds it (`fsync_in_flight`, which this releases): writes the
    /// queued frames — all of them, or through the first queued `Always` append, which gets
    /// an fsync of its own; with `always_leader_through`, an `Always` leader's own frames
    /// (those still queued: `AppendTicket::write_now` may have written them) — with one
    /// `write`, then `fdatasync`s what is written, both outside the lock
    /// ([`Shared::write_unlocked`]), so appends queue for the next round meanwhile. A
    /// truncation meanwhile (a new generation) voids the target. `Ok(false)`: nothing needed an fsync.
    pub(crate) fn commit_once<'a>(
        &'a self,
        writer: MutexGuard<'a, Writer>,
        always_leader_through: Option<u64>,
    ) -> (MutexGuard<'a, Writer>, Result<bool>) {
        let mut batch_frames = 0;
        let (mut writer, written) = self.write_unlocked(writer, |writer| {
            batch_frames = match always_leader_through {
                Some(last_id) => frames_through(writer, last_id),
                None => writer
                    .always_ends
                    .front()
                    .copied()
                    .unwrap_or(writer.pending_frames.len()),
            };
            batch_frames
        });
        if let Err(error) = written {
            writer.fsync_in_flight = false;
            return (writer, Err(error));
        }
        writer.commit_wanted = !writer.pending_frames.is_empty();
        writer.last_sync = Instant::now();
        let target = self.last.get();
        if target <= self.durability.durable.get() {
            writer.fsync_in_flight = false;
            return (writer, Ok(false));
        }
        let file = writer.active_file.clone();
        let path = writer.active.path.clone();
        let (segment, synced_offset) = (writer.active.clone(), writer.write_offset);
        let generation = self.durability.durable.generation();
        let durable_before = self.durability.durable.get();
        drop(writer);
        let fsync_started = Instant::now();
        let synced = crate::fail_point!(WAL_AFTER_WRITE_BEFORE_FSYNC)
            .at(&path)
            .map_err(|error| self.poison(error.to_string()))
            .and_then(|()| {
                let fsync = Fsync {
                    file: &*file,
                    path: &path,
                    target,
                    generation: Some(generation),
                    records: (batch_frames as u64).max(1),
                    covers: Some((&segment, synced_offset)),
                };
                self.durability.sync(fsync, &self.stats)
            });
        let mut writer = self.writer();
        writer.fsync_in_flight = false;
        if synced.is_ok() {
            writer.last_fsync = fsync_started.elapsed();
            writer.last_commit_end = Instant::now();
            writer.last_commit_released = target.saturating_sub(durable_before);
        }
        if synced.is_ok() && self.durability.durable.generation() != generation {
            writer.commit_wanted = true;
        }
        (writer, synced.map(|()| true))
    }
}

impl WriteGroup for Shared {
    fn durable(&self) -> Arc<Watermark> {
        self.durability.durable.clone()
    }

    /// A leader's commit, on the thread that waits on its ticket (`token`: its leadership):
    /// one round of the committer (`commit_once`), then the committer is woken if appends
    /// queued behind it. Nothing if the committer took the group's commit over meanwhile.
    /// Errors are latched in the log (and end its waiters); the ticket reads the outcome from
    /// the durable watermark.
    fn lead_commit(&self, token: u64) {
        let mut writer = self.writer();
        let Some(leader) = writer.leader.filter(|leader| leader.token == token) else {
            return;
        };
        writer.leader = None;
        writer.fsync_in_flight = true;
        let (writer, committed) = self.commit_once(writer, leader.always_through());
        if writer.commit_wanted || writer.closed {
            self.commit_needed.notify_one();
        }
        drop(writer);
        if let Ok(true) = committed {
            self.stats.on_inline_commit();
            if let Err(error) = crate::fail_point!(WAL_AFTER_FSYNC_BEFORE_ACK) {
                self.poison(error.to_string());
            }
        }
    }

    /// A leader's frames written now, before its commit, on this thread (the lock released
    /// for the `write`); nothing if its commit began or they are written already.
    fn lead_write(&self, token: u64) {
        let writer = self.writer();
        let Some(leader) = writer.leader.filter(|leader| leader.token == token) else {
            return;
        };
        // A write failure is latched in the log; the commit reports it.
        let _ = self.write_unlocked(writer, |writer| frames_through(writer, leader.last_id));
    }

    /// A leader's ticket dropped before it was waited on: its commit goes to the committer
    /// (unless the committer took it already).
    fn abdicate(&self, token: u64) {
        let mut writer = self.writer();
        if writer.leader.is_none_or(|leader| leader.token != token) {
            return;
        }
        writer.leader = None;
        writer.commit_wanted = true;
        self.commit_needed.notify_one();
    }
}

/// The bytes `count` frames (`frame_bytes` each) take in a segment, each with room for a
/// durability mark: what [`Shared::reserve`] checks a batch against.
fn batch_bytes(count: usize, frame_bytes: &impl Fn(usize) -> usize) -> usize {
    (0..count)
        .map(|index| frame_bytes(index) + MARK_BYTES)
        .sum()
}

/// The bytes appends may add to a segment of `segment_bytes_max` holding `written` bytes and
/// `queued` more before it rolls (its seal's room kept).
pub(crate) fn room_left(segment_bytes_max: u64, written: u64, queued: usize) -> u64 {
    segment_bytes_max.saturating_sub(written + queued as u64 + SEAL_BYTES as u64)
}

/// How many of the queued frames have ids up to `last_id`.
fn frames_through(writer: &Writer, last_id: u64) -> usize {
    writer
        .pending_frames
        .partition_point(|&(id, _)| id <= last_id)
}

/// Queued frames taken out to be written ([`Shared::take_batch`]).
struct Batch {
    bytes: Vec<u8>,
    /// (id, offset within `bytes`) of each frame.
    frames: Vec<(u64, usize)>,
    /// Where `bytes` go in the active file.
    offset: u64,
    /// Zeros to write past them, `[from, to)` ([`Shared::zeros_ahead`]).
    zeros: Option<(u64, u64)>,
}

/// How a batch's `write`s went ([`Shared::write_batch`]).
struct BatchWritten {
    data: std::io::Result<()>,
    /// Whether the zeros were written, if any were to be.
    zeros: Option<bool>,
}

/// How far past the active segment's data [`Shared::zeros_ahead`] writes zeros.
const ZERO_AHEAD_BYTES: u64 = 256 << 10;
/// [`Shared::zeros_ahead`] writes more zeros once fewer than this many are left past the data.
const ZERO_AHEAD_MIN_BYTES: u64 = 128 << 10;

/// The file [`Shared::check_room`] preallocates and removes (`.tmp`: open removes it).
const ROOM_PROBE_FILE: &str = "room-probe.tmp";

/// Where a new segment file is made before it takes `path` (`.tmp`: open removes it).
fn temp_segment_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

pub(crate) fn create_segment_file(
    fs: &dyn FileSystem,
    dir: &Path,
    path: &Path,
    header: &SegmentHeader,
    allocated_bytes: u64,
) -> Result<Arc<dyn WalFile>> {
    let file = fs.create_new(path).at(path)?;
    file.write_all_at(&header.encode(), 0).at(path)?;
    file.allocate(allocated_bytes).at(path)?;
    file.sync_data().at(path)?;
    crate::fail_point!(WAL_ROLL_BEFORE_DIR_FSYNC).at(dir)?;
    fs.sync_dir(dir).at(dir)?;
    Ok(file)
}
