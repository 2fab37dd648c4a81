//! The state machine's rules, as tables: every command against the states that accept and
//! refuse it. A refused command must leave the metadata exactly as it was.

use std::collections::BTreeSet;

use kv_controller::{ApplyResult, ClusterMeta, Command, Rejection};

fn set(ids: &[u64]) -> BTreeSet<u64> {
    ids.iter().copied().collect()
}

/// A bootstrapped cluster: leader 0 in epoch 5 (floor 4), members 0..=3, ISR {0,1,2},
/// voters {0,1,2}, write quorum 2.
fn cluster() -> ClusterMeta {
    let voters = set(&[0, 1, 2]);
    let mut meta = ClusterMeta::default();
    let commands = [
        Command::Bootstrap {
            cluster_id: 0xc1,
            leader: 0,
            leader_url: "http://n0".into(),
            epoch_floor: 4,
            write_quorum: 1,
        },
        Command::AddMember {
            id: 1,
            url: "http://n1".into(),
        },
        Command::AddMember {
            id: 2,
            url: "http://n2".into(),
        },
        Command::AddMember {
            id: 3,
            url: "http://n3".into(),
        },
        Command::ChangeIsr {
            sender: 0,
            leader_epoch: 5,
            isr: set(&[0, 1, 2]),
            expected_version: None,
        },
        Command::SetWriteQuorum { write_quorum: 2 },
    ];
    for command in &commands {
        assert!(
            matches!(meta.apply(command, &voters), ApplyResult::Applied { .. }),
            "{command}"
        );
    }
    meta
}

fn voters() -> BTreeSet<u64> {
    set(&[0, 1, 2])
}

/// Applies `command` and checks it is refused with `expected`, changing nothing.
fn refused(meta: &ClusterMeta, command: Command, expected: Rejection) {
    let mut after = meta.clone();
    let result = after.apply(&command, &voters());
    assert_eq!(
        result,
        ApplyResult::Rejected {
            rejection: expected
        },
        "{command}"
    );
    assert_eq!(
        &after, meta,
        "a refused command changed the metadata: {command}"
    );
}

fn applied(meta: &ClusterMeta, command: Command) -> ClusterMeta {
    let mut after = meta.clone();
    match after.apply(&command, &voters()) {
        ApplyResult::Applied { meta: returned } => {
            assert_eq!(returned, after, "the result carries the new metadata");
            after
        }
        ApplyResult::Rejected { rejection } => panic!("{command} refused: {rejection}"),
    }
}

#[test]
fn bootstrap_starts_above_the_epoch_floor_and_applies_once() {
    let meta = cluster();
    assert_eq!(meta.cluster_id, 0xc1);
    assert_eq!(
        meta.leader_epoch, 5,
        "one above the migrated node.meta epoch 4"
    );
    assert_eq!(meta.data_leader, Some(0));
    assert_eq!(meta.leader_url(), Some("http://n0"));
    assert!(meta.members[&0].voter && !meta.members[&3].voter);
    refused(
        &meta,
        Command::Bootstrap {
            cluster_id: 0xc2,
            leader: 1,
            leader_url: "http://n1".into(),
            epoch_floor: 0,
            write_quorum: 1,
        },
        Rejection::AlreadyBootstrapped { cluster_id: 0xc1 },
    );
    // Nothing but a bootstrap applies to an empty state; a bootstrap needs a cluster id.
    let empty = ClusterMeta::default();
    refused(
        &empty,
        Command::AddMember {
            id: 1,
            url: "u".into(),
        },
        Rejection::NotBootstrapped,
    );
    let mut after = empty.clone();
    let zero_id = Command::Bootstrap {
        cluster_id: 0,
        leader: 0,
        leader_url: "u".into(),
        epoch_floor: 0,
        write_quorum: 1,
    };
    assert!(matches!(
        after.apply(&zero_id, &voters()),
        ApplyResult::Rejected { .. }
    ));
    assert_eq!(after, empty);
}

