//! Recovering a plain segment: trust its seal (default mode, not the last segment), or scan
//! it, classify each damage found and act as [`decide`] says.

use std::sync::Arc;

use super::{corrupt, decide, Action, Damage, Position, RecoveredSegment, Recovery, Step};
use crate::error::{IoContext, Result};
use crate::fs::{read_exact_at, read_range, WalFile};
use crate::options::RecoveryMode;
use crate::report::{Dropped, Hole, TornTail};
use crate::segment_file::{decode_seal, SegmentHeader, SEAL_BYTES, SEGMENT_HEADER_BYTES};
use crate::segment_scan::{scan, Fence, FrameDamage, ScanResult, SkipRange, SparseIndex};

/// A segment file being recovered.
struct ScannedFile<'a> {
    file: &'a dyn WalFile,
    /// Its length.
    len: u64,
    /// Where the bytes a cut would drop end: the file's length, or in a preallocated segment
    /// the end of its last non-zero byte.
    dropped_to: u64,
    /// Created preallocated (format version 5).
    preallocated: bool,
}

/// What is kept of a scanned segment.
struct Kept {
    end: u64,
    last_id: Option<u64>,
    records: u64,
    sealed: bool,
    /// Damage was dropped from here on (`PointInTime`): the segment is cut and recovery stops.
    stop: bool,
    /// Damage was skipped over (`SkipCorrupt`), or fenced (damage below
    /// [`crate::WalOptions::needed_from`]): every readable frame is kept.
    skipped: bool,
}

impl Kept {
    /// What the undamaged prefix of a scan keeps.
    fn clean(result: &ScanResult) -> Kept {
        Kept {
            end: result.clean_end,
            last_id: result.clean_last_id,
            records: result.clean_records,
            sealed: result.sealed && result.damages.is_empty(),
            stop: false,
            skipped: false,
        }
    }

    /// Once every damage is decided: a cut keeps what precedes it (valid-looking frames after
    /// the damage go too); damage skipped over or fenced keeps every readable frame.
    fn settle(&mut self, cut_at: Option<&FrameDamage>, result: &ScanResult) {
        if let Some(damage) = cut_at {
            self.end = damage.offset;
            self.last_id = damage.good_last_id;
            self.records = damage.good_records;
            self.sealed = false;
        } else if self.skipped {
            self.end = result.all_end;
            self.last_id = result.all_last_id;
            self.records = result.all_records;
            self.sealed = result.sealed;
        }
    }
}

