//! A client: a thread doing PUT, compare-and-set (`PUT` with `If-Match`), DELETE and GET on a
//! small set of keys, one operation at a time, recording each (see [`super::history`]). Values
//! are unique per run. Writes and linearizable reads go to the node the client takes as the
//! leader; reads on followers carry `?min_id=` the highest id acknowledged to this client. A
//! compare-and-set expects the value and revision this client last saw the key at (its leader
//! read's `mod_revision`, or its own acknowledged write's id).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value as Json;

use super::cluster::ACKS_TIMEOUT_MS;
use super::history::{Clock, Op, Outcome, Record, Value};
use super::http::{self, Connections, Exchange};
use crate::harness::{Answer, TestRng};

/// How clients find the node that takes writes and serves linearizable reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaderMode {
    /// Node 0 (`kvd leader`) only: writes and leader reads go there first (writes follow its
    /// 307s; leader reads it answers with a 307 are dropped as unanswered). For comparison
    /// runs: under failover node 0 leads only until its first fault.
    Fixed,
    /// The default: the node `/cluster_status` names as leader (the one claiming the role with
    /// the highest epoch, or the one followers name), moved by every 307; looked up again
    /// after any failure to reach it.
    Discover,
}

/// Appended to a leader read: a node that does not lead (any more) answers it with a 307 (or a
/// 503 while it cannot vouch that it leads), never from its own, possibly stale, state.
const LEADER_READ_QUERY: &str = "?linearizable=true";

/// A write waits for its quorum up to the acks timeout, then gets a 503: give it time for that.
const WRITE_TIMEOUT: Duration = Duration::from_millis(ACKS_TIMEOUT_MS + 1500);
const READ_TIMEOUT: Duration = Duration::from_millis(1000);
/// A follower read waits up to this long for `min_id` to be applied (then 504).
const FOLLOWER_READ_WAIT_MS: u64 = 500;
const FOLLOWER_READ_TIMEOUT: Duration = Duration::from_millis(FOLLOWER_READ_WAIT_MS + 1000);
const DISCOVERY_TIMEOUT: Duration = Duration::from_millis(300);
const REDIRECTS_MAX: usize = 3;
/// After a refused connection a client waits this long before its next operation (pacing, so a
/// dead leader does not turn the run into a connect loop).
const REFUSED_PAUSE: Duration = Duration::from_millis(25);

/// Which addresses lead to which node: the nodes' own and their links' proxies (307s and
/// `/cluster_status` name a leader by the URL its followers were given).
#[derive(Debug, Clone)]
pub struct Directory {
    pub nodes: Vec<SocketAddr>,
    pub proxies: Vec<(SocketAddr, usize)>,
}

impl Directory {
    /// The node a URL (`http://host:port/...`) leads to.
    pub fn node_of_url(&self, url: &str) -> Option<usize> {
        let rest = url.strip_prefix("http://")?;
        let authority = rest.split('/').next()?;
        let address: SocketAddr = authority.parse().ok()?;
        self.nodes
            .iter()
            .position(|node| *node == address)
            .or_else(|| {
                self.proxies
                    .iter()
                    .find(|(proxy, _)| *proxy == address)
                    .map(|(_, node)| *node)
            })
    }
}

/// The keys: a few at a time ("a generation"), replaced by fresh ones after a number of
/// answered operations so that each key's history stays small enough for the checker (its
/// search grows fast with the operations of one key).
pub struct KeySpace {
    keys_per_generation: u64,
    answers_per_generation: u64,
    answered: AtomicU64,
}

impl KeySpace {
    pub fn new(keys_per_generation: u64, answers_per_generation: u64) -> KeySpace {
        KeySpace {
            keys_per_generation,
            answers_per_generation,
            answered: AtomicU64::new(0),
        }
    }

    fn pick(&self, rng: &mut TestRng) -> String {
        let generation = self.answered.load(Ordering::Relaxed) / self.answers_per_generation;
        let key = rng.in_range(0..=self.keys_per_generation - 1);
        format!("g{generation}-k{key}")
    }

    fn count_answer(&self) {
        self.answered.fetch_add(1, Ordering::Relaxed);
    }
}

/// What every client of a run shares.
#[derive(Clone)]
pub struct Shared {
    pub clock: Clock,
    pub directory: Arc<Directory>,
    pub keys: Arc<KeySpace>,
    pub leader_mode: LeaderMode,
    pub stop: Arc<AtomicBool>,
    pub deadline: Instant,
    pub operations_max: u64,
}

pub struct Client {
    id: usize,
    shared: Shared,
    connections: Connections,
    rng: TestRng,
    leader: usize,
    leader_suspect: bool,
    /// The highest id acknowledged to this client: `min_id` of its follower reads.
    session_id: u64,
    sequence: u64,
    /// Per key, the value and revision this client last saw it at.
    seen: HashMap<String, (Value, u64)>,
    records: Vec<Record>,
}

