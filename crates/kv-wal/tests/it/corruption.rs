//! Damage of every kind, in every recovery mode: each case lands in its documented outcome
//! (see docs/wal-format.md, "Recovery"), never panics, never yields a record that was not
//! written, and never allocates from a bad length.

use kv_wal::sim::SimFs;
use kv_wal::{Error, RecoveryMode, RecoveryReport, Wal, FRAME_HEADER_BYTES, SEGMENT_HEADER_BYTES};

use crate::support::{
    as_appending_segment, collect, data_end, open_sim, payload, record_offsets, segment_files,
    torn_at,
};

const MODES: [RecoveryMode; 4] = [
    RecoveryMode::TolerateTornTail,
    RecoveryMode::PointInTime,
    RecoveryMode::Strict,
    RecoveryMode::SkipCorrupt,
];
const SEGMENT_BYTES: u64 = 600;
const RECORD_BYTES: usize = 40;
const RECORD_COUNT: u64 = 40;

/// The two plain segment formats a log holds: new segments are preallocated (format version
/// 5: zeros after the data are free space), segments written before preallocation append
/// (version 3: the file ends with its data). The matrix runs over both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Preallocated,
    Appending,
}

/// A log of `RECORD_COUNT` records over several segments, closed cleanly, as this version
/// writes it (a fresh copy of one image per call, so every case starts from the same bytes).
fn written_log() -> SimFs {
    written_log_in(Format::Preallocated)
}

/// [`written_log`] in `format`: for `Appending`, every segment is rewritten as a log written
/// before preallocation has it.
fn written_log_in(format: Format) -> SimFs {
    static PREALLOCATED: std::sync::OnceLock<SimFs> = std::sync::OnceLock::new();
    static APPENDING: std::sync::OnceLock<SimFs> = std::sync::OnceLock::new();
    match format {
        Format::Preallocated => PREALLOCATED.get_or_init(write_log).fork(),
        Format::Appending => APPENDING
            .get_or_init(|| {
                let fs = write_log();
                for path in segment_files(&fs) {
                    let bytes = fs.read_file(&path).unwrap();
                    fs.write_file_durably(&path, &as_appending_segment(&bytes))
                        .unwrap();
                }
                fs
            })
            .fork(),
    }
}

fn write_log() -> SimFs {
    let fs = SimFs::new();
    let (wal, _) = open_sim(&fs, SEGMENT_BYTES, RecoveryMode::TolerateTornTail).unwrap();
    for id in 1..=RECORD_COUNT {
        wal.append(&payload(id, RECORD_BYTES)).unwrap();
    }
    wal.close().unwrap();
    fs
}

/// Offset of record `index` (0-based) within a segment image.
fn record_offset(bytes: &[u8], index: usize) -> usize {
    record_offsets(bytes)[index]
}

/// Offset just past record `index` (0-based) within a segment image.
fn record_end(bytes: &[u8], index: usize) -> usize {
    record_offset(bytes, index) + FRAME_HEADER_BYTES + RECORD_BYTES
}

/// Changes the data of a segment file (its bytes up to the end of its last frame): what lies
/// past it is zeros again, as far as the file reached before (the free space of a
/// preallocated segment, which a torn or shortened write leaves zero).
fn mutate(fs: &SimFs, path: &std::path::Path, change: impl FnOnce(&mut Vec<u8>)) {
    let bytes = fs.read_file(path).unwrap();
    let mut data = bytes[..data_end(&bytes)].to_vec();
    change(&mut data);
    if data.len() < bytes.len() {
        data.resize(bytes.len(), 0);
    }
    fs.write_file_durably(path, &data).unwrap();
}

/// What a case must produce in one mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Opens clean: every record is there.
    Clean,
    /// Opens; a torn tail was cut; the records are exactly ids 1..=last.
    TornTail { last: u64 },
    /// Opens; everything from the damage on was dropped; records are ids 1..=last.
    Dropped { last: u64 },
    /// Opens; these ids are missing, the rest are there.
    Holes { missing: &'static [u64] },
    /// Refuses to open with `Error::Corrupt`.
    Refused,
    /// Opens (the damage is in a sealed segment that open trusts), reading the damaged record
    /// fails with `Error::Corrupt`.
    OpensFailsOnRead { damaged_id: u64 },
}

fn check(case: &str, mode: RecoveryMode, fs: &SimFs, expected: Outcome) {
    let opened = open_sim(fs, SEGMENT_BYTES, mode);
    let context = format!("case {case:?} in mode {mode}");
    match expected {
        Outcome::Refused => match opened {
            Err(Error::Corrupt {
                segment, reason, ..
            }) => {
                assert!(!reason.is_empty(), "{context}: empty reason");
                assert!(
                    segment.to_string_lossy().contains("/sim/wal"),
                    "{context}: {segment:?}"
                );
            }
            Err(other) => panic!("{context}: expected Corrupt, got {other}"),
            Ok((_, report)) => panic!("{context}: expected refusal, opened: {report}"),
        },
        _ => {
            let (wal, report) =
                opened.unwrap_or_else(|error| panic!("{context}: open failed: {error}"));
            check_opened(&context, &wal, &report, expected);
            // The log takes appends after recovery, with an id above everything seen.
            let next = wal.next_id();
            let id = wal
                .append(b"after recovery")
                .unwrap_or_else(|error| panic!("{context}: append: {error}"));
            assert_eq!(id, next, "{context}");
            assert!(id > report.last_id.unwrap_or(0), "{context}");
        }
    }
}

