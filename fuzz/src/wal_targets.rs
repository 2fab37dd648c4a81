//! Fuzz targets over kv-wal: the frame decoder, and recovery of a whole WAL directory image.
//!
//! This file is the single definition of both targets: the cargo-fuzz binaries call it, and
//! kv-wal's test `fuzz_corpus.rs` includes it (`#[path]`) to replay the committed corpus in CI.
//! It may therefore use only `kv_wal` and `std`.
//!
//! A *directory image* is the byte string [`recover_directory`] turns into an in-memory
//! [`SimFs`] directory: one ignored byte (room for future flags), then entries
//!
//! ```text
//! kind u8 | sequence u8 | first_id u16 LE | len u16 LE | len bytes of content
//! ```
//!
//! where `kind % 4` is 0 for a segment file named `{sequence:020}-{first_id:020}.wal`, 1 for a
//! compressed segment `{sequence:020}-{first_id:020}.walz`, 2 for `wal.meta` and 3 for
//! `truncate.pending`. [`encode_directory_image`] makes one from a
//! real log, for seeds.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kv_wal::fs::FileSystem;
use kv_wal::sim::SimFs;
use kv_wal::{frame, RecoveryMode, SegmentCodec, SyncPolicy, Wal, WalOptions};

/// Where images are laid out.
pub const IMAGE_DIR: &str = "/fuzz/wal";
/// Files an image may hold (the rest of the input is ignored).
pub const IMAGE_FILES_MAX: usize = 8;
/// Segment size the images are opened with.
pub const IMAGE_SEGMENT_BYTES_MAX: u64 = 4096;
/// Records a check iterates at most.
const ITERATED_RECORDS_MAX: usize = 100_000;

const ENTRY_HEADER_BYTES: usize = 6;
const META_FILE: &str = "wal.meta";
const TRUNCATE_MARKER_FILE: &str = "truncate.pending";
const RECOVERY_MODES: [RecoveryMode; 4] = [
    RecoveryMode::TolerateTornTail,
    RecoveryMode::PointInTime,
    RecoveryMode::Strict,
    RecoveryMode::SkipCorrupt,
];

/// Decodes `data` as one frame and as a run of frames; whatever is accepted must re-encode
/// to the same bytes and keep its promises (lengths in bounds, ids consecutive).
pub fn decode_frames(data: &[u8]) {
    if let Ok(decoded) = frame::decode(data) {
        let length = decoded.encoded_len();
        assert!(length <= data.len(), "a frame longer than its input");
        if decoded.is_record() {
            assert_eq!(
                frame::encode_record_stored(decoded.id, decoded.flags, decoded.payload),
                &data[..length],
                "an accepted frame re-encodes to other bytes"
            );
            // A flagged payload that does not decompress is an error, never a panic; one that
            // does gives back what compressing it again decompresses to.
            if let Ok(contents) = decoded.contents() {
                if decoded.flags & frame::FLAG_LZ4 == 0 {
                    assert_eq!(&contents[..], decoded.payload);
                }
            }
        }
    }
    match frame::decode_all(data) {
        Ok(frames) => {
            let total: usize = frames.iter().map(|decoded| decoded.encoded_len()).sum();
            assert_eq!(total, data.len(), "decode_all accepted trailing bytes");
            for pair in frames.windows(2) {
                assert_eq!(pair[1].id, pair[0].id + 1, "decode_all accepted an id gap");
            }
            assert!(frames.iter().all(|decoded| decoded.is_record()));
        }
        Err((offset, reason)) => {
            assert!(offset <= data.len(), "error offset past the input");
            assert!(!reason.is_empty());
        }
    }
}

/// Builds the directory image `data` describes (see the module docs).
pub fn directory_image(data: &[u8]) -> SimFs {
    let fs = SimFs::new();
    let dir = Path::new(IMAGE_DIR);
    fs.create_dir_all(dir).expect("simulated mkdir");
    let mut rest = data.get(1..).unwrap_or_default();
    for _ in 0..IMAGE_FILES_MAX {
        if rest.len() < ENTRY_HEADER_BYTES {
            break;
        }
        let (header, tail) = rest.split_at(ENTRY_HEADER_BYTES);
        let sequence = u64::from(header[1]);
        let first_id = u64::from(u16::from_le_bytes([header[2], header[3]]));
        let len = usize::from(u16::from_le_bytes([header[4], header[5]])).min(tail.len());
        let (contents, tail) = tail.split_at(len);
        rest = tail;
        let name = match header[0] % 4 {
            0 => format!("{sequence:020}-{first_id:020}.wal"),
            1 => format!("{sequence:020}-{first_id:020}.walz"),
            2 => META_FILE.to_owned(),
            _ => TRUNCATE_MARKER_FILE.to_owned(),
        };
        fs.write_file_durably(&dir.join(name), contents)
            .expect("simulated write");
    }
    fs
}

