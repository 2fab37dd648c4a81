//! Controllers talking over real HTTP on loopback: a cluster formed by initialize and joins,
//! `421` answers naming the active controller and clients that follow them, admin calls made
//! on any node, `/cluster_status`, and the read and health rules that follow a node's view and
//! lease.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use kv_controller::{
    ApplyResult, BootstrapSpec, ClusterMeta, Command, Controller, ControllerOptions,
    HeartbeatRequest, Position, Timing,
};
use kv_http::{
    AppState, ClientError, ClusterState, ControllerClient, HttpControllerTransport, HttpOptions,
    JoinRequest, PeerClient,
};
use kv_replication::NodeOptions;
use kv_store::{Store, StoreOptions};
use tokio::sync::oneshot;

use crate::support::{self, Node};

const DEADLINE: Duration = Duration::from_secs(20);

/// One node: a store, a controller over HTTP, the server.
struct Member {
    id: u64,
    url: String,
    node: Node,
    cluster: Arc<ClusterState>,
    stop: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<kv_http::Result<()>>,
}

/// No data plane runs here and the tests heartbeat by hand: sessions that never expire within
/// a test (no elections), and a short transfer timeout.
fn timing() -> Timing {
    Timing {
        lease: Duration::from_secs(3000),
        session_timeout: Duration::from_secs(3600),
        transfer_timeout: Duration::from_millis(800),
        ..Timing::default()
    }
}

async fn member(id: u64, seeds: &[&str]) -> Member {
    let dir = tempfile::tempdir().expect("temp dir");
    let (store, _) = Store::open(dir.path().join("wal"), StoreOptions::default()).expect("store");
    let store = Arc::new(store);
    let node = kv_replication::Node::open_controlled(store, dir.path(), id, NodeOptions::default())
        .expect("node");
    let listener = kv_http::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let url = format!("http://{address}");
    let peers = Arc::new(PeerClient::new());
    let mut options = ControllerOptions::new(id, url.clone(), dir.path());
    options.timing = timing();
    let controller = Controller::open(
        options,
        Arc::new(HttpControllerTransport::new(peers.clone())),
    )
    .await
    .expect("controller");
    let seeds = seeds.iter().map(|seed| seed.to_string()).collect();
    // kvd's controller request timeout (`CONTROLLER_REQUEST_TIMEOUT`): shorter than the
    // transfer timeout, as there.
    let client = ControllerClient::new(id, controller, peers, seeds, Duration::from_millis(500));
    let cluster = Arc::new(ClusterState::new(id, url.clone(), client, timing()));
    let state = Arc::new(
        AppState::new(Arc::new(node), HttpOptions::default()).with_cluster(cluster.clone()),
    );
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(kv_http::serve(listener, state.clone(), async {
        let _ = stopped.await;
    }));
    Member {
        id,
        url,
        node: Node { state, _dir: dir },
        cluster,
        stop: Some(stop),
        server,
    }
}

impl Member {
    fn controller(&self) -> &Controller {
        self.cluster.controller()
    }

    fn client(&self) -> &ControllerClient {
        self.cluster.client()
    }

    async fn heartbeat(&self) -> Result<kv_controller::HeartbeatReply, ClientError> {
        let request = HeartbeatRequest {
            cluster_id: self.controller().cluster_id(),
            node: self.id,
            leader_epoch: self.controller().meta().leader_epoch,
            position: Position::default(),
            caught_up: true,
        };
        self.client().heartbeat(&request).await
    }

    async fn http(
        &self,
        method: Method,
        path: &str,
        body: &str,
    ) -> (StatusCode, serde_json::Value) {
        let peers = PeerClient::new();
        let body = (!body.is_empty()).then(|| bytes::Bytes::from(body.to_owned()));
        let answer = peers
            .send(method, &self.url, path, body, DEADLINE, None)
            .await
            .expect("an answer");
        let json = serde_json::from_slice(&answer.body).unwrap_or(serde_json::Value::Null);
        (answer.status, json)
    }

