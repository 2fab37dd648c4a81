//! Structured logs on stderr, as text or JSON, filtered by `--log-level` — and openraft's
//! repeated warnings and errors thinned out.
//!
//! openraft logs some failures at every attempt: with one controller voter down, the active
//! controller logs "timeout while confirming leadership for read request" at ERROR for every
//! data node heartbeat it confirms (about a thousand lines a minute on a three-node cluster),
//! and its replication to the dead voter four lines per retry. Each of openraft's WARN and
//! ERROR log statements is let through once per [`OPENRAFT_REPEAT_EVERY`]; kvd's own lines and
//! openraft's INFO and below are not touched (kvd rate-limits its own repeated lines where it
//! logs them).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use tracing::callsite::Identifier;
use tracing::subscriber::Interest;
use tracing::{Level, Metadata, Subscriber};
use tracing_subscriber::layer::{self, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::settings::LogFormat;

/// How often one of openraft's WARN or ERROR log statements may print.
pub const OPENRAFT_REPEAT_EVERY: Duration = Duration::from_secs(10);

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

/// A global filter layer that lets each of openraft's WARN and ERROR log statements through at
/// most once per period, and everything else through. Global, not a per-layer filter: with
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
    /// Every other call site is decided once, by the other filters alone (a disabled `debug!`
    /// in a hot path stays free).
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        match OpenraftRepeats::repeatable(metadata) {
            true => Interest::sometimes(),
            false => Interest::always(),
        }
    }

    fn enabled(&self, metadata: &Metadata<'_>, _: layer::Context<'_, S>) -> bool {
        if !OpenraftRepeats::repeatable(metadata) {
            return true;
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
