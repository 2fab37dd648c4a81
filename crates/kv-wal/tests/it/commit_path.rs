//! Who writes and fsyncs an append: an append that finds the log idle commits itself (the
//! write group's leader), appends that find a commit in flight queue for the committer and
//! return a pending ticket at once, a queued `Always` append gets an fsync of its own, and a
//! failed fsync acknowledges nothing queued behind it (issue 11 finding 2).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use kv_wal::fs::{FaultPlan, FaultyFs, FileSystem};
use kv_wal::sim::{CrashMode, SimFs};
use kv_wal::{Error, RecoveryMode, SyncPolicy, Wal, WalOptions};

use crate::support::{collect, open_sim, payload, sim_dir, SyncHook, SyncHookFs};

const DEADLINE: Duration = Duration::from_secs(10);

fn open_with(fs: Arc<dyn FileSystem>, policy: SyncPolicy, inline: bool) -> Wal {
    let options = WalOptions {
        segment_bytes_max: 1 << 20,
        sync_policy: policy,
        inline_commit_when_idle: inline,
        file_system: fs,
        ..WalOptions::default()
    };
    Wal::open(sim_dir(), options).expect("open").0
}

#[test]
fn an_append_on_an_idle_log_commits_itself() {
    for policy in [SyncPolicy::Batch, SyncPolicy::Always] {
        let fs = SimFs::new();
        let wal = open_with(Arc::new(fs.clone()), policy, true);
        let before = wal.stats();
        for id in 1..=20 {
            assert_eq!(wal.append(&payload(id, 64)).unwrap(), id);
            assert_eq!(wal.durable_id(), id, "{policy}: durable on return");
        }
        let stats = wal.stats();
        assert_eq!(stats.inline_commits - before.inline_commits, 20, "{policy}");
        assert_eq!(stats.fsyncs - before.fsyncs, 20, "{policy}: one fsync each");
        drop(wal);
        fs.crash(CrashMode::DropUnsynced);
        let (wal, _) = open_sim(&fs, 1 << 20, RecoveryMode::Strict).unwrap();
        assert_eq!(collect(&wal, 1).len(), 20, "{policy}");
    }
}

/// `commit_now` runs a leading ticket's fsync on the calling thread — the blocking part an
/// async caller moves off its runtime's workers — and the ticket then resolves at its first
/// poll, without blocking. A ticket that does not lead (queued behind a commit in flight) is
/// left to the committer.
#[test]
fn commit_now_runs_a_leading_tickets_fsync_on_the_calling_thread() {
    let fs = SimFs::new();
    let wal = open_with(Arc::new(fs.clone()), SyncPolicy::Batch, true);
    let before = wal.stats();
    let mut ticket = wal.submit(&[payload(1, 64)]).expect("submit");
    assert!(ticket.leads_its_group());
    assert_eq!(wal.durable_id(), 0, "written, not yet synced");
    ticket.commit_now();
    assert!(!ticket.leads_its_group());
    assert_eq!(wal.durable_id(), 1, "synced by commit_now");
    let stats = wal.stats();
    assert_eq!(stats.inline_commits - before.inline_commits, 1);
    assert_eq!(stats.fsyncs - before.fsyncs, 1);
    let mut context = Context::from_waker(Waker::noop());
    assert_eq!(
        Pin::new(&mut ticket).poll(&mut context).map(|ids| ids.ok()),
        std::task::Poll::Ready(Some(1..=1)),
        "resolved at its first poll"
    );
    assert_eq!(wal.stats().fsyncs - before.fsyncs, 1, "no second fsync");
    drop(wal);
    fs.crash(CrashMode::DropUnsynced);
    let (wal, _) = open_sim(&fs, 1 << 20, RecoveryMode::Strict).unwrap();
    assert_eq!(collect(&wal, 1).len(), 1);
}

