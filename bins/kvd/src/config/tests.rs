//! Resolving settings into a `NodeConfig`: defaults, precedence between the layers, what each
//! setting changes, and the errors for bad values.

use std::path::PathBuf;

use kv_http::HttpOptions;
use kv_wal::{SegmentCodec, SyncPolicy};

use super::{parse_follower_number, resolve, NodeConfig, Role, Sources};
use crate::settings::{
    parse_bytes, ByteSize, LogFormat, NodeSettings, SegmentCompression, Settings, WalSettings,
};

fn leader(sources: Sources) -> NodeConfig {
    resolve(None, sources).expect("valid")
}

/// A config file with `text` in a temp dir (kept alive by the returned guard).
fn config_file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kvd.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
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
    let config = leader(Sources::default());
    assert_eq!(config.listen, "127.0.0.1:8000");
    assert_eq!(config.data_dir, PathBuf::from("data/leader"));
    assert_eq!(config.wal_dir(), PathBuf::from("data/leader/wal"));
    assert_eq!(config.sync_policy, SyncPolicy::Batch);
    assert_eq!(config.http, HttpOptions::default());
    let follower = resolve(Some("follower-2"), Sources::default()).unwrap();
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
    let (_dir, path) = config_file(
        "listen = \"127.0.0.1:9000\"\nmax_segment_size = \"1MiB\"\nsync_policy = \"always\"\nmax_body_bytes = 1024\nlog_format = \"json\"\n",
    );
    let from_file = leader(Sources {
        config_file: Some(path.clone()),
        ..Sources::default()
    });
    assert_eq!(from_file.listen, "127.0.0.1:9000");
    assert_eq!(from_file.segment_bytes_max, 1 << 20);
    assert_eq!(from_file.sync_policy, SyncPolicy::Always);
    assert_eq!(from_file.http.body_bytes_max, 1024);
    assert_eq!(from_file.log_format, LogFormat::Json);

    let env_over_file = leader(Sources {
        config_file: Some(path.clone()),
        max_segment_size_env: Some("4096".to_owned()),
        ..Sources::default()
    });
    assert_eq!(env_over_file.segment_bytes_max, 4096);

    let flags = Settings {
        node: NodeSettings {
            listen: Some("127.0.0.1:0".to_owned()),
            ..NodeSettings::default()
        },
        wal: WalSettings {
            max_segment_size: Some(ByteSize(2048)),
            sync_policy: Some(SyncPolicy::Never),
            ..WalSettings::default()
        },
        ..Settings::default()
    };
    let flags_over_all = leader(Sources {
        command_line: flags,
        max_segment_size_env: Some("4096".to_owned()),
        config_file: Some(path),
    });
    assert_eq!(flags_over_all.listen, "127.0.0.1:0");
    assert_eq!(flags_over_all.segment_bytes_max, 2048);
    assert_eq!(flags_over_all.sync_policy, SyncPolicy::Never);
}

#[test]
fn sealed_segment_compression_is_off_by_default_and_set_by_flag_or_file() {
    let config = leader(Sources::default());
    assert_eq!(config.compress_sealed_segments, None);
    assert_eq!(config.wal_options().compress_sealed_segments, None);
    let (_dir, path) = config_file("compress_sealed_segments = \"zstd\"\n");
    let from_file = leader(Sources {
        config_file: Some(path.clone()),
        ..Sources::default()
    });
    assert_eq!(from_file.compress_sealed_segments, Some(SegmentCodec::Zstd));
    let flag_off = leader(Sources {
        command_line: Settings {
            wal: WalSettings {
                compress_sealed_segments: Some("none".parse().unwrap()),
                ..WalSettings::default()
            },
            ..Settings::default()
        },
        config_file: Some(path),
        ..Sources::default()
    });
    assert_eq!(flag_off.compress_sealed_segments, None);
    let lz4: SegmentCompression = "LZ4".parse().unwrap();
    assert_eq!(lz4, SegmentCompression(Some(SegmentCodec::Lz4)));
    assert!("gzip".parse::<SegmentCompression>().is_err());
}

