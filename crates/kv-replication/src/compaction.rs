//! Log compaction: when to snapshot, and how much of the WAL a snapshot lets go — never the
//! segments a live follower still needs, unless keeping them would pass the retention limit,
//! in which case that follower installs a snapshot instead.

use std::time::Duration;

use kv_store::Codec;
use serde::Serialize;

/// Settings of snapshots and compaction.
#[derive(Debug, Clone)]
pub struct CompactionOptions {
    /// Snapshot once this many entries were applied since the last snapshot (0: never by count).
    pub snapshot_every_entries: u64,
    /// Snapshot once the WAL after the last snapshot holds this many bytes (0: never by size).
    pub snapshot_every_wal_bytes: u64,
    /// Snapshot once the WAL after the last snapshot holds this many times the live data (and
    /// at least [`SNAPSHOT_WAL_FLOOR_BYTES`]; 0: never by ratio): keeps the disk use of a small
    /// data set under overwrites a small multiple of the data, as Redis's
    /// `auto-aof-rewrite-percentage` does.
    pub snapshot_wal_live_ratio: u64,
    /// Snapshot once this long has passed since the last one, when entries were applied
    /// since (`None`: never by time). `POST /compaction/configure?interval=` changes it at
    /// run time.
    pub snapshot_interval: Option<Duration>,
    /// Snapshots kept on disk (at least 1).
    pub snapshots_kept: usize,
    /// WAL bytes before the newest snapshot kept for followers that still need them.
    pub wal_retention_bytes: u64,
    /// How snapshots are compressed.
    pub codec: Codec,
    /// Bytes per snapshot chunk a follower downloads.
    pub snapshot_chunk_bytes: u32,
    /// Timeout of one chunk download (the install after the download is not timed).
    pub snapshot_chunk_timeout: Duration,
}

impl Default for CompactionOptions {
    fn default() -> CompactionOptions {
        CompactionOptions {
            snapshot_every_entries: 500_000,
            snapshot_every_wal_bytes: 256 << 20,
            snapshot_wal_live_ratio: 2,
            snapshot_interval: None,
            snapshots_kept: 2,
            wal_retention_bytes: 1 << 30,
            codec: Codec::Zstd,
            snapshot_chunk_bytes: 1 << 20,
            snapshot_chunk_timeout: Duration::from_secs(30),
        }
    }
}

/// The WAL a snapshot by ratio waits for at least (so a tiny data set is not snapshotted on
/// every write).
pub const SNAPSHOT_WAL_FLOOR_BYTES: u64 = 2 << 20;

/// An active segment at least this large is sealed before a snapshot, so that the compaction
/// after it can purge it (only sealed segments are purged).
pub const SEAL_BEFORE_SNAPSHOT_BYTES: u64 = 1 << 20;

/// Whether the policy asks for a snapshot, given what happened since the last one: entries
/// applied, WAL bytes written, and the live data's size now.
pub fn snapshot_due(
    options: &CompactionOptions,
    entries_since: u64,
    wal_bytes_since: u64,
    live_bytes: u64,
) -> bool {
    if entries_since == 0 {
        return false;
    }
    let by_count =
        options.snapshot_every_entries > 0 && entries_since >= options.snapshot_every_entries;
    let by_size =
        options.snapshot_every_wal_bytes > 0 && wal_bytes_since >= options.snapshot_every_wal_bytes;
    let by_ratio = options.snapshot_wal_live_ratio > 0
        && wal_bytes_since
            >= SNAPSHOT_WAL_FLOOR_BYTES
                .max(live_bytes.saturating_mul(options.snapshot_wal_live_ratio));
    by_count || by_size || by_ratio
}

/// One follower's effect on a purge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetentionNote {
    /// The follower.
    pub follower_id: String,
    /// The id it needs next.
    pub next_id: u64,
    /// `kept`: segments were kept for it; `snapshot`: it will install a snapshot instead
    /// (keeping its segments would pass the retention limit).
    pub decision: &'static str,
}

/// What the last compaction did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PurgeReport {
    /// The newest snapshot's applied id.
    pub snapshot_id: u64,
    /// Segments wholly before this id may go.
    pub purge_before: u64,
    /// Segment files removed.
    pub segments_removed: Vec<String>,
    /// Why segments before the snapshot were kept.
    pub retained_for: Vec<RetentionNote>,
}

/// What this process did about snapshots: whether one is being written, the last one written,
/// the last purge, counts (for `/compaction/status`).
#[derive(Debug, Default)]
pub(crate) struct CompactionHistory {
    /// A snapshot is being written (a second one is refused meanwhile).
    pub(crate) running: bool,
    /// Snapshots written by this process.
    pub(crate) snapshots_written: u64,
    /// The last snapshot written.
    pub(crate) last_snapshot: Option<kv_store::SnapshotInfo>,
    /// What the last purge removed and kept.
    pub(crate) last_purge: Option<PurgeReport>,
    /// Snapshots installed from the leader.
    pub(crate) snapshots_installed: u64,
    /// Automatic snapshots that failed, since the process started.
    pub(crate) snapshots_failed: u64,
    /// Why the last automatic snapshot failed, while none succeeded since.
    pub(crate) last_snapshot_failure: Option<String>,
    /// Automatic snapshots are off (`POST /compaction/configure?enabled=false`).
    pub(crate) automatic_off: bool,
    /// The time trigger set at run time, over [`CompactionOptions::snapshot_interval`].
    pub(crate) interval_set: Option<Option<Duration>>,
    /// Since when the time trigger counts: the last snapshot, or when it was first checked.
    pub(crate) interval_since: Option<std::time::Instant>,
    /// The last [`COMPACTION_RUNS_KEPT`] snapshots written, oldest first.
    pub(crate) runs: std::collections::VecDeque<CompactionRun>,
    /// The first id after a gap of the log that a follower reached and no snapshot covered
    /// (0: none): a snapshot is due once one can cover it.
    pub(crate) gap_to_cover: u64,
}

