//! The controllers' network: what kv-http carries between nodes, and openraft's
//! `RaftNetworkFactory` on top of it.
//!
//! A [`ControllerTransport`] sends one [`RaftMessage`] (serde-serializable: kv-http sends it
//! as JSON to `POST {url}/controller/raft`) and returns the peer's [`RaftReply`], which the
//! peer produced with [`crate::Controller::handle_raft`]. Every message carries the sender's
//! cluster id, and a node that knows its cluster refuses another's
//! ([`RaftReply::ClusterMismatch`]); every message names the node it is for, and another
//! node refuses it ([`RaftReply::WrongNode`]). The in-memory transport of the tests is
//! [`crate::memory::MemoryNetwork`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, LogId};
use serde::{Deserialize, Serialize};

use crate::meta::NodeId;
use crate::raft_types::TypeConfig;

/// A Raft RPC.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RaftRequest {
    /// Log replication and heartbeats.
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    /// A candidate asks for a vote.
    Vote(VoteRequest<NodeId>),
    /// A chunk of a snapshot.
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A member that hears no leader asks whether this one would vote for it, before it
    /// raises its term ([`PreVoteRequest`]).
    PreVote(PreVoteRequest),
}

/// The question of a member that hears no leader, before it stands for election: would you
/// vote for me? (The Raft thesis' pre-vote, §9.6; etcd's `PreVote`.) Nothing changes on
/// either side: only once a majority says yes does the member raise its term and ask for
/// votes. A member cut off from the others therefore keeps its term, and when it comes back
/// its term does not depose the leader the others kept (openraft 0.9 has no pre-vote of its
/// own, and steps down at any higher term in an answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreVoteRequest {
    /// The asking member's last log id (or last purged one).
    pub last_log_id: Option<LogId<NodeId>>,
}

/// The answer to a [`PreVoteRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreVoteResponse {
    /// Whether this member would vote: it is not the leader, has heard from none within the
    /// leader lease (openraft's: the longest election timeout), and its log is no longer than
    /// the asker's.
    pub granted: bool,
}

/// A Raft RPC with its envelope.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RaftMessage {
    /// The sender's cluster id (0: it has none yet).
    pub cluster_id: u64,
    /// The sender.
    pub from: NodeId,
    /// The node it is for: another node refuses it ([`RaftReply::WrongNode`]), so a node
    /// answering at a member's address never answers as that member. (`None` from a sender
    /// that does not say.)
    #[serde(default)]
    pub to: Option<NodeId>,
    /// The RPC.
    pub request: RaftRequest,
}

/// The answer to a [`RaftMessage`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RaftReply {
    /// To an `AppendEntries`.
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    /// To a `Vote`.
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    /// To an `InstallSnapshot`.
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    /// To a `PreVote`.
    PreVote(PreVoteResponse),
    /// The receiver belongs to another cluster: nothing was done.
    ClusterMismatch {
        /// The receiver's cluster id.
        cluster_id: u64,
    },
    /// The receiver is another node than the message is for: nothing was done.
    WrongNode {
        /// The receiver's node id.
        node_id: NodeId,
    },
    /// The receiver has not been admitted to a cluster (no controller state, no cluster id):
    /// nothing was done.
    NotJoined,
}

/// Why a message got no reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// The peer could not be reached (refused, reset, partitioned): retried after a backoff.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// Anything else (a timeout, a malformed answer): retried at once.
    #[error("network: {0}")]
    Network(String),
}

/// A boxed future, as the transport returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Carries Raft messages between controllers. kv-http implements it over HTTP; the tests'
/// implementation is in memory.
pub trait ControllerTransport: Send + Sync + fmt::Debug + 'static {
    /// Sends `message` to node `target` at base URL `url` and returns its reply; gives up after
    /// `timeout`.
    fn send<'a>(
        &'a self,
        target: NodeId,
        url: &'a str,
        message: RaftMessage,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<RaftReply, TransportError>>;
}

/// openraft's network factory over a [`ControllerTransport`].
#[derive(Debug, Clone)]
pub(crate) struct Network {
    pub(crate) transport: Arc<dyn ControllerTransport>,
    pub(crate) from: NodeId,
    /// This node's cluster id, once known.
    pub(crate) cluster_id: Arc<AtomicU64>,
}

