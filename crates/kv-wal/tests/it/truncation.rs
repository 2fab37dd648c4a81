//! Truncation and repair edge cases of issue 11 finding 7: ids never reused after a crash in a
//! truncation, no acknowledgement while a truncation is marked, no spurious `Corrupt` for a
//! reader during one, honest watermarks after a point-in-time repair, a new log directory
//! fsynced in its parent.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use kv_wal::sim::{CrashMode, SimFs};
use kv_wal::{Error, RecoveryMode, SyncPolicy, Wal, WalOptions};

use crate::support::{
    collect, open_sim, payload, segment_files, sim_dir, sim_options, HookFs, StepFs,
};

/// A crash at any step of a truncation that removes every segment ("everything goes", here
/// after a purge) reopens with the next id the truncation promised or the old log's: never
/// from id 1 again.
#[test]
fn a_crash_while_truncating_everything_never_restarts_ids() {
    for step in 1..=12 {
        let fs = SimFs::new();
        let step_fs = StepFs::new(fs.clone());
        let options = WalOptions {
            file_system: Arc::new(step_fs.clone()),
            ..sim_options(&fs, 400)
        };
        let (wal, _) = Wal::open(sim_dir(), options).unwrap();
        for id in 1..=30 {
            wal.append(&payload(id, 50)).unwrap();
        }
        wal.purge_before(25).unwrap();
        assert!(wal.first_id().unwrap() > 5);
        step_fs.plan().die_at(step);
        let truncated = wal.truncate_after(5);
        drop(wal);
        fs.crash(CrashMode::DropUnsynced);
        let (wal, report) = open_sim(&fs, 400, RecoveryMode::TolerateTornTail).unwrap();
        let next_id = wal.next_id();
        assert!(
            next_id == 6 || next_id == 31,
            "step {step} ({truncated:?}): next id {next_id}: {report}"
        );
        if truncated.is_ok() {
            assert_eq!(next_id, 6, "step {step}");
        }
    }
}

/// While a truncation's marker exists, no append may be acknowledged: the open that completes
/// the marker after a crash would cut it. An appender that starts when the cut is done waits
/// until the marker is gone.
#[test]
fn no_append_is_acknowledged_while_a_truncation_is_marked() {
    #[derive(Default)]
    struct Window {
        cut_done: bool,
        acknowledged_while_marked: bool,
        appended: bool,
    }
    let window = Arc::new((Mutex::new(Window::default()), Condvar::new()));
    let marker: PathBuf = sim_dir().join("truncate.pending");
    let hook = {
        let window = window.clone();
        let marker = marker.clone();
        Arc::new(move |op: &str, path: &Path| {
            let (state, changed) = &*window;
            if op == "set_len" {
                state.lock().unwrap().cut_done = true;
                changed.notify_all();
            }
            if op == "remove" && path == marker {
                // Give an appender every chance to slip in before the marker goes.
                let deadline = Instant::now() + Duration::from_millis(300);
                let mut state = state.lock().unwrap();
                while !state.appended && Instant::now() < deadline {
                    let left = deadline.saturating_duration_since(Instant::now());
                    state = changed.wait_timeout(state, left).unwrap().0;
                }
                state.acknowledged_while_marked = state.appended;
            }
        })
    };
    let fs = SimFs::new();
    let options = WalOptions {
        file_system: Arc::new(HookFs::new(fs.clone(), hook)),
        ..sim_options(&fs, 1 << 20)
    };
    let wal = Arc::new(Wal::open(sim_dir(), options).unwrap().0);
    for id in 1..=20 {
        wal.append(&payload(id, 50)).unwrap();
    }
    let appender = {
        let wal = wal.clone();
        let window = window.clone();
        std::thread::spawn(move || {
            let (state, changed) = &*window;
            let mut guard = state.lock().unwrap();
            while !guard.cut_done {
                guard = changed.wait(guard).unwrap();
            }
            drop(guard);
            let appended = wal.append_with(b"after the cut", SyncPolicy::Batch);
            state.lock().unwrap().appended = appended.is_ok();
            changed.notify_all();
            appended
        })
    };
    wal.truncate_after(10).unwrap();
    assert_eq!(appender.join().unwrap().unwrap(), 11);
    let state = window.0.lock().unwrap();
    assert!(
        !state.acknowledged_while_marked,
        "an append was acknowledged while the truncation marker was still there"
    );
}

