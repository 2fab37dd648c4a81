//! One function per endpoint. Each returns a response or an [`Error`]; none builds an error
//! response itself.

use std::error::Error as StdError;

use bytes::Bytes;
use http::request::Parts;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Body;
use kv_replication::Acks;
use kv_store::{Command, KeyMeta, Op, OpResponse, Outcome, Txn, TxnOp, Value};
use serde::Serialize;
use std::time::Duration;

use crate::body;
use crate::conditions::{form, request_ids, Condition, WriteConditions, IDEMPOTENT_REPLAYED};
use crate::error::{error_response, etag, json_response, Error, Result};
use crate::gate::require_leader;
use crate::options::{KEYS_LIMIT_DEFAULT, KEYS_LIMIT_MAX};
use crate::params::{acks_parameter, number_parameter};
use crate::percent::{percent_decode, query_parameter};
use crate::state::AppState;
use crate::values::value_response;
use crate::writes::{execute, Executed};

/// Decodes the key of `/key/{key}`: percent-decoded, non-empty, at most `key_bytes_max`
/// bytes, UTF-8.
pub fn decode_key(encoded_key: &str, key_bytes_max: usize) -> Result<String> {
    let too_long = |key_bytes, at_least| Error::KeyTooLong {
        key_bytes,
        at_least,
        limit_bytes: key_bytes_max,
    };
    // Every decoded byte takes at most three encoded ones: reject huge keys before decoding
    // (their decoded length is then only known to be at least a third of the encoded one).
    if encoded_key.len() / 3 > key_bytes_max {
        return Err(too_long(encoded_key.len().div_ceil(3), true));
    }
    let key = percent_decode(encoded_key, false, Error::InvalidKey)?;
    if key.len() > key_bytes_max {
        return Err(too_long(key.len(), false));
    }
    if key.is_empty() {
        return Err(Error::InvalidKey("the key must not be empty".to_owned()));
    }
    String::from_utf8(key.into_owned())
        .map_err(|_| Error::InvalidKey("the key is not valid UTF-8".to_owned()))
}

/// `GET /key/{key}[?min_id=N[&wait_ms=M]][&version=V]`: `{"key":k,"value":v,"version":…,
/// "mod_revision":…,"create_revision":…}` with `ETag: "<mod_revision>"` for JSON clients, the
/// bytes for `Accept: application/octet-stream`. With `min_id`, first waits (at most
/// `wait_ms`, default 1000, at most 30000) until this node has applied entry N —
/// read-your-writes on any node after a write that returned id N. With `version`, answers the
/// value the key had at that version (`history.rs`).
pub async fn get_key(state: &AppState, key: &str, parts: &Parts) -> Result<Response<Full<Bytes>>> {
    crate::gate::check_read(state, parts).await?;
    let query = parts.uri.query().unwrap_or_default();
    // Every parameter is checked before the wait: a bad one is refused at once.
    let min_id = number_parameter(query, "min_id", u64::MAX)?;
    let wait_ms = number_parameter(query, "wait_ms", MIN_ID_WAIT_MS_MAX)?;
    let version = number_parameter(query, "version", u64::MAX)?;
    // RFC 9110's conditional GET (before, both headers were ignored on reads).
    let conditions = WriteConditions::from_headers(&parts.headers)?;
    if version.is_some() && !conditions.is_empty() {
        return Err(Error::InvalidHeader(
            "If-Match and If-None-Match apply to the key's current value, not to a ?version= \
             read"
                .to_owned(),
        ));
    }
    if let Some(min_id) = min_id {
        let wait_ms = wait_ms.unwrap_or(MIN_ID_WAIT_MS_DEFAULT);
        let started = std::time::Instant::now();
        let applied = tokio::select! {
            applied = state.node.wait_applied(min_id, Duration::from_millis(wait_ms)) => applied,
            // A wait may outlast the shutdown's drain: the client gets an answer, not a
            // dropped connection.
            () = state.stopped() => {
                return Err(Error::Unavailable(format!(
                    "this node is shutting down (it had applied id {}, not yet {min_id}): \
                     read from another node",
                    state.store.applied_id()
                )))
            }
        };
        if !applied {
            return Err(Error::NotYetApplied {
                min_id,
                applied_id: state.store.applied_id(),
                waited_ms: started.elapsed().as_millis() as u64,
            });
        }
    } else if wait_ms.is_some() {
        return Err(Error::InvalidQuery(
            "wait_ms is how long to wait for min_id: give min_id too".to_owned(),
        ));
    }
    if let Some(version) = version {
        return crate::history::get_version(state, key, version, &parts.headers);
    }
    let entry = state.store.get(key.as_bytes());
    let current = entry.as_ref().map(|entry| entry.meta());
    let not_modified = conditions
        .on_read(current)
        .map_err(|detail| Error::PreconditionFailed {
            detail,
            current,
            revision: state.store.applied_id(),
        })?;
    let entry = entry.ok_or(Error::KeyNotFound)?;
    let meta = entry.meta();
    if not_modified {
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        response
            .headers_mut()
            .insert(header::ETAG, etag(meta.mod_revision));
        return Ok(response);
    }
    let mut response = value_response(
        key,
        entry.value_kind(),
        entry.value_bytes(),
        &parts.headers,
        |body| {
            use std::io::Write as _;
            write!(
                body,
                r#","version":{},"mod_revision":{},"create_revision":{}"#,
                meta.version, meta.mod_revision, meta.create_revision
            )
            .expect("writing to a Vec cannot fail");
        },
    );
    response
        .headers_mut()
        .insert(header::ETAG, etag(meta.mod_revision));
    Ok(response)
}

