//! Power loss in the middle of a group commit, with the last write torn at 512-byte sectors.
//!
//! The store runs on [`SimFs`] behind a gate that can hold the committer's `fdatasync`: the
//! test closes the gate, submits a few ops, waits until the committer has *written* some of
//! them (so their bytes are in the file but not on the simulated disk), and pulls the plug
//! with [`CrashMode::TearUnsynced`]: a random whole-sector prefix of the unsynced bytes
//! survives, its last sector maybe zeroed or garbage. After each recovery the store must equal
//! the `BTreeMap` model after some prefix of the submitted ops that contains every acknowledged
//! one. The run counts the torn writes the crashes produced and the torn tails recovery cut,
//! and fails if either is zero: a fault that never fires proves nothing.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use kv_store::{Op, Store, StoreOptions, Value};
use kv_wal::fs::{DirLock, FileSystem, WalFile};
use kv_wal::sim::{CrashMode, SimFs, SECTOR_BYTES};
use kv_wal::{SyncPolicy, WalOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::model::{assert_same_state, model_after, random_key};
use crate::seed::base_seed;

const CASES: u64 = 32;
const STEPS_PER_CASE: usize = 300;
/// Ops submitted behind a held fsync before the plug is pulled.
const IN_FLIGHT_OPS_MAX: usize = 12;
/// Values up to this size, so one group commit spans several sectors.
const VALUE_BYTES_MAX: usize = 3 * SECTOR_BYTES;
const SEGMENT_BYTES_MAX: u64 = 8 << 10;
const DEADLINE: Duration = Duration::from_secs(30);
/// The WAL's committer thread (the one whose fsyncs the gate holds).
const COMMITTER_THREAD_NAME: &str = "kv-wal-commit";

/// Holds the committer's fsyncs while closed.
#[derive(Debug, Default)]
struct Gate {
    closed: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    fn set_closed(&self, closed: bool) {
        *self.closed.lock().expect("gate") = closed;
        self.opened.notify_all();
    }
    fn pass(&self) {
        if std::thread::current().name() != Some(COMMITTER_THREAD_NAME) {
            return;
        }
        let closed = self.closed.lock().expect("gate");
        let (_closed, timeout) = self
            .opened
            .wait_timeout_while(closed, DEADLINE, |closed| *closed)
            .expect("gate");
        assert!(!timeout.timed_out(), "the gate stayed closed");
    }
}

/// [`SimFs`] with the committer's `sync_data` held at a [`Gate`].
#[derive(Debug)]
struct GatedFs {
    inner: SimFs,
    gate: Arc<Gate>,
}

#[derive(Debug)]
struct GatedFile {
    inner: Arc<dyn WalFile>,
    gate: Arc<Gate>,
}

impl WalFile for GatedFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.gate.pass();
        self.inner.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn size_bytes(&self) -> io::Result<u64> {
        self.inner.size_bytes()
    }
}

impl GatedFs {
    fn wrap(&self, file: Arc<dyn WalFile>) -> Arc<dyn WalFile> {
        Arc::new(GatedFile {
            inner: file,
            gate: self.gate.clone(),
        })
    }
}

impl FileSystem for GatedFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.inner.list_dir(path)
    }
    fn open(&self, path: &Path) -> io::Result<Arc<dyn WalFile>> {
        Ok(self.wrap(self.inner.open(path)?))
    }
    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn WalFile>> {
        Ok(self.wrap(self.inner.create_new(path)?))
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.inner.sync_dir(path)
    }
    fn try_lock(&self, path: &Path) -> io::Result<Box<dyn DirLock>> {
        self.inner.try_lock(path)
    }
}

fn open(fs: &Arc<GatedFs>) -> (Store, kv_wal::RecoveryReport) {
    let options = StoreOptions {
        wal: WalOptions {
            segment_bytes_max: SEGMENT_BYTES_MAX,
            sync_policy: SyncPolicy::Batch,
            file_system: fs.clone(),
            ..WalOptions::default()
        },
        ..StoreOptions::default()
    };
    Store::open("/kvd/wal", options).expect("open store")
}

fn random_op(rng: &mut StdRng, model: &BTreeMap<Vec<u8>, Value>) -> Op {
    let key = random_key(rng);
    if rng.gen_bool(0.2) && model.contains_key(&key) {
        return Op::Delete { key };
    }
    let len = rng.gen_range(0..=VALUE_BYTES_MAX);
    Op::Set {
        key,
        value: Value::raw((0..len).map(|_| rng.gen()).collect::<Vec<u8>>()),
    }
}

