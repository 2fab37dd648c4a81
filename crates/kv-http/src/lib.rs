//! kv-http: the raw hyper 1.x HTTP service (in progress).
