//! Message chunks kept out of sled: each written once, in the [`Journal`] record of its group
//! commit, and found through per-queue indexes ([`QueueIndex`]) — part 2 of the broker's own
//! store (docs/storage.md, "Building the store"), used by the sled store of a data directory
//! created with `--message-files true`.
//!
//! # What a batch does
//! The `Key::MessageChunk` writes of a batch become one journal record: per message touched,
//! either all of its chunks as they are after the batch (an "area"), or that it is gone. The
//! record is written and `fdatasync`ed before the rest of the batch goes to sled, and sled's part
//! carries the record's number and end (the "applied" key), so that a record whose batch never
//! reached sled is cut off at the next open. The index entries are written after sled took the
//! batch, to the page cache.
//!
//! # Checkpoints
//! At most every [`CHECKPOINT_EVERY`] (or [`CHECKPOINT_BYTES`] of journal), after a flush:
//! the index files are synced, and the checkpoint — the last record applied, and each changed
//! queue's bounds — is written to sled, durable at the next flush. An open applies the records
//! after the durable checkpoint to the indexes again. Once a checkpoint is durable, journal
//! segments below both it and every queue's oldest message are deleted, as are index files
//! below each queue's first offset.
//!
//! # Order within a queue
//! A queue whose messages are written in offset order (the broker's only way) has its oldest
//! bytes at its first offset. A write below a queue's last offset marks it unordered (kept with
//! its bounds), and its oldest segment is then found by reading all its entries.

use super::journal::{Journal, JournalOptions, Position, HEADER};
use super::keys::{is_message_chunk, Key};
use super::queue_index::{Entry, QueueIndex};
use super::value_log::RESERVED;
use super::{Op, StoreError};
use crate::codec::{Decoder, Encoder};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Offsets per index file (32 bytes each: 2 MiB).
const PER_FILE: u64 = 65_536;
/// Journal bytes after which a flush takes a checkpoint.
pub const CHECKPOINT_BYTES: u64 = 64 << 20;
/// Time after which a flush takes a checkpoint.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(10);

const SET: u8 = 1;
const CLEAR: u8 = 2;

/// A write of sled the caller makes: a put, or a removal (`None`).
pub type SledWrite = (Vec<u8>, Option<Vec<u8>>);

/// The sled key whose presence says that this store keeps message chunks here.
pub fn enabled_key() -> Vec<u8> {
    vec![RESERVED, b'j']
}

/// The prefix of every sled key of this module (the caller passes them to [`MessageFiles::open`]).
pub fn prefix() -> Vec<u8> {
    vec![RESERVED, b'j']
}

fn applied_key() -> Vec<u8> {
    vec![RESERVED, b'j', b'a']
}

fn checkpoint_key() -> Vec<u8> {
    vec![RESERVED, b'j', b'c']
}

fn bounds_key(q: &QueueId) -> Vec<u8> {
    let mut e = Encoder::new();
    e.u8(RESERVED).u8(b'j').u8(b'q').str(&q.0).u32(q.1);
    e.finish()
}

fn encode_point(seq: u64, at: Position) -> Vec<u8> {
    let mut e = Encoder::new();
    e.u64(seq).u64(at.segment).u64(at.offset);
    e.finish()
}

fn corrupt(key: &[u8], detail: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt { key: key.to_vec(), detail: detail.to_string() }
}

fn decode_point(key: &[u8], v: &[u8]) -> Result<(u64, Position), StoreError> {
    let mut d = Decoder::new(v);
    let point = (|| Ok::<_, crate::codec::CodecError>((d.u64()?, Position { segment: d.u64()?, offset: d.u64()? })))()
        .map_err(|e| corrupt(key, e))?;
    Ok(point)
}

type QueueId = (String, u32);

/// A queue's first and last offsets with an entry, and whether it was ever written out of
/// offset order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bounds {
    first: u64,
    last: u64,
    unordered: bool,
}

/// A message's chunks, by number.
type Chunks = BTreeMap<u16, Vec<u8>>;

fn encode_area(chunks: &Chunks) -> Vec<u8> {
    let mut e = Encoder::with_capacity(chunks.values().map(|c| c.len() + 6).sum::<usize>() + 2);
    e.u16(chunks.len() as u16);
    for (n, c) in chunks {
        e.u16(*n).bytes(c);
    }
    e.finish()
}

