//! The check-back loop: finds due transactions and writes `RecoverOrphanedTransactionCommand`
//! to a live Telemetry stream — the sending producer's oldest live stream first (for the Rust
//! client that is its access-point stream, the one it keeps), then the streams of the topic's
//! other transactional producers, then of clients that declared the topic. A stream whose
//! earlier check went unanswered past `--txn-check-timeout` is tried last, and so is the client
//! whose check of this transaction went unanswered. A write that a stream refuses (closed or
//! full) moves on to the next stream; with no stream at all, the transaction is retried with
//! backoff without using up a check (see `txn::state::Txn::unreachable`).

use crate::broker::{now_ms, Broker};
use crate::grpc::clients::Clients;
use crate::grpc::convert;
use crate::grpc::forward::Forwarder;
use crate::model::StoredMessage;
use crate::txn::service::{CheckOutcome, CheckTarget};
use crate::txn::state::Txn;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use txmq_proto::v2;

/// Due checks handled per round, concurrently: as many as each producer's Telemetry stream
/// buffers, so one round never overflows a stream.
pub const BATCH: usize = crate::grpc::telemetry::STREAM_BUFFER;

/// How often the loop looks for due checks: a tenth of the shortest timing, 20 ms to 1 s.
fn tick(broker: &Broker) -> Duration {
    let c = broker.config();
    (c.txn_timeout.min(c.txn_check_interval) / 10).clamp(Duration::from_millis(20), Duration::from_secs(1))
}

/// Runs until `shutdown`. In a cluster (`cluster` set), a check that no local stream can take
/// goes to a producer connected to another node (see `cluster::producers`).
pub async fn run(
    broker: Arc<Broker>,
    clients: Arc<Clients>,
    cluster: Option<Arc<Forwarder>>,
    shutdown: CancellationToken,
) {
    let every = tick(&broker);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        for u in clients.expire_checks(broker.config().txn_check_timeout) {
            broker.metrics().checks_unanswered.add(&[&u.topic], 1);
            tracing::info!(
                transaction_id = u.transaction_id,
                client_id = u.client,
                stream = u.stream,
                "check-back unanswered; that stream is tried last from now on"
            );
        }
        if let Some(fw) = &cluster {
            // Producers connected here, for the other nodes; and theirs, for us.
            let published = fw.membership.publish_producers(&clients.producers()).await;
            if let Err(e) = published.and(fw.membership.refresh_producers().await) {
                tracing::warn!(error = %e, "producer registry not synced; remote check-backs wait");
            }
        }
        // Due checks run concurrently so that their writes share group commits; a full round
        // means more are due, so the next round starts at once.
        let mut full = true;
        while full && !shutdown.is_cancelled() {
            let due = match broker.due_transactions(now_ms(), BATCH) {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read due transactions");
                    break;
                }
            };
            full = due.len() == BATCH;
            let mut round = tokio::task::JoinSet::new();
            for (at, id) in due {
                let (broker, clients, cluster) = (broker.clone(), clients.clone(), cluster.clone());
                round.spawn(async move {
                    let node = cluster.as_ref().map(|fw| fw.node_id().to_string());
                    // A check for a producer on another node, written there after the check is
                    // recorded here.
                    let remote = std::sync::Mutex::new(None);
                    let deliver = |txn: &Txn, half: &StoredMessage| {
                        deliver(&clients, txn, half, node.as_deref()).or_else(|| {
                            let fw = cluster.as_ref()?;
                            let (client, at) = fw.membership.producer_nodes(&txn.topic, &txn.producer).into_iter().next()?;
                            let cmd = command(txn, half, node.as_deref());
                            *crate::sync::lock(&remote) = Some((at.clone(), txn.topic.clone(), txn.producer.clone(), cmd));
                            Some(CheckTarget { client: format!("{client}@{at}"), stream: 0 })
                        })
                    };
                    let result = broker.check_transaction(&id, at, deliver).await;
                    let pushed = crate::sync::lock(&remote).take();
                    if let (Some(fw), Some((at, topic, producer, cmd)), Ok(CheckOutcome::Sent { .. })) =
                        (&cluster, pushed, &result)
                    {
                        match fw.push_check(&at, &topic, &producer, &cmd).await {
                            Ok(Some(client)) => tracing::debug!(transaction_id = id, node = at, client_id = client, "check pushed to another node"),
                            Ok(None) => tracing::info!(transaction_id = id, node = at, "no producer there any more; the check is retried later"),
                            Err(e) => tracing::warn!(transaction_id = id, node = at, error = %e, "check not pushed; retried later"),
                        }
                    }
                    log_outcome(&id, result);
                });
            }
            while round.join_next().await.is_some() {}
        }
    }
}

fn log_outcome(id: &str, result: crate::error::Result<CheckOutcome>) {
    match result {
        Ok(CheckOutcome::Sent { client, stream }) => {
            tracing::debug!(transaction_id = id, client_id = client, stream, "check sent")
        }
        Ok(CheckOutcome::Unreachable { retry_at }) => {
            tracing::debug!(transaction_id = id, retry_at, "no live producer for the check; will retry")
        }
        Ok(CheckOutcome::Exhausted { state }) => {
            tracing::info!(transaction_id = id, state = state.as_str(), "checks exhausted")
        }
        Ok(CheckOutcome::NotDue) => {}
        Err(e) => tracing::error!(transaction_id = id, error = %e, "check failed"),
    }
}

/// The check command: the complete half message, as the clients require (docs/protocol.md §5).
/// In a cluster (`node` set) the transaction id names this node, as every id a client holds
/// does, so the answer reaches it through any node.
pub fn command(txn: &Txn, half: &StoredMessage, node: Option<&str>) -> v2::TelemetryCommand {
    v2::TelemetryCommand {
        status: None,
        command: Some(v2::telemetry_command::Command::RecoverOrphanedTransactionCommand(
            v2::RecoverOrphanedTransactionCommand {
                message: Some(convert::wire_message(half)),
                transaction_id: match node {
                    Some(n) => crate::grpc::forward::tag(n, &txn.id),
                    None => txn.id.clone(),
                },
            },
        )),
    }
}

/// Writes the check to the first candidate stream that takes it; names where it went.
fn deliver(clients: &Clients, txn: &Txn, half: &StoredMessage, node: Option<&str>) -> Option<CheckTarget> {
    let cmd = command(txn, half, node);
    for (client, stream) in clients.check_candidates(&txn.topic, &txn.producer, &txn.undecided_checks()) {
        if stream.tx.try_send(Ok(cmd.clone())).is_ok() {
            clients.check_sent(&txn.id, &txn.topic, &client, stream.id);
            return Some(CheckTarget { client, stream: stream.id });
        }
    }
    None
}
