//! Real nodes (store, WAL, node driver) under a controller — a stand-in in the test that hands
//! out views (epoch, leader, ISR, write quorum) and leases, as kv-controller does through the
//! wiring — over an in-memory network whose links can be cut: role switches at run time, the
//! no-op at the start of each epoch, the lease gate, a deposed leader stepping down, ISR
//! changes, planned transfers, health.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kv_replication::{
    Acks, ClusterView, Error, FetchRequest, FetchResponse, LeaderRef, Node, NodeOptions, Role,
    SnapshotMeta, Transport, TransportError, TransportErrorKind,
};

use crate::support::{chunk_of, eventually, open, open_on_a_faulty_disk, set};

const CLUSTER: u64 = 0xc0de;

/// The in-memory network: nodes by id, and the links that are cut (both directions).
#[derive(Default)]
struct Net {
    nodes: Mutex<BTreeMap<u64, Arc<Node>>>,
    cut: Mutex<BTreeSet<(u64, u64)>>,
}

impl Net {
    fn reach(&self, from: u64, to: u64) -> Result<Arc<Node>, TransportError> {
        let unreachable = |detail: String| TransportError::new(TransportErrorKind::Connect, detail);
        if self.cut.lock().unwrap().contains(&(from, to)) {
            return Err(unreachable(format!("link {from} -> {to} is cut (test)")));
        }
        self.nodes
            .lock()
            .unwrap()
            .get(&to)
            .cloned()
            .ok_or_else(|| unreachable(format!("node {to} is down (test)")))
    }
}

fn url(id: u64) -> String {
    format!("mem://{id}")
}

/// One node's link to another.
struct Link {
    net: Arc<Net>,
    from: u64,
    to: u64,
}

impl Transport for Link {
    async fn fetch(
        &self,
        request: &FetchRequest,
        timeout: Duration,
    ) -> Result<FetchResponse, TransportError> {
        let node = match self.net.reach(self.from, self.to) {
            Ok(node) => node,
            Err(error) => {
                tokio::time::sleep(Duration::from_millis(2)).await;
                return Err(error);
            }
        };
        let answer = tokio::time::timeout(timeout, node.handle_fetch(request, true))
            .await
            .map_err(|_| TransportError::new(TransportErrorKind::Timeout, "timeout (test)"))?;
        // Cut while the fetch was held: the answer is lost on the way back.
        self.net.reach(self.from, self.to)?;
        Ok(answer)
    }

    async fn snapshot_meta(
        &self,
        _timeout: Duration,
    ) -> Result<Option<SnapshotMeta>, TransportError> {
        Ok(self.net.reach(self.from, self.to)?.snapshot_meta())
    }

    async fn snapshot_chunk(
        &self,
        applied_id: u64,
        offset: u64,
        len: u32,
        _timeout: Duration,
    ) -> Result<Vec<u8>, TransportError> {
        chunk_of(
            &*self.net.reach(self.from, self.to)?,
            applied_id,
            offset,
            len,
        )
    }
}

/// Nodes `0..size` under a test controller.
struct Cluster {
    net: Arc<Net>,
    dirs: Vec<tempfile::TempDir>,
    options: NodeOptions,
    epoch: u64,
    leader: Option<u64>,
    isr: BTreeSet<u64>,
    write_quorum: usize,
    /// The metadata last published and its version (bumped when the metadata changes).
    published: (u64, Option<u64>, BTreeSet<u64>, usize),
    version: u64,
    tasks: BTreeMap<
        u64,
        (
            tokio::sync::oneshot::Sender<()>,
            tokio::task::JoinHandle<()>,
        ),
    >,
}

fn options() -> NodeOptions {
    let mut options = NodeOptions::default();
    options.follower.fetch_wait = Duration::from_millis(50);
    options.follower.backoff_initial = Duration::from_millis(5);
    options.follower.backoff_max = Duration::from_millis(50);
    options.acks_timeout = Duration::from_secs(10);
    options
}

impl Cluster {
    fn start(size: u64, write_quorum: usize, options: NodeOptions) -> Cluster {
        let mut cluster = Cluster {
            net: Arc::default(),
            dirs: Vec::new(),
            options,
            epoch: 0,
            leader: None,
            isr: (0..size).collect(),
            write_quorum,
            published: (0, None, BTreeSet::new(), 0),
            version: 0,
            tasks: BTreeMap::new(),
        };
        for id in 0..size {
            cluster.dirs.push(tempfile::tempdir().unwrap());
            cluster.open(id);
        }
        cluster
    }

    /// Opens node `id` from its data directory and starts its replication task.
    fn open(&mut self, id: u64) {
        let dir = self.dirs[id as usize].path();
        let node = Arc::new(
            Node::open_controlled(open(dir), dir, id, self.options.clone())
                .expect("open controlled"),
        );
        assert_eq!(
            node.role(),
            Role::NoLeader,
            "a node starts knowing no leader"
        );
        self.net.nodes.lock().unwrap().insert(id, node.clone());
        let net = self.net.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(node.run_replication(
            move |leader_url: &str| Link {
                net: net.clone(),
                from: id,
                to: leader_url["mem://".len()..].parse().expect("a mem:// url"),
            },
            async move {
                let _ = stopped.await;
            },
        ));
        self.tasks.insert(id, (stop, task));
    }

    /// Stops node `id`: it leaves the network, its replication task ends, its log is closed.
    /// Its data directory can be opened again once the caller dropped its handles.
    async fn kill(&mut self, id: u64) {
        let node = self.net.nodes.lock().unwrap().remove(&id).expect("running");
        let (stop, task) = self.tasks.remove(&id).expect("running");
        let _ = stop.send(());
        task.await.unwrap();
        node.store().close().expect("close");
    }

    fn node(&self, id: u64) -> Arc<Node> {
        self.net.nodes.lock().unwrap()[&id].clone()
    }

