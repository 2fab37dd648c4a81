//! Appends, reads, rolling, reopening, truncation and purging on a healthy log.

use std::sync::Arc;
use std::time::Duration;

use kv_wal::sim::SimFs;
use kv_wal::{Error, RecoveryMode, SyncPolicy, Wal, WalOptions};

use crate::support::{collect, open_sim, payload, segment_files, sim_dir, sim_options};

#[test]
fn append_read_iterate_reopen_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let options = WalOptions {
        segment_bytes_max: 4096,
        ..WalOptions::default()
    };
    let (wal, report) = Wal::open(dir.path(), options.clone()).unwrap();
    assert!(report.created);
    for id in 1..=500u64 {
        assert_eq!(wal.append(&payload(id, 50)).unwrap(), id);
    }
    assert!(wal.segments().len() > 5, "segments roll at 4 KiB");
    assert_eq!(wal.read(250).unwrap(), Some(payload(250, 50)));
    assert_eq!(wal.read(501).unwrap(), None);
    let records = collect(&wal, 1);
    assert_eq!(records.len(), 500);
    assert!(records
        .iter()
        .enumerate()
        .all(|(index, (id, bytes))| *id == index as u64 + 1 && *bytes == payload(*id, 50)));
    wal.close().unwrap();
    drop(wal);

    let (wal, report) = Wal::open(dir.path(), options).unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(
        report.segments_scanned, 1,
        "only the active segment is scanned: {report}"
    );
    assert_eq!(report.last_id, Some(500));
    assert_eq!(wal.next_id(), 501);
    assert_eq!(collect(&wal, 123).len(), 378);
    assert_eq!(wal.read(77).unwrap(), Some(payload(77, 50)));
}

/// `Wal::active_room` (what kvd reads, without a lock, to know a roll is near) is what the
/// active segment has left for appends: with nothing queued, the segment's size plus its room
/// is the same (the segment less its seal's room) after every append, every roll, an early
/// seal, truncations into a plain and a compressed segment, and a reopen — and an append
/// takes at least its payload from it.
#[test]
fn the_active_segments_room_shrinks_with_appends_and_comes_back_at_each_roll() {
    let fs = SimFs::new();
    let options = WalOptions {
        compress_sealed_segments: Some(kv_wal::SegmentCodec::Lz4),
        ..sim_options(&fs, 1024)
    };
    let (wal, _) = Wal::open(sim_dir(), options.clone()).unwrap();
    let active_size = |wal: &Wal| {
        wal.segments()
            .into_iter()
            .find(|segment| segment.is_active)
            .unwrap()
            .size_bytes
    };
    let whole = wal.active_room() + active_size(&wal);
    assert!(
        whole > 900 && whole < 1024,
        "a segment's room for appends: {whole}"
    );
    let mut room = wal.active_room();
    let mut rolls = 0;
    for id in 1..=60u64 {
        let segments = wal.segments().len();
        assert_eq!(wal.append(&payload(id, 100)).unwrap(), id);
        let now = wal.active_room();
        assert_eq!(now + active_size(&wal), whole, "after append {id}");
        if wal.segments().len() > segments {
            rolls += 1;
        } else {
            assert!(now + 100 <= room, "append {id} took {} B", room - now);
        }
        room = now;
    }
    assert!(rolls >= 5, "{rolls} rolls");
    // Into the active segment, then into an older one, compressed, each leaving its segment a
    // size other than the one before it (the room moves).
    assert!(wal.compress_sealed().unwrap().segments_compressed > 0);
    for after_id in [58, 27] {
        let before = active_size(&wal);
        wal.truncate_after(after_id).unwrap();
        assert_ne!(active_size(&wal), before, "a truncation after {after_id}");
        assert_eq!(
            wal.active_room() + active_size(&wal),
            whole,
            "after a truncation after {after_id}"
        );
    }
    assert!(wal.seal_active(0).unwrap());
    assert_eq!(
        wal.active_room() + active_size(&wal),
        whole,
        "after an early seal"
    );
    assert_eq!(wal.append(&payload(28, 100)).unwrap(), 28);
    wal.close().unwrap();
    drop(wal);
    let (wal, _) = Wal::open(sim_dir(), options).unwrap();
    assert_eq!(
        wal.active_room() + active_size(&wal),
        whole,
        "after a reopen"
    );
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert!(matches!(
        Wal::open(dir.path(), WalOptions::default()),
        Err(Error::Locked(_))
    ));
    // Also once the lock file was deleted as a "stale lock" (the directory is locked too):
    // before, the second open succeeded, and both logs wrote the same ids.
    std::fs::remove_file(dir.path().join("wal.lock")).unwrap();
    assert!(matches!(
        Wal::open(dir.path(), WalOptions::default()),
        Err(Error::Locked(_))
    ));
}

