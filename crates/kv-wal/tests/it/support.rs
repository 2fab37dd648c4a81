//! Helpers shared by the test modules.

use std::path::PathBuf;
use std::sync::Arc;

use kv_wal::sim::SimFs;
use kv_wal::{RecoveryMode, RecoveryReport, SyncPolicy, Wal, WalOptions};

/// The directory every simulated log lives in.
pub fn sim_dir() -> PathBuf {
    PathBuf::from("/sim/wal")
}

pub fn sim_options(fs: &SimFs, segment_bytes_max: u64) -> WalOptions {
    WalOptions {
        segment_bytes_max,
        sync_policy: SyncPolicy::Batch,
        recovery_mode: RecoveryMode::TolerateTornTail,
        first_id: 1,
        compress_records_above: None,
        compress_sealed_segments: None,
        file_system: Arc::new(fs.clone()),
    }
}

pub fn open_sim(
    fs: &SimFs,
    segment_bytes_max: u64,
    mode: RecoveryMode,
) -> kv_wal::Result<(Wal, RecoveryReport)> {
    let options = WalOptions {
        recovery_mode: mode,
        ..sim_options(fs, segment_bytes_max)
    };
    Wal::open(sim_dir(), options)
}

pub fn payload(id: u64, len: usize) -> Vec<u8> {
    let mut bytes = format!("record-{id}-").into_bytes();
    while bytes.len() < len {
        bytes.push(b'a' + (bytes.len() % 26) as u8);
    }
    bytes.truncate(len.max(1));
    bytes
}

pub fn collect(wal: &Wal, from: u64) -> Vec<(u64, Vec<u8>)> {
    wal.iter_from(from)
        .map(|record| {
            let record = record.expect("readable record");
            (record.id, record.into_payload())
        })
        .collect()
}

pub fn segment_files(fs: &SimFs) -> Vec<PathBuf> {
    use kv_wal::fs::FileSystem;
    let mut names: Vec<String> = fs
        .list_dir(&sim_dir())
        .expect("list")
        .into_iter()
        .filter(|name| name.ends_with(".wal"))
        .collect();
    names.sort();
    names.into_iter().map(|name| sim_dir().join(name)).collect()
}

pub fn seed_from_env(default: u64) -> u64 {
    std::env::var("KV_TEST_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(default)
}
