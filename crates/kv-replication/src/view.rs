//! The controller's view of the data plane, and what a node does with it — without I/O.
//!
//! The wiring builds a [`ClusterView`] from the controller's applied metadata (kv-replication
//! does not depend on the controller) and hands it to [`crate::Node::apply_cluster_view`];
//! [`decide`] says what changes. The rules:
//!
//! - **Never back.** A view of an epoch below the one the node is in is ignored (views reach a
//!   node late and out of order: heartbeat replies, the watch channel).
//! - **Lead only a new epoch.** Named leader of an epoch above every epoch it has led or holds
//!   entries of, the node leads it (and writes the epoch's no-op). Named leader of an epoch it
//!   already led — before a restart: a follower may hold entries of that epoch it lost — it
//!   must not lead it again: it follows nobody and asks for a new epoch
//!   ([`ViewAction::CannotLead`]). Epochs it only heard of (as a follower) do not count: the
//!   controller names one leader per epoch, and a follower hears an epoch as soon as that
//!   leader's followers do.
//! - **Follow the named leader**, re-pointing at once (a leader steps down at once: its
//!   pending writes end "not the leader"); with no leader, follow nobody.
//! - Within its epoch, a leader takes ISR and write-quorum changes as they come.

use std::collections::BTreeSet;

/// What the controller says about the data plane, as the node needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    /// The cluster's id (the node adopts it if it has none, and refuses another).
    pub cluster_id: u64,
    /// This node.
    pub node_id: u64,
    /// The controller's current leader epoch.
    pub leader_epoch: u64,
    /// The data leader (`None`: none right now: writes are refused, followers idle).
    pub leader: Option<LeaderRef>,
    /// The in-sync replicas, the leader included.
    pub isr: BTreeSet<u64>,
    /// Every member of the cluster.
    pub members: BTreeSet<u64>,
    /// `N`: the ISR must have at least this many members for a write to be acknowledged
    /// (`N = 1`: the leader alone).
    pub write_quorum: usize,
    /// The version of the controller's metadata the view was taken from: it grows with every
    /// change, so of two views the later has the higher. The leader decides its ISR changes
    /// against it ([`crate::IsrChange::based_on`]).
    pub version: u64,
}

/// The data leader: its node id and base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderRef {
    /// Its node id.
    pub id: u64,
    /// Its base URL (`http://host:port`).
    pub url: String,
}

/// What a node is, as far as a view is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// It leads `epoch`.
    Leader {
        /// The epoch.
        epoch: u64,
    },
    /// It follows `leader_url` (or nobody) in `epoch`.
    Follower {
        /// The leader's URL, if one is known.
        leader_url: Option<String>,
        /// The epoch it follows in.
        epoch: u64,
    },
}

impl Standing {
    /// The epoch the node is in.
    pub fn epoch(&self) -> u64 {
        match self {
            Standing::Leader { epoch } | Standing::Follower { epoch, .. } => *epoch,
        }
    }
}

/// What to do with a view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewAction {
    /// Nothing changes (an older view, or the same role).
    Nothing,
    /// Lead `epoch`: persist it, write its no-op, start with the view's ISR.
    Lead {
        /// The epoch.
        epoch: u64,
    },
    /// Still the leader of the same epoch: apply the ISR and write quorum.
    UpdateLeader,
    /// Named leader of `epoch`, which this node already led: follow nobody (if it does not
    /// already) and ask the controller for a new epoch (`ElectLeader{expected_epoch: epoch, new_leader: itself}`).
    CannotLead {
        /// The epoch it may not lead.
        epoch: u64,
    },
    /// Follow `leader_url` (`None`: nobody) in `epoch`.
    Follow {
        /// The leader's URL.
        leader_url: Option<String>,
        /// The epoch.
        epoch: u64,
    },
}

/// Whether a node whose log ends at `last_id` and which recorded `committed_id` as committed
/// may lead with the in-sync replicas `isr`: not when its log ends below that id (it lost
/// committed entries: its damaged data was moved aside, a power cut took a tail under
/// `--sync-policy never`, a point-in-time repair cut it) while another ISR member may hold
/// them — leading, it would make its followers cut their logs back to its own. Alone in the
/// ISR, nobody holds more: it may.
pub fn may_lead(node_id: u64, last_id: u64, committed_id: u64, isr: &BTreeSet<u64>) -> bool {
    last_id >= committed_id || isr.iter().all(|&id| id == node_id)
}

/// What a node at `standing`, which has led (or holds entries of) epochs up to
/// `highest_epoch_led`, does with `view` (see the module for the rules).
pub fn decide(standing: &Standing, highest_epoch_led: u64, view: &ClusterView) -> ViewAction {
    let epoch = view.leader_epoch;
    if epoch < standing.epoch() {
        return ViewAction::Nothing;
    }
    match &view.leader {
        Some(leader) if leader.id == view.node_id => match standing {
            Standing::Leader { epoch: leading } if *leading == epoch => ViewAction::UpdateLeader,
            _ if epoch > highest_epoch_led => ViewAction::Lead { epoch },
            _ => ViewAction::CannotLead { epoch },
        },
        leader => {
            let leader_url = leader.as_ref().map(|leader| leader.url.clone());
            let same = matches!(
                standing,
                Standing::Follower { leader_url: url, epoch: following }
                    if *url == leader_url && *following == epoch
            );
            if same {
                ViewAction::Nothing
            } else {
                ViewAction::Follow { leader_url, epoch }
            }
        }
    }
}