fn decode_area(area: &[u8]) -> Result<Chunks, crate::codec::CodecError> {
    let mut d = Decoder::new(area);
    let mut chunks = Chunks::new();
    for _ in 0..d.u16()? {
        let n = d.u16()?;
        chunks.insert(n, d.bytes()?.to_vec());
    }
    d.finish()?;
    Ok(chunks)
}

/// One message's state after a batch: its area, or gone (`None`).
struct Change {
    queue: QueueId,
    offset: u64,
    area: Option<Vec<u8>>,
}

/// The journal payload of `changes`, and where each area starts in it.
fn encode_record(changes: &[Change]) -> (Vec<u8>, Vec<u64>) {
    let mut e = Encoder::with_capacity(changes.iter().map(|c| c.area.as_ref().map_or(0, Vec::len) + 64).sum());
    e.u32(changes.len() as u32);
    let mut starts = Vec::with_capacity(changes.len());
    for c in changes {
        e.str(&c.queue.0).u32(c.queue.1).u64(c.offset);
        match &c.area {
            Some(area) => {
                e.u8(SET);
                // The area's bytes start after its 4-byte length.
                starts.push(e.len() as u64 + 4);
                e.bytes(area);
            }
            None => {
                e.u8(CLEAR);
                starts.push(0);
            }
        }
    }
    (e.finish(), starts)
}

/// The changes of a journal payload, each with where its area starts.
fn decode_record(payload: &[u8]) -> Result<Vec<(Change, u64)>, crate::codec::CodecError> {
    let mut d = Decoder::new(payload);
    let n = d.u32()?;
    let mut out = Vec::with_capacity(n.min(1 << 16) as usize);
    for _ in 0..n {
        let queue = (d.str()?, d.u32()?);
        let offset = d.u64()?;
        match d.u8()? {
            SET => {
                let area = d.bytes()?;
                let start = (payload.len() - d.remaining() - area.len()) as u64;
                out.push((Change { queue, offset, area: Some(area.to_vec()) }, start));
            }
            CLEAR => out.push((Change { queue, offset, area: None }, 0)),
            k => return Err(crate::codec::invalid("journal change", format!("kind {k}"))),
        }
    }
    d.finish()?;
    Ok(out)
}

/// A message-chunk key, decoded: (topic, queue, offset, chunk).
fn chunk_key(key: &[u8]) -> Result<(String, u32, u64, u16), StoreError> {
    match Key::decode(key) {
        Ok(Key::MessageChunk { topic, queue, offset, chunk }) => Ok((topic, queue, offset, chunk)),
        _ => Err(corrupt(key, "not a message-chunk key")),
    }
}

/// The encoded key of the queue's message chunk.
fn key_of(q: &QueueId, offset: u64, chunk: u16) -> Vec<u8> {
    Key::MessageChunk { topic: q.0.clone(), queue: q.1, offset, chunk }.encode()
}

fn in_range(key: &[u8], start: Bound<&[u8]>, end: Bound<&[u8]>) -> bool {
    let after_start = match start {
        Bound::Included(s) => key >= s,
        Bound::Excluded(s) => key > s,
        Bound::Unbounded => true,
    };
    let before_end = match end {
        Bound::Included(e) => key <= e,
        Bound::Excluded(e) => key < e,
        Bound::Unbounded => true,
    };
    after_start && before_end
}

/// The writer's state, behind one lock.
struct State {
    bounds: HashMap<QueueId, Bounds>,
    /// Queues whose bounds changed since the last checkpoint.
    changed: HashSet<QueueId>,
    /// The last record applied to sled: its number and end.
    applied: (u64, Position),
    /// A checkpoint written to sled, durable at the next flush; with the segment below which
    /// the journal holds nothing live at that point.
    pending: Option<((u64, Position), u64)>,
    /// The last checkpoint known durable.
    durable: (u64, Position),
    journal_at_checkpoint: u64,
    checkpoint_at: Instant,
    /// Time between checkpoints ([`CHECKPOINT_EVERY`]; tests shorten it).
    checkpoint_every: Duration,
}

