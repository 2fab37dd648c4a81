//! The replication stream's drivers (the protocol is in [`crate::stream`]): the leader's
//! side of one stream ([`LeaderStream`], driven by kv-http over an upgraded connection) and
//! the follower's stream session, which its fetch loop runs while the transport and the leader
//! offer streams.
//!
//! The leader pushes frames as its log has them and the commit id as it moves: per commit, a
//! stream wakes once or twice whatever the number of followers, and an acknowledgement costs
//! a lookup per ISR member (not a pass over every follower). The follower appends pushed
//! batches without waiting for each to be durable (its log group-commits them) and
//! acknowledges each time what it holds durably moves.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_wal::AppendTicket;
use tokio::sync::watch;

use super::{lock, off_the_workers, Node, RoleState};
use crate::error::{Error, Result};
use crate::follower::Step;
use crate::leader::FetchDecision;
use crate::node::leading::FETCH_WAIT_MAX;
use crate::protocol::{FetchRequest, FetchResponse};
use crate::stream::{Push, PushContext, PushCursor, SentLog, StreamOptions};
use crate::transport::{StreamLink, Transport};

/// This node's replication stream counters, both sides (`/cluster_status`' `streams`,
/// `/metrics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StreamCounts {
    /// Leader: streams served now.
    pub open: u64,
    /// Leader: pushes sent.
    pub pushes: u64,
    /// Leader: acknowledgements received on streams.
    pub acks: u64,
    /// Follower: stream sessions opened to its leaders.
    pub sessions: u64,
}

/// The counters behind [`StreamCounts`].
#[derive(Debug, Default)]
pub(super) struct StreamCounters {
    open: AtomicU64,
    pushes: AtomicU64,
    acks: AtomicU64,
    sessions: AtomicU64,
}

impl StreamCounters {
    /// Whether this leader serves a stream now.
    pub(super) fn any_open(&self) -> bool {
        self.open.load(Ordering::Relaxed) > 0
    }

    pub(super) fn counts(&self) -> StreamCounts {
        StreamCounts {
            open: self.open.load(Ordering::Relaxed),
            pushes: self.pushes.load(Ordering::Relaxed),
            acks: self.acks.load(Ordering::Relaxed),
            sessions: self.sessions.load(Ordering::Relaxed),
        }
    }
}

/// The shortest heartbeat a stream pushes at, whatever the follower asks.
const HEARTBEAT_MIN: Duration = Duration::from_millis(10);

/// How a stream begins on the leader.
#[derive(Debug)]
pub enum StreamStart {
    /// The opening was accepted: push from it on.
    Stream(Box<LeaderStream>),
    /// The stream's only message (a cut, a snapshot to install, not the leader, another
    /// cluster): send it, then close.
    Answer(FetchResponse),
}

/// The leader's side of one stream. kv-http reads the follower's acknowledgements into
/// [`LeaderStream::on_ack`] and writes what [`LeaderStream::next_push`] returns, one task per
/// stream.
#[derive(Debug)]
pub struct LeaderStream {
    node: Arc<Node>,
    cursor: PushCursor,
    /// The role generation the stream was opened under: it ends with it.
    generation: u64,
    commits: watch::Receiver<u64>,
    role_changes: watch::Receiver<u64>,
    ended: bool,
    /// The follower's node id, and the number of this stream among those it opened.
    follower: u64,
    number: u64,
}

impl Node {
    /// Opens a stream for a follower's `opening` fetch: checks it as any fetch (and records it
    /// as an acknowledgement), then pushes from its next id on.
    pub fn open_stream(self: &Arc<Self>, opening: &FetchRequest) -> StreamStart {
        let mut role_changes = self.role_changes.subscribe();
        let generation = *role_changes.borrow_and_update();
        let commits = self.commit.subscribe();
        match self.acknowledge(opening) {
            Some(answer) => StreamStart::Answer(answer),
            None => {
                let number = self
                    .with_leader(|leader| leader.stream_opened(opening.node_id))
                    .unwrap_or(0);
                let heartbeat = Duration::from_millis(u64::from(opening.wait_ms))
                    .min(FETCH_WAIT_MAX)
                    .min(self.lag_limit() / 2)
                    .max(HEARTBEAT_MIN);
                self.streams.open.fetch_add(1, Ordering::Relaxed);
                StreamStart::Stream(Box::new(LeaderStream {
                    node: self.clone(),
                    cursor: PushCursor::new(
                        opening,
                        StreamOptions::for_request(opening, heartbeat),
                    ),
                    generation,
                    commits,
                    role_changes,
                    ended: false,
                    follower: opening.node_id,
                    number,
                }))
            }
        }
    }

