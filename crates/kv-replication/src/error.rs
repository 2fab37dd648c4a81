//! The crate's one error type.

use std::path::{Path, PathBuf};

/// Everything that can go wrong in kv-replication.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store (and the WAL under it) failed.
    #[error(transparent)]
    Store(#[from] kv_store::Error),
    /// The node's meta file could not be read or written.
    #[error("node meta file {path}: {reason}")]
    Meta {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The node's meta file could not be read or written (the error names the file).
    #[error("node meta file: {0}")]
    MetaIo(#[source] kv_wal::Error),
    /// A write reached a node that does not lead.
    #[error("this node is not the leader")]
    NotLeader {
        /// The leader's URL, if known.
        leader_url: Option<String>,
    },
    /// A role change named an epoch that is not new to this node.
    #[error(
        "epoch {epoch} is not above epoch {highest}, which this node has already led, followed \
         or holds entries of"
    )]
    StaleEpoch {
        /// The epoch asked for.
        epoch: u64,
        /// The highest epoch this node knows.
        highest: u64,
    },
    /// The write is durable on this node, but the node stopped leading before the
    /// acknowledgements it waited for arrived: whether the write survives is unknown.
    #[error(
        "entry {id} is durable on this node, but the node stopped leading after {waited_ms} ms, \
         before the entry was acknowledged; it may or may not survive"
    )]
    SteppedDown {
        /// The entry's id.
        id: u64,
        /// The commit id this node knows now.
        commit_id: u64,
        /// How long the write had waited.
        waited_ms: u64,
    },
    /// The operation is already running.
    #[error("{0}")]
    Busy(String),
    /// A background thread could not be started, or died without an answer.
    #[error("background work failed: {0}")]
    Background(String),
    /// The write is durable on the leader (and will commit once enough followers have it),
    /// but the requested acknowledgements did not arrive in time.
    #[error(
        "entry {id} is durable on the leader but was not acknowledged by {wanted} within {waited_ms} ms \
         (commit id {commit_id})"
    )]
    AcksTimeout {
        /// The entry's id.
        id: u64,
        /// The commit id when the wait ended.
        commit_id: u64,
        /// What was waited for: "a write quorum of N" or "every live follower".
        wanted: String,
        /// How long.
        waited_ms: u64,
    },
}

impl Error {
    pub(crate) fn meta(path: &Path, reason: impl Into<String>) -> Error {
        Error::Meta {
            path: path.to_owned(),
            reason: reason.into(),
        }
    }
}

/// Result alias for kv-replication.
pub type Result<T, E = Error> = std::result::Result<T, E>;