    fn view(&self, id: u64) -> ClusterView {
        ClusterView {
            cluster_id: CLUSTER,
            node_id: id,
            leader_epoch: self.epoch,
            leader: self.leader.map(|leader| LeaderRef {
                id: leader,
                url: url(leader),
            }),
            isr: self.isr.clone(),
            members: (0..self.dirs.len() as u64).collect(),
            write_quorum: self.write_quorum,
            version: self.version,
        }
    }

    /// Hands the current view to every running node.
    fn publish(&mut self) {
        let metadata = (self.epoch, self.leader, self.isr.clone(), self.write_quorum);
        if metadata != self.published {
            self.published = metadata;
            self.version += 1;
        }
        let nodes: Vec<(u64, Arc<Node>)> = self
            .net
            .nodes
            .lock()
            .unwrap()
            .iter()
            .map(|(id, node)| (*id, node.clone()))
            .collect();
        for (id, node) in nodes {
            node.apply_cluster_view(&self.view(id)).expect("apply view");
        }
    }

    /// A new epoch led by `leader`, which gets a long lease.
    fn elect(&mut self, leader: Option<u64>) {
        self.epoch += 1;
        self.leader = leader;
        self.publish();
        self.grant(Duration::from_secs(60));
    }

    fn grant(&self, valid_for: Duration) {
        if let Some(leader) = self.leader {
            self.node(leader)
                .grant_lease(self.epoch, Instant::now() + valid_for);
        }
    }

    fn cut(&self, a: u64, b: u64) {
        let mut cut = self.net.cut.lock().unwrap();
        cut.insert((a, b));
        cut.insert((b, a));
    }

    fn heal(&self) {
        self.net.cut.lock().unwrap().clear();
    }
}

fn value_of(node: &Node, key: &str) -> Option<Vec<u8>> {
    node.store()
        .get(key.as_bytes())
        .map(|value| value.value_bytes().to_vec())
}

/// A node takes only the role the controller gives it: it starts knowing no leader (writes
/// 503), leads an epoch it is named for by writing the epoch's no-op first, acknowledges only
/// under a lease for that epoch, and — restarted — never leads the epoch it led before: it
/// asks for a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_leads_only_new_epochs_from_a_noop_and_acknowledges_only_under_a_lease() {
    let mut options = options();
    options.acks_timeout = Duration::from_millis(300);
    let mut cluster = Cluster::start(1, 1, options);
    let node = cluster.node(0);
    assert!(matches!(
        node.write(set("a".to_owned(), 1), Acks::Leader).await,
        Err(Error::Unavailable(_))
    ));

    // Named leader of epoch 1, without a lease yet: the no-op is written, writes wait.
    cluster.epoch = 1;
    cluster.leader = Some(0);
    cluster.publish();
    assert_eq!(node.role(), Role::Leader);
    assert_eq!(node.store().epoch_at(1), Some(1), "the epoch's first entry");
    assert_eq!(node.cluster_status().noop_id, Some(1));
    let refused = node.write(set("a".to_owned(), 1), Acks::Leader).await;
    assert!(matches!(refused, Err(Error::Unavailable(_))), "{refused:?}");
    assert!(!node.linearizable_reads());
    cluster.publish(); // the same view again changes nothing
    assert_eq!(node.store().last_id(), 1, "no second no-op");

    // A lease for another epoch is ignored; one for epoch 1 opens writes.
    node.grant_lease(7, Instant::now() + Duration::from_secs(60));
    assert!(node
        .write(set("a".to_owned(), 1), Acks::Leader)
        .await
        .is_err());
    let lease_end = Instant::now() + Duration::from_millis(400);
    node.grant_lease(1, lease_end);
    assert_eq!(
        node.write(set("a".to_owned(), 1), Acks::WriteQuorum)
            .await
            .unwrap(),
        2
    );
    assert!(node.linearizable_reads());
    assert_eq!(value_of(&node, "a").as_deref(), Some(&b"1"[..]));
    // `?acks=quorum` asks for an ISR of at least two even under `N = 1`: alone, it times out
    // (the entry stays, committed under `N = 1`).
    let alone = node.write(set("q".to_owned(), 1), Acks::Quorum).await;
    assert!(
        matches!(alone, Err(Error::AcksTimeout { id: 3, .. })),
        "{alone:?}"
    );
    let position = node.position();
    assert_eq!(
        (position.epoch, position.id, position.caught_up),
        (1, 3, true)
    );

    // The lease runs out: nothing more is acknowledged.
    tokio::time::sleep_until(lease_end.into()).await;
    assert!(matches!(
        node.write(set("b".to_owned(), 2), Acks::Leader).await,
        Err(Error::Unavailable(_))
    ));
    assert!(!node.linearizable_reads());

    // Restarted, it is named leader of epoch 1 again (its session never expired): it may not
    // lead that epoch again, and asks for a new one.
    cluster.kill(0).await;
    drop(node);
    cluster.open(0);
    let node = cluster.node(0);
    cluster.publish();
    assert_eq!(node.role(), Role::NoLeader);
    assert_eq!(node.wanted_reelection(), Some(1));
    assert!(matches!(
        node.write(set("b".to_owned(), 2), Acks::Leader).await,
        Err(Error::Unavailable(_))
    ));
    cluster.elect(Some(0));
    assert_eq!(node.role(), Role::Leader);
    assert_eq!(node.wanted_reelection(), None);
    assert_eq!(
        (node.store().epoch_at(3), node.store().epoch_at(4)),
        (Some(1), Some(2)),
        "epoch 2 starts with its no-op"
    );
    assert_eq!(
        node.write(set("b".to_owned(), 2), Acks::WriteQuorum)
            .await
            .unwrap(),
        5
    );
    // An older view arriving late changes nothing.
    let mut old = cluster.view(0);
    old.leader_epoch = 1;
    old.leader = None;
    node.apply_cluster_view(&old).unwrap();
    assert_eq!(node.role(), Role::Leader);
    // A view of another cluster is refused.
    let mut stranger = cluster.view(0);
    stranger.cluster_id = 0xbad;
    assert!(matches!(
        node.apply_cluster_view(&stranger),
        Err(Error::ViewMismatch(_))
    ));
}

