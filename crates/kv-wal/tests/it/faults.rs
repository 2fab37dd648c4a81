//! Failed writes and fsyncs: the log poisons itself, refuses writes with a clear error, never
//! retries an fsync, keeps serving reads, and loses nothing that was acknowledged.

use std::sync::Arc;

use kv_wal::fs::{FaultPlan, FaultyFs};
use kv_wal::sim::{CrashMode, SimFs};
use kv_wal::{Error, RecoveryMode, SyncPolicy, Wal, WalOptions};

use crate::support::{collect, open_sim, payload, sim_dir};

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
