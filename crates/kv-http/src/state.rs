//! What every request handler shares: the node (store and role), the limits, the metrics.

use std::sync::Arc;

use kv_replication::Node;
use kv_store::Store;

use crate::cluster_state::ClusterState;
use crate::metrics::Metrics;
use crate::options::HttpOptions;

/// What this node is in the cluster: the leader takes writes; a follower answers them with a
/// 307 to its leader.
pub use kv_replication::Role as NodeRole;

/// Shared state of the HTTP service.
#[derive(Debug)]
pub struct AppState {
    /// The node: the store and its replication role.
    pub node: Arc<Node>,
    /// The key-value store (the node's).
    pub store: Arc<Store>,
    /// Limits and timeouts.
    pub options: HttpOptions,
    /// Request, latency and connection counters.
    pub metrics: Metrics,
    /// The node's controller and what it learned of the cluster (`None`: a node run without
    /// a controller, as in kv-http's own tests).
    pub cluster: Option<Arc<ClusterState>>,
    /// Set once the server stops accepting ([`crate::serve`]'s shutdown): a request that
    /// would wait longer than the drain (a `min_id` read) ends then, answered 503.
    pub(crate) stopping: tokio::sync::watch::Sender<bool>,
}

impl AppState {
    /// State for `node`.
    pub fn new(node: Arc<Node>, options: HttpOptions) -> AppState {
        AppState {
            store: node.store().clone(),
            node,
            options,
            metrics: Metrics::default(),
            cluster: None,
            stopping: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Resolves once the server has begun to shut down (at once if it has).
    pub(crate) async fn stopped(&self) {
        let mut stopping = self.stopping.subscribe();
        // Dropping the guard `wait_for` returns keeps this future `Send`.
        let _ = stopping.wait_for(|&stopping| stopping).await.map(drop);
    }

    /// The same state, as a member of a controlled cluster.
    pub fn with_cluster(self, cluster: Arc<ClusterState>) -> AppState {
        AppState {
            cluster: Some(cluster),
            ..self
        }
    }

    /// The node's role.
    pub fn role(&self) -> NodeRole {
        self.node.role()
    }

    /// `"leader"` or `"follower"`.
    pub fn role_name(&self) -> &'static str {
        match self.node.role() {
            NodeRole::Leader => "leader",
            NodeRole::Follower { .. } => "follower",
            NodeRole::NoLeader => "none",
        }
    }
}
