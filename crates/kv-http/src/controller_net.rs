//! Reaching controllers over HTTP: [`HttpControllerTransport`] carries openraft's messages
//! between controllers (`POST {url}/controller/raft`), and [`ControllerClient`] takes a data
//! node's heartbeats, proposals, joins and forwarded admin calls to the **active** controller
//! (the Raft leader) — at home when this node is it, else over HTTP, following the
//! `421 Misdirected Request` answers (`{"leader_id","leader_url"}`) of nodes that are not.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use kv_controller::network::BoxFuture;
use kv_controller::{
    ApplyResult, ClusterMeta, Command, Controller, ControllerTransport, HeartbeatReply,
    HeartbeatRequest, NodeId, RaftMessage, RaftReply, Rejection, TransportError,
};
use serde::{Deserialize, Serialize};

use crate::lock;
use crate::peers::{json_bytes, PeerAnswer, PeerClient, PeerError};

/// The header a node puts on the requests it sends its peers: a forwarded admin call that
/// lands on a node that is not the active controller is answered `421`, never forwarded again.
pub const FORWARDED_HEADER: &str = "x-kvd-forwarded";

/// The controller endpoints.
pub mod paths {
    /// Raft messages between controllers.
    pub const RAFT: &str = "/controller/raft";
    /// A data node's heartbeat to the active controller.
    pub const HEARTBEAT: &str = "/controller/heartbeat";
    /// A command for the active controller to propose.
    pub const PROPOSE: &str = "/controller/propose";
    /// A new node asks to join.
    pub const JOIN: &str = "/controller/join";
    /// A stopping Raft leader asks a member to stand for election.
    pub const CAMPAIGN: &str = "/controller/campaign";
}

/// Most `421` hints a call follows before giving up for this round.
const HOPS_MAX: usize = 6;

/// `POST /controller/join`: node `id`, reachable at `url`, asks to join. `cluster_id` is the
/// cluster it already belongs to (a data directory from before the controller), 0 if none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The node asking.
    pub id: NodeId,
    /// Its URL.
    pub url: String,
    /// The cluster it belongs to already (0: none).
    #[serde(default)]
    pub cluster_id: u64,
    /// Whether it holds this cluster's controller state already, or was admitted to it before
    /// (its cluster id stored): a member whose address changed announces its new URL this way
    /// (a node without state may not take over a member's id at another URL), and a member
    /// the controller counted on that comes without it lost its data (refused).
    #[serde(default)]
    pub has_state: bool,
}

/// The answer to a join: the cluster's id (the node stores it) and its metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinReply {
    /// The cluster the node now belongs to.
    pub cluster_id: u64,
    /// The metadata with the node as a member.
    pub meta: ClusterMeta,
}

/// The answer to `POST /controller/propose`: the metadata after the command, or why it was
/// refused. (`ApplyResult` itself is an internally tagged enum, which serde cannot read back
/// with the metadata's integer map keys.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposeReply {
    /// The metadata after the command, if it applied.
    pub applied: Option<ClusterMeta>,
    /// Why it was refused, if it was.
    pub rejected: Option<Rejection>,
}

impl From<ApplyResult> for ProposeReply {
    fn from(result: ApplyResult) -> ProposeReply {
        match result {
            ApplyResult::Applied { meta } => ProposeReply {
                applied: Some(meta),
                rejected: None,
            },
            ApplyResult::Rejected { rejection } => ProposeReply {
                applied: None,
                rejected: Some(rejection),
            },
        }
    }
}

impl From<ProposeReply> for ApplyResult {
    fn from(reply: ProposeReply) -> ApplyResult {
        match (reply.applied, reply.rejected) {
            (Some(meta), _) => ApplyResult::Applied { meta },
            (None, Some(rejection)) => ApplyResult::Rejected { rejection },
            (None, None) => ApplyResult::Rejected {
                rejection: Rejection::Invalid {
                    detail: "the controller answered neither applied nor rejected".to_owned(),
                },
            },
        }
    }
}

/// The body of a `421` from a node that is not the active controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotControllerBody {
    /// Why.
    pub detail: String,
    /// The active controller, if this node knows it.
    pub leader_id: Option<NodeId>,
    /// Its URL, if known.
    pub leader_url: Option<String>,
}

/// openraft's network over HTTP: `POST {url}/controller/raft`, JSON both ways, on keep-alive
/// connections shared with the rest of this node's peer traffic.
#[derive(Debug, Clone)]
pub struct HttpControllerTransport {
    peers: Arc<PeerClient>,
}

impl HttpControllerTransport {
    /// A transport over `peers`.
    pub fn new(peers: Arc<PeerClient>) -> HttpControllerTransport {
        HttpControllerTransport { peers }
    }
}

