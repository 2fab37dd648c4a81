//! An id that only moves forward (mostly) and can be waited on, from threads or async tasks.
//!
//! The log keeps two: the last written id (what readers can see; replication's tail-follow
//! waits on it) and the durable id (what has been fsynced; group-commit waiters wait on it).
//! Waiting needs no async runtime: futures register their [`Waker`], and a blocked thread
//! registers one that unparks it. Advancing wakes only the waiters whose target it reaches, so
//! a group commit releases its own appenders and leaves those queued for the next fsync asleep.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

/// The failure reason a closed log gives its waiters.
pub(crate) const CLOSED: &str = "the log is closed";

/// Why a wait ended without reaching its target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitError {
    /// The deadline passed first.
    TimedOut,
    /// The watermark was reset (the log truncated) while waiting in a generation.
    Reset,
    /// The log failed (poisoned) or closed; the message says why.
    Failed(String),
}

#[derive(Debug, Default)]
struct Waiters {
    wakers: HashMap<u64, (u64, Waker)>,
    next_key: u64,
    failure: Option<String>,
}

/// How many past resets a watermark remembers ([`Generations`]): a wait bound to an older
/// generation than these ends with [`WaitError::Reset`], as every one did before.
const RESETS_REMEMBERED: usize = 64;

/// The current generation and the values the last resets set, oldest first: `values[i]` is
/// what the reset that began generation `current - values.len() + 1 + i` set.
#[derive(Debug, Default)]
struct Generations {
    current: u64,
    values: std::collections::VecDeque<u64>,
}

impl Generations {
    /// The lowest value any reset since `generation` set (`None`: not remembered).
    fn floor_since(&self, generation: u64) -> Option<u64> {
        let since = self.current.checked_sub(generation)?;
        if since as usize > self.values.len() {
            return None;
        }
        self.values.iter().rev().take(since as usize).copied().min()
    }
}

/// A monotonic id with waiters.
#[derive(Debug, Default)]
pub struct Watermark {
    value: AtomicU64,
    /// Bumped by every reset; guards advances that race with one.
    generation: Mutex<Generations>,
    waiters: Mutex<Waiters>,
}

impl Watermark {
    pub(crate) fn new(value: u64) -> Watermark {
        Watermark {
            value: AtomicU64::new(value),
            ..Watermark::default()
        }
    }

