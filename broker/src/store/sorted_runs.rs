//! An ordered map of small keys kept in sorted, immutable files ("runs"), with the latest
//! changes in memory: part 3 of the broker's own store (docs/storage.md, "Building the store"),
//! meant for the message-id index, whose keys grow with the messages stored and which sled
//! rewrites page by page on every group commit.
//!
//! # Reads
//! A key is looked up in memory, then in the runs from newest to oldest. Each run keeps in
//! memory a Bloom filter of its keys (10 bits a key: about 1 % false positives) and the first
//! key of each of its blocks, so a key a run does not hold costs no disk read most of the time,
//! and one it holds costs one `pread` of a block (about 4 KiB) checked by its CRC. Scans merge
//! every source in key order, the newest change of a key winning; a deletion hides the key.
//!
//! # Durability
//! Nothing here is durable between checkpoints: the caller applies only changes it has made
//! durable elsewhere (its journal) and, after a crash, applies those past its last checkpoint
//! again. At a checkpoint [`SortedRuns::freeze`] sets the changes held in memory aside and
//! [`SortedRuns::write_frozen`] writes them to a new run and syncs it (off the caller's write
//! path); the caller records [`SortedRuns::live`] durably with its checkpoint and passes the list
//! it finds to the next [`SortedRuns::open`], which deletes every run file not in it (written
//! after the last durable checkpoint, or merged away before a crash).
//!
//! # Merging
//! Every checkpoint adds a run. [`SortedRuns::merge`] (run off the write path) merges adjacent
//! runs of comparable size into one, so a store holds about log2(keys) runs and writes each key
//! about that many times over its life. A merge that includes the oldest run drops deletions (no
//! older run can hold their keys). The files a merge replaced are deleted by
//! [`SortedRuns::release`] once the caller holds a durable checkpoint that no longer lists them.
//!
//! # File layout
//! `<dir>/<id as 16 hex digits>.run`: blocks of entries in key order, each followed by the
//! CRC-32 of its bytes; then the footer (each block's first key, position and length; the Bloom
//! filter; the number of entries) and its CRC-32; then the footer's position and length and a
//! magic number, which also tells the filter's kind (`txmqrun1`: bits anywhere in the filter;
//! `txmqrun2`, written since 2026-12-04: all of a key's bits in one 64-byte block). An entry is
//! a key (u16 length), a kind (1: value, 0: deleted) and, for a value, its bytes (u32 length).

use super::StoreError;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::ops::Bound;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

/// Bytes after which a block is closed.
const BLOCK: usize = 4096;
/// Bloom filter bits per key, and hash functions.
const BLOOM_BITS: usize = 10;
const BLOOM_HASHES: usize = 7;
/// Runs beyond which the newest two are merged whatever their sizes.
const MAX_RUNS: usize = 24;
/// The magic numbers of a run's tail: the first with a [`Filter::Spread`] filter, the second
/// (written since 2026-12-04) with a [`Filter::Blocked`] one.
const MAGIC_SPREAD: &[u8; 8] = b"txmqrun1";
const MAGIC: &[u8; 8] = b"txmqrun2";
const TAIL: u64 = 24;

/// A change of one key: its value, or deleted (`None`).
pub type Change = (Vec<u8>, Option<Vec<u8>>);

/// Changes in memory, by key.
type Changes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

fn corrupt(path: &Path, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt { key: path.display().to_string().into_bytes(), detail: detail.to_string() }
}

/// Two independent 64-bit hashes of a key (FNV-1a, then a mix of it): written into the files,
/// so they must never change.
fn hashes(key: &[u8]) -> (u64, u64) {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut m = h ^ (h >> 33);
    m = m.wrapping_mul(0xff51_afd7_ed55_8ccd);
    m ^= m >> 33;
    m = m.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    m ^= m >> 33;
    (h, m | 1)
}

/// How a run's Bloom filter places a key's bits; fixed by the file's magic number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Filter {
    /// `txmqrun1`: seven bits anywhere in the filter (seven cache misses to set or test them).
    Spread,
    /// `txmqrun2`: seven bits in one 64-byte block the key's hash picks, so setting or testing
    /// them touches one cache line, at about the same false positives (1 % at 10 bits a key:
    /// the unit test counts them). A merge sets the bits of every key it rewrites and every
    /// deletion tests every run's filter: with seven misses each, the two took a tenth of the
    /// broker's CPU time in a profile of transactional sends end to end.
    Blocked,
}

/// Bytes of one block of a [`Filter::Blocked`] filter (a cache line), and its bits.
const FILTER_BLOCK: usize = 64;
const FILTER_BLOCK_BITS: u64 = (FILTER_BLOCK * 8) as u64;
/// Keys whose filter bits a run being written sets together ([`Bloom::set`]): enough for their
/// cache misses to overlap, few enough that their lines stay cached until set.
const FILTER_BATCH: usize = 32;

/// A Bloom filter over a run's keys.
struct Bloom {
    filter: Filter,
    bits: Vec<u8>,
}

impl Bloom {
    fn with_keys(filter: Filter, n: usize) -> Bloom {
        let bytes = (n * BLOOM_BITS).div_ceil(8).max(8);
        let bytes = match filter {
            Filter::Spread => bytes,
            Filter::Blocked => bytes.next_multiple_of(FILTER_BLOCK),
        };
        Bloom { filter, bits: vec![0; bytes] }
    }

