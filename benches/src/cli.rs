//! The `kv-bench` command line and its check into a [`BenchConfig`].
//!
//! ```text
//! kv-bench put|get|mixed:R|delete|lag|cas|txn --url URL [--url URL…] --connections N
//!          (--duration 10s | --requests N) [--rate R] [--keys N] [--key-size B]
//!          [--value-size B] [--acks leader|quorum|all] [--warmup 1s] [--json] [--prefill]
//!          [--lag-wait 5s] [--lag-every N]
//! ```
//!
//! Every run is bounded twice: by time and by a request count. `--duration D` caps the
//! requests at [`REQUEST_COUNT_MAX`]; `--requests N` caps the time at [`RUN_DURATION_MAX`].

use std::time::Duration;

use clap::Parser;

use crate::duration::parse_duration_text;
use crate::keys::KeySpace;
use crate::schedule::OpenLoopSchedule;
use crate::target::TargetUrl;
use crate::workload::{Acks, Workload};
use crate::BenchError;

/// The most connections (workers) one run may open per target.
pub const CONNECTION_COUNT_MAX: usize = 4096;
/// The hard cap on measured requests when a run is bounded by `--duration`.
pub const REQUEST_COUNT_MAX: u64 = 1_000_000_000;
/// The hard cap on the measured phase when a run is bounded by `--requests`.
pub const RUN_DURATION_MAX: Duration = Duration::from_secs(3600);
/// The longest warm-up.
pub const WARMUP_DURATION_MAX: Duration = Duration::from_secs(600);
/// The longest per-request timeout.
pub const REQUEST_TIMEOUT_MAX: Duration = Duration::from_secs(600);
/// The most target URLs.
pub const TARGET_COUNT_MAX: usize = 64;
/// The longest `wait_ms` of a `lag` read: kvd's own limit for `min_id` reads.
pub const LAG_WAIT_MAX: Duration = Duration::from_secs(30);
/// The sparsest `lag` sampling: one write in this many.
pub const LAG_EVERY_MAX: u64 = 1000;

/// An HTTP/1.1 keep-alive load generator for kvd.
///
/// Closed loop by default (each connection sends its next request when the previous one is
/// answered); open loop with --rate, latency measured from each request's scheduled start.
#[derive(Debug, Parser)]
#[command(name = "kv-bench", version)]
#[command(group = clap::ArgGroup::new("bound").required(true).args(["duration", "request_count"]))]
pub struct BenchArgs {
    /// put, get, delete, mixed:R (R% GETs, the rest PUTs), lag (PUTs to the first URL, each
    /// followed by a `?min_id=` read of the key on the next follower URL: replication lag),
    /// cas (PUTs with `If-Match: "<mod_revision>"`) or txn (`POST /txn`: one compare on a key's
    /// mod_revision, then puts of 2 keys and gets of 2). In cas and txn each connection owns
    /// its keys (--keys must be at least --connections, twice that for txn), reads them once
    /// before the warm-up and tracks their revisions from its answers: a 412 or a failed
    /// compare is an error (`condition_failed`).
    pub workload: Workload,

    /// Base URL of a kvd node (repeatable). Writes go to the first; reads round-robin over all.
    #[arg(long = "url", required = true, value_name = "URL")]
    pub url_texts: Vec<String>,

    /// Concurrent workers, each with its own keep-alive connection per URL.
    #[arg(long = "connections", default_value_t = 1, value_name = "N")]
    pub connection_count: usize,

    /// Length of the measured phase, e.g. 10s, 500ms, 2m.
    #[arg(long = "duration", value_parser = parse_duration_text, value_name = "DURATION")]
    pub duration: Option<Duration>,

    /// Number of measured requests (over all connections).
    #[arg(long = "requests", value_name = "N")]
    pub request_count: Option<u64>,

    /// Open loop: total requests per second on a fixed schedule.
    #[arg(long = "rate", value_name = "R")]
    pub rate_per_second: Option<f64>,

