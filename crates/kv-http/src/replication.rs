//! The replication endpoints: `POST /replication/fetch` (followers pull here; binary bodies,
//! see kv-replication's protocol), `GET /replication/fetch?…` (the same answer as JSON, for
//! people debugging; it is not counted as a follower's acknowledgement), the snapshot a follower behind the compacted log downloads (`GET /replication/snapshot`,
//! `GET /replication/snapshot/{applied_id}?offset=&len=`, each chunk with its CRC-32C in the
//! `x-kvd-chunk-crc32c` header), `POST /admin/snapshot` and `GET /compaction/status`.

use std::error::Error as StdError;

use bytes::Bytes;
use http::request::Parts;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Body;
use kv_replication::{
    chunk_crc, describe_frames, FetchRequest, FetchResponse, FrameSummary, SnapshotSummary,
};
use kv_store::{LogEntry, Op, ValueKind};
use serde_json::json;

use crate::body;
use crate::error::{json_response, Error, Result};
use crate::params::number_parameter;
use crate::percent::query_parameter;
use crate::state::AppState;

/// Largest fetch request body accepted.
pub const FETCH_REQUEST_BYTES_MAX: u64 = 4096;
/// Largest batch the JSON view returns.
const FETCH_VIEW_BYTES_MAX: u32 = 64 * 1024;

/// `POST /replication/fetch`: a follower's fetch, answered (possibly after a long poll) with a
/// binary response.
pub async fn fetch<B>(state: &AppState, parts: &Parts, body: B) -> Result<Response<Full<Bytes>>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let mut options = state.options.clone();
    options.body_bytes_max = options.body_bytes_max.min(FETCH_REQUEST_BYTES_MAX);
    let bytes = body::read_body(body, &parts.headers, &options).await?;
    let request =
        FetchRequest::decode(&bytes).map_err(|error| Error::BadFetch(error.to_string()))?;
    let response = state.node.handle_fetch(&request, true).await;
    let mut answer = Response::new(Full::new(Bytes::from(response.encode())));
    answer.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(body::OCTET_STREAM),
    );
    Ok(answer)
}

/// `GET /replication/fetch?node_id=&next_id=&last_epoch=&durable_id=&wait_ms=`: what the
/// leader would answer that fetch, as JSON, with entries decoded. Does not wait by default and
/// never counts as a follower.
pub async fn fetch_view(state: &AppState, query: &str) -> Result<Response<Full<Bytes>>> {
    let number = |name: &str, default: u64| number_or(query, name, default);
    let cluster_id = match query_parameter(query, "cluster_id")? {
        // This node's own (none yet: 0).
        None => u64::from_str_radix(&state.node.cluster_status().cluster_id, 16).unwrap_or(0),
        // As /cluster_status shows it; anything else was taken as "no cluster id" before.
        Some(text) => std::str::from_utf8(&text)
            .ok()
            .filter(|text| (1..=16).contains(&text.len()))
            .and_then(|text| u64::from_str_radix(text, 16).ok())
            .ok_or_else(|| {
                Error::InvalidQuery(format!(
                    "cluster_id {:?} is not a cluster id (1 to 16 hex digits, as /cluster_status \
                     shows it)",
                    String::from_utf8_lossy(&text)
                ))
            })?,
    };
    let request = FetchRequest {
        cluster_id,
        node_id: number("node_id", 0)?,
        leader_epoch: 0,
        next_id: number("next_id", 1)?,
        last_epoch: number("last_epoch", 0)?,
        durable_id: number("durable_id", 0)?,
        commit_id: number("commit_id", 0)?,
        bytes_max: number("bytes_max", u64::from(FETCH_VIEW_BYTES_MAX))?
            .min(u64::from(FETCH_VIEW_BYTES_MAX)) as u32,
        wait_ms: number("wait_ms", 0)?.min(10_000) as u32,
    };
    request
        .validate()
        .map_err(|error| Error::BadFetch(error.to_string()))?;
    let response = state.node.handle_fetch(&request, false).await;
    Ok(json_response(
        StatusCode::OK,
        view(&response).to_string().into_bytes(),
    ))
}

/// One frame of a fetch answer as JSON: id, CRC, size, and the entry in it.
fn entry_view(frame: FrameSummary) -> serde_json::Value {
    let mut entry = json!({ "id": frame.id, "crc": frame.crc, "bytes": frame.bytes });
    let Some(LogEntry { epoch, op, .. }) = frame.entry else {
        return entry;
    };
    entry["epoch"] = json!(epoch);
    match op {
        Op::Set { key, value } => {
            entry["op"] = json!("SET");
            entry["key"] = json!(String::from_utf8_lossy(&key));
            entry["value_kind"] = json!(match value.kind {
                ValueKind::Json => "json",
                ValueKind::Raw => "raw",
            });
            entry["value_bytes"] = json!(value.bytes.len());
        }
        Op::Delete { key } => {
            entry["op"] = json!("DELETE");
            entry["key"] = json!(String::from_utf8_lossy(&key));
        }
        Op::Txn(txn) => {
            entry["op"] = json!("TXN");
            entry["compares"] = json!(txn.compares.len());
            entry["success_ops"] = json!(txn.success.len());
            entry["failure_ops"] = json!(txn.failure.len());
        }
        Op::Noop => entry["op"] = json!("NOOP"),
    }
    entry
}