/// `PUT /key/{key}`: stores the JSON `value` of the body, or the body's bytes when it is
/// `application/octet-stream`; answers `{"status":"ok","id":N,"key":k,"version":v}` once the
/// entry is durable and applied. Conditions (`If-Match`, `If-None-Match`, the body's
/// `version`) make it a one-compare-each transaction, decided when applied: 412 or 409 when
/// one fails. Request ids make a retry answer as the first submission did.
pub async fn put_key<B>(
    state: &AppState,
    key: String,
    parts: &Parts,
    body: B,
) -> Result<Response<Full<Bytes>>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    require_leader(state, parts)?;
    let acks = acks_parameter(parts)?;
    let mut conditions = WriteConditions::from_headers(&parts.headers)?;
    let bytes = body::read_body(body, &parts.headers, &state.options).await?;
    let value = if body::is_octet_stream(&parts.headers) {
        Value::raw(bytes)
    } else {
        let (value, version) = body::put_body(&bytes)?;
        conditions.version = version;
        Value::json(value)
    };
    let form = form::PUT | conditions.form_bits();
    let key = key.into_bytes();
    let op = if conditions.is_empty() {
        Op::Set { key, value }
    } else {
        Op::Txn(Txn {
            compares: conditions.compares(&key),
            success: vec![TxnOp::Put { key, value }],
            failure: Vec::new(),
        })
    };
    write_key(state, parts, op, form, conditions, acks).await
}

/// `DELETE /key/{key}`: removes the key; 404 (and nothing written) when it is absent. With
/// `If-Match`/`If-None-Match`, a one-compare transaction (412 when it fails).
pub async fn delete_key(
    state: &AppState,
    key: String,
    parts: &Parts,
) -> Result<Response<Full<Bytes>>> {
    require_leader(state, parts)?;
    let acks = acks_parameter(parts)?;
    let conditions = WriteConditions::from_headers(&parts.headers)?;
    let form = form::DELETE | conditions.form_bits();
    let key = key.into_bytes();
    let op = if conditions.is_empty() {
        Op::Delete { key }
    } else {
        Op::Txn(Txn {
            compares: conditions.compares(&key),
            success: vec![TxnOp::Delete { key }],
            failure: Vec::new(),
        })
    };
    write_key(state, parts, op, form, conditions, acks).await
}

async fn write_key(
    state: &AppState,
    parts: &Parts,
    op: Op,
    form: u8,
    conditions: WriteConditions,
    acks: Acks,
) -> Result<Response<Full<Bytes>>> {
    let query = parts.uri.query().unwrap_or_default();
    let request = request_ids(query, &parts.headers, form)?;
    let need_outcome = !conditions.is_empty();
    let key = String::from_utf8_lossy(op_key(&op)).into_owned();
    let executed = execute(state, Command { op, request }, acks, need_outcome)
        .await
        .map_err(|error| crate::gate::or_to_the_new_leader(state, parts, error))?;
    key_write_answer(form, conditions.version, &key, &executed)
}

/// The key a key route's op writes.
fn op_key(op: &Op) -> &[u8] {
    match op {
        Op::Set { key, .. } | Op::Delete { key } => key,
        Op::Txn(txn) => txn
            .success
            .first()
            .and_then(TxnOp::written_key)
            .unwrap_or_default(),
        Op::Noop => &[],
    }
}

/// The answer to a key write of `form` from its outcome (the same for a retry: `replayed`
/// adds `Idempotent-Replayed: true`, to a failure the log decided — 412, 409, a delete's 404 —
/// as to a success). `provided_version` is the v1.5 body's, for the 409.
pub(crate) fn key_write_answer(
    form: u8,
    provided_version: Option<u64>,
    key: &str,
    executed: &Executed,
) -> Result<Response<Full<Bytes>>> {
    let answer = decided_key_write_answer(form, provided_version, key, executed);
    if !executed.replayed {
        return answer;
    }
    let mut response = answer.unwrap_or_else(|decided| error_response(&decided));
    response
        .headers_mut()
        .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    Ok(response)
}

