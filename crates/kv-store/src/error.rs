//! The crate's one error type.

use crate::encoding::Malformed;

/// Everything that can go wrong in kv-store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The write-ahead log failed (I/O, corruption at open, poisoned after a failed fsync,
    /// closed, record too large).
    #[error(transparent)]
    Wal(#[from] kv_wal::Error),
    /// A WAL record passed its CRC but is not a valid store entry.
    #[error("WAL record {id} is not a valid store entry: {reason}")]
    Decode {
        /// The record's id.
        id: u64,
        /// What is wrong with it.
        reason: Malformed,
    },
    /// The log does not continue the snapshot the store starts from (or, with no snapshot,
    /// does not start at the beginning): ids are missing.
    #[error("the WAL starts at id {wal_first_id} but {}: ids are missing{}", match snapshot_id { Some(id) => format!("the newest valid snapshot ends at id {id}"), None => "no valid snapshot covers the ids before it".to_owned() }, if skipped.is_empty() { String::new() } else { format!(" (damaged snapshots skipped: {})", skipped.join("; ")) })]
    Gap {
        /// The WAL's first id.
        wal_first_id: u64,
        /// The snapshot's applied id, if one was loaded.
        snapshot_id: Option<u64>,
        /// The snapshots skipped as damaged (newer than the one loaded), each with why: the
        /// files that would have covered the missing ids.
        skipped: Vec<String>,
    },
    /// Writing, reading or installing a snapshot failed.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// A snapshot was asked of a store opened without a snapshot directory.
    #[error("snapshots are off (no snapshot directory)")]
    SnapshotsOff,
    /// A cut at `after_id` would drop applied entries, and the map cannot be rebuilt: the log
    /// no longer starts at id 1 and no readable snapshot lies between its start and the cut.
    /// Nothing was changed.
    #[error("cannot rebuild the map after dropping the entries after id {after_id}: the log starts at id {log_start} and no snapshot between ids {} and {after_id} is readable{}", log_start - 1, if unreadable.is_empty() { String::new() } else { format!(" ({})", unreadable.join("; ")) })]
    CannotRebuild {
        /// Where the cut was asked.
        after_id: u64,
        /// The log's first id.
        log_start: u64,
        /// The snapshots that were candidates but could not be read, and why.
        unreadable: Vec<String>,
    },
    /// A DELETE named a key that is neither in the map nor pending. Nothing was written.
    #[error("key not found")]
    KeyNotFound,
    /// The request's ids were submitted before, with the same op: nothing was written. `id` is
    /// the first submission's entry; `outcome` is filled once that entry is applied (already,
    /// if it was).
    #[error("request already submitted as entry {id}")]
    DuplicateRequest {
        /// The first submission's entry id.
        id: u64,
        /// Its outcome, once applied.
        outcome: crate::outcome::OutcomeSlot,
    },
    /// The request's ids were submitted before with another op (another method, key, value
    /// or condition). Nothing was written.
    #[error("this client_id and request_id were already used by a different request (entry {id})")]
    RequestMismatch {
        /// The entry of the request that used the ids first.
        id: u64,
    },
}

/// Result alias for kv-store.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a snapshot could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The file system failed (the error names the file).
    #[error(transparent)]
    Io(#[from] kv_wal::Error),
    /// The file is not a whole, valid snapshot: a bad magic, version, length or CRC, a cell
    /// that does not parse, counts that disagree.
    #[error("snapshot {path}: {reason}")]
    Damaged {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong, and where.
        reason: Malformed,
    },
}
