//! What every request handler shares: the store, the node's role, the limits, the metrics.

use std::sync::{Arc, RwLock};

use kv_store::Store;

use crate::metrics::Metrics;
use crate::options::HttpOptions;

/// What this node is in the cluster; decides how writes are answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeRole {
    /// Takes writes.
    Leader,
    /// Serves reads; answers writes with a 307 redirect to the leader.
    Follower {
        /// The leader's base URL, e.g. `http://127.0.0.1:8000`.
        leader_url: String,
    },
}

impl NodeRole {
    /// `"leader"` or `"follower"`.
    pub fn name(&self) -> &'static str {
        match self {
            NodeRole::Leader => "leader",
            NodeRole::Follower { .. } => "follower",
        }
    }
}

/// Shared state of the HTTP service.
#[derive(Debug)]
pub struct AppState {
    /// The key-value store.
    pub store: Arc<Store>,
    /// Limits and timeouts.
    pub options: HttpOptions,
    /// Request, latency and connection counters.
    pub metrics: Metrics,
    role: RwLock<NodeRole>,
}

impl AppState {
    /// State for a node in `role`.
    pub fn new(store: Arc<Store>, role: NodeRole, options: HttpOptions) -> AppState {
        AppState {
            store,
            options,
            metrics: Metrics::default(),
            role: RwLock::new(role),
        }
    }

    /// The node's current role.
    pub fn role(&self) -> NodeRole {
        self.role
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Changes the node's role (replication promotes and demotes nodes).
    pub fn set_role(&self, role: NodeRole) {
        *self
            .role
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = role;
    }
}
