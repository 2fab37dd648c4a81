//! `--compress-sealed-segments` with the real binary: the compactor task compresses sealed WAL
//! segments (GET /segments shows it), a restart reads every value back from them, and a
//! follower catches up from a leader's compressed log (frames shipped byte for byte, every CRC
//! checked by the follower).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{metric_value, Kvd, DEADLINE};

const KEY_COUNT: u64 = 2_000;

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A JSON value of about 100 bytes, like a small user record.
fn value(index: u64) -> Value {
    json!({
        "name": format!("user {index}"),
        "email": format!("user{index}@example.com"),
        "score": index * 7 % 1_000,
        "tags": ["alpha", "beta"],
        "active": index.is_multiple_of(3),
    })
}

fn key(index: u64) -> String {
    format!("user:{index:011}")
}

/// Writes every key once; returns the last id.
fn write_all(kvd: &Kvd) -> u64 {
    let mut last_id = 0;
    for index in 0..KEY_COUNT {
        let body = json!({ "value": value(index) }).to_string();
        let (status, answer) = kvd.json("PUT", &format!("/key/{}", key(index)), Some(&body));
        assert_eq!(status, 200, "{answer}");
        last_id = answer["id"].as_u64().expect("id");
    }
    last_id
}

fn check_all(kvd: &Kvd) {
    for index in 0..KEY_COUNT {
        let (status, body) = kvd.json("GET", &format!("/key/{}", key(index)), None);
        assert_eq!(status, 200, "{}: {body}", key(index));
        assert_eq!(body["value"], value(index), "{}", key(index));
    }
}

/// The sealed segments, once every one of them is compressed with `codec` (and there are at
/// least `count`).
fn wait_until_compressed(kvd: &Kvd, codec: &str, count: usize) -> Vec<Value> {
    let mut sealed = Vec::new();
    wait_until(
        &format!("{count} sealed segments are {codec}-compressed"),
        || {
            let (_, body) = kvd.json("GET", "/segments", None);
            sealed = body["segments"]
                .as_array()
                .expect("segments")
                .iter()
                .filter(|segment| segment["is_active"] == json!(false))
                .cloned()
                .collect();
            sealed.len() >= count && sealed.iter().all(|segment| segment["compression"] == codec)
        },
    );
    sealed
}

#[test]
fn sealed_segments_are_compressed_in_the_background_and_read_after_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("leader");
    let args = [
        "--max-segment-size",
        "16KiB",
        "--sync-policy",
        "never",
        "--compress-sealed-segments",
        "lz4",
    ];
    let kvd = Kvd::start(&data_dir, &args, &[]);
    let last_id = write_all(&kvd);
    let sealed = wait_until_compressed(&kvd, "lz4", 10);
    for segment in &sealed {
        let (size, original) = (
            segment["size"].as_u64().expect("size"),
            segment["original_size"].as_u64().expect("original size"),
        );
        assert!(size * 2 < original, "{segment}");
        assert!(segment["path"].as_str().expect("path").ends_with(".walz"));
    }
    let on_disk: u64 = sealed.iter().map(|s| s["size"].as_u64().unwrap()).sum();
    let original: u64 = sealed
        .iter()
        .map(|s| s["original_size"].as_u64().unwrap())
        .sum();
    println!(
        "{} sealed segments: {on_disk} bytes on disk for {original} plain bytes ({:.2}x)",
        sealed.len(),
        original as f64 / on_disk as f64
    );
    let metrics = String::from_utf8(kvd.request("GET", "/metrics", None).body).expect("UTF-8");
    let compressed_gauge: usize = metric_value(&metrics, "kvd_wal_segments_compressed")
        .expect("kvd_wal_segments_compressed in /metrics");
    assert!(compressed_gauge >= sealed.len(), "{metrics}");
    check_all(&kvd);
    drop(kvd);

    // Restarted with compression off: the compressed segments are read as they are.
    let args_off = [
        "--max-segment-size",
        "16KiB",
        "--compress-sealed-segments",
        "none",
    ];
    let kvd = Kvd::start(&data_dir, &args_off, &[]);
    check_all(&kvd);
    let (_, body) = kvd.json("GET", "/segments", None);
    let compressed = body["segments"]
        .as_array()
        .expect("segments")
        .iter()
        .filter(|segment| segment["compression"] == "lz4")
        .count();
    assert!(compressed >= sealed.len(), "{body}");
    let (status, answer) = kvd.json("PUT", "/key/after", Some(r#"{"value": 1}"#));
    assert_eq!(status, 200, "{answer}");
    assert!(answer["id"].as_u64().expect("id") > last_id);
}

#[test]
fn a_follower_catches_up_from_a_leader_whose_old_segments_are_compressed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let leader_dir = dir.path().join("leader");
    let leader = Kvd::start(
        &leader_dir,
        &[
            "--max-segment-size",
            "16KiB",
            "--sync-policy",
            "never",
            "--compress-sealed-segments",
            "zstd",
        ],
        &[],
    );
    let last_id = write_all(&leader);
    wait_until_compressed(&leader, "zstd", 10);

    let follower_dir = dir.path().join("follower-1");
    let follower = Kvd::start_follower(
        &follower_dir,
        &leader,
        &["--max-segment-size", "16KiB"],
        &[],
    );
    let last_key = key(KEY_COUNT - 1);
    let (status, body) = follower.json(
        "GET",
        &format!(
            "/key/{last_key}?min_id={last_id}&wait_ms={}",
            DEADLINE.as_millis()
        ),
        None,
    );
    assert_eq!(status, 200, "{body}");
    check_all(&follower);
    // It replayed the leader's log (no snapshot exists to install).
    let (_, status) = follower.json("GET", "/compaction/status", None);
    assert_eq!(status["snapshots_installed"], 0, "{status}");
    let (_, health) = follower.json("GET", "/health", None);
    assert!(
        health["last_id"].as_u64().expect("last id") >= last_id,
        "{health}"
    );
}
