//! Segment files: naming, the header and the seal footer. The scan that checks a plain
//! segment's frames is in `segment_scan.rs`.
//!
//! A segment is `header | frame* | seal?`. The 48-byte header names the log it belongs to, its
//! sequence and its first id; the seal (a frame of kind `S` carrying the last id and record
//! count) is written when the segment rolls, so opening a log reads a sealed segment's last id
//! from its final 28 bytes instead of scanning it.

use std::path::{Path, PathBuf};

use crate::codec::SegmentCodec;
use crate::error::Malformed;
use crate::frame::{self, crc32c, FRAME_HEADER_BYTES, KIND_MARK, KIND_SEAL};

/// Bytes of the segment header.
pub const SEGMENT_HEADER_BYTES: usize = 48;
/// Bytes of the seal footer (a frame with an 8-byte payload).
pub const SEAL_BYTES: usize = FRAME_HEADER_BYTES + 8;
/// Magic at the start of every segment.
pub(crate) const SEGMENT_MAGIC: &[u8; 8] = b"KVWALSEG";
/// Format version of plain segments whose frames carry the plain CRC (read, never written).
pub(crate) const FORMAT_VERSION: u32 = 1;
/// Format version of compressed sealed segments of plain-CRC frames (read, never written).
pub(crate) const FORMAT_VERSION_COMPRESSED: u32 = 2;
/// Format version of plain segments whose frames' CRCs are sealed with the header's salt.
pub(crate) const FORMAT_VERSION_SALTED: u32 = 3;
/// Format version of compressed sealed segments of salted frames (flags hold the codec id).
pub(crate) const FORMAT_VERSION_SALTED_COMPRESSED: u32 = 4;
/// Format version of plain segments of salted frames that were preallocated: the file may be
/// longer than its frames, and zeros from the end of the frames to the end of the file are
/// free space, not a torn tail (`docs/wal-format.md`, "Preallocated segments").
pub(crate) const FORMAT_VERSION_PREALLOCATED: u32 = 5;
/// Suffix of segment file names.
pub(crate) const SEGMENT_SUFFIX: &str = ".wal";
/// Suffix of compressed segment files (`compressed_format.rs`).
pub(crate) const COMPRESSED_SUFFIX: &str = ".walz";

const _: () = assert!(SEGMENT_HEADER_BYTES.is_multiple_of(8));
const _: () = assert!(SEAL_BYTES == 28);

/// The fixed header at the start of each segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub log_id: u64,
    pub sequence: u64,
    pub first_id: u64,
    /// `Some` for a compressed sealed segment (version 2 or 4, the codec id in `flags`).
    pub codec: Option<SegmentCodec>,
    /// The salt of every frame's CRC in the segment (`frame.rs`); 0 in versions 1 and 2.
    pub salt: u32,
    /// A plain, salted segment created preallocated (version 5): zeros after its frames are
    /// free space. Always `false` for the other versions.
    pub preallocated: bool,
}

/// A random salt for a new segment (never 0, which means "no salt").
pub(crate) fn new_salt() -> u32 {
    rand::Rng::gen_range(&mut rand::thread_rng(), 1..=u32::MAX)
}