    /// Whether the footer's filter bytes fit `filter`.
    fn fits(&self) -> bool {
        !self.bits.is_empty() && (self.filter == Filter::Spread || self.bits.len() % FILTER_BLOCK == 0)
    }

    /// The bit positions of `key` (each below the filter's bit count).
    fn positions(&self, key: &[u8]) -> [u64; BLOOM_HASHES] {
        let (h1, h2) = hashes(key);
        let bits = (self.bits.len() * 8) as u64;
        match self.filter {
            Filter::Spread => std::array::from_fn(|i| h1.wrapping_add((i as u64).wrapping_mul(h2)) % bits),
            Filter::Blocked => {
                // The block from the high half of the mixed hash (scaled, not a modulo), the bits
                // within it by double hashing on its low bits (an odd step: seven distinct bits).
                let block = ((h2 >> 32) * (bits / FILTER_BLOCK_BITS)) >> 32;
                let (first, step) = (h2 & (FILTER_BLOCK_BITS - 1), ((h2 >> 9) & (FILTER_BLOCK_BITS - 1)) | 1);
                std::array::from_fn(|i| block * FILTER_BLOCK_BITS + (first + i as u64 * step) % FILTER_BLOCK_BITS)
            }
        }
    }

    /// Sets the bits of several keys ([`Self::positions`]). Each key's bits miss the cache (a
    /// filter of megabytes, one line a key when blocked): the first byte of every key is read
    /// before any bit is set, so the processor waits for those misses together rather than one
    /// after another — a merge setting one key at a time spent most of its filter time waiting.
    fn set(&mut self, keys: &[[u64; BLOOM_HASHES]]) {
        for p in keys {
            std::hint::black_box(self.bits[(p[0] / 8) as usize]);
        }
        for p in keys.iter().flatten() {
            self.bits[(p / 8) as usize] |= 1 << (p % 8);
        }
    }

    fn may_hold(&self, key: &[u8]) -> bool {
        self.positions(key).iter().all(|p| self.bits[(p / 8) as usize] & (1 << (p % 8)) != 0)
    }
}

/// Where a block of a run is, and its first key.
struct BlockRef {
    first: Vec<u8>,
    at: u64,
    len: u32,
}

/// One run file, open, with its footer in memory.
struct Run {
    id: u64,
    path: PathBuf,
    file: File,
    blocks: Vec<BlockRef>,
    bloom: Bloom,
    entries: u64,
}

impl Run {
    fn read_block(&self, i: usize) -> Result<Vec<Change>, StoreError> {
        let b = &self.blocks[i];
        let mut buf = vec![0u8; b.len as usize + 4];
        self.file.read_exact_at(&mut buf, b.at).map_err(io)?;
        let (bytes, crc) = buf.split_at(b.len as usize);
        if crc32fast::hash(bytes).to_le_bytes() != crc {
            return Err(corrupt(&self.path, format!("block at {} fails its checksum", b.at)));
        }
        decode_block(bytes).ok_or_else(|| corrupt(&self.path, format!("block at {} cannot be read", b.at)))
    }

    /// The block that would hold `key`: the last whose first key is at most `key`.
    fn block_of(&self, key: &[u8]) -> Option<usize> {
        self.blocks.partition_point(|b| b.first.as_slice() <= key).checked_sub(1)
    }

    /// The change of `key` in this run, if it has one.
    fn get(&self, key: &[u8]) -> Result<Option<Option<Vec<u8>>>, StoreError> {
        if !self.bloom.may_hold(key) {
            return Ok(None);
        }
        let Some(i) = self.block_of(key) else { return Ok(None) };
        let block = self.read_block(i)?;
        Ok(block.binary_search_by(|(k, _)| k.as_slice().cmp(key)).ok().map(|j| block[j].1.clone()))
    }

    /// Opens run `id` in `dir` and reads its footer.
    fn open(dir: &Path, id: u64) -> Result<Run, StoreError> {
        let path = run_path(dir, id);
        let file = File::open(&path).map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        if size < TAIL {
            return Err(corrupt(&path, "shorter than its tail"));
        }
        let mut tail = [0u8; TAIL as usize];
        file.read_exact_at(&mut tail, size - TAIL).map_err(io)?;
        let at = u64::from_le_bytes(tail[0..8].try_into().map_err(io)?);
        let len = u64::from_le_bytes(tail[8..16].try_into().map_err(io)?);
        let filter = match &tail[16..24] {
            m if m == MAGIC => Filter::Blocked,
            m if m == MAGIC_SPREAD => Filter::Spread,
            _ => return Err(corrupt(&path, "its tail is not a run's")),
        };
        if at.checked_add(len).and_then(|e| e.checked_add(4)) != Some(size - TAIL) {
            return Err(corrupt(&path, "its tail is not a run's"));
        }
        let mut footer = vec![0u8; len as usize + 4];
        file.read_exact_at(&mut footer, at).map_err(io)?;
        let (bytes, crc) = footer.split_at(len as usize);
        if crc32fast::hash(bytes).to_le_bytes() != crc {
            return Err(corrupt(&path, "its footer fails its checksum"));
        }
        let (blocks, bloom, entries) =
            decode_footer(bytes, filter).ok_or_else(|| corrupt(&path, "footer cannot be read"))?;
        Ok(Run { id, path, file, blocks, bloom, entries })
    }
}

