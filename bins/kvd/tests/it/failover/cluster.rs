//! A cluster of real kvd processes for the failover tests. Ports are chosen up front, so a node
//! restarted with its original command gets its address back; node 0 runs `kvd leader`, node N
//! `kvd follower N --leader <node 0>`, as the README starts them. The tests ask the nodes who
//! leads (`/cluster_status`) and follow 307s, as any client would.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};

use crate::harness::{free_port, node_name, request_within, Answer, Kvd, DEADLINE};

/// Asserts that `answer` has `status`, showing its body otherwise; returns it.
pub fn expect_status(answer: Answer, status: u16) -> Answer {
    assert_eq!(
        answer.status,
        status,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    answer
}

/// How long one request to one node may take before the test counts it unanswered.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// One node: its fixed address and data, its original command line, its process if running.
pub struct Node {
    pub address: SocketAddr,
    pub data_dir: PathBuf,
    pub args: Vec<String>,
    /// While a file exists here, the node's fetches fail (`KVD_FAULT_FETCH_BLOCK_FILE`): it
    /// stays alive and heartbeats, but copies nothing.
    block_file: PathBuf,
    process: Option<Kvd>,
    /// Env variables of this node's processes besides the block file's (a fault, say).
    pub env: Vec<(String, String)>,
    /// Stopped by SIGSTOP: asked nothing until SIGCONT.
    paused: bool,
    /// The stderr of this node's earlier processes (kept when a process goes).
    log: String,
}

/// The cluster. If a test fails, its data and every node's log are kept (the path is
/// printed).
pub struct Cluster {
    pub nodes: Vec<Node>,
    dir: Option<tempfile::TempDir>,
}

/// `--write-quorum 2` with a 30 s lag limit and acknowledgement timeout: a write that waits
/// the lag limit out for a node takes 30 s, so a test tells a prompt ISR change from it.
pub const QUORUM_2_LAG_LIMIT_30_S: [&str; 6] = [
    "--write-quorum",
    "2",
    "--lag-limit-ms",
    "30000",
    "--acks-timeout-ms",
    "30000",
];

impl Cluster {
    /// Starts `size` nodes, each with `extra` on its command line, one after the other (each
    /// start returns once the node announced its address, i.e. took its role).
    pub fn start(size: usize, extra: &[&str]) -> Cluster {
        Cluster::start_with(size, |_| extra.iter().map(|arg| arg.to_string()).collect())
    }

    /// [`Cluster::start`], then waits until a leader has every node in its ISR; returns the
    /// cluster, the leader and its epoch.
    pub fn start_in_sync(size: usize, extra: &[&str]) -> (Cluster, usize, u64) {
        let cluster = Cluster::start(size, extra);
        let (leader, epoch) = cluster.wait_for_leader(None);
        cluster.wait_for_leader_status("with every node in its ISR", |status| {
            status["isr"].as_array().map_or(0, Vec::len) == size
        });
        (cluster, leader, epoch)
    }

    /// Starts `size` nodes, node `i` with `extra(i)` on its command line.
    pub fn start_with(size: usize, extra: impl Fn(usize) -> Vec<String>) -> Cluster {
        Cluster::start_first(size, size, extra)
    }

    /// Makes `size` nodes (node `i` with `extra(i)` on its command line) and starts the first
    /// `running` of them; the others can join later ([`Cluster::start_node`]).
    pub fn start_first(
        size: usize,
        running: usize,
        extra: impl Fn(usize) -> Vec<String>,
    ) -> Cluster {
        Cluster::start_first_with_env(size, running, extra, |_| Vec::new())
    }

    /// [`Cluster::start_first`], node `i`'s processes with the env variables `env(i)`.
    pub fn start_first_with_env(
        size: usize,
        running: usize,
        extra: impl Fn(usize) -> Vec<String>,
        env: impl Fn(usize) -> Vec<(String, String)>,
    ) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("kvd-failover-")
            .tempdir()
            .expect("temp dir");
        let addresses: Vec<SocketAddr> = (0..size)
            .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
            .collect();
        let leader_url = format!("http://{}", addresses[0]);
        let nodes = addresses
            .iter()
            .enumerate()
            .map(|(index, address)| {
                let name = node_name(index);
                let data_dir = dir.path().join(&name);
                let mut args: Vec<String> = if index == 0 {
                    vec!["leader".into()]
                } else {
                    vec![
                        "follower".into(),
                        index.to_string(),
                        "--leader".into(),
                        leader_url.clone(),
                    ]
                };
                args.extend([
                    "--listen".into(),
                    address.to_string(),
                    "--data-dir".into(),
                    data_dir.display().to_string(),
                ]);
                args.extend(extra(index));
                Node {
                    address: *address,
                    block_file: dir.path().join(format!("{name}.block")),
                    data_dir,
                    args,
                    process: None,
                    env: env(index),
                    paused: false,
                    log: String::new(),
                }
            })
            .collect();
        let mut cluster = Cluster {
            nodes,
            dir: Some(dir),
        };
        for index in 0..running {
            cluster.start_node(index);
        }
        cluster.wait_until_formed();
        cluster
    }

    /// Waits until the cluster is whole: every running node a member and in the ISR, and as
    /// many controller voters as the controller keeps (an odd number, at most five) — before
    /// that a dead leader may have no quorum to replace it.
    pub fn wait_until_formed(&self) {
        let size = (0..self.nodes.len())
            .filter(|&index| self.is_running(index))
            .count();
        let voters_expected = if size.min(5).is_multiple_of(2) {
            size.min(5) - 1
        } else {
            size.min(5)
        };
        let started = Instant::now();
        loop {
            let formed = self
                .leader_now()
                .and_then(|(leader, _)| self.status(leader))
                .is_some_and(|status| {
                    status["isr"].as_array().map(Vec::len) == Some(size)
                        && status["controller"]["voters"].as_array().map(Vec::len)
                            == Some(voters_expected)
                        && status["controller"]["voters_changing"] == false
                });
            if formed {
                return;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "the cluster did not form within {DEADLINE:?}; statuses:\n{}",
                self.statuses()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts node `index` with its original command line.
    pub fn start_node(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        assert!(node.process.is_none(), "node {index} is running");
        let args: Vec<&str> = node.args.iter().map(String::as_str).collect();
        let block_file = node.block_file.display().to_string();
        let mut env = vec![("KVD_FAULT_FETCH_BLOCK_FILE", block_file.as_str())];
        env.extend(
            node.env
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_str())),
        );
        node.process = Some(Kvd::spawn(&node.data_dir, &args, &env));
    }

    /// Makes node `index`'s fetches fail (`true`) or work again (`false`).
    pub fn block_fetches(&self, index: usize, blocked: bool) {
        let path = &self.nodes[index].block_file;
        if blocked {
            std::fs::write(path, b"").expect("create the block file");
        } else {
            std::fs::remove_file(path).expect("remove the block file");
        }
    }

    /// Waits until `condition` holds for the status of the node leading (whichever it is at
    /// the time); returns that status.
    pub fn wait_for_leader_status(&self, what: &str, condition: impl Fn(&Json) -> bool) -> Json {
        let started = Instant::now();
        loop {
            let status = self.leader_now().and_then(|(index, _)| self.status(index));
            if let Some(status) = status.filter(|status| condition(status)) {
                return status;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "no leader {what} within {DEADLINE:?}; statuses:\n{}",
                self.statuses()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `condition` holds for node `index`'s status; returns that status.
    pub fn wait_for_status(
        &self,
        index: usize,
        what: &str,
        condition: impl Fn(&Json) -> bool,
    ) -> Json {
        let started = Instant::now();
        loop {
            if let Some(status) = self.status(index).filter(|status| condition(status)) {
                return status;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "node {index}: not {what} within {DEADLINE:?}; statuses:\n{}",
                self.statuses()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL.
    pub fn kill_9(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        let mut process = node.process.take().expect("running");
        node.log.push_str(&process.stderr());
        process.kill_9();
        node.paused = false;
    }

    /// SIGTERM, and the exit status.
    pub fn terminate(&mut self, index: usize) -> std::process::ExitStatus {
        let node = &mut self.nodes[index];
        let mut process = node.process.take().expect("running");
        let status = process.terminate();
        // After the exit: what it logged while stopping is kept too.
        node.log.push_str(&process.stderr());
        status
    }

    /// Sends `signal` (`STOP`, `CONT`) to node `index`. A stopped node is asked nothing (its
    /// status is `None`) until it continues.
    pub fn signal(&mut self, index: usize, signal: &str) {
        self.nodes[index].paused = signal == "STOP";
        self.nodes[index]
            .process
            .as_ref()
            .expect("running")
            .signal(signal);
    }

    pub fn is_running(&self, index: usize) -> bool {
        self.nodes[index].process.is_some()
    }

    pub fn url(&self, index: usize) -> String {
        format!("http://{}", self.nodes[index].address)
    }

    /// The node a URL names.
    pub fn index_of_url(&self, url: &str) -> Option<usize> {
        let url = url.trim_end_matches('/');
        (0..self.nodes.len()).find(|&index| self.url(index) == url)
    }

    /// Everything node `index` logged so far, across its processes.
    pub fn log(&self, index: usize) -> String {
        let node = &self.nodes[index];
        let current = node.process.as_ref().map(Kvd::stderr).unwrap_or_default();
        format!("{}{current}", node.log)
    }

    /// One request to node `index`, `Err` if it gives no answer within [`REQUEST_TIMEOUT`].
    pub fn request(
        &self,
        index: usize,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> std::io::Result<Answer> {
        request_within(
            self.nodes[index].address,
            method,
            path,
            &[("Content-Type", "application/json")],
            body.map(str::as_bytes),
            REQUEST_TIMEOUT,
        )
    }

    /// `PUT /key/{key}` with the raw bytes `value` (`application/octet-stream`), given
    /// [`DEADLINE`] to answer: a value of tens of MiB takes a while.
    pub fn put_raw(&self, index: usize, key: &str, value: &[u8]) -> std::io::Result<Answer> {
        request_within(
            self.nodes[index].address,
            "PUT",
            &format!("/key/{key}"),
            &[("Content-Type", "application/octet-stream")],
            Some(value),
            DEADLINE,
        )
    }

    /// `GET {path}` on node `index` for raw bytes (`Accept: application/octet-stream`), given
    /// [`DEADLINE`] to answer.
    pub fn get_raw(&self, index: usize, path: &str) -> std::io::Result<Answer> {
        request_within(
            self.nodes[index].address,
            "GET",
            path,
            &[("Accept", "application/octet-stream")],
            None,
            DEADLINE,
        )
    }

    /// `PUT /key/{key}` `{"value": value}` (the path may carry a query).
    pub fn put(&self, index: usize, key: &str, value: &Json) -> std::io::Result<Answer> {
        let body = json!({ "value": value }).to_string();
        self.request(index, "PUT", &format!("/key/{key}"), Some(&body))
    }

    /// Node `index`'s `/cluster_status`, if it answers.
    pub fn status(&self, index: usize) -> Option<Json> {
        if !self.is_running(index) || self.nodes[index].paused {
            return None;
        }
        let answer = self.request(index, "GET", "/cluster_status", None).ok()?;
        (answer.status == 200).then(|| answer.json())
    }

    /// The running node that leads with a lease, as its own status says, if one does now.
    pub fn leader_now(&self) -> Option<(usize, u64)> {
        (0..self.nodes.len()).find_map(|index| {
            let status = self.status(index)?;
            (status["role"] == "leader" && status["lease_valid"] == true)
                .then(|| (index, status["leader_epoch"].as_u64().unwrap_or(0)))
        })
    }

    /// Waits until a node other than `not` leads with a lease; returns it and its epoch.
    pub fn wait_for_leader(&self, not: Option<usize>) -> (usize, u64) {
        self.leader_within(not).unwrap_or_else(|| {
            panic!(
                "no leader (other than {not:?}) within {DEADLINE:?}; statuses:\n{}\n{}",
                self.statuses(),
                self.warnings()
            )
        })
    }

    /// [`Cluster::wait_for_leader`], `None` after [`DEADLINE`] (the caller says why).
    pub fn leader_within(&self, not: Option<usize>) -> Option<(usize, u64)> {
        let started = Instant::now();
        loop {
            match self.leader_now() {
                Some((index, epoch)) if Some(index) != not => return Some((index, epoch)),
                _ if started.elapsed() >= DEADLINE => return None,
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Asks leader `from` to hand its leadership to node `to` (`POST /admin/transfer-leader`),
    /// expects 200, and waits until `to` leads with a lease; returns its epoch.
    /// A 503 (no active controller answered: an election in the controller's Raft, a member
    /// slow to answer on a loaded machine) is asked again, as a client would; a refusal on a
    /// second try that says the transfer is under way or done counts as asked (the first may
    /// have reached the controller before its answer was lost).
    pub fn transfer_leadership(&self, from: usize, to: usize) -> u64 {
        let body = json!({ "to": to }).to_string();
        let started = Instant::now();
        let mut tries = 0;
        loop {
            tries += 1;
            let answer = self
                .request(from, "POST", "/admin/transfer-leader", Some(&body))
                .expect("answers");
            let detail = String::from_utf8_lossy(&answer.body).into_owned();
            let asked_before = tries > 1
                && (detail.contains(&format!(
                    "a leadership transfer to node {to} is in progress"
                )) || detail.contains(&format!("node {to} already leads")));
            if answer.status == 200 || asked_before {
                break;
            }
            assert!(
                answer.status == 503 && started.elapsed() < DEADLINE,
                "the transfer to node {to} (try {tries}): {} {detail}",
                answer.status
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let (leader, epoch) = self.wait_for_leader(Some(from));
        assert_eq!(
            leader, to,
            "the transfer named node {to}, node {leader} leads"
        );
        epoch
    }

    /// Writes `key` = `value` through node `start`, following 307s and retrying 503s and
    /// unanswered requests until one is acknowledged; returns the node that answered and the
    /// write's id.
    pub fn write(&self, start: usize, key: &str, value: &Json) -> (usize, u64) {
        let started = Instant::now();
        let mut index = start;
        loop {
            if self.nodes[index].paused {
                index = (index + 1) % self.nodes.len();
            }
            match self.put(index, key, value) {
                Ok(answer) if answer.status == 200 => {
                    return (index, answer.json()["id"].as_u64().expect("id"));
                }
                Ok(answer) if answer.status == 307 => {
                    let location = answer.header("location").expect("Location");
                    let base = location.split("/key/").next().unwrap_or_default();
                    index = self.index_of_url(base).unwrap_or(index);
                    continue;
                }
                Ok(_) | Err(_) => {
                    // Not now (an election, a dead node): ask whoever leads.
                    if let Some((leader, _)) = self.leader_now() {
                        index = leader;
                    } else if !self.is_running(index) || self.nodes[index].paused {
                        index = (index + 1) % self.nodes.len();
                    }
                }
            }
            assert!(
                started.elapsed() < DEADLINE,
                "no node took the write of {key} within {DEADLINE:?}; statuses:\n{}",
                self.statuses()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `GET /key/{key}` on node `index` once it applied `min_id`: the value, `None` if absent.
    /// A 503 (a leader not sure of its lease for a moment, a node taking up its role) is
    /// retried until the deadline.
    pub fn read_after(&self, index: usize, key: &str, min_id: u64) -> Option<Json> {
        let path = format!("/key/{key}?min_id={min_id}&wait_ms=20000");
        let started = Instant::now();
        loop {
            let answer =
                request_within(self.nodes[index].address, "GET", &path, &[], None, DEADLINE)
                    .unwrap_or_else(|error| panic!("GET {path} on node {index}: {error}"));
            match answer.status {
                200 => return Some(answer.json()["value"].clone()),
                404 => return None,
                503 if started.elapsed() < DEADLINE => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                status => panic!(
                    "GET {path} on node {index} answered {status}: {}",
                    String::from_utf8_lossy(&answer.body)
                ),
            }
        }
    }

    /// `GET /key/{key}` on node `index` (see [`Cluster::read_after`]).
    pub fn read(&self, index: usize, key: &str) -> Option<Json> {
        self.read_after(index, key, 0)
    }

    /// Every node's last warnings and errors (its WARN and ERROR log lines, 40 at most), for
    /// failure messages: which node said what went wrong.
    pub fn warnings(&self) -> String {
        const LINES_MAX: usize = 40;
        (0..self.nodes.len())
            .map(|index| {
                let log = self.log(index);
                let lines: Vec<&str> = log
                    .lines()
                    .filter(|line| line.contains(" WARN ") || line.contains(" ERROR "))
                    .collect();
                let shown = &lines[lines.len().saturating_sub(LINES_MAX)..];
                format!(
                    "node {index}'s warnings and errors:\n{}\n",
                    shown.join("\n")
                )
            })
            .collect()
    }

    /// Every running node's status, one line each, for failure messages.
    pub fn statuses(&self) -> String {
        (0..self.nodes.len())
            .map(|index| match self.status(index) {
                Some(status) => format!(
                    "node {index}: role {} epoch {} leader {} isr {} lease {} controller leader {}",
                    status["role"],
                    status["leader_epoch"],
                    status["data_leader"],
                    status["isr"],
                    status["lease_valid"],
                    status["controller"]["raft_leader"]
                ),
                None => format!("node {index}: no answer"),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let Some(dir) = self.dir.take() else {
            return;
        };
        for index in 0..self.nodes.len() {
            let _ = std::fs::write(
                dir.path().join(format!("node-{index}.log")),
                self.log(index),
            );
        }
        eprintln!(
            "failover test failed: data and logs kept in {}",
            dir.keep().display()
        );
    }
}
