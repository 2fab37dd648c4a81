//! kv-wal: a segmented, checksummed, group-committed write-ahead log (in progress).
