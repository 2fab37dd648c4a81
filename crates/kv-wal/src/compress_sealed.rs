//! The pass that rewrites sealed segments compressed ([`Wal::compress_sealed`]).
//!
//! Compressing a segment never holds the writer lock: the segment is read, checked and
//! compressed into `{name}.walz.tmp` while appends go on; only the swap (rename, replace the
//! in-memory entry) runs under the maintenance lock that truncation and purging also take.
//! Readers that already opened the plain file keep reading it (the open handle outlives the
//! removal); readers that find it gone locate the segment again and get the compressed one.
//!
//! Crash safety, at every step (`docs/wal-format.md` has the table):
//!
//! ```text
//! 1. create {seq}-{first}.walz.tmp, write, fdatasync     crash: open removes the .tmp
//! 2. rename to {seq}-{first}.walz                         crash: both files; open keeps .wal
//! 3. fsync(dir)
//! 4. remove {seq}-{first}.wal                             crash: only the .walz survives
//! 5. fsync(dir)
//! ```

use std::io;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crate::codec::SegmentCodec;
use crate::compressed_format::{self, CompressedLayout};
use crate::error::Malformed;
use crate::error::{IoContext, Result};
use crate::frame;
use crate::fs::read_range;
use crate::mutex::lock;
use crate::plain_rewrite::write_and_sync;
use crate::segment_file::{
    compressed_segment_file_name, SegmentHeader, SEAL_BYTES, SEGMENT_HEADER_BYTES,
};
use crate::segment_scan::scan;
use crate::segments::Segment;
use crate::wal::Wal;

/// Why a segment is left plain when compressing it would not make it smaller (it is not
/// tried again while the log stays open).
pub const INCOMPRESSIBLE: &str = "compressed, it would not be smaller";

/// Why a segment is left plain when a truncation or purge took it away during the pass.
const CHANGED_MEANWHILE: &str = "truncated or removed while it was being compressed";

/// What one [`Wal::compress_sealed`] pass did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CompressReport {
    /// Segments rewritten compressed.
    pub segments_compressed: usize,
    /// Their bytes on disk before (plain files).
    pub bytes_before: u64,
    /// Their bytes on disk after (compressed files).
    pub bytes_after: u64,
    /// Sealed segments left plain, and why: damage found while checking them, a truncation or
    /// purge that took them away meanwhile, or [`INCOMPRESSIBLE`].
    pub skipped: Vec<(PathBuf, String)>,
    /// Time the pass took.
    pub seconds: f64,
}

impl CompressReport {
    /// `bytes_before / bytes_after` (1.0 when nothing was compressed).
    pub fn ratio(&self) -> f64 {
        if self.bytes_after == 0 {
            return 1.0;
        }
        self.bytes_before as f64 / self.bytes_after as f64
    }
}

impl Wal {
    /// Rewrites every sealed, still plain segment (never the active one) compressed with
    /// [`crate::WalOptions::compress_sealed_segments`]; does nothing when that is `None`.
    ///
    /// Meant to be called from a background thread: appends are not blocked (the writer lock
    /// is never taken), reads go on throughout, and a crash at any step leaves a log that opens
    /// with every record. A segment with damage is left as it is and listed in
    /// [`CompressReport::skipped`]. I/O errors are returned without poisoning the log (no log
    /// data is written).
    pub fn compress_sealed(&self) -> Result<CompressReport> {
        let started = Instant::now();
        let mut report = CompressReport::default();
        let Some(codec) = self.shared.compress_sealed_segments else {
            return Ok(report);
        };
        let _one_pass_at_a_time = lock(&self.shared.compressing);
        let candidates: Vec<Arc<Segment>> = {
            let segments = self.shared.segments_read();
            let sealed = segments.len().saturating_sub(1);
            segments[..sealed]
                .iter()
                .filter(|segment| {
                    segment.compressed.is_none()
                        && segment.is_sealed()
                        && !segment.is_empty()
                        && !segment.incompressible.load(Ordering::Relaxed)
                })
                .cloned()
                .collect()
        };
        for segment in candidates {
            self.compress_one(&segment, codec, &mut report)?;
        }
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    fn compress_one(
        &self,
        segment: &Arc<Segment>,
        codec: SegmentCodec,
        report: &mut CompressReport,
    ) -> Result<()> {
        let shared = &self.shared;
        let truncations = shared
            .truncations
            .load(std::sync::atomic::Ordering::Acquire);
        let file = match shared.fs.open(&segment.path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                report
                    .skipped
                    .push((segment.path.clone(), CHANGED_MEANWHILE.to_owned()));
                return Ok(());
            }
            Err(error) => return Err(error).at(&segment.path),
        };
        let file_bytes = segment.file_bytes();
        let bytes = read_range(&*file, 0, file_bytes).at(&segment.path)?;
        drop(file);
        if let Err(reason) = check_plain_sealed(&bytes, segment) {
            // A truncation or purge meanwhile explains a short read; anything else is damage.
            let changed =
                shared.truncations.load(Ordering::Acquire) != truncations || !shared.holds(segment);
            let reason = if changed {
                CHANGED_MEANWHILE.to_owned()
            } else {
                reason.to_string()
            };
            report.skipped.push((segment.path.clone(), reason));
            return Ok(());
        }
        let (image, layout) = compressed_image(shared.log_id, segment, codec, &bytes);
        if image.len() >= bytes.len() {
            segment.incompressible.store(true, Ordering::Relaxed);
            report
                .skipped
                .push((segment.path.clone(), INCOMPRESSIBLE.to_owned()));
            return Ok(());
        }
        let name = compressed_segment_file_name(segment.sequence, segment.first_id);
        let path = shared.dir.join(&name);
        let temp_path = shared.dir.join(format!("{name}.tmp"));
        write_and_sync(&*shared.fs, &temp_path, &image)?;

        // The swap: nothing may remove or cut the segment meanwhile.
        let _maintenance = lock(&shared.maintenance);
        if !self.still_sealed_and_held(segment, truncations) {
            shared.fs.remove_file(&temp_path).at(&temp_path)?;
            report
                .skipped
                .push((segment.path.clone(), CHANGED_MEANWHILE.to_owned()));
            return Ok(());
        }
        shared.fs.rename(&temp_path, &path).at(&path)?;
        let replacement = Arc::new(Segment::new_compressed(
            segment.sequence,
            segment.first_id,
            path,
            layout,
            image.len() as u64,
            segment.salt,
        ));
        {
            let mut segments = shared.segments_write();
            if let Some(slot) = segments.iter_mut().find(|held| Arc::ptr_eq(held, segment)) {
                *slot = replacement;
            }
        }
        shared.fs.sync_dir(&shared.dir).at(&shared.dir)?;
        shared.fs.remove_file(&segment.path).at(&segment.path)?;
        shared.fs.sync_dir(&shared.dir).at(&shared.dir)?;
        shared
            .stats
            .on_compress(bytes.len() as u64, image.len() as u64);
        report.segments_compressed += 1;
        report.bytes_before += bytes.len() as u64;
        report.bytes_after += image.len() as u64;
        Ok(())
    }
}

