//! `fsync-probe` as a command: JSON report with the documented fields.

use std::process::Command;

#[test]
fn json_report_of_a_short_probe() {
    let parent_directory = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_fsync-probe"))
        .arg("--dir")
        .arg(parent_directory.path())
        .args(["--count", "50", "--record-size", "256", "--json"])
        .output()
        .expect("fsync-probe runs");
    assert!(output.status.success(), "{output:?}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["tool"], "fsync-probe");
    assert_eq!(report["records"], 50);
    assert_eq!(report["record_size_bytes"], 256);
    assert_eq!(report["fdatasync_latency"]["count"], 50);
    assert!(report["ops_per_second"].as_f64().unwrap() > 0.0);
    assert_eq!(report["mode"], "append");
    assert_eq!(
        std::fs::read_dir(parent_directory.path()).unwrap().count(),
        0
    );
}

#[test]
fn preallocated_mode_reports_its_mode() {
    let parent_directory = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_fsync-probe"))
        .arg("--dir")
        .arg(parent_directory.path())
        .args(["--count", "20", "--mode", "preallocated", "--json"])
        .output()
        .expect("fsync-probe runs");
    assert!(output.status.success(), "{output:?}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["mode"], "preallocated");
    assert_eq!(report["records"], 20);
}
