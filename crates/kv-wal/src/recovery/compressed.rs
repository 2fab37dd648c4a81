//! Recovering a compressed segment: trust its footer and index (default mode), or scan every
//! block, classify the damage and act as [`decide`] says.
//!
//! A compressed segment is never a torn tail (it was fsynced before it got its name), so any
//! damage in it is refused by `Strict` and `TolerateTornTail`. `PointInTime` rewrites the
//! blocks before the damage as a plain, unsealed segment and removes the later segments (or,
//! when only the index is damaged, rewrites every record as a plain sealed segment);
//! `SkipCorrupt` keeps the file and leaves the damaged blocks out of the readable layout.

use std::path::Path;
use std::sync::Arc;

use super::{corrupt, decide, Action, Damage, RecoveredSegment, Recovery, Step};
use crate::codec::SegmentCodec;
use crate::compressed_format::{self, CompressedLayout, FOOTER_BYTES};
use crate::compressed_scan::{self, CompressedScan};
use crate::error::Malformed;
use crate::error::{IoContext, Result};
use crate::fs::{read_exact_at, read_range, WalFile};
use crate::plain_rewrite::write_plain_segment;
use crate::report::{Dropped, Hole};
use crate::segment_file::{SegmentHeader, SEAL_BYTES, SEGMENT_HEADER_BYTES};
use crate::segment_scan::scan;

