//! kvd: the replicated key-value store daemon.
//!
//! A thin binary: it reads the configuration (flags, env, config file: every setting is defined
//! once in [`settings`]; [`config`] merges the layers and validates them), sets up logging, and
//! runs the node ([`node::run_node`]): it opens the store, takes its replication role (leader,
//! or follower pulling from the leader), and serves the HTTP API until SIGINT/SIGTERM. Everything else lives in the library crates (kv-wal, kv-store,
//! kv-replication, kv-http).

mod cli;
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

fn main() -> ExitCode {
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
    let invocation = cli.command.into_invocation();
    let sources = Sources {
        command_line: invocation.command_line,
        max_segment_size_env: std::env::var(MAX_SEGMENT_SIZE_ENV).ok(),
        config_file: invocation.config_file,
    };
    let config = config::resolve(invocation.follower_id.as_deref(), sources)?;
    logging::init(&config.log_level, config.log_format)?;
    faults::configure_from_env()?;
    node::run_node(config)
}
