//! The leader's and the follower's decisions, one case at a time.

use std::time::{Duration, Instant};

use kv_replication::{
    FetchDecision, FetchRequest, FetchResponse, FollowerHealth, FollowerOptions, FollowerState,
    LeaderOptions, LeaderState, Step,
};

use crate::support::{payload, GappedLog, VecLog};

const CLUSTER: u64 = 0xc1;

fn leader_log(entries: &[(u64, &str)]) -> VecLog {
    let mut log = VecLog::new();
    for (epoch, tag) in entries {
        log.append(*epoch, payload(*epoch, tag));
    }
    log.sync();
    log
}

fn request(follower: u64, next_id: u64, last_epoch: u64, durable_id: u64) -> FetchRequest {
    FetchRequest {
        cluster_id: CLUSTER,
        node_id: follower,
        leader_epoch: 0,
        next_id,
        last_epoch,
        durable_id,
        commit_id: 0,
        bytes_max: 1 << 20,
        wait_ms: 100,
    }
}

/// The step inside a [`Step::PersistEpoch`], checking that `epoch` is recorded first.
fn after_recording(step: Step, epoch: u64) -> Step {
    match step {
        Step::PersistEpoch {
            epoch: recorded,
            then,
        } if recorded == epoch => *then,
        other => panic!("expected epoch {epoch} to be recorded first: {other:?}"),
    }
}

fn respond(
    leader: &mut LeaderState,
    now: Instant,
    request: &FetchRequest,
    log: &VecLog,
) -> FetchResponse {
    match leader.on_fetch(now, request, log, false, true) {
        FetchDecision::Respond(response) => response,
        FetchDecision::Wait => panic!("asked to wait with may_wait = false"),
        FetchDecision::StepDown { epoch } => panic!("deposed by epoch {epoch}"),
    }
}

#[test]
fn commit_needs_the_quorum_and_never_passes_the_leader() {
    let now = Instant::now();
    let mut log = leader_log(&[(1, "a"), (1, "b"), (1, "c"), (1, "d")]);
    let mut leader = LeaderState::new(
        CLUSTER,
        1,
        LeaderOptions {
            write_quorum: 2,
            ..LeaderOptions::default()
        },
    );
    assert_eq!(
        leader.recompute_commit(log.durable_id),
        0,
        "no follower yet"
    );
    respond(&mut leader, now, &request(1, 3, 1, 2), &log);
    assert_eq!(leader.commit_id(), 2);
    respond(&mut leader, now, &request(2, 5, 1, 4), &log);
    assert_eq!(leader.commit_id(), 4);
    // The leader lost durability of its tail (a follower ahead of the leader's durable id).
    log.durable_id = 3;
    let mut other = LeaderState::new(
        CLUSTER,
        1,
        LeaderOptions {
            write_quorum: 2,
            ..LeaderOptions::default()
        },
    );
    respond(&mut other, now, &request(1, 5, 1, 4), &log);
    respond(&mut other, now, &request(2, 5, 1, 4), &log);
    assert_eq!(
        other.commit_id(),
        3,
        "commit is capped at the leader's durable id"
    );
    // Never backwards, even when a follower is wiped.
    respond(
        &mut leader,
        now,
        &FetchRequest {
            cluster_id: 0,
            ..request(2, 1, 0, 0)
        },
        &log,
    );
    assert_eq!(leader.commit_id(), 4);
}

