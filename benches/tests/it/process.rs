//! Starting the package's binaries as child processes, and always stopping them.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long a freshly started server may take to print its address.
pub const SERVER_START_TIMEOUT: Duration = Duration::from_secs(30);

/// A child process that is killed and reaped when dropped, even if the test panics.
pub struct ChildGuard {
    child: Child,
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `trivial-server` on an ephemeral loopback port and returns it with its address,
/// read from the first line of its stdout.
pub fn start_trivial_server() -> (ChildGuard, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_trivial-server"))
        .args(["--listen", "127.0.0.1:0", "--lifetime", "10m"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("trivial-server starts");
    let stdout = child.stdout.take().expect("stdout is piped");
    let guard = ChildGuard { child };
    let (line_sender, line_receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut first_line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut first_line);
        let _ = line_sender.send(first_line);
    });
    let first_line = line_receiver
        .recv_timeout(SERVER_START_TIMEOUT)
        .expect("trivial-server prints its address in time");
    let socket_address = first_line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first_line:?}"))
        .parse()
        .expect("the first line ends with a socket address");
    (guard, socket_address)
}
