//! Group commit: the one writer of the store.
//!
//! Request handlers hand their [`Batch`] to a bounded channel and wait. A dedicated OS thread
//! (never a tokio worker: it blocks on disk) takes everything queued, applies it as one atomic
//! batch, flushes once (fsync) and only then answers every waiter. Concurrent requests thus
//! share one fsync, and a full channel makes senders wait (backpressure).
//!
//! Ordering: jobs are applied in channel order. A caller that must keep an in-memory order in
//! step with the store (queue offsets) reserves a [`Slot`] first and submits under its own lock.
//!
//! Failure: if an apply or a flush fails, the committer is *poisoned*: every waiter of that
//! group and every later write gets [`StoreError::Poisoned`]. Nothing is retried, because a
//! failed fsync leaves the page cache in an unknown state; the operator restarts the broker.

use super::{Batch, Store, StoreError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Most jobs merged into one apply + flush.
const MAX_GROUP: usize = 1024;

/// How long a group of writes nobody waits for ([`Slot::submit_unawaited`]) waits for one that
/// somebody does, to share its flush, before it is flushed alone.
const UNAWAITED_WAIT: Duration = Duration::from_millis(10);

/// Work run on the writer thread once a job is durable, before its waiter is answered.
/// Used to publish in-memory state (a queue's durable high watermark) in commit order.
pub type AfterCommit = Box<dyn FnOnce() + Send>;

struct Job {
    batch: Batch,
    after: Option<AfterCommit>,
    /// Its waiter; `None` when nobody waits for it ([`Slot::submit_unawaited`]): then it need
    /// not be flushed before a write that somebody waits for.
    done: Option<oneshot::Sender<Result<(), StoreError>>>,
}

enum Msg {
    Write(Job),
    Stop,
}

/// Counters of the writer, for status and metrics.
#[derive(Debug, Default)]
struct Counters {
    flushes: AtomicU64,
    jobs: AtomicU64,
    flush_micros: AtomicU64,
    max_group: AtomicU64,
}

/// A snapshot of the writer's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Apply + fsync rounds done.
    pub flushes: u64,
    /// Jobs (request writes) made durable; `jobs / flushes` is the average group size.
    pub jobs: u64,
    /// Total time spent in apply + flush, in microseconds.
    pub flush_micros: u64,
    /// Largest group seen.
    pub max_group: u64,
}

/// Replication of committed groups (a cluster shard with replicas, docs/replication.md). The
/// writer thread calls it; it may block.
pub trait Replicator: Send + Sync + 'static {
    /// Whether enough in-sync replicas exist to take writes now; a group is refused (nothing
    /// applied) when they do not.
    fn writable(&self) -> Result<(), String>;
    /// Numbers the group about to be applied (adding its sequence to `batch`, so a replica's
    /// state names the sequence it stands at); returns that sequence.
    fn prepare(&self, batch: &mut Batch) -> u64;
    /// Called once group `seq` is applied and flushed here: returns once enough in-sync
    /// replicas hold it durably, or why not yet (the writer then tries again: the group's
    /// waiters are answered only when it is acknowledged).
    fn replicate(&self, seq: u64, batch: &Batch) -> Result<(), String>;
    /// Whether groups not yet acknowledged never will be (this leader was replaced): the
    /// writer then stops offering them.
    fn abandoned(&self) -> bool;
}

/// Called after every successful group commit with its size and duration.
pub type FlushObserver = Box<dyn Fn(usize, std::time::Duration) + Send + Sync>;

struct Shared {
    poison: Mutex<Option<String>>,
    counters: Counters,
    observer: std::sync::OnceLock<FlushObserver>,
    replicator: std::sync::OnceLock<Arc<dyn Replicator>>,
    stopping: std::sync::atomic::AtomicBool,
    /// [`UNAWAITED_WAIT`] in microseconds (tests change it).
    unawaited_wait: AtomicU64,
}

impl Shared {
    fn poisoned(&self) -> Option<String> {
        crate::sync::lock(&self.poison).clone()
    }

    fn poison(&self, why: String) {
        let mut guard = crate::sync::lock(&self.poison);
        guard.get_or_insert(why);
    }
}

