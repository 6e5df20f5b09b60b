//! Database integration (sqlx; SQLite by default, PostgreSQL with the `postgres` feature): the transaction log that lets a checker answer from
//! the application's own database, the outbox used when the broker is unreachable, and
//! idempotent consumption.
//!
//! # The transaction log and its barrier
//! Inside the local transaction the SDK inserts `(transaction_id, 'committed')` into
//! `txmq_txn_log`. A check-back inserts `(transaction_id, 'rolled_back')` **if no row exists**,
//! then reads the row: `committed` → COMMIT, `rolled_back` → ROLLBACK. Both inserts target
//! the same primary key, so the database orders them:
//! - the local transaction committed first → the check finds `committed`;
//! - the check came first (the local transaction is slow or stuck) → its `rolled_back` marker
//!   makes the local transaction's insert fail, so the business change rolls back too, and the
//!   message is discarded. Without this barrier a slow local transaction could commit after
//!   the check had already rolled the message back: the change would happen and the event
//!   would be lost.
//!   (If the local transaction already holds the row or SQLite's write lock, the check waits
//!   for it and then sees its outcome.)
//!
//! # Whose log answers
//! A check-back goes to the producer that sent the half message or, when it is gone, to another
//! producer of the topic, which may keep its log in another database. Each log has an id
//! (stored once in `txmq_meta`) and [`send_in_db_transaction`] puts it on the half message
//! ([`LOG_PROPERTY`]): a log asked about a message recorded in another log answers UNKNOWN (the
//! broker asks again later), never ROLLBACK for a transaction it cannot see.
//!
//! # The outbox
//! When the broker cannot be reached, the message is written to `txmq_outbox` inside the same
//! local transaction (so it exists exactly when the business change does) and an
//! [`OutboxRelay`] sends it once the broker is back, with the same message id and keys, in
//! bounded batches with backoff.
//!
//! # Idempotent consumption
//! [`process_once`] records `(group, message key)` in the consumer's own transaction, so the
//! business effect and the dedup record commit together and a redelivered message is skipped.

//! # Backends
//! `sqlite` (feature `sqlite`, default; its items are also re-exported here) and
//! `postgres` (feature `postgres`) offer the same API over their own pool and transaction
//! types; the code is written once (the `backend!` macro) with `$1`-style placeholders, which
//! both databases accept. The outbox relay claims rows with a lease in one statement (with
//! `FOR UPDATE SKIP LOCKED` on PostgreSQL), so several relays can run side by side.

use std::time::{SystemTime, UNIX_EPOCH};

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// True when `e` is the barrier refusing a local transaction: a check-back found no outcome
/// and recorded a rollback first, so this transaction must not commit (its message was rolled
/// back). Nothing happened; the application may run the whole operation again.
pub fn is_barrier_refusal(e: &sqlx::Error) -> bool {
    e.as_database_error().is_some_and(|d| d.is_unique_violation() && d.message().contains("txmq_txn_log"))
}

/// The user property on a half message naming the transaction log that records its outcome.
pub const LOG_PROPERTY: &str = "txmq-txn-log";

/// A new log id: 128 random bits in hex.
fn new_log_id() -> String {
    let mut bytes = [0u8; 16];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
        // No system randomness: the clock and the process make an id unique enough here.
        bytes[..8].copy_from_slice(&now_ms().to_le_bytes());
        bytes[8..12].copy_from_slice(&std::process::id().to_le_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How long a relay's claim on an outbox row lasts before another relay may take it.
const CLAIM_LEASE_MS: i64 = 30_000;

/// How a message left a database transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// As a transactional message, committed (or left to the check-back if the commit did not
    /// reach the broker).
    Transactional {
        /// The broker's transaction id.
        transaction_id: String,
    },
    /// Into the outbox, because the broker was unreachable; the relay sends it later.
    Outbox {
        /// The message id it will be sent with.
        message_id: String,
    },
}

/// What [`send_in_db_transaction_then`] does after the database commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// Commit the message right away without waiting for the broker's answer
    /// ([`PendingTransaction::commit_oneway`](crate::PendingTransaction::commit_oneway)): the
    /// check-back, answered from the transaction log, commits it if the decision is lost. What
    /// [`send_in_db_transaction`] does.
    EndOneway,
    /// Commit the message right away and wait for the broker's answer (a failure is logged,
    /// and the check-back commits it): when the call returns, the message is visible unless
    /// the broker could not be reached.
    End,
    /// Do not tell the broker: behave as if the process crashed right after the database
    /// commit, leaving the message to the check-back. For failure drills and tests.
    LeaveToCheckBack,
}

