//! Group commit: the committer thread every log owns writes what `Batch` appenders queued and
//! fsyncs it once for all of them; while one fdatasync runs, new appends queue up for the next.
//! A queued `Always` append gets an fsync of its own: a round takes the frames up to the end of
//! the first one queued. An append that finds the log idle commits itself (`append.rs`, its
//! ticket); the committer waits for that commit once it runs, and takes it over if appends
//! queue up before it begins.

use std::sync::Arc;

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
            let wanted = writer.commit_wanted || interval_due || writer.closed;
            if !wanted || writer.fsync_in_flight {
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
            // A write group's leader that has not begun its commit: this round takes it over
            // (its frames are written; an `Always` leader's round is its fsync alone), so
            // appends queued behind a leader whose caller is slow to wait — or waits on
            // another ticket first — are never stuck.
            let own_fsync = writer.leader.take().is_some_and(|leader| leader.own_fsync);
            writer.fsync_in_flight = true;
            let committed;
            (writer, committed) = self.commit_once(writer, own_fsync);
            let Ok(synced) = committed else {
                return;
            };
            if !synced {
                continue;
            }
            if let Err(error) = crate::fail_point!(WAL_AFTER_FSYNC_BEFORE_ACK) {
                self.poison(error.to_string());
                return;
            }
        }
    }
}
