//! The message log: every topic has `queue_count` queues; each queue is a sequence of messages
//! numbered by offset, contiguous from its lowest retained offset.
//!
//! Appends take their offsets and their place in the group-commit queue under one lock, so the
//! store applies them in offset order. A queue's *durable high watermark* (the first offset not
//! yet fsynced) is advanced by the committer thread once the write is durable; readers never
//! look past it, so no consumer can see a message that a crash could still erase.
//!
//! Sends are idempotent on `(topic, message id)`: a retry of a stored (or still committing)
//! message gets the first copy's place back and stores nothing.
//!
//! A committed transactional message is not written again: its queue record points at the
//! half message its send stored (see [`MessageLog::append_committed`]), and readers see the
//! message as if it were stored whole.
//!
//! Owns: message records, the message-id index and each queue's offsets and watermark. Never
//! touches topic records (the registry is `topics`), consumption state or transaction records
//! (only the half messages its references point at: read, and deleted when they expire); a
//! caller may hand it other parts' writes to make durable in the same batch as an append.

use crate::codec::Record;
use crate::error::{BrokerError, Result};
use crate::model::{md5_hex, MessageType, Millis, NewMessage, StoredMessage};
use crate::store::{chunks, scan_prefix, AfterCommit, Batch, Committer, Key, Store, StoreError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::watch;

/// Where a sent message landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub queue: u32,
    pub offset: u64,
    /// True when the message id was already stored and this send stored nothing.
    pub duplicate: bool,
}

/// Which queue an append's messages go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// One of the topic's `n` routed queues: by message group for FIFO messages, by priority
    /// for PRIORITY ones, round robin otherwise.
    Spread(u32),
    /// This queue (a lite topic's).
    Queue(u32),
}

/// Offsets of one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueOffsets {
    pub queue: u32,
    /// Lowest stored offset.
    pub min: u64,
    /// First offset not yet durable (= next offset once all writes are flushed).
    pub durable: u64,
}

struct QueueState {
    /// Next offset to hand out.
    next: u64,
    min: u64,
    /// First offset not yet durable. Waiters watch the topic's signal (a queue holds no
    /// channel of its own: a LITE topic may have a million queues).
    durable: u64,
}

#[derive(Default)]
struct Inner {
    /// By topic, then queue (no key allocation per lookup; a topic's name is kept once).
    queues: HashMap<String, HashMap<u32, QueueState>>,
    /// Message ids submitted but not yet durable (the store cannot answer for them yet).
    committing: HashMap<(String, String), (u32, u64)>,
    round_robin: u64,
    /// Bumped whenever a topic gets new durable messages; long polls wait on it.
    topic_signals: HashMap<String, watch::Sender<u64>>,
}

impl Inner {
    fn queue(&self, topic: &str, queue: u32) -> Option<&QueueState> {
        self.queues.get(topic)?.get(&queue)
    }

    fn queue_mut(&mut self, topic: &str, queue: u32) -> Option<&mut QueueState> {
        self.queues.get_mut(topic)?.get_mut(&queue)
    }
}

/// The message log over the store. See the module docs.
pub struct MessageLog {
    store: Arc<dyn Store>,
    committer: Arc<Committer>,
    inner: Arc<Mutex<Inner>>,
    /// Recalled delay messages → when (few: kept in memory, so a read checks no store key).
    recalled: RwLock<HashMap<(String, u32, u64), Millis>>,
    /// The version of the message records written (`--message-record-version`).
    records: u8,
}

/// The handle a producer recalls a delay message with: opaque to it, `queue:offset:id` in hex
/// to us (the topic comes with the recall request).
pub fn recall_handle(queue: u32, offset: u64, message_id: &str) -> String {
    crate::codec::hex(format!("{queue:x}:{offset:x}:{message_id}").as_bytes(), false)
}

/// The place and id a recall handle names; `None` if it is not one.
pub fn parse_recall_handle(handle: &str) -> Option<(u32, u64, String)> {
    if handle.len() > 1024 {
        return None;
    }
    let text = String::from_utf8(crate::codec::unhex(handle)?).ok()?;
    let mut parts = text.splitn(3, ':');
    let queue = u32::from_str_radix(parts.next()?, 16).ok()?;
    let offset = u64::from_str_radix(parts.next()?, 16).ok()?;
    let id = parts.next().filter(|id| !id.is_empty())?;
    Some((queue, offset, id.to_string()))
}

