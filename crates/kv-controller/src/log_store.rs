//! The Raft log and vote, durable: openraft's [`RaftLogStorage`].
//!
//! Entries live in a kv-wal [`Wal`] under `<data_dir>/controller/log/`, one JSON-encoded
//! entry per record, appended under `SyncPolicy::Batch`: openraft is told an append is durable
//! only once the WAL's fsync covers it. The vote, the committed log id, the last purged log id
//! and the id shift (below) are in `<data_dir>/controller/raft-state.json`, rewritten
//! atomically (temporary file, fsync, rename, directory fsync) before each call that changes
//! them returns: a vote held only in memory could be cast twice across a restart.
//!
//! Raft index `i` is WAL id `i + 1 - shift`. The shift is 0 until a snapshot installed from
//! the leader purges past the end of the local log; then the next WAL id must stand for the
//! index after the snapshot, which a WAL (whose ids never jump) cannot do, so the shift moves
//! instead, written in the same atomic update as the purge mark. Truncation (a conflicting
//! suffix) is the WAL's crash-safe `truncate_after`; purging drops whole sealed segments.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kv_wal::durable;
use kv_wal::fs::FileSystem;
use kv_wal::BusySince;
use kv_wal::{SyncPolicy, Wal, WalOptions};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{RaftLogReader, StorageIOError};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::meta::NodeId;
use crate::raft_types::{Entry, LogId, StorageError, TypeConfig, Vote};
use crate::room::Room;

/// The state file's name.
pub const RAFT_STATE_FILE: &str = "raft-state.json";
/// The log's directory name.
pub const LOG_DIR: &str = "log";
/// Segment size of the controller's log: small, so purges after snapshots free space.
const LOG_SEGMENT_BYTES: u64 = 1 << 20;
/// The format written: format 1 sealed with its CRC-32C (`state_file.rs`); format 1 files are
/// still read.
const STATE_FORMAT: u32 = 2;
/// The highest Raft term a saved vote may hold. A term grows by one per election, so no
/// cluster comes near it; a vote above it was edited, and openraft's next election (term + 1)
/// would overflow (a panic in a debug build, the term wrapping back to 0 in a release one).
const VOTE_TERM_MAX: u64 = 1 << 62;

/// Everything durable about the log that is not an entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct RaftState {
    format: u32,
    node_id: NodeId,
    vote: Option<Vote>,
    committed: Option<LogId>,
    last_purged: Option<LogId>,
    /// WAL id = raft index + 1 - shift.
    shift: u64,
    /// The cluster this node joined (0: none yet), stored before its log holds anything, so a
    /// node that joined refuses another cluster's peers from the start.
    #[serde(default)]
    joined_cluster_id: u64,
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    fs: Arc<dyn FileSystem>,
    wal: Wal,
    state: Mutex<RaftState>,
    /// Held while `raft-state.json` is rewritten: one update at a time, without holding
    /// `state` (its readers must not wait on the disk, which on a full one takes long).
    state_write: Mutex<()>,
    last_log_id: Mutex<Option<LogId>>,
    room: Room,
    /// The oldest storage write in flight: what [`LogStore::disk_wait`] reads.
    writes: BusySince,
}

/// The controller's Raft log storage (and its reader: clones share everything).
#[derive(Debug, Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The state of a new log, written before anything else: refused beside entries or a
/// snapshot, which mean the file was lost — and with it the vote (a node voting again in a
/// term it voted in), the commit and purge marks and the index shift.
fn new_state(fs: &dyn FileSystem, dir: &Path, wal: &Wal, node_id: NodeId) -> Result<RaftState> {
    let snapshot = dir.join(crate::state_machine::SNAPSHOT_FILE);
    if wal.last_id().is_some() || durable::read_file(fs, &snapshot)?.is_some() {
        return Err(Error::Corrupt {
            path: dir.join(RAFT_STATE_FILE),
            reason: "missing, but the controller log or snapshot beside it is not empty: this \
                     node's Raft vote is lost and it must not vote again. Restore the file; \
                     or, if this node is a follower, treat its controller state as lost \
                     (docs/controller.md, \"Lost controller state\")"
                .to_owned(),
        });
    }
    let state = RaftState {
        format: STATE_FORMAT,
        node_id,
        ..RaftState::default()
    };
    durable::write_file_atomic(fs, dir, RAFT_STATE_FILE, &encode_state(&state)?)?;
    Ok(state)
}

