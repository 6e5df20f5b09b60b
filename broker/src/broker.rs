//! The broker: the parts wired together, independent of gRPC.
//!
//! [`Broker`] owns five parts, each with its own state behind its own API:
//! - [`Topics`]: the topic registry, its creation lock and quota;
//! - [`MessageLog`]: the queues of every topic and their messages;
//! - [`Consumers`]: consumer groups and their consumption state;
//! - [`Transactions`]: transaction records, half messages, their locks and check schedule;
//! - [`Auth`]: users, their secrets and access policies.
//!
//! It keeps the operations that span parts — a send (topic, then log or transactions), a commit
//! (transactions, then the log in the same write), a receive (consumers over topics and log)
//! — and answers for the whole (status, gauges, shutdown). The gRPC layer (`grpc`) converts
//! requests into calls on [`Broker`] and its errors into RocketMQ status codes; the admin API
//! uses the same calls. No part reaches into another: the store and the group-commit writer
//! are shared, but each part writes only its own keys.

use crate::audit::AuditLog;
use crate::auth::{Auth, AuthSettings, UserKind};
use crate::config::Config;
use crate::consume::admin::{DeadLetter, GroupStats, InflightView, MessageState};
use crate::consume::lite::{Evicted, SubscriptionView, SyncAction};
use crate::consume::pull::{OffsetQuery, PullRequest, Pulled};
use crate::consume::service::{Delivery, LiteStart, ReceiveRequest};
use crate::consume::{ConsumeSettings, Consumers, GroupRecord, Source};
use crate::disk::DiskSpace;
use crate::error::{BrokerError, Result};
use crate::log::{MessageLog, Placement, QueueOffsets, Target};
use crate::metrics::{Gauges, GroupGauge, Metrics};
use crate::model::{MessageType, Millis, NewMessage, StoredMessage, TopicRecord, TopicType};
use crate::store::sled_store::Layout;
use crate::store::{Batch, CommitStats, Committer, SledStore, Store};
use crate::topics::{self, IfExists, Topics};
use crate::txn::service::{CheckOutcome, CheckTarget, Transactions, TxnCounts, TxnFilter, TxnSettings};
use crate::txn::state::{Actor, Resolution, Txn};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub use crate::clock::now_ms;

/// A running broker. Shared behind an `Arc` by every service.
pub struct Broker {
    config: Config,
    /// Kept for the size on disk; the parts hold their own handles.
    store: Arc<dyn Store>,
    committer: Arc<Committer>,
    /// This node's store replication (cluster with replicas).
    leader: std::sync::OnceLock<Arc<crate::replication::leader::Leader>>,
    /// Set when this broker serves another node's shard from a copy (failover): that node.
    acting_on: std::sync::OnceLock<String>,
    /// A returning node's standby announcement, withdrawn once it holds its id again.
    standby: std::sync::OnceLock<tokio_util::sync::CancellationToken>,
    topics: Topics,
    log: MessageLog,
    consumers: Consumers,
    txns: Transactions,
    auth: Auth,
    audit: AuditLog,
    metrics: Arc<Metrics>,
    /// The data directory's free space; new messages are refused below the floor.
    disk: Arc<DiskSpace>,
    started_at: Millis,
}