/// Leadership moves between three nodes (`N = 2`) while writers keep writing to whoever
/// leads: a leader's writes waiting for acknowledgements when it is replaced end 503 (stepped
/// down), never 200; every write acknowledged is on every node in the end; followers
/// re-point at once and ids stay one history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_switches_under_load_end_the_old_leaders_writes_503_and_lose_nothing() {
    let mut cluster = Cluster::start(3, 2, options());
    cluster.elect(Some(0));
    let acknowledged: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let mut stepped_down = 0;
    for round in 0..4u64 {
        let leader = cluster.leader.unwrap();
        let leader_node = cluster.node(leader);
        // A steady load on the leader.
        let writers: Vec<_> = (0..4u64)
            .map(|writer| {
                let node = leader_node.clone();
                let acknowledged = acknowledged.clone();
                tokio::spawn(async move {
                    for index in 0..25u64 {
                        let key = format!("r{round}-w{writer}-{index}");
                        match node.write(set(key.clone(), index), Acks::Quorum).await {
                            Ok(id) => acknowledged.lock().unwrap().push((key, id)),
                            Err(error) => panic!("round {round}: {error}"),
                        }
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap();
        }
        // The followers lose the leader: its next writes wait for acknowledgements that cannot
        // come, until the controller names another leader.
        let next = (leader + 1) % 3;
        for follower in (0..3).filter(|&id| id != leader) {
            cluster.cut(leader, follower);
        }
        let waiting: Vec<_> = (0..3u64)
            .map(|index| {
                let node = leader_node.clone();
                tokio::spawn(async move {
                    node.write(set(format!("lost-{round}-{index}"), index), Acks::Quorum)
                        .await
                })
            })
            .collect();
        eventually("the waiting writes are in the old leader's log", || {
            (0..3).all(|index| value_of(&leader_node, &format!("lost-{round}-{index}")).is_none())
                && leader_node.store().pending_count() >= 3
        })
        .await;
        cluster.elect(Some(next));
        assert_ne!(leader_node.role(), Role::Leader);
        for write in waiting {
            let outcome = tokio::time::timeout(Duration::from_secs(5), write)
                .await
                .expect("a waiting write ends at the step-down")
                .unwrap();
            assert!(
                matches!(outcome, Err(Error::SteppedDown { .. })),
                "round {round}: {outcome:?}"
            );
            stepped_down += 1;
        }
        cluster.heal();
    }
    assert_eq!(stepped_down, 12);
    // Everyone converges on the last leader's log; nothing acknowledged is missing.
    let leader = cluster.node(cluster.leader.unwrap());
    let last = leader
        .write(set("last".to_owned(), 0), Acks::All)
        .await
        .unwrap();
    for id in 0..3 {
        let node = cluster.node(id);
        assert!(
            node.wait_applied(last, Duration::from_secs(10)).await,
            "node {id}: {:?}",
            node.cluster_status()
        );
        for (key, _) in acknowledged.lock().unwrap().iter() {
            assert!(value_of(&node, key).is_some(), "node {id} lost {key}");
        }
        for round in 0..4 {
            for index in 0..3 {
                assert!(value_of(&node, &format!("lost-{round}-{index}")).is_none());
            }
        }
    }
    let frames = |id: u64| {
        let node = cluster.node(id);
        node.store()
            .read_frames(1, usize::MAX, last)
            .unwrap()
            .unwrap()
            .bytes
    };
    assert_eq!(frames(0), frames(1));
    assert_eq!(frames(1), frames(2));
}

/// A leader that hears of a newer epoch in a fetch — the follower heard it from the
/// controller first — stops at once, lease or not: its waiting writes end 503, new ones are
/// refused, and it answers "not the leader" until the controller's view reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_told_of_a_newer_epoch_by_a_fetch_stops_acknowledging_at_once() {
    let mut cluster = Cluster::start(2, 2, options());
    cluster.elect(Some(0));
    let leader = cluster.node(0);
    assert_eq!(
        leader
            .write(set("a".to_owned(), 1), Acks::Quorum)
            .await
            .unwrap(),
        2
    );
    cluster.cut(0, 1);
    let waiting = tokio::spawn({
        let leader = leader.clone();
        async move { leader.write(set("b".to_owned(), 2), Acks::Quorum).await }
    });
    eventually("the write waits", || leader.store().last_id() == 3).await;
    let request = FetchRequest {
        cluster_id: CLUSTER,
        node_id: 1,
        leader_epoch: 2,
        next_id: 3,
        last_epoch: 1,
        durable_id: 2,
        commit_id: 2,
        bytes_max: 1 << 20,
        wait_ms: 0,
    };
    assert_eq!(
        leader.handle_fetch(&request, true).await,
        FetchResponse::NotLeader {
            leader_epoch: 2,
            leader_url: None
        }
    );
    let outcome = waiting.await.unwrap();
    assert!(
        matches!(outcome, Err(Error::SteppedDown { id: 3, .. })),
        "{outcome:?}"
    );
    assert_eq!(leader.role(), Role::NoLeader);
    assert!(matches!(
        leader.write(set("c".to_owned(), 3), Acks::Leader).await,
        Err(Error::Unavailable(_))
    ));
    // A lease granted for its old epoch changes nothing; the new view makes it a follower.
    leader.grant_lease(1, Instant::now() + Duration::from_secs(60));
    assert!(leader
        .write(set("c".to_owned(), 3), Acks::Leader)
        .await
        .is_err());
    assert_eq!(leader.leader_epoch(), 2);
    cluster.heal();
    cluster.elect(Some(1));
    assert_eq!(leader.role(), Role::Follower { leader_url: url(1) });
}

/// A write waiting for its acknowledgements on a leader whose lease ran out gives up the lag
/// limit after the lease's end, before the acks timeout, and its answer says why. Before, it
/// said "… while holding a lease (this node holds none now)" — or nothing, had a lease come
/// meanwhile — and "within 0 ms" when the lag limit had passed before the write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_a_leader_cut_off_for_the_lag_limit_ends_saying_so() {
    let mut options = options();
    options.leader.lag_limit = Duration::from_millis(300);
    let mut cluster = Cluster::start(2, 2, options);
    cluster.elect(Some(0));
    let node = cluster.node(0);
    assert_eq!(
        node.write(set("a".to_owned(), 1), Acks::WriteQuorum)
            .await
            .unwrap(),
        2
    );
    // A new epoch with a short lease, and the follower cut off: nothing can commit.
    cluster.cut(0, 1);
    cluster.epoch += 1;
    cluster.publish();
    node.grant_lease(cluster.epoch, Instant::now() + Duration::from_millis(200));
    let started = Instant::now();
    let outcome = node.write(set("b".to_owned(), 2), Acks::WriteQuorum).await;
    let took = started.elapsed();
    match &outcome {
        Err(Error::AcksTimeout { wanted, .. }) => assert!(
            wanted.contains("this node has held none for the lag limit, 300 ms"),
            "{outcome:?}"
        ),
        _ => panic!("{outcome:?}"),
    }
    assert!(took < Duration::from_secs(5), "gave up after {took:?}");
}

/// A leader a view replaces stops taking writes at once — a write waiting for a lease ends
/// "a newer epoch has begun" — even while recording the new epoch in `node.meta` hangs on the
/// disk: the role change waits for the record, the deposition does not. Before, the write
/// waited out the lag limit ("holds no lease") however soon the view came, and kv-http could
/// send it on to the new leader only then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_a_view_replaces_refuses_writes_at_once_even_while_its_disk_hangs() {
    let dir = tempfile::tempdir().unwrap();
    let flags = tempfile::tempdir().unwrap();
    let stalled = flags.path().join("stalled");
    let (store, plan) = open_on_a_faulty_disk(dir.path());
    let node = Arc::new(Node::open_controlled(store, dir.path(), 0, options()).unwrap());
    let view = |epoch: u64, leader: u64| ClusterView {
        cluster_id: CLUSTER,
        node_id: 0,
        leader_epoch: epoch,
        leader: Some(LeaderRef {
            id: leader,
            url: url(leader),
        }),
        isr: BTreeSet::from([0, 1]),
        members: BTreeSet::from([0, 1]),
        write_quorum: 1,
        version: epoch,
    };
    node.apply_cluster_view(&view(1, 0)).expect("lead epoch 1");
    assert_eq!(node.role(), Role::Leader);
    // No lease: the write waits for one (up to the lag limit).
    let waiting = tokio::spawn({
        let node = node.clone();
        async move { node.write(set("a".to_owned(), 1), Acks::Leader).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished(), "the write waits for a lease");
    plan.stall_while_exists(stalled.clone());
    std::fs::write(&stalled, b"").unwrap();
    let applying = std::thread::spawn({
        let node = node.clone();
        move || node.apply_cluster_view(&view(2, 1))
    });
    let started = Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the write ends while the disk hangs")
        .unwrap();
    let took = started.elapsed();
    eventually("the new epoch's record waits on the disk", || {
        node.meta_save_wait() > Duration::ZERO
    })
    .await;
    std::fs::remove_file(&stalled).unwrap();
    assert!(
        matches!(&outcome, Err(Error::Unavailable(detail)) if detail.contains("a newer epoch has begun")),
        "{outcome:?}"
    );
    assert!(
        took < Duration::from_millis(500),
        "the write ended {took:?} after the view"
    );
    applying
        .join()
        .unwrap()
        .expect("the view is applied once the disk answers");
    assert_eq!(node.role(), Role::Follower { leader_url: url(1) });
    assert_eq!(node.leader_epoch(), 2);
}

/// `N = 2` of 3 with one follower cut off: writes wait only until the leader's wanted ISR
/// (without it) is applied, then go on with the ISR of two; the follower, back and caught up,
/// is asked back in. Followers outside the ISR never count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_follower_leaves_the_isr_through_the_controller_and_comes_back() {
    let mut options = options();
    options.leader.lag_limit = Duration::from_millis(300);
    let mut cluster = Cluster::start(3, 2, options);
    cluster.elect(Some(0));
    let leader = cluster.node(0);
    assert_eq!(
        leader
            .write(set("a".to_owned(), 1), Acks::Quorum)
            .await
            .unwrap(),
        2
    );
    assert_eq!(leader.wanted_isr(), None, "everyone is in sync");
    cluster.cut(0, 2);
    let waiting = tokio::spawn({
        let leader = leader.clone();
        async move { leader.write(set("b".to_owned(), 2), Acks::Quorum).await }
    });
    let started = Instant::now();
    let wanted = Mutex::new(None);
    eventually("the leader wants follower 2 out", || {
        *wanted.lock().unwrap() = leader.wanted_isr().map(|change| change.isr);
        wanted.lock().unwrap().is_some()
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "not before the lag limit"
    );
    assert_eq!(*wanted.lock().unwrap(), Some(BTreeSet::from([0, 1])));
    assert_eq!(leader.wanted_isr(), None, "one change in flight");
    assert!(
        !waiting.is_finished(),
        "the member still counts until the change applies"
    );
    cluster.isr = BTreeSet::from([0, 1]);
    cluster.publish();
    assert_eq!(waiting.await.unwrap().unwrap(), 3);
    assert_eq!(leader.cluster_status().isr, Some(vec![0, 1]));

    // Back: it catches up, and the leader wants it in again (it does not count before).
    cluster.heal();
    let node2 = cluster.node(2);
    eventually("node 2 catches up", || node2.store().applied_id() >= 3).await;
    eventually("the leader wants follower 2 back", || {
        *wanted.lock().unwrap() = leader.wanted_isr().map(|change| change.isr);
        wanted.lock().unwrap().is_some()
    })
    .await;
    assert_eq!(*wanted.lock().unwrap(), Some(BTreeSet::from([0, 1, 2])));
    cluster.isr = BTreeSet::from([0, 1, 2]);
    cluster.publish();
    assert_eq!(
        leader
            .write(set("c".to_owned(), 3), Acks::All)
            .await
            .unwrap(),
        4
    );
    assert!(node2.position().caught_up);
}

/// Under `N = 3`, while the ISR has two members a write that needs a commit waits for the
/// third — and goes on once it is back within the acks timeout — or else is refused with
/// nothing written ("not enough in-sync replicas", Kafka's `NOT_ENOUGH_REPLICAS`); once the
/// ISR has been short that long, writes are refused at once until one finds it whole again.
/// `acks=leader`, which asks for no commit, is taken, and a retry of a request already in
/// the log is answered as a repeat. Before, the write was appended, waited out the timeout
/// and was answered 503 with its outcome unknown: it committed whenever the follower came
/// back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_cannot_commit_for_want_of_in_sync_replicas_is_refused_with_nothing_written() {
    let mut options = options();
    // Each refusal after a wait waits it out; a write that waits has this long.
    options.acks_timeout = Duration::from_millis(2000);
    let mut cluster = Cluster::start(3, 3, options);
    cluster.elect(Some(0));
    let leader = cluster.node(0);
    let node2 = cluster.node(2);
    leader
        .write(set("a".to_owned(), 1), Acks::WriteQuorum)
        .await
        .unwrap();
    let shrink = |cluster: &mut Cluster| {
        cluster.cut(0, 2);
        cluster.isr = BTreeSet::from([0, 1]);
        cluster.publish();
    };
    let refused = |written: kv_replication::Result<u64>, how: &str| match written {
        Err(Error::Unavailable(detail)) => assert!(
            detail.contains("not enough in-sync replicas")
                && detail.contains("[0, 1]")
                && detail.contains(how),
            "{detail}"
        ),
        other => panic!("{other:?}"),
    };

    // A quorum write on a task of its own, to wait for the ISR while the test goes on.
    let write_waiting = |key: &str, value| {
        let (leader, key) = (leader.clone(), key.to_owned());
        tokio::spawn(async move { leader.write(set(key, value), Acks::WriteQuorum).await })
    };

    // A write that waits while the follower catches up and rejoins goes on.
    shrink(&mut cluster);
    let waiting = write_waiting("b", 2);
    tokio::time::sleep(Duration::from_millis(100)).await;
    cluster.heal();
    eventually("node 2 catches up", || {
        node2.store().last_id() == leader.store().last_id()
    })
    .await;
    assert!(!waiting.is_finished(), "{:?}", waiting.await);
    cluster.isr = BTreeSet::from([0, 1, 2]);
    cluster.publish();
    waiting.await.unwrap().unwrap();

    // Short again: the first write waits the whole acks timeout, the next is refused at once
    // (`acks=all` too); nothing is written.
    shrink(&mut cluster);
    let last_id = leader.store().last_id();
    refused(
        leader
            .write(set("c".to_owned(), 3), Acks::WriteQuorum)
            .await,
        "waited",
    );
    refused(
        leader.write(set("c".to_owned(), 3), Acks::All).await,
        "refused at once",
    );
    assert_eq!(leader.store().last_id(), last_id, "nothing was written");
    // Durable on the leader is all `acks=leader` asks: taken (and committed later).
    let uncommitted = leader
        .write(set("d".to_owned(), 4), Acks::Leader)
        .await
        .unwrap();
    assert_eq!(uncommitted, last_id + 1);
    // A retry of a request already in the log is not refused for want of replicas: the store
    // answers it as a repeat of the first one (kv-http then waits for that one's outcome,
    // which commits once the follower is back).
    let request = || kv_store::Command {
        op: set("e".to_owned(), 5),
        request: Some(kv_store::RequestIds {
            client_id: "client".to_owned(),
            request_id: "request-1".to_owned(),
            form: 0,
        }),
    };
    let first = leader.write_command(request(), Acks::Leader).await.unwrap();
    match leader.write_command(request(), Acks::WriteQuorum).await {
        Err(Error::Store(kv_store::Error::DuplicateRequest { id, .. })) => {
            assert_eq!(id, first.id)
        }
        other => panic!("the retry: {other:?}"),
    }

    // Whole again: writes commit, the acknowledged-by-the-leader ones with them, and the
    // next shortage starts its count over (its first write waits).
    cluster.heal();
    eventually("node 2 catches up", || node2.store().last_id() >= first.id).await;
    cluster.isr = BTreeSet::from([0, 1, 2]);
    cluster.publish();
    let after = leader
        .write(set("f".to_owned(), 6), Acks::WriteQuorum)
        .await
        .unwrap();
    assert!(after > first.id && first.id > uncommitted);
    assert_eq!(value_of(&leader, "d"), Some(b"4".to_vec()));
    shrink(&mut cluster);
    refused(
        leader.write(set("g".to_owned(), 7), Acks::Quorum).await,
        "waited",
    );
    // Whole again with no write to see it, then short again: a new shortage, whose first
    // write waits.
    cluster.heal();
    cluster.isr = BTreeSet::from([0, 1, 2]);
    cluster.publish();
    shrink(&mut cluster);
    refused(
        leader
            .write(set("h".to_owned(), 8), Acks::WriteQuorum)
            .await,
        "waited",
    );

    // A write waiting for the ISR ends as soon as the node stops leading — told it does not
    // lead, not refused at the timeout — with nothing written.
    cluster.heal();
    cluster.isr = BTreeSet::from([0, 1, 2]);
    cluster.publish();
    shrink(&mut cluster);
    let last_id = leader.store().last_id();
    let waiting = write_waiting("i", 9);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished(), "{:?}", waiting.await);
    let deposed = Instant::now();
    cluster.elect(Some(1));
    let written = waiting.await.unwrap();
    assert!(
        deposed.elapsed() < Duration::from_millis(1000),
        "the wait ended {:?} after the node stopped leading",
        deposed.elapsed()
    );
    assert!(
        matches!(written, Err(Error::NotLeader { .. })),
        "{written:?}"
    );
    // Nothing was written: what node 0 holds past its log as it was is node 1's (its epoch's
    // no-op, copied as its follower now).
    for id in last_id + 1..=leader.store().last_id() {
        assert_eq!(
            leader.store().epoch_at(id),
            Some(cluster.epoch),
            "entry {id}"
        );
    }
    assert_eq!(value_of(&leader, "i"), None);
    assert_eq!(value_of(&cluster.node(1), "i"), None);
}

