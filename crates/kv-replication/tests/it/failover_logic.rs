//! The decisions failover adds (issue 13), one case at a time, on virtual time: the ISR commit
//! rule from the epoch's no-op, the maximal ISR, the lease gate, deposition by a newer epoch,
//! the ISR the leader wants, the snapshot path's divergence check, the follower's epochs,
//! catch-up and staleness, and what a node does with the controller's view.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use kv_replication::view::{decide, Standing, ViewAction};
use kv_replication::LogView;
use kv_replication::{
    Acks, ClusterView, FetchDecision, FetchRequest, FetchResponse, FollowerOptions, FollowerState,
    LeaderOptions, LeaderRef, LeaderState, Membership, Step,
};

use crate::support::{payload, VecLog};

const CLUSTER: u64 = 0xfa11;
const MS: Duration = Duration::from_millis(1);

/// A leader's log: `old` entries of epoch 1 (an earlier leader's), then this epoch's no-op
/// and `new` entries of epoch 2, all durable.
fn log_of(old: u64, new: u64) -> VecLog {
    let mut log = VecLog::new();
    for index in 0..old {
        log.append(1, payload(1, &format!("old-{index}")));
    }
    log.append(2, payload(2, "noop"));
    for index in 0..new {
        log.append(2, payload(2, &format!("new-{index}")));
    }
    log.sync();
    log
}

fn leader(isr: &[u64], write_quorum: usize, noop_id: u64, now: Instant) -> LeaderState {
    let options = LeaderOptions {
        lag_limit: 100 * MS,
        ..LeaderOptions::default()
    };
    leader_with(isr, write_quorum, noop_id, now, options)
}

/// [`leader`] with `options`: node 0 leading epoch 2 of members 0–4.
fn leader_with(
    isr: &[u64],
    write_quorum: usize,
    noop_id: u64,
    now: Instant,
    options: LeaderOptions,
) -> LeaderState {
    LeaderState::elected(
        CLUSTER,
        2,
        0,
        noop_id,
        Membership {
            isr: isr.iter().copied().collect(),
            members: (0..5).collect(),
            write_quorum,
            version: 1,
        },
        options,
        now,
    )
}

/// The controller's membership of members 0–4 at metadata `version`.
fn membership(isr: &[u64], write_quorum: usize, version: u64) -> Membership {
    Membership {
        isr: isr.iter().copied().collect(),
        members: (0..5).collect(),
        write_quorum,
        version,
    }
}

/// The ISR `leader` asks for at `now`, if any.
fn wanted(leader: &mut LeaderState, now: Instant) -> Option<BTreeSet<u64>> {
    leader.wanted_isr(now).map(|change| change.isr)
}

fn fetch(node_id: u64, next_id: u64, last_epoch: u64, durable_id: u64) -> FetchRequest {
    FetchRequest {
        cluster_id: CLUSTER,
        node_id,
        leader_epoch: 2,
        next_id,
        last_epoch,
        durable_id,
        commit_id: 0,
        bytes_max: 1 << 20,
        wait_ms: 0,
    }
}

fn answer(
    leader: &mut LeaderState,
    now: Instant,
    request: &FetchRequest,
    log: &VecLog,
) -> FetchResponse {
    match leader.on_fetch(now, request, log, false, true) {
        FetchDecision::Respond(response) => response,
        other => panic!("{other:?}"),
    }
}

/// Raft's figure 8: entries of an earlier epoch that every ISR member holds are not committed
/// by this leader until its own no-op is held too; and only ISR members count, however far
/// ahead a follower outside the ISR is.
#[test]
fn an_elected_leader_commits_from_its_noop_on_counting_only_isr_members() {
    let now = Instant::now();
    let log = log_of(3, 2); // 1-3 epoch 1, 4 no-op, 5-6 epoch 2
    let mut leader = leader(&[0, 1], 2, 4, now);
    assert_eq!(leader.recompute_commit(log.durable_id), 0);
    // Follower 1 holds the old entries only: nothing commits, though 1-3 are on both nodes.
    answer(&mut leader, now, &fetch(1, 4, 1, 3), &log);
    assert_eq!(
        leader.commit_id(),
        0,
        "old-epoch entries wait for the no-op"
    );
    // Follower 2, outside the ISR, holds everything: it does not count.
    answer(&mut leader, now, &fetch(2, 7, 2, 6), &log);
    assert_eq!(
        leader.commit_id(),
        0,
        "a follower outside the ISR never counts"
    );
    // Follower 1 holds the no-op: everything up to it commits at once.
    answer(&mut leader, now, &fetch(1, 5, 2, 4), &log);
    assert_eq!(leader.commit_id(), 4);
    answer(&mut leader, now, &fetch(1, 7, 2, 6), &log);
    assert_eq!(leader.commit_id(), 6);
    // A known commit from an earlier leader is restored (it was committed then), capped by
    // what the caller checks against its durable id.
    let mut restarted = self::leader(&[0, 1], 2, 4, now);
    restarted.restore_commit(3);
    assert_eq!(restarted.recompute_commit(6), 3);
}

