//! Starting and stopping `kvd`, and a minimal HTTP/1.1 client over `std::net::TcpStream`.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The deadline of every wait in these tests.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Env variables kvd reads; cleared so the host's environment cannot change a test.
const KVD_ENV: [&str; 24] = [
    "KVD_LISTEN",
    "KVD_DATA_DIR",
    "KVD_CONFIG",
    "KVD_MAX_SEGMENT_SIZE",
    "MAX_SEGMENT_SIZE",
    "KVD_SYNC_POLICY",
    "KVD_RECOVERY_MODE",
    "KVD_MAX_BODY_BYTES",
    "KVD_MAX_KEY_BYTES",
    "KVD_MAX_CONNECTIONS",
    "KVD_HEADER_READ_TIMEOUT_MS",
    "KVD_BODY_READ_TIMEOUT_MS",
    "KVD_SHUTDOWN_TIMEOUT_MS",
    "KVD_LOG_FORMAT",
    "KVD_LEADER",
    "KVD_ADVERTISE_URL",
    "KVD_LAG_LIMIT_MS",
    "KVD_HEARTBEAT_INTERVAL_MS",
    "KVD_LEASE_MS",
    "KVD_SESSION_TIMEOUT_MS",
    "KVD_ELECTION_TIMEOUT_MS",
    "KVD_FAILPOINTS",
    "KVD_FAULT_FSYNC_FAIL_AT",
    "KVD_FAULT_WRITE_FAIL_AT",
];

/// The base seed of a randomized test: `KVD_TEST_SEED` when set, else fresh; always printed.
pub fn base_seed(test_name: &str) -> u64 {
    let seed = match std::env::var("KVD_TEST_SEED") {
        Ok(text) => text.parse().expect("KVD_TEST_SEED must be a u64"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos() as u64,
    };
    println!("{test_name}: seed {seed} (replay with KVD_TEST_SEED={seed})");
    seed
}

/// A small seeded PRNG (SplitMix64): enough to draw test choices, and no dependency for kvd.
#[derive(Debug, Clone)]
pub struct TestRng(u64);

impl TestRng {
    pub fn new(seed: u64) -> TestRng {
        TestRng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `range` (inclusive), near enough to uniform for tests.
    pub fn in_range(&mut self, range: std::ops::RangeInclusive<u64>) -> u64 {
        let span = range.end() - range.start() + 1;
        range.start() + self.next_u64() % span
    }
}

/// A value of `mib` MiB over the replication protocol's 64 MiB batch when `mib` is 65: bytes
/// that vary with their offset and their MiB, so a copy shifted or cut anywhere differs.
pub fn large_value(mib: u32) -> Vec<u8> {
    (0..mib << 20)
        .map(|index| (index % 251) as u8 ^ (index >> 20) as u8)
        .collect()
}

/// A free port on 127.0.0.1 (for a node that keeps its address across restarts).
///
/// The port comes from below the kernel's ephemeral range (Linux's default is 32768–60999):
/// a port the kernel picked for `bind(":0")` and that was then let go is free for the kernel
/// to give again, as the source port of any outgoing connection (the tests open thousands),
/// before kvd binds it — which made a cluster fail to start now and then ("Address already
/// in use"). Ports from 20000 to 32767, walked from a place that depends on the process id and
/// never handed out twice by one test process, are taken by nothing but a listener.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 32_768 - FIRST;
    static HANDED_OUT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7_919) % COUNT;
    for _ in 0..COUNT {
        let offset = HANDED_OUT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + (start + offset) % COUNT) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {FIRST} and 32767");
}

/// The name of a cluster's node `index` (its data directory): `leader` for node 0 (`kvd
/// leader`), `follower-N` for node N.
pub fn node_name(index: usize) -> String {
    if index == 0 {
        "leader".to_owned()
    } else {
        format!("follower-{index}")
    }
}

/// A `kvd` command with a clean environment and the given arguments.
pub fn kvd_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kvd"));
    without_kvd_env(&mut command);
    command.env("KVD_LOG_LEVEL", "info").args(args);
    command
}

