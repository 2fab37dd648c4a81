//! The replication stream over loopback (`GET /replication/stream`, kv-http's `stream.rs`),
//! with the follower's side through `HttpTransport::open_stream`: pushes of written entries in
//! order, acknowledgements that the leader records, a refused opening answered once and
//! closed, and an upgrade refused without its headers.

use std::net::SocketAddr;
use std::time::Duration;

use http::{Method, StatusCode};
use kv_http::{HttpOptions, HttpTransport, NodeRole};
use kv_replication::{check_frames, Acks, FetchRequest, FetchResponse, StreamLink, Transport};
use kv_store::Op;
use tokio::sync::oneshot;

use crate::support::{call_with_headers, node_with, Node};

const DEADLINE: Duration = Duration::from_secs(10);

struct Served {
    address: SocketAddr,
    node: Node,
    _stop: oneshot::Sender<()>,
}

async fn serve_leader() -> Served {
    let node = node_with(HttpOptions::default(), NodeRole::Leader);
    let listener = kv_http::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(kv_http::serve(listener, node.state.clone(), async {
        let _ = stopped.await;
    }));
    Served {
        address,
        node,
        _stop: stop,
    }
}

fn opening(next_id: u64, last_epoch: u64) -> FetchRequest {
    FetchRequest {
        cluster_id: 0,
        node_id: 7,
        leader_epoch: 0,
        next_id,
        last_epoch,
        durable_id: next_id - 1,
        commit_id: 0,
        bytes_max: 1 << 20,
        wait_ms: 200,
    }
}

async fn open(served: &Served, opening: &FetchRequest) -> StreamLink {
    let transport = HttpTransport::new(&format!("http://{}", served.address)).expect("url");
    transport
        .open_stream(opening, DEADLINE)
        .await
        .expect("opened")
        .expect("the leader offers streams")
}

async fn next_push(link: &mut StreamLink) -> Option<(u64, FetchResponse)> {
    tokio::time::timeout(DEADLINE, link.from_leader.recv())
        .await
        .expect("a push within the deadline")
        .map(|message| message.expect("a good push"))
}

fn set(index: u64) -> Op {
    Op::Set {
        key: format!("k{index}").into_bytes(),
        value: kv_store::Value::json(format!("{index}").into_bytes()),
    }
}

/// A new follower's stream gets every entry the leader writes, in order and contiguous, with
/// pushes echoing its latest message; its acknowledgement shows on the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_pushes_every_write_in_order_and_records_acknowledgements() {
    let served = serve_leader().await;
    let node = served.node.state.node.clone();
    let mut link = open(&served, &opening(1, 0)).await;
    let mut next_id = 1;
    let mut cluster_id = 0;
    let mut epoch = 0;
    let writer = tokio::spawn(async move {
        for index in 0..200 {
            node.write(set(index), Acks::Leader).await.expect("write");
        }
    });
    while next_id <= 200 {
        let (echo, push) = next_push(&mut link).await.expect("the stream stays open");
        assert_eq!(echo, 1, "only the opening was sent");
        let FetchResponse::Entries {
            frames,
            cluster_id: leader_cluster,
            leader_epoch,
            ..
        } = push
        else {
            panic!("expected entries, got {push:?}");
        };
        cluster_id = leader_cluster;
        epoch = leader_epoch;
        if !frames.is_empty() {
            next_id = check_frames(&frames, next_id).expect("contiguous, checked frames") + 1;
        }
    }
    writer.await.expect("writer");
    let ack = FetchRequest {
        cluster_id,
        next_id,
        last_epoch: epoch,
        durable_id: next_id - 1,
        ..opening(1, 0)
    };
    assert!(link.to_leader.send(2, &ack), "send the ack");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let status = served.node.state.node.cluster_status();
        let held = status
            .followers
            .unwrap_or_default()
            .iter()
            .any(|follower| follower.node_id == 7 && follower.durable_id == next_id - 1);
        if held {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the leader never recorded the acknowledgement"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A push made after the acknowledgement (a heartbeat at the latest) echoes it; pushes
    // already on their way still echo the opening (the last write's new commit id comes in a
    // push of its own once the leader's fsync is done, its frames having been pushed before).
    loop {
        let (echo, _) = next_push(&mut link).await.expect("a heartbeat");
        if echo == 2 {
            break;
        }
        assert_eq!(echo, 1, "an echo of a message never sent");
    }
    let streams = served.node.state.node.cluster_status().streams;
    assert_eq!(streams.open, 1, "{streams:?}");
    assert!(streams.pushes >= 2 && streams.acks == 1, "{streams:?}");
    drop(link);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while served.node.state.node.cluster_status().streams.open != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stream outlived its follower"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An opening the leader refuses (a log that parts from its own) gets that one answer, and
/// the stream closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_opening_gets_one_answer_then_the_stream_closes() {
    let served = serve_leader().await;
    served
        .node
        .state
        .node
        .write(set(1), Acks::Leader)
        .await
        .expect("write");
    let cluster_id = u64::from_str_radix(&served.node.state.node.cluster_status().cluster_id, 16)
        .expect("hex cluster id");
    let diverged = FetchRequest {
        cluster_id,
        ..opening(3, 9)
    };
    let mut link = open(&served, &diverged).await;
    match next_push(&mut link).await {
        Some((1, FetchResponse::Diverged { truncate_after, .. })) => {
            assert!(truncate_after < 2, "{truncate_after}");
        }
        other => panic!("expected a cut, got {other:?}"),
    }
    assert!(next_push(&mut link).await.is_none(), "the stream closes");
}

