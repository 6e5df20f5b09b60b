//! [`Transactions`]: half sends, EndTransaction, check steps and operator actions over the store.
//!
//! Owns: transaction records, half messages and their indexes (by message, due time, open
//! state, resolution time), the per-transaction lock stripes and the open counts. Never
//! touches topic queues: a commit hands the half message and its write batch to the caller's
//! `publish` step, which appends both in one durable write.
//!
//! Every change to one transaction happens under that transaction's lock (striped by id) and
//! is durable before the lock is released, so EndTransaction, checks and operators never race.

use super::state::{Actor, Effect, Resolution, Txn, TxnError, TxnState};
use crate::clock::now_ms;
use crate::codec::Record;
use crate::error::{BrokerError, Result};
use crate::metrics::Metrics;
use crate::model::{md5_hex, Millis, NewMessage, StoredMessage};
use crate::store::{chunks, AfterCommit, Batch, Committer, Key, Store, StoreError};
use std::collections::BTreeSet;
use std::future::Future;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A transaction's lock, held.
type TxnGuard = tokio::sync::OwnedMutexGuard<()>;

/// What the max-checks policy does with a transaction nobody decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxChecksPolicy {
    /// Roll it back (recorded as decided by the policy).
    Rollback,
    /// Keep it pending without further checks, for an operator to decide.
    Park,
}

/// Number of transaction lock stripes: a lock is held across a commit, so with 64 requests in
/// flight a small table would make unrelated transactions wait for each other.
pub const TXN_LOCKS: usize = 1024;

/// Where a check command was written: a client and one of its Telemetry streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckTarget {
    pub client: String,
    pub stream: u64,
}

/// How a due check went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckOutcome {
    /// The command was written to this client's stream.
    Sent { client: String, stream: u64 },
    /// No live producer could take it; retried at `retry_at` (backing off) without counting.
    Unreachable { retry_at: Millis },
    /// Out of checks: the policy applied.
    Exhausted { state: TxnState },
    /// The transaction was decided or rescheduled meanwhile.
    NotDue,
}

/// Counts for status and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TxnCounts {
    pub pending: u64,
    pub parked: u64,
    /// Creation time of the oldest pending transaction.
    pub oldest_pending: Option<Millis>,
}

/// Filter for listing transactions.
#[derive(Debug, Clone, Default)]
pub struct TxnFilter {
    pub state: Option<TxnState>,
    pub topic: Option<String>,
    /// Only transactions created at least this long ago.
    pub older_than_ms: Option<Millis>,
    pub limit: usize,
}

/// The transaction settings of the broker's configuration.
#[derive(Debug, Clone)]
pub struct TxnSettings {
    /// First check this long after the half send, unless the message asks otherwise.
    pub timeout: Duration,
    pub check_interval: Duration,
    pub max_checks: u32,
    pub max_checks_policy: MaxChecksPolicy,
    /// The policy applies once no producer was reachable for this long.
    pub unreachable_max_age: Duration,
    /// Resolved transactions are purged this long after their resolution.
    pub retention: Duration,
    /// The version of the half messages' records (`--message-record-version`).
    pub records: u8,
}

/// Every transaction of the broker, over its store.
pub struct Transactions {
    store: Arc<dyn Store>,
    committer: Arc<Committer>,
    metrics: Arc<Metrics>,
    settings: TxnSettings,
    /// Per-transaction locks, striped by id. A change holds its lock until its write is
    /// durable, even when its caller stops waiting ([`Transactions::hold`]).
    locks: Vec<Arc<tokio::sync::Mutex<()>>>,
    open: Arc<Open>,
    /// Where the next purge resumes (none: from the oldest record).
    purge_mark: std::sync::Mutex<Option<PurgeMark>>,
}

/// The open transactions, loaded at start and changed by the committer once each state change
/// is durable (in commit order, see [`Transactions::track`]), so a metrics scrape or a listing
/// of open transactions never reads the transaction history.
///
/// Pending transactions are kept here in memory, oldest first (a pending transaction always
/// has exactly one entry in the due index, so the store needs no second index of them and a
/// half send and its commit each write one key fewer). Parked ones, rare and long-lived, keep
/// a `TxnOpen` index entry and are only counted here.
#[derive(Debug)]
struct Open {
    /// `(created_at, id)` of every pending transaction.
    pending: std::sync::Mutex<BTreeSet<(Millis, String)>>,
    parked: AtomicU64,
}

