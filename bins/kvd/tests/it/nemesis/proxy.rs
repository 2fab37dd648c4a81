//! Partitions without privileges: a fault-injecting TCP proxy for every ordered pair of nodes.
//!
//! Node `i` reaches node `j` only through the proxy of link `(i, j)` (today: a follower's
//! `--leader URL` names the proxy of its link to the leader; controller peers will be given
//! proxy URLs the same way), while clients talk to the nodes directly. Each link can be
//!
//! - **cut**: every open connection is closed and new ones are closed at once (a REJECT
//!   rule: the node sees errors at once);
//! - **stalled** in either direction: bytes are held, not lost, until the link heals (to TCP a
//!   black hole looks like this: nothing arrives, the connection stays open, and what was sent
//!   arrives once the network heals — if neither end gave up meanwhile);
//! - **delayed** in either direction: each chunk waits before it is passed on, order kept.
//!
//! "Forward" is the direction from the node that connects (`i`) to the one it reaches (`j`):
//! a follower's fetch requests; "backward" carries the answers.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// What a direction of a link does with the bytes it is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Pass,
    /// Each chunk waits this long before it is passed on.
    Delay(Duration),
    /// Bytes are held until the direction flows again.
    Stall,
}

/// How long a stalled pump sleeps before it looks again at its link (it is also woken at once
/// by every change).
const STALL_RECHECK: Duration = Duration::from_millis(100);
/// How long the proxy waits for the node behind it to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const CHUNK_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy)]
struct Faults {
    forward: Flow,
    backward: Flow,
    refuse: bool,
}

const HEALTHY: Faults = Faults {
    forward: Flow::Pass,
    backward: Flow::Pass,
    refuse: false,
};

/// One proxied connection: both sockets, and whether the link closed it.
struct Connection {
    inbound: TcpStream,
    outbound: TcpStream,
    closed: Arc<AtomicBool>,
}

