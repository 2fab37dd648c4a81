//! kv-replication's integration tests: the protocol logic on virtual time (unit-level checks
//! and a lossy-network simulation), and real nodes over an in-memory transport.

mod controlled;
mod failover_logic;
mod failover_simulation;
mod fuzz_corpus;
mod logic;
mod nodes;
mod simulation;
mod stream_logic;
mod support;
