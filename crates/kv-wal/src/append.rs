//! The write path: queueing frames, writing them with one `write`, rolling segments.
//!
//! Writers encode frames into a pending buffer under the writer mutex. Who writes and fsyncs
//! that buffer depends on the sync policy: the appending thread itself (`Always`, `Never`,
//! `Interval`), or the committer thread (`committer.rs`, for `Batch`). Segments roll under the
//! same mutex; the old segment is sealed and fsynced before the new one is created, so only the
//! active segment ever holds unsynced bytes.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::durability::Fsync;
use crate::error::{Error, IoContext, Result};
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
use crate::ticket::AppendTicket;
use crate::writer::Writer;

impl Shared {
    /// Writes the pending frames to the active segment with one `write`.
    pub(crate) fn flush_pending(&self, writer: &mut Writer) -> Result<()> {
        if writer.pending.is_empty() {
            return Ok(());
        }
        self.check_writable(writer)?;
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
        writer
            .active
            .allocated_bytes
            .fetch_max(writer.write_offset, Ordering::AcqRel);
        writer.active.last_id.store(last_id, Ordering::Release);
        self.stats.on_write(writer.pending.len() as u64);
        writer.pending.clear();
        writer.pending_frames.clear();
        self.last.advance(last_id);
        Ok(())
    }

    /// Makes room for a frame of `frame_bytes`, rolling the segment if it would overflow.
    pub(crate) fn reserve(&self, writer: &mut Writer, frame_bytes: usize) -> Result<()> {
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
    pub(crate) fn roll(&self, writer: &mut Writer, first_id: u64) -> Result<()> {
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
        let last_id = old.last_id();
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
        self.guarded(sealed)?;
        self.sync_sealing(writer, last_id)?;
        old.file_bytes
            .store(writer.write_offset + SEAL_BYTES as u64, Ordering::Release);
        old.allocated_bytes
            .store(writer.write_offset + SEAL_BYTES as u64, Ordering::Release);
        old.sealed.store(true, Ordering::Release);
        let sequence = writer.next_sequence;
        let segment = self.create_segment(writer, sequence, first_id)?;
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

    /// Creates, fsyncs and installs a new active segment (and fsyncs the directory).
    pub(crate) fn create_segment(
        &self,
        writer: &mut Writer,
        sequence: u64,
        first_id: u64,
    ) -> Result<Arc<Segment>> {
        let path = segment_path(&self.dir, sequence, first_id);
        let allocated_bytes = self.preallocated_segment_bytes;
        let header =
            SegmentHeader::new_active(self.log_id, sequence, first_id, allocated_bytes > 0);
        let created = create_segment_file(&*self.fs, &self.dir, &path, &header, allocated_bytes);
        let file = self.guarded(created)?;
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
        writer.last_mark_claim = 0;
        writer.next_sequence = sequence + 1;
        writer.next_id = first_id;
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
            self.reserve(&mut writer, frame_bytes(index) + MARK_BYTES)?;
            if writer.pending.is_empty() && writer.mark_due() {
                // Room for a durability mark, written in front of the batch (`flush_pending`).
                writer.pending.resize(MARK_BYTES, 0);
                writer.mark_pending = true;
            }
            let id = writer.next_id;
            let offset = writer.pending.len();
            let salt = writer.active.salt;
            encode_into(index, id, salt, &mut writer.pending);
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
                    self.durability.durable.clone(),
                    self.durability.durable.generation(),
                ))
            }
            SyncPolicy::Always => {
                self.flush_pending(&mut writer)?;
                let file = writer.active_file.clone();
                let path = writer.active.path.clone();
                let (segment, synced_offset) = (writer.active.clone(), writer.write_offset);
                let generation = self.durability.durable.generation();
                drop(writer);
                crate::fail_point!(WAL_AFTER_WRITE_BEFORE_FSYNC)
                    .at(&path)
                    .map_err(|error| self.poison(error.to_string()))?;
                let fsync = Fsync {
                    file: &*file,
                    path: &path,
                    target: last,
                    generation: Some(generation),
                    records: count as u64,
                    covers: Some((&segment, synced_offset)),
                };
                self.durability.sync(fsync, &self.stats)?;
                self.durability.wait(last, generation)?;
                crate::fail_point!(WAL_AFTER_FSYNC_BEFORE_ACK)
                    .map_err(|error| self.poison(error.to_string()))?;
                Ok(AppendTicket::done(first..=last))
            }
        }
    }
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
