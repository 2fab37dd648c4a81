//! The node's replication identity on disk (`node.meta` in the data directory): the cluster it
//! belongs to and the highest epoch it has led or followed. Written atomically through the
//! durable-file seam ([`kv_wal::durable`]: temporary file, fsync, rename, directory fsync).

use std::path::{Path, PathBuf};

use kv_wal::fs::FileSystem;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Name of the file in the data directory.
pub const META_FILE_NAME: &str = "node.meta";
/// The format written: format 1 sealed with its CRC-32C ([`kv_wal::sealed_json`]); format 1
/// files (from before the seal) are still read.
const META_FORMAT: u32 = 2;

/// What a node remembers about its cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NodeMeta {
    /// The cluster (0: a follower that has not joined one yet).
    pub cluster_id: u64,
    /// The highest leader epoch this node has used or seen.
    pub epoch: u64,
    /// The highest leader epoch this node has led (under the controller it never leads an
    /// epoch again: a follower may hold entries of it that it lost). A meta file from before
    /// this field counts its `epoch` as led.
    pub led_epoch: u64,
    /// The highest commit id this node knows to be committed (saved now and then and at
    /// shutdown): at open, entries above it are not applied until the cluster says they are.
    pub commit_id: u64,
}

#[derive(Serialize, Deserialize)]
struct MetaFile {
    format: u32,
    cluster_id: String,
    epoch: u64,
    #[serde(default)]
    commit_id: u64,
    #[serde(default)]
    led_epoch: Option<u64>,
}

impl NodeMeta {
    /// The meta file's path in `data_dir`.
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(META_FILE_NAME)
    }

    /// Reads the meta file; `None` when there is none.
    pub fn load(fs: &dyn FileSystem, data_dir: &Path) -> Result<Option<NodeMeta>> {
        let path = NodeMeta::path(data_dir);
        let Some(file) = read_meta_file(fs, &path)? else {
            return Ok(None);
        };
        let cluster_id = u64::from_str_radix(&file.cluster_id, 16)
            .map_err(|_| Error::meta(&path, format!("bad cluster id {:?}", file.cluster_id)))?;
        Ok(Some(NodeMeta {
            cluster_id,
            epoch: file.epoch,
            commit_id: file.commit_id,
            led_epoch: file.led_epoch.unwrap_or(file.epoch),
        }))
    }

    /// Whether the meta file in `data_dir` was written by a node under the controller (it
    /// records `led_epoch`), as opposed to one from before the controller or none at all. A
    /// data directory with such a file but no controller state lost its controller: it must not
    /// start a new one (that would be a second controller for the same cluster).
    pub fn written_under_controller(fs: &dyn FileSystem, data_dir: &Path) -> Result<bool> {
        let path = NodeMeta::path(data_dir);
        Ok(read_meta_file(fs, &path)?.is_some_and(|file| file.led_epoch.is_some()))
    }

    /// Writes the meta file atomically.
    pub fn store(&self, fs: &dyn FileSystem, data_dir: &Path) -> Result<()> {
        let path = NodeMeta::path(data_dir);
        let mut text = serde_json::to_string_pretty(&MetaFile {
            format: META_FORMAT,
            cluster_id: format!("{:016x}", self.cluster_id),
            epoch: self.epoch,
            commit_id: self.commit_id,
            led_epoch: Some(self.led_epoch),
        })
        .map_err(|error| Error::meta(&path, error.to_string()))?;
        text.push('\n');
        let sealed = kv_wal::sealed_json::seal(text.as_bytes());
        kv_wal::durable::create_dir_all_durable(fs, data_dir).map_err(Error::MetaIo)?;
        kv_wal::durable::write_file_atomic(fs, data_dir, META_FILE_NAME, &sealed)
            .map_err(Error::MetaIo)
    }
}

