//! One function per endpoint. Each returns a response or an [`Error`]; none builds an error
//! response itself.

use std::error::Error as StdError;

use base64::Engine as _;
use bytes::Bytes;
use http::request::Parts;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Body;
use kv_replication::{Acks, Node};
use kv_store::{Op, Value, ValueKind};
use kv_wal::SyncPolicy;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

use crate::body::{self, OCTET_STREAM};
use crate::error::{json_response, Error, Result};
use crate::options::{KEYS_LIMIT_DEFAULT, KEYS_LIMIT_MAX};
use crate::percent::{percent_decode, query_parameter};
use crate::state::{AppState, NodeRole};

/// Decodes the key of `/key/{key}`: percent-decoded, non-empty, at most `key_bytes_max`
/// bytes, UTF-8.
pub fn decode_key(encoded_key: &str, key_bytes_max: usize) -> Result<String> {
    let too_long = |key_bytes| Error::KeyTooLong {
        key_bytes,
        limit_bytes: key_bytes_max,
    };
    // Every decoded byte takes at most three encoded ones: reject huge keys before decoding.
    if encoded_key.len() / 3 > key_bytes_max {
        return Err(too_long(encoded_key.len() / 3));
    }
    let key = percent_decode(encoded_key, false, Error::InvalidKey)?;
    if key.len() > key_bytes_max {
        return Err(too_long(key.len()));
    }
    if key.is_empty() {
        return Err(Error::InvalidKey("the key must not be empty".to_owned()));
    }
    String::from_utf8(key.into_owned())
        .map_err(|_| Error::InvalidKey("the key is not valid UTF-8".to_owned()))
}

