//! Opening a log (the builder): lock the directory, read or create its identity, recover the
//! segments, pick the active segment, start the committer, finish a truncation a crash
//! interrupted.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use rand::Rng;

use crate::append::{create_segment_file, room_left};
use crate::durability::Durability;
use crate::durable::{create_dir_all_durable, write_file_atomic};
use crate::error::{Error, IoContext, Result};
use crate::fs::{DirLock, FileSystem, WalFile};
use crate::meta::{
    decode_marker, decode_meta, encode_meta, read_small_file, LogMeta, LOCK_FILE, META_FILE,
    TRUNCATE_MARKER_FILE,
};
use crate::options::{SyncPolicy, WalOptions, SEGMENT_BYTES_MIN};
use crate::recovery::{self, Recovered};
use crate::report::{Dropped, RecoveryReport};
use crate::segment_file::{segment_path, SegmentHeader, SEGMENT_HEADER_BYTES};
use crate::segments::Segment;
use crate::shared::Shared;
use crate::stats::Stats;
use crate::wal::Wal;
use crate::watermark::Watermark;
use crate::writer::{NextId, Writer};

/// The segment appends go to after open, and where in it.
struct Active {
    segment: Arc<Segment>,
    file: Arc<dyn WalFile>,
    write_offset: u64,
}

impl Wal {
    /// Opens (or creates) the log in `dir`, recovering it under `options.recovery_mode`.
    ///
    /// Returns the log and a report of what recovery found and did. Fails with
    /// [`Error::Corrupt`] when the mode does not allow the damage found to be repaired, and
    /// with [`Error::Locked`] when another process holds the directory.
    pub fn open(dir: impl AsRef<Path>, options: WalOptions) -> Result<(Wal, RecoveryReport)> {
        let dir = dir.as_ref().to_owned();
        check_options(&options)?;
        let fs = options.file_system.clone();
        // A new directory is fsynced in its parent, or a power cut could lose it and the log.
        create_dir_all_durable(&*fs, &dir)?;
        let dir_lock = lock_dir(&*fs, &dir)?;
        let mut report = RecoveryReport {
            mode: options.recovery_mode,
            ..RecoveryReport::default()
        };
        let found = recovery::list_segments(&*fs, &dir, &mut report)?;
        let meta = read_or_create_meta(&*fs, &dir, found.is_empty(), &mut report)?;
        let log_id = meta.log_id;
        // A truncation a crash interrupted says up to which id the log held records: ids are
        // never handed out below it, even when the crash left no segment at all.
        let marker = read_small_file(&*fs, &dir.join(TRUNCATE_MARKER_FILE))?;
        let marked = marker.as_deref().and_then(decode_marker);
        // A marked truncation may have removed the newest segments on purpose.
        let newest_recorded = meta.newest_sequence.filter(|_| marker.is_none());
        let missing = missing_newest(&found, newest_recorded);
        if let Some(reason) = &missing {
            if !options.recovery_mode.may_lose_records() {
                return Err(recovery::corrupt(&dir.join(META_FILE), 0, reason.clone()));
            }
        }
        let rules = recovery::Rules {
            newest_recorded,
            ..recovery_rules(&options)
        };
        let recovered = recovery::recover(&*fs, log_id, &found, rules, &mut report)?;
        if let Some(reason) = missing {
            report.dropped.get_or_insert(Dropped {
                segment: dir.join(META_FILE),
                offset: 0,
                reason,
                records_dropped: 0,
                segments_removed: Vec::new(),
            });
        }
        let first_id = options
            .first_id
            .max(marked.map_or(0, |after_id| after_id + 1));
        // The newest segment that stays through `choose_active` is recorded before it
        // removes or creates any: an empty last one it replaces is not.
        let surviving = surviving_newest(&recovered);
        if meta.newest_sequence != Some(surviving) {
            write_file_atomic(&*fs, &dir, META_FILE, &encode_meta(log_id, surviving))?;
        }
        let (segments, active, next_id) = choose_active(
            &*fs,
            &dir,
            log_id,
            first_id,
            options.preallocated_segment_bytes(),
            recovered,
        )?;
        fs.sync_dir(&dir).at(&dir)?;
        let wal = start(&dir, &options, log_id, segments, active, next_id, dir_lock)?;
        wal.shared
            .newest_recorded
            .store(surviving, Ordering::Release);
        wal.finish_marked_truncation(&mut report)?;
        let active_sequence = wal.shared.writer().active.sequence;
        wal.shared.record_newest_sequence(active_sequence)?;
        report.segments = wal.shared.segments_read().len();
        report.first_id = wal.first_id();
        report.last_id = wal.last_id();
        report.next_id = wal.next_id();
        Ok((wal, report))
    }

    /// A truncation interrupted by a crash is finished before anything else.
    fn finish_marked_truncation(&self, report: &mut RecoveryReport) -> Result<()> {
        let shared = &self.shared;
        let marker_path = shared.dir.join(TRUNCATE_MARKER_FILE);
        if let Some(bytes) = read_small_file(&*shared.fs, &marker_path)? {
            if let Some(after_id) = decode_marker(&bytes) {
                self.truncate_after_inner(after_id)?;
                report.completed_truncation = Some(after_id);
            }
            shared.fs.remove_file(&marker_path).at(&marker_path)?;
            shared.fs.sync_dir(&shared.dir).at(&shared.dir)?;
        }
        Ok(())
    }
}