impl ControllerTransport for HttpControllerTransport {
    fn send<'a>(
        &'a self,
        target: NodeId,
        url: &'a str,
        message: RaftMessage,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<RaftReply, TransportError>> {
        Box::pin(async move {
            let answer = self
                .peers
                .send(
                    Method::POST,
                    url,
                    paths::RAFT,
                    Some(Bytes::from(json_bytes(&message))),
                    timeout,
                    None,
                )
                .await
                .map_err(|error| match error {
                    PeerError::Unreachable { .. } | PeerError::BadUrl(_) => {
                        TransportError::Unreachable(error.to_string())
                    }
                    PeerError::NoAnswer { .. } => TransportError::Network(error.to_string()),
                })?;
            if answer.status != StatusCode::OK {
                return Err(TransportError::Network(format!(
                    "node {target} answered {}: {}",
                    answer.status,
                    body_text(&answer.body)
                )));
            }
            serde_json::from_slice(&answer.body).map_err(|error| {
                TransportError::Network(format!("bad Raft reply from node {target}: {error}"))
            })
        })
    }
}

/// Why a call to the active controller failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// No node answered as the active controller (none known, none reachable, an election
    /// in progress): try again later.
    #[error("no active controller answered: {0}")]
    NoController(String),
    /// The active controller answered with an error status.
    #[error("the controller answered {status}: {detail}")]
    Refused {
        /// The status.
        status: StatusCode,
        /// Its `detail`.
        detail: String,
    },
    /// This node's own controller failed (it belongs to another cluster, it is stopping, …).
    #[error("{0}")]
    Local(String),
}

/// Calls on the active controller, from any node. Cheap to share.
#[derive(Debug)]
pub struct ControllerClient {
    node_id: NodeId,
    controller: Controller,
    peers: Arc<PeerClient>,
    /// URLs to ask when nothing better is known (`--leader` of `kvd follower`).
    seeds: Vec<String>,
    /// The URL that last answered as the active controller.
    active_url: Mutex<Option<String>>,
    request_timeout: Duration,
}

impl ControllerClient {
    /// A client for node `node_id`, whose own controller is `controller`; `seeds` are asked
    /// when neither the controller nor the metadata names anyone; each HTTP call gives up
    /// after `request_timeout`.
    pub fn new(
        node_id: NodeId,
        controller: Controller,
        peers: Arc<PeerClient>,
        seeds: Vec<String>,
        request_timeout: Duration,
    ) -> ControllerClient {
        ControllerClient {
            node_id,
            controller,
            peers,
            seeds,
            active_url: Mutex::new(None),
            request_timeout,
        }
    }

    /// This node's controller.
    pub fn controller(&self) -> &Controller {
        &self.controller
    }

    /// The connections to peers.
    pub fn peers(&self) -> &Arc<PeerClient> {
        &self.peers
    }

    /// Whether this node's controller is the active one, as far as it knows.
    pub fn is_active_here(&self) -> bool {
        let metrics = self.controller.raft().metrics();
        let metrics = metrics.borrow();
        metrics.current_leader == Some(self.node_id)
            && metrics.state == openraft::ServerState::Leader
    }

    /// Sends a heartbeat to the active controller.
    pub async fn heartbeat(
        &self,
        request: &HeartbeatRequest,
    ) -> Result<HeartbeatReply, ClientError> {
        let hint = match self.controller.heartbeat(request.clone()).await {
            Ok(reply) => return Ok(reply),
            Err(error) => self.local_hint(error)?,
        };
        let answer = self
            .call_remote(
                Method::POST,
                paths::HEARTBEAT,
                Some(json_bytes(request)),
                hint,
                None,
                self.request_timeout,
            )
            .await?;
        decode(&answer)
    }

    /// Has the active controller propose `command`.
    pub async fn propose(&self, command: &Command) -> Result<ApplyResult, ClientError> {
        let hint = match self.controller.propose(command.clone()).await {
            Ok(result) => return Ok(result),
            Err(error) => self.local_hint(error)?,
        };
        let answer = self
            .call_remote(
                Method::POST,
                paths::PROPOSE,
                Some(json_bytes(command)),
                hint,
                None,
                self.request_timeout,
            )
            .await?;
        decode::<ProposeReply>(&answer).map(ApplyResult::from)
    }

    /// Asks the cluster (through the seeds, or whoever they point at) to admit this node.
    pub async fn join(&self, request: &JoinRequest) -> Result<JoinReply, ClientError> {
        let answer = self
            .call_remote(
                Method::POST,
                paths::JOIN,
                Some(json_bytes(request)),
                None,
                None,
                self.request_timeout,
            )
            .await?;
        decode(&answer)
    }

