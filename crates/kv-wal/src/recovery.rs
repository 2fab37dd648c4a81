//! Open-time recovery: find the segments, check them as the mode demands, repair what may be
//! repaired, and say what was done.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::compress::write_plain_segment;
use crate::compressed::{self, SegmentCodec, FOOTER_BYTES};
use crate::error::{Error, IoContext, Result};
use crate::fs::{read_exact_at, read_range, FileSystem, WalFile};
use crate::options::RecoveryMode;
use crate::report::{Dropped, Hole, RecoveryReport, TornTail};
use crate::segment::{
    self, decode_seal, scan, SegmentHeader, SkipRange, SparseIndex, SEAL_BYTES,
    SEGMENT_HEADER_BYTES,
};
use crate::wal::Segment;

/// A segment file found in the directory.
#[derive(Debug, Clone)]
pub(crate) struct FoundSegment {
    pub sequence: u64,
    pub first_id: u64,
    pub path: PathBuf,
    /// Named `.walz`: a compressed sealed segment.
    pub compressed: bool,
}

/// The segments kept, in order, and what was learned.
pub(crate) struct Recovered {
    pub segments: Vec<Arc<Segment>>,
    /// Highest id seen anywhere, kept or not (ids are never reused after damage).
    pub max_id_seen: u64,
    /// The sequence the next new segment must take.
    pub next_sequence: u64,
}

fn corrupt(segment: &Path, offset: u64, reason: impl Into<String>) -> Error {
    Error::Corrupt {
        segment: segment.to_owned(),
        offset,
        reason: reason.into(),
    }
}

