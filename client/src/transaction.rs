//! Transactional sends: the half message, the local transaction, commit or rollback, and the
//! answers to the broker's check-backs.
//!
//! The lifecycle: [`TransactionProducer::begin`] stores a *half message* (invisible to
//! consumers); the application runs its local database transaction; then it commits (the
//! message becomes visible exactly once) or rolls back (it is discarded). If the application
//! dies or never decides, the broker asks a [`TransactionChecker`] of any live producer of the
//! topic, which must answer from durable state — see `db::TxnLog` for one that reads the
//! application's own database.

use crate::error::{Error, Result};
use crate::message::Message;
use crate::producer::Producer;
use crate::session::CommandHandler;
use crate::transport::{self, ClientConfig};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use txmq_proto::ext::{Decision, EndTransactionsRequest};
use txmq_proto::v2;

/// A decision about a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// Make the message visible.
    Commit,
    /// Discard the message.
    Rollback,
    /// Not known yet: the broker asks again later.
    Unknown,
}

/// What a check-back asks about.
#[derive(Debug, Clone)]
pub struct CheckRequest {
    /// The broker's transaction id (the one [`TxnContext::transaction_id`] had).
    pub transaction_id: String,
    /// The half message's id.
    pub message_id: String,
    /// Its topic.
    pub topic: String,
    /// Its keys.
    pub keys: Vec<String>,
    /// Its tag.
    pub tag: Option<String>,
    /// Its user properties.
    pub properties: BTreeMap<String, String>,
    /// Its body.
    pub body: Vec<u8>,
}

/// Answers check-backs. Implementations must answer from durable state (the outcome of the
/// local transaction), never from memory of this process: the check may come to another one.
#[async_trait::async_trait]
pub trait TransactionChecker: Send + Sync + 'static {
    /// The outcome of the local transaction behind `request`.
    async fn check(&self, request: &CheckRequest) -> Resolution;
}

/// Handed to the local transaction: identifies the half message it belongs to.
#[derive(Debug, Clone)]
pub struct TxnContext {
    /// The broker's transaction id; record it in the local transaction so that a checker can
    /// find the outcome later.
    pub transaction_id: String,
    /// The half message's id.
    pub message_id: String,
}

/// A half message waiting for its local transaction's outcome.
#[derive(Debug)]
#[must_use = "commit or roll back, or leave it to the check-back"]
pub struct PendingTransaction {
    producer: Producer,
    topic: String,
    context: TxnContext,
}

impl PendingTransaction {
    /// The ids to record in the local transaction.
    pub fn context(&self) -> &TxnContext {
        &self.context
    }

    /// Makes the message visible (exactly once, even if repeated).
    pub async fn commit(self) -> Result<()> {
        self.end(Resolution::Commit, Wait::Answer).await
    }

    /// Commits without waiting for the broker's answer (as RocketMQ 4 producers end a
    /// transaction, one way): the decision is handed to the producer, leaves with the next
    /// batch, and this returns. When it is lost (the broker is unreachable, or this process
    /// dies first) the broker's check-back asks the [`TransactionChecker`], which must then
    /// answer `Commit` from durable state; a failure is only logged. Waits while 1,024
    /// decisions are out; the producer's `shutdown` sends those still out first.
    ///
    /// The broker makes the decision durable before any consumer sees the message, as with
    /// [`Self::commit`]; what is saved is the wait for that answer: one round trip and one
    /// group commit fewer before the caller goes on.
    pub async fn commit_oneway(self) {
        let Ok(permit) = self.producer.session.oneway.clone().acquire_owned().await else { return };
        let tracker = self.producer.session.tracker.clone();
        tracker.spawn(async move {
            let id = self.context.transaction_id.clone();
            if let Err(e) = self.end(Resolution::Commit, Wait::Nobody).await {
                tracing::warn!(transaction_id = id, error = %e, "a one-way commit did not reach the broker; the check-back will commit");
            }
            drop(permit);
        });
    }

    /// Discards the message.
    pub async fn rollback(self) -> Result<()> {
        self.end(Resolution::Rollback, Wait::Answer).await
    }

    async fn end(self, r: Resolution, wait: Wait) -> Result<()> {
        end_transaction(&self.producer, &self.topic, &self.context, r, v2::TransactionSource::SourceClient, wait).await
    }
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer").field("client_id", &self.client_id()).finish()
    }
}

