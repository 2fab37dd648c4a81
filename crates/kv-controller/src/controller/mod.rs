//! The tokio driver: [`Controller`] wraps an `openraft::Raft` over the durable stores, runs
//! [`ControllerLogic`] while this node is the Raft leader (the active controller), and serves
//! proposals, heartbeats, Raft RPCs, membership changes and status.

mod claim;
mod membership;
mod pre_vote;

pub use claim::ForeignClaim;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kv_wal::fs::{FileSystem, StdFs};
use openraft::error::{ClientWriteError, RaftError};
use openraft::raft::AppendEntriesResponse;
use openraft::{BasicNode, ChangeMembers, ServerState, SnapshotPolicy};
use serde::Serialize;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::log_store::LogStore;
use crate::logic::{
    ControllerLogic, ElectionPolicy, HeartbeatReply, HeartbeatRequest, SessionStatus,
};
use crate::meta::{ApplyResult, ClusterMeta, Command, NodeId, VOTERS_MAX};
use crate::network::{ControllerTransport, Network, RaftMessage, RaftReply, RaftRequest};
use crate::raft_types::Raft;
use crate::state_machine::StateMachineStore;
use crate::timing::Timing;

/// The controller's directory inside the node's data directory.
pub const CONTROLLER_DIR: &str = "controller";

/// How long the disk may keep a write of this member's Raft storage (its log, vote or commit
/// mark, with their `fsync`s) waiting before the member steps aside
/// ([`Controller::stepped_aside`]). These writes are small: a healthy disk, even in a slow
/// phase, completes them in well under a second.
pub const LOG_HUNG_AFTER: Duration = Duration::from_secs(2);

/// How a [`Controller`] is set up.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    /// This node's id.
    pub node_id: NodeId,
    /// This node's HTTP base URL.
    pub url: String,
    /// The node's data directory; the controller's files go to `<data_dir>/controller/`.
    pub data_dir: PathBuf,
    /// Where files live (the real file system, or `SimFs` in tests).
    pub file_system: Arc<dyn FileSystem>,
    /// Every clock.
    pub timing: Timing,
    /// Whether elections may leave the ISR (off by default).
    pub election_policy: ElectionPolicy,
    /// Whether the active controller promotes caught-up learners to voters by itself
    /// (an odd number of voters at a time, up to [`VOTERS_MAX`]).
    pub promote_voters: bool,
    /// A snapshot is taken every this many log entries; as many entries are kept behind it for
    /// lagging peers.
    pub snapshot_every_entries: u64,
}

impl ControllerOptions {
    /// Options with the defaults for node `node_id` at `url`, storing under `data_dir`.
    pub fn new(
        node_id: NodeId,
        url: impl Into<String>,
        data_dir: impl Into<PathBuf>,
    ) -> ControllerOptions {
        ControllerOptions {
            node_id,
            url: url.into(),
            data_dir: data_dir.into(),
            file_system: Arc::new(StdFs),
            timing: Timing::default(),
            election_policy: ElectionPolicy::CleanOnly,
            promote_voters: true,
            snapshot_every_entries: 1000,
        }
    }
}

/// How a new cluster starts (see [`crate::Command::Bootstrap`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootstrapSpec {
    /// The new cluster id (not 0).
    pub cluster_id: u64,
    /// The highest epoch used before the controller existed (`node.meta`'s; 0 for a new
    /// cluster): the first epoch is one above it.
    pub epoch_floor: u64,
    /// The write quorum.
    pub write_quorum: u32,
}