#[test]
fn the_leader_tells_a_diverged_follower_where_to_cut() {
    let now = Instant::now();
    // Leader: 1-3 in epoch 1, 4-6 in epoch 3.
    let log = leader_log(&[(1, "a"), (1, "b"), (1, "c"), (3, "d"), (3, "e"), (3, "f")]);
    let mut leader = LeaderState::new(CLUSTER, 3, LeaderOptions::default());
    // A follower with 1-5, its 4-5 written in epoch 2 by an old leader.
    let answer = respond(&mut leader, now, &request(10, 6, 2, 5), &log);
    assert_eq!(
        answer,
        FetchResponse::Diverged {
            cluster_id: CLUSTER,
            leader_epoch: 3,
            truncate_after: 3
        }
    );
    // A follower ahead of the leader (an old leader's unreplicated tail in epoch 3? no: epoch 2).
    let answer = respond(&mut leader, now, &request(11, 9, 2, 8), &log);
    assert!(
        matches!(
            answer,
            FetchResponse::Diverged {
                truncate_after: 3,
                ..
            }
        ),
        "{answer:?}"
    );
    // A follower ahead with entries of the leader's own epoch: cut at the leader's end.
    let answer = respond(&mut leader, now, &request(12, 9, 3, 8), &log);
    assert!(
        matches!(
            answer,
            FetchResponse::Diverged {
                truncate_after: 6,
                ..
            }
        ),
        "{answer:?}"
    );
    // Diverged followers' durable ids do not count.
    assert_eq!(leader.commit_id(), 0);
    // A matching follower gets entries.
    let answer = respond(&mut leader, now, &request(10, 4, 1, 3), &log);
    let FetchResponse::Entries { frames, .. } = answer else {
        panic!("{answer:?}")
    };
    assert!(matches!(kv_replication::check_frames(&frames, 4), Ok(6)));
}

#[test]
fn other_clusters_compacted_logs_and_waits() {
    let now = Instant::now();
    let mut log = leader_log(&[(1, "a"), (1, "b"), (1, "c")]);
    let mut leader = LeaderState::new(CLUSTER, 1, LeaderOptions::default());
    let stranger = FetchRequest {
        cluster_id: 0xbad,
        ..request(10, 1, 0, 0)
    };
    assert_eq!(
        respond(&mut leader, now, &stranger, &log),
        FetchResponse::ClusterMismatch {
            leader_cluster_id: CLUSTER,
            leader_epoch: 1,
        }
    );
    // No cluster id but data: not a new follower.
    let unknown_with_data = FetchRequest {
        cluster_id: 0,
        ..request(10, 3, 1, 2)
    };
    assert!(matches!(
        respond(&mut leader, now, &unknown_with_data, &log),
        FetchResponse::ClusterMismatch { .. }
    ));
    // A new empty follower is welcome.
    let newcomer = FetchRequest {
        cluster_id: 0,
        ..request(10, 1, 0, 0)
    };
    assert!(matches!(
        respond(&mut leader, now, &newcomer, &log),
        FetchResponse::Entries { .. }
    ));
    // Caught up: wait, unless the leader knows a newer commit than the follower.
    leader.recompute_commit(3);
    let caught_up = request(10, 4, 1, 3);
    assert!(matches!(
        leader.on_fetch(now, &caught_up, &log, true, true),
        FetchDecision::Respond(FetchResponse::Entries { commit_id: 3, .. })
    ));
    let knows_commit = FetchRequest {
        commit_id: 3,
        ..caught_up
    };
    assert_eq!(
        leader.on_fetch(now, &knows_commit, &log, true, true),
        FetchDecision::Wait
    );
    // Compacted past the follower.
    log.entries.remove(0);
    assert!(matches!(
        respond(&mut leader, now, &request(10, 1, 0, 0), &log),
        FetchResponse::SnapshotNeeded { first_id: 2, .. }
    ));
}

#[test]
fn a_follower_behind_for_the_lag_limit_is_lagging_however_few_entries_it_lacks() {
    // A follower whose disk is full keeps fetching and holds nothing new: a few large
    // entries behind, it leaves the ISR after the lag limit, and its status says so.
    // The defaults: a 2 s lag limit, down after 5 s, lagging past 10,000 entries.
    let mut leader = LeaderState::new(CLUSTER, 1, LeaderOptions::default());
    let start = Instant::now();
    let log = leader_log(&[(1, "a"), (1, "b")]);
    respond(&mut leader, start, &request(1, 2, 1, 1), &log);
    let fetched_at = start + Duration::from_millis(1_500);
    respond(&mut leader, fetched_at, &request(1, 2, 1, 1), &log);
    let within = leader.followers(fetched_at, 2);
    assert_eq!(within[0].lag_entries, 1);
    assert_eq!(within[0].status, FollowerHealth::Healthy, "{within:?}");
    let past_the_limit = start + Duration::from_millis(2_500);
    respond(&mut leader, past_the_limit, &request(1, 2, 1, 1), &log);
    let statuses = leader.followers(past_the_limit, 2);
    assert_eq!(statuses[0].lag_ms, 2_500);
    assert_eq!(statuses[0].status, FollowerHealth::Lagging, "{statuses:?}");
}

