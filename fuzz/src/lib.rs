//! kvd's fuzz targets, as plain functions: the cargo-fuzz binaries in `fuzz_targets/` call
//! them, and the crates' corpus tests include the same files to replay `fuzz/corpus/` in CI.
//!
//! - [`wal_targets::decode_frames`]: `kv_wal::frame::decode` and `decode_all`.
//! - [`wal_targets::recover_directory`]: a whole WAL directory image opened in every recovery
//!   mode.
//! - [`http_target::serve_raw_bytes`]: raw bytes into hyper's server and `kv_http::handle`.
//!
//! - [`replication_targets::decode_messages`]: the fetch protocol's request and response
//!   decoders, and the follower's frame checks.

pub mod http_target;
pub mod replication_targets;
pub mod wal_targets;

use std::path::PathBuf;
use std::sync::Arc;

use kv_http::{AppState, HttpOptions};
use kv_store::{Store, StoreOptions};
use kv_wal::sim::SimFs;
use kv_wal::{SyncPolicy, WalOptions};

/// A leader's HTTP state over an in-memory store (a [`SimFs`]: no disk I/O per execution).
/// The replication node keeps its small identity file in `node_dir`.
pub fn in_memory_leader_state(node_dir: &std::path::Path) -> Arc<AppState> {
    let options = StoreOptions {
        wal: WalOptions {
            sync_policy: SyncPolicy::Never,
            file_system: Arc::new(SimFs::new()),
            ..WalOptions::default()
        },
        ..StoreOptions::default()
    };
    let (store, _report) = Store::open(PathBuf::from("/fuzz/kvd/wal"), options).expect("store");
    let node = kv_replication::Node::open_leader(
        Arc::new(store),
        node_dir,
        kv_replication::NodeOptions::default(),
    )
    .expect("node");
    let http = HttpOptions {
        body_bytes_max: 64 << 10,
        key_bytes_max: 256,
        ..HttpOptions::default()
    };
    Arc::new(AppState::new(Arc::new(node), http))
}
