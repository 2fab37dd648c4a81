//! The store: the map, the WAL underneath it, and the path from a submitted op to an applied
//! one.
//!
//! A write goes through two steps that callers may run apart:
//!
//! 1. [`Store::submit`] encodes the op, hands it to the WAL (which assigns the id without
//!    waiting for the disk) and queues `(id, op)` as *pending*. All of that happens under one
//!    short mutex, so pending ops are queued in id order.
//! 2. Once the id is safe — durable under the sync policy for a single node (the
//!    [`kv_wal::AppendTicket`] resolved), or committed by a quorum under replication —
//!    [`Store::apply_through`] applies every pending op up to that id, in order, to the map
//!    (`applied.rs`: versions, transactions, history, idempotent requests). What applying an
//!    op decided (a transaction's verdict, a key's new version) is left in the submitter's
//!    [`OutcomeSlot`].
//!
//! Readers only see the map, so they never see a write that is not yet safe.

mod replay;
mod requests;
mod snapshots;
mod versions;

use replay::{replay, Replayed};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use kv_wal::{AppendTicket, RecoveryReport, SyncPolicy, Wal, WalOptions};

use crate::applied::{AppliedState, RetentionOptions};
use crate::dedup::{RequestClock, RequestIds, RequestMeta};
use crate::encoding::Malformed;
use crate::entry::{LogEntry, Op};
use crate::epochs::EpochHistory;
use crate::error::{Error, Result};
use crate::map::KeyValue;
use crate::outcome::OutcomeSlot;
use crate::snapshot::{self, Codec, SnapshotInfo, SnapshotView};

/// The epoch a store writes with unless told otherwise.
pub const EPOCH_DEFAULT: u64 = 1;

/// Options for [`Store::open`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// How the WAL is opened (directory layout aside).
    pub wal: WalOptions,
    /// The leader epoch written into new entries (default [`EPOCH_DEFAULT`]).
    pub epoch: u64,
    /// Where snapshots live; `None`: no snapshots (the whole log is replayed at open).
    pub snapshot_dir: Option<PathBuf>,
    /// How much history and how many idempotent requests the map keeps. Every replica should
    /// use the same: they prune at apply time.
    pub retention: RetentionOptions,
    /// Entries above this id are not applied at open: they stay pending until
    /// [`Store::apply_through`] covers them (a replica that does not yet know whether they
    /// committed). `None`: apply everything (a single node, where durable means committed).
    pub apply_limit: Option<u64>,
}

/// What opening found in the snapshot directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotLoad {
    /// The snapshot the map was loaded from, and its applied id.
    pub loaded: Option<(PathBuf, u64)>,
    /// Newer snapshots that were damaged and skipped, with why.
    pub skipped: Vec<(PathBuf, String)>,
    /// WAL records replayed after the snapshot.
    pub replayed_records: u64,
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            wal: WalOptions::default(),
            epoch: EPOCH_DEFAULT,
            snapshot_dir: None,
            retention: RetentionOptions::default(),
            apply_limit: None,
        }
    }
}

/// An op handed to the WAL but not yet applied: its id, the ticket that resolves once the
/// WAL's sync policy is met, and where its outcome appears once applied.
#[derive(Debug)]
#[must_use = "the op is applied only after apply_through covers its id"]
pub struct Submitted {
    /// The WAL id of the entry.
    pub id: u64,
    /// Resolves when the entry is durable under the WAL's sync policy (`.await` or `.wait()`).
    pub ticket: AppendTicket,
    /// Filled when the entry is applied (never, if a cut drops it first).
    pub outcome: OutcomeSlot,
}

/// What [`Store::submit`] takes: an op and, for an idempotent request, its ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The change.
    pub op: Op,
    /// The request's ids: a second submit with the same ids is refused with
    /// [`Error::DuplicateRequest`] (or [`Error::RequestMismatch`]) instead of written.
    pub request: Option<RequestIds>,
}

impl From<Op> for Command {
    fn from(op: Op) -> Command {
        Command { op, request: None }
    }
}

/// An op queued for apply: its request, if any, and the slot its outcome goes to (`None` for
/// entries copied from a leader or replayed, until a retry asks for it).
#[derive(Debug)]
struct PendingOp {
    op: Op,
    request: Option<RequestMeta>,
    outcome: Option<OutcomeSlot>,
}

