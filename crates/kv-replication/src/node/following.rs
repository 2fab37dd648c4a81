//! The follower's driver: the fetch loop. [`FollowerState`](crate::FollowerState) builds each
//! request and turns each answer into a [`Step`]; this module sends the requests over a
//! [`Transport`] and performs the steps (append, apply, truncate, install a snapshot, wait).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{lock, Node};
use crate::follower::{LinkState, Step};
use crate::transport::Transport;

impl Node {
    /// Runs the follower's fetch loop until `shutdown` resolves, replication stops for a
    /// reason an operator must look at (the node keeps serving reads either way), or the
    /// node's role changes ([`Node::become_leader`], [`Node::become_follower`]: a new leader
    /// needs a new loop with a transport to it).
    pub async fn run_follower<T: Transport>(
        self: Arc<Self>,
        transport: T,
        shutdown: impl Future<Output = ()>,
    ) {
        let mut role_changes = self.role_changes.subscribe();
        let role_changed = async move {
            let _ = role_changes.changed().await;
        };
        tokio::pin!(shutdown, role_changed);
        let fetch_timeout = self.options.follower.fetch_wait + Duration::from_secs(5);
        loop {
            let Some(request) = self.with_follower(|state| state.request(&*self.store)) else {
                tracing::error!("run_follower called on a leader");
                return;
            };
            let answer = tokio::select! {
                _ = &mut shutdown => return,
                _ = &mut role_changed => return,
                answer = transport.fetch(&request, fetch_timeout) => answer,
            };
            let Some((step, leader_epoch)) = self.with_follower(|state| {
                let step = match answer {
                    Ok(response) => state.on_response(Instant::now(), &request, response),
                    Err(error) => state.on_failure(Instant::now(), error),
                };
                (step, state.leader_epoch())
            }) else {
                return;
            };
            if leader_epoch > lock(&self.meta).epoch {
                // On disk before anything of the new epoch is appended: a node promoted later
                // must start above every epoch it has followed.
                if let Err(error) = self.persist_progress() {
                    tracing::error!(%error, "replication stopped: cannot record the leader's epoch");
                    self.stop_link(error.to_string());
                    return;
                }
            }
            match self.perform(step, &transport).await {
                Ok(None) => {}
                Ok(Some(delay)) => {
                    tokio::select! {
                        _ = &mut shutdown => return,
                        _ = &mut role_changed => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                Err(reason) => {
                    tracing::error!(%reason, "replication stopped");
                    self.stop_link(reason);
                    return;
                }
            }
        }
    }

    fn stop_link(&self, reason: String) {
        self.with_follower(|state| state.force_stop(reason));
    }

    /// Performs one step; returns a delay before the next fetch, or why replication stops.
    async fn perform<T: Transport>(
        &self,
        step: Step,
        transport: &T,
    ) -> Result<Option<Duration>, String> {
        match step {
            Step::InstallSnapshot {
                leader_first_id,
                adopt_cluster,
            } => {
                self.adopt(adopt_cluster)?;
                tracing::warn!(
                    leader_first_id,
                    next_id = self.store.next_id(),
                    "the leader compacted the entries this follower needs: installing its snapshot"
                );
                match self.download_and_install(transport).await {
                    Ok(applied_id) => {
                        tracing::info!(applied_id, "snapshot installed; fetching after it");
                        self.applied.send_replace(self.store.applied_id());
                        Ok(None)
                    }
                    Err(error) => {
                        let step = self.with_follower(|state| {
                            state.on_snapshot_failure(Instant::now(), error)
                        });
                        match step.unwrap_or(Step::Retry {
                            after: Duration::from_secs(1),
                        }) {
                            Step::Retry { after } => Ok(Some(after)),
                            _ => Ok(Some(Duration::from_secs(1))),
                        }
                    }
                }
            }
            Step::Append {
                frames,
                commit_id,
                adopt_cluster,
            } => {
                self.adopt(adopt_cluster)?;
                if kv_wal::frame::decode(&frames).map(|frame| frame.id).ok()
                    != Some(self.store.next_id())
                {
                    // An answer to an older request (the log moved since): fetch again.
                    return Ok(None);
                }
                kv_wal::fail_point!(FOLLOWER_AFTER_FETCH_BEFORE_APPEND)
                    .map_err(|error| format!("fail point: {error}"))?;
                let ticket = self
                    .store
                    .submit_frames(&frames, self.store.wal().sync_policy())
                    .map_err(|error| format!("cannot append the leader's entries: {error}"))?;
                ticket.await.map_err(|error| {
                    format!("cannot make the leader's entries durable: {error}")
                })?;
                self.publish_commit(commit_id);
                Ok(None)
            }
            Step::Apply {
                commit_id,
                adopt_cluster,
            } => {
                self.adopt(adopt_cluster)?;
                self.publish_commit(commit_id);
                Ok(None)
            }
            Step::Truncate { after_id } => {
                tracing::warn!(
                    after_id,
                    "this follower's log diverged from the leader's: truncating"
                );
                self.store
                    .truncate_after(after_id)
                    .map_err(|error| format!("cannot truncate the diverged suffix: {error}"))?;
                let applied = self.store.applied_id();
                self.applied.send_replace(applied);
                Ok(None)
            }
            Step::Retry { after } => {
                self.with_follower(|state| {
                    if let LinkState::Retrying { error, failures } = state.link() {
                        if *failures == 1 || failures.is_power_of_two() {
                            tracing::warn!(%error, failures, "fetch failed; retrying");
                        }
                    }
                });
                Ok(Some(after))
            }
            Step::Stop { reason } => Err(reason),
        }
    }
}
