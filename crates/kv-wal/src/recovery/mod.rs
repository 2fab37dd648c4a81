//! Open-time recovery: find the segments, classify what is wrong with each into a [`Damage`],
//! let [`decide`] say what the mode does about it, repair, and say what was done.
//!
//! Recovery hands back plain descriptions of the segments it kept ([`RecoveredSegment`]); the
//! running log builds its own types from them.

mod compressed;
mod decide;
mod listing;
mod plain;

use std::path::{Path, PathBuf};

use crate::compressed_format::CompressedLayout;
use crate::compressed_scan;
use crate::error::Malformed;
use crate::error::{Error, IoContext, Result};
use crate::fs::{read_exact_at, read_range, FileSystem, WalFile};
use crate::options::RecoveryMode;
use crate::report::{Dropped, Hole, RecoveryReport};
use crate::segment_file::{SegmentHeader, SEGMENT_HEADER_BYTES};
use crate::segment_scan::{scan, SkipRange, SparseIndex};

use decide::{decide, Action, Damage, Position};
pub(crate) use listing::{list_segments, FoundSegment};

/// A segment recovery kept, as it found (or repaired) it.
#[derive(Debug)]
pub(crate) struct RecoveredSegment {
    pub sequence: u64,
    pub first_id: u64,
    pub path: PathBuf,
    /// Last record id (`first_id - 1` when empty).
    pub last_id: u64,
    /// End of the last readable frame.
    pub end_offset: u64,
    /// Bytes of data in the file, seal included (the free space of a preallocated segment
    /// excluded).
    pub file_bytes: u64,
    /// The file's length: `file_bytes` plus the free space of a preallocated segment.
    pub allocated_bytes: u64,
    pub sealed: bool,
    /// The index over its frames, when it was scanned (`None`: built on first read).
    pub index: Option<SparseIndex>,
    /// Damaged regions readers jump over (`SkipCorrupt`).
    pub skips: Vec<SkipRange>,
    /// The blocks of a compressed segment.
    pub compressed: Option<CompressedLayout>,
    /// The salt of its frames' CRCs, from its header.
    pub salt: u32,
    /// Created preallocated (format version 5): zeros after its data are free space.
    pub preallocated: bool,
}

impl RecoveredSegment {
    /// A compressed segment, as its layout describes it.
    pub(crate) fn compressed(
        sequence: u64,
        first_id: u64,
        path: PathBuf,
        layout: CompressedLayout,
        file_bytes: u64,
        salt: u32,
    ) -> Self {
        RecoveredSegment {
            sequence,
            first_id,
            path,
            last_id: layout.last_id().unwrap_or(first_id - 1),
            end_offset: file_bytes,
            file_bytes,
            allocated_bytes: file_bytes,
            sealed: true,
            index: None,
            skips: Vec::new(),
            compressed: Some(layout),
            salt,
            preallocated: false,
        }
    }
}

/// The segments kept, in order, and what was learned.
pub(crate) struct Recovered {
    pub segments: Vec<RecoveredSegment>,
    /// Highest id seen anywhere, kept or not (ids are never reused after damage).
    pub max_id_seen: u64,
    /// The sequence the next new segment must take.
    pub next_sequence: u64,
}

/// Whether recovery goes on with the next segment.
enum Step {
    Next,
    Stop,
}

/// One recovery run over the segments found.
struct Recovery<'a> {
    fs: &'a dyn FileSystem,
    log_id: u64,
    mode: RecoveryMode,
    /// [`crate::WalOptions::refuse_whole_damaged_tail`].
    refuse_whole_damaged_tail: bool,
    /// [`crate::WalOptions::needed_from`].
    needed_from: u64,
    /// [`Rules::newest_recorded`].
    newest_recorded: Option<u64>,
    found: &'a [FoundSegment],
    report: &'a mut RecoveryReport,
    kept: Vec<RecoveredSegment>,
    max_id_seen: u64,
    next_sequence: u64,
}

pub(crate) fn corrupt(segment: &Path, offset: u64, reason: impl Into<String>) -> Error {
    Error::Corrupt {
        segment: segment.to_owned(),
        offset,
        reason: reason.into(),
    }
}

/// The options that decide what recovery does about damage.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rules {
    pub mode: RecoveryMode,
    pub refuse_whole_damaged_tail: bool,
    /// [`crate::WalOptions::needed_from`].
    pub needed_from: u64,
    /// The newest segment `wal.meta` records as created (`None`: not recorded, or a marked
    /// truncation may have removed segments): a segment at or below it was whole once, so a
    /// bad header there is damage, never a torn creation.
    pub newest_recorded: Option<u64>,
}

