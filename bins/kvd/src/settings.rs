//! The one definition of kvd's settings. Each group is one struct whose fields are the settings:
//! the field's name is the config file key (and, with `-` for `_`, the long flag), its
//! `#[arg]` attribute names the env variable, its doc comment is the `--help` text, and its
//! type parses flags, env values and file values alike. Every field is an `Option`: a
//! [`Settings`] value is one *layer* (what the command line, or the file, says), and
//! [`merge`] stacks layers, the first one set winning. `config.rs` turns the merged layer into
//! a validated `NodeConfig`, filling what no layer set from the library crates' defaults.
//!
//! To add a setting: add a field to its group below (doc, `#[arg(long, env = …)]`, type); then
//! use it in `config.rs` where its group becomes options. Flag, env variable, file key,
//! precedence and the precedence tests follow from the field.

use std::path::PathBuf;
use std::str::FromStr;

use clap::Args;
use kv_wal::{RecoveryMode, SegmentCodec, SyncPolicy};
use serde::de::{DeserializeOwned, Deserializer};
use serde::Deserialize;

/// The compatibility env variable for the segment size (the original project's), read after
/// `KVD_MAX_SEGMENT_SIZE`.
pub const MAX_SEGMENT_SIZE_ENV: &str = "MAX_SEGMENT_SIZE";

/// One layer of settings: every field optional, `None` meaning "not said here".
pub trait Layer: Default + Sized {
    /// `self` where it says something, `lower` elsewhere.
    fn or(self, lower: Self) -> Self;
}

/// Stacks layers given highest precedence first (flags and env, then `MAX_SEGMENT_SIZE`, then
/// the config file): each setting comes from the first layer that sets it.
pub fn merge<L: Layer>(layers: impl IntoIterator<Item = L>) -> L {
    layers
        .into_iter()
        .fold(L::default(), |merged, lower| merged.or(lower))
}

