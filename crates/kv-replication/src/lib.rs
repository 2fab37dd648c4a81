//! kv-replication: pull replication of the leader's log (in progress).
