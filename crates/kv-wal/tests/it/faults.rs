//! Failed writes and fsyncs: the log poisons itself, refuses writes with a clear error, never
//! retries an fsync, keeps serving reads, and loses nothing that was acknowledged.

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use kv_wal::fs::{FaultPlan, FaultyFs, FileSystem};
use kv_wal::sim::{CrashMode, SimFs};
use kv_wal::{Error, RecoveryMode, SyncPolicy, Wal, WalOptions};

use crate::support::{collect, open_sim, payload, sim_dir, SyncHook, SyncHookFs};

fn open_faulty(
    fs: &SimFs,
    plan: &Arc<FaultPlan>,
    policy: SyncPolicy,
    segment_bytes_max: u64,
) -> Wal {
    let options = WalOptions {
        segment_bytes_max,
        sync_policy: policy,
        file_system: Arc::new(FaultyFs::new(Arc::new(fs.clone()), plan.clone())),
        ..WalOptions::default()
    };
    Wal::open(sim_dir(), options).expect("open").0
}

fn check_poisoned_then_recovers(policy: SyncPolicy, fail: impl Fn(&FaultPlan)) {
    let fs = SimFs::new();
    let plan = FaultPlan::new();
    let wal = open_faulty(&fs, &plan, policy, 1 << 20);
    for id in 1..=20 {
        assert_eq!(wal.append(&payload(id, 64)).unwrap(), id);
    }
    fail(&plan);
    let failed = wal.append(&payload(21, 64));
    assert!(
        matches!(failed, Err(Error::Poisoned(_))),
        "{policy}: {failed:?}"
    );
    assert_eq!(plan.faults_fired(), 1, "{policy}: the fault fired");
    let syncs = plan.syncs();
    let writes = plan.writes();
    for _ in 0..3 {
        assert!(matches!(wal.append(b"refused"), Err(Error::Poisoned(_))));
    }
    assert!(matches!(wal.sync(), Err(Error::Poisoned(_))));
    assert_eq!(
        plan.syncs(),
        syncs,
        "{policy}: an fsync was retried after a failure"
    );
    assert_eq!(plan.writes(), writes, "{policy}: a poisoned log wrote");
    assert!(wal.poisoned().is_some());
    assert_eq!(
        wal.read(7).unwrap(),
        Some(payload(7, 64)),
        "reads keep working"
    );
    drop(wal);

    // Power loss (a process crash for `Never`, which promises no more), then a healthy reopen:
    // every acknowledged record is there.
    if policy.is_durable_on_return() {
        fs.crash(CrashMode::DropUnsynced);
    }
    let (wal, report) = open_sim(&fs, 1 << 20, RecoveryMode::TolerateTornTail).unwrap();
    let records = collect(&wal, 1);
    assert!(
        records.len() >= 20,
        "{policy}: lost acknowledged records: {report}"
    );
    for (id, bytes) in records.iter().take(20) {
        assert_eq!(*bytes, payload(*id, 64));
    }
}

#[test]
fn failed_fsync_poisons_under_batch_and_always() {
    check_poisoned_then_recovers(SyncPolicy::Batch, |plan| plan.fail_sync_at(1));
    check_poisoned_then_recovers(SyncPolicy::Always, |plan| plan.fail_sync_at(1));
}

#[test]
fn failed_write_poisons() {
    check_poisoned_then_recovers(SyncPolicy::Batch, |plan| plan.fail_write_at(1));
    check_poisoned_then_recovers(SyncPolicy::Never, |plan| plan.fail_write_at(1));
}

