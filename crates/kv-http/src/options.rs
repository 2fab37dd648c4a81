//! Limits and timeouts of the HTTP server, with their defaults.

use std::time::Duration;

/// Default largest request body: 16 MiB.
pub const BODY_BYTES_MAX_DEFAULT: u64 = 16 << 20;
/// Default longest key, after percent-decoding: 4 KiB.
pub const KEY_BYTES_MAX_DEFAULT: usize = 4 << 10;
/// Default most connections served at once; further clients wait in the listen backlog.
pub const CONNECTIONS_MAX_DEFAULT: usize = 1024;
/// Default time a client has to send a request's headers. It also bounds how long an idle
/// keep-alive connection is kept: waiting for the next request is waiting for headers.
pub const HEADER_READ_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Default time a client has to send a request's whole body once its headers are in.
pub const BODY_READ_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// Default time in-flight requests get to finish after shutdown is asked for.
pub const SHUTDOWN_DRAIN_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Default number of keys `GET /keys` returns without a `limit`.
pub const KEYS_LIMIT_DEFAULT: usize = 1000;
/// Largest `limit` `GET /keys` accepts.
pub const KEYS_LIMIT_MAX: usize = 10_000;

const _: () = assert!(KEYS_LIMIT_DEFAULT <= KEYS_LIMIT_MAX);
// A key must fit in a request body's worth of WAL record with room for the value.
const _: () = assert!((KEY_BYTES_MAX_DEFAULT as u64) < BODY_BYTES_MAX_DEFAULT);

/// How the server limits clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpOptions {
    /// Largest request body accepted (413 above it, decided from `Content-Length` before the
    /// body is read when the client sends one).
    pub body_bytes_max: u64,
    /// Longest key accepted, in bytes after percent-decoding (414 above it).
    pub key_bytes_max: usize,
    /// Most connections served at once.
    pub connections_max: usize,
    /// Time allowed for a request's headers, and for an idle keep-alive connection.
    pub header_read_timeout: Duration,
    /// Time allowed for a request's body (408 after it).
    pub body_read_timeout: Duration,
    /// Time in-flight requests get to finish after shutdown starts.
    pub shutdown_drain_timeout: Duration,
}

impl Default for HttpOptions {
    fn default() -> HttpOptions {
        HttpOptions {
            body_bytes_max: BODY_BYTES_MAX_DEFAULT,
            key_bytes_max: KEY_BYTES_MAX_DEFAULT,
            connections_max: CONNECTIONS_MAX_DEFAULT,
            header_read_timeout: HEADER_READ_TIMEOUT_DEFAULT,
            body_read_timeout: BODY_READ_TIMEOUT_DEFAULT,
            shutdown_drain_timeout: SHUTDOWN_DRAIN_TIMEOUT_DEFAULT,
        }
    }
}