/// Why a recall was refused.
fn recall_refused(why: &str) -> BrokerError {
    BrokerError::NotFound(format!("nothing to recall: {why}"))
}

impl MessageLog {
    /// The log over `store`, with the recall marks it holds.
    pub fn open(store: Arc<dyn Store>, committer: Arc<Committer>) -> Result<Self> {
        let mut recalled = HashMap::new();
        for (k, v) in scan_prefix(store.as_ref(), &Key::recalled_prefix(), usize::MAX, false)? {
            let Ok(Key::Recalled { topic, queue, offset }) = Key::decode(&k) else {
                return Err(StoreError::Corrupt { key: k, detail: "not a recall key".into() }.into());
            };
            let at = <[u8; 8]>::try_from(v.as_slice()).map(i64::from_be_bytes).unwrap_or(0);
            recalled.insert((topic, queue, offset), at);
        }
        Ok(Self {
            store,
            committer,
            inner: Arc::new(Mutex::new(Inner::default())),
            recalled: RwLock::new(recalled),
            records: StoredMessage::VERSION,
        })
    }

    /// Writes message records of `version` from now on (3 or 4, see [`StoredMessage::encode_as`]).
    pub fn with_record_version(mut self, version: u8) -> Self {
        self.records = version;
        self
    }

    /// Registers the queues of a topic, reading their offsets from the store. Idempotent.
    pub fn open_topic(&self, topic: &str, queue_count: u32) -> Result<()> {
        (0..queue_count).try_for_each(|queue| self.open_queue(topic, queue))
    }

    /// Registers one queue of a topic (a routed queue, or a lite topic's), reading its offsets
    /// from the store. Idempotent.
    pub fn open_queue(&self, topic: &str, queue: u32) -> Result<()> {
        let mut inner = crate::sync::lock(&self.inner);
        if inner.queue(topic, queue).is_some() {
            return Ok(());
        }
        let prefix = Key::queue_prefix(topic, queue);
        let offset_of = |entries: Vec<(Vec<u8>, Vec<u8>)>| -> Result<Option<u64>> {
            match entries.into_iter().next() {
                None => Ok(None),
                Some((k, _)) => match Key::decode(&k) {
                    Ok(Key::MessageChunk { offset, .. }) => Ok(Some(offset)),
                    _ => Err(StoreError::Corrupt { key: k, detail: "not a message key".into() }.into()),
                },
            }
        };
        // Below the queue's start everything was deleted by retention; when it deleted all,
        // the start alone says where the queue stands.
        let start_key = Key::QueueStart { topic: topic.into(), queue };
        let start = match self.store.get(&start_key.encode())? {
            Some(v) => decode_offset(&start_key, &v)?,
            None => 0,
        };
        let min = offset_of(scan_prefix(self.store.as_ref(), &prefix, 1, false)?)?.map_or(start, |o| o.max(start));
        let next =
            offset_of(scan_prefix(self.store.as_ref(), &prefix, 1, true)?)?.map_or(start, |o| (o + 1).max(start));
        inner.queues.entry(topic.to_string()).or_default().insert(queue, QueueState { next, min, durable: next });
        Ok(())
    }

    /// Appends `messages` (all of one topic, to queues as `target` says) durably, together
    /// with the writes of `extra` in the same atomic batch. Returns one placement per message,
    /// in order. The messages must be validated already.
    pub async fn append(
        &self,
        topic: &str,
        target: Target,
        messages: Vec<NewMessage>,
        producer: &str,
        now: Millis,
        extra: Batch,
    ) -> Result<Vec<Placement>> {
        self.append_with(topic, target, messages, producer, now, extra, None).await
    }