/// The group-commit writer. Cheap to share behind an `Arc`.
pub struct Committer {
    tx: mpsc::Sender<Msg>,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// A reserved place in the writer's queue; submitting cannot block or fail.
pub struct Slot<'a> {
    permit: mpsc::Permit<'a, Msg>,
}

/// A submitted write; await [`Pending::durable`] for its outcome.
pub struct Pending {
    rx: oneshot::Receiver<Result<(), StoreError>>,
}

impl Pending {
    /// Resolves once the write is fsynced (Ok) or has failed.
    pub async fn durable(self) -> Result<(), StoreError> {
        self.rx.await.unwrap_or(Err(StoreError::Closed))
    }
}

impl Slot<'_> {
    /// Queues `batch`; `after` runs on the writer thread once it is durable.
    pub fn submit(self, batch: Batch, after: Option<AfterCommit>) -> Pending {
        let (done, rx) = oneshot::channel();
        self.permit.send(Msg::Write(Job { batch, after, done: Some(done) }));
        Pending { rx }
    }

    /// Queues `batch` with nobody waiting for it: applied in its place in the queue like any
    /// other, but it does not start a flush of its own while the writer waits up to 10 ms for
    /// a write that somebody waits for, whose flush it then shares. For
    /// records whose loss in a crash is harmless (deliveries: the messages are delivered
    /// again); a write queued after it is never durable without it.
    pub fn submit_unawaited(self, batch: Batch) {
        self.permit.send(Msg::Write(Job { batch, after: None, done: None }));
    }
}

impl Committer {
    /// Starts the writer thread over `store`, with room for `capacity` queued writes.
    pub fn start(store: Arc<dyn Store>, capacity: usize) -> Result<Self, StoreError> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let shared = Arc::new(Shared {
            poison: Mutex::new(None),
            counters: Counters::default(),
            observer: std::sync::OnceLock::new(),
            replicator: std::sync::OnceLock::new(),
            stopping: std::sync::atomic::AtomicBool::new(false),
            unawaited_wait: AtomicU64::new(UNAWAITED_WAIT.as_micros() as u64),
        });
        let thread = std::thread::Builder::new()
            .name("txmq-committer".into())
            .spawn({
                let shared = shared.clone();
                move || writer_loop(store, rx, shared)
            })
            .map_err(|e| StoreError::Io(format!("cannot start the committer thread: {e}")))?;
        Ok(Self { tx, shared, thread: Mutex::new(Some(thread)) })
    }

    /// Waits for room in the queue. Fails fast when poisoned, closed, or short of in-sync
    /// replicas.
    pub async fn reserve(&self) -> Result<Slot<'_>, StoreError> {
        if let Some(why) = self.shared.poisoned() {
            return Err(StoreError::Poisoned(why));
        }
        if let Some(r) = self.shared.replicator.get() {
            r.writable().map_err(StoreError::NotEnoughReplicas)?;
        }
        let permit = self.tx.reserve().await.map_err(|_| StoreError::Closed)?;
        Ok(Slot { permit })
    }

    /// Writes `batch` and waits until it is durable.
    pub async fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        self.reserve().await?.submit(batch, None).durable().await
    }

    /// Replicates every group from now on (before its waiters are answered). Only the first
    /// call has effect.
    pub fn replicate_with(&self, r: Arc<dyn Replicator>) {
        let _ = self.shared.replicator.set(r);
    }

    /// Sets how long a group of unawaited writes waits for an awaited one (tests).
    #[cfg(test)]
    pub fn set_unawaited_wait(&self, wait: Duration) {
        self.shared.unawaited_wait.store(wait.as_micros() as u64, Ordering::Relaxed);
    }

    /// Installs the observer of group commits (metrics). Only the first call has effect.
    pub fn observe(&self, f: FlushObserver) {
        let _ = self.shared.observer.set(f);
    }

    /// Why the store refuses writes, if it does.
    pub fn poisoned(&self) -> Option<String> {
        self.shared.poisoned()
    }

    pub fn stats(&self) -> CommitStats {
        let c = &self.shared.counters;
        CommitStats {
            flushes: c.flushes.load(Ordering::Relaxed),
            jobs: c.jobs.load(Ordering::Relaxed),
            flush_micros: c.flush_micros.load(Ordering::Relaxed),
            max_group: c.max_group.load(Ordering::Relaxed),
        }
    }

    /// Finishes every queued write, flushes, and stops the thread. Later writes get
    /// [`StoreError::Closed`]. Blocks: call it from a blocking context or at the very end.
    pub fn shutdown(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // A closed channel means the thread is gone already; either way we join below.
        let _ = self.tx.try_send(Msg::Stop).or_else(|e| match e {
            mpsc::error::TrySendError::Full(m) => self.tx.blocking_send(m).map_err(|_| ()),
            mpsc::error::TrySendError::Closed(_) => Ok(()),
        });
        let handle = crate::sync::lock(&self.thread).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        let _ = self.tx.try_send(Msg::Stop);
    }
}