/// The SDK's items for one sqlx database: `backend!(Database type, schema, claim lock clause)`.
macro_rules! backend {
    ($db:ty, $schema:expr, $claim_lock:expr) => {
        use super::{new_log_id, now_ms, Finish, Published, CLAIM_LEASE_MS, LOG_PROPERTY};
        use crate::error::Result;
        use crate::message::Message;
        use crate::producer::Producer;
        use crate::transaction::{CheckRequest, Resolution, TransactionChecker, TransactionProducer, TxnContext};
        use sqlx::Row;
        use std::future::Future;
        use std::time::Duration;


/// A transaction on the application's database.
pub type DbTx = sqlx::Transaction<'static, $db>;

/// The application's connection pool.
pub type DbPool = sqlx::Pool<$db>;

/// Creates the SDK's tables if they do not exist (idempotent).
pub async fn migrate(pool: &DbPool) -> Result<()> {
    for stmt in $schema {
        sqlx::query(stmt).execute(pool).await?;
    }
    Ok(())
}

/// The transaction log: records local outcomes and answers check-backs from them.
#[derive(Debug, Clone)]
pub struct TxnLog {
    pool: DbPool,
    /// This log's id ([`LOG_PROPERTY`]): the same for every process on this database.
    id: std::sync::Arc<str>,
}

impl TxnLog {
    /// Uses `pool` (and creates the SDK's tables, and the log's id the first time).
    pub async fn new(pool: DbPool) -> Result<Self> {
        migrate(&pool).await?;
        sqlx::query("INSERT INTO txmq_meta (name, value) VALUES ('log_id', $1) ON CONFLICT (name) DO NOTHING")
            .bind(new_log_id())
            .execute(&pool)
            .await?;
        let id: String = sqlx::query("SELECT value FROM txmq_meta WHERE name = 'log_id'")
            .fetch_one(&pool)
            .await?
            .try_get("value")?;
        Ok(Self { pool, id: id.into() })
    }

    /// This log's id, as half messages recorded here carry it ([`LOG_PROPERTY`]).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The pool it uses.
    pub fn pool(&self) -> &DbPool {
        &self.pool
    }

    /// Records, inside the local transaction, that `transaction_id` committed. Fails if a
    /// check already rolled it back (the barrier): then the local transaction must not commit.
    pub async fn record_commit(tx: &mut DbTx, transaction_id: &str) -> std::result::Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO txmq_txn_log (transaction_id, state, recorded_at) VALUES ($1, 'committed', $2)")
            .bind(transaction_id)
            .bind(now_ms())
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// The recorded outcome, placing a rollback marker first if there is none.
    pub async fn resolve(&self, transaction_id: &str) -> Result<Resolution> {
        sqlx::query(
            "INSERT INTO txmq_txn_log (transaction_id, state, recorded_at) VALUES ($1, 'rolled_back', $2)
             ON CONFLICT (transaction_id) DO NOTHING",
        )
        .bind(transaction_id)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        let row = sqlx::query("SELECT state FROM txmq_txn_log WHERE transaction_id = $1")
            .bind(transaction_id)
            .fetch_one(&self.pool)
            .await?;
        let state: String = row.try_get("state")?;
        Ok(if state == "committed" { Resolution::Commit } else { Resolution::Rollback })
    }
}

#[async_trait::async_trait]
impl TransactionChecker for TxnLog {
    async fn check(&self, request: &CheckRequest) -> Resolution {
        if let Some(other) = request.properties.get(LOG_PROPERTY).filter(|l| **l != *self.id) {
            tracing::debug!(
                transaction_id = request.transaction_id,
                log = other,
                "check of a transaction recorded in another database's log: unknown here"
            );
            return Resolution::Unknown;
        }
        match self.resolve(&request.transaction_id).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(transaction_id = request.transaction_id, error = %e, "check could not read the transaction log");
                Resolution::Unknown
            }
        }
    }
}

