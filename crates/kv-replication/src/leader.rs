//! The leader's bookkeeping, without I/O: it hears fetches, checks that each follower's log
//! matches its own, tracks what every follower holds durably, and derives the commit id.
//!
//! Every method takes `now`, so the logic runs on virtual time in tests.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::log_view::LogView;
use crate::protocol::{FetchRequest, FetchResponse};

/// Settings of the leader's bookkeeping.
#[derive(Debug, Clone)]
pub struct LeaderOptions {
    /// Nodes (the leader included) that must hold an entry durably before it commits.
    pub write_quorum: usize,
    /// A follower not heard from for this long is down.
    pub follower_down_after: Duration,
    /// A follower more than this many entries behind is lagging.
    pub follower_lagging_entries: u64,
}

impl Default for LeaderOptions {
    fn default() -> LeaderOptions {
        LeaderOptions {
            write_quorum: 1,
            follower_down_after: Duration::from_secs(5),
            follower_lagging_entries: 10_000,
        }
    }
}

/// What the leader knows of one follower.
#[derive(Debug, Clone)]
struct Progress {
    /// Highest id the follower holds durably *and* that matches the leader's log.
    durable_id: u64,
    /// The follower's next id as of its last fetch.
    next_id: u64,
    last_fetch_at: Instant,
    /// Last time the follower had everything the leader had.
    caught_up_at: Instant,
    fetches: u64,
}

/// How a follower is doing, derived from its fetches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FollowerHealth {
    /// Fetching, and close behind.
    Healthy,
    /// Fetching, but far behind.
    Lagging,
    /// Not heard from within the down timeout.
    Down,
}

/// A follower as `/cluster_status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FollowerStatus {
    /// Its name.
    pub follower_id: String,
    /// Highest id it holds durably (matching the leader's log).
    pub durable_id: u64,
    /// The id it asked for last.
    pub next_id: u64,
    /// Entries it lacks.
    pub lag_entries: u64,
    /// How long it has been behind (0 when caught up).
    pub lag_ms: u64,
    /// Time since its last fetch.
    pub last_fetch_age_ms: u64,
    /// Fetches heard.
    pub fetches: u64,
    /// Healthy, lagging or down.
    pub status: FollowerHealth,
}

/// What to do with a fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchDecision {
    /// Answer now.
    Respond(FetchResponse),
    /// Nothing new (no entries, no newer commit id): hold the request until the log passes
    /// `next_id - 1`, the commit id moves or the wait ends, then ask again (with
    /// `may_wait = false` once the wait is over).
    Wait,
}

/// The leader's state.
#[derive(Debug)]
pub struct LeaderState {
    cluster_id: u64,
    epoch: u64,
    options: LeaderOptions,
    followers: BTreeMap<String, Progress>,
    commit_id: u64,
}

impl LeaderState {
    /// A leader of `cluster_id` in `epoch`, whose own log is durable through `durable_id`.
    pub fn new(cluster_id: u64, epoch: u64, options: LeaderOptions) -> LeaderState {
        LeaderState {
            cluster_id,
            epoch,
            options,
            followers: BTreeMap::new(),
            commit_id: 0,
        }
    }

    /// The cluster id.
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    /// The leader's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Raises the commit id to one known from before a restart (the node's meta file).
    pub fn restore_commit(&mut self, commit_id: u64) {
        self.commit_id = self.commit_id.max(commit_id);
    }

    /// The highest id a write quorum holds durably. Never goes backwards.
    pub fn commit_id(&self) -> u64 {
        self.commit_id
    }

    /// The write quorum.
    pub fn write_quorum(&self) -> usize {
        self.options.write_quorum
    }

