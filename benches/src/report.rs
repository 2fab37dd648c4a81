//! The result of a run: one [`BenchReport`], printed as text or as a single JSON object.
//!
//! The JSON field names are a contract with `scripts/bench-all` and `scripts/bench-plot`:
//! rename one and those break.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cli::BenchConfig;
use crate::duration::format_duration_short;
use crate::latency::{new_latency_histogram_us, LatencySummary};
use crate::outcome::FailureCounts;
use crate::stats::{OperationCounts, PhaseStats};
use crate::workload::Workload;

/// Everything a run measured, plus the settings needed to read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    /// Always `kv-bench`.
    pub tool: String,
    /// The workload as given: `put`, `get`, `delete`, `mixed:R`, `lag`, `cas`, `txn`.
    pub workload: String,
    /// `closed` or `open`.
    pub loop_mode: String,
    /// The open-loop rate, requests per second; absent in a closed loop.
    pub target_rate_per_second: Option<f64>,
    /// Target URLs; writes went to the first.
    pub urls: Vec<String>,
    /// Workers, each with one connection per URL.
    pub connections: usize,
    /// The `acks` sent with writes, if any.
    pub acks: Option<String>,
    /// Distinct keys.
    pub key_count: u64,
    /// Bytes per key.
    pub key_size_bytes: usize,
    /// Bytes per value.
    pub value_size_bytes: usize,
    /// Seed of the key and operation choices.
    pub seed: u64,
    /// Length of the unmeasured warm-up.
    pub warmup_seconds: f64,
    /// Wall time of the measured phase, until the last measured answer.
    pub elapsed_seconds: f64,
    /// Measured requests that finished, whatever their outcome.
    pub requests: u64,
    /// Successful answers (ok and not found) per second of `elapsed_seconds`.
    pub throughput_per_second: f64,
    /// Latency of every measured request that got an HTTP answer.
    pub latency: LatencySummary,
    /// Requests answered with the expected 2xx.
    pub ok: u64,
    /// GETs and DELETEs answered 404 (not failures).
    pub not_found: u64,
    /// Failed requests, all kinds.
    pub errors: u64,
    /// Failed requests by kind.
    pub error_kinds: FailureCounts,
    /// Connections reopened after an error.
    pub reconnects: u64,
    /// Open loop only: requests that came due before the end but were never sent.
    pub scheduled_not_sent: u64,
    /// Measured requests by verb.
    pub operations: OperationCounts,
    /// The prefill phase, if one ran.
    pub prefill: Option<PrefillReport>,
    /// `lag` workload only: leader acknowledgement to follower answer.
    pub replication_lag: Option<ReplicationLagReport>,
    /// `--stream-followers`: what the simulated followers saw.
    pub stream_followers: Option<crate::followers::FollowersReport>,
}

/// The follower reads of a `lag` run: for each acknowledged PUT, the time from the leader's
/// answer to a follower's 200 to `GET /key/{key}?min_id=<id>`. An upper bound of the true lag:
/// it includes one loopback round trip to the follower.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicationLagReport {
    /// Lag of every follower read answered 200.
    pub lag: LatencySummary,
    /// Follower reads that failed (504 when the write was not applied within `--lag-wait`).
    pub errors: u64,
    /// Failed follower reads by kind.
    pub error_kinds: FailureCounts,
    /// The `wait_ms` of each follower read.
    pub wait_ms: u64,
    /// One acknowledged write in this many (per connection) was followed by a read.
    pub every: u64,
    /// The lag on each follower, in the order of the URLs after the first.
    pub by_follower: Vec<FollowerLagReport>,
}

/// The lag measured on one follower.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FollowerLagReport {
    /// The follower's URL.
    pub url: String,
    /// Lag of the reads it answered 200.
    pub lag: LatencySummary,
}

