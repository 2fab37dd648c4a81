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
//!                     (`dedup.rs`): count:u64 newest_ms:u64 then per request client_id,
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
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kv_wal::durable::{remove_file_if_exists, DurableFileWriter, FileReader};
use kv_wal::fs::FileSystem;

use crate::applied::AppliedState;
use crate::dedup::DedupTable;
use crate::encoding::Reader as FieldReader;
use crate::epochs::EpochHistory;
use crate::history::Link;
use crate::map::{KeyValue, Locator};

/// Bytes of cells per block before compression.
pub const SNAPSHOT_BLOCK_BYTES: usize = 256 * 1024;
/// Largest stored or raw block accepted when reading (a bad length never allocates more).
const BLOCK_BYTES_MAX: u32 = 64 << 20;
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

/// Why a snapshot could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The file system failed (the error names the file).
    #[error(transparent)]
    Io(#[from] kv_wal::Error),
    /// The file is not a whole, valid snapshot: a bad magic, version, length or CRC, a cell
    /// that does not parse, counts that disagree.
    #[error("snapshot {path}: {reason}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        reason: String,
    },
}

/// How snapshot blocks are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Codec {
    /// Stored as is.
    None,
    /// LZ4 (lz4_flex block format).
    Lz4,
    /// Zstandard, level 1.
    #[default]
    Zstd,
}

