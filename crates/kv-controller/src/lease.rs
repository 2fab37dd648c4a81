//! The data leader's lease, without I/O: when it may acknowledge writes (and serve
//! linearizable reads) on its own authority.
//!
//! The leader heartbeats the active controller; a reply that grants a lease lets it act until
//! `sent_at + lease`, where `sent_at` is when the leader **sent** that heartbeat (read from
//! its clock before sending). The controller expires the leader's session no sooner than
//! `session_timeout` after it **received** the heartbeat (which is after it was sent), and
//! `lease < session_timeout` ([`crate::Timing::check`]), so the lease runs out before any other
//! node can be elected: two leaders never acknowledge in overlapping time. Only clock *rates*
//! matter (each side measures a duration on its own monotonic clock); the margin
//! `session_timeout - lease` covers drift between them many times over.

use std::time::{Duration, Instant};

/// The data leader's lease in one epoch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lease {
    epoch: u64,
    valid_until: Option<Instant>,
}

impl Lease {
    /// No lease yet.
    pub fn new() -> Lease {
        Lease::default()
    }

    /// A heartbeat sent at `sent_at` by the leader of `leader_epoch` was answered: with a
    /// lease of `granted`, or with none (the controller refused: the node is not the leader of
    /// that epoch, or was fenced), which ends the lease at once. A reply for an older epoch is
    /// ignored; one for a newer epoch starts over.
    pub fn on_reply(&mut self, sent_at: Instant, leader_epoch: u64, granted: Option<Duration>) {
        if leader_epoch < self.epoch {
            return;
        }
        if leader_epoch > self.epoch {
            self.epoch = leader_epoch;
            self.valid_until = None;
        }
        match granted {
            Some(lease) => {
                let until = sent_at + lease;
                self.valid_until = Some(self.valid_until.map_or(until, |old| old.max(until)));
            }
            None => self.valid_until = None,
        }
    }

    /// Ends the lease now (the node saw a higher epoch, or stepped down).
    pub fn revoke(&mut self) {
        self.valid_until = None;
    }

    /// Whether the leader may acknowledge writes at `now`.
    pub fn is_valid(&self, now: Instant) -> bool {
        self.valid_until.is_some_and(|until| now < until)
    }

    /// When the lease ends, if there is one.
    pub fn valid_until(&self) -> Option<Instant> {
        self.valid_until
    }

    /// The epoch the lease is for.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_counts_from_the_send_time_and_ends_on_refusal_or_a_new_epoch() {
        let start = Instant::now();
        let ms = Duration::from_millis;
        let mut lease = Lease::new();
        assert!(!lease.is_valid(start));
        // Sent at 0, answered at 100: valid until 350, not 450.
        lease.on_reply(start, 3, Some(ms(350)));
        assert!(lease.is_valid(start + ms(349)));
        assert!(!lease.is_valid(start + ms(350)));
        // A later grant extends; an earlier one answered late does not shorten it.
        lease.on_reply(start + ms(100), 3, Some(ms(350)));
        lease.on_reply(start + ms(50), 3, Some(ms(350)));
        assert_eq!(lease.valid_until(), Some(start + ms(450)));
        // A reply for an older epoch is ignored.
        lease.on_reply(start + ms(200), 2, None);
        assert!(lease.is_valid(start + ms(400)));
        // A refusal ends it.
        lease.on_reply(start + ms(200), 3, None);
        assert!(!lease.is_valid(start + ms(201)));
        // A new epoch starts over.
        lease.on_reply(start + ms(300), 4, Some(ms(350)));
        assert_eq!(
            (lease.epoch(), lease.valid_until()),
            (4, Some(start + ms(650)))
        );
        lease.revoke();
        assert!(!lease.is_valid(start + ms(301)));
    }
}
