//! The broker core: topics and the message log over one store, independent of gRPC.
//!
//! The gRPC layer (`grpc`) converts requests into calls on [`Broker`] and its errors into
//! RocketMQ status codes; the admin API uses the same calls.

use crate::config::Config;
use crate::consume::Groups;
use crate::error::{BrokerError, Result};
use crate::log::{MessageLog, QueueOffsets};
use crate::metrics::{Gauges, Metrics};
use crate::model::{MessageType, Millis, NewMessage, StoredMessage, TopicRecord, TopicType};
use crate::store::{Batch, CommitStats, Committer, Key, SledStore, Store};
use crate::topics::{self, Topics};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// The broker's clock: milliseconds since the Unix epoch.
pub fn now_ms() -> Millis {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as Millis).unwrap_or(0)
}

/// A running broker's state. Shared behind an `Arc` by every service.
pub struct Broker {
    config: Config,
    store: Arc<dyn Store>,
    committer: Arc<Committer>,
    topics: Topics,
    log: MessageLog,
    groups: Groups,
    metrics: Arc<Metrics>,
    /// Per-transaction locks, striped by id (see `txn::service`).
    txn_locks: Vec<tokio::sync::Mutex<()>>,
    /// Serializes topic and group creation, so two concurrent auto-creates store one record.
    create_lock: tokio::sync::Mutex<()>,
    /// Pending and parked transaction counts.
    txn_open: crate::txn::service::OpenCounts,
    started_at: Millis,
}

/// What a send produced for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendOutcome {
    /// Queue offset (0 for half messages, which are in no queue yet).
    pub offset: u64,
    /// The transaction id of a half message.
    pub transaction_id: Option<String>,
}

/// A summary of the broker for `txmq status`.
#[derive(Debug, Clone)]
pub struct BrokerStatus {
    pub started_at: Millis,
    pub store_error: Option<String>,
    pub topic_count: usize,
    pub store_bytes: u64,
    pub commits: CommitStats,
}

impl Broker {
    /// Opens the sled store in `config.data_dir` and loads the broker's state.
    pub fn open(config: Config) -> Result<Arc<Self>> {
        let store = Arc::new(SledStore::open(&config.data_dir)?);
        Self::with_store(config, store)
    }

