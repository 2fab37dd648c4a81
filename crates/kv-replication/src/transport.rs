//! How a follower reaches its leader: the [`Transport`] trait and its [`TransportError`]. The
//! HTTP implementation lives in kv-http (`HttpTransport`); the tests use in-memory ones.
//! kv-replication never sees a socket.

use std::future::Future;
use std::time::Duration;

use crate::protocol::{FetchRequest, FetchResponse, SnapshotMeta};

/// How a follower reaches its leader.
pub trait Transport: Send + Sync + 'static {
    /// Sends one fetch and returns the answer, or why there is none.
    fn fetch(
        &self,
        request: &FetchRequest,
        timeout: Duration,
    ) -> impl Future<Output = Result<FetchResponse, TransportError>> + Send;
    /// Asks which snapshot the leader offers (`None`: it has none).
    fn snapshot_meta(
        &self,
        timeout: Duration,
    ) -> impl Future<Output = Result<Option<SnapshotMeta>, TransportError>> + Send;
    /// Downloads `len` bytes of snapshot `applied_id` from `offset`, checked in transit (the
    /// HTTP transport checks a CRC-32C per chunk). Fewer bytes only at the end of the file.
    fn snapshot_chunk(
        &self,
        applied_id: u64,
        offset: u64,
        len: u32,
        timeout: Duration,
    ) -> impl Future<Output = Result<Vec<u8>, TransportError>> + Send;
    /// Opens a replication stream (see [`crate::stream`]) with `opening` as message 1, within
    /// `timeout`. `Ok(None)`: this transport, or the leader, has no streams — the follower
    /// fetches instead (the default).
    fn open_stream(
        &self,
        opening: &FetchRequest,
        timeout: Duration,
    ) -> impl Future<Output = Result<Option<StreamLink>, TransportError>> + Send {
        let _ = (opening, timeout);
        async { Ok(None) }
    }
}

/// Where a follower's stream messages to its leader go: each sent in order, without waiting.
/// kv-http's writes each message to the socket at once, from the caller's own task, and queues
/// it only behind what the socket has not taken yet: an acknowledgement then wakes no task (a
/// woken writer task could wait in the worker's LIFO slot, which no other tokio worker steals,
/// behind the session's next `fdatasync`: one follower fsync late).
pub trait AckSink: Send + Sync + std::fmt::Debug {
    /// Sends message `seq` (an acknowledgement); false once the sending side is closed.
    fn send(&self, seq: u64, ack: &FetchRequest) -> bool;
}

/// An open replication stream, as the follower's driver sees it: the transport moves the
/// messages between these and the connection, and closes the connection when the link is
/// dropped.
#[derive(Debug)]
pub struct StreamLink {
    /// Messages to the leader: `(seq, acknowledgement)`.
    pub to_leader: Box<dyn AckSink>,
    /// The leader's pushes, `(echo, answer)`, in order, or why the stream broke; closed when
    /// the stream ends.
    pub from_leader: tokio::sync::mpsc::Receiver<Result<(u64, FetchResponse), TransportError>>,
}

/// Why a transport call has no answer: what kind of failure, and what happened in words.
/// Every kind is retried by the follower with backoff.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct TransportError {
    /// What kind of failure.
    pub kind: TransportErrorKind,
    /// What happened, for the log and `/cluster_status`.
    pub detail: String,
}

/// Kinds of [`TransportError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportErrorKind {
    /// The leader's address is not one the transport can use.
    Address,
    /// The leader could not be reached, or the connection broke.
    Connect,
    /// No answer within the timeout.
    Timeout,
    /// The leader answered with an error status.
    Status,
    /// The answer could not be read or decoded.
    Decode,
    /// The answer arrived damaged (a checksum in transit did not match).
    Corrupt,
}

impl TransportError {
    /// An error of `kind`.
    pub fn new(kind: TransportErrorKind, detail: impl Into<String>) -> TransportError {
        TransportError {
            kind,
            detail: detail.into(),
        }
    }
}
