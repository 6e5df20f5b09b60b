//! A [`Store`] wrapper that fails on command, for fault-injection tests: writes (apply) or
//! flushes can be made to fail, once or until cleared, to check that the broker answers
//! errors, never acknowledges unflushed data, and refuses writes after a failed flush. Applies
//! can also be held, so that requests pile up behind the write in progress and share the next
//! group commit.

use super::{Batch, Entry, Store, StoreError};
use std::ops::Bound;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// What fails next.
#[derive(Debug, Default)]
pub struct Faults {
    fail_applies: AtomicU32,
    fail_flushes: AtomicU32,
    /// Flushes to let through before `fail_flushes` applies.
    flushes_before_failing: AtomicU32,
    /// Applies to let through before `fail_applies` applies.
    applies_before_failing: AtomicU32,
    injected: AtomicU32,
    hold: std::sync::atomic::AtomicBool,
    applies: AtomicU32,
}

impl Faults {
    /// The next `n` applies fail.
    pub fn fail_applies(&self, n: u32) {
        self.fail_applies.store(n, Ordering::SeqCst);
    }

    /// The next `n` flushes fail.
    pub fn fail_flushes(&self, n: u32) {
        self.fail_flushes.store(n, Ordering::SeqCst);
    }

    /// The flush after the next `ok` ones fails (once).
    pub fn fail_flush_after(&self, ok: u32) {
        self.flushes_before_failing.store(ok, Ordering::SeqCst);
        self.fail_flushes.store(1, Ordering::SeqCst);
    }

    /// The apply after the next `ok` ones fails (once), and nothing of it is written.
    pub fn fail_apply_after(&self, ok: u32) {
        self.applies_before_failing.store(ok, Ordering::SeqCst);
        self.fail_applies.store(1, Ordering::SeqCst);
    }

    /// Applies wait until [`Faults::release`] (the writer thread blocks, requests queue).
    pub fn hold_applies(&self) {
        self.hold.store(true, Ordering::SeqCst);
    }

    pub fn release(&self) {
        self.hold.store(false, Ordering::SeqCst);
    }

    /// Applies started so far (held ones included).
    pub fn applies(&self) -> u32 {
        self.applies.load(Ordering::SeqCst)
    }

    /// Faults injected so far.
    pub fn injected(&self) -> u32 {
        self.injected.load(Ordering::SeqCst)
    }

    /// Whether this operation fails: not while `skip` lets operations through, then once per
    /// count left in `counter`.
    fn take(&self, skip: &AtomicU32, counter: &AtomicU32) -> bool {
        if skip.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            return false;
        }
        let hit = counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
        if hit {
            self.injected.fetch_add(1, Ordering::SeqCst);
        }
        hit
    }
}

/// `inner`, failing as [`Faults`] says.
pub struct FaultyStore<S> {
    inner: S,
    faults: Arc<Faults>,
}

impl<S: Store> FaultyStore<S> {
    /// Wraps `inner`; returns the store and the handle that injects faults.
    pub fn new(inner: S) -> (Self, Arc<Faults>) {
        let faults = Arc::new(Faults::default());
        (Self { inner, faults: faults.clone() }, faults)
    }

    /// The injected failure of a flush (or checkpoint), when this one is to fail.
    fn flush_fault(&self) -> Result<(), StoreError> {
        if self.faults.take(&self.faults.flushes_before_failing, &self.faults.fail_flushes) {
            return Err(StoreError::Io("injected fsync failure".into()));
        }
        Ok(())
    }
}

impl<S: Store> Store for FaultyStore<S> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(key)
    }

    fn scan(
        &self,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<Entry>, StoreError> {
        self.inner.scan(start, end, limit, reverse)
    }

    fn apply(&self, batch: &Batch) -> Result<(), StoreError> {
        self.faults.applies.fetch_add(1, Ordering::SeqCst);
        while self.faults.hold.load(Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        if self.faults.take(&self.faults.applies_before_failing, &self.faults.fail_applies) {
            return Err(StoreError::Io("injected write failure".into()));
        }
        self.inner.apply(batch)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.flush_fault()?;
        self.inner.flush()
    }

    fn checkpoint(&self) -> Result<(), StoreError> {
        self.flush_fault()?;
        self.inner.checkpoint()
    }

    fn size_on_disk(&self) -> u64 {
        self.inner.size_on_disk()
    }
}
