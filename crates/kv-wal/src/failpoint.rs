//! Named fail points: spots on the write path where a test can make the process abort, or an
//! I/O step fail, to prove that recovery copes with a crash at exactly that moment.
//!
//! The registry is process-global and off by default; a fail point that is not configured
//! costs one relaxed atomic load. A binary turns points on from a spec string (kvd reads it from
//! `KVD_FAILPOINTS`; this crate never reads the environment):
//!
//! ```text
//! wal-before-append=abort@3,wal-roll-before-dir-fsync=abort@1,wal-after-write-before-fsync=error
//! ```
//!
//! Each entry is `name=action` or `name=action@N`:
//!
//! - `abort`: print `kv-wal: fail point NAME: abort at hit N` on stderr, then
//!   [`std::process::abort`] — no destructors, no flush, no fsync: a crash at that line.
//! - `error`: the step fails with an injected [`std::io::Error`], as a failing disk would; on
//!   the write path that poisons the log (see [`crate::Error::Poisoned`]).
//! - `off`: counted, never fires.
//! - `@N` (N ≥ 1): fire at the Nth hit only, counting from [`configure`]; without it, every hit.
//!
//! The points (constants below, all listed in [`FAIL_POINT_NAMES`]):
//!
//! | name | where |
//! |---|---|
//! | `wal-before-append` | an append, before anything is queued or written |
//! | `wal-after-write-before-fsync` | frames written to the segment, `fdatasync` not yet run (committer and `Always`) |
//! | `wal-after-fsync-before-ack` | `fdatasync` done and the durable id advanced, the appender not yet answered |
//! | `wal-roll-before-dir-fsync` | a new segment file created and synced, the directory not yet fsynced |
//! | `wal-truncate-before-cut` | a truncation removed later segments, the last kept one not yet cut |
//! | `follower-after-fetch-before-append` | replication: a follower fetched frames and has not appended them (called by kv-replication) |
//!
//! This module exists only with the `failpoints` cargo feature (off by default, as in
//! raft-engine). Call sites use [`crate::fail_point!`], which expands to `Ok(())` without the
//! feature, so a default build carries no fault-injection code at all. kv-wal's own tests turn
//! the feature on (a dev-dependency of the crate on itself), and so do kvd's.
//!
//! Tests that use fail points run the code under test in a child process: the registry is
//! global, so one test's configuration would fire in every other test of the same process.

use crate::error::Malformed;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

/// An append, before anything is queued or written.
pub const WAL_BEFORE_APPEND: &str = "wal-before-append";
/// Frames written to the active segment, `fdatasync` not yet run.
pub const WAL_AFTER_WRITE_BEFORE_FSYNC: &str = "wal-after-write-before-fsync";
/// `fdatasync` done and the durable id advanced; the appender not yet answered.
pub const WAL_AFTER_FSYNC_BEFORE_ACK: &str = "wal-after-fsync-before-ack";
/// A new segment file created and synced; the directory entry not yet fsynced.
pub const WAL_ROLL_BEFORE_DIR_FSYNC: &str = "wal-roll-before-dir-fsync";
/// A truncation removed the segments after the cut; the last kept segment not yet cut.
pub const WAL_TRUNCATE_BEFORE_CUT: &str = "wal-truncate-before-cut";
/// Replication: a follower fetched frames from its leader and has not appended them yet. The
/// call site lives in kv-replication; the name is registered here so specs can use it.
pub const FOLLOWER_AFTER_FETCH_BEFORE_APPEND: &str = "follower-after-fetch-before-append";

/// Every fail point a spec may name.
pub const FAIL_POINT_NAMES: [&str; 6] = [
    WAL_BEFORE_APPEND,
    WAL_AFTER_WRITE_BEFORE_FSYNC,
    WAL_AFTER_FSYNC_BEFORE_ACK,
    WAL_ROLL_BEFORE_DIR_FSYNC,
    WAL_TRUNCATE_BEFORE_CUT,
    FOLLOWER_AFTER_FETCH_BEFORE_APPEND,
];

