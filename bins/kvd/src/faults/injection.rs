//! The faults themselves, in a build with the `fault-injection` feature only: env variables, off
//! unless set, that crash or break the real binary at chosen moments. The reliability tests
//! (`bins/kvd/tests/it/`, `docs/reliability.md`) set them; an operator never does.
//!
//! - `KVD_FAILPOINTS`: a kv-wal fail point spec, e.g. `wal-before-append=abort@3` (see
//!   [`kv_wal::failpoint`]): the process aborts, or the step fails, at that hit.
//! - `KVD_FAULT_FSYNC_FAIL_AT=N`: the Nth fsync the WAL runs (`fdatasync` of a segment or
//!   `fsync` of the directory, counted from process start, the ones open runs included) fails.
//! - `KVD_FAULT_WRITE_FAIL_AT=N`: likewise the Nth write (or length change) of a WAL file.
//! - `KVD_FAULT_DISK_FULL_FILE=PATH`: while a file exists at PATH, the node's disk is full: a
//!   new segment's allocation, and any write that would grow a file, fails with `ENOSPC`
//!   (`FaultPlan::full_while_exists`) — in the WAL and in the controller's files
//!   ([`controller_file_system`]).
//! - `KVD_FAULT_DISK_STALL_FILE=PATH`: while a file exists at PATH, the node's disk does not
//!   answer, as a hung device or a frozen file system: every write, `fsync`, allocation,
//!   creation, rename and removal waits until the file is removed
//!   (`FaultPlan::stall_while_exists`) — in the WAL, `node.meta`, snapshots and the
//!   controller's files alike.
//! - `KVD_FAULT_FSYNC_STALL_FILE=PATH`: likewise, but only `fsync`s wait; writes land in the
//!   page cache (`FaultPlan::stall_syncs_while_exists`): a device that stopped completing
//!   writes.
//! - `KVD_FAULT_CORRUPT_FETCH_EVERY=N`: a follower flips a bit in every Nth batch it fetches
//!   (`corrupt_fetch.rs`: the follower transport `node.rs` uses is wrapped).
//! - `KVD_FAULT_FETCH_BLOCK_FILE=PATH`: every fetch fails while a file exists at PATH.
//! - `KVD_FAULT_PEER_ROUTES=HOST:PORT=HOST:PORT,…`: this node reaches the peer at the first
//!   address by connecting to the second (a test's proxy for that link), for every node-to-node
//!   request: fetches, snapshots, controller traffic ([`peer_dial`]).
//!
//! [`configure_from_env`] reads and checks them once at startup; [`wal_file_system`] is the file
//! system the WAL opens with: the real one, wrapped in a [`FaultyFs`] when a fault is asked for.
//! [`controller_file_system`] is the controller's: faulty only for a full or stalled disk (the
//! counted write and fsync faults are the WAL's alone: `node.meta` and snapshots go through the
//! WAL's file system, uncounted).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use anyhow::{bail, Context};
use kv_wal::fs::{FaultPlan, FaultyFs, FileSystem, StdFs};

/// Env variable holding the fail point spec.
pub const FAILPOINTS_ENV: &str = "KVD_FAILPOINTS";
/// Env variable: the number of the WAL fsync that fails.
pub const FAULT_FSYNC_FAIL_AT_ENV: &str = "KVD_FAULT_FSYNC_FAIL_AT";
/// Env variable: the number of the WAL file write that fails.
pub const FAULT_WRITE_FAIL_AT_ENV: &str = "KVD_FAULT_WRITE_FAIL_AT";
/// A path: while a file exists there, the WAL's disk has no room for a new segment.
pub const FAULT_DISK_FULL_FILE_ENV: &str = "KVD_FAULT_DISK_FULL_FILE";
/// A path: while a file exists there, the node's disk does not answer (every change waits).
pub const FAULT_DISK_STALL_FILE_ENV: &str = "KVD_FAULT_DISK_STALL_FILE";
/// A path: while a file exists there, the node's `fsync`s do not return.
pub const FAULT_FSYNC_STALL_FILE_ENV: &str = "KVD_FAULT_FSYNC_STALL_FILE";
/// Env variable: every how many fetched batches a follower corrupts one (`corrupt_fetch.rs`).
pub const FAULT_CORRUPT_FETCH_EVERY_ENV: &str = "KVD_FAULT_CORRUPT_FETCH_EVERY";
/// A path: while a file exists there, every fetch of this follower fails (it stays alive and
/// heartbeats the controller, but copies nothing: a follower too slow to keep up).
pub const FAULT_FETCH_BLOCK_FILE_ENV: &str = "KVD_FAULT_FETCH_BLOCK_FILE";
/// Env variable: `peer=dial,…` address pairs (see the module docs).
pub const FAULT_PEER_ROUTES_ENV: &str = "KVD_FAULT_PEER_ROUTES";

/// Every fault variable this build reads.
pub const VARIABLES: [&str; 9] = [
    FAILPOINTS_ENV,
    FAULT_FSYNC_FAIL_AT_ENV,
    FAULT_WRITE_FAIL_AT_ENV,
    FAULT_DISK_FULL_FILE_ENV,
    FAULT_DISK_STALL_FILE_ENV,
    FAULT_FSYNC_STALL_FILE_ENV,
    FAULT_CORRUPT_FETCH_EVERY_ENV,
    FAULT_FETCH_BLOCK_FILE_ENV,
    FAULT_PEER_ROUTES_ENV,
];

