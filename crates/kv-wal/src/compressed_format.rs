//! Compressed sealed segments: the `.walz` file format (blocks, block index, footer): how one
//! is built, and how its layout and blocks are read back. The scan that checks a whole one at
//! open is in `compressed_scan.rs`.
//!
//! A sealed segment's frames never change, so they can be stored compressed. A compressed
//! segment holds the *original* frames, byte for byte, in independently compressed blocks of
//! whole frames (about [`BLOCK_FRAMES_BYTES_TARGET`] uncompressed each), followed by an index of
//! the blocks and a footer:
//!
//! ```text
//! header (48 B, version 2, codec in flags) | block* | index (24 B per block) | footer (48 B)
//! block = block header (32 B) | compressed frames
//! ```
//!
//! Opening reads the footer and the index (no scan); a read binary-searches the index for the
//! block holding an id, checks that block's CRC, decompresses it and hands out its frames with
//! the CRCs they were written with, so replication ships the same bytes it would from a plain
//! segment.

use crate::codec::SegmentCodec;
use crate::error::Malformed;
use crate::frame::{self, Crc32c, FRAME_HEADER_BYTES, KIND_RECORD, RECORD_BYTES_MAX};
use crate::segment_file::{SEAL_BYTES, SEGMENT_HEADER_BYTES};

/// Frames are gathered into a block until it holds at least this many bytes (a frame is never
/// split, so a block can be larger by one frame).
pub const BLOCK_FRAMES_BYTES_TARGET: usize = 256 * 1024;
/// Bytes of a block header.
pub(crate) const BLOCK_HEADER_BYTES: usize = 32;
/// Bytes of one entry of the block index.
pub(crate) const INDEX_ENTRY_BYTES: usize = 24;
/// Bytes of the footer at the very end of a compressed segment.
pub(crate) const FOOTER_BYTES: usize = 48;
/// Magic at the end of the footer (the last 8 bytes of the file).
pub(crate) const FOOTER_MAGIC: &[u8; 8] = b"KVWALZIX";
/// The largest frames a block may hold: one maximal record, plus the target.
const BLOCK_FRAMES_BYTES_MAX: usize =
    RECORD_BYTES_MAX + FRAME_HEADER_BYTES + BLOCK_FRAMES_BYTES_TARGET;

const _: () = assert!(BLOCK_FRAMES_BYTES_MAX < u32::MAX as usize);
const _: () = assert!(FOOTER_BYTES == SEGMENT_HEADER_BYTES);

/// One block as the index (and the in-memory layout) describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlockEntry {
    /// File offset of the block header.
    pub offset: u64,
    pub first_id: u64,
    pub record_count: u32,
    pub compressed_len: u32,
}

impl BlockEntry {
    pub fn last_id(&self) -> u64 {
        self.first_id + u64::from(self.record_count) - 1
    }
    /// Bytes of the block in the file, header included.
    pub fn stored_len(&self) -> u64 {
        (BLOCK_HEADER_BYTES + self.compressed_len as usize) as u64
    }
}

/// What a compressed segment holds, kept in memory for readers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CompressedLayout {
    pub codec: SegmentCodec,
    /// The readable blocks, in id order (damaged ones left out under `SkipCorrupt`).
    pub blocks: Vec<BlockEntry>,
    /// Bytes of the frames in all blocks, uncompressed.
    pub frames_bytes: u64,
}

impl CompressedLayout {
    /// The size the segment had as a plain sealed file.
    pub fn original_bytes(&self) -> u64 {
        (SEGMENT_HEADER_BYTES + SEAL_BYTES) as u64 + self.frames_bytes
    }
    pub fn last_id(&self) -> Option<u64> {
        self.blocks.last().map(BlockEntry::last_id)
    }
    pub fn record_count(&self) -> u64 {
        self.blocks
            .iter()
            .map(|block| u64::from(block.record_count))
            .sum()
    }
    /// The position of the block holding `id`, or of the first block after it.
    pub fn block_for(&self, id: u64) -> usize {
        self.blocks
            .partition_point(|block| block.first_id <= id)
            .saturating_sub(1)
    }
}