    /// Number of distinct keys, chosen uniformly.
    #[arg(long = "keys", default_value_t = 10_000, value_name = "N")]
    pub key_count: u64,

    /// Length of every key, bytes (key-0000…).
    #[arg(long = "key-size", default_value_t = 16, value_name = "BYTES")]
    pub key_size_bytes: usize,

    /// Length of every value, bytes.
    #[arg(long = "value-size", default_value_t = 100, value_name = "BYTES")]
    pub value_size_bytes: usize,

    /// Append ?acks=X to writes.
    #[arg(long = "acks", value_enum)]
    pub acks: Option<Acks>,

    /// Unmeasured warm-up before the measured phase, on the same connections.
    #[arg(long = "warmup", default_value = "1s", value_parser = parse_duration_text)]
    pub warmup: Duration,

    /// Per-request timeout (also the connect timeout).
    #[arg(long = "timeout", default_value = "5s", value_parser = parse_duration_text)]
    pub request_timeout: Duration,

    /// lag: how long a follower may hold a `min_id` read before answering 504 (`wait_ms`).
    #[arg(long = "lag-wait", default_value = "5s", value_parser = parse_duration_text)]
    pub lag_wait: Duration,

    /// lag: time the follower read of one acknowledged write in N (per connection), so the
    /// reads add little load and do not hold the writers back.
    #[arg(long = "lag-every", default_value_t = 1, value_name = "N")]
    pub lag_every: u64,

    /// Open N replication streams to the first URL (the leader) as simulated followers that
    /// acknowledge everything at once, for the whole run: the leader's cost per follower
    /// without N processes. They never count for commits.
    #[arg(long = "stream-followers", default_value_t = 0, value_name = "N")]
    pub stream_followers: usize,

    /// PUT every key once before the warm-up, so GETs find their keys.
    #[arg(long = "prefill")]
    pub prefill: bool,

    /// Check that every GET returns exactly the value kv-bench writes under that key (only
    /// meaningful when kv-bench alone writes, e.g. after --prefill).
    #[arg(long = "verify-values")]
    pub verify_values: bool,

    /// Before starting, wait up to this long for every URL to answer `GET /health` with 2xx
    /// (a kvd node that leads, or follows a leader; a fresh leader answers 503 until its
    /// controller has made it the leader).
    #[arg(long = "wait-ready", value_parser = parse_duration_text, value_name = "DURATION")]
    pub wait_ready: Option<Duration>,

    /// Seed of the key and operation choices (printed in the report).
    #[arg(long = "seed")]
    pub seed: Option<u64>,

    /// Tokio worker threads of the load generator (default: one per core).
    #[arg(long = "threads", value_name = "N")]
    pub thread_count: Option<usize>,

    /// Allow URLs that resolve outside 127.0.0.0/8 and ::1.
    #[arg(long = "allow-non-loopback")]
    pub allow_non_loopback: bool,

    /// Exit with status 2 when any request (prefill included) failed.
    #[arg(long = "fail-on-error")]
    pub fail_on_error: bool,

    /// Print one JSON object instead of text.
    #[arg(long = "json")]
    pub json: bool,
}

