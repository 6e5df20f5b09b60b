//! The scripted run: many orders whose payment callback and timeout cancel race with random
//! timings, duplicated submits and callbacks, optionally a broker outage (outbox path) or
//! producers "crashing" after their database commit (check-back path); then the invariants.

use super::service::{open_db, Inventory, OrderService, PayAnswer, TOPIC};
use sqlx::Row;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use txmq_broker::config::Config;
use txmq_broker::server::{self, RunningBroker};
use txmq_client::db::{OutboxRelay, TxnLog};
use txmq_client::{
    CheckRequest, ClientConfig, Consumer, Resolution, SimpleConsumer, TransactionChecker, TransactionProducer,
};

/// The transaction log as the producer's checker, counting the check-backs it answers.
struct CountingChecker {
    log: TxnLog,
    checks: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl TransactionChecker for CountingChecker {
    async fn check(&self, request: &CheckRequest) -> Resolution {
        self.checks.fetch_add(1, Ordering::Relaxed);
        self.log.check(request).await
    }
}

/// How to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub orders: usize,
    pub concurrency: usize,
    /// Stop the in-process broker from 30 % to 60 % of the run.
    pub outage: bool,
    /// Share of publishes that skip the commit, as if the process crashed after its DB commit.
    pub crash_rate: f64,
    pub seed: u64,
    /// Print the story of this many orders.
    pub show: usize,
    /// Use this broker instead of an in-process one (no outage then).
    pub broker: Option<String>,
}

/// Counts of each outcome, and any broken invariant.
#[derive(Debug, Default)]
pub struct Report {
    pub orders: usize,
    pub paid: usize,
    pub cancelled: usize,
    pub cancelled_refunded: usize,
    /// Submits that found their order already created by the other one (measured).
    pub duplicate_submits: usize,
    /// Check-backs the producer's checker answered.
    pub checks_answered: usize,
    pub duplicate_callbacks: usize,
    pub events_applied: usize,
    pub duplicate_deliveries_skipped: usize,
    pub violations: Vec<String>,
}

impl Report {
    pub fn line(&self) -> String {
        format!(
            "orders={} paid={} cancelled={} cancelled_refunded={} duplicate_submits={} duplicate_callbacks={} events_applied={} duplicate_deliveries_skipped={} checks_answered={}",
            self.orders,
            self.paid,
            self.cancelled,
            self.cancelled_refunded,
            self.duplicate_submits,
            self.duplicate_callbacks,
            self.events_applied,
            self.duplicate_deliveries_skipped,
            self.checks_answered
        )
    }
}

