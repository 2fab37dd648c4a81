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
mod disk_watch;
mod faults;
mod logging;
mod node;
mod settings;
mod writable;

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
            eprintln!("kvd: error: {}", error_chain(&error));
            ExitCode::FAILURE
        }
    }
}

/// `error` and its causes joined with ": ", leaving out a cause whose text the message before
/// it already ends with: several error types print their source inside their own message and
/// also chain it, which printed "Address already in use (os error 98): Address already in use
/// (os error 98)".
fn error_chain(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
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
    faults::configure_from_env(config::in_the_wal_dir)?;
    node::run_node(config)
}

#[cfg(test)]
mod error_chain_tests {
    use super::error_chain;

    /// An error that prints its source in its own message and chains it too.
    #[derive(Debug)]
    struct WithSource {
        source: std::io::Error,
    }

    impl std::fmt::Display for WithSource {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "I/O error on x: {}", self.source)
        }
    }

    impl std::error::Error for WithSource {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.source)
        }
    }

    #[test]
    fn a_cause_its_message_already_ends_with_is_printed_once() {
        let io = std::io::Error::new(std::io::ErrorKind::AddrInUse, "Address already in use");
        let error = anyhow::Error::new(WithSource { source: io }).context("cannot listen");
        assert_eq!(
            error_chain(&error),
            "cannot listen: I/O error on x: Address already in use"
        );
    }

    #[test]
    fn distinct_causes_are_all_printed() {
        let error = anyhow::anyhow!("inner").context("middle").context("outer");
        assert_eq!(error_chain(&error), "outer: middle: inner");
    }
}
