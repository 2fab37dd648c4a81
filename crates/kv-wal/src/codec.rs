//! The compression codecs: LZ4 and zstd, one type for every place in kvd that compresses —
//! kv-wal's compressed sealed segments, and kv-store's snapshots (which reuse [`Codec`]).
//!
//! A codec compresses one block at a time, and the reader is told the block's uncompressed
//! length (both formats store it): [`Codec::compress`], [`Codec::decompress`]. Each codec has a
//! stable one-byte id for file headers ([`Codec::id`], [`Codec::from_id`]) and a name for
//! flags and config files (`lz4`, `zstd`: [`std::fmt::Display`], [`std::str::FromStr`]).

use crate::error::Malformed;
use std::fmt;
use std::str::FromStr;

/// The largest block [`Codec::decompress`] accepts: above any record (`RECORD_BYTES_MAX`) or
/// block kvd writes.
pub const BLOCK_BYTES_MAX: usize = 1 << 30;

/// A block compression codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// LZ4 block format (`lz4_flex`): fast, a modest ratio. Codec id 1.
    Lz4,
    /// Zstandard: a better ratio, slower. Codec id 2. [`Codec::compress`] uses [`ZSTD_LEVEL`];
    /// [`Codec::compress_at_level`] takes another.
    Zstd,
}

/// The name kv-wal's segment code has used for [`Codec`].
pub type SegmentCodec = Codec;

/// The zstd level compressed segments are written with.
pub const ZSTD_LEVEL: i32 = 3;

impl Codec {
    /// The codec's stable id (1: LZ4, 2: zstd), for file headers.
    pub fn id(self) -> u8 {
        match self {
            Codec::Lz4 => 1,
            Codec::Zstd => 2,
        }
    }

    /// The codec with id `id`, if there is one.
    pub fn from_id(id: u8) -> Option<Codec> {
        match id {
            1 => Some(Codec::Lz4),
            2 => Some(Codec::Zstd),
            _ => None,
        }
    }

    /// Compresses one block (zstd at [`ZSTD_LEVEL`]). Blocks are at most [`BLOCK_BYTES_MAX`].
    pub fn compress(self, bytes: &[u8]) -> Vec<u8> {
        self.compress_at_level(bytes, ZSTD_LEVEL)
    }

    /// Compresses one block, zstd at `zstd_level` (LZ4 has no level).
    pub fn compress_at_level(self, bytes: &[u8], zstd_level: i32) -> Vec<u8> {
        match self {
            Codec::Lz4 => lz4_flex::block::compress(bytes),
            Codec::Zstd => {
                zstd::bulk::compress(bytes, zstd_level).expect("zstd compresses any input")
            }
        }
    }

    /// Decompresses one block whose uncompressed length is `len`; fails on damaged input or a
    /// block of another length, and on a `len` no block of `bytes` can have — past
    /// [`BLOCK_BYTES_MAX`], or for LZ4 past 255 times the input — before allocating it (before,
    /// a huge `len` panicked or aborted the process on the allocation).
    pub fn decompress(self, bytes: &[u8], len: usize) -> Result<Vec<u8>, Malformed> {
        let lz4_bound = bytes.len().saturating_mul(255).saturating_add(64);
        if len > BLOCK_BYTES_MAX || (self == Codec::Lz4 && len > lz4_bound) {
            return Err(format!(
                "a {}-byte {self} block cannot hold {len} bytes (blocks are at most \
                 {BLOCK_BYTES_MAX} bytes)",
                bytes.len()
            )
            .into());
        }
        let out = match self {
            Codec::Lz4 => {
                lz4_flex::block::decompress(bytes, len).map_err(|error| error.to_string())?
            }
            Codec::Zstd => zstd::bulk::decompress(bytes, len).map_err(|error| error.to_string())?,
        };
        if out.len() != len {
            return Err(
                format!("block decompressed to {} bytes, {len} expected", out.len()).into(),
            );
        }
        Ok(out)
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Codec::Lz4 => "lz4",
            Codec::Zstd => "zstd",
        })
    }
}

impl FromStr for Codec {
    type Err = Malformed;
    /// Parses `lz4` or `zstd`.
    fn from_str(text: &str) -> Result<Codec, Malformed> {
        match text.trim().to_ascii_lowercase().as_str() {
            "lz4" => Ok(Codec::Lz4),
            "zstd" => Ok(Codec::Zstd),
            _ => Err(format!("unknown segment codec {text:?}: expected lz4 or zstd").into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_length_no_block_can_have_is_refused_before_it_is_allocated() {
        for codec in [Codec::Lz4, Codec::Zstd] {
            let stored = codec.compress(b"tiny");
            for len in [usize::MAX, BLOCK_BYTES_MAX + 1, 1 << 40] {
                assert!(codec.decompress(&stored, len).is_err(), "{codec} {len}");
            }
        }
        assert!(Codec::Lz4.decompress(&[0u8; 4], 1 << 20).is_err());
    }

    #[test]
    fn codecs_parse_print_and_round_trip() {
        let block = b"a block that compresses, a block that compresses, a block".repeat(20);
        for codec in [Codec::Lz4, Codec::Zstd] {
            assert_eq!(codec.to_string().parse::<Codec>(), Ok(codec));
            assert_eq!(Codec::from_id(codec.id()), Some(codec));
            for stored in [codec.compress(&block), codec.compress_at_level(&block, 1)] {
                assert!(stored.len() < block.len(), "{codec}");
                assert_eq!(codec.decompress(&stored, block.len()).unwrap(), block);
                assert!(
                    codec.decompress(&stored, block.len() + 1).is_err(),
                    "{codec}"
                );
            }
        }
        assert!("gzip".parse::<Codec>().is_err());
        assert_eq!(Codec::from_id(0), None);
    }
}