    /// Loads the broker's state from `store`.
    pub fn with_store(config: Config, store: Arc<dyn Store>) -> Result<Arc<Self>> {
        // Before the writer starts: refuse a store of a newer broker, stamp an older one with
        // our schema version, and upgrade it (the open-transaction index, built in one
        // atomic batch with its own marker, so a crash midway simply builds it again).
        crate::store::check_schema(store.as_ref())?;
        let txn_open = crate::txn::service::OpenCounts::load(store.as_ref())?;
        let committer = Arc::new(Committer::start(store.clone(), config.writer_queue)?);
        let topics = Topics::load(store.as_ref())?;
        let log = MessageLog::new(store.clone(), committer.clone());
        for t in topics.list() {
            log.open_topic(&t.name, t.queue_count)?;
        }
        let groups = Groups::load(store.as_ref())?;
        let metrics = Arc::new(Metrics::default());
        let m = metrics.clone();
        committer.observe(Box::new(move |n, took| {
            m.flush_batch.observe(n as f64);
            m.flush_latency.observe(took.as_secs_f64());
        }));
        Ok(Arc::new(Self {
            config,
            store,
            committer,
            topics,
            log,
            groups,
            metrics,
            txn_locks: (0..crate::txn::service::TXN_LOCKS).map(|_| tokio::sync::Mutex::new(())).collect(),
            create_lock: tokio::sync::Mutex::new(()),
            txn_open,
            started_at: now_ms(),
        }))
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Creates a topic durably. Fails with `TopicExists` if it exists.
    pub async fn create_topic(&self, name: &str, topic_type: TopicType, queue_count: u32) -> Result<Arc<TopicRecord>> {
        let queues = if queue_count == 0 { self.config.default_queue_count } else { queue_count };
        let record = topics::new_record(name, topic_type, queues, now_ms(), false)?;
        if topics::is_reserved(name) {
            return Err(BrokerError::IllegalTopic(format!("{name} is a reserved system topic name")));
        }
        let _guard = self.create_lock.lock().await;
        if self.topics.get(name).is_some() {
            return Err(BrokerError::TopicExists(name.to_string()));
        }
        self.store_topic(record).await
    }

    /// The topic, auto-created as MIXED when allowed. Used by routes and sends.
    pub async fn topic_or_create(&self, name: &str) -> Result<Arc<TopicRecord>> {
        topics::validate_name(name)?;
        if let Some(t) = self.topics.get(name) {
            return Ok(t);
        }
        let dead_letter = name.starts_with(topics::DLQ_PREFIX);
        if !dead_letter && topics::is_reserved(name) {
            return Err(BrokerError::IllegalTopic(format!("{name} is a reserved system topic name")));
        }
        // A dead-letter topic exists only for a real group: a route request for any `%DLQ%…`
        // name must not create durable state.
        if dead_letter && self.groups.group(&name[topics::DLQ_PREFIX.len()..]).is_none() {
            return Err(BrokerError::TopicNotFound(name.to_string()));
        }
        if !self.config.auto_create_topics && !dead_letter {
            return Err(BrokerError::TopicNotFound(name.to_string()));
        }
        let _guard = self.create_lock.lock().await;
        if let Some(t) = self.topics.get(name) {
            return Ok(t);
        }
        let queues = if dead_letter { 1 } else { self.config.default_queue_count };
        let record = topics::new_record(name, TopicType::Mixed, queues, now_ms(), true)?;
        tracing::info!(topic = name, queues, "auto-created topic");
        self.store_topic(record).await
    }

    /// Stores a new topic; the caller holds the creation lock and checked it is new.
    async fn store_topic(&self, record: TopicRecord) -> Result<Arc<TopicRecord>> {
        let max = self.config.max_topics;
        if self.topics.len() >= max {
            return Err(BrokerError::QuotaExceeded(format!(
                "{max} topics exist (max-topics); {} was not created",
                record.name
            )));
        }
        let mut batch = Batch::new();
        batch.put(&Key::Topic(record.name.clone()), record.encode());
        self.committer.commit(batch).await?;
        self.log.open_topic(&record.name, record.queue_count)?;
        Ok(self.topics.insert(record))
    }

    pub fn topic(&self, name: &str) -> Option<Arc<TopicRecord>> {
        self.topics.get(name)
    }

    pub fn topics(&self) -> Vec<Arc<TopicRecord>> {
        self.topics.list()
    }

    /// Offsets of every queue of a topic.
    pub fn queue_offsets(&self, topic: &TopicRecord) -> Vec<QueueOffsets> {
        (0..topic.queue_count).filter_map(|q| self.log.offsets(&topic.name, q)).collect()
    }

    /// Stores validated messages of one topic durably; idempotent on message id.
    /// TRANSACTION messages become half messages (one transaction each); others are appended
    /// to the topic's queues. `producer` is the sending client's id.
    pub async fn send(&self, topic: &str, messages: Vec<NewMessage>, producer: &str) -> Result<Vec<SendOutcome>> {
        if topics::is_reserved(topic) {
            return Err(BrokerError::IllegalTopic(format!("cannot send to the system topic {topic}")));
        }
        let record = self.topic_or_create(topic).await?;
        for m in &messages {
            if !record.topic_type.accepts(m.message_type) {
                return Err(BrokerError::TypeConflict(format!(
                    "topic {topic} is {} and does not accept {:?} messages",
                    record.topic_type.as_str(),
                    m.message_type
                )));
            }
        }
        let transactional = messages.iter().filter(|m| m.message_type == MessageType::Transaction).count();
        if transactional == 0 {
            let placed = self.log.append(topic, record.queue_count, messages, producer, now_ms(), Batch::new()).await?;
            let fresh = placed.iter().filter(|p| !p.duplicate).count() as u64;
            self.metrics.messages_in.add(&[topic], fresh);
            return Ok(placed.into_iter().map(|p| SendOutcome { offset: p.offset, transaction_id: None }).collect());
        }
        if transactional != messages.len() {
            return Err(BrokerError::BadRequest("a request cannot mix transactional and other messages".into()));
        }
        let mut out = Vec::with_capacity(messages.len());
        for m in messages {
            let id = self.send_half(m, producer).await?;
            out.push(SendOutcome { offset: 0, transaction_id: Some(id) });
        }
        Ok(out)
    }

    /// Messages by id (in `topic`, or in every topic when `topic` is empty) or by key in
    /// `topic`; at most `limit`.
    pub fn find_messages(&self, topic: &str, message_id: &str, key: &str, limit: usize) -> Result<Vec<StoredMessage>> {
        if !key.is_empty() {
            if topic.is_empty() {
                return Err(BrokerError::BadRequest("finding by key needs a topic".into()));
            }
            return self.log.find_by_key(topic, key, limit);
        }
        if message_id.is_empty() {
            return Err(BrokerError::BadRequest("give a message id or a key".into()));
        }
        let topics: Vec<String> = if topic.is_empty() {
            self.topics.list().iter().map(|t| t.name.clone()).collect()
        } else {
            vec![topic.into()]
        };
        let mut out = Vec::new();
        for t in topics {
            if let Some((q, o)) = self.log.locate(&t, message_id)? {
                if let Some(m) = self.log.read(&t, q, o)? {
                    out.push(m);
                }
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    pub fn log(&self) -> &MessageLog {
        &self.log
    }

    pub fn groups(&self) -> &Groups {
        &self.groups
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Values for the metrics endpoint that are computed when scraped.
    pub fn gauges(&self) -> Gauges {
        let now = now_ms();
        let mut g = Gauges {
            store_bytes: self.store.size_on_disk(),
            store_writable: self.committer.poisoned().is_none(),
            ..Gauges::default()
        };
        let counts = self.transaction_counts().unwrap_or_default();
        g.pending_transactions = counts.pending;
        g.parked_transactions = counts.parked;
        g.oldest_pending_age_seconds = counts.oldest_pending.map_or(0.0, |t| (now - t).max(0) as f64 / 1000.0);
        for group in self.groups.list() {
            if let Some(stats) = self.group_stats(&group.name) {
                for t in stats.topics {
                    g.groups.push((group.name.clone(), t.topic, t.backlog, t.in_flight));
                }
            }
        }
        g
    }

    pub(crate) fn txn_locks(&self) -> &[tokio::sync::Mutex<()>] {
        &self.txn_locks
    }

    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub(crate) fn committer(&self) -> &Committer {
        &self.committer
    }

    pub(crate) fn txn_open(&self) -> &crate::txn::service::OpenCounts {
        &self.txn_open
    }

    pub(crate) fn create_lock(&self) -> &tokio::sync::Mutex<()> {
        &self.create_lock
    }

    /// Deletes messages older than the retention period, in bounded steps. Returns how many
    /// were deleted.
    pub async fn enforce_retention(&self) -> Result<usize> {
        let cutoff = now_ms() - self.config.retention.as_millis() as Millis;
        let mut deleted = 0;
        for t in self.topics.list() {
            for q in 0..t.queue_count {
                loop {
                    let n = self.log.expire(&t.name, q, cutoff, 256).await?;
                    deleted += n;
                    if n < 256 {
                        break;
                    }
                }
            }
        }
        if deleted > 0 {
            tracing::info!(deleted, "retention removed old messages");
        }
        Ok(deleted)
    }

    pub fn status(&self) -> BrokerStatus {
        BrokerStatus {
            started_at: self.started_at,
            store_error: self.committer.poisoned(),
            topic_count: self.topics.len(),
            store_bytes: self.store.size_on_disk(),
            commits: self.committer.stats(),
        }
    }

    /// Finishes queued writes, flushes and stops the writer. Blocks briefly.
    pub fn shutdown(&self) {
        self.committer.shutdown();
    }
}