fn check_opened(context: &str, wal: &Wal, report: &RecoveryReport, expected: Outcome) {
    let expect_ids = |ids: Vec<u64>| {
        let records = collect(wal, 1);
        let got: Vec<u64> = records.iter().map(|(id, _)| *id).collect();
        assert_eq!(got, ids, "{context}: {report}");
        for (id, bytes) in records {
            assert_eq!(
                bytes,
                payload(id, RECORD_BYTES),
                "{context}: record {id} differs"
            );
        }
    };
    match expected {
        Outcome::Clean => {
            assert!(report.is_clean(), "{context}: {report}");
            expect_ids((1..=RECORD_COUNT).collect());
        }
        Outcome::TornTail { last } => {
            assert!(
                report.torn_tail.is_some(),
                "{context}: no torn tail in {report}"
            );
            assert!(
                report.holes.is_empty() && report.dropped.is_none(),
                "{context}: {report}"
            );
            expect_ids((1..=last).collect());
        }
        Outcome::Dropped { last } => {
            assert!(
                report.dropped.is_some(),
                "{context}: nothing dropped in {report}"
            );
            expect_ids((1..=last).collect());
            assert!(
                wal.next_id() > RECORD_COUNT,
                "{context}: ids of dropped records would be reused: next id {}",
                wal.next_id()
            );
        }
        Outcome::Holes { missing } => {
            assert!(!report.holes.is_empty(), "{context}: no holes in {report}");
            let reported: Vec<u64> = report
                .holes
                .iter()
                .flat_map(|hole| hole.first_missing_id..=hole.last_missing_id)
                .collect();
            assert_eq!(reported, missing, "{context}: {report}");
            expect_ids(
                (1..=RECORD_COUNT)
                    .filter(|id| !missing.contains(id))
                    .collect(),
            );
        }
        Outcome::OpensFailsOnRead { damaged_id } => {
            assert!(report.is_clean(), "{context}: {report}");
            assert!(
                matches!(wal.read(damaged_id), Err(Error::Corrupt { .. })),
                "{context}"
            );
            let failed = wal.iter_from(1).find_map(|record| record.err());
            assert!(
                matches!(failed, Some(Error::Corrupt { .. })),
                "{context}: iteration did not fail"
            );
        }
        Outcome::Refused => unreachable!(),
    }
}

/// One case: a damage applied to a fresh log, and the outcome per mode (TTT, PIT, Strict, Skip).
struct Case {
    name: &'static str,
    damage: fn(&SimFs),
    outcomes: [Outcome; 4],
    /// Where a preallocated segment's outcomes differ from `outcomes`.
    preallocated: Option<[Outcome; 4]>,
}

impl Case {
    fn outcomes(&self, format: Format) -> [Outcome; 4] {
        match (format, self.preallocated) {
            (Format::Preallocated, Some(outcomes)) => outcomes,
            _ => self.outcomes,
        }
    }
}

fn last_segment(fs: &SimFs) -> std::path::PathBuf {
    segment_files(fs).pop().unwrap()
}

fn middle_segment(fs: &SimFs) -> std::path::PathBuf {
    let files = segment_files(fs);
    files[files.len() / 2].clone()
}

/// First id stored in a segment file (from its name).
fn first_id_of(path: &std::path::Path) -> u64 {
    let name = path.file_name().unwrap().to_str().unwrap();
    name[21..41].parse().unwrap()
}

