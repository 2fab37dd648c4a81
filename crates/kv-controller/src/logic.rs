//! The active controller's decisions, without I/O: data nodes' sessions, the data leader's
//! lease grants, elections when the leader's session expires, voter promotions, and the
//! timeout of a planned transfer.
//!
//! [`ControllerLogic`] takes `now`, heartbeats and the applied [`ClusterMeta`], and returns
//! the [`Command`] to propose; the tokio driver ([`crate::Controller`]) proposes it through
//! Raft. The rules:
//!
//! - **Sessions.** Every heartbeat renews its node's session. A controller that becomes active
//!   knows nothing of earlier heartbeats, so it starts every session fresh at that moment
//!   ([`ControllerLogic::activate`]).
//! - **Fencing.** When the data leader's session expires, it is fenced for its epoch: no lease
//!   is granted to it in that epoch again, even if it comes back, and an election follows.
//! - **Election.** The new leader is the ISR member with a live session whose last reported
//!   `(epoch, id)` is highest (ties: the lowest id); the new ISR is the old one without the
//!   expired leader. With no live ISR member the cluster goes leaderless (the epoch still
//!   moves on, fencing the old leader) and the first ISR member to come back is elected.
//!   Never outside the ISR, unless [`ElectionPolicy::UncleanAllowed`] says so.
//! - **Lease.** A heartbeat from the data leader in its current epoch, while its session is
//!   live and it is not fenced, is granted [`Timing::lease`]. The leader counts the lease from
//!   when it *sent* that heartbeat ([`crate::Lease`]), and the controller expires the session
//!   at least `session_timeout` after it *received* it, so the lease always ends first.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::meta::{ClusterMeta, Command, NodeId, VOTERS_MAX};
use crate::timing::Timing;

/// Where a node's log ends: the epoch of its last entry and its last id. Ordered by epoch,
/// then id: the node with the highest position holds the longest history of the newest epoch.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Position {
    /// The epoch of the last entry (0: an empty log).
    pub epoch: u64,
    /// The last id (0: an empty log).
    pub id: u64,
}

/// A data node's heartbeat to the active controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatRequest {
    /// The sender's cluster id.
    pub cluster_id: u64,
    /// The sender.
    pub node: NodeId,
    /// The epoch the sender leads (if it believes it leads), else the highest it has seen.
    pub leader_epoch: u64,
    /// Where the sender's log ends.
    pub position: Position,
    /// Whether the sender holds everything its leader had at its last fetch (for a leader:
    /// always true).
    pub caught_up: bool,
}

/// The active controller's answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// The metadata as the controller has applied it.
    pub meta: ClusterMeta,
    /// A lease for the data leader, counted from when the heartbeat was sent (`None`: no
    /// lease — the sender is not the leader of the current epoch, or it was fenced).
    pub lease_ms: Option<u64>,
    /// How often to heartbeat.
    pub heartbeat_interval_ms: u64,
    /// The controller that answered (the Raft leader).
    pub controller: NodeId,
}

/// Whether an election may name a node outside the ISR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ElectionPolicy {
    /// Only ISR members lead (the default): no acknowledged write is ever lost.
    #[default]
    CleanOnly,
    /// When no ISR member is alive, the most advanced live member leads, alone in its ISR.
    /// Acknowledged writes that only the ISR held are lost. Logged loudly every time.
    UncleanAllowed,
}

/// A node's session as the active controller sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionStatus {
    /// The node.
    pub node: NodeId,
    /// Whether the session is live.
    pub live: bool,
    /// Milliseconds since its last heartbeat (or since this controller became active, if it
    /// has not heard one).
    pub last_heard_age_ms: u64,
    /// Whether this controller has heard a heartbeat from it.
    pub heard: bool,
    /// Its last reported position.
    pub position: Position,
    /// Whether it reported being caught up.
    pub caught_up: bool,
}

#[derive(Debug, Clone)]
struct Session {
    last_heard: Instant,
    position: Position,
    caught_up: bool,
}

/// The active controller's session tracking and decisions.
#[derive(Debug)]
pub struct ControllerLogic {
    timing: Timing,
    policy: ElectionPolicy,
    active_since: Option<Instant>,
    sessions: BTreeMap<NodeId, Session>,
    /// A leader whose session expired, and the epoch it lost.
    fenced: Option<(NodeId, u64)>,
    /// The epoch an election was proposed against, and when (one proposal per epoch, retried
    /// after a session timeout if it never applied).
    proposed: Option<(u64, Instant)>,
    /// The planned transfer seen, and since when.
    transfer_seen: Option<(NodeId, u64, Instant)>,
    /// When the controller's own loop last ran, once it reports it ([`ControllerLogic::ran`]):
    /// a longer gap than a few heartbeat intervals until the next call means this process
    /// stalled (starved of CPU, stopped), and sessions are not charged for it.
    ran_at: Option<Instant>,
}

