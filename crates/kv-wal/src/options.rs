//! How a log is opened: segment size, durability, recovery mode, file system.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::codec::SegmentCodec;
use crate::error::Malformed;
use crate::fs::{FileSystem, StdFs};

/// Default segment size: 64 MiB.
pub const SEGMENT_BYTES_MAX_DEFAULT: u64 = 64 << 20;
/// Smallest segment size accepted (header, one small frame and the seal fit).
pub const SEGMENT_BYTES_MIN: u64 = 128;
/// Default preallocation of a new segment file: 64 MiB, as etcd's WAL (capped by the segment
/// size, [`WalOptions::preallocated_segment_bytes`]).
pub const SEGMENT_PREALLOCATION_BYTES_DEFAULT: u64 = 64 << 20;

/// When an append's bytes reach stable storage, named by the syscall that runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncPolicy {
    /// Every append call gets an `fdatasync` of its own, never shared, before it is
    /// acknowledged: run by its own ticket when the log was idle, else by the committer,
    /// one queued `Always` append per round.
    Always,
    /// Group commit (the default): appenders queue their frames; one committer writes everything
    /// queued with one `write` and one `fdatasync`, then releases every waiter. The append returns
    /// once durable, and concurrent appends share the fsync.
    #[default]
    Batch,
    /// The append returns after `write`; a background `fdatasync` runs at most this often. A
    /// power loss can lose the last interval of acknowledged appends.
    Interval(Duration),
    /// The append returns after `write`; the log only fsyncs when a segment rolls or the log
    /// closes. A power loss can lose any acknowledged append not yet flushed by the OS.
    Never,
}

impl SyncPolicy {
    /// Whether an append under this policy is durable when it returns.
    pub fn is_durable_on_return(&self) -> bool {
        matches!(self, SyncPolicy::Always | SyncPolicy::Batch)
    }
}

impl fmt::Display for SyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyncPolicy::Always => write!(f, "always"),
            SyncPolicy::Batch => write!(f, "batch"),
            SyncPolicy::Interval(interval) => write!(f, "interval:{}", interval.as_millis()),
            SyncPolicy::Never => write!(f, "never"),
        }
    }
}

impl FromStr for SyncPolicy {
    type Err = Malformed;
    /// Parses `always`, `batch`, `interval:<ms>` or `never`.
    fn from_str(text: &str) -> Result<SyncPolicy, Malformed> {
        match text.trim().to_ascii_lowercase().as_str() {
            "always" => Ok(SyncPolicy::Always),
            "batch" => Ok(SyncPolicy::Batch),
            "never" => Ok(SyncPolicy::Never),
            other => {
                let Some(ms) = other.strip_prefix("interval:") else {
                    return Err(format!(
                        "unknown sync policy {text:?}: expected always, batch, interval:<ms> \
                         (ms > 0) or never"
                    )
                    .into());
                };
                let milliseconds =
                    ms.parse::<u64>().ok().filter(|&ms| ms > 0).ok_or_else(|| {
                        format!(
                            "sync policy {text:?}: the interval must be a whole number of \
                             milliseconds above 0"
                        )
                    })?;
                Ok(SyncPolicy::Interval(Duration::from_millis(milliseconds)))
            }
        }
    }
}

/// What open does with damage it finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecoveryMode {
    /// The default: an incomplete, garbage or zeroed tail of the last segment (a crash
    /// mid-write) is cut off and reported. Damage anywhere else is an error naming the segment,
    /// offset and reason. Only the last segment is scanned; sealed segments are checked as they
    /// are read.
    #[default]
    TolerateTornTail,
    /// Scans everything; stops at the first bad record anywhere, keeps what comes before it,
    /// removes the rest and reports what was dropped.
    PointInTime,
    /// Scans everything; any damage, torn tail included, is an error.
    Strict,
    /// Scans everything; skips damaged records and carries on, reporting each hole by id range
    /// (the original Python project's behaviour). Readers jump over the holes.
    SkipCorrupt,
}