/// The decoded header of one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlockHeader {
    pub crc: u32,
    pub compressed_len: u32,
    pub frames_len: u32,
    pub record_count: u32,
    pub first_id: u64,
}

fn encode_block(out: &mut Vec<u8>, codec: SegmentCodec, frames: &[u8], first_id: u64, count: u32) {
    let compressed = codec.compress(frames);
    let mut header = [0u8; BLOCK_HEADER_BYTES];
    header[4..8].copy_from_slice(&(compressed.len() as u32).to_le_bytes());
    header[8..12].copy_from_slice(&(frames.len() as u32).to_le_bytes());
    header[12..16].copy_from_slice(&count.to_le_bytes());
    header[16..24].copy_from_slice(&first_id.to_le_bytes());
    let last_id = first_id + u64::from(count) - 1;
    header[24..32].copy_from_slice(&last_id.to_le_bytes());
    let mut crc = Crc32c::new();
    crc.update(&header[4..]);
    crc.update(&compressed);
    header[0..4].copy_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&compressed);
}

/// Decodes a block header, checking everything but the CRC (which needs the body).
pub(crate) fn decode_block_header(bytes: &[u8]) -> Result<BlockHeader, Malformed> {
    let Some(bytes) = bytes.get(..BLOCK_HEADER_BYTES) else {
        return Err("no room for a block header".into());
    };
    if bytes.iter().all(|&byte| byte == 0) {
        return Err("zero-filled space where a block should start".into());
    }
    let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let long = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let header = BlockHeader {
        crc: word(0),
        compressed_len: word(4),
        frames_len: word(8),
        record_count: word(12),
        first_id: long(16),
    };
    let last_id = long(24);
    if header.record_count == 0 || header.first_id == 0 {
        return Err("block header has no records".into());
    }
    if header
        .first_id
        .checked_add(u64::from(header.record_count) - 1)
        != Some(last_id)
    {
        return Err("block header ids do not add up".into());
    }
    let frames_len = header.frames_len as usize;
    let frames_min = header.record_count as usize * FRAME_HEADER_BYTES;
    if frames_len > BLOCK_FRAMES_BYTES_MAX || frames_len < frames_min {
        return Err(format!("block header length {frames_len} is impossible").into());
    }
    if header.compressed_len as usize > compressed_len_max(frames_len) {
        return Err(format!(
            "block header compressed length {} is impossible",
            header.compressed_len
        )
        .into());
    }
    Ok(header)
}

/// No codec expands its input more than this (LZ4's bound is `n + n/255 + 16`).
fn compressed_len_max(frames_len: usize) -> usize {
    frames_len + frames_len / 64 + 1024
}

/// Checks one stored block (`bytes` starts at its header) and returns its original frames.
/// Every frame is decoded (CRC included) and the ids must run `first_id..` as the header says.
pub(crate) fn read_block(
    bytes: &[u8],
    codec: SegmentCodec,
    expected_first_id: u64,
    salt: u32,
) -> Result<(Vec<u8>, BlockEntry), Malformed> {
    let header = decode_block_header(bytes)?;
    let body_end = BLOCK_HEADER_BYTES + header.compressed_len as usize;
    let Some(body) = bytes.get(BLOCK_HEADER_BYTES..body_end) else {
        return Err(format!("block of {body_end} bytes runs past the end of the data").into());
    };
    let mut crc = Crc32c::new();
    crc.update(&bytes[4..BLOCK_HEADER_BYTES]);
    crc.update(body);
    let computed = crc.finalize();
    if computed != header.crc {
        return Err(format!(
            "block CRC mismatch (stored {:#010x}, computed {computed:#010x})",
            header.crc
        )
        .into());
    }
    if header.first_id != expected_first_id {
        return Err(format!(
            "block starts at id {} where {expected_first_id} was expected",
            header.first_id
        )
        .into());
    }
    let frames = codec.decompress(body, header.frames_len as usize)?;
    check_frames(&frames, header.first_id, header.record_count, salt)?;
    Ok((
        frames,
        BlockEntry {
            offset: 0,
            first_id: header.first_id,
            record_count: header.record_count,
            compressed_len: header.compressed_len,
        },
    ))
}