    /// Appends the half message of committed transaction `txn` (stored by its half send, under
    /// `Key::HalfChunk`) without writing it again: the queue gets a small record pointing at
    /// the half, which keeps the body and headers until the queue record expires. Otherwise as
    /// [`MessageLog::append`]; `after` runs on the writer thread once the write is durable
    /// (the transaction's own bookkeeping), whether or not the caller still waits.
    #[allow(clippy::too_many_arguments)]
    pub async fn append_committed(
        &self,
        topic: &str,
        target: Target,
        half: StoredMessage,
        txn: &str,
        now: Millis,
        extra: Batch,
        after: Option<AfterCommit>,
    ) -> Result<()> {
        let committed = Committed { txn, after };
        self.append_with(topic, target, vec![half.msg], &half.producer, now, extra, Some(committed)).await?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn append_with(
        &self,
        topic: &str,
        target: Target,
        messages: Vec<NewMessage>,
        producer: &str,
        now: Millis,
        extra: Batch,
        committed: Option<Committed<'_>>,
    ) -> Result<Vec<Placement>> {
        let (half_of, extra_after) = match committed {
            Some(c) => (Some(c.txn), c.after),
            None => (None, None),
        };
        // Refuse a request that names one id twice before any offset is handed out (a refusal
        // later would leave a hole in the queue).
        let mut ids = std::collections::HashSet::with_capacity(messages.len());
        if let Some(dup) = messages.iter().find(|m| !ids.insert(m.index_id())) {
            return Err(BrokerError::IllegalMessageId(format!(
                "message id {} appears twice in one request",
                dup.message_id
            )));
        }
        let slot = self.committer.reserve().await?;
        let mut placements = Vec::with_capacity(messages.len());
        let mut waits = Vec::new();
        let pending = {
            let mut inner = crate::sync::lock(&self.inner);
            let mut batch = Batch::new();
            let mut fresh = Vec::new();
            let mut batch_queue = None;
            // Offsets are handed out as messages are placed; if a later step fails, they are
            // taken back so that the queue never gets a hole.
            let mut first_fresh: Option<(u32, u64)> = None;
            let placed = (|| -> Result<()> {
                for msg in messages {
                    let id_key = (topic.to_string(), msg.index_id().into_owned());
                    if let Some(found) = self.find_id(&inner, &id_key)? {
                        waits.push(found);
                        placements.push(Placement { queue: found.0, offset: found.1, duplicate: true });
                        continue;
                    }
                    // One request's messages share a queue (RocketMQ batches are one queue), but
                    // a PRIORITY message's queue is its priority.
                    let queue = match (target, msg.priority) {
                        (Target::Queue(q), _) => q,
                        (Target::Spread(n), Some(p)) => p.min(n.saturating_sub(1)),
                        (Target::Spread(n), None) => {
                            *batch_queue.get_or_insert_with(|| pick_queue(&mut inner, &msg, n))
                        }
                    };
                    let state = inner
                        .queue_mut(topic, queue)
                        .ok_or_else(|| BrokerError::Internal(format!("queue {topic}/{queue} is not open")))?;
                    let offset = state.next;
                    first_fresh.get_or_insert((queue, offset));
                    state.next += 1;
                    let stored = StoredMessage {
                        body_md5: md5_hex(&msg.body),
                        msg,
                        queue,
                        offset,
                        store_timestamp: now,
                        producer: producer.to_string(),
                    };
                    match half_of {
                        Some(txn) => write_reference(&mut batch, &stored, txn)?,
                        None => write_message(&mut batch, &stored, self.records)?,
                    }
                    fresh.push((stored.msg.index_id().into_owned(), queue, offset));
                    placements.push(Placement { queue, offset, duplicate: false });
                }
                Ok(())
            })();
            if let Err(e) = placed {
                if let Some((queue, offset)) = first_fresh {
                    if let Some(state) = inner.queue_mut(topic, queue) {
                        state.next = offset;
                    }
                }
                return Err(e);
            }
            // `extra` rides in the same atomic write (a transaction's new state with its commit).
            batch.extend(extra);
            if batch.is_empty() {
                None
            } else {
                for (id, queue, offset) in &fresh {
                    inner.committing.insert((topic.to_string(), id.clone()), (*queue, *offset));
                }
                Some(slot.submit(batch, Some(self.after_commit(topic, fresh, extra_after))))
            }
        };
        if let Some(p) = pending {
            p.durable().await?;
        }
        for (queue, offset) in waits {
            self.wait_durable(topic, queue, offset).await?;
        }
        Ok(placements)
    }

    /// Reads one deliverable message; `None` if it is not stored (or not durable yet), or
    /// was recalled.
    pub fn read(&self, topic: &str, queue: u32, offset: u64) -> Result<Option<StoredMessage>> {
        if self.recalled_at(topic, queue, offset).is_some() {
            return Ok(None);
        }
        self.read_stored(topic, queue, offset)
    }

    /// When the message at this place was recalled, if it was.
    pub fn recalled_at(&self, topic: &str, queue: u32, offset: u64) -> Option<Millis> {
        let recalled = crate::sync::read(&self.recalled);
        if recalled.is_empty() {
            return None;
        }
        recalled.get(&(topic.to_string(), queue, offset)).copied()
    }

    /// Recalls the delay message `message_id` at `(queue, offset)` of `topic` before its
    /// delivery time: durably marked, never delivered from then on (it stays readable for
    /// lookups until retention). Refused (`NotFound`) when there is no such message, it was
    /// recalled already, or its delivery time has come.
    pub async fn recall(&self, topic: &str, queue: u32, offset: u64, message_id: &str, now: Millis) -> Result<()> {
        if self.recalled_at(topic, queue, offset).is_some() {
            return Err(recall_refused("the message was recalled already"));
        }
        let m = self.read_stored(topic, queue, offset)?.ok_or_else(|| recall_refused("no such message"))?;
        if m.msg.message_id != message_id {
            return Err(recall_refused("no such message"));
        }
        match m.msg.delivery_timestamp {
            None => return Err(recall_refused("only delay messages can be recalled")),
            Some(at) if at <= now => return Err(recall_refused("its delivery time has passed")),
            Some(_) => {}
        }
        let mut batch = Batch::new();
        batch.put(&Key::Recalled { topic: topic.into(), queue, offset }, now.to_be_bytes().to_vec());
        self.committer.commit(batch).await?;
        crate::sync::write(&self.recalled).insert((topic.to_string(), queue, offset), now);
        Ok(())
    }

    /// When the message at this place was stored, read from its first chunk alone (the record's
    /// header); `None` if it is not stored.
    pub fn stored_at(&self, topic: &str, queue: u32, offset: u64) -> Result<Option<Millis>> {
        let first = Key::MessageChunk { topic: topic.into(), queue, offset, chunk: 0 }.encode();
        let Some(head) = self.store.get(&first)? else { return Ok(None) };
        let stored_at = if head.first() == Some(&HALF_REF) {
            HalfRef::decode(&head).map(|r| r.store_timestamp)
        } else {
            StoredMessage::decode_header(&head).map(|(at, _, _)| at)
        };
        Ok(Some(stored_at.map_err(|e| StoreError::Corrupt { key: first, detail: e.to_string() })?))
    }

    /// Reads one stored message, recalled or not.
    pub fn read_stored(&self, topic: &str, queue: u32, offset: u64) -> Result<Option<StoredMessage>> {
        let durable = self.offsets(topic, queue).map(|o| o.durable).unwrap_or(0);
        if offset >= durable {
            return Ok(None);
        }
        Ok(self.record(topic, queue, offset)?.map(|(m, _)| m))
    }

    /// The message stored at a place, whatever its record, and the transaction whose half
    /// message holds it (a committed transactional message); `None` if nothing is stored.
    fn record(&self, topic: &str, queue: u32, offset: u64) -> Result<Option<(StoredMessage, Option<String>)>> {
        let prefix = Key::message_prefix(topic, queue, offset);
        let Some(bytes) = chunks::get(self.store.as_ref(), &prefix)? else { return Ok(None) };
        let corrupt = |key: Vec<u8>, e: crate::codec::CodecError| StoreError::Corrupt { key, detail: e.to_string() };
        if bytes.first() != Some(&HALF_REF) {
            return Ok(Some((StoredMessage::decode(&bytes).map_err(|e| corrupt(prefix, e))?, None)));
        }
        let r = HalfRef::decode(&bytes).map_err(|e| corrupt(prefix.clone(), e))?;
        let half_prefix = Key::half_prefix(&r.txn);
        let Some(half) = chunks::get(self.store.as_ref(), &half_prefix)? else {
            // Kept until this record expires; missing only if the store lost it.
            return Err(StoreError::Corrupt {
                key: prefix,
                detail: format!("the half message of transaction {} is gone", r.txn),
            }
            .into());
        };
        let mut m = StoredMessage::decode(&half).map_err(|e| corrupt(half_prefix, e))?;
        m.queue = r.queue;
        m.offset = r.offset;
        m.store_timestamp = r.store_timestamp;
        Ok(Some((m, Some(r.txn))))
    }

    /// Where a message id is stored, if it is (durably).
    pub fn locate(&self, topic: &str, message_id: &str) -> Result<Option<(u32, u64)>> {
        let key = Key::MessageId { topic: topic.into(), message_id: message_id.into() };
        self.store.get(&key.encode())?.map(|v| decode_location(&key, &v)).transpose()
    }

    /// Messages of `topic` carrying `key`, oldest first, at most `limit`.
    pub fn find_by_key(&self, topic: &str, key: &str, limit: usize) -> Result<Vec<StoredMessage>> {
        let mut out = Vec::new();
        for (k, _) in scan_prefix(self.store.as_ref(), &Key::message_key_prefix(topic, key), limit, false)? {
            if let Ok(Key::MessageKey { queue, offset, .. }) = Key::decode(&k) {
                if let Some(m) = self.read(topic, queue, offset)? {
                    out.push(m);
                }
            }
        }
        Ok(out)
    }

    /// Offsets of one queue, if the queue exists.
    pub fn offsets(&self, topic: &str, queue: u32) -> Option<QueueOffsets> {
        let inner = crate::sync::lock(&self.inner);
        let s = inner.queue(topic, queue)?;
        Some(QueueOffsets { queue, min: s.min, durable: s.durable })
    }

    /// A receiver that changes whenever the topic gets new durable messages.
    pub fn topic_watch(&self, topic: &str) -> watch::Receiver<u64> {
        let mut inner = crate::sync::lock(&self.inner);
        inner.topic_signals.entry(topic.to_string()).or_insert_with(|| watch::channel(0).0).subscribe()
    }

    /// Deletes up to `max` of the oldest messages of a queue stored before `cutoff`, durably.
    /// Returns how many were deleted.
    pub async fn expire(&self, topic: &str, queue: u32, cutoff: Millis, max: usize) -> Result<usize> {
        let Some(offsets) = self.offsets(topic, queue) else {
            return Ok(0);
        };
        let mut batch = Batch::new();
        let mut next_min = offsets.min;
        while next_min < offsets.durable && ((next_min - offsets.min) as usize) < max {
            let Some(stored_at) = self.stored_at(topic, queue, next_min)? else {
                next_min += 1; // already gone
                continue;
            };
            if stored_at >= cutoff {
                break;
            }
            let prefix = Key::message_prefix(topic, queue, next_min);
            if let Some((m, txn)) = self.record(topic, queue, next_min)? {
                for key in &m.msg.keys {
                    batch.delete(&Key::MessageKey { topic: topic.into(), key: key.clone(), queue, offset: next_min });
                }
                batch.delete(&Key::MessageId { topic: topic.into(), message_id: m.msg.index_id().into_owned() });
                // A committed transactional message's body lives in its half message: it goes
                // with the queue record (the transaction's purge leaves it, see
                // `references_half`).
                if let Some(txn) = txn {
                    chunks::delete(self.store.as_ref(), &mut batch, &Key::half_prefix(&txn))?;
                }
            }
            chunks::delete(self.store.as_ref(), &mut batch, &prefix)?;
            if topic.starts_with(crate::topics::DLQ_PREFIX) {
                batch.delete(&Key::DeadLetterResent { topic: topic.into(), queue, offset: next_min });
            }
            batch.delete(&Key::Recalled { topic: topic.into(), queue, offset: next_min });
            next_min += 1;
        }
        let deleted = (next_min - offsets.min) as usize;
        if deleted == 0 {
            return Ok(0);
        }
        batch.put(&Key::QueueStart { topic: topic.into(), queue }, next_min.to_be_bytes().to_vec());
        self.committer.commit(batch).await?;
        let mut inner = crate::sync::lock(&self.inner);
        if let Some(state) = inner.queue_mut(topic, queue) {
            state.min = state.min.max(next_min);
        }
        crate::sync::write(&self.recalled).retain(|(t, q, o), _| !(t == topic && *q == queue && *o < next_min));
        Ok(deleted)
    }

    fn find_id(&self, inner: &Inner, id_key: &(String, String)) -> Result<Option<(u32, u64)>> {
        if let Some(found) = inner.committing.get(id_key) {
            return Ok(Some(*found));
        }
        self.locate(&id_key.0, &id_key.1)
    }

    /// Once durable: publish the new high watermark and forget the committing ids, then run
    /// `extra` (a committed transaction's bookkeeping).
    fn after_commit(&self, topic: &str, fresh: Vec<(String, u32, u64)>, extra: Option<AfterCommit>) -> AfterCommit {
        let inner = self.inner.clone();
        let topic = topic.to_string();
        Box::new(move || {
            let mut inner = crate::sync::lock(&inner);
            for (id, queue, offset) in fresh {
                inner.committing.remove(&(topic.clone(), id));
                if let Some(state) = inner.queue_mut(&topic, queue) {
                    state.durable = state.durable.max(offset + 1);
                }
            }
            // Under the same lock as the watermarks: a waiter that read an old watermark
            // before subscribing is woken.
            if let Some(signal) = inner.topic_signals.get(&topic) {
                signal.send_modify(|g| *g = g.wrapping_add(1));
            }
            drop(inner);
            if let Some(extra) = extra {
                extra();
            }
        })
    }

    async fn wait_durable(&self, topic: &str, queue: u32, offset: u64) -> Result<()> {
        let mut rx = self.topic_watch(topic);
        loop {
            rx.borrow_and_update();
            match self.offsets(topic, queue) {
                None => return Ok(()),
                Some(o) if o.durable > offset => return Ok(()),
                Some(_) => {}
            }
            if let Some(why) = self.committer.poisoned() {
                return Err(StoreError::Poisoned(why).into());
            }
            if rx.changed().await.is_err() {
                return Err(StoreError::Closed.into());
            }
        }
    }
}

fn pick_queue(inner: &mut Inner, msg: &NewMessage, queue_count: u32) -> u32 {
    let n = u64::from(queue_count.max(1));
    let h = match (&msg.message_type, &msg.message_group) {
        (MessageType::Fifo, Some(group)) => crate::codec::fnv1a(group),
        _ => {
            inner.round_robin = inner.round_robin.wrapping_add(1);
            inner.round_robin
        }
    };
    (h % n) as u32
}

/// First byte of a queue record that points at a committed transaction's half message instead
/// of holding the message. Message records start with their version (1 to 3), never this.
const HALF_REF: u8 = 0xA1;

/// What [`MessageLog::append_committed`] adds to an append: the committed transaction whose
/// half message the queue record points at, and its bookkeeping once durable.
struct Committed<'a> {
    txn: &'a str,
    after: Option<AfterCommit>,
}

