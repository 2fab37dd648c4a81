//! Compressed sealed segments (`.walz`): reads equal to plain segments byte for byte, a power
//! loss at every step of compressing and of truncating into one, damage caught in every
//! recovery mode, truncation and purging across them, and appends and reads running while
//! segments are compressed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use kv_wal::sim::{CrashMode, SimFs};
use kv_wal::{Error, FrameBatch, RecoveryMode, SegmentCodec, SyncPolicy, Wal, WalOptions};

use crate::support::{collect, compressed_files, sim_dir, StepFs};

/// Four blocks of about 256 KiB per segment.
const SEGMENT_BYTES_LARGE: u64 = 1 << 20;
/// One block per segment: many segments, quick runs.
const SEGMENT_BYTES_SMALL: u64 = 48 << 10;

/// A kvd-like record: a 16-byte key and a JSON value of about 100 bytes.
fn record(id: u64) -> Vec<u8> {
    format!(
        "{{\"key\":\"user:{:011}\",\"value\":{{\"name\":\"user {id}\",\"score\":{},\"tags\":[\"a\",\"b\"],\"active\":{}}}}}",
        id % 100_000_000_000,
        (id * 7919) % 10_000,
        id.is_multiple_of(3)
    )
    .into_bytes()
}

fn options(fs: Arc<dyn kv_wal::fs::FileSystem>, segment_bytes_max: u64) -> WalOptions {
    WalOptions {
        segment_bytes_max,
        sync_policy: SyncPolicy::Never,
        compress_sealed_segments: Some(SegmentCodec::Lz4),
        file_system: fs,
        ..WalOptions::default()
    }
}

fn open(fs: &SimFs, segment_bytes_max: u64, mode: RecoveryMode) -> kv_wal::Result<Wal> {
    let options = WalOptions {
        recovery_mode: mode,
        ..options(Arc::new(fs.clone()), segment_bytes_max)
    };
    Wal::open(sim_dir(), options).map(|(wal, _)| wal)
}

/// A plain log of `count` records on a fresh simulated disk, closed (everything synced).
fn plain_log(segment_bytes_max: u64, count: u64) -> (SimFs, Vec<(u64, Vec<u8>)>) {
    let fs = SimFs::new();
    let wal = open(&fs, segment_bytes_max, RecoveryMode::Strict).expect("open");
    let mut model = Vec::new();
    let mut id = 1;
    while id <= count {
        let batch: Vec<Vec<u8>> = (id..(id + 500).min(count + 1)).map(record).collect();
        let ids = wal.append_batch(&batch).expect("append");
        assert_eq!(*ids.start(), id);
        model.extend(ids.zip(batch));
        id += 500;
    }
    wal.close().expect("close");
    (fs, model)
}

/// Every frame of the log from id 1, in batches of at most 64 KiB, as replication reads them.
fn all_frames(wal: &Wal) -> Vec<FrameBatch> {
    let mut batches = Vec::new();
    let mut from = 1;
    while let Some(batch) = wal.read_frames(from, 64 << 10, u64::MAX).expect("frames") {
        from = batch.last_id + 1;
        batches.push(batch);
    }
    batches
}

/// `(offset, first id, last id)` of every block of a compressed segment, from its index.
fn blocks_of(fs: &SimFs, path: &Path) -> Vec<(u64, u64, u64)> {
    let bytes = fs.read_file(path).expect("read");
    let footer = &bytes[bytes.len() - 48..];
    let count = u32::from_le_bytes(footer[4..8].try_into().unwrap()) as usize;
    let index_offset = u64::from_le_bytes(footer[8..16].try_into().unwrap()) as usize;
    (0..count)
        .map(|block| {
            let entry = &bytes[index_offset + block * 24..index_offset + (block + 1) * 24];
            let long = |at: usize| u64::from_le_bytes(entry[at..at + 8].try_into().unwrap());
            let records = u32::from_le_bytes(entry[16..20].try_into().unwrap()) as u64;
            (long(0), long(8), long(8) + records - 1)
        })
        .collect()
}

fn flip_byte(fs: &SimFs, path: &Path, offset: u64) {
    let mut bytes = fs.read_file(path).expect("read");
    bytes[offset as usize] ^= 0x5a;
    fs.write_file_durably(path, &bytes).expect("write");
}

