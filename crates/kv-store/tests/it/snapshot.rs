//! Snapshots: restart from a snapshot plus the log tail equals a full replay; a snapshot cut
//! or damaged at any point is skipped for an older one (or the full log) and reported; a
//! purged log without a valid snapshot is refused; installing a snapshot replaces the state.

use std::collections::BTreeMap;
use std::path::Path;

use kv_store::snapshot::{list_snapshots, read_snapshot};
use kv_store::{Codec, Error, Op, Store, StoreOptions, Value};
use kv_wal::fs::StdFs;
use rand::{Rng, SeedableRng};

fn options(dir: &Path) -> StoreOptions {
    let mut options = StoreOptions {
        snapshot_dir: Some(dir.join("snapshots")),
        ..StoreOptions::default()
    };
    options.wal.segment_bytes_max = 4096;
    options
}

fn open(dir: &Path) -> Store {
    Store::open(dir.join("wal"), options(dir)).expect("open").0
}

fn state(store: &Store) -> BTreeMap<Vec<u8>, Value> {
    store
        .scan_prefix(b"", None, usize::MAX)
        .into_iter()
        .map(|entry| (entry.key().to_vec(), entry.to_value()))
        .collect()
}

fn random_op(rng: &mut impl Rng, model: &BTreeMap<Vec<u8>, Value>) -> Op {
    let key = format!("key-{}", rng.gen_range(0..200)).into_bytes();
    if rng.gen_ratio(1, 5) && model.contains_key(&key) {
        Op::Delete { key }
    } else if rng.gen_ratio(1, 4) {
        Op::Set {
            key,
            value: Value::raw(
                (0..rng.gen_range(0..300))
                    .map(|_| rng.gen())
                    .collect::<Vec<u8>>(),
            ),
        }
    } else {
        Op::Set {
            key,
            value: Value::json(format!("{}", rng.gen::<u32>())),
        }
    }
}

fn apply_to_model(model: &mut BTreeMap<Vec<u8>, Value>, op: &Op) {
    match op {
        Op::Set { key, value } => {
            model.insert(key.clone(), value.clone());
        }
        Op::Delete { key } => {
            model.remove(key);
        }
        Op::Txn(_) | Op::Noop => unreachable!("this test writes no transactions or no-ops"),
    }
}

#[test]
fn restart_from_snapshot_and_tail_equals_the_model_for_every_codec() {
    let seed = rand::random::<u64>();
    println!("snapshot model seed: {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for codec in [Codec::None, Codec::Lz4, Codec::Zstd] {
        let dir = tempfile::tempdir().unwrap();
        let mut model = BTreeMap::new();
        let mut store = open(dir.path());
        for round in 0..6 {
            for _ in 0..150 {
                let op = random_op(&mut rng, &model);
                store.write_blocking(op.clone()).unwrap();
                apply_to_model(&mut model, &op);
            }
            let info = store.write_snapshot(codec, 2).unwrap();
            assert_eq!(info.applied_id, store.applied_id());
            assert_eq!(info.key_count, model.len() as u64);
            // Compaction: the log before the snapshot may go.
            store.purge_wal_before(info.applied_id + 1).unwrap();
            // A tail after the snapshot, replayed at open.
            let tail = rng.gen_range(0..40);
            for _ in 0..tail {
                let op = random_op(&mut rng, &model);
                store.write_blocking(op.clone()).unwrap();
                apply_to_model(&mut model, &op);
            }
            store.close().unwrap();
            drop(store);
            store = open(dir.path());
            assert_eq!(state(&store), model, "codec {codec}, round {round}");
            let load = store.snapshot_load();
            assert_eq!(
                load.loaded.as_ref().map(|(_, id)| *id),
                Some(info.applied_id)
            );
            assert_eq!(load.replayed_records, tail, "only the tail is replayed");
        }
        assert_eq!(
            list_snapshots(&StdFs, &dir.path().join("snapshots"))
                .unwrap()
                .len(),
            2,
            "old snapshots are pruned"
        );
    }
}

