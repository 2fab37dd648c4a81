//! Record framing: the bytes around every payload, and the CRC-32C that guards them.
//!
//! ```text
//!  0      4      5      6      8          12                 20
//!  +------+------+------+------+----------+------------------+------------ - -
//!  | crc  | kind | flags| rsvd | len      | id               | payload (len bytes)
//!  | u32  | u8   | u8   | u16  | u32      | u64              |
//!  +------+------+------+------+----------+------------------+------------ - -
//! ```
//!
//! All integers are little-endian. The CRC-32C (Castagnoli) covers bytes 4.. to the end of the
//! payload: everything but itself. `kind` is never zero, so zero-filled or preallocated space
//! never decodes as a frame even though the CRC of zeros can be zero; `flags` (but `FLAG_LZ4` on
//! a record) and `rsvd` must be zero.
//!
//! **Salt.** In a segment of format version 3 or 4 the `crc` field holds the CRC-32C XOR the
//! segment's random 32-bit salt (from its header). Bytes that look like a frame inside a
//! record's payload were sealed with no salt (the author does not know it), so they never check
//! in a segment: a torn write of a value holding frames can never make recovery resume inside
//! it and serve them. The **wire form** of a frame has salt 0 (the plain CRC-32C): it is what
//! [`encode_record`] makes, [`decode`] and [`decode_all`] check, `Wal::read_frames` ships and
//! `Wal::append_frames` takes; the log re-seals frames with the salt of the segment they go
//! to (a change of the CRC field only, `reseal`).

/// Bytes of framing before each payload.
pub const FRAME_HEADER_BYTES: usize = 20;

/// Largest payload a record may carry (256 MiB). A length field above this is damage, so a bad
/// length never triggers a huge allocation.
pub const RECORD_BYTES_MAX: usize = 256 << 20;

/// `kind` byte of a data record.
pub(crate) const KIND_RECORD: u8 = 0x52; // 'R'
/// `kind` byte of the footer that seals a segment.
pub(crate) const KIND_SEAL: u8 = 0x53; // 'S'
/// `kind` byte of a durability mark: the segment was synced through an offset before the
/// frames after the mark were written (`docs/wal-format.md`, "Durability marks").
pub(crate) const KIND_MARK: u8 = 0x44; // 'D'

/// A CRC-32C computed over several pieces (the same checksum as [`crc32c()`] of their
/// concatenation).
pub struct Crc32c(u32);

impl Crc32c {
    /// A fresh digest.
    pub fn new() -> Crc32c {
        Crc32c(0)
    }
    /// Adds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0 = ::crc32c::crc32c_append(self.0, bytes);
    }
    /// The CRC of everything added.
    pub fn finalize(self) -> u32 {
        self.0
    }
}

impl Default for Crc32c {
    fn default() -> Crc32c {
        Crc32c::new()
    }
}

impl std::fmt::Debug for Crc32c {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Crc32c")
    }
}

/// Computes the CRC-32C of `bytes` (exposed so embedders can check frames they ship).
///
/// CRC-32C (Castagnoli: reflected polynomial 0x82F63B78, initial value and final XOR
/// 0xFFFFFFFF), computed with the CPU's CRC instruction where it has one (SSE 4.2, ARMv8),
/// 6-7x faster than a slice-by-16 table from 1 KiB up (`docs/benchmarks.md`).
pub fn crc32c(bytes: &[u8]) -> u32 {
    ::crc32c::crc32c(bytes)
}

/// `flags` bit: the stored payload is LZ4-compressed (lz4_flex block format with the
/// uncompressed size prepended as a little-endian u32). Only data records use it.
pub const FLAG_LZ4: u8 = 0x01;

/// Appends one frame to `out`, sealed with `salt` (0: the wire form).
pub(crate) fn encode(out: &mut Vec<u8>, kind: u8, id: u64, payload: &[u8], salt: u32) {
    encode_flagged(out, kind, 0, id, payload, salt);
}

