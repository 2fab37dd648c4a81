//! The cluster under test: real kvd processes on fixed loopback ports, each with the command
//! line it was first started with (every restart replays it exactly, as an operator's service
//! manager would), and a [`Network`] of proxies between them.
//!
//! Node 0 runs `kvd leader` and every other node `kvd follower N --leader <URL of its link to
//! node 0>`; a node restarted with its original command takes the role the controller gives
//! it. Nodes reach each other at the addresses they announce (the controller's metadata); each
//! node is told (`KVD_FAULT_PEER_ROUTES`, [`Network::routes`]) to connect to its link's proxy
//! for each of them, so partitions cut the controller's traffic and the data's alike.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

use super::faults::DiskFault;
use super::http::{self, Exchange};
use super::proxy::Network;
use crate::harness::{free_port, node_name, Kvd, DEADLINE};

/// Cluster settings a scenario chooses.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub nodes: usize,
    pub write_quorum: usize,
}

/// kvd flags every node gets: short timeouts so a fault shows within the run, small segments
/// and frequent snapshots so compaction and snapshot catch-up happen under faults too.
const COMMON_ARGS: [&str; 6] = [
    "--max-segment-size",
    "64K",
    "--snapshot-every-entries",
    "2000",
    "--sync-policy",
    "batch",
];
/// A quorum write that cannot commit answers 503 (with its id) after this long.
pub const ACKS_TIMEOUT_MS: u64 = 1000;
const LEADER_ARGS: [&str; 4] = ["--acks-timeout-ms", "1000", "--follower-down-ms", "2000"];
const FOLLOWER_ARGS: [&str; 2] = ["--fetch-wait-ms", "100"];

/// One node: its address, data and original command line, and its process when running.
pub struct Node {
    pub name: String,
    pub address: SocketAddr,
    pub data_dir: PathBuf,
    /// The command line of the first start; every restart uses it unchanged.
    pub args: Vec<String>,
    process: Option<Kvd>,
    paused: bool,
    /// The stderr of every process of this node so far (kept when a process goes).
    log: String,
    /// Where the file that turns each [`DiskFault`] on goes (`DiskFault::ALL`'s order).
    disk_faults: [PathBuf; 3],
}

impl Node {
    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    fn pid(&self) -> Option<rustix::process::Pid> {
        let pid = self.process.as_ref()?.pid();
        rustix::process::Pid::from_raw(i32::try_from(pid).ok()?)
    }

    fn keep_log(&mut self) {
        if let Some(process) = &self.process {
            self.log.push_str(&process.stderr());
        }
    }
}

/// The nodes and the network between them.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub network: Network,
    /// Kept (not deleted) if the test fails, with each node's log beside its data.
    dir: tempfile::TempDir,
}

/// Node `index`'s command line: node 0 `kvd leader`, the others followers joining through their link.
pub fn command_line(
    index: usize,
    address: SocketAddr,
    data_dir: &Path,
    network: &Network,
    options: &ClusterOptions,
) -> Vec<String> {
    let mut args: Vec<String> = if index == 0 {
        vec!["leader".to_owned()]
    } else {
        vec![
            "follower".to_owned(),
            index.to_string(),
            "--leader".to_owned(),
            network.url(index, 0),
        ]
    };
    args.extend([
        "--listen".to_owned(),
        address.to_string(),
        "--data-dir".to_owned(),
        data_dir.display().to_string(),
    ]);
    args.extend(COMMON_ARGS.iter().map(|arg| arg.to_string()));
    if index == 0 {
        args.extend(LEADER_ARGS.iter().map(|arg| arg.to_string()));
        args.extend([
            "--write-quorum".to_owned(),
            options.write_quorum.to_string(),
        ]);
    } else {
        args.extend(FOLLOWER_ARGS.iter().map(|arg| arg.to_string()));
    }
    args
}

