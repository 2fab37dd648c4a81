//! The leader's bookkeeping, without I/O: it hears fetches, checks that each follower's log
//! matches its own by `(epoch, id)`, tracks what every follower holds durably, derives the
//! commit id, and decides when a write may be acknowledged.
//!
//! Two commit rules live here ([`LeaderState::new`] and [`LeaderState::elected`]):
//!
//! - **Elected by the controller** (issue 13): the leader's epoch, ISR and write quorum `N` come
//!   from the controller. Its first entry in the epoch is a no-op, and nothing before it counts
//!   as committed on this leader's authority (Raft's "figure 8"). An id commits once every member
//!   of the *maximal* ISR — the applied ISR plus members whose addition is in flight (KIP-841) —
//!   holds it durably and the ISR has at least `N` members (`N = 1`: once the leader holds it).
//!   Followers outside the ISR are tracked (lag, catch-up, ISR expansion) but never counted.
//!   A write is acknowledged only while the controller's lease for this epoch holds, and never
//!   again once a fetch told this leader of a higher epoch ([`FetchDecision::StepDown`]).
//! - **Legacy** (`kvd leader` before the wiring switches over): the `write_quorum`-th highest
//!   durable id of every follower heard from, no lease, no no-op.
//!
//! Every method takes `now`, so the logic runs on virtual time in tests.

mod isr;
mod options;
mod status;

pub use isr::{IsrChange, Membership, HUNG_UP_GRACE};
pub use options::{Acks, LeaderOptions, LAG_LIMIT_DEFAULT};
pub use status::{FollowerHealth, FollowerStatus};

use isr::Elected;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::log_view::LogView;
use crate::protocol::{FetchRequest, FetchResponse};

/// What the leader knows of one follower.
#[derive(Debug, Clone)]
struct Progress {
    /// Highest id the follower holds durably *and* that matches the leader's log.
    durable_id: u64,
    /// The follower's next id as of its last fetch.
    next_id: u64,
    first_fetch_at: Instant,
    last_fetch_at: Instant,
    /// Last time the follower held what the leader had (see [`LeaderState::on_fetch`]).
    caught_up_at: Option<Instant>,
    /// The leader's last id when this follower's previous fetch arrived.
    leader_last_at_fetch: u64,
    fetches: u64,
    /// Replication streams this follower opened: the number of its newest.
    streams_opened: u64,
    /// When the follower hung up its newest stream, if it has fetched nothing since: it
    /// stopped, or crashed ([`LeaderState::stream_hung_up`]).
    hung_up_at: Option<Instant>,
}

/// What to do with a fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchDecision {
    /// Answer now.
    Respond(FetchResponse),
    /// Nothing new (no entries, no newer commit id): hold the request until the log passes
    /// `next_id - 1`, the commit id moves or the wait ends, then ask again (with
    /// `may_wait = false` once the wait is over).
    Wait,
    /// The follower knows a higher leader epoch: this leader was replaced. It acknowledges
    /// nothing from now on ([`LeaderState::deposed_by`]); the driver steps down and answers
    /// "not the leader".
    StepDown {
        /// The epoch heard.
        epoch: u64,
    },
}

/// The leader's state.
#[derive(Debug)]
pub struct LeaderState {
    cluster_id: u64,
    epoch: u64,
    options: LeaderOptions,
    followers: BTreeMap<u64, Progress>,
    commit_id: u64,
    /// `None`: a legacy leader.
    elected: Option<Box<Elected>>,
    /// A higher epoch heard in a fetch.
    deposed_by: Option<u64>,
    /// When silent followers were last looked for ([`LeaderState::prune`]).
    pruned_at: Option<Instant>,
    /// The first id after a gap of the log a fetch reached that no snapshot covered.
    uncovered_gap: Option<u64>,
}

impl LeaderState {
    /// A legacy leader of `cluster_id` in `epoch` (it chose the epoch itself): the commit id
    /// is the `write_quorum`-th highest durable id of every follower heard from; no lease.
    pub fn new(cluster_id: u64, epoch: u64, options: LeaderOptions) -> LeaderState {
        LeaderState {
            cluster_id,
            epoch,
            options,
            followers: BTreeMap::new(),
            commit_id: 0,
            elected: None,
            deposed_by: None,
            pruned_at: None,
            uncovered_gap: None,
        }
    }

