//! Segment files: naming, the header, the seal footer, and the scan that checks a segment.
//!
//! A segment is `header | frame* | seal?`. The 48-byte header names the log it belongs to, its
//! sequence and its first id; the seal (a frame of kind `S` carrying the last id and record
//! count) is written when the segment rolls, so opening a log reads a sealed segment's last id
//! from its final 28 bytes instead of scanning it.

use std::path::{Path, PathBuf};

use crate::compressed::{SegmentCodec, COMPRESSED_SUFFIX};
use crate::frame::{self, crc32c, Frame, FrameError, FRAME_HEADER_BYTES, KIND_RECORD, KIND_SEAL};

/// Bytes of the segment header.
pub const SEGMENT_HEADER_BYTES: usize = 48;
/// Bytes of the seal footer (a frame with an 8-byte payload).
pub const SEAL_BYTES: usize = FRAME_HEADER_BYTES + 8;
/// Magic at the start of every segment.
pub(crate) const SEGMENT_MAGIC: &[u8; 8] = b"KVWALSEG";
/// Format version of plain segments (flags must be 0).
pub(crate) const FORMAT_VERSION: u32 = 1;
/// Format version of compressed sealed segments (flags hold the codec id).
pub(crate) const FORMAT_VERSION_COMPRESSED: u32 = 2;
/// Spacing of the in-memory sparse index: one entry per this many bytes of frames.
pub(crate) const INDEX_INTERVAL_BYTES: u64 = 16 * 1024;
/// Suffix of segment file names.
pub(crate) const SEGMENT_SUFFIX: &str = ".wal";

const _: () = assert!(SEGMENT_HEADER_BYTES.is_multiple_of(8));
const _: () = assert!(SEAL_BYTES == 28);

/// The fixed header at the start of each segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub log_id: u64,
    pub sequence: u64,
    pub first_id: u64,
    /// `Some` for a compressed sealed segment (version 2, the codec id in `flags`).
    pub codec: Option<SegmentCodec>,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut bytes = [0u8; SEGMENT_HEADER_BYTES];
        bytes[0..8].copy_from_slice(SEGMENT_MAGIC);
        let (version, flags) = match self.codec {
            None => (FORMAT_VERSION, 0),
            Some(codec) => (FORMAT_VERSION_COMPRESSED, codec.id()),
        };
        bytes[8..12].copy_from_slice(&version.to_le_bytes());
        bytes[12..16].copy_from_slice(&flags.to_le_bytes());
        bytes[16..24].copy_from_slice(&self.log_id.to_le_bytes());
        bytes[24..32].copy_from_slice(&self.sequence.to_le_bytes());
        bytes[32..40].copy_from_slice(&self.first_id.to_le_bytes());
        // 40..44 reserved.
        let crc = crc32c(&bytes[..44]);
        bytes[44..48].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Result<SegmentHeader, String> {
        if bytes.len() < SEGMENT_HEADER_BYTES {
            return Err(format!(
                "header is {} bytes, {SEGMENT_HEADER_BYTES} expected",
                bytes.len()
            ));
        }
        let bytes = &bytes[..SEGMENT_HEADER_BYTES];
        if &bytes[0..8] != SEGMENT_MAGIC {
            if bytes.iter().all(|&byte| byte == 0) {
                return Err("header is zero-filled".to_owned());
            }
            return Err("bad magic: not a kv-wal segment".to_owned());
        }
        let stored = u32::from_le_bytes(bytes[44..48].try_into().expect("4 bytes"));
        let computed = crc32c(&bytes[..44]);
        if stored != computed {
            return Err(format!(
                "header CRC mismatch (stored {stored:#010x}, computed {computed:#010x})"
            ));
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        let flags = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
        let codec = match (version, flags) {
            (FORMAT_VERSION, 0) => None,
            (FORMAT_VERSION_COMPRESSED, codec) => Some(
                SegmentCodec::from_id(codec)
                    .ok_or_else(|| format!("unknown segment codec id {codec}"))?,
            ),
            (FORMAT_VERSION, flags) => return Err(format!("unsupported header flags {flags:#x}")),
            (version, _) => return Err(format!("unsupported format version {version}")),
        };
        let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        Ok(SegmentHeader {
            log_id: word(16),
            sequence: word(24),
            first_id: word(32),
            codec,
        })
    }
}

/// `{sequence:020}-{first_id:020}.wal`: sorts by sequence, says where ids start.
pub(crate) fn segment_file_name(sequence: u64, first_id: u64) -> String {
    format!("{sequence:020}-{first_id:020}{SEGMENT_SUFFIX}")
}