/// `N`: the ISR must have at least `N` members (a leader alone with `N = 2` commits nothing);
/// `N = 1` commits what the leader holds. `?acks=quorum` asks for an ISR of at least two
/// whatever `N`; `?acks=all` for every ISR member.
#[test]
fn the_isr_must_have_n_members_and_acks_quorum_asks_for_two() {
    let now = Instant::now();
    let log = log_of(0, 3); // 1 no-op, 2-4
    let lease = now + 10 * MS;
    let mut alone = leader(&[0], 2, 1, now);
    alone.grant_lease(lease);
    assert_eq!(alone.recompute_commit(4), 0, "an ISR of one under N = 2");
    assert!(!alone.acknowledged(now, 2, Acks::WriteQuorum, 4));
    assert!(alone.acknowledged(now, 2, Acks::Leader, 4));

    let mut single = leader(&[0, 1], 1, 1, now);
    single.grant_lease(lease);
    assert_eq!(
        single.recompute_commit(4),
        4,
        "N = 1: the leader's durable id"
    );
    assert!(single.acknowledged(now, 4, Acks::WriteQuorum, 4));
    assert!(
        !single.acknowledged(now, 2, Acks::Quorum, 4),
        "quorum waits for follower 1"
    );
    assert!(!single.acknowledged(now, 2, Acks::All, 4));
    answer(&mut single, now, &fetch(1, 3, 2, 2), &log);
    assert!(single.acknowledged(now, 2, Acks::Quorum, 4));
    assert!(single.acknowledged(now, 2, Acks::All, 4));
    assert!(!single.acknowledged(now, 3, Acks::Quorum, 4));
    // An ISR of one: `acks=quorum` can never be met, `acks=all` can.
    let mut lonely = leader(&[0], 1, 1, now);
    lonely.grant_lease(lease);
    lonely.recompute_commit(4);
    assert!(!lonely.acknowledged(now, 2, Acks::Quorum, 4));
    assert!(lonely.acknowledged(now, 2, Acks::All, 4));
}

/// KIP-841: while an ISR change is in flight the leader counts the *maximal* ISR — a member
/// being added counts at once, a member being removed until the removal is applied.
#[test]
fn an_isr_change_in_flight_counts_additions_at_once_and_removals_until_applied() {
    let start = Instant::now();
    let log = log_of(0, 3);
    let mut leader = leader(&[0, 1], 2, 1, start);
    // Follower 1 stops; follower 2 (outside) is caught up.
    answer(&mut leader, start, &fetch(1, 2, 2, 1), &log);
    answer(&mut leader, start, &fetch(2, 5, 2, 4), &log);
    assert_eq!(leader.commit_id(), 1);
    let later = start + 150 * MS;
    answer(&mut leader, later, &fetch(2, 5, 2, 4), &log);
    let change = leader.wanted_isr(later).expect("a change");
    assert_eq!(change.isr, BTreeSet::from([0, 2]));
    assert_eq!(
        change.based_on, 1,
        "decided against the version the leader holds"
    );
    assert_eq!(leader.maximal_isr(), Some(BTreeSet::from([0, 1, 2])));
    // Follower 1 still counts: nothing more commits.
    assert_eq!(leader.recompute_commit(4), 1);
    // Applied: follower 1 no longer counts.
    leader.set_membership(membership(&[0, 2], 2, 2));
    assert_eq!(leader.recompute_commit(4), 4);
    assert_eq!(leader.maximal_isr(), Some(BTreeSet::from([0, 2])));
}