#[test]
fn bad_settings_are_refused_with_their_name() {
    for (text, needle) in [
        ("sync_policy = \"sometimes\"", "sync_policy"),
        ("recovery_mode = \"hope\"", "recovery_mode"),
        ("max_segment_size = \"1T\"", "max_segment_size"),
        ("max_segment_size = 10", "below the minimum"),
        ("colour = \"blue\"", "unknown field"),
        ("leader = \"http://x\"", "followers only"),
        ("max_connections = 0", "at least 1"),
        (
            "max_connections = 9223372036854775807",
            "at most 2305843009213693951",
        ),
        (
            "election_timeout_ms = 9223372036854775807",
            "election timeout must be at most",
        ),
        ("lease_ms = 86400001", "lease must be at most 86400000 ms"),
        ("lag_limit_ms = 100000000000", "lag limit must be at most"),
        ("log_level = \"warning\"", "\"warning\" names no level"),
        ("log_level = \"info,kv_http\"", "\"kv_http\" names no level"),
        ("header_read_timeout_ms = 0", "more than 0"),
        (
            "compress_sealed_segments = \"gzip\"",
            "compress_sealed_segments",
        ),
        ("max_connections = \"many\"", "max_connections"),
        ("listen = [", "TOML parse error"),
        ("lease_ms = 600", "session timeout"),
        ("advertise_url = \"proxy:1\"", "advertise URL"),
    ] {
        let (_dir, path) = config_file(text);
        let sources = Sources {
            config_file: Some(path),
            ..Sources::default()
        };
        let error = format!("{:#}", resolve(None, sources).unwrap_err());
        assert!(error.contains(needle), "{text}: {error}");
    }
    let flags = Settings::from_toml("leader = \"127.0.0.1:8000\"").unwrap();
    let sources = Sources {
        command_line: flags,
        ..Sources::default()
    };
    let error = resolve(Some("1"), sources).unwrap_err();
    assert!(error.to_string().contains("leader URL"));
    let sources = Sources {
        max_segment_size_env: Some("big".to_owned()),
        ..Sources::default()
    };
    let error = resolve(None, sources).unwrap_err();
    assert!(error.to_string().contains("MAX_SEGMENT_SIZE"));
}

#[test]
fn a_listen_address_that_is_not_host_and_port_is_refused_before_anything_starts() {
    // Before, `kvd leader --listen 8000` made the data directory and a new log, then failed
    // to bind ("invalid socket address").
    for listen in ["8000", ":8000", "nonsense", "127.0.0.1:99999", "127.0.0.1:"] {
        let sources = Sources {
            command_line: Settings::from_toml(&format!("listen = {listen:?}")).unwrap(),
            ..Sources::default()
        };
        let error = resolve(None, sources).expect_err(listen).to_string();
        assert!(
            error.contains("invalid listen address"),
            "{listen}: {error}"
        );
    }
    for listen in [
        "127.0.0.1:0",
        "localhost:8000",
        "[::1]:8000",
        "0.0.0.0:8001",
    ] {
        let sources = Sources {
            command_line: Settings::from_toml(&format!("listen = {listen:?}")).unwrap(),
            ..Sources::default()
        };
        assert_eq!(leader(sources).listen, listen);
    }
}

