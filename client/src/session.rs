//! A client session: the channel, periodic heartbeats, and a Telemetry stream that is re-opened
//! whenever it breaks (the official Rust 5.0.0 client never re-opens it; we do, so check-backs
//! keep arriving after a broker restart).

use crate::error::Result;
use crate::transport::{self, ClientConfig, Rpc, TxnRpc};
use prost::Message;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use txmq_proto::ext::{call, EndTransactionsRequest, EndTransactionsResponse};
use txmq_proto::v2;

/// Heartbeat period (the broker treats a client as gone after ~90 s of silence).
const HEARTBEAT_EVERY: Duration = Duration::from_secs(10);
/// Longest wait between attempts to re-open the Telemetry stream.
const MAX_REOPEN_BACKOFF: Duration = Duration::from_secs(2);
/// Most one-way transaction decisions out at once; a further one waits for room.
pub(crate) const MAX_ONEWAY_DECISIONS: u32 = 1024;

/// Handles a command the broker sent on the Telemetry stream.
pub(crate) type CommandHandler = Arc<dyn Fn(v2::TelemetryCommand) + Send + Sync>;

pub(crate) struct Session {
    pub rpc: Rpc,
    pub txns: TxnRpc,
    /// The broker answered that it has no `txmq.v1.Transactions` (another broker): decisions
    /// go one `EndTransaction` each.
    pub no_txn_extension: std::sync::atomic::AtomicBool,
    pub config: ClientConfig,
    pub client_id: String,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    /// Room for one-way transaction decisions ([`MAX_ONEWAY_DECISIONS`] permits); one is held
    /// from the hand-off until the broker answered.
    pub oneway: Arc<tokio::sync::Semaphore>,
    group: Option<String>,
    /// Sends and decisions on one stream, where the broker offers it.
    calls: crate::calls::Calls,
}

impl Session {
    /// Starts heartbeats and the Telemetry supervisor. Does not wait for the broker.
    pub fn start(
        config: ClientConfig,
        settings: v2::Settings,
        client_type: v2::ClientType,
        group: Option<String>,
        on_command: Option<CommandHandler>,
    ) -> Result<Arc<Self>> {
        let client_id = transport::new_client_id();
        let stream_calls = config.stream_calls && config.credentials.is_none();
        let (rpc, txns) = transport::connect(&config, &client_id)?;
        let session = Arc::new(Session {
            rpc,
            txns,
            no_txn_extension: std::sync::atomic::AtomicBool::new(false),
            config,
            client_id,
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            oneway: Arc::new(tokio::sync::Semaphore::new(MAX_ONEWAY_DECISIONS as usize)),
            group,
            calls: crate::calls::Calls::new(stream_calls),
        });
        session.tracker.spawn(heartbeats(session.clone(), client_type));
        session.tracker.spawn(telemetry(session.clone(), settings, on_command));
        Ok(session)
    }

    /// SendMessage: on the calls stream when it is in use, else one unary call.
    pub async fn send_message(&self, req: v2::SendMessageRequest) -> Result<v2::SendMessageResponse> {
        let on_stream = self.calls.enabled().then(|| call::Request::SendMessage(req.encode_to_vec()));
        let timeout = self.config.request_timeout;
        self.on_stream_or(on_stream, transport::call(timeout, self.rpc.clone().send_message(req))).await
    }

    /// `txmq.v1.Transactions/EndTransactions`: on the calls stream when it is in use, else
    /// one unary call.
    pub async fn end_transactions(&self, req: EndTransactionsRequest) -> Result<EndTransactionsResponse> {
        let on_stream = self.calls.enabled().then(|| call::Request::EndTransactions(req.encode_to_vec()));
        let timeout = self.config.request_timeout;
        self.on_stream_or(on_stream, transport::call(timeout, self.txns.clone().end_transactions(req))).await
    }

    /// Makes the call on the stream when it is given one and the stream takes it; else awaits
    /// `unary` (not started before).
    async fn on_stream_or<R: Message + Default>(
        &self,
        on_stream: Option<call::Request>,
        unary: impl std::future::Future<Output = Result<R>>,
    ) -> Result<R> {
        if let Some(request) = on_stream {
            if let Some(answer) = self.calls.call(&self.txns, self.config.request_timeout, request).await {
                return answer;
            }
        }
        unary.await
    }

    /// True while sends and decisions go on the calls stream.
    pub fn streams_calls(&self) -> bool {
        self.calls.enabled()
    }

    /// Sends the one-way decisions still out, tells the broker we are leaving, stops the
    /// background tasks and waits for them.
    pub async fn close(&self) -> Result<()> {
        // Every permit back: no one-way decision is still on its way.
        let _ = self.oneway.acquire_many(MAX_ONEWAY_DECISIONS).await;
        let req = v2::NotifyClientTerminationRequest { group: self.group.as_deref().and_then(transport::resource) };
        let result =
            transport::call(self.config.request_timeout, self.rpc.clone().notify_client_termination(req)).await;
        self.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        transport::check(result?.status.as_ref())
    }
}

async fn heartbeats(s: Arc<Session>, client_type: v2::ClientType) {
    loop {
        let req = v2::HeartbeatRequest {
            group: s.group.as_deref().and_then(transport::resource),
            client_type: client_type as i32,
        };
        if let Err(e) = transport::call(s.config.request_timeout, s.rpc.clone().heartbeat(req)).await {
            tracing::debug!(error = %e, "heartbeat failed");
        }
        tokio::select! {
            _ = s.shutdown.cancelled() => return,
            _ = tokio::time::sleep(HEARTBEAT_EVERY) => {}
        }
    }
}

/// Keeps one Telemetry stream open: sends Settings, dispatches commands, re-opens on failure.
async fn telemetry(s: Arc<Session>, settings: v2::Settings, on_command: Option<CommandHandler>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let (tx, rx) = mpsc::channel(8);
        let hello = v2::TelemetryCommand {
            status: None,
            command: Some(v2::telemetry_command::Command::Settings(settings.clone())),
        };
        let _ = tx.send(hello).await;
        let mut rpc = s.rpc.clone();
        let opened = tokio::select! {
            _ = s.shutdown.cancelled() => return,
            r = rpc.telemetry(ReceiverStream::new(rx)) => r,
        };
        match opened {
            Ok(response) => {
                backoff = Duration::from_millis(50);
                let mut inbound = response.into_inner();
                loop {
                    let next = tokio::select! {
                        _ = s.shutdown.cancelled() => return,
                        n = inbound.message() => n,
                    };
                    match next {
                        Ok(Some(cmd)) => {
                            if let (
                                Some(h),
                                Some(v2::telemetry_command::Command::RecoverOrphanedTransactionCommand(_)),
                            ) = (&on_command, &cmd.command)
                            {
                                h(cmd);
                            }
                        }
                        Ok(None) | Err(_) => break,
                    }
                }
                drop(tx);
                tracing::info!(client_id = s.client_id, "telemetry stream ended; re-opening");
            }
            Err(e) => tracing::debug!(error = %e, "telemetry stream could not be opened"),
        }
        tokio::select! {
            _ = s.shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_REOPEN_BACKOFF);
    }
}
