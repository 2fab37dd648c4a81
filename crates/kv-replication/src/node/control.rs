//! The controller's side of a node (issue 13): the wiring turns the controller's metadata and
//! heartbeat replies into calls here, and asks the node what to report and propose.
//!
//! - [`Node::apply_cluster_view`]: the controller's view → the role ([`crate::view::decide`]).
//! - [`Node::grant_lease`] / [`Node::revoke_lease`]: the leader acknowledges writes (and serves
//!   linearizable reads) only under a lease for its epoch.
//! - [`Node::position`], [`Node::leader_epoch`]: what the heartbeat reports.
//! - [`Node::wanted_isr`], [`Node::wanted_reelection`]: what the wiring should propose.
//! - [`Node::prepare_transfer`] / [`Node::cancel_transfer`]: a planned leadership transfer.
//! - [`Node::leader_contact_age`], [`Node::staleness`], [`Node::lag_limit`],
//!   [`Node::linearizable_reads`]: health and bounded-staleness reads.
//! - [`Node::run_replication`]: the fetch loop, following whichever leader the node is told of.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{
    exclusive, lock, off_the_workers, persist_epoch, progress_or_role_change, take_leadership,
    Node, RoleState,
};
use crate::error::{Error, Result};
use crate::leader::{IsrChange, LeaderState, Membership};
use crate::log_view::LogView;
use crate::meta::NodeMeta;
use crate::transport::Transport;
use crate::view::{decide, ClusterView, Standing, ViewAction};

/// Where a node's log ends and whether it is in sync, as its heartbeat reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The epoch of the entry at `id` (0: an empty log).
    pub epoch: u64,
    /// The highest id this node holds durably.
    pub id: u64,
    /// A follower: it held everything its leader had, as of a fetch answer within the lag
    /// limit. The leader: always.
    pub caught_up: bool,
}

impl Node {
    /// Applies the controller's view (idempotent; never back to a lower epoch; see
    /// [`crate::view`]): leads a new epoch it is named leader of (persisting the epoch and
    /// writing the epoch's no-op first; no write is acknowledged until a lease is granted),
    /// follows the named leader (a leader steps down at once), follows nobody without one, and
    /// as leader takes ISR and write-quorum changes. Named leader of an epoch it already used,
    /// it follows nobody and [`Node::wanted_reelection`] says so. Fails on a view of another
    /// cluster or node, or when the epoch cannot be recorded.
    ///
    /// A role change waits on the disk — the epoch recorded in the meta file, a new leader's
    /// no-op — off the async workers; a new epoch to follow is recorded before the change
    /// takes the locks that writes and role reads wait on, so a disk that hangs there holds
    /// the calling thread alone.
    pub fn apply_cluster_view(&self, view: &ClusterView) -> Result<()> {
        let Some(node_id) = self.node_id else {
            return Err(Error::NotControlled);
        };
        if view.node_id != node_id {
            return Err(Error::ViewMismatch(format!(
                "a view for node {} given to node {node_id}",
                view.node_id
            )));
        }
        self.adopt_cluster(view.cluster_id)?;
        let membership = Membership {
            isr: view.isr.clone(),
            members: view.members.clone(),
            write_quorum: view.write_quorum.max(1),
            version: view.version,
        };
        // The same view comes with every heartbeat reply: decide first without holding writes
        // off, and take the role change path (which does) only when the role changes.
        let quick = {
            let role = lock(&self.role);
            let highest_led = self.highest_epoch_led(&self.meta.get());
            decide(&standing(&role), highest_led, view)
        };
        match quick {
            ViewAction::Nothing => return Ok(()),
            ViewAction::UpdateLeader => {
                let (changed, short) = self
                    .with_leader(|leader| {
                        let before = (leader.maximal_isr(), leader.write_quorum());
                        leader.set_membership(membership.clone());
                        let after = (leader.maximal_isr(), leader.write_quorum());
                        (before != after, leader.isr_short())
                    })
                    .unwrap_or((false, true));
                if !short {
                    // Whole again, even with no write to see it: a later shortage is a new
                    // one (its first write waits; `Node::wait_for_in_sync`).
                    self.end_in_sync_shortage();
                }
                if changed {
                    self.recompute_and_publish();
                }
                return Ok(());
            }
            _ => {}
        }
        // A role change waits on the disk — a new epoch recorded, a new leader's no-op — off
        // the workers.
        off_the_workers(|| self.change_role_for_view(&quick, view, node_id, membership))
    }