/// Removes from `command`'s environment every variable kvd reads (it may start kvd itself).
pub fn without_kvd_env(command: &mut Command) {
    for name in KVD_ENV {
        command.env_remove(name);
    }
}

/// A running `kvd leader`.
pub struct Kvd {
    child: Option<Child>,
    pub address: SocketAddr,
    stderr_path: PathBuf,
}

impl Kvd {
    /// Starts `kvd leader` on an ephemeral port with `data_dir`; returns once it has printed
    /// the address it listens on.
    pub fn start(data_dir: &Path, extra_args: &[&str], env: &[(&str, &str)]) -> Kvd {
        let path = data_dir.to_str().expect("UTF-8 path");
        let mut args = vec!["leader", "--listen", "127.0.0.1:0", "--data-dir", path];
        args.extend_from_slice(extra_args);
        Kvd::spawn(data_dir, &args, env)
    }

    /// Starts `kvd follower 1` on an ephemeral port with `data_dir`, following `leader`.
    pub fn start_follower(
        data_dir: &Path,
        leader: &Kvd,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Kvd {
        let path = data_dir.to_str().expect("UTF-8 path");
        let leader_url = format!("http://{}", leader.address);
        let mut args = vec![
            "follower",
            "1",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            path,
            "--leader",
            &leader_url,
        ];
        args.extend_from_slice(extra_args);
        Kvd::spawn(data_dir, &args, env)
    }

    /// Starts kvd with exactly `args` (which must include `--data-dir data_dir` and a
    /// `--listen` address); returns once it has printed the address it listens on.
    pub fn spawn(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Kvd {
        Kvd::try_spawn(data_dir, args, env)
            .unwrap_or_else(|(status, stderr)| panic!("kvd did not start ({status:?}):\n{stderr}"))
    }

    /// [`Kvd::spawn`], or how kvd exited before it announced its address (a fail point that
    /// aborts during the start), with its stderr. Fails if it neither announces nor exits
    /// within [`DEADLINE`].
    pub fn try_spawn(
        data_dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Kvd, (ExitStatus, String)> {
        // One file per process started: a restarted node's predecessor, dropped after it,
        // removes its own file, not the new process's.
        static SPAWNED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let spawned = SPAWNED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let stderr_path =
            data_dir.with_extension(format!("stderr-{}-{spawned}.log", std::process::id()));
        let stderr = File::options()
            .create(true)
            .append(true)
            .open(&stderr_path)
            .expect("stderr file");
        let mut command = kvd_command(args);
        command
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr);
        let mut child = command.spawn().expect("spawn kvd");
        let stdout = child.stdout.take().expect("stdout");
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(address) = line.strip_prefix("listening on ") {
                    let _ = sender.send(address.parse::<SocketAddr>().expect("address"));
                }
            }
        });
        let stderr_of = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
        let started = std::time::Instant::now();
        let address = loop {
            match receiver.recv_timeout(Duration::from_millis(50)) {
                Ok(address) => break address,
                Err(error) if started.elapsed() < DEADLINE => {
                    if let Some(status) = child.try_wait().expect("wait for kvd") {
                        return Err((status, stderr_of(&stderr_path)));
                    }
                    if error == mpsc::RecvTimeoutError::Disconnected {
                        // Its stdout closed: it is exiting.
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                Err(_) => {
                    let stacks = thread_stacks(child.id());
                    let _ = child.kill();
                    panic!(
                        "kvd did not start:\n{}\nits threads:\n{stacks}",
                        stderr_of(&stderr_path)
                    );
                }
            }
        };
        Ok(Kvd {
            child: Some(child),
            address,
            stderr_path,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends signal `name` (`STOP`, `CONT`, …); after `STOP`, returns once every thread of
    /// the process has stopped (a test that went on before then could see the node act after
    /// it was "stopped").
    pub fn signal(&self, name: &str) {
        let pid = self.pid();
        send_signal(pid, name);
        if name != "STOP" {
            return;
        }
        let deadline = std::time::Instant::now() + DEADLINE;
        loop {
            let states = thread_states(pid);
            if states.chars().all(|state| state == 'T') {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "kvd {pid}'s threads did not stop: {states}"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// SIGKILL: no chance to sync or clean up.
    pub fn kill_9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("kill -9");
        child.wait().expect("reap");
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.stop_with("TERM")
    }

    /// Sends `signal` (`TERM`, `INT`, `HUP`) and waits for the exit, failing after
    /// [`DEADLINE`].
    pub fn stop_with(&mut self, signal: &str) -> ExitStatus {
        send_signal(self.pid(), signal);
        wait_with_deadline(self.child.take().expect("running"))
    }

    /// Waits for kvd to exit on its own (a fail point aborting it), failing after [`DEADLINE`].
    pub fn wait_for_exit(&mut self) -> ExitStatus {
        wait_with_deadline(self.child.take().expect("running"))
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> Answer {
        request(
            self.address,
            method,
            path,
            &[("Content-Type", "application/json")],
            body.map(str::as_bytes),
        )
        .unwrap_or_else(|error| panic!("{method} {path}: {error}\nkvd stderr:\n{}", self.stderr()))
    }

    pub fn json(&self, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
        let answer = self.request(method, path, body);
        (answer.status, answer.json())
    }

    /// [`Kvd::json`] with only the members the seed project's answers had (`key`, `value`,
    /// `encoding`, `status`, `id`, `detail`): later releases add members (versions,
    /// revisions) that tests about something else need not spell out.
    pub fn seed_json(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let (status, body) = self.json(method, path, body);
        (status, seed_members(body))
    }
}

/// Sends signal `name` (`TERM`, `KILL`, `STOP`, …) to process `pid`; fails if `kill` does.
pub fn send_signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid}");
}

/// Asserts that an error answer's `detail` contains `text` (the answer printed if not).
#[track_caller]
pub fn assert_detail_contains(body: &serde_json::Value, text: &str) {
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(detail.contains(text), "no {text:?} in the detail of {body}");
}

/// `body` with only the members the seed project's answers had (see [`Kvd::seed_json`]).
pub fn seed_members(body: serde_json::Value) -> serde_json::Value {
    match body {
        serde_json::Value::Object(members) => members
            .into_iter()
            .filter(|(name, _)| {
                ["key", "value", "encoding", "status", "id", "detail"].contains(&name.as_str())
            })
            .collect(),
        other => other,
    }
}

impl Drop for Kvd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.stderr_path);
    }
}

/// Waits for `child` to exit, failing the test after [`DEADLINE`].
pub fn wait_with_deadline(mut child: Child) -> ExitStatus {
    let pid = child.id();
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(child.wait());
    });
    receiver
        .recv_timeout(DEADLINE)
        .unwrap_or_else(|_| panic!("kvd (pid {pid}) did not exit in time"))
        .expect("wait")
}