fn cases() -> Vec<Case> {
    use Outcome::*;
    vec![
        Case {
            name: "untouched log (control)",
            damage: |_| {},
            outcomes: [Clean, Clean, Clean, Clean],
            preallocated: None,
        },
        Case {
            // In a preallocated segment zeros after the data are its free space, in every mode:
            // a preallocated tail is not a torn write.
            name: "zeroed tail",
            damage: |fs| mutate(fs, &last_segment(fs), |bytes| bytes.extend([0u8; 300])),
            outcomes: [
                TornTail { last: RECORD_COUNT },
                TornTail { last: RECORD_COUNT },
                Refused,
                TornTail { last: RECORD_COUNT },
            ],
            preallocated: Some([Clean, Clean, Clean, Clean]),
        },
        Case {
            name: "garbage appended",
            damage: |fs| {
                mutate(fs, &last_segment(fs), |bytes| {
                    bytes.extend((0..300).map(|i| (i * 7 + 3) as u8))
                })
            },
            outcomes: [
                TornTail { last: RECORD_COUNT },
                TornTail { last: RECORD_COUNT },
                Refused,
                TornTail { last: RECORD_COUNT },
            ],
            preallocated: None,
        },
        Case {
            name: "last record half written",
            damage: |fs| {
                mutate(fs, &last_segment(fs), |bytes| {
                    bytes.truncate(bytes.len() - 10)
                })
            },
            outcomes: [
                TornTail {
                    last: RECORD_COUNT - 1,
                },
                TornTail {
                    last: RECORD_COUNT - 1,
                },
                Refused,
                TornTail {
                    last: RECORD_COUNT - 1,
                },
            ],
            preallocated: None,
        },
        Case {
            name: "length 0 in a middle record of the last segment",
            damage: |fs| {
                mutate(fs, &last_segment(fs), |bytes| {
                    let at = record_offset(bytes, 0);
                    bytes[at + 8..at + 12].fill(0)
                })
            },
            outcomes: [
                Refused,
                Dropped { last: 0 },
                Refused,
                Holes { missing: &[] },
            ],
            preallocated: None,
        },
        Case {
            name: "length u32::MAX",
            damage: |fs| {
                mutate(fs, &last_segment(fs), |bytes| {
                    let at = record_offset(bytes, 0);
                    bytes[at + 8..at + 12].copy_from_slice(&u32::MAX.to_le_bytes())
                })
            },
            outcomes: [
                Refused,
                Dropped { last: 0 },
                Refused,
                Holes { missing: &[] },
            ],
            preallocated: None,
        },
        Case {
            name: "length past end of file on the last record",
            damage: |fs| {
                let path = last_segment(fs);
                mutate(fs, &path, |bytes| {
                    let last = *record_offsets(bytes).last().unwrap();
                    bytes[last + 8..last + 12].copy_from_slice(&1_000_000u32.to_le_bytes());
                })
            },
            outcomes: [
                TornTail {
                    last: RECORD_COUNT - 1,
                },
                TornTail {
                    last: RECORD_COUNT - 1,
                },
                Refused,
                TornTail {
                    last: RECORD_COUNT - 1,
                },
            ],
            preallocated: None,
        },
        Case {
            name: "duplicated record",
            damage: |fs| {
                mutate(fs, &last_segment(fs), |bytes| {
                    let (start, end) = (record_offset(bytes, 0), record_end(bytes, 0));
                    let record = bytes[start..end].to_vec();
                    bytes.splice(end..end, record);
                })
            },
            outcomes: [
                Refused,
                Dropped { last: 0 },
                Refused,
                Holes { missing: &[] },
            ],
            preallocated: None,
        },
        Case {
            name: "swapped records",
            damage: |fs| {
                mutate(fs, &last_segment(fs), |bytes| {
                    let (first_at, second_at) = (record_offset(bytes, 0), record_offset(bytes, 1));
                    let (first_end, second_end) = (record_end(bytes, 0), record_end(bytes, 1));
                    let first = bytes[first_at..first_end].to_vec();
                    let second = bytes[second_at..second_end].to_vec();
                    bytes[first_at..first_end].copy_from_slice(&second);
                    bytes[second_at..second_end].copy_from_slice(&first);
                })
            },
            outcomes: [
                Refused,
                Dropped { last: 0 },
                Refused,
                Holes { missing: &[] },
            ],
            preallocated: None,
        },
        Case {
            name: "bit flip in a sealed segment",
            damage: |fs| {
                mutate(fs, &middle_segment(fs), |bytes| {
                    let at = record_offset(bytes, 1);
                    bytes[at + FRAME_HEADER_BYTES + 3] ^= 0x10
                })
            },
            outcomes: [
                OpensFailsOnRead { damaged_id: 0 },
                Dropped { last: 0 },
                Refused,
                Holes { missing: &[] },
            ],
            preallocated: None,
        },
        Case {
            name: "missing middle segment",
            damage: |fs| {
                use kv_wal::fs::FileSystem;
                fs.remove_file(&middle_segment(fs)).unwrap();
                fs.sync_dir(&crate::support::sim_dir()).unwrap();
            },
            outcomes: [
                Refused,
                Dropped { last: 0 },
                Refused,
                Holes { missing: &[] },
            ],
            preallocated: None,
        },
        Case {
            name: "stale segment from another log",
            damage: |fs| {
                let other = write_log();
                let path = middle_segment(fs);
                let foreign = other.read_file(&path).unwrap();
                fs.write_file_durably(&path, &foreign).unwrap();
            },
            outcomes: [
                Refused,
                Dropped { last: 0 },
                Refused,
                Holes { missing: &[] },
            ],
            preallocated: None,
        },
    ]
}