/// The key-value state machine over a [`Wal`]. Share it behind an `Arc`; every method takes
/// `&self`.
#[derive(Debug)]
pub struct Store {
    wal: Wal,
    epoch: AtomicU64,
    /// Submitted, not yet applied, in id order. Its mutex is the submit mutex: it also orders
    /// appends to the WAL, and `apply_through` holds it while it applies.
    pending: Mutex<VecDeque<(u64, PendingOp)>>,
    /// The applied state: keys with their versions, history, idempotent requests.
    map: RwLock<AppliedState>,
    /// The map's and the pending queue's sizes, for readers that must not wait on either lock.
    sizes: Sizes,
    retention: RetentionOptions,
    requests_seen: RequestCounters,
    applied_id: AtomicU64,
    /// Which epoch wrote which ids; guarded like the pending queue (changed under it).
    epochs: Mutex<EpochHistory>,
    snapshot_dir: Option<PathBuf>,
    /// The applied id of the snapshot the map was loaded from or installed (0: none): the
    /// log may lack ids up to it.
    snapshot_base: AtomicU64,
    /// The applied id of the newest valid snapshot this store loaded, wrote or installed (0:
    /// none), kept so the snapshot policy need not list the directory.
    newest_snapshot: AtomicU64,
    snapshot_load: SnapshotLoad,
    /// What idempotent requests are stamped with ([`RequestClock`]); guarded like the pending
    /// queue (used under it).
    request_clock: Mutex<RequestClock>,
}

/// How many keys and live bytes the applied map holds and how many ops wait to be applied, as
/// whoever last changed them left them (under the lock that guards each): read without those
/// locks, so a reader never waits on a large entry's apply — which holds the map's write lock
/// for as long as it copies the value in — or a large submit — which holds the pending lock
/// across its WAL write and any segment roll, `fsync`s included. The maintenance task,
/// `/health` and `/metrics` read them on the async workers, and a worker blocked on either
/// lock holds up every task it runs: on a node with one worker, its heartbeats too (seen: a
/// leader's runtime waiting 0.75 s on a lock while it applied a 65 MiB value, in a debug build,
/// until its session expired).
#[derive(Debug, Default)]
struct Sizes {
    keys: AtomicUsize,
    live_bytes: AtomicU64,
    pending: AtomicUsize,
}

impl Sizes {
    fn of(map: &AppliedState, pending: &VecDeque<(u64, PendingOp)>) -> Sizes {
        let sizes = Sizes::default();
        sizes.map_changed(map);
        sizes.pending_changed(pending);
        sizes
    }

    /// After a change of the map, under its write lock.
    fn map_changed(&self, map: &AppliedState) {
        self.keys.store(map.keys.len(), Ordering::Release);
        self.live_bytes.store(map.keys.bytes(), Ordering::Release);
    }

    /// After a change of the pending queue, under its lock.
    fn pending_changed(&self, pending: &VecDeque<(u64, PendingOp)>) {
        self.pending.store(pending.len(), Ordering::Release);
    }
}

/// Reads the newest snapshot in `snapshot_dir` that is whole, noting the damaged ones skipped.
/// Reads only: it may run before the WAL's lock is taken.
fn load_newest_snapshot(
    fs: &dyn kv_wal::fs::FileSystem,
    snapshot_dir: &Path,
) -> Result<(Option<snapshot::LoadedSnapshot>, SnapshotLoad)> {
    let mut load = SnapshotLoad::default();
    for (_, path) in snapshot::list_snapshots(fs, snapshot_dir)? {
        match snapshot::read_snapshot(fs, &path) {
            Ok(snapshot) => return Ok((Some(snapshot), load)),
            Err(error) => load.skipped.push((path, error.to_string())),
        }
    }
    Ok((None, load))
}