/// [`key_write_answer`] without the replay header: a success, or the failure the entry's
/// outcome decided.
fn decided_key_write_answer(
    form: u8,
    provided_version: Option<u64>,
    key: &str,
    executed: &Executed,
) -> Result<Response<Full<Bytes>>> {
    let Some(outcome) = &executed.outcome else {
        // acks=leader under a write quorum above 1: durable on the leader, not applied yet, so
        // the version is not known.
        let body = if form & form::KIND_MASK == form::PUT {
            serde_json::json!({"status": "ok", "id": executed.id, "key": key, "version": null})
        } else {
            serde_json::json!({"status": "ok", "id": executed.id})
        };
        let mut response = json_response(StatusCode::OK, body.to_string().into_bytes());
        if form == form::PUT {
            // An unconditional PUT sets the key's mod_revision to its id whatever else
            // happens: its ETag is known before it applies (a conditional one may yet fail).
            // Before, the answer had none, unlike the same write's later replay.
            response
                .headers_mut()
                .insert(header::ETAG, etag(executed.id));
        }
        return Ok(response);
    };
    if let Some(failed) = &outcome.failed_compare {
        return Err(condition_failed(form, provided_version, outcome, failed));
    }
    let response = match outcome.responses.first() {
        Some(OpResponse::Put { key, meta }) => {
            // Written out rather than built as a `serde_json::Value` (a map, its entries and
            // their strings: allocations on every PUT); only the key needs escaping.
            let key = serde_json::to_string(&String::from_utf8_lossy(key))
                .expect("a string always serializes");
            let body = format!(
                r#"{{"status":"ok","id":{},"key":{key},"version":{}}}"#,
                executed.id, meta.version
            );
            let mut response = json_response(StatusCode::OK, body.into_bytes());
            response
                .headers_mut()
                .insert(header::ETAG, etag(meta.mod_revision));
            response
        }
        Some(OpResponse::Delete { deleted: true, .. }) => {
            let body = format!(r#"{{"status":"ok","id":{}}}"#, executed.id);
            json_response(StatusCode::OK, body.into_bytes())
        }
        // The key was gone by the time the delete applied.
        Some(OpResponse::Delete { deleted: false, .. }) => return Err(Error::KeyNotFound),
        other => {
            return Err(Error::Internal(format!(
                "entry {} of a key write answered {other:?}",
                executed.id
            )))
        }
    };
    Ok(response)
}

/// The error for a key write whose condition failed: 412 for `If-Match`/`If-None-Match`, 409
/// for the body's `version`.
fn condition_failed(
    form: u8,
    provided_version: Option<u64>,
    outcome: &Outcome,
    failed: &kv_store::FailedCompare,
) -> Error {
    let current = failed.current;
    let key = String::from_utf8_lossy(&failed.key);
    let describe = |current: Option<KeyMeta>| match current {
        Some(meta) => format!("key {key:?} is at mod_revision {}", meta.mod_revision),
        None => format!("key {key:?} does not exist"),
    };
    match Condition::of(form, failed.index) {
        Some(Condition::Version) => Error::VersionConflict {
            provided: provided_version,
            current_version: current.map_or(0, |meta| meta.version),
        },
        Some(Condition::IfMatch) => Error::PreconditionFailed {
            detail: format!("If-Match does not hold: {}", describe(current)),
            current,
            revision: outcome.revision,
        },
        Some(Condition::IfNoneMatch) | None => Error::PreconditionFailed {
            detail: format!("If-None-Match does not hold: {}", describe(current)),
            current,
            revision: outcome.revision,
        },
    }
}

/// Longest `wait_ms` a `min_id` read may ask for.
pub const MIN_ID_WAIT_MS_MAX: u64 = 30_000;
/// `wait_ms` of a `min_id` read that gives none.
pub const MIN_ID_WAIT_MS_DEFAULT: u64 = 1_000;

#[derive(Serialize)]
struct KeysBody {
    keys: Vec<String>,
    count: usize,
}

/// `GET /keys?prefix=&limit=&after=`: keys with the prefix, in byte order, at most `limit`
/// (default 1000, at most 10000), after the key `after` when given.
pub fn list_keys(state: &AppState, query: &str) -> Result<Response<Full<Bytes>>> {
    let parameter = |name| query_parameter(query, name);
    let prefix = parameter("prefix")?.unwrap_or_default();
    let after = parameter("after")?;
    let limit = match parameter("limit")? {
        None => KEYS_LIMIT_DEFAULT,
        Some(text) => std::str::from_utf8(&text)
            .ok()
            .and_then(|text| text.parse::<usize>().ok())
            .filter(|&limit| limit <= KEYS_LIMIT_MAX)
            .ok_or_else(|| {
                Error::InvalidQuery(format!(
                    "limit must be an integer from 0 to {KEYS_LIMIT_MAX}"
                ))
            })?,
    };
    let entries = state.store.scan_prefix(&prefix, after.as_deref(), limit);
    let keys: Vec<String> = entries
        .iter()
        .map(|entry| String::from_utf8_lossy(entry.key()).into_owned())
        .collect();
    let body = KeysBody {
        count: keys.len(),
        keys,
    };
    Ok(json_response(StatusCode::OK, to_json(&body)))
}

#[derive(Serialize)]
struct SegmentBody {
    path: String,
    /// Bytes used: header, records, seal.
    size: u64,
    /// The file's length: `size` plus a preallocated segment's free space.
    allocated: u64,
    is_active: bool,
    first_id: u64,
    last_id: Option<u64>,
    /// `"lz4"` or `"zstd"` for a compressed sealed segment, `null` for a plain one.
    compression: Option<String>,
    /// Bytes the segment holds (or would hold) as a plain file.
    original_size: u64,
}

#[derive(Serialize)]
struct SegmentsBody {
    segments: Vec<SegmentBody>,
    total_segments: usize,
    max_segment_size: u64,
}

/// `GET /segments`: the WAL's segment files.
pub fn segments(state: &AppState) -> Response<Full<Bytes>> {
    let segments: Vec<SegmentBody> = state
        .store
        .segments()
        .into_iter()
        .map(|segment| SegmentBody {
            path: segment.path.display().to_string(),
            size: segment.size_bytes,
            allocated: segment.allocated_bytes,
            is_active: segment.is_active,
            first_id: segment.first_id,
            last_id: segment.last_id,
            compression: segment.codec.map(|codec| codec.to_string()),
            original_size: segment.original_bytes,
        })
        .collect();
    let body = SegmentsBody {
        total_segments: segments.len(),
        segments,
        max_segment_size: state.store.segment_bytes_max(),
    };
    json_response(StatusCode::OK, to_json(&body))
}

#[derive(Serialize)]
struct HealthBody<'a> {
    status: &'a str,
    role: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
    applied_id: u64,
    last_id: Option<u64>,
    durable_id: u64,
    next_id: u64,
    keys: usize,
}

