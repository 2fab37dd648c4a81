//! Latency histograms (HdrHistogram, microsecond resolution) and their printed summary.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// The largest latency a histogram tracks exactly; longer ones are recorded as this.
pub const LATENCY_US_MAX: u64 = 3_600_000_000;
/// Significant decimal digits kept by every latency histogram (0.1% relative error).
pub const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;

/// An empty histogram of latencies in microseconds, from 1 µs to [`LATENCY_US_MAX`].
pub fn new_latency_histogram_us() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, LATENCY_SIGNIFICANT_DIGITS)
        .expect("constant histogram bounds are valid")
}

/// Records one latency, rounded down to whole microseconds and clamped to the tracked range.
pub fn record_latency(histogram_us: &mut Histogram<u64>, latency: Duration) {
    let latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    histogram_us.saturating_record(latency_us.min(LATENCY_US_MAX));
}

/// The percentiles of a latency histogram, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// How many latencies were recorded.
    pub count: u64,
    /// The smallest.
    pub min_us: u64,
    /// The arithmetic mean.
    pub mean_us: f64,
    /// The median.
    pub p50_us: u64,
    /// The 90th percentile.
    pub p90_us: u64,
    /// The 99th percentile.
    pub p99_us: u64,
    /// The 99.9th percentile.
    pub p999_us: u64,
    /// The largest.
    pub max_us: u64,
}

impl LatencySummary {
    /// Reads the percentiles off a histogram; an empty histogram gives all zeros.
    pub fn from_histogram(histogram_us: &Histogram<u64>) -> LatencySummary {
        if histogram_us.is_empty() {
            return LatencySummary {
                count: 0,
                min_us: 0,
                mean_us: 0.0,
                p50_us: 0,
                p90_us: 0,
                p99_us: 0,
                p999_us: 0,
                max_us: 0,
            };
        }
        LatencySummary {
            count: histogram_us.len(),
            min_us: histogram_us.min(),
            mean_us: (histogram_us.mean() * 10.0).round() / 10.0,
            p50_us: histogram_us.value_at_quantile(0.50),
            p90_us: histogram_us.value_at_quantile(0.90),
            p99_us: histogram_us.value_at_quantile(0.99),
            p999_us: histogram_us.value_at_quantile(0.999),
            max_us: histogram_us.max(),
        }
    }

    /// One line for people: `p50 80us  p90 120us  p99 300us  p99.9 900us  max 4.000ms`.
    pub fn to_text(&self) -> String {
        let format_us =
            |value_us: u64| crate::duration::format_duration_short(Duration::from_micros(value_us));
        format!(
            "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {}, n={})",
            format_us(self.p50_us),
            format_us(self.p90_us),
            format_us(self.p99_us),
            format_us(self.p999_us),
            format_us(self.max_us),
            format_us(self.mean_us.round() as u64),
            self.count
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_known_values() {
        let mut histogram_us = new_latency_histogram_us();
        for latency_us in 1..=1000u64 {
            record_latency(&mut histogram_us, Duration::from_micros(latency_us));
        }
        let summary = LatencySummary::from_histogram(&histogram_us);
        assert_eq!(summary.count, 1000);
        assert_eq!(summary.min_us, 1);
        assert_eq!(summary.max_us, 1000);
        assert_eq!(summary.p50_us, 500);
        assert_eq!(summary.p90_us, 900);
        assert_eq!(summary.p99_us, 990);
        assert_eq!(summary.p999_us, 999);
        assert!((summary.mean_us - 500.5).abs() < 1.0);
    }

    #[test]
    fn empty_and_out_of_range() {
        let histogram_us = new_latency_histogram_us();
        assert_eq!(LatencySummary::from_histogram(&histogram_us).count, 0);

        let mut histogram_us = new_latency_histogram_us();
        record_latency(&mut histogram_us, Duration::from_secs(100_000));
        let summary = LatencySummary::from_histogram(&histogram_us);
        assert_eq!(summary.count, 1);
        assert!(summary.max_us >= LATENCY_US_MAX);
    }
}
