//! The original project's v1.6 compaction endpoints, mapped onto kvd's log compaction
//! (a snapshot of the applied state, then purging the WAL segments it covers):
//! `POST /compaction/run`, `POST /compaction/configure?enabled=&interval=` and
//! `GET /compaction/status` (the original's fields, then kvd's).

use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use kv_replication::{CompactionControl, CompactionRun};
use serde_json::{json, Value};

use crate::error::{json_response, Error, Result};
use crate::percent::query_parameter;
use crate::state::AppState;

/// `POST /compaction/run[?force=…]`: writes a snapshot now and purges the WAL it covers;
/// `{"status":"success","segments_compacted","entries_removed","snapshot","purge"}`. 409 while
/// a snapshot is being written. (`force` is accepted for compatibility: kvd has no minimum
/// interval between runs.)
pub async fn run(state: &AppState, query: &str) -> Result<Response<Full<Bytes>>> {
    if let Some(force) = query_parameter(query, "force")? {
        parse_bool("force", &force)?;
    }
    let (info, purge) = state.node.snapshot_and_compact_in_background().await?;
    let control = state.node.compaction_control();
    let entries_removed = control
        .runs
        .last()
        .filter(|run| run.snapshot_id == info.applied_id)
        .map_or(0, |run| run.entries_removed);
    let body = json!({
        "status": "success",
        "segments_compacted": purge.segments_removed.len(),
        "entries_removed": entries_removed,
        "snapshot": kv_replication::SnapshotSummary::from(&info),
        "purge": purge,
    });
    Ok(json_response(StatusCode::OK, body.to_string().into_bytes()))
}

/// `POST /compaction/configure?enabled=true|false&interval=SECONDS`: turns automatic
/// snapshots on or off and sets the time trigger (0: off); `{"status":"success","changes":{…}}`
/// with what was set.
pub fn configure(state: &AppState, query: &str) -> Result<Response<Full<Bytes>>> {
    let enabled = query_parameter(query, "enabled")?
        .map(|text| parse_bool("enabled", &text))
        .transpose()?;
    let interval = match query_parameter(query, "interval")? {
        None => None,
        Some(text) => Some(
            std::str::from_utf8(&text)
                .ok()
                .and_then(|text| text.parse::<u64>().ok())
                .ok_or_else(|| {
                    Error::InvalidQuery("interval must be a whole number of seconds".to_owned())
                })?,
        ),
    };
    let control = state.node.configure_compaction(
        enabled,
        interval.map(|seconds| (seconds > 0).then(|| Duration::from_secs(seconds))),
    );
    let mut changes = serde_json::Map::new();
    if enabled.is_some() {
        changes.insert("enabled".to_owned(), json!(control.enabled));
    }
    if interval.is_some() {
        changes.insert("interval".to_owned(), json!(interval_seconds(&control)));
    }
    let body = json!({"status": "success", "changes": changes});
    Ok(json_response(StatusCode::OK, body.to_string().into_bytes()))
}

/// `GET /compaction/status`: the original's `enabled`, `compaction_interval_seconds`,
/// `min_compaction_interval_seconds`, `last_compaction`, `compaction_running`,
/// `compaction_history`, then kvd's status (snapshots, the last purge, the WAL, the policy).
pub fn status(state: &AppState) -> Response<Full<Bytes>> {
    let control = state.node.compaction_control();
    let mut body = serde_json::Map::new();
    body.insert("enabled".to_owned(), json!(control.enabled));
    body.insert(
        "compaction_interval_seconds".to_owned(),
        json!(interval_seconds(&control)),
    );
    body.insert("min_compaction_interval_seconds".to_owned(), json!(0));
    body.insert(
        "last_compaction".to_owned(),
        json!(control.runs.last().map(|run| timestamp(run.unix_ms))),
    );
    body.insert("compaction_running".to_owned(), json!(control.running));
    body.insert(
        "compaction_history".to_owned(),
        Value::Array(control.runs.iter().map(run_json).collect()),
    );
    if let Value::Object(kvd) =
        serde_json::to_value(state.node.compaction_status()).expect("serializes")
    {
        body.extend(kvd);
    }
    json_response(StatusCode::OK, Value::Object(body).to_string().into_bytes())
}

fn interval_seconds(control: &CompactionControl) -> u64 {
    control.interval.map_or(0, |interval| interval.as_secs())
}

fn run_json(run: &CompactionRun) -> Value {
    json!({
        "timestamp": timestamp(run.unix_ms),
        "duration_seconds": run.duration_ms as f64 / 1000.0,
        "segments_compacted": run.segments_removed,
        "entries_removed": run.entries_removed,
        "snapshot_id": run.snapshot_id,
    })
}

fn parse_bool(name: &str, text: &[u8]) -> Result<bool> {
    match text.to_ascii_lowercase().as_slice() {
        b"true" | b"1" => Ok(true),
        b"false" | b"0" => Ok(false),
        _ => Err(Error::InvalidQuery(format!("{name} must be true or false"))),
    }
}

/// `2023-08-25T14:30:45.123Z` (UTC, milliseconds).
fn timestamp(unix_ms: u64) -> String {
    let seconds = unix_ms / 1000;
    let (days, second_of_day) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60,
        unix_ms % 1000
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_iso_8601() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(timestamp(1_693_060_245_123), "2023-08-26T14:30:45.123Z");
        assert_eq!(timestamp(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(timestamp(4_107_542_399_999), "2100-02-28T23:59:59.999Z");
    }
}
