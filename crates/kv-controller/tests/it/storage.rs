//! The Raft log, vote and snapshot on disk: restart and power loss (kv-wal's `SimFs`).

use std::path::Path;
use std::sync::Arc;

use kv_controller::raft_types::{Entry, LogId, Vote};
use kv_controller::{Command, LogStore, StateMachineStore};
use kv_wal::fs::FileSystem;
use kv_wal::sim::{CrashMode, SimFs};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{CommittedLeaderId, EntryPayload, RaftLogReader};

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 0), index)
}

fn entry(term: u64, index: u64) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(Command::AddMember {
            id: index,
            url: format!("http://n{index}"),
        }),
    }
}

fn open(fs: &SimFs, node: u64) -> LogStore {
    LogStore::open(
        Arc::new(fs.clone()) as Arc<dyn FileSystem>,
        Path::new("/data/controller"),
        node,
    )
    .unwrap()
}

/// Node 1's log on `fs` with its vote in term 3 and `entries` entries of term 3 (indexes 0..),
/// `committed` through index `c` if given, closed.
async fn voted_log(fs: &SimFs, entries: u64, committed: Option<u64>) {
    let mut store = open(fs, 1);
    store.save_vote(&Vote::new(3, 1)).await.unwrap();
    store
        .blocking_append((0..entries).map(|index| entry(3, index)))
        .await
        .unwrap();
    if let Some(index) = committed {
        store.save_committed(Some(log_id(3, index))).await.unwrap();
    }
}

async fn indexes(store: &mut LogStore) -> Vec<(u64, u64)> {
    store
        .try_get_log_entries(0..u64::MAX)
        .await
        .unwrap()
        .iter()
        .map(|entry| (entry.log_id.leader_id.term, entry.log_id.index))
        .collect()
}

#[tokio::test]
async fn votes_entries_and_marks_survive_a_power_loss_once_reported_durable() {
    let fs = SimFs::new();
    let mut store = open(&fs, 1);
    assert!(!store.has_state());
    store.save_vote(&Vote::new(3, 1)).await.unwrap();
    store
        .blocking_append((0..5).map(|index| entry(3, index)))
        .await
        .unwrap();
    store.save_committed(Some(log_id(3, 3))).await.unwrap();
    fs.crash(CrashMode::TearUnsynced { seed: 1 });

    let mut store = open(&fs, 1);
    assert!(store.has_state());
    assert_eq!(
        store.read_vote().await.unwrap(),
        Some(Vote::new(3, 1)),
        "a vote in memory only is unsafe"
    );
    assert_eq!(store.read_committed().await.unwrap(), Some(log_id(3, 3)));
    let state = store.get_log_state().await.unwrap();
    assert_eq!(
        (state.last_purged_log_id, state.last_log_id),
        (None, Some(log_id(3, 4)))
    );
    assert_eq!(
        indexes(&mut store).await,
        (0..5).map(|index| (3, index)).collect::<Vec<_>>()
    );
    // Another node's id is refused.
    let other = LogStore::open(
        Arc::new(fs.clone()) as Arc<dyn FileSystem>,
        Path::new("/data/controller"),
        2,
    );
    assert!(matches!(
        other,
        Err(kv_controller::Error::NodeIdMismatch {
            stored: 1,
            configured: 2
        })
    ));
}

#[tokio::test]
async fn a_conflicting_suffix_is_truncated_crash_safely_and_replaced() {
    let fs = SimFs::new();
    let mut store = open(&fs, 1);
    // As openraft does, every entry's term is voted for before the entry is written.
    store.save_vote(&Vote::new(2, 0)).await.unwrap();
    store
        .blocking_append((0..6).map(|index| entry(2, index)))
        .await
        .unwrap();
    // A new leader's log differs from index 3 on.
    store.save_vote(&Vote::new(4, 0)).await.unwrap();
    store.truncate(log_id(2, 3)).await.unwrap();
    assert_eq!(
        store.get_log_state().await.unwrap().last_log_id,
        Some(log_id(2, 2))
    );
    store
        .blocking_append((3..5).map(|index| entry(4, index)))
        .await
        .unwrap();
    fs.crash(CrashMode::DropUnsynced);
    let mut store = open(&fs, 1);
    assert_eq!(
        indexes(&mut store).await,
        vec![(2, 0), (2, 1), (2, 2), (4, 3), (4, 4)]
    );
    // Appending past a hole is refused, not silently misnumbered.
    assert!(store.blocking_append([entry(4, 9)]).await.is_err());
}