    /// A leader elected by the controller: node `node_id` leads `epoch`, whose no-op is entry
    /// `noop_id`, with the controller's ISR and write quorum. It acknowledges nothing until a
    /// lease is granted ([`LeaderState::grant_lease`]).
    pub fn elected(
        cluster_id: u64,
        epoch: u64,
        node_id: u64,
        noop_id: u64,
        membership: Membership,
        options: LeaderOptions,
        now: Instant,
    ) -> LeaderState {
        let mut leader = LeaderState::new(cluster_id, epoch, options);
        leader.options.write_quorum = membership.write_quorum;
        leader.elected = Some(Box::new(Elected {
            node_id,
            noop_id,
            since: now,
            membership,
            in_flight: None,
            lease_until: None,
            held_by_isr: 0,
            held_by_quorum: 0,
            transfer_to: None,
        }));
        leader
    }

    /// The cluster id.
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    /// The leader's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Raises the commit id to one known from before (the node's meta file, or the commit a
    /// follower heard from an earlier leader): such ids were committed by an earlier leader.
    pub fn restore_commit(&mut self, commit_id: u64) {
        self.commit_id = self.commit_id.max(commit_id);
    }

    /// The highest id this leadership may expose to readers. Never goes backwards.
    pub fn commit_id(&self) -> u64 {
        self.commit_id
    }

    /// The write quorum.
    pub fn write_quorum(&self) -> usize {
        self.options.write_quorum
    }

    /// The settings.
    pub fn options(&self) -> &LeaderOptions {
        &self.options
    }

    /// This epoch's no-op (a leader elected by the controller).
    pub fn noop_id(&self) -> Option<u64> {
        self.elected.as_ref().map(|elected| elected.noop_id)
    }

    /// The applied ISR (a leader elected by the controller).
    pub fn isr(&self) -> Option<&BTreeSet<u64>> {
        self.elected.as_ref().map(|elected| &elected.membership.isr)
    }

    /// The ISR that counts for commits: the applied one plus additions in flight.
    pub fn maximal_isr(&self) -> Option<BTreeSet<u64>> {
        self.elected.as_ref().map(|elected| elected.maximal_isr())
    }

    /// The higher epoch a fetch told this leader of, if any: it acknowledges nothing more.
    pub fn deposed_by(&self) -> Option<u64> {
        self.deposed_by
    }

    /// Another leader's `epoch`, above this one's, has begun (a follower or the controller's
    /// view says so): this leader acknowledges nothing from now on.
    pub fn depose(&mut self, epoch: u64) {
        if epoch > self.epoch {
            self.deposed_by = Some(self.deposed_by.unwrap_or(0).max(epoch));
            self.revoke_lease();
        }
    }

    /// The controller's lease for this epoch: acknowledge until `valid_until`. Extends,
    /// never shortens; ignored once deposed.
    pub fn grant_lease(&mut self, valid_until: Instant) {
        if self.deposed_by.is_some() {
            return;
        }
        if let Some(elected) = &mut self.elected {
            elected.lease_until = Some(
                elected
                    .lease_until
                    .map_or(valid_until, |until| until.max(valid_until)),
            );
        }
    }

    /// Ends the lease now.
    pub fn revoke_lease(&mut self) {
        if let Some(elected) = &mut self.elected {
            elected.lease_until = None;
        }
    }

    /// How long this leader has been without a valid lease at `now`: since its last lease
    /// ended, or since it began to lead if it holds none (never granted, or revoked: the
    /// controller refused it one). `None` while it holds one (and for a legacy leader, which
    /// needs none).
    pub fn without_lease_for(&self, now: Instant) -> Option<Duration> {
        if self.lease_valid(now) {
            return None;
        }
        Some(now.saturating_duration_since(self.lease_lapse()?))
    }

    /// When this leader counts as cut off from the controller (which has likely elected
    /// another): `lag_limit` after its lease ends — or, holding none, after its leadership
    /// began. A write or a read waits for a lease no later than this, and a write for its
    /// acknowledgements neither. `None` for a legacy leader, which needs no lease.
    pub fn cut_off_at(&self, lag_limit: Duration) -> Option<Instant> {
        Some(self.lease_lapse()? + lag_limit)
    }

    /// When the lease ends or ended (the leadership's start while none was granted).
    fn lease_lapse(&self) -> Option<Instant> {
        let elected = self.elected.as_ref()?;
        Some(
            elected
                .lease_until
                .map_or(elected.since, |until| until.max(elected.since)),
        )
    }