#[test]
fn a_snapshot_cut_or_damaged_anywhere_falls_back_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = BTreeMap::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let store = open(dir.path());
    for _ in 0..300 {
        let op = random_op(&mut rng, &model);
        store.write_blocking(op.clone()).unwrap();
        apply_to_model(&mut model, &op);
    }
    let older = store.write_snapshot(Codec::Zstd, 5).unwrap();
    for _ in 0..100 {
        let op = random_op(&mut rng, &model);
        store.write_blocking(op.clone()).unwrap();
        apply_to_model(&mut model, &op);
    }
    let newer = store.write_snapshot(Codec::Zstd, 5).unwrap();
    store.close().unwrap();
    drop(store);
    let pristine = std::fs::read(&newer.path).unwrap();
    assert!(read_snapshot(&StdFs, &older.path).is_ok());

    // A crash at any step of writing the newer snapshot: a partial temporary file, or (worst
    // case) a damaged final file. The store falls back to the older snapshot plus the log.
    let step = (pristine.len() / 60).max(1);
    let mut cut = 0;
    while cut < pristine.len() {
        let temp = newer.path.with_extension("snap.tmp");
        std::fs::write(&temp, &pristine[..cut]).unwrap();
        std::fs::write(&newer.path, &pristine[..cut]).unwrap();
        let store = open(dir.path());
        assert_eq!(state(&store), model, "cut at {cut}");
        let load = store.snapshot_load();
        assert_eq!(
            load.loaded.as_ref().map(|(_, id)| *id),
            Some(older.applied_id),
            "cut at {cut}"
        );
        assert_eq!(load.skipped.len(), 1, "cut at {cut}: {load:?}");
        assert!(!temp.exists(), "leftover temporary removed");
        store.close().unwrap();
        drop(store);
        cut += step;
    }
    // Every flipped byte in the header and the first block is caught.
    for position in (0..pristine.len().min(2000)).step_by(7) {
        let mut damaged = pristine.clone();
        damaged[position] ^= 0x20;
        assert!(
            read_snapshot_bytes(&newer.path, &damaged).is_err(),
            "flip at {position} accepted"
        );
    }
    std::fs::write(&newer.path, &pristine).unwrap();
    let store = open(dir.path());
    assert_eq!(
        store.snapshot_load().loaded.as_ref().map(|(_, id)| *id),
        Some(newer.applied_id)
    );
}

/// A snapshot file whose name does not say the applied id its header holds — one copied in
/// from another data directory, or renamed — is not this log's snapshot at that id: it is
/// skipped as damaged (and reported), never loaded. Before, a foreign `snapshot-…200.snap`
/// holding applied id 81 was loaded as the newest: the store served the other node's keys
/// and lost its own.
#[test]
fn a_snapshot_whose_name_is_not_its_applied_id_is_skipped() {
    let foreign_dir = tempfile::tempdir().unwrap();
    let foreign = open(foreign_dir.path());
    foreign
        .write_blocking(set("foreign", Value::json("1")))
        .unwrap();
    let foreign_snapshot = foreign.write_snapshot(Codec::Zstd, 5).unwrap();
    drop(foreign);

    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for index in 0..50 {
        store
            .write_blocking(set(&format!("k{index}"), Value::json("2")))
            .unwrap();
    }
    let own = store.write_snapshot(Codec::Zstd, 5).unwrap();
    let model = state(&store);
    store.close().unwrap();
    drop(store);
    let misnamed = dir
        .path()
        .join("snapshots")
        .join(format!("snapshot-{:020}.snap", own.applied_id + 100));
    std::fs::copy(&foreign_snapshot.path, &misnamed).unwrap();

    let store = open(dir.path());
    assert_eq!(state(&store), model);
    let load = store.snapshot_load();
    assert_eq!(
        load.loaded.as_ref().map(|(_, id)| *id),
        Some(own.applied_id)
    );
    assert_eq!(load.skipped.len(), 1, "{load:?}");
    assert!(load.skipped[0].1.contains("name"), "{load:?}");
}

fn set(key: &str, value: Value) -> Op {
    Op::Set {
        key: key.as_bytes().to_vec(),
        value,
    }
}

fn read_snapshot_bytes(path: &Path, bytes: &[u8]) -> Result<(), String> {
    std::fs::write(path, bytes).unwrap();
    read_snapshot(&StdFs, path)
        .map(|_| ())
        .map_err(|error| error.to_string())
}