/// A planned transfer: the leader stops taking writes, returns once the target holds its
/// whole log, and the target leads the next epoch with every acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_transfer_stops_writes_until_the_target_holds_everything() {
    let mut cluster = Cluster::start(3, 1, options());
    cluster.elect(Some(0));
    let leader = cluster.node(0);
    let mut last = 0;
    for index in 0..50 {
        last = leader
            .write(set(format!("k{index}"), index), Acks::Leader)
            .await
            .unwrap();
    }
    leader
        .prepare_transfer(2, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(matches!(
        leader
            .write(set("during".to_owned(), 0), Acks::Leader)
            .await,
        Err(Error::Unavailable(_))
    ));
    assert!(cluster.node(2).position().id >= last);
    cluster.elect(Some(2));
    let new_leader = cluster.node(2);
    for index in 0..50 {
        assert!(value_of(&new_leader, &format!("k{index}")).is_some());
    }
    let after = new_leader
        .write(set("after".to_owned(), 1), Acks::Leader)
        .await;
    assert!(after.is_ok(), "{after:?}");

    // A transfer to a node that never catches up times out and writes resume.
    cluster.cut(2, 1);
    new_leader
        .write(set("unseen".to_owned(), 1), Acks::Leader)
        .await
        .unwrap();
    let error = new_leader
        .prepare_transfer(1, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Unavailable(_)), "{error}");
    assert!(new_leader
        .write(set("again".to_owned(), 1), Acks::Leader)
        .await
        .is_ok());
}