impl Client {
    pub fn new(id: usize, shared: Shared, seed: u64) -> Client {
        let connections = Connections::new(shared.directory.nodes.clone());
        Client {
            id,
            connections,
            rng: TestRng::new(seed),
            leader: 0,
            leader_suspect: shared.leader_mode == LeaderMode::Discover,
            session_id: 0,
            sequence: 0,
            seen: HashMap::new(),
            records: Vec::new(),
            shared,
        }
    }

    /// Runs operations until the run stops, its deadline passes or its budget is spent.
    pub fn run(mut self) -> Vec<Record> {
        for _ in 0..self.shared.operations_max {
            if self.shared.stop.load(Ordering::Relaxed) || Instant::now() >= self.shared.deadline {
                break;
            }
            if self.leader_suspect {
                self.discover_leader();
            }
            let key = self.shared.keys.pick(&mut self.rng);
            let nodes = self.shared.directory.nodes.len() as u64;
            let op = match self.rng.in_range(0..=99) {
                0..=29 => Op::Put(self.next_value()),
                30..=39 => match self.seen.get(&key) {
                    Some(&(expected, revision)) => Op::Cas {
                        expected,
                        revision,
                        new: self.next_value(),
                    },
                    None => Op::Put(self.next_value()),
                },
                40..=49 => Op::Delete,
                50..=84 => Op::Get,
                _ if nodes == 1 => Op::Get,
                _ => {
                    // Any node but the one taken as the leader.
                    let pick = self.rng.in_range(1..=nodes - 1) as usize;
                    let node = (self.leader + pick) % nodes as usize;
                    Op::FollowerGet {
                        node,
                        min_id: self.session_id,
                    }
                }
            };
            let record = self.perform(key, op);
            match &record.outcome {
                Outcome::Written { id } => {
                    self.session_id = self.session_id.max(*id);
                    self.shared.keys.count_answer();
                }
                Outcome::Read(_) => self.shared.keys.count_answer(),
                Outcome::Failed(reason) if reason.starts_with("connect") => {
                    std::thread::sleep(REFUSED_PAUSE);
                }
                _ => {}
            }
            self.records.push(record);
        }
        self.records
    }

    /// A value no operation of the run wrote before.
    fn next_value(&mut self) -> Value {
        self.sequence += 1;
        ((self.id as Value) << 40) | self.sequence
    }

    /// One operation, recorded.
    pub fn perform(&mut self, key: String, op: Op) -> Record {
        let invoked = self.shared.clock.now();
        let (node, outcome) = match op {
            Op::Put(_) | Op::Delete | Op::Cas { .. } => self.write(&key, op),
            Op::Get => {
                let path = format!("/key/{key}{LEADER_READ_QUERY}");
                let node = self.leader;
                let (outcome, revision) = self.read(node, &path, READ_TIMEOUT);
                match (&outcome, revision) {
                    (Outcome::Read(Some(value)), Some(revision)) => {
                        self.seen.insert(key.clone(), (*value, revision));
                    }
                    (Outcome::Read(None), _) => {
                        self.seen.remove(&key);
                    }
                    _ => {}
                }
                (node, outcome)
            }
            Op::FollowerGet { node, min_id } => {
                let path = format!("/key/{key}?min_id={min_id}&wait_ms={FOLLOWER_READ_WAIT_MS}");
                (node, self.read(node, &path, FOLLOWER_READ_TIMEOUT).0)
            }
        };
        // An acknowledged write's id is the key's revision after it.
        match (op, &outcome) {
            (Op::Put(value) | Op::Cas { new: value, .. }, Outcome::Written { id }) => {
                self.seen.insert(key.clone(), (value, *id));
            }
            (Op::Delete, Outcome::Written { .. }) => {
                self.seen.remove(&key);
            }
            _ => {}
        }
        Record {
            client: self.id,
            node,
            key,
            op,
            invoked,
            completed: self.shared.clock.now(),
            outcome,
        }
    }

    fn write(&mut self, key: &str, op: Op) -> (usize, Outcome) {
        let path = format!("/key/{key}");
        let (method, body) = match op {
            Op::Put(value) | Op::Cas { new: value, .. } => {
                ("PUT", Some(format!("{{\"value\":{value}}}")))
            }
            _ => ("DELETE", None),
        };
        let if_match = match op {
            Op::Cas { revision, .. } => Some(format!("\"{revision}\"")),
            _ => None,
        };
        let headers: Vec<(&str, &str)> = if_match
            .iter()
            .map(|value| ("If-Match", value.as_str()))
            .collect();
        let mut node = self.leader;
        for _ in 0..=REDIRECTS_MAX {
            let exchange = self.connections.send(
                node,
                method,
                &path,
                &headers,
                body.as_deref(),
                WRITE_TIMEOUT,
            );
            let answer = match exchange {
                Exchange::Answered(answer) => answer,
                Exchange::NotSent(reason) => {
                    self.suspect(node);
                    return (node, Outcome::Failed(reason));
                }
                Exchange::Lost(reason) => {
                    self.suspect(node);
                    return (node, Outcome::Unknown { reason, id: None });
                }
            };
            if answer.status == 307 {
                // Nothing was written where it was sent; follow it.
                let target = answer
                    .header("location")
                    .and_then(|url| self.shared.directory.node_of_url(url));
                let Some(target) = target else {
                    return (
                        node,
                        Outcome::Failed(format!("307 to {:?}", answer.header("location"))),
                    );
                };
                if self.shared.leader_mode == LeaderMode::Discover {
                    self.leader = target;
                }
                node = target;
                continue;
            }
            return (node, write_outcome(&answer));
        }
        (node, Outcome::Failed("too many redirects".to_owned()))
    }

