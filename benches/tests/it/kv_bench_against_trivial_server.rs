//! `kv-bench` driving `trivial-server`: the report is complete and nothing fails.

use std::net::TcpListener;
use std::process::Command;

use crate::process::start_trivial_server;

fn run_kv_bench(arguments: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kv-bench"))
        .args(arguments)
        .output()
        .expect("kv-bench runs")
}

fn parse_report(output: &std::process::Output) -> serde_json::Value {
    assert!(
        output.status.success(),
        "kv-bench failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("--json prints one JSON object")
}

#[test]
fn get_for_two_seconds_on_four_connections() {
    let (_server, socket_address) = start_trivial_server();
    let url = format!("http://{socket_address}");
    let output = run_kv_bench(&[
        "get",
        "--url",
        &url,
        "--duration",
        "2s",
        "--connections",
        "4",
        "--json",
        "--fail-on-error",
    ]);
    let report = parse_report(&output);
    let requests = report["requests"].as_u64().unwrap();
    assert!(requests > 0, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["ok"].as_u64().unwrap(), requests, "{report}");
    assert_eq!(report["operations"]["get"].as_u64().unwrap(), requests);
    assert_eq!(report["connections"], 4);
    assert_eq!(report["loop_mode"], "closed");
    assert_eq!(report["latency"]["count"].as_u64().unwrap(), requests);
    assert!(report["throughput_per_second"].as_f64().unwrap() > 0.0);
    assert!(
        report["latency"]["p50_us"].as_u64().unwrap()
            <= report["latency"]["max_us"].as_u64().unwrap()
    );
}

#[test]
fn open_loop_mixed_with_prefill_and_two_urls() {
    let (_server, socket_address) = start_trivial_server();
    let url = format!("http://{socket_address}");
    let output = run_kv_bench(&[
        "mixed:50",
        "--url",
        &url,
        "--url",
        &url,
        "--requests",
        "200",
        "--rate",
        "1000",
        "--connections",
        "2",
        "--keys",
        "100",
        "--key-size",
        "8",
        "--prefill",
        "--warmup",
        "0s",
        "--acks",
        "quorum",
        "--json",
    ]);
    let report = parse_report(&output);
    assert_eq!(report["loop_mode"], "open");
    assert_eq!(report["requests"], 200, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["prefill"]["requests"], 100, "{report}");
    assert_eq!(report["prefill"]["errors"], 0, "{report}");
    let operations = &report["operations"];
    let operation_total = operations["get"].as_u64().unwrap() + operations["put"].as_u64().unwrap();
    assert_eq!(operation_total, 200);
}

#[test]
fn text_output_names_the_figures() {
    let (_server, socket_address) = start_trivial_server();
    let url = format!("http://{socket_address}");
    let output = run_kv_bench(&["get", "--url", &url, "--requests", "50", "--warmup", "0s"]);
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    for needle in ["kv-bench get", "req/s", "p99.9", "errors 0"] {
        assert!(text.contains(needle), "{needle:?} missing from {text}");
    }
}

#[test]
fn closed_port_counts_connect_errors_and_fails_when_asked() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let output = run_kv_bench(&[
        "put",
        "--url",
        &url,
        "--duration",
        "300ms",
        "--warmup",
        "0s",
        "--json",
        "--fail-on-error",
    ]);
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(
        report["error_kinds"]["connect"].as_u64().unwrap() > 0,
        "{report}"
    );
    assert_eq!(report["ok"], 0);
}

#[test]
fn non_loopback_targets_are_refused_before_sending() {
    // 192.0.2.0/24 is reserved for documentation; nothing is sent there either way.
    let output = run_kv_bench(&["get", "--url", "http://192.0.2.1:80", "--requests", "1"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not a loopback address"), "{stderr}");
}

#[test]
fn lag_reads_a_follower_after_each_write() {
    // The trivial server answers `{"status":"ok","id":0}` to writes and ignores `min_id`, so two
    // of them stand in for a leader and a follower: the run checks the plumbing, not kvd.
    let (_leader, leader_address) = start_trivial_server();
    let (_follower, follower_address) = start_trivial_server();
    let leader_url = format!("http://{leader_address}");
    let follower_url = format!("http://{follower_address}");
    let output = run_kv_bench(&[
        "lag",
        "--url",
        &leader_url,
        "--url",
        &follower_url,
        "--url",
        &follower_url,
        "--requests",
        "400",
        "--rate",
        "2000",
        "--connections",
        "2",
        "--warmup",
        "0s",
        "--json",
        "--fail-on-error",
    ]);
    let report = parse_report(&output);
    assert_eq!(report["workload"], "lag");
    assert_eq!(report["requests"], 400, "{report}");
    assert_eq!(report["operations"]["put"], 400, "{report}");
    let lag = &report["replication_lag"];
    assert_eq!(lag["every"], 1);
    assert_eq!(lag["errors"], 0, "{report}");
    assert_eq!(lag["lag"]["count"], 400, "every write is timed: {report}");
    let by_follower = lag["by_follower"].as_array().expect("by_follower");
    assert_eq!(by_follower.len(), 2);
    let mut read_count = 0;
    for follower in by_follower {
        assert_eq!(follower["url"], follower_url.as_str());
        let count = follower["lag"]["count"].as_u64().unwrap();
        assert!(
            count > 0,
            "each worker alternates between followers: {report}"
        );
        read_count += count;
    }
    assert_eq!(read_count, 400, "{report}");
}
