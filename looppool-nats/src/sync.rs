//! Locking shared state.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, ignoring poisoning.
///
/// Every mutex in this crate guards plain data (the waiters for joining
/// workers, a local worker's child process, how a worker ended) that each
/// critical section leaves consistent before it can panic, so a panic
/// elsewhere while the lock was held is no reason to stop the pool: the
/// data is used as it is.
pub(crate) fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
