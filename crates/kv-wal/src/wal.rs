//! [`Wal`]: the log's public face. Opening is in `open.rs`, the write path in `append.rs` and
//! `committer.rs`, truncation and purging in `truncate.rs`, reading in `read.rs`, compressing
//! sealed segments in `compress_sealed.rs`.

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::durability::Fsync;
use crate::error::{Error, Result};
use crate::frame::{self, FRAME_HEADER_BYTES, KIND_RECORD, RECORD_BYTES_MAX};
use crate::fs::FileSystem;
use crate::mutex::lock;
use crate::options::{RecoveryMode, SyncPolicy};
use crate::segments::SegmentInfo;
use crate::shared::Shared;
use crate::stats::WalStats;
use crate::ticket::AppendTicket;
use crate::watermark::Watermark;

/// A segmented, checksummed, group-committed write-ahead log of opaque records.
///
/// Cheap to share: wrap it in an [`Arc`]; every method takes `&self`. See the crate docs for
/// a complete example.
#[derive(Debug)]
pub struct Wal {
    pub(crate) shared: Arc<Shared>,
    pub(crate) committer: Mutex<Option<JoinHandle<()>>>,
}

impl Wal {
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

    /// Queues records and returns at once with a ticket holding their ids (`submit` never
    /// waits for the disk under `Batch` or `Always`). The ticket resolves when the log's sync
    /// policy is met: `.wait()` blocks the thread, `.await` suspends an async task (no runtime
    /// needed by this crate). An append under [`SyncPolicy::Batch`] or [`SyncPolicy::Always`]
    /// that finds the log idle (no commit in flight, nothing queued) gets a ticket that leads
    /// its write group ([`crate::WalOptions::inline_commit_when_idle`]): its frames are written
    /// in `submit` and its first wait or poll `fdatasync`s them on the calling thread (with
    /// whatever queued behind them), so a lone writer pays one fsync and no
    /// thread hand-off; every other ticket waits for the committer thread (which also takes
    /// over a leader's commit if appends queue before it begins). A ticket therefore blocks
    /// for at most one `fdatasync` of its own, and one ticket at a time does: on an async
    /// runtime that is one worker inside an fdatasync while the log is idle. Wait on (or drop)
    /// a ticket after releasing your own locks.
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
            |index, id, salt, out| {
                let (flags, bytes) = stored(index);
                frame::encode_flagged(out, KIND_RECORD, flags, id, bytes, salt)
            },
            policy,
        )
    }

    /// Appends frames as another log shipped them, in their wire form (replication, see
    /// [`Wal::read_frames`]): every frame's CRC and the continuity of ids are checked first, and
    /// the first id must be the log's next id or later (a later id starts a new segment: the
    /// source log had a gap). Nothing is written if any check fails. Each frame is written as
    /// received but for its CRC field, re-sealed with the salt of the segment it goes to.
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
            |index, id, salt, out| {
                debug_assert_eq!(id, decoded[index].id);
                let (start, len) = offsets[index];
                let at = out.len();
                out.extend_from_slice(&frames[start..start + len]);
                frame::reseal(&mut out[at..], 0, salt);
            },
            policy,
        )
    }

    /// Writes and fsyncs everything appended so far; returns the durable id.
    pub fn sync(&self) -> Result<u64> {
        let shared = &self.shared;
        let mut writer = shared.settle(shared.writer());
        shared.flush_pending(&mut writer)?;
        shared.check_writable(&writer)?;
        let target = shared.last.get();
        if target <= shared.durability.durable.get() {
            return Ok(shared.durability.durable.get());
        }
        let path = writer.active.path.clone();
        let generation = shared.durability.durable.generation();
        let fsync = Fsync {
            file: &*writer.active_file,
            path: &path,
            target,
            generation: None,
            records: 0,
            covers: Some((&writer.active, writer.write_offset)),
        };
        shared.durability.sync(fsync, &shared.stats)?;
        shared.durability.wait(target, generation)?;
        Ok(shared.durability.durable.get())
    }

    /// Makes the log continue at `next_id`, skipping the ids between its current next id and
    /// it: the active segment is sealed (or, when empty, replaced) and a new one starts at
    /// `next_id`, durably (its name carries its first id). Returns whether it moved. The ids
    /// skipped are never handed out, and records already in the log stay readable. For a
    /// caller whose state runs ahead of the log — a snapshot that covers ids the log does not
    /// hold (installed from a leader, or the log cut back by a power loss) — so that a new
    /// record never takes an id the snapshot already covers.
    pub fn skip_to(&self, next_id: u64) -> Result<bool> {
        // The next record must fit (no id past `u64::MAX - 1`).
        crate::append::check_id_room(next_id, 1)?;
        let shared = &self.shared;
        let mut writer = shared.settle(shared.writer());
        shared.check_writable(&writer)?;
        shared.flush_pending(&mut writer)?;
        if next_id <= writer.next_id.get() {
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
        let mut writer = shared.settle(shared.writer());
        shared.check_writable(&writer)?;
        let bytes = writer.write_offset + writer.pending.len() as u64;
        if !writer.active_has_records() || bytes < min_bytes {
            return Ok(false);
        }
        let first_id = writer.next_id.get();
        shared.roll(&mut writer, first_id)?;
        Ok(true)
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
                    allocated_bytes: segment.allocated_bytes(),
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
        self.shared
            .next_id
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// The highest id known to be on stable storage (0 when none).
    pub fn durable_id(&self) -> u64 {
        self.shared.durability.durable.get()
    }

    /// The last-written watermark: wait on it to follow the tail.
    pub fn last_watermark(&self) -> &Arc<Watermark> {
        &self.shared.last
    }

    /// The bytes appends may still add to the active segment before it rolls (a roll waits on
    /// the disk holding the writer lock: a caller may want to know one is near), as of the
    /// last append, roll or truncation. Read without any lock, so a hint: appends under way
    /// may have taken some of it.
    pub fn active_room(&self) -> u64 {
        self.shared
            .active_room
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// The durable watermark: wait on it to learn when ids reach stable storage.
    pub fn durable_watermark(&self) -> &Arc<Watermark> {
        &self.shared.durability.durable
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
        self.shared.durability.failure()
    }

    /// Why the last try at a new segment found no room on the file system, while no later
    /// one succeeded ([`Error::OutOfSpace`]): appends that need a new segment fail meanwhile.
    pub fn out_of_space(&self) -> Option<String> {
        crate::mutex::lock(&self.shared.out_of_space).clone()
    }

    /// While the last try at a new segment found no room ([`Wal::out_of_space`]), tries
    /// whether one fits now, without waiting for an append that needs it: a probe file is
    /// made and preallocated as a new segment would be (under a `.tmp` name, which open
    /// removes), then removed; if it fit, the shortage is forgotten. So `/health` stops
    /// saying the disk is full once it is not, even when no write comes that needs a segment
    /// (a load balancer that drains an unhealthy node would otherwise keep it drained).
    /// Returns whether a new segment fits as far as the log knows: `true` at once when it
    /// never lacked room. Blocking file work: call it off the async workers.
    pub fn check_room(&self) -> Result<bool> {
        self.shared.check_room()
    }

    /// Writes and fsyncs everything, stops the committer and refuses further appends. Reads keep
    /// working. Idempotent; also run (ignoring errors) on drop. On a poisoned log whose
    /// default policy acknowledges appends before they are durable ([`SyncPolicy::Interval`],
    /// [`SyncPolicy::Never`]), it fails with [`Error::Poisoned`] when records appended are not
    /// durable: their appends returned, and they may be gone after a restart (before, it said
    /// `Ok(())`). Under `Batch` and `Always` the appends the failure stopped were refused.
    pub fn close(&self) -> Result<()> {
        let acknowledges_early = matches!(
            self.shared.sync_policy,
            SyncPolicy::Interval(_) | SyncPolicy::Never
        );
        let result = match self.poisoned() {
            None => self.sync().map(|_| ()),
            Some(reason)
                if acknowledges_early
                    && self.shared.last.get() > self.shared.durability.durable.get() =>
            {
                Err(Error::Poisoned(reason))
            }
            Some(_) => Ok(()),
        };
        {
            let mut writer = self.shared.writer();
            writer.closed = true;
            self.shared.commit_needed.notify_all();
        }
        if let Some(handle) = lock(&self.committer).take() {
            let _ = handle.join();
        }
        self.shared
            .durability
            .durable
            .fail(crate::watermark::CLOSED);
        result
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        let _ = self.close();
    }
}
