//! Counters the log keeps about itself, for metrics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the group-commit batch-size histogram (records per fsync).
pub const FSYNC_BATCH_BOUNDS: [u64; 11] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];

#[derive(Debug, Default)]
pub(crate) struct Stats {
    append_calls: AtomicU64,
    records_appended: AtomicU64,
    writes: AtomicU64,
    bytes_written: AtomicU64,
    fsyncs: AtomicU64,
    fsync_nanos: AtomicU64,
    fsync_batch_counts: [AtomicU64; FSYNC_BATCH_BOUNDS.len() + 1],
    fsync_batch_records: AtomicU64,
    inline_commits: AtomicU64,
    segments_compressed: AtomicU64,
    compressed_bytes_before: AtomicU64,
    compressed_bytes_after: AtomicU64,
}

impl Stats {
    pub fn on_append(&self, records: u64) {
        self.append_calls.fetch_add(1, Ordering::Relaxed);
        self.records_appended.fetch_add(records, Ordering::Relaxed);
    }
    pub fn on_write(&self, bytes: u64) {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.bytes_written.fetch_add(bytes, Ordering::Relaxed);
    }
    /// `records`: how many appended records the fsync made durable (0 = not an append fsync).
    pub fn on_fsync(&self, elapsed: Duration, records: u64) {
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.fsync_nanos.fetch_add(
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        if records > 0 {
            let bucket = FSYNC_BATCH_BOUNDS
                .iter()
                .position(|&bound| records <= bound)
                .unwrap_or(FSYNC_BATCH_BOUNDS.len());
            self.fsync_batch_counts[bucket].fetch_add(1, Ordering::Relaxed);
            self.fsync_batch_records
                .fetch_add(records, Ordering::Relaxed);
        }
    }
    /// An appender committed its own records (it found the log idle).
    pub fn on_inline_commit(&self) {
        self.inline_commits.fetch_add(1, Ordering::Relaxed);
    }
    /// A segment of `before` bytes was rewritten compressed in `after` bytes.
    pub fn on_compress(&self, before: u64, after: u64) {
        self.segments_compressed.fetch_add(1, Ordering::Relaxed);
        self.compressed_bytes_before
            .fetch_add(before, Ordering::Relaxed);
        self.compressed_bytes_after
            .fetch_add(after, Ordering::Relaxed);
    }
    pub fn snapshot(&self) -> WalStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        WalStats {
            append_calls: load(&self.append_calls),
            records_appended: load(&self.records_appended),
            writes: load(&self.writes),
            bytes_written: load(&self.bytes_written),
            fsyncs: load(&self.fsyncs),
            fsync_seconds_total: load(&self.fsync_nanos) as f64 / 1e9,
            fsync_batch_counts: self.fsync_batch_counts.iter().map(load).collect(),
            fsync_batch_records_total: load(&self.fsync_batch_records),
            inline_commits: load(&self.inline_commits),
            segments_compressed: load(&self.segments_compressed),
            compressed_bytes_before: load(&self.compressed_bytes_before),
            compressed_bytes_after: load(&self.compressed_bytes_after),
        }
    }
}

/// A snapshot of the log's counters.
#[derive(Debug, Clone, PartialEq)]
pub struct WalStats {
    /// Calls to append (single or batch).
    pub append_calls: u64,
    /// Records appended.
    pub records_appended: u64,
    /// `write` calls to segment files.
    pub writes: u64,
    /// Bytes written to segment files.
    pub bytes_written: u64,
    /// `fdatasync` calls.
    pub fsyncs: u64,
    /// Time spent in `fdatasync`.
    pub fsync_seconds_total: f64,
    /// Group-commit batch sizes: count of fsyncs per bucket of [`FSYNC_BATCH_BOUNDS`], the
    /// last entry counting batches above 1024 records.
    pub fsync_batch_counts: Vec<u64>,
    /// Records made durable by counted fsyncs.
    pub fsync_batch_records_total: u64,
    /// Commits an appender ran itself, finding the log idle (included in `fsyncs`; the rest
    /// of the append fsyncs are the committer's).
    pub inline_commits: u64,
    /// Sealed segments rewritten compressed by this process ([`crate::Wal::compress_sealed`]).
    pub segments_compressed: u64,
    /// Their plain bytes.
    pub compressed_bytes_before: u64,
    /// Their compressed bytes.
    pub compressed_bytes_after: u64,
}
