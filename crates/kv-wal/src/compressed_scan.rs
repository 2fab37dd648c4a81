//! The scan that checks a whole compressed segment at open (every block's CRC, its
//! decompression and every frame in it, then the index and footer), and tells damaged blocks
//! from a damaged index.

use crate::codec::SegmentCodec;
use crate::compressed_format::{
    decode_block_header, decode_layout, read_block, BlockEntry, CompressedLayout,
    BLOCK_HEADER_BYTES, FOOTER_BYTES, FOOTER_MAGIC, INDEX_ENTRY_BYTES,
};
use crate::segment_file::SEGMENT_HEADER_BYTES;

/// Damage found while scanning a compressed segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BlockDamage {
    /// Where the bad block (or the bad index) starts.
    pub offset: u64,
    pub reason: String,
    /// The first id the damage lost (the id expected there).
    pub first_missing_id: u64,
    /// Where good blocks resume: (offset, first id).
    pub resume: Option<(u64, u64)>,
}

/// Everything a full scan of a compressed segment learned.
#[derive(Debug)]
pub(crate) struct CompressedScan {
    /// Every good block, in order.
    pub layout: CompressedLayout,
    /// Blocks before the first damage.
    pub clean_blocks: usize,
    /// The damage, in order.
    pub damages: Vec<BlockDamage>,
    /// Whether the only damage is in the index or footer (every block reads).
    pub only_index_damaged: bool,
    /// The last id the footer claims, when the footer is readable.
    pub footer_last_id: Option<u64>,
    /// The frames of the clean blocks, concatenated (for rewriting the good prefix).
    pub clean_frames: Vec<u8>,
}

impl CompressedScan {
    pub fn clean_last_id(&self) -> Option<u64> {
        self.layout.blocks[..self.clean_blocks]
            .last()
            .map(BlockEntry::last_id)
    }
    pub fn clean_records(&self) -> u64 {
        self.layout.blocks[..self.clean_blocks]
            .iter()
            .map(|block| u64::from(block.record_count))
            .sum()
    }
}

/// Scans a whole compressed segment image (header included): every block's CRC, its
/// decompression and every frame in it, then the index and footer.
pub(crate) fn scan(bytes: &[u8], first_id: u64, codec: SegmentCodec, salt: u32) -> CompressedScan {
    let file_len = bytes.len() as u64;
    let footer = decode_layout(bytes, 0, file_len, first_id, codec);
    let footer_last_id = footer.as_ref().ok().and_then(CompressedLayout::last_id);
    let data_end = match &footer {
        Ok(layout) => layout
            .blocks
            .last()
            .map_or(SEGMENT_HEADER_BYTES as u64, |block| {
                block.offset + block.stored_len()
            }),
        Err(_) => file_len,
    } as usize;
    let mut result = CompressedScan {
        layout: CompressedLayout {
            codec,
            blocks: Vec::new(),
            frames_bytes: 0,
        },
        clean_blocks: 0,
        damages: Vec::new(),
        only_index_damaged: false,
        footer_last_id,
        clean_frames: Vec::new(),
    };
    let mut position = SEGMENT_HEADER_BYTES;
    let mut expected = first_id;
    while position < data_end {
        match read_block(&bytes[position..data_end], codec, expected, salt) {
            Ok((frames, mut block)) => {
                block.offset = position as u64;
                if result.damages.is_empty() {
                    result.clean_blocks += 1;
                    result.clean_frames.extend_from_slice(&frames);
                }
                result.layout.frames_bytes += frames.len() as u64;
                result.layout.blocks.push(block);
                position += block.stored_len() as usize;
                expected = block.last_id() + 1;
            }
            Err(reason) => {
                let resume = find_block(bytes, position + 1, data_end, expected, codec, salt);
                result.damages.push(BlockDamage {
                    offset: position as u64,
                    reason: reason.to_string(),
                    first_missing_id: expected,
                    resume: resume.map(|(offset, id)| (offset as u64, id)),
                });
                match resume {
                    Some((offset, id)) => {
                        position = offset;
                        expected = id;
                    }
                    None => break,
                }
            }
        }
    }
    if let Err(reason) = footer {
        check_unindexed_tail(bytes, &mut result, expected, reason.to_string());
    }
    result
}

