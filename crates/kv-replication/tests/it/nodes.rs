//! Real nodes (store, WAL, node driver) over an in-memory transport that can corrupt, drop and
//! fail: followers catch up, refuse damaged batches and recover them, and quorum writes wait.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kv_replication::{
    Acks, FetchRequest, FetchResponse, Node, NodeOptions, Role, SnapshotMeta, Transport,
    TransportError, TransportErrorKind,
};
use kv_store::{Op, Store, StoreOptions, Value};

/// Calls the leader directly; corrupts the response of the fetches numbered in `corrupt`.
struct Direct {
    leader: Arc<Node>,
    fetches: AtomicU64,
    corrupt_every: u64,
    corrupted: AtomicU64,
    down: Arc<std::sync::atomic::AtomicBool>,
    snapshot_chunks: AtomicU64,
    fail_snapshot_chunk_at: u64,
}

impl Direct {
    /// A faithful transport to `leader`: no corruption, never down, no broken downloads.
    fn to(leader: &Arc<Node>) -> Direct {
        Direct {
            leader: leader.clone(),
            fetches: AtomicU64::new(0),
            corrupt_every: 0,
            corrupted: AtomicU64::new(0),
            down: Arc::default(),
            snapshot_chunks: AtomicU64::new(0),
            fail_snapshot_chunk_at: 0,
        }
    }
}

/// Runs `follower`'s fetch loop over `transport` until the returned sender is used (or
/// dropped).
fn spawn_follower(
    follower: &Arc<Node>,
    transport: Direct,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(follower.clone().run_follower(transport, async move {
        let _ = stopped.await;
    }));
    (stop, handle)
}

impl Transport for Direct {
    async fn snapshot_meta(
        &self,
        _timeout: Duration,
    ) -> Result<Option<SnapshotMeta>, TransportError> {
        Ok(self.leader.snapshot_meta())
    }

    async fn snapshot_chunk(
        &self,
        applied_id: u64,
        offset: u64,
        len: u32,
        _timeout: Duration,
    ) -> Result<Vec<u8>, TransportError> {
        let chunks = self.snapshot_chunks.fetch_add(1, Ordering::SeqCst) + 1;
        if self.fail_snapshot_chunk_at == chunks {
            return Err(TransportError::new(
                TransportErrorKind::Connect,
                "connection reset during the snapshot download (test)",
            ));
        }
        self.leader
            .snapshot_chunk(applied_id, offset, len)
            .ok_or_else(|| TransportError::new(TransportErrorKind::Status, "gone"))?
            .map_err(|error| TransportError::new(TransportErrorKind::Status, error.to_string()))
    }

