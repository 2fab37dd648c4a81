//! The node's configuration: flags and env (already merged by clap) over the TOML config file
//! over the defaults, validated into one [`NodeConfig`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use kv_http::HttpOptions;
use kv_replication::NodeOptions;
use kv_wal::{
    RecoveryMode, SegmentCodec, SyncPolicy, WalOptions, SEGMENT_BYTES_MAX_DEFAULT,
    SEGMENT_BYTES_MIN,
};
use serde::Deserialize;

use crate::cli::{LogFormat, NodeArgs, SegmentCompression};

/// The leader's default address.
pub const LEADER_LISTEN_DEFAULT: &str = "127.0.0.1:8000";
/// The leader's default data directory.
pub const LEADER_DATA_DIR_DEFAULT: &str = "data/leader";
/// Follower N listens on this port plus N by default.
pub const FOLLOWER_PORT_BASE: u16 = 8000;
/// The leader URL followers use by default.
pub const LEADER_URL_DEFAULT: &str = "http://127.0.0.1:8000";
/// The WAL's directory inside a node's data directory.
pub const WAL_DIR_NAME: &str = "wal";
/// The snapshots' directory inside a node's data directory.
pub const SNAPSHOT_DIR_NAME: &str = "snapshots";
/// The compatibility env variable for the segment size (the original project's).
pub const MAX_SEGMENT_SIZE_ENV: &str = "MAX_SEGMENT_SIZE";

/// Which node this is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The leader.
    Leader,
    /// Follower number `number`, following `leader_url`.
    Follower {
        /// N in `follower-N`.
        number: u16,
        /// The leader's base URL.
        leader_url: String,
    },
}

/// Everything a node runs with, validated.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Leader or follower.
    pub role: Role,
    /// Address to listen on.
    pub listen: String,
    /// The node's data directory.
    pub data_dir: PathBuf,
    /// WAL segment size.
    pub segment_bytes_max: u64,
    /// WAL sync policy.
    pub sync_policy: SyncPolicy,
    /// WAL recovery mode.
    pub recovery_mode: RecoveryMode,
    /// WAL records at least this large are stored compressed.
    pub compress_records_above: Option<usize>,
    /// Sealed WAL segments are rewritten compressed with this codec by the compactor task.
    pub compress_sealed_segments: Option<SegmentCodec>,
    /// HTTP limits and timeouts.
    pub http: HttpOptions,
    /// Replication settings (quorum, timeouts, the follower's fetch loop).
    pub replication: NodeOptions,
    /// Log filter directives.
    pub log_level: String,
    /// Log format.
    pub log_format: LogFormat,
}

impl NodeConfig {
    /// The WAL's directory.
    pub fn wal_dir(&self) -> PathBuf {
        self.data_dir.join(WAL_DIR_NAME)
    }

    /// The snapshots' directory.
    pub fn snapshot_dir(&self) -> PathBuf {
        self.data_dir.join(SNAPSHOT_DIR_NAME)
    }

    /// Options to open the WAL with.
    pub fn wal_options(&self) -> WalOptions {
        WalOptions {
            segment_bytes_max: self.segment_bytes_max,
            sync_policy: self.sync_policy,
            recovery_mode: self.recovery_mode,
            compress_records_above: self.compress_records_above,
            compress_sealed_segments: self.compress_sealed_segments,
            // The real file system, or a faulty one when a test asks (`faults.rs`).
            file_system: crate::faults::wal_file_system(),
            ..WalOptions::default()
        }
    }
}

/// The config file: the same settings as the flags, all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    leader: Option<String>,
    max_segment_size: Option<ByteSize>,
    sync_policy: Option<String>,
    recovery_mode: Option<String>,
    compress_records_above: Option<ByteSize>,
    compress_sealed_segments: Option<String>,
    max_body_bytes: Option<ByteSize>,
    max_key_bytes: Option<ByteSize>,
    max_connections: Option<usize>,
    header_read_timeout_ms: Option<u64>,
    body_read_timeout_ms: Option<u64>,
    shutdown_timeout_ms: Option<u64>,
    write_quorum: Option<usize>,
    acks_timeout_ms: Option<u64>,
    follower_down_ms: Option<u64>,
    fetch_wait_ms: Option<u64>,
    snapshot_every_entries: Option<u64>,
    snapshot_every_wal_bytes: Option<ByteSize>,
    snapshot_wal_live_ratio: Option<u64>,
    snapshots_kept: Option<usize>,
    wal_retention_bytes: Option<ByteSize>,
    snapshot_codec: Option<String>,
    log_level: Option<String>,
    log_format: Option<LogFormat>,
}