/// Without `Connection: upgrade` and the protocol's name the route refuses, and says why.
#[tokio::test]
async fn a_stream_without_its_upgrade_headers_is_refused() {
    let node = node_with(HttpOptions::default(), NodeRole::Leader);
    let answer = call_with_headers(&node, Method::GET, "/replication/stream", &[], "").await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(answer.detail().contains("Upgrade"), "{}", answer.detail());
    let answer = call_with_headers(
        &node,
        Method::GET,
        "/replication/stream",
        &[("connection", "upgrade"), ("upgrade", "websocket")],
        "",
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
}

/// A follower's acknowledgement of a durable batch goes out at once, not after its next
/// `fdatasync`. The leader (write quorum 2) takes entry A, then B while the follower — every
/// fsync of its taking 400 ms — syncs A. The follower's session appends B right after A's
/// fsync and syncs it inside its next poll. The acknowledgement of A, handed to a writer task,
/// waited behind that fsync in the worker's LIFO slot, which no other tokio worker steals: the
/// leader heard of A only once B was durable on the follower too, and A's write took two
/// follower fsyncs. Written on the session's own task, it reaches the leader while B syncs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followers_acknowledgement_goes_out_before_its_next_fsync() {
    const FSYNC: Duration = Duration::from_millis(400);
    let leader_dir = tempfile::tempdir().expect("temp dir");
    let (store, _) = kv_store::Store::open(
        leader_dir.path().join("wal"),
        kv_store::StoreOptions::default(),
    )
    .expect("leader store");
    let mut options = kv_replication::NodeOptions::default();
    options.leader.write_quorum = 2;
    options.acks_timeout = DEADLINE;
    let leader = std::sync::Arc::new(
        kv_replication::Node::open_leader(std::sync::Arc::new(store), leader_dir.path(), options)
            .expect("leader"),
    );
    let state = std::sync::Arc::new(kv_http::AppState::new(
        leader.clone(),
        HttpOptions::default(),
    ));
    let listener = kv_http::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let (_stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(kv_http::serve(listener, state, async {
        let _ = stopped.await;
    }));

    let follower_dir = tempfile::tempdir().expect("temp dir");
    let plan = kv_wal::fs::FaultPlan::new();
    let mut store_options = kv_store::StoreOptions::default();
    store_options.wal.file_system = std::sync::Arc::new(kv_wal::fs::FaultyFs::new(
        std::sync::Arc::new(kv_wal::fs::StdFs),
        plan.clone(),
    ));
    let (store, _) = kv_store::Store::open(follower_dir.path().join("wal"), store_options)
        .expect("follower store");
    let follower = std::sync::Arc::new(
        kv_replication::Node::open_follower(
            std::sync::Arc::new(store),
            follower_dir.path(),
            url.clone(),
            kv_replication::NodeOptions::default(),
        )
        .expect("follower"),
    );
    let transport = HttpTransport::new(&url).expect("transport");
    tokio::spawn(
        follower
            .clone()
            .run_follower(transport, std::future::pending::<()>()),
    );
    // Streaming, and caught up: a quorum write is acknowledged.
    let warm = tokio::time::timeout(DEADLINE, leader.write(set(0), Acks::Quorum)).await;
    warm.expect("in time").expect("the first quorum write");

    plan.delay_syncs(FSYNC);
    // Which worker a woken task runs on varies (tokio's LIFO slot is sometimes off): before,
    // one round in three or four was late, so five rounds are run.
    for round in 0..5u64 {
        // A and B take the next two ids.
        let b_id = leader.store().last_id() + 2;
        let started = tokio::time::Instant::now();
        let write_a = tokio::spawn({
            let leader = leader.clone();
            async move {
                let id = leader
                    .write(set(1 + 2 * round), Acks::Quorum)
                    .await
                    .expect("A");
                (id, started.elapsed())
            }
        });
        tokio::time::sleep(FSYNC / 4).await;
        let write_b = tokio::spawn({
            let leader = leader.clone();
            async move {
                leader
                    .write(set(2 + 2 * round), Acks::Quorum)
                    .await
                    .expect("B")
            }
        });
        // When the follower holds B durably, by its own log.
        let b_durable_after = loop {
            let durable = kv_replication::LogView::durable_id(&**follower.store());
            if durable >= b_id {
                break started.elapsed();
            }
            assert!(started.elapsed() < DEADLINE, "the follower never synced B");
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let (_, a_acknowledged_after) = write_a.await.expect("A's task");
        write_b.await.expect("B's task");
        assert!(
            a_acknowledged_after < b_durable_after,
            "round {round}: A was acknowledged {a_acknowledged_after:?} after it was written, \
             only once the follower's next fsync ended ({b_durable_after:?})"
        );
    }
}