fn writer_loop(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Msg>, shared: Arc<Shared>) {
    // Only to wait for the queue with a timeout (a group nobody waits for); without it, such a
    // group is flushed at once.
    let timer = tokio::runtime::Builder::new_current_thread().enable_time().build();
    if let Err(e) = &timer {
        tracing::warn!(error = %e, "the committer cannot wait with a timeout; unawaited writes flush at once");
    }
    let mut group: Vec<Job> = Vec::new();
    let mut stopping = false;
    while !stopping {
        match rx.blocking_recv() {
            Some(Msg::Write(job)) => group.push(job),
            Some(Msg::Stop) | None => break,
        }
        stopping = drain(&mut rx, &mut group);
        if let Ok(timer) = &timer {
            let wait = Duration::from_micros(shared.unawaited_wait.load(Ordering::Relaxed));
            let deadline = tokio::time::Instant::now() + wait;
            while !stopping && group.len() < MAX_GROUP && group.iter().all(|j| j.done.is_none()) {
                match timer.block_on(async { tokio::time::timeout_at(deadline, rx.recv()).await }) {
                    Ok(Some(Msg::Write(job))) => {
                        group.push(job);
                        stopping = drain(&mut rx, &mut group);
                    }
                    Ok(Some(Msg::Stop) | None) => stopping = true,
                    Err(_) => break,
                }
            }
        }
        commit_group(store.as_ref(), &shared, std::mem::take(&mut group));
    }
    // Refuse what arrives from now on; answer what is still queued.
    rx.close();
    let mut rest = Vec::new();
    while let Ok(msg) = rx.try_recv() {
        if let Msg::Write(job) = msg {
            rest.push(job);
        }
    }
    if !rest.is_empty() {
        commit_group(store.as_ref(), &shared, rest);
    }
    // A last flush even when idle, as a checkpoint: shutdown promises "flushed", and the next
    // open has nothing to replay.
    if shared.poisoned().is_none() {
        if let Err(e) = store.checkpoint() {
            shared.poison(e.to_string());
        }
    }
}

/// Moves what is queued into `group` (up to [`MAX_GROUP`]); returns whether a stop came.
fn drain(rx: &mut mpsc::Receiver<Msg>, group: &mut Vec<Job>) -> bool {
    while group.len() < MAX_GROUP {
        match rx.try_recv() {
            Ok(Msg::Write(job)) => group.push(job),
            Ok(Msg::Stop) => return true,
            Err(_) => return false,
        }
    }
    false
}

