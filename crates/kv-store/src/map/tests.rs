use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::value::ValueKind;

/// The model of a map: each key's cell.
type Model = BTreeMap<Vec<u8>, Vec<u8>>;

/// A randomized test's seed: `KV_STORE_SEED` when set, else fresh; printed for a replay.
pub(super) fn base_seed(test_name: &str) -> u64 {
    let seed: u64 = std::env::var("KV_STORE_SEED")
        .map(|text| text.parse().expect("KV_STORE_SEED must be a u64"))
        .unwrap_or_else(|_| rand::random());
    println!("{test_name}: seed {seed} (replay with KV_STORE_SEED={seed})");
    seed
}

fn keys(entries: &[KeyValue]) -> Vec<&[u8]> {
    entries.iter().map(KeyValue::key).collect()
}

fn at(revision: u64) -> Locator {
    Locator {
        revision,
        op_index: 0,
    }
}

fn set(map: &mut KeyMap, key: &[u8], kind: ValueKind, value: &[u8], revision: u64) {
    let value = Value {
        kind,
        bytes: value.to_vec(),
    };
    map.put(key, &value, at(revision));
}

#[test]
fn put_counts_versions_and_delete_ends_them() {
    let mut map = KeyMap::default();
    set(&mut map, b"a", ValueKind::Json, b"1", 3);
    let (meta, replaced) = map.put(b"a", &Value::raw(b"2".to_vec()), at(7));
    assert_eq!(
        replaced,
        Some(Replaced {
            locator: at(3),
            value_bytes: 1
        })
    );
    assert_eq!(map.len(), 1);
    let entry = map.get(b"a").unwrap();
    assert_eq!(
        (entry.value_kind(), entry.value_bytes()),
        (ValueKind::Raw, &b"2"[..])
    );
    let expected = KeyMeta {
        version: 2,
        create_revision: 3,
        mod_revision: 7,
    };
    assert_eq!((entry.meta(), meta), (expected, expected));
    assert!(map.delete(b"a"));
    assert!(!map.delete(b"a"));
    assert!(map.get(b"a").is_none());
    assert_eq!((map.len(), map.bytes(), map.leaf_count()), (0, 0, 0));
    set(&mut map, b"a", ValueKind::Json, b"3", 9);
    assert_eq!(
        map.get(b"a").unwrap().meta(),
        KeyMeta {
            version: 1,
            create_revision: 9,
            mod_revision: 9
        }
    );
    map.check();
}

#[test]
fn prefix_scan_is_ordered_bounded_and_exact() {
    let mut map = KeyMap::default();
    for key in ["b", "a/2", "a/1", "a", "a0", "ab", "c"] {
        set(&mut map, key.as_bytes(), ValueKind::Json, b"0", 1);
    }
    assert_eq!(
        keys(&map.scan_prefix(b"a", None, 100)),
        [&b"a"[..], b"a/1", b"a/2", b"a0", b"ab"]
    );
    assert_eq!(
        keys(&map.scan_prefix(b"a/", None, 100)),
        [&b"a/1"[..], b"a/2"]
    );
    assert_eq!(keys(&map.scan_prefix(b"a", None, 2)), [&b"a"[..], b"a/1"]);
    assert_eq!(
        keys(&map.scan_prefix(b"a", Some(b"a/1"), 2)),
        [&b"a/2"[..], b"a0"]
    );
    // A cursor before the prefix is ignored; one past the prefix ends the scan.
    assert_eq!(keys(&map.scan_prefix(b"b", Some(b"a"), 10)), [&b"b"[..]]);
    assert!(map.scan_prefix(b"a", Some(b"b"), 10).is_empty());
    assert_eq!(map.scan_prefix(b"", None, 100).len(), 7);
    assert!(map.scan_prefix(b"z", None, 100).is_empty());
    assert!(KeyMap::default().scan_prefix(b"", None, 10).is_empty());
}

