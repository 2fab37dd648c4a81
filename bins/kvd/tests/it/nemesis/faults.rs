//! The nemesis: injects one fault at a time (or two at once on larger clusters) into a
//! running cluster, holds it, heals it, and logs what it did and when on the run's clock.
//! Targets and kinds are drawn from shuffled rounds, so every node (the leader included) and
//! every kind of fault is hit within a few faults, in a seeded order. With transfers on, half
//! the faults come 0–150 ms after the nemesis asked for a planned leadership transfer to a
//! random node (`POST /admin/transfer-leader`), so faults land on transfers under way: the
//! leader or the target killed, paused or cut off while the leader waits for the target.

use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::cluster::Cluster;
use super::history::{Clock, Nanos, Outcome, Record};
use super::http::{self, Exchange};
use super::proxy::Partition;
use crate::harness::TestRng;

/// What the nemesis does to its targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// `kill -9`, then a restart with the node's original command line.
    Kill,
    /// SIGSTOP, then SIGCONT.
    Pause,
    /// Cut off from every peer through the proxies, then healed.
    Partition(Partition),
    /// Its disk fails as [`DiskFault`] says (kvd's fault-injection build), then recovers.
    Disk(DiskFault),
}

/// What a [`FaultKind::Disk`] does to a node's disk, while a file exists (kvd's fault build
/// watches it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFault {
    /// Stops answering: every write, `fsync`, creation, rename and removal waits
    /// (`KVD_FAULT_DISK_STALL_FILE`).
    Hang,
    /// Only the `fsync`s wait: writes still reach the page cache
    /// (`KVD_FAULT_FSYNC_STALL_FILE`).
    FsyncHang,
    /// Full: whatever would grow a file fails with `ENOSPC`, nothing changed
    /// (`KVD_FAULT_DISK_FULL_FILE`).
    Full,
}

impl DiskFault {
    pub const ALL: [DiskFault; 3] = [DiskFault::Hang, DiskFault::FsyncHang, DiskFault::Full];

    /// The fault build's variable naming the file that turns this fault on.
    pub fn variable(self) -> &'static str {
        match self {
            DiskFault::Hang => "KVD_FAULT_DISK_STALL_FILE",
            DiskFault::FsyncHang => "KVD_FAULT_FSYNC_STALL_FILE",
            DiskFault::Full => "KVD_FAULT_DISK_FULL_FILE",
        }
    }
}

impl FaultKind {
    pub fn name(&self) -> String {
        match self {
            FaultKind::Kill => "kill -9".to_owned(),
            FaultKind::Pause => "SIGSTOP".to_owned(),
            FaultKind::Partition(Partition::Cut) => "partition (cut)".to_owned(),
            FaultKind::Partition(Partition::BlackHole) => "partition (black hole)".to_owned(),
            FaultKind::Partition(Partition::Deafen) => "partition (one way)".to_owned(),
            FaultKind::Partition(Partition::Slow(delay)) => format!("slow links ({delay:?})"),
            FaultKind::Disk(DiskFault::Hang) => "disk hang (every write)".to_owned(),
            FaultKind::Disk(DiskFault::FsyncHang) => "disk hang (fsyncs)".to_owned(),
            FaultKind::Disk(DiskFault::Full) => "disk full".to_owned(),
        }
    }
}

/// How the nemesis runs.
#[derive(Debug, Clone)]
pub struct NemesisOptions {
    pub kinds: Vec<FaultKind>,
    pub faults_max: u64,
    pub duration: Duration,
    /// How long a fault is held, in ms.
    pub hold_ms: RangeInclusive<u64>,
    /// How long the cluster runs undisturbed between faults, in ms.
    pub quiet_ms: RangeInclusive<u64>,
    /// Nodes hit by one fault at most (a minority: the quorum must still be reachable).
    pub targets_max: usize,
    /// Hit only the node leading at the time (one per fault): every fault is a failover.
    pub leader_only: bool,
    /// Ask for a leadership transfer just before half the faults.
    pub transfers: bool,
}

/// How long the nemesis waits for a transfer's answer (kvd cancels one after 5 s).
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(10);

/// A leadership transfer the nemesis asked for just before a fault.
#[derive(Debug, Clone)]
pub struct TransferRecord {
    pub to: usize,
    /// The status answered (`"200"`, `"409 …"`, `"503 …"`), or why none came.
    pub answer: String,
}

