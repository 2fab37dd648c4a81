//! Group commit: the committer thread every log owns writes what `Batch` appenders queued and
//! fsyncs it once for all of them; while one fdatasync runs, new appends queue up for the next.

use std::sync::Arc;
use std::time::Instant;

use crate::durability::Fsync;
use crate::error::IoContext;
use crate::options::SyncPolicy;
use crate::shared::Shared;

impl Shared {
    /// The committer: writes and fsyncs whatever `Batch` appenders (and the interval) need.
    pub(crate) fn run_committer(self: Arc<Self>) {
        let mut writer = self.writer();
        loop {
            let interval = match self.sync_policy {
                SyncPolicy::Interval(interval) => Some(interval),
                _ => None,
            };
            let unsynced =
                self.last.get() > self.durability.durable.get() || !writer.pending.is_empty();
            let interval_due =
                interval.is_some_and(|interval| unsynced && writer.last_sync.elapsed() >= interval);
            if self.durability.is_failed() || (writer.closed && !unsynced) {
                return;
            }
            if !(writer.commit_wanted || interval_due || writer.closed) {
                writer = match interval {
                    Some(interval) => {
                        self.commit_needed
                            .wait_timeout(writer, interval)
                            .unwrap_or_else(|poisoned| poisoned.into_inner())
                            .0
                    }
                    None => self
                        .commit_needed
                        .wait(writer)
                        .unwrap_or_else(|poisoned| poisoned.into_inner()),
                };
                continue;
            }
            writer.commit_wanted = false;
            let batch_records = writer.pending_frames.len() as u64;
            if self.flush_pending(&mut writer).is_err() {
                return;
            }
            let target = self.last.get();
            writer.last_sync = Instant::now();
            if target <= self.durability.durable.get() {
                continue;
            }
            let file = writer.active_file.clone();
            let path = writer.active.path.clone();
            let (segment, synced_offset) = (writer.active.clone(), writer.write_offset);
            let generation = self.durability.durable.generation();
            drop(writer);
            // The appenders are released (by the advance) before the committer takes the lock
            // they are about to ask for. A truncation meanwhile (a new generation) voids this
            // fsync's target.
            let synced = crate::fail_point!(WAL_AFTER_WRITE_BEFORE_FSYNC)
                .at(&path)
                .map_err(|error| self.poison(error.to_string()))
                .and_then(|()| {
                    let fsync = Fsync {
                        file: &*file,
                        path: &path,
                        target,
                        generation: Some(generation),
                        records: batch_records.max(1),
                        covers: Some((&segment, synced_offset)),
                    };
                    self.durability.sync(fsync, &self.stats)
                });
            if synced.is_err() {
                return;
            }
            writer = self.writer();
            if self.durability.durable.generation() != generation {
                writer.commit_wanted = true;
            }
            if let Err(error) = crate::fail_point!(WAL_AFTER_FSYNC_BEFORE_ACK) {
                self.poison(error.to_string());
                return;
            }
        }
    }
}