fn run_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}.run"))
}

/// A little-endian reader over a byte slice; `None` past its end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).and_then(|b| b.try_into().ok()).map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.take(8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes)
    }
}

fn encode_change(out: &mut Vec<u8>, (key, value): &Change) {
    out.extend_from_slice(&(key.len() as u16).to_le_bytes());
    out.extend_from_slice(key);
    match value {
        Some(v) => {
            out.push(1);
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
            out.extend_from_slice(v);
        }
        None => out.push(0),
    }
}

fn decode_block(bytes: &[u8]) -> Option<Vec<Change>> {
    let mut r = Reader(bytes);
    let mut out = Vec::new();
    while !r.0.is_empty() {
        let n = r.u16()? as usize;
        let key = r.take(n)?.to_vec();
        let value = match r.u8()? {
            1 => {
                let n = r.u32()? as usize;
                Some(r.take(n)?.to_vec())
            }
            0 => None,
            _ => return None,
        };
        out.push((key, value));
    }
    Some(out)
}

fn decode_footer(bytes: &[u8], filter: Filter) -> Option<(Vec<BlockRef>, Bloom, u64)> {
    let mut r = Reader(bytes);
    let count = r.u32()?;
    let mut blocks = Vec::with_capacity(count.min(1 << 20) as usize);
    for _ in 0..count {
        let n = r.u16()? as usize;
        let first = r.take(n)?.to_vec();
        blocks.push(BlockRef { first, at: r.u64()?, len: r.u32()? });
    }
    let n = r.u32()? as usize;
    let bloom = Bloom { filter, bits: r.take(n)?.to_vec() };
    let entries = r.u64()?;
    (r.0.is_empty() && bloom.fits()).then_some((blocks, bloom, entries))
}

/// Writes `changes` (in key order, each key once, at most `count` of them) as run `id` in
/// `dir` and makes it durable (the file and its directory entry).
fn write_run(
    dir: &Path,
    id: u64,
    count: usize,
    changes: impl Iterator<Item = Result<Change, StoreError>>,
) -> Result<Run, StoreError> {
    write_run_with(dir, id, count, changes, Filter::Blocked)
}

/// [`write_run`] with a choice of filter (tests write the older kind, which opens still read).
fn write_run_with(
    dir: &Path,
    id: u64,
    count: usize,
    changes: impl Iterator<Item = Result<Change, StoreError>>,
    filter: Filter,
) -> Result<Run, StoreError> {
    let path = run_path(dir, id);
    let mut out = std::io::BufWriter::with_capacity(
        1 << 16,
        OpenOptions::new().create(true).truncate(true).write(true).open(&path).map_err(io)?,
    );
    let mut bloom = Bloom::with_keys(filter, count);
    let mut blocks = Vec::new();
    let (mut block, mut first, mut at, mut entries) = (Vec::with_capacity(BLOCK + 256), Vec::new(), 0u64, 0u64);
    // Made durable a step at a time, as the file grows: a merge writes hundreds of megabytes,
    // and one sync at the end would queue every writer's `fdatasync` behind all of them.
    let mut unsynced = 0u64;
    let mut close = |block: &mut Vec<u8>, first: &mut Vec<u8>, at: &mut u64| -> Result<(), StoreError> {
        if block.is_empty() {
            return Ok(());
        }
        out.write_all(block).map_err(io)?;
        out.write_all(&crc32fast::hash(block).to_le_bytes()).map_err(io)?;
        unsynced += block.len() as u64 + 4;
        if unsynced >= super::segment_file::BACKGROUND_STEP {
            out.flush().map_err(io)?;
            out.get_ref().sync_data().map_err(io)?;
            unsynced = 0;
        }
        blocks.push(BlockRef { first: std::mem::take(first), at: *at, len: block.len() as u32 });
        *at += block.len() as u64 + 4;
        block.clear();
        Ok(())
    };
    // Keys' filter bits, set a few dozen keys at a time (`Bloom::set`).
    let mut positions = Vec::with_capacity(FILTER_BATCH);
    for change in changes {
        let change = change?;
        if block.is_empty() {
            first = change.0.clone();
        }
        positions.push(bloom.positions(&change.0));
        if positions.len() == FILTER_BATCH {
            bloom.set(&positions);
            positions.clear();
        }
        encode_change(&mut block, &change);
        entries += 1;
        if block.len() >= BLOCK {
            close(&mut block, &mut first, &mut at)?;
        }
    }
    bloom.set(&positions);
    close(&mut block, &mut first, &mut at)?;
    let mut footer = Vec::new();
    footer.extend_from_slice(&(blocks.len() as u32).to_le_bytes());
    for b in &blocks {
        footer.extend_from_slice(&(b.first.len() as u16).to_le_bytes());
        footer.extend_from_slice(&b.first);
        footer.extend_from_slice(&b.at.to_le_bytes());
        footer.extend_from_slice(&b.len.to_le_bytes());
    }
    footer.extend_from_slice(&(bloom.bits.len() as u32).to_le_bytes());
    footer.extend_from_slice(&bloom.bits);
    footer.extend_from_slice(&entries.to_le_bytes());
    out.write_all(&footer).map_err(io)?;
    out.write_all(&crc32fast::hash(&footer).to_le_bytes()).map_err(io)?;
    out.write_all(&at.to_le_bytes()).map_err(io)?;
    out.write_all(&(footer.len() as u64).to_le_bytes()).map_err(io)?;
    out.write_all(if filter == Filter::Blocked { MAGIC } else { MAGIC_SPREAD }).map_err(io)?;
    let file = out.into_inner().map_err(io)?;
    file.sync_all().map_err(io)?;
    super::segment_file::sync_dir(dir)?;
    Ok(Run { id, path, file: File::open(run_path(dir, id)).map_err(io)?, blocks, bloom, entries })
}

