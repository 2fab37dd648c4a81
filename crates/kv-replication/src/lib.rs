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
//! - [`protocol`]: the messages and their binary encoding.
//! - [`LeaderState`] (no I/O): checks each fetch against the leader's log (cluster id,
//!   compaction point, the epoch of the follower's last entry — a mismatch means the logs
//!   diverged and the follower is told where to cut), records each follower's durable id,
//!   and derives the **commit id**: the `write_quorum`-th highest durable id, counting the
//!   leader, never above the leader's own.
//! - [`FollowerState`] (no I/O): builds the next fetch from the local log, turns answers into
//!   [`Step`]s — append, apply, truncate, retry with backoff and jitter, or stop for an
//!   operator (another cluster; a divergence below the commit id).
//! - [`Node`]: the tokio driver. The leader's [`Node::handle_fetch`] long-polls and
//!   [`Node::write`] waits for [`Acks`]; [`Node::run_follower`] runs the loop over a
//!   [`Transport`] (HTTP in kv-http; in memory in tests).
//! - [`NodeMeta`]: the cluster id and epoch on disk. A node starting as leader bumps the
//!   epoch; entries carry the epoch of the leader that wrote them (kv-store's entry format).
//!
//! - [`compaction`]: when to snapshot and how far the log may be purged — never past what a
//!   live follower needs, within a retention limit; beyond it that follower installs the
//!   leader's snapshot ([`Step::InstallSnapshot`]: a chunked, resumable download, checked
//!   whole, installed atomically).
//!
//! Nothing here depends on hyper; the protocol logic depends on no runtime at all.

pub mod compaction;
mod error;
pub mod follower;
pub mod leader;
mod log_view;
mod meta;
mod node;
pub mod protocol;
mod transport;

pub use compaction::{
    CompactionControl, CompactionOptions, CompactionRun, PurgeReport, RetentionNote,
    COMPACTION_RUNS_KEPT,
};
pub use error::{Error, Result};
pub use follower::{check_frames, FollowerOptions, FollowerState, LinkState, Step};
pub use leader::{FetchDecision, FollowerHealth, FollowerStatus, LeaderOptions, LeaderState};
pub use log_view::LogView;
pub use meta::{NodeMeta, META_FILE_NAME};
pub use node::leading::{Acks, Written, FETCH_WAIT_MAX};
pub use node::maintenance::{
    MaintenanceOptions, MAINTENANCE_CHECK_INTERVAL, PERSIST_PROGRESS_INTERVAL,
};
pub use node::status::{ClusterStatus, CompactionStatus, SnapshotSummary};
pub use node::{Node, NodeOptions, Role};
pub use protocol::{DecodeError, FetchRequest, FetchResponse, SnapshotMeta};
pub use transport::{Transport, TransportError, TransportErrorKind};
