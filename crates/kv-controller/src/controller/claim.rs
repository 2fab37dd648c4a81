//! Another cluster's claim on this node: a Raft message of another cluster, for this node's id
//! at this node's URL, reaching a node that is alone in its own cluster.
//!
//! That is what a member that lost its data looks like from the inside: `kvd leader` on a new
//! disk (or a deleted data directory) initializes a one-member cluster at the address its old
//! cluster still counts as its member's, and that cluster's controller goes on sending it
//! heartbeats and votes. The node answers them [`RaftReply::ClusterMismatch`] as before and
//! records the claim ([`Controller::claimed`]); what to do about it is the node's business
//! (kvd stops: `bins/kvd/src/cluster/claim.rs`). A node of a cluster with other members
//! records nothing: its cluster is not new, and a stale cluster's messages change nothing.

use super::*;

/// Another cluster counts this node as its member ([`Controller::claimed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForeignClaim {
    /// The id of the cluster that counts this node as its member.
    pub cluster_id: u64,
    /// The member of that cluster that sent the message.
    pub from: NodeId,
    /// The id of the cluster this node belongs to (it is that cluster's only member).
    pub ours: u64,
}

impl Controller {
    /// The first claim another cluster made on this node while it was alone in its own
    /// cluster (`None` until then; it never goes back).
    pub fn claimed(&self) -> watch::Receiver<Option<ForeignClaim>> {
        self.inner.claimed.subscribe()
    }

    /// Records `message`'s claim if it is one: of another cluster, for this node, which is
    /// its own cluster's only member.
    pub(super) fn note_a_claim(&self, message: &RaftMessage) {
        let node_id = self.inner.options.node_id;
        if message.cluster_id == 0
            || message.to != Some(node_id)
            || self.inner.claimed.borrow().is_some()
        {
            return;
        }
        // Alone in its cluster: the metadata names the cluster and only this node (a node
        // that joined but has no metadata yet lists no member).
        let meta = self.meta();
        let ours = meta.cluster_id;
        if message.cluster_id == ours || !meta.members.keys().eq([&node_id]) {
            return;
        }
        let claim = ForeignClaim {
            cluster_id: message.cluster_id,
            from: message.from,
            ours,
        };
        let recorded = self.inner.claimed.send_if_modified(|first| {
            let new = first.is_none();
            if new {
                *first = Some(claim);
            }
            new
        });
        if recorded {
            tracing::error!(
                cluster_id = %format!("{:016x}", claim.cluster_id),
                from = claim.from,
                ours = %format!("{ours:016x}"),
                "controller: another cluster counts this node as its member, and this node is alone in its own cluster"
            );
        }
    }
}
