//! Preallocated segments (format version 5): a new segment file is created
//! `min(64 MiB, segment size)` long, appends write into it, a sealed segment ends with its seal,
//! and zeros after the data are free space in every recovery mode — never a torn tail, never a
//! record. Lost pages, torn writes and the rest of the damage matrix on preallocated segments
//! are in `corruption.rs` and `power_cut.rs`.

use kv_wal::sim::{CrashMode, SimFs};
use kv_wal::{RecoveryMode, Wal, WalOptions, SEGMENT_PREALLOCATION_BYTES_DEFAULT};

use crate::support::{
    as_appending_segment, collect, data_end, is_preallocated, open_sim, payload, segment_files,
};

const SEGMENT_BYTES: u64 = 4096;
const MODES: [RecoveryMode; 4] = [
    RecoveryMode::TolerateTornTail,
    RecoveryMode::PointInTime,
    RecoveryMode::Strict,
    RecoveryMode::SkipCorrupt,
];

#[test]
fn the_preallocation_is_the_option_capped_by_the_segment_size() {
    let preallocated = |segment_bytes_max, segment_preallocation_bytes| {
        WalOptions {
            segment_bytes_max,
            segment_preallocation_bytes,
            ..WalOptions::default()
        }
        .preallocated_segment_bytes()
    };
    assert_eq!(SEGMENT_PREALLOCATION_BYTES_DEFAULT, 64 << 20);
    assert_eq!(WalOptions::default().preallocated_segment_bytes(), 64 << 20);
    assert_eq!(
        preallocated(4096, SEGMENT_PREALLOCATION_BYTES_DEFAULT),
        4096
    );
    assert_eq!(
        preallocated(1 << 30, SEGMENT_PREALLOCATION_BYTES_DEFAULT),
        64 << 20
    );
    assert_eq!(preallocated(1 << 30, 8 << 20), 8 << 20);
    assert_eq!(preallocated(1 << 30, 0), 0);
    // No longer than a header: nothing to preallocate.
    assert_eq!(preallocated(1 << 30, 48), 0);
}

#[test]
fn the_active_segment_is_preallocated_and_sealed_ones_end_with_their_seal() {
    let fs = SimFs::new();
    let (wal, _) = open_sim(&fs, SEGMENT_BYTES, RecoveryMode::TolerateTornTail).unwrap();
    for id in 1..=200 {
        wal.append(&payload(id, 60)).unwrap();
    }
    let segments = wal.segments();
    assert!(segments.len() > 3, "{segments:?}");
    let files = segment_files(&fs);
    assert_eq!(files.len(), segments.len());
    for (segment, path) in segments.iter().zip(&files) {
        let bytes = fs.read_file(path).unwrap();
        assert!(is_preallocated(&bytes), "{segment:?}: format version 5");
        assert_eq!(segment.allocated_bytes, bytes.len() as u64, "{segment:?}");
        assert_eq!(segment.size_bytes, data_end(&bytes) as u64, "{segment:?}");
        if segment.is_active {
            assert_eq!(segment.allocated_bytes, SEGMENT_BYTES, "{segment:?}");
            assert!(segment.size_bytes < segment.allocated_bytes, "{segment:?}");
        } else {
            assert_eq!(segment.allocated_bytes, segment.size_bytes, "{segment:?}");
        }
    }
}

#[test]
fn a_preallocated_tail_is_free_space_in_every_mode() {
    let fs = SimFs::new();
    let (wal, _) = open_sim(&fs, 1 << 20, RecoveryMode::TolerateTornTail).unwrap();
    for id in 1..=30 {
        wal.append(&payload(id, 100)).unwrap();
    }
    drop(wal);
    // A power cut after the appends were acknowledged: nothing synced is lost, and the zeros
    // the file was created with stay behind the data.
    fs.crash(CrashMode::DropUnsynced);
    for mode in MODES {
        let fs = fs.fork();
        let (wal, report) = open_sim(&fs, 1 << 20, mode).unwrap_or_else(|error| {
            panic!("{mode}: a preallocated tail refused: {error}");
        });
        assert!(report.is_clean(), "{mode}: {report}");
        assert!(report.torn_tail.is_none(), "{mode}: {report}");
        let records = collect(&wal, 1);
        assert_eq!(records.len(), 30, "{mode}: zeros read as records? {report}");
        for (id, bytes) in &records {
            assert_eq!(*bytes, payload(*id, 100), "{mode}");
        }
        // Appends after the reopen go right after the data, into the free space.
        assert_eq!(wal.append(b"after reopen").unwrap(), 31);
        let segment = wal.segments().pop().unwrap();
        assert_eq!(segment.allocated_bytes, 1 << 20, "{mode}: {segment:?}");
        drop(wal);
        let bytes = fs.read_file(&segment_files(&fs).pop().unwrap()).unwrap();
        assert_eq!(bytes.len(), 1 << 20, "{mode}");
        assert_eq!(data_end(&bytes) as u64, segment.size_bytes, "{mode}");
        let (wal, report) = open_sim(&fs, 1 << 20, RecoveryMode::Strict).unwrap();
        assert_eq!(report.last_id, Some(31), "{mode}: {report}");
        assert_eq!(collect(&wal, 31)[0].1, b"after reopen");
    }
}

