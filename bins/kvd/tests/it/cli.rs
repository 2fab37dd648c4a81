//! The command line itself: help, validation, the follower's not-yet state.

use crate::harness::{free_port, kvd_command, request, wait_with_deadline, DEADLINE};

fn output(args: &[&str]) -> (bool, String, String) {
    run(kvd_command(args))
}

fn output_with_env(args: &[&str], (name, value): (&str, &str)) -> (bool, String, String) {
    let mut command = kvd_command(args);
    command.env(name, value);
    run(command)
}

fn run(mut command: std::process::Command) -> (bool, String, String) {
    let child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn kvd");
    let output = child.wait_with_output().expect("kvd output");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn help_explains_every_option() {
    let (success, stdout, _) = output(&["leader", "--help"]);
    assert!(success);
    for option in [
        "--listen",
        "--data-dir",
        "--config",
        "--max-segment-size",
        "--sync-policy",
        "--recovery-mode",
        "--max-body-bytes",
        "--max-key-bytes",
        "--max-connections",
        "--header-read-timeout-ms",
        "--body-read-timeout-ms",
        "--shutdown-timeout-ms",
        "--log-level",
        "--log-format",
        "KVD_LISTEN",
        "MAX_SEGMENT_SIZE",
    ] {
        assert!(
            stdout.contains(option),
            "leader --help does not mention {option}"
        );
    }
    let (success, stdout, _) = output(&["follower", "--help"]);
    assert!(success);
    assert!(stdout.contains("--leader") && stdout.contains("follower-N"));
    let (success, stdout, _) = output(&["--help"]);
    assert!(success && stdout.contains("leader") && stdout.contains("follower"));
}

#[test]
fn bad_settings_fail_before_anything_starts() {
    let (success, _, stderr) = output(&["leader", "--sync-policy", "sometimes"]);
    assert!(!success && stderr.contains("sync policy"), "{stderr}");
    let (success, _, stderr) = output(&["leader", "--max-segment-size", "12X"]);
    assert!(!success && stderr.contains("size suffix"), "{stderr}");
}

#[test]
fn a_follower_refuses_a_leader_url_it_cannot_use() {
    // Each on an ephemeral port and its own data directory: a URL taken by mistake starts a
    // node, which fails the test rather than hold it up (or write into the working directory).
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    let path = data_dir.to_str().expect("UTF-8 path");
    let refusal = |role: &[&str], flag: &str, url: &str| -> String {
        let args = [
            role,
            &["--listen", "127.0.0.1:0", "--data-dir", path, flag, url],
        ]
        .concat();
        match crate::harness::Kvd::try_spawn(&data_dir, &args, &[]) {
            Ok(_) => panic!("kvd started with {flag} {url}"),
            Err((_, stderr)) => stderr,
        }
    };
    for url in [
        "https://127.0.0.1:8000",
        "ftp://x",
        "http://",
        // A path, or no port, was taken before.
        "http://127.0.0.1:8000/x",
        "http://127.0.0.1",
    ] {
        let stderr = refusal(&["follower", "1"], "--leader", url);
        assert!(stderr.contains("invalid leader URL"), "{url}: {stderr}");
    }
    // The same for the address a node gives its peers (with a path, a node started before and
    // got no controller message; once it led, every 307 to it ended in a 404).
    let stderr = refusal(&["leader"], "--advertise-url", "http://127.0.0.1:8000/x");
    assert!(
        stderr.contains("invalid advertise URL") && stderr.contains("no path"),
        "{stderr}"
    );
    let (success, _, stderr) = output(&["follower", "follower-0"]);
    assert!(
        !success && stderr.contains("invalid follower id"),
        "{stderr}"
    );
}

/// `kvd follower 1` listening on `listen` with `data_dir`, joining through `leader`.
fn follower_1_args(listen: &str, data_dir: &std::path::Path, leader: &str) -> Vec<String> {
    let data_dir = data_dir.to_str().expect("UTF-8 path");
    [
        "follower",
        "1",
        "--listen",
        listen,
        "--data-dir",
        data_dir,
        "--leader",
        leader,
    ]
    .map(str::to_owned)
    .to_vec()
}

/// `kvd follower N --leader URL` with its own address as the URL (a slip with ports, say
/// `--listen 127.0.0.1:8001 --leader http://127.0.0.1:8001`) is refused at once, saying so.
/// Before, it asked itself to join for ever, logging "not the active controller".
#[test]
fn a_follower_whose_leader_url_is_its_own_address_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("follower-1");
    let listen = format!("127.0.0.1:{}", free_port());
    let args = follower_1_args(&listen, &data_dir, &format!("http://{listen}/"));
    let (status, stderr) = crate::harness::run_until_exit(&args, &data_dir);
    assert!(
        !status.success() && stderr.contains("is this node's own address"),
        "{stderr}"
    );
}

#[test]
fn the_tests_run_a_fault_build_which_refuses_a_fault_variable_it_does_not_know() {
    // The fault variables work only in a build with the `fault-injection` feature; kvd's
    // dev-dependency on itself turns it on for the binary these tests run. A default build
    // refuses every one of them (unit-tested in `faults.rs`; `.ci/run` checks the release
    // binary).
    let (success, _, stderr) = output_with_env(&["leader"], ("KVD_FAULT_FSYNC_FAIL", "3"));
    assert!(
        !success && stderr.contains("KVD_FAULT_FSYNC_FAIL is not a fault variable"),
        "{stderr}"
    );
}

#[test]
fn a_follower_stopped_by_sigint_before_it_joined_exits_cleanly() {
    // A new user's `kvd follower 1 --leader URL` with a URL nothing answers at keeps asking to
    // join; Ctrl-C then is a clean stop (exit status 0), as it is once the node has joined.
    // Before, it exited 1 with "kvd: error: stopped before joining the cluster".
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("follower-1");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let nobody = format!("http://127.0.0.1:{}", free_port());
    let stderr_path = dir.path().join("stderr.log");
    let args = follower_1_args(&listen, &data_dir, &nobody);
    let child = kvd_command(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("spawn kvd");
    let address = listen.parse().expect("address");
    let started = std::time::Instant::now();
    // It serves (503: it has not learned the cluster's metadata) while it retries the join.
    loop {
        let answer = request(address, "GET", "/health", &[], None);
        if answer.is_ok_and(|answer| answer.status == 503) {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "kvd did not serve: {}",
            std::fs::read_to_string(&stderr_path).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    crate::harness::send_signal(child.id(), "INT");
    let status = wait_with_deadline(child);
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert!(status.success(), "{status}: {stderr}");
    assert!(
        stderr.contains("stopped before joining the cluster") && !stderr.contains("kvd: error"),
        "{stderr}"
    );
}
