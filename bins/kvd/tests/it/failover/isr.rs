//! A follower alive but copying nothing (its fetches fail; it still heartbeats the controller)
//! turns `acks=all` writes into 503s only until the leader takes it out of the in-sync
//! replicas through the controller (the lag limit); it reports itself unhealthy meanwhile, and
//! comes back into the ISR once it has caught up.

use std::time::{Duration, Instant};

use serde_json::json;

use super::cluster::{Cluster, QUORUM_2_LAG_LIMIT_30_S};
use crate::harness::DEADLINE;

fn isr_of(status: &serde_json::Value) -> Vec<u64> {
    serde_json::from_value(status["isr"].clone()).unwrap_or_default()
}

#[test]
fn a_follower_that_copies_nothing_leaves_the_isr_so_acks_all_writes_go_on_then_rejoins() {
    let extra = [
        "--write-quorum",
        "2",
        "--lag-limit-ms",
        "1000",
        "--acks-timeout-ms",
        "1000",
    ];
    let cluster = Cluster::start(3, &extra);
    let (leader, _) = cluster.wait_for_leader(None);
    let slow = (leader + 1) % 3;
    cluster.write(leader, "before", &json!(0));
    cluster.block_fetches(slow, true);
    let blocked = Instant::now();

    // acks=all waits for every ISR member: it is answered (503s retried, 307s followed: on a
    // busy machine the controller may move the leadership meanwhile) once the slow one left
    // the ISR.
    cluster.write(leader, "all?acks=all", &json!(1));
    println!(
        "acks=all writes answered again {:?} after the follower stopped copying",
        blocked.elapsed()
    );
    let status = cluster.wait_for_leader_status("without the slow follower in its ISR", |status| {
        !isr_of(status).contains(&(slow as u64))
    });
    assert!(isr_of(&status).len() >= 2, "{status}");
    // Writes under the write quorum go on as well, and the slow follower says it is behind
    // once it has not heard its leader for the lag limit (its failed fetches close its stream,
    // so it may have left the ISR sooner: `a_follower_that_stops_leaves_the_isr_at_once…`).
    cluster.write(leader, "during", &json!(1));
    wait_for_health(
        &cluster,
        slow,
        503,
        "the follower that copies nothing never said so",
    );

    // Copying again: it catches up and is taken back into the ISR.
    cluster.block_fetches(slow, false);
    cluster.wait_for_leader_status("with the follower back in its ISR", |status| {
        isr_of(status).contains(&(slow as u64))
    });
    let (_, id) = cluster.write(leader, "after?acks=all", &json!(2));
    assert_eq!(cluster.read_after(slow, "after", id), Some(json!(2)));
    wait_for_health(
        &cluster,
        slow,
        200,
        "the follower never reported healthy again",
    );
}

/// Waits until node `index` answers `/health` with `status` (fails with `never` after the
/// harness deadline).
fn wait_for_health(cluster: &Cluster, index: usize, status: u16, never: &str) {
    let started = Instant::now();
    while cluster
        .request(index, "GET", "/health", None)
        .expect("answers")
        .status
        != status
    {
        assert!(started.elapsed() < DEADLINE, "{never}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A follower that stops — killed, or stopped with SIGTERM — closes its replication stream,
/// and the leader takes it out of the ISR at once (100 ms of grace for a reconnect), not
/// after the lag limit: under `--write-quorum 2` writes go on within a moment. The lag limit
/// here is 30 s, so a write that waited it out would take 30 s (before, it did: with the
/// default 2 s, a graceful stop of a follower held writes for 2.0 s). A follower that is
/// paused or cut off still leaves after the lag limit (the test above).
#[test]
fn a_follower_that_stops_leaves_the_isr_at_once_so_quorum_writes_go_on() {
    let (mut cluster, leader, _) = Cluster::start_in_sync(3, &QUORUM_2_LAG_LIMIT_30_S);
    cluster.write(leader, "before", &json!(0));
    for (round, stopped) in [(leader + 1) % 3, (leader + 2) % 3].into_iter().enumerate() {
        if round == 0 {
            cluster.kill_9(stopped);
        } else {
            assert!(cluster.terminate(stopped).success());
        }
        let since = Instant::now();
        let (answered_by, _) = cluster.write(leader, &format!("during-{round}"), &json!(round));
        let took = since.elapsed();
        println!("round {round}: follower {stopped} stopped; a quorum write took {took:?}");
        assert_eq!(answered_by, leader);
        assert!(
            took < Duration::from_secs(10),
            "the write waited {took:?} (the lag limit is 30 s): {}",
            cluster.statuses()
        );
        let status = cluster.status(leader).expect("the leader answers");
        assert!(!isr_of(&status).contains(&(stopped as u64)), "{status}");
        // Back: it catches up and joins the ISR again.
        cluster.start_node(stopped);
        cluster.wait_for_leader_status("with the follower back in its ISR", |status| {
            isr_of(status).contains(&(stopped as u64))
        });
    }
}