    /// [`Node::apply_cluster_view`]'s role change, with writes held off. A new epoch to follow
    /// (`quick`'s) is recorded first, so the change records nothing while it holds the locks
    /// every request takes: a disk that hangs in that `fsync` holds this thread, not the node.
    fn change_role_for_view(
        &self,
        quick: &ViewAction,
        view: &ClusterView,
        node_id: u64,
        membership: Membership,
    ) -> Result<()> {
        if let ViewAction::Follow { epoch, .. } | ViewAction::CannotLead { epoch } = quick {
            self.depose_for_view(*epoch);
            self.record_view_epoch(*epoch)?;
        }
        if let ViewAction::Lead { epoch } = quick {
            // Not an epoch it will not take (`Node::unless_it_lost_committed_entries`).
            let commit_id = self.meta.get().commit_id;
            if crate::view::may_lead(node_id, self.store.last_id(), commit_id, &view.isr) {
                self.claim_epoch(*epoch)?;
            }
        }
        let mut noop = None;
        let action = self.change_role(|role, meta| {
            let standing = standing(role);
            let action = decide(&standing, self.highest_epoch_led(meta), view);
            let action = self.unless_it_lost_committed_entries(action, node_id, meta, view);
            let next = match &action {
                ViewAction::Nothing => None,
                ViewAction::UpdateLeader => {
                    if let RoleState::Leader(leader) = role {
                        leader.set_membership(membership.clone());
                    }
                    None
                }
                ViewAction::Lead { epoch } => {
                    let known_commit = meta.commit_id.max(self.commit_id());
                    let claim = *lock(&self.epoch_claim);
                    let (leader, ticket) = take_leadership(
                        &self.store,
                        &self.meta_files(),
                        meta,
                        claim,
                        node_id,
                        *epoch,
                        known_commit,
                        membership.clone(),
                        &self.options.leader,
                    )?;
                    // Its no-op is in the log: the claim is used.
                    *lock(&self.epoch_claim) = None;
                    noop = Some(ticket);
                    Some(RoleState::Leader(Box::new(leader)))
                }
                ViewAction::CannotLead { epoch } => {
                    let already = standing
                        == Standing::Follower {
                            leader_url: None,
                            epoch: *epoch,
                        };
                    if already {
                        None
                    } else {
                        Some(self.follower_role(meta, None, *epoch)?)
                    }
                }
                ViewAction::Follow { leader_url, epoch } => {
                    Some(self.follower_role(meta, leader_url.clone(), *epoch)?)
                }
            };
            Ok((next, action))
        })?;
        self.settle_view_action(action, noop)
    }

    /// After a role change: waits for a new epoch's no-op to be durable (a leader that needs
    /// no follower commits it at once) and publishes, or records that this node was named
    /// leader of an epoch it already used.
    fn settle_view_action(
        &self,
        action: ViewAction,
        noop: Option<kv_wal::AppendTicket>,
    ) -> Result<()> {
        match action {
            ViewAction::Nothing => {}
            ViewAction::UpdateLeader => self.recompute_and_publish(),
            ViewAction::Lead { epoch } => {
                *lock(&self.reelection_wanted) = None;
                self.awaits_role_after_leading
                    .store(false, std::sync::atomic::Ordering::Release);
                tracing::info!(epoch, "the controller named this node the data leader");
                // Once the no-op is durable, a leader that needs no follower (`N = 1`) commits
                // it without waiting for a write or a fetch. One fsync, once per epoch.
                if let Some(ticket) = noop {
                    ticket.wait().map_err(kv_store::Error::from)?;
                }
                self.recompute_and_publish();
            }
            ViewAction::CannotLead { epoch } => {
                self.awaits_role_after_leading
                    .store(true, std::sync::atomic::Ordering::Release);
                let mut wanted = lock(&self.reelection_wanted);
                if *wanted != Some(epoch) {
                    tracing::warn!(
                        epoch,
                        "named data leader of an epoch this node already led before a restart: \
                         not leading it again, asking for a new epoch"
                    );
                    *wanted = Some(epoch);
                }
            }
            ViewAction::Follow { leader_url, epoch } => {
                *lock(&self.reelection_wanted) = None;
                if leader_url.is_some() {
                    self.awaits_role_after_leading
                        .store(false, std::sync::atomic::Ordering::Release);
                }
                tracing::info!(epoch, leader = ?leader_url, "following");
            }
        }
        Ok(())
    }

