//! kvd: the replicated key-value store daemon.
//!
//! A thin binary: it reads the configuration (flags, env, config file — see [`config`]),
//! sets up logging, and runs the node ([`node::run_node`]): it opens the store, takes its
//! replication role (leader, or follower pulling from the leader), and serves the HTTP API
//! until SIGINT/SIGTERM. Everything else lives in the library crates (kv-wal, kv-store,
//! kv-replication, kv-http).

mod cli;
mod config;
mod faults;
mod logging;
mod node;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::config::MAX_SEGMENT_SIZE_ENV;

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
    let segment_size_env = std::env::var(MAX_SEGMENT_SIZE_ENV).ok();
    let config = match cli.command {
        Command::Leader { options } => config::resolve(None, None, options, segment_size_env)?,
        Command::Follower {
            id,
            leader,
            options,
        } => config::resolve(Some(&id), leader, options, segment_size_env)?,
    };
    logging::init(&config.log_level, config.log_format)?;
    faults::configure_from_env()?;
    node::run_node(config)
}
