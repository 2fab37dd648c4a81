//! Snapshots: the applied state at an applied id — every key with its value, version and
//! revisions, the history links and the idempotent requests remembered — in one checksummed,
//! compressed file.
//!
//! ```text
//! file   = header epochs block* end
//! header = "KVSNAP\0\x01" version:u32 codec:u8 pad:[u8;3] applied_id:u64 last_epoch:u64
//!          key_count:u64 epoch_count:u32 pad:u32 created_unix_ms:u64 pad:u32 crc:u32   (64 bytes)
//! epochs = (epoch:u64 first_id:u64) * epoch_count, crc:u32
//! block  = kind:u8 codec:u8 pad:u16 raw_len:u32 stored_len:u32 crc:u32 stored:[u8; stored_len]
//!
//! version 2 (written):
//!   kind 1: data;     raw = (cell_len:u32 cell)*, cell as in the map (`map.rs`):
//!                     key_len:varint key mod_revision:varint (mod - create):varint
//!                     version:varint op_index:varint kind:u8 value
//!   kind 3: history;  raw = (revision:u64 op_index:u32 previous_revision:u64
//!                     previous_op_index:u32 previous_bytes:u32)*       (28 bytes per link)
//!   kind 4: requests; the raw bytes of all kind 4 blocks, in order, are the dedup table
//!                     (`dedup.rs`): count:u64 last_ms:u64 then per request client_id,
//!                     request_id (len:u32 bytes), fingerprint:u64 form:u8 timestamp_ms:u64,
//!                     outcome (`outcome.rs`)
//!   kind 2: end;      raw = key_count:u64 data_block_count:u64 link_count:u64 request_count:u64
//! version 1 (read): kind 1 cells are key_len:u32 key kind:u8 value (no revisions: every key
//!   is read as created and last written at the snapshot's applied id, version 1); no kinds
//!   3 and 4; the end block is key_count:u64 block_count:u64.
//! ```
//!
//! Integers are little-endian; every CRC is CRC-32C. A block's CRC covers its first 12 header
//! bytes and its stored bytes. Blocks hold up to [`SNAPSHOT_BLOCK_BYTES`] of cells, compressed
//! with the header's codec. A snapshot is written to `snapshot-{applied_id:020}.snap.tmp`,
//! fsynced, renamed to `snapshot-{applied_id:020}.snap` and the directory fsynced, so a
//! snapshot file that exists is complete; a damaged one is detected by its CRCs and skipped.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use kv_wal::durable::remove_file_if_exists;
use kv_wal::fs::FileSystem;

use crate::applied::AppliedState;
use crate::encoding::Malformed;
use crate::epochs::EpochHistory;
use crate::map::KeyValue;

/// Bytes of cells per block before compression.
pub const SNAPSHOT_BLOCK_BYTES: usize = 256 * 1024;
/// Largest raw block accepted when reading (a bad length never allocates more). A block is cut
/// once it holds [`SNAPSHOT_BLOCK_BYTES`], so it holds less than that plus one item, and the
/// largest item is the cell of one value: its key and value came in one log record (at most
/// kv-wal's `RECORD_BYTES_MAX`, 256 MiB; kvd takes values up to `--max-body-bytes`), plus a
/// few varints. (This was 64 MiB: a snapshot holding a larger value could not be read back.)
const BLOCK_RAW_BYTES_MAX: usize = SNAPSHOT_BLOCK_BYTES + kv_wal::frame::RECORD_BYTES_MAX + 1024;
/// Largest stored block accepted: a raw block at its limit that did not compress (LZ4 and zstd
/// grow such bytes by well under 1/64 plus a constant: the bound kv-wal's compressed segments
/// use too).
const BLOCK_STORED_BYTES_MAX: usize = BLOCK_RAW_BYTES_MAX + BLOCK_RAW_BYTES_MAX / 64 + 1024;
const _: () = assert!(BLOCK_STORED_BYTES_MAX < u32::MAX as usize);
const MAGIC: &[u8; 8] = b"KVSNAP\0\x01";
const VERSION: u32 = 2;
/// The first format: cells without revisions, no history or requests.
const VERSION_1: u32 = 1;
const HEADER_BYTES: usize = 64;
const BLOCK_HEADER_BYTES: usize = 16;
const KIND_DATA: u8 = 1;
const KIND_END: u8 = 2;
const KIND_HISTORY: u8 = 3;
const KIND_REQUESTS: u8 = 4;
const LINK_BYTES: usize = 28;
const SUFFIX: &str = ".snap";

pub use crate::error::SnapshotError;

/// How snapshot blocks are compressed: stored as is, or with one of kv-wal's block codecs
/// ([`kv_wal::codec::Codec`], the one codec type of the project; zstd at level
/// [`SNAPSHOT_ZSTD_LEVEL`] here). This type only adds "none" for the `--snapshot-codec` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Codec {
    /// Stored as is.
    None,
    /// LZ4 (lz4_flex block format).
    Lz4,
    /// Zstandard, level [`SNAPSHOT_ZSTD_LEVEL`].
    #[default]
    Zstd,
}

/// The zstd level snapshots are written with: fast, since a snapshot is written while writes
/// go on.
pub const SNAPSHOT_ZSTD_LEVEL: i32 = 1;

