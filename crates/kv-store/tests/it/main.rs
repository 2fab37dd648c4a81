//! kv-store's integration tests: the store against a `BTreeMap` model (with reopen and with
//! simulated power loss), and the submit/apply contract.

mod apply;
mod crash;
mod durability;
mod model;
mod power_loss;
mod replication;
mod seed;
mod snapshot;
mod snapshot_power_loss;
mod txn_model;
