//! The follower's corrupting fault (a `fault-injection` build only):
//! `KVD_FAULT_CORRUPT_FETCH_EVERY=N` flips a bit in the frames of every Nth fetch answer a
//! follower receives, to prove it refuses damaged entries and fetches them again;
//! `KVD_FAULT_FETCH_BLOCK_FILE=PATH` fails every fetch while a file exists at PATH (a follower
//! alive but copying nothing, for the ISR and divergence tests).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use kv_http::HttpTransport;
use kv_replication::{
    FetchRequest, FetchResponse, SnapshotMeta, Transport, TransportError, TransportErrorKind,
};

use super::injection::{FAULT_CORRUPT_FETCH_EVERY_ENV, FAULT_FETCH_BLOCK_FILE_ENV};

/// The follower's transport: `inner`, wrapped so that it corrupts fetched batches when
/// `KVD_FAULT_CORRUPT_FETCH_EVERY` asks for it (unset or 0: never).
pub fn follower_transport(inner: HttpTransport) -> anyhow::Result<CorruptingTransport> {
    Ok(CorruptingTransport {
        inner,
        corrupt_every: corrupt_fetch_every()?,
        fetches: AtomicU64::new(0),
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
    fetches: AtomicU64,
    block_file: Option<PathBuf>,
}

impl CorruptingTransport {
    /// Fails while the block file exists.
    fn blocked(&self) -> Result<(), TransportError> {
        match &self.block_file {
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
        if self.corrupt_every > 0 {
            if let FetchResponse::Entries { frames, .. } = &mut response {
                let number = self.fetches.fetch_add(1, Ordering::Relaxed) + 1;
                if !frames.is_empty() && number.is_multiple_of(self.corrupt_every) {
                    let middle = frames.len() / 2;
                    frames[middle] ^= 0x08;
                }
            }
        }
        Ok(response)
    }
}
