//! The scan that checks a plain segment: every frame's CRC and id, the seal, where damage is
//! and where good frames resume after it; and the sparse index readers seek with.

use crate::frame::{
    self, Frame, FrameError, FRAME_HEADER_BYTES, KIND_MARK, KIND_RECORD, KIND_SEAL,
};
use crate::segment_file::SEGMENT_HEADER_BYTES;

/// The disk's sector: the unit in which unsynced writes are lost or torn.
const SECTOR_BYTES: usize = 512;

/// Spacing of the in-memory sparse index: one entry per this many bytes of frames.
pub(crate) const INDEX_INTERVAL_BYTES: u64 = 16 * 1024;

/// Sparse map from id to file offset: one entry per [`INDEX_INTERVAL_BYTES`] of frames.
#[derive(Debug, Clone, Default)]
pub(crate) struct SparseIndex {
    entries: Vec<(u64, u64)>,
    last_offset: Option<u64>,
    /// Damage with whole records after it that the log opened past: reading starts at
    /// `resume_id` or later, or fails.
    fence: Option<Fence>,
}

/// Damage in a segment that readers may not cross: whole records resume after it, and only
/// they are read ([`crate::WalOptions::needed_from`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fence {
    /// Where the first damage starts: a reader that began before `resume_id` stops here.
    pub damage_offset: u64,
    /// The first id a reader cannot reach: the one after the last whole record before the
    /// damage.
    pub first_unreadable_id: u64,
    /// What is wrong there.
    pub reason: String,
    /// After the last damage, the first whole record and where it starts: every frame from
    /// here to the segment's end checks.
    pub resume_id: u64,
    pub resume_offset: u64,
}

impl Fence {
    /// The fence a scan's damage puts up in a segment whose first id is `first_id`, if every
    /// damage has whole records after it (`None` when there is no damage; `Err` with the
    /// first damage that has none).
    pub fn of(damages: &[FrameDamage], first_id: u64) -> Result<Option<Fence>, &FrameDamage> {
        let Some(first) = damages.first() else {
            return Ok(None);
        };
        if let Some(unresumed) = damages.iter().find(|damage| damage.resume.is_none()) {
            return Err(unresumed);
        }
        let (resume_offset, resume_id) = damages
            .last()
            .and_then(|damage| damage.resume)
            .expect("every damage resumes");
        Ok(Some(Fence {
            damage_offset: first.offset,
            first_unreadable_id: first.good_last_id.map_or(first_id, |last| last + 1),
            reason: first.reason.clone(),
            resume_id,
            resume_offset,
        }))
    }
}

impl SparseIndex {
    pub fn observe(&mut self, id: u64, offset: u64) {
        let due = match self.last_offset {
            None => true,
            Some(last) => offset >= last + INDEX_INTERVAL_BYTES,
        };
        if due {
            self.entries.push((id, offset));
            self.last_offset = Some(offset);
        }
    }
    /// The offset of the greatest indexed id `<= id`, if any; past a [`Fence`], never before
    /// where whole records resume.
    pub fn seek(&self, id: u64) -> Option<(u64, u64)> {
        let position = self.entries.partition_point(|&(indexed, _)| indexed <= id);
        let entry = position.checked_sub(1).map(|index| self.entries[index]);
        match &self.fence {
            Some(fence)
                if id >= fence.resume_id
                    && entry.is_none_or(|(_, offset)| offset < fence.resume_offset) =>
            {
                Some((fence.resume_id, fence.resume_offset))
            }
            _ => entry,
        }
    }
    /// Puts up `fence` (replacing any).
    pub fn set_fence(&mut self, fence: Option<Fence>) {
        self.fence = fence;
    }
    /// The fence a reader of `id` stops at: `Some` when `id` lies before where whole records
    /// resume after damage.
    pub fn fence_before(&self, id: u64) -> Option<&Fence> {
        self.fence.as_ref().filter(|fence| id < fence.resume_id)
    }
    /// Drops entries for ids above `id` (after a truncation).
    pub fn truncate_after(&mut self, id: u64) {
        self.entries.retain(|&(indexed, _)| indexed <= id);
        self.last_offset = self.entries.last().map(|&(_, offset)| offset);
        // A cut before the damage removes it. (A cut inside it cannot be found, and a cut
        // just before where whole records resume keeps it.)
        if self
            .fence
            .as_ref()
            .is_some_and(|fence| id < fence.first_unreadable_id)
        {
            self.fence = None;
        }
    }
}

