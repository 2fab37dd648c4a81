//! Per-worker tallies of one phase of a run, merged into one at the end.
//!
//! Each worker owns its own [`PhaseStats`], so recording takes no lock; the runner merges
//! them once every worker has stopped.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::latency::{new_latency_histogram_us, record_latency};
use crate::outcome::{FailureCounts, FailureKind, Outcome};
use crate::workload::Operation;

/// How many requests of each verb were sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationCounts {
    /// GET requests.
    pub get: u64,
    /// PUT requests.
    pub put: u64,
    /// DELETE requests.
    pub delete: u64,
    /// Compare-and-set PUTs (`cas`). (Absent from reports older than the field.)
    #[serde(default)]
    pub cas_put: u64,
    /// Transactions (`txn`). (Absent from reports older than the field.)
    #[serde(default)]
    pub txn: u64,
}

/// What one worker saw in one phase.
#[derive(Debug, Clone)]
pub struct PhaseStats {
    /// Latency of every request that got an HTTP answer, whatever its status, in µs.
    pub latency_histogram_us: Histogram<u64>,
    /// Requests answered with the expected 2xx.
    pub ok_count: u64,
    /// GETs and DELETEs answered 404.
    pub not_found_count: u64,
    /// Failed requests by kind.
    pub failure_counts: FailureCounts,
    /// Connections opened again after an earlier one to the same target broke.
    pub reconnect_count: u64,
    /// Requests by verb.
    pub operation_counts: OperationCounts,
    /// `lag` workload: time from the leader's answer to a PUT to a follower's answer to the
    /// `min_id` read of that write, in µs (only reads answered 200).
    pub replication_lag_histogram_us: Histogram<u64>,
    /// `lag` workload: follower reads that failed (504: not applied within `--lag-wait`).
    pub replication_lag_failure_counts: FailureCounts,
    /// `lag` workload: the same lags split by follower (index 0 is the second URL); grown as
    /// followers are first recorded.
    pub replication_lag_by_follower_us: Vec<Histogram<u64>>,
}

impl Default for PhaseStats {
    fn default() -> Self {
        PhaseStats {
            latency_histogram_us: new_latency_histogram_us(),
            ok_count: 0,
            not_found_count: 0,
            failure_counts: FailureCounts::default(),
            reconnect_count: 0,
            operation_counts: OperationCounts::default(),
            replication_lag_histogram_us: new_latency_histogram_us(),
            replication_lag_failure_counts: FailureCounts::default(),
            replication_lag_by_follower_us: Vec::new(),
        }
    }
}

impl PhaseStats {
    /// Records one finished request. `latency` is `None` when there was no HTTP answer
    /// (connect failure, timeout, broken connection): such requests are counted, not timed.
    pub fn record(&mut self, operation: Operation, outcome: Outcome, latency: Option<Duration>) {
        match operation {
            Operation::Get => self.operation_counts.get += 1,
            Operation::Put => self.operation_counts.put += 1,
            Operation::Delete => self.operation_counts.delete += 1,
            Operation::CasPut => self.operation_counts.cas_put += 1,
            Operation::Txn => self.operation_counts.txn += 1,
        }
        match outcome {
            Outcome::Ok => self.ok_count += 1,
            Outcome::NotFound => self.not_found_count += 1,
            Outcome::Failed(failure_kind) => self.failure_counts.add(failure_kind),
        }
        if let Some(latency) = latency {
            record_latency(&mut self.latency_histogram_us, latency);
        }
    }

    /// Records the read of a `lag` write on follower `follower_index` (0: the second URL): its
    /// lag, or why there is none.
    pub fn record_replication_lag(
        &mut self,
        follower_index: usize,
        lag: Result<Duration, FailureKind>,
    ) {
        match lag {
            Ok(lag) => {
                record_latency(&mut self.replication_lag_histogram_us, lag);
                grow_histograms(&mut self.replication_lag_by_follower_us, follower_index + 1);
                record_latency(
                    &mut self.replication_lag_by_follower_us[follower_index],
                    lag,
                );
            }
            Err(failure_kind) => self.replication_lag_failure_counts.add(failure_kind),
        }
    }

