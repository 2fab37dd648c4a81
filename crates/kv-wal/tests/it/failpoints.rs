//! Crashes at the named fail points, in a child process: the test re-runs itself with
//! `KV_WAL_FAILPOINT_CHILD` set, the child configures a fail point to `abort` at its Nth hit
//! and drives the log (printing every acknowledged id), and the parent reopens what the dead
//! child left and checks it. The fail point registry is process-global, so no fail point is
//! ever configured in the test process itself.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};

use kv_wal::failpoint;
use kv_wal::{RecoveryMode, SyncPolicy, Wal, WalOptions};

use crate::support::payload;

/// Set in the child: which scenario to run.
const CHILD_ENV: &str = "KV_WAL_FAILPOINT_CHILD";
/// Set in the child: the log directory.
const DIR_ENV: &str = "KV_WAL_FAILPOINT_DIR";
/// Set in the child: the fail point spec to configure.
const SPEC_ENV: &str = "KV_WAL_FAILPOINT_SPEC";
/// Set in the child: the sync policy.
const POLICY_ENV: &str = "KV_WAL_FAILPOINT_POLICY";
/// Set in the truncation child: truncate after this id.
const TRUNCATE_AFTER_ENV: &str = "KV_WAL_FAILPOINT_TRUNCATE_AFTER";

const SEGMENT_BYTES_MAX: u64 = 1024;
const RECORD_BYTES: usize = 60;
/// Records a child appends before giving up on its fail point firing.
const CHILD_RECORDS_MAX: u64 = 400;
const SIGABRT: i32 = 6;

fn options(policy: SyncPolicy) -> WalOptions {
    WalOptions {
        segment_bytes_max: SEGMENT_BYTES_MAX,
        sync_policy: policy,
        recovery_mode: RecoveryMode::TolerateTornTail,
        ..WalOptions::default()
    }
}

/// What a child run left behind.
struct ChildRun {
    acknowledged_ids: Vec<u64>,
    stderr: String,
}

