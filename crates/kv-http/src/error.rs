//! The crate's one error type, and the one place where an error becomes a response.
//!
//! Every failure a request can meet — bad input, a missing key, a store that refuses writes —
//! is an [`Error`]; [`error_response`] turns it into a status code and a JSON body
//! `{"detail": "…"}` (plus `Allow` for 405 and `Location` for 307). Handlers return
//! `Result<Response, Error>` and never build an error response themselves.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use kv_wal::Error as WalError;

/// Everything that can go wrong in kv-http.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The body is not JSON, or has bytes after the JSON value.
    #[error("malformed JSON body: {0}")]
    MalformedJson(String),
    /// The body's JSON nests deeper than the parser allows.
    #[error("JSON body nests too deeply: {0}")]
    JsonTooDeep(String),
    /// The body is JSON but not an object with a `value` field.
    #[error("body must be a JSON object with a \"value\" field")]
    MissingValue,
    /// The body is a JSON object with a `value`, but another member is wrong.
    #[error("{0}")]
    InvalidBody(String),
    /// The body is larger than the limit.
    #[error("request body exceeds the limit of {limit_bytes} bytes")]
    BodyTooLarge {
        /// The configured limit.
        limit_bytes: u64,
    },
    /// The body is sent with a content coding (`Content-Encoding: gzip`, …): kvd does not
    /// decode bodies, and storing the coded bytes would keep a value the client did not mean.
    #[error("request bodies with Content-Encoding {0:?} are not supported: send the body as it is (identity)")]
    UnsupportedContentEncoding(String),
    /// The body is sent with a transfer coding other than `chunked` (`Transfer-Encoding:
    /// gzip, chunked`): hyper takes the chunks off, kvd would store the still-coded bytes.
    #[error("request bodies with Transfer-Encoding {0:?} are not supported: only chunked")]
    UnsupportedTransferCoding(String),
    /// The client did not send the whole body in time.
    #[error("request body not received within {timeout_ms} ms")]
    BodyReadTimeout {
        /// The configured timeout.
        timeout_ms: u128,
    },
    /// Reading the body failed (the client broke the framing or went away).
    #[error("could not read request body: {0}")]
    BodyRead(String),
    /// The key is longer than the limit.
    #[error(
        "key of {}{key_bytes} bytes exceeds the limit of {limit_bytes} bytes",
        if *.at_least { "at least " } else { "" }
    )]
    KeyTooLong {
        /// The key's length after percent-decoding, or a lower bound of it.
        key_bytes: usize,
        /// `key_bytes` is a lower bound: the key was refused before it was decoded.
        at_least: bool,
        /// The configured limit.
        limit_bytes: usize,
    },
    /// The key is empty, badly percent-encoded or not UTF-8.
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// A query parameter is malformed or out of range.
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    /// A path segment that names something (a member's id, a snapshot's id) is malformed.
    #[error("invalid path: {0}")]
    InvalidPath(String),
    /// A request header kvd reads (`If-Match`, `If-None-Match`, `Idempotency-Key`) is malformed.
    #[error("invalid header: {0}")]
    InvalidHeader(String),
    /// No route has this path.
    #[error("Not Found")]
    RouteNotFound,
    /// The route exists but not for this method.
    #[error("Method Not Allowed")]
    MethodNotAllowed {
        /// The methods the route answers, for the `Allow` header.
        allow: &'static str,
    },
    /// The key is not in the store.
    #[error("Key not found")]
    KeyNotFound,
    /// A write reached a node that is not the leader, or a read one that cannot serve it as
    /// asked (`?linearizable=true` on a follower, a leader that may have been replaced).
    #[error("{}", redirect_detail(*read, leader_url))]
    NotLeader {
        /// The leader's base URL.
        leader_url: String,
        /// A read (`GET`/`HEAD`) is redirected, not a write: the detail says so.
        read: bool,
        /// Where the client should resend this request.
        location: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] kv_store::Error),
    /// The write is durable on the leader but the acknowledgements asked for did not arrive in
    /// time; the body carries the entry's id.
    #[error("{detail}")]
    AcksTimeout {
        /// The entry's id.
        id: u64,
        /// The commit id when the wait ended.
        commit_id: u64,
        /// What happened.
        detail: String,
    },
    /// `min_id` was not applied within the wait.
    #[error(
        "this node has applied id {applied_id}, not yet {min_id}, after waiting {waited_ms} ms"
    )]
    NotYetApplied {
        /// The id asked for.
        min_id: u64,
        /// The id applied.
        applied_id: u64,
        /// How long the request waited.
        waited_ms: u64,
    },
    /// The thing asked for is already being done (a snapshot).
    #[error("{0}")]
    Busy(String),
    /// The node cannot serve this now, for a while (no leader known, no lease, a transfer
    /// under way, no active controller, a follower that cannot vouch for a read's
    /// staleness): retry.
    #[error("{0}")]
    Unavailable(String),
    /// No snapshot (or not that one) is on this node.
    #[error("{0}")]
    SnapshotNotFound(String),
    /// A replication fetch could not be decoded.
    #[error("bad replication request: {0}")]
    BadFetch(String),
    /// A controller call reached a node that is not the active controller; the body names
    /// the one that is, if known (421).
    #[error("this node is not the active controller; {}", ask_the_active_controller(*leader_id, leader_url.as_deref()))]
    NotController {
        /// The active controller.
        leader_id: Option<u64>,
        /// Its URL.
        leader_url: Option<String>,
    },
    /// The cluster refused: another cluster's node, a member id taken at another URL, a
    /// command the controller's rules refuse (409).
    #[error("{0}")]
    ClusterConflict(String),
    /// A task the request was waiting on died.
    #[error("internal error: {0}")]
    Internal(String),
    /// A condition of a conditional write (`If-Match`, `If-None-Match`) did not hold when the
    /// write was applied; nothing changed.
    #[error("precondition failed: {detail}")]
    PreconditionFailed {
        /// What did not hold.
        detail: String,
        /// The key's version and revisions then (`None`: absent).
        current: Option<kv_store::KeyMeta>,
        /// The store's revision when it was decided (the entry's id).
        revision: u64,
    },
    /// The body's `version` was not above the key's (the original project's v1.5 check).
    #[error("{}", version_conflict_detail(*provided))]
    VersionConflict {
        /// The version the request gave (`None` when not known: a request status).
        provided: Option<u64>,
        /// The key's version then.
        current_version: u64,
    },
    /// A version older than the history kept.
    #[error("version {version} is compacted: the oldest version kept is {oldest_available} (latest {latest})")]
    VersionCompacted {
        /// The version asked for.
        version: u64,
        /// The oldest version still held.
        oldest_available: u64,
        /// The key's current version.
        latest: u64,
    },
    /// Something asked for (a key's version) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request's ids (`client_id` + `request_id`, or `Idempotency-Key`) were used by a
    /// different request.
    #[error("this client_id and request_id (or Idempotency-Key) were already used by a different request (entry {id})")]
    RequestMismatch {
        /// The entry of the request that used them first.
        id: u64,
    },
    /// A transaction body that does not describe a valid transaction.
    #[error("invalid transaction: {0}")]
    InvalidTxn(String),
    /// A transaction with more operations than allowed.
    #[error("transaction too large: {0}")]
    TxnTooLarge(String),
    /// A socket operation of the server failed.
    #[error("{context}: {source}")]
    Io {
        /// What the server was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl From<kv_replication::Error> for Error {
    fn from(error: kv_replication::Error) -> Error {
        match error {
            kv_replication::Error::Store(error) => Error::Store(error),
            kv_replication::Error::AcksTimeout { id, commit_id, .. }
            | kv_replication::Error::NotDurable { id, commit_id, .. }
            | kv_replication::Error::SteppedDown { id, commit_id, .. } => Error::AcksTimeout {
                id,
                commit_id,
                detail: error.to_string(),
            },
            kv_replication::Error::NotLeader { leader_url } => {
                let leader_url = leader_url.unwrap_or_default();
                Error::NotLeader {
                    location: leader_url.clone(),
                    leader_url,
                    read: false,
                }
            }
            kv_replication::Error::Busy(detail) => Error::Busy(detail),
            kv_replication::Error::UnknownAcks { .. } => Error::InvalidQuery(error.to_string()),
            kv_replication::Error::Unavailable(detail) => Error::Unavailable(detail),
            // The node's own trouble (its meta file, a background task, replication, a view
            // it refused): not the request's.
            _ => Error::Internal(error.to_string()),
        }
    }
}