fn check_frames(frames: &[u8], first_id: u64, count: u32, salt: u32) -> Result<(), Malformed> {
    let mut position = 0;
    let mut expected = first_id;
    while position < frames.len() {
        let frame = frame::decode_salted(&frames[position..], salt)
            .map_err(|error| Malformed::from(format!("frame in block at {position}: {error}")))?;
        if frame.kind != KIND_RECORD || frame.id != expected {
            return Err(format!(
                "frame in block at {position} has id {} where {expected} was expected",
                frame.id
            )
            .into());
        }
        position += frame.encoded_len();
        expected += 1;
    }
    if expected - first_id != u64::from(count) {
        return Err(format!(
            "block holds {} records, its header says {count}",
            expected - first_id
        )
        .into());
    }
    Ok(())
}

/// The footer: where the index is and what the segment holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Footer {
    block_count: u32,
    index_offset: u64,
    last_id: u64,
    record_count: u64,
    frames_bytes: u64,
}

fn encode_index_and_footer(out: &mut Vec<u8>, blocks: &[BlockEntry], footer: &Footer) {
    let start = out.len();
    for block in blocks {
        out.extend_from_slice(&block.offset.to_le_bytes());
        out.extend_from_slice(&block.first_id.to_le_bytes());
        out.extend_from_slice(&block.record_count.to_le_bytes());
        out.extend_from_slice(&block.compressed_len.to_le_bytes());
    }
    let mut tail = [0u8; FOOTER_BYTES];
    tail[4..8].copy_from_slice(&footer.block_count.to_le_bytes());
    tail[8..16].copy_from_slice(&footer.index_offset.to_le_bytes());
    tail[16..24].copy_from_slice(&footer.last_id.to_le_bytes());
    tail[24..32].copy_from_slice(&footer.record_count.to_le_bytes());
    tail[32..40].copy_from_slice(&footer.frames_bytes.to_le_bytes());
    tail[40..48].copy_from_slice(FOOTER_MAGIC);
    let mut crc = Crc32c::new();
    crc.update(&out[start..]);
    crc.update(&tail[4..]);
    tail[0..4].copy_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&tail);
}

/// Builds a compressed segment image: `header` (already encoded with the codec), then the
/// blocks, index and footer for `frames` (whole data frames sealed with `salt`, ids from
/// `first_id`).
pub(crate) fn build(
    header: &[u8; SEGMENT_HEADER_BYTES],
    codec: SegmentCodec,
    frames: &[u8],
    first_id: u64,
    salt: u32,
) -> (Vec<u8>, CompressedLayout) {
    let mut out = Vec::with_capacity(SEGMENT_HEADER_BYTES + frames.len() / 2);
    out.extend_from_slice(header);
    let mut blocks = Vec::new();
    let mut block_start = 0usize;
    let mut block_first_id = first_id;
    let mut position = 0usize;
    let mut id = first_id;
    while position < frames.len() {
        let len = frame::decode_salted(&frames[position..], salt)
            .expect("only checked frames are compressed")
            .encoded_len();
        position += len;
        id += 1;
        if position - block_start >= BLOCK_FRAMES_BYTES_TARGET || position == frames.len() {
            let count = (id - block_first_id) as u32;
            let offset = out.len() as u64;
            encode_block(
                &mut out,
                codec,
                &frames[block_start..position],
                block_first_id,
                count,
            );
            blocks.push(BlockEntry {
                offset,
                first_id: block_first_id,
                record_count: count,
                compressed_len: (out.len() as u64 - offset) as u32 - BLOCK_HEADER_BYTES as u32,
            });
            block_start = position;
            block_first_id = id;
        }
    }
    let layout = CompressedLayout {
        codec,
        blocks,
        frames_bytes: frames.len() as u64,
    };
    let footer = Footer {
        block_count: layout.blocks.len() as u32,
        index_offset: out.len() as u64,
        last_id: id - 1,
        record_count: id - first_id,
        frames_bytes: frames.len() as u64,
    };
    encode_index_and_footer(&mut out, &layout.blocks, &footer);
    (out, layout)
}

