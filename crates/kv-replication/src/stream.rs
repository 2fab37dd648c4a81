//! The replication stream (issue 15), without I/O: one long-lived connection per follower on
//! which the leader pushes frames as they are written and the follower acknowledges what it
//! holds durably — the pull protocol's messages, pipelined.
//!
//! The follower still starts it and its position is still the acknowledgement: it opens the
//! stream with a [`FetchRequest`] (checked like any fetch: cluster, epoch, divergence,
//! compaction point), then sends a `FetchRequest` as an acknowledgement whenever what it holds
//! durably moves (and after each heartbeat). The leader answers the opening with a
//! [`FetchResponse`] and then keeps pushing `Entries`: new frames as soon as its own log has
//! them (before its fsync completes: the fsyncs of leader and followers overlap), the commit
//! id when it moves, an empty `Entries` as a heartbeat when nothing else was sent for a while.
//! Anything else (a cut, a snapshot to install, "not the leader") is the stream's last
//! message. [`PushCursor`] decides what to push next; it bounds the frame bytes sent and not
//! yet acknowledged as durable ([`StreamOptions::window_bytes`]), so a slow follower holds the
//! leader back to a window, not to whatever its socket buffers take.
//!
//! On the wire every message is an envelope — `body_len:u32 seq:u64` (little-endian) — and a
//! body in the fetch protocol's encoding (`KVRQ` from the follower, `KVRS` from the leader).
//! The follower numbers its messages from 1 (the opening); each of the leader's pushes carries
//! the number of the last message it had received when it made the push, so the follower knows
//! a lower bound of when the push was made (its staleness bound) without trusting clocks.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::frames::last_frame_id;
use crate::leader::LeaderState;
use crate::log_view::LogView;
use crate::protocol::{
    DecodeError, FetchRequest, FetchResponse, FRAMES_BYTES_MAX, RESPONSE_FRAMES_BYTES_MAX,
};

/// Bytes of a message's envelope.
pub const ENVELOPE_BYTES: usize = 12;
/// Largest body a stream message may have: the most frame bytes a response may carry (a
/// batch, or one frame larger than a batch) plus the answer's fields.
pub const STREAM_BODY_BYTES_MAX: usize = RESPONSE_FRAMES_BYTES_MAX as usize + 4096;
const _: () = assert!(STREAM_BODY_BYTES_MAX < u32::MAX as usize);
/// The protocol name a follower asks for in its `Upgrade` header (kv-http's
/// `GET /replication/stream`).
pub const STREAM_PROTOCOL: &str = "kvd-replication/2";

/// A message's envelope: its sequence number and how many body bytes follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope {
    /// The follower's message number (from 1), or, on a push, the last one the leader had.
    pub seq: u64,
    /// Bytes of the body after the envelope.
    pub body_len: usize,
}

impl Envelope {
    /// Encodes the envelope.
    pub fn encode(&self) -> [u8; ENVELOPE_BYTES] {
        let mut out = [0u8; ENVELOPE_BYTES];
        out[..4].copy_from_slice(&(self.body_len as u32).to_le_bytes());
        out[4..].copy_from_slice(&self.seq.to_le_bytes());
        out
    }

    /// Decodes an envelope; refuses a body longer than [`STREAM_BODY_BYTES_MAX`] (so a bad
    /// length never makes the reader allocate it) or an empty one.
    pub fn decode(bytes: &[u8; ENVELOPE_BYTES]) -> Result<Envelope, DecodeError> {
        let body_len = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes")) as usize;
        if body_len == 0 || body_len > STREAM_BODY_BYTES_MAX {
            return Err(DecodeError(format!(
                "stream message of {body_len} bytes (1 to {STREAM_BODY_BYTES_MAX} allowed)"
            )));
        }
        Ok(Envelope {
            seq: u64::from_le_bytes(bytes[4..].try_into().expect("8 bytes")),
            body_len,
        })
    }
}

/// Settings of the leader's side of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamOptions {
    /// Push an empty answer after this long without any other (the follower's liveness and
    /// staleness, the leader's view of it: every push is acknowledged).
    pub heartbeat: Duration,
    /// Most frame bytes in one push (the follower's `bytes_max`).
    pub batch_bytes_max: usize,
    /// Most frame bytes pushed and not yet acknowledged as durable.
    pub window_bytes: u64,
}

impl StreamOptions {
    /// The options for a stream opened by `request`: batches of its `bytes_max`, a window of
    /// four of them (at least 1 MiB), and a heartbeat of `heartbeat`.
    pub fn for_request(request: &FetchRequest, heartbeat: Duration) -> StreamOptions {
        let batch_bytes_max = request.bytes_max.clamp(1, FRAMES_BYTES_MAX) as usize;
        StreamOptions {
            heartbeat,
            batch_bytes_max,
            window_bytes: (4 * batch_bytes_max as u64).max(1 << 20),
        }
    }
}

