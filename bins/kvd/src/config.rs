//! The node's configuration: the layers of settings — flags over env (merged by clap), then
//! `MAX_SEGMENT_SIZE`, then the TOML config file — stacked by [`merge`] and validated into one
//! [`NodeConfig`], the library crates' defaults filling what no layer set.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use kv_http::HttpOptions;
use kv_replication::NodeOptions;
use kv_store::RetentionOptions;
use kv_wal::{
    RecoveryMode, SegmentCodec, SyncPolicy, WalOptions, SEGMENT_BYTES_MAX_DEFAULT,
    SEGMENT_BYTES_MIN,
};

use crate::settings::{
    merge, ByteSize, ClusterSettings, CompactionSettings, FollowerSettings, HttpSettings,
    LogFormat, ReplicationSettings, RetentionSettings, Settings, WalSettings, MAX_SEGMENT_SIZE_ENV,
};

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

/// Whether `path` is the WAL's directory or a file in it (`DATA_DIR/wal`): what the counted
/// write and fsync faults count (`faults::configure_from_env`). `node.meta` and snapshots
/// share the WAL's file system; had their syncs been counted, a fault meant for the log could
/// land on one of them and the log never fail (it happened:
/// `failover::disk::a_leader_whose_disk_fails_…` waited 30 s for a WAL failure while the 120th
/// fsync had been `node.meta`'s).
#[cfg(feature = "fault-injection")]
pub fn in_the_wal_dir(path: &std::path::Path) -> bool {
    let wal = std::ffi::OsStr::new(WAL_DIR_NAME);
    path.file_name() == Some(wal) || path.parent().and_then(std::path::Path::file_name) == Some(wal)
}

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
    /// Key history and idempotent requests kept.
    pub retention: RetentionOptions,
    /// The cluster: this node's URL and the failover clocks.
    pub cluster: ClusterConfig,
    /// Log filter directives.
    pub log_level: String,
    /// Log format.
    pub log_format: LogFormat,
}

/// How the node takes part in the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The URL peers reach this node at, if not `http://` + the bound listen address.
    pub advertise_url: Option<String>,
    /// The controller's clocks (checked: the lease ends before the session).
    pub timing: kv_controller::Timing,
    /// `--write-quorum` when given (flag, env or file), `None` when defaulted: a cluster whose
    /// write quorum differs is asked to take it (`SetWriteQuorum`) once this node is up.
    pub write_quorum: Option<usize>,
}

impl NodeConfig {
    /// The node's id in the cluster: 0 for `kvd leader`, N for `kvd follower N`.
    pub fn node_id(&self) -> u64 {
        match self.role {
            Role::Leader => 0,
            Role::Follower { number, .. } => u64::from(number),
        }
    }

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
            // A whole last record whose CRC fails is a bit flip in synced, maybe acknowledged
            // data, not a torn write: refused (a follower re-syncs), never cut silently.
            refuse_whole_damaged_tail: true,
            // A fault build: the real file system, or a faulty one when a test asks
            // (`faults.rs`). A default build: the real one, from the defaults.
            #[cfg(feature = "fault-injection")]
            file_system: crate::faults::wal_file_system(),
            ..WalOptions::default()
        }
    }
}

/// Where a node's settings come from, besides the defaults.
#[derive(Debug, Default)]
pub struct Sources {
    /// Flags over `KVD_*` env variables, as clap merged them.
    pub command_line: Settings,
    /// The value of `MAX_SEGMENT_SIZE`, if set.
    pub max_segment_size_env: Option<String>,
    /// The TOML config file, if one was given.
    pub config_file: Option<PathBuf>,
}

