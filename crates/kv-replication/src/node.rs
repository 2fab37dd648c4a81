//! The node: a store plus its replication role, driven on tokio. The leader answers fetches
//! (long-polling) and waits for acknowledgements; the follower runs the fetch loop. The
//! decisions are made by [`LeaderState`] and [`FollowerState`]; this module does the waiting,
//! the I/O and the publishing of commit and applied ids.

use std::future::Future;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kv_store::{Op, Store};
use serde::Serialize;
use tokio::sync::watch;

use crate::compaction::{purge_point, CompactionOptions, PurgeReport};
use crate::error::{Error, Result};
use crate::follower::{FollowerOptions, FollowerState, LinkState, Step};
use crate::leader::{FetchDecision, FollowerStatus, LeaderOptions, LeaderState};
use crate::log_view::LogView;
use crate::meta::NodeMeta;
use crate::protocol::{FetchRequest, FetchResponse, SnapshotMeta};

/// The longest a leader holds a fetch, whatever the follower asks.
pub const FETCH_WAIT_MAX: Duration = Duration::from_secs(10);

/// How a follower reaches its leader. The HTTP implementation lives in kv-http; tests use
/// in-memory ones.
pub trait Transport: Send + Sync + 'static {
    /// Sends one fetch and returns the answer, or why there is none.
    fn fetch(
        &self,
        request: &FetchRequest,
        timeout: Duration,
    ) -> impl Future<Output = Result<FetchResponse, String>> + Send;
    /// Asks which snapshot the leader offers (`None`: it has none).
    fn snapshot_meta(
        &self,
        timeout: Duration,
    ) -> impl Future<Output = Result<Option<SnapshotMeta>, String>> + Send;
    /// Downloads `len` bytes of snapshot `applied_id` from `offset`, checked in transit (the
    /// HTTP transport checks a CRC-32C per chunk). Fewer bytes only at the end of the file.
    fn snapshot_chunk(
        &self,
        applied_id: u64,
        offset: u64,
        len: u32,
        timeout: Duration,
    ) -> impl Future<Output = Result<Vec<u8>, String>> + Send;
}

/// Which acknowledgements a write waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Acks {
    /// Durable on the leader.
    Leader,
    /// Committed: durable on a write quorum (the default).
    #[default]
    Quorum,
    /// Committed and durable on every follower that is not down.
    All,
}

impl FromStr for Acks {
    type Err = String;
    fn from_str(text: &str) -> Result<Acks, String> {
        match text {
            "leader" => Ok(Acks::Leader),
            "quorum" => Ok(Acks::Quorum),
            "all" => Ok(Acks::All),
            other => Err(format!(
                "unknown acks {other:?}: expected leader, quorum or all"
            )),
        }
    }
}

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

/// What `/cluster_status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    /// `leader` or `follower`.
    pub role: &'static str,
    /// The leader's URL (followers).
    pub leader: Option<String>,
    /// The cluster id, hex (empty for a follower that has not joined yet).
    pub cluster_id: String,
    /// The epoch this node leads in, or the leader's as last heard.
    pub epoch: u64,
    /// The commit id (followers: as last heard).
    pub commit_id: u64,
    /// The last entry applied to the map.
    pub applied_id: u64,
    /// The highest id durable here.
    pub durable_id: u64,
    /// The last id in the local log.
    pub last_id: u64,
    /// The first id in the local log.
    pub first_id: u64,
    /// The write quorum (leader).
    pub write_quorum: Option<usize>,
    /// Every follower heard from (leader).
    pub followers: Option<Vec<FollowerStatus>>,
    /// The link to the leader (followers).
    pub link: Option<LinkState>,
    /// Milliseconds since the leader last answered (followers).
    pub last_contact_age_ms: Option<u64>,
    /// Damaged batches refused (followers).
    pub corrupt_batches_refused: Option<u64>,
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
    compaction: Mutex<CompactionState>,
}