#[tokio::test]
async fn purging_inside_and_past_the_log_keeps_indexes_straight_across_restarts() {
    let fs = SimFs::new();
    let mut store = open(&fs, 1);
    store.save_vote(&Vote::new(1, 0)).await.unwrap();
    store
        .blocking_append((0..10).map(|index| entry(1, index)))
        .await
        .unwrap();
    store.purge(log_id(1, 4)).await.unwrap();
    let state = store.get_log_state().await.unwrap();
    assert_eq!(
        (state.last_purged_log_id, state.last_log_id),
        (Some(log_id(1, 4)), Some(log_id(1, 9)))
    );
    assert_eq!(
        indexes(&mut store).await,
        (5..10).map(|index| (1, index)).collect::<Vec<_>>()
    );
    // A snapshot installed from the leader of term 3 purges past the end: the log continues
    // at 101.
    store.save_vote(&Vote::new(3, 0)).await.unwrap();
    store.purge(log_id(3, 100)).await.unwrap();
    assert_eq!(
        store.get_log_state().await.unwrap().last_log_id,
        Some(log_id(3, 100))
    );
    assert!(indexes(&mut store).await.is_empty());
    fs.crash(CrashMode::DropUnsynced);
    let mut store = open(&fs, 1);
    let state = store.get_log_state().await.unwrap();
    assert_eq!(
        (state.last_purged_log_id, state.last_log_id),
        (Some(log_id(3, 100)), Some(log_id(3, 100)))
    );
    store
        .blocking_append((101..104).map(|index| entry(3, index)))
        .await
        .unwrap();
    fs.crash(CrashMode::TearUnsynced { seed: 7 });
    let mut store = open(&fs, 1);
    assert_eq!(
        indexes(&mut store).await,
        vec![(3, 101), (3, 102), (3, 103)]
    );
    assert_eq!(store.try_get_log_entries(102..103).await.unwrap().len(), 1);
    store.truncate(log_id(3, 102)).await.unwrap();
    assert_eq!(indexes(&mut store).await, vec![(3, 101)]);
}

/// A log whose `raft-state.json` is gone lost its vote, its commit and purge marks and its
/// index shift: opening it as if new (a fresh state beside the old entries) let the node vote
/// again in a term it had voted in. It is refused, naming the file; so is a snapshot without
/// it. A new directory still opens.
#[tokio::test]
async fn a_log_without_its_raft_state_is_refused() {
    let fs = SimFs::new();
    voted_log(&fs, 3, None).await;
    let state_path = Path::new("/data/controller/raft-state.json");
    fs.remove_file(state_path).unwrap();
    let reopened = LogStore::open(
        Arc::new(fs.clone()) as Arc<dyn FileSystem>,
        Path::new("/data/controller"),
        1,
    );
    assert!(
        matches!(&reopened, Err(kv_controller::Error::Corrupt { path, .. }) if path == state_path),
        "{reopened:?}"
    );
    // Nothing was written in its place: the refusal repeats.
    assert!(matches!(
        kv_wal::durable::read_file(&fs, state_path),
        Ok(None)
    ));

    let fresh = SimFs::new();
    let store = open(&fresh, 1);
    assert!(!store.has_state());
}