#[test]
fn segments_report_ids_sizes_and_the_active_one() {
    let fs = SimFs::new();
    let (wal, _) = open_sim(&fs, 1024, RecoveryMode::TolerateTornTail).unwrap();
    for id in 1..=40 {
        wal.append(&payload(id, 100)).unwrap();
    }
    let segments = wal.segments();
    assert!(segments.len() >= 4);
    assert_eq!(
        segments.iter().filter(|segment| segment.is_active).count(),
        1
    );
    assert!(segments.last().unwrap().is_active);
    let mut expected_first = 1;
    for segment in &segments {
        assert_eq!(segment.first_id, expected_first);
        let last = segment.last_id.unwrap();
        expected_first = last + 1;
        assert!(segment.size_bytes <= 1024, "{segment:?}");
    }
    assert_eq!(expected_first, 41);
}

#[test]
fn a_record_larger_than_a_segment_goes_in_alone() {
    let fs = SimFs::new();
    let (wal, _) = open_sim(&fs, 1024, RecoveryMode::TolerateTornTail).unwrap();
    wal.append(b"small").unwrap();
    let big = vec![7u8; 5000];
    let id = wal.append(&big).unwrap();
    wal.append(b"after").unwrap();
    let segments = wal.segments();
    let holder = segments
        .iter()
        .find(|segment| segment.first_id == id)
        .unwrap();
    assert_eq!(holder.last_id, Some(id));
    assert!(holder.size_bytes > 5000);
    assert_eq!(wal.read(id).unwrap(), Some(big));
    drop(wal);
    let (wal, report) = open_sim(&fs, 1024, RecoveryMode::Strict).unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(wal.read(id + 1).unwrap().as_deref(), Some(&b"after"[..]));
}

#[test]
fn truncate_after_then_continue_with_new_history() {
    let fs = SimFs::new();
    let (wal, _) = open_sim(&fs, 512, RecoveryMode::TolerateTornTail).unwrap();
    for id in 1..=60 {
        wal.append(&payload(id, 40)).unwrap();
    }
    wal.truncate_after(25).unwrap();
    assert_eq!(wal.last_id(), Some(25));
    assert_eq!(wal.next_id(), 26);
    assert_eq!(wal.read(26).unwrap(), None);
    assert_eq!(wal.append(b"new 26").unwrap(), 26);
    drop(wal);
    let (wal, report) = open_sim(&fs, 512, RecoveryMode::Strict).unwrap();
    assert!(report.is_clean(), "{report}");
    let records = collect(&wal, 1);
    assert_eq!(records.len(), 26);
    assert_eq!(records[24].1, payload(25, 40));
    assert_eq!(records[25].1, b"new 26");
}

#[test]
fn truncate_everything_and_restart_at_a_later_id() {
    let fs = SimFs::new();
    let (wal, _) = open_sim(&fs, 512, RecoveryMode::TolerateTornTail).unwrap();
    for id in 1..=30 {
        wal.append(&payload(id, 40)).unwrap();
    }
    wal.truncate_after(0).unwrap();
    assert_eq!(wal.last_id(), None);
    assert_eq!(wal.first_id(), None);
    // A follower installing a snapshot at id 1000 continues from 1001.
    let frames = kv_wal::frame::encode_record(1001, b"after snapshot");
    let ids = wal
        .append_frames(&frames, SyncPolicy::Batch)
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(ids, 1001..=1001);
    drop(wal);
    let (wal, report) = open_sim(&fs, 512, RecoveryMode::Strict).unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(wal.first_id(), Some(1001));
    assert_eq!(collect(&wal, 1), vec![(1001, b"after snapshot".to_vec())]);
}