    /// A GET's outcome, and the key's revision (`mod_revision`) when it was found.
    fn read(&mut self, node: usize, path: &str, timeout: Duration) -> (Outcome, Option<u64>) {
        let exchange = self.connections.send(node, "GET", path, &[], None, timeout);
        if let Exchange::Answered(answer) = &exchange {
            if answer.status == 200 {
                let (value, revision) = read_value(answer);
                return (Outcome::Read(Some(value)), revision);
            }
        }
        (self.read_failure(node, exchange), None)
    }

    /// The outcome of a GET that did not answer 200.
    fn read_failure(&mut self, node: usize, exchange: Exchange) -> Outcome {
        match exchange {
            Exchange::Answered(answer) => match answer.status {
                404 => Outcome::Read(None),
                307 => {
                    // Not the leader: nothing was read; ask the one it names next time.
                    let target = answer
                        .header("location")
                        .and_then(|url| self.shared.directory.node_of_url(url));
                    if let (Some(target), LeaderMode::Discover) = (target, self.shared.leader_mode)
                    {
                        self.leader = target;
                    }
                    Outcome::Failed(format!("307 to {:?}", answer.header("location")))
                }
                status => Outcome::Unknown {
                    reason: format!("{status} {}", detail(&answer)),
                    id: None,
                },
            },
            Exchange::NotSent(reason) => {
                if node == self.leader {
                    self.suspect(node);
                }
                Outcome::Failed(reason)
            }
            Exchange::Lost(reason) => {
                if node == self.leader {
                    self.suspect(node);
                }
                Outcome::Unknown { reason, id: None }
            }
        }
    }

    fn suspect(&mut self, node: usize) {
        if self.shared.leader_mode == LeaderMode::Discover && node == self.leader {
            self.leader_suspect = true;
        }
    }

    /// The node this client takes as the leader.
    pub fn leader(&self) -> usize {
        self.leader
    }

    /// Asks every node who leads; keeps the old guess when nobody answers.
    pub fn discover_leader(&mut self) {
        if let Some(leader) = discover_leader(&self.shared.directory) {
            self.leader = leader;
            self.leader_suspect = false;
        }
    }
}

/// The node that claims leadership with the highest epoch, else the one followers name.
pub fn discover_leader(directory: &Directory) -> Option<usize> {
    let mut claimed: Option<(u64, usize)> = None;
    let mut named = None;
    for (node, address) in directory.nodes.iter().enumerate() {
        let Exchange::Answered(answer) =
            http::once(*address, "GET", "/cluster_status", None, DISCOVERY_TIMEOUT)
        else {
            continue;
        };
        let Ok(status) = serde_json::from_slice::<Json>(&answer.body) else {
            continue;
        };
        if status["role"] == "leader" {
            let epoch = status["epoch"].as_u64().unwrap_or(0);
            if claimed.is_none_or(|(best, _)| epoch > best) {
                claimed = Some((epoch, node));
            }
        } else if let Some(url) = status["leader"].as_str() {
            named = named.or(directory.node_of_url(url));
        }
    }
    claimed.map(|(_, node)| node).or(named)
}

fn write_outcome(answer: &Answer) -> Outcome {
    let body: Json = serde_json::from_slice(&answer.body).unwrap_or(Json::Null);
    let id = body["id"].as_u64();
    match (answer.status, id) {
        (200, Some(id)) => Outcome::Written { id },
        // Durable on the leader, not acknowledged by its quorum in time: it may commit later.
        (503, Some(id)) => Outcome::Unknown {
            reason: format!("503 {}", detail(answer)),
            id: Some(id),
        },
        // A 503 without an id (a poisoned or closed log): nothing was written.
        (503, None) => Outcome::Failed(format!("503 {}", detail(answer))),
        // 507: a full disk refused it, nothing appended (docs/http-api.md).
        (status, _) if (400..500).contains(&status) || status == 507 => {
            Outcome::Failed(format!("{status} {}", detail(answer)))
        }
        (status, _) => Outcome::Unknown {
            reason: format!("{status} {}", detail(answer)),
            id,
        },
    }
}

/// The value a GET answered, and its `mod_revision`; a value that is not one of ours (every
/// write is a number) reads as one nobody wrote, and the checker reports it.
fn read_value(answer: &Answer) -> (Value, Option<u64>) {
    let body = serde_json::from_slice::<Json>(&answer.body).unwrap_or(Json::Null);
    let value = body["value"].as_u64().unwrap_or(Value::MAX);
    (value, body["mod_revision"].as_u64())
}

fn detail(answer: &Answer) -> String {
    serde_json::from_slice::<Json>(&answer.body)
        .ok()
        .and_then(|body| body["detail"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&answer.body).into_owned())
}
