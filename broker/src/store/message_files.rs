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
//! reached sled is cut off at the next open. Until sled's flush makes the batch durable, its
//! index entries are kept in memory (reads look there first); the flush writes them to the index
//! files, in the page cache. An entry in an index file thus always points at a record the next
//! open keeps: a process killed between sled's apply and its flush loses the batch's sled part,
//! the open cuts its record off, and no index file still points at the bytes that later records
//! then overwrite.
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
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
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
    /// The last record whose entries are in the index files.
    indexed: (u64, Position),
    /// A checkpoint written to sled, durable at the next flush; with the segment below which
    /// the journal holds nothing live at that point.
    pending: Option<((u64, Position), u64)>,
    /// The last checkpoint known durable.
    durable: (u64, Position),
    /// Journal bytes appended since the last checkpoint.
    appended: u64,
    checkpoint_at: Instant,
    /// Time between checkpoints ([`CHECKPOINT_EVERY`]; tests shorten it).
    checkpoint_every: Duration,
}

/// A message's index entry after a record (`None`: cleared).
type Touched = (QueueId, u64, Option<Entry>);

/// Index entries of records applied to sled but not yet flushed there: not in the index files.
#[derive(Default)]
struct Unindexed {
    /// The records in order: number, end, and each message's entry (`None`: cleared).
    records: VecDeque<(u64, Position, Vec<Touched>)>,
    /// Each message's latest entry among them, with the record's number.
    latest: HashMap<(QueueId, u64), (u64, Option<Entry>)>,
}