/// Appends one frame whose payload is stored as given, with `flags`, sealed with `salt`.
pub(crate) fn encode_flagged(
    out: &mut Vec<u8>,
    kind: u8,
    flags: u8,
    id: u64,
    payload: &[u8],
    salt: u32,
) {
    debug_assert!(payload.len() <= RECORD_BYTES_MAX);
    let start = out.len();
    out.extend_from_slice(&[0u8; 4]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32c(&out[start + 4..]) ^ salt;
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Re-seals an encoded frame sealed with `from` (0: the wire form) for a segment whose salt
/// is `to`: only the CRC field changes.
pub(crate) fn reseal(frame: &mut [u8], from: u32, to: u32) {
    let crc = u32::from_le_bytes(frame[..4].try_into().expect("a frame header")) ^ from ^ to;
    frame[..4].copy_from_slice(&crc.to_le_bytes());
}

/// Encodes one data record as a standalone frame.
pub fn encode_record(id: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len());
    encode(&mut out, KIND_RECORD, id, payload, 0);
    out
}

/// Encodes one data record whose payload is given as stored, with its `flags` (e.g.
/// [`FLAG_LZ4`] for a payload already compressed): the inverse of [`decode`] for any record it
/// accepts.
pub fn encode_record_stored(id: u64, flags: u8, stored: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEADER_BYTES + stored.len());
    encode_flagged(&mut out, KIND_RECORD, flags, id, stored, 0);
    out
}

/// Compresses `payload` for storage if that makes it smaller: `(flags, stored bytes)`.
pub(crate) fn compress_payload(payload: &[u8]) -> Option<Vec<u8>> {
    let compressed = lz4_flex::compress_prepend_size(payload);
    (compressed.len() < payload.len()).then_some(compressed)
}

/// A frame decoded in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// `KIND_RECORD` or `KIND_SEAL`.
    pub(crate) kind: u8,
    /// Flags ([`FLAG_LZ4`]).
    pub flags: u8,
    /// The record id (for a seal: the segment's last record id).
    pub id: u64,
    /// The payload as stored (compressed when `flags` says so: use [`Frame::contents`]).
    pub payload: &'a [u8],
    /// The frame's CRC-32C (its wire form's CRC field: without a segment's salt).
    pub crc: u32,
}

impl<'a> Frame<'a> {
    /// The record's payload as it was appended: decompressed if it was stored compressed.
    pub fn contents(&self) -> Result<std::borrow::Cow<'a, [u8]>, FrameError> {
        if self.flags & FLAG_LZ4 == 0 {
            return Ok(std::borrow::Cow::Borrowed(self.payload));
        }
        let size = self
            .payload
            .get(..4)
            .map(|bytes| u32::from_le_bytes(bytes.try_into().expect("4 bytes")))
            .ok_or_else(|| FrameError::Decompress("no size prefix".to_owned()))?;
        if size as usize > RECORD_BYTES_MAX {
            return Err(FrameError::LengthTooLarge(size));
        }
        lz4_flex::decompress_size_prepended(self.payload)
            .map(std::borrow::Cow::Owned)
            .map_err(|error| FrameError::Decompress(error.to_string()))
    }

    /// Bytes the frame occupies.
    pub fn encoded_len(&self) -> usize {
        FRAME_HEADER_BYTES + self.payload.len()
    }
    /// Whether this is a data record (not a segment seal or a durability mark).
    pub fn is_record(&self) -> bool {
        self.kind == KIND_RECORD
    }
    /// Whether this is a durability mark.
    pub(crate) fn is_mark(&self) -> bool {
        self.kind == KIND_MARK
    }
}

