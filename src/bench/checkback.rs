//! `txmq bench checkback`: pending half messages resolved by the broker's check-backs.

use super::report::{histogram, record, take, Progress, Report, Run};
use super::*;
use crate::admin;
use anyhow::bail;
use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use txmq_client::{CheckRequest, Resolution, TransactionChecker, TransactionProducer};

/// Answers every check-back "commit" and records how late each check came.
struct BenchChecker {
    check_after_us: u64,
    answered: Arc<AtomicU64>,
    first: AtomicU64,
    last: AtomicU64,
    lateness: Mutex<Histogram<u64>>,
}

#[async_trait::async_trait]
impl TransactionChecker for BenchChecker {
    async fn check(&self, request: &CheckRequest) -> Resolution {
        let now = micros_now();
        let due = stamp(&request.body).unwrap_or(now).saturating_add(self.check_after_us);
        record(&self.lateness, now.saturating_sub(due));
        let _ = self.first.compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        self.last.fetch_max(now, Ordering::Relaxed);
        self.answered.fetch_add(1, Ordering::Relaxed);
        Resolution::Commit
    }
}

/// Leaves `count` half messages pending, then lets the broker's check-backs resolve them.
/// Throughput is checks answered per second from the first check to the last; latency is how
/// long after its due time each check arrived.
pub(super) async fn checkback(broker: &str, args: &CheckbackArgs) -> anyhow::Result<Report> {
    if args.concurrency == 0 || args.count == 0 {
        bail!("--concurrency and --count must be at least 1");
    }
    let mut admin = admin::connect(broker).await?;
    let topic = format!("bench-checkback-{}", micros_now());
    let answered = Arc::new(AtomicU64::new(0));
    let checker = Arc::new(BenchChecker {
        check_after_us: args.check_after.as_micros() as u64,
        answered: answered.clone(),
        first: AtomicU64::new(0),
        last: AtomicU64::new(0),
        lateness: Mutex::new(histogram()),
    });
    let producer =
        TransactionProducer::connect(crate::connection::client_config(broker), &[topic.as_str()], checker.clone())
            .await?;
    producer.producer().send(txmq_client::Message::new(topic.clone(), b"warm-up".to_vec())).await?;
    let before = admin::fetch_status(&mut admin).await?;
    let (next, sent, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let sending = Instant::now();
    eprintln!("leaving {} half messages pending on {topic}", args.count);
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (producer, next, sent, errors, topic) =
            (producer.clone(), next.clone(), sent.clone(), errors.clone(), topic.clone());
        let (count, size, check_after) = (args.count, args.size, args.check_after);
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < count {
                let m = txmq_client::Message::new(topic.clone(), stamped_body(size)).with_check_after(check_after);
                match producer.begin(m).await {
                    // Neither commit nor rollback: the check-back decides.
                    Ok(pending) => {
                        std::mem::drop(pending);
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let sent = sent.load(Ordering::Relaxed);
    if sending.elapsed() > args.check_after {
        eprintln!(
            "sending took {:.1}s, longer than --check-after {:?}: checks overlapped the sends",
            sending.elapsed().as_secs_f64(),
            args.check_after
        );
    }
    let progress = Progress::start("checks answered", answered.clone());
    let give_up = Instant::now() + args.check_after + Duration::from_secs(120);
    while answered.load(Ordering::Relaxed) < sent && Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(progress);
    // The last commits may still be in flight: wait for the broker to have none of ours pending.
    let mut after = admin::fetch_status(&mut admin).await?;
    for _ in 0..50 {
        if after.pending_transactions <= before.pending_transactions {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = admin::fetch_status(&mut admin).await?;
    }
    let still_pending = after.pending_transactions.saturating_sub(before.pending_transactions);
    producer.producer().clone().shutdown().await?;
    let (first, last) = (checker.first.load(Ordering::Relaxed), checker.last.load(Ordering::Relaxed));
    let checked = answered.load(Ordering::Relaxed);
    let run = Run {
        scenario: format!("checkback ({sent} pending half messages resolved by check-back; latency = check arrival after its due time)"),
        result_name: format!("checkback-commit-{}B", args.size),
        concurrency: args.concurrency,
        size: args.size,
        messages: checked,
        errors: errors.load(Ordering::Relaxed) + sent.saturating_sub(checked) + still_pending,
        seconds: last.saturating_sub(first).max(1) as f64 / 1e6,
        latency: take(&checker.lateness),
        commit_latency: None,
    };
    Ok(Report::new(run, &before, &after))
}