/// Result alias for kv-http.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The status code the error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::MalformedJson(_)
            | Error::JsonTooDeep(_)
            | Error::BodyRead(_)
            | Error::InvalidKey(_)
            | Error::InvalidQuery(_)
            | Error::InvalidPath(_)
            | Error::InvalidHeader(_)
            | Error::InvalidTxn(_) => StatusCode::BAD_REQUEST,
            Error::PreconditionFailed { .. } => StatusCode::PRECONDITION_FAILED,
            Error::VersionConflict { .. } => StatusCode::CONFLICT,
            Error::VersionCompacted { .. } => StatusCode::GONE,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::RequestMismatch { .. }
            | Error::Store(kv_store::Error::RequestMismatch { .. }) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Error::TxnTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::MissingValue | Error::InvalidBody(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::UnsupportedContentEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::UnsupportedTransferCoding(_) => StatusCode::NOT_IMPLEMENTED,
            Error::BodyReadTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Error::KeyTooLong { .. } => StatusCode::URI_TOO_LONG,
            Error::RouteNotFound | Error::KeyNotFound => StatusCode::NOT_FOUND,
            Error::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Error::NotLeader { .. } => StatusCode::TEMPORARY_REDIRECT,
            Error::Store(kv_store::Error::KeyNotFound) => StatusCode::NOT_FOUND,
            Error::Store(kv_store::Error::Wal(WalError::RecordTooLarge { .. })) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Error::Store(kv_store::Error::Wal(WalError::OutOfSpace(_))) => {
                StatusCode::INSUFFICIENT_STORAGE
            }
            Error::Store(kv_store::Error::Wal(WalError::Poisoned(_) | WalError::Closed)) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Error::AcksTimeout { .. } | Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::NotYetApplied { .. } => StatusCode::GATEWAY_TIMEOUT,
            Error::BadFetch(_) => StatusCode::BAD_REQUEST,
            Error::NotController { .. } => StatusCode::MISDIRECTED_REQUEST,
            Error::ClusterConflict(_) => StatusCode::CONFLICT,
            Error::Busy(_) => StatusCode::CONFLICT,
            Error::SnapshotNotFound(_) => StatusCode::NOT_FOUND,
            Error::Store(_) | Error::Internal(_) | Error::Io { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    fn detail(&self) -> String {
        match self {
            Error::Store(kv_store::Error::KeyNotFound) => Error::KeyNotFound.to_string(),
            other => other.to_string(),
        }
    }
}

/// The original's 409 detail; a request status, which does not keep the version the request
/// gave, says so instead of naming a number.
fn version_conflict_detail(provided: Option<u64>) -> String {
    match provided {
        Some(version) => format!("Version conflict: provided version {version} is outdated"),
        None => "Version conflict: the provided version is outdated".to_owned(),
    }
}

/// Whether `error` is the log refusing writes as a state of the node (not of the request).
fn refused_by_the_log(error: &Error) -> bool {
    matches!(
        error,
        Error::Store(kv_store::Error::Wal(
            WalError::Poisoned(_) | WalError::Closed | WalError::OutOfSpace(_)
        ))
    )
}

/// At most one log line a second for the log's refusals ([`refused_by_the_log`]).
static STATE_ERRORS: LogRate = LogRate::new();

/// Lets one event a second through and counts the ones held back.
struct LogRate {
    /// When the last event was let through, and the events held back since.
    state: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

impl LogRate {
    const fn new() -> LogRate {
        LogRate {
            state: std::sync::Mutex::new((None, 0)),
        }
    }

    /// `Some(held back since the last one)` if this event is let through.
    fn admit(&self) -> Option<u64> {
        let mut state = crate::lock(&self.state);
        if state
            .0
            .is_some_and(|last| last.elapsed() < std::time::Duration::from_secs(1))
        {
            state.1 += 1;
            return None;
        }
        let held_back = state.1;
        *state = (Some(std::time::Instant::now()), 0);
        Some(held_back)
    }
}

#[cfg(test)]
mod log_rate_tests {
    use super::LogRate;

    #[test]
    fn one_event_a_second_goes_through_and_the_rest_are_counted() {
        let rate = LogRate::new();
        assert_eq!(rate.admit(), Some(0));
        for _ in 0..5 {
            assert_eq!(rate.admit(), None);
        }
        std::thread::sleep(std::time::Duration::from_millis(1_050));
        assert_eq!(rate.admit(), Some(5));
        assert_eq!(rate.admit(), None);
    }
}

/// The response for `error`: its status, `{"detail": …}`, and the headers the status needs.
pub fn error_response(error: &Error) -> Response<Full<Bytes>> {
    let status = error.status();
    // An unavailable cluster (an election, a stale follower) is expected, not an error here;
    // nor is a 5xx the client asked for: a read-your-writes wait it bounded that ran out
    // (504), a transfer coding it chose that HTTP servers need not know (501).
    let expected = matches!(
        error,
        Error::Unavailable(_) | Error::NotYetApplied { .. } | Error::UnsupportedTransferCoding(_)
    );
    if status.is_server_error() && !expected {
        if refused_by_the_log(error) {
            // The node's state, the same for every write until it changes (a poisoned log, a
            // full disk): said at most once a second, not once per request — a client retrying
            // against a full disk would otherwise fill it further with log lines.
            if let Some(suppressed) = STATE_ERRORS.admit() {
                tracing::error!(%error, similar_before = suppressed, "request failed");
            }
        } else {
            tracing::error!(%error, "request failed");
        }
    }
    let body = match error {
        Error::AcksTimeout { id, commit_id, .. } => {
            serde_json::json!({ "detail": error.detail(), "id": id, "commit_id": commit_id })
        }
        Error::PreconditionFailed {
            current, revision, ..
        } => serde_json::json!({
            "detail": error.detail(),
            "mod_revision": current.map(|meta| meta.mod_revision),
            "version": current.map(|meta| meta.version),
            "revision": revision,
        }),
        Error::VersionConflict {
            current_version, ..
        } => serde_json::json!({ "detail": error.detail(), "current_version": current_version }),
        Error::VersionCompacted {
            oldest_available,
            latest,
            ..
        } => serde_json::json!({
            "detail": error.detail(),
            "oldest_available_version": oldest_available,
            "latest_version": latest,
        }),
        Error::RequestMismatch { id } | Error::Store(kv_store::Error::RequestMismatch { id }) => {
            serde_json::json!({ "detail": error.detail(), "id": id })
        }
        Error::NotController {
            leader_id,
            leader_url,
        } => serde_json::json!({
            "detail": error.detail(),
            "leader_id": leader_id,
            "leader_url": leader_url,
        }),
        _ => serde_json::json!({ "detail": error.detail() }),
    };
    let mut response = json_response(status, body.to_string().into_bytes());
    let headers = response.headers_mut();
    match error {
        Error::MethodNotAllowed { allow } => {
            headers.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        Error::NotLeader { location, .. } => {
            if let Ok(location) = HeaderValue::from_str(location) {
                headers.insert(header::LOCATION, location);
            }
        }
        Error::PreconditionFailed {
            current: Some(current),
            ..
        } => {
            headers.insert(header::ETAG, etag(current.mod_revision));
        }
        _ => {}
    }
    response
}

/// A 307's detail: where to send the request instead, and why (the seed project's text for a
/// write sent to a follower).
fn redirect_detail(read: bool, leader_url: &str) -> String {
    if read {
        format!(
            "this node cannot serve this read as asked (a linearizable read, or it may no longer \
             lead); read from the leader at {leader_url}"
        )
    } else {
        format!("this node is a follower; send writes to the leader at {leader_url}")
    }
}

/// The end of a 421's detail: where to ask instead, in plain words (`ask node 0 at
/// http://127.0.0.1:8000`), or that no active controller is known yet.
fn ask_the_active_controller(leader_id: Option<u64>, leader_url: Option<&str>) -> String {
    match (leader_id, leader_url) {
        (Some(id), Some(url)) => format!("ask node {id} at {url}"),
        (Some(id), None) => format!("ask node {id}"),
        (None, _) => "no active controller is known yet: retry".to_owned(),
    }
}

/// The `ETag` of a value written at `mod_revision`: `"<mod_revision>"`.
pub(crate) fn etag(mod_revision: u64) -> HeaderValue {
    use std::io::Write as _;
    // `"` + at most 20 digits + `"`, on the stack.
    let mut text = [0u8; 22];
    let mut cursor = std::io::Cursor::new(&mut text[..]);
    write!(cursor, "\"{mod_revision}\"").expect("22 bytes hold a quoted u64");
    let length = cursor.position() as usize;
    HeaderValue::from_bytes(&text[..length]).expect("digits and quotes")
}

/// A response with a JSON body.
pub(crate) fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_etag_is_the_quoted_revision_up_to_the_largest() {
        assert_eq!(etag(0), "\"0\"");
        assert_eq!(etag(169_963), "\"169963\"");
        assert_eq!(etag(u64::MAX), "\"18446744073709551615\"");
    }

    #[test]
    fn a_421_names_the_active_controller_in_plain_words() {
        // Before, the detail was Rust's debug text: `ask node Some(0) at Some("http://…")`.
        let named = Error::NotController {
            leader_id: Some(0),
            leader_url: Some("http://127.0.0.1:8000".to_owned()),
        };
        assert_eq!(
            named.to_string(),
            "this node is not the active controller; ask node 0 at http://127.0.0.1:8000"
        );
        let unknown = Error::NotController {
            leader_id: None,
            leader_url: None,
        };
        assert_eq!(
            unknown.to_string(),
            "this node is not the active controller; no active controller is known yet: retry"
        );
    }
}