#[test]
fn follower_health_comes_from_fetch_times_and_lag() {
    let start = Instant::now();
    let log = leader_log(&[(1, "a"), (1, "b")]);
    let mut leader = LeaderState::new(
        CLUSTER,
        1,
        LeaderOptions {
            write_quorum: 1,
            follower_down_after: Duration::from_secs(5),
            follower_lagging_entries: 1,
            ..LeaderOptions::default()
        },
    );
    respond(&mut leader, start, &request(1, 3, 1, 2), &log);
    respond(&mut leader, start, &request(2, 1, 0, 0), &log);
    let statuses = leader.followers(start + Duration::from_secs(1), 2);
    assert_eq!(statuses[0].node_id, 1);
    assert_eq!(statuses[0].status, FollowerHealth::Healthy);
    assert_eq!(statuses[1].status, FollowerHealth::Lagging);
    assert_eq!(statuses[1].lag_entries, 2);
    let later = leader.followers(start + Duration::from_secs(6), 2);
    assert!(later
        .iter()
        .all(|status| status.status == FollowerHealth::Down));
    assert!(!leader.all_live_followers_hold(start, 2));
    assert!(
        leader.all_live_followers_hold(start + Duration::from_secs(6), 2),
        "down followers do not block"
    );
}

#[test]
fn the_follower_refuses_damage_backs_off_and_stops_for_operators() {
    let now = Instant::now();
    let mut log = VecLog::new();
    let options = FollowerOptions {
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_secs(1),
        ..FollowerOptions::default()
    };
    let mut follower = FollowerState::new(options, 0);
    let first = follower.request(&log);
    assert_eq!(
        (first.next_id, first.last_epoch, first.cluster_id),
        (1, 0, 0)
    );

    // A damaged batch is refused and fetched again.
    let mut frames = kv_wal::frame::encode_record(1, &payload(1, "x"));
    let last = frames.len() - 1;
    frames[last] ^= 1;
    let entries = |frames: Vec<u8>| FetchResponse::Entries {
        cluster_id: CLUSTER,
        leader_epoch: 1,
        commit_id: 1,
        first_id: 1,
        last_id: 1,
        frames,
    };
    assert!(matches!(
        follower.on_response(now, &first, entries(frames), &log),
        Step::Retry { .. }
    ));
    assert_eq!(follower.corrupt_batches_refused(), 1);
    // A batch that does not start where asked is refused too.
    let wrong_start = kv_wal::frame::encode_record(2, &payload(1, "x"));
    assert!(matches!(
        follower.on_response(now, &first, entries(wrong_start), &log),
        Step::Retry { .. }
    ));

    // The good batch: adopt the cluster, append.
    let good = kv_wal::frame::encode_record(1, &payload(1, "x"));
    match after_recording(
        follower.on_response(now, &first, entries(good.clone()), &log),
        1,
    ) {
        Step::Append {
            frames,
            commit_id: 1,
            adopt_cluster: Some(CLUSTER),
        } => assert_eq!(frames, good),
        other => panic!("{other:?}"),
    }
    log.append_frames(&good, crate::support::epoch_of);
    log.sync();
    let next = follower.request(&log);
    assert_eq!(
        (
            next.next_id,
            next.last_epoch,
            next.durable_id,
            next.commit_id
        ),
        (2, 1, 1, 1)
    );

    // Backoff grows with failures, stays within [ceiling/2, ceiling], and resets on success.
    let mut delays = Vec::new();
    for _ in 0..6 {
        match follower.on_failure(now, "connection refused".to_owned()) {
            Step::Retry { after } => delays.push(after),
            other => panic!("{other:?}"),
        }
    }
    assert!(
        delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(100),
        "{delays:?}"
    );
    assert!(
        delays[5] >= Duration::from_millis(500) && delays[5] <= Duration::from_secs(1),
        "{delays:?}"
    );

    // A divergence below the commit id seen is for an operator.
    let diverged = FetchResponse::Diverged {
        cluster_id: CLUSTER,
        leader_epoch: 2,
        truncate_after: 0,
    };
    assert!(matches!(
        after_recording(follower.on_response(now, &next, diverged, &log), 2),
        Step::Stop { .. }
    ));
    let mut fresh = FollowerState::new(FollowerOptions::default(), CLUSTER);
    let mismatch = FetchResponse::ClusterMismatch {
        leader_cluster_id: 0xbad,
        leader_epoch: 1,
    };
    assert!(matches!(
        fresh.on_response(now, &next, mismatch, &log),
        Step::Stop { .. }
    ));
}