/// A queue record of a committed transactional message: where and when it was published; the
/// rest is the half message of `txn`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HalfRef {
    store_timestamp: Millis,
    queue: u32,
    offset: u64,
    txn: String,
}

impl HalfRef {
    fn encode(&self) -> Vec<u8> {
        let mut e = crate::codec::Encoder::with_capacity(32 + self.txn.len());
        e.u8(HALF_REF).i64(self.store_timestamp).u32(self.queue).u64(self.offset).str(&self.txn);
        e.finish()
    }

    fn decode(bytes: &[u8]) -> std::result::Result<Self, crate::codec::CodecError> {
        let mut d = crate::codec::Decoder::new(bytes);
        let tag = d.u8()?;
        if tag != HALF_REF {
            return Err(crate::codec::CodecError::Invalid {
                what: "half-message reference tag",
                detail: format!("{tag:#x}"),
            });
        }
        let r = HalfRef { store_timestamp: d.i64()?, queue: d.u32()?, offset: d.u64()?, txn: d.str()? };
        d.finish()?;
        Ok(r)
    }
}

/// Whether the queue record of message `message_id` of `topic` is a reference to the half
/// message of `txn` (which must then stay until that record expires).
pub fn references_half(store: &dyn Store, topic: &str, message_id: &str, txn: &str) -> Result<bool> {
    let key = Key::MessageId { topic: topic.into(), message_id: message_id.into() };
    let Some(loc) = store.get(&key.encode())? else { return Ok(false) };
    let (queue, offset) = decode_location(&key, &loc)?;
    let first = Key::MessageChunk { topic: topic.into(), queue, offset, chunk: 0 }.encode();
    Ok(match store.get(&first)? {
        Some(head) if head.first() == Some(&HALF_REF) => HalfRef::decode(&head).is_ok_and(|r| r.txn == txn),
        _ => false,
    })
}

