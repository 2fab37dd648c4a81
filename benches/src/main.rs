//! `kv-bench`: the HTTP/1.1 keep-alive load generator for kvd.
//!
//! Exit status: 0 after a run, 1 when the run could not start (bad options, unresolvable or
//! non-loopback target, target not ready), 2 for command-line syntax errors (clap), 3 when
//! `--fail-on-error` is given and any request failed.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Parser;
use kv_bench::cli::BenchArgs;
use kv_bench::runner::run_benchmark;

fn main() -> ExitCode {
    let arguments = BenchArgs::parse();
    let print_json = arguments.json;
    let fail_on_error = arguments.fail_on_error;
    let thread_count = arguments.thread_count;
    let default_seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since_epoch| since_epoch.as_nanos() as u64);
    let config = match arguments.into_config(default_seed) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("kv-bench: {error}");
            return ExitCode::from(1);
        }
    };

    let mut runtime_builder = tokio::runtime::Builder::new_multi_thread();
    runtime_builder.enable_all();
    if let Some(thread_count) = thread_count {
        runtime_builder.worker_threads(thread_count.max(1));
    }
    let runtime = match runtime_builder.build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("kv-bench: cannot start the tokio runtime: {error}");
            return ExitCode::from(1);
        }
    };
    let report = match runtime.block_on(run_benchmark(config)) {
        Ok(report) => report,
        Err(error) => {
            eprintln!("kv-bench: {error}");
            return ExitCode::from(1);
        }
    };
    if print_json {
        println!(
            "{}",
            serde_json::to_string(&report).expect("reports always serialize")
        );
    } else {
        println!("{}", report.to_text());
    }
    if fail_on_error && report.error_count_with_prefill() > 0 {
        eprintln!(
            "kv-bench: {} requests failed (--fail-on-error)",
            report.error_count_with_prefill()
        );
        return ExitCode::from(3);
    }
    ExitCode::SUCCESS
}