/// Damage found while scanning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FrameDamage {
    /// Where the bad bytes start.
    pub offset: u64,
    pub reason: String,
    /// Where good frames resume in this segment, and the id there.
    pub resume: Option<(u64, u64)>,
    /// Whether everything from `offset` to the end is zero.
    pub zeroed_to_end: bool,
    /// The last good record before the damage, and how many good records precede it: what a
    /// cut at `offset` keeps.
    pub good_last_id: Option<u64>,
    pub good_records: u64,
    /// Whether the damaged stretch (up to where good frames resume) holds a whole zero-filled
    /// 512-byte sector: what a page or sector the disk never got leaves.
    pub zero_sector: bool,
    /// The highest id of the records sealed with the segment's salt that lie inside the
    /// declared extent of the damaged frame (whose CRC failed), if any: its length field is
    /// what is wrong, so this is damage with records after it, never a torn tail. They are
    /// evidence only — never served — but their ids are never handed out again.
    pub inside_extent_last_id: Option<u64>,
    /// Whether the damage is a whole frame (its declared extent within the segment) whose CRC
    /// fails while no sector-aligned stretch of it is all zeros, or a frame that one bit flipped
    /// back in its header makes whole (`frame::header_bit_flip_explains`): not what an
    /// unfinished write leaves, but a bit flip ([`crate::WalOptions::refuse_whole_damaged_tail`]).
    pub whole_frame_flipped: bool,
}

/// A region readers must jump over (SkipCorrupt mode): `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SkipRange {
    pub from: u64,
    pub to: u64,
}

/// Everything a full scan of one segment learned.
#[derive(Debug, Default)]
pub(crate) struct ScanResult {
    /// End of the undamaged prefix (offset of the first damage, or of the seal/end).
    pub clean_end: u64,
    /// Records and last id in the undamaged prefix.
    pub clean_records: u64,
    pub clean_last_id: Option<u64>,
    /// Whether a valid seal ends the segment (after any damage).
    pub sealed: bool,
    /// Every stretch of damage, in order, with where good data resumes.
    pub damages: Vec<FrameDamage>,
    /// Counting the good frames after damage too.
    pub all_records: u64,
    pub all_last_id: Option<u64>,
    /// End of the last good frame anywhere (before any seal).
    pub all_end: u64,
    /// The index over every good frame; callers cut it to the prefix they keep.
    pub index: SparseIndex,
    /// The highest offset a valid durability mark anywhere in the segment says was synced
    /// (the header's end when none does). `u64::MAX` for a segment without salt (format 1),
    /// which has no marks: everything in it counts as synced, as before marks existed.
    pub synced_through: u64,
    /// In a preallocated segment, where its free space starts: from here to the end of the
    /// image every byte is zero, and none of it is damage. `None`: the data runs to the end.
    pub free_from: Option<u64>,
}

impl ScanResult {
    /// Where the segment's data ends: its length without the free space of a preallocated
    /// segment.
    pub fn data_len(&self, image_len: u64) -> u64 {
        self.free_from.unwrap_or(image_len)
    }
}

impl ScanResult {
    /// Records damage at `offset`, with what precedes it.
    fn damage(&mut self, offset: usize, reason: String, resume: Option<(usize, u64)>) {
        self.damages.push(FrameDamage {
            offset: offset as u64,
            reason,
            resume: resume.map(|(offset, id)| (offset as u64, id)),
            zeroed_to_end: false,
            good_last_id: self.all_last_id,
            good_records: self.all_records,
            zero_sector: false,
            inside_extent_last_id: None,
            whole_frame_flipped: false,
        });
    }
}