/// Compaction runs `/compaction/status` lists (the original project kept 10).
pub const COMPACTION_RUNS_KEPT: usize = 10;

/// One snapshot and purge, as the original project's v1.6 `compaction_history` lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CompactionRun {
    /// When it ended, in ms since the Unix epoch.
    pub unix_ms: u64,
    /// How long the snapshot and the purge took.
    pub duration_ms: u64,
    /// The snapshot's applied id.
    pub snapshot_id: u64,
    /// WAL segment files removed.
    pub segments_removed: usize,
    /// WAL entries those segments held (the log's first id moved by this much).
    pub entries_removed: u64,
}

/// The switches of automatic compaction that can change at run time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactionControl {
    /// Whether the maintenance task writes snapshots when the policy says so.
    pub enabled: bool,
    /// The time trigger (`None`: off).
    pub interval: Option<Duration>,
    /// Whether a snapshot is being written now.
    pub running: bool,
    /// The last runs, oldest first.
    pub runs: Vec<CompactionRun>,
}

/// Decides where the purge may stop: right after the snapshot, or earlier for a follower that
/// still needs older entries — unless the WAL bytes kept for it would pass `retention_bytes`.
/// `segments` are `(last_id, size_bytes)` of sealed segments, oldest first; `followers` are
/// `(name, next_id)` of followers that are not down.
pub fn purge_point(
    snapshot_id: u64,
    segments: &[(u64, u64)],
    followers: &[(String, u64)],
    retention_bytes: u64,
) -> (u64, Vec<RetentionNote>) {
    let mut purge_before = snapshot_id + 1;
    let mut notes = Vec::new();
    let mut needy: Vec<&(String, u64)> = followers
        .iter()
        .filter(|(_, next_id)| *next_id <= snapshot_id)
        .collect();
    needy.sort_by_key(|(_, next_id)| *next_id);
    for (follower_id, next_id) in needy {
        // Bytes of the segments that would go but hold ids this follower still needs.
        let kept_bytes: u64 = segments
            .iter()
            .filter(|(last_id, _)| *last_id >= *next_id && *last_id < snapshot_id + 1)
            .map(|(_, size_bytes)| size_bytes)
            .sum();
        let decision = if kept_bytes <= retention_bytes {
            purge_before = purge_before.min(*next_id);
            "kept"
        } else {
            "snapshot"
        };
        notes.push(RetentionNote {
            follower_id: follower_id.clone(),
            next_id: *next_id,
            decision,
        });
    }
    (purge_before, notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_are_due_by_count_size_or_ratio_to_the_live_data() {
        let options = CompactionOptions::default();
        let mib = 1u64 << 20;
        // Nothing applied since the last snapshot: never.
        assert!(!snapshot_due(&options, 0, 10 << 30, 1));
        // By count.
        assert!(snapshot_due(&options, 500_000, 0, 0));
        assert!(!snapshot_due(&options, 499_999, 0, 1 << 30));
        // By size.
        assert!(snapshot_due(&options, 1, 256 * mib, 1 << 30));
        // By ratio: twice the live data, and at least the floor.
        assert!(snapshot_due(&options, 1, 20 * mib, 10 * mib));
        assert!(!snapshot_due(&options, 1, 20 * mib - 1, 10 * mib));
        assert!(!snapshot_due(&options, 1, SNAPSHOT_WAL_FLOOR_BYTES - 1, 1));
        assert!(snapshot_due(&options, 1, SNAPSHOT_WAL_FLOOR_BYTES, 1));
        // 0 turns each trigger off.
        let off = CompactionOptions {
            snapshot_every_entries: 0,
            snapshot_every_wal_bytes: 0,
            snapshot_wal_live_ratio: 0,
            ..CompactionOptions::default()
        };
        assert!(!snapshot_due(&off, u64::MAX, u64::MAX, 0));
        // A huge live size does not overflow.
        assert!(!snapshot_due(
            &CompactionOptions {
                snapshot_every_wal_bytes: 0,
                ..CompactionOptions::default()
            },
            1,
            u64::MAX - 1,
            u64::MAX
        ));
    }

    #[test]
    fn followers_hold_segments_back_within_the_retention_limit() {
        let segments = [(100, 1000), (200, 1000), (300, 1000)];
        let (point, notes) = purge_point(250, &segments, &[], 10_000);
        assert_eq!(point, 251);
        assert!(notes.is_empty());
        let followers = vec![("slow".to_owned(), 150), ("fast".to_owned(), 260)];
        let (point, notes) = purge_point(250, &segments, &followers, 10_000);
        assert_eq!(point, 150);
        assert_eq!(
            notes,
            vec![RetentionNote {
                follower_id: "slow".to_owned(),
                next_id: 150,
                decision: "kept"
            }]
        );
        // Keeping them would pass the limit: the follower will install a snapshot.
        let (point, notes) = purge_point(250, &segments, &followers, 500);
        assert_eq!(point, 251);
        assert_eq!(notes[0].decision, "snapshot");
    }
}
