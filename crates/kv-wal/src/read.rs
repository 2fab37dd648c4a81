//! Reading: point reads, forward iteration across segments, and raw frame batches for
//! replication. Readers never block writers: they read with positional reads up to each
//! segment's published end.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::compressed_format::{read_block, CompressedLayout};
use crate::error::{Error, IoContext, Result};
use crate::frame::{self, FRAME_HEADER_BYTES};
use crate::fs::WalFile;
use crate::segment_file::SEGMENT_HEADER_BYTES;
use crate::segment_scan::Fence;
use crate::segments::{build_index, Segment};
use crate::shared::Shared;
use crate::wal::Wal;

/// Bytes read from a segment at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// A record read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its id.
    pub id: u64,
    frame: Vec<u8>,
    /// The payload, when the frame stores it compressed.
    decompressed: Option<Vec<u8>>,
}

impl Record {
    /// The payload, as appended (decompressed if it was stored compressed).
    pub fn payload(&self) -> &[u8] {
        match &self.decompressed {
            Some(payload) => payload,
            None => &self.frame[FRAME_HEADER_BYTES..],
        }
    }
    /// The payload, owned.
    pub fn into_payload(mut self) -> Vec<u8> {
        if let Some(payload) = self.decompressed {
            return payload;
        }
        self.frame.drain(..FRAME_HEADER_BYTES);
        self.frame
    }
    /// The whole frame in its wire form: as stored, but with the plain CRC-32C of the frame
    /// (without its segment's salt; see `kv_wal::frame`). What replication ships.
    pub fn frame_bytes(&self) -> &[u8] {
        &self.frame
    }
    /// The record's CRC-32C (of its wire form).
    pub fn crc(&self) -> u32 {
        u32::from_le_bytes(self.frame[..4].try_into().expect("frame header"))
    }
}

/// Consecutive frames in their wire form (byte for byte as stored, but each CRC without its
/// segment's salt): the unit a leader ships to a follower.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameBatch {
    /// Id of the first frame.
    pub first_id: u64,
    /// Id of the last frame.
    pub last_id: u64,
    /// The frames.
    pub bytes: Vec<u8>,
}

/// Reads frames from one segment, buffering chunks (plain) or one block (compressed).
struct SegmentReader {
    segment: Arc<Segment>,
    file: Arc<dyn WalFile>,
    offset: u64,
    buffer: Vec<u8>,
    buffer_start: u64,
    compressed: Option<BlockCursor>,
    /// Damage this reader may not cross ([`crate::segment_scan::Fence`]): it began before
    /// where whole records resume after it.
    stop_at: Option<Fence>,
}

/// Where a reader is in a compressed segment: the frames of the current block, decompressed.
struct BlockCursor {
    layout: Arc<CompressedLayout>,
    next_block: usize,
    frames: Vec<u8>,
    position: usize,
}

impl SegmentReader {
    fn open(shared: &Shared, segment: Arc<Segment>, id: u64) -> Result<SegmentReader> {
        let file = shared.fs.open(&segment.path).at(&segment.path)?;
        SegmentReader::new(segment, file, id)
    }

    fn new(segment: Arc<Segment>, file: Arc<dyn WalFile>, id: u64) -> Result<SegmentReader> {
        if let Some(layout) = segment.compressed.clone() {
            let next_block = layout.block_for(id);
            let offset = layout
                .blocks
                .get(next_block)
                .map_or(SEGMENT_HEADER_BYTES as u64, |block| block.offset);
            return Ok(SegmentReader {
                segment,
                file,
                offset,
                buffer: Vec::new(),
                buffer_start: 0,
                compressed: Some(BlockCursor {
                    layout,
                    next_block,
                    frames: Vec::new(),
                    position: 0,
                }),
                stop_at: None,
            });
        }
        let (offset, stop_at) = {
            let mut index = segment
                .index
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let index = match &mut *index {
                Some(index) => index,
                built => built.insert(build_index(&*file, &segment)?),
            };
            let offset = index
                .seek(id)
                .map_or(SEGMENT_HEADER_BYTES as u64, |(_, offset)| offset);
            (offset, index.fence_before(id).cloned())
        };
        Ok(SegmentReader {
            segment,
            file,
            offset,
            buffer: Vec::new(),
            buffer_start: 0,
            compressed: None,
            stop_at,
        })
    }