    /// Handles a fetch: checks the cluster, the compaction point and that the follower's log
    /// matches this one at `next_id - 1`; records the follower's durable id (the fetch is the
    /// acknowledgement); answers with entries, or asks the caller to wait when there are none
    /// and `may_wait`. `record` is false for debugging views, which must not count as a
    /// follower.
    pub fn on_fetch(
        &mut self,
        now: Instant,
        request: &FetchRequest,
        log: &impl LogView,
        may_wait: bool,
        record: bool,
    ) -> FetchDecision {
        let cluster_id = self.cluster_id;
        let leader_epoch = self.epoch;
        let known_cluster = request.cluster_id == cluster_id;
        let new_empty_follower = request.cluster_id == 0 && request.next_id == 1;
        if !known_cluster && !new_empty_follower {
            return FetchDecision::Respond(FetchResponse::ClusterMismatch {
                leader_cluster_id: cluster_id,
            });
        }
        let first_id = log.first_id();
        let last_id = log.last_id();
        if record {
            let progress = self
                .followers
                .entry(request.follower_id.clone())
                .or_insert(Progress {
                    durable_id: 0,
                    next_id: request.next_id,
                    last_fetch_at: now,
                    caught_up_at: now,
                    fetches: 0,
                });
            progress.last_fetch_at = now;
            progress.next_id = request.next_id;
            progress.fetches += 1;
        }
        if request.next_id < first_id {
            return FetchDecision::Respond(FetchResponse::SnapshotNeeded {
                cluster_id,
                leader_epoch,
                first_id,
            });
        }
        let previous = request.next_id - 1;
        if previous > 0 {
            let truncate_after = if previous > last_id {
                Some(log.end_of_epoch(request.last_epoch).min(last_id))
            } else {
                // Unknown only before the oldest epoch the log remembers: trusted.
                match log.epoch_at(previous) {
                    Some(epoch) if epoch != request.last_epoch => {
                        Some(log.end_of_epoch(request.last_epoch).min(previous - 1))
                    }
                    _ => None,
                }
            };
            if let Some(truncate_after) = truncate_after {
                return FetchDecision::Respond(FetchResponse::Diverged {
                    cluster_id,
                    leader_epoch,
                    truncate_after,
                });
            }
        }
        // The follower's log matches through `previous`: its durable entries count.
        if record {
            let progress = self
                .followers
                .get_mut(&request.follower_id)
                .expect("recorded above");
            progress.durable_id = request.durable_id.min(previous);
            if previous >= last_id {
                progress.caught_up_at = now;
            }
            self.recompute_commit(log.durable_id());
        }
        if request.next_id > last_id {
            if may_wait && request.commit_id >= self.commit_id {
                return FetchDecision::Wait;
            }
            return FetchDecision::Respond(self.entries(log, Vec::new()));
        }
        match log.read_frames(request.next_id, request.bytes_max.max(1) as usize, last_id) {
            Ok(frames) => FetchDecision::Respond(self.entries(log, frames)),
            // The log changed under us (purged or truncated): the follower asks again.
            Err(_) => FetchDecision::Respond(self.entries(log, Vec::new())),
        }
    }

    fn entries(&self, log: &impl LogView, frames: Vec<u8>) -> FetchResponse {
        FetchResponse::Entries {
            cluster_id: self.cluster_id,
            leader_epoch: self.epoch,
            commit_id: self.commit_id,
            first_id: log.first_id(),
            last_id: log.last_id(),
            frames,
        }
    }

    /// Recomputes the commit id from the leader's durable id and the followers' acks: the
    /// `write_quorum`-th highest durable id, never above the leader's own (so an entry the
    /// leader could lose in a power cut never commits), never backwards.
    pub fn recompute_commit(&mut self, leader_durable_id: u64) -> u64 {
        let mut durable: Vec<u64> = self
            .followers
            .values()
            .map(|progress| progress.durable_id)
            .collect();
        durable.push(leader_durable_id);
        durable.sort_unstable_by(|a, b| b.cmp(a));
        let quorum = self.options.write_quorum.max(1);
        if let Some(&candidate) = durable.get(quorum - 1) {
            self.commit_id = self.commit_id.max(candidate.min(leader_durable_id));
        }
        self.commit_id
    }

    /// Whether every follower that is not down holds `id` durably (for `acks=all`).
    pub fn all_live_followers_hold(&self, now: Instant, id: u64) -> bool {
        self.followers
            .values()
            .filter(|progress| {
                now.duration_since(progress.last_fetch_at) < self.options.follower_down_after
            })
            .all(|progress| progress.durable_id >= id)
    }

    /// Every follower heard from, as `/cluster_status` shows it.
    pub fn followers(&self, now: Instant, leader_last_id: u64) -> Vec<FollowerStatus> {
        self.followers
            .iter()
            .map(|(follower_id, progress)| {
                let age = now.duration_since(progress.last_fetch_at);
                let lag_entries = leader_last_id.saturating_sub(progress.durable_id);
                let behind_for = if lag_entries == 0 {
                    Duration::ZERO
                } else {
                    now.duration_since(progress.caught_up_at)
                };
                let status = if age >= self.options.follower_down_after {
                    FollowerHealth::Down
                } else if lag_entries > self.options.follower_lagging_entries {
                    FollowerHealth::Lagging
                } else {
                    FollowerHealth::Healthy
                };
                FollowerStatus {
                    follower_id: follower_id.clone(),
                    durable_id: progress.durable_id,
                    next_id: progress.next_id,
                    lag_entries,
                    lag_ms: behind_for.as_millis() as u64,
                    last_fetch_age_ms: age.as_millis() as u64,
                    fetches: progress.fetches,
                    status,
                }
            })
            .collect()
    }
}