fn read_meta_file(fs: &dyn FileSystem, path: &Path) -> Result<Option<MetaFile>> {
    let Some(bytes) = kv_wal::durable::read_file(fs, path).map_err(Error::MetaIo)? else {
        return Ok(None);
    };
    let seal = kv_wal::sealed_json::check(&bytes).map_err(|reason| Error::meta(path, reason))?;
    let file: MetaFile = serde_json::from_slice(&bytes)
        .map_err(|error| Error::meta(path, format!("not a node meta file: {error}")))?;
    kv_wal::sealed_json::check_format(file.format, seal, META_FORMAT)
        .map_err(|reason| Error::meta(path, reason))?;
    Ok(Some(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A meta with every field set, stored in `data_dir`.
    fn stored_sample(data_dir: &Path) -> NodeMeta {
        let meta = NodeMeta {
            cluster_id: 0xdead_beef_0000_0001,
            epoch: 7,
            commit_id: 40,
            led_epoch: 5,
        };
        meta.store(&kv_wal::fs::StdFs, data_dir).unwrap();
        meta
    }

    #[test]
    fn round_trip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        let fs = kv_wal::fs::StdFs;
        assert_eq!(NodeMeta::load(&fs, dir.path()).unwrap(), None);
        assert!(!NodeMeta::written_under_controller(&fs, dir.path()).unwrap());
        let meta = stored_sample(dir.path());
        assert_eq!(NodeMeta::load(&fs, dir.path()).unwrap(), Some(meta));
        assert!(NodeMeta::written_under_controller(&fs, dir.path()).unwrap());
        // A meta file from before `led_epoch` counts its epoch as led.
        std::fs::write(
            NodeMeta::path(dir.path()),
            r#"{"format":1,"cluster_id":"0000000000000009","epoch":4,"commit_id":3}"#,
        )
        .unwrap();
        assert_eq!(
            NodeMeta::load(&fs, dir.path())
                .unwrap()
                .map(|meta| meta.led_epoch),
            Some(4)
        );
        assert!(!NodeMeta::written_under_controller(&fs, dir.path()).unwrap());
        std::fs::write(NodeMeta::path(dir.path()), "{not json").unwrap();
        assert!(matches!(
            NodeMeta::load(&fs, dir.path()),
            Err(Error::Meta { .. })
        ));
    }

    /// `node.meta` is sealed with its CRC-32C: every single-bit flip of it is refused, naming
    /// the file (before, a flipped digit of an epoch or commit id was read as written: an epoch
    /// moved up kept a follower from ever following, a commit id moved up made a leader claim
    /// lost writes).
    #[test]
    fn every_single_bit_flip_of_node_meta_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fs = kv_wal::fs::StdFs;
        stored_sample(dir.path());
        let path = NodeMeta::path(dir.path());
        let sealed = std::fs::read(&path).unwrap();
        for bit in 0..sealed.len() * 8 {
            let mut damaged = sealed.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            std::fs::write(&path, &damaged).unwrap();
            match NodeMeta::load(&fs, dir.path()) {
                Err(Error::Meta { path: named, .. }) => assert_eq!(named, path),
                other => panic!(
                    "bit {bit}: {other:?} from {}",
                    String::from_utf8_lossy(&damaged)
                ),
            }
        }
    }

    /// `node.meta` goes through the durable-file seam: a power cut at any point of a store
    /// leaves the old meta or the new one, never a mix or nothing.
    #[test]
    fn a_power_cut_leaves_the_old_meta_or_the_new() {
        use kv_wal::fs::{FaultPlan, FaultyFs, FileSystem};
        use kv_wal::sim::{CrashMode, SimFs};
        let dir = Path::new("/data");
        let old = NodeMeta {
            cluster_id: 9,
            epoch: 1,
            commit_id: 10,
            led_epoch: 1,
        };
        let new = NodeMeta {
            epoch: 2,
            commit_id: 20,
            ..old
        };
        // Fail each fsync of the store in turn (1: the file, 2: the directory), then cut.
        for failing_sync in 1..=3 {
            let sim = SimFs::new();
            old.store(&sim, dir).unwrap();
            let plan = FaultPlan::new();
            plan.fail_sync_at(failing_sync);
            let faulty = FaultyFs::new(std::sync::Arc::new(sim.clone()), plan.clone());
            let stored = new.store(&faulty, dir);
            assert_eq!(stored.is_err(), plan.faults_fired() == 1);
            sim.crash(CrashMode::DropUnsynced);
            let loaded = NodeMeta::load(&sim, dir).unwrap();
            if stored.is_ok() {
                assert_eq!(loaded, Some(new), "sync {failing_sync}");
            } else {
                assert!(
                    loaded == Some(old) || loaded == Some(new),
                    "sync {failing_sync}"
                );
            }
            assert!(sim
                .list_dir(dir)
                .unwrap()
                .iter()
                .all(|name| name == META_FILE_NAME));
        }
    }
}
