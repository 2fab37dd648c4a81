//! The loop that keeps a node's data plane in step with the controller (the wiring side of
//! `/work/failover-interface.md`):
//!
//! - **Heartbeats.** Every `heartbeat_interval`, the node's position goes to the active
//!   controller (at home when this node is it). The reply's metadata is offered to the data
//!   plane; its lease, counted from when the heartbeat was *sent* (`kv_controller::Lease`),
//!   goes to the node as the data leader (`Node::grant_lease`; a refusal revokes it).
//!   Heartbeats do not wait for each other (a few may be in flight), so one slow answer does not
//!   let the lease run out while the controller could answer the next.
//! - **The meta watch.** Every change the node's own controller applies is offered at once.
//!   Both sources offer metadata; only a newer version (`ClusterMeta::version`) gets through,
//!   one at a time, so the data plane never sees an ISR or a leader go back
//!   (`Node::apply_cluster_view`: lead, follow, or follow nobody). Applying a view may wait on
//!   the disk (a new epoch is recorded in `node.meta`): a view offered meanwhile waits its
//!   turn, not its caller, so a disk that hangs under a role change holds one thread, not the
//!   async workers behind it.
//! - **Proposals.** On the leader, the ISR the data plane wants (`Node::wanted_isr`) is proposed
//!   as `ChangeIsr` in its epoch, one change in flight. A node named leader of an epoch it led
//!   before a restart asks to be elected again in a new one (`Node::wanted_reelection`).
//! - **Transfer.** A planned transfer to another node, begun in this leader's epoch, stops the
//!   leader's writes and linearizable reads (`Node::prepare_transfer`), waits until the target
//!   holds the whole log, and proposes `TransferLeader`. The leader takes writes again
//!   (`Node::cancel_transfer`) only once the view says the transfer was cancelled in its epoch —
//!   never on an uncertain proposal: the transfer may have applied, and the new leader may
//!   already hold a lease.
//! - **A failed disk.** A leader whose log refuses writes (a failed write or `fdatasync`)
//!   begins that transfer itself, to the ISR member holding the most of its log.
//! - **A hung disk.** A node whose disk has kept a write or `fdatasync` of its WAL, or a save
//!   of its meta file (`Node::meta_save_wait`), waiting [`DISK_HUNG_AFTER`] sends no
//!   heartbeat until the disk answers: its session expires and the controller fences it as it
//!   would a dead node (a leader is replaced). The node keeps
//!   running meanwhile — a large write's work is off the async workers — so without this a
//!   leader whose disk hung under one would hold its lease, and take no write, for as long as
//!   the hang lasts.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kv_controller::{ApplyResult, ClusterMeta, Command, HeartbeatRequest, Lease, NodeId, Position};
use kv_http::ClusterState;
use kv_replication::{Node, Role};
use tokio::sync::watch;

use super::turns::Turns;

/// Most heartbeats in flight at once.
const HEARTBEATS_IN_FLIGHT_MAX: usize = 4;
/// How long a roleless node records an epoch above the cluster's before it says so.
const AHEAD_OF_THE_CLUSTER_FOR: Duration = Duration::from_secs(2);
/// How often a node that records an epoch above the cluster's says so again.
const AHEAD_OF_THE_CLUSTER_REPEAT: Duration = Duration::from_secs(10);
/// How often a view the node could not take for want of disk space is tried again.
const VIEW_RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// How long the disk may keep a write or `fdatasync` of the WAL (or a save of the meta file)
/// waiting before the node stops heartbeating. Well above what a healthy disk takes for the
/// largest record (a 65 MiB one syncs in about a second on a slow disk); etcd warns of a WAL
/// sync over one second.
pub const DISK_HUNG_AFTER: Duration = Duration::from_secs(5);
/// How long the disk may keep a node named the data leader from recording its new epoch (the
/// save of `node.meta` before it takes the role, `Node::apply_cluster_view`) before the node
/// stops heartbeating, so that the controller elects another leader instead of waiting for
/// this one: the point where `/health` calls the disk slow. A healthy save takes
/// milliseconds, and the cluster takes no write until the named leader takes its role.
const TAKING_OVER_HUNG_AFTER: Duration = kv_http::DISK_SLOW_AFTER;