/// Refuses a `log/` without a segment (or gone) beside a `raft-state.json` that holds a vote,
/// a commit or a purge mark: the log's first segment is created before the state file is
/// written, and the active segment is never purged, so its entries — acknowledged to a leader
/// — are lost. Before, the WAL created a new empty log there (the directory changed) and
/// openraft refused later ("Failed to get log entries"), or, with nothing committed yet, the
/// node came back without the entries it had acknowledged.
fn refuse_a_lost_log(fs: &dyn FileSystem, dir: &Path, state: &RaftState) -> Result<()> {
    let holds_something =
        state.vote.is_some() || state.committed.is_some() || state.last_purged.is_some();
    let log_dir = dir.join(LOG_DIR);
    let names = match fs.list_dir(&log_dir) {
        Ok(names) => names,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(error) => return Err(Error::io(&log_dir, error)),
    };
    let has_segment = names
        .iter()
        .any(|name| name.ends_with(".wal") || name.ends_with(".walz"));
    if !holds_something || has_segment {
        return Ok(());
    }
    Err(Error::Corrupt {
        path: log_dir,
        reason: format!(
            "no log segment, but {} beside it holds this node's vote and marks (committed {}): \
             the entries it acknowledged are lost. Restore the log; or, if this node is a \
             follower, treat its controller state as lost (docs/controller.md, \"Lost \
             controller state\")",
            RAFT_STATE_FILE,
            state
                .committed
                .map_or("none".to_owned(), |log_id| log_id.to_string())
        ),
    })
}

impl LogStore {
    /// Opens (or creates) the log of node `node_id` in `dir` (the controller directory).
    /// Fails if the directory belongs to another node.
    pub fn open(fs: Arc<dyn FileSystem>, dir: &Path, node_id: NodeId) -> Result<LogStore> {
        fs.create_dir_all(dir)
            .map_err(|error| Error::io(dir, error))?;
        let state_path = dir.join(RAFT_STATE_FILE);
        let state = match durable::read_file(&*fs, &state_path)? {
            Some(bytes) => {
                let state: RaftState = crate::state_file::decode(
                    &state_path,
                    &bytes,
                    STATE_FORMAT,
                    |state: &mut RaftState| &mut state.format,
                )?;
                if state.node_id != node_id {
                    return Err(Error::NodeIdMismatch {
                        stored: state.node_id,
                        configured: node_id,
                    });
                }
                Some(state)
            }
            None => None,
        };
        if let Some(state) = &state {
            refuse_a_lost_log(&*fs, dir, state)?;
        }
        let (wal, report) = Wal::open(
            dir.join(LOG_DIR),
            WalOptions {
                segment_bytes_max: LOG_SEGMENT_BYTES,
                sync_policy: SyncPolicy::Batch,
                // Every entry was acknowledged to the leader once synced: a whole last entry
                // that does not check (a bit flip) is refused, never cut as a torn tail.
                refuse_whole_damaged_tail: true,
                file_system: fs.clone(),
                ..WalOptions::default()
            },
        )?;
        if !report.is_clean() {
            tracing::warn!(?report, "the controller log was repaired at open");
        }
        let state = match state {
            Some(state) => state,
            None => new_state(&*fs, dir, &wal, node_id)?,
        };
        let store = LogStore {
            shared: Arc::new(Shared {
                dir: dir.to_owned(),
                fs,
                wal,
                state: Mutex::new(state),
                state_write: Mutex::new(()),
                last_log_id: Mutex::new(None),
                room: Room::default(),
                writes: BusySince::default(),
            }),
        };
        let last = store.read_last_log_id()?;
        *lock(&store.shared.last_log_id) = last;
        store.check_state_against_log()?;
        Ok(store)
    }