#[test]
fn a_torn_tail_cut_is_preallocated_again() {
    let fs = SimFs::new();
    let (wal, _) = open_sim(&fs, SEGMENT_BYTES, RecoveryMode::TolerateTornTail).unwrap();
    for id in 1..=10 {
        wal.append(&payload(id, 100)).unwrap();
    }
    drop(wal);
    let path = segment_files(&fs).pop().unwrap();
    let mut bytes = fs.read_file(&path).unwrap();
    let end = data_end(&bytes);
    bytes[end - 30..end].fill(0xa5);
    fs.write_file_durably(&path, &bytes).unwrap();
    let (wal, report) = open_sim(&fs, SEGMENT_BYTES, RecoveryMode::TolerateTornTail).unwrap();
    let torn = report.torn_tail.as_ref().expect("a torn tail");
    assert!(
        torn.bytes_dropped < 200,
        "the free space is not counted as dropped: {report}"
    );
    assert_eq!(report.last_id, Some(9), "{report}");
    let segment = wal.segments().pop().unwrap();
    assert_eq!(segment.allocated_bytes, SEGMENT_BYTES, "{segment:?}");
    assert_eq!(fs.read_file(&path).unwrap().len() as u64, SEGMENT_BYTES);
    assert_eq!(wal.append(b"ten again").unwrap(), 10);
}

#[test]
fn a_truncation_keeps_the_allocation() {
    let fs = SimFs::new();
    let (wal, _) = open_sim(&fs, SEGMENT_BYTES, RecoveryMode::TolerateTornTail).unwrap();
    for id in 1..=100 {
        wal.append(&payload(id, 60)).unwrap();
    }
    // Back into a sealed segment: it becomes the active one again, allocated.
    let sealed_last = wal.segments()[1].last_id.unwrap();
    wal.truncate_after(sealed_last - 3).unwrap();
    let segments = wal.segments();
    let active = segments.last().unwrap();
    assert_eq!(active.last_id, Some(sealed_last - 3), "{segments:?}");
    assert_eq!(active.allocated_bytes, SEGMENT_BYTES, "{active:?}");
    for id in sealed_last - 2..=sealed_last + 20 {
        assert_eq!(wal.append(&payload(id + 1000, 60)).unwrap(), id);
    }
    drop(wal);
    let (wal, report) = open_sim(&fs, SEGMENT_BYTES, RecoveryMode::Strict).unwrap();
    assert_eq!(report.last_id, Some(sealed_last + 20), "{report}");
    let records = collect(&wal, sealed_last - 3);
    assert_eq!(records[0].1, payload(sealed_last - 3, 60));
    assert_eq!(records[1].1, payload(sealed_last - 2 + 1000, 60));
}

#[test]
fn an_appending_segment_of_an_older_log_keeps_appending_then_rolls_into_preallocated_ones() {
    let fs = SimFs::new();
    let (wal, _) = open_sim(&fs, SEGMENT_BYTES, RecoveryMode::TolerateTornTail).unwrap();
    for id in 1..=5 {
        wal.append(&payload(id, 60)).unwrap();
    }
    drop(wal);
    let path = segment_files(&fs).pop().unwrap();
    let bytes = fs.read_file(&path).unwrap();
    fs.write_file_durably(&path, &as_appending_segment(&bytes))
        .unwrap();
    let (wal, report) = open_sim(&fs, SEGMENT_BYTES, RecoveryMode::Strict).unwrap();
    assert!(report.is_clean(), "{report}");
    wal.append(&payload(6, 60)).unwrap();
    let active = wal.segments().pop().unwrap();
    assert_eq!(active.allocated_bytes, active.size_bytes, "{active:?}");
    for id in 7..=100 {
        wal.append(&payload(id, 60)).unwrap();
    }
    drop(wal);
    let files = segment_files(&fs);
    assert!(!is_preallocated(&fs.read_file(&files[0]).unwrap()));
    assert!(is_preallocated(&fs.read_file(&files[1]).unwrap()));
    let (wal, report) = open_sim(&fs, SEGMENT_BYTES, RecoveryMode::Strict).unwrap();
    assert_eq!(report.last_id, Some(100), "{report}");
    assert_eq!(collect(&wal, 1).len(), 100);
}

