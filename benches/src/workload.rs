//! What the workers send: the workload mix, the operation drawn for each request, and `acks`.
//!
//! `lag` is a write workload with a second step: after each acknowledged PUT to the leader (the
//! first URL) the worker reads the same key from a follower (the other URLs, in turn) with
//! `?min_id=<the write's id>`, which kvd answers once that follower has applied the write. The
//! time from the leader's answer to the follower's is the replication lag of that write.
//!
//! `cas` and `txn` are conditional writes on keys each worker owns (see [`crate::conditional`]):
//! a `PUT` with `If-Match`, and a `POST /txn` of one compare and four operations.

use std::fmt;
use std::str::FromStr;

use rand::Rng;

use crate::BenchError;

/// The request mix of a run, named on the command line as `put`, `get`, `delete`, `mixed:R`,
/// `lag`, `cas` or `txn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Only `PUT /key/{key}`.
    Put,
    /// Only `GET /key/{key}`.
    Get,
    /// `read_percent`% GETs, the rest PUTs, drawn independently for every request.
    Mixed {
        /// The share of GETs, 0 to 100.
        read_percent: u8,
    },
    /// Only `DELETE /key/{key}`.
    Delete,
    /// PUTs to the leader, each followed by a `min_id` read of the same key on a follower:
    /// the replication lag from the leader's acknowledgement to the follower's answer.
    Lag,
    /// Only compare-and-set PUTs: `PUT /key/{key}` with `If-Match: "<mod_revision>"` of the
    /// key's current revision, on keys the worker owns.
    Cas,
    /// Only `POST /txn`: compare an owned key's `mod_revision`, then put it and a second owned
    /// key and get two keys, in one transaction.
    Txn,
}

/// One request's verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// `PUT /key/{key}` with a JSON value: a write.
    Put,
    /// `GET /key/{key}`: a read.
    Get,
    /// `DELETE /key/{key}`: a write.
    Delete,
    /// `PUT /key/{key}` with `If-Match` (or `If-None-Match: *`): a conditional write.
    CasPut,
    /// `POST /txn`: one compare, two puts and two gets.
    Txn,
}

impl Operation {
    /// Whether the operation changes the store (and so goes to the first URL and takes `acks`).
    pub fn is_write(self) -> bool {
        !matches!(self, Operation::Get)
    }

    /// The HTTP method.
    pub fn method(self) -> http::Method {
        match self {
            Operation::Put | Operation::CasPut => http::Method::PUT,
            Operation::Get => http::Method::GET,
            Operation::Delete => http::Method::DELETE,
            Operation::Txn => http::Method::POST,
        }
    }
}

impl Workload {
    /// Draws the operation of the next request.
    pub fn choose_operation(self, rng: &mut impl Rng) -> Operation {
        match self {
            Workload::Put | Workload::Lag => Operation::Put,
            Workload::Get => Operation::Get,
            Workload::Delete => Operation::Delete,
            Workload::Cas => Operation::CasPut,
            Workload::Txn => Operation::Txn,
            Workload::Mixed { read_percent } => {
                if rng.gen_range(0..100u8) < read_percent {
                    Operation::Get
                } else {
                    Operation::Put
                }
            }
        }
    }

    /// Whether the workload ever writes, which decides whether a `--prefill` makes sense.
    pub fn writes(self) -> bool {
        !matches!(self, Workload::Get | Workload::Mixed { read_percent: 100 })
    }

    /// Whether each worker owns its keys and tracks their revisions (`cas`, `txn`).
    pub fn owns_keys(self) -> bool {
        matches!(self, Workload::Cas | Workload::Txn)
    }

    /// How many keys each worker must own at least: `txn` writes two in each request.
    pub fn owned_key_count_min(self) -> u64 {
        match self {
            Workload::Cas => 1,
            Workload::Txn => 2,
            _ => 0,
        }
    }
}

impl FromStr for Workload {
    type Err = BenchError;

    fn from_str(text: &str) -> Result<Workload, BenchError> {
        let invalid = || BenchError::InvalidWorkload {
            text: text.to_string(),
        };
        match text {
            "put" => Ok(Workload::Put),
            "get" => Ok(Workload::Get),
            "delete" => Ok(Workload::Delete),
            "lag" => Ok(Workload::Lag),
            "cas" => Ok(Workload::Cas),
            "txn" => Ok(Workload::Txn),
            _ => {
                let read_percent_text = text.strip_prefix("mixed:").ok_or_else(invalid)?;
                let read_percent: u8 = read_percent_text.parse().map_err(|_| invalid())?;
                if read_percent > 100 {
                    return Err(invalid());
                }
                Ok(Workload::Mixed { read_percent })
            }
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Workload::Put => formatter.write_str("put"),
            Workload::Get => formatter.write_str("get"),
            Workload::Delete => formatter.write_str("delete"),
            Workload::Lag => formatter.write_str("lag"),
            Workload::Cas => formatter.write_str("cas"),
            Workload::Txn => formatter.write_str("txn"),
            Workload::Mixed { read_percent } => write!(formatter, "mixed:{read_percent}"),
        }
    }
}

