//! Versions, compare-and-set, transactions, idempotent requests and history against a simple
//! reference model, across restarts, snapshots, log purges and snapshot installs.
//!
//! The model is a `BTreeMap` of key → (value, version, create_revision, mod_revision) with
//! each key's past versions, plus a map of request ids → (op, outcome). Every step submits a
//! random command (a plain SET or DELETE, a CAS, a random transaction, or one of those under a
//! request id that may have been used before), evaluates it in the model at the id the store
//! gave it, and compares the outcome: verdict, failed compare, every response, and the keys'
//! versions and revisions. Now and then the store reopens, writes a snapshot and purges its
//! log, or is replaced by a fresh store that installs the snapshot; after each the whole state
//! (keys, meta, remembered requests) must equal the model. Versions read back from history
//! must equal the model's, unless retention or a purge compacted them, which the model knows.

use std::collections::BTreeMap;
use std::path::Path;

use kv_store::{
    Codec, Command, Compare, CompareTarget, Error, HistoryOptions, KeyMeta, Op, OpResponse,
    Outcome, Relation, RequestIds, RetentionOptions, Store, StoreOptions, Txn, TxnOp, Value,
    VersionRead,
};
use kv_wal::{SyncPolicy, WalOptions};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::seed::base_seed;

const CASES: u64 = 12;
const STEPS_PER_CASE: usize = 400;
const KEYS: [&str; 8] = ["a", "a/1", "a/2", "ab", "b", "b/1", "c", "κ"];
const PREFIXES: [&str; 5] = ["", "a", "a/", "b", "z"];

#[derive(Debug, Clone, PartialEq, Eq)]
struct Cell {
    value: Value,
    meta: KeyMeta,
}

/// What the test expects an outcome to be (the store's `Outcome`, with cells as values).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Expected {
    revision: u64,
    succeeded: bool,
    failed_compare: Option<(u32, Vec<u8>, Option<KeyMeta>)>,
    responses: Vec<Response>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Response {
    Put(Vec<u8>, KeyMeta),
    Delete(Vec<u8>, bool),
    Get(Vec<u8>, Option<Cell>),
    Range(Vec<u8>, Vec<(Vec<u8>, Cell)>, bool),
    Elided,
}

fn observed(outcome: &Outcome) -> Expected {
    let cell = |found: &kv_store::KeyValue| Cell {
        value: found.to_value(),
        meta: found.meta(),
    };
    Expected {
        revision: outcome.revision,
        succeeded: outcome.succeeded,
        failed_compare: outcome
            .failed_compare
            .as_ref()
            .map(|failed| (failed.index, failed.key.clone(), failed.current)),
        responses: outcome
            .responses
            .iter()
            .map(|response| match response {
                OpResponse::Put { key, meta } => Response::Put(key.clone(), *meta),
                OpResponse::Delete { key, deleted } => Response::Delete(key.clone(), *deleted),
                OpResponse::Get { key, found } => {
                    Response::Get(key.clone(), found.as_ref().map(cell))
                }
                OpResponse::Range {
                    prefix,
                    found,
                    more,
                } => Response::Range(
                    prefix.clone(),
                    found
                        .iter()
                        .map(|found| (found.key().to_vec(), cell(found)))
                        .collect(),
                    *more,
                ),
                OpResponse::Elided => Response::Elided,
            })
            .collect(),
    }
}

fn without_reads(expected: &Expected) -> Expected {
    Expected {
        responses: expected
            .responses
            .iter()
            .map(|response| match response {
                Response::Get(..) | Response::Range(..) => Response::Elided,
                other => other.clone(),
            })
            .collect(),
        ..expected.clone()
    }
}

/// A replaced version: (version, mod_revision, value, the revision that replaced it).
type PastVersion = (u64, u64, Value, u64);

#[derive(Debug, Default, Clone)]
struct Model {
    keys: BTreeMap<Vec<u8>, Cell>,
    /// Each live key's earlier versions of its current life.
    past: BTreeMap<Vec<u8>, Vec<PastVersion>>,
    /// Request ids → (form, op, outcome without reads).
    requests: BTreeMap<(String, String), (u8, Op, Expected)>,
    /// Records below this id may have been purged from the log.
    purged_before: u64,
}

impl Model {
    fn put(&mut self, key: &[u8], value: &Value, revision: u64) -> KeyMeta {
        let meta = match self.keys.get(key) {
            Some(old) => {
                self.past.entry(key.to_vec()).or_default().push((
                    old.meta.version,
                    old.meta.mod_revision,
                    old.value.clone(),
                    revision,
                ));
                KeyMeta {
                    version: old.meta.version + 1,
                    create_revision: old.meta.create_revision,
                    mod_revision: revision,
                }
            }
            None => KeyMeta {
                version: 1,
                create_revision: revision,
                mod_revision: revision,
            },
        };
        self.keys.insert(
            key.to_vec(),
            Cell {
                value: value.clone(),
                meta,
            },
        );
        meta
    }

