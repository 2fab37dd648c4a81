//! Query parameters several endpoints share.

use http::request::Parts;
use kv_replication::Acks;

use crate::error::{Error, Result};
use crate::percent::query_parameter;

/// An optional integer query parameter, at most `max`.
pub(crate) fn number_parameter(query: &str, name: &str, max: u64) -> Result<Option<u64>> {
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
pub(crate) fn acks_parameter(parts: &Parts) -> Result<Acks> {
    let query = parts.uri.query().unwrap_or_default();
    match query_parameter(query, "acks")? {
        None => Ok(Acks::default()),
        Some(text) => String::from_utf8_lossy(&text)
            .parse()
            .map_err(|error: kv_replication::Error| Error::InvalidQuery(error.to_string())),
    }
}
