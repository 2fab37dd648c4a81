//! An in-memory [`ControllerTransport`] for tests: controllers in one process call each
//! other's [`Controller::handle_raft`] directly, and the test cuts links or isolates nodes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::controller::Controller;
use crate::meta::NodeId;
use crate::network::{BoxFuture, ControllerTransport, RaftMessage, RaftReply, TransportError};

#[derive(Debug, Default)]
struct Links {
    nodes: BTreeMap<NodeId, Controller>,
    /// Directed links that drop everything.
    cut: BTreeSet<(NodeId, NodeId)>,
}

/// The network: a registry of controllers and the links cut between them.
#[derive(Debug, Clone, Default)]
pub struct MemoryNetwork {
    links: Arc<Mutex<Links>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl MemoryNetwork {
    /// An empty network.
    pub fn new() -> MemoryNetwork {
        MemoryNetwork::default()
    }

    /// The transport node `from` sends with.
    pub fn transport(&self, from: NodeId) -> Arc<dyn ControllerTransport> {
        Arc::new(MemoryTransport {
            network: self.clone(),
            from,
        })
    }

    /// Makes `controller` reachable.
    pub fn register(&self, controller: Controller) {
        lock(&self.links)
            .nodes
            .insert(controller.node_id(), controller);
    }

    /// Makes node `id` unreachable (killed) and returns its controller.
    pub fn unregister(&self, id: NodeId) -> Option<Controller> {
        lock(&self.links).nodes.remove(&id)
    }

    /// Drops every message between `a` and `b`, both ways.
    pub fn cut(&self, a: NodeId, b: NodeId) {
        let mut links = lock(&self.links);
        links.cut.insert((a, b));
        links.cut.insert((b, a));
    }

    /// Cuts `id` off from every other node.
    pub fn isolate(&self, id: NodeId, others: impl IntoIterator<Item = NodeId>) {
        for other in others {
            if other != id {
                self.cut(id, other);
            }
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        lock(&self.links).cut.clear();
    }

    fn route(&self, from: NodeId, to: NodeId) -> Result<Controller, TransportError> {
        let links = lock(&self.links);
        if links.cut.contains(&(from, to)) {
            return Err(TransportError::Unreachable(format!(
                "link {from} -> {to} is cut"
            )));
        }
        links
            .nodes
            .get(&to)
            .cloned()
            .ok_or_else(|| TransportError::Unreachable(format!("node {to} is down")))
    }
}

#[derive(Debug)]
struct MemoryTransport {
    network: MemoryNetwork,
    from: NodeId,
}

impl ControllerTransport for MemoryTransport {
    fn send<'a>(
        &'a self,
        target: NodeId,
        _url: &'a str,
        message: RaftMessage,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<RaftReply, TransportError>> {
        Box::pin(async move {
            let controller = self.network.route(self.from, target)?;
            // Through JSON, as on the wire.
            let text = serde_json::to_string(&message)
                .map_err(|error| TransportError::Network(error.to_string()))?;
            let message: RaftMessage = serde_json::from_str(&text)
                .map_err(|error| TransportError::Network(error.to_string()))?;
            let reply = tokio::time::timeout(timeout, controller.handle_raft(message))
                .await
                .map_err(|_| {
                    TransportError::Network(format!("no reply from {target} within {timeout:?}"))
                })?;
            // The reply is lost if the link was cut meanwhile.
            self.network.route(target, self.from)?;
            let text = serde_json::to_string(&reply)
                .map_err(|error| TransportError::Network(error.to_string()))?;
            serde_json::from_str(&text).map_err(|error| TransportError::Network(error.to_string()))
        })
    }
}
