//! Message chunks kept out of sled: each written once, in the [`Journal`] record of its group
//! commit, and found through per-queue indexes ([`QueueIndex`]) — part 2 of the broker's own
//! store (docs/storage.md, "Building the store"), used by the sled store of a data directory
//! created with `--message-files true`. Parts 3 and 4, the records looked up by key ("keyed":
//! the message-id index since schema 7, every per-message record since schema 8, see
//! [`keyed_key`]), are kept here too: their changes ride in the same journal record and are
//! then kept in [`SortedRuns`], written out at each checkpoint.
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
//! A batch with no sled part at all writes no applied key either: its record is marked
//! "alone", durable once synced, and an open keeps the records past sled's last one (or past
//! the durable checkpoint, when later) as long as they are alone, up to the first that is not,
//! which never happened. The committer flushes
//! each group before it applies the next, so a record with a sled part is durable in sled
//! before any record after it is acknowledged.
//!
//! The keyed changes of a record follow the same path: kept in memory (and read from
//! there) until sled's flush, then applied to the sorted runs' memory.
//!
//! # Checkpoints
//! At most every [`CHECKPOINT_EVERY`] (or [`CHECKPOINT_BYTES`] of journal), after a flush:
//! the index files are synced, the keyed changes in memory are written to a new run, and
//! the checkpoint — the last record applied, each changed queue's bounds, the list of runs — is
//! written to sled, durable at the next flush. An open applies the records after the durable
//! checkpoint to the indexes (and the runs' memory) again. Once a checkpoint is
//! durable, journal segments below both it and every queue's oldest message are deleted, as are
//! index files below each queue's first offset and runs merged away before it. A thread merges
//! runs in the background.
//!
//! # Order within a queue
//! A queue whose messages are written in offset order (the broker's only way) has its oldest
//! bytes at its first offset. A write below a queue's last offset marks it unordered (kept with
//! its bounds), and its oldest segment is then found by reading all its entries.

use super::journal::{Journal, JournalOptions, Position, HEADER};
use super::keys::{is_message_chunk, tag, Key};
use super::queue_index::{Entry, QueueIndex};
use super::sorted_runs::{Change as KeyedChange, SortedRuns};
use super::value_log::RESERVED;
use super::{Op, StoreError};
use crate::codec::{Decoder, Encoder};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
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

/// The sled key whose presence says that this store also keeps records looked up by key here,
/// in sorted runs (stores created before schema 7 keep them all in sled). Its value names the
/// kinds: 1, the message-id index (stores of schema 7), or 2 ([`KEYED_LATEST`]), every
/// per-message record.
pub fn keyed_key() -> Vec<u8> {
    vec![RESERVED, b'j', b'i']
}

/// The kinds a store of schema 7 keeps in sorted runs: the message-id index.
const KEYED_IDS: &[u8] = &[tag::MESSAGE_ID];

/// The kinds a store created since schema 8 keeps in sorted runs: every record written per
/// message — the message-id and message-key indexes, consumer cursors and deliveries in flight,
/// transaction records, half messages, the (topic, message id) → transaction index and the
/// due index. sled keeps the configuration and this module's own keys, so a batch of sends,
/// transactions, receipts or acks writes nothing to sled.
const KEYED_PER_MESSAGE: &[u8] = &[
    tag::MESSAGE_ID,
    tag::MESSAGE_KEY,
    tag::CURSOR,
    tag::INFLIGHT,
    tag::TXN,
    tag::HALF_CHUNK,
    tag::TXN_BY_MESSAGE,
    tag::TXN_DUE,
];

/// The value of [`keyed_key`] a new store gets.
pub const KEYED_LATEST: u8 = 2;

/// The runs of keyed records a checkpoint lists.
fn runs_key() -> Vec<u8> {
    vec![RESERVED, b'j', b'r']
}

fn encode_runs(runs: &[u64]) -> Vec<u8> {
    let mut e = Encoder::new();
    e.u32(runs.len() as u32);
    for r in runs {
        e.u64(*r);
    }
    e.finish()
}

fn decode_runs(key: &[u8], v: &[u8]) -> Result<Vec<u64>, StoreError> {
    let mut d = Decoder::new(v);
    (|| {
        let n = d.u32()?;
        let runs = (0..n).map(|_| d.u64()).collect::<Result<Vec<_>, _>>()?;
        d.finish()?;
        Ok::<_, crate::codec::CodecError>(runs)
    })()
    .map_err(|e| corrupt(key, e))
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

/// The journal payload of `changes` and of the keyed changes `keyed` (a section left
/// out when empty: records of stores without the index never have it), marked `alone` when its
/// batch wrote nothing to sled (the keyed section then always written, followed by a 1), and
/// where each area starts in it.
fn encode_record(changes: &[Change], keyed: &[KeyedChange], alone: bool) -> (Vec<u8>, Vec<u64>) {
    let mut e = Encoder::with_capacity(
        changes.iter().map(|c| c.area.as_ref().map_or(0, Vec::len) + 64).sum::<usize>()
            + keyed.iter().map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len) + 12).sum::<usize>(),
    );
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
    if !keyed.is_empty() || alone {
        e.u32(keyed.len() as u32);
        for (k, v) in keyed {
            e.bytes(k);
            match v {
                Some(v) => e.u8(SET).bytes(v),
                None => e.u8(CLEAR),
            };
        }
    }
    if alone {
        e.u8(1);
    }
    (e.finish(), starts)
}

/// A journal payload's changes, each with where its area starts, its keyed changes, and
/// whether its batch wrote nothing to sled.
type Decoded = (Vec<(Change, u64)>, Vec<KeyedChange>, bool);