/// The value of the unlabelled metric `name` in a `/metrics` answer's text, if it is there.
pub fn metric_value<T: std::str::FromStr>(metrics: &str, name: &str) -> Option<T> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "not JSON ({error}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// A keep-alive HTTP/1.1 connection: many requests, one after the other.
pub struct Connection {
    reader: BufReader<TcpStream>,
    address: SocketAddr,
}

impl Connection {
    pub fn open(address: SocketAddr) -> std::io::Result<Connection> {
        let stream = TcpStream::connect(address)?;
        stream.set_read_timeout(Some(DEADLINE))?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            reader: BufReader::new(stream),
            address,
        })
    }

    /// Sends one request (a JSON body when given) and reads its answer. Any failure — the
    /// server died, closed the connection, answered garbage — is an error.
    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> std::io::Result<Answer> {
        let body = body.unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.address,
            body.len()
        );
        let stream = self.reader.get_mut();
        stream.write_all(format!("{head}{body}").as_bytes())?;
        read_answer(&mut self.reader)
    }
}

/// Reads one response with a `Content-Length` body from a keep-alive connection.
pub fn read_answer(reader: &mut impl BufRead) -> std::io::Result<Answer> {
    let bad = |what: &str| std::io::Error::other(format!("bad response: {what}"));
    let mut status_line = String::new();
    if reader.read_line(&mut status_line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|status| status.parse().ok())
        .ok_or_else(|| bad(&status_line))?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').ok_or_else(|| bad(line))?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let mut answer = Answer {
        status,
        headers,
        body: Vec::new(),
    };
    let length: usize = answer
        .header("content-length")
        .and_then(|length| length.parse().ok())
        .ok_or_else(|| bad("no Content-Length"))?;
    answer.body = vec![0; length];
    reader.read_exact(&mut answer.body)?;
    Ok(answer)
}

