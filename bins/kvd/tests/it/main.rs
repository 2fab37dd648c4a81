//! End-to-end tests: the real `kvd` binary on an ephemeral port with a temp data dir, driven
//! over HTTP the way the original project's README drives it with curl.

mod bad_input;
mod cli;
mod cluster_crash;
mod compressed_segments;
mod crash_loop;
mod disk_full;
mod durability;
mod failover;
mod fsync_failure;
mod harness;
mod nemesis;
mod replication;
mod restart;
mod run_cluster;
mod slow_clients;
mod snapshots;
mod transactions;
mod walkthrough;
