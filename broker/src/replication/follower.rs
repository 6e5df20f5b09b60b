//! The follower side: copies of other nodes' stores, each under `<data dir>/replicas/<shard>`,
//! fed by one leader stream at a time. A batch is applied and fsynced before it is
//! acknowledged; a stream from a leader of an older epoch than the copy has seen is refused
//! (fencing); a snapshot's first chunk clears the copy.
//!
//! While the node's disk is under `--min-free-disk-bytes`, copies are not written: leader
//! streams are refused, and the copy goes on from where it stopped once space is back. A copy
//! whose write failed anyway (its disk full, an I/O error) is closed, as a restart would close
//! it, and the next leader stream opens it again from what is on disk. A copy found damaged
//! (sled reports corrupt data, or a record does not decode) is of no use to anyone: it is
//! deleted, and the next leader stream starts it afresh with a snapshot.

use super::{load_snapshot_page, snapshot_page, Position};
use crate::disk::DiskSpace;
use crate::store::{Batch, SledStore, Store, StoreError};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tonic::Status;
use txmq_proto::cluster::{replicate_request::Item, ReplicateRequest, ReplicateResponse};

/// One copy: its store, the lock that lets one leader stream feed it at a time, and the
/// highest leader epoch it has seen (streams of lower epochs are refused).
struct Copy {
    store: Arc<SledStore>,
    feeding: tokio::sync::Mutex<()>,
    fence: std::sync::atomic::AtomicI64,
}

fn fence_key() -> Vec<u8> {
    crate::store::Key::Meta("repl-fence".into()).encode()
}

/// Every copy this node holds.
pub struct Replicas {
    dir: PathBuf,
    open: Mutex<HashMap<String, Arc<Copy>>>,
    /// Shards this node serves from its copy now (failover): their copies are not fed.
    acting: Mutex<std::collections::HashSet<String>>,
    /// Fired when the node shuts down: every leader stream ends.
    shutdown: tokio_util::sync::CancellationToken,
    /// The free space of the node's data directory: copies are not written under its floor.
    disk: Arc<DiskSpace>,
    /// Copies found damaged, to delete before they are opened again, with the highest leader
    /// epoch each had seen (the fresh copy keeps fencing older leaders out).
    damaged: Mutex<HashMap<String, i64>>,
}

fn store_error(e: StoreError) -> Status {
    Status::internal(format!("replica store: {e}"))
}