#[test]
fn compressed_segments_read_back_exactly_like_plain_ones() {
    for codec in [SegmentCodec::Lz4, SegmentCodec::Zstd] {
        let (fs, model) = plain_log(SEGMENT_BYTES_LARGE, 30_000);
        let wal = Wal::open(
            sim_dir(),
            WalOptions {
                compress_sealed_segments: Some(codec),
                ..options(Arc::new(fs.clone()), SEGMENT_BYTES_LARGE)
            },
        )
        .expect("open")
        .0;
        let frames_plain = all_frames(&wal);
        let sealed = wal.segments().len() - 1;
        assert!(sealed >= 3, "{sealed} sealed segments");

        let report = wal.compress_sealed().expect("compress");
        assert_eq!(report.segments_compressed, sealed, "{report:?}");
        assert!(report.skipped.is_empty(), "{report:?}");
        assert!(report.ratio() > 2.0, "{codec}: ratio {}", report.ratio());
        assert_eq!(compressed_files(&fs).len(), sealed);
        let segments = wal.segments();
        for segment in &segments[..sealed] {
            assert_eq!(segment.codec, Some(codec), "{segment:?}");
            assert!(
                segment.size_bytes * 2 < segment.original_bytes,
                "{segment:?}"
            );
            assert!(segment.path.to_string_lossy().ends_with(".walz"));
        }
        assert_eq!(segments[sealed].codec, None);
        assert_eq!(wal.stats().segments_compressed, sealed as u64);
        assert_eq!(wal.stats().compressed_bytes_after, report.bytes_after);

        assert!(collect(&wal, 1) == model, "{codec}: iteration differs");
        assert!(all_frames(&wal) == frames_plain, "{codec}: frames differ");
        for &(id, ref payload) in model.iter().step_by(997) {
            assert_eq!(wal.read(id).expect("read").as_ref(), Some(payload));
            let from_here: Vec<u64> = wal.iter_from(id).take(3).map(|r| r.unwrap().id).collect();
            assert_eq!(from_here, vec![id, id + 1, id + 2]);
        }
        assert_eq!(wal.compress_sealed().expect("again").segments_compressed, 0);
        wal.close().expect("close");
        drop(wal);

        for mode in [
            RecoveryMode::TolerateTornTail,
            RecoveryMode::Strict,
            RecoveryMode::PointInTime,
            RecoveryMode::SkipCorrupt,
        ] {
            let (wal, report) = Wal::open(
                sim_dir(),
                WalOptions {
                    recovery_mode: mode,
                    ..options(Arc::new(fs.fork()), SEGMENT_BYTES_LARGE)
                },
            )
            .expect("reopen");
            assert!(
                report.is_clean() && report.removed_files.is_empty(),
                "{report}"
            );
            assert_eq!(report.records, model.len() as u64, "{mode}: {report}");
            assert!(collect(&wal, 1) == model, "{codec} {mode}: log differs");
            assert!(
                all_frames(&wal) == frames_plain,
                "{codec} {mode}: frames differ"
            );
            assert_eq!(wal.next_id(), model.len() as u64 + 1);
        }
    }
}