/// Resolves the placeholders (`last: 0`, `missing: &[]`, `damaged_id: 0`) that depend on where
/// the case's damage landed.
fn resolve(case: &Case, outcome: Outcome, fs_before: &SimFs) -> Outcome {
    let last_first = first_id_of(&last_segment(fs_before));
    let middle_first = first_id_of(&middle_segment(fs_before));
    let pristine = written_log();
    let middle = pristine.read_file(&middle_segment(&pristine)).unwrap();
    let per_segment = record_offsets(&middle).len() as u64;
    match (case.name, outcome) {
        (_, Outcome::Dropped { last: 0 }) if case.name.contains("sealed") => {
            Outcome::Dropped { last: middle_first }
        }
        (_, Outcome::Dropped { last: 0 })
            if case.name.contains("middle segment") || case.name.contains("stale") =>
        {
            Outcome::Dropped {
                last: middle_first - 1,
            }
        }
        (_, Outcome::Dropped { last: 0 })
            if case.name.contains("duplicated") || case.name.contains("swapped") =>
        {
            Outcome::Dropped {
                last: last_first + if case.name.contains("swapped") { 0 } else { 1 } - 1,
            }
        }
        (_, Outcome::Dropped { last: 0 }) => Outcome::Dropped {
            last: last_first - 1,
        },
        (_, Outcome::OpensFailsOnRead { damaged_id: 0 }) => Outcome::OpensFailsOnRead {
            damaged_id: middle_first + 1,
        },
        ("bit flip in a sealed segment", Outcome::Holes { .. }) => Outcome::Holes {
            missing: leak(vec![middle_first + 1]),
        },
        ("missing middle segment" | "stale segment from another log", Outcome::Holes { .. }) => {
            Outcome::Holes {
                missing: leak((middle_first..middle_first + per_segment).collect()),
            }
        }
        ("swapped records", Outcome::Holes { .. }) => Outcome::Holes {
            missing: leak(vec![last_first]),
        },
        (name, Outcome::Holes { .. }) if name.starts_with("length") => Outcome::Holes {
            missing: leak(vec![last_first]),
        },
        ("duplicated record", Outcome::Holes { .. }) => Outcome::Holes {
            missing: leak(vec![]),
        },
        (_, outcome) => outcome,
    }
}

fn leak(ids: Vec<u64>) -> &'static [u64] {
    Box::leak(ids.into_boxed_slice())
}

#[test]
fn corruption_matrix() {
    for format in [Format::Preallocated, Format::Appending] {
        for case in cases() {
            for (mode, outcome) in MODES.into_iter().zip(case.outcomes(format)) {
                let fs = written_log_in(format);
                let outcome = resolve(&case, outcome, &fs);
                (case.damage)(&fs);
                let name = format!("{} ({format:?})", case.name);
                check(&name, mode, &fs, outcome);
            }
        }
    }
}

#[test]
fn cutting_the_last_segment_at_every_offset_yields_a_prefix() {
    for format in [Format::Preallocated, Format::Appending] {
        cut_at_every_offset(format);
    }
}

fn cut_at_every_offset(format: Format) {
    let pristine = written_log_in(format);
    let path = last_segment(&pristine);
    let length = pristine.read_file(&path).unwrap().len();
    let last_first = first_id_of(&path);
    for cut in 0..=length {
        let fs = written_log_in(format);
        let bytes = fs.read_file(&path).unwrap();
        fs.write_file_durably(&path, &bytes[..cut]).unwrap();
        if cut < SEGMENT_HEADER_BYTES {
            // A segment `wal.meta` records as created had its header on disk before it was
            // named: a cut into the header is damage, not a crash while it was created (it
            // was removed as one before, and its records were gone without an error).
            match open_sim(&fs, SEGMENT_BYTES, RecoveryMode::TolerateTornTail) {
                Err(Error::Corrupt { segment, .. }) => assert_eq!(segment, path, "cut at {cut}"),
                other => panic!("cut at {cut}: {:?}", other.map(|(_, report)| report)),
            }
            continue;
        }
        let (wal, report) = open_sim(&fs, SEGMENT_BYTES, RecoveryMode::TolerateTornTail)
            .unwrap_or_else(|error| panic!("cut at {cut}: {error}"));
        let records = collect(&wal, 1);
        let last = records.last().map_or(0, |(id, _)| *id);
        assert!(
            last >= last_first - 1,
            "cut at {cut} lost sealed data: {report}"
        );
        for (index, (id, bytes)) in records.iter().enumerate() {
            assert_eq!(*id, index as u64 + 1, "cut at {cut}: ids must be a prefix");
            assert_eq!(
                *bytes,
                payload(*id, RECORD_BYTES),
                "cut at {cut}: phantom record {id}"
            );
        }
        let whole = record_offsets(&bytes)
            .iter()
            .filter(|&&at| at + FRAME_HEADER_BYTES + RECORD_BYTES <= cut)
            .count();
        if cut >= SEGMENT_HEADER_BYTES {
            assert_eq!(
                last,
                last_first - 1 + whole as u64,
                "cut at {cut}: {report}"
            );
        }
        let id = wal.append(b"next").unwrap();
        assert_eq!(id, last + 1, "cut at {cut}");
    }
}

