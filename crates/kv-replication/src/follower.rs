//! The follower's state machine, without I/O: what to ask the leader next, and what to do
//! with each answer or failure. A driver ([`crate::Node::run_follower`]) performs the steps.
//!
//! Every decision is made here, so the simulation covers it: an answer to a request the log
//! has moved past is dropped ([`Step::Refetch`]); a leader epoch newer than the one recorded
//! on disk is recorded before anything else is done with the answer ([`Step::PersistEpoch`]);
//! a failed snapshot download or install backs off like a failed fetch.
//!
//! Epochs: every answer carries the answering node's leader epoch. An answer from an epoch
//! below the highest one known is refused whole (a deposed leader); a higher one is recorded
//! before anything of it is done. Under the controller ([`FollowerState::with_epochs_from_controller`])
//! a leader's cut is obeyed even below the commit id heard from an earlier leader (under
//! `N = 1` an earlier leader's acknowledged tail may be lost in a failover, as documented;
//! under `N >= 2` a correct leader never asks for such a cut), and counted; without it such a
//! cut stops replication for an operator.
//!
//! Every method takes `now`, and jitter comes from a seeded generator, so the logic runs on
//! virtual time in tests.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::frames::check_frames;
use crate::log_view::LogView;
use crate::protocol::{FetchRequest, FetchResponse};

/// Settings of the follower's loop.
#[derive(Debug, Clone)]
pub struct FollowerOptions {
    /// This follower's node id (the controller's: `follower-N` is N).
    pub node_id: u64,
    /// Most frame bytes per fetch.
    pub fetch_bytes_max: u32,
    /// How long the leader may hold a fetch that has nothing new (the heartbeat interval).
    pub fetch_wait: Duration,
    /// First retry delay after a failure.
    pub backoff_initial: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// Seed of the retry jitter.
    pub jitter_seed: u64,
}

impl Default for FollowerOptions {
    fn default() -> FollowerOptions {
        FollowerOptions {
            node_id: 1,
            fetch_bytes_max: 4 << 20,
            fetch_wait: Duration::from_millis(500),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            jitter_seed: 0,
        }
    }
}

/// What the driver does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Append these frames (already checked: CRCs, ids from the requested id on), wait until
    /// durable, then apply up to `commit_id` (never past what is durable). If `adopt_cluster`
    /// is set, persist that cluster id first.
    Append {
        /// The frames.
        frames: Vec<u8>,
        /// The leader's commit id.
        commit_id: u64,
        /// A cluster id to adopt (a new follower's first answer).
        adopt_cluster: Option<u64>,
    },
    /// Nothing new: apply up to `commit_id` and fetch again.
    Apply {
        /// The leader's commit id.
        commit_id: u64,
        /// A cluster id to adopt.
        adopt_cluster: Option<u64>,
    },
    /// Drop every entry after `after_id`, then fetch again.
    Truncate {
        /// The last id to keep.
        after_id: u64,
    },
    /// The entries needed were compacted away on the leader: download its newest snapshot,
    /// install it, then fetch from after it.
    InstallSnapshot {
        /// The leader's first id.
        leader_first_id: u64,
        /// The epoch of the leader that said so: a snapshot is installed only if the node
        /// offering it still leads this epoch.
        leader_epoch: u64,
        /// A cluster id to adopt (a new follower's first answer).
        adopt_cluster: Option<u64>,
    },
    /// Record `epoch` — the newest leader epoch heard — in the node's meta file, then perform
    /// `then`. Emitted before anything of a new epoch is appended (or truncated, or
    /// installed), so that a node promoted later starts above every epoch it has followed.
    /// The driver must record it or stop replicating.
    PersistEpoch {
        /// The epoch to record.
        epoch: u64,
        /// What to do once it is on disk.
        then: Box<Step>,
    },
    /// The answer was to a request the local log has moved past since (its next id or the
    /// epoch of its last entry changed): nothing in it is believed; fetch again at once.
    Refetch,
    /// Wait, then fetch again.
    Retry {
        /// How long.
        after: Duration,
    },
    /// Stop replicating; an operator must act.
    Stop {
        /// Why.
        reason: String,
    },
}

/// The follower's link to its leader, as `/cluster_status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum LinkState {
    /// No answer yet.
    Connecting,
    /// The last fetch was answered.
    Connected,
    /// Fetches fail; retrying with backoff.
    Retrying {
        /// The last failure.
        error: String,
        /// Failures in a row.
        failures: u32,
    },
    /// Replication stopped for a reason an operator must look at.
    Stopped {
        /// Why.
        reason: String,
    },
}

