//! What the clients did: every operation with its invoke and complete times (nanoseconds on
//! one clock shared by every thread of a run) and its outcome, as etcd's robustness tests and
//! Jepsen record them. Every written value is unique in a run, so a read names the write it
//! saw. Linearizability is local (Herlihy & Wing): the checker takes the history key by key.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Instant;

/// A written value: unique in a run (`client << 40 | sequence`).
pub type Value = u64;

/// Nanoseconds since the run's [`Clock`] started.
pub type Nanos = u64;

/// The one clock of a run.
#[derive(Debug, Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    pub fn start() -> Clock {
        Clock(Instant::now())
    }

    pub fn now(&self) -> Nanos {
        self.0.elapsed().as_nanos() as Nanos
    }
}

/// What a client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `PUT /key/{key}` with this value.
    Put(Value),
    /// `DELETE /key/{key}`.
    Delete,
    /// `PUT /key/{key}` of `new` with `If-Match: "<revision>"`, the revision at which the key
    /// held `expected` (from a leader read or an acknowledged write): a compare-and-set. Every
    /// value is written once, so "the key is at that revision" is "the key holds `expected`".
    Cas {
        expected: Value,
        revision: u64,
        new: Value,
    },
    /// `GET /key/{key}` on the node taken as the leader: checked for linearizability.
    Get,
    /// `GET /key/{key}?min_id=N` on a follower: not linearizable by design, checked only for
    /// phantoms (a value nobody wrote, or not yet) and for the `min_id` promise.
    FollowerGet { node: usize, min_id: u64 },
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A PUT or DELETE acknowledged (200) with its log id.
    Written { id: u64 },
    /// A GET's answer: the value, or `None` for 404.
    Read(Option<Value>),
    /// Nothing was written: a 4xx (a DELETE's 404 included: it writes nothing), a 503 that
    /// carries no entry id, a connection refused before the request was sent.
    Failed(String),
    /// It may or may not have taken effect: a timeout, a reset connection, a 5xx that may have
    /// applied (a 503 with the entry's id: durable on the leader, not acknowledged in time).
    Unknown { reason: String, id: Option<u64> },
}

/// One operation of one client.
#[derive(Debug, Clone)]
pub struct Record {
    pub client: usize,
    /// The node that answered (after redirects), or was last tried.
    pub node: usize,
    pub key: String,
    pub op: Op,
    pub invoked: Nanos,
    pub completed: Nanos,
    pub outcome: Outcome,
}

impl Record {
    /// The log id this write got, when the client learned it.
    pub fn write_id(&self) -> Option<u64> {
        match &self.outcome {
            Outcome::Written { id } => Some(*id),
            Outcome::Unknown { id, .. } => *id,
            _ => None,
        }
    }

    pub fn is_write(&self) -> bool {
        matches!(self.op, Op::Put(_) | Op::Delete | Op::Cas { .. })
    }

    /// The value this operation writes, if it writes one.
    pub fn written_value(&self) -> Option<Value> {
        match self.op {
            Op::Put(value) | Op::Cas { new: value, .. } => Some(value),
            _ => None,
        }
    }

    /// A compare-and-set refused because the key was not at its revision (412): it wrote
    /// nothing, and says the key did not hold the expected value when it was decided.
    pub fn is_refused_cas(&self) -> bool {
        matches!((self.op, &self.outcome), (Op::Cas { .. }, Outcome::Failed(reason)) if reason.starts_with("412"))
    }

    /// A write that may have taken effect (acknowledged or unknown).
    pub fn may_have_written(&self) -> bool {
        self.is_write() && !matches!(self.outcome, Outcome::Failed(_))
    }
}

impl fmt::Display for Record {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = |nanos: Nanos| nanos as f64 / 1e6;
        let op = match self.op {
            Op::Put(value) => format!("PUT {value:#x}"),
            Op::Delete => "DELETE".to_owned(),
            Op::Cas {
                expected,
                revision,
                new,
            } => format!("PUT {new:#x} if {expected:#x} (If-Match \"{revision}\")"),
            Op::Get => "GET (leader)".to_owned(),
            Op::FollowerGet { node, min_id } => format!("GET n{node} min_id={min_id}"),
        };
        let outcome = match &self.outcome {
            Outcome::Written { id } => format!("ok id {id}"),
            Outcome::Read(Some(value)) => format!("read {value:#x}"),
            Outcome::Read(None) => "read not-found".to_owned(),
            Outcome::Failed(reason) => format!("failed ({reason})"),
            Outcome::Unknown { reason, id } => match id {
                Some(id) => format!("unknown, id {id} ({reason})"),
                None => format!("unknown ({reason})"),
            },
        };
        write!(
            formatter,
            "[{:>10.3} .. {:>10.3} ms] c{} n{} {} {op} -> {outcome}",
            millis(self.invoked),
            millis(self.completed),
            self.client,
            self.node,
            self.key
        )
    }
}

/// The records of a run, grouped by key (in invoke order within a key).
pub fn by_key(records: &[Record]) -> BTreeMap<&str, Vec<&Record>> {
    let mut keys: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for record in records {
        keys.entry(record.key.as_str()).or_default().push(record);
    }
    for records in keys.values_mut() {
        records.sort_by_key(|record| (record.invoked, record.completed));
    }
    keys
}

/// Operations counted by kind and outcome, for the run's summary line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    pub writes_ok: u64,
    pub writes_failed: u64,
    pub writes_unknown: u64,
    /// Of the writes: compare-and-sets acknowledged, and refused (412).
    pub cas_ok: u64,
    pub cas_refused: u64,
    pub reads_ok: u64,
    pub reads_not_found: u64,
    pub reads_failed: u64,
    pub follower_reads_ok: u64,
    pub follower_reads_failed: u64,
}

impl Counts {
    pub fn of(records: &[Record]) -> Counts {
        let mut counts = Counts::default();
        for record in records {
            let cas = matches!(record.op, Op::Cas { .. });
            match (record.op, &record.outcome) {
                (_, Outcome::Written { .. }) if record.is_write() => {
                    counts.writes_ok += 1;
                    counts.cas_ok += u64::from(cas);
                }
                (_, Outcome::Failed(_)) if record.is_write() => {
                    counts.writes_failed += 1;
                    counts.cas_refused += u64::from(record.is_refused_cas());
                }
                (Op::Put(_) | Op::Delete | Op::Cas { .. }, _) => counts.writes_unknown += 1,
                (Op::Get, Outcome::Read(Some(_))) => counts.reads_ok += 1,
                (Op::Get, Outcome::Read(None)) => counts.reads_not_found += 1,
                (Op::Get, _) => counts.reads_failed += 1,
                (Op::FollowerGet { .. }, Outcome::Read(_)) => counts.follower_reads_ok += 1,
                (Op::FollowerGet { .. }, _) => counts.follower_reads_failed += 1,
            }
        }
        counts
    }
}

impl fmt::Display for Counts {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "writes: {} acknowledged, {} failed, {} unknown (compare-and-sets: {} acknowledged, \
             {} refused); leader reads: {} values, {} not-found, {} failed/timed out; follower \
             reads: {} answered, {} failed/timed out",
            self.writes_ok,
            self.writes_failed,
            self.writes_unknown,
            self.cas_ok,
            self.cas_refused,
            self.reads_ok,
            self.reads_not_found,
            self.reads_failed,
            self.follower_reads_ok,
            self.follower_reads_failed
        )
    }
}