#[test]
fn failure_while_rolling_a_segment_poisons_and_keeps_sealed_data() {
    let fs = SimFs::new();
    let plan = FaultPlan::new();
    let wal = open_faulty(&fs, &plan, SyncPolicy::Batch, 400);
    let mut acknowledged = 0;
    // Fail the first fsync of the directory or seal that a roll needs: keep appending until the
    // fault fires.
    plan.fail_sync_at(3);
    for id in 1..=100 {
        match wal.append(&payload(id, 50)) {
            Ok(got) => {
                assert_eq!(got, id);
                acknowledged = id;
            }
            Err(Error::Poisoned(_)) => break,
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert_eq!(plan.faults_fired(), 1);
    drop(wal);
    fs.crash(CrashMode::DropUnsynced);
    let (wal, report) = open_sim(&fs, 400, RecoveryMode::TolerateTornTail).unwrap();
    let records = collect(&wal, 1);
    assert!(
        records.len() as u64 >= acknowledged,
        "lost acknowledged records: {report}"
    );
}

/// A log (4 KiB segments, `batch`) on `fs` behind a disk that is full while the returned path
/// exists (in the returned directory, kept alive by the caller).
fn open_on_a_disk_that_fills(fs: &SimFs) -> (Wal, Arc<FaultPlan>, tempfile::TempDir, PathBuf) {
    let plan = FaultPlan::new();
    let flags = tempfile::tempdir().unwrap();
    let full = flags.path().join("full");
    plan.full_while_exists(full.clone());
    let wal = open_faulty(fs, &plan, SyncPolicy::Batch, 4096);
    (wal, plan, flags, full)
}

/// A file system with no room for a new segment: the append that needs one fails with
/// `OutOfSpace`, none of its records in the log and its ids not taken; the log is not poisoned
/// (reads go on, and it opens again on the full disk, its last segment reused); once there is
/// room the next append rolls, and everything appended is there after a power cut.
#[test]
fn a_full_disk_refuses_the_append_that_needs_a_segment_and_takes_writes_once_freed() {
    let fs = SimFs::new();
    let (wal, plan, _flags, full) = open_on_a_disk_that_fills(&fs);
    for id in 1..=10 {
        assert_eq!(wal.append(&payload(id, 64)).unwrap(), id);
    }
    std::fs::write(&full, b"").unwrap();
    let mut next = 11;
    let reason = loop {
        match wal.append(&payload(next, 64)) {
            Ok(got) => assert_eq!(got, next),
            Err(Error::OutOfSpace(reason)) => break reason,
            Err(other) => panic!("append {next}: {other}"),
        }
        next += 1;
        assert!(next < 1000, "the segment never filled");
    };
    println!("append {next}: {reason}");
    assert!(reason.contains("No space left on device"), "{reason}");
    assert_eq!(wal.poisoned(), None);
    assert_eq!(wal.out_of_space(), Some(reason));
    // Refused again, taking no id; a batch as well, whole; reads go on.
    assert!(matches!(
        wal.append(&payload(next, 64)),
        Err(Error::OutOfSpace(_))
    ));
    assert!(matches!(
        wal.append_batch(&[payload(next, 64), payload(next + 1, 64)]),
        Err(Error::OutOfSpace(_))
    ));
    assert_eq!(wal.next_id(), next);
    assert_eq!(wal.read(next - 1).unwrap(), Some(payload(next - 1, 64)));
    // Reopened on the full disk: it opens, holds everything, and still refuses.
    drop(wal);
    let wal = open_faulty(&fs, &plan, SyncPolicy::Batch, 4096);
    assert_eq!(wal.next_id(), next);
    assert!(matches!(
        wal.append(&payload(next, 64)),
        Err(Error::OutOfSpace(_))
    ));
    // Room again: the same append goes through, and the log rolls on.
    std::fs::remove_file(&full).unwrap();
    let last = next + 150;
    for id in next..=last {
        assert_eq!(wal.append(&payload(id, 64)).unwrap(), id);
    }
    assert_eq!(wal.out_of_space(), None);
    assert!(wal.segments().len() >= 3, "{:?}", wal.segments());
    drop(wal);
    fs.crash(CrashMode::DropUnsynced);
    let (wal, report) = open_sim(&fs, 4096, RecoveryMode::TolerateTornTail).unwrap();
    assert_eq!(collect(&wal, 1).len() as u64, last, "{report}");
    for id in [1, next - 1, next, last] {
        assert_eq!(wal.read(id).unwrap(), Some(payload(id, 64)));
    }
}

/// A log that found no room for a segment learns that it has room again from `check_room`,
/// with no append: a probe file preallocated as a segment would be, then removed. Before,
/// only an append that needed a segment cleared `out_of_space` (so a leader's `/health` said
/// "the disk is full" after space was freed, for as long as no such write came).
#[test]
fn check_room_finds_room_again_without_an_append_and_leaves_no_probe() {
    let fs = SimFs::new();
    let (wal, _plan, _flags, full) = open_on_a_disk_that_fills(&fs);
    assert!(wal.check_room().unwrap(), "never lacked room");
    std::fs::write(&full, b"").unwrap();
    let mut next = 1;
    while wal.append(&payload(next, 64)).is_ok() {
        next += 1;
        assert!(next < 1000, "the segment never filled");
    }
    assert!(wal.out_of_space().is_some());
    let listing = |wal: &Wal| {
        let mut names = fs.list_dir(wal.dir()).unwrap();
        names.sort();
        names
    };
    let before = listing(&wal);
    assert!(!wal.check_room().unwrap(), "still full");
    assert!(wal.out_of_space().is_some());
    assert_eq!(listing(&wal), before, "the probe is gone");

    std::fs::remove_file(&full).unwrap();
    assert!(wal.check_room().unwrap());
    assert_eq!(wal.out_of_space(), None);
    assert_eq!(listing(&wal), before, "the probe is gone");
    assert_eq!(wal.append(&payload(next, 64)).unwrap(), next);
}

/// A disk that stops answering (`FaultPlan::stall_while_exists`, as a hung device or a frozen
/// file system): an append waits, neither acknowledged nor failed, the log not poisoned and
/// reads answering meanwhile; once the disk answers again the append completes, durable, and
/// later appends follow. Likewise when only the fsyncs hang (`stall_syncs_while_exists`).
/// Meanwhile `WalStats::disk_wait_seconds` shows how long the disk has kept the append waiting. The stall is what kvd's end-to-end test of a leader whose disk hangs
/// (`failover::disk::a_leader_whose_disk_hangs_is_replaced_and_loses_no_acknowledged_write`)
/// builds on.
#[test]
fn an_append_on_a_stalled_disk_waits_and_completes_durable_once_the_disk_answers() {
    let fs = SimFs::new();
    let plan = FaultPlan::new();
    let flags = tempfile::tempdir().unwrap();
    let stalled = flags.path().join("stalled");
    plan.stall_while_exists(stalled.clone());
    let wal = Arc::new(open_faulty(&fs, &plan, SyncPolicy::Batch, 64 * 1024));
    for id in 1..=5 {
        assert_eq!(wal.append(&payload(id, 64)).unwrap(), id);
    }
    assert_eq!(plan.faults_fired(), 0);
    std::fs::write(&stalled, b"").unwrap();
    let appender = append_held_by_the_stall(&wal, &plan, 6, 64);
    assert_eq!(wal.durable_id(), 5);
    assert_eq!(wal.poisoned(), None);
    assert_eq!(wal.read(5).unwrap(), Some(payload(5, 64)));

    std::fs::remove_file(&stalled).unwrap();
    assert_eq!(appender.join().unwrap().unwrap(), 6);
    assert_eq!(wal.durable_id(), 6);
    assert_eq!(wal.append(&payload(7, 64)).unwrap(), 7);

    // Only the fsyncs hang (`stall_syncs_while_exists`): the append's record is written —
    // readable, as followers read it — but not durable until the fsync returns.
    let fsync_stalled = flags.path().join("fsync-stalled");
    plan.stall_syncs_while_exists(fsync_stalled.clone());
    std::fs::write(&fsync_stalled, b"").unwrap();
    let appender = append_held_by_the_stall(&wal, &plan, 8, 64);
    assert_eq!(wal.read(8).unwrap(), Some(payload(8, 64)));
    assert_eq!(wal.durable_id(), 7);
    std::fs::remove_file(&fsync_stalled).unwrap();
    assert_eq!(appender.join().unwrap().unwrap(), 8);
    assert_eq!(wal.durable_id(), 8);
    assert_eq!(
        wal.stats().disk_wait_seconds,
        0.0,
        "no wait once the disk answers"
    );
    drop(wal);
    fs.crash(CrashMode::DropUnsynced);
    let (wal, report) = open_sim(&fs, 64 * 1024, RecoveryMode::TolerateTornTail).unwrap();
    assert_eq!(collect(&wal, 1).len(), 8, "{report}");
}

/// An append that rolls the log to a new segment while the disk's fsyncs hang: the roll
/// waits (the new segment's file is fsynced before the old one is sealed), and
/// `WalStats::disk_wait_seconds` shows the wait as it does an append's own fsync — kvd's
/// leader goes silent on it (`DISK_HUNG_AFTER`) and is replaced. Before, a roll's file
/// creation, allocation, renames and directory fsyncs were not counted: a leader whose disk
/// hung just as a write filled the segment (or under any write larger than what was left of
/// it) kept its lease, and every write waited, for as long as the disk hung.
#[test]
fn an_append_that_rolls_the_segment_on_a_stalled_disk_shows_the_disks_wait() {
    // Fits a segment of its own, not what is left of one holding five records.
    const ROLLING_BYTES: usize = 64 * 1024 - 256;
    let fs = SimFs::new();
    let plan = FaultPlan::new();
    let flags = tempfile::tempdir().unwrap();
    let wal = Arc::new(open_faulty(&fs, &plan, SyncPolicy::Batch, 64 * 1024));
    for id in 1..=5 {
        assert_eq!(wal.append(&payload(id, 64)).unwrap(), id);
    }
    let segments = wal.segments().len();
    let fsync_stalled = flags.path().join("fsync-stalled");
    plan.stall_syncs_while_exists(fsync_stalled.clone());
    std::fs::write(&fsync_stalled, b"").unwrap();
    // More than the segment has left: the append rolls first.
    let appender = append_held_by_the_stall(&wal, &plan, 6, ROLLING_BYTES);
    std::fs::remove_file(&fsync_stalled).unwrap();
    assert_eq!(appender.join().unwrap().unwrap(), 6);
    assert_eq!(wal.segments().len(), segments + 1, "the append rolled");
    assert_eq!(wal.durable_id(), 6);
    assert_eq!(wal.stats().disk_wait_seconds, 0.0);
    assert_eq!(wal.read(6).unwrap(), Some(payload(6, ROLLING_BYTES)));
}

/// Appends record `id` (`bytes` long) on a thread of its own, waits until the stalled disk
/// holds it (a stall fault fired), and checks that it is still held 200 ms later, with
/// `WalStats::disk_wait_seconds` showing the wait; returns the appending thread.
fn append_held_by_the_stall(
    wal: &Arc<Wal>,
    plan: &FaultPlan,
    id: u64,
    bytes: usize,
) -> std::thread::JoinHandle<kv_wal::Result<u64>> {
    held_by_the_stall(wal, plan, &format!("append {id}"), move |wal| {
        wal.append(&payload(id, bytes))
    })
}

/// Runs `operation` on `wal` on a thread of its own, waits until the stalled disk holds it (a
/// stall fault fired), and checks that it is still held 200 ms later, with
/// `WalStats::disk_wait_seconds` showing the wait; returns the thread.
fn held_by_the_stall<T: Send + 'static>(
    wal: &Arc<Wal>,
    plan: &FaultPlan,
    what: &str,
    operation: impl FnOnce(&Wal) -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let fired = plan.faults_fired();
    let thread = {
        let wal = wal.clone();
        std::thread::spawn(move || operation(&wal))
    };
    let started = Instant::now();
    while plan.faults_fired() == fired {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what} never reached the stall"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !thread.is_finished(),
        "{what} returned while the disk did not answer"
    );
    let waited = wal.stats().disk_wait_seconds;
    assert!(
        waited >= 0.2,
        "the stats show the disk's wait for {what}: {waited} s"
    );
    thread
}