#[test]
fn purge_before_drops_whole_segments_only() {
    let fs = SimFs::new();
    let (wal, _) = open_sim(&fs, 512, RecoveryMode::TolerateTornTail).unwrap();
    for id in 1..=100 {
        wal.append(&payload(id, 40)).unwrap();
    }
    let before = segment_files(&fs).len();
    let removed = wal.purge_before(50).unwrap();
    assert!(!removed.is_empty());
    assert_eq!(segment_files(&fs).len(), before - removed.len());
    let first = wal.first_id().unwrap();
    assert!(first <= 50 && first > 1, "first id {first}");
    assert_eq!(wal.read(50).unwrap(), Some(payload(50, 40)));
    // Iterating from a purged id starts at the first id kept.
    assert_eq!(collect(&wal, 1)[0].0, first);
    // The active segment is never purged.
    wal.purge_before(10_000).unwrap();
    assert_eq!(wal.last_id(), Some(100));
    assert_eq!(wal.append(b"more").unwrap(), 101);
    drop(wal);
    let (wal, report) = open_sim(&fs, 512, RecoveryMode::Strict).unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(wal.next_id(), 102);
}

/// Sealing the active segment early lets a purge reclaim it; a small or empty active segment
/// is left alone, and the log reopens clean and continues.
#[test]
fn seal_active_lets_purge_reclaim_a_covered_active_segment() {
    let fs = SimFs::new();
    let (wal, _) = open_sim(&fs, 1 << 20, RecoveryMode::TolerateTornTail).unwrap();
    assert!(
        !wal.seal_active(0).unwrap(),
        "an empty active segment is not sealed"
    );
    for id in 1..=100 {
        wal.append(&payload(id, 40)).unwrap();
    }
    assert_eq!(wal.segments().len(), 1);
    assert!(!wal.seal_active(1 << 20).unwrap(), "below min_bytes");
    assert!(
        wal.purge_before(101).unwrap().is_empty(),
        "the active segment stays"
    );
    assert!(wal.seal_active(1).unwrap());
    let segments = wal.segments();
    assert_eq!(segments.len(), 2);
    assert_eq!(segments[0].last_id, Some(100));
    assert!(segments[1].is_active && segments[1].first_id == 101);
    assert_eq!(wal.durable_id(), 100, "the seal is fsynced");
    assert_eq!(wal.purge_before(101).unwrap().len(), 1);
    assert_eq!(wal.start_id(), 101);
    assert_eq!(wal.append(b"next").unwrap(), 101);
    assert_eq!(wal.read(101).unwrap(), Some(b"next".to_vec()));
    drop(wal);
    let (wal, report) = open_sim(&fs, 1 << 20, RecoveryMode::Strict).unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!((wal.first_id(), wal.next_id()), (Some(101), 102));
}