impl Store {
    /// Opens (or creates) the WAL in `dir` and rebuilds the map by replaying every record.
    /// Returns the WAL's recovery report for the caller to log.
    ///
    /// With a snapshot directory, the newest valid snapshot is read first, and the WAL opens
    /// knowing it needs only the records after it ([`kv_wal::WalOptions::needed_from`]):
    /// damage among the records the snapshot covers, with whole records after it, does not
    /// stop the open (reading those records fails; a follower that needs them gets the
    /// snapshot).
    pub fn open(dir: impl AsRef<Path>, options: StoreOptions) -> Result<(Store, RecoveryReport)> {
        let apply_limit = options.apply_limit.unwrap_or(u64::MAX);
        let retention = options.retention;
        let Some(snapshot_dir) = options.snapshot_dir else {
            let (wal, report) = Wal::open(dir, options.wal)?;
            let store = Store::from_wal(wal, options.epoch, apply_limit, retention)?;
            return Ok((store, report));
        };
        let fs = options.wal.file_system.clone();
        let (loaded, load) = load_newest_snapshot(&*fs, &snapshot_dir)?;
        let needed_from = loaded
            .as_ref()
            .map_or(0, |snapshot| snapshot.applied_id + 1);
        let wal_options = WalOptions {
            needed_from: options.wal.needed_from.max(needed_from),
            ..options.wal
        };
        let (wal, report) = Wal::open(dir, wal_options)?;
        let store = Store::from_loaded_snapshot(
            snapshot_dir,
            (loaded, load),
            wal,
            options.epoch,
            apply_limit,
            retention,
        )?;
        Ok((store, report))
    }

    /// Builds a store from the newest valid snapshot in `snapshot_dir` (damaged ones are
    /// skipped and reported in [`Store::snapshot_load`]) and the WAL records after it.
    /// Records above `apply_limit` are left pending (see [`StoreOptions::apply_limit`]).
    pub fn from_snapshot_and_wal(
        snapshot_dir: PathBuf,
        wal: Wal,
        epoch: u64,
        apply_limit: u64,
        retention: RetentionOptions,
    ) -> Result<Store> {
        let loaded = load_newest_snapshot(&**wal.file_system(), &snapshot_dir)?;
        Store::from_loaded_snapshot(snapshot_dir, loaded, wal, epoch, apply_limit, retention)
    }

    /// [`Store::from_snapshot_and_wal`] with the snapshot already read.
    fn from_loaded_snapshot(
        snapshot_dir: PathBuf,
        (loaded, mut load): (Option<snapshot::LoadedSnapshot>, SnapshotLoad),
        wal: Wal,
        epoch: u64,
        apply_limit: u64,
        retention: RetentionOptions,
    ) -> Result<Store> {
        // Under the WAL's lock: temporaries of another process's snapshot are never removed.
        snapshot::remove_temporaries(&**wal.file_system(), &snapshot_dir)?;
        let (start, base) = match loaded {
            Some(snapshot) => {
                load.loaded = Some((snapshot.path.clone(), snapshot.applied_id));
                let base = snapshot.applied_id;
                (Replayed::from_snapshot(snapshot), base)
            }
            None => (Replayed::default(), 0),
        };
        let replayed =
            replay(&wal, start, base, apply_limit, &retention).map_err(|mut error| {
                // A gap names the damaged snapshots that would have covered it.
                if let Error::Gap { skipped, .. } = &mut error {
                    *skipped = load.skipped.iter().map(|(_, why)| why.clone()).collect();
                }
                error
            })?;
        load.replayed_records = replayed.replayed_records;
        // The log must continue after the snapshot: when it lost records the snapshot holds (a
        // power cut under `interval`/`never`, a point-in-time repair, an install interrupted
        // before its first fetch), ids up to the snapshot's are never handed out again.
        wal.skip_to(base + 1)?;
        Ok(Store::assemble(
            wal,
            epoch,
            replayed,
            Some(snapshot_dir),
            base,
            load,
            retention,
        ))
    }

    /// A store over `wal` holding what replaying rebuilt.
    fn assemble(
        wal: Wal,
        epoch: u64,
        replayed: Replayed,
        snapshot_dir: Option<PathBuf>,
        snapshot_base: u64,
        snapshot_load: SnapshotLoad,
        retention: RetentionOptions,
    ) -> Store {
        let mut request_clock = RequestClock::default();
        let last_stamp = replayed.map.requests.last_timestamp_ms();
        if last_stamp > 0 {
            request_clock.observe(last_stamp);
        }
        Store {
            request_clock: Mutex::new(request_clock),
            wal,
            epoch: AtomicU64::new(epoch),
            sizes: Sizes::of(&replayed.map, &replayed.pending),
            pending: Mutex::new(replayed.pending),
            map: RwLock::new(replayed.map),
            retention,
            requests_seen: RequestCounters::default(),
            applied_id: AtomicU64::new(replayed.applied_id),
            epochs: Mutex::new(replayed.epochs),
            snapshot_dir,
            snapshot_base: AtomicU64::new(snapshot_base),
            newest_snapshot: AtomicU64::new(snapshot_base),
            snapshot_load,
        }
    }