/// Appends on a disk that stopped answering queue without waiting for it, whoever's write it
/// holds: a write group leader's (on the thread that waits on its ticket) or the committer's.
/// kvd's async workers submit under the store's and the node's locks; before, the write ran
/// under the log's writer lock, so the next append — and every worker that reached the locks
/// after it — waited for the disk too, and a node whose disk hung answered nothing at all.
#[test]
fn appends_queue_while_the_disk_holds_another_write() {
    for committer_writes in [false, true] {
        let fs = SimFs::new();
        let plan = FaultPlan::new();
        let flags = tempfile::tempdir().unwrap();
        let wal = Arc::new(open_faulty(&fs, &plan, SyncPolicy::Batch, 64 * 1024));
        assert_eq!(wal.append(&payload(1, 64)).unwrap(), 1);
        let stalled = flags.path().join("stalled");
        plan.stall_while_exists(stalled.clone());
        std::fs::write(&stalled, b"").unwrap();
        let (held, unwaited_leader) = if committer_writes {
            // A leader not yet waited on: the next append hands the group's commit, and its
            // write, to the committer thread.
            let leading = wal.submit(&[payload(2, 64)]).unwrap();
            assert!(leading.leads_its_group());
            let held = append_held_by_the_stall(&wal, &plan, 3, 64);
            (held, Some(leading))
        } else {
            // The leader's write, on the thread that waits on its ticket.
            (append_held_by_the_stall(&wal, &plan, 2, 64), None)
        };
        let next = if committer_writes { 4 } else { 3 };
        let (sender, receiver) = std::sync::mpsc::channel();
        {
            let wal = wal.clone();
            std::thread::spawn(move || sender.send(wal.submit(&[payload(next, 64)])));
        }
        let queued = receiver
            .recv_timeout(Duration::from_secs(2))
            .unwrap_or_else(|_| {
                panic!("committer writes {committer_writes}: the append waited for the disk")
            })
            .unwrap();
        assert_eq!(queued.ids(), next..=next);
        assert_eq!(wal.next_id(), next + 1);
        assert!(wal.durable_id() < next);
        // What changes the file under the lock — here a roll — waits for the write under way
        // before it touches the file (`Shared::settle`).
        let fired = plan.faults_fired();
        let sealing = {
            let wal = wal.clone();
            std::thread::spawn(move || wal.seal_active(0))
        };
        std::thread::sleep(Duration::from_millis(200));
        assert!(!sealing.is_finished(), "the roll did not wait");
        assert_eq!(
            plan.faults_fired(),
            fired,
            "the roll touched the file meanwhile"
        );

        std::fs::remove_file(&stalled).unwrap();
        held.join().unwrap().unwrap();
        assert!(
            sealing.join().unwrap().unwrap(),
            "the roll sealed the segment"
        );
        assert_eq!(queued.wait().unwrap(), next..=next);
        if let Some(leading) = unwaited_leader {
            assert_eq!(leading.wait().unwrap(), 2..=2);
        }
        assert_eq!(wal.durable_id(), next);
        for id in 1..=next {
            assert_eq!(wal.read(id).unwrap(), Some(payload(id, 64)), "record {id}");
        }
        drop(wal);
        fs.crash(CrashMode::DropUnsynced);
        let (wal, report) = open_sim(&fs, 64 * 1024, RecoveryMode::TolerateTornTail).unwrap();
        assert_eq!(collect(&wal, 1).len() as u64, next, "{report}");
    }
}