/// What each setting changes in the resolved configuration, set through the config file. The
/// test below insists every setting is here, so a new one cannot skip its conversion.
#[allow(clippy::type_complexity)]
#[rustfmt::skip]
const EFFECTS: [(&str, &str, fn(&NodeConfig) -> String, &str); 38] = [
    ("listen", "\"127.0.0.1:7\"", |c| c.listen.clone(), "127.0.0.1:7"),
    ("data_dir", "\"/x\"", |c| c.data_dir.display().to_string(), "/x"),
    ("max_segment_size", "\"1MiB\"", |c| c.segment_bytes_max.to_string(), "1048576"),
    ("sync_policy", "\"interval:7\"", |c| c.sync_policy.to_string(), "interval:7"),
    ("recovery_mode", "\"strict\"", |c| c.recovery_mode.to_string(), "strict"),
    ("compress_records_above", "\"2K\"", |c| format!("{:?}", c.compress_records_above), "Some(2048)"),
    ("compress_sealed_segments", "\"lz4\"", |c| format!("{:?}", c.compress_sealed_segments), "Some(Lz4)"),
    ("max_body_bytes", "\"3K\"", |c| c.http.body_bytes_max.to_string(), "3072"),
    ("max_key_bytes", "77", |c| c.http.key_bytes_max.to_string(), "77"),
    ("max_connections", "5", |c| c.http.connections_max.to_string(), "5"),
    ("header_read_timeout_ms", "11", |c| format!("{:?}", c.http.header_read_timeout), "11ms"),
    ("body_read_timeout_ms", "12", |c| format!("{:?}", c.http.body_read_timeout), "12ms"),
    ("shutdown_timeout_ms", "13", |c| format!("{:?}", c.http.shutdown_drain_timeout), "13ms"),
    ("write_quorum", "3", |c| c.replication.leader.write_quorum.to_string(), "3"),
    ("acks_timeout_ms", "14", |c| format!("{:?}", c.replication.acks_timeout), "14ms"),
    ("follower_down_ms", "15", |c| format!("{:?}", c.replication.leader.follower_down_after), "15ms"),
    ("fetch_wait_ms", "16", |c| format!("{:?}", c.replication.follower.fetch_wait), "16ms"),
    ("snapshot_every_entries", "17", |c| c.replication.compaction.snapshot_every_entries.to_string(), "17"),
    ("snapshot_every_wal_bytes", "\"1K\"", |c| c.replication.compaction.snapshot_every_wal_bytes.to_string(), "1024"),
    ("snapshot_wal_live_ratio", "0", |c| c.replication.compaction.snapshot_wal_live_ratio.to_string(), "0"),
    ("snapshot_every_secs", "21", |c| format!("{:?}", c.replication.compaction.snapshot_interval), "Some(21s)"),
    ("snapshots_kept", "4", |c| c.replication.compaction.snapshots_kept.to_string(), "4"),
    ("wal_retention_bytes", "\"5K\"", |c| c.replication.compaction.wal_retention_bytes.to_string(), "5120"),
    ("snapshot_codec", "\"lz4\"", |c| c.replication.compaction.codec.to_string(), "lz4"),
    ("history_revisions", "18", |c| c.retention.history.revisions_max.to_string(), "18"),
    ("history_bytes", "\"2K\"", |c| c.retention.history.bytes_max.to_string(), "2048"),
    ("dedup_max_entries", "19", |c| c.retention.dedup.entries_max.to_string(), "19"),
    ("dedup_max_age_secs", "20", |c| c.retention.dedup.age_max_ms.to_string(), "20000"),
    ("advertise_url", "\"http://proxy:1/\"", |c| format!("{:?}", c.cluster.advertise_url), "Some(\"http://proxy:1\")"),
    ("lag_limit_ms", "21", |c| format!("{:?}", c.replication.leader.lag_limit), "21ms"),
    ("heartbeat_interval_ms", "50", |c| format!("{:?}", c.cluster.timing.heartbeat_interval), "50ms"),
    ("lease_ms", "400", |c| format!("{:?}", c.cluster.timing.lease), "400ms"),
    ("session_timeout_ms", "600", |c| format!("{:?}", c.cluster.timing.session_timeout), "600ms"),
    ("election_timeout_ms", "400", |c| format!("{:?}", (c.cluster.timing.raft_election_timeout_min, c.cluster.timing.raft_election_timeout_max)), "(400ms, 600ms)"),
    ("log_level", "\"debug\"", |c| c.log_level.clone(), "debug"),
    ("log_format", "\"json\"", |c| format!("{:?}", c.log_format), "Json"),
    ("leader", "\"http://10.0.0.1:9\"", |c| format!("{:?}", c.role), "Follower { number: 1, leader_url: \"http://10.0.0.1:9\" }"),
    // Not a setting: the role's own part of the configuration, from `kvd follower 1`.
    ("(follower id)", "", |c| c.replication.follower.node_id.to_string(), "1"),
];