/// An addition asked for counts until the leader hears a later metadata version — however
/// long that takes, and even once the leader no longer wants it: the controller may have
/// applied it without the leader hearing (the answer was lost, the leader is cut off from the
/// controller), and may elect the member added. Before, the addition stopped counting after a
/// lag limit, and a leader cut off from the controller committed entries that the member,
/// elected next, lacked: a follower applied entries the new leader then cut (the failover
/// simulation, seed 2804641021986048037).
#[test]
fn an_addition_in_flight_counts_until_a_later_version_shows_its_outcome() {
    let start = Instant::now();
    let mut log = log_of(0, 3);
    let mut leader = leader(&[0, 1], 2, 1, start);
    // Follower 2 (outside the ISR) caught up: the leader asks to add it.
    answer(&mut leader, start, &fetch(1, 5, 2, 4), &log);
    answer(&mut leader, start, &fetch(2, 5, 2, 4), &log);
    assert_eq!(wanted(&mut leader, start), Some(BTreeSet::from([0, 1, 2])));
    assert_eq!(leader.recompute_commit(4), 4);
    // No word from the controller; follower 2 goes silent, follower 1 keeps up.
    for step in 1..=3u32 {
        log.append(2, payload(2, &format!("more-{step}")));
        log.sync();
        let last = log.last_id();
        answer(
            &mut leader,
            start + step * 50 * MS,
            &fetch(1, last + 1, 2, last),
            &log,
        );
    }
    let late = start + 160 * MS;
    // After a lag limit the leader asks again — the same change, against the same version,
    // since it no longer wants follower 2 yet cannot know whether the first request applied.
    let again = leader.wanted_isr(late).expect("asked again");
    assert_eq!((again.isr, again.based_on), (BTreeSet::from([0, 1, 2]), 1));
    assert_eq!(leader.maximal_isr(), Some(BTreeSet::from([0, 1, 2])));
    assert_eq!(
        leader.recompute_commit(log.last_id()),
        4,
        "follower 2 holds only 4, and may be in the controller's ISR"
    );
    // An older view (views arrive out of order) changes nothing.
    leader.set_membership(membership(&[0, 1], 2, 0));
    assert_eq!(leader.maximal_isr(), Some(BTreeSet::from([0, 1, 2])));
    assert_eq!(leader.isr(), Some(&BTreeSet::from([0, 1])));
    // The same version again (a repeated view) leaves the addition counting.
    leader.set_membership(membership(&[0, 1], 2, 1));
    assert_eq!(leader.recompute_commit(log.last_id()), 4);
    // A later version without it: the request was refused and never applies now.
    leader.set_membership(membership(&[0, 1], 2, 2));
    assert_eq!(leader.maximal_isr(), Some(BTreeSet::from([0, 1])));
    assert_eq!(leader.recompute_commit(log.last_id()), log.last_id());
}

/// The ISR the leader wants: a member not caught up for the lag limit (or never heard since
/// the leadership began) leaves; a member outside that caught up and holds everything the
/// ISR was counted for joins; one change in flight at a time, asked again after a lag limit;
/// none once deposed.
#[test]
fn wanted_isr_follows_the_lag_limit_one_change_at_a_time() {
    let start = Instant::now();
    let mut log = log_of(0, 3);
    let mut leader = leader(&[0, 1, 2], 2, 1, start);
    // Within the lag limit nobody leaves, even unheard.
    assert_eq!(wanted(&mut leader, start + 50 * MS), None);
    // Follower 1 keeps up one batch behind under load (Kafka's rule); follower 2 is silent.
    for step in 1..=4u32 {
        let now = start + step * 40 * MS;
        let durable = log.last_id();
        log.append(2, payload(2, &format!("load-{step}")));
        log.sync();
        answer(&mut leader, now, &fetch(1, durable + 1, 2, durable), &log);
    }
    let now = start + 160 * MS;
    assert_eq!(wanted(&mut leader, now), Some(BTreeSet::from([0, 1])));
    assert_eq!(wanted(&mut leader, now), None, "one change in flight");
    // Not applied within a lag limit: asked again.
    let last = log.last_id();
    answer(
        &mut leader,
        now + 90 * MS,
        &fetch(1, last + 1, 2, last),
        &log,
    );
    assert_eq!(
        wanted(&mut leader, now + 101 * MS),
        Some(BTreeSet::from([0, 1]))
    );
    leader.set_membership(membership(&[0, 1], 2, 2));
    // Follower 2 comes back behind: it does not join until it holds what the ISR held.
    let now = now + 200 * MS;
    let last = log.last_id();
    answer(&mut leader, now, &fetch(1, last + 1, 2, last), &log);
    answer(&mut leader, now, &fetch(2, 2, 2, 1), &log);
    assert_eq!(wanted(&mut leader, now), None);
    answer(&mut leader, now + MS, &fetch(2, last + 1, 2, last), &log);
    assert_eq!(
        wanted(&mut leader, now + MS),
        Some(BTreeSet::from([0, 1, 2]))
    );
    // A node that is not a member never joins.
    let mut strangers = self::leader(&[0], 1, 1, start);
    answer(&mut strangers, start, &fetch(9, 5, 2, 4), &log);
    assert_eq!(wanted(&mut strangers, start), None);
}

