//! Elections with a pre-vote: openraft's own election timer is off (`enable_elect: false`),
//! and this member's candidate loop ([`stand_when_the_leader_is_silent`]) starts an election
//! only once a majority of the voters answer a [`PreVoteRequest`] with yes.
//!
//! openraft 0.9 has no pre-vote: a member that hears no leader raises its term every election
//! timeout, and a member cut off from the others for a few seconds comes back with a term
//! above the leader's; the leader's next heartbeat meets it, the leader steps down, and the
//! cluster elects again — no lease for the data leader meanwhile (~0.65 s without writes,
//! measured with network namespaces). With a pre-vote the cut-off member asks first and,
//! refused or unanswered, keeps its term.
//!
//! The timing is openraft's: a member stands once it has heard nothing from a leader for the
//! leader lease (the longest election timeout) plus a random election timeout, or for the
//! random timeout alone when it knows no leader; a member grants a pre-vote only when it is
//! not the leader, has heard from none within the lease, and its log is no longer than the
//! asker's (a vote's own rule). Safety does not rest on any of this: the election that
//! follows is openraft's, with its votes and their checks.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use openraft::ServerState;
use rand::Rng;

use super::{lock, Inner};
use crate::meta::NodeId;
use crate::network::{PreVoteRequest, PreVoteResponse};

impl Inner {
    /// openraft's leader lease: a member that heard from a leader within it refuses votes.
    fn leader_lease(&self) -> Duration {
        self.options.timing.raft_election_timeout_max
    }

    /// A random election timeout, as openraft draws it.
    fn election_timeout(&self) -> Duration {
        let timing = &self.options.timing;
        let (min, max) = (
            timing.raft_election_timeout_min,
            timing.raft_election_timeout_max,
        );
        rand::thread_rng().gen_range(min..max)
    }

    /// This member heard from a leader (an accepted append or snapshot) or granted a vote:
    /// no election before the lease and another timeout have passed.
    pub(super) fn heard_from_leader(&self) {
        let now = Instant::now();
        let mut election = lock(&self.election);
        election.heard = Some(now);
        election.due = now + self.leader_lease() + self.election_timeout();
    }

    /// The next election falls due a random election timeout from now.
    fn put_off_election(&self) {
        lock(&self.election).due = Instant::now() + self.election_timeout();
    }

    /// Answers a peer's [`PreVoteRequest`].
    pub(super) fn answer_pre_vote(&self, request: &PreVoteRequest) -> PreVoteResponse {
        let leading = self.raft.metrics().borrow().state == ServerState::Leader;
        let heard = lock(&self.election).heard;
        let heard_lately = heard.is_some_and(|heard| heard.elapsed() < self.leader_lease());
        let ours = self.log.last_known_log_id();
        PreVoteResponse {
            granted: !leading && !heard_lately && request.last_log_id >= ours,
        }
    }

    /// The voters a majority of whom (of each, while a change of voters is half done) must
    /// answer yes, and whether this member is one of them.
    fn voter_sets(&self) -> (Vec<BTreeSet<NodeId>>, bool) {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let me = self.options.node_id;
        let sets = membership.get_joint_config().to_vec();
        let voter = sets.iter().any(|set| set.contains(&me));
        (sets, voter)
    }

    /// Asks every other voter for a pre-vote at once; whether a majority of each voter set
    /// (this member counting for itself) says yes.
    async fn pre_vote(self: &Arc<Self>, sets: &[BTreeSet<NodeId>]) -> bool {
        let me = self.options.node_id;
        let request = PreVoteRequest {
            last_log_id: self.log.last_known_log_id(),
        };
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let peers: BTreeSet<NodeId> = sets
            .iter()
            .flatten()
            .copied()
            .filter(|&id| id != me)
            .collect();
        let mut asks = tokio::task::JoinSet::new();
        for peer in peers {
            let Some(node) = membership.membership().get_node(&peer) else {
                continue;
            };
            let url = node.addr.clone();
            let network = self.network.clone();
            let request = request.clone();
            let timeout = self.options.timing.raft_election_timeout_min;
            asks.spawn(async move { (peer, network.pre_vote(peer, &url, request, timeout).await) });
        }
        let mut granted = BTreeSet::from([me]);
        while let Some(answer) = asks.join_next().await {
            if let Ok((peer, true)) = answer {
                granted.insert(peer);
            }
        }
        sets.iter()
            .all(|set| set.intersection(&granted).count() * 2 > set.len())
    }

    /// Whether this member may stand now: it campaigns, has not stepped aside, is a voter
    /// and is not the leader.
    fn may_stand(&self, voter: bool) -> bool {
        voter
            && self.campaigning.load(Ordering::Acquire)
            && !self.aside.load(Ordering::Acquire)
            && self.raft.metrics().borrow().state != ServerState::Leader
    }
}

/// The member's candidate loop: waits for its election to fall due, then asks for pre-votes
/// and, granted, starts openraft's election (`Trigger::elect`); either way the next one falls
/// due an election timeout later. A leader, a learner, a member that does not campaign or
/// stepped aside only pushes the date back.
pub(super) async fn stand_when_the_leader_is_silent(inner: Weak<Inner>) {
    loop {
        let due = match inner.upgrade() {
            Some(strong) if !strong.stopping.load(Ordering::Acquire) => lock(&strong.election).due,
            _ => return,
        };
        tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
        let Some(strong) = inner.upgrade() else {
            return;
        };
        if strong.stopping.load(Ordering::Acquire) {
            return;
        }
        let now = Instant::now();
        let due = lock(&strong.election).due;
        if due > now {
            continue; // heard from a leader meanwhile
        }
        if now > due + strong.leader_lease() {
            // Woken far past its date: this process stalled (stopped, starved). Listen first,
            // as a member just started does: the messages that waited meanwhile — a leader's
            // heartbeat, a stopping leader's hand-over to a peer — come in before this member
            // stands and competes with them.
            strong.put_off_election();
            continue;
        }
        let (sets, voter) = strong.voter_sets();
        if !strong.may_stand(voter) {
            strong.put_off_election();
            continue;
        }
        if strong.pre_vote(&sets).await {
            tracing::info!(
                node_id = strong.options.node_id,
                "controller: no leader heard and a majority would vote: standing for election"
            );
            if let Err(fatal) = strong.raft.trigger().elect().await {
                tracing::warn!(%fatal, "controller: the election did not start");
            }
        } else {
            tracing::debug!(
                node_id = strong.options.node_id,
                "controller: no leader heard, but no majority would vote (pre-vote refused)"
            );
        }
        strong.put_off_election();
    }
}

/// When this member last heard from a leader, and when it stands for election next.
#[derive(Debug, Clone, Copy)]
pub(super) struct ElectionTimer {
    /// `None` until it hears from one (a member just started grants pre-votes at once, as
    /// openraft grants votes).
    heard: Option<Instant>,
    due: Instant,
}

impl ElectionTimer {
    /// A member just opened: its first election falls due after `timeout`.
    pub(super) fn starting(timeout: Duration) -> ElectionTimer {
        ElectionTimer {
            heard: None,
            due: Instant::now() + timeout,
        }
    }
}
