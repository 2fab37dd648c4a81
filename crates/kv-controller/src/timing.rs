//! The controller's clocks: Raft's heartbeat and election timeouts, the data nodes'
//! heartbeat, their sessions and the data leader's lease, with the relations that keep them
//! safe checked in one place ([`Timing::check`]). The budget behind the defaults is in
//! `docs/controller.md` ("Timing budget").

use std::time::Duration;

use crate::error::Error;

/// Every timing setting of the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How often the Raft leader sends heartbeats to the other controllers.
    pub raft_heartbeat: Duration,
    /// A controller follower that hears no Raft leader for a random time between these two
    /// starts an election.
    pub raft_election_timeout_min: Duration,
    /// See `raft_election_timeout_min`.
    pub raft_election_timeout_max: Duration,
    /// How often every data node heartbeats the active controller.
    pub heartbeat_interval: Duration,
    /// How long after *sending* a heartbeat that was granted a lease the data leader may
    /// acknowledge writes. Shorter than `session_timeout`.
    pub lease: Duration,
    /// A node not heard from for this long has lost its session; for the data leader that
    /// means a new election. A newly active controller starts every session fresh.
    pub session_timeout: Duration,
    /// A planned transfer not completed within this long is cancelled.
    pub transfer_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            raft_heartbeat: Duration::from_millis(100),
            raft_election_timeout_min: Duration::from_millis(300),
            raft_election_timeout_max: Duration::from_millis(500),
            heartbeat_interval: Duration::from_millis(100),
            lease: Duration::from_millis(350),
            session_timeout: Duration::from_millis(550),
            transfer_timeout: Duration::from_secs(5),
        }
    }
}

impl Timing {
    /// Checks the relations the safety and liveness arguments rely on.
    pub fn check(&self) -> Result<(), Error> {
        if self.raft_heartbeat.is_zero() || self.heartbeat_interval.is_zero() {
            return Err(Error::InvalidOptions(
                "heartbeat intervals must be positive".to_owned(),
            ));
        }
        if self.raft_election_timeout_min <= self.raft_heartbeat {
            return Err(Error::InvalidOptions(format!(
                "the Raft election timeout ({:?}) must exceed the Raft heartbeat ({:?})",
                self.raft_election_timeout_min, self.raft_heartbeat
            )));
        }
        if self.raft_election_timeout_max <= self.raft_election_timeout_min {
            return Err(Error::InvalidOptions(
                "the Raft election timeout range is empty".to_owned(),
            ));
        }
        if self.lease >= self.session_timeout {
            return Err(Error::InvalidOptions(format!(
                "the lease ({:?}) must be shorter than the session timeout ({:?}): else two data leaders could acknowledge writes at once",
                self.lease, self.session_timeout
            )));
        }
        if self.lease <= self.heartbeat_interval {
            return Err(Error::InvalidOptions(format!(
                "the lease ({:?}) must outlast the heartbeat interval ({:?}): else the leader loses its lease between heartbeats",
                self.lease, self.heartbeat_interval
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_consistent_and_bad_relations_are_refused() {
        Timing::default().check().unwrap();
        let lease_too_long = Timing {
            lease: Duration::from_millis(600),
            ..Timing::default()
        };
        assert!(lease_too_long
            .check()
            .unwrap_err()
            .to_string()
            .contains("lease"));
        let lease_too_short = Timing {
            lease: Duration::from_millis(50),
            ..Timing::default()
        };
        assert!(lease_too_short.check().is_err());
    }
}