fn broker_config(dir: &Path, listen: SocketAddr) -> Config {
    let mut c = Config::with_data_dir(dir.join("broker"));
    c.listen = listen;
    c.long_polling_max = Duration::from_secs(1);
    // Short enough that the check-back variant finishes quickly; long enough that a local
    // transaction slowed down by a loaded machine rarely loses to the check (when it does,
    // the barrier refuses it and the service runs the operation again).
    c.txn_timeout = Duration::from_secs(3);
    c.txn_check_interval = Duration::from_secs(1);
    c
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Runs the scenario in `dir` (databases and the in-process broker's store).
pub async fn run(dir: &Path, opts: Options) -> anyhow::Result<Report> {
    let mut broker: Option<RunningBroker> = None;
    let addr = match &opts.broker {
        Some(a) => a.clone(),
        None => {
            let b = server::spawn(broker_config(dir, "127.0.0.1:0".parse()?)).await?;
            let a = b.access_point();
            broker = Some(b);
            a
        }
    };
    let config = ClientConfig::new(&addr);
    let orders_db = open_db(&dir.join("orders.db")).await?;
    let log = TxnLog::new(orders_db.clone()).await?;
    let checks = Arc::new(AtomicUsize::new(0));
    let checker = Arc::new(CountingChecker { log: log.clone(), checks: checks.clone() });
    let producer = TransactionProducer::connect(config.clone(), &[TOPIC], checker).await?;
    let service = Arc::new(OrderService::new(orders_db.clone(), producer.clone(), log, opts.crash_rate).await?);
    let inventory = Arc::new(Inventory::new(open_db(&dir.join("inventory.db")).await?).await?);

    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let stopped = |tx: &tokio::sync::broadcast::Sender<()>| {
        let mut rx = tx.subscribe();
        async move {
            let _ = rx.recv().await;
        }
    };
    let relay = tokio::spawn(OutboxRelay::new(orders_db.clone(), producer.producer().clone()).run(stopped(&stop_tx)));
    let skipped = Arc::new(AtomicUsize::new(0));
    let consumer = {
        let c = Consumer::new(SimpleConsumer::connect(config.clone(), "inventory").await?).with_concurrency(16);
        let (inv, skipped, stop) = (inventory.clone(), skipped.clone(), stopped(&stop_tx));
        tokio::spawn(async move {
            c.subscribe(TOPIC, "*")
                .run(
                    move |m| {
                        let (inv, skipped) = (inv.clone(), skipped.clone());
                        async move {
                            if !inv.apply(&m).await.map_err(|e| e.to_string())? {
                                skipped.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok::<_, String>(())
                        }
                    },
                    stop,
                )
                .await
        })
    };

    let mut report = Report { orders: opts.orders, ..Report::default() };
    let started = Arc::new(AtomicUsize::new(0));
    let duplicates = Arc::new(AtomicUsize::new(0));
    let permits = Arc::new(tokio::sync::Semaphore::new(opts.concurrency.max(1)));
    let mut rng = Rng(opts.seed | 1);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..opts.orders {
        if opts.outage && opts.broker.is_none() {
            if i == opts.orders * 3 / 10 {
                if let Some(b) = broker.take() {
                    println!("-- broker stopped (orders {i}..{} go through the outbox)", opts.orders * 6 / 10);
                    b.stop().await?;
                    broker = None;
                }
            } else if i == opts.orders * 6 / 10 {
                let listen: SocketAddr = addr.parse()?;
                broker = Some(server::spawn(broker_config(dir, listen)).await?);
                println!("-- broker restarted; the relay sends the outbox");
            }
        }
        let permit = permits.clone().acquire_owned().await?;
        let (svc, started, duplicates) = (service.clone(), started.clone(), duplicates.clone());
        let (pay_delay, cancel_delay) = (rng.next() % 10, rng.next() % 30);
        // One order in five is abandoned: no payment ever arrives.
        let abandoned = rng.next() % 5 == 0;
        let show = i < opts.show;
        tasks.spawn(async move {
            let _permit = permit;
            started.fetch_add(1, Ordering::Relaxed);
            let token = format!("{i:05}");
            let (a, b) = tokio::join!(svc.create(&token, 100 + i as i64), svc.create(&token, 100 + i as i64));
            let ((id, first), (id2, second)) = (a?, b?);
            anyhow::ensure!(id == id2 && (first ^ second), "duplicate submit of {token} made {id} and {id2}");
            duplicates.fetch_add(usize::from(!first) + usize::from(!second), Ordering::Relaxed);
            let callback = format!("cb-{i}");
            let pay = async {
                if abandoned {
                    return Ok(None);
                }
                tokio::time::sleep(Duration::from_millis(pay_delay)).await;
                // The payment side calls back twice (a retry after a lost answer).
                let (x, y) = tokio::join!(svc.pay(&callback, &id), svc.pay(&callback, &id));
                let (x, y) = (x?, y?);
                anyhow::ensure!(x == y, "retried callback {callback} got {x:?} then {y:?}");
                Ok(Some(x))
            };
            let cancel = async {
                tokio::time::sleep(Duration::from_millis(cancel_delay)).await;
                svc.cancel_timeout(&id).await
            };
            let (paid, cancelled) = tokio::join!(pay, cancel);
            let (paid, cancelled) = (paid?, cancelled?);
            if show {
                let story = match (&paid, cancelled) {
                    (Some(PayAnswer::Paid), false) => "paid (the timeout found it paid and did nothing)",
                    (Some(PayAnswer::CancelledRefunded), true) => "cancelled by the timeout; the late payment was refunded",
                    (None, true) => "never paid; cancelled by the timeout",
                    _ => "inconsistent answers!",
                };
                println!("{id}: created once from 2 submits; pay after {pay_delay} ms, cancel after {cancel_delay} ms: {story}");
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r? {
            report.violations.push(format!("operation failed: {e:#}"));
        }
    }
    if broker.is_none() && opts.broker.is_none() {
        broker = Some(server::spawn(broker_config(dir, addr.parse()?)).await?);
    }

    // Every committed state change must reach inventory exactly once.
    let counts = |status: &'static str| {
        let pool = orders_db.clone();
        async move {
            let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM orders WHERE status = ?")
                .bind(status)
                .fetch_one(&pool)
                .await?
                .get("n");
            Ok::<_, sqlx::Error>(n as usize)
        }
    };
    report.paid = counts("paid").await?;
    report.cancelled = counts("cancelled").await?;
    report.cancelled_refunded = counts("cancelled_refunded").await?;
    let total: i64 = sqlx::query("SELECT COUNT(*) AS n FROM orders").fetch_one(&orders_db).await?.get("n");
    let expected_events = total as usize + report.paid + report.cancelled + report.cancelled_refunded;
    let wait = Instant::now();
    loop {
        let applied: i64 =
            sqlx::query("SELECT COUNT(*) AS n FROM stock_moves").fetch_one(&inventory.pool).await?.get("n");
        report.events_applied = applied as usize;
        if report.events_applied >= expected_events || wait.elapsed() > Duration::from_secs(90) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let redeliveries of the last events arrive, so duplicates are counted too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    report.duplicate_submits = duplicates.load(Ordering::Relaxed);
    report.checks_answered = checks.load(Ordering::Relaxed);
    report.duplicate_callbacks =
        sqlx::query("SELECT COUNT(*) AS n FROM payments").fetch_one(&orders_db).await?.get::<i64, _>("n") as usize;
    report.duplicate_deliveries_skipped = skipped.load(Ordering::Relaxed);
    check_invariants(&orders_db, &inventory.pool, total as usize, expected_events, &mut report).await?;

    let _ = stop_tx.send(());
    let _ = consumer.await;
    let _ = relay.await;
    let _ = producer.shutdown().await;
    if let Some(b) = broker {
        b.stop().await?;
    }
    Ok(report)
}

async fn check_invariants(
    orders: &sqlx::SqlitePool,
    inventory: &sqlx::SqlitePool,
    total: usize,
    expected_events: usize,
    r: &mut Report,
) -> anyhow::Result<()> {
    let mut fail = |cond: bool, what: String| {
        if !cond {
            r.violations.push(what);
        }
    };
    fail(total == r.orders, format!("{total} orders exist for {} tokens", r.orders));
    let undecided: i64 =
        sqlx::query("SELECT COUNT(*) AS n FROM orders WHERE status = 'paying'").fetch_one(orders).await?.get("n");
    fail(undecided == 0, format!("{undecided} orders ended neither paid nor cancelled"));
    fail(r.paid + r.cancelled + r.cancelled_refunded == total, "an order has an unknown status".into());
    let paid_refunds: i64 = sqlx::query(
        "SELECT COUNT(*) AS n FROM refunds JOIN orders ON orders.id = refunds.order_id WHERE orders.status = 'paid'",
    )
    .fetch_one(orders)
    .await?
    .get("n");
    fail(paid_refunds == 0, format!("{paid_refunds} paid orders have a refund"));
    let refunds: i64 = sqlx::query("SELECT COUNT(*) AS n FROM refunds").fetch_one(orders).await?.get("n");
    fail(
        refunds as usize == r.cancelled_refunded,
        format!("{refunds} refunds for {} cancelled-and-refunded orders", r.cancelled_refunded),
    );

    let moves = |kind: &'static str| async move {
        let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM stock_moves WHERE kind = ?")
            .bind(kind)
            .fetch_one(inventory)
            .await?
            .get("n");
        Ok::<_, sqlx::Error>(n as usize)
    };
    let (reserved, confirmed, released) = (moves("reserve").await?, moves("confirm").await?, moves("release").await?);
    fail(reserved == total, format!("reserved {reserved} for {total} orders"));
    fail(confirmed == r.paid, format!("confirmed stock {confirmed} != paid orders {}", r.paid));
    fail(
        released == r.cancelled + r.cancelled_refunded,
        format!("released stock {released} != cancelled orders {}", r.cancelled + r.cancelled_refunded),
    );
    fail(
        r.events_applied == expected_events,
        format!("{} events applied, {expected_events} expected (each exactly once)", r.events_applied),
    );

    // Every applied event matches a committed state: no event of a rolled-back transaction.
    let orphans: Vec<String> = sqlx::query("SELECT order_id, kind FROM stock_moves")
        .fetch_all(inventory)
        .await?
        .iter()
        .map(|row| format!("{}:{}", row.get::<String, _>("order_id"), row.get::<String, _>("kind")))
        .collect();
    let mut bad = 0;
    for key in orphans {
        let (order, kind) = key.split_once(':').unwrap_or(("", ""));
        let status: Option<String> = sqlx::query("SELECT status FROM orders WHERE id = ?")
            .bind(order)
            .fetch_optional(orders)
            .await?
            .map(|row| row.get("status"));
        let ok = matches!(
            (kind, status.as_deref()),
            ("reserve", Some(_)) | ("confirm", Some("paid")) | ("release", Some("cancelled" | "cancelled_refunded"))
        );
        if !ok {
            bad += 1;
        }
    }
    fail(bad == 0, format!("{bad} applied events have no committed state change behind them"));
    Ok(())
}
