//! The crate's one error type.

use std::io;
use std::path::PathBuf;

use crate::meta::{NodeId, Rejection};

/// What can go wrong in the controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file operation failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The Raft log (a kv-wal log) or a controller file (written through `kv_wal::durable`)
    /// failed; the error names the file.
    #[error("controller storage: {0}")]
    Log(#[from] kv_wal::Error),
    /// A controller file does not decode.
    #[error("corrupt controller file {path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// This node is not the active controller (the Raft leader); send the request there.
    #[error("this node is not the active controller; it is {leader_id:?} at {leader_url:?}")]
    NotLeader {
        /// The active controller, if known.
        leader_id: Option<NodeId>,
        /// Its URL, if known.
        leader_url: Option<String>,
    },
    /// The state machine refused a command (nothing changed).
    #[error("refused: {0}")]
    Rejected(#[from] Rejection),
    /// The data directory belongs to another node.
    #[error(
        "the controller state in this data directory belongs to node {stored}, not {configured}"
    )]
    NodeIdMismatch {
        /// The id stored.
        stored: NodeId,
        /// The id configured.
        configured: NodeId,
    },
    /// A peer of another cluster spoke to this one.
    #[error(
        "cluster mismatch: this node belongs to cluster {ours:016x}, the peer to {theirs:016x}"
    )]
    ClusterMismatch {
        /// This node's cluster id.
        ours: u64,
        /// The peer's.
        theirs: u64,
    },
    /// The controller already holds state and must not be initialized again.
    #[error("the controller is already initialized")]
    AlreadyInitialized,
    /// Bad options.
    #[error("invalid controller options: {0}")]
    InvalidOptions(String),
    /// A planned transfer to the most advanced live ISR member was asked for, and there is
    /// none (the data leader is the only live member of the ISR).
    #[error("no live ISR member to transfer the leadership to")]
    NoTransferTarget,
    /// A planned transfer to `node` was asked for, and the active controller has not heard
    /// from it within the session timeout: it is down or cut off, and could not take over.
    #[error(
        "node {node} is not live (the active controller last heard from it {silent_ms} ms ago, \
         beyond the session timeout): the leadership cannot be transferred to it"
    )]
    TransferTargetDown {
        /// The target asked for.
        node: NodeId,
        /// How long ago its last heartbeat arrived.
        silent_ms: u64,
    },
    /// Raft failed in another way (it is shutting down, a membership change is in progress, …).
    #[error("raft: {0}")]
    Raft(String),
}

impl Error {
    /// Whether a write through kv-wal (the log, or a file rewritten by `kv_wal::durable`)
    /// found the disk full (`ENOSPC`, `EDQUOT`): nothing was written, and the same write
    /// succeeds once there is room (see [`crate::room`]). kv-wal's own check decides.
    pub fn is_out_of_space(&self) -> bool {
        matches!(self, Error::Log(error) if error.is_out_of_space())
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