impl Codec {
    fn to_byte(self) -> u8 {
        match self {
            Codec::None => 0,
            Codec::Lz4 => 1,
            Codec::Zstd => 2,
        }
    }
    fn from_byte(byte: u8) -> Option<Codec> {
        match byte {
            0 => Some(Codec::None),
            1 => Some(Codec::Lz4),
            2 => Some(Codec::Zstd),
            _ => None,
        }
    }
    /// Compresses one block.
    pub fn compress(self, raw: &[u8]) -> Vec<u8> {
        match self {
            Codec::None => raw.to_vec(),
            Codec::Lz4 => lz4_flex::block::compress(raw),
            Codec::Zstd => zstd::bulk::compress(raw, 1).expect("zstd compresses any input"),
        }
    }
    /// Decompresses one block of `raw_len` bytes.
    pub fn decompress(self, stored: &[u8], raw_len: usize) -> Result<Vec<u8>, String> {
        let raw = match self {
            Codec::None => stored.to_vec(),
            Codec::Lz4 => {
                lz4_flex::block::decompress(stored, raw_len).map_err(|error| error.to_string())?
            }
            Codec::Zstd => {
                zstd::bulk::decompress(stored, raw_len).map_err(|error| error.to_string())?
            }
        };
        if raw.len() != raw_len {
            return Err(format!(
                "block decompressed to {} bytes, {raw_len} expected",
                raw.len()
            ));
        }
        Ok(raw)
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
    type Err = String;
    fn from_str(text: &str) -> Result<Codec, String> {
        match text {
            "none" => Ok(Codec::None),
            "lz4" => Ok(Codec::Lz4),
            "zstd" => Ok(Codec::Zstd),
            other => Err(format!(
                "unknown snapshot codec {other:?}: expected none, lz4 or zstd"
            )),
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
    pub fn entries(&self) -> impl Iterator<Item = &KeyValue> {
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

fn crc(bytes: &[u8]) -> u32 {
    kv_wal::frame::crc32c(bytes)
}

/// Writes `view` as a snapshot in `dir` (created if missing), atomically through the
/// durable-file seam ([`kv_wal::durable`]): temporary file, fsync, rename, directory fsync.
pub fn write_snapshot(
    fs: &dyn FileSystem,
    view: &SnapshotView,
    dir: &Path,
    codec: Codec,
) -> Result<SnapshotInfo, SnapshotError> {
    let started = Instant::now();
    kv_wal::durable::create_dir_all_durable(fs, dir)?;
    let name = snapshot_file_name(view.applied_id);
    let path = dir.join(&name);
    let mut out = DurableFileWriter::create(fs, dir, &name)?;
    let write = |out: &mut DurableFileWriter<'_>, bytes: &[u8]| out.write_bytes(bytes);

    let epochs = view.epochs.starts();
    let last_epoch = view.epochs.epoch_at(view.applied_id).unwrap_or(0);
    let mut header = Vec::with_capacity(HEADER_BYTES);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&VERSION.to_le_bytes());
    header.extend_from_slice(&[codec.to_byte(), 0, 0, 0]);
    header.extend_from_slice(&view.applied_id.to_le_bytes());
    header.extend_from_slice(&last_epoch.to_le_bytes());
    header.extend_from_slice(&(view.key_count() as u64).to_le_bytes());
    header.extend_from_slice(&(epochs.len() as u32).to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64);
    header.extend_from_slice(&now_ms.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    let header_crc = crc(&header);
    header.extend_from_slice(&header_crc.to_le_bytes());
    debug_assert_eq!(header.len(), HEADER_BYTES);
    write(&mut out, &header)?;

    let mut epoch_bytes = Vec::with_capacity(epochs.len() * 16 + 4);
    for &(epoch, first_id) in epochs {
        epoch_bytes.extend_from_slice(&epoch.to_le_bytes());
        epoch_bytes.extend_from_slice(&first_id.to_le_bytes());
    }
    let epochs_crc = crc(&epoch_bytes);
    epoch_bytes.extend_from_slice(&epochs_crc.to_le_bytes());
    write(&mut out, &epoch_bytes)?;

    let mut raw = Vec::with_capacity(SNAPSHOT_BLOCK_BYTES + 4096);
    let mut raw_bytes = 0u64;
    let mut block_count = 0u64;
    let emit = |out: &mut DurableFileWriter<'_>,
                kind: u8,
                raw: &[u8],
                codec: Codec|
     -> Result<(), kv_wal::Error> {
        let stored = codec.compress(raw);
        let mut block_header = Vec::with_capacity(BLOCK_HEADER_BYTES);
        block_header.extend_from_slice(&[kind, codec.to_byte(), 0, 0]);
        block_header.extend_from_slice(&(raw.len() as u32).to_le_bytes());
        block_header.extend_from_slice(&(stored.len() as u32).to_le_bytes());
        let mut digest = kv_wal::frame::Crc32c::new();
        digest.update(&block_header);
        digest.update(&stored);
        block_header.extend_from_slice(&digest.finalize().to_le_bytes());
        write(out, &block_header)?;
        write(out, &stored)
    };
    for entry in view.entries() {
        let cell = entry.cell();
        raw.extend_from_slice(&(cell.len() as u32).to_le_bytes());
        raw.extend_from_slice(cell);
        if raw.len() >= SNAPSHOT_BLOCK_BYTES {
            raw_bytes += raw.len() as u64;
            emit(&mut out, KIND_DATA, &raw, codec)?;
            block_count += 1;
            raw.clear();
        }
    }
    if !raw.is_empty() {
        raw_bytes += raw.len() as u64;
        emit(&mut out, KIND_DATA, &raw, codec)?;
        block_count += 1;
        raw.clear();
    }
    let data_block_count = block_count;
    for (locator, link) in view.map.history.iter() {
        raw.extend_from_slice(&locator.revision.to_le_bytes());
        raw.extend_from_slice(&locator.op_index.to_le_bytes());
        raw.extend_from_slice(&link.previous.revision.to_le_bytes());
        raw.extend_from_slice(&link.previous.op_index.to_le_bytes());
        raw.extend_from_slice(&link.previous_bytes.to_le_bytes());
        if raw.len() >= SNAPSHOT_BLOCK_BYTES {
            raw_bytes += raw.len() as u64;
            emit(&mut out, KIND_HISTORY, &raw, codec)?;
            raw.clear();
        }
    }
    if !raw.is_empty() {
        raw_bytes += raw.len() as u64;
        emit(&mut out, KIND_HISTORY, &raw, codec)?;
        raw.clear();
    }
    let mut requests = Vec::new();
    view.map.requests.encode(&mut requests);
    raw_bytes += requests.len() as u64;
    for chunk in requests.chunks(SNAPSHOT_BLOCK_BYTES) {
        emit(&mut out, KIND_REQUESTS, chunk, codec)?;
    }
    let mut end = Vec::with_capacity(32);
    end.extend_from_slice(&(view.key_count() as u64).to_le_bytes());
    end.extend_from_slice(&data_block_count.to_le_bytes());
    end.extend_from_slice(&(view.map.history.len() as u64).to_le_bytes());
    end.extend_from_slice(&(view.map.requests.len() as u64).to_le_bytes());
    emit(&mut out, KIND_END, &end, Codec::None)?;
    let size_bytes = out.commit()?;
    Ok(SnapshotInfo {
        path,
        applied_id: view.applied_id,
        key_count: view.key_count() as u64,
        size_bytes,
        raw_bytes,
        codec,
        write_duration: started.elapsed(),
        view_duration: view.copy_duration,
        longest_lock_hold: view.longest_lock_hold,
    })
}

struct Reader<R> {
    inner: R,
    offset: u64,
}

impl<R: Read> Reader<R> {
    fn exact(&mut self, count: usize, what: &str) -> Result<Vec<u8>, String> {
        let mut bytes = vec![0u8; count];
        self.inner
            .read_exact(&mut bytes)
            .map_err(|error| format!("{what} at byte {}: {error}", self.offset))?;
        self.offset += count as u64;
        Ok(bytes)
    }
}

fn word(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

fn half(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// Reads and checks a whole snapshot file: every CRC, every cell, the counts at the end.
pub fn read_snapshot(fs: &dyn FileSystem, path: &Path) -> Result<LoadedSnapshot, SnapshotError> {
    let file = FileReader::open(fs, path)?;
    let reader = Reader {
        inner: io::BufReader::with_capacity(1 << 20, file),
        offset: 0,
    };
    parse_snapshot(reader, path).map_err(|reason| SnapshotError::Damaged {
        path: path.to_owned(),
        reason,
    })
}

/// Checks that the file at `path` is a whole, valid snapshot (every CRC, every cell).
pub fn verify_snapshot(fs: &dyn FileSystem, path: &Path) -> Result<u64, SnapshotError> {
    read_snapshot(fs, path).map(|snapshot| snapshot.applied_id)
}

fn parse_snapshot<R: Read>(mut reader: Reader<R>, path: &Path) -> Result<LoadedSnapshot, String> {
    let header = reader.exact(HEADER_BYTES, "header")?;
    if &header[..8] != MAGIC {
        return Err("not a kvd snapshot (bad magic)".to_owned());
    }
    if half(&header, 60) != crc(&header[..60]) {
        return Err("header CRC mismatch".to_owned());
    }
    let version = half(&header, 8);
    if version != VERSION && version != VERSION_1 {
        return Err(format!("unsupported snapshot version {version}"));
    }
    Codec::from_byte(header[12]).ok_or_else(|| format!("unknown codec {}", header[12]))?;
    let applied_id = word(&header, 16);
    let key_count = word(&header, 32);
    let epoch_count = half(&header, 40) as usize;
    if epoch_count > 1 << 20 {
        return Err(format!("{epoch_count} epochs is not plausible"));
    }
    let epoch_bytes = reader.exact(epoch_count * 16 + 4, "epochs")?;
    if half(&epoch_bytes, epoch_count * 16) != crc(&epoch_bytes[..epoch_count * 16]) {
        return Err("epochs CRC mismatch".to_owned());
    }
    let mut epochs = EpochHistory::default();
    for index in 0..epoch_count {
        epochs.observe(
            word(&epoch_bytes, index * 16),
            word(&epoch_bytes, index * 16 + 8),
        );
    }
    let mut map = AppliedState::default();
    let mut keys_read = 0u64;
    let mut blocks_read = 0u64;
    let mut links_read = 0u64;
    let mut requests = Vec::new();
    loop {
        let block_offset = reader.offset;
        let block_header = reader.exact(BLOCK_HEADER_BYTES, "block header")?;
        let (kind, block_codec) = (block_header[0], block_header[1]);
        let raw_len = half(&block_header, 4);
        let stored_len = half(&block_header, 8);
        if raw_len > BLOCK_BYTES_MAX || stored_len > BLOCK_BYTES_MAX {
            return Err(format!("block at byte {block_offset}: implausible length"));
        }
        let stored = reader.exact(stored_len as usize, "block")?;
        let mut digest = kv_wal::frame::Crc32c::new();
        digest.update(&block_header[..12]);
        digest.update(&stored);
        if digest.finalize() != half(&block_header, 12) {
            return Err(format!("block at byte {block_offset}: CRC mismatch"));
        }
        let block_codec = Codec::from_byte(block_codec)
            .ok_or_else(|| format!("block at byte {block_offset}: unknown codec"))?;
        let raw = block_codec
            .decompress(&stored, raw_len as usize)
            .map_err(|error| format!("block at byte {block_offset}: {error}"))?;
        match kind {
            KIND_DATA => {
                let mut position = 0usize;
                while position < raw.len() {
                    let cell_len = raw
                        .get(position..position + 4)
                        .map(|bytes| {
                            u32::from_le_bytes(bytes.try_into().expect("4 bytes")) as usize
                        })
                        .ok_or_else(|| {
                            format!("block at byte {block_offset}: truncated cell length")
                        })?;
                    let cell = raw
                        .get(position + 4..position + 4 + cell_len)
                        .ok_or_else(|| format!("block at byte {block_offset}: truncated cell"))?;
                    let entry = if version == VERSION_1 {
                        KeyValue::from_cell_v1(cell, applied_id)
                    } else {
                        KeyValue::from_cell(cell)
                    }
                    .ok_or_else(|| format!("block at byte {block_offset}: bad cell"))?;
                    map.keys.insert(entry);
                    keys_read += 1;
                    position += 4 + cell_len;
                }
                blocks_read += 1;
            }
            KIND_HISTORY if version != VERSION_1 => {
                if raw.len() % LINK_BYTES != 0 {
                    return Err(format!("block at byte {block_offset}: torn history link"));
                }
                for link in raw.chunks_exact(LINK_BYTES) {
                    let new = Locator {
                        revision: word(link, 0),
                        op_index: half(link, 8),
                    };
                    let previous = Locator {
                        revision: word(link, 12),
                        op_index: half(link, 20),
                    };
                    map.history.restore(
                        new,
                        Link {
                            previous,
                            previous_bytes: half(link, 24),
                        },
                    );
                    links_read += 1;
                }
            }
            KIND_REQUESTS if version != VERSION_1 => requests.extend_from_slice(&raw),
            KIND_END => {
                let end_len = if version == VERSION_1 { 16 } else { 32 };
                if raw.len() != end_len
                    || word(&raw, 0) != keys_read
                    || word(&raw, 8) != blocks_read
                    || keys_read != key_count
                {
                    return Err(format!(
                        "end block disagrees: {keys_read} keys in {blocks_read} blocks read, header says {key_count}"
                    ));
                }
                if map.keys.len() as u64 != key_count {
                    return Err("duplicate keys in the snapshot".to_owned());
                }
                if version != VERSION_1 {
                    if word(&raw, 16) != links_read || map.history.len() as u64 != links_read {
                        return Err("end block disagrees on the history links".to_owned());
                    }
                    let mut fields = FieldReader::new(&requests);
                    map.requests = DedupTable::decode(&mut fields)
                        .map_err(|error| format!("requests: {error}"))?;
                    if !fields.is_empty() || word(&raw, 24) != map.requests.len() as u64 {
                        return Err("end block disagrees on the requests".to_owned());
                    }
                }
                let mut rest = Vec::new();
                reader
                    .inner
                    .read_to_end(&mut rest)
                    .map_err(|error| format!("reading past the end block: {error}"))?;
                if !rest.is_empty() {
                    return Err(format!("{} bytes after the end block", rest.len()));
                }
                return Ok(LoadedSnapshot {
                    map,
                    applied_id,
                    epochs,
                    path: path.to_owned(),
                });
            }
            other => {
                return Err(format!(
                    "block at byte {block_offset}: unknown kind {other}"
                ))
            }
        }
    }
}