    fn delete(&mut self, key: &[u8]) -> bool {
        self.past.remove(key);
        self.keys.remove(key).is_some()
    }

    fn holds(&self, compare: &Compare) -> bool {
        let current = self.keys.get(&compare.key);
        let (left, right): (Vec<u8>, Vec<u8>) = match (&compare.target, current) {
            (CompareTarget::Value(_), None) => return false,
            (CompareTarget::Value(value), Some(cell)) => {
                let equal = cell.value == *value;
                match compare.relation {
                    Relation::Equal => return equal,
                    Relation::NotEqual => return !equal,
                    _ => (cell.value.bytes.clone(), value.bytes.clone()),
                }
            }
            (CompareTarget::Version(n), cell) => {
                number_pair(cell.map_or(0, |c| c.meta.version), *n)
            }
            (CompareTarget::CreateRevision(n), cell) => {
                number_pair(cell.map_or(0, |c| c.meta.create_revision), *n)
            }
            (CompareTarget::ModRevision(n), cell) => {
                number_pair(cell.map_or(0, |c| c.meta.mod_revision), *n)
            }
        };
        match compare.relation {
            Relation::Equal => left == right,
            Relation::NotEqual => left != right,
            Relation::Less => left < right,
            Relation::Greater => left > right,
        }
    }

    /// Applies `op` as record `revision`; the expected outcome.
    fn apply(&mut self, op: &Op, revision: u64) -> Expected {
        let plain = |responses| Expected {
            revision,
            succeeded: true,
            failed_compare: None,
            responses,
        };
        match op {
            Op::Set { key, value } => {
                let meta = self.put(key, value, revision);
                plain(vec![Response::Put(key.clone(), meta)])
            }
            Op::Delete { key } => {
                let deleted = self.delete(key);
                plain(vec![Response::Delete(key.clone(), deleted)])
            }
            Op::Noop => plain(Vec::new()),
            Op::Txn(txn) => {
                let failed_compare =
                    txn.compares
                        .iter()
                        .enumerate()
                        .find_map(|(index, compare)| {
                            (!self.holds(compare)).then(|| {
                                let current = self.keys.get(&compare.key).map(|cell| cell.meta);
                                (index as u32, compare.key.clone(), current)
                            })
                        });
                let succeeded = failed_compare.is_none();
                let branch = if succeeded {
                    &txn.success
                } else {
                    &txn.failure
                };
                let mut responses = Vec::new();
                for op in branch {
                    responses.push(match op {
                        TxnOp::Put { key, value } => {
                            Response::Put(key.clone(), self.put(key, value, revision))
                        }
                        TxnOp::Delete { key } => Response::Delete(key.clone(), self.delete(key)),
                        TxnOp::Get { key } => {
                            Response::Get(key.clone(), self.keys.get(key).cloned())
                        }
                        TxnOp::Range { prefix, limit } => {
                            let all: Vec<(Vec<u8>, Cell)> = self
                                .keys
                                .iter()
                                .filter(|(key, _)| key.starts_with(prefix))
                                .map(|(key, cell)| (key.clone(), cell.clone()))
                                .collect();
                            let more = all.len() > *limit as usize;
                            let found = all.into_iter().take(*limit as usize).collect();
                            Response::Range(prefix.clone(), found, more)
                        }
                    });
                }
                Expected {
                    revision,
                    succeeded,
                    failed_compare,
                    responses,
                }
            }
        }
    }
}

fn number_pair(left: u64, right: u64) -> (Vec<u8>, Vec<u8>) {
    (left.to_be_bytes().to_vec(), right.to_be_bytes().to_vec())
}

fn random_key(rng: &mut StdRng) -> Vec<u8> {
    KEYS.choose(rng).expect("keys").as_bytes().to_vec()
}

fn random_value(rng: &mut StdRng) -> Value {
    if rng.gen_bool(0.5) {
        Value::json(rng.gen_range(0..4).to_string())
    } else {
        Value::raw(
            (0..rng.gen_range(0..3))
                .map(|_| rng.gen_range(b'0'..b'4'))
                .collect::<Vec<u8>>(),
        )
    }
}

/// A number near the key's meta, so compares hit both ways.
fn near(rng: &mut StdRng, number: u64) -> u64 {
    number.saturating_add(rng.gen_range(0..3)).saturating_sub(1)
}