#[test]
fn elections_apply_only_in_the_expected_epoch_and_only_from_the_isr() {
    let meta = cluster();
    let elect = |expected_epoch, new_leader, new_isr: &[u64]| Command::ElectLeader {
        expected_epoch,
        new_leader,
        new_isr: set(new_isr),
        unclean: false,
    };
    refused(
        &meta,
        elect(4, Some(1), &[1, 2]),
        Rejection::StaleEpoch {
            expected: 4,
            current: 5,
        },
    );
    refused(
        &meta,
        elect(6, Some(1), &[1, 2]),
        Rejection::StaleEpoch {
            expected: 6,
            current: 5,
        },
    );
    // Node 3 is a member but not in the ISR: not electable, and not addable to the ISR here.
    refused(
        &meta,
        elect(5, Some(3), &[3]),
        Rejection::NotInIsr { id: 3 },
    );
    refused(
        &meta,
        elect(5, Some(1), &[1, 3]),
        Rejection::NotInIsr { id: 3 },
    );
    refused(
        &meta,
        elect(5, Some(9), &[9]),
        Rejection::UnknownMember { id: 9 },
    );
    refused(
        &meta,
        elect(5, Some(1), &[2]),
        Rejection::Invalid {
            detail: "the new ISR must contain the new leader 1".into(),
        },
    );
    refused(
        &meta,
        elect(5, None, &[]),
        Rejection::Invalid {
            detail: "the new ISR is empty".into(),
        },
    );

    let after = applied(&meta, elect(5, Some(1), &[1, 2]));
    assert_eq!(
        (after.data_leader, after.leader_epoch, after.isr.clone()),
        (Some(1), 6, set(&[1, 2]))
    );
    // The same decision again (a retry, a second controller) is now stale.
    refused(
        &after,
        elect(5, Some(2), &[1, 2]),
        Rejection::StaleEpoch {
            expected: 5,
            current: 6,
        },
    );
    // Leaderless, then the first ISR member back.
    let leaderless = applied(&after, elect(6, None, &[1, 2]));
    assert_eq!((leaderless.data_leader, leaderless.leader_epoch), (None, 7));
    let back = applied(&leaderless, elect(7, Some(2), &[1, 2]));
    assert_eq!((back.data_leader, back.leader_epoch), (Some(2), 8));
}

#[test]
fn an_unclean_election_must_say_so_and_leaves_the_leader_alone_in_its_isr() {
    let meta = cluster();
    let unclean = |new_isr: &[u64]| Command::ElectLeader {
        expected_epoch: 5,
        new_leader: Some(3),
        new_isr: set(new_isr),
        unclean: true,
    };
    refused(
        &meta,
        unclean(&[3, 1]),
        Rejection::Invalid {
            detail: "an unclean election's ISR is its leader alone".into(),
        },
    );
    let after = applied(&meta, unclean(&[3]));
    assert_eq!(
        (after.data_leader, after.isr.clone(), after.leader_epoch),
        (Some(3), set(&[3]), 6)
    );
}

#[test]
fn isr_changes_need_the_current_leader_in_its_current_epoch_and_keep_it() {
    let meta = cluster();
    let change = |sender, leader_epoch, isr: &[u64]| Command::ChangeIsr {
        sender,
        leader_epoch,
        isr: set(isr),
        expected_version: None,
    };
    // A deposed leader (old epoch) cannot shrink the ISR to commit alone (KIP-841).
    refused(
        &meta,
        change(0, 4, &[0]),
        Rejection::StaleEpoch {
            expected: 4,
            current: 5,
        },
    );
    // A follower cannot change it.
    refused(
        &meta,
        change(1, 5, &[1]),
        Rejection::NotDataLeader {
            sender: 1,
            leader: Some(0),
        },
    );
    refused(
        &meta,
        change(0, 5, &[1, 2]),
        Rejection::Invalid {
            detail: "the ISR must keep its leader 0".into(),
        },
    );
    refused(
        &meta,
        change(0, 5, &[0, 7]),
        Rejection::UnknownMember { id: 7 },
    );
    let shrunk = applied(&meta, change(0, 5, &[0, 2]));
    assert_eq!(
        (shrunk.isr.clone(), shrunk.leader_epoch),
        (set(&[0, 2]), 5),
        "the epoch stays"
    );
    let grown = applied(&shrunk, change(0, 5, &[0, 2, 3]));
    assert_eq!(grown.isr, set(&[0, 2, 3]));
    // After an election the old leader's request is stale.
    let elected = applied(
        &grown,
        Command::ElectLeader {
            expected_epoch: 5,
            new_leader: Some(2),
            new_isr: set(&[2, 3]),
            unclean: false,
        },
    );
    refused(
        &elected,
        change(0, 5, &[0]),
        Rejection::StaleEpoch {
            expected: 5,
            current: 6,
        },
    );
}

