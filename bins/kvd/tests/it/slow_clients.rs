//! Slow and idle clients cannot tie the real binary up.
//!
//! - Slowloris: 300 connections trickle header bytes for `KVD_SLOWLORIS_SECS` (default 30 s,
//!   the issue's figure) and reconnect whenever the server cuts them; meanwhile a probe asks
//!   `/health` every 100 ms on a fresh connection. Every probe must succeed (their latency is
//!   measured and printed, not asserted), and the server's header timeout must have cut
//!   trickling connections.
//! - 5,000 idle connections (`KVD_IDLE_CONNECTIONS`): all accepted (`--max-connections 6000`),
//!   kvd's resident memory read from `/proc/PID/status` before and after and bounded per
//!   connection, probes still answered, and every connection released once the clients go.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::{metric_value, request, Kvd, DEADLINE};

const SLOWLORIS_CONNECTIONS: usize = 300;
const SLOWLORIS_SECS_DEFAULT: u64 = 30;
/// Each trickling connection sends one byte per tick.
const TRICKLE_TICK: Duration = Duration::from_millis(500);
const PROBE_EVERY: Duration = Duration::from_millis(100);
const IDLE_CONNECTIONS_DEFAULT: usize = 5000;
/// Resident memory an idle connection may cost kvd, at most.
const IDLE_CONNECTION_BYTES_MAX: u64 = 64 << 10;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).map_or(default, |text| {
        text.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number"))
    })
}

/// A request head that never ends: the request line, then header lines forever.
fn endless_head_byte(index: usize) -> u8 {
    const START: &[u8] = b"GET /health HTTP/1.1\r\nHost: kvd\r\n";
    const LINE: &[u8] = b"X-Trickle: slow\r\n";
    match START.get(index) {
        Some(&byte) => byte,
        None => LINE[(index - START.len()) % LINE.len()],
    }
}

/// One trickling connection.
struct Trickler {
    stream: TcpStream,
    sent_bytes: usize,
}

impl Trickler {
    fn connect(address: SocketAddr) -> Trickler {
        let stream = TcpStream::connect(address).expect("connect");
        stream.set_nonblocking(true).expect("nonblocking");
        Trickler {
            stream,
            sent_bytes: 0,
        }
    }
    /// Whether the server has answered or closed the connection.
    fn cut_by_server(&mut self) -> bool {
        let mut buffer = [0u8; 1024];
        match self.stream.read(&mut buffer) {
            // An answer (a 408) or the end of the stream: either way, cut.
            Ok(_read_bytes) => true,
            Err(error) => error.kind() != ErrorKind::WouldBlock,
        }
    }
    fn send_next_byte(&mut self) -> bool {
        let byte = endless_head_byte(self.sent_bytes);
        match self.stream.write(&[byte]) {
            Ok(1) => {
                self.sent_bytes += 1;
                true
            }
            _ => false,
        }
    }
}

/// Latencies of `/health` probes, in order.
struct Probes {
    latencies: Vec<Duration>,
}

impl Probes {
    fn summary(&self) -> String {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        let at = |fraction: f64| {
            sorted
                .get(((sorted.len() as f64 - 1.0) * fraction).round() as usize)
                .copied()
                .unwrap_or_default()
        };
        format!(
            "{} probes, p50 {:.1?}, p99 {:.1?}, max {:.1?}",
            sorted.len(),
            at(0.5),
            at(0.99),
            at(1.0)
        )
    }
}

/// Probes `/health` every [`PROBE_EVERY`] until `stop`; every probe must answer 200.
fn probe_health_until(
    address: SocketAddr,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Probes> {
    std::thread::spawn(move || {
        let mut latencies = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            let answer = request(address, "GET", "/health", &[], None)
                .unwrap_or_else(|error| panic!("health probe {}: {error}", latencies.len()));
            assert_eq!(answer.status, 200, "health probe {}", latencies.len());
            latencies.push(started.elapsed());
            // Pacing the probes, not waiting for anything.
            std::thread::sleep(PROBE_EVERY.saturating_sub(started.elapsed()));
        }
        Probes { latencies }
    })
}