fn random_compare(rng: &mut StdRng, model: &Model) -> Compare {
    let key = random_key(rng);
    let meta = model
        .keys
        .get(&key)
        .map(|cell| cell.meta)
        .unwrap_or_default();
    let target = match rng.gen_range(0..4) {
        0 => CompareTarget::Value(match model.keys.get(&key) {
            Some(cell) if rng.gen_bool(0.6) => cell.value.clone(),
            _ => random_value(rng),
        }),
        1 => CompareTarget::Version(near(rng, meta.version)),
        2 => CompareTarget::CreateRevision(near(rng, meta.create_revision)),
        _ => CompareTarget::ModRevision(near(rng, meta.mod_revision)),
    };
    let relation = [
        Relation::Equal,
        Relation::NotEqual,
        Relation::Less,
        Relation::Greater,
    ][rng.gen_range(0..4)];
    Compare {
        key,
        relation,
        target,
    }
}

fn random_branch(rng: &mut StdRng) -> Vec<TxnOp> {
    let mut written = Vec::new();
    let mut ops = Vec::new();
    for _ in 0..rng.gen_range(0..5) {
        let key = random_key(rng);
        let op = match rng.gen_range(0..4) {
            0 | 1 if !written.contains(&key) => {
                written.push(key.clone());
                if rng.gen_bool(0.7) {
                    TxnOp::Put {
                        key,
                        value: random_value(rng),
                    }
                } else {
                    TxnOp::Delete { key }
                }
            }
            2 => TxnOp::Range {
                prefix: PREFIXES.choose(rng).expect("prefixes").as_bytes().to_vec(),
                limit: rng.gen_range(0..4),
            },
            _ => TxnOp::Get { key },
        };
        ops.push(op);
    }
    ops
}

/// A random command: a plain SET or DELETE, a CAS put or delete, or a transaction.
fn random_op(rng: &mut StdRng, model: &Model) -> Op {
    let key = random_key(rng);
    match rng.gen_range(0..10) {
        0..=2 => Op::Set {
            key,
            value: random_value(rng),
        },
        3 => Op::Delete { key },
        4 | 5 => {
            // If-Match on the current mod_revision (or a stale one), as the HTTP layer sends.
            let mod_revision = model
                .keys
                .get(&key)
                .map_or(0, |cell| cell.meta.mod_revision);
            let expected = if rng.gen_bool(0.7) {
                mod_revision
            } else {
                near(rng, mod_revision)
            };
            let write = if rng.gen_bool(0.8) {
                TxnOp::Put {
                    key: key.clone(),
                    value: random_value(rng),
                }
            } else {
                TxnOp::Delete { key: key.clone() }
            };
            Op::Txn(Txn {
                compares: vec![Compare {
                    key,
                    relation: Relation::Equal,
                    target: CompareTarget::ModRevision(expected),
                }],
                success: vec![write],
                failure: Vec::new(),
            })
        }
        _ => Op::Txn(Txn {
            compares: (0..rng.gen_range(0..3))
                .map(|_| random_compare(rng, model))
                .collect(),
            success: random_branch(rng),
            failure: random_branch(rng),
        }),
    }
}

fn options(retention: RetentionOptions) -> StoreOptions {
    StoreOptions {
        wal: WalOptions {
            segment_bytes_max: 1024,
            // Reopens are clean closes (which sync); crashes are tested elsewhere.
            sync_policy: SyncPolicy::Never,
            ..WalOptions::default()
        },
        retention,
        ..StoreOptions::default()
    }
}

fn open(dir: &Path, retention: RetentionOptions) -> Store {
    let mut options = options(retention);
    options.snapshot_dir = Some(dir.join("snapshots"));
    Store::open(dir.join("wal"), options).expect("open store").0
}

/// Submits `command`, applies it, and returns its outcome (or the refusal).
fn run(store: &Store, command: Command) -> Result<(u64, Outcome), Error> {
    let submitted = store.submit(command)?;
    submitted.ticket.wait().expect("durable");
    store.apply_through(submitted.id);
    let outcome = submitted.outcome.get().expect("applied, so decided");
    Ok((submitted.id, outcome))
}