#[test]
fn a_purged_log_without_a_valid_snapshot_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for index in 0..400u32 {
        store
            .write_blocking(Op::Set {
                key: format!("k{index}").into_bytes(),
                value: Value::json(index.to_string()),
            })
            .unwrap();
    }
    let info = store.write_snapshot(Codec::Lz4, 1).unwrap();
    assert!(!store
        .purge_wal_before(info.applied_id + 1)
        .unwrap()
        .is_empty());
    store.close().unwrap();
    drop(store);
    std::fs::write(&info.path, b"garbage").unwrap();
    match Store::open(dir.path().join("wal"), options(dir.path())) {
        Err(
            error @ Error::Gap {
                wal_first_id,
                snapshot_id: None,
                ..
            },
        ) => {
            assert!(wal_first_id > 1);
            // The refusal names the damaged snapshot, so the operator knows which file to look
            // at (before, it said only that no valid snapshot covered the ids).
            let message = error.to_string();
            assert!(
                message.contains(&info.path.display().to_string()),
                "{message}"
            );
        }
        Err(other) => panic!("expected a gap error, got {other}"),
        Ok(_) => panic!("opened a store with missing ids"),
    }
}

/// Sealing the active segment, a snapshot and a purge can leave the log with no record at all
/// (everything written is in the snapshot). The log still ends where it ended: its last id and
/// that entry's epoch are what a follower's fetch carries (its position) and what a leader
/// compares fetches with. They once fell back to the snapshot the store was opened from (0
/// here), so a follower asked from id 0 with epoch 0 and its leader told it to drop everything.
#[test]
fn a_log_emptied_by_seal_snapshot_and_purge_still_ends_at_its_last_id() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for index in 0..10u32 {
        store
            .write_blocking(Op::Set {
                key: format!("k{index}").into_bytes(),
                value: Value::json(index.to_string()),
            })
            .unwrap();
    }
    let epoch = store.epoch();
    assert!(store.seal_active_segment(0).unwrap());
    let info = store.write_snapshot(Codec::Lz4, 1).unwrap();
    assert_eq!(info.applied_id, 10);
    assert!(!store.purge_wal_before(11).unwrap().is_empty());
    assert_eq!(store.wal().first_id(), None, "no record is left in the log");
    assert_eq!(store.first_id(), 11);
    assert_eq!(store.next_id(), 11);
    assert_eq!(store.last_id(), 10);
    assert_eq!(store.epoch_at(10), Some(epoch));
    assert_eq!(store.end_of_epoch(epoch), 10);
    // The next write continues the log, and a reopened store agrees.
    store
        .write_blocking(Op::Set {
            key: b"after".to_vec(),
            value: Value::json("1"),
        })
        .unwrap();
    assert_eq!(store.last_id(), 11);
    store.close().unwrap();
    drop(store);
    let reopened = open(dir.path());
    assert_eq!(reopened.last_id(), 11);
    assert_eq!(reopened.epoch_at(10), Some(epoch));
    assert_eq!(state(&reopened).len(), 11);
}