#[test]
fn every_bit_flip_in_the_last_segment_is_caught() {
    let pristine = written_log();
    let path = last_segment(&pristine);
    let length = pristine.read_file(&path).unwrap().len();
    for bit in (SEGMENT_HEADER_BYTES * 8)..(length * 8) {
        let fs = written_log();
        let mut damaged = fs.read_file(&path).unwrap();
        damaged[bit / 8] ^= 1 << (bit % 8);
        fs.write_file_durably(&path, &damaged).unwrap();
        // Whatever the mode decides, no record may come back different from what was written.
        for mode in MODES {
            // Recovery may repair the files: each mode gets its own copy.
            if let Ok((wal, _)) = open_sim(&fs.fork(), SEGMENT_BYTES, mode) {
                for record in wal.iter_from(1).map_while(Result::ok) {
                    assert_eq!(
                        record.payload(),
                        payload(record.id, RECORD_BYTES),
                        "bit {bit} in {mode}"
                    );
                }
            }
        }
        let strict = open_sim(&fs, SEGMENT_BYTES, RecoveryMode::Strict);
        assert!(
            strict.is_err(),
            "bit {bit}: strict mode accepted a flipped bit"
        );
    }
}

/// A crash while a new segment was created leaves a last segment whose header never (or
/// only partly) reached the disk and that holds nothing: open removes it.
fn check_a_torn_creation_is_removed(leave: impl FnOnce(&dyn kv_wal::fs::WalFile)) {
    use kv_wal::fs::FileSystem;
    let fs = written_log();
    let last = segment_files(&fs).pop().unwrap();
    let name = last.file_name().unwrap().to_str().unwrap();
    let sequence: u64 = name[..20].parse().unwrap();
    let torn = crate::support::sim_dir().join(format!(
        "{:020}-{:020}.wal",
        sequence + 1,
        RECORD_COUNT + 1
    ));
    let file = fs.create_new(&torn).unwrap();
    leave(&*file);
    file.sync_data().unwrap();
    fs.sync_dir(&crate::support::sim_dir()).unwrap();
    let (wal, report) = open_sim(&fs, SEGMENT_BYTES, RecoveryMode::TolerateTornTail).unwrap();
    assert_eq!(report.removed_files, vec![torn], "{report}");
    assert_eq!(wal.last_id(), Some(RECORD_COUNT));
    assert_eq!(wal.append(b"x").unwrap(), RECORD_COUNT + 1);
}

/// A preallocated segment whose creation a crash cut short: the file has its length, but its
/// header never reached the disk (zeros).
#[test]
fn a_torn_creation_of_a_preallocated_segment_is_removed() {
    check_a_torn_creation_is_removed(|file| file.allocate(SEGMENT_BYTES).unwrap());
}

/// A segment of at most a header's length whose header is torn.
#[test]
fn a_torn_segment_creation_is_removed() {
    check_a_torn_creation_is_removed(|file| file.write_all_at(&[0u8; 20], 0).unwrap());
}

/// Issue 11 finding 3: a value holding well-formed frames (a wire-form record with the next id,
/// one far ahead), then a torn write of that value. No mode serves the embedded records; the
/// default mode opens (a torn tail); point-in-time does not move the next id from them.
#[test]
fn a_torn_value_holding_frames_never_yields_its_embedded_records() {
    for mode in MODES {
        let fs = SimFs::new();
        let (wal, _) = open_sim(&fs, 1 << 20, RecoveryMode::TolerateTornTail).unwrap();
        for id in 1..=5 {
            wal.append(&payload(id, 100)).unwrap();
        }
        let mut value = b"a value with frames inside: ".to_vec();
        value.extend(kv_wal::frame::encode_record(6, b"forged next"));
        value.extend(kv_wal::frame::encode_record(1_000_000, b"forged far"));
        value.extend(vec![b'.'; 4096]);
        assert_eq!(wal.append(&value).unwrap(), 6);
        drop(wal);
        // The torn write: the value's frame ends after the embedded frames, before its own end.
        let segment = segment_files(&fs).pop().expect("a segment");
        let mut bytes = fs.read_file(&segment).unwrap();
        let end = data_end(&bytes);
        torn_at(&mut bytes, end - 2048);
        fs.write_file_durably(&segment, &bytes).unwrap();

        let opened = open_sim(&fs, 1 << 20, mode);
        if mode == RecoveryMode::Strict {
            assert!(opened.is_err(), "{mode}: a torn tail is damage to strict");
            continue;
        }
        let (wal, report) = opened.unwrap_or_else(|error| panic!("{mode}: {error}"));
        let records = collect(&wal, 1);
        assert!(
            records
                .iter()
                .all(|(_, bytes)| !bytes.starts_with(b"forged")),
            "{mode}: served a record nobody wrote: {report}"
        );
        assert_eq!(
            records.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            (1..=5).collect::<Vec<u64>>(),
            "{mode}: {report}"
        );
        assert!(report.torn_tail.is_some(), "{mode}: {report}");
        assert_eq!(wal.next_id(), 6, "{mode}: the next id moved: {report}");
    }
}