    /// Adds another worker's tallies to these.
    pub fn merge(&mut self, other: &PhaseStats) {
        self.latency_histogram_us
            .add(&other.latency_histogram_us)
            .expect("histograms with the same bounds always merge");
        self.ok_count += other.ok_count;
        self.not_found_count += other.not_found_count;
        self.failure_counts.merge(&other.failure_counts);
        self.reconnect_count += other.reconnect_count;
        self.operation_counts.get += other.operation_counts.get;
        self.operation_counts.put += other.operation_counts.put;
        self.operation_counts.delete += other.operation_counts.delete;
        self.operation_counts.cas_put += other.operation_counts.cas_put;
        self.operation_counts.txn += other.operation_counts.txn;
        self.replication_lag_histogram_us
            .add(&other.replication_lag_histogram_us)
            .expect("histograms with the same bounds always merge");
        self.replication_lag_failure_counts
            .merge(&other.replication_lag_failure_counts);
        grow_histograms(
            &mut self.replication_lag_by_follower_us,
            other.replication_lag_by_follower_us.len(),
        );
        for (mine, theirs) in self
            .replication_lag_by_follower_us
            .iter_mut()
            .zip(&other.replication_lag_by_follower_us)
        {
            mine.add(theirs)
                .expect("histograms with the same bounds always merge");
        }
    }

    /// Every request that finished, one way or another.
    pub fn request_count(&self) -> u64 {
        self.ok_count + self.not_found_count + self.failure_counts.total()
    }

    /// Requests that got the answer the API promises (ok or not found).
    pub fn success_count(&self) -> u64 {
        self.ok_count + self.not_found_count
    }
}

/// Appends empty histograms until there are `count`.
fn grow_histograms(histograms: &mut Vec<Histogram<u64>>, count: usize) {
    while histograms.len() < count {
        histograms.push(new_latency_histogram_us());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_merges() {
        let mut first = PhaseStats::default();
        first.record(
            Operation::Get,
            Outcome::Ok,
            Some(Duration::from_micros(100)),
        );
        first.record(
            Operation::Get,
            Outcome::NotFound,
            Some(Duration::from_micros(50)),
        );
        first.record(Operation::Put, Outcome::Failed(FailureKind::Timeout), None);
        let mut second = PhaseStats::default();
        second.record(
            Operation::Delete,
            Outcome::Ok,
            Some(Duration::from_micros(300)),
        );
        second.record(
            Operation::CasPut,
            Outcome::Failed(FailureKind::ConditionFailed),
            Some(Duration::from_micros(80)),
        );
        second.record(Operation::Txn, Outcome::Ok, Some(Duration::from_micros(90)));
        second.reconnect_count = 2;
        second.record_replication_lag(1, Ok(Duration::from_micros(700)));
        second.record_replication_lag(0, Err(FailureKind::Status5xx));
        first.record_replication_lag(0, Ok(Duration::from_micros(200)));

        first.merge(&second);
        assert_eq!(first.request_count(), 6);
        assert_eq!(first.success_count(), 4);
        assert_eq!(first.failure_counts.timeout, 1);
        assert_eq!(first.failure_counts.condition_failed, 1);
        assert_eq!(first.reconnect_count, 2);
        assert_eq!(
            first.operation_counts,
            OperationCounts {
                get: 2,
                put: 1,
                delete: 1,
                cas_put: 1,
                txn: 1,
            }
        );
        // The timeout has no latency: five timed requests.
        assert_eq!(first.latency_histogram_us.len(), 5);
        assert_eq!(first.latency_histogram_us.max(), 300);
        assert_eq!(first.replication_lag_histogram_us.len(), 2);
        assert_eq!(first.replication_lag_failure_counts.status_5xx, 1);
        assert_eq!(first.replication_lag_by_follower_us.len(), 2);
        assert_eq!(first.replication_lag_by_follower_us[0].max(), 200);
        assert_eq!(first.replication_lag_by_follower_us[1].max(), 700);
    }
}