/// After a scan of a segment whose footer did not check: decides whether what follows the last
/// good block is the block index (only the index or footer is damaged, every record is there)
/// or a damaged block.
///
/// It is the index only if the bytes after the last good block are exactly as long as an index
/// of the blocks found plus a footer, and either the index entries are exactly those blocks or
/// the footer's block count and index offset say so. A lost block cannot pass: the index of a
/// file with one more block is longer.
fn check_unindexed_tail(bytes: &[u8], result: &mut CompressedScan, expected: u64, reason: String) {
    let blocks = &result.layout.blocks;
    let end_of_blocks = blocks.last().map_or(SEGMENT_HEADER_BYTES as u64, |block| {
        block.offset + block.stored_len()
    });
    let index_len = blocks.len() * INDEX_ENTRY_BYTES;
    let fits = !blocks.is_empty()
        && bytes.len() as u64 == end_of_blocks + (index_len + FOOTER_BYTES) as u64;
    let tail_is_index = fits && {
        let tail = &bytes[end_of_blocks as usize..];
        let mut expected_index = Vec::with_capacity(index_len);
        for block in blocks {
            expected_index.extend_from_slice(&block.offset.to_le_bytes());
            expected_index.extend_from_slice(&block.first_id.to_le_bytes());
            expected_index.extend_from_slice(&block.record_count.to_le_bytes());
            expected_index.extend_from_slice(&block.compressed_len.to_le_bytes());
        }
        let footer = &tail[index_len..];
        let footer_agrees = &footer[40..48] == FOOTER_MAGIC
            && footer[4..8] == (blocks.len() as u32).to_le_bytes()
            && footer[8..16] == end_of_blocks.to_le_bytes();
        tail[..index_len] == expected_index[..] || footer_agrees
    };
    if tail_is_index {
        // The scan ran into the index as if it were a block: that was the index, not a block.
        result
            .damages
            .retain(|damage| damage.offset < end_of_blocks);
        result.only_index_damaged = result.damages.is_empty();
    }
    let tail_reported = result
        .damages
        .iter()
        .any(|damage| damage.offset >= end_of_blocks);
    if !tail_reported {
        result.damages.push(BlockDamage {
            offset: end_of_blocks,
            reason: format!("block index or footer: {reason}"),
            first_missing_id: expected,
            resume: None,
        });
    }
}

/// The next offset at or after `from` where a good block with an id at or above `min_id`
/// starts.
fn find_block(
    bytes: &[u8],
    from: usize,
    end: usize,
    min_id: u64,
    codec: SegmentCodec,
    salt: u32,
) -> Option<(usize, u64)> {
    (from..end.saturating_sub(BLOCK_HEADER_BYTES)).find_map(|offset| {
        let header = decode_block_header(&bytes[offset..end]).ok()?;
        if header.first_id < min_id {
            return None;
        }
        read_block(&bytes[offset..end], codec, header.first_id, salt)
            .ok()
            .map(|_| (offset, header.first_id))
    })
}

/// The salt of the test images' frames.
#[cfg(test)]
const SALT: u32 = 0x5a17_0001;

