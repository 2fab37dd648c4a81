//! Snapshots and compaction with the real binary: disk stays bounded under an overwrite-heavy
//! load, a restart loads the snapshot and replays only the tail, and a follower behind the
//! leader's compacted log catches up by installing the leader's snapshot.

use std::path::Path;

use serde_json::json;

use crate::harness::{Kvd, DEADLINE};

/// What a data directory takes on disk: its files' lengths, so a preallocated WAL segment
/// counts whole (DESIGN.md, "Preallocation").
fn directory_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(metadata) if metadata.is_dir() => directory_bytes(&entry.path()),
            Ok(metadata) => metadata.len(),
            Err(_) => 0,
        })
        .sum()
}

/// What bounds on disk use allow beyond the data: one preallocated segment ahead for the WAL
/// (`min(64 MiB, --max-segment-size)`) and one for the controller's log.
fn preallocated_ahead_bytes(segment_bytes_max: u64) -> u64 {
    let preallocated = |segment_bytes_max| {
        kv_wal::WalOptions {
            segment_bytes_max,
            ..kv_wal::WalOptions::default()
        }
        .preallocated_segment_bytes()
    };
    preallocated(segment_bytes_max) + preallocated(CONTROLLER_LOG_SEGMENT_BYTES)
}

/// The controller's log segments (kv-controller's `LOG_SEGMENT_BYTES`).
const CONTROLLER_LOG_SEGMENT_BYTES: u64 = 1 << 20;

fn put(kvd: &Kvd, key: &str, value: u64) -> u64 {
    let (status, body) = kvd.json(
        "PUT",
        &format!("/key/{key}"),
        Some(&json!({ "value": value }).to_string()),
    );
    assert_eq!(status, 200, "{body}");
    body["id"].as_u64().expect("id")
}

/// With the default policy (64 MiB segments, no tuning), overwrites keep the data directory a
/// few MiB (2.4 MB at the peak on an idle machine): the ratio trigger snapshots once the WAL since the last snapshot holds twice the live
/// data (at least 2 MiB), the active segment is sealed first, and the purge takes it.
#[test]
fn the_default_policy_keeps_disk_near_the_live_data_under_overwrites() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("leader");
    let kvd = Kvd::start(&data_dir, &["--sync-policy", "never"], &[]);
    let value = "v".repeat(1_000);
    let writes = 16_000u64; // ~16 MB of history over 100 keys (~100 KB live)
    let mut peak_bytes = 0;
    for index in 0..writes {
        let body = json!({ "value": format!("{index}-{value}") }).to_string();
        let (status, answer) = kvd.json("PUT", &format!("/key/key-{}", index % 100), Some(&body));
        assert_eq!(status, 200, "{answer}");
        if index % 500 == 499 {
            peak_bytes = peak_bytes.max(directory_bytes(&data_dir));
        }
    }
    // Let the compactor (every 250 ms) catch up with the last writes.
    let deadline = std::time::Instant::now() + DEADLINE;
    let ahead = preallocated_ahead_bytes(kv_wal::SEGMENT_BYTES_MAX_DEFAULT);
    let final_bytes = loop {
        let bytes = directory_bytes(&data_dir);
        if bytes < (3 << 20) + ahead || std::time::Instant::now() > deadline {
            break bytes;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let (_, status) = kvd.json("GET", "/compaction/status", None);
    println!("{writes} overwrites of 100 keys of 1 KB: peak {peak_bytes} bytes, final {final_bytes} bytes, {status}");
    // Snapshots run at the lowest CPU priority: on a machine busy with other tests they
    // finish later, so the bounds below leave room for that.
    assert!(
        status["snapshots_written"].as_u64().expect("count") >= 2,
        "{status}"
    );
    let live = status["live_bytes"].as_u64().expect("live bytes");
    assert!((100_000..120_000).contains(&live), "{status}");
    assert!(
        peak_bytes < (8 << 20) + ahead,
        "disk use grew with history (~16 MB written): peak {peak_bytes} bytes"
    );
    assert!(
        final_bytes < (3 << 20) + ahead,
        "final {final_bytes} bytes: {status}"
    );
}

#[test]
fn overwrites_keep_disk_bounded_and_restart_replays_only_the_tail() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("leader");
    let args = [
        "--max-segment-size",
        "64KiB",
        "--snapshot-every-entries",
        "2000",
        "--sync-policy",
        "never",
    ];
    let kvd = Kvd::start(&data_dir, &args, &[]);
    // 1,000 keys written over and over: history grows, live data does not.
    let writes = std::env::var("KVD_OVERWRITE_WRITES")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(20_000u64);
    let mut last_id = 0;
    let mut peak_bytes = 0;
    for index in 0..writes {
        last_id = put(&kvd, &format!("key-{}", index % 1_000), index);
        if index % 2_000 == 1_999 {
            peak_bytes = peak_bytes.max(directory_bytes(&data_dir));
        }
    }
    let (_, status) = kvd.json("GET", "/compaction/status", None);
    assert!(
        status["snapshots_written"].as_u64().expect("count") >= 1,
        "{status}"
    );
    // Live data: 1,000 keys of ~20 bytes. The WAL is bounded by the snapshot interval, not by
    // the history of `writes` entries.
    let (_, segments) = kvd.json("GET", "/segments", None);
    let wal_bytes: u64 = segments["segments"]
        .as_array()
        .expect("segments")
        .iter()
        .map(|segment| segment["size"].as_u64().expect("size"))
        .sum();
    println!(
        "{writes} overwrites of 1,000 keys: peak data dir {peak_bytes} bytes, WAL now {wal_bytes} bytes, status {status}"
    );
    assert!(
        peak_bytes < (2 << 20) + preallocated_ahead_bytes(64 << 10),
        "disk use grew with history: {peak_bytes} bytes"
    );
    drop(kvd);

    // Restart: the newest snapshot plus the tail after it.
    let kvd = Kvd::start(&data_dir, &args, &[]);
    assert!(kvd.stderr().contains("loaded snapshot"), "{}", kvd.stderr());
    for key in [0, 499, 999] {
        let (status, body) = kvd.json("GET", &format!("/key/key-{key}"), None);
        assert_eq!(status, 200);
        let value = body["value"].as_u64().expect("value");
        assert_eq!(value % 1_000, key, "key-{key} = {value}");
        assert!(
            value + 1_000 >= writes,
            "key-{key} lost its last write: {value}"
        );
    }
    assert!(
        put(&kvd, "after", 1) > last_id,
        "ids continue after the snapshot"
    );
    let (status, answer) = kvd.json("POST", "/admin/snapshot", None);
    assert_eq!(status, 200, "{answer}");
    assert!(answer["snapshot"]["applied_id"].as_u64().expect("id") > last_id);
}

