//! What a node of a controlled cluster knows of it ([`ClusterState`]): who it is, its
//! controller and the way to the active one, the metadata its data plane follows; and
//! [`cluster_view`], the controller's metadata as the data plane takes it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use kv_controller::{ClusterMeta, Controller, NodeId, Timing};
use kv_replication::{ClusterView, LeaderRef};

use crate::controller_net::ControllerClient;

/// What a node of a controlled cluster knows beyond its data: who it is, its controller and
/// the way to the active one, the metadata its data plane follows, and whether it is handing
/// its leadership over.
#[derive(Debug)]
pub struct ClusterState {
    node_id: NodeId,
    url: String,
    client: ControllerClient,
    timing: Timing,
    learned: Mutex<Learned>,
    /// Whether the newest metadata heard names another node the data leader: what a write
    /// checks first, without the lock ([`ClusterState::other_leader_url`]).
    other_leads: AtomicBool,
}

#[derive(Debug, Default)]
struct Learned {
    /// The newest metadata applied to the data plane.
    view: Option<ClusterMeta>,
    /// The newest metadata offered to the data plane, recorded before it is applied: applying
    /// a view may wait on the disk (a new epoch is recorded in `node.meta` first), and a
    /// leader the newest view replaced sends requests to the new one meanwhile
    /// ([`ClusterState::other_leader_url`]).
    heard: Option<ClusterMeta>,
    /// A planned transfer away from this leader is under way.
    handing_over: bool,
}

impl ClusterState {
    /// The cluster state of node `node_id`, reachable at `url`.
    pub fn new(
        node_id: NodeId,
        url: String,
        client: ControllerClient,
        timing: Timing,
    ) -> ClusterState {
        ClusterState {
            node_id,
            url,
            client,
            timing,
            learned: Mutex::new(Learned::default()),
            other_leads: AtomicBool::new(false),
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// This node's URL, as its peers reach it.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The way to the active controller.
    pub fn client(&self) -> &ControllerClient {
        &self.client
    }

    /// This node's controller.
    pub fn controller(&self) -> &Controller {
        self.client.controller()
    }

    /// The controller's clocks.
    pub fn timing(&self) -> &Timing {
        &self.timing
    }

    /// Whether `meta` is newer (by [`ClusterMeta::version`]) than the view the data plane
    /// follows. The heartbeat replies and the node's own controller both offer metadata; the
    /// driver applies only ever-newer views, one at a time, so an ISR never goes back.
    pub fn is_newer_view(&self, meta: &ClusterMeta) -> bool {
        self.learned()
            .view
            .as_ref()
            .is_none_or(|view| meta.version > view.version)
    }

    /// Records `meta` as the view the data plane now follows.
    pub fn set_view(&self, meta: &ClusterMeta) {
        let mut learned = self.learned();
        learned.view = Some(meta.clone());
        self.note_newest(&learned);
    }

    /// The view the data plane follows, if it took one yet.
    pub fn view(&self) -> Option<ClusterMeta> {
        self.learned().view.clone()
    }

    /// Records `meta` as heard, about to be applied to the data plane (if newer than what was
    /// heard before).
    pub fn set_heard(&self, meta: &ClusterMeta) {
        let mut learned = self.learned();
        if learned
            .heard
            .as_ref()
            .is_none_or(|heard| meta.version > heard.version)
        {
            learned.heard = Some(meta.clone());
        }
        self.note_newest(&learned);
    }

    /// The newest metadata heard or applied.
    fn newest(learned: &Learned) -> Option<&ClusterMeta> {
        match (&learned.heard, &learned.view) {
            (Some(heard), Some(view)) if heard.version > view.version => Some(heard),
            (_, Some(view)) => Some(view),
            (heard, None) => heard.as_ref(),
        }
    }

    fn note_newest(&self, learned: &Learned) {
        let other_leads = Self::newest(learned)
            .and_then(|newest| newest.data_leader)
            .is_some_and(|leader| leader != self.node_id);
        self.other_leads.store(other_leads, Ordering::Release);
    }

    /// The URL of the data leader the newest metadata this node has heard names — applied
    /// or still being applied — when that is another node: a node that takes itself for the
    /// leader but cannot vouch for it (its lease, a transfer) sends requests there. Views only
    /// move forward, so a newer one naming another node means this node's leadership ended,
    /// even while its role change waits on a hung disk.
    pub fn other_leader_url(&self) -> Option<String> {
        if !self.other_leads.load(Ordering::Acquire) {
            return None;
        }
        let learned = self.learned();
        let newest = Self::newest(&learned)?;
        newest
            .data_leader
            .filter(|&leader| leader != self.node_id)
            .and_then(|_| newest.leader_url())
            .map(str::to_owned)
    }

    /// Whether the newest metadata this node has heard — applied, or still being applied (a
    /// role change that waits on the disk) — names it the data leader.
    pub fn named_leader(&self) -> bool {
        let learned = self.learned();
        Self::newest(&learned).is_some_and(|newest| newest.data_leader == Some(self.node_id))
    }

    /// Marks this leader as handing its leadership over (a planned transfer): it answers no
    /// read as linearizable until that ends, since the new leader may take writes before this
    /// node's lease runs out.
    pub fn set_handing_over(&self, handing_over: bool) {
        self.learned().handing_over = handing_over;
    }

    /// The newest metadata this node knows: its controller's applied state, or the view it
    /// took from the active controller if that is newer (a restarted or lagging controller).
    pub fn newest_meta(&self) -> ClusterMeta {
        let applied = self.controller().meta();
        match self.view() {
            Some(view) if view.version > applied.version => view,
            _ => applied,
        }
    }

    /// Under one lock (the read gate asks on every read): whether the view this node took names
    /// it the data leader (`None`: it took none yet), and whether a planned transfer away from
    /// this leader is under way.
    pub fn leadership_standing(&self) -> (Option<bool>, bool) {
        let learned = self.learned();
        let named = learned
            .view
            .as_ref()
            .map(|view| view.data_leader == Some(self.node_id));
        (named, learned.handing_over)
    }

    fn learned(&self) -> MutexGuard<'_, Learned> {
        crate::lock(&self.learned)
    }
}

/// The controller's metadata as node `node_id`'s data plane takes it.
pub fn cluster_view(meta: &ClusterMeta, node_id: NodeId) -> ClusterView {
    ClusterView {
        cluster_id: meta.cluster_id,
        node_id,
        leader_epoch: meta.leader_epoch,
        leader: meta.data_leader.and_then(|id| {
            Some(LeaderRef {
                id,
                url: meta.url_of(id)?.to_owned(),
            })
        }),
        isr: meta.isr.clone(),
        members: meta.members.keys().copied().collect(),
        write_quorum: meta.write_quorum as usize,
        version: meta.version,
    }
}