/// Checks `found` (sorted by sequence) under `mode`, repairing per the mode.
pub(crate) fn recover(
    fs: &dyn FileSystem,
    log_id: u64,
    found: &[FoundSegment],
    mode: RecoveryMode,
    report: &mut RecoveryReport,
) -> Result<Recovered> {
    let mut kept: Vec<Arc<Segment>> = Vec::new();
    let mut max_id_seen = 0u64;
    let mut next_sequence = found.first().map_or(1, |first| first.sequence);
    for (position, entry) in found.iter().enumerate() {
        let is_last = position + 1 == found.len();
        let later: Vec<PathBuf> = found[position + 1..]
            .iter()
            .map(|s| s.path.clone())
            .collect();
        max_id_seen = max_id_seen.max(entry.first_id.saturating_sub(1));
        next_sequence = entry.sequence.saturating_add(1);
        let previous_last_id = kept.last().map(|segment| segment.last_id());

        // A gap in sequence numbers means a segment is missing.
        if let Some(previous) = position.checked_sub(1).map(|index| &found[index]) {
            if previous.sequence.checked_add(1) != Some(entry.sequence) {
                // Sorted by sequence: the same sequence twice, or a gap.
                let reason = if entry.sequence == previous.sequence {
                    format!("segment sequence {} appears twice", entry.sequence)
                } else {
                    format!(
                        "segment sequence {}..={} is missing",
                        previous.sequence + 1,
                        entry.sequence - 1
                    )
                };
                match mode {
                    RecoveryMode::Strict | RecoveryMode::TolerateTornTail => {
                        return Err(corrupt(&entry.path, 0, reason))
                    }
                    RecoveryMode::PointInTime => {
                        max_id_seen = max_id_seen.max(highest_id_in(fs, &found[position..]));
                        let removed =
                            remove_all(fs, std::iter::once(entry.path.clone()).chain(later))?;
                        report.dropped = Some(Dropped {
                            segment: entry.path.clone(),
                            offset: 0,
                            reason,
                            records_dropped: 0,
                            segments_removed: removed,
                        });
                        // The next segment closes the gap, or the next open would see it again
                        // and drop what was appended since.
                        next_sequence = previous.sequence.saturating_add(1);
                        break;
                    }
                    RecoveryMode::SkipCorrupt => {
                        let first_missing = previous_last_id.map_or(1, |last| last + 1);
                        report.holes.push(Hole {
                            segment: entry.path.clone(),
                            offset: 0,
                            first_missing_id: first_missing,
                            last_missing_id: entry.first_id.saturating_sub(1),
                            reason,
                        });
                    }
                }
            }
        }

        let file = fs.open(&entry.path).at(&entry.path)?;
        let file_len = file.size_bytes().at(&entry.path)?;
        let header_checked = check_header(&*file, file_len, log_id, entry, previous_last_id);
        if let Err(reason) = &header_checked {
            let reason = reason.clone();
            let torn_creation = is_last && file_len <= SEGMENT_HEADER_BYTES as u64;
            match mode {
                _ if torn_creation && mode != RecoveryMode::Strict => {
                    // A crash while a segment was being created: nothing in it was acknowledged.
                    drop(file);
                    fs.remove_file(&entry.path).at(&entry.path)?;
                    report.removed_files.push(entry.path.clone());
                    next_sequence = entry.sequence;
                    continue;
                }
                RecoveryMode::Strict | RecoveryMode::TolerateTornTail => {
                    return Err(corrupt(&entry.path, 0, reason));
                }
                RecoveryMode::PointInTime => {
                    drop(file);
                    max_id_seen = max_id_seen.max(highest_id_in(fs, &found[position..]));
                    let removed = remove_all(fs, std::iter::once(entry.path.clone()).chain(later))?;
                    report.dropped = Some(Dropped {
                        segment: entry.path.clone(),
                        offset: 0,
                        reason,
                        records_dropped: 0,
                        segments_removed: removed,
                    });
                    // The next segment takes the removed one's sequence (no gap to trip over).
                    next_sequence = entry.sequence;
                    break;
                }
                RecoveryMode::SkipCorrupt => {
                    let first_missing = previous_last_id.map_or(1, |last| last + 1);
                    let next_first = found
                        .get(position + 1)
                        .map_or(first_missing, |next| next.first_id);
                    report.holes.push(Hole {
                        segment: entry.path.clone(),
                        offset: 0,
                        first_missing_id: first_missing,
                        last_missing_id: next_first.saturating_sub(1),
                        reason: format!("{reason}; segment skipped"),
                    });
                    continue;
                }
            }
        }

        if let Ok(
            header @ SegmentHeader {
                codec: Some(codec), ..
            },
        ) = header_checked
        {
            let (segment, stop) = recover_compressed(
                fs,
                CompressedEntry {
                    file,
                    file_len,
                    header,
                    codec,
                    entry,
                    later: &found[position + 1..],
                    is_last,
                },
                mode,
                report,
                &mut max_id_seen,
            )?;
            kept.push(segment);
            if stop {
                next_sequence = entry.sequence + 1;
                break;
            }
            continue;
        }

        // Sealed segments are trusted to their seal unless the mode scans everything.
        if !is_last
            && !mode.scans_all_segments()
            && file_len >= (SEGMENT_HEADER_BYTES + SEAL_BYTES) as u64
        {
            let mut tail = [0u8; SEAL_BYTES];
            read_exact_at(&*file, &mut tail, file_len - SEAL_BYTES as u64).at(&entry.path)?;
            if let Some(seal) = decode_seal(&tail, entry.first_id) {
                report.records += seal.record_count;
                max_id_seen = max_id_seen.max(seal.last_id);
                kept.push(Arc::new(Segment::new(
                    entry.sequence,
                    entry.first_id,
                    entry.path.clone(),
                    seal.last_id,
                    file_len - SEAL_BYTES as u64,
                    file_len,
                    true,
                    None,
                )));
                continue;
            }
        }

        let bytes = read_range(&*file, 0, file_len).at(&entry.path)?;
        let result = scan(&bytes, entry.first_id);
        report.segments_scanned += 1;
        max_id_seen = max_id_seen.max(result.all_last_id.unwrap_or(0));
        let mut index = result.index.clone();
        let first_damage = result.damages.first().cloned();
        let mut end = result.clean_end;
        let mut last_id = result.clean_last_id;
        let mut records = result.clean_records;
        let mut skips = Vec::new();
        let mut sealed = result.sealed && first_damage.is_none();
        let mut stop_after_this = false;

        if let Some(damage) = &first_damage {
            let not_a_tail = damage.resume.is_some();
            match mode {
                RecoveryMode::Strict => {
                    return Err(corrupt(&entry.path, damage.offset, damage.reason.clone()));
                }
                RecoveryMode::TolerateTornTail => {
                    if not_a_tail || !is_last {
                        let why = if is_last {
                            "valid records follow it, so it is not a torn tail"
                        } else {
                            "it is not in the last segment, so it is not a torn tail"
                        };
                        return Err(corrupt(
                            &entry.path,
                            damage.offset,
                            format!("{} ({why})", damage.reason),
                        ));
                    }
                }
                RecoveryMode::PointInTime if is_last && !not_a_tail => {}
                RecoveryMode::PointInTime => {
                    index.truncate_after(last_id.unwrap_or(0));
                    max_id_seen = max_id_seen.max(highest_id_in(fs, &found[position + 1..]));
                    let removed = remove_all(fs, later)?;
                    report.dropped = Some(Dropped {
                        segment: entry.path.clone(),
                        offset: damage.offset,
                        reason: damage.reason.clone(),
                        records_dropped: result.all_records - result.clean_records,
                        segments_removed: removed,
                    });
                    stop_after_this = true;
                }
                RecoveryMode::SkipCorrupt => {
                    let mut good_before =
                        previous_last_id.unwrap_or(entry.first_id.saturating_sub(1));
                    if let Some(id) = result.clean_last_id {
                        good_before = id;
                    }
                    for damage in &result.damages {
                        match damage.resume {
                            Some((offset, id)) => {
                                report.holes.push(Hole {
                                    segment: entry.path.clone(),
                                    offset: damage.offset,
                                    first_missing_id: good_before + 1,
                                    last_missing_id: id - 1,
                                    reason: damage.reason.clone(),
                                });
                                if offset > damage.offset {
                                    skips.push(SkipRange {
                                        from: damage.offset,
                                        to: offset,
                                    });
                                }
                                good_before = id;
                            }
                            None if !is_last => {
                                let next_first = found[position + 1].first_id;
                                report.holes.push(Hole {
                                    segment: entry.path.clone(),
                                    offset: damage.offset,
                                    first_missing_id: good_before + 1,
                                    last_missing_id: next_first.saturating_sub(1),
                                    reason: damage.reason.clone(),
                                });
                            }
                            None => {}
                        }
                    }
                    end = result.all_end;
                    last_id = result.all_last_id;
                    records = result.all_records;
                    sealed = result.sealed;
                }
            }
        }

        // What is past `end` in the last segment (or after the damage we stop at) is cut.
        let keep_until = if sealed {
            file_len - SEAL_BYTES as u64
        } else {
            end
        };
        if !sealed && end < file_len && (is_last || stop_after_this) {
            file.set_len(end).at(&entry.path)?;
            file.sync_data().at(&entry.path)?;
            if report.dropped.is_none() {
                let reason = first_damage
                    .as_ref()
                    .map(|damage| {
                        let mut reason = damage.reason.clone();
                        if damage.zeroed_to_end {
                            reason.push_str(" (zero-filled to the end)");
                        }
                        reason
                    })
                    .or_else(|| result.damages.last().map(|damage| damage.reason.clone()))
                    .unwrap_or_else(|| "incomplete tail".to_owned());
                report.torn_tail = Some(TornTail {
                    segment: entry.path.clone(),
                    offset: end,
                    bytes_dropped: file_len - end,
                    reason,
                });
            }
        }
        report.records += records;
        let last_id = last_id.unwrap_or(entry.first_id - 1);
        let file_len_now = if sealed {
            file_len
        } else {
            keep_until.max(end)
        };
        kept.push(Arc::new(Segment::new(
            entry.sequence,
            entry.first_id,
            entry.path.clone(),
            last_id,
            if sealed { keep_until } else { end },
            file_len_now,
            sealed || (!is_last && !stop_after_this),
            Some((index, skips)),
        )));
        if stop_after_this {
            next_sequence = entry.sequence + 1;
            break;
        }
    }
    Ok(Recovered {
        segments: kept,
        max_id_seen,
        next_sequence,
    })
}