#[test]
fn append_frames_checks_crc_and_continuity() {
    let fs = SimFs::new();
    let (leader, _) = open_sim(&fs, 4096, RecoveryMode::TolerateTornTail).unwrap();
    for id in 1..=10 {
        leader.append(&payload(id, 30)).unwrap();
    }
    let batch = leader.read_frames(1, 1 << 20, u64::MAX).unwrap().unwrap();
    assert_eq!((batch.first_id, batch.last_id), (1, 10));

    let dir = tempfile::tempdir().unwrap();
    let (follower, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    let mut damaged = batch.bytes.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x01;
    assert!(matches!(
        follower.append_frames(&damaged, SyncPolicy::Batch),
        Err(Error::Corrupt { .. })
    ));
    assert_eq!(
        follower.last_id(),
        None,
        "nothing written when any frame is bad"
    );
    let ids = follower
        .append_frames(&batch.bytes, SyncPolicy::Batch)
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(ids, 1..=10);
    assert!(matches!(
        follower.append_frames(&batch.bytes, SyncPolicy::Batch),
        Err(Error::IdConflict {
            first_id: 1,
            next_id: 11
        })
    ));
    assert_eq!(collect(&follower, 1), collect(&leader, 1));
    let small = leader.read_frames(3, 1, 5).unwrap().unwrap();
    assert_eq!(
        (small.first_id, small.last_id),
        (3, 3),
        "at least one frame, at most bytes_max"
    );
    let bounded = leader.read_frames(3, 1 << 20, 5).unwrap().unwrap();
    assert_eq!((bounded.first_id, bounded.last_id), (3, 5));
}

#[test]
fn concurrent_batch_appenders_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    let wal = Arc::new(wal);
    let threads: Vec<_> = (0..16)
        .map(|thread| {
            let wal = wal.clone();
            std::thread::spawn(move || {
                let mut ids = Vec::new();
                for index in 0..50u64 {
                    let id = wal.append(&payload(thread * 1000 + index, 64)).unwrap();
                    assert!(
                        wal.durable_id() >= id,
                        "append returned before its record was durable"
                    );
                    ids.push(id);
                }
                ids
            })
        })
        .collect();
    let mut all: Vec<u64> = threads
        .into_iter()
        .flat_map(|thread| thread.join().unwrap())
        .collect();
    all.sort_unstable();
    assert_eq!(all, (1..=800).collect::<Vec<_>>());
    let stats = wal.stats();
    assert_eq!(stats.records_appended, 800);
    assert!(stats.fsyncs < 800, "group commit shares fsyncs: {stats:?}");
}

#[test]
fn policies_never_and_interval_return_before_fsync_and_sync_later() {
    let dir = tempfile::tempdir().unwrap();
    let options = WalOptions {
        sync_policy: SyncPolicy::Interval(Duration::from_millis(5)),
        ..WalOptions::default()
    };
    let (wal, _) = Wal::open(dir.path(), options).unwrap();
    let id = wal.append(b"x").unwrap();
    wal.durable_watermark()
        .wait_blocking(id, Some(Duration::from_secs(10)))
        .expect("the interval committer syncs");
    let id = wal.append_with(b"y", SyncPolicy::Never).unwrap();
    assert_eq!(wal.read(id).unwrap().as_deref(), Some(&b"y"[..]));
    assert_eq!(wal.sync().unwrap(), id);
    let id = wal.append_with(b"z", SyncPolicy::Always).unwrap();
    assert!(wal.durable_id() >= id);
}

#[test]
fn async_tickets_resolve_without_a_runtime() {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    let mut ticket = pin!(wal.submit(&[b"a", b"b"]).unwrap());
    let mut context = Context::from_waker(Waker::noop());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Poll::Ready(ids) = ticket.as_mut().poll(&mut context) {
            assert_eq!(ids.unwrap(), 1..=2);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "ticket never resolved"
        );
        std::thread::yield_now();
    }
}

#[test]
fn tail_followers_wake_on_new_records() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    let wal = Arc::new(wal);
    let last = wal.last_watermark().clone();
    let follower = std::thread::spawn(move || last.wait_blocking(3, Some(Duration::from_secs(10))));
    for _ in 0..3 {
        wal.append(b"r").unwrap();
    }
    assert_eq!(follower.join().unwrap(), Ok(3));
}

#[test]
fn bad_arguments_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = WalOptions {
        segment_bytes_max: 10,
        ..WalOptions::default()
    };
    assert!(matches!(
        Wal::open(dir.path(), tiny),
        Err(Error::InvalidArgument(_))
    ));
    let (wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    let empty: [&[u8]; 0] = [];
    assert!(matches!(
        wal.append_batch(&empty),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        wal.append_frames(&[], SyncPolicy::Batch),
        Err(Error::InvalidArgument(_))
    ));
    wal.close().unwrap();
    assert!(matches!(wal.append(b"late"), Err(Error::Closed)));
    assert_eq!(wal.read(1).unwrap(), None);
}

