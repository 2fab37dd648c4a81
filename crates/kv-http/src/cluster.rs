//! The cluster side of the API: the controller endpoints other nodes call
//! (`POST /controller/raft|heartbeat|propose|join`: a node that is not the active controller
//! answers `421` naming the one that is), the admin endpoints (`POST /admin/transfer-leader`,
//! `DELETE /admin/members/{id}`: on any node, forwarded to the active controller), and
//! `/cluster_status`. What a node knows of its cluster is in cluster_state.rs; who may answer
//! a read in gate.rs.

use std::error::Error as StdError;
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::body::Body;
use kv_controller::{
    ClusterMeta, Command, Controller, HeartbeatRequest, NodeId, RaftMessage, Rejection,
};
use serde::Deserialize;
use serde_json::json;

use crate::body;
use crate::cluster_state::ClusterState;
use crate::controller_net::{ClientError, JoinReply, JoinRequest, ProposeReply, FORWARDED_HEADER};
use crate::error::{json_response, Error, Result};
use crate::state::AppState;

/// The cluster state, or 503 on a node that runs without a controller.
fn cluster_of(state: &AppState) -> Result<&ClusterState> {
    state
        .cluster
        .as_deref()
        .ok_or_else(|| Error::Unavailable("this node runs without a controller".to_owned()))
}

/// A controller error as the API answers it.
pub fn controller_error(error: kv_controller::Error) -> Error {
    use kv_controller::Error as E;
    match error {
        E::NotLeader {
            leader_id,
            leader_url,
        } => Error::NotController {
            leader_id,
            leader_url,
        },
        E::ClusterMismatch { .. }
        | E::Rejected(_)
        | E::InvalidOptions(_)
        | E::NoTransferTarget
        | E::TransferTargetDown { .. }
        | E::AlreadyInitialized => Error::ClusterConflict(error.to_string()),
        E::Raft(_) => Error::Unavailable(error.to_string()),
        E::Io { .. } | E::Log(_) | E::Corrupt { .. } | E::NodeIdMismatch { .. } => {
            Error::Internal(error.to_string())
        }
    }
}

/// A failed call to the active controller as the API answers it.
fn client_error(error: ClientError) -> Error {
    match error {
        ClientError::NoController(detail) => Error::Unavailable(format!(
            "no active controller answered (an election may be in progress): {detail}"
        )),
        ClientError::Refused { detail, .. } => Error::ClusterConflict(detail),
        ClientError::Local(detail) => Error::ClusterConflict(detail),
    }
}

fn json_ok(value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    json_response(
        StatusCode::OK,
        serde_json::to_vec(value).expect("answers always serialize"),
    )
}

/// The controller endpoints other nodes call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControllerEndpoint {
    /// `POST /controller/raft`: a Raft message from a peer controller.
    Raft,
    /// `POST /controller/heartbeat`: a data node's heartbeat; only the active controller
    /// answers.
    Heartbeat,
    /// `POST /controller/propose`: a command for the active controller to propose; the answer
    /// is a [`ProposeReply`] (a refusal by the rules is a `200` with `"rejected"` set).
    Propose,
    /// `POST /controller/join`: a node asks to join (see [`admit`]).
    Join,
    /// `POST /controller/campaign`: a stopping Raft leader asks this member to stand for
    /// election at once (`{"cluster_id": …}`, its own cluster's).
    Campaign,
}

/// Answers a controller endpoint: the JSON body in, this node's controller's JSON answer out
/// (`421` naming the active controller where only it may answer).
pub async fn controller_endpoint<B>(
    state: &AppState,
    parts: &Parts,
    body: B,
    endpoint: ControllerEndpoint,
) -> Result<Response<Full<Bytes>>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let controller = cluster_of(state)?.controller();
    let bytes = body::read_body(body, &parts.headers, &state.options).await?;
    match endpoint {
        ControllerEndpoint::Raft => {
            let message: RaftMessage = parse_json(&bytes)?;
            Ok(json_ok(&controller.handle_raft(message).await))
        }
        ControllerEndpoint::Heartbeat => {
            let request: HeartbeatRequest = parse_json(&bytes)?;
            let reply = controller
                .heartbeat(request)
                .await
                .map_err(controller_error)?;
            Ok(json_ok(&reply))
        }
        ControllerEndpoint::Propose => {
            let command: Command = parse_json(&bytes)?;
            let result = controller
                .propose(command)
                .await
                .map_err(controller_error)?;
            Ok(json_ok(&ProposeReply::from(result)))
        }
        ControllerEndpoint::Join => {
            let request: JoinRequest = parse_json(&bytes)?;
            let reply = admit(controller, &request)
                .await
                .map_err(|error| match error {
                    AdmitError::Controller(error) => controller_error(error),
                    AdmitError::Refused(detail) => Error::ClusterConflict(detail),
                    AdmitError::NotReady(detail) => Error::Unavailable(detail),
                })?;
            Ok(json_ok(&reply))
        }
        ControllerEndpoint::Campaign => {
            let request: CampaignRequest = parse_json(&bytes)?;
            let cluster_id = controller.meta().cluster_id;
            if request.cluster_id != cluster_id {
                return Err(Error::ClusterConflict(format!(
                    "asked to stand for election in cluster {:016x}; this node is in cluster \
                     {cluster_id:016x}",
                    request.cluster_id
                )));
            }
            controller.campaign().await.map_err(controller_error)?;
            Ok(json_ok(&json!({"status": "ok"})))
        }
    }
}

