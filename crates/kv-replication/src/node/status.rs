//! What a node shows of itself: `/cluster_status` ([`ClusterStatus`]: role, epoch, ids, the
//! followers' health or the link to the leader) and `/compaction/status` ([`CompactionStatus`]).

use std::time::Instant;

use serde::Serialize;

use super::{lock, Node, RoleState};
use crate::compaction::PurgeReport;
use crate::follower::LinkState;
use crate::leader::FollowerStatus;
use crate::log_view::LogView;

/// What `/cluster_status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    /// `leader`, `follower`, or `none` (a node that knows no leader).
    pub role: &'static str,
    /// This node's id under the controller (`None`: a legacy node).
    pub node_id: Option<u64>,
    /// The leader's URL (followers).
    pub leader: Option<String>,
    /// The cluster id, hex (empty for a follower that has not joined yet).
    pub cluster_id: String,
    /// The epoch this node leads in, or the leader's as last heard.
    pub epoch: u64,
    /// The commit id (followers: as last heard).
    pub commit_id: u64,
    /// The last entry applied to the map.
    pub applied_id: u64,
    /// The highest id durable here.
    pub durable_id: u64,
    /// The last id in the local log.
    pub last_id: u64,
    /// The first id in the local log.
    pub first_id: u64,
    /// The write quorum (leader).
    pub write_quorum: Option<usize>,
    /// Every follower heard from (leader).
    pub followers: Option<Vec<FollowerStatus>>,
    /// The applied ISR (a leader under the controller).
    pub isr: Option<Vec<u64>>,
    /// This epoch's no-op: commits count from it on (a leader under the controller).
    pub noop_id: Option<u64>,
    /// Milliseconds the controller's lease still holds (a leader under the controller; 0:
    /// none — it acknowledges nothing).
    pub lease_remaining_ms: Option<u64>,
    /// The newer epoch a fetch told this leader of (it acknowledges nothing more).
    pub deposed_by: Option<u64>,
    /// The epoch this node was named leader of but may not lead (it led it before a restart).
    pub reelection_wanted: Option<u64>,
    /// Whether this follower is caught up with its leader (within the lag limit).
    pub caught_up: Option<bool>,
    /// How stale this node's reads may be, in milliseconds (see `Node::staleness`).
    pub staleness_ms: Option<u64>,
    /// Cuts obeyed below the commit id heard from an earlier leader (followers).
    pub committed_truncations: Option<u64>,
    /// The link to the leader (followers).
    pub link: Option<LinkState>,
    /// Milliseconds since the leader last answered (followers).
    pub last_contact_age_ms: Option<u64>,
    /// Damaged batches refused (followers).
    pub corrupt_batches_refused: Option<u64>,
    /// Replication stream counters (a leader's streams served, a follower's sessions).
    pub streams: super::streaming::StreamCounts,
}

/// What `/compaction/status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct CompactionStatus {
    /// Snapshots on disk, newest first: `(applied_id, path)`.
    pub snapshots: Vec<(u64, String)>,
    /// The last snapshot this process wrote.
    pub last_snapshot: Option<SnapshotSummary>,
    /// What the last purge removed and kept, and why.
    pub last_purge: Option<PurgeReport>,
    /// Snapshots written by this process.
    pub snapshots_written: u64,
    /// Snapshots installed from the leader by this process.
    pub snapshots_installed: u64,
    /// Automatic snapshots that failed in this process (a full disk, say): each is tried again
    /// after a pause that doubles, from [`crate::SNAPSHOT_RETRY_MIN`] to
    /// [`crate::SNAPSHOT_RETRY_MAX`].
    pub snapshots_failed: u64,
    /// Why the last automatic snapshot failed, while none succeeded since.
    pub last_snapshot_failure: Option<String>,
    /// The WAL's first id, segment count and bytes.
    pub wal_first_id: u64,
    /// Segments in the WAL.
    pub wal_segments: usize,
    /// Bytes in the WAL.
    pub wal_bytes: u64,
    /// Entries applied since the newest snapshot.
    pub entries_since_snapshot: u64,
    /// The policy.
    pub snapshot_every_entries: u64,
    /// The policy.
    pub snapshot_every_wal_bytes: u64,
    /// The policy.
    pub snapshot_wal_live_ratio: u64,
    /// Bytes of live data in the map (what the ratio is taken of).
    pub live_bytes: u64,
    /// The policy.
    pub snapshots_kept: usize,
    /// The policy.
    pub wal_retention_bytes: u64,
    /// The codec.
    pub codec: String,
}

/// A snapshot as `/compaction/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotSummary {
    /// The file.
    pub path: String,
    /// Its applied id.
    pub applied_id: u64,
    /// Keys in it.
    pub key_count: u64,
    /// Its size.
    pub size_bytes: u64,
    /// Bytes before compression.
    pub raw_bytes: u64,
    /// Its codec.
    pub codec: String,
    /// How long writing it took, after the view was copied.
    pub write_ms: u64,
    /// How long copying the map's consistent view took (writes go on meanwhile).
    pub view_ms: u64,
    /// The longest the copy held the map's lock at once: the longest a write waited for it.
    pub longest_lock_hold_us: u64,
}

