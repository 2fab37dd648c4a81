//! Damage the log opens past because the caller does not need the records it lies among
//! (`WalOptions::needed_from`, kvd's newest snapshot + 1), and damage found in a sealed segment
//! after open: the records from where whole ones resume are read, a reader of an earlier id
//! stops at the damage, nothing is ever served changed (docs/wal-format.md, "Damage below the
//! ids the caller needs").

use kv_wal::sim::SimFs;
use kv_wal::{Error, RecoveryMode, Wal, WalOptions, FRAME_HEADER_BYTES};

use crate::support::{collect, payload, record_offsets, segment_files, sim_dir, sim_options};

const SEGMENT_BYTES: u64 = 600;
const RECORD_BYTES: usize = 40;
const RECORD_COUNT: u64 = 40;

/// A closed log of `RECORD_COUNT` records over several segments.
fn written_log() -> SimFs {
    let fs = SimFs::new();
    let (wal, _) = open(&fs, RecoveryMode::TolerateTornTail, 0).unwrap();
    for id in 1..=RECORD_COUNT {
        wal.append(&payload(id, RECORD_BYTES)).unwrap();
    }
    wal.close().unwrap();
    fs
}

fn open(
    fs: &SimFs,
    mode: RecoveryMode,
    needed_from: u64,
) -> kv_wal::Result<(Wal, kv_wal::RecoveryReport)> {
    let options = WalOptions {
        recovery_mode: mode,
        needed_from,
        ..sim_options(fs, SEGMENT_BYTES)
    };
    Wal::open(sim_dir(), options)
}

/// The first id of a segment file (from its name).
fn first_id_of(path: &std::path::Path) -> u64 {
    let name = path.file_name().unwrap().to_str().unwrap();
    name[21..41].parse().unwrap()
}

/// Flips one payload byte of the record at `index` (0-based) of `path`: a bit flip in synced
/// data, a whole frame whose CRC fails. Returns the record's id.
fn flip_record(fs: &SimFs, path: &std::path::Path, index: usize) -> u64 {
    let mut bytes = fs.read_file(path).unwrap();
    let at = record_offsets(&bytes)[index];
    bytes[at + FRAME_HEADER_BYTES + 3] ^= 0x10;
    fs.write_file_durably(path, &bytes).unwrap();
    first_id_of(path) + index as u64
}

/// Every id from `from` reads back as written, through the end of the log.
fn reads_from(wal: &Wal, from: u64, last: u64, context: &str) {
    let records = collect(wal, from);
    let ids: Vec<u64> = records.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, (from..=last).collect::<Vec<_>>(), "{context}");
    for (id, bytes) in records {
        assert_eq!(
            bytes,
            payload(id, RECORD_BYTES),
            "{context}: record {id} differs"
        );
    }
}

/// Reading `id` fails with `Error::Corrupt`, and so does iterating across it.
fn unreadable(wal: &Wal, id: u64, context: &str) {
    assert!(
        matches!(wal.read(id), Err(Error::Corrupt { .. })),
        "{context}: record {id} read: {:?}",
        wal.read(id)
            .map(|bytes| bytes.map(|b| String::from_utf8_lossy(&b).into_owned()))
    );
    crosses_damage(wal, id, context);
}

/// Iterating from `from` yields records as written, then fails with `Error::Corrupt` at the
/// damage; returns the ids it yielded.
fn crosses_damage(wal: &Wal, from: u64, context: &str) -> Vec<u64> {
    let mut yielded = Vec::new();
    for record in wal.iter_from(from) {
        match record {
            Ok(record) => {
                assert_eq!(
                    record.payload(),
                    payload(record.id, RECORD_BYTES).as_slice(),
                    "{context}: record {} differs",
                    record.id
                );
                yielded.push(record.id);
            }
            Err(Error::Corrupt { .. }) => return yielded,
            Err(error) => panic!("{context}: {error}"),
        }
    }
    panic!("{context}: iterating from {from} crossed the damage: {yielded:?}");
}