    fn corrupt(&self, reason: String) -> Error {
        Error::Corrupt {
            segment: self.segment.path.clone(),
            offset: self.offset,
            reason,
        }
    }

    /// The next record's frame: `(offset, id, frame bytes)`, or `None` at the segment's end.
    /// Durability marks are stepped over.
    fn next_frame(&mut self) -> Result<Option<(u64, u64, &[u8])>> {
        if self.compressed.is_some() {
            return self.next_block_frame();
        }
        loop {
            match self.next_plain_frame()? {
                None => return Ok(None),
                Some((_, _, len, false)) => self.offset += len as u64,
                Some((offset, id, len, true)) => {
                    self.offset += len as u64;
                    let start = (offset - self.buffer_start) as usize;
                    return Ok(Some((offset, id, &self.buffer[start..start + len])));
                }
            }
        }
    }

    /// Decodes the frame at `self.offset` (after any skipped range) into the buffer, without
    /// moving past it: `(offset, id, length, is a record)`, or `None` at the segment's end.
    fn next_plain_frame(&mut self) -> Result<Option<(u64, u64, usize, bool)>> {
        let end = self.segment.end_offset();
        loop {
            if self.offset >= end {
                return Ok(None);
            }
            let skip_to = {
                let skips = self
                    .segment
                    .skips
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                skips
                    .iter()
                    .find(|skip| skip.from == self.offset && skip.to > skip.from)
                    .map(|skip| skip.to)
            };
            match skip_to {
                Some(to) => self.offset = to,
                None => break,
            }
        }
        if self.offset >= end {
            return Ok(None);
        }
        if let Some(fence) = self
            .stop_at
            .as_ref()
            .filter(|fence| self.offset >= fence.damage_offset)
        {
            return Err(Error::Corrupt {
                segment: self.segment.path.clone(),
                offset: fence.damage_offset,
                reason: format!(
                    "{} (the log opened past this damage: its segment is read from id {} on)",
                    fence.reason, fence.resume_id
                ),
            });
        }
        let available = end - self.offset;
        self.fill(FRAME_HEADER_BYTES.min(available as usize), end)?;
        let mut needed = FRAME_HEADER_BYTES;
        loop {
            let start = (self.offset - self.buffer_start) as usize;
            let window_end = self.buffer.len().min(start + available as usize);
            match frame::decode_salted(&self.buffer[start..window_end], self.segment.salt) {
                Ok(frame) if frame.is_mark() => {
                    return Ok(Some((self.offset, frame.id, frame.encoded_len(), false)));
                }
                Ok(frame) if !frame.is_record() => {
                    return Err(
                        self.corrupt("segment seal before the end of the segment".to_owned())
                    );
                }
                Ok(frame) => return Ok(Some((self.offset, frame.id, frame.encoded_len(), true))),
                Err(frame::FrameError::Incomplete { needed: more })
                    if more > needed && (more as u64) <= available =>
                {
                    needed = more;
                    self.fill(needed, end)?;
                }
                Err(error) => return Err(self.corrupt(error.to_string())),
            }
        }
    }