/// How many nodes must hold a write before kvd answers it; sent as `?acks=` on writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Acks {
    /// The leader alone.
    Leader,
    /// A majority of the nodes.
    Quorum,
    /// Every node.
    All,
}

impl Acks {
    /// The value of the `acks` query parameter.
    pub fn query_value(self) -> &'static str {
        match self {
            Acks::Leader => "leader",
            Acks::Quorum => "quorum",
            Acks::All => "all",
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn parses_and_prints_workloads() {
        for (text, workload) in [
            ("put", Workload::Put),
            ("get", Workload::Get),
            ("delete", Workload::Delete),
            ("mixed:90", Workload::Mixed { read_percent: 90 }),
            ("mixed:0", Workload::Mixed { read_percent: 0 }),
            ("mixed:100", Workload::Mixed { read_percent: 100 }),
            ("lag", Workload::Lag),
            ("cas", Workload::Cas),
            ("txn", Workload::Txn),
        ] {
            assert_eq!(text.parse::<Workload>().unwrap(), workload);
            assert_eq!(workload.to_string(), text);
        }
        for text in [
            "",
            "PUT",
            "mixed",
            "mixed:",
            "mixed:101",
            "mixed:-1",
            "mixed:5.5",
            "CAS",
            "txn:4",
        ] {
            assert!(
                matches!(
                    text.parse::<Workload>(),
                    Err(BenchError::InvalidWorkload { .. })
                ),
                "{text:?}"
            );
        }
    }

    #[test]
    fn mixed_draws_about_the_asked_share() {
        let mut rng = StdRng::seed_from_u64(7);
        let workload = Workload::Mixed { read_percent: 90 };
        let draw_count = 10_000;
        let get_count = (0..draw_count)
            .filter(|_| workload.choose_operation(&mut rng) == Operation::Get)
            .count();
        // 9000 expected; the standard deviation is 30, so 8700..9300 holds for any sane RNG.
        assert!((8_700..9_300).contains(&get_count), "{get_count}");
    }

    #[test]
    fn pure_workloads_and_extremes_are_exact() {
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..1000 {
            assert_eq!(Workload::Put.choose_operation(&mut rng), Operation::Put);
            assert_eq!(Workload::Get.choose_operation(&mut rng), Operation::Get);
            assert_eq!(
                Workload::Delete.choose_operation(&mut rng),
                Operation::Delete
            );
            assert_eq!(Workload::Lag.choose_operation(&mut rng), Operation::Put);
            assert_eq!(Workload::Cas.choose_operation(&mut rng), Operation::CasPut);
            assert_eq!(Workload::Txn.choose_operation(&mut rng), Operation::Txn);
            let all_reads = Workload::Mixed { read_percent: 100 };
            assert_eq!(all_reads.choose_operation(&mut rng), Operation::Get);
            let no_reads = Workload::Mixed { read_percent: 0 };
            assert_eq!(no_reads.choose_operation(&mut rng), Operation::Put);
        }
    }

    #[test]
    fn writes_are_puts_and_deletes() {
        assert!(Operation::Put.is_write());
        assert!(Operation::Delete.is_write());
        assert!(!Operation::Get.is_write());
        assert!(!Workload::Get.writes());
        assert!(Workload::Mixed { read_percent: 50 }.writes());
        assert!(Workload::Lag.writes());
        assert!(Operation::CasPut.is_write() && Operation::Txn.is_write());
        assert_eq!(Operation::CasPut.method(), http::Method::PUT);
        assert_eq!(Operation::Txn.method(), http::Method::POST);
        assert!(Workload::Cas.writes() && Workload::Txn.writes());
    }

    #[test]
    fn only_conditional_workloads_own_keys() {
        assert!(Workload::Cas.owns_keys() && Workload::Txn.owns_keys());
        assert_eq!(Workload::Cas.owned_key_count_min(), 1);
        assert_eq!(Workload::Txn.owned_key_count_min(), 2);
        for workload in [
            Workload::Put,
            Workload::Get,
            Workload::Delete,
            Workload::Lag,
        ] {
            assert!(!workload.owns_keys(), "{workload}");
        }
    }
}
