//! The command line: `kvd leader …` and `kvd follower ID …`, every option with its env
//! variable. Options left out here fall back to the config file, then to the defaults.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use kv_wal::{RecoveryMode, SegmentCodec, SyncPolicy};

use crate::config::parse_bytes;

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
        /// The leader's base URL [default: http://127.0.0.1:8000].
        #[arg(long, env = "KVD_LEADER", value_name = "URL")]
        leader: Option<String>,
        /// Options shared by every role.
        #[command(flatten)]
        options: NodeArgs,
    },
}

/// Options every node takes. `None` means "not given here".
#[derive(Debug, Args, Default)]
pub struct NodeArgs {
    /// Address to listen on; port 0 picks a free port (the bound address is printed)
    /// [default: 127.0.0.1:8000, or 127.0.0.1:8000+N for follower N].
    #[arg(long, env = "KVD_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Directory for this node's data; the WAL lives in its `wal/` subdirectory
    /// [default: data/leader or data/followers/follower-N].
    #[arg(long, env = "KVD_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// TOML config file; flags and env variables override its values.
    #[arg(long, env = "KVD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// WAL segment size at which a new segment file starts (env also MAX_SEGMENT_SIZE)
    /// [default: 64MiB].
    #[arg(long, env = "KVD_MAX_SEGMENT_SIZE", value_name = "BYTES", value_parser = parse_bytes)]
    pub max_segment_size: Option<u64>,
    /// When a write reaches the disk before it is acknowledged: `always` (fsync per write),
    /// `batch` (group commit: concurrent writes share one fsync), `interval:<ms>` (fsync in the
    /// background; a crash can lose the last interval), `never` (the OS decides) [default: batch].
    #[arg(long, env = "KVD_SYNC_POLICY", value_name = "POLICY")]
    pub sync_policy: Option<SyncPolicy>,
    /// What opening the WAL does with damage: `tolerate-torn-tail` (cut an incomplete tail
    /// after a crash), `point-in-time` (keep everything before the first bad record), `strict`
    /// (refuse to start), `skip-corrupt` (skip bad records, report the holes)
    /// [default: tolerate-torn-tail].
    #[arg(long, env = "KVD_RECOVERY_MODE", value_name = "MODE")]
    pub recovery_mode: Option<RecoveryMode>,
    /// Store WAL records of at least this many bytes LZ4-compressed (when that makes them
    /// smaller); followers receive them compressed too [default: off].
    #[arg(long, env = "KVD_COMPRESS_RECORDS_ABOVE", value_name = "BYTES", value_parser = parse_bytes)]
    pub compress_records_above: Option<u64>,
    /// Rewrite sealed WAL segments compressed, in the background (`lz4`, `zstd`) or not at all
    /// (`none`). Reads, recovery and replication see the same records either way
    /// [default: none].
    #[arg(long, env = "KVD_COMPRESS_SEALED_SEGMENTS", value_name = "CODEC")]
    pub compress_sealed_segments: Option<SegmentCompression>,
    /// Largest request body accepted; larger ones get 413 [default: 16MiB].
    #[arg(long, env = "KVD_MAX_BODY_BYTES", value_name = "BYTES", value_parser = parse_bytes)]
    pub max_body_bytes: Option<u64>,
    /// Longest key accepted, in bytes after URL-decoding; longer ones get 414 [default: 4096].
    #[arg(long, env = "KVD_MAX_KEY_BYTES", value_name = "BYTES", value_parser = parse_bytes)]
    pub max_key_bytes: Option<u64>,
    /// Most client connections served at once; more wait in the listen backlog [default: 1024].
    #[arg(long, env = "KVD_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Time a client has to send request headers; also how long an idle keep-alive connection
    /// stays open [default: 10000].
    #[arg(long, env = "KVD_HEADER_READ_TIMEOUT_MS", value_name = "MS")]
    pub header_read_timeout_ms: Option<u64>,
    /// Time a client has to send a request body; slower ones get 408 [default: 30000].
    #[arg(long, env = "KVD_BODY_READ_TIMEOUT_MS", value_name = "MS")]
    pub body_read_timeout_ms: Option<u64>,
    /// Time in-flight requests get to finish on SIGINT/SIGTERM [default: 10000].
    #[arg(long, env = "KVD_SHUTDOWN_TIMEOUT_MS", value_name = "MS")]
    pub shutdown_timeout_ms: Option<u64>,
    /// Leader: nodes (the leader included) that must hold a write durably before it is
    /// acknowledged with `acks=quorum` (the default acks). 1 = asynchronous replication; with 3
    /// nodes, 2 survives the loss of any one node without losing an acknowledged write
    /// [default: 1].
    #[arg(long, env = "KVD_WRITE_QUORUM", value_name = "N")]
    pub write_quorum: Option<usize>,
    /// Leader: how long a write waits for its acknowledgements before answering 503 with its
    /// id (the write stays in the log and commits when followers catch up) [default: 5000].
    #[arg(long, env = "KVD_ACKS_TIMEOUT_MS", value_name = "MS")]
    pub acks_timeout_ms: Option<u64>,
    /// Leader: a follower not heard from for this long is reported down [default: 5000].
    #[arg(long, env = "KVD_FOLLOWER_DOWN_MS", value_name = "MS")]
    pub follower_down_ms: Option<u64>,
    /// Follower: how long the leader may hold an idle fetch — the heartbeat interval
    /// [default: 500].
    #[arg(long, env = "KVD_FETCH_WAIT_MS", value_name = "MS")]
    pub fetch_wait_ms: Option<u64>,
    /// Write a snapshot once this many entries were applied since the last one (0: never by
    /// count; bounds the replay at a restart) [default: 500000].
    #[arg(long, env = "KVD_SNAPSHOT_EVERY_ENTRIES", value_name = "N")]
    pub snapshot_every_entries: Option<u64>,
    /// Write a snapshot once the WAL after the last one holds this many bytes (0: never by
    /// size) [default: 256MiB].
    #[arg(long, env = "KVD_SNAPSHOT_EVERY_WAL_BYTES", value_name = "BYTES", value_parser = parse_bytes)]
    pub snapshot_every_wal_bytes: Option<u64>,
    /// Write a snapshot once the WAL after the last one holds this many times the live data
    /// (and at least 2 MiB; 0: never by ratio): disk use stays a small multiple of the data
    /// under overwrites [default: 2].
    #[arg(long, env = "KVD_SNAPSHOT_WAL_LIVE_RATIO", value_name = "N")]
    pub snapshot_wal_live_ratio: Option<u64>,
    /// Snapshots kept on disk [default: 2].
    #[arg(long, env = "KVD_SNAPSHOTS_KEPT", value_name = "N")]
    pub snapshots_kept: Option<usize>,
    /// Leader: WAL bytes before the newest snapshot kept for followers that still need them;
    /// a follower needing more installs a snapshot instead [default: 1GiB].
    #[arg(long, env = "KVD_WAL_RETENTION_BYTES", value_name = "BYTES", value_parser = parse_bytes)]
    pub wal_retention_bytes: Option<u64>,
    /// Snapshot compression: `zstd`, `lz4` or `none` [default: zstd].
    #[arg(long, env = "KVD_SNAPSHOT_CODEC", value_name = "CODEC")]
    pub snapshot_codec: Option<kv_store::Codec>,
    /// Log filter: a level (error, warn, info, debug, trace) or tracing directives such as
    /// `info,kv_http=debug` [default: info].
    #[arg(long, env = "KVD_LOG_LEVEL", value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Log format on stderr: `text` or `json` [default: text].
    #[arg(long, env = "KVD_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
}

/// `--compress-sealed-segments`: `none`, or the codec sealed segments are rewritten with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentCompression(pub Option<SegmentCodec>);

impl std::str::FromStr for SegmentCompression {
    type Err = String;
    fn from_str(text: &str) -> Result<SegmentCompression, String> {
        if text.trim().eq_ignore_ascii_case("none") {
            return Ok(SegmentCompression(None));
        }
        text.parse()
            .map(|codec| SegmentCompression(Some(codec)))
            .map_err(|_| {
                format!("unknown segment compression {text:?}: expected none, lz4 or zstd")
            })
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}