/// Scans a whole segment image (`bytes` includes the header), expecting ids from `first_id`,
/// its frames sealed with `salt`. With `free_tail` (a preallocated segment), a run of zeros
/// from where a frame should start to the end of the image is free space, not damage: the
/// scan ends there ([`ScanResult::free_from`]).
pub(crate) fn scan(bytes: &[u8], first_id: u64, salt: u32, free_tail: bool) -> ScanResult {
    let mut result = ScanResult {
        clean_end: SEGMENT_HEADER_BYTES as u64,
        all_end: SEGMENT_HEADER_BYTES as u64,
        synced_through: if salt == 0 {
            u64::MAX
        } else {
            SEGMENT_HEADER_BYTES as u64
        },
        ..ScanResult::default()
    };
    let mut position = SEGMENT_HEADER_BYTES;
    let mut expected_id = first_id;
    while position < bytes.len() {
        // Cheap: a frame's kind byte is never zero, so a frame stops the check by byte 5.
        if free_tail && bytes[position..].iter().all(|&byte| byte == 0) {
            result.free_from = Some(position as u64);
            break;
        }
        let damaged = !result.damages.is_empty();
        let mut crc_failed = false;
        let (problem, resume_from) = match frame::decode_salted(&bytes[position..], salt) {
            Ok(frame) if frame.kind != KIND_SEAL && frame.id == expected_id => {
                if frame.kind == KIND_RECORD {
                    result.index.observe(frame.id, position as u64);
                    expected_id += 1;
                    result.all_records += 1;
                    result.all_last_id = Some(frame.id);
                } else {
                    note_mark(&mut result, &frame, position);
                }
                position += frame.encoded_len();
                result.all_end = position as u64;
                if !damaged {
                    result.clean_records = result.all_records;
                    result.clean_last_id = result.all_last_id;
                    result.clean_end = position as u64;
                }
                continue;
            }
            Ok(frame) if frame.kind == KIND_SEAL => {
                match seal_problem(&frame, position, bytes.len(), &result, damaged) {
                    None => {
                        result.sealed = true;
                        return result;
                    }
                    Some(problem) => (problem, position + 1),
                }
            }
            Ok(frame) => {
                let reason = format!("record id {} where {expected_id} was expected", frame.id);
                if frame.id > expected_id {
                    // Records are missing here; this one is good and is where reading resumes.
                    result.damage(position, reason, Some((position, frame.id)));
                    expected_id = frame.id;
                    continue;
                }
                // A replayed or out-of-order record: skip it whole.
                (reason, position + frame.encoded_len())
            }
            Err(error) => {
                crc_failed = matches!(error, FrameError::CrcMismatch { .. });
                let resume_from = position + resume_distance(&bytes[position..], &error);
                (error.to_string(), resume_from)
            }
        };
        let resume = find_resume(bytes, resume_from, expected_id, salt);
        // A torn record's payload cannot hold frames sealed with this segment's salt (a value's
        // author does not know it): if its declared extent does, the length is what is damaged.
        let inside_extent_last_id = if resume.is_none() && salt != 0 && resume_from > position + 1 {
            last_record_id_within(bytes, position + 1, resume_from, expected_id, salt)
        } else {
            None
        };
        result.damage(position, problem, resume);
        let damage = result.damages.last_mut().expect("just pushed");
        damage.inside_extent_last_id = inside_extent_last_id;
        damage.zeroed_to_end = bytes[position..].iter().all(|&byte| byte == 0);
        let stretch_end = resume.map_or(bytes.len(), |(offset, _)| offset);
        damage.zero_sector = holds_zero_sector(bytes, position, stretch_end);
        damage.whole_frame_flipped = (crc_failed
            && resume_from <= bytes.len()
            && !any_sector_chunk_zero(bytes, position, resume_from))
            || frame::header_bit_flip_explains(&bytes[position..], salt);
        match resume {
            Some((offset, id)) => {
                position = offset;
                expected_id = id;
            }
            None => break,
        }
    }
    result
}

/// Whether some piece of `bytes[from..to]` between sector boundaries (the first and last
/// clipped to the range) is all zeros: what a frame whose write the disk did not finish
/// leaves (etcd's `isTornEntry`).
fn any_sector_chunk_zero(bytes: &[u8], from: usize, to: usize) -> bool {
    let mut start = from;
    while start < to {
        let end = ((start / SECTOR_BYTES + 1) * SECTOR_BYTES).min(to);
        if bytes[start..end].iter().all(|&byte| byte == 0) {
            return true;
        }
        start = end;
    }
    false
}

