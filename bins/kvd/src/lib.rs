//! kvd: the replicated key-value store daemon.
//!
//! The binary (`main.rs`) only calls [`main`]. It reads the configuration (flags, env, config
//! file: every setting is defined once in `settings`; `config` merges the layers and validates
//! them), sets up logging, and runs the node (`node::run_node`): it opens the store, takes its
//! replication role (leader, or follower pulling from the leader), and serves the HTTP API
//! until SIGINT/SIGTERM. Everything else lives in the library crates (kv-wal, kv-store,
//! kv-replication, kv-http).
//!
//! The code sits in this library rather than in the binary for one reason: kvd's tests need the
//! `fault-injection` feature (`faults`), and they turn it on through a dev-dependency on this
//! package, which cargo allows only for a package with a library. Nothing else uses it.

mod cli;
mod cluster;
mod config;
mod faults;
mod logging;
mod node;
mod settings;

#[cfg(test)]
mod precedence_tests;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::Cli;
use crate::config::Sources;
use crate::settings::MAX_SEGMENT_SIZE_ENV;

/// Runs kvd with the process's arguments and environment; the exit code says how it ended.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // The whole chain of causes on one line; no backtrace noise for operators.
            eprintln!("kvd: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // Before anything else: a fault variable this build cannot honour stops it here.
    faults::check_environment()?;
    let invocation = cli.command.into_invocation();
    let sources = Sources {
        command_line: invocation.command_line,
        max_segment_size_env: std::env::var(MAX_SEGMENT_SIZE_ENV).ok(),
        config_file: invocation.config_file,
    };
    let config = config::resolve(invocation.follower_id.as_deref(), sources)?;
    logging::init(&config.log_level, config.log_format)?;
    #[cfg(feature = "fault-injection")]
    faults::configure_from_env()?;
    node::run_node(config)
}