/// A follower that hung up its stream (it stopped, or crashed: its connection ended) leaves
/// the ISR once it has not opened another for `HUNG_UP_GRACE`, not after the lag limit (10 s
/// here), while the ISR keeps `max(N, 2)` members without it; the end of a stream it already
/// replaced, or one followed by a fetch, changes nothing. Before, writes under
/// `--write-quorum 2` waited out the lag limit for a follower that had stopped.
#[test]
fn a_follower_that_hung_up_its_stream_leaves_the_isr_without_waiting_the_lag_limit() {
    use kv_replication::HUNG_UP_GRACE;
    let start = Instant::now();
    let log = log_of(0, 3);
    let options = LeaderOptions {
        lag_limit: Duration::from_secs(10),
        ..LeaderOptions::default()
    };
    let mut leader = leader_with(&[0, 1, 2], 2, 1, start, options);
    for follower in [1, 2] {
        answer(&mut leader, start, &fetch(follower, 5, 2, 4), &log);
    }
    let first_of_1 = leader.stream_opened(1);
    let first_of_2 = leader.stream_opened(2);
    // Follower 2 replaced its stream before the leader saw the first one end: it stays.
    answer(&mut leader, start + MS, &fetch(2, 5, 2, 4), &log);
    let second_of_2 = leader.stream_opened(2);
    assert_ne!(first_of_2, second_of_2);
    leader.stream_hung_up(2, first_of_2, start + 2 * MS);
    // Follower 1 hangs up its only stream.
    leader.stream_hung_up(1, first_of_1, start + 2 * MS);
    assert_eq!(
        wanted(&mut leader, start + 2 * MS),
        None,
        "within the grace"
    );
    let after_grace = start + 2 * MS + HUNG_UP_GRACE;
    assert_eq!(
        wanted(&mut leader, after_grace),
        Some(BTreeSet::from([0, 2])),
        "follower 1 leaves, follower 2 stays"
    );
    // Until the removal is applied follower 1 still counts; then writes go on without it.
    assert_eq!(leader.maximal_isr(), Some(BTreeSet::from([0, 1, 2])));
    leader.set_membership(membership(&[0, 2], 2, 2));
    // Back: a fetch (a new stream's opening) clears the hang-up, and it joins again.
    let back = after_grace + 10 * MS;
    answer(&mut leader, back, &fetch(1, 5, 2, 4), &log);
    answer(&mut leader, back, &fetch(2, 5, 2, 4), &log);
    assert_eq!(wanted(&mut leader, back), Some(BTreeSet::from([0, 1, 2])));
    // A hang-up followed by a fetch within the grace (a follower that ends its stream to
    // retry, and fetches) does not remove it.
    leader.set_membership(membership(&[0, 1, 2], 2, 3));
    let stream = leader.stream_opened(1);
    leader.stream_hung_up(1, stream, back + MS);
    answer(&mut leader, back + 2 * MS, &fetch(1, 5, 2, 4), &log);
    answer(&mut leader, back + 2 * MS, &fetch(2, 5, 2, 4), &log);
    assert_eq!(wanted(&mut leader, back + 2 * MS + HUNG_UP_GRACE), None);
    // Both hang up, follower 2 holding more: follower 1 leaves, follower 2 stays until the
    // lag limit — the ISR keeps `max(N, 2)` members, so the controller still has a node to
    // elect if this leader fails, the one holding the most.
    let mut log = log;
    log.append(2, payload(2, "more"));
    log.sync();
    let both = back + 10 * MS;
    answer(&mut leader, both, &fetch(1, 5, 2, 4), &log);
    answer(&mut leader, both, &fetch(2, 6, 2, 5), &log);
    for follower in [1, 2] {
        let stream = leader.stream_opened(follower);
        leader.stream_hung_up(follower, stream, both);
    }
    assert_eq!(
        wanted(&mut leader, both + HUNG_UP_GRACE),
        Some(BTreeSet::from([0, 2]))
    );
}