/// The follower's state.
#[derive(Debug)]
pub struct FollowerState {
    options: FollowerOptions,
    cluster_id: u64,
    leader_epoch: u64,
    /// The highest leader epoch known to be in the node's meta file.
    epoch_persisted: u64,
    /// The highest commit id heard: entries up to it must never be truncated.
    commit_seen: u64,
    failures: u32,
    link: LinkState,
    last_contact: Option<Instant>,
    corrupt_batches_refused: u64,
    jitter: StdRng,
    /// Cuts below the commit id heard are obeyed (the leader's epoch is the controller's).
    epochs_from_controller: bool,
    /// Cuts obeyed below the commit id heard.
    committed_truncations: u64,
    /// When this follower last held everything its leader had (as of the leader's answer, or
    /// of the answer before).
    caught_up_at: Option<Instant>,
    /// The leader's last id and the time of the previous answer with entries.
    previous_answer: Option<(u64, Instant)>,
    /// The send time of the last request whose answer's commit id this follower applied.
    fresh_as_of: Option<Instant>,
    /// Under the controller: the epoch and send time of the last heartbeat whose answer (the
    /// active controller's) named this epoch current, so no other leader had begun by then.
    leader_confirmed: Option<(u64, Instant)>,
}

impl FollowerState {
    /// A follower of cluster `cluster_id` (0: not joined yet) that has not heard anything yet.
    pub fn new(options: FollowerOptions, cluster_id: u64) -> FollowerState {
        FollowerState::resume(options, cluster_id, 0, 0)
    }

    /// A follower that remembers (from its meta file) the highest leader epoch and commit id
    /// it heard before a restart: a leader in an older epoch is refused (a stale leader that
    /// came back), and the log is never cut below that commit id. `leader_epoch` is on disk
    /// already.
    pub fn resume(
        options: FollowerOptions,
        cluster_id: u64,
        leader_epoch: u64,
        commit_seen: u64,
    ) -> FollowerState {
        let jitter = StdRng::seed_from_u64(options.jitter_seed);
        FollowerState {
            options,
            cluster_id,
            leader_epoch,
            epoch_persisted: leader_epoch,
            commit_seen,
            failures: 0,
            link: LinkState::Connecting,
            last_contact: None,
            corrupt_batches_refused: 0,
            jitter,
            epochs_from_controller: false,
            committed_truncations: 0,
            caught_up_at: None,
            previous_answer: None,
            fresh_as_of: None,
            leader_confirmed: None,
        }
    }

    /// A follower whose leaders are named by the controller: a cut below the commit id heard
    /// from an earlier leader is obeyed (and counted), not a reason to stop.
    pub fn with_epochs_from_controller(mut self) -> FollowerState {
        self.epochs_from_controller = true;
        self
    }

    /// The next fetch, from the local log's state.
    pub fn request(&self, log: &impl LogView) -> FetchRequest {
        let (next_id, last_epoch) = position(log);
        FetchRequest {
            cluster_id: self.cluster_id,
            node_id: self.options.node_id,
            leader_epoch: self.leader_epoch,
            next_id,
            last_epoch,
            durable_id: log.durable_id().min(next_id - 1),
            commit_id: self.commit_seen,
            bytes_max: self.options.fetch_bytes_max,
            wait_ms: self.options.fetch_wait.as_millis().min(u32::MAX as u128) as u32,
        }
    }

    /// Decides what to do with the leader's answer to `request`, given the local log now.
    pub fn on_response(
        &mut self,
        now: Instant,
        request: &FetchRequest,
        response: FetchResponse,
        log: &impl LogView,
    ) -> Step {
        if position(log) != (request.next_id, request.last_epoch) {
            // An answer to an older request (a late or repeated one): its entries, its cut or
            // its snapshot were decided for a log that is no longer there.
            return Step::Refetch;
        }
        let step = self.decide(now, request, response);
        self.epoch_first(step)
    }

    /// Decides what to do with a push on a stream (see [`crate::stream`]) that should start at
    /// `next_id`, the first id after what this follower has appended on the stream so far —
    /// not its log's position, which may run ahead of what is written while appends are
    /// queued. The stream keeps the order, so no answer here is a late one; a batch that does
    /// not start at `next_id` is refused like a damaged one.
    pub fn on_push(
        &mut self,
        now: Instant,
        next_id: u64,
        response: FetchResponse,
        log: &impl LogView,
    ) -> Step {
        let request = FetchRequest {
            next_id,
            durable_id: log.durable_id().min(next_id - 1),
            ..self.request(log)
        };
        let step = self.decide(now, &request, response);
        self.epoch_first(step)
    }