    /// `action`, except that a node told to lead that may not ([`crate::view::may_lead`]: its
    /// log lacks entries it recorded as committed, another ISR member may hold them) follows
    /// nobody instead and asks the controller to elect another ([`Node::may_lead`]).
    fn unless_it_lost_committed_entries(
        &self,
        action: ViewAction,
        node_id: u64,
        meta: &NodeMeta,
        view: &ClusterView,
    ) -> ViewAction {
        let ViewAction::Lead { epoch } = action else {
            return action;
        };
        let last_id = self.store.last_id();
        if crate::view::may_lead(node_id, last_id, meta.commit_id, &view.isr) {
            return action;
        }
        // Logged once per epoch (the same view comes with every heartbeat reply).
        if *lock(&self.reelection_wanted) != Some(epoch) {
            tracing::error!(
            epoch,
            last_id,
            committed_id = meta.commit_id,
            "named data leader, but this node's log ends below the id it recorded as committed \
             (it lost committed entries): not leading, asking the controller to elect another \
             in-sync replica"
            );
        }
        ViewAction::CannotLead { epoch }
    }

    /// On a leader whose log refuses writes (a write or `fdatasync` failed and kv-wal latched
    /// it: nothing more can be made durable here until a restart), why, and the member of
    /// `isr` other than this node that holds the most of its log (heard from within the lag
    /// limit; `None` if none was): the wiring hands the leadership to it by a planned transfer
    /// (`Command::BeginTransfer`), which waits until it holds this whole log, so the cluster
    /// takes writes again without losing one. `None` while the log takes writes or this node
    /// does not lead.
    pub fn log_failed_successor(&self, isr: &BTreeSet<u64>) -> Option<(String, Option<u64>)> {
        let reason = self.store.log_status().poisoned?;
        let others: BTreeSet<u64> = isr
            .iter()
            .copied()
            .filter(|&id| Some(id) != self.node_id)
            .collect();
        let successor = self
            .with_leader(|leader| leader.most_advanced_of(&others, Instant::now()))
            .ok()?;
        Some((reason, successor))
    }

    /// Whether this node may lead with the in-sync replicas `isr` ([`crate::view::may_lead`]):
    /// not while its log ends below the commit id it recorded and another ISR member may hold
    /// what it lacks. The wiring asks before it proposes this node's re-election: when it may
    /// not, it proposes an election without it (a new epoch, no leader, the ISR without this
    /// node) so the controller elects the ISR member holding the most.
    pub fn may_lead(&self, isr: &BTreeSet<u64>) -> bool {
        let Some(node_id) = self.node_id else {
            return true;
        };
        let committed_id = self.meta.get().commit_id;
        crate::view::may_lead(node_id, self.store.last_id(), committed_id, isr)
    }

    /// A leader a view replaces (`epoch`, above its own, has begun) acknowledges nothing from
    /// now on, and the writes waiting on it end (they are refused, or end with their outcome
    /// unknown) — at once, in memory, before the role change records the epoch, which may
    /// wait on a hung disk.
    fn depose_for_view(&self, epoch: u64) {
        let deposed = self.with_leader(|leader| {
            let before = leader.deposed_by();
            leader.depose(epoch);
            leader.deposed_by() != before
        });
        if matches!(deposed, Ok(true)) {
            tracing::info!(
                epoch,
                "a newer epoch has begun: this leader takes no more writes"
            );
            self.progress.send_modify(|count| *count += 1);
        }
    }

