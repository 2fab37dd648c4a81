//! The in-sync replica set on the leader: the controller's membership, the maximal ISR
//! (KIP-841: the applied ISR plus additions in flight), and the ISR changes the leader asks the
//! controller for — shrinking by members that lag past the lag limit, growing by members that
//! caught up.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::LeaderState;

/// The controller's view of the data plane, as the leader's commit rule needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// The applied ISR (the leader included).
    pub isr: BTreeSet<u64>,
    /// Every member of the cluster (ISR expansion proposes members only).
    pub members: BTreeSet<u64>,
    /// `N`: the ISR must have at least this many members for a write to be acknowledged.
    pub write_quorum: usize,
    /// The version of the controller's metadata this was read from
    /// ([`crate::ClusterView::version`]): an ISR change is decided against it.
    pub version: u64,
}

/// An ISR change the leader asks the controller for ([`LeaderState::wanted_isr`]): propose
/// `Command::ChangeIsr{sender, leader_epoch, isr, expected_version: Some(based_on)}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsrChange {
    /// The ISR wanted.
    pub isr: BTreeSet<u64>,
    /// The metadata version the change was decided against: the controller applies it only
    /// while its metadata is still at that version (KIP-841's partition epoch), so a request
    /// that arrives late, or twice, changes nothing.
    pub based_on: u64,
}

/// The ISR changes asked for against one metadata version, whose outcome is not known yet.
#[derive(Debug)]
pub(super) struct InFlight {
    /// The newest change asked for.
    pub(super) isr: BTreeSet<u64>,
    /// Every member any of them would add: each counts for commits until the outcome is known,
    /// since the controller may have applied (or may yet apply) any of them.
    pub(super) adding: BTreeSet<u64>,
    /// The version they were decided against.
    pub(super) based_on: u64,
    /// When the newest was asked for.
    pub(super) asked_at: Instant,
}

/// The state of a leader elected by the controller.
#[derive(Debug)]
pub(super) struct Elected {
    pub(super) node_id: u64,
    /// The id of this epoch's no-op: commits count from it on.
    pub(super) noop_id: u64,
    /// When the leadership began (the baseline of an ISR member never heard from).
    pub(super) since: Instant,
    pub(super) membership: Membership,
    /// The ISR changes asked for whose outcome is not known yet.
    pub(super) in_flight: Option<InFlight>,
    pub(super) lease_until: Option<Instant>,
    /// Highest id held at once by every maximal-ISR member of an ISR of at least `N`.
    pub(super) held_by_isr: u64,
    /// The same, of an ISR of at least `max(N, 2)`.
    pub(super) held_by_quorum: u64,
    /// A planned transfer to this node is being prepared: writes are refused.
    pub(super) transfer_to: Option<u64>,
}

impl Elected {
    /// The applied ISR plus the members whose addition is in flight.
    pub(super) fn maximal_isr(&self) -> BTreeSet<u64> {
        self.maximal_isr_members().collect()
    }

    /// The members of [`Elected::maximal_isr`], without building the set (an addition in
    /// flight may repeat a member): what every acknowledgement's commit rule walks.
    pub(super) fn maximal_isr_members(&self) -> impl Iterator<Item = u64> + '_ {
        let adding = self
            .in_flight
            .iter()
            .flat_map(|in_flight| in_flight.adding.iter());
        self.membership.isr.iter().chain(adding).copied()
    }
}

impl LeaderState {
    /// Applies the controller's ISR and write quorum (same epoch), unless it is older than the
    /// one applied (views arrive out of order). The ISR changes in flight end with a newer
    /// version: each was applied, or can no longer be.
    pub fn set_membership(&mut self, membership: Membership) {
        if let Some(elected) = &mut self.elected {
            if membership.version < elected.membership.version {
                return;
            }
            if elected
                .in_flight
                .as_ref()
                .is_some_and(|in_flight| membership.version > in_flight.based_on)
            {
                elected.in_flight = None;
            }
            self.options.write_quorum = membership.write_quorum;
            elected.membership = membership;
        }
    }

    /// The ISR this leader wants the controller to apply, or `None` (KIP-841): without the
    /// members that have not caught up with its log for longer than the lag limit (or never
    /// fetched since it leads), with the members outside it that caught up — they hold every
    /// id the ISR was ever counted for — and fetch. One change is in flight at a time: until
    /// the leader hears metadata newer than the version the change was decided against (the
    /// change was applied, or can no longer be), or for a lag limit — then it asks again
    /// against the same version. Until a removal is applied the member still counts; an
    /// addition counts from the moment it is asked for until its outcome is known, even if a
    /// later request no longer asks for it (the controller may have applied the first).
    pub fn wanted_isr(&mut self, now: Instant) -> Option<IsrChange> {
        let lag_limit = self.options.lag_limit;
        let elected = self.elected.as_ref()?;
        if self.deposed_by.is_some() {
            return None;
        }
        if let Some(in_flight) = &elected.in_flight {
            if now.saturating_duration_since(in_flight.asked_at) < lag_limit {
                return None;
            }
        }
        let wanted = self.isr_wanted_now(now);
        let elected = self.elected.as_mut()?;
        // No outcome for a lag limit (the request or the answer was lost): ask again, against
        // the same version. With nothing to change now, ask for the change in flight again,
        // so that it applies or is refused and its additions stop counting.
        let isr = match (&elected.in_flight, wanted) {
            (_, Some(wanted)) => wanted,
            (Some(in_flight), None) => in_flight.isr.clone(),
            (None, None) => return None,
        };
        let based_on = elected.membership.version;
        let mut adding: BTreeSet<u64> = isr.difference(&elected.membership.isr).copied().collect();
        if let Some(in_flight) = elected.in_flight.take() {
            adding.extend(in_flight.adding);
        }
        elected.in_flight = Some(InFlight {
            isr: isr.clone(),
            adding,
            based_on,
            asked_at: now,
        });
        Some(IsrChange { isr, based_on })
    }