/// One request on a fresh connection (`Connection: close`), read to the end.
pub fn request(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> std::io::Result<Answer> {
    request_within(address, method, path, headers, body, DEADLINE)
}

/// [`request`], giving up after `timeout` (to connect, to send, and for each read): a paused
/// or cut-off node does not hold the test up.
pub fn request_within(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> std::io::Result<Answer> {
    let mut stream = TcpStream::connect_timeout(&address, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let body = body.unwrap_or_default();
    if !body.is_empty() || method == "PUT" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw).ok_or_else(|| {
        std::io::Error::other(format!("bad response: {:?}", String::from_utf8_lossy(&raw)))
    })
}

fn parse_response(raw: &[u8]) -> Option<Answer> {
    let head_end = raw.windows(4).position(|window| window == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..head_end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
        .collect();
    let body = raw[head_end + 4..].to_vec();
    let answer = Answer {
        status,
        headers,
        body,
    };
    if let Some(length) = answer.header("content-length") {
        if length.parse::<usize>().ok()? != answer.body.len() {
            return None;
        }
    }
    Some(answer)
}

/// A test's size knob: the env variable `name` as a number, else `default`.
pub fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number")),
        Err(_) => default,
    }
}

/// Runs kvd with `args` until it exits (killed after the harness deadline: the test fails);
/// its exit status and stderr.
pub fn run_until_exit(
    args: &[String],
    data_dir: &std::path::Path,
) -> (std::process::ExitStatus, String) {
    run_until_exit_with_env(args, data_dir, &[])
}

/// [`run_until_exit`] with environment variables set for kvd.
pub fn run_until_exit_with_env(
    args: &[String],
    data_dir: &std::path::Path,
    env: &[(&str, &str)],
) -> (std::process::ExitStatus, String) {
    let stderr_path = data_dir.with_extension("stderr");
    let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = kvd_command(&args)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn kvd");
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "kvd kept running: {}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    (
        status,
        std::fs::read_to_string(&stderr_path).unwrap_or_default(),
    )
}

/// Writes `value` — a node's JSON state file as read (`node.meta`), edited — to `path`
/// sealed again with its CRC-32C, as a node writes it (`kv_wal::sealed_json`): what a file
/// copied from another directory looks like, which the checksum alone does not refuse.
pub fn write_resealed_json(path: &std::path::Path, mut value: serde_json::Value) -> Vec<u8> {
    value.as_object_mut().expect("an object").remove("crc32c");
    let sealed = kv_wal::sealed_json::seal(&serde_json::to_vec_pretty(&value).expect("JSON"));
    std::fs::write(path, &sealed).expect("write the file");
    sealed
}

/// Every thread's stack of process `pid`, as gdb prints it (what a process that hangs was
/// waiting for), or why there is none (no gdb on the machine).
pub fn thread_stacks(pid: u32) -> String {
    let output = Command::new("gdb")
        .args([
            "-p",
            &pid.to_string(),
            "-batch",
            "-nx",
            "-ex",
            "thread apply all bt",
        ])
        .stdin(Stdio::null())
        .output();
    match output {
        Ok(output) => String::from_utf8_lossy(&output.stdout).into_owned(),
        Err(error) => format!("no stacks (cannot run gdb: {error})"),
    }
}

/// The state letter of each thread of process `pid` (`/proc/PID/task/*/stat`): `T` stopped,
/// `S` sleeping, `R` running, …; "gone" if there is no such process.
pub fn thread_states(pid: u32) -> String {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return "gone".to_owned();
    };
    tasks
        .filter_map(|task| {
            let stat = std::fs::read_to_string(task.ok()?.path().join("stat")).ok()?;
            stat.rsplit_once(") ")?.1.chars().next()
        })
        .collect()
}