#[test]
fn a_bit_flip_in_a_sealed_segment_leaves_the_records_after_it_readable() {
    // Before, the first read of the segment failed whole: every id of it was unreadable, so a
    // reader that needed only the records after the damage could not go on.
    let fs = written_log();
    let files = segment_files(&fs);
    let middle = files[files.len() / 2].clone();
    let flipped = flip_record(&fs, &middle, 2);
    let (wal, report) = open(&fs, RecoveryMode::TolerateTornTail, 0).unwrap();
    assert!(report.is_clean(), "the seal is trusted at open: {report}");
    reads_from(&wal, flipped + 1, RECORD_COUNT, "after the flip");
    unreadable(&wal, flipped, "the flipped record");
    // The records before the damage read; a reader from before it stops at it.
    let first = first_id_of(&middle);
    assert_eq!(wal.read(first).unwrap(), Some(payload(first, RECORD_BYTES)));
    assert_eq!(
        crosses_damage(&wal, 1, "from the start"),
        (1..flipped).collect::<Vec<_>>()
    );
}

#[test]
fn damage_below_the_ids_needed_in_the_last_segment_opens_and_serves_the_rest() {
    let fs = written_log();
    let last = segment_files(&fs).pop().unwrap();
    let flipped = flip_record(&fs, &last, 1);
    let resume = flipped + 1;
    assert!(resume < RECORD_COUNT, "valid records follow the damage");
    // The records from the damage on are needed: refused, in the default mode as before.
    for needed_from in [0, flipped] {
        let refused = open(&fs, RecoveryMode::TolerateTornTail, needed_from).map(|_| ());
        assert!(
            matches!(refused, Err(Error::Corrupt { .. })),
            "needed from {needed_from}: {refused:?}"
        );
    }
    // Strict refuses whatever is needed.
    assert!(open(&fs, RecoveryMode::Strict, resume).is_err());
    let before = fs.fork();
    let (wal, report) = open(&fs, RecoveryMode::TolerateTornTail, resume).unwrap();
    assert_eq!(report.unreadable.len(), 1, "{report}");
    let fenced = &report.unreadable[0];
    assert_eq!(
        (fenced.first_missing_id, fenced.last_missing_id),
        (flipped, flipped),
        "{report}"
    );
    assert!(report.to_string().contains("unreadable"), "{report}");
    assert!(!report.is_clean());
    for path in segment_files(&before) {
        assert_eq!(
            fs.read_file(&path).unwrap(),
            before.read_file(&path).unwrap(),
            "open changed {}",
            path.display()
        );
    }
    reads_from(
        &wal,
        resume,
        RECORD_COUNT,
        "from where whole records resume",
    );
    unreadable(&wal, flipped, "the flipped record");
    assert_eq!(
        crosses_damage(&wal, first_id_of(&last), "the segment's first record"),
        (first_id_of(&last)..flipped).collect::<Vec<_>>()
    );
    // The log takes appends after everything it kept, and reads them.
    for id in RECORD_COUNT + 1..=RECORD_COUNT + 12 {
        assert_eq!(wal.append(&payload(id, RECORD_BYTES)).unwrap(), id);
    }
    reads_from(&wal, resume, RECORD_COUNT + 12, "after appends");
    wal.close().unwrap();
    drop(wal);
    // The next open finds the same damage (in a segment the appends have sealed since).
    let (wal, _) = open(&fs, RecoveryMode::TolerateTornTail, resume).unwrap();
    reads_from(&wal, resume, RECORD_COUNT + 12, "reopened");
    unreadable(&wal, flipped, "reopened, the flipped record");
}