/// Kills the process at every file-system call of a compression pass, with and without a
/// power loss, and opens the log again (in `Strict` mode, so nothing may be repaired
/// silently): every record is there, and a second pass finishes the job.
#[test]
fn a_power_loss_at_every_step_of_compression_loses_nothing() {
    let (pristine, model) = plain_log(SEGMENT_BYTES_SMALL, 2_000);
    let sealed = open(&pristine.fork(), SEGMENT_BYTES_SMALL, RecoveryMode::Strict)
        .expect("open")
        .segments()
        .len()
        - 1;
    assert!(sealed >= 3);
    let mut twins_resolved = 0;
    let mut temporaries_removed = 0;
    let mut step = 1;
    loop {
        let mut died = false;
        for power_loss in [true, false] {
            let fs = pristine.fork();
            let step_fs = StepFs::new(fs.clone());
            let wal = Wal::open(
                sim_dir(),
                options(Arc::new(step_fs.clone()), SEGMENT_BYTES_SMALL),
            )
            .expect("open")
            .0;
            step_fs.plan().die_at(step);
            let result = wal.compress_sealed();
            died = step_fs.plan().died();
            assert!(result.is_ok() || died, "step {step}: {result:?}");
            if power_loss {
                let mode = if step.is_multiple_of(2) {
                    CrashMode::DropUnsynced
                } else {
                    CrashMode::TearUnsynced { seed: step }
                };
                fs.crash(mode);
            }
            drop(wal);

            let context = format!("step {step}, power loss {power_loss}");
            let (wal, report) = Wal::open(
                sim_dir(),
                WalOptions {
                    recovery_mode: RecoveryMode::Strict,
                    ..options(Arc::new(fs.clone()), SEGMENT_BYTES_SMALL)
                },
            )
            .unwrap_or_else(|error| panic!("{context}: {error}"));
            for removed in &report.removed_files {
                let name = removed.to_string_lossy();
                if name.ends_with(".walz") {
                    twins_resolved += 1;
                } else if name.ends_with(".tmp") {
                    temporaries_removed += 1;
                }
            }
            assert!(collect(&wal, 1) == model, "{context}: {report}");
            let report = wal.compress_sealed().expect("second pass");
            assert!(report.skipped.is_empty(), "{context}: {report:?}");
            let segments = wal.segments();
            assert!(
                segments[..sealed].iter().all(|s| s.codec.is_some()),
                "{context}"
            );
            assert!(
                collect(&wal, 1) == model,
                "{context}: after the second pass"
            );
            drop(wal);
            let wal = open(&fs, SEGMENT_BYTES_SMALL, RecoveryMode::Strict).expect("open");
            assert!(collect(&wal, 1) == model, "{context}: after reopening");
        }
        if !died {
            break;
        }
        step += 1;
    }
    println!(
        "{step} steps; both files found {twins_resolved} times, temporaries removed {temporaries_removed} times"
    );
    assert!(step > 6 * sealed as u64, "only {step} steps");
    assert!(twins_resolved > 0 && temporaries_removed > 0);
}

/// The same for a truncation that cuts into a compressed segment: after the power loss the log
/// is either the old one or the truncated one, never anything else.
#[test]
fn a_power_loss_at_every_step_of_truncating_into_a_compressed_segment() {
    let (pristine, model) = plain_log(SEGMENT_BYTES_SMALL, 2_000);
    {
        let wal = open(&pristine, SEGMENT_BYTES_SMALL, RecoveryMode::Strict).expect("open");
        assert!(wal.compress_sealed().expect("compress").segments_compressed >= 3);
    }
    let second = open(&pristine.fork(), SEGMENT_BYTES_SMALL, RecoveryMode::Strict)
        .expect("open")
        .segments()[1]
        .clone();
    assert!(second.codec.is_some());
    let after_id = (second.first_id + second.last_id.unwrap()) / 2;
    let truncated: Vec<_> = model
        .iter()
        .filter(|(id, _)| *id <= after_id)
        .cloned()
        .collect();
    let mut outcomes = [0u32; 2];
    for step in 1.. {
        let fs = pristine.fork();
        let step_fs = StepFs::new(fs.clone());
        let wal = Wal::open(
            sim_dir(),
            options(Arc::new(step_fs.clone()), SEGMENT_BYTES_SMALL),
        )
        .expect("open")
        .0;
        step_fs.plan().die_at(step);
        let result = wal.truncate_after(after_id);
        let died = step_fs.plan().died();
        assert!(result.is_ok() || died, "step {step}: {result:?}");
        fs.crash(CrashMode::DropUnsynced);
        drop(wal);
        let wal = open(&fs, SEGMENT_BYTES_SMALL, RecoveryMode::Strict)
            .unwrap_or_else(|error| panic!("step {step}: {error}"));
        let records = collect(&wal, 1);
        if records == model {
            outcomes[0] += 1;
        } else {
            assert!(
                records == truncated,
                "step {step}: neither the old nor the new log"
            );
            outcomes[1] += 1;
            assert_eq!(wal.next_id(), after_id + 1);
            let segments = wal.segments();
            assert_eq!(segments.last().unwrap().codec, None);
        }
        if !died {
            break;
        }
    }
    assert!(outcomes[0] > 0 && outcomes[1] > 1, "{outcomes:?}");
}