/// The changes of a run within a key range, read block by block, in key order or reversed.
struct RunCursor {
    run: Arc<Run>,
    /// The next block to read, counting down when reversed.
    next: Option<usize>,
    reverse: bool,
    buffered: std::vec::IntoIter<Change>,
}

impl RunCursor {
    fn new(run: Arc<Run>, start: Bound<&[u8]>, end: Bound<&[u8]>, reverse: bool) -> RunCursor {
        let next = if reverse {
            match end {
                Bound::Included(k) | Bound::Excluded(k) => run.block_of(k),
                Bound::Unbounded => run.blocks.len().checked_sub(1),
            }
        } else {
            match start {
                Bound::Included(k) | Bound::Excluded(k) => Some(run.block_of(k).unwrap_or(0)),
                Bound::Unbounded => Some(0),
            }
            .filter(|i| *i < run.blocks.len())
        };
        RunCursor { run, next, reverse, buffered: Vec::new().into_iter() }
    }

    /// The next change, in order, or `None` at the run's end (the caller stops at its range).
    fn next_change(&mut self) -> Result<Option<Change>, StoreError> {
        loop {
            let item = if self.reverse { self.buffered.next_back() } else { self.buffered.next() };
            if let Some(c) = item {
                return Ok(Some(c));
            }
            let Some(i) = self.next else { return Ok(None) };
            self.buffered = self.run.read_block(i)?.into_iter();
            self.next =
                if self.reverse { i.checked_sub(1) } else { Some(i + 1).filter(|n| *n < self.run.blocks.len()) };
        }
    }
}

struct Inner {
    /// Changes applied since the last checkpoint.
    memory: Changes,
    /// Changes being written to a run by a checkpoint: still read from here until it is done.
    writing: Option<Arc<Changes>>,
    /// The runs, oldest first.
    runs: Vec<Arc<Run>>,
    next_id: u64,
    /// Runs a merge replaced: deleted once no durable checkpoint lists them.
    retired: Vec<Arc<Run>>,
}

impl Inner {
    /// Whether a source older than `memory` may hold `key` (a run's Bloom filter may pass a
    /// key it does not hold).
    fn older_may_hold(&self, key: &[u8]) -> bool {
        self.writing.as_ref().is_some_and(|w| w.contains_key(key)) || self.runs.iter().any(|r| r.bloom.may_hold(key))
    }
}

/// The ordered map; see the module's documentation.
pub struct SortedRuns {
    dir: PathBuf,
    inner: RwLock<Inner>,
    /// Held by a checkpoint or a merge while it writes a run (one at a time).
    writer: Mutex<()>,
}

impl std::fmt::Debug for SortedRuns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SortedRuns").field("dir", &self.dir).finish()
    }
}

