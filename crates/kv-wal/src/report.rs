//! What open found and did: the recovery report.

use std::fmt;
use std::path::PathBuf;

use crate::options::RecoveryMode;

/// An incomplete or damaged tail of the last segment, cut off at open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The segment that was cut.
    pub segment: PathBuf,
    /// Where the cut was made (the end of the last good record).
    pub offset: u64,
    /// Bytes removed.
    pub bytes_dropped: u64,
    /// What was wrong at `offset`.
    pub reason: String,
}

/// Damaged bytes skipped in [`RecoveryMode::SkipCorrupt`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hole {
    /// The segment holding the damage (or the first missing one).
    pub segment: PathBuf,
    /// Where the damage starts.
    pub offset: u64,
    /// Ids lost in the hole: `first_missing_id..=last_missing_id` (empty when the damage held
    /// no live id, e.g. a duplicated record).
    pub first_missing_id: u64,
    /// Last lost id.
    pub last_missing_id: u64,
    /// What was wrong.
    pub reason: String,
}

impl Hole {
    /// How many ids the hole lost.
    pub fn missing_ids(&self) -> u64 {
        (self.last_missing_id + 1).saturating_sub(self.first_missing_id)
    }
}

/// Everything after the first damage, removed in [`RecoveryMode::PointInTime`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// The segment where damage was found.
    pub segment: PathBuf,
    /// Where in it.
    pub offset: u64,
    /// What was wrong.
    pub reason: String,
    /// Valid records after the damage that were dropped with it.
    pub records_dropped: u64,
    /// Later segments removed whole.
    pub segments_removed: Vec<PathBuf>,
}

/// What [`crate::Wal::open`] found and did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecoveryReport {
    /// The mode open ran in.
    pub mode: RecoveryMode,
    /// A new, empty log was created.
    pub created: bool,
    /// Segments in the log after recovery.
    pub segments: usize,
    /// Segments whose frames were scanned (the rest were trusted to their seals).
    pub segments_scanned: usize,
    /// Records found in the scanned segments and trusted from seals.
    pub records: u64,
    /// First id in the log, if any.
    pub first_id: Option<u64>,
    /// Last id in the log, if any.
    pub last_id: Option<u64>,
    /// The id the next append gets.
    pub next_id: u64,
    /// A torn tail that was cut off.
    pub torn_tail: Option<TornTail>,
    /// Holes skipped ([`RecoveryMode::SkipCorrupt`]).
    pub holes: Vec<Hole>,
    /// Damage the default mode opened past because it lies before
    /// [`crate::WalOptions::needed_from`]: in each segment listed, the ids
    /// `first_missing_id..=last_missing_id` (from the first damage to where whole records
    /// resume) cannot be read — reading them, or iterating across them, fails with
    /// [`crate::Error::Corrupt`] — and every record after them is kept and read (the records
    /// before the damage too).
    pub unreadable: Vec<Hole>,
    /// What was dropped ([`RecoveryMode::PointInTime`]).
    pub dropped: Option<Dropped>,
    /// Files removed: leftover temporaries, a segment whose creation was torn.
    pub removed_files: Vec<PathBuf>,
    /// A truncation interrupted by a crash that open completed (truncated after this id).
    pub completed_truncation: Option<u64>,
}

impl RecoveryReport {
    /// True when open found no damage at all.
    pub fn is_clean(&self) -> bool {
        self.torn_tail.is_none()
            && self.holes.is_empty()
            && self.unreadable.is_empty()
            && self.dropped.is_none()
    }

    /// True when open repaired something — cut a torn tail, skipped holes, dropped records,
    /// removed files — as opposed to finding only damage it opened past (`unreadable`), which
    /// changes nothing.
    pub fn changed_the_log(&self) -> bool {
        self.torn_tail.is_some()
            || !self.holes.is_empty()
            || self.dropped.is_some()
            || !self.removed_files.is_empty()
    }
}

impl fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "mode {}: {} segment(s), {} scanned, {} record(s), ids {:?}..={:?}, next id {}",
            self.mode,
            self.segments,
            self.segments_scanned,
            self.records,
            self.first_id,
            self.last_id,
            self.next_id
        )?;
        if self.created {
            write!(f, "; created a new log")?;
        }
        if let Some(torn) = &self.torn_tail {
            write!(
                f,
                "; cut a torn tail of {} byte(s) at {}:{} ({})",
                torn.bytes_dropped,
                torn.segment.display(),
                torn.offset,
                torn.reason
            )?;
        }
        for hole in &self.holes {
            write!(
                f,
                "; skipped ids {}..={} at {}:{} ({})",
                hole.first_missing_id,
                hole.last_missing_id,
                hole.segment.display(),
                hole.offset,
                hole.reason
            )?;
        }
        for fenced in &self.unreadable {
            write!(
                f,
                "; opened past damage below the ids needed: ids {}..={} unreadable at {}:{} ({})",
                fenced.first_missing_id,
                fenced.last_missing_id,
                fenced.segment.display(),
                fenced.offset,
                fenced.reason
            )?;
        }
        if let Some(dropped) = &self.dropped {
            write!(
                f,
                "; dropped everything from {}:{} ({}): {} record(s), {} later segment(s)",
                dropped.segment.display(),
                dropped.offset,
                dropped.reason,
                dropped.records_dropped,
                dropped.segments_removed.len()
            )?;
        }
        if let Some(id) = self.completed_truncation {
            write!(f, "; completed an interrupted truncation after id {id}")?;
        }
        for path in &self.removed_files {
            write!(f, "; removed {}", path.display())?;
        }
        Ok(())
    }
}
