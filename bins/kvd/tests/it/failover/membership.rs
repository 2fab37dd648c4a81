//! Membership and planned hand-overs against real processes: `kvd follower N --leader URL`
//! joins a running cluster (a learner of the controller, then in the ISR once caught up) and
//! `DELETE /admin/members/{id}` removes it; `POST /admin/transfer-leader` moves the leadership
//! under load with no acknowledged write lost.

use std::time::Instant;

use serde_json::json;

use super::cluster::{expect_status, Cluster};
use super::load::{assert_holds_all, Writers};

fn ids(status: &serde_json::Value, field: &str) -> Vec<u64> {
    match field {
        "members" => status["members"]
            .as_array()
            .map(|members| {
                members
                    .iter()
                    .filter_map(|member| member["id"].as_u64())
                    .collect()
            })
            .unwrap_or_default(),
        _ => serde_json::from_value(status[field].clone()).unwrap_or_default(),
    }
}

#[test]
fn a_node_joins_a_running_cluster_and_is_removed_again() {
    let mut cluster = Cluster::start_first(4, 3, |_| Vec::new());
    let (leader, _) = cluster.wait_for_leader(None);
    let (_, id) = cluster.write(leader, "before", &json!("joined later"));

    // `kvd follower 3 --leader <node 0>`: admitted, copies everything, counted in the ISR.
    cluster.start_node(3);
    let status = cluster.wait_for_leader_status("with node 3 in its ISR", |status| {
        ids(status, "isr").contains(&3)
    });
    assert!(ids(&status, "members").contains(&3), "{status}");
    assert_eq!(
        cluster.read_after(3, "before", id),
        Some(json!("joined later"))
    );
    let joined = cluster.status(3).expect("answers");
    assert_eq!(joined["role"], "follower", "{joined}");
    assert_eq!(joined["cluster_id"], status["cluster_id"], "{joined}");
    // A node the cluster names as voter or learner of its controller.
    let controller = &status["controller"];
    let in_controller =
        ids(controller, "voters").contains(&3) || ids(controller, "learners").contains(&3);
    assert!(in_controller, "{controller}");

    // The leader cannot be removed (transfer first); node 3 can, through any node.
    let (leader, _) = cluster.wait_for_leader(None);
    let refused = cluster
        .request(1, "DELETE", &format!("/admin/members/{leader}"), None)
        .expect("answers");
    expect_status(refused, 409);
    let asked = if leader == 1 { 2 } else { 1 };
    let removed = cluster
        .request(asked, "DELETE", "/admin/members/3", None)
        .expect("answers");
    expect_status(removed, 200);
    let status = cluster.wait_for_leader_status("without node 3", |status| {
        !ids(status, "members").contains(&3) && !ids(status, "isr").contains(&3)
    });
    let controller = &status["controller"];
    assert!(!ids(controller, "voters").contains(&3) && !ids(controller, "learners").contains(&3));
    assert!(cluster.terminate(3).success());
    // The three go on.
    let (_, after) = cluster.write(leader, "after", &json!(1));
    for index in 0..3 {
        assert_eq!(
            cluster.read_after(index, "after", after),
            Some(json!(1)),
            "node {index}"
        );
    }
}

#[test]
fn a_planned_transfer_under_load_loses_no_acknowledged_write() {
    // The default write quorum (1, asynchronous): the hand-over itself makes it lossless.
    let cluster = Cluster::start(3, &[]);
    let (old, old_epoch) = cluster.wait_for_leader(None);
    let to = (old + 2) % 3;
    let writers = Writers::start(&cluster, 3, "");
    writers.wait_for_more(300);
    let asked = Instant::now();
    let answer = cluster
        .request(
            old,
            "POST",
            "/admin/transfer-leader",
            Some(&json!({ "to": to }).to_string()),
        )
        .expect("answers");
    let took = asked.elapsed();
    let answer = expect_status(answer, 200);
    let body = answer.json();
    assert_eq!(body["leader"], json!(to), "{body}");
    assert!(body["epoch"].as_u64() > Some(old_epoch), "{body}");
    println!("planned transfer {old} -> {to} under load: answered in {took:?}");
    writers.wait_for_more(200);
    let acked = writers.stop();
    let (leader, _) = cluster.wait_for_leader(None);
    assert_eq!(leader, to);
    for index in 0..3 {
        assert_holds_all(&cluster, index, &acked, "after the transfer");
    }
    println!("{} acknowledged writes, all on every node", acked.len());
}

/// The cluster's write quorum is set when it is created (`kvd leader`'s `--write-quorum`).
/// A node restarted with another `--write-quorum` asks the controller to take it: before, the
/// flag was silently ignored (a cluster created with 1 and restarted with `--write-quorum 2`
/// kept acknowledging writes the leader alone held). A node started without the flag changes
/// nothing.
#[test]
fn a_node_restarted_with_another_write_quorum_sets_the_clusters() {
    let mut cluster = Cluster::start(3, &[]);
    let status = cluster.wait_for_leader_status("formed", |_| true);
    assert_eq!(status["cluster_write_quorum"], json!(1), "{status}");
    cluster.terminate(2);
    cluster.nodes[2]
        .args
        .extend(["--write-quorum".to_owned(), "2".to_owned()]);
    cluster.start_node(2);
    let status = cluster.wait_for_leader_status("with write quorum 2", |status| {
        status["cluster_write_quorum"] == json!(2) && status["write_quorum"] == json!(2)
    });
    println!("write quorum now: {}", status["cluster_write_quorum"]);
    // Node 1, restarted without the flag, leaves it as it is.
    cluster.terminate(1);
    cluster.start_node(1);
    cluster.wait_until_formed();
    let status = cluster.wait_for_leader_status("formed again", |_| true);
    assert_eq!(status["cluster_write_quorum"], json!(2), "{status}");
}