/// The image bytes of the files of the log in `dir` on `fs` (segments, meta, marker).
pub fn encode_directory_image(fs: &SimFs, dir: &Path) -> Vec<u8> {
    let mut image = vec![0u8];
    let mut names = fs.list_dir(dir).expect("list");
    names.sort();
    for name in names {
        let (kind, sequence, first_id) = if name == META_FILE {
            (2u8, 0u64, 0u64)
        } else if name == TRUNCATE_MARKER_FILE {
            (3, 0, 0)
        } else if let Some((kind, (sequence, first_id))) = name
            .strip_suffix(".wal")
            .map(|stem| (0u8, stem))
            .or_else(|| name.strip_suffix(".walz").map(|stem| (1u8, stem)))
            .and_then(|(kind, stem)| Some((kind, stem.split_once('-')?)))
            .and_then(|(kind, (sequence, first_id))| {
                Some((kind, (sequence.parse().ok()?, first_id.parse().ok()?)))
            })
        {
            (kind, sequence, first_id)
        } else {
            continue;
        };
        let contents = fs.read_file(&dir.join(&name)).expect("read");
        image.push(kind);
        image.push(u8::try_from(sequence).expect("a small log"));
        image.extend_from_slice(&u16::try_from(first_id).expect("a small log").to_le_bytes());
        image.extend_from_slice(
            &u16::try_from(contents.len())
                .expect("a small file")
                .to_le_bytes(),
        );
        image.extend_from_slice(&contents);
    }
    image
}

fn image_options(fs: &SimFs, recovery_mode: RecoveryMode) -> WalOptions {
    WalOptions {
        segment_bytes_max: IMAGE_SEGMENT_BYTES_MAX,
        sync_policy: SyncPolicy::Always,
        recovery_mode,
        compress_sealed_segments: Some(SegmentCodec::Lz4),
        file_system: Arc::new(fs.clone()),
        ..WalOptions::default()
    }
}

/// Opens the image `data` describes in every recovery mode (each on its own copy). Open may
/// refuse; it must not panic, and a log it opens must iterate in id order, read back the same
/// records after a pass compressing its sealed segments, take an append at its next id, and
/// reopen with that record as its last.
pub fn recover_directory(data: &[u8]) {
    let image = directory_image(data);
    for mode in RECOVERY_MODES {
        check_recovery(image.fork(), mode);
    }
}

fn check_recovery(fs: SimFs, mode: RecoveryMode) {
    let dir = PathBuf::from(IMAGE_DIR);
    let Ok((wal, report)) = Wal::open(&dir, image_options(&fs, mode)) else {
        return;
    };
    let next_id = wal.next_id();
    assert_eq!(report.next_id, next_id, "{mode}: {report}");
    let records = |wal: &Wal| -> Vec<(u64, Vec<u8>)> {
        wal.iter_from(1)
            .take(ITERATED_RECORDS_MAX)
            .map_while(|record| record.ok().map(|record| (record.id, record.into_payload())))
            .collect()
    };
    let before = records(&wal);
    // Compressing checks each sealed segment whole and skips one that does not check; what
    // it compresses must read back the same.
    if wal.compress_sealed().is_ok() {
        let after = records(&wal);
        assert_eq!(
            before.len(),
            after.len(),
            "{mode}: compressing changed what reads back ({report})"
        );
        assert!(
            before == after,
            "{mode}: compressing changed a record ({report})"
        );
    }
    let mut previous: Option<u64> = None;
    for record in wal.iter_from(1).take(ITERATED_RECORDS_MAX) {
        // Damage found while reading (a sealed segment is checked as it is read) is an error,
        // not a panic.
        let Ok(record) = record else { break };
        assert!(
            previous.is_none_or(|previous| record.id > previous),
            "{mode}: id {} after {previous:?} ({report})",
            record.id
        );
        assert!(
            record.id < next_id,
            "{mode}: id {} at or past the next id {next_id}",
            record.id
        );
        previous = Some(record.id);
    }
    let Ok(appended) = wal.append(b"fuzz") else {
        return;
    };
    assert_eq!(appended, next_id, "{mode}: the append's id ({report})");
    assert_eq!(
        wal.read(appended).ok().flatten().as_deref(),
        Some(&b"fuzz"[..]),
        "{mode}: the appended record reads back ({report})"
    );
    drop(wal);
    let reopened = Wal::open(&dir, image_options(&fs, mode));
    let (wal, second_report) = reopened.unwrap_or_else(|error| {
        panic!("{mode}: a log that opened ({report}) and took an append does not reopen: {error}")
    });
    assert_eq!(
        wal.last_id(),
        Some(appended),
        "{mode}: after reopening ({report} / {second_report})"
    );
}
