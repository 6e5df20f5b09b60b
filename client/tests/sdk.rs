//! The SDK against an in-process broker: local-transaction outcomes, check-back from the
//! transaction log, the barrier, the outbox with its relay, idempotent consumption, and the
//! Telemetry stream surviving a broker restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::Row;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use txmq_broker::config::Config;
use txmq_broker::server::{self, RunningBroker};
use txmq_client::db::{self, send_in_db_transaction, Outbox, OutboxRelay, Published, TxnLog};
use txmq_client::{ClientConfig, Message, SimpleConsumer, TransactionProducer};

fn broker_config(dir: &Path, listen: SocketAddr) -> Config {
    let mut c = Config::with_data_dir(dir);
    c.listen = listen;
    c.long_polling_max = Duration::from_secs(1);
    c.txn_timeout = Duration::from_secs(1);
    c.txn_check_interval = Duration::from_secs(1);
    c
}

async fn start(dir: &Path) -> RunningBroker {
    server::spawn(broker_config(dir, "127.0.0.1:0".parse().unwrap())).await.unwrap()
}

async fn restart(dir: &Path, addr: SocketAddr) -> RunningBroker {
    server::spawn(broker_config(dir, addr)).await.unwrap()
}

async fn database(dir: &Path) -> SqlitePool {
    let options = SqliteConnectOptions::new()
        .filename(dir.join("app.db"))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(5));
    let pool = SqlitePoolOptions::new().max_connections(4).connect_with(options).await.unwrap();
    sqlx::query("CREATE TABLE orders (id TEXT PRIMARY KEY, status TEXT NOT NULL)").execute(&pool).await.unwrap();
    sqlx::query("CREATE TABLE stock (message_id TEXT NOT NULL)").execute(&pool).await.unwrap();
    db::migrate(&pool).await.unwrap();
    pool
}