    /// Builds a store over an open WAL, replaying its records up to `apply_limit` (the rest
    /// stay pending; `u64::MAX` applies everything).
    ///
    /// Fails with [`Error::Decode`] naming the id of a record that is not a store entry.
    pub fn from_wal(
        wal: Wal,
        epoch: u64,
        apply_limit: u64,
        retention: RetentionOptions,
    ) -> Result<Store> {
        let replayed = replay(&wal, Replayed::default(), 0, apply_limit, &retention)?;
        Ok(Store::assemble(
            wal,
            epoch,
            replayed,
            None,
            0,
            SnapshotLoad::default(),
            retention,
        ))
    }

    /// The file system under the store (the WAL's): snapshots and every other durable file
    /// beside the log go through it ([`kv_wal::durable`]).
    pub fn file_system(&self) -> &std::sync::Arc<dyn kv_wal::fs::FileSystem> {
        self.wal.file_system()
    }

    /// The last id the store holds: in the log, or covered by its snapshot. A log with no
    /// record left (a seal, a snapshot and a purge took them all) still ends just before where
    /// it starts: the snapshot the store was opened from or installed may be older than the
    /// one that covered the purged records.
    pub fn last_id(&self) -> u64 {
        self.wal
            .last_id()
            .unwrap_or_else(|| self.wal.start_id() - 1)
            .max(self.snapshot_base())
    }

    /// The id the next entry gets (never inside the snapshot: opening and installing a
    /// snapshot make the log continue after it).
    pub fn next_id(&self) -> u64 {
        self.wal.next_id()
    }

    /// Removes WAL segments wholly before `before_id` (never past the newest snapshot: the
    /// caller checks). Returns the files removed.
    pub fn purge_wal_before(&self, before_id: u64) -> Result<Vec<PathBuf>> {
        let removed = self.wal.purge_before(before_id)?;
        if !removed.is_empty() {
            if let Some(first_id) = self.wal.first_id() {
                write(&self.map).history.forget_before(first_id);
            }
        }
        Ok(removed)
    }

    /// How many history links the map holds (each reaches one replaced value in the log).
    pub fn history_links(&self) -> usize {
        read(&self.map).history.len()
    }

    /// Hands the command's op to the WAL and queues it for [`Store::apply_through`]; returns
    /// its id, ticket and outcome slot without waiting for the disk, under every sync policy
    /// (the WAL's commit path makes the entry durable; the ticket resolves once it is).
    ///
    /// A DELETE of a key that is neither in the map nor possibly set by a pending op fails
    /// with [`Error::KeyNotFound`] and writes nothing. A command whose request ids were
    /// submitted before (applied, or still pending) writes nothing either: it fails with
    /// [`Error::DuplicateRequest`] (the same op: the first one's id and outcome slot) or
    /// [`Error::RequestMismatch`] (another op under the same ids).
    pub fn submit(&self, command: impl Into<Command>) -> Result<Submitted> {
        let Command { op, request } = command.into();
        let mut pending = lock(&self.pending);
        if let Some(ids) = &request {
            self.refuse_repeated_request(&mut pending, ids, &op)?;
        }
        if let Op::Delete { key } = &op {
            if !self.exists_including_pending(&pending, key) {
                return Err(Error::KeyNotFound);
            }
        }
        let entry = LogEntry {
            epoch: self.epoch(),
            op,
            request: request.map(|ids| RequestMeta {
                ids,
                timestamp_ms: lock(&self.request_clock).stamp(unix_ms_now()),
            }),
        };
        let ticket = self.wal.submit(&[entry.encode()])?;
        let id = *ticket.ids().start();
        lock(&self.epochs).observe(entry.epoch, id);
        let outcome = OutcomeSlot::default();
        pending.push_back((
            id,
            PendingOp {
                op: entry.op,
                request: entry.request,
                outcome: Some(outcome.clone()),
            },
        ));
        self.sizes.pending_changed(&pending);
        Ok(Submitted {
            id,
            ticket,
            outcome,
        })
    }

