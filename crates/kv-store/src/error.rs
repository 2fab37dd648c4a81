//! The crate's one error type.

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
        reason: String,
    },
    /// A DELETE named a key that is neither in the map nor pending. Nothing was written.
    #[error("key not found")]
    KeyNotFound,
}

/// Result alias for kv-store.
pub type Result<T, E = Error> = std::result::Result<T, E>;