#[test]
fn an_isr_change_applies_only_at_the_version_it_was_decided_against() {
    let meta = cluster();
    let change = |isr: &[u64], version| Command::ChangeIsr {
        sender: 0,
        leader_epoch: 5,
        isr: set(isr),
        expected_version: Some(version),
    };
    let at = meta.version;
    refused(
        &meta,
        change(&[0, 1, 2, 3], at - 1),
        Rejection::StaleVersion {
            expected: at - 1,
            current: at,
        },
    );
    let grown = applied(&meta, change(&[0, 1, 2, 3], at));
    assert_eq!(
        (grown.isr.clone(), grown.version),
        (set(&[0, 1, 2, 3]), at + 1)
    );
    // The leader shrank it since: the same request, arriving again (late, or retried), must
    // not add node 3 back behind the leader's back.
    let shrunk = applied(&grown, change(&[0, 1, 2], at + 1));
    refused(
        &shrunk,
        change(&[0, 1, 2, 3], at),
        Rejection::StaleVersion {
            expected: at,
            current: at + 2,
        },
    );
    // Any other change moves the version too: a request decided before it is refused.
    let quorum = applied(&meta, Command::SetWriteQuorum { write_quorum: 3 });
    refused(
        &quorum,
        change(&[0, 1], at),
        Rejection::StaleVersion {
            expected: at,
            current: at + 1,
        },
    );
}

#[test]
fn a_planned_transfer_takes_two_steps_from_the_leader_and_bumps_the_epoch_once() {
    let meta = cluster();
    refused(
        &meta,
        Command::BeginTransfer { to: 3 },
        Rejection::NotInIsr { id: 3 },
    );
    refused(
        &meta,
        Command::BeginTransfer { to: 0 },
        Rejection::Invalid {
            detail: "node 0 already leads".into(),
        },
    );
    let transfer = |sender, leader_epoch, to| Command::TransferLeader {
        sender,
        leader_epoch,
        to,
        leaving: false,
    };
    // Step two without step one is refused: the leader must have stopped writes first.
    refused(&meta, transfer(0, 5, 1), Rejection::NoTransfer);
    let begun = applied(&meta, Command::BeginTransfer { to: 1 });
    assert_eq!(begun.transfer.map(|t| (t.to, t.leader_epoch)), Some((1, 5)));
    assert_eq!(
        (begun.data_leader, begun.leader_epoch),
        (Some(0), 5),
        "step one moves nothing"
    );
    refused(
        &begun,
        Command::BeginTransfer { to: 2 },
        Rejection::TransferInProgress { to: 1 },
    );
    refused(
        &begun,
        transfer(1, 5, 1),
        Rejection::NotDataLeader {
            sender: 1,
            leader: Some(0),
        },
    );
    refused(
        &begun,
        transfer(0, 4, 1),
        Rejection::StaleEpoch {
            expected: 4,
            current: 5,
        },
    );
    refused(&begun, transfer(0, 5, 2), Rejection::NoTransfer);
    let done = applied(&begun, transfer(0, 5, 1));
    assert_eq!(
        (done.data_leader, done.leader_epoch, done.transfer),
        (Some(1), 6, None)
    );
    assert_eq!(
        done.isr,
        set(&[0, 1, 2]),
        "the old leader, caught up, stays in the ISR"
    );
    // Cancel: only in the transfer's epoch, only when one is pending.
    refused(
        &meta,
        Command::CancelTransfer { leader_epoch: 5 },
        Rejection::NoTransfer,
    );
    refused(
        &begun,
        Command::CancelTransfer { leader_epoch: 4 },
        Rejection::StaleEpoch {
            expected: 4,
            current: 5,
        },
    );
    let cancelled = applied(&begun, Command::CancelTransfer { leader_epoch: 5 });
    assert_eq!(cancelled.transfer, None);
    // An election clears a pending transfer.
    let elected = applied(
        &begun,
        Command::ElectLeader {
            expected_epoch: 5,
            new_leader: Some(2),
            new_isr: set(&[1, 2]),
            unclean: false,
        },
    );
    assert_eq!(elected.transfer, None);
}

