//! The controller's JSON state files (`raft-state.json`, `snapshot.json`), sealed with their
//! CRC-32C ([`kv_wal::sealed_json`]): a damaged or edited one is refused naming the file, not
//! read as written — a vote's term flipped down would let the node vote twice in a term.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};

/// `value` as pretty JSON, sealed.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    let json = serde_json::to_vec_pretty(value).map_err(|error| Error::Raft(error.to_string()))?;
    Ok(kv_wal::sealed_json::seal(&json))
}

/// The file at `path` read from `bytes`: its seal checked, its JSON parsed, and its format
/// (the field `format` points to) one this version reads — `sealed_format`, sealed, or the one
/// before it, written before the seal. The value comes back with `sealed_format` in that field:
/// it is written back sealed from then on.
pub(crate) fn decode<T: DeserializeOwned>(
    path: &Path,
    bytes: &[u8],
    sealed_format: u32,
    format: impl FnOnce(&mut T) -> &mut u32,
) -> Result<T> {
    let corrupt = |reason: String| Error::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let seal = kv_wal::sealed_json::check(bytes).map_err(corrupt)?;
    let mut value: T = serde_json::from_slice(bytes).map_err(|error| corrupt(error.to_string()))?;
    let found = format(&mut value);
    kv_wal::sealed_json::check_format(*found, seal, sealed_format).map_err(corrupt)?;
    *found = sealed_format;
    Ok(value)
}