#[test]
fn a_resumed_follower_refuses_a_stale_leader_and_guards_its_saved_commit() {
    let now = Instant::now();
    let log = leader_log(&[(5, "a"); 11]);
    // Before the restart it heard epoch 5 and commit 10.
    let mut follower = FollowerState::resume(FollowerOptions::default(), CLUSTER, 5, 10);
    let request = follower.request(&log);
    assert_eq!((request.next_id, request.commit_id), (12, 10));
    let stale = FetchResponse::Entries {
        cluster_id: CLUSTER,
        leader_epoch: 4,
        commit_id: 12,
        first_id: 1,
        last_id: 12,
        frames: Vec::new(),
    };
    assert!(matches!(
        follower.on_response(now, &request, stale, &log),
        Step::Retry { .. }
    ));
    assert_eq!(
        follower.commit_seen(),
        10,
        "nothing from a stale leader is believed"
    );
    let cut_committed = FetchResponse::Diverged {
        cluster_id: CLUSTER,
        leader_epoch: 6,
        truncate_after: 7,
    };
    assert!(matches!(
        after_recording(follower.on_response(now, &request, cut_committed, &log), 6),
        Step::Stop { .. }
    ));
}

/// The stale-answer check (it was the driver's, for entries only): an answer to a request the
/// log has moved past — its next id or the epoch of its last entry changed — is dropped
/// whole, whatever its kind; an answer to the request the log would send now is used.
#[test]
fn an_answer_to_a_request_the_log_has_moved_past_is_dropped() {
    let now = Instant::now();
    let mut log = leader_log(&[(1, "a"), (1, "b")]);
    let mut follower = FollowerState::resume(FollowerOptions::default(), CLUSTER, 1, 0);
    let old = follower.request(&log);
    assert_eq!((old.next_id, old.last_epoch), (3, 1));
    // The log moves on (the answer to an earlier copy of the request was appended).
    log.append(1, payload(1, "c"));
    log.sync();
    let entries = FetchResponse::Entries {
        cluster_id: CLUSTER,
        leader_epoch: 1,
        commit_id: 3,
        first_id: 1,
        last_id: 3,
        frames: kv_wal::frame::encode_record(3, &payload(1, "c")),
    };
    let late_answers = [
        entries.clone(),
        FetchResponse::Diverged {
            cluster_id: CLUSTER,
            leader_epoch: 1,
            truncate_after: 1,
        },
        FetchResponse::SnapshotNeeded {
            cluster_id: CLUSTER,
            leader_epoch: 1,
            first_id: 9,
        },
    ];
    for answer in late_answers {
        assert_eq!(follower.on_response(now, &old, answer, &log), Step::Refetch);
    }
    assert_eq!(
        follower.commit_seen(),
        0,
        "nothing in a late answer is believed"
    );
    assert_eq!(*follower.link(), kv_replication::LinkState::Connecting);

    // Same next id, but the last entry was rewritten in another epoch: moved too.
    let current = follower.request(&log);
    log.truncate_after(2);
    log.append(2, payload(2, "c'"));
    assert_eq!(
        follower.on_response(now, &current, entries, &log),
        Step::Refetch
    );

    // The answer to the request the log would send now is used.
    let current = follower.request(&log);
    let next = FetchResponse::Entries {
        cluster_id: CLUSTER,
        leader_epoch: 2,
        commit_id: 3,
        first_id: 1,
        last_id: 4,
        frames: kv_wal::frame::encode_record(4, &payload(2, "d")),
    };
    assert!(matches!(
        after_recording(follower.on_response(now, &current, next, &log), 2),
        Step::Append { .. }
    ));
}

