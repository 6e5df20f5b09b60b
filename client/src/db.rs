//! Database integration on SQLite (sqlx): the transaction log that lets a checker answer from
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
//!   (If the local transaction already holds SQLite's write lock, the check waits for it and
//!   then sees its outcome.)
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

use crate::error::Result;
use crate::message::Message;
use crate::producer::Producer;
use crate::transaction::{CheckRequest, Resolution, TransactionChecker, TransactionProducer, TxnContext};
use sqlx::sqlite::SqlitePool;
use sqlx::Row;
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A transaction on the application's SQLite database.
pub type DbTx = sqlx::Transaction<'static, sqlx::Sqlite>;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS txmq_txn_log (
        transaction_id TEXT PRIMARY KEY,
        state TEXT NOT NULL CHECK (state IN ('committed', 'rolled_back')),
        recorded_at INTEGER NOT NULL)",
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

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Creates the SDK's tables if they do not exist (idempotent).
pub async fn migrate(pool: &SqlitePool) -> Result<()> {
    for stmt in SCHEMA {
        sqlx::query(stmt).execute(pool).await?;
    }
    Ok(())
}

/// The transaction log: records local outcomes and answers check-backs from them.
#[derive(Debug, Clone)]
pub struct TxnLog {
    pool: SqlitePool,
}

impl TxnLog {
    /// Uses `pool` (and creates the SDK's tables).
    pub async fn new(pool: SqlitePool) -> Result<Self> {
        migrate(&pool).await?;
        Ok(Self { pool })
    }

    /// The pool it uses.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Records, inside the local transaction, that `transaction_id` committed. Fails if a
    /// check already rolled it back (the barrier): then the local transaction must not commit.
    pub async fn record_commit(tx: &mut DbTx, transaction_id: &str) -> std::result::Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO txmq_txn_log (transaction_id, state, recorded_at) VALUES (?, 'committed', ?)")
            .bind(transaction_id)
            .bind(now_ms())
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// The recorded outcome, placing a rollback marker first if there is none.
    pub async fn resolve(&self, transaction_id: &str) -> Result<Resolution> {
        sqlx::query(
            "INSERT INTO txmq_txn_log (transaction_id, state, recorded_at) VALUES (?, 'rolled_back', ?)
             ON CONFLICT (transaction_id) DO NOTHING",
        )
        .bind(transaction_id)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        let row = sqlx::query("SELECT state FROM txmq_txn_log WHERE transaction_id = ?")
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
        match self.resolve(&request.transaction_id).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(transaction_id = request.transaction_id, error = %e, "check could not read the transaction log");
                Resolution::Unknown
            }
        }
    }
}

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

/// Runs `local` in a database transaction and publishes `message` with it, safely:
/// - broker reachable: the half message is stored first, the transaction id is recorded in
///   the transaction log inside the same database transaction, and the message is committed
///   after the database commit (rolled back if `local` fails);
/// - broker unreachable: the message goes to the outbox inside the same database transaction.
///
/// `local` receives the open transaction (and the half message's ids, `None` in the outbox
/// case) and hands the transaction back with its result. The outer `Result` is the SDK's
/// (nothing ran); the inner one is the local outcome, including a barrier refusal (a
/// check-back rolled the message back before the database commit).
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
    send_in_db_transaction_then(producer, log, message, local, Finish::End).await
}

/// What [`send_in_db_transaction_then`] does after the database commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// Commit the message right away (normal operation).
    End,
    /// Do not tell the broker: behave as if the process crashed right after the database
    /// commit, leaving the message to the check-back. For failure drills and tests.
    LeaveToCheckBack,
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
    let pending = match producer.begin(message.clone()).await {
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
    let committed = async {
        TxnLog::record_commit(&mut tx, &transaction_id).await?;
        tx.commit().await
    }
    .await;
    if let Err(e) = committed {
        // The barrier (or any database failure): the business change did not commit, so the
        // message must not either.
        let _ = pending.rollback().await;
        return Ok(Err(E::from(e)));
    }
    if finish == Finish::LeaveToCheckBack {
        drop(pending);
    } else if let Err(e) = pending.commit().await {
        tracing::warn!(transaction_id, error = %e, "commit did not reach the broker; the check-back will commit");
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
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
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
    pub async fn pending(pool: &SqlitePool) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM txmq_outbox WHERE sent_at IS NULL").fetch_one(pool).await?;
        Ok(row.try_get("n")?)
    }
}

/// Sends outbox rows when the broker is reachable: bounded batches, backoff per row.
pub struct OutboxRelay {
    pool: SqlitePool,
    producer: Producer,
    batch: i64,
    idle: Duration,
}

impl OutboxRelay {
    /// A relay over `pool` sending with `producer` (batches of 64, polling every 200 ms).
    pub fn new(pool: SqlitePool, producer: Producer) -> Self {
        Self { pool, producer, batch: 64, idle: Duration::from_millis(200) }
    }

    /// One round: sends what is due; returns how many were sent.
    pub async fn run_once(&self) -> Result<usize> {
        let rows = sqlx::query(
            "SELECT id, message_id, topic, tag, keys, properties, body, attempts FROM txmq_outbox
             WHERE sent_at IS NULL AND next_attempt_at <= ? ORDER BY id LIMIT ?",
        )
        .bind(now_ms())
        .bind(self.batch)
        .fetch_all(&self.pool)
        .await?;
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
                    sqlx::query("UPDATE txmq_outbox SET sent_at = ?, attempts = attempts + 1 WHERE id = ?")
                        .bind(now_ms())
                        .bind(id)
                        .execute(&self.pool)
                        .await?;
                    sent += 1;
                }
                Err(e) => {
                    let attempts: i64 = row.try_get("attempts")?;
                    let delay = 200i64.saturating_mul(1 << attempts.clamp(0, 8)).min(30_000);
                    sqlx::query("UPDATE txmq_outbox SET attempts = attempts + 1, next_attempt_at = ?, last_error = ? WHERE id = ?")
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
            if sent > 0 {
                let left = Outbox::pending(&self.pool).await.unwrap_or(-1);
                tracing::info!(sent, left, "outbox relay sent messages");
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
    pool: &SqlitePool,
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
        "INSERT INTO txmq_consumed (consumer_group, message_key, consumed_at) VALUES (?, ?, ?)
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
