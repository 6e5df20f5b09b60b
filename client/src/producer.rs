//! Producers: normal, FIFO, delay and batch sends with retries.

use crate::batch::{Batcher, Batching};
use crate::error::{Error, Result};
use crate::message::{Message, SendReceipt};
use crate::session::{CommandHandler, Session};
use crate::transport::{self, ClientConfig};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use txmq_proto::ext::MAX_DECISIONS;
use txmq_proto::v2;

/// How long a topic's route is trusted before it is queried again.
const ROUTE_TTL: Duration = Duration::from_secs(30);
/// Send attempts for retryable failures (the same message id each time).
const SEND_ATTEMPTS: u32 = 3;

/// Natural batching of sends: a message, whether it is a half message, and its entry.
type SendBatcher = Batcher<(Message, bool), Result<v2::SendResultEntry>>;

/// Sends messages. Cheap to clone; every clone shares one connection.
///
/// Sends are retried on retryable failures with the same message id, which the broker
/// deduplicates: a retried send is stored once.
///
/// ```no_run
/// # async fn demo() -> txmq_client::Result<()> {
/// use txmq_client::{ClientConfig, Message, Producer};
/// let producer = Producer::connect(ClientConfig::new("127.0.0.1:8081"), &["orders"]).await?;
/// let receipt = producer.send(Message::new("orders", "order 42 created").with_key("order-42")).await?;
/// println!("stored as {}", receipt.message_id);
/// producer.shutdown().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Producer {
    pub(crate) session: Arc<Session>,
    routes: Arc<Mutex<HashMap<String, Instant>>>,
    /// Natural batching of [`Producer::send`] and of half messages (`None`: one request per
    /// send); an item is a message and whether it is a half message.
    batcher: Option<Arc<SendBatcher>>,
    /// Natural batching of a transactional producer's decisions.
    pub(crate) decisions: Option<Arc<Decisions>>,
}

/// Natural batching of transaction decisions.
pub(crate) type DecisionBatcher = Batcher<txmq_proto::ext::Decision, Result<()>>;

/// A transactional producer's decision batchers, each with its own bound.
pub(crate) struct Decisions {
    /// Awaited decisions: commits, rollbacks, answers to the broker's checks.
    pub(crate) awaited: DecisionBatcher,
    /// One-way commits, which nobody waits for.
    pub(crate) oneway: DecisionBatcher,
}

impl Producer {
    /// Connects and checks that `topics` exist (or are auto-created) on the broker.
    pub async fn connect(config: ClientConfig, topics: &[&str]) -> Result<Self> {
        Self::connect_with(config, topics, None).await
    }

    pub(crate) async fn connect_with(
        config: ClientConfig,
        topics: &[&str],
        on_command: Option<CommandHandler>,
    ) -> Result<Self> {
        let settings = v2::Settings {
            client_type: Some(v2::ClientType::Producer as i32),
            request_timeout: Some(transport::wire_duration(config.request_timeout)),
            pub_sub: Some(v2::settings::PubSub::Publishing(v2::Publishing {
                topics: topics.iter().filter_map(|t| transport::resource(t)).collect(),
                max_body_size: 0,
                validate_message_type: true,
            })),
            ..Default::default()
        };
        let batching = config.batching;
        let transactional = on_command.is_some();
        let session = Session::start(config, settings, v2::ClientType::Producer, None, on_command)?;
        let mut p = Producer { session, routes: Arc::new(Mutex::new(HashMap::new())), batcher: None, decisions: None };
        if batching.enabled() && transactional {
            let start = |limits| {
                Batcher::start_on(
                    limits,
                    |_| 0,
                    p.clone(),
                    |p, decisions| async move { crate::transaction::end_together(&p, decisions).await },
                )
            };
            // One-way commits keep the sends' bound: nobody waits for them, and fewer requests
            // carry more of them (Batching::decisions_in_flight).
            // The broker takes at most MAX_DECISIONS decisions in one call.
            let capped = |b: Batching| Batching { max_items: b.max_items.min(MAX_DECISIONS), ..b };
            let decisions =
                Decisions { awaited: start(capped(batching.for_decisions())), oneway: start(capped(batching)) };
            p.decisions = Some(Arc::new(decisions));
        }
        if batching.enabled() {
            let size: fn(&(Message, bool)) -> usize = |(m, _)| m.body.len();
            let sends =
                Batcher::start_on(
                    batching,
                    size,
                    p.clone(),
                    |p, messages| async move { p.send_together(messages).await },
                );
            p.batcher = Some(Arc::new(sends));
        }
        for t in topics {
            p.route(t).await?;
        }
        Ok(p)
    }

    /// The client id the broker knows this producer by.
    pub fn client_id(&self) -> &str {
        &self.session.client_id
    }