/// Stacks the layers — command line, `MAX_SEGMENT_SIZE`, config file — and validates the
/// result into a [`NodeConfig`] for `kvd leader` (`follower_id` `None`) or `kvd follower ID`.
pub fn resolve(follower_id: Option<&str>, sources: Sources) -> anyhow::Result<NodeConfig> {
    let compatible_env = Settings {
        wal: WalSettings {
            max_segment_size: sources
                .max_segment_size_env
                .map(|text| text.parse::<ByteSize>())
                .transpose()
                .map_err(|error| anyhow::anyhow!("{MAX_SEGMENT_SIZE_ENV}: {error}"))?,
            ..WalSettings::default()
        },
        ..Settings::default()
    };
    let file = match &sources.config_file {
        Some(path) => read_config_file(path)?,
        None => Settings::default(),
    };
    let settings = merge([sources.command_line, compatible_env, file]);
    NodeConfig::from_settings(follower_id, settings)
}

impl NodeConfig {
    /// Validates merged settings, taking the defaults for what they leave unset.
    fn from_settings(follower_id: Option<&str>, settings: Settings) -> anyhow::Result<NodeConfig> {
        let role = resolve_role(follower_id, settings.follower)?;
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
        let wal = settings.wal;
        let segment_bytes_max = wal
            .max_segment_size
            .map_or(SEGMENT_BYTES_MAX_DEFAULT, |size| size.0);
        ensure!(
            segment_bytes_max >= SEGMENT_BYTES_MIN,
            "max segment size {segment_bytes_max} is below the minimum of {SEGMENT_BYTES_MIN} bytes"
        );
        let listen = settings.node.listen.unwrap_or(listen_default);
        check_listen_address(&listen)?;
        let write_quorum_given = settings.replication.write_quorum;
        let mut replication =
            resolve_replication(settings.replication, settings.compaction, &role)?;
        let mut cluster = resolve_cluster(settings.cluster, &mut replication)?;
        cluster.write_quorum = write_quorum_given.map(|_| replication.leader.write_quorum);
        Ok(NodeConfig {
            role,
            listen,
            data_dir: settings.node.data_dir.unwrap_or(data_dir_default),
            segment_bytes_max,
            sync_policy: wal.sync_policy.unwrap_or_default(),
            recovery_mode: wal.recovery_mode.unwrap_or_default(),
            compress_records_above: wal
                .compress_records_above
                .map(|size| usize::try_from(size.0).unwrap_or(usize::MAX)),
            compress_sealed_segments: wal.compress_sealed_segments.and_then(|choice| choice.0),
            http: resolve_http(settings.http)?,
            replication,
            retention: resolve_retention(settings.retention),
            cluster,
            log_level: crate::logging::check_levels(
                settings
                    .logging
                    .log_level
                    .unwrap_or_else(|| "info".to_owned()),
            )?,
            log_format: settings.logging.log_format.unwrap_or_default(),
        })
    }
}

/// The longest clock kvd takes (`--election-timeout-ms`, `--lease-ms`, ...): a day.
const CLOCK_MS_MAX: u64 = 24 * 3600 * 1000;

/// The cluster's settings: this node's URL, the controller's clocks (checked together), and
/// the lag limit (`replication`'s: the leader's ISR rule, a follower's health).
fn resolve_cluster(
    cluster: ClusterSettings,
    replication: &mut NodeOptions,
) -> anyhow::Result<ClusterConfig> {
    let defaults = kv_controller::Timing::default();
    // A clock past a day is a typo, and near `u64::MAX` ms one overflows the instants it is
    // added to (and the election timeout's spread added to it).
    let millis = |name: &str, value: Option<u64>, default: Duration| match value {
        Some(ms) if ms > CLOCK_MS_MAX => {
            bail!("{name} must be at most {CLOCK_MS_MAX} ms (a day), not {ms}")
        }
        Some(ms) => Ok(Duration::from_millis(ms)),
        None => Ok(default),
    };
    let election_timeout_min = millis(
        "election timeout",
        cluster.election_timeout_ms,
        defaults.raft_election_timeout_min,
    )?;
    let timing = kv_controller::Timing {
        heartbeat_interval: millis(
            "heartbeat interval",
            cluster.heartbeat_interval_ms,
            defaults.heartbeat_interval,
        )?,
        lease: millis("lease", cluster.lease_ms, defaults.lease)?,
        session_timeout: millis(
            "session timeout",
            cluster.session_timeout_ms,
            defaults.session_timeout,
        )?,
        raft_election_timeout_min: election_timeout_min,
        raft_election_timeout_max: election_timeout_min
            + (defaults.raft_election_timeout_max - defaults.raft_election_timeout_min),
        ..defaults
    };
    timing.check().map_err(anyhow::Error::msg)?;
    if let Some(url) = &cluster.advertise_url {
        check_node_url(url).map_err(|why| {
            anyhow::anyhow!("invalid advertise URL {url:?}: expected http://HOST:PORT ({why})")
        })?;
    }
    let leader = &mut replication.leader;
    leader.lag_limit = millis("lag limit", cluster.lag_limit_ms, leader.lag_limit)?;
    ensure!(
        !leader.lag_limit.is_zero(),
        "lag limit must be more than 0 ms"
    );
    Ok(ClusterConfig {
        advertise_url: cluster
            .advertise_url
            .map(|url| url.trim_end_matches('/').to_owned()),
        timing,
        write_quorum: None,
    })
}