#[test]
fn without_inline_commits_the_committer_does_every_commit() {
    let fs = SimFs::new();
    let wal = open_with(Arc::new(fs.clone()), SyncPolicy::Batch, false);
    for id in 1..=20 {
        assert_eq!(wal.append(&payload(id, 64)).unwrap(), id);
    }
    let stats = wal.stats();
    assert_eq!(stats.inline_commits, 0);
    assert_eq!(stats.fsync_batch_records_total, 20);
}

/// Concurrent `Always` appenders: every append call is durable when it returns and gets an
/// fsync of its own, whether it committed itself or queued for the committer.
#[test]
fn always_appends_never_share_an_fsync_under_contention() {
    let fs = SimFs::new();
    let wal = Arc::new(open_with(Arc::new(fs.clone()), SyncPolicy::Always, true));
    let threads: Vec<_> = (0..8)
        .map(|thread| {
            let wal = wal.clone();
            std::thread::spawn(move || {
                for index in 0..25 {
                    let id = wal.append(&payload(thread * 100 + index, 64)).unwrap();
                    assert!(wal.durable_id() >= id, "not durable on return");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let stats = wal.stats();
    assert_eq!(stats.fsync_batch_records_total, 200, "{stats:?}");
    assert_eq!(
        stats.fsync_batch_counts[0], 200,
        "every append fsync carried one record: {stats:?}"
    );
    assert_eq!(stats.fsync_batch_counts.iter().sum::<u64>(), 200);
}

/// Batch and Always appenders at once, then a power cut: everything acknowledged is there.
#[test]
fn mixed_policies_lose_nothing_acknowledged() {
    let fs = SimFs::new();
    let wal = Arc::new(open_with(Arc::new(fs.clone()), SyncPolicy::Batch, true));
    let threads: Vec<_> = (0..6u64)
        .map(|thread| {
            let wal = wal.clone();
            std::thread::spawn(move || {
                let policy = if thread % 2 == 0 {
                    SyncPolicy::Always
                } else {
                    SyncPolicy::Batch
                };
                (0..30)
                    .map(|index| {
                        let bytes = payload(thread * 1000 + index, 80);
                        (wal.append_with(&bytes, policy).unwrap(), bytes)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let acknowledged: Vec<(u64, Vec<u8>)> = threads
        .into_iter()
        .flat_map(|thread| thread.join().unwrap())
        .collect();
    drop(wal);
    fs.crash(CrashMode::DropUnsynced);
    let (wal, report) = open_sim(&fs, 1 << 20, RecoveryMode::TolerateTornTail).unwrap();
    for (id, bytes) in acknowledged {
        assert_eq!(wal.read(id).unwrap(), Some(bytes), "record {id}: {report}");
    }
}

/// While a leader's fsync is in flight, another append queues and `submit` returns at once
/// with a ticket that is still pending (it does not block behind the fsync); the ticket
/// resolves as a future once the committer has run.
#[test]
fn an_append_behind_a_commit_in_flight_returns_a_pending_ticket() {
    let (fs, hold) = held_fs(Arc::new(SimFs::new()));
    let wal = Arc::new(open_with(fs, SyncPolicy::Batch, true));
    hold.arm();
    let leader = {
        let wal = wal.clone();
        std::thread::spawn(move || wal.append(b"leader"))
    };
    hold.wait_until_held();
    let started = Instant::now();
    let mut ticket = wal.submit(&[b"queued"]).unwrap();
    assert!(started.elapsed() < DEADLINE);
    let waker = Waker::noop();
    let mut context = Context::from_waker(waker);
    assert!(
        Pin::new(&mut ticket).poll(&mut context).is_pending(),
        "the queued append is not durable before the fsync in flight ends"
    );
    hold.release();
    assert_eq!(leader.join().unwrap().unwrap(), 1);
    assert_eq!(ticket.wait().unwrap(), 2..=2);
    assert_eq!(wal.durable_id(), 2);
}

/// A leader's ticket dropped before anyone waited on it hands its commit to the committer:
/// its records and those queued behind it become durable.
#[test]
fn a_leading_ticket_dropped_unwaited_leaves_the_commit_to_the_committer() {
    let wal = open_with(Arc::new(SimFs::new()), SyncPolicy::Batch, true);
    let leading = wal.submit(&[b"first"]).unwrap();
    let queued = wal.submit(&[b"second"]).unwrap();
    drop(leading);
    assert_eq!(queued.wait().unwrap(), 2..=2);
    assert_eq!(wal.durable_id(), 2);
    assert_eq!(wal.stats().inline_commits, 0);
}

/// The leader writes and fsyncs when its ticket is waited on, not inside `submit`: a caller
/// can queue under its own lock and wait after releasing it, so a disk that hangs holds the
/// waiting thread and never the caller's lock (kvd's store and node take theirs around the
/// submit). `write_now` writes the record sooner — readable, as a follower's fetch reads it —
/// without the fsync.
#[test]
fn a_leader_writes_and_commits_when_waited_on_not_in_submit() {
    let wal = open_with(Arc::new(SimFs::new()), SyncPolicy::Batch, true);
    let mut leading = wal.submit(&[b"first"]).unwrap();
    assert_eq!(wal.durable_id(), 0, "submit itself does not fsync");
    assert_eq!(wal.last_id(), None, "nor write");
    assert_eq!(wal.next_id(), 2);
    leading.write_now();
    assert_eq!(wal.last_id(), Some(1), "written");
    assert_eq!(wal.read(1).unwrap(), Some(b"first".to_vec()));
    assert_eq!(wal.durable_id(), 0, "not synced");
    leading.write_now();
    assert_eq!(wal.stats().writes, 1, "written once");
    assert_eq!(leading.wait().unwrap(), 1..=1);
    assert_eq!(wal.durable_id(), 1);
    assert_eq!(wal.stats().inline_commits, 1);

    // Without `write_now`, the wait writes and syncs.
    let leading = wal.submit(&[b"second"]).unwrap();
    assert_eq!(wal.last_id(), Some(1));
    assert_eq!(leading.wait().unwrap(), 2..=2);
    assert_eq!(wal.read(2).unwrap(), Some(b"second".to_vec()));
    assert_eq!(wal.durable_id(), 2);
}

/// Appends queued behind a leader that has not begun its commit are not held up by it: the
/// committer takes the group's commit over. A caller that waits on a later ticket before its
/// leading one (or a slow task) cannot stall the log — without the take-over this waits
/// forever. The leader's ticket then resolves without an fsync of its own.
#[test]
fn appends_queued_behind_a_leader_not_yet_waited_on_are_committed_by_the_committer() {
    for policy in [SyncPolicy::Batch, SyncPolicy::Always] {
        let wal = Arc::new(open_with(Arc::new(SimFs::new()), policy, true));
        let leading = wal.submit(&[b"first"]).unwrap();
        let queued = wal.submit(&[b"second"]).unwrap();
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || sender.send(queued.wait()));
        let waited = receiver.recv_timeout(DEADLINE);
        let waited = waited.expect("the queued append waited behind an idle leader");
        assert_eq!(waited.unwrap(), 2..=2, "{policy}");
        assert_eq!(leading.wait().unwrap(), 1..=1);
        assert_eq!(wal.durable_id(), 2, "{policy}");
        assert_eq!(
            wal.stats().inline_commits,
            0,
            "{policy}: the leader took it back"
        );
    }
}

/// A log closed while a leader's ticket is unwaited: close makes its records durable and
/// returns; the ticket then resolves.
#[test]
fn closing_with_a_leading_ticket_outstanding_makes_it_durable() {
    let fs = SimFs::new();
    let wal = open_with(Arc::new(fs.clone()), SyncPolicy::Batch, true);
    let leading = wal.submit(&[b"first"]).unwrap();
    wal.close().unwrap();
    assert_eq!(leading.wait().unwrap(), 1..=1);
    drop(wal);
    fs.crash(CrashMode::DropUnsynced);
    let (wal, _) = open_sim(&fs, 1 << 20, RecoveryMode::Strict).unwrap();
    assert_eq!(collect(&wal, 1), vec![(1, b"first".to_vec())]);
}

/// Issue 11 finding 2 on the leader's path: the leader's fsync fails while another append is
/// queued behind it. Neither is acknowledged, the committer never fsyncs after the failure,
/// and nothing at or after the failed range becomes durable.
#[test]
fn a_failed_leader_fsync_acknowledges_nothing_queued_behind_it() {
    for queued_policy in [SyncPolicy::Batch, SyncPolicy::Always] {
        let sim = SimFs::new();
        let plan = FaultPlan::new();
        let faulty: Arc<dyn FileSystem> =
            Arc::new(FaultyFs::new(Arc::new(sim.clone()), plan.clone()));
        let (fs, hold) = held_fs(faulty);
        let wal = Arc::new(open_with(fs, SyncPolicy::Batch, true));
        for id in 1..=5 {
            assert_eq!(wal.append(&payload(id, 64)).unwrap(), id);
        }
        plan.fail_sync_at(1);
        hold.arm();
        let leader = {
            let wal = wal.clone();
            std::thread::spawn(move || wal.append(&payload(6, 64)))
        };
        hold.wait_until_held();
        let queued = {
            let wal = wal.clone();
            std::thread::spawn(move || wal.append_with(&payload(7, 64), queued_policy))
        };
        // The queued append is in the log's queue before the fsync fails.
        let deadline = Instant::now() + DEADLINE;
        while wal.next_id() < 8 {
            assert!(Instant::now() < deadline, "the second append never queued");
            std::thread::yield_now();
        }
        let syncs = plan.syncs();
        hold.release();
        let led = leader.join().unwrap();
        let queued = queued.join().unwrap();
        assert!(matches!(led, Err(Error::Poisoned(_))), "{led:?}");
        assert!(
            matches!(queued, Err(Error::Poisoned(_))),
            "{queued_policy}: acknowledged behind a failed fsync: {queued:?}"
        );
        assert_eq!(plan.faults_fired(), 1);
        assert_eq!(
            plan.syncs(),
            syncs + 1,
            "{queued_policy}: an fsync ran after the failure"
        );
        assert!(wal.durable_id() < 6, "durable id {}", wal.durable_id());
    }
}

/// A file system whose next `sync_data`, once armed, waits until released.
fn held_fs(inner: Arc<dyn FileSystem>) -> (Arc<dyn FileSystem>, Arc<Hold>) {
    let hold = Arc::new(Hold::default());
    (Arc::new(SyncHookFs::new(inner, hold.clone())), hold)
}

#[derive(Debug, Default)]
struct Hold {
    state: Mutex<HoldState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct HoldState {
    armed: bool,
    held: bool,
    released: bool,
}

impl Hold {
    fn arm(&self) {
        self.state.lock().unwrap().armed = true;
    }
    fn release(&self) {
        self.state.lock().unwrap().released = true;
        self.changed.notify_all();
    }
    fn wait_until_held(&self) {
        let deadline = Instant::now() + DEADLINE;
        let mut state = self.state.lock().unwrap();
        while !state.held {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "the armed fsync never ran");
            state = self.changed.wait_timeout(state, left).unwrap().0;
        }
    }
    fn on_sync(&self) {
        let mut state = self.state.lock().unwrap();
        if !state.armed {
            return;
        }
        state.armed = false;
        state.held = true;
        self.changed.notify_all();
        let deadline = Instant::now() + DEADLINE;
        while !state.released {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "the held fsync was never released");
            state = self.changed.wait_timeout(state, left).unwrap().0;
        }
    }
}

impl SyncHook for Hold {
    fn before_sync(&self) {
        self.on_sync();
    }
}