/// `{sequence:020}-{first_id:020}.walz`: the compressed form of a sealed segment.
pub(crate) fn compressed_segment_file_name(sequence: u64, first_id: u64) -> String {
    format!("{sequence:020}-{first_id:020}{COMPRESSED_SUFFIX}")
}

/// Parses a segment file name into (sequence, first id, compressed).
pub(crate) fn parse_segment_file_name(name: &str) -> Option<(u64, u64, bool)> {
    let (stem, compressed) = match name.strip_suffix(SEGMENT_SUFFIX) {
        Some(stem) => (stem, false),
        None => (name.strip_suffix(COMPRESSED_SUFFIX)?, true),
    };
    let (sequence, first_id) = stem.split_once('-')?;
    if sequence.len() != 20 || first_id.len() != 20 {
        return None;
    }
    Some((sequence.parse().ok()?, first_id.parse().ok()?, compressed))
}

/// Encodes the seal footer of a segment whose last record is `last_id`.
pub(crate) fn encode_seal(out: &mut Vec<u8>, last_id: u64, record_count: u64) {
    frame::encode(out, KIND_SEAL, last_id, &record_count.to_le_bytes());
}

/// A seal read from the end of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seal {
    pub last_id: u64,
    pub record_count: u64,
}

/// Decodes the seal in the final [`SEAL_BYTES`] of a segment, if there is a valid one that
/// agrees with the header.
pub(crate) fn decode_seal(tail: &[u8], first_id: u64) -> Option<Seal> {
    let frame = frame::decode(tail).ok()?;
    if frame.kind != KIND_SEAL || frame.payload.len() != 8 || frame.encoded_len() != tail.len() {
        return None;
    }
    let record_count = u64::from_le_bytes(frame.payload.try_into().ok()?);
    if record_count == 0 || frame.id.checked_sub(first_id)?.checked_add(1)? != record_count {
        return None;
    }
    Some(Seal {
        last_id: frame.id,
        record_count,
    })
}

/// Sparse map from id to file offset: one entry per [`INDEX_INTERVAL_BYTES`] of frames.
#[derive(Debug, Clone, Default)]
pub(crate) struct SparseIndex {
    entries: Vec<(u64, u64)>,
    last_offset: Option<u64>,
}

impl SparseIndex {
    pub fn observe(&mut self, id: u64, offset: u64) {
        let due = match self.last_offset {
            None => true,
            Some(last) => offset >= last + INDEX_INTERVAL_BYTES,
        };
        if due {
            self.entries.push((id, offset));
            self.last_offset = Some(offset);
        }
    }
    /// The offset of the greatest indexed id `<= id`, if any.
    pub fn seek(&self, id: u64) -> Option<(u64, u64)> {
        let position = self.entries.partition_point(|&(indexed, _)| indexed <= id);
        position.checked_sub(1).map(|index| self.entries[index])
    }
    /// Drops entries for ids above `id` (after a truncation).
    pub fn truncate_after(&mut self, id: u64) {
        self.entries.retain(|&(indexed, _)| indexed <= id);
        self.last_offset = self.entries.last().map(|&(_, offset)| offset);
    }
}

/// Damage found while scanning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Damage {
    /// Where the bad bytes start.
    pub offset: u64,
    pub reason: String,
    /// Where good frames resume in this segment, and the id there.
    pub resume: Option<(u64, u64)>,
    /// Whether everything from `offset` to the end is zero.
    pub zeroed_to_end: bool,
}

/// A region readers must jump over (SkipCorrupt mode): `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SkipRange {
    pub from: u64,
    pub to: u64,
}

/// Everything a full scan of one segment learned.
#[derive(Debug, Default)]
pub(crate) struct ScanResult {
    /// End of the undamaged prefix (offset of the first damage, or of the seal/end).
    pub clean_end: u64,
    /// Records and last id in the undamaged prefix.
    pub clean_records: u64,
    pub clean_last_id: Option<u64>,
    /// Whether a valid seal ends the segment (after any damage).
    pub sealed: bool,
    /// Every stretch of damage, in order, with where good data resumes.
    pub damages: Vec<Damage>,
    /// Counting the good frames after damage too.
    pub all_records: u64,
    pub all_last_id: Option<u64>,
    /// End of the last good frame anywhere (before any seal).
    pub all_end: u64,
    /// The index over every good frame; callers cut it to the prefix they keep.
    pub index: SparseIndex,
}

