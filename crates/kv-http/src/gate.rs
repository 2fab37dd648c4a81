//! Who may answer a request: the leader alone for writes (a follower answers `307` to it),
//! and for reads what `?linearizable` and `?max_staleness_ms` ask, with the node's lease and
//! staleness; and whether the node is healthy as a member of its cluster.

use http::request::Parts;

use crate::cluster_state::ClusterState;
use crate::error::{Error, Result};
use crate::params::number_parameter;
use crate::percent::query_parameter;
use crate::state::{AppState, NodeRole};

pub(crate) fn require_leader(state: &AppState, parts: &Parts) -> Result<()> {
    match state.role() {
        // Replaced, though its role change has not gone through (it may wait on a hung disk).
        NodeRole::Leader => match state
            .cluster
            .as_deref()
            .and_then(ClusterState::other_leader_url)
        {
            Some(leader_url) => Err(redirect_to(&leader_url, parts)),
            None => Ok(()),
        },
        NodeRole::NoLeader => Err(Error::Unavailable(
            "no leader is known right now (an election is under way); retry".to_owned(),
        )),
        // Named the leader by the newest view it heard, its role change under way (recording
        // the new epoch may wait on the disk): not a 307 to the leader it followed, which
        // would send the request straight back here.
        NodeRole::Follower { .. }
            if state
                .cluster
                .as_deref()
                .is_some_and(ClusterState::named_leader) =>
        {
            Err(Error::Unavailable(
                "this node is named the leader and is taking up the role: retry".to_owned(),
            ))
        }
        NodeRole::Follower { leader_url } => Err(redirect_to(&leader_url, parts)),
    }
}

/// A write refused with nothing written ([`Error::Unavailable`]: no lease, a transfer under
/// way) by a node the newest view it heard replaced: the 307 to the new leader instead, which
/// takes it. A write that waited for a lease from before that view came ends here.
pub(crate) fn or_to_the_new_leader(state: &AppState, parts: &Parts, error: Error) -> Error {
    match (&error, state.cluster.as_deref()) {
        (Error::Unavailable(_), Some(cluster)) => match cluster.other_leader_url() {
            Some(leader_url) => redirect_to(&leader_url, parts),
            None => error,
        },
        _ => error,
    }
}

/// The 307 that sends this request to the leader at `leader_url`.
pub(crate) fn redirect_to(leader_url: &str, parts: &Parts) -> Error {
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or("/", |path_and_query| path_and_query.as_str());
    let location = format!("{}{path_and_query}", leader_url.trim_end_matches('/'));
    Error::NotLeader {
        leader_url: leader_url.to_owned(),
        read: matches!(parts.method, http::Method::GET | http::Method::HEAD),
        location,
    }
}

/// Why this node is not healthy as a member of its cluster, if it is not: a follower that
/// has not heard its leader for longer than the lag limit (its reads may be that stale), a
/// leader that has held no lease from the controller for that long (cut off from it: another
/// node likely leads), a node the cluster's metadata no longer lists (removed: it may still
/// copy the leader's log, but it is nobody's replica), or a node that knows no leader.
pub fn health_problem(state: &AppState) -> Option<String> {
    let cluster = state.cluster.as_deref()?;
    if let Some(failure) = cluster.controller().failure() {
        return Some(format!(
            "this node's controller member is down ({failure}): it no longer votes or keeps \
             the controller's log; restart the node"
        ));
    }
    if let Some(waiting) = cluster.controller().waiting_for_room() {
        return Some(format!(
            "this node's controller member is {waiting}: it takes no part in the controller's \
             Raft until there is room, and goes on by itself then (free space on this disk)"
        ));
    }
    let Some(view) = cluster.view() else {
        return Some("this node has not learned the cluster's metadata yet".to_owned());
    };
    let node_id = cluster.node_id();
    if !view.members.contains_key(&node_id) {
        return Some(format!(
            "the cluster's metadata this node knows does not list it (id {node_id}): it is still \
             catching up on its admission, or was removed (DELETE /admin/members/{node_id}) and \
             counts for nothing, its reads possibly stale. To rejoin after a removal, stop it, \
             move its controller/ and node.meta aside, and start it again"
        ));
    }
    let Some(leader) = view.data_leader else {
        return Some("the cluster has no leader right now (an election is due)".to_owned());
    };
    match state.role() {
        NodeRole::Leader => {
            let limit = state.node.lag_limit();
            match state.node.leader_without_lease_for() {
                Some(without) if without > limit => Some(format!(
                    "this node leads epoch {} but has held no lease from the controller for {} \
                     ms (lag limit {} ms): it may have been cut off, and another node elected; \
                     it takes no writes and serves no reads",
                    view.leader_epoch,
                    without.as_millis(),
                    limit.as_millis()
                )),
                _ if state.node.leader_taking_up() => Some(match state.node.isr_shortage() {
                    Some(shortage) => format!(
                        "this node leads epoch {} but its epoch's first entry cannot commit: \
                         {shortage}; it serves no reads and acknowledges no writes until a \
                         follower catches up and joins the ISR",
                        view.leader_epoch
                    ),
                    None => format!(
                        "this node is taking up its leadership of epoch {} (no lease from the \
                         controller yet, or its epoch's first entry not applied yet): it serves \
                         no reads and acknowledges no writes yet",
                        view.leader_epoch
                    ),
                }),
                _ => None,
            }
        }
        NodeRole::NoLeader => {
            let recorded = state.node.leader_epoch();
            Some(if recorded > view.leader_epoch {
                format!(
                    "this node records epoch {recorded}, above the cluster's epoch {} (node \
                     {leader} leads): epochs come only from the controller, so this node's \
                     node.meta is damaged, edited or from another run of the cluster, and the \
                     node takes no role. A follower's way out: stop it, remove it from the \
                     cluster (DELETE /admin/members/{node_id} on a running node), move its \
                     controller/ and node.meta aside and start it again: it rejoins and copies \
                     the data (node 0: docs/controller.md, \"Lost controller state\")",
                    view.leader_epoch
                )
            } else {
                format!("this node follows no leader yet (the cluster names node {leader})")
            })
        }
        NodeRole::Follower { .. } => follower_health_problem(state, leader),
    }
}