/// A size in a config file: an integer of bytes or a string with a suffix.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum ByteSize {
    Bytes(u64),
    Text(String),
}

impl ByteSize {
    fn bytes(&self) -> anyhow::Result<u64> {
        match self {
            ByteSize::Bytes(bytes) => Ok(*bytes),
            ByteSize::Text(text) => parse_bytes(text).map_err(anyhow::Error::msg),
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

/// Parses a follower id: `follower-N` or `N`, with N ≥ 1 and 8000+N a valid port.
pub fn parse_follower_number(id: &str) -> anyhow::Result<u16> {
    let digits = id.strip_prefix("follower-").unwrap_or(id);
    let number: u16 = digits
        .parse()
        .ok()
        .filter(|&number| number >= 1 && FOLLOWER_PORT_BASE.checked_add(number).is_some())
        .with_context(|| {
            format!(
                "invalid follower id {id:?}: expected follower-N or N with N from 1 to {}",
                u16::MAX - FOLLOWER_PORT_BASE
            )
        })?;
    Ok(number)
}

/// Merges flags and env (`args`, `leader_flag`) over the config file over the defaults.
/// `segment_size_env` is the value of `MAX_SEGMENT_SIZE`, if set.
pub fn resolve(
    role_id: Option<&str>,
    leader_flag: Option<String>,
    args: NodeArgs,
    segment_size_env: Option<String>,
) -> anyhow::Result<NodeConfig> {
    let file = match &args.config {
        Some(path) => read_file_config(path)?,
        None => FileConfig::default(),
    };
    let role = match role_id {
        None => {
            ensure!(
                file.leader.is_none(),
                "`leader` in the config file applies to followers only"
            );
            Role::Leader
        }
        Some(id) => Role::Follower {
            number: parse_follower_number(id)?,
            leader_url: leader_flag
                .or(file.leader.clone())
                .unwrap_or_else(|| LEADER_URL_DEFAULT.to_owned()),
        },
    };
    if let Role::Follower { leader_url, .. } = &role {
        ensure!(
            leader_url.starts_with("http://") && leader_url.len() > "http://".len(),
            "invalid leader URL {leader_url:?}: expected http://HOST:PORT (TLS is not supported yet)"
        );
    }
    let (listen_default, data_dir_default) = match &role {
        Role::Leader => (
            LEADER_LISTEN_DEFAULT.to_owned(),
            PathBuf::from(LEADER_DATA_DIR_DEFAULT),
        ),
        Role::Follower { number, .. } => (
            format!("127.0.0.1:{}", FOLLOWER_PORT_BASE + number),
            PathBuf::from(format!("data/followers/follower-{number}")),
        ),
    };
    let segment_size_env = segment_size_env
        .map(|text| {
            parse_bytes(&text).map_err(|error| anyhow::anyhow!("{MAX_SEGMENT_SIZE_ENV}: {error}"))
        })
        .transpose()?;
    let segment_bytes_max = match (
        args.max_segment_size,
        segment_size_env,
        &file.max_segment_size,
    ) {
        (Some(bytes), _, _) | (None, Some(bytes), _) => bytes,
        (None, None, Some(size)) => size
            .bytes()
            .context("max_segment_size in the config file")?,
        (None, None, None) => SEGMENT_BYTES_MAX_DEFAULT,
    };
    ensure!(
        segment_bytes_max >= SEGMENT_BYTES_MIN,
        "max segment size {segment_bytes_max} is below the minimum of {SEGMENT_BYTES_MIN} bytes"
    );
    let sync_policy = match (args.sync_policy, &file.sync_policy) {
        (Some(policy), _) => policy,
        (None, Some(text)) => text
            .parse()
            .map_err(anyhow::Error::msg)
            .context("sync_policy in the config file")?,
        (None, None) => SyncPolicy::default(),
    };
    let recovery_mode = match (args.recovery_mode, &file.recovery_mode) {
        (Some(mode), _) => mode,
        (None, Some(text)) => text
            .parse()
            .map_err(anyhow::Error::msg)
            .context("recovery_mode in the config file")?,
        (None, None) => RecoveryMode::default(),
    };
    let compress_records_above =
        match (args.compress_records_above, &file.compress_records_above) {
            (Some(bytes), _) => Some(bytes),
            (None, Some(size)) => Some(
                size.bytes()
                    .context("compress_records_above in the config file")?,
            ),
            (None, None) => None,
        }
        .map(|bytes| usize::try_from(bytes).unwrap_or(usize::MAX));
    let compress_sealed_segments = match (
        args.compress_sealed_segments,
        &file.compress_sealed_segments,
    ) {
        (Some(SegmentCompression(codec)), _) => codec,
        (None, Some(text)) => {
            text.parse::<SegmentCompression>()
                .map_err(anyhow::Error::msg)
                .context("compress_sealed_segments in the config file")?
                .0
        }
        (None, None) => None,
    };
    let http = resolve_http(&args, &file)?;
    let replication = resolve_replication(&args, &file, &role)?;
    let log_level = args
        .log_level
        .or(file.log_level)
        .unwrap_or_else(|| "info".to_owned());
    Ok(NodeConfig {
        role,
        listen: args.listen.or(file.listen).unwrap_or(listen_default),
        data_dir: args.data_dir.or(file.data_dir).unwrap_or(data_dir_default),
        segment_bytes_max,
        sync_policy,
        recovery_mode,
        compress_records_above,
        compress_sealed_segments,
        http,
        replication,
        log_level,
        log_format: args.log_format.or(file.log_format).unwrap_or_default(),
    })
}

fn resolve_http(args: &NodeArgs, file: &FileConfig) -> anyhow::Result<HttpOptions> {
    let defaults = HttpOptions::default();
    let size = |flag: Option<u64>,
                from_file: &Option<ByteSize>,
                name: &str|
     -> anyhow::Result<Option<u64>> {
        match (flag, from_file) {
            (Some(bytes), _) => Ok(Some(bytes)),
            (None, Some(size)) => size
                .bytes()
                .map(Some)
                .with_context(|| format!("{name} in the config file")),
            (None, None) => Ok(None),
        }
    };
    let millis = |flag: Option<u64>, from_file: Option<u64>, default: Duration| {
        flag.or(from_file).map_or(default, Duration::from_millis)
    };
    let body_bytes_max = size(args.max_body_bytes, &file.max_body_bytes, "max_body_bytes")?
        .unwrap_or(defaults.body_bytes_max);
    let key_bytes_max = match size(args.max_key_bytes, &file.max_key_bytes, "max_key_bytes")? {
        Some(bytes) => usize::try_from(bytes).context("max key bytes")?,
        None => defaults.key_bytes_max,
    };
    let connections_max = args
        .max_connections
        .or(file.max_connections)
        .unwrap_or(defaults.connections_max);
    ensure!(connections_max >= 1, "max connections must be at least 1");
    ensure!(key_bytes_max >= 1, "max key bytes must be at least 1");
    let options = HttpOptions {
        body_bytes_max,
        key_bytes_max,
        connections_max,
        header_read_timeout: millis(
            args.header_read_timeout_ms,
            file.header_read_timeout_ms,
            defaults.header_read_timeout,
        ),
        body_read_timeout: millis(
            args.body_read_timeout_ms,
            file.body_read_timeout_ms,
            defaults.body_read_timeout,
        ),
        shutdown_drain_timeout: millis(
            args.shutdown_timeout_ms,
            file.shutdown_timeout_ms,
            defaults.shutdown_drain_timeout,
        ),
    };
    for (name, duration) in [
        ("header read timeout", options.header_read_timeout),
        ("body read timeout", options.body_read_timeout),
    ] {
        if duration.is_zero() {
            bail!("{name} must be more than 0 ms");
        }
    }
    Ok(options)
}

fn resolve_replication(
    args: &NodeArgs,
    file: &FileConfig,
    role: &Role,
) -> anyhow::Result<NodeOptions> {
    let defaults = NodeOptions::default();
    let millis = |flag: Option<u64>, from_file: Option<u64>, default: Duration, name: &str| {
        let duration = flag.or(from_file).map_or(default, Duration::from_millis);
        ensure!(!duration.is_zero(), "{name} must be more than 0 ms");
        Ok(duration)
    };
    let write_quorum = args
        .write_quorum
        .or(file.write_quorum)
        .unwrap_or(defaults.leader.write_quorum);
    ensure!(
        (1..=64).contains(&write_quorum),
        "write quorum must be from 1 to 64 (it counts the leader)"
    );
    let follower_id = match role {
        Role::Leader => "leader".to_owned(),
        Role::Follower { number, .. } => format!("follower-{number}"),
    };
    let mut options = NodeOptions {
        acks_timeout: millis(
            args.acks_timeout_ms,
            file.acks_timeout_ms,
            defaults.acks_timeout,
            "acks timeout",
        )?,
        ..defaults
    };
    options.leader.write_quorum = write_quorum;
    options.leader.follower_down_after = millis(
        args.follower_down_ms,
        file.follower_down_ms,
        options.leader.follower_down_after,
        "follower down timeout",
    )?;
    options.follower.fetch_wait = millis(
        args.fetch_wait_ms,
        file.fetch_wait_ms,
        options.follower.fetch_wait,
        "fetch wait",
    )?;
    let compaction = &mut options.compaction;
    compaction.snapshot_every_entries = args
        .snapshot_every_entries
        .or(file.snapshot_every_entries)
        .unwrap_or(compaction.snapshot_every_entries);
    compaction.snapshot_wal_live_ratio = args
        .snapshot_wal_live_ratio
        .or(file.snapshot_wal_live_ratio)
        .unwrap_or(compaction.snapshot_wal_live_ratio);
    if let Some(bytes) = match (
        args.snapshot_every_wal_bytes,
        &file.snapshot_every_wal_bytes,
    ) {
        (Some(bytes), _) => Some(bytes),
        (None, Some(size)) => Some(
            size.bytes()
                .context("snapshot_every_wal_bytes in the config file")?,
        ),
        (None, None) => None,
    } {
        compaction.snapshot_every_wal_bytes = bytes;
    }
    if let Some(bytes) = match (args.wal_retention_bytes, &file.wal_retention_bytes) {
        (Some(bytes), _) => Some(bytes),
        (None, Some(size)) => Some(
            size.bytes()
                .context("wal_retention_bytes in the config file")?,
        ),
        (None, None) => None,
    } {
        compaction.wal_retention_bytes = bytes;
    }
    compaction.snapshots_kept = args
        .snapshots_kept
        .or(file.snapshots_kept)
        .unwrap_or(compaction.snapshots_kept);
    ensure!(
        compaction.snapshots_kept >= 1,
        "snapshots kept must be at least 1"
    );
    compaction.codec = match (args.snapshot_codec, &file.snapshot_codec) {
        (Some(codec), _) => codec,
        (None, Some(text)) => text
            .parse()
            .map_err(anyhow::Error::msg)
            .context("snapshot_codec in the config file")?,
        (None, None) => compaction.codec,
    };
    options.follower.jitter_seed = rand_seed(&follower_id);
    options.follower.follower_id = follower_id;
    Ok(options)
}

/// A jitter seed that differs between followers and between runs.
fn rand_seed(follower_id: &str) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write(follower_id.as_bytes());
    hasher.finish()
}

fn read_file_config(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leader(args: NodeArgs) -> NodeConfig {
        resolve(None, None, args, None).expect("valid")
    }

    #[test]
    fn sizes_take_suffixes() {
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("512K"), Ok(512 << 10));
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes(" 2 gb "), Ok(2 << 30));
        assert!(parse_bytes("1T").is_err());
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("99999999999999999999G").is_err());
    }

    #[test]
    fn follower_ids_are_named_or_numbered() {
        assert_eq!(parse_follower_number("follower-1").unwrap(), 1);
        assert_eq!(parse_follower_number("3").unwrap(), 3);
        for bad in ["follower-0", "0", "follower-x", "leader", "", "60000"] {
            assert!(parse_follower_number(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_match_the_original_project() {
        let config = leader(NodeArgs::default());
        assert_eq!(config.listen, "127.0.0.1:8000");
        assert_eq!(config.data_dir, PathBuf::from("data/leader"));
        assert_eq!(config.wal_dir(), PathBuf::from("data/leader/wal"));
        assert_eq!(config.sync_policy, SyncPolicy::Batch);
        assert_eq!(config.http, HttpOptions::default());
        let follower = resolve(Some("follower-2"), None, NodeArgs::default(), None).unwrap();
        assert_eq!(follower.listen, "127.0.0.1:8002");
        assert_eq!(
            follower.data_dir,
            PathBuf::from("data/followers/follower-2")
        );
        assert_eq!(
            follower.role,
            Role::Follower {
                number: 2,
                leader_url: "http://127.0.0.1:8000".to_owned()
            }
        );
    }

    #[test]
    fn flags_beat_the_compat_env_which_beats_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kvd.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\nmax_segment_size = \"1MiB\"\nsync_policy = \"always\"\nmax_body_bytes = 1024\nlog_format = \"json\"\n",
        )
        .unwrap();
        let from_file = leader(NodeArgs {
            config: Some(path.clone()),
            ..NodeArgs::default()
        });
        assert_eq!(from_file.listen, "127.0.0.1:9000");
        assert_eq!(from_file.segment_bytes_max, 1 << 20);
        assert_eq!(from_file.sync_policy, SyncPolicy::Always);
        assert_eq!(from_file.http.body_bytes_max, 1024);
        assert_eq!(from_file.log_format, LogFormat::Json);

        let env_over_file = resolve(
            None,
            None,
            NodeArgs {
                config: Some(path.clone()),
                ..NodeArgs::default()
            },
            Some("4096".to_owned()),
        )
        .unwrap();
        assert_eq!(env_over_file.segment_bytes_max, 4096);

        let flags = NodeArgs {
            config: Some(path),
            listen: Some("127.0.0.1:0".to_owned()),
            max_segment_size: Some(2048),
            sync_policy: Some(SyncPolicy::Never),
            ..NodeArgs::default()
        };
        let flags_over_all = resolve(None, None, flags, Some("4096".to_owned())).unwrap();
        assert_eq!(flags_over_all.listen, "127.0.0.1:0");
        assert_eq!(flags_over_all.segment_bytes_max, 2048);
        assert_eq!(flags_over_all.sync_policy, SyncPolicy::Never);
    }

    #[test]
    fn sealed_segment_compression_is_off_by_default_and_set_by_flag_or_file() {
        let config = leader(NodeArgs::default());
        assert_eq!(config.compress_sealed_segments, None);
        assert_eq!(config.wal_options().compress_sealed_segments, None);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kvd.toml");
        std::fs::write(&path, "compress_sealed_segments = \"zstd\"\n").unwrap();
        let from_file = leader(NodeArgs {
            config: Some(path.clone()),
            ..NodeArgs::default()
        });
        assert_eq!(from_file.compress_sealed_segments, Some(SegmentCodec::Zstd));
        let flag_off = leader(NodeArgs {
            config: Some(path),
            compress_sealed_segments: Some("none".parse().unwrap()),
            ..NodeArgs::default()
        });
        assert_eq!(flag_off.compress_sealed_segments, None);
        let lz4: SegmentCompression = "LZ4".parse().unwrap();
        assert_eq!(lz4, SegmentCompression(Some(SegmentCodec::Lz4)));
        assert!("gzip".parse::<SegmentCompression>().is_err());
    }

    #[test]
    fn bad_settings_are_refused_with_their_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kvd.toml");
        for (text, needle) in [
            ("sync_policy = \"sometimes\"", "sync_policy"),
            ("recovery_mode = \"hope\"", "recovery_mode"),
            ("max_segment_size = \"1T\"", "max_segment_size"),
            ("max_segment_size = 10", "below the minimum"),
            ("colour = \"blue\"", "unknown field"),
            ("leader = \"http://x\"", "followers only"),
            ("max_connections = 0", "at least 1"),
            ("header_read_timeout_ms = 0", "more than 0"),
            (
                "compress_sealed_segments = \"gzip\"",
                "compress_sealed_segments",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let args = NodeArgs {
                config: Some(path.clone()),
                ..NodeArgs::default()
            };
            let error = format!("{:#}", resolve(None, None, args, None).unwrap_err());
            assert!(error.contains(needle), "{text}: {error}");
        }
        let error = resolve(
            Some("1"),
            Some("127.0.0.1:8000".to_owned()),
            NodeArgs::default(),
            None,
        )
        .unwrap_err();
        assert!(error.to_string().contains("leader URL"));
        let error = resolve(None, None, NodeArgs::default(), Some("big".to_owned())).unwrap_err();
        assert!(error.to_string().contains("MAX_SEGMENT_SIZE"));
    }
}
