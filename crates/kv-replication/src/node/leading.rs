//! The leader's driver: a write waits for the acknowledgements its [`Acks`] asks for, and a
//! follower's fetch is answered by [`LeaderState::on_fetch`] — at once, or held (the long
//! poll) until new entries or a new commit id, up to its wait.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_store::{Command, Op, OutcomeSlot};

use super::{
    lock, off_the_workers, progress_or_role_change, shared, Node, RoleState, LARGE_WORK_BYTES,
    ROLL_NEAR_BYTES,
};
use crate::error::{Error, Result};
use crate::leader::{Acks, FetchDecision};
use crate::log_view::LogView;
use crate::protocol::{FetchRequest, FetchResponse};

/// The longest a leader holds a fetch, whatever the follower asks.
pub const FETCH_WAIT_MAX: Duration = Duration::from_secs(10);

/// How often a write waiting for enough in-sync replicas looks again without being woken
/// (`Node::wait_for_in_sync`).
const IN_SYNC_RECHECK: Duration = Duration::from_millis(50);

/// What [`Node::admit`] made of a command.
enum Admission {
    /// Written: the entry, and the role generation it was written under.
    Submitted(kv_store::Submitted, u64),
    /// Not written: the ISR is too small for the write's `acks` to commit it.
    TooFewInSync(Command),
}

/// A submitted entry's wait for durability. Dropped before the wait ended (the caller of
/// [`Node::write_to_completion`] went away), it spawns the rest of the commit on the current
/// runtime: the entry becomes durable without it, but only a published commit applies it.
struct DurableWait<'a> {
    ticket: Option<kv_wal::AppendTicket>,
    finisher: Option<&'a Arc<Node>>,
}

impl Drop for DurableWait<'_> {
    fn drop(&mut self) {
        let (Some(ticket), Some(node)) = (self.ticket.take(), self.finisher) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let node = node.clone();
        runtime.spawn(async move {
            if ticket.await.is_ok() {
                node.publish_durable();
            }
        });
    }
}

/// A write taken by [`Node::write_command`]: its entry id and where its outcome appears.
#[derive(Debug)]
pub struct Written {
    /// The entry's id.
    pub id: u64,
    /// Filled once the entry is applied (see [`Node::write_command`]).
    pub outcome: OutcomeSlot,
}

impl Node {
    /// [`Node::write_command`], finished even if the caller goes away half-way (a client
    /// hanging up): once the entry is submitted, dropping this future hands the rest of the
    /// commit — waiting for the entry to be durable, then publishing the commit id, which
    /// applies it — to a task of its own. Otherwise the write runs on the caller's task, with
    /// no task and no wake-up of its own per write. Every sync policy takes the same path:
    /// the WAL's submit never waits for the disk, and the ticket of a write that found the log
    /// idle runs its one `fdatasync` when awaited (kv-wal's write-group leader; others are
    /// woken by its committer thread), with no hop to the blocking pool — after one yield
    /// when replication streams are open, so they push the frames before that fsync.
    pub async fn write_to_completion(
        self: &Arc<Self>,
        command: Command,
        acks: Acks,
    ) -> Result<Written> {
        self.write_finished_by(command, acks, Some(self)).await
    }

    /// Writes `op` on the leader and waits for `acks`; returns its id. Cancel-safe in the sense
    /// that a dropped future leaves the entry to be applied when it commits.
    pub async fn write(&self, op: Op, acks: Acks) -> Result<u64> {
        Ok(self.write_command(op.into(), acks).await?.id)
    }

    /// [`Node::write`] for a [`Command`] (an op with idempotency ids, if any); returns its id
    /// and the slot its outcome appears in once applied: by the time this returns, unless
    /// `acks` is `leader` under a write quorum above 1 (then once the entry commits). A
    /// repeated request fails with the store's `DuplicateRequest` or `RequestMismatch`,
    /// unwritten. Under the controller, a leader without a lease waits for one (up to the acks
    /// timeout) before writing, and acknowledges only while its lease holds.
    pub async fn write_command(&self, command: Command, acks: Acks) -> Result<Written> {
        self.write_finished_by(command, acks, None).await
    }

