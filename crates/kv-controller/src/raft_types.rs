//! openraft's type configuration for the controller: the log's application data is a
//! [`Command`], its result an [`ApplyResult`], nodes are `u64` ids with their HTTP base URL.

use std::io::Cursor;

use crate::meta::{ApplyResult, Command};

openraft::declare_raft_types!(
    /// The controller's Raft types.
    pub TypeConfig:
        D = Command,
        R = ApplyResult,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A Raft log id of the controller.
pub type LogId = openraft::LogId<u64>;
/// A Raft vote of the controller.
pub type Vote = openraft::Vote<u64>;
/// A controller log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// A storage error as openraft wants it.
pub type StorageError = openraft::StorageError<u64>;
/// The controller's Raft instance.
pub type Raft = openraft::Raft<TypeConfig>;
/// The controller's Raft membership, with each node's URL in `BasicNode::addr`.
pub type StoredMembership = openraft::StoredMembership<u64, openraft::BasicNode>;
/// A snapshot's description.
pub type SnapshotMeta = openraft::SnapshotMeta<u64, openraft::BasicNode>;