/// The compressed image of a sealed plain segment (`bytes`: its whole file) and its layout.
fn compressed_image(
    log_id: u64,
    segment: &Segment,
    codec: SegmentCodec,
    bytes: &[u8],
) -> (Vec<u8>, CompressedLayout) {
    let header = SegmentHeader {
        log_id,
        sequence: segment.sequence,
        first_id: segment.first_id,
        codec: Some(codec),
        salt: segment.salt,
        preallocated: false,
    };
    let frames = records_only(
        &bytes[SEGMENT_HEADER_BYTES..bytes.len() - SEAL_BYTES],
        segment.salt,
    );
    compressed_format::build(
        &header.encode(),
        codec,
        &frames,
        segment.first_id,
        segment.salt,
    )
}

impl Wal {
    /// Whether `segment` is still a sealed, not active, segment of the log and no truncation
    /// ran since `truncations` was read: the compressed file may take its place.
    fn still_sealed_and_held(&self, segment: &Arc<Segment>, truncations: u64) -> bool {
        let shared = &self.shared;
        shared.truncations.load(Ordering::Acquire) == truncations && segment.is_sealed() && {
            let segments = shared.segments_read();
            let position = segments.iter().position(|held| Arc::ptr_eq(held, segment));
            position.is_some_and(|position| position + 1 < segments.len())
        }
    }
}

/// The record frames of a checked plain segment's frame region, without its durability marks
/// (a sealed segment is synced whole: compressed, it needs none).
fn records_only(frames: &[u8], salt: u32) -> Vec<u8> {
    let mut records = Vec::with_capacity(frames.len());
    let mut position = 0;
    while position < frames.len() {
        let frame = frame::decode_salted(&frames[position..], salt).expect("a checked segment");
        let len = frame.encoded_len();
        if frame.is_record() {
            records.extend_from_slice(&frames[position..position + len]);
        }
        position += len;
    }
    records
}

/// Checks a plain sealed segment whole before it is compressed: header, every frame, the seal,
/// and that it ends where the log thinks it does.
fn check_plain_sealed(bytes: &[u8], segment: &Segment) -> std::result::Result<(), Malformed> {
    let header = SegmentHeader::decode(bytes)?;
    if header.codec.is_some() || header.first_id != segment.first_id {
        return Err("the header does not match the segment".into());
    }
    if !lock(&segment.skips).is_empty() {
        return Err("the segment has damage skipped at open".into());
    }
    let result = scan(bytes, segment.first_id, segment.salt, false);
    if let Some(damage) = result.damages.first() {
        return Err(format!("damage at offset {}: {}", damage.offset, damage.reason).into());
    }
    if !result.sealed || result.clean_last_id != Some(segment.last_id()) {
        return Err("the segment does not end with the seal the log expects".into());
    }
    Ok(())
}