/// Who waits for a decision's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// The caller (commit, rollback) or the broker's check.
    Answer,
    /// Nobody: a one-way commit.
    Nobody,
}

/// Sends one decision: with batching on, together with the decisions of its kind (`wait`)
/// made while others are in flight (one `txmq.v1.Transactions/EndTransactions` call), else
/// alone.
async fn end_transaction(
    p: &Producer,
    topic: &str,
    c: &TxnContext,
    r: Resolution,
    source: v2::TransactionSource,
    wait: Wait,
) -> Result<()> {
    let resolution = match r {
        Resolution::Commit => v2::TransactionResolution::Commit,
        Resolution::Rollback => v2::TransactionResolution::Rollback,
        Resolution::Unknown => v2::TransactionResolution::Unspecified,
    };
    let d = Decision {
        topic: topic.to_string(),
        message_id: c.message_id.clone(),
        transaction_id: c.transaction_id.clone(),
        resolution: resolution as i32,
        source: source as i32,
    };
    let Some(decisions) = &p.decisions else { return end_alone(p, d).await };
    let batcher = match wait {
        Wait::Answer => &decisions.awaited,
        Wait::Nobody => &decisions.oneway,
    };
    batcher.submit(d).await.unwrap_or(Err(Error::Closed))
}

/// One decision, one `EndTransaction` call (what the official clients send).
async fn end_alone(p: &Producer, d: Decision) -> Result<()> {
    let req = v2::EndTransactionRequest {
        topic: transport::resource(&d.topic),
        message_id: d.message_id,
        transaction_id: d.transaction_id,
        resolution: d.resolution,
        source: d.source,
        trace_context: String::new(),
    };
    let s = &p.session;
    let r = transport::call(s.config.request_timeout, s.rpc.clone().end_transaction(req)).await?;
    transport::check(r.status.as_ref())
}

/// Decisions gathered by natural batching, in one `EndTransactions` call, each answered with
/// its own status. A broker without the extension (it answers UNIMPLEMENTED) gets one
/// `EndTransaction` per decision from then on.
pub(crate) async fn end_together(p: &Producer, decisions: Vec<Decision>) -> Vec<Result<()>> {
    use std::sync::atomic::Ordering;
    let s = &p.session;
    // A decision alone goes as EndTransaction, unless calls go on the stream, where the
    // extension costs no more.
    if (decisions.len() > 1 || s.streams_calls()) && !s.no_txn_extension.load(Ordering::Relaxed) {
        let n = decisions.len();
        let req = EndTransactionsRequest { decisions: decisions.clone() };
        match s.end_transactions(req).await {
            Ok(r) if r.code == v2::Code::Ok as i32 && r.results.len() == n => {
                return r
                    .results
                    .into_iter()
                    .map(|st| transport::check(Some(&v2::Status { code: st.code, message: st.message })))
                    .collect();
            }
            Ok(r) => {
                let e = transport::check(Some(&v2::Status { code: r.code, message: r.message })).err().unwrap_or_else(
                    || Error::InvalidArgument(format!("{} results for {n} decisions", r.results.len())),
                );
                return decisions.iter().map(|_| Err(e.same())).collect();
            }
            Err(Error::Broker { code_name, .. }) if code_name == "GRPC_Unimplemented" => {
                tracing::info!("the broker has no txmq.v1.Transactions: one EndTransaction per decision");
                s.no_txn_extension.store(true, Ordering::Relaxed);
            }
            Err(e) => return decisions.iter().map(|_| Err(e.same())).collect(),
        }
    }
    futures_util::future::join_all(decisions.into_iter().map(|d| end_alone(p, d))).await
}

/// A producer of transactional messages that answers check-backs with its checker.
///
/// ```no_run
/// # async fn demo(checker: std::sync::Arc<dyn txmq_client::TransactionChecker>) -> txmq_client::Result<()> {
/// use txmq_client::{ClientConfig, Message, TransactionProducer};
/// let producer = TransactionProducer::connect(ClientConfig::new("127.0.0.1:8081"), &["orders"], checker).await?;
/// let outcome = producer
///     .send_in_transaction(Message::new("orders", "order 42 paid"), |ctx| async move {
///         // update the order and record ctx.transaction_id in the same database transaction
///         Ok::<_, std::io::Error>(())
///     })
///     .await?;
/// assert!(outcome.is_ok());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct TransactionProducer {
    producer: Producer,
}