/// Totals over a run.
#[derive(Debug, Default)]
struct Tally {
    crashes: u64,
    torn_writes: u64,
    torn_tails_cut: u64,
    in_flight_ops_survived: u64,
    in_flight_ops_lost: u64,
    acknowledged_ops: u64,
}

#[test]
fn power_loss_mid_group_commit_tears_the_tail_and_loses_nothing_acknowledged() {
    let base =
        base_seed("power_loss_mid_group_commit_tears_the_tail_and_loses_nothing_acknowledged");
    let mut tally = Tally::default();
    for case in 0..CASES {
        let seed = base.wrapping_add(case);
        let mut rng = StdRng::seed_from_u64(seed);
        let sim = SimFs::new();
        let fs = Arc::new(GatedFs {
            inner: sim.clone(),
            gate: Arc::new(Gate::default()),
        });
        let (mut store, _) = open(&fs);
        // Every op submitted, with its id; the first `acknowledged` were acknowledged.
        let mut history: Vec<(u64, Op)> = Vec::new();
        let mut acknowledged = 0;
        for step in 0..STEPS_PER_CASE {
            let context = format!("seed {seed}, step {step}");
            let model = model_after(&history, history.len());
            if !rng.gen_bool(0.08) {
                let op = random_op(&mut rng, &model);
                let id = store.write_blocking(op.clone()).expect(&context);
                history.push((id, op));
                acknowledged = history.len();
                tally.acknowledged_ops += 1;
                continue;
            }

            // Hold the fsyncs, submit, wait until some of it is written, crash.
            fs.gate.set_closed(true);
            let mut model = model;
            let in_flight_count = rng.gen_range(1..=IN_FLIGHT_OPS_MAX);
            let mut tickets = Vec::new();
            for _ in 0..in_flight_count {
                let op = random_op(&mut rng, &model);
                let submitted = store.submit(op.clone()).expect(&context);
                match &op {
                    Op::Set { key, value } => model.insert(key.clone(), value.clone()),
                    Op::Delete { key } => model.remove(key),
                    Op::Txn(_) | Op::Noop => {
                        unreachable!("this test writes no transactions or no-ops")
                    }
                };
                history.push((submitted.id, op));
                let mut ticket = submitted.ticket;
                // A write group leader's frames wait for its ticket to write them (the ones
                // after it go to the committer): written now, fsync held by the gate.
                ticket.write_now();
                tickets.push(ticket);
            }
            let first_in_flight_id = history[acknowledged].0;
            store
                .wal()
                .last_watermark()
                .wait_blocking(first_in_flight_id, Some(DEADLINE))
                .expect("the committer writes the first in-flight op");
            let torn_before = sim.crash_stats().torn_writes;
            sim.crash(CrashMode::TearUnsynced { seed: rng.gen() });
            tally.crashes += 1;
            tally.torn_writes += sim.crash_stats().torn_writes - torn_before;
            // Let the old committer finish against the orphaned files, then drop it all.
            fs.gate.set_closed(false);
            drop(tickets);
            drop(store);

            let (recovered, report) = open(&fs);
            store = recovered;
            if report.torn_tail.is_some() {
                tally.torn_tails_cut += 1;
            }
            assert!(
                report.holes.is_empty() && report.dropped.is_none(),
                "{context}: {report}"
            );
            let applied_id = store.applied_id();
            let survivors = history.partition_point(|(id, _)| *id <= applied_id);
            assert!(
                survivors >= acknowledged,
                "{context}: {survivors} op(s) survived but {acknowledged} were acknowledged ({report})"
            );
            assert_eq!(
                survivors.checked_sub(1).map_or(0, |index| history[index].0),
                applied_id,
                "{context}: the log ends exactly at an op's id ({report})"
            );
            assert_same_state(&store, &model_after(&history, survivors), &context);
            tally.in_flight_ops_survived += (survivors - acknowledged) as u64;
            tally.in_flight_ops_lost += (history.len() - survivors) as u64;
            history.truncate(survivors);
            acknowledged = survivors;
        }
    }
    println!("{tally:?}");
    assert!(tally.torn_writes > 0, "no crash tore a write: {tally:?}");
    assert!(
        tally.torn_tails_cut > 0,
        "recovery never cut a torn tail: {tally:?}"
    );
    assert!(
        tally.in_flight_ops_survived > 0 && tally.in_flight_ops_lost > 0,
        "crashes should keep some unacknowledged ops and lose others: {tally:?}"
    );
}