/// The message chunks of one store directory.
pub struct MessageFiles {
    journal: Journal,
    index: QueueIndex,
    state: Mutex<State>,
}

impl std::fmt::Debug for MessageFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageFiles").field("journal", &self.journal).finish()
    }
}

/// The part of a batch prepared here, holding the writer until it is applied to sled.
pub struct Prepared<'a> {
    files: &'a MessageFiles,
    state: MutexGuard<'a, State>,
    changes: Vec<(Change, Option<Entry>)>,
    record: Option<(u64, Position)>,
}

impl MessageFiles {
    /// Opens the files in `dir` with this module's sled keys as stored (`stored`: every key
    /// under [`prefix`] with its value): cuts off journal records sled never took and applies
    /// those after the durable checkpoint to the indexes again.
    pub fn open(dir: &Path, stored: Vec<(Vec<u8>, Vec<u8>)>) -> Result<MessageFiles, StoreError> {
        let journal = Journal::open(&dir.join("journal"), JournalOptions::default())?;
        let index = QueueIndex::open(&dir.join("queues"), PER_FILE)?;
        let first = Position { segment: journal.segments().first().copied().unwrap_or(1), offset: 0 };
        let (mut applied, mut durable) = ((0, first), (0, first));
        let mut bounds = HashMap::new();
        for (k, v) in &stored {
            if *k == applied_key() {
                applied = decode_point(k, v)?;
            } else if *k == checkpoint_key() {
                durable = decode_point(k, v)?;
            } else if k.starts_with(&[RESERVED, b'j', b'q']) {
                let mut d = Decoder::new(&k[3..]);
                let q = (|| Ok::<_, crate::codec::CodecError>((d.str()?, d.u32()?)))().map_err(|e| corrupt(k, e))?;
                let mut d = Decoder::new(v);
                let b = (|| {
                    Ok::<_, crate::codec::CodecError>(Bounds { first: d.u64()?, last: d.u64()?, unordered: d.bool()? })
                })()
                .map_err(|e| corrupt(k, e))?;
                bounds.insert(q, b);
            }
        }
        // Records past the last one sled took belong to batches that never happened.
        let (next, _) = journal.end();
        if next - 1 > applied.0 {
            journal.truncate(applied.1, applied.0 + 1)?;
        } else if next - 1 < applied.0 {
            return Err(corrupt(
                &applied_key(),
                format!("sled applied journal record {} but the journal ends at {}", applied.0, next - 1),
            ));
        }
        let files = MessageFiles {
            journal,
            index,
            state: Mutex::new(State {
                bounds,
                changed: HashSet::new(),
                applied,
                pending: None,
                durable,
                journal_at_checkpoint: 0,
                checkpoint_at: Instant::now(),
                checkpoint_every: CHECKPOINT_EVERY,
            }),
        };
        // The indexes as of the durable checkpoint, brought up to what sled holds.
        let mut st = crate::sync::lock(&files.state);
        for record in files.journal.replay_from(durable.1) {
            let record = record?;
            let changes = decode_record(&record.payload).map_err(|e| corrupt(b"journal", e))?;
            let entries = changes
                .into_iter()
                .map(|(c, start)| {
                    let entry = c.area.as_ref().map(|area| Entry {
                        segment: record.at.segment,
                        position: record.at.offset + HEADER + start,
                        len: area.len() as u32,
                        crc: crc32fast::hash(area),
                    });
                    (c, entry)
                })
                .collect();
            files.write_index(&mut st, entries)?;
        }
        drop(st);
        Ok(files)
    }

