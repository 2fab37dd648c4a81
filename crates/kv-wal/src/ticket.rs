//! The handle an append returns: its ids, and a wait for durability that works with or
//! without an async runtime.

use std::future::Future;
use std::ops::RangeInclusive;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::error::{Error, Result};
use crate::watermark::{WaitError, Watermark, WatermarkWait};

/// The log a leading ticket commits for (`append.rs` implements it), so a ticket needs no
/// more of the log than this.
pub(crate) trait WriteGroup: Send + Sync + std::fmt::Debug {
    /// The durable-id watermark the ticket waits on.
    fn durable(&self) -> Arc<Watermark>;
    /// Runs the commit of the leader holding `token`, unless the committer took it over.
    fn lead_commit(&self, token: u64);
    /// Writes the frames of the leader holding `token` (no fsync), unless its commit began.
    fn lead_write(&self, token: u64);
    /// The leader holding `token` goes away unwaited: its commit goes to the committer.
    fn abdicate(&self, token: u64);
}

/// Ids assigned to an append, resolving when the append's sync policy is met.
///
/// `.wait()` blocks the calling thread; `.await` suspends an async task. Dropping the ticket
/// does not cancel the append: the records are in the log either way.
///
/// The ticket of an append that found the log idle (`Batch` or `Always`) leads its write
/// group: its records were written in `submit`, and the first `.wait()` or poll
/// `fdatasync`s them (with what queued behind them) on the calling thread — one fsync, blocking for its duration — instead of waiting to be woken by
/// the committer thread. Appends queued before that first wait make the committer take the
/// commit over (the ticket then only waits); dropped unwaited, it hands the commit to the
/// committer. On an async runtime the fsync runs inside `poll`, on the worker thread.
#[derive(Debug)]
#[must_use = "the append is only durable once the ticket resolves"]
pub struct AppendTicket {
    ids: RangeInclusive<u64>,
    wait: Option<WatermarkWait>,
    /// The log whose commit this ticket leads, until it has run it.
    lead: Option<(Arc<dyn WriteGroup>, u64)>,
}

impl AppendTicket {
    pub(crate) fn done(ids: RangeInclusive<u64>) -> AppendTicket {
        AppendTicket {
            ids,
            wait: None,
            lead: None,
        }
    }

    /// The ticket of a write group's leader: it commits on the waiting thread, then waits for
    /// `durable` as [`AppendTicket::pending`] does.
    pub(crate) fn leading(
        ids: RangeInclusive<u64>,
        group: Arc<dyn WriteGroup>,
        token: u64,
        generation: u64,
    ) -> AppendTicket {
        let durable = group.durable();
        let mut ticket = AppendTicket::pending(ids, durable, generation);
        ticket.lead = Some((group, token));
        ticket
    }

    /// Writes the leader's frames now (no fsync), once, unless its commit began.
    fn lead_write(&mut self) {
        if let Some((group, token)) = &self.lead {
            group.lead_write(*token);
        }
    }

    /// Runs the leader's commit, once.
    fn lead(&mut self) {
        if let Some((group, token)) = self.lead.take() {
            group.lead_commit(token);
        }
    }

    /// Waits for `durable` to reach the last id, unless a truncation (a reset after
    /// `generation`) drops the records first.
    pub(crate) fn pending(
        ids: RangeInclusive<u64>,
        durable: Arc<Watermark>,
        generation: u64,
    ) -> AppendTicket {
        let wait = Some(durable.wait_in_generation(*ids.end(), generation));
        AppendTicket {
            ids,
            wait,
            lead: None,
        }
    }

    /// Whether waiting on this ticket runs its write group's `fdatasync` on the waiting thread
    /// (the append found the log idle), blocking it for the fsync's duration — on an async
    /// runtime, the worker thread that polls it. Other tasks of that worker cannot append
    /// meanwhile: on a runtime with one worker, yield once before polling a leading ticket, so
    /// that the appends ready there queue behind it and share the committer's next fsync
    /// instead of each leading a group of its own after it (kvd's leader does).
    pub fn leads_its_group(&self) -> bool {
        self.lead.is_some()
    }

    /// Runs the write group's `fdatasync` now, on this thread, if this ticket leads its group
    /// (see [`AppendTicket::leads_its_group`]); otherwise does nothing (the committer thread
    /// syncs). Either way the ticket still resolves only once the records are durable: a
    /// caller on an async runtime can run the blocking part where it chooses (a thread of the
    /// blocking pool, `block_in_place`) and then await the rest without blocking a worker.
    pub fn commit_now(&mut self) {
        self.lead();
    }

    /// Writes this ticket's records to the log file now, on this thread — readable, and sent
    /// on by kvd's replication streams — if it leads its write group and its commit has not
    /// begun; its `fdatasync` still runs when it is waited on ([`AppendTicket::commit_now`]).
    /// Otherwise does nothing: the records are written by the commit that takes them. A
    /// leader's records are written by its commit anyway; this lets a caller have them
    /// written sooner, where it chooses (kvd's leader: before it yields to its streams, so
    /// the followers' writes overlap its fsync).
    pub fn write_now(&mut self) {
        self.lead_write();
    }

    /// The ids the records got.
    pub fn ids(&self) -> RangeInclusive<u64> {
        self.ids.clone()
    }

    /// Blocks until the sync policy is met; returns the ids.
    pub fn wait(mut self) -> Result<RangeInclusive<u64>> {
        self.lead();
        match &self.wait {
            None => Ok(self.ids.clone()),
            Some(wait) => wait.block().map(|_| self.ids.clone()).map_err(wait_error),
        }
    }
}

fn wait_error(error: WaitError) -> Error {
    match error {
        WaitError::Failed(reason) if reason == crate::watermark::CLOSED => Error::Closed,
        WaitError::Failed(reason) => Error::Poisoned(reason),
        WaitError::TimedOut => Error::Poisoned("timed out waiting for durability".to_owned()),
        WaitError::Reset => Error::Truncated,
    }
}

impl Future for AppendTicket {
    type Output = Result<RangeInclusive<u64>>;

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        self.lead();
        let ids = self.ids.clone();
        match &mut self.wait {
            None => Poll::Ready(Ok(ids)),
            Some(wait) => match Pin::new(wait).poll(context) {
                Poll::Ready(Ok(_)) => Poll::Ready(Ok(ids)),
                Poll::Ready(Err(error)) => Poll::Ready(Err(wait_error(error))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl Drop for AppendTicket {
    fn drop(&mut self) {
        if let Some((group, token)) = self.lead.take() {
            group.abdicate(token);
        }
    }
}
