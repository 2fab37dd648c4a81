//! Refusing to start in a data directory kvd cannot write: it writes `node.meta`, the WAL and
//! snapshots, and the controller's `raft-state.json` and log as it runs, not only at open, so
//! a directory it can read but not write (permissions, a read-only mount) let it start and
//! then fail at its first write. Before, a `kvd leader` whose `controller/` was read-only
//! started, its controller's Raft core stopped on "raft-state.json.tmp: Permission denied",
//! and it served no write for as long as it ran ("no leader is known right now"); with the
//! data directory read-only, the same for `node.meta.tmp`.

use std::io;
use std::path::{Path, PathBuf};

use crate::config::NodeConfig;

/// The name of the file created and removed in each directory to learn whether kvd may write
/// there.
const PROBE_FILE_NAME: &str = ".kvd-write-probe";

/// Fails, naming the directory and the way out, when kvd may not create a file in one of the
/// existing directories it writes to (a directory that does not exist yet is created by the
/// code that needs it, and a failure there names it). Leaves nothing behind.
pub fn refuse_unwritable_directories(config: &NodeConfig) -> anyhow::Result<()> {
    let controller_dir = config.data_dir.join(kv_controller::CONTROLLER_DIR);
    let directories: [PathBuf; 5] = [
        config.data_dir.clone(),
        config.wal_dir(),
        config.snapshot_dir(),
        controller_dir.join(kv_controller::log_store::LOG_DIR),
        controller_dir,
    ];
    for directory in directories.iter().filter(|directory| directory.is_dir()) {
        if let Err(error) = probe(directory) {
            if denied(&error) {
                anyhow::bail!(
                    "cannot write in {}: {error}. kvd writes there while it runs (node.meta, \
                     the WAL, snapshots, the controller's files), so it does not start: give \
                     the user running kvd write access to it (or mount the file system \
                     read-write) and start again. Nothing was changed",
                    directory.display()
                );
            }
        }
    }
    Ok(())
}

/// Whether `error` means the file system refuses this process's writes (as opposed to
/// damage): permissions, or a read-only file system.
pub fn denied(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
    )
}

fn probe(directory: &Path) -> io::Result<()> {
    let path = directory.join(PROBE_FILE_NAME);
    std::fs::File::create(&path)?;
    std::fs::remove_file(&path)
}
