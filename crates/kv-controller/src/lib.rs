//! kv-controller: the cluster controller — a Raft metadata quorum beside the pull data plane.
//!
//! kvd replicates its data the way Kafka does: followers pull the leader's log, and the fetch
//! is the acknowledgement (`kv-replication`). Who leads, in which epoch, and which followers
//! are in sync is decided here, by a small Raft quorum of controllers (openraft 0.9), as
//! Kafka's KRaft controller does: every kvd node runs one (voters up to five, the rest
//! learners), and the active controller is the Raft leader.
//!
//! # Model
//!
//! - [`ClusterMeta`] is the replicated state (members, data leader, leader epoch, ISR, write
//!   quorum); [`Command`]s change it, validated deterministically in [`ClusterMeta::apply`]
//!   (epoch-conditional elections, KIP-841 ISR changes, a two-step planned transfer).
//! - [`ControllerLogic`] (no I/O) is the active controller's brain: data nodes' sessions,
//!   fencing an expired leader, electing the most advanced live ISR member, lease grants.
//!   [`Lease`] (no I/O) is the data leader's side: when it may acknowledge writes.
//! - [`Timing`] holds every clock and checks the relations between them (lease < session).
//!
//! Nothing here depends on hyper or kv-http; the Raft storage and network come next.

mod lease;
pub mod logic;
pub mod meta;
mod timing;

pub use lease::Lease;
pub use logic::{
    ControllerLogic, ElectionPolicy, HeartbeatReply, HeartbeatRequest, Position, SessionStatus,
};
pub use meta::{
    ApplyResult, ClusterMeta, Command, Member, NodeId, PendingTransfer, Rejection, VOTERS_MAX,
};
pub use timing::Timing;
