//! The follower's driver: the fetch loop. [`FollowerState`](crate::FollowerState) builds each
//! request and turns each answer into a [`Step`]; this module sends the requests over a
//! [`Transport`] and performs the steps (record an epoch, append, apply, truncate, install a
//! snapshot, wait). It decides nothing itself.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::streaming::SessionEnd;
use super::{off_the_workers, Node, LARGE_WORK_BYTES};
use crate::error::{Error, Result};
use crate::follower::{LinkState, Step};
use crate::meta::NodeMeta;
use crate::transport::Transport;

/// How much longer than the fetch wait a follower gives the leader to answer.
pub(super) const FETCH_TIMEOUT_MARGIN: Duration = Duration::from_secs(5);
/// How long a follower whose disk is full waits before asking for the leader's entries again.
pub(super) const OUT_OF_SPACE_RETRY: Duration = Duration::from_secs(1);

impl Node {
    /// Runs the follower's fetch loop over `transport` (to the leader this node follows)
    /// until `shutdown` resolves, replication stops for a reason an operator must look at (the
    /// node keeps serving reads either way), or the node's role changes (a new leader needs a
    /// new loop with a transport to it: [`Node::run_replication`] does that).
    pub async fn run_follower<T: Transport>(
        self: Arc<Self>,
        transport: T,
        shutdown: impl Future<Output = ()>,
    ) {
        let generation = *self.role_changes.borrow();
        tokio::select! {
            _ = shutdown => {}
            _ = self.fetch_loop(&transport, generation) => {}
        }
    }

