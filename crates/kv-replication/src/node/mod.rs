//! The node: a store plus its replication role, driven on tokio. The role is one
//! [`RoleState`] — a leader with its [`LeaderState`], or a follower with its leader's URL (or
//! none) and [`FollowerState`] — behind one lock. A node opened with [`Node::open_controlled`]
//! takes the role the controller gives it ([`Node::apply_cluster_view`], in [`control`]); the
//! legacy [`Node::open_leader`] and [`Node::open_follower`] fix it at open. The decisions are
//! made by the sans-I/O state machines; the submodules drive them, one concern each:
//!
//! - [`control`]: the controller's side — views, leases, the ISR the leader wants, planned
//!   transfers, what the node reports in its heartbeat and its health, and the replication
//!   task that follows whichever leader the node is told of.
//! - [`leading`]: the leader's driver — writes that wait for their acknowledgements, and the
//!   long-polled fetch.
//! - [`following`]: the follower's driver — the fetch loop over a [`crate::Transport`].
//! - [`streaming`]: the replication stream (see [`crate::stream`]) — the leader's side of
//!   one stream, and the follower's stream session inside its fetch loop.
//! - [`snapshot_transfer`]: a follower downloading and installing the leader's snapshot, and
//!   the leader serving it in chunks.
//! - [`maintenance`]: snapshots and log compaction, and the background task that runs them.
//! - [`status`]: what `/cluster_status` and `/compaction/status` show.
//!
//! This module holds what they share: the role, the node's meta file, and the commit and
//! applied ids it publishes.

pub mod control;
pub mod following;
pub mod leading;
pub mod maintenance;
mod saved_meta;
pub mod snapshot_transfer;
pub mod status;
pub mod streaming;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use kv_store::{Op, Store};
use tokio::sync::watch;

use crate::compaction::{CompactionHistory, CompactionOptions};
use crate::error::{Error, Result};
use crate::follower::{FollowerOptions, FollowerState};
use crate::leader::{LeaderOptions, LeaderState, Membership};
use crate::log_view::LogView;
use crate::meta::NodeMeta;
use crate::protocol::FetchResponse;
use saved_meta::{MetaFiles, SavedMeta};

/// The node's role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Takes writes, answers fetches.
    Leader,
    /// Copies the leader's log.
    Follower {
        /// The leader's base URL.
        leader_url: String,
    },
    /// Knows no leader right now (the controller named none, or not yet, or this node may
    /// not lead the epoch it was named for): serves reads, refuses writes with 503.
    NoLeader,
}

/// Settings of a node.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// The leader's bookkeeping.
    pub leader: LeaderOptions,
    /// The follower's loop.
    pub follower: FollowerOptions,
    /// How long a write waits for `acks=quorum|all` before answering that it timed out.
    pub acks_timeout: Duration,
    /// Snapshots and log compaction.
    pub compaction: CompactionOptions,
}

impl Default for NodeOptions {
    fn default() -> NodeOptions {
        NodeOptions {
            leader: LeaderOptions::default(),
            follower: FollowerOptions::default(),
            acks_timeout: Duration::from_secs(5),
            compaction: CompactionOptions::default(),
        }
    }
}

/// What the node is in the cluster, with the state that role needs: one value behind one lock,
/// so a node is always exactly one of them, and changing role is one assignment
/// ([`Node::change_role`]).
#[derive(Debug)]
enum RoleState {
    /// Takes writes and answers fetches.
    Leader(Box<LeaderState>),
    /// Copies the log of the leader at `leader_url` (`None`: knows no leader).
    Follower {
        /// The leader's base URL.
        leader_url: Option<String>,
        /// The epoch it follows in (the controller's, or the highest heard).
        epoch: u64,
        /// The fetch loop's state machine (boxed: its jitter generator is large).
        state: Box<FollowerState>,
    },
}