    /// Whether this leader, elected by the controller, has not been granted a lease in its
    /// epoch yet (a legacy leader needs none: false).
    pub fn awaits_its_first_lease(&self) -> bool {
        self.elected
            .as_ref()
            .is_some_and(|elected| elected.lease_until.is_none())
    }

    /// When the lease ends (`None`: no lease; a legacy leader needs none).
    pub fn lease_until(&self) -> Option<Instant> {
        self.elected
            .as_ref()
            .and_then(|elected| elected.lease_until)
    }

    /// Whether this leader may act on its own authority at `now`: not deposed, and (elected
    /// by the controller) holding a lease.
    pub fn lease_valid(&self, now: Instant) -> bool {
        self.deposed_by.is_none()
            && self
                .elected
                .as_ref()
                .is_none_or(|elected| elected.lease_until.is_some_and(|until| now < until))
    }

    /// Whether a read of this leader's map at `now` sees every acknowledged write: the lease
    /// holds and this epoch's no-op has committed (so everything earlier leaders acknowledged
    /// is committed and applied here).
    pub fn linearizable(&self, now: Instant) -> bool {
        self.lease_valid(now)
            && self
                .elected
                .as_ref()
                .is_none_or(|elected| self.commit_id >= elected.noop_id)
    }

    /// Whether the write `id` has the acknowledgements `acks` asks for at `now`, the leader
    /// holding `leader_durable_id` durably.
    pub fn acknowledged(&self, now: Instant, id: u64, acks: Acks, leader_durable_id: u64) -> bool {
        if !self.lease_valid(now) {
            return false;
        }
        match (&self.elected, acks) {
            (_, Acks::Leader) => leader_durable_id >= id,
            (_, Acks::WriteQuorum) | (None, Acks::Quorum) => self.commit_id >= id,
            (None, Acks::All) => self.commit_id >= id && self.all_live_followers_hold(now, id),
            (Some(elected), Acks::Quorum) if self.options.write_quorum <= 1 => {
                elected.held_by_quorum >= id
            }
            (Some(_), Acks::Quorum) => self.commit_id >= id,
            (Some(elected), Acks::All) => self.commit_id >= id && elected.held_by_isr >= id,
        }
    }

    /// Why a write under `acks` is not written now, if it is not: under `N >= 2` an ISR of
    /// fewer than `N` members — counting the additions asked for — commits nothing, so the
    /// write would only wait out the acks timeout and answer 503 with its outcome unknown (it
    /// commits if a follower catches up and rejoins later). The node waits for the ISR instead
    /// and, if it does not grow in time, refuses the write with nothing written, as Kafka
    /// answers `NOT_ENOUGH_REPLICAS` under `min.insync.replicas`. `acks=leader` asks for no
    /// commit and is taken; so is `acks=quorum` under `N = 1` (the entry commits under `N`;
    /// only the second copy it also asks for may be missing).
    pub fn too_few_in_sync(&self, acks: Acks) -> Option<String> {
        if acks == Acks::Leader {
            return None;
        }
        let shortage = self.isr_shortage()?;
        Some(format!(
            "not enough in-sync replicas: {shortage}; nothing was written — retry once a \
             follower has caught up and rejoined the ISR"
        ))
    }

    /// When the ISR is too small to commit anything ([`LeaderState::isr_short`]): "the write
    /// quorum is N but the ISR is [..] (M node(s))".
    pub fn isr_shortage(&self) -> Option<String> {
        if !self.isr_short() {
            return None;
        }
        let quorum = self.options.write_quorum;
        let isr: Vec<u64> = self.maximal_isr().unwrap_or_default().into_iter().collect();
        Some(format!(
            "the write quorum is {quorum} but the ISR is {isr:?} ({} node(s))",
            isr.len()
        ))
    }

    /// Whether the ISR, with the additions asked for, has fewer members than `N >= 2` asks
    /// ([`LeaderState::too_few_in_sync`]); counted without building the set: every write asks.
    pub fn isr_short(&self) -> bool {
        let Some(elected) = &self.elected else {
            return false;
        };
        let quorum = self.options.write_quorum;
        let isr = &elected.membership.isr;
        let adding = elected
            .in_flight
            .as_ref()
            .map_or(0, |in_flight| in_flight.adding.difference(isr).count());
        quorum >= 2 && isr.len() + adding < quorum
    }

