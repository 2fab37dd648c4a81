//! Regression tests for issue 11's kv-store findings: a snapshot ahead of the log, a damaged
//! newest snapshot over an empty log, and a cut below a snapshot.

use std::path::Path;
use std::sync::Arc;

use kv_store::{Codec, Error, Op, Store, StoreOptions, Value};
use kv_wal::sim::{CrashMode, SimFs};
use kv_wal::{SyncPolicy, WalOptions};

fn set(key: &str, value: u64) -> Op {
    Op::Set {
        key: key.as_bytes().to_vec(),
        value: Value::json(value.to_string()),
    }
}

fn options(dir: &Path) -> StoreOptions {
    StoreOptions {
        snapshot_dir: Some(dir.join("snapshots")),
        ..StoreOptions::default()
    }
}

fn open(dir: &Path) -> Store {
    Store::open(dir.join("wal"), options(dir)).unwrap().0
}

fn value_of(store: &Store, key: &str) -> Option<Vec<u8>> {
    store
        .get(key.as_bytes())
        .map(|cell| cell.value_bytes().to_vec())
}

/// Finding 1: a follower installs a snapshot at id 30 over its own shorter log and is then made
/// leader. Its next write must get id 31, and survive a restart (it got a reused id, which the
/// next open skipped as "inside the snapshot": acknowledged, then gone).
#[test]
fn a_write_after_installing_a_snapshot_gets_an_id_past_it_and_survives_a_restart() {
    let leader_dir = tempfile::tempdir().unwrap();
    let leader = open(leader_dir.path());
    for index in 0..30 {
        leader
            .write_blocking(set(&format!("k{index}"), index))
            .unwrap();
    }
    let info = leader.write_snapshot(Codec::Zstd, 2).unwrap();
    assert_eq!(info.applied_id, 30);

    let follower_dir = tempfile::tempdir().unwrap();
    let follower = open(follower_dir.path());
    for index in 0..5 {
        follower.write_blocking(set("old", index)).unwrap();
    }
    let snapshot_dir = follower_dir.path().join("snapshots");
    std::fs::create_dir_all(&snapshot_dir).unwrap();
    let installed = snapshot_dir.join(info.path.file_name().unwrap());
    std::fs::copy(&info.path, &installed).unwrap();
    assert_eq!(follower.install_snapshot(&installed, 2).unwrap(), 30);

    assert_eq!(follower.next_id(), 31);
    let id = follower.write_blocking(set("after", 1)).unwrap();
    assert_eq!(id, 31, "a write after the snapshot reused an id it covers");
    follower.close().unwrap();
    drop(follower);

    let reopened = open(follower_dir.path());
    assert_eq!(value_of(&reopened, "after").as_deref(), Some(&b"1"[..]));
    assert_eq!(value_of(&reopened, "k29").as_deref(), Some(&b"29"[..]));
    assert_eq!(reopened.next_id(), 32);
}

/// Finding 1, the power-loss form: under `never`, a snapshot holds applied writes the log has
/// not synced; a power cut takes them from the log but not from the snapshot. The next write
/// must get an id past the snapshot, and survive the next restart.
#[test]
fn a_log_cut_back_behind_its_snapshot_by_a_power_cut_continues_after_the_snapshot() {
    let sim = SimFs::new();
    let options = || StoreOptions {
        wal: WalOptions {
            sync_policy: SyncPolicy::Never,
            file_system: Arc::new(sim.clone()),
            ..WalOptions::default()
        },
        snapshot_dir: Some("/kvd/snapshots".into()),
        ..StoreOptions::default()
    };
    let (store, _) = Store::open("/kvd/wal", options()).unwrap();
    for index in 0..30 {
        store
            .write_blocking(set(&format!("k{index}"), index))
            .unwrap();
    }
    let info = store.write_snapshot(Codec::Lz4, 2).unwrap();
    assert_eq!(info.applied_id, 30);
    sim.crash(CrashMode::DropUnsynced);
    drop(store);

    let (store, _) = Store::open("/kvd/wal", options()).unwrap();
    assert_eq!(store.applied_id(), 30, "the snapshot holds the 30 writes");
    let id = store.write_blocking(set("after", 1)).unwrap();
    assert_eq!(id, 31, "a write after the snapshot reused an id it covers");
    store.close().unwrap();
    drop(store);

    let (store, _) = Store::open("/kvd/wal", options()).unwrap();
    assert_eq!(value_of(&store, "after").as_deref(), Some(&b"1"[..]));
    assert_eq!(store.applied_id(), 31);
}

/// Finding 6: the newest snapshot is damaged and the log after it is empty (purged). Opening
/// must refuse (it would serve the older snapshot's state, missing acknowledged writes), not
/// load the older snapshot with a warning.
#[test]
fn a_damaged_newest_snapshot_over_an_empty_log_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for index in 0..20 {
        store
            .write_blocking(set(&format!("k{index}"), index))
            .unwrap();
    }
    compact(&store);
    for index in 20..23 {
        store
            .write_blocking(set(&format!("k{index}"), index))
            .unwrap();
    }
    let newest = compact(&store);
    assert_eq!(
        store.wal().first_id(),
        None,
        "the log after the snapshot is empty"
    );
    store.close().unwrap();
    drop(store);

    let mut bytes = std::fs::read(&newest).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(&newest, bytes).unwrap();

    let Err(error) = Store::open(dir.path().join("wal"), options(dir.path())) else {
        panic!("opening over a damaged newest snapshot and an empty log must fail");
    };
    assert!(
        matches!(
            error,
            Error::Gap {
                wal_first_id: 24,
                snapshot_id: Some(20),
                ..
            }
        ),
        "unexpected error: {error}"
    );
}

/// Finding 7: a cut below a snapshot removes the snapshots past the cut, so the next open
/// does not bring the dropped history back.
#[test]
fn a_cut_below_a_snapshot_removes_it_and_the_history_stays_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for index in 0..20 {
        store
            .write_blocking(set(&format!("k{index}"), index))
            .unwrap();
    }
    store.write_snapshot(Codec::Zstd, 2).unwrap();
    store.truncate_after(10).unwrap();
    assert_eq!(store.applied_id(), 10);
    assert!(store.snapshots().is_empty(), "{:?}", store.snapshots());
    assert_eq!(store.next_id(), 11);
    let id = store.write_blocking(set("new", 1)).unwrap();
    assert_eq!(id, 11);
    store.close().unwrap();
    drop(store);

    let store = open(dir.path());
    assert_eq!(store.applied_id(), 11);
    assert_eq!(value_of(&store, "k15"), None, "truncated history came back");
    assert_eq!(value_of(&store, "new").as_deref(), Some(&b"1"[..]));
    assert!(store.snapshot_load().loaded.is_none());
}

/// A snapshot, the active segment sealed and the log before the snapshot purged, as kvd's
/// compactor does; returns the snapshot's path.
fn compact(store: &Store) -> std::path::PathBuf {
    let info = store.write_snapshot(Codec::Zstd, 5).unwrap();
    store.wal().seal_active(0).unwrap();
    store.purge_wal_before(info.applied_id + 1).unwrap();
    info.path
}