/// The epoch-before-append ordering (it was the driver's): an answer that raises the leader
/// epoch above the one on disk first asks for it to be recorded, whatever it then does;
/// answers refused (damaged, from an older epoch) record nothing; an epoch is asked for once.
#[test]
fn a_new_leader_epoch_is_recorded_before_anything_of_it_is_done() {
    let now = Instant::now();
    let log = leader_log(&[(1, "a")]);
    let mut follower = FollowerState::resume(FollowerOptions::default(), CLUSTER, 1, 0);
    let request = follower.request(&log);
    let entries = |leader_epoch: u64, frames: Vec<u8>| FetchResponse::Entries {
        cluster_id: CLUSTER,
        leader_epoch,
        commit_id: 0,
        first_id: 1,
        last_id: 2,
        frames,
    };
    let frame = kv_wal::frame::encode_record(2, &payload(1, "b"));
    // The epoch already on disk: nothing to record.
    assert!(matches!(
        follower.on_response(now, &request, entries(1, frame.clone()), &log),
        Step::Append { .. }
    ));
    // Refused answers record nothing: a damaged batch, then an older epoch.
    let mut damaged = frame.clone();
    damaged[8] ^= 1;
    assert!(matches!(
        follower.on_response(now, &request, entries(5, damaged), &log),
        Step::Retry { .. }
    ));
    assert!(matches!(
        follower.on_response(now, &request, entries(0, Vec::new()), &log),
        Step::Retry { .. }
    ));
    // A new epoch, whatever the answer does: recorded first, once.
    assert!(matches!(
        after_recording(
            follower.on_response(now, &request, entries(2, frame.clone()), &log),
            2
        ),
        Step::Append { .. }
    ));
    assert!(matches!(
        follower.on_response(now, &request, entries(2, Vec::new()), &log),
        Step::Apply { .. }
    ));
    let diverged = FetchResponse::Diverged {
        cluster_id: CLUSTER,
        leader_epoch: 3,
        truncate_after: 0,
    };
    assert_eq!(
        after_recording(follower.on_response(now, &request, diverged, &log), 3),
        Step::Truncate { after_id: 0 }
    );
    let snapshot_needed = FetchResponse::SnapshotNeeded {
        cluster_id: CLUSTER,
        leader_epoch: 4,
        first_id: 9,
    };
    assert!(matches!(
        after_recording(
            follower.on_response(now, &request, snapshot_needed, &log),
            4
        ),
        Step::InstallSnapshot {
            leader_first_id: 9,
            ..
        }
    ));
    // After a restart, the epoch in the meta file counts as recorded.
    let mut resumed = FollowerState::resume(FollowerOptions::default(), CLUSTER, 4, 0);
    assert!(matches!(
        resumed.on_response(now, &request, entries(4, frame), &log),
        Step::Append { .. }
    ));
}