/// Checks `found` (sorted by sequence) under `rules`, repairing per the mode.
pub(crate) fn recover(
    fs: &dyn FileSystem,
    log_id: u64,
    found: &[FoundSegment],
    rules: Rules,
    report: &mut RecoveryReport,
) -> Result<Recovered> {
    let mut recovery = Recovery {
        fs,
        log_id,
        mode: rules.mode,
        refuse_whole_damaged_tail: rules.refuse_whole_damaged_tail,
        needed_from: rules.needed_from,
        newest_recorded: rules.newest_recorded,
        found,
        report,
        kept: Vec::new(),
        max_id_seen: 0,
        next_sequence: found.first().map_or(1, |first| first.sequence),
    };
    for index in 0..found.len() {
        if let Step::Stop = recovery.segment(index)? {
            break;
        }
    }
    Ok(Recovered {
        segments: recovery.kept,
        max_id_seen: recovery.max_id_seen,
        next_sequence: recovery.next_sequence,
    })
}

impl Recovery<'_> {
    fn position(&self, index: usize) -> Position {
        if index + 1 == self.found.len() {
            Position::Last
        } else {
            Position::Earlier
        }
    }

    fn previous_last_id(&self) -> Option<u64> {
        self.kept.last().map(|segment| segment.last_id)
    }

    fn see_id(&mut self, id: u64) {
        self.max_id_seen = self.max_id_seen.max(id);
    }

    /// Classifies and recovers `found[index]`.
    fn segment(&mut self, index: usize) -> Result<Step> {
        let entry = &self.found[index];
        self.see_id(entry.first_id.saturating_sub(1));
        self.next_sequence = entry.sequence.saturating_add(1);
        if let Some(reason) = sequence_gap(self.found, index) {
            if let Some(step) = self.whole_segment_damage(index, Damage::SequenceGap, reason)? {
                return Ok(step);
            }
        }
        let file = self.fs.open(&entry.path).at(&entry.path)?;
        let file_len = file.size_bytes().at(&entry.path)?;
        let previous_last_id = self.previous_last_id();
        let header = match check_header(&*file, file_len, self.log_id, entry, previous_last_id) {
            Ok(header) => header,
            Err(reason) => {
                // A crash while the segment was created: no longer than its header, or (a
                // preallocated one) nothing but zeros after it. Either way it holds no record.
                // Not one `wal.meta` records as created: that one was whole once, and is
                // damaged now (deleted data, a zeroed file), its records maybe acknowledged.
                let torn_creation = self.position(index) == Position::Last
                    && self
                        .newest_recorded
                        .is_none_or(|recorded| entry.sequence > recorded)
                    && (file_len <= SEGMENT_HEADER_BYTES as u64
                        || zeros_after_header(&*file, file_len).at(&entry.path)?);
                drop(file);
                let damage = Damage::BadHeader { torn_creation };
                let step = self.whole_segment_damage(index, damage, reason.to_string())?;
                return Ok(step.unwrap_or(Step::Next));
            }
        };
        match header.codec {
            Some(codec) => self.compressed_segment(index, file, file_len, header, codec),
            None => self.plain_segment(index, file, file_len, header),
        }
    }

    /// Damage to a segment as a whole (a gap before it, its header). `None`: the segment is
    /// still read (a hole was reported for the gap before it).
    fn whole_segment_damage(
        &mut self,
        index: usize,
        damage: Damage,
        reason: String,
    ) -> Result<Option<Step>> {
        let entry = &self.found[index];
        match decide(self.mode, damage, self.position(index)) {
            Action::RemoveFile => {
                // A crash while a segment was being created: nothing in it was acknowledged.
                self.fs.remove_file(&entry.path).at(&entry.path)?;
                self.report.removed_files.push(entry.path.clone());
                self.next_sequence = entry.sequence;
                Ok(Some(Step::Next))
            }
            Action::DropFromHere => {
                let highest = highest_id_in(self.fs, &self.found[index..]);
                self.see_id(highest);
                let paths = self.found[index..].iter().map(|later| later.path.clone());
                let removed = remove_all(self.fs, paths)?;
                self.report.dropped = Some(Dropped {
                    segment: entry.path.clone(),
                    offset: 0,
                    reason,
                    records_dropped: 0,
                    segments_removed: removed,
                });
                // The next segment takes up the sequence where the kept ones end, or the next
                // open would see a gap again and drop what was appended since.
                self.next_sequence = match damage {
                    Damage::SequenceGap => self.found[index - 1].sequence.saturating_add(1),
                    _ => entry.sequence,
                };
                Ok(Some(Step::Stop))
            }
            Action::SkipOver => {
                let first_missing_id = self.previous_last_id().map_or(1, |last| last + 1);
                if damage == Damage::SequenceGap {
                    self.report.holes.push(Hole {
                        segment: entry.path.clone(),
                        offset: 0,
                        first_missing_id,
                        last_missing_id: entry.first_id.saturating_sub(1),
                        reason,
                    });
                    return Ok(None);
                }
                let next_first = self
                    .found
                    .get(index + 1)
                    .map_or(first_missing_id, |next| next.first_id);
                self.report.holes.push(Hole {
                    segment: entry.path.clone(),
                    offset: 0,
                    first_missing_id,
                    last_missing_id: next_first.saturating_sub(1),
                    reason: format!("{reason}; segment skipped"),
                });
                Ok(Some(Step::Next))
            }
            Action::Refuse | Action::CutTail | Action::RewritePlain | Action::Fence => {
                Err(corrupt(&entry.path, 0, reason))
            }
        }
    }

    /// Removes the segments after `found[index]` (newest first), counting their ids as seen.
    fn remove_later(&mut self, index: usize) -> Result<Vec<PathBuf>> {
        let later = &self.found[index + 1..];
        let highest = highest_id_in(self.fs, later);
        self.see_id(highest);
        remove_all(self.fs, later.iter().map(|segment| segment.path.clone()))
    }
}

