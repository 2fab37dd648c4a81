//! Durability across process crashes and power cuts in sequence: what open replays must be
//! durable before the log serves, and a later power cut must not take it back.

use std::sync::Arc;

use kv_wal::sim::{CrashMode, SimFs};
use kv_wal::{RecoveryMode, SyncPolicy, Wal, WalOptions};

use crate::support::{collect, open_sim, payload, sim_dir, sim_options, StepFs};

/// Issue 11 finding 5: `kill -9` after a roll wrote the seal but before its `fdatasync`. The
/// restart replays the segment (records appended under `Never` included) and starts a new
/// one; a power cut after that must lose none of what the restart served or acknowledged,
/// and must not leave damage in a segment that is no longer the last.
#[test]
fn open_makes_a_sealed_last_segment_durable_before_serving() {
    let crash_modes = std::iter::once(CrashMode::DropUnsynced)
        .chain((0..32).map(|seed| CrashMode::TearUnsynced { seed }));
    for crash_mode in crash_modes {
        let fs = SimFs::new();
        let step_fs = StepFs::new(fs.clone());
        let options = WalOptions {
            file_system: Arc::new(step_fs.clone()),
            ..sim_options(&fs, 1 << 20)
        };
        let (wal, _) = Wal::open(sim_dir(), options).expect("open");
        for id in 1..=10 {
            assert_eq!(wal.append(&payload(id, 300)).unwrap(), id);
        }
        for id in 11..=15 {
            let appended = wal.append_with(&payload(id, 300), SyncPolicy::Never);
            assert_eq!(appended.unwrap(), id);
        }
        // The process dies at the seal's fdatasync: the seal was written, not synced.
        step_fs.plan().die_at(2);
        assert!(wal.seal_active(0).is_err());
        assert!(step_fs.plan().died());
        drop(wal);

        // Restart (the page cache still holds everything), serve, acknowledge more.
        let (wal, report) = open_sim(&fs, 1 << 20, RecoveryMode::TolerateTornTail)
            .unwrap_or_else(|error| panic!("{crash_mode:?}: first reopen: {error}"));
        assert_eq!(report.last_id, Some(15), "{crash_mode:?}: {report}");
        let served = collect(&wal, 1);
        assert_eq!(served.len(), 15, "{crash_mode:?}");
        for id in 16..=20 {
            assert_eq!(wal.append(&payload(id, 300)).unwrap(), id);
        }
        drop(wal);

        // Power cut.
        fs.crash(crash_mode);
        let (wal, report) = open_sim(&fs, 1 << 20, RecoveryMode::TolerateTornTail)
            .unwrap_or_else(|error| panic!("{crash_mode:?}: reopen after the power cut: {error}"));
        let ids: Vec<u64> = collect(&wal, 1).iter().map(|(id, _)| *id).collect();
        assert_eq!(
            ids,
            (1..=20).collect::<Vec<u64>>(),
            "{crash_mode:?}: records served or acknowledged before the power cut are gone: \
             {report}"
        );
    }
}
