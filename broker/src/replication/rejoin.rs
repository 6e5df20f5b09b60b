//! A node returning while another node serves its shard from a copy (failover or drain): a
//! drained node first waits until it is taken back; then, before it
//! opens its store, it stands by until the shard is handed back, then replaces its store with
//! a copy of the one that served — truncating what it wrote that its successor never had (the
//! sequences from the successor's first one on, as the epoch history says) — and joins.

use super::{load_snapshot_page, History, Position};
use crate::cluster::Membership;
use crate::config::Config;
use crate::error::{BrokerError, Result};
use crate::store::{Batch, SledStore, StoreError};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use txmq_proto::cluster::cluster_client::ClusterClient;
use txmq_proto::cluster::{replicate_request::Item, FetchCopyRequest};

fn cluster_error(e: crate::cluster::ClusterError) -> BrokerError {
    BrokerError::Config(format!("cluster: {e}"))
}

/// With `--etcd` and `--replicas` above 1: when this node's id is held by a broker serving its
/// shard from a copy, stands by until it is handed back and loads that copy. Returns the
/// standby announcement, to withdraw once this node has joined (`None`: nothing to do).
pub async fn rejoin(config: &Config) -> Result<Option<CancellationToken>> {
    let (Some(id), true) = (&config.node_id, config.replicas > 1) else { return Ok(None) };
    let Some(settings) = config.cluster_settings(String::new(), None).map_err(BrokerError::Config)? else {
        return Ok(None);
    };
    let m = Membership::connect(settings, crate::clock::now_ms()).await.map_err(cluster_error)?;
    // A drained node serves nothing (its shard moved to a copy): it waits, without standing
    // by, until it is taken back.
    let mut waited = false;
    while m.drained().await.map_err(cluster_error)?.contains(id) {
        if !waited {
            tracing::warn!(node_id = id, "this node is drained: waiting for `txmq cluster drain {id} --undo`");
            waited = true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if waited {
        tracing::info!(node_id = id, "this node is no longer drained: joining again");
    }
    let host = m.holder(id).await.map_err(cluster_error)?.and_then(|h| h.acting_on);
    // A load of the copy that this node's last run did not finish: its store holds part of a
    // copy, and must not be served; the copy is loaded again.
    let interrupted = config.data_dir.join(LOADING_MARK).exists();
    match (&host, interrupted) {
        (None, false) => return Ok(None),
        (Some(host), _) => tracing::warn!(
            node_id = id,
            host,
            "this node's shard is served from a copy on {host}; standing by until it is handed back"
        ),
        (None, true) => tracing::warn!(
            node_id = id,
            "this node stopped while it loaded a copy of its shard; loading it again before serving"
        ),
    }
    let done = CancellationToken::new();
    m.stand_by(id, done.clone()).await.map_err(cluster_error)?;
    while m.holder(id).await.map_err(cluster_error)?.is_some() {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let record = m
        .shard_record(id)
        .await
        .map_err(cluster_error)?
        .ok_or_else(|| BrokerError::Config(format!("shard {id} has no replica set in etcd")))?;
    // The serving node closes the store it served with just after it lets the id go: retry.
    let mut last_error = String::from("no in-sync copy to load");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::time::Instant::now() < deadline {
        for node in &record.in_sync {
            match load_copy(&m, node, id, &config.data_dir).await {
                Ok(()) => return Ok(Some(done)),
                Err(e) => {
                    tracing::debug!(node, error = %e, "copy of this node's shard not loaded yet");
                    last_error = e.to_string();
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    done.cancel();
    Err(BrokerError::Config(format!("cannot load a copy of shard {id}: {last_error}")))
}

/// A file in the data directory while a copy of the shard is being loaded into it.
const LOADING_MARK: &str = "loading-copy";

/// Replaces the store in `data_dir` with `node`'s copy of `shard`. The data directory is
/// marked ([`LOADING_MARK`]) from before the store is touched until the copy is durable.
async fn load_copy(m: &Membership, node: &str, shard: &str, data_dir: &std::path::Path) -> Result<()> {
    let channel = m.channel(node).await.map_err(cluster_error)?;
    let mut client = ClusterClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
    let mut req = tonic::Request::new(FetchCopyRequest { shard: shard.to_string() });
    crate::cluster::peer::mark_as_node(m, &mut req);
    let mut stream = client
        .fetch_copy(req)
        .await
        .map_err(|s| BrokerError::Internal(format!("node {node}: {}", s.message())))?
        .into_inner();
    let mark = data_dir.join(LOADING_MARK);
    std::fs::File::create(&mark).and_then(|f| f.sync_all()).map_err(|e| BrokerError::Internal(e.to_string()))?;
    crate::store::segment_file::sync_dir(data_dir)?;
    let dir = data_dir.to_path_buf();
    let store = tokio::task::spawn_blocking(move || SledStore::open(&dir))
        .await
        .map_err(|e| BrokerError::Internal(e.to_string()))??;
    let store = std::sync::Arc::new(store);
    let mine = Position::read(store.as_ref())?;
    let mut complete = false;
    while let Some(item) = stream.message().await.map_err(|s| BrokerError::Internal(s.message().to_string()))? {
        let Some(Item::Snapshot(chunk)) = item.item else { continue };
        let entries = Batch::decode(&chunk.entries).map_err(|e| BrokerError::Internal(e.to_string()))?;
        let s = store.clone();
        let (first, last) = (chunk.first, chunk.last);
        tokio::task::spawn_blocking(move || -> std::result::Result<(), StoreError> {
            load_snapshot_page(s.as_ref(), first, last, entries, None)
        })
        .await
        .map_err(|e| BrokerError::Internal(e.to_string()))??;
        if chunk.last {
            let theirs = Position { epoch: item.epoch, seq: chunk.done_at_seq };
            let h = History::read(store.as_ref())?;
            if let Some(start) = h.successor_start(mine.epoch) {
                if mine.seq >= start {
                    // What this node wrote at its epoch from there on, its successor never had.
                    tracing::warn!(
                        epoch = mine.epoch,
                        first = start,
                        last = mine.seq,
                        "truncated sequences {start}..={} of epoch {} that the shard's next leader never had",
                        mine.seq,
                        mine.epoch
                    );
                }
            }
            tracing::info!(node, at = theirs.seq, epoch = theirs.epoch, "loaded the copy of this node's shard");
            complete = true;
            break;
        }
    }
    if !complete {
        return Err(BrokerError::Internal(format!("node {node} ended the copy early")));
    }
    // The last page was flushed with the copy's end (`load_snapshot_page`).
    drop(store);
    std::fs::remove_file(&mark).map_err(|e| BrokerError::Internal(e.to_string()))?;
    crate::store::segment_file::sync_dir(data_dir)?;
    Ok(())
}