/// A checked, complete description of one run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// The request mix.
    pub workload: Workload,
    /// Target nodes; writes go to the first.
    pub targets: Vec<TargetUrl>,
    /// Number of workers.
    pub connection_count: usize,
    /// Length of the measured phase (a cap when the run is bounded by requests).
    pub duration: Duration,
    /// Cap on measured requests (the bound when the run is bounded by requests).
    pub request_count_max: u64,
    /// Whether the run was bounded by `--requests` rather than `--duration`.
    pub bounded_by_requests: bool,
    /// The open-loop schedule, if any.
    pub open_loop_schedule: Option<OpenLoopSchedule>,
    /// Keys and values.
    pub key_space: KeySpace,
    /// The `acks` of writes.
    pub acks: Option<Acks>,
    /// Length of the warm-up.
    pub warmup: Duration,
    /// Per-request timeout.
    pub request_timeout: Duration,
    /// Whether to PUT every key first.
    pub prefill: bool,
    /// Whether GET values are compared with what kv-bench writes.
    pub verify_values: bool,
    /// How long to wait for the targets to answer `GET /health` with 2xx.
    pub wait_ready: Option<Duration>,
    /// Seed of the random choices.
    pub seed: u64,
    /// Whether non-loopback targets are allowed.
    pub allow_non_loopback: bool,
    /// `lag`: the `wait_ms` of each follower read.
    pub lag_wait: Duration,
    /// `lag`: one acknowledged write in this many (per worker) gets a follower read.
    pub lag_every: u64,
    /// Simulated followers on replication streams to the first target.
    pub stream_followers: usize,
}

impl BenchArgs {
    /// Checks the arguments against each other and the limits. `default_seed` is used when
    /// `--seed` is absent.
    pub fn into_config(self, default_seed: u64) -> Result<BenchConfig, BenchError> {
        let invalid = |reason: String| BenchError::InvalidConfig { reason };
        if self.url_texts.is_empty() || self.url_texts.len() > TARGET_COUNT_MAX {
            return Err(invalid(format!(
                "give between 1 and {TARGET_COUNT_MAX} --url, got {}",
                self.url_texts.len()
            )));
        }
        let targets = self
            .url_texts
            .iter()
            .map(|url_text| TargetUrl::parse(url_text))
            .collect::<Result<Vec<_>, _>>()?;
        if self.connection_count == 0 || self.connection_count > CONNECTION_COUNT_MAX {
            return Err(invalid(format!(
                "--connections must be between 1 and {CONNECTION_COUNT_MAX}, got {}",
                self.connection_count
            )));
        }
        let (duration, request_count_max, bounded_by_requests) =
            match (self.duration, self.request_count) {
                (Some(duration), None) => {
                    if duration.is_zero() || duration > RUN_DURATION_MAX {
                        return Err(invalid(format!(
                            "--duration must be above 0 and at most {}s",
                            RUN_DURATION_MAX.as_secs()
                        )));
                    }
                    (duration, REQUEST_COUNT_MAX, false)
                }
                (None, Some(request_count)) => {
                    if request_count == 0 || request_count > REQUEST_COUNT_MAX {
                        return Err(invalid(format!(
                            "--requests must be between 1 and {REQUEST_COUNT_MAX}"
                        )));
                    }
                    (RUN_DURATION_MAX, request_count, true)
                }
                _ => return Err(invalid("give exactly one of --duration, --requests".into())),
            };
        let open_loop_schedule = self
            .rate_per_second
            .map(OpenLoopSchedule::new)
            .transpose()?;
        let key_space = KeySpace::new(self.key_count, self.key_size_bytes, self.value_size_bytes)?;
        if self.warmup > WARMUP_DURATION_MAX {
            return Err(invalid(format!(
                "--warmup must be at most {}s",
                WARMUP_DURATION_MAX.as_secs()
            )));
        }
        if self.request_timeout.is_zero() || self.request_timeout > REQUEST_TIMEOUT_MAX {
            return Err(invalid(format!(
                "--timeout must be above 0 and at most {}s",
                REQUEST_TIMEOUT_MAX.as_secs()
            )));
        }
        if self
            .wait_ready
            .is_some_and(|wait| wait > WARMUP_DURATION_MAX)
        {
            return Err(invalid(format!(
                "--wait-ready must be at most {}s",
                WARMUP_DURATION_MAX.as_secs()
            )));
        }
        self.check_workload_options(targets.len())?;
        Ok(BenchConfig {
            workload: self.workload,
            targets,
            connection_count: self.connection_count,
            duration,
            request_count_max,
            bounded_by_requests,
            open_loop_schedule,
            key_space,
            acks: self.acks,
            warmup: self.warmup,
            request_timeout: self.request_timeout,
            prefill: self.prefill,
            verify_values: self.verify_values,
            wait_ready: self.wait_ready,
            seed: self.seed.unwrap_or(default_seed),
            allow_non_loopback: self.allow_non_loopback,
            lag_wait: self.lag_wait,
            lag_every: self.lag_every,
            stream_followers: self.stream_followers,
        })
    }