    /// Records `epoch`, which a view names this node leader of, as led in the meta file before
    /// the role change takes it, holding only the meta's writer: a disk that hangs in that
    /// save holds the thread applying the view, while the node goes on answering in its old
    /// role (before, the save ran under the role change's locks, and the node answered nothing
    /// until the disk did). Until the epoch's no-op reaches the log the claim is unused
    /// ([`super::EpochClaim`]), so the role change may still take that epoch.
    fn claim_epoch(&self, epoch: u64) -> Result<()> {
        let mut meta = self.meta.write();
        let claim = *lock(&self.epoch_claim);
        if self.highest_epoch_led(&meta) >= epoch {
            // Led already; the role change refuses it.
            return Ok(());
        }
        if claim.is_some_and(|claim| claim.epoch == epoch) && meta.led_epoch == epoch {
            return Ok(());
        }
        let led_before = meta.led_epoch;
        persist_epoch(&self.meta_files(), &mut meta, epoch, true)?;
        *lock(&self.epoch_claim) = Some(super::EpochClaim { epoch, led_before });
        Ok(())
    }

    /// [`super::highest_epoch_led`] counting no epoch this process claimed and has not used.
    fn highest_epoch_led(&self, meta: &NodeMeta) -> u64 {
        super::highest_epoch_led(meta, &self.store, *lock(&self.epoch_claim))
    }

    /// Records `epoch`, a view's, as heard in the meta file if it is new, holding only the
    /// meta's writer (see [`Node::apply_cluster_view`]).
    fn record_view_epoch(&self, epoch: u64) -> Result<()> {
        let mut meta = self.meta.write();
        if epoch <= meta.epoch {
            return Ok(());
        }
        persist_epoch(&self.meta_files(), &mut meta, epoch, false)
    }

    fn adopt_cluster(&self, cluster_id: u64) -> Result<()> {
        let current = self.meta.get().cluster_id;
        if current == cluster_id {
            return Ok(());
        }
        if current != 0 {
            return Err(Error::ViewMismatch(format!(
                "this node belongs to cluster {current:016x}, the controller's view is of \
                 cluster {cluster_id:016x}"
            )));
        }
        self.adopt(Some(cluster_id))
    }

    fn recompute_and_publish(&self) {
        let durable = self.store.durable_id();
        if let Ok(commit_id) = self.with_leader(|leader| leader.recompute_commit(durable)) {
            self.publish_commit(commit_id);
        }
        self.progress.send_modify(|count| *count += 1);
    }

    /// The controller's lease for `epoch`: while `now < valid_until` this node, if it leads
    /// `epoch`, acknowledges writes and serves linearizable reads. A lease for another epoch
    /// (or for a leader that heard of a newer epoch) is ignored.
    pub fn grant_lease(&self, epoch: u64, valid_until: Instant) {
        let granted = self
            .with_leader(|leader| {
                let ours = leader.epoch() == epoch;
                if ours {
                    leader.grant_lease(valid_until);
                }
                ours
            })
            .unwrap_or(false);
        if granted {
            self.progress.send_modify(|count| *count += 1);
        }
    }

    /// Ends the lease now (the controller refused one, or the wiring lost it).
    pub fn revoke_lease(&self) {
        let _ = self.with_leader(|leader| leader.revoke_lease());
    }

    /// Whether this node leads but has not taken up its leadership yet: the controller has
    /// granted it no lease in its epoch, or its epoch's no-op is not applied. It serves no
    /// reads and acknowledges no writes meanwhile (a restarted leader: tens of milliseconds).
    pub fn leader_taking_up(&self) -> bool {
        match &*lock(&self.role) {
            RoleState::Leader(leader) => {
                leader.awaits_its_first_lease() || !self.noop_applied(leader)
            }
            _ => false,
        }
    }

