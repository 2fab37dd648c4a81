//! What the nemesis suite found in kvd, each as a minimal deterministic reproduction. One that
//! fails is `#[ignore]`d so the gate stays green (run them with
//! `cargo test -p kvd --test it nemesis::known_issues -- --ignored`); whoever fixes one removes
//! its `#[ignore]` (and the matching allowance in `scenarios.rs`) and it stays as a regression
//! test. None is open today.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{Kvd, DEADLINE};

/// Found by `kill_9_of_any_node_of_3_with_write_quorum_2_keeps_every_key_linearizable` (e.g.
/// seed 1796412965094123763: six keys, each a leader read of "not found" or an older value
/// right after the leader's restart). A leader with a write quorum above 1 restarted with the
/// commit id its `node.meta` saved (every second), applied its log only up to there, and served
/// reads from that state until a follower fetched again: writes it acknowledged in the last
/// second before a `kill -9` were invisible meanwhile — forever, if no follower came back.
/// Fixed by the controller: the restarted node leads only a new epoch, and serves reads only
/// once that epoch's no-op is committed and applied under a valid lease; until then it
/// answers 503 (retry). Here the only follower is stopped (SIGSTOP), so the new epoch cannot
/// commit: every read answers 503 or the last write, never an older state, and the last write
/// once the follower is back.
#[test]
fn a_restarted_leader_never_reads_older_than_a_write_it_acknowledged() {
    let dir = tempfile::tempdir().expect("temp dir");
    let leader_dir = dir.path().join("leader");
    let leader_args = ["--write-quorum", "2"];
    let mut leader = Kvd::start(&leader_dir, &leader_args, &[]);
    let follower = Kvd::start_follower(
        &dir.path().join("follower"),
        &leader,
        &["--fetch-wait-ms", "50"],
        &[],
    );
    // Acknowledged by the write quorum (leader and follower), so visible on the leader.
    let mut last = 0;
    for value in 1..=20 {
        let (status, body) = leader.json(
            "PUT",
            "/key/k",
            Some(&json!({ "value": value }).to_string()),
        );
        assert_eq!(status, 200, "{body}");
        last = value;
    }
    let pid = rustix::process::Pid::from_raw(follower.pid() as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).expect("SIGSTOP");
    leader.kill_9();
    let leader = Kvd::start(&leader_dir, &leader_args, &[]);
    // With its only follower stopped, for a while: never an older state than the last write.
    let stopped_until = Instant::now() + Duration::from_millis(1500);
    let mut answers = BTreeMap::new();
    while Instant::now() < stopped_until {
        let (status, body) = leader.json("GET", "/key/k", None);
        assert!(
            status == 503 || (status, &body["value"]) == (200, &json!(last)),
            "the restarted leader read an older state than the write it acknowledged: {status} \
             {body}; its status: {}",
            leader.json("GET", "/cluster_status", None).1
        );
        *answers.entry(status).or_insert(0) += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    rustix::process::kill_process(pid, rustix::process::Signal::CONT).expect("SIGCONT");
    // Back together: the new epoch commits and the leader reads the last write.
    let started = Instant::now();
    loop {
        let (status, body) = leader.json("GET", "/key/k", None);
        if status == 200 {
            assert_eq!(body["value"], json!(last), "{body}");
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(
            started.elapsed() < DEADLINE,
            "the leader never served the last write again: {body}; its status: {}",
            leader.json("GET", "/cluster_status", None).1
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("answers while the follower was stopped: {answers:?}");
}