fn check_options(options: &WalOptions) -> Result<()> {
    if options.segment_bytes_max < SEGMENT_BYTES_MIN {
        return Err(Error::InvalidArgument(format!(
            "segment size {} is below the minimum of {SEGMENT_BYTES_MIN} bytes",
            options.segment_bytes_max
        )));
    }
    if options.sync_policy == SyncPolicy::Interval(std::time::Duration::ZERO) {
        // The committer would wake at once, over and over (`interval:0` does not parse).
        return Err(Error::InvalidArgument(
            "the interval of SyncPolicy::Interval must be above 0".to_owned(),
        ));
    }
    if options.first_id == 0 {
        return Err(Error::InvalidArgument(
            "ids start at 1; first_id 0 is invalid".to_owned(),
        ));
    }
    // The first record must fit (no id past `u64::MAX - 1`).
    crate::append::check_id_room(options.first_id, 1)
}

fn lock_dir(fs: &dyn FileSystem, dir: &Path) -> Result<Box<dyn DirLock>> {
    let lock_path = dir.join(LOCK_FILE);
    fs.try_lock(&lock_path).map_err(|error| match error.kind() {
        std::io::ErrorKind::WouldBlock => Error::Locked(dir.to_owned()),
        _ => Error::Io {
            path: lock_path.clone(),
            source: error,
        },
    })
}

/// Why the newest segments `wal.meta` records are not all there, if they are not: deleted or
/// lost files (a crash never removes a named segment), whose records may have been
/// acknowledged.
fn missing_newest(
    found: &[recovery::FoundSegment],
    newest_recorded: Option<u64>,
) -> Option<String> {
    let recorded = newest_recorded?;
    let newest_found = found.last().map_or(0, |segment| segment.sequence);
    (newest_found < recorded).then(|| {
        format!(
            "the newest segment(s), sequence {}..={recorded}, are missing: wal.meta records that \
             segment {recorded} was created (a deleted or lost file, not a crash)",
            newest_found + 1
        )
    })
}

/// The newest segment that survives [`choose_active`]: the last kept, unless it is empty and
/// unsealed (replaced by a new one of the same sequence); 0 for none.
fn surviving_newest(recovered: &Recovered) -> u64 {
    match recovered.segments.last() {
        Some(last) if last.last_id < last.first_id && !last.sealed => last.sequence - 1,
        Some(last) => last.sequence,
        None => 0,
    }
}

/// The log's identity (and newest segment) from `wal.meta`; a new one for a new log (no
/// segments yet).
fn read_or_create_meta(
    fs: &dyn FileSystem,
    dir: &Path,
    no_segments: bool,
    report: &mut RecoveryReport,
) -> Result<LogMeta> {
    let meta_path = dir.join(META_FILE);
    match read_small_file(fs, &meta_path)? {
        Some(bytes) => decode_meta(&bytes).ok_or_else(|| Error::Corrupt {
            segment: meta_path.clone(),
            offset: 0,
            reason: "the log's identity file is damaged".to_owned(),
        }),
        None if no_segments => {
            let log_id = rand::thread_rng().gen_range(1..u64::MAX);
            write_file_atomic(fs, dir, META_FILE, &encode_meta(log_id, 0))?;
            report.created = true;
            Ok(LogMeta {
                log_id,
                newest_sequence: Some(0),
            })
        }
        None => Err(Error::Corrupt {
            segment: meta_path,
            offset: 0,
            reason: "the log's identity file is missing but segments exist".to_owned(),
        }),
    }
}