/// What the leader does next on a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Push {
    /// Send this answer now.
    Send(FetchResponse),
    /// Nothing to send: wait until the log holds `new_entries_from` (`None`: the window is
    /// full, wait for an acknowledgement), the commit id moves, an acknowledgement arrives, or
    /// `heartbeat_at`.
    Wait {
        /// The id whose arrival in the log is worth a push.
        new_entries_from: Option<u64>,
        /// When a heartbeat is due.
        heartbeat_at: Instant,
    },
    /// The log changed under the stream (purged past what it must send next, or cut): end it;
    /// the follower opens a new one, whose opening is checked afresh (a snapshot to install,
    /// a cut).
    Reopen,
}

/// What a push needs of the leader, taken under the role lock so that frames are read outside
/// it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushContext {
    /// The leader's cluster id.
    pub cluster_id: u64,
    /// The leader's epoch.
    pub leader_epoch: u64,
    /// The leader's commit id.
    pub commit_id: u64,
}

impl PushContext {
    /// `leader`'s, now.
    pub fn of(leader: &LeaderState) -> PushContext {
        PushContext {
            cluster_id: leader.cluster_id(),
            leader_epoch: leader.epoch(),
            commit_id: leader.commit_id(),
        }
    }

    fn snapshot_needed(&self, first_id: u64) -> FetchResponse {
        FetchResponse::SnapshotNeeded {
            cluster_id: self.cluster_id,
            leader_epoch: self.leader_epoch,
            first_id,
        }
    }

    fn entries(&self, log: &impl LogView, frames: Vec<u8>) -> FetchResponse {
        FetchResponse::Entries {
            cluster_id: self.cluster_id,
            leader_epoch: self.leader_epoch,
            commit_id: self.commit_id,
            first_id: log.first_id(),
            last_id: log.last_id(),
            frames,
        }
    }
}

/// The leader's side of one stream: what was pushed and what the follower acknowledged.
#[derive(Debug)]
pub struct PushCursor {
    options: StreamOptions,
    /// The first id not pushed yet.
    next_to_send: u64,
    /// The commit id of the last push.
    sent_commit: u64,
    last_push_at: Option<Instant>,
    /// `(last id, bytes)` of each batch pushed and not acknowledged as durable, oldest first.
    in_flight: VecDeque<(u64, u64)>,
    in_flight_bytes: u64,
    /// The number of the follower's last message.
    echo: u64,
    pushes: u64,
    /// The first id after a gap of the log that the follower reached and no snapshot covers.
    uncovered_gap: Option<u64>,
}

impl PushCursor {
    /// The cursor of a stream whose opening `request` the leader accepted
    /// ([`LeaderState::check_fetch`] found the logs matching): it pushes from
    /// `request.next_id` on. The opening is message 1.
    pub fn new(request: &FetchRequest, options: StreamOptions) -> PushCursor {
        PushCursor {
            options,
            next_to_send: request.next_id,
            sent_commit: 0,
            last_push_at: None,
            in_flight: VecDeque::new(),
            in_flight_bytes: 0,
            echo: 1,
            pushes: 0,
            uncovered_gap: None,
        }
    }

    /// The first id after a gap of the log that [`PushCursor::next`] reached and no snapshot
    /// covered (it answered [`Push::Reopen`]): a snapshot through the id before it lets the
    /// follower past.
    pub fn uncovered_gap(&self) -> Option<u64> {
        self.uncovered_gap
    }

    /// An acknowledgement (message `seq`): the batches it holds durably leave the window.
    pub fn on_ack(&mut self, seq: u64, request: &FetchRequest) {
        self.echo = self.echo.max(seq);
        while let Some(&(last_id, bytes)) = self.in_flight.front() {
            if last_id > request.durable_id {
                break;
            }
            self.in_flight.pop_front();
            self.in_flight_bytes -= bytes;
        }
    }

