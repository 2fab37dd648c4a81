//! The cluster side of the API: the controller endpoints other nodes call
//! (`POST /controller/raft|heartbeat|propose|join`: a node that is not the active controller
//! answers `421` naming the one that is), the admin endpoints (`POST /admin/transfer-leader`,
//! `DELETE /admin/members/{id}`: on any node, forwarded to the active controller), and what
//! `/cluster_status`, `/health` and reads need to know of the cluster ([`ClusterState`]).

use std::error::Error as StdError;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::body::Body;
use kv_controller::{
    ClusterMeta, Command, Controller, HeartbeatRequest, NodeId, RaftMessage, Rejection, Timing,
};
use kv_replication::{ClusterView, LeaderRef};
use serde::Deserialize;
use serde_json::json;

use crate::body;
use crate::controller_net::{ClientError, ControllerClient, JoinReply, JoinRequest, ProposeReply};
use crate::error::{json_response, Error, Result};
use crate::percent::query_parameter;
use crate::state::{AppState, NodeRole};

/// The header a node puts on the requests it sends its peers: a forwarded admin call that
/// lands on a node that is not the active controller is answered `421`, never forwarded again.
pub const FORWARDED_HEADER: &str = "x-kvd-forwarded";

/// What a node of a controlled cluster knows beyond its data: who it is, its controller and
/// the way to the active one, the metadata its data plane follows, and whether it is handing
/// its leadership over.
#[derive(Debug)]
pub struct ClusterState {
    node_id: NodeId,
    url: String,
    client: ControllerClient,
    timing: Timing,
    lag_limit: Duration,
    learned: Mutex<Learned>,
}

#[derive(Debug, Default)]
struct Learned {
    /// The newest metadata applied to the data plane.
    view: Option<ClusterMeta>,
    /// A planned transfer away from this leader is under way.
    handing_over: bool,
}