impl Codec {
    /// The block codec, if any.
    fn block_codec(self) -> Option<kv_wal::codec::Codec> {
        match self {
            Codec::None => None,
            Codec::Lz4 => Some(kv_wal::codec::Codec::Lz4),
            Codec::Zstd => Some(kv_wal::codec::Codec::Zstd),
        }
    }
    fn to_byte(self) -> u8 {
        self.block_codec().map_or(0, kv_wal::codec::Codec::id)
    }
    fn from_byte(byte: u8) -> Option<Codec> {
        match byte {
            0 => Some(Codec::None),
            id => match kv_wal::codec::Codec::from_id(id)? {
                kv_wal::codec::Codec::Lz4 => Some(Codec::Lz4),
                kv_wal::codec::Codec::Zstd => Some(Codec::Zstd),
            },
        }
    }
    /// Compresses one block.
    pub fn compress(self, raw: &[u8]) -> Vec<u8> {
        match self.block_codec() {
            None => raw.to_vec(),
            Some(codec) => codec.compress_at_level(raw, SNAPSHOT_ZSTD_LEVEL),
        }
    }
    /// Decompresses one block of `raw_len` bytes.
    pub fn decompress(self, stored: &[u8], raw_len: usize) -> Result<Vec<u8>, Malformed> {
        match self.block_codec() {
            Some(codec) => codec.decompress(stored, raw_len),
            None if stored.len() == raw_len => Ok(stored.to_vec()),
            None => Err(format!("block holds {} bytes, {raw_len} expected", stored.len()).into()),
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Codec::None => "none",
            Codec::Lz4 => "lz4",
            Codec::Zstd => "zstd",
        })
    }
}

impl FromStr for Codec {
    type Err = Malformed;
    fn from_str(text: &str) -> Result<Codec, Malformed> {
        match text {
            "none" => Ok(Codec::None),
            "lz4" => Ok(Codec::Lz4),
            "zstd" => Ok(Codec::Zstd),
            other => {
                Err(format!("unknown snapshot codec {other:?}: expected none, lz4 or zstd").into())
            }
        }
    }
}

/// A consistent view of the map at `applied_id`, taken without stopping writers for longer
/// than it takes to copy one pointer per key.
#[derive(Debug, Clone)]
pub struct SnapshotView {
    /// The last entry applied to the view.
    pub applied_id: u64,
    /// The epochs of the log up to `applied_id`.
    pub epochs: EpochHistory,
    /// Every key and value, the history links and the requests: a frozen copy.
    pub(crate) map: AppliedState,
    /// How long taking the view took.
    pub copy_duration: Duration,
    /// How long the view held the map's lock: the longest a write waited for it.
    pub longest_lock_hold: Duration,
}

impl SnapshotView {
    /// How many keys the view holds.
    pub fn key_count(&self) -> usize {
        self.map.keys.len()
    }

    /// Every entry, in key order.
    pub fn entries(&self) -> impl Iterator<Item = KeyValue> + '_ {
        self.map.keys.iter()
    }
}

/// A snapshot file on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The file.
    pub path: PathBuf,
    /// The applied id it holds the map at.
    pub applied_id: u64,
    /// Keys in it.
    pub key_count: u64,
    /// Size of the file.
    pub size_bytes: u64,
    /// Bytes of cells before compression.
    pub raw_bytes: u64,
    /// Its codec.
    pub codec: Codec,
    /// How long writing it took (after the view was copied).
    pub write_duration: Duration,
    /// How long copying the map's view took (see [`SnapshotView::copy_duration`]).
    pub view_duration: Duration,
    /// The longest the copy held the map's lock at once.
    pub longest_lock_hold: Duration,
}

/// A snapshot read back.
#[derive(Debug)]
pub struct LoadedSnapshot {
    pub(crate) map: AppliedState,
    /// The applied id.
    pub applied_id: u64,
    /// The epochs up to it.
    pub epochs: EpochHistory,
    /// The file.
    pub path: PathBuf,
}

/// The name of the snapshot at `applied_id`.
pub fn snapshot_file_name(applied_id: u64) -> String {
    format!("snapshot-{applied_id:020}{SUFFIX}")
}

/// The applied id in a snapshot file name.
pub fn parse_snapshot_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("snapshot-")?.strip_suffix(SUFFIX)?;
    (digits.len() == 20).then(|| digits.parse().ok()).flatten()
}

/// Removes the temporary files of snapshots whose writing a crash interrupted. Only for
/// opening: at run time a temporary file may be a snapshot being written.
pub fn remove_temporaries(fs: &dyn FileSystem, dir: &Path) -> Result<(), SnapshotError> {
    for name in list_names(fs, dir)? {
        if name.ends_with(".snap.tmp") {
            remove_file_if_exists(fs, &dir.join(name))?;
        }
    }
    Ok(())
}

/// Snapshot files in `dir`, newest (highest applied id) first. Temporary files (snapshots
/// being written) are not listed, and left alone.
pub fn list_snapshots(
    fs: &dyn FileSystem,
    dir: &Path,
) -> Result<Vec<(u64, PathBuf)>, SnapshotError> {
    let mut found: Vec<(u64, PathBuf)> = list_names(fs, dir)?
        .into_iter()
        .filter_map(|name| Some((parse_snapshot_file_name(&name)?, dir.join(name))))
        .collect();
    found.sort_by_key(|(applied_id, _)| std::cmp::Reverse(*applied_id));
    Ok(found)
}

/// The names in `dir`; none when it does not exist.
fn list_names(fs: &dyn FileSystem, dir: &Path) -> Result<Vec<String>, SnapshotError> {
    match fs.list_dir(dir) {
        Ok(names) => Ok(names),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(kv_wal::Error::Io {
            path: dir.to_owned(),
            source,
        }
        .into()),
    }
}

mod read;
mod write;

pub use read::{read_snapshot, verify_snapshot};
pub use write::write_snapshot;

fn crc(bytes: &[u8]) -> u32 {
    kv_wal::frame::crc32c(bytes)
}
