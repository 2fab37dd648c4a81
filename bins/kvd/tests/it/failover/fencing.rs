//! A leader that stops — paused (SIGSTOP) or killed (-9) — is replaced by the controller from
//! the in-sync replicas, losing no write acknowledged under `--write-quorum 2`; a paused one,
//! resumed, acknowledges nothing and answers no linearizable read (307 or 503) before it
//! learns it was deposed, then follows. A leader restarted where no controller quorum can give
//! it a new epoch answers reads 503.

use std::time::Instant;

use serde_json::{json, Value as Json};

use super::cluster::{expect_status, Cluster};
use super::load::{assert_holds_all, Writers};
use crate::harness::DEADLINE;

#[test]
fn a_paused_leader_is_replaced_and_once_resumed_acknowledges_nothing_and_serves_no_stale_read() {
    let mut cluster = Cluster::start(3, &["--write-quorum", "2"]);
    let (old, old_epoch) = cluster.wait_for_leader(None);
    let (_, a_id) = cluster.write(old, "a", &json!(1));

    cluster.signal(old, "STOP");
    let stopped = Instant::now();
    let other = (old + 1) % 3;
    let (new, b_id) = cluster.write(other, "b", &json!(2));
    let unavailable = stopped.elapsed();
    assert_ne!(new, old);
    let new_epoch = cluster.status(new).expect("answers")["leader_epoch"]
        .as_u64()
        .expect("epoch");
    assert!(new_epoch > old_epoch);
    println!(
        "SIGSTOP of the leader -> first acknowledged write on the new leader: {unavailable:?}"
    );

    // Resumed, it still believes it leads for a moment: it must acknowledge nothing (its
    // lease ran out long ago, and the first fetch or heartbeat it hears names a newer epoch)
    // and answer no linearizable read, until it follows.
    cluster.signal(old, "CONT");
    let resumed = Instant::now();
    let mut answers: Vec<u16> = Vec::new();
    loop {
        let put = cluster.put(old, "c", &json!(3)).expect("an answer");
        assert_ne!(
            put.status,
            200,
            "the deposed leader acknowledged a write: {}",
            body(&put.body)
        );
        let read = cluster
            .request(old, "GET", "/key/b?linearizable=true", None)
            .expect("an answer");
        assert!(
            matches!(read.status, 307 | 503),
            "the deposed leader answered a linearizable read: {} {}",
            read.status,
            body(&read.body)
        );
        answers.extend([put.status, read.status]);
        let status = cluster.status(old).expect("answers");
        if status["role"] == "follower" && status["leader_epoch"].as_u64() >= Some(new_epoch) {
            break;
        }
        assert!(
            resumed.elapsed() < DEADLINE,
            "the old leader never followed: {status}"
        );
    }
    println!(
        "the resumed leader followed after {:?}; its answers meanwhile: {answers:?}",
        resumed.elapsed()
    );
    // A 307 from it names the new leader.
    let put = cluster.put(old, "c", &json!(3)).expect("an answer");
    assert_eq!(put.status, 307, "{}", body(&put.body));
    assert_eq!(
        put.header("location"),
        Some(format!("{}/key/c", cluster.url(new)).as_str())
    );
    for index in 0..3 {
        assert_eq!(
            cluster.read_after(index, "a", b_id),
            Some(json!(1)),
            "node {index}"
        );
        assert_eq!(
            cluster.read_after(index, "b", b_id),
            Some(json!(2)),
            "node {index}"
        );
    }
    assert!(b_id > a_id);
}

