//! Crash loops on a 3-node cluster with `--write-quorum 2`: writers run against the leader, a
//! random node (leader or follower) is kill -9'd mid-load and restarted with its original
//! command (a killed leader is replaced meanwhile), and every acknowledged write must be on
//! every node once they catch up. `KVD_CLUSTER_CRASH_CYCLES` scales the
//! campaign (CI runs 10 cycles). Also: a follower aborting exactly between fetching frames and
//! appending them (the `follower-after-fetch-before-append` fail point), three times over.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use crate::failover::cluster::Cluster;
use crate::harness::{base_seed, free_port, request, Kvd, TestRng, DEADLINE};

struct Node {
    kvd: Option<Kvd>,
    args: Vec<String>,
    data_dir: std::path::PathBuf,
}

impl Node {
    fn start(&mut self, env: &[(&str, &str)]) {
        // The old process's log file goes with it: drop it before the new one opens the path.
        self.kvd = None;
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.kvd = Some(Kvd::spawn(&self.data_dir, &args, env));
    }
    fn kvd(&self) -> &Kvd {
        self.kvd.as_ref().expect("running")
    }
}

fn node(root: &std::path::Path, role: &[&str], port: u16, extra: &[&str]) -> Node {
    let name = if role[0] == "leader" {
        "leader".to_owned()
    } else {
        format!("follower-{}", role[1])
    };
    let data_dir = root.join(name);
    let mut args: Vec<String> = role.iter().map(|arg| arg.to_string()).collect();
    for arg in [
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data-dir",
        data_dir.to_str().expect("UTF-8"),
    ] {
        args.push(arg.to_owned());
    }
    args.extend(extra.iter().map(|arg| arg.to_string()));
    Node {
        kvd: None,
        args,
        data_dir,
    }
}

type Acknowledged = Arc<Mutex<Vec<(String, u64, u64)>>>;

fn write_until_stopped(
    address: SocketAddr,
    writer: usize,
    start: u64,
    acknowledged: Acknowledged,
    stop: Arc<AtomicBool>,
) {
    for index in start.. {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let key = format!("w{writer}-{index}");
        let body = json!({ "value": index }).to_string();
        match request(
            address,
            "PUT",
            &format!("/key/{key}"),
            &[("Content-Type", "application/json")],
            Some(body.as_bytes()),
        ) {
            Ok(answer) if answer.status == 200 => {
                let id = answer.json()["id"].as_u64().expect("id");
                acknowledged.lock().expect("lock").push((key, index, id));
            }
            // 503 (quorum not reached in time) or a dead leader: not acknowledged.
            Ok(_) => {}
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

#[test]
fn killing_any_node_of_a_quorum_2_cluster_loses_no_acknowledged_write() {
    let seed = base_seed("cluster_crash_loop");
    let mut rng = TestRng::new(seed);
    let cycles: usize = std::env::var("KVD_CLUSTER_CRASH_CYCLES")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(10);
    let mut cluster = Cluster::start(
        3,
        &[
            "--write-quorum",
            "2",
            "--acks-timeout-ms",
            "2000",
            "--fetch-wait-ms",
            "100",
        ],
    );
    let acknowledged: Acknowledged = Arc::default();
    let mut next_index = 0u64;
    let mut kills = [0usize; 3];
    let mut leader_kills = 0;
    for cycle in 0..cycles {
        // Writers write to whoever leads now; when it dies, their writes fail (not
        // acknowledged) until the cycle ends.
        let (leader, _) = cluster.wait_for_leader(None);
        let stop = Arc::new(AtomicBool::new(false));
        let address = cluster.nodes[leader].address;
        let writers: Vec<_> = (0..3)
            .map(|writer| {
                let acknowledged = acknowledged.clone();
                let stop = stop.clone();
                let start = next_index;
                std::thread::spawn(move || {
                    write_until_stopped(address, writer, start, acknowledged, stop)
                })
            })
            .collect();
        next_index += 1_000_000;
        std::thread::sleep(Duration::from_millis(rng.in_range(100..=400)));
        let victim = rng.in_range(0..=2) as usize;
        kills[victim] += 1;
        leader_kills += usize::from(victim == leader);
        cluster.kill_9(victim);
        std::thread::sleep(Duration::from_millis(rng.in_range(0..=200)));
        stop.store(true, Ordering::SeqCst);
        for writer in writers {
            writer.join().expect("writer");
        }
        cluster.start_node(victim);

        // Every acknowledged write is on every node once they catch up, whoever leads now.
        cluster.wait_until_formed();
        let acknowledged = acknowledged.lock().expect("lock").clone();
        let highest = acknowledged.iter().map(|(_, _, id)| *id).max().unwrap_or(0);
        for node in 0..3 {
            assert_eq!(
                cluster.read_after(node, "_", highest),
                None,
                "cycle {cycle}: node {node} applied id {highest}"
            );
            for (key, value, id) in &acknowledged {
                let answer = cluster
                    .request(node, "GET", &format!("/key/{key}"), None)
                    .expect("an answer");
                assert_eq!(
                    (answer.status, &answer.json()["value"]),
                    (200, &json!(value)),
                    "cycle {cycle}: acknowledged {key} (id {id}) missing on node {node}"
                );
            }
        }
    }
    let total = acknowledged.lock().expect("lock").len();
    println!(
        "{cycles} cycles, kills per node = {kills:?} ({leader_kills} of the leader), {total} acknowledged writes checked on all nodes"
    );
    assert!(total > 0);
}

#[test]
fn a_follower_aborting_between_fetch_and_append_loses_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let leader = Kvd::start(&dir.path().join("leader"), &["--sync-policy", "batch"], &[]);
    let leader_url = format!("http://{}", leader.address);
    let mut follower = node(
        dir.path(),
        &["follower", "1"],
        free_port(),
        &["--leader", &leader_url, "--fetch-wait-ms", "50"],
    );
    let mut last_id = 0;
    let mut aborts = 0;
    for round in 0..3u64 {
        follower.start(&[(
            "KVD_FAILPOINTS",
            "follower-after-fetch-before-append=abort@2",
        )]);
        for index in 0..50 {
            let (status, body) = leader.json(
                "PUT",
                &format!("/key/r{round}-{index}"),
                Some(&json!({ "value": index }).to_string()),
            );
            assert_eq!(status, 200);
            last_id = body["id"].as_u64().expect("id");
        }
        let status = follower.kvd.as_mut().expect("running").wait_for_exit();
        assert!(!status.success(), "the fail point aborts the follower");
        assert!(
            follower
                .kvd()
                .stderr()
                .contains("follower-after-fetch-before-append"),
            "{}",
            follower.kvd().stderr()
        );
        aborts += 1;
    }
    follower.start(&[]);
    let (status, _) = follower.kvd().json(
        "GET",
        &format!("/key/_?min_id={last_id}&wait_ms={}", DEADLINE.as_millis()),
        None,
    );
    assert_eq!(status, 404, "caught up through {last_id}");
    for round in 0..3 {
        for index in [0, 25, 49] {
            let (status, body) =
                follower
                    .kvd()
                    .json("GET", &format!("/key/r{round}-{index}"), None);
            assert_eq!((status, &body["value"]), (200, &json!(index)));
        }
    }
    println!("follower aborted {aborts} times at follower-after-fetch-before-append and caught up");
}