/// Declares a settings group: the struct (clap `Args` and serde `Deserialize` derived from the
/// same fields) and its [`Layer`] merge, field by field.
macro_rules! settings_group {
    (
        $(#[$group_meta:meta])*
        pub struct $group:ident {
            $(
                $(#[$field_meta:meta])*
                pub $field:ident: Option<$type:ty>,
            )*
        }
    ) => {
        #[derive(Debug, Clone, Default, PartialEq, Args, Deserialize)]
        #[serde(deny_unknown_fields)]
        $(#[$group_meta])*
        pub struct $group {
            $(
                $(#[$field_meta])*
                pub $field: Option<$type>,
            )*
        }

        impl Layer for $group {
            fn or(self, lower: $group) -> $group {
                $group { $($field: self.$field.or(lower.$field),)* }
            }
        }

        impl Group for $group {
            const KEYS: &'static [&'static str] = &[$(stringify!($field)),*];

            #[cfg(test)]
            fn value_text(&self, key: &str) -> Option<Option<String>> {
                match key {
                    $(stringify!($field) => Some(self.$field.as_ref().map(|value| format!("{value:?}"))),)*
                    _ => None,
                }
            }
        }
    };
}

settings_group! {
    /// Where the node listens and keeps its data.
    #[command(next_help_heading = "Node")]
    pub struct NodeSettings {
        /// Address to listen on; port 0 picks a free port (the bound address is printed)
        /// [default: 127.0.0.1:8000, or 127.0.0.1:8000+N for follower N].
        #[arg(long, env = "KVD_LISTEN", value_name = "ADDR")]
        pub listen: Option<String>,
        /// Directory for this node's data; the WAL lives in its `wal/` subdirectory
        /// [default: data/leader or data/followers/follower-N].
        #[arg(long, env = "KVD_DATA_DIR", value_name = "DIR")]
        pub data_dir: Option<PathBuf>,
    }
}

settings_group! {
    /// The write-ahead log.
    #[command(next_help_heading = "Write-ahead log")]
    pub struct WalSettings {
        /// WAL segment size at which a new segment file starts (env also MAX_SEGMENT_SIZE)
        /// [default: 64MiB].
        #[arg(long, env = "KVD_MAX_SEGMENT_SIZE", value_name = "BYTES")]
        pub max_segment_size: Option<ByteSize>,
        /// When a write reaches the disk before it is acknowledged: `always` (fsync per write),
        /// `batch` (group commit: concurrent writes share one fsync), `interval:<ms>` (fsync in
        /// the background; a crash can lose the last interval), `never` (the OS decides)
        /// [default: batch].
        #[arg(long, env = "KVD_SYNC_POLICY", value_name = "POLICY")]
        #[serde(default, deserialize_with = "from_text")]
        pub sync_policy: Option<SyncPolicy>,
        /// What opening the WAL does with damage: `tolerate-torn-tail` (cut an incomplete tail
        /// after a crash), `point-in-time` (keep everything before the first bad record),
        /// `strict` (refuse to start), `skip-corrupt` (skip bad records, report the holes).
        /// The two that lose records are for a cluster's only node: a follower re-syncs
        /// damaged data instead, and a `kvd leader` with other members refuses them
        /// [default: tolerate-torn-tail].
        #[arg(long, env = "KVD_RECOVERY_MODE", value_name = "MODE")]
        #[serde(default, deserialize_with = "from_text")]
        pub recovery_mode: Option<RecoveryMode>,
        /// Store WAL records of at least this many bytes LZ4-compressed (when that makes them
        /// smaller); followers receive them compressed too [default: off].
        #[arg(long, env = "KVD_COMPRESS_RECORDS_ABOVE", value_name = "BYTES")]
        pub compress_records_above: Option<ByteSize>,
        /// Rewrite sealed WAL segments compressed, in the background (`lz4`, `zstd`) or not at
        /// all (`none`). Reads, recovery and replication see the same records either way
        /// [default: none].
        #[arg(long, env = "KVD_COMPRESS_SEALED_SEGMENTS", value_name = "CODEC")]
        #[serde(default, deserialize_with = "from_text")]
        pub compress_sealed_segments: Option<SegmentCompression>,
    }
}

settings_group! {
    /// Limits and timeouts of the HTTP server.
    #[command(next_help_heading = "HTTP limits")]
    pub struct HttpSettings {
        /// Largest request body accepted; larger ones get 413 [default: 16MiB].
        #[arg(long, env = "KVD_MAX_BODY_BYTES", value_name = "BYTES")]
        pub max_body_bytes: Option<ByteSize>,
        /// Longest key accepted, in bytes after URL-decoding; longer ones get 414
        /// [default: 4096].
        #[arg(long, env = "KVD_MAX_KEY_BYTES", value_name = "BYTES")]
        pub max_key_bytes: Option<ByteSize>,
        /// Most client connections served at once; more wait in the listen backlog
        /// [default: 1024].
        #[arg(long, env = "KVD_MAX_CONNECTIONS", value_name = "N")]
        pub max_connections: Option<usize>,
        /// Time a client has to send request headers; also how long an idle keep-alive
        /// connection stays open [default: 10000].
        #[arg(long, env = "KVD_HEADER_READ_TIMEOUT_MS", value_name = "MS")]
        pub header_read_timeout_ms: Option<u64>,
        /// Time a client has to send a request body; slower ones get 408 [default: 30000].
        #[arg(long, env = "KVD_BODY_READ_TIMEOUT_MS", value_name = "MS")]
        pub body_read_timeout_ms: Option<u64>,
        /// Time in-flight requests get to finish on SIGINT/SIGTERM [default: 10000].
        #[arg(long, env = "KVD_SHUTDOWN_TIMEOUT_MS", value_name = "MS")]
        pub shutdown_timeout_ms: Option<u64>,
    }
}

settings_group! {
    /// Replication: the leader's quorum and the followers' fetch loop.
    #[command(next_help_heading = "Replication")]
    pub struct ReplicationSettings {
        /// The cluster's write quorum (a node started with it asks the cluster to take it):
        /// nodes (the leader included) that must hold a write durably before it is
        /// acknowledged when the write gives no `acks` (every member of an in-sync replica set
        /// of at least this many; `acks=quorum` asks for at least 2). 1 = asynchronous
        /// replication; with 3 nodes, 2 survives the loss of any one node without losing an
        /// acknowledged write [default: 1].
        #[arg(long, env = "KVD_WRITE_QUORUM", value_name = "N")]
        pub write_quorum: Option<usize>,
        /// Leader: how long a write waits for its acknowledgements before answering 503 with
        /// its id (the write stays in the log and commits when followers catch up)
        /// [default: 5000].
        #[arg(long, env = "KVD_ACKS_TIMEOUT_MS", value_name = "MS")]
        pub acks_timeout_ms: Option<u64>,
        /// Leader: a follower not heard from for this long is reported down [default: 5000].
        #[arg(long, env = "KVD_FOLLOWER_DOWN_MS", value_name = "MS")]
        pub follower_down_ms: Option<u64>,
        /// Follower: how long the leader may hold an idle fetch — the heartbeat interval
        /// [default: 500].
        #[arg(long, env = "KVD_FETCH_WAIT_MS", value_name = "MS")]
        pub fetch_wait_ms: Option<u64>,
    }
}

settings_group! {
    /// Snapshots and log compaction.
    #[command(next_help_heading = "Snapshots and compaction")]
    pub struct CompactionSettings {
        /// Write a snapshot once this many entries were applied since the last one (0: never
        /// by count; bounds the replay at a restart) [default: 500000].
        #[arg(long, env = "KVD_SNAPSHOT_EVERY_ENTRIES", value_name = "N")]
        pub snapshot_every_entries: Option<u64>,
        /// Write a snapshot once the WAL after the last one holds this many bytes (0: never by
        /// size) [default: 256MiB].
        #[arg(long, env = "KVD_SNAPSHOT_EVERY_WAL_BYTES", value_name = "BYTES")]
        pub snapshot_every_wal_bytes: Option<ByteSize>,
        /// Write a snapshot once the WAL after the last one holds this many times the live
        /// data (and at least 2 MiB; 0: never by ratio): disk use stays a small multiple of the
        /// data under overwrites [default: 2].
        #[arg(long, env = "KVD_SNAPSHOT_WAL_LIVE_RATIO", value_name = "N")]
        pub snapshot_wal_live_ratio: Option<u64>,
        /// Write a snapshot once this many seconds passed since the last one, if anything was
        /// written since (0: never by time; `POST /compaction/configure?interval=` changes it
        /// at run time) [default: 0].
        #[arg(long, env = "KVD_SNAPSHOT_EVERY_SECS", value_name = "SECS")]
        pub snapshot_every_secs: Option<u64>,
        /// Snapshots kept on disk [default: 2].
        #[arg(long, env = "KVD_SNAPSHOTS_KEPT", value_name = "N")]
        pub snapshots_kept: Option<usize>,
        /// Leader: WAL bytes before the newest snapshot kept for followers that still need
        /// them; a follower needing more installs a snapshot instead [default: 1GiB].
        #[arg(long, env = "KVD_WAL_RETENTION_BYTES", value_name = "BYTES")]
        pub wal_retention_bytes: Option<ByteSize>,
        /// Snapshot compression: `zstd`, `lz4` or `none` [default: zstd].
        #[arg(long, env = "KVD_SNAPSHOT_CODEC", value_name = "CODEC")]
        #[serde(default, deserialize_with = "from_text")]
        pub snapshot_codec: Option<kv_store::Codec>,
    }
}

settings_group! {
    /// How much key history and how many idempotent requests the store keeps. Every node of a
    /// cluster should use the same: they are pruned as the log is applied.
    #[command(next_help_heading = "History and idempotent requests")]
    pub struct RetentionSettings {
        /// Earlier versions of a key stay readable (`?version=`, `/history`) while the write
        /// that replaced them is among this many latest revisions (0: no history)
        /// [default: 100000].
        #[arg(long, env = "KVD_HISTORY_REVISIONS", value_name = "N")]
        pub history_revisions: Option<u64>,
        /// ... and while the replaced values kept add up to at most this many bytes (they are
        /// read back from the WAL; this bounds what history refers to) [default: 64MiB].
        #[arg(long, env = "KVD_HISTORY_BYTES", value_name = "BYTES")]
        pub history_bytes: Option<ByteSize>,
        /// Idempotent requests (client_id + request_id, Idempotency-Key) remembered; the
        /// oldest are forgotten first [default: 100000].
        #[arg(long, env = "KVD_DEDUP_MAX_ENTRIES", value_name = "N")]
        pub dedup_max_entries: Option<usize>,
        /// Idempotent requests older than this (by the leader's clock when written) are
        /// forgotten [default: 3600].
        #[arg(long, env = "KVD_DEDUP_MAX_AGE_SECS", value_name = "SECS")]
        pub dedup_max_age_secs: Option<u64>,
    }
}

settings_group! {
    /// The cluster: how peers reach this node, and the failover clocks.
    #[command(next_help_heading = "Cluster and failover")]
    pub struct ClusterSettings {
        /// The URL other nodes reach this node at, for data and controller traffic alike,
        /// when it is not `http://` + the listen address (a proxy, a NAT, a host name):
        /// `http://HOST:PORT`, no path [default: http://LISTEN-ADDRESS].
        #[arg(long, env = "KVD_ADVERTISE_URL", value_name = "URL")]
        pub advertise_url: Option<String>,
        /// A follower that has not heard from its leader for this long answers /health with
        /// 503; the leader takes a follower this far behind out of the in-sync replicas
        /// [default: 2000].
        #[arg(long, env = "KVD_LAG_LIMIT_MS", value_name = "MS")]
        pub lag_limit_ms: Option<u64>,
        /// How often every node heartbeats the active controller [default: 100].
        #[arg(long, env = "KVD_HEARTBEAT_INTERVAL_MS", value_name = "MS")]
        pub heartbeat_interval_ms: Option<u64>,
        /// How long the leader may acknowledge writes after sending a heartbeat the controller
        /// answered with a lease; below the session timeout [default: 350].
        #[arg(long, env = "KVD_LEASE_MS", value_name = "MS")]
        pub lease_ms: Option<u64>,
        /// A leader the active controller has not heard from for this long is replaced
        /// [default: 550].
        #[arg(long, env = "KVD_SESSION_TIMEOUT_MS", value_name = "MS")]
        pub session_timeout_ms: Option<u64>,
        /// A controller that hears no active controller for this long (plus up to 200 ms at
        /// random) starts an election [default: 300].
        #[arg(long, env = "KVD_ELECTION_TIMEOUT_MS", value_name = "MS")]
        pub election_timeout_ms: Option<u64>,
    }
}

settings_group! {
    /// Logs on stderr.
    #[command(next_help_heading = "Logging")]
    pub struct LogSettings {
        /// Log filter: a level (error, warn, info, debug, trace) or tracing directives such as
        /// `info,kv_http=debug` [default: info].
        #[arg(long, env = "KVD_LOG_LEVEL", value_name = "LEVEL")]
        pub log_level: Option<String>,
        /// Log format on stderr: `text` or `json` [default: text].
        #[arg(long, env = "KVD_LOG_FORMAT", value_name = "FORMAT")]
        pub log_format: Option<LogFormat>,
    }
}

settings_group! {
    /// What only a follower takes (`kvd follower` has these flags; a leader refuses them in
    /// the config file).
    pub struct FollowerSettings {
        /// The URL (`http://HOST:PORT`) of the cluster's leader (or of any member) that a
        /// new follower asks to join; once it has joined, a follower follows whichever leader
        /// the controller names, and asks here only when no member it knows answers
        /// [default: http://127.0.0.1:8000].
        #[arg(long, env = "KVD_LEADER", value_name = "URL")]
        pub leader: Option<String>,
    }
}

/// Every setting, group by group: one layer. On the command line the follower's group is
/// flattened into `kvd follower` only (see `cli.rs`).
#[derive(Debug, Clone, Default, PartialEq, Args)]
pub struct Settings {
    /// Where the node listens and keeps its data.
    #[command(flatten)]
    pub node: NodeSettings,
    /// The write-ahead log.
    #[command(flatten)]
    pub wal: WalSettings,
    /// HTTP limits and timeouts.
    #[command(flatten)]
    pub http: HttpSettings,
    /// Replication.
    #[command(flatten)]
    pub replication: ReplicationSettings,
    /// Snapshots and compaction.
    #[command(flatten)]
    pub compaction: CompactionSettings,
    /// History and idempotent requests.
    #[command(flatten)]
    pub retention: RetentionSettings,
    /// The cluster and failover.
    #[command(flatten)]
    pub cluster: ClusterSettings,
    /// Logging.
    #[command(flatten)]
    pub logging: LogSettings,
    /// Follower-only settings.
    #[arg(skip)]
    pub follower: FollowerSettings,
}

impl Layer for Settings {
    fn or(self, lower: Settings) -> Settings {
        Settings {
            node: self.node.or(lower.node),
            wal: self.wal.or(lower.wal),
            http: self.http.or(lower.http),
            replication: self.replication.or(lower.replication),
            compaction: self.compaction.or(lower.compaction),
            retention: self.retention.or(lower.retention),
            cluster: self.cluster.or(lower.cluster),
            logging: self.logging.or(lower.logging),
            follower: self.follower.or(lower.follower),
        }
    }
}

impl Settings {
    /// Every config file key, group by group.
    pub fn keys() -> Vec<&'static str> {
        [
            NodeSettings::KEYS,
            WalSettings::KEYS,
            HttpSettings::KEYS,
            ReplicationSettings::KEYS,
            CompactionSettings::KEYS,
            RetentionSettings::KEYS,
            ClusterSettings::KEYS,
            LogSettings::KEYS,
            FollowerSettings::KEYS,
        ]
        .concat()
    }

    /// The layer a config file says: its keys are the settings' field names. Fails on a
    /// syntax error, an unknown key or a bad value, naming the key.
    pub fn from_toml(text: &str) -> Result<Settings, String> {
        let table: toml::Table = toml::from_str(text).map_err(|error| error.to_string())?;
        let mut settings = Settings::default();
        for (key, value) in table {
            let found = absorb(&mut settings.node, &key, &value)?
                || absorb(&mut settings.wal, &key, &value)?
                || absorb(&mut settings.http, &key, &value)?
                || absorb(&mut settings.replication, &key, &value)?
                || absorb(&mut settings.compaction, &key, &value)?
                || absorb(&mut settings.retention, &key, &value)?
                || absorb(&mut settings.cluster, &key, &value)?
                || absorb(&mut settings.logging, &key, &value)?
                || absorb(&mut settings.follower, &key, &value)?;
            if !found {
                return Err(format!(
                    "unknown field `{key}`: the keys are the long flag names with '_' for '-': {}",
                    Settings::keys().join(", ")
                ));
            }
        }
        Ok(settings)
    }

    /// The value set for `key` in this layer (`Debug`-formatted), for tests over every key.
    #[cfg(test)]
    pub fn value_text(&self, key: &str) -> Option<String> {
        [
            self.node.value_text(key),
            self.wal.value_text(key),
            self.http.value_text(key),
            self.replication.value_text(key),
            self.compaction.value_text(key),
            self.retention.value_text(key),
            self.cluster.value_text(key),
            self.logging.value_text(key),
            self.follower.value_text(key),
        ]
        .into_iter()
        .flatten()
        .next()
        .unwrap_or_else(|| panic!("no setting named {key}"))
    }
}

/// What [`settings_group!`] gives a group besides its merge.
trait Group: Layer + DeserializeOwned {
    /// The group's config file keys: its field names.
    const KEYS: &'static [&'static str];

    /// The value of `key` (`Some(None)` when unset), `None` when `key` is not in this group.
    #[cfg(test)]
    fn value_text(&self, key: &str) -> Option<Option<String>>;
}

/// Sets `key` in `group` from a config file value when the key is the group's; `Ok(false)`
/// when it is not.
fn absorb<G: Group>(group: &mut G, key: &str, value: &toml::Value) -> Result<bool, String> {
    if !G::KEYS.contains(&key) {
        return Ok(false);
    }
    let entry = toml::Table::from_iter([(key.to_owned(), value.clone())]);
    let parsed = G::deserialize(toml::Value::Table(entry))
        .map_err(|error| format!("`{key}`: {}", error.message()))?;
    *group = parsed.or(std::mem::take(group));
    Ok(true)
}

/// Reads a config file string with the type's `FromStr`, the parser its flag uses.
fn from_text<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: std::fmt::Display,
{
    let text = String::deserialize(deserializer)?;
    text.parse().map(Some).map_err(serde::de::Error::custom)
}

/// A size in bytes: `12345`, `512K`, `64MiB`, `1G` on the command line; in the config file
/// also an integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(text: &str) -> Result<ByteSize, String> {
        parse_bytes(text).map(ByteSize)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ByteSize, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Bytes(u64),
            Text(String),
        }
        match Written::deserialize(deserializer)? {
            Written::Bytes(bytes) => Ok(ByteSize(bytes)),
            Written::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// Parses `12345`, `512K`, `64MiB`, `1G` (suffixes are powers of 1024; case-insensitive).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(digits_end);
    let number: u64 = number.parse().map_err(|_| {
        format!("{text:?} is not a size: expected bytes like 1048576, 512K or 64MiB")
    })?;
    let shift = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        other => {
            return Err(format!(
                "unknown size suffix {other:?} in {text:?}: use K, M or G"
            ))
        }
    };
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

/// `--compress-sealed-segments`: `none`, or the codec sealed segments are rewritten with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentCompression(pub Option<SegmentCodec>);

impl FromStr for SegmentCompression {
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}
