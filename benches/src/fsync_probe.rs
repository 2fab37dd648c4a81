//! The fsync probe: append a small record to a file and `fdatasync` it, again and again.
//!
//! This is exactly the work of a write-ahead log under the `always` sync policy with one
//! writer, minus everything else, so its rate is the ceiling of durable single-writer commits
//! on this disk. Group commit (the `batch` policy) beats it by sharing one sync among many
//! writers; nothing durable beats it per sync.
//!
//! Each record is written with `write(2)` at the end of the file (the file grows, as a log
//! does) and made durable with `File::sync_data`, which is `fdatasync(2)` on Linux. One
//! unmeasured record goes first so the file's creation is not in the figures.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::latency::{new_latency_histogram_us, record_latency, LatencySummary};
use crate::BenchError;

/// The largest record the probe writes.
pub const RECORD_SIZE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// The most records one probe writes.
pub const RECORD_COUNT_MAX: u64 = 10_000_000;
/// The longest a probe may run.
pub const PROBE_DURATION_MAX: Duration = Duration::from_secs(3600);
/// The name of the file the probe appends to, inside its own temporary directory.
pub const PROBE_FILE_NAME: &str = "fsync-probe.log";

/// What to probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsyncProbeConfig {
    /// Where to create the probe's temporary directory; `None` means the system's temp dir.
    pub parent_directory: Option<PathBuf>,
    /// Bytes per record.
    pub record_size_bytes: usize,
    /// Records to write and sync (fewer if `duration_max` passes first).
    pub record_count: u64,
    /// The longest the probe runs.
    pub duration_max: Duration,
}

/// What the probe measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FsyncProbeReport {
    /// Always `fsync-probe`.
    pub tool: String,
    /// The directory the file was in (removed afterwards).
    pub directory: String,
    /// Bytes per record.
    pub record_size_bytes: usize,
    /// Records written and synced.
    pub records: u64,
    /// Wall time of the measured loop.
    pub elapsed_seconds: f64,
    /// Records made durable per second, write and sync together.
    pub ops_per_second: f64,
    /// Latency of `fdatasync` alone.
    pub fdatasync_latency: LatencySummary,
    /// Latency of `write` alone.
    pub write_latency: LatencySummary,
}

impl FsyncProbeConfig {
    /// Checks the limits.
    pub fn validate(&self) -> Result<(), BenchError> {
        let invalid = |reason: String| Err(BenchError::InvalidConfig { reason });
        if self.record_size_bytes == 0 || self.record_size_bytes > RECORD_SIZE_BYTES_MAX {
            return invalid(format!(
                "--record-size must be between 1 and {RECORD_SIZE_BYTES_MAX}"
            ));
        }
        if self.record_count == 0 || self.record_count > RECORD_COUNT_MAX {
            return invalid(format!("--count must be between 1 and {RECORD_COUNT_MAX}"));
        }
        if self.duration_max.is_zero() || self.duration_max > PROBE_DURATION_MAX {
            return invalid(format!(
                "--duration must be above 0 and at most {}s",
                PROBE_DURATION_MAX.as_secs()
            ));
        }
        Ok(())
    }
}

