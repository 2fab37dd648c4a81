//! kv-controller's integration tests: one binary, one module per subject.

mod apply;
mod cluster;
mod simulation;
mod storage;
