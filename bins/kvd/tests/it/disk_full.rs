//! A full disk under the real binary: `KVD_FAULT_DISK_FULL_FILE` makes the node's disk full
//! while a file exists (a new segment's allocation, or a write that grows a file, fails with
//! `ENOSPC`, as on a full disk). Writes that fit the active segment's preallocated space go
//! on; the first that needs a new segment, and every one after it, gets `507` and is not
//! applied; `/health` says the disk is full; reads go on; and once there is room, writes are
//! taken again without a restart, nothing acknowledged lost — also by a node restarted while
//! the disk was full.

use serde_json::json;

use crate::harness::{assert_detail_contains, Connection, Kvd};

/// Writes tried before giving up on the disk filling.
const WRITES_MAX: usize = 400;

#[test]
fn a_full_disk_refuses_writes_with_507_and_takes_them_again_once_there_is_room() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("leader");
    let full = dir.path().join("disk-is-full");
    let full_env = full.display().to_string();
    let env = [("KVD_FAULT_DISK_FULL_FILE", full_env.as_str())];
    let args = ["--max-segment-size", "4K"];
    let mut kvd = Kvd::start(&data_dir, &args, &env);
    let mut connection = Connection::open(kvd.address).expect("connect");
    let mut acknowledged: Vec<(String, u64)> = Vec::new();
    let put = |connection: &mut Connection, key: &str, value: u64| {
        let body = json!({ "value": value }).to_string();
        connection
            .send("PUT", &format!("/key/{key}"), Some(&body))
            .expect("PUT")
    };
    for index in 0..5 {
        let key = format!("before-{index}");
        assert_eq!(put(&mut connection, &key, index).status, 200);
        acknowledged.push((key, index));
    }

    std::fs::write(&full, b"").expect("fill the disk");
    let mut refused = None;
    for index in 0..WRITES_MAX as u64 {
        let key = format!("k{index}");
        let answer = put(&mut connection, &key, index);
        match answer.status {
            200 => acknowledged.push((key, index)),
            507 => {
                refused = Some((key, answer.json()));
                break;
            }
            status => panic!("{key}: {status} {}", answer.json()),
        }
    }
    let (refused_key, body) = refused.expect("no write was refused: the disk never filled");
    println!("{refused_key}: 507 {body}");
    let detail = body["detail"].as_str().expect("detail");
    assert!(detail.contains("out of disk space"), "{detail}");
    assert!(detail.contains("No space left on device"), "{detail}");
    let refused_at = std::time::Instant::now();
    for attempt in 0..50 {
        let answer = put(&mut connection, &format!("later-{attempt}"), 0);
        assert_eq!(answer.status, 507, "{}", answer.json());
    }
    // Said at most once a second, not once per refused request.
    let lines = kvd.stderr().matches("request failed").count() as u64;
    assert!(
        lines <= refused_at.elapsed().as_secs() + 2,
        "{lines} lines for 51 refused writes in {:?}",
        refused_at.elapsed()
    );
    let health = connection.send("GET", "/health", None).expect("health");
    assert_eq!(health.status, 503);
    let health = health.json();
    assert!(
        health["detail"]
            .as_str()
            .is_some_and(|detail| detail.starts_with("the disk is full")),
        "{health}"
    );
    let check_reads = |kvd: &Kvd, acknowledged: &[(String, u64)], context: &str| {
        for (key, value) in acknowledged {
            let (status, body) = kvd.json("GET", &format!("/key/{key}"), None);
            assert_eq!(
                (status, &body["value"]),
                (200, &json!(value)),
                "{context}: {key}"
            );
        }
        let (status, _) = kvd.json("GET", &format!("/key/{refused_key}"), None);
        assert_eq!(status, 404, "{context}: the refused write was applied");
    };
    check_reads(&kvd, &acknowledged, "full");
    drop(connection);

    // Restarted on the full disk: it starts, but cannot save its controller's vote or commit
    // mark (its member waits for room) or write its new epoch's first entry (the no-op that
    // lets a leader vouch for its reads), so it answers 503 saying why; both are tried again
    // every second.
    assert!(kvd.terminate().success(), "{}", kvd.stderr());
    let kvd = Kvd::start(&data_dir, &args, &env);
    let (status, body) = kvd.json("GET", "/key/before-0", None);
    assert_eq!(status, 503, "{body}");
    assert_detail_contains(&body, "its disk is full");
    let (status, health) = kvd.json("GET", "/health", None);
    assert_eq!(status, 503, "{health}");

    // Room again: the restarted node takes up its leadership, and writes are taken, without
    // a restart; the log rolls on.
    std::fs::remove_file(&full).expect("free the disk");
    let freed = std::time::Instant::now();
    while kvd.json("GET", "/health", None).0 != 200 {
        assert!(
            freed.elapsed() < crate::harness::DEADLINE,
            "{}",
            kvd.stderr()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    println!(
        "restarted node healthy {:?} after the disk was freed",
        freed.elapsed()
    );
    let mut connection = Connection::open(kvd.address).expect("connect");
    for index in 0..100 {
        let key = format!("after-{index}");
        let answer = put(&mut connection, &key, index);
        assert_eq!(answer.status, 200, "{key}: {}", answer.json());
        acknowledged.push((key, index));
    }
    let (status, health) = kvd.json("GET", "/health", None);
    assert_eq!((status, &health["status"]), (200, &json!("ok")), "{health}");
    check_reads(&kvd, &acknowledged, "freed");
}

/// A follower whose disk fills copies nothing more (its `/health` says why) but does not stop
/// for good, as it does after a failed write or `fdatasync`: once there is room it catches up
/// by itself, holding every write the leader acknowledged meanwhile.
#[test]
fn a_follower_whose_disk_fills_catches_up_once_there_is_room() {
    let dir = tempfile::tempdir().expect("temp dir");
    let full = dir.path().join("follower-disk-is-full");
    let full_env = full.display().to_string();
    let args = ["--max-segment-size", "4K"];
    let leader = Kvd::start(&dir.path().join("leader"), &args, &[]);
    let follower = Kvd::start_follower(
        &dir.path().join("follower"),
        &leader,
        &args,
        &[("KVD_FAULT_DISK_FULL_FILE", full_env.as_str())],
    );
    let mut connection = Connection::open(leader.address).expect("connect");
    let mut put = |key: &str, value: u64| {
        let body = json!({ "value": value }).to_string();
        let answer = connection
            .send("PUT", &format!("/key/{key}"), Some(&body))
            .expect("PUT");
        assert_eq!(answer.status, 200, "{key}: {}", answer.json());
        answer.json()["id"].as_u64().expect("id")
    };
    let first = put("first", 0);
    let (status, _) = follower.json(
        "GET",
        &format!("/key/first?min_id={first}&wait_ms=20000"),
        None,
    );
    assert_eq!(status, 200);

    std::fs::write(&full, b"").expect("fill the follower's disk");
    let mut last = first;
    for index in 0..150 {
        last = put(&format!("k{index}"), index);
    }
    let started = std::time::Instant::now();
    loop {
        let (status, health) = follower.json("GET", "/health", None);
        if status == 503
            && health["detail"]
                .as_str()
                .is_some_and(|detail| detail.starts_with("the disk is full"))
        {
            println!("follower: {health}");
            assert!(health["durable_id"].as_u64() < Some(last), "{health}");
            break;
        }
        assert!(
            started.elapsed() < crate::harness::DEADLINE,
            "the follower's disk never filled: {health}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    std::fs::remove_file(&full).expect("free the follower's disk");
    let freed = std::time::Instant::now();
    let (status, body) = follower.json(
        "GET",
        &format!("/key/k149?min_id={last}&wait_ms=20000"),
        None,
    );
    assert_eq!((status, &body["value"]), (200, &json!(149)), "{body}");
    println!(
        "follower caught up {:?} after its disk was freed",
        freed.elapsed()
    );
    for index in 0..150 {
        let (status, body) = follower.json("GET", &format!("/key/k{index}"), None);
        assert_eq!((status, &body["value"]), (200, &json!(index)), "k{index}");
    }
    let (status, health) = follower.json("GET", "/health", None);
    assert_eq!(status, 200, "{health}");
}

/// A leader whose disk had no room for a segment reports itself healthy again within about a
/// second of space being freed, with no write coming: the maintenance task probes for room
/// (`kv_wal::Wal::check_room`). Before, only a write that needed a new segment cleared the
/// shortage, so `/health` said "the disk is full" after the space was freed — and a load
/// balancer that takes unhealthy nodes out of rotation would keep that one out for good.
#[test]
fn a_leader_says_it_is_healthy_once_its_disk_has_room_without_a_write() {
    let dir = tempfile::tempdir().expect("temp dir");
    let full = dir.path().join("disk-is-full");
    let full_env = full.display().to_string();
    let env = [("KVD_FAULT_DISK_FULL_FILE", full_env.as_str())];
    let kvd = Kvd::start(
        &dir.path().join("leader"),
        &["--max-segment-size", "4K"],
        &env,
    );
    std::fs::write(&full, b"").expect("fill the disk");
    let mut connection = Connection::open(kvd.address).expect("connect");
    let refused = (0..WRITES_MAX).any(|index| {
        let body = json!({ "value": index }).to_string();
        let answer = connection
            .send("PUT", &format!("/key/k{index}"), Some(&body))
            .expect("PUT");
        answer.status == 507
    });
    assert!(refused, "the disk never filled");
    let (status, health) = kvd.json("GET", "/health", None);
    assert_eq!(status, 503, "{health}");

    std::fs::remove_file(&full).expect("free the disk");
    let freed = std::time::Instant::now();
    loop {
        let (status, health) = kvd.json("GET", "/health", None);
        if status == 200 {
            break;
        }
        assert!(
            freed.elapsed() < crate::harness::DEADLINE,
            "still unhealthy {:?} after the disk had room, with no write: {health}",
            freed.elapsed()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    println!("healthy {:?} after the disk had room", freed.elapsed());
    assert!(
        kvd.stderr().contains("room for a new log segment again"),
        "{}",
        kvd.stderr()
    );
}

/// A new node on a disk without room for its first segment (preallocated whole) does not
/// start, and says what to do: free space, or a smaller `--max-segment-size`. Before, it said
/// only "No space left on device".
#[test]
fn a_new_node_on_a_full_disk_says_what_would_let_it_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("leader");
    let full = dir.path().join("disk-is-full");
    std::fs::write(&full, b"").expect("fill the disk");
    let args: Vec<String> = [
        "leader",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data_dir.to_str().expect("utf-8 path"),
    ]
    .map(str::to_owned)
    .to_vec();
    let (status, stderr) = crate::harness::run_until_exit_with_env(
        &args,
        &data_dir,
        &[(
            "KVD_FAULT_DISK_FULL_FILE",
            full.to_str().expect("utf-8 path"),
        )],
    );
    println!("{stderr}");
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    assert!(
        stderr.contains("takes 67108864 bytes of it up front")
            && stderr.contains("a smaller --max-segment-size"),
        "{stderr}"
    );

    // With room, the same directory opens (what the failed start left is no damage).
    std::fs::remove_file(&full).expect("free the disk");
    let kvd = crate::harness::Kvd::start(&data_dir, &[], &[]);
    let (status, body) = kvd.json("PUT", "/key/k", Some(r#"{"value":1}"#));
    assert_eq!(status, 200, "{body}");
}