impl TransactionProducer {
    /// Connects; check-backs for `topics` (and for any half message this producer sends) are
    /// answered by `checker`.
    pub async fn connect(config: ClientConfig, topics: &[&str], checker: Arc<dyn TransactionChecker>) -> Result<Self> {
        let slot: Arc<std::sync::OnceLock<Producer>> = Arc::new(std::sync::OnceLock::new());
        let handler: CommandHandler = {
            let slot = slot.clone();
            Arc::new(move |cmd: v2::TelemetryCommand| {
                let Some(v2::telemetry_command::Command::RecoverOrphanedTransactionCommand(c)) = cmd.command else {
                    return;
                };
                let Some(producer) = slot.get().cloned() else { return };
                let checker = checker.clone();
                let tracker = producer.session.tracker.clone();
                tracker.spawn(async move { answer_check(producer, checker, c).await });
            })
        };
        let producer = Producer::connect_with(config, topics, Some(handler)).await?;
        let _ = slot.set(producer.clone());
        Ok(Self { producer })
    }

    /// The producer for non-transactional sends on the same connection.
    pub fn producer(&self) -> &Producer {
        &self.producer
    }

    /// Stores a half message; end it with [`PendingTransaction::commit`] or `rollback`.
    pub async fn begin(&self, message: Message) -> Result<PendingTransaction> {
        if message.message_group.is_some() || message.deliver_at.is_some() {
            return Err(Error::InvalidArgument("transactional messages cannot be FIFO or delayed".into()));
        }
        let topic = message.topic.clone();
        let entry = self.producer.send_one(message, true).await?;
        Ok(PendingTransaction {
            producer: self.producer.clone(),
            topic,
            context: TxnContext { transaction_id: entry.transaction_id, message_id: entry.message_id },
        })
    }

    /// Sends `message` as a half message, runs `local`, then commits if it returned `Ok` and
    /// rolls back if it returned `Err`. The outer `Result` is the SDK's (the half message could
    /// not be stored, so `local` did not run); the inner one is `local`'s own.
    ///
    /// If the commit cannot reach the broker, the local outcome is still returned: the message
    /// is committed later by the check-back (which must find the outcome in durable state).
    pub async fn send_in_transaction<F, Fut, T, E>(
        &self,
        message: Message,
        local: F,
    ) -> Result<std::result::Result<T, E>>
    where
        F: FnOnce(TxnContext) -> Fut,
        Fut: Future<Output = std::result::Result<T, E>>,
    {
        let pending = self.begin(message).await?;
        let outcome = local(pending.context().clone()).await;
        let id = pending.context().transaction_id.clone();
        let ended = match &outcome {
            Ok(_) => pending.commit().await,
            Err(_) => pending.rollback().await,
        };
        if let Err(e) = ended {
            tracing::warn!(transaction_id = id, error = %e, "ending the transaction failed; the check-back will resolve it");
        }
        Ok(outcome)
    }

    /// Shuts down (NotifyClientTermination); pending transactions are checked with other producers.
    pub async fn shutdown(self) -> Result<()> {
        self.producer.shutdown().await
    }
}

async fn answer_check(
    producer: Producer,
    checker: Arc<dyn TransactionChecker>,
    c: v2::RecoverOrphanedTransactionCommand,
) {
    let Some(m) = c.message else { return };
    let sp = m.system_properties.unwrap_or_default();
    let request = CheckRequest {
        transaction_id: c.transaction_id,
        message_id: sp.message_id,
        topic: m.topic.map(|t| t.name).unwrap_or_default(),
        keys: sp.keys,
        tag: sp.tag,
        properties: m.user_properties.into_iter().collect(),
        body: m.body,
    };
    let resolution = checker.check(&request).await;
    let ctx = TxnContext { transaction_id: request.transaction_id.clone(), message_id: request.message_id.clone() };
    if let Err(e) = end_transaction(
        &producer,
        &request.topic,
        &ctx,
        resolution,
        v2::TransactionSource::SourceServerCheck,
        Wait::Answer,
    )
    .await
    {
        tracing::warn!(transaction_id = ctx.transaction_id, error = %e, "could not answer a check-back");
    }
}