#[test]
fn damage_in_a_compressed_block_is_caught_in_every_mode() {
    let (fs, model) = plain_log(SEGMENT_BYTES_LARGE, 30_000);
    {
        let wal = open(&fs, SEGMENT_BYTES_LARGE, RecoveryMode::Strict).expect("open");
        assert!(wal.compress_sealed().expect("compress").segments_compressed >= 3);
    }
    let walz = compressed_files(&fs)[0].clone();
    let blocks = blocks_of(&fs, &walz);
    assert!(blocks.len() >= 3, "{blocks:?}");
    let (offset, first_lost, last_lost) = blocks[1];
    let damaged = fs.fork();
    flip_byte(&damaged, &walz, offset + 32 + 100);
    let last_written = model.last().unwrap().0;

    // Default: the footer is trusted at open; reading the block fails, naming it.
    let wal = open(
        &damaged.fork(),
        SEGMENT_BYTES_LARGE,
        RecoveryMode::TolerateTornTail,
    )
    .expect("the default mode opens");
    assert_eq!(wal.read(blocks[0].1).unwrap().as_ref(), Some(&model[0].1));
    let error = wal.read(first_lost + 1).unwrap_err();
    assert!(
        matches!(&error, Error::Corrupt { segment, offset: at, reason }
            if *segment == walz && *at == offset && reason.contains("CRC")),
        "{error}"
    );
    drop(wal);

    let error = open(&damaged.fork(), SEGMENT_BYTES_LARGE, RecoveryMode::Strict).unwrap_err();
    assert!(
        matches!(&error, Error::Corrupt { segment, offset: at, .. } if *segment == walz && *at == offset),
        "{error}"
    );

    let fs_pit = damaged.fork();
    let (wal, report) = Wal::open(
        sim_dir(),
        WalOptions {
            recovery_mode: RecoveryMode::PointInTime,
            ..options(Arc::new(fs_pit.clone()), SEGMENT_BYTES_LARGE)
        },
    )
    .expect("point in time opens");
    let dropped = report.dropped.as_ref().expect("dropped");
    assert_eq!(dropped.segment, walz);
    assert_eq!(dropped.offset, offset);
    assert!(!dropped.segments_removed.is_empty());
    let kept: Vec<_> = model
        .iter()
        .filter(|(id, _)| *id < first_lost)
        .cloned()
        .collect();
    assert!(collect(&wal, 1) == kept, "{report}");
    assert!(
        wal.next_id() > last_written,
        "ids would be reused: {report}"
    );
    assert!(compressed_files(&fs_pit).is_empty());
    drop(wal);
    let wal = open(&fs_pit, SEGMENT_BYTES_LARGE, RecoveryMode::Strict).expect("repaired");
    assert!(collect(&wal, 1) == kept);
    drop(wal);

    let (wal, report) = Wal::open(
        sim_dir(),
        WalOptions {
            recovery_mode: RecoveryMode::SkipCorrupt,
            ..options(Arc::new(damaged.fork()), SEGMENT_BYTES_LARGE)
        },
    )
    .expect("skip-corrupt opens");
    assert_eq!(report.holes.len(), 1, "{report}");
    let hole = &report.holes[0];
    assert_eq!(
        (
            &hole.segment,
            hole.offset,
            hole.first_missing_id,
            hole.last_missing_id
        ),
        (&walz, offset, first_lost, last_lost)
    );
    let survivors: Vec<_> = model
        .iter()
        .filter(|(id, _)| *id < first_lost || *id > last_lost)
        .cloned()
        .collect();
    assert!(collect(&wal, 1) == survivors, "{report}");
    assert_eq!(wal.read(first_lost).unwrap(), None);
    assert_eq!(wal.next_id(), last_written + 1);
}