/// The controller as `/cluster_status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ControllerStatus {
    /// This node.
    pub node_id: NodeId,
    /// The Raft term.
    pub term: u64,
    /// This node's Raft role (`Leader`, `Follower`, `Candidate`, `Learner`, `Shutdown`).
    pub raft_state: String,
    /// The Raft leader (the active controller), if known.
    pub raft_leader: Option<NodeId>,
    /// The controller voters.
    pub voters: BTreeSet<NodeId>,
    /// The controller learners.
    pub learners: BTreeSet<NodeId>,
    /// Whether a change of the voters is half done (openraft's joint configuration: both the
    /// old and the new voters must agree meanwhile, so the old set's majority is still needed).
    pub voters_changing: bool,
    /// The last Raft log index.
    pub last_log_index: Option<u64>,
    /// The last applied Raft log index.
    pub last_applied_index: Option<u64>,
    /// Whether this node is the active controller.
    pub active: bool,
    /// The data nodes' sessions (on the active controller only).
    pub sessions: Vec<SessionStatus>,
    /// Why this node's Raft core stopped while the process runs ([`Controller::failure`]).
    pub failure: Option<String>,
    /// What this member's storage waits for room to write on a full disk
    /// ([`Controller::waiting_for_room`]).
    pub waiting_for_room: Option<String>,
    /// Whether this member stands for election when its leader goes silent (false once the
    /// cluster's metadata no longer lists the node: [`Controller::set_campaigning`]).
    pub campaigning: bool,
}

struct Inner {
    options: ControllerOptions,
    raft: Raft,
    state_machine: StateMachineStore,
    log: LogStore,
    logic: Mutex<ControllerLogic>,
    cluster_id: Arc<AtomicU64>,
    wake: Notify,
    stopping: AtomicBool,
    /// Whether this member may stand for election ([`Controller::set_campaigning`]).
    campaigning: AtomicBool,
    /// Whether this member stepped aside for a hung disk ([`Controller::stepped_aside`]).
    aside: AtomicBool,
    /// Whether the node says its own disk hangs ([`Controller::set_node_disk_hung`]).
    node_disk_hung: AtomicBool,
    membership_change: tokio::sync::Mutex<()>,
    driver: Mutex<Option<JoinHandle<()>>>,
    /// The candidate loop ([`pre_vote::stand_when_the_leader_is_silent`]).
    candidate: Mutex<Option<JoinHandle<()>>>,
    /// Another cluster's claim on this node ([`Controller::claimed`]).
    claimed: watch::Sender<Option<ForeignClaim>>,
    /// The controllers' network (pre-votes go through it).
    network: Network,
    /// When this member last heard from a leader and stands for election next.
    election: Mutex<pre_vote::ElectionTimer>,
}