fn assert_same_state(store: &Store, model: &Model, context: &str) {
    let actual: BTreeMap<Vec<u8>, Cell> = store
        .scan_prefix(b"", None, usize::MAX)
        .iter()
        .map(|entry| {
            (
                entry.key().to_vec(),
                Cell {
                    value: entry.to_value(),
                    meta: entry.meta(),
                },
            )
        })
        .collect();
    assert_eq!(actual, model.keys, "{context}: keys");
    for ((client_id, request_id), (form, _, expected)) in &model.requests {
        let record = store
            .request_record(client_id, request_id)
            .unwrap_or_else(|| panic!("{context}: request {client_id}/{request_id} forgotten"));
        assert_eq!(record.form, *form, "{context}");
        assert_eq!(
            observed(&record.outcome),
            *expected,
            "{context}: request outcome"
        );
    }
    assert_eq!(
        store.dedup_stats().entries,
        model.requests.len(),
        "{context}"
    );
}

/// Reads random versions of a key back from history and checks them against the model.
fn check_history(
    store: &Store,
    model: &Model,
    rng: &mut StdRng,
    history: &HistoryOptions,
    context: &str,
) {
    let key = random_key(rng);
    let Some(cell) = model.keys.get(&key) else {
        assert_eq!(
            store.get_version(&key, 1).expect("read"),
            VersionRead::KeyNotFound
        );
        return;
    };
    let latest = cell.meta.version;
    let applied = store.applied_id();
    for version in [0, latest, latest + 1, rng.gen_range(1..=latest)] {
        let read = store.get_version(&key, version).expect("read history");
        let context = format!("{context}: {key:?} version {version} of {latest}");
        if version == 0 || version > latest {
            assert_eq!(read, VersionRead::NoSuchVersion { latest }, "{context}");
            continue;
        }
        let (mod_revision, value, replaced_at) = if version == latest {
            (cell.meta.mod_revision, cell.value.clone(), u64::MAX)
        } else {
            let past = &model.past[&key];
            let (_, mod_revision, value, replaced_at) = past
                .iter()
                .find(|(past_version, ..)| *past_version == version)
                .expect("the model keeps every version");
            (*mod_revision, value.clone(), *replaced_at)
        };
        match read {
            VersionRead::Found {
                version: found,
                mod_revision: found_revision,
                value: found_value,
            } => assert_eq!(
                (found, found_revision, found_value),
                (version, mod_revision, value),
                "{context}"
            ),
            VersionRead::Compacted { .. } => {
                let by_retention =
                    replaced_at < (applied + 1).saturating_sub(history.revisions_max);
                assert!(
                    by_retention || mod_revision < model.purged_before,
                    "{context}: compacted, but retention keeps it (replaced at {replaced_at}, applied {applied}) and the log was purged only before {}",
                    model.purged_before
                );
            }
            other => panic!("{context}: {other:?}"),
        }
    }
}

