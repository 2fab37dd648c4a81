//! Power loss at any file operation while the store writes, snapshots and purges its log.
//!
//! The store and its snapshots run on [`SimFs`] behind [`PowerCutFs`], which pulls the plug at
//! the Nth mutating file operation from a random point on (a write, an fsync, a create, a
//! rename, a removal, a directory fsync): the simulated disk keeps only what was synced (the
//! last unsynced write torn at sectors), the operation fails and so does every later one until
//! the test "restarts" the process by reopening. The compactor's sequence runs often — write a
//! snapshot, then purge the log before it — so cuts land inside snapshot writes, between the
//! snapshot's rename and its directory fsync, and inside the purge. After every restart the
//! store must hold every acknowledged write and nothing that was never submitted: the state
//! after some prefix of the submitted ops that contains every acknowledged one.
//!
//! This is what puts snapshots behind the same file seam as the log: a snapshot written
//! around it (straight to `std::fs`) would not be on the simulated disk at all.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use kv_store::{Codec, Op, Store, StoreOptions, Value};
use kv_wal::fs::{DirLock, FileSystem, WalFile};
use kv_wal::sim::{CrashMode, SimFs};
use kv_wal::{SyncPolicy, WalOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::model::{assert_same_state, model_after, random_key, random_value};
use crate::seed::base_seed;

const CASES: u64 = 24;
const STEPS_PER_CASE: usize = 400;
const SEGMENT_BYTES_MAX: u64 = 2 << 10;
/// The plug is pulled within this many mutating operations of being armed.
const CUT_WITHIN_OPERATIONS: u64 = 24;

/// A [`SimFs`] that loses power at a chosen mutating operation and then fails every operation
/// until revived.
#[derive(Debug)]
struct PowerCutFs {
    sim: SimFs,
    /// Mutating operations left before the cut (0: disarmed).
    countdown: AtomicU64,
    dead: AtomicBool,
    tear_seed: Mutex<StdRng>,
}

impl PowerCutFs {
    fn arm(&self, operations: u64) {
        self.countdown.store(operations, Ordering::SeqCst);
    }
    fn revive(&self) {
        self.countdown.store(0, Ordering::SeqCst);
        self.dead.store(false, Ordering::SeqCst);
    }
    fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }
    /// Called before every mutating operation: fails it if the power is (or just went) out.
    fn mutate(&self) -> io::Result<()> {
        if self.is_dead() {
            return Err(io::Error::other("the power is out"));
        }
        let left = self.countdown.load(Ordering::SeqCst);
        if left == 0 {
            return Ok(());
        }
        if self.countdown.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.dead.store(true, Ordering::SeqCst);
            let seed = self.tear_seed.lock().expect("seed").gen();
            self.sim.crash(CrashMode::TearUnsynced { seed });
            return Err(io::Error::other("power cut"));
        }
        Ok(())
    }
}

#[derive(Debug)]
struct PowerCutFile {
    inner: Arc<dyn WalFile>,
    fs: Arc<PowerCutFs>,
}

impl WalFile for PowerCutFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.fs.mutate()?;
        self.inner.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.fs.mutate()?;
        self.inner.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.fs.mutate()?;
        self.inner.set_len(len)
    }
    fn size_bytes(&self) -> io::Result<u64> {
        self.inner.size_bytes()
    }
}

/// The seam handed to the store: every operation goes through [`PowerCutFs`].
#[derive(Debug, Clone)]
struct Seam(Arc<PowerCutFs>);

impl Seam {
    fn wrap(&self, file: Arc<dyn WalFile>) -> Arc<dyn WalFile> {
        Arc::new(PowerCutFile {
            inner: file,
            fs: self.0.clone(),
        })
    }
}

impl FileSystem for Seam {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.0.mutate()?;
        self.0.sim.create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.0.sim.list_dir(path)
    }
    fn open(&self, path: &Path) -> io::Result<Arc<dyn WalFile>> {
        Ok(self.wrap(self.0.sim.open(path)?))
    }
    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn WalFile>> {
        self.0.mutate()?;
        Ok(self.wrap(self.0.sim.create_new(path)?))
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.0.mutate()?;
        self.0.sim.remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.0.mutate()?;
        self.0.sim.rename(from, to)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.0.mutate()?;
        self.0.sim.sync_dir(path)
    }
    fn try_lock(&self, path: &Path) -> io::Result<Box<dyn DirLock>> {
        self.0.sim.try_lock(path)
    }
}

