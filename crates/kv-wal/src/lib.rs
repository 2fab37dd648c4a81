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
//! - [`failpoint`] holds named crash points on the write path, off unless a binary configures
//!   them.
//! - A failed write or fsync poisons the log: appends fail with [`Error::Poisoned`], reads go on.
//! - Sealed segments can be rewritten compressed ([`Wal::compress_sealed`], with the codec of
//!   [`WalOptions::compress_sealed_segments`]): a `.walz` file of independently compressed
//!   blocks of whole frames, with a block index, so a read decompresses one block and hands
//!   out the original frames (replication ships the same bytes). Writers are not blocked while
//!   a segment is compressed, and a crash at any step leaves a log that opens with every
//!   record.

mod compress;
mod compressed;
pub mod durable;
mod error;
pub mod failpoint;
pub mod frame;
pub mod fs;
mod options;
mod read;
mod recovery;
mod report;
mod segment;
pub mod sim;
mod stats;
mod ticket;
mod wal;
mod watermark;

pub use compress::{CompressReport, INCOMPRESSIBLE};
pub use compressed::{SegmentCodec, BLOCK_FRAMES_BYTES_TARGET, ZSTD_LEVEL};
pub use error::{Error, Result};
pub use frame::{FRAME_HEADER_BYTES, RECORD_BYTES_MAX};
pub use options::{
    RecoveryMode, SyncPolicy, WalOptions, SEGMENT_BYTES_MAX_DEFAULT, SEGMENT_BYTES_MIN,
};
pub use read::{FrameBatch, Record, WalIter};
pub use report::{Dropped, Hole, RecoveryReport, TornTail};
pub use segment::{SEAL_BYTES, SEGMENT_HEADER_BYTES};
pub use stats::{WalStats, FSYNC_BATCH_BOUNDS};
pub use ticket::AppendTicket;
pub use wal::{SegmentInfo, Wal};
pub use watermark::{WaitError, Watermark, WatermarkWait};
