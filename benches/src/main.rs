//! kv-bench: load generator for kvd.
fn main() {}