    /// The checks of what one workload needs: `lag` a follower and its own options, `cas` and
    /// `txn` enough keys for every connection to own some, `--verify-values` something to read.
    fn check_workload_options(&self, target_count: usize) -> Result<(), BenchError> {
        let invalid = |reason: String| BenchError::InvalidConfig { reason };
        if self.workload == Workload::Lag && target_count < 2 {
            return Err(invalid(
                "lag needs the leader's --url first and at least one follower --url after it"
                    .into(),
            ));
        }
        let owned_key_count_min = self.workload.owned_key_count_min();
        if self.key_count < owned_key_count_min.saturating_mul(self.connection_count as u64) {
            return Err(invalid(format!(
                "{} gives each connection its own keys: --keys must be at least {} × \
                 --connections ({}), got {}",
                self.workload, owned_key_count_min, self.connection_count, self.key_count
            )));
        }
        if self.lag_wait.is_zero() || self.lag_wait > LAG_WAIT_MAX {
            return Err(invalid(format!(
                "--lag-wait must be above 0 and at most {}s",
                LAG_WAIT_MAX.as_secs()
            )));
        }
        if !(1..=LAG_EVERY_MAX).contains(&self.lag_every) {
            return Err(invalid(format!(
                "--lag-every must be between 1 and {LAG_EVERY_MAX}"
            )));
        }
        if self.verify_values && !self.prefill && !self.workload.writes() {
            return Err(invalid(
                "--verify-values on a read-only workload needs --prefill".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(arguments: &[&str]) -> Result<BenchArgs, clap::Error> {
        BenchArgs::try_parse_from(std::iter::once("kv-bench").chain(arguments.iter().copied()))
    }

    fn config(arguments: &[&str]) -> Result<BenchConfig, BenchError> {
        parse(arguments).expect("arguments parse").into_config(99)
    }

    #[test]
    fn full_command_line() {
        let config = config(&[
            "mixed:90",
            "--url",
            "http://127.0.0.1:8080",
            "--url",
            "http://127.0.0.1:8081",
            "--connections",
            "64",
            "--duration",
            "10s",
            "--rate",
            "5000",
            "--keys",
            "1000",
            "--key-size",
            "12",
            "--value-size",
            "256",
            "--acks",
            "quorum",
            "--warmup",
            "500ms",
            "--json",
            "--prefill",
            "--seed",
            "5",
        ])
        .unwrap();
        assert_eq!(config.workload, Workload::Mixed { read_percent: 90 });
        assert_eq!(config.targets.len(), 2);
        assert_eq!(config.targets[1].port, 8081);
        assert_eq!(config.connection_count, 64);
        assert_eq!(config.duration, Duration::from_secs(10));
        assert_eq!(config.request_count_max, REQUEST_COUNT_MAX);
        assert!(!config.bounded_by_requests);
        assert_eq!(config.open_loop_schedule.unwrap().rate_per_second(), 5000.0);
        assert_eq!(config.key_space.key_count(), 1000);
        assert_eq!(config.key_space.key(3), "key-00000003");
        assert_eq!(config.key_space.value_size_bytes(), 256);
        assert_eq!(config.acks, Some(Acks::Quorum));
        assert_eq!(config.warmup, Duration::from_millis(500));
        assert!(config.prefill);
        assert_eq!(config.seed, 5);
    }

    #[test]
    fn defaults() {
        let config = config(&["get", "--url", "http://127.0.0.1:1", "--requests", "100"]).unwrap();
        assert_eq!(config.connection_count, 1);
        assert_eq!(config.request_count_max, 100);
        assert_eq!(config.duration, RUN_DURATION_MAX);
        assert!(config.bounded_by_requests);
        assert!(config.open_loop_schedule.is_none());
        assert_eq!(config.key_space.key_count(), 10_000);
        assert_eq!(config.key_space.key_size_bytes(), 16);
        assert_eq!(config.key_space.value_size_bytes(), 100);
        assert_eq!(config.warmup, Duration::from_secs(1));
        assert_eq!(config.request_timeout, Duration::from_secs(5));
        assert_eq!(config.acks, None);
        assert_eq!(config.seed, 99);
        assert!(!config.prefill && !config.verify_values && !config.allow_non_loopback);
    }

    #[test]
    fn exactly_one_bound_is_required() {
        assert!(parse(&["get", "--url", "http://127.0.0.1:1"]).is_err());
        assert!(parse(&[
            "get",
            "--url",
            "http://127.0.0.1:1",
            "--duration",
            "1s",
            "--requests",
            "5"
        ])
        .is_err());
    }

    #[test]
    fn url_is_required() {
        assert!(parse(&["get", "--duration", "1s"]).is_err());
    }

    #[test]
    fn bad_values_are_rejected() {
        let base = ["--url", "http://127.0.0.1:1", "--duration", "1s"];
        let with = |workload: &str, extra: &[&str]| {
            let mut arguments = vec![workload];
            arguments.extend_from_slice(&base);
            arguments.extend_from_slice(extra);
            parse(&arguments)
                .map_err(|_| ())
                .and_then(|arguments| arguments.into_config(0).map(|_| ()).map_err(|_| ()))
        };
        assert!(with("get", &[]).is_ok());
        assert!(with("fetch", &[]).is_err());
        assert!(with("mixed:150", &[]).is_err());
        assert!(with("get", &["--connections", "0"]).is_err());
        assert!(with("get", &["--connections", "100000"]).is_err());
        assert!(with("get", &["--rate", "0"]).is_err());
        assert!(with("get", &["--rate", "-5"]).is_err());
        assert!(with("get", &["--keys", "0"]).is_err());
        assert!(with("get", &["--keys", "100000", "--key-size", "6"]).is_err());
        assert!(with("get", &["--acks", "some"]).is_err());
        assert!(with("get", &["--warmup", "forever"]).is_err());
        assert!(with("get", &["--timeout", "0s"]).is_err());
        assert!(with("get", &["--verify-values"]).is_err());
        assert!(with("get", &["--verify-values", "--prefill"]).is_ok());
        assert!(with("put", &["--url", "ftp://127.0.0.1:1"]).is_err());
        assert!(with("lag", &[]).is_err(), "lag needs a follower URL");
        assert!(with("lag", &["--url", "http://127.0.0.1:2"]).is_ok());
        assert!(with("lag", &["--url", "http://127.0.0.1:2", "--lag-wait", "31s"]).is_err());
        assert!(with("lag", &["--url", "http://127.0.0.1:2", "--lag-every", "0"]).is_err());
        assert!(with("lag", &["--url", "http://127.0.0.1:2", "--lag-every", "10"]).is_ok());
        assert!(with("cas", &["--connections", "64", "--keys", "64"]).is_ok());
        assert!(with("cas", &["--connections", "64", "--keys", "63"]).is_err());
        assert!(with("txn", &["--connections", "64", "--keys", "128"]).is_ok());
        assert!(with("txn", &["--connections", "64", "--keys", "127"]).is_err());
        let zero_duration = parse(&["get", "--url", "http://127.0.0.1:1", "--duration", "0s"])
            .unwrap()
            .into_config(0);
        assert!(matches!(
            zero_duration,
            Err(BenchError::InvalidConfig { .. })
        ));
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        BenchArgs::command().debug_assert();
    }
}