impl Cluster {
    /// Starts every node and waits until the leader sees every follower healthy.
    pub fn start(options: &ClusterOptions) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("kvd-nemesis-")
            .tempdir()
            .expect("temp dir");
        let addresses: Vec<SocketAddr> = (0..options.nodes)
            .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
            .collect();
        let network = Network::new(&addresses);
        let nodes: Vec<Node> = addresses
            .iter()
            .enumerate()
            .map(|(index, address)| {
                let name = node_name(index);
                let data_dir = dir.path().join(&name);
                let disk_faults = DiskFault::ALL
                    .map(|fault| dir.path().join(format!("{name}.{fault:?}").to_lowercase()));
                Node {
                    args: command_line(index, *address, &data_dir, &network, options),
                    data_dir,
                    name,
                    address: *address,
                    process: None,
                    paused: false,
                    log: String::new(),
                    disk_faults,
                }
            })
            .collect();
        let mut cluster = Cluster {
            nodes,
            network,
            dir,
        };
        for index in 0..cluster.nodes.len() {
            cluster.start_node(index);
        }
        cluster.wait_until_settled(0, DEADLINE);
        cluster
    }

    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|node| node.address).collect()
    }

    /// Starts node `index` with its original command line.
    pub fn start_node(&mut self, index: usize) {
        let addresses = self.addresses();
        let node = &mut self.nodes[index];
        assert!(node.process.is_none(), "{} is running", node.name);
        let args: Vec<&str> = node.args.iter().map(String::as_str).collect();
        let routes = self.network.routes(index, &addresses);
        let paths = node
            .disk_faults
            .clone()
            .map(|path| path.display().to_string());
        let mut env = vec![("KVD_FAULT_PEER_ROUTES", routes.as_str())];
        for (fault, path) in DiskFault::ALL.iter().zip(&paths) {
            env.push((fault.variable(), path.as_str()));
        }
        node.process = Some(Kvd::spawn(&node.data_dir, &args, &env));
        node.paused = false;
    }

    /// Turns `fault` on (`true`) or off (`false`) for node `index`'s disk.
    pub fn disk_fault(&self, index: usize, fault: DiskFault, on: bool) {
        let at = DiskFault::ALL.iter().position(|each| *each == fault);
        let path = &self.nodes[index].disk_faults[at.expect("every fault is in ALL")];
        if on {
            std::fs::write(path, b"").expect("create the fault's file");
        } else {
            std::fs::remove_file(path).expect("remove the fault's file");
        }
    }

    /// `kill -9`: no chance to sync or save anything.
    pub fn kill(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        node.keep_log();
        let mut process = node.process.take().expect("running");
        process.kill_9();
        node.paused = false;
    }

    /// SIGSTOP: the process keeps its sockets and answers nothing.
    pub fn pause(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        let pid = node.pid().expect("running");
        rustix::process::kill_process(pid, rustix::process::Signal::STOP).expect("SIGSTOP");
        node.paused = true;
    }

    /// SIGCONT.
    pub fn resume(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        let pid = node.pid().expect("running");
        rustix::process::kill_process(pid, rustix::process::Signal::CONT).expect("SIGCONT");
        node.paused = false;
    }

    /// Undoes every fault: the network heals, disks recover, paused nodes resume, dead nodes
    /// restart.
    pub fn heal(&mut self) {
        self.network.heal();
        for node in &self.nodes {
            for path in node.disk_faults.iter().filter(|path| path.exists()) {
                std::fs::remove_file(path).expect("remove the fault's file");
            }
        }
        for index in 0..self.nodes.len() {
            if self.nodes[index].paused {
                self.resume(index);
            }
            if !self.nodes[index].is_running() {
                self.start_node(index);
            }
        }
    }

    /// Waits until the leader sees every other node as a healthy follower and has committed
    /// its whole log (every write still waiting for its quorum included); returns its commit id.
    /// It asks node `leader` first and follows the leadership if it moves meanwhile (after a
    /// heal the controller may still elect another node once).
    pub fn wait_until_settled(&self, leader: usize, deadline: Duration) -> u64 {
        self.try_wait_until_settled(leader, deadline)
            .unwrap_or_else(|failure| panic!("{failure}"))
    }

    /// [`Cluster::wait_until_settled`], or why it did not settle (every node's status).
    pub fn try_wait_until_settled(&self, leader: usize, deadline: Duration) -> Result<u64, String> {
        let until = Instant::now() + deadline;
        let mut leader = self.nodes[leader].address;
        let followers = self.nodes.len() - 1;
        let mut last = Json::Null;
        loop {
            if let Some(status) = cluster_status(leader) {
                // Not (or no longer) the leader: ask the one it names next time.
                let named = status["data_leader"].as_u64().map(|id| id as usize);
                if let Some(node) = named.and_then(|index| self.nodes.get(index)) {
                    if status["role"] != "leader" {
                        leader = node.address;
                    }
                }
                let healthy = status["followers"].as_array().map_or(0, |list| {
                    list.iter()
                        .filter(|follower| follower["status"] == "healthy")
                        .count()
                });
                let commit_id = status["commit_id"].as_u64();
                if let Some(commit_id) = commit_id {
                    if healthy >= followers && Some(commit_id) == status["last_id"].as_u64() {
                        return Ok(commit_id);
                    }
                }
                last = status;
            }
            if Instant::now() >= until {
                let statuses: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|node| match cluster_status(node.address) {
                        Some(status) => format!("{}: {status}", node.name),
                        None => format!("{}: no answer", node.name),
                    })
                    .collect();
                return Err(format!(
                    "the cluster did not settle within {deadline:?}; leader's last status: \
                     {last}\nevery node now:\n{}",
                    statuses.join("\n")
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Keeps the data directories (and writes every node's log beside them) for a post-mortem.
    pub fn keep_for_post_mortem(&mut self) -> PathBuf {
        for node in &mut self.nodes {
            node.keep_log();
            let _ = std::fs::write(
                self.dir.path().join(format!("{}.log", node.name)),
                &node.log,
            );
        }
        self.dir.disable_cleanup(true);
        self.dir.path().to_owned()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // A stopped process still dies of SIGKILL; resume anyway so nothing lingers stopped.
        for index in 0..self.nodes.len() {
            if self.nodes[index].paused {
                self.resume(index);
            }
        }
    }
}

/// A node's `/cluster_status`, or `None` if it does not answer in time.
pub fn cluster_status(address: SocketAddr) -> Option<Json> {
    match http::once(
        address,
        "GET",
        "/cluster_status",
        None,
        Duration::from_secs(2),
    ) {
        Exchange::Answered(answer) if answer.status == 200 => {
            serde_json::from_slice(&answer.body).ok()
        }
        _ => None,
    }
}
