//! Retention: deletes expired messages and purges resolved transactions every
//! `--retention-interval`.

use crate::broker::Broker;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Deletes expired messages every `retention_interval` until shutdown.
pub async fn run(broker: Arc<Broker>, shutdown: CancellationToken) {
    let every = broker.config().retention_interval;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if let Err(e) = broker.enforce_retention().await {
            tracing::error!(error = %e, "retention failed");
        }
        if let Err(e) = broker.purge_transactions().await {
            tracing::error!(error = %e, "transaction purge failed");
        }
    }
}