    /// Appends frames exactly as another node's WAL encoded them (a follower copying its
    /// leader) and queues their entries for [`Store::apply_through`], as [`Store::submit`] does
    /// for local writes. Returns the WAL's ticket (its `ids()` are the frames' ids).
    ///
    /// Every frame's CRC, the continuity of ids and every payload's entry encoding are checked
    /// before anything is written; a payload that is not a store entry fails with
    /// [`Error::Decode`] naming its id, and nothing is appended.
    pub fn submit_frames(&self, frames: &[u8], policy: SyncPolicy) -> Result<AppendTicket> {
        let decoded = kv_wal::frame::decode_all(frames).map_err(|(offset, reason)| {
            kv_wal::Error::Corrupt {
                segment: "<frames to append>".into(),
                offset: offset as u64,
                reason,
            }
        })?;
        let mut ops = Vec::with_capacity(decoded.len());
        for frame in &decoded {
            let contents = frame.contents().map_err(|error| Error::Decode {
                id: frame.id,
                reason: Malformed::from(error.to_string()),
            })?;
            let entry = LogEntry::decode(&contents).map_err(|reason| Error::Decode {
                id: frame.id,
                reason,
            })?;
            ops.push((frame.id, entry));
        }
        let mut pending = lock(&self.pending);
        let ticket = self.wal.append_frames(frames, policy)?;
        let mut epochs = lock(&self.epochs);
        for (id, entry) in ops {
            epochs.observe(entry.epoch, id);
            pending.push_back((
                id,
                PendingOp {
                    op: entry.op,
                    request: entry.request,
                    outcome: None,
                },
            ));
        }
        self.sizes.pending_changed(&pending);
        Ok(ticket)
    }

    /// The epoch that wrote entry `id`, if the log holds it.
    pub fn epoch_at(&self, id: u64) -> Option<u64> {
        let last_id = self.last_id();
        if id == 0 || id > last_id {
            return None;
        }
        lock(&self.epochs).epoch_at(id)
    }

    /// The last id in the log written in an epoch `<= epoch` (see
    /// [`EpochHistory::end_of_epoch`]).
    pub fn end_of_epoch(&self, epoch: u64) -> u64 {
        let last_id = self.last_id();
        lock(&self.epochs).end_of_epoch(epoch, last_id)
    }

    /// The epoch of the newest entry in the log.
    pub fn last_entry_epoch(&self) -> Option<u64> {
        lock(&self.epochs).last_epoch()
    }

    /// Applies every pending op with an id `<= through_id`, in id order; returns the applied
    /// id afterwards. Ids already applied are skipped, so calling it twice is harmless.
    ///
    /// The caller vouches that every id up to `through_id` is safe to expose: its ticket has
    /// resolved (single node) or a quorum holds it (replication).
    pub fn apply_through(&self, through_id: u64) -> u64 {
        let mut pending = lock(&self.pending);
        let ready = pending.partition_point(|(id, _)| *id <= through_id);
        if ready == 0 {
            return self.applied_id();
        }
        let mut map = write(&self.map);
        for (id, pending) in pending.drain(..ready) {
            if let Some(request) = &pending.request {
                // Only idempotent requests touch the clock: nothing more per plain write.
                lock(&self.request_clock).observe(request.timestamp_ms);
            }
            let outcome = map.apply(
                id,
                &pending.op,
                pending.request.as_ref(),
                pending.outcome.is_some(),
                &self.retention,
            );
            if let (Some(slot), Some(outcome)) = (pending.outcome, outcome) {
                slot.fill(outcome);
            }
            self.applied_id.store(id, Ordering::Release);
        }
        self.sizes.map_changed(&map);
        self.sizes.pending_changed(&pending);
        self.applied_id()
    }

    /// Submits `op`, waits until it is durable under the WAL's sync policy, applies it; returns
    /// its id. For a single node.
    ///
    /// If this future is dropped after submitting, the op stays pending until a later
    /// `apply_through` covers its id: run it on a task of its own when the caller may be
    /// cancelled.
    pub async fn write(&self, op: Op) -> Result<u64> {
        let Submitted { id, ticket, .. } = self.submit(op)?;
        ticket.await?;
        self.apply_through(id);
        Ok(id)
    }

