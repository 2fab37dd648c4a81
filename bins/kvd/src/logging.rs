//! Structured logs on stderr, as text or JSON, filtered by `--log-level` — and openraft's
//! repeated warnings and errors thinned out.
//!
//! openraft logs some failures at every attempt: with one controller voter down, the active
//! controller logs "timeout while confirming leadership for read request" at ERROR for every
//! data node heartbeat it confirms (about a thousand lines a minute on a three-node cluster),
//! and its replication to the dead voter four lines per retry. Each of openraft's WARN and
//! ERROR log statements is let through once per [`OPENRAFT_REPEAT_EVERY`]; kvd's own lines and
//! openraft's INFO and below are not touched (kvd rate-limits its own repeated lines where it
//! logs them). And openraft reports two normal events as errors, which are not printed at all
//! ([`OPENRAFT_ROUTINE`]): a member that has not finished joining yet, at every start of a
//! new node, and the pending requests of a controller that stops, at every clean stop.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use tracing::callsite::Identifier;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{self, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::settings::LogFormat;

/// How often one of openraft's WARN or ERROR log statements may print.
pub const OPENRAFT_REPEAT_EVERY: Duration = Duration::from_secs(10);

/// openraft's WARN and ERROR lines that report a normal event, never printed: the target they
/// come from (a prefix) and a text one of their fields holds.
pub const OPENRAFT_ROUTINE: [(&str, &str); 2] = [
    // The leader replicates to a member that asked to join before that member's controller
    // opens (it does once the join's answer arrives): every join, for a moment. kvd's
    // `TransportError` text; a node that never joins says so on its own side.
    ("openraft", "has not joined the cluster (yet)"),
    // A request still pending when kvd shuts its controller down: "failure receiving rx from
    // RaftCore" and "error when …recv_msg", with the core's result `Stopped`.
    ("openraft::raft::raft_inner", "Stopped"),
];

