//! The original project's v1.3 views of idempotent requests: `GET /request_status` (was this
//! request applied, and what was its answer?) and `GET /deduplication_stats`. The requests
//! themselves are remembered by the store, from the log (`kv_store::dedup`), so every node
//! answers alike, also after a restart or a failover.

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::json;

use crate::conditions::{check_id, form, request_ids};
use crate::error::{error_response, json_response, Error, Result};
use crate::handlers::key_write_answer;
use crate::percent::query_parameter;
use crate::state::AppState;
use crate::txn::txn_answer;
use crate::writes::Executed;
use kv_store::RequestIds;

/// `GET /request_status?client_id=C&request_id=R[&operation=SET|DELETE|TXN]` (or
/// `?idempotency_key=K`): `{"processed":false}`, or `{"processed":true,"status_code":S,
/// "id":N,"operation":…,"result":<the answer the request got>}`.
pub async fn request_status(state: &AppState, query: &str) -> Result<Response<Full<Bytes>>> {
    let ids = status_request_ids(query)?;
    let wanted = match query_parameter(query, "operation")? {
        None => None,
        Some(text) => Some(match text.to_ascii_uppercase().as_slice() {
            b"SET" | b"PUT" => form::PUT,
            b"DELETE" => form::DELETE,
            b"TXN" => form::TXN,
            _ => {
                return Err(Error::InvalidQuery(
                    "operation must be SET, PUT, DELETE or TXN".to_owned(),
                ))
            }
        }),
    };
    let record = state
        .store
        .request_record(&ids.client_id, &ids.request_id)
        .filter(|record| wanted.is_none_or(|kind| record.form & form::KIND_MASK == kind));
    let Some(record) = record else {
        return Ok(json_response(
            StatusCode::OK,
            br#"{"processed":false}"#.to_vec(),
        ));
    };
    let kind = record.form & form::KIND_MASK;
    let executed = Executed {
        id: record.outcome.revision,
        outcome: Some(record.outcome.clone()),
        replayed: true,
    };
    let answer = if kind == form::TXN {
        txn_answer(&executed)
    } else {
        let key = record
            .outcome
            .responses
            .iter()
            .find_map(|response| match response {
                kv_store::OpResponse::Put { key, .. }
                | kv_store::OpResponse::Delete { key, .. } => Some(key.clone()),
                _ => None,
            })
            .or_else(|| {
                record
                    .outcome
                    .failed_compare
                    .as_ref()
                    .map(|failed| failed.key.clone())
            })
            .unwrap_or_default();
        key_write_answer(record.form, None, &String::from_utf8_lossy(&key), &executed)
    };
    let response = answer.unwrap_or_else(|error| error_response(&error));
    let status_code = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|error| Error::Internal(format!("rendering a request status: {error}")))?
        .to_bytes();
    let result: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|error| Error::Internal(format!("rendering a request status: {error}")))?;
    let operation = match kind {
        form::PUT => "SET",
        form::DELETE => "DELETE",
        _ => "TXN",
    };
    let body = json!({
        "processed": true,
        "status_code": status_code,
        "id": record.outcome.revision,
        "operation": operation,
        "result": result,
    });
    Ok(json_response(StatusCode::OK, body.to_string().into_bytes()))
}

/// The ids `/request_status` asks about: `client_id` and `request_id`, or `idempotency_key`
/// (the `Idempotency-Key` header's key given as a parameter: a bad one is a bad query).
fn status_request_ids(query: &str) -> Result<RequestIds> {
    Ok(match query_parameter(query, "idempotency_key")? {
        Some(key) => {
            if query_parameter(query, "client_id")?.is_some()
                || query_parameter(query, "request_id")?.is_some()
            {
                return Err(Error::InvalidQuery(
                    "give either client_id and request_id or idempotency_key, not both".to_owned(),
                ));
            }
            let key = http::HeaderValue::from_bytes(&key)
                .ok()
                .and_then(|key| key.to_str().ok().map(str::to_owned))
                .ok_or_else(|| {
                    Error::InvalidQuery("idempotency_key is not visible ASCII".to_owned())
                })?;
            check_id("idempotency_key", &key).map_err(Error::InvalidQuery)?;
            RequestIds {
                client_id: String::new(),
                request_id: key,
                form: 0,
            }
        }
        None => request_ids(query, &HeaderMap::new(), 0)?.ok_or_else(|| {
            Error::InvalidQuery("give client_id and request_id, or idempotency_key".to_owned())
        })?,
    })
}

/// `GET /deduplication_stats`: the original's counters, plus the limits and what was pruned.
pub fn deduplication_stats(state: &AppState) -> Response<Full<Bytes>> {
    let stats = state.store.dedup_stats();
    let body = json!({
        "service_name": state.role_name(),
        "current_cache_size": stats.entries,
        "unique_request_ids": stats.unique_request_ids,
        "total_client_count": stats.clients,
        "total_requests_cached": stats.inserted,
        "total_duplicates_detected": stats.duplicates,
        "same_operation_duplicates": stats.duplicates,
        "different_operation_duplicates": stats.mismatches,
        "total_cache_cleanups": stats.cleanups,
        "entries_pruned": stats.pruned,
        "max_entries": stats.options.entries_max,
        "max_age_seconds": stats.options.age_max_ms / 1000,
    });
    json_response(StatusCode::OK, body.to_string().into_bytes())
}
