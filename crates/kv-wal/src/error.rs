//! The crate's one error type, with the context needed to act on it.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in kv-wal.
///
/// Damage found at open is usually *not* an error: a torn tail is data, reported in
/// [`crate::RecoveryReport`]. It becomes an error only when the chosen
/// [`crate::RecoveryMode`] says the damage may not be repaired silently.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system call failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A segment holds bytes that do not decode as the log's records.
    #[error("corrupt WAL segment {segment} at offset {offset}: {reason}")]
    Corrupt {
        /// The segment file.
        segment: PathBuf,
        /// Byte offset of the damage within the file.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// An earlier write or fsync failed; the log refuses writes from then on.
    ///
    /// Retrying an fsync after a failure is unsafe (the kernel may have dropped the dirty pages),
    /// so the log latches instead. Reads keep working. Reopen the log to recover.
    #[error("the log refuses writes after an earlier I/O failure: {0}")]
    Poisoned(String),
    /// The file system had no room for a new segment (`ENOSPC`, or `EDQUOT`): the append
    /// that needed it was not made (none of its records is in the log) and the log stays
    /// writable: a later append tries again, and succeeds once there is room. Appends that fit
    /// the active segment's preallocated space never need room of their own.
    #[error("the log is out of disk space: {0}")]
    OutOfSpace(String),
    /// A record is larger than [`crate::RECORD_BYTES_MAX`].
    #[error("record of {len} bytes exceeds the limit of {max} bytes")]
    RecordTooLarge {
        /// Payload length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Frames handed to [`crate::Wal::append_frames`] do not continue the log.
    #[error("frames start at id {first_id} but the log's next id is {next_id}")]
    IdConflict {
        /// The first id of the frames.
        first_id: u64,
        /// The id the log expects next.
        next_id: u64,
    },
    /// A caller-supplied argument is out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Another process (or another `Wal` in this one) has the directory open.
    #[error("the WAL directory {0} is in use by another process")]
    Locked(PathBuf),
    /// The log was truncated under the operation: an iterator reading it, or an append whose
    /// records were dropped before they became durable. An append whose records all lie at or
    /// below the cut is kept and ends acknowledged; a batch the cut splits ends `Truncated`
    /// with its records up to the cut still in the log.
    #[error("the log was truncated under this operation")]
    Truncated,
    /// The log has been closed.
    #[error("the log is closed")]
    Closed,
}

/// Result alias for kv-wal.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches a path to an [`io::Error`].
pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| Error::Io {
            path: path.into(),
            source,
        })
    }
}

impl Error {
    /// Whether the file system had no room (or the user no quota) left: [`Error::OutOfSpace`],
    /// or an I/O error saying so (`ENOSPC`, `EDQUOT`) — what a caller may wait out and retry,
    /// unlike [`Error::Poisoned`].
    pub fn is_out_of_space(&self) -> bool {
        match self {
            Error::OutOfSpace(_) => true,
            Error::Io { source, .. } => is_out_of_space(source),
            _ => false,
        }
    }
}

/// Whether an I/O error says the file system has no room (or the user no quota) left.
pub(crate) fn is_out_of_space(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

/// Why bytes or text did not decode: what was malformed and where, in words. The decoders of
/// the log's formats (segment headers, compressed blocks, codecs), the text forms of the
/// options and the fail point specs fail with it; kv-store's decoders too.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(String);

impl From<String> for Malformed {
    fn from(reason: String) -> Malformed {
        Malformed(reason)
    }
}

impl From<&str> for Malformed {
    fn from(reason: &str) -> Malformed {
        Malformed(reason.to_owned())
    }
}
