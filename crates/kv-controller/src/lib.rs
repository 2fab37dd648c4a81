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
//! - [`LogStore`] and [`StateMachineStore`] are openraft's storage (`storage-v2`): the log
//!   in a kv-wal `Wal`, the vote and log marks in an atomically rewritten file, the snapshot
//!   likewise, all under `<data_dir>/controller/` through kv-wal's file-system seam.
//! - [`Controller`] is the tokio driver around `openraft::Raft`: open/initialize, propose,
//!   heartbeats (with lease grants), the watch channel of applied metadata, membership
//!   helpers, status.
//!
//! Nothing here depends on hyper or kv-http: the network is the [`ControllerTransport`]
//! trait, which kv-http implements over HTTP (an in-memory one for tests is in [`memory`]).
//! The design, the timing budget and what the tests prove: `docs/controller.md`.

mod controller;
mod error;
mod lease;
pub mod log_store;
pub mod logic;
pub mod memory;
pub mod meta;
pub mod network;
pub mod raft_types;
pub mod room;
mod state_file;
pub mod state_machine;
mod timing;

pub use controller::{
    BootstrapSpec, Controller, ControllerOptions, ControllerStatus, ForeignClaim, CONTROLLER_DIR,
};
pub use error::{Error, Result};
pub use log_store::LogStore;
pub use state_machine::StateMachineStore;

pub use lease::Lease;
pub use logic::{
    ControllerLogic, ElectionPolicy, HeartbeatReply, HeartbeatRequest, Position, SessionStatus,
};
pub use meta::{
    ApplyResult, ClusterMeta, Command, Member, NodeId, PendingTransfer, Rejection, VOTERS_MAX,
};
pub use network::{
    ControllerTransport, PreVoteRequest, PreVoteResponse, RaftMessage, RaftReply, RaftRequest,
    TransportError,
};
pub use timing::Timing;
