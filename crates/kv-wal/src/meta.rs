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

pub(crate) fn encode_meta(log_id: u64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(24);
    bytes.extend_from_slice(META_MAGIC);
    bytes.extend_from_slice(&1u32.to_le_bytes());
    bytes.extend_from_slice(&log_id.to_le_bytes());
    let crc = frame::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes
}

pub(crate) fn decode_meta(bytes: &[u8]) -> Option<u64> {
    if bytes.len() != 24 || &bytes[..8] != META_MAGIC || bytes[8..12] != 1u32.to_le_bytes() {
        return None;
    }
    let crc = u32::from_le_bytes(bytes[20..24].try_into().ok()?);
    (frame::crc32c(&bytes[..20]) == crc)
        .then(|| u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes")))
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