/// The body of `POST /controller/campaign`.
#[derive(Debug, serde::Serialize, Deserialize)]
pub struct CampaignRequest {
    /// The asking node's cluster.
    pub cluster_id: u64,
}

/// Asks the member at `url` to stand for election at once (`POST /controller/campaign`);
/// `Err` says why it did not answer yes.
pub async fn ask_to_campaign(cluster: &ClusterState, url: &str) -> std::result::Result<(), String> {
    let request = CampaignRequest {
        cluster_id: cluster.controller().meta().cluster_id,
    };
    let answer = cluster
        .client()
        .peers()
        .send(
            http::Method::POST,
            url,
            crate::controller_net::paths::CAMPAIGN,
            Some(Bytes::from(crate::peers::json_bytes(&request))),
            CAMPAIGN_TIMEOUT,
            None,
        )
        .await
        .map_err(|error| error.to_string())?;
    if answer.status.is_success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        ))
    }
}

/// How long [`ask_to_campaign`] waits for the answer.
const CAMPAIGN_TIMEOUT: Duration = Duration::from_secs(1);

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|error| Error::MalformedJson(error.to_string()))
}

/// Why [`admit`] did not admit a node.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    /// The controller failed or is not the active one.
    #[error(transparent)]
    Controller(#[from] kv_controller::Error),
    /// The cluster refuses this node (another cluster, an id taken at another URL).
    #[error("{0}")]
    Refused(String),
    /// The cluster is not initialized yet.
    #[error("{0}")]
    NotReady(String),
}

/// Admits node `request.id` at `request.url` on the active controller `controller`: a member
/// (and a learner of the controller quorum; promoted to voter once caught up). A retried join
/// is harmless. A URL another member holds is refused (the controller's messages go by URL).
/// An id already taken at another URL is refused, unless the node says it holds
/// this cluster's controller state (`has_state`: its address changed), which moves the
/// member's URL instead. A node of another cluster is refused.
pub async fn admit(
    controller: &Controller,
    request: &JoinRequest,
) -> std::result::Result<JoinReply, AdmitError> {
    let leader_id = controller.raft_leader();
    if leader_id != Some(controller.node_id()) {
        return Err(AdmitError::Controller(kv_controller::Error::NotLeader {
            leader_id,
            leader_url: leader_id.and_then(|id| controller.meta().url_of(id).map(str::to_owned)),
        }));
    }
    let ours = controller.cluster_id();
    if !controller.meta().is_bootstrapped() {
        return Err(AdmitError::NotReady(
            "the cluster is not initialized yet".to_owned(),
        ));
    }
    if request.cluster_id != 0 && request.cluster_id != ours {
        return Err(AdmitError::Refused(format!(
            "node {} belongs to cluster {:016x}; this is cluster {ours:016x}",
            request.id, request.cluster_id
        )));
    }
    refuse_a_member_that_lost_its_state(controller, request)?;
    let meta = match controller.add_member(request.id, &request.url).await {
        Ok(meta) => meta,
        Err(kv_controller::Error::Rejected(Rejection::MemberExists { url, .. }))
            if request.has_state && request.cluster_id == ours =>
        {
            tracing::info!(id = request.id, old = %url, new = %request.url, "a member's URL changed");
            controller.update_url(request.id, &request.url).await?
        }
        Err(kv_controller::Error::Rejected(Rejection::UrlTaken { url, id })) => {
            return Err(AdmitError::Refused(format!(
                "node {} cannot join at {url}: that is node {id}'s URL. Start it at another \
                 address, or remove node {id} first (DELETE /admin/members/{id})",
                request.id
            )));
        }
        Err(kv_controller::Error::Rejected(Rejection::MemberExists { url, .. })) => {
            return Err(AdmitError::Refused(format!(
                "node {} is already a member, at {url}: start it with that URL, or remove it \
                 first (DELETE /admin/members/{})",
                request.id, request.id
            )));
        }
        Err(error) => return Err(error.into()),
    };
    Ok(JoinReply {
        cluster_id: ours,
        meta,
    })
}