/// A truncation (a follower dropping a diverged suffix) and a purge (compaction dropping old
/// segments) on a disk that stopped answering: each waits, and `WalStats::disk_wait_seconds`
/// shows the wait as it does an append's — the marker file, the cut, the removals and the
/// directory `fsync`s all wait on the disk. Before, neither counted: a follower whose disk
/// hung as it truncated, or a node whose disk hung under compaction, showed no wait, and
/// kvd's disk watch said nothing.
#[test]
fn a_truncation_or_a_purge_on_a_stalled_disk_shows_the_disks_wait() {
    let fs = SimFs::new();
    let plan = FaultPlan::new();
    let flags = tempfile::tempdir().unwrap();
    let wal = Arc::new(open_faulty(&fs, &plan, SyncPolicy::Batch, 1024));
    for id in 1..=40 {
        assert_eq!(wal.append(&payload(id, 64)).unwrap(), id);
    }
    let segments = wal.segments().len();
    assert!(segments >= 4, "{segments} segments");
    let stalled = flags.path().join("stalled");
    plan.stall_while_exists(stalled.clone());

    std::fs::write(&stalled, b"").unwrap();
    let truncation = held_by_the_stall(&wal, &plan, "the truncation", |wal| wal.truncate_after(30));
    std::fs::remove_file(&stalled).unwrap();
    truncation.join().unwrap().unwrap();
    assert_eq!(wal.last_id(), Some(30));
    assert_eq!(wal.stats().disk_wait_seconds, 0.0);

    std::fs::write(&stalled, b"").unwrap();
    let purge = held_by_the_stall(&wal, &plan, "the purge", |wal| wal.purge_before(20));
    std::fs::remove_file(&stalled).unwrap();
    assert!(
        !purge.join().unwrap().unwrap().is_empty(),
        "segments purged"
    );
    assert_eq!(wal.stats().disk_wait_seconds, 0.0);
    assert_eq!(wal.append(&payload(31, 64)).unwrap(), 31);
    assert_eq!(wal.read(25).unwrap(), Some(payload(25, 64)));
}

