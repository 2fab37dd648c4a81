//! A key's earlier versions, in the original project's v1.5 shapes: `GET /key/{key}?version=n`,
//! `GET /key/{key}/history`, `GET /key/{key}/versions`. Versions count from the key's
//! creation (a delete ends them); what history keeps is bounded (`kv_store::history`), and a
//! version older than that is 410, never a wrong value.

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};
use http_body_util::Full;
use kv_store::{KeyHistory, VersionRead};

use crate::error::{json_response, Error, Result};
use crate::params::number_parameter;
use crate::state::AppState;
use crate::values::{value_response, write_value};

/// Versions `/history` returns without a `limit` (newest first, then listed oldest first).
pub const HISTORY_LIMIT_DEFAULT: u64 = 100;
/// Largest `limit` of `/history` (each version is a log read).
pub const HISTORY_LIMIT_MAX: u64 = 1_000;
/// Versions `/versions` lists without a `limit`.
pub const VERSIONS_LIMIT_DEFAULT: u64 = 1_000;
/// Largest `limit` of `/versions`.
pub const VERSIONS_LIMIT_MAX: u64 = 10_000;

/// `GET /key/{key}?version=n`: `{"key","value","version":n,"mod_revision"}` — the value the
/// key had at version n; 404 for a version it never had, 410 for one history no longer keeps.
pub fn get_version(
    state: &AppState,
    key: &str,
    version: u64,
    headers: &HeaderMap,
) -> Result<Response<Full<Bytes>>> {
    match state.store.get_version(key.as_bytes(), version)? {
        VersionRead::Found {
            version,
            mod_revision,
            value,
        } => Ok(value_response(
            key,
            value.kind,
            &value.bytes,
            headers,
            |body| {
                body.extend_from_slice(
                    format!(r#","version":{version},"mod_revision":{mod_revision}"#).as_bytes(),
                );
            },
        )),
        VersionRead::KeyNotFound => Err(Error::KeyNotFound),
        VersionRead::NoSuchVersion { latest } => Err(Error::NotFound(format!(
            "Key not found or version {version} not available: {key} (latest version {latest})"
        ))),
        VersionRead::Compacted {
            oldest_available,
            latest,
        } => Err(Error::VersionCompacted {
            version,
            oldest_available,
            latest,
        }),
    }
}

/// `GET /key/{key}/history[?limit=L]`: `{"key","versions":[…],"history":[{"version","value",
/// "mod_revision"}…],"latest_version","compacted"}`, oldest first, the newest `limit` versions
/// (default 100, at most 1000) that history still keeps; 404 when the key is absent.
pub fn key_history(state: &AppState, key: &str, query: &str) -> Result<Response<Full<Bytes>>> {
    let limit =
        number_parameter(query, "limit", HISTORY_LIMIT_MAX)?.unwrap_or(HISTORY_LIMIT_DEFAULT);
    let history = read(state, key, limit, true)?;
    let mut body = open_body(key, &history);
    body.extend_from_slice(br#","history":["#);
    for (index, (version, mod_revision, value)) in history.versions.iter().rev().enumerate() {
        if index > 0 {
            body.push(b',');
        }
        let value = value.as_ref().expect("values were asked for");
        body.extend_from_slice(format!(r#"{{"version":{version},"value":"#).as_bytes());
        write_value(&mut body, value.kind, &value.bytes);
        body.extend_from_slice(format!(r#","mod_revision":{mod_revision}}}"#).as_bytes());
    }
    body.push(b']');
    Ok(close_body(body, &history))
}

/// `GET /key/{key}/versions[?limit=L]`: `{"key","versions":[…],"latest_version","compacted"}`,
/// the newest `limit` versions still kept (default 1000, at most 10000), oldest first.
pub fn key_versions(state: &AppState, key: &str, query: &str) -> Result<Response<Full<Bytes>>> {
    let limit =
        number_parameter(query, "limit", VERSIONS_LIMIT_MAX)?.unwrap_or(VERSIONS_LIMIT_DEFAULT);
    let history = read(state, key, limit, false)?;
    Ok(close_body(open_body(key, &history), &history))
}

fn read(state: &AppState, key: &str, limit: u64, with_values: bool) -> Result<KeyHistory> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    state
        .store
        .key_history(key.as_bytes(), limit, with_values)?
        .ok_or(Error::KeyNotFound)
}

/// `{"key":k,"versions":[v1,v2,…]` (oldest first), for the caller to go on.
fn open_body(key: &str, history: &KeyHistory) -> Vec<u8> {
    let mut body = Vec::with_capacity(256);
    body.extend_from_slice(br#"{"key":"#);
    serde_json::to_writer(&mut body, key).expect("writing to a Vec");
    body.extend_from_slice(br#","versions":"#);
    let versions: Vec<u64> = history
        .versions
        .iter()
        .rev()
        .map(|(version, ..)| *version)
        .collect();
    serde_json::to_writer(&mut body, &versions).expect("writing to a Vec");
    body
}

/// Ends the body with `"latest_version"` and `"compacted"`.
fn close_body(mut body: Vec<u8>, history: &KeyHistory) -> Response<Full<Bytes>> {
    body.extend_from_slice(
        format!(
            r#","latest_version":{},"compacted":{}}}"#,
            history.latest.version, history.compacted
        )
        .as_bytes(),
    );
    json_response(StatusCode::OK, body)
}