/// A clone is a frozen copy: changes to either side never show in the other.
#[test]
fn a_clone_is_independent_of_later_changes() {
    let mut map = KeyMap::default();
    for index in 0..1_000u32 {
        set(
            &mut map,
            index.to_string().as_bytes(),
            ValueKind::Json,
            b"1",
            1,
        );
    }
    let frozen = map.clone();
    let held = map.get(b"500").unwrap();
    for index in 0..1_000u32 {
        if index % 3 == 0 {
            map.delete(index.to_string().as_bytes());
        } else {
            set(
                &mut map,
                index.to_string().as_bytes(),
                ValueKind::Raw,
                b"2",
                2,
            );
        }
    }
    set(&mut map, b"new", ValueKind::Json, b"3", 3);
    assert_eq!(frozen.len(), 1_000);
    assert!(frozen
        .iter()
        .all(|entry| entry.value_kind() == ValueKind::Json && entry.value_bytes() == b"1"));
    assert_eq!((held.value_bytes(), held.version()), (&b"1"[..], 1));
    assert!(frozen.get(b"new").is_none());
    assert_eq!(map.len(), 1_000 - 334 + 1);
    let cells = |map: &KeyMap| map.cells().map(|cell| cell.len() as u64).sum::<u64>();
    assert_eq!(map.bytes(), cells(&map));
    assert_eq!(frozen.bytes(), cells(&frozen));
    assert_eq!(map.get(b"1").unwrap().value_bytes(), b"2");
    let mut keys: Vec<Vec<u8>> = frozen.iter().map(|entry| entry.key().to_vec()).collect();
    let in_order = keys.clone();
    keys.sort();
    assert_eq!(keys, in_order, "iteration is in key order");
    map.check();
    frozen.check();
}

/// Keys written in order leave full leaves behind (the split before an appended cell), and
/// a leaf emptied by deletes is merged away.
#[test]
fn keys_written_in_order_fill_their_leaves_and_deletes_merge_them() {
    let mut map = KeyMap::default();
    let value = Value::json(vec![b'v'; 100]);
    let key_count = 10_000u64;
    for index in 0..key_count {
        map.put(format!("key-{index:012}").as_bytes(), &value, at(index + 1));
    }
    map.check();
    let cell_bytes = map.bytes() as usize / map.len();
    let per_leaf = map.len() / map.leaf_count();
    assert!(
        per_leaf >= LEAF_BYTES_MAX / cell_bytes - 1,
        "{per_leaf} cells of {cell_bytes} bytes a leaf"
    );
    for index in 0..key_count {
        if index % 10 != 0 {
            assert!(map.delete(format!("key-{index:012}").as_bytes()));
        }
    }
    map.check();
    assert_eq!(map.len(), 1_000);
    let per_leaf_after = map.len() / map.leaf_count();
    assert!(
        per_leaf_after >= LEAF_BYTES_MIN / cell_bytes,
        "{per_leaf_after} cells a leaf after the deletes"
    );
}

#[test]
fn a_cell_larger_than_a_leaf_lives_alone() {
    let mut map = KeyMap::default();
    for key in [b"a", b"c", b"e"] {
        set(&mut map, key, ValueKind::Raw, &[1; 100], 1);
    }
    set(
        &mut map,
        b"b",
        ValueKind::Raw,
        &vec![2; 3 * LEAF_BYTES_MAX],
        2,
    );
    set(
        &mut map,
        b"d",
        ValueKind::Raw,
        &vec![3; 2 * LEAF_BYTES_MAX],
        3,
    );
    map.check();
    assert_eq!(
        map.get(b"b").unwrap().value_bytes().len(),
        3 * LEAF_BYTES_MAX
    );
    set(&mut map, b"b", ValueKind::Raw, b"small", 4);
    map.check();
    assert!(map.delete(b"d"));
    map.check();
    assert_eq!(
        keys(&map.scan_prefix(b"", None, 10)),
        [&b"a"[..], b"b", b"c", b"e"]
    );
}

