//! The submit/apply contract: nothing is visible before `apply_through`, application is in id
//! order, absent deletes write nothing, and a record that is not an entry is named at open.

use std::sync::Arc;

use kv_store::{Error, Op, Store, StoreOptions, Value};
use kv_wal::{Wal, WalOptions};

fn set(key: &str, value: &str) -> Op {
    Op::Set {
        key: key.as_bytes().to_vec(),
        value: Value::json(value),
    }
}

fn open(dir: &std::path::Path) -> Store {
    Store::open(dir, StoreOptions::default()).expect("open").0
}

#[test]
fn submitted_ops_are_invisible_until_applied_then_applied_in_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path());
    let first = store.submit(set("k", "1")).expect("submit");
    let second = store.submit(set("k", "2")).expect("submit");
    let third = store.submit(set("other", "3")).expect("submit");
    assert_eq!((second.id, third.id), (first.id + 1, first.id + 2));
    third.ticket.wait().expect("durable");
    assert!(store.get(b"k").is_none(), "durable but not applied");
    assert_eq!(store.pending_count(), 3);

    assert_eq!(store.apply_through(second.id), second.id);
    assert_eq!(store.get(b"k").unwrap().value_bytes(), b"2");
    assert!(store.get(b"other").is_none(), "beyond the applied id");
    // Applying an id again, or an older one, changes nothing.
    assert_eq!(store.apply_through(first.id), second.id);
    assert_eq!(store.get(b"k").unwrap().value_bytes(), b"2");

    assert_eq!(store.apply_through(u64::MAX), third.id);
    assert_eq!(store.pending_count(), 0);
    assert_eq!(store.key_count(), 2);
}

#[test]
fn deleting_an_absent_key_writes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path());
    let next_id = store.wal().next_id();
    assert!(matches!(
        store.write_blocking(Op::Delete {
            key: b"nope".to_vec()
        }),
        Err(Error::KeyNotFound)
    ));
    assert_eq!(store.wal().next_id(), next_id);
    assert_eq!(store.applied_id(), 0);
}

#[test]
fn concurrent_writers_to_one_key_leave_the_value_with_the_highest_id() {
    const THREADS: usize = 8;
    const WRITES_PER_THREAD: usize = 200;
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(open(dir.path()));
    let handles: Vec<_> = (0..THREADS)
        .map(|thread| {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut last = (0, String::new());
                for write in 0..WRITES_PER_THREAD {
                    let value = format!("{thread}-{write}");
                    let id = store
                        .write_blocking(set("shared", &format!("\"{value}\"")))
                        .expect("write");
                    assert!(
                        store.applied_id() >= id,
                        "the write is applied when it returns"
                    );
                    last = (id, value);
                }
                last
            })
        })
        .collect();
    let lasts: Vec<(u64, String)> = handles
        .into_iter()
        .map(|handle| handle.join().expect("writer"))
        .collect();
    let (highest_id, winner) = lasts.into_iter().max().expect("writers");
    assert_eq!(store.applied_id(), highest_id);
    assert_eq!(
        store.get(b"shared").unwrap().value_bytes(),
        format!("\"{winner}\"").as_bytes()
    );
    assert_eq!(highest_id, (THREADS * WRITES_PER_THREAD) as u64);
    let stats = store.wal().stats();
    println!(
        "{} appends shared {} fsyncs",
        stats.records_appended, stats.fsyncs
    );
}

#[test]
fn a_record_that_is_not_an_entry_is_an_error_naming_its_id() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let store = open(dir.path());
        store.write_blocking(set("k", "1")).expect("write");
        store.close().expect("close");
    }
    {
        let (wal, _) = Wal::open(dir.path(), WalOptions::default()).expect("open wal");
        wal.append(b"\x01\x09garbage-garbage").expect("append");
        wal.close().expect("close");
    }
    let error = Store::open(dir.path(), StoreOptions::default()).unwrap_err();
    assert!(
        matches!(&error, Error::Decode { id: 2, reason } if reason.to_string().contains("op 9")),
        "{error}"
    );
}

#[test]
fn new_entries_carry_the_store_epoch() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path());
    store.set_epoch(9);
    let id = store.write_blocking(set("k", "1")).expect("write");
    let payload = store.wal().read(id).expect("read").expect("record");
    let entry = kv_store::LogEntry::decode(&payload).expect("decode");
    assert_eq!(entry.epoch, 9);
    assert_eq!(entry.op, set("k", "1"));
}

/// A leader's no-op takes an id, carries its epoch and moves the applied id, and changes no key,
/// at submit, at replay and between writes.
#[test]
fn a_noop_takes_an_id_and_its_epoch_and_changes_no_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path());
    store.write_blocking(set("k", "1")).expect("write");
    store.set_epoch(4);
    let noop = store.write_blocking(Op::Noop).expect("no-op");
    assert_eq!((noop, store.applied_id()), (2, 2));
    assert_eq!(store.epoch_at(noop), Some(4));
    assert_eq!(store.key_count(), 1);
    store.write_blocking(set("k", "2")).expect("write");
    store.close().expect("close");
    drop(store);
    let store = open(dir.path());
    assert_eq!((store.applied_id(), store.key_count()), (3, 1));
    assert_eq!(store.get(b"k").unwrap().value_bytes(), b"2");
    assert_eq!(store.last_entry_epoch(), Some(4));
}

