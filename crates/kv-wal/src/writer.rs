//! The writer's state: the next id, the frames waiting to be written, and the active segment
//! they go to. It lives behind one mutex in [`crate::shared::Shared`]; the write path that
//! changes it is in `append.rs`, the group commit in `committer.rs`.

use std::sync::Arc;
use std::time::Instant;

use crate::fs::WalFile;
use crate::segments::Segment;

/// The writer's state, behind one mutex.
pub(crate) struct Writer {
    pub next_id: u64,
    /// Encoded frames not yet written.
    pub pending: Vec<u8>,
    /// (id, offset within `pending`) of each pending frame.
    pub pending_frames: Vec<(u64, usize)>,
    pub active: Arc<Segment>,
    pub active_file: Arc<dyn WalFile>,
    pub next_sequence: u64,
    /// Where the next frame goes in the active file.
    pub write_offset: u64,
    /// A `Batch` appender is waiting for the committer.
    pub commit_wanted: bool,
    pub last_sync: Instant,
    pub closed: bool,
}

impl Writer {
    pub(crate) fn pending_last_id(&self) -> Option<u64> {
        self.pending_frames.last().map(|&(id, _)| id)
    }
    pub(crate) fn active_has_records(&self) -> bool {
        !self.active.is_empty() || !self.pending_frames.is_empty()
    }
}