/// A planned transfer to a node that stops acknowledging (its disk hangs, it is cut off) is
/// abandoned once the target has acknowledged nothing new for half the lag limit, not at the
/// transfer's whole timeout: writes stop while the leader waits. Before, they stopped for the
/// whole timeout (the controller's `transfer_timeout`, 5 s): 6.5–7.1 s without an
/// acknowledged write in a disk-fault nemesis run when a transfer's target hung before it
/// caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_to_a_node_that_stops_acknowledging_is_abandoned_at_half_the_lag_limit() {
    let mut cluster = Cluster::start(3, 1, options());
    cluster.elect(Some(0));
    let leader = cluster.node(0);
    let first = leader
        .write(set("first".to_owned(), 1), Acks::Leader)
        .await
        .unwrap();
    eventually("node 2 holds the first write", || {
        cluster.node(2).position().id >= first
    })
    .await;
    cluster.cut(0, 2);
    leader
        .write(set("unseen".to_owned(), 1), Acks::Leader)
        .await
        .unwrap();
    let lag_limit = options().leader.lag_limit;
    let timeout = Duration::from_secs(60);
    let started = Instant::now();
    let prepared = tokio::time::timeout(timeout / 2, leader.prepare_transfer(2, timeout)).await;
    let error = match prepared {
        Ok(Err(error)) => error,
        Ok(Ok(())) => panic!("the transfer went ahead to a node that never caught up"),
        Err(_) => panic!(
            "writes stopped for {:?} waiting for a target that acknowledged nothing",
            started.elapsed()
        ),
    };
    println!("abandoned after {:?}: {error}", started.elapsed());
    assert!(matches!(error, Error::Unavailable(_)), "{error}");
    assert!(
        error.to_string().contains("acknowledged nothing new"),
        "{error}"
    );
    assert!(
        started.elapsed() >= lag_limit / 2,
        "{:?}",
        started.elapsed()
    );
    assert!(leader
        .write(set("again".to_owned(), 1), Acks::Leader)
        .await
        .is_ok());
}