    fn waiters(&self) -> MutexGuard<'_, Waiters> {
        self.waiters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Acquire)
    }

    /// Raises the value to `value` (never lowers it) and wakes whoever it satisfies.
    pub(crate) fn advance(&self, value: u64) {
        let previous = self.value.fetch_max(value, Ordering::AcqRel);
        if previous < value {
            self.wake(value);
        }
    }

    /// Sets the value, even backwards (after a truncation), and starts a new generation so
    /// that advances computed before the reset are ignored. A wait bound to an earlier
    /// generation whose target is at most `value` (and at most what every reset since set)
    /// ends reached: what it waited for was kept ([`Watermark::wait_in_generation`]).
    pub(crate) fn reset(&self, value: u64) {
        {
            let mut generations = self.generation_lock();
            generations.current += 1;
            generations.values.push_back(value);
            if generations.values.len() > RESETS_REMEMBERED {
                generations.values.pop_front();
            }
            self.value.store(value, Ordering::Release);
        }
        // Everyone re-checks: waits bound to the old generation end.
        self.wake(u64::MAX);
    }

    fn generation_lock(&self) -> MutexGuard<'_, Generations> {
        self.generation
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The current generation (changes at every [`Watermark::reset`]).
    pub(crate) fn generation(&self) -> u64 {
        self.generation_lock().current
    }

    /// [`Watermark::advance`], unless a reset happened since `generation` was read: an fsync
    /// that started before a truncation must not mark the truncated ids' replacements durable.
    pub(crate) fn advance_in_generation(&self, value: u64, generation: u64) {
        let raised = {
            let current = self.generation_lock();
            current.current == generation && self.value.fetch_max(value, Ordering::AcqRel) < value
        };
        if raised {
            self.wake(value);
        }
    }

    /// Ends every present and future wait with `reason`.
    pub(crate) fn fail(&self, reason: &str) {
        let mut waiters = self.waiters();
        waiters.failure.get_or_insert_with(|| reason.to_owned());
        for (_, (_, waker)) in waiters.wakers.drain() {
            waker.wake();
        }
    }

    /// Wakes the waiters whose target `value` reaches, after releasing the lock they need.
    fn wake(&self, value: u64) {
        let mut reached = Vec::new();
        {
            let mut waiters = self.waiters();
            if waiters.wakers.is_empty() {
                return;
            }
            waiters.wakers.retain(|_, (target, waker)| {
                if *target <= value {
                    reached.push(waker.clone());
                    false
                } else {
                    true
                }
            });
        }
        for waker in reached {
            waker.wake();
        }
    }

    fn check(
        &self,
        target: u64,
        generation: Option<u64>,
        waiters: &Waiters,
    ) -> Option<Result<u64, WaitError>> {
        if let Some(generation) = generation {
            let generations = self.generation_lock();
            if generation != generations.current {
                // Reached only if every reset since kept the target (a truncation after it).
                return Some(match generations.floor_since(generation) {
                    Some(floor) if target <= floor => Ok(floor),
                    _ => Err(WaitError::Reset),
                });
            }
        }
        let value = self.get();
        if value >= target {
            return Some(Ok(value));
        }
        waiters
            .failure
            .as_ref()
            .map(|reason| Err(WaitError::Failed(reason.clone())))
    }

    /// Blocks the thread until the value reaches `target`, the watermark fails, or `timeout`
    /// passes (`None`: no deadline).
    pub fn wait_blocking(&self, target: u64, timeout: Option<Duration>) -> Result<u64, WaitError> {
        self.wait_blocking_in(target, None, timeout)
    }

    fn wait_blocking_in(
        &self,
        target: u64,
        generation: Option<u64>,
        timeout: Option<Duration>,
    ) -> Result<u64, WaitError> {
        let deadline = timeout.map(|timeout| Instant::now() + timeout);
        let waker = Waker::from(Arc::new(Unparker(std::thread::current())));
        let mut key = None;
        loop {
            let park_for = {
                let mut waiters = self.waiters();
                let result = match self.check(target, generation, &waiters) {
                    Some(result) => Some(result),
                    None => match deadline {
                        Some(deadline) if Instant::now() >= deadline => {
                            Some(Err(WaitError::TimedOut))
                        }
                        _ => None,
                    },
                };
                if let Some(result) = result {
                    if let Some(key) = key {
                        waiters.wakers.remove(&key);
                    }
                    return result;
                }
                // (Re-)registered on every round: `wake` removes the entry when it fires, and
                // a truncation may have moved the value back below the target since.
                let key = *key.get_or_insert_with(|| {
                    waiters.next_key += 1;
                    waiters.next_key
                });
                waiters.wakers.insert(key, (target, waker.clone()));
                deadline.map(|deadline| deadline.saturating_duration_since(Instant::now()))
            };
            // An unpark that came first makes this return at once: no wake-up is lost.
            match park_for {
                None => std::thread::park(),
                Some(park_for) => std::thread::park_timeout(park_for),
            }
        }
    }

    /// A future that resolves when the value reaches `target` (or the watermark fails). Wrap it
    /// in your runtime's timeout to bound the wait.
    pub fn wait(self: &Arc<Self>, target: u64) -> WatermarkWait {
        WatermarkWait {
            watermark: self.clone(),
            target,
            generation: None,
            key: None,
        }
    }

    /// Like [`Watermark::wait`], but ends with [`WaitError::Reset`] if the watermark is reset
    /// (a truncation) after `generation`: what was waited for may be gone.
    pub(crate) fn wait_in_generation(
        self: &Arc<Self>,
        target: u64,
        generation: u64,
    ) -> WatermarkWait {
        WatermarkWait {
            watermark: self.clone(),
            target,
            generation: Some(generation),
            key: None,
        }
    }
}

/// Wakes a thread blocked in [`Watermark::wait_blocking`].
struct Unparker(std::thread::Thread);

impl Wake for Unparker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Future returned by [`Watermark::wait`].
#[derive(Debug)]
pub struct WatermarkWait {
    watermark: Arc<Watermark>,
    target: u64,
    generation: Option<u64>,
    key: Option<u64>,
}

