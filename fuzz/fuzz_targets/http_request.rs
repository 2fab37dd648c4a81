#![no_main]
//! Raw bytes into hyper's HTTP/1.1 server and kv-http's service.

use std::sync::{Arc, Mutex};

use kv_http::AppState;
use libfuzzer_sys::fuzz_target;

/// Executions served by one state before a fresh one (so the store does not grow forever).
const EXECUTIONS_PER_STATE: u64 = 2000;

struct Harness {
    runtime: tokio::runtime::Runtime,
    state: Arc<AppState>,
    executions: u64,
    _node_dir: tempfile::TempDir,
}

impl Harness {
    fn new() -> Harness {
        let node_dir = tempfile::tempdir().expect("temp dir");
        Harness {
            runtime: kvd_fuzz::http_target::runtime(),
            state: kvd_fuzz::in_memory_leader_state(node_dir.path()),
            executions: 0,
            _node_dir: node_dir,
        }
    }
}

static HARNESS: Mutex<Option<Harness>> = Mutex::new(None);

fuzz_target!(|data: &[u8]| {
    let mut harness = HARNESS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if harness.as_ref().is_none_or(|harness| harness.executions >= EXECUTIONS_PER_STATE) {
        *harness = Some(Harness::new());
    }
    let harness = harness.as_mut().expect("harness");
    harness.executions += 1;
    kvd_fuzz::http_target::serve_raw_bytes(&harness.runtime, &harness.state, data);
});