/// Why bytes are not a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer bytes than the header, or than the header says the frame needs.
    Incomplete {
        /// Bytes the frame needs in total (when known).
        needed: usize,
    },
    /// Every header byte is zero: preallocated or zero-filled space.
    Zeroed,
    /// The kind byte is not one this format knows.
    UnknownKind(u8),
    /// Reserved bits are set.
    ReservedBitsSet,
    /// The length field is larger than [`RECORD_BYTES_MAX`].
    LengthTooLarge(u32),
    /// A compressed payload does not decompress.
    Decompress(String),
    /// The CRC does not match the bytes.
    CrcMismatch {
        /// CRC in the frame.
        stored: u32,
        /// CRC of the bytes.
        computed: u32,
    },
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Incomplete { needed } => {
                write!(f, "incomplete frame ({needed} bytes needed)")
            }
            FrameError::Zeroed => write!(f, "zero-filled space where a frame should start"),
            FrameError::UnknownKind(kind) => write!(f, "unknown frame kind 0x{kind:02x}"),
            FrameError::ReservedBitsSet => write!(f, "reserved header bits are set"),
            FrameError::Decompress(reason) => write!(f, "compressed payload is damaged: {reason}"),
            FrameError::LengthTooLarge(len) => {
                write!(
                    f,
                    "length field {len} exceeds the {RECORD_BYTES_MAX}-byte limit"
                )
            }
            FrameError::CrcMismatch { stored, computed } => {
                write!(
                    f,
                    "CRC mismatch (stored {stored:#010x}, computed {computed:#010x})"
                )
            }
        }
    }
}

/// Decodes the wire-form frame at the start of `bytes`, checking everything but id order.
pub fn decode(bytes: &[u8]) -> Result<Frame<'_>, FrameError> {
    decode_salted(bytes, 0)
}

/// Decodes a frame sealed with `salt` (a segment's; 0: the wire form).
pub(crate) fn decode_salted(bytes: &[u8], salt: u32) -> Result<Frame<'_>, FrameError> {
    if bytes.len() < FRAME_HEADER_BYTES {
        if bytes.iter().all(|&byte| byte == 0) && !bytes.is_empty() {
            return Err(FrameError::Zeroed);
        }
        return Err(FrameError::Incomplete {
            needed: FRAME_HEADER_BYTES,
        });
    }
    let header = &bytes[..FRAME_HEADER_BYTES];
    if header.iter().all(|&byte| byte == 0) {
        return Err(FrameError::Zeroed);
    }
    let kind = header[4];
    if kind != KIND_RECORD && kind != KIND_SEAL && kind != KIND_MARK {
        return Err(FrameError::UnknownKind(kind));
    }
    let flags = header[5];
    let allowed_flags = if kind == KIND_RECORD { FLAG_LZ4 } else { 0 };
    if flags & !allowed_flags != 0 || header[6] != 0 || header[7] != 0 {
        return Err(FrameError::ReservedBitsSet);
    }
    let len = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    if len as usize > RECORD_BYTES_MAX {
        return Err(FrameError::LengthTooLarge(len));
    }
    let total = FRAME_HEADER_BYTES + len as usize;
    if bytes.len() < total {
        return Err(FrameError::Incomplete { needed: total });
    }
    let stored = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) ^ salt;
    let computed = crc32c(&bytes[4..total]);
    if stored != computed {
        return Err(FrameError::CrcMismatch { stored, computed });
    }
    Ok(Frame {
        kind,
        flags,
        id: u64::from_le_bytes(header[12..20].try_into().expect("8 bytes")),
        payload: &bytes[FRAME_HEADER_BYTES..total],
        crc: stored,
    })
}

/// Largest payload [`header_bit_flip_explains`] searches: above it, a damaged frame is judged
/// by its zeroed sectors alone.
pub(crate) const HEADER_FLIP_SEARCH_BYTES_MAX: usize = 1 << 20;

/// Whether flipping one bit of the 20 header bytes of the damaged frame at the start of `bytes`
/// (sealed with `salt`) makes it a frame that decodes within `bytes`: its CRC field, kind, flags,
/// length or id flipped in synced data. A write the disk did not finish leaves whole sectors
/// unwritten (zeros, or what was there), never one bit off; so where this holds the damage is
/// a bit flip even when its length, flipped, points past the data or into zeroed free space.
/// Frames whose payload would exceed [`HEADER_FLIP_SEARCH_BYTES_MAX`] are not searched.
pub(crate) fn header_bit_flip_explains(bytes: &[u8], salt: u32) -> bool {
    let Some(header) = bytes.get(..FRAME_HEADER_BYTES) else {
        return false;
    };
    if header.iter().all(|&byte| byte == 0) {
        return false;
    }
    let mut candidate = Vec::new();
    (0..FRAME_HEADER_BYTES * 8).any(|bit| {
        let mut fixed: [u8; FRAME_HEADER_BYTES] = header.try_into().expect("20 bytes");
        fixed[bit / 8] ^= 1 << (bit % 8);
        let len = u32::from_le_bytes(fixed[8..12].try_into().expect("4 bytes")) as usize;
        if len > HEADER_FLIP_SEARCH_BYTES_MAX || FRAME_HEADER_BYTES + len > bytes.len() {
            return false;
        }
        candidate.clear();
        candidate.extend_from_slice(&fixed);
        candidate.extend_from_slice(&bytes[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + len]);
        decode_salted(&candidate, salt).is_ok()
    })
}