/// What the `--prefill` phase did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrefillReport {
    /// PUTs sent.
    pub requests: u64,
    /// PUTs answered ok.
    pub ok: u64,
    /// PUTs that failed.
    pub errors: u64,
    /// Failed PUTs by kind.
    pub error_kinds: FailureCounts,
    /// Wall time of the prefill.
    pub elapsed_seconds: f64,
}

impl PrefillReport {
    /// Summarizes the prefill's merged stats.
    pub fn from_stats(stats: &PhaseStats, elapsed: Duration) -> PrefillReport {
        PrefillReport {
            requests: stats.request_count(),
            ok: stats.ok_count,
            errors: stats.failure_counts.total(),
            error_kinds: stats.failure_counts,
            elapsed_seconds: elapsed.as_secs_f64(),
        }
    }
}

impl BenchReport {
    /// Builds the report of a run from its configuration and merged measured stats.
    pub fn new(
        config: &BenchConfig,
        stats: &PhaseStats,
        elapsed: Duration,
        scheduled_not_sent: u64,
        prefill: Option<PrefillReport>,
    ) -> BenchReport {
        let elapsed_seconds = elapsed.as_secs_f64();
        let throughput_per_second = if elapsed_seconds > 0.0 {
            stats.success_count() as f64 / elapsed_seconds
        } else {
            0.0
        };
        BenchReport {
            tool: "kv-bench".to_string(),
            workload: config.workload.to_string(),
            loop_mode: if config.open_loop_schedule.is_some() {
                "open"
            } else {
                "closed"
            }
            .to_string(),
            target_rate_per_second: config
                .open_loop_schedule
                .map(|schedule| schedule.rate_per_second()),
            urls: config
                .targets
                .iter()
                .map(|target| target.url_text.clone())
                .collect(),
            connections: config.connection_count,
            acks: config.acks.map(|acks| acks.query_value().to_string()),
            key_count: config.key_space.key_count(),
            key_size_bytes: config.key_space.key_size_bytes(),
            value_size_bytes: config.key_space.value_size_bytes(),
            seed: config.seed,
            warmup_seconds: config.warmup.as_secs_f64(),
            elapsed_seconds,
            requests: stats.request_count(),
            throughput_per_second: (throughput_per_second * 10.0).round() / 10.0,
            latency: LatencySummary::from_histogram(&stats.latency_histogram_us),
            ok: stats.ok_count,
            not_found: stats.not_found_count,
            errors: stats.failure_counts.total(),
            error_kinds: stats.failure_counts,
            reconnects: stats.reconnect_count,
            scheduled_not_sent,
            operations: stats.operation_counts,
            prefill,
            replication_lag: (config.workload == Workload::Lag).then(|| ReplicationLagReport {
                lag: LatencySummary::from_histogram(&stats.replication_lag_histogram_us),
                errors: stats.replication_lag_failure_counts.total(),
                error_kinds: stats.replication_lag_failure_counts,
                wait_ms: config.lag_wait.as_millis() as u64,
                every: config.lag_every,
                by_follower: config
                    .targets
                    .iter()
                    .skip(1)
                    .enumerate()
                    .map(|(follower_index, target)| FollowerLagReport {
                        url: target.url_text.clone(),
                        lag: stats
                            .replication_lag_by_follower_us
                            .get(follower_index)
                            .map_or_else(
                                || LatencySummary::from_histogram(&new_latency_histogram_us()),
                                LatencySummary::from_histogram,
                            ),
                    })
                    .collect(),
            }),
            stream_followers: None,
        }
    }

    /// Failed requests in the measured phase and the prefill together.
    pub fn error_count_with_prefill(&self) -> u64 {
        self.errors + self.prefill.as_ref().map_or(0, |prefill| prefill.errors)
    }

