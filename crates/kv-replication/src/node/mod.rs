//! The node: a store plus its replication role, driven on tokio. The role is one
//! [`RoleState`] — a leader with its [`LeaderState`], or a follower with its leader's URL and
//! [`FollowerState`] — behind one lock, taken at open and changed at run time by
//! [`Node::become_leader`] and [`Node::become_follower`]. The decisions are made by the
//! sans-I/O state machines; the submodules drive them, one concern each:
//!
//! - [`leading`]: the leader's driver — writes that wait for their acknowledgements, and the
//!   long-polled fetch.
//! - [`following`]: the follower's driver — the fetch loop over a [`crate::Transport`].
//! - [`snapshot_transfer`]: a follower downloading and installing the leader's snapshot, and
//!   the leader serving it in chunks.
//! - [`maintenance`]: snapshots and log compaction, and the background task that runs them.
//! - [`status`]: what `/cluster_status` and `/compaction/status` show.
//!
//! This module holds what they share: the role, the node's meta file, and the commit and
//! applied ids it publishes.

pub mod following;
pub mod leading;
pub mod maintenance;
pub mod snapshot_transfer;
pub mod status;

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kv_store::Store;
use tokio::sync::watch;

use crate::compaction::{CompactionHistory, CompactionOptions};
use crate::error::{Error, Result};
use crate::follower::{FollowerOptions, FollowerState};
use crate::leader::{LeaderOptions, LeaderState};
use crate::log_view::LogView;
use crate::meta::NodeMeta;

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
/// ([`Node::become_leader`], [`Node::become_follower`]).
#[derive(Debug)]
enum RoleState {
    /// Takes writes and answers fetches.
    Leader(LeaderState),
    /// Copies the log of the leader at `leader_url`.
    Follower {
        /// The leader's base URL.
        leader_url: String,
        /// The fetch loop's state machine (boxed: its jitter generator is large).
        state: Box<FollowerState>,
    },
}

impl RoleState {
    fn role(&self) -> Role {
        match self {
            RoleState::Leader(_) => Role::Leader,
            RoleState::Follower { leader_url, .. } => Role::Follower {
                leader_url: leader_url.clone(),
            },
        }
    }

    fn not_leader(&self) -> Error {
        Error::NotLeader {
            leader_url: match self {
                RoleState::Leader(_) => None,
                RoleState::Follower { leader_url, .. } => Some(leader_url.clone()),
            },
        }
    }
}

