//! A follower alive but copying nothing (its fetches fail; it still heartbeats the controller)
//! turns `acks=all` writes into 503s only until the leader takes it out of the in-sync
//! replicas through the controller (the lag limit); it reports itself unhealthy meanwhile, and
//! comes back into the ISR once it has caught up.

use std::time::{Duration, Instant};

use serde_json::json;

use super::cluster::{expect_status, Cluster};
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
    // Writes under the write quorum go on as well, and the slow follower says it is behind.
    cluster.write(leader, "during", &json!(1));
    expect_status(
        cluster
            .request(slow, "GET", "/health", None)
            .expect("answers"),
        503,
    );

    // Copying again: it catches up and is taken back into the ISR.
    cluster.block_fetches(slow, false);
    cluster.wait_for_leader_status("with the follower back in its ISR", |status| {
        isr_of(status).contains(&(slow as u64))
    });
    let (_, id) = cluster.write(leader, "after?acks=all", &json!(2));
    assert_eq!(cluster.read_after(slow, "after", id), Some(json!(2)));
    let started = Instant::now();
    while cluster
        .request(slow, "GET", "/health", None)
        .expect("answers")
        .status
        != 200
    {
        assert!(
            started.elapsed() < DEADLINE,
            "the follower never reported healthy again"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
