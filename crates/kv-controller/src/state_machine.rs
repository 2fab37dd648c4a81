//! The state machine: [`ClusterMeta`] in memory, applied from the Raft log, with its snapshot
//! durable in `<data_dir>/controller/snapshot.json` (written atomically through the file
//! seam). openraft's [`RaftStateMachine`].
//!
//! The state itself is not persisted on every apply: at open it is the snapshot's, and
//! openraft re-applies the log from the snapshot up to the committed id it saved. Every
//! applied batch is published on a [`watch`] channel, which the data plane subscribes to.

use std::collections::BTreeSet;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use kv_wal::durable;
use kv_wal::fs::FileSystem;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, RaftSnapshotBuilder, StorageIOError};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::meta::{ApplyResult, ClusterMeta, NodeId};
use crate::raft_types::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};
use crate::room::Room;

/// The snapshot file's name.
pub const SNAPSHOT_FILE: &str = "snapshot.json";
/// The format written: format 1 sealed with its CRC-32C (`state_file.rs`); format 1 files are
/// still read.
const SNAPSHOT_FORMAT: u32 = 2;

/// The snapshot file: openraft's description and the metadata at its last log id.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SnapshotFile {
    format: u32,
    meta: SnapshotMeta,
    state: ClusterMeta,
}

#[derive(Debug)]
struct Applied {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    meta: ClusterMeta,
    snapshot: Option<SnapshotFile>,
    snapshots_built: u64,
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    fs: Arc<dyn FileSystem>,
    applied: Mutex<Applied>,
    published: watch::Sender<ClusterMeta>,
    room: Room,
}