impl ControllerLogic {
    /// Logic for a controller that is not active yet.
    pub fn new(timing: Timing, policy: ElectionPolicy) -> ControllerLogic {
        ControllerLogic {
            timing,
            policy,
            active_since: None,
            sessions: BTreeMap::new(),
            fenced: None,
            proposed: None,
            transfer_seen: None,
            ran_at: None,
        }
    }

    /// The controller's loop runs at `now` (it wakes at least every heartbeat interval). From
    /// the first call on, a stall of this process — a gap between calls of more than three
    /// heartbeat intervals — moves every session's last heartbeat (and the activation) forward
    /// by what exceeds that, so a controller that could not run does not expire the leader for
    /// heartbeats it could not hear: a stalled single-node cluster keeps its leader instead of
    /// going leaderless and electing it again. Waiting longer before an election is always
    /// safe (the old leader's lease ends sooner still); under a steady overload the sessions
    /// run slower, never stop.
    pub fn ran(&mut self, now: Instant) {
        if self.ran_at.is_none() {
            self.ran_at = Some(now);
        }
        self.forgive_stall(now);
    }

    fn forgive_stall(&mut self, now: Instant) {
        let Some(ran_at) = self.ran_at else {
            return;
        };
        let allowed = self.timing.heartbeat_interval * 3;
        let gap = now.saturating_duration_since(ran_at);
        if gap > allowed && self.is_active() {
            let stall = gap - allowed;
            for session in self.sessions.values_mut() {
                session.last_heard += stall;
            }
            if let Some(since) = &mut self.active_since {
                *since += stall;
            }
            tracing::warn!(
                stall_ms = stall.as_millis() as u64,
                "controller: this process did not run for a while; sessions extended by it"
            );
        }
        self.ran_at = Some(ran_at.max(now));
    }

    /// This controller became the active one (the Raft leader) at `now`: every session starts
    /// fresh now, since heartbeats sent to the previous controller are unknown here.
    pub fn activate(&mut self, now: Instant) {
        self.active_since = Some(now);
        self.sessions.clear();
        self.fenced = None;
        self.proposed = None;
        self.transfer_seen = None;
    }

    /// This controller is no longer the active one.
    pub fn deactivate(&mut self) {
        self.active_since = None;
        self.sessions.clear();
        self.fenced = None;
        self.proposed = None;
        self.transfer_seen = None;
    }

    /// Whether this controller is active.
    pub fn is_active(&self) -> bool {
        self.active_since.is_some()
    }

    /// The settings.
    pub fn timing(&self) -> &Timing {
        &self.timing
    }

    /// A heartbeat arrived (at `now`, on the active controller, after it confirmed it still
    /// leads the controller quorum). Renews the sender's session; returns the lease granted,
    /// if any.
    pub fn on_heartbeat(
        &mut self,
        now: Instant,
        meta: &ClusterMeta,
        request: &HeartbeatRequest,
    ) -> Option<Duration> {
        if !self.is_active() || !meta.members.contains_key(&request.node) {
            return None;
        }
        self.forgive_stall(now);
        // Expiry is decided by time, not by when the next tick runs: a heartbeat that arrives
        // after the session ran out must not revive the lease.
        self.fence_expired_leader(now, meta);
        self.sessions.insert(
            request.node,
            Session {
                last_heard: now,
                position: request.position,
                caught_up: request.caught_up,
            },
        );
        let leads_now = meta.data_leader == Some(request.node)
            && request.leader_epoch == meta.leader_epoch
            && self.fenced != Some((request.node, meta.leader_epoch));
        leads_now.then_some(self.timing.lease)
    }

    /// Decides what to propose now, if anything: an election, or cancelling a planned transfer
    /// that ran out of time.
    pub fn on_tick(&mut self, now: Instant, meta: &ClusterMeta) -> Option<Command> {
        if !self.is_active() || !meta.is_bootstrapped() {
            return None;
        }
        self.forgive_stall(now);
        self.fence_expired_leader(now, meta);
        let election_due = match meta.data_leader {
            Some(leader) => self.fenced == Some((leader, meta.leader_epoch)),
            None => true,
        };
        if election_due {
            if let Some(command) = self.election(now, meta) {
                self.proposed = Some((meta.leader_epoch, now));
                return Some(command);
            }
            return None;
        }
        self.transfer_timeout(now, meta)
    }