    /// Records a stream's opening or acknowledgement on the leader; `Some` is the answer that
    /// ends the stream (see [`crate::leader::LeaderState::check_fetch`]).
    fn acknowledge(&self, request: &FetchRequest) -> Option<FetchResponse> {
        let (decision, commit_id, marks) = match &mut *lock(&self.role) {
            RoleState::Leader(leader) => {
                let marks = leader.ack_marks();
                let decision = leader.check_fetch(Instant::now(), request, &*self.store, true);
                (decision, leader.commit_id(), (marks, leader.ack_marks()))
            }
            other => return other.not_leader_answer(),
        };
        self.after_acknowledgement(commit_id, marks);
        match decision {
            None | Some(FetchDecision::Wait) => None,
            Some(FetchDecision::Respond(answer)) => Some(answer),
            Some(FetchDecision::StepDown { epoch }) => {
                self.step_down(epoch);
                Some(FetchResponse::NotLeader {
                    leader_epoch: epoch,
                    leader_url: None,
                })
            }
        }
    }
}

impl LeaderStream {
    /// The follower's message `seq` (an acknowledgement). `Some` is the stream's last message:
    /// send it, then close.
    pub fn on_ack(&mut self, seq: u64, ack: &FetchRequest) -> Option<FetchResponse> {
        self.node.streams.acks.fetch_add(1, Ordering::Relaxed);
        self.cursor.on_ack(seq, ack);
        let answer = self.node.acknowledge(ack);
        self.ended |= answer.is_some();
        answer
    }

    /// The follower hung up: its side of the connection ended or broke. It leaves the ISR
    /// unless it opens another stream within [`crate::HUNG_UP_GRACE`]
    /// ([`crate::LeaderState::stream_hung_up`]).
    pub fn follower_hung_up(&self) {
        let _ = self.node.with_leader(|leader| {
            leader.stream_hung_up(self.follower, self.number, Instant::now());
        });
    }

    /// The next push, `(echo, answer)`, once there is one; `None` once the stream is over
    /// (after a last message, or when the log changed under it and the follower must open
    /// another). Cancel-safe: nothing is consumed until it returns.
    pub async fn next_push(&mut self) -> Option<(u64, FetchResponse)> {
        while !self.ended {
            self.commits.borrow_and_update();
            let context = match self.context() {
                Ok(context) => context,
                Err(last) => {
                    self.ended = true;
                    return Some((self.cursor.echo(), last));
                }
            };
            // Frames are read outside the role lock; a role change before the read is seen
            // below, and a follower's truncation only ever comes after one.
            let store = &*self.node.store;
            let push = if self.node.may_be_large_from(self.cursor.next_to_send()) {
                off_the_workers(|| self.cursor.next(Instant::now(), &context, store))
            } else {
                self.cursor.next(Instant::now(), &context, store)
            };
            match push {
                Push::Send(answer) => {
                    if *self.role_changes.borrow() != self.generation {
                        // Read after a role change: nothing read may be trusted now.
                        self.ended = true;
                        return None;
                    }
                    // Anything but entries (a snapshot to install) is the stream's last message.
                    self.ended = !matches!(answer, FetchResponse::Entries { .. });
                    self.node.streams.pushes.fetch_add(1, Ordering::Relaxed);
                    return Some((self.cursor.echo(), answer));
                }
                Push::Reopen => {
                    if let Some(first_id_after) = self.cursor.uncovered_gap() {
                        self.node.cover_gap(first_id_after);
                    }
                    self.ended = true;
                    return None;
                }
                Push::Wait {
                    new_entries_from,
                    heartbeat_at,
                } => {
                    let deadline = tokio::time::Instant::now()
                        + heartbeat_at.saturating_duration_since(Instant::now());
                    let store = self.node.store.clone();
                    let new_entries = async move {
                        match new_entries_from {
                            Some(id) => drop(store.wait_for_id(id).await),
                            None => std::future::pending::<()>().await,
                        }
                    };
                    tokio::select! {
                        () = new_entries => {}
                        _ = self.commits.changed() => {}
                        _ = self.role_changes.changed() => {}
                        () = tokio::time::sleep_until(deadline) => {}
                    }
                }
            }
        }
        None
    }

