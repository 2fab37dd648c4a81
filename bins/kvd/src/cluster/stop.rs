//! How a node stops gracefully: it moves its leaderships off itself first.
//!
//! A leader that just exits goes silent: its session expires and the controller elects a
//! successor, a write gap as long as after a `kill -9` (1.4–1.6 s on a test machine). On
//! SIGTERM (or SIGINT, SIGHUP) a node first:
//!
//! 0. stops copying any leader's log ([`Driver::stopping`]): having handed over, it would
//!    follow its successor for the moment before it exits and be taken back into the ISR;
//! 1. if it is the data leader, hands that over by a planned transfer to the live ISR member
//!    holding the most (as `POST /admin/transfer-leader` does), marked as leaving: it leaves
//!    the ISR with the hand-over while enough members remain, so `--write-quorum N` writes do
//!    not wait the lag limit out for it (`Command::TransferLeader::leaving`);
//! 2. if it is the controller's Raft leader, asks the new data leader (or another voter) to
//!    stand for election (`POST /controller/campaign`; openraft 0.9 has no leader transfer)
//!    and waits until another member leads, so leases are not held up by an election timeout
//!    after it exits.
//!
//! etcd hands its leadership over on stop, and Kafka's controlled shutdown moves leadership
//! first. Each step is bounded; a second signal stops at once. The cluster's only member has
//! nothing to hand over and skips both.

use std::time::{Duration, Instant};

use kv_http::{AppState, ClusterState};

use crate::cluster::driver::Driver;

/// The longest a stopping leader waits for its hand-over before stopping anyway: one takes
/// ~10 ms on loopback; when every node stops at once (`scripts/run-cluster`'s Ctrl-C) the
/// target stops too, and the whole cluster's stop waits this long.
const HAND_OVER_WAIT_MAX: Duration = Duration::from_secs(1);
/// The longest a stopping Raft leader waits for another member to lead the controller (one
/// election round; ~5 ms on loopback).
const RAFT_HAND_OVER_WAIT_MAX: Duration = Duration::from_secs(1);

/// Moves this node's data and controller leaderships to other nodes, each as far as it can
/// within its bound; says in the log what it did.
pub async fn hand_over_before_stopping(state: &AppState, driver: &Driver) {
    driver.stopping();
    let Some(cluster) = state.cluster.as_deref() else {
        return;
    };
    // A lone node has nobody to hand anything to: it stops as it is, and says nothing of it
    // (before, every Ctrl-C of a lone `kvd leader` warned that "no live ISR member" took it).
    let controller = cluster.controller();
    let own = controller.node_id();
    if !controller.meta().members.keys().any(|&id| id != own) {
        return;
    }
    if matches!(state.node.role(), kv_replication::Role::Leader) {
        match tokio::time::timeout(HAND_OVER_WAIT_MAX, kv_http::transfer_leadership_away(state))
            .await
        {
            Ok((status, body)) if status.is_success() => {
                tracing::info!(%body, "handed the leadership over before stopping");
            }
            Ok((status, body)) => {
                tracing::warn!(%status, %body, "could not hand the leadership over; stopping anyway");
            }
            Err(_) => tracing::warn!(
                waited_ms = HAND_OVER_WAIT_MAX.as_millis() as u64,
                "the hand-over did not finish in time; stopping anyway"
            ),
        }
    }
    hand_the_controller_over(cluster).await;
}

/// Step 2: if this member leads the controller quorum, has another voter — the data leader
/// if it can — stand for election, and waits until one leads.
async fn hand_the_controller_over(cluster: &ClusterState) {
    let controller = cluster.controller();
    let own = controller.node_id();
    if controller.raft_leader() != Some(own) {
        return;
    }
    let meta = controller.meta();
    let voter = |id: &u64| *id != own && meta.members.get(id).is_some_and(|member| member.voter);
    let Some(target) = meta
        .data_leader
        .filter(voter)
        .or_else(|| meta.members.keys().copied().find(voter))
    else {
        return;
    };
    let Some(url) = meta.url_of(target) else {
        return;
    };
    if let Err(error) = kv_http::ask_to_campaign(cluster, url).await {
        tracing::warn!(target, %error, "could not hand the controller's leadership over");
        return;
    }
    // Until another member leads, not only until this one stepped down: the candidate still
    // needs this member's vote.
    let started = Instant::now();
    while controller.raft_leader().is_none_or(|leader| leader == own) {
        if started.elapsed() >= RAFT_HAND_OVER_WAIT_MAX {
            tracing::warn!(
                target,
                "no other member took the controller's leadership in time; stopping anyway"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tracing::info!(
        target,
        leader = ?controller.raft_leader(),
        waited_ms = started.elapsed().as_millis() as u64,
        "handed the controller's leadership over before stopping"
    );
}
