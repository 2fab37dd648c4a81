//! Crash and restart: kill -9 loses nothing that was acknowledged; SIGTERM exits 0.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use serde_json::json;

use crate::harness::{request, Kvd, DEADLINE};

const WRITER_THREADS: usize = 4;
const ACKNOWLEDGED_BEFORE_KILL: usize = 300;

#[test]
fn kill_9_during_writes_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("leader");
    let mut kvd = Kvd::start(&data_dir, &["--max-segment-size", "4K"], &[]);
    let address = kvd.address;
    // Each writer PUTs its own keys, once each, until the server dies; every acknowledged
    // write is reported with its id.
    let (acknowledged_sender, acknowledged) = mpsc::channel::<(String, u64, u64)>();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITER_THREADS)
        .map(|writer| {
            let sender = acknowledged_sender.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                for sequence in 0u64.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let key = format!("w{writer}-{sequence}");
                    let body = format!(r#"{{"value": {sequence}}}"#);
                    let headers = [("Content-Type", "application/json")];
                    match request(
                        address,
                        "PUT",
                        &format!("/key/{key}"),
                        &headers,
                        Some(body.as_bytes()),
                    ) {
                        Ok(answer) if answer.status == 200 => {
                            let id = answer.json()["id"].as_u64().expect("id");
                            if sender.send((key, sequence, id)).is_err() {
                                break;
                            }
                        }
                        // The server died mid-request: this write was not acknowledged.
                        _ => break,
                    }
                }
            })
        })
        .collect();
    drop(acknowledged_sender);
    let mut acknowledged_writes = BTreeMap::new();
    while acknowledged_writes.len() < ACKNOWLEDGED_BEFORE_KILL {
        let (key, value, id) = acknowledged
            .recv_timeout(DEADLINE)
            .expect("writes acknowledged in time");
        acknowledged_writes.insert(key, (value, id));
    }
    kvd.kill_9();
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.join().expect("writer");
    }
    // Writes acknowledged just before the kill count too.
    acknowledged_writes.extend(
        acknowledged
            .try_iter()
            .map(|(key, value, id)| (key, (value, id))),
    );
    let highest_acknowledged_id = acknowledged_writes
        .values()
        .map(|(_, id)| *id)
        .max()
        .expect("writes");

    let kvd = Kvd::start(&data_dir, &["--max-segment-size", "4K"], &[]);
    for (key, (value, _)) in &acknowledged_writes {
        let (status, body) = kvd.seed_json("GET", &format!("/key/{key}"), None);
        assert_eq!(
            (status, body),
            (200, json!({"key": key, "value": value})),
            "acknowledged {key} lost"
        );
    }
    let (_, health) = kvd.json("GET", "/health", None);
    assert!(
        health["applied_id"].as_u64().expect("applied id") >= highest_acknowledged_id,
        "{health}"
    );
    let (status, written) = kvd.json("PUT", "/key/after-restart", Some(r#"{"value": true}"#));
    assert_eq!(status, 200);
    let new_id = written["id"].as_u64().expect("id");
    assert!(
        new_id > highest_acknowledged_id,
        "id {new_id} after restart, acknowledged up to {highest_acknowledged_id}"
    );
    println!(
        "{} acknowledged writes survived kill -9; next id {new_id}",
        acknowledged_writes.len()
    );
}

#[test]
fn sigterm_exits_zero_with_the_wal_synced() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("leader");
    // `never` leaves syncing to shutdown: the data is only safe if SIGTERM syncs the WAL.
    let mut kvd = Kvd::start(&data_dir, &["--sync-policy", "never"], &[]);
    for index in 0..20 {
        let (status, _) = kvd.json(
            "PUT",
            &format!("/key/k{index}"),
            Some(&format!(r#"{{"value": {index}}}"#)),
        );
        assert_eq!(status, 200);
    }
    let status = kvd.terminate();
    assert!(status.success(), "exit status {status}\n{}", kvd.stderr());
    let stderr = kvd.stderr();
    assert!(
        stderr.contains("SIGTERM") && stderr.contains("WAL synced and closed"),
        "{stderr}"
    );

    let kvd = Kvd::start(&data_dir, &[], &[]);
    let (_, health) = kvd.json("GET", "/health", None);
    assert_eq!(
        (health["keys"].clone(), health["applied_id"].clone()),
        (json!(20), json!(20))
    );
    assert!(kvd.stderr().contains("WAL recovered"), "{}", kvd.stderr());
}
