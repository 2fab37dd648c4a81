//! The command line: `kvd leader …` and `kvd follower ID …`. The options themselves (flag,
//! env variable, help) are the settings groups of `settings.rs`; this module only places them
//! under the two subcommands, with `--config` and the follower's id and `--leader`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::settings::{FollowerSettings, Settings};

const ABOUT: &str = "kvd: a replicated key-value store with an HTTP API.";
const LONG_ABOUT: &str = "kvd: a replicated key-value store with an HTTP API.

Every option can be given as a flag, as an environment variable (KVD_*), or in a TOML config
file (--config), in that order of precedence; the defaults come last. MAX_SEGMENT_SIZE (bytes)
is also read, after KVD_MAX_SEGMENT_SIZE, for compatibility with the original project.

Sizes are bytes, optionally with a suffix: 512K, 64MiB, 1G (powers of 1024).

Config file keys are the long flag names with '_' for '-', e.g.

    listen = \"127.0.0.1:8000\"
    data_dir = \"data/leader\"
    max_segment_size = \"1MiB\"
    sync_policy = \"batch\"

With no options, `kvd leader` listens on 127.0.0.1:8000 with data in data/leader, and
`kvd follower N` listens on port 8000+N with data in data/followers/follower-N, following
the leader at http://127.0.0.1:8000.";

/// Parsed command line.
#[derive(Debug, Parser)]
#[command(name = "kvd", version, about = ABOUT, long_about = LONG_ABOUT)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The node's role.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the leader: it takes writes and serves reads.
    Leader {
        /// Options shared by every role.
        #[command(flatten)]
        options: NodeArgs,
    },
    /// Run a follower: it copies the leader's log and serves reads.
    Follower {
        /// The follower's id: `follower-N` or `N` (N from 1). Picks the default port
        /// (8000+N) and data directory (data/followers/follower-N).
        id: String,
        /// What only a follower takes: `--leader`.
        #[command(flatten)]
        follower: FollowerSettings,
        /// Options shared by every role.
        #[command(flatten)]
        options: NodeArgs,
    },
}

/// Options every node takes: the config file, and every setting as a flag or env variable.
#[derive(Debug, Args, Default)]
pub struct NodeArgs {
    /// TOML config file; flags and env variables override its values.
    #[arg(long, env = "KVD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The settings, each `None` unless given as a flag or env variable.
    #[command(flatten)]
    pub settings: Settings,
}

/// What the command line asks for, taken apart for `config::resolve`.
#[derive(Debug)]
pub struct Invocation {
    /// `None` for `kvd leader`, the id for `kvd follower ID`.
    pub follower_id: Option<String>,
    /// The config file, if given.
    pub config_file: Option<PathBuf>,
    /// The settings given as flags or env variables (flags win; clap merged them).
    pub command_line: Settings,
}

impl Command {
    /// Separates the role, the config file and the command line's layer of settings.
    pub fn into_invocation(self) -> Invocation {
        match self {
            Command::Leader { options } => Invocation {
                follower_id: None,
                config_file: options.config,
                command_line: options.settings,
            },
            Command::Follower {
                id,
                follower,
                options,
            } => Invocation {
                follower_id: Some(id),
                config_file: options.config,
                command_line: Settings {
                    follower,
                    ..options.settings
                },
            },
        }
    }
}
