//! Writing a snapshot: the header, the epochs, then blocks of cells, history links and
//! requests, each compressed behind its CRC, and the end block; through the durable-file seam.

use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use kv_wal::durable::DurableFileWriter;
use kv_wal::fs::FileSystem;

use super::{
    crc, snapshot_file_name, Codec, SnapshotError, SnapshotInfo, SnapshotView, BLOCK_HEADER_BYTES,
    HEADER_BYTES, KIND_DATA, KIND_END, KIND_HISTORY, KIND_REQUESTS, MAGIC, SNAPSHOT_BLOCK_BYTES,
    VERSION,
};

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
    let mut blocks = BlockWriter {
        out: DurableFileWriter::create(fs, dir, &name)?,
        codec,
        raw: Vec::with_capacity(SNAPSHOT_BLOCK_BYTES + 4096),
        raw_bytes: 0,
        blocks_written: 0,
    };
    blocks.out.write_bytes(&encode_header(view, codec))?;
    blocks
        .out
        .write_bytes(&encode_epochs(view.epochs.starts()))?;
    for cell in view.map.keys.cells() {
        blocks.push(KIND_DATA, &[&(cell.len() as u32).to_le_bytes(), cell])?;
    }
    blocks.finish_kind(KIND_DATA)?;
    let data_block_count = blocks.blocks_written;
    for (locator, link) in view.map.history.iter() {
        blocks.push(
            KIND_HISTORY,
            &[
                &locator.revision.to_le_bytes(),
                &locator.op_index.to_le_bytes(),
                &link.previous.revision.to_le_bytes(),
                &link.previous.op_index.to_le_bytes(),
                &link.previous_bytes.to_le_bytes(),
            ],
        )?;
    }
    blocks.finish_kind(KIND_HISTORY)?;
    let mut requests = Vec::new();
    view.map.requests.encode(&mut requests);
    for chunk in requests.chunks(SNAPSHOT_BLOCK_BYTES) {
        blocks.raw_bytes += chunk.len() as u64;
        blocks.emit(KIND_REQUESTS, chunk, codec)?;
    }
    let mut end = Vec::with_capacity(32);
    end.extend_from_slice(&(view.key_count() as u64).to_le_bytes());
    end.extend_from_slice(&data_block_count.to_le_bytes());
    end.extend_from_slice(&(view.map.history.len() as u64).to_le_bytes());
    end.extend_from_slice(&(view.map.requests.len() as u64).to_le_bytes());
    blocks.emit(KIND_END, &end, Codec::None)?;
    let raw_bytes = blocks.raw_bytes;
    let size_bytes = blocks.out.commit()?;
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

/// The 64-byte header: magic, version, codec, applied id, last epoch, key and epoch counts,
/// the creation time, and its CRC.
fn encode_header(view: &SnapshotView, codec: Codec) -> Vec<u8> {
    let last_epoch = view.epochs.epoch_at(view.applied_id).unwrap_or(0);
    let mut header = Vec::with_capacity(HEADER_BYTES);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&VERSION.to_le_bytes());
    header.extend_from_slice(&[codec.to_byte(), 0, 0, 0]);
    header.extend_from_slice(&view.applied_id.to_le_bytes());
    header.extend_from_slice(&last_epoch.to_le_bytes());
    header.extend_from_slice(&(view.key_count() as u64).to_le_bytes());
    header.extend_from_slice(&(view.epochs.starts().len() as u32).to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64);
    header.extend_from_slice(&now_ms.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    let header_crc = crc(&header);
    header.extend_from_slice(&header_crc.to_le_bytes());
    debug_assert_eq!(header.len(), HEADER_BYTES);
    header
}

/// The epoch table: `(epoch, first id)` pairs and their CRC.
fn encode_epochs(epochs: &[(u64, u64)]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(epochs.len() * 16 + 4);
    for &(epoch, first_id) in epochs {
        bytes.extend_from_slice(&epoch.to_le_bytes());
        bytes.extend_from_slice(&first_id.to_le_bytes());
    }
    let epochs_crc = crc(&bytes);
    bytes.extend_from_slice(&epochs_crc.to_le_bytes());
    bytes
}

/// Gathers items into blocks of about [`SNAPSHOT_BLOCK_BYTES`] and writes each compressed,
/// behind its header and CRC.
struct BlockWriter<'fs> {
    out: DurableFileWriter<'fs>,
    codec: Codec,
    raw: Vec<u8>,
    /// Bytes of items before compression, so far.
    raw_bytes: u64,
    /// Blocks written so far (all kinds).
    blocks_written: u64,
}

impl BlockWriter<'_> {
    /// Adds one item (its parts, back to back) to the block of `kind` being gathered, writing
    /// the block once it is full.
    fn push(&mut self, kind: u8, parts: &[&[u8]]) -> Result<(), kv_wal::Error> {
        for part in parts {
            self.raw.extend_from_slice(part);
        }
        if self.raw.len() >= SNAPSHOT_BLOCK_BYTES {
            self.finish_kind(kind)?;
        }
        Ok(())
    }

    /// Writes what is gathered as a block of `kind`, if anything is.
    fn finish_kind(&mut self, kind: u8) -> Result<(), kv_wal::Error> {
        if self.raw.is_empty() {
            return Ok(());
        }
        let raw = std::mem::take(&mut self.raw);
        self.raw_bytes += raw.len() as u64;
        self.emit(kind, &raw, self.codec)?;
        self.raw = raw;
        self.raw.clear();
        Ok(())
    }

    /// Writes `raw` as one block of `kind`, compressed with `codec`.
    fn emit(&mut self, kind: u8, raw: &[u8], codec: Codec) -> Result<(), kv_wal::Error> {
        let stored = codec.compress(raw);
        let mut block_header = Vec::with_capacity(BLOCK_HEADER_BYTES);
        block_header.extend_from_slice(&[kind, codec.to_byte(), 0, 0]);
        block_header.extend_from_slice(&(raw.len() as u32).to_le_bytes());
        block_header.extend_from_slice(&(stored.len() as u32).to_le_bytes());
        let mut digest = kv_wal::frame::Crc32c::new();
        digest.update(&block_header);
        digest.update(&stored);
        block_header.extend_from_slice(&digest.finalize().to_le_bytes());
        self.out.write_bytes(&block_header)?;
        self.out.write_bytes(&stored)?;
        self.blocks_written += 1;
        Ok(())
    }
}