/// The successor a leader whose log failed hands over to: of the candidates, the one holding
/// the most (the lower id on a tie), among those heard from within the lag limit.
#[test]
fn a_failed_leaders_successor_holds_the_most_and_was_heard_from_lately() {
    let start = Instant::now();
    let log = log_of(0, 6);
    let mut leader = leader(&[0, 1, 2, 3], 1, 1, start);
    let all = BTreeSet::from([1, 2, 3]);
    assert_eq!(
        leader.most_advanced_of(&all, start),
        None,
        "nobody heard yet"
    );
    answer(&mut leader, start, &fetch(1, 4, 2, 3), &log);
    answer(&mut leader, start, &fetch(2, 6, 2, 5), &log);
    answer(&mut leader, start, &fetch(3, 6, 2, 5), &log);
    assert_eq!(
        leader.most_advanced_of(&all, start),
        Some(2),
        "a tie: the lower id"
    );
    assert_eq!(
        leader.most_advanced_of(&BTreeSet::from([1, 3]), start),
        Some(3),
        "only the candidates"
    );
    // Node 1 catches up and the others go silent past the lag limit: node 1 alone counts.
    let later = start + 150 * MS;
    answer(&mut leader, later, &fetch(1, 8, 2, 7), &log);
    assert_eq!(leader.most_advanced_of(&all, later), Some(1));
    assert_eq!(
        leader.most_advanced_of(&BTreeSet::from([2, 3]), later),
        None,
        "silent for longer than the lag limit"
    );
}

/// The lease gate: nothing is acknowledged without a lease for the epoch, or after it ends;
/// a fetch from a follower that knows a newer epoch deposes the leader (a debugging view does
/// not), which then acknowledges nothing and takes no lease.
#[test]
fn acknowledgement_needs_a_lease_and_ends_with_a_newer_epoch() {
    let now = Instant::now();
    let log = log_of(0, 1);
    let mut leader = leader(&[0], 1, 1, now);
    leader.recompute_commit(2);
    assert!(
        !leader.acknowledged(now, 2, Acks::Leader, 2),
        "no lease yet"
    );
    assert!(!leader.linearizable(now));
    leader.grant_lease(now + 10 * MS);
    leader.grant_lease(now + 5 * MS); // an older grant answered late does not shorten it
    assert!(leader.acknowledged(now + 9 * MS, 2, Acks::WriteQuorum, 2));
    assert!(leader.linearizable(now + 9 * MS));
    assert!(!leader.acknowledged(now + 10 * MS, 2, Acks::Leader, 2));
    leader.grant_lease(now + 100 * MS);
    leader.revoke_lease();
    assert!(!leader.acknowledged(now, 2, Acks::Leader, 2));
    leader.grant_lease(now + 100 * MS);

    let newer = FetchRequest {
        leader_epoch: 3,
        ..fetch(1, 3, 2, 2)
    };
    assert_eq!(
        leader.on_fetch(now, &newer, &log, false, false),
        FetchDecision::Respond(FetchResponse::Entries {
            cluster_id: CLUSTER,
            leader_epoch: 2,
            commit_id: 2,
            first_id: 1,
            last_id: 2,
            frames: Vec::new(),
        }),
        "a debugging view deposes nobody"
    );
    assert!(leader.acknowledged(now, 2, Acks::Leader, 2));
    assert_eq!(
        leader.on_fetch(now, &newer, &log, false, true),
        FetchDecision::StepDown { epoch: 3 }
    );
    assert_eq!(leader.deposed_by(), Some(3));
    assert_eq!(
        wanted(&mut leader, now + 10 * MS),
        None,
        "a deposed leader proposes nothing"
    );
    assert!(!leader.acknowledged(now, 2, Acks::Leader, 2));
    leader.grant_lease(now + 100 * MS);
    assert!(!leader.lease_valid(now), "a deposed leader takes no lease");
    // An older follower epoch is fine (it learns the leader's from the answer).
    let mut other = self::leader(&[0], 1, 1, now);
    let older = FetchRequest {
        leader_epoch: 1,
        ..fetch(1, 3, 2, 2)
    };
    assert!(matches!(
        other.on_fetch(now, &older, &log, false, true),
        FetchDecision::Respond(FetchResponse::Entries {
            leader_epoch: 2,
            ..
        })
    ));
}