impl Recovery<'_> {
    pub(super) fn plain_segment(
        &mut self,
        index: usize,
        file: Arc<dyn WalFile>,
        file_len: u64,
        header: SegmentHeader,
    ) -> Result<Step> {
        let entry = &self.found[index];
        let salt = header.salt;
        // Sealed segments are trusted to their seal unless the mode scans everything.
        if self.position(index) == Position::Earlier
            && !self.mode.scans_all_segments()
            && file_len >= (SEGMENT_HEADER_BYTES + SEAL_BYTES) as u64
        {
            let mut tail = [0u8; SEAL_BYTES];
            read_exact_at(&*file, &mut tail, file_len - SEAL_BYTES as u64).at(&entry.path)?;
            if let Some(seal) = decode_seal(&tail, entry.first_id, salt) {
                self.report.records += seal.record_count;
                self.see_id(seal.last_id);
                self.kept.push(RecoveredSegment {
                    sequence: entry.sequence,
                    first_id: entry.first_id,
                    path: entry.path.clone(),
                    last_id: seal.last_id,
                    end_offset: file_len - SEAL_BYTES as u64,
                    file_bytes: file_len,
                    allocated_bytes: file_len,
                    sealed: true,
                    index: None,
                    skips: Vec::new(),
                    compressed: None,
                    salt,
                    preallocated: header.preallocated,
                });
                return Ok(Step::Next);
            }
        }
        let bytes = read_range(&*file, 0, file_len).at(&entry.path)?;
        let result = scan(&bytes, entry.first_id, salt, header.preallocated);
        self.report.segments_scanned += 1;
        self.see_id(result.all_last_id.unwrap_or(0));
        // What damage left behind in a preallocated segment's free space ends at its last
        // non-zero byte: that is what a cut drops, not the free space after it.
        let dropped_to = match header.preallocated {
            true => (bytes.iter().rposition(|&byte| byte != 0)).map_or(0, |last| last as u64 + 1),
            false => file_len,
        };
        let file = ScannedFile {
            file: &*file,
            len: file_len,
            dropped_to,
            preallocated: header.preallocated,
        };
        self.scanned_segment(index, file, result, salt)
    }

    /// Acts on every damage the scan found, in order, as the mode decides.
    fn scanned_segment(
        &mut self,
        index: usize,
        file: ScannedFile<'_>,
        result: ScanResult,
        salt: u32,
    ) -> Result<Step> {
        let entry = &self.found[index];
        // The free space of a preallocated segment is neither data nor damage.
        let data_len = result.data_len(file.len);
        let position = self.position(index);
        let mut kept = Kept::clean(&result);
        let mut frame_index = result.index.clone();
        let mut skips = Vec::new();
        let mut cut_at: Option<&FrameDamage> = None;
        let mut fenced: Vec<FrameDamage> = Vec::new();
        let mut good_before = result.clean_last_id.unwrap_or(
            self.previous_last_id()
                .unwrap_or(entry.first_id.saturating_sub(1)),
        );
        for damage in &result.damages {
            // Records inside a damaged record's bad extent were durable: their ids never return.
            self.see_id(damage.inside_extent_last_id.unwrap_or(0));
            let kind = self.classify(damage, position, result.synced_through);
            match decide(self.mode, kind, position) {
                Action::CutTail => {
                    cut_at = Some(damage);
                    break;
                }
                Action::DropFromHere => {
                    frame_index.truncate_after(kept.last_id.unwrap_or(0));
                    let removed = self.remove_later(index)?;
                    self.report.dropped = Some(Dropped {
                        segment: entry.path.clone(),
                        offset: damage.offset,
                        reason: damage.reason.clone(),
                        records_dropped: result.all_records - result.clean_records,
                        segments_removed: removed,
                    });
                    kept.stop = true;
                    break;
                }
                Action::SkipOver => {
                    kept.skipped = true;
                    let (hole, skip) = self.hole(index, damage, good_before);
                    if let Some((_, id)) = damage.resume {
                        good_before = id;
                    }
                    self.report.holes.push(hole);
                    skips.extend(skip);
                }
                Action::Fence => {
                    kept.skipped = true;
                    fenced.push(damage.clone());
                }
                Action::Refuse | Action::RemoveFile | Action::RewritePlain => {
                    let reason = refusal(self.mode, kind, position, damage);
                    return Err(corrupt(&entry.path, damage.offset, reason));
                }
            }
        }
        kept.settle(cut_at, &result);
        if cut_at.is_some() {
            frame_index.truncate_after(kept.last_id.unwrap_or(0));
        }
        self.fence(index, &fenced, &mut frame_index);
        // Free space after its data: zeros the scan read as a preallocated segment's.
        if position == Position::Earlier && !kept.sealed && !kept.stop && data_len < file.len {
            self.unsealed_end(index, &mut kept)?;
        }
        let mut allocated_bytes = file.len;
        if !kept.sealed && kept.end < data_len && (position == Position::Last || kept.stop) {
            let reason = match cut_at {
                Some(damage) if damage.resume.is_some() => format!(
                    "{} (past the offset the log's durability marks prove synced: \
                     unsynced pages lost, the valid frames after it never acknowledged)",
                    damage.reason
                ),
                _ => torn_tail_reason(&result),
            };
            self.cut(index, &file, kept.end, reason)?;
            allocated_bytes = kept.end;
        }
        self.keep_scanned(index, &kept, data_len, frame_index, skips, salt);
        let kept_segment = self.kept.last_mut().expect("just kept");
        kept_segment.preallocated = file.preallocated;
        kept_segment.allocated_bytes = allocated_bytes;
        if kept.stop {
            self.next_sequence = entry.sequence + 1;
            return Ok(Step::Stop);
        }
        Ok(Step::Next)
    }

    /// Puts up the fence the `fenced` damages of `found[index]` make, if any, and reports what
    /// it makes unreadable.
    fn fence(&mut self, index: usize, fenced: &[FrameDamage], frame_index: &mut SparseIndex) {
        let entry = &self.found[index];
        if let Ok(Some(fence)) = Fence::of(fenced, entry.first_id) {
            self.report.unreadable.push(Hole {
                segment: entry.path.clone(),
                offset: fence.damage_offset,
                first_missing_id: fence.first_unreadable_id,
                last_missing_id: fence.resume_id - 1,
                reason: fence.reason.clone(),
            });
            frame_index.set_fence(Some(fence));
        }
    }

    /// Checks where a segment before the last that has no seal but free space after its data
    /// ends. A crash during a roll of a version that named the new segment before sealing the
    /// old one leaves one (free space and all) ending where the next segment begins; a repair
    /// at open that left a gap of ids after it (a torn tail cut, a point-in-time drop, the ids
    /// inside a damaged record's extent skipped) cut it to its data first. A gap after one
    /// with free space means its end was zeroed — the seal and the records before it — into
    /// what reads as free space: damage, which the mode decides like a torn tail that is not
    /// the log's ([`Damage::TornTail`], [`Position::Earlier`]). Before, every mode, `Strict`
    /// included, opened such a log clean without those records. (An end cut off at a frame
    /// boundary, the file shortened, still looks like such a repair.)
    fn unsealed_end(&mut self, index: usize, kept: &mut Kept) -> Result<()> {
        let entry = &self.found[index];
        let last = kept.last_id.unwrap_or(entry.first_id - 1);
        let Some(next) = self.found.get(index + 1) else {
            return Ok(());
        };
        let reported = self.report.holes.last().is_some_and(|hole| {
            hole.segment == entry.path && hole.last_missing_id + 1 >= next.first_id
        });
        if last.saturating_add(1) >= next.first_id || reported {
            return Ok(());
        }
        let reason = format!(
            "the segment ends at id {last} without its seal, and the next one starts at id {}: \
             ids {}..={} are missing",
            next.first_id,
            last + 1,
            next.first_id - 1
        );
        match decide(self.mode, Damage::TornTail, Position::Earlier) {
            Action::DropFromHere => {
                let removed = self.remove_later(index)?;
                self.report.dropped = Some(Dropped {
                    segment: entry.path.clone(),
                    offset: kept.end,
                    reason,
                    records_dropped: 0,
                    segments_removed: removed,
                });
                kept.stop = true;
            }
            Action::SkipOver => self.report.holes.push(Hole {
                segment: entry.path.clone(),
                offset: kept.end,
                first_missing_id: last + 1,
                last_missing_id: next.first_id - 1,
                reason,
            }),
            _ => {
                let reason = match self.mode {
                    RecoveryMode::TolerateTornTail => format!(
                        "{reason} (it is not in the last segment, so it is not a torn tail)"
                    ),
                    _ => reason,
                };
                return Err(corrupt(&entry.path, kept.end, reason));
            }
        }
        Ok(())
    }

    /// Keeps a scanned segment as `kept` says (`data_len`: the file's length without the free
    /// space of a preallocated segment).
    fn keep_scanned(
        &mut self,
        index: usize,
        kept: &Kept,
        data_len: u64,
        frame_index: SparseIndex,
        skips: Vec<SkipRange>,
        salt: u32,
    ) {
        let entry = &self.found[index];
        let position = self.position(index);
        self.report.records += kept.records;
        self.kept.push(RecoveredSegment {
            sequence: entry.sequence,
            first_id: entry.first_id,
            path: entry.path.clone(),
            last_id: kept.last_id.unwrap_or(entry.first_id - 1),
            end_offset: if kept.sealed {
                data_len - SEAL_BYTES as u64
            } else {
                kept.end
            },
            file_bytes: if kept.sealed { data_len } else { kept.end },
            allocated_bytes: data_len,
            sealed: kept.sealed || (position == Position::Earlier && !kept.stop),
            index: Some(frame_index),
            skips,
            compressed: None,
            salt,
            preallocated: false,
        });
    }

    /// Cuts the segment at `end` (durably) and reports the torn tail, unless the cut is part
    /// of a point-in-time drop, which the report already tells. A preallocated segment loses
    /// its free space with the cut; the log allocates it again if it appends there.
    fn cut(
        &mut self,
        index: usize,
        file: &ScannedFile<'_>,
        end: u64,
        reason: String,
    ) -> Result<()> {
        let entry = &self.found[index];
        file.file.set_len(end).at(&entry.path)?;
        file.file.sync_data().at(&entry.path)?;
        if self.report.dropped.is_none() {
            self.report.torn_tail = Some(TornTail {
                segment: entry.path.clone(),
                offset: end,
                bytes_dropped: file.dropped_to.max(end) - end,
                reason,
            });
        }
        Ok(())
    }

    /// The hole a damage leaves (`SkipCorrupt`), and the range readers jump over.
    fn hole(
        &self,
        index: usize,
        damage: &FrameDamage,
        good_before: u64,
    ) -> (Hole, Option<SkipRange>) {
        let entry = &self.found[index];
        let (last_missing_id, skip) = match damage.resume {
            Some((offset, id)) => {
                let skip = (offset > damage.offset).then_some(SkipRange {
                    from: damage.offset,
                    to: offset,
                });
                (id - 1, skip)
            }
            // What is missing runs to the next segment, or in the last one to the highest id
            // found inside the damaged record's extent.
            None => match self.found.get(index + 1) {
                Some(next) => (next.first_id.saturating_sub(1), None),
                None => (damage.inside_extent_last_id.unwrap_or(good_before), None),
            },
        };
        let hole = Hole {
            segment: entry.path.clone(),
            offset: damage.offset,
            first_missing_id: good_before + 1,
            last_missing_id,
            reason: damage.reason.clone(),
        };
        (hole, skip)
    }
}