/// A power cut at any fsync of a roll (the new segment's file, the old one's shrink, its seal,
/// the directory), each failing and then torn in several ways: the log opens again, with every
/// acknowledged record. A roll once named the new segment before the old one's seal was
/// durable, so a torn seal sat in an earlier segment and open refused it (kv-store's
/// `snapshot_power_loss` found it with one seed; this sweeps the fsyncs of a roll).
#[test]
fn a_power_cut_at_any_fsync_of_a_roll_leaves_a_log_that_opens_with_everything_acknowledged() {
    let mut cases = 0;
    for fail_at in 1..=24u64 {
        for seed in 0..30u64 {
            let fs = SimFs::new();
            let plan = FaultPlan::new();
            let wal = open_faulty(&fs, &plan, SyncPolicy::Always, 400);
            // The next fsyncs from here: a few appends, then the roll around id 7 or so.
            plan.fail_sync_at(fail_at);
            let mut acknowledged = 0;
            for id in 1..=40 {
                match wal.append(&payload(id, 50)) {
                    Ok(got) => acknowledged = got,
                    Err(Error::Poisoned(_)) => break,
                    Err(other) => panic!("append {id}: {other}"),
                }
            }
            drop(wal);
            let mode = match seed % 4 {
                0 => CrashMode::DropUnsynced,
                1 => CrashMode::LoseUnsyncedPages { seed },
                _ => CrashMode::TearUnsynced { seed },
            };
            fs.crash(mode);
            let context = format!("fsync {fail_at} failed, then {mode:?}");
            let (wal, report) = open_sim(&fs, 400, RecoveryMode::TolerateTornTail)
                .unwrap_or_else(|error| panic!("{context}: reopen: {error}"));
            let records = collect(&wal, 1);
            assert!(
                records.len() as u64 >= acknowledged,
                "{context}: {} records, {acknowledged} acknowledged ({report})",
                records.len()
            );
            cases += 1;
        }
    }
    assert_eq!(cases, 720);
}

