//! Reading a snapshot back, checking every CRC, cell and count (version 2, and version 1).

use std::io::{self, Read};
use std::path::Path;

use kv_wal::durable::FileReader;
use kv_wal::fs::FileSystem;

use super::{
    crc, Codec, LoadedSnapshot, SnapshotError, BLOCK_HEADER_BYTES, BLOCK_RAW_BYTES_MAX,
    BLOCK_STORED_BYTES_MAX, HEADER_BYTES, KIND_DATA, KIND_END, KIND_HISTORY, KIND_REQUESTS,
    LINK_BYTES, MAGIC, VERSION, VERSION_1,
};
use crate::applied::AppliedState;
use crate::dedup::DedupTable;
use crate::encoding::Malformed;
use crate::encoding::Reader as FieldReader;
use crate::epochs::EpochHistory;
use crate::history::Link;
use crate::map::{cell_from_v1, cell_is_well_formed, Locator};

struct Reader<R> {
    inner: R,
    offset: u64,
}

impl<R: Read> Reader<R> {
    fn exact(&mut self, count: usize, what: &str) -> Result<Vec<u8>, Malformed> {
        let mut bytes = vec![0u8; count];
        self.inner
            .read_exact(&mut bytes)
            .map_err(|error| Malformed::from(format!("{what} at byte {}: {error}", self.offset)))?;
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

fn parse_snapshot<R: Read>(
    mut reader: Reader<R>,
    path: &Path,
) -> Result<LoadedSnapshot, Malformed> {
    let header = read_header(&mut reader)?;
    // A snapshot's name says its applied id (the newest is found by name): a file whose
    // header says another one was renamed or copied in from elsewhere, and is no snapshot of
    // this log at the id its name claims.
    let named_id = path
        .file_name()
        .and_then(|name| name.to_str())
        .and_then(super::parse_snapshot_file_name);
    if let Some(named_id) = named_id.filter(|&named_id| named_id != header.applied_id) {
        return Err(format!(
            "the file name says applied id {named_id}, its header says {}: renamed or copied \
             from another data directory",
            header.applied_id
        )
        .into());
    }
    let epochs = read_epochs(&mut reader, header.epoch_count)?;
    let mut loader = Loader {
        header,
        state: AppliedState::default(),
        keys_read: 0,
        data_blocks_read: 0,
        links_read: 0,
        requests: Vec::new(),
    };
    loop {
        let (kind, raw, block_offset) = read_block(&mut reader)?;
        let at = |reason: &dyn std::fmt::Display| {
            Malformed::from(format!("block at byte {block_offset}: {reason}"))
        };
        match kind {
            KIND_DATA => loader.data_block(&raw).map_err(|reason| at(&reason))?,
            KIND_HISTORY if loader.header.version != VERSION_1 => {
                loader.history_block(&raw).map_err(|reason| at(&reason))?
            }
            KIND_REQUESTS if loader.header.version != VERSION_1 => {
                loader.requests.extend_from_slice(&raw)
            }
            KIND_END => {
                let state = loader.finish(&raw)?;
                let mut rest = Vec::new();
                reader.inner.read_to_end(&mut rest).map_err(|error| {
                    Malformed::from(format!("reading past the end block: {error}"))
                })?;
                if !rest.is_empty() {
                    return Err(format!("{} bytes after the end block", rest.len()).into());
                }
                return Ok(LoadedSnapshot {
                    map: state,
                    applied_id: loader.header.applied_id,
                    epochs,
                    path: path.to_owned(),
                });
            }
            other => return Err(at(&format!("unknown kind {other}"))),
        }
    }
}

/// What the header says.
struct Header {
    version: u32,
    applied_id: u64,
    key_count: u64,
    epoch_count: usize,
}

fn read_header<R: Read>(reader: &mut Reader<R>) -> Result<Header, Malformed> {
    let header = reader.exact(HEADER_BYTES, "header")?;
    if &header[..8] != MAGIC {
        return Err("not a kvd snapshot (bad magic)".into());
    }
    if half(&header, 60) != crc(&header[..60]) {
        return Err("header CRC mismatch".into());
    }
    let version = half(&header, 8);
    if version != VERSION && version != VERSION_1 {
        return Err(format!("unsupported snapshot version {version}").into());
    }
    Codec::from_byte(header[12])
        .ok_or_else(|| Malformed::from(format!("unknown codec {}", header[12])))?;
    let epoch_count = half(&header, 40) as usize;
    if epoch_count > 1 << 20 {
        return Err(format!("{epoch_count} epochs is not plausible").into());
    }
    Ok(Header {
        version,
        applied_id: word(&header, 16),
        key_count: word(&header, 32),
        epoch_count,
    })
}

fn read_epochs<R: Read>(reader: &mut Reader<R>, count: usize) -> Result<EpochHistory, Malformed> {
    let bytes = reader.exact(count * 16 + 4, "epochs")?;
    if half(&bytes, count * 16) != crc(&bytes[..count * 16]) {
        return Err("epochs CRC mismatch".into());
    }
    let mut epochs = EpochHistory::default();
    for index in 0..count {
        epochs.observe(word(&bytes, index * 16), word(&bytes, index * 16 + 8));
    }
    Ok(epochs)
}

/// Reads one block, checks its CRC and decompresses it: its kind, its raw bytes, its offset.
fn read_block<R: Read>(reader: &mut Reader<R>) -> Result<(u8, Vec<u8>, u64), Malformed> {
    let block_offset = reader.offset;
    let block_header = reader.exact(BLOCK_HEADER_BYTES, "block header")?;
    let (kind, block_codec) = (block_header[0], block_header[1]);
    let raw_len = half(&block_header, 4);
    let stored_len = half(&block_header, 8);
    if raw_len as usize > BLOCK_RAW_BYTES_MAX || stored_len as usize > BLOCK_STORED_BYTES_MAX {
        return Err(format!("block at byte {block_offset}: implausible length").into());
    }
    let stored = reader.exact(stored_len as usize, "block")?;
    let mut digest = kv_wal::frame::Crc32c::new();
    digest.update(&block_header[..12]);
    digest.update(&stored);
    if digest.finalize() != half(&block_header, 12) {
        return Err(format!("block at byte {block_offset}: CRC mismatch").into());
    }
    let block_codec = Codec::from_byte(block_codec)
        .ok_or_else(|| Malformed::from(format!("block at byte {block_offset}: unknown codec")))?;
    let raw = block_codec
        .decompress(&stored, raw_len as usize)
        .map_err(|error| Malformed::from(format!("block at byte {block_offset}: {error}")))?;
    Ok((kind, raw, block_offset))
}

/// The state being rebuilt from the blocks, and the counts the end block must agree with.
struct Loader {
    header: Header,
    state: AppliedState,
    keys_read: u64,
    data_blocks_read: u64,
    links_read: u64,
    requests: Vec<u8>,
}

impl Loader {
    fn data_block(&mut self, raw: &[u8]) -> Result<(), Malformed> {
        let mut position = 0usize;
        while position < raw.len() {
            let cell_len = raw
                .get(position..position + 4)
                .map(|bytes| u32::from_le_bytes(bytes.try_into().expect("4 bytes")) as usize)
                .ok_or("truncated cell length")?;
            let cell = raw
                .get(position + 4..position + 4 + cell_len)
                .ok_or("truncated cell")?;
            if self.header.version == VERSION_1 {
                let cell = cell_from_v1(cell, self.header.applied_id).ok_or("bad cell")?;
                self.state.keys.insert(&cell);
            } else if cell_is_well_formed(cell) {
                self.state.keys.insert(cell);
            } else {
                return Err("bad cell".into());
            }
            self.keys_read += 1;
            position += 4 + cell_len;
        }
        self.data_blocks_read += 1;
        Ok(())
    }

    fn history_block(&mut self, raw: &[u8]) -> Result<(), Malformed> {
        if !raw.len().is_multiple_of(LINK_BYTES) {
            return Err("torn history link".into());
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
            self.state.history.restore(
                new,
                Link {
                    previous,
                    previous_bytes: half(link, 24),
                },
            );
            self.links_read += 1;
        }
        Ok(())
    }

    /// Checks the end block against what was read and decodes the requests.
    fn finish(&mut self, end: &[u8]) -> Result<AppliedState, Malformed> {
        let key_count = self.header.key_count;
        let end_len = if self.header.version == VERSION_1 {
            16
        } else {
            32
        };
        if end.len() != end_len
            || word(end, 0) != self.keys_read
            || word(end, 8) != self.data_blocks_read
            || self.keys_read != key_count
        {
            return Err(format!(
                "end block disagrees: {} keys in {} blocks read, header says {key_count}",
                self.keys_read, self.data_blocks_read
            )
            .into());
        }
        if self.state.keys.len() as u64 != key_count {
            return Err("duplicate keys in the snapshot".into());
        }
        if self.header.version != VERSION_1 {
            if word(end, 16) != self.links_read
                || self.state.history.len() as u64 != self.links_read
            {
                return Err("end block disagrees on the history links".into());
            }
            let mut fields = FieldReader::new(&self.requests);
            self.state.requests = DedupTable::decode(&mut fields)
                .map_err(|error| Malformed::from(format!("requests: {error}")))?;
            if !fields.is_empty() || word(end, 24) != self.state.requests.len() as u64 {
                return Err("end block disagrees on the requests".into());
            }
        }
        Ok(std::mem::take(&mut self.state))
    }
}