/// Why a follower is not ready: it has not heard from its leader within the lag limit, or the
/// controller has not confirmed within it that its leader still leads.
fn follower_health_problem(state: &AppState, leader: impl std::fmt::Display) -> Option<String> {
    let limit = state.node.lag_limit();
    match state.node.leader_contact_age() {
        None => Some(format!(
            "this follower has not heard from its leader (node {leader}) yet"
        )),
        Some(age) if age > limit => Some(format!(
            "this follower has not heard from its leader (node {leader}) for {} ms \
             (lag limit {} ms): its reads may be that stale",
            age.as_millis(),
            limit.as_millis()
        )),
        Some(_) => match state.node.leader_confirmation_age() {
            // Its leader answers, but the controller has not said for that long that
            // it still leads: cut off together, it may follow a deposed leader.
            Some(age) if age > limit => Some(format!(
                "the controller has not confirmed for {} ms (lag limit {} ms) that \
                 this follower's leader (node {leader}) still leads: cut off with it, \
                 this follower may follow a deposed leader, and its reads may be that \
                 stale",
                age.as_millis(),
                limit.as_millis()
            )),
            _ => None,
        },
    }
}

/// Longest `max_staleness_ms` a read may give.
pub const MAX_STALENESS_MS_MAX: u64 = 24 * 3600 * 1000;

/// Checks that this node may answer a read as asked, before it reads:
///
/// - `?linearizable=true` — only the leader answers, while its lease holds (a follower
///   answers `307` to the leader);
/// - `?max_staleness_ms=N` — a follower answers only if it heard its leader within the last
///   N ms and held what it said then, and (under the controller) the controller confirmed
///   within the last N ms that its leader still leads; else `503`;
/// - no option — a follower answers from what it has (as stale as `/cluster_status` says);
///   the leader answers only while its lease holds and its epoch's no-op is committed and
///   applied (a deposed leader answers `307` to the new one, or `503` while none is known; a
///   node the view names leader that does not lead yet, `503`): the leader's reads are
///   linearizable.
///
/// A leader that is sure of everything but its lease (it lapsed: the controller's renewal is
/// late, as when a starved CPU delays the heartbeat) waits up to [`READ_LEASE_WAIT`] for the
/// renewal before answering `503`, as a write waits for one.
pub async fn check_read(state: &AppState, parts: &Parts) -> Result<()> {
    let deadline = tokio::time::Instant::now() + READ_LEASE_WAIT;
    loop {
        match read_standing(state, parts)? {
            ReadStanding::Serve => return Ok(()),
            ReadStanding::AfterLease(refusal) => {
                if !state.node.wait_linearizable_reads(deadline).await {
                    // Deposed meanwhile, another leader named: answer as that node would.
                    return match read_standing(state, parts)? {
                        ReadStanding::Serve => Ok(()),
                        ReadStanding::AfterLease(_) => Err(refusal),
                    };
                }
            }
        }
    }
}

/// How long a leader unsure of its lease alone waits for it before a read gets `503`: its
/// heartbeat asks for a renewal every 100 ms, so half a second covers a starved node's late
/// renewals, and a leader cut off from the controller still answers well within a client's
/// timeout.
pub const READ_LEASE_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// What [`check_read`] decides without waiting.
enum ReadStanding {
    /// Read now.
    Serve,
    /// This node leads, is handing over nothing, and no other leader is named: read once it
    /// may serve linearizable reads again; else answer the error.
    AfterLease(Error),
}

