//! A `kvd leader` that lost its data stops once its old cluster claims it.
//!
//! `kvd leader` on an empty data directory initializes a new one-member cluster (DESIGN.md,
//! "Bootstrap and identity"). Started so on a new disk, or after its data directory was
//! deleted, at the address its cluster still counts as node 0's, it took writes there: a
//! second cluster, holding none of the first one's keys, behind the address clients know as
//! the leader's. The old cluster's controller goes on sending node 0 its Raft messages, which
//! the new cluster refuses; kv-controller records the first one as a claim
//! ([`kv_controller::Controller::claimed`]), and here the node:
//!
//! 1. revokes its lease (a write that completes before a heartbeat renews it is answered 503);
//! 2. writes [`CLAIM_FILE`] into its data directory (durably): the claim and the ways out;
//! 3. stops as on SIGTERM — no new request is read, those in flight finish — and exits with
//!    that text as its error.
//!
//! Started again from that directory, it refuses before it opens anything
//! ([`refuse_a_claimed_node`]), until the operator chose a way out (the text names both):
//! rejoin the old cluster as a new member, or keep the new cluster after all.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use kv_controller::{Controller, ForeignClaim};
use kv_replication::Node;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cluster::bootstrap::Identity;
use crate::config::NodeConfig;

/// The file in the data directory that records another cluster's claim on this node.
pub const CLAIM_FILE: &str = "claimed-by-another-cluster";

/// Refuses to start a node whose data directory records another cluster's claim
/// ([`CLAIM_FILE`]), with the recorded text: how it came about and the ways out.
pub fn refuse_a_claimed_node(config: &NodeConfig) -> anyhow::Result<()> {
    let path = config.data_dir.join(CLAIM_FILE);
    let Some(text) = kv_wal::durable::read_file(&kv_wal::fs::StdFs, &path)? else {
        return Ok(());
    };
    anyhow::bail!(
        "refusing to start: {} records that another cluster claims this node. {}",
        path.display(),
        String::from_utf8_lossy(&text).trim_end()
    )
}

/// [`stop_when_claimed`], on a task of its own for as long as the node runs.
pub struct ClaimWatch(JoinHandle<anyhow::Error>);

impl ClaimWatch {
    /// Starts watching for a claim on the node `identity` names.
    pub fn start(
        config: &NodeConfig,
        identity: &Identity,
        controller: &Controller,
        node: &Arc<Node>,
        stop: Arc<watch::Sender<bool>>,
    ) -> ClaimWatch {
        let (data_dir, identity) = (config.data_dir.clone(), identity.clone());
        let (controller, node) = (controller.clone(), node.clone());
        ClaimWatch(tokio::spawn(async move {
            stop_when_claimed(&data_dir, &identity, &controller, &node, stop).await
        }))
    }

    /// Once the node stopped: the error it exits with if a claim stopped it; otherwise stops
    /// watching.
    pub async fn finish(self) -> anyhow::Result<()> {
        if !self.0.is_finished() {
            self.0.abort();
            return Ok(());
        }
        Err(self.0.await.context("the claim task failed")?)
    }
}

/// Waits until another cluster claims this node ([`Controller::claimed`]); then revokes the
/// node's lease, records the claim in [`CLAIM_FILE`], and asks the node to stop (`stop`).
/// Returns the error the node exits with.
pub async fn stop_when_claimed(
    data_dir: &Path,
    identity: &Identity,
    controller: &Controller,
    node: &Node,
    stop: Arc<watch::Sender<bool>>,
) -> anyhow::Error {
    let mut claimed = controller.claimed();
    let claim = claimed.wait_for(Option::is_some).await.map(|claim| *claim);
    let Ok(Some(claim)) = claim else {
        // The controller is gone: the node is stopping anyway.
        return std::future::pending().await;
    };
    node.revoke_lease();
    let text = explain(&claim, identity, data_dir, node.store().last_id());
    tracing::error!("{text}");
    let recorded: anyhow::Result<()> = tokio::task::spawn_blocking({
        let (data_dir, bytes) = (data_dir.to_owned(), format!("{text}\n").into_bytes());
        move || {
            kv_wal::durable::write_file_atomic(&kv_wal::fs::StdFs, &data_dir, CLAIM_FILE, &bytes)
        }
    })
    .await
    .map_err(anyhow::Error::from)
    .and_then(|written| written.map_err(anyhow::Error::from));
    let _ = stop.send(true);
    match recorded {
        Ok(()) => anyhow::anyhow!("stopped: {text}"),
        Err(error) => anyhow::anyhow!(
            "stopped: {text} (and it could not record this in {}: {error:#}; it will start \
             again from this directory)",
            data_dir.join(CLAIM_FILE).display()
        ),
    }
}

/// What happened, and the ways out.
fn explain(claim: &ForeignClaim, identity: &Identity, data_dir: &Path, last_id: u64) -> String {
    let id = identity.node_id;
    format!(
        "Cluster {theirs:016x} counts this node (node {id} at {url}) as its member: its node \
         {from} sent it the controller's messages. But {dir} holds cluster {ours:016x}, which \
         this node initialized alone when it started without data of its own (a new disk, or \
         a data directory deleted or moved?): it has none of cluster {theirs:016x}'s data, and \
         clients writing to it would write into a cluster the others do not have. So it \
         stopped. What it wrote as cluster {ours:016x} (entries up to id {last_id}) is in \
         {dir} only. The ways out: to bring this machine back into cluster {theirs:016x}, \
         remove node {id} there (DELETE /admin/members/{id} on one of its nodes), move {dir} \
         aside, and start it as a new member, `kvd follower N --leader URL` (N an id cluster \
         {theirs:016x} does not use, URL one of its nodes): it copies the cluster's data. To \
         run it as cluster {ours:016x} instead (cluster {theirs:016x} is gone, or will no \
         longer count it), remove node {id} from cluster {theirs:016x} if it still runs, then \
         delete {claim_file}",
        theirs = claim.cluster_id,
        ours = claim.ours,
        from = claim.from,
        url = identity.url,
        dir = data_dir.display(),
        claim_file = data_dir.join(CLAIM_FILE).display(),
    )
}