/// Runs `local` in a database transaction and publishes `message` with it, safely:
/// - broker reachable: the half message is stored first, the transaction id is recorded in
///   the transaction log inside the same database transaction, and the message is committed
///   after the database commit (rolled back if `local` fails), one way: the commit is handed
///   to the producer and this returns without waiting for the broker's answer
///   ([`Finish::EndOneway`]; the check-back covers a lost decision);
/// - broker unreachable: the message goes to the outbox inside the same database transaction.
///
/// `local` receives the open transaction (and the half message's ids, `None` in the outbox
/// case) and hands the transaction back with its result. The outer `Result` is the SDK's
/// (nothing ran); the inner one is the local outcome, including a barrier refusal (a
/// check-back rolled the message back before the database commit). When the database's COMMIT
/// itself fails, its outcome is unknown (it may have committed before the connection was
/// lost): no decision is sent, and the check-back commits or rolls back from the log.
pub async fn send_in_db_transaction<F, Fut, T, E>(
    producer: &TransactionProducer,
    log: &TxnLog,
    message: Message,
    local: F,
) -> Result<std::result::Result<(T, Published), E>>
where
    F: FnOnce(DbTx, Option<TxnContext>) -> Fut,
    Fut: Future<Output = std::result::Result<(DbTx, T), E>>,
    E: From<sqlx::Error>,
{
    send_in_db_transaction_then(producer, log, message, local, Finish::EndOneway).await
}

/// [`send_in_db_transaction`] with a choice of what happens after the database commit.
pub async fn send_in_db_transaction_then<F, Fut, T, E>(
    producer: &TransactionProducer,
    log: &TxnLog,
    message: Message,
    local: F,
    finish: Finish,
) -> Result<std::result::Result<(T, Published), E>>
where
    F: FnOnce(DbTx, Option<TxnContext>) -> Fut,
    Fut: Future<Output = std::result::Result<(DbTx, T), E>>,
    E: From<sqlx::Error>,
{
    let mut message = message;
    let message_id = message.ensure_id();
    // The half message names this log, so a producer on another database never answers for it.
    let half = message.clone().with_property(LOG_PROPERTY, log.id());
    let pending = match producer.begin(half).await {
        Ok(p) => Some(p),
        Err(e) if e.is_unreachable() => {
            tracing::warn!(message_id, error = %e, "broker unreachable; the message goes to the outbox");
            None
        }
        Err(e) => return Err(e),
    };
    let tx = log.pool.begin().await?;
    let context = pending.as_ref().map(|p| p.context().clone());
    let (mut tx, value) = match local(tx, context).await {
        Ok(v) => v,
        Err(e) => {
            if let Some(p) = pending {
                if let Err(end) = p.rollback().await {
                    tracing::warn!(error = %end, "rollback did not reach the broker; the check-back will roll back");
                }
            }
            return Ok(Err(e));
        }
    };
    let Some(pending) = pending else {
        let stored = async {
            Outbox::insert(&mut tx, &message, &message_id).await?;
            tx.commit().await
        }
        .await;
        return Ok(stored.map(|()| (value, Published::Outbox { message_id })).map_err(E::from));
    };
    let transaction_id = pending.context().transaction_id.clone();
    if let Err(e) = TxnLog::record_commit(&mut tx, &transaction_id).await {
        // The barrier (or any database failure before COMMIT): the business change is not
        // committed (dropping `tx` rolls it back), so the message must not be either.
        drop(tx);
        let _ = pending.rollback().await;
        return Ok(Err(E::from(e)));
    }
    if let Err(e) = tx.commit().await {
        // A failed COMMIT may still have committed (the connection lost after sending it), so
        // no decision is sent: the check-back asks the log, which knows.
        tracing::warn!(transaction_id, error = %e, "the database commit failed; the check-back decides from the log");
        drop(pending);
        return Ok(Err(E::from(e)));
    }
    match finish {
        Finish::LeaveToCheckBack => drop(pending),
        Finish::EndOneway => pending.commit_oneway().await,
        Finish::End => {
            if let Err(e) = pending.commit().await {
                tracing::warn!(transaction_id, error = %e, "commit did not reach the broker; the check-back will commit");
            }
        }
    }
    Ok(Ok((value, Published::Transactional { transaction_id })))
}

/// The outbox table.
#[derive(Debug)]
pub struct Outbox;