/// A join without controller state from a member the controller quorum has already counted
/// on — a voter, or a node it has replicated its log to — comes from a node that lost that
/// state (a new disk, a deleted data directory): it must not pass for a retried join. Before,
/// it did (same id, same URL): the empty node was a voter free to vote twice in a term, and
/// the active controller's openraft core panicked on its log going back. A member that was
/// admitted but never reached (its join's answer lost) joins again.
fn refuse_a_member_that_lost_its_state(
    controller: &Controller,
    request: &JoinRequest,
) -> std::result::Result<(), AdmitError> {
    if request.has_state {
        return Ok(());
    }
    // At another URL the join is refused anyway (an id taken).
    let Some(member) = controller.meta().members.get(&request.id).cloned() else {
        return Ok(());
    };
    if member.url != request.url {
        return Ok(());
    }
    let replicated = controller
        .raft()
        .metrics()
        .borrow()
        .replication
        .as_ref()
        .and_then(|replication| replication.get(&request.id).cloned())
        .flatten()
        .is_some();
    if !member.voter && !replicated {
        return Ok(());
    }
    Err(AdmitError::Refused(format!(
        "node {id} is a member ({role} of the controller quorum) but comes with no controller \
         state: it lost its data directory. Remove it first (DELETE /admin/members/{id} on a \
         running node), then start it again: it joins as a new member and copies the leader's \
         data",
        id = request.id,
        role = if member.voter { "a voter" } else { "a learner" },
    )))
}

/// The body of `POST /admin/transfer-leader`, when there is one: `to` is then required (a
/// `null` or missing `to` is a 400, not "any node": that is what no body asks).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferBody {
    to: NodeId,
}

/// `POST /admin/transfer-leader` (body `{"to": id}`, optional: default the most caught-up
/// live ISR member): moves the data leadership with no loss of acknowledged writes, and
/// answers once the new leader is named (or the transfer was cancelled).
pub async fn admin_transfer_leader<B>(
    state: &AppState,
    parts: &Parts,
    body: B,
) -> Result<Response<Full<Bytes>>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let cluster = cluster_of(state)?;
    let bytes = body::read_body(body, &parts.headers, &state.options).await?;
    let to = if bytes.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        Some(parse_json::<TransferBody>(&bytes)?.to)
    };
    // Forwarded, the answer comes once the transfer is done: up to its timeout and margin
    // (before, the forward gave up after the controller request timeout, 500 ms, and a
    // transfer that took longer, done or cancelled, was answered "no active controller
    // answered").
    let answer_within = cluster.timing().transfer_timeout + TRANSFER_ANSWER_MARGIN;
    if !cluster.client().is_active_here() {
        return forward(cluster, parts, Some(bytes), answer_within).await;
    }
    let controller = cluster.controller();
    let meta = match controller.transfer_leader(to).await {
        Err(kv_controller::Error::NotLeader { .. }) => {
            return forward(cluster, parts, Some(bytes), answer_within).await
        }
        other => other.map_err(controller_error)?,
    };
    let (to, epoch) = match meta.transfer {
        Some(transfer) => (transfer.to, transfer.leader_epoch),
        None => return Err(Error::Unavailable("the transfer ended at once".to_owned())),
    };
    let deadline = cluster.timing().transfer_timeout + TRANSFER_ANSWER_MARGIN;
    let done = wait_for_meta(controller, deadline, |meta| {
        meta.leader_epoch > epoch || meta.transfer.is_none()
    })
    .await;
    match done {
        Some(meta) if meta.data_leader == Some(to) && meta.leader_epoch > epoch => {
            Ok(json_ok(&json!({
                "status": "ok",
                "leader": to,
                "leader_url": meta.url_of(to),
                "epoch": meta.leader_epoch,
            })))
        }
        Some(meta) if meta.leader_epoch > epoch => Err(Error::Unavailable(format!(
            "the leadership moved elsewhere meanwhile (node {:?}, epoch {})",
            meta.data_leader, meta.leader_epoch
        ))),
        Some(_) => Err(Error::Unavailable(format!(
            "the transfer to node {to} was cancelled: the leader could not hand over in time"
        ))),
        None => Err(Error::Unavailable(format!(
            "the transfer to node {to} did not complete within {} ms",
            deadline.as_millis()
        ))),
    }
}