impl RecoveryMode {
    /// Whether open scans every segment (instead of only the last one).
    pub fn scans_all_segments(&self) -> bool {
        !matches!(self, RecoveryMode::TolerateTornTail)
    }

    /// Whether open may drop records that were whole once (`PointInTime`, `SkipCorrupt`):
    /// what an operator chooses for a log no replica can make whole again.
    pub fn may_lose_records(&self) -> bool {
        matches!(self, RecoveryMode::PointInTime | RecoveryMode::SkipCorrupt)
    }
}

impl fmt::Display for RecoveryMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            RecoveryMode::TolerateTornTail => "tolerate-torn-tail",
            RecoveryMode::PointInTime => "point-in-time",
            RecoveryMode::Strict => "strict",
            RecoveryMode::SkipCorrupt => "skip-corrupt",
        };
        f.write_str(name)
    }
}

impl FromStr for RecoveryMode {
    type Err = Malformed;
    fn from_str(text: &str) -> Result<RecoveryMode, Malformed> {
        match text.trim().to_ascii_lowercase().as_str() {
            "tolerate-torn-tail" => Ok(RecoveryMode::TolerateTornTail),
            "point-in-time" => Ok(RecoveryMode::PointInTime),
            "strict" => Ok(RecoveryMode::Strict),
            "skip-corrupt" => Ok(RecoveryMode::SkipCorrupt),
            _ => Err(format!(
                "unknown recovery mode {text:?}: expected tolerate-torn-tail, point-in-time, strict or skip-corrupt"
            ).into()),
        }
    }
}

/// Options for [`crate::Wal::open`].
#[derive(Debug, Clone)]
pub struct WalOptions {
    /// A segment rolls when the next frame would take it past this size (default 64 MiB). A
    /// record larger than this still goes in, alone in its segment.
    pub segment_bytes_max: u64,
    /// The default sync policy of appends (default [`SyncPolicy::Batch`]).
    pub sync_policy: SyncPolicy,
    /// What open does with damage (default [`RecoveryMode::TolerateTornTail`]).
    pub recovery_mode: RecoveryMode,
    /// Whether a damaged last record that is whole — its frame complete, its CRC failing, and
    /// no sector-aligned stretch of it all zeros — is refused instead of cut as a torn tail
    /// (default `false`: cut, as every mode's table says). A write the disk did not finish
    /// leaves a frame cut short or a zeroed sector (`docs/wal-format.md`, "Assumptions about
    /// the disk"), so a whole frame that does not check is a bit flip in synced data, and
    /// cutting it silently drops a record that may have been acknowledged — etcd's WAL refuses
    /// it too (a CRC mismatch that `isTornEntry` does not explain). For logs where that is a
    /// safety problem and not only a loss (the controller's Raft log: an entry this node
    /// acknowledged to its leader). The cost: a torn write that left garbage, not zeros, is
    /// refused too.
    pub refuse_whole_damaged_tail: bool,
    /// The first id the caller needs the log to read (default 0: every id). Records below it
    /// are ones whose effect the caller holds elsewhere (kvd passes the id after its newest
    /// snapshot's), kept only to be handed out again, to a follower catching up. In the
    /// default mode, damage with whole records after it (a bit flip, not a torn write) whose
    /// records all lie below this id does not stop the open: every record is kept, a reader
    /// that would cross the damage fails with [`crate::Error::Corrupt`] (the report's
    /// `unreadable` lists the ids), and the records after it are read as usual. Other modes
    /// ignore it. Reading a sealed segment found damaged after open behaves the same,
    /// whatever this says.
    pub needed_from: u64,
    /// The id of the first record of a *new* log (default 1; ignored for an existing log).
    pub first_id: u64,
    /// Payloads of at least this many bytes are stored LZ4-compressed (when that makes them
    /// smaller), flagged in their frame; `None` (the default): never. Readers decompress
    /// transparently; replication ships frames as stored, so compressed frames stay compressed
    /// on the wire.
    pub compress_records_above: Option<usize>,
    /// The codec [`crate::Wal::compress_sealed`] rewrites sealed segments with; `None` (the
    /// default): sealed segments stay plain and `compress_sealed` does nothing. Compressed
    /// segments are read whatever this says.
    pub compress_sealed_segments: Option<SegmentCodec>,
    /// How long a new segment file is made when it is created, its disk space reserved with
    /// `fallocate(2)` (default [`SEGMENT_PREALLOCATION_BYTES_DEFAULT`], 64 MiB; capped by
    /// `segment_bytes_max`). Appends then write into space the file already has, so their
    /// `fdatasync` never changes the file's size (no journal commit for it). Zeros after a
    /// preallocated segment's data are free space, not a torn tail (`docs/wal-format.md`,
    /// "Preallocated segments"). 0 turns preallocation off: segments grow as records arrive.
    pub segment_preallocation_bytes: u64,
    /// When an append under [`SyncPolicy::Batch`] or [`SyncPolicy::Always`] finds the log
    /// idle (no commit in flight, nothing queued), its ticket writes and `fdatasync`s its
    /// records on the thread that first waits on it, as a write group's leader, instead of
    /// handing them to the committer thread and waiting to be woken: one fsync and no thread
    /// hops, the shortest path for a single writer. Appends that find a commit in flight queue
    /// for the committer; appends queued before the leader begins wake the committer, which
    /// takes the group's commit over. At most one commit at a time runs (default `true`;
    /// `false`: the committer does every commit, and no ticket ever runs an fsync).
    pub inline_commit_when_idle: bool,
    /// Where files live (default the real file system).
    pub file_system: Arc<dyn FileSystem>,
}