impl From<&kv_store::SnapshotInfo> for SnapshotSummary {
    fn from(info: &kv_store::SnapshotInfo) -> SnapshotSummary {
        SnapshotSummary {
            path: info.path.display().to_string(),
            applied_id: info.applied_id,
            key_count: info.key_count,
            size_bytes: info.size_bytes,
            raw_bytes: info.raw_bytes,
            codec: info.codec.to_string(),
            write_ms: info.write_duration.as_millis() as u64,
            view_ms: info.view_duration.as_millis() as u64,
            longest_lock_hold_us: info.longest_lock_hold.as_micros() as u64,
        }
    }
}

impl Node {
    /// What `/cluster_status` shows.
    pub fn cluster_status(&self) -> ClusterStatus {
        let now = Instant::now();
        let store = &self.store;
        let last_id = LogView::last_id(&**store);
        let meta = self.meta.get();
        let mut status = ClusterStatus {
            role: "leader",
            node_id: self.node_id,
            leader: None,
            cluster_id: if meta.cluster_id == 0 {
                String::new()
            } else {
                format!("{:016x}", meta.cluster_id)
            },
            epoch: meta.epoch,
            commit_id: self.commit_id(),
            applied_id: store.applied_id(),
            durable_id: store.durable_id(),
            last_id,
            first_id: LogView::first_id(&**store),
            write_quorum: None,
            followers: None,
            isr: None,
            noop_id: None,
            lease_remaining_ms: None,
            deposed_by: None,
            reelection_wanted: *lock(&self.reelection_wanted),
            caught_up: None,
            staleness_ms: self
                .staleness()
                .map(|staleness| staleness.as_millis() as u64),
            committed_truncations: None,
            link: None,
            last_contact_age_ms: None,
            corrupt_batches_refused: None,
            streams: self.streams.counts(),
        };
        match &*lock(&self.role) {
            RoleState::Leader(leader) => {
                status.epoch = leader.epoch();
                status.write_quorum = Some(leader.write_quorum());
                status.followers = Some(leader.followers(now, last_id));
                status.isr = leader.isr().map(|isr| isr.iter().copied().collect());
                status.noop_id = leader.noop_id();
                if status.noop_id.is_some() {
                    status.lease_remaining_ms = Some(leader.lease_until().map_or(0, |until| {
                        until.saturating_duration_since(now).as_millis() as u64
                    }));
                }
                status.deposed_by = leader.deposed_by();
            }
            RoleState::Follower {
                leader_url, state, ..
            } => {
                status.role = if leader_url.is_some() {
                    "follower"
                } else {
                    "none"
                };
                status.leader = leader_url.clone();
                status.caught_up = Some(state.is_caught_up(now, self.lag_limit()));
                status.committed_truncations = Some(state.committed_truncations());
                if state.cluster_id() != 0 {
                    status.cluster_id = format!("{:016x}", state.cluster_id());
                }
                status.epoch = state.leader_epoch();
                status.link = Some(state.link().clone());
                status.last_contact_age_ms = state
                    .last_contact()
                    .map(|at| now.duration_since(at).as_millis() as u64);
                status.corrupt_batches_refused = Some(state.corrupt_batches_refused());
            }
        }
        status
    }

    /// What `/compaction/status` shows.
    pub fn compaction_status(&self) -> CompactionStatus {
        let options = &self.options.compaction;
        let state = lock(&self.compaction);
        let snapshots = self.store.snapshots();
        let newest = snapshots.first().map_or(0, |(id, _)| *id);
        let segments = self.store.segments();
        CompactionStatus {
            snapshots: snapshots
                .iter()
                .map(|(id, path)| (*id, path.display().to_string()))
                .collect(),
            last_snapshot: state.last_snapshot.as_ref().map(SnapshotSummary::from),
            last_purge: state.last_purge.clone(),
            snapshots_written: state.snapshots_written,
            snapshots_installed: state.snapshots_installed,
            snapshots_failed: state.snapshots_failed,
            last_snapshot_failure: state.last_snapshot_failure.clone(),
            wal_first_id: LogView::first_id(&*self.store),
            wal_segments: segments.len(),
            wal_bytes: segments.iter().map(|segment| segment.size_bytes).sum(),
            entries_since_snapshot: self.store.applied_id().saturating_sub(newest),
            snapshot_every_entries: options.snapshot_every_entries,
            snapshot_every_wal_bytes: options.snapshot_every_wal_bytes,
            snapshot_wal_live_ratio: options.snapshot_wal_live_ratio,
            live_bytes: self.store.live_bytes(),
            snapshots_kept: options.snapshots_kept,
            wal_retention_bytes: options.wal_retention_bytes,
            codec: options.codec.to_string(),
        }
    }
}