struct Shared {
    faults: Mutex<Faults>,
    changed: Condvar,
    connections: Mutex<BTreeMap<u64, Connection>>,
    next_connection: AtomicU64,
    stopping: AtomicBool,
    /// Connections accepted and passed on (for the run's summary).
    accepted: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A proxy in front of one node, on an ephemeral port of 127.0.0.1.
pub struct Proxy {
    address: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Proxy {
    pub fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a proxy");
        let address = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            faults: Mutex::new(HEALTHY),
            changed: Condvar::new(),
            connections: Mutex::new(BTreeMap::new()),
            next_connection: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
        });
        let acceptor = {
            let shared = shared.clone();
            std::thread::spawn(move || accept_loop(listener, target, shared))
        };
        Proxy {
            address,
            shared,
            acceptor: Some(acceptor),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// Sets what each direction does; the connections stay open.
    pub fn set(&self, forward: Flow, backward: Flow) {
        let mut faults = lock(&self.shared.faults);
        faults.forward = forward;
        faults.backward = backward;
        self.shared.changed.notify_all();
    }

    /// Closes every open connection and closes new ones at once, until [`Proxy::heal`].
    pub fn cut(&self) {
        lock(&self.shared.faults).refuse = true;
        self.close_all();
    }

    /// Back to passing everything at once.
    pub fn heal(&self) {
        *lock(&self.shared.faults) = HEALTHY;
        self.shared.changed.notify_all();
    }

    fn close_all(&self) {
        for connection in lock(&self.shared.connections).values() {
            connection.closed.store(true, Ordering::SeqCst);
            let _ = connection.inbound.shutdown(Shutdown::Both);
            let _ = connection.outbound.shutdown(Shutdown::Both);
        }
        self.shared.changed.notify_all();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.close_all();
        // Wake the acceptor from `accept` with a connection of our own.
        let _ = TcpStream::connect_timeout(&self.address, CONNECT_TIMEOUT);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: TcpListener, target: SocketAddr, shared: Arc<Shared>) {
    for inbound in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(inbound) = inbound else { continue };
        if lock(&shared.faults).refuse {
            drop(inbound);
            continue;
        }
        let Ok(outbound) = TcpStream::connect_timeout(&target, CONNECT_TIMEOUT) else {
            continue;
        };
        let _ = inbound.set_nodelay(true);
        let _ = outbound.set_nodelay(true);
        let id = shared.next_connection.fetch_add(1, Ordering::Relaxed);
        let closed = Arc::new(AtomicBool::new(false));
        let (Ok(inbound_reader), Ok(outbound_reader)) = (inbound.try_clone(), outbound.try_clone())
        else {
            continue;
        };
        let (Ok(inbound_writer), Ok(outbound_writer)) = (inbound.try_clone(), outbound.try_clone())
        else {
            continue;
        };
        lock(&shared.connections).insert(
            id,
            Connection {
                inbound,
                outbound,
                closed: closed.clone(),
            },
        );
        shared.accepted.fetch_add(1, Ordering::Relaxed);
        let pumps_left = Arc::new(AtomicU64::new(2));
        for (from, to, forward) in [
            (inbound_reader, outbound_writer, true),
            (outbound_reader, inbound_writer, false),
        ] {
            let shared = shared.clone();
            let closed = closed.clone();
            let pumps_left = pumps_left.clone();
            std::thread::spawn(move || {
                pump(from, to, forward, &shared, &closed);
                if pumps_left.fetch_sub(1, Ordering::SeqCst) == 1 {
                    lock(&shared.connections).remove(&id);
                }
            });
        }
    }
}

/// Copies bytes from `from` to `to` as the link's faults say, until either end closes.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    forward: bool,
    shared: &Shared,
    closed: &AtomicBool,
) {
    let mut buffer = vec![0u8; CHUNK_BYTES];
    loop {
        let length = match from.read(&mut buffer) {
            Ok(0) => {
                // A clean end of this direction: pass the half-close on.
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(length) => length,
            Err(_) => break,
        };
        let Some(flow) = wait_for_flow(shared, forward, closed) else {
            break;
        };
        if let Flow::Delay(delay) = flow {
            std::thread::sleep(delay);
        }
        if to.write_all(&buffer[..length]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// Waits while this direction is stalled; `None` once the connection is closed by the link or
/// the proxy stops.
fn wait_for_flow(shared: &Shared, forward: bool, closed: &AtomicBool) -> Option<Flow> {
    let mut faults = lock(&shared.faults);
    loop {
        if closed.load(Ordering::SeqCst) || shared.stopping.load(Ordering::SeqCst) {
            return None;
        }
        let flow = if forward {
            faults.forward
        } else {
            faults.backward
        };
        if flow != Flow::Stall {
            return Some(flow);
        }
        faults = shared
            .changed
            .wait_timeout(faults, STALL_RECHECK)
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .0;
    }
}

/// How a node is cut off from its peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partition {
    /// Every link to and from the node is cut (connections closed, new ones refused).
    Cut,
    /// Every link to and from the node is stalled both ways (a black hole).
    BlackHole,
    /// What the node sends reaches its peers, what they answer does not (and what they send it
    /// on their own links does not arrive).
    Deafen,
    /// Every link to and from the node is slow.
    Slow(Duration),
}

/// A proxy for every ordered pair of nodes.
pub struct Network {
    links: BTreeMap<(usize, usize), Proxy>,
}

impl Network {
    pub fn new(addresses: &[SocketAddr]) -> Network {
        let mut links = BTreeMap::new();
        for from in 0..addresses.len() {
            for (to, address) in addresses.iter().enumerate() {
                if from != to {
                    links.insert((from, to), Proxy::start(*address));
                }
            }
        }
        Network { links }
    }

    /// The link node `from` uses to reach node `to`.
    pub fn link(&self, from: usize, to: usize) -> &Proxy {
        &self.links[&(from, to)]
    }

    /// The URL node `from` is given for node `to`.
    pub fn url(&self, from: usize, to: usize) -> String {
        self.link(from, to).url()
    }

    /// `KVD_FAULT_PEER_ROUTES` for node `from`: every peer's address, and the proxy of the
    /// link `from` reaches it through — so the controller's and the data's traffic between
    /// nodes, which use the addresses the nodes announce, go through the links too.
    pub fn routes(&self, from: usize, addresses: &[SocketAddr]) -> String {
        addresses
            .iter()
            .enumerate()
            .filter(|(to, _)| *to != from)
            .map(|(to, address)| format!("{address}={}", self.link(from, to).address()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Cuts `node` off from every peer as `partition` says.
    pub fn isolate(&self, node: usize, partition: Partition) {
        for ((from, to), proxy) in &self.links {
            let outgoing = *from == node;
            if !outgoing && *to != node {
                continue;
            }
            match partition {
                Partition::Cut => proxy.cut(),
                Partition::BlackHole => proxy.set(Flow::Stall, Flow::Stall),
                Partition::Slow(delay) => proxy.set(Flow::Delay(delay), Flow::Delay(delay)),
                // The node's own requests pass; the answers to them stall. Its peers'
                // requests to it stall.
                Partition::Deafen if outgoing => proxy.set(Flow::Pass, Flow::Stall),
                Partition::Deafen => proxy.set(Flow::Stall, Flow::Pass),
            }
        }
    }

    pub fn heal(&self) {
        for proxy in self.links.values() {
            proxy.heal();
        }
    }

    /// Every proxy's address, with the node it leads to.
    pub fn proxies(&self) -> Vec<(SocketAddr, usize)> {
        self.links
            .iter()
            .map(|((_, to), proxy)| (proxy.address(), *to))
            .collect()
    }

    /// Connections the proxies passed on, over the run.
    pub fn connections_accepted(&self) -> u64 {
        self.links.values().map(Proxy::accepted).sum()
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::time::Instant;

    use super::*;

    /// A line echo server: answers each line it reads with the same line.
    fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        std::thread::spawn(move || {
            for stream in listener.incoming().take(16) {
                let Ok(stream) = stream else { continue };
                std::thread::spawn(move || {
                    let mut writer = stream.try_clone().expect("clone");
                    for line in BufReader::new(stream).lines() {
                        let Ok(line) = line else { return };
                        if writeln!(writer, "{line}").is_err() {
                            return;
                        }
                    }
                });
            }
        });
        address
    }

    fn connect(proxy: &Proxy) -> (TcpStream, BufReader<TcpStream>) {
        let stream = TcpStream::connect(proxy.address()).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        let reader = BufReader::new(stream.try_clone().expect("clone"));
        (stream, reader)
    }

    fn round_trip(
        stream: &mut TcpStream,
        reader: &mut BufReader<TcpStream>,
        text: &str,
    ) -> Option<String> {
        writeln!(stream, "{text}").ok()?;
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(line.trim_end().to_owned()),
        }
    }

    #[test]
    fn a_link_passes_stalls_without_losing_bytes_delays_and_cuts() {
        let proxy = Proxy::start(echo_server());
        let (mut stream, mut reader) = connect(&proxy);
        assert_eq!(
            round_trip(&mut stream, &mut reader, "a").as_deref(),
            Some("a")
        );

        // Stalled answers: nothing arrives, then everything does once healed.
        proxy.set(Flow::Pass, Flow::Stall);
        assert_eq!(round_trip(&mut stream, &mut reader, "b"), None);
        proxy.heal();
        let mut line = String::new();
        reader.read_line(&mut line).expect("the held answer");
        assert_eq!(line.trim_end(), "b");

        let delay = Duration::from_millis(120);
        proxy.set(Flow::Delay(delay), Flow::Pass);
        let started = Instant::now();
        assert_eq!(
            round_trip(&mut stream, &mut reader, "c").as_deref(),
            Some("c")
        );
        assert!(started.elapsed() >= delay);
        proxy.heal();

        // A cut closes the open connection and refuses new ones until healed.
        proxy.cut();
        assert_eq!(round_trip(&mut stream, &mut reader, "d"), None);
        let (mut stream, mut reader) = connect(&proxy);
        assert_eq!(round_trip(&mut stream, &mut reader, "e"), None);
        proxy.heal();
        let (mut stream, mut reader) = connect(&proxy);
        assert_eq!(
            round_trip(&mut stream, &mut reader, "f").as_deref(),
            Some("f")
        );
    }
}
