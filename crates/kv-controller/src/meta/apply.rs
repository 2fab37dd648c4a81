//! Applying a command to the metadata: each command's checks and change, in one method each.
//! A command the metadata refuses changes nothing ([`Rejection`]).

use super::*;

impl ClusterMeta {
    pub(super) fn apply_in_place(
        &mut self,
        command: &Command,
        voters: &BTreeSet<NodeId>,
    ) -> Result<(), Rejection> {
        if let Command::Bootstrap {
            cluster_id,
            leader,
            leader_url,
            epoch_floor,
            write_quorum,
        } = command
        {
            return self.bootstrap(
                *cluster_id,
                *leader,
                leader_url,
                *epoch_floor,
                *write_quorum,
                voters,
            );
        }
        if !self.is_bootstrapped() {
            return Err(Rejection::NotBootstrapped);
        }
        match command {
            Command::Bootstrap { .. } => unreachable!("handled above"),
            Command::AddMember { id, url } => self.add_member(*id, url, voters),
            Command::UpdateUrl { id, url } => self.update_url(*id, url),
            Command::RemoveMember { id } => self.remove_member(*id),
            Command::ElectLeader {
                expected_epoch,
                new_leader,
                new_isr,
                unclean,
            } => self.elect(*expected_epoch, *new_leader, new_isr, *unclean),
            Command::ChangeIsr {
                sender,
                leader_epoch,
                isr,
                expected_version,
            } => self.change_isr(*sender, *leader_epoch, isr, *expected_version),
            Command::BeginTransfer { to } => self.begin_transfer(*to),
            Command::TransferLeader {
                sender,
                leader_epoch,
                to,
                leaving,
            } => self.transfer_leader(*sender, *leader_epoch, *to, *leaving),
            Command::CancelTransfer { leader_epoch } => self.cancel_transfer(*leader_epoch),
            Command::SetWriteQuorum { write_quorum } => self.set_write_quorum(*write_quorum),
        }
    }

    fn add_member(
        &mut self,
        id: NodeId,
        url: &str,
        voters: &BTreeSet<NodeId>,
    ) -> Result<(), Rejection> {
        check_url(url)?;
        self.check_url_free(id, url)?;
        match self.members.get(&id) {
            Some(member) if member.url == url => Ok(()),
            Some(member) => Err(Rejection::MemberExists {
                id,
                url: member.url.clone(),
            }),
            None => {
                self.members.insert(
                    id,
                    Member {
                        id,
                        url: url.to_owned(),
                        voter: voters.contains(&id),
                    },
                );
                Ok(())
            }
        }
    }

    fn update_url(&mut self, id: NodeId, url: &str) -> Result<(), Rejection> {
        check_url(url)?;
        self.check_url_free(id, url)?;
        let member = self
            .members
            .get_mut(&id)
            .ok_or(Rejection::UnknownMember { id })?;
        member.url = url.to_owned();
        Ok(())
    }

    /// The leader of `leader_epoch` sets its ISR (KIP-841: only the current epoch's leader,
    /// against the metadata version it decided on).
    fn change_isr(
        &mut self,
        sender: NodeId,
        leader_epoch: u64,
        isr: &BTreeSet<NodeId>,
        expected_version: Option<u64>,
    ) -> Result<(), Rejection> {
        self.check_leader_request(sender, leader_epoch)?;
        if let Some(expected) = expected_version.filter(|&expected| expected != self.version) {
            return Err(Rejection::StaleVersion {
                expected,
                current: self.version,
            });
        }
        if !isr.contains(&sender) {
            return Err(Rejection::Invalid {
                detail: format!("the ISR must keep its leader {sender}"),
            });
        }
        self.check_members(isr)?;
        self.isr = isr.clone();
        Ok(())
    }

    fn begin_transfer(&mut self, to: NodeId) -> Result<(), Rejection> {
        let leader = self.data_leader.ok_or(Rejection::NotDataLeader {
            sender: to,
            leader: None,
        })?;
        if let Some(transfer) = self.transfer {
            return Err(Rejection::TransferInProgress { to: transfer.to });
        }
        if to == leader {
            return Err(Rejection::Invalid {
                detail: format!("node {to} already leads"),
            });
        }
        if !self.isr.contains(&to) {
            return Err(Rejection::NotInIsr { id: to });
        }
        self.transfer = Some(PendingTransfer {
            to,
            leader_epoch: self.leader_epoch,
        });
        Ok(())
    }

    fn transfer_leader(
        &mut self,
        sender: NodeId,
        leader_epoch: u64,
        to: NodeId,
        leaving: bool,
    ) -> Result<(), Rejection> {
        self.check_leader_request(sender, leader_epoch)?;
        match self.transfer {
            Some(transfer) if transfer.to == to => {}
            _ => return Err(Rejection::NoTransfer),
        }
        if !self.isr.contains(&to) {
            return Err(Rejection::NotInIsr { id: to });
        }
        self.data_leader = Some(to);
        self.leader_epoch += 1;
        self.transfer = None;
        let floor = (self.write_quorum as usize).max(2);
        if leaving && self.isr.len() > floor {
            self.isr.remove(&sender);
        }
        Ok(())
    }

    fn cancel_transfer(&mut self, leader_epoch: u64) -> Result<(), Rejection> {
        if leader_epoch != self.leader_epoch {
            return Err(Rejection::StaleEpoch {
                expected: leader_epoch,
                current: self.leader_epoch,
            });
        }
        self.transfer
            .take()
            .map(|_| ())
            .ok_or(Rejection::NoTransfer)
    }