impl SegmentHeader {
    /// The header of a new active segment: salted, and preallocated (format version 5) or
    /// not (version 3).
    pub fn new_active(
        log_id: u64,
        sequence: u64,
        first_id: u64,
        preallocated: bool,
    ) -> SegmentHeader {
        SegmentHeader {
            log_id,
            sequence,
            first_id,
            codec: None,
            salt: new_salt(),
            preallocated,
        }
    }

    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut bytes = [0u8; SEGMENT_HEADER_BYTES];
        bytes[0..8].copy_from_slice(SEGMENT_MAGIC);
        debug_assert!(
            !self.preallocated || (self.codec.is_none() && self.salt != 0),
            "only plain salted segments are preallocated"
        );
        let (version, flags) = match (self.codec, self.salt != 0) {
            (None, false) => (FORMAT_VERSION, 0),
            (Some(codec), false) => (FORMAT_VERSION_COMPRESSED, u32::from(codec.id())),
            (None, true) if self.preallocated => (FORMAT_VERSION_PREALLOCATED, 0),
            (None, true) => (FORMAT_VERSION_SALTED, 0),
            (Some(codec), true) => (FORMAT_VERSION_SALTED_COMPRESSED, u32::from(codec.id())),
        };
        bytes[8..12].copy_from_slice(&version.to_le_bytes());
        bytes[12..16].copy_from_slice(&flags.to_le_bytes());
        bytes[16..24].copy_from_slice(&self.log_id.to_le_bytes());
        bytes[24..32].copy_from_slice(&self.sequence.to_le_bytes());
        bytes[32..40].copy_from_slice(&self.first_id.to_le_bytes());
        bytes[40..44].copy_from_slice(&self.salt.to_le_bytes());
        let crc = crc32c(&bytes[..44]);
        bytes[44..48].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Result<SegmentHeader, Malformed> {
        if bytes.len() < SEGMENT_HEADER_BYTES {
            return Err(format!(
                "header is {} bytes, {SEGMENT_HEADER_BYTES} expected",
                bytes.len()
            )
            .into());
        }
        let bytes = &bytes[..SEGMENT_HEADER_BYTES];
        if &bytes[0..8] != SEGMENT_MAGIC {
            if bytes.iter().all(|&byte| byte == 0) {
                return Err("header is zero-filled".into());
            }
            return Err("bad magic: not a kv-wal segment".into());
        }
        let stored = u32::from_le_bytes(bytes[44..48].try_into().expect("4 bytes"));
        let computed = crc32c(&bytes[..44]);
        if stored != computed {
            return Err(format!(
                "header CRC mismatch (stored {stored:#010x}, computed {computed:#010x})"
            )
            .into());
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        let flags = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
        let codec_of = |id: u32| {
            u8::try_from(id)
                .ok()
                .and_then(SegmentCodec::from_id)
                .ok_or_else(|| Malformed::from(format!("unknown segment codec id {id}")))
        };
        let (codec, salted) = match (version, flags) {
            (FORMAT_VERSION, 0) => (None, false),
            (FORMAT_VERSION_SALTED | FORMAT_VERSION_PREALLOCATED, 0) => (None, true),
            (FORMAT_VERSION_COMPRESSED, codec) => (Some(codec_of(codec)?), false),
            (FORMAT_VERSION_SALTED_COMPRESSED, codec) => (Some(codec_of(codec)?), true),
            (FORMAT_VERSION | FORMAT_VERSION_SALTED | FORMAT_VERSION_PREALLOCATED, flags) => {
                return Err(format!("unsupported header flags {flags:#x}").into())
            }
            (version, _) => return Err(format!("unsupported format version {version}").into()),
        };
        // Versions 1 and 2 have no salt: bytes 40..44 were reserved there.
        let salt = u32::from_le_bytes(bytes[40..44].try_into().expect("4 bytes"));
        let salt = if salted { salt } else { 0 };
        if salted && salt == 0 {
            return Err("a salted segment header with salt 0".into());
        }
        let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        Ok(SegmentHeader {
            log_id: word(16),
            sequence: word(24),
            first_id: word(32),
            codec,
            salt,
            preallocated: version == FORMAT_VERSION_PREALLOCATED,
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

/// Encodes the seal footer of a segment whose last record is `last_id`, sealed with the
/// segment's `salt`.
pub(crate) fn encode_seal(out: &mut Vec<u8>, last_id: u64, record_count: u64, salt: u32) {
    frame::encode(out, KIND_SEAL, last_id, &record_count.to_le_bytes(), salt);
}

/// Bytes of a durability mark (a frame with an 8-byte payload).
pub(crate) const MARK_BYTES: usize = FRAME_HEADER_BYTES + 8;

/// Encodes a durability mark: the segment is durable through `synced_through` (an offset in
/// it), known before the frames after the mark (ids from `next_id`) were written.
pub(crate) fn encode_mark(out: &mut [u8], next_id: u64, synced_through: u64, salt: u32) {
    let mut frame = Vec::with_capacity(MARK_BYTES);
    frame::encode(
        &mut frame,
        KIND_MARK,
        next_id,
        &synced_through.to_le_bytes(),
        salt,
    );
    out[..MARK_BYTES].copy_from_slice(&frame);
}

/// A seal read from the end of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seal {
    pub last_id: u64,
    pub record_count: u64,
}

/// Decodes the seal in the final [`SEAL_BYTES`] of a segment, if there is a valid one that
/// agrees with the header.
pub(crate) fn decode_seal(tail: &[u8], first_id: u64, salt: u32) -> Option<Seal> {
    let frame = frame::decode_salted(tail, salt).ok()?;
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

/// The path of a segment in `dir`.
pub(crate) fn segment_path(dir: &Path, sequence: u64, first_id: u64) -> PathBuf {
    dir.join(segment_file_name(sequence, first_id))
}

#[cfg(test)]
mod tests {
    use super::*;

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
            salt: 0,
            preallocated: false,
        };
        for codec in [None, Some(SegmentCodec::Lz4), Some(SegmentCodec::Zstd)] {
            for (salt, preallocated) in [(0, false), (0xdead_beef, false), (0xdead_beef, true)] {
                let header = SegmentHeader {
                    codec,
                    salt,
                    preallocated: preallocated && codec.is_none(),
                    ..header
                };
                let bytes = header.encode();
                assert_eq!(SegmentHeader::decode(&bytes), Ok(header));
                for bit in 0..SEGMENT_HEADER_BYTES * 8 {
                    let mut damaged = bytes;
                    damaged[bit / 8] ^= 1 << (bit % 8);
                    assert!(SegmentHeader::decode(&damaged).is_err(), "bit {bit}");
                }
            }
        }
        // The versions: 1 and 2 (read only) have no salt, 3 (read only), 4 and 5 (written)
        // have one; 5 is a preallocated plain segment.
        let version = |codec, salt, preallocated| {
            let bytes = SegmentHeader {
                codec,
                salt,
                preallocated,
                ..header
            }
            .encode();
            u32::from_le_bytes(bytes[8..12].try_into().unwrap())
        };
        assert_eq!(version(None, 0, false), 1);
        assert_eq!(version(Some(SegmentCodec::Lz4), 0, false), 2);
        assert_eq!(version(None, 5, false), 3);
        assert_eq!(version(Some(SegmentCodec::Lz4), 5, false), 4);
        assert_eq!(version(None, 5, true), 5);
        // A version 1 reader's rule still holds: a plain header has no flags.
        let compressed = SegmentHeader {
            codec: Some(SegmentCodec::Lz4),
            ..header
        }
        .encode();
        assert_eq!(
            u32::from_le_bytes(compressed[12..16].try_into().unwrap()),
            1
        );
        assert!(SegmentHeader::decode(&[0u8; 48])
            .unwrap_err()
            .to_string()
            .contains("zero"));
    }
}
