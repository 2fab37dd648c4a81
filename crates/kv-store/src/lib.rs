//! kv-store: the key-value state machine of kvd, rebuilt from a kv-wal log.
//!
//! The store is an ordered in-memory map from keys (bytes) to values (a [`ValueKind`] and
//! bytes). Every change is a [`LogEntry`] — a SET or a DELETE stamped with the writing leader's
//! epoch — encoded in a small versioned binary format (see [`entry`]) and appended to the WAL
//! as one record; the WAL id of that record is the change's id. Opening a store replays the
//! whole log into the map.
//!
//! Every key carries a [`KeyMeta`]: its `version` (writes since creation), `create_revision`
//! and `mod_revision` — log ids, so the store's revision is the log id and every replica
//! computes the same numbers from the same log. Conditional writes are [`Txn`]s (etcd's
//! compares, then one of two branches of operations), one record each, evaluated when the
//! record is applied; the [`Outcome`] is handed back to the submitter. A write may name an
//! idempotent request ([`RequestIds`], kept in the record): the [`dedup`] table remembers the
//! outcome, so a retry is answered instead of applied twice. Replaced values stay readable
//! from the log within a retention ([`history`]).
//!
//! Writes are applied only once they are safe and always in id order: [`Store::submit`] puts
//! the entry in the log and queues it; [`Store::apply_through`] moves queued entries into the
//! map up to an id the caller knows to be durable (single node) or committed (replication).
//! [`Store::write`] does both for a single node. Reads ([`Store::get`],
//! [`Store::scan_prefix`]) see the applied map only.
//!
//! **Snapshots** ([`snapshot`]): with [`StoreOptions::snapshot_dir`] set, [`Store::write_snapshot`]
//! writes the applied map at one id — a copy-on-write clone taken in `O(1)` under the map's
//! lock, serialized with none held, so writes go on — as a checksummed, compressed file;
//! [`Store::open`] loads the newest valid one and replays only the log after it (a damaged
//! snapshot falls back to an older one or to the whole log, and [`Store::snapshot_load`] says
//! so); [`Store::purge_wal_before`] then drops the log the snapshot covers, and
//! [`Store::install_snapshot`] replaces the whole state with another node's snapshot.
//!
//! The crate needs no async runtime: [`Store::write`] is a plain future (the WAL ticket wakes
//! it), and [`Store::write_blocking`] waits on a thread.
//!
//! ```
//! use kv_store::{Op, Store, StoreOptions, Value};
//!
//! # fn main() -> Result<(), kv_store::Error> {
//! let dir = tempfile::tempdir().expect("temp dir");
//! let (store, _report) = Store::open(dir.path(), StoreOptions::default())?;
//! let id = store.write_blocking(Op::Set { key: b"k".to_vec(), value: Value::json("42") })?;
//! assert_eq!(store.get(b"k").map(|entry| entry.to_value()), Some(Value::json("42")));
//!
//! // Submit and apply separately, as replication does with a commit id.
//! let submitted = store.submit(Op::Delete { key: b"k".to_vec() })?;
//! assert_eq!(submitted.id, id + 1);
//! assert!(store.get(b"k").is_some());           // not applied yet
//! submitted.ticket.wait()?;
//! store.apply_through(submitted.id);
//! assert!(store.get(b"k").is_none());
//! store.close()?;
//! drop(store);
//!
//! // Reopen: the log is replayed.
//! let (store, _report) = Store::open(dir.path(), StoreOptions::default())?;
//! assert_eq!((store.applied_id(), store.key_count()), (id + 1, 0));
//! # Ok(())
//! # }
//! ```

mod applied;
pub mod dedup;
mod encoding;
pub mod entry;
mod epochs;
mod error;
pub mod history;
mod log_access;
mod map;
mod outcome;
pub mod repair;
pub mod snapshot;
mod store;
pub mod txn;
mod value;

pub use applied::RetentionOptions;
pub use dedup::{DedupOptions, DedupStats, RequestIds, RequestMeta, RequestRecord};
pub use encoding::Malformed;
pub use entry::{LogEntry, Op, Value, ValueKind, ENTRY_FORMAT_VERSION};
pub use epochs::EpochHistory;
pub use error::{Error, Result};
pub use history::{HistoryOptions, KeyHistory, VersionRead};
pub use log_access::LogStatus;
pub use map::{KeyMeta, KeyValue};
pub use outcome::{FailedCompare, OpResponse, Outcome, OutcomeSlot};
pub use snapshot::{Codec, SnapshotInfo};
pub use store::{Command, SnapshotLoad, Store, StoreOptions, Submitted, EPOCH_DEFAULT};
pub use txn::{Compare, CompareTarget, Relation, Txn, TxnInvalid, TxnOp};