#[test]
fn membership_commands_keep_the_leader_the_voters_and_the_write_quorum_possible() {
    let meta = cluster();
    // A retried join is a no-op; another URL under the same id is refused.
    assert_eq!(
        applied(
            &meta,
            Command::AddMember {
                id: 3,
                url: "http://n3".into()
            }
        ),
        meta
    );
    refused(
        &meta,
        Command::AddMember {
            id: 3,
            url: "http://elsewhere".into(),
        },
        Rejection::MemberExists {
            id: 3,
            url: "http://n3".into(),
        },
    );
    refused(
        &meta,
        Command::AddMember {
            id: 4,
            url: String::new(),
        },
        Rejection::Invalid {
            detail: "a member URL has 1..=1024 bytes".into(),
        },
    );
    let moved = applied(
        &meta,
        Command::UpdateUrl {
            id: 3,
            url: "http://n3b".into(),
        },
    );
    assert_eq!(moved.url_of(3), Some("http://n3b"));
    refused(
        &meta,
        Command::UpdateUrl {
            id: 8,
            url: "u".into(),
        },
        Rejection::UnknownMember { id: 8 },
    );
    refused(
        &meta,
        Command::RemoveMember { id: 0 },
        Rejection::IsDataLeader { id: 0 },
    );
    refused(
        &meta,
        Command::RemoveMember { id: 1 },
        Rejection::IsVoter { id: 1 },
    );
    refused(
        &meta,
        Command::RemoveMember { id: 8 },
        Rejection::UnknownMember { id: 8 },
    );
    let removed = applied(&meta, Command::RemoveMember { id: 3 });
    assert!(!removed.members.contains_key(&3));
    // A removed ISR member leaves the ISR too.
    let mut voters_gone = meta.clone();
    voters_gone.set_voters(&set(&[0]));
    assert!(!voters_gone.members[&2].voter);
    let mut after = voters_gone.clone();
    assert!(matches!(
        after.apply(&Command::RemoveMember { id: 2 }, &set(&[0])),
        ApplyResult::Applied { .. }
    ));
    assert_eq!(after.isr, set(&[0, 1]));
    // The write quorum stays within the members.
    refused(
        &meta,
        Command::SetWriteQuorum { write_quorum: 0 },
        Rejection::Invalid {
            detail: "write quorum 0 is outside 1..=4 (the members)".into(),
        },
    );
    refused(
        &meta,
        Command::SetWriteQuorum { write_quorum: 5 },
        Rejection::Invalid {
            detail: "write quorum 5 is outside 1..=4 (the members)".into(),
        },
    );
    let three = applied(&meta, Command::SetWriteQuorum { write_quorum: 4 });
    let mut after = three.clone();
    let result = after.apply(&Command::RemoveMember { id: 3 }, &voters());
    assert!(matches!(
        result,
        ApplyResult::Rejected {
            rejection: Rejection::Invalid { .. }
        }
    ));
    assert_eq!(after, three);
}

#[test]
fn commands_and_results_round_trip_through_json() {
    let command = Command::ElectLeader {
        expected_epoch: 5,
        new_leader: Some(1),
        new_isr: set(&[1, 2]),
        unclean: false,
    };
    let text = serde_json::to_string(&command).unwrap();
    assert_eq!(serde_json::from_str::<Command>(&text).unwrap(), command);
    let result = ApplyResult::Rejected {
        rejection: Rejection::StaleEpoch {
            expected: 4,
            current: 5,
        },
    };
    let text = serde_json::to_string(&result).unwrap();
    assert_eq!(serde_json::from_str::<ApplyResult>(&text).unwrap(), result);
    let meta = cluster();
    let text = serde_json::to_string(&meta).unwrap();
    assert_eq!(serde_json::from_str::<ClusterMeta>(&text).unwrap(), meta);
}

