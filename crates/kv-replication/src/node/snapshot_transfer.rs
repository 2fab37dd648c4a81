//! Snapshot transfer: a follower behind the leader's compacted log downloads the leader's newest
//! snapshot in checked chunks (resuming a broken download), checks it whole and installs it;
//! the leader serves its snapshots in chunks.

use std::path::Path;

use kv_store::Store;

use super::{lock, Node};
use crate::error::{Error, Result};
use crate::protocol::SnapshotMeta;
use crate::transport::Transport;

impl Node {
    /// Downloads the leader's newest snapshot into `incoming-{id}.part` in the snapshot
    /// directory (resuming a partial download of the same snapshot), checks it whole, moves it
    /// into place and installs it; returns its applied id. Only a snapshot offered by the
    /// leader of `leader_epoch` (the epoch whose leader asked for it) is taken. Per-chunk
    /// timeouts bound the transfer; the install is not timed.
    pub(super) async fn download_and_install<T: Transport>(
        &self,
        transport: &T,
        leader_epoch: u64,
    ) -> Result<u64> {
        let dir = self
            .store
            .snapshot_dir()
            .ok_or(Error::SnapshotsOff)?
            .to_owned();
        let meta = transport
            .snapshot_meta(self.options.compaction.snapshot_chunk_timeout)
            .await?
            .ok_or(Error::NoSnapshotOffered)?;
        if meta.leader_epoch != leader_epoch {
            // Another node answers at that address now (a failover): its snapshot is not the
            // one the leader of `leader_epoch` meant, and may hold another history.
            return Err(Error::SnapshotOfAnotherEpoch {
                offered_by: meta.leader_epoch,
                asked_by: leader_epoch,
            });
        }
        let part_name = self.download(transport, &dir, meta).await?;
        let store = self.store.clone();
        let keep = self.options.compaction.snapshots_kept;
        let applied_id = tokio::task::spawn_blocking(move || {
            install_download(&store, &dir, &part_name, meta.applied_id, keep)
        })
        .await
        .map_err(|error| {
            Error::Background(format!("the snapshot install task failed: {error}"))
        })??;
        lock(&self.compaction).snapshots_installed += 1;
        Ok(applied_id)
    }

    /// Downloads snapshot `meta` into its partial file in `dir` (resuming what an earlier
    /// download left) and syncs it; returns the partial file's name.
    async fn download<T: Transport>(
        &self,
        transport: &T,
        dir: &Path,
        meta: SnapshotMeta,
    ) -> Result<String> {
        let options = &self.options.compaction;
        let fs = self.store.file_system().clone();
        let file_error = |doing| move |source| Error::SnapshotFile { doing, source };
        kv_wal::durable::create_dir_all_durable(&*fs, dir)
            .map_err(file_error("creating the snapshot directory"))?;
        let part_name = format!("incoming-{:020}.part", meta.applied_id);
        // Older partial downloads are of snapshots the leader no longer offers.
        for name in fs.list_dir(dir).unwrap_or_default() {
            if name.starts_with("incoming-") && name != part_name {
                let _ = kv_wal::durable::remove_file_if_exists(&*fs, &dir.join(name));
            }
        }
        let mut part = kv_wal::durable::PartialFile::open_or_create(&*fs, dir, &part_name)
            .map_err(file_error("opening the snapshot download"))?;
        if part.len_bytes() > meta.size_bytes {
            part.clear()
                .map_err(file_error("clearing the snapshot download"))?;
        }
        if part.len_bytes() > 0 {
            tracing::info!(
                offset = part.len_bytes(),
                size_bytes = meta.size_bytes,
                "resuming a snapshot download"
            );
        }
        while part.len_bytes() < meta.size_bytes {
            let offset = part.len_bytes();
            let want =
                (meta.size_bytes - offset).min(u64::from(options.snapshot_chunk_bytes)) as u32;
            let chunk = transport
                .snapshot_chunk(
                    meta.applied_id,
                    offset,
                    want,
                    options.snapshot_chunk_timeout,
                )
                .await?;
            if chunk.is_empty() || chunk.len() > want as usize {
                return Err(Error::SnapshotChunk {
                    offset,
                    received_bytes: chunk.len(),
                    asked_bytes: want,
                });
            }
            part.append(&chunk)
                .map_err(file_error("writing the snapshot"))?;
        }
        part.sync().map_err(file_error("syncing the snapshot"))?;
        Ok(part_name)
    }

    /// The newest snapshot this node offers to followers, with the epoch it leads (0: it
    /// does not lead).
    pub fn snapshot_meta(&self) -> Option<SnapshotMeta> {
        let leader_epoch = match &*lock(&self.role) {
            super::RoleState::Leader(leader) => leader.epoch(),
            super::RoleState::Follower { .. } => 0,
        };
        let (applied_id, path) = self.store.snapshots().into_iter().next()?;
        let size_bytes = kv_wal::durable::FileReader::open(&**self.store.file_system(), &path)
            .ok()?
            .len_bytes()
            .ok()?;
        Some(SnapshotMeta {
            applied_id,
            size_bytes,
            leader_epoch,
        })
    }

    /// Reads `len` bytes of snapshot `applied_id` from `offset`; `None` when this node no longer
    /// has that snapshot.
    pub fn snapshot_chunk(
        &self,
        applied_id: u64,
        offset: u64,
        len: u32,
    ) -> Option<std::io::Result<Vec<u8>>> {
        let (_, path) = self
            .store
            .snapshots()
            .into_iter()
            .find(|(id, _)| *id == applied_id)?;
        let read = || -> std::io::Result<Vec<u8>> {
            use std::io::Read;
            let mut file = kv_wal::durable::FileReader::open(&**self.store.file_system(), &path)
                .map_err(std::io::Error::other)?;
            // Past the end the chunk is empty, read or not: a read there near 2^63 would ask
            // the kernel for an end offset past the largest file offset (EINVAL, a 500).
            let remaining = file.len_bytes()?.saturating_sub(offset);
            if remaining == 0 {
                return Ok(Vec::new());
            }
            file.seek_to(offset);
            let take = remaining.min(u64::from(len));
            let mut chunk = Vec::with_capacity(take as usize);
            file.take(take).read_to_end(&mut chunk)?;
            Ok(chunk)
        };
        Some(read())
    }
}

/// Checks the downloaded snapshot `part_name` in `dir` whole (a damaged one is deleted, to be
/// downloaded again), moves it into place and installs it, keeping the newest `keep`
/// snapshots. Blocking.
fn install_download(
    store: &Store,
    dir: &Path,
    part_name: &str,
    applied_id: u64,
    keep: usize,
) -> Result<u64> {
    let fs = store.file_system().clone();
    let part_path = dir.join(part_name);
    if let Err(source) = kv_store::snapshot::verify_snapshot(&*fs, &part_path) {
        let _ = kv_wal::durable::remove_file_if_exists(&*fs, &part_path);
        return Err(Error::SnapshotDamaged { source });
    }
    let final_name = kv_store::snapshot::snapshot_file_name(applied_id);
    let final_path =
        kv_wal::durable::rename_durable(&*fs, dir, part_name, &final_name).map_err(|source| {
            Error::SnapshotFile {
                doing: "moving the snapshot into place",
                source,
            }
        })?;
    store
        .install_snapshot(&final_path, keep)
        .map_err(|source| Error::SnapshotInstall { source })
}