fn commit_group(store: &dyn Store, shared: &Shared, group: Vec<Job>) {
    if let Some(why) = shared.poisoned() {
        for done in group.into_iter().filter_map(|j| j.done) {
            let _ = done.send(Err(StoreError::Poisoned(why.clone())));
        }
        return;
    }
    let replicator = shared.replicator.get();
    if let Some(Err(why)) = replicator.map(|r| r.writable()) {
        for done in group.into_iter().filter_map(|j| j.done) {
            let _ = done.send(Err(StoreError::NotEnoughReplicas(why.clone())));
        }
        return;
    }
    let started = Instant::now();
    let mut merged = Batch::new();
    let mut waiters = Vec::with_capacity(group.len());
    for job in group {
        merged.extend(job.batch);
        waiters.push((job.after, job.done));
    }
    let seq = replicator.map(|r| r.prepare(&mut merged));
    let mut result = store.apply(&merged).and_then(|()| store.flush());
    if let (Ok(()), Some(r), Some(seq)) = (&result, replicator, seq) {
        // Applied here, not acknowledged until the in-sync replicas hold it. When they cannot
        // (too few in sync), its writers are told so at once (they retry; new writes are
        // refused meanwhile), and the group is offered again until it is acknowledged: only
        // then is it published here (its `after` work), as it may be visible to consumers.
        let mut logged = false;
        loop {
            match r.replicate(seq, &merged) {
                Ok(()) => break,
                Err(why) => {
                    if !logged {
                        tracing::warn!(seq, reason = %why, "write not acknowledged by enough replicas; retrying");
                        logged = true;
                        for (_, done) in &mut waiters {
                            if let Some(done) = done.take() {
                                let _ = done.send(Err(StoreError::NotEnoughReplicas(why.clone())));
                            }
                        }
                    }
                    if shared.stopping.load(Ordering::SeqCst) || r.abandoned() {
                        result = Err(StoreError::NotEnoughReplicas(why));
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            }
        }
    }
    let c = &shared.counters;
    match result {
        Ok(()) => {
            let n = waiters.len() as u64;
            c.flushes.fetch_add(1, Ordering::Relaxed);
            c.jobs.fetch_add(n, Ordering::Relaxed);
            c.flush_micros.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
            c.max_group.fetch_max(n, Ordering::Relaxed);
            if let Some(observe) = shared.observer.get() {
                observe(waiters.len(), started.elapsed());
            }
            for (after, done) in waiters {
                if let Some(f) = after {
                    f();
                }
                if let Some(done) = done {
                    let _ = done.send(Ok(()));
                }
            }
        }
        Err(StoreError::NotEnoughReplicas(why)) => {
            // Stopping with a group applied here but not acknowledged: its writers were told it
            // failed; it stays in this store and is offered to replicas after the restart.
            for done in waiters.into_iter().filter_map(|(_, d)| d) {
                let _ = done.send(Err(StoreError::NotEnoughReplicas(why.clone())));
            }
        }
        Err(e) => {
            let why = e.to_string();
            tracing::error!(error = %why, "store write failed; refusing further writes until restart");
            shared.poison(why.clone());
            for done in waiters.into_iter().filter_map(|(_, d)| d) {
                let _ = done.send(Err(StoreError::Poisoned(why.clone())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn put(key: &str) -> Batch {
        let mut b = Batch::new();
        b.put_raw(key.as_bytes().to_vec(), b"v".to_vec());
        b
    }

    #[tokio::test]
    async fn an_unawaited_write_shares_the_flush_of_the_next_awaited_one() {
        let store = Arc::new(MemoryStore::new());
        let committer = Committer::start(store.clone(), 16).unwrap();
        committer.set_unawaited_wait(Duration::from_secs(30));
        committer.reserve().await.unwrap().submit_unawaited(put("delivery"));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(committer.stats().flushes, 0, "flushed alone before its wait ended");
        committer.commit(put("ack")).await.unwrap();
        let stats = committer.stats();
        assert_eq!((stats.flushes, stats.jobs), (1, 2));
        assert!(store.get(b"delivery").unwrap().is_some());
        committer.shutdown();
    }

    #[tokio::test]
    async fn an_unawaited_write_alone_is_flushed_once_its_wait_ends() {
        let store = Arc::new(MemoryStore::new());
        let committer = Committer::start(store.clone(), 16).unwrap();
        committer.set_unawaited_wait(Duration::from_millis(100));
        let started = Instant::now();
        committer.reserve().await.unwrap().submit_unawaited(put("delivery"));
        while committer.stats().flushes == 0 {
            assert!(started.elapsed() < Duration::from_secs(10), "never flushed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(started.elapsed() >= Duration::from_millis(100), "flushed after {:?}", started.elapsed());
        assert!(store.get(b"delivery").unwrap().is_some());
        // A stop during the wait flushes it too.
        committer.set_unawaited_wait(Duration::from_secs(30));
        committer.reserve().await.unwrap().submit_unawaited(put("another"));
        tokio::task::spawn_blocking({
            let committer = Arc::new(committer);
            move || committer.shutdown()
        })
        .await
        .unwrap();
        assert!(store.get(b"another").unwrap().is_some());
    }
}
