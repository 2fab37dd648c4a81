//! Every follower the leader heard from, as `/cluster_status` shows it.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::LeaderState;

/// How a follower is doing, derived from its fetches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FollowerHealth {
    /// Fetching, and close behind.
    Healthy,
    /// Fetching, but far behind, or behind for the lag limit (so out of the ISR, or on its
    /// way out): a follower that cannot write, say on a full disk, lacks few entries but
    /// holds nothing new.
    Lagging,
    /// Not heard from within the down timeout.
    Down,
}

/// A follower as `/cluster_status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FollowerStatus {
    /// Its name, `follower-<node id>`.
    pub follower_id: String,
    /// Its node id.
    pub node_id: u64,
    /// Whether it counts for commits (a member of the maximal ISR; `None` for a legacy leader,
    /// where every follower counts).
    pub in_isr: Option<bool>,
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

impl LeaderState {
    /// Every follower heard from, as `/cluster_status` shows it.
    pub fn followers(&self, now: Instant, leader_last_id: u64) -> Vec<FollowerStatus> {
        let counted = self.maximal_isr();
        self.followers
            .iter()
            .map(|(&node_id, progress)| {
                let age = now.saturating_duration_since(progress.last_fetch_at);
                let lag_entries = leader_last_id.saturating_sub(progress.durable_id);
                let behind_for = if lag_entries == 0 {
                    Duration::ZERO
                } else {
                    now.saturating_duration_since(
                        progress.caught_up_at.unwrap_or(progress.first_fetch_at),
                    )
                };
                let status = if age >= self.options.follower_down_after {
                    FollowerHealth::Down
                } else if lag_entries > self.options.follower_lagging_entries
                    || behind_for >= self.options.lag_limit
                {
                    FollowerHealth::Lagging
                } else {
                    FollowerHealth::Healthy
                };
                FollowerStatus {
                    follower_id: format!("follower-{node_id}"),
                    node_id,
                    in_isr: counted.as_ref().map(|isr| isr.contains(&node_id)),
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
