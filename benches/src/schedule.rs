//! The open-loop schedule: when each request of a fixed-rate run is *meant* to start.
//!
//! With `--rate R`, request number `n` (counted over all workers from the start of the warm-up)
//! is due at `n / R` seconds. Workers take the next number from a shared counter, wait until
//! its due time if they are early, send, and measure latency from the due time. When the
//! server falls behind, workers are late, and the lateness shows up in the latency instead of
//! silently lowering the offered rate (the coordinated-omission trap that wrk2 avoids the
//! same way). Numbers that come due before the end but were never sent are reported.

use std::time::Duration;

use crate::BenchError;

/// How late tokio's timer may wake an idle worker before the lateness counts as latency.
/// The timer wheel has millisecond granularity; one more millisecond covers scheduling.
pub const TIMER_SLACK_MAX: Duration = Duration::from_millis(2);

/// The highest open-loop rate accepted, requests per second over all connections.
pub const RATE_PER_SECOND_MAX: f64 = 10_000_000.0;

/// A fixed request rate: request `n` is due `n / rate` seconds after the schedule starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpenLoopSchedule {
    rate_per_second: f64,
}

impl OpenLoopSchedule {
    /// A schedule of `rate_per_second` requests per second, which must be positive and finite.
    pub fn new(rate_per_second: f64) -> Result<OpenLoopSchedule, BenchError> {
        if !(rate_per_second.is_finite()
            && rate_per_second > 0.0
            && rate_per_second <= RATE_PER_SECOND_MAX)
        {
            return Err(BenchError::InvalidConfig {
                reason: format!(
                    "--rate must be above 0 and at most {RATE_PER_SECOND_MAX}, \
                     got {rate_per_second}"
                ),
            });
        }
        Ok(OpenLoopSchedule { rate_per_second })
    }

    /// The rate, requests per second.
    pub fn rate_per_second(&self) -> f64 {
        self.rate_per_second
    }

    /// How long after the start request `sequence_index` is due.
    pub fn due_offset(&self, sequence_index: u64) -> Duration {
        Duration::from_secs_f64(sequence_index as f64 / self.rate_per_second)
    }

    /// How many requests are due strictly before `window` has passed since the start.
    pub fn due_count_before(&self, window: Duration) -> u64 {
        let due_count = (window.as_secs_f64() * self.rate_per_second).ceil();
        // Saturates on absurd windows; the run's request cap bounds it anyway.
        due_count as u64
    }
}

/// When the latency of an open-loop request starts, as offsets from the schedule's start.
///
/// A worker that took its ticket late (`taken_offset >= due_offset`) was busy: the server
/// held it up, and the wait since the due time is latency. A worker that took its ticket
/// early slept until the due time; the timer may wake it a little late, and that lateness is
/// the generator's, not the server's, so latency starts at the wake-up, but never more than
/// [`TIMER_SLACK_MAX`] after the due time (longer lateness, e.g. a starved generator, counts).
pub fn open_loop_latency_start_offset(
    due_offset: Duration,
    taken_offset: Duration,
    woken_offset: Duration,
) -> Duration {
    if taken_offset >= due_offset {
        due_offset
    } else {
        woken_offset.clamp(due_offset, due_offset + TIMER_SLACK_MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_offsets_are_evenly_spaced() {
        let schedule = OpenLoopSchedule::new(1000.0).unwrap();
        assert_eq!(schedule.due_offset(0), Duration::ZERO);
        assert_eq!(schedule.due_offset(1), Duration::from_millis(1));
        assert_eq!(schedule.due_offset(1000), Duration::from_secs(1));
        assert_eq!(schedule.due_offset(2500), Duration::from_millis(2500));
    }

    #[test]
    fn fractional_rates() {
        let schedule = OpenLoopSchedule::new(0.5).unwrap();
        assert_eq!(schedule.due_offset(1), Duration::from_secs(2));
        assert_eq!(schedule.due_count_before(Duration::from_secs(2)), 1);
        assert_eq!(schedule.due_count_before(Duration::from_millis(2001)), 2);
    }

    #[test]
    fn due_count_matches_offsets() {
        let schedule = OpenLoopSchedule::new(1000.0).unwrap();
        assert_eq!(schedule.due_count_before(Duration::ZERO), 0);
        assert_eq!(schedule.due_count_before(Duration::from_secs(1)), 1000);
        assert_eq!(schedule.due_count_before(Duration::from_micros(1500)), 2);
        // Every request counted as due before the window is due before it, and the next is not.
        for window_ms in [1u64, 7, 100, 999, 1000, 12_345] {
            let window = Duration::from_millis(window_ms);
            let due_count = schedule.due_count_before(window);
            assert!(schedule.due_offset(due_count - 1) < window);
            assert!(schedule.due_offset(due_count) >= window);
        }
    }

    #[test]
    fn latency_starts_at_due_time_unless_the_timer_was_late() {
        let ms = Duration::from_millis;
        // Busy worker: the ticket was overdue when taken; latency includes the queueing.
        assert_eq!(
            open_loop_latency_start_offset(ms(10), ms(15), ms(15)),
            ms(10)
        );
        assert_eq!(
            open_loop_latency_start_offset(ms(10), ms(10), ms(10)),
            ms(10)
        );
        // Idle worker woken on time, or slightly late by the timer: start at the wake-up.
        assert_eq!(
            open_loop_latency_start_offset(ms(10), ms(5), ms(10)),
            ms(10)
        );
        let late_wake = ms(10) + Duration::from_micros(900);
        assert_eq!(
            open_loop_latency_start_offset(ms(10), ms(5), late_wake),
            late_wake
        );
        // Woken far too late: only the slack is forgiven, the rest is latency.
        assert_eq!(
            open_loop_latency_start_offset(ms(10), ms(5), ms(50)),
            ms(10) + TIMER_SLACK_MAX
        );
    }

    #[test]
    fn rejects_bad_rates() {
        for rate in [
            0.0,
            -1.0,
            f64::NAN,
            f64::INFINITY,
            RATE_PER_SECOND_MAX * 2.0,
        ] {
            assert!(matches!(
                OpenLoopSchedule::new(rate),
                Err(BenchError::InvalidConfig { .. })
            ));
        }
    }
}