#[test]
fn installing_a_snapshot_replaces_the_state_and_the_log_continues_after_it() {
    let source_dir = tempfile::tempdir().unwrap();
    let source = open(source_dir.path());
    for index in 0..50u32 {
        source
            .write_blocking(Op::Set {
                key: format!("s{index}").into_bytes(),
                value: Value::json(index.to_string()),
            })
            .unwrap();
    }
    let info = source.write_snapshot(Codec::Zstd, 2).unwrap();

    let target_dir = tempfile::tempdir().unwrap();
    let target = open(target_dir.path());
    for value in ["1", "2"] {
        target
            .write_blocking(Op::Set {
                key: b"old".to_vec(),
                value: Value::json(value),
            })
            .unwrap();
        target.write_snapshot(Codec::Zstd, 5).unwrap();
    }
    assert_eq!(target.snapshots().len(), 2, "two of its own");
    let installed = target_dir
        .path()
        .join("snapshots")
        .join(info.path.file_name().unwrap());
    std::fs::create_dir_all(installed.parent().unwrap()).unwrap();
    std::fs::copy(&info.path, &installed).unwrap();
    assert_eq!(target.install_snapshot(&installed, 2).unwrap(), 50);
    assert_eq!(state(&target), state(&source));
    // Only the newest two are kept, as when it writes one (before, an install kept them all:
    // a follower killed after each install grew its snapshot directory by one every time).
    let kept: Vec<u64> = target.snapshots().into_iter().map(|(id, _)| id).collect();
    assert_eq!(kept, [50, 2]);
    assert_eq!(target.next_id(), 51);
    assert_eq!(target.last_id(), 50);
    // The log holds nothing after the snapshot: its status still ends at the snapshot's id,
    // durably (it said `None` — kvd's /health "last_id": null, its gauge 0 — and a durable
    // id of 0 after an install).
    let status = target.log_status();
    assert_eq!(
        (status.last_id, status.durable_id, status.next_id),
        (Some(50), 50, 51)
    );
    // The leader's next entries continue the log after the snapshot.
    let frames = source
        .wal()
        .read_frames(1, usize::MAX, u64::MAX)
        .unwrap()
        .unwrap();
    assert_eq!(frames.last_id, 50);
    source
        .write_blocking(Op::Set {
            key: b"next".to_vec(),
            value: Value::json("51"),
        })
        .unwrap();
    let next = source
        .wal()
        .read_frames(51, usize::MAX, 51)
        .unwrap()
        .unwrap();
    let ticket = target
        .submit_frames(&next.bytes, kv_wal::SyncPolicy::Batch)
        .unwrap();
    assert_eq!(ticket.ids(), 51..=51);
    ticket.wait().unwrap();
    target.apply_through(51);
    assert!(target.get(b"next").is_some());
    target.close().unwrap();
    drop(target);
    let reopened = open(target_dir.path());
    assert_eq!(state(&reopened).len(), 51);
    assert!(reopened.get(b"old").is_none());
}

/// A cut that drops applied entries rebuilds the map from the snapshot the purged log
/// continues, not from the log alone (which no longer starts at id 1).
#[test]
fn truncating_applied_entries_over_a_purged_log_rebuilds_from_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut model = BTreeMap::new();
    for index in 0..300u32 {
        let op = Op::Set {
            key: format!("k{}", index % 70).into_bytes(),
            value: Value::json(index.to_string()),
        };
        store.write_blocking(op.clone()).unwrap();
        apply_to_model(&mut model, &op);
    }
    let info = store.write_snapshot(Codec::Zstd, 2).unwrap();
    assert!(!store
        .purge_wal_before(info.applied_id + 1)
        .unwrap()
        .is_empty());
    assert!(store.wal().start_id() > 1);
    let at_cut = model.clone();
    for index in 0..40u32 {
        store
            .write_blocking(Op::Set {
                key: format!("later{index}").into_bytes(),
                value: Value::json(index.to_string()),
            })
            .unwrap();
    }
    store.truncate_after(info.applied_id).unwrap();
    assert_eq!(store.applied_id(), info.applied_id);
    assert_eq!(state(&store), at_cut);
    // Cutting below every snapshot the log continues is refused, and changes nothing: not the
    // map, not the log.
    let (last_id, next_id, start_id) = (store.last_id(), store.next_id(), store.wal().start_id());
    let error = store.truncate_after(5).unwrap_err();
    assert!(
        matches!(error, Error::CannotRebuild { .. }),
        "unexpected error {error}"
    );
    assert_eq!(state(&store), at_cut);
    assert_eq!((store.last_id(), store.next_id()), (last_id, next_id));
    assert_eq!(store.wal().start_id(), start_id);
}

/// Listing snapshots at run time leaves a snapshot being written alone; opening removes the
/// temporaries a crash left behind.
#[test]
fn temporaries_survive_listing_and_are_removed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .write_blocking(Op::Set {
            key: b"a".to_vec(),
            value: Value::json("1"),
        })
        .unwrap();
    assert_eq!(store.newest_snapshot_id(), 0);
    let info = store.write_snapshot(Codec::Lz4, 2).unwrap();
    assert_eq!(store.newest_snapshot_id(), info.applied_id);
    let temp = dir
        .path()
        .join("snapshots")
        .join("snapshot-00000000000000000009.snap.tmp");
    std::fs::write(&temp, b"being written").unwrap();
    assert_eq!(store.snapshots().len(), 1);
    assert_eq!(
        list_snapshots(&StdFs, &dir.path().join("snapshots"))
            .unwrap()
            .len(),
        1
    );
    assert!(temp.exists(), "a listing deleted a snapshot being written");
    store.close().unwrap();
    drop(store);
    let store = open(dir.path());
    assert!(!temp.exists(), "leftover temporary kept at open");
    assert_eq!(store.snapshots().len(), 1);
    assert_eq!(
        store.newest_snapshot_id(),
        info.applied_id,
        "known again at open"
    );
}