/// Divergence by `(epoch, id)` on the snapshot path too: a follower behind the compaction
/// point whose last entry is of another history is told where to cut before it is told to
/// install a snapshot (which would silently replace entries it may have acknowledged).
#[test]
fn the_snapshot_path_checks_divergence_first() {
    let now = Instant::now();
    let mut log = log_of(3, 5); // 1-3 epoch 1, 4 no-op, 5-9 epoch 2
    log.purge_before(7);
    let mut leader = leader(&[0], 1, 4, now);
    // A follower with 1-5, its 4-5 of an epoch-1 leader that never replicated them.
    assert_eq!(
        answer(&mut leader, now, &fetch(1, 6, 1, 5), &log),
        FetchResponse::Diverged {
            cluster_id: CLUSTER,
            leader_epoch: 2,
            truncate_after: 3,
        }
    );
    // Cut back, it matches: now it installs the snapshot.
    assert_eq!(
        answer(&mut leader, now, &fetch(1, 4, 1, 3), &log),
        FetchResponse::SnapshotNeeded {
            cluster_id: CLUSTER,
            leader_epoch: 2,
            first_id: 7,
        }
    );
    // A follower whose last entry matches goes straight to the snapshot.
    assert!(matches!(
        answer(&mut leader, now, &fetch(2, 6, 2, 5), &log),
        FetchResponse::SnapshotNeeded { .. }
    ));
}

fn follower(controlled: bool) -> FollowerState {
    let state = FollowerState::resume(FollowerOptions::default(), CLUSTER, 2, 5);
    if controlled {
        state.with_epochs_from_controller()
    } else {
        state
    }
}

/// The follower's epochs: an answer from an older epoch is refused whole; a "not the leader"
/// answer that names a newer epoch raises the epoch it knows (recorded first, then retried);
/// under the controller a cut below the commit id heard is obeyed and counted (legacy: stop);
/// a snapshot install carries the epoch that asked for it.
#[test]
fn followers_refuse_older_epochs_and_obey_the_controllers_leaders() {
    let now = Instant::now();
    let log = log_of(3, 5);
    let mut state = follower(true);
    let request = state.request(&log);
    assert_eq!((request.node_id, request.leader_epoch), (1, 2));
    let stale = FetchResponse::Entries {
        cluster_id: CLUSTER,
        leader_epoch: 1,
        commit_id: 9,
        first_id: 1,
        last_id: 9,
        frames: Vec::new(),
    };
    assert!(matches!(
        state.on_response(now, &request, stale, &log),
        Step::Retry { .. }
    ));
    assert_eq!(state.commit_seen(), 5);
    let newer = FetchResponse::NotLeader {
        leader_epoch: 4,
        leader_url: None,
    };
    match state.on_response(now, &request, newer, &log) {
        Step::PersistEpoch { epoch: 4, then } => assert!(matches!(*then, Step::Retry { .. })),
        other => panic!("{other:?}"),
    }
    assert_eq!(state.request(&log).leader_epoch, 4);
    // The epoch-4 leader lacks what an earlier leader committed (N = 1): obeyed.
    let cut = FetchResponse::Diverged {
        cluster_id: CLUSTER,
        leader_epoch: 4,
        truncate_after: 2,
    };
    assert_eq!(
        state.on_response(now, &request, cut.clone(), &log),
        Step::Truncate { after_id: 2 }
    );
    assert_eq!((state.committed_truncations(), state.commit_seen()), (1, 2));
    let mut legacy = follower(false);
    assert!(matches!(
        legacy.on_response(now, &legacy.request(&log), cut, &log),
        Step::PersistEpoch { then, .. } if matches!(*then, Step::Stop { .. })
    ));
    // Told to install a snapshot: it names the epoch of the leader that said so.
    let needed = FetchResponse::SnapshotNeeded {
        cluster_id: CLUSTER,
        leader_epoch: 4,
        first_id: 50,
    };
    assert!(matches!(
        state.on_response(now, &state.request(&log), needed, &log),
        Step::InstallSnapshot {
            leader_first_id: 50,
            leader_epoch: 4,
            ..
        }
    ));
}