#[test]
fn a_truncation_during_a_group_commit_never_marks_replacements_durable() {
    // The committer drops its lock to fsync; a truncation in that window must void the fsync's
    // target, or records appended after the truncation would count as durable before any fsync.
    use kv_wal::fs::{FaultPlan, FaultyFs};
    for round in 0..50u64 {
        let fs = SimFs::new();
        let options = WalOptions {
            file_system: Arc::new(FaultyFs::new(Arc::new(fs.clone()), FaultPlan::new())),
            ..crate::support::sim_options(&fs, 1 << 20)
        };
        let (wal, _) = Wal::open(crate::support::sim_dir(), options).unwrap();
        let wal = Arc::new(wal);
        let appender = {
            let wal = wal.clone();
            std::thread::spawn(move || {
                for id in 1..=20 {
                    let _ = wal.append(&payload(id, 32));
                }
            })
        };
        std::thread::yield_now();
        let _ = wal.truncate_after(round % 5);
        appender.join().unwrap();
        // Whatever interleaving happened: after a power cut, everything at or below the
        // durable id is on "disk" with the bytes the log now holds.
        let durable = wal.durable_id();
        let expected = collect(&wal, 1);
        fs.crash(kv_wal::sim::CrashMode::DropUnsynced);
        drop(wal);
        let (recovered, _) = open_sim(&fs, 1 << 20, RecoveryMode::TolerateTornTail).unwrap();
        let survived = collect(&recovered, 1);
        for (id, bytes) in expected.iter().filter(|(id, _)| *id <= durable) {
            let found = survived.iter().find(|(survivor, _)| survivor == id);
            assert_eq!(
                found.map(|(_, bytes)| bytes),
                Some(bytes),
                "round {round}: durable id {id} lost"
            );
        }
    }
}

