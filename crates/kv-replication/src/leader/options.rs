//! The leader's settings and the acknowledgement levels a write may ask for.

use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

/// Settings of the leader's bookkeeping.
#[derive(Debug, Clone)]
pub struct LeaderOptions {
    /// Nodes (the leader included) that must hold an entry durably before it commits. Under
    /// the controller its value is the controller's (`ClusterView::write_quorum`).
    pub write_quorum: usize,
    /// A follower not heard from for this long is down (status; the legacy `acks=all`).
    pub follower_down_after: Duration,
    /// A follower more than this many entries behind is lagging.
    pub follower_lagging_entries: u64,
    /// The lag limit (Kafka's `replica.lag.time.max.ms`): an ISR member that has not caught up
    /// with the leader's log for this long (or stopped fetching) is removed from the ISR; a
    /// follower that last heard its leader longer ago than this is not ready (`/health`).
    pub lag_limit: Duration,
    /// A follower outside the ISR not heard from for this long is forgotten.
    pub follower_forget_after: Duration,
}

impl Default for LeaderOptions {
    fn default() -> LeaderOptions {
        LeaderOptions {
            write_quorum: 1,
            follower_down_after: Duration::from_secs(5),
            follower_lagging_entries: 10_000,
            lag_limit: LAG_LIMIT_DEFAULT,
            follower_forget_after: Duration::from_secs(60),
        }
    }
}

/// The default lag limit: long enough for a fetch held by the leader (at most half of it) and
/// a slow fsync on a busy machine, short enough that one dead follower under `N = 2` of 3
/// costs writes two seconds, not a timeout each.
pub const LAG_LIMIT_DEFAULT: Duration = Duration::from_secs(2);

/// Which acknowledgements a write waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Acks {
    /// Durable on the leader (`?acks=leader`).
    Leader,
    /// Committed under the node's write quorum `N` (the default, no `?acks=`): with `N = 1`
    /// durable on the leader; with `N >= 2` held by every member of an ISR of at least `N`.
    #[default]
    WriteQuorum,
    /// `?acks=quorum`: committed as under `N >= 2` with the node's `N`, at least 2 — held by
    /// every member of an ISR of at least `max(N, 2)` (a legacy leader: committed).
    Quorum,
    /// Committed and durable on every ISR member (legacy: on every follower not down).
    All,
}

impl FromStr for Acks {
    type Err = crate::error::Error;
    fn from_str(text: &str) -> Result<Acks, crate::error::Error> {
        match text {
            "leader" => Ok(Acks::Leader),
            "quorum" => Ok(Acks::Quorum),
            "all" => Ok(Acks::All),
            other => Err(crate::error::Error::UnknownAcks {
                text: other.to_owned(),
            }),
        }
    }
}