    /// Refuses a `raft-state.json` that its log proves impossible (a hand edit, a file of
    /// another directory): openraft saves the vote before it writes an entry of that term and
    /// commits only entries it holds, so a vote below the last entry's term (or none beside
    /// entries) or a committed id that is not the entry at its index cannot come from a crash.
    /// Before, such a node started: with no vote it voted again in a term it had voted in; with
    /// a vote or commit mark that disagreed with the log its Raft core never committed again
    /// (the data plane waited for its role for ever).
    fn check_state_against_log(&self) -> Result<()> {
        let state = lock(&self.shared.state).clone();
        let impossible = |reason: String| Error::Corrupt {
            path: self.shared.dir.join(RAFT_STATE_FILE),
            reason: format!(
                "{reason}: the file does not belong with the log beside it (edited, or copied \
                 from elsewhere?)"
            ),
        };
        let vote_term = state.vote.map(|vote| vote.leader_id.term);
        if let Some(term) = vote_term.filter(|&term| term > VOTE_TERM_MAX) {
            return Err(impossible(format!(
                "its vote is in term {term}, above any term a cluster reaches ({VOTE_TERM_MAX})"
            )));
        }
        let newest_term = [self.last_log_id(), state.committed]
            .into_iter()
            .flatten()
            .map(|log_id| log_id.leader_id.term)
            .max();
        if let Some(newest_term) = newest_term {
            if vote_term.is_none_or(|vote_term| vote_term < newest_term) {
                let vote = vote_term.map_or("no vote".to_owned(), |term| {
                    format!("a vote in term {term}")
                });
                return Err(impossible(format!(
                    "it holds {vote}, below term {newest_term} of the log's entries: this \
                     node's vote is lost and it must not vote again"
                )));
            }
        }
        let Some(committed) = state.committed else {
            return Ok(());
        };
        let first_live = state.last_purged.map_or(0, |purged| purged.index + 1);
        let last_live = self.last_log_id().map(|log_id| log_id.index);
        if committed.index < first_live || last_live.is_none_or(|last| committed.index > last) {
            // Purged (a snapshot covers it), or past the log's end: openraft refuses the
            // latter unless a snapshot covers it.
            return Ok(());
        }
        let held = self
            .wal_id_checked(committed.index)
            .map(|wal_id| self.read_entry(wal_id))
            .transpose()?
            .map(|entry| entry.log_id);
        if held != Some(committed) {
            return Err(impossible(format!(
                "its committed log id {committed} is not the log's entry at index {} ({})",
                committed.index,
                held.map_or("none".to_owned(), |log_id| log_id.to_string())
            )));
        }
        Ok(())
    }

    /// Whether this log holds anything (a vote, an entry, a purge mark): a node with state
    /// must never be initialized again.
    pub fn has_state(&self) -> bool {
        let state = lock(&self.shared.state);
        state.vote.is_some() || state.last_purged.is_some() || self.shared.wal.last_id().is_some()
    }

    /// The cluster id stored when this node joined a cluster (0: none).
    pub fn joined_cluster_id(&self) -> u64 {
        lock(&self.shared.state).joined_cluster_id
    }

    /// Stores the id of the cluster this node joins, durably.
    pub fn set_joined_cluster_id(&self, cluster_id: u64) -> Result<()> {
        self.update_state(|state| state.joined_cluster_id = cluster_id)
    }

    /// The saved vote.
    pub fn vote(&self) -> Option<Vote> {
        lock(&self.shared.state).vote
    }

    /// The last log id (or the last purged one, with no entries after it).
    pub fn last_log_id(&self) -> Option<LogId> {
        *lock(&self.shared.last_log_id)
    }

    /// The last log id as openraft counts it: the last entry's, or the last purged one if
    /// that is later (a snapshot installed past the entries).
    pub fn last_known_log_id(&self) -> Option<LogId> {
        let last_purged = lock(&self.shared.state).last_purged;
        self.last_log_id().max(last_purged)
    }

    fn wal_id(&self, index: u64) -> u64 {
        index + 1 - lock(&self.shared.state).shift
    }

    /// [`Self::wal_id`], `None` where the shift puts `index` before the WAL's first id.
    fn wal_id_checked(&self, index: u64) -> Option<u64> {
        (index + 1)
            .checked_sub(lock(&self.shared.state).shift)
            .filter(|&wal_id| wal_id > 0)
    }

    fn purged_index(&self) -> Option<u64> {
        lock(&self.shared.state)
            .last_purged
            .map(|log_id| log_id.index)
    }