/// Installs the global subscriber.
pub fn init(log_level: &str, log_format: LogFormat) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(log_level)
        .with_context(|| format!("invalid log level {log_level:?}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let repeats = OpenraftRepeats::new(OPENRAFT_REPEAT_EVERY);
    let installed = match log_format {
        LogFormat::Text => builder.finish().with(repeats).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .finish()
            .with(repeats)
            .try_init(),
    };
    installed.map_err(|error| anyhow::anyhow!("cannot install the logger: {error}"))
}

/// The level names `--log-level` takes, alone or after `target=`.
const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// Refuses a `--log-level` directive that is a bare word but no level name: `EnvFilter` reads
/// `warning` or `loud` as a target's name, enabling only that (non-existent) target, and kvd
/// then logged nothing at all, its errors included. `target=level` directives and level names
/// pass (any case); a target with no level (`kv_http`, "everything from it") is refused too,
/// since it would silence every other target.
pub(crate) fn check_levels(log_level: String) -> anyhow::Result<String> {
    for directive in log_level.split(',').map(str::trim) {
        let level = directive
            .rsplit_once('=')
            .map_or(directive, |(_, level)| level);
        if !LEVELS.iter().any(|name| name.eq_ignore_ascii_case(level)) {
            anyhow::bail!(
                "invalid log level {log_level:?}: {directive:?} names no level (expected one of \
                 {}, or TARGET=LEVEL directives, e.g. info,kv_http=debug)",
                LEVELS.join(", ")
            );
        }
    }
    Ok(log_level)
}

/// A global filter layer that lets each of openraft's WARN and ERROR log statements through at
/// most once per period, none of its routine ones ([`OPENRAFT_ROUTINE`], which do not count
/// towards the period), and everything else through. Global, not a per-layer filter: with
/// tracing-subscriber's per-layer filters a call site whose interest is cached as `always`
/// skips `enabled`, and the event is judged by a stale decision about another one — kvd's own
/// "shutting down" line went missing that way (tokio-rs/tracing#2519).
pub struct OpenraftRepeats {
    every: Duration,
    printed: Mutex<HashMap<Identifier, Instant>>,
}

impl OpenraftRepeats {
    /// Lets each of openraft's WARN and ERROR statements print once per `every`.
    pub fn new(every: Duration) -> OpenraftRepeats {
        OpenraftRepeats {
            every,
            printed: Mutex::default(),
        }
    }

    fn repeatable(metadata: &Metadata<'_>) -> bool {
        metadata.is_event()
            && metadata.target().starts_with("openraft")
            && *metadata.level() <= Level::WARN
    }
}

impl<S: Subscriber> Layer<S> for OpenraftRepeats {
    /// Judged per event, with its fields: a routine line is dropped before it counts.
    fn event_enabled(&self, event: &Event<'_>, _: layer::Context<'_, S>) -> bool {
        let metadata = event.metadata();
        if !OpenraftRepeats::repeatable(metadata) {
            return true;
        }
        let routine = OPENRAFT_ROUTINE.iter().any(|(target, text)| {
            metadata.target().starts_with(target) && fields_contain(event, text)
        });
        if routine {
            return false;
        }
        let now = Instant::now();
        let mut printed = self.printed.lock().unwrap_or_else(PoisonError::into_inner);
        match printed.get(&metadata.callsite()) {
            Some(at) if now.duration_since(*at) < self.every => false,
            _ => {
                printed.insert(metadata.callsite(), now);
                true
            }
        }
    }
}

/// Whether one of `event`'s fields (its message included) holds `text`.
fn fields_contain(event: &Event<'_>, text: &str) -> bool {
    struct Contains<'a> {
        text: &'a str,
        found: bool,
    }
    impl Visit for Contains<'_> {
        fn record_str(&mut self, _: &Field, value: &str) {
            self.found |= value.contains(self.text);
        }
        fn record_debug(&mut self, _: &Field, value: &dyn std::fmt::Debug) {
            self.found |= !self.found && format!("{value:?}").contains(self.text);
        }
    }
    let mut visitor = Contains { text, found: false };
    event.record(&mut visitor);
    visitor.found
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tracing_subscriber::layer::SubscriberExt;

    use super::OpenraftRepeats;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines_printed(every: Duration, log: impl Fn()) -> String {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish()
            .with(OpenraftRepeats::new(every));
        tracing::subscriber::with_default(subscriber, log);
        let bytes = captured.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn an_openraft_warning_or_error_repeated_prints_once_per_period_and_the_rest_always() {
        let printed = lines_printed(Duration::from_secs(60), || {
            for attempt in 0..50 {
                tracing::error!(target: "openraft::core::raft_core", attempt, "timeout while confirming leadership");
                tracing::warn!(target: "openraft::replication", attempt, "error replication to target");
                tracing::info!(target: "openraft::core", attempt, "openraft info");
                tracing::error!(attempt, "kvd's own error");
            }
        });
        let count = |text: &str| printed.matches(text).count();
        assert_eq!(count("timeout while confirming leadership"), 1, "{printed}");
        assert_eq!(count("error replication to target"), 1, "{printed}");
        assert_eq!(count("openraft info"), 50);
        assert_eq!(count("kvd's own error"), 50);
    }

    #[test]
    fn openrafts_routine_errors_are_not_printed_and_do_not_hide_the_next_real_one() {
        let printed = lines_printed(Duration::from_secs(60), || {
            for _ in 0..3 {
                let not_joined = "NetworkError: kv_controller::network::TransportError: network: \
                                  node 1 at http://127.0.0.1:8001 has not joined the cluster (yet)";
                tracing::error!(target: "openraft::replication", err = %not_joined, "RPCError");
                tracing::warn!(
                    target: "openraft::replication",
                    "error replication to target=1 error={not_joined}"
                );
                tracing::error!(
                    target: "openraft::raft::raft_inner",
                    core_result = ?Err::<(), _>("Stopped"),
                    "failure receiving rx from RaftCore"
                );
            }
            // The same statement with a real error still prints, once.
            for _ in 0..3 {
                let refused = "Unreachable node: cannot connect to 127.0.0.1:8001";
                tracing::error!(target: "openraft::replication", err = %refused, "RPCError");
            }
            // "Stopped" elsewhere in openraft is not routine.
            tracing::error!(target: "openraft::core", error = "Stopped", "a storage failure");
        });
        let count = |text: &str| printed.matches(text).count();
        assert_eq!(count("has not joined"), 0, "{printed}");
        assert_eq!(count("failure receiving rx"), 0, "{printed}");
        assert_eq!(count("cannot connect"), 1, "{printed}");
        assert_eq!(count("a storage failure"), 1, "{printed}");
    }

    #[test]
    fn an_openraft_error_prints_again_once_the_period_is_over() {
        let printed = lines_printed(Duration::from_millis(50), || {
            for attempt in 0..6 {
                // One log statement: twice at once, then after the period.
                tracing::error!(target: "openraft::core::raft_core", attempt, "repeated");
                if attempt % 2 == 1 {
                    std::thread::sleep(Duration::from_millis(80));
                }
            }
        });
        assert_eq!(printed.matches("repeated").count(), 3, "{printed}");
    }
}