    /// [`Node::write_command`]; if `finisher` is given and the future is dropped after the
    /// submit, before the entry was seen durable, a task on the current runtime finishes its
    /// commit (see [`Node::write_to_completion`]).
    async fn write_finished_by(
        &self,
        command: Command,
        acks: Acks,
        finisher: Option<&Arc<Node>>,
    ) -> Result<Written> {
        let started = tokio::time::Instant::now();
        let deadline = started + self.options.acks_timeout;
        self.wait_for_lease(deadline).await?;
        let large = command.op.carried_bytes() >= LARGE_WORK_BYTES;
        let mut command = command;
        let (submitted, leadership) = loop {
            // A submit that may roll the segment waits on the disk for it, under the store's
            // and the log's locks: off the workers (the write a hung disk holds already has
            // one), and in turn.
            let may_roll = self.store.active_segment_room() < ROLL_NEAR_BYTES;
            let own_turn = large || may_roll || self.store.submit_writes();
            let turn = self.submit_turn(deadline, own_turn).await?;
            let admission = if large {
                self.admit_large(command, acks)?
            } else if may_roll {
                off_the_workers(|| self.admit(command, acks))?
            } else {
                self.admit(command, acks)?
            };
            drop(turn);
            match admission {
                Admission::Submitted(submitted, leadership) => break (submitted, leadership),
                Admission::TooFewInSync(unwritten) => {
                    self.wait_for_in_sync(acks, deadline).await?;
                    command = unwritten;
                }
            }
        };
        let id = submitted.id;
        let mut durable = DurableWait {
            ticket: Some(submitted.ticket),
            finisher,
        };
        // A ticket that leads its write group writes its frames and runs its `fdatasync`
        // inside the poll below, blocking this worker for them (no lock held: a disk that
        // hangs there holds this worker alone, and the other writes queue). It yields once
        // before that poll:
        // - with streams open its frames are written first, and the streams they wake wait in
        //   this worker's queue — the first in tokio's LIFO slot, which no other worker
        //   steals — until the poll returns: without the yield the followers would get the
        //   frames only after the leader's fsync; with it they push first, so the followers'
        //   writes and fsyncs overlap the leader's (tests/it/nodes.rs,
        //   `the_streams_push_a_write_before_the_leaders_fsync`);
        // - the other writes ready on this worker append meanwhile and queue behind this one,
        //   and the committer thread takes them in one group: without it, on a runtime with a
        //   single worker (a one-CPU machine) no other write could append until the fsync
        //   ended, each then found the log idle, and every write paid an fsync of its own
        //   (`writes_ready_together_on_a_single_worker_share_an_fsync`).
        // tokio's `yield_now` defers the wake until the worker finds its queue empty, so
        // alone (one client) it costs no wake-up of another thread.
        if let Some(ticket) = durable.ticket.as_mut() {
            if ticket.leads_its_group() {
                if self.streams.any_open() {
                    if large {
                        off_the_workers(|| ticket.write_now());
                    } else {
                        ticket.write_now();
                    }
                }
                tokio::task::yield_now().await;
            }
        }
        let waited = match durable.ticket.as_mut() {
            Some(ticket) => {
                if large {
                    off_the_workers(|| ticket.commit_now());
                }
                // A disk that hangs holds the ticket: the write ends at the acks timeout all
                // the same, its outcome unknown (dropping `durable` hands the rest of the
                // commit to a task of its own when there is a finisher).
                match tokio::time::timeout_at(deadline, ticket).await {
                    Ok(waited) => waited,
                    Err(_) => {
                        return Err(Error::NotDurable {
                            id,
                            commit_id: self.commit_id(),
                            waited_ms: u64::try_from(started.elapsed().as_millis())
                                .unwrap_or(u64::MAX),
                        })
                    }
                }
            }
            None => unreachable!("the ticket is taken only here and in drop"),
        };
        durable.ticket = None;
        waited.map_err(kv_store::Error::from)?;
        self.publish_durable();
        let id = self.wait_for(id, leadership, acks, deadline).await?;
        Ok(Written {
            id,
            outcome: submitted.outcome,
        })
    }

    /// After an entry became durable here: recomputes the commit id (a single node commits
    /// what it holds durably) and publishes it, which applies the entries up to it.
    fn publish_durable(&self) {
        if let Ok(commit_id) =
            self.with_leader(|leader| leader.recompute_commit(self.store.durable_id()))
        {
            self.publish_commit(commit_id);
        }
    }

    /// How long a write waits for its acknowledgements (`NodeOptions::acks_timeout`).
    pub fn acks_timeout(&self) -> Duration {
        self.options.acks_timeout
    }

