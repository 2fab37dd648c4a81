//! `kv-bench cas` and `txn` driving a real kvd leader (kv-http over a store in a temp dir, in
//! this process): every conditional write must apply, so the revisions each worker tracks are
//! the ones kvd keeps. A worker that tracked the wrong number (a `version` instead of the
//! `mod_revision`, a stale answer) would see 412s or failed compares, counted as errors.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use kv_http::{AppState, HttpOptions};
use kv_replication::NodeOptions;
use kv_store::{Store, StoreOptions};
use tokio::sync::oneshot;

/// How long the server thread may take to start listening.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// A kvd leader served on a loopback port by a thread of its own; stopped when dropped.
struct KvdLeader {
    address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl KvdLeader {
    fn start() -> KvdLeader {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, _report) =
            Store::open(dir.path().join("wal"), StoreOptions::default()).expect("open store");
        let node =
            kv_replication::Node::open_leader(Arc::new(store), dir.path(), NodeOptions::default())
                .expect("open node");
        let state = Arc::new(AppState::new(Arc::new(node), HttpOptions::default()));
        let (stop, stopped) = oneshot::channel::<()>();
        let (address_sender, address_receiver) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("tokio runtime");
            runtime.block_on(async move {
                let listener = kv_http::bind("127.0.0.1:0").await.expect("bind");
                let _ = address_sender.send(listener.local_addr().expect("address"));
                kv_http::serve(listener, state, async {
                    let _ = stopped.await;
                })
                .await
                .expect("serve");
            });
        });
        let address = address_receiver
            .recv_timeout(START_DEADLINE)
            .expect("the server listens in time");
        KvdLeader {
            address,
            stop: Some(stop),
            thread: Some(thread),
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.address)
    }
}

impl Drop for KvdLeader {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run_kv_bench(arguments: &[&str]) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_kv-bench"))
        .args(arguments)
        .output()
        .expect("kv-bench runs");
    assert!(
        output.status.success(),
        "kv-bench failed: {}\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("--json prints one JSON object")
}

/// Runs `workload` twice on the same kvd (the second run starts on keys the first wrote, so
/// its workers must learn their revisions first) and checks every request applied.
fn every_conditional_write_applies(workload: &str, operation_field: &str) {
    let kvd = KvdLeader::start();
    let url = kvd.url();
    for (run_index, prefill) in [(0, false), (1, true)] {
        let mut arguments = vec![
            workload,
            "--url",
            &url,
            "--requests",
            "400",
            "--connections",
            "4",
            "--keys",
            "40",
            "--warmup",
            "200ms",
            "--seed",
            "7",
            "--json",
            "--fail-on-error",
        ];
        if prefill {
            arguments.push("--prefill");
        }
        let report = run_kv_bench(&arguments);
        assert_eq!(report["workload"], workload, "run {run_index}: {report}");
        assert_eq!(report["requests"], 400, "run {run_index}: {report}");
        assert_eq!(report["ok"], 400, "run {run_index}: {report}");
        assert_eq!(
            report["error_kinds"]["condition_failed"], 0,
            "run {run_index}: {report}"
        );
        assert_eq!(
            report["operations"][operation_field], 400,
            "run {run_index}: {report}"
        );
    }
}

#[test]
fn cas_puts_all_apply_on_owned_keys() {
    every_conditional_write_applies("cas", "cas_put");
}

#[test]
fn txns_all_succeed_on_owned_keys() {
    every_conditional_write_applies("txn", "txn");
}