impl WatermarkWait {
    /// Blocks the thread until the wait resolves.
    pub(crate) fn block(&self) -> Result<u64, WaitError> {
        self.watermark
            .wait_blocking_in(self.target, self.generation, None)
    }
}

impl Future for WatermarkWait {
    type Output = Result<u64, WaitError>;

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let mut waiters = this.watermark.waiters();
        if let Some(result) = this.watermark.check(this.target, this.generation, &waiters) {
            if let Some(key) = this.key.take() {
                waiters.wakers.remove(&key);
            }
            return Poll::Ready(result);
        }
        let key = *this.key.get_or_insert_with(|| {
            waiters.next_key += 1;
            waiters.next_key
        });
        waiters
            .wakers
            .insert(key, (this.target, context.waker().clone()));
        Poll::Pending
    }
}

impl Drop for WatermarkWait {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.watermark.waiters().wakers.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Wake;

    struct Flag(std::sync::atomic::AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn future_wakes_when_target_reached() {
        let watermark = Arc::new(Watermark::new(0));
        let flag = Arc::new(Flag(false.into()));
        let waker = Waker::from(flag.clone());
        let mut context = Context::from_waker(&waker);
        let mut wait = watermark.wait(3);
        assert!(Pin::new(&mut wait).poll(&mut context).is_pending());
        watermark.advance(2);
        assert!(!flag.0.load(Ordering::SeqCst));
        watermark.advance(3);
        assert!(flag.0.load(Ordering::SeqCst));
        assert_eq!(Pin::new(&mut wait).poll(&mut context), Poll::Ready(Ok(3)));
    }

    #[test]
    fn dropped_futures_unregister() {
        let watermark = Arc::new(Watermark::new(0));
        let waker = Waker::from(Arc::new(Flag(false.into())));
        let mut context = Context::from_waker(&waker);
        for _ in 0..10 {
            let mut wait = watermark.wait(5);
            assert!(Pin::new(&mut wait).poll(&mut context).is_pending());
            assert!(Pin::new(&mut wait).poll(&mut context).is_pending());
        }
        assert!(watermark.waiters().wakers.is_empty());
    }

    #[test]
    fn blocked_threads_wake_when_their_target_is_reached() {
        let watermark = Arc::new(Watermark::new(0));
        let waiter = |target| {
            let watermark = watermark.clone();
            std::thread::spawn(move || watermark.wait_blocking(target, None))
        };
        let (early, late) = (waiter(2), waiter(5));
        watermark.advance(2);
        assert_eq!(early.join().unwrap(), Ok(2));
        watermark.advance(5);
        assert_eq!(late.join().unwrap(), Ok(5));
        assert!(watermark.waiters().wakers.is_empty());
    }

    #[test]
    fn blocking_wait_times_out_and_fails() {
        let watermark = Arc::new(Watermark::new(1));
        assert_eq!(watermark.wait_blocking(1, None), Ok(1));
        assert_eq!(
            watermark.wait_blocking(2, Some(Duration::from_millis(5))),
            Err(WaitError::TimedOut)
        );
        let thread = {
            let watermark = watermark.clone();
            std::thread::spawn(move || watermark.wait_blocking(10, None))
        };
        watermark.fail("disk gone");
        assert_eq!(
            thread.join().unwrap(),
            Err(WaitError::Failed("disk gone".to_owned()))
        );
    }

    /// A wait bound to a generation ends reached when every reset since kept its target, and
    /// `Reset` once one went below it, or when the generation is too old to be remembered.
    #[test]
    fn a_wait_across_resets_ends_by_the_lowest_value_they_set() {
        let watermark = Arc::new(Watermark::new(4));
        let generation = watermark.generation();
        let in_generation = |target| watermark.wait_in_generation(target, generation).block();
        watermark.reset(9);
        assert_eq!(in_generation(8), Ok(9));
        assert_eq!(in_generation(10), Err(WaitError::Reset));
        watermark.reset(6);
        assert_eq!(in_generation(6), Ok(6));
        assert_eq!(in_generation(7), Err(WaitError::Reset));
        for value in 0..RESETS_REMEMBERED as u64 {
            watermark.reset(100 + value);
        }
        assert_eq!(in_generation(1), Err(WaitError::Reset));
    }
}
