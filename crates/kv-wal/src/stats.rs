//! Counters the log keeps about itself, for metrics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

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
    /// The segment write in flight.
    write_busy: BusySince,
    /// The append `fdatasync` in flight.
    sync_busy: BusySince,
}

/// Which disk operation [`Stats::disk_busy`] tracks.
#[derive(Debug, Clone, Copy)]
pub(crate) enum DiskOp {
    /// A write of frames to the active segment.
    Write,
    /// An append's `fdatasync`.
    Sync,
}

/// `at` in nanoseconds on a monotonic scale that starts at 1 the first time it is used (0
/// stands for "none" in the slots).
fn nanos_at(at: Instant) -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(|| at);
    u64::try_from(at.saturating_duration_since(base).as_nanos()).unwrap_or(u64::MAX - 1) + 1
}

/// Since when the oldest disk operation of one kind still in flight has been waiting: each
/// operation holds a [`Busy`] from [`BusySince::begin_at`] while it runs (only the oldest of
/// overlapping ones is tracked), and [`BusySince::waited`] reads the wait from one atomic — no
/// lock a hung operation could hold. The log's own writes and `fdatasync`s use it
/// ([`WalStats::disk_wait_seconds`]), and so can other stores on the same disk (the
/// controller's Raft storage).
#[derive(Debug, Default)]
pub struct BusySince {
    /// When the tracked operation began ([`nanos_at`]; 0: none).
    started: AtomicU64,
}

impl BusySince {
    /// Marks an operation that began at `started` as in flight until the guard drops (also
    /// when it unwinds).
    pub fn begin_at(&self, started: Instant) -> Busy<'_> {
        let now = nanos_at(started);
        let started =
            match self
                .started
                .compare_exchange(0, now, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => now,
                Err(_) => 0,
            };
        Busy {
            slot: &self.started,
            started,
        }
    }

    /// How long the oldest tracked operation in flight has waited; zero when none is.
    pub fn waited(&self) -> Duration {
        match self.started.load(Ordering::Acquire) {
            0 => Duration::ZERO,
            started => Duration::from_nanos(nanos_at(Instant::now()).saturating_sub(started)),
        }
    }
}

/// Clears its operation's start time when the operation returns (see [`BusySince`]).
pub struct Busy<'a> {
    slot: &'a AtomicU64,
    started: u64,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        if self.started != 0 {
            let _ =
                self.slot
                    .compare_exchange(self.started, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
    }
}

impl Stats {
    /// Records that a write or an `fdatasync` began at `started`, until the returned guard
    /// drops, so that [`WalStats::disk_wait_seconds`] shows how long the disk has kept one
    /// waiting. The oldest of each kind is kept (another of the same kind at the same time is
    /// not tracked).
    pub fn disk_busy(&self, op: DiskOp, started: Instant) -> Busy<'_> {
        match op {
            DiskOp::Write => self.write_busy.begin_at(started),
            DiskOp::Sync => self.sync_busy.begin_at(started),
        }
    }

    /// How long the oldest tracked write or `fdatasync` in flight has been waiting.
    fn disk_wait(&self) -> Duration {
        self.write_busy.waited().max(self.sync_busy.waited())
    }

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
            disk_wait_seconds: self.disk_wait().as_secs_f64(),
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
    /// How long the oldest write of frames or append `fdatasync` still in flight has been
    /// waiting for the disk (0 when none is): a hung or very slow disk shows here.
    pub disk_wait_seconds: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The oldest operation in flight is the one measured; its end (a return or a panic)
    /// clears the wait, and a younger one that overlapped it is not tracked.
    #[test]
    fn busy_since_measures_the_oldest_operation_until_it_ends_or_unwinds() {
        let busy = BusySince::default();
        assert_eq!(busy.waited(), Duration::ZERO);
        let started = Instant::now() - Duration::from_secs(3);
        let oldest = busy.begin_at(started);
        let younger = busy.begin_at(Instant::now());
        assert!(
            busy.waited() >= Duration::from_secs(3),
            "{:?}",
            busy.waited()
        );
        drop(younger);
        assert!(
            busy.waited() >= Duration::from_secs(3),
            "{:?}",
            busy.waited()
        );
        drop(oldest);
        assert_eq!(busy.waited(), Duration::ZERO);
        let unwound = std::panic::catch_unwind(|| {
            let _busy = busy.begin_at(started);
            panic!("a storage write failed");
        });
        assert!(unwound.is_err());
        assert_eq!(
            busy.waited(),
            Duration::ZERO,
            "a panic left the operation in flight"
        );
    }
}