    /// A stream's acknowledgement: what this follower holds durably, as a fetch from just
    /// after it (durable entries are written, so their epochs are known even while later
    /// appends are queued).
    pub fn ack(&self, log: &impl LogView) -> FetchRequest {
        let durable_id = log.durable_id();
        let last_epoch = if durable_id == 0 {
            0
        } else {
            log.epoch_at(durable_id).unwrap_or(0)
        };
        FetchRequest {
            next_id: durable_id + 1,
            last_epoch,
            durable_id,
            ..self.request(log)
        }
    }

    /// Wraps `step` in [`Step::PersistEpoch`] when the answer raised the leader epoch above
    /// the one on disk.
    fn epoch_first(&mut self, step: Step) -> Step {
        if self.leader_epoch <= self.epoch_persisted {
            return step;
        }
        self.epoch_persisted = self.leader_epoch;
        Step::PersistEpoch {
            epoch: self.leader_epoch,
            then: Box::new(step),
        }
    }

    fn decide(&mut self, now: Instant, request: &FetchRequest, response: FetchResponse) -> Step {
        match response {
            FetchResponse::Entries {
                cluster_id,
                leader_epoch,
                commit_id,
                last_id,
                frames,
                ..
            } => self
                .check_leader(now, cluster_id, leader_epoch)
                .unwrap_or_else(|| {
                    self.caught_up(now, request, last_id);
                    self.on_entries(now, request, cluster_id, leader_epoch, commit_id, frames)
                }),
            FetchResponse::Diverged {
                cluster_id,
                leader_epoch,
                truncate_after,
            } => self
                .check_leader(now, cluster_id, leader_epoch)
                .unwrap_or_else(|| self.on_diverged(now, request, leader_epoch, truncate_after)),
            FetchResponse::SnapshotNeeded {
                cluster_id,
                first_id,
                leader_epoch,
            } => self
                .check_leader(now, cluster_id, leader_epoch)
                .unwrap_or_else(|| self.on_snapshot_needed(now, cluster_id, leader_epoch, first_id)),
            FetchResponse::NotLeader {
                leader_epoch,
                leader_url,
            } => {
                // It knows a newer epoch, or it was deposed: either way, nothing older than
                // the highest epoch heard is believed from now on.
                self.leader_epoch = self.leader_epoch.max(leader_epoch);
                self.failed(
                    now,
                    match leader_url {
                        Some(url) => {
                            format!("the node asked is not the leader (the leader is {url})")
                        }
                        None => "the node asked is not the leader".to_owned(),
                    },
                )
            }
            FetchResponse::ClusterMismatch {
                leader_cluster_id, ..
            } => self.stop(format!(
                "this follower belongs to cluster {:016x} but the leader runs cluster {leader_cluster_id:016x} \
                 (a leader started on a fresh data directory, or the wrong leader)",
                self.cluster_id
            )),
        }
    }

    /// Entries (or none: a heartbeat) from a leader that passed [`FollowerState::check_leader`].
    fn on_entries(
        &mut self,
        now: Instant,
        request: &FetchRequest,
        cluster_id: u64,
        leader_epoch: u64,
        commit_id: u64,
        frames: Vec<u8>,
    ) -> Step {
        if !frames.is_empty() {
            if let Err(reason) = check_frames(&frames, request.next_id) {
                // Damaged in transit or on the leader: never appended, fetched again, and
                // nothing else in the answer is trusted either.
                self.corrupt_batches_refused += 1;
                return self.failed(now, format!("refused a damaged batch: {reason}"));
            }
        }
        let adopt_cluster = (self.cluster_id == 0).then_some(cluster_id);
        self.cluster_id = cluster_id;
        self.leader_epoch = self.leader_epoch.max(leader_epoch);
        self.commit_seen = self.commit_seen.max(commit_id);
        self.connected(now);
        if frames.is_empty() {
            return Step::Apply {
                commit_id,
                adopt_cluster,
            };
        }
        Step::Append {
            frames,
            commit_id,
            adopt_cluster,
        }
    }