fn view(response: &FetchResponse) -> serde_json::Value {
    match response {
        FetchResponse::Entries {
            cluster_id,
            leader_epoch,
            commit_id,
            first_id,
            last_id,
            frames,
        } => {
            let entries: Vec<serde_json::Value> = match describe_frames(frames) {
                Ok(decoded) => decoded.into_iter().map(entry_view).collect(),
                Err(kv_replication::Error::DamagedBatch { offset, reason }) => {
                    vec![json!({ "error": reason, "offset": offset })]
                }
                Err(other) => vec![json!({ "error": other.to_string() })],
            };
            json!({
                "kind": "entries",
                "cluster_id": format!("{cluster_id:016x}"),
                "leader_epoch": leader_epoch,
                "commit_id": commit_id,
                "first_id": first_id,
                "last_id": last_id,
                "entries": entries,
            })
        }
        FetchResponse::Diverged {
            cluster_id,
            leader_epoch,
            truncate_after,
        } => json!({
            "kind": "diverged",
            "cluster_id": format!("{cluster_id:016x}"),
            "leader_epoch": leader_epoch,
            "truncate_after": truncate_after,
        }),
        FetchResponse::SnapshotNeeded {
            cluster_id,
            leader_epoch,
            first_id,
        } => json!({
            "kind": "snapshot_needed",
            "cluster_id": format!("{cluster_id:016x}"),
            "leader_epoch": leader_epoch,
            "first_id": first_id,
        }),
        FetchResponse::NotLeader {
            leader_epoch,
            leader_url,
        } => {
            json!({ "kind": "not_leader", "leader_epoch": leader_epoch, "leader": leader_url })
        }
        FetchResponse::ClusterMismatch {
            leader_cluster_id,
            leader_epoch,
        } => json!({
            "kind": "cluster_mismatch",
            "leader_cluster_id": format!("{leader_cluster_id:016x}"),
            "leader_epoch": leader_epoch,
        }),
    }
}

/// Header carrying a snapshot chunk's CRC-32C (decimal).
pub const CHUNK_CRC_HEADER: &str = "x-kvd-chunk-crc32c";
/// Largest snapshot chunk served.
pub const SNAPSHOT_CHUNK_BYTES_MAX: u64 = 8 << 20;

/// `GET /replication/snapshot`: `{"applied_id","size_bytes"}` of the newest snapshot, 404 when
/// there is none.
pub fn snapshot_meta(state: &AppState) -> Result<Response<Full<Bytes>>> {
    let meta = state
        .node
        .snapshot_meta()
        .ok_or_else(|| Error::SnapshotNotFound("this node has no snapshot".to_owned()))?;
    Ok(json_response(
        StatusCode::OK,
        serde_json::to_vec(&meta).expect("serializes"),
    ))
}

/// `GET /replication/snapshot/{applied_id}?offset=&len=`: raw bytes of the snapshot file.
pub fn snapshot_chunk(
    state: &AppState,
    applied_id: &str,
    query: &str,
) -> Result<Response<Full<Bytes>>> {
    let applied_id: u64 = applied_id
        .parse()
        .map_err(|_| Error::InvalidPath(format!("snapshot id {applied_id:?} is not a number")))?;
    // A file offset is at most i64::MAX (`pread` refuses more).
    let offset = number_parameter(query, "offset", i64::MAX as u64)?.unwrap_or(0);
    let len = number_or(query, "len", 1 << 20)?.min(SNAPSHOT_CHUNK_BYTES_MAX) as u32;
    let chunk = state
        .node
        .snapshot_chunk(applied_id, offset, len)
        .ok_or_else(|| {
            Error::SnapshotNotFound(format!("snapshot {applied_id} is not on this node"))
        })?
        .map_err(|error| Error::Internal(format!("reading snapshot {applied_id}: {error}")))?;
    let crc = chunk_crc(&chunk);
    let mut response = Response::new(Full::new(Bytes::from(chunk)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(body::OCTET_STREAM),
    );
    headers.insert(CHUNK_CRC_HEADER, HeaderValue::from(crc));
    Ok(response)
}

/// `POST /admin/snapshot`: writes a snapshot now (writes go on), prunes old ones, compacts
/// the log; answers what it did. 409 while another snapshot is being written.
pub async fn admin_snapshot(state: &AppState) -> Result<Response<Full<Bytes>>> {
    let (info, purge) = state.node.snapshot_and_compact_in_background().await?;
    let body = json!({
        "snapshot": SnapshotSummary::from(&info),
        "purge": purge,
    });
    Ok(json_response(StatusCode::OK, body.to_string().into_bytes()))
}

/// An optional integer query parameter, `default` when absent.
fn number_or(query: &str, name: &str, default: u64) -> Result<u64> {
    Ok(number_parameter(query, name, u64::MAX)?.unwrap_or(default))
}