    /// Queries the topic's route unless a fresh one is cached.
    async fn route(&self, topic: &str) -> Result<()> {
        let fresh =
            self.routes.lock().ok().and_then(|m| m.get(topic).copied()).is_some_and(|t| t.elapsed() < ROUTE_TTL);
        if fresh {
            return Ok(());
        }
        let req = v2::QueryRouteRequest { topic: transport::resource(topic), endpoints: None };
        let r = transport::call(self.session.config.request_timeout, self.session.rpc.clone().query_route(req)).await?;
        transport::check(r.status.as_ref())?;
        if let Ok(mut m) = self.routes.lock() {
            m.insert(topic.to_string(), Instant::now());
        }
        Ok(())
    }

    /// Sends one message; durable on the broker when this returns Ok.
    ///
    /// With batching on (the default, [`ClientConfig::batching`]), sends made while others
    /// are in flight leave together in one request; each still gets its own receipt or error.
    pub async fn send(&self, message: Message) -> Result<SendReceipt> {
        let e = self.send_one(message, false).await?;
        Ok(SendReceipt { message_id: e.message_id, offset: e.offset.max(0) as u64 })
    }

    /// One message (a half message when `transactional`), batched naturally when batching is on.
    pub(crate) async fn send_one(&self, message: Message, transactional: bool) -> Result<v2::SendResultEntry> {
        let entry = match &self.batcher {
            Some(b) => b.submit((message, transactional)).await.unwrap_or(Err(Error::Closed))?,
            None => self.send_alone(message, transactional).await?,
        };
        transport::check(entry.status.as_ref())?;
        Ok(entry)
    }

    async fn send_alone(&self, message: Message, transactional: bool) -> Result<v2::SendResultEntry> {
        self.send_wire(&mut [message], transactional).await?.pop().ok_or_else(no_entry)
    }

    /// Sends messages gathered by natural batching: those of one topic and message group (a
    /// FIFO group keeps its order), all half messages or none, in one request; a delayed
    /// message alone. When a request of
    /// several is refused for a reason a retry cannot fix (one invalid message), each of its
    /// messages is sent alone, so only the invalid one fails.
    async fn send_together(&self, messages: Vec<(Message, bool)>) -> Vec<Result<v2::SendResultEntry>> {
        let fits = |(a, a_half): &(Message, bool), (b, b_half): &(Message, bool)| {
            a_half == b_half
                && a.deliver_at.is_none()
                && b.deliver_at.is_none()
                && a.topic == b.topic
                && a.message_group == b.message_group
        };
        let send = |group: Vec<(Message, bool)>| async move {
            let half = group[0].1;
            let mut g: Vec<Message> = group.into_iter().map(|(m, _)| m).collect();
            match self.send_wire(&mut g, half).await {
                Ok(entries) if entries.len() == g.len() => entries.into_iter().map(Ok).collect(),
                Ok(_) => g.iter().map(|_| Err(no_entry())).collect(),
                Err(e) if g.len() > 1 && !e.is_retryable() => {
                    // The same ids again (send_wire gave each message one): nothing was stored.
                    let mut one_by_one = Vec::with_capacity(g.len());
                    for m in g {
                        one_by_one.push(self.send_alone(m, half).await);
                    }
                    one_by_one
                }
                Err(e) => g.iter().map(|_| Err(e.same())).collect(),
            }
        };
        crate::batch::in_groups(messages, fits, send, || Err(no_entry())).await
    }

    /// Sends several messages of one topic in one request (stored together, in one queue).
    pub async fn send_batch(&self, mut messages: Vec<Message>) -> Result<Vec<SendReceipt>> {
        let entries = self.send_wire(&mut messages, false).await?;
        Ok(entries
            .into_iter()
            .map(|e| SendReceipt { message_id: e.message_id, offset: e.offset.max(0) as u64 })
            .collect())
    }

    /// Sends with retries; returns the broker's entries (one per message).
    pub(crate) async fn send_wire(
        &self,
        messages: &mut [Message],
        transactional: bool,
    ) -> Result<Vec<v2::SendResultEntry>> {
        let Some(topic) = messages.first().map(|m| m.topic.clone()) else {
            return Err(Error::InvalidArgument("no messages to send".into()));
        };
        if messages.iter().any(|m| m.topic != topic) {
            return Err(Error::InvalidArgument("all messages of one send must share a topic".into()));
        }
        let wire: Vec<v2::Message> = messages
            .iter_mut()
            .map(|m| {
                let id = m.ensure_id();
                m.to_wire(&id, transactional)
            })
            .collect();
        let mut delay = Duration::from_millis(50);
        let mut attempt = 1;
        loop {
            let result = async {
                self.route(&topic).await?;
                let r = self.session.send_message(v2::SendMessageRequest { messages: wire.clone() }).await?;
                transport::check(r.status.as_ref())?;
                Ok::<_, Error>(r.entries)
            }
            .await;
            match result {
                Err(e) if e.is_retryable() && attempt < SEND_ATTEMPTS => {
                    tracing::debug!(attempt, error = %e, "send failed; retrying with the same message id");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Stops heartbeats and Telemetry and tells the broker this producer is gone (after the
    /// sends already made).
    pub async fn shutdown(self) -> Result<()> {
        self.session.close().await
    }
}

fn no_entry() -> Error {
    Error::Broker { code: 0, code_name: "NO_ENTRY".into(), message: "no send result".into() }
}
