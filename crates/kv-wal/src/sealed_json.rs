//! Small JSON state files that carry their own CRC-32C, so a damaged or edited one is refused
//! instead of believed.
//!
//! `node.meta`, the controller's `raft-state.json` and its `snapshot.json` are JSON, so an
//! operator can read them — and so a flipped bit in a digit (an epoch, a vote's term, a commit
//! id) still parses, and was taken as written. A vote's term moved down lets a node vote twice
//! in a term; an epoch moved up stops a node from ever following. [`seal`] ends such a file's
//! object with one more member, `"crc32c": "<8 hex digits>"`, the CRC-32C of the whole text
//! with those 8 digits as zeros; [`check`] recomputes it. The file stays JSON (readers ignore
//! the member) and reads as it did.
//!
//! A file written before sealing has no such member. Each file's `format` field tells the two
//! apart: the sealed format is one above the last unsealed one, and [`check_format`] refuses a
//! sealed format without a seal — so damage to the member's own key is caught too, and every
//! single-bit flip of a sealed file is refused.

use crate::frame::{crc32c, Crc32c};

/// The member [`seal`] adds, as it appears in the text (the value follows in quotes).
const MEMBER: &[u8] = br#""crc32c": ""#;
/// Hex digits of the checksum, lowercase (an uppercase digit is a flipped bit).
const DIGITS: usize = 8;

/// Whether a file carried a seal that matched ([`check`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seal {
    /// The file ends with a `crc32c` member and its text matches it.
    Matches,
    /// The file has no `crc32c` member: written before sealing, or the member is damaged.
    Absent,
}

/// `json` — a JSON object, as `serde_json` writes it (compact or pretty) — with a last member
/// `"crc32c": "<8 hex digits>"` added and a final newline.
pub fn seal(json: &[u8]) -> Vec<u8> {
    let text = trim_end(json);
    let body = text.strip_suffix(b"}").map_or(text, trim_end);
    let mut sealed = Vec::with_capacity(body.len() + MEMBER.len() + DIGITS + 8);
    sealed.extend_from_slice(body);
    if body.last() != Some(&b'{') {
        sealed.push(b',');
    }
    sealed.extend_from_slice(b"\n  ");
    sealed.extend_from_slice(MEMBER);
    let digits_at = sealed.len();
    sealed.extend_from_slice(&[b'0'; DIGITS]);
    sealed.extend_from_slice(b"\"\n}\n");
    let checksum = format!("{:08x}", crc32c(&sealed));
    sealed[digits_at..digits_at + DIGITS].copy_from_slice(checksum.as_bytes());
    sealed
}

/// Checks the seal of `bytes`: [`Seal::Matches`], [`Seal::Absent`] (no `crc32c` member), or
/// why it does not hold.
pub fn check(bytes: &[u8]) -> Result<Seal, String> {
    let Some(member_at) = find_last(bytes, MEMBER) else {
        return Ok(Seal::Absent);
    };
    let digits_at = member_at + MEMBER.len();
    let digits = bytes
        .get(digits_at..digits_at + DIGITS)
        .filter(|digits| {
            digits
                .iter()
                .all(|digit| matches!(digit, b'0'..=b'9' | b'a'..=b'f'))
        })
        .filter(|_| bytes.get(digits_at + DIGITS) == Some(&b'"'))
        .ok_or(
            "its crc32c checksum is not 8 lowercase hex digits: the file is damaged or was edited",
        )?;
    let stored = u32::from_str_radix(std::str::from_utf8(digits).expect("hex digits"), 16)
        .expect("8 hex digits fit a u32");
    // The CRC of the text with the digits as zeros, without copying it.
    let mut digest = Crc32c::new();
    digest.update(&bytes[..digits_at]);
    digest.update(&[b'0'; DIGITS]);
    digest.update(&bytes[digits_at + DIGITS..]);
    let computed = digest.finalize();
    if computed != stored {
        return Err(format!(
            "its crc32c checksum does not match its contents (stored {stored:08x}, computed \
             {computed:08x}): the file is damaged or was edited"
        ));
    }
    Ok(Seal::Matches)
}