/// One peer.
#[derive(Debug)]
pub(crate) struct Connection {
    network: Network,
    target: NodeId,
    url: String,
}

impl Network {
    /// Asks member `target` at `url` a [`PreVoteRequest`]; no answer within `timeout`, or
    /// any other answer, counts as a refusal.
    pub(crate) async fn pre_vote(
        &self,
        target: NodeId,
        url: &str,
        request: PreVoteRequest,
        timeout: Duration,
    ) -> bool {
        let connection = Connection {
            network: self.clone(),
            target,
            url: url.to_owned(),
        };
        let reply = connection.call(RaftRequest::PreVote(request), timeout);
        matches!(
            reply.await,
            Ok(RaftReply::PreVote(PreVoteResponse { granted: true }))
        )
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Connection {
        Connection {
            network: self.clone(),
            target,
            url: node.addr.clone(),
        }
    }
}

type RpcError<E = openraft::error::Infallible> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

impl Connection {
    async fn call(
        &self,
        request: RaftRequest,
        timeout: Duration,
    ) -> Result<RaftReply, TransportError> {
        let message = RaftMessage {
            cluster_id: self.network.cluster_id.load(Ordering::Acquire),
            from: self.network.from,
            to: Some(self.target),
            request,
        };
        let reply = self
            .network
            .transport
            .send(self.target, &self.url, message, timeout)
            .await?;
        match reply {
            RaftReply::ClusterMismatch { cluster_id } => {
                return Err(TransportError::Unreachable(format!(
                    "node {} belongs to cluster {cluster_id:016x}",
                    self.target
                )))
            }
            RaftReply::WrongNode { node_id } => {
                return Err(TransportError::Unreachable(format!(
                    "{} is node {node_id}, not node {}",
                    self.url, self.target
                )))
            }
            // Not `Unreachable` (openraft backs off for it): a joining node adopts the
            // cluster's id within one answer and should get the log at once.
            RaftReply::NotJoined => {
                return Err(TransportError::Network(format!(
                    "node {} at {} has not joined the cluster (yet)",
                    self.target, self.url
                )))
            }
            _ => {}
        }
        Ok(reply)
    }

    fn remote<E: std::error::Error>(
        &self,
        error: RaftError<NodeId, E>,
    ) -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
        RPCError::RemoteError(RemoteError::new(self.target, error))
    }
}

fn transport_error<E: std::error::Error>(
    error: TransportError,
) -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
    match &error {
        TransportError::Unreachable(_) => RPCError::Unreachable(Unreachable::new(&error)),
        TransportError::Network(_) => RPCError::Network(NetworkError::new(&error)),
    }
}

fn unexpected<E: std::error::Error>(
    reply: &RaftReply,
) -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
    let error = TransportError::Network(format!("unexpected reply {reply:?}"));
    RPCError::Network(NetworkError::new(&error))
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcError> {
        match self
            .call(RaftRequest::AppendEntries(rpc), option.hard_ttl())
            .await
        {
            Ok(RaftReply::AppendEntries(Ok(response))) => Ok(response),
            Ok(RaftReply::AppendEntries(Err(error))) => Err(self.remote(error)),
            Ok(reply) => Err(unexpected(&reply)),
            Err(error) => Err(transport_error(error)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcError<InstallSnapshotError>> {
        match self
            .call(RaftRequest::InstallSnapshot(rpc), option.hard_ttl())
            .await
        {
            Ok(RaftReply::InstallSnapshot(Ok(response))) => Ok(response),
            Ok(RaftReply::InstallSnapshot(Err(error))) => Err(self.remote(error)),
            Ok(reply) => Err(unexpected(&reply)),
            Err(error) => Err(transport_error(error)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcError> {
        match self.call(RaftRequest::Vote(rpc), option.hard_ttl()).await {
            Ok(RaftReply::Vote(Ok(response))) => Ok(response),
            Ok(RaftReply::Vote(Err(error))) => Err(self.remote(error)),
            Ok(reply) => Err(unexpected(&reply)),
            Err(error) => Err(transport_error(error)),
        }
    }
}
