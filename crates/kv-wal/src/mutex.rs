//! Locking a mutex whose holder panicked: the log's state behind it stays usable (every
//! critical section leaves it consistent, and a failed write poisons the log itself).

use std::sync::{Mutex, MutexGuard};

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