impl RoleState {
    fn role(&self) -> Role {
        match self {
            RoleState::Leader(_) => Role::Leader,
            RoleState::Follower {
                leader_url: Some(leader_url),
                ..
            } => Role::Follower {
                leader_url: leader_url.clone(),
            },
            RoleState::Follower { .. } => Role::NoLeader,
        }
    }

    /// A fetch's answer from a node that does not lead (`None`: it leads).
    fn not_leader_answer(&self) -> Option<FetchResponse> {
        match self {
            RoleState::Leader(_) => None,
            RoleState::Follower {
                leader_url,
                epoch,
                state,
            } => Some(FetchResponse::NotLeader {
                leader_epoch: (*epoch).max(state.leader_epoch()),
                leader_url: leader_url.clone(),
            }),
        }
    }

    fn not_leader(&self) -> Error {
        match self {
            RoleState::Follower {
                leader_url: Some(leader_url),
                ..
            } => Error::NotLeader {
                leader_url: Some(leader_url.clone()),
            },
            RoleState::Follower { epoch, .. } => Error::Unavailable(format!(
                "no leader is known in epoch {epoch} right now (an election is under way, or \
                 no in-sync replica is up); retry"
            )),
            RoleState::Leader(_) => Error::NotLeader { leader_url: None },
        }
    }

    /// The highest leader epoch this role knows.
    fn epoch(&self) -> u64 {
        match self {
            RoleState::Leader(leader) => leader.epoch(),
            RoleState::Follower { epoch, state, .. } => (*epoch).max(state.leader_epoch()),
        }
    }
}

/// A store with its replication role.
///
/// Lock order: `admission` before `role` before `meta`'s writer (a new epoch — to follow, or
/// claimed to lead — is recorded before the role change, under the writer alone,
/// `Node::apply_cluster_view`); `meta`'s readers wait for no writer.
#[derive(Debug)]
pub struct Node {
    store: Arc<Store>,
    data_dir: std::path::PathBuf,
    meta: SavedMeta,
    /// Held (shared) by a write from its role check to its submit, and exclusively by a role
    /// change: no write admitted under one role reaches the log under another.
    admission: RwLock<()>,
    role: Mutex<RoleState>,
    /// This node's id under the controller (`None`: a legacy node).
    node_id: Option<u64>,
    /// The epoch this node was named leader of but may not lead (it led it before a restart).
    reelection_wanted: Mutex<Option<u64>>,
    /// Set when this node was named leader of an epoch it led before a restart, until it leads
    /// a new epoch or follows a leader ([`Node::awaits_role_after_leading`]).
    awaits_role_after_leading: std::sync::atomic::AtomicBool,
    /// An epoch this process recorded as led in `node.meta` before taking it, of which nothing
    /// has reached the log yet ([`EpochClaim`]).
    epoch_claim: Mutex<Option<EpochClaim>>,
    /// Bumped at every role change, so a held fetch, a waiting write or a fetch loop started
    /// for the old role notices at once.
    role_changes: watch::Sender<u64>,
    commit: watch::Sender<u64>,
    applied: watch::Sender<u64>,
    /// Bumped when what a waiting write may be acknowledged by moves other than the commit id
    /// (a lease, the ISR's held marks; every acknowledgement under a legacy leader).
    progress: watch::Sender<u64>,
    /// Bumped at every follower acknowledgement (a planned transfer waits for its target's).
    acknowledgements: watch::Sender<u64>,
    /// Replication stream counters.
    streams: streaming::StreamCounters,
    options: NodeOptions,
    compaction: Mutex<CompactionHistory>,
    /// No entry above this id carries [`LARGE_WORK_BYTES`] or more: reading or applying
    /// entries up to it may be work of a second, done [`off_the_workers`]. Raised by every
    /// large write and every large batch appended; at open, the log's last id (the sizes of
    /// the entries already held are not known), so a follower's catch-up reads and the first
    /// applies go off the workers too.
    large_entries_through: AtomicU64,
    /// Large writes being submitted, whose ids are not known yet (their frames may be read
    /// before [`Node::wrote_large_entries_through`] records them).
    large_writes_in_flight: AtomicU64,
    /// Since when, and under which role generation, writes have found the ISR too small to
    /// commit them (`Node::wait_for_in_sync`); `None` once one found it large enough.
    short_of_in_sync: Mutex<Option<(Instant, u64)>>,
    /// Whether `short_of_in_sync` is set: the one thing a write reads of it when the ISR is
    /// large enough.
    short_of_in_sync_flag: AtomicBool,
    /// Where a submit may wait on the disk, or hold the store's and the log's locks for long —
    /// under `interval`/`never`, where it writes (`Store::submit_writes`), near the end of the
    /// active segment, where it may roll it ([`ROLL_NEAR_BYTES`]), and for a large write
    /// ([`LARGE_WORK_BYTES`]: encoding it takes a while) — the leader's writes take turns here
    /// to submit, and so do the writes that find a turn taken: one whose disk hangs holds its
    /// own worker, and the writes behind it wait without one (on those locks they would hold
    /// every worker, and the node would answer nothing). Elsewhere a submit only queues its
    /// frames, and writes take no turn: at 64 connections under `batch`, taking turns cost
    /// about 5 % of the rate.
    submit_turns: tokio::sync::Mutex<()>,
}