#[test]
fn a_damaged_block_index_is_caught_and_repaired_only_where_the_mode_allows() {
    let (fs, model) = plain_log(SEGMENT_BYTES_SMALL, 2_000);
    {
        let wal = open(&fs, SEGMENT_BYTES_SMALL, RecoveryMode::Strict).expect("open");
        wal.compress_sealed().expect("compress");
    }
    let walz = compressed_files(&fs)[1].clone();
    let len = fs.read_file(&walz).unwrap().len() as u64;
    flip_byte(&fs, &walz, len - 30);
    for mode in [RecoveryMode::TolerateTornTail, RecoveryMode::Strict] {
        let error = open(&fs.fork(), SEGMENT_BYTES_SMALL, mode).unwrap_err();
        assert!(
            matches!(&error, Error::Corrupt { segment, reason, .. } if *segment == walz && reason.contains("index")),
            "{mode}: {error}"
        );
    }
    let repaired = fs.fork();
    let (wal, report) = Wal::open(
        sim_dir(),
        WalOptions {
            recovery_mode: RecoveryMode::PointInTime,
            ..options(Arc::new(repaired.clone()), SEGMENT_BYTES_SMALL)
        },
    )
    .expect("point in time");
    assert!(
        report.dropped.is_none() && report.removed_files == vec![walz.clone()],
        "{report}"
    );
    assert!(collect(&wal, 1) == model);
    drop(wal);
    open(&repaired, SEGMENT_BYTES_SMALL, RecoveryMode::Strict).expect("clean after the repair");

    let (wal, report) = Wal::open(
        sim_dir(),
        WalOptions {
            recovery_mode: RecoveryMode::SkipCorrupt,
            ..options(Arc::new(fs.fork()), SEGMENT_BYTES_SMALL)
        },
    )
    .expect("skip corrupt");
    assert_eq!(report.holes.len(), 1, "{report}");
    assert_eq!(report.holes[0].missing_ids(), 0, "{report}");
    assert!(collect(&wal, 1) == model);
}

#[test]
fn truncate_and_purge_work_across_compressed_segments() {
    let (fs, mut model) = plain_log(SEGMENT_BYTES_SMALL, 2_500);
    let wal = open(&fs, SEGMENT_BYTES_SMALL, RecoveryMode::Strict).expect("open");
    assert!(wal.compress_sealed().unwrap().segments_compressed >= 4);
    let segments = wal.segments();

    // Truncate into the third segment: it becomes the plain, active one.
    let third = &segments[2];
    let after_id = third.first_id + 3;
    wal.truncate_after(after_id).expect("truncate");
    model.retain(|(id, _)| *id <= after_id);
    assert!(collect(&wal, 1) == model);
    let now = wal.segments();
    assert_eq!(now.len(), 3);
    assert!(now[0].codec.is_some() && now[1].codec.is_some() && now[2].codec.is_none());
    assert!(now[2].is_active && now[2].path.to_string_lossy().ends_with(".wal"));
    assert_eq!(compressed_files(&fs).len(), 2);

    // Appends continue from there, roll, and the new sealed segments compress too.
    for _ in 0..4 {
        let next = wal.next_id();
        let batch: Vec<Vec<u8>> = (next..next + 200).map(record).collect();
        let ids = wal.append_batch(&batch).unwrap();
        model.extend(ids.zip(batch));
    }
    assert!(wal.compress_sealed().unwrap().segments_compressed >= 1);
    assert!(collect(&wal, 1) == model);

    // Purge the first two (compressed) segments.
    let before = wal.segments()[2].first_id;
    let removed = wal.purge_before(before).expect("purge");
    assert_eq!(removed.len(), 2);
    assert!(removed
        .iter()
        .all(|path| path.to_string_lossy().ends_with(".walz")));
    model.retain(|(id, _)| *id >= before);
    assert!(collect(&wal, 1) == model);
    wal.close().unwrap();
    drop(wal);
    let wal = open(&fs, SEGMENT_BYTES_SMALL, RecoveryMode::Strict).expect("reopen");
    assert!(collect(&wal, 1) == model);
    assert_eq!(wal.first_id(), Some(before));
}