/// Marks a store whose transaction indexes are the lean ones: no resolution index, and the
/// `TxnOpen` index for parked transactions only (built once for stores made before).
const LEAN_INDEX_META: &str = "txn-lean-indexes";
/// The marker of the previous index layout (open index for pending and parked, resolution
/// index), removed when a store is converted.
const OPEN_INDEX_META: &str = "txn-open-index";
/// Keys written per batch while converting a store.
const CONVERT_BATCH: usize = 10_000;

impl Open {
    /// Loads the open transactions of `store`, first converting its indexes if it predates the
    /// lean ones. Runs before the group-commit writer starts.
    fn load(store: &dyn Store) -> Result<Self> {
        if store.get(&Key::Meta(LEAN_INDEX_META.into()).encode())?.is_none() {
            convert_indexes(store)?;
            store.flush()?;
        }
        let mut pending = BTreeSet::new();
        crate::store::for_each_in_prefix(store, &Key::txn_due_prefix(), |k, _| {
            let Ok(Key::TxnDue { at, txn }) = Key::decode(&k) else {
                return Err(corrupt_raw(k, "not a due-index key"));
            };
            match read_txn(store, &txn)? {
                Some(t) if t.state == TxnState::Pending && t.next_check == Some(at) => {
                    pending.insert((t.created_at, t.id));
                }
                _ => {}
            }
            Ok(true)
        })?;
        let mut parked = 0u64;
        for_each_parked(store, |_, _| {
            parked += 1;
            Ok(true)
        })?;
        Ok(Self { pending: std::sync::Mutex::new(pending), parked: AtomicU64::new(parked) })
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, BTreeSet<(Millis, String)>> {
        // Only inserts and removes run under the lock: a panic there leaves the set whole.
        self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a durable change of transaction `(created_at, id)` from `before` (`None`: a
    /// new transaction) to `after`.
    fn changed(&self, before: Option<TxnState>, after: TxnState, entry: (Millis, String)) {
        match before {
            Some(TxnState::Pending) => {
                self.pending().remove(&entry);
            }
            Some(TxnState::Parked) => {
                self.parked.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
        match after {
            TxnState::Pending => {
                self.pending().insert(entry);
            }
            TxnState::Parked => {
                self.parked.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    /// Up to `limit` pending transactions created after `after`, oldest first.
    fn pending_page(&self, after: Option<&(Millis, String)>, limit: usize) -> Vec<(Millis, String)> {
        let set = self.pending();
        let range = match after {
            Some(a) => set.range((Bound::Excluded(a), Bound::Unbounded)),
            None => set.range::<(Millis, String), _>(..),
        };
        range.take(limit).cloned().collect()
    }
}

/// Converts the transaction indexes of a store from before the lean ones: deletes its
/// resolution index and its open-index entries, indexes its parked transactions again, and
/// marks the store converted in the last batch (a crash before it converts again). Applied
/// [`CONVERT_BATCH`] writes at a time, so a large store converts in bounded memory.
fn convert_indexes(store: &dyn Store) -> Result<()> {
    let mut batch = Batch::new();
    let mut writes = 0;
    // Counts the write just added to `batch`, applying the batch when it is large.
    let mut added = |batch: &mut Batch| -> Result<()> {
        writes += 1;
        if writes % CONVERT_BATCH == 0 {
            store.apply(&std::mem::take(batch))?;
        }
        Ok(())
    };
    let open_index = Key::TxnOpen { state: 0, created_at: 0, txn: String::new() }.kind_prefix();
    for prefix in [Key::txn_resolved_prefix(), open_index] {
        crate::store::for_each_in_prefix(store, &prefix, |k, _| {
            batch.delete_raw(k);
            added(&mut batch)?;
            Ok::<_, BrokerError>(true)
        })?;
    }
    for_each_txn(store, |t| {
        if t.state == TxnState::Parked {
            batch.put(&parked_key(&t), Vec::new());
            added(&mut batch)?;
        }
        Ok(true)
    })?;
    batch.delete(&Key::Meta(OPEN_INDEX_META.into()));
    batch.put(&Key::Meta(LEAN_INDEX_META.into()), vec![1]);
    store.apply(&batch)?;
    Ok(())
}

fn parked_key(t: &Txn) -> Key {
    Key::TxnOpen { state: super::state_to_u8(TxnState::Parked), created_at: t.created_at, txn: t.id.clone() }
}

/// Visits the parked transactions oldest first as `(created_at, id)`, in pages of 1,000 keys;
/// stops when `visit` returns false or fails.
fn for_each_parked(store: &dyn Store, mut visit: impl FnMut(Millis, String) -> Result<bool>) -> Result<()> {
    let prefix = Key::txn_open_prefix(super::state_to_u8(TxnState::Parked));
    crate::store::for_each_in_prefix(store, &prefix, |k, _| match Key::decode(&k) {
        Ok(Key::TxnOpen { created_at, txn, .. }) => visit(created_at, txn),
        _ => Err(corrupt_raw(k, "not an open-transaction key")),
    })
}

/// Visits every stored transaction record, oldest id first, in pages of 1,000; stops when
/// `visit` returns false or fails.
fn for_each_txn(store: &dyn Store, mut visit: impl FnMut(Txn) -> Result<bool>) -> Result<()> {
    crate::store::for_each_in_prefix(store, &Key::txn_prefix(), |k, v| {
        let t = Txn::decode(&v).map_err(|e| corrupt_raw(k, e))?;
        visit(t)
    })
}

/// The transaction record `id`, if stored.
fn read_txn(store: &dyn Store, id: &str) -> Result<Option<Txn>> {
    let key = Key::Txn(id.to_string());
    match store.get(&key.encode())? {
        None => Ok(None),
        Some(v) => Txn::decode(&v).map(Some).map_err(|e| corrupt(&key, e)),
    }
}

/// A transaction's scheduling and state before a change, for [`Transactions::txn_write`].
#[derive(Debug, Clone, Copy)]
struct Before {
    next_check: Option<Millis>,
    state: Option<TxnState>,
}

impl Before {
    fn of(t: &Txn) -> Self {
        Before { next_check: t.next_check, state: Some(t.state) }
    }
}

/// Transaction records read (and at most purged) per durable step of the purge.
const PURGE_PAGE: usize = 512;

/// Purges between two that walk every transaction record from the oldest.
const FULL_WALK_EVERY: u32 = 60;

/// What a purge leaves the next one: where its walk stopped, and the records before that it
/// kept. Every other record before `resume` was deleted (ids grow with creation time).
#[derive(Debug)]
struct PurgeMark {
    kept: Vec<Vec<u8>>,
    resume: Bound<Vec<u8>>,
    /// Purges since the last full walk.
    rounds: u32,
}

/// What one durable step of a purge did.
#[derive(Debug, Default)]
struct PurgeStep {
    purged: usize,
    /// The records it passed over (open, or resolved after the cutoff).
    kept: Vec<Vec<u8>>,
    /// The first record created after the cutoff, where the walk ends.
    stopped_at: Option<Vec<u8>>,
}

static TXN_SEQ: AtomicU64 = AtomicU64::new(0);

/// A new transaction id: creation time and a sequence number, in hex (sorts by time).
fn new_txn_id(now: Millis) -> String {
    format!("{:012X}{:08X}", now, TXN_SEQ.fetch_add(1, Ordering::Relaxed) as u32)
}

fn resolution_name(r: Resolution) -> &'static str {
    match r {
        Resolution::Commit => "commit",
        Resolution::Rollback => "rollback",
        Resolution::Unknown => "unknown",
    }
}

fn stripe(key: &str) -> usize {
    (crate::codec::fnv1a(key) % TXN_LOCKS as u64) as usize
}

fn corrupt(key: &Key, e: impl std::fmt::Display) -> BrokerError {
    corrupt_raw(key.encode(), e)
}

fn corrupt_raw(key: Vec<u8>, e: impl std::fmt::Display) -> BrokerError {
    StoreError::Corrupt { key, detail: e.to_string() }.into()
}

fn txn_error(e: TxnError, id: &str) -> BrokerError {
    match e {
        TxnError::Contrary { state } => BrokerError::PreconditionFailed(format!(
            "transaction {id} is already {}; a contrary decision changes nothing",
            state.as_str()
        )),
        TxnError::NotParked { state } => {
            BrokerError::PreconditionFailed(format!("transaction {id} is {}, not parked", state.as_str()))
        }
    }
}

impl Transactions {
    /// Loads the open transactions of `store`, first converting its indexes if the store
    /// predates the lean ones (written directly, not through `committer`: call before anything
    /// else writes).
    pub fn load(
        store: Arc<dyn Store>,
        committer: Arc<Committer>,
        metrics: Arc<Metrics>,
        settings: TxnSettings,
    ) -> Result<Self> {
        let open = Open::load(store.as_ref())?;
        let locks = (0..TXN_LOCKS).map(|_| Arc::new(tokio::sync::Mutex::new(()))).collect();
        Ok(Self { store, committer, metrics, settings, locks, open: Arc::new(open), purge_mark: Default::default() })
    }

    async fn txn_lock(&self, key: &str) -> TxnGuard {
        self.locks[stripe(key)].clone().lock_owned().await
    }

    /// `after`, then the release of `guard`: run by the writer once the write is durable, so the
    /// lock covers the write even if the request that made it is dropped meanwhile (a client
    /// gone, a deadline passed). Released at once if the write fails or is never submitted.
    /// Without it, a contrary decision could read the state from before a commit still in
    /// flight (and record a rollback of a published message), or a retried half send could
    /// store a second transaction.
    fn hold(after: Option<AfterCommit>, guard: TxnGuard) -> Option<AfterCommit> {
        Some(Box::new(move || {
            if let Some(after) = after {
                after();
            }
            drop(guard);
        }))
    }

    /// Stores a half message (invisible to consumers) and returns its transaction id.
    /// Idempotent on `(topic, message id)`: a retried send gets the first transaction back.
    pub async fn send_half(&self, msg: NewMessage, producer: &str) -> Result<String> {
        let by_message = Key::TxnByMessage { topic: msg.topic.clone(), message_id: msg.message_id.clone() };
        let guard = self.txn_lock(&format!("{}\0{}", msg.topic, msg.message_id)).await;
        if let Some(id) = self.store.get(&by_message.encode())? {
            // Found, but possibly only applied: after a failed flush the store keeps what it
            // applied, and the first send was answered with an error. Not durable, not OK.
            if let Some(why) = self.committer.poisoned() {
                return Err(StoreError::Poisoned(why).into());
            }
            return String::from_utf8(id).map_err(|e| corrupt(&by_message, e));
        }
        let now = now_ms();
        let first_check = now + msg.recovery_duration_ms.unwrap_or(self.settings.timeout.as_millis() as Millis);
        let id = new_txn_id(now);
        let txn =
            Txn::new(id.clone(), msg.topic.clone(), msg.message_id.clone(), producer.to_string(), now, first_check);
        let half = StoredMessage {
            body_md5: md5_hex(&msg.body),
            msg,
            queue: 0,
            offset: 0,
            store_timestamp: now,
            producer: producer.to_string(),
        };
        let mut batch = self.txn_write(&txn, Before { next_check: None, state: None });
        chunks::put(&mut batch, &half.encode_as(self.settings.records), |chunk| Key::HalfChunk {
            txn: id.clone(),
            chunk,
        })?;
        batch.put(&by_message, id.clone().into_bytes());
        self.commit_tracked(batch, None, &txn, guard).await?;
        tracing::debug!(
            transaction_id = id,
            topic = half.msg.topic,
            message_id = half.msg.message_id,
            "half message stored"
        );
        Ok(id)
    }

    /// The transaction record, if it exists (pending, or resolved within the retention).
    pub fn transaction(&self, id: &str) -> Result<Option<Txn>> {
        read_txn(self.store.as_ref(), id)
    }

    /// The half message of a transaction.
    pub fn half_message(&self, id: &str) -> Result<Option<StoredMessage>> {
        let prefix = Key::half_prefix(id);
        match chunks::get(self.store.as_ref(), &prefix)? {
            None => Ok(None),
            Some(bytes) => StoredMessage::decode(&bytes)
                .map(Some)
                .map_err(|e| StoreError::Corrupt { key: prefix, detail: e.to_string() }.into()),
        }
    }

    /// Finds a transaction id from the id or, when blank, from `(topic, message id)`.
    fn resolve_txn_id(&self, topic: &str, message_id: &str, txn_id: &str) -> Result<String> {
        if !txn_id.trim().is_empty() {
            return Ok(txn_id.to_string());
        }
        match self.transaction_of_message(topic, message_id)? {
            Some(id) if !message_id.is_empty() => Ok(id),
            _ => Err(BrokerError::InvalidTransactionId("transaction id is blank".into())),
        }
    }

    /// The transaction that sent message `message_id` of `topic`, while its record is kept.
    pub fn transaction_of_message(&self, topic: &str, message_id: &str) -> Result<Option<String>> {
        let key = Key::TxnByMessage { topic: topic.to_string(), message_id: message_id.to_string() };
        self.store.get(&key.encode())?.map(|id| String::from_utf8(id).map_err(|e| corrupt(&key, e))).transpose()
    }

    /// Ends (or answers) a transaction. `may_end(its topic)` decides first whether the caller
    /// may (the topic stored with the transaction, whatever the request named). On COMMIT,
    /// `publish(half message, transaction id, writes, after, now)` must append the message to
    /// its topic in the same durable write as the transaction's new state (`writes`), and run
    /// `after` on the writer once that write is durable; repeats are accepted; a
    /// contrary decision after the outcome is fixed is refused with `PreconditionFailed` and
    /// changes nothing.
    #[allow(clippy::too_many_arguments)]
    pub async fn end<F, Fut>(
        &self,
        topic: &str,
        message_id: &str,
        txn_id: &str,
        resolution: Resolution,
        by: Actor,
        reason: Option<String>,
        may_end: impl FnOnce(&str) -> Result<()>,
        publish: F,
    ) -> Result<Txn>
    where
        F: FnOnce(StoredMessage, String, Batch, Option<AfterCommit>, Millis) -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let id = self.resolve_txn_id(topic, message_id, txn_id)?;
        let guard = self.txn_lock(&id).await;
        let mut txn = self
            .transaction(&id)?
            .ok_or_else(|| BrokerError::InvalidTransactionId(format!("unknown transaction {id}")))?;
        may_end(&txn.topic)?;
        if !message_id.is_empty() && txn.message_id != message_id {
            return Err(BrokerError::InvalidTransactionId(format!(
                "transaction {id} belongs to message {}, not {message_id}",
                txn.message_id
            )));
        }
        let now = now_ms();
        let before = Before::of(&txn);
        let effect = txn.end(resolution, by, reason, now).map_err(|e| txn_error(e, &id))?;
        let m = &self.metrics;
        if by == Actor::Check {
            m.check_answers.add(&[resolution_name(resolution)], 1);
        }
        if matches!(effect, Effect::Publish | Effect::Discard) {
            m.txn_decisions.add(&[resolution_name(resolution), by.as_str()], 1);
        }
        match effect {
            Effect::Publish => {
                m.messages_in.add(&[&txn.topic, "TRANSACTION"], 1);
                m.commits.add(&[&txn.topic], 1);
            }
            Effect::Discard => m.rollbacks.add(&[&txn.topic], 1),
            _ => {}
        }
        let batch = self.txn_write(&txn, before);
        match effect {
            Effect::Publish => {
                let half = self
                    .half_message(&id)?
                    .ok_or_else(|| BrokerError::Internal(format!("half message of {id} is missing")))?;
                publish(half, id.clone(), batch, Self::hold(self.track(before.state, &txn), guard), now).await?;
                log_end(&id, &txn.topic, by, "committed");
            }
            Effect::Discard => {
                self.commit_tracked(batch, before.state, &txn, guard).await?;
                log_end(&id, &txn.topic, by, "rolled back");
            }
            Effect::None => self.commit_tracked(batch, before.state, &txn, guard).await?,
        }
        Ok(txn)
    }

    /// The writes that store `txn` after a change from `before`: the record, its due-index
    /// entry and, while parked, its `TxnOpen` entry.
    fn txn_write(&self, txn: &Txn, before: Before) -> Batch {
        let mut batch = Batch::new();
        batch.put(&Key::Txn(txn.id.clone()), txn.encode());
        if before.next_check != txn.next_check {
            if let Some(at) = before.next_check {
                batch.delete(&Key::TxnDue { at, txn: txn.id.clone() });
            }
            if let Some(at) = txn.next_check {
                batch.put(&Key::TxnDue { at, txn: txn.id.clone() }, Vec::new());
            }
        }
        let parked = TxnState::Parked;
        if (before.state == Some(parked)) != (txn.state == parked) {
            if txn.state == parked {
                batch.put(&parked_key(txn), Vec::new());
            } else {
                batch.delete(&parked_key(txn));
            }
        }
        batch
    }

    /// Commits a transaction's change from `before` and tracks it.
    async fn commit_txn(&self, txn: &Txn, before: Before, guard: TxnGuard) -> Result<()> {
        self.commit_tracked(self.txn_write(txn, before), before.state, txn, guard).await
    }

    /// Writes `batch`, which moves `txn` from state `before`, and waits until it is durable;
    /// `guard` (the transaction's lock) is released once it is ([`Self::hold`]).
    async fn commit_tracked(&self, batch: Batch, before: Option<TxnState>, txn: &Txn, guard: TxnGuard) -> Result<()> {
        let after = Self::hold(self.track(before, txn), guard);
        self.committer.reserve().await?.submit(batch, after).durable().await?;
        Ok(())
    }

    /// The open-transaction bookkeeping of `txn`'s move from state `before`, for the writer to
    /// run once the move is durable: in commit order, and even if its caller stopped waiting
    /// (a dropped request), so the pending set never drifts from the store.
    fn track(&self, before: Option<TxnState>, txn: &Txn) -> Option<AfterCommit> {
        if before == Some(txn.state) {
            return None;
        }
        let open = self.open.clone();
        let (after, entry) = (txn.state, (txn.created_at, txn.id.clone()));
        Some(Box::new(move || open.changed(before, after, entry)))
    }

    /// Transactions whose check is due at `now`: `(due time, id)`, earliest first.
    pub fn due_transactions(&self, now: Millis, limit: usize) -> Result<Vec<(Millis, String)>> {
        let start = Key::txn_due_prefix();
        let end = Key::TxnDue { at: now.saturating_add(1), txn: String::new() }.encode();
        let mut out = Vec::new();
        for (k, _) in self.store.scan(Bound::Included(&start), Bound::Excluded(&end), limit, false)? {
            match Key::decode(&k) {
                Ok(Key::TxnDue { at, txn }) => out.push((at, txn)),
                _ => return Err(StoreError::Corrupt { key: k, detail: "not a due-index key".into() }.into()),
            }
        }
        Ok(out)
    }

    /// Runs one due check of `id` (found in the due index at `due`). `deliver` writes the check
    /// command to a live stream and names where, or `None` if no stream took it. Applies the
    /// max-checks policy after the last check, or once no producer was reachable for
    /// `txn_unreachable_max_age`.
    pub async fn check_transaction(
        &self,
        id: &str,
        due: Millis,
        deliver: impl FnOnce(&Txn, &StoredMessage) -> Option<CheckTarget>,
    ) -> Result<CheckOutcome> {
        let guard = self.txn_lock(id).await;
        let now = now_ms();
        let Some(mut txn) = self.transaction(id)? else {
            let mut batch = Batch::new();
            batch.delete(&Key::TxnDue { at: due, txn: id.to_string() });
            self.committer.commit(batch).await?;
            return Ok(CheckOutcome::NotDue);
        };
        if txn.next_check != Some(due) || !txn.is_due(now) {
            if txn.next_check != Some(due) {
                let mut batch = Batch::new();
                batch.delete(&Key::TxnDue { at: due, txn: id.to_string() });
                self.committer.commit(batch).await?;
            }
            return Ok(CheckOutcome::NotDue);
        }
        let c = &self.settings;
        let max_age = c.unreachable_max_age.as_millis() as Millis;
        let before = Before::of(&txn); // next_check == Some(due): checked above
        let why = if txn.checks >= c.max_checks {
            Some(format!("no decision after {} checks", txn.checks))
        } else if txn.unreachable_too_long(now, max_age) {
            Some(format!(
                "no producer reachable for {} ({} attempts)",
                humantime::format_duration(c.unreachable_max_age),
                txn.unreachable_attempts
            ))
        } else {
            None
        };
        if let Some(why) = why {
            let park = c.max_checks_policy == MaxChecksPolicy::Park;
            txn.exhaust(park, why.clone(), now);
            self.commit_txn(&txn, before, guard).await?;
            if park {
                self.metrics.txn_parked.add(&[&txn.topic], 1);
            } else {
                self.metrics.txn_decisions.add(&["rollback", "policy"], 1);
                self.metrics.rollbacks.add(&[&txn.topic], 1);
            }
            tracing::warn!(
                transaction_id = id,
                topic = txn.topic,
                state = txn.state.as_str(),
                why,
                "max-checks policy applied"
            );
            return Ok(CheckOutcome::Exhausted { state: txn.state });
        }
        let half =
            self.half_message(id)?.ok_or_else(|| BrokerError::Internal(format!("half message of {id} is missing")))?;
        let interval = c.check_interval.as_millis() as Millis;
        let outcome = match deliver(&txn, &half) {
            Some(CheckTarget { client, stream }) => {
                txn.checked(&client, stream, now, interval);
                self.metrics.checks_sent.add(&[&txn.topic], 1);
                CheckOutcome::Sent { client, stream }
            }
            None => {
                txn.unreachable(now, interval, max_age);
                self.metrics.checks_unreachable.add(&[&txn.topic], 1);
                CheckOutcome::Unreachable { retry_at: txn.next_check.unwrap_or(now) }
            }
        };
        self.commit_txn(&txn, before, guard).await?;
        Ok(outcome)
    }

    /// Operator action: resume checks of a parked transaction.
    pub async fn resume_transaction(&self, id: &str, reason: Option<String>) -> Result<Txn> {
        let guard = self.txn_lock(id).await;
        let mut txn = self
            .transaction(id)?
            .ok_or_else(|| BrokerError::InvalidTransactionId(format!("unknown transaction {id}")))?;
        let before = Before::of(&txn);
        txn.resume(reason, now_ms()).map_err(|e| txn_error(e, id))?;
        self.commit_txn(&txn, before, guard).await?;
        Ok(txn)
    }

    /// Transactions matching `filter`, oldest first, at most `filter.limit`. Listing pending or
    /// parked ones reads only open transactions (O(open)): the pending ones from memory, the
    /// parked ones through the `TxnOpen` index.
    pub fn list_transactions(&self, filter: &TxnFilter) -> Result<Vec<Txn>> {
        let now = now_ms();
        let limit = filter.limit.max(1);
        let keep = |t: &Txn| {
            filter.state.is_none_or(|s| s == t.state)
                && filter.topic.as_deref().is_none_or(|x| x == t.topic)
                && filter.older_than_ms.is_none_or(|age| now - t.created_at >= age)
        };
        // Oldest first: once one is too young, so are the rest.
        let too_young = |created_at: Millis| filter.older_than_ms.is_some_and(|age| now - created_at < age);
        let mut out = Vec::new();
        match filter.state {
            Some(TxnState::Pending) => {
                let mut after = None;
                'pages: loop {
                    let page = self.open.pending_page(after.as_ref(), 1000);
                    for (created_at, id) in &page {
                        if too_young(*created_at) {
                            break 'pages;
                        }
                        match self.transaction(id)? {
                            Some(t) if keep(&t) => out.push(t),
                            _ => {}
                        }
                        if out.len() >= limit {
                            break 'pages;
                        }
                    }
                    match page.last() {
                        Some(last) => after = Some(last.clone()),
                        None => break,
                    }
                }
            }
            Some(TxnState::Parked) => for_each_parked(self.store.as_ref(), |created_at, id| {
                if too_young(created_at) {
                    return Ok(false);
                }
                match self.transaction(&id)? {
                    Some(t) if keep(&t) => out.push(t),
                    _ => {}
                }
                Ok(out.len() < limit)
            })?,
            _ => for_each_txn(self.store.as_ref(), |t| {
                if keep(&t) {
                    out.push(t);
                }
                Ok(out.len() < limit)
            })?,
        }
        Ok(out)
    }

    /// Pending and parked counts and the oldest pending transaction's creation time: O(1),
    /// from memory.
    pub fn transaction_counts(&self) -> Result<TxnCounts> {
        let (pending, oldest_pending) = {
            let set = self.open.pending();
            (set.len() as u64, set.first().map(|(created_at, _)| *created_at))
        };
        Ok(TxnCounts { pending, parked: self.open.parked.load(Ordering::Relaxed), oldest_pending })
    }

    /// Deletes resolved transactions older than the transaction retention (record, half
    /// message, indexes), one durable page at a time until none is left, so purging keeps up
    /// with any transaction rate while other writes get their turn between pages. Returns how
    /// many were purged.
    ///
    /// Records are walked in id order, which is creation order (ids start with their creation
    /// time), from the oldest to the first created after the cutoff: a transaction resolved
    /// before the cutoff was created before it. The walk passes over the transactions still
    /// open or resolved since the cutoff, which are few, and needs no index of its own.
    ///
    /// A purge resumes where the last one stopped: it reads the records that one kept again,
    /// one by one, and walks on from there, so it never reads what earlier purges deleted (a
    /// store of sorted runs keeps a deletion's tombstone until a merge takes in its oldest
    /// run). Every 60th purge, and the first after a start or a failed one, walks from the
    /// oldest record, for records written below the mark since (a clock set back, a replica's
    /// snapshot).
    pub async fn purge_transactions(&self) -> Result<usize> {
        let cutoff = now_ms() - self.settings.retention.as_millis() as Millis;
        let prefix = Key::txn_prefix();
        let end = crate::store::keys::prefix_end(&prefix);
        let end = end.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
        // Taken out: a purge that fails leaves no mark, and the next one walks from the start.
        let mark = crate::sync::lock(&self.purge_mark).take().filter(|m| m.rounds < FULL_WALK_EVERY);
        let (mut purged, mut kept, mut from, mut rounds) = (0, Vec::new(), Bound::Included(prefix), 0);
        if let Some(mark) = mark {
            for keys in mark.kept.chunks(PURGE_PAGE) {
                let mut records = Vec::with_capacity(keys.len());
                for k in keys {
                    if let Some(v) = self.store.get(k)? {
                        records.push((k.clone(), v));
                    }
                }
                let step = self.purge_records(cutoff, records).await?;
                purged += step.purged;
                kept.extend(step.kept);
            }
            (from, rounds) = (mark.resume, mark.rounds + 1);
        }
        loop {
            let records = self.store.scan(from.as_ref().map(Vec::as_slice), end, PURGE_PAGE, false)?;
            let (full, last) = (records.len() == PURGE_PAGE, records.last().map(|(k, _)| k.clone()));
            let step = self.purge_records(cutoff, records).await?;
            purged += step.purged;
            kept.extend(step.kept);
            if let Some(first_after) = step.stopped_at {
                from = Bound::Included(first_after);
                break;
            }
            if let Some(last) = last {
                from = Bound::Excluded(last);
            }
            if !full {
                break;
            }
            tokio::task::yield_now().await;
        }
        *crate::sync::lock(&self.purge_mark) = Some(PurgeMark { kept, resume: from, rounds });
        if purged > 0 {
            tracing::info!(purged, "purged resolved transactions past retention");
        }
        Ok(purged)
    }

    /// Purges, in one durable write, the transactions among `records` (in id order) resolved
    /// before `cutoff`, up to the first one created after it.
    async fn purge_records(&self, cutoff: Millis, records: Vec<(Vec<u8>, Vec<u8>)>) -> Result<PurgeStep> {
        let mut step = PurgeStep::default();
        let mut batch = Batch::new();
        for (k, v) in records {
            let t = Txn::decode(&v).map_err(|e| corrupt_raw(k.clone(), e))?;
            if t.created_at >= cutoff {
                step.stopped_at = Some(k);
                break;
            }
            if !(t.state.is_final() && t.resolved_at.is_some_and(|at| at < cutoff)) {
                step.kept.push(k);
                continue;
            }
            batch.delete(&Key::TxnByMessage { topic: t.topic.clone(), message_id: t.message_id.clone() });
            // A committed message's queue record points at the half message: it stays until
            // that record expires (the log deletes it then).
            let half_in_use = t.state == TxnState::Committed
                && crate::log::references_half(self.store.as_ref(), &t.topic, &t.message_id, &t.id)?;
            if !half_in_use {
                chunks::delete(self.store.as_ref(), &mut batch, &Key::half_prefix(&t.id))?;
            }
            batch.delete_raw(k);
            step.purged += 1;
        }
        if step.purged > 0 {
            self.committer.commit(batch).await?;
        }
        Ok(step)
    }
}

/// Logs how a transaction ended: at debug level when its producer ended it (the common case, at
/// the send rate), at info level when a check-back or an operator did.
fn log_end(id: &str, topic: &str, by: Actor, outcome: &str) {
    if by == Actor::Producer {
        tracing::debug!(transaction_id = id, topic, by = by.as_str(), "transaction {outcome}");
    } else {
        tracing::info!(transaction_id = id, topic, by = by.as_str(), "transaction {outcome}");
    }
}