fn check_header(
    file: &dyn WalFile,
    file_len: u64,
    log_id: u64,
    entry: &FoundSegment,
    previous_last_id: Option<u64>,
) -> std::result::Result<SegmentHeader, String> {
    let mut bytes = [0u8; SEGMENT_HEADER_BYTES];
    if file_len < SEGMENT_HEADER_BYTES as u64 {
        return Err(format!(
            "file is {file_len} bytes, shorter than a segment header"
        ));
    }
    read_exact_at(file, &mut bytes, 0).map_err(|error| format!("reading the header: {error}"))?;
    let header = SegmentHeader::decode(&bytes)?;
    if header.codec.is_some() != entry.compressed {
        return Err(if entry.compressed {
            "a .walz file with a plain segment header".to_owned()
        } else {
            "a .wal file with a compressed segment header".to_owned()
        });
    }
    if header.log_id != log_id {
        return Err(format!(
            "segment belongs to another log (log id {:#018x}, this log is {log_id:#018x})",
            header.log_id
        ));
    }
    if header.sequence != entry.sequence || header.first_id != entry.first_id {
        return Err(format!(
            "header says sequence {} first id {}, the file name says sequence {} first id {}",
            header.sequence, header.first_id, entry.sequence, entry.first_id
        ));
    }
    if header.first_id == 0 {
        return Err("first id 0 is not a valid id".to_owned());
    }
    if let Some(previous) = previous_last_id {
        if header.first_id <= previous {
            return Err(format!(
                "first id {} overlaps the previous segment, which ends at id {previous}",
                header.first_id
            ));
        }
    }
    Ok(header)
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
        let codec = SegmentHeader::decode(&bytes)
            .ok()
            .and_then(|header| header.codec);
        let last = match codec {
            Some(codec) => {
                let scanned = compressed::scan(&bytes, segment.first_id, codec);
                scanned.layout.last_id().max(scanned.footer_last_id)
            }
            None => scan(&bytes, segment.first_id).all_last_id,
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

/// Lists the segment files in `dir`, sorted by sequence, removing leftover temporaries.
pub(crate) fn list_segments(
    fs: &dyn FileSystem,
    dir: &Path,
    report: &mut RecoveryReport,
) -> Result<Vec<FoundSegment>> {
    let mut found = Vec::new();
    for name in fs.list_dir(dir).at(dir)? {
        if name.ends_with(".tmp") {
            let path = dir.join(&name);
            fs.remove_file(&path).at(&path)?;
            report.removed_files.push(path);
            continue;
        }
        if let Some((sequence, first_id, compressed)) = segment::parse_segment_file_name(&name) {
            found.push(FoundSegment {
                sequence,
                first_id,
                path: dir.join(name),
                compressed,
            });
        }
    }
    // Plain before compressed for the same segment.
    found.sort_by_key(|segment| (segment.sequence, segment.compressed));
    // A crash while a segment was being compressed (or rewritten plain) can leave both files:
    // the plain one is kept, always. Both hold the same records up to where the plain one ends,
    // and a plain file only replaces a compressed one when a truncation or repair cut it.
    let mut kept: Vec<FoundSegment> = Vec::with_capacity(found.len());
    for segment in found {
        let twin = kept.last().is_some_and(|plain| {
            plain.sequence == segment.sequence
                && plain.first_id == segment.first_id
                && !plain.compressed
                && segment.compressed
        });
        if twin {
            fs.remove_file(&segment.path).at(&segment.path)?;
            report.removed_files.push(segment.path);
            continue;
        }
        kept.push(segment);
    }
    Ok(kept)
}

/// An index over one segment, built by scanning it (for sealed segments not scanned at open).
pub(crate) fn build_index(file: &dyn WalFile, segment: &Segment) -> Result<SparseIndex> {
    let end = segment.end_offset();
    let bytes = read_range(file, 0, end).at(&segment.path)?;
    let result = scan(&bytes, segment.first_id);
    if let Some(damage) = result.damages.first() {
        return Err(corrupt(&segment.path, damage.offset, damage.reason.clone()));
    }
    if result.clean_last_id.unwrap_or(segment.first_id - 1) != segment.last_id() {
        return Err(corrupt(
            &segment.path,
            result.clean_end,
            format!(
                "segment ends at id {:?} but its seal says {}",
                result.clean_last_id,
                segment.last_id()
            ),
        ));
    }
    Ok(result.index)
}

/// A compressed segment found at open, its header checked.
struct CompressedEntry<'a> {
    file: Arc<dyn WalFile>,
    file_len: u64,
    header: SegmentHeader,
    codec: SegmentCodec,
    entry: &'a FoundSegment,
    /// The segments after it.
    later: &'a [FoundSegment],
    is_last: bool,
}

/// Recovers one compressed segment under `mode`: returns the segment to keep and whether open
/// stops after it (`PointInTime` dropped what follows).
///
/// A compressed segment is never a torn tail (it was fsynced before it got its name), so any
/// damage in it is refused by `Strict` and `TolerateTornTail`. `PointInTime` rewrites the
/// blocks before the damage as a plain, unsealed segment and removes the later segments;
/// `SkipCorrupt` keeps the file and leaves the damaged blocks out of the readable layout.
fn recover_compressed(
    fs: &dyn FileSystem,
    found: CompressedEntry<'_>,
    mode: RecoveryMode,
    report: &mut RecoveryReport,
    max_id_seen: &mut u64,
) -> Result<(Arc<Segment>, bool)> {
    let CompressedEntry {
        file,
        file_len,
        header,
        codec,
        entry,
        later,
        is_last,
    } = found;
    let path = &entry.path;
    if !mode.scans_all_segments() {
        if let Ok(layout) = read_layout(&*file, file_len, entry.first_id, codec) {
            report.records += layout.record_count();
            *max_id_seen = (*max_id_seen).max(layout.last_id().unwrap_or(0));
            let segment = Segment::new_compressed(
                entry.sequence,
                entry.first_id,
                path.clone(),
                layout,
                file_len,
            );
            return Ok((Arc::new(segment), false));
        }
    }
    let bytes = read_range(&*file, 0, file_len).at(path)?;
    drop(file);
    let scanned = compressed::scan(&bytes, entry.first_id, codec);
    report.segments_scanned += 1;
    let all_last_id = scanned.layout.last_id().max(scanned.footer_last_id);
    *max_id_seen = (*max_id_seen).max(all_last_id.unwrap_or(0));
    // The segment kept as it is, with what its blocks hold.
    let keep = |report: &mut RecoveryReport, layout: compressed::CompressedLayout| {
        report.records += layout.record_count();
        let segment = Segment::new_compressed(
            entry.sequence,
            entry.first_id,
            path.clone(),
            layout,
            file_len,
        );
        (Arc::new(segment), false)
    };
    let Some(damage) = scanned.damages.first().cloned() else {
        return Ok(keep(report, scanned.layout));
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    match mode {
        RecoveryMode::Strict | RecoveryMode::TolerateTornTail => Err(corrupt(
            path,
            damage.offset,
            format!("{} (in a compressed segment)", damage.reason),
        )),
        RecoveryMode::PointInTime if scanned.only_index_damaged => {
            // Every record reads; only the index is bad. Keep them all, as a plain segment.
            let last_id = scanned.clean_last_id().expect("blocks read");
            let rewrite =
                write_plain_segment(fs, dir, header, &scanned.clean_frames, Some(last_id))?;
            fs.remove_file(path).at(path)?;
            report.removed_files.push(path.clone());
            report.records += scanned.clean_records();
            let image_len = rewrite.image.len() as u64;
            let index = scan(&rewrite.image, entry.first_id).index;
            let segment = Segment::new(
                entry.sequence,
                entry.first_id,
                rewrite.path,
                last_id,
                image_len - SEAL_BYTES as u64,
                image_len,
                true,
                Some((index, Vec::new())),
            );
            Ok((Arc::new(segment), false))
        }
        RecoveryMode::PointInTime => {
            *max_id_seen = (*max_id_seen).max(highest_id_in(fs, later));
            let removed = remove_all(fs, later.iter().map(|later| later.path.clone()))?;
            let rewrite = write_plain_segment(fs, dir, header, &scanned.clean_frames, None)?;
            fs.remove_file(path).at(path)?;
            let last_id = scanned.clean_last_id().unwrap_or(entry.first_id - 1);
            report.records += scanned.clean_records();
            report.dropped = Some(Dropped {
                segment: path.clone(),
                offset: damage.offset,
                reason: damage.reason.clone(),
                records_dropped: all_last_id.unwrap_or(last_id).saturating_sub(last_id),
                segments_removed: removed,
            });
            let image_len = rewrite.image.len() as u64;
            let index = scan(&rewrite.image, entry.first_id).index;
            let segment = Segment::new(
                entry.sequence,
                entry.first_id,
                rewrite.path,
                last_id,
                image_len,
                image_len,
                false,
                Some((index, Vec::new())),
            );
            Ok((Arc::new(segment), true))
        }
        RecoveryMode::SkipCorrupt => {
            for damage in &scanned.damages {
                let last_missing_id = match damage.resume {
                    Some((_, id)) => id - 1,
                    None => scanned
                        .footer_last_id
                        .or_else(|| {
                            later
                                .first()
                                .filter(|_| !is_last)
                                .map(|next| next.first_id.saturating_sub(1))
                        })
                        .unwrap_or(damage.first_missing_id - 1),
                };
                report.holes.push(Hole {
                    segment: path.clone(),
                    offset: damage.offset,
                    first_missing_id: damage.first_missing_id,
                    last_missing_id,
                    reason: damage.reason.clone(),
                });
            }
            Ok(keep(report, scanned.layout))
        }
    }
}

/// The layout of a compressed segment from its footer and index alone (no block is read).
pub(crate) fn read_layout(
    file: &dyn WalFile,
    file_len: u64,
    first_id: u64,
    codec: SegmentCodec,
) -> std::result::Result<compressed::CompressedLayout, String> {
    if file_len < (SEGMENT_HEADER_BYTES + FOOTER_BYTES) as u64 {
        return Err("file too short for a compressed segment".to_owned());
    }
    let mut footer = [0u8; FOOTER_BYTES];
    read_exact_at(file, &mut footer, file_len - FOOTER_BYTES as u64)
        .map_err(|error| format!("reading the footer: {error}"))?;
    let index_offset = u64::from_le_bytes(footer[8..16].try_into().expect("8 bytes"));
    if index_offset < SEGMENT_HEADER_BYTES as u64 || index_offset > file_len - FOOTER_BYTES as u64 {
        return Err("the footer's index offset is outside the file".to_owned());
    }
    let tail = read_range(file, index_offset, file_len - index_offset)
        .map_err(|error| format!("reading the index: {error}"))?;
    compressed::decode_layout(&tail, index_offset, file_len, first_id, codec)
}