/// A `raft-state.json` that its log proves impossible — a hand edit, or a file copied from
/// another directory — is refused at open, naming the file, and nothing on disk changes: no
/// vote beside entries (the node would vote again in a term it voted in), a vote below the
/// entries' term, a committed log id that is not the entry at its index, a shift that maps
/// the last record to another index, a vote term no election can follow (`u64::MAX`: openraft
/// adds one for its next election). Before, the node with no vote started and voted afresh,
/// those whose vote or commit mark disagreed with the log started with a Raft core that never
/// committed again (kvd waited for its role for ever and did not stop on SIGTERM), the vote of
/// term `u64::MAX` started (its next election overflows), and a shift of `u64::MAX` overflowed
/// (a panic in a debug build).
#[tokio::test]
async fn a_raft_state_its_log_proves_impossible_is_refused() {
    let pristine = SimFs::new();
    voted_log(&pristine, 4, Some(2)).await;
    let state_path = Path::new("/data/controller/raft-state.json");
    let state: serde_json::Value =
        serde_json::from_slice(&pristine.read_file(state_path).unwrap()).unwrap();
    type Edit = fn(&mut serde_json::Value);
    let edits: [(&str, Edit); 7] = [
        ("vote term that cannot grow", |state| {
            state["vote"]["leader_id"]["term"] = u64::MAX.into()
        }),
        ("no vote", |state| state["vote"] = serde_json::Value::Null),
        ("vote below the log's term", |state| {
            state["vote"]["leader_id"]["term"] = 2.into()
        }),
        ("committed id of another term", |state| {
            state["committed"]["leader_id"]["term"] = 2.into()
        }),
        ("committed term above the vote", |state| {
            state["committed"]["leader_id"]["term"] = 7.into()
        }),
        ("shift off by one", |state| state["shift"] = 1.into()),
        ("shift that overflows", |state| {
            state["shift"] = u64::MAX.into()
        }),
    ];
    for (case, edit) in edits {
        let fs = pristine.fork();
        let mut edited = state.clone();
        edit(&mut edited);
        // Sealed again, as a file copied from another directory would be: what refuses it is
        // the log, not the checksum.
        let bytes = resealed(edited);
        fs.write_file_durably(state_path, &bytes).unwrap();
        let opened = LogStore::open(
            Arc::new(fs.clone()) as Arc<dyn FileSystem>,
            Path::new("/data/controller"),
            1,
        );
        assert!(
            matches!(&opened, Err(kv_controller::Error::Corrupt { path, reason }) if path == state_path && !reason.contains("crc32c")),
            "{case}: {opened:?}"
        );
        assert_eq!(
            fs.read_file(state_path).unwrap(),
            bytes,
            "{case}: rewritten"
        );
    }
    // The file as written opens, with every entry.
    let mut store = open(&pristine, 1);
    assert_eq!(
        indexes(&mut store).await,
        (0..4).map(|index| (3, index)).collect::<Vec<_>>()
    );
}

/// `value`, a state file's JSON as read, sealed again without its old checksum (what a
/// node writes).
fn resealed(mut value: serde_json::Value) -> Vec<u8> {
    value.as_object_mut().expect("an object").remove("crc32c");
    kv_wal::sealed_json::seal(&serde_json::to_vec_pretty(&value).unwrap())
}

/// The controller's two JSON state files, `raft-state.json` and `snapshot.json`, are sealed
/// with their CRC-32C: every single-bit flip of either is refused at open, naming the file,
/// and nothing is rewritten. Before, a flipped digit was read as written — a vote's term
/// moved down (3 to 2 is one bit) let the node vote a second time in term 3, a flipped
/// epoch or member id in the snapshot was believed.
#[tokio::test]
async fn every_single_bit_flip_of_a_controller_state_file_is_refused() {
    let pristine = with_both_state_files().await;
    let controller = Path::new("/data/controller");
    for name in ["raft-state.json", "snapshot.json"] {
        let path = controller.join(name);
        let sealed = pristine.read_file(&path).unwrap();
        assert!(
            String::from_utf8_lossy(&sealed).contains("\"crc32c\": \""),
            "{name} is not sealed"
        );
        let fs = pristine.fork();
        for bit in 0..sealed.len() * 8 {
            let mut damaged = sealed.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            fs.write_file_durably(&path, &damaged).unwrap();
            let shared = Arc::new(fs.clone()) as Arc<dyn FileSystem>;
            let opened = match name {
                "raft-state.json" => LogStore::open(shared, controller, 1).map(drop),
                _ => StateMachineStore::open(shared, controller).map(drop),
            };
            assert!(
                matches!(&opened, Err(kv_controller::Error::Corrupt { path: named, .. }) if *named == path),
                "{name}, bit {bit}: {opened:?}"
            );
            assert_eq!(fs.read_file(&path).unwrap(), damaged, "{name}: rewritten");
        }
    }
    assert!(open_both(&pristine).is_ok());
}

