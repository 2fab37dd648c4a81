//! The fsync probe: write a small record to a file and `fdatasync` it, again and again.
//!
//! This is exactly the work of a write-ahead log under the `always` sync policy with one
//! writer, minus everything else, so its rate is the ceiling of durable single-writer commits
//! on this disk. Group commit (the `batch` policy) beats it by sharing one sync among many
//! writers; nothing durable beats it per sync.
//!
//! Each record is written with `pwrite(2)` after the previous one and made durable with
//! `File::sync_data`, which is `fdatasync(2)` on Linux. The file is prepared in one of three
//! ways ([`ProbeFileMode`]), which decides whether that `fdatasync` must also write metadata:
//!
//! - `append`: the file grows with every record, as a log without preallocation does; every
//!   `fdatasync` also writes the new file size (an inode write, or a journal commit).
//! - `preallocated`: the file was written whole with zeros and synced before the loop (already
//!   allocated, already written): `fdatasync` writes the data block and nothing else. kv-wal's
//!   preallocated segments (`docs/wal-format.md`) aim at this; it is the c1 ceiling.
//! - `fallocated`: the file's space was reserved with `fallocate(2)` but never written: on most
//!   file systems the blocks are "unwritten" extents, and the first write into each turns it
//!   into a written one, a metadata change the `fdatasync` must carry.
//!
//! One unmeasured record goes first so the file's creation is not in the figures.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
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

/// The most bytes a probe prepares up front (`preallocated`, `fallocated`).
pub const PREPARED_BYTES_MAX: u64 = 1 << 30;

/// How the probe's file is prepared before the measured loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ProbeFileMode {
    /// An empty file that grows with every record.
    #[default]
    Append,
    /// A file written whole with zeros and synced first: every record overwrites zeros.
    Preallocated,
    /// A file whose space was reserved with `fallocate(2)` (mode 0) and synced, never written.
    Fallocated,
}

impl ProbeFileMode {
    /// Every mode, in the order reports list them.
    pub const ALL: [ProbeFileMode; 3] = [
        ProbeFileMode::Append,
        ProbeFileMode::Preallocated,
        ProbeFileMode::Fallocated,
    ];

    /// The mode's name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            ProbeFileMode::Append => "append",
            ProbeFileMode::Preallocated => "preallocated",
            ProbeFileMode::Fallocated => "fallocated",
        }
    }
}

impl std::str::FromStr for ProbeFileMode {
    type Err = String;
    fn from_str(text: &str) -> Result<ProbeFileMode, String> {
        ProbeFileMode::ALL
            .into_iter()
            .find(|mode| mode.name() == text)
            .ok_or_else(|| {
                format!("unknown probe mode {text:?}: expected append, preallocated or fallocated")
            })
    }
}

/// What to probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsyncProbeConfig {
    /// How the file is prepared.
    pub mode: ProbeFileMode,
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
    /// How the file was prepared (reports from before the modes existed were `append`).
    #[serde(default)]
    pub mode: ProbeFileMode,
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
        let prepared_bytes = self.prepared_bytes();
        if self.mode != ProbeFileMode::Append && prepared_bytes > PREPARED_BYTES_MAX {
            return invalid(format!(
                "--record-size × (--count + 1) is {prepared_bytes} bytes; a {} probe prepares \
                 at most {PREPARED_BYTES_MAX}",
                self.mode.name()
            ));
        }
        Ok(())
    }

    /// The bytes every record of the run takes, the unmeasured first one included.
    fn prepared_bytes(&self) -> u64 {
        (self.record_size_bytes as u64).saturating_mul(self.record_count.saturating_add(1))
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
    let file = OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .open(&file_path)
        .map_err(io_error)?;
    prepare(&file, config.mode, config.prepared_bytes()).map_err(io_error)?;

    let mut record = vec![0u8; config.record_size_bytes];
    write_and_sync(&file, &mut record, 0).map_err(io_error)?;

    let mut fdatasync_histogram_us = new_latency_histogram_us();
    let mut write_histogram_us = new_latency_histogram_us();
    let probe_start = Instant::now();
    let mut record_count_done = 0;
    for record_index in 1..=config.record_count {
        if probe_start.elapsed() >= config.duration_max {
            break;
        }
        let (write_latency, fdatasync_latency) =
            write_and_sync(&file, &mut record, record_index).map_err(io_error)?;
        record_latency(&mut write_histogram_us, write_latency);
        record_latency(&mut fdatasync_histogram_us, fdatasync_latency);
        record_count_done = record_index;
    }
    let elapsed = probe_start.elapsed();
    let report = FsyncProbeReport {
        tool: "fsync-probe".to_string(),
        mode: config.mode,
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
            "fsync-probe ({}): {} records of {} B written and fdatasync'd in {} ({})\n\
             {:.1} durable writes/s\n\
             fdatasync: {}\n\
             write:     {}",
            self.mode.name(),
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

/// Prepares the file for `mode`: nothing, `bytes` of zeros written and synced, or `bytes`
/// reserved with `fallocate(2)` and synced.
fn prepare(file: &File, mode: ProbeFileMode, bytes: u64) -> std::io::Result<()> {
    match mode {
        ProbeFileMode::Append => return Ok(()),
        ProbeFileMode::Preallocated => {
            let zeros = vec![0u8; 1 << 20];
            let mut offset = 0;
            while offset < bytes {
                let chunk = (bytes - offset).min(zeros.len() as u64) as usize;
                file.write_all_at(&zeros[..chunk], offset)?;
                offset += chunk as u64;
            }
        }
        ProbeFileMode::Fallocated => {
            rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, bytes)?;
        }
    }
    file.sync_data()
}

/// Fills `record` with a pattern that is never all zeros, writes it after the previous record
/// (record `record_index` at `record_index × record size`) and syncs the data.
fn write_and_sync(
    file: &File,
    record: &mut [u8],
    record_index: u64,
) -> std::io::Result<(Duration, Duration)> {
    let fill_byte = (record_index % 255) as u8 + 1;
    record.fill(fill_byte);
    let write_start = Instant::now();
    file.write_all_at(record, record_index * record.len() as u64)?;
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
            mode: ProbeFileMode::Append,
            parent_directory: Some(parent_directory.path().to_path_buf()),
            record_size_bytes: 64,
            record_count: 20,
            duration_max: Duration::from_secs(600),
        };
        let report = run_fsync_probe(&config).unwrap();
        assert_eq!(report.records, 20);
        assert_eq!(report.mode, ProbeFileMode::Append);
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
            mode: ProbeFileMode::Append,
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
            FsyncProbeConfig {
                mode: ProbeFileMode::Preallocated,
                record_size_bytes: 1 << 20,
                record_count: 1 << 10,
                ..valid.clone()
            },
        ] {
            assert!(matches!(
                run_fsync_probe(&invalid),
                Err(BenchError::InvalidConfig { .. })
            ));
        }
    }

    #[test]
    fn every_mode_runs_and_names_itself() {
        for mode in ProbeFileMode::ALL {
            let parent_directory = tempfile::tempdir().unwrap();
            let config = FsyncProbeConfig {
                mode,
                parent_directory: Some(parent_directory.path().to_path_buf()),
                record_size_bytes: 100,
                record_count: 7,
                duration_max: Duration::from_secs(600),
            };
            let report = run_fsync_probe(&config).unwrap();
            assert_eq!(report.records, 7, "{mode:?}");
            assert_eq!(report.mode, mode);
            assert_eq!(mode.name().parse::<ProbeFileMode>(), Ok(mode));
        }
        assert!("sideways".parse::<ProbeFileMode>().is_err());
    }
}
