//! Truncation (drop the suffix after an id: replication divergence) and purging (drop whole
//! segments before an id: log compaction).

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crate::compressed_format;
use crate::durable::write_file_atomic;
use crate::error::{IoContext, Result};
use crate::fs::{read_range, WalFile};
use crate::meta::{encode_marker, TRUNCATE_MARKER_FILE};
use crate::mutex::lock;
use crate::plain_rewrite::write_plain_segment;
use crate::recovery::RecoveredSegment;
use crate::segment_file::SegmentHeader;
use crate::segment_scan::scan;
use crate::segments::Segment;
use crate::stats::DiskOp;
use crate::wal::Wal;
use crate::writer::Writer;

impl Wal {
    /// Drops every record after `after_id` (replication divergence). Crash-safe: a marker file
    /// is made durable first, so a crash at any point leaves either the old log or, once open
    /// completes the marked truncation, the new one. The next append gets `after_id + 1`: the
    /// caller is replacing the suffix with another history's records for the same ids, as Raft
    /// and Kafka followers do. Ids of records that were never truncated are never reused.
    ///
    /// The whole truncation counts as a write in flight ([`crate::WalStats::disk_wait_seconds`]),
    /// as a segment roll does: the marker, the cut, the removals and the directory `fsync`s
    /// all wait on the disk, with every append behind them.
    pub fn truncate_after(&self, after_id: u64) -> Result<()> {
        let shared = &self.shared;
        // Both locks are held from the marker to its removal: an append acknowledged while the
        // marker is still there would be cut again by the open that completes the marker.
        let _maintenance = lock(&shared.maintenance);
        let mut writer = shared.settle(shared.writer());
        // From here on, not while the locks were awaited (a compaction can hold them for long).
        let _busy = shared.stats.disk_busy(DiskOp::Write, Instant::now());
        shared.check_writable(&writer)?;
        shared.flush_pending(&mut writer)?;
        if after_id >= writer.next_id.get() - 1 {
            return Ok(());
        }
        // Where the cut goes is found before anything changes: a cut inside damage the log
        // opened past (`WalOptions::needed_from`) fails here with `Error::Corrupt`, the log as
        // it was. Before, it failed after the marker and poisoned the log.
        self.find_cut(after_id)?;
        let marked = write_file_atomic(
            &*shared.fs,
            &shared.dir,
            TRUNCATE_MARKER_FILE,
            &encode_marker(after_id),
        );
        match marked {
            // No room for the marker: nothing was cut, and the log takes writes as before (a
            // follower asks for the cut again). Before, the failure poisoned the log.
            Err(error) if error.is_out_of_space() => {
                let temp = shared.dir.join(format!("{TRUNCATE_MARKER_FILE}.tmp"));
                let _ = shared.fs.remove_file(&temp);
                return Err(crate::Error::OutOfSpace(format!(
                    "no room for the truncation's marker ({error}): nothing was cut after id \
                     {after_id}; the cut can be made once there is room"
                )));
            }
            marked => shared.guarded(marked)?,
        }
        self.cut_locked(&mut writer, after_id)?;
        let marker = shared.dir.join(TRUNCATE_MARKER_FILE);
        let removed = shared
            .fs
            .remove_file(&marker)
            .at(&marker)
            .and_then(|()| shared.fs.sync_dir(&shared.dir).at(&shared.dir));
        shared.guarded(removed)
    }

    /// Reads where a cut after `after_id` goes in the plain segment that holds it, changing
    /// nothing: what [`Wal::cut_plain_after`] will do, checked first.
    fn find_cut(&self, after_id: u64) -> Result<()> {
        let target = {
            let segments = self.shared.segments_read();
            segments
                .iter()
                .rev()
                .find(|segment| segment.first_id <= after_id)
                .cloned()
        };
        let Some(target) = target else {
            return Ok(());
        };
        if target.compressed.is_some() || after_id >= target.last_id() {
            return Ok(());
        }
        let file = self.shared.fs.open(&target.path).at(&target.path)?;
        crate::read::offset_after(file, &target, after_id).map(|_| ())
    }

