//! Integration tests of the kv-bench binaries, run the way a person or a script runs them.

mod fsync_probe_binary;
mod kv_bench_against_kvd;
mod kv_bench_against_trivial_server;
mod process;
