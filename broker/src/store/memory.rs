//! An in-memory [`Store`] for tests: same semantics as the sled store, nothing survives a drop.

use super::{Batch, Entry, Op, Store, StoreError};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::RwLock;

/// A `BTreeMap` behind a lock. `flush` is a no-op: there is no disk to reach.
#[derive(Debug, Default)]
pub struct MemoryStore {
    map: RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Store for MemoryStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(crate::sync::read(&self.map).get(key).cloned())
    }

    fn scan(
        &self,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<Entry>, StoreError> {
        let map = crate::sync::read(&self.map);
        if super::is_empty_range(start, end) {
            return Ok(Vec::new());
        }
        let range = map.range::<[u8], _>((start, end));
        let clone = |(k, v): (&Vec<u8>, &Vec<u8>)| (k.clone(), v.clone());
        Ok(if reverse { range.rev().take(limit).map(clone).collect() } else { range.take(limit).map(clone).collect() })
    }

    fn apply(&self, batch: &Batch) -> Result<(), StoreError> {
        let mut map = crate::sync::write(&self.map);
        for op in batch.ops() {
            match op {
                Op::Put(k, v) => {
                    map.insert(k.clone(), v.clone());
                }
                Op::Delete(k) => {
                    map.remove(k);
                }
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn size_on_disk(&self) -> u64 {
        0
    }
}