/// The message chunks of one store directory.
pub struct MessageFiles {
    journal: Journal,
    index: QueueIndex,
    state: Mutex<State>,
    /// Its own lock, taken after `state` (readers take only this one, briefly).
    unindexed: Mutex<Unindexed>,
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
    /// Bytes of the record.
    bytes: u64,
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
                indexed: durable,
                pending: None,
                durable,
                appended: 0,
                checkpoint_at: Instant::now(),
                checkpoint_every: CHECKPOINT_EVERY,
            }),
            unindexed: Mutex::new(Unindexed::default()),
        };
        // The indexes as of the durable checkpoint, brought up to what sled holds (every record
        // left in the journal: sled took them all).
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
            let end = Position {
                segment: record.at.segment,
                offset: record.at.offset + HEADER + record.payload.len() as u64,
            };
            files.note_applied(&mut st, (record.seq, end), entries)?;
        }
        files.write_index(&mut st, u64::MAX)?;
        drop(st);
        Ok(files)
    }

    /// The index entry of a message: one not yet in the index files first.
    fn entry(&self, q: &QueueId, offset: u64) -> Result<Option<Entry>, StoreError> {
        // The map lookup clones the queue name only when the map holds anything.
        {
            let u = crate::sync::lock(&self.unindexed);
            if !u.latest.is_empty() {
                if let Some((_, e)) = u.latest.get(&(q.clone(), offset)) {
                    return Ok(*e);
                }
            }
        }
        // Entries leave the map only once written to the files, so a miss above is found here.
        self.index.get(&q.0, q.1, offset)
    }

    /// Records the entries of an applied record (kept in memory until [`Self::write_index`])
    /// and updates the queues' bounds.
    fn note_applied(
        &self,
        st: &mut State,
        record: (u64, Position),
        changes: Vec<(Change, Option<Entry>)>,
    ) -> Result<(), StoreError> {
        let mut touched = Vec::with_capacity(changes.len());
        for (c, entry) in changes {
            {
                let mut u = crate::sync::lock(&self.unindexed);
                u.latest.insert((c.queue.clone(), c.offset), (record.0, entry));
            }
            self.update_bounds(st, &c.queue, c.offset, entry.is_some())?;
            touched.push((c.queue, c.offset, entry));
        }
        crate::sync::lock(&self.unindexed).records.push_back((record.0, record.1, touched));
        Ok(())
    }

    /// Writes the entries of the applied records up to number `upto` to the index files.
    fn write_index(&self, st: &mut State, upto: u64) -> Result<(), StoreError> {
        loop {
            let next = {
                let mut u = crate::sync::lock(&self.unindexed);
                match u.records.front() {
                    Some((seq, _, _)) if *seq <= upto => u.records.pop_front(),
                    _ => None,
                }
            };
            let Some((seq, end, touched)) = next else { return Ok(()) };
            for (q, offset, entry) in &touched {
                match entry {
                    Some(e) => self.index.put(&q.0, q.1, *offset, *e)?,
                    None => self.index.clear(&q.0, q.1, *offset)?,
                }
            }
            // Written: readers now find these entries in the files.
            let mut u = crate::sync::lock(&self.unindexed);
            for (q, offset, _) in touched {
                let key = (q, offset);
                if u.latest.get(&key).is_some_and(|(s, _)| *s == seq) {
                    u.latest.remove(&key);
                }
            }
            st.indexed = (seq, end);
        }
    }

    /// A queue's bounds after its message at `offset` was written (`set`) or deleted.
    fn update_bounds(&self, st: &mut State, q: &QueueId, offset: u64, set: bool) -> Result<(), StoreError> {
        if set {
            let b = match st.bounds.get(q) {
                None => Bounds { first: offset, last: offset, unordered: false },
                Some(b) => Bounds {
                    first: b.first.min(offset),
                    last: b.last.max(offset),
                    unordered: b.unordered || offset <= b.last,
                },
            };
            st.bounds.insert(q.clone(), b);
        } else if let Some(mut b) = st.bounds.get(q).copied() {
            if offset == b.first {
                b.first = self.next_written(q, offset, b.last, false)?.unwrap_or(u64::MAX);
            }
            if offset == b.last && b.first != u64::MAX {
                b.last = self.next_written(q, b.first, offset, true)?.unwrap_or(b.first);
            }
            if b.first == u64::MAX {
                st.bounds.remove(q);
            } else {
                st.bounds.insert(q.clone(), b);
            }
        }
        st.changed.insert(q.clone());
        Ok(())
    }

    /// The first offset with an entry after `from` up to `to` (or, `back`, the last before
    /// `to` down to `from`).
    fn next_written(&self, q: &QueueId, from: u64, to: u64, back: bool) -> Result<Option<u64>, StoreError> {
        if back {
            for o in (from..to).rev() {
                if self.entry(q, o)?.is_some() {
                    return Ok(Some(o));
                }
            }
        } else {
            for o in from.saturating_add(1)..=to {
                if self.entry(q, o)?.is_some() {
                    return Ok(Some(o));
                }
            }
        }
        Ok(None)
    }

    /// The chunks of a message, `None` when it has no entry.
    fn chunks(&self, q: &QueueId, offset: u64) -> Result<Option<Chunks>, StoreError> {
        let Some(e) = self.entry(q, offset)? else { return Ok(None) };
        let key = key_of(q, offset, 0);
        let Some(area) = self.journal.read_raw(e.segment, e.position, e.len as usize)? else {
            // Its segment was deleted: fine if the message was deleted meanwhile (a read racing
            // retention).
            if self.entry(q, offset)?.is_none() {
                return Ok(None);
            }
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
            return Ok((Prepared { files: self, state: st, changes: Vec::new(), record: None, bytes: 0 }, Vec::new()));
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
        let bytes = HEADER + payload.len() as u64;
        Ok((Prepared { files: self, state: st, changes, record: Some((seq, end)), bytes }, writes))
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

    /// The number of the last record applied to sled; a flush of sled that starts after this
    /// call makes it durable (pass it to [`Self::flushed`]).
    pub fn applied(&self) -> u64 {
        crate::sync::lock(&self.state).applied.0
    }

    /// Called after a flush of sled that started after [`Self::applied`] answered `durable`:
    /// the entries of the records up to it go to the index files; a pending checkpoint is now
    /// durable, so the journal segments and index files it no longer needs go; then, when one
    /// is due, a new checkpoint (the indexes synced): the sled writes to make for it.
    pub fn flushed(&self, durable: u64) -> Result<Vec<SledWrite>, StoreError> {
        let mut st = crate::sync::lock(&self.state);
        self.write_index(&mut st, durable)?;
        if let Some((point, live_from)) = st.pending.take() {
            st.durable = point;
            self.journal.remove_before(live_from.min(point.1.segment))?;
            for (q, b) in &st.bounds {
                self.index.remove_below(&q.0, q.1, b.first)?;
            }
        }
        let due = st.checkpoint_at.elapsed() >= st.checkpoint_every || st.appended >= CHECKPOINT_BYTES;
        if !due || st.indexed.0 == st.durable.0 {
            return Ok(Vec::new());
        }
        self.index.sync()?;
        // The oldest segment a live message is in.
        let mut live_from = u64::MAX;
        for (q, b) in &st.bounds {
            let oldest = if b.unordered {
                let mut min = u64::MAX;
                for o in b.first..=b.last {
                    if let Some(e) = self.entry(q, o)? {
                        min = min.min(e.segment);
                    }
                }
                min
            } else {
                self.entry(q, b.first)?.map_or(u64::MAX, |e| e.segment)
            };
            live_from = live_from.min(oldest);
        }
        let mut writes = vec![(checkpoint_key(), Some(encode_point(st.indexed.0, st.indexed.1)))];
        for q in std::mem::take(&mut st.changed) {
            let value = st.bounds.get(&q).map(|b| {
                let mut e = Encoder::new();
                e.u64(b.first).u64(b.last).bool(b.unordered);
                e.finish()
            });
            writes.push((bounds_key(&q), value));
        }
        st.pending = Some((st.indexed, live_from));
        st.appended = 0;
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
    /// The sled part of the batch was applied: its index entries are kept until sled's next
    /// flush.
    pub fn applied(mut self) -> Result<(), StoreError> {
        let changes = std::mem::take(&mut self.changes);
        let Some(record) = self.record.take() else { return Ok(()) };
        self.state.appended += self.bytes;
        self.state.applied = record;
        let files = self.files;
        files.note_applied(&mut self.state, record, changes)
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key(offset: u64) -> Vec<u8> {
        key_of(&("t".to_string(), 0), offset, 0)
    }

    /// Writes message `offset` with a body of `byte`s as a batch sled applied; returns the sled
    /// writes of the batch, as sled would hold them.
    fn put(files: &MessageFiles, offset: u64, byte: u8) -> Vec<(Vec<u8>, Vec<u8>)> {
        let op = Op::Put(key(offset), vec![byte; 256]);
        let (prepared, writes) = files.prepare(&[&op]).unwrap();
        prepared.applied().unwrap();
        writes.into_iter().map(|(k, v)| (k, v.unwrap())).collect()
    }

    #[test]
    fn a_batch_sled_applied_but_never_flushed_leaves_no_index_entry_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let files = MessageFiles::open(dir.path(), Vec::new()).unwrap();
        let kept = put(&files, 0, 1);
        files.flushed(files.applied()).unwrap(); // sled's flush: the first batch is durable
        put(&files, 1, 2);
        assert_eq!(files.get(&key(1)).unwrap(), Some(vec![2; 256]), "readable once sled applied it");
        // The process dies before sled's next flush: sled comes back with the first batch only,
        // and gives offset 1 out again.
        drop(files);
        let files = MessageFiles::open(dir.path(), kept).unwrap();
        assert_eq!(files.get(&key(1)).unwrap(), None);
        assert_eq!(files.get(&key(0)).unwrap(), Some(vec![1; 256]));
        let kept = put(&files, 1, 3);
        assert_eq!(files.get(&key(1)).unwrap(), Some(vec![3; 256]));
        files.flushed(files.applied()).unwrap();
        drop(files);
        let files = MessageFiles::open(dir.path(), kept).unwrap();
        assert_eq!(files.get(&key(1)).unwrap(), Some(vec![3; 256]));
        assert_eq!(files.scan(Bound::Unbounded, Bound::Unbounded, 10, false).unwrap().len(), 2);
    }

    #[test]
    fn entries_not_yet_in_the_files_are_read_scanned_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let files = MessageFiles::open(dir.path(), Vec::new()).unwrap();
        for o in 0..4 {
            put(&files, o, o as u8);
        }
        let newest = files.scan(Bound::Unbounded, Bound::Unbounded, 2, true).unwrap();
        assert_eq!(newest.iter().map(|(_, v)| v[0]).collect::<Vec<_>>(), [3, 2]);
        // The oldest deleted before any flush: the queue then starts at 1.
        let op = Op::Delete(key(0));
        let (prepared, _) = files.prepare(&[&op]).unwrap();
        prepared.applied().unwrap();
        assert_eq!(files.get(&key(0)).unwrap(), None);
        files.flushed(files.applied()).unwrap();
        assert_eq!(files.get(&key(0)).unwrap(), None);
        let all = files.scan(Bound::Unbounded, Bound::Unbounded, 10, false).unwrap();
        assert_eq!(all.iter().map(|(_, v)| v[0]).collect::<Vec<_>>(), [1, 2, 3]);
    }
}