/// Caught up (Kafka's rule, on the follower's side): it held the leader's last id as of this
/// answer or the one before; within the lag limit. Stale: the time since the send time of the
/// last fetch whose answer's commit id it applied.
#[test]
fn a_follower_knows_whether_it_is_caught_up_and_how_stale_it_may_be() {
    let start = Instant::now();
    let log = log_of(0, 9); // 1-10
    let mut state = follower(true);
    assert!(!state.is_caught_up(start, 100 * MS));
    assert_eq!(state.staleness(start), None);
    let entries = |last_id: u64, commit_id: u64| FetchResponse::Entries {
        cluster_id: CLUSTER,
        leader_epoch: 2,
        commit_id,
        first_id: 1,
        last_id,
        frames: Vec::new(),
    };
    // Behind: the leader has 12, it holds 10.
    let request = state.request(&log);
    state.on_response(start, &request, entries(12, 10), &log);
    assert!(!state.is_caught_up(start, 100 * MS));
    // The next answer: the leader moved on to 14, but it holds... still 10 (< 12): not yet.
    state.on_response(start + 10 * MS, &request, entries(14, 10), &log);
    assert!(!state.is_caught_up(start + 10 * MS, 100 * MS));
    // It held everything the leader had: caught up, until the lag limit passes.
    state.on_response(start + 20 * MS, &request, entries(10, 10), &log);
    assert!(state.is_caught_up(start + 20 * MS, 100 * MS));
    assert!(!state.is_caught_up(start + 121 * MS, 100 * MS));
    // Staleness: fresh as of the send time of a fetch whose commit id it applied.
    state.on_applied(start + 15 * MS, 10, 9);
    assert_eq!(
        state.staleness(start + 30 * MS),
        None,
        "it applied less than the commit"
    );
    state.on_applied(start + 15 * MS, 10, 10);
    assert_eq!(
        state.staleness(start + 30 * MS),
        None,
        "under the controller, not before the controller confirmed its leader"
    );
    state.confirm_leader(2, start + 25 * MS);
    assert_eq!(state.staleness(start + 30 * MS), Some(15 * MS));
    state.on_applied(start + 5 * MS, 10, 10); // an older fetch does not move it back
    assert_eq!(state.staleness(start + 30 * MS), Some(15 * MS));
    // Outside the controller, the fetches alone bound it.
    let mut legacy = follower(false);
    legacy.on_applied(start + 15 * MS, 10, 10);
    assert_eq!(legacy.staleness(start + 30 * MS), Some(15 * MS));
}

/// A follower cut off together with its leader, which a new leader replaced: the deposed
/// leader goes on answering its fetches (its commit id never moves again), but the controller
/// no longer confirms it, so the follower's staleness grows from the last confirmation and a
/// read under `?max_staleness_ms` is refused. Before, every answer made it "fresh" again:
/// reads 8.5 s stale were served under a 1 s bound (found by partitioning 5 nodes with network
/// namespaces).
#[test]
fn a_follower_of_a_deposed_leader_grows_stale_though_its_leader_answers() {
    let start = Instant::now();
    let mut state = follower(true);
    state.confirm_leader(2, start);
    for tick in 1..=100u32 {
        // A fetch every 100 ms, answered with everything applied.
        state.on_applied(start + tick * 100 * MS, 10, 10);
    }
    let now = start + 10_000 * MS;
    assert_eq!(state.staleness(now), Some(10_000 * MS));
    // A confirmation for another epoch says nothing about this one.
    state.confirm_leader(3, now);
    assert_eq!(state.staleness(now), Some(10_000 * MS));
    // The controller confirms again: the fetches bound it once more.
    state.confirm_leader(2, now);
    assert_eq!(state.staleness(now), Some(now - (start + 10_000 * MS)));
}

fn view(leader: Option<u64>, epoch: u64) -> ClusterView {
    ClusterView {
        cluster_id: CLUSTER,
        node_id: 1,
        leader_epoch: epoch,
        leader: leader.map(|id| LeaderRef {
            id,
            url: format!("http://node-{id}"),
        }),
        isr: BTreeSet::from([0, 1]),
        members: BTreeSet::from([0, 1, 2]),
        write_quorum: 2,
        version: epoch,
    }
}