impl Outbox {
    /// Adds `message` (with id `message_id`) to the outbox inside `tx`.
    pub async fn insert(tx: &mut DbTx, message: &Message, message_id: &str) -> std::result::Result<(), sqlx::Error> {
        let props: Vec<String> = message.properties.iter().map(|(k, v)| format!("{k}\u{1f}{v}")).collect();
        sqlx::query(
            "INSERT INTO txmq_outbox (message_id, topic, tag, keys, properties, body, created_at, next_attempt_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(message_id)
        .bind(&message.topic)
        .bind(message.tag.as_deref())
        .bind(message.keys.join("\u{1e}"))
        .bind(props.join("\u{1e}"))
        .bind(&message.body)
        .bind(now_ms())
        .bind(now_ms())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Messages waiting to be sent.
    pub async fn pending(pool: &DbPool) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM txmq_outbox WHERE sent_at IS NULL").fetch_one(pool).await?;
        Ok(row.try_get("n")?)
    }
}

/// Sends outbox rows when the broker is reachable: bounded batches, backoff per row.
pub struct OutboxRelay {
    pool: DbPool,
    producer: Producer,
    batch: i64,
    idle: Duration,
    backlog: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl OutboxRelay {
    /// A relay over `pool` sending with `producer` (batches of 64, polling every 200 ms).
    pub fn new(pool: DbPool, producer: Producer) -> Self {
        Self { pool, producer, batch: 64, idle: Duration::from_millis(200), backlog: Default::default() }
    }

    /// A gauge of unsent outbox rows, updated after every round of [`OutboxRelay::run`]:
    /// export it to your metrics system (it is also logged while non-zero).
    pub fn backlog_gauge(&self) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
        self.backlog.clone()
    }

    /// One round: sends what is due; returns how many were sent.
    pub async fn run_once(&self) -> Result<usize> {
        // Claim due rows with a lease in one statement: another relay skips them until the
        // lease ends (and on PostgreSQL does not even wait for their row locks).
        let claim = format!(
            "UPDATE txmq_outbox SET next_attempt_at = $1 WHERE id IN (
                 SELECT id FROM txmq_outbox WHERE sent_at IS NULL AND next_attempt_at <= $2
                 ORDER BY id LIMIT $3{}
             ) RETURNING id, message_id, topic, tag, keys, properties, body, attempts",
            $claim_lock
        );
        let now = now_ms();
        let mut rows = sqlx::query(&claim).bind(now + CLAIM_LEASE_MS).bind(now).bind(self.batch).fetch_all(&self.pool).await?;
        rows.sort_by_key(|r| r.try_get::<i64, _>("id").unwrap_or(0));
        let mut sent = 0;
        for row in rows {
            let id: i64 = row.try_get("id")?;
            let message_id: String = row.try_get("message_id")?;
            let mut m = Message::new(row.try_get::<String, _>("topic")?, row.try_get::<Vec<u8>, _>("body")?)
                .with_id(&message_id);
            if let Some(tag) = row.try_get::<Option<String>, _>("tag")? {
                m = m.with_tag(tag);
            }
            for k in row.try_get::<String, _>("keys")?.split('\u{1e}').filter(|k| !k.is_empty()) {
                m = m.with_key(k);
            }
            for p in row.try_get::<String, _>("properties")?.split('\u{1e}').filter(|p| !p.is_empty()) {
                if let Some((k, v)) = p.split_once('\u{1f}') {
                    m = m.with_property(k, v);
                }
            }
            match self.producer.send(m).await {
                Ok(_) => {
                    sqlx::query("UPDATE txmq_outbox SET sent_at = $1, attempts = attempts + 1 WHERE id = $2")
                        .bind(now_ms())
                        .bind(id)
                        .execute(&self.pool)
                        .await?;
                    sent += 1;
                }
                Err(e) => {
                    let attempts: i64 = row.try_get("attempts")?;
                    let delay = 200i64.saturating_mul(1 << attempts.clamp(0, 8)).min(30_000);
                    sqlx::query("UPDATE txmq_outbox SET attempts = attempts + 1, next_attempt_at = $1, last_error = $2 WHERE id = $3")
                        .bind(now_ms() + delay)
                        .bind(e.to_string())
                        .bind(id)
                        .execute(&self.pool)
                        .await?;
                    if e.is_unreachable() {
                        break; // the broker is down: no point trying the rest now
                    }
                }
            }
        }
        Ok(sent)
    }