/// What a follower reports: its last contact with the leader, whether it is caught up, and
/// how stale its reads may be — bounded while it hears the leader, unbounded once cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_report_contact_catch_up_and_a_staleness_bound() {
    let mut cluster = Cluster::start(2, 1, options());
    cluster.elect(Some(0));
    let leader = cluster.node(0);
    let follower = cluster.node(1);
    let id = leader
        .write(set("a".to_owned(), 1), Acks::Leader)
        .await
        .unwrap();
    assert!(follower.wait_applied(id, Duration::from_secs(10)).await);
    // Fresh and caught up as of a recent fetch answer: on a loaded machine a fetch answer can
    // come later than the lag limit now and then, so wait for one that did not.
    eventually("the follower is fresh and caught up", || {
        // The controller's heartbeat answers, as kvd's driver passes them on.
        follower.confirm_leader(cluster.epoch, Instant::now());
        follower
            .staleness()
            .is_some_and(|staleness| staleness < Duration::from_secs(1))
            && follower.position().caught_up
            && follower
                .leader_contact_age()
                .is_some_and(|age| age < Duration::from_secs(1))
    })
    .await;
    assert_eq!(leader.staleness(), Some(Duration::ZERO));
    cluster.cut(0, 1);
    let cut_at = Instant::now();
    eventually("the bound grows past the cut", || {
        follower
            .staleness()
            .is_some_and(|staleness| staleness >= Duration::from_millis(200))
    })
    .await;
    // No fetch sent after the cut was answered: the bound covers the whole time since.
    assert!(follower.staleness().unwrap() >= cut_at.elapsed());
    // The last answer heard may be of a fetch sent before the cut and answered just after it
    // (a held fetch): the contact age then starts a little later than the cut, but it grows.
    eventually("the contact age grows past the cut", || {
        follower
            .leader_contact_age()
            .is_some_and(|age| age >= Duration::from_millis(150))
    })
    .await;
}