/// Reads the layout from the index and footer (`tail` is the file from `tail_offset` to its
/// end, `file_len` bytes in all). Checks the footer's CRC, and that the index covers the data
/// region exactly with contiguous ids from `first_id`.
pub(crate) fn decode_layout(
    tail: &[u8],
    tail_offset: u64,
    file_len: u64,
    first_id: u64,
    codec: SegmentCodec,
) -> Result<CompressedLayout, Malformed> {
    let footer_bytes = tail
        .len()
        .checked_sub(FOOTER_BYTES)
        .map(|at| &tail[at..])
        .ok_or_else(|| "file too short for a compressed segment footer".to_owned())?;
    if &footer_bytes[40..48] != FOOTER_MAGIC {
        return Err("no block index footer at the end of the file".into());
    }
    let word = |at: usize| u32::from_le_bytes(footer_bytes[at..at + 4].try_into().expect("4"));
    let long = |at: usize| u64::from_le_bytes(footer_bytes[at..at + 8].try_into().expect("8"));
    let footer = Footer {
        block_count: word(4),
        index_offset: long(8),
        last_id: long(16),
        record_count: long(24),
        frames_bytes: long(32),
    };
    let index_len = u64::from(footer.block_count) * INDEX_ENTRY_BYTES as u64;
    if footer
        .index_offset
        .checked_add(index_len + FOOTER_BYTES as u64)
        != Some(file_len)
        || footer.index_offset < tail_offset
    {
        return Err(format!(
            "block index footer says {} blocks at offset {}, which does not fit the file",
            footer.block_count, footer.index_offset
        )
        .into());
    }
    let index = &tail[(footer.index_offset - tail_offset) as usize..tail.len() - FOOTER_BYTES];
    let mut crc = Crc32c::new();
    crc.update(index);
    crc.update(&footer_bytes[4..]);
    let computed = crc.finalize();
    let stored = word(0);
    if computed != stored {
        return Err(format!(
            "block index CRC mismatch (stored {stored:#010x}, computed {computed:#010x})"
        )
        .into());
    }
    let mut blocks = Vec::with_capacity(footer.block_count as usize);
    let mut next_offset = SEGMENT_HEADER_BYTES as u64;
    let mut next_id = first_id;
    for entry in index.chunks_exact(INDEX_ENTRY_BYTES) {
        let long = |at: usize| u64::from_le_bytes(entry[at..at + 8].try_into().expect("8"));
        let word = |at: usize| u32::from_le_bytes(entry[at..at + 4].try_into().expect("4"));
        let block = BlockEntry {
            offset: long(0),
            first_id: long(8),
            record_count: word(16),
            compressed_len: word(20),
        };
        if block.offset != next_offset || block.first_id != next_id || block.record_count == 0 {
            return Err(format!(
                "block index entry {} does not continue the one before it",
                blocks.len()
            )
            .into());
        }
        next_offset += block.stored_len();
        next_id = block.last_id() + 1;
        blocks.push(block);
    }
    if next_offset != footer.index_offset
        || blocks.is_empty()
        || next_id - 1 != footer.last_id
        || next_id - first_id != footer.record_count
    {
        return Err("block index does not add up to its footer".into());
    }
    Ok(CompressedLayout {
        codec,
        blocks,
        frames_bytes: footer.frames_bytes,
    })
}
