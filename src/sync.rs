//! The one way the agent takes a lock.
//!
//! A panic while a lock is held poisons it; the data behind every lock of the agent stays
//! consistent across a panic (each critical section is one small change), so the data is
//! taken as it is, never replaced by an empty substitute (which would, say, forget a raised
//! alert) and never a second panic.

use std::sync::{Mutex, MutexGuard};

/// [`Lock::locked`] for every `Mutex`.
pub trait Lock<T: ?Sized> {
    /// Locks, recovering the data of a poisoned lock.
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> Lock<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