    /// The log id of the last live entry in the WAL, else the last purged one.
    fn read_last_log_id(&self) -> Result<Option<LogId>> {
        let (shift, purged) = {
            let state = lock(&self.shared.state);
            (state.shift, state.last_purged)
        };
        let Some(last_wal_id) = self.shared.wal.last_id() else {
            return Ok(purged);
        };
        let shift_error = |reason: String| Error::Corrupt {
            path: self.shared.dir.join(RAFT_STATE_FILE),
            reason: format!("its shift {shift} does not fit the log beside it: {reason}"),
        };
        let last_index = last_wal_id
            .checked_add(shift)
            .ok_or_else(|| shift_error(format!("WAL id {last_wal_id} + shift overflows")))?
            .checked_sub(1);
        let live = match (last_index, purged) {
            (None, _) => false,
            (Some(index), Some(purged)) => index > purged.index,
            (Some(_), None) => true,
        };
        if !live {
            return Ok(purged);
        }
        let entry = self.read_entry(last_wal_id)?;
        // The shift is what maps WAL ids to Raft indexes: the last record must hold the index
        // it maps to, or every read and append after would be misnumbered.
        if Some(entry.log_id.index) != last_index {
            return Err(shift_error(format!(
                "the log's last record, WAL id {last_wal_id}, holds raft index {}, not {}",
                entry.log_id.index,
                last_index.unwrap_or(0)
            )));
        }
        Ok(Some(entry.log_id))
    }

    fn read_entry(&self, wal_id: u64) -> Result<Entry> {
        let path = self.shared.wal.dir().to_owned();
        let payload = self
            .shared
            .wal
            .read(wal_id)?
            .ok_or_else(|| Error::Corrupt {
                path: path.clone(),
                reason: format!("record {wal_id} is missing"),
            })?;
        serde_json::from_slice(&payload).map_err(|error| Error::Corrupt {
            path,
            reason: format!("record {wal_id}: {error}"),
        })
    }

    fn entries(&self, start: u64, end: u64) -> Result<Vec<Entry>> {
        let mut entries = Vec::new();
        if start >= end {
            return Ok(entries);
        }
        let first_wal_id = self.wal_id(start);
        for record in self.shared.wal.iter_from(first_wal_id) {
            let record = record?;
            let expected = start + entries.len() as u64;
            if expected >= end {
                break;
            }
            let entry: Entry =
                serde_json::from_slice(record.payload()).map_err(|error| Error::Corrupt {
                    path: self.shared.wal.dir().to_owned(),
                    reason: format!("record {}: {error}", record.id),
                })?;
            if entry.log_id.index != expected || record.id != self.wal_id(expected) {
                return Err(Error::Corrupt {
                    path: self.shared.wal.dir().to_owned(),
                    reason: format!(
                        "record {} holds raft index {}, {expected} was expected",
                        record.id, entry.log_id.index
                    ),
                });
            }
            entries.push(entry);
        }
        Ok(entries)
    }

    /// The wait for room of this store's writes (a full disk: [`crate::room`]).
    pub fn room(&self) -> &Room {
        &self.shared.room
    }

    /// How long the oldest storage write in flight (an append, a truncation, a purge, the
    /// vote or the commit mark, with their `fsync`s) has waited; zero when none is. Read from
    /// an atomic: no lock a hung write could hold.
    pub fn disk_wait(&self) -> Duration {
        self.shared.writes.waited()
    }

