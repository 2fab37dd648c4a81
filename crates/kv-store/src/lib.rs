//! kv-store: the key-value state machine built on kv-wal (in progress).
