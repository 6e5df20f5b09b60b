//! The order service and the inventory service of the example.
//!
//! - Duplicate orders: every submit carries the token obtained when the order page opened;
//!   a unique key on it makes a second submit return the first order.
//! - Pay vs cancel: both are conditional updates from `paying`; exactly one wins. A payment
//!   that loses to the cancel is refunded. Payment callbacks are retried by the payment side
//!   with the same callback id and answered from the `payments` table.
//! - Lost events: `OrderCreated`, `OrderPaid` and `OrderCancelled` are published with the
//!   SDK's `send_in_db_transaction`: the event exists exactly when the state change does
//!   (half message + transaction log; outbox when the broker is down).
//! - Inventory consumes the events idempotently: reserve on create, confirm on paid, release
//!   on cancel.

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::Row;
use std::path::Path;
use std::time::Duration;
use txmq_client::db::{self, Finish, TxnLog};
use txmq_client::{Message, ReceivedMessage, TransactionProducer};

/// The events topic.
pub const TOPIC: &str = "order-events";

/// Opens (or creates) a SQLite database in WAL mode.
pub async fn open_db(path: &Path) -> anyhow::Result<SqlitePool> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(30));
    Ok(SqlitePoolOptions::new().max_connections(8).connect_with(options).await?)
}

/// Why a local transaction did not change anything (its event is rolled back with it).
#[derive(Debug)]
pub enum Local {
    Db(sqlx::Error),
    /// The token was used already: this order id.
    Duplicate(String),
    /// The conditional update found the order no longer `paying`.
    LostRace,
    /// This payment callback was handled before (concurrently).
    AlreadyProcessed,
}