    /// Runs rounds until `stop` completes, logging the backlog while there is one.
    pub async fn run(self, stop: impl Future<Output = ()>) -> Result<()> {
        tokio::pin!(stop);
        loop {
            let sent = match self.run_once().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "outbox relay round failed");
                    0
                }
            };
            let left = Outbox::pending(&self.pool).await.unwrap_or(0).max(0) as u64;
            let before = self.backlog.swap(left, std::sync::atomic::Ordering::Relaxed);
            if sent > 0 || left != before {
                tracing::info!(sent, backlog = left, "outbox relay round");
            }
            if sent == 0 {
                tokio::select! {
                    _ = &mut stop => return Ok(()),
                    _ = tokio::time::sleep(self.idle) => {}
                }
            }
        }
    }
}

/// Runs `effect` at most once per `(group, key)`: the dedup record and the effect commit in one
/// database transaction. Returns `Ok(None)` for a duplicate (nothing ran).
pub async fn process_once<F, Fut, T, E>(
    pool: &DbPool,
    group: &str,
    key: &str,
    effect: F,
) -> std::result::Result<Option<T>, E>
where
    F: FnOnce(DbTx) -> Fut,
    Fut: Future<Output = std::result::Result<(DbTx, T), E>>,
    E: From<sqlx::Error>,
{
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO txmq_consumed (consumer_group, message_key, consumed_at) VALUES ($1, $2, $3)
         ON CONFLICT (consumer_group, message_key) DO NOTHING",
    )
    .bind(group)
    .bind(key)
    .bind(now_ms())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        tx.rollback().await?;
        return Ok(None);
    }
    let (tx, value) = effect(tx).await?;
    tx.commit().await?;
    Ok(Some(value))
}
    };
}

/// SQLite: the default backend (its items are re-exported at [`crate::db`]).
#[cfg(feature = "sqlite")]
pub mod sqlite {
    const SCHEMA: &[&str] = &[
        "CREATE TABLE IF NOT EXISTS txmq_txn_log (
            transaction_id TEXT PRIMARY KEY,
            state TEXT NOT NULL CHECK (state IN ('committed', 'rolled_back')),
            recorded_at INTEGER NOT NULL)",
        "CREATE TABLE IF NOT EXISTS txmq_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS txmq_outbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            message_id TEXT NOT NULL UNIQUE,
            topic TEXT NOT NULL,
            tag TEXT,
            keys TEXT NOT NULL,
            properties TEXT NOT NULL,
            body BLOB NOT NULL,
            created_at INTEGER NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at INTEGER NOT NULL,
            sent_at INTEGER,
            last_error TEXT)",
        "CREATE INDEX IF NOT EXISTS txmq_outbox_pending ON txmq_outbox (sent_at, next_attempt_at)",
        "CREATE TABLE IF NOT EXISTS txmq_consumed (
            consumer_group TEXT NOT NULL,
            message_key TEXT NOT NULL,
            consumed_at INTEGER NOT NULL,
            PRIMARY KEY (consumer_group, message_key))",
    ];

    backend!(sqlx::Sqlite, SCHEMA, "");
}

/// PostgreSQL (feature `postgres`): the same API; the relay claims rows with
/// `FOR UPDATE SKIP LOCKED`.
#[cfg(feature = "postgres")]
pub mod postgres {
    const SCHEMA: &[&str] = &[
        "CREATE TABLE IF NOT EXISTS txmq_txn_log (
            transaction_id TEXT PRIMARY KEY,
            state TEXT NOT NULL CHECK (state IN ('committed', 'rolled_back')),
            recorded_at BIGINT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS txmq_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS txmq_outbox (
            id BIGSERIAL PRIMARY KEY,
            message_id TEXT NOT NULL UNIQUE,
            topic TEXT NOT NULL,
            tag TEXT,
            keys TEXT NOT NULL,
            properties TEXT NOT NULL,
            body BYTEA NOT NULL,
            created_at BIGINT NOT NULL,
            attempts BIGINT NOT NULL DEFAULT 0,
            next_attempt_at BIGINT NOT NULL,
            sent_at BIGINT,
            last_error TEXT)",
        "CREATE INDEX IF NOT EXISTS txmq_outbox_pending ON txmq_outbox (sent_at, next_attempt_at)",
        "CREATE TABLE IF NOT EXISTS txmq_consumed (
            consumer_group TEXT NOT NULL,
            message_key TEXT NOT NULL,
            consumed_at BIGINT NOT NULL,
            PRIMARY KEY (consumer_group, message_key))",
    ];

    backend!(sqlx::Postgres, SCHEMA, " FOR UPDATE SKIP LOCKED");
}

#[cfg(feature = "sqlite")]
pub use sqlite::*;