async fn orders(pool: &SqlitePool) -> Vec<String> {
    sqlx::query("SELECT id FROM orders ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get("id"))
        .collect()
}

/// Everything a fresh consumer group receives within `wait` (acked).
async fn consume_all(broker: &RunningBroker, group: &str, topic: &str, wait: Duration) -> Vec<String> {
    let c = SimpleConsumer::connect(ClientConfig::new(broker.access_point()), group).await.unwrap();
    let started = Instant::now();
    let mut bodies = Vec::new();
    while started.elapsed() < wait {
        for m in c.receive_for(topic, "*", 32, Duration::from_secs(30), Duration::from_millis(500)).await.unwrap() {
            c.ack(&m).await.unwrap();
            bodies.push(String::from_utf8(m.body).unwrap());
        }
    }
    bodies.sort();
    bodies
}

async fn producer(broker: &RunningBroker, log: &TxnLog) -> TransactionProducer {
    TransactionProducer::connect(ClientConfig::new(broker.access_point()), &["orders"], Arc::new(log.clone()))
        .await
        .unwrap()
}

async fn insert_order(mut tx: db::DbTx, id: &str) -> Result<(db::DbTx, ()), sqlx::Error> {
    sqlx::query("INSERT INTO orders (id, status) VALUES (?, 'created')").bind(id).execute(&mut *tx).await?;
    Ok((tx, ()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_transaction_decides_commit_or_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    let pool = database(dir.path()).await;
    let log = TxnLog::new(pool.clone()).await.unwrap();
    let p = producer(&broker, &log).await;

    let ok = send_in_db_transaction(&p, &log, Message::new("orders", "created o-1"), |tx, ctx| async move {
        assert!(ctx.is_some());
        insert_order(tx, "o-1").await
    })
    .await
    .unwrap();
    assert!(matches!(ok, Ok(((), Published::Transactional { .. }))));

    let failed: Result<((), Published), sqlx::Error> =
        send_in_db_transaction(&p, &log, Message::new("orders", "created o-2"), |tx, _| async move {
            let (_tx, ()) = insert_order(tx, "o-2").await?;
            Err(sqlx::Error::Protocol("payment service said no".into()))
        })
        .await
        .unwrap();
    assert!(failed.is_err());

    assert_eq!(orders(&pool).await, ["o-1"]);
    assert_eq!(consume_all(&broker, "inventory", "orders", Duration::from_secs(3)).await, ["created o-1"]);
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_producer_resolves_a_dead_producers_transaction_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    let pool = database(dir.path()).await;
    let log = TxnLog::new(pool.clone()).await.unwrap();

    // Producer A stores the half message and commits its database transaction, then dies
    // before telling the broker.
    let a = producer(&broker, &log).await;
    let pending = a.begin(Message::new("orders", "created o-7")).await.unwrap();
    let txn_id = pending.context().transaction_id.clone();
    let (mut tx, ()) = insert_order(pool.begin().await.unwrap(), "o-7").await.unwrap();
    TxnLog::record_commit(&mut tx, &txn_id).await.unwrap();
    tx.commit().await.unwrap();
    std::mem::forget(pending);
    a.shutdown().await.unwrap();

    // Producer B, in another "process", answers the check from the same database.
    let _b = producer(&broker, &log).await;
    assert_eq!(consume_all(&broker, "inventory", "orders", Duration::from_secs(6)).await, ["created o-7"]);
    broker.stop().await.unwrap();
}

/// Two services publish to one topic, each with its own database. A's producer dies after its
/// database commit; the check goes to B, whose log cannot see A's transaction: B answers
/// UNKNOWN (not ROLLBACK), and once A is back its log commits the message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_on_another_database_does_not_roll_back_what_it_cannot_see() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (pool_a, pool_b) = (database(dir_a.path()).await, database(dir_b.path()).await);
    let (log_a, log_b) = (TxnLog::new(pool_a.clone()).await.unwrap(), TxnLog::new(pool_b.clone()).await.unwrap());
    assert_ne!(log_a.id(), log_b.id());
    assert_eq!(TxnLog::new(pool_a.clone()).await.unwrap().id(), log_a.id(), "one id per database");

    let a = producer(&broker, &log_a).await;
    let b = producer(&broker, &log_b).await;
    let (_, published) = db::send_in_db_transaction_then(
        &a,
        &log_a,
        Message::new("orders", "created o-11"),
        |tx, _| insert_order(tx, "o-11"),
        db::Finish::LeaveToCheckBack,
    )
    .await
    .unwrap()
    .unwrap();
    let Published::Transactional { transaction_id } = published else { panic!("not transactional") };
    a.shutdown().await.unwrap();

    // B is asked (its log gets no row: it did not answer from it) and the message waits.
    let asked = Instant::now();
    while asked.elapsed() < Duration::from_secs(4) {
        let row: Option<String> = sqlx::query_scalar("SELECT state FROM txmq_txn_log WHERE transaction_id = ?")
            .bind(&transaction_id)
            .fetch_optional(&pool_b)
            .await
            .unwrap();
        assert_eq!(row, None, "B answered from a log that never saw the transaction");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(consume_all(&broker, "inventory", "orders", Duration::from_secs(1)).await.is_empty());
    // A comes back: the next check tries it before B, which decided nothing; its log commits.
    let _a = producer(&broker, &log_a).await;
    assert_eq!(consume_all(&broker, "inventory", "orders", Duration::from_secs(6)).await, ["created o-11"]);
    b.shutdown().await.unwrap();
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_during_a_slow_local_transaction_makes_it_fail() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    let pool = database(dir.path()).await;
    let log = TxnLog::new(pool.clone()).await.unwrap();
    let p = producer(&broker, &log).await;

    let watcher = pool.clone();
    let outcome: Result<((), Published), sqlx::Error> =
        send_in_db_transaction(&p, &log, Message::new("orders", "created o-9"), |tx, ctx| async move {
            // The local transaction stalls past the check-back (1 s here)...
            let id = ctx.unwrap().transaction_id;
            let started = Instant::now();
            loop {
                let row = sqlx::query("SELECT state FROM txmq_txn_log WHERE transaction_id = ?")
                    .bind(&id)
                    .fetch_optional(&watcher)
                    .await?;
                if row.is_some() {
                    break;
                }
                assert!(started.elapsed() < Duration::from_secs(15), "no check arrived");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // ...then tries to finish its work.
            insert_order(tx, "o-9").await
        })
        .await
        .unwrap();
    assert!(outcome.is_err(), "the barrier refuses the late commit");
    assert!(orders(&pool).await.is_empty(), "the business change rolled back");
    assert!(consume_all(&broker, "inventory", "orders", Duration::from_secs(3)).await.is_empty(), "never delivered");
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_database_commit_leaves_the_decision_to_the_check_back() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    let pool = database(dir.path()).await;
    // A constraint checked only at COMMIT makes the database's commit fail.
    sqlx::query("CREATE TABLE customers (id TEXT PRIMARY KEY)").execute(&pool).await.unwrap();
    sqlx::query("CREATE TABLE invoices (customer TEXT REFERENCES customers(id) DEFERRABLE INITIALLY DEFERRED)")
        .execute(&pool)
        .await
        .unwrap();
    let log = TxnLog::new(pool.clone()).await.unwrap();
    let p = producer(&broker, &log).await;

    let transaction = Arc::new(std::sync::Mutex::new(String::new()));
    let seen = transaction.clone();
    let outcome: Result<((), Published), sqlx::Error> =
        send_in_db_transaction(&p, &log, Message::new("orders", "invoice i-1"), |mut tx, ctx| async move {
            *seen.lock().unwrap() = ctx.unwrap().transaction_id;
            sqlx::query("INSERT INTO invoices (customer) VALUES ('nobody')").execute(&mut *tx).await?;
            Ok((tx, ()))
        })
        .await
        .unwrap();
    assert!(outcome.is_err(), "the commit failed");
    // No decision was sent: the broker checks back, and the log (no commit recorded) answers
    // ROLLBACK, recording it.
    let id = transaction.lock().unwrap().clone();
    let started = Instant::now();
    loop {
        let state: Option<String> = sqlx::query_scalar("SELECT state FROM txmq_txn_log WHERE transaction_id = ?")
            .bind(&id)
            .fetch_optional(&pool)
            .await
            .unwrap();
        if let Some(state) = state {
            assert_eq!(state, "rolled_back");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "no check-back came: a decision was sent");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(consume_all(&broker, "billing", "orders", Duration::from_secs(2)).await.is_empty(), "never delivered");
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_when_the_broker_is_down_then_relay_and_idempotent_consumers() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    let addr = broker.addr;
    let pool = database(dir.path()).await;
    let log = TxnLog::new(pool.clone()).await.unwrap();
    let p = producer(&broker, &log).await;
    broker.stop().await.unwrap();

    // Broker down: the message lands in the outbox, in the same database transaction.
    let stored =
        send_in_db_transaction(&p, &log, Message::new("orders", "created o-3").with_key("o-3"), |tx, ctx| async move {
            assert!(ctx.is_none());
            insert_order(tx, "o-3").await
        })
        .await
        .unwrap();
    assert!(matches!(stored, Ok(((), Published::Outbox { .. }))));
    assert_eq!(Outbox::pending(&pool).await.unwrap(), 1);
    // A failed local transaction leaves no outbox row behind.
    let failed: Result<((), Published), sqlx::Error> =
        send_in_db_transaction(&p, &log, Message::new("orders", "created o-4"), |tx, _| async move {
            let _ = insert_order(tx, "o-4").await?;
            Err(sqlx::Error::Protocol("declined".into()))
        })
        .await
        .unwrap();
    assert!(failed.is_err());
    assert_eq!(Outbox::pending(&pool).await.unwrap(), 1);
    assert_eq!(orders(&pool).await, ["o-3"]);

    // While the broker is down the relay cannot send, and its gauge shows the backlog.
    let probe = OutboxRelay::new(pool.clone(), p.producer().clone());
    let backlog = probe.backlog_gauge();
    probe.run(std::future::ready(())).await.unwrap();
    assert_eq!(backlog.load(std::sync::atomic::Ordering::Relaxed), 1);

    // Broker back: the relay delivers it.
    let broker = restart(dir.path(), addr).await;
    let relay = OutboxRelay::new(pool.clone(), p.producer().clone());
    let started = Instant::now();
    while Outbox::pending(&pool).await.unwrap() > 0 {
        relay.run_once().await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(20), "relay did not drain");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // An idempotent consumer applies it once, even though it is delivered twice (the first
    // delivery is processed but never acked, as if the consumer crashed before the ack).
    let c = SimpleConsumer::connect(ClientConfig::new(broker.access_point()), "inventory").await.unwrap();
    let mut deliveries = 0;
    let mut applied = 0;
    let started = Instant::now();
    while deliveries < 2 && started.elapsed() < Duration::from_secs(20) {
        for m in c.receive_for("orders", "*", 8, Duration::from_secs(1), Duration::from_millis(500)).await.unwrap() {
            deliveries += 1;
            let id = m.message_id.clone();
            let done = db::process_once(&pool, "inventory", &m.message_id, |mut tx| async move {
                sqlx::query("INSERT INTO stock (message_id) VALUES (?)").bind(&id).execute(&mut *tx).await?;
                Ok::<_, sqlx::Error>((tx, ()))
            })
            .await
            .unwrap();
            if done.is_some() {
                applied += 1;
            }
            if deliveries >= 2 {
                c.ack(&m).await.unwrap();
            }
        }
    }
    assert_eq!((deliveries, applied), (2, 1));
    let rows = sqlx::query("SELECT COUNT(*) AS n FROM stock").fetch_one(&pool).await.unwrap().get::<i64, _>("n");
    assert_eq!(rows, 1);
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_still_arrive_after_the_broker_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    let addr = broker.addr;
    let pool = database(dir.path()).await;
    let log = TxnLog::new(pool.clone()).await.unwrap();
    let p = producer(&broker, &log).await;
    broker.stop().await.unwrap();
    let broker = restart(dir.path(), addr).await;

    // The commit "gets lost": only the check-back can publish this message, and it can only
    // reach the producer on a re-opened Telemetry stream.
    let pending = p.begin(Message::new("orders", "created o-5")).await.unwrap();
    let (mut tx, ()) = insert_order(pool.begin().await.unwrap(), "o-5").await.unwrap();
    TxnLog::record_commit(&mut tx, &pending.context().transaction_id).await.unwrap();
    tx.commit().await.unwrap();
    std::mem::forget(pending);
    assert_eq!(consume_all(&broker, "inventory", "orders", Duration::from_secs(8)).await, ["created o-5"]);
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_acks_successes_and_retries_failures() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    let config = ClientConfig::new(broker.access_point());
    let p = txmq_client::Producer::connect(config.clone(), &["events"]).await.unwrap();
    for i in 0..5 {
        p.send(Message::new("events", format!("e{i}"))).await.unwrap();
    }
    let consumer = txmq_client::Consumer::new(SimpleConsumer::connect(config, "handlers").await.unwrap())
        .with_concurrency(4)
        .with_invisible_duration(Duration::from_secs(2));
    let seen = Arc::new(std::sync::Mutex::new(Vec::<(String, u32)>::new()));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let watcher = {
        let seen = seen.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            while seen.lock().unwrap().iter().filter(|(_, a)| *a >= 1).count() < 6
                && started.elapsed() < Duration::from_secs(20)
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // Keep consuming past the 2 s invisible duration: a success that was not acked
            // would be delivered again meanwhile.
            tokio::time::sleep(Duration::from_millis(3500)).await;
            let _ = stop_tx.send(());
        })
    };
    let record = seen.clone();
    consumer
        .subscribe("events", "*")
        .run(
            move |m| {
                let record = record.clone();
                async move {
                    let body = String::from_utf8(m.body).unwrap();
                    record.lock().unwrap().push((body.clone(), m.delivery_attempt));
                    // e3 fails on its first delivery and succeeds on the retry.
                    if body == "e3" && m.delivery_attempt == 1 {
                        return Err("transient failure");
                    }
                    Ok(())
                }
            },
            async move {
                let _ = stop_rx.await;
            },
        )
        .await
        .unwrap();
    watcher.await.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 6, "each success delivered once (acked), e3 twice: {seen:?}");
    assert!(seen.contains(&("e3".to_string(), 2)), "the failed message came back as attempt 2: {seen:?}");
    assert!(seen.iter().all(|(b, a)| *a == 1 || b == "e3"), "an acked message came back: {seen:?}");
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_addresses_skip_one_that_does_not_answer() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    // A port nothing listens on, beside the broker: the client leaves it out.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let both = format!("{dead},{}", broker.access_point());
    let p = txmq_client::Producer::connect(ClientConfig::new(both.clone()), &["spread"]).await.unwrap();
    for i in 0..40 {
        p.send(Message::new("spread", format!("m{i}"))).await.expect("sent through the address that answers");
    }
    assert_eq!(consume_all(&broker, "readers", "spread", Duration::from_secs(2)).await.len(), 40);
    broker.stop().await.unwrap();
}