fn open(seam: &Seam) -> Store {
    let options = StoreOptions {
        wal: WalOptions {
            segment_bytes_max: SEGMENT_BYTES_MAX,
            sync_policy: SyncPolicy::Batch,
            file_system: Arc::new(seam.clone()),
            ..WalOptions::default()
        },
        snapshot_dir: Some("/kvd/snapshots".into()),
        ..StoreOptions::default()
    };
    Store::open("/kvd/wal", options)
        .unwrap_or_else(|error| panic!("reopen after a power cut: {error}"))
        .0
}

/// Totals over a run, to show the faults fired where they matter.
#[derive(Debug, Default)]
struct Tally {
    power_cuts: u64,
    cuts_in_snapshot_or_purge: u64,
    snapshots_written: u64,
    reopened_from_a_snapshot: u64,
    acknowledged_ops: u64,
}

#[test]
fn power_cuts_during_snapshots_and_purges_lose_nothing_acknowledged() {
    let base = base_seed("power_cuts_during_snapshots_and_purges_lose_nothing_acknowledged");
    let mut tally = Tally::default();
    for case in 0..CASES {
        let seed = base.wrapping_add(case);
        let mut rng = StdRng::seed_from_u64(seed);
        let seam = Seam(Arc::new(PowerCutFs {
            sim: SimFs::new(),
            countdown: AtomicU64::new(0),
            dead: AtomicBool::new(false),
            tear_seed: Mutex::new(StdRng::seed_from_u64(seed ^ 0x5eed)),
        }));
        let mut store = open(&seam);
        // Every op submitted, with its id; the first `acknowledged` were acknowledged.
        let mut history: Vec<(u64, Op)> = Vec::new();
        let mut acknowledged = 0;
        for step in 0..STEPS_PER_CASE {
            let context = format!("seed {seed}, step {step}");
            if seam.0.countdown.load(Ordering::SeqCst) == 0 && rng.gen_bool(0.05) {
                seam.0.arm(rng.gen_range(1..=CUT_WITHIN_OPERATIONS));
            }
            let outcome = if rng.gen_bool(0.1) {
                compact(&store).map(|()| tally.snapshots_written += 1)
            } else {
                let op = random_op(&mut rng, &model_after(&history, history.len()));
                match store.submit(op.clone()) {
                    Ok(submitted) => {
                        history.push((submitted.id, op));
                        submitted
                            .ticket
                            .wait()
                            .map(|_| {
                                store.apply_through(submitted.id);
                                acknowledged = history.len();
                                tally.acknowledged_ops += 1;
                            })
                            .map_err(|error| error.to_string())
                    }
                    Err(error) => Err(error.to_string()),
                }
                .map_err(|error| (error, false))
            };
            let Err((error, in_compaction)) = outcome else {
                continue;
            };
            assert!(
                seam.0.is_dead(),
                "{context}: failed without a power cut: {error}"
            );
            tally.power_cuts += 1;
            tally.cuts_in_snapshot_or_purge += u64::from(in_compaction);
            drop(store);
            seam.0.revive();
            store = open(&seam);
            if store.snapshot_load().loaded.is_some() {
                tally.reopened_from_a_snapshot += 1;
            }
            let applied_id = store.applied_id();
            let survivors = history.partition_point(|(id, _)| *id <= applied_id);
            assert!(
                survivors >= acknowledged,
                "{context}: {survivors} op(s) survived but {acknowledged} were acknowledged"
            );
            assert_same_state(&store, &model_after(&history, survivors), &context);
            history.truncate(survivors);
            acknowledged = survivors;
        }
    }
    println!("{tally:?}");
    assert!(
        tally.cuts_in_snapshot_or_purge > 0 && tally.reopened_from_a_snapshot > 0,
        "the power never went out inside a snapshot or purge, or no restart used a snapshot: \
         {tally:?}"
    );
}

/// What kvd's compactor does: a snapshot of the applied map, then the log before it goes.
fn compact(store: &Store) -> Result<(), (String, bool)> {
    let info = store
        .write_snapshot(Codec::Lz4, 2)
        .map_err(|error| (error.to_string(), true))?;
    store
        .purge_wal_before(info.applied_id + 1)
        .map_err(|error| (error.to_string(), true))?;
    Ok(())
}

fn random_op(rng: &mut StdRng, model: &BTreeMap<Vec<u8>, Value>) -> Op {
    let key = random_key(rng);
    if rng.gen_bool(0.2) && model.contains_key(&key) {
        return Op::Delete { key };
    }
    Op::Set {
        key,
        value: random_value(rng),
    }
}