/// The controller's state machine (clones share it; a clone is also its snapshot builder).
#[derive(Debug, Clone)]
pub struct StateMachineStore {
    shared: Arc<Shared>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl StateMachineStore {
    /// Opens the state machine in `dir` (the controller directory): the snapshot's state, or
    /// an empty one.
    pub fn open(fs: Arc<dyn FileSystem>, dir: &Path) -> Result<StateMachineStore> {
        fs.create_dir_all(dir)
            .map_err(|error| Error::io(dir, error))?;
        let path = dir.join(SNAPSHOT_FILE);
        let snapshot = match durable::read_file(&*fs, &path)? {
            Some(bytes) => Some(crate::state_file::decode(
                &path,
                &bytes,
                SNAPSHOT_FORMAT,
                |file: &mut SnapshotFile| &mut file.format,
            )?),
            None => None,
        };
        let applied = match &snapshot {
            Some(file) => Applied {
                last_applied: file.meta.last_log_id,
                membership: file.meta.last_membership.clone(),
                meta: file.state.clone(),
                snapshot: snapshot.clone(),
                snapshots_built: 0,
            },
            None => Applied {
                last_applied: None,
                membership: StoredMembership::default(),
                meta: ClusterMeta::default(),
                snapshot: None,
                snapshots_built: 0,
            },
        };
        let (published, _) = watch::channel(applied.meta.clone());
        Ok(StateMachineStore {
            shared: Arc::new(Shared {
                dir: dir.to_owned(),
                fs,
                applied: Mutex::new(applied),
                published,
                room: Room::default(),
            }),
        })
    }

    /// A receiver of every applied [`ClusterMeta`].
    pub fn subscribe(&self) -> watch::Receiver<ClusterMeta> {
        self.shared.published.subscribe()
    }

    /// The metadata as applied now.
    pub fn meta(&self) -> ClusterMeta {
        lock(&self.shared.applied).meta.clone()
    }

    /// The controller voters of the membership applied now.
    pub fn voters(&self) -> BTreeSet<NodeId> {
        lock(&self.shared.applied)
            .membership
            .membership()
            .voter_ids()
            .collect()
    }

    /// The last applied log id.
    pub fn last_applied(&self) -> Option<LogId> {
        lock(&self.shared.applied).last_applied
    }

    /// Whether a snapshot is stored.
    pub fn has_snapshot(&self) -> bool {
        lock(&self.shared.applied).snapshot.is_some()
    }

    /// The wait for room of this store's writes (a full disk: [`crate::room`]).
    pub fn room(&self) -> &Room {
        &self.shared.room
    }

    /// Writes the snapshot file atomically, waiting for room on a full disk.
    fn write_snapshot(&self, file: &SnapshotFile) -> Result<()> {
        let bytes = crate::state_file::encode(file)?;
        self.shared.room.retry("the controller's snapshot", || {
            Ok(durable::write_file_atomic(
                &*self.shared.fs,
                &self.shared.dir,
                SNAPSHOT_FILE,
                &bytes,
            )?)
        })
    }

    async fn write_snapshot_off_thread(&self, file: &SnapshotFile) -> Result<(), StorageError> {
        let store = self.clone();
        let written = file.clone();
        tokio::task::spawn_blocking(move || store.write_snapshot(&written))
            .await
            .map_err(|error| snapshot_error(Error::Raft(error.to_string())))?
            .map_err(snapshot_error)
    }

    fn snapshot_of(file: &SnapshotFile) -> Result<Snapshot<TypeConfig>> {
        let data =
            serde_json::to_vec(&file.state).map_err(|error| Error::Raft(error.to_string()))?;
        Ok(Snapshot {
            meta: file.meta.clone(),
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

fn snapshot_error(error: Error) -> StorageError {
    StorageIOError::write_snapshot(None, &error).into()
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let file = {
            let mut applied = lock(&self.shared.applied);
            applied.snapshots_built += 1;
            let snapshot_id = match applied.last_applied {
                Some(log_id) => format!(
                    "{}-{}-{}",
                    log_id.leader_id, log_id.index, applied.snapshots_built
                ),
                None => format!("empty-{}", applied.snapshots_built),
            };
            SnapshotFile {
                format: SNAPSHOT_FORMAT,
                meta: SnapshotMeta {
                    last_log_id: applied.last_applied,
                    last_membership: applied.membership.clone(),
                    snapshot_id,
                },
                state: applied.meta.clone(),
            }
        };
        self.write_snapshot_off_thread(&file).await?;
        let snapshot = StateMachineStore::snapshot_of(&file).map_err(snapshot_error)?;
        lock(&self.shared.applied).snapshot = Some(file);
        Ok(snapshot)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let applied = lock(&self.shared.applied);
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ApplyResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut applied = lock(&self.shared.applied);
        let mut results = Vec::new();
        for entry in entries {
            applied.last_applied = Some(entry.log_id);
            let result = match entry.payload {
                EntryPayload::Blank => ApplyResult::Applied {
                    meta: applied.meta.clone(),
                },
                EntryPayload::Normal(command) => {
                    let voters: BTreeSet<NodeId> =
                        applied.membership.membership().voter_ids().collect();
                    let result = applied.meta.apply(&command, &voters);
                    match &result {
                        ApplyResult::Applied { .. } => {
                            tracing::info!(index = entry.log_id.index, %command, "controller: applied")
                        }
                        ApplyResult::Rejected { rejection } => {
                            tracing::info!(index = entry.log_id.index, %command, %rejection, "controller: refused")
                        }
                    }
                    result
                }
                EntryPayload::Membership(membership) => {
                    applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                    let voters: BTreeSet<NodeId> =
                        applied.membership.membership().voter_ids().collect();
                    applied.meta.set_voters(&voters);
                    ApplyResult::Applied {
                        meta: applied.meta.clone(),
                    }
                }
            };
            results.push(result);
        }
        self.shared.published.send_replace(applied.meta.clone());
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> StateMachineStore {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let state: ClusterMeta = serde_json::from_slice(snapshot.get_ref()).map_err(|error| {
            StorageError::from(StorageIOError::read_snapshot(
                Some(meta.signature()),
                &error,
            ))
        })?;
        let file = SnapshotFile {
            format: SNAPSHOT_FORMAT,
            meta: meta.clone(),
            state: state.clone(),
        };
        self.write_snapshot_off_thread(&file).await?;
        let mut applied = lock(&self.shared.applied);
        applied.last_applied = meta.last_log_id;
        applied.membership = meta.last_membership.clone();
        applied.meta = state;
        applied.snapshot = Some(file);
        self.shared.published.send_replace(applied.meta.clone());
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let applied = lock(&self.shared.applied);
        match &applied.snapshot {
            Some(file) => Ok(Some(
                StateMachineStore::snapshot_of(file).map_err(snapshot_error)?,
            )),
            None => Ok(None),
        }
    }
}
