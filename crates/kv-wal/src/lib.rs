//! kv-wal: a segmented, checksummed, group-committed write-ahead log of opaque records.
//!
//! The log stores byte records, each under a 64-bit id that only grows, in segment files under
//! one directory. Every record is framed with its length, id and a CRC-32C; segments roll at a
//! configured size; appends are durable under an explicit [`SyncPolicy`], by default group
//! commit: concurrent appenders share one `write` and one `fdatasync`. Opening a log recovers
//! it under a [`RecoveryMode`] and returns a [`RecoveryReport`] of what was found and repaired.
//! No async runtime is needed; an append's [`AppendTicket`] can be waited on from a thread or
//! awaited from any executor.
//!
//! The byte layout and the fsync ordering of every write path are in `docs/wal-format.md`.
//!
//! # Example
//!
//! ```
//! use kv_wal::{RecoveryMode, SyncPolicy, Wal, WalOptions};
//!
//! # fn main() -> Result<(), kv_wal::Error> {
//! let dir = tempfile::tempdir().expect("temp dir");
//! let options = WalOptions {
//!     segment_bytes_max: 1 << 20,       // roll segments at 1 MiB
//!     sync_policy: SyncPolicy::Batch,   // group commit (the default)
//!     ..WalOptions::default()
//! };
//!
//! // Open (creating it), append, read back.
//! let (wal, report) = Wal::open(dir.path(), options.clone())?;
//! assert!(report.created);
//! let first = wal.append(b"set x=1")?;                  // durable when it returns
//! let ids = wal.append_batch(&[&b"set y=2"[..], b"del x"])?; // consecutive ids, one fsync
//! assert_eq!(*ids.start(), first + 1);
//! assert_eq!(wal.read(first)?.as_deref(), Some(&b"set x=1"[..]));
//!
//! // Iterate from an id, across segments.
//! let payloads: Vec<Vec<u8>> = wal
//!     .iter_from(first)
//!     .map(|record| record.map(|record| record.into_payload()))
//!     .collect::<Result<_, _>>()?;
//! assert_eq!(payloads.len(), 3);
//! wal.close()?;
//! drop(wal);
//!
//! // Reopen: recovery scans the last segment and reports what it found.
//! let (wal, report) = Wal::open(dir.path(), options)?;
//! assert!(report.is_clean());
//! assert_eq!(report.last_id, Some(first + 2));
//! assert_eq!(wal.next_id(), first + 3);             // ids continue, never reused
//! # let _ = RecoveryMode::Strict;
//! # Ok(())
//! # }
//! ```
//!
//! # Model
//!
//! - [`Wal`] owns the directory (a lock file keeps other processes out), a committer thread for
//!   group commit, and the list of segments readers see.
//! - [`frame`] is the record framing; [`fs`] is the file-system seam every byte goes through;
//!   [`sim`] is an in-memory file system that can lose power, for tests.
//! - `failpoint` (with the `failpoints` feature) holds named crash points on the write path,
//!   off unless a binary configures them.
//! - A failed write or fsync poisons the log: appends fail with [`Error::Poisoned`], reads go on.
//! - Sealed segments can be rewritten compressed ([`Wal::compress_sealed`], with the codec of
//!   [`WalOptions::compress_sealed_segments`]): a `.walz` file of independently compressed
//!   blocks of whole frames, with a block index, so a read decompresses one block and hands
//!   out the original frames (replication ships the same bytes). Writers are not blocked while
//!   a segment is compressed, and a crash at any step leaves a log that opens with every
//!   record.

mod append;
pub mod codec;
mod committer;
mod compress_sealed;
mod compressed_format;
mod compressed_scan;
mod durability;
pub mod durable;
mod error;
#[cfg(feature = "failpoints")]
pub mod failpoint;
pub mod frame;
pub mod fs;
mod meta;
mod mutex;
mod open;
mod options;
mod plain_rewrite;
mod read;
mod recovery;
mod report;
pub mod sealed_json;
mod segment_file;
mod segment_scan;
mod segments;
mod shared;
pub mod sim;
mod stats;
mod ticket;
mod truncate;
mod wal;
mod watermark;
mod writer;

/// Runs the fail point named by a constant of [`failpoint`] (e.g.
/// `fail_point!(WAL_BEFORE_APPEND)`): an `io::Result<()>` that is `Ok(())` unless a test
/// configured the point to fire. Without the `failpoints` feature it expands to `Ok(())`, and
/// the name is not even looked up.
#[cfg(feature = "failpoints")]
#[macro_export]
macro_rules! fail_point {
    ($name:ident) => {
        $crate::failpoint::hit($crate::failpoint::$name)
    };
}

/// Runs the fail point named by a constant of `failpoint`: without the `failpoints` feature,
/// always `Ok(())`.
#[cfg(not(feature = "failpoints"))]
#[macro_export]
macro_rules! fail_point {
    ($name:ident) => {
        ::std::io::Result::<()>::Ok(())
    };
}

/// The statements inside, only in a build with the `failpoints` feature (for a binary that
/// configures fail points: its own features cannot see kv-wal's).
#[cfg(feature = "failpoints")]
#[macro_export]
macro_rules! with_failpoints {
    ($($body:tt)*) => {
        $($body)*
    };
}

/// The statements inside, only in a build with the `failpoints` feature: here, nothing.
#[cfg(not(feature = "failpoints"))]
#[macro_export]
macro_rules! with_failpoints {
    ($($body:tt)*) => {};
}

pub use codec::{Codec, SegmentCodec, ZSTD_LEVEL};
pub use compress_sealed::{CompressReport, INCOMPRESSIBLE};
pub use compressed_format::BLOCK_FRAMES_BYTES_TARGET;
pub use error::{Error, Malformed, Result};
pub use frame::{FRAME_HEADER_BYTES, RECORD_BYTES_MAX};
pub use options::{
    RecoveryMode, SyncPolicy, WalOptions, SEGMENT_BYTES_MAX_DEFAULT, SEGMENT_BYTES_MIN,
    SEGMENT_PREALLOCATION_BYTES_DEFAULT,
};
pub use read::{FrameBatch, Record, WalIter};
pub use report::{Dropped, Hole, RecoveryReport, TornTail};
pub use segment_file::{SEAL_BYTES, SEGMENT_HEADER_BYTES};
pub use segments::SegmentInfo;
pub use stats::{Busy, BusySince, WalStats, FSYNC_BATCH_BOUNDS};
pub use ticket::AppendTicket;
pub use wal::Wal;
pub use watermark::{WaitError, Watermark, WatermarkWait};