#[test]
fn frames_copied_from_another_log_apply_up_to_a_commit_id() {
    let leader_dir = tempfile::tempdir().expect("temp dir");
    let follower_dir = tempfile::tempdir().expect("temp dir");
    let leader = open(leader_dir.path());
    for index in 1..=5 {
        leader
            .write_blocking(set(&format!("k{index}"), &index.to_string()))
            .expect("leader write");
    }
    leader
        .write_blocking(Op::Delete {
            key: b"k1".to_vec(),
        })
        .expect("leader delete");
    let batch = leader
        .wal()
        .read_frames(1, usize::MAX, u64::MAX)
        .expect("read frames")
        .expect("frames");
    assert_eq!((batch.first_id, batch.last_id), (1, 6));

    let follower = open(follower_dir.path());
    let ticket = follower
        .submit_frames(&batch.bytes, kv_wal::SyncPolicy::Batch)
        .expect("submit frames");
    assert_eq!(ticket.ids(), 1..=6);
    ticket.wait().expect("durable");
    assert_eq!(
        follower.key_count(),
        0,
        "nothing applied before the commit id"
    );
    // The commit id (a quorum's durable id) lags: apply only up to it.
    assert_eq!(follower.apply_through(3), 3);
    let keys: Vec<Vec<u8>> = follower
        .scan_prefix(b"", None, 10)
        .iter()
        .map(|entry| entry.key().to_vec())
        .collect();
    assert_eq!(keys, [b"k1".to_vec(), b"k2".to_vec(), b"k3".to_vec()]);
    assert_eq!(follower.apply_through(6), 6);
    assert!(follower.get(b"k1").is_none());
    assert_eq!(follower.key_count(), 4);
    assert_eq!(
        follower.get(b"k5").expect("k5").value_bytes(),
        leader.get(b"k5").expect("k5").value_bytes()
    );
}

#[test]
fn copied_frames_that_are_not_entries_are_refused_whole() {
    let source_dir = tempfile::tempdir().expect("temp dir");
    let (source, _) = Wal::open(source_dir.path(), WalOptions::default()).expect("open wal");
    let good = kv_store::LogEntry::new(1, set("k", "1")).encode();
    source.append(&good).expect("append");
    source.append(b"not an entry").expect("append");
    let batch = source
        .read_frames(1, usize::MAX, u64::MAX)
        .expect("read")
        .expect("frames");

    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path());
    let error = store
        .submit_frames(&batch.bytes, kv_wal::SyncPolicy::Batch)
        .unwrap_err();
    assert!(matches!(error, Error::Decode { id: 2, .. }), "{error}");
    let mut damaged = batch.bytes.clone();
    let last = damaged.len() - 1;
    damaged[last] ^= 1;
    let error = store
        .submit_frames(&damaged, kv_wal::SyncPolicy::Batch)
        .unwrap_err();
    assert!(
        matches!(error, Error::Wal(kv_wal::Error::Corrupt { .. })),
        "{error}"
    );
    assert_eq!((store.wal().next_id(), store.pending_count()), (1, 0));
}

/// The sizes a node reports on its async workers — keys, live bytes, pending ops — answer
/// while a large value is applied, instead of waiting for the map's write lock, which the
/// apply holds while it copies the value in. Before, they read under that lock: the
/// maintenance task (every 250 ms) and `/health` blocked their worker for the apply — on a
/// leader with one worker applying a 65 MiB value, the whole node, until its session expired
/// (the likeliest cause of `failover::disk::a_leader_busy_with_a_large_write_keeps_its_leadership`
/// failing now and then).
/// Counted: reads that began and ended while the apply ran — before, none but the few at its
/// edges (1, 1 and 21 in three runs), now millions.
#[test]
fn sizes_answer_while_a_large_value_is_applied() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path());
    let submitted = store
        .submit(Op::Set {
            key: b"large".to_vec(),
            value: Value::raw(vec![7u8; 32 << 20]),
        })
        .expect("submit");
    let id = submitted.id;
    submitted.ticket.wait().expect("durable");
    let applying = AtomicBool::new(false);
    let reading = AtomicBool::new(false);
    let reads_within = AtomicU64::new(0);
    let (applied_in, reads) = std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            reading.store(true, Ordering::SeqCst);
            let mut keys = 0;
            while keys == 0 {
                let began = applying.load(Ordering::SeqCst);
                keys = store.key_count();
                let _ = (store.live_bytes(), store.pending_count());
                if began && applying.load(Ordering::SeqCst) {
                    reads_within.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        while !reading.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        applying.store(true, Ordering::SeqCst);
        let started = std::time::Instant::now();
        assert_eq!(store.apply_through(id), id);
        let applied_in = started.elapsed();
        applying.store(false, Ordering::SeqCst);
        reader.join().expect("reader");
        (applied_in, reads_within.load(Ordering::Relaxed))
    });
    println!("the apply took {applied_in:?}; {reads} reads of the sizes within it");
    assert!(
        reads >= 10_000,
        "{reads} reads of the sizes began and ended within the {applied_in:?} apply"
    );
    assert_eq!((store.key_count(), store.pending_count()), (1, 0));
    assert!(store.live_bytes() > 32 << 20);
}