    /// Completes a truncation (open finishing a marked one).
    pub(crate) fn truncate_after_inner(&self, after_id: u64) -> Result<()> {
        let _maintenance = lock(&self.shared.maintenance);
        let mut writer = self.shared.settle(self.shared.writer());
        self.cut_locked(&mut writer, after_id)
    }

    /// Cuts the log after `after_id`, the maintenance and writer locks held. The truncation
    /// counter moves before the files change and again after, so a reader that meets a file
    /// cut under it reports `Error::Truncated`, never a spurious `Corrupt`.
    fn cut_locked(&self, writer: &mut Writer, after_id: u64) -> Result<()> {
        let shared = &self.shared;
        shared.flush_pending(writer)?;
        shared.truncations.fetch_add(1, Ordering::AcqRel);
        let result = self.cut_segments(writer, after_id);
        shared.truncations.fetch_add(1, Ordering::AcqRel);
        shared.guarded(result)?;
        // The newest segment is the one the cut left active (a marker covered the removals
        // until now: open does not take them for lost segments).
        let recorded = shared.record_newest_sequence(writer.active.sequence);
        shared.guarded(recorded)
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
        crate::fail_point!(WAL_TRUNCATE_BEFORE_CUT).at(&shared.dir)?;
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
            let segment = self.rewrite_plain_through(writer, &target, after_id)?;
            *segments.last_mut().expect("the target") = segment;
            drop(segments);
        } else {
            drop(segments);
            self.cut_plain_after(writer, &target, after_id)?;
        }
        let last_id = writer.next_id.get() - 1;
        shared.last.reset(last_id);
        // Always a new generation: appends still waiting for ids that were just dropped end
        // with `Error::Truncated` instead of waiting for ids that now mean other records. Every
        // record kept is durable now — in the cut segment, which the cut fsynced with the
        // frames flushed before it, or in a sealed one — so the durable id is the new last id,
        // and appends waiting for kept ids end acknowledged (before, they ended `Truncated`
        // with their records in the log, and a caller that retried wrote them twice).
        shared.durability.durable.reset(last_id);
        if last_id < after_id {
            // The cut fell in a gap of ids the log skipped (`skip_to`: a snapshot covers
            // them): they stay skipped, and the log goes on at `after_id + 1` in a new segment.
            // Before, the next append took the first id of the gap.
            shared.roll(writer, after_id + 1)?;
        }
        Ok(())
    }

    /// The compressed `target`, rewritten as a plain unsealed segment of its records through
    /// `after_id`: the new active segment.
    fn rewrite_plain_through(
        &self,
        writer: &mut Writer,
        target: &Arc<Segment>,
        after_id: u64,
    ) -> Result<Arc<Segment>> {
        let shared = &self.shared;
        let file = shared.fs.open(&target.path).at(&target.path)?;
        let frames = frames_through(&*file, target, after_id)?;
        drop(file);
        let header = SegmentHeader {
            log_id: shared.log_id,
            sequence: target.sequence,
            first_id: target.first_id,
            codec: None,
            salt: target.salt,
            preallocated: false,
        };
        let rewrite = write_plain_segment(&*shared.fs, &shared.dir, header, &frames, None)?;
        shared.fs.remove_file(&target.path).at(&target.path)?;
        shared.fs.sync_dir(&shared.dir).at(&shared.dir)?;
        let image_len = rewrite.image.len() as u64;
        let scanned = scan(&rewrite.image, target.first_id, target.salt, false);
        let last_id = scanned.clean_last_id.unwrap_or(target.first_id - 1);
        let segment = Arc::new(Segment::from(RecoveredSegment {
            sequence: target.sequence,
            first_id: target.first_id,
            path: rewrite.path,
            last_id,
            end_offset: image_len,
            file_bytes: image_len,
            allocated_bytes: image_len,
            sealed: false,
            index: Some(scanned.index),
            skips: Vec::new(),
            compressed: None,
            salt: target.salt,
            preallocated: false,
        }));
        writer.active = segment.clone();
        writer.active_file = rewrite.file;
        writer.write_offset = image_len;
        self.shared.note_room(writer);
        writer.zeroed_through = 0;
        writer.last_mark_claim = 0;
        writer.next_sequence = target.sequence + 1;
        writer.next_id.set(last_id + 1);
        Ok(segment)
    }

    /// Cuts the plain `target` after `after_id` (its free space allocated again if it is
    /// preallocated): it becomes the active segment.
    fn cut_plain_after(
        &self,
        writer: &mut Writer,
        target: &Arc<Segment>,
        after_id: u64,
    ) -> Result<()> {
        let shared = &self.shared;
        let file = shared.fs.open(&target.path).at(&target.path)?;
        let cut = if after_id >= target.last_id() {
            target.end_offset()
        } else {
            crate::read::offset_after(file.clone(), target, after_id)?
        };
        file.set_len(cut).at(&target.path)?;
        if target.preallocated {
            // The cut leaves zeros behind it: free space, allocated again. On a full disk the
            // cut gave the space back and none is there to take again: the segment stays as
            // long as its data, as open leaves it (appends past its end grow it, refused as out
            // of space while the disk is full). Before, the failed allocation poisoned the log:
            // a follower cut back during a full disk stopped replicating until restarted.
            let allocated_bytes = shared.preallocated_segment_bytes;
            match file.allocate(allocated_bytes) {
                Ok(()) => target
                    .allocated_bytes
                    .store(allocated_bytes.max(cut), Ordering::Release),
                Err(error) if crate::error::is_out_of_space(&error) => {
                    target.allocated_bytes.store(cut, Ordering::Release)
                }
                Err(error) => return Err(error).at(&target.path),
            }
        } else {
            target.allocated_bytes.store(cut, Ordering::Release);
        }
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
        target.reset_synced(cut);
        writer.last_mark_claim = 0;
        writer.active = target.clone();
        writer.active_file = file;
        writer.write_offset = cut;
        self.shared.note_room(writer);
        writer.zeroed_through = 0;
        writer.next_sequence = target.sequence + 1;
        writer.next_id.set(last_id + 1);
        Ok(())
    }

    /// Removes whole segments whose records all precede `before_id` (after a snapshot): log
    /// compaction. The active segment is never removed. Returns the paths removed. Each
    /// removal and the directory `fsync` count as a write in flight, as a truncation does (each
    /// on its own: a purge of many segments that goes on removing them is not a disk that
    /// stopped answering).
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
            let _busy = shared.stats.disk_busy(DiskOp::Write, Instant::now());
            shared.remove_segment_files(&segment)?;
            removed.push(segment.path.clone());
        }
        if !removed.is_empty() {
            let _busy = shared.stats.disk_busy(DiskOp::Write, Instant::now());
            shared.fs.sync_dir(&shared.dir).at(&shared.dir)?;
        }
        Ok(removed)
    }
}

