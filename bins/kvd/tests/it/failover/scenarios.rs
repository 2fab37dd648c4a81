//! Issue 13's scenarios against real processes: a dead leader replaced with no operator, 307s
//! that follow the leader, nodes restarted with their original commands (`kvd leader`
//! included) taking the role the controller gives, epochs that never collide, a follower cut
//! off from its leader reporting itself unhealthy.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};

use super::cluster::{expect_status, Cluster};
use crate::harness::DEADLINE;

/// Every node's value for `key` once it applied `min_id`.
fn values_everywhere(cluster: &Cluster, key: &str, min_id: u64) -> Vec<Option<Json>> {
    (0..cluster.nodes.len())
        .filter(|&index| cluster.is_running(index))
        .map(|index| cluster.read_after(index, key, min_id))
        .collect()
}

#[test]
fn a_killed_leader_is_replaced_with_no_operator_and_307s_follow_the_new_one() {
    let mut cluster = Cluster::start(3, &["--write-quorum", "2"]);
    let (leader, first_epoch) = cluster.wait_for_leader(None);
    assert_eq!(leader, 0, "`kvd leader` leads a new cluster");
    let (_, first_id) = cluster.write(0, "before", &json!(1));

    cluster.kill_9(0);
    let killed = Instant::now();
    let (_, second_id) = cluster.write(1, "after", &json!(2));
    println!(
        "kill -9 of the leader -> first acknowledged write on the new leader: {:?}",
        killed.elapsed()
    );
    let (new_leader, epoch) = cluster.wait_for_leader(Some(0));
    assert!(epoch > first_epoch, "a new leader takes a new epoch");

    // The other follower redirects writes to the new leader, not to the dead one.
    let other = 3 - new_leader;
    let answer = cluster
        .put(other, "redirected", &json!(3))
        .expect("an answer");
    let answer = expect_status(answer, 307);
    assert_eq!(
        answer.header("location"),
        Some(format!("{}/key/redirected", cluster.url(new_leader)).as_str())
    );

    // `kvd leader`, restarted with its original command, follows the new leader (whichever
    // leads by then: on a busy machine the controller may have moved it again).
    cluster.start_node(0);
    let status = cluster.wait_for_status(0, "a follower of the leader", |status| {
        let leader = cluster.leader_now().map(|(index, _)| index);
        status["role"] == "follower"
            && leader.is_some_and(|leader| {
                status["data_leader"] == json!(leader)
                    && status["leader"] == cluster.url(leader).as_str()
            })
    });
    assert_ne!(status["data_leader"], json!(0), "{status}");
    assert_eq!(
        values_everywhere(&cluster, "before", second_id),
        vec![Some(json!(1)); 3]
    );
    assert_eq!(
        values_everywhere(&cluster, "after", second_id),
        vec![Some(json!(2)); 3]
    );
    assert!(second_id > first_id);
    let answer = cluster.put(0, "k", &json!(0)).expect("an answer");
    assert_eq!(answer.status, 307);
}

#[test]
fn every_node_restarted_with_its_original_command_takes_the_role_the_controller_gives() {
    let mut cluster = Cluster::start(3, &[]);
    let (_, id) = cluster.write(0, "a", &json!("one"));
    // Move the leadership away from `kvd leader`.
    cluster.kill_9(0);
    let (moved_to, _) = cluster.wait_for_leader(Some(0));
    let (_, id_b) = cluster.write(moved_to, "b", &json!("two"));
    cluster.start_node(0);
    // Stop everything, then start every node again with its original command, `kvd leader`
    // first: whoever the controller names leads, alone.
    for index in 0..3 {
        assert!(cluster.terminate(index).success(), "node {index} exits 0");
    }
    for index in 0..3 {
        cluster.start_node(index);
    }
    let (leader, epoch) = cluster.wait_for_leader(None);
    let mut leaders = Vec::new();
    for index in 0..3 {
        let status = cluster.status(index).expect("answers");
        assert_eq!(
            status["data_leader"],
            json!(leader),
            "node {index}: {status}"
        );
        if status["role"] == "leader" {
            leaders.push(index);
        }
        assert!(status["leader_epoch"].as_u64() >= Some(epoch));
    }
    assert_eq!(leaders, vec![leader], "exactly one node leads");
    let (_, id_c) = cluster.write(leader, "c", &json!("three"));
    assert!(id_c > id_b && id_b > id);
    for (key, value) in [("a", "one"), ("b", "two"), ("c", "three")] {
        assert_eq!(
            values_everywhere(&cluster, key, id_c),
            vec![Some(json!(value)); 3]
        );
    }
}