impl Recovery<'_> {
    /// What a damage found by the scan is. Damage with nothing valid after it is a torn tail.
    /// Damage in the last segment at or after the offset its durability marks prove synced, whose
    /// damaged stretch holds a zero-filled sector, is one too, even with valid frames after it: the
    /// page cache may write back a later page and not an earlier one, so a power cut can leave any
    /// subset of unsynced pages (the lost ones read as zeros) — and nothing there was acknowledged
    /// under `Always` or `Batch` (`docs/wal-format.md`, "Durability marks"). With
    /// `refuse_whole_damaged_tail`, a whole frame whose CRC fails with no zeroed sector in it is
    /// not one either: a bit flip ([`crate::WalOptions::refuse_whole_damaged_tail`]).
    fn classify(&self, damage: &FrameDamage, position: Position, synced_through: u64) -> Damage {
        match damage.resume {
            None if damage.inside_extent_last_id.is_some() => Damage::BadFrame,
            None if self.refuse_whole_damaged_tail && damage.whole_frame_flipped => {
                Damage::BadFrame
            }
            None => Damage::TornTail,
            Some(_)
                if position == Position::Last
                    && damage.offset >= synced_through
                    && damage.zero_sector =>
            {
                Damage::TornTail
            }
            // Every record it makes unreadable lies below what the caller needs.
            Some((_, resume_id)) if resume_id <= self.needed_from => Damage::BadFrameNotNeeded,
            Some(_) => Damage::BadFrame,
        }
    }
}

/// Why open refuses: the damage, and for the default mode why it is not a torn tail.
fn refusal(mode: RecoveryMode, kind: Damage, position: Position, damage: &FrameDamage) -> String {
    if mode != RecoveryMode::TolerateTornTail {
        return damage.reason.clone();
    }
    let why = match (kind, position) {
        (_, Position::Earlier) => "it is not in the last segment, so it is not a torn tail",
        _ if damage.resume.is_none() && damage.whole_frame_flipped => {
            "the whole record is there (no sector of it is zero, or one bit flipped back in its \
             header makes it check): a bit flip in synced data, not a write the disk did not \
             finish, so it is not cut as a torn tail"
        }
        _ => "valid records follow it, so it is not a torn tail",
    };
    format!("{} ({why})", damage.reason)
}

fn torn_tail_reason(result: &ScanResult) -> String {
    result
        .damages
        .first()
        .map(|damage| {
            let mut reason = damage.reason.clone();
            if damage.zeroed_to_end {
                reason.push_str(" (zero-filled to the end)");
            }
            reason
        })
        .unwrap_or_else(|| "incomplete tail".to_owned())
}
