//! The one error type of the kv-bench library.
//!
//! Failures of single requests are not errors here: they are outcomes, counted in the report.
//! [`BenchError`] is for what stops a run before or outside the measurement: a bad command
//! line, a target that does not resolve or is not allowed, a directory that cannot be written.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything that can stop a benchmark before it measures anything.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A duration on the command line could not be read.
    #[error("invalid duration {text:?}: {reason}")]
    InvalidDuration {
        /// The text as given.
        text: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A workload name could not be read.
    #[error(
        "invalid workload {text:?}: expected put, get, delete or mixed:R \
         (R = percentage of GETs, 0 to 100)"
    )]
    InvalidWorkload {
        /// The text as given.
        text: String,
    },
    /// A target URL could not be used.
    #[error("invalid url {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A target host name could not be resolved.
    #[error("cannot resolve {url:?}: {source}")]
    Resolve {
        /// The URL whose host failed to resolve.
        url: String,
        /// The resolver's error.
        source: std::io::Error,
    },
    /// A target resolved to an address outside the loopback range without permission.
    #[error(
        "{url:?} resolves to {socket_address}, which is not a loopback address; \
         pass --allow-non-loopback to load a machine you own on purpose"
    )]
    NonLoopbackTarget {
        /// The URL as given.
        url: String,
        /// The address it resolved to.
        socket_address: SocketAddr,
    },
    /// The options do not fit together or exceed a limit.
    #[error("invalid configuration: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },
    /// A target did not answer `GET /health` with 2xx before the readiness deadline.
    #[error("{url} was not ready (GET /health answering 2xx) within {waited_ms} ms: {last}")]
    NotReady {
        /// The URL that was not ready.
        url: String,
        /// How long kv-bench waited.
        waited_ms: u128,
        /// What the last attempt got.
        last: String,
    },
    /// A file or directory operation failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
}