    async fn fetch(
        &self,
        request: &FetchRequest,
        timeout: Duration,
    ) -> Result<FetchResponse, TransportError> {
        if self.down.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
            return Err(TransportError::new(
                TransportErrorKind::Connect,
                "leader unreachable (test)",
            ));
        }
        let number = self.fetches.fetch_add(1, Ordering::SeqCst) + 1;
        let mut response = tokio::time::timeout(timeout, self.leader.handle_fetch(request, true))
            .await
            .map_err(|_| TransportError::new(TransportErrorKind::Timeout, "timeout"))?;
        if self.corrupt_every > 0 && number.is_multiple_of(self.corrupt_every) {
            if let FetchResponse::Entries { frames, .. } = &mut response {
                if !frames.is_empty() {
                    let middle = frames.len() / 2;
                    frames[middle] ^= 0x40;
                    self.corrupted.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        Ok(response)
    }
}

fn open(dir: &std::path::Path) -> Arc<Store> {
    let mut options = StoreOptions {
        snapshot_dir: Some(dir.join("snapshots")),
        ..StoreOptions::default()
    };
    options.wal.segment_bytes_max = 8192;
    Arc::new(Store::open(dir.join("wal"), options).expect("open store").0)
}

fn leader_node(dir: &std::path::Path, options: NodeOptions) -> Arc<Node> {
    Arc::new(Node::open_leader(open(dir), dir, options).expect("open leader"))
}

fn follower_node(dir: &std::path::Path, options: NodeOptions) -> Arc<Node> {
    Arc::new(
        Node::open_follower(open(dir), dir, "test://leader".to_owned(), options)
            .expect("open follower"),
    )
}

/// Waits (up to 10 s) until `condition` holds.
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn set(key: String, value: u64) -> Op {
    Op::Set {
        key: key.into_bytes(),
        value: Value::json(value.to_string()),
    }
}

fn options(write_quorum: usize) -> NodeOptions {
    let mut options = NodeOptions::default();
    options.leader.write_quorum = write_quorum;
    options.follower.fetch_wait = Duration::from_millis(50);
    options.follower.backoff_initial = Duration::from_millis(5);
    options.acks_timeout = Duration::from_secs(10);
    options
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_refuses_corrupted_batches_and_recovers_them_from_the_leader() {
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let leader = leader_node(leader_dir.path(), options(2));
    let mut follower_options = options(2);
    follower_options.follower.fetch_bytes_max = 512; // many small batches
    let follower = follower_node(follower_dir.path(), follower_options);
    let transport = Direct {
        corrupt_every: 3,
        ..Direct::to(&leader)
    };
    let (stop, loop_handle) = spawn_follower(&follower, transport);
    // Writes with a quorum of 2 need the follower: each one proves it holds the entry.
    for index in 0..200u64 {
        let id = match leader
            .write(set(format!("k{index}"), index), Acks::Quorum)
            .await
        {
            Ok(id) => id,
            Err(error) => panic!(
                "{error}\nleader: {:?}\nfollower: {:?}",
                leader.cluster_status(),
                follower.cluster_status()
            ),
        };
        assert_eq!(id, index + 1);
    }
    assert!(
        follower.wait_applied(200, Duration::from_secs(10)).await,
        "follower never applied 200"
    );
    let status = follower.cluster_status();
    let refused = status.corrupt_batches_refused.unwrap();
    assert!(refused > 0, "no corrupted batch reached the follower");
    for index in 0..200u64 {
        let value = follower
            .store()
            .get(format!("k{index}").as_bytes())
            .expect("replicated")
            .to_value();
        assert_eq!(value, Value::json(index.to_string()));
    }
    // Byte-identical WALs: entries travel with the leader's CRCs.
    let leader_frames = leader
        .store()
        .wal()
        .read_frames(1, usize::MAX, 200)
        .unwrap()
        .unwrap();
    let follower_frames = follower
        .store()
        .wal()
        .read_frames(1, usize::MAX, 200)
        .unwrap()
        .unwrap();
    assert_eq!(leader_frames, follower_frames);
    println!("{refused} corrupted batch(es) refused and re-fetched");
    let _ = stop.send(());
    loop_handle.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_writes_time_out_without_followers_and_commit_when_one_returns() {
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let mut leader_options = options(2);
    leader_options.acks_timeout = Duration::from_millis(300);
    let leader = leader_node(leader_dir.path(), leader_options);

    // No follower: the write is durable on the leader but not acknowledged, and not visible.
    let error = leader
        .write(set("k".to_owned(), 1), Acks::Quorum)
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            kv_replication::Error::AcksTimeout {
                id: 1,
                commit_id: 0,
                ..
            }
        ),
        "{error}"
    );
    assert!(
        leader.store().get(b"k").is_none(),
        "an uncommitted write is visible"
    );
    assert_eq!(
        leader
            .write(set("l".to_owned(), 2), Acks::Leader)
            .await
            .unwrap(),
        2
    );

    // A follower joins: both entries commit and become visible.
    let follower = follower_node(follower_dir.path(), options(2));
    let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let transport = Direct {
        down: down.clone(),
        ..Direct::to(&leader)
    };
    let (stop, loop_handle) = spawn_follower(&follower, transport);
    assert!(
        leader.wait_applied(2, Duration::from_secs(10)).await,
        "entries never committed"
    );
    assert!(leader.store().get(b"k").is_some());
    assert!(follower.wait_applied(2, Duration::from_secs(10)).await);
    assert_eq!(
        leader
            .write(set("m".to_owned(), 3), Acks::All)
            .await
            .unwrap(),
        3
    );

    // The leader becomes unreachable: quorum writes time out, leader acks still succeed.
    down.store(true, Ordering::SeqCst);
    let error = leader
        .write(set("n".to_owned(), 4), Acks::Quorum)
        .await
        .unwrap_err();
    assert!(
        matches!(error, kv_replication::Error::AcksTimeout { id: 4, .. }),
        "{error}"
    );
    down.store(false, Ordering::SeqCst);
    assert!(
        follower.wait_applied(4, Duration::from_secs(10)).await,
        "no catch-up after the outage"
    );
    let _ = stop.send(());
    loop_handle.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_of_another_cluster_stops_and_keeps_its_data() {
    let leader_dir = tempfile::tempdir().unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let leader = leader_node(leader_dir.path(), options(1));
    let other = leader_node(other_dir.path(), options(1));
    leader
        .write(set("a".to_owned(), 1), Acks::Leader)
        .await
        .unwrap();
    other
        .write(set("b".to_owned(), 1), Acks::Leader)
        .await
        .unwrap();
    let follower = follower_node(follower_dir.path(), options(1));
    let direct = |node: &Arc<Node>| Direct::to(node);
    // Join the first cluster and copy its entry.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let first = tokio::spawn(follower.clone().run_follower(direct(&leader), async move {
        let _ = stopped.await;
    }));
    assert!(follower.wait_applied(1, Duration::from_secs(10)).await);
    let _ = stop.send(());
    first.await.unwrap();
    // Pointed at another cluster's leader, it stops on its own and says why.
    tokio::time::timeout(
        Duration::from_secs(10),
        follower
            .clone()
            .run_follower(direct(&other), std::future::pending()),
    )
    .await
    .expect("the loop stops by itself");
    let link = follower.cluster_status().link.unwrap();
    assert!(
        matches!(&link, kv_replication::LinkState::Stopped { reason } if reason.contains("cluster")),
        "{link:?}"
    );
    assert!(follower.store().get(b"a").is_some(), "its data is kept");
    assert!(follower.store().get(b"b").is_none(), "histories never mix");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_a_compacted_log_installs_the_snapshot_resuming_a_broken_download() {
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let mut leader_options = options(1);
    leader_options.compaction.snapshot_chunk_bytes = 1024; // many chunks
    let leader = leader_node(leader_dir.path(), leader_options.clone());
    for index in 0..2_000u64 {
        leader
            .write(set(format!("k{index}"), index), Acks::Leader)
            .await
            .unwrap();
    }
    let worker = leader.clone();
    let (info, purge) = tokio::task::spawn_blocking(move || worker.snapshot_and_compact())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.applied_id, 2_000);
    assert!(
        !purge.segments_removed.is_empty(),
        "no follower yet: the log is compacted"
    );
    assert!(leader.store().wal().first_id().unwrap() > 1);
    for index in 2_000..2_100u64 {
        leader
            .write(set(format!("k{index}"), index), Acks::Leader)
            .await
            .unwrap();
    }