/// A compressed segment image of `payloads` and the plain frames it holds (for tests).
#[cfg(test)]
fn image(codec: SegmentCodec, first_id: u64, payloads: &[Vec<u8>]) -> (Vec<u8>, Vec<u8>) {
    let header = crate::segment_file::SegmentHeader {
        log_id: 7,
        sequence: 1,
        first_id,
        codec: Some(codec),
        salt: SALT,
        preallocated: false,
    }
    .encode();
    let mut frames = Vec::new();
    for (index, payload) in payloads.iter().enumerate() {
        crate::frame::encode(
            &mut frames,
            crate::frame::KIND_RECORD,
            first_id + index as u64,
            payload,
            SALT,
        );
    }
    let (bytes, _) = crate::compressed_format::build(&header, codec, &frames, first_id, SALT);
    (bytes, frames)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::crc32c;

    fn payloads(count: usize, len: usize) -> Vec<Vec<u8>> {
        (0..count)
            .map(|index| {
                format!(
                    "{{\"user\":\"u{index:06}\",\"score\":{},\"pad\":\"{}\"}}",
                    index * 7,
                    "x".repeat(len)
                )
                .into_bytes()
            })
            .collect()
    }

    #[test]
    fn round_trip_over_several_blocks_with_both_codecs() {
        for codec in [SegmentCodec::Lz4, SegmentCodec::Zstd] {
            let (bytes, frames) = image(codec, 10, &payloads(6_000, 100));
            assert_eq!(
                crc32c(&bytes[..44]),
                u32::from_le_bytes(bytes[44..48].try_into().unwrap())
            );
            assert!(
                bytes.len() < frames.len() / 2,
                "{codec}: {} of {}",
                bytes.len(),
                frames.len()
            );
            let result = scan(&bytes, 10, codec, SALT);
            assert!(result.damages.is_empty(), "{:?}", result.damages);
            assert!(result.layout.blocks.len() > 1);
            assert_eq!(result.clean_frames, frames);
            let layout = decode_layout(&bytes, 0, bytes.len() as u64, 10, codec).unwrap();
            assert_eq!(layout, result.layout);
            assert_eq!(layout.last_id(), Some(10 + 6_000 - 1));
            assert_eq!(layout.block_for(10), 0);
            assert_eq!(layout.block_for(u64::MAX), layout.blocks.len() - 1);
        }
    }

    #[test]
    fn damage_in_a_block_is_found_and_skipped_to_the_next_block() {
        let (mut bytes, _) = image(SegmentCodec::Lz4, 1, &payloads(6_000, 100));
        let layout = decode_layout(&bytes, 0, bytes.len() as u64, 1, SegmentCodec::Lz4).unwrap();
        let second = layout.blocks[1];
        bytes[second.offset as usize + BLOCK_HEADER_BYTES + 10] ^= 0x40;
        let result = scan(&bytes, 1, SegmentCodec::Lz4, SALT);
        assert_eq!(result.damages.len(), 1);
        let damage = &result.damages[0];
        assert_eq!(damage.offset, second.offset);
        assert!(damage.reason.contains("CRC"), "{}", damage.reason);
        assert_eq!(damage.first_missing_id, second.first_id);
        assert_eq!(
            damage.resume,
            Some((layout.blocks[2].offset, layout.blocks[2].first_id))
        );
        assert_eq!(result.clean_blocks, 1);
        assert!(!result.only_index_damaged);
        assert_eq!(result.layout.blocks.len(), layout.blocks.len() - 1);
    }

    #[test]
    fn damaged_index_alone_is_told_apart() {
        let (mut bytes, frames) = image(SegmentCodec::Zstd, 1, &payloads(50, 10));
        let len = bytes.len();
        bytes[len - 20] ^= 1;
        let result = scan(&bytes, 1, SegmentCodec::Zstd, SALT);
        assert!(result.only_index_damaged, "{:?}", result.damages);
        assert_eq!(result.clean_frames, frames);
        assert_eq!(result.damages.len(), 1);
    }

    #[test]
    fn a_damaged_last_block_is_not_mistaken_for_a_damaged_index() {
        let (mut bytes, _) = image(SegmentCodec::Lz4, 1, &payloads(6_000, 100));
        let layout = decode_layout(&bytes, 0, bytes.len() as u64, 1, SegmentCodec::Lz4).unwrap();
        let last = *layout.blocks.last().unwrap();
        bytes[last.offset as usize + BLOCK_HEADER_BYTES + 5] ^= 1;
        let len = bytes.len();
        bytes[len - 1] ^= 1;
        let result = scan(&bytes, 1, SegmentCodec::Lz4, SALT);
        assert!(!result.only_index_damaged);
        assert_eq!(result.damages[0].offset, last.offset);
        assert_eq!(result.damages[0].first_missing_id, last.first_id);
        assert_eq!(result.clean_last_id(), Some(last.first_id - 1));

        // The index alone damaged (entries and footer both), every block fine: told apart.
        let (mut bytes, frames) = image(SegmentCodec::Lz4, 1, &payloads(6_000, 100));
        let index_offset = last.offset as usize + last.stored_len() as usize;
        bytes[index_offset + 3] ^= 1;
        let result = scan(&bytes, 1, SegmentCodec::Lz4, SALT);
        assert!(result.only_index_damaged, "{:?}", result.damages);
        assert_eq!(result.clean_frames, frames);
    }

    #[test]
    fn zeros_and_every_single_bit_flip_are_rejected() {
        let zeros = vec![0u8; 4096];
        assert!(decode_block_header(&zeros)
            .unwrap_err()
            .to_string()
            .contains("zero"));
        assert!(decode_layout(&zeros, 0, 4096, 1, SegmentCodec::Lz4).is_err());
        let (bytes, frames) = image(SegmentCodec::Lz4, 3, &payloads(4, 5));
        for bit in SEGMENT_HEADER_BYTES * 8..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            let result = scan(&damaged, 3, SegmentCodec::Lz4, SALT);
            assert!(!result.damages.is_empty(), "bit {bit} went unnoticed");
            assert!(frames.starts_with(&result.clean_frames), "bit {bit}");
        }
    }
}