    /// The next frame of a compressed segment; the offset returned is its block's.
    fn next_block_frame(&mut self) -> Result<Option<(u64, u64, &[u8])>> {
        let SegmentReader {
            segment,
            file,
            offset,
            compressed,
            ..
        } = self;
        let cursor = compressed.as_mut().expect("a compressed segment");
        if cursor.position >= cursor.frames.len() {
            let Some(block) = cursor.layout.blocks.get(cursor.next_block).copied() else {
                return Ok(None);
            };
            *offset = block.offset;
            let stored = crate::fs::read_range(&**file, block.offset, block.stored_len())
                .at(&segment.path)?;
            let (frames, _) =
                read_block(&stored, cursor.layout.codec, block.first_id, segment.salt).map_err(
                    |reason| Error::Corrupt {
                        segment: segment.path.clone(),
                        offset: block.offset,
                        reason: format!(
                            "compressed block of ids {}..={}: {reason}",
                            block.first_id,
                            block.last_id()
                        ),
                    },
                )?;
            cursor.frames = frames;
            cursor.position = 0;
            cursor.next_block += 1;
        }
        let start = cursor.position;
        // The whole block was checked frame by frame when it was read.
        let frame =
            frame::decode_salted(&cursor.frames[start..], segment.salt).map_err(|error| {
                Error::Corrupt {
                    segment: segment.path.clone(),
                    offset: *offset,
                    reason: error.to_string(),
                }
            })?;
        let (id, len) = (frame.id, frame.encoded_len());
        cursor.position += len;
        Ok(Some((*offset, id, &cursor.frames[start..start + len])))
    }

    /// Makes sure the buffer holds `needed` bytes from `self.offset`.
    fn fill(&mut self, needed: usize, end: u64) -> Result<()> {
        let buffered_end = self.buffer_start + self.buffer.len() as u64;
        if self.offset >= self.buffer_start && self.offset + needed as u64 <= buffered_end {
            return Ok(());
        }
        let want = needed
            .max(READ_CHUNK_BYTES)
            .min((end - self.offset) as usize);
        self.buffer =
            crate::fs::read_range(&*self.file, self.offset, want as u64).at(&self.segment.path)?;
        self.buffer_start = self.offset;
        if self.buffer.len() < needed {
            return Err(self.corrupt(format!(
                "segment is shorter than its published end ({} of {needed} bytes readable)",
                self.buffer.len()
            )));
        }
        Ok(())
    }
}

/// Iterates records in id order from a starting id to the tail as it was when each step ran.
/// Crosses segments; jumps over gaps in ids (purged prefix, skipped holes). Ends with
/// [`Error::Truncated`] if the log is truncated meanwhile.
pub struct WalIter {
    shared: Arc<Shared>,
    next_id: u64,
    truncations: u64,
    reader: Option<SegmentReader>,
    finished: bool,
}

impl std::fmt::Debug for WalIter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalIter")
            .field("next_id", &self.next_id)
            .finish_non_exhaustive()
    }
}

impl WalIter {
    /// The id the iterator looks for next.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// The segment holding `id` or, if none does, the first segment after it.
    fn locate(&self) -> Option<Arc<Segment>> {
        let segments = self.shared.segments_read();
        let position = segments.partition_point(|segment| segment.first_id <= self.next_id);
        let start = position.saturating_sub(1);
        segments[start..]
            .iter()
            .find(|segment| !segment.is_empty() && segment.last_id() >= self.next_id)
            .cloned()
    }