/// Decodes a run of data frames (as shipped by [`crate::Wal::read_frames`]), checking each CRC
/// and that ids increase by one. Returns the frames, or the offset and reason of the first bad
/// one.
pub fn decode_all(mut bytes: &[u8]) -> Result<Vec<Frame<'_>>, (usize, String)> {
    let mut frames = Vec::new();
    let mut offset = 0usize;
    while !bytes.is_empty() {
        let frame = decode(bytes).map_err(|error| (offset, error.to_string()))?;
        if !frame.is_record() {
            return Err((offset, "a segment seal is not a record".to_owned()));
        }
        if let Some(previous) = frames.last().map(|previous: &Frame<'_>| previous.id) {
            if frame.id != previous + 1 {
                return Err((
                    offset,
                    format!("id {} does not follow {previous}", frame.id),
                ));
            }
        }
        let len = frame.encoded_len();
        frames.push(frame);
        bytes = &bytes[len..];
        offset += len;
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kind byte flipped in a frame followed by zeros is explained by one header bit; a
    /// frame whose payload is above the search's limit is not searched, and a frame cut by
    /// zeros (a torn write) or all zeros is never explained.
    #[test]
    fn one_flipped_header_bit_is_found_up_to_the_search_limit() {
        let salt = 0x5eed_0001;
        for (payload_len, searched) in [
            (100, true),
            (HEADER_FLIP_SEARCH_BYTES_MAX, true),
            (HEADER_FLIP_SEARCH_BYTES_MAX + 1, false),
        ] {
            let mut bytes = Vec::new();
            encode(&mut bytes, KIND_RECORD, 9, &vec![b'v'; payload_len], salt);
            bytes.extend_from_slice(&[0; 4096]);
            bytes[4] ^= 0x02;
            assert!(decode_salted(&bytes, salt).is_err());
            assert_eq!(
                header_bit_flip_explains(&bytes, salt),
                searched,
                "payload of {payload_len} bytes"
            );
        }
        let mut torn = Vec::new();
        encode(&mut torn, KIND_RECORD, 9, &[b'v'; 1000], salt);
        torn[FRAME_HEADER_BYTES + 512..].fill(0);
        assert!(!header_bit_flip_explains(&torn, salt));
        assert!(!header_bit_flip_explains(&[0; 64], salt));
    }

    #[test]
    fn round_trip() {
        let bytes = encode_record(7, b"hello");
        let frame = decode(&bytes).unwrap();
        assert_eq!(frame.id, 7);
        assert_eq!(frame.payload, b"hello");
        assert!(frame.is_record());
        assert_eq!(frame.encoded_len(), bytes.len());
    }

    #[test]
    fn streaming_crc_matches_one_shot() {
        let bytes = b"a streaming digest over pieces";
        let mut digest = Crc32c::new();
        digest.update(&bytes[..7]);
        digest.update(&bytes[7..]);
        assert_eq!(digest.finalize(), crc32c(bytes));
    }

    #[test]
    fn crc32c_is_castagnoli() {
        // The check value of CRC-32C (RFC 3720, B.4) and its known answers.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
        assert_eq!(crc32c(&[0; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xFF; 32]), 0x62A8_AB43);
    }

    /// The table-driven CRC-32C the log used before its files were checked with the CPU's
    /// instruction: every file written before must still check.
    const TABLE: crc::Crc<u32, crc::Table<16>> =
        crc::Crc::<u32, crc::Table<16>>::new(&crc::CRC_32_ISCSI);

    proptest::proptest! {
        #[test]
        fn crc32c_agrees_with_the_table_it_replaced(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..5000),
            cuts in proptest::collection::vec(0usize..5000, 0..4),
        ) {
            proptest::prop_assert_eq!(crc32c(&bytes), TABLE.checksum(&bytes));
            let mut cuts: Vec<usize> = cuts.into_iter().map(|cut| cut.min(bytes.len())).collect();
            cuts.sort_unstable();
            let mut digest = Crc32c::new();
            let mut from = 0;
            for cut in cuts.into_iter().chain([bytes.len()]) {
                digest.update(&bytes[from..cut]);
                from = cut;
            }
            proptest::prop_assert_eq!(digest.finalize(), TABLE.checksum(&bytes));
        }
    }

    #[test]
    fn compressed_records_round_trip_and_damage_is_caught() {
        let payload = b"abcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabc".repeat(4);
        let stored = compress_payload(&payload).expect("compressible");
        let mut bytes = Vec::new();
        encode_flagged(&mut bytes, KIND_RECORD, FLAG_LZ4, 3, &stored, 0);
        let frame = decode(&bytes).unwrap();
        assert!(frame.payload.len() < payload.len());
        assert_eq!(frame.contents().unwrap().as_ref(), &payload[..]);
        // A valid CRC over a bad compressed stream is still refused by contents().
        let mut garbage = Vec::new();
        encode_flagged(
            &mut garbage,
            KIND_RECORD,
            FLAG_LZ4,
            3,
            &[0xff, 0xff, 0xff, 0x7f, 1, 2],
            0,
        );
        assert!(decode(&garbage).unwrap().contents().is_err());
        // Seals never carry flags.
        let mut seal = Vec::new();
        encode_flagged(&mut seal, KIND_SEAL, FLAG_LZ4, 3, &[0; 8], 0);
        assert_eq!(decode(&seal), Err(FrameError::ReservedBitsSet));
    }

    #[test]
    fn a_salted_frame_checks_only_with_its_salt() {
        let mut bytes = Vec::new();
        encode(&mut bytes, KIND_RECORD, 9, b"salted", 0x5eed_1234);
        assert!(matches!(
            decode(&bytes),
            Err(FrameError::CrcMismatch { .. })
        ));
        assert!(decode_salted(&bytes, 0x5eed_1235).is_err());
        let frame = decode_salted(&bytes, 0x5eed_1234).unwrap();
        assert_eq!(frame.crc, crc32c(&bytes[4..]), "the wire CRC");
        reseal(&mut bytes, 0x5eed_1234, 0);
        assert_eq!(bytes, encode_record(9, b"salted"));
        reseal(&mut bytes, 0, 7);
        assert_eq!(decode_salted(&bytes, 7).unwrap().payload, b"salted");
    }

    #[test]
    fn zeros_never_decode() {
        for len in 0..64 {
            let zeros = vec![0u8; len];
            assert!(decode(&zeros).is_err(), "{len} zero bytes decoded");
        }
        assert_eq!(decode(&[0u8; 20]), Err(FrameError::Zeroed));
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let bytes = encode_record(0x0102_0304_0506_0708, b"a small record payload");
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            match decode(&damaged) {
                Err(_) => {}
                Ok(frame) => panic!("flip of bit {bit} decoded as {frame:?}"),
            }
        }
    }

    #[test]
    fn huge_length_is_rejected_before_allocation() {
        let mut bytes = encode_record(1, b"x");
        bytes[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&bytes), Err(FrameError::LengthTooLarge(u32::MAX)));
        bytes[8..12].copy_from_slice(&1000u32.to_le_bytes());
        assert_eq!(decode(&bytes), Err(FrameError::Incomplete { needed: 1020 }));
    }

    #[test]
    fn decode_all_checks_continuity() {
        let mut bytes = encode_record(1, b"a");
        bytes.extend(encode_record(2, b"b"));
        assert_eq!(decode_all(&bytes).unwrap().len(), 2);
        bytes.extend(encode_record(4, b"d"));
        let (offset, reason) = decode_all(&bytes).unwrap_err();
        assert_eq!(offset, 2 * (FRAME_HEADER_BYTES + 1));
        assert!(reason.contains("does not follow"), "{reason}");
    }
}