/// A listen address must be `HOST:PORT` (`127.0.0.1:8000`, `localhost:8000`, `[::1]:8000`):
/// checked here, before the node makes its data directory, rather than when it binds after
/// opening (and, on a first start, creating) its store.
fn check_listen_address(listen: &str) -> anyhow::Result<()> {
    let host_and_port = listen
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    ensure!(
        host_and_port,
        "invalid listen address {listen:?}: expected HOST:PORT, e.g. 127.0.0.1:8000"
    );
    Ok(())
}

/// History and dedup retention: what is set, over the store's defaults.
fn resolve_retention(settings: RetentionSettings) -> RetentionOptions {
    let mut options = RetentionOptions::default();
    let history = &mut options.history;
    history.revisions_max = settings.history_revisions.unwrap_or(history.revisions_max);
    history.bytes_max = settings
        .history_bytes
        .map_or(history.bytes_max, |size| size.0);
    let dedup = &mut options.dedup;
    dedup.entries_max = settings.dedup_max_entries.unwrap_or(dedup.entries_max);
    dedup.age_max_ms = settings
        .dedup_max_age_secs
        .map_or(dedup.age_max_ms, |secs| secs.saturating_mul(1000));
    options
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

fn resolve_role(follower_id: Option<&str>, follower: FollowerSettings) -> anyhow::Result<Role> {
    let Some(id) = follower_id else {
        // `kvd leader` has no `--leader` flag: a leader URL can only come from the file.
        ensure!(
            follower.leader.is_none(),
            "`leader` in the config file applies to followers only"
        );
        return Ok(Role::Leader);
    };
    let number = parse_follower_number(id)?;
    let leader_url = follower
        .leader
        .unwrap_or_else(|| LEADER_URL_DEFAULT.to_owned());
    check_node_url(&leader_url).map_err(|why| {
        anyhow::anyhow!(
            "invalid leader URL {leader_url:?}: expected http://HOST:PORT ({why}; TLS is not \
             supported yet)"
        )
    })?;
    Ok(Role::Follower { number, leader_url })
}

/// Why `url` cannot be a node's address, if it cannot: `http://HOST:PORT` with a port from 1
/// to 65535 and nothing after it but one `/` — kvd serves its API at the root, so a path would
/// send every peer's request (and every 307 to the leader) where nothing answers.
fn check_node_url(url: &str) -> Result<(), String> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Err("the scheme must be http://".to_owned());
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#']) {
        return Err("no path, query or fragment: kvd serves its API at /".to_owned());
    }
    if authority.contains('@') {
        return Err("no user name or password".to_owned());
    }
    let Some((host, port)) = authority.rsplit_once(':') else {
        return Err("the port is missing".to_owned());
    };
    if host.is_empty() {
        return Err("the host is missing".to_owned());
    }
    match port.parse::<u16>() {
        Ok(port) if port > 0 => Ok(()),
        _ => Err(format!("{port:?} is not a port from 1 to 65535")),
    }
}