    /// What a write waits for under `acks`, for error messages.
    pub fn describe(&self, acks: Acks) -> String {
        let quorum = self.options.write_quorum;
        match (&self.elected, acks) {
            (_, Acks::Leader) => "the leader".to_owned(),
            (None, Acks::Quorum | Acks::WriteQuorum) => format!("a write quorum of {quorum}"),
            (Some(_), Acks::WriteQuorum) if quorum <= 1 => "the leader".to_owned(),
            (Some(_), Acks::WriteQuorum) => {
                format!("every in-sync replica of an ISR of at least {quorum}")
            }
            (None, Acks::All) => "every live follower".to_owned(),
            (Some(_), Acks::Quorum) => format!(
                "every in-sync replica of an ISR of at least {}",
                quorum.max(2)
            ),
            (Some(_), Acks::All) => "every in-sync replica".to_owned(),
        }
    }

    /// Refuses writes while a planned transfer to `to` is prepared (`None`: takes them again).
    pub fn set_transfer(&mut self, to: Option<u64>) {
        if let Some(elected) = &mut self.elected {
            elected.transfer_to = to;
        }
    }

    /// The node a planned transfer is being prepared for.
    pub fn transfer_to(&self) -> Option<u64> {
        self.elected
            .as_ref()
            .and_then(|elected| elected.transfer_to)
    }

    /// The marks besides the commit id that an acknowledgement can move and a waiting write
    /// may wait for (`acks=all`'s and `acks=quorum`'s under the controller); `None` for a
    /// legacy leader, whose `acks=all` reads every live follower's durable id.
    pub fn ack_marks(&self) -> Option<(u64, u64)> {
        self.elected
            .as_ref()
            .map(|elected| (elected.held_by_isr, elected.held_by_quorum))
    }

    /// Of `candidates`, the follower that holds the most of this log durably (as of its last
    /// fetch; ties to the lower id), among those heard from within the lag limit of `now`;
    /// `None` if none was.
    pub fn most_advanced_of(&self, candidates: &BTreeSet<u64>, now: Instant) -> Option<u64> {
        let lag_limit = self.options.lag_limit;
        candidates
            .iter()
            .filter_map(|node_id| Some((*node_id, self.followers.get(node_id)?)))
            .filter(|(_, progress)| {
                now.saturating_duration_since(progress.last_fetch_at) <= lag_limit
            })
            .max_by(|(a, pa), (b, pb)| pa.durable_id.cmp(&pb.durable_id).then(b.cmp(a)))
            .map(|(node_id, _)| node_id)
    }

    /// Whether follower `node_id` holds `id` durably (as of its last fetch).
    pub fn follower_holds(&self, node_id: u64, id: u64) -> bool {
        self.follower_durable_id(node_id) >= id
    }

    /// The last id follower `node_id` holds durably, as of its last fetch (0 if unknown).
    pub fn follower_durable_id(&self, node_id: u64) -> u64 {
        self.followers
            .get(&node_id)
            .map_or(0, |progress| progress.durable_id)
    }

    /// Handles a fetch: checks the cluster and the follower's epoch, that the follower's log
    /// matches this one at `next_id - 1` (also when it is behind the compaction point, so a
    /// snapshot never replaces entries of another history unchecked), records the follower's
    /// durable id (the fetch is the acknowledgement), and answers with entries, or asks the
    /// caller to wait when there are none and `may_wait`. `record` is false for debugging
    /// views, which neither count as a follower nor depose the leader.
    pub fn on_fetch(
        &mut self,
        now: Instant,
        request: &FetchRequest,
        log: &impl LogView,
        may_wait: bool,
        record: bool,
    ) -> FetchDecision {
        if let Some(decision) = self.check_fetch(now, request, log, record) {
            return decision;
        }
        let last_id = log.last_id();
        if request.next_id > last_id {
            if may_wait && request.commit_id >= self.commit_id {
                return FetchDecision::Wait;
            }
            return FetchDecision::Respond(self.entries(log, Vec::new()));
        }
        match log.read_frames(request.next_id, request.bytes_max.max(1) as usize, last_id) {
            Ok(frames) => FetchDecision::Respond(self.entries(log, frames)),
            // The log skips the ids the follower needs next (it went on past a snapshot that
            // covers them: opened behind its snapshot): only the snapshot has them. An empty
            // answer here had the follower ask again forever.
            Err(Error::LogGap { found_id, .. }) if log.newest_snapshot_id() + 1 >= found_id => {
                FetchDecision::Respond(FetchResponse::SnapshotNeeded {
                    cluster_id: self.cluster_id,
                    leader_epoch: self.epoch,
                    first_id: found_id,
                })
            }
            // A gap no snapshot covers yet (a point-in-time or skip-corrupt repair dropped
            // those ids; the newest snapshot would bring the follower back to it): the
            // follower asks again, and the caller has a snapshot taken
            // ([`LeaderState::take_uncovered_gap`]).
            Err(Error::LogGap { found_id, .. }) => {
                self.uncovered_gap = Some(found_id);
                FetchDecision::Respond(self.entries(log, Vec::new()))
            }
            // The log is damaged where the follower reads (a segment the disk corrupted under
            // the running leader; its map, applied before, is whole): the newest snapshot gets
            // the follower past the damage if it covers the id, or the caller has one taken.
            // Before, the follower asked again forever.
            Err(Error::Store(error)) if error.is_damage() => {
                let newest = log.newest_snapshot_id();
                if newest >= request.next_id {
                    return FetchDecision::Respond(FetchResponse::SnapshotNeeded {
                        cluster_id: self.cluster_id,
                        leader_epoch: self.epoch,
                        first_id: newest + 1,
                    });
                }
                self.uncovered_gap = Some(request.next_id + 1);
                FetchDecision::Respond(self.entries(log, Vec::new()))
            }
            // The log changed under us (purged or truncated): the follower asks again.
            Err(_) => FetchDecision::Respond(self.entries(log, Vec::new())),
        }
    }