    fn set_write_quorum(&mut self, write_quorum: u32) -> Result<(), Rejection> {
        if write_quorum == 0 || write_quorum as usize > self.members.len() {
            return Err(Rejection::Invalid {
                detail: format!(
                    "write quorum {write_quorum} is outside 1..={} (the members)",
                    self.members.len()
                ),
            });
        }
        self.write_quorum = write_quorum;
        Ok(())
    }

    fn bootstrap(
        &mut self,
        cluster_id: u64,
        leader: NodeId,
        leader_url: &str,
        epoch_floor: u64,
        write_quorum: u32,
        voters: &BTreeSet<NodeId>,
    ) -> Result<(), Rejection> {
        if self.is_bootstrapped() {
            return Err(Rejection::AlreadyBootstrapped {
                cluster_id: self.cluster_id,
            });
        }
        if cluster_id == 0 || write_quorum == 0 {
            return Err(Rejection::Invalid {
                detail: "a cluster id and a write quorum must not be 0".to_owned(),
            });
        }
        check_url(leader_url)?;
        let leader_epoch = epoch_floor.checked_add(1).ok_or(Rejection::Invalid {
            detail: "epoch floor overflows".to_owned(),
        })?;
        *self = ClusterMeta {
            cluster_id,
            members: BTreeMap::from([(
                leader,
                Member {
                    id: leader,
                    url: leader_url.to_owned(),
                    voter: voters.contains(&leader),
                },
            )]),
            data_leader: Some(leader),
            leader_epoch,
            isr: BTreeSet::from([leader]),
            write_quorum,
            transfer: None,
            version: self.version,
        };
        Ok(())
    }

    fn remove_member(&mut self, id: NodeId) -> Result<(), Rejection> {
        let member = self
            .members
            .get(&id)
            .ok_or(Rejection::UnknownMember { id })?;
        if self.data_leader == Some(id) {
            return Err(Rejection::IsDataLeader { id });
        }
        if member.voter {
            return Err(Rejection::IsVoter { id });
        }
        if self.members.len() - 1 < self.write_quorum as usize {
            return Err(Rejection::Invalid {
                detail: format!(
                    "removing node {id} would leave fewer members than the write quorum {}: lower it first",
                    self.write_quorum
                ),
            });
        }
        let shrunk: BTreeSet<NodeId> = self.isr.iter().copied().filter(|&n| n != id).collect();
        if shrunk.is_empty() {
            return Err(Rejection::Invalid {
                detail: format!("node {id} is the last ISR member"),
            });
        }
        self.members.remove(&id);
        self.isr = shrunk;
        if self.transfer.is_some_and(|transfer| transfer.to == id) {
            self.transfer = None;
        }
        Ok(())
    }

    fn elect(
        &mut self,
        expected_epoch: u64,
        new_leader: Option<NodeId>,
        new_isr: &BTreeSet<NodeId>,
        unclean: bool,
    ) -> Result<(), Rejection> {
        if expected_epoch != self.leader_epoch {
            return Err(Rejection::StaleEpoch {
                expected: expected_epoch,
                current: self.leader_epoch,
            });
        }
        if new_isr.is_empty() {
            return Err(Rejection::Invalid {
                detail: "the new ISR is empty".to_owned(),
            });
        }
        self.check_members(new_isr)?;
        if let Some(leader) = new_leader {
            if !new_isr.contains(&leader) {
                return Err(Rejection::Invalid {
                    detail: format!("the new ISR must contain the new leader {leader}"),
                });
            }
        }
        if unclean {
            let Some(leader) = new_leader else {
                return Err(Rejection::Invalid {
                    detail: "an unclean election names a leader".to_owned(),
                });
            };
            if new_isr.len() != 1 {
                return Err(Rejection::Invalid {
                    detail: "an unclean election's ISR is its leader alone".to_owned(),
                });
            }
            tracing::warn!(
                leader,
                epoch = self.leader_epoch + 1,
                "UNCLEAN ELECTION: a node outside the ISR leads; acknowledged writes may be lost"
            );
        } else {
            if let Some(outside) = new_isr.iter().find(|id| !self.isr.contains(id)) {
                return Err(Rejection::NotInIsr { id: *outside });
            }
        }
        self.data_leader = new_leader;
        self.isr = new_isr.clone();
        self.leader_epoch += 1;
        self.transfer = None;
        Ok(())
    }

    fn check_leader_request(&self, sender: NodeId, leader_epoch: u64) -> Result<(), Rejection> {
        if leader_epoch != self.leader_epoch {
            return Err(Rejection::StaleEpoch {
                expected: leader_epoch,
                current: self.leader_epoch,
            });
        }
        if self.data_leader != Some(sender) {
            return Err(Rejection::NotDataLeader {
                sender,
                leader: self.data_leader,
            });
        }
        Ok(())
    }

    /// `url` is no member's but `id`'s.
    fn check_url_free(&self, id: NodeId, url: &str) -> Result<(), Rejection> {
        match self
            .members
            .values()
            .find(|member| member.id != id && member.url == url)
        {
            Some(holder) => Err(Rejection::UrlTaken {
                url: url.to_owned(),
                id: holder.id,
            }),
            None => Ok(()),
        }
    }

    fn check_members(&self, ids: &BTreeSet<NodeId>) -> Result<(), Rejection> {
        match ids.iter().find(|id| !self.members.contains_key(id)) {
            Some(id) => Err(Rejection::UnknownMember { id: *id }),
            None => Ok(()),
        }
    }
}

fn check_url(url: &str) -> Result<(), Rejection> {
    if url.is_empty() || url.len() > MEMBER_URL_BYTES_MAX {
        return Err(Rejection::Invalid {
            detail: format!("a member URL has 1..={MEMBER_URL_BYTES_MAX} bytes"),
        });
    }
    Ok(())
}