impl WalOptions {
    /// How long a new segment file is made: `min(segment_preallocation_bytes,
    /// segment_bytes_max)`, 0 when that is no longer than a segment header (no preallocation).
    pub fn preallocated_segment_bytes(&self) -> u64 {
        let bytes = self.segment_preallocation_bytes.min(self.segment_bytes_max);
        if bytes <= crate::segment_file::SEGMENT_HEADER_BYTES as u64 {
            return 0;
        }
        bytes
    }
}

impl Default for WalOptions {
    fn default() -> WalOptions {
        WalOptions {
            segment_bytes_max: SEGMENT_BYTES_MAX_DEFAULT,
            sync_policy: SyncPolicy::default(),
            recovery_mode: RecoveryMode::default(),
            refuse_whole_damaged_tail: false,
            needed_from: 0,
            first_id: 1,
            compress_records_above: None,
            compress_sealed_segments: None,
            segment_preallocation_bytes: SEGMENT_PREALLOCATION_BYTES_DEFAULT,
            inline_commit_when_idle: true,
            file_system: Arc::new(StdFs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_and_print() {
        for text in ["always", "batch", "never", "interval:25"] {
            let policy: SyncPolicy = text.parse().unwrap();
            assert_eq!(policy.to_string(), text);
        }
        // A known policy with a bad interval says so (it was "unknown sync policy").
        for bad in ["interval:0", "interval:x", "interval:"] {
            let error = bad.parse::<SyncPolicy>().unwrap_err().to_string();
            assert!(error.contains("the interval must be"), "{bad}: {error}");
        }
        let error = "sometimes".parse::<SyncPolicy>().unwrap_err().to_string();
        assert!(error.contains("unknown sync policy"), "{error}");
        for text in [
            "tolerate-torn-tail",
            "point-in-time",
            "strict",
            "skip-corrupt",
        ] {
            let mode: RecoveryMode = text.parse().unwrap();
            assert_eq!(mode.to_string(), text);
        }
    }
}
