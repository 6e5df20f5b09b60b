//! The one policy for poisoned locks: use the data anyway.
//!
//! A std lock is poisoned when a thread panicked while holding it. The broker never panics on a
//! request path (no `unwrap` outside tests), and every state a lock guards is changed by
//! complete steps, so a poisoned lock means a bug elsewhere; refusing every later request on it
//! would turn that bug into an outage. Every `std::sync` lock in the broker is taken through
//! these functions.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

pub fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}