/// Files from before the seal (format 1, no checksum) still open, and are written back sealed
/// (format 2) the next time they change; a format-2 file without its checksum is refused.
#[tokio::test]
async fn state_files_from_before_the_seal_open_and_are_sealed_when_written_again() {
    let pristine = with_both_state_files().await;
    let controller = Path::new("/data/controller");
    let unsealed = |fs: &SimFs, name: &str, format: u64| {
        let path = controller.join(name);
        let mut value: serde_json::Value =
            serde_json::from_slice(&fs.read_file(&path).unwrap()).unwrap();
        value.as_object_mut().unwrap().remove("crc32c");
        value["format"] = format.into();
        fs.write_file_durably(&path, &serde_json::to_vec_pretty(&value).unwrap())
            .unwrap();
    };
    let old = pristine.fork();
    unsealed(&old, "raft-state.json", 1);
    unsealed(&old, "snapshot.json", 1);
    let mut store = open(&old, 1);
    assert_eq!(indexes(&mut store).await, vec![(3, 0), (3, 1)]);
    store.save_vote(&Vote::new(4, 1)).await.unwrap();
    let rewritten =
        String::from_utf8(old.read_file(&controller.join("raft-state.json")).unwrap()).unwrap();
    assert!(
        rewritten.contains("\"format\": 2") && rewritten.contains("\"crc32c\": \""),
        "{rewritten}"
    );
    drop(store);
    assert!(open_both(&old).is_ok());

    for name in ["raft-state.json", "snapshot.json"] {
        let fs = pristine.fork();
        unsealed(&fs, name, 2);
        let opened = open_both(&fs);
        assert!(
            matches!(&opened, Err(kv_controller::Error::Corrupt { reason, .. }) if reason.contains("has none")),
            "{name}: {opened:?}"
        );
    }
}

/// A controller directory with both JSON state files: node 1's log (two entries of term 3,
/// the first committed) and a snapshot at (3, 1).
async fn with_both_state_files() -> SimFs {
    let fs = SimFs::new();
    voted_log(&fs, 2, Some(1)).await;
    install_a_snapshot(&fs).await;
    fs
}

/// Installs a snapshot of an empty cluster state at log id (3, 1) in the controller on `fs`.
async fn install_a_snapshot(fs: &SimFs) {
    use openraft::storage::RaftStateMachine;
    let mut machine = StateMachineStore::open(
        Arc::new(fs.clone()) as Arc<dyn FileSystem>,
        Path::new("/data/controller"),
    )
    .unwrap();
    let meta = openraft::SnapshotMeta {
        last_log_id: Some(log_id(3, 1)),
        last_membership: Default::default(),
        snapshot_id: "test".to_owned(),
    };
    let state = serde_json::to_vec(&kv_controller::ClusterMeta::default()).unwrap();
    machine
        .install_snapshot(&meta, Box::new(std::io::Cursor::new(state)))
        .await
        .unwrap();
}

/// Opens node 1's log and the state machine on `fs`, as the controller does.
fn open_both(fs: &SimFs) -> kv_controller::Result<()> {
    let dir = Path::new("/data/controller");
    let shared = Arc::new(fs.clone()) as Arc<dyn FileSystem>;
    LogStore::open(shared.clone(), dir, 1)?;
    StateMachineStore::open(shared, dir)?;
    Ok(())
}

/// A bit flipped in the log's last entry — an entry this node acknowledged to its leader once
/// it was synced — is refused at open, naming the segment, and the segment is left as it is.
/// Before, kv-wal's default recovery took it for a torn write and cut it: the node came back
/// without an entry it had acknowledged (a committed entry a majority no longer held), or, on
/// a one-node `kvd leader` whose commit mark was behind, without its cluster's `Bootstrap`
/// ("has not learned the cluster's metadata yet", for ever). An unfinished write at the end
/// (the file cut inside the last entry) is still cut.
#[tokio::test]
async fn a_bit_flip_in_the_last_entry_is_refused_not_cut() {
    let pristine = SimFs::new();
    voted_log(&pristine, 3, None).await;
    let log_dir = Path::new("/data/controller/log");
    let segment = pristine
        .list_dir(log_dir)
        .unwrap()
        .into_iter()
        .find(|name| name.ends_with(".wal"))
        .map(|name| log_dir.join(name))
        .expect("a segment");
    let bytes = pristine.read_file(&segment).unwrap();
    let last_url = bytes
        .windows(9)
        .position(|window| window == b"http://n2")
        .expect("the last entry's URL");

    let flipped = pristine.fork();
    let mut damaged = bytes.clone();
    damaged[last_url + 7] ^= 0x01;
    flipped.write_file_durably(&segment, &damaged).unwrap();
    let opened = LogStore::open(
        Arc::new(flipped.clone()) as Arc<dyn FileSystem>,
        Path::new("/data/controller"),
        1,
    );
    assert!(
        matches!(&opened, Err(kv_controller::Error::Log(kv_wal::Error::Corrupt { segment: path, .. })) if *path == segment),
        "{:?}",
        opened.map(|store| store.last_log_id())
    );
    assert_eq!(flipped.read_file(&segment).unwrap(), damaged, "rewritten");

    let torn = pristine.fork();
    let data_end = bytes.iter().rposition(|&byte| byte != 0).unwrap() + 1;
    torn.write_file_durably(&segment, &bytes[..data_end - 5])
        .unwrap();
    let mut store = open(&torn, 1);
    assert_eq!(indexes(&mut store).await, vec![(3, 0), (3, 1)]);
}