fn resolve_http(http: HttpSettings) -> anyhow::Result<HttpOptions> {
    let defaults = HttpOptions::default();
    let millis =
        |value: Option<u64>, default: Duration| value.map_or(default, Duration::from_millis);
    let key_bytes_max = match http.max_key_bytes {
        Some(size) => usize::try_from(size.0).context("max key bytes")?,
        None => defaults.key_bytes_max,
    };
    let options = HttpOptions {
        body_bytes_max: http
            .max_body_bytes
            .map_or(defaults.body_bytes_max, |size| size.0),
        key_bytes_max,
        connections_max: http.max_connections.unwrap_or(defaults.connections_max),
        header_read_timeout: millis(http.header_read_timeout_ms, defaults.header_read_timeout),
        body_read_timeout: millis(http.body_read_timeout_ms, defaults.body_read_timeout),
        shutdown_drain_timeout: millis(http.shutdown_timeout_ms, defaults.shutdown_drain_timeout),
    };
    ensure!(
        options.connections_max >= 1,
        "max connections must be at least 1"
    );
    ensure!(
        options.connections_max <= tokio::sync::Semaphore::MAX_PERMITS,
        "max connections must be at most {}",
        tokio::sync::Semaphore::MAX_PERMITS
    );
    ensure!(
        options.key_bytes_max >= 1,
        "max key bytes must be at least 1"
    );
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
    replication: ReplicationSettings,
    compaction: CompactionSettings,
    role: &Role,
) -> anyhow::Result<NodeOptions> {
    let defaults = NodeOptions::default();
    let millis = |value: Option<u64>, default: Duration, name: &str| {
        let duration = value.map_or(default, Duration::from_millis);
        ensure!(!duration.is_zero(), "{name} must be more than 0 ms");
        Ok(duration)
    };
    let mut options = NodeOptions {
        acks_timeout: millis(
            replication.acks_timeout_ms,
            defaults.acks_timeout,
            "acks timeout",
        )?,
        ..defaults
    };
    let leader = &mut options.leader;
    leader.write_quorum = replication.write_quorum.unwrap_or(leader.write_quorum);
    ensure!(
        (1..=64).contains(&leader.write_quorum),
        "write quorum must be from 1 to 64 (it counts the leader)"
    );
    leader.follower_down_after = millis(
        replication.follower_down_ms,
        leader.follower_down_after,
        "follower down timeout",
    )?;
    let follower = &mut options.follower;
    follower.fetch_wait = millis(replication.fetch_wait_ms, follower.fetch_wait, "fetch wait")?;
    follower.node_id = match role {
        Role::Leader => 0,
        Role::Follower { number, .. } => u64::from(*number),
    };
    follower.jitter_seed = rand_seed(&follower.node_id.to_le_bytes());
    let policy = &mut options.compaction;
    let bytes = |value: Option<ByteSize>, default: u64| value.map_or(default, |size| size.0);
    policy.snapshot_every_entries = compaction
        .snapshot_every_entries
        .unwrap_or(policy.snapshot_every_entries);
    policy.snapshot_every_wal_bytes = bytes(
        compaction.snapshot_every_wal_bytes,
        policy.snapshot_every_wal_bytes,
    );
    policy.snapshot_wal_live_ratio = compaction
        .snapshot_wal_live_ratio
        .unwrap_or(policy.snapshot_wal_live_ratio);
    if let Some(seconds) = compaction.snapshot_every_secs {
        policy.snapshot_interval = (seconds > 0).then(|| Duration::from_secs(seconds));
    }
    policy.snapshots_kept = compaction.snapshots_kept.unwrap_or(policy.snapshots_kept);
    ensure!(
        policy.snapshots_kept >= 1,
        "snapshots kept must be at least 1"
    );
    policy.wal_retention_bytes = bytes(compaction.wal_retention_bytes, policy.wal_retention_bytes);
    policy.codec = compaction.snapshot_codec.unwrap_or(policy.codec);
    Ok(options)
}

/// A jitter seed that differs between followers and between runs.
fn rand_seed(follower_id: &[u8]) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write(follower_id);
    hasher.finish()
}

fn read_config_file(path: &Path) -> anyhow::Result<Settings> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    Settings::from_toml(&text)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("invalid config file {}", path.display()))
}

#[cfg(test)]
mod tests;
