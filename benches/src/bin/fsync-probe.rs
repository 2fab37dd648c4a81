//! `fsync-probe`: the durability ceiling of this disk.
//!
//! Writes `--count` records of `--record-size` bytes one after another into a file in a fresh
//! temporary directory, `fdatasync`ing after each, and reports durable writes per second and
//! the sync latency. `--mode` says how the file is prepared: `append` (it grows with every
//! record), `preallocated` (written whole with zeros first: the c1 ceiling of a log with
//! preallocated segments) or `fallocated` (space reserved with `fallocate(2)`, never written).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use kv_bench::duration::parse_duration_text;
use kv_bench::fsync_probe::{run_fsync_probe, FsyncProbeConfig, ProbeFileMode};

/// Measures append + fdatasync on one file: the ceiling of the `always` sync policy.
#[derive(Debug, Parser)]
#[command(name = "fsync-probe", version)]
struct FsyncProbeArgs {
    /// How the file is prepared: append, preallocated or fallocated.
    #[arg(long = "mode", default_value = "append", value_name = "MODE")]
    mode: ProbeFileMode,

    /// Directory in which to create the probe's temporary directory (default: the system's
    /// temp dir). Put it on the disk you mean to measure.
    #[arg(long = "dir", value_name = "DIR")]
    parent_directory: Option<PathBuf>,

    /// Bytes per record.
    #[arg(long = "record-size", default_value_t = 128, value_name = "BYTES")]
    record_size_bytes: usize,

    /// Records to append and sync.
    #[arg(long = "count", default_value_t = 2000, value_name = "N")]
    record_count: u64,

    /// Stop after this long even if fewer records were written.
    #[arg(long = "duration", default_value = "30s", value_parser = parse_duration_text)]
    duration_max: Duration,

    /// Print one JSON object instead of text.
    #[arg(long = "json")]
    json: bool,
}

fn main() -> ExitCode {
    let arguments = FsyncProbeArgs::parse();
    let config = FsyncProbeConfig {
        mode: arguments.mode,
        parent_directory: arguments.parent_directory,
        record_size_bytes: arguments.record_size_bytes,
        record_count: arguments.record_count,
        duration_max: arguments.duration_max,
    };
    match run_fsync_probe(&config) {
        Ok(report) => {
            if arguments.json {
                println!(
                    "{}",
                    serde_json::to_string(&report).expect("reports always serialize")
                );
            } else {
                println!("{}", report.to_text());
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("fsync-probe: {error}");
            ExitCode::from(1)
        }
    }
}
