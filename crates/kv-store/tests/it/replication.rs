//! What replication needs from the store: appending a leader's frames, the epoch history, and
//! truncating a diverged suffix (rebuilding the map when applied entries go).

use kv_store::{Command, LogEntry, Op, RequestIds, RequestMeta, Store, StoreOptions, Value};
use kv_wal::SyncPolicy;

fn set(key: &str, value: &str) -> Op {
    Op::Set {
        key: key.as_bytes().to_vec(),
        value: Value::json(format!("\"{value}\"")),
    }
}

fn frames(first_id: u64, entries: &[LogEntry]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for (offset, entry) in entries.iter().enumerate() {
        bytes.extend(kv_wal::frame::encode_record(
            first_id + offset as u64,
            &entry.encode(),
        ));
    }
    bytes
}

#[test]
fn epoch_history_follows_appends_frames_and_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), StoreOptions::default()).unwrap();
    store.write_blocking(set("a", "1")).unwrap();
    store.write_blocking(set("b", "1")).unwrap();
    store.set_epoch(4);
    store.write_blocking(set("c", "4")).unwrap();
    let replicated = frames(
        4,
        &[
            LogEntry::new(4, set("d", "4")),
            LogEntry::new(6, set("e", "6")),
        ],
    );
    let ticket = store.submit_frames(&replicated, SyncPolicy::Batch).unwrap();
    assert_eq!(ticket.ids(), 4..=5);
    ticket.wait().unwrap();
    assert_eq!(store.epoch_at(2), Some(1));
    assert_eq!(store.epoch_at(4), Some(4));
    assert_eq!(store.epoch_at(5), Some(6));
    assert_eq!(store.epoch_at(6), None);
    assert_eq!(store.end_of_epoch(1), 2);
    assert_eq!(store.end_of_epoch(5), 4);
    assert_eq!(store.last_entry_epoch(), Some(6));

    // Reopen: the history is rebuilt from the entries.
    store.apply_through(5);
    store.close().unwrap();
    drop(store);
    let (store, _) = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(store.epoch_at(5), Some(6));
    assert_eq!(store.end_of_epoch(4), 4);
}

#[test]
fn truncating_applied_entries_rebuilds_the_map_and_keeps_pending_ones_pending() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), StoreOptions::default()).unwrap();
    for index in 1..=6 {
        store
            .write_blocking(set(&format!("k{index}"), "x"))
            .unwrap();
    }
    store
        .write_blocking(Op::Delete {
            key: b"k1".to_vec(),
        })
        .unwrap();
    assert_eq!(store.key_count(), 5);
    // Two more, durable but not applied (as if not yet committed).
    let pending: Vec<_> = ["p1", "p2"]
        .iter()
        .map(|key| store.submit(set(key, "y")).unwrap())
        .collect();
    for submitted in pending {
        submitted.ticket.wait().unwrap();
    }
    assert_eq!(store.pending_count(), 2);

    // Cut inside the applied entries: ids 5.. go, the delete of k1 (id 7) with them.
    store.truncate_after(4).unwrap();
    assert_eq!(store.applied_id(), 4);
    assert_eq!(store.pending_count(), 0);
    assert_eq!(store.key_count(), 4);
    assert!(store.get(b"k1").is_some(), "the delete was truncated away");
    assert!(store.get(b"k5").is_none());
    assert_eq!(store.wal().next_id(), 5);

    // New history continues at 5.
    assert_eq!(store.write_blocking(set("new", "z")).unwrap(), 5);
    assert_eq!(store.key_count(), 5);
}

#[test]
fn truncating_only_pending_entries_keeps_the_map() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), StoreOptions::default()).unwrap();
    store.write_blocking(set("a", "1")).unwrap();
    let submitted = store.submit(set("b", "2")).unwrap();
    submitted.ticket.wait().unwrap();
    let submitted = store.submit(set("c", "3")).unwrap();
    submitted.ticket.wait().unwrap();
    store.truncate_after(2).unwrap();
    assert_eq!(store.applied_id(), 1);
    assert_eq!(store.pending_count(), 1);
    store.apply_through(2);
    assert!(store.get(b"b").is_some());
    assert!(store.get(b"c").is_none());
}

/// A node that becomes leader stamps its idempotent requests with the log's clock, not its
/// own: the previous leader stamped a request two hours behind this node's wall clock (the
/// clocks disagree), and this node's first request of its own must not make every node
/// forget it (the default age is one hour). Before, the new request carried this node's wall
/// clock, the old one was pruned as two hours old on every node, and a retry of it was applied
/// again (found by a new user running one node under `faketime`).
#[test]
fn a_new_leaders_requests_keep_its_predecessors_remembered_whatever_their_clocks_say() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let two_hours_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        - 2 * 3_600_000;
    let ids = |request_id: &str| RequestIds {
        client_id: "c".to_owned(),
        request_id: request_id.to_owned(),
        form: 0,
    };
    let from_the_old_leader = LogEntry {
        epoch: 1,
        op: set("k", "1"),
        request: Some(RequestMeta {
            ids: ids("r1"),
            timestamp_ms: two_hours_ago,
        }),
    };
    let ticket = store
        .submit_frames(&frames(1, &[from_the_old_leader]), SyncPolicy::Batch)
        .unwrap();
    ticket.wait().unwrap();
    store.apply_through(1);
    assert!(store.is_repeated_request(&ids("r1")));
    // This node leads now and takes a request of its own.
    store.set_epoch(2);
    let command = Command {
        op: set("k", "2"),
        request: Some(ids("r2")),
    };
    let submitted = store.submit(command).unwrap();
    submitted.ticket.wait().unwrap();
    store.apply_through(submitted.id);
    assert!(
        store.is_repeated_request(&ids("r1")),
        "the old leader's request was forgotten"
    );
    let stamped = store.request_record("c", "r2").unwrap().timestamp_ms;
    assert!(
        stamped < two_hours_ago + 60_000,
        "stamped with this node's wall clock: {stamped} vs {two_hours_ago}"
    );
}