#[test]
fn the_real_file_system_preallocates_too() {
    let dir = tempfile::tempdir().unwrap();
    let options = kv_wal::WalOptions {
        segment_bytes_max: 1 << 20,
        ..kv_wal::WalOptions::default()
    };
    let (wal, _) = Wal::open(dir.path(), options.clone()).unwrap();
    wal.append(b"one").unwrap();
    let segment = wal.segments().pop().unwrap();
    assert_eq!(segment.allocated_bytes, 1 << 20);
    assert_eq!(
        std::fs::metadata(&segment.path).unwrap().len(),
        1 << 20,
        "{segment:?}"
    );
    drop(wal);
    let (wal, report) = Wal::open(
        dir.path(),
        kv_wal::WalOptions {
            recovery_mode: RecoveryMode::Strict,
            ..options
        },
    )
    .unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(wal.read(1).unwrap().as_deref(), Some(&b"one"[..]));
}

#[test]
fn without_preallocation_segments_append_and_a_log_can_switch_either_way() {
    let fs = SimFs::new();
    let open = |segment_preallocation_bytes| {
        let options = WalOptions {
            segment_preallocation_bytes,
            recovery_mode: RecoveryMode::Strict,
            ..crate::support::sim_options(&fs, SEGMENT_BYTES)
        };
        Wal::open(crate::support::sim_dir(), options).unwrap()
    };
    let (wal, _) = open(0);
    for id in 1..=60 {
        wal.append(&payload(id, 60)).unwrap();
    }
    for segment in wal.segments() {
        assert_eq!(segment.allocated_bytes, segment.size_bytes, "{segment:?}");
    }
    drop(wal);
    for path in segment_files(&fs) {
        assert!(!is_preallocated(&fs.read_file(&path).unwrap()), "{path:?}");
    }
    // Preallocation turned on: the appending active segment goes on as it is; the next ones
    // are preallocated.
    let (wal, report) = open(SEGMENT_PREALLOCATION_BYTES_DEFAULT);
    assert!(report.is_clean(), "{report}");
    for id in 61..=120 {
        wal.append(&payload(id, 60)).unwrap();
    }
    drop(wal);
    assert!(is_preallocated(
        &fs.read_file(&segment_files(&fs).pop().unwrap()).unwrap()
    ));
    // And off again: a preallocated active segment keeps its free space, read as such.
    let (wal, report) = open(0);
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.last_id, Some(120), "{report}");
    for id in 121..=130 {
        wal.append(&payload(id, 60)).unwrap();
    }
    drop(wal);
    let (wal, report) = open(0);
    assert!(report.is_clean(), "{report}");
    let records = collect(&wal, 1);
    assert_eq!(records.len(), 130);
    for (id, bytes) in records {
        assert_eq!(bytes, payload(id, 60), "record {id}");
    }
}

/// One write a [`RecordingFs`] saw: the file, where, how long, and whether it was zeros
/// written ahead (`write_zeros`) or data.
#[derive(Debug, Clone)]
struct SeenWrite {
    path: std::path::PathBuf,
    offset: u64,
    len: u64,
    zeros: bool,
    /// The file's length when it was made.
    file_len: u64,
}

/// A file system that records every write of its files, forwarding everything to `inner`.
#[derive(Debug, Clone)]
struct RecordingFs {
    inner: SimFs,
    seen: std::sync::Arc<std::sync::Mutex<Vec<SeenWrite>>>,
}

#[derive(Debug)]
struct RecordingFile {
    inner: std::sync::Arc<dyn kv_wal::fs::WalFile>,
    path: std::path::PathBuf,
    seen: std::sync::Arc<std::sync::Mutex<Vec<SeenWrite>>>,
}

impl RecordingFile {
    fn record(&self, offset: u64, len: u64, zeros: bool) -> std::io::Result<()> {
        let file_len = self.inner.size_bytes()?;
        self.seen.lock().unwrap().push(SeenWrite {
            path: self.path.clone(),
            offset,
            len,
            zeros,
            file_len,
        });
        Ok(())
    }
}

impl kv_wal::fs::WalFile for RecordingFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        self.inner.read_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.record(offset, buf.len() as u64, false)?;
        self.inner.write_all_at(buf, offset)
    }
    fn write_zeros(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.record(offset, len, true)?;
        self.inner.write_zeros(offset, len)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.inner.sync_data()
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }
    fn size_bytes(&self) -> std::io::Result<u64> {
        self.inner.size_bytes()
    }
    fn allocate(&self, len: u64) -> std::io::Result<()> {
        self.inner.allocate(len)
    }
}

