//! A leader whose disk fails: its log refuses writes from the failed `fdatasync` on (kv-wal
//! never retries one), so it hands its leadership to the in-sync replica holding the most of
//! its log, which takes the writes with none acknowledged lost.

use std::time::{Duration, Instant};

use serde_json::Value as Json;

use super::cluster::{expect_status, Cluster};
use super::load::{assert_holds_all, Writers};
use crate::harness::{metric_value, request_within, Answer, Kvd, DEADLINE};

/// Node 0's WAL fails this fsync or write (counted from its start: open, its epoch's no-op
/// and the writes before it; three writers at about one fsync and one write per group commit
/// reach it in a second or two).
const LEADER_FAULTS: [(&str, &str); 2] = [
    ("KVD_FAULT_FSYNC_FAIL_AT", "120"),
    ("KVD_FAULT_WRITE_FAIL_AT", "120"),
];

#[test]
fn a_leader_whose_disk_fails_hands_its_leadership_over_and_loses_no_acknowledged_write() {
    for (variable, at) in LEADER_FAULTS {
        println!("node 0 with {variable}={at}");
        hand_over_after(variable, at);
    }
}

fn hand_over_after(variable: &str, at: &str) {
    let fault = vec![(variable.to_owned(), at.to_owned())];
    let mut cluster = Cluster::start_first_with_env(
        3,
        3,
        |_| Vec::new(),
        |index| {
            if index == 0 {
                fault.clone()
            } else {
                Vec::new()
            }
        },
    );
    let (leader, epoch) = cluster.wait_for_leader(None);
    assert_eq!(leader, 0);
    // The default write quorum (1): a write is acknowledged once the leader alone holds it,
    // so only the hand-over's wait for the successor keeps the last ones.
    let writers = Writers::start(&cluster, 3, "");
    let started = Instant::now();
    let failed_at = loop {
        let health = cluster.request(0, "GET", "/health", None);
        if let Ok(answer) = health {
            let detail = answer.json()["detail"].as_str().unwrap_or("").to_owned();
            if answer.status == 503 && detail.contains("the WAL refuses writes") {
                println!("node 0: {detail}");
                break Instant::now();
            }
        }
        assert!(
            started.elapsed() < DEADLINE,
            "node 0's WAL did not fail within {DEADLINE:?} ({} writes acknowledged)",
            writers.acked_count()
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let acked_at_failure = writers.acked_count();
    let (successor, new_epoch) = cluster.wait_for_leader(Some(0));
    println!(
        "node {successor} leads epoch {new_epoch} {:?} after node 0's WAL failed",
        failed_at.elapsed()
    );
    assert!(new_epoch > epoch);
    writers.wait_for_more(100);
    println!(
        "{} writes acknowledged by the failure, {} in all",
        acked_at_failure,
        writers.acked_count()
    );
    let acked = writers.stop();
    for index in 1..3 {
        assert_holds_all(&cluster, index, &acked, "after the hand-over");
    }
    // The old leader follows, its log still refusing writes: unhealthy, saying why.
    let health = cluster.request(0, "GET", "/health", None).expect("answers");
    assert_eq!(health.status, 503);
    let status: Json = cluster.status(0).expect("answers");
    assert_eq!(status["role"], "follower", "{status}");

    // Restarted on a healthy disk, it copies what it missed and holds every write.
    cluster.nodes[0].env.clear();
    cluster.terminate(0);
    cluster.start_node(0);
    cluster.wait_until_formed();
    assert_holds_all(&cluster, 0, &acked, "node 0 restarted");
}

/// A leader whose disk stops answering — a hung device, a frozen file system — is alive and
/// reachable, yet completes no write. The cluster must not wait on it: another node leads
/// within a few sessions, the writes go on, nothing acknowledged is lost, and once the disk
/// answers again the old leader follows and holds every write. Two kinds of hang:
/// `KVD_FAULT_DISK_STALL_FILE` (every write, `fsync`, creation and rename of the node waits,
/// as under `fsfreeze`) and `KVD_FAULT_FSYNC_STALL_FILE` (writes land in the page cache, only
/// the `fsync`s never return); each with the data leader a plain member of the controller
/// quorum, whose session heartbeats need no disk, and with the data leader the controller's
/// Raft leader as well, whose Raft log then waits too. (Found by hand with `fsfreeze` on
/// loop-mounted ext4 file systems; this test makes it a guarantee.)
#[test]
fn a_leader_whose_disk_hangs_is_replaced_and_loses_no_acknowledged_write() {
    let scratch = tempfile::tempdir().expect("temp dir");
    let hang_file = |index: usize, kind: &str| hang_file(scratch.path(), index, kind);
    let cluster = start_with_hangs(scratch.path(), &["--write-quorum", "2"]);
    let writers = Writers::start(&cluster, 3, "");
    let rounds = [
        (false, "disk"),
        (true, "fsync"),
        (false, "fsync"),
        (true, "disk"),
    ];
    for (also_controller_leader, kind) in rounds {
        let (leader, epoch) = lead_as(&cluster, also_controller_leader);
        writers.wait_for_more(50);
        let acked_before = writers.acked_count();
        let said_before = disk_watch_lines(&cluster.log(leader));
        std::fs::write(hang_file(leader, kind), b"").expect("hang the disk");
        let hung_at = Instant::now();
        let (successor, new_epoch) = cluster.wait_for_leader(Some(leader));
        let replaced_after = hung_at.elapsed();
        assert!(new_epoch > epoch);
        writers.wait_for_more(100);
        println!(
            "node {leader} (controller leader too: {also_controller_leader}): its {kind} hung \
             after {acked_before} writes; node {successor} led epoch {new_epoch} after \
             {replaced_after:?}, 100 more writes by {:?}",
            hung_at.elapsed()
        );
        // The node answers while its disk hangs, and says so: the hung disk holds the thread
        // whose write or fsync it is, not the node (before, it held every async worker —
        // appends waited behind the hung write — and nothing answered: no `/health`, no
        // `/metrics`). A leader that is the controller's Raft leader too applies its own
        // fencing view: it records the new epoch off the locks requests take (before, it
        // stopped answering once, under CI's load, in the round with its fsyncs hung).
        assert_answers_while_its_disk_hangs(&cluster, leader, kind);
        if also_controller_leader && kind == "fsync" {
            // Its Raft heartbeats need no disk and could keep it the controller's leader,
            // committing nothing, for as long as the disk hangs: its member steps aside once
            // the node's log or its Raft storage has waited long enough.
            wait_for_log_line(&cluster, leader, "controller: the disk hangs");
        }
        std::fs::remove_file(hang_file(leader, kind)).expect("the disk answers again");
        cluster.wait_until_formed();
        let status = cluster.status(leader).expect("answers once its disk does");
        assert_eq!(status["role"], "follower", "{status}");
        // Its log says why too (`disk_watch.rs`, which looks every 100 ms: the line of the
        // disk's answer may come just after).
        let said = Instant::now();
        loop {
            let log = cluster.log(leader);
            let (warned, answered) = disk_watch_lines(&log);
            if warned > said_before.0 && answered > said_before.1 {
                break;
            }
            assert!(
                said.elapsed() < DEADLINE,
                "node {leader}'s log does not say its disk hung:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let acked = writers.stop();
    for index in 0..3 {
        assert_holds_all(&cluster, index, &acked, "after every disk answered again");
    }
}

/// A lone leader whose disk hangs under a single small write — one client, then nothing —
/// keeps answering: `/health` says why (503), a second write ends at the acks timeout with
/// 503, and once the disk answers both writes and the node go on. The write's `write` holds
/// the worker that polls it, and the other worker, idle, was parked where no event reaches it
/// (tokio parks an idle worker on a condition variable while another holds the I/O driver):
/// with nobody polling the driver the node took no connection at all until the disk answered,
/// every request timing out, even after the WAL stopped holding appends behind the hung write.
/// kvd's disk watch now wakes the runtime while a WAL operation waits (`disk_watch.rs`), and
/// a woken worker takes the driver.
#[test]
fn a_lone_leader_whose_disk_hangs_under_one_write_keeps_answering() {
    let dir = tempfile::tempdir().expect("temp dir");
    let stalled = dir.path().join("disk-hangs");
    let stalled_env = stalled.display().to_string();
    let kvd = Kvd::start(
        &dir.path().join("node"),
        &["--acks-timeout-ms", "2000"],
        &[("KVD_FAULT_DISK_STALL_FILE", stalled_env.as_str())],
    );
    let put = |key: &str, timeout: Duration| put_value(kvd.address, key, key, timeout);
    assert_eq!(put("before", DEADLINE).expect("a write").status, 200);
    std::fs::write(&stalled, b"").expect("hang the disk");
    let queued_id = std::thread::scope(|scope| {
        let held = scope.spawn(|| put("held", DEADLINE));
        std::thread::sleep(Duration::from_millis(1500));
        let health = request_within(
            kvd.address,
            "GET",
            "/health",
            &[],
            None,
            Duration::from_secs(3),
        );
        let queued = put("queued", Duration::from_secs(10));
        std::fs::remove_file(&stalled).expect("the disk answers again");
        let health = health.unwrap_or_else(|error| {
            panic!("/health while the disk hangs: {error}\n{}", kvd.stderr())
        });
        assert_health_says_the_disk_hangs(&health);
        let queued = queued.expect("the second write is answered while the disk hangs");
        let body = queued.json();
        assert_eq!(queued.status, 503, "{body}");
        // Ended at the acks timeout, its outcome unknown, naming its entry.
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains("has not made it durable within"), "{body}");
        let queued_id = body["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("no id: {body}"));
        let held = held.join().expect("the first write's thread");
        if let Err(error) = held {
            panic!("the first write got no answer once the disk answered: {error}");
        }
        queued_id
    });
    // The queued write, whose outcome was unknown, took effect once the disk completed it,
    // with no later write to carry it: the node kept leading (the hang was shorter than
    // `DISK_HUNG_AFTER`), and a task finished its commit for the request that gave up.
    let queued = kvd.request("GET", &format!("/key/queued?min_id={queued_id}"), None);
    assert_eq!(
        queued.status,
        200,
        "{}",
        String::from_utf8_lossy(&queued.body)
    );
    assert_eq!(queued.json()["value"], serde_json::json!("queued"));
    let after = Instant::now();
    loop {
        match put("after", Duration::from_secs(5)) {
            Ok(answer) if answer.status == 200 => break,
            other => assert!(
                after.elapsed() < DEADLINE,
                "no write taken after the disk answered: {:?}",
                other.map(|answer| answer.json())
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = kvd.request("GET", "/key/before", None);
    assert_eq!(before.status, 200);
}

/// A lone leader under `--sync-policy interval:100` or `never`, where a write reaches the disk
/// inside its submit, holding the log's locks: its disk hangs under one write while two more
/// arrive. The node keeps answering (`/health` 503 saying so, reads), the two writes behind
/// the hung one are refused at the acks timeout with nothing written, and once the disk
/// answers the first is acknowledged and the node takes writes again. Before, the writes
/// behind it waited for the log's locks on the other async workers, and the node answered
/// nothing until the disk did.
#[test]
fn a_lone_leader_writing_on_submit_whose_disk_hangs_keeps_answering() {
    for policy in ["interval:100", "never"] {
        let dir = tempfile::tempdir().expect("temp dir");
        let stalled = dir.path().join("disk-hangs");
        let stalled_env = stalled.display().to_string();
        let kvd = Kvd::start(
            &dir.path().join("node"),
            &["--sync-policy", policy, "--acks-timeout-ms", "2000"],
            &[("KVD_FAULT_DISK_STALL_FILE", stalled_env.as_str())],
        );
        let put = |key: &str| put_value(kvd.address, key, key, DEADLINE);
        assert_eq!(put("before").expect("a write").status, 200);
        let answers = three_writes_into_a_hang(&kvd, &stalled, "before", policy, &put);
        let mut taken = Vec::new();
        for (key, answer) in answers {
            let answer = answer.unwrap_or_else(|error| panic!("{policy}: {key}: {error}"));
            let body = answer.json();
            match answer.status {
                200 => taken.push(key),
                503 => {
                    let detail = body["detail"].as_str().unwrap_or_default();
                    assert!(
                        detail.contains("nothing of it was written"),
                        "{policy}: {body}"
                    );
                    let read = kvd.request("GET", &format!("/key/{key}"), None);
                    assert_eq!(read.status, 404, "{policy}: {key} was refused yet written");
                }
                status => panic!("{policy}: {key} answered {status}: {body}"),
            }
        }
        println!("{policy}: taken once the disk answered: {taken:?}");
        assert_eq!(
            taken.len(),
            1,
            "{policy}: one write held by the disk, two refused"
        );
        assert_eq!(put("after").expect("a write").status, 200, "{policy}");
    }
}

/// A lone leader whose disk hangs as its writes reach the end of the active segment (64 KiB
/// here, 8 KB values): one write's `write` hangs on its worker, the next must roll the
/// segment, which waits for that write under the store's and the log's locks, and a third
/// comes behind. The node keeps answering; every write gets an answer (taken once the disk
/// answers, its outcome unknown at the acks timeout, or refused with nothing written); the
/// roll happens once the disk answers. Before, the rolling submit waited on the second
/// worker and the third on the store's lock: the node answered nothing until the disk did.
#[test]
fn a_lone_leader_whose_disk_hangs_as_a_write_rolls_the_segment_keeps_answering() {
    const SEGMENT: u64 = 64 << 10;
    const VALUE: usize = 8000;
    let dir = tempfile::tempdir().expect("temp dir");
    let stalled = dir.path().join("disk-hangs");
    let stalled_env = stalled.display().to_string();
    let kvd = Kvd::start(
        &dir.path().join("node"),
        &["--max-segment-size", "64KiB", "--acks-timeout-ms", "2000"],
        &[("KVD_FAULT_DISK_STALL_FILE", stalled_env.as_str())],
    );
    let value = "x".repeat(VALUE);
    let put = |key: &str| put_value(kvd.address, key, &value, DEADLINE);
    let segments = || kvd.request("GET", "/segments", None).json();
    // Fill the active segment until fewer than three more values fit.
    for index in 0.. {
        assert!(index < 50, "the segment never filled: {}", segments());
        assert_eq!(put(&format!("k{index}")).expect("a write").status, 200);
        let listed = segments();
        let active = listed["segments"]
            .as_array()
            .and_then(|all| all.iter().find(|segment| segment["is_active"] == true))
            .and_then(|segment| segment["size"].as_u64())
            .expect("the active segment's size");
        if SEGMENT - active < 3 * VALUE as u64 {
            break;
        }
    }
    let before = segments()["total_segments"].as_u64().expect("a count");
    let answers = three_writes_into_a_hang(&kvd, &stalled, "k0", "batch", &put);
    for (key, answer) in answers {
        let answer = answer.unwrap_or_else(|error| panic!("{key}: no answer: {error}"));
        let body = answer.json();
        println!("{key}: {} {body}", answer.status);
        match answer.status {
            200 => {}
            503 if body["detail"]
                .as_str()
                .is_some_and(|detail| detail.contains("nothing of it was written")) =>
            {
                let read = kvd.request("GET", &format!("/key/{key}"), None);
                assert_eq!(read.status, 404, "{key} was refused yet written");
            }
            // Its outcome unknown: in the log, committed once the disk answered.
            503 => assert!(body["id"].as_u64().is_some(), "{key}: {body}"),
            status => panic!("{key} answered {status}: {body}"),
        }
    }
    assert_eq!(put("after").expect("a write").status, 200);
    let after = segments()["total_segments"].as_u64().expect("a count");
    assert!(
        after > before,
        "no roll: {before} segments before, {after} after"
    );
}

/// `PUT /key/{key}` `{"value": value}` to the node at `address`, given `timeout` to answer.
fn put_value(
    address: std::net::SocketAddr,
    key: &str,
    value: &str,
    timeout: Duration,
) -> std::io::Result<Answer> {
    let body = serde_json::json!({ "value": value }).to_string();
    request_within(
        address,
        "PUT",
        &format!("/key/{key}"),
        &[("Content-Type", "application/json")],
        Some(body.as_bytes()),
        timeout,
    )
}

/// Hangs `kvd`'s disk (`stalled` is its `KVD_FAULT_DISK_STALL_FILE`) and sends three writes,
/// `w1` to `w3`, 50 ms apart (`put`); 1.2 s in, checks that the node answers `/health` (503,
/// the disk) and a read of `readable`; lets the disk answer 1.5 s later (the writes waiting
/// behind the hung one end at a 2 s acks timeout meanwhile); returns each write's answer.
/// `what` names the case in failure messages.
fn three_writes_into_a_hang(
    kvd: &Kvd,
    stalled: &std::path::Path,
    readable: &str,
    what: &str,
    put: &(dyn Fn(&str) -> std::io::Result<Answer> + Sync),
) -> Vec<(&'static str, std::io::Result<Answer>)> {
    std::fs::write(stalled, b"").expect("hang the disk");
    std::thread::scope(|scope| {
        let writes: Vec<_> = ["w1", "w2", "w3"]
            .into_iter()
            .map(|key| {
                let write = scope.spawn(move || (key, put(key)));
                std::thread::sleep(Duration::from_millis(50));
                write
            })
            .collect();
        std::thread::sleep(Duration::from_millis(1200));
        let asked = |path: &str| {
            request_within(kvd.address, "GET", path, &[], None, Duration::from_secs(3))
                .unwrap_or_else(|error| {
                    panic!(
                        "{what}: {path} while the disk hangs: {error}\n{}",
                        kvd.stderr()
                    )
                })
        };
        assert_health_says_the_disk_hangs(&asked("/health"));
        let read = asked(&format!("/key/{readable}"));
        assert_eq!(read.status, 200, "{what}: a read while the disk hangs");
        std::thread::sleep(Duration::from_millis(1500));
        std::fs::remove_file(stalled).expect("the disk answers again");
        writes
            .into_iter()
            .map(|write| write.join().expect("a write's thread"))
            .collect()
    })
}

/// A node stopped (SIGTERM) while its disk hangs under a write exits once the disk has kept
/// the WAL waiting `STOP_WAITS_FOR_THE_DISK_AT_MOST` (5 s), with status 1 and saying why, as a
/// `kill -9` would; started again once the disk answers, it holds every acknowledged write.
/// Before, the stop waited for the disk for as long as the hang lasted (the WAL's last
/// `fdatasync`, the node's saved progress): the node could not be stopped but by SIGKILL.
#[test]
fn a_node_stopped_while_its_disk_hangs_exits_without_waiting_for_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let stalled = dir.path().join("disk-hangs");
    let stalled_env = stalled.display().to_string();
    let data_dir = dir.path().join("node");
    let mut kvd = Kvd::start(
        &data_dir,
        &[],
        &[("KVD_FAULT_DISK_STALL_FILE", stalled_env.as_str())],
    );
    let put = |address, key: &str| put_value(address, key, key, DEADLINE);
    assert_eq!(put(kvd.address, "before").expect("a write").status, 200);
    std::fs::write(&stalled, b"").expect("hang the disk");
    let address = kvd.address;
    let held = std::thread::spawn(move || put(address, "held"));
    std::thread::sleep(Duration::from_millis(500));
    let asked = Instant::now();
    // Fails the test if kvd has not exited within `DEADLINE` (30 s).
    let status = kvd.terminate();
    let took = asked.elapsed();
    let log = kvd.stderr();
    std::fs::remove_file(&stalled).expect("the disk answers again");
    println!("stopped {took:?} after SIGTERM, its disk hung: {status}");
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("exiting without closing the log"),
        "the log does not say why it exited:\n{log}"
    );
    // The held write's outcome is unknown: its answer, if any, is not a success.
    if let Ok(answer) = held.join().expect("the held write's thread") {
        assert_ne!(
            answer.status,
            200,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
    }
    let kvd = Kvd::start(&data_dir, &[], &[]);
    let before = kvd.request("GET", "/key/before", None);
    assert_eq!(
        before.status,
        200,
        "{}",
        String::from_utf8_lossy(&before.body)
    );
    assert_eq!(put(kvd.address, "after").expect("a write").status, 200);
}

/// A follower whose disk hangs is told of a new leader while it does (a planned transfer
/// between the other two, the view in a heartbeat's answer): taking the new epoch means
/// recording it in `node.meta`, whose `fsync` hangs too. Before, the role change recorded it
/// holding the locks every request takes (the node's admission, role and meta locks), and the
/// node answered nothing — no `/health`, no `/cluster_status` — until its disk did; this is
/// the fencing view a hung node that is also the controller's Raft leader applies itself
/// (found in CI). The node now records the epoch before it takes those locks, off the async
/// workers, and its driver never waits for a view being applied (the next heartbeat's answer
/// brings the view again). Both kinds of hang: only the `fsync`s, then every write too, each
/// with a write the follower copies into its hung log (if it fetches it before the view comes;
/// under load it may not); then once with no write, so that only the meta file's save hangs:
/// `/health` says so (before, it blamed the leader: "this follower has not heard from its
/// leader yet", the save being no WAL operation), and a stop does not wait for it.
#[test]
fn a_follower_whose_disk_hangs_as_the_leadership_moves_keeps_answering() {
    let scratch = tempfile::tempdir().expect("temp dir");
    let mut cluster = start_with_hangs(scratch.path(), &[]);
    for (kind, copies_a_write) in [("fsync", true), ("disk", true), ("fsync", false)] {
        // The data leader is the controller's Raft leader: the hung follower is a plain
        // member, which hears of the new epoch from the active controller's answers.
        let (leader, epoch) = lead_as(&cluster, true);
        let hung = (0..3).find(|&index| index != leader).expect("3 nodes");
        let to = 3 - leader - hung;
        let (_, before) = cluster.write(leader, "before", &serde_json::json!(1));
        // Copied before the hang: nothing is left for the follower to fetch.
        cluster.wait_for_status(hung, "holding the leader's log", |status| {
            status["applied_id"].as_u64() >= Some(before)
        });
        std::fs::write(hang_file(scratch.path(), hung, kind), b"").expect("hang the disk");
        let hung_at = Instant::now();
        // A write the follower copies: its log's write or `fdatasync` hangs under it.
        let during =
            copies_a_write.then(|| cluster.write(leader, "during", &serde_json::json!(kind)).1);
        let new_epoch = cluster.transfer_leadership(leader, to);
        assert!(new_epoch > epoch);
        // Its heartbeats (every 100 ms) bring the new view within moments, and the next ones
        // bring it again for as long as the node heartbeats (until `DISK_HUNG_AFTER`, 5 s).
        while hung_at.elapsed() < Duration::from_millis(4500) {
            for path in ["/health", "/cluster_status"] {
                if let Err(error) = cluster.request(hung, "GET", path, None) {
                    panic!(
                        "node {hung}, its {kind} hung {:?} ago, gave no answer to {path}: \
                         {error}\n{}",
                        hung_at.elapsed(),
                        cluster.log(hung)
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        let waited = assert_says_what_its_hung_disk_holds(&cluster, hung, kind);
        if !copies_a_write {
            assert!(waited.meta >= 1.0, "no meta save hangs: {waited:?}");
            // A stop saves the node's progress, behind the hung save: it exits at once the
            // save has waited `STOP_WAITS_FOR_THE_DISK_AT_MOST` (5 s) instead (before, it
            // waited for the disk, however long).
            let exit = cluster.terminate(hung);
            let log = cluster.log(hung);
            assert_eq!(exit.code(), Some(1), "{log}");
            assert!(
                log.contains("stopping, but the disk has kept a save of the node's meta file"),
                "the log does not say why it exited:\n{log}"
            );
        }
        std::fs::remove_file(hang_file(scratch.path(), hung, kind))
            .expect("the disk answers again");
        if !cluster.is_running(hung) {
            cluster.start_node(hung);
        }
        cluster.wait_until_formed();
        let status = cluster.wait_for_status(hung, "following the new leader", |status| {
            status["role"] == "follower" && status["leader_epoch"].as_u64() >= Some(new_epoch)
        });
        println!("node {hung}, its {kind} hung ({waited:?}), after the disk answered: {status}");
        if let Some(during) = during {
            assert_eq!(
                cluster.read_after(hung, "during", during),
                Some(serde_json::json!(kind))
            );
        }
    }
}

/// How long a node's disk has kept its log's oldest operation and its meta file's save
/// waiting, from `/metrics` (seconds).
#[derive(Debug)]
struct DiskWaits {
    wal: f64,
    meta: f64,
}

/// Asks node `index`, whose disk hangs (`kind`), for `/health` and `/metrics`: a 503 naming
/// what waits — the log's write or `fdatasync` when one has waited a second, else the meta
/// file's save — as `/metrics` tells it. The waits.
fn assert_says_what_its_hung_disk_holds(cluster: &Cluster, index: usize, kind: &str) -> DiskWaits {
    let health = cluster
        .request(index, "GET", "/health", None)
        .unwrap_or_else(|error| panic!("node {index}'s /health while its {kind} hangs: {error}"));
    let waited = DiskWaits {
        wal: metric_of(cluster, index, "kvd_wal_disk_wait_seconds").expect("the log's wait"),
        // Absent before the node said it: the assertions below fail.
        meta: metric_of(cluster, index, "kvd_node_meta_save_wait_seconds").unwrap_or(0.0),
    };
    if waited.wal >= 1.0 {
        assert_health_says_the_disk_hangs(&health);
    } else {
        assert_health_says(
            &health,
            "the disk has kept a save of the node's meta file (node.meta) waiting",
        );
        assert!(waited.meta >= 1.0, "{waited:?}");
    }
    waited
}

/// A leader whose disk hangs while the only write is a large one is replaced all the same.
/// The large write's `fdatasync` hangs off the async workers, so the node keeps running and
/// could keep heartbeating the controller — holding its lease, taking no write, for as long
/// as the disk hangs. It goes silent instead once the disk has kept the write waiting
/// `DISK_HUNG_AFTER` (5 s; `kvd/src/cluster/driver.rs`), and the controller fences it as it
/// would a dead node. Once the disk answers it follows the new leader and holds its writes.
#[test]
fn a_leader_whose_disk_hangs_under_a_large_write_is_replaced() {
    leader_whose_disk_hangs_under_a_large_write_is_replaced(&[]);
}

/// Likewise when the large write rolls the log to a new segment (it does not fit in what is
/// left of the active one), so the disk hangs in the roll: the new segment file's `fsync`,
/// before the old one is sealed. The roll's waits were not counted as the disk's
/// (`WalStats::disk_wait_seconds`): the leader kept its lease, every write waiting, for as
/// long as its disk hung (10 s in a try by hand, with a 65 MiB write into 64 MiB segments).
#[test]
fn a_leader_whose_disk_hangs_as_a_large_write_rolls_the_log_is_replaced() {
    leader_whose_disk_hangs_under_a_large_write_is_replaced(&["--max-segment-size", "2MiB"]);
}

/// The two tests above: a 2 MiB write on a leader whose `fsync`s hang, started with `args`.
fn leader_whose_disk_hangs_under_a_large_write_is_replaced(args: &[&str]) {
    let scratch = tempfile::tempdir().expect("temp dir");
    let hang_file = |index: usize| fsync_stall_file(scratch.path(), index);
    let mut all_args = vec!["--write-quorum", "2", "--max-body-bytes", "8MiB"];
    all_args.extend_from_slice(args);
    let cluster = start_with_fsync_stalls(scratch.path(), &all_args);
    let (leader, epoch) = lead_as(&cluster, false);
    // The new leader settles first: its epoch's no-op committed, and the commit saved in its
    // `node.meta` by the maintenance task (every second). Here the large write is all the
    // disk is asked for.
    cluster.write(leader, "settled", &serde_json::json!(0));
    std::thread::sleep(Duration::from_millis(2500));
    std::fs::write(hang_file(leader), b"").expect("hang the disk");
    let hung_at = Instant::now();
    let (successor, new_epoch, status) = std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            cluster
                .put_raw(leader, "large", &vec![7u8; 2 << 20])
                .map(|answer| answer.status)
        });
        let replaced = cluster.leader_within(Some(leader));
        std::fs::remove_file(hang_file(leader)).expect("the disk answers again");
        let status = writer.join().expect("the writer");
        // On a failure, what the write got (it may never have reached the stalled fsync)
        // and what each node said.
        let Some((successor, new_epoch)) = replaced else {
            panic!(
                "node {leader} still leads {DEADLINE:?} after its disk hung; the large \
                 write got {status:?}; statuses:\n{}\n{}\nnode {leader}'s log:\n{}",
                cluster.statuses(),
                cluster.warnings(),
                cluster.log(leader)
            );
        };
        (successor, new_epoch, status)
    });
    println!(
        "node {leader}'s disk hung under a 2 MiB write; node {successor} led epoch {new_epoch} \
         after {:?}",
        hung_at.elapsed()
    );
    assert!(new_epoch > epoch);
    let log = cluster.log(leader);
    assert!(
        log.contains("not renewing this node's session"),
        "node {leader}'s log does not say why it went silent:\n{log}"
    );
    // The large write was never acknowledged: no answer in time, or an error.
    assert!(!matches!(status, Ok(200)), "{status:?}");
    let (written_on, id) = cluster.write(successor, "after", &serde_json::json!(1));
    assert_eq!(written_on, successor);
    cluster.wait_until_formed();
    let status = cluster.status(leader).expect("answers once its disk does");
    assert_eq!(status["role"], "follower", "{status}");
    assert_eq!(
        cluster.read_after(leader, "after", id),
        Some(serde_json::json!(1))
    );
}

/// Node `index`, whose disk (`kind`) hangs, answers `/health` (503, saying so) and `/metrics`
/// (the disk's wait).
fn assert_answers_while_its_disk_hangs(cluster: &Cluster, index: usize, kind: &str) {
    let health = cluster
        .request(index, "GET", "/health", None)
        .unwrap_or_else(|error| panic!("node {index}'s /health while its {kind} hangs: {error}"));
    assert_health_says_the_disk_hangs(&health);
    let waited = metric_of(cluster, index, "kvd_wal_disk_wait_seconds").expect("the log's wait");
    assert!(waited >= 1.0, "kvd_wal_disk_wait_seconds {waited}");
}

/// Gauge `name` of node `index`'s `/metrics` (asked while its disk may hang: it must answer).
fn metric_of(cluster: &Cluster, index: usize, name: &str) -> Option<f64> {
    let metrics = cluster
        .request(index, "GET", "/metrics", None)
        .unwrap_or_else(|error| panic!("node {index}'s /metrics: {error}"));
    metric_value(&String::from_utf8_lossy(&metrics.body), name)
}

/// A `/health` answer of a node whose disk hangs under a log write: 503, saying so.
fn assert_health_says_the_disk_hangs(health: &Answer) {
    assert_health_says(
        health,
        "the disk has kept a write or fdatasync of the WAL waiting",
    );
}

/// A 503 `/health` answer whose detail says `what`.
fn assert_health_says(health: &Answer, what: &str) {
    let detail = health.json()["detail"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(health.status, 503, "{detail}");
    assert!(detail.contains(what), "{detail}");
}

/// How many times a node's log said its disk kept a write waiting, and that the disk
/// answered again (`disk_watch.rs`).
fn disk_watch_lines(log: &str) -> (usize, usize) {
    (
        log.matches("the disk has not completed a write or fdatasync of the WAL")
            .count(),
        log.matches("the disk answers again").count(),
    )
}

/// Moves the data leadership so that the leader is (`true`) or is not (`false`) the
/// controller's Raft leader too; returns the leader and its epoch.
fn lead_as(cluster: &Cluster, controller_leader: bool) -> (usize, u64) {
    let (leader, epoch) = cluster.wait_for_leader(None);
    let status = cluster.status(leader).expect("the leader answers");
    let raft_leader = status["controller"]["raft_leader"]
        .as_u64()
        .expect("the controller has a leader") as usize;
    let wanted = if controller_leader {
        raft_leader
    } else {
        (0..3).find(|&index| index != raft_leader).expect("3 nodes")
    };
    if wanted == leader {
        return (leader, epoch);
    }
    (wanted, cluster.transfer_leadership(leader, wanted))
}

/// Every node's disk fills at once (replicas of the same data fill alike), with a follower
/// paused so the controller must commit an ISR change: each controller member's write of its
/// Raft state finds no room. Before, that was fatal to openraft — every member's Raft core
/// stopped ("restart the node"), and the cluster took no write even once space was freed.
/// Now a member waits for room (`/health` says so) and the cluster goes on by itself once the
/// disks have room: a write is taken, nothing acknowledged is lost, and no node restarted.
#[test]
fn when_every_disk_fills_the_controller_waits_for_room_and_the_cluster_goes_on_once_there_is_some()
{
    let scratch = tempfile::tempdir().expect("temp dir");
    let full = scratch.path().join("every-disk-is-full");
    let full_env = full.display().to_string();
    let mut cluster = Cluster::start_first_with_env(
        3,
        3,
        |_| Vec::new(),
        |_| vec![("KVD_FAULT_DISK_FULL_FILE".to_owned(), full_env.clone())],
    );
    let (leader, _) = cluster.wait_for_leader(None);
    let writers = Writers::start(&cluster, 2, "");
    writers.wait_for_more(50);

    std::fs::write(&full, b"").expect("fill the disks");
    let paused = (leader + 1) % 3;
    cluster.signal(paused, "STOP");
    let others: Vec<usize> = (0..3).filter(|&index| index != paused).collect();
    let started = Instant::now();
    let (waiting, waiter) = loop {
        let details: Vec<(usize, String)> = others
            .iter()
            .filter_map(|&index| {
                let answer = cluster.request(index, "GET", "/health", None).ok()?;
                let detail = answer.json()["detail"].as_str().unwrap_or("").to_owned();
                Some((index, detail))
            })
            .collect();
        assert!(
            !details.iter().any(|(_, detail)| detail.contains("is down")),
            "a controller member stopped on the full disk: {details:?}"
        );
        if let Some((index, detail)) = details
            .iter()
            .find(|(_, detail)| detail.contains("waiting for disk space"))
        {
            break (detail.clone(), *index);
        }
        assert!(
            started.elapsed() < DEADLINE,
            "no controller member found the disk full within {DEADLINE:?}: {details:?}\n{}",
            cluster.statuses()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    println!("with the disks full, node {waiter}: {waiting}");
    // Full for a while: the members stay up, waiting.
    std::thread::sleep(Duration::from_secs(2));
    for &index in &others {
        let status = cluster.status(index).expect("answers");
        assert_eq!(
            status["controller"]["failure"],
            Json::Null,
            "node {index}: {status}"
        );
    }

    // A waiting member does not hold its node's shutdown up: SIGTERM ends the wait.
    let asked = Instant::now();
    let exit = cluster.terminate(waiter);
    println!(
        "node {waiter}, waiting for room, exited {exit} {:?} after SIGTERM",
        asked.elapsed()
    );

    std::fs::remove_file(&full).expect("free the disks");
    cluster.signal(paused, "CONT");
    cluster.start_node(waiter);
    let freed_at = Instant::now();
    let acked_when_freed = writers.acked_count();
    writers.wait_for_more(50);
    println!(
        "50 more writes acknowledged {:?} after the disks had room ({acked_when_freed} before)",
        freed_at.elapsed()
    );
    let acked = writers.stop();
    cluster.wait_until_formed();
    for index in 0..3 {
        assert_holds_all(&cluster, index, &acked, "after the disks had room");
        let health = cluster
            .request(index, "GET", "/health", None)
            .expect("answers");
        assert_eq!(health.status, 200, "node {index}: {}", health.json());
    }
}

/// A leader busy with a large write — compressing, checksumming, writing and syncing a 65 MiB
/// value, over a second of work in this debug build — keeps its session, and so its
/// leadership: the work runs off the async workers, and its heartbeats go on meanwhile. So do
/// the followers' as they append the value. Every node runs one async worker
/// (`TOKIO_WORKER_THREADS=1`), and the data leader is not the controller's Raft leader (whose
/// own stalls the controller forgives). Before, the write held the leader's one worker, its
/// session expired after 550 ms of silence, the controller fenced it and the PUT ended 503
/// "stopped leading" (CI saw this once with two workers).
#[test]
fn a_leader_busy_with_a_large_write_keeps_its_leadership() {
    let cluster = Cluster::start_first_with_env(
        3,
        3,
        |_| vec!["--max-body-bytes".to_owned(), "80MiB".to_owned()],
        |_| vec![("TOKIO_WORKER_THREADS".to_owned(), "1".to_owned())],
    );
    let (leader, epoch) = lead_as(&cluster, false);
    let value = crate::harness::large_value(65);
    let written = cluster
        .put_raw(leader, "large", &value)
        .expect("PUT the large value");
    // On a failure, every node's warnings and errors too: which side fell silent (the
    // leader's heartbeats, or the controller's answers while it appended the value).
    assert_eq!(
        written.status,
        200,
        "{}\n{}\n{}",
        String::from_utf8_lossy(&written.body),
        cluster.log(leader),
        cluster.warnings()
    );
    let id = written.json()["id"].as_u64().expect("id");
    assert_kept_its_leadership(&cluster, leader, epoch);
    for index in 0..3 {
        let read = cluster
            .get_raw(index, &format!("/key/large?min_id={id}&wait_ms=20000"))
            .expect("GET the large value");
        assert_eq!(read.status, 200, "node {index}");
        assert!(read.body == value, "node {index}'s copy differs");
    }
    assert_kept_its_leadership(&cluster, leader, epoch);
}

/// A leader whose disk stalls for a moment — shorter than `DISK_HUNG_AFTER` (5 s), after
/// which a node stops heartbeating — while it saves its `node.meta` keeps its leadership and
/// answers reads meanwhile. The maintenance task saves the applied id every second, an
/// `fsync` that waits on the disk; before, it ran on an async worker holding the meta lock,
/// which the heartbeat (`Node::leader_epoch`), the answer to it (`Node::apply_cluster_view`)
/// and `/cluster_status` read: the node fell silent with its disk, its 550 ms session expired,
/// and the controller fenced it and elected another leader. The leader here is idle (one write
/// before the stall and none during it), so the save is all its disk is asked for, and it is
/// not the controller's Raft leader, whose own stalls the controller forgives.
#[test]
fn a_leader_whose_disk_stalls_while_it_saves_its_meta_file_keeps_its_leadership() {
    let scratch = tempfile::tempdir().expect("temp dir");
    let stall_file = |index: usize| fsync_stall_file(scratch.path(), index);
    let cluster = start_with_fsync_stalls(scratch.path(), &["--write-quorum", "2"]);
    let (leader, epoch) = lead_as(&cluster, false);
    cluster.write(leader, "settled", &serde_json::json!(0));
    std::thread::sleep(Duration::from_millis(1500));
    // The applied id moves: the next save (within a second) writes `node.meta`.
    let (written_on, id) = cluster.write(leader, "before", &serde_json::json!(1));
    assert_eq!(written_on, leader);
    std::fs::write(stall_file(leader), b"").expect("stall the disk");
    let stalled_at = Instant::now();
    let data_dir = &cluster.nodes[leader].data_dir;
    let saved_before = saved_commit_id(data_dir);
    let mut reads = 0;
    let mut slowest = Duration::ZERO;
    while stalled_at.elapsed() < Duration::from_secs(3) {
        let asked = Instant::now();
        let answer = cluster
            .request(leader, "GET", &format!("/key/before?min_id={id}"), None)
            .unwrap_or_else(|error| {
                panic!(
                    "node {leader} gave no answer to a read {:?} into its disk's stall: \
                     {error}\n{}",
                    stalled_at.elapsed(),
                    cluster.log(leader)
                )
            });
        assert_eq!(
            answer.status,
            200,
            "a read {:?} into the stall: {}",
            stalled_at.elapsed(),
            String::from_utf8_lossy(&answer.body)
        );
        slowest = slowest.max(asked.elapsed());
        reads += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    // The save of the write's commit was due within a second and is still waiting on the
    // disk (unless it came in before the stall: then this run proves nothing, and says so).
    let saved_during = saved_commit_id(data_dir);
    std::fs::remove_file(stall_file(leader)).expect("the disk answers again");
    println!(
        "node {leader} answered {reads} reads during its disk's 3 s stall, the slowest in \
         {slowest:?}; its node.meta's commit id: {saved_before} before, {saved_during} at the \
         stall's end, the write's id {id}"
    );
    assert!(
        saved_before >= id || saved_during < id,
        "the save of commit {id} was not held by the stall"
    );
    assert_kept_its_leadership(&cluster, leader, epoch);
    let (written_on, _) = cluster.write(leader, "after", &serde_json::json!(2));
    assert_eq!(written_on, leader);
}

/// The commit id a node's `node.meta` holds.
fn saved_commit_id(data_dir: &std::path::Path) -> u64 {
    let text = std::fs::read(data_dir.join("node.meta")).expect("read node.meta");
    let meta: Json = serde_json::from_slice(&text).expect("node.meta is JSON");
    meta["commit_id"].as_u64().expect("commit_id")
}

/// Three nodes with `args`, node `i`'s `fsync`s stalled while [`fsync_stall_file`]`(dir, i)`
/// exists (`KVD_FAULT_FSYNC_STALL_FILE`).
fn start_with_fsync_stalls(dir: &std::path::Path, args: &[&str]) -> Cluster {
    Cluster::start_first_with_env(
        3,
        3,
        |_| args.iter().map(|arg| arg.to_string()).collect(),
        |index| {
            vec![(
                "KVD_FAULT_FSYNC_STALL_FILE".to_owned(),
                fsync_stall_file(dir, index).display().to_string(),
            )]
        },
    )
}

/// Three nodes with `args`, node `i`'s disk hanging while [`hang_file`]`(dir, i, "disk")`
/// exists (`KVD_FAULT_DISK_STALL_FILE`: every write, `fsync`, creation and rename waits) and
/// its `fsync`s while [`hang_file`]`(dir, i, "fsync")` does (`KVD_FAULT_FSYNC_STALL_FILE`).
fn start_with_hangs(dir: &std::path::Path, args: &[&str]) -> Cluster {
    Cluster::start_first_with_env(
        3,
        3,
        |_| args.iter().map(|arg| arg.to_string()).collect(),
        |index| {
            vec![
                (
                    "KVD_FAULT_DISK_STALL_FILE".to_owned(),
                    hang_file(dir, index, "disk").display().to_string(),
                ),
                (
                    "KVD_FAULT_FSYNC_STALL_FILE".to_owned(),
                    hang_file(dir, index, "fsync").display().to_string(),
                ),
            ]
        },
    )
}

/// See [`start_with_hangs`]; `kind` is `disk` or `fsync`.
fn hang_file(dir: &std::path::Path, index: usize, kind: &str) -> std::path::PathBuf {
    dir.join(format!("node-{index}-{kind}-hangs"))
}

/// While a file exists here, node `index`'s `fsync`s wait ([`start_with_fsync_stalls`]).
fn fsync_stall_file(dir: &std::path::Path, index: usize) -> std::path::PathBuf {
    dir.join(format!("node-{index}-fsync-stalls"))
}

/// Node `leader` still leads `epoch` with a lease, and no node's log says its session expired
/// (the controller's Raft leader says so when it fences a data leader).
fn assert_kept_its_leadership(cluster: &Cluster, leader: usize, epoch: u64) {
    assert_eq!(
        cluster.leader_now(),
        Some((leader, epoch)),
        "{}\n{}",
        cluster.statuses(),
        cluster.warnings()
    );
    for index in 0..3 {
        let log = cluster.log(index);
        assert!(
            !log.contains("the data leader's session expired"),
            "node {index} saw the leader's session expire:\n{log}"
        );
    }
}

/// Waits until node `index`'s log holds `line` (within [`DEADLINE`]).
fn wait_for_log_line(cluster: &Cluster, index: usize, line: &str) {
    let started = Instant::now();
    while !cluster.log(index).contains(line) {
        assert!(
            started.elapsed() < DEADLINE,
            "node {index}'s log does not say \"{line}\":\n{}",
            cluster.log(index)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A leader whose disk hangs while it hands its leadership over (a planned transfer, asked of
/// another node) is replaced all the same — the transfer needs nothing of its disk — but
/// taking the new epoch means recording it in `node.meta`, whose save hangs: its role stays
/// the old leader's for as long as the disk does. It sends writes and reads to the new leader
/// meanwhile (307), from the newest view it heard (`ClusterState::other_leader_url`), as any
/// node the view no longer names does, and a write that waited for its lease ends at once
/// (`Node::depose_for_view`; kv-replication's
/// `controlled::a_leader_a_view_replaces_refuses_writes_at_once_even_while_its_disk_hangs`).
/// Before, it answered 503 ("… holds no lease …", "… cannot vouch that it still leads …") for
/// as long as its disk hung: the nemesis's clients, which ask again the node they take for the
/// leader on a 503, took no write for 6.8 s
/// (`nemesis::scenarios::disk_faults_of_any_node_of_3_with_write_quorum_2_keep_every_key_linearizable`).
#[test]
fn a_leader_whose_disk_hangs_as_it_hands_over_sends_requests_to_the_new_leader() {
    let scratch = tempfile::tempdir().expect("temp dir");
    let cluster = start_with_hangs(scratch.path(), &[]);
    // The data leader is a plain controller member: the transfer commits without its disk.
    let (leader, epoch) = lead_as(&cluster, false);
    let to = (0..3).find(|&index| index != leader).expect("3 nodes");
    let (_, before) = cluster.write(leader, "before", &serde_json::json!(1));
    cluster.wait_for_status(to, "holding the leader's log", |status| {
        status["applied_id"].as_u64() >= Some(before)
    });
    std::fs::write(hang_file(scratch.path(), leader, "disk"), b"").expect("hang the disk");
    let hung_at = Instant::now();
    let body = serde_json::json!({ "to": to }).to_string();
    expect_status(
        cluster
            .request(to, "POST", "/admin/transfer-leader", Some(&body))
            .expect("the transfer's answer"),
        200,
    );
    let (new_leader, new_epoch) = cluster.wait_for_leader(Some(leader));
    let led_at = Instant::now();
    assert_eq!((new_leader, new_epoch > epoch), (to, true));
    let to_url = cluster.url(to);
    let sent_on = |answer: &Answer| {
        answer.status == 307
            && answer
                .header("location")
                .is_some_and(|location| location.starts_with(&to_url))
    };
    // Within moments of the new view (a heartbeat's answer brings it, every 100 ms), for the
    // rest of the hang: a write and a linearizable read are sent to the new leader.
    let mut sent_on_at = None;
    while hung_at.elapsed() < Duration::from_millis(4500) {
        let write = cluster.put(leader, "during", &serde_json::json!(2));
        let read = cluster.request(leader, "GET", "/key/before?linearizable=true", None);
        match (write, read) {
            (Ok(write), Ok(read)) if sent_on(&write) && sent_on(&read) => {
                sent_on_at.get_or_insert(hung_at.elapsed());
            }
            (write, read) => {
                let describe = |answer: std::io::Result<Answer>| match answer {
                    Ok(answer) => format!(
                        "{} {}",
                        answer.status,
                        String::from_utf8_lossy(&answer.body)
                    ),
                    Err(error) => error.to_string(),
                };
                assert!(
                    sent_on_at.is_none() && led_at.elapsed() < Duration::from_secs(1),
                    "node {leader}, replaced by node {to} {:?} ago, its disk hung {:?} ago: \
                     the write got {}, the read {}",
                    led_at.elapsed(),
                    hung_at.elapsed(),
                    describe(write),
                    describe(read)
                );
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let sent_on_at = sent_on_at.expect("sent on");
    // The view comes with the next heartbeat's answer: the node's heartbeats no longer wait
    // for its own controller member, whose Raft core a hung write of its storage holds
    // (`Controller::unless_another_leads`; before, 1.5 s after the new leader was named).
    let led_after = led_at.duration_since(hung_at);
    assert!(
        sent_on_at <= led_after + Duration::from_secs(1),
        "sent on {sent_on_at:?} after the hang, node {to} led {led_after:?} after it"
    );
    let meta_waited =
        metric_of(&cluster, leader, "kvd_node_meta_save_wait_seconds").expect("the save's wait");
    println!(
        "node {leader} sent requests on to node {to} {sent_on_at:?} after its disk hung \
         (node {to} led {:?} after); its meta save had waited {meta_waited} s",
        led_at.duration_since(hung_at)
    );
    assert!(meta_waited >= 1.0, "{meta_waited}");
    // Its log does nothing, only the meta save waits: once that has waited
    // `DISK_HUNG_AFTER` (5 s), the node stops heartbeating all the same.
    let silent_by = hung_at + Duration::from_secs(8);
    while !cluster
        .log(leader)
        .contains("not renewing this node's session")
    {
        assert!(
            Instant::now() < silent_by,
            "node {leader} still heartbeats, its meta save hung:\n{}",
            cluster.log(leader)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::remove_file(hang_file(scratch.path(), leader, "disk")).expect("the disk answers");
    cluster.wait_for_status(leader, "following the new leader", |status| {
        status["role"] == "follower" && status["leader_epoch"].as_u64() >= Some(new_epoch)
    });
    let (_, after) = cluster.write(to, "after", &serde_json::json!(3));
    assert_eq!(
        cluster.read_after(leader, "after", after),
        Some(serde_json::json!(3))
    );
}

/// A node named leader while its disk is full hands the leadership to another in-sync replica
/// instead of keeping the cluster without a leader until there is room. Its epoch's no-op fits
/// its preallocated segment, but recording the epoch in `node.meta` finds no room. That
/// refusal was first final for the view (the cluster took no write however long after the disk
/// had room: the nemesis's disk faults in CI, seed 1796645746480985621), then taken again every
/// second, leading once there was room (`e34ab64`) — but a full disk may stay full until an
/// operator acts, and the cluster took no write meanwhile (9.8 s in a disk-fault nemesis run).
/// The node now asks the controller to elect another ISR member in a new epoch without it
/// (`Driver::hand_over_without_room`); once its disk has room it follows and catches up.
#[test]
fn a_node_named_leader_while_its_disk_is_full_hands_the_leadership_to_another_in_sync_replica() {
    let scratch = tempfile::tempdir().expect("temp dir");
    let full = |index: usize| scratch.path().join(format!("node-{index}-disk-full"));
    let cluster = Cluster::start_first_with_env(
        3,
        3,
        |_| Vec::new(),
        |index| {
            vec![(
                "KVD_FAULT_DISK_FULL_FILE".to_owned(),
                full(index).display().to_string(),
            )]
        },
    );
    // The data leader and the target are plain controller members: the controller's Raft
    // needs no room on the target's disk.
    let (leader, epoch, to, asked) =
        transfer_to_a_plain_member_after(&cluster, "before", &serde_json::json!(1), |to| {
            std::fs::write(full(to), b"").expect("fill the disk")
        });
    // Taken while the target's disk is still full (`Cluster::write` retries until it is, or
    // fails the test at its deadline).
    let (by, during) = cluster.write(leader, "during", &serde_json::json!(2));
    let taken_after = asked.elapsed();
    let (now_leading, now_epoch) = cluster.wait_for_leader(None);
    println!(
        "transfer to node {to}, its disk full: a write taken by node {by} {taken_after:?} after \
         the transfer was asked; node {now_leading} leads epoch {now_epoch} (epoch {epoch} before)"
    );
    assert!(full(to).exists(), "the disk had room before the write");
    assert_ne!(now_leading, to);
    assert!(now_epoch > epoch + 1, "epoch {epoch}, now {now_epoch}");
    assert!(
        cluster
            .log(to)
            .contains("asking the controller to elect another in-sync replica"),
        "{}",
        cluster.log(to)
    );
    // Room again: the node follows the new leader and holds every write.
    std::fs::remove_file(full(to)).expect("room again");
    let (_, after) = cluster.write(now_leading, "after", &serde_json::json!(3));
    for index in 0..3 {
        assert_eq!(
            cluster.read_after(index, "during", during),
            Some(serde_json::json!(2))
        );
        assert_eq!(
            cluster.read_after(index, "after", after),
            Some(serde_json::json!(3))
        );
    }
}

/// A node named leader while its disk hangs — a planned transfer's target, hung as the view
/// that names it arrives — keeps answering, and the cluster takes writes again before that
/// disk answers. Taking the leadership records the epoch in `node.meta`, which waits on the
/// hung disk. Before, the node did that holding the locks every request takes: it answered
/// nothing, not even `/health` (3.3–3.4 s into the hang here), and a client sent to it by a
/// 307 waited out its own timeout (the write here was taken 3.5–3.6 s after the transfer; in
/// a disk-fault nemesis run, 4.2–7.9 s to the next acknowledged write in 5 of 20 hangs). The
/// node now records the epoch first, holding only the meta's writer (`Node::claim_epoch`),
/// answers in its old role meanwhile, and stops heartbeating once the save has waited a second
/// (`TAKING_OVER_HUNG_AFTER`), so the controller elects another leader. Both kinds of hang:
/// every write, and only the `fsync`s.
#[test]
fn a_node_named_leader_while_its_disk_hangs_keeps_answering_and_the_cluster_writes_on_without_it() {
    let scratch = tempfile::tempdir().expect("temp dir");
    let cluster = start_with_hangs(scratch.path(), &[]);
    for (round, kind) in ["disk", "fsync"].into_iter().enumerate() {
        // The data leader and the target are plain controller members: the controller's Raft
        // does not wait on the target's disk.
        let before_key = format!("before-{round}");
        let hang = |to| hang_file(scratch.path(), to, kind);
        let (leader, epoch, to, asked) = transfer_to_a_plain_member_after(
            &cluster,
            &before_key,
            &serde_json::json!(kind),
            |to| std::fs::write(hang(to), b"").expect("hang the disk"),
        );
        let hang = hang(to);
        let during_key = format!("during-{round}");
        let (by, during, taken_after) = std::thread::scope(|scope| {
            let answers = scope.spawn(|| {
                let mut silent = Vec::new();
                while asked.elapsed() < Duration::from_secs(3) {
                    if let Err(error) = cluster.request(to, "GET", "/health", None) {
                        silent.push(format!("{:?}: {error}", asked.elapsed()));
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                silent
            });
            let (by, during) = cluster.write(leader, &during_key, &serde_json::json!(kind));
            let taken_after = asked.elapsed();
            let silent = answers.join().expect("the /health thread");
            assert!(
                silent.is_empty(),
                "node {to}, named leader as its {kind} hung, gave no answer to /health: \
                 {silent:?}\n{}",
                cluster.log(to)
            );
            (by, during, taken_after)
        });
        let hung = hang.exists();
        std::fs::remove_file(&hang).expect("the disk answers again");
        let (now_leading, now_epoch) = cluster.wait_for_leader(None);
        println!(
            "round {round}: transfer to node {to}, its {kind} hung: a write taken by node {by} \
             {taken_after:?} after the transfer was asked; node {now_leading} leads epoch \
             {now_epoch} (epoch {epoch} before)"
        );
        assert!(hung, "the disk answered before the write was taken");
        assert!(
            taken_after < NAMED_LEADER_HANG_WRITE_WITHIN,
            "the cluster took no write for {taken_after:?} after naming node {to}, whose {kind} \
             hung, leader:\n{}",
            cluster.log(to)
        );
        cluster.wait_until_formed();
        for index in 0..3 {
            assert_eq!(
                cluster.read_after(index, &during_key, during),
                Some(serde_json::json!(kind)),
                "node {index}"
            );
        }
    }
}

/// Makes the data leader a plain controller member (not the controller's Raft leader), writes
/// `key` and waits until the other plain member holds it, applies `fault` to that member, and
/// asks a planned transfer to it (200). The leader, its epoch before, the target, and when the
/// transfer was asked.
fn transfer_to_a_plain_member_after(
    cluster: &Cluster,
    key: &str,
    value: &serde_json::Value,
    fault: impl FnOnce(usize),
) -> (usize, u64, usize, Instant) {
    let (leader, epoch) = lead_as(cluster, false);
    let raft_leader = cluster.status(leader).expect("the leader answers")["controller"]
        ["raft_leader"]
        .as_u64()
        .expect("a Raft leader") as usize;
    let to = 3 - leader - raft_leader;
    let (_, before) = cluster.write(leader, key, value);
    cluster.wait_for_status(to, "holding the leader's log", |status| {
        status["applied_id"].as_u64() >= Some(before)
    });
    fault(to);
    let body = serde_json::json!({ "to": to }).to_string();
    let asked = Instant::now();
    expect_status(
        cluster
            .request(leader, "POST", "/admin/transfer-leader", Some(&body))
            .expect("the transfer's answer"),
        200,
    );
    (leader, epoch, to, asked)
}

/// How soon a write must be taken after a transfer names a node whose disk hangs: below
/// kvd's `DISK_HUNG_AFTER` (5 s), the silence that has such a node fenced.
const NAMED_LEADER_HANG_WRITE_WITHIN: Duration = Duration::from_secs(4);

/// On a one-CPU machine kvd still runs two async workers: a write group's leader runs its
/// `fdatasync` on the worker that polls it, and with a single worker a hung disk froze the
/// whole node (the hung-disk tests above fail with `TOKIO_WORKER_THREADS=1`: no `/health`, no
/// heartbeats). tokio starts one worker per CPU; `taskset -c 0` gives kvd one CPU.
#[test]
fn kvd_on_one_cpu_runs_two_async_workers() {
    use std::io::{BufRead, Read};
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("node").display().to_string();
    let mut child = std::process::Command::new("taskset")
        .args(["-c", "0", env!("CARGO_BIN_EXE_kvd"), "leader"])
        .args(["--listen", "127.0.0.1:0", "--data-dir", &data])
        .env_remove("TOKIO_WORKER_THREADS")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("taskset runs kvd (util-linux)");
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("kvd's first line");
    let _ = child.kill();
    let mut log = String::new();
    let _ = child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut log);
    let _ = child.wait();
    assert!(first.starts_with("listening on "), "{first}\n{log}");
    let started = log
        .lines()
        .find(|line| line.contains("async runtime started"))
        .unwrap_or_else(|| panic!("no 'async runtime started' line:\n{log}"));
    assert!(started.contains("workers=2"), "kvd on one CPU: {started}");
}
