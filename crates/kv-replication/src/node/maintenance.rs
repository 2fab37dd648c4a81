//! Maintenance: snapshots, log compaction and the background task that runs them. The policy
//! ([`crate::compaction`]) says when a snapshot is due and how far the log may be purged; this
//! module writes the snapshot on a low-priority thread of its own and purges.
//! [`Node::run_maintenance`] is the task a node runs beside its role: every
//! [`MaintenanceOptions::check_interval`] it saves its progress (now and then), compresses the
//! log's sealed segments (when asked) and snapshots when the policy says so.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{lock, off_the_workers, Node};
use crate::compaction::{
    purge_point, CompactionControl, CompactionRun, PurgeReport, COMPACTION_RUNS_KEPT,
};
use crate::error::{Error, Result};

/// How often the maintenance task checks the snapshot policy (and compresses sealed segments,
/// when on): the WAL written between two checks adds to the disk use the policy allows.
pub const MAINTENANCE_CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// The pause after a failed automatic snapshot; it doubles with each failure in a row, up to
/// [`SNAPSHOT_RETRY_MAX`].
pub const SNAPSHOT_RETRY_MIN: Duration = Duration::from_secs(1);
/// The longest pause between automatic snapshots that keep failing.
pub const SNAPSHOT_RETRY_MAX: Duration = Duration::from_secs(60);
/// How often the maintenance task saves the applied commit id and the epoch heard in
/// `node.meta`.
pub const PERSIST_PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// Settings of [`Node::run_maintenance`].
#[derive(Debug, Clone)]
pub struct MaintenanceOptions {
    /// How often the task runs.
    pub check_interval: Duration,
    /// How often it saves the node's progress ([`Node::persist_progress`]).
    pub persist_interval: Duration,
    /// Whether it rewrites the log's sealed segments compressed (with the codec the WAL was
    /// opened with).
    pub compress_sealed_segments: bool,
}

impl Default for MaintenanceOptions {
    fn default() -> MaintenanceOptions {
        MaintenanceOptions {
            check_interval: MAINTENANCE_CHECK_INTERVAL,
            persist_interval: PERSIST_PROGRESS_INTERVAL,
            compress_sealed_segments: false,
        }
    }
}