/// One fault as injected.
#[derive(Debug, Clone)]
pub struct FaultRecord {
    pub kind: FaultKind,
    pub nodes: Vec<usize>,
    /// Whether the node leading at the time was among them.
    pub leader_hit: bool,
    pub started: Nanos,
    pub healed: Nanos,
    pub transfer: Option<TransferRecord>,
}

impl std::fmt::Display for FaultRecord {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let millis = |nanos: Nanos| nanos as f64 / 1e6;
        write!(
            formatter,
            "[{:>10.3} .. {:>10.3} ms] {} of nodes {:?}{}",
            millis(self.started),
            millis(self.healed),
            self.kind.name(),
            self.nodes,
            if self.leader_hit { " (the leader)" } else { "" }
        )?;
        match &self.transfer {
            Some(transfer) => write!(
                formatter,
                ", just after asking a transfer to node {}: {}",
                transfer.to, transfer.answer
            ),
            None => Ok(()),
        }
    }
}

/// Draws from shuffled rounds of `0..count`: every item once per round.
struct Rounds {
    count: usize,
    left: Vec<usize>,
}

impl Rounds {
    fn new(count: usize) -> Rounds {
        Rounds {
            count,
            left: Vec::new(),
        }
    }

    fn next(&mut self, rng: &mut TestRng) -> usize {
        if self.left.is_empty() {
            self.left = (0..self.count).collect();
            for index in (1..self.left.len()).rev() {
                let other = rng.in_range(0..=index as u64) as usize;
                self.left.swap(index, other);
            }
        }
        self.left.pop().expect("a round is never empty")
    }
}

fn sleep_ms(rng: &mut TestRng, range: &RangeInclusive<u64>) {
    std::thread::sleep(Duration::from_millis(rng.in_range(range.clone())));
}

/// How far past its duration the nemesis may run to hit every node and every kind once.
const COVERAGE_GRACE: Duration = Duration::from_secs(60);

/// Runs faults until `duration` passes or `faults_max` were injected — but, on a slow machine,
/// past `duration` (by [`COVERAGE_GRACE`] at most) until every node and every kind was hit
/// once, a fault hit the node leading at the time (once out of time, the next faults go to
/// the leader until one has: it moves with failovers and transfers, and a short run could
/// miss it — seen once on five nodes) and, with transfers on, one transfer completed; leaves
/// the cluster healed. `leader` says which node leads now.
pub fn run(
    cluster: &mut Cluster,
    options: &NemesisOptions,
    rng: &mut TestRng,
    clock: Clock,
    mut leader: impl FnMut() -> Option<usize>,
) -> Vec<FaultRecord> {
    let until = Instant::now() + options.duration;
    let coverage = options.kinds.len().max(cluster.nodes.len());
    let mut kinds = Rounds::new(options.kinds.len());
    let mut targets = Rounds::new(cluster.nodes.len());
    let mut faults = Vec::new();
    let mut transfers = Vec::new();
    let transfers_done = Arc::new(AtomicUsize::new(0));
    while (faults.len() as u64) < options.faults_max {
        let now = Instant::now();
        let leader_was_hit = faults.iter().any(|fault: &FaultRecord| fault.leader_hit);
        let covered = faults.len() >= coverage
            && leader_was_hit
            && (!options.transfers || transfers_done.load(Ordering::SeqCst) > 0);
        if now >= until && (covered || now >= until + COVERAGE_GRACE) {
            break;
        }
        sleep_ms(rng, &options.quiet_ms);
        let kind = options.kinds[kinds.next(rng)];
        let count = rng.in_range(1..=options.targets_max as u64) as usize;
        let mut nodes: Vec<usize> = Vec::new();
        // Out of time with no fault on the leader yet (it moves: failovers, transfers): the
        // next one goes to the leader, so every run tests that.
        let leader_only = options.leader_only || (now >= until && !leader_was_hit);
        let leader_now = if leader_only {
            let leader_now = wait_for_leader(&mut leader);
            nodes.push(leader_now);
            Some(leader_now)
        } else {
            while nodes.len() < count {
                let node = targets.next(rng);
                if !nodes.contains(&node) {
                    nodes.push(node);
                }
            }
            leader()
        };
        if options.transfers && rng.in_range(0..=1) == 0 {
            // To a node that does not lead (one that does answers 409).
            let size = cluster.nodes.len() as u64;
            let to = match leader_now {
                Some(leader) => (leader + rng.in_range(1..=size - 1) as usize) % size as usize,
                None => rng.in_range(0..=size - 1) as usize,
            };
            let via = cluster.nodes[rng.in_range(0..=size - 1) as usize].address;
            let done = transfers_done.clone();
            let asking = std::thread::spawn(move || {
                let answer = ask_transfer(via, to);
                if answer == "200" {
                    done.fetch_add(1, Ordering::SeqCst);
                }
                answer
            });
            transfers.push((faults.len(), to, asking));
            sleep_ms(rng, &(0..=150));
        }
        let started = clock.now();
        for &node in &nodes {
            match kind {
                FaultKind::Kill => cluster.kill(node),
                FaultKind::Pause => cluster.pause(node),
                FaultKind::Partition(partition) => cluster.network.isolate(node, partition),
                FaultKind::Disk(fault) => cluster.disk_fault(node, fault, true),
            }
        }
        sleep_ms(rng, &options.hold_ms);
        for &node in &nodes {
            match kind {
                FaultKind::Kill => cluster.start_node(node),
                FaultKind::Pause => cluster.resume(node),
                FaultKind::Partition(_) => cluster.network.heal(),
                FaultKind::Disk(fault) => cluster.disk_fault(node, fault, false),
            }
        }
        let healed = clock.now();
        let leader_hit = leader_now.filter(|leader| nodes.contains(leader));
        faults.push(FaultRecord {
            kind,
            leader_hit: leader_hit.is_some(),
            nodes,
            started,
            healed,
            transfer: None,
        });
    }
    for (index, to, asking) in transfers {
        let answer = asking.join().expect("the transfer's thread");
        faults[index].transfer = Some(TransferRecord { to, answer });
    }
    faults
}