#[test]
fn versions_transactions_and_requests_match_a_model_across_restarts_and_installs() {
    let base = base_seed("versions_transactions_and_requests_match_a_model");
    for case in 0..CASES {
        let seed = base.wrapping_add(case);
        let mut rng = StdRng::seed_from_u64(seed);
        let history = HistoryOptions {
            revisions_max: [4, 40, 1_000_000][rng.gen_range(0..3)],
            bytes_max: u64::MAX,
        };
        let retention = RetentionOptions {
            history,
            ..RetentionOptions::default()
        };
        let mut dir = tempfile::tempdir().expect("temp dir");
        let mut store = open(dir.path(), retention);
        let mut model = Model::default();
        for step in 0..STEPS_PER_CASE {
            let context = format!("seed {seed}, step {step}");
            match rng.gen_range(0..100) {
                0..=79 => {
                    let op = random_op(&mut rng, &model);
                    let request = rng.gen_bool(0.3).then(|| RequestIds {
                        client_id: ["c1", "c2"][rng.gen_range(0..2)].to_owned(),
                        request_id: rng.gen_range(0..12).to_string(),
                        form: rng.gen_range(1..3),
                    });
                    let earlier = request.as_ref().and_then(|ids| {
                        model
                            .requests
                            .get(&(ids.client_id.clone(), ids.request_id.clone()))
                            .cloned()
                    });
                    let command = Command {
                        op: op.clone(),
                        request: request.clone(),
                    };
                    let next_id = store.next_id();
                    match (run(&store, command), earlier) {
                        (
                            Err(Error::DuplicateRequest { id, outcome }),
                            Some((form, first, expected)),
                        ) => {
                            let ids = request.expect("a request");
                            assert!(form == ids.form && first == op, "{context}: same request");
                            assert_eq!(id, expected.revision, "{context}");
                            let outcome = outcome.get().expect("applied");
                            assert_eq!(observed(&outcome), expected, "{context}: replayed");
                            assert_eq!(store.next_id(), next_id, "{context}: nothing written");
                        }
                        (Err(Error::RequestMismatch { id }), Some((form, first, expected))) => {
                            let ids = request.expect("a request");
                            assert!(
                                form != ids.form || first != op,
                                "{context}: another request"
                            );
                            assert_eq!(id, expected.revision, "{context}");
                            assert_eq!(store.next_id(), next_id, "{context}: nothing written");
                        }
                        (Err(Error::KeyNotFound), None) => {
                            let key = op.key().expect("a plain delete");
                            assert!(!model.keys.contains_key(key), "{context}: absent");
                            assert_eq!(store.next_id(), next_id, "{context}: nothing written");
                        }
                        (Ok((id, outcome)), None) => {
                            assert_eq!(id, next_id, "{context}: ids run on");
                            let expected = model.apply(&op, id);
                            assert_eq!(observed(&outcome), expected, "{context}: outcome");
                            if let Some(ids) = request {
                                model.requests.insert(
                                    (ids.client_id, ids.request_id),
                                    (ids.form, op, without_reads(&expected)),
                                );
                            }
                        }
                        (result, earlier) => panic!("{context}: {result:?} after {earlier:?}"),
                    }
                }
                80..=89 => check_history(&store, &model, &mut rng, &history, &context),
                90..=93 => {
                    store.close().expect("close");
                    drop(store);
                    store = open(dir.path(), retention);
                    assert_same_state(&store, &model, &format!("{context}, reopened"));
                }
                94..=96 => {
                    let info = store.write_snapshot(Codec::Lz4, 2).expect("snapshot");
                    assert_eq!(info.applied_id, store.applied_id());
                    store.purge_wal_before(info.applied_id).expect("purge");
                    model.purged_before = model.purged_before.max(info.applied_id);
                }
                _ => {
                    // A new replica catches up by installing this one's newest snapshot.
                    let info = store.write_snapshot(Codec::Zstd, 2).expect("snapshot");
                    let target_dir = tempfile::tempdir().expect("temp dir");
                    let target = open(target_dir.path(), retention);
                    let installed = target_dir
                        .path()
                        .join("snapshots")
                        .join(info.path.file_name().expect("name"));
                    std::fs::create_dir_all(installed.parent().expect("parent")).expect("mkdir");
                    std::fs::copy(&info.path, &installed).expect("copy");
                    assert_eq!(
                        target.install_snapshot(&installed, 2).expect("install"),
                        info.applied_id
                    );
                    store.close().expect("close");
                    drop(store);
                    (store, dir) = (target, target_dir);
                    // Nothing before the snapshot is in the new replica's log.
                    model.purged_before = info.applied_id + 1;
                    assert_same_state(&store, &model, &format!("{context}, installed"));
                }
            }
        }
        assert_same_state(&store, &model, &format!("seed {seed}, end"));
    }
}

/// A transaction's ranges return at most `RANGE_VALUE_BYTES_MAX` (64 MiB) of values between
/// them: a range stops before the value that would pass it and says `more`, and a later range
/// of the same transaction gets what is left. Before, a range returned up to 10,000 values
/// whatever their size: `{"range":{"prefix":""}}` over 200 MiB of 1 MiB values made kvd build a
/// 267 MB answer (VmHWM 585 MiB), and a few such requests at once could take all memory.
#[test]
fn a_transactions_ranges_stop_at_their_byte_budget_and_say_more() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), RetentionOptions::default());
    let twenty_mib = vec![7u8; 20 << 20];
    for key in ["a", "b", "c", "d"] {
        let set = Op::Set {
            key: key.as_bytes().to_vec(),
            value: Value::raw(twenty_mib.clone()),
        };
        store.write_blocking(set).unwrap();
    }
    let range = |prefix: &str| TxnOp::Range {
        prefix: prefix.as_bytes().to_vec(),
        limit: 10,
    };
    let txn = Txn {
        compares: Vec::new(),
        success: vec![range(""), range("d"), range("zzz")],
        failure: Vec::new(),
    };
    let (_, outcome) = run(&store, Command::from(Op::Txn(txn))).expect("transaction");
    let ranges: Vec<(Vec<Vec<u8>>, bool)> = outcome
        .responses
        .iter()
        .map(|response| match response {
            OpResponse::Range { found, more, .. } => (
                found.iter().map(|cell| cell.key().to_vec()).collect(),
                *more,
            ),
            other => panic!("a range answered {other:?}"),
        })
        .collect();
    let keys = |names: &[&str]| -> Vec<Vec<u8>> {
        names.iter().map(|name| name.as_bytes().to_vec()).collect()
    };
    assert_eq!(
        ranges,
        vec![
            (keys(&["a", "b", "c"]), true),
            (keys(&[]), true),
            (keys(&[]), false),
        ]
    );
}