    /// The report for people, a few lines.
    pub fn to_text(&self) -> String {
        let mut lines = Vec::new();
        let rate_text = match self.target_rate_per_second {
            Some(rate) => format!("open loop at {rate} req/s"),
            None => "closed loop".to_string(),
        };
        let acks_text = match &self.acks {
            Some(acks) => format!(", acks={acks}"),
            None => String::new(),
        };
        lines.push(format!(
            "kv-bench {}: {rate_text}, {} connections, {} keys of {} B, values of {} B{acks_text}, \
             seed {}",
            self.workload,
            self.connections,
            self.key_count,
            self.key_size_bytes,
            self.value_size_bytes,
            self.seed
        ));
        lines.push(format!(
            "targets: {} (writes go to the first)",
            self.urls.join(" ")
        ));
        if let Some(prefill) = &self.prefill {
            lines.push(format!(
                "prefill: {} PUTs in {}, {} errors",
                prefill.requests,
                format_duration_short(Duration::from_secs_f64(prefill.elapsed_seconds)),
                prefill.errors
            ));
        }
        lines.push(format!(
            "measured {} after a {} warm-up: {} requests, {:.1} req/s",
            format_duration_short(Duration::from_secs_f64(self.elapsed_seconds)),
            format_duration_short(Duration::from_secs_f64(self.warmup_seconds)),
            self.requests,
            self.throughput_per_second
        ));
        lines.push(format!("latency: {}", self.latency.to_text()));
        let kinds = &self.error_kinds;
        lines.push(format!(
            "ok {}  not found {}  errors {} (connect {}, timeout {}, io {}, 4xx {}, 5xx {}, \
             other status {}, body mismatch {}, condition failed {})  reconnects {}",
            self.ok,
            self.not_found,
            self.errors,
            kinds.connect,
            kinds.timeout,
            kinds.io,
            kinds.status_4xx,
            kinds.status_5xx,
            kinds.status_other,
            kinds.body_mismatch,
            kinds.condition_failed,
            self.reconnects
        ));
        if let Some(followers) = &self.stream_followers {
            lines.push(format!(
                "simulated stream followers: {} ({} pushes, {} with frames, {} frame bytes, {} \
                 acks, {} failed{})",
                followers.followers,
                followers.pushes,
                followers.batches,
                followers.frame_bytes,
                followers.acks,
                followers.failures,
                followers
                    .first_failure
                    .as_ref()
                    .map_or_else(String::new, |reason| format!(": {reason}"))
            ));
        }
        if let Some(replication_lag) = &self.replication_lag {
            lines.push(format!(
                "replication lag (leader ack -> follower min_id read, 1 write in {}): {}",
                replication_lag.every,
                replication_lag.lag.to_text()
            ));
            for follower in &replication_lag.by_follower {
                lines.push(format!("  on {}: {}", follower.url, follower.lag.to_text()));
            }
            lines.push(format!(
                "follower reads failed: {} (5xx/504 not applied within {} ms: {}, timeout {}, \
                 other {})",
                replication_lag.errors,
                replication_lag.wait_ms,
                replication_lag.error_kinds.status_5xx,
                replication_lag.error_kinds.timeout,
                replication_lag.errors
                    - replication_lag.error_kinds.status_5xx
                    - replication_lag.error_kinds.timeout
            ));
        }
        if self.target_rate_per_second.is_some() {
            lines.push(format!(
                "scheduled but not sent before the end: {}",
                self.scheduled_not_sent
            ));
            let scheduled_count = self.requests + self.scheduled_not_sent;
            if self.scheduled_not_sent * 100 > scheduled_count {
                lines.push(
                    "warning: over 1% of the schedule was never sent: the target (or this \
                     generator) cannot keep up with the rate; the latency shown covers only \
                     what was sent"
                        .to_string(),
                );
            }
        }
        lines.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;

    use super::*;
    use crate::cli::BenchArgs;
    use crate::outcome::{FailureKind, Outcome};
    use crate::workload::Operation;

    fn sample_report() -> BenchReport {
        let config = BenchArgs::parse_from([
            "kv-bench",
            "mixed:50",
            "--url",
            "http://127.0.0.1:9",
            "--duration",
            "2s",
            "--connections",
            "4",
            "--acks",
            "all",
            "--seed",
            "3",
        ])
        .into_config(0)
        .unwrap();
        let mut stats = PhaseStats::default();
        for latency_us in [100, 200, 300] {
            stats.record(
                Operation::Get,
                Outcome::Ok,
                Some(Duration::from_micros(latency_us)),
            );
        }
        stats.record(
            Operation::Get,
            Outcome::NotFound,
            Some(Duration::from_micros(50)),
        );
        stats.record(
            Operation::Put,
            Outcome::Failed(FailureKind::Status5xx),
            None,
        );
        let prefill_stats = PhaseStats::default();
        let prefill = PrefillReport::from_stats(&prefill_stats, Duration::from_millis(10));
        BenchReport::new(&config, &stats, Duration::from_secs(2), 0, Some(prefill))
    }

    #[test]
    fn json_shape_is_the_documented_contract() {
        let report = sample_report();
        let json = serde_json::to_value(&report).unwrap();
        let object = json.as_object().unwrap();
        let expected_fields = [
            "tool",
            "workload",
            "loop_mode",
            "target_rate_per_second",
            "urls",
            "connections",
            "acks",
            "key_count",
            "key_size_bytes",
            "value_size_bytes",
            "seed",
            "warmup_seconds",
            "elapsed_seconds",
            "requests",
            "throughput_per_second",
            "latency",
            "ok",
            "not_found",
            "errors",
            "error_kinds",
            "reconnects",
            "scheduled_not_sent",
            "operations",
            "prefill",
            "replication_lag",
            "stream_followers",
        ];
        let mut actual_fields: Vec<&str> = object.keys().map(String::as_str).collect();
        actual_fields.sort_unstable();
        let mut expected_sorted = expected_fields.to_vec();
        expected_sorted.sort_unstable();
        assert_eq!(actual_fields, expected_sorted);

        assert_eq!(json["tool"], "kv-bench");
        assert_eq!(json["workload"], "mixed:50");
        assert_eq!(json["loop_mode"], "closed");
        assert_eq!(json["target_rate_per_second"], serde_json::Value::Null);
        assert_eq!(json["acks"], "all");
        assert_eq!(json["requests"], 5);
        assert_eq!(json["ok"], 3);
        assert_eq!(json["not_found"], 1);
        assert_eq!(json["errors"], 1);
        assert_eq!(json["error_kinds"]["status_5xx"], 1);
        assert_eq!(json["throughput_per_second"], 2.0);
        assert_eq!(json["latency"]["count"], 4);
        assert_eq!(json["latency"]["max_us"], 300);
        for percentile_field in ["p50_us", "p90_us", "p99_us", "p999_us", "min_us", "mean_us"] {
            assert!(
                json["latency"][percentile_field].is_number(),
                "{percentile_field}"
            );
        }
        assert_eq!(json["operations"]["get"], 4);
        assert_eq!(json["prefill"]["requests"], 0);
        assert_eq!(json["replication_lag"], serde_json::Value::Null);

        let round_trip: BenchReport = serde_json::from_value(json).unwrap();
        assert_eq!(round_trip, report);
    }

    #[test]
    fn text_mentions_the_figures() {
        let text = sample_report().to_text();
        assert!(text.contains("kv-bench mixed:50"), "{text}");
        assert!(text.contains("2.0 req/s"), "{text}");
        assert!(text.contains("5xx 1"), "{text}");
        assert!(text.contains("prefill: 0 PUTs"), "{text}");
    }

    #[test]
    fn errors_include_prefill() {
        let mut report = sample_report();
        report.prefill.as_mut().unwrap().errors = 4;
        assert_eq!(report.error_count_with_prefill(), 5);
    }
}