impl Recovery<'_> {
    pub(super) fn compressed_segment(
        &mut self,
        index: usize,
        file: Arc<dyn WalFile>,
        file_len: u64,
        header: SegmentHeader,
        codec: SegmentCodec,
    ) -> Result<Step> {
        let entry = &self.found[index];
        if !self.mode.scans_all_segments() {
            if let Ok(layout) = read_layout(&*file, file_len, entry.first_id, codec) {
                self.keep_compressed(index, layout, file_len, header.salt);
                return Ok(Step::Next);
            }
        }
        let bytes = read_range(&*file, 0, file_len).at(&entry.path)?;
        drop(file);
        let scanned = compressed_scan::scan(&bytes, entry.first_id, codec, header.salt);
        self.report.segments_scanned += 1;
        let all_last_id = scanned.layout.last_id().max(scanned.footer_last_id);
        self.see_id(all_last_id.unwrap_or(0));
        let Some(damage) = scanned.damages.first().cloned() else {
            self.keep_compressed(index, scanned.layout, file_len, header.salt);
            return Ok(Step::Next);
        };
        let kind = Damage::BadBlock {
            only_index: scanned.only_index_damaged,
        };
        match decide(self.mode, kind, self.position(index)) {
            Action::RewritePlain => {
                // Every record reads; only the index is bad. Keep them all, as a plain segment.
                let last_id = scanned.clean_last_id().expect("blocks read");
                self.rewrite_plain(index, header, &scanned, Some(last_id))?;
                self.report.removed_files.push(entry.path.clone());
                Ok(Step::Next)
            }
            Action::DropFromHere => {
                let removed = self.remove_later(index)?;
                let last_id = self.rewrite_plain(index, header, &scanned, None)?;
                self.report.dropped = Some(Dropped {
                    segment: entry.path.clone(),
                    offset: damage.offset,
                    reason: damage.reason.clone(),
                    records_dropped: all_last_id.unwrap_or(last_id).saturating_sub(last_id),
                    segments_removed: removed,
                });
                self.next_sequence = entry.sequence + 1;
                Ok(Step::Stop)
            }
            Action::SkipOver => {
                self.report_block_holes(index, &scanned);
                self.keep_compressed(index, scanned.layout, file_len, header.salt);
                Ok(Step::Next)
            }
            Action::Refuse | Action::RemoveFile | Action::CutTail | Action::Fence => Err(corrupt(
                &entry.path,
                damage.offset,
                format!("{} (in a compressed segment)", damage.reason),
            )),
        }
    }

    /// Keeps the compressed segment as it is, with what its blocks hold.
    fn keep_compressed(
        &mut self,
        index: usize,
        layout: CompressedLayout,
        file_len: u64,
        salt: u32,
    ) {
        let entry = &self.found[index];
        self.report.records += layout.record_count();
        self.see_id(layout.last_id().unwrap_or(0));
        self.kept.push(RecoveredSegment::compressed(
            entry.sequence,
            entry.first_id,
            entry.path.clone(),
            layout,
            file_len,
            salt,
        ));
    }

    /// Rewrites the clean blocks' frames as a plain segment (sealed at `seal` when given,
    /// else unsealed: it becomes the last segment), removes the compressed file, and keeps the
    /// plain one. Returns its last id.
    fn rewrite_plain(
        &mut self,
        index: usize,
        header: SegmentHeader,
        scanned: &CompressedScan,
        seal: Option<u64>,
    ) -> Result<u64> {
        let entry = &self.found[index];
        let path = &entry.path;
        let dir = path.parent().unwrap_or(Path::new("."));
        let rewrite = write_plain_segment(self.fs, dir, header, &scanned.clean_frames, seal)?;
        self.fs.remove_file(path).at(path)?;
        let last_id = scanned.clean_last_id().unwrap_or(entry.first_id - 1);
        self.report.records += scanned.clean_records();
        let image_len = rewrite.image.len() as u64;
        let frame_index = scan(&rewrite.image, entry.first_id, header.salt, false).index;
        let sealed = seal.is_some();
        self.kept.push(RecoveredSegment {
            sequence: entry.sequence,
            first_id: entry.first_id,
            path: rewrite.path,
            last_id,
            end_offset: if sealed {
                image_len - SEAL_BYTES as u64
            } else {
                image_len
            },
            file_bytes: image_len,
            allocated_bytes: image_len,
            sealed,
            index: Some(frame_index),
            skips: Vec::new(),
            compressed: None,
            salt: header.salt,
            preallocated: false,
        });
        Ok(last_id)
    }

    /// The holes damaged blocks leave (`SkipCorrupt`).
    fn report_block_holes(&mut self, index: usize, scanned: &CompressedScan) {
        let entry = &self.found[index];
        let next_first = self.found.get(index + 1).map(|next| next.first_id);
        for damage in &scanned.damages {
            let last_missing_id = match damage.resume {
                Some((_, id)) => id - 1,
                None => scanned
                    .footer_last_id
                    .or_else(|| next_first.map(|first| first.saturating_sub(1)))
                    .unwrap_or(damage.first_missing_id - 1),
            };
            self.report.holes.push(Hole {
                segment: entry.path.clone(),
                offset: damage.offset,
                first_missing_id: damage.first_missing_id,
                last_missing_id,
                reason: damage.reason.clone(),
            });
        }
    }
}

/// The layout of a compressed segment from its footer and index alone (no block is read).
pub(crate) fn read_layout(
    file: &dyn WalFile,
    file_len: u64,
    first_id: u64,
    codec: SegmentCodec,
) -> std::result::Result<CompressedLayout, Malformed> {
    if file_len < (SEGMENT_HEADER_BYTES + FOOTER_BYTES) as u64 {
        return Err("file too short for a compressed segment".into());
    }
    let mut footer = [0u8; FOOTER_BYTES];
    read_exact_at(file, &mut footer, file_len - FOOTER_BYTES as u64)
        .map_err(|error| Malformed::from(format!("reading the footer: {error}")))?;
    let index_offset = u64::from_le_bytes(footer[8..16].try_into().expect("8 bytes"));
    if index_offset < SEGMENT_HEADER_BYTES as u64 || index_offset > file_len - FOOTER_BYTES as u64 {
        return Err("the footer's index offset is outside the file".into());
    }
    let tail = read_range(file, index_offset, file_len - index_offset)
        .map_err(|error| Malformed::from(format!("reading the index: {error}")))?;
    compressed_format::decode_layout(&tail, index_offset, file_len, first_id, codec)
}
