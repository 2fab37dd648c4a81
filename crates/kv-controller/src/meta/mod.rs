//! The replicated state — [`ClusterMeta`] — and the [`Command`]s that change it.
//!
//! Every command is validated in [`ClusterMeta::apply`], deterministically, on every controller
//! replica: a rejected command changes nothing and says why ([`Rejection`]). The rules are the
//! cluster's safety rules (KRaft's, with KIP-841 for ISR changes):
//!
//! - the leader epoch only grows, by one per leadership change ([`Command::ElectLeader`],
//!   [`Command::TransferLeader`]), and an election applies only if it was decided against the
//!   current epoch (`expected_epoch`), so two controllers racing cannot both elect;
//! - a data leader is elected only from the ISR (unless an election says `unclean` out loud);
//! - the ISR changes only at the current data leader's request, in its current epoch, and
//!   always keeps that leader (a deposed leader can never shrink the ISR to commit alone); the
//!   request names the metadata version it was decided against, and a late or repeated one
//!   changes nothing (the leader counts a member it asked to add until it knows the outcome).

mod apply;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

/// A node's id: the `kvd leader` node is 0, `follower-N` is N.
pub type NodeId = u64;

/// Most voters in the controller quorum; further members are learners (KRaft's combined mode
/// with a bounded quorum: five voters survive two failures, more only slow commits down).
pub const VOTERS_MAX: usize = 5;

/// Longest member URL accepted.
pub const MEMBER_URL_BYTES_MAX: usize = 1024;

/// A node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its id.
    pub id: NodeId,
    /// Its HTTP base URL (`http://host:port`), for data and controller traffic alike.
    pub url: String,
    /// Whether it votes in the controller quorum (else a learner). Follows the Raft membership:
    /// set when a membership entry is applied, never by a command.
    pub voter: bool,
}

/// A planned leadership transfer in progress (see [`Command::BeginTransfer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingTransfer {
    /// The ISR member that takes over.
    pub to: NodeId,
    /// The epoch of the leader that hands over.
    pub leader_epoch: u64,
}

/// The cluster's metadata: the controller's replicated state.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ClusterMeta {
    /// The cluster's id (0: not bootstrapped yet).
    pub cluster_id: u64,
    /// Every node, by id.
    pub members: BTreeMap<NodeId, Member>,
    /// The node that takes writes (`None`: no ISR member was alive at the last election).
    pub data_leader: Option<NodeId>,
    /// The data leader's epoch. Only grows; every leadership change bumps it by one.
    pub leader_epoch: u64,
    /// The in-sync replicas: every member that holds every acknowledged write. Contains the
    /// data leader whenever there is one.
    pub isr: BTreeSet<NodeId>,
    /// Nodes (the leader included) that must hold a write before it is acknowledged
    /// (`--write-quorum`).
    pub write_quorum: u32,
    /// A planned leadership transfer in progress.
    pub transfer: Option<PendingTransfer>,
    /// Bumped by one by every command that changes anything (a refused one, or a no-op such
    /// as a retried join, leaves it): of two metadata
    /// values of one cluster, the one with the higher version is the later. A data node that
    /// hears the metadata from two sources (its own controller's applied state and the active
    /// controller's heartbeat replies) applies only the newer, so an ISR never goes back.
    #[serde(default)]
    pub version: u64,
}

