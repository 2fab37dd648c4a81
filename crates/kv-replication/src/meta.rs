//! The node's replication identity on disk (`node.meta` in the data directory): the cluster it
//! belongs to and the highest epoch it has led or followed. Written atomically (temporary
//! file, fsync, rename, directory fsync).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Name of the file in the data directory.
pub const META_FILE_NAME: &str = "node.meta";
const META_FORMAT: u32 = 1;

/// What a node remembers about its cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NodeMeta {
    /// The cluster (0: a follower that has not joined one yet).
    pub cluster_id: u64,
    /// The highest leader epoch this node has used or seen.
    pub epoch: u64,
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
}

impl NodeMeta {
    /// The meta file's path in `data_dir`.
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(META_FILE_NAME)
    }

    /// Reads the meta file; `None` when there is none.
    pub fn load(data_dir: &Path) -> Result<Option<NodeMeta>> {
        let path = NodeMeta::path(data_dir);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(Error::meta(&path, error.to_string())),
        };
        let file: MetaFile = serde_json::from_str(&text)
            .map_err(|error| Error::meta(&path, format!("not a node meta file: {error}")))?;
        if file.format != META_FORMAT {
            return Err(Error::meta(
                &path,
                format!("unsupported format {}", file.format),
            ));
        }
        let cluster_id = u64::from_str_radix(&file.cluster_id, 16)
            .map_err(|_| Error::meta(&path, format!("bad cluster id {:?}", file.cluster_id)))?;
        Ok(Some(NodeMeta {
            cluster_id,
            epoch: file.epoch,
            commit_id: file.commit_id,
        }))
    }

    /// Writes the meta file atomically.
    pub fn store(&self, data_dir: &Path) -> Result<()> {
        let path = NodeMeta::path(data_dir);
        let temp = data_dir.join(format!("{META_FILE_NAME}.tmp"));
        let text = serde_json::to_string_pretty(&MetaFile {
            format: META_FORMAT,
            cluster_id: format!("{:016x}", self.cluster_id),
            epoch: self.epoch,
            commit_id: self.commit_id,
        })
        .map_err(|error| Error::meta(&path, error.to_string()))?;
        let write = || -> std::io::Result<()> {
            fs::create_dir_all(data_dir)?;
            let mut file = fs::File::create(&temp)?;
            file.write_all(text.as_bytes())?;
            file.write_all(b"\n")?;
            file.sync_all()?;
            fs::rename(&temp, &path)?;
            fs::File::open(data_dir)?.sync_all()
        };
        write().map_err(|error| Error::meta(&path, error.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(NodeMeta::load(dir.path()).unwrap(), None);
        let meta = NodeMeta {
            cluster_id: 0xdead_beef_0000_0001,
            epoch: 7,
            commit_id: 40,
        };
        meta.store(dir.path()).unwrap();
        assert_eq!(NodeMeta::load(dir.path()).unwrap(), Some(meta));
        fs::write(NodeMeta::path(dir.path()), "{not json").unwrap();
        assert!(matches!(
            NodeMeta::load(dir.path()),
            Err(Error::Meta { .. })
        ));
    }
}
