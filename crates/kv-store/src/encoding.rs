//! Small byte-level helpers shared by the entry, outcome and snapshot encodings: fixed-width
//! little-endian integers, length-prefixed byte strings, and LEB128 varints (used only inside
//! the in-memory cells, where every byte per key counts).

/// Appends `value` as a little-endian u64.
pub(crate) fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}

/// Appends `value` as a little-endian u32.
pub(crate) fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}

/// Appends `bytes` with a u32 length before them.
pub(crate) fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u32(
        out,
        u32::try_from(bytes.len()).expect("fields are limited far below 4 GiB"),
    );
    out.extend_from_slice(bytes);
}

/// Appends `value` as an unsigned LEB128 varint (1 byte below 128, at most 10).
pub(crate) fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads a varint at `*at`, advancing it; `None` when it runs past the end or over 64 bits.
pub(crate) fn get_varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Why bytes did not decode: kv-wal's, so one type says it for the log and for the store.
pub use kv_wal::Malformed;

/// A cursor over an encoded record that fails with a description of what was missing.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, at: 0 }
    }

    /// Bytes not read yet.
    pub(crate) fn rest(&self) -> &'a [u8] {
        &self.bytes[self.at..]
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.at == self.bytes.len()
    }

    pub(crate) fn take(&mut self, count: usize, what: &str) -> Result<&'a [u8], Malformed> {
        let end = self
            .at
            .checked_add(count)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| {
                format!(
                    "{what} of {count} bytes runs past the end ({} bytes left)",
                    self.bytes.len() - self.at
                )
            })?;
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    pub(crate) fn u8(&mut self, what: &str) -> Result<u8, Malformed> {
        Ok(self.take(1, what)?[0])
    }

    pub(crate) fn u32(&mut self, what: &str) -> Result<u32, Malformed> {
        let bytes = self.take(4, what)?;
        Ok(u32::from_le_bytes(bytes.try_into().expect("4 bytes")))
    }

    pub(crate) fn u64(&mut self, what: &str) -> Result<u64, Malformed> {
        let bytes = self.take(8, what)?;
        Ok(u64::from_le_bytes(bytes.try_into().expect("8 bytes")))
    }

    /// A u32 length, then that many bytes.
    pub(crate) fn bytes(&mut self, what: &str) -> Result<&'a [u8], Malformed> {
        let len = self.u32(what)? as usize;
        self.take(len, what)
    }

    /// A u32 count that must not claim more items than bytes left (each item takes at least
    /// `item_bytes_min`), so a damaged count never allocates much.
    pub(crate) fn count(&mut self, what: &str, item_bytes_min: usize) -> Result<usize, Malformed> {
        let count = self.u32(what)? as usize;
        if count.saturating_mul(item_bytes_min.max(1)) > self.bytes.len() - self.at {
            return Err(format!("{what} of {count} is more than the bytes left").into());
        }
        Ok(count)
    }
}

/// FNV-1a, 64 bits: a stable hash (the same on every build and platform) for request
/// fingerprints, which are stored in the log and in snapshots.
pub(crate) fn fnv1a64(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &byte in *part {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        // Separate the parts, so ("ab", "c") and ("a", "bc") differ.
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_at_every_width() {
        for value in [
            0,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u32::MAX as u64,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            let mut at = 0;
            assert_eq!(get_varint(&out, &mut at), Some(value));
            assert_eq!(at, out.len());
            for cut in 0..out.len() {
                assert_eq!(
                    get_varint(&out[..cut], &mut 0),
                    None,
                    "{value} cut at {cut}"
                );
            }
        }
        assert_eq!(get_varint(&[0xff; 11], &mut 0), None);
    }

    #[test]
    fn reader_refuses_to_run_past_the_end() {
        let mut out = Vec::new();
        put_bytes(&mut out, b"abc");
        put_u64(&mut out, 7);
        let mut reader = Reader::new(&out);
        assert_eq!(reader.bytes("key").unwrap(), b"abc");
        assert_eq!(reader.u64("n").unwrap(), 7);
        assert!(reader.is_empty());
        assert!(reader.u8("more").is_err());
        let mut short = Reader::new(&out[..5]);
        assert!(short.bytes("key").is_err());
        let huge = u32::MAX.to_le_bytes();
        assert!(Reader::new(&huge).count("items", 1).is_err());
    }

    #[test]
    fn fnv_separates_parts() {
        assert_ne!(fnv1a64(&[b"ab", b"c"]), fnv1a64(&[b"a", b"bc"]));
        assert_eq!(fnv1a64(&[b"x"]), fnv1a64(&[b"x"]));
    }
}