/// Why `found[index]` does not follow the segment found before it, if it does not.
fn sequence_gap(found: &[FoundSegment], index: usize) -> Option<String> {
    let previous = &found[index.checked_sub(1)?];
    let entry = &found[index];
    if previous.sequence.checked_add(1) == Some(entry.sequence) {
        return None;
    }
    // Sorted by sequence: the same sequence twice, or a gap.
    Some(if entry.sequence == previous.sequence {
        format!("segment sequence {} appears twice", entry.sequence)
    } else {
        format!(
            "segment sequence {}..={} is missing",
            previous.sequence + 1,
            entry.sequence - 1
        )
    })
}

fn check_header(
    file: &dyn WalFile,
    file_len: u64,
    log_id: u64,
    entry: &FoundSegment,
    previous_last_id: Option<u64>,
) -> std::result::Result<SegmentHeader, Malformed> {
    let mut bytes = [0u8; SEGMENT_HEADER_BYTES];
    if file_len < SEGMENT_HEADER_BYTES as u64 {
        return Err(format!("file is {file_len} bytes, shorter than a segment header").into());
    }
    read_exact_at(file, &mut bytes, 0)
        .map_err(|error| Malformed::from(format!("reading the header: {error}")))?;
    let header = SegmentHeader::decode(&bytes)?;
    if header.codec.is_some() != entry.compressed {
        return Err(if entry.compressed {
            "a .walz file with a plain segment header".into()
        } else {
            "a .wal file with a compressed segment header".into()
        });
    }
    if header.log_id != log_id {
        return Err(format!(
            "segment belongs to another log (log id {:#018x}, this log is {log_id:#018x})",
            header.log_id
        )
        .into());
    }
    if header.sequence != entry.sequence || header.first_id != entry.first_id {
        return Err(format!(
            "header says sequence {} first id {}, the file name says sequence {} first id {}",
            header.sequence, header.first_id, entry.sequence, entry.first_id
        )
        .into());
    }
    if header.first_id == 0 {
        return Err("first id 0 is not a valid id".into());
    }
    if let Some(previous) = previous_last_id {
        if header.first_id <= previous {
            return Err(format!(
                "first id {} overlaps the previous segment, which ends at id {previous}",
                header.first_id
            )
            .into());
        }
    }
    Ok(header)
}

/// Whether every byte of the file after the header is zero.
fn zeros_after_header(file: &dyn WalFile, file_len: u64) -> std::io::Result<bool> {
    const CHUNK_BYTES: u64 = 1 << 20;
    let mut offset = SEGMENT_HEADER_BYTES as u64;
    while offset < file_len {
        let chunk = read_range(file, offset, CHUNK_BYTES.min(file_len - offset))?;
        if chunk.is_empty() {
            break;
        }
        if chunk.iter().any(|&byte| byte != 0) {
            return Ok(false);
        }
        offset += chunk.len() as u64;
    }
    Ok(true)
}

/// The highest id in segments about to be dropped (so ids are never reused after them): the
/// last valid record of each, or at least its first id from the name.
fn highest_id_in(fs: &dyn FileSystem, segments: &[FoundSegment]) -> u64 {
    let mut highest = 0;
    for segment in segments {
        highest = highest.max(segment.first_id.saturating_sub(1));
        let Ok(file) = fs.open(&segment.path) else {
            continue;
        };
        let Ok(len) = file.size_bytes() else { continue };
        let Ok(bytes) = read_range(&*file, 0, len) else {
            continue;
        };
        let header = SegmentHeader::decode(&bytes).ok();
        let salt = header.map_or(0, |header| header.salt);
        let free_tail = header.is_some_and(|header| header.preallocated);
        let last = match header.and_then(|header| header.codec) {
            Some(codec) => {
                let scanned = compressed_scan::scan(&bytes, segment.first_id, codec, salt);
                scanned.layout.last_id().max(scanned.footer_last_id)
            }
            None => scan(&bytes, segment.first_id, salt, free_tail).all_last_id,
        };
        highest = highest.max(last.unwrap_or(0));
    }
    highest
}

fn remove_all(
    fs: &dyn FileSystem,
    paths: impl IntoIterator<Item = PathBuf>,
) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let paths: Vec<PathBuf> = paths.into_iter().collect();
    // Newest first, so a crash leaves a prefix of the log.
    for path in paths.into_iter().rev() {
        fs.remove_file(&path).at(&path)?;
        removed.push(path);
    }
    removed.reverse();
    Ok(removed)
}