#[test]
fn failures_during_truncation_leave_old_or_new_log() {
    for fail_at in 1..=6 {
        let fs = SimFs::new();
        let plan = FaultPlan::new();
        let wal = open_faulty(&fs, &plan, SyncPolicy::Batch, 400);
        for id in 1..=30 {
            wal.append(&payload(id, 50)).unwrap();
        }
        plan.fail_sync_at(fail_at);
        let truncated = wal.truncate_after(12);
        drop(wal);
        fs.crash(CrashMode::DropUnsynced);
        let (wal, report) = open_sim(&fs, 400, RecoveryMode::Strict).unwrap();
        let ids: Vec<u64> = collect(&wal, 1).iter().map(|(id, _)| *id).collect();
        let old: Vec<u64> = (1..=30).collect();
        let new: Vec<u64> = (1..=12).collect();
        assert!(
            ids == old || ids == new,
            "fail at sync {fail_at} ({truncated:?}): ids {ids:?}; {report}"
        );
        if truncated.is_ok() {
            assert_eq!(ids, new, "a truncation that returned Ok must stick");
        }
    }
}

/// Holds the first `sync_data` after [`FsyncGate::arm`] (after the file system beneath ran it)
/// until another `sync_data` starts, or a deadline passes: so a second fsync from another path
/// can run while the failure of the first has not been handled yet.
#[derive(Debug, Default)]
struct FsyncGate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    armed: bool,
    held: bool,
    second_started: bool,
}

/// How long the held fsync waits for a second one before it returns anyway.
const GATE_DEADLINE: Duration = Duration::from_millis(500);

impl FsyncGate {
    fn arm(&self) {
        self.state.lock().unwrap().armed = true;
    }
    fn wait_until_held(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut state = self.state.lock().unwrap();
        while !state.held {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "the armed fsync never ran");
            state = self.changed.wait_timeout(state, left).unwrap().0;
        }
    }
    fn on_sync(&self) {
        let mut state = self.state.lock().unwrap();
        if state.armed {
            state.armed = false;
            state.held = true;
            self.changed.notify_all();
            let deadline = Instant::now() + GATE_DEADLINE;
            while !state.second_started {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                state = self.changed.wait_timeout(state, left).unwrap().0;
            }
        } else if state.held && !state.second_started {
            state.second_started = true;
            self.changed.notify_all();
        }
    }
}

impl SyncHook for FsyncGate {
    fn after_sync(&self) {
        self.on_sync();
    }
}

/// Issue 11 finding 2: the committer's fsync fails; before it has handled the failure, another
/// path (`sync`, `seal_active`, an `Always` append) fsyncs the same file, which a real kernel
/// answers with success for pages it dropped. The failed batch must never be acknowledged,
/// and neither may anything the second path would acknowledge (`sync`'s durable id, the
/// `Always` append).
#[test]
fn a_later_fsync_from_another_path_never_acknowledges_a_failed_batch() {
    type OtherPath = fn(&Wal) -> kv_wal::Result<()>;
    // (name, the path, whether it acknowledges anything)
    let paths: [(&str, OtherPath, bool); 3] = [
        ("sync", |wal| wal.sync().map(drop), true),
        ("seal_active", |wal| wal.seal_active(0).map(drop), false),
        (
            "append under Always",
            |wal| {
                wal.append_with(&payload(7, 64), SyncPolicy::Always)
                    .map(drop)
            },
            true,
        ),
    ];
    for (name, other_path, acknowledges) in paths {
        let fs = SimFs::new();
        let plan = FaultPlan::new();
        let gate = Arc::new(FsyncGate::default());
        let options = WalOptions {
            segment_bytes_max: 1 << 20,
            sync_policy: SyncPolicy::Batch,
            file_system: Arc::new(SyncHookFs::new(
                Arc::new(FaultyFs::new(Arc::new(fs.clone()), plan.clone())),
                gate.clone(),
            )),
            ..WalOptions::default()
        };
        let wal = Arc::new(Wal::open(sim_dir(), options).expect("open").0);
        for id in 1..=5 {
            assert_eq!(wal.append(&payload(id, 64)).unwrap(), id);
        }
        plan.fail_sync_at(1);
        gate.arm();
        let appender = {
            let wal = wal.clone();
            std::thread::spawn(move || wal.append(&payload(6, 64)))
        };
        gate.wait_until_held();
        let other = {
            let wal = wal.clone();
            std::thread::spawn(move || other_path(&wal))
        };
        let appended = appender.join().unwrap();
        let other = other.join().unwrap();
        assert_eq!(plan.faults_fired(), 1, "{name}: the fault fired");
        assert!(
            matches!(appended, Err(Error::Poisoned(_))),
            "{name}: the batch whose fsync failed was acknowledged: {appended:?}"
        );
        if acknowledges {
            assert!(
                matches!(other, Err(Error::Poisoned(_))),
                "{name}: acknowledged after a failed fsync: {other:?}"
            );
        }
        assert!(wal.poisoned().is_some(), "{name}");
        assert!(
            wal.durable_id() < 6,
            "{name}: durable id {}",
            wal.durable_id()
        );
    }
}