/// What a node (node 1) does with the controller's view: never back to an older epoch; leads
/// only an epoch above every one it led; follows the named leader or nobody; updates in place
/// within its own leadership.
#[test]
fn views_decide_roles_by_epoch() {
    let following = |url: Option<&str>, epoch: u64| Standing::Follower {
        leader_url: url.map(str::to_owned),
        epoch,
    };
    let leading = |epoch: u64| Standing::Leader { epoch };
    let cases = [
        // (standing, highest epoch led, view) → action
        (following(None, 3), 0, view(Some(0), 2), ViewAction::Nothing),
        (
            following(None, 3),
            0,
            view(Some(1), 4),
            ViewAction::Lead { epoch: 4 },
        ),
        (
            following(None, 4),
            4,
            view(Some(1), 4),
            ViewAction::CannotLead { epoch: 4 },
        ),
        (
            following(None, 4),
            3,
            view(Some(1), 4),
            ViewAction::Lead { epoch: 4 },
        ),
        (leading(4), 4, view(Some(1), 4), ViewAction::UpdateLeader),
        (
            leading(4),
            4,
            view(Some(1), 5),
            ViewAction::Lead { epoch: 5 },
        ),
        (
            leading(4),
            4,
            view(Some(0), 5),
            ViewAction::Follow {
                leader_url: Some("http://node-0".to_owned()),
                epoch: 5,
            },
        ),
        (
            leading(4),
            4,
            view(None, 5),
            ViewAction::Follow {
                leader_url: None,
                epoch: 5,
            },
        ),
        (
            following(Some("http://node-0"), 5),
            4,
            view(Some(0), 5),
            ViewAction::Nothing,
        ),
        (following(None, 5), 4, view(None, 5), ViewAction::Nothing),
        (
            following(Some("http://node-0"), 5),
            4,
            view(Some(2), 6),
            ViewAction::Follow {
                leader_url: Some("http://node-2".to_owned()),
                epoch: 6,
            },
        ),
        (leading(6), 6, view(Some(0), 5), ViewAction::Nothing),
    ];
    for (standing, led, view, expected) in cases {
        assert_eq!(
            decide(&standing, led, &view),
            expected,
            "{standing:?}, led {led}, view {:?} in {}",
            view.leader,
            view.leader_epoch
        );
    }
}

/// Followers outside the ISR are forgotten once not heard from for `follower_forget_after`;
/// ISR members are kept however long they are silent (they still count, until the controller
/// removes them).
#[test]
fn silent_followers_outside_the_isr_are_forgotten() {
    let start = Instant::now();
    let log = log_of(0, 2);
    let options = LeaderOptions {
        follower_forget_after: 1_000 * MS,
        ..LeaderOptions::default()
    };
    let mut leader = leader_with(&[0, 1], 1, 1, start, options);
    answer(&mut leader, start, &fetch(1, 4, 2, 3), &log);
    answer(&mut leader, start, &fetch(2, 4, 2, 3), &log);
    let heard = |leader: &LeaderState, now| -> Vec<(u64, Option<bool>)> {
        leader
            .followers(now, 3)
            .iter()
            .map(|follower| (follower.node_id, follower.in_isr))
            .collect()
    };
    assert_eq!(
        heard(&leader, start),
        vec![(1, Some(true)), (2, Some(false))]
    );
    // Someone else fetches a while later: the silent follower 2 is forgotten, 1 is kept.
    let later = start + 1_001 * MS;
    answer(&mut leader, later, &fetch(3, 4, 2, 3), &log);
    assert_eq!(
        heard(&leader, later),
        vec![(1, Some(true)), (3, Some(false))]
    );
}

/// How long a leader has been without a lease (what `/health` goes by), and when it counts as
/// cut off (what the waits go by): from
/// when its leadership began until the first grant, from when its last lease ended after.
#[test]
fn a_leader_counts_how_long_it_has_been_without_a_lease() {
    let now = Instant::now();
    let mut leader = leader(&[0], 1, 1, now);
    assert_eq!(leader.without_lease_for(now + 30 * MS), Some(30 * MS));
    assert_eq!(leader.cut_off_at(500 * MS), Some(now + 500 * MS));
    leader.grant_lease(now + 100 * MS);
    assert_eq!(leader.without_lease_for(now + 50 * MS), None);
    assert_eq!(leader.without_lease_for(now + 250 * MS), Some(150 * MS));
    // Cut off (what the waits for a lease and for acknowledgements go by): the lag limit
    // after the lease ends.
    assert_eq!(leader.cut_off_at(500 * MS), Some(now + 600 * MS));
}