/// A follower asked by the leader of epoch E to install a snapshot installs only a snapshot
/// offered by the leader of E: a node at that address that leads another epoch (or none) is
/// refused, and the follower fetches again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_is_installed_only_from_the_leader_of_the_epoch_that_asked() {
    let mut cluster = Cluster::start(2, 1, options());
    cluster.kill(1).await;
    cluster.elect(Some(0));
    let leader = cluster.node(0);
    for index in 0..2_000u64 {
        leader
            .write(set(format!("k{index}"), index), Acks::Leader)
            .await
            .unwrap();
    }
    let worker = leader.clone();
    tokio::task::spawn_blocking(move || worker.snapshot_and_compact())
        .await
        .unwrap()
        .unwrap();
    assert!(leader.store().first_id() > 1);

    // Node 1 comes back; its link answers snapshot metadata as another epoch's leader would.
    struct Impostor(Link);
    impl Transport for Impostor {
        async fn fetch(
            &self,
            request: &FetchRequest,
            timeout: Duration,
        ) -> Result<FetchResponse, TransportError> {
            self.0.fetch(request, timeout).await
        }
        async fn snapshot_meta(
            &self,
            timeout: Duration,
        ) -> Result<Option<SnapshotMeta>, TransportError> {
            let meta = self.0.snapshot_meta(timeout).await?;
            Ok(meta.map(|meta| SnapshotMeta {
                leader_epoch: meta.leader_epoch + 1,
                ..meta
            }))
        }
        async fn snapshot_chunk(
            &self,
            applied_id: u64,
            offset: u64,
            len: u32,
            timeout: Duration,
        ) -> Result<Vec<u8>, TransportError> {
            self.0
                .snapshot_chunk(applied_id, offset, len, timeout)
                .await
        }
    }
    let dir = cluster.dirs[1].path();
    let follower = Arc::new(Node::open_controlled(open(dir), dir, 1, options()).unwrap());
    follower.apply_cluster_view(&cluster.view(1)).unwrap();
    let link = Impostor(Link {
        net: cluster.net.clone(),
        from: 1,
        to: 0,
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let fetching = tokio::spawn(follower.clone().run_follower(link, async move {
        let _ = stopped.await;
    }));
    eventually("the impostor's snapshot is refused", || {
        matches!(
            follower.cluster_status().link,
            Some(kv_replication::LinkState::Retrying { ref error, .. }) if error.contains("epoch")
        )
    })
    .await;
    assert_eq!(follower.compaction_status().snapshots_installed, 0);
    assert_eq!(follower.store().applied_id(), 0);
    let _ = stop.send(());
    fetching.await.unwrap();

    // From the leader itself, it installs.
    cluster
        .net
        .nodes
        .lock()
        .unwrap()
        .insert(1, follower.clone());
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let link = Link {
        net: cluster.net.clone(),
        from: 1,
        to: 0,
    };
    tokio::spawn(follower.clone().run_follower(link, async move {
        let _ = stopped.await;
    }));
    assert!(follower.wait_applied(2_001, Duration::from_secs(20)).await);
    assert_eq!(follower.compaction_status().snapshots_installed, 1);
}

/// A leader restarted without the committed entries it held — its damaged data was moved
/// aside (`kvd` does that for a `kvd follower N` node), or a power cut under `never` — must
/// not lead while another ISR member may hold them: named leader of the epoch it led it does
/// not ask to lead again but to step down ([`Node::may_lead`]), and named leader of a new epoch
/// it follows nobody. Before, it asked for a new epoch of its own, led it with an empty log,
/// and its followers cut their logs back to match it: every acknowledged write was gone from
/// the whole cluster (found by hand with `kvd`: 2,000 of 2,000 keys lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_lost_committed_entries_does_not_lead_again() {
    let mut cluster = Cluster::start(3, 2, options());
    cluster.elect(Some(1));
    let leader = cluster.node(1);
    let mut last = 0;
    for index in 0..20u64 {
        last = leader
            .write(set(format!("k{index}"), index), Acks::All)
            .await
            .unwrap();
    }
    for id in 0..3 {
        assert!(
            cluster
                .node(id)
                .wait_applied(last, Duration::from_secs(10))
                .await
        );
        cluster.node(id).persist_progress().unwrap();
    }
    assert!(leader.may_lead(&cluster.isr));

    // Killed, and its log lost (as `kvd` moves a damaged log aside); its meta file stays.
    cluster.kill(1).await;
    drop(leader);
    std::fs::remove_dir_all(cluster.dirs[1].path().join("wal")).unwrap();
    cluster.open(1);
    let node = cluster.node(1);
    assert_eq!(node.store().last_id(), 0);
    assert!(!node.may_lead(&cluster.isr), "it lacks committed entries");
    assert!(
        node.may_lead(&BTreeSet::from([1])),
        "alone in the ISR, nobody else may hold them: it leads rather than never again"
    );
    // Still named leader of epoch 1 (faster than its session): it does not lead.
    cluster.publish();
    assert_eq!(node.role(), Role::NoLeader);
    // Named leader of a new epoch anyway: it does not lead either, and writes nothing.
    cluster.elect(Some(1));
    assert_eq!(node.role(), Role::NoLeader, "{:?}", node.cluster_status());
    assert_eq!(node.store().last_id(), 0);
    for id in [0, 2] {
        assert_eq!(
            cluster.node(id).store().last_id(),
            last,
            "node {id} kept its log"
        );
    }

    // The controller elects another ISR member: the node catches up from it and may lead again.
    cluster.isr.remove(&1);
    cluster.elect(Some(0));
    let next = cluster
        .node(0)
        .write(set("after".to_owned(), 1), Acks::Leader)
        .await
        .unwrap();
    assert!(node.wait_applied(next, Duration::from_secs(10)).await);
    for index in 0..20u64 {
        assert!(value_of(&node, &format!("k{index}")).is_some(), "k{index}");
    }
    assert!(node.may_lead(&BTreeSet::from([0, 1, 2])));
}