    /// Why this leader commits nothing, if its ISR is too small for the write quorum
    /// ([`LeaderState::isr_shortage`]): its epoch's first entry waits for that too, so it
    /// serves no reads until a follower catches up and joins the ISR.
    pub fn isr_shortage(&self) -> Option<String> {
        match &*lock(&self.role) {
            RoleState::Leader(leader) => leader.isr_shortage(),
            _ => None,
        }
    }

    /// How long this node, leading, has been without a valid lease from the controller
    /// ([`LeaderState::without_lease_for`]); `None` while it holds one or does not lead.
    pub fn leader_without_lease_for(&self) -> Option<Duration> {
        match &*lock(&self.role) {
            RoleState::Leader(leader) => leader.without_lease_for(Instant::now()),
            _ => None,
        }
    }

    /// What the heartbeat reports: the highest id held durably, the epoch of that entry, and
    /// whether this node is caught up with its leader (the leader itself: always).
    pub fn position(&self) -> Position {
        let id = self.store.durable_id();
        let epoch = self.store.epoch_at(id).unwrap_or(0);
        let caught_up = match &*lock(&self.role) {
            RoleState::Leader(_) => true,
            RoleState::Follower { state, .. } => {
                state.is_caught_up(Instant::now(), self.lag_limit())
            }
        };
        Position {
            epoch,
            id,
            caught_up,
        }
    }

    /// The epoch this node leads, or else the highest it knows (the heartbeat's
    /// `leader_epoch`).
    pub fn leader_epoch(&self) -> u64 {
        let role_epoch = lock(&self.role).epoch();
        role_epoch.max(self.meta.get().epoch)
    }

    /// On the leader: the ISR change it wants the controller to apply (propose
    /// `Command::ChangeIsr{sender, leader_epoch, isr, expected_version: Some(based_on)}`), or
    /// `None`. One change is in flight at a time; the outcome comes back through
    /// [`Node::apply_cluster_view`].
    pub fn wanted_isr(&self) -> Option<IsrChange> {
        self.with_leader(|leader| leader.wanted_isr(Instant::now()))
            .ok()
            .flatten()
    }

    /// The epoch this node was named leader of but may not lead, having led it before a
    /// restart: propose `Command::ElectLeader{expected_epoch: epoch, ...}` for a new epoch
    /// (kvd names no leader unless this node is alone in the ISR: the controller elects the
    /// member holding the most).
    pub fn wanted_reelection(&self) -> Option<u64> {
        *lock(&self.reelection_wanted)
    }

