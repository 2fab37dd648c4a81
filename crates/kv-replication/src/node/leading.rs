//! The leader's driver: a write waits for the acknowledgements its [`Acks`] asks for, and a
//! follower's fetch is answered by [`LeaderState::on_fetch`] — at once, or held (the long
//! poll) until new entries or a new commit id, up to its wait.

use std::str::FromStr;
use std::time::{Duration, Instant};

use kv_store::{Command, Op, OutcomeSlot};
use serde::Serialize;

use super::{lock, Node, RoleState};
use crate::error::{Error, Result};
use crate::leader::FetchDecision;
use crate::log_view::LogView;
use crate::protocol::{FetchRequest, FetchResponse};

/// The longest a leader holds a fetch, whatever the follower asks.
pub const FETCH_WAIT_MAX: Duration = Duration::from_secs(10);

/// A write taken by [`Node::write_command`]: its entry id and where its outcome appears.
#[derive(Debug)]
pub struct Written {
    /// The entry's id.
    pub id: u64,
    /// Filled once the entry is applied (see [`Node::write_command`]).
    pub outcome: OutcomeSlot,
}

/// Which acknowledgements a write waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Acks {
    /// Durable on the leader.
    Leader,
    /// Committed: durable on a write quorum (the default).
    #[default]
    Quorum,
    /// Committed and durable on every follower that is not down.
    All,
}

impl FromStr for Acks {
    type Err = Error;
    fn from_str(text: &str) -> Result<Acks> {
        match text {
            "leader" => Ok(Acks::Leader),
            "quorum" => Ok(Acks::Quorum),
            "all" => Ok(Acks::All),
            other => Err(Error::UnknownAcks {
                text: other.to_owned(),
            }),
        }
    }
}

impl Node {
    /// Writes `op` on the leader and waits for `acks`; returns its id. Cancel-safe in the sense
    /// that a dropped future leaves the entry to be applied when it commits.
    pub async fn write(&self, op: Op, acks: Acks) -> Result<u64> {
        Ok(self.write_command(op.into(), acks).await?.id)
    }

    /// [`Node::write`] for a [`Command`] (an op with idempotency ids, if any); returns its id
    /// and the slot its outcome appears in once applied: by the time this returns, unless
    /// `acks` is `leader` under a write quorum above 1 (then once the entry commits). A
    /// repeated request fails with the store's `DuplicateRequest` or `RequestMismatch`,
    /// unwritten.
    pub async fn write_command(&self, command: Command, acks: Acks) -> Result<Written> {
        let leadership = *self.role_changes.borrow();
        self.with_leader(|_| ())?;
        let submitted = self.store.submit(command)?;
        let id = submitted.id;
        submitted.ticket.await.map_err(kv_store::Error::from)?;
        let commit_id =
            self.with_leader(|leader| leader.recompute_commit(self.store.durable_id()))?;
        self.publish_commit(commit_id);
        let id = match acks {
            Acks::Leader => Ok(id),
            Acks::Quorum => {
                let quorum = self.with_leader(|leader| leader.write_quorum())?;
                self.wait_for(
                    id,
                    leadership,
                    format!("a write quorum of {quorum}"),
                    |node| node.commit_id() >= id,
                )
                .await
            }
            Acks::All => {
                self.wait_for(id, leadership, "every live follower".to_owned(), |node| {
                    node.commit_id() >= id
                        && node
                            .with_leader(|leader| {
                                leader.all_live_followers_hold(Instant::now(), id)
                            })
                            .unwrap_or(false)
                })
                .await
            }
        }?;
        Ok(Written {
            id,
            outcome: submitted.outcome,
        })
    }

    /// How long a write waits for its acknowledgements (`NodeOptions::acks_timeout`).
    pub fn acks_timeout(&self) -> Duration {
        self.options.acks_timeout
    }

    /// Waits until `done` holds, while this node keeps the leadership it wrote `id` in
    /// (`leadership`: the role generation then); after a role change the commit id is no
    /// longer this leadership's, so nothing can be acknowledged any more.
    async fn wait_for(
        &self,
        id: u64,
        leadership: u64,
        wanted: String,
        done: impl Fn(&Node) -> bool,
    ) -> Result<u64> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.options.acks_timeout;
        let mut commits = self.commit.subscribe();
        let mut progress = self.progress.subscribe();
        let mut role_changes = self.role_changes.subscribe();
        loop {
            if *role_changes.borrow_and_update() != leadership {
                return Err(Error::SteppedDown {
                    id,
                    commit_id: self.commit_id(),
                    waited_ms: started.elapsed().as_millis() as u64,
                });
            }
            if done(self) {
                // Visible to readers once committed.
                self.publish_commit(self.commit_id());
                return Ok(id);
            }
            let changed = tokio::time::timeout_at(deadline, async {
                tokio::select! {
                    _ = commits.changed() => {}
                    _ = progress.changed() => {}
                    _ = role_changes.changed() => {}
                }
            })
            .await;
            if changed.is_err() {
                return Err(Error::AcksTimeout {
                    id,
                    commit_id: self.commit_id(),
                    wanted,
                    waited_ms: started.elapsed().as_millis() as u64,
                });
            }
        }
    }

    /// Answers a follower's fetch, holding it up to its wait (capped at [`FETCH_WAIT_MAX`])
    /// when there is nothing new. `record` is false for debugging views: they are answered but
    /// not counted as a follower's acknowledgement.
    pub async fn handle_fetch(&self, request: &FetchRequest, record: bool) -> FetchResponse {
        let wait = Duration::from_millis(u64::from(request.wait_ms)).min(FETCH_WAIT_MAX);
        let deadline = tokio::time::Instant::now() + wait;
        let mut commits = self.commit.subscribe();
        let mut role_changes = self.role_changes.subscribe();
        loop {
            let may_wait = tokio::time::Instant::now() < deadline;
            let (decision, commit_id) = match &mut *lock(&self.role) {
                RoleState::Leader(leader) => {
                    let decision =
                        leader.on_fetch(Instant::now(), request, &*self.store, may_wait, record);
                    (decision, leader.commit_id())
                }
                RoleState::Follower { leader_url, .. } => {
                    return FetchResponse::NotLeader {
                        leader_url: Some(leader_url.clone()),
                    }
                }
            };
            if record {
                self.publish_commit(commit_id);
                self.progress.send_modify(|count| *count += 1);
            }
            match decision {
                FetchDecision::Respond(response) => return response,
                FetchDecision::Wait => {
                    commits.mark_unchanged();
                    let new_entries = self.store.wal().last_watermark().wait(request.next_id);
                    let _ = tokio::time::timeout_at(deadline, async {
                        tokio::select! {
                            _ = new_entries => {}
                            _ = commits.changed() => {}
                            _ = role_changes.changed() => {}
                        }
                    })
                    .await;
                }
            }
        }
    }
}