    /// The leader says this log parts from its own after `truncate_after`.
    fn on_diverged(
        &mut self,
        now: Instant,
        request: &FetchRequest,
        leader_epoch: u64,
        truncate_after: u64,
    ) -> Step {
        self.leader_epoch = self.leader_epoch.max(leader_epoch);
        self.connected(now);
        if truncate_after >= request.next_id - 1 {
            return self.failed(
                now,
                "the leader asked for a truncation that drops nothing".to_owned(),
            );
        }
        if truncate_after < self.commit_seen {
            if !self.epochs_from_controller {
                return self.stop(format!(
                    "the leader's log parts from this follower's at id {}, below the commit id {} \
                     this follower has seen: committed entries would be discarded; resync this \
                     follower from an empty data directory",
                    truncate_after + 1,
                    self.commit_seen
                ));
            }
            // The controller's leader of a newer epoch lacks what an earlier leader committed:
            // possible only where acknowledgement did not wait for the ISR (`N = 1`).
            self.committed_truncations += 1;
            self.commit_seen = truncate_after;
        }
        Step::Truncate {
            after_id: truncate_after,
        }
    }

    /// The leader no longer holds the entries this follower needs next.
    fn on_snapshot_needed(
        &mut self,
        now: Instant,
        cluster_id: u64,
        leader_epoch: u64,
        first_id: u64,
    ) -> Step {
        self.leader_epoch = self.leader_epoch.max(leader_epoch);
        let adopt_cluster = (self.cluster_id == 0).then_some(cluster_id);
        self.cluster_id = cluster_id;
        // Answered, but the failures in a row are not over: every retry of a snapshot that
        // cannot be downloaded or installed (a full disk, say) comes back here first, and
        // resetting them made the backoff its first delay for ever — ~23 downloads a second
        // of the leader's snapshot. Entries after the install end them.
        let failures = self.failures;
        self.connected(now);
        self.failures = failures;
        Step::InstallSnapshot {
            leader_first_id: first_id,
            leader_epoch,
            adopt_cluster,
        }
    }

    /// Notes whether the answer shows this follower caught up: it held (durably, as the
    /// request said) the leader's last id as of this answer — or as of the previous answer,
    /// which it then held at that answer's time (Kafka's rule, so a follower one batch behind
    /// under a steady load counts as caught up).
    fn caught_up(&mut self, now: Instant, request: &FetchRequest, leader_last_id: u64) {
        if request.durable_id >= leader_last_id {
            self.caught_up_at = Some(now);
        } else if let Some((previous_last_id, previous_at)) = self.previous_answer {
            if request.durable_id >= previous_last_id {
                self.caught_up_at = Some(
                    self.caught_up_at
                        .map_or(previous_at, |at| at.max(previous_at)),
                );
            }
        }
        self.previous_answer = Some((leader_last_id, now));
    }

    /// The driver applied up to `applied_id` after an answer carrying `commit_id` to a request
    /// it sent at `sent_at`: if that covers the commit id, this follower held everything
    /// committed as of `sent_at` (the answer was made later).
    pub fn on_applied(&mut self, sent_at: Instant, commit_id: u64, applied_id: u64) {
        if applied_id >= commit_id {
            self.fresh_as_of = Some(self.fresh_as_of.map_or(sent_at, |at| at.max(sent_at)));
        }
    }

    /// The active controller answered a heartbeat sent at `sent_at` naming `epoch` as the
    /// current leader epoch: no leader of a later epoch had begun by then.
    pub fn confirm_leader(&mut self, epoch: u64, sent_at: Instant) {
        if epoch != self.leader_epoch {
            return;
        }
        let at = match self.leader_confirmed {
            Some((confirmed_epoch, at)) if confirmed_epoch == epoch => at.max(sent_at),
            _ => sent_at,
        };
        self.leader_confirmed = Some((epoch, at));
    }

    /// When the controller last confirmed that this follower's leader still leads (`None`:
    /// never for its epoch). Always `None` outside the controller.
    pub fn leader_confirmed_at(&self) -> Option<Instant> {
        self.leader_confirmed
            .filter(|(epoch, _)| *epoch == self.leader_epoch)
            .map(|(_, at)| at)
    }

    /// How stale this follower's reads may be at `now`: the time since the send time of the
    /// last fetch whose answer's commit id it had applied — and, under the controller, since
    /// the controller last confirmed its leader still leads, whichever is older. `None` before
    /// either. A deposed leader cut off with this follower goes on answering its fetches with a
    /// commit id that never moves again; before, each answer made the follower "fresh", and
    /// reads under `?max_staleness_ms=1000` were served 8.5 s stale while a new leader took
    /// writes (found by partitioning 5 nodes with network namespaces).
    pub fn staleness(&self, now: Instant) -> Option<Duration> {
        let fresh = self.fresh_as_of?;
        let as_of = match self.epochs_from_controller {
            true => fresh.min(self.leader_confirmed_at()?),
            false => fresh,
        };
        Some(now.saturating_duration_since(as_of))
    }

