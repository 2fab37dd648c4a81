//! Waiting out a full disk instead of failing the Raft core.
//!
//! openraft takes any error from its storage as fatal: the Raft core stops, and the member
//! no longer votes or keeps the log until its process restarts. A full disk is not that kind
//! of error — nothing was written (kv-wal's `Error::OutOfSpace` appends nothing, an atomic
//! file rewrite leaves the old file), and the write succeeds once there is room. So the
//! storage calls that need room wait for it here, trying again every [`ROOM_RETRY`], while
//! the core waits on them: to its peers the member is a paused one (it answers nothing, and
//! the others elect without it), and it goes on by itself once space is freed. When the
//! member stops ([`Room::close`]) the call gives up and fails as before.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::error::Result;

/// How often a write that found no room tries again.
pub const ROOM_RETRY: Duration = Duration::from_secs(1);
/// How often the error saying a member waits for room is logged again while it waits.
const LOG_EVERY: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
struct State {
    closed: bool,
    /// What waits for room, and why.
    waiting: Option<String>,
}

/// The wait for room of one store's writes (see the module docs).
#[derive(Debug, Default)]
pub struct Room {
    state: Mutex<State>,
    wake: Condvar,
}

impl Room {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `write` until it succeeds or fails for a reason other than room; a failure for
    /// room ([`crate::Error::is_out_of_space`]) is tried again every [`ROOM_RETRY`] until the
    /// room is closed. `what` names the write in the logs and in [`Room::waiting`].
    pub(crate) fn retry<T>(&self, what: &str, mut write: impl FnMut() -> Result<T>) -> Result<T> {
        let mut since: Option<Instant> = None;
        let mut logged_at: Option<Instant> = None;
        loop {
            let error = match write() {
                Err(error) if error.is_out_of_space() => error,
                done => {
                    if let Some(since) = since {
                        self.lock().waiting = None;
                        tracing::warn!(
                            waited_ms = since.elapsed().as_millis() as u64,
                            "controller storage: there is room again; {what} is written"
                        );
                    }
                    return done;
                }
            };
            let mut state = self.lock();
            if state.closed {
                state.waiting = None;
                return Err(error);
            }
            let started = *since.get_or_insert_with(Instant::now);
            if logged_at.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
                logged_at = Some(Instant::now());
                tracing::error!(
                    %error,
                    waited_s = started.elapsed().as_secs(),
                    "controller storage: the disk is full; this controller member waits for \
                     room to write {what}, taking no part in the controller's Raft meanwhile, \
                     and goes on by itself once there is room"
                );
            }
            state.waiting = Some(format!("waiting for disk space to write {what}: {error}"));
            drop(
                self.wake
                    .wait_timeout(state, ROOM_RETRY)
                    .unwrap_or_else(PoisonError::into_inner),
            );
        }
    }

    /// What waits for room now, if anything.
    pub fn waiting(&self) -> Option<String> {
        self.lock().waiting.clone()
    }

    /// Ends every wait: a write waiting for room fails with its last error, and later ones
    /// fail at once (the member is stopping).
    pub fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_all();
    }
}
