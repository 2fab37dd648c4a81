//! Membership and planned hand-overs against real processes: `kvd follower N --leader URL`
//! joins a running cluster (a learner of the controller, then in the ISR once caught up) and
//! `DELETE /admin/members/{id}` removes it; `POST /admin/transfer-leader` moves the leadership
//! under load with no acknowledged write lost.

use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};

use super::cluster::{expect_status, Cluster, QUORUM_2_LAG_LIMIT_30_S};
use super::load::{assert_holds_all, Writers};
use crate::harness::{assert_detail_contains, request_within, DEADLINE};

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
    // Node 3, still running, says it is no longer a member (before: /health 200, a silent
    // replica outside the cluster, across restarts too).
    let started = Instant::now();
    let health = loop {
        let health = cluster.request(3, "GET", "/health", None).expect("answers");
        if health.status == 503 {
            break health.json();
        }
        assert!(
            started.elapsed() < crate::harness::DEADLINE,
            "node 3 still healthy: {}",
            String::from_utf8_lossy(&health.body)
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_detail_contains(&health, "does not list it");
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

/// A node removed while it was stopped (SIGSTOP: it never got the controller entry that
/// removes it) stops standing for the controller's election once it hears the cluster's
/// newest metadata. Before, it stood for election for as long as it ran: a new term every
/// election timeout (term 18 after 20 s in a by-hand run), vote requests to every member and
/// about ten log lines a second; the members rejected it, so nothing else changed.
#[test]
fn a_node_removed_while_stopped_stops_standing_for_election() {
    let mut cluster = Cluster::start(3, &[]);
    let (leader, _) = cluster.wait_for_leader(None);
    let removed = (leader + 1) % 3;
    let asked = 3 - leader - removed;
    cluster.signal(removed, "STOP");
    let answer = cluster
        .request(asked, "DELETE", &format!("/admin/members/{removed}"), None)
        .expect("answers");
    expect_status(answer, 200);
    cluster.wait_for_leader_status("without the removed node", |status| {
        !ids(status, "members").contains(&(removed as u64))
    });
    cluster.signal(removed, "CONT");
    let status = cluster.wait_for_status(removed, "out of the election", |status| {
        status["controller"]["campaigning"] == json!(false)
    });
    let term = status["controller"]["term"].as_u64();
    std::thread::sleep(std::time::Duration::from_secs(3));
    let later = cluster.status(removed).expect("answers");
    assert_eq!(
        later["controller"]["term"].as_u64(),
        term,
        "the removed node still stands for election: {later}"
    );
    // The other two go on, under the same controller leader.
    let (_, after) = cluster.write(leader, "after", &json!(1));
    assert_eq!(cluster.read_after(asked, "after", after), Some(json!(1)));
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

/// A leader killed (`kill -9`) while it hands its leadership to a node that cannot catch up,
/// and started again at once, is named leader of the epoch it led before: it asks to be
/// elected again in a new one (it never leads an epoch twice), and the old epoch's transfer
/// ends with it. Before, the driver forgot the transfer but left the node "handing over": it
/// took writes and refused every read 503 for as long as it led (found by the nemesis kill -9
/// scenario in CI).
#[test]
fn a_leader_elected_again_over_its_own_transfer_serves_reads() {
    // Sessions long enough that the restarted leader is back before anyone replaces it; the
    // target copies nothing (its fetches fail) but stays in the ISR.
    let mut cluster = Cluster::start(
        3,
        &[
            "--session-timeout-ms",
            "8000",
            "--lease-ms",
            "1000",
            "--lag-limit-ms",
            "30000",
        ],
    );
    let (leader, epoch) = cluster.wait_for_leader(None);
    let to = (leader + 1) % 3;
    cluster.block_fetches(to, true);
    let (_, id) = cluster.write(leader, "k", &json!(1));
    // The transfer waits for `to` to hold the whole log, which it never does: the request is
    // answered only when the leader dies.
    let address = cluster.nodes[leader].address;
    let body = json!({ "to": to }).to_string();
    let asking = std::thread::spawn(move || {
        request_within(
            address,
            "POST",
            "/admin/transfer-leader",
            &[],
            Some(body.as_bytes()),
            DEADLINE,
        )
    });
    cluster.wait_for_status(leader, "handing over", |status| {
        status["transfer"]["to"] == json!(to) && status["leader_epoch"] == json!(epoch)
    });
    cluster.kill_9(leader);
    let _ = asking.join();
    cluster.start_node(leader);
    let status = cluster.wait_for_leader_status("in a new epoch", |status| {
        status["leader_epoch"].as_u64() > Some(epoch)
    });
    assert_eq!(
        status["data_leader"],
        json!(leader),
        "the restarted leader was not elected again: {status}"
    );
    assert_eq!(status["transfer"], Json::Null, "{status}");
    // It serves a linearizable read (before: 503 "handing over" until DEADLINE).
    assert_eq!(cluster.read_after(leader, "k", id), Some(json!(1)));
    let (_, after) = cluster.write(leader, "after", &json!(2));
    cluster.block_fetches(to, false);
    assert_eq!(cluster.read_after(to, "after", after), Some(json!(2)));
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

/// A follower, a controller voter, restarted with its `controller/` deleted: before, it
/// rejoined with an empty Raft log and vote — the active controller's openraft core panicked
/// ("follower log reversion is not allowed"), the other node elected itself with the empty
/// node's vote, and the node never learned the cluster's metadata again. It now refuses to
/// start, naming what was lost; the documented way out works: remove it from the cluster,
/// move `node.meta` aside, and it joins as a new member with every write.
#[test]
fn a_follower_that_lost_its_controller_state_refuses_to_start_until_removed() {
    lost_state_refused_until_removed(|data_dir| {
        std::fs::remove_dir_all(data_dir.join("controller")).expect("remove controller/");
    });
}

/// A follower whose whole data directory is gone (a new disk) started with its original
/// command: before, it was taken for a retried join (same id, same URL), and the same panic
/// followed — the active controller (here also the data leader) lost its Raft core for good.
/// The join is refused: the controller quorum had replicated to that member.
#[test]
fn a_follower_on_a_new_disk_is_refused_until_removed() {
    lost_state_refused_until_removed(|data_dir| {
        std::fs::remove_dir_all(data_dir).expect("remove the data directory");
    });
}

/// A follower whose controller log is damaged (a flipped byte) is refused with the file, and
/// the way out a follower needs: before, the hint was the leader's (move `controller/` and
/// `node.meta` aside to start a new one-node cluster), and a follower doing so was refused
/// at its join (its id is a member at its own URL) without being removed first.
#[test]
fn a_follower_with_a_damaged_controller_log_is_refused_until_removed() {
    lost_state_refused_until_removed(|data_dir| {
        let log_dir = data_dir.join("controller").join("log");
        let segment = std::fs::read_dir(&log_dir)
            .expect("controller log")
            .map(|entry| entry.expect("entry").path())
            .find(|path| path.extension().is_some_and(|ext| ext == "wal"))
            .expect("a controller log segment");
        let mut bytes = std::fs::read(&segment).expect("read segment");
        bytes[100] ^= 0xff;
        std::fs::write(&segment, &bytes).expect("write segment");
    });
}

fn lost_state_refused_until_removed(lose: impl Fn(&std::path::Path)) {
    let mut cluster = Cluster::start(3, &[]);
    let (leader, _) = cluster.wait_for_leader(None);
    let (_, id) = cluster.write(leader, "before", &json!("kept"));
    assert!(cluster.read_after(2, "before", id).is_some());
    assert!(cluster.terminate(2).success());
    let data_dir = cluster.nodes[2].data_dir.clone();
    lose(&data_dir);

    let (status, stderr) = crate::harness::run_until_exit(&cluster.nodes[2].args, &data_dir);
    assert!(!status.success(), "started: {stderr}");
    assert!(stderr.contains("DELETE /admin/members/2"), "{stderr}");
    // The cluster is untouched: writes go on, node 2 still a member, no panic anywhere.
    let (leader, _) = cluster.write(leader, "while-refused", &json!(1));
    let status = cluster.status(leader).expect("answers");
    assert!(ids(&status, "members").contains(&2), "{status}");

    // The way out: remove it, move node.meta and controller/ aside (if any), start it again.
    let removed = cluster
        .request(leader, "DELETE", "/admin/members/2", None)
        .expect("answers");
    expect_status(removed, 200);
    for (name, aside) in [
        ("node.meta", "node.meta.lost"),
        ("controller", "controller.lost"),
    ] {
        if data_dir.join(name).exists() {
            std::fs::rename(data_dir.join(name), data_dir.join(aside)).expect("mv");
        }
    }
    cluster.start_node(2);
    let (_, after) = cluster.write(leader, "after", &json!(2));
    cluster.wait_for_leader_status("with node 2 back in its ISR", |status| {
        ids(status, "isr").contains(&2)
    });
    assert_eq!(cluster.read_after(2, "before", id), Some(json!("kept")));
    assert_eq!(cluster.read_after(2, "after", after), Some(json!(2)));
    let panicked = (0..3).find(|&index| cluster.log(index).contains("panicked at"));
    assert_eq!(
        panicked,
        None,
        "{}",
        panicked.map(|i| cluster.log(i)).unwrap_or_default()
    );
}

/// A follower whose `node.meta` records an epoch above the cluster's (edited, damaged, or from
/// another run of the cluster) can take no role — epochs come only from the controller — and
/// says so on `/health` and in its log, naming node.meta and the way out, instead of sitting
/// roleless without a word (helper-24's finding: `role: none`, out of the ISR, 404s, no
/// warning).
#[test]
fn a_follower_whose_node_meta_records_an_epoch_from_nowhere_says_so() {
    let mut cluster = Cluster::start(3, &[]);
    let (leader, epoch) = cluster.wait_for_leader(None);
    let follower = (leader + 1) % 3;
    assert!(cluster.terminate(follower).success());
    let meta_path = cluster.nodes[follower].data_dir.join("node.meta");
    let mut meta: Json =
        serde_json::from_slice(&std::fs::read(&meta_path).expect("node.meta")).expect("JSON");
    meta["epoch"] = json!(epoch + 8);
    crate::harness::write_resealed_json(&meta_path, meta);
    cluster.start_node(follower);
    let started = Instant::now();
    loop {
        let health = cluster
            .request(follower, "GET", "/health", None)
            .expect("answers");
        let detail = health.json()["detail"].as_str().unwrap_or("").to_owned();
        if detail.contains("node.meta") {
            assert_eq!(health.status, 503);
            assert!(detail.contains(&format!("epoch {}", epoch + 8)), "{detail}");
            println!("{detail}");
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "/health never named node.meta: {detail}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let said = Instant::now();
    while !cluster
        .log(follower)
        .contains("records an epoch above the cluster's")
    {
        assert!(said.elapsed() < DEADLINE, "{}", cluster.log(follower));
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `kvd leader` started with its command on an empty data directory (a new disk, a deleted
/// directory) after its cluster failed over initializes a one-member cluster at node 0's
/// address. Before, it ran on as that second cluster: it took writes there, and answered
/// "not found" for keys the first cluster acknowledged (found by trying it by hand:
/// `rm -rf` of the leader's directory, `kill -9`, the same command again). Now the first
/// Raft message of its old cluster's controller makes it stop, naming that cluster and the
/// ways out, and it refuses to start from that directory again; the old cluster runs on, and
/// the machine rejoins it as a new member once node 0 is removed.
#[test]
fn a_leader_on_a_new_disk_stops_once_its_old_cluster_claims_it() {
    let mut cluster = Cluster::start(3, &[]);
    let (leader, _) = cluster.wait_for_leader(None);
    let (_, id) = cluster.write(leader, "before", &json!("kept"));
    let status = cluster.status(leader).expect("answers");
    let cluster_id = status["cluster_id"]
        .as_str()
        .expect("a cluster id")
        .to_owned();
    cluster.kill_9(0);
    let (leader, _) = cluster.wait_for_leader(Some(0));
    let data_dir = cluster.nodes[0].data_dir.clone();
    std::fs::remove_dir_all(&data_dir).expect("remove node 0's data directory");

    let started = Instant::now();
    let (status, stderr) = crate::harness::run_until_exit(&cluster.nodes[0].args, &data_dir);
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "Cluster {cluster_id} counts this node (node 0 at http://{}",
            cluster.nodes[0].address
        )) && stderr.contains("DELETE /admin/members/0"),
        "{stderr}"
    );
    eprintln!("node 0 stopped {:?} after its start", started.elapsed());
    let (status, stderr) = crate::harness::run_until_exit(&cluster.nodes[0].args, &data_dir);
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("refusing to start")
            && stderr.contains("claimed-by-another-cluster")
            && stderr.contains(&format!("Cluster {cluster_id} counts this node")),
        "{stderr}"
    );

    // The old cluster ran on meanwhile.
    let (leader, _) = cluster.write(leader, "while-refused", &json!(1));
    // The way out: remove node 0, move its directory aside, start the machine as node 3.
    let removed = cluster
        .request(leader, "DELETE", "/admin/members/0", None)
        .expect("answers");
    expect_status(removed, 200);
    std::fs::rename(&data_dir, data_dir.with_extension("lost")).expect("move aside");
    let leader_url = cluster.url(leader);
    let node = &mut cluster.nodes[0];
    node.args = [
        "follower",
        "3",
        "--leader",
        &leader_url,
        "--listen",
        &node.address.to_string(),
        "--data-dir",
        &node.data_dir.display().to_string(),
    ]
    .map(str::to_owned)
    .to_vec();
    cluster.start_node(0);
    assert_eq!(cluster.read_after(0, "before", id), Some(json!("kept")));
    cluster.wait_for_leader_status("with node 3 in its ISR", |status| {
        ids(status, "isr").contains(&3)
    });
}

/// A data leader stopped with SIGTERM hands its leadership to an in-sync replica before it
/// exits, as etcd does on stop and Kafka's controlled shutdown does: the successor leads the
/// next epoch by a planned transfer that also takes the stopping node out of the ISR, and if
/// the stopping node led the controller quorum, the successor is asked to stand and leads
/// that too before the node exits. Before, the stopping leader went silent, and the cluster
/// took writes again only once its session expired and the controller elected a successor (a
/// write gap of ~1.5 s on this machine, as for a `kill -9`); under `--write-quorum 2` the
/// successor then waited the lag limit (30 s here) out for the stopped node.
#[test]
fn a_leader_stopped_with_sigterm_hands_its_leaderships_over_first() {
    let (mut cluster, leader, epoch) = Cluster::start_in_sync(3, &QUORUM_2_LAG_LIMIT_30_S);
    let (_, id) = cluster.write(leader, "before", &json!(1));
    let led_the_controller = cluster
        .status(leader)
        .is_some_and(|status| status["controller"]["raft_leader"] == json!(leader));
    let stopping = Instant::now();
    assert!(cluster.terminate(leader).success());
    let log = cluster.log(leader);
    assert!(
        log.contains("handed the leadership over before stopping"),
        "{log}"
    );
    // Best effort, bounded by a second: the candidate may lose its round (a vote answer
    // late on a loaded machine, seen with debug builds), and the quorum then elects as after
    // any leader's exit.
    if led_the_controller {
        assert!(
            log.contains("handed the controller's leadership over before stopping")
                || log.contains("no other member took the controller's leadership in time"),
            "{log}"
        );
    }
    let (successor, new_epoch) = cluster.wait_for_leader(Some(leader));
    assert_eq!(new_epoch, epoch + 1, "{}", cluster.statuses());
    cluster.write(successor, "after", &json!(2));
    let took = stopping.elapsed();
    println!("stopped the leader (controller leader too: {led_the_controller}); a quorum write answered {took:?} after the SIGTERM");
    assert!(
        took < Duration::from_secs(10),
        "{took:?} (the lag limit is 30 s): {}",
        cluster.statuses()
    );
    let status = cluster.status(successor).expect("the successor answers");
    assert!(!ids(&status, "isr").contains(&(leader as u64)), "{status}");
    assert_eq!(cluster.read_after(successor, "before", id), Some(json!(1)));
    let successor_log = cluster.log(successor);
    assert!(
        successor_log.contains(r#""command":"transfer_leader""#)
            && successor_log.contains(r#""leaving":true"#)
            && !successor_log.contains(r#""command":"elect_leader""#),
        "{successor_log}"
    );
}

/// A leader stopped with SIGTERM while every other node is paused (SIGSTOP) has nobody to hand
/// over to: the transfer and the controller's hand-over each give up at their bound (1 s), the
/// node says so and exits anyway — a stop never hangs on its peers — and once the others
/// resume they elect a successor holding every acknowledged write.
#[test]
fn a_leader_stopped_while_the_others_are_paused_gives_up_its_hand_over_and_exits() {
    let (mut cluster, leader, _) = Cluster::start_in_sync(3, &QUORUM_2_LAG_LIMIT_30_S);
    let (_, id) = cluster.write(leader, "before", &json!(1));
    let others: Vec<usize> = (0..3).filter(|&index| index != leader).collect();
    for &other in &others {
        cluster.signal(other, "STOP");
    }
    let stopping = Instant::now();
    assert!(cluster.terminate(leader).success());
    let took = stopping.elapsed();
    let log = cluster.log(leader);
    println!("the leader exited {took:?} after the SIGTERM, its peers paused");
    assert!(
        log.contains("the hand-over did not finish in time; stopping anyway")
            || log.contains("could not hand the leadership over; stopping anyway"),
        "{log}"
    );
    // Two steps of at most a second each, and the stop itself: far below this unless a step
    // waited on a paused peer without its bound.
    assert!(took < Duration::from_secs(10), "{took:?}: {log}");
    for &other in &others {
        cluster.signal(other, "CONT");
    }
    let (successor, _) = cluster.wait_for_leader(Some(leader));
    assert_eq!(cluster.read_after(successor, "before", id), Some(json!(1)));
    cluster.write(successor, "after", &json!(2));
}

/// `POST /controller/campaign` (a stopping Raft leader's request that another member stand)
/// answers its own cluster only: another cluster's id gets 409 and a body without one 400,
/// and neither starts an election; its own cluster's id on the Raft leader is a no-op.
#[test]
fn a_campaign_request_from_another_cluster_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let kvd = crate::harness::Kvd::start(&dir.path().join("leader"), &[], &[]);
    let term = |kvd: &crate::harness::Kvd| {
        let (_, status) = kvd.json("GET", "/cluster_status", None);
        (
            status["controller"]["term"].clone(),
            status["controller"]["raft_leader"].clone(),
        )
    };
    let (_, status) = kvd.json("GET", "/cluster_status", None);
    let cluster_id = u64::from_str_radix(status["cluster_id"].as_str().expect("cluster_id"), 16)
        .expect("a hex cluster id");
    let before = term(&kvd);
    let ask = |body: &str| kvd.json("POST", "/controller/campaign", Some(body));
    let (code, answer) = ask(&json!({ "cluster_id": cluster_id ^ 1 }).to_string());
    assert_eq!(code, 409, "{answer}");
    assert_detail_contains(&answer, "this node is in cluster");
    let (code, answer) = ask("{}");
    assert_eq!(code, 400, "{answer}");
    let (code, answer) = ask(&json!({ "cluster_id": cluster_id }).to_string());
    assert_eq!(code, 200, "{answer}");
    assert_eq!(term(&kvd), before, "no election");
}