    /// Whether this follower held everything its leader had within `lag_limit` of `now`.
    pub fn is_caught_up(&self, now: Instant, lag_limit: Duration) -> bool {
        self.caught_up_at
            .is_some_and(|at| now.saturating_duration_since(at) <= lag_limit)
    }

    /// Cuts obeyed below the commit id heard (see the module).
    pub fn committed_truncations(&self) -> u64 {
        self.committed_truncations
    }

    /// The checks every answer from the leader passes first: its cluster, then its epoch.
    fn check_leader(&mut self, now: Instant, cluster_id: u64, leader_epoch: u64) -> Option<Step> {
        self.check_cluster(cluster_id)
            .or_else(|| self.check_epoch(now, leader_epoch))
    }

    fn check_cluster(&mut self, cluster_id: u64) -> Option<Step> {
        (self.cluster_id != 0 && cluster_id != self.cluster_id).then(|| {
            self.stop(format!(
                "the leader answered for cluster {cluster_id:016x}, this follower belongs to {:016x}",
                self.cluster_id
            ))
        })
    }

    /// A leader in an epoch older than one already heard is a stale leader (an old leader
    /// that came back after another took over): its answers are refused, and fetching goes on
    /// with backoff until the current leader answers.
    fn check_epoch(&mut self, now: Instant, leader_epoch: u64) -> Option<Step> {
        (leader_epoch < self.leader_epoch).then(|| {
            self.failed(
                now,
                format!(
                    "refused a stale leader: it leads epoch {leader_epoch}, but epoch {} was already heard",
                    self.leader_epoch
                ),
            )
        })
    }

    /// A fetch failed (connection, timeout, bad answer): retry after an exponential backoff
    /// with equal jitter (a delay drawn between half the ceiling and the ceiling).
    pub fn on_failure(&mut self, now: Instant, error: String) -> Step {
        self.failed(now, error)
    }

    fn failed(&mut self, _now: Instant, error: String) -> Step {
        self.failures = self.failures.saturating_add(1);
        self.link = LinkState::Retrying {
            error,
            failures: self.failures,
        };
        let exponent = (self.failures - 1).min(16);
        let ceiling = self
            .options
            .backoff_initial
            .saturating_mul(1 << exponent)
            .min(self.options.backoff_max);
        let low = ceiling / 2;
        let after = low
            + ceiling
                .saturating_sub(low)
                .mul_f64(self.jitter.gen::<f64>());
        Step::Retry { after }
    }

    fn connected(&mut self, now: Instant) {
        self.failures = 0;
        self.link = LinkState::Connected;
        self.last_contact = Some(now);
    }

    /// A snapshot download or install failed: retry later with backoff (the partial download
    /// is kept and resumed), growing with the failures in a row until an answer with entries
    /// (after an install) ends them — the leader's "snapshot needed" before each retry does
    /// not.
    pub fn on_snapshot_failure(&mut self, now: Instant, error: String) -> Step {
        self.failed(now, error)
    }

    /// Stops replication for a reason found outside the protocol (a local I/O failure).
    pub fn force_stop(&mut self, reason: String) {
        self.link = LinkState::Stopped { reason };
    }

    fn stop(&mut self, reason: String) -> Step {
        self.link = LinkState::Stopped {
            reason: reason.clone(),
        };
        Step::Stop { reason }
    }

    /// The cluster this follower belongs to (0: not joined yet).
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    /// The leader's epoch as last heard.
    pub fn leader_epoch(&self) -> u64 {
        self.leader_epoch
    }

    /// The highest commit id heard.
    pub fn commit_seen(&self) -> u64 {
        self.commit_seen
    }

    /// The link's state.
    pub fn link(&self) -> &LinkState {
        &self.link
    }

    /// Time of the last answered fetch.
    pub fn last_contact(&self) -> Option<Instant> {
        self.last_contact
    }

    /// Batches refused because a frame was damaged.
    pub fn corrupt_batches_refused(&self) -> u64 {
        self.corrupt_batches_refused
    }
}

/// Where the local log stands: its next id and the epoch of its last entry (0 for none), the
/// position a fetch asks from.
fn position(log: &impl LogView) -> (u64, u64) {
    let next_id = log.next_id();
    let previous = next_id - 1;
    let last_epoch = if previous == 0 {
        0
    } else {
        log.epoch_at(previous).unwrap_or(0)
    };
    (next_id, last_epoch)
}