impl Node {
    /// The node's background maintenance, until `shutdown` resolves: every
    /// `check_interval`, save the progress (every `persist_interval`), compress sealed
    /// segments (if on; a blocking task, appends and reads go on), and write a snapshot and
    /// compact the log when the policy says so. Failures are logged and retried at the next
    /// check; a failed snapshot after a pause that doubles ([`SNAPSHOT_RETRY_MIN`] to
    /// [`SNAPSHOT_RETRY_MAX`]). Saving the progress one last time at shutdown is the caller's
    /// (after the other loops stopped).
    pub async fn run_maintenance(
        self: Arc<Self>,
        options: MaintenanceOptions,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut last_persisted = Instant::now();
        // After a failed snapshot: when the next may start, and the pause before it.
        let mut retry: Option<(Instant, Duration)> = None;
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(options.check_interval) => {}
            }
            if last_persisted.elapsed() >= options.persist_interval {
                last_persisted = Instant::now();
                // Off the async workers: the save waits on the disk, which may take seconds to
                // answer, and the node's heartbeats must go on meanwhile.
                if let Err(error) = off_the_workers(|| self.persist_progress()) {
                    tracing::error!(%error, "cannot save the commit id and epoch");
                }
                self.clone().check_room().await;
            }
            if options.compress_sealed_segments {
                let worker = self.clone();
                if let Err(error) =
                    tokio::task::spawn_blocking(move || worker.compress_sealed_segments()).await
                {
                    tracing::error!(%error, "segment compression task failed");
                }
            }
            if retry.is_some_and(|(next, _)| Instant::now() < next) || !self.snapshot_due() {
                continue;
            }
            match self.snapshot_and_compact_in_background().await {
                Ok(_) => retry = None,
                Err(error) => {
                    // A snapshot that cannot be written (a full disk: it needs room for a
                    // second copy of the data before the first goes) would otherwise be tried
                    // at every check, writing up to the free space each time.
                    let pause = snapshot_retry_pause(retry.map(|(_, pause)| pause));
                    retry = Some((Instant::now() + pause, pause));
                    let mut state = lock(&self.compaction);
                    state.snapshots_failed += 1;
                    state.last_snapshot_failure = Some(error.to_string());
                    drop(state);
                    tracing::error!(%error, "snapshot failed: trying again in {pause:?}");
                }
            }
        }
    }

    /// While the log found no room for a new segment, whether one fits now (a probe, off the
    /// async workers): so the node stops reporting a full disk once space is freed, without
    /// waiting for a write that needs a segment (`kv_wal::Wal::check_room`).
    async fn check_room(self: Arc<Self>) {
        if self.store.log_status().out_of_space.is_none() {
            return;
        }
        match tokio::task::spawn_blocking(move || self.store.check_room()).await {
            Ok(Ok(true)) => tracing::info!("the disk has room for a new log segment again"),
            Ok(Ok(false)) => {}
            Ok(Err(error)) => tracing::warn!(%error, "cannot check the disk for room"),
            Err(error) => tracing::error!(%error, "the check for room failed"),
        }
    }

    /// Rewrites the WAL's sealed, still plain segments compressed (a blocking call: appends
    /// and reads go on meanwhile) and logs what it did.
    fn compress_sealed_segments(&self) {
        match self.store.compress_sealed_segments() {
            Ok(report) => {
                if report.segments_compressed > 0 {
                    tracing::info!(
                        segments = report.segments_compressed,
                        bytes_before = report.bytes_before,
                        bytes_after = report.bytes_after,
                        seconds = report.seconds,
                        "compressed sealed WAL segments ({:.2}x)",
                        report.ratio()
                    );
                }
                for (segment, reason) in &report.skipped {
                    if reason != kv_wal::INCOMPRESSIBLE {
                        tracing::warn!(segment = %segment.display(), %reason, "sealed WAL segment left plain");
                    }
                }
            }
            Err(error) => tracing::error!(%error, "cannot compress sealed WAL segments"),
        }
    }

    /// Whether the policy asks for a snapshot now (never while automatic snapshots are off).
    pub fn snapshot_due(&self) -> bool {
        let options = &self.options.compaction;
        if self.store.snapshot_dir().is_none() {
            return false;
        }
        let (by_time, gap_to_cover) = {
            let mut state = lock(&self.compaction);
            if state.automatic_off {
                return false;
            }
            let since = *state.interval_since.get_or_insert_with(Instant::now);
            let by_time = state
                .interval_set
                .unwrap_or(options.snapshot_interval)
                .is_some_and(|interval| since.elapsed() >= interval);
            (by_time, state.gap_to_cover)
        };
        let newest = self.store.newest_snapshot_id();
        let applied = self.store.applied_id();
        if applied <= newest {
            return false;
        }
        // A follower waits at a gap no snapshot covers: one through the id before its end does.
        let covers_the_gap = gap_to_cover > newest + 1 && applied + 1 >= gap_to_cover;
        if by_time || covers_the_gap {
            return true;
        }
        let wal_bytes_after: u64 = self
            .store
            .segments()
            .iter()
            .filter(|segment| segment.last_id.is_none_or(|last| last > newest))
            .map(|segment| segment.size_bytes)
            .sum();
        crate::compaction::snapshot_due(
            options,
            applied - newest,
            wal_bytes_after,
            self.store.live_bytes(),
        )
    }

    /// Has the maintenance task take a snapshot that covers a gap of the log a follower
    /// reached (`first_id_after` is the first id after it) as soon as one can: the ids in it
    /// are nowhere but in a snapshot (a point-in-time repair dropped them), and without one the
    /// follower stays at the gap.
    pub(crate) fn cover_gap(&self, first_id_after: u64) {
        let mut state = lock(&self.compaction);
        if first_id_after > state.gap_to_cover {
            state.gap_to_cover = first_id_after;
            tracing::warn!(
                first_id_after,
                newest_snapshot = self.store.newest_snapshot_id(),
                automatic_snapshots = !state.automatic_off,
                "a follower reached ids of this log it cannot read and no snapshot covers (ids \
                 a repair dropped, or a segment damaged under the running node — a restart \
                 will refuse it): the next automatic snapshot covers them"
            );
        }
    }

    /// Turns automatic snapshots on or off and sets the time trigger (`Some(None)`: off), as
    /// `POST /compaction/configure` asks; `None` leaves a switch as it is. Returns the result.
    pub fn configure_compaction(
        &self,
        enabled: Option<bool>,
        interval: Option<Option<Duration>>,
    ) -> CompactionControl {
        {
            let mut state = lock(&self.compaction);
            if let Some(enabled) = enabled {
                state.automatic_off = !enabled;
            }
            if let Some(interval) = interval {
                state.interval_set = Some(interval);
                state.interval_since = Some(Instant::now());
            }
        }
        self.compaction_control()
    }

    /// The switches of automatic compaction and the last runs.
    pub fn compaction_control(&self) -> CompactionControl {
        let state = lock(&self.compaction);
        CompactionControl {
            enabled: !state.automatic_off,
            interval: state
                .interval_set
                .unwrap_or(self.options.compaction.snapshot_interval),
            running: state.running,
            runs: state.runs.iter().cloned().collect(),
        }
    }

    /// [`Node::snapshot_and_compact`] on a thread of its own. The view of the map is taken at
    /// normal priority (it holds the map's read lock for an instant, and a holder preempted
    /// there would make writes wait); then the thread's CPU priority drops to the lowest
    /// (nice 19 on Linux), so that on a busy machine serializing and compressing a large
    /// snapshot yields to request handling instead of raising its latency (as RocksDB does
    /// for its background work). The future resolves when the snapshot is written.
    pub async fn snapshot_and_compact_in_background(
        self: &Arc<Self>,
    ) -> Result<(kv_store::SnapshotInfo, PurgeReport)> {
        let node = self.clone();
        let (sender, receiver) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("kvd-snapshot".to_owned())
            .spawn(move || {
                let _ = sender.send(node.snapshot_and_compact_then(lower_this_threads_priority));
            })
            .map_err(|error| {
                Error::Background(format!("cannot start the snapshot thread: {error}"))
            })?;
        receiver.await.unwrap_or_else(|_| {
            Err(Error::Background(
                "the snapshot thread ended without an answer".to_owned(),
            ))
        })
    }

    /// Writes a snapshot of the applied map (writes go on meanwhile), prunes old snapshots and
    /// compacts the log. Blocking: run it on a thread of its own (see
    /// [`Node::snapshot_and_compact_in_background`]).
    pub fn snapshot_and_compact(&self) -> Result<(kv_store::SnapshotInfo, PurgeReport)> {
        self.snapshot_and_compact_then(|| {})
    }

    /// [`Node::snapshot_and_compact`], calling `after_view` once the view is copied.
    fn snapshot_and_compact_then(
        &self,
        after_view: impl FnOnce(),
    ) -> Result<(kv_store::SnapshotInfo, PurgeReport)> {
        {
            let mut state = lock(&self.compaction);
            if state.running {
                return Err(Error::Busy(
                    "a snapshot is already being written".to_owned(),
                ));
            }
            state.running = true;
        }
        let started = Instant::now();
        let first_id_before = self.store.first_id();
        // Seal a large active segment first: the compaction after the snapshot can then
        // purge it once the snapshot covers it. A log that cannot take the seal (poisoned by a
        // failed write or fsync) is still snapshotted: its applied state is sound.
        if let Err(error) = self
            .store
            .seal_active_segment(crate::compaction::SEAL_BEFORE_SNAPSHOT_BYTES)
        {
            tracing::warn!(%error, "cannot seal the active WAL segment before the snapshot");
        }
        let view = self.store.snapshot_view();
        after_view();
        let written = self.store.write_snapshot_of(
            view,
            self.options.compaction.codec,
            self.options.compaction.snapshots_kept,
        );
        let result = written.map_err(Error::from).and_then(|info| {
            tracing::info!(
                applied_id = info.applied_id,
                keys = info.key_count,
                size_bytes = info.size_bytes,
                raw_bytes = info.raw_bytes,
                codec = %info.codec,
                write_ms = info.write_duration.as_millis() as u64,
                view_ms = info.view_duration.as_millis() as u64,
                longest_lock_hold_us = info.longest_lock_hold.as_micros() as u64,
                "snapshot written"
            );
            let purge = self.compact()?;
            Ok((info, purge))
        });
        let mut state = lock(&self.compaction);
        state.running = false;
        if let Ok((info, purge)) = &result {
            state.snapshots_written += 1;
            state.last_snapshot_failure = None;
            state.last_snapshot = Some(info.clone());
            state.last_purge = Some(purge.clone());
            state.interval_since = Some(Instant::now());
            let first_id_after = self.store.first_id();
            if state.runs.len() == COMPACTION_RUNS_KEPT {
                state.runs.pop_front();
            }
            state.runs.push_back(CompactionRun {
                unix_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |since| since.as_millis() as u64),
                duration_ms: started.elapsed().as_millis() as u64,
                snapshot_id: info.applied_id,
                segments_removed: purge.segments_removed.len(),
                entries_removed: first_id_after.saturating_sub(first_id_before),
            });
        }
        result
    }

    /// Removes the WAL segments the newest snapshot covers, keeping those live followers still
    /// need within the retention limit.
    pub fn compact(&self) -> Result<PurgeReport> {
        let Some((snapshot_id, _)) = self.store.snapshots().into_iter().next() else {
            return Ok(PurgeReport {
                snapshot_id: 0,
                purge_before: 0,
                segments_removed: Vec::new(),
                retained_for: Vec::new(),
            });
        };
        let segments: Vec<(u64, u64)> = self
            .store
            .segments()
            .iter()
            .filter(|segment| !segment.is_active)
            .filter_map(|segment| Some((segment.last_id?, segment.size_bytes)))
            .collect();
        let followers: Vec<(String, u64)> = self
            .with_leader(|leader| {
                leader
                    .followers(Instant::now(), self.store.last_id())
                    .into_iter()
                    .filter(|follower| follower.status != crate::leader::FollowerHealth::Down)
                    .map(|follower| (follower.follower_id, follower.next_id))
                    .collect()
            })
            .unwrap_or_default();
        let (purge_before, retained_for) = purge_point(
            snapshot_id,
            &segments,
            &followers,
            self.options.compaction.wal_retention_bytes,
        );
        let removed = self.store.purge_wal_before(purge_before)?;
        Ok(PurgeReport {
            snapshot_id,
            purge_before,
            segments_removed: removed
                .iter()
                .map(|path| path.display().to_string())
                .collect(),
            retained_for,
        })
    }
}

