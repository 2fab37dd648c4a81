//! Random SET/DELETE/reopen sequences against a `BTreeMap` model, on a real directory.

use std::collections::BTreeMap;

use kv_store::{Error, Op, Store, StoreOptions, Value, ValueKind};
use kv_wal::{SyncPolicy, WalOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::seed::base_seed;

const CASES: u64 = 16;
const STEPS_PER_CASE: usize = 300;
/// A small key space with shared prefixes, so DELETEs often hit and prefix scans matter.
const KEYS: [&str; 10] = [
    "a",
    "a/1",
    "a/2",
    "a/b/c",
    "ab",
    "b",
    "b/x",
    "ba",
    "κλειδί",
    "",
];
const PREFIXES: [&str; 6] = ["", "a", "a/", "b", "κ", "zz"];

type Model = BTreeMap<Vec<u8>, Value>;

/// The model after the first `count` ops of `history`.
pub fn model_after(history: &[(u64, Op)], count: usize) -> BTreeMap<Vec<u8>, Value> {
    let mut model = BTreeMap::new();
    for (_, op) in &history[..count] {
        match op {
            Op::Set { key, value } => {
                model.insert(key.clone(), value.clone());
            }
            Op::Delete { key } => {
                model.remove(key);
            }
            Op::Txn(_) | Op::Noop => unreachable!("these histories hold no transactions or no-ops"),
        }
    }
    model
}

pub fn random_value(rng: &mut StdRng) -> Value {
    let len = rng.gen_range(0..40);
    if rng.gen_bool(0.5) {
        Value::json(format!("{}", rng.gen_range(0..1_000_000)))
    } else {
        Value::raw((0..len).map(|_| rng.gen()).collect::<Vec<u8>>())
    }
}

pub fn random_key(rng: &mut StdRng) -> Vec<u8> {
    KEYS[rng.gen_range(0..KEYS.len())].as_bytes().to_vec()
}

/// Asserts the store's whole applied map equals `model`.
pub fn assert_same_state(store: &Store, model: &Model, context: &str) {
    let entries = store.scan_prefix(b"", None, usize::MAX);
    let actual: Model = entries
        .iter()
        .map(|entry| (entry.key().to_vec(), entry.to_value()))
        .collect();
    assert_eq!(&actual, model, "{context}");
    assert_eq!(store.key_count(), model.len(), "{context}");
}

fn open(dir: &std::path::Path, segment_bytes_max: u64) -> Store {
    let options = StoreOptions {
        wal: WalOptions {
            segment_bytes_max,
            // Reopen is a clean close here (which syncs); crashes are tested on SimFs.
            sync_policy: SyncPolicy::Never,
            ..WalOptions::default()
        },
        ..StoreOptions::default()
    };
    Store::open(dir, options).expect("open store").0
}

#[test]
fn random_ops_with_reopen_match_a_btreemap() {
    let base = base_seed("random_ops_with_reopen_match_a_btreemap");
    for case in 0..CASES {
        let seed = base.wrapping_add(case);
        let mut rng = StdRng::seed_from_u64(seed);
        let context = format!("seed {seed}");
        let dir = tempfile::tempdir().expect("temp dir");
        let segment_bytes_max = [512, 4096, 1 << 20][rng.gen_range(0..3)];
        let mut store = open(dir.path(), segment_bytes_max);
        let mut model = Model::new();
        let mut last_id = 0;
        for step in 0..STEPS_PER_CASE {
            let context = format!("{context}, step {step}");
            match rng.gen_range(0..100) {
                0..=49 => {
                    let (key, value) = (random_key(&mut rng), random_value(&mut rng));
                    let op = Op::Set {
                        key: key.clone(),
                        value: value.clone(),
                    };
                    let id = store.write_blocking(op).expect("set");
                    assert!(id > last_id, "{context}: ids grow");
                    last_id = id;
                    model.insert(key, value);
                }
                50..=74 => {
                    let key = random_key(&mut rng);
                    let next_id = store.wal().next_id();
                    match store.write_blocking(Op::Delete { key: key.clone() }) {
                        Ok(id) => {
                            assert!(model.remove(&key).is_some(), "{context}: deleted");
                            last_id = id;
                        }
                        Err(Error::KeyNotFound) => {
                            assert!(!model.contains_key(&key), "{context}: absent");
                            assert_eq!(store.wal().next_id(), next_id, "{context}: no write");
                        }
                        Err(error) => panic!("{context}: delete failed: {error}"),
                    }
                }
                75..=84 => {
                    let key = random_key(&mut rng);
                    let expected = model.get(&key);
                    let actual = store.get(&key).map(|entry| entry.to_value());
                    assert_eq!(actual.as_ref(), expected, "{context}: get");
                }
                85..=94 => {
                    let prefix = PREFIXES[rng.gen_range(0..PREFIXES.len())].as_bytes();
                    let limit = rng.gen_range(0..6);
                    let expected: Vec<&Vec<u8>> = model
                        .keys()
                        .filter(|key| key.starts_with(prefix))
                        .take(limit)
                        .collect();
                    let actual = store.scan_prefix(prefix, None, limit);
                    let actual: Vec<Vec<u8>> =
                        actual.iter().map(|entry| entry.key().to_vec()).collect();
                    assert_eq!(
                        actual.iter().collect::<Vec<_>>(),
                        expected,
                        "{context}: scan"
                    );
                }
                _ => {
                    // The live bytes kept up with every change as the map rebuilt at open
                    // counts them.
                    let live_bytes = store.live_bytes();
                    store.close().expect("close");
                    drop(store);
                    store = open(dir.path(), segment_bytes_max);
                    assert_eq!(store.live_bytes(), live_bytes, "{context}: live bytes");
                    assert_eq!(store.applied_id(), last_id, "{context}: applied id");
                    assert!(store.wal().next_id() > last_id, "{context}: next id");
                    assert_same_state(&store, &model, &context);
                }
            }
        }
        assert_same_state(&store, &model, &context);
        assert_eq!(store.pending_count(), 0, "{context}");
    }
}

#[test]
fn json_and_raw_values_keep_their_kind_across_reopen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path(), 1 << 20);
    store
        .write_blocking(Op::Set {
            key: b"j".to_vec(),
            value: Value::json(r#"{"a":[1,2]}"#),
        })
        .expect("set json");
    store
        .write_blocking(Op::Set {
            key: b"r".to_vec(),
            value: Value::raw(vec![0xff, 0]),
        })
        .expect("set raw");
    store.close().expect("close");
    drop(store);
    let store = open(dir.path(), 1 << 20);
    let json = store.get(b"j").expect("json value");
    assert_eq!(json.value_kind(), ValueKind::Json);
    assert_eq!(json.value_bytes(), br#"{"a":[1,2]}"#);
    let raw = store.get(b"r").expect("raw value");
    assert_eq!(raw.value_kind(), ValueKind::Raw);
    assert_eq!(raw.value_bytes(), [0xff, 0]);
}
