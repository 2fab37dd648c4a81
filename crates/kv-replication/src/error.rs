//! The crate's one error type.

use std::path::{Path, PathBuf};

use crate::transport::TransportError;

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
    /// The write is in this node's log, but the disk did not make it durable within the
    /// acks timeout (a disk that hangs, or is that slow): nothing was acknowledged, and the
    /// entry commits — its write taking effect — if the disk completes it and this node still
    /// leads; a client retries with an idempotency key to learn which.
    #[error(
        "entry {id} was written to this node's log, but its disk has not made it durable \
         within {waited_ms} ms: its outcome is unknown (it takes effect if the disk completes \
         it while this node leads)"
    )]
    NotDurable {
        /// The entry's id.
        id: u64,
        /// The commit id this node knows now.
        commit_id: u64,
        /// How long the write had waited.
        waited_ms: u64,
    },
    /// `acks=` named no known level.
    #[error("unknown acks {text:?}: expected leader, quorum or all")]
    UnknownAcks {
        /// What was given.
        text: String,
    },
    /// The leader could not be reached, or its answer could not be read.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// A batch of frames failed its checks at `offset` (a bad CRC, a torn or malformed frame).
    #[error("at byte {offset}: {reason}")]
    DamagedBatch {
        /// Where in the batch.
        offset: usize,
        /// What is wrong there.
        reason: String,
    },
    /// A batch does not start at the id asked for.
    #[error("batch starts at id {first_id}, {asked_id} was asked for")]
    BatchStart {
        /// Its first id.
        first_id: u64,
        /// The id asked for.
        asked_id: u64,
    },
    /// A batch holds no frame.
    #[error("empty batch")]
    EmptyBatch,
    /// The log changed under a read (purged or truncated): it skips from `asked_id` to
    /// `found_id`.
    #[error("the log has a gap: asked for id {asked_id}, found {found_id}")]
    LogGap {
        /// The id asked for.
        asked_id: u64,
        /// The first id found after it.
        found_id: u64,
    },
    /// A snapshot was needed on a node opened without a snapshot directory.
    #[error("snapshots are off on this follower (no snapshot directory)")]
    SnapshotsOff,
    /// The leader compacted the entries a follower needs but has no snapshot to offer.
    #[error("the leader has compacted its log but offers no snapshot")]
    NoSnapshotOffered,
    /// The node offering the snapshot does not lead the epoch whose leader asked for it.
    #[error(
        "the node offering the snapshot leads epoch {offered_by}, not epoch {asked_by} whose \
         leader asked for the install; fetching again"
    )]
    SnapshotOfAnotherEpoch {
        /// The epoch the offering node leads (0: none).
        offered_by: u64,
        /// The epoch of the leader that asked.
        asked_by: u64,
    },
    /// The leader sent a snapshot chunk of the wrong size.
    #[error("snapshot chunk at {offset}: {received_bytes} bytes for {asked_bytes} asked")]
    SnapshotChunk {
        /// Where in the file.
        offset: u64,
        /// Bytes received.
        received_bytes: usize,
        /// Bytes asked for.
        asked_bytes: u32,
    },
    /// A file of the snapshot download could not be written.
    #[error("{doing}: {source}")]
    SnapshotFile {
        /// What the download was doing.
        doing: &'static str,
        /// What failed (the error names the file).
        #[source]
        source: kv_wal::Error,
    },
    /// The downloaded snapshot did not check whole; it was deleted, to be downloaded again.
    #[error("the downloaded snapshot is damaged ({source}); downloading again")]
    SnapshotDamaged {
        /// What is wrong with it.
        #[source]
        source: kv_store::snapshot::SnapshotError,
    },
    /// The downloaded snapshot could not be installed.
    #[error("cannot install the snapshot: {source}")]
    SnapshotInstall {
        /// Why.
        #[source]
        source: kv_store::Error,
    },
    /// A follower's own log refused what the leader sent.
    #[error("cannot {action}: {source}")]
    FollowerLog {
        /// What the follower was doing: "append the leader's entries", ...
        action: &'static str,
        /// Why it failed.
        #[source]
        source: kv_store::Error,
    },
    /// A follower could not record a new leader epoch before acting on it.
    #[error("cannot record the leader's epoch {epoch}: {source}")]
    RecordEpoch {
        /// The epoch.
        epoch: u64,
        /// Why.
        #[source]
        source: Box<Error>,
    },
    /// A test's fail point fired (only in a build with kv-wal's `failpoints` feature; the name
    /// keeps the word the release check looks for out of a default kvd).
    #[error("injected fault: {0}")]
    InjectedFault(#[source] std::io::Error),
    /// Replication stopped for a reason an operator must look at (another cluster, a cut
    /// below the commit id).
    #[error("{reason}")]
    ReplicationStopped {
        /// Why.
        reason: String,
    },
    /// The operation is already running.
    #[error("{0}")]
    Busy(String),
    /// The node cannot take the write now, for a while: no leader is known, it holds no
    /// lease, a newer epoch began, a leadership transfer is being prepared. Retryable (503).
    #[error("{0}")]
    Unavailable(String),
    /// A controller's call on a node opened without the controller.
    #[error("this node was not opened under the controller (Node::open_controlled)")]
    NotControlled,
    /// A controller's view that is not for this node (another node id or cluster).
    #[error("controller view refused: {0}")]
    ViewMismatch(String),
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
    /// Whether this is the node's disk finding no room: its own log (`kv_wal::Error::OutOfSpace`:
    /// for the leader's entries on a follower, for a new leader's no-op; nothing was
    /// appended), or a save of its meta file (a new epoch heard, followed or led; the file is
    /// replaced whole, so the old one stands). The same step succeeds once there is room.
    /// Before, a meta save that found the disk full stopped a follower's replication for good,
    /// and a node named leader then never took the role (the nemesis's disk faults).
    pub fn is_out_of_space(&self) -> bool {
        match self {
            Error::FollowerLog {
                source: kv_store::Error::Wal(kv_wal::Error::OutOfSpace(_)),
                ..
            }
            | Error::Store(kv_store::Error::Wal(kv_wal::Error::OutOfSpace(_))) => true,
            Error::MetaIo(error) => error.is_out_of_space(),
            Error::RecordEpoch { source, .. } => source.is_out_of_space(),
            _ => false,
        }
    }

    pub(crate) fn meta(path: &Path, reason: impl Into<String>) -> Error {
        Error::Meta {
            path: path.to_owned(),
            reason: reason.into(),
        }
    }
}

/// Result alias for kv-replication.
pub type Result<T, E = Error> = std::result::Result<T, E>;