impl Replicas {
    /// Copies kept under `data_dir/replicas`, written while `disk` is over its floor; leader
    /// streams end when `shutdown` fires.
    pub fn new(
        data_dir: &std::path::Path,
        disk: Arc<DiskSpace>,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Self {
        Replicas {
            dir: data_dir.join("replicas"),
            open: Mutex::new(HashMap::new()),
            acting: Mutex::new(std::collections::HashSet::new()),
            shutdown,
            disk,
            damaged: Mutex::new(HashMap::new()),
        }
    }

    /// `Err` while copies are not written for want of disk space.
    fn room(&self) -> Result<(), Status> {
        match self.disk.copy_refusal() {
            Some(why) => Err(Status::resource_exhausted(why)),
            None => Ok(()),
        }
    }

    /// Runs the write `f` on the copy of `shard`. A copy whose write failed is closed: sled
    /// refuses every write after a failed one until it is opened again, and an open in this
    /// process, once every stream using it has ended, reads what is on disk, as a restart would.
    async fn write(
        &self,
        shard: &str,
        copy: &Arc<Copy>,
        f: impl FnOnce() -> Result<(), StoreError> + Send + 'static,
    ) -> Result<(), Status> {
        let result = tokio::task::spawn_blocking(f).await.map_err(|e| Status::internal(e.to_string()))?;
        result.map_err(|e| self.failed(shard, copy, e))
    }

    /// The answer to a failed read or write of the copy of `shard`: the copy is closed, to be
    /// opened again by the next leader stream, or, when it is damaged, deleted first.
    fn failed(&self, shard: &str, copy: &Arc<Copy>, e: StoreError) -> Status {
        let mut open = crate::sync::lock(&self.open);
        if open.get(shard).is_some_and(|c| Arc::ptr_eq(c, copy)) {
            open.remove(shard);
            if matches!(e, StoreError::Corrupt { .. }) {
                self.mark_damaged(shard, copy.fence.load(std::sync::atomic::Ordering::SeqCst), &e);
            } else {
                tracing::warn!(shard, error = %e, "reading or writing this node's copy failed; the copy is closed and opened again by the next leader stream");
            }
        }
        store_error(e)
    }

    /// Marks the copy of `shard`, which had seen leader epoch `fence`, to be deleted before it
    /// is opened again.
    fn mark_damaged(&self, shard: &str, fence: i64, e: &StoreError) {
        crate::sync::lock(&self.damaged).entry(shard.to_string()).or_insert(fence);
        tracing::warn!(shard, error = %e, "this node's copy is damaged; it is deleted, and the next leader stream sends a snapshot");
    }

    /// Where the copy of `shard` lives.
    pub fn path(&self, shard: &str) -> PathBuf {
        self.dir.join(shard)
    }

    async fn copy(&self, shard: &str) -> Result<Arc<Copy>, Status> {
        crate::cluster::validate_node_id(shard).map_err(Status::invalid_argument)?;
        if crate::sync::lock(&self.acting).contains(shard) {
            return Err(Status::failed_precondition(format!("this node serves shard {shard} from its copy now")));
        }
        if let Some(c) = crate::sync::lock(&self.open).get(shard) {
            return Ok(c.clone());
        }
        let path = self.dir.join(shard);
        let damaged = crate::sync::lock(&self.damaged).get(shard).copied();
        let opened = tokio::task::spawn_blocking(move || {
            let fs = |e: std::io::Error| StoreError::Io(e.to_string());
            if damaged.is_some() && path.exists() {
                std::fs::remove_dir_all(&path).map_err(fs)?;
            }
            std::fs::create_dir_all(&path).map_err(fs)?;
            let store = SledStore::open(&path)?;
            if let Some(fence) = damaged.filter(|f| *f > 0) {
                let mut b = Batch::new();
                b.put_raw(fence_key(), fence.to_be_bytes().to_vec());
                store.apply(&b).and_then(|()| store.flush())?;
            }
            let fence = match store.get(&fence_key())? {
                Some(v) if v.len() == 8 => i64::from_be_bytes(v.as_slice().try_into().unwrap_or([0; 8])),
                _ => 0,
            };
            Ok((store, fence))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        let (store, fence) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                if matches!(e, StoreError::Corrupt { .. }) {
                    self.mark_damaged(shard, 0, &e);
                }
                return Err(store_error(e));
            }
        };
        if damaged.is_some() {
            crate::sync::lock(&self.damaged).remove(shard);
            tracing::info!(shard, "the damaged copy was deleted; a new one starts empty");
        }
        let copy = Arc::new(Copy {
            store: Arc::new(store),
            feeding: tokio::sync::Mutex::new(()),
            fence: std::sync::atomic::AtomicI64::new(fence),
        });
        Ok(crate::sync::lock(&self.open).entry(shard.to_string()).or_insert(copy).clone())
    }

    /// Stops feeding the copy of `shard` and closes it, so that this node can serve the shard
    /// from it (failover). Waits for a stream still feeding it to end.
    pub async fn release(&self, shard: &str) {
        crate::sync::lock(&self.acting).insert(shard.to_string());
        let Some(copy) = crate::sync::lock(&self.open).remove(shard) else { return };
        let _ = copy.feeding.lock().await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while Arc::strong_count(&copy) > 1 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Feeds the copy of `shard` again (after handing the shard back).
    pub fn resume(&self, shard: &str) {
        crate::sync::lock(&self.acting).remove(shard);
    }

    /// Sends this node's copy of `shard` as snapshot chunks on `out` (to its returning node).
    pub async fn fetch(self: Arc<Self>, shard: String, out: mpsc::Sender<Result<ReplicateRequest, Status>>) {
        let result = async {
            let copy = self.copy(&shard).await?;
            let _feeding = copy.feeding.lock().await;
            let at = Position::read(copy.store.as_ref()).map_err(store_error)?;
            let mut after: Option<Vec<u8>> = None;
            let mut first = true;
            loop {
                let store: Arc<dyn Store> = copy.store.clone();
                let (batch, next, last) = snapshot_page(store, after.take()).await.map_err(store_error)?;
                after = next;
                let chunk =
                    txmq_proto::cluster::SnapshotChunk { first, entries: batch.encode(), done_at_seq: at.seq, last };
                let item =
                    ReplicateRequest { shard: shard.clone(), epoch: at.epoch, item: Some(Item::Snapshot(chunk)) };
                out.send(Ok(item)).await.map_err(|_| Status::cancelled("gone"))?;
                first = false;
                if last {
                    return Ok::<(), Status>(());
                }
            }
        }
        .await;
        if let Err(s) = result {
            let _ = out.send(Err(s)).await;
        }
    }

    /// The position of this node's copy of `shard` (zero when it holds none).
    pub async fn position(&self, shard: &str) -> Result<Position, Status> {
        let copy = self.copy(shard).await?;
        Position::read(copy.store.as_ref()).map_err(store_error)
    }

    /// Serves one leader stream whose first request was `first`: answers the copy's position,
    /// then applies what the leader sends, acknowledging each durable sequence on `out`.
    pub async fn follow(
        self: Arc<Self>,
        first: ReplicateRequest,
        mut stream: tonic::Streaming<ReplicateRequest>,
        out: mpsc::Sender<Result<ReplicateResponse, Status>>,
    ) {
        if let Err(status) = self.follow_inner(first, &mut stream, &out).await {
            tracing::debug!(error = %status.message(), "replication stream ended");
            let _ = out.send(Err(status)).await;
        }
    }

    async fn follow_inner(
        &self,
        first: ReplicateRequest,
        stream: &mut tonic::Streaming<ReplicateRequest>,
        out: &mpsc::Sender<Result<ReplicateResponse, Status>>,
    ) -> Result<(), Status> {
        self.room()?;
        let shard = first.shard.clone();
        let copy = self.copy(&shard).await?;
        // A leader reconnecting may find its previous stream still open for a moment.
        let _feeding = tokio::time::timeout(std::time::Duration::from_secs(10), copy.feeding.lock())
            .await
            .map_err(|_| Status::unavailable(format!("another leader stream feeds the copy of {shard}")))?;
        let mut at = Position::read(copy.store.as_ref()).map_err(|e| self.failed(&shard, &copy, e))?;
        use std::sync::atomic::Ordering;
        let fence = |epoch: i64| {
            let seen = copy.fence.load(Ordering::SeqCst);
            if epoch < seen {
                return Err(Status::failed_precondition(format!(
                    "fenced: epoch {epoch} of shard {shard} is older than epoch {seen} this copy has seen"
                )));
            }
            Ok(())
        };
        fence(first.epoch.max(0))?;
        if first.epoch < at.epoch {
            return Err(Status::failed_precondition(format!(
                "fenced: epoch {} of shard {shard} is older than the copy's latest write (epoch {})",
                first.epoch, at.epoch
            )));
        }
        // From now on no leader of an older epoch feeds this copy, even before this one writes.
        if first.epoch > copy.fence.load(Ordering::SeqCst) {
            let store = copy.store.clone();
            let epoch = first.epoch;
            self.write(&shard, &copy, move || {
                let mut b = Batch::new();
                b.put_raw(fence_key(), epoch.to_be_bytes().to_vec());
                store.apply(&b).and_then(|()| store.flush())
            })
            .await?;
            copy.fence.store(epoch, Ordering::SeqCst);
        }
        let answer = |at: Position| ReplicateResponse { acked_seq: at.seq, epoch: at.epoch };
        out.send(Ok(answer(at))).await.map_err(|_| Status::cancelled("leader gone"))?;
        loop {
            let next = tokio::select! {
                m = stream.message() => m?,
                _ = self.shutdown.cancelled() => return Err(Status::unavailable("the node is shutting down")),
            };
            let Some(req) = next else { break };
            fence(req.epoch)?;
            if matches!(req.item, Some(Item::Append(_) | Item::Snapshot(_))) {
                self.room()?;
            }
            match req.item {
                Some(Item::Append(a)) => {
                    if a.seq <= at.seq {
                        // Sent again after a reconnect: already here.
                    } else if a.seq != at.seq + 1 {
                        return Err(Status::out_of_range(format!("gap: at {} and sent {}", at.seq, a.seq)));
                    } else {
                        let batch = Batch::decode(&a.batch).map_err(|e| Status::invalid_argument(e.to_string()))?;
                        let store = copy.store.clone();
                        self.write(&shard, &copy, move || store.apply(&batch).and_then(|()| store.flush())).await?;
                        at = Position { epoch: req.epoch, seq: a.seq };
                    }
                }
                Some(Item::Snapshot(c)) => {
                    let entries = Batch::decode(&c.entries).map_err(|e| Status::invalid_argument(e.to_string()))?;
                    let store = copy.store.clone();
                    let (first, last, epoch, seq) = (c.first, c.last, req.epoch, c.done_at_seq);
                    self.write(&shard, &copy, move || {
                        let done = last.then_some(Position { epoch, seq });
                        load_snapshot_page(store.as_ref(), first, last, entries, done)
                    })
                    .await?;
                    if !last {
                        continue;
                    }
                    tracing::info!(shard, seq, "snapshot of the shard applied");
                    at = Position { epoch, seq };
                }
                Some(Item::Hello(_)) | None => continue,
            }
            out.send(Ok(answer(at))).await.map_err(|_| Status::cancelled("leader gone"))?;
        }
        Ok(())
    }
}
