//! kv-replication: followers pull the leader's log.
//!
//! A follower asks the leader for entries from its next id; the request carries what the
//! follower holds durably, so **the fetch is the acknowledgement** (Kafka's and KRaft's
//! design), and an idle fetch, held by the leader up to a wait time, is the heartbeat in both
//! directions. Entries travel as the leader's WAL frames, CRCs included; the follower checks
//! every CRC and the continuity of ids before appending them to its own WAL and applies only
//! what the leader says is committed.
//!
//! # Model
//!
//! - [`protocol`]: the messages and their binary encoding (version 2: every fetch carries the
//!   follower's node id and the newest leader epoch it knows; every answer the sender's epoch).
//! - [`LeaderState`] (no I/O): checks each fetch against the leader's log (cluster id, the
//!   follower's epoch — a newer one deposes this leader —, and the epoch of the follower's last
//!   entry: a mismatch means the logs diverged and the follower is told where to cut, also
//!   before a snapshot), records each follower's durable id, and derives the **commit id**.
//!   Elected by the controller, it counts only the ISR's durable ids, only from its epoch's
//!   no-op on, and acknowledges only under the controller's lease; legacy, the
//!   `write_quorum`-th highest durable id, counting the leader, never above the leader's own.
//! - [`FollowerState`] (no I/O): builds the next fetch from the local log, turns answers into
//!   [`Step`]s — append, apply, truncate, install a snapshot, retry with backoff and jitter,
//!   or stop for an operator (another cluster; legacy: a divergence below the commit id) —,
//!   refuses answers from an epoch older than one it knows, and tracks whether it is caught
//!   up and how stale its reads may be.
//! - [`view`] (no I/O): the controller's [`ClusterView`] and what a node does with it.
//! - [`Node`]: the tokio driver. [`Node::open_controlled`] and
//!   [`Node::apply_cluster_view`] give it the controller's role (the legacy
//!   [`Node::open_leader`]/[`Node::open_follower`] fix one at open); the leader's
//!   [`Node::handle_fetch`] long-polls and [`Node::write`] waits for [`Acks`];
//!   [`Node::run_replication`] runs the fetch loop over a [`Transport`] (HTTP in kv-http; in
//!   memory in tests) to whichever leader the node follows.
//! - [`NodeMeta`]: the cluster id and the highest epoch led or followed, on disk. Entries
//!   carry the epoch of the leader that wrote them (kv-store's entry format).
//!
//! - [`compaction`]: when to snapshot and how far the log may be purged — never past what a
//!   live follower needs, within a retention limit; beyond it that follower installs the
//!   leader's snapshot ([`Step::InstallSnapshot`]: a chunked, resumable download, checked
//!   whole, installed atomically, only from the leader of the epoch that asked).
//!
//! Nothing here depends on hyper; the protocol logic depends on no runtime at all.

pub mod compaction;
mod error;
pub mod follower;
pub mod frames;
pub mod leader;
mod log_view;
mod meta;
mod node;
pub mod protocol;
pub mod stream;
mod transport;
pub mod view;

pub use compaction::{
    CompactionControl, CompactionOptions, CompactionRun, PurgeReport, RetentionNote,
    COMPACTION_RUNS_KEPT,
};
pub use error::{Error, Result};
pub use follower::{FollowerOptions, FollowerState, LinkState, Step};
pub use frames::{check_frames, chunk_crc, describe_frames, last_frame_id, FrameSummary};
pub use leader::{
    Acks, FetchDecision, FollowerHealth, FollowerStatus, IsrChange, LeaderOptions, LeaderState,
    Membership, HUNG_UP_GRACE, LAG_LIMIT_DEFAULT,
};
pub use log_view::LogView;
pub use meta::{NodeMeta, META_FILE_NAME};
pub use node::control::Position;
pub use node::leading::{Written, FETCH_WAIT_MAX};
pub use node::maintenance::{
    MaintenanceOptions, MAINTENANCE_CHECK_INTERVAL, PERSIST_PROGRESS_INTERVAL, SNAPSHOT_RETRY_MAX,
    SNAPSHOT_RETRY_MIN,
};
pub use node::status::{ClusterStatus, CompactionStatus, SnapshotSummary};
pub use node::streaming::{LeaderStream, StreamCounts, StreamStart};
pub use node::{Node, NodeOptions, Role};
pub use protocol::{DecodeError, FetchRequest, FetchResponse, SnapshotMeta};
pub use transport::{AckSink, StreamLink, Transport, TransportError, TransportErrorKind};
pub use view::{ClusterView, LeaderRef};