/// What a send produced for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendOutcome {
    /// Queue and offset (0 for half messages, which are in no queue yet).
    pub queue: u32,
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
        // For a new store only: an existing one keeps the layout it was created with.
        let layout = match (config.value_log, config.message_files) {
            (true, _) => Layout::ValueLog,
            (false, true) => Layout::MessageFiles,
            (false, false) => Layout::Sled,
        };
        let store = Arc::new(SledStore::open_with(&config.data_dir, layout)?);
        Self::with_store(config, store)
    }

    /// Loads the broker's state from `store`.
    pub fn with_store(config: Config, store: Arc<dyn Store>) -> Result<Arc<Self>> {
        // Before the writer starts: refuse a store of a newer broker and stamp an older one
        // with our schema version; the transactions part converts its indexes (its marker is
        // written last, so a crash midway simply converts again).
        let records = config.message_record_version;
        crate::store::check_schema(store.as_ref(), crate::store::schema_written(records))?;
        let metrics = Arc::new(Metrics::default());
        let txn_settings = TxnSettings {
            timeout: config.txn_timeout,
            check_interval: config.txn_check_interval,
            max_checks: config.txn_max_checks,
            max_checks_policy: config.txn_max_checks_policy,
            unreachable_max_age: config.txn_unreachable_max_age,
            retention: config.txn_retention,
            records,
        };
        let committer = Arc::new(Committer::start(store.clone(), config.writer_queue)?);
        // First, before anything is written through the committer: it may upgrade the store.
        let txns = Transactions::load(store.clone(), committer.clone(), metrics.clone(), txn_settings)?;
        let topics = Topics::load(store.as_ref(), committer.clone(), config.max_topics, config.max_lite_topics)?;
        let log = MessageLog::open(store.clone(), committer.clone())?.with_record_version(records);
        for t in topics.list() {
            log.open_topic(&t.name, t.queue_count)?;
            if t.topic_type == TopicType::Lite {
                for q in topics.queues(&t) {
                    log.open_queue(&t.name, q)?;
                }
            }
        }
        let consume_settings = ConsumeSettings {
            max_groups: config.max_groups,
            max_delivery_attempts: config.max_delivery_attempts,
            new_group_start: config.new_group_start,
            max_lite_subscriptions: config.max_lite_subscriptions,
            lite_exclusive: config.lite_exclusive,
        };
        let consumers = Consumers::load(store.clone(), committer.clone(), metrics.clone(), consume_settings)?;
        let auth_settings = AuthSettings {
            enabled: config.auth,
            max_skew: config.auth_max_skew,
            key_file: config.auth_key_file.clone(),
        };
        let auth = Auth::load(store.as_ref(), committer.clone(), auth_settings)?;
        let m = metrics.clone();
        committer.observe(Box::new(move |n, took| {
            m.flush_batch.observe(n as f64);
            m.flush_latency.observe(took.as_secs_f64());
        }));
        let audit = AuditLog::new(store.clone(), committer.clone());
        let disk = Arc::new(DiskSpace::new(&config.data_dir, config.min_free_disk_bytes));
        Ok(Arc::new(Self {
            config,
            store,
            committer,
            leader: std::sync::OnceLock::new(),
            acting_on: std::sync::OnceLock::new(),
            standby: std::sync::OnceLock::new(),
            topics,
            log,
            consumers,
            txns,
            auth,
            audit,
            metrics,
            disk,
            started_at: now_ms(),
        }))
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    fn source(&self) -> Source<'_> {
        Source { topics: &self.topics, log: &self.log }
    }

    // ---- topics ----

    /// Creates a topic durably. Fails with `TopicExists` if it exists.
    pub async fn create_topic(&self, name: &str, topic_type: TopicType, queue_count: u32) -> Result<Arc<TopicRecord>> {
        let queues = if queue_count == 0 { self.config.default_queue_count } else { queue_count };
        let record = topics::new_record(name, topic_type, queues, now_ms(), false)?;
        if topics::is_reserved(name) {
            return Err(BrokerError::IllegalTopic(format!("{name} is a reserved system topic name")));
        }
        self.topics.create(record, IfExists::Fail, |r| self.log.open_topic(&r.name, r.queue_count)).await
    }

    /// Gives a topic more queues (durably); its existing queues keep their messages.
    pub async fn grow_topic(&self, name: &str, queue_count: u32) -> Result<Arc<TopicRecord>> {
        self.topics.grow(name, queue_count, |r| self.log.open_topic(&r.name, r.queue_count)).await
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
        if dead_letter && self.consumers.group(&name[topics::DLQ_PREFIX.len()..]).is_none() {
            return Err(BrokerError::TopicNotFound(name.to_string()));
        }
        if !self.config.auto_create_topics && !dead_letter {
            return Err(BrokerError::TopicNotFound(name.to_string()));
        }
        let queues = if dead_letter { 1 } else { self.config.default_queue_count };
        let record = topics::new_record(name, TopicType::Mixed, queues, now_ms(), true)?;
        self.topics.create(record, IfExists::Use, |r| self.log.open_topic(&r.name, r.queue_count)).await
    }

    pub fn topic(&self, name: &str) -> Option<Arc<TopicRecord>> {
        self.topics.get(name)
    }

    pub fn topics(&self) -> Vec<Arc<TopicRecord>> {
        self.topics.list()
    }

    /// Up to `limit` lite topics of a LITE topic with their queues (by name), and how many it
    /// has.
    pub fn lite_topics(&self, topic: &str, limit: usize) -> (Vec<(Arc<str>, u32)>, usize) {
        (self.topics.lite_topics(topic, limit), self.topics.lite_count(topic))
    }

    /// Offsets of one queue of a topic.
    pub fn offsets(&self, topic: &str, queue: u32) -> Option<QueueOffsets> {
        self.log.offsets(topic, queue)
    }

    /// Offsets of every queue of a topic.
    pub fn queue_offsets(&self, topic: &TopicRecord) -> Vec<QueueOffsets> {
        self.source().queue_offsets(topic)
    }

    // ---- sending ----

    /// Stores validated messages of one topic durably; idempotent on message id.
    /// TRANSACTION messages become half messages (one transaction each); others are appended
    /// to the topic's queues. `producer` is the sending client's id.
    pub async fn send(&self, topic: &str, messages: Vec<NewMessage>, producer: &str) -> Result<Vec<SendOutcome>> {
        if topics::is_reserved(topic) {
            return Err(BrokerError::IllegalTopic(format!("cannot send to the system topic {topic}")));
        }
        self.disk.check()?;
        let record = self.topic_or_create(topic).await?;
        for m in &messages {
            if !record.topic_type.accepts(m.message_type) {
                return Err(BrokerError::TypeConflict(format!(
                    "topic {topic} is {} and does not accept {:?} messages",
                    record.topic_type.as_str(),
                    m.message_type
                )));
            }
            if m.priority.is_some_and(|p| p >= record.queue_count) {
                return Err(BrokerError::BadRequest(format!(
                    "priority {} is outside 0..={} (the queues of topic {topic})",
                    m.priority.unwrap_or(0),
                    record.queue_count - 1
                )));
            }
        }
        let transactional = messages.iter().filter(|m| m.message_type == MessageType::Transaction).count();
        if transactional == 0 {
            let types: Vec<&'static str> = messages.iter().map(|m| m.message_type.metric_name()).collect();
            let placed = if record.topic_type == TopicType::Lite {
                self.append_lite(&record, messages, producer).await?
            } else {
                self.log
                    .append(topic, Target::Spread(record.queue_count), messages, producer, now_ms(), Batch::new())
                    .await?
            };
            for (p, ty) in placed.iter().zip(&types) {
                if !p.duplicate {
                    self.metrics.messages_in.add(&[topic, ty], 1);
                }
            }
            return Ok(placed
                .into_iter()
                .map(|p| SendOutcome { queue: p.queue, offset: p.offset, transaction_id: None })
                .collect());
        }
        if transactional != messages.len() {
            return Err(BrokerError::BadRequest("a request cannot mix transactional and other messages".into()));
        }
        // Stored at once, so the committer makes the request's halves durable together. A half
        // stored before another failed is resolved by its check-back, like any undecided one.
        let stored =
            futures_util::future::join_all(messages.into_iter().map(|m| self.txns.send_half(m, producer))).await;
        stored.into_iter().map(|r| r.map(|id| SendOutcome { queue: 0, offset: 0, transaction_id: Some(id) })).collect()
    }

    /// Appends LITE messages, each to its lite topic's queue (created on first use); a run of
    /// messages to one lite topic is one append.
    async fn append_lite(
        &self,
        record: &TopicRecord,
        messages: Vec<NewMessage>,
        producer: &str,
    ) -> Result<Vec<Placement>> {
        let mut placed = Vec::with_capacity(messages.len());
        let mut rest = messages.into_iter().peekable();
        while let Some(first) = rest.next() {
            let lite = first.lite_topic.clone().unwrap_or_default();
            let mut run = vec![first];
            while let Some(m) = rest.next_if(|m| m.lite_topic.as_deref() == Some(lite.as_str())) {
                run.push(m);
            }
            let queue = self
                .topics
                .lite_queue_or_create(record, &lite, now_ms(), |q| self.log.open_queue(&record.name, q))
                .await?;
            placed.extend(
                self.log.append(&record.name, Target::Queue(queue), run, producer, now_ms(), Batch::new()).await?,
            );
        }
        Ok(placed)
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
                if let Some(m) = self.log.read_stored(&t, q, o)? {
                    out.push(m);
                }
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// When a stored message was recalled, if it was.
    pub fn recalled_at(&self, m: &StoredMessage) -> Option<Millis> {
        self.log.recalled_at(&m.msg.topic, m.queue, m.offset)
    }

    /// Recalls a delay message before its delivery time (see [`MessageLog::recall`]); returns
    /// its id.
    pub async fn recall(&self, topic: &str, handle: &str) -> Result<String> {
        let (queue, offset, id) = crate::log::parse_recall_handle(handle)
            .ok_or_else(|| BrokerError::BadRequest("the recall handle is not one this broker gave".into()))?;
        if self.topics.get(topic).is_none() {
            return Err(BrokerError::TopicNotFound(topic.to_string()));
        }
        self.log.recall(topic, queue, offset, &id, now_ms()).await?;
        tracing::info!(topic, message_id = id, "delay message recalled");
        Ok(id)
    }

    pub fn log(&self) -> &MessageLog {
        &self.log
    }

    // ---- consuming ----

    /// The group, created durably on first use.
    pub async fn ensure_group(&self, name: &str) -> Result<GroupRecord> {
        self.consumers.ensure_group(name).await
    }

    /// Every consumer group, sorted by name.
    pub fn groups(&self) -> Vec<GroupRecord> {
        self.consumers.list()
    }

    /// Delivers up to `req.batch` messages, waiting up to `req.poll` for one to be ready.
    /// An empty answer means nothing was ready in time (or the broker is shutting down).
    pub async fn receive(&self, req: &ReceiveRequest<'_>, shutdown: &CancellationToken) -> Result<Vec<Delivery>> {
        self.consumers.receive(self.source(), req, shutdown).await
    }

    /// Applies a lite consumer's SyncLiteSubscription (see `consume::lite`); returns the
    /// subscriptions other consumers lost to it, to be told to them.
    #[allow(clippy::too_many_arguments)]
    pub async fn sync_lite(
        &self,
        client: &str,
        group: &str,
        topic: &str,
        action: SyncAction,
        lites: &[String],
        version: Option<i64>,
        start: Option<LiteStart>,
    ) -> Result<Vec<Evicted>> {
        self.consumers.sync_lite(self.source(), client, group, topic, action, lites, version, start).await
    }

    /// Forgets what a terminated client subscribed to.
    pub fn forget_client(&self, client: &str) {
        self.consumers.forget_client(client);
    }

    /// What each lite consumer of a group subscribes to, with the group's backlog in each lite
    /// topic.
    pub fn lite_subscriptions(&self, group: &str) -> Vec<(SubscriptionView, Vec<u64>)> {
        let views = self.consumers.lite_subscriptions(group);
        views
            .into_iter()
            .map(|v| {
                let backlog = v
                    .lite_topics
                    .iter()
                    .map(|lite| {
                        let Some(q) = self.topics.lite_queue(&v.topic, lite) else { return 0 };
                        let Some(o) = self.log.offsets(&v.topic, q) else { return 0 };
                        let cursor = self.consumers.cursor(group, &v.topic, q).unwrap_or(o.min);
                        o.durable.saturating_sub(cursor.max(o.min))
                    })
                    .collect();
                (v, backlog)
            })
            .collect()
    }

    /// Acknowledges deliveries; one result per handle, in order.
    pub async fn ack(&self, group: &str, topic: &str, handles: &[String]) -> Result<Vec<Result<()>>> {
        self.consumers.ack(group, topic, handles).await
    }

    /// Makes a delivery visible again after `invisible` from now; returns its new handle.
    pub async fn change_invisible(
        &self,
        group: &str,
        topic: &str,
        receipt: &str,
        invisible: std::time::Duration,
    ) -> Result<String> {
        self.consumers.change_invisible(group, topic, receipt, invisible).await
    }

    /// Moves a delivered message to the group's dead-letter topic now (consumer's decision).
    pub async fn forward_to_dead_letter(&self, group: &str, topic: &str, receipt: &str) -> Result<()> {
        self.consumers.forward_to_dead_letter(self.source(), group, topic, receipt).await
    }

    /// The group's backlog, in-flight and dead-letter counts per topic.
    pub fn group_stats(&self, name: &str) -> Option<GroupStats> {
        self.consumers.group_stats(self.source(), name)
    }

    /// The group's in-flight messages, delivered longest ago first, at most `limit`.
    pub fn inflight_messages(&self, group: &str, limit: usize) -> Vec<InflightView> {
        self.consumers.inflight_messages(group, limit)
    }

    /// Where a stored message stands for every group consuming its topic.
    pub fn message_states(&self, m: &StoredMessage) -> Vec<(String, MessageState)> {
        self.consumers.message_states(self.source(), &m.msg.topic, m.queue, m.offset)
    }

    /// How many dead letters a resend with these arguments would resend.
    pub fn count_resendable(&self, group: &str, ids: &[String], all: bool) -> Result<usize> {
        self.consumers.count_resendable(self.source(), group, ids, all)
    }

    /// Messages in the group's dead-letter topic, oldest first, at most `limit`.
    pub fn dead_letters(&self, group: &str, limit: usize) -> Result<Vec<DeadLetter>> {
        self.consumers.dead_letters(self.source(), group, limit)
    }

    /// Makes dead letters of `group` deliverable to it again (see
    /// [`Consumers::resend_dead_letters`]). Returns how many were resent.
    pub async fn resend_dead_letters(&self, group: &str, ids: &[String], all: bool) -> Result<usize> {
        self.disk.check()?;
        self.consumers.resend_dead_letters(self.source(), group, ids, all).await
    }

    /// Reads one queue from an offset (pull consumers).
    pub async fn pull(&self, req: &PullRequest, shutdown: &CancellationToken) -> Result<Pulled> {
        self.consumers.pull(self.source(), req, shutdown).await
    }

    /// Commits a pull group's offset in one queue.
    pub async fn update_offset(&self, group: &str, topic: &str, queue: u32, offset: u64) -> Result<()> {
        self.consumers.update_offset(self.source(), group, topic, queue, offset).await
    }

    /// The offset a pull group last committed in one queue.
    pub fn get_offset(&self, group: &str, topic: &str, queue: u32) -> Result<u64> {
        self.consumers.get_offset(self.source(), group, topic, queue)
    }

    /// The beginning or end of a queue, or its first message at or after a time.
    pub fn query_offset(&self, topic: &str, queue: u32, at: OffsetQuery) -> Result<u64> {
        crate::consume::pull::query_offset(self.source(), topic, queue, at)
    }

    /// A pull group's committed offsets: `(topic, queue, offset)`.
    pub fn pull_offsets(&self, group: &str) -> Vec<(String, u32, u64)> {
        self.consumers.pull_offsets(group)
    }

    // ---- transactions ----

    /// Ends (or answers) a transaction. COMMIT appends the message to its topic in the same
    /// durable write as the new state; repeats are accepted; a contrary decision after the
    /// outcome is fixed is refused with `PreconditionFailed` and changes nothing.
    pub async fn end_transaction(
        &self,
        topic: &str,
        message_id: &str,
        txn_id: &str,
        resolution: Resolution,
        by: Actor,
        reason: Option<String>,
    ) -> Result<Txn> {
        self.end_transaction_if(topic, message_id, txn_id, resolution, by, reason, |_| Ok(())).await
    }

    /// [`Broker::end_transaction`] when `may_end(the transaction's own topic)` allows it.
    #[allow(clippy::too_many_arguments)]
    pub async fn end_transaction_if(
        &self,
        topic: &str,
        message_id: &str,
        txn_id: &str,
        resolution: Resolution,
        by: Actor,
        reason: Option<String>,
        may_end: impl FnOnce(&str) -> Result<()>,
    ) -> Result<Txn> {
        let publish = |half: StoredMessage, txn: String, writes: Batch, after, now: Millis| async move {
            let record = self.topic_or_create(&half.msg.topic).await?;
            let topic = half.msg.topic.clone();
            let target = Target::Spread(record.queue_count);
            self.log.append_committed(&topic, target, half, &txn, now, writes, after).await?;
            Ok(())
        };
        self.txns.end(topic, message_id, txn_id, resolution, by, reason, may_end, publish).await
    }

    /// The transaction record, if it exists (pending, or resolved within the retention).
    pub fn transaction(&self, id: &str) -> Result<Option<Txn>> {
        self.txns.transaction(id)
    }

    /// The half message of a transaction.
    /// The transaction that sent a transactional message, while its record is kept.
    pub fn transaction_of_message(&self, topic: &str, message_id: &str) -> Result<Option<String>> {
        self.txns.transaction_of_message(topic, message_id)
    }

    pub fn half_message(&self, id: &str) -> Result<Option<StoredMessage>> {
        self.txns.half_message(id)
    }

    /// Transactions whose check is due at `now`: `(due time, id)`, earliest first.
    pub fn due_transactions(&self, now: Millis, limit: usize) -> Result<Vec<(Millis, String)>> {
        self.txns.due_transactions(now, limit)
    }

    /// Runs one due check of `id` (see [`Transactions::check_transaction`]).
    pub async fn check_transaction(
        &self,
        id: &str,
        due: Millis,
        deliver: impl FnOnce(&Txn, &StoredMessage) -> Option<CheckTarget>,
    ) -> Result<CheckOutcome> {
        self.txns.check_transaction(id, due, deliver).await
    }

    /// Operator action: resume checks of a parked transaction.
    pub async fn resume_transaction(&self, id: &str, reason: Option<String>) -> Result<Txn> {
        self.txns.resume_transaction(id, reason).await
    }

    /// Transactions matching `filter`, oldest first.
    pub fn list_transactions(&self, filter: &TxnFilter) -> Result<Vec<Txn>> {
        self.txns.list_transactions(filter)
    }

    /// Pending and parked counts and the oldest pending transaction's creation time.
    pub fn transaction_counts(&self) -> Result<TxnCounts> {
        self.txns.transaction_counts()
    }

    /// Deletes resolved transactions past the transaction retention. Returns how many.
    pub async fn purge_transactions(&self) -> Result<usize> {
        self.txns.purge_transactions().await
    }

    // ---- users ----

    /// Users, their authentication and their policies.
    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    /// Creates the first super user (`--auth-init-user`, secret from `secret`) on a store that
    /// has no user yet; does nothing when users exist. Never logs the secret.
    pub async fn init_user(&self, secret: Option<&str>) -> Result<()> {
        let Some(name) = self.config.auth_init_user.as_deref() else { return Ok(()) };
        if !self.auth.is_empty() {
            return Ok(());
        }
        let secret = secret.ok_or_else(|| {
            BrokerError::Config(
                "--auth-init-user needs the secret in the TXMQ_AUTH_INIT_SECRET environment variable".into(),
            )
        })?;
        match self.auth.create_user(name, secret, UserKind::Super, now_ms()).await {
            Ok(()) => tracing::info!(user = name, "created the first super user"),
            // Another node of the cluster, starting at the same moment, made it first.
            Err(_) if self.auth.user_exists(name).await? => {
                tracing::info!(user = name, "the first super user was created by another node")
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    // ---- the whole ----

    /// Replicates this node's store from now on (a cluster with `--replicas` above 1): every
    /// write is acknowledged only once the in-sync replicas hold it.
    pub fn replicate(
        &self,
        settings: crate::replication::Settings,
        m: crate::cluster::Membership,
    ) -> Result<Arc<crate::replication::leader::Leader>> {
        let leader = crate::replication::leader::Leader::new(settings, self.store.clone(), m)?;
        self.committer.replicate_with(leader.clone());
        let _ = self.leader.set(leader.clone());
        Ok(leader)
    }

    /// Marks this broker as serving a shard from a copy on node `host` (before it joins).
    pub fn set_acting_on(&self, host: &str) {
        let _ = self.acting_on.set(host.to_string());
    }

    /// Keeps a returning node's standby announcement until it has joined.
    pub fn set_standby(&self, done: tokio_util::sync::CancellationToken) {
        let _ = self.standby.set(done);
    }

    pub fn standby(&self) -> Option<&tokio_util::sync::CancellationToken> {
        self.standby.get()
    }

    /// Why the store refuses writes, once a flush failed (until a restart).
    pub fn store_failure(&self) -> Option<String> {
        self.committer.poisoned()
    }

    /// The node serving this shard from its copy, when this is a failover.
    pub fn acting_on(&self) -> Option<&str> {
        self.acting_on.get().map(String::as_str)
    }

    /// This node's store replication, when it replicates.
    pub fn leader(&self) -> Option<&Arc<crate::replication::leader::Leader>> {
        self.leader.get()
    }

    /// What this node's store replication looks like, when it replicates.
    pub fn replication(&self) -> Option<crate::replication::leader::LeaderStatus> {
        self.leader.get().map(|l| l.status())
    }

    /// Binds the data directory to cluster node `id`: stamped on first use, and refused when
    /// it belongs to another node (two nodes must never serve one store's data as their own).
    pub async fn claim_node_id(&self, id: &str) -> Result<()> {
        let key = crate::store::Key::Meta("node-id".into());
        match self.store.get(&key.encode())? {
            Some(found) if found == id.as_bytes() => Ok(()),
            Some(found) => Err(BrokerError::Config(format!(
                "the data directory belongs to node {}, not {id}",
                String::from_utf8_lossy(&found)
            ))),
            None => {
                let mut batch = Batch::new();
                batch.put(&key, id.as_bytes().to_vec());
                self.committer.commit(batch).await?;
                Ok(())
            }
        }
    }

    /// The data directory's free space, as last sampled.
    pub fn disk(&self) -> &Arc<DiskSpace> {
        &self.disk
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
            disk_free_bytes: self.disk.free(),
            messages_refused: self.disk.refusal().is_some(),
            ..Gauges::default()
        };
        let counts = self.transaction_counts().unwrap_or_default();
        g.pending_transactions = counts.pending;
        g.parked_transactions = counts.parked;
        g.oldest_pending_age_seconds = counts.oldest_pending.map_or(0.0, |t| (now - t).max(0) as f64 / 1000.0);
        for group in self.consumers.list() {
            if let Some(stats) = self.group_stats(&group.name) {
                for t in stats.topics {
                    let oldest = t.queues.iter().filter_map(|q| q.oldest_stored_at).min();
                    g.groups.push(GroupGauge {
                        group: group.name.clone(),
                        topic: t.topic,
                        ready: t.backlog,
                        in_flight: t.in_flight,
                        lag_ms: oldest.map_or(0, |at| (now - at).max(0)),
                    });
                }
            }
        }
        g
    }

    /// Deletes messages older than the retention period, in bounded steps. Returns how many
    /// were deleted.
    pub async fn enforce_retention(&self) -> Result<usize> {
        let cutoff = now_ms() - self.config.retention.as_millis() as Millis;
        let mut deleted = 0;
        for t in self.topics.list() {
            for q in self.topics.queues(&t) {
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
        self.audit.trim().await?;
        Ok(deleted)
    }

    /// The operator actions' log.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
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