fn read_standing(state: &AppState, parts: &Parts) -> Result<ReadStanding> {
    let query = parts.uri.query().unwrap_or_default();
    let linearizable = match query_parameter(query, "linearizable")? {
        None => false,
        Some(text) => match &text[..] {
            b"true" | b"1" => true,
            b"false" | b"0" => false,
            _ => {
                return Err(Error::InvalidQuery(
                    "linearizable must be true or false".to_owned(),
                ))
            }
        },
    };
    let max_staleness_ms = number_parameter(query, "max_staleness_ms", MAX_STALENESS_MS_MAX)?;
    let Some(cluster) = state.cluster.as_deref() else {
        return Ok(ReadStanding::Serve);
    };
    let (named, handing_over) = cluster.leadership_standing();
    // The common case first, with one look at the role: a leader that took a view, is not
    // handing over, and may serve linearizable reads (its lease holds, its no-op is applied)
    // answers — what the branches below decide for it too.
    if named.is_some() && !handing_over && state.node.linearizable_reads() {
        return Ok(ReadStanding::Serve);
    }
    let role = state.role();
    let Some(named_leader) = named else {
        // Starting: whether it leads, and what it may serve, comes with its first view.
        return Err(Error::Unavailable(
            "this node has not learned the cluster's metadata yet: retry".to_owned(),
        ));
    };
    if role != NodeRole::Leader && named_leader {
        // Named leader but not leading yet (a restart: the epoch it led before is led again
        // only as a new one, after its no-op — which a full disk holds up): its map may miss
        // writes it acknowledged. Its controller member may be what waits for room (to save
        // its vote or commit mark).
        let out_of_space = state.store.log_status().out_of_space.or_else(|| {
            let waiting = cluster.controller().waiting_for_room()?;
            Some(format!("its controller member is {waiting}"))
        });
        let detail = match out_of_space {
            Some(reason) => format!(
                "this node is taking up its leadership, but its disk is full ({reason}): \
                 retry once there is room"
            ),
            None => "this node is taking up its leadership (its epoch's first entry is not \
                     committed yet): retry"
                .to_owned(),
        };
        return Err(Error::Unavailable(detail));
    }
    if role != NodeRole::Leader && state.node.awaits_role_after_leading() {
        // Led before its restart, re-elected through a leaderless epoch: its map may miss
        // writes it acknowledged until it leads again or follows the leader elected instead.
        return Err(Error::Unavailable(
            "this node led before its restart and takes up its new role: retry".to_owned(),
        ));
    }
    if role == NodeRole::Leader {
        // Not sure it still leads (a lease that ran out, a transfer under way, a no-op not yet
        // committed): the leader the view names, if another, answers.
        let other_leader = cluster.other_leader_url();
        let cannot_vouch = Error::Unavailable(match state.node.isr_shortage() {
            Some(shortage) if state.node.leader_taking_up() => format!(
                "this node leads, but its epoch's first entry cannot commit: {shortage}: \
                 retry once a follower has caught up and joined the ISR"
            ),
            _ => "this node cannot vouch that it still leads (its lease ran out, it is \
                  handing over, or its epoch's first entry is not committed yet): retry"
                .to_owned(),
        });
        return match other_leader {
            Some(url) => Err(redirect_to(&url, parts)),
            None if handing_over => Err(cannot_vouch),
            None => Ok(ReadStanding::AfterLease(cannot_vouch)),
        };
    }
    if linearizable {
        return require_leader(state, parts).map(|()| ReadStanding::Serve);
    }
    let Some(max_ms) = max_staleness_ms else {
        return Ok(ReadStanding::Serve);
    };
    match state.node.staleness() {
        Some(staleness) if staleness.as_millis() <= u128::from(max_ms) => Ok(ReadStanding::Serve),
        staleness => Err(Error::Unavailable(format!(
            "this node cannot vouch for a staleness of at most {max_ms} ms (it may be {}): \
             read from the leader",
            staleness.map_or("unbounded".to_owned(), |staleness| format!(
                "{} ms",
                staleness.as_millis()
            ))
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: http::Method, uri: &str) -> Parts {
        let (parts, ()) = http::Request::builder()
            .method(method)
            .uri(uri)
            .body(())
            .expect("a request")
            .into_parts();
        parts
    }

    #[test]
    fn a_redirected_read_is_not_told_to_send_writes() {
        // Before, `GET /key/k?linearizable=true` on a follower got "this node is a follower;
        // send writes to the leader at …": the seed's text for writes, wrong for a read.
        let read = redirect_to(
            "http://127.0.0.1:8000",
            &parts(http::Method::GET, "/key/k?linearizable=true"),
        );
        assert!(matches!(read, Error::NotLeader { ref location, .. }
            if location == "http://127.0.0.1:8000/key/k?linearizable=true"));
        assert_eq!(
            read.to_string(),
            "this node cannot serve this read as asked (a linearizable read, or it may no longer \
             lead); read from the leader at http://127.0.0.1:8000"
        );
        let write = redirect_to("http://127.0.0.1:8000", &parts(http::Method::PUT, "/key/k"));
        assert_eq!(
            write.to_string(),
            "this node is a follower; send writes to the leader at http://127.0.0.1:8000"
        );
    }
}
