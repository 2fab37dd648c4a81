//! Real nodes (store, WAL, node driver) over an in-memory transport that can corrupt, drop and
//! fail: followers catch up, refuse damaged batches and recover them, and quorum writes wait.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_replication::{
    last_frame_id, Acks, FetchRequest, FetchResponse, Node, NodeOptions, SnapshotMeta, StreamStart,
    Transport, TransportError, TransportErrorKind,
};
use kv_store::Value;

use crate::support::{chunk_of, eventually, open, open_on_a_faulty_disk, set};

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
        chunk_of(&self.leader, applied_id, offset, len)
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

fn leader_node(dir: &std::path::Path, options: NodeOptions) -> Arc<Node> {
    Arc::new(Node::open_leader(open(dir), dir, options).expect("open leader"))
}

fn follower_node(dir: &std::path::Path, options: NodeOptions) -> Arc<Node> {
    Arc::new(
        Node::open_follower(open(dir), dir, "test://leader".to_owned(), options)
            .expect("open follower"),
    )
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
        .read_frames(1, usize::MAX, 200)
        .unwrap()
        .unwrap();
    let follower_frames = follower
        .store()
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
    assert!(leader.store().first_id() > 1);
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
    // The follower must stay live (not down) through 1,000 writes and a snapshot, however
    // slow a busy machine makes them.
    let mut leader_options = options(1);
    leader_options.leader.follower_down_after = Duration::from_secs(600);
    let leader = leader_node(leader_dir.path(), leader_options);
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
    // Its next fetch (next id 2) has reached the leader: the stall starts from there.
    eventually("the leader hears next id 2", || {
        leader
            .cluster_status()
            .followers
            .is_some_and(|followers| followers.iter().any(|follower| follower.next_id == 2))
    })
    .await;
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
        "segments kept for follower-1 (next id 2): {purge:?}"
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

/// A write acknowledged under the write quorum is visible in the leader's map by the time the
/// write returns, however its acknowledgement raced the fetches that committed it (a fetch
/// raises the leader's commit id under the role lock and publishes it just after; the
/// nemesis suite once saw a read on the leader miss a write acknowledged a moment before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_write_is_visible_on_the_leader_when_it_returns() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let leader = leader_node(dirs[0].path(), options(3));
    let mut loops = Vec::new();
    for (node_id, dir) in (1..).zip(&dirs[1..]) {
        let mut options = options(3);
        options.follower.node_id = node_id;
        let follower = follower_node(dir.path(), options);
        loops.push(spawn_follower(&follower, Direct::to(&leader)));
    }
    let writers: Vec<_> = (0..4u64)
        .map(|writer| {
            let leader = leader.clone();
            tokio::spawn(async move {
                for index in 0..400u64 {
                    let key = format!("w{writer}-{index}");
                    leader
                        .write(set(key.clone(), index), Acks::default())
                        .await
                        .unwrap();
                    assert!(
                        leader.store().get(key.as_bytes()).is_some(),
                        "{key} acknowledged but not visible on the leader"
                    );
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    for (stop, handle) in loops {
        let _ = stop.send(());
        handle.await.unwrap();
    }
}

/// A caller of `write_to_completion` that goes away after its entry was submitted (kv-http's
/// PUT: a client hanging up) does not stop the write half-way: the entry is applied once
/// durable, with no later write to carry it along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_dropped_while_waiting_for_the_disk_is_still_applied() {
    let dir = tempfile::tempdir().unwrap();
    // A slow disk (every fsync 20 ms): the commit that makes the write durable is surely still
    // in flight at the write's first poll. On a quiet machine the committer thread, on the
    // other core, otherwise finished a real fsync before that poll now and then.
    let (store, plan) = open_on_a_faulty_disk(dir.path());
    let leader = Arc::new(Node::open_leader(store, dir.path(), options(1)).expect("open leader"));
    plan.delay_syncs(Duration::from_millis(20));
    let mut dropped_waiting = None;
    for attempt in 0..10 {
        // An entry submitted beside the node, its ticket not yet waited on, leads the log's
        // write group: the write below queues behind it for the committer thread, so its
        // first poll finds it not yet durable (the slow disk sees to that; tried again if not).
        let held = leader
            .store()
            .submit(set(format!("held-{attempt}"), 1))
            .unwrap();
        let key = format!("dropped-{attempt}");
        let write = leader.write_to_completion(set(key.clone(), 2).into(), Acks::Leader);
        let polled_once = tokio::time::timeout(Duration::ZERO, write).await;
        drop(held);
        if polled_once.is_err() {
            dropped_waiting = Some(key);
            break;
        }
    }
    let key = dropped_waiting.expect("a write still waiting for the disk at its first poll");
    eventually("the dropped write is applied", || {
        leader.store().get(key.as_bytes()).is_some()
    })
    .await;
}

/// A write that finds the log idle leads its write group: its frames are written at once and
/// its `fdatasync` runs on the worker that polls it. The stream those frames woke must push
/// them before that fsync ends, so a follower's write and fsync overlap the leader's. Before,
/// the woken stream task sat in that worker's LIFO slot (which no other tokio worker steals)
/// until the write's poll returned: every push came a whole leader fsync late, and a write
/// quorum of 2 paid both fsyncs one after the other (3 nodes, `--write-quorum 2`, one client:
/// p50 718 µs before, 567 µs after, on this machine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_streams_push_a_write_before_the_leaders_fsync() {
    const FSYNC: Duration = Duration::from_millis(600);
    let dir = tempfile::tempdir().unwrap();
    let (store, plan) = open_on_a_faulty_disk(dir.path());
    let leader = Arc::new(Node::open_leader(store, dir.path(), options(1)).expect("open leader"));
    let opening = FetchRequest {
        cluster_id: 0,
        node_id: 1,
        leader_epoch: 0,
        next_id: 1,
        last_epoch: 0,
        durable_id: 0,
        commit_id: 0,
        bytes_max: 1 << 20,
        wait_ms: 500,
    };
    let StreamStart::Stream(mut stream) = leader.open_stream(&opening) else {
        panic!("the leader answered the opening instead of streaming");
    };
    // The follower's side: records when each id was pushed, and acknowledges every push as
    // durable at once.
    let pushed: Arc<std::sync::Mutex<Vec<(u64, Instant)>>> = Arc::default();
    let pusher = tokio::spawn({
        let pushed = pushed.clone();
        async move {
            let mut seq = 1;
            while let Some((_, answer)) = stream.next_push().await {
                let FetchResponse::Entries { frames, .. } = answer else {
                    break;
                };
                let Some(last) = last_frame_id(&frames) else {
                    continue;
                };
                pushed.lock().unwrap().push((last, Instant::now()));
                seq += 1;
                let ack = FetchRequest {
                    next_id: last + 1,
                    durable_id: last,
                    ..opening
                };
                let _ = stream.on_ack(seq, &ack);
            }
        }
    });
    let pushed_through = |id: u64| pushed.lock().unwrap().iter().any(|&(last, _)| last >= id);
    let last_id = leader.store().last_id();
    if last_id > 0 {
        eventually("the stream pushed the log", || pushed_through(last_id)).await;
    }

    plan.delay_syncs(FSYNC);
    let started = Instant::now();
    let written = tokio::spawn({
        let leader = leader.clone();
        async move {
            leader
                .write_to_completion(set("k".to_owned(), 1).into(), Acks::Leader)
                .await
        }
    })
    .await
    .unwrap()
    .expect("written");
    let durable_after = started.elapsed();
    let pushed_after = pushed
        .lock()
        .unwrap()
        .iter()
        .find(|&&(last, _)| last >= written.id)
        .map(|&(_, at)| at.duration_since(started))
        .expect("the write was pushed by the time it was durable");
    println!(
        "write {}: pushed after {pushed_after:?}, durable after {durable_after:?}",
        written.id
    );
    assert!(durable_after >= FSYNC, "{durable_after:?}");
    assert!(
        pushed_after < FSYNC / 2,
        "the write was pushed {pushed_after:?} after it was written, behind the leader's \
         {FSYNC:?} fsync"
    );
    pusher.abort();
}

/// Writes that arrive together share an `fdatasync` on a runtime with a single worker thread
/// (kvd on a one-CPU machine or container: tokio starts one worker per CPU). A write that finds
/// the log idle leads its write group and runs the fsync on the worker that polls it; it used
/// to do so at its first poll, so the other writes ready on that worker could not even append
/// until the fsync ended, and each then found the log idle in turn: one fsync per write, one
/// after another (kvd `leader` under `taskset -c 0`, wrk PUT at 64 connections: ~5,300/s
/// against ~45,000/s with two workers). The leader now yields once before its fsync, the
/// others queue behind it, and the committer takes them in one group.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn writes_ready_together_on_a_single_worker_share_an_fsync() {
    const WRITES: usize = 32;
    let dir = tempfile::tempdir().unwrap();
    let (store, plan) = open_on_a_faulty_disk(dir.path());
    let leader = Arc::new(Node::open_leader(store, dir.path(), options(1)).expect("open leader"));
    // A slow disk, so that every write is ready long before any fsync ends.
    plan.delay_syncs(Duration::from_millis(20));
    let fsyncs_before = leader.store().wal_stats().fsyncs;
    let (start, started) = tokio::sync::watch::channel(false);
    let at_the_gate = Arc::new(AtomicU64::new(0));
    let writes: Vec<_> = (0..WRITES)
        .map(|index| {
            let leader = leader.clone();
            let mut started = started.clone();
            let at_the_gate = at_the_gate.clone();
            tokio::spawn(async move {
                at_the_gate.fetch_add(1, Ordering::SeqCst);
                let _ = started.wait_for(|&go| go).await;
                leader
                    .write_to_completion(set(format!("k{index}"), 1).into(), Acks::Leader)
                    .await
            })
        })
        .collect();
    // Every write waits at the gate; opening it makes them all ready on the one worker at once.
    eventually("every write waits at the gate", || {
        at_the_gate.load(Ordering::SeqCst) == WRITES as u64
    })
    .await;
    start.send(true).unwrap();
    for write in writes {
        write.await.unwrap().expect("written");
    }
    let fsyncs = leader.store().wal_stats().fsyncs - fsyncs_before;
    println!("{WRITES} writes ready together on one worker: {fsyncs} fsyncs");
    assert!(
        fsyncs <= WRITES as u64 / 4,
        "{WRITES} writes ready at once on one worker took {fsyncs} fsyncs: they did not share them"
    );
}

/// A leader and a follower that both snapshot with nothing written since, so the seal before
/// each snapshot and the purge after it leave each log without a record, go on replicating.
/// Once the empty log's last id fell back to 0: the follower fetched from its next id with
/// epoch 0 and the leader (whose own empty log also ended at 0) answered "diverged, truncate
/// after 0", which the follower could not do (its log starts past its purge) and stopped on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_emptied_by_their_snapshots_go_on_replicating() {
    fn open_large(dir: &std::path::Path) -> Arc<kv_store::Store> {
        let mut options = kv_store::StoreOptions {
            snapshot_dir: Some(dir.join("snapshots")),
            ..kv_store::StoreOptions::default()
        };
        // One segment holds every write: only the seal before the snapshot ends it.
        options.wal.segment_bytes_max = 64 << 20;
        Arc::new(
            kv_store::Store::open(dir.join("wal"), options)
                .expect("open")
                .0,
        )
    }
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let mut leader_options = options(1);
    leader_options.leader.follower_down_after = Duration::from_secs(600);
    let leader = Arc::new(
        Node::open_leader(
            open_large(leader_dir.path()),
            leader_dir.path(),
            leader_options,
        )
        .unwrap(),
    );
    let follower = Arc::new(
        Node::open_follower(
            open_large(follower_dir.path()),
            follower_dir.path(),
            "test://leader".to_owned(),
            options(1),
        )
        .unwrap(),
    );
    let (stop, loop_handle) = spawn_follower(&follower, Direct::to(&leader));
    // More than the 1 MiB a segment needs before a snapshot seals it.
    let big = "x".repeat(8 << 10);
    for index in 0..200u64 {
        let op = kv_store::Op::Set {
            key: format!("k{index}").into_bytes(),
            value: Value::json(format!("\"{big}{index}\"")),
        };
        leader.write(op, Acks::Leader).await.unwrap();
    }
    assert!(follower.wait_applied(200, Duration::from_secs(20)).await);
    eventually("the leader hears the follower hold id 200", || {
        leader
            .cluster_status()
            .followers
            .is_some_and(|followers| followers.iter().any(|follower| follower.next_id == 201))
    })
    .await;
    for node in [&follower, &leader] {
        let worker = node.clone();
        let (info, purge) = tokio::task::spawn_blocking(move || worker.snapshot_and_compact())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(info.applied_id, 200);
        assert!(!purge.segments_removed.is_empty(), "{purge:?}");
        // The log holds no record: it starts after where it ends.
        assert_eq!(node.store().first_id(), 201);
        assert_eq!(node.store().last_id(), 200);
    }
    // Fetches go on over the emptied logs; the next write reaches the follower.
    tokio::time::sleep(Duration::from_millis(200)).await;
    leader
        .write(set("after".to_owned(), 1), Acks::Leader)
        .await
        .unwrap();
    assert!(
        follower.wait_applied(201, Duration::from_secs(10)).await,
        "{:?}",
        follower.cluster_status()
    );
    assert!(follower.store().get(b"k0").is_some());
    assert!(!matches!(
        follower.cluster_status().link,
        Some(kv_replication::LinkState::Stopped { .. })
    ));
    let _ = stop.send(());
    loop_handle.await.unwrap();
}

/// An automatic snapshot that cannot be written (its directory replaced by a file here; a full
/// disk alike) is tried again after a pause that doubles — not at every maintenance check,
/// writing up to the free space each time — and `/compaction/status` says why; once it can
/// be written, it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_snapshot_is_tried_again_after_a_growing_pause_not_at_every_check() {
    let dir = tempfile::tempdir().unwrap();
    let mut node_options = options(1);
    node_options.compaction.snapshot_interval = Some(Duration::from_millis(1));
    let leader = leader_node(dir.path(), node_options);
    leader
        .write(set("a".to_owned(), 1), Acks::Leader)
        .await
        .unwrap();
    let snapshot_dir = dir.path().join("snapshots");
    let _ = std::fs::remove_dir_all(&snapshot_dir);
    std::fs::write(&snapshot_dir, b"not a directory").unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let maintenance = tokio::spawn(leader.clone().run_maintenance(
        kv_replication::MaintenanceOptions {
            check_interval: Duration::from_millis(5),
            ..kv_replication::MaintenanceOptions::default()
        },
        async {
            let _ = stopped.await;
        },
    ));
    // 2.5 s of checks every 5 ms: tries at about 0, 1 and 3 s.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let status = leader.compaction_status();
    println!(
        "{} failed tries in 2.5 s: {:?}",
        status.snapshots_failed, status.last_snapshot_failure
    );
    assert!(
        (1..=3).contains(&status.snapshots_failed),
        "{} tries",
        status.snapshots_failed
    );
    assert!(status.last_snapshot_failure.is_some());
    assert_eq!(status.snapshots_written, 0);
    // Writable again: the next try writes it, and the failure is no longer reported.
    std::fs::remove_file(&snapshot_dir).unwrap();
    std::fs::create_dir(&snapshot_dir).unwrap();
    eventually("a snapshot once it can be written", || {
        leader.compaction_status().snapshots_written >= 1
    })
    .await;
    assert_eq!(leader.compaction_status().last_snapshot_failure, None);
    let _ = stop.send(());
    maintenance.await.unwrap();
}