impl SortedRuns {
    /// Opens the runs of `dir` listed in `live` (oldest first, as [`Self::live`] gave them at
    /// the last durable checkpoint) and deletes every other run file there.
    pub fn open(dir: &Path, live: &[u64]) -> Result<SortedRuns, StoreError> {
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut next_id = live.iter().max().map_or(1, |m| m + 1);
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".run"))
                .and_then(|n| u64::from_str_radix(n, 16).ok())
            else {
                continue;
            };
            next_id = next_id.max(id + 1);
            if !live.contains(&id) {
                std::fs::remove_file(&path).map_err(io)?;
            }
        }
        let runs = live.iter().map(|id| Run::open(dir, *id).map(Arc::new)).collect::<Result<Vec<_>, _>>()?;
        Ok(SortedRuns {
            dir: dir.to_path_buf(),
            inner: RwLock::new(Inner { memory: BTreeMap::new(), writing: None, runs, next_id, retired: Vec::new() }),
            writer: Mutex::new(()),
        })
    }

    /// Applies changes (already durable elsewhere) in order.
    pub fn apply(&self, changes: impl IntoIterator<Item = Change>) {
        let mut inner = crate::sync::write(&self.inner);
        for (k, v) in changes {
            // A deletion of a key no older source may hold needs no tombstone: a key written
            // and deleted between two checkpoints (a due time, a delivery) leaves nothing.
            if v.is_none() && !inner.older_may_hold(&k) {
                inner.memory.remove(&k);
                continue;
            }
            inner.memory.insert(k, v);
        }
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let runs = {
            let inner = crate::sync::read(&self.inner);
            if let Some(v) = inner.memory.get(key) {
                return Ok(v.clone());
            }
            if let Some(v) = inner.writing.as_ref().and_then(|w| w.get(key)) {
                return Ok(v.clone());
            }
            inner.runs.clone()
        };
        for run in runs.iter().rev() {
            if let Some(v) = run.get(key)? {
                return Ok(v);
            }
        }
        Ok(None)
    }

    /// The keys and values in the range, in key order (reversed with `reverse`), at most `limit`.
    pub fn scan(
        &self,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<super::Entry>, StoreError> {
        if super::is_empty_range(start, end) {
            return Ok(Vec::new());
        }
        let inner = crate::sync::read(&self.inner);
        // Sources newest first: the changes in memory, those being written, the runs.
        let mut sources = vec![Source::memory(&inner.memory, start, end, reverse)];
        if let Some(w) = &inner.writing {
            sources.push(Source::memory(w, start, end, reverse));
        }
        for run in inner.runs.iter().rev() {
            sources.push(Source::Run { cursor: RunCursor::new(run.clone(), start, end, reverse), start, end });
        }
        let mut out = Vec::new();
        for change in Merging::new(sources, reverse, true) {
            if out.len() >= limit {
                break;
            }
            if let (key, Some(value)) = change? {
                out.push((key, value));
            }
        }
        Ok(out)
    }

    /// Writes the changes held in memory to a new run (synced): [`Self::freeze`], then
    /// [`Self::write_frozen`] (tests; the store takes the two steps apart).
    #[cfg(test)]
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        self.freeze();
        self.write_frozen()
    }

    /// Sets the changes held in memory aside for [`Self::write_frozen`] (still read from
    /// there); changes applied from now on are not part of them. Does nothing while changes set
    /// aside earlier are not written yet.
    pub fn freeze(&self) {
        let mut inner = crate::sync::write(&self.inner);
        if inner.writing.is_none() && !inner.memory.is_empty() {
            inner.writing = Some(Arc::new(std::mem::take(&mut inner.memory)));
        }
    }

    /// Writes the changes [`Self::freeze`] set aside to a new run and syncs it; they are then
    /// read from the run. On failure they stay in memory (under any change applied since).
    pub fn write_frozen(&self) -> Result<(), StoreError> {
        let _writer = crate::sync::lock(&self.writer);
        let (changes, id) = {
            let mut inner = crate::sync::write(&self.inner);
            let Some(changes) = inner.writing.clone() else { return Ok(()) };
            let id = inner.next_id;
            inner.next_id += 1;
            (changes, id)
        };
        let written = write_run(&self.dir, id, changes.len(), changes.iter().map(|(k, v)| Ok((k.clone(), v.clone()))));
        let mut inner = crate::sync::write(&self.inner);
        inner.writing = None;
        match written {
            Ok(run) => {
                inner.runs.push(Arc::new(run));
                Ok(())
            }
            Err(e) => {
                let mut memory = Arc::try_unwrap(changes).unwrap_or_else(|a| (*a).clone());
                memory.append(&mut inner.memory);
                inner.memory = memory;
                let _ = std::fs::remove_file(run_path(&self.dir, id));
                Err(e)
            }
        }
    }

    /// Bytes of the run files, those merged away but not yet deleted included.
    pub fn size_on_disk(&self) -> u64 {
        let inner = crate::sync::read(&self.inner);
        inner.runs.iter().chain(&inner.retired).map(|r| r.file.metadata().map_or(0, |m| m.len())).sum()
    }

    /// The runs to list with a checkpoint, oldest first.
    pub fn live(&self) -> Vec<u64> {
        crate::sync::read(&self.inner).runs.iter().map(|r| r.id).collect()
    }

    /// Deletes the files of runs a merge replaced that `durable` (the runs of the last
    /// durable checkpoint) no longer lists.
    pub fn release(&self, durable: &[u64]) -> Result<(), StoreError> {
        let gone: Vec<Arc<Run>> = {
            let mut inner = crate::sync::write(&self.inner);
            let (gone, kept) = std::mem::take(&mut inner.retired).into_iter().partition(|r| !durable.contains(&r.id));
            inner.retired = kept;
            gone
        };
        for run in gone {
            // An open deletes a run its checkpoint does not list, whole or cut short by a crash.
            let path = run.path.clone();
            super::segment_file::remove_owned(run, &path, |r| r.file).map_err(io)?;
        }
        Ok(())
    }

    /// Merges one set of adjacent runs, if one is due; returns whether it did. A set is due
    /// when the older of two neighbours holds at most twice the newer's entries (extended to
    /// older neighbours while they hold at most twice the set's), or when there are more than
    /// `MAX_RUNS` (24) runs.
    pub fn merge(&self) -> Result<bool, StoreError> {
        let _writer = crate::sync::lock(&self.writer);
        let (picked, id, drop_deletions) = {
            let mut inner = crate::sync::write(&self.inner);
            let sizes: Vec<u64> = inner.runs.iter().map(|r| r.entries.max(1)).collect();
            let Some(range) = pick(&sizes) else { return Ok(false) };
            let id = inner.next_id;
            inner.next_id += 1;
            (inner.runs[range.clone()].to_vec(), id, range.start == 0)
        };
        // Newest first, as a scan reads them.
        let sources = picked
            .iter()
            .rev()
            .map(|r| Source::Run {
                cursor: RunCursor::new(r.clone(), Bound::Unbounded, Bound::Unbounded, false),
                start: Bound::Unbounded,
                end: Bound::Unbounded,
            })
            .collect();
        let count = picked.iter().map(|r| r.entries as usize).sum();
        let merged = Merging::new(sources, false, drop_deletions);
        let run = write_run(&self.dir, id, count, merged)?;
        let run = if run.entries == 0 {
            std::fs::remove_file(&run.path).map_err(io)?;
            None
        } else {
            Some(Arc::new(run))
        };
        let mut inner = crate::sync::write(&self.inner);
        let ids: Vec<u64> = picked.iter().map(|r| r.id).collect();
        let Some(at) = inner.runs.iter().position(|r| r.id == ids[0]) else {
            return Err(io("a merged run is gone"));
        };
        let replaced: Vec<Arc<Run>> = inner.runs.splice(at..at + ids.len(), run).collect();
        inner.retired.extend(replaced);
        Ok(true)
    }
}