impl kv_wal::fs::FileSystem for RecordingFs {
    fn create_dir_all(&self, path: &std::path::Path) -> std::io::Result<()> {
        self.inner.create_dir_all(path)
    }
    fn list_dir(&self, path: &std::path::Path) -> std::io::Result<Vec<String>> {
        self.inner.list_dir(path)
    }
    fn open(
        &self,
        path: &std::path::Path,
    ) -> std::io::Result<std::sync::Arc<dyn kv_wal::fs::WalFile>> {
        Ok(std::sync::Arc::new(RecordingFile {
            inner: self.inner.open(path)?,
            path: path.to_owned(),
            seen: self.seen.clone(),
        }))
    }
    fn create_new(
        &self,
        path: &std::path::Path,
    ) -> std::io::Result<std::sync::Arc<dyn kv_wal::fs::WalFile>> {
        Ok(std::sync::Arc::new(RecordingFile {
            inner: self.inner.create_new(path)?,
            path: path.to_owned(),
            seen: self.seen.clone(),
        }))
    }
    fn remove_file(&self, path: &std::path::Path) -> std::io::Result<()> {
        self.inner.remove_file(path)
    }
    fn rename(&self, from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
        self.inner.rename(from, to)
    }
    fn sync_dir(&self, path: &std::path::Path) -> std::io::Result<()> {
        self.inner.sync_dir(path)
    }
    fn try_lock(&self, path: &std::path::Path) -> std::io::Result<Box<dyn kv_wal::fs::DirLock>> {
        self.inner.try_lock(path)
    }
}

/// The free space just past the data of a preallocated segment is written with zeros ahead
/// of the appends, a chunk at a time (so their `fdatasync`s land in written space, not in
/// "unwritten" extents each commit would convert): every zero write starts at or past every
/// byte of data written to that file so far and ends within the file, a log of 3 MiB in 1 KiB
/// records keeps at least 128 KiB of zeros ahead of its data after every append (or to the
/// end of the preallocation), the zeros are a small number of chunks, and a log without
/// preallocation writes none. What reopening finds is the same records.
#[test]
fn the_free_space_past_the_data_is_written_with_zeros_ahead_of_the_appends() {
    for preallocation in [8u64 << 20, 0] {
        let recording = RecordingFs {
            inner: SimFs::new(),
            seen: Default::default(),
        };
        let options = WalOptions {
            segment_preallocation_bytes: preallocation,
            file_system: std::sync::Arc::new(recording.clone()),
            ..crate::support::sim_options(&recording.inner, 64 << 20)
        };
        let (wal, _) = Wal::open(crate::support::sim_dir(), options.clone()).unwrap();
        let mut appended_through = Vec::new();
        for id in 1..=3072 {
            wal.append(&payload(id, 1024)).unwrap();
            let segment = wal.segments().pop().unwrap();
            appended_through.push((segment.size_bytes, segment.allocated_bytes));
        }
        drop(wal);
        let seen = recording.seen.lock().unwrap().clone();
        let zeros: Vec<&SeenWrite> = seen.iter().filter(|write| write.zeros).collect();
        if preallocation == 0 {
            assert!(zeros.is_empty(), "{zeros:?}");
            continue;
        }
        // Never over data, never past the file's end.
        let mut data_end = std::collections::HashMap::new();
        for write in &seen {
            let end = data_end.entry(write.path.clone()).or_insert(0u64);
            if write.zeros {
                assert!(
                    write.offset >= *end,
                    "zeros over data: {write:?}, data to {end}"
                );
                assert!(write.offset + write.len <= write.file_len, "{write:?}");
            } else {
                *end = (*end).max(write.offset + write.len);
            }
        }
        // Ahead of every append: the zeros cover 128 KiB past the data (or to the end).
        let mut zeroed_to = 0;
        let mut zero_writes = zeros.iter();
        for (size, allocated) in appended_through {
            while zeroed_to < (size + (128 << 10)).min(allocated) {
                let write = zero_writes.next().unwrap_or_else(|| {
                    panic!("no zeros ahead of data ending at {size} (zeroed to {zeroed_to})")
                });
                assert!(write.offset <= zeroed_to.max(size), "{write:?}");
                zeroed_to = write.offset + write.len;
            }
        }
        // In chunks of 128 KiB or more: 3 MiB of data, at most 24 chunks of zeros past it.
        assert!(zeros.len() <= 25, "{} zero writes", zeros.len());
        assert!(
            zeros.iter().all(|write| write.len >= 128 << 10),
            "{zeros:?}"
        );
        let (wal, report) = Wal::open(
            crate::support::sim_dir(),
            WalOptions {
                recovery_mode: RecoveryMode::Strict,
                ..options
            },
        )
        .unwrap();
        assert!(report.is_clean(), "{report}");
        assert_eq!(collect(&wal, 1).len(), 3072);
    }
}
