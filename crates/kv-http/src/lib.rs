//! kv-http: kvd's HTTP/1.1 API, a raw hyper 1.x service with no web framework.
//!
//! The API is the original Python project's, done properly: `PUT/GET/DELETE /key/{key}` with
//! JSON values (or raw bytes), `GET /segments`, plus `GET /keys`, `GET /health` and
//! `GET /metrics`. The full contract — bodies, statuses, limits — is in `docs/http-api.md`.
//!
//! # Model
//!
//! - [`serve`] runs the accept loop: a task per connection, at most
//!   [`HttpOptions::connections_max`] at once, hyper's header read timeout (which also closes
//!   idle keep-alive connections), and a graceful shutdown.
//! - [`handle`] answers one request and never fails: routing ([`Route`]), then one function per
//!   endpoint, then [`error_response`] — the one place an [`Error`] becomes a status and a
//!   `{"detail": …}` body. Tests call it directly, without a socket.
//! - [`AppState`] holds the replication [`kv_replication::Node`] (the store and its role),
//!   the limits and the metrics: a follower answers writes with a 307 to its leader.
//! - Replication rides on the same server: followers `POST /replication/fetch` (long-polled
//!   by the leader), and [`HttpTransport`] is the follower's keep-alive client for it.
//!   `GET /cluster_status` shows the cluster as this node sees it.
//! - Writes answer only once the entry is durable under the WAL's sync policy and applied to
//!   the map; reads see only applied entries.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use kv_http::{AppState, HttpOptions};
//! use kv_replication::{Node, NodeOptions};
//! use kv_store::{Store, StoreOptions};
//!
//! let (store, _report) = Store::open("data/leader/wal", StoreOptions::default())?;
//! let node = Node::open_leader(Arc::new(store), "data/leader".as_ref(), NodeOptions::default())?;
//! let state = Arc::new(AppState::new(Arc::new(node), HttpOptions::default()));
//! let listener = kv_http::bind("127.0.0.1:8000").await?;
//! kv_http::serve(listener, state, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(())
//! # }
//! ```

mod body;
mod client;
mod cluster;
mod cluster_state;
mod compaction;
mod conditions;
mod controller_net;
mod error;
mod gate;
mod handlers;
mod history;
mod idempotency;
mod json_text;
mod metrics;
mod options;
mod params;
mod peers;
mod percent;
mod replication;
mod route;
mod server;
mod service;
mod state;
mod stream;
mod txn;
mod values;
mod writes;

/// Locks `mutex`, taking the data of a holder that panicked as it is (nothing here leaves a
/// half-made change behind a lock).
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub use body::OCTET_STREAM;
pub use client::HttpTransport;
pub use cluster::{admit, ask_to_campaign, controller_error, AdmitError};
pub use cluster_state::{cluster_view, ClusterState};
pub use conditions::{IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED};
pub use controller_net::{
    paths as controller_paths, ClientError, ControllerClient, HttpControllerTransport, JoinReply,
    JoinRequest, NotControllerBody, ProposeReply, FORWARDED_HEADER,
};
pub use error::{error_response, Error, Result};
pub use gate::READ_LEASE_WAIT;
pub use handlers::DISK_SLOW_AFTER;
pub use history::{
    HISTORY_LIMIT_DEFAULT, HISTORY_LIMIT_MAX, VERSIONS_LIMIT_DEFAULT, VERSIONS_LIMIT_MAX,
};
pub use metrics::Metrics;
pub use options::{
    HttpOptions, BODY_BYTES_MAX_DEFAULT, BODY_READ_TIMEOUT_DEFAULT, CONNECTIONS_MAX_DEFAULT,
    HEADER_READ_TIMEOUT_DEFAULT, KEYS_LIMIT_DEFAULT, KEYS_LIMIT_MAX, KEY_BYTES_MAX_DEFAULT,
    SHUTDOWN_DRAIN_TIMEOUT_DEFAULT,
};
pub use peers::{PeerAnswer, PeerClient, PeerError};
pub use replication::FETCH_REQUEST_BYTES_MAX;
pub use route::Route;
pub use server::{bind, serve};
pub use service::{handle, transfer_leadership_away};
pub use state::{AppState, NodeRole};