/// A running controller. Cheap to clone.
#[derive(Clone)]
pub struct Controller {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("node_id", &self.inner.options.node_id)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn raft_error<E: std::fmt::Debug + std::fmt::Display>(error: E) -> Error {
    Error::Raft(error.to_string())
}

impl Controller {
    /// Opens the controller of this node from `<data_dir>/controller/` (creating it empty),
    /// and starts it. An empty controller waits to be initialized ([`Controller::initialize`])
    /// or to be added to a cluster by its leader.
    pub async fn open(
        options: ControllerOptions,
        transport: Arc<dyn ControllerTransport>,
    ) -> Result<Controller> {
        options.timing.check()?;
        let dir = options.data_dir.join(CONTROLLER_DIR);
        let fs = options.file_system.clone();
        let node_id = options.node_id;
        let (log, state_machine) = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || -> Result<_> {
                let log = LogStore::open(fs.clone(), &dir, node_id)?;
                let state_machine = StateMachineStore::open(fs, &dir)?;
                Ok((log, state_machine))
            })
            .await
            .map_err(raft_error)??
        };
        let timing = options.timing;
        let config = openraft::Config {
            cluster_name: "kvd-controller".to_owned(),
            heartbeat_interval: timing.raft_heartbeat.as_millis() as u64,
            election_timeout_min: timing.raft_election_timeout_min.as_millis() as u64,
            election_timeout_max: timing.raft_election_timeout_max.as_millis() as u64,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(options.snapshot_every_entries),
            max_in_snapshot_log_to_keep: options.snapshot_every_entries,
            // Elections start from this member's candidate loop, after a pre-vote
            // (`pre_vote`).
            enable_elect: false,
            ..openraft::Config::default()
        }
        .validate()
        .map_err(|error| Error::InvalidOptions(error.to_string()))?;
        let cluster_id = Arc::new(AtomicU64::new(known_cluster_id(
            &state_machine.meta(),
            &log,
        )));
        let network = Network {
            transport,
            from: node_id,
            cluster_id: cluster_id.clone(),
        };
        let raft = Raft::new(
            node_id,
            Arc::new(config),
            network.clone(),
            log.clone(),
            state_machine.clone(),
        )
        .await
        .map_err(raft_error)?;
        let controller = Controller {
            inner: Arc::new(Inner {
                logic: Mutex::new(ControllerLogic::new(timing, options.election_policy)),
                options,
                raft,
                state_machine,
                log,
                cluster_id,
                wake: Notify::new(),
                stopping: AtomicBool::new(false),
                campaigning: AtomicBool::new(true),
                aside: AtomicBool::new(false),
                node_disk_hung: AtomicBool::new(false),
                membership_change: tokio::sync::Mutex::new(()),
                driver: Mutex::new(None),
                candidate: Mutex::new(None),
                claimed: watch::Sender::new(None),
                network,
                election: Mutex::new(pre_vote::ElectionTimer::starting(
                    timing.raft_election_timeout_min,
                )),
            }),
        };
        let weak = Arc::downgrade(&controller.inner);
        let driver = tokio::spawn(drive(weak.clone()));
        *lock(&controller.inner.driver) = Some(driver);
        let candidate = tokio::spawn(pre_vote::stand_when_the_leader_is_silent(weak));
        *lock(&controller.inner.candidate) = Some(candidate);
        Ok(controller)
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.options.node_id
    }

    /// Whether this controller holds any state (a vote, log entries, a snapshot): such a node
    /// is part of a cluster and must never be initialized again.
    pub fn has_state(&self) -> bool {
        self.inner.log.has_state() || self.inner.state_machine.last_applied().is_some()
    }

    /// Creates a one-member controller quorum with this node as its voter and data leader,
    /// and bootstraps the metadata. Refused on a controller with state.
    pub async fn initialize(&self, spec: BootstrapSpec) -> Result<ClusterMeta> {
        if self.has_state() {
            return Err(Error::AlreadyInitialized);
        }
        let options = &self.inner.options;
        let members = BTreeMap::from([(
            options.node_id,
            BasicNode {
                addr: options.url.clone(),
            },
        )]);
        self.inner
            .raft
            .initialize(members)
            .await
            .map_err(raft_error)?;
        self.inner
            .raft
            .wait(Some(Duration::from_secs(10)))
            .current_leader(options.node_id, "initialize: leading the new quorum")
            .await
            .map_err(raft_error)?;
        let meta = self
            .propose(Command::Bootstrap {
                cluster_id: spec.cluster_id,
                leader: options.node_id,
                leader_url: options.url.clone(),
                epoch_floor: spec.epoch_floor,
                write_quorum: spec.write_quorum,
            })
            .await?
            .into_result()?;
        Ok(meta)
    }

    /// Proposes `command` through Raft and returns what applying it did. Only the active
    /// controller proposes: elsewhere the answer is [`Error::NotLeader`] naming it, and the
    /// caller forwards.
    pub async fn propose(&self, command: Command) -> Result<ApplyResult> {
        self.unless_stepped_aside()?;
        self.unless_another_leads()?;
        match self.inner.raft.client_write(command).await {
            Ok(response) => Ok(response.data),
            Err(error) => Err(write_error(error)),
        }
    }

    /// Handles a data node's heartbeat on the active controller: confirms this node still
    /// leads the controller quorum (a round of Raft heartbeats), renews the sender's session,
    /// and answers with the applied metadata and, for the data leader, a lease.
    pub async fn heartbeat(&self, request: HeartbeatRequest) -> Result<HeartbeatReply> {
        self.check_cluster(request.cluster_id)?;
        // Confirming the leadership sends Raft heartbeats, which the step aside must stop.
        self.unless_stepped_aside()?;
        self.unless_another_leads()?;
        if let Err(error) = self.inner.raft.ensure_linearizable().await {
            return Err(match error.forward_to_leader() {
                Some(forward) => not_leader(forward),
                None => raft_error(error),
            });
        }
        let now = Instant::now();
        let meta = self.inner.state_machine.meta();
        let lease = {
            let mut logic = lock(&self.inner.logic);
            if !logic.is_active() {
                // Leadership confirmed above; the driver has not noticed yet.
                logic.activate(now);
            }
            logic.on_heartbeat(now, &meta, &request)
        };
        self.inner.wake.notify_one();
        Ok(HeartbeatReply {
            meta,
            lease_ms: lease.map(|lease| lease.as_millis() as u64),
            heartbeat_interval_ms: self.inner.options.timing.heartbeat_interval.as_millis() as u64,
            controller: self.inner.options.node_id,
        })
    }

    /// Serves a Raft RPC from a peer controller (kv-http calls this for
    /// `POST /controller/raft`).
    pub async fn handle_raft(&self, message: RaftMessage) -> RaftReply {
        if self.check_cluster(message.cluster_id).is_err() {
            self.note_a_claim(&message);
            return RaftReply::ClusterMismatch {
                cluster_id: self.cluster_id(),
            };
        }
        let node_id = self.inner.options.node_id;
        if message.to.is_some_and(|to| to != node_id) {
            return RaftReply::WrongNode { node_id };
        }
        // A node admitted to no cluster yet (starting, or its join refused) answers as nobody:
        // its empty log must not pass for a member's — a node that lost its data directory,
        // started again at its member's address, would otherwise vote and take the log before
        // the cluster refuses its join.
        if self.cluster_id() == 0 && !self.has_state() {
            return RaftReply::NotJoined;
        }
        let raft = &self.inner.raft;
        match message.request {
            RaftRequest::AppendEntries(request) => {
                let reply = raft.append_entries(request).await;
                // Any answer but "higher vote" accepted the sender as the leader.
                if matches!(&reply, Ok(answer) if !matches!(answer, AppendEntriesResponse::HigherVote(_)))
                {
                    self.inner.heard_from_leader();
                }
                RaftReply::AppendEntries(reply)
            }
            RaftRequest::Vote(request) => {
                let reply = raft.vote(request).await;
                if matches!(&reply, Ok(answer) if answer.vote_granted) {
                    self.inner.heard_from_leader();
                }
                RaftReply::Vote(reply)
            }
            RaftRequest::InstallSnapshot(request) => {
                let reply = raft.install_snapshot(request).await;
                if reply.is_ok() {
                    self.inner.heard_from_leader();
                }
                RaftReply::InstallSnapshot(reply)
            }
            RaftRequest::PreVote(request) => {
                RaftReply::PreVote(self.inner.answer_pre_vote(&request))
            }
        }
    }

    /// A receiver of every applied [`ClusterMeta`] (the data plane subscribes to it).
    pub fn subscribe(&self) -> watch::Receiver<ClusterMeta> {
        self.inner.state_machine.subscribe()
    }

    /// The metadata as this node has applied it.
    pub fn meta(&self) -> ClusterMeta {
        self.inner.state_machine.meta()
    }

    /// The cluster id as this node knows it (0: not joined yet): from the applied metadata,
    /// else the one stored when it joined ([`Controller::adopt_cluster_id`]).
    pub fn cluster_id(&self) -> u64 {
        let known = known_cluster_id(&self.inner.state_machine.meta(), &self.inner.log);
        self.inner.cluster_id.store(known, Ordering::Release);
        known
    }

    /// Records, durably, the id of the cluster this node was admitted to (the answer to its
    /// join), before its controller log holds anything: from then on it refuses peers of any
    /// other cluster. Refused if this node already belongs to another cluster.
    pub fn adopt_cluster_id(&self, cluster_id: u64) -> Result<()> {
        let ours = self.cluster_id();
        if ours != 0 && ours != cluster_id {
            return Err(Error::ClusterMismatch {
                ours,
                theirs: cluster_id,
            });
        }
        if self.inner.log.joined_cluster_id() != cluster_id {
            self.inner.log.set_joined_cluster_id(cluster_id)?;
        }
        self.inner.cluster_id.store(cluster_id, Ordering::Release);
        Ok(())
    }

    /// The controller's state, for `/cluster_status`.
    pub fn status(&self) -> ControllerStatus {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let learners: BTreeSet<NodeId> = membership.learner_ids().collect();
        let voters_changing = membership.get_joint_config().len() > 1;
        let meta = self.meta();
        let logic = lock(&self.inner.logic);
        ControllerStatus {
            node_id: self.inner.options.node_id,
            term: metrics.current_term,
            raft_state: format!("{:?}", metrics.state),
            raft_leader: metrics.current_leader,
            voters,
            learners,
            voters_changing,
            last_log_index: metrics.last_log_index,
            last_applied_index: metrics.last_applied.map(|log_id| log_id.index),
            active: logic.is_active(),
            sessions: logic.sessions(Instant::now(), &meta),
            failure: self.failure(),
            waiting_for_room: self.waiting_for_room(),
            campaigning: self.campaigning(),
        }
    }

    /// Why this node's Raft core stopped, if it did while the process runs (a fatal storage
    /// error, a panic inside openraft, a shutdown): this member then no longer votes, keeps
    /// the controller's log or answers its peers until the node restarts. `/health` reports it.
    pub fn failure(&self) -> Option<String> {
        let metrics = self.inner.raft.metrics();
        if let Err(fatal) = &metrics.borrow().running_state {
            return Some(format!("its Raft core stopped: {fatal}"));
        }
        // A core that panicked publishes nothing more: its metrics' sender is gone.
        metrics
            .has_changed()
            .is_err()
            .then(|| "its Raft core stopped (a panic inside openraft?)".to_owned())
    }

    /// What this member's storage waits for room to write, if anything: on a full disk its
    /// Raft core waits ([`crate::room`]), taking no part in the controller's Raft until there
    /// is room again. `/health` reports it.
    pub fn waiting_for_room(&self) -> Option<String> {
        self.inner
            .log
            .room()
            .waiting()
            .or_else(|| self.inner.state_machine.room().waiting())
    }

    /// Lets this member stand for election when its leader goes silent, or not. A node the
    /// cluster's newest metadata no longer lists (removed while it was cut off or behind, so it
    /// never applied its own removal) would otherwise stand for election forever: every
    /// election timeout a new term, vote requests to every member and log lines, for as long as
    /// the process runs. It still answers votes and takes entries. Returns whether it changed.
    pub fn set_campaigning(&self, allowed: bool) -> bool {
        self.inner.campaigning.swap(allowed, Ordering::AcqRel) != allowed
    }

    /// Whether this member stepped aside: it sends no Raft heartbeats and stands for no
    /// election, because the disk has kept a write of its Raft storage waiting
    /// `LOG_HUNG_AFTER` or because the node says its disk hangs
    /// ([`Controller::set_node_disk_hung`]), until the disk answers. (A member waiting for
    /// room on a full disk does not: it waits, as [`Controller::waiting_for_room`] says.) A
    /// Raft leader on a hung disk commits nothing — no fence, no election of a new data
    /// leader — yet its heartbeats, which need no disk, would keep the other members from
    /// electing another for as long as the disk hangs; silent, it is replaced within an
    /// election timeout.
    pub fn stepped_aside(&self) -> bool {
        self.inner.aside.load(Ordering::Acquire)
    }

    /// Starts a Raft election on this member at once (openraft's `Trigger::elect`), as a
    /// stopping Raft leader asks of the node it handed the data leadership to: openraft 0.9
    /// has no leader transfer, and the stopping leader — whose leadership, not yet refreshed
    /// by any vote, is no lease to it — grants the vote if this member's log is as long as
    /// its own. Refused by a member that stepped aside for a hung disk; a no-op on the Raft
    /// leader.
    pub async fn campaign(&self) -> Result<()> {
        self.unless_stepped_aside()?;
        self.inner
            .raft
            .trigger()
            .elect()
            .await
            .map_err(|fatal| Error::Raft(fatal.to_string()))
    }

    /// The Raft leader this member knows, if any.
    pub fn raft_leader(&self) -> Option<NodeId> {
        self.inner.raft.metrics().borrow().current_leader
    }

    /// "Not the active controller", naming the leader, when this member's Raft metrics (a
    /// watch: never waiting for the Raft core) name another member the leader. The core would
    /// say the same, but only once it takes the call: a core held by a hung write of its
    /// storage takes none until the write completes, or this member steps aside
    /// (`LOG_HUNG_AFTER`, 2 s) — and every heartbeat and proposal of this node to the active
    /// controller asks its own member first (`ControllerClient`), so a node whose disk hung
    /// heard no new view for those 2 s.
    fn unless_another_leads(&self) -> Result<()> {
        let metrics = self.inner.raft.metrics();
        let metrics = metrics.borrow();
        match metrics.current_leader {
            Some(leader) if leader != self.inner.options.node_id => Err(Error::NotLeader {
                leader_id: Some(leader),
                leader_url: metrics
                    .membership_config
                    .membership()
                    .get_node(&leader)
                    .map(|node| node.addr.clone()),
            }),
            _ => Ok(()),
        }
    }

    /// "Not the active controller" while this member stepped aside
    /// ([`Controller::stepped_aside`]): it takes no proposal and answers no heartbeat. Both
    /// would send Raft messages (confirming the leadership for a heartbeat is a round of Raft
    /// heartbeats, which `enable_heartbeat` does not stop), and those keep the other members
    /// from electing another leader.
    fn unless_stepped_aside(&self) -> Result<()> {
        if self.stepped_aside() {
            return Err(Error::NotLeader {
                leader_id: None,
                leader_url: None,
            });
        }
        Ok(())
    }

    /// The node's word on its own disk: `true` while the disk has kept a write of the node's
    /// data log waiting past the node's limit (kvd's `DISK_HUNG_AFTER`). The member steps
    /// aside meanwhile ([`Controller::stepped_aside`]): the Raft log is on the same disk, and
    /// a hung write on a runtime worker may hold up the very tasks (Raft's core among them)
    /// that would notice its own.
    pub fn set_node_disk_hung(&self, hung: bool) {
        if self.inner.node_disk_hung.swap(hung, Ordering::AcqRel) != hung {
            self.inner.step_aside_while_the_disk_hangs();
        }
    }

    /// Whether this member may stand for election ([`Controller::set_campaigning`]).
    pub fn campaigning(&self) -> bool {
        self.inner.campaigning.load(Ordering::Acquire)
    }

    /// The underlying Raft handle (for metrics and tests).
    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// Stops the driver and Raft; the stores close when the last clone is dropped. A storage
    /// write waiting for room on a full disk gives up (the Raft core waits on it).
    pub async fn shutdown(&self) -> Result<()> {
        self.inner.stopping.store(true, Ordering::Release);
        self.inner.log.room().close();
        self.inner.state_machine.room().close();
        self.inner.wake.notify_one();
        let driver = lock(&self.inner.driver).take();
        if let Some(driver) = driver {
            let _ = driver.await;
        }
        let candidate = lock(&self.inner.candidate).take();
        if let Some(candidate) = candidate {
            candidate.abort();
            let _ = candidate.await;
        }
        self.inner.raft.shutdown().await.map_err(raft_error)
    }

    fn check_cluster(&self, theirs: u64) -> Result<()> {
        let ours = self.cluster_id();
        if theirs != 0 && ours != 0 && theirs != ours {
            return Err(Error::ClusterMismatch { ours, theirs });
        }
        Ok(())
    }
}