/// Whether `bytes[from..to]` holds what a sector the disk never got leaves: zeros from `from`
/// to the end of its sector (a sector partly synced before), or a whole aligned zero sector.
fn holds_zero_sector(bytes: &[u8], from: usize, to: usize) -> bool {
    let zero = |range: std::ops::Range<usize>| bytes[range].iter().all(|&byte| byte == 0);
    let mut sector = (from / SECTOR_BYTES + 1) * SECTOR_BYTES;
    if sector <= to && zero(from..sector) {
        return true;
    }
    while sector + SECTOR_BYTES <= to {
        if zero(sector..sector + SECTOR_BYTES) {
            return true;
        }
        sector += SECTOR_BYTES;
    }
    false
}

/// Takes note of a durability mark at `position`: a mark never claims more than what precedes
/// it.
fn note_mark(result: &mut ScanResult, frame: &Frame<'_>, position: usize) {
    let claim = frame
        .payload
        .try_into()
        .map(u64::from_le_bytes)
        .unwrap_or(0);
    if claim <= position as u64 && result.synced_through != u64::MAX {
        result.synced_through = result.synced_through.max(claim);
    }
}

fn seal_problem(
    frame: &Frame<'_>,
    position: usize,
    len: usize,
    result: &ScanResult,
    damaged: bool,
) -> Option<String> {
    if position + frame.encoded_len() != len {
        return Some("data after the segment seal".to_owned());
    }
    if damaged {
        // Records were lost before it; the seal still marks the end of the segment.
        return (Some(frame.id) < result.all_last_id).then(|| "seal precedes records".to_owned());
    }
    let count = frame.payload.try_into().map(u64::from_le_bytes).ok();
    if Some(frame.id) != result.all_last_id || count != Some(result.all_records) {
        return Some(format!(
            "seal says last id {} ({count:?} records) but the segment holds {:?} ({} records)",
            frame.id, result.all_last_id, result.all_records
        ));
    }
    None
}

/// How far past a frame that does not decode the search for good frames starts. A frame whose
/// header is whole but whose CRC fails declares its extent: the search starts after it, never
/// inside its payload, where bytes that look like frames may be a value's contents (issue 11).
/// Any other damage leaves no extent to trust: the search starts at the next byte.
fn resume_distance(bytes: &[u8], error: &FrameError) -> usize {
    match error {
        FrameError::CrcMismatch { .. } => {
            let len = u32::from_le_bytes(bytes[8..12].try_into().expect("a whole header"));
            FRAME_HEADER_BYTES + len as usize
        }
        _ => 1,
    }
}

/// The highest id of the valid records (id `>= min_id`, sealed with `salt`) that start in
/// `bytes[from..to]`, if any.
fn last_record_id_within(
    bytes: &[u8],
    from: usize,
    to: usize,
    min_id: u64,
    salt: u32,
) -> Option<u64> {
    let mut last = None;
    let mut offset = from;
    while let Some((found, id)) = find_resume(&bytes[..to.min(bytes.len())], offset, min_id, salt) {
        last = last.max(Some(id));
        offset = found + 1;
    }
    last
}

