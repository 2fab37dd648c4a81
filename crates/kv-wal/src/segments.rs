//! The segments as the running log sees them: one [`Segment`] per file, shared by the writer
//! and readers, and [`SegmentInfo`], what [`crate::Wal::segments`] tells.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::codec::SegmentCodec;
use crate::compressed_format::CompressedLayout;
use crate::error::{IoContext, Result};
use crate::fs::{read_range, WalFile};
use crate::recovery::{corrupt, RecoveredSegment};
use crate::segment_file::SEGMENT_HEADER_BYTES;
use crate::segment_scan::{scan, Fence, SkipRange, SparseIndex};

/// One segment file as the running log sees it. Shared with readers.
#[derive(Debug)]
pub(crate) struct Segment {
    pub sequence: u64,
    pub first_id: u64,
    pub path: PathBuf,
    /// Last record id (`first_id - 1` when empty).
    pub(crate) last_id: AtomicU64,
    /// End of the last readable frame.
    pub(crate) end_offset: AtomicU64,
    /// Bytes of data in the file, seal included (what `/segments` calls its size).
    pub(crate) file_bytes: AtomicU64,
    /// The file's length: the data and, in a preallocated segment, the free space after it.
    pub(crate) allocated_bytes: AtomicU64,
    pub(crate) sealed: AtomicBool,
    /// `None` until built (sealed segments are not scanned at open).
    pub index: Mutex<Option<SparseIndex>>,
    /// Damaged regions readers jump over (SkipCorrupt).
    pub skips: Mutex<Vec<SkipRange>>,
    /// The blocks of a compressed sealed segment (`None`: a plain segment). Never changes: a
    /// segment that is compressed, or rewritten plain, gets a new `Segment`.
    pub compressed: Option<Arc<CompressedLayout>>,
    /// Compressing it did not make it smaller: later passes leave it plain.
    pub incompressible: AtomicBool,
    /// The salt of its frames' CRCs (0: a segment of format version 1 or 2).
    pub salt: u32,
    /// Created preallocated (format version 5): zeros after its data are free space.
    pub preallocated: bool,
    /// Offset through which the file is known synced (for durability marks).
    synced_through: AtomicU64,
}

impl Segment {
    /// A new, empty segment: the active one, its file preallocated `allocated_bytes` long (0:
    /// not preallocated).
    pub(crate) fn empty(
        sequence: u64,
        first_id: u64,
        path: PathBuf,
        salt: u32,
        allocated_bytes: u64,
    ) -> Segment {
        Segment::from(RecoveredSegment {
            sequence,
            first_id,
            path,
            last_id: first_id - 1,
            end_offset: SEGMENT_HEADER_BYTES as u64,
            file_bytes: SEGMENT_HEADER_BYTES as u64,
            allocated_bytes: allocated_bytes.max(SEGMENT_HEADER_BYTES as u64),
            sealed: false,
            index: Some(SparseIndex::default()),
            skips: Vec::new(),
            compressed: None,
            salt,
            preallocated: allocated_bytes > 0,
        })
    }

    /// A compressed sealed segment.
    pub(crate) fn new_compressed(
        sequence: u64,
        first_id: u64,
        path: PathBuf,
        layout: CompressedLayout,
        file_bytes: u64,
        salt: u32,
    ) -> Segment {
        Segment::from(RecoveredSegment::compressed(
            sequence, first_id, path, layout, file_bytes, salt,
        ))
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
    /// Offset through which the file is known synced.
    pub(crate) fn synced_through(&self) -> u64 {
        self.synced_through.load(Ordering::Acquire)
    }
    /// Records that an fsync covered the file through `offset`.
    pub(crate) fn note_synced(&self, offset: u64) {
        self.synced_through.fetch_max(offset, Ordering::AcqRel);
    }
    /// Sets how far the file is synced after a cut (the cut was fsynced).
    pub(crate) fn reset_synced(&self, offset: u64) {
        self.synced_through.store(offset, Ordering::Release);
    }
    pub(crate) fn file_bytes(&self) -> u64 {
        self.file_bytes.load(Ordering::Acquire)
    }
    /// The file's length (never less than its data).
    pub(crate) fn allocated_bytes(&self) -> u64 {
        self.allocated_bytes
            .load(Ordering::Acquire)
            .max(self.file_bytes())
    }
}

/// A segment as [`crate::Wal::segments`] describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// The file.
    pub path: PathBuf,
    /// Its sequence number.
    pub sequence: u64,
    /// Bytes used: the header, the frames and the seal.
    pub size_bytes: u64,
    /// The file's length: `size_bytes` plus, in a preallocated segment, the free space after
    /// its data (the disk space the segment takes).
    pub allocated_bytes: u64,
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

impl From<RecoveredSegment> for Segment {
    fn from(recovered: RecoveredSegment) -> Segment {
        let RecoveredSegment {
            sequence,
            first_id,
            path,
            last_id,
            end_offset,
            file_bytes,
            allocated_bytes,
            sealed,
            index,
            skips,
            compressed,
            salt,
            preallocated,
        } = recovered;
        Segment {
            sequence,
            first_id,
            path,
            last_id: AtomicU64::new(last_id),
            end_offset: AtomicU64::new(end_offset),
            file_bytes: AtomicU64::new(file_bytes),
            allocated_bytes: AtomicU64::new(allocated_bytes),
            sealed: AtomicBool::new(sealed),
            index: Mutex::new(index),
            skips: Mutex::new(skips),
            compressed: compressed.map(Arc::new),
            incompressible: AtomicBool::new(false),
            salt,
            preallocated,
            // Recovered segments are durable once open is done (it fsyncs the last one).
            synced_through: AtomicU64::new(end_offset),
        }
    }
}

/// An index over one segment, built by scanning it (for sealed segments not scanned at open).
/// Damage with whole records after it, up to the seal, fences the index
/// ([`crate::segment_scan::Fence`]): the records from where they resume are read, a reader of
/// an earlier id stops at the damage with [`crate::Error::Corrupt`].
pub(crate) fn build_index(file: &dyn WalFile, segment: &Segment) -> Result<SparseIndex> {
    let end = segment.end_offset();
    let bytes = read_range(file, 0, end).at(&segment.path)?;
    let result = scan(&bytes, segment.first_id, segment.salt, false);
    let fence = Fence::of(&result.damages, segment.first_id)
        .map_err(|damage| corrupt(&segment.path, damage.offset, damage.reason.clone()))?;
    if result.all_last_id.unwrap_or(segment.first_id - 1) != segment.last_id() {
        let (offset, reason) = match result.damages.first() {
            Some(damage) => (damage.offset, damage.reason.clone()),
            None => (
                result.clean_end,
                format!(
                    "segment ends at id {:?} but its seal says {}",
                    result.clean_last_id,
                    segment.last_id()
                ),
            ),
        };
        return Err(corrupt(&segment.path, offset, reason));
    }
    let mut index = result.index;
    index.set_fence(fence);
    Ok(index)
}