    /// Writes index entries and bounds of applied changes.
    fn write_index(&self, st: &mut State, changes: Vec<(Change, Option<Entry>)>) -> Result<(), StoreError> {
        for (c, entry) in changes {
            let q = c.queue;
            match entry {
                Some(entry) => {
                    self.index.put(&q.0, q.1, c.offset, entry)?;
                    let b = match st.bounds.get(&q) {
                        None => Bounds { first: c.offset, last: c.offset, unordered: false },
                        Some(b) => Bounds {
                            first: b.first.min(c.offset),
                            last: b.last.max(c.offset),
                            unordered: b.unordered || c.offset <= b.last,
                        },
                    };
                    st.bounds.insert(q.clone(), b);
                }
                None => {
                    self.index.clear(&q.0, q.1, c.offset)?;
                    if let Some(mut b) = st.bounds.get(&q).copied() {
                        if c.offset == b.first {
                            b.first = self.next_written(&q, c.offset, b.last, false)?.unwrap_or(u64::MAX);
                        }
                        if c.offset == b.last && b.first != u64::MAX {
                            b.last = self.next_written(&q, b.first, c.offset, true)?.unwrap_or(b.first);
                        }
                        if b.first == u64::MAX {
                            st.bounds.remove(&q);
                        } else {
                            st.bounds.insert(q.clone(), b);
                        }
                    }
                }
            }
            st.changed.insert(q);
        }
        Ok(())
    }

    /// The first offset with an entry after `from` up to `to` (or, `back`, the last before
    /// `to` down to `from`).
    fn next_written(&self, q: &QueueId, from: u64, to: u64, back: bool) -> Result<Option<u64>, StoreError> {
        if back {
            for o in (from..to).rev() {
                if self.index.get(&q.0, q.1, o)?.is_some() {
                    return Ok(Some(o));
                }
            }
        } else {
            for o in from.saturating_add(1)..=to {
                if self.index.get(&q.0, q.1, o)?.is_some() {
                    return Ok(Some(o));
                }
            }
        }
        Ok(None)
    }

    /// The chunks of a message, `None` when it has no entry.
    fn chunks(&self, q: &QueueId, offset: u64) -> Result<Option<Chunks>, StoreError> {
        let Some(e) = self.index.get(&q.0, q.1, offset)? else { return Ok(None) };
        let key = key_of(q, offset, 0);
        let Some(area) = self.journal.read_raw(e.segment, e.position, e.len as usize)? else {
            return Err(corrupt(&key, format!("journal segment {} is gone", e.segment)));
        };
        if crc32fast::hash(&area) != e.crc {
            return Err(corrupt(&key, format!("message bytes at {}:{} fail their checksum", e.segment, e.position)));
        }
        decode_area(&area).map(Some).map_err(|err| corrupt(&key, err))
    }