    /// The latest instant by which [`ControllerLogic::on_tick`] should run again (a session
    /// expiry, a retry of an election not yet applied, a transfer timeout), after `now` — the
    /// instant of the tick that just ran, which acted on everything due by then. `None` when
    /// inactive or nothing is due. An election proposed in an earlier epoch applied and is no
    /// deadline; anything else past is waiting for something that wakes the loop on its own
    /// (a proposal's answer, a heartbeat), so it is left out: the loop never spins on it.
    pub fn next_deadline(&self, meta: &ClusterMeta, now: Instant) -> Option<Instant> {
        let active_since = self.active_since?;
        let leader_expiry = meta
            .data_leader
            .filter(|&leader| self.fenced != Some((leader, meta.leader_epoch)))
            .map(|leader| {
                self.last_heard(leader).unwrap_or(active_since) + self.timing.session_timeout
            });
        let retry = self
            .proposed
            .filter(|&(epoch, _)| epoch == meta.leader_epoch)
            .map(|(_, at)| at + self.timing.session_timeout);
        let transfer = self
            .transfer_seen
            .map(|(_, _, since)| since + self.timing.transfer_timeout);
        [leader_expiry, retry, transfer]
            .into_iter()
            .flatten()
            .filter(|&deadline| deadline > now)
            .min()
    }

    /// Learners to promote so the controller quorum grows, an odd number of voters at a time,
    /// up to [`VOTERS_MAX`]: the new voter set, or `None` if it stays. Only members with a live
    /// session that report being caught up are promoted (lowest ids first).
    pub fn voters_wanted(&self, now: Instant, meta: &ClusterMeta) -> Option<BTreeSet<NodeId>> {
        self.active_since?;
        let voters: BTreeSet<NodeId> = meta
            .members
            .values()
            .filter(|member| member.voter)
            .map(|member| member.id)
            .collect();
        let ready: Vec<NodeId> = meta
            .members
            .values()
            .filter(|member| !member.voter)
            .filter(|member| {
                self.sessions
                    .get(&member.id)
                    .is_some_and(|session| session.caught_up && self.live_at(session, now))
            })
            .map(|member| member.id)
            .collect();
        let possible = (voters.len() + ready.len()).min(VOTERS_MAX);
        let target = if possible.is_multiple_of(2) {
            possible.saturating_sub(1)
        } else {
            possible
        };
        if target <= voters.len() {
            return None;
        }
        let mut wanted = voters.clone();
        wanted.extend(ready.into_iter().take(target - voters.len()));
        Some(wanted)
    }

    /// Every member's session, as `/cluster_status` shows it.
    pub fn sessions(&self, now: Instant, meta: &ClusterMeta) -> Vec<SessionStatus> {
        let Some(active_since) = self.active_since else {
            return Vec::new();
        };
        meta.members
            .keys()
            .map(|&node| {
                let session = self.sessions.get(&node);
                let last_heard = session.map_or(active_since, |session| session.last_heard);
                SessionStatus {
                    node,
                    live: now < last_heard + self.timing.session_timeout,
                    last_heard_age_ms: now.saturating_duration_since(last_heard).as_millis() as u64,
                    heard: session.is_some(),
                    position: session.map(|session| session.position).unwrap_or_default(),
                    caught_up: session.is_some_and(|session| session.caught_up),
                }
            })
            .collect()
    }

    fn last_heard(&self, node: NodeId) -> Option<Instant> {
        self.sessions.get(&node).map(|session| session.last_heard)
    }

    fn live_at(&self, session: &Session, now: Instant) -> bool {
        now < session.last_heard + self.timing.session_timeout
    }

    /// Whether `node` may be alive at `now`: its session runs, or this controller became
    /// active less than a session timeout ago and has not heard it yet.
    fn presumed_live(&self, node: NodeId, now: Instant) -> bool {
        match self.sessions.get(&node) {
            Some(session) => self.live_at(session, now),
            None => self
                .active_since
                .is_some_and(|since| now < since + self.timing.session_timeout),
        }
    }