/// How much longer than the transfer timeout `POST /admin/transfer-leader` waits for the
/// outcome (the active controller cancels a transfer at the timeout).
const TRANSFER_ANSWER_MARGIN: Duration = Duration::from_secs(2);

/// `DELETE /admin/members/{id}`: removes a node from the cluster (refused for the data
/// leader: transfer first).
pub async fn admin_remove_member(
    state: &AppState,
    parts: &Parts,
    id: &str,
) -> Result<Response<Full<Bytes>>> {
    let cluster = cluster_of(state)?;
    let id: NodeId = id
        .parse()
        .map_err(|_| Error::InvalidPath(format!("node id {id:?} is not a number")))?;
    if !cluster.client().is_active_here() {
        return forward(cluster, parts, None, Duration::ZERO).await;
    }
    let meta = match cluster.controller().remove_member(id).await {
        Err(kv_controller::Error::NotLeader { .. }) => {
            return forward(cluster, parts, None, Duration::ZERO).await
        }
        other => other.map_err(controller_error)?,
    };
    Ok(json_ok(&json!({
        "status": "ok",
        "removed": id,
        "members": meta.members.keys().collect::<Vec<_>>(),
    })))
}

/// Sends an admin call on to the active controller and answers what it answered. A call that
/// was forwarded to this node already is answered `421` instead (no forwarding loops).
async fn forward(
    cluster: &ClusterState,
    parts: &Parts,
    body: Option<Bytes>,
    answer_within: Duration,
) -> Result<Response<Full<Bytes>>> {
    if parts.headers.contains_key(FORWARDED_HEADER) {
        let metrics = cluster.controller().raft().metrics().borrow().clone();
        let leader_id = metrics.current_leader;
        return Err(Error::NotController {
            leader_id,
            leader_url: leader_id
                .and_then(|id| cluster.controller().meta().url_of(id).map(str::to_owned)),
        });
    }
    let path = parts
        .uri
        .path_and_query()
        .map_or(parts.uri.path(), |path_and_query| path_and_query.as_str());
    let answer = cluster
        .client()
        .forward(parts.method.clone(), path, body, answer_within)
        .await
        .map_err(client_error)?;
    Ok(json_response(answer.status, answer.body.to_vec()))
}

/// Waits up to `timeout` for this node's applied metadata to satisfy `done`.
async fn wait_for_meta(
    controller: &Controller,
    timeout: Duration,
    done: impl Fn(&ClusterMeta) -> bool,
) -> Option<ClusterMeta> {
    let mut applied = controller.subscribe();
    let waited = tokio::time::timeout(timeout, applied.wait_for(|meta| done(meta))).await;
    match waited {
        Ok(Ok(meta)) => Some(meta.clone()),
        _ => None,
    }
}

/// `GET /cluster_status`: the node's replication status, and with a controller its id, the
/// controller (term, Raft leader, voters, learners, sessions on the active one) and the
/// newest metadata it knows (data leader, epoch, ISR, members, write quorum).
pub fn cluster_status(state: &AppState) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_value(state.node.cluster_status()).expect("serializes");
    if let (Some(cluster), Some(fields)) = (state.cluster.as_deref(), body.as_object_mut()) {
        let meta = cluster.newest_meta();
        fields.insert("node_id".into(), json!(cluster.node_id()));
        fields.insert("url".into(), json!(cluster.url()));
        fields.insert("data_leader".into(), json!(meta.data_leader));
        fields.insert("data_leader_url".into(), json!(meta.leader_url()));
        fields.insert("leader_epoch".into(), json!(meta.leader_epoch));
        fields.insert("isr".into(), json!(meta.isr));
        fields.insert(
            "members".into(),
            json!(meta.members.values().collect::<Vec<_>>()),
        );
        fields.insert("cluster_write_quorum".into(), json!(meta.write_quorum));
        fields.insert("transfer".into(), json!(meta.transfer));
        fields.insert("meta_version".into(), json!(meta.version));
        fields.insert("lease_valid".into(), json!(state.node.linearizable_reads()));
        fields.insert("controller".into(), json!(cluster.controller().status()));
    }
    json_response(
        StatusCode::OK,
        serde_json::to_vec(&body).expect("serializes"),
    )
}