impl From<sqlx::Error> for Local {
    fn from(e: sqlx::Error) -> Self {
        Local::Db(e)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayAnswer {
    Paid,
    CancelledRefunded,
}

pub struct OrderService {
    pub pool: SqlitePool,
    log: TxnLog,
    producer: TransactionProducer,
    /// Share of publishes that "crash" after the database commit (check-back drill).
    crash_rate: f64,
}

fn coin(rate: f64, salt: &str) -> bool {
    let h = salt.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    (h % 10_000) as f64 / 10_000.0 < rate
}

impl OrderService {
    pub async fn new(
        pool: SqlitePool,
        producer: TransactionProducer,
        log: TxnLog,
        crash_rate: f64,
    ) -> anyhow::Result<Self> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, request_token TEXT NOT NULL UNIQUE,
             status TEXT NOT NULL, amount INTEGER NOT NULL)",
        )
        .execute(&pool)
        .await?;
        sqlx::query("CREATE TABLE IF NOT EXISTS payments (callback_id TEXT PRIMARY KEY, order_id TEXT NOT NULL, answer TEXT NOT NULL)")
            .execute(&pool)
            .await?;
        sqlx::query("CREATE TABLE IF NOT EXISTS refunds (order_id TEXT PRIMARY KEY, amount INTEGER NOT NULL)")
            .execute(&pool)
            .await?;
        Ok(Self { pool, log, producer, crash_rate })
    }

    async fn publish_once<F, Fut, T>(&self, event: Message, salt: &str, local: &F) -> anyhow::Result<Result<T, Local>>
    where
        F: Fn(db::DbTx) -> Fut,
        Fut: std::future::Future<Output = Result<(db::DbTx, T), Local>>,
    {
        let finish = if coin(self.crash_rate, salt) { Finish::LeaveToCheckBack } else { Finish::EndOneway };
        let r = db::send_in_db_transaction_then(&self.producer, &self.log, event, |tx, _ctx| local(tx), finish).await?;
        Ok(r.map(|(v, _)| v))
    }

    /// [`OrderService::publish_once`] again while a check-back beats a slow local transaction
    /// (the barrier refused it: nothing happened, so the operation is simply retried).
    async fn publish<F, Fut, T>(&self, event: Message, salt: &str, local: F) -> anyhow::Result<Result<T, Local>>
    where
        F: Fn(db::DbTx) -> Fut,
        Fut: std::future::Future<Output = Result<(db::DbTx, T), Local>>,
    {
        for attempt in 1.. {
            match self.publish_once(event.clone(), salt, &local).await? {
                Err(Local::Db(e)) if db::is_barrier_refusal(&e) && attempt < 5 => {
                    tracing::info!(attempt, "a check-back overtook the local transaction; running it again");
                }
                other => return Ok(other),
            }
        }
        unreachable!("the loop returns")
    }

    /// Creates an order for `token`, or returns the order already created with it.
    pub async fn create(&self, token: &str, amount: i64) -> anyhow::Result<(String, bool)> {
        let id = format!("order-{token}");
        let event = Message::new(TOPIC, format!("created:{id}")).with_tag("created").with_key(&id);
        let (t, oid) = (token.to_string(), id.clone());
        let r = self
            .publish(event, &format!("c{token}"), move |mut tx| {
                let (t, oid) = (t.clone(), oid.clone());
                async move {
                    // Write first: in SQLite a transaction that reads before writing can lose its
                    // snapshot to a concurrent writer; the unique key decides duplicates anyway.
                    let inserted = sqlx::query(
                        "INSERT INTO orders (id, request_token, status, amount) VALUES (?, ?, 'paying', ?)",
                    )
                    .bind(&oid)
                    .bind(&t)
                    .bind(amount)
                    .execute(&mut *tx)
                    .await;
                    match inserted {
                        Ok(_) => Ok((tx, ())),
                        // A concurrent submit with the same token won the unique key.
                        Err(e) if e.as_database_error().is_some_and(|d| d.is_unique_violation()) => {
                            Err(Local::Duplicate(oid))
                        }
                        Err(e) => Err(e.into()),
                    }
                }
            })
            .await?;
        match r {
            Ok(()) => Ok((id, true)),
            Err(Local::Duplicate(existing)) => Ok((existing, false)),
            Err(Local::Db(e)) => Err(e.into()),
            Err(e) => anyhow::bail!("create failed: {e:?}"),
        }
    }

    /// A payment callback: `paying → paid` (publishes OrderPaid), or a refund if the order was
    /// cancelled first. Retries of one callback id get the first answer.
    pub async fn pay(&self, callback_id: &str, order_id: &str) -> anyhow::Result<PayAnswer> {
        for _ in 0..10 {
            if let Some(answer) = self.recorded_answer(callback_id).await? {
                return Ok(answer);
            }
            let event = Message::new(TOPIC, format!("paid:{order_id}")).with_tag("paid").with_key(order_id);
            let (cb, oid) = (callback_id.to_string(), order_id.to_string());
            let r = self
                .publish(event, &format!("p{callback_id}"), move |mut tx| {
                    let (cb, oid) = (cb.clone(), oid.clone());
                    async move {
                        let changed =
                            sqlx::query("UPDATE orders SET status = 'paid' WHERE id = ? AND status = 'paying'")
                                .bind(&oid)
                                .execute(&mut *tx)
                                .await?
                                .rows_affected();
                        if changed == 0 {
                            return Err(Local::LostRace);
                        }
                        let recorded =
                            sqlx::query("INSERT INTO payments (callback_id, order_id, answer) VALUES (?, ?, 'paid')")
                                .bind(&cb)
                                .bind(&oid)
                                .execute(&mut *tx)
                                .await;
                        match recorded {
                            Ok(_) => Ok((tx, ())),
                            Err(e) if e.as_database_error().is_some_and(|d| d.is_unique_violation()) => {
                                Err(Local::AlreadyProcessed)
                            }
                            Err(e) => Err(e.into()),
                        }
                    }
                })
                .await?;
            match r {
                Ok(()) => return Ok(PayAnswer::Paid),
                Err(Local::AlreadyProcessed) => continue,
                Err(Local::LostRace) => {
                    // Not paying any more: either paid by a concurrent retry, or cancelled.
                    if let Some(answer) = self.refund_if_cancelled(callback_id, order_id).await? {
                        return Ok(answer);
                    }
                }
                Err(e) => anyhow::bail!("payment failed: {e:?}"),
            }
        }
        anyhow::bail!("payment callback {callback_id} did not settle")
    }

    async fn recorded_answer(&self, callback_id: &str) -> anyhow::Result<Option<PayAnswer>> {
        let row = sqlx::query("SELECT answer FROM payments WHERE callback_id = ?")
            .bind(callback_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(
            |r| if r.get::<String, _>("answer") == "paid" { PayAnswer::Paid } else { PayAnswer::CancelledRefunded },
        ))
    }

    /// The cancel won: record the refund (no event: the order's event was OrderCancelled).
    async fn refund_if_cancelled(&self, callback_id: &str, order_id: &str) -> anyhow::Result<Option<PayAnswer>> {
        let mut tx = self.pool.begin().await?;
        let changed =
            sqlx::query("UPDATE orders SET status = 'cancelled_refunded' WHERE id = ? AND status = 'cancelled'")
                .bind(order_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        if changed == 0 {
            return Ok(None);
        }
        sqlx::query("INSERT INTO refunds (order_id, amount) SELECT id, amount FROM orders WHERE id = ?")
            .bind(order_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO payments (callback_id, order_id, answer) VALUES (?, ?, 'refunded')")
            .bind(callback_id)
            .bind(order_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(PayAnswer::CancelledRefunded))
    }

    /// The payment timeout: `paying → cancelled` (publishes OrderCancelled); nothing if paid.
    pub async fn cancel_timeout(&self, order_id: &str) -> anyhow::Result<bool> {
        let event = Message::new(TOPIC, format!("cancelled:{order_id}")).with_tag("cancelled").with_key(order_id);
        let oid = order_id.to_string();
        let r = self
            .publish(event, &format!("x{order_id}"), move |mut tx| {
                let oid = oid.clone();
                async move {
                    let changed =
                        sqlx::query("UPDATE orders SET status = 'cancelled' WHERE id = ? AND status = 'paying'")
                            .bind(&oid)
                            .execute(&mut *tx)
                            .await?
                            .rows_affected();
                    if changed == 0 {
                        return Err(Local::LostRace);
                    }
                    Ok((tx, ()))
                }
            })
            .await?;
        match r {
            Ok(()) => Ok(true),
            Err(Local::LostRace) => Ok(false),
            Err(e) => anyhow::bail!("cancel failed: {e:?}"),
        }
    }
}

/// The inventory service: applies each event once, in its own database.
pub struct Inventory {
    pub pool: SqlitePool,
}

impl Inventory {
    pub async fn new(pool: SqlitePool) -> anyhow::Result<Self> {
        db::migrate(&pool).await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS stock_moves (order_id TEXT NOT NULL, kind TEXT NOT NULL, message_id TEXT NOT NULL,
             PRIMARY KEY (order_id, kind))",
        )
        .execute(&pool)
        .await?;
        Ok(Self { pool })
    }

    /// Applies an event once; `Ok(false)` for a duplicate delivery.
    pub async fn apply(&self, m: &ReceivedMessage) -> anyhow::Result<bool> {
        let body = String::from_utf8_lossy(&m.body).into_owned();
        let (kind, order) = body.split_once(':').ok_or_else(|| anyhow::anyhow!("bad event {body:?}"))?;
        let move_kind = match kind {
            "created" => "reserve",
            "paid" => "confirm",
            "cancelled" => "release",
            other => anyhow::bail!("unknown event {other}"),
        };
        let (order, id) = (order.to_string(), m.message_id.clone());
        let done = db::process_once(&self.pool, "inventory", &m.message_id, |mut tx| async move {
            sqlx::query("INSERT INTO stock_moves (order_id, kind, message_id) VALUES (?, ?, ?)")
                .bind(&order)
                .bind(move_kind)
                .bind(&id)
                .execute(&mut *tx)
                .await?;
            Ok::<_, sqlx::Error>((tx, ()))
        })
        .await?;
        Ok(done.is_some())
    }
}