    let follower = follower_node(follower_dir.path(), leader_options);
    let transport = Direct {
        fail_snapshot_chunk_at: 5, // the download breaks after four chunks
        ..Direct::to(&leader)
    };
    let (stop, loop_handle) = spawn_follower(&follower, transport);
    assert!(
        follower.wait_applied(2_100, Duration::from_secs(20)).await,
        "{:?}",
        follower.cluster_status()
    );
    for index in [0u64, 1_999, 2_000, 2_099] {
        let value = follower
            .store()
            .get(format!("k{index}").as_bytes())
            .expect("present")
            .to_value();
        assert_eq!(value, Value::json(index.to_string()));
    }
    assert_eq!(follower.compaction_status().snapshots_installed, 1);
    let _ = stop.send(());
    loop_handle.await.unwrap();
    // It restarts from the snapshot plus its own log.
    drop(follower);
    let store = open(follower_dir.path());
    assert_eq!(
        store.snapshot_load().loaded.as_ref().map(|(_, id)| *id),
        Some(2_000)
    );
    assert_eq!(store.applied_id(), 2_100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_keeps_what_a_live_follower_needs_within_the_retention_limit() {
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let leader = leader_node(leader_dir.path(), options(1));
    let follower = follower_node(follower_dir.path(), options(1));
    let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let transport = Direct {
        down: down.clone(),
        ..Direct::to(&leader)
    };
    let (stop, loop_handle) = spawn_follower(&follower, transport);
    leader
        .write(set("a".to_owned(), 1), Acks::Leader)
        .await
        .unwrap();
    assert!(follower.wait_applied(1, Duration::from_secs(10)).await);
    // The follower stalls (still counted live), the leader writes on and snapshots.
    down.store(true, Ordering::SeqCst);
    for index in 0..1_000u64 {
        leader
            .write(set(format!("k{index}"), index), Acks::Leader)
            .await
            .unwrap();
    }
    let worker = leader.clone();
    let (_, purge) = tokio::task::spawn_blocking(move || worker.snapshot_and_compact())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        purge.purge_before, 2,
        "segments kept for follower-1 (next id 2)"
    );
    assert_eq!(purge.retained_for[0].decision, "kept");
    assert!(purge.segments_removed.is_empty());
    down.store(false, Ordering::SeqCst);
    assert!(follower.wait_applied(1_001, Duration::from_secs(20)).await);
    assert_eq!(
        follower.compaction_status().snapshots_installed,
        0,
        "caught up from the log, not a snapshot"
    );
    let _ = stop.send(());
    loop_handle.await.unwrap();
}

/// The role-change seam failover builds on: a follower promoted with `become_leader` at a new
/// epoch takes writes in it (its fetch loop ends by itself), the old leader demoted with
/// `become_follower` refuses writes, answers a held fetch with "not the leader", fails a write
/// still waiting for its quorum, and then follows the new leader; stale epochs are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_change_at_run_time_through_become_leader_and_become_follower() {
    let old_dir = tempfile::tempdir().unwrap();
    let new_dir = tempfile::tempdir().unwrap();
    let old = leader_node(old_dir.path(), options(2));
    let new = follower_node(new_dir.path(), options(2));
    let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let transport = Direct {
        down: down.clone(),
        ..Direct::to(&old)
    };
    let (_stop, loop_handle) = spawn_follower(&new, transport);
    assert_eq!(
        old.write(set("a".to_owned(), 1), Acks::Quorum)
            .await
            .unwrap(),
        1
    );
    assert!(new.wait_applied(1, Duration::from_secs(10)).await);

