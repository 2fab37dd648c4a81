//! The nemesis suite, in the spirit of Jepsen and etcd's robustness tests: concurrent clients
//! over a real kvd cluster while a nemesis kills (-9), pauses (SIGSTOP) and partitions nodes;
//! every operation is recorded and the history is checked for linearizability key by key with
//! an existing checker (`todc-utils`' WGL). docs/reliability.md describes the scenarios.
//!
//! - [`history`]: what the clients did (invoke and complete times, outcomes);
//! - [`checker`]: the adapter to the checker, and the follower-read checks;
//! - [`http`], [`client`]: clients that record what they do, and find the leader;
//! - [`proxy`]: fault-injecting TCP proxies between nodes (partitions without privileges);
//! - [`cluster`]: real kvd processes with their original command lines, kill -9, SIGSTOP;
//! - [`faults`]: the nemesis and its log;
//! - [`scenarios`]: the tests;
//! - [`known_issues`]: what the suite found in kvd, as minimal reproductions.

mod checker;
mod client;
mod cluster;
mod faults;
mod history;
mod http;
mod known_issues;
mod proxy;
mod scenarios;