/// Finds the next offset at or after `from` where a valid record with id `>= min_id` (or a
/// valid seal at the very end) starts, its CRC sealed with `salt`.
fn find_resume(bytes: &[u8], from: usize, min_id: u64, salt: u32) -> Option<(usize, u64)> {
    let last_start = bytes.len().checked_sub(FRAME_HEADER_BYTES)?;
    for offset in from..=last_start {
        let kind = bytes[offset + 4];
        let known = kind == KIND_RECORD || kind == KIND_SEAL || kind == KIND_MARK;
        if !known || bytes[offset + 5..offset + 8] != [0, 0, 0] {
            continue;
        }
        match frame::decode_salted(&bytes[offset..], salt) {
            Ok(frame) if frame.kind != KIND_SEAL && frame.id >= min_id => {
                return Some((offset, frame.id))
            }
            Ok(frame) if frame.kind == KIND_SEAL && offset + frame.encoded_len() == bytes.len() => {
                return Some((offset, frame.id + 1));
            }
            Ok(_) | Err(FrameError::Incomplete { .. }) | Err(_) => continue,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment_file::{decode_seal, encode_seal, Seal, SegmentHeader, SEAL_BYTES};

    const SALT: u32 = 0x0bad_5a17;

    fn image(first_id: u64, payloads: &[&[u8]], seal: bool) -> Vec<u8> {
        let header = SegmentHeader {
            log_id: 9,
            sequence: 1,
            first_id,
            codec: None,
            salt: SALT,
            preallocated: false,
        };
        let mut bytes = header.encode().to_vec();
        for (index, payload) in payloads.iter().enumerate() {
            frame::encode(
                &mut bytes,
                KIND_RECORD,
                first_id + index as u64,
                payload,
                SALT,
            );
        }
        if seal {
            encode_seal(
                &mut bytes,
                first_id + payloads.len() as u64 - 1,
                payloads.len() as u64,
                SALT,
            );
        }
        bytes
    }

    #[test]
    fn clean_and_sealed_scans() {
        let bytes = image(5, &[b"a", b"bb", b"ccc"], true);
        let result = scan(&bytes, 5, SALT, false);
        assert!(result.sealed);
        assert!(result.damages.is_empty());
        assert_eq!(result.clean_last_id, Some(7));
        assert_eq!(result.clean_records, 3);
        let seal = decode_seal(&bytes[bytes.len() - SEAL_BYTES..], 5, SALT).unwrap();
        assert_eq!(
            seal,
            Seal {
                last_id: 7,
                record_count: 3
            }
        );
    }

    #[test]
    fn damage_in_the_middle_finds_where_records_resume() {
        let mut bytes = image(1, &[b"first", b"second", b"third"], false);
        let second = SEGMENT_HEADER_BYTES + FRAME_HEADER_BYTES + 5;
        bytes[second + FRAME_HEADER_BYTES] ^= 0xff;
        let result = scan(&bytes, 1, SALT, false);
        assert_eq!(result.clean_last_id, Some(1));
        assert_eq!(result.damages.len(), 1);
        let damage = &result.damages[0];
        assert_eq!(damage.offset, second as u64);
        assert_eq!(damage.resume.map(|(_, id)| id), Some(3));
        assert_eq!(result.all_last_id, Some(3));
    }

    #[test]
    fn zeroed_tail_is_recognised() {
        let mut bytes = image(1, &[b"first"], false);
        let end = bytes.len();
        bytes.extend([0u8; 100]);
        let result = scan(&bytes, 1, SALT, false);
        assert_eq!(result.clean_end, end as u64);
        assert!(result.damages[0].zeroed_to_end);
        assert_eq!(result.damages[0].resume, None);
    }

    #[test]
    fn the_free_space_of_a_preallocated_segment_is_not_damage() {
        let mut bytes = image(1, &[b"first", b"second\0\0"], false);
        let end = bytes.len();
        bytes.extend([0u8; 4096]);
        let result = scan(&bytes, 1, SALT, true);
        assert!(result.damages.is_empty(), "{:?}", result.damages);
        assert_eq!(result.free_from, Some(end as u64));
        assert_eq!(result.clean_end, end as u64);
        assert_eq!(result.clean_last_id, Some(2));
        assert_eq!(result.data_len(bytes.len() as u64), end as u64);
        // Zeros are never a record, and data after zeros is not free space: a lost page.
        let mut holed = bytes.clone();
        let later = image(1, &[b"first", b"second\0\0", b"third"], false);
        let third = &later[end..];
        holed[end + 1024..end + 1024 + third.len()].copy_from_slice(third);
        let result = scan(&holed, 1, SALT, true);
        assert_eq!(result.damages.len(), 1, "{:?}", result.damages);
        assert_eq!(result.damages[0].offset, end as u64);
        assert_eq!(result.damages[0].resume, Some(((end + 1024) as u64, 3)));
        assert_eq!(result.free_from, Some((end + 1024 + third.len()) as u64));
        // Without the free tail (an appending segment), the same zeros are a zeroed tail.
        let result = scan(&bytes, 1, SALT, false);
        assert_eq!(result.free_from, None);
        assert!(result.damages[0].zeroed_to_end);
    }

    #[test]
    fn sparse_index_seeks() {
        let mut index = SparseIndex::default();
        index.observe(1, 48);
        index.observe(2, 100);
        index.observe(50, 48 + INDEX_INTERVAL_BYTES);
        assert_eq!(index.seek(0), None);
        assert_eq!(index.seek(10), Some((1, 48)));
        assert_eq!(index.seek(60), Some((50, 48 + INDEX_INTERVAL_BYTES)));
        index.truncate_after(10);
        assert_eq!(index.seek(60), Some((1, 48)));
    }
}