#[derive(Debug, Default)]
struct CompactionState {
    running: bool,
    snapshots_written: u64,
    last_snapshot: Option<kv_store::SnapshotInfo>,
    last_purge: Option<PurgeReport>,
    snapshots_installed: u64,
}

/// What `/compaction/status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct CompactionStatus {
    /// Snapshots on disk, newest first: `(applied_id, path)`.
    pub snapshots: Vec<(u64, String)>,
    /// The last snapshot this process wrote.
    pub last_snapshot: Option<SnapshotSummary>,
    /// What the last purge removed and kept, and why.
    pub last_purge: Option<PurgeReport>,
    /// Snapshots written by this process.
    pub snapshots_written: u64,
    /// Snapshots installed from the leader by this process.
    pub snapshots_installed: u64,
    /// The WAL's first id, segment count and bytes.
    pub wal_first_id: u64,
    /// Segments in the WAL.
    pub wal_segments: usize,
    /// Bytes in the WAL.
    pub wal_bytes: u64,
    /// Entries applied since the newest snapshot.
    pub entries_since_snapshot: u64,
    /// The policy.
    pub snapshot_every_entries: u64,
    /// The policy.
    pub snapshot_every_wal_bytes: u64,
    /// The policy.
    pub snapshot_wal_live_ratio: u64,
    /// Bytes of live data in the map (what the ratio is taken of).
    pub live_bytes: u64,
    /// The policy.
    pub snapshots_kept: usize,
    /// The policy.
    pub wal_retention_bytes: u64,
    /// The codec.
    pub codec: String,
}

/// A snapshot as `/compaction/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotSummary {
    /// The file.
    pub path: String,
    /// Its applied id.
    pub applied_id: u64,
    /// Keys in it.
    pub key_count: u64,
    /// Its size.
    pub size_bytes: u64,
    /// Bytes before compression.
    pub raw_bytes: u64,
    /// Its codec.
    pub codec: String,
    /// How long writing it took, after the view was copied.
    pub write_ms: u64,
    /// How long copying the map's consistent view took (writes go on meanwhile).
    pub view_ms: u64,
    /// The longest the copy held the map's lock at once: the longest a write waited for it.
    pub longest_lock_hold_us: u64,
}

