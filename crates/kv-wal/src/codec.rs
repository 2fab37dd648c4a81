//! The compression codecs: LZ4 and zstd, one type for every place that compresses (sealed
//! segments here).

use std::fmt;
use std::str::FromStr;

/// How a sealed segment is compressed, recorded in its header's `flags` word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SegmentCodec {
    /// LZ4 block format (`lz4_flex`): fast, a modest ratio. Codec id 1.
    Lz4,
    /// Zstandard at level [`ZSTD_LEVEL`]: a better ratio, slower. Codec id 2.
    Zstd,
}

/// The zstd level compressed segments are written with.
pub const ZSTD_LEVEL: i32 = 3;

impl SegmentCodec {
    /// The id stored in the segment header.
    pub(crate) fn id(self) -> u32 {
        match self {
            SegmentCodec::Lz4 => 1,
            SegmentCodec::Zstd => 2,
        }
    }

    pub(crate) fn from_id(id: u32) -> Option<SegmentCodec> {
        match id {
            1 => Some(SegmentCodec::Lz4),
            2 => Some(SegmentCodec::Zstd),
            _ => None,
        }
    }

    pub(crate) fn compress(self, bytes: &[u8]) -> Vec<u8> {
        match self {
            SegmentCodec::Lz4 => lz4_flex::block::compress(bytes),
            SegmentCodec::Zstd => {
                zstd::bulk::compress(bytes, ZSTD_LEVEL).expect("zstd compresses any input")
            }
        }
    }

    pub(crate) fn decompress(self, bytes: &[u8], len: usize) -> Result<Vec<u8>, String> {
        let out = match self {
            SegmentCodec::Lz4 => {
                lz4_flex::block::decompress(bytes, len).map_err(|error| error.to_string())?
            }
            SegmentCodec::Zstd => {
                zstd::bulk::decompress(bytes, len).map_err(|error| error.to_string())?
            }
        };
        if out.len() != len {
            return Err(format!(
                "block decompressed to {} bytes, its header says {len}",
                out.len()
            ));
        }
        Ok(out)
    }
}

impl fmt::Display for SegmentCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SegmentCodec::Lz4 => "lz4",
            SegmentCodec::Zstd => "zstd",
        })
    }
}

impl FromStr for SegmentCodec {
    type Err = String;
    /// Parses `lz4` or `zstd`.
    fn from_str(text: &str) -> Result<SegmentCodec, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "lz4" => Ok(SegmentCodec::Lz4),
            "zstd" => Ok(SegmentCodec::Zstd),
            _ => Err(format!(
                "unknown segment codec {text:?}: expected lz4 or zstd"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codecs_parse_and_print() {
        for codec in [SegmentCodec::Lz4, SegmentCodec::Zstd] {
            assert_eq!(codec.to_string().parse::<SegmentCodec>(), Ok(codec));
            assert_eq!(SegmentCodec::from_id(codec.id()), Some(codec));
        }
        assert!("gzip".parse::<SegmentCodec>().is_err());
        assert_eq!(SegmentCodec::from_id(0), None);
    }
}