#[test]
fn a_follower_behind_a_compacted_log_installs_the_leaders_snapshot() {
    let dir = tempfile::tempdir().expect("temp dir");
    let leader_dir = dir.path().join("leader");
    let leader = Kvd::start(
        &leader_dir,
        &["--max-segment-size", "16KiB", "--sync-policy", "never"],
        &[],
    );
    for index in 0..3_000 {
        put(&leader, &format!("k{index}"), index);
    }
    let (status, answer) = leader.json("POST", "/admin/snapshot", None);
    assert_eq!(status, 200, "{answer}");
    assert!(
        !answer["purge"]["segments_removed"]
            .as_array()
            .expect("list")
            .is_empty(),
        "{answer}"
    );
    let (_, status) = leader.json("GET", "/compaction/status", None);
    assert!(
        status["wal_first_id"].as_u64().expect("first id") > 1,
        "{status}"
    );
    let last_id = put(&leader, "tail", 1);

    let follower_dir = dir.path().join("follower-1");
    let follower = Kvd::start_follower(&follower_dir, &leader, &[], &[]);
    let (status, body) = follower.seed_json(
        "GET",
        &format!(
            "/key/k2999?min_id={last_id}&wait_ms={}",
            DEADLINE.as_millis()
        ),
        None,
    );
    assert_eq!(
        (status, body),
        (200, json!({"key": "k2999", "value": 2999}))
    );
    let (_, body) = follower.json("GET", "/key/tail", None);
    assert_eq!(body["value"], 1);
    let (_, status) = follower.json("GET", "/compaction/status", None);
    assert_eq!(status["snapshots_installed"], 1, "{status}");
    let (_, cluster) = follower.json("GET", "/cluster_status", None);
    assert_eq!(cluster["link"]["state"], "connected", "{cluster}");
}

/// A sealed segment the disk corrupts under the running leader, past its newest snapshot: a
/// follower that must read it gets past it through a new snapshot (the leader's map, applied
/// before the damage, is whole), and serves every key. Before, the leader closed the stream at
/// the damaged record and the follower asked again forever ("the leader closed the replication
/// stream", a damaged-files exploration).
#[test]
fn a_follower_reaching_a_segment_damaged_under_the_running_leader_gets_past_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let leader_dir = dir.path().join("leader");
    let leader = Kvd::start(&leader_dir, &["--max-segment-size", "16KiB"], &[]);
    for index in 0..500 {
        put(&leader, &format!("k{index}"), index);
    }
    let (status, answer) = leader.json("POST", "/admin/snapshot", None);
    assert_eq!(status, 200, "{answer}");
    let snapshot_id = answer["snapshot"]["applied_id"]
        .as_u64()
        .expect("applied id");
    let mut last_id = 0;
    for index in 500..2_000 {
        last_id = put(&leader, &format!("k{index}"), index);
    }
    // A sealed segment wholly after the snapshot, damaged in the middle of its records.
    let mut segments: Vec<_> = std::fs::read_dir(leader_dir.join("wal"))
        .expect("wal dir")
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "wal"))
        .collect();
    segments.sort();
    segments.pop(); // the active one
    let first_id_of = |path: &std::path::Path| -> u64 {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        name.split('-').nth(1).unwrap().parse().unwrap()
    };
    let damaged = segments
        .iter()
        .find(|path| first_id_of(path) > snapshot_id + 1)
        .expect("a sealed segment after the snapshot");
    let mut bytes = std::fs::read(damaged).expect("segment");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(damaged, bytes).expect("damage");

    let follower = Kvd::start_follower(&dir.path().join("follower-1"), &leader, &[], &[]);
    let (status, body) = follower.json(
        "GET",
        &format!(
            "/key/k1999?min_id={last_id}&wait_ms={}",
            DEADLINE.as_millis()
        ),
        None,
    );
    assert_eq!((status, &body["value"]), (200, &json!(1999)), "{body}");
    for index in (0..2_000).step_by(97) {
        let (status, body) = follower.json("GET", &format!("/key/k{index}"), None);
        assert_eq!((status, &body["value"]), (200, &json!(index)), "k{index}");
    }
}
