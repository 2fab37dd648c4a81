//! Snapshot transfer: a follower behind the leader's compacted log downloads the leader's newest
//! snapshot in checked chunks (resuming a broken download), checks it whole and installs it;
//! the leader serves its snapshots in chunks.

use super::{lock, Node};
use crate::protocol::SnapshotMeta;
use crate::transport::Transport;

impl Node {
    /// Downloads the leader's newest snapshot into `incoming-{id}.part` in the snapshot
    /// directory (resuming a partial download of the same snapshot), checks it whole, moves it
    /// into place and installs it. Per-chunk timeouts bound the transfer; the install is not
    /// timed.
    pub(super) async fn download_and_install<T: Transport>(
        &self,
        transport: &T,
    ) -> Result<u64, String> {
        let options = &self.options.compaction;
        let dir = self
            .store
            .snapshot_dir()
            .ok_or("snapshots are off on this follower (no snapshot directory)")?
            .to_owned();
        let meta = transport
            .snapshot_meta(options.snapshot_chunk_timeout)
            .await?
            .ok_or("the leader has compacted its log but offers no snapshot")?;
        let fs = self.store.file_system().clone();
        kv_wal::durable::create_dir_all_durable(&*fs, &dir).map_err(|error| error.to_string())?;
        let part_name = format!("incoming-{:020}.part", meta.applied_id);
        // Older partial downloads are of snapshots the leader no longer offers.
        for name in fs.list_dir(&dir).unwrap_or_default() {
            if name.starts_with("incoming-") && name != part_name {
                let _ = kv_wal::durable::remove_file_if_exists(&*fs, &dir.join(name));
            }
        }
        let mut part = kv_wal::durable::PartialFile::open_or_create(&*fs, &dir, &part_name)
            .map_err(|error| error.to_string())?;
        if part.len_bytes() > meta.size_bytes {
            part.clear().map_err(|error| error.to_string())?;
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
                return Err(format!(
                    "snapshot chunk at {offset}: {} bytes for {want} asked",
                    chunk.len()
                ));
            }
            part.append(&chunk)
                .map_err(|error| format!("writing the snapshot: {error}"))?;
        }
        part.sync()
            .map_err(|error| format!("syncing the snapshot: {error}"))?;
        let part_path = part.path().to_owned();
        drop(part);
        let store = self.store.clone();
        let final_name = kv_store::snapshot::snapshot_file_name(meta.applied_id);
        tokio::task::spawn_blocking(move || -> Result<u64, String> {
            let fs = store.file_system().clone();
            if let Err(error) = kv_store::snapshot::verify_snapshot(&*fs, &part_path) {
                let _ = kv_wal::durable::remove_file_if_exists(&*fs, &part_path);
                return Err(format!(
                    "the downloaded snapshot is damaged ({error}); downloading again"
                ));
            }
            let final_path = kv_wal::durable::rename_durable(&*fs, &dir, &part_name, &final_name)
                .map_err(|error| error.to_string())?;
            store
                .install_snapshot(&final_path)
                .map_err(|error| format!("cannot install the snapshot: {error}"))
        })
        .await
        .map_err(|error| error.to_string())?
        .inspect(|_| lock(&self.compaction).snapshots_installed += 1)
    }

    /// The newest snapshot this node offers to followers.
    pub fn snapshot_meta(&self) -> Option<SnapshotMeta> {
        let (applied_id, path) = self.store.snapshots().into_iter().next()?;
        let size_bytes = kv_wal::durable::FileReader::open(&**self.store.file_system(), &path)
            .ok()?
            .len_bytes()
            .ok()?;
        Some(SnapshotMeta {
            applied_id,
            size_bytes,
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
            file.seek_to(offset);
            let mut chunk = Vec::with_capacity(len as usize);
            file.take(u64::from(len)).read_to_end(&mut chunk)?;
            Ok(chunk)
        };
        Some(read())
    }
}