/// Builds the segment list from what recovery kept and picks the active segment: the last
/// one, unless it is sealed or the ids must jump (then a new one). Returns the list, the active
/// segment and the next id.
fn choose_active(
    fs: &dyn FileSystem,
    dir: &Path,
    log_id: u64,
    first_id: u64,
    preallocated_segment_bytes: u64,
    recovered: Recovered,
) -> Result<(Vec<Arc<Segment>>, Active, u64)> {
    let Recovered {
        segments,
        max_id_seen,
        next_sequence,
    } = recovered;
    let mut segments: Vec<Arc<Segment>> = segments
        .into_iter()
        .map(|segment| Arc::new(Segment::from(segment)))
        .collect();
    let next_id = segments
        .last()
        .map_or(first_id, |segment| segment.last_id() + 1)
        .max(max_id_seen + 1);
    let reuse_last = segments
        .last()
        .is_some_and(|segment| !segment.is_sealed() && segment.last_id() + 1 == next_id);
    if reuse_last {
        let segment = segments.last().expect("segment").clone();
        let file = fs.open(&segment.path).at(&segment.path)?;
        if segment.preallocated {
            // Recovery may have cut it: appends go into allocated space again. A full disk
            // leaves it as long as it is (appends past its end grow it).
            match file.allocate(preallocated_segment_bytes) {
                Ok(()) => {
                    segment
                        .allocated_bytes
                        .fetch_max(preallocated_segment_bytes, Ordering::AcqRel);
                }
                Err(error) if crate::error::is_out_of_space(&error) => {}
                Err(error) => return Err(error).at(&segment.path),
            }
        }
        // Bytes a crashed process left in the page cache become durable before new ones go
        // after them (and the allocation with them).
        file.sync_data().at(&segment.path)?;
        let write_offset = segment.end_offset();
        let active = Active {
            segment,
            file,
            write_offset,
        };
        return Ok((segments, active, next_id));
    }
    // An empty, unsealed last segment is replaced by the new one.
    let mut sequence = next_sequence;
    if let Some(last) = segments.last() {
        if last.is_empty() && !last.sealed.load(Ordering::Acquire) {
            fs.remove_file(&last.path).at(&last.path)?;
            sequence = last.sequence;
            segments.pop();
        }
    }
    // What open replays must be durable before the log serves: a crash after a roll wrote the
    // seal but before its fdatasync leaves a sealed last segment whose bytes may still be only
    // in the page cache. (Segments before the last were fsynced before the next one was
    // created.)
    if let Some(last) = segments.last() {
        let file = fs.open(&last.path).at(&last.path)?;
        file.sync_data().at(&last.path)?;
    }
    let allocated_bytes = preallocated_segment_bytes;
    let header = SegmentHeader::new_active(log_id, sequence, next_id, allocated_bytes > 0);
    let path = segment_path(dir, sequence, next_id);
    let file = create_segment_file(fs, dir, &path, &header, allocated_bytes)?;
    let segment = Arc::new(Segment::empty(
        sequence,
        next_id,
        path,
        header.salt,
        allocated_bytes,
    ));
    segments.push(segment.clone());
    let active = Active {
        segment,
        file,
        write_offset: SEGMENT_HEADER_BYTES as u64,
    };
    Ok((segments, active, next_id))
}

/// Assembles the running log and starts its committer thread.
fn start(
    dir: &PathBuf,
    options: &WalOptions,
    log_id: u64,
    segments: Vec<Arc<Segment>>,
    active: Active,
    next_id: u64,
    dir_lock: Box<dyn DirLock>,
) -> Result<Wal> {
    // The last record the log holds: after a repair that dropped records, the next id is
    // above ids the log no longer has, and the watermarks must not claim them.
    let last_id = segments
        .iter()
        .rev()
        .find(|segment| !segment.is_empty())
        .map_or(active.segment.first_id - 1, |segment| segment.last_id());
    let next_sequence = active.segment.sequence + 1;
    let next_id = NextId::new(next_id);
    let published_next_id = next_id.published();
    let writer = Writer {
        next_id,
        pending: Vec::new(),
        pending_frames: Vec::new(),
        active: active.segment,
        active_file: active.file,
        next_sequence,
        write_offset: active.write_offset,
        zeroed_through: 0,
        commit_wanted: false,
        fsync_in_flight: false,
        leader: None,
        writing: false,
        settling: 0,
        leader_tokens: 0,
        always_ends: Default::default(),
        last_sync: Instant::now(),
        closed: false,
        mark_pending: false,
        last_mark_claim: 0,
        last_commit_released: 0,
        last_commit_end: Instant::now(),
        last_fsync: Duration::ZERO,
        gather_until: None,
    };
    let shared = Arc::new(Shared {
        dir: dir.clone(),
        fs: options.file_system.clone(),
        log_id,
        segment_bytes_max: options.segment_bytes_max,
        preallocated_segment_bytes: options.preallocated_segment_bytes(),
        compress_records_above: options.compress_records_above,
        compress_sealed_segments: options.compress_sealed_segments,
        sync_policy: options.sync_policy,
        recovery_mode: options.recovery_mode,
        inline_commit_when_idle: options.inline_commit_when_idle,
        writer: Mutex::new(writer),
        next_id: published_next_id,
        commit_needed: Condvar::new(),
        write_done: Condvar::new(),
        segments: RwLock::new(segments),
        last: Arc::new(Watermark::new(last_id)),
        active_room: AtomicU64::new(room_left(options.segment_bytes_max, active.write_offset, 0)),
        durability: Durability::new(last_id),
        out_of_space: Mutex::new(None),
        truncations: AtomicU64::new(0),
        maintenance: Mutex::new(()),
        compressing: Mutex::new(()),
        stats: Stats::default(),
        newest_recorded: AtomicU64::new(0),
        _lock: dir_lock,
    });
    let committer = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("kv-wal-commit".to_owned())
            .spawn(move || shared.run_committer())
            .at(dir)?
    };
    Ok(Wal {
        shared,
        committer: Mutex::new(Some(committer)),
    })
}

/// What recovery needs of the options.
fn recovery_rules(options: &WalOptions) -> recovery::Rules {
    recovery::Rules {
        mode: options.recovery_mode,
        refuse_whole_damaged_tail: options.refuse_whole_damaged_tail,
        needed_from: options.needed_from,
        newest_recorded: None,
    }
}