/// A change to [`ClusterMeta`]: the application data of the controller's Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "command")]
pub enum Command {
    /// Creates the cluster: its id, its first data leader (also its first member and ISR) and
    /// its first epoch, one above `epoch_floor` (the highest epoch a data directory from before
    /// the controller used — its `node.meta` — so a migrated cluster never reuses an epoch).
    /// Applies once.
    Bootstrap {
        /// The new cluster id (not 0).
        cluster_id: u64,
        /// The first data leader.
        leader: NodeId,
        /// Its URL.
        leader_url: String,
        /// The first epoch is `epoch_floor + 1`.
        epoch_floor: u64,
        /// The write quorum (at least 1).
        write_quorum: u32,
    },
    /// Adds a node, as a learner of the controller quorum and outside the ISR. Adding a member
    /// again with the same URL changes nothing (a retried join).
    AddMember {
        /// The node.
        id: NodeId,
        /// Its URL.
        url: String,
    },
    /// Changes a member's URL.
    UpdateUrl {
        /// The node.
        id: NodeId,
        /// Its new URL.
        url: String,
    },
    /// Removes a member. Refused for the data leader (transfer first), for a controller voter
    /// (remove it from the Raft membership first) and when fewer members than the write quorum
    /// would remain.
    RemoveMember {
        /// The node.
        id: NodeId,
    },
    /// Names a new data leader (or none) with a new ISR and bumps the epoch by one, if the
    /// epoch is still `expected_epoch`. The new leader must be in the current ISR and the new
    /// ISR a subset of it, unless `unclean` (then any member, with an ISR of itself alone:
    /// acknowledged writes may be lost).
    ElectLeader {
        /// The epoch the decision was made in.
        expected_epoch: u64,
        /// The new leader.
        new_leader: Option<NodeId>,
        /// The new ISR.
        new_isr: BTreeSet<NodeId>,
        /// An unclean election, outside the ISR. Off unless an operator asked for it.
        #[serde(default)]
        unclean: bool,
    },
    /// The data leader's request to shrink or grow the ISR (KIP-841): applies only if
    /// `leader_epoch` is current and `sender` is its leader, and the metadata is still at
    /// `expected_version`; the leader stays in the ISR.
    ChangeIsr {
        /// Who asks.
        sender: NodeId,
        /// The epoch the sender leads.
        leader_epoch: u64,
        /// The new ISR.
        isr: BTreeSet<NodeId>,
        /// The metadata version ([`ClusterMeta::version`]) the change was decided against
        /// (KIP-841's partition epoch): a request that arrives after anything else changed —
        /// late, or twice — changes nothing, so the leader, which counts an addition from the
        /// moment it asks for it, knows once it hears a later version that no request of its
        /// can still apply. `None` (a log written before the check): unchecked.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expected_version: Option<u64>,
    },
    /// Step one of a planned leadership transfer: records that the leader should hand over to
    /// `to` (an ISR member). The leader then stops taking writes, waits until `to` holds its
    /// whole log, and proposes [`Command::TransferLeader`].
    BeginTransfer {
        /// The ISR member to take over.
        to: NodeId,
    },
    /// Step two: the data leader, no longer taking writes and with `to` caught up, hands over.
    /// Applies only in the leader's current epoch, from the leader itself, with the transfer
    /// begun; bumps the epoch by one, the ISR unchanged — unless the sender is `leaving`.
    TransferLeader {
        /// Who asks (the current leader).
        sender: NodeId,
        /// The epoch the sender leads.
        leader_epoch: u64,
        /// The node taking over.
        to: NodeId,
        /// The sender is stopping: it leaves the ISR with the hand-over, as long as the ISR
        /// keeps `max(write quorum, 2)` members without it (the others hold every committed
        /// id). Else the new leader takes it out after the lag limit.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        leaving: bool,
    },
    /// Abandons a planned transfer (the target died, or it took too long).
    CancelTransfer {
        /// The epoch the transfer was begun in.
        leader_epoch: u64,
    },
    /// Changes the write quorum (1 ..= number of members).
    SetWriteQuorum {
        /// The new write quorum.
        write_quorum: u32,
    },
}