/// Re-runs test `test_name` of this binary as a child in `scenario`; asserts it died of the
/// fail point's abort at `hit`.
fn run_child(
    test_name: &str,
    scenario: &str,
    dir: &Path,
    point: &str,
    hit: u64,
    policy: SyncPolicy,
    extra_env: &[(&str, String)],
) -> ChildRun {
    let spec = format!("{point}=abort@{hit}");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([test_name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, scenario)
        .env(DIR_ENV, dir)
        .env(SPEC_ENV, &spec)
        .env(POLICY_ENV, policy.to_string())
        .envs(extra_env.iter().map(|(name, value)| (name, value)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let acknowledged_ids: Vec<u64> = stdout
        .lines()
        .map_while(Result::ok)
        // libtest may print its "test … " prefix on the same line as the first id.
        .filter_map(|line| line.rsplit_once("ACKED ")?.1.trim().parse().ok())
        .collect();
    let output = child.wait_with_output().expect("child exit");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(
        output.status.signal(),
        Some(SIGABRT),
        "{spec} ({policy}): the child should abort at the fail point, got {:?}\n{stderr}",
        output.status
    );
    let announcement = format!("fail point {point}: abort at hit {hit}");
    assert!(stderr.contains(&announcement), "{spec}: {stderr}");
    ChildRun {
        acknowledged_ids,
        stderr,
    }
}

/// Child side of the append scenario: append records until the fail point kills us.
fn append_until_killed() {
    let dir = std::env::var(DIR_ENV).expect("dir");
    let policy: SyncPolicy = std::env::var(POLICY_ENV)
        .expect("policy")
        .parse()
        .expect("policy");
    let (wal, _) = Wal::open(&dir, options(policy)).expect("child open");
    failpoint::configure(&std::env::var(SPEC_ENV).expect("spec")).expect("spec");
    let mut stdout = std::io::stdout().lock();
    for _ in 0..CHILD_RECORDS_MAX {
        let id = wal.next_id();
        let acknowledged = wal.append(&payload(id, RECORD_BYTES)).expect("append");
        assert_eq!(acknowledged, id);
        writeln!(stdout, "ACKED {id}").expect("stdout");
        stdout.flush().expect("stdout");
    }
}

/// Reopens `dir` and checks it holds exactly the records `1..=last` with their payloads, every
/// acknowledged id among them; returns the last id.
fn check_log(dir: &Path, acknowledged_max: u64, context: &str) -> u64 {
    let (wal, report) = Wal::open(dir, options(SyncPolicy::Batch)).expect("reopen");
    let last_id = wal.last_id().unwrap_or(0);
    assert!(
        last_id >= acknowledged_max,
        "{context}: acknowledged up to {acknowledged_max}, recovered up to {last_id} ({report})"
    );
    assert_eq!(wal.next_id(), last_id + 1, "{context}: {report}");
    let mut expected_id = 1;
    for record in wal.iter_from(1) {
        let record = record.expect("readable");
        assert_eq!(record.id, expected_id, "{context}: ids are contiguous");
        assert_eq!(
            record.payload(),
            payload(record.id, RECORD_BYTES).as_slice(),
            "{context}: payload of {}",
            record.id
        );
        expected_id += 1;
    }
    assert_eq!(expected_id - 1, last_id, "{context}: every record readable");
    last_id
}

/// Every append-path fail point, three hit numbers each, both durable sync policies: the log
/// comes back with every acknowledged record, contiguous ids and the right payloads.
#[test]
fn a_crash_at_each_append_fail_point_loses_no_acknowledged_record() {
    const TEST_NAME: &str =
        "failpoints::a_crash_at_each_append_fail_point_loses_no_acknowledged_record";
    if std::env::var(CHILD_ENV).is_ok() {
        return append_until_killed();
    }
    let points = [
        failpoint::WAL_BEFORE_APPEND,
        failpoint::WAL_AFTER_WRITE_BEFORE_FSYNC,
        failpoint::WAL_AFTER_FSYNC_BEFORE_ACK,
        failpoint::WAL_ROLL_BEFORE_DIR_FSYNC,
    ];
    let mut crashes = 0;
    for policy in [SyncPolicy::Batch, SyncPolicy::Always] {
        for point in points {
            // One directory per point and policy, crashed three times over.
            let temp = tempfile::tempdir().expect("temp dir");
            let dir = temp.path().join("wal");
            let mut acknowledged_max = 0;
            for hit in [1, 4, 9] {
                let context = format!("{point}=abort@{hit} ({policy})");
                let run = run_child(TEST_NAME, "append", &dir, point, hit, policy, &[]);
                if let Some(&last) = run.acknowledged_ids.last() {
                    acknowledged_max = last;
                }
                let last_id = check_log(&dir, acknowledged_max, &context);
                assert!(run.stderr.contains("abort at hit"), "{context}");
                crashes += 1;
                println!(
                    "{context}: {} acknowledged, recovered through id {last_id}",
                    run.acknowledged_ids.len()
                );
            }
        }
    }
    assert_eq!(crashes, 24);
}

/// Child side of the truncation scenario: fill a few segments, then truncate into the kill.
fn truncate_until_killed() {
    let dir = std::env::var(DIR_ENV).expect("dir");
    let after_id: u64 = std::env::var(TRUNCATE_AFTER_ENV)
        .expect("after id")
        .parse()
        .expect("after id");
    let (wal, _) = Wal::open(&dir, options(SyncPolicy::Batch)).expect("child open");
    for _ in 0..TRUNCATION_RECORDS {
        let id = wal.next_id();
        wal.append(&payload(id, RECORD_BYTES)).expect("append");
    }
    failpoint::configure(&std::env::var(SPEC_ENV).expect("spec")).expect("spec");
    wal.truncate_after(after_id).expect("truncate");
    panic!("the fail point should have aborted the truncation");
}

const TRUNCATION_RECORDS: u64 = 60;

/// A crash between removing the later segments and cutting the last kept one: open finds the
/// truncation marker and finishes the job, leaving exactly the records up to the cut.
#[test]
fn a_crash_during_truncation_is_completed_at_open() {
    const TEST_NAME: &str = "failpoints::a_crash_during_truncation_is_completed_at_open";
    if std::env::var(CHILD_ENV).is_ok() {
        return truncate_until_killed();
    }
    // Mid-segment after dropping later segments, at the first record, and everything.
    for after_id in [37, 1, 0] {
        let temp = tempfile::tempdir().expect("temp dir");
        let dir = temp.path().join("wal");
        let context = format!("truncate after {after_id}");
        run_child(
            TEST_NAME,
            "truncate",
            &dir,
            failpoint::WAL_TRUNCATE_BEFORE_CUT,
            1,
            SyncPolicy::Batch,
            &[(TRUNCATE_AFTER_ENV, after_id.to_string())],
        );
        let (wal, report) = Wal::open(&dir, options(SyncPolicy::Batch)).expect("reopen");
        assert_eq!(
            report.completed_truncation,
            Some(after_id),
            "{context}: {report}"
        );
        assert_eq!(
            wal.last_id(),
            (after_id > 0).then_some(after_id),
            "{context}"
        );
        assert_eq!(wal.next_id(), after_id + 1, "{context}");
        let ids: Vec<u64> = wal
            .iter_from(1)
            .map(|record| {
                let record = record.expect("readable");
                assert_eq!(
                    record.payload(),
                    payload(record.id, RECORD_BYTES).as_slice()
                );
                record.id
            })
            .collect();
        assert_eq!(ids, (1..=after_id).collect::<Vec<_>>(), "{context}");
        // The log takes appends again, at the id after the cut.
        assert_eq!(wal.append(b"after").expect("append"), after_id + 1);
        println!("{context}: completed at open ({report})");
    }
}