/// The driver of one node. Cheap to share.
pub struct Driver {
    node: Arc<Node>,
    cluster: Arc<ClusterState>,
    /// Views reach the data plane one at a time, their turn never waited for: applying a view
    /// may wait on the disk (`Node::apply_cluster_view` records a new epoch), and the
    /// heartbeats and proposals that offer views run on the async workers. The newest view
    /// offered while another was being applied is taken after it.
    views: Turns<ClusterMeta>,
    /// This node's lease as the data leader, from the heartbeat replies.
    lease: Mutex<Lease>,
    isr_in_flight: AtomicBool,
    heartbeats_in_flight: AtomicUsize,
    /// The planned transfer this leader is carrying out: `(to, epoch)`.
    transfer: Mutex<Option<(NodeId, u64)>>,
    /// The epoch in which this node last asked to be elected again.
    reelection: Mutex<Option<u64>>,
    /// Since when this roleless node records an epoch above the active controller's, and when
    /// it last said so.
    ahead_of_the_cluster: Mutex<(Option<Instant>, Option<Instant>)>,
    /// When the current view was last tried, while it could not be taken for want of disk
    /// space.
    view_without_room: Mutex<Option<Instant>>,
    /// When this leader, its log refusing writes, last asked to hand its leadership over (or
    /// said it could not), and in which epoch.
    hand_over: Mutex<Option<(u64, Instant)>>,
    /// The write quorum this node was started with explicitly (`--write-quorum`), until the
    /// cluster was asked to take it.
    wanted_write_quorum: Mutex<Option<usize>>,
    /// Whether the active controller has answered a heartbeat of this node yet.
    heard_controller: AtomicBool,
    /// Whether the node is silent because its disk hangs ([`DISK_HUNG_AFTER`]).
    silent_for_disk: AtomicBool,
    /// Whether the node is stopping ([`Driver::stopping`]): a hand-over it makes takes it out
    /// of the ISR, and it copies no leader's log any more.
    stopping: watch::Sender<bool>,
    /// True once the node took the role its first view gives it (and, as the leader, holds a
    /// lease).
    ready: watch::Sender<bool>,
    shutdown: watch::Receiver<bool>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Driver {
    /// A driver for `node` in the cluster `cluster`; it stops when `shutdown` turns true.
    pub fn new(
        node: Arc<Node>,
        cluster: Arc<ClusterState>,
        shutdown: watch::Receiver<bool>,
    ) -> Arc<Driver> {
        Arc::new(Driver {
            node,
            cluster,
            views: Turns::new(|meta: &ClusterMeta| meta.version),
            lease: Mutex::new(Lease::new()),
            isr_in_flight: AtomicBool::new(false),
            stopping: watch::Sender::new(false),
            heartbeats_in_flight: AtomicUsize::new(0),
            transfer: Mutex::new(None),
            reelection: Mutex::new(None),
            hand_over: Mutex::new(None),
            view_without_room: Mutex::new(None),
            ahead_of_the_cluster: Mutex::new((None, None)),
            wanted_write_quorum: Mutex::new(None),
            heard_controller: AtomicBool::new(false),
            silent_for_disk: AtomicBool::new(false),
            ready: watch::Sender::new(false),
            shutdown,
        })
    }

    /// Asks the cluster, once, to take `write_quorum` (the `--write-quorum` this node was
    /// started with) if its own differs. The cluster's write quorum is set when it is created
    /// (`kvd leader`'s): before, a node restarted with another `--write-quorum` was silently
    /// held to the old one (a cluster created with 1 and restarted with `--write-quorum 2` on
    /// every node acknowledged writes the leader alone held).
    pub fn with_write_quorum(self: Arc<Self>, write_quorum: Option<usize>) -> Arc<Self> {
        *lock(&self.wanted_write_quorum) = write_quorum;
        self
    }

    /// Marks the node as stopping: a planned transfer it makes from now on takes it out of the
    /// ISR with the hand-over (`Command::TransferLeader::leaving`), and its replication stops
    /// ([`Driver::until_stopping`]) — a node that handed over and followed its successor for
    /// the moment before it exits would be caught up, and taken back into the ISR it left.
    pub fn stopping(&self) {
        self.stopping.send_replace(true);
    }

    /// Resolves once the node is stopping ([`Driver::stopping`]).
    pub fn until_stopping(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut stopping = self.stopping.subscribe();
        async move {
            let _ = stopping.wait_for(|stopping| *stopping).await;
        }
    }

    /// Turns true once the node took its first role from the controller.
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// Runs until shutdown: the meta watch and the heartbeat ticks.
    pub async fn run(self: Arc<Self>) {
        let watch_task = tokio::spawn(self.clone().watch_meta());
        let mut ticks = tokio::time::interval(self.cluster.timing().heartbeat_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shutdown = self.shutdown.clone();
        loop {
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => break,
                _ = ticks.tick() => {}
            }
            let disk_hangs = self.disk_hangs();
            self.cluster.controller().set_node_disk_hung(disk_hangs);
            if !disk_hangs {
                self.spawn_heartbeat();
            }
            self.propose_isr_change();
            if let Some(view) = self.cluster.view() {
                self.ask_for_reelection(&view);
                self.hand_over_if_the_log_failed(&view);
            }
            self.retry_view_without_room();
            // A view kept while `retry_view_without_room` held the turn.
            if let Some(meta) = self.views.take_kept() {
                self.offer(&meta);
            }
        }
        watch_task.abort();
        self.node.revoke_lease();
    }

    /// Offers every metadata change this node's controller applies.
    async fn watch_meta(self: Arc<Self>) {
        let mut applied = self.cluster.controller().subscribe();
        loop {
            let meta = applied.borrow_and_update().clone();
            self.offer(&meta);
            if applied.changed().await.is_err() {
                return;
            }
        }
    }

    /// Applies `meta` to the data plane if it is newer than the view it follows. While another
    /// view is being applied, `meta` waits its turn instead of its caller ([`Turns::offer`]).
    pub fn offer(self: &Arc<Self>, meta: &ClusterMeta) {
        if !meta.is_bootstrapped() {
            return;
        }
        self.views
            .offer(meta, |applying, meta| self.take_view(applying, meta));
    }

    /// [`Driver::offer`] with the turn (`applying`), let go of once the view is in.
    fn take_view(self: &Arc<Self>, applying: MutexGuard<'_, ()>, meta: &ClusterMeta) {
        let node_id = self.cluster.node_id();
        if !self.cluster.is_newer_view(meta) {
            return;
        }
        // Heard before it is applied, which may wait on the disk (a new epoch is recorded
        // first): a leader it replaces sends requests to the new one meanwhile.
        self.cluster.set_heard(meta);
        self.apply_view(meta);
        let previous = self.cluster.view();
        self.cluster.set_view(meta);
        self.campaign_while_listed(meta);
        let new_epoch = previous.is_none_or(|previous| previous.leader_epoch != meta.leader_epoch);
        if meta.data_leader != Some(node_id) {
            self.cluster.set_handing_over(false);
        } else if new_epoch {
            // A new leadership: ask for its lease now rather than at the next tick.
            self.spawn_heartbeat();
        }
        tracing::debug!(version = meta.version, epoch = meta.leader_epoch, leader = ?meta.data_leader, isr = ?meta.isr, "took the controller's view");
        drop(applying);
        self.follow_transfer(meta);
        self.ask_for_reelection(meta);
        self.propose_write_quorum(meta);
        self.update_ready();
    }

    /// Hands `meta` to the data plane (with the views' turn). A view the node could not take for
    /// want of disk space (a new leader's no-op with no room in its log) is taken again at
    /// the ticks until it goes through ([`Driver::retry_view_without_room`]); any other
    /// refusal is final for that view.
    fn apply_view(self: &Arc<Self>, meta: &ClusterMeta) {
        let view = kv_http::cluster_view(meta, self.cluster.node_id());
        let applied = self.node.apply_cluster_view(&view);
        let mut retry = lock(&self.view_without_room);
        match applied {
            Ok(()) => *retry = None,
            Err(error) if error.is_out_of_space() => {
                if retry.is_none() {
                    tracing::error!(%error, epoch = meta.leader_epoch, "cannot take the role the controller gives for want of disk space: trying again until there is room");
                }
                *retry = Some(Instant::now());
                drop(retry);
                self.hand_over_without_room(meta);
            }
            Err(error) => {
                *retry = None;
                tracing::error!(%error, epoch = meta.leader_epoch, "cannot take the role the controller gives");
            }
        }
    }

    /// Takes the current view again, once per [`VIEW_RETRY_INTERVAL`], while the last try
    /// found no room on the disk.
    fn retry_view_without_room(self: &Arc<Self>) {
        let due = lock(&self.view_without_room)
            .is_some_and(|tried| tried.elapsed() >= VIEW_RETRY_INTERVAL);
        if !due {
            return;
        }
        // Another view being applied takes this one's place.
        let Some(_applying) = self.views.try_turn() else {
            return;
        };
        if let Some(view) = self.cluster.view() {
            self.apply_view(&view);
        }
    }

    /// Stops this node's controller member from standing for election while the newest
    /// metadata does not list the node (removed: it never applied its own removal if it was
    /// cut off or behind, and would campaign for as long as it runs; or still joining, when
    /// it is no voter yet and campaigns for nothing anyway), and lets it again once listed.
    fn campaign_while_listed(&self, meta: &ClusterMeta) {
        let listed = meta.members.contains_key(&self.cluster.node_id());
        if self.cluster.controller().set_campaigning(listed) {
            if listed {
                tracing::info!(version = meta.version, "listed in the cluster's metadata: this node's controller member stands for election again");
            } else {
                tracing::warn!(version = meta.version, "the cluster's metadata no longer lists this node: its controller member stops standing for election");
            }
        }
    }

    /// Marks the node ready once it took the role the active controller's view gives (not
    /// just its own controller's, which may be behind after a restart): the leader with a
    /// lease, or not the leader.
    fn update_ready(&self) {
        if !self.heard_controller.load(Ordering::Acquire) {
            return;
        }
        let Some(view) = self.cluster.view() else {
            return;
        };
        let role = self.node.role();
        let role_taken = if view.data_leader == Some(self.cluster.node_id()) {
            let lease = lock(&self.lease);
            role == Role::Leader
                && lease.epoch() == view.leader_epoch
                && lease.is_valid(Instant::now())
        } else {
            // A node that led before its restart and is being re-elected (a leaderless epoch
            // between) has its role once it leads again or follows the leader elected.
            role != Role::Leader && !self.node.awaits_role_after_leading()
        };
        if role_taken {
            self.ready
                .send_if_modified(|ready| !std::mem::replace(ready, true));
        }
    }

    /// Whether the disk has kept a write or `fdatasync` of the WAL, or a save of the node's
    /// meta file, waiting [`DISK_HUNG_AFTER`] — or, for a node named the data leader that has
    /// not taken the role yet, kept the save recording its new epoch waiting
    /// [`TAKING_OVER_HUNG_AFTER`] (read from atomics and locks no hung write holds); says so
    /// when that starts and ends.
    fn disk_hangs(&self) -> bool {
        let wal = self.node.store().wal_stats().disk_wait_seconds.max(0.0);
        let meta = self.node.meta_save_wait().as_secs_f64();
        let hung = wal.max(meta) >= DISK_HUNG_AFTER.as_secs_f64();
        let taking_over = !hung
            && meta >= TAKING_OVER_HUNG_AFTER.as_secs_f64()
            && self.cluster.named_leader()
            && self.node.role() != Role::Leader;
        let hangs = hung || taking_over;
        if hangs != self.silent_for_disk.swap(hangs, Ordering::AcqRel) {
            if taking_over {
                tracing::error!(
                    meta_waited_ms = (meta * 1e3) as u64,
                    "named the data leader, but the disk has kept the save of node.meta that \
                     records the new epoch waiting: not renewing this node's session until it \
                     answers (the controller fences this node and elects another leader)"
                );
            } else if hangs {
                tracing::error!(
                    wal_waited_ms = (wal * 1e3) as u64,
                    meta_waited_ms = (meta * 1e3) as u64,
                    "the disk has kept a write or fdatasync of the WAL, or a save of node.meta, \
                     waiting: not renewing this node's session until it answers (the \
                     controller fences this node as it would a dead one; a leader is replaced)"
                );
            } else {
                tracing::warn!("the disk answers again: heartbeating the controller again");
            }
        }
        hangs
    }

    /// Sends a heartbeat on a task of its own, unless too many are in flight.
    fn spawn_heartbeat(self: &Arc<Self>) {
        if self.heartbeats_in_flight.fetch_add(1, Ordering::AcqRel) >= HEARTBEATS_IN_FLIGHT_MAX {
            self.heartbeats_in_flight.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let driver = self.clone();
        tokio::spawn(async move {
            driver.heartbeat().await;
            driver.heartbeats_in_flight.fetch_sub(1, Ordering::AcqRel);
        });
    }

    /// One heartbeat: the position out, the metadata and the lease back.
    async fn heartbeat(self: &Arc<Self>) {
        let leads = self.node.role() == Role::Leader;
        let leader_epoch = self.node.leader_epoch();
        let position = self.node.position();
        let request = HeartbeatRequest {
            cluster_id: self.cluster.controller().cluster_id(),
            node: self.cluster.node_id(),
            leader_epoch,
            position: Position {
                epoch: position.epoch,
                id: position.id,
            },
            caught_up: position.caught_up,
        };
        let sent_at = Instant::now();
        let answered = tokio::time::timeout(
            self.cluster.timing().session_timeout,
            self.cluster.client().heartbeat(&request),
        )
        .await;
        let reply = match answered {
            Ok(Ok(reply)) => reply,
            Ok(Err(error)) => {
                tracing::debug!(%error, "heartbeat not answered");
                return;
            }
            Err(_) => {
                tracing::debug!("heartbeat timed out");
                return;
            }
        };
        self.offer(&reply.meta);
        self.heard_controller.store(true, Ordering::Release);
        self.say_if_ahead_of_the_cluster(&reply.meta);
        if !leads && reply.meta.data_leader.is_some() {
            // The active controller names this epoch's leader as of at least `sent_at`: a
            // follower of it bounds its staleness by this too.
            self.node.confirm_leader(reply.meta.leader_epoch, sent_at);
        }
        if leads {
            let granted = reply.lease_ms.map(Duration::from_millis);
            let (epoch, valid_until) = {
                let mut lease = lock(&self.lease);
                lease.on_reply(sent_at, leader_epoch, granted);
                (lease.epoch(), lease.valid_until())
            };
            match valid_until {
                Some(valid_until) => self.node.grant_lease(epoch, valid_until),
                None => self.node.revoke_lease(),
            }
        }
        self.update_ready();
    }

    /// A node that follows no one while it records an epoch above the active controller's
    /// (an answer to its heartbeat, read linearizably) can never take a role: epochs come only
    /// from the controller, so its `node.meta` is damaged, edited or from another run of the
    /// cluster. Said as an error once it lasted [`AHEAD_OF_THE_CLUSTER_FOR`], then every
    /// [`AHEAD_OF_THE_CLUSTER_REPEAT`] (and on `/health`), rather than leaving the node
    /// silently roleless.
    fn say_if_ahead_of_the_cluster(&self, meta: &ClusterMeta) {
        let recorded = self.node.leader_epoch();
        let mut ahead = lock(&self.ahead_of_the_cluster);
        if self.node.role() != Role::NoLeader || recorded <= meta.leader_epoch {
            ahead.0 = None;
            return;
        }
        // Only when it lasts: an answer sent before this node heard of a newer epoch (from
        // its leader or its own controller) may arrive just after.
        let since = *ahead.0.get_or_insert_with(Instant::now);
        if since.elapsed() < AHEAD_OF_THE_CLUSTER_FOR
            || ahead
                .1
                .is_some_and(|said| said.elapsed() < AHEAD_OF_THE_CLUSTER_REPEAT)
        {
            return;
        }
        ahead.1 = Some(Instant::now());
        tracing::error!(
            recorded,
            cluster_epoch = meta.leader_epoch,
            "this node records an epoch above the cluster's, which only the controller gives: \
             its node.meta is damaged, edited or from another run of the cluster, and it takes \
             no role. Stop it, remove it from the cluster (DELETE /admin/members/N on a running \
             node), move its controller/ and node.meta aside and start it again"
        );
    }

    /// On the leader: proposes the ISR the data plane wants, one change at a time.
    fn propose_isr_change(self: &Arc<Self>) {
        let node_id = self.cluster.node_id();
        let Some(view) = self.cluster.view() else {
            return;
        };
        if view.data_leader != Some(node_id) || self.isr_in_flight.load(Ordering::Acquire) {
            return;
        }
        let Some(change) = self.node.wanted_isr() else {
            return;
        };
        self.isr_in_flight.store(true, Ordering::Release);
        let command = Command::ChangeIsr {
            sender: node_id,
            leader_epoch: view.leader_epoch,
            isr: change.isr,
            expected_version: Some(change.based_on),
        };
        let driver = self.clone();
        tokio::spawn(async move {
            driver.propose(&command).await;
            driver.isr_in_flight.store(false, Ordering::Release);
        });
    }

    /// A node named leader of an epoch it led before a restart (faster than its session)
    /// never leads that epoch twice: it asks for a new epoch with the same ISR whose leader
    /// the controller elects — the live ISR member holding the most, itself after a plain
    /// crash (alone in the ISR, it names itself) — unless it lost committed entries
    /// (`Node::may_lead`): then without itself in the ISR. It named itself before: its
    /// `node.meta` commit id lags by up to a second, so a node whose disk lost the log's tail
    /// (a power cut under `never`, a disk that drops written data) passed `may_lead`, led, and
    /// the followers holding more cut 62–84 acknowledged writes (a rolling-restart
    /// exploration, 3 of 3 with the restart 50 ms after the kill). Once per epoch while a
    /// proposal is in flight or applied; again after one that did not get through.
    fn ask_for_reelection(self: &Arc<Self>, meta: &ClusterMeta) {
        let Some(epoch) = self.node.wanted_reelection() else {
            return;
        };
        if epoch != meta.leader_epoch || meta.data_leader != Some(self.cluster.node_id()) {
            return;
        }
        if *lock(&self.reelection) == Some(epoch) {
            return;
        }
        let node_id = self.cluster.node_id();
        if self.node.may_lead(&meta.isr) {
            // Alone in the ISR nobody holds more: it names itself, and a lone node restarted
            // leads at once. Otherwise the controller elects the live ISR member holding the
            // most — this node after a plain crash — and this node serves no read until it
            // has its role (`Node::awaits_role_after_leading`).
            let alone = meta.isr.iter().all(|&id| id == node_id);
            tracing::info!(
                epoch,
                alone,
                "named leader of an epoch this node led before a restart: asking for a new one, \
                 led by the in-sync replica holding the most"
            );
            self.propose_election(epoch, alone.then_some(node_id), meta.isr.clone());
        } else {
            // It lost committed entries another ISR member may hold: a new epoch without a
            // leader and without this node in the ISR, so the controller elects the ISR member
            // holding the most (this node rejoins the ISR once it caught up).
            tracing::warn!(
                epoch,
                "named leader, but this node lost committed entries: asking the controller to \
                 elect another in-sync replica"
            );
            self.propose_election(epoch, None, self.isr_without_this_node(meta));
        }
    }

    /// A node named leader that cannot take the role for want of disk space (its epoch's no-op
    /// or the epoch's record in `node.meta` found no room) asks the controller, once per
    /// epoch, to elect another in-sync replica in a new epoch without this node in the ISR —
    /// as a Kafka broker whose log directory fails gives up its leaderships. A full disk may
    /// stay full until an operator makes room, and the controller takes the node for the
    /// leader meanwhile: before, the cluster took no write until then (a planned transfer to a
    /// node whose disk was full: 9.8 s without a write in the disk-fault nemesis). The node
    /// follows the new leader once it has room, and rejoins the ISR once it caught up. Alone
    /// in the ISR, it keeps trying until there is room: no other node holds every
    /// acknowledged write.
    fn hand_over_without_room(self: &Arc<Self>, meta: &ClusterMeta) {
        if meta.data_leader != Some(self.cluster.node_id()) {
            return;
        }
        let others = self.isr_without_this_node(meta);
        if others.is_empty() {
            return;
        }
        if *lock(&self.reelection) != Some(meta.leader_epoch) {
            tracing::warn!(
                epoch = meta.leader_epoch,
                isr = ?others,
                "named leader, but this node's disk has no room: asking the controller to elect \
                 another in-sync replica"
            );
        }
        self.propose_election(meta.leader_epoch, None, others);
    }

    /// The newest view's ISR without this node.
    fn isr_without_this_node(&self, meta: &ClusterMeta) -> BTreeSet<NodeId> {
        let node_id = self.cluster.node_id();
        meta.isr
            .iter()
            .copied()
            .filter(|&id| id != node_id)
            .collect()
    }

    /// Proposes a new epoch after `epoch` led by `new_leader` (`None`: the controller elects
    /// the ISR member holding the most) with `new_isr`, once per epoch unless the proposal
    /// fails (then again at the next view of that epoch).
    fn propose_election(
        self: &Arc<Self>,
        epoch: u64,
        new_leader: Option<NodeId>,
        new_isr: BTreeSet<NodeId>,
    ) {
        {
            let mut asked = lock(&self.reelection);
            if *asked == Some(epoch) {
                return;
            }
            *asked = Some(epoch);
        }
        let command = Command::ElectLeader {
            expected_epoch: epoch,
            new_leader,
            new_isr,
            unclean: false,
        };
        let driver = self.clone();
        tokio::spawn(async move {
            if !driver.propose(&command).await {
                *lock(&driver.reelection) = None;
            }
        });
    }

    /// A leader whose log refuses writes (a write or `fdatasync` failed: kv-wal never retries,
    /// and nothing more is durable here until a restart) hands its leadership to the ISR
    /// member holding the most of its log by a planned transfer (`BeginTransfer`, then
    /// `follow_transfer`), so the cluster takes writes again without losing one; etcd and
    /// Kafka likewise take a leader with a failed disk out of service. Asked once per transfer
    /// timeout while no transfer is pending (a cancelled one is asked again). With no other
    /// ISR member heard from, nothing can take over: it says so at the same pace.
    fn hand_over_if_the_log_failed(self: &Arc<Self>, meta: &ClusterMeta) {
        let node_id = self.cluster.node_id();
        if meta.data_leader != Some(node_id) || meta.transfer.is_some() {
            return;
        }
        let Some((reason, successor)) = self.node.log_failed_successor(&meta.isr) else {
            return;
        };
        let now = Instant::now();
        {
            let mut asked = lock(&self.hand_over);
            let pace = self.cluster.timing().transfer_timeout;
            if asked.is_some_and(|(epoch, at)| {
                epoch == meta.leader_epoch && now.saturating_duration_since(at) < pace
            }) {
                return;
            }
            *asked = Some((meta.leader_epoch, now));
        }
        let Some(to) = successor else {
            tracing::error!(
                %reason,
                isr = ?meta.isr,
                "this leader's log refuses writes and no other in-sync replica is there to take \
                 over: writes stop until it is restarted"
            );
            return;
        };
        tracing::error!(
            %reason,
            to,
            epoch = meta.leader_epoch,
            "this leader's log refuses writes: handing the leadership to node {to}"
        );
        let driver = self.clone();
        tokio::spawn(async move {
            driver.propose(&Command::BeginTransfer { to }).await;
        });
    }

    /// Proposes the write quorum this node was started with, once, if the cluster's differs
    /// (see [`Driver::with_write_quorum`]); a refusal (more than the members) is logged.
    fn propose_write_quorum(self: &Arc<Self>, meta: &ClusterMeta) {
        let Some(wanted) = lock(&self.wanted_write_quorum).take() else {
            return;
        };
        if meta.write_quorum as usize == wanted {
            return;
        }
        tracing::warn!(
            cluster = meta.write_quorum,
            wanted,
            "the cluster's write quorum differs from this node's --write-quorum: asking the \
             controller to set it"
        );
        let command = Command::SetWriteQuorum {
            write_quorum: wanted as u32,
        };
        let driver = self.clone();
        tokio::spawn(async move {
            if !driver.propose(&command).await {
                tracing::warn!(
                    wanted,
                    "the cluster's write quorum stays as it was: see the refusal above"
                );
            }
        });
    }

    /// Proposes `command` through the active controller and offers the resulting metadata;
    /// whether it applied.
    async fn propose(self: &Arc<Self>, command: &Command) -> bool {
        match self.cluster.client().propose(command).await {
            Ok(ApplyResult::Applied { meta }) => {
                tracing::info!(%command, "applied");
                self.offer(&meta);
                true
            }
            Ok(ApplyResult::Rejected { rejection }) => {
                tracing::info!(%command, %rejection, "refused by the controller");
                false
            }
            Err(error) => {
                tracing::warn!(%command, %error, "not proposed");
                false
            }
        }
    }

    /// Carries out a planned transfer begun in this leader's epoch, and takes writes again once
    /// the view shows it cancelled.
    fn follow_transfer(self: &Arc<Self>, meta: &ClusterMeta) {
        let node_id = self.cluster.node_id();
        let leads = meta.data_leader == Some(node_id);
        let mut carrying = lock(&self.transfer);
        if let Some((_, epoch)) = *carrying {
            if leads && meta.leader_epoch == epoch && meta.transfer.is_none() {
                tracing::warn!(
                    epoch,
                    "the leadership transfer was cancelled: taking writes again"
                );
                self.node.cancel_transfer();
                self.cluster.set_handing_over(false);
                *carrying = None;
            } else if meta.leader_epoch != epoch {
                // The transfer's epoch is over, whoever leads now: a node elected again (the
                // target fell out of the ISR, or died) is not handing anything over, and
                // would otherwise refuse every read as "handing over" for as long as it led.
                self.cluster.set_handing_over(false);
                *carrying = None;
            }
        }
        let Some(transfer) = meta.transfer else {
            return;
        };
        if !leads || transfer.leader_epoch != meta.leader_epoch || carrying.is_some() {
            return;
        }
        *carrying = Some((transfer.to, transfer.leader_epoch));
        self.cluster.set_handing_over(true);
        let (to, epoch) = (transfer.to, transfer.leader_epoch);
        let timeout = self.cluster.timing().transfer_timeout;
        tracing::info!(
            to,
            epoch,
            "handing the leadership over: writes stop until it is done"
        );
        let driver = self.clone();
        tokio::spawn(async move {
            let command = match driver.node.prepare_transfer(to, timeout).await {
                Ok(()) => Command::TransferLeader {
                    sender: node_id,
                    leader_epoch: epoch,
                    to,
                    leaving: *driver.stopping.borrow(),
                },
                Err(error) => {
                    tracing::warn!(%error, to, "cannot hand the leadership over: cancelling");
                    Command::CancelTransfer {
                        leader_epoch: epoch,
                    }
                }
            };
            // On no answer the controller cancels the transfer at its timeout.
            driver.propose(&command).await;
        });
    }
}