/// The changes of a journal payload, each with where its area starts, its keyed changes, and
/// whether its batch wrote nothing to sled.
fn decode_record(payload: &[u8]) -> Result<Decoded, crate::codec::CodecError> {
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
    let mut keyed = Vec::new();
    if !d.is_empty() {
        for _ in 0..d.u32()? {
            let key = d.bytes()?.to_vec();
            match d.u8()? {
                SET => keyed.push((key, Some(d.bytes()?.to_vec()))),
                CLEAR => keyed.push((key, None)),
                k => return Err(crate::codec::invalid("journal keyed change", format!("kind {k}"))),
            }
        }
    }
    let alone = !d.is_empty()
        && match d.u8()? {
            1 => true,
            k => return Err(crate::codec::invalid("journal record", format!("mark {k}"))),
        };
    d.finish()?;
    Ok((out, keyed, alone))
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
    /// the journal holds nothing live at that point, and the runs of keyed records it
    /// lists.
    pending: Option<((u64, Position), u64, Vec<u64>)>,
    /// The last checkpoint known durable.
    durable: (u64, Position),
    /// A checkpoint whose files are being made durable in the background.
    preparing: Option<Preparing>,
    /// Whether a checkpoint waits for its files in the flush that starts it (tests).
    wait_for_files: bool,
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
    /// The records in order: number, end, each message's entry (`None`: cleared) and the
    /// keyed changes.
    records: VecDeque<(u64, Position, Vec<Touched>, Vec<KeyedChange>)>,
    /// Each message's latest entry among them, with the record's number.
    latest: HashMap<(QueueId, u64), (u64, Option<Entry>)>,
    /// Each keyed record's latest change among them, with the record's number.
    keyed: BTreeMap<Vec<u8>, (u64, Option<Vec<u8>>)>,
}

/// The answer of the background thread to one checkpoint.
#[derive(Default)]
struct Outcome {
    result: Mutex<Option<Result<(), StoreError>>>,
    ready: std::sync::Condvar,
}

impl Outcome {
    /// The answer, once given (taken: it is given once).
    fn take(&self) -> Option<Result<(), StoreError>> {
        crate::sync::lock(&self.result).take()
    }

    /// Waits for the answer; returns it under its lock, still to be taken.
    fn given(&self) -> std::sync::MutexGuard<'_, Option<Result<(), StoreError>>> {
        let mut r = crate::sync::lock(&self.result);
        while r.is_none() {
            r = self.ready.wait(r).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        r
    }

    /// Waits for the answer, leaving it to be taken.
    fn wait_given(&self) {
        drop(self.given());
    }

    /// Waits for the answer and takes it.
    fn wait(&self) -> Result<(), StoreError> {
        self.given().take().unwrap_or_else(|| Err(StoreError::Io("a checkpoint's answer was taken twice".into())))
    }
}

/// A checkpoint whose files the background thread is making durable: its sled writes are made
/// at the first flush after that.
struct Preparing {
    point: (u64, Position),
    live_from: u64,
    bounds: Vec<SledWrite>,
    outcome: Arc<Outcome>,
}

/// Work for the store's background thread.
enum Work {
    /// Make a checkpoint's files durable.
    Checkpoint(Arc<Outcome>),
    /// Delete the files a durable checkpoint no longer needs: the runs merged away that
    /// `runs` (its list) does not name, and the journal segments before `before`.
    Reclaim { runs: Vec<u64>, before: u64 },
}