/// The same with frames sealed with the segment's own salt, as if its author knew it: the
/// scan never resumes inside the declared extent of a record whose CRC fails, so a record
/// torn by a bad sector (its length intact) still hides nothing. A frame sealed with the salt
/// inside a bad extent is what a damaged length leaves (see
/// `a_flipped_length_in_synced_data_is_refused_not_cut`), so the default mode refuses; the
/// repairing modes never serve it, and never hand its id out again.
#[test]
fn a_damaged_record_is_never_resumed_inside_even_with_the_salt() {
    for mode in [
        RecoveryMode::TolerateTornTail,
        RecoveryMode::SkipCorrupt,
        RecoveryMode::PointInTime,
    ] {
        let fs = SimFs::new();
        let (wal, _) = open_sim(&fs, 1 << 20, RecoveryMode::TolerateTornTail).unwrap();
        wal.append(&payload(1, 100)).unwrap();
        let segment = segment_files(&fs).pop().expect("a segment");
        let header = fs.read_file(&segment).unwrap();
        let salt = u32::from_le_bytes(header[40..44].try_into().unwrap());
        assert_ne!(salt, 0, "a new segment has a salt");
        let mut forged = kv_wal::frame::encode_record(3, b"forged with the salt");
        let crc = u32::from_le_bytes(forged[..4].try_into().unwrap()) ^ salt;
        forged[..4].copy_from_slice(&crc.to_le_bytes());
        let mut value = b"prefix ".to_vec();
        value.extend(&forged);
        value.extend(vec![b'.'; 1024]);
        assert_eq!(wal.append(&value).unwrap(), 2);
        drop(wal);
        // A bad sector at the end of the value: its length is intact, its CRC fails.
        let mut bytes = fs.read_file(&segment).unwrap();
        let end = data_end(&bytes);
        bytes[end - 512..end].fill(0);
        fs.write_file_durably(&segment, &bytes).unwrap();

        let opened = open_sim(&fs, 1 << 20, mode);
        if mode == RecoveryMode::TolerateTornTail {
            assert!(opened.is_err(), "{mode}: a salted frame in a bad extent");
            continue;
        }
        let (wal, report) = opened.unwrap_or_else(|error| panic!("{mode}: {error}"));
        let ids: Vec<u64> = collect(&wal, 1).iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, vec![1], "{mode}: {report}");
        assert_eq!(
            wal.next_id(),
            4,
            "{mode}: past the id seen inside: {report}"
        );
    }
}

/// A bit flip in the length field of a synced record in the middle of the last segment makes
/// its declared extent run past the end of the file. That is damage to acknowledged data with
/// acknowledged records after it, not a torn tail: the default mode refuses (it cut the log
/// there, silently dropping every acknowledged record after the flip), and no mode serves a
/// record from inside the bad extent.
#[test]
fn a_flipped_length_in_synced_data_is_refused_not_cut() {
    let fs = SimFs::new();
    let (wal, _) = open_sim(&fs, 1 << 20, RecoveryMode::TolerateTornTail).unwrap();
    for id in 1..=20 {
        wal.append(&payload(id, 100)).unwrap();
    }
    drop(wal);
    let segment = segment_files(&fs).pop().expect("a segment");
    let mut bytes = fs.read_file(&segment).unwrap();
    let fifth = record_offset(&bytes, 4);
    // The length (bytes 8..12 of the frame header) damaged so that the frame's declared
    // extent ends inside the last record: its CRC fails, and no whole frame follows it.
    let damaged_len = (data_end(&bytes) - 10 - fifth - FRAME_HEADER_BYTES) as u32;
    bytes[fifth + 8..fifth + 12].copy_from_slice(&damaged_len.to_le_bytes());
    fs.write_file_durably(&segment, &bytes).unwrap();

    let refused = open_sim(&fs.fork(), 1 << 20, RecoveryMode::TolerateTornTail);
    assert!(
        refused.is_err(),
        "the default mode cut acknowledged records after a flipped length: {:?}",
        refused.map(|(_, report)| report.to_string())
    );
    for mode in [RecoveryMode::PointInTime, RecoveryMode::SkipCorrupt] {
        let (wal, report) =
            open_sim(&fs.fork(), 1 << 20, mode).unwrap_or_else(|error| panic!("{mode}: {error}"));
        for (id, record) in collect(&wal, 1) {
            assert_eq!(record, payload(id, 100), "{mode}: {report}");
        }
    }
}