    /// Runs the storage write `work` off the async workers, counted in
    /// [`LogStore::disk_wait`] while it runs.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let _busy = shared.writes.begin_at(Instant::now());
            work()
        })
        .await
        .map_err(|error| Error::Raft(format!("storage task failed: {error}")))?
    }

    /// Applies `change` to the durable state and writes it atomically, waiting for room on a
    /// full disk; the memory copy changes only once the file is durable (readers see the
    /// previous state until then, and do not wait for the write).
    fn update_state(&self, change: impl FnOnce(&mut RaftState)) -> Result<()> {
        let _writing = lock(&self.shared.state_write);
        let mut next = lock(&self.shared.state).clone();
        change(&mut next);
        let bytes = encode_state(&next)?;
        self.shared.room.retry(RAFT_STATE_FILE, || {
            Ok(durable::write_file_atomic(
                &*self.shared.fs,
                &self.shared.dir,
                RAFT_STATE_FILE,
                &bytes,
            )?)
        })?;
        *lock(&self.shared.state) = next;
        Ok(())
    }

    fn append_blocking(&self, entries: Vec<Entry>) -> Result<()> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let expected = self.wal_id(first.log_id.index);
        if expected != self.shared.wal.next_id() {
            return Err(Error::Corrupt {
                path: self.shared.wal.dir().to_owned(),
                reason: format!(
                    "append at raft index {} (WAL id {expected}) would leave a hole: the WAL's next id is {}",
                    first.log_id.index,
                    self.shared.wal.next_id()
                ),
            });
        }
        let last = entries.last().expect("not empty").log_id;
        let payloads = entries
            .iter()
            .map(serde_json::to_vec)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| Error::Raft(format!("encoding an entry: {error}")))?;
        // Batch policy: returns once an fsync covers the records. A full disk appends nothing
        // (`kv_wal::Error::OutOfSpace`, the log stays writable): wait for room and try again.
        self.shared.room.retry("the controller's log", || {
            Ok(self.shared.wal.append_batch(&payloads)?)
        })?;
        *lock(&self.shared.last_log_id) = Some(last);
        Ok(())
    }

    fn truncate_blocking(&self, log_id: LogId) -> Result<()> {
        let keep_through = self.wal_id(log_id.index) - 1;
        self.shared.wal.truncate_after(keep_through)?;
        let last = self.read_last_log_id()?;
        *lock(&self.shared.last_log_id) = last;
        Ok(())
    }

    fn purge_blocking(&self, log_id: LogId) -> Result<()> {
        let last = self.last_log_id();
        let whole_log = last.is_none_or(|last| log_id.index >= last.index);
        let next_wal_id = self.shared.wal.next_id();
        self.update_state(|state| {
            state.last_purged = Some(log_id);
            if whole_log {
                // The next entry, raft index log_id.index + 1, takes the WAL's next id.
                state.shift = log_id.index + 2 - next_wal_id;
            }
        })?;
        let purge_before = if whole_log {
            next_wal_id
        } else {
            self.wal_id(log_id.index) + 1
        };
        self.shared.wal.purge_before(purge_before)?;
        if whole_log {
            *lock(&self.shared.last_log_id) = Some(log_id);
        }
        Ok(())
    }
}

fn encode_state(state: &RaftState) -> Result<Vec<u8>> {
    crate::state_file::encode(state)
}

fn write_error(error: Error) -> StorageError {
    StorageIOError::write_logs(&error).into()
}

fn read_error(error: Error) -> StorageError {
    StorageIOError::read_logs(&error).into()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&start) => start,
            Bound::Excluded(&start) => start + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&end) => end + 1,
            Bound::Excluded(&end) => end,
            Bound::Unbounded => u64::MAX,
        };
        let first_live = self.purged_index().map_or(0, |index| index + 1);
        let last_end = self.last_log_id().map_or(0, |log_id| log_id.index + 1);
        self.entries(start.max(first_live), end.min(last_end))
            .map_err(read_error)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id = lock(&self.shared.state).last_purged;
        Ok(LogState {
            last_purged_log_id,
            last_log_id: self.last_known_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let store = self.clone();
        let vote = *vote;
        self.blocking(move || store.update_state(|state| state.vote = Some(vote)))
            .await
            .map_err(|error| StorageIOError::write_vote(&error).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.vote())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let store = self.clone();
        self.blocking(move || store.update_state(|state| state.committed = committed))
            .await
            .map_err(write_error)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(lock(&self.shared.state).committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let store = self.clone();
        match self.blocking(move || store.append_blocking(entries)).await {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(error) => {
                callback.log_io_completed(Err(std::io::Error::other(error.to_string())));
                Err(write_error(error))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let store = self.clone();
        self.blocking(move || store.truncate_blocking(log_id))
            .await
            .map_err(write_error)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let store = self.clone();
        self.blocking(move || store.purge_blocking(log_id))
            .await
            .map_err(write_error)
    }
}