    /// The first id after a gap of the log that a fetch reached and no snapshot covered, once:
    /// a snapshot through the id before it lets the follower past.
    pub fn take_uncovered_gap(&mut self) -> Option<u64> {
        self.uncovered_gap.take()
    }

    /// Everything [`LeaderState::on_fetch`] does before it reads entries: the cluster and
    /// epoch checks, the divergence and compaction checks, and (when `record`) the follower's
    /// acknowledgement and the commit id it moves. `Some` is the answer when the fetch gets no
    /// entries from here (another cluster, a deposing epoch, a cut, a snapshot to install);
    /// `None` when the follower's log matches this one and entries may follow. A stream's
    /// acknowledgements come through here alone (the stream pushes entries itself).
    pub fn check_fetch(
        &mut self,
        now: Instant,
        request: &FetchRequest,
        log: &impl LogView,
        record: bool,
    ) -> Option<FetchDecision> {
        let cluster_id = self.cluster_id;
        let leader_epoch = self.epoch;
        let known_cluster = request.cluster_id == cluster_id;
        let new_empty_follower = request.cluster_id == 0 && request.next_id == 1;
        if !known_cluster && !new_empty_follower {
            return Some(FetchDecision::Respond(FetchResponse::ClusterMismatch {
                leader_cluster_id: cluster_id,
                leader_epoch,
            }));
        }
        if record && request.leader_epoch > leader_epoch {
            self.depose(request.leader_epoch);
            return Some(FetchDecision::StepDown {
                epoch: request.leader_epoch,
            });
        }
        let first_id = log.first_id();
        let last_id = log.last_id();
        if record {
            self.prune(now);
            let progress = self.followers.entry(request.node_id).or_insert(Progress {
                durable_id: 0,
                next_id: request.next_id,
                first_fetch_at: now,
                last_fetch_at: now,
                caught_up_at: None,
                leader_last_at_fetch: u64::MAX,
                fetches: 0,
                streams_opened: 0,
                hung_up_at: None,
            });
            progress.next_id = request.next_id;
            progress.fetches += 1;
        }
        let previous = request.next_id - 1;
        if let Some(truncate_after) = divergence(log, previous, request.last_epoch) {
            if record {
                self.fetched(now, request.node_id, None, last_id);
            }
            return Some(FetchDecision::Respond(FetchResponse::Diverged {
                cluster_id,
                leader_epoch,
                truncate_after,
            }));
        }
        if request.next_id < first_id {
            if record {
                self.fetched(now, request.node_id, None, last_id);
            }
            return Some(FetchDecision::Respond(FetchResponse::SnapshotNeeded {
                cluster_id,
                leader_epoch,
                first_id,
            }));
        }
        // The follower's log matches through `previous`: its durable entries count.
        if record {
            self.fetched(
                now,
                request.node_id,
                Some(request.durable_id.min(previous)),
                last_id,
            );
            self.recompute_commit(log.durable_id());
        }
        None
    }