    /// Writes the message-chunk part of a batch to the journal and syncs it; returns what the
    /// sled part must also write, and the writer, held until [`Prepared::applied`].
    pub fn prepare<'a>(&'a self, ops: &[&Op]) -> Result<(Prepared<'a>, Vec<SledWrite>), StoreError> {
        let st = crate::sync::lock(&self.state);
        // Each message touched, in first-touch order, with its chunks as the batch leaves them.
        let mut order: Vec<(QueueId, u64)> = Vec::new();
        // Its chunks now, and whether it had any before the batch.
        let mut now: HashMap<(QueueId, u64), (Chunks, bool)> = HashMap::new();
        for op in ops {
            let (k, value) = match op {
                Op::Put(k, v) => (k, Some(v)),
                Op::Delete(k) => (k, None),
            };
            let (topic, queue, offset, chunk) = chunk_key(k)?;
            let id = ((topic, queue), offset);
            if !now.contains_key(&id) {
                let current = self.chunks(&id.0, offset)?;
                let had = current.is_some();
                now.insert(id.clone(), (current.unwrap_or_default(), had));
                order.push(id.clone());
            }
            let (chunks, _) = now.get_mut(&id).ok_or_else(|| StoreError::Io("message state lost".into()))?;
            match value {
                Some(v) => {
                    chunks.insert(chunk, v.clone());
                }
                None => {
                    chunks.remove(&chunk);
                }
            }
        }
        let mut changes = Vec::with_capacity(order.len());
        for id in order {
            let (chunks, had) = now.remove(&id).unwrap_or_default();
            if chunks.is_empty() && !had {
                continue;
            }
            let area = (!chunks.is_empty()).then(|| encode_area(&chunks));
            changes.push(Change { queue: id.0, offset: id.1, area });
        }
        if changes.is_empty() {
            return Ok((Prepared { files: self, state: st, changes: Vec::new(), record: None }, Vec::new()));
        }
        let (payload, starts) = encode_record(&changes);
        let written = self.journal.append(&payload).and_then(|w| self.journal.sync().map(|()| w));
        let (seq, at) = match written {
            Ok(w) => w,
            Err(e) => {
                drop_unapplied(&self.journal, &st)?;
                return Err(e);
            }
        };
        let end = Position { segment: at.segment, offset: at.offset + HEADER + payload.len() as u64 };
        let changes = changes
            .into_iter()
            .zip(starts)
            .map(|(c, start)| {
                let entry = c.area.as_ref().map(|area| Entry {
                    segment: at.segment,
                    position: at.offset + HEADER + start,
                    len: area.len() as u32,
                    crc: crc32fast::hash(area),
                });
                (c, entry)
            })
            .collect();
        let writes = vec![(applied_key(), Some(encode_point(seq, end)))];
        Ok((Prepared { files: self, state: st, changes, record: Some((seq, end)) }, writes))
    }

    /// The value of a message-chunk key.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let (topic, queue, offset, chunk) = chunk_key(key)?;
        Ok(self.chunks(&(topic, queue), offset)?.and_then(|mut c| c.remove(&chunk)))
    }

    /// The message chunks with keys in the range, in key order (reversed with `reverse`), at
    /// most `limit`.
    pub fn scan(
        &self,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<super::Entry>, StoreError> {
        let queues: Vec<(Vec<u8>, QueueId, Bounds)> = {
            let st = crate::sync::lock(&self.state);
            let mut v: Vec<_> = st
                .bounds
                .iter()
                .filter_map(|(q, b)| {
                    let mut prefix = key_of(q, 0, 0);
                    prefix.truncate(prefix.len() - 10);
                    // The queue's keys lie between its prefix and the prefix followed by 0xFF.
                    let mut top = prefix.clone();
                    top.extend_from_slice(&[0xFF; 10]);
                    let below_start = match start {
                        Bound::Included(s) => top.as_slice() < s,
                        Bound::Excluded(s) => top.as_slice() <= s,
                        Bound::Unbounded => false,
                    };
                    let above_end = match end {
                        Bound::Included(e) => prefix.as_slice() > e,
                        Bound::Excluded(e) => prefix.as_slice() >= e,
                        Bound::Unbounded => false,
                    };
                    (!below_start && !above_end).then(|| (prefix, q.clone(), *b))
                })
                .collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            if reverse {
                v.reverse();
            }
            v
        };
        let mut out = Vec::new();
        for (prefix, q, b) in queues {
            if out.len() >= limit {
                break;
            }
            // The offsets of this queue the bounds can reach.
            let from = offset_bound(&prefix, start, false).max(b.first);
            let to = offset_bound(&prefix, end, true).min(b.last);
            if from > to {
                continue;
            }
            let offsets: Box<dyn Iterator<Item = u64>> =
                if reverse { Box::new((from..=to).rev()) } else { Box::new(from..=to) };
            for offset in offsets {
                if out.len() >= limit {
                    break;
                }
                let Some(chunks) = self.chunks(&q, offset)? else { continue };
                let mut pairs: Vec<(Vec<u8>, Vec<u8>)> =
                    chunks.into_iter().map(|(n, v)| (key_of(&q, offset, n), v)).collect();
                if reverse {
                    pairs.reverse();
                }
                for (k, v) in pairs {
                    if out.len() < limit && in_range(&k, start, end) {
                        out.push((k, v));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Called after sled's flush: a pending checkpoint is now durable, so the journal segments
    /// and index files it no longer needs go; then, when one is due, a new checkpoint (the
    /// indexes synced): the sled writes to make for it.
    pub fn flushed(&self) -> Result<Vec<SledWrite>, StoreError> {
        let mut st = crate::sync::lock(&self.state);
        if let Some((point, live_from)) = st.pending.take() {
            st.durable = point;
            self.journal.remove_before(live_from.min(point.1.segment))?;
            for (q, b) in &st.bounds {
                self.index.remove_below(&q.0, q.1, b.first)?;
            }
        }
        let written = self.journal.size_on_disk();
        let due = st.checkpoint_at.elapsed() >= st.checkpoint_every
            || written.saturating_sub(st.journal_at_checkpoint) >= CHECKPOINT_BYTES;
        if !due || st.applied.0 == st.durable.0 {
            return Ok(Vec::new());
        }
        self.index.sync()?;
        // The oldest segment a live message is in.
        let mut live_from = u64::MAX;
        for (q, b) in &st.bounds {
            let oldest = if b.unordered {
                let mut min = u64::MAX;
                for o in b.first..=b.last {
                    if let Some(e) = self.index.get(&q.0, q.1, o)? {
                        min = min.min(e.segment);
                    }
                }
                min
            } else {
                self.index.get(&q.0, q.1, b.first)?.map_or(u64::MAX, |e| e.segment)
            };
            live_from = live_from.min(oldest);
        }
        let mut writes = vec![(checkpoint_key(), Some(encode_point(st.applied.0, st.applied.1)))];
        for q in std::mem::take(&mut st.changed) {
            let value = st.bounds.get(&q).map(|b| {
                let mut e = Encoder::new();
                e.u64(b.first).u64(b.last).bool(b.unordered);
                e.finish()
            });
            writes.push((bounds_key(&q), value));
        }
        st.pending = Some((st.applied, live_from));
        st.journal_at_checkpoint = written;
        st.checkpoint_at = Instant::now();
        Ok(writes)
    }

    /// Sets the time between checkpoints (tests: `ZERO` takes one at every flush).
    #[cfg(test)]
    pub fn set_checkpoint_every(&self, every: Duration) {
        let mut st = crate::sync::lock(&self.state);
        st.checkpoint_every = every;
        st.checkpoint_at = Instant::now();
    }

    /// The journal's segment ids (tests).
    #[cfg(test)]
    pub fn journal_segments(&self) -> Vec<u64> {
        self.journal.segments()
    }

    /// Bytes of the journal and the index files.
    pub fn size_on_disk(&self) -> u64 {
        self.journal.size_on_disk() + self.index.size_on_disk()
    }
}

impl Prepared<'_> {
    /// The sled part of the batch was applied: the index entries follow it.
    pub fn applied(mut self) -> Result<(), StoreError> {
        let changes = std::mem::take(&mut self.changes);
        if let Some(record) = self.record.take() {
            self.state.applied = record;
        }
        let files = self.files;
        files.write_index(&mut self.state, changes)
    }
}

impl Drop for Prepared<'_> {
    /// A batch whose sled part failed: its journal record must not be read back as applied
    /// once a later batch is.
    fn drop(&mut self) {
        if self.record.is_some() {
            if let Err(e) = drop_unapplied(&self.files.journal, &self.state) {
                tracing::error!(error = %e, "cannot drop a journal record sled never took");
            }
        }
    }
}

/// Cuts the journal back to the last record sled took; when that fails, every later write
/// fails too (the journal would hold a record no batch made), until a restart cuts it.
fn drop_unapplied(journal: &Journal, st: &State) -> Result<(), StoreError> {
    let result = journal.truncate(st.applied.1, st.applied.0 + 1);
    if result.is_err() {
        journal.refuse_appends();
    }
    result
}

/// Whether a key is in this module's region (message chunks).
pub fn owns(key: &[u8]) -> bool {
    is_message_chunk(key)
}

/// The offset a bound of a scan allows in the queue with key prefix `prefix`: the lowest
/// (`upper` false) or highest (`upper` true) offset whose keys may lie within it.
fn offset_bound(prefix: &[u8], bound: Bound<&[u8]>, upper: bool) -> u64 {
    let key = match bound {
        Bound::Included(k) | Bound::Excluded(k) => k,
        Bound::Unbounded => return if upper { u64::MAX } else { 0 },
    };
    if key.starts_with(prefix) {
        let rest = &key[prefix.len()..];
        let mut b = [if upper { 0xFF } else { 0 }; 8];
        let n = rest.len().min(8);
        b[..n].copy_from_slice(&rest[..n]);
        // A shorter bound covers every offset that starts with it.
        return u64::from_be_bytes(b);
    }
    // A bound before the whole queue: a lower one allows every offset, an upper one none (0,
    // which the exact check of each key then refuses); after it, the reverse.
    if key < prefix {
        0
    } else {
        u64::MAX
    }
}