/// [`LeaderState::ack_marks`] before and after an acknowledgement.
type AckMarks = (Option<(u64, u64)>, Option<(u64, u64)>);

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Waits until `progress` or `role_changes` moves; false if `deadline` passes first.
async fn progress_or_role_change(
    deadline: tokio::time::Instant,
    progress: &mut watch::Receiver<u64>,
    role_changes: &mut watch::Receiver<u64>,
) -> bool {
    tokio::time::timeout_at(deadline, async {
        tokio::select! {
            _ = progress.changed() => {}
            _ = role_changes.changed() => {}
        }
    })
    .await
    .is_ok()
}

/// Writes take turns to submit ([`Node::submit_turns`]), off the workers, while the log's
/// active segment has less room than this left (the last 3 % of a 64 MiB segment): the small
/// writes in flight at once (each below [`LARGE_WORK_BYTES`]; a large one takes its turn
/// anyway) fit in it many times over, so the one that rolls the segment is among them.
const ROLL_NEAR_BYTES: u64 = 2 * LARGE_WORK_BYTES as u64;

/// A write or a batch of the leader's frames carrying at least this many bytes has its WAL
/// work — encoding, compressing, checksumming, writing, and the `fdatasync` its ticket may run
/// — done [`off_the_workers`]: tens of MiB take a second or more, and a worker held that long
/// stops the node's heartbeats (its session expires after 550 ms of silence, and the
/// controller fences a leader busy with a write). Below it the work takes microseconds, and a
/// hand-off to another thread would cost more than it saves.
pub const LARGE_WORK_BYTES: usize = 1 << 20;