/// A controller `log/` emptied of its segments (deleted by mistake) beside a `raft-state.json`
/// that holds a vote and a commit mark is refused at open, naming the directory, and nothing
/// is created there. Before, the WAL created a new empty log in its place and open succeeded:
/// openraft refused later with "Failed to get log entries" (the directory already changed),
/// or with nothing committed yet the node came back without the entries it acknowledged.
#[tokio::test]
async fn a_raft_state_without_its_log_is_refused_and_nothing_is_created() {
    let fs = SimFs::new();
    voted_log(&fs, 3, Some(2)).await;
    let log_dir = Path::new("/data/controller/log");
    for name in fs.list_dir(log_dir).unwrap() {
        fs.remove_file(&log_dir.join(name)).unwrap();
    }
    let opened = LogStore::open(
        Arc::new(fs.clone()) as Arc<dyn FileSystem>,
        Path::new("/data/controller"),
        1,
    );
    assert!(
        matches!(&opened, Err(kv_controller::Error::Corrupt { path, .. }) if path == log_dir),
        "{:?}",
        opened.map(|store| store.last_log_id())
    );
    assert!(
        fs.list_dir(log_dir).unwrap().is_empty(),
        "created a new log"
    );
}

/// Node 1's log on `fs` behind a disk that is full while `full` exists.
fn open_on_a_disk_full_while(fs: &SimFs, full: &Path) -> LogStore {
    let plan = kv_wal::fs::FaultPlan::new();
    plan.full_while_exists(full.to_owned());
    let faulty = kv_wal::fs::FaultyFs::new(Arc::new(fs.clone()), plan);
    LogStore::open(
        Arc::new(faulty) as Arc<dyn FileSystem>,
        Path::new("/data/controller"),
        1,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_full_disk_a_vote_waits_for_room_and_is_saved_once_there_is_some() {
    // Before, the failed write went to openraft as a storage error, which stops the Raft core
    // for good (`kvd`'s `failover::disk::when_every_disk_fills_…` shows the cluster's side).
    let fs = SimFs::new();
    let scratch = tempfile::tempdir().unwrap();
    let full = scratch.path().join("full");
    let mut store = open_on_a_disk_full_while(&fs, &full);
    store.save_vote(&Vote::new(1, 1)).await.unwrap();
    std::fs::write(&full, b"").unwrap();
    let mut saving = store.clone();
    let save = tokio::spawn(async move { saving.save_vote(&Vote::new(2, 1)).await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !save.is_finished(),
        "the vote was not written: it must wait"
    );
    let waiting = store.room().waiting().expect("the store says it waits");
    assert!(waiting.contains("raft-state.json"), "{waiting}");
    assert_eq!(
        store.vote(),
        Some(Vote::new(1, 1)),
        "not durable, not current"
    );

    std::fs::remove_file(&full).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), save)
        .await
        .expect("saved within a retry or two once there is room")
        .unwrap()
        .unwrap();
    assert_eq!(store.room().waiting(), None);
    drop(store);
    fs.crash(CrashMode::DropUnsynced);
    assert_eq!(open(&fs, 1).vote(), Some(Vote::new(2, 1)), "durable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_waiting_for_room_fails_once_the_store_closes() {
    let fs = SimFs::new();
    let scratch = tempfile::tempdir().unwrap();
    let full = scratch.path().join("full");
    let store = open_on_a_disk_full_while(&fs, &full);
    std::fs::write(&full, b"").unwrap();
    let mut saving = store.clone();
    let save = tokio::spawn(async move { saving.save_committed(Some(log_id(1, 0))).await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !save.is_finished(),
        "the mark was not written: it must wait"
    );
    store.room().close();
    let result = tokio::time::timeout(std::time::Duration::from_secs(2), save)
        .await
        .expect("closing ends the wait at once")
        .unwrap();
    let error = result.expect_err("nothing was written");
    assert!(error.to_string().contains("No space left"), "{error}");
    // A closed store does not wait again.
    let mut store = store;
    let again = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        store.save_vote(&Vote::new(1, 1)),
    )
    .await
    .expect("no wait once closed");
    assert!(again.is_err());
}
