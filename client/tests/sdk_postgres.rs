//! The SDK's database integration on PostgreSQL (feature `postgres`): local outcomes, the
//! barrier, the outbox with two relays competing (each row sent once), idempotent consumption.
//! Needs `TXMQ_TEST_POSTGRES_URL` (`.ci/postgres.sh` starts a local server and prints it).
#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::Row;
use std::sync::Arc;
use std::time::{Duration, Instant};
use txmq_broker::config::Config;
use txmq_broker::server;
use txmq_client::db::postgres::{self as db, send_in_db_transaction, Outbox, OutboxRelay, TxnLog};
use txmq_client::db::Published;
use txmq_client::{ClientConfig, Message, SimpleConsumer, TransactionProducer};

async fn pool() -> PgPool {
    let url = std::env::var("TXMQ_TEST_POSTGRES_URL")
        .expect("set TXMQ_TEST_POSTGRES_URL (bash .ci/postgres.sh starts a local PostgreSQL and prints it)");
    let pool = PgPoolOptions::new().max_connections(6).connect(&url).await.unwrap();
    for t in ["orders", "stock", "txmq_txn_log", "txmq_outbox", "txmq_consumed"] {
        sqlx::query(&format!("DROP TABLE IF EXISTS {t}")).execute(&pool).await.unwrap();
    }
    sqlx::query("CREATE TABLE orders (id TEXT PRIMARY KEY)").execute(&pool).await.unwrap();
    sqlx::query("CREATE TABLE stock (message_id TEXT NOT NULL)").execute(&pool).await.unwrap();
    db::migrate(&pool).await.unwrap();
    pool
}

async fn insert_order(mut tx: db::DbTx, id: &str) -> Result<(db::DbTx, ()), sqlx::Error> {
    sqlx::query("INSERT INTO orders (id) VALUES ($1)").bind(id).execute(&mut *tx).await?;
    Ok((tx, ()))
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query(sql).fetch_one(pool).await.unwrap().get::<i64, _>(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_transaction_log_barrier_outbox_and_idempotency() {
    let pool = pool().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::with_data_dir(dir.path());
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.long_polling_max = Duration::from_secs(1);
    config.txn_timeout = Duration::from_secs(1);
    config.txn_check_interval = Duration::from_secs(1);
    let broker = server::spawn(config.clone()).await.unwrap();
    let addr = broker.addr;
    let log = TxnLog::new(pool.clone()).await.unwrap();
    let p = TransactionProducer::connect(ClientConfig::new(broker.access_point()), &["orders"], Arc::new(log.clone()))
        .await
        .unwrap();

    // The local outcome decides.
    let ok =
        send_in_db_transaction(&p, &log, Message::new("orders", "o-1"), |tx, _| insert_order(tx, "o-1")).await.unwrap();
    assert!(matches!(ok, Ok(((), Published::Transactional { .. }))));
    let failed: Result<((), Published), sqlx::Error> =
        send_in_db_transaction(&p, &log, Message::new("orders", "o-2"), |tx, _| async move {
            let _ = insert_order(tx, "o-2").await?;
            Err(sqlx::Error::Protocol("declined".into()))
        })
        .await
        .unwrap();
    assert!(failed.is_err());

    // The barrier: a check during a slow local transaction makes it fail.
    let watcher = pool.clone();
    let late: Result<((), Published), sqlx::Error> =
        send_in_db_transaction(&p, &log, Message::new("orders", "o-3"), |tx, ctx| async move {
            let id = ctx.unwrap().transaction_id;
            let started = Instant::now();
            while sqlx::query("SELECT 1 FROM txmq_txn_log WHERE transaction_id = $1")
                .bind(&id)
                .fetch_optional(&watcher)
                .await?
                .is_none()
            {
                assert!(started.elapsed() < Duration::from_secs(15), "no check arrived");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            insert_order(tx, "o-3").await
        })
        .await
        .unwrap();
    assert!(late.is_err(), "the barrier refuses the late commit");
    assert_eq!(count(&pool, "SELECT COUNT(*) FROM orders").await, 1);

    // Broker down: the outbox, in the same transaction; then two relays race to send.
    broker.stop().await.unwrap();
    for i in 0..20 {
        let id = format!("q-{i}");
        let r = send_in_db_transaction(&p, &log, Message::new("orders", id.clone()), |tx, _| async move {
            insert_order(tx, &id).await
        })
        .await
        .unwrap();
        assert!(matches!(r, Ok(((), Published::Outbox { .. }))));
    }
    assert_eq!(Outbox::pending(&pool).await.unwrap(), 20);
    config.listen = addr;
    let broker = server::spawn(config).await.unwrap();
    let (r1, r2) =
        (OutboxRelay::new(pool.clone(), p.producer().clone()), OutboxRelay::new(pool.clone(), p.producer().clone()));
    let started = Instant::now();
    while Outbox::pending(&pool).await.unwrap() > 0 {
        let (a, b) = tokio::join!(r1.run_once(), r2.run_once());
        a.unwrap();
        b.unwrap();
        assert!(started.elapsed() < Duration::from_secs(30), "relays did not drain the outbox");
    }
    assert_eq!(
        count(&pool, "SELECT COUNT(*) FROM txmq_outbox WHERE attempts <> 1").await,
        0,
        "each row was sent by one relay, once"
    );

    // Idempotent consumption: 1 committed + 20 relayed events, each applied once.
    let c = SimpleConsumer::connect(ClientConfig::new(broker.access_point()), "inventory").await.unwrap();
    let (mut applied, mut seen) = (0, 0);
    let started = Instant::now();
    while seen < 21 && started.elapsed() < Duration::from_secs(20) {
        for m in c.receive_for("orders", "*", 32, Duration::from_secs(30), Duration::from_millis(500)).await.unwrap() {
            seen += 1;
            for _ in 0..2 {
                let id = m.message_id.clone();
                let done = db::process_once(&pool, "inventory", &m.message_id, |mut tx| async move {
                    sqlx::query("INSERT INTO stock (message_id) VALUES ($1)").bind(&id).execute(&mut *tx).await?;
                    Ok::<_, sqlx::Error>((tx, ()))
                })
                .await
                .unwrap();
                applied += usize::from(done.is_some());
            }
            c.ack(&m).await.unwrap();
        }
    }
    assert_eq!((seen, applied), (21, 21));
    assert_eq!(count(&pool, "SELECT COUNT(*) FROM stock").await, 21);
    broker.stop().await.unwrap();
}