#[test]
fn slowloris_connections_are_cut_and_health_probes_keep_succeeding() {
    let duration = Duration::from_secs(env_number("KVD_SLOWLORIS_SECS", SLOWLORIS_SECS_DEFAULT));
    let dir = tempfile::tempdir().expect("temp dir");
    // The default header timeout (10 s) and connection limit (1024).
    let kvd = Kvd::start(&dir.path().join("leader"), &[], &[]);
    let address = kvd.address;
    let stop = Arc::new(AtomicBool::new(false));
    let probes = probe_health_until(address, stop.clone());

    let mut tricklers: Vec<Trickler> = (0..SLOWLORIS_CONNECTIONS)
        .map(|_| Trickler::connect(address))
        .collect();
    let mut cut_by_server = 0u64;
    let mut bytes_trickled = 0u64;
    let started = Instant::now();
    while started.elapsed() < duration {
        let tick_started = Instant::now();
        for trickler in &mut tricklers {
            if trickler.cut_by_server() || !trickler.send_next_byte() {
                cut_by_server += 1;
                *trickler = Trickler::connect(address);
            } else {
                bytes_trickled += 1;
            }
        }
        // Pacing the trickle, not waiting for anything.
        std::thread::sleep(TRICKLE_TICK.saturating_sub(tick_started.elapsed()));
    }
    stop.store(true, Ordering::Relaxed);
    let probes = probes.join().expect("every health probe succeeded");
    println!(
        "slowloris for {duration:?}: {SLOWLORIS_CONNECTIONS} connections, {bytes_trickled} bytes \
         trickled, {cut_by_server} connections cut by the server; health: {}",
        probes.summary()
    );
    assert!(!probes.latencies.is_empty(), "no health probe ran");
    // A connection trickling for longer than the header timeout must have been cut.
    if duration > kv_http::HEADER_READ_TIMEOUT_DEFAULT + Duration::from_secs(2) {
        assert!(
            cut_by_server >= SLOWLORIS_CONNECTIONS as u64,
            "the header timeout cut only {cut_by_server} trickling connections"
        );
    }
    drop(tricklers);
    let (status, _) = kvd.json("PUT", "/key/after", Some(r#"{"value": 1}"#));
    assert_eq!(status, 200, "writes still work");
}

/// kvd's resident set size, from `/proc/PID/status`.
fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().strip_suffix("kB"))
        .and_then(|value| value.trim().parse().ok())
        .expect("VmRSS");
    kib << 10
}

/// The process's soft limit on open files, from `/proc/self/limits`.
fn open_files_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("limits");
    limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(3))
        .and_then(|soft| soft.parse().ok())
        .unwrap_or(u64::MAX)
}

/// `kvd_http_connections_open` from `/metrics`.
fn connections_open(kvd: &Kvd) -> u64 {
    let answer = kvd.request("GET", "/metrics", None);
    metric_value(
        &String::from_utf8_lossy(&answer.body),
        "kvd_http_connections_open",
    )
    .expect("kvd_http_connections_open")
}

/// Waits until `condition` holds, failing after [`DEADLINE`].
fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < DEADLINE,
            "timed out waiting until {what}"
        );
        std::thread::yield_now();
    }
}

#[test]
fn five_thousand_idle_connections_cost_bounded_memory() {
    let count = env_number("KVD_IDLE_CONNECTIONS", IDLE_CONNECTIONS_DEFAULT as u64) as usize;
    let files_needed = count as u64 + 512;
    assert!(
        open_files_limit() >= files_needed,
        "this test opens {count} connections: raise the open files limit (ulimit -n {files_needed})"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let max_connections = (count + 1000).to_string();
    // A long header timeout, so the idle connections stay while they are measured.
    let kvd = Kvd::start(
        &dir.path().join("leader"),
        &[
            "--max-connections",
            &max_connections,
            "--header-read-timeout-ms",
            "120000",
        ],
        &[],
    );
    let resident_before = resident_bytes(kvd.pid());
    let idle: Vec<TcpStream> = (0..count)
        .map(|_| TcpStream::connect(kvd.address).expect("connect"))
        .collect();
    // The probe's own connection counts too.
    wait_until("kvd serves every idle connection", || {
        connections_open(&kvd) > count as u64
    });
    let resident_idle = resident_bytes(kvd.pid());
    let started = Instant::now();
    let (status, _) = kvd.json("GET", "/health", None);
    let probe_latency = started.elapsed();
    assert_eq!(status, 200);
    let (status, _) = kvd.json("PUT", "/key/k", Some(r#"{"value": 1}"#));
    assert_eq!(
        status, 200,
        "writes work with {count} idle connections open"
    );

    drop(idle);
    wait_until("kvd releases the idle connections", || {
        connections_open(&kvd) <= 1
    });
    let resident_after = resident_bytes(kvd.pid());
    let growth_bytes = resident_idle.saturating_sub(resident_before);
    let per_connection_bytes = growth_bytes / count as u64;
    println!(
        "{count} idle connections: kvd RSS {} KiB before, {} KiB with them open (+{} KiB, \
         {per_connection_bytes} B each), {} KiB after they closed; a health probe took \
         {probe_latency:.1?} meanwhile",
        resident_before >> 10,
        resident_idle >> 10,
        growth_bytes >> 10,
        resident_after >> 10
    );
    assert!(
        per_connection_bytes <= IDLE_CONNECTION_BYTES_MAX,
        "an idle connection costs {per_connection_bytes} bytes of kvd's memory"
    );
}