    /// Sends `method path` with `body` to the active controller and returns its answer as is
    /// (admin calls made on another node), marked with [`crate::FORWARDED_HEADER`] so the
    /// receiver never forwards it again.
    ///
    /// `answer_within`: how long the call may take to be answered (at least the request
    /// timeout) — an admin call that answers only once done, as a leadership transfer does,
    /// needs longer than a heartbeat.
    pub async fn forward(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        answer_within: Duration,
    ) -> Result<PeerAnswer, ClientError> {
        let hint = self.raft_leader_url();
        let header = Some((FORWARDED_HEADER, "1"));
        let timeout = answer_within.max(self.request_timeout);
        self.call_remote(
            method,
            path,
            body.map(|body| body.to_vec()),
            hint,
            header,
            timeout,
        )
        .await
    }

    /// The hint a local refusal gives (`None` when the local controller knows no leader), or
    /// the error to return when it was no "ask the leader".
    fn local_hint(&self, error: kv_controller::Error) -> Result<Option<String>, ClientError> {
        match error {
            kv_controller::Error::NotLeader { leader_url, .. } => {
                Ok(leader_url.or_else(|| self.raft_leader_url()))
            }
            kv_controller::Error::ClusterMismatch { .. }
            | kv_controller::Error::Rejected(_)
            | kv_controller::Error::InvalidOptions(_)
            | kv_controller::Error::NoTransferTarget
            | kv_controller::Error::TransferTargetDown { .. } => {
                Err(ClientError::Local(error.to_string()))
            }
            // Raft is stopping or busy here: another node may still answer.
            _ => Ok(self.raft_leader_url()),
        }
    }

    /// The URL of the Raft leader this node's controller knows, from the metadata.
    fn raft_leader_url(&self) -> Option<String> {
        let leader = self.controller.raft_leader()?;
        self.controller.meta().url_of(leader).map(str::to_owned)
    }

    /// Whom to ask, best first: the hint, the last URL that answered, every member, the seeds.
    fn candidates(&self, hint: Option<String>) -> Vec<String> {
        let meta = self.controller.meta();
        let own_url = meta.url_of(self.node_id).map(str::to_owned);
        let mut candidates: Vec<String> = Vec::new();
        let ordered = hint
            .into_iter()
            .chain(lock(&self.active_url).clone())
            .chain(
                meta.members
                    .values()
                    .filter(|member| member.id != self.node_id)
                    .map(|member| member.url.clone()),
            )
            .chain(self.seeds.iter().cloned());
        for url in ordered {
            if Some(&url) != own_url.as_ref() && !candidates.contains(&url) {
                candidates.push(url);
            }
        }
        candidates
    }

    /// Sends the request to the candidates in turn, each try given `timeout`, following `421`
    /// hints; returns the first answer that is not a `421`.
    async fn call_remote(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        hint: Option<String>,
        extra_header: Option<(&'static str, &'static str)>,
        timeout: Duration,
    ) -> Result<PeerAnswer, ClientError> {
        let body = body.map(Bytes::from);
        let mut queue = self.candidates(hint);
        let mut tried: Vec<String> = Vec::new();
        let mut failures: Vec<String> = Vec::new();
        while let Some(url) = queue.first().cloned() {
            queue.remove(0);
            if tried.contains(&url) || tried.len() >= HOPS_MAX + self.seeds.len() {
                continue;
            }
            tried.push(url.clone());
            let sent = self
                .peers
                .send(
                    method.clone(),
                    &url,
                    path,
                    body.clone(),
                    timeout,
                    extra_header,
                )
                .await;
            let answer = match sent {
                Ok(answer) => answer,
                Err(error) => {
                    failures.push(error.to_string());
                    continue;
                }
            };
            if answer.status == StatusCode::MISDIRECTED_REQUEST {
                let hint: Option<NotControllerBody> = serde_json::from_slice(&answer.body).ok();
                match hint.and_then(|hint| hint.leader_url) {
                    Some(leader_url) if !tried.contains(&leader_url) => queue.insert(0, leader_url),
                    _ => failures.push(format!("{url}: not the active controller")),
                }
                continue;
            }
            *lock(&self.active_url) = Some(url);
            return Ok(answer);
        }
        if failures.is_empty() {
            failures.push("no controller is known".to_owned());
        }
        Err(ClientError::NoController(failures.join("; ")))
    }
}

/// A `200` answer's JSON, or the refusal it carries.
fn decode<T: serde::de::DeserializeOwned>(answer: &PeerAnswer) -> Result<T, ClientError> {
    if answer.status != StatusCode::OK {
        let detail = serde_json::from_slice::<serde_json::Value>(&answer.body)
            .ok()
            .and_then(|body| body["detail"].as_str().map(str::to_owned))
            .unwrap_or_else(|| body_text(&answer.body));
        return Err(ClientError::Refused {
            status: answer.status,
            detail,
        });
    }
    serde_json::from_slice(&answer.body).map_err(|error| ClientError::Refused {
        status: answer.status,
        detail: format!("malformed answer: {error}"),
    })
}

fn body_text(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned()
}
