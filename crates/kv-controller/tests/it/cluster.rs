//! In-process controller clusters (openraft over `MemoryNetwork`): losing the Raft leader,
//! restarting from disk, power loss of the controller's files, data-leader failover through
//! heartbeats, and refusals (not the leader, another cluster).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_controller::memory::MemoryNetwork;
use kv_controller::{
    BootstrapSpec, ClusterMeta, Command, Controller, ControllerOptions, Error, HeartbeatRequest,
    Lease, Position, Timing,
};
use kv_wal::fs::FileSystem;
use kv_wal::sim::{CrashMode, SimFs};

const DEADLINE: Duration = Duration::from_secs(20);

fn url(id: u64) -> String {
    format!("http://node-{id}")
}

struct Cluster {
    network: MemoryNetwork,
    fs: SimFs,
    nodes: BTreeMap<u64, Controller>,
    timing: Timing,
}

/// Timing for tests that send no data heartbeats: sessions that never expire within a test,
/// so the active controller leaves the data leader alone.
fn quiet() -> Timing {
    Timing {
        lease: Duration::from_secs(3000),
        session_timeout: Duration::from_secs(3600),
        ..Timing::default()
    }
}

impl Cluster {
    fn options(&self, id: u64) -> ControllerOptions {
        let mut options =
            ControllerOptions::new(id, url(id), PathBuf::from(format!("/data/node-{id}")));
        options.file_system = Arc::new(self.fs.clone()) as Arc<dyn FileSystem>;
        options.promote_voters = false;
        options.timing = self.timing;
        options
    }

    async fn open(&mut self, id: u64) -> Controller {
        // A node just shut down may still be releasing its log's lock (tasks winding down).
        let started = Instant::now();
        let controller = loop {
            match Controller::open(self.options(id), self.network.transport(id)).await {
                Ok(controller) => break controller,
                Err(Error::Log(kv_wal::Error::Locked(_))) if started.elapsed() < DEADLINE => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(error) => panic!("opening node {id}: {error}"),
            }
        };
        self.network.register(controller.clone());
        self.nodes.insert(id, controller.clone());
        controller
    }

    /// Node 0 initializes; the others join as learners and are promoted to voters.
    async fn start(size: u64, timing: Timing) -> Cluster {
        let mut cluster = Cluster {
            network: MemoryNetwork::new(),
            fs: SimFs::new(),
            nodes: BTreeMap::new(),
            timing,
        };
        let first = cluster.open(0).await;
        let meta = first
            .initialize(BootstrapSpec {
                cluster_id: 0xabc,
                epoch_floor: 0,
                write_quorum: 1,
            })
            .await
            .unwrap();
        assert_eq!((meta.data_leader, meta.leader_epoch), (Some(0), 1));
        for id in 1..size {
            // As kvd's join does: the cluster id first, then the controller reaches it.
            cluster.open(id).await.adopt_cluster_id(0xabc).unwrap();
            first.add_member(id, &url(id)).await.unwrap();
            first.promote_voter(id).await.unwrap();
        }
        let voters: BTreeSet<u64> = (0..size).collect();
        for node in cluster.nodes.values() {
            node.raft()
                .wait(Some(DEADLINE))
                .voter_ids(voters.clone(), "all voters known")
                .await
                .unwrap();
        }
        cluster
    }

    /// Kills node `id`: unreachable at once, its tasks stopped.
    async fn kill(&mut self, id: u64) {
        self.network.unregister(id);
        let node = self.nodes.remove(&id).unwrap();
        node.shutdown().await.unwrap();
    }

