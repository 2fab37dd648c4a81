//! Group commit: the committer thread every log owns writes what `Batch` appenders queued and
//! fsyncs it once for all of them; while one fdatasync runs, new appends queue up for the next.
//! A queued `Always` append gets an fsync of its own: a round takes the frames up to the end of
//! the first one queued. An append that finds the log idle commits itself (`append.rs`, its
//! ticket); the committer waits for that commit once it runs, and takes it over if appends
//! queue up before it begins.
//!
//! Under load a commit that released many writers is followed by one that finds only the few
//! that queued during its fsync: started at once, it serves them and makes the rest — back a
//! round trip later — wait a whole fsync more, and the batches alternate big and small. So the
//! committer first *gathers* (`gather_window`): it waits, briefly, for about half of the
//! released writers to queue again, as Redis's event loop answers every ready client before
//! its one fsync and PostgreSQL's `commit_delay` waits for siblings.

use std::sync::Arc;
use std::time::Duration;

use crate::options::SyncPolicy;
use crate::shared::Shared;
use crate::writer::{Writer, GATHER_RELEASED_MIN, GATHER_WAIT_MAX};

/// Whether the committer waits before its next commit, and for how long and how many queued
/// frames: when the last commit released at least [`GATHER_RELEASED_MIN`] writers less than
/// [`GATHER_WAIT_MAX`] ago and fewer than half of them are queued, it waits for that half, at
/// most half the last fsync's duration (so a wait never costs more than the fsync it may
/// save) and at most [`GATHER_WAIT_MAX`].
pub(crate) fn gather_window(
    released: u64,
    since_release: Duration,
    last_fsync: Duration,
    queued: usize,
) -> Option<(Duration, usize)> {
    let wanted = usize::try_from(released / 2).unwrap_or(usize::MAX);
    if released < GATHER_RELEASED_MIN || since_release >= GATHER_WAIT_MAX || queued >= wanted {
        return None;
    }
    let window = (last_fsync / 2).min(GATHER_WAIT_MAX);
    (!window.is_zero()).then_some((window, wanted))
}

impl Shared {
    /// The committer: writes and fsyncs whatever `Batch` appenders (and the interval) need.
    pub(crate) fn run_committer(self: Arc<Self>) {
        let mut writer = self.writer();
        // Whether this round gathered already (`gather_window`): it then commits at once.
        let mut gathered = false;
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
            if !gathered {
                if let Some((window, wanted)) = self.gather(&writer) {
                    writer.gather_until = Some(wanted);
                    writer = self
                        .commit_needed
                        .wait_timeout(writer, window)
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .0;
                    writer.gather_until = None;
                    gathered = true;
                    continue;
                }
            }
            gathered = false;
            // A write group's leader that has not begun its commit: this round takes it over
            // (an `Always` leader's round is its own frames and their fsync alone), so appends
            // queued behind a leader whose caller is slow to wait — or waits on another ticket
            // first — are never stuck.
            let always_leader_through = writer
                .leader
                .take()
                .and_then(|leader| leader.always_through());
            writer.fsync_in_flight = true;
            let committed;
            (writer, committed) = self.commit_once(writer, always_leader_through);
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

    /// [`gather_window`] for the committer's next commit: only for plain `Batch` appends (an
    /// `Always` append queued, an interval, a close: commit at once).
    fn gather(&self, writer: &Writer) -> Option<(Duration, usize)> {
        if self.sync_policy != SyncPolicy::Batch || writer.closed || !writer.always_ends.is_empty()
        {
            return None;
        }
        gather_window(
            writer.last_commit_released,
            writer.last_commit_end.elapsed(),
            writer.last_fsync,
            writer.pending_frames.len(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_commit_gathers_only_after_releasing_many_writers_lately_with_few_back() {
        let fsync = 2 * MS;
        // Released 32 a moment ago, 3 queued: wait (half the fsync, capped) for 16.
        assert_eq!(
            gather_window(32, Duration::ZERO, fsync, 3),
            Some((GATHER_WAIT_MAX, 16))
        );
        assert_eq!(
            gather_window(32, Duration::ZERO, MS / 10, 3),
            Some((MS / 20, 16))
        );
        // Half of them are back: commit at once.
        assert_eq!(gather_window(32, Duration::ZERO, fsync, 16), None);
        // Too few released (a lone writer's commit, one connection): never wait.
        assert_eq!(
            gather_window(GATHER_RELEASED_MIN - 1, Duration::ZERO, fsync, 0),
            None
        );
        assert!(gather_window(GATHER_RELEASED_MIN, Duration::ZERO, fsync, 0).is_some());
        // Released long ago: they are not about to return.
        assert_eq!(gather_window(32, GATHER_WAIT_MAX, fsync, 3), None);
        // No fsync measured yet: nothing to weigh a wait against.
        assert_eq!(gather_window(32, Duration::ZERO, Duration::ZERO, 3), None);
    }
}