/// `WalOptions::refuse_whole_damaged_tail`: a bit flipped in the last record — the whole
/// frame there, its CRC failing, no zeroed sector in it — is refused, naming the segment,
/// with nothing changed on disk; by default it is cut as a torn tail (the record dropped, as
/// the table says). What an unfinished write leaves is still cut with the option on: the
/// record's last sector-aligned stretch zeroed (a sector the disk never got), or the record
/// cut short at the end of the data.
#[test]
fn a_whole_last_record_that_does_not_check_is_refused_when_asked() {
    let strict_tail = |fs: &SimFs| {
        Wal::open(
            crate::support::sim_dir(),
            kv_wal::WalOptions {
                refuse_whole_damaged_tail: true,
                ..crate::support::sim_options(fs, 1 << 20)
            },
        )
    };
    // Records until the last one crosses a sector boundary (so a write of it can be torn).
    let fs = SimFs::new();
    let (wal, _) = open_sim(&fs, 1 << 20, RecoveryMode::TolerateTornTail).unwrap();
    let segment = segment_files(&fs).pop().expect("a segment");
    let mut count = 0;
    let (bytes, last, last_end) = loop {
        count += 1;
        wal.append(&payload(count, 100)).unwrap();
        let bytes = fs.read_file(&segment).unwrap();
        let last = record_offset(&bytes, count as usize - 1);
        let last_end = last + FRAME_HEADER_BYTES + 100;
        if count >= 5 && last / 512 != (last_end - 1) / 512 {
            break (bytes, last, last_end);
        }
    };
    drop(wal);

    let flipped = fs.fork();
    let mut damaged = bytes.clone();
    damaged[last + FRAME_HEADER_BYTES + 50] ^= 0x10;
    flipped.write_file_durably(&segment, &damaged).unwrap();
    let refused = strict_tail(&flipped.fork());
    assert!(
        matches!(&refused, Err(Error::Corrupt { segment: path, offset, reason })
            if *path == segment && *offset == last as u64 && reason.contains("bit flip")),
        "{:?}",
        refused.map(|(_, report)| report.to_string())
    );
    let refused_copy = flipped.fork();
    let _ = strict_tail(&refused_copy);
    assert_eq!(
        refused_copy.read_file(&segment).unwrap(),
        damaged,
        "changed while refusing"
    );
    // The default cuts it: record 20 gone.
    let (wal, report) = open_sim(&flipped, 1 << 20, RecoveryMode::TolerateTornTail).unwrap();
    assert!(report.torn_tail.is_some());
    assert_eq!(wal.last_id(), Some(count - 1));

    // Unfinished writes are still cut with the option: the sector after the boundary the
    // record crosses never written (zeros), or the file cut inside the record.
    let mut zeroed = bytes.clone();
    zeroed[(last_end - 1) / 512 * 512..last_end].fill(0);
    for (case, damaged) in [
        ("zeroed last sector", zeroed),
        ("file cut inside it", bytes[..last_end - 30].to_vec()),
    ] {
        let torn = fs.fork();
        torn.write_file_durably(&segment, &damaged).unwrap();
        let (wal, report) = strict_tail(&torn).unwrap_or_else(|error| panic!("{case}: {error}"));
        assert!(report.torn_tail.is_some(), "{case}: {report}");
        assert_eq!(wal.last_id(), Some(count - 1), "{case}");
        for (id, record) in collect(&wal, 1) {
            assert_eq!(record, payload(id, 100), "{case}");
        }
    }

    // Every bit of the last record's header, flipped, is refused as a flip too — its kind,
    // flags, length and id as well as its CRC. Before, a flipped kind or flag byte, or a length
    // pointing into the preallocated zeros after the data or past the file, read as a frame
    // cut short and was cut, the record with it.
    for bit in 0..FRAME_HEADER_BYTES * 8 {
        let mut damaged = bytes.clone();
        damaged[last + bit / 8] ^= 1 << (bit % 8);
        let flipped = fs.fork();
        flipped.write_file_durably(&segment, &damaged).unwrap();
        let refused = strict_tail(&flipped);
        assert!(
            matches!(&refused, Err(Error::Corrupt { offset, reason, .. })
                if *offset == last as u64 && reason.contains("bit flip")),
            "header bit {bit}: {:?}",
            refused.map(|(_, report)| report.to_string())
        );
        assert_eq!(
            flipped.read_file(&segment).unwrap(),
            damaged,
            "bit {bit}: changed"
        );
    }
}

/// The newest segment deleted, emptied or zeroed — a file lost, not a crash: `wal.meta`
/// records the newest segment whose creation completed, so the default and strict modes refuse,
/// naming the loss, and the modes that may lose records go on saying what they lost. Before,
/// the default mode took a deleted newest segment for a log that ended earlier, and an
/// emptied or zeroed one for a crash while it was created (and removed it): its records,
/// maybe acknowledged, were gone without an error. A segment not yet recorded (a crash
/// during a roll) is still a torn creation (`power_loss` and the torn-creation cases).
#[test]
fn a_lost_newest_segment_is_refused_not_taken_for_a_crash() {
    use kv_wal::fs::FileSystem;
    type Damage = fn(&SimFs, &std::path::Path);
    let damages: [(&str, Damage, &str); 3] = [
        (
            "deleted",
            |fs, path| {
                fs.remove_file(path).unwrap();
                fs.sync_dir(&crate::support::sim_dir()).unwrap();
            },
            "are missing: wal.meta records that segment",
        ),
        (
            "emptied",
            |fs, path| fs.write_file_durably(path, &[]).unwrap(),
            "shorter than a segment header",
        ),
        (
            "zeroed",
            |fs, path| {
                let len = fs.read_file(path).unwrap().len();
                fs.write_file_durably(path, &vec![0; len]).unwrap();
            },
            "",
        ),
    ];
    for (name, damage, reason_part) in damages {
        let fs = written_log();
        let newest = last_segment(&fs);
        assert!(
            first_id_of(&newest) <= RECORD_COUNT,
            "the newest holds records"
        );
        damage(&fs, &newest);
        for mode in [RecoveryMode::TolerateTornTail, RecoveryMode::Strict] {
            match open_sim(&fs.fork(), SEGMENT_BYTES, mode) {
                Err(Error::Corrupt { reason, .. }) => {
                    assert!(reason.contains(reason_part), "{name}, {mode}: {reason}")
                }
                other => panic!(
                    "{name}, {mode}: {:?}",
                    other.map(|(wal, report)| (wal.last_id(), report))
                ),
            }
        }
        for mode in [RecoveryMode::PointInTime, RecoveryMode::SkipCorrupt] {
            let (wal, report) = open_sim(&fs.fork(), SEGMENT_BYTES, mode)
                .unwrap_or_else(|error| panic!("{name}, {mode}: {error}"));
            assert!(
                !report.is_clean(),
                "{name}, {mode}: the loss unreported: {report}"
            );
            assert!(wal.last_id() < Some(RECORD_COUNT), "{name}, {mode}");
        }
    }
}