/// The cluster id the applied metadata names, else the one stored at join.
fn known_cluster_id(meta: &ClusterMeta, log: &LogStore) -> u64 {
    match meta.cluster_id {
        0 => log.joined_cluster_id(),
        known => known,
    }
}

fn not_leader(forward: &openraft::error::ForwardToLeader<NodeId, BasicNode>) -> Error {
    Error::NotLeader {
        leader_id: forward.leader_id,
        leader_url: forward.leader_node.as_ref().map(|node| node.addr.clone()),
    }
}

/// A failed write (a proposal or a membership change): "ask the leader" or a Raft error.
fn write_error(error: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> Error {
    match error.forward_to_leader() {
        Some(forward) => not_leader(forward),
        None => raft_error(error),
    }
}

impl Inner {
    /// Steps aside while the disk hangs, and back once it answers
    /// ([`Controller::stepped_aside`]); says so at each change.
    fn step_aside_while_the_disk_hangs(&self) {
        let waited = self.log.disk_wait();
        let node_says = self.node_disk_hung.load(Ordering::Acquire);
        let hangs = node_says || (waited >= LOG_HUNG_AFTER && self.log.room().waiting().is_none());
        if self.aside.swap(hangs, Ordering::AcqRel) == hangs {
            return;
        }
        self.raft.runtime_config().heartbeat(!hangs);
        if hangs {
            tracing::error!(
                raft_storage_waited_ms = waited.as_millis() as u64,
                node_says = node_says,
                "controller: the disk hangs (a write of this member's Raft storage or of the \
                 node's log waits): no Raft heartbeats and no candidacy until it answers (the \
                 other members elect another leader if this one led)"
            );
        } else {
            tracing::warn!("controller: the disk answers again: taking part in the Raft again");
        }
    }
}

/// The active controller's loop: follows Raft leadership (activating the logic fresh when
/// this node becomes leader), runs the logic's ticks at its deadlines, and proposes what it
/// decides.
async fn drive(inner: std::sync::Weak<Inner>) {
    let Some(strong) = inner.upgrade() else {
        return;
    };
    let mut metrics = strong.raft.metrics();
    let node_id = strong.options.node_id;
    let tick_max = strong.options.timing.heartbeat_interval;
    drop(strong);
    let mut in_flight: Option<JoinHandle<()>> = None;
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        if strong.stopping.load(Ordering::Acquire) {
            return;
        }
        strong.step_aside_while_the_disk_hangs();
        let now = Instant::now();
        let leading = {
            let metrics = metrics.borrow();
            metrics.state == ServerState::Leader && metrics.current_leader == Some(node_id)
        };
        let meta = strong.state_machine.meta();
        strong.cluster_id.store(meta.cluster_id, Ordering::Release);
        let (command, voters, deadline) = {
            let mut logic = lock(&strong.logic);
            logic.ran(now);
            if leading && !logic.is_active() {
                tracing::info!(node_id, "controller: active (every session starts now)");
                logic.activate(now);
            } else if !leading && logic.is_active() {
                tracing::info!(node_id, "controller: no longer active");
                logic.deactivate();
            }
            let command = logic.on_tick(now, &meta);
            let voters = if strong.options.promote_voters {
                logic.voters_wanted(now, &meta)
            } else {
                None
            };
            let deadline = logic
                .next_deadline(&meta, now)
                .unwrap_or(now + tick_max)
                .min(now + tick_max);
            (command, voters, deadline)
        };
        let idle = in_flight.as_ref().is_none_or(|task| task.is_finished());
        let aside = strong.aside.load(Ordering::Acquire);
        if idle && !aside && (command.is_some() || voters.is_some()) {
            let controller = Controller {
                inner: strong.clone(),
            };
            in_flight = Some(tokio::spawn(async move {
                if let Some(command) = command {
                    match controller.propose(command.clone()).await {
                        Ok(ApplyResult::Applied { .. }) => {
                            tracing::info!(%command, "controller: decision applied")
                        }
                        Ok(ApplyResult::Rejected { rejection }) => {
                            tracing::info!(%command, %rejection, "controller: decision refused")
                        }
                        Err(error) => {
                            tracing::warn!(%command, %error, "controller: decision not proposed")
                        }
                    }
                }
                if let Some(voters) = voters {
                    let _change = controller.inner.membership_change.lock().await;
                    let result = controller
                        .change_membership(ChangeMembers::ReplaceAllVoters(voters.clone()))
                        .await;
                    match result {
                        Ok(()) => tracing::info!(?voters, "controller: voters promoted"),
                        Err(error) => {
                            tracing::warn!(?voters, %error, "controller: promotion failed")
                        }
                    }
                }
            }));
        }
        drop(strong);
        let sleep = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline));
        let Some(strong) = inner.upgrade() else {
            return;
        };
        tokio::select! {
            _ = sleep => {}
            changed = metrics.changed() => if changed.is_err() { return },
            _ = strong.wake.notified() => {}
        }
    }
}