    /// [`Store::write`], blocking the calling thread instead.
    pub fn write_blocking(&self, op: Op) -> Result<u64> {
        let Submitted { id, ticket, .. } = self.submit(op)?;
        ticket.wait()?;
        self.apply_through(id);
        Ok(id)
    }

    /// The applied value of `key`, if any.
    pub fn get(&self, key: &[u8]) -> Option<KeyValue> {
        read(&self.map).keys.get(key)
    }

    /// Up to `limit` applied entries whose key starts with `prefix`, in key order, starting
    /// after the key `after` when given (for paging).
    pub fn scan_prefix(&self, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> Vec<KeyValue> {
        read(&self.map).keys.scan_prefix(prefix, after, limit)
    }

    /// How many keys the applied map holds, without waiting for an apply under way (a
    /// large value's holds the map for as long as it copies the value in).
    pub fn key_count(&self) -> usize {
        self.sizes.keys.load(Ordering::Acquire)
    }

    /// Bytes of live data in the applied map (every key and value with a few bytes of framing
    /// each: what a snapshot holds before compression), without waiting for an apply under
    /// way.
    pub fn live_bytes(&self) -> u64 {
        self.sizes.live_bytes.load(Ordering::Acquire)
    }

    /// The id of the last entry applied to the map (0 when none).
    pub fn applied_id(&self) -> u64 {
        self.applied_id.load(Ordering::Acquire)
    }

    /// How many submitted ops wait to be applied, without waiting for a submit under way.
    pub fn pending_count(&self) -> usize {
        self.sizes.pending.load(Ordering::Acquire)
    }

    /// The epoch written into new entries.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Changes the epoch written into new entries.
    pub fn set_epoch(&self, epoch: u64) {
        self.epoch.store(epoch, Ordering::Release);
    }

    /// The WAL underneath, for kv-store itself and its tests. The layers above use the
    /// methods of `log_access.rs`, which say what they are for; `.ci/run` checks that nothing
    /// above kv-store calls this.
    #[doc(hidden)]
    pub fn wal(&self) -> &Wal {
        &self.wal
    }

    /// Syncs and closes the WAL; reads keep working, writes fail from then on.
    pub fn close(&self) -> Result<()> {
        Ok(self.wal.close()?)
    }

    /// The applied state, read-locked (for the read paths in `history.rs` and `dedup.rs`).
    pub(crate) fn applied_state(&self) -> RwLockReadGuard<'_, AppliedState> {
        read(&self.map)
    }

    /// Refused retries since the store opened.
    pub(crate) fn request_counters(&self) -> &RequestCounters {
        &self.requests_seen
    }

    /// The retention the apply step follows.
    pub fn retention(&self) -> &RetentionOptions {
        &self.retention
    }

    fn exists_including_pending(&self, pending: &VecDeque<(u64, PendingOp)>, key: &[u8]) -> bool {
        // The newest pending op that may write the key decides; without one, the map does. A
        // transaction that may write it leaves the answer to apply time: the DELETE is written
        // and its outcome says whether it deleted anything.
        for (_, pending) in pending.iter().rev() {
            match &pending.op {
                Op::Set { key: set, .. } if set == key => return true,
                Op::Delete { key: deleted } if deleted == key => return false,
                Op::Txn(txn)
                    if txn
                        .success
                        .iter()
                        .chain(&txn.failure)
                        .any(|op| op.written_key() == Some(key)) =>
                {
                    return true
                }
                _ => {}
            }
        }
        read(&self.map).keys.contains(key)
    }
}

/// Retries of idempotent requests this store refused since it opened.
#[derive(Debug, Default)]
pub(crate) struct RequestCounters {
    /// Refused as duplicates of the same op.
    pub duplicates: AtomicU64,
    /// Refused because the ids named another op.
    pub mismatches: AtomicU64,
}

/// This node's wall clock: the first stamp of a log that holds none ([`RequestClock`]).
fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

// The guarded data stays consistent across a panic (every mutation is a single call on the
// map or the queue), so a poisoned lock is used as is.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}
fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
