//! Large records are stored as numbered chunks of at most [`CHUNK_SIZE`] bytes.
//!
//! Why: sled 0.34 writes any log item over ~128 KiB (a value, or a whole leaf node of up to 17
//! values when it is rewritten) to a blob file that it never fsyncs. Chunks of 4 KiB keep even
//! a full leaf far below that, so every byte stays in the log that `SledStore::flush` fsyncs.
//! A 256-byte message is one chunk; a 4 MiB body is about a thousand.

use super::{scan_prefix, Batch, Key, Store, StoreError};

/// The largest value written under one key.
pub const CHUNK_SIZE: usize = 4096;

/// The most chunks one record may have (bounds every scan that reads a record).
pub const MAX_CHUNKS: usize = 2048;

/// Adds `value` to `batch` as chunks under `key(0)`, `key(1)`, …; `key` must produce keys that
/// share one prefix and differ only in a trailing big-endian `u16` chunk number.
pub fn put(batch: &mut Batch, value: &[u8], key: impl Fn(u16) -> Key) -> Result<(), StoreError> {
    let count = value.len().div_ceil(CHUNK_SIZE).max(1);
    if count > MAX_CHUNKS {
        return Err(StoreError::Io(format!(
            "record of {} bytes exceeds the {} byte limit",
            value.len(),
            MAX_CHUNKS * CHUNK_SIZE
        )));
    }
    if value.is_empty() {
        batch.put(&key(0), Vec::new());
    }
    for (i, piece) in value.chunks(CHUNK_SIZE).enumerate() {
        // `count <= MAX_CHUNKS` fits in a u16.
        batch.put(&key(i as u16), piece.to_vec());
    }
    Ok(())
}

/// Reads back a record written by [`put`] under `prefix`; `None` if absent.
pub fn get(store: &dyn Store, prefix: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
    // Most records are one chunk: a point read is much cheaper than a range scan in sled.
    let mut first = prefix.to_vec();
    first.extend_from_slice(&0u16.to_be_bytes());
    match store.get(&first)? {
        None => return Ok(None),
        Some(v) if v.len() < CHUNK_SIZE => return Ok(Some(v)),
        Some(_) => {}
    }
    let entries = scan_prefix(store, prefix, MAX_CHUNKS, false)?;
    if entries.is_empty() {
        return Ok(None);
    }
    join(prefix, entries).map(Some)
}

/// Concatenates the chunks of one record, checking that they are numbered 0, 1, 2, ….
pub fn join(prefix: &[u8], entries: Vec<(Vec<u8>, Vec<u8>)>) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::with_capacity(entries.iter().map(|(_, v)| v.len()).sum());
    for (i, (k, v)) in entries.into_iter().enumerate() {
        let expected = i as u16;
        let ok = k.len() == prefix.len() + 2 && k.starts_with(prefix) && k[prefix.len()..] == expected.to_be_bytes();
        if !ok {
            return Err(StoreError::Corrupt { key: k, detail: format!("expected chunk {i}") });
        }
        out.extend_from_slice(&v);
    }
    Ok(out)
}

/// Adds deletes for every chunk of the record under `prefix`.
pub fn delete(store: &dyn Store, batch: &mut Batch, prefix: &[u8]) -> Result<(), StoreError> {
    for (k, _) in scan_prefix(store, prefix, MAX_CHUNKS, false)? {
        batch.delete_raw(k);
    }
    Ok(())
}
