//! Consumers: [`SimpleConsumer`] (receive, ack, change invisibility) and [`Consumer`], which
//! runs a handler over a subscription with bounded concurrency, acks on success and retries
//! with backoff on failure.

use crate::batch::Batcher;
use crate::error::{Error, Result};
use crate::message::ReceivedMessage;
use crate::session::Session;
use crate::transport::{self, ClientConfig};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use txmq_proto::v2;

/// Long-polling time of a receive (the broker caps it at 20 s by default).
const LONG_POLL: Duration = Duration::from_secs(20);

/// An ack waiting to leave: (topic, message id, receipt handle).
type Ack = (String, String, String);
type AckBatcher = Batcher<Ack, Result<()>>;

/// Receives, acks and changes invisibility by hand.
///
/// ```no_run
/// # async fn demo() -> txmq_client::Result<()> {
/// use std::time::Duration;
/// use txmq_client::{ClientConfig, SimpleConsumer};
/// let consumer = SimpleConsumer::connect(ClientConfig::new("127.0.0.1:8081"), "inventory").await?;
/// for m in consumer.receive("orders", "*", 16, Duration::from_secs(30)).await? {
///     consumer.ack(&m).await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SimpleConsumer {
    session: Arc<Session>,
    group: String,
    /// Natural batching of acks.
    acks: Option<Arc<AckBatcher>>,
}

impl SimpleConsumer {
    /// Connects as a member of consumer `group`.
    pub async fn connect(config: ClientConfig, group: &str) -> Result<Self> {
        let settings = v2::Settings {
            client_type: Some(v2::ClientType::SimpleConsumer as i32),
            pub_sub: Some(v2::settings::PubSub::Subscription(v2::Subscription {
                group: transport::resource(group),
                ..Default::default()
            })),
            ..Default::default()
        };
        let batching = config.batching;
        let session = Session::start(config, settings, v2::ClientType::SimpleConsumer, Some(group.to_string()), None)?;
        let mut c = Self { session, group: group.to_string(), acks: None };
        if batching.enabled() {
            let acks =
                Batcher::start_on(batching, |_| 0, c.clone(), |c, acks| async move { c.ack_together(acks).await });
            c.acks = Some(Arc::new(acks));
        }
        Ok(c)
    }

    /// Receives up to `max` messages of `topic` matching the tag `filter` (`*`, `a||b`), each
    /// invisible to the group for `invisible`. Waits up to 20 s for one; empty if none came.
    pub async fn receive(
        &self,
        topic: &str,
        filter: &str,
        max: u32,
        invisible: Duration,
    ) -> Result<Vec<ReceivedMessage>> {
        self.receive_for(topic, filter, max, invisible, LONG_POLL).await
    }

    /// [`SimpleConsumer::receive`] with its own long-polling time.
    pub async fn receive_for(
        &self,
        topic: &str,
        filter: &str,
        max: u32,
        invisible: Duration,
        poll: Duration,
    ) -> Result<Vec<ReceivedMessage>> {
        let req = v2::ReceiveMessageRequest {
            group: transport::resource(&self.group),
            message_queue: Some(v2::MessageQueue { topic: transport::resource(topic), ..Default::default() }),
            filter_expression: Some(v2::FilterExpression {
                r#type: v2::FilterType::Tag as i32,
                expression: filter.to_string(),
            }),
            batch_size: max as i32,
            invisible_duration: Some(transport::wire_duration(invisible)),
            auto_renew: false,
            long_polling_timeout: Some(transport::wire_duration(poll)),
            attempt_id: None,
        };
        let deadline = poll + self.session.config.request_timeout;
        let mut stream = transport::call(deadline, self.session.rpc.clone().receive_message(req)).await?;
        let mut out = Vec::new();
        let collect = async {
            while let Some(item) = stream.message().await.map_err(|s| crate::Error::from_status(&s, deadline))? {
                match item.content {
                    Some(v2::receive_message_response::Content::Status(s))
                        if s.code == v2::Code::MessageNotFound as i32 => {}
                    Some(v2::receive_message_response::Content::Status(s)) => transport::check(Some(&s))?,
                    Some(v2::receive_message_response::Content::Message(m)) => out.push(ReceivedMessage::from_wire(m)),
                    _ => {}
                }
            }
            Ok::<_, crate::Error>(())
        };
        match tokio::time::timeout(deadline, collect).await {
            Ok(r) => r?,
            Err(_) => return Err(crate::Error::Timeout(deadline)),
        }
        Ok(out)
    }

    /// Acknowledges a message: done for this group. Durable when this returns.
    ///
    /// With batching on (the default), acks made while others are in flight leave together in
    /// one AckMessage request; each still gets its own result.
    pub async fn ack(&self, m: &ReceivedMessage) -> Result<()> {
        let ack = (m.topic.clone(), m.message_id.clone(), m.receipt_handle.clone());
        match &self.acks {
            Some(b) => b.submit(ack).await.unwrap_or(Err(Error::Closed)),
            None => self.ack_together(vec![ack]).await.pop().unwrap_or(Err(Error::Closed)),
        }
    }