/// The changes of several sources (newest first) merged in key order (reversed with `reverse`),
/// the newest change of a key winning; deletions left out when `drop_deletions`.
struct Merging<'a> {
    sources: Vec<Source<'a>>,
    /// Each source's next change (read at the first call).
    heads: Option<Vec<Option<Change>>>,
    reverse: bool,
    drop_deletions: bool,
}

impl<'a> Merging<'a> {
    fn new(sources: Vec<Source<'a>>, reverse: bool, drop_deletions: bool) -> Self {
        Merging { sources, heads: None, reverse, drop_deletions }
    }

    fn next_merged(&mut self) -> Result<Option<Change>, StoreError> {
        let heads = match &mut self.heads {
            Some(h) => h,
            None => {
                let mut h = Vec::with_capacity(self.sources.len());
                for source in &mut self.sources {
                    h.push(source.next_change()?);
                }
                self.heads.insert(h)
            }
        };
        loop {
            // The smallest head (largest when reversed); of equal ones the first, the newest.
            let mut best: Option<usize> = None;
            for (i, head) in heads.iter().enumerate() {
                let Some((k, _)) = head else { continue };
                let better = match best.and_then(|b| heads[b].as_ref()) {
                    None => true,
                    Some((bk, _)) => {
                        if self.reverse {
                            k > bk
                        } else {
                            k < bk
                        }
                    }
                };
                if better {
                    best = Some(i);
                }
            }
            let Some(change) = best.and_then(|b| heads[b].take()) else { return Ok(None) };
            for (i, head) in heads.iter_mut().enumerate() {
                // The source it came from, and older sources' changes of the same key, move on.
                if best == Some(i) || head.as_ref().is_some_and(|(k, _)| *k == change.0) {
                    *head = self.sources[i].next_change()?;
                }
            }
            if change.1.is_some() || !self.drop_deletions {
                return Ok(Some(change));
            }
        }
    }
}

impl Iterator for Merging<'_> {
    type Item = Result<Change, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_merged().transpose()
    }
}

/// Which adjacent runs (oldest first, by entries) to merge next, if any.
fn pick(sizes: &[u64]) -> Option<std::ops::Range<usize>> {
    let n = sizes.len();
    if n < 2 {
        return None;
    }
    // The newest neighbours of comparable size.
    let mut end = None;
    for i in (1..n).rev() {
        if sizes[i - 1] <= 2 * sizes[i] {
            end = Some(i + 1);
            break;
        }
    }
    let end = match end {
        Some(e) => e,
        None if n > MAX_RUNS => n,
        None => return None,
    };
    let mut start = end - 2;
    let mut total: u64 = sizes[start..end].iter().sum();
    while start > 0 && sizes[start - 1] <= 2 * total {
        start -= 1;
        total += sizes[start];
    }
    Some(start..end)
}

/// Changes of a map in memory, borrowed.
type Borrowed<'a> = Box<dyn Iterator<Item = (&'a Vec<u8>, &'a Option<Vec<u8>>)> + 'a>;

/// A source of changes within a range, in key order or reversed: a map in memory (read under
/// the caller's lock), or a run.
enum Source<'a> {
    Memory(Borrowed<'a>),
    Run { cursor: RunCursor, start: Bound<&'a [u8]>, end: Bound<&'a [u8]> },
}