/// Purging the log drops the history links whose values it took away: they could only ever
/// read as compacted, and they held memory (about 100 B each) until retention reached them.
/// The versions still in the log stay readable.
#[test]
fn a_purge_forgets_the_history_links_it_made_unreadable() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let write = |round: u32| {
        for index in 0..20u32 {
            store
                .write_blocking(Op::Set {
                    key: format!("k{index}").into_bytes(),
                    value: Value::json(round.to_string()),
                })
                .unwrap();
        }
    };
    for round in 0..30 {
        write(round);
    }
    // 20 keys written 30 times: 29 links each.
    assert_eq!(store.history_links(), 20 * 29);
    let info = store.write_snapshot(Codec::None, 1).unwrap();
    assert!(!store
        .purge_wal_before(info.applied_id + 1)
        .unwrap()
        .is_empty());
    let first_id = store.first_id();
    assert!(first_id > 1);
    // Only links made at or after the log's first id are left.
    assert!(store.history_links() < 20 * 29, "{}", store.history_links());
    assert!(store.history_links() <= (info.applied_id + 1 - first_id) as usize);
    for round in 30..33 {
        write(round);
    }
    // The newest versions read back; older ones are compacted, never wrong.
    let history = store.key_history(b"k7", 100, true).unwrap().unwrap();
    assert!(history.compacted);
    let (version, _, value) = &history.versions[1];
    assert_eq!(*version, 32);
    assert_eq!(value.as_ref().unwrap(), &Value::json("31".to_owned()));
    // A restart from the snapshot and the log keeps the same answers.
    store.close().unwrap();
    drop(store);
    let store = open(dir.path());
    let again = store.key_history(b"k7", 100, true).unwrap().unwrap();
    assert_eq!(again.versions[..2], history.versions[..2]);
}

/// A value over 64 MiB (kvd takes up to `--max-body-bytes`, and a log record may hold up to
/// 256 MiB) makes a snapshot block larger than 64 MiB: the snapshot is read back, with every
/// codec, incompressible bytes included. Before, the reader refused any block over 64 MiB as
/// an implausible length, so a node that wrote such a snapshot and purged its log could not
/// open again.
#[test]
fn a_value_larger_than_64_mib_survives_a_snapshot_and_a_restart() {
    let mut state_word = 0x9E37_79B9_7F4A_7C15u64;
    let large: Vec<u8> = (0..(64 << 20) + 1)
        .map(|_| {
            state_word ^= state_word << 13;
            state_word ^= state_word >> 7;
            state_word ^= state_word << 17;
            state_word as u8
        })
        .collect();
    for codec in [Codec::None, Codec::Lz4, Codec::Zstd] {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store
            .write_blocking(set("small", Value::json("1")))
            .unwrap();
        store
            .write_blocking(set("large", Value::raw(large.clone())))
            .unwrap();
        store
            .write_blocking(set("after", Value::json("2")))
            .unwrap();
        let info = store.write_snapshot(codec, 2).unwrap();
        store.purge_wal_before(info.applied_id + 1).unwrap();
        store.close().unwrap();
        drop(store);
        let store = open(dir.path());
        let load = store.snapshot_load();
        assert_eq!(
            load.loaded.as_ref().map(|(_, id)| *id),
            Some(info.applied_id),
            "codec {codec}: the snapshot is loaded"
        );
        let restored = state(&store);
        assert_eq!(restored.len(), 3, "codec {codec}");
        assert!(
            restored.get(b"large".as_slice()) == Some(&Value::raw(large.clone())),
            "codec {codec}: the large value is back byte for byte"
        );
    }
}