/// The fallback after a failed snapshot download or install (it was the driver's): back off
/// as for a failed fetch, growing with failures in a row — the leader's "snapshot needed"
/// before each retry included — and start again from the first delay once entries come.
#[test]
fn a_failed_snapshot_install_backs_off_more_each_time_until_entries_come() {
    let now = Instant::now();
    let log = VecLog::new();
    let options = FollowerOptions {
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_secs(1),
        ..FollowerOptions::default()
    };
    let mut follower = FollowerState::resume(options, CLUSTER, 1, 0);
    let request = follower.request(&log);
    let snapshot_needed = FetchResponse::SnapshotNeeded {
        cluster_id: CLUSTER,
        leader_epoch: 1,
        first_id: 50,
    };
    assert!(matches!(
        follower.on_response(now, &request, snapshot_needed.clone(), &log),
        Step::InstallSnapshot { .. }
    ));
    for failure in 1..=4u32 {
        let Step::Retry { after } =
            follower.on_snapshot_failure(now, "the download broke".to_owned())
        else {
            panic!("a failed install is retried");
        };
        let ceiling = Duration::from_millis(100 << (failure - 1)).min(Duration::from_secs(1));
        assert!(after >= ceiling / 2 && after <= ceiling, "{after:?}");
        assert_eq!(
            *follower.link(),
            kv_replication::LinkState::Retrying {
                error: "the download broke".to_owned(),
                failures: failure
            }
        );
    }
    // Each retry asks the leader first, which answers "snapshot needed" again: that does not
    // end the failures (it did, and a follower that could not store the snapshot — a full
    // disk — downloaded it ~23 times a second from the leader, for ever).
    assert!(matches!(
        follower.on_response(now, &request, snapshot_needed, &log),
        Step::InstallSnapshot { .. }
    ));
    assert_eq!(*follower.link(), kv_replication::LinkState::Connected);
    let Step::Retry { after } = follower.on_snapshot_failure(now, "again".to_owned()) else {
        panic!("a failed install is retried");
    };
    assert!(
        after >= Duration::from_millis(500),
        "the backoff keeps growing: {after:?}"
    );
    // Installed: the leader's entries after the snapshot end the failures.
    let entries = FetchResponse::Entries {
        cluster_id: CLUSTER,
        leader_epoch: 1,
        commit_id: 0,
        first_id: 50,
        last_id: 0,
        frames: Vec::new(),
    };
    follower.on_response(now, &request, entries, &log);
    let Step::Retry { after } = follower.on_snapshot_failure(now, "once more".to_owned()) else {
        panic!("a failed install is retried");
    };
    assert!(
        after <= Duration::from_millis(100),
        "the backoff starts again: {after:?}"
    );
}

/// A fetch from inside a gap of the leader's log (ids it went on past because its snapshot
/// covers them: a log opened behind its snapshot) is sent to the snapshot. Before, it got an
/// empty answer, and the follower asked again forever (helper-21's report). Fetches from
/// before or after the gap get entries as ever.
#[test]
fn a_fetch_inside_a_gap_of_the_leaders_log_is_sent_to_the_snapshot() {
    let now = Instant::now();
    let tags: Vec<(u64, &str)> = (0..10).map(|_| (1, "x")).collect();
    let log = GappedLog::new(leader_log(&tags), 5..=7);
    let mut leader = LeaderState::new(CLUSTER, 1, LeaderOptions::default());
    let answer = |leader: &mut LeaderState, next_id| match leader.on_fetch(
        now,
        &request(10, next_id, 1, next_id - 1),
        &log,
        false,
        true,
    ) {
        FetchDecision::Respond(response) => response,
        other => panic!("{other:?}"),
    };
    let inside = answer(&mut leader, 5);
    assert!(
        matches!(inside, FetchResponse::SnapshotNeeded { first_id: 8, .. }),
        "{inside:?}"
    );
    assert_eq!(leader.take_uncovered_gap(), None);
    // A gap no snapshot covers (a point-in-time repair dropped those ids): the newest
    // snapshot would bring the follower back to it, so no snapshot is offered; the leader asks
    // for one that covers it (through id 7), once.
    let uncovered = GappedLog {
        snapshot_id: 3,
        ..GappedLog::new(leader_log(&tags), 5..=7)
    };
    let answer_uncovered = leader.on_fetch(now, &request(10, 5, 1, 4), &uncovered, false, true);
    assert!(
        matches!(
            answer_uncovered,
            FetchDecision::Respond(FetchResponse::Entries { .. })
        ),
        "{answer_uncovered:?}"
    );
    assert_eq!(leader.take_uncovered_gap(), Some(8));
    assert_eq!(leader.take_uncovered_gap(), None);
    for next_id in [2, 9] {
        let outside = answer(&mut leader, next_id);
        let FetchResponse::Entries { frames, .. } = &outside else {
            panic!("{outside:?}")
        };
        assert!(!frames.is_empty(), "{outside:?}");
    }
}
