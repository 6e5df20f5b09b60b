//! The follower side: copies of other nodes' stores, each under `<data dir>/replicas/<shard>`,
//! fed by one leader stream at a time. A batch is applied and fsynced before it is
//! acknowledged; a stream from a leader of an older epoch than the copy has seen is refused
//! (fencing); a snapshot's first chunk clears the copy.

use super::Position;
use crate::store::{Batch, SledStore, Store, StoreError};
use std::collections::HashMap;
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tonic::Status;
use txmq_proto::cluster::{replicate_request::Item, ReplicateRequest, ReplicateResponse};

/// One copy: its store, and the lock that lets one leader stream feed it at a time.
struct Copy {
    store: Arc<SledStore>,
    feeding: tokio::sync::Mutex<()>,
}

/// Every copy this node holds.
pub struct Replicas {
    dir: PathBuf,
    open: Mutex<HashMap<String, Arc<Copy>>>,
}

fn store_error(e: StoreError) -> Status {
    Status::internal(format!("replica store: {e}"))
}

impl Replicas {
    /// Copies kept under `data_dir/replicas`.
    pub fn new(data_dir: &std::path::Path) -> Self {
        Replicas { dir: data_dir.join("replicas"), open: Mutex::new(HashMap::new()) }
    }

    async fn copy(&self, shard: &str) -> Result<Arc<Copy>, Status> {
        crate::cluster::validate_node_id(shard).map_err(Status::invalid_argument)?;
        if let Some(c) = crate::sync::lock(&self.open).get(shard) {
            return Ok(c.clone());
        }
        let path = self.dir.join(shard);
        let store = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&path).map_err(|e| StoreError::Io(e.to_string()))?;
            SledStore::open(&path)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(store_error)?;
        let copy = Arc::new(Copy { store: Arc::new(store), feeding: tokio::sync::Mutex::new(()) });
        Ok(crate::sync::lock(&self.open).entry(shard.to_string()).or_insert(copy).clone())
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
        let shard = first.shard.clone();
        let copy = self.copy(&shard).await?;
        // A leader reconnecting may find its previous stream still open for a moment.
        let _feeding = tokio::time::timeout(std::time::Duration::from_secs(10), copy.feeding.lock())
            .await
            .map_err(|_| Status::unavailable(format!("another leader stream feeds the copy of {shard}")))?;
        let mut at = Position::read(copy.store.as_ref()).map_err(store_error)?;
        let fence = |epoch: i64, at: &Position| {
            if epoch < at.epoch {
                return Err(Status::failed_precondition(format!(
                    "fenced: epoch {epoch} of shard {shard} is older than epoch {} this copy has seen",
                    at.epoch
                )));
            }
            Ok(())
        };
        fence(first.epoch, &at)?;
        let answer = |at: Position| ReplicateResponse { acked_seq: at.seq, epoch: at.epoch };
        out.send(Ok(answer(at))).await.map_err(|_| Status::cancelled("leader gone"))?;
        while let Some(req) = stream.message().await? {
            fence(req.epoch, &at)?;
            match req.item {
                Some(Item::Append(a)) => {
                    if a.seq <= at.seq {
                        // Sent again after a reconnect: already here.
                    } else if a.seq != at.seq + 1 {
                        return Err(Status::out_of_range(format!("gap: at {} and sent {}", at.seq, a.seq)));
                    } else {
                        let batch = Batch::decode(&a.batch).map_err(|e| Status::invalid_argument(e.to_string()))?;
                        let store = copy.store.clone();
                        blocking(move || store.apply(&batch).and_then(|()| store.flush())).await?;
                        at = Position { epoch: req.epoch, seq: a.seq };
                    }
                }
                Some(Item::Snapshot(c)) => {
                    let entries = Batch::decode(&c.entries).map_err(|e| Status::invalid_argument(e.to_string()))?;
                    let store = copy.store.clone();
                    let (first, last, epoch, seq) = (c.first, c.last, req.epoch, c.done_at_seq);
                    blocking(move || {
                        if first {
                            clear(store.as_ref())?;
                        }
                        let mut batch = entries;
                        if last {
                            Position { epoch, seq }.write(&mut batch);
                        }
                        store.apply(&batch)?;
                        if last {
                            store.flush()?;
                        }
                        Ok(())
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

async fn blocking(f: impl FnOnce() -> Result<(), StoreError> + Send + 'static) -> Result<(), Status> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Status::internal(e.to_string()))?.map_err(store_error)
}

/// Deletes every key of `store` (before a snapshot is loaded into it).
fn clear(store: &dyn Store) -> Result<(), StoreError> {
    loop {
        let page = store.scan(Bound::Unbounded, Bound::Unbounded, 1000, false)?;
        if page.is_empty() {
            return Ok(());
        }
        let mut batch = Batch::new();
        for (k, _) in page {
            batch.delete_raw(k);
        }
        store.apply(&batch)?;
    }
}
