//! A failing disk under the real binary: kvd's WAL runs on a file system that fails its Nth
//! fsync (`KVD_FAULT_FSYNC_FAIL_AT`) or Nth write (`KVD_FAULT_WRITE_FAIL_AT`). The write that
//! meets the failure gets a 5xx, never a success; every later write gets 503 (the log is
//! poisoned and never retries an fsync); `/health` says so with a 503; reads keep working; and
//! after a restart on a healthy disk nothing acknowledged is lost.

use serde_json::json;

use crate::harness::{Connection, Kvd};

/// Writes tried after the first failure: all must fail.
const WRITES_AFTER_FAILURE: usize = 5;
/// Writes tried before giving up on the fault firing.
const WRITES_MAX: usize = 200;

#[test]
fn a_failed_fsync_or_write_poisons_the_node_and_loses_nothing_acknowledged() {
    // The counts include the fsyncs and writes that starting on a new data directory runs
    // (the WAL directory is fsynced in its parent since kv-wal made it durable; the leader's
    // first entry of its epoch, the no-op, is one write and one fsync).
    for (fault_env, fault_at, sync_policy) in [
        ("KVD_FAULT_FSYNC_FAIL_AT", "15", "batch"),
        ("KVD_FAULT_FSYNC_FAIL_AT", "12", "always"),
        ("KVD_FAULT_WRITE_FAIL_AT", "11", "batch"),
    ] {
        let context = format!("{fault_env}={fault_at}, --sync-policy {sync_policy}");
        let dir = tempfile::tempdir().expect("temp dir");
        let data_dir = dir.path().join("leader");
        let args = ["--sync-policy", sync_policy, "--max-segment-size", "4K"];
        let mut kvd = Kvd::start(&data_dir, &args, &[(fault_env, fault_at)]);
        let mut connection = Connection::open(kvd.address).expect("connect");

        // Write until the fault fires; everything before it was acknowledged.
        let mut acknowledged: Vec<(String, u64, u64)> = Vec::new();
        let mut failed_write = None;
        for index in 0..WRITES_MAX {
            let key = format!("k{index}");
            let body = json!({ "value": index }).to_string();
            let answer = connection
                .send("PUT", &format!("/key/{key}"), Some(&body))
                .expect("PUT");
            match answer.status {
                200 => {
                    let id = answer.json()["id"].as_u64().expect("id");
                    acknowledged.push((key, index as u64, id));
                }
                status => {
                    assert!(
                        (500..600).contains(&status),
                        "{context}: a failed write answered {status}"
                    );
                    failed_write = Some((key, index as u64, status, answer.json()));
                    break;
                }
            }
        }
        let (failed_key, failed_value, failed_status, failed_body) =
            failed_write.unwrap_or_else(|| panic!("{context}: the fault never fired"));
        assert!(
            !acknowledged.is_empty(),
            "{context}: the fault fired at once"
        );
        println!(
            "{context}: {} writes acknowledged, then {failed_status} {failed_body}",
            acknowledged.len()
        );

        // Poisoned: no write succeeds any more, and /health says why.
        for attempt in 0..WRITES_AFTER_FAILURE {
            let answer = connection
                .send(
                    "PUT",
                    &format!("/key/later-{attempt}"),
                    Some(r#"{"value": 0}"#),
                )
                .expect("PUT");
            assert_eq!(answer.status, 503, "{context}: a write after the failure");
            assert!(
                answer.json()["detail"]
                    .as_str()
                    .is_some_and(|detail| detail.contains("refuses writes")),
                "{context}: {}",
                answer.json()
            );
        }
        let delete = connection.send("DELETE", "/key/k0", None).expect("DELETE");
        assert_eq!(delete.status, 503, "{context}: a delete after the failure");
        let health = connection.send("GET", "/health", None).expect("health");
        assert_eq!(health.status, 503, "{context}");
        let health = health.json();
        assert_eq!(health["status"], "unavailable", "{context}: {health}");
        assert!(
            health["detail"]
                .as_str()
                .is_some_and(|detail| detail.contains("injected")),
            "{context}: /health should name the failure: {health}"
        );

        // Reads keep working, and show exactly the acknowledged writes.
        for (key, value, _) in &acknowledged {
            let answer = connection
                .send("GET", &format!("/key/{key}"), None)
                .expect("GET");
            assert_eq!(answer.status, 200, "{context}: {key}");
            assert_eq!(answer.json()["value"], json!(value), "{context}: {key}");
        }
        let answer = connection
            .send("GET", &format!("/key/{failed_key}"), None)
            .expect("GET");
        assert_eq!(
            answer.status, 404,
            "{context}: the failed write is not visible"
        );
        drop(connection);

        // A clean shutdown does not hang on the poisoned log.
        let status = kvd.terminate();
        assert!(
            status.success(),
            "{context}: exit {status}\n{}",
            kvd.stderr()
        );

        // Restart on a healthy disk: every acknowledged write is back; the failed one may or
        // may not be (it reached the file, not necessarily the disk), but never altered.
        let kvd = Kvd::start(&data_dir, &args, &[]);
        for (key, value, _) in &acknowledged {
            let (status, body) = kvd.seed_json("GET", &format!("/key/{key}"), None);
            assert_eq!(
                (status, body),
                (200, json!({"key": key, "value": value})),
                "{context}: acknowledged {key} after restart"
            );
        }
        let (status, body) = kvd.json("GET", &format!("/key/{failed_key}"), None);
        assert!(
            status == 404 || (status == 200 && body["value"] == json!(failed_value)),
            "{context}: the failed write came back as {status} {body}"
        );
        let (status, health) = kvd.json("GET", "/health", None);
        assert_eq!(
            (status, &health["status"]),
            (200, &json!("ok")),
            "{context}"
        );
        let highest_acknowledged_id = acknowledged.iter().map(|(_, _, id)| *id).max();
        let (status, written) = kvd.json("PUT", "/key/after-restart", Some(r#"{"value": 1}"#));
        assert_eq!(status, 200, "{context}: writes work again after restart");
        assert!(
            written["id"].as_u64() > highest_acknowledged_id,
            "{context}: {written}"
        );
    }
}
