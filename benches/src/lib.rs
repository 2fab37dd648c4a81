//! kv-bench: the instruments that measure kvd and the machine it runs on.
//!
//! The package ships three binaries built on this library:
//!
//! - `kv-bench`, an HTTP/1.1 keep-alive load generator for the kvd key API, in the spirit of
//!   `redis-benchmark`, etcd's `benchmark` and wrk2. Each worker owns one connection per target
//!   and runs either a *closed loop* (send, wait for the answer, send again) or, with a target
//!   rate, an *open loop* on a fixed schedule where latency is measured from the moment a
//!   request was meant to start, so a slow server cannot hide its queueing
//!   (no coordinated omission).
//! - `trivial-server`, a hyper server that answers every request with the same small JSON body:
//!   the HTTP ceiling of the machine, what kvd would reach if storing cost nothing.
//! - `fsync-probe`, which appends small records to a file and `fdatasync`s each one: the
//!   durability ceiling, what kvd's `always` sync policy can reach at best.
//!
//! The model of a run: the command line becomes a [`cli::BenchConfig`]; the [`runner`] resolves
//! the targets (loopback only unless told otherwise), optionally prefills the key space, then
//! drives workers through a warm-up and a measured phase. Each worker classifies every answer
//! into an [`outcome::Outcome`] and records latency in its own [`stats::PhaseStats`]; at the end
//! the stats are merged into one [`report::BenchReport`], printed as text or as one JSON object.
//! The conditional workloads (`cas`, `txn`) give each worker its own keys and track their
//! revisions ([`conditional`]).
//!
//! Every loop here is bounded by a deadline *and* a count, so a benchmark always stops.

pub mod cli;
pub mod conditional;
pub mod connection;
pub mod duration;
pub mod error;
pub mod followers;
pub mod fsync_probe;
pub mod keys;
pub mod latency;
pub mod outcome;
pub mod report;
pub mod runner;
pub mod schedule;
pub mod stats;
pub mod target;
pub mod trivial_server;
pub mod workload;

pub use error::BenchError;