/// The frames of a compressed segment with ids up to `through_id`, read and checked block by
/// block.
pub(crate) fn frames_through(
    file: &dyn WalFile,
    segment: &Segment,
    through_id: u64,
) -> Result<Vec<u8>> {
    let layout = segment.compressed.as_ref().expect("a compressed segment");
    let mut out = Vec::new();
    for (position, block) in layout.blocks.iter().enumerate() {
        // A plain segment has no gaps: stop before a block skipped at open, if any.
        let contiguous = position == 0 && block.first_id == segment.first_id
            || position > 0 && layout.blocks[position - 1].last_id() + 1 == block.first_id;
        if block.first_id > through_id || !contiguous {
            break;
        }
        let stored = read_range(file, block.offset, block.stored_len()).at(&segment.path)?;
        let (frames, _) =
            compressed_format::read_block(&stored, layout.codec, block.first_id, segment.salt)
                .map_err(|reason| crate::error::Error::Corrupt {
                    segment: segment.path.clone(),
                    offset: block.offset,
                    reason: reason.to_string(),
                })?;
        let mut position = 0;
        while position < frames.len() {
            let frame = crate::frame::decode_salted(&frames[position..], segment.salt)
                .expect("checked block");
            if frame.id > through_id {
                break;
            }
            position += frame.encoded_len();
        }
        out.extend_from_slice(&frames[..position]);
    }
    Ok(out)
}