    /// The ISR this leader would have now, if it differs from the applied one.
    fn isr_wanted_now(&self, now: Instant) -> Option<BTreeSet<u64>> {
        let lag_limit = self.options.lag_limit;
        let quorum = self.options.write_quorum;
        let commit_id = self.commit_id;
        let elected = self.elected.as_ref()?;
        let recent = |at: Instant| now.saturating_duration_since(at) <= lag_limit;
        let mut wanted = BTreeSet::from([elected.node_id]);
        let mut hung_up = Vec::new();
        for &member in &elected.membership.isr {
            let progress = self.followers.get(&member);
            let caught_up_at = progress
                .and_then(|progress| progress.caught_up_at)
                .unwrap_or(elected.since)
                .max(elected.since);
            if member == elected.node_id {
                wanted.insert(member);
                continue;
            }
            if !recent(caught_up_at) {
                continue;
            }
            if progress
                .and_then(|progress| progress.hung_up_at)
                .is_some_and(|at| now.saturating_duration_since(at) >= HUNG_UP_GRACE)
            {
                hung_up.push(member);
            } else {
                wanted.insert(member);
            }
        }
        let must_hold = elected
            .held_by_isr
            .max(elected.held_by_quorum)
            .max(elected.noop_id)
            .max(if quorum >= 2 { commit_id } else { 0 });
        for (&node_id, progress) in &self.followers {
            let joins = !elected.membership.isr.contains(&node_id)
                && elected.membership.members.contains(&node_id)
                && progress.durable_id >= must_hold
                && progress.caught_up_at.is_some_and(recent)
                && recent(progress.last_fetch_at)
                && progress.hung_up_at.is_none();
            if joins {
                wanted.insert(node_id);
            }
        }
        // A member that hung up leaves before the lag limit only while the ISR keeps
        // `max(N, 2)` members without it: what lets writes go on at once. Below that, its
        // leaving would let no write through sooner, and would leave the controller fewer
        // nodes to elect should this leader fail: it leaves after the lag limit, as one that
        // went silent does.
        let floor = quorum.max(2);
        // Those holding the most stay first (the better successors), the lower id on a tie.
        hung_up.sort_by_key(|member| {
            let durable_id = self
                .followers
                .get(member)
                .map_or(0, |progress| progress.durable_id);
            (std::cmp::Reverse(durable_id), *member)
        });
        for member in hung_up {
            if wanted.len() < floor {
                wanted.insert(member);
            }
        }
        (wanted != elected.membership.isr).then_some(wanted)
    }

    /// Records that `node_id` opened a replication stream (its opening fetch was recorded);
    /// returns the stream's number, for [`LeaderState::stream_hung_up`].
    pub fn stream_opened(&mut self, node_id: u64) -> u64 {
        self.followers.get_mut(&node_id).map_or(0, |progress| {
            progress.streams_opened += 1;
            progress.streams_opened
        })
    }

    /// Records that the follower `node_id` hung up its stream number `stream` at `now` (the
    /// connection ended or broke on its side). If that was its newest stream and it fetches
    /// nothing within [`HUNG_UP_GRACE`], the follower leaves the ISR ([`LeaderState::wanted_isr`])
    /// then, not after the lag limit, as long as the ISR keeps `max(N, 2)` members without it:
    /// a follower that stopped or crashed closed its connection, so writes need not wait the
    /// lag limit out for it. A follower that goes silent without closing (paused, cut off, its
    /// machine gone) still leaves after the lag limit.
    pub fn stream_hung_up(&mut self, node_id: u64, stream: u64, now: Instant) {
        if let Some(progress) = self.followers.get_mut(&node_id) {
            if progress.streams_opened == stream && progress.last_fetch_at <= now {
                progress.hung_up_at = Some(now);
            }
        }
    }

    /// Forgets followers outside the maximal ISR not heard from for a while. Runs at most
    /// every eighth of `follower_forget_after`, not at every fetch: its cost grows with the
    /// followers, and a fetch's must not (a follower is forgotten at most that much later).
    pub(super) fn prune(&mut self, now: Instant) {
        let forget_after = self.options.follower_forget_after;
        if self
            .pruned_at
            .is_some_and(|at| now.saturating_duration_since(at) < forget_after / 8)
        {
            return;
        }
        self.pruned_at = Some(now);
        let counted = self.maximal_isr();
        self.followers.retain(|node_id, progress| {
            counted.as_ref().is_some_and(|isr| isr.contains(node_id))
                || now.saturating_duration_since(progress.last_fetch_at) < forget_after
        });
    }
}

/// How long a follower that hung up its stream has to open another (a follower ends its stream
/// itself to retry after a failure, or to cut its log) before it leaves the ISR.
pub const HUNG_UP_GRACE: Duration = Duration::from_millis(100);