/// How long a write or `fdatasync` of the WAL may wait for the disk before `/health` says the
/// node is unavailable (kvd's disk watch warns at the same point).
pub const DISK_SLOW_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// `GET /health`: 200 while the node can take writes, 503 once its WAL refuses them or its
/// disk keeps a write waiting [`DISK_SLOW_AFTER`].
pub fn health(state: &AppState) -> Response<Full<Bytes>> {
    let store = &state.store;
    let log = store.log_status();
    let detail = log
        .poisoned
        .map(|reason| format!("the WAL refuses writes: {reason}"))
        .or_else(|| {
            log.out_of_space
                .map(|reason| format!("the disk is full: {reason}"))
        })
        .or_else(|| {
            (log.disk_wait >= DISK_SLOW_AFTER).then(|| {
                format!(
                    "the disk has kept a write or fdatasync of the WAL waiting {} ms: writes \
                     wait for it (in a cluster, a leader whose disk keeps one waiting a few \
                     seconds stops renewing its lease, and another node takes over)",
                    log.disk_wait.as_millis()
                )
            })
        })
        .or_else(|| {
            let waited = state.node.meta_save_wait();
            (waited >= DISK_SLOW_AFTER).then(|| {
                format!(
                    "the disk has kept a save of the node's meta file (node.meta) waiting {} \
                     ms: the node's role changes wait for it (in a cluster, a node whose disk \
                     keeps one waiting a few seconds stops renewing its lease, and a leader is \
                     replaced)",
                    waited.as_millis()
                )
            })
        })
        .or_else(|| crate::gate::health_problem(state));
    let body = HealthBody {
        status: if detail.is_some() {
            "unavailable"
        } else {
            "ok"
        },
        role: state.role_name(),
        detail,
        applied_id: store.applied_id(),
        last_id: log.last_id,
        durable_id: log.durable_id,
        next_id: log.next_id,
        keys: store.key_count(),
    };
    let status = if body.detail.is_some() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    json_response(status, to_json(&body))
}

/// `GET /metrics`: Prometheus text.
pub fn metrics(state: &AppState) -> Response<Full<Bytes>> {
    let text = state.metrics.render(&state.node, state.role_name());
    let mut response = Response::new(Full::new(Bytes::from(text)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

fn to_json(body: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(body).expect("response bodies always serialize")
}