    /// Records a fetch of `node_id` that arrived at `now` (when it was recorded at all), with
    /// its matched durable id if its log matches. Caught up (Kafka's rule): it held the
    /// leader's last id as of now — or as of its previous fetch, which it then held at that
    /// fetch's time — so a follower one batch behind under a steady load stays in sync.
    fn fetched(&mut self, now: Instant, node_id: u64, durable_id: Option<u64>, last_id: u64) {
        let Some(progress) = self.followers.get_mut(&node_id) else {
            return;
        };
        if progress.last_fetch_at > now {
            return;
        }
        let previous_fetch_at = progress.last_fetch_at;
        progress.last_fetch_at = now;
        progress.hung_up_at = None;
        let previous_target = std::mem::replace(&mut progress.leader_last_at_fetch, last_id);
        let Some(durable_id) = durable_id else {
            return;
        };
        progress.durable_id = durable_id;
        if durable_id >= last_id {
            progress.caught_up_at = Some(now);
        } else if durable_id >= previous_target {
            progress.caught_up_at = Some(
                progress
                    .caught_up_at
                    .map_or(previous_fetch_at, |at| at.max(previous_fetch_at)),
            );
        }
    }

    /// An answer with `frames` (possibly none) and this leader's commit id and log bounds.
    pub fn entries(&self, log: &impl LogView, frames: Vec<u8>) -> FetchResponse {
        FetchResponse::Entries {
            cluster_id: self.cluster_id,
            leader_epoch: self.epoch,
            commit_id: self.commit_id,
            first_id: log.first_id(),
            last_id: log.last_id(),
            frames,
        }
    }

    /// Recomputes the commit id from the leader's durable id and the followers' acks, never
    /// above the leader's own durable id (an entry the leader could lose in a power cut never
    /// commits) and never backwards. Elected: see the module; legacy: the `write_quorum`-th
    /// highest durable id of every follower heard from.
    pub fn recompute_commit(&mut self, leader_durable_id: u64) -> u64 {
        let quorum = self.options.write_quorum.max(1);
        let Some(elected) = &mut self.elected else {
            let mut durable: Vec<u64> = self
                .followers
                .values()
                .map(|progress| progress.durable_id)
                .collect();
            durable.push(leader_durable_id);
            durable.sort_unstable_by(|a, b| b.cmp(a));
            if let Some(&candidate) = durable.get(quorum - 1) {
                self.commit_id = self.commit_id.max(candidate.min(leader_durable_id));
            }
            return self.commit_id;
        };
        // The ISR's members only (a handful), each looked up: the cost of an
        // acknowledgement does not grow with the followers outside the ISR.
        let floor = elected
            .maximal_isr_members()
            .filter(|&member| member != elected.node_id)
            .map(|member| {
                self.followers
                    .get(&member)
                    .map_or(0, |progress| progress.durable_id)
            })
            .fold(leader_durable_id, u64::min);
        if floor >= elected.noop_id {
            let isr_size = elected.membership.isr.len();
            if isr_size >= quorum {
                elected.held_by_isr = elected.held_by_isr.max(floor);
            }
            if isr_size >= quorum.max(2) {
                elected.held_by_quorum = elected.held_by_quorum.max(floor);
            }
        }
        let candidate = if quorum <= 1 {
            if leader_durable_id >= elected.noop_id {
                leader_durable_id
            } else {
                0
            }
        } else {
            elected.held_by_quorum
        };
        self.commit_id = self.commit_id.max(candidate);
        self.commit_id
    }

    /// Whether every follower that is not down holds `id` durably (the legacy `acks=all`).
    pub fn all_live_followers_hold(&self, now: Instant, id: u64) -> bool {
        self.followers
            .values()
            .filter(|progress| {
                now.saturating_duration_since(progress.last_fetch_at)
                    < self.options.follower_down_after
            })
            .all(|progress| progress.durable_id >= id)
    }
}

/// Where a follower whose entry `previous` has `last_epoch` must cut its log to agree with
/// `log`, or `None` when the two agree there (Kafka's `OffsetsForLeaderEpoch`): the last id
/// the leader holds in an epoch `<= last_epoch`, below `previous` (or, for a follower ahead of
/// the leader, at most the leader's last id). An id whose epoch the leader no longer knows
/// (before the oldest epoch its history remembers) is trusted.
pub fn divergence(log: &impl LogView, previous: u64, last_epoch: u64) -> Option<u64> {
    if previous == 0 {
        return None;
    }
    let last_id = log.last_id();
    if previous > last_id {
        return Some(log.end_of_epoch(last_epoch).min(last_id));
    }
    match log.epoch_at(previous) {
        Some(epoch) if epoch != last_epoch => Some(log.end_of_epoch(last_epoch).min(previous - 1)),
        _ => None,
    }
}
