//! kvd: the replicated key-value store daemon.
fn main() {}