impl ClusterState {
    /// The cluster state of node `node_id`, reachable at `url`; a follower cut off from its
    /// leader for longer than `lag_limit` reports itself unhealthy.
    pub fn new(
        node_id: NodeId,
        url: String,
        client: ControllerClient,
        timing: Timing,
        lag_limit: Duration,
    ) -> ClusterState {
        ClusterState {
            node_id,
            url,
            client,
            timing,
            lag_limit,
            learned: Mutex::new(Learned::default()),
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

    /// How long a follower may go without hearing its leader and still call itself healthy.
    pub fn lag_limit(&self) -> Duration {
        self.lag_limit
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
        self.learned().view = Some(meta.clone());
    }

    /// The view the data plane follows, if it took one yet.
    pub fn view(&self) -> Option<ClusterMeta> {
        self.learned().view.clone()
    }

    /// Marks this leader as handing its leadership over (a planned transfer): it answers no
    /// read as linearizable until that ends, since the new leader may take writes before this
    /// node's lease runs out.
    pub fn set_handing_over(&self, handing_over: bool) {
        self.learned().handing_over = handing_over;
    }

    /// Whether a planned transfer away from this leader is under way.
    pub fn handing_over(&self) -> bool {
        self.learned().handing_over
    }

    fn learned(&self) -> MutexGuard<'_, Learned> {
        self.learned
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
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
    }
}

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
    }
}

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
/// is harmless. An id already taken at another URL is refused, unless the node says it holds
/// this cluster's controller state (`has_state`: its address changed), which moves the
/// member's URL instead. A node of another cluster is refused.
pub async fn admit(
    controller: &Controller,
    request: &JoinRequest,
) -> std::result::Result<JoinReply, AdmitError> {
    let leader_id = controller.raft().metrics().borrow().current_leader;
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
    let meta = match controller.add_member(request.id, &request.url).await {
        Ok(meta) => meta,
        Err(kv_controller::Error::Rejected(Rejection::MemberExists { url, .. }))
            if request.has_state && request.cluster_id == ours =>
        {
            tracing::info!(id = request.id, old = %url, new = %request.url, "a member's URL changed");
            controller.update_url(request.id, &request.url).await?
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

/// The body of `POST /admin/transfer-leader` (optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferBody {
    to: Option<NodeId>,
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
    let request: TransferBody = if bytes.iter().all(u8::is_ascii_whitespace) {
        TransferBody::default()
    } else {
        parse_json(&bytes)?
    };
    if !cluster.client().is_active_here() {
        return forward(cluster, parts, Some(bytes)).await;
    }
    let controller = cluster.controller();
    let meta = match controller.transfer_leader(request.to).await {
        Err(kv_controller::Error::NotLeader { .. }) => {
            return forward(cluster, parts, Some(bytes)).await
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
        .map_err(|_| Error::InvalidQuery(format!("node id {id:?} is not a number")))?;
    if !cluster.client().is_active_here() {
        return forward(cluster, parts, None).await;
    }
    let meta = match cluster.controller().remove_member(id).await {
        Err(kv_controller::Error::NotLeader { .. }) => return forward(cluster, parts, None).await,
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
        .forward(parts.method.clone(), path, body)
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
/// metadata (data leader, epoch, ISR, members, write quorum).
pub fn cluster_status(state: &AppState) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_value(state.node.cluster_status()).expect("serializes");
    if let (Some(cluster), Some(fields)) = (state.cluster.as_deref(), body.as_object_mut()) {
        let meta = cluster.controller().meta();
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

/// Why this node is not healthy as a member of its cluster, if it is not: a follower that
/// has not heard its leader for longer than the lag limit (its reads may be that stale), or
/// a node that knows no leader.
pub fn health_problem(state: &AppState) -> Option<String> {
    let cluster = state.cluster.as_deref()?;
    let Some(view) = cluster.view() else {
        return Some("this node has not learned the cluster's metadata yet".to_owned());
    };
    let Some(leader) = view.data_leader else {
        return Some("the cluster has no leader right now (an election is due)".to_owned());
    };
    match state.role() {
        NodeRole::Leader => None,
        NodeRole::NoLeader => Some(format!(
            "this node follows no leader yet (the cluster names node {leader})"
        )),
        NodeRole::Follower { .. } => {
            let limit = state.node.lag_limit();
            match state.node.leader_contact_age() {
                None => Some(format!(
                    "this follower has not heard from its leader (node {leader}) yet"
                )),
                Some(age) if age > limit => Some(format!(
                    "this follower has not heard from its leader (node {leader}) for {} ms \
                     (lag limit {} ms): its reads may be that stale",
                    age.as_millis(),
                    limit.as_millis()
                )),
                Some(_) => None,
            }
        }
    }
}

/// Longest `max_staleness_ms` a read may give.
pub const MAX_STALENESS_MS_MAX: u64 = 24 * 3600 * 1000;

/// Checks that this node may answer a read as asked, before it reads:
///
/// - `?linearizable=true` — only the leader answers, while its lease holds (a follower
///   answers `307` to the leader);
/// - `?max_staleness_ms=N` — a follower answers only if it heard its leader within the last
///   N ms and held what it said then; else `503`;
/// - no option — a follower answers from what it has (as stale as `/cluster_status` says);
///   the leader answers only while its lease holds (a deposed leader answers `307` to the new
///   one, or `503` while none is known): the leader's reads are linearizable.
pub fn check_read(state: &AppState, parts: &Parts) -> Result<()> {
    let query = parts.uri.query().unwrap_or_default();
    let linearizable = match query_parameter(query, "linearizable")? {
        None => false,
        Some(text) => match &text[..] {
            b"true" | b"1" => true,
            b"false" | b"0" => false,
            _ => {
                return Err(Error::InvalidQuery(
                    "linearizable must be true or false".to_owned(),
                ))
            }
        },
    };
    let max_staleness_ms =
        crate::handlers::number_parameter(query, "max_staleness_ms", MAX_STALENESS_MS_MAX)?;
    let Some(cluster) = state.cluster.as_deref() else {
        return Ok(());
    };
    let role = state.role();
    if role == NodeRole::Leader {
        if !cluster.handing_over() && state.node.linearizable_reads() {
            return Ok(());
        }
        // Not sure it still leads (a lease that ran out, a transfer under way, a no-op not yet
        // committed): the leader the view names, if another, answers.
        return match cluster
            .view()
            .and_then(|view| view.leader_url().map(str::to_owned))
        {
            Some(url) if url != cluster.url() => Err(crate::handlers::redirect_to(&url, parts)),
            _ => Err(Error::Unavailable(
                "this node cannot vouch that it still leads (its lease ran out, or it is \
                 handing over): retry"
                    .to_owned(),
            )),
        };
    }
    if linearizable {
        return crate::handlers::require_leader(state, parts);
    }
    let Some(max_ms) = max_staleness_ms else {
        return Ok(());
    };
    match state.node.staleness() {
        Some(staleness) if staleness.as_millis() <= u128::from(max_ms) => Ok(()),
        staleness => Err(Error::Unavailable(format!(
            "this node cannot vouch for a staleness of at most {max_ms} ms (it may be {}): \
             read from the leader",
            staleness.map_or("unbounded".to_owned(), |staleness| format!(
                "{} ms",
                staleness.as_millis()
            ))
        ))),
    }
}