#[test]
fn a_truncation_inside_fenced_damage_fails_with_nothing_changed() {
    let fs = written_log();
    let last = segment_files(&fs).pop().unwrap();
    // Two records damaged side by side: whole records resume after both.
    let first_flipped = flip_record(&fs, &last, 1);
    let second_flipped = flip_record(&fs, &last, 2);
    let resume = second_flipped + 1;
    let (wal, report) = open(&fs, RecoveryMode::TolerateTornTail, resume).unwrap();
    let fenced = &report.unreadable[0];
    assert_eq!(
        (fenced.first_missing_id, fenced.last_missing_id),
        (first_flipped, second_flipped),
        "{report}"
    );
    // Cutting inside the damage cannot find where to cut: it fails with nothing changed, and
    // the log takes appends (before, the failed cut poisoned the log).
    let cut = wal.truncate_after(first_flipped);
    assert!(matches!(cut, Err(Error::Corrupt { .. })), "{cut:?}");
    assert_eq!(
        wal.append(&payload(RECORD_COUNT + 1, RECORD_BYTES))
            .unwrap(),
        RECORD_COUNT + 1
    );
    reads_from(&wal, resume, RECORD_COUNT + 1, "after the refused cut");
    // Cutting just before where whole records resume reads no damaged byte: the damage stays
    // fenced, and the records appended in place of the cut ones read.
    wal.truncate_after(second_flipped).unwrap();
    for id in resume..=resume + 3 {
        assert_eq!(wal.append(&payload(id, RECORD_BYTES)).unwrap(), id);
    }
    reads_from(&wal, resume, resume + 3, "after the cut at the resume");
    unreadable(&wal, second_flipped, "after the cut at the resume");
    // Cutting before the damage removes it: the log reads whole again.
    wal.truncate_after(first_flipped - 1).unwrap();
    for id in first_flipped..=first_flipped + 5 {
        assert_eq!(wal.append(&payload(id, RECORD_BYTES)).unwrap(), id);
    }
    reads_from(
        &wal,
        1,
        first_flipped + 5,
        "after the cut before the damage",
    );
    wal.close().unwrap();
    drop(wal);
    let (wal, report) = open(&fs, RecoveryMode::Strict, 0).unwrap();
    assert!(report.is_clean(), "{report}");
    reads_from(&wal, 1, first_flipped + 5, "reopened strict");
}

#[test]
fn no_flip_anywhere_in_the_last_segment_is_ever_served_changed() {
    // Every byte of every record of the last segment flipped in turn, opened with every
    // `needed_from` around it: each open either refuses or serves records exactly as written,
    // and every id from `needed_from` on is served.
    let fs = written_log();
    let last = segment_files(&fs).pop().unwrap();
    let image = fs.read_file(&last).unwrap();
    let offsets = record_offsets(&image);
    let first = first_id_of(&last);
    let mut opened = 0;
    for (index, &at) in offsets.iter().enumerate() {
        for byte in at..at + FRAME_HEADER_BYTES + RECORD_BYTES {
            let damaged = fs.fork();
            let mut bytes = image.clone();
            bytes[byte] ^= 0x04;
            damaged.write_file_durably(&last, &bytes).unwrap();
            let id = first + index as u64;
            for needed_from in [0, id, id + 1, id + 2] {
                let context = format!("byte {byte} (record {id}), needed from {needed_from}");
                let Ok((wal, _)) = open(&damaged, RecoveryMode::TolerateTornTail, needed_from)
                else {
                    continue;
                };
                opened += 1;
                let from = needed_from.max(1);
                for record in wal.iter_from(from) {
                    match record {
                        Ok(record) => assert_eq!(
                            record.payload(),
                            payload(record.id, RECORD_BYTES).as_slice(),
                            "{context}"
                        ),
                        Err(error) => panic!("{context}: a needed record failed: {error}"),
                    }
                }
                let last_id = wal.last_id().unwrap_or(0);
                assert!(
                    last_id >= RECORD_COUNT || index + 1 == offsets.len(),
                    "{context}: the log ends at {last_id}"
                );
                for record in wal.iter_from(1) {
                    match record {
                        Ok(record) => assert_eq!(
                            record.payload(),
                            payload(record.id, RECORD_BYTES).as_slice(),
                            "{context}"
                        ),
                        Err(Error::Corrupt { .. }) => break,
                        Err(error) => panic!("{context}: {error}"),
                    }
                }
            }
        }
    }
    assert!(opened > 0);
}