/// The pause before the next automatic snapshot after one failed, given the pause before the
/// failed one if it followed a failure too: [`SNAPSHOT_RETRY_MIN`], doubling, at most
/// [`SNAPSHOT_RETRY_MAX`].
fn snapshot_retry_pause(previous: Option<Duration>) -> Duration {
    previous.map_or(SNAPSHOT_RETRY_MIN, |pause| {
        (pause * 2).min(SNAPSHOT_RETRY_MAX)
    })
}

/// Nice value of background threads (snapshots): 0 is normal, 19 the lowest priority.
const BACKGROUND_NICE: i32 = 19;

/// Lowers the calling thread's CPU priority to [`BACKGROUND_NICE`] (Linux: the nice value is
/// per thread). Best effort: a failure is logged and the work runs at normal priority.
fn lower_this_threads_priority() {
    #[cfg(target_os = "linux")]
    {
        let thread = rustix::thread::gettid();
        if let Err(error) = rustix::process::setpriority_process(Some(thread), BACKGROUND_NICE) {
            tracing::warn!(%error, "cannot lower the snapshot thread's priority");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{snapshot_retry_pause, SNAPSHOT_RETRY_MAX, SNAPSHOT_RETRY_MIN};

    #[test]
    fn a_failing_snapshot_waits_twice_as_long_each_time_up_to_a_minute() {
        let mut pauses = Vec::new();
        let mut pause = None;
        for _ in 0..10 {
            let next = snapshot_retry_pause(pause);
            pauses.push(next.as_secs());
            pause = Some(next);
        }
        assert_eq!(pauses, [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]);
        assert_eq!(snapshot_retry_pause(None), SNAPSHOT_RETRY_MIN);
        assert_eq!(
            snapshot_retry_pause(Some(Duration::from_secs(59))),
            SNAPSHOT_RETRY_MAX
        );
    }
}