/// Where this node connects for each peer address (`KVD_FAULT_PEER_ROUTES`; empty unless set).
pub fn peer_dial() -> anyhow::Result<HashMap<String, String>> {
    let Some(text) = env_value(FAULT_PEER_ROUTES_ENV) else {
        return Ok(HashMap::new());
    };
    let mut dial = HashMap::new();
    for pair in text.split(',').filter(|pair| !pair.is_empty()) {
        let Some((peer, via)) = pair.split_once('=') else {
            bail!("{FAULT_PEER_ROUTES_ENV}: {pair:?} is not PEER=DIAL");
        };
        dial.insert(peer.to_owned(), via.to_owned());
    }
    tracing::warn!(?dial, "test fault: peers reached through other addresses");
    Ok(dial)
}

/// The WAL's file system, chosen once by [`configure_from_env`].
static WAL_FILE_SYSTEM: OnceLock<Arc<dyn FileSystem>> = OnceLock::new();
/// The controller's, likewise.
static CONTROLLER_FILE_SYSTEM: OnceLock<Arc<dyn FileSystem>> = OnceLock::new();

/// Reads the fault env variables, configures the fail points and picks the WAL's file system,
/// whose counted write and fsync faults count only the paths `counted` accepts (the log's:
/// `node.meta` and snapshots share the file system). Fails on a malformed value, so a typo
/// never silently runs a test without its fault.
pub fn configure_from_env(counted: kv_wal::fs::PathFilter) -> anyhow::Result<()> {
    if let Some(spec) = env_value(FAILPOINTS_ENV) {
        kv_wal::failpoint::configure(&spec)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("{FAILPOINTS_ENV}={spec:?}"))?;
        tracing::warn!(
            spec,
            "fail points configured ({FAILPOINTS_ENV}): test use only"
        );
    }
    let fsync_fail_at = hit_number(FAULT_FSYNC_FAIL_AT_ENV)?;
    let write_fail_at = hit_number(FAULT_WRITE_FAIL_AT_ENV)?;
    let disk = DiskFaults {
        full_file: env_value(FAULT_DISK_FULL_FILE_ENV),
        stall_file: env_value(FAULT_DISK_STALL_FILE_ENV),
        fsync_stall_file: env_value(FAULT_FSYNC_STALL_FILE_ENV),
    };
    let file_system: Arc<dyn FileSystem> =
        if fsync_fail_at.is_none() && write_fail_at.is_none() && disk.is_none() {
            Arc::new(StdFs)
        } else {
            let plan = disk.plan();
            plan.count_only(counted);
            if let Some(number) = fsync_fail_at {
                plan.fail_sync_at(number);
            }
            if let Some(number) = write_fail_at {
                plan.fail_write_at(number);
            }
            tracing::warn!(
                fsync_fail_at,
                write_fail_at,
                disk_full_file = disk.full_file,
                disk_stall_file = disk.stall_file,
                fsync_stall_file = disk.fsync_stall_file,
                "the WAL runs on a faulty file system: test use only"
            );
            Arc::new(FaultyFs::new(Arc::new(StdFs), plan))
        };
    // A second call keeps the first choice: the env does not change while the process runs.
    let _ = WAL_FILE_SYSTEM.set(file_system);
    let controller_file_system: Arc<dyn FileSystem> = if disk.is_none() {
        Arc::new(StdFs)
    } else {
        Arc::new(FaultyFs::new(Arc::new(StdFs), disk.plan()))
    };
    let _ = CONTROLLER_FILE_SYSTEM.set(controller_file_system);
    Ok(())
}

/// The file system the controller's files are written through: the real one unless a full
/// or stalled disk was asked for.
pub fn controller_file_system() -> Arc<dyn FileSystem> {
    CONTROLLER_FILE_SYSTEM
        .get()
        .cloned()
        .unwrap_or_else(|| Arc::new(StdFs))
}

/// The file system the WAL opens with: the real one unless a fault was asked for.
pub fn wal_file_system() -> Arc<dyn FileSystem> {
    WAL_FILE_SYSTEM
        .get()
        .cloned()
        .unwrap_or_else(|| Arc::new(StdFs))
}

/// The faults of the whole disk, which the WAL's file system and the controller's share.
struct DiskFaults {
    /// `KVD_FAULT_DISK_FULL_FILE`.
    full_file: Option<String>,
    /// `KVD_FAULT_DISK_STALL_FILE`.
    stall_file: Option<String>,
    /// `KVD_FAULT_FSYNC_STALL_FILE`.
    fsync_stall_file: Option<String>,
}

impl DiskFaults {
    fn is_none(&self) -> bool {
        self.full_file.is_none() && self.stall_file.is_none() && self.fsync_stall_file.is_none()
    }

    /// A plan with these faults (and no counted ones).
    fn plan(&self) -> Arc<FaultPlan> {
        let plan = FaultPlan::new();
        if let Some(path) = &self.full_file {
            plan.full_while_exists(path.into());
        }
        if let Some(path) = &self.stall_file {
            plan.stall_while_exists(path.into());
        }
        if let Some(path) = &self.fsync_stall_file {
            plan.stall_syncs_while_exists(path.into());
        }
        plan
    }
}

fn env_value(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .filter(|value| !value.trim().is_empty())
}

fn hit_number(name: &str) -> anyhow::Result<Option<u64>> {
    let Some(text) = env_value(name) else {
        return Ok(None);
    };
    match text.trim().parse::<u64>() {
        Ok(number) if number >= 1 => Ok(Some(number)),
        _ => bail!("{name}={text:?}: expected a number from 1"),
    }
}