#[test]
fn epochs_never_collide_and_the_old_leader_never_keeps_a_history_of_its_own() {
    // The review's scenario, with failover: L leads with A and B; L dies and another node
    // takes over and writes alone (acks=leader) before dying too; L comes back as
    // `kvd leader`. Whatever leads then leads a new epoch, and once everyone is back every
    // node holds the same history — L never serves writes of its own that no leader kept.
    let mut cluster = Cluster::start(3, &[]);
    let mut epochs: BTreeMap<u64, usize> = BTreeMap::new();
    let mut note = |cluster: &Cluster| {
        let (leader, epoch) = cluster.wait_for_leader(None);
        if let Some(earlier) = epochs.insert(epoch, leader) {
            assert_eq!(
                earlier, leader,
                "epoch {epoch} led by {earlier} and {leader}"
            );
        }
        leader
    };
    let l = note(&cluster);
    for index in 1..=3 {
        cluster.write(l, &format!("w{index}"), &json!(index));
    }
    cluster.kill_9(l);
    let a = note(&cluster);
    for key in ["a1", "a2"] {
        let answer = cluster
            .put(a, &format!("{key}?acks=leader"), &json!(key))
            .expect("an answer");
        expect_status(answer, 200);
    }
    cluster.kill_9(a);
    // L back with its original command, next to the third node.
    cluster.start_node(l);
    let after = note(&cluster);
    assert_ne!(after, a);
    let (_, id) = cluster.write(after, "l1", &json!("l1"));
    cluster.start_node(a);
    let (leader, _) = cluster.wait_for_leader(None);
    let (_, last_id) = cluster.write(leader, "last", &json!("last"));
    assert!(last_id > id);
    // One history everywhere: the same value (or absence) of every key on every node.
    for key in ["w1", "w2", "w3", "a1", "a2", "l1", "last"] {
        let values = values_everywhere(&cluster, key, last_id);
        assert!(
            values.windows(2).all(|pair| pair[0] == pair[1]),
            "{key}: {values:?}\n{}",
            cluster.statuses()
        );
    }
    for index in 0..3 {
        cluster.wait_for_status(
            index,
            "leading, or following with its link connected",
            |status| status["role"] == "leader" || status["link"]["state"] == "connected",
        );
    }
    println!("leaders by epoch: {epochs:?}");
}

#[test]
fn a_follower_cut_off_from_its_leader_reports_itself_unhealthy() {
    // Two nodes: node 0 is the only controller voter, so stopping it stops every election and
    // node 1 stays cut off.
    let mut cluster = Cluster::start(2, &["--lag-limit-ms", "500"]);
    cluster.wait_for_leader(None);
    let health = |cluster: &Cluster, index: usize| {
        let answer = cluster
            .request(index, "GET", "/health", None)
            .expect("answers");
        (answer.status, answer.json())
    };
    assert_eq!(health(&cluster, 1).0, 200);
    cluster.signal(0, "STOP");
    let started = Instant::now();
    let body = loop {
        let (status, body) = health(&cluster, 1);
        if status == 503 {
            break body;
        }
        assert!(started.elapsed() < DEADLINE, "still healthy: {body}");
        std::thread::sleep(Duration::from_millis(20));
    };
    // Whichever of its two clocks ran past the lag limit first: its leader's answers, or the
    // controller's confirmation that its leader still leads (node 0 is both, stopped at once).
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("has not heard from its leader")
            || detail.contains("the controller has not confirmed"),
        "{body}"
    );
    // Its reads still answer, but it will not vouch for a bounded staleness.
    let answer = cluster
        .request(1, "GET", "/key/x?max_staleness_ms=400", None)
        .expect("answers");
    assert_eq!(answer.status, 503);
    assert_eq!(
        cluster
            .request(1, "GET", "/key/x", None)
            .expect("answers")
            .status,
        404
    );
    cluster.signal(0, "CONT");
    let started = Instant::now();
    while health(&cluster, 1).0 != 200 {
        assert!(started.elapsed() < DEADLINE, "never healthy again");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Fresh enough again once the controller has confirmed its leader (its next heartbeat
    // answer, within ~100 ms of a new epoch): not found, not 503.
    let started = Instant::now();
    loop {
        let answer = cluster
            .request(1, "GET", "/key/x?max_staleness_ms=2000", None)
            .expect("answers");
        if answer.status == 404 {
            break;
        }
        assert_eq!(
            answer.status,
            503,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
        assert!(started.elapsed() < DEADLINE, "never fresh enough again");
        std::thread::sleep(Duration::from_millis(20));
    }
}