impl<'a> Source<'a> {
    fn memory(map: &'a Changes, start: Bound<&'a [u8]>, end: Bound<&'a [u8]>, reverse: bool) -> Source<'a> {
        let range = map.range::<[u8], _>((start, end));
        Source::Memory(if reverse { Box::new(range.rev()) } else { Box::new(range) })
    }

    fn next_change(&mut self) -> Result<Option<Change>, StoreError> {
        match self {
            Source::Memory(changes) => Ok(changes.next().map(|(k, v)| (k.clone(), v.clone()))),
            Source::Run { cursor, start, end } => loop {
                let Some(change) = cursor.next_change()? else { return Ok(None) };
                let (after_start, before_end) = super::sides(&change.0, *start, *end);
                if after_start && before_end {
                    return Ok(Some(change));
                }
                // A run's blocks may begin before the range and end after it: past its far
                // end there is nothing more.
                if (cursor.reverse && !after_start) || (!cursor.reverse && !before_end) {
                    return Ok(None);
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(n: u32) -> Vec<u8> {
        format!("k{n:05}").into_bytes()
    }

    fn model_scan(
        model: &BTreeMap<Vec<u8>, Vec<u8>>,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
        reverse: bool,
    ) -> Vec<(Vec<u8>, Vec<u8>)> {
        let r = model.range::<[u8], _>((start, end)).map(|(k, v)| (k.clone(), v.clone()));
        if reverse {
            r.rev().take(limit).collect()
        } else {
            r.take(limit).collect()
        }
    }

    #[derive(Debug, Clone)]
    enum Step {
        Put(u32, u8),
        Delete(u32),
        Checkpoint,
        Merge,
        Reopen,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => (0u32..400, any::<u8>()).prop_map(|(k, v)| Step::Put(k, v)),
            3 => (0u32..400).prop_map(Step::Delete),
            1 => Just(Step::Checkpoint),
            1 => Just(Step::Merge),
            1 => Just(Step::Reopen),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Gets and scans answer as an ordered map would, across checkpoints, merges and
        /// reopenings (which lose what memory held since the last checkpoint: the model does
        /// the same, as the caller's journal would bring it back).
        #[test]
        fn answers_as_an_ordered_map(steps in proptest::collection::vec(step(), 1..120), probes in proptest::collection::vec((0u32..420, 0u32..420, 1usize..50, any::<bool>()), 4)) {
            let dir = tempfile::tempdir().unwrap();
            let mut runs = SortedRuns::open(dir.path(), &[]).unwrap();
            let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
            let mut durable = model.clone();
            for s in steps {
                match s {
                    Step::Put(k, v) => {
                        runs.apply([(key(k), Some(vec![v; (k % 7) as usize + 1]))]);
                        model.insert(key(k), vec![v; (k % 7) as usize + 1]);
                    }
                    Step::Delete(k) => {
                        runs.apply([(key(k), None)]);
                        model.remove(&key(k));
                    }
                    Step::Checkpoint => {
                        runs.checkpoint().unwrap();
                        durable = model.clone();
                    }
                    Step::Merge => {
                        runs.merge().unwrap();
                    }
                    Step::Reopen => {
                        let live = runs.live();
                        runs.release(&live).unwrap();
                        drop(runs);
                        runs = SortedRuns::open(dir.path(), &live).unwrap();
                        model = durable.clone();
                    }
                }
            }
            for k in 0..420 {
                prop_assert_eq!(runs.get(&key(k)).unwrap(), model.get(&key(k)).cloned(), "key {}", k);
            }
            for (a, b, limit, reverse) in probes {
                let (a, b) = (key(a.min(b)), key(a.max(b)));
                for (start, end) in [
                    (Bound::Included(a.as_slice()), Bound::Excluded(b.as_slice())),
                    (Bound::Excluded(a.as_slice()), Bound::Included(b.as_slice())),
                    (Bound::Unbounded, Bound::Included(b.as_slice())),
                    (Bound::Included(a.as_slice()), Bound::Unbounded),
                ] {
                    prop_assert_eq!(
                        runs.scan(start, end, limit, reverse).unwrap(),
                        model_scan(&model, start, end, limit, reverse)
                    );
                }
            }
        }
    }

    #[test]
    fn a_reopening_deletes_runs_its_list_does_not_hold_and_keeps_merged_ones_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let runs = SortedRuns::open(dir.path(), &[]).unwrap();
        for round in 0..4u32 {
            runs.apply((0..50).map(|i| (key(round * 50 + i), Some(vec![1]))));
            runs.checkpoint().unwrap();
        }
        let before = runs.live();
        assert_eq!(before.len(), 4);
        while runs.merge().unwrap() {}
        let after = runs.live();
        assert!(after.len() < before.len(), "{after:?}");
        // The merged-away files stay until a durable list without them is released.
        runs.release(&before).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), before.len() + after.len());
        // A crash now: the durable list is still `before`, and it must read as before.
        drop(runs);
        let runs = SortedRuns::open(dir.path(), &before).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), before.len(), "the merge's output went");
        assert_eq!(runs.scan(Bound::Unbounded, Bound::Unbounded, 1000, false).unwrap().len(), 200);
    }