/// Whether a file whose `format` field reads `found` and whose seal is `seal` is one this
/// version reads, when it writes format `sealed_format` (sealed) and still reads
/// `sealed_format - 1` (written before sealing, no seal).
pub fn check_format(found: u32, seal: Seal, sealed_format: u32) -> Result<(), String> {
    match seal {
        Seal::Matches if found == sealed_format => Ok(()),
        Seal::Absent if found.checked_add(1) == Some(sealed_format) => Ok(()),
        Seal::Absent if found == sealed_format => Err(format!(
            "format {found} files end with a crc32c checksum and this one has none: the file \
             is damaged or was edited"
        )),
        _ => Err(format!("unsupported format {found}")),
    }
}

fn trim_end(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .rposition(|byte| !byte.is_ascii_whitespace())
        .map_or(0, |last| last + 1);
    &bytes[..end]
}

fn find_last(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .rposition(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct File {
        format: u32,
        epoch: u64,
        name: String,
    }

    fn file() -> File {
        File {
            format: 2,
            epoch: 17,
            name: r#"a "crc32c": "00000000" inside a string"#.to_owned(),
        }
    }

    /// What a reader does: the seal, the JSON, the format.
    fn read(bytes: &[u8]) -> Result<File, String> {
        let seal = check(bytes)?;
        let file: File = serde_json::from_slice(bytes).map_err(|error| error.to_string())?;
        check_format(file.format, seal, 2)?;
        Ok(file)
    }

    #[test]
    fn a_sealed_file_reads_back_as_it_was_written_compact_or_pretty() {
        for json in [
            serde_json::to_vec(&file()).unwrap(),
            serde_json::to_vec_pretty(&file()).unwrap(),
        ] {
            let sealed = seal(&json);
            assert_eq!(check(&sealed), Ok(Seal::Matches));
            assert_eq!(read(&sealed), Ok(file()));
            assert!(
                sealed.ends_with(b"\"\n}\n"),
                "{}",
                String::from_utf8_lossy(&sealed)
            );
        }
        assert_eq!(check(&seal(b"{}")), Ok(Seal::Matches));
        let value: serde_json::Value = serde_json::from_slice(&seal(b"{}")).unwrap();
        assert!(value["crc32c"].is_string());
    }

    #[test]
    fn every_single_bit_flip_of_a_sealed_file_is_refused() {
        let sealed = seal(&serde_json::to_vec_pretty(&file()).unwrap());
        for bit in 0..sealed.len() * 8 {
            let mut damaged = sealed.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(
                read(&damaged).is_err(),
                "bit {bit} flipped was read: {}",
                String::from_utf8_lossy(&damaged)
            );
        }
    }

    #[test]
    fn a_file_from_before_sealing_reads_and_a_sealed_format_without_a_seal_does_not() {
        let old = File {
            format: 1,
            ..file()
        };
        assert_eq!(read(&serde_json::to_vec(&old).unwrap()), Ok(old));
        let unsealed = serde_json::to_vec(&file()).unwrap();
        assert!(read(&unsealed).unwrap_err().contains("has none"));
        assert!(check_format(3, Seal::Matches, 2)
            .unwrap_err()
            .contains("unsupported format 3"));
        assert!(check_format(1, Seal::Matches, 2).is_err());
        // An edited format at the top of the range is refused, not overflowed.
        assert!(check_format(u32::MAX, Seal::Absent, 2).is_err());
        assert!(check_format(u32::MAX, Seal::Matches, 2).is_err());
    }

    proptest::proptest! {
        /// Any bytes — garbage around a seal's member, or a file cut inside it — are checked
        /// without a panic.
        #[test]
        fn any_bytes_are_checked_without_a_panic(
            prefix in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            digits in "[0-9a-f]{0,9}",
            suffix in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..8),
        ) {
            let mut bytes = prefix;
            bytes.extend_from_slice(MEMBER);
            bytes.extend_from_slice(digits.as_bytes());
            bytes.extend_from_slice(&suffix);
            let _ = check(&bytes);
            let _ = check(&bytes[..bytes.len() / 2]);
        }
    }

    #[test]
    fn an_edited_value_is_refused_naming_both_checksums() {
        let sealed = seal(&serde_json::to_vec_pretty(&file()).unwrap());
        let edited = String::from_utf8(sealed)
            .unwrap()
            .replace("\"epoch\": 17", "\"epoch\": 18");
        let error = read(edited.as_bytes()).unwrap_err();
        assert!(
            error.contains("does not match") && error.contains("stored"),
            "{error}"
        );
    }
}
