//! The small files beside the segments: `wal.meta` (the log's identity), `truncate.pending`
//! (a truncation in progress, completed by the next open) and `wal.lock`.

use std::path::Path;

use crate::error::{IoContext, Result};
use crate::frame;
use crate::fs::FileSystem;

/// File holding the log's identity.
pub(crate) const META_FILE: &str = "wal.meta";
/// Present while a truncation is in progress; open completes it.
pub(crate) const TRUNCATE_MARKER_FILE: &str = "truncate.pending";
/// Held while the log is open.
pub(crate) const LOCK_FILE: &str = "wal.lock";
const META_MAGIC: &[u8; 8] = b"KVWALMET";
const MARKER_MAGIC: &[u8; 8] = b"KVWALTRN";

/// What `wal.meta` holds: the log's identity and, from format 2 on, the newest segment whose
/// creation completed — so that open tells a newest segment deleted, emptied or zeroed
/// (damage: its records may have been acknowledged) from one a crash left half-created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LogMeta {
    pub log_id: u64,
    /// The sequence of the newest segment whose creation completed (its header durable, its
    /// name in the directory); `None` in a format-1 file, which did not record it.
    pub newest_sequence: Option<u64>,
}

/// `wal.meta` in format 2: magic, version, log id, newest sequence, CRC-32C (32 bytes).
pub(crate) fn encode_meta(log_id: u64, newest_sequence: u64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(32);
    bytes.extend_from_slice(META_MAGIC);
    bytes.extend_from_slice(&2u32.to_le_bytes());
    bytes.extend_from_slice(&log_id.to_le_bytes());
    bytes.extend_from_slice(&newest_sequence.to_le_bytes());
    let crc = frame::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes
}

/// Reads `wal.meta` in format 1 (24 bytes: the identity alone) or 2.
pub(crate) fn decode_meta(bytes: &[u8]) -> Option<LogMeta> {
    let (version, crc_at) = match bytes.len() {
        24 => (1u32, 20),
        32 => (2u32, 28),
        _ => return None,
    };
    if &bytes[..8] != META_MAGIC || bytes[8..12] != version.to_le_bytes() {
        return None;
    }
    let crc = u32::from_le_bytes(bytes[crc_at..crc_at + 4].try_into().ok()?);
    if frame::crc32c(&bytes[..crc_at]) != crc {
        return None;
    }
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    Some(LogMeta {
        log_id: word(12),
        newest_sequence: (version == 2).then(|| word(20)),
    })
}

pub(crate) fn encode_marker(after_id: u64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(20);
    bytes.extend_from_slice(MARKER_MAGIC);
    bytes.extend_from_slice(&after_id.to_le_bytes());
    let crc = frame::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes
}

pub(crate) fn decode_marker(bytes: &[u8]) -> Option<u64> {
    if bytes.len() != 20 || &bytes[..8] != MARKER_MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(bytes[16..20].try_into().ok()?);
    (frame::crc32c(&bytes[..16]) == crc)
        .then(|| u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")))
}

pub(crate) fn read_small_file(fs: &dyn FileSystem, path: &Path) -> Result<Option<Vec<u8>>> {
    match fs.open(path) {
        Ok(file) => {
            let len = file.size_bytes().at(path)?.min(4096);
            Ok(Some(crate::fs::read_range(&*file, 0, len).at(path)?))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error).at(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_formats_of_the_identity_file_decode_and_a_flip_does_not() {
        let v2 = encode_meta(0xabc, 7);
        assert_eq!(
            decode_meta(&v2),
            Some(LogMeta {
                log_id: 0xabc,
                newest_sequence: Some(7)
            })
        );
        // Format 1, as every log before format 2 wrote it.
        let mut v1 = Vec::new();
        v1.extend_from_slice(META_MAGIC);
        v1.extend_from_slice(&1u32.to_le_bytes());
        v1.extend_from_slice(&0xabcu64.to_le_bytes());
        let crc = frame::crc32c(&v1);
        v1.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(
            decode_meta(&v1),
            Some(LogMeta {
                log_id: 0xabc,
                newest_sequence: None
            })
        );
        for at in 0..v2.len() {
            let mut flipped = v2.clone();
            flipped[at] ^= 0x10;
            assert_eq!(decode_meta(&flipped), None, "byte {at}");
        }
    }
}