/// `GET /key/{key}[?min_id=N[&wait_ms=M]]`: `{"key":k,"value":v}` for JSON clients, the bytes
/// for `Accept: application/octet-stream`. With `min_id`, first waits (at most `wait_ms`,
/// default 1000, at most 30000) until this node has applied entry N — read-your-writes on any
/// node after a write that returned id N.
pub async fn get_key(state: &AppState, key: &str, parts: &Parts) -> Result<Response<Full<Bytes>>> {
    let query = parts.uri.query().unwrap_or_default();
    if let Some(min_id) = number_parameter(query, "min_id", u64::MAX)? {
        let wait_ms = number_parameter(query, "wait_ms", MIN_ID_WAIT_MS_MAX)?
            .unwrap_or(MIN_ID_WAIT_MS_DEFAULT);
        let started = std::time::Instant::now();
        if !state
            .node
            .wait_applied(min_id, Duration::from_millis(wait_ms))
            .await
        {
            return Err(Error::NotYetApplied {
                min_id,
                applied_id: state.store.applied_id(),
                waited_ms: started.elapsed().as_millis() as u64,
            });
        }
    }
    let headers = &parts.headers;
    let entry = state.store.get(key.as_bytes()).ok_or(Error::KeyNotFound)?;
    let (kind, value) = (entry.value_kind(), entry.value_bytes());
    if body::accepts_octet_stream(headers) {
        let bytes = match kind {
            ValueKind::Raw => value.to_vec(),
            // A JSON string is returned as its text; any other JSON value as compact JSON.
            ValueKind::Json => match serde_json::from_slice::<String>(value) {
                Ok(text) if value.first() == Some(&b'"') => text.into_bytes(),
                _ => value.to_vec(),
            },
        };
        let mut response = Response::new(Full::new(Bytes::from(bytes)));
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(OCTET_STREAM));
        return Ok(response);
    }
    let mut body = Vec::with_capacity(value.len() + key.len() + 32);
    body.extend_from_slice(br#"{"key":"#);
    serde_json::to_writer(&mut body, key).expect("writing to a Vec cannot fail");
    body.extend_from_slice(br#","value":"#);
    match kind {
        // Stored as compact JSON text: spliced in as is.
        ValueKind::Json => body.extend_from_slice(value),
        ValueKind::Raw => match std::str::from_utf8(value) {
            Ok(text) => serde_json::to_writer(&mut body, text).expect("writing to a Vec"),
            Err(_) => {
                let encoded = base64::engine::general_purpose::STANDARD.encode(value);
                serde_json::to_writer(&mut body, &encoded).expect("writing to a Vec");
                body.extend_from_slice(br#","encoding":"base64""#);
            }
        },
    }
    body.push(b'}');
    Ok(json_response(StatusCode::OK, body))
}

/// `PUT /key/{key}`: stores the JSON `value` of the body, or the body's bytes when it is
/// `application/octet-stream`; answers once the entry is durable and applied.
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
    let bytes = body::read_body(body, &parts.headers, &state.options).await?;
    let value = if body::is_octet_stream(&parts.headers) {
        Value::raw(bytes)
    } else {
        Value::json(body::value_from_put_body(&bytes)?)
    };
    let op = Op::Set {
        key: key.into_bytes(),
        value,
    };
    let id = write(state, op, acks).await?;
    Ok(written(id))
}

/// `DELETE /key/{key}`: removes the key; 404 (and nothing written) when it is absent.
pub async fn delete_key(
    state: &AppState,
    key: String,
    parts: &Parts,
) -> Result<Response<Full<Bytes>>> {
    require_leader(state, parts)?;
    let acks = acks_parameter(parts)?;
    let op = Op::Delete {
        key: key.into_bytes(),
    };
    let id = write(state, op, acks).await?;
    Ok(written(id))
}

/// Longest `wait_ms` a `min_id` read may ask for.
pub const MIN_ID_WAIT_MS_MAX: u64 = 30_000;
/// `wait_ms` of a `min_id` read that gives none.
pub const MIN_ID_WAIT_MS_DEFAULT: u64 = 1_000;

/// An optional integer query parameter, at most `max`.
fn number_parameter(query: &str, name: &str, max: u64) -> Result<Option<u64>> {
    let Some(text) = query_parameter(query, name)? else {
        return Ok(None);
    };
    std::str::from_utf8(&text)
        .ok()
        .and_then(|text| text.parse::<u64>().ok())
        .filter(|&value| value <= max)
        .map(Some)
        .ok_or_else(|| Error::InvalidQuery(format!("{name} must be an integer from 0 to {max}")))
}

/// `?acks=leader|quorum|all` (default quorum: with a write quorum of 1, the leader alone).
fn acks_parameter(parts: &Parts) -> Result<Acks> {
    let query = parts.uri.query().unwrap_or_default();
    match query_parameter(query, "acks")? {
        None => Ok(Acks::default()),
        Some(text) => String::from_utf8_lossy(&text)
            .parse()
            .map_err(|error: kv_replication::Error| Error::InvalidQuery(error.to_string())),
    }
}

fn require_leader(state: &AppState, parts: &Parts) -> Result<()> {
    match state.role() {
        NodeRole::Leader => Ok(()),
        NodeRole::Follower { leader_url } => {
            let path_and_query = parts
                .uri
                .path_and_query()
                .map_or("/", |path_and_query| path_and_query.as_str());
            let location = format!("{}{path_and_query}", leader_url.trim_end_matches('/'));
            Err(Error::NotLeader {
                leader_url,
                location,
            })
        }
    }
}

/// Runs a write to completion on a task of its own, so a client that hangs up cannot stop
/// it half-way. Under `SyncPolicy::Always` the WAL fsyncs inside the submit call, so that
/// write runs on the blocking pool instead of stalling an async worker.
async fn write(state: &AppState, op: Op, acks: Acks) -> Result<u64> {
    let node: Arc<Node> = state.node.clone();
    let joined = if state.store.wal().sync_policy() == SyncPolicy::Always {
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || runtime.block_on(node.write(op, acks))).await
    } else {
        tokio::spawn(async move { node.write(op, acks).await }).await
    };
    let id = joined.map_err(|error| Error::Internal(format!("write task failed: {error}")))??;
    Ok(id)
}

fn written(id: u64) -> Response<Full<Bytes>> {
    let body = format!(r#"{{"status":"ok","id":{id}}}"#);
    json_response(StatusCode::OK, body.into_bytes())
}

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
    /// Bytes on disk.
    size: u64,
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
    let wal = state.store.wal();
    let segments: Vec<SegmentBody> = wal
        .segments()
        .into_iter()
        .map(|segment| SegmentBody {
            path: segment.path.display().to_string(),
            size: segment.size_bytes,
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
        max_segment_size: wal.segment_bytes_max(),
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

/// `GET /health`: 200 while the node can take writes, 503 once its WAL refuses them.
pub fn health(state: &AppState) -> Response<Full<Bytes>> {
    let store = &state.store;
    let wal = store.wal();
    let poisoned = wal.poisoned();
    let body = HealthBody {
        status: if poisoned.is_some() {
            "unavailable"
        } else {
            "ok"
        },
        role: state.role_name(),
        detail: poisoned.map(|reason| format!("the WAL refuses writes: {reason}")),
        applied_id: store.applied_id(),
        last_id: wal.last_id(),
        durable_id: wal.durable_id(),
        next_id: wal.next_id(),
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