/// A log whose `wal.meta` is in the first format (the identity alone, no newest segment) opens
/// as before, and is recorded from then on: a newest segment deleted after that is refused.
#[test]
fn a_log_of_the_first_meta_format_is_recorded_from_its_next_open() {
    use kv_wal::fs::FileSystem;
    let fs = written_log();
    let meta_path = crate::support::sim_dir().join("wal.meta");
    let meta = fs.read_file(&meta_path).unwrap();
    assert_eq!(meta.len(), 32, "this version writes the second format");
    // The first format: magic, version 1, log id, CRC-32C of what precedes it.
    let mut first = meta[..8].to_vec();
    first.extend_from_slice(&1u32.to_le_bytes());
    first.extend_from_slice(&meta[12..20]);
    let crc = kv_wal::frame::crc32c(&first);
    first.extend_from_slice(&crc.to_le_bytes());
    fs.write_file_durably(&meta_path, &first).unwrap();
    // Without a record, a deleted newest segment cannot be told from a shorter log.
    let unrecorded = fs.fork();
    unrecorded.remove_file(&last_segment(&unrecorded)).unwrap();
    let (wal, report) =
        open_sim(&unrecorded, SEGMENT_BYTES, RecoveryMode::TolerateTornTail).unwrap();
    assert!(wal.last_id() < Some(RECORD_COUNT), "{report}");
    // Opened once, it is recorded.
    let (wal, _) = open_sim(&fs, SEGMENT_BYTES, RecoveryMode::TolerateTornTail).unwrap();
    assert_eq!(wal.last_id(), Some(RECORD_COUNT));
    wal.close().unwrap();
    drop(wal);
    assert_eq!(fs.read_file(&meta_path).unwrap().len(), 32);
    fs.remove_file(&last_segment(&fs)).unwrap();
    match open_sim(&fs, SEGMENT_BYTES, RecoveryMode::TolerateTornTail) {
        Err(Error::Corrupt { reason, .. }) => assert!(reason.contains("missing"), "{reason}"),
        other => panic!("{:?}", other.map(|(wal, report)| (wal.last_id(), report))),
    }
}

/// A sealed segment before the last whose end was zeroed — its seal and the records before
/// it, which in a preallocated segment read as free space — is damage: the ids between its new
/// end and the next segment's first id are missing. Before, every mode, `Strict` included,
/// opened the log clean without them, its iterator jumping over the gap (found by a new user
/// embedding kv-wal). An end cut off at a frame boundary (the file shortened) is not told from
/// what a repair at open leaves (`docs/wal-format.md`).
#[test]
fn a_sealed_segment_that_lost_its_end_is_damage_not_a_clean_end() {
    for format in [Format::Preallocated, Format::Appending] {
        let pristine = written_log_in(format);
        let middle = middle_segment(&pristine);
        let first = first_id_of(&middle);
        let bytes = pristine.read_file(&middle).unwrap();
        let offsets = record_offsets(&bytes);
        let kept = 2;
        let lost: Vec<u64> = (first + kept as u64..first + offsets.len() as u64).collect();
        let outcomes = [
            Outcome::Refused,
            Outcome::Dropped {
                last: first + kept as u64 - 1,
            },
            Outcome::Refused,
            Outcome::Holes {
                missing: leak(lost.clone()),
            },
        ];
        for (mode, outcome) in MODES.into_iter().zip(outcomes) {
            let fs = written_log_in(format);
            let mut damaged = bytes.clone();
            damaged[offsets[kept]..].fill(0);
            fs.write_file_durably(&middle, &damaged).unwrap();
            let case = format!("{format:?}, ids {lost:?} zeroed");
            check(&case, mode, &fs, outcome);
            if mode == RecoveryMode::TolerateTornTail {
                let Err(Error::Corrupt { reason, .. }) =
                    open_sim(&fs, SEGMENT_BYTES, mode).map(|_| ())
                else {
                    unreachable!("checked above")
                };
                // (Zeros in an appending segment were refused before, as zeros where a frame
                // should start.)
                assert!(
                    reason.contains("without its seal") || format == Format::Appending,
                    "{case}: {reason}"
                );
            }
        }
    }
}
