//! Moving damaged data aside, so a replica can fetch a good copy instead of refusing to start.
//!
//! A store that finds damage in data it had made durable (a bad record before valid ones, a
//! log that does not continue its snapshot, an unreadable snapshot the log depends on) refuses
//! to open: serving less than it acknowledged, or something nobody wrote, is worse than not
//! serving. A *follower* has a better way out than an operator deleting its directory: the
//! leader holds every record it does. [`quarantine`] moves the damaged files into
//! `<data_dir>/damaged-<unix ms>/` (kept for inspection, never read again), durably; the store
//! then opens empty and the replication layer fetches the leader's log or snapshot.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use kv_wal::durable::create_dir_all_durable;
use kv_wal::fs::FileSystem;

use crate::error::{Error, Result};

/// The prefix of the directories [`quarantine`] creates.
pub const QUARANTINE_PREFIX: &str = "damaged-";

impl Error {
    /// Whether the error means the store's files are damaged — a record, a snapshot, or the way
    /// they fit together — as opposed to an I/O failure, a lock held elsewhere or bad input.
    pub fn is_damage(&self) -> bool {
        match self {
            Error::Wal(kv_wal::Error::Corrupt { .. })
            | Error::Decode { .. }
            | Error::Gap { .. }
            | Error::CannotRebuild { .. } => true,
            Error::Snapshot(crate::snapshot::SnapshotError::Damaged { .. }) => true,
            Error::Wal(_)
            | Error::Snapshot(_)
            | Error::SnapshotsOff
            | Error::KeyNotFound
            | Error::DuplicateRequest { .. }
            | Error::RequestMismatch { .. } => false,
        }
    }
}

/// Moves `entries` (names in `data_dir`, e.g. `wal` and `snapshots`; missing ones are skipped)
/// into a new `data_dir/damaged-<unix ms>/`, durably (the new directory, then each rename, with
/// both directories fsynced). Returns the new directory.
pub fn quarantine(fs: &dyn FileSystem, data_dir: &Path, entries: &[&str]) -> Result<PathBuf> {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis());
    let mut target = data_dir.join(format!("{QUARANTINE_PREFIX}{millis}"));
    let mut attempt = 0;
    while fs.list_dir(&target).is_ok() {
        attempt += 1;
        target = data_dir.join(format!("{QUARANTINE_PREFIX}{millis}-{attempt}"));
    }
    create_dir_all_durable(fs, &target)?;
    let present = fs
        .list_dir(data_dir)
        .map_err(|source| io_error(data_dir, source))?;
    for name in entries {
        if !present.iter().any(|entry| entry == name) {
            continue;
        }
        let from = data_dir.join(name);
        fs.rename(&from, &target.join(name))
            .map_err(|source| io_error(&from, source))?;
    }
    fs.sync_dir(data_dir)
        .map_err(|source| io_error(data_dir, source))?;
    fs.sync_dir(&target)
        .map_err(|source| io_error(&target, source))?;
    Ok(target)
}

fn io_error(path: &Path, source: std::io::Error) -> Error {
    Error::Wal(kv_wal::Error::Io {
        path: path.to_owned(),
        source,
    })
}