    // The follower about to be promoted loses the old leader: a write of the old leader
    // waits for a quorum it will never get, and a fetch is held on the old leader.
    down.store(true, Ordering::SeqCst);
    eventually("the follower's fetches fail", || {
        matches!(
            new.cluster_status().link,
            Some(kv_replication::LinkState::Retrying { .. })
        )
    })
    .await;
    let waiting_write = tokio::spawn({
        let old = old.clone();
        async move { old.write(set("lost".to_owned(), 2), Acks::Quorum).await }
    });
    eventually("the lost write is in the old leader's log", || {
        old.store().last_id() == 2
    })
    .await;
    let held_fetch = tokio::spawn({
        let old = old.clone();
        async move {
            let request = FetchRequest {
                cluster_id: u64::from_str_radix(&old.cluster_status().cluster_id, 16).unwrap(),
                follower_id: "follower-9".to_owned(),
                next_id: 3,
                last_epoch: 1,
                durable_id: 0,
                commit_id: u64::MAX,
                bytes_max: 1 << 20,
                wait_ms: 10_000,
            };
            old.handle_fetch(&request, true).await
        }
    });
    eventually("the fetch is held", || {
        old.cluster_status()
            .followers
            .unwrap_or_default()
            .iter()
            .any(|follower| follower.follower_id == "follower-9")
    })
    .await;

    assert!(matches!(
        new.become_leader(1),
        Err(kv_replication::Error::StaleEpoch {
            epoch: 1,
            highest: 1
        })
    ));
    new.become_leader(2).unwrap();
    assert_eq!(new.role(), Role::Leader);
    tokio::time::timeout(Duration::from_secs(10), loop_handle)
        .await
        .expect("the fetch loop ends when its node leads")
        .unwrap();

    old.become_follower("test://new".to_owned(), 2).unwrap();
    assert_eq!(
        old.role(),
        Role::Follower {
            leader_url: "test://new".to_owned()
        }
    );
    let write = tokio::time::timeout(Duration::from_secs(5), waiting_write)
        .await
        .expect("a waiting write ends at the step-down")
        .unwrap();
    assert!(
        matches!(write, Err(kv_replication::Error::SteppedDown { id: 2, .. })),
        "{write:?}"
    );
    let answer = tokio::time::timeout(Duration::from_secs(5), held_fetch)
        .await
        .expect("a held fetch ends at the step-down")
        .unwrap();
    assert_eq!(
        answer,
        FetchResponse::NotLeader {
            leader_url: Some("test://new".to_owned())
        }
    );
    assert!(matches!(
        old.write(set("b".to_owned(), 3), Acks::Leader).await,
        Err(kv_replication::Error::NotLeader { leader_url: Some(url) }) if url == "test://new"
    ));
    let meta = kv_replication::NodeMeta::load(&kv_wal::fs::StdFs, old_dir.path())
        .unwrap()
        .unwrap();
    assert_eq!(
        meta.epoch, 2,
        "the new leader's epoch is on disk before any fetch"
    );

    // The new leader writes in its epoch; the old one follows it and cuts its lost entry.
    let (_stop, _loop_handle) = spawn_follower(&old, Direct::to(&new));
    let id = new
        .write(set("c".to_owned(), 4), Acks::Quorum)
        .await
        .unwrap();
    assert_eq!((id, new.store().epoch_at(id)), (2, Some(2)));
    assert!(old.wait_applied(2, Duration::from_secs(10)).await);
    assert_eq!(old.store().epoch_at(2), Some(2));
    assert!(old.store().get(b"lost").is_none() && old.store().get(b"c").is_some());
}
