//! How a follower reaches its leader: the [`Transport`] trait. The HTTP implementation lives in
//! kv-http (`HttpTransport`); the tests use in-memory ones. kv-replication never sees a socket.

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
    ) -> impl Future<Output = Result<FetchResponse, String>> + Send;
    /// Asks which snapshot the leader offers (`None`: it has none).
    fn snapshot_meta(
        &self,
        timeout: Duration,
    ) -> impl Future<Output = Result<Option<SnapshotMeta>, String>> + Send;
    /// Downloads `len` bytes of snapshot `applied_id` from `offset`, checked in transit (the
    /// HTTP transport checks a CRC-32C per chunk). Fewer bytes only at the end of the file.
    fn snapshot_chunk(
        &self,
        applied_id: u64,
        offset: u64,
        len: u32,
        timeout: Duration,
    ) -> impl Future<Output = Result<Vec<u8>, String>> + Send;
}