/// A plan that counts only some paths (`FaultPlan::count_only`): the writes and syncs of
/// other files — and the syncs of other directories — neither take the fault's number nor
/// fail, so a fault meant for the log lands on the log however the program's other files'
/// syncs interleave with it (kvd's `node.meta` shares the log's file system; a fault counted
/// over both once fired on `node.meta`, and the log a test waited on never failed).
#[test]
fn a_plan_counting_only_some_paths_leaves_the_others_uncounted() {
    let dir = tempfile::tempdir().unwrap();
    let plan = FaultPlan::new();
    plan.count_only(|path| path.extension().is_some_and(|extension| extension == "log"));
    let fs = FaultyFs::new(Arc::new(kv_wal::fs::StdFs), plan.clone());
    let log = fs.create_new(&dir.path().join("a.log")).unwrap();
    let other = fs.create_new(&dir.path().join("node.meta")).unwrap();
    plan.fail_sync_at(2);
    plan.fail_write_at(2);
    log.write_all_at(b"one", 0).unwrap();
    log.sync_data().unwrap();
    for _ in 0..3 {
        other.write_all_at(b"meta", 0).unwrap();
        other.sync_data().unwrap();
        fs.sync_dir(dir.path()).unwrap();
    }
    assert_eq!(
        (plan.writes(), plan.syncs(), plan.faults_fired()),
        (1, 1, 0)
    );
    assert!(
        log.write_all_at(b"two", 3).is_err(),
        "the log's second write"
    );
    assert!(log.sync_data().is_err(), "the log's second sync");
    assert_eq!(plan.faults_fired(), 2);
}

/// A truncation on a full disk — a follower cut back by a new leader while its disk is full:
/// there is no room for the truncation's marker, so nothing is cut and the call says
/// `OutOfSpace`; the log is not poisoned, keeps every record, and makes the cut once there is
/// room (kvd's follower asks again every second). Before, the failed marker poisoned the log,
/// and the follower stopped replicating until restarted. (A cut whose marker fits but whose
/// preallocated segment cannot be allocated again keeps the segment as long as its data, as
/// open does, rather than poison the log.)
#[test]
fn a_truncation_on_a_full_disk_does_not_poison_the_log() {
    let fs = SimFs::new();
    let (wal, _plan, _flags, full) = open_on_a_disk_that_fills(&fs);
    for id in 1..=20 {
        assert_eq!(wal.append(&payload(id, 64)).unwrap(), id);
    }
    std::fs::write(&full, b"").unwrap();
    match wal.truncate_after(15) {
        Err(Error::OutOfSpace(reason)) => assert!(reason.contains("nothing was cut"), "{reason}"),
        other => panic!("a cut on a full disk: {other:?}"),
    }
    assert_eq!(wal.poisoned(), None);
    assert_eq!(wal.next_id(), 21);
    assert_eq!(wal.read(20).unwrap(), Some(payload(20, 64)));
    std::fs::remove_file(&full).unwrap();
    wal.truncate_after(15).expect("the cut, once there is room");
    assert_eq!(wal.next_id(), 16);
    for id in 16..=60 {
        assert_eq!(wal.append(&payload(id + 1000, 64)).unwrap(), id);
    }
    drop(wal);
    fs.crash(CrashMode::DropUnsynced);
    let (wal, report) = open_sim(&fs, 4096, RecoveryMode::TolerateTornTail).unwrap();
    assert_eq!(wal.last_id(), Some(60), "{report}");
    assert_eq!(wal.read(15).unwrap(), Some(payload(15, 64)));
    assert_eq!(wal.read(16).unwrap(), Some(payload(1016, 64)));
}