/// A read a hook runs once, in the middle of a truncation.
type ArmedRead = Box<dyn FnOnce() -> bool + Send>;

/// A reader positioned in a segment that a truncation cuts under it gets `Error::Truncated`,
/// never a spurious `Error::Corrupt` from reading past the new end.
#[test]
fn a_reader_during_a_truncation_sees_truncated_not_corrupt() {
    let next_read: Arc<Mutex<Option<ArmedRead>>> = Arc::new(Mutex::new(None));
    let hook = {
        let next_read = next_read.clone();
        Arc::new(move |op: &str, path: &Path| {
            if op == "sync_data" && path.extension().is_some_and(|ext| ext == "wal") {
                // Right after the cut's set_len: let the reader read on.
                if let Some(read) = next_read.lock().unwrap().take() {
                    read();
                }
            }
        })
    };
    let fs = SimFs::new();
    let options = WalOptions {
        file_system: Arc::new(HookFs::new(fs.clone(), hook)),
        ..sim_options(&fs, 1 << 22)
    };
    let wal = Arc::new(Wal::open(sim_dir(), options).unwrap().0);
    // Records larger than a reader's buffer, so each read after the cut goes to the file.
    for id in 1..=8 {
        wal.append(&payload(id, 100 << 10)).unwrap();
    }
    let mut iter = wal.iter_from(1);
    assert_eq!(iter.next().unwrap().unwrap().id, 1);
    assert_eq!(iter.next().unwrap().unwrap().id, 2);
    let outcome = Arc::new(Mutex::new(None));
    {
        let outcome = outcome.clone();
        let mut iter = Some(iter);
        let armed: ArmedRead = Box::new(move || {
            let mut iter = iter.take().unwrap();
            let next = iter.next();
            let truncated = matches!(next, Some(Err(Error::Truncated)));
            *outcome.lock().unwrap() =
                Some(format!("{next:?}").chars().take(200).collect::<String>());
            truncated
        });
        // Armed only now: the appends above synced too.
        *next_read.lock().unwrap() = Some(armed);
    }
    wal.truncate_after(2).unwrap();
    let seen = outcome
        .lock()
        .unwrap()
        .clone()
        .expect("the reader ran during the cut");
    assert!(
        seen.contains("Truncated"),
        "a reader during a truncation got {seen}"
    );
}

/// After a point-in-time repair dropped records, the last and durable ids are those of the
/// last record the log holds (a follower reports them to its leader); the next id still skips
/// the dropped ids.
#[test]
fn after_a_point_in_time_repair_the_watermarks_do_not_overstate_the_log() {
    let fs = SimFs::new();
    let (wal, _) = open_sim(&fs, 600, RecoveryMode::TolerateTornTail).unwrap();
    for id in 1..=40 {
        wal.append(&payload(id, 40)).unwrap();
    }
    wal.close().unwrap();
    drop(wal);
    let files = segment_files(&fs);
    let middle = &files[files.len() / 2];
    let mut bytes = fs.read_file(middle).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x10;
    fs.write_file_durably(middle, &bytes).unwrap();
    let (wal, report) = open_sim(&fs, 600, RecoveryMode::PointInTime).unwrap();
    assert!(report.dropped.is_some(), "{report}");
    let kept_last = collect(&wal, 1).last().map(|(id, _)| *id);
    assert!(kept_last < Some(40));
    assert!(wal.next_id() > 40, "ids are never reused: {report}");
    assert_eq!(wal.last_id(), kept_last, "{report}");
    assert_eq!(report.last_id, kept_last, "{report}");
    assert_eq!(Some(wal.durable_id()), kept_last, "{report}");
}