    /// What to push next at `now`, for the leader of `leader` over `log`: frames from the first id not sent
    /// (while the window has room), else the commit id if it moved since the last push, else a
    /// heartbeat when one is due; the first call always pushes (it answers the opening).
    pub fn next(&mut self, now: Instant, leader: &PushContext, log: &impl LogView) -> Push {
        let last_id = log.last_id();
        if self.next_to_send < log.first_id() || self.next_to_send > last_id + 1 {
            return Push::Reopen;
        }
        let window_open = self.in_flight_bytes < self.options.window_bytes;
        if self.next_to_send <= last_id && window_open {
            let frames =
                match log.read_frames(self.next_to_send, self.options.batch_bytes_max, last_id) {
                    Ok(frames) => frames,
                    // Only the snapshot holds the ids skipped (see `LeaderState::on_fetch`):
                    // the stream's last message. A reopened stream met the same gap forever.
                    Err(Error::LogGap { found_id, .. })
                        if log.newest_snapshot_id() + 1 >= found_id =>
                    {
                        return self.sent(now, leader.snapshot_needed(found_id))
                    }
                    // No snapshot covers the gap yet (a repair of the log dropped those
                    // ids): the caller has one taken ([`PushCursor::uncovered_gap`]) and the
                    // follower's next stream is sent to it.
                    Err(Error::LogGap { found_id, .. }) => {
                        self.uncovered_gap = Some(found_id);
                        return Push::Reopen;
                    }
                    // Damage where the follower reads: as `LeaderState::on_fetch` answers it.
                    Err(Error::Store(error)) if error.is_damage() => {
                        let newest = log.newest_snapshot_id();
                        if newest >= self.next_to_send {
                            return self.sent(now, leader.snapshot_needed(newest + 1));
                        }
                        self.uncovered_gap = Some(self.next_to_send + 1);
                        return Push::Reopen;
                    }
                    Err(_) => return Push::Reopen,
                };
            let Some(batch_last) = last_frame_id(&frames).filter(|&id| id >= self.next_to_send)
            else {
                return Push::Reopen;
            };
            let bytes = frames.len() as u64;
            self.in_flight.push_back((batch_last, bytes));
            self.in_flight_bytes += bytes;
            self.next_to_send = batch_last + 1;
            return self.sent(now, leader.entries(log, frames));
        }
        let heartbeat_at = self
            .last_push_at
            .map_or(now, |at| at + self.options.heartbeat);
        if self.last_push_at.is_none() || leader.commit_id > self.sent_commit || now >= heartbeat_at
        {
            return self.sent(now, leader.entries(log, Vec::new()));
        }
        Push::Wait {
            new_entries_from: window_open.then_some(self.next_to_send),
            heartbeat_at,
        }
    }

    fn sent(&mut self, now: Instant, response: FetchResponse) -> Push {
        if let FetchResponse::Entries { commit_id, .. } = &response {
            self.sent_commit = self.sent_commit.max(*commit_id);
        }
        self.last_push_at = Some(now);
        self.pushes += 1;
        Push::Send(response)
    }

    /// The number of the follower's last message, which every push carries.
    pub fn echo(&self) -> u64 {
        self.echo
    }

    /// The first id not pushed yet.
    pub fn next_to_send(&self) -> u64 {
        self.next_to_send
    }

    /// Frame bytes pushed and not yet acknowledged as durable.
    pub fn in_flight_bytes(&self) -> u64 {
        self.in_flight_bytes
    }

    /// Pushes made.
    pub fn pushes(&self) -> u64 {
        self.pushes
    }
}

/// The follower's record of the messages it sent on a stream, to learn from a push's echo
/// when the push was made at the earliest (see the module).
#[derive(Debug, Default)]
pub struct SentLog {
    next_seq: u64,
    /// `(seq, sent at)` of messages whose echo has not come back yet, oldest first.
    sent: VecDeque<(u64, Instant)>,
}

/// Most sent messages remembered: acknowledgements are few per push, so this is never reached
/// by a leader that echoes; it bounds the memory a leader that never echoes could take.
const SENT_REMEMBERED_MAX: usize = 1024;

impl SentLog {
    /// A log whose first message (the opening) is sent at `now`; returns it with that
    /// message's number (1).
    pub fn opened(now: Instant) -> (SentLog, u64) {
        let mut log = SentLog::default();
        let seq = log.sent(now);
        (log, seq)
    }

    /// Records a message sent at `now`; returns its number.
    pub fn sent(&mut self, now: Instant) -> u64 {
        self.next_seq += 1;
        if self.sent.len() == SENT_REMEMBERED_MAX {
            self.sent.pop_front();
        }
        self.sent.push_back((self.next_seq, now));
        self.next_seq
    }

    /// A push echoing message `echo` arrived: it was made after that message reached the
    /// leader, so after it was sent. Returns that send time (`None` for an echo of nothing
    /// this log remembers, e.g. one from the future), forgetting older messages.
    pub fn echoed(&mut self, echo: u64) -> Option<Instant> {
        while let Some(&(seq, _)) = self.sent.front() {
            if seq >= echo {
                break;
            }
            self.sent.pop_front();
        }
        match self.sent.front() {
            Some(&(seq, at)) if seq == echo => Some(at),
            _ => None,
        }
    }
}