/// What a fail point does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `std::process::abort()`.
    Abort,
    /// Return an injected I/O error.
    Error,
    /// Nothing (the point is only counted).
    Off,
}

/// One configured point: what it does and at which hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trigger {
    /// What happens.
    pub action: Action,
    /// Fire at this hit only (1 = the first); `None` fires at every hit.
    pub at_hit: Option<u64>,
}

/// Parses a spec (`name=action[@N],…`; empty means none) into `(name, trigger)` pairs.
pub fn parse(spec: &str) -> Result<Vec<(&'static str, Trigger)>, Malformed> {
    let mut parsed: Vec<(&'static str, Trigger)> = Vec::new();
    for entry in spec
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
    {
        let (name, rule) = entry.split_once('=').ok_or_else(|| {
            Malformed::from(format!(
                "fail point entry {entry:?}: expected name=action[@N]"
            ))
        })?;
        let name = name.trim();
        let known_name = FAIL_POINT_NAMES
            .iter()
            .copied()
            .find(|known| *known == name)
            .ok_or_else(|| {
                format!(
                    "unknown fail point {name:?}: expected one of {}",
                    FAIL_POINT_NAMES.join(", ")
                )
            })?;
        if parsed.iter().any(|(seen, _)| *seen == known_name) {
            return Err(format!("fail point {name:?} is configured twice").into());
        }
        let (action, at_hit) = match rule.trim().split_once('@') {
            Some((action, at_hit)) => (action.trim(), Some(at_hit.trim())),
            None => (rule.trim(), None),
        };
        let action = match action {
            "abort" => Action::Abort,
            "error" => Action::Error,
            "off" => Action::Off,
            other => {
                return Err(format!(
                    "fail point {name:?}: unknown action {other:?}: expected abort, error or off"
                )
                .into())
            }
        };
        let at_hit = at_hit
            .map(|text| {
                text.parse::<u64>()
                    .ok()
                    .filter(|&hit| hit >= 1)
                    .ok_or_else(|| {
                        Malformed::from(format!(
                            "fail point {name:?}: @{text} is not a hit number >= 1"
                        ))
                    })
            })
            .transpose()?;
        parsed.push((known_name, Trigger { action, at_hit }));
    }
    Ok(parsed)
}

/// Replaces the process's fail point configuration with `spec` (see the module docs); an empty
/// spec turns every point off. Hit counters restart from zero. On error nothing changes.
pub fn configure(spec: &str) -> Result<(), Malformed> {
    REGISTRY.configure(spec)
}

/// Called at a fail point: `Ok(())` unless the point is configured to fire at this hit. Aborts
/// the process for `abort`.
#[inline]
pub fn hit(name: &'static str) -> io::Result<()> {
    REGISTRY.hit(name)
}

/// How often `name` was hit since the last [`configure`] (0 while nothing is configured).
pub fn hits(name: &str) -> u64 {
    REGISTRY.hits(name)
}

static REGISTRY: Registry = Registry::new();

/// A set of fail points with their triggers and hit counters. The process has one, behind the
/// free functions; tests of this module build their own.
#[derive(Debug)]
struct Registry {
    enabled: AtomicBool,
    /// `(name, trigger, hits)` of every configured point.
    points: Mutex<Vec<(&'static str, Trigger, u64)>>,
}

impl Registry {
    const fn new() -> Registry {
        Registry {
            enabled: AtomicBool::new(false),
            points: Mutex::new(Vec::new()),
        }
    }

    fn points(&self) -> MutexGuard<'_, Vec<(&'static str, Trigger, u64)>> {
        self.points
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn configure(&self, spec: &str) -> Result<(), Malformed> {
        let parsed = parse(spec)?;
        let mut points = self.points();
        *points = parsed
            .into_iter()
            .map(|(name, trigger)| (name, trigger, 0))
            .collect();
        self.enabled.store(!points.is_empty(), Ordering::Release);
        Ok(())
    }

    #[inline]
    fn hit(&self, name: &'static str) -> io::Result<()> {
        if !self.enabled.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.hit_configured(name)
    }

    #[cold]
    fn hit_configured(&self, name: &'static str) -> io::Result<()> {
        let (trigger, hit_number) = {
            let mut points = self.points();
            let Some((_, trigger, hits)) = points.iter_mut().find(|(point, _, _)| *point == name)
            else {
                return Ok(());
            };
            *hits += 1;
            (*trigger, *hits)
        };
        if trigger.at_hit.is_some_and(|at_hit| at_hit != hit_number) {
            return Ok(());
        }
        match trigger.action {
            Action::Off => Ok(()),
            Action::Error => Err(io::Error::other(format!(
                "injected failure at fail point {name} (hit {hit_number})"
            ))),
            Action::Abort => {
                eprintln!("kv-wal: fail point {name}: abort at hit {hit_number}");
                std::process::abort()
            }
        }
    }

    fn hits(&self, name: &str) -> u64 {
        self.points()
            .iter()
            .find(|(point, _, _)| *point == name)
            .map_or(0, |(_, _, hits)| *hits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_into_triggers() {
        let parsed =
            parse(" wal-before-append=abort@3 , wal-roll-before-dir-fsync=error,").unwrap();
        assert_eq!(
            parsed,
            vec![
                (
                    WAL_BEFORE_APPEND,
                    Trigger {
                        action: Action::Abort,
                        at_hit: Some(3)
                    }
                ),
                (
                    WAL_ROLL_BEFORE_DIR_FSYNC,
                    Trigger {
                        action: Action::Error,
                        at_hit: None
                    }
                ),
            ]
        );
        assert_eq!(parse("").unwrap(), vec![]);
        for bad in [
            "wal-before-append",
            "no-such-point=abort",
            "wal-before-append=explode",
            "wal-before-append=abort@0",
            "wal-before-append=abort@x",
            "wal-before-append=off,wal-before-append=abort",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn a_point_fires_at_its_hit_only_and_counts_every_hit() {
        let registry = Registry::new();
        assert!(registry.hit(WAL_BEFORE_APPEND).is_ok(), "off by default");
        registry
            .configure("wal-before-append=error@2,wal-after-fsync-before-ack=off")
            .unwrap();
        assert!(registry.hit(WAL_BEFORE_APPEND).is_ok());
        let error = registry.hit(WAL_BEFORE_APPEND).unwrap_err();
        assert!(error.to_string().contains("wal-before-append"), "{error}");
        assert!(registry.hit(WAL_BEFORE_APPEND).is_ok());
        assert!(registry.hit(WAL_AFTER_FSYNC_BEFORE_ACK).is_ok());
        assert!(
            registry.hit(WAL_ROLL_BEFORE_DIR_FSYNC).is_ok(),
            "not configured"
        );
        assert_eq!(registry.hits(WAL_BEFORE_APPEND), 3);
        assert_eq!(registry.hits(WAL_AFTER_FSYNC_BEFORE_ACK), 1);
        assert_eq!(registry.hits(WAL_ROLL_BEFORE_DIR_FSYNC), 0);

        assert!(registry.configure("wal-before-append=bogus").is_err());
        assert_eq!(
            registry.hits(WAL_BEFORE_APPEND),
            3,
            "a bad spec changes nothing"
        );
        registry.configure("").unwrap();
        assert!(!registry.enabled.load(Ordering::Relaxed));
        assert_eq!(registry.hits(WAL_BEFORE_APPEND), 0);
    }

    #[test]
    fn error_without_a_hit_number_fires_every_time() {
        let registry = Registry::new();
        registry.configure("wal-truncate-before-cut=error").unwrap();
        for _ in 0..3 {
            assert!(registry.hit(WAL_TRUNCATE_BEFORE_CUT).is_err());
        }
    }
}