/// A leader whose disk stops answering keeps answering writes: the write whose `write` the
/// disk holds keeps the worker that polls it, and the next write queues behind it and ends at
/// the acks timeout, its outcome unknown (`Error::NotDurable`), rather than wait for the disk
/// on the other worker. Before, the WAL wrote under its writer lock, the next write's submit
/// waited for that lock — on the second of the two workers — and the node answered nothing
/// until the disk did. Once the disk answers, both writes commit.
#[test]
fn a_write_on_a_disk_that_hangs_ends_at_the_acks_timeout_and_holds_no_other_worker() {
    let dir = tempfile::tempdir().unwrap();
    let flags = tempfile::tempdir().unwrap();
    let stalled = flags.path().join("stalled");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (store, plan) = open_on_a_faulty_disk(dir.path());
    let mut node_options = options(1);
    node_options.acks_timeout = Duration::from_millis(500);
    let leader = Arc::new(Node::open_leader(store, dir.path(), node_options).expect("open leader"));
    let write = |key: &str| {
        let leader = leader.clone();
        let command = set(key.to_owned(), 1).into();
        let (sender, receiver) = std::sync::mpsc::channel();
        runtime.spawn(async move {
            let _ = sender.send(leader.write_command(command, Acks::Leader).await);
        });
        receiver
    };
    write("before")
        .recv_timeout(Duration::from_secs(10))
        .expect("a write before the hang")
        .expect("written");

    plan.stall_while_exists(stalled.clone());
    std::fs::write(&stalled, b"").unwrap();
    let fired = plan.faults_fired();
    let held = write("held");
    let started = Instant::now();
    while plan.faults_fired() == fired && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(
        plan.faults_fired() > fired,
        "the first write never reached the disk"
    );
    let queued = write("queued").recv_timeout(Duration::from_secs(3));
    let read = {
        let leader = leader.clone();
        let (sender, receiver) = std::sync::mpsc::channel();
        runtime.spawn(async move {
            let _ = sender.send(leader.store().get(b"before").is_some());
        });
        receiver.recv_timeout(Duration::from_secs(3))
    };
    std::fs::remove_file(&stalled).unwrap();
    let queued = queued.expect("the second write answered while the disk hung");
    match queued {
        Err(kv_replication::Error::NotDurable { waited_ms, .. }) => {
            assert!(waited_ms >= 500, "waited {waited_ms} ms")
        }
        other => panic!("the second write while the disk hung: {other:?}"),
    }
    assert_eq!(
        read,
        Ok(true),
        "a task on the runtime ran while the disk hung"
    );

    held.recv_timeout(Duration::from_secs(10))
        .expect("the held write ends once the disk answers")
        .expect("the held write is acknowledged");
    write("after")
        .recv_timeout(Duration::from_secs(10))
        .expect("a write after the hang")
        .expect("written");
    for key in ["before", "held", "queued", "after"] {
        assert!(
            leader.store().get(key.as_bytes()).is_some(),
            "{key} applied"
        );
    }
}