    /// The fetch loop, for as long as the role is the one of `generation`.
    pub(super) async fn fetch_loop<T: Transport>(&self, transport: &T, generation: u64) {
        let mut role_changes = self.role_changes.subscribe();
        let role_changed = async move {
            let _ = role_changes
                .wait_for(|current| *current != generation)
                .await;
        };
        let mut role_changed = std::pin::pin!(role_changed);
        let fetch_timeout = self.options.follower.fetch_wait + FETCH_TIMEOUT_MARGIN;
        if self.with_follower(|_| ()).is_none() {
            tracing::error!("the fetch loop started on a leader");
            return;
        }
        // Streams while the transport and the leader offer them; fetches otherwise.
        let mut streams = true;
        loop {
            let (step, sent_at) = if streams {
                match self.stream_session(transport, &mut role_changed).await {
                    SessionEnd::Unsupported => {
                        tracing::info!("the leader offers no replication stream: fetching");
                        streams = false;
                        continue;
                    }
                    SessionEnd::RoleChanged => return,
                    SessionEnd::Failed(error) => {
                        if !self.goes_on_after(error, &mut role_changed).await {
                            return;
                        }
                        continue;
                    }
                    SessionEnd::Step(step, sent_at) => (step, sent_at),
                }
            } else {
                // `None` once the role changed under the loop.
                let Some(request) = self.with_follower(|state| state.request(&*self.store)) else {
                    return;
                };
                let sent_at = Instant::now();
                let answer = tokio::select! {
                    _ = &mut role_changed => return,
                    answer = transport.fetch(&request, fetch_timeout) => answer,
                };
                let Some(step) = self.with_follower(|state| match answer {
                    Ok(response) => {
                        state.on_response(Instant::now(), &request, response, &*self.store)
                    }
                    Err(error) => state.on_failure(Instant::now(), error.to_string()),
                }) else {
                    return;
                };
                (step, sent_at)
            };
            match self.perform(step, transport, sent_at).await {
                // The next fetch at once, after a yield: an in-process transport may answer
                // without ever waiting, and a loop that never yields is never dropped when its
                // runtime shuts down.
                Ok(None) => tokio::task::yield_now().await,
                Ok(Some(delay)) => {
                    tokio::select! {
                        _ = &mut role_changed => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                Err(error) => {
                    if !self.goes_on_after(error, &mut role_changed).await {
                        return;
                    }
                }
            }
        }
    }

    /// Whether the fetch loop goes on after `error`. The follower's disk having no room for
    /// the leader's entries, nothing was appended: it asks again from where its log ends after
    /// [`OUT_OF_SPACE_RETRY`] (a full disk is no reason to stop for good) — false if the role
    /// changed meanwhile. Any other error stops replication (a failed write or `fdatasync`).
    async fn goes_on_after(
        &self,
        error: Error,
        role_changed: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> bool {
        if !error.is_out_of_space() {
            tracing::error!(%error, "replication stopped");
            self.stop_link(error.to_string());
            return false;
        }
        tracing::warn!(%error, "no room on the disk for the leader's entries or the epoch's record: trying again in {OUT_OF_SPACE_RETRY:?}");
        tokio::select! {
            _ = role_changed.as_mut() => false,
            _ = tokio::time::sleep(OUT_OF_SPACE_RETRY) => true,
        }
    }

    fn stop_link(&self, reason: String) {
        self.with_follower(|state| state.force_stop(reason));
    }

    /// Performs `step` (and the steps it leads to); returns a delay before the next fetch, or
    /// why replication stops.
    async fn perform<T: Transport>(
        &self,
        mut step: Step,
        transport: &T,
        sent_at: Instant,
    ) -> Result<Option<Duration>> {
        loop {
            step = match step {
                Step::PersistEpoch { epoch, then } => {
                    self.record_epoch(epoch)?;
                    *then
                }
                Step::InstallSnapshot {
                    leader_first_id,
                    leader_epoch,
                    adopt_cluster,
                } => {
                    self.adopt(adopt_cluster)?;
                    match self
                        .install_leaders_snapshot(leader_first_id, leader_epoch, transport)
                        .await
                    {
                        Some(next) => next,
                        None => return Ok(None),
                    }
                }
                Step::Append {
                    frames,
                    commit_id,
                    adopt_cluster,
                } => {
                    self.adopt(adopt_cluster)?;
                    self.append(&frames, commit_id).await?;
                    self.applied_after(sent_at, commit_id);
                    return Ok(None);
                }
                Step::Apply {
                    commit_id,
                    adopt_cluster,
                } => {
                    self.apply_answer(adopt_cluster, commit_id, Some(sent_at))?;
                    return Ok(None);
                }
                Step::Truncate { after_id } => {
                    self.truncate(after_id)?;
                    return Ok(None);
                }
                Step::Refetch => return Ok(None),
                Step::Retry { after } => {
                    self.log_retry();
                    return Ok(Some(after));
                }
                Step::Stop { reason } => return Err(Error::ReplicationStopped { reason }),
            };
        }
    }

    /// Records `epoch`, the newest leader epoch heard, in the node's meta file: on disk before
    /// anything of the new epoch is appended, so a node promoted later starts above every
    /// epoch it has followed. The save waits on the disk, off the async workers.
    pub(super) fn record_epoch(&self, epoch: u64) -> Result<()> {
        off_the_workers(|| self.persist_progress()).map_err(|error| Error::RecordEpoch {
            epoch,
            source: Box::new(error),
        })
    }

    /// An answer with nothing to append: adopts its cluster if asked, applies up to its
    /// commit id, and (with the send time the answer is known to be later than) notes it for
    /// the staleness bound.
    pub(super) fn apply_answer(
        &self,
        adopt_cluster: Option<u64>,
        commit_id: u64,
        sent_at: Option<Instant>,
    ) -> Result<()> {
        self.adopt(adopt_cluster)?;
        self.publish_commit(commit_id);
        if let Some(sent_at) = sent_at {
            self.applied_after(sent_at, commit_id);
        }
        Ok(())
    }

    /// Downloads and installs the leader's snapshot. `None` once installed (fetch after it);
    /// otherwise the step the state machine chose after the failure.
    async fn install_leaders_snapshot<T: Transport>(
        &self,
        leader_first_id: u64,
        leader_epoch: u64,
        transport: &T,
    ) -> Option<Step> {
        tracing::warn!(
            leader_first_id,
            next_id = self.store.next_id(),
            "the leader compacted the entries this follower needs: installing its snapshot"
        );
        match self.download_and_install(transport, leader_epoch).await {
            Ok(applied_id) => {
                tracing::info!(applied_id, "snapshot installed; fetching after it");
                self.applied.send_replace(self.store.applied_id());
                None
            }
            Err(error) => self.with_follower(|state| {
                state.on_snapshot_failure(Instant::now(), error.to_string())
            }),
        }
    }

    /// Appends the leader's frames (checked by the state machine), waits until they are
    /// durable here, and applies up to `commit_id`.
    async fn append(&self, frames: &[u8], commit_id: u64) -> Result<()> {
        kv_wal::fail_point!(FOLLOWER_AFTER_FETCH_BEFORE_APPEND).map_err(Error::InjectedFault)?;
        let ticket = self.append_leaders_frames(frames)?;
        ticket.await.map_err(|error| Error::FollowerLog {
            action: "make the leader's entries durable",
            source: error.into(),
        })?;
        self.publish_commit(commit_id);
        Ok(())
    }

    /// Appends the leader's `frames` to this follower's log; returns the WAL's ticket. A batch
    /// of [`LARGE_WORK_BYTES`] or more is checked, written and — when its ticket leads its
    /// write group — synced [`off_the_workers`], so the ticket's await then only waits.
    pub(super) fn append_leaders_frames(&self, frames: &[u8]) -> Result<kv_wal::AppendTicket> {
        let append = || {
            self.store
                .submit_leader_frames(frames)
                .map_err(|source| Error::FollowerLog {
                    action: "append the leader's entries",
                    source,
                })
        };
        if frames.len() < LARGE_WORK_BYTES {
            return append();
        }
        let ticket = off_the_workers(|| {
            let mut ticket = append()?;
            ticket.commit_now();
            Ok::<_, Error>(ticket)
        })?;
        self.wrote_large_entries_through(*ticket.ids().end());
        Ok(ticket)
    }

    /// Tells the state machine what the answer to a request sent at `sent_at` let this
    /// follower apply (for its staleness bound).
    pub(super) fn applied_after(&self, sent_at: Instant, commit_id: u64) {
        let applied_id = self.store.applied_id();
        self.with_follower(|state| state.on_applied(sent_at, commit_id, applied_id));
    }

    /// Drops this log's entries after `after_id`, where it parts from the leader's.
    fn truncate(&self, after_id: u64) -> Result<()> {
        tracing::warn!(
            after_id,
            "this follower's log diverged from the leader's: truncating"
        );
        self.store
            .truncate_after(after_id)
            .map_err(|source| Error::FollowerLog {
                action: "truncate the diverged suffix",
                source,
            })?;
        self.applied.send_replace(self.store.applied_id());
        self.forget_committed_after(after_id)
    }

    /// After a cut at `after_id` the leader asked for, what this node recorded as committed
    /// above it is not in the history that survives (under `N = 1`, a failover to a follower
    /// that had not copied it): the meta file's commit id comes down to the cut, so the node is
    /// not taken for one that lost committed entries (`Node::may_lead`) and a restart applies
    /// nothing of the next entries before the cluster says they are committed.
    fn forget_committed_after(&self, after_id: u64) -> Result<()> {
        let mut meta = self.meta.write();
        if meta.commit_id <= after_id {
            return Ok(());
        }
        let next = NodeMeta {
            commit_id: after_id,
            ..*meta
        };
        self.meta_files().save(&next)?;
        *meta = next;
        Ok(())
    }

    /// Logs a failed fetch: the first of a run and then at every power of two.
    fn log_retry(&self) {
        self.with_follower(|state| {
            if let LinkState::Retrying { error, failures } = state.link() {
                if *failures == 1 || failures.is_power_of_two() {
                    tracing::warn!(%error, failures, "fetch failed; retrying");
                }
            }
        });
    }
}
