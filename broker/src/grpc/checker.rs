//! The check-back loop: finds due transactions and writes `RecoverOrphanedTransactionCommand`
//! to a live Telemetry stream — the sending producer's oldest live stream first (for the Rust
//! client that is its access-point stream, the one it keeps), then any other live producer of
//! the topic. A write that a stream refuses (closed or full) moves on to the next stream; with
//! no stream at all, the transaction is retried later without using up a check.

use super::clients::Clients;
use super::convert;
use crate::broker::{now_ms, Broker};
use crate::model::StoredMessage;
use crate::txn::service::CheckOutcome;
use crate::txn::state::Txn;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use txmq_proto::v2;

/// Due checks handled per round, concurrently. Each producer's Telemetry stream buffers this
/// many commands, so one round never overflows a stream.
pub(super) const BATCH: usize = 256;

/// How often the loop looks for due checks: a tenth of the shortest timing, 20 ms to 1 s.
fn tick(broker: &Broker) -> Duration {
    let c = broker.config();
    (c.txn_timeout.min(c.txn_check_interval) / 10).clamp(Duration::from_millis(20), Duration::from_secs(1))
}

/// Runs until `shutdown`.
pub async fn run(broker: Arc<Broker>, clients: Arc<Clients>, shutdown: CancellationToken) {
    let every = tick(&broker);
    let mut swept = std::time::Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if swept.elapsed() > Duration::from_secs(60) {
            // Clients gone without NotifyClientTermination leave the registry after 10 minutes.
            let forgotten = clients.sweep(Duration::from_secs(600));
            if forgotten > 0 {
                tracing::debug!(forgotten, "forgot idle clients");
            }
            swept = std::time::Instant::now();
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
                let (broker, clients) = (broker.clone(), clients.clone());
                round.spawn(async move {
                    let result = broker.check_transaction(&id, at, |txn, half| deliver(&clients, txn, half)).await;
                    log_outcome(&id, result);
                });
            }
            while round.join_next().await.is_some() {}
        }
    }
}

fn log_outcome(id: &str, result: crate::error::Result<CheckOutcome>) {
    match result {
        Ok(CheckOutcome::Sent { client }) => tracing::debug!(transaction_id = id, client_id = client, "check sent"),
        Ok(CheckOutcome::Unreachable) => {
            tracing::debug!(transaction_id = id, "no live producer for the check; will retry")
        }
        Ok(CheckOutcome::Exhausted { state }) => {
            tracing::info!(transaction_id = id, state = state.as_str(), "checks exhausted")
        }
        Ok(CheckOutcome::NotDue) => {}
        Err(e) => tracing::error!(transaction_id = id, error = %e, "check failed"),
    }
}

/// The check command: the complete half message, as the clients require (spec §4.5).
pub fn command(txn: &Txn, half: &StoredMessage) -> v2::TelemetryCommand {
    v2::TelemetryCommand {
        status: None,
        command: Some(v2::telemetry_command::Command::RecoverOrphanedTransactionCommand(
            v2::RecoverOrphanedTransactionCommand {
                message: Some(convert::wire_message(half)),
                transaction_id: txn.id.clone(),
            },
        )),
    }
}

/// Writes the check to the first live stream that takes it; names that stream's client.
fn deliver(clients: &Clients, txn: &Txn, half: &StoredMessage) -> Option<String> {
    let cmd = command(txn, half);
    let mut candidates = vec![txn.producer.clone()];
    candidates.extend(clients.producers_of(&txn.topic).into_iter().filter(|c| *c != txn.producer));
    for client in candidates {
        for stream in clients.streams(&client) {
            if stream.tx.try_send(Ok(cmd.clone())).is_ok() {
                return Some(client);
            }
        }
    }
    None
}