    #[test]
    fn a_damaged_block_is_reported_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let runs = SortedRuns::open(dir.path(), &[]).unwrap();
        runs.apply((0..10).map(|i| (key(i), Some(vec![7; 20]))));
        runs.checkpoint().unwrap();
        let live = runs.live();
        drop(runs);
        let path = run_path(dir.path(), live[0]);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[10] ^= 0xFF;
        std::fs::write(&path, bytes).unwrap();
        let runs = SortedRuns::open(dir.path(), &live).unwrap();
        assert!(matches!(runs.get(&key(3)), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn a_missed_key_reads_no_block_most_of_the_time() {
        let dir = tempfile::tempdir().unwrap();
        let runs = SortedRuns::open(dir.path(), &[]).unwrap();
        // Not a whole number of filter batches: the last keys' bits are set after the loop.
        assert_ne!(10_000 % FILTER_BATCH, 0);
        runs.apply((0..10_000).map(|i| (key(i * 2), Some(vec![1]))));
        runs.checkpoint().unwrap();
        let inner = crate::sync::read(&runs.inner);
        let run = &inner.runs[0];
        let passed = (0..10_000).filter(|i| run.bloom.may_hold(&key(i * 2 + 1))).count();
        assert!(passed < 300, "{passed} of 10,000 absent keys passed the filter");
        assert!((0..10_000).all(|i| run.bloom.may_hold(&key(i * 2))));
    }

    #[test]
    fn a_blocked_filter_sets_each_key_s_bits_in_one_cache_line() {
        let mut bloom = Bloom::with_keys(Filter::Blocked, 1_000);
        assert_eq!(bloom.bits.len() % FILTER_BLOCK, 0);
        for i in 0..1_000 {
            let positions = bloom.positions(&key(i));
            let block = positions[0] / FILTER_BLOCK_BITS;
            assert!(positions.iter().all(|p| p / FILTER_BLOCK_BITS == block), "key {i}: {positions:?}");
            let mut distinct = positions.to_vec();
            distinct.sort_unstable();
            distinct.dedup();
            assert_eq!(distinct.len(), BLOOM_HASHES, "key {i}: {positions:?}");
            bloom.set(&[positions]);
        }
        // The keys spread over the blocks (about six a block): nearly every block is used (one
        // may draw no key by chance) and none has three quarters of its bits set.
        let per_block: Vec<u32> =
            bloom.bits.chunks(FILTER_BLOCK).map(|b| b.iter().map(|x| x.count_ones()).sum()).collect();
        let used = per_block.iter().filter(|&&n| n > 0).count();
        assert!(used * 100 >= per_block.len() * 95, "{used} of {} blocks used: {per_block:?}", per_block.len());
        assert!(per_block.iter().all(|&n| n < 512 / 4 * 3), "{per_block:?}");
    }

    #[test]
    fn a_run_with_the_older_spread_filter_still_opens_and_merges_into_a_blocked_one() {
        let dir = tempfile::tempdir().unwrap();
        let changes = (0..2_000).map(|i| Ok((key(i * 2), Some(vec![i as u8]))));
        let old = write_run_with(dir.path(), 1, 2_000, changes, Filter::Spread).unwrap();
        assert_eq!(old.bloom.filter, Filter::Spread);
        drop(old);
        let runs = SortedRuns::open(dir.path(), &[1]).unwrap();
        {
            let inner = crate::sync::read(&runs.inner);
            assert_eq!(inner.runs[0].bloom.filter, Filter::Spread);
            let passed = (0..2_000).filter(|i| inner.runs[0].bloom.may_hold(&key(i * 2 + 1))).count();
            assert!(passed < 60, "{passed} of 2,000 absent keys passed the older filter");
        }
        assert_eq!(runs.get(&key(10)).unwrap(), Some(vec![5]));
        assert_eq!(runs.get(&key(11)).unwrap(), None);
        runs.apply((0..2_000).map(|i| (key(i * 2 + 1), Some(vec![1]))));
        runs.checkpoint().unwrap();
        while runs.merge().unwrap() {}
        let live = runs.live();
        drop(runs);
        let runs = SortedRuns::open(dir.path(), &live).unwrap();
        let inner = crate::sync::read(&runs.inner);
        assert_eq!(inner.runs.len(), 1);
        assert_eq!(inner.runs[0].bloom.filter, Filter::Blocked);
        drop(inner);
        assert!((0..4_000).all(|i| runs.get(&key(i)).unwrap().is_some()));
    }

    #[test]
    fn a_deletion_leaves_a_tombstone_only_over_an_older_source() {
        let dir = tempfile::tempdir().unwrap();
        let runs = SortedRuns::open(dir.path(), &[]).unwrap();
        let memory = |runs: &SortedRuns| crate::sync::read(&runs.inner).memory.clone();
        // Written and deleted between two checkpoints: nothing is left to write.
        runs.apply([(key(1), Some(vec![1])), (key(1), None)]);
        assert!(memory(&runs).is_empty());
        runs.apply([(key(2), Some(vec![2]))]);
        runs.checkpoint().unwrap();
        // In a run: the deletion must hide it, now and after the next checkpoint.
        runs.apply([(key(2), None), (key(3), None)]);
        assert_eq!(memory(&runs), BTreeMap::from([(key(2), None)]), "no run may hold key 3");
        assert_eq!(runs.get(&key(2)).unwrap(), None);
        runs.checkpoint().unwrap();
        assert_eq!(runs.get(&key(2)).unwrap(), None);
        assert!(runs.scan(Bound::Unbounded, Bound::Unbounded, 10, false).unwrap().is_empty());
    }

    #[test]
    fn merges_keep_the_run_count_logarithmic() {
        let dir = tempfile::tempdir().unwrap();
        let runs = SortedRuns::open(dir.path(), &[]).unwrap();
        for round in 0..64u32 {
            runs.apply((0..16).map(|i| (key(round * 16 + i), Some(vec![1]))));
            runs.checkpoint().unwrap();
            while runs.merge().unwrap() {}
        }
        assert!(runs.live().len() <= 8, "{:?}", runs.live());
        assert_eq!(runs.scan(Bound::Unbounded, Bound::Unbounded, 2000, false).unwrap().len(), 1024);
    }
}