    /// The leader's side of a push under this stream's role generation, or the last message
    /// when the node no longer leads it.
    fn context(&mut self) -> std::result::Result<PushContext, FetchResponse> {
        let changed = *self.role_changes.borrow_and_update() != self.generation;
        match &*lock(&self.node.role) {
            RoleState::Leader(leader) if !changed && leader.deposed_by().is_none() => {
                Ok(PushContext::of(leader))
            }
            RoleState::Leader(leader) => Err(FetchResponse::NotLeader {
                leader_epoch: leader.deposed_by().unwrap_or(leader.epoch()),
                leader_url: None,
            }),
            other => Err(other.not_leader_answer().expect("not a leader")),
        }
    }

    /// Frame bytes pushed and not yet acknowledged as durable.
    pub fn in_flight_bytes(&self) -> u64 {
        self.cursor.in_flight_bytes()
    }
}

impl Drop for LeaderStream {
    fn drop(&mut self) {
        self.node.streams.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How a follower's stream session ended.
pub(super) enum SessionEnd {
    /// The transport or the leader has no streams: fetch instead.
    Unsupported,
    /// The node's role changed.
    RoleChanged,
    /// Perform this step with the fetch loop's driver (a cut, a snapshot, a retry after a
    /// failure, a stop), then go on; `sent_at` as for a fetch's answer.
    Step(Step, Instant),
    /// A local failure: replication stops.
    Failed(Error),
}

/// An append the session made and has not seen durable yet: its ticket, the commit id that
/// came with it, and the send time its push echoed.
struct Unsynced {
    ticket: AppendTicket,
    commit_id: u64,
    sent_at: Option<Instant>,
}

impl Node {
    /// One stream session of the follower: opens a stream to the leader, appends what it
    /// pushes, acknowledges what becomes durable, until the stream ends.
    pub(super) async fn stream_session<T: Transport>(
        &self,
        transport: &T,
        role_changed: &mut Pin<&mut impl Future<Output = ()>>,
    ) -> SessionEnd {
        let Some(opening) = self.with_follower(|state| state.request(&*self.store)) else {
            return SessionEnd::RoleChanged;
        };
        let opened_at = Instant::now();
        let (mut sent, _) = SentLog::opened(opened_at);
        let timeout = self.options.follower.fetch_wait + super::following::FETCH_TIMEOUT_MARGIN;
        let opened = tokio::select! {
            () = role_changed.as_mut() => return SessionEnd::RoleChanged,
            opened = transport.open_stream(&opening, timeout) => opened,
        };
        let mut link = match opened {
            Ok(Some(link)) => {
                self.streams.sessions.fetch_add(1, Ordering::Relaxed);
                link
            }
            Ok(None) => return SessionEnd::Unsupported,
            Err(error) => {
                let failure = error.to_string();
                return match self.with_follower(|state| state.on_failure(Instant::now(), failure)) {
                    Some(step) => SessionEnd::Step(step, opened_at),
                    None => SessionEnd::RoleChanged,
                };
            }
        };
        let mut session = Session {
            next_id: opening.next_id,
            unsynced: VecDeque::new(),
            last_ack_at: opened_at,
            ack_every: self.options.follower.fetch_wait / 4,
            commit_heard: 0,
        };
        let end = self
            .run_session(&mut link, &mut sent, &mut session, timeout, role_changed)
            .await;
        // What was appended becomes durable whatever ended the stream, before anything else
        // looks at the log's position.
        for unsynced in session.unsynced.drain(..) {
            if let Err(error) = unsynced.ticket.await {
                return SessionEnd::Failed(Error::FollowerLog {
                    action: "make the leader's entries durable",
                    source: error.into(),
                });
            }
            self.publish_commit(unsynced.commit_id);
        }
        end
    }

    async fn run_session(
        &self,
        link: &mut StreamLink,
        sent: &mut SentLog,
        session: &mut Session,
        timeout: Duration,
        role_changed: &mut Pin<&mut impl Future<Output = ()>>,
    ) -> SessionEnd {
        loop {
            let durable = async {
                match session.unsynced.front_mut() {
                    Some(unsynced) => (&mut unsynced.ticket).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = role_changed.as_mut() => return SessionEnd::RoleChanged,
                received = tokio::time::timeout(timeout, link.from_leader.recv()) => {
                    let failure = match received {
                        Ok(Some(Ok((echo, answer)))) => {
                            let sent_at = sent.echoed(echo);
                            // A heartbeat: nothing to append and no newer commit id.
                            let heartbeat = match &answer {
                                FetchResponse::Entries { frames, commit_id, .. } => {
                                    let newer = *commit_id > session.commit_heard;
                                    session.commit_heard = session.commit_heard.max(*commit_id);
                                    frames.is_empty() && !newer
                                }
                                _ => false,
                            };
                            match self.on_pushed(answer, sent_at, session) {
                                Ok(None) => {}
                                Ok(Some(end)) => return end,
                                Err(error) => return SessionEnd::Failed(error),
                            }
                            // Nothing to make durable: a heartbeat or a commit id. Answer
                            // heartbeats at once (the leader's view of this follower, and this
                            // follower's staleness bound, move with acknowledgements), and
                            // commit ids only now and then (not each one of a busy stream).
                            if session.unsynced.is_empty()
                                && (heartbeat || session.last_ack_at.elapsed() >= session.ack_every)
                            {
                                self.send_ack(link, sent, session);
                            }
                            continue;
                        }
                        Ok(Some(Err(error))) => error.to_string(),
                        Ok(None) => "the leader closed the replication stream".to_owned(),
                        Err(_) => format!(
                            "no message on the replication stream within {} ms",
                            timeout.as_millis()
                        ),
                    };
                    return match self.with_follower(|state| state.on_failure(Instant::now(), failure)) {
                        Some(step) => SessionEnd::Step(step, Instant::now()),
                        None => SessionEnd::RoleChanged,
                    };
                }
                synced = durable => {
                    let unsynced = session.unsynced.pop_front().expect("awaited the front");
                    if let Err(error) = synced {
                        return SessionEnd::Failed(Error::FollowerLog {
                            action: "make the leader's entries durable",
                            source: error.into(),
                        });
                    }
                    self.publish_commit(unsynced.commit_id);
                    if let Some(sent_at) = unsynced.sent_at {
                        self.applied_after(sent_at, unsynced.commit_id);
                    }
                    self.send_ack(link, sent, session);
                }
            }
        }
    }

    /// Performs what a push asks; `Some` ends the session with that.
    fn on_pushed(
        &self,
        answer: FetchResponse,
        sent_at: Option<Instant>,
        session: &mut Session,
    ) -> Result<Option<SessionEnd>> {
        let Some(mut step) = self.with_follower(|state| {
            state.on_push(Instant::now(), session.next_id, answer, &*self.store)
        }) else {
            return Ok(Some(SessionEnd::RoleChanged));
        };
        loop {
            step = match step {
                Step::PersistEpoch { epoch, then } => {
                    self.record_epoch(epoch)?;
                    *then
                }
                Step::Append {
                    frames,
                    commit_id,
                    adopt_cluster,
                } => {
                    self.adopt(adopt_cluster)?;
                    kv_wal::fail_point!(FOLLOWER_AFTER_FETCH_BEFORE_APPEND)
                        .map_err(Error::InjectedFault)?;
                    let ticket = self.append_leaders_frames(&frames)?;
                    // The append decoded the frames: its ticket has their ids.
                    session.next_id = *ticket.ids().end() + 1;
                    session.unsynced.push_back(Unsynced {
                        ticket,
                        commit_id,
                        sent_at,
                    });
                    // Entries already durable may be committed by this answer.
                    self.publish_commit(commit_id);
                    return Ok(None);
                }
                Step::Apply {
                    commit_id,
                    adopt_cluster,
                } => {
                    self.apply_answer(adopt_cluster, commit_id, sent_at)?;
                    return Ok(None);
                }
                other => {
                    return Ok(Some(SessionEnd::Step(
                        other,
                        sent_at.unwrap_or_else(Instant::now),
                    )))
                }
            };
        }
    }

    /// Sends what this follower holds durably as the stream's next message.
    fn send_ack(&self, link: &StreamLink, sent: &mut SentLog, session: &mut Session) {
        let Some(ack) = self.with_follower(|state| state.ack(&*self.store)) else {
            return;
        };
        let now = Instant::now();
        session.last_ack_at = now;
        let seq = sent.sent(now);
        // A closed link shows up as the pushes ending.
        let _ = link.to_leader.send(seq, &ack);
    }
}

/// A follower's stream session's own state.
struct Session {
    /// The first id after what the session appended: the next push must start there.
    next_id: u64,
    unsynced: VecDeque<Unsynced>,
    /// When the last message went to the leader.
    last_ack_at: Instant,
    /// How often a push carrying only a newer commit id is answered (a quarter of the fetch
    /// wait); heartbeats are answered at once.
    ack_every: Duration,
    /// The highest commit id pushed on this stream.
    commit_heard: u64,
}
