//! kv-wal's integration tests: one binary, a module per concern.

mod basics;
mod commit_path;
mod compressed;
mod corruption;
mod durability;
mod failpoints;
mod faults;
mod fenced;
mod fuzz_corpus;
mod model;
mod power_cut;
mod preallocation;
mod support;
mod truncation;