    fn step(&mut self) -> Result<Option<Record>> {
        loop {
            if self.shared.truncations.load(Ordering::Acquire) != self.truncations {
                return Err(Error::Truncated);
            }
            if self.reader.is_none() {
                let Some(segment) = self.locate() else {
                    return Ok(None);
                };
                self.next_id = self.next_id.max(segment.first_id);
                match SegmentReader::open(&self.shared, segment.clone(), self.next_id) {
                    Ok(reader) => self.reader = Some(reader),
                    // The file was replaced (compressed) or removed (purged) after this segment
                    // was located: locate again.
                    Err(Error::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound
                            && !self.shared.holds(&segment) =>
                    {
                        continue;
                    }
                    Err(error) => return Err(error),
                }
            }
            let reader = self.reader.as_mut().expect("reader");
            match reader.next_frame() {
                Ok(Some((offset, id, bytes))) if id >= self.next_id => {
                    let mut frame = bytes.to_vec();
                    frame::reseal(&mut frame, reader.segment.salt, 0);
                    let decompressed = if frame[5] & frame::FLAG_LZ4 != 0 {
                        let contents = frame::decode(&frame)
                            .and_then(|decoded| {
                                decoded.contents().map(|contents| contents.into_owned())
                            })
                            .map_err(|error| Error::Corrupt {
                                segment: reader.segment.path.clone(),
                                offset,
                                reason: error.to_string(),
                            })?;
                        Some(contents)
                    } else {
                        None
                    };
                    self.next_id = id + 1;
                    return Ok(Some(Record {
                        id,
                        frame,
                        decompressed,
                    }));
                }
                Ok(Some(_)) => continue,
                Ok(None) => {
                    let finished = self.reader.take().expect("reader").segment;
                    let is_last = self
                        .shared
                        .segments_read()
                        .last()
                        .is_some_and(|last| Arc::ptr_eq(last, &finished));
                    if is_last {
                        return Ok(None);
                    }
                    // The next segment holds `next_id` or later.
                    self.next_id = self.next_id.max(finished.last_id() + 1);
                }
                Err(_) if self.shared.truncations.load(Ordering::Acquire) != self.truncations => {
                    return Err(Error::Truncated);
                }
                Err(error) => return Err(error),
            }
        }
    }
}

impl Iterator for WalIter {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Result<Record>> {
        if self.finished {
            return None;
        }
        match self.step() {
            Ok(Some(record)) => Some(Ok(record)),
            Ok(None) => {
                self.finished = true;
                None
            }
            Err(error) => {
                self.finished = true;
                Some(Err(error))
            }
        }
    }
}

/// The offset just past record `after_id` in `segment` (for truncation): where the record
/// after it starts. Read from there, so a cut just before where whole records resume after
/// damage the log opened past ([`crate::segment_scan::Fence`]) is found without crossing it.
pub(crate) fn offset_after(
    file: Arc<dyn WalFile>,
    segment: &Arc<Segment>,
    after_id: u64,
) -> Result<u64> {
    let mut reader = SegmentReader::new(segment.clone(), file, after_id + 1)?;
    while let Some((offset, id, bytes)) = reader.next_frame()? {
        if id == after_id {
            return Ok(offset + bytes.len() as u64);
        }
        if id > after_id {
            return Ok(offset);
        }
    }
    Err(reader.corrupt(format!("record {after_id} not found in its segment")))
}

impl Wal {
    /// Reads the record with `id`, if the log has it.
    pub fn read(&self, id: u64) -> Result<Option<Vec<u8>>> {
        match self.iter_from(id).next() {
            Some(Ok(record)) if record.id == id => Ok(Some(record.into_payload())),
            Some(Err(error)) => Err(error),
            _ => Ok(None),
        }
    }

    /// Iterates records with ids `>= id`, in order. If `id` precedes the first id kept (the
    /// prefix was purged), iteration starts at the first id kept: compare the first record's
    /// id with what you asked for.
    pub fn iter_from(&self, id: u64) -> WalIter {
        WalIter {
            shared: self.shared.clone(),
            next_id: id.max(1),
            truncations: self.shared.truncations.load(Ordering::Acquire),
            reader: None,
            finished: false,
        }
    }

    /// Reads consecutive frames from `from_id` in their wire form, up to `bytes_max`
    /// bytes (at least one frame) and no id beyond `through_id`. Stops before a gap in ids.
    /// `None` when there is nothing to read.
    pub fn read_frames(
        &self,
        from_id: u64,
        bytes_max: usize,
        through_id: u64,
    ) -> Result<Option<FrameBatch>> {
        let mut batch: Option<FrameBatch> = None;
        for record in self.iter_from(from_id) {
            let record = record?;
            if record.id > through_id {
                break;
            }
            match batch.as_mut() {
                None => {
                    batch = Some(FrameBatch {
                        first_id: record.id,
                        last_id: record.id,
                        bytes: record.frame,
                    })
                }
                Some(batch) => {
                    if record.id != batch.last_id + 1
                        || batch.bytes.len() + record.frame.len() > bytes_max
                    {
                        break;
                    }
                    batch.last_id = record.id;
                    batch.bytes.extend_from_slice(&record.frame);
                }
            }
            if batch
                .as_ref()
                .is_some_and(|batch| batch.bytes.len() >= bytes_max)
            {
                break;
            }
        }
        Ok(batch)
    }
}