    /// Whether this node, named leader of an epoch it led before a restart, has not yet led a
    /// new epoch or followed a leader. Its map holds only what its `node.meta` recorded as
    /// committed (saved once a second), so it may miss writes it acknowledged before the
    /// restart: it serves no read meanwhile, not even through the leaderless epoch its
    /// re-election may pass through.
    pub fn awaits_role_after_leading(&self) -> bool {
        self.awaits_role_after_leading
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// A planned transfer to node `to`: stops taking writes (new ones get
    /// [`Error::Unavailable`], retryable), waits until `to` holds this leader's whole log
    /// durably (its fetch acknowledges the last id), then returns, writes still refused: the
    /// wiring proposes `Command::TransferLeader` and the new view makes this node a follower
    /// (or [`Node::cancel_transfer`] takes writes again). On timeout, on a role change, or
    /// once `to` has acknowledged nothing new for half the lag limit while behind (a healthy
    /// follower's held fetch answers within that; one whose disk hangs never does: writes
    /// stopped for the whole `timeout` before), writes are taken again and the error says why.
    pub async fn prepare_transfer(&self, to: u64, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        let stall_max = self.options.leader.lag_limit / 2;
        let started = Instant::now();
        let mut progress = self.acknowledgements.subscribe();
        let mut role_changes = self.role_changes.subscribe();
        let leadership = *role_changes.borrow_and_update();
        let target = {
            // No write is between its role check and its submit while this is held.
            let _admission = exclusive(&self.admission);
            self.with_leader(|leader| leader.set_transfer(Some(to)))?;
            self.store.last_id()
        };
        tracing::info!(
            to,
            target,
            "preparing a leadership transfer: writes stopped"
        );
        // The target's durable id, and since when it has not moved.
        let mut held = (0, tokio::time::Instant::now());
        loop {
            if *role_changes.borrow_and_update() != leadership {
                return Err(Error::Unavailable(
                    "this node stopped leading while preparing the transfer".to_owned(),
                ));
            }
            let durable_id = self.with_leader(|leader| leader.follower_durable_id(to))?;
            if durable_id >= target {
                tracing::info!(to, target, "the transfer target holds the whole log");
                return Ok(());
            }
            if durable_id > held.0 {
                held = (durable_id, tokio::time::Instant::now());
            }
            let stalled_at = held.1 + stall_max;
            let wake = deadline.min(stalled_at);
            if !progress_or_role_change(wake, &mut progress, &mut role_changes).await {
                let now = tokio::time::Instant::now();
                if now < deadline && now < stalled_at {
                    continue;
                }
                self.cancel_transfer();
                let why = if now >= deadline {
                    format!("did not catch up with id {target}")
                } else {
                    format!(
                        "acknowledged nothing new for {} ms (it holds id {durable_id} of \
                         {target})",
                        stall_max.as_millis()
                    )
                };
                return Err(Error::Unavailable(format!(
                    "node {to} {why}: transfer abandoned after {} ms, writes resumed",
                    started.elapsed().as_millis()
                )));
            }
        }
    }

    /// Takes writes again after [`Node::prepare_transfer`] (the transfer was cancelled).
    pub fn cancel_transfer(&self) {
        let _ = self.with_leader(|leader| leader.set_transfer(None));
    }

    /// The active controller answered a heartbeat this node sent at `sent_at`, naming `epoch`
    /// the current leader epoch: a follower of that epoch knows its leader still led then
    /// ([`crate::follower::FollowerState::confirm_leader`]).
    pub fn confirm_leader(&self, epoch: u64, sent_at: Instant) {
        if let RoleState::Follower { state, .. } = &mut *lock(&self.role) {
            state.confirm_leader(epoch, sent_at);
        }
    }

    /// A follower under the controller: how long ago the controller last confirmed its leader
    /// still leads (`None`: never for its epoch, not under the controller, or this node leads).
    pub fn leader_confirmation_age(&self) -> Option<Duration> {
        match &*lock(&self.role) {
            RoleState::Follower { state, .. } => state
                .leader_confirmed_at()
                .map(|at| Instant::now().saturating_duration_since(at)),
            RoleState::Leader(_) => None,
        }
    }

    /// A follower: how long ago its leader last answered a fetch (`None`: never, or this node
    /// leads). `/health` is not ready past [`Node::lag_limit`].
    pub fn leader_contact_age(&self) -> Option<Duration> {
        match &*lock(&self.role) {
            RoleState::Follower { state, .. } => state
                .last_contact()
                .map(|at| Instant::now().saturating_duration_since(at)),
            RoleState::Leader(_) => None,
        }
    }

    /// How stale a read of this node's map may be: a follower, the time since it sent the last
    /// fetch whose answer's commit id it had applied, or since the controller last confirmed
    /// its leader, whichever is older (`?max_staleness_ms=N` is served when this is at most
    /// N); a leader with a valid lease and its no-op committed, zero. `None`: it cannot vouch
    /// for any bound.
    pub fn staleness(&self) -> Option<Duration> {
        let now = Instant::now();
        match &*lock(&self.role) {
            RoleState::Leader(leader) => self
                .leader_reads_linearizable(leader, now)
                .then_some(Duration::ZERO),
            RoleState::Follower { state, .. } => state.staleness(now),
        }
    }

    /// Whether a read on this node now is linearizable: it leads, holds a valid lease, and its
    /// epoch's no-op has committed and is applied — so is everything committed before it,
    /// whoever acknowledged it (a legacy leader: whenever it leads).
    pub fn linearizable_reads(&self) -> bool {
        match &*lock(&self.role) {
            RoleState::Leader(leader) => self.leader_reads_linearizable(leader, Instant::now()),
            RoleState::Follower { .. } => false,
        }
    }

    /// Waits (until `deadline`) for this leader to serve linearizable reads again
    /// ([`Node::linearizable_reads`]): a lease renewed after it lapsed (a heartbeat delayed by
    /// a starved CPU), the epoch's no-op applied. `false` at the deadline, and at once when
    /// this node no longer leads or heard of a newer epoch: a lease for its epoch is then
    /// never granted again; and at once for a leader without a lease for the lag limit (cut
    /// off from the controller: a write waits no longer either). A renewed lease is still
    /// this epoch's (the controller grants none to a superseded one), so a read after it is
    /// linearizable.
    pub async fn wait_linearizable_reads(&self, deadline: tokio::time::Instant) -> bool {
        let mut progress = self.progress.subscribe();
        let mut role_changes = self.role_changes.subscribe();
        let mut applied = self.applied.subscribe();
        let lag_limit = self.options.leader.lag_limit;
        loop {
            progress.borrow_and_update();
            applied.borrow_and_update();
            let now = Instant::now();
            match &*lock(&self.role) {
                RoleState::Leader(leader) if self.leader_reads_linearizable(leader, now) => {
                    return true
                }
                RoleState::Leader(leader)
                    if leader.deposed_by().is_none()
                        && leader.cut_off_at(lag_limit).is_none_or(|at| now <= at) => {}
                _ => return false,
            }
            let woken = tokio::time::timeout_at(deadline, async {
                tokio::select! {
                    _ = progress.changed() => {}
                    _ = role_changes.changed() => {}
                    _ = applied.changed() => {}
                }
            });
            if woken.await.is_err() {
                return false;
            }
        }
    }

    /// [`LeaderState::linearizable`], and the map holds the epoch's no-op: the commit id moves
    /// (under the role lock) a moment before the entries up to it are applied.
    fn leader_reads_linearizable(&self, leader: &LeaderState, now: Instant) -> bool {
        leader.linearizable(now) && self.noop_applied(leader)
    }

    /// Whether `leader`'s epoch no-op is applied here (a legacy leader has none: true).
    fn noop_applied(&self, leader: &LeaderState) -> bool {
        leader
            .noop_id()
            .is_none_or(|noop_id| self.store.applied_id() >= noop_id)
    }

    /// The lag limit (see [`crate::LeaderOptions::lag_limit`]).
    pub fn lag_limit(&self) -> Duration {
        self.options.leader.lag_limit
    }

    /// The node's replication task, until `shutdown` resolves: whenever the node follows a
    /// leader, the fetch loop ([`Node::run_follower`]) over `connect(leader_url)`; on every
    /// role change it starts again for the new leader (or waits, leading or knowing none). A
    /// loop stopped for an operator (another cluster, a local I/O failure) waits for the next
    /// role change.
    pub async fn run_replication<T: Transport>(
        self: Arc<Self>,
        connect: impl Fn(&str) -> T,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut role_changes = self.role_changes.subscribe();
        loop {
            let generation = *role_changes.borrow_and_update();
            let leader_url = match &*lock(&self.role) {
                RoleState::Follower {
                    leader_url: Some(url),
                    ..
                } => Some(url.clone()),
                _ => None,
            };
            if let Some(url) = leader_url {
                let transport = connect(&url);
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = self.fetch_loop(&transport, generation) => {}
                }
            }
            tokio::select! {
                _ = &mut shutdown => return,
                changed = role_changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

fn standing(role: &RoleState) -> Standing {
    match role {
        RoleState::Leader(leader) => Standing::Leader {
            epoch: leader.epoch(),
        },
        RoleState::Follower {
            leader_url, epoch, ..
        } => Standing::Follower {
            leader_url: leader_url.clone(),
            epoch: *epoch,
        },
    }
}