    fn fence_expired_leader(&mut self, now: Instant, meta: &ClusterMeta) {
        let (Some(leader), Some(active_since)) = (meta.data_leader, self.active_since) else {
            return;
        };
        let last_heard = self.last_heard(leader).unwrap_or(active_since);
        if now >= last_heard + self.timing.session_timeout
            && self.fenced != Some((leader, meta.leader_epoch))
        {
            tracing::warn!(
                leader,
                epoch = meta.leader_epoch,
                silent_ms = now.saturating_duration_since(last_heard).as_millis() as u64,
                "the data leader's session expired: fenced, electing a new leader"
            );
            self.fenced = Some((leader, meta.leader_epoch));
        }
    }

    /// The election to propose, if one is possible and not already in flight.
    fn election(&self, now: Instant, meta: &ClusterMeta) -> Option<Command> {
        if let Some((epoch, at)) = self.proposed {
            if epoch == meta.leader_epoch && now < at + self.timing.session_timeout {
                return None;
            }
        }
        let old_leader = meta.data_leader;
        // Active for less than a session timeout, this controller waits until it has heard
        // every ISR member (or that long has passed, and an unheard one is gone): one it has
        // not heard yet may hold more than any it has — elected from the first heartbeats, a
        // leader restarted at once on a disk that lost its log's tail led again over
        // followers holding 62–84 acknowledged writes more, which they then cut (found by a
        // rolling-restart exploration) — or be dead, and kept in the new ISR it held every
        // commit of the new epoch until the lag limit dropped it. (With a leader named, its
        // session cannot expire before that long anyway: this waits only when the cluster
        // was leaderless as this controller took over.)
        let unheard = meta.isr.iter().any(|&id| {
            Some(id) != old_leader
                && !self.sessions.contains_key(&id)
                && self.presumed_live(id, now)
        });
        if unheard {
            return None;
        }
        let best_of = |ids: &mut dyn Iterator<Item = NodeId>| -> Option<NodeId> {
            ids.filter(|&id| Some(id) != old_leader)
                .filter_map(|id| {
                    let session = self.sessions.get(&id)?;
                    self.live_at(session, now).then_some((session.position, id))
                })
                // Highest position; among equals the lowest id.
                .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
                .map(|(_, id)| id)
        };
        if let Some(leader) = best_of(&mut meta.isr.iter().copied()) {
            // The old leader leaves the ISR, and so does every member this controller knows
            // is gone (its session ran out), as KRaft drops fenced brokers from the ISR at an
            // election (KIP-841): kept, it held every commit of the new epoch — its no-op
            // included — until the new leader's lag limit dropped it (with a leader cut off
            // together with a follower, 3.6–4.6 s without a write instead of ~0.7 s).
            let new_isr: BTreeSet<NodeId> = meta
                .isr
                .iter()
                .copied()
                .filter(|&id| Some(id) != old_leader)
                .filter(|&id| id == leader || self.presumed_live(id, now))
                .collect();
            return Some(Command::ElectLeader {
                expected_epoch: meta.leader_epoch,
                new_leader: Some(leader),
                new_isr,
                unclean: false,
            });
        }
        if self.policy == ElectionPolicy::UncleanAllowed {
            if let Some(leader) = best_of(&mut meta.members.keys().copied()) {
                tracing::error!(
                    leader,
                    "no ISR member is alive: UNCLEAN ELECTION of a node outside the ISR"
                );
                return Some(Command::ElectLeader {
                    expected_epoch: meta.leader_epoch,
                    new_leader: Some(leader),
                    new_isr: BTreeSet::from([leader]),
                    unclean: true,
                });
            }
        }
        // Nobody to elect: go leaderless (fencing the old leader's epoch) once; the first ISR
        // member to come back is elected then.
        old_leader.map(|_| Command::ElectLeader {
            expected_epoch: meta.leader_epoch,
            new_leader: None,
            new_isr: meta.isr.clone(),
            unclean: false,
        })
    }

    fn transfer_timeout(&mut self, now: Instant, meta: &ClusterMeta) -> Option<Command> {
        let Some(transfer) = meta.transfer else {
            self.transfer_seen = None;
            return None;
        };
        let key = (transfer.to, transfer.leader_epoch);
        match self.transfer_seen {
            Some((to, epoch, since)) if (to, epoch) == key => {
                if now >= since + self.timing.transfer_timeout {
                    // Ask once per timeout.
                    self.transfer_seen = Some((to, epoch, now));
                    return Some(Command::CancelTransfer {
                        leader_epoch: transfer.leader_epoch,
                    });
                }
                None
            }
            _ => {
                self.transfer_seen = Some((key.0, key.1, now));
                None
            }
        }
    }
}
