//! Power loss on a simulated disk: after a crash the store must come back as the model after
//! some prefix of the submitted ops that includes every acknowledged one.

use std::sync::Arc;

use kv_store::{Error, Op, Store, StoreOptions, Value};
use kv_wal::sim::{CrashMode, SimFs};
use kv_wal::{SyncPolicy, WalOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::model::{assert_same_state, model_after, random_key, random_value};
use crate::seed::base_seed;

const CASES: u64 = 24;
const STEPS_PER_CASE: usize = 400;

fn open(fs: &Arc<SimFs>, sync_policy: SyncPolicy) -> Store {
    let options = StoreOptions {
        wal: WalOptions {
            segment_bytes_max: 512,
            sync_policy,
            file_system: fs.clone(),
            ..WalOptions::default()
        },
        ..StoreOptions::default()
    };
    Store::open("/kvd/wal", options).expect("open store").0
}

#[test]
fn after_power_loss_every_acknowledged_write_survives_in_order() {
    let base = base_seed("after_power_loss_every_acknowledged_write_survives_in_order");
    let mut crashes_that_lost_unacknowledged_ops = 0;
    for case in 0..CASES {
        let seed = base.wrapping_add(case);
        let mut rng = StdRng::seed_from_u64(seed);
        let sync_policy = if rng.gen_bool(0.5) {
            SyncPolicy::Batch
        } else {
            SyncPolicy::Always
        };
        let context = format!("seed {seed}, {sync_policy}");
        let fs = Arc::new(SimFs::new());
        let mut store = open(&fs, sync_policy);
        // Every op submitted, with its id; the first `acknowledged` were acknowledged.
        let mut history: Vec<(u64, Op)> = Vec::new();
        let mut acknowledged = 0;
        for step in 0..STEPS_PER_CASE {
            let context = format!("{context}, step {step}");
            let roll = rng.gen_range(0..100);
            if roll < 8 {
                let mode = if rng.gen_bool(0.5) {
                    CrashMode::DropUnsynced
                } else {
                    CrashMode::TearUnsynced { seed: rng.gen() }
                };
                fs.crash(mode);
                drop(store);
                store = open(&fs, sync_policy);
                let applied_id = store.applied_id();
                let survivors = history.partition_point(|(id, _)| *id <= applied_id);
                assert!(
                    survivors >= acknowledged,
                    "{context}: {survivors} op(s) survived but {acknowledged} were acknowledged"
                );
                assert_same_state(&store, &model_after(&history, survivors), &context);
                if survivors < history.len() {
                    crashes_that_lost_unacknowledged_ops += 1;
                }
                history.truncate(survivors);
                // Ids of surviving entries are never handed out again. (Ids of unsynced,
                // unacknowledged records that the crash wiped out may be: the log never saw
                // them on disk.)
                assert!(
                    store.wal().next_id() > history.last().map_or(0, |(id, _)| *id),
                    "{context}: next id after the survivors"
                );
                acknowledged = survivors;
                continue;
            }
            let model = model_after(&history, history.len());
            let key = random_key(&mut rng);
            let op = if roll < 70 || !model.contains_key(&key) {
                Op::Set {
                    key,
                    value: random_value(&mut rng),
                }
            } else {
                Op::Delete { key }
            };
            // Mostly acknowledged writes; some submitted and left in flight.
            if rng.gen_bool(0.8) {
                let id = store.write_blocking(op.clone()).expect(&context);
                history.push((id, op));
                acknowledged = history.len();
            } else {
                let submitted = store.submit(op.clone()).expect(&context);
                history.push((submitted.id, op));
                drop(submitted.ticket);
            }
        }
        let last_id = history.last().map_or(0, |(id, _)| *id);
        store.apply_through(last_id);
        store.wal().sync().expect("sync");
        assert_same_state(&store, &model_after(&history, history.len()), &context);
    }
    println!("crashes that lost unacknowledged ops: {crashes_that_lost_unacknowledged_ops}");
}

#[test]
fn a_delete_of_a_key_only_set_in_flight_is_accepted() {
    let fs = Arc::new(SimFs::new());
    let store = open(&fs, SyncPolicy::Batch);
    let set = store
        .submit(Op::Set {
            key: b"k".to_vec(),
            value: Value::json("1"),
        })
        .expect("submit set");
    let delete = store
        .submit(Op::Delete { key: b"k".to_vec() })
        .expect("the pending SET makes the key exist");
    assert!(matches!(
        store.submit(Op::Delete { key: b"k".to_vec() }),
        Err(Error::KeyNotFound)
    ));
    drop(set.ticket);
    delete.ticket.wait().expect("durable");
    store.apply_through(delete.id);
    assert!(store.get(b"k").is_none());
}