    async fn stop(mut self) {
        let _ = self.stop.take().expect("running").send(());
        let controller = self.controller().clone();
        let _ = self.server.await;
        let _ = controller.shutdown().await;
    }
}

/// Waits until `done` holds for `member`'s applied metadata.
async fn converge(member: &Member, what: &str, done: impl Fn(&ClusterMeta) -> bool) -> ClusterMeta {
    let started = Instant::now();
    loop {
        let meta = member.controller().meta();
        if done(&meta) {
            return meta;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "node {}: not within {DEADLINE:?}: {what}: {meta:?}",
            member.id
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `member` creates cluster 0xfeed, which it leads.
async fn initialized(member: &Member) -> ClusterMeta {
    member
        .controller()
        .initialize(BootstrapSpec {
            cluster_id: 0xfeed,
            epoch_floor: 0,
            write_quorum: 1,
        })
        .await
        .expect("initialize")
}

/// Node 0 alone, initialized, with the controller's view naming it leader taken (no lease
/// yet): the set-up of the read gate's and `/health`'s tests.
async fn leading_member() -> (Member, ClusterMeta) {
    let leader = member(0, &[]).await;
    let meta = initialized(&leader).await;
    leader
        .node
        .state
        .node
        .apply_cluster_view(&kv_http::cluster_view(&meta, 0))
        .expect("view");
    leader.cluster.set_view(&meta);
    (leader, meta)
}

/// `meta`'s next view: node 1 (at an address nobody listens on) leads a new epoch.
fn moved_to_node_1(meta: &ClusterMeta) -> ClusterMeta {
    let mut moved = meta.clone();
    moved.data_leader = Some(1);
    moved.leader_epoch += 1;
    moved.version += 1;
    moved.isr.insert(1);
    moved.members.insert(
        1,
        kv_controller::Member {
            id: 1,
            url: "http://127.0.0.1:9".to_owned(),
            voter: true,
        },
    );
    moved
}

/// `member`'s `/health` answers 503 with a reason containing `reason`.
async fn expect_unhealthy(member: &Member, reason: &str) {
    let (status, body) = member.http(Method::GET, "/health", "").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body["detail"].as_str().unwrap_or_default().contains(reason),
        "{body}"
    );
}

/// Node 0 initializes; 1 joins through 0, 2 through 1 (which is not the active controller:
/// the join follows its 421); every node heartbeats until all three are voters.
async fn three_members() -> Vec<Member> {
    let first = member(0, &[]).await;
    initialized(&first).await;
    let second = member(1, &[&first.url]).await;
    let third = member(2, &[&second.url]).await;
    for joiner in [&second, &third] {
        let reply = joiner
            .client()
            .join(&JoinRequest {
                id: joiner.id,
                url: joiner.url.clone(),
                cluster_id: 0,
                has_state: false,
            })
            .await
            .expect("joined");
        assert_eq!(reply.cluster_id, 0xfeed);
        joiner
            .controller()
            .adopt_cluster_id(reply.cluster_id)
            .expect("adopt");
        // The next node joins through this one: it must know the active controller first.
        converge(joiner, "a member that knows the cluster", |meta| {
            meta.members.contains_key(&joiner.id)
        })
        .await;
    }
    let members = vec![first, second, third];
    let started = Instant::now();
    loop {
        for member in &members {
            let _ = member.heartbeat().await;
        }
        let voters = members[0]
            .controller()
            .meta()
            .members
            .values()
            .filter(|member| member.voter)
            .count();
        if voters == 3 {
            break;
        }
        assert!(started.elapsed() < DEADLINE, "never three voters");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    members
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controllers_form_a_cluster_over_http_and_calls_follow_421_to_the_active_one() {
    let members = three_members().await;
    for member in &members {
        converge(member, "three members", |meta| meta.members.len() == 3).await;
        assert_eq!(member.controller().cluster_id(), 0xfeed);
    }
    // A node that is not the active controller answers 421 naming the one that is.
    let heartbeat = serde_json::json!({
        "cluster_id": 0xfeed, "node": 1, "leader_epoch": 1,
        "position": {"epoch": 0, "id": 0}, "caught_up": true,
    });
    let (status, body) = members[1]
        .http(
            Method::POST,
            "/controller/heartbeat",
            &heartbeat.to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::MISDIRECTED_REQUEST, "{body}");
    assert_eq!(body["leader_id"], 0);
    assert_eq!(body["leader_url"], members[0].url.as_str());
    // The client follows it: a heartbeat and a proposal from node 2 reach node 0.
    let reply = members[2].heartbeat().await.expect("heartbeat");
    assert_eq!(reply.controller, 0);
    assert_eq!(reply.lease_ms, None, "node 2 does not lead the data");
    let lease = members[0].heartbeat().await.expect("heartbeat").lease_ms;
    assert!(lease.is_some(), "the data leader gets a lease");
    let result = members[2]
        .client()
        .propose(&Command::SetWriteQuorum { write_quorum: 2 })
        .await
        .expect("proposed");
    assert!(matches!(result, ApplyResult::Applied { ref meta } if meta.write_quorum == 2));
    // /cluster_status on any node shows the controller and the metadata.
    converge(&members[2], "write quorum 2", |meta| meta.write_quorum == 2).await;
    let (status, body) = members[2].http(Method::GET, "/cluster_status", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["node_id"], 2);
    assert_eq!(body["data_leader"], 0);
    assert_eq!(body["data_leader_url"], members[0].url.as_str());
    assert_eq!(body["leader_epoch"], 1);
    assert_eq!(body["isr"], serde_json::json!([0]));
    assert_eq!(body["members"].as_array().map(Vec::len), Some(3));
    assert_eq!(body["controller"]["raft_leader"], 0);
    assert_eq!(body["controller"]["voters"], serde_json::json!([0, 1, 2]));
    let (_, active) = members[0].http(Method::GET, "/cluster_status", "").await;
    assert_eq!(active["controller"]["active"], true);
    assert_eq!(
        active["controller"]["sessions"].as_array().map(Vec::len),
        Some(3)
    );
    for member in members {
        member.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_are_idempotent_and_refuse_another_cluster_or_a_taken_id() {
    let members = three_members().await;
    let join = |id: u64, url: &str, cluster_id: u64, has_state: bool| JoinRequest {
        id,
        url: url.to_owned(),
        cluster_id,
        has_state,
    };
    // A retried join changes nothing.
    let version = members[0].controller().meta().version;
    let reply = members[1]
        .client()
        .join(&join(2, &members[2].url, 0xfeed, true))
        .await
        .expect("a retried join");
    assert_eq!(reply.meta.version, version);
    // The same member without controller state lost it (a new disk): refused, naming the way
    // out, not taken for a retried join.
    let refused = members[1]
        .client()
        .join(&join(2, &members[2].url, 0, false))
        .await;
    assert!(
        matches!(&refused, Err(ClientError::Refused { status, detail })
            if *status == StatusCode::CONFLICT && detail.contains("DELETE /admin/members/2")),
        "{refused:?}"
    );
    assert_eq!(members[0].controller().meta().version, version);
    // Another cluster's node is refused.
    let refused = members[1]
        .client()
        .join(&join(7, "http://127.0.0.1:9", 0xbad, false))
        .await;
    assert!(
        matches!(&refused, Err(ClientError::Refused { status, detail })
            if *status == StatusCode::CONFLICT && detail.contains("cluster")),
        "{refused:?}"
    );
    // A fresh node cannot take a member's id at another URL…
    let refused = members[2]
        .client()
        .join(&join(1, "http://127.0.0.1:9", 0, false))
        .await;
    assert!(
        matches!(&refused, Err(ClientError::Refused { detail, .. }) if detail.contains("already a member")),
        "{refused:?}"
    );
    // …but a member with the cluster's state moves its URL, in the metadata and the Raft
    // membership alike.
    members[2]
        .client()
        .join(&join(1, "http://127.0.0.1:9", 0xfeed, true))
        .await
        .expect("URL moved");
    let meta = converge(&members[2], "node 1 moved", |meta| {
        meta.url_of(1) == Some("http://127.0.0.1:9")
    })
    .await;
    assert!(meta.members[&1].voter);
    for member in members {
        member.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_on_any_node_reach_the_active_controller() {
    let members = three_members().await;
    // A transfer with no target named goes to the most advanced live ISR member; with none
    // (no data plane runs here: no member is live), the answer says just that — it said
    // "invalid controller options: …" before.
    let (status, body) = members[2]
        .http(Method::POST, "/admin/transfer-leader", "")
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(
        body["detail"], "no live ISR member to transfer the leadership to",
        "{body}"
    );
    let result = members[0]
        .client()
        .propose(&Command::ChangeIsr {
            sender: 0,
            leader_epoch: 1,
            isr: BTreeSet::from([0, 1]),
            expected_version: None,
        })
        .await
        .expect("proposed");
    assert!(matches!(result, ApplyResult::Applied { .. }), "{result:?}");
    converge(&members[1], "node 1 in the ISR", |meta| {
        meta.isr.contains(&1)
    })
    .await;
    // A transfer nobody carries out (no data plane runs here) is cancelled at the timeout and
    // answered 503 saying so — also sent to a node that forwards it to the active controller
    // (before, the forward gave up after 500 ms: "no active controller answered").
    assert!(!members[1].client().is_active_here());
    let (status, body) = members[1]
        .http(Method::POST, "/admin/transfer-leader", r#"{"to": 1}"#)
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("the transfer to node 1 was cancelled"),
        "{body}"
    );
    // Node 2 is not in the ISR: a transfer to it is refused.
    let (status, body) = members[2]
        .http(Method::POST, "/admin/transfer-leader", r#"{"to": 2}"#)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    // A body must name the target: `null` or no `to` is a 400 (they asked for any node,
    // as no body does, before), and nothing moves.
    for body in [
        r#"{"to": "x"}"#,
        r#"{"to": null}"#,
        "{}",
        r#"{"to": 1, "why": 2}"#,
    ] {
        let (status, answer) = members[2]
            .http(Method::POST, "/admin/transfer-leader", body)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
    }
    let meta = members[2].controller().meta();
    assert_eq!((meta.data_leader, meta.transfer), (Some(0), None));
    // Removing the data leader is refused; removing node 2, sent to node 1, works.
    let (status, body) = members[1]
        .http(Method::DELETE, "/admin/members/0", "")
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, body) = members[1]
        .http(Method::DELETE, "/admin/members/2", "")
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["members"], serde_json::json!([0, 1]));
    let meta = converge(&members[1], "node 2 removed", |meta| {
        meta.members.len() == 2
    })
    .await;
    assert!(!meta.members.contains_key(&2));
    let (status, _) = members[1]
        .http(Method::DELETE, "/admin/members/two", "")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    for member in members {
        member.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_health_follow_the_view_and_the_lease() {
    let leader = member(0, &[]).await;
    let meta = initialized(&leader).await;
    let node = &leader.node.state.node;
    // No view taken yet: unhealthy, no writes, no reads (whether it leads, and so what it may
    // serve, comes with the view).
    let (status, body) = leader.http(Method::GET, "/health", "").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let answer = support::put(&leader.node, "/key/k", r#"{"value": 1}"#).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        support::get(&leader.node, "/key/k").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // The view names it the leader, but before its first lease it serves no read: unhealthy
    // too (it answered 200 there before, while every read answered 503).
    node.apply_cluster_view(&kv_http::cluster_view(&meta, 0))
        .expect("view");
    leader.cluster.set_view(&meta);
    expect_unhealthy(&leader, "taking up its leadership").await;
    assert_eq!(
        support::get(&leader.node, "/key/k").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    node.grant_lease(meta.leader_epoch, Instant::now() + Duration::from_secs(60));
    let (status, body) = leader.http(Method::GET, "/health", "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let answer = support::put(&leader.node, "/key/k", r#"{"value": 1}"#).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.detail());
    assert_eq!(
        support::get(&leader.node, "/key/k").await.status,
        StatusCode::OK
    );
    assert_eq!(
        support::get(&leader.node, "/key/k?linearizable=true")
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        support::get(&leader.node, "/key/k?linearizable=maybe")
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    // Handing over (a planned transfer): no more linearizable reads here.
    leader.cluster.set_handing_over(true);
    assert_eq!(
        support::get(&leader.node, "/key/k").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    leader.cluster.set_handing_over(false);
    // A newer view names another leader: this node follows it; its reads may be stale, a
    // linearizable one goes there (307), and it cannot vouch for a staleness bound.
    let moved = moved_to_node_1(&meta);
    assert!(leader.cluster.is_newer_view(&moved));
    node.apply_cluster_view(&kv_http::cluster_view(&moved, 0))
        .expect("view");
    leader.cluster.set_view(&moved);
    assert!(!leader.cluster.is_newer_view(&meta), "views never go back");
    assert_eq!(
        support::get(&leader.node, "/key/k").await.status,
        StatusCode::OK
    );
    let answer = support::get(&leader.node, "/key/k?linearizable=true").await;
    assert_eq!(answer.status, StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(
        answer.header("location"),
        "http://127.0.0.1:9/key/k?linearizable=true"
    );
    let answer = support::get(&leader.node, "/key/k?max_staleness_ms=1000").await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(answer.detail().contains("staleness"), "{}", answer.detail());
    // A follower that never heard its leader: unhealthy.
    expect_unhealthy(&leader, "not heard").await;
    // A view with no leader: writes and linearizable reads answer 503, not a 307 to nowhere.
    let mut leaderless = moved.clone();
    leaderless.data_leader = None;
    leaderless.leader_epoch += 1;
    leaderless.version += 1;
    node.apply_cluster_view(&kv_http::cluster_view(&leaderless, 0))
        .expect("view");
    leader.cluster.set_view(&leaderless);
    let answer = support::put(&leader.node, "/key/k", r#"{"value": 1}"#).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    let answer = support::get(&leader.node, "/key/k?linearizable=true").await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    expect_unhealthy(&leader, "no leader").await;
    leader.stop().await;
}

/// A leader whose lease lapsed — the controller's renewal late, as when a starved CPU delays
/// its heartbeat — waits for the renewal (up to `gate::READ_LEASE_WAIT`) and then answers a
/// read, instead of a `503` at once; with no renewal it answers `503` after the wait, and a
/// newer view naming another leader ends the wait with a `307`, and a leader without a lease
/// for longer than the lag limit does not wait. `/keys` and a key's history read the map too:
/// they follow the same rule (they answered from a lapsed leader's map).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_lease_lapsed_waits_for_its_renewal_before_a_read() {
    let (leader, meta) = leading_member().await;
    let node = leader.node.state.node.clone();
    let short_lease = Duration::from_millis(100);
    node.grant_lease(meta.leader_epoch, Instant::now() + short_lease);
    let answer = support::put(&leader.node, "/key/k", r#"{"value": 1}"#).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.detail());
    tokio::time::sleep(short_lease).await;

    // Renewed 200 ms into the wait: every read answers, none before the renewal.
    for path in ["/key/k", "/keys", "/key/k/history", "/key/k/versions"] {
        let renewer = {
            let node = node.clone();
            let epoch = meta.leader_epoch;
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                node.grant_lease(epoch, Instant::now() + short_lease);
            })
        };
        let started = Instant::now();
        let answer = support::get(&leader.node, path).await;
        let waited = started.elapsed();
        assert_eq!(answer.status, StatusCode::OK, "{path}: {}", answer.detail());
        assert!(
            waited >= Duration::from_millis(150),
            "{path} answered after {waited:?}, before the lease was renewed"
        );
        renewer.await.expect("renewer");
        tokio::time::sleep(short_lease).await;
    }

    // Never renewed: 503 after the wait, and for the other reads of the map too.
    for path in ["/key/k", "/keys"] {
        let started = Instant::now();
        let answer = support::get(&leader.node, path).await;
        let waited = started.elapsed();
        assert_eq!(
            answer.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{path}: {}",
            answer.detail()
        );
        assert!(
            answer.detail().contains("cannot vouch"),
            "{}",
            answer.detail()
        );
        assert!(
            waited >= kv_http::READ_LEASE_WAIT - Duration::from_millis(50)
                && waited < kv_http::READ_LEASE_WAIT * 3,
            "{path} answered 503 after {waited:?}"
        );
    }

    // Without a lease for longer than the lag limit (cut off from the controller), it waits
    // no more: 503 at once, as a write.
    while node
        .leader_without_lease_for()
        .is_none_or(|without| without <= node.lag_limit())
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    let answer = support::get(&leader.node, "/key/k/history").await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() < kv_http::READ_LEASE_WAIT / 2,
        "waited {:?} though cut off for longer than the lag limit",
        started.elapsed()
    );

    node.grant_lease(meta.leader_epoch, Instant::now() + short_lease);
    tokio::time::sleep(short_lease).await;
    // Renewed, lapsed again: a newer view naming another leader while a linearizable read
    // waits: it goes there (307; a read without options would now answer from this
    // follower's map).
    let moved = moved_to_node_1(&meta);
    let mover = {
        let node = node.clone();
        let cluster = leader.cluster.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            // The view first: a read woken by the role change between the two would find the
            // old view naming this node and answer 503 ("taking up its leadership"), a moment
            // the driver's order (role, then view) leaves open; retried, it gets the 307.
            cluster.set_view(&moved);
            node.apply_cluster_view(&kv_http::cluster_view(&moved, 0))
                .expect("view");
        })
    };
    let started = Instant::now();
    let answer = support::get(&leader.node, "/key/k?linearizable=true").await;
    assert_eq!(
        answer.status,
        StatusCode::TEMPORARY_REDIRECT,
        "{}",
        answer.json()
    );
    assert!(
        started.elapsed() < kv_http::READ_LEASE_WAIT,
        "the redirect came only after the whole wait: {:?}",
        started.elapsed()
    );
    mover.await.expect("mover");
    leader.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controllers_elect_a_new_active_one_over_http_when_it_stops() {
    let mut members = three_members().await;
    let first = members.remove(0);
    first.stop().await;
    let started = Instant::now();
    loop {
        let leaders: Vec<Option<u64>> = members
            .iter()
            .map(|member| member.controller().status().raft_leader)
            .collect();
        if leaders
            .iter()
            .all(|leader| leader.is_some_and(|id| id != 0))
            && leaders[0] == leaders[1]
        {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "no new controller leader: {leaders:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for member in members {
        member.stop().await;
    }
}

/// A leader that has held no lease for longer than the lag limit (cut off from the
/// controller, which has likely elected another leader it cannot hear of) is unhealthy, and
/// refuses a write at once. Before, a leader isolated by a partition answered `/health` 200
/// `"role":"leader"` for as long as it lasted, and held every write for the whole acks
/// timeout (5 s) before its 503: a client or load balancer trying it first found the new
/// leader only that much later.
#[tokio::test]
async fn a_leader_without_a_lease_past_the_lag_limit_is_unhealthy_and_refuses_writes_at_once() {
    let (leader, meta) = leading_member().await;
    let node = &leader.node.state.node;
    node.grant_lease(
        meta.leader_epoch,
        Instant::now() + Duration::from_millis(50),
    );
    let answer = support::put(&leader.node, "/key/k", r#"{"value": 1}"#).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.detail());
    let (status, body) = leader.http(Method::GET, "/health", "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The lease is not renewed (no heartbeats here): past the lag limit, unhealthy.
    let started = Instant::now();
    let body = loop {
        let (status, body) = leader.http(Method::GET, "/health", "").await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            break body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "still healthy: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        started.elapsed() + Duration::from_millis(50) >= node.lag_limit(),
        "unhealthy before the lag limit"
    );
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("no lease"),
        "{body}"
    );
    let asked = Instant::now();
    let answer = support::put(&leader.node, "/key/k", r#"{"value": 2}"#).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(answer.detail().contains("no lease"), "{}", answer.detail());
    assert!(
        asked.elapsed() < node.acks_timeout(),
        "held the write for the acks timeout: {:?}",
        asked.elapsed()
    );
    // A new lease makes it healthy again.
    node.grant_lease(meta.leader_epoch, Instant::now() + Duration::from_secs(60));
    let (status, body) = leader.http(Method::GET, "/health", "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    leader.stop().await;
}

/// A node whose controller member stopped while the process runs (a fatal error or a panic in
/// openraft's core: helper-20 saw one kill node 0's, which ran on without it) says so: `/health`
/// 503 naming it, and `/cluster_status` shows why. Before, the node answered `/health` 200 and
/// nothing told the operator its controller vote was gone.
#[tokio::test]
async fn a_node_whose_controller_member_stopped_is_unhealthy() {
    let (leader, meta) = leading_member().await;
    leader
        .node
        .state
        .node
        .grant_lease(meta.leader_epoch, Instant::now() + Duration::from_secs(60));
    let (status, body) = leader.http(Method::GET, "/health", "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, body) = leader.http(Method::GET, "/cluster_status", "").await;
    assert_eq!(
        body["controller"]["failure"],
        serde_json::Value::Null,
        "{body}"
    );

    leader
        .controller()
        .raft()
        .shutdown()
        .await
        .expect("the Raft core stops");
    expect_unhealthy(&leader, "controller member is down").await;
    let (_, body) = leader.http(Method::GET, "/cluster_status", "").await;
    assert!(body["controller"]["failure"].as_str().is_some(), "{body}");
    leader.stop().await;
}

/// A write that waits for its quorum (a follower in the ISR that never acknowledges) on a
/// leader whose lease then runs out and is not renewed (cut off from the controller) stops
/// waiting once the leader has been without a lease for the lag limit: a 503 with its id then,
/// not at the acks timeout (helper-20's report: during a partition a write accepted just
/// before it held its client for the whole 5 s).
#[tokio::test]
async fn a_write_waiting_for_its_quorum_stops_once_the_leader_is_without_a_lease_for_the_lag_limit()
{
    let leader = member(0, &[]).await;
    let mut meta = initialized(&leader).await;
    meta.write_quorum = 2;
    meta.isr.insert(1);
    meta.members.insert(
        1,
        kv_controller::Member {
            id: 1,
            url: "http://127.0.0.1:9".to_owned(),
            voter: true,
        },
    );
    let node = &leader.node.state.node;
    node.apply_cluster_view(&kv_http::cluster_view(&meta, 0))
        .expect("view");
    leader.cluster.set_view(&meta);
    node.grant_lease(
        meta.leader_epoch,
        Instant::now() + Duration::from_millis(200),
    );
    let started = Instant::now();
    let answer = support::put(&leader.node, "/key/k", r#"{"value": 1}"#).await;
    let waited = started.elapsed();
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        answer.json()
    );
    assert!(answer.detail().contains("lease"), "{}", answer.detail());
    assert!(
        waited >= node.lag_limit() && waited < node.acks_timeout(),
        "answered after {waited:?} (lag limit {:?}, acks timeout {:?})",
        node.lag_limit(),
        node.acks_timeout()
    );
    leader.stop().await;
}