/// Asks node `via` to move the leadership to node `to`; what it answered.
fn ask_transfer(via: std::net::SocketAddr, to: usize) -> String {
    let body = format!("{{\"to\": {to}}}");
    let path = "/admin/transfer-leader";
    match http::once(via, "POST", path, Some(&body), TRANSFER_TIMEOUT) {
        Exchange::Answered(answer) if answer.status == 200 => "200".to_owned(),
        Exchange::Answered(answer) => {
            let body = String::from_utf8_lossy(&answer.body).into_owned();
            format!("{} {body}", answer.status)
        }
        Exchange::NotSent(reason) => format!("not sent ({reason})"),
        Exchange::Lost(reason) => format!("no answer ({reason})"),
    }
}

/// The node `leader` names, once one does (an election may be under way).
fn wait_for_leader(leader: &mut impl FnMut() -> Option<usize>) -> usize {
    let started = Instant::now();
    loop {
        if let Some(node) = leader() {
            return node;
        }
        assert!(
            started.elapsed() < crate::harness::DEADLINE,
            "no leader to hit within the deadline"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// For each fault: how long after it began the first write invoked after it was acknowledged
/// (`None`: none was). With manual failover a fault of the leader lasts at least as long as it
/// is held; with failover it should end with the election.
pub fn unavailability(faults: &[FaultRecord], records: &[Record]) -> Vec<Option<Duration>> {
    let mut acknowledged: Vec<(Nanos, Nanos)> = records
        .iter()
        .filter(|record| record.is_write() && matches!(record.outcome, Outcome::Written { .. }))
        .map(|record| (record.invoked, record.completed))
        .collect();
    acknowledged.sort_unstable();
    faults
        .iter()
        .map(|fault| {
            let first = acknowledged.partition_point(|(invoked, _)| *invoked < fault.started);
            acknowledged[first..]
                .iter()
                .map(|(_, completed)| *completed)
                .min()
                .map(|completed| Duration::from_nanos(completed - fault.started))
        })
        .collect()
}

/// "median m, max x over n" of some durations.
pub fn describe_durations(durations: &[Duration]) -> String {
    if durations.is_empty() {
        return "none".to_owned();
    }
    let mut sorted = durations.to_vec();
    sorted.sort_unstable();
    format!(
        "median {} ms, max {} ms over {}",
        sorted[sorted.len() / 2].as_millis(),
        sorted[sorted.len() - 1].as_millis(),
        sorted.len()
    )
}