/// A new log directory is fsynced in its parent (and the parent's parent when it was made
/// too), or a power cut could lose the directory and the log with it.
#[test]
fn a_new_log_directory_is_fsynced_in_its_parent() {
    let synced: Arc<Mutex<Vec<PathBuf>>> = Arc::new(Mutex::new(Vec::new()));
    let hook = {
        let synced = synced.clone();
        Arc::new(move |op: &str, path: &Path| {
            if op == "sync_dir" {
                synced.lock().unwrap().push(path.to_owned());
            }
        })
    };
    let fs = SimFs::new();
    let options = WalOptions {
        file_system: Arc::new(HookFs::new(fs.clone(), hook)),
        ..sim_options(&fs, 1 << 20)
    };
    let dir = Path::new("/fresh/data/wal");
    let (_wal, _) = Wal::open(dir, options).unwrap();
    let synced = synced.lock().unwrap();
    for parent in ["/fresh/data", "/fresh"] {
        assert!(
            synced.iter().any(|path| path == Path::new(parent)),
            "{parent} not fsynced: {synced:?}"
        );
    }
}

/// A cut that falls in a gap of ids the log skipped (`skip_to`, for a snapshot that covers
/// them) keeps them skipped: the next append gets `after_id + 1`, as `truncate_after` says, and
/// after a reopen too. Before, it got the gap's first id — an id the snapshot covers (found by
/// a new user embedding kv-wal).
#[test]
fn a_cut_into_skipped_ids_never_hands_them_out() {
    let fs = SimFs::new();
    let (wal, _) = open_sim(&fs, 4096, RecoveryMode::TolerateTornTail).unwrap();
    for id in 1..=5 {
        assert_eq!(wal.append(&payload(id, 40)).unwrap(), id);
    }
    assert!(wal.skip_to(10).unwrap());
    for id in 10..=12 {
        assert_eq!(wal.append(&payload(id, 40)).unwrap(), id);
    }
    wal.truncate_after(8).unwrap();
    assert_eq!(wal.next_id(), 9);
    assert_eq!(wal.append(&payload(9, 40)).unwrap(), 9);
    let expected: Vec<(u64, Vec<u8>)> = [1, 2, 3, 4, 5, 9]
        .into_iter()
        .map(|id| (id, payload(id, 40)))
        .collect();
    assert_eq!(collect(&wal, 1), expected);
    drop(wal);
    let (wal, report) = open_sim(&fs, 4096, RecoveryMode::Strict).unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(collect(&wal, 1), expected);
    assert_eq!(wal.next_id(), 10);
}

/// Appends waiting for their fsync while a truncation cuts after their ids end acknowledged
/// (their records were kept, and are durable); the one whose id the cut dropped ends
/// `Error::Truncated`. Before, every waiter ended `Truncated`, though the kept records stayed
/// in the log and survived a reopen: a caller that retried wrote them twice (found by a new
/// user embedding kv-wal).
#[test]
fn appends_the_cut_keeps_end_acknowledged_and_only_dropped_ones_end_truncated() {
    let fs = SimFs::new();
    let plan = kv_wal::fs::FaultPlan::new();
    let options = WalOptions {
        file_system: Arc::new(kv_wal::fs::FaultyFs::new(
            Arc::new(fs.clone()),
            plan.clone(),
        )),
        ..sim_options(&fs, 1 << 20)
    };
    let wal = Arc::new(Wal::open(sim_dir(), options).unwrap().0);
    assert_eq!(wal.append(b"a").unwrap(), 1);
    // A slow disk: the commits stay in flight while the truncation comes.
    plan.delay_syncs(Duration::from_millis(300));
    let append = |payload: &'static [u8]| {
        let wal = wal.clone();
        let handle = std::thread::spawn(move || wal.append(payload));
        std::thread::sleep(Duration::from_millis(30));
        handle
    };
    let kept = append(b"b");
    let dropped = append(b"c");
    wal.truncate_after(2).unwrap();
    assert_eq!(kept.join().unwrap().unwrap(), 2);
    let dropped = dropped.join().unwrap();
    assert!(matches!(dropped, Err(Error::Truncated)), "{dropped:?}");
    assert_eq!(wal.durable_id(), 2);
    plan.delay_syncs(Duration::ZERO);
    assert_eq!(wal.append(b"d").unwrap(), 3);
    drop(wal);
    let (wal, report) = open_sim(&fs, 1 << 20, RecoveryMode::Strict).unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(
        collect(&wal, 1),
        vec![(1, b"a".to_vec()), (2, b"b".to_vec()), (3, b"d".to_vec())]
    );
}