/// Adds a committed transactional message to `batch` as a reference to the half message of
/// `txn`, with its id and key index entries.
fn write_reference(batch: &mut Batch, m: &StoredMessage, txn: &str) -> Result<()> {
    let r = HalfRef { store_timestamp: m.store_timestamp, queue: m.queue, offset: m.offset, txn: txn.to_string() };
    write_record(batch, m, &r.encode())
}

/// Adds a stored message (a record of `version`) and its id index entry to `batch`.
pub fn write_message(batch: &mut Batch, m: &StoredMessage, version: u8) -> Result<()> {
    write_record(batch, m, &m.encode_as(version))
}

/// Adds `record` (the message `m`, or a reference to where it is) at `m`'s place, with the
/// id and key index entries of `m`.
fn write_record(batch: &mut Batch, m: &StoredMessage, record: &[u8]) -> Result<()> {
    let topic = &m.msg.topic;
    chunks::put(batch, record, |chunk| Key::MessageChunk {
        topic: topic.clone(),
        queue: m.queue,
        offset: m.offset,
        chunk,
    })?;
    for key in &m.msg.keys {
        batch.put(
            &Key::MessageKey { topic: topic.clone(), key: key.clone(), queue: m.queue, offset: m.offset },
            Vec::new(),
        );
    }
    let mut loc = crate::codec::Encoder::new();
    loc.u32(m.queue).u64(m.offset);
    batch.put(&Key::MessageId { topic: topic.clone(), message_id: m.msg.index_id().into_owned() }, loc.finish());
    Ok(())
}