/// The store's background thread: makes each checkpoint's files durable (the index files
/// synced, the keyed changes set aside written to a run) and deletes what a durable one no
/// longer needs, off the committer's thread, and between checkpoints makes the journal's
/// next segment ahead and merges runs of the keyed records. It runs at a lower CPU priority
/// ([`super::segment_file::run_as_background`]). Stopped and joined on drop.
struct Background {
    jobs: Option<std::sync::mpsc::Sender<Work>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Background {
    fn start(
        journal: Arc<Journal>,
        index: Arc<QueueIndex>,
        keyed: Option<Arc<SortedRuns>>,
    ) -> Result<Background, StoreError> {
        use std::sync::mpsc::RecvTimeoutError;
        let (jobs, rx) = std::sync::mpsc::channel::<Work>();
        let thread = std::thread::Builder::new()
            .name("txmq-checkpoint".into())
            .spawn(move || {
                super::segment_file::run_as_background();
                let mut idle = Duration::from_millis(100);
                loop {
                    match rx.recv_timeout(idle) {
                        Ok(Work::Checkpoint(outcome)) => {
                            let result =
                                index.sync().and_then(|()| keyed.as_ref().map_or(Ok(()), |r| r.write_frozen()));
                            *crate::sync::lock(&outcome.result) = Some(result);
                            outcome.ready.notify_all();
                        }
                        Ok(Work::Reclaim { runs, before }) => {
                            // A file left by a failure here is garbage, never read: an open
                            // deletes runs its checkpoint does not list and replays the
                            // journal from the checkpoint.
                            let deleted = keyed
                                .as_ref()
                                .map_or(Ok(()), |r| r.release(&runs))
                                .and_then(|()| journal.remove_before(before));
                            if let Err(e) = deleted {
                                tracing::error!(error = %e, "cannot delete files the store no longer needs");
                            }
                        }
                        Err(RecvTimeoutError::Timeout) => {
                            // One merge at a time: a checkpoint waits for one at most.
                            let work = journal
                                .prepare_spare()
                                .map_err(|e| ("cannot make the journal's next segment", e))
                                .and_then(|_| {
                                    keyed
                                        .as_ref()
                                        .map_or(Ok(false), |r| r.merge())
                                        .map_err(|e| ("cannot merge runs of keyed records", e))
                                });
                            idle = match work {
                                Err((what, e)) => {
                                    tracing::error!(error = %e, "{what}");
                                    Duration::from_secs(10)
                                }
                                Ok(_) => Duration::from_millis(100),
                            };
                        }
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
            })
            .map_err(|e| StoreError::Io(e.to_string()))?;
        Ok(Background { jobs: Some(jobs), thread: Some(thread) })
    }

    fn send(&self, work: Work) -> Result<(), StoreError> {
        self.jobs
            .as_ref()
            .and_then(|j| j.send(work).ok())
            .ok_or_else(|| StoreError::Io("the checkpoint thread is gone".into()))
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The message chunks of one store directory.
pub struct MessageFiles {
    journal: Arc<Journal>,
    index: Arc<QueueIndex>,
    /// The keyed records, when this store keeps some ([`keyed_key`]).
    keyed: Option<Arc<SortedRuns>>,
    /// The key tags of the kinds `keyed` holds (empty without it).
    kinds: &'static [u8],
    background: Background,
    state: Mutex<State>,
    /// Its own lock, taken after `state` (readers take only this one, briefly).
    unindexed: Mutex<Unindexed>,
    /// Journal records the open applied again (those after the durable checkpoint).
    replayed: u64,
    /// Run by the next read of a message between finding its index entry and reading its
    /// bytes: what a racing writer and retention may do there (tests).
    #[cfg(test)]
    between_lookup_and_read: Mutex<Option<Race>>,
}

/// What a test runs between a read's index lookup and its read of the bytes.
#[cfg(test)]
type Race = Box<dyn FnOnce(&MessageFiles, Entry) + Send>;

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
    keyed: Vec<KeyedChange>,
    record: Option<(u64, Position)>,
    /// Bytes of the record.
    bytes: u64,
}

impl MessageFiles {
    /// Opens the files in `dir` with this module's sled keys as stored (`stored`: every key
    /// under [`prefix`] with its value): cuts off journal records sled never took and applies
    /// those after the durable checkpoint to the indexes again.
    pub fn open(dir: &Path, stored: Vec<(Vec<u8>, Vec<u8>)>) -> Result<MessageFiles, StoreError> {
        let (mut applied, mut durable) = (None, None);
        let mut bounds = HashMap::new();
        let (mut kinds, mut runs): (&'static [u8], _) = (&[], Vec::new());
        for (k, v) in &stored {
            if *k == keyed_key() {
                kinds = match v.as_slice() {
                    [1] => KEYED_IDS,
                    [2] => KEYED_PER_MESSAGE,
                    _ => return Err(corrupt(k, "unknown set of kinds kept in sorted runs")),
                };
            } else if *k == runs_key() {
                runs = decode_runs(k, v)?;
            } else if *k == applied_key() {
                applied = Some(decode_point(k, v)?);
            } else if *k == checkpoint_key() {
                durable = Some(decode_point(k, v)?);
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
        // Only the segments from the durable checkpoint's on are read through: the records
        // before it are read again only through index entries, which carry their checksums.
        let verify_from = durable.map_or(0, |(_, at): (u64, Position)| at.segment);
        let journal = Arc::new(Journal::open_from(&dir.join("journal"), JournalOptions::default(), verify_from)?);
        let index = Arc::new(QueueIndex::open(&dir.join("queues"), PER_FILE)?);
        let first = Position { segment: journal.segments().first().copied().unwrap_or(1), offset: 0 };
        let (applied, durable) = (applied.unwrap_or((0, first)), durable.unwrap_or((0, first)));
        let (next, _) = journal.end();
        if next - 1 < applied.0.max(durable.0) {
            return Err(corrupt(
                &applied_key(),
                format!("sled took journal record {} but the journal ends at {}", applied.0.max(durable.0), next - 1),
            ));
        }
        // Stores of schema 7 keep only message ids, in `ids/`.
        let runs_dir = if kinds == KEYED_IDS { "ids" } else { "keyed" };
        let keyed = if kinds.is_empty() { None } else { Some(Arc::new(SortedRuns::open(&dir.join(runs_dir), &runs)?)) };
        // The directories made above (on a new store) are entries of this one: durable before
        // anything in them counts (the store syncs this one's entry in the data directory).
        super::segment_file::sync_dir(dir)?;
        let mut files = MessageFiles {
            background: Background::start(journal.clone(), index.clone(), keyed.clone())?,
            journal,
            index,
            keyed,
            kinds,
            state: Mutex::new(State {
                bounds,
                changed: HashSet::new(),
                applied: applied.max(durable),
                indexed: durable,
                pending: None,
                preparing: None,
                wait_for_files: false,
                durable,
                appended: 0,
                checkpoint_at: Instant::now(),
                checkpoint_every: CHECKPOINT_EVERY,
            }),
            unindexed: Mutex::new(Unindexed::default()),
            replayed: 0,
            #[cfg(test)]
            between_lookup_and_read: Mutex::new(None),
        };
        // The indexes as of the durable checkpoint, brought up to the records that happened:
        // those sled took (up to its last batch), then those that wrote nothing to sled
        // ("alone": whole in the journal). The first record past sled's last batch that is not
        // alone belongs to a batch that never happened: the journal is cut there, with every
        // record after it (which may depend on it).
        let mut st = crate::sync::lock(&files.state);
        let (mut cut, mut replayed) = (None, 0);
        for record in files.journal.replay_from(durable.1) {
            let record = record?;
            let (changes, keyed, alone) = decode_record(&record.payload).map_err(|e| corrupt(b"journal", e))?;
            if record.seq > applied.0 && !alone {
                cut = Some(record.seq);
                break;
            }
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
            st.applied = st.applied.max((record.seq, record.end));
            files.note_applied(&mut st, (record.seq, record.end), entries, keyed)?;
            replayed += 1;
        }
        if let Some(seq) = cut {
            files.journal.truncate(st.applied.1, seq)?;
        }
        files.write_index(&mut st, u64::MAX)?;
        drop(st);
        if replayed > 0 {
            tracing::info!(records = replayed, "journal records after the last checkpoint applied again");
        }
        files.replayed = replayed;
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
        keyed: Vec<KeyedChange>,
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
        let mut u = crate::sync::lock(&self.unindexed);
        for (k, v) in &keyed {
            u.keyed.insert(k.clone(), (record.0, v.clone()));
        }
        u.records.push_back((record.0, record.1, touched, keyed));
        Ok(())
    }

    /// Writes the entries of the applied records up to number `upto` to the index files.
    fn write_index(&self, st: &mut State, upto: u64) -> Result<(), StoreError> {
        let records: Vec<_> = {
            let mut u = crate::sync::lock(&self.unindexed);
            let n = u.records.iter().take_while(|(seq, _, _, _)| *seq <= upto).count();
            u.records.drain(..n).collect()
        };
        let Some(&(last, end, _, _)) = records.last() else { return Ok(()) };
        // All their entries at once, by queue and offset, the latest change of an offset
        // winning (a stable sort keeps record order among equals): runs of consecutive offsets
        // then take one write each.
        let mut entries: Vec<(&str, u32, u64, Option<Entry>)> = records
            .iter()
            .flat_map(|(_, _, touched, _)| touched.iter().map(|(q, offset, e)| (q.0.as_str(), q.1, *offset, *e)))
            .collect();
        entries.sort_by_key(|&(topic, queue, offset, _)| (topic, queue, offset));
        let mut latest: Vec<(&str, u32, u64, Option<Entry>)> = Vec::with_capacity(entries.len());
        for e in entries {
            match latest.last_mut() {
                Some(l) if (l.0, l.1, l.2) == (e.0, e.1, e.2) => *l = e,
                _ => latest.push(e),
            }
        }
        self.index.write(&latest)?;
        if let Some(runs) = &self.keyed {
            runs.apply(records.iter().flat_map(|(_, _, _, keyed)| keyed.iter().cloned()));
        }
        // Written: readers now find these entries in the files.
        let mut u = crate::sync::lock(&self.unindexed);
        for (seq, _, touched, keyed) in records {
            for (k, _) in keyed {
                if u.keyed.get(&k).is_some_and(|(s, _)| *s == seq) {
                    u.keyed.remove(&k);
                }
            }
            for (q, offset, _) in touched {
                let key = (q, offset);
                if u.latest.get(&key).is_some_and(|(s, _)| *s == seq) {
                    u.latest.remove(&key);
                }
            }
        }
        st.indexed = (last, end);
        Ok(())
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
        #[cfg(test)]
        {
            let race = crate::sync::lock(&self.between_lookup_and_read).take();
            if let Some(race) = race {
                race(self, e);
            }
        }
        let key = key_of(q, offset, 0);
        let failed = match self.journal.read_raw(e.segment, e.position, e.len as usize)? {
            Some(area) if crc32fast::hash(&area) == e.crc => {
                return decode_area(&area).map(Some).map_err(|err| corrupt(&key, err));
            }
            Some(_) => format!("message bytes at {}:{} fail their checksum", e.segment, e.position),
            None => format!("journal segment {} is gone", e.segment),
        };
        // A read racing retention finds its segment deleted, or reused for a later one
        // (`Journal::remove_before`): fine if the message was deleted meanwhile (or written again:
        // read where it is now); damage otherwise.
        match self.entry(q, offset)? {
            None => Ok(None),
            Some(now) if now != e => self.chunks(q, offset),
            Some(_) => Err(corrupt(&key, failed)),
        }
    }

    /// Writes the part of a batch kept here to the journal and syncs it; returns what the sled
    /// part must also write, and the writer, held until [`Prepared::applied`]. `alone`: the
    /// batch has no sled part, so its record is marked whole and sled gets nothing.
    pub fn prepare<'a>(&'a self, ops: &[&Op], alone: bool) -> Result<(Prepared<'a>, Vec<SledWrite>), StoreError> {
        let st = crate::sync::lock(&self.state);
        // Each message touched, in first-touch order, with its chunks as the batch leaves them.
        let mut order: Vec<(QueueId, u64)> = Vec::new();
        // Its chunks now, and whether it had any before the batch.
        let mut now: HashMap<(QueueId, u64), (Chunks, bool)> = HashMap::new();
        let mut keyed: Vec<KeyedChange> = Vec::new();
        for op in ops {
            let (k, value) = match op {
                Op::Put(k, v) => (k, Some(v)),
                Op::Delete(k) => (k, None),
            };
            if self.is_keyed(k) {
                keyed.push((k.clone(), value.cloned()));
                continue;
            }
            let (topic, queue, offset, chunk) = chunk_key(k)?;
            let id = ((topic, queue), offset);
            if !now.contains_key(&id) {
                // A queue's bounds cover every offset with an entry (scans rely on them too), so
                // a message past its last — every append — has no chunks to read: no lookup,
                // no `pread` of an index slot never written, on the writer's thread.
                let past_last = st.bounds.get(&id.0).is_none_or(|b| offset > b.last);
                let current = if past_last { None } else { self.chunks(&id.0, offset)? };
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
        if changes.is_empty() && keyed.is_empty() {
            let nothing = Prepared { files: self, state: st, changes: Vec::new(), keyed, record: None, bytes: 0 };
            return Ok((nothing, Vec::new()));
        }
        let (payload, starts) = encode_record(&changes, &keyed, alone);
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
        let writes = if alone { Vec::new() } else { vec![(applied_key(), Some(encode_point(seq, end)))] };
        let bytes = HEADER + payload.len() as u64;
        Ok((Prepared { files: self, state: st, changes, keyed, record: Some((seq, end)), bytes }, writes))
    }

    /// The value of a key of this module's region ([`Self::owns`]).
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if self.is_keyed(key) {
            if let Some((_, v)) = crate::sync::lock(&self.unindexed).keyed.get(key) {
                return Ok(v.clone());
            }
            // Changes leave the map only once applied to the runs, so a miss above is found here.
            return match &self.keyed {
                Some(runs) => runs.get(key),
                None => Ok(None),
            };
        }
        let (topic, queue, offset, chunk) = chunk_key(key)?;
        Ok(self.chunks(&(topic, queue), offset)?.and_then(|mut c| c.remove(&chunk)))
    }

    /// The keys of this module's region in the range, in key order (reversed with `reverse`),
    /// at most `limit`.
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
        let mut out = self.scan_chunks(start, end, limit, reverse)?;
        let Some(runs) = self.keyed.as_ref().filter(|_| touches(self.kinds, start, end)) else { return Ok(out) };
        // The changes not yet in the runs win over theirs; a deletion among them may hide a key
        // the runs answer, so the runs are asked for that many more.
        let (mut keyed, hidden) = {
            let u = crate::sync::lock(&self.unindexed);
            let pending: Vec<(Vec<u8>, Option<Vec<u8>>)> =
                u.keyed.range::<[u8], _>((start, end)).map(|(k, (_, v))| (k.clone(), v.clone())).collect();
            let hidden = pending.iter().filter(|(_, v)| v.is_none()).count();
            (pending, hidden)
        };
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> =
            runs.scan(start, end, limit + hidden, reverse)?.into_iter().collect();
        for (k, v) in keyed.drain(..) {
            match v {
                Some(v) => merged.insert(k, v),
                None => merged.remove(&k),
            };
        }
        if reverse {
            out.extend(merged.into_iter().rev().take(limit));
            out.sort_by(|a, b| b.0.cmp(&a.0));
        } else {
            out.extend(merged.into_iter().take(limit));
            out.sort_by(|a, b| a.0.cmp(&b.0));
        }
        out.truncate(limit);
        Ok(out)
    }

    /// The message chunks with keys in the range, in key order (reversed with `reverse`), at
    /// most `limit`.
    fn scan_chunks(
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
                    if out.len() < limit && super::sides(&k, start, end) == (true, true) {
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
    /// durable, so the journal segments, index files and runs it no longer needs go. Returns
    /// the sled writes of a checkpoint whose files the background thread has made durable
    /// since; or, when one is due, starts the next: its index files synced and keyed runs
    /// written in the background, its sled writes made at a flush after that.
    pub fn flushed(&self, durable: u64) -> Result<Vec<SledWrite>, StoreError> {
        let mut st = crate::sync::lock(&self.state);
        self.write_index(&mut st, durable)?;
        if let Some((point, live_from, runs)) = st.pending.take() {
            st.durable = point;
            // The runs merged away and the journal segments this checkpoint no longer needs:
            // deleted on the background thread, as unlinking hundreds of megabytes takes tens
            // of milliseconds that every writer would wait for here.
            self.background.send(Work::Reclaim { runs, before: live_from.min(point.1.segment) })?;
            for (q, b) in &st.bounds {
                self.index.remove_below(&q.0, q.1, b.first)?;
            }
        }
        if let Some(p) = st.preparing.take() {
            return match p.outcome.take() {
                None => {
                    st.preparing = Some(p);
                    Ok(Vec::new())
                }
                Some(result) => {
                    result?;
                    Ok(self.checkpoint_writes(&mut st, p))
                }
            };
        }
        let due = st.checkpoint_at.elapsed() >= st.checkpoint_every || st.appended >= CHECKPOINT_BYTES;
        if !due || st.indexed.0 == st.durable.0 {
            return Ok(Vec::new());
        }
        // The keyed changes up to the checkpoint (those written to the indexes) set aside.
        if let Some(keyed) = &self.keyed {
            keyed.freeze();
        }
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
        let mut bounds = Vec::new();
        for q in std::mem::take(&mut st.changed) {
            let value = st.bounds.get(&q).map(|b| {
                let mut e = Encoder::new();
                e.u64(b.first).u64(b.last).bool(b.unordered);
                e.finish()
            });
            bounds.push((bounds_key(&q), value));
        }
        let outcome = Arc::new(Outcome::default());
        self.background.send(Work::Checkpoint(outcome.clone()))?;
        st.appended = 0;
        st.checkpoint_at = Instant::now();
        let p = Preparing { point: st.indexed, live_from, bounds, outcome };
        if st.wait_for_files {
            p.outcome.wait()?;
            return Ok(self.checkpoint_writes(&mut st, p));
        }
        st.preparing = Some(p);
        Ok(Vec::new())
    }

    /// The sled writes of a checkpoint whose files are durable; it is pending from now on.
    fn checkpoint_writes(&self, st: &mut State, p: Preparing) -> Vec<SledWrite> {
        let runs = self.keyed.as_ref().map(|r| r.live()).unwrap_or_default();
        let mut writes = vec![(checkpoint_key(), Some(encode_point(p.point.0, p.point.1)))];
        if self.keyed.is_some() {
            writes.push((runs_key(), Some(encode_runs(&runs))));
        }
        writes.extend(p.bounds);
        st.pending = Some((p.point, p.live_from, runs));
        writes
    }

    /// Journal records the open applied again: those after the durable checkpoint.
    pub fn replayed_at_open(&self) -> u64 {
        self.replayed
    }

    /// Takes a checkpoint at every flush from now on, waiting for its files (a clean shutdown,
    /// [`Store::checkpoint`](super::Store::checkpoint)).
    pub fn checkpoint_at_every_flush(&self) {
        let mut st = crate::sync::lock(&self.state);
        st.checkpoint_every = Duration::ZERO;
        st.wait_for_files = true;
    }

    /// Whether the durable checkpoint covers every applied record (an open would replay none).
    /// Waits a little for a checkpoint whose files are being made durable in the background.
    pub fn nothing_to_replay(&self) -> bool {
        let preparing = {
            let st = crate::sync::lock(&self.state);
            if st.preparing.is_none() && st.pending.is_none() && st.durable.0 == st.applied.0 {
                return true;
            }
            st.preparing.as_ref().map(|p| p.outcome.clone())
        };
        if let Some(outcome) = preparing {
            outcome.wait_given();
        }
        false
    }

    /// Sets the time between checkpoints (tests: `ZERO` takes one at every flush).
    #[cfg(test)]
    pub fn set_checkpoint_every(&self, every: Duration) {
        let mut st = crate::sync::lock(&self.state);
        st.checkpoint_every = every;
        st.wait_for_files = every.is_zero();
        st.checkpoint_at = Instant::now();
    }

    /// Takes a checkpoint at every flush, its files made durable in the background as outside
    /// tests (tests).
    #[cfg(test)]
    pub fn checkpoint_in_background(&self) {
        let mut st = crate::sync::lock(&self.state);
        st.checkpoint_every = Duration::ZERO;
        st.wait_for_files = false;
    }

    /// The journal's segment ids (tests).
    #[cfg(test)]
    pub fn journal_segments(&self) -> Vec<u64> {
        self.journal.segments()
    }

    /// Bytes of the journal and the index files.
    pub fn size_on_disk(&self) -> u64 {
        self.journal.size_on_disk() + self.index.size_on_disk() + self.keyed.as_ref().map_or(0, |r| r.size_on_disk())
    }
}

impl Prepared<'_> {
    /// The sled part of the batch was applied: its index entries are kept until sled's next
    /// flush.
    pub fn applied(mut self) -> Result<(), StoreError> {
        let changes = std::mem::take(&mut self.changes);
        let keyed = std::mem::take(&mut self.keyed);
        let Some(record) = self.record.take() else { return Ok(()) };
        self.state.appended += self.bytes;
        self.state.applied = record;
        let files = self.files;
        files.note_applied(&mut self.state, record, changes, keyed)
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

impl MessageFiles {
    /// Whether a key is in this module's region: message chunks, and the keyed kinds
    /// when this store keeps it.
    pub fn owns(&self, key: &[u8]) -> bool {
        is_message_chunk(key) || self.is_keyed(key)
    }

    /// Whether a key is of a kind kept in the sorted runs.
    fn is_keyed(&self, key: &[u8]) -> bool {
        key.first().is_some_and(|t| self.kinds.contains(t))
    }
}

/// Whether a range may hold keys of `kinds` (a key begins with its kind's tag).
fn touches(kinds: &[u8], start: Bound<&[u8]>, end: Bound<&[u8]>) -> bool {
    kinds.iter().any(|&t| {
        let (low, high) = ([t], [t + 1]);
        let starts_past = match start {
            Bound::Included(s) | Bound::Excluded(s) => s >= high.as_slice(),
            Bound::Unbounded => false,
        };
        let ends_before = match end {
            Bound::Included(e) => e < low.as_slice(),
            Bound::Excluded(e) => e <= low.as_slice(),
            Bound::Unbounded => false,
        };
        !starts_past && !ends_before
    })
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
        let (prepared, writes) = files.prepare(&[&op], false).unwrap();
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

    /// Writes message `offset` as a batch with nothing for sled ("alone").
    fn put_alone(files: &MessageFiles, offset: u64, byte: u8) {
        let op = Op::Put(key(offset), vec![byte; 256]);
        let (prepared, writes) = files.prepare(&[&op], true).unwrap();
        assert!(writes.is_empty(), "nothing for sled");
        prepared.applied().unwrap();
    }

    #[test]
    fn records_with_no_sled_part_are_kept_past_sled_s_last_batch_up_to_one_with_a_sled_part() {
        let dir = tempfile::tempdir().unwrap();
        let files = MessageFiles::open(dir.path(), Vec::new()).unwrap();
        let sled = put(&files, 0, 1);
        files.flushed(files.applied()).unwrap();
        // Durable in the journal alone, acknowledged without sled's flush.
        put_alone(&files, 1, 2);
        put_alone(&files, 2, 3);
        files.flushed(files.applied()).unwrap();
        // A batch with a sled part that never reached sled, and one alone after it.
        put(&files, 3, 4);
        put_alone(&files, 4, 5);
        drop(files);
        let files = MessageFiles::open(dir.path(), sled.clone()).unwrap();
        for (offset, byte) in [(0, 1), (1, 2), (2, 3)] {
            assert_eq!(files.get(&key(offset)).unwrap(), Some(vec![byte; 256]), "offset {offset}");
        }
        assert_eq!(files.get(&key(3)).unwrap(), None, "its sled part never happened");
        assert_eq!(files.get(&key(4)).unwrap(), None, "after one that never happened");
        // Writing goes on after the kept records, and they stay.
        put_alone(&files, 3, 6);
        drop(files);
        let files = MessageFiles::open(dir.path(), sled).unwrap();
        assert_eq!(files.scan(Bound::Unbounded, Bound::Unbounded, 10, false).unwrap().len(), 4);
        assert_eq!(files.get(&key(3)).unwrap(), Some(vec![6; 256]));
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
        let (prepared, _) = files.prepare(&[&op], false).unwrap();
        prepared.applied().unwrap();
        assert_eq!(files.get(&key(0)).unwrap(), None);
        // The five records' entries go to the index files in one write, the deletion of 0
        // winning over its put, and are read from there from now on.
        files.flushed(files.applied()).unwrap();
        assert!(crate::sync::lock(&files.unindexed).latest.is_empty());
        assert_eq!(files.get(&key(0)).unwrap(), None);
        let all = files.scan(Bound::Unbounded, Bound::Unbounded, 10, false).unwrap();
        assert_eq!(all.iter().map(|(_, v)| v[0]).collect::<Vec<_>>(), [1, 2, 3]);
    }

    #[test]
    fn a_later_batch_adds_chunks_to_a_message_and_one_deleted_and_written_again_keeps_only_its_new_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let files = MessageFiles::open(dir.path(), Vec::new()).unwrap();
        let chunk = |offset, n| key_of(&("t".to_string(), 0), offset, n);
        let write = |ops: &[Op]| {
            let (prepared, _) = files.prepare(&ops.iter().collect::<Vec<_>>(), false).unwrap();
            prepared.applied().unwrap();
        };
        write(&[Op::Put(chunk(0, 0), vec![1; 8]), Op::Put(chunk(1, 0), vec![2; 8])]);
        // A second chunk for a message below the queue's last offset and for the last one:
        // each batch's record holds the message as the batch leaves it, its first chunk too.
        write(&[Op::Put(chunk(0, 1), vec![3; 8]), Op::Put(chunk(1, 1), vec![4; 8])]);
        files.flushed(files.applied()).unwrap();
        for (offset, first, second) in [(0, 1, 3), (1, 2, 4)] {
            assert_eq!(files.get(&chunk(offset, 0)).unwrap(), Some(vec![first; 8]), "offset {offset}");
            assert_eq!(files.get(&chunk(offset, 1)).unwrap(), Some(vec![second; 8]), "offset {offset}");
        }
        // The last message deleted, then written again with one chunk: none of its old ones
        // comes back (the offset is past the queue's last again).
        write(&[Op::Delete(chunk(1, 0)), Op::Delete(chunk(1, 1))]);
        write(&[Op::Put(chunk(1, 1), vec![5; 8])]);
        assert_eq!(files.get(&chunk(1, 0)).unwrap(), None);
        assert_eq!(files.get(&chunk(1, 1)).unwrap(), Some(vec![5; 8]));
        assert_eq!(files.get(&chunk(0, 0)).unwrap(), Some(vec![1; 8]));
    }

    fn delete(files: &MessageFiles, offset: u64) {
        let op = Op::Delete(key(offset));
        let (prepared, _) = files.prepare(&[&op], false).unwrap();
        prepared.applied().unwrap();
    }

    #[test]
    fn a_read_that_finds_its_message_s_bytes_overwritten_asks_the_index_again() {
        let dir = tempfile::tempdir().unwrap();
        let files = MessageFiles::open(dir.path(), Vec::new()).unwrap();
        // Overwrites the bytes an entry points at, as a segment removed by retention and made a
        // later one does with its new records.
        let journal = dir.path().join("journal");
        let overwrite = move |e: Entry| {
            use std::os::unix::fs::FileExt;
            let path = journal.join(format!("{:016x}.jnl", e.segment));
            let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
            file.write_all_at(&vec![0xA5; e.len as usize], e.position).unwrap();
        };
        let race = |f: Race| {
            *crate::sync::lock(&files.between_lookup_and_read) = Some(f);
        };
        for offset in 0..3 {
            put(&files, offset, offset as u8 + 1);
        }
        files.flushed(files.applied()).unwrap();
        // Deleted by retention after the reader found it, and its bytes reused: gone.
        let o = overwrite.clone();
        race(Box::new(move |files, e| {
            delete(files, 0);
            o(e);
        }));
        assert_eq!(files.get(&key(0)).unwrap(), None);
        // Deleted and written again (the last offset, given out again): read where it is now.
        let o = overwrite.clone();
        race(Box::new(move |files, e| {
            delete(files, 2);
            put(files, 2, 9);
            o(e);
        }));
        assert_eq!(files.get(&key(2)).unwrap(), Some(vec![9; 256]));
        // Its entry unchanged: the bytes are damaged, and that is reported.
        race(Box::new(move |_, e| overwrite(e)));
        assert!(matches!(files.get(&key(1)), Err(StoreError::Corrupt { .. })), "damage reported");
        assert!(crate::sync::lock(&files.between_lookup_and_read).is_none(), "every race ran");
    }

    fn id_key(id: &str) -> Vec<u8> {
        Key::MessageId { topic: "t".into(), message_id: id.into() }.encode()
    }

    /// Applies a batch of message-id changes as sled would; returns its sled writes.
    fn put_ids(files: &MessageFiles, ids: &[(&str, Option<u8>)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let ops: Vec<Op> = ids
            .iter()
            .map(|(id, v)| match v {
                Some(v) => Op::Put(id_key(id), vec![*v; 12]),
                None => Op::Delete(id_key(id)),
            })
            .collect();
        let (prepared, writes) = files.prepare(&ops.iter().collect::<Vec<_>>(), false).unwrap();
        prepared.applied().unwrap();
        writes.into_iter().map(|(k, v)| (k, v.unwrap())).collect()
    }

    /// Opens the files with the module's sled keys as `sled` holds them.
    fn open_as_sled_holds(dir: &Path, sled: &BTreeMap<Vec<u8>, Vec<u8>>) -> MessageFiles {
        MessageFiles::open(dir, sled.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap()
    }

    #[test]
    fn message_ids_come_back_from_runs_and_the_journal_but_not_past_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let mut sled: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::from([(keyed_key(), vec![KEYED_LATEST])]);
        let open = |sled: &BTreeMap<Vec<u8>, Vec<u8>>| open_as_sled_holds(dir.path(), sled);
        let files = open(&sled);
        assert!(files.owns(&id_key("a")));
        files.set_checkpoint_every(Duration::ZERO);
        sled.extend(put_ids(&files, &[("a", Some(1)), ("gone", Some(9))]));
        sled.extend(put_ids(&files, &[("gone", None)]));
        // sled's flush, then a checkpoint: the ids go to a run, listed in sled.
        for (k, v) in files.flushed(files.applied()).unwrap() {
            sled.insert(k, v.unwrap());
        }
        assert_eq!(files.keyed.as_ref().unwrap().live().len(), 1);
        files.set_checkpoint_every(Duration::from_secs(3600));
        sled.extend(put_ids(&files, &[("b", Some(2)), ("a", Some(3))]));
        files.flushed(files.applied()).unwrap();
        // Applied, never flushed: lost with the process.
        put_ids(&files, &[("c", Some(4)), ("b", None)]);
        assert_eq!(files.get(&id_key("c")).unwrap(), Some(vec![4; 12]));
        assert_eq!(files.get(&id_key("b")).unwrap(), None);
        drop(files);
        let files = open(&sled);
        assert_eq!(files.get(&id_key("a")).unwrap(), Some(vec![3; 12]), "the journal's change over the run's");
        assert_eq!(files.get(&id_key("b")).unwrap(), Some(vec![2; 12]), "from the journal");
        assert_eq!(files.get(&id_key("c")).unwrap(), None, "never durable in sled");
        assert_eq!(files.get(&id_key("gone")).unwrap(), None);
        let all = files.scan(Bound::Unbounded, Bound::Unbounded, 10, false).unwrap();
        assert_eq!(all, vec![(id_key("a"), vec![3; 12]), (id_key("b"), vec![2; 12])]);
    }

    #[test]
    fn the_kinds_kept_in_runs_follow_the_store_s_mark() {
        let txn = Key::Txn("x".into()).encode();
        let inflight = Key::Inflight { group: "g".into(), topic: "t".into(), queue: 0, offset: 4 }.encode();
        let due = Key::TxnDue { at: 5, txn: "x".into() }.encode();
        let sled_kinds = [Key::Group("g".into()).encode(), Key::Topic("t".into()).encode()];
        // A store of schema 7: message ids only, in `ids/`.
        let old = tempfile::tempdir().unwrap();
        let files = open_as_sled_holds(old.path(), &BTreeMap::from([(keyed_key(), vec![1])]));
        assert!(files.owns(&id_key("a")) && !files.owns(&txn) && !files.owns(&inflight) && !files.owns(&due));
        assert!(old.path().join("ids").is_dir());
        // A new store: every per-message record, in `keyed/`; the configuration stays in sled.
        let dir = tempfile::tempdir().unwrap();
        let mut sled = BTreeMap::from([(keyed_key(), vec![KEYED_LATEST])]);
        let files = open_as_sled_holds(dir.path(), &sled);
        assert!(dir.path().join("keyed").is_dir());
        assert!([&id_key("a"), &txn, &inflight, &due].iter().all(|k| files.owns(k)));
        assert!(sled_kinds.iter().all(|k| !files.owns(k)));
        // They come back from a run and from the journal, and a deletion after the checkpoint
        // hides what the run holds.
        files.set_checkpoint_every(Duration::ZERO);
        let apply = |files: &MessageFiles, ops: Vec<Op>| -> Vec<(Vec<u8>, Vec<u8>)> {
            let (prepared, writes) = files.prepare(&ops.iter().collect::<Vec<_>>(), false).unwrap();
            prepared.applied().unwrap();
            writes.into_iter().map(|(k, v)| (k, v.unwrap())).collect()
        };
        sled.extend(apply(&files, vec![Op::Put(txn.clone(), vec![1]), Op::Put(inflight.clone(), vec![2])]));
        for (k, v) in files.flushed(files.applied()).unwrap() {
            sled.insert(k, v.unwrap());
        }
        files.set_checkpoint_every(Duration::from_secs(3600));
        sled.extend(apply(&files, vec![Op::Put(txn.clone(), vec![3]), Op::Delete(inflight.clone())]));
        files.flushed(files.applied()).unwrap();
        drop(files);
        let files = open_as_sled_holds(dir.path(), &sled);
        assert_eq!(files.get(&txn).unwrap(), Some(vec![3]));
        assert_eq!(files.get(&inflight).unwrap(), None);
        assert_eq!(files.scan(Bound::Unbounded, Bound::Unbounded, 10, false).unwrap(), vec![(txn.clone(), vec![3])]);
        drop(files);
        // A mark this broker does not know is refused, not guessed.
        let other = tempfile::tempdir().unwrap();
        let refused = MessageFiles::open(other.path(), vec![(keyed_key(), vec![9])]);
        assert!(matches!(refused, Err(StoreError::Corrupt { .. })), "{refused:?}");
    }

    #[test]
    fn a_checkpoint_made_in_the_background_covers_what_preceded_it_and_the_journal_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let mut sled: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::from([(keyed_key(), vec![KEYED_LATEST])]);
        let open = |sled: &BTreeMap<Vec<u8>, Vec<u8>>| open_as_sled_holds(dir.path(), sled);
        let files = open(&sled);
        files.checkpoint_in_background();
        sled.extend(put_ids(&files, &[("a", Some(1))]));
        sled.extend(put(&files, 0, 1));
        assert!(files.flushed(files.applied()).unwrap().is_empty(), "started, not yet written to sled");
        // Written while the background thread works: after the checkpoint's point.
        sled.extend(put_ids(&files, &[("b", Some(2)), ("a", None)]));
        sled.extend(put(&files, 1, 2));
        let writes = loop {
            let writes = files.flushed(files.applied()).unwrap();
            if !writes.is_empty() {
                break writes;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let point = writes.iter().find(|(k, _)| *k == checkpoint_key()).unwrap().1.clone().unwrap();
        assert_eq!(decode_point(&checkpoint_key(), &point).unwrap().0, 2, "the first two records, not the later ones");
        assert_eq!(files.keyed.as_ref().unwrap().live().len(), 1);
        for (k, v) in writes {
            sled.insert(k, v.unwrap());
        }
        drop(files);
        let files = open(&sled);
        assert_eq!(files.get(&id_key("a")).unwrap(), None, "deleted after the checkpoint, from the journal");
        assert_eq!(files.get(&id_key("b")).unwrap(), Some(vec![2; 12]));
        assert_eq!(files.get(&key(0)).unwrap(), Some(vec![1; 256]));
        assert_eq!(files.get(&key(1)).unwrap(), Some(vec![2; 256]));
    }
}