#[test]
fn every_change_bumps_the_version_and_a_refusal_or_a_no_op_does_not() {
    let meta = cluster();
    // Bootstrap, three members, an ISR change, a write quorum: six applied commands.
    assert_eq!(meta.version, 6);
    let after = applied(
        &meta,
        Command::UpdateUrl {
            id: 3,
            url: "http://n3b".into(),
        },
    );
    assert_eq!(after.version, 7);
    // A retried join changes nothing.
    let again = applied(
        &after,
        Command::AddMember {
            id: 3,
            url: "http://n3b".into(),
        },
    );
    assert_eq!(again.version, 7);
    refused(
        &again,
        Command::RemoveMember { id: 9 },
        Rejection::UnknownMember { id: 9 },
    );
    // Metadata written before the field existed reads as version 0.
    let mut json = serde_json::to_value(&meta).unwrap();
    json.as_object_mut().unwrap().remove("version");
    let old: ClusterMeta = serde_json::from_value(json).unwrap();
    assert_eq!(old.version, 0);
}

/// Two members never share a URL: the controller's Raft messages go by URL, so a node started
/// on a dead member's address (`kvd follower 3 --listen <node 2's>`) was admitted beside it
/// and answered every Raft message meant for voter 2 — counted as that voter, and as itself
/// once promoted, it could make a majority alone. A URL is freed by moving or removing the
/// member that holds it.
#[test]
fn a_url_another_member_holds_is_refused() {
    let meta = cluster();
    refused(
        &meta,
        Command::AddMember {
            id: 4,
            url: "http://n2".into(),
        },
        Rejection::UrlTaken {
            url: "http://n2".into(),
            id: 2,
        },
    );
    refused(
        &meta,
        Command::UpdateUrl {
            id: 3,
            url: "http://n1".into(),
        },
        Rejection::UrlTaken {
            url: "http://n1".into(),
            id: 1,
        },
    );
    // A member keeps its own URL; a URL given up is free again.
    assert_eq!(
        applied(
            &meta,
            Command::UpdateUrl {
                id: 3,
                url: "http://n3".into()
            }
        ),
        meta
    );
    let moved = applied(
        &meta,
        Command::UpdateUrl {
            id: 3,
            url: "http://n3b".into(),
        },
    );
    let reused = applied(
        &moved,
        Command::AddMember {
            id: 4,
            url: "http://n3".into(),
        },
    );
    assert_eq!(reused.url_of(4), Some("http://n3"));
}

/// A leader that hands over because it is stopping leaves the ISR with the hand-over, while
/// the ISR keeps `max(write quorum, 2)` members without it: the new leader need not wait the
/// lag limit out for a node that will not fetch from it.
#[test]
fn a_leaving_leader_leaves_the_isr_with_its_hand_over_while_enough_remain() {
    let begun = applied(&cluster(), Command::BeginTransfer { to: 1 });
    let leaving = |meta: &ClusterMeta| Command::TransferLeader {
        sender: 0,
        leader_epoch: meta.leader_epoch,
        to: 1,
        leaving: true,
    };
    let done = applied(&begun, leaving(&begun));
    assert_eq!((done.data_leader, done.isr), (Some(1), set(&[1, 2])));
    // With a write quorum of 3, removing it would leave too few: it stays.
    let strict = applied(&cluster(), Command::SetWriteQuorum { write_quorum: 3 });
    let begun = applied(&strict, Command::BeginTransfer { to: 1 });
    let done = applied(&begun, leaving(&begun));
    assert_eq!((done.data_leader, done.isr), (Some(1), set(&[0, 1, 2])));
    // The flag is left out of the command's JSON when false (older logs read the same).
    let json = serde_json::to_string(&Command::TransferLeader {
        sender: 0,
        leader_epoch: 5,
        to: 1,
        leaving: false,
    })
    .expect("json");
    assert!(!json.contains("leaving"), "{json}");
}