    /// Acks of one topic in one AckMessage request each; every ack gets its entry's status.
    async fn ack_together(&self, acks: Vec<Ack>) -> Vec<Result<()>> {
        let ack = |group: Vec<Ack>| async move {
            let req = v2::AckMessageRequest {
                group: transport::resource(&self.group),
                topic: transport::resource(&group[0].0),
                entries: group
                    .iter()
                    .map(|(_, id, handle)| v2::AckMessageEntry {
                        message_id: id.clone(),
                        receipt_handle: handle.clone(),
                        lite_topic: None,
                    })
                    .collect(),
            };
            match transport::call(self.session.config.request_timeout, self.session.rpc.clone().ack_message(req)).await
            {
                // Each entry's own status; the request's when it has none per entry.
                Ok(r) if r.entries.len() == group.len() => {
                    r.entries.iter().map(|e| transport::check(e.status.as_ref().or(r.status.as_ref()))).collect()
                }
                Ok(r) => group.iter().map(|_| transport::check(r.status.as_ref())).collect(),
                Err(e) => group.iter().map(|_| Err(e.same())).collect::<Vec<_>>(),
            }
        };
        crate::batch::in_groups(acks, |a: &Ack, b: &Ack| a.0 == b.0, ack, || Err(Error::Closed)).await
    }

    /// Makes the message visible again after `invisible` (a retry later); its handle changes.
    pub async fn change_invisible_duration(&self, m: &mut ReceivedMessage, invisible: Duration) -> Result<()> {
        let req = v2::ChangeInvisibleDurationRequest {
            group: transport::resource(&self.group),
            topic: transport::resource(&m.topic),
            receipt_handle: m.receipt_handle.clone(),
            invisible_duration: Some(transport::wire_duration(invisible)),
            message_id: m.message_id.clone(),
            lite_topic: None,
            suspend: None,
        };
        let r = transport::call(
            self.session.config.request_timeout,
            self.session.rpc.clone().change_invisible_duration(req),
        )
        .await?;
        transport::check(r.status.as_ref())?;
        m.receipt_handle = r.receipt_handle;
        Ok(())
    }

    /// Leaves the group (NotifyClientTermination) and stops background tasks.
    pub async fn shutdown(self) -> Result<()> {
        self.session.close().await
    }
}

/// Runs a handler over a subscription: `Consumer::new(consumer).subscribe("orders", "*").run(…)`.
pub struct Consumer {
    inner: SimpleConsumer,
    concurrency: usize,
    invisible: Duration,
}

/// One topic and filter of a [`Consumer`].
pub struct Subscription<'a> {
    consumer: &'a Consumer,
    topic: String,
    filter: String,
}

impl Consumer {
    /// A consumer over `inner` with concurrency 16 and 30 s invisibility.
    pub fn new(inner: SimpleConsumer) -> Self {
        Self { inner, concurrency: 16, invisible: Duration::from_secs(30) }
    }

    /// Handlers running at once (and messages held at once).
    pub fn with_concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// How long a message stays invisible while its handler runs.
    pub fn with_invisible_duration(mut self, d: Duration) -> Self {
        self.invisible = d;
        self
    }

    /// Subscribes to `topic` with a tag filter (`*`, `a||b`).
    pub fn subscribe(&self, topic: &str, filter: &str) -> Subscription<'_> {
        Subscription { consumer: self, topic: topic.to_string(), filter: filter.to_string() }
    }
}

/// Retry delay after the n-th failed delivery: 1 s doubling to 60 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.saturating_sub(1).min(6)).min(Duration::from_secs(60))
}

impl Subscription<'_> {
    /// Runs `handler` on every message until `stop` completes, then waits for running handlers.
    /// `Ok` acks the message; `Err` makes it come back after [`backoff`]`(attempt)`.
    pub async fn run<H, Fut, E>(self, handler: H, stop: impl Future<Output = ()>) -> Result<()>
    where
        H: Fn(ReceivedMessage) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let c = self.consumer;
        let handler = Arc::new(handler);
        let permits = Arc::new(tokio::sync::Semaphore::new(c.concurrency));
        let mut running = tokio::task::JoinSet::new();
        tokio::pin!(stop);
        loop {
            let free = permits.available_permits().max(1) as u32;
            let received = tokio::select! {
                _ = &mut stop => break,
                r = c.inner.receive_for(&self.topic, &self.filter, free, c.invisible, Duration::from_secs(5)) => r,
            };
            let messages = match received {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "receive failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            for m in messages {
                let Ok(permit) = permits.clone().acquire_owned().await else { break };
                let (consumer, handler) = (c.inner.clone(), handler.clone());
                running.spawn(async move {
                    let mut m = m;
                    match handler(m.clone()).await {
                        Ok(()) => {
                            if let Err(e) = consumer.ack(&m).await {
                                tracing::warn!(message_id = m.message_id, error = %e, "ack failed; the message will come back");
                            }
                        }
                        Err(e) => {
                            let delay = backoff(m.delivery_attempt);
                            tracing::info!(message_id = m.message_id, attempt = m.delivery_attempt, error = %e, "handler failed; retrying in {delay:?}");
                            let _ = consumer.change_invisible_duration(&mut m, delay).await;
                        }
                    }
                    drop(permit);
                });
            }
            while running.try_join_next().is_some() {}
        }
        while running.join_next().await.is_some() {}
        Ok(())
    }
}