    /// Waits until the live nodes agree on a Raft leader among them; returns it.
    async fn raft_leader(&self) -> Controller {
        let started = Instant::now();
        loop {
            let leaders: BTreeSet<Option<u64>> = self
                .nodes
                .values()
                .map(|node| node.status().raft_leader)
                .collect();
            if let [Some(leader)] = leaders.into_iter().collect::<Vec<_>>()[..] {
                if let Some(node) = self.nodes.get(&leader) {
                    if node.status().raft_state == "Leader" {
                        return node.clone();
                    }
                }
            }
            assert!(
                started.elapsed() < DEADLINE,
                "no controller leader within {DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until every live node has applied metadata satisfying `done`.
    async fn converge(&self, what: &str, done: impl Fn(&ClusterMeta) -> bool) -> ClusterMeta {
        let started = Instant::now();
        loop {
            let metas: Vec<ClusterMeta> = self.nodes.values().map(|node| node.meta()).collect();
            if metas.iter().all(&done) && metas.windows(2).all(|pair| pair[0] == pair[1]) {
                return metas[0].clone();
            }
            assert!(
                started.elapsed() < DEADLINE,
                "not converged within {DEADLINE:?}: {what}: {metas:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn shutdown(self) {
        for (id, node) in self.nodes {
            self.network.unregister(id);
            node.shutdown().await.unwrap();
        }
    }
}

/// Proposes on whichever node is the controller leader, retrying through leader changes.
/// The Raft membership `controller` has applied (voters, learners and their addresses).
fn raft_membership(controller: &Controller) -> openraft::Membership<u64, openraft::BasicNode> {
    controller
        .raft()
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .clone()
}

async fn propose(cluster: &Cluster, command: Command) -> ClusterMeta {
    let started = Instant::now();
    loop {
        let leader = cluster.raft_leader().await;
        match leader.propose(command.clone()).await {
            Ok(result) => return result.into_result().unwrap(),
            Err(Error::NotLeader { .. } | Error::Raft(_)) => {}
            Err(error) => panic!("{command}: {error}"),
        }
        assert!(started.elapsed() < DEADLINE, "{command} never applied");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_controllers_survive_the_loss_of_the_raft_leader_and_a_restart_from_disk() {
    let mut cluster = Cluster::start(3, quiet()).await;
    propose(&cluster, Command::SetWriteQuorum { write_quorum: 2 }).await;
    propose(
        &cluster,
        Command::ChangeIsr {
            sender: 0,
            leader_epoch: 1,
            isr: BTreeSet::from([0, 1, 2]),
            expected_version: None,
        },
    )
    .await;
    let before = cluster.converge("isr", |meta| meta.isr.len() == 3).await;

    // A follower answers with who leads, by id and URL.
    let leader = cluster.raft_leader().await;
    let follower = cluster
        .nodes
        .values()
        .find(|node| node.node_id() != leader.node_id())
        .unwrap()
        .clone();
    match follower
        .propose(Command::SetWriteQuorum { write_quorum: 1 })
        .await
    {
        Err(Error::NotLeader {
            leader_id,
            leader_url,
        }) => {
            assert_eq!(leader_id, Some(leader.node_id()));
            assert_eq!(leader_url, Some(url(leader.node_id())));
        }
        other => panic!("a follower proposed: {other:?}"),
    }

    // Kill the Raft leader: the two others elect one and keep the metadata.
    let term_before = leader.status().term;
    let killed = leader.node_id();
    drop((leader, follower));
    cluster.kill(killed).await;
    let new_leader = cluster.raft_leader().await;
    assert_ne!(new_leader.node_id(), killed);
    assert!(new_leader.status().term > term_before);
    assert_eq!(new_leader.meta(), before);
    drop(new_leader);
    propose(&cluster, Command::SetWriteQuorum { write_quorum: 3 }).await;
    cluster
        .converge("quorum 3", |meta| meta.write_quorum == 3)
        .await;

    // Restart everyone from disk (the killed node too): votes and logs were durable.
    let terms: BTreeMap<u64, u64> = cluster
        .nodes
        .iter()
        .map(|(id, node)| (*id, node.status().term))
        .collect();
    let ids: Vec<u64> = (0..3).collect();
    let nodes = std::mem::take(&mut cluster.nodes);
    for (id, node) in nodes {
        cluster.network.unregister(id);
        node.shutdown().await.unwrap();
    }
    for &id in &ids {
        let node = cluster.open(id).await;
        assert!(node.has_state(), "node {id} forgot it belongs to a cluster");
        assert!(matches!(
            node.initialize(BootstrapSpec {
                cluster_id: 1,
                epoch_floor: 0,
                write_quorum: 1
            })
            .await,
            Err(Error::AlreadyInitialized)
        ));
        if let Some(&term) = terms.get(&id) {
            // The vote was durable: the restarted node starts from its term, not from 0.
            node.raft()
                .wait(Some(DEADLINE))
                .metrics(
                    |metrics| metrics.current_term >= term,
                    "the term survives the restart",
                )
                .await
                .unwrap();
            assert!(node.raft().metrics().borrow().vote.leader_id().term >= term);
        }
    }
    cluster.raft_leader().await;
    let after = cluster
        .converge("restarted", |meta| meta.write_quorum == 3)
        .await;
    assert_eq!(
        (after.isr.clone(), after.leader_epoch, after.cluster_id),
        (before.isr, 1, 0xabc)
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_controllers_keep_working_without_two_of_them_and_a_partitioned_leader_is_replaced() {
    let mut cluster = Cluster::start(5, quiet()).await;
    let leader = cluster.raft_leader().await;
    let old = leader.node_id();
    // Partition the leader away: the majority elects another and commits without it.
    cluster.network.isolate(old, 0..5);
    let started = Instant::now();
    let new_leader = loop {
        let candidate = cluster
            .nodes
            .values()
            .filter(|node| node.node_id() != old)
            .find(|node| node.status().raft_state == "Leader")
            .cloned();
        if let Some(candidate) = candidate {
            break candidate;
        }
        assert!(started.elapsed() < DEADLINE, "the majority elected nobody");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let applied = new_leader
        .propose(Command::SetWriteQuorum { write_quorum: 2 })
        .await
        .unwrap();
    assert_eq!(applied.into_result().unwrap().write_quorum, 2);
    // The isolated old leader cannot commit anything.
    let stale = tokio::time::timeout(
        Duration::from_secs(2),
        leader.propose(Command::SetWriteQuorum { write_quorum: 4 }),
    )
    .await;
    assert!(
        !matches!(stale, Ok(Ok(_))),
        "an isolated leader committed: {stale:?}"
    );
    cluster.network.heal();
    // Two voters die (the new leader among them): three of five still decide.
    let second = cluster
        .nodes
        .keys()
        .copied()
        .find(|&id| id != old && id != new_leader.node_id())
        .unwrap();
    cluster.kill(new_leader.node_id()).await;
    cluster.kill(second).await;
    let meta = propose(&cluster, Command::AddMember { id: 9, url: url(9) }).await;
    assert_eq!(meta.write_quorum, 2, "the majority's commit survived");
    cluster
        .converge("member 9", |meta| meta.members.contains_key(&9))
        .await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_loss_of_every_controller_keeps_everything_committed() {
    let mut cluster = Cluster::start(3, quiet()).await;
    for quorum in [2, 3, 1] {
        propose(
            &cluster,
            Command::SetWriteQuorum {
                write_quorum: quorum,
            },
        )
        .await;
    }
    let before = cluster
        .converge("quorum 1", |meta| meta.write_quorum == 1)
        .await;
    // Power cut: everything not fsynced is gone (or torn), every process dies.
    cluster.fs.crash(CrashMode::TearUnsynced { seed: 11 });
    for id in 0..3 {
        cluster.network.unregister(id);
    }
    let nodes = std::mem::take(&mut cluster.nodes);
    for node in nodes.values() {
        let _ = node.shutdown().await;
    }
    drop(nodes);
    for id in 0..3 {
        cluster.open(id).await;
    }
    cluster.raft_leader().await;
    let after = cluster
        .converge("after power loss", |meta| meta.write_quorum == 1)
        .await;
    assert_eq!(after, before);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_active_controller_fails_the_data_leader_over_to_the_most_advanced_isr_member() {
    // Sessions long enough that the setup never outlasts one on a busy machine.
    let timing = Timing {
        lease: Duration::from_millis(1500),
        session_timeout: Duration::from_secs(2),
        ..Timing::default()
    };
    let cluster = Cluster::start(3, timing).await;
    propose(
        &cluster,
        Command::ChangeIsr {
            sender: 0,
            leader_epoch: 1,
            isr: BTreeSet::from([0, 1, 2]),
            expected_version: None,
        },
    )
    .await;
    let heartbeat = |node: u64, epoch: u64, position: Position| HeartbeatRequest {
        cluster_id: 0xabc,
        node,
        leader_epoch: epoch,
        position,
        caught_up: true,
    };
    // The data leader (node 0) gets a lease; another cluster's heartbeat is refused.
    let active = cluster.raft_leader().await;
    let sent_at = Instant::now();
    let reply = active
        .heartbeat(heartbeat(0, 1, Position { epoch: 1, id: 10 }))
        .await
        .unwrap();
    let mut lease = Lease::new();
    lease.on_reply(sent_at, 1, reply.lease_ms.map(Duration::from_millis));
    assert!(lease.is_valid(Instant::now()));
    assert!(matches!(
        active
            .heartbeat(HeartbeatRequest {
                cluster_id: 0xdef,
                ..heartbeat(1, 1, Position::default())
            })
            .await,
        Err(Error::ClusterMismatch {
            ours: 0xabc,
            theirs: 0xdef
        })
    ));
    // Node 0 stops heartbeating; 1 and 2 go on, 2 ahead.
    let mut watch = cluster.nodes[&2].subscribe();
    let started = Instant::now();
    let meta = loop {
        let leader = cluster.raft_leader().await;
        for (node, id) in [(1, 9), (2, 10)] {
            let _ = leader
                .heartbeat(heartbeat(node, 1, Position { epoch: 1, id }))
                .await;
        }
        let meta = watch.borrow_and_update().clone();
        if meta.leader_epoch > 1 {
            break meta;
        }
        assert!(started.elapsed() < DEADLINE, "no failover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let failover = started.elapsed();
    assert_eq!(
        (meta.data_leader, meta.leader_epoch, meta.isr.clone()),
        (Some(2), 2, BTreeSet::from([1, 2]))
    );
    assert!(
        !lease.is_valid(Instant::now()),
        "the old lease outlived the session"
    );
    // The old leader is refused a lease in its old epoch; the new one gets one.
    let leader = cluster.raft_leader().await;
    assert_eq!(
        leader
            .heartbeat(heartbeat(0, 1, Position { epoch: 1, id: 10 }))
            .await
            .unwrap()
            .lease_ms,
        None
    );
    assert!(leader
        .heartbeat(heartbeat(2, 2, Position { epoch: 1, id: 10 }))
        .await
        .unwrap()
        .lease_ms
        .is_some());
    println!("data-leader failover after the last heartbeat: {failover:?}");

    // Node 1, in the ISR, falls silent past the session timeout while the new leader goes on:
    // a transfer to it is refused at once, nothing begun (it was begun before: the leader's
    // writes stopped until the transfer timed out, an epoch spent). Heard again, it is taken.
    let silent_since = Instant::now();
    while silent_since.elapsed() < timing.session_timeout + Duration::from_millis(500) {
        let leader = cluster.raft_leader().await;
        let _ = leader
            .heartbeat(heartbeat(2, 2, Position { epoch: 2, id: 11 }))
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let leader = cluster.raft_leader().await;
    match leader.transfer_leader(Some(1)).await {
        Err(Error::TransferTargetDown { node: 1, silent_ms }) => {
            assert!(
                silent_ms >= timing.session_timeout.as_millis() as u64,
                "{silent_ms}"
            )
        }
        other => panic!("a transfer to a silent node: {other:?}"),
    }
    assert_eq!(leader.meta().transfer, None, "nothing begun");
    let _ = leader
        .heartbeat(heartbeat(1, 2, Position { epoch: 2, id: 11 }))
        .await;
    let meta = leader
        .transfer_leader(Some(1))
        .await
        .expect("a transfer to a live node");
    assert_eq!(meta.transfer.map(|transfer| transfer.to), Some(1));
    cluster.shutdown().await;
}

/// A Raft vote request of cluster `cluster_id` for node `to`, as that cluster's node 7 sends
/// it.
fn vote_of_another_cluster(cluster_id: u64, to: Option<u64>) -> kv_controller::RaftMessage {
    kv_controller::RaftMessage {
        cluster_id,
        from: 7,
        to,
        request: kv_controller::RaftRequest::Vote(openraft::raft::VoteRequest::new(
            openraft::Vote::new(1, 7),
            None,
        )),
    }
}

/// A node alone in its cluster (`kvd leader` initialized on an empty disk) records another
/// cluster's Raft message for its own id as that cluster's claim on it — what a member that
/// lost its data hears from its old cluster — and still refuses the message. A message for
/// another id, from a sender without a cluster, or reaching a node of a cluster with other
/// members records nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_alone_in_its_cluster_records_another_clusters_claim_on_it() {
    let alone = Cluster::start(1, quiet()).await;
    let node = alone.nodes[&0].clone();
    let claimed = node.claimed();
    for ignored in [
        vote_of_another_cluster(0x999, Some(3)),
        vote_of_another_cluster(0, Some(0)),
        vote_of_another_cluster(0x999, None),
    ] {
        node.handle_raft(ignored).await;
    }
    assert_eq!(*claimed.borrow(), None);
    let reply = node
        .handle_raft(vote_of_another_cluster(0x999, Some(0)))
        .await;
    assert!(matches!(
        reply,
        kv_controller::RaftReply::ClusterMismatch { cluster_id: 0xabc }
    ));
    let claim = kv_controller::ForeignClaim {
        cluster_id: 0x999,
        from: 7,
        ours: 0xabc,
    };
    assert_eq!(*claimed.borrow(), Some(claim));
    // The first claim stays.
    node.handle_raft(vote_of_another_cluster(0x777, Some(0)))
        .await;
    assert_eq!(*node.claimed().borrow(), Some(claim));
    alone.shutdown().await;

    let three = Cluster::start(3, quiet()).await;
    for node in three.nodes.values() {
        let to = Some(node.node_id());
        node.handle_raft(vote_of_another_cluster(0x999, to)).await;
        assert_eq!(*node.claimed().borrow(), None, "node {to:?}");
    }
    three.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_another_cluster_is_refused() {
    let mut first = Cluster::start(1, quiet()).await;
    // A second, separate cluster whose node 5 is pointed at the first cluster's node 0.
    let mut second = Cluster {
        network: first.network.clone(),
        fs: SimFs::new(),
        nodes: BTreeMap::new(),
        timing: quiet(),
    };
    let stranger = second.open(5).await;
    stranger
        .initialize(BootstrapSpec {
            cluster_id: 0x999,
            epoch_floor: 0,
            write_quorum: 1,
        })
        .await
        .unwrap();
    let leader = first.raft_leader().await;
    leader.add_member(5, &url(5)).await.unwrap();
    // The stranger refuses the first cluster's Raft traffic: it never learns the first
    // cluster's metadata.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stranger.meta().cluster_id, 0x999);
    assert_eq!(stranger.meta().members.len(), 1);
    second.shutdown().await;
    first.nodes.remove(&5);
    first.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joined_node_keeps_its_cluster_id_across_a_restart_before_any_raft_entry() {
    let mut cluster = Cluster::start(1, quiet()).await;
    // Node 1 was admitted (the join's answer named cluster 0xabc) but no Raft entry reached it.
    let joiner = cluster.open(1).await;
    assert_eq!(joiner.cluster_id(), 0);
    joiner.adopt_cluster_id(0xabc).unwrap();
    assert!(
        !joiner.has_state(),
        "adopting an id is not controller state"
    );
    joiner.shutdown().await.unwrap();
    cluster.network.unregister(1);
    cluster.nodes.remove(&1);
    drop(joiner);
    let joiner = cluster.open(1).await;
    assert_eq!(joiner.cluster_id(), 0xabc, "stored across the restart");
    assert!(matches!(
        joiner.adopt_cluster_id(0x999),
        Err(Error::ClusterMismatch {
            ours: 0xabc,
            theirs: 0x999
        })
    ));
    // Another cluster's Raft traffic is refused from the start.
    let reply = joiner
        .handle_raft(vote_of_another_cluster(0x999, Some(1)))
        .await;
    assert!(matches!(
        reply,
        kv_controller::RaftReply::ClusterMismatch { cluster_id: 0xabc }
    ));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_url_changes_in_the_metadata_and_in_the_raft_membership() {
    let cluster = Cluster::start(3, quiet()).await;
    let leader = cluster.raft_leader().await;
    let moved = "http://node-2-moved";
    let meta = leader.update_url(2, moved).await.unwrap();
    assert_eq!(meta.url_of(2), Some(moved));
    let membership = raft_membership(&leader);
    assert_eq!(
        membership.get_node(&2).map(|node| node.addr.as_str()),
        Some(moved)
    );
    assert!(membership.voter_ids().any(|id| id == 2), "still a voter");
    cluster
        .converge("every node knows the new URL", |meta| {
            meta.url_of(2) == Some(moved)
        })
        .await;
    cluster.shutdown().await;
}

/// A removal the metadata refuses (here: it would leave fewer members than the write quorum)
/// changes nothing, in the controller quorum either. Before, the node was removed from the
/// Raft voters first and the metadata refused after: `DELETE /admin/members/2` on a 3-node
/// cluster with write quorum 3 answered 409, yet left 2 controller voters (no failure
/// tolerated) and node 2 a data member outside the controller.
#[tokio::test]
async fn a_refused_removal_leaves_the_controller_quorum_as_it_was() {
    let cluster = Cluster::start(3, quiet()).await;
    propose(&cluster, Command::SetWriteQuorum { write_quorum: 3 }).await;
    let leader = cluster.raft_leader().await;
    let refused = leader.remove_member(2).await;
    assert!(
        matches!(
            refused,
            Err(Error::Rejected(kv_controller::Rejection::Invalid { .. }))
        ),
        "{refused:?}"
    );
    let membership = raft_membership(&leader);
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    assert_eq!(voters, BTreeSet::from([0, 1, 2]), "{membership:?}");
    let meta = leader.meta();
    assert!(
        meta.members.get(&2).is_some_and(|member| member.voter),
        "{meta:?}"
    );
    // Lowered first, the removal goes through: out of both.
    propose(&cluster, Command::SetWriteQuorum { write_quorum: 2 }).await;
    let meta = leader.remove_member(2).await.unwrap();
    assert!(!meta.members.contains_key(&2), "{meta:?}");
    let membership = raft_membership(&leader);
    assert!(membership.get_node(&2).is_none(), "{membership:?}");
    cluster.shutdown().await;
}

/// A Raft message names the node it is for, and another node refuses it: a node answering at
/// a member's old address (its URL reused) must not answer as that member, be counted as its
/// vote or its copy of the log.
#[tokio::test]
async fn a_raft_message_for_another_node_is_refused() {
    let cluster = Cluster::start(3, quiet()).await;
    let node = cluster.nodes.get(&1).unwrap().clone();
    let vote = |to| kv_controller::RaftMessage {
        cluster_id: 0xabc,
        from: 0,
        to: Some(to),
        request: kv_controller::RaftRequest::Vote(openraft::raft::VoteRequest::new(
            openraft::Vote::new(100, 0),
            None,
        )),
    };
    let reply = node.handle_raft(vote(2)).await;
    assert!(
        matches!(reply, kv_controller::RaftReply::WrongNode { node_id: 1 }),
        "{reply:?}"
    );
    assert!(
        node.status().term < 100,
        "the misdirected vote changed nothing"
    );
    let reply = node.handle_raft(vote(1)).await;
    assert!(
        matches!(reply, kv_controller::RaftReply::Vote(_)),
        "{reply:?}"
    );
    cluster.shutdown().await;
}

/// A node admitted to no cluster (no controller state, no cluster id) answers no Raft message:
/// started at a member's address with an empty data directory, it would otherwise pass for
/// that member (vote, take the log) before the cluster refuses its join. Once admitted
/// (`adopt_cluster_id`) it answers.
#[tokio::test]
async fn a_node_admitted_nowhere_answers_no_raft_message() {
    let mut cluster = Cluster::start(1, quiet()).await;
    let empty = cluster.open(7).await;
    let vote = || kv_controller::RaftMessage {
        cluster_id: 0xabc,
        from: 0,
        to: Some(7),
        request: kv_controller::RaftRequest::Vote(openraft::raft::VoteRequest::new(
            openraft::Vote::new(100, 0),
            None,
        )),
    };
    let reply = empty.handle_raft(vote()).await;
    assert!(
        matches!(reply, kv_controller::RaftReply::NotJoined),
        "{reply:?}"
    );
    assert!(!empty.has_state(), "the refused vote was not stored");
    empty.adopt_cluster_id(0xabc).unwrap();
    let reply = empty.handle_raft(vote()).await;
    assert!(
        matches!(reply, kv_controller::RaftReply::Vote(_)),
        "{reply:?}"
    );
    cluster.shutdown().await;
}

/// A Raft leader whose node says its disk hangs steps aside: it answers proposals and data
/// heartbeats "not the active controller" (confirming its leadership for a heartbeat would
/// send Raft heartbeats), sends no Raft heartbeats, and the two others elect a leader among
/// themselves, which takes proposals. Once the disk answers it takes part again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raft_leader_whose_disk_hangs_steps_aside_and_the_others_elect_a_leader() {
    let cluster = Cluster::start(3, quiet()).await;
    let hung = cluster.raft_leader().await;
    let term_before = hung.status().term;
    hung.set_node_disk_hung(true);
    assert!(hung.stepped_aside());
    assert!(matches!(
        hung.propose(Command::SetWriteQuorum { write_quorum: 2 })
            .await,
        Err(Error::NotLeader {
            leader_id: None,
            ..
        })
    ));
    let heartbeat = HeartbeatRequest {
        cluster_id: 0xabc,
        node: 1,
        leader_epoch: 1,
        position: Position::default(),
        caught_up: true,
    };
    assert!(matches!(
        hung.heartbeat(heartbeat.clone()).await,
        Err(Error::NotLeader {
            leader_id: None,
            ..
        })
    ));
    // The others elect a leader without it (it is still reachable: only its silence does it).
    let started = Instant::now();
    let successor = loop {
        let other = cluster
            .nodes
            .values()
            .find(|node| node.node_id() != hung.node_id() && node.status().raft_state == "Leader");
        if let Some(other) = other {
            break other.clone();
        }
        assert!(
            started.elapsed() < DEADLINE,
            "no other controller led within {DEADLINE:?} of the leader stepping aside"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(successor.status().term > term_before);
    let meta = successor
        .propose(Command::SetWriteQuorum { write_quorum: 2 })
        .await
        .expect("the new leader takes a proposal")
        .into_result()
        .unwrap();
    assert_eq!(meta.write_quorum, 2);
    hung.set_node_disk_hung(false);
    assert!(!hung.stepped_aside());
    cluster
        .converge("write quorum 2", |meta| meta.write_quorum == 2)
        .await;
    drop((hung, successor));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cut_off_and_back_leaves_the_leader_and_its_term_alone() {
    // Without a pre-vote a member that hears no leader stands for election every election
    // timeout, raising its term each time; back, its higher term answers the leader's next
    // heartbeat and deposes it (openraft steps down on any higher vote): a needless election
    // and, for the data plane, no lease meanwhile. With one, the cut-off member asks first
    // whether the others would vote for it — they still hear their leader and refuse — and
    // never raises its term, so the leader keeps leading when the cut heals.
    let cluster = Cluster::start(3, quiet()).await;
    let leader = cluster.raft_leader().await;
    let term = leader.status().term;
    let member = cluster
        .nodes
        .keys()
        .copied()
        .find(|&id| id != leader.node_id())
        .unwrap();
    cluster.network.isolate(member, 0..3);
    // Several election timeouts (300–500 ms after the leader's lease of 500 ms).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let cut_off = &cluster.nodes[&member];
    assert_eq!(
        cut_off.status().term,
        term,
        "the cut-off member raised its term: {:?}",
        cut_off.status()
    );
    cluster.network.heal();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = leader.status();
    assert_eq!(
        (after.raft_state.as_str(), after.term),
        ("Leader", term),
        "the leader was deposed when the member came back: {after:?}"
    );
    let back = cluster.nodes[&member].status();
    assert_eq!(
        (back.raft_leader, back.term),
        (Some(leader.node_id()), term),
        "the member follows the leader again: {back:?}"
    );
    cluster.shutdown().await;
}