/// A store with its replication role.
///
/// Lock order: `role` before `meta` (a role change persists the epoch under both).
#[derive(Debug)]
pub struct Node {
    store: Arc<Store>,
    data_dir: std::path::PathBuf,
    meta: Mutex<NodeMeta>,
    role: Mutex<RoleState>,
    /// Bumped at every role change, so a held fetch, a waiting write or a fetch loop started
    /// for the old role notices at once.
    role_changes: watch::Sender<u64>,
    commit: watch::Sender<u64>,
    applied: watch::Sender<u64>,
    progress: watch::Sender<u64>,
    options: NodeOptions,
    compaction: Mutex<CompactionHistory>,
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Node {
    /// Makes `store` the leader's: joins (or creates) the cluster recorded in `data_dir`,
    /// starts a new epoch above every epoch in the meta file and the log, and persists it
    /// before any write can use it (as [`Node::become_leader`] does).
    pub fn open_leader(store: Arc<Store>, data_dir: &Path, options: NodeOptions) -> Result<Node> {
        let mut meta = NodeMeta::load(&**store.file_system(), data_dir)?.unwrap_or_default();
        let epoch = next_epoch(&meta, &store);
        let known_commit = meta.commit_id;
        let leader = take_leadership(
            &store,
            data_dir,
            &mut meta,
            epoch,
            known_commit,
            &options.leader,
        )?;
        let commit_id = leader.commit_id();
        Ok(Node::new(
            store,
            data_dir,
            meta,
            RoleState::Leader(leader),
            commit_id,
            options,
        ))
    }

    /// Makes `store` a follower of `leader_url` (as [`Node::become_follower`] does).
    pub fn open_follower(
        store: Arc<Store>,
        data_dir: &Path,
        leader_url: String,
        options: NodeOptions,
    ) -> Result<Node> {
        let mut meta = NodeMeta::load(&**store.file_system(), data_dir)?.unwrap_or_default();
        let role = take_followership(
            &store,
            data_dir,
            &mut meta,
            leader_url,
            0,
            &options.follower,
        )?;
        let commit_id = meta.commit_id;
        Ok(Node::new(store, data_dir, meta, role, commit_id, options))
    }

    fn new(
        store: Arc<Store>,
        data_dir: &Path,
        meta: NodeMeta,
        role: RoleState,
        commit_id: u64,
        options: NodeOptions,
    ) -> Node {
        let applied_id = store.applied_id();
        Node {
            store,
            data_dir: data_dir.to_owned(),
            meta: Mutex::new(meta),
            role: Mutex::new(role),
            role_changes: watch::Sender::new(0),
            commit: watch::Sender::new(commit_id),
            applied: watch::Sender::new(applied_id),
            progress: watch::Sender::new(0),
            options,
            compaction: Mutex::new(CompactionHistory::default()),
        }
    }

    /// Makes this node the leader in `epoch`, at run time: the seam failover uses when the
    /// controller names this node the data leader (`open_leader` takes the same path at
    /// start). `epoch` must be above every epoch this node has led, followed or holds entries
    /// of; it is on disk (`node.meta`) before this returns, so no write of the epoch can come
    /// first. The commit id starts at what this node knows committed (never above what it
    /// holds durably) and moves with the followers' fetches. A fetch loop still running for
    /// the follower role ends on its own ([`Node::run_follower`]).
    pub fn become_leader(&self, epoch: u64) -> Result<()> {
        let mut role = lock(&self.role);
        let leader = {
            let mut meta = lock(&self.meta);
            let known_commit = meta.commit_id.max(self.commit_id());
            take_leadership(
                &self.store,
                &self.data_dir,
                &mut meta,
                epoch,
                known_commit,
                &self.options.leader,
            )?
        };
        // This leadership's commit id is its own: a follower's "commit as last heard" may
        // be above what this node holds, and must not acknowledge its new writes.
        self.commit.send_replace(leader.commit_id());
        *role = RoleState::Leader(leader);
        drop(role);
        self.role_changes.send_modify(|generation| *generation += 1);
        tracing::info!(epoch, "now leading");
        Ok(())
    }

    /// Makes this node a follower of `leader_url`, at run time: the seam failover uses to
    /// demote a leader or re-point a follower (`open_follower` takes the same path at start
    /// with `leader_epoch` 0). `leader_epoch` is the epoch the new leader leads, if known: it
    /// is recorded before anything is fetched, and answers from any older epoch are refused
    /// (the node also refuses epochs below every one it led or heard before). Writes are
    /// refused from now on; a held fetch answers "not the leader". Start the fetch loop
    /// ([`Node::run_follower`]) with a transport to `leader_url` afterwards.
    pub fn become_follower(&self, leader_url: String, leader_epoch: u64) -> Result<()> {
        let mut role = lock(&self.role);
        let follower = {
            let mut meta = lock(&self.meta);
            take_followership(
                &self.store,
                &self.data_dir,
                &mut meta,
                leader_url,
                leader_epoch,
                &self.options.follower,
            )?
        };
        *role = follower;
        drop(role);
        self.role_changes.send_modify(|generation| *generation += 1);
        Ok(())
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The role.
    pub fn role(&self) -> Role {
        lock(&self.role).role()
    }

    /// The commit id (followers: as last heard).
    pub fn commit_id(&self) -> u64 {
        *self.commit.borrow()
    }

    /// Raises the commit id and applies up to it (never past what is durable here).
    fn publish_commit(&self, commit_id: u64) {
        self.commit.send_if_modified(|current| {
            let raised = commit_id > *current;
            if raised {
                *current = commit_id;
            }
            raised
        });
        let through = self.commit_id().min(self.store.durable_id());
        let applied = self.store.apply_through(through);
        self.applied.send_if_modified(|current| {
            let raised = applied > *current;
            if raised {
                *current = applied;
            }
            raised
        });
    }

    /// Runs `action` on the leader's state; [`Error::NotLeader`] when this node does not lead.
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
    /// file, if they moved. kvd calls it every second and at shutdown; the follower loop calls
    /// it as soon as it hears a new epoch.
    pub fn persist_progress(&self) -> Result<()> {
        let epoch_heard = self
            .with_follower(|state| state.leader_epoch())
            .unwrap_or(0);
        let applied_id = self.store.applied_id();
        let mut meta = lock(&self.meta);
        if epoch_heard <= meta.epoch && applied_id <= meta.commit_id {
            return Ok(());
        }
        let mut next = *meta;
        next.epoch = next.epoch.max(epoch_heard);
        next.commit_id = next.commit_id.max(applied_id);
        next.store(&**self.store.file_system(), &self.data_dir)?;
        *meta = next;
        Ok(())
    }

    /// The commit id a restart may apply up to at once (from the meta file): everything for a
    /// single-node leader (durable means committed), the saved commit id otherwise.
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
        let mut meta = lock(&self.meta);
        if meta.cluster_id == cluster_id {
            return Ok(());
        }
        let next = NodeMeta {
            cluster_id,
            ..*meta
        };
        next.store(&**self.store.file_system(), &self.data_dir)?;
        *meta = next;
        tracing::info!(cluster_id = %format!("{cluster_id:016x}"), "joined the cluster");
        Ok(())
    }
}

/// The epoch `open_leader` takes: one above every epoch in the meta file and the log.
fn next_epoch(meta: &NodeMeta, store: &Store) -> u64 {
    meta.epoch.max(store.last_entry_epoch().unwrap_or(0)) + 1
}

/// The leader's side of a role change: checks that `epoch` is new, joins (or creates) the
/// cluster, persists the epoch, stamps new entries with it and restores the commit id.
fn take_leadership(
    store: &Store,
    data_dir: &Path,
    meta: &mut NodeMeta,
    epoch: u64,
    known_commit: u64,
    options: &LeaderOptions,
) -> Result<LeaderState> {
    let highest = meta.epoch.max(store.last_entry_epoch().unwrap_or(0));
    if epoch <= highest {
        return Err(Error::StaleEpoch { epoch, highest });
    }
    let mut next = *meta;
    if next.cluster_id == 0 {
        next.cluster_id = rand::random::<u64>().max(1);
    }
    next.epoch = epoch;
    next.store(&**store.file_system(), data_dir)?;
    *meta = next;
    store.set_epoch(epoch);
    let mut leader = LeaderState::new(meta.cluster_id, epoch, options.clone());
    leader.restore_commit(known_commit.min(store.durable_id()));
    leader.recompute_commit(store.durable_id());
    tracing::info!(cluster_id = %format!("{:016x}", meta.cluster_id), epoch, "leading");
    Ok(leader)
}

/// The follower's side of a role change: records `leader_epoch` if it is new, and resumes the
/// follower's state from what the node has heard and committed.
fn take_followership(
    store: &Store,
    data_dir: &Path,
    meta: &mut NodeMeta,
    leader_url: String,
    leader_epoch: u64,
    options: &FollowerOptions,
) -> Result<RoleState> {
    if leader_epoch > meta.epoch {
        let mut next = *meta;
        next.epoch = leader_epoch;
        next.store(&**store.file_system(), data_dir)?;
        *meta = next;
    }
    // Applied entries are committed: never cut below them either.
    let commit_seen = meta.commit_id.max(store.applied_id());
    let state = FollowerState::resume(options.clone(), meta.cluster_id, meta.epoch, commit_seen);
    Ok(RoleState::Follower {
        leader_url,
        state: Box::new(state),
    })
}