/// A stored value read with `read`; a value it cannot read is reported as corrupt under `key`.
fn decode_value<T>(
    key: &Key,
    v: &[u8],
    read: impl FnOnce(crate::codec::Decoder<'_>) -> std::result::Result<T, crate::codec::CodecError>,
) -> Result<T> {
    read(crate::codec::Decoder::new(v))
        .map_err(|e| StoreError::Corrupt { key: key.encode(), detail: e.to_string() }.into())
}

fn decode_offset(key: &Key, v: &[u8]) -> Result<u64> {
    decode_value(key, v, |mut d| {
        let offset = d.u64()?;
        d.finish()?;
        Ok(offset)
    })
}

fn decode_location(key: &Key, v: &[u8]) -> Result<(u32, u64)> {
    decode_value(key, v, |mut d| Ok((d.u32()?, d.u64()?)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::sample_message;
    use crate::store::MemoryStore;

    fn log() -> MessageLog {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let committer = Arc::new(Committer::start(store.clone(), 16).unwrap());
        let log = MessageLog::open(store, committer).unwrap();
        log.open_topic("t", 1).unwrap();
        log
    }

    #[test]
    fn recall_handles_round_trip_and_garbage_is_refused() {
        let h = recall_handle(3, 77, "01ABC");
        assert_eq!(parse_recall_handle(&h), Some((3, 77, "01ABC".to_string())));
        for bad in ["", "zz", "0", "61", &recall_handle(3, 77, "")] {
            assert_eq!(parse_recall_handle(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn a_refused_request_leaves_no_hole_in_the_queue() {
        let log = log();
        let first =
            log.append("t", Target::Spread(1), vec![sample_message("t", "a")], "p", 1, Batch::new()).await.unwrap();
        assert_eq!(first[0].offset, 0);
        let twice = vec![sample_message("t", "b"), sample_message("t", "b")];
        assert!(matches!(
            log.append("t", Target::Spread(1), twice, "p", 2, Batch::new()).await,
            Err(BrokerError::IllegalMessageId(_))
        ));
        let next =
            log.append("t", Target::Spread(1), vec![sample_message("t", "c")], "p", 3, Batch::new()).await.unwrap();
        assert_eq!(next[0].offset, 1, "offsets stay dense");
        let again =
            log.append("t", Target::Spread(1), vec![sample_message("t", "a")], "p", 4, Batch::new()).await.unwrap();
        assert_eq!((again[0].offset, again[0].duplicate), (0, true), "a retried id gets its first place back");
        assert_eq!(log.offsets("t", 0).unwrap().durable, 2);
    }
}