fn body(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn a_killed_leader_loses_no_quorum_write_and_its_successor_comes_from_the_isr() {
    let mut cluster = Cluster::start(3, &["--write-quorum", "2"]);
    let writers = Writers::start(&cluster, 3, "");
    for round in 0..2 {
        writers.wait_for_more(200);
        let (old, old_epoch) = cluster.wait_for_leader(None);
        let status: Json = cluster.status(old).expect("answers");
        let isr: Vec<u64> = serde_json::from_value(status["isr"].clone()).expect("isr");
        let acked_before = writers.acked_count();
        cluster.kill_9(old);
        let killed = Instant::now();
        writers.wait_for_more(1);
        println!(
            "round {round}: kill -9 of the leader (node {old}) -> first acknowledged write after \
             it: {:?}",
            killed.elapsed()
        );
        let (new, new_epoch) = cluster.wait_for_leader(Some(old));
        assert!(new_epoch > old_epoch);
        assert!(
            isr.contains(&(new as u64)),
            "node {new} is not in the ISR {isr:?}"
        );
        writers.wait_for_more(100);
        assert!(writers.acked_count() > acked_before);
        cluster.start_node(old);
        cluster.wait_until_formed();
    }
    let acked = writers.stop();
    let (leader, _) = cluster.wait_for_leader(None);
    for index in 0..3 {
        assert_holds_all(&cluster, index, &acked, &format!("leader {leader}"));
    }
    println!("{} acknowledged writes, all on every node", acked.len());
}

#[test]
fn a_restarted_leader_that_cannot_reach_the_controller_quorum_serves_no_read() {
    // Three voters; the leader is killed while both followers are stopped, and restarted: its
    // own controller still names it leader of the epoch it led, which it never leads again, and
    // no quorum can give it a new one. It may hold less than it acknowledged (the commit id it
    // saved lags by up to a second): it must answer reads 503, not from that state.
    let mut cluster = Cluster::start(3, &["--write-quorum", "2"]);
    let (old, _) = cluster.wait_for_leader(None);
    let mut last = 0;
    for value in 1..=20 {
        cluster.write(old, "k", &json!(value));
        last = value;
    }
    let followers: Vec<usize> = (0..3).filter(|&index| index != old).collect();
    for &follower in &followers {
        cluster.signal(follower, "STOP");
    }
    cluster.kill_9(old);
    cluster.start_node(old);
    for path in ["/key/k", "/key/k?linearizable=true"] {
        let answer = cluster.request(old, "GET", path, None).expect("answers");
        assert_eq!(
            answer.status,
            503,
            "GET {path} on a restarted leader without a quorum: {}",
            body(&answer.body)
        );
    }
    for &follower in &followers {
        cluster.signal(follower, "CONT");
    }
    // Together again: a leader (whichever) serves the last write.
    let (leader, _) = cluster.wait_for_leader(None);
    assert_eq!(cluster.read(leader, "k"), Some(json!(last)));
}

#[test]
fn the_controller_elects_the_isr_member_holding_the_most_not_the_lowest_id() {
    // The ISR keeps both followers (a lag limit longer than the test); the one with the lower
    // id copies nothing for a while, so the other holds more when the leader dies. The
    // controller elects by the last (epoch, id) each reported: the one holding more, whose
    // writes (acknowledged by the leader alone) all survive.
    let extra = [
        "--write-quorum",
        "2",
        "--lag-limit-ms",
        "20000",
        "--fetch-wait-ms",
        "100",
    ];
    let mut cluster = Cluster::start(3, &extra);
    let (old, _) = cluster.wait_for_leader(None);
    let others: Vec<usize> = (0..3).filter(|&index| index != old).collect();
    let (behind, ahead) = (others[0], others[1]);
    cluster.write(old, "base", &json!(0));
    cluster.block_fetches(behind, true);
    // Its fetch in flight (held up to 100 ms) ends before the writes below.
    cluster.wait_for_status(
        old,
        "without a fetch of the blocked follower in flight",
        |status| {
            status["followers"].as_array().is_some_and(|list| {
                list.iter().any(|follower| {
                    follower["node_id"] == json!(behind)
                        && follower["last_fetch_age_ms"].as_u64() > Some(400)
                })
            })
        },
    );
    let mut last_id = 0;
    for index in 0..5 {
        let path = format!("x{index}?acks=leader");
        let answer = expect_status(
            cluster.put(old, &path, &json!(index)).expect("answers"),
            200,
        );
        last_id = answer.json()["id"].as_u64().expect("id");
    }
    cluster.wait_for_status(ahead, "holding the leader's last write", |status| {
        status["durable_id"].as_u64() >= Some(last_id)
    });
    cluster.kill_9(old);
    // The election, as the controller's metadata names it (the new leader's first entry can
    // commit only once the blocked follower copies again: under write quorum 2 it needs both).
    let status = cluster.wait_for_status(ahead, "told of a new leader", |status| {
        status["data_leader"]
            .as_u64()
            .is_some_and(|leader| leader != old as u64)
    });
    cluster.block_fetches(behind, false);
    assert_eq!(
        status["data_leader"],
        json!(ahead),
        "the controller elected another node than the one holding the most: {status}"
    );
    cluster.wait_for_leader(Some(old));
    for index in 0..5 {
        for node in [ahead, behind] {
            let value = cluster.read_after(node, &format!("x{index}"), last_id);
            assert_eq!(value, Some(json!(index)), "x{index} on node {node}");
        }
    }
}