#[test]
fn large_records_are_stored_compressed_and_read_back_whole() {
    let fs = SimFs::new();
    let options = WalOptions {
        compress_records_above: Some(256),
        ..crate::support::sim_options(&fs, 1 << 20)
    };
    let (wal, _) = Wal::open(crate::support::sim_dir(), options.clone()).unwrap();
    let compressible = b"{\"user\":\"someone\",\"tags\":[\"a\",\"b\"]}".repeat(40);
    let random: Vec<u8> = (0..2000u32)
        .map(|index| (index.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let small = b"small".to_vec();
    let ids: Vec<u64> = [&compressible, &random, &small]
        .iter()
        .map(|payload| wal.append(payload).unwrap())
        .collect();
    let stored = wal.segments()[0].size_bytes;
    assert!(
        stored < (compressible.len() + random.len() + small.len()) as u64,
        "nothing was compressed: {stored} bytes"
    );
    for (id, payload) in ids.iter().zip([&compressible, &random, &small]) {
        assert_eq!(wal.read(*id).unwrap().as_ref(), Some(payload));
    }
    // Replication ships frames as stored: compressed on the wire, whole at the other end.
    let batch = wal.read_frames(1, usize::MAX, 3).unwrap().unwrap();
    assert!(batch.bytes.len() < compressible.len());
    let dir = tempfile::tempdir().unwrap();
    let (copy, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    copy.append_frames(&batch.bytes, SyncPolicy::Batch)
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(copy.read(1).unwrap(), Some(compressible.clone()));
    drop(wal);
    let (wal, report) = Wal::open(crate::support::sim_dir(), options).unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(collect(&wal, 1).len(), 3);
    assert_eq!(wal.read(1).unwrap(), Some(compressible));
}

/// `skip_to` moves the next id forward durably: the ids skipped are never handed out, the
/// records before them stay readable, and a power cut right after it keeps the jump.
#[test]
fn skip_to_moves_the_next_id_forward_for_good() {
    let sim = SimFs::new();
    let (wal, _) = open_sim(&sim, 1 << 20, RecoveryMode::default()).unwrap();
    for id in 1..=3u64 {
        assert_eq!(wal.append(&payload(id, 10)).unwrap(), id);
    }
    assert!(!wal.skip_to(2).unwrap(), "never backwards");
    assert!(wal.skip_to(100).unwrap());
    assert_eq!(wal.next_id(), 100);
    assert_eq!(wal.append(&payload(100, 10)).unwrap(), 100);
    assert_eq!(wal.read(3).unwrap(), Some(payload(3, 10)));
    assert_eq!(wal.read(50).unwrap(), None);
    // An empty active segment is replaced, not sealed.
    assert!(wal.skip_to(200).unwrap());
    assert!(wal.skip_to(300).unwrap());
    drop(wal);
    sim.crash(kv_wal::sim::CrashMode::DropUnsynced);
    let (wal, report) = open_sim(&sim, 1 << 20, RecoveryMode::default()).unwrap();
    assert!(report.dropped.is_none(), "{report}");
    assert_eq!(wal.next_id(), 300);
    let ids: Vec<u64> = collect(&wal, 1).into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids, vec![1, 2, 3, 100]);
}

/// Record ids end at `u64::MAX - 1` (the next id after the last record is a `u64` too): an
/// append, a batch, frames from a peer or a `skip_to` that would go past it is refused with
/// `InvalidArgument`, nothing written, the log as it was. Before, a release build handed out
/// id 0 and then ids already taken, and a reopen lost the records with a clean report; a debug
/// build panicked (found by a new user embedding kv-wal).
#[test]
fn record_ids_end_below_u64_max_and_never_wrap() {
    let fs = SimFs::new();
    let refused = Wal::open(
        sim_dir(),
        WalOptions {
            first_id: u64::MAX,
            ..sim_options(&fs, 4096)
        },
    );
    assert!(matches!(refused, Err(Error::InvalidArgument(_))));
    // (And a zero interval, which made the committer spin when idle.)
    let refused = Wal::open(
        sim_dir(),
        WalOptions {
            sync_policy: SyncPolicy::Interval(Duration::ZERO),
            ..sim_options(&fs, 4096)
        },
    );
    assert!(matches!(refused, Err(Error::InvalidArgument(_))));
    let top = u64::MAX - 1;
    let (wal, _) = Wal::open(
        sim_dir(),
        WalOptions {
            first_id: top - 2,
            ..sim_options(&fs, 4096)
        },
    )
    .unwrap();
    // A batch that would reach u64::MAX fails whole.
    let batch = [
        payload(1, 40),
        payload(2, 40),
        payload(3, 40),
        payload(4, 40),
    ];
    let refused = wal.append_batch(&batch);
    assert!(
        matches!(refused, Err(Error::InvalidArgument(_))),
        "{refused:?}"
    );
    assert_eq!(wal.last_id(), None);
    for id in top - 2..=top {
        assert_eq!(wal.append(&payload(id, 40)).unwrap(), id);
    }
    for _ in 0..2 {
        let refused = wal.append(&payload(0, 40));
        assert!(
            matches!(refused, Err(Error::InvalidArgument(_))),
            "{refused:?}"
        );
    }
    let refused = wal.append_frames(
        &kv_wal::frame::encode_record(u64::MAX, b"x"),
        SyncPolicy::Batch,
    );
    assert!(
        matches!(refused, Err(Error::InvalidArgument(_))),
        "{refused:?}"
    );
    assert!(matches!(
        wal.skip_to(u64::MAX),
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(wal.next_id(), u64::MAX);
    assert_eq!(wal.durable_id(), top);
    drop(wal);
    let (wal, report) = open_sim(&fs, 4096, RecoveryMode::Strict).unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(
        collect(&wal, 1),
        (top - 2..=top)
            .map(|id| (id, payload(id, 40)))
            .collect::<Vec<_>>()
    );
    assert_eq!(wal.next_id(), u64::MAX);
}