/// A disk that fills in the middle of a roll — after the new segment's file was made, before
/// the old one's seal is written (the seal grows the old file, shrunk to its data): the roll
/// fails with `OutOfSpace`, the log is not poisoned, and once there is room the next append
/// rolls and everything appended is there after a power cut. Before, the failed seal poisoned
/// the log: a disk-fault nemesis run (seed 1796677037292142524) left a follower that stopped
/// replicating until restarted.
#[test]
fn a_disk_that_fills_during_a_roll_does_not_poison_the_log() {
    let fs = SimFs::new();
    let plan = FaultPlan::new();
    let flags = tempfile::tempdir().unwrap();
    let (full, stalled) = (flags.path().join("full"), flags.path().join("stalled"));
    plan.full_while_exists(full.clone());
    plan.stall_syncs_while_exists(stalled.clone());
    // `never`: the only syncs are a roll's, and the first of them (the new file's) stalls.
    let wal = Arc::new(open_faulty(&fs, &plan, SyncPolicy::Never, 4096));
    std::fs::write(&stalled, b"").unwrap();
    let appender = {
        let wal = wal.clone();
        std::thread::spawn(move || {
            let mut appended = 0;
            for id in 1..=1000 {
                match wal.append(&payload(id, 64)) {
                    Ok(got) => appended = got,
                    Err(error) => return (appended, Some(error)),
                }
            }
            (appended, None)
        })
    };
    let started = Instant::now();
    while plan.faults_fired() == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no roll stalled"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // The new segment's file is made and waits on its sync: the disk fills, then answers.
    std::fs::write(&full, b"").unwrap();
    std::fs::remove_file(&stalled).unwrap();
    let (appended, error) = appender.join().unwrap();
    match error {
        Some(Error::OutOfSpace(reason)) => println!("after {appended}: {reason}"),
        other => panic!("after {appended}: {other:?}"),
    }
    assert_eq!(wal.poisoned(), None);
    assert_eq!(wal.next_id(), appended + 1);
    std::fs::remove_file(&full).unwrap();
    let last = appended + 100;
    for id in appended + 1..=last {
        assert_eq!(wal.append(&payload(id, 64)).unwrap(), id);
    }
    wal.sync().unwrap();
    drop(wal);
    fs.crash(CrashMode::DropUnsynced);
    let (wal, report) = open_sim(&fs, 4096, RecoveryMode::TolerateTornTail).unwrap();
    assert_eq!(collect(&wal, 1).len() as u64, last, "{report}");
}

/// `close` on a log whose background `fsync` failed after appends returned (`interval`) says
/// so: `Error::Poisoned`, since those records may be gone after a restart. Before, it returned
/// `Ok(())` and no call ever told the caller (found by a new user embedding kv-wal).
#[test]
fn close_fails_when_a_background_fsync_failed_after_the_appends_returned() {
    let fs = SimFs::new();
    let plan = FaultPlan::new();
    let wal = open_faulty(
        &fs,
        &plan,
        SyncPolicy::Interval(Duration::from_millis(20)),
        1 << 20,
    );
    assert_eq!(wal.append(&payload(1, 64)).unwrap(), 1);
    wal.sync().unwrap();
    plan.fail_sync_at(1);
    for id in 2..=6 {
        assert_eq!(wal.append(&payload(id, 64)).unwrap(), id);
    }
    let started = Instant::now();
    while wal.poisoned().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the interval fsync never ran"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(wal.durable_id(), 1);
    let closed = wal.close();
    assert!(matches!(closed, Err(Error::Poisoned(_))), "{closed:?}");
    // Under `batch` the append the failure stopped was refused: closing says nothing more.
    let fs = SimFs::new();
    let plan = FaultPlan::new();
    let wal = open_faulty(&fs, &plan, SyncPolicy::Batch, 1 << 20);
    assert_eq!(wal.append(&payload(1, 64)).unwrap(), 1);
    plan.fail_sync_at(1);
    assert!(matches!(
        wal.append(&payload(2, 64)),
        Err(Error::Poisoned(_))
    ));
    assert!(wal.close().is_ok());
}

/// A batch larger than a segment that finds no room for its next segment halfway has part of
/// its records in the log, so it poisons the log — and says so: how many went in, that the
/// log takes no writes until reopened. Before, the poison repeated the out-of-space text
/// ("the write was not appended, and writes are taken again once there is room"), both untrue
/// (found by a new user embedding kv-wal).
#[test]
fn a_batch_split_by_a_full_disk_says_what_went_in() {
    let fs = SimFs::new();
    let (wal, _plan, _flags, full) = open_on_a_disk_that_fills(&fs);
    // The batch starts in the empty (preallocated) active segment and fills it.
    std::fs::write(&full, b"").unwrap();
    let batch: Vec<Vec<u8>> = (1..=80).map(|id| payload(id, 100)).collect();
    let failed = wal.append_batch(&batch);
    let Err(Error::Poisoned(reason)) = failed else {
        panic!("{failed:?}");
    };
    assert!(
        reason.contains("record(s) are in the log") && reason.contains("until it is opened again"),
        "{reason}"
    );
    assert!(!reason.contains("the write was not appended"), "{reason}");
}
