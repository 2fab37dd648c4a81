//! Frames as replication ships them: kv-wal frames in their wire form (each with the CRC-32C of
//! its bytes), and the CRC-32C of snapshot chunks in transit. Everything that looks into
//! frames or checksums for replication goes through here — the follower's checks before an
//! append, the JSON view of a fetch, the snapshot chunks' checksums — so no layer above decodes
//! WAL frames itself.

use kv_store::LogEntry;

use crate::error::{Error, Result};

/// Checks a batch before it may be appended: every CRC, ids consecutive from `first_id`.
/// Returns the batch's last id.
pub fn check_frames(frames: &[u8], first_id: u64) -> Result<u64> {
    let decoded = kv_wal::frame::decode_all(frames)
        .map_err(|(offset, reason)| Error::DamagedBatch { offset, reason })?;
    match (decoded.first(), decoded.last()) {
        (Some(first), Some(last)) if first.id == first_id => Ok(last.id),
        (Some(first), _) => Err(Error::BatchStart {
            first_id: first.id,
            asked_id: first_id,
        }),
        _ => Err(Error::EmptyBatch),
    }
}

/// One frame of a batch, for people: its id, CRC and size, and the store entry it carries
/// (`None` if its payload is not one).
#[derive(Debug, Clone, PartialEq)]
pub struct FrameSummary {
    /// The record's id.
    pub id: u64,
    /// The frame's CRC-32C, as shipped.
    pub crc: u32,
    /// The frame's size in bytes.
    pub bytes: usize,
    /// The entry in it.
    pub entry: Option<LogEntry>,
}

/// Decodes a batch of frames into summaries (the JSON view of a fetch); fails with
/// [`Error::DamagedBatch`] at the first frame that does not check.
pub fn describe_frames(frames: &[u8]) -> Result<Vec<FrameSummary>> {
    let decoded = kv_wal::frame::decode_all(frames)
        .map_err(|(offset, reason)| Error::DamagedBatch { offset, reason })?;
    Ok(decoded
        .iter()
        .map(|frame| FrameSummary {
            id: frame.id,
            crc: frame.crc,
            bytes: frame.encoded_len(),
            entry: frame
                .contents()
                .ok()
                .and_then(|contents| LogEntry::decode(&contents).ok()),
        })
        .collect())
}

/// The CRC-32C a snapshot chunk travels with: the leader sends it beside the chunk, the
/// follower refuses a chunk whose bytes do not match it.
pub fn chunk_crc(chunk: &[u8]) -> u32 {
    kv_wal::frame::crc32c(chunk)
}

/// The id of the last frame of a batch read from this node's own log (already checked when
/// read), found by walking the frame headers without checking CRCs again; `None` for an
/// empty or truncated batch. A stream's leader uses it to know what it has sent.
pub fn last_frame_id(frames: &[u8]) -> Option<u64> {
    const HEADER: usize = kv_wal::frame::FRAME_HEADER_BYTES;
    let mut offset = 0usize;
    let mut last = None;
    while frames.len() >= offset + HEADER {
        let header = &frames[offset..offset + HEADER];
        let len = u32::from_le_bytes(header[8..12].try_into().ok()?) as usize;
        let end = offset.checked_add(HEADER)?.checked_add(len)?;
        if end > frames.len() {
            return None;
        }
        last = Some(u64::from_le_bytes(header[12..20].try_into().ok()?));
        offset = end;
    }
    (offset == frames.len()).then_some(last).flatten()
}