/// Random puts, inserts, deletes, reads, scans and clones, checked against a `BTreeMap` of
/// cells after every step (the clones against the model as it was when they were taken).
#[test]
fn random_operations_match_a_btreemap() {
    let seed = base_seed("random_operations_match_a_btreemap");
    for case in 0..12u64 {
        let mut rng = StdRng::seed_from_u64(seed.wrapping_add(case));
        let context = format!("seed {}", seed.wrapping_add(case));
        let key_space = [8u32, 64, 600][rng.gen_range(0..3)];
        let value_bytes_max = [16usize, 300, 3 * LEAF_BYTES_MAX][rng.gen_range(0..3)];
        let mut map = KeyMap::default();
        let mut model = Model::new();
        let mut frozen: Vec<(KeyMap, Model)> = Vec::new();
        for step in 0..1_500u64 {
            let revision = step + 1;
            let key = format!("k{:04}", rng.gen_range(0..key_space)).into_bytes();
            match rng.gen_range(0..100) {
                0..=44 => {
                    let len = rng.gen_range(0..=value_bytes_max);
                    let value = Value::raw(vec![rng.gen::<u8>(); len]);
                    put_and_check(&mut map, &mut model, &key, &value, revision, &context);
                }
                45..=54 => {
                    let meta = KeyMeta {
                        version: 1,
                        create_revision: revision,
                        mod_revision: revision,
                    };
                    let new_cell = cell::encode(&key, &Value::json("7"), meta, 3);
                    map.insert(&new_cell);
                    model.insert(key.clone(), new_cell);
                }
                55..=79 => {
                    assert_eq!(map.delete(&key), model.remove(&key).is_some(), "{context}");
                }
                80..=89 => {
                    let found = map.get(&key);
                    assert_eq!(
                        found.as_ref().map(KeyValue::cell),
                        model.get(&key).map(Vec::as_slice),
                        "{context}"
                    );
                    assert_eq!(map.contains(&key), model.contains_key(&key), "{context}");
                }
                90..=95 => {
                    let prefix = &key[..rng.gen_range(0..key.len())];
                    let after = rng.gen_bool(0.5).then_some(&key[..]);
                    let limit = rng.gen_range(0..50);
                    scan_and_check(&map, &model, prefix, after, limit, &context);
                }
                _ => {
                    frozen.push((map.clone(), model.clone()));
                    if frozen.len() > 4 {
                        frozen.remove(rng.gen_range(0..frozen.len()));
                    }
                }
            }
            map.check();
            assert_eq!(map.len(), model.len(), "{context}, step {step}");
            assert!(
                map.cells().eq(model.values().map(Vec::as_slice)),
                "{context}, step {step}"
            );
            assert!(map
                .iter()
                .map(|entry| entry.cell().to_vec())
                .eq(model.values().cloned()));
        }
        for (copy, copy_model) in &frozen {
            copy.check();
            assert!(
                copy.cells().eq(copy_model.values().map(Vec::as_slice)),
                "{context}"
            );
        }
    }
}

/// A put into `map` and `model`, checking the metadata and the replaced cell it reports.
fn put_and_check(
    map: &mut KeyMap,
    model: &mut Model,
    key: &[u8],
    value: &Value,
    revision: u64,
    context: &str,
) {
    let previous = model.get(key).map(|cell| {
        let layout = Layout::of(cell);
        (
            layout.meta,
            layout.locator(),
            cell.len() - layout.kind_at - 1,
        )
    });
    let (meta, replaced) = map.put(key, value, at(revision));
    let expected_meta = KeyMeta {
        version: previous.map_or(1, |(meta, ..)| meta.version + 1),
        create_revision: previous.map_or(revision, |(meta, ..)| meta.create_revision),
        mod_revision: revision,
    };
    assert_eq!(meta, expected_meta, "{context}");
    assert_eq!(
        replaced,
        previous.map(|(_, locator, value_bytes)| Replaced {
            locator,
            value_bytes
        }),
        "{context}"
    );
    model.insert(key.to_vec(), cell::encode(key, value, meta, 0));
}

/// A prefix scan of `map` against the same scan of `model`.
fn scan_and_check(
    map: &KeyMap,
    model: &Model,
    prefix: &[u8],
    after: Option<&[u8]>,
    limit: usize,
    context: &str,
) {
    let found: Vec<Vec<u8>> = map
        .scan_prefix(prefix, after, limit)
        .iter()
        .map(|entry| entry.cell().to_vec())
        .collect();
    let expected: Vec<Vec<u8>> = model
        .iter()
        .filter(|(model_key, _)| model_key.starts_with(prefix))
        .filter(|(model_key, _)| after.is_none_or(|after| after < prefix || &model_key[..] > after))
        .take(limit)
        .map(|(_, cell)| cell.clone())
        .collect();
    assert_eq!(
        found, expected,
        "{context}, scan {prefix:?} after {after:?}"
    );
}
