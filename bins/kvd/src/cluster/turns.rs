//! One view applied at a time, never waited for, none left behind: the driver's views come
//! from the meta watch and from every heartbeat's reply, on the async workers, and applying
//! one may wait on the disk (a new epoch is recorded in `node.meta`). [`Turns::offer`] applies
//! an item if no one else is applying one; otherwise it keeps the item (the newest of those
//! kept) for the one applying, which takes it once it lets go of its turn, and returns at once.
//!
//! Two mistakes this module exists to keep out, both once in the driver: a lock on what is
//! kept held while an item is applied (a `while let` on `lock(..).take()` keeps its guard for
//! the whole body, and keeping an item inside it locked the same mutex again: both async
//! workers blocked on it, and the node answered nothing, not even its own start — found by the
//! end-to-end tests, a restarted leader that never announced its address); and an item kept
//! just after the one applying last looked, which waited for the driver's next tick.

use std::sync::{Mutex, MutexGuard, TryLockError};

/// Items applied one at a time; see the module's documentation.
pub struct Turns<T> {
    /// Held while an item is applied.
    turn: Mutex<()>,
    /// The newest item offered while another was being applied.
    kept: Mutex<Option<T>>,
    /// An item's version: of two kept, the one with the higher version stays.
    version: fn(&T) -> u64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<T: Clone> Turns<T> {
    /// No item applied yet, none kept; `version` orders the items kept.
    pub fn new(version: fn(&T) -> u64) -> Turns<T> {
        Turns {
            turn: Mutex::new(()),
            kept: Mutex::new(None),
            version,
        }
    }

    /// The turn, if no one holds it now (never waits).
    pub fn try_turn(&self) -> Option<MutexGuard<'_, ()>> {
        match self.turn.try_lock() {
            Ok(turn) => Some(turn),
            Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// Applies `item` — `apply(turn, item)`, which may let go of the turn before it returns —
    /// and then every item kept meanwhile, unless another holds the turn: then keeps `item`
    /// for that one and returns at once. Returns once no item is left that this call must
    /// apply: an item kept by another call while this one held the turn is applied before it
    /// returns.
    pub fn offer(&self, item: &T, mut apply: impl FnMut(MutexGuard<'_, ()>, &T)) {
        if !self.apply_or_keep(item, &mut apply) {
            return;
        }
        loop {
            // A statement of its own: the guard must not live on while the item is applied.
            let kept = lock(&self.kept).take();
            let Some(kept) = kept else {
                return;
            };
            if !self.apply_or_keep(&kept, &mut apply) {
                return;
            }
        }
    }

    /// What is kept, taken (the driver's tick looks at it).
    pub fn take_kept(&self) -> Option<T> {
        lock(&self.kept).take()
    }

    /// Applies `item` if the turn is free, or keeps it. Whether this call must look at what is
    /// kept: it applied, or the turn was let go before it could see `item` kept.
    fn apply_or_keep(&self, item: &T, apply: &mut impl FnMut(MutexGuard<'_, ()>, &T)) -> bool {
        if let Some(turn) = self.try_turn() {
            apply(turn, item);
            return true;
        }
        {
            let mut kept = lock(&self.kept);
            let version = self.version;
            if kept
                .as_ref()
                .is_none_or(|kept| version(kept) < version(item))
            {
                *kept = Some(item.clone());
            }
        }
        // The holder looks at what is kept after it lets go of its turn; one that let go before
        // `item` was kept may have looked already.
        self.try_turn().is_some()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{mpsc, Arc};
    use std::time::Duration;

    use super::*;

    /// Applies only a version above the last applied, as the driver does.
    fn apply_newer(applied: &Mutex<u64>, version: u64) {
        let mut applied = lock(applied);
        *applied = (*applied).max(version);
    }

    #[test]
    fn an_item_offered_while_another_is_applied_is_applied_by_that_offer_before_it_returns() {
        let turns = Arc::new(Turns::new(|version: &u64| *version));
        let applied = Arc::new(Mutex::new(Vec::new()));
        let (entered, in_apply) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        let first = std::thread::spawn({
            let (turns, applied) = (turns.clone(), applied.clone());
            move || {
                turns.offer(&1, |_turn, &version| {
                    if version == 1 {
                        entered.send(()).expect("send");
                        released.recv().expect("released");
                    }
                    lock(&applied).push(version);
                });
            }
        });
        in_apply.recv().expect("the first offer applies");
        // Each returns at once; of 2, 4 and 3 kept, the newest stays.
        for version in [2, 4, 3] {
            turns.offer(&version, |_, _| {
                panic!("the turn is held: nothing applies here")
            });
        }
        release.send(()).expect("release");
        first.join().expect("the first offer");
        assert_eq!(*lock(&applied), vec![1, 4]);
        assert_eq!(turns.take_kept(), None);
    }

    /// Offers from several threads at once, each applying for a while, never block each other
    /// and leave the newest item applied once they all returned. Before the module, the
    /// driver's loop held what is kept locked while it applied, and keeping an item meanwhile
    /// blocked its thread for good (`KVD_TEST_SEED` replays a run).
    #[test]
    fn concurrent_offers_never_block_and_the_newest_item_is_applied_when_they_return() {
        let seed = std::env::var("KVD_TEST_SEED")
            .ok()
            .and_then(|seed| seed.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .expect("clock")
                    .as_nanos() as u64
            });
        println!("concurrent offers: seed {seed} (replay with KVD_TEST_SEED={seed})");
        const THREADS: u64 = 4;
        const OFFERS: u64 = 3_000;
        let turns = Arc::new(Turns::new(|version: &u64| *version));
        let applied = Arc::new(Mutex::new(0u64));
        let next = Arc::new(AtomicU64::new(1));
        let (done, finished) = mpsc::channel();
        for thread in 0..THREADS {
            let (turns, applied, next, done) =
                (turns.clone(), applied.clone(), next.clone(), done.clone());
            std::thread::spawn(move || {
                let mut state = seed ^ (thread + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                for _ in 0..OFFERS {
                    let version = next.fetch_add(1, Ordering::SeqCst);
                    turns.offer(&version, |turn, &version| {
                        // xorshift: some applies hold the turn across a yield or a sleep.
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        match state % 8 {
                            0 => std::thread::sleep(Duration::from_micros(50)),
                            1 | 2 => std::thread::yield_now(),
                            _ => {}
                        }
                        apply_newer(&applied, version);
                        // Half let go of the turn before their work after applying.
                        if state.is_multiple_of(2) {
                            drop(turn);
                            std::thread::yield_now();
                        }
                    });
                }
                done.send(()).expect("send");
            });
        }
        for _ in 0..THREADS {
            finished
                .recv_timeout(Duration::from_secs(60))
                .expect("an offering thread is blocked (seed above)");
        }
        let newest = next.load(Ordering::SeqCst) - 1;
        assert_eq!(*lock(&applied), newest, "seed {seed}");
        assert_eq!(turns.take_kept(), None, "seed {seed}");
    }
}