/// One thread appends, one reads (iteration, point reads, frame batches), while the main
/// thread compresses sealed segments as they appear, on the real file system.
#[test]
fn appends_and_reads_go_on_while_segments_are_compressed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = WalOptions {
        segment_bytes_max: 64 << 10,
        sync_policy: SyncPolicy::Never,
        compress_sealed_segments: Some(SegmentCodec::Zstd),
        ..WalOptions::default()
    };
    let wal = Arc::new(Wal::open(dir.path(), options.clone()).expect("open").0);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (wal, stop) = (wal.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let next = wal.next_id();
                let batch: Vec<Vec<u8>> = (next..next + 25).map(record).collect();
                let ids = wal.append_batch(&batch).expect("append while compressing");
                assert_eq!(*ids.start(), next);
            }
        })
    };
    let reader = {
        let (wal, stop) = (wal.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut checked = 0u64;
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) {
                round += 1;
                let last = wal.last_id().unwrap_or(0);
                if last == 0 {
                    continue;
                }
                let from = 1 + (round * 7_919) % last;
                for record in wal.iter_from(from).take(2_000) {
                    let record = record.expect("read while compressing");
                    assert_eq!(record.payload(), &self::record(record.id)[..]);
                    checked += 1;
                }
                let batch = wal
                    .read_frames(from, 32 << 10, u64::MAX)
                    .expect("frames while compressing")
                    .expect("a batch");
                let frames = kv_wal::frame::decode_all(&batch.bytes).expect("frames check");
                assert_eq!(frames[0].id, from);
                assert_eq!(wal.read(from).unwrap(), Some(self::record(from)));
            }
            checked
        })
    };
    let mut compressed = 0;
    let mut passes = 0;
    while compressed < 30 {
        compressed += wal.compress_sealed().expect("compress").segments_compressed;
        passes += 1;
        std::thread::yield_now();
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");
    let checked = reader.join().expect("reader");
    println!(
        "{compressed} segments compressed in {passes} passes; {checked} records read meanwhile"
    );
    assert!(checked > 0);
    let expected: Vec<(u64, Vec<u8>)> = (1..wal.next_id()).map(|id| (id, record(id))).collect();
    assert!(collect(&wal, 1) == expected);
    wal.close().unwrap();
    drop(wal);
    let (wal, report) = Wal::open(
        dir.path(),
        WalOptions {
            recovery_mode: RecoveryMode::Strict,
            ..options
        },
    )
    .expect("reopen");
    assert!(report.is_clean(), "{report}");
    assert!(collect(&wal, 1) == expected);
    let leftovers: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A file system whose next `open` of one path stops until the test lets it go: it holds a
/// reader between finding a segment and opening its file.
#[derive(Debug, Clone)]
struct GateFs {
    inner: SimFs,
    gate: Arc<Gate>,
}

#[derive(Debug, Default)]
struct Gate {
    /// (path to hold, a reader is held, released)
    state: std::sync::Mutex<(Option<PathBuf>, bool, bool)>,
    changed: std::sync::Condvar,
}

impl Gate {
    fn wait_until(&self, done: impl Fn(&(Option<PathBuf>, bool, bool)) -> bool) {
        let mut state = self.state.lock().unwrap();
        while !done(&state) {
            state = self.changed.wait(state).unwrap();
        }
    }
    fn update(&self, change: impl FnOnce(&mut (Option<PathBuf>, bool, bool))) {
        change(&mut self.state.lock().unwrap());
        self.changed.notify_all();
    }
}

impl kv_wal::fs::FileSystem for GateFs {
    fn create_dir_all(&self, path: &Path) -> std::io::Result<()> {
        self.inner.create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> std::io::Result<Vec<String>> {
        self.inner.list_dir(path)
    }
    fn open(&self, path: &Path) -> std::io::Result<Arc<dyn kv_wal::fs::WalFile>> {
        let held = self.gate.state.lock().unwrap().0.as_deref() == Some(path);
        if held {
            self.gate.update(|state| {
                state.0 = None;
                state.1 = true;
            });
            self.gate.wait_until(|state| state.2);
        }
        self.inner.open(path)
    }
    fn create_new(&self, path: &Path) -> std::io::Result<Arc<dyn kv_wal::fs::WalFile>> {
        self.inner.create_new(path)
    }
    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        self.inner.remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        self.inner.rename(from, to)
    }
    fn sync_dir(&self, path: &Path) -> std::io::Result<()> {
        self.inner.sync_dir(path)
    }
    fn try_lock(&self, path: &Path) -> std::io::Result<Box<dyn kv_wal::fs::DirLock>> {
        self.inner.try_lock(path)
    }
}

/// A reader that found a plain segment but opens its file only after the segment was
/// compressed (and the plain file removed) finds the compressed one instead.
#[test]
fn a_reader_that_loses_the_race_with_compression_reads_the_compressed_segment() {
    let (fs, model) = plain_log(SEGMENT_BYTES_SMALL, 2_000);
    let gate_fs = GateFs {
        inner: fs.clone(),
        gate: Arc::default(),
    };
    let wal = Arc::new(
        Wal::open(
            sim_dir(),
            options(Arc::new(gate_fs.clone()), SEGMENT_BYTES_SMALL),
        )
        .expect("open")
        .0,
    );
    let first = wal.segments()[0].clone();
    let id = first.first_id + 5;
    gate_fs
        .gate
        .update(|state| state.0 = Some(first.path.clone()));
    let reader = {
        let wal = wal.clone();
        std::thread::spawn(move || wal.read(id))
    };
    gate_fs.gate.wait_until(|state| state.1);
    assert!(wal.compress_sealed().expect("compress").segments_compressed >= 3);
    assert!(fs.read_file(&first.path).is_err(), "the plain file is gone");
    gate_fs.gate.update(|state| state.2 = true);
    let read = reader.join().expect("reader");
    assert_eq!(read.expect("the read relocates"), Some(model[5].1.clone()));
}

/// Random damage (garbage or zeros, anywhere in a compressed segment: header, blocks, index,
/// footer) under every recovery mode: open never panics, no mode returns a record that was not
/// written, `Strict` refuses every change, and the repairing modes read the whole log back
/// without an error.
#[test]
fn random_damage_to_compressed_segments_never_returns_a_wrong_record() {
    use rand::{Rng, SeedableRng};
    let seed = crate::support::seed_from_env(rand::random());
    println!("compressed damage seed: {seed} (replay with KV_TEST_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (pristine, model) = plain_log(SEGMENT_BYTES_SMALL, 2_000);
    {
        let wal = open(&pristine, SEGMENT_BYTES_SMALL, RecoveryMode::Strict).expect("open");
        assert!(wal.compress_sealed().expect("compress").segments_compressed >= 3);
    }
    let files = compressed_files(&pristine);
    let mut outcomes = std::collections::BTreeMap::<String, u32>::new();
    for round in 0..60 {
        let fs = pristine.fork();
        let path = &files[rng.gen_range(0..files.len())];
        let mut bytes = fs.read_file(path).unwrap();
        let at = rng.gen_range(0..bytes.len());
        let len = rng.gen_range(1..64).min(bytes.len() - at);
        let before = bytes.clone();
        if rng.gen_bool(0.5) {
            bytes[at..at + len].fill(0);
        } else {
            rng.fill(&mut bytes[at..at + len]);
        }
        let changed = bytes != before;
        fs.write_file_durably(path, &bytes).unwrap();
        let mode = [
            RecoveryMode::TolerateTornTail,
            RecoveryMode::Strict,
            RecoveryMode::PointInTime,
            RecoveryMode::SkipCorrupt,
        ][rng.gen_range(0..4)];
        let context = format!(
            "round {round}: {mode}, {len} bytes at {at} of {}",
            path.display()
        );
        let wal = match open(&fs, SEGMENT_BYTES_SMALL, mode) {
            Ok(wal) => wal,
            Err(error) => {
                assert!(matches!(error, Error::Corrupt { .. }), "{context}: {error}");
                assert!(
                    matches!(mode, RecoveryMode::Strict | RecoveryMode::TolerateTornTail),
                    "{context}: a repairing mode refused: {error}"
                );
                *outcomes.entry(format!("{mode} refused")).or_default() += 1;
                continue;
            }
        };
        // Every byte of a compressed file is covered by a CRC or checked against another field.
        assert!(
            !(changed && mode == RecoveryMode::Strict),
            "{context}: Strict opened a damaged log"
        );
        let mut last_id = 0;
        for record in wal.iter_from(1) {
            let record = match record {
                Ok(record) => record,
                Err(error) => {
                    assert_eq!(mode, RecoveryMode::TolerateTornTail, "{context}: {error}");
                    assert!(matches!(error, Error::Corrupt { .. }), "{context}: {error}");
                    *outcomes.entry(format!("{mode} read refused")).or_default() += 1;
                    break;
                }
            };
            assert!(record.id > last_id, "{context}: ids out of order");
            last_id = record.id;
            let written = &model[(record.id - 1) as usize];
            assert_eq!(written.0, record.id);
            assert_eq!(
                record.payload(),
                &written.1[..],
                "{context}: a changed record"
            );
        }
        *outcomes.entry(format!("{mode} opened")).or_default() += 1;
        if mode == RecoveryMode::PointInTime {
            // The repair is complete: nothing is left for a strict open to refuse.
            drop(wal);
            open(&fs, SEGMENT_BYTES_SMALL, RecoveryMode::Strict)
                .unwrap_or_else(|error| panic!("{context}: after the repair: {error}"));
        }
    }
    println!("{outcomes:?}");
}
