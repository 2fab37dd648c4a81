//! Changing the members: adding one (a learner) or its URL, promoting a learner to voter,
//! removing one, and a planned transfer of the data leadership — each a metadata command and,
//! for the controller's own voters and learners, an openraft membership change.

use super::*;

impl Controller {
    /// Adds node `id` at `url`: a member in the metadata, then a learner of the controller
    /// quorum (it catches up on the Raft log in the background; the active controller promotes
    /// it to voter once it reports being caught up, if `promote_voters`). A retried join is
    /// harmless.
    pub async fn add_member(&self, id: NodeId, url: &str) -> Result<ClusterMeta> {
        let _change = self.inner.membership_change.lock().await;
        self.propose(Command::AddMember {
            id,
            url: url.to_owned(),
        })
        .await?
        .into_result()?;
        let already = self.raft_membership().get_node(&id).is_some();
        if !already {
            self.inner
                .raft
                .add_learner(
                    id,
                    BasicNode {
                        addr: url.to_owned(),
                    },
                    false,
                )
                .await
                .map_err(write_error)?;
        }
        Ok(self.meta())
    }

    /// Changes member `id`'s URL, in the metadata and in the controller quorum's membership
    /// (openraft's address of the node), so data and controller traffic both go to the new
    /// one.
    pub async fn update_url(&self, id: NodeId, url: &str) -> Result<ClusterMeta> {
        let _change = self.inner.membership_change.lock().await;
        self.propose(Command::UpdateUrl {
            id,
            url: url.to_owned(),
        })
        .await?
        .into_result()?;
        let membership = self.raft_membership();
        let stale = membership
            .get_node(&id)
            .is_some_and(|node| node.addr != url);
        if stale {
            let nodes = BTreeMap::from([(
                id,
                BasicNode {
                    addr: url.to_owned(),
                },
            )]);
            self.change_membership(ChangeMembers::SetNodes(nodes))
                .await?;
        }
        Ok(self.meta())
    }

    /// Makes learner `id` a voter of the controller quorum (at most [`VOTERS_MAX`]).
    pub async fn promote_voter(&self, id: NodeId) -> Result<()> {
        let _change = self.inner.membership_change.lock().await;
        let voters: BTreeSet<NodeId> = self.raft_membership().voter_ids().collect();
        if voters.contains(&id) {
            return Ok(());
        }
        if voters.len() >= VOTERS_MAX {
            return Err(Error::InvalidOptions(format!(
                "the controller quorum has {VOTERS_MAX} voters already"
            )));
        }
        self.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])))
            .await
    }

    /// Removes node `id`: from the controller quorum (voter or learner), then from the
    /// metadata. Refused for the data leader (transfer first), and whenever the metadata
    /// would refuse it (too few members left for the write quorum, the last ISR member):
    /// checked before the controller quorum changes, so a refusal changes nothing.
    pub async fn remove_member(&self, id: NodeId) -> Result<ClusterMeta> {
        let _change = self.inner.membership_change.lock().await;
        let membership = self.raft_membership();
        let voters_after: BTreeSet<NodeId> = membership
            .voter_ids()
            .filter(|&voter| voter != id)
            .collect();
        let mut meta_after = self.meta();
        meta_after.set_voters(&voters_after);
        meta_after
            .apply(&Command::RemoveMember { id }, &voters_after)
            .into_result()?;
        if membership.voter_ids().any(|voter| voter == id) {
            self.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])))
                .await?;
        }
        let membership = self.raft_membership();
        if membership.get_node(&id).is_some() {
            self.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])))
                .await?;
        }
        self.propose(Command::RemoveMember { id })
            .await?
            .into_result()?;
        Ok(self.meta())
    }

    /// Starts a planned leadership transfer to `to`, or (`None`) to the most advanced live ISR
    /// member this active controller knows. The data leader completes it.
    pub async fn transfer_leader(&self, to: Option<NodeId>) -> Result<ClusterMeta> {
        let meta = self.meta();
        let sessions = lock(&self.inner.logic).sessions(Instant::now(), &meta);
        let to = match to {
            Some(to) => {
                // A member the active controller has not heard from within the session
                // timeout cannot take over: refused here rather than begun, the leader's
                // writes stopped, and cancelled at the transfer timeout (an epoch spent).
                // A node that is no member is the transfer's own refusal to give.
                if let Some(down) = sessions
                    .iter()
                    .find(|session| session.node == to && !session.live)
                {
                    return Err(Error::TransferTargetDown {
                        node: to,
                        silent_ms: down.last_heard_age_ms,
                    });
                }
                to
            }
            None => sessions
                .iter()
                .filter(|session| session.live && session.heard)
                .filter(|session| {
                    meta.isr.contains(&session.node) && Some(session.node) != meta.data_leader
                })
                .max_by(|a, b| a.position.cmp(&b.position).then(b.node.cmp(&a.node)))
                .map(|session| session.node)
                .ok_or(Error::NoTransferTarget)?,
        };
        Ok(self
            .propose(Command::BeginTransfer { to })
            .await?
            .into_result()?)
    }

    pub(super) async fn change_membership(
        &self,
        change: ChangeMembers<NodeId, BasicNode>,
    ) -> Result<()> {
        self.inner
            .raft
            .change_membership(change, false)
            .await
            .map(|_| ())
            .map_err(write_error)
    }

    /// The controller quorum's membership as this node knows it.
    pub(super) fn raft_membership(&self) -> openraft::Membership<NodeId, BasicNode> {
        self.inner
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone()
    }
}