impl From<&kv_store::SnapshotInfo> for SnapshotSummary {
    fn from(info: &kv_store::SnapshotInfo) -> SnapshotSummary {
        SnapshotSummary {
            path: info.path.display().to_string(),
            applied_id: info.applied_id,
            key_count: info.key_count,
            size_bytes: info.size_bytes,
            raw_bytes: info.raw_bytes,
            codec: info.codec.to_string(),
            write_ms: info.write_duration.as_millis() as u64,
            view_ms: info.view_duration.as_millis() as u64,
            longest_lock_hold_us: info.longest_lock_hold.as_micros() as u64,
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
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
            compaction: Mutex::new(CompactionState::default()),
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

    /// Writes `op` on the leader and waits for `acks`; returns its id. Cancel-safe in the sense
    /// that a dropped future leaves the entry to be applied when it commits.
    pub async fn write(&self, op: Op, acks: Acks) -> Result<u64> {
        let leadership = *self.role_changes.borrow();
        self.with_leader(|_| ())?;
        let submitted = self.store.submit(op)?;
        let id = submitted.id;
        submitted.ticket.await.map_err(kv_store::Error::from)?;
        let commit_id =
            self.with_leader(|leader| leader.recompute_commit(self.store.durable_id()))?;
        self.publish_commit(commit_id);
        match acks {
            Acks::Leader => Ok(id),
            Acks::Quorum => {
                let quorum = self.with_leader(|leader| leader.write_quorum())?;
                self.wait_for(
                    id,
                    leadership,
                    format!("a write quorum of {quorum}"),
                    |node| node.commit_id() >= id,
                )
                .await
            }
            Acks::All => {
                self.wait_for(id, leadership, "every live follower".to_owned(), |node| {
                    node.commit_id() >= id
                        && node
                            .with_leader(|leader| {
                                leader.all_live_followers_hold(Instant::now(), id)
                            })
                            .unwrap_or(false)
                })
                .await
            }
        }
    }

    /// Waits until `done` holds, while this node keeps the leadership it wrote `id` in
    /// (`leadership`: the role generation then); after a role change the commit id is no
    /// longer this leadership's, so nothing can be acknowledged any more.
    async fn wait_for(
        &self,
        id: u64,
        leadership: u64,
        wanted: String,
        done: impl Fn(&Node) -> bool,
    ) -> Result<u64> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.options.acks_timeout;
        let mut commits = self.commit.subscribe();
        let mut progress = self.progress.subscribe();
        let mut role_changes = self.role_changes.subscribe();
        loop {
            if *role_changes.borrow_and_update() != leadership {
                return Err(Error::SteppedDown {
                    id,
                    commit_id: self.commit_id(),
                    waited_ms: started.elapsed().as_millis() as u64,
                });
            }
            if done(self) {
                // Visible to readers once committed.
                self.publish_commit(self.commit_id());
                return Ok(id);
            }
            let changed = tokio::time::timeout_at(deadline, async {
                tokio::select! {
                    _ = commits.changed() => {}
                    _ = progress.changed() => {}
                    _ = role_changes.changed() => {}
                }
            })
            .await;
            if changed.is_err() {
                return Err(Error::AcksTimeout {
                    id,
                    commit_id: self.commit_id(),
                    wanted,
                    waited_ms: started.elapsed().as_millis() as u64,
                });
            }
        }
    }

    /// Answers a follower's fetch, holding it up to its wait (capped at [`FETCH_WAIT_MAX`])
    /// when there is nothing new. `record` is false for debugging views: they are answered but
    /// not counted as a follower's acknowledgement.
    pub async fn handle_fetch(&self, request: &FetchRequest, record: bool) -> FetchResponse {
        let wait = Duration::from_millis(u64::from(request.wait_ms)).min(FETCH_WAIT_MAX);
        let deadline = tokio::time::Instant::now() + wait;
        let mut commits = self.commit.subscribe();
        let mut role_changes = self.role_changes.subscribe();
        loop {
            let may_wait = tokio::time::Instant::now() < deadline;
            let (decision, commit_id) = match &mut *lock(&self.role) {
                RoleState::Leader(leader) => {
                    let decision =
                        leader.on_fetch(Instant::now(), request, &*self.store, may_wait, record);
                    (decision, leader.commit_id())
                }
                RoleState::Follower { leader_url, .. } => {
                    return FetchResponse::NotLeader {
                        leader_url: Some(leader_url.clone()),
                    }
                }
            };
            if record {
                self.publish_commit(commit_id);
                self.progress.send_modify(|count| *count += 1);
            }
            match decision {
                FetchDecision::Respond(response) => return response,
                FetchDecision::Wait => {
                    commits.mark_unchanged();
                    let new_entries = self.store.wal().last_watermark().wait(request.next_id);
                    let _ = tokio::time::timeout_at(deadline, async {
                        tokio::select! {
                            _ = new_entries => {}
                            _ = commits.changed() => {}
                            _ = role_changes.changed() => {}
                        }
                    })
                    .await;
                }
            }
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

    /// Runs the follower's fetch loop until `shutdown` resolves, replication stops for a
    /// reason an operator must look at (the node keeps serving reads either way), or the
    /// node's role changes ([`Node::become_leader`], [`Node::become_follower`]: a new leader
    /// needs a new loop with a transport to it).
    pub async fn run_follower<T: Transport>(
        self: Arc<Self>,
        transport: T,
        shutdown: impl Future<Output = ()>,
    ) {
        let mut role_changes = self.role_changes.subscribe();
        let role_changed = async move {
            let _ = role_changes.changed().await;
        };
        tokio::pin!(shutdown, role_changed);
        let fetch_timeout = self.options.follower.fetch_wait + Duration::from_secs(5);
        loop {
            let Some(request) = self.with_follower(|state| state.request(&*self.store)) else {
                tracing::error!("run_follower called on a leader");
                return;
            };
            let answer = tokio::select! {
                _ = &mut shutdown => return,
                _ = &mut role_changed => return,
                answer = transport.fetch(&request, fetch_timeout) => answer,
            };
            let Some((step, leader_epoch)) = self.with_follower(|state| {
                let step = match answer {
                    Ok(response) => state.on_response(Instant::now(), &request, response),
                    Err(error) => state.on_failure(Instant::now(), error),
                };
                (step, state.leader_epoch())
            }) else {
                return;
            };
            if leader_epoch > lock(&self.meta).epoch {
                // On disk before anything of the new epoch is appended: a node promoted later
                // must start above every epoch it has followed.
                if let Err(error) = self.persist_progress() {
                    tracing::error!(%error, "replication stopped: cannot record the leader's epoch");
                    self.stop_link(error.to_string());
                    return;
                }
            }
            match self.perform(step, &transport).await {
                Ok(None) => {}
                Ok(Some(delay)) => {
                    tokio::select! {
                        _ = &mut shutdown => return,
                        _ = &mut role_changed => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                Err(reason) => {
                    tracing::error!(%reason, "replication stopped");
                    self.stop_link(reason);
                    return;
                }
            }
        }
    }

    fn stop_link(&self, reason: String) {
        self.with_follower(|state| state.force_stop(reason));
    }

    /// Performs one step; returns a delay before the next fetch, or why replication stops.
    async fn perform<T: Transport>(
        &self,
        step: Step,
        transport: &T,
    ) -> Result<Option<Duration>, String> {
        match step {
            Step::InstallSnapshot {
                leader_first_id,
                adopt_cluster,
            } => {
                self.adopt(adopt_cluster)?;
                tracing::warn!(
                    leader_first_id,
                    next_id = self.store.next_id(),
                    "the leader compacted the entries this follower needs: installing its snapshot"
                );
                match self.download_and_install(transport).await {
                    Ok(applied_id) => {
                        tracing::info!(applied_id, "snapshot installed; fetching after it");
                        self.applied.send_replace(self.store.applied_id());
                        Ok(None)
                    }
                    Err(error) => {
                        let step = self.with_follower(|state| {
                            state.on_snapshot_failure(Instant::now(), error)
                        });
                        match step.unwrap_or(Step::Retry {
                            after: Duration::from_secs(1),
                        }) {
                            Step::Retry { after } => Ok(Some(after)),
                            _ => Ok(Some(Duration::from_secs(1))),
                        }
                    }
                }
            }
            Step::Append {
                frames,
                commit_id,
                adopt_cluster,
            } => {
                self.adopt(adopt_cluster)?;
                if kv_wal::frame::decode(&frames).map(|frame| frame.id).ok()
                    != Some(self.store.next_id())
                {
                    // An answer to an older request (the log moved since): fetch again.
                    return Ok(None);
                }
                kv_wal::fail_point!(FOLLOWER_AFTER_FETCH_BEFORE_APPEND)
                    .map_err(|error| format!("fail point: {error}"))?;
                let ticket = self
                    .store
                    .submit_frames(&frames, self.store.wal().sync_policy())
                    .map_err(|error| format!("cannot append the leader's entries: {error}"))?;
                ticket.await.map_err(|error| {
                    format!("cannot make the leader's entries durable: {error}")
                })?;
                self.publish_commit(commit_id);
                Ok(None)
            }
            Step::Apply {
                commit_id,
                adopt_cluster,
            } => {
                self.adopt(adopt_cluster)?;
                self.publish_commit(commit_id);
                Ok(None)
            }
            Step::Truncate { after_id } => {
                tracing::warn!(
                    after_id,
                    "this follower's log diverged from the leader's: truncating"
                );
                self.store
                    .truncate_after(after_id)
                    .map_err(|error| format!("cannot truncate the diverged suffix: {error}"))?;
                let applied = self.store.applied_id();
                self.applied.send_replace(applied);
                Ok(None)
            }
            Step::Retry { after } => {
                self.with_follower(|state| {
                    if let LinkState::Retrying { error, failures } = state.link() {
                        if *failures == 1 || failures.is_power_of_two() {
                            tracing::warn!(%error, failures, "fetch failed; retrying");
                        }
                    }
                });
                Ok(Some(after))
            }
            Step::Stop { reason } => Err(reason),
        }
    }

    /// Downloads the leader's newest snapshot into `incoming-{id}.part` in the snapshot
    /// directory (resuming a partial download of the same snapshot), checks it whole, moves it
    /// into place and installs it. Per-chunk timeouts bound the transfer; the install is not
    /// timed.
    async fn download_and_install<T: Transport>(&self, transport: &T) -> Result<u64, String> {
        let options = &self.options.compaction;
        let dir = self
            .store
            .snapshot_dir()
            .ok_or("snapshots are off on this follower (no snapshot directory)")?
            .to_owned();
        let meta = transport
            .snapshot_meta(options.snapshot_chunk_timeout)
            .await?
            .ok_or("the leader has compacted its log but offers no snapshot")?;
        let fs = self.store.file_system().clone();
        kv_wal::durable::create_dir_all_durable(&*fs, &dir).map_err(|error| error.to_string())?;
        let part_name = format!("incoming-{:020}.part", meta.applied_id);
        // Older partial downloads are of snapshots the leader no longer offers.
        for name in fs.list_dir(&dir).unwrap_or_default() {
            if name.starts_with("incoming-") && name != part_name {
                let _ = kv_wal::durable::remove_file_if_exists(&*fs, &dir.join(name));
            }
        }
        let mut part = kv_wal::durable::PartialFile::open_or_create(&*fs, &dir, &part_name)
            .map_err(|error| error.to_string())?;
        if part.len_bytes() > meta.size_bytes {
            part.clear().map_err(|error| error.to_string())?;
        }
        if part.len_bytes() > 0 {
            tracing::info!(
                offset = part.len_bytes(),
                size_bytes = meta.size_bytes,
                "resuming a snapshot download"
            );
        }
        while part.len_bytes() < meta.size_bytes {
            let offset = part.len_bytes();
            let want =
                (meta.size_bytes - offset).min(u64::from(options.snapshot_chunk_bytes)) as u32;
            let chunk = transport
                .snapshot_chunk(
                    meta.applied_id,
                    offset,
                    want,
                    options.snapshot_chunk_timeout,
                )
                .await?;
            if chunk.is_empty() || chunk.len() > want as usize {
                return Err(format!(
                    "snapshot chunk at {offset}: {} bytes for {want} asked",
                    chunk.len()
                ));
            }
            part.append(&chunk)
                .map_err(|error| format!("writing the snapshot: {error}"))?;
        }
        part.sync()
            .map_err(|error| format!("syncing the snapshot: {error}"))?;
        let part_path = part.path().to_owned();
        drop(part);
        let store = self.store.clone();
        let final_name = kv_store::snapshot::snapshot_file_name(meta.applied_id);
        tokio::task::spawn_blocking(move || -> Result<u64, String> {
            let fs = store.file_system().clone();
            if let Err(error) = kv_store::snapshot::verify_snapshot(&*fs, &part_path) {
                let _ = kv_wal::durable::remove_file_if_exists(&*fs, &part_path);
                return Err(format!(
                    "the downloaded snapshot is damaged ({error}); downloading again"
                ));
            }
            let final_path = kv_wal::durable::rename_durable(&*fs, &dir, &part_name, &final_name)
                .map_err(|error| error.to_string())?;
            store
                .install_snapshot(&final_path)
                .map_err(|error| format!("cannot install the snapshot: {error}"))
        })
        .await
        .map_err(|error| error.to_string())?
        .inspect(|_| lock(&self.compaction).snapshots_installed += 1)
    }

    /// The newest snapshot this node offers to followers.
    pub fn snapshot_meta(&self) -> Option<SnapshotMeta> {
        let (applied_id, path) = self.store.snapshots().into_iter().next()?;
        let size_bytes = kv_wal::durable::FileReader::open(&**self.store.file_system(), &path)
            .ok()?
            .len_bytes()
            .ok()?;
        Some(SnapshotMeta {
            applied_id,
            size_bytes,
        })
    }

    /// Reads `len` bytes of snapshot `applied_id` from `offset`; `None` when this node no longer
    /// has that snapshot.
    pub fn snapshot_chunk(
        &self,
        applied_id: u64,
        offset: u64,
        len: u32,
    ) -> Option<std::io::Result<Vec<u8>>> {
        let (_, path) = self
            .store
            .snapshots()
            .into_iter()
            .find(|(id, _)| *id == applied_id)?;
        let read = || -> std::io::Result<Vec<u8>> {
            use std::io::Read;
            let mut file = kv_wal::durable::FileReader::open(&**self.store.file_system(), &path)
                .map_err(std::io::Error::other)?;
            file.seek_to(offset);
            let mut chunk = Vec::with_capacity(len as usize);
            file.take(u64::from(len)).read_to_end(&mut chunk)?;
            Ok(chunk)
        };
        Some(read())
    }

    /// Whether the policy asks for a snapshot now.
    pub fn snapshot_due(&self) -> bool {
        let options = &self.options.compaction;
        if self.store.snapshot_dir().is_none() {
            return false;
        }
        let newest = self.store.newest_snapshot_id();
        let applied = self.store.applied_id();
        if applied <= newest {
            return false;
        }
        let wal_bytes_after: u64 = self
            .store
            .wal()
            .segments()
            .iter()
            .filter(|segment| segment.last_id.is_none_or(|last| last > newest))
            .map(|segment| segment.size_bytes)
            .sum();
        crate::compaction::snapshot_due(
            options,
            applied - newest,
            wal_bytes_after,
            self.store.live_bytes(),
        )
    }

    /// [`Node::snapshot_and_compact`] on a thread of its own. The view of the map is taken at
    /// normal priority (it holds the map's read lock for an instant, and a holder preempted
    /// there would make writes wait); then the thread's CPU priority drops to the lowest
    /// (nice 19 on Linux), so that on a busy machine serializing and compressing a large
    /// snapshot yields to request handling instead of raising its latency (as RocksDB does
    /// for its background work). The future resolves when the snapshot is written.
    pub async fn snapshot_and_compact_in_background(
        self: &Arc<Self>,
    ) -> Result<(kv_store::SnapshotInfo, PurgeReport)> {
        let node = self.clone();
        let (sender, receiver) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("kvd-snapshot".to_owned())
            .spawn(move || {
                let _ = sender.send(node.snapshot_and_compact_then(lower_this_threads_priority));
            })
            .map_err(|error| {
                Error::Background(format!("cannot start the snapshot thread: {error}"))
            })?;
        receiver.await.unwrap_or_else(|_| {
            Err(Error::Background(
                "the snapshot thread ended without an answer".to_owned(),
            ))
        })
    }

    /// Writes a snapshot of the applied map (writes go on meanwhile), prunes old snapshots and
    /// compacts the log. Blocking: run it on a thread of its own (see
    /// [`Node::snapshot_and_compact_in_background`]).
    pub fn snapshot_and_compact(&self) -> Result<(kv_store::SnapshotInfo, PurgeReport)> {
        self.snapshot_and_compact_then(|| {})
    }

    /// [`Node::snapshot_and_compact`], calling `after_view` once the view is copied.
    fn snapshot_and_compact_then(
        &self,
        after_view: impl FnOnce(),
    ) -> Result<(kv_store::SnapshotInfo, PurgeReport)> {
        {
            let mut state = lock(&self.compaction);
            if state.running {
                return Err(Error::Busy(
                    "a snapshot is already being written".to_owned(),
                ));
            }
            state.running = true;
        }
        // Seal a large active segment first: the compaction after the snapshot can then
        // purge it once the snapshot covers it. A log that cannot take the seal (poisoned by a
        // failed write or fsync) is still snapshotted: its applied state is sound.
        if let Err(error) = self
            .store
            .wal()
            .seal_active(crate::compaction::SEAL_BEFORE_SNAPSHOT_BYTES)
        {
            tracing::warn!(%error, "cannot seal the active WAL segment before the snapshot");
        }
        let view = self.store.snapshot_view();
        after_view();
        let written = self.store.write_snapshot_of(
            view,
            self.options.compaction.codec,
            self.options.compaction.snapshots_kept,
        );
        let result = written.map_err(Error::from).and_then(|info| {
            tracing::info!(
                applied_id = info.applied_id,
                keys = info.key_count,
                size_bytes = info.size_bytes,
                raw_bytes = info.raw_bytes,
                codec = %info.codec,
                write_ms = info.write_duration.as_millis() as u64,
                view_ms = info.view_duration.as_millis() as u64,
                longest_lock_hold_us = info.longest_lock_hold.as_micros() as u64,
                "snapshot written"
            );
            let purge = self.compact()?;
            Ok((info, purge))
        });
        let mut state = lock(&self.compaction);
        state.running = false;
        if let Ok((info, purge)) = &result {
            state.snapshots_written += 1;
            state.last_snapshot = Some(info.clone());
            state.last_purge = Some(purge.clone());
        }
        result
    }

    /// Removes the WAL segments the newest snapshot covers, keeping those live followers still
    /// need within the retention limit.
    pub fn compact(&self) -> Result<PurgeReport> {
        let Some((snapshot_id, _)) = self.store.snapshots().into_iter().next() else {
            return Ok(PurgeReport {
                snapshot_id: 0,
                purge_before: 0,
                segments_removed: Vec::new(),
                retained_for: Vec::new(),
            });
        };
        let segments: Vec<(u64, u64)> = self
            .store
            .wal()
            .segments()
            .iter()
            .filter(|segment| !segment.is_active)
            .filter_map(|segment| Some((segment.last_id?, segment.size_bytes)))
            .collect();
        let followers: Vec<(String, u64)> = self
            .with_leader(|leader| {
                leader
                    .followers(Instant::now(), self.store.last_id())
                    .into_iter()
                    .filter(|follower| follower.status != crate::leader::FollowerHealth::Down)
                    .map(|follower| (follower.follower_id, follower.next_id))
                    .collect()
            })
            .unwrap_or_default();
        let (purge_before, retained_for) = purge_point(
            snapshot_id,
            &segments,
            &followers,
            self.options.compaction.wal_retention_bytes,
        );
        let removed = self.store.purge_wal_before(purge_before)?;
        Ok(PurgeReport {
            snapshot_id,
            purge_before,
            segments_removed: removed
                .iter()
                .map(|path| path.display().to_string())
                .collect(),
            retained_for,
        })
    }

    /// What `/compaction/status` shows.
    pub fn compaction_status(&self) -> CompactionStatus {
        let options = &self.options.compaction;
        let state = lock(&self.compaction);
        let snapshots = self.store.snapshots();
        let newest = snapshots.first().map_or(0, |(id, _)| *id);
        let segments = self.store.wal().segments();
        CompactionStatus {
            snapshots: snapshots
                .iter()
                .map(|(id, path)| (*id, path.display().to_string()))
                .collect(),
            last_snapshot: state.last_snapshot.as_ref().map(SnapshotSummary::from),
            last_purge: state.last_purge.clone(),
            snapshots_written: state.snapshots_written,
            snapshots_installed: state.snapshots_installed,
            wal_first_id: LogView::first_id(&*self.store),
            wal_segments: segments.len(),
            wal_bytes: segments.iter().map(|segment| segment.size_bytes).sum(),
            entries_since_snapshot: self.store.applied_id().saturating_sub(newest),
            snapshot_every_entries: options.snapshot_every_entries,
            snapshot_every_wal_bytes: options.snapshot_every_wal_bytes,
            snapshot_wal_live_ratio: options.snapshot_wal_live_ratio,
            live_bytes: self.store.live_bytes(),
            snapshots_kept: options.snapshots_kept,
            wal_retention_bytes: options.wal_retention_bytes,
            codec: options.codec.to_string(),
        }
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

    fn adopt(&self, cluster_id: Option<u64>) -> Result<(), String> {
        let Some(cluster_id) = cluster_id else {
            return Ok(());
        };
        let mut meta = lock(&self.meta);
        if meta.cluster_id == cluster_id {
            return Ok(());
        }
        meta.cluster_id = cluster_id;
        meta.store(&**self.store.file_system(), &self.data_dir)
            .map_err(|error| error.to_string())?;
        tracing::info!(cluster_id = %format!("{cluster_id:016x}"), "joined the cluster");
        Ok(())
    }

    /// What `/cluster_status` shows.
    pub fn cluster_status(&self) -> ClusterStatus {
        let now = Instant::now();
        let store = &self.store;
        let last_id = LogView::last_id(&**store);
        let meta = *lock(&self.meta);
        let mut status = ClusterStatus {
            role: "leader",
            leader: None,
            cluster_id: if meta.cluster_id == 0 {
                String::new()
            } else {
                format!("{:016x}", meta.cluster_id)
            },
            epoch: meta.epoch,
            commit_id: self.commit_id(),
            applied_id: store.applied_id(),
            durable_id: store.durable_id(),
            last_id,
            first_id: LogView::first_id(&**store),
            write_quorum: None,
            followers: None,
            link: None,
            last_contact_age_ms: None,
            corrupt_batches_refused: None,
        };
        match &*lock(&self.role) {
            RoleState::Leader(leader) => {
                status.write_quorum = Some(leader.write_quorum());
                status.followers = Some(leader.followers(now, last_id));
            }
            RoleState::Follower { leader_url, state } => {
                status.role = "follower";
                status.leader = Some(leader_url.clone());
                if state.cluster_id() != 0 {
                    status.cluster_id = format!("{:016x}", state.cluster_id());
                }
                status.epoch = state.leader_epoch();
                status.link = Some(state.link().clone());
                status.last_contact_age_ms = state
                    .last_contact()
                    .map(|at| now.duration_since(at).as_millis() as u64);
                status.corrupt_batches_refused = Some(state.corrupt_batches_refused());
            }
        }
        status
    }
}

/// Nice value of background threads (snapshots): 0 is normal, 19 the lowest priority.
const BACKGROUND_NICE: i32 = 19;

/// Lowers the calling thread's CPU priority to [`BACKGROUND_NICE`] (Linux: the nice value is
/// per thread). Best effort: a failure is logged and the work runs at normal priority.
fn lower_this_threads_priority() {
    #[cfg(target_os = "linux")]
    {
        let thread = rustix::thread::gettid();
        if let Err(error) = rustix::process::setpriority_process(Some(thread), BACKGROUND_NICE) {
            tracing::warn!(%error, "cannot lower the snapshot thread's priority");
        }
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