/// Scans a whole segment image (`bytes` includes the header), expecting ids from `first_id`.
pub(crate) fn scan(bytes: &[u8], first_id: u64) -> ScanResult {
    let mut result = ScanResult {
        clean_end: SEGMENT_HEADER_BYTES as u64,
        all_end: SEGMENT_HEADER_BYTES as u64,
        ..ScanResult::default()
    };
    let mut position = SEGMENT_HEADER_BYTES;
    let mut expected_id = first_id;
    let mut damaged = false;
    while position < bytes.len() {
        let problem = match frame::decode(&bytes[position..]) {
            Ok(frame) if frame.kind == KIND_RECORD && frame.id == expected_id => {
                result.index.observe(frame.id, position as u64);
                position += frame.encoded_len();
                expected_id += 1;
                result.all_records += 1;
                result.all_last_id = Some(frame.id);
                result.all_end = position as u64;
                if !damaged {
                    result.clean_records += 1;
                    result.clean_last_id = Some(frame.id);
                    result.clean_end = position as u64;
                }
                continue;
            }
            Ok(frame) if frame.kind == KIND_SEAL => {
                match seal_problem(&frame, position, bytes.len(), &result, damaged) {
                    None => {
                        result.sealed = true;
                        return result;
                    }
                    Some(problem) => problem,
                }
            }
            Ok(frame) => {
                let reason = format!("record id {} where {expected_id} was expected", frame.id);
                if frame.id > expected_id {
                    // Records are missing here; this one is good and is where reading resumes.
                    result.damages.push(Damage {
                        offset: position as u64,
                        reason,
                        resume: Some((position as u64, frame.id)),
                        zeroed_to_end: false,
                    });
                    damaged = true;
                    expected_id = frame.id;
                    continue;
                }
                // A replayed or out-of-order record: skip it whole.
                let resume = find_resume(bytes, position + frame.encoded_len(), expected_id);
                result.damages.push(Damage {
                    offset: position as u64,
                    reason,
                    resume: resume.map(|(offset, id)| (offset as u64, id)),
                    zeroed_to_end: false,
                });
                damaged = true;
                match resume {
                    Some((offset, id)) => {
                        position = offset;
                        expected_id = id;
                        continue;
                    }
                    None => break,
                }
            }
            Err(error) => error.to_string(),
        };
        let resume = find_resume(bytes, position + 1, expected_id);
        let zeroed_to_end = bytes[position..].iter().all(|&byte| byte == 0);
        result.damages.push(Damage {
            offset: position as u64,
            reason: problem,
            resume: resume.map(|(offset, id)| (offset as u64, id)),
            zeroed_to_end,
        });
        damaged = true;
        match resume {
            Some((offset, id)) => {
                position = offset;
                expected_id = id;
            }
            None => break,
        }
    }
    result
}

fn seal_problem(
    frame: &Frame<'_>,
    position: usize,
    len: usize,
    result: &ScanResult,
    damaged: bool,
) -> Option<String> {
    if position + frame.encoded_len() != len {
        return Some("data after the segment seal".to_owned());
    }
    if damaged {
        // Records were lost before it; the seal still marks the end of the segment.
        return (Some(frame.id) < result.all_last_id).then(|| "seal precedes records".to_owned());
    }
    let count = frame.payload.try_into().map(u64::from_le_bytes).ok();
    if Some(frame.id) != result.all_last_id || count != Some(result.all_records) {
        return Some(format!(
            "seal says last id {} ({count:?} records) but the segment holds {:?} ({} records)",
            frame.id, result.all_last_id, result.all_records
        ));
    }
    None
}

/// Finds the next offset at or after `from` where a valid record with id `>= min_id` (or a
/// valid seal at the very end) starts.
fn find_resume(bytes: &[u8], from: usize, min_id: u64) -> Option<(usize, u64)> {
    let last_start = bytes.len().checked_sub(FRAME_HEADER_BYTES)?;
    for offset in from..=last_start {
        let kind = bytes[offset + 4];
        if (kind != KIND_RECORD && kind != KIND_SEAL) || bytes[offset + 5..offset + 8] != [0, 0, 0]
        {
            continue;
        }
        match frame::decode(&bytes[offset..]) {
            Ok(frame) if frame.kind == KIND_RECORD && frame.id >= min_id => {
                return Some((offset, frame.id))
            }
            Ok(frame) if frame.kind == KIND_SEAL && offset + frame.encoded_len() == bytes.len() => {
                return Some((offset, frame.id + 1));
            }
            Ok(_) | Err(FrameError::Incomplete { .. }) | Err(_) => continue,
        }
    }
    None
}

