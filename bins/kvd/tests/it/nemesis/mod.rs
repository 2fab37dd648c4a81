//! The nemesis suite, in the spirit of Jepsen and etcd's robustness tests: concurrent clients
//! over a real kvd cluster while a nemesis kills (-9), pauses (SIGSTOP) and partitions nodes;
//! every operation is recorded and the history is checked for linearizability key by key with
//! an existing checker (`todc-utils`' WGL). docs/reliability.md describes the scenarios.
//!
//! - [`history`]: what the clients did (invoke and complete times, outcomes);
//! - [`checker`]: the adapter to the checker, and the follower-read checks.

mod checker;
mod history;
