//! The handle an append returns: its ids, and a wait for durability that works with or
//! without an async runtime.

use std::future::Future;
use std::ops::RangeInclusive;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::error::{Error, Result};
use crate::watermark::{WaitError, Watermark, WatermarkWait};

/// Ids assigned to an append, resolving when the append's sync policy is met.
///
/// `.wait()` blocks the calling thread; `.await` suspends an async task. Dropping the ticket
/// does not cancel the append: the records are in the log either way.
#[derive(Debug)]
#[must_use = "the append is only durable once the ticket resolves"]
pub struct AppendTicket {
    ids: RangeInclusive<u64>,
    wait: Option<WatermarkWait>,
}

impl AppendTicket {
    pub(crate) fn done(ids: RangeInclusive<u64>) -> AppendTicket {
        AppendTicket { ids, wait: None }
    }

    /// Waits for `durable` to reach the last id, unless a truncation (a reset after
    /// `generation`) drops the records first.
    pub(crate) fn pending(
        ids: RangeInclusive<u64>,
        durable: Arc<Watermark>,
        generation: u64,
    ) -> AppendTicket {
        let wait = Some(durable.wait_in_generation(*ids.end(), generation));
        AppendTicket { ids, wait }
    }

    /// The ids the records got.
    pub fn ids(&self) -> RangeInclusive<u64> {
        self.ids.clone()
    }

    /// Blocks until the sync policy is met; returns the ids.
    pub fn wait(self) -> Result<RangeInclusive<u64>> {
        match &self.wait {
            None => Ok(self.ids),
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