#[test]
fn every_setting_reaches_the_configuration_and_its_default_differs() {
    let keys = Settings::keys();
    for key in &keys {
        assert!(
            EFFECTS.iter().any(|(name, ..)| name == key),
            "setting {key} has no row in EFFECTS"
        );
    }
    let defaults = resolve(Some("1"), Sources::default()).unwrap();
    for (key, value, read, expected) in EFFECTS {
        if !keys.contains(&key) {
            assert_eq!(read(&defaults), expected, "{key}");
            continue;
        }
        let (_dir, path) = config_file(&format!("{key} = {value}"));
        let sources = Sources {
            config_file: Some(path),
            ..Sources::default()
        };
        let config = resolve(Some("1"), sources).unwrap_or_else(|error| panic!("{key}: {error:#}"));
        assert_eq!(read(&config), expected, "{key} = {value}");
        assert_ne!(
            read(&defaults),
            expected,
            "{key}: the test value is the default"
        );
    }
}

/// The counted faults count the WAL's directory and the files in it, and nothing beside them
/// on the same file system (`node.meta`, the controller's files, snapshots).
#[cfg(feature = "fault-injection")]
#[test]
fn only_the_wal_directory_and_its_files_are_in_the_wal_dir() {
    use std::path::Path;

    use super::in_the_wal_dir;

    let data = Path::new("/data/leader");
    assert!(in_the_wal_dir(&data.join("wal")));
    assert!(in_the_wal_dir(
        &data.join("wal/00000000000000000001-00000000000000000001.wal")
    ));
    assert!(in_the_wal_dir(&data.join("wal/wal.meta")));
    assert!(in_the_wal_dir(Path::new("wal/wal.lock")));
    for outside in [
        "node.meta",
        "node.meta.tmp",
        "controller/log/wal.meta",
        "controller/log/00000000000000000001-00000000000000000001.wal",
        "controller/raft-state.json",
        "snapshots/00000000000000000100.snap",
        "wal-old/x.wal",
        "",
    ] {
        assert!(!in_the_wal_dir(&data.join(outside)), "{outside}");
    }
    assert!(!in_the_wal_dir(data));
}

/// A node's address (`--advertise-url`, `--leader`) is `http://HOST:PORT` and nothing more:
/// a path was taken before, and a node advertising one got no controller message and sent
/// every redirect to a 404 once it led.
#[test]
fn a_node_url_is_http_host_and_port_with_no_path() {
    use super::check_node_url;

    for good in [
        "http://127.0.0.1:8000",
        "http://127.0.0.1:8000/",
        "http://kvd-2.internal:18001",
        "http://[::1]:8000",
    ] {
        assert_eq!(check_node_url(good), Ok(()), "{good}");
    }
    for (bad, why) in [
        ("http://127.0.0.1:8000/x", "no path"),
        ("http://127.0.0.1:8000/x/", "no path"),
        ("http://127.0.0.1:8000?a=1", "no path, query"),
        ("http://127.0.0.1:8000#f", "fragment"),
        ("http://127.0.0.1", "port is missing"),
        ("http://127.0.0.1:", "not a port"),
        ("http://127.0.0.1:0", "not a port"),
        ("http://127.0.0.1:65536", "not a port"),
        ("http://:8000", "host is missing"),
        ("http://user@127.0.0.1:8000", "user name"),
        ("https://127.0.0.1:8000", "scheme"),
        ("http://", "port is missing"),
    ] {
        let error = check_node_url(bad).expect_err(bad);
        assert!(error.contains(why), "{bad}: {error}");
    }
}