/// Runs the probe in a fresh temporary directory, which is removed afterwards.
pub fn run_fsync_probe(config: &FsyncProbeConfig) -> Result<FsyncProbeReport, BenchError> {
    config.validate()?;
    let temporary_directory = match &config.parent_directory {
        Some(parent_directory) => tempfile::Builder::new()
            .prefix("fsync-probe-")
            .tempdir_in(parent_directory),
        None => tempfile::Builder::new().prefix("fsync-probe-").tempdir(),
    }
    .map_err(|source| BenchError::Io {
        path: config
            .parent_directory
            .clone()
            .unwrap_or_else(std::env::temp_dir),
        source,
    })?;
    let file_path = temporary_directory.path().join(PROBE_FILE_NAME);
    let io_error = |source| BenchError::Io {
        path: file_path.clone(),
        source,
    };
    let mut file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&file_path)
        .map_err(io_error)?;

    let mut record = vec![0u8; config.record_size_bytes];
    append_and_sync(&mut file, &mut record, 0).map_err(io_error)?;

    let mut fdatasync_histogram_us = new_latency_histogram_us();
    let mut write_histogram_us = new_latency_histogram_us();
    let probe_start = Instant::now();
    let mut record_count_done = 0;
    for record_index in 1..=config.record_count {
        if probe_start.elapsed() >= config.duration_max {
            break;
        }
        let (write_latency, fdatasync_latency) =
            append_and_sync(&mut file, &mut record, record_index).map_err(io_error)?;
        record_latency(&mut write_histogram_us, write_latency);
        record_latency(&mut fdatasync_histogram_us, fdatasync_latency);
        record_count_done = record_index;
    }
    let elapsed = probe_start.elapsed();
    let report = FsyncProbeReport {
        tool: "fsync-probe".to_string(),
        directory: display_path(temporary_directory.path()),
        record_size_bytes: config.record_size_bytes,
        records: record_count_done,
        elapsed_seconds: elapsed.as_secs_f64(),
        ops_per_second: (record_count_done as f64 / elapsed.as_secs_f64() * 10.0).round() / 10.0,
        fdatasync_latency: LatencySummary::from_histogram(&fdatasync_histogram_us),
        write_latency: LatencySummary::from_histogram(&write_histogram_us),
    };
    drop(file);
    temporary_directory
        .close()
        .map_err(|source| BenchError::Io {
            path: file_path.clone(),
            source,
        })?;
    Ok(report)
}

impl FsyncProbeReport {
    /// The report for people, a few lines.
    pub fn to_text(&self) -> String {
        format!(
            "fsync-probe: {} records of {} B appended and fdatasync'd in {} ({})\n\
             {:.1} durable appends/s\n\
             fdatasync: {}\n\
             write:     {}",
            self.records,
            self.record_size_bytes,
            crate::duration::format_duration_short(Duration::from_secs_f64(self.elapsed_seconds)),
            self.directory,
            self.ops_per_second,
            self.fdatasync_latency.to_text(),
            self.write_latency.to_text()
        )
    }
}

/// Fills `record` with a pattern that is never all zeros, appends it and syncs the data.
fn append_and_sync(
    file: &mut File,
    record: &mut [u8],
    record_index: u64,
) -> std::io::Result<(Duration, Duration)> {
    let fill_byte = (record_index % 255) as u8 + 1;
    record.fill(fill_byte);
    let write_start = Instant::now();
    file.write_all(record)?;
    let sync_start = Instant::now();
    file.sync_data()?;
    Ok((sync_start - write_start, sync_start.elapsed()))
}

fn display_path(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_writes_every_record_and_cleans_up() {
        let parent_directory = tempfile::tempdir().unwrap();
        let config = FsyncProbeConfig {
            parent_directory: Some(parent_directory.path().to_path_buf()),
            record_size_bytes: 64,
            record_count: 20,
            duration_max: Duration::from_secs(600),
        };
        let report = run_fsync_probe(&config).unwrap();
        assert_eq!(report.records, 20);
        assert_eq!(report.fdatasync_latency.count, 20);
        assert_eq!(report.write_latency.count, 20);
        assert!(report
            .directory
            .starts_with(&*parent_directory.path().to_string_lossy()));
        // The probe's own directory is gone; the parent is empty again.
        assert_eq!(
            std::fs::read_dir(parent_directory.path()).unwrap().count(),
            0
        );

        let json = serde_json::to_value(&report).unwrap();
        for field in [
            "ops_per_second",
            "records",
            "fdatasync_latency",
            "write_latency",
        ] {
            assert!(json.get(field).is_some(), "{field}");
        }
        assert!(json["fdatasync_latency"]["p99_us"].is_number());
    }

    #[test]
    fn limits_are_checked() {
        let valid = FsyncProbeConfig {
            parent_directory: None,
            record_size_bytes: 128,
            record_count: 2000,
            duration_max: Duration::from_secs(30),
        };
        assert!(valid.validate().is_ok());
        for invalid in [
            FsyncProbeConfig {
                record_size_bytes: 0,
                ..valid.clone()
            },
            FsyncProbeConfig {
                record_count: 0,
                ..valid.clone()
            },
            FsyncProbeConfig {
                duration_max: Duration::ZERO,
                ..valid.clone()
            },
        ] {
            assert!(matches!(
                run_fsync_probe(&invalid),
                Err(BenchError::InvalidConfig { .. })
            ));
        }
    }
}