/// Why a command was refused. A refused command changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum Rejection {
    /// The cluster has not been bootstrapped.
    #[error("the cluster is not bootstrapped yet")]
    NotBootstrapped,
    /// Bootstrap applies once.
    #[error("the cluster is already bootstrapped (cluster id {cluster_id:016x})")]
    AlreadyBootstrapped {
        /// The existing cluster id.
        cluster_id: u64,
    },
    /// The command was decided against an older (or future) epoch.
    #[error("stale epoch: the command is for epoch {expected}, the current epoch is {current}")]
    StaleEpoch {
        /// The epoch in the command.
        expected: u64,
        /// The current epoch.
        current: u64,
    },
    /// The metadata changed since the version the command was decided against.
    #[error(
        "stale metadata: the command is for version {expected}, the current version is {current}"
    )]
    StaleVersion {
        /// The version in the command.
        expected: u64,
        /// The current version.
        current: u64,
    },
    /// Only the current data leader may send this command.
    #[error("node {sender} is not the data leader (the leader is {leader:?})")]
    NotDataLeader {
        /// Who sent it.
        sender: NodeId,
        /// The current leader.
        leader: Option<NodeId>,
    },
    /// The node is not in the ISR.
    #[error("node {id} is not in the ISR")]
    NotInIsr {
        /// The node.
        id: NodeId,
    },
    /// The node is not a member.
    #[error("node {id} is not a member")]
    UnknownMember {
        /// The node.
        id: NodeId,
    },
    /// The id is taken by a member with another URL.
    #[error("node {id} is already a member, at {url}")]
    MemberExists {
        /// The node.
        id: NodeId,
        /// Its URL.
        url: String,
    },
    /// The URL is another member's: two members never share one (the controller's messages
    /// go by URL).
    #[error("{url} is node {id}'s URL: move or remove node {id} first")]
    UrlTaken {
        /// The URL.
        url: String,
        /// The member holding it.
        id: NodeId,
    },
    /// The data leader cannot be removed.
    #[error("node {id} is the data leader: transfer the leadership first")]
    IsDataLeader {
        /// The node.
        id: NodeId,
    },
    /// A controller voter cannot be removed from the metadata before the Raft membership.
    #[error("node {id} is a controller voter: remove it from the controller quorum first")]
    IsVoter {
        /// The node.
        id: NodeId,
    },
    /// A planned transfer is already in progress.
    #[error("a leadership transfer to node {to} is in progress")]
    TransferInProgress {
        /// Its target.
        to: NodeId,
    },
    /// No matching planned transfer is in progress.
    #[error("no leadership transfer to that node is in progress")]
    NoTransfer,
    /// Anything else malformed (an empty URL, a write quorum of 0, …).
    #[error("invalid command: {detail}")]
    Invalid {
        /// What is wrong.
        detail: String,
    },
}

/// What applying a log entry did, returned to whoever proposed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "result")]
pub enum ApplyResult {
    /// Applied; the metadata as it now stands.
    Applied {
        /// The metadata after the entry.
        meta: ClusterMeta,
    },
    /// Refused; nothing changed.
    Rejected {
        /// Why.
        rejection: Rejection,
    },
}

impl ApplyResult {
    /// The metadata after an applied command, or the rejection.
    pub fn into_result(self) -> Result<ClusterMeta, Rejection> {
        match self {
            ApplyResult::Applied { meta } => Ok(meta),
            ApplyResult::Rejected { rejection } => Err(rejection),
        }
    }
}

impl ClusterMeta {
    /// Whether the cluster has been bootstrapped.
    pub fn is_bootstrapped(&self) -> bool {
        self.cluster_id != 0
    }

    /// The member's URL.
    pub fn url_of(&self, id: NodeId) -> Option<&str> {
        self.members.get(&id).map(|member| member.url.as_str())
    }

    /// The data leader's URL.
    pub fn leader_url(&self) -> Option<&str> {
        self.data_leader.and_then(|id| self.url_of(id))
    }

    /// Applies `command`: either every change it makes, or none and the reason.
    /// `voters` is the controller quorum's current voter set (a new member's `voter` flag).
    pub fn apply(&mut self, command: &Command, voters: &BTreeSet<NodeId>) -> ApplyResult {
        let mut next = self.clone();
        match next.apply_in_place(command, voters) {
            Ok(()) => {
                if next != *self {
                    next.version = self.version + 1;
                }
                *self = next;
                ApplyResult::Applied { meta: self.clone() }
            }
            Err(rejection) => ApplyResult::Rejected { rejection },
        }
    }

    /// Follows a new controller membership: a member votes iff it is in `voters`.
    pub fn set_voters(&mut self, voters: &BTreeSet<NodeId>) {
        for member in self.members.values_mut() {
            member.voter = voters.contains(&member.id);
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match serde_json::to_string(self) {
            Ok(text) => f.write_str(&text),
            Err(_) => write!(f, "{self:?}"),
        }
    }
}