/// A node alone in its ISR that lost committed entries (its last segment deleted, a power cut
/// under `never`) leads anyway — nobody else may hold them — but never hands their ids out
/// again: it fills them with no-ops of its new epoch, so its epoch's no-op and every later
/// write come after the commit id it recorded, and the log stays contiguous for a follower
/// catching up. Before, the log went on at its last id kept + 1, and an id a client had been
/// answered (an `ETag`, a `min_id`) named another write: a stale `If-Match` on that revision
/// could pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_leader_that_lost_committed_entries_never_reuses_their_ids() {
    let mut cluster = Cluster::start(2, 1, options());
    cluster.elect(Some(0));
    let leader = cluster.node(0);
    let first = leader
        .write(set("k0".to_owned(), 0), Acks::All)
        .await
        .unwrap();
    // Node 1 stops with a prefix of the log; the leader goes on alone in the ISR.
    cluster.kill(1).await;
    cluster.isr = BTreeSet::from([0]);
    cluster.publish();
    let mut last = first;
    while leader.store().segments().len() < 3 || leader.store().segments()[2].first_id + 5 > last {
        last = leader
            .write(set(format!("k{last}"), last), Acks::Leader)
            .await
            .unwrap();
    }
    leader.persist_progress().unwrap();
    let newest = leader.store().segments().last().unwrap().path.clone();
    cluster.kill(0).await;
    drop(leader);
    // The newest segment is lost (deleted); node.meta stays. The log refuses to open without
    // it until told to go on (`point-in-time`, as kvd's refusal names): then it records the
    // segments it kept, and opens from there.
    std::fs::remove_file(newest).unwrap();
    {
        let dir = cluster.dirs[0].path();
        let (store, report) = crate::support::open_in_mode(dir, kv_wal::RecoveryMode::PointInTime);
        assert!(report.dropped.is_some(), "{report}");
        store.close().unwrap();
    }
    cluster.open(0);
    let node = cluster.node(0);
    let kept = node.store().last_id();
    assert!(first < kept && kept < last, "kept {kept} of {last}");
    cluster.elect(Some(0));
    assert_eq!(node.role(), Role::Leader, "alone in the ISR it leads");
    let noop = node.store().last_id();
    assert!(
        noop > last,
        "the epoch's no-op took id {noop}, at or below the committed id {last}"
    );
    let next = node
        .write(set("after".to_owned(), 1), Acks::Leader)
        .await
        .unwrap();
    assert!(
        next > last,
        "a write after the loss took id {next}, at or below the committed id {last}"
    );
    assert_eq!(value_of(&node, &format!("k{last}")), None, "lost");
    // The follower catches up through the filled ids.
    cluster.open(1);
    cluster.publish();
    let follower = cluster.node(1);
    assert!(follower.wait_applied(next, Duration::from_secs(10)).await);
    assert_eq!(value_of(&follower, "after"), Some(b"1".to_vec()));
    assert_eq!(
        value_of(&follower, &format!("k{kept}")),
        value_of(&node, &format!("k{kept}"))
    );
    // The leader's log opens again.
    cluster.kill(1).await;
    drop(follower);
    cluster.kill(0).await;
    drop(node);
    cluster.open(0);
    assert_eq!(cluster.node(0).store().last_id(), next);
}

/// Under `N = 1` a failover to a follower that had not copied the leader's tail cuts that tail
/// from the other followers, below what they had applied as committed (the documented loss of
/// asynchronous replication). Such a follower records the cut as its commit id, so it has lost
/// nothing in the history that survives and may lead at once ([`Node::may_lead`]). Before, the
/// commit id it had saved stayed above its log until new writes passed it, and if the new
/// leader died meanwhile it could not be elected: the cluster stayed leaderless.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_cut_back_by_a_new_leader_may_lead_the_history_that_survives() {
    let mut cluster = Cluster::start(3, 1, options());
    cluster.elect(Some(0));
    let leader = cluster.node(0);
    let mut last = 0;
    for index in 0..5u64 {
        last = leader
            .write(set(format!("a{index}"), index), Acks::Leader)
            .await
            .unwrap();
    }
    for id in [1, 2] {
        assert!(
            cluster
                .node(id)
                .wait_applied(last, Duration::from_secs(10))
                .await
        );
    }
    // Node 2 stops copying; node 1 copies and applies the tail (committed under `N = 1`).
    cluster.cut(0, 2);
    for index in 0..5u64 {
        last = leader
            .write(set(format!("b{index}"), index), Acks::Leader)
            .await
            .unwrap();
    }
    let node1 = cluster.node(1);
    assert!(node1.wait_applied(last, Duration::from_secs(10)).await);
    node1.persist_progress().unwrap();
    let node2_last = cluster.node(2).store().last_id();
    assert!(node2_last < last);

    // Node 0 dies; the controller elects node 2 (in the ISR, behind): node 1 is cut back.
    cluster.kill(0).await;
    drop(leader);
    cluster.heal();
    cluster.elect(Some(2));
    let noop = node2_last + 1;
    eventually("node 1 is cut back to node 2's history", || {
        node1.store().last_id() == noop && node1.store().applied_id() == noop
    })
    .await;
    assert!(
        node1.may_lead(&BTreeSet::from([0, 1, 2])),
        "{:?}",
        node1.cluster_status()
    );
    // Node 2 dies too: node 1 is named leader and leads.
    cluster.kill(2).await;
    cluster.elect(Some(1));
    assert_eq!(node1.role(), Role::Leader, "{:?}", node1.cluster_status());
}