    /// This write's turn to submit ([`Node::submit_turns`]) if it takes its `own_turn` (its
    /// submit may wait on the disk or hold the store's locks for long: a large write, a write
    /// under `interval`/`never`, a write that may roll the segment) or another write holds
    /// its turn (then on the same locks, soon), waited for until `deadline`: past it, nothing
    /// is written and the write is refused (503) — the disk has kept the writes before it
    /// waiting. Other writes take no turn.
    async fn submit_turn(
        &self,
        deadline: tokio::time::Instant,
        own_turn: bool,
    ) -> Result<Option<tokio::sync::MutexGuard<'_, ()>>> {
        if !own_turn && self.submit_turns.try_lock().is_ok() {
            return Ok(None);
        }
        let started = tokio::time::Instant::now();
        match tokio::time::timeout_at(deadline, self.submit_turns.lock()).await {
            Ok(turn) => Ok(Some(turn)),
            Err(_) => Err(Error::Unavailable(format!(
                "the disk has kept the writes before this one waiting {} ms: nothing of it \
                 was written; retry",
                started.elapsed().as_millis()
            ))),
        }
    }

    /// [`Node::admit`] for a command of [`LARGE_WORK_BYTES`] or more: off the workers, and
    /// known to readers as large from before its frames are written until its id is recorded.
    fn admit_large(&self, command: Command, acks: Acks) -> Result<Admission> {
        self.large_writes_in_flight.fetch_add(1, Ordering::AcqRel);
        let admitted = off_the_workers(|| self.admit(command, acks));
        if let Ok(Admission::Submitted(submitted, _)) = &admitted {
            self.wrote_large_entries_through(submitted.id);
        }
        self.large_writes_in_flight.fetch_sub(1, Ordering::AcqRel);
        admitted
    }

    /// Checks that this node takes writes (it leads, was not deposed, prepares no transfer)
    /// and submits `command`, with role changes held off in between; returns the submitted
    /// entry and the role generation it was written under — or the command unwritten, when
    /// the ISR is too small for `acks` ([`LeaderState::too_few_in_sync`]; the caller waits
    /// for it, `Node::wait_for_in_sync`), unless it repeats a request already in the log.
    fn admit(&self, command: Command, acks: Acks) -> Result<Admission> {
        let _admission = shared(&self.admission);
        let leadership = *self.role_changes.borrow();
        let isr_short = match &*lock(&self.role) {
            RoleState::Leader(leader) => {
                if let Some(epoch) = leader.deposed_by() {
                    return Err(Error::Unavailable(format!(
                        "this node led epoch {} but epoch {epoch} has begun: it takes no writes",
                        leader.epoch()
                    )));
                }
                if let Some(to) = leader.transfer_to() {
                    return Err(Error::Unavailable(format!(
                        "leadership is being transferred to node {to}; retry"
                    )));
                }
                leader.isr_short()
            }
            other => return Err(other.not_leader()),
        };
        if !isr_short {
            self.end_in_sync_shortage();
        } else if acks != Acks::Leader && !self.is_retry(&command) {
            return Ok(Admission::TooFewInSync(command));
        }
        Ok(Admission::Submitted(
            self.store.submit(command)?,
            leadership,
        ))
    }

    /// Waits (until `deadline`) until this leader's ISR is large enough for a write under
    /// `acks` to commit ([`LeaderState::too_few_in_sync`]), after [`Node::admit`] found it too
    /// small: the followers of a cluster just formed, or a follower catching up, join it
    /// within moments. If it is not by then, the write is refused with nothing written —
    /// rather than written, left to wait out the acks timeout and answered with its outcome
    /// unknown (it would commit whenever a follower came back). Once the ISR has been too
    /// small for longer than a write waits (the acks timeout) under this leadership, writes are
    /// refused at once until one finds it large enough again, as Kafka refuses under
    /// `min.insync.replicas`: a follower gone that long is not about to be back. (A retry of a
    /// request already in the log never gets here: `admit` lets it through to the submit,
    /// which answers it with the first one's outcome.)
    async fn wait_for_in_sync(&self, acks: Acks, deadline: tokio::time::Instant) -> Result<()> {
        let started = Instant::now();
        let short_for = self.short_of_in_sync_for(started);
        let mut progress = self.progress.subscribe();
        let mut role_changes = self.role_changes.subscribe();
        loop {
            progress.borrow_and_update();
            role_changes.borrow_and_update();
            let Some(reason) = self.with_leader(|leader| leader.too_few_in_sync(acks))? else {
                return Ok(());
            };
            if short_for >= self.options.acks_timeout {
                return Err(Error::Unavailable(format!(
                    "{reason} (it has been too small for {} ms: refused at once)",
                    short_for.as_millis()
                )));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(Error::Unavailable(format!(
                    "{reason} (waited {} ms)",
                    started.elapsed().as_millis()
                )));
            }
            // An ISR change arrives with the controller's view (progress); an addition the
            // leader asks for counts at once, and is looked for now and then.
            let recheck = (now + IN_SYNC_RECHECK).min(deadline);
            progress_or_role_change(recheck, &mut progress, &mut role_changes).await;
        }
    }

    /// How long writes have found the ISR too small under this role generation, as of `now`
    /// (zero for the first, which starts the count).
    fn short_of_in_sync_for(&self, now: Instant) -> Duration {
        let generation = *self.role_changes.borrow();
        let mut short = lock(&self.short_of_in_sync);
        let since = match *short {
            Some((since, of)) if of == generation => since,
            _ => {
                *short = Some((now, generation));
                self.short_of_in_sync_flag.store(true, Ordering::Release);
                now
            }
        };
        now.saturating_duration_since(since)
    }

    /// The ISR is large enough again: the next shortage's first write waits again.
    pub(super) fn end_in_sync_shortage(&self) {
        if self.short_of_in_sync_flag.load(Ordering::Acquire) {
            *lock(&self.short_of_in_sync) = None;
            self.short_of_in_sync_flag.store(false, Ordering::Release);
        }
    }

    /// Whether `command` repeats a request already in the log (see
    /// [`kv_store::Store::is_repeated_request`]).
    fn is_retry(&self, command: &Command) -> bool {
        command
            .request
            .as_ref()
            .is_some_and(|ids| self.store.is_repeated_request(ids))
    }

    /// Waits (until `deadline`) for this leader to hold a lease; at once for a legacy leader.
    /// A leader without one for the lag limit (cut off from the controller, which has likely
    /// elected another) waits no longer: the client may find the leader elsewhere.
    async fn wait_for_lease(&self, deadline: tokio::time::Instant) -> Result<()> {
        let mut progress = self.progress.subscribe();
        let mut role_changes = self.role_changes.subscribe();
        let lag_limit = self.options.leader.lag_limit;
        loop {
            progress.borrow_and_update();
            let (epoch, cut_off_at) = match &*lock(&self.role) {
                RoleState::Leader(leader) if leader.lease_valid(Instant::now()) => return Ok(()),
                RoleState::Leader(leader) if leader.deposed_by().is_some() => {
                    return Err(Error::Unavailable(format!(
                        "this node led epoch {} but a newer epoch has begun",
                        leader.epoch()
                    )))
                }
                RoleState::Leader(leader) => (leader.epoch(), leader.cut_off_at(lag_limit)),
                other => return Err(other.not_leader()),
            };
            let until = cut_off_at.map_or(deadline, |at| {
                deadline.min(tokio::time::Instant::from_std(at))
            });
            if until <= tokio::time::Instant::now()
                || !progress_or_role_change(until, &mut progress, &mut role_changes).await
            {
                return Err(Error::Unavailable(format!(
                    "this node leads epoch {epoch} but holds no lease from the controller \
                     (it may have been cut off from it); retry"
                )));
            }
        }
    }

    /// Waits until the write `id` has what `acks` asks for, while this node keeps the
    /// leadership it wrote `id` in (`leadership`: the role generation then); after a role
    /// change the commit id is no longer this leadership's, so nothing can be acknowledged any
    /// more. Gives up at `deadline` (the acks timeout), or sooner once this leader has been
    /// without a lease for the lag limit.
    async fn wait_for(
        &self,
        id: u64,
        leadership: u64,
        acks: Acks,
        deadline: tokio::time::Instant,
    ) -> Result<u64> {
        let started = Instant::now();
        let mut commits = self.commit.subscribe();
        let mut progress = self.progress.subscribe();
        let mut role_changes = self.role_changes.subscribe();
        let stepped_down = || Error::SteppedDown {
            id,
            commit_id: self.commit_id(),
            waited_ms: started.elapsed().as_millis() as u64,
        };
        let lag_limit = self.options.leader.lag_limit;
        loop {
            commits.borrow_and_update();
            progress.borrow_and_update();
            if *role_changes.borrow_and_update() != leadership {
                return Err(stepped_down());
            }
            let durable_id = self.store.durable_id();
            let Ok((done, commit_id, give_up_at)) = self.with_leader(|leader| {
                let done = leader.acknowledged(Instant::now(), id, acks, durable_id);
                // Cut off from the controller, a leader acknowledges nothing more: the write
                // stops waiting then, not at the acks timeout (a lease granted meanwhile wakes
                // the wait and moves this on).
                (done, leader.commit_id(), leader.cut_off_at(lag_limit))
            }) else {
                return Err(stepped_down());
            };
            if done {
                // Visible to readers once committed, before the answer: the commit id the
                // acknowledgement saw (the published one may not have caught up with it yet:
                // a fetch raises the leader's commit under the role lock and publishes it
                // after).
                self.publish_commit(commit_id);
                return Ok(id);
            }
            let cut_off = give_up_at.map(tokio::time::Instant::from_std);
            let until = cut_off.map_or(deadline, |at| deadline.min(at));
            let changed = tokio::time::timeout_at(until, async {
                tokio::select! {
                    _ = commits.changed() => {}
                    _ = progress.changed() => {}
                    _ = role_changes.changed() => {}
                }
            })
            .await;
            if changed.is_err() {
                // Given up before the acks timeout: the leader has held no lease for the lag
                // limit (perhaps from before this write, so it waited no time at all).
                let gave_up_cut_off = cut_off.is_some_and(|at| at < deadline);
                let Ok(wanted) = self.with_leader(|leader| {
                    let mut wanted = leader.describe(acks);
                    if gave_up_cut_off {
                        wanted.push_str(&format!(
                            " while holding a lease (this node has held none for the lag \
                             limit, {} ms: it may have been cut off from the controller, \
                             which may have elected another leader)",
                            lag_limit.as_millis()
                        ));
                    } else if !leader.lease_valid(Instant::now()) {
                        wanted.push_str(" while holding a lease (this node holds none now)");
                    }
                    wanted
                }) else {
                    return Err(stepped_down());
                };
                return Err(Error::AcksTimeout {
                    id,
                    commit_id: self.commit_id(),
                    wanted,
                    waited_ms: started.elapsed().as_millis() as u64,
                });
            }
        }
    }

    /// Answers a follower's fetch, holding it up to its wait (capped at [`FETCH_WAIT_MAX`]
    /// and at half the lag limit, so an idle follower is heard often enough to stay in the
    /// ISR) when there is nothing new. `record` is false for debugging views: they are
    /// answered but not counted as a follower's acknowledgement. A fetch from a follower that
    /// knows a newer epoch deposes this leader: it steps down at once.
    pub async fn handle_fetch(&self, request: &FetchRequest, record: bool) -> FetchResponse {
        let wait = Duration::from_millis(u64::from(request.wait_ms))
            .min(FETCH_WAIT_MAX)
            .min(self.lag_limit() / 2);
        let deadline = tokio::time::Instant::now() + wait;
        let mut commits = self.commit.subscribe();
        let mut role_changes = self.role_changes.subscribe();
        loop {
            let may_wait = tokio::time::Instant::now() < deadline;
            let (decision, commit_id, marks, gap) = match &mut *lock(&self.role) {
                RoleState::Leader(leader) => {
                    let marks = leader.ack_marks();
                    let decision =
                        leader.on_fetch(Instant::now(), request, &*self.store, may_wait, record);
                    let marks = (marks, leader.ack_marks());
                    (
                        decision,
                        leader.commit_id(),
                        marks,
                        leader.take_uncovered_gap(),
                    )
                }
                other => return other.not_leader_answer().expect("not a leader"),
            };
            if let Some(first_id_after) = gap {
                self.cover_gap(first_id_after);
            }
            if record {
                self.after_acknowledgement(commit_id, marks);
            }
            match decision {
                FetchDecision::Respond(response) => return response,
                FetchDecision::StepDown { epoch } => {
                    self.step_down(epoch);
                    return FetchResponse::NotLeader {
                        leader_epoch: epoch,
                        leader_url: None,
                    };
                }
                FetchDecision::Wait => {
                    commits.mark_unchanged();
                    let new_entries = self.store.wait_for_id(request.next_id);
                    let _ = tokio::time::timeout_at(deadline, async {
                        tokio::select! {
                            _ = new_entries => {}
                            _ = commits.changed() => {}
                            _ = role_changes.changed() => {}
                        }
                    })
                    .await;
                    // Once per round, whatever woke it: while the runtime shuts down, timers
                    // and wake-ups may all be ready at once, and a loop that never yields is
                    // never dropped (a test's runtime once waited for it for ever).
                    tokio::task::yield_now().await;
                }
            }
        }
    }
}