/// Runs `work`, which blocks for long, without holding up the async runtime: on a
/// multi-threaded runtime the calling worker hands its queue and the I/O and timer drivers
/// to another thread for the duration (`tokio::task::block_in_place`); elsewhere — a
/// current-thread runtime, no runtime — it runs in place.
fn off_the_workers<R>(work: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

fn shared<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn exclusive<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Node {
    /// Opens a node whose role the controller decides ([`Node::apply_cluster_view`]): it
    /// starts following nobody — serving reads of what it has, refusing writes — in the epoch
    /// its meta file remembers. `node_id` is its id under the controller, sent with every fetch.
    pub fn open_controlled(
        store: Arc<Store>,
        data_dir: &Path,
        node_id: u64,
        mut options: NodeOptions,
    ) -> Result<Node> {
        let meta = NodeMeta::load(&**store.file_system(), data_dir)?.unwrap_or_default();
        options.follower.node_id = node_id;
        let state = follower_state(&store, &meta, &options.follower, true);
        let role = RoleState::Follower {
            leader_url: None,
            epoch: meta.epoch,
            state: Box::new(state),
        };
        let commit_id = meta.commit_id;
        Ok(Node::new(
            store,
            data_dir,
            meta,
            role,
            Some(node_id),
            commit_id,
            options,
        ))
    }

    /// A legacy leader (before the controller): makes `store` the leader's, joins (or
    /// creates) the cluster recorded in `data_dir`, starts a new epoch above every epoch in the
    /// meta file and the log, and persists it before any write can use it. No lease, no no-op.
    pub fn open_leader(store: Arc<Store>, data_dir: &Path, options: NodeOptions) -> Result<Node> {
        let mut meta = NodeMeta::load(&**store.file_system(), data_dir)?.unwrap_or_default();
        let epoch = next_epoch(&meta, &store);
        if meta.cluster_id == 0 {
            meta.cluster_id = rand::random::<u64>().max(1);
        }
        // Nothing reads how long this save waits: the node is not open yet.
        let files = MetaFiles {
            fs: &**store.file_system(),
            data_dir,
            saving: &kv_wal::BusySince::default(),
        };
        persist_epoch(&files, &mut meta, epoch, true)?;
        store.set_epoch(epoch);
        let mut leader = LeaderState::new(meta.cluster_id, epoch, options.leader.clone());
        leader.restore_commit(meta.commit_id.min(store.durable_id()));
        leader.recompute_commit(store.durable_id());
        tracing::info!(cluster_id = %format!("{:016x}", meta.cluster_id), epoch, "leading");
        let commit_id = leader.commit_id();
        Ok(Node::new(
            store,
            data_dir,
            meta,
            RoleState::Leader(Box::new(leader)),
            None,
            commit_id,
            options,
        ))
    }

    /// A legacy follower of `leader_url` (before the controller).
    pub fn open_follower(
        store: Arc<Store>,
        data_dir: &Path,
        leader_url: String,
        options: NodeOptions,
    ) -> Result<Node> {
        let meta = NodeMeta::load(&**store.file_system(), data_dir)?.unwrap_or_default();
        let state = follower_state(&store, &meta, &options.follower, false);
        let role = RoleState::Follower {
            leader_url: Some(leader_url),
            epoch: meta.epoch,
            state: Box::new(state),
        };
        let commit_id = meta.commit_id;
        Ok(Node::new(
            store, data_dir, meta, role, None, commit_id, options,
        ))
    }

    fn new(
        store: Arc<Store>,
        data_dir: &Path,
        meta: NodeMeta,
        role: RoleState,
        node_id: Option<u64>,
        commit_id: u64,
        options: NodeOptions,
    ) -> Node {
        let applied_id = store.applied_id();
        let large_entries_through = AtomicU64::new(store.last_id());
        Node {
            store,
            data_dir: data_dir.to_owned(),
            meta: SavedMeta::new(meta),
            admission: RwLock::new(()),
            role: Mutex::new(role),
            node_id,
            reelection_wanted: Mutex::new(None),
            awaits_role_after_leading: std::sync::atomic::AtomicBool::new(false),
            epoch_claim: Mutex::new(None),
            role_changes: watch::Sender::new(0),
            commit: watch::Sender::new(commit_id),
            applied: watch::Sender::new(applied_id),
            progress: watch::Sender::new(0),
            acknowledgements: watch::Sender::new(0),
            streams: streaming::StreamCounters::default(),
            options,
            compaction: Mutex::new(CompactionHistory::default()),
            large_entries_through,
            large_writes_in_flight: AtomicU64::new(0),
            short_of_in_sync: Mutex::new(None),
            short_of_in_sync_flag: AtomicBool::new(false),
            submit_turns: tokio::sync::Mutex::new(()),
        }
    }

    /// Records that the entries through `id` include one of [`LARGE_WORK_BYTES`] or more.
    fn wrote_large_entries_through(&self, id: u64) {
        self.large_entries_through.fetch_max(id, Ordering::Release);
    }

    /// Whether the entries from `id` on may include one of [`LARGE_WORK_BYTES`] or more.
    fn may_be_large_from(&self, id: u64) -> bool {
        self.large_writes_in_flight.load(Ordering::Acquire) > 0
            || id <= self.large_entries_through.load(Ordering::Acquire)
    }

    /// Replaces the role by what `change` makes of it, with writes held off (no write admitted
    /// under the old role reaches the log under the new one), then tells everyone waiting on
    /// the old role (held fetches, waiting writes, the fetch loop). `change` may also change
    /// the role in place; it returns the new role (`None`: keep it) and a value for the caller.
    fn change_role<R>(
        &self,
        change: impl FnOnce(&mut RoleState, &mut NodeMeta) -> Result<(Option<RoleState>, R)>,
    ) -> Result<R> {
        let _admission = exclusive(&self.admission);
        let mut role = lock(&self.role);
        let (next, value) = {
            let mut meta = self.meta.write();
            change(&mut role, &mut meta)?
        };
        let Some(next) = next else {
            return Ok(value);
        };
        if let RoleState::Leader(leader) = &next {
            // This leadership's commit id is its own: a follower's "commit as last heard" may
            // be above what this node holds, and must not acknowledge its new writes.
            self.commit.send_replace(leader.commit_id());
        }
        *role = next;
        drop(role);
        self.role_changes.send_modify(|generation| *generation += 1);
        Ok(value)
    }

    /// A follower of `leader_url` (`None`: of nobody) in `epoch`: records the epoch first if it
    /// is new, and resumes the follower's state from what the node has heard and committed.
    fn follower_role(
        &self,
        meta: &mut NodeMeta,
        leader_url: Option<String>,
        epoch: u64,
    ) -> Result<RoleState> {
        if epoch > meta.epoch {
            persist_epoch(&self.meta_files(), meta, epoch, false)?;
        }
        let state = follower_state(
            &self.store,
            meta,
            &self.options.follower,
            self.node_id.is_some(),
        );
        Ok(RoleState::Follower {
            leader_url,
            epoch: epoch.max(meta.epoch),
            state: Box::new(state),
        })
    }

    /// A fetch told this leader of a higher epoch: it was replaced. It stops acknowledging at
    /// once (its waiting writes end "stepped down") and follows nobody until the controller's
    /// view names the new leader. The epoch heard is kept in memory only.
    fn step_down(&self, heard_epoch: u64) {
        let controlled = self.node_id.is_some();
        let changed = self.change_role(|role, meta| {
            let RoleState::Leader(leader) = role else {
                return Ok((None, ()));
            };
            tracing::warn!(
                epoch = leader.epoch(),
                heard_epoch,
                "a follower knows a newer leader epoch: stepping down"
            );
            let state = follower_state(&self.store, meta, &self.options.follower, controlled);
            let follower = RoleState::Follower {
                leader_url: None,
                epoch: heard_epoch.max(leader.epoch()),
                state: Box::new(state),
            };
            Ok((Some(follower), ()))
        });
        if let Err(error) = changed {
            tracing::error!(%error, "cannot step down");
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// How long the disk has kept the save of the node's meta file in flight waiting (zero:
    /// none), as `kv_wal::WalStats::disk_wait_seconds` tells it of the log's writes: read from
    /// an atomic, never waiting for the save. A save waits under the meta's writer, which a
    /// role change takes, so a node whose meta save hangs keeps its old role meanwhile.
    pub fn meta_save_wait(&self) -> Duration {
        self.meta.saving().waited()
    }

    /// The record [`Node::meta_save_wait`] reads, for a watch that reads it without the node.
    pub fn meta_saves(&self) -> Arc<kv_wal::BusySince> {
        self.meta.saving().clone()
    }

    /// Where saves of the meta file go, marked in flight for [`Node::meta_save_wait`].
    fn meta_files(&self) -> MetaFiles<'_> {
        MetaFiles {
            fs: &**self.store.file_system(),
            data_dir: &self.data_dir,
            saving: self.meta.saving(),
        }
    }

    /// The role.
    pub fn role(&self) -> Role {
        lock(&self.role).role()
    }

    /// This node's id under the controller (`None`: a legacy node).
    pub fn node_id(&self) -> Option<u64> {
        self.node_id
    }

    /// The commit id (followers: as last heard).
    pub fn commit_id(&self) -> u64 {
        *self.commit.borrow()
    }

    /// Raises the commit id and applies up to it (never past what is durable here).
    /// After a follower's acknowledgement (a fetch, or an acknowledgement on a stream) moved
    /// the leader's state: publishes the commit id, and wakes waiting writes only when the
    /// marks they may also wait for moved (`marks`: before and after) — not every write at
    /// every acknowledgement of every follower.
    fn after_acknowledgement(&self, commit_id: u64, marks: AckMarks) {
        // A commit id already published was applied through then (it never exceeds the
        // leader's durable id): most acknowledgements of a busy leader move nothing.
        if commit_id > *self.commit.borrow() {
            self.publish_commit(commit_id);
        }
        let (before, after) = marks;
        if before.is_none() || before != after {
            self.progress.send_modify(|count| *count += 1);
        }
        self.acknowledgements.send_modify(|count| *count += 1);
    }

    fn publish_commit(&self, commit_id: u64) {
        self.commit.send_if_modified(|current| {
            let raised = commit_id > *current;
            if raised {
                *current = commit_id;
            }
            raised
        });
        let through = self.commit_id().min(self.store.durable_id());
        let applied = if self.may_be_large_from(self.store.applied_id() + 1) {
            off_the_workers(|| self.store.apply_through(through))
        } else {
            self.store.apply_through(through)
        };
        self.applied.send_if_modified(|current| {
            let raised = applied > *current;
            if raised {
                *current = applied;
            }
            raised
        });
    }

    /// Runs `action` on the leader's state; [`Error::NotLeader`] (or [`Error::Unavailable`]
    /// with no leader known) when this node does not lead.
    fn with_leader<R>(&self, action: impl FnOnce(&mut LeaderState) -> R) -> Result<R> {
        match &mut *lock(&self.role) {
            RoleState::Leader(leader) => Ok(action(leader)),
            other => Err(other.not_leader()),
        }
    }

    /// Runs `action` on the follower's state; `None` when this node does not follow.
    fn with_follower<R>(&self, action: impl FnOnce(&mut FollowerState) -> R) -> Option<R> {
        match &mut *lock(&self.role) {
            RoleState::Follower { state, .. } => Some(action(state)),
            RoleState::Leader(_) => None,
        }
    }

    /// Waits until the map has applied `id` (for read-your-writes on any node); false if
    /// `timeout` passes first.
    pub async fn wait_applied(&self, id: u64, timeout: Duration) -> bool {
        let mut applied = self.applied.subscribe();
        tokio::time::timeout(timeout, applied.wait_for(|applied| *applied >= id))
            .await
            .is_ok_and(|result| result.is_ok())
    }

    /// Saves the highest leader epoch heard and the applied (committed) id in the node's meta
    /// file, if they moved. The maintenance task calls it every second and kvd at shutdown;
    /// the follower loop calls it as soon as it hears a new epoch. It waits on the disk: an
    /// async caller runs it off the workers (`off_the_workers`). Readers of the meta do not
    /// wait for it (`SavedMeta`).
    pub fn persist_progress(&self) -> Result<()> {
        let epoch_heard = self
            .with_follower(|state| state.leader_epoch())
            .unwrap_or(0);
        let mut meta = self.meta.write();
        // Read under the lock: a cut lowering the commit id (`forget_committed_after`) is never
        // undone by an applied id read before it.
        let applied_id = self.store.applied_id();
        if epoch_heard <= meta.epoch && applied_id <= meta.commit_id {
            return Ok(());
        }
        let mut next = *meta;
        next.epoch = next.epoch.max(epoch_heard);
        next.commit_id = next.commit_id.max(applied_id);
        self.meta_files().save(&next)?;
        *meta = next;
        Ok(())
    }

    /// The commit id a restart may apply up to at once (from the meta file): everything for a
    /// single-node legacy leader (durable means committed), the saved commit id otherwise
    /// (pass [`Role::NoLeader`] for a node opened with [`Node::open_controlled`]).
    pub fn apply_limit_at_open(
        fs: &dyn kv_wal::fs::FileSystem,
        data_dir: &Path,
        role: &Role,
        write_quorum: usize,
    ) -> Result<Option<u64>> {
        if *role == Role::Leader && write_quorum <= 1 {
            return Ok(None);
        }
        Ok(Some(
            NodeMeta::load(fs, data_dir)?.unwrap_or_default().commit_id,
        ))
    }

    fn adopt(&self, cluster_id: Option<u64>) -> Result<()> {
        let Some(cluster_id) = cluster_id else {
            return Ok(());
        };
        let mut meta = self.meta.write();
        if meta.cluster_id == cluster_id {
            return Ok(());
        }
        let next = NodeMeta {
            cluster_id,
            ..*meta
        };
        self.meta_files().save(&next)?;
        *meta = next;
        tracing::info!(cluster_id = %format!("{cluster_id:016x}"), "joined the cluster");
        Ok(())
    }
}

/// The epoch `open_leader` takes: one above every epoch in the meta file and the log.
fn next_epoch(meta: &NodeMeta, store: &Store) -> u64 {
    meta.epoch.max(store.last_entry_epoch().unwrap_or(0)) + 1
}

/// The highest epoch this node has led or holds entries of: under the controller it may lead
/// only above. An epoch `claim`ed by this process and still unused does not count.
fn highest_epoch_led(meta: &NodeMeta, store: &Store, claim: Option<EpochClaim>) -> u64 {
    let led = match claim {
        Some(claim) if claim.epoch == meta.led_epoch => claim.led_before,
        _ => meta.led_epoch,
    };
    led.max(store.last_entry_epoch().unwrap_or(0))
}

/// An epoch a node named its leader records as led in `node.meta` before it takes the role,
/// off the locks every request takes (`Node::claim_epoch`): a disk that hangs in that save
/// holds the thread applying the view, not the node. Until the epoch's first entry is
/// submitted the claim is unused, and this process may still take that epoch (its view again,
/// once a full disk has room); a restart forgets the claim, and the epoch then counts as led
/// (nothing of it may have left this node, but the node cannot tell).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EpochClaim {
    epoch: u64,
    /// `led_epoch` before the claim.
    led_before: u64,
}

/// Records `epoch` in the meta file (before anything of it is written or followed), and as led
/// when this node leads it.
fn persist_epoch(files: &MetaFiles, meta: &mut NodeMeta, epoch: u64, led: bool) -> Result<()> {
    let mut next = *meta;
    next.epoch = next.epoch.max(epoch);
    if led {
        next.led_epoch = next.led_epoch.max(epoch);
    }
    files.save(&next)?;
    *meta = next;
    Ok(())
}

/// A follower's state resumed from what the node has heard and committed (applied entries are
/// committed: never cut below them either, unless the controller's leader says so).
fn follower_state(
    store: &Store,
    meta: &NodeMeta,
    options: &FollowerOptions,
    controlled: bool,
) -> FollowerState {
    let commit_seen = meta.commit_id.max(store.applied_id());
    let state = FollowerState::resume(options.clone(), meta.cluster_id, meta.epoch, commit_seen);
    if controlled {
        state.with_epochs_from_controller()
    } else {
        state
    }
}

/// Most ids of lost committed entries a new leader fills with no-ops (about 40 bytes of log
/// each: 1 Mi of them is ~40 MiB).
const LOST_IDS_FILLED_MAX: u64 = 1 << 20;

/// A leader whose log ends below the commit id it recorded (allowed to lead by
/// [`crate::view::may_lead`] only alone in the ISR: nobody else may hold what it lost — a
/// deleted last segment, a power cut under `never`) writes a no-op of its new epoch under
/// each lost id the log would hand out again (none after a point-in-time repair, whose next
/// id is past them), so that an id once committed never names another write (clients hold
/// them as ETags and `min_id`s) while the log stays contiguous for followers. A gap larger
/// than [`LOST_IDS_FILLED_MAX`] is not filled (its ids are handed out again); either way the
/// loss is logged as an error.
fn fill_lost_ids(store: &Store, meta: &NodeMeta, epoch: u64) -> Result<()> {
    let last_id = store.last_id();
    if meta.commit_id <= last_id {
        return Ok(());
    }
    // The lost ids the log would hand out again: none when it already continues past them (a
    // point-in-time repair moves its next id past every id it saw).
    let lost = (meta.commit_id + 1).saturating_sub(store.next_id());
    let filled = lost <= LOST_IDS_FILLED_MAX;
    tracing::error!(
        epoch,
        last_id,
        committed_id = meta.commit_id,
        "leading without entries this node recorded as committed: they are lost (no other \
         in-sync replica may hold them); {}",
        if lost == 0 {
            "the log already continues past their ids"
        } else if filled {
            "their ids are filled with no-ops, never handed out again"
        } else {
            "too many to fill with no-ops: their ids are handed out again"
        }
    );
    if filled {
        for _ in 0..lost {
            // Durable in order: the epoch's own no-op, written next and waited for, covers
            // these.
            let _filler = store.submit(Op::Noop)?;
        }
    }
    Ok(())
}

/// The leader's side of a change to leadership under the controller: checks that `epoch` is
/// new, stamps new entries with it, fills the ids of committed entries it lost with no-ops
/// ([`fill_lost_ids`]), writes its no-op (its epoch's last entry before new writes; commits
/// count from it on), persists the epoch as led, and starts the commit id at what this node knows
/// committed (never above what it holds durably).
#[allow(clippy::too_many_arguments)]
fn take_leadership(
    store: &Store,
    files: &MetaFiles,
    meta: &mut NodeMeta,
    claim: Option<EpochClaim>,
    node_id: u64,
    epoch: u64,
    known_commit: u64,
    membership: Membership,
    options: &LeaderOptions,
) -> Result<(LeaderState, kv_wal::AppendTicket)> {
    let highest = highest_epoch_led(meta, store, claim);
    if epoch <= highest {
        return Err(Error::StaleEpoch { epoch, highest });
    }
    // The node claims the epoch before (`EpochClaim`: recorded as led off its locks). A log
    // without room for the no-op (`kv_wal::Error::OutOfSpace`: nothing appended) leaves the
    // claim unused, so the same view can be taken again once there is room, instead of each
    // try using up an epoch. Unclaimed, the no-op goes to the log before the meta file
    // records the epoch as led, for the same reason. Nothing of the epoch leaves this node
    // before the meta file records it (the role is installed after), and an epoch whose no-op
    // reached the log counts as led (`highest_epoch_led`) even if recording it fails.
    let previous_epoch = store.epoch();
    store.set_epoch(epoch);
    let submitted = fill_lost_ids(store, meta, epoch).and_then(|()| Ok(store.submit(Op::Noop)?));
    let noop = match submitted {
        Ok(noop) => noop,
        Err(error) => {
            store.set_epoch(previous_epoch);
            return Err(error);
        }
    };
    if meta.led_epoch < epoch {
        // Not claimed before (`EpochClaim`): recorded here, under the caller's locks.
        persist_epoch(files, meta, epoch, true)?;
    }
    let noop_id = noop.id;
    let mut leader = LeaderState::elected(
        meta.cluster_id,
        epoch,
        node_id,
        noop_id,
        membership,
        options.clone(),
        Instant::now(),
    );
    leader.restore_commit(known_commit.min(store.durable_id()));
    leader.recompute_commit(store.durable_id());
    tracing::info!(cluster_id = %format!("{:016x}", meta.cluster_id), epoch, noop_id, "leading");
    Ok((leader, noop.ticket))
}