/// The path of a segment in `dir`.
pub(crate) fn segment_path(dir: &Path, sequence: u64, first_id: u64) -> PathBuf {
    dir.join(segment_file_name(sequence, first_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(first_id: u64, payloads: &[&[u8]], seal: bool) -> Vec<u8> {
        let header = SegmentHeader {
            log_id: 9,
            sequence: 1,
            first_id,
            codec: None,
        };
        let mut bytes = header.encode().to_vec();
        for (index, payload) in payloads.iter().enumerate() {
            frame::encode(&mut bytes, KIND_RECORD, first_id + index as u64, payload);
        }
        if seal {
            encode_seal(
                &mut bytes,
                first_id + payloads.len() as u64 - 1,
                payloads.len() as u64,
            );
        }
        bytes
    }

    #[test]
    fn names_sort_and_parse() {
        let name = segment_file_name(3, 1_000);
        assert_eq!(parse_segment_file_name(&name), Some((3, 1_000, false)));
        let name = compressed_segment_file_name(3, 1_000);
        assert_eq!(parse_segment_file_name(&name), Some((3, 1_000, true)));
        assert!(segment_file_name(9, 5) < segment_file_name(10, 1));
        assert_eq!(parse_segment_file_name("wal.meta"), None);
        assert_eq!(parse_segment_file_name("1-2.wal"), None);
    }

    #[test]
    fn header_round_trip_and_damage() {
        let header = SegmentHeader {
            log_id: 1,
            sequence: 2,
            first_id: 3,
            codec: None,
        };
        for codec in [None, Some(SegmentCodec::Lz4), Some(SegmentCodec::Zstd)] {
            let header = SegmentHeader { codec, ..header };
            let bytes = header.encode();
            assert_eq!(SegmentHeader::decode(&bytes), Ok(header));
            for bit in 0..SEGMENT_HEADER_BYTES * 8 {
                let mut damaged = bytes;
                damaged[bit / 8] ^= 1 << (bit % 8);
                assert!(SegmentHeader::decode(&damaged).is_err(), "bit {bit}");
            }
        }
        // A version 1 reader's rule still holds: a plain header has no flags.
        let compressed = SegmentHeader {
            codec: Some(SegmentCodec::Lz4),
            ..header
        }
        .encode();
        assert_eq!(u32::from_le_bytes(compressed[8..12].try_into().unwrap()), 2);
        assert_eq!(
            u32::from_le_bytes(compressed[12..16].try_into().unwrap()),
            1
        );
        assert!(SegmentHeader::decode(&[0u8; 48])
            .unwrap_err()
            .contains("zero"));
    }

    #[test]
    fn clean_and_sealed_scans() {
        let bytes = image(5, &[b"a", b"bb", b"ccc"], true);
        let result = scan(&bytes, 5);
        assert!(result.sealed);
        assert!(result.damages.is_empty());
        assert_eq!(result.clean_last_id, Some(7));
        assert_eq!(result.clean_records, 3);
        let seal = decode_seal(&bytes[bytes.len() - SEAL_BYTES..], 5).unwrap();
        assert_eq!(
            seal,
            Seal {
                last_id: 7,
                record_count: 3
            }
        );
    }

    #[test]
    fn damage_in_the_middle_finds_where_records_resume() {
        let mut bytes = image(1, &[b"first", b"second", b"third"], false);
        let second = SEGMENT_HEADER_BYTES + FRAME_HEADER_BYTES + 5;
        bytes[second + FRAME_HEADER_BYTES] ^= 0xff;
        let result = scan(&bytes, 1);
        assert_eq!(result.clean_last_id, Some(1));
        assert_eq!(result.damages.len(), 1);
        let damage = &result.damages[0];
        assert_eq!(damage.offset, second as u64);
        assert_eq!(damage.resume.map(|(_, id)| id), Some(3));
        assert_eq!(result.all_last_id, Some(3));
    }

    #[test]
    fn zeroed_tail_is_recognised() {
        let mut bytes = image(1, &[b"first"], false);
        let end = bytes.len();
        bytes.extend([0u8; 100]);
        let result = scan(&bytes, 1);
        assert_eq!(result.clean_end, end as u64);
        assert!(result.damages[0].zeroed_to_end);
        assert_eq!(result.damages[0].resume, None);
    }

    #[test]
    fn sparse_index_seeks() {
        let mut index = SparseIndex::default();
        index.observe(1, 48);
        index.observe(2, 100);
        index.observe(50, 48 + INDEX_INTERVAL_BYTES);
        assert_eq!(index.seek(0), None);
        assert_eq!(index.seek(10), Some((1, 48)));
        assert_eq!(index.seek(60), Some((50, 48 + INDEX_INTERVAL_BYTES)));
        index.truncate_after(10);
        assert_eq!(index.seek(60), Some((1, 48)));
    }
}
