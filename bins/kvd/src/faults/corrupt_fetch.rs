//! The follower's corrupting fault (a `fault-injection` build only):
//! `KVD_FAULT_CORRUPT_FETCH_EVERY=N` flips a bit in the frames of every Nth fetch answer or
//! stream push a follower receives, to prove it refuses damaged entries and fetches them
//! again; `KVD_FAULT_FETCH_BLOCK_FILE=PATH` fails every fetch, and breaks every stream, while a
//! file exists at PATH (a follower alive but copying nothing, for the ISR and divergence
//! tests).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use kv_http::HttpTransport;
use kv_replication::{
    FetchRequest, FetchResponse, SnapshotMeta, StreamLink, Transport, TransportError,
    TransportErrorKind,
};
use tokio::sync::mpsc;

use super::injection::{FAULT_CORRUPT_FETCH_EVERY_ENV, FAULT_FETCH_BLOCK_FILE_ENV};

/// The follower's transport: `inner`, wrapped so that it corrupts fetched batches when
/// `KVD_FAULT_CORRUPT_FETCH_EVERY` asks for it (unset or 0: never).
pub fn follower_transport(inner: HttpTransport) -> anyhow::Result<CorruptingTransport> {
    Ok(CorruptingTransport {
        inner,
        corrupt_every: corrupt_fetch_every()?,
        fetches: Arc::new(AtomicU64::new(0)),
        block_file: std::env::var_os(FAULT_FETCH_BLOCK_FILE_ENV).map(PathBuf::from),
    })
}

fn corrupt_fetch_every() -> anyhow::Result<u64> {
    match std::env::var(FAULT_CORRUPT_FETCH_EVERY_ENV) {
        Err(_) => Ok(0),
        Ok(text) => {
            let every = text.parse::<u64>().with_context(|| {
                format!("{FAULT_CORRUPT_FETCH_EVERY_ENV}={text:?} is not a number")
            })?;
            tracing::warn!(every, "test fault: corrupting fetched batches");
            Ok(every)
        }
    }
}

/// The follower's transport, with the corrupting fault when asked for.
pub struct CorruptingTransport {
    inner: HttpTransport,
    corrupt_every: u64,
    fetches: Arc<AtomicU64>,
    block_file: Option<PathBuf>,
}

impl CorruptingTransport {
    /// Fails while the block file exists.
    fn blocked(&self) -> Result<(), TransportError> {
        blocked(self.block_file.as_deref())
    }
}

/// Fails while `block_file` exists.
fn blocked(block_file: Option<&Path>) -> Result<(), TransportError> {
    match block_file {
        Some(path) if path.exists() => Err(TransportError::new(
            TransportErrorKind::Connect,
            format!(
                "test fault: fetches blocked while {} exists",
                path.display()
            ),
        )),
        _ => Ok(()),
    }
}

/// Flips a bit in the middle of `response`'s frames if it is the `every`-th answer with
/// frames counted by `count` (0: never).
fn corrupt(response: &mut FetchResponse, every: u64, count: &AtomicU64) {
    if every == 0 {
        return;
    }
    if let FetchResponse::Entries { frames, .. } = response {
        let number = count.fetch_add(1, Ordering::Relaxed) + 1;
        if !frames.is_empty() && number.is_multiple_of(every) {
            let middle = frames.len() / 2;
            frames[middle] ^= 0x08;
        }
    }
}

impl Transport for CorruptingTransport {
    async fn snapshot_meta(
        &self,
        timeout: Duration,
    ) -> Result<Option<SnapshotMeta>, TransportError> {
        self.blocked()?;
        self.inner.snapshot_meta(timeout).await
    }

    async fn snapshot_chunk(
        &self,
        applied_id: u64,
        offset: u64,
        len: u32,
        timeout: Duration,
    ) -> Result<Vec<u8>, TransportError> {
        self.blocked()?;
        self.inner
            .snapshot_chunk(applied_id, offset, len, timeout)
            .await
    }

    async fn fetch(
        &self,
        request: &FetchRequest,
        timeout: Duration,
    ) -> Result<FetchResponse, TransportError> {
        self.blocked()?;
        let mut response = self.inner.fetch(request, timeout).await?;
        corrupt(&mut response, self.corrupt_every, &self.fetches);
        Ok(response)
    }

    async fn open_stream(
        &self,
        opening: &FetchRequest,
        timeout: Duration,
    ) -> Result<Option<StreamLink>, TransportError> {
        self.blocked()?;
        let Some(StreamLink {
            to_leader,
            mut from_leader,
        }) = self.inner.open_stream(opening, timeout).await?
        else {
            return Ok(None);
        };
        let (pushes, received) = mpsc::channel(8);
        let block_file = self.block_file.clone();
        let every = self.corrupt_every;
        let count = self.fetches.clone();
        tokio::spawn(async move {
            while let Some(mut message) = from_leader.recv().await {
                if let Err(error) = blocked(block_file.as_deref()) {
                    let _ = pushes.send(Err(error)).await;
                    return;
                }
                if let Ok((_, response)) = &mut message {
                    corrupt(response, every, &count);
                }
                if pushes.send(message).await.is_err() {
                    return;
                }
            }
        });
        Ok(Some(StreamLink {
            to_leader,
            from_leader: received,
        }))
    }
}
