//! `txmq bench e2e`: producers and consumers at once, latency from send (or commit) to receipt.

use super::consume::AckingConsumer;
use super::report::{histogram, record, take, Progress, Report, Run};
use super::*;
use crate::admin;
use anyhow::bail;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Producers and consumers at once on a fresh topic. Latency is from the send (with --txn also
/// from the commit) to the consumer's receipt; throughput counts messages received and acked,
/// up to the last receipt.
pub(super) async fn e2e(broker: &str, args: &E2eArgs) -> anyhow::Result<Report> {
    let load = &args.load;
    if load.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let run_id = micros_now();
    let topic = format!("bench-e2e-{run_id}");
    let group = format!("bench-e2e-group-{run_id}");
    let scenario = if args.txn { Scenario::Txn } else { Scenario::Send };
    let sender = Sender::connect(broker, scenario, &topic, load.sdk(), args.oneway).await?;
    let consumer_client = connect(broker).await?;
    let mut admin = admin::connect(broker).await?;
    // Creates the topic and the group (at the earliest offset) before measuring.
    sender.send(&topic, format!("W{run_id}"), b"warm-up").await?;
    let before = admin::fetch_status(&mut admin).await?;
    let latency = Arc::new(Mutex::new(histogram()));
    let commit_latency = Arc::new(Mutex::new(histogram()));
    // Transactional runs: message index -> when its commit was sent (µs since the epoch).
    let commits: Arc<Mutex<std::collections::HashMap<u64, u64>>> = Arc::default();
    let (next, sent, received, errors) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let (last_receipt, warm_ups) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let limit = load.count.unwrap_or(u64::MAX);
    let started = Instant::now();
    let started_us = micros_now();
    let deadline = if load.count.is_some() { None } else { Some(started + load.duration) };
    // Open-loop pacing as in the peers' benchmarks: message i is due at start + i / rate.
    let rate = args.rate;
    let progress = Progress::start("received and acked", received.clone());
    // Paced: a thread hands message i to producer i mod concurrency when it is due (tokio's
    // timer wakes up to a millisecond late, which would count against the broker).
    let mut paced = if rate > 0 { pace(load.concurrency, rate, started, deadline, limit)? } else { Vec::new() };
    let mut producers = Vec::new();
    for _ in 0..load.concurrency {
        let (sender, next, sent, errors, topic, commits) =
            (sender.clone(), next.clone(), sent.clone(), errors.clone(), topic.clone(), commits.clone());
        let mut due = paced.pop();
        let size = load.size;
        producers.push(tokio::spawn(async move {
            loop {
                let i = match &mut due {
                    Some(due) => match due.recv().await {
                        Some(i) => i,
                        None => break,
                    },
                    None => next.fetch_add(1, Ordering::Relaxed),
                };
                if i >= limit {
                    break;
                }
                // Paced: message i is due at start + i / rate, and its latency counts from then,
                // so time spent behind schedule is measured, not hidden (coordinated omission).
                let due_us = (rate > 0).then(|| started_us + (i as f64 * 1e6 / rate as f64) as u64);
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                // The body starts with the send time (the due time when paced), so the consumer
                // can measure latency.
                let late_us = due_us.map_or(0, |due| micros_now().saturating_sub(due));
                let body = stamped_body_at(size, due_us.unwrap_or_else(micros_now));
                let committing = || {
                    if let Ok(mut c) = commits.lock() {
                        // Commit to receipt, plus however late the half was sent.
                        c.insert(i, micros_now().saturating_sub(late_us));
                    }
                };
                if sender.one(&topic, format!("E{run_id}-{i}"), &body, committing).await {
                    sent.fetch_add(1, Ordering::Relaxed);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let producing_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // SDK runs ack as the SDK does under load: a receive's acks leave in one request.
    let ack_batch = args.ack_batch || load.sdk;
    let mut consumers = Vec::new();
    for _ in 0..args.consumers.max(1) {
        let (client, received, latency, commit_latency, topic, group, sent, done, commits, last_receipt) = (
            consumer_client.clone(),
            received.clone(),
            latency.clone(),
            commit_latency.clone(),
            topic.clone(),
            group.clone(),
            sent.clone(),
            producing_done.clone(),
            commits.clone(),
            last_receipt.clone(),
        );
        let warm_ups = warm_ups.clone();
        consumers.push(tokio::spawn(async move {
            let mut consumer = AckingConsumer::new(client, &group, &topic, ack_batch);
            let mut quiet_since: Option<Instant> = None;
            loop {
                consumer.reap().await.publish(&received, &last_receipt);
                if done.load(Ordering::Relaxed) {
                    // A message that does not arrive within 5 s of the end is reported missing.
                    let quiet = quiet_since.get_or_insert_with(Instant::now).elapsed() > Duration::from_secs(5);
                    let expected = sent.load(Ordering::Relaxed) + warm_ups.load(Ordering::Relaxed);
                    if quiet || received.load(Ordering::Relaxed) + consumer.unacked() >= expected {
                        consumer.finish().await.publish(&received, &last_receipt);
                        return Ok::<_, anyhow::Error>(());
                    }
                }
                let (now, messages) = consumer.receive().await?;
                let mut got = 0;
                for m in messages {
                    if m.body == b"warm-up" {
                        warm_ups.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    record(&latency, now.saturating_sub(stamp(&m.body).unwrap_or(now)));
                    let index = m
                        .system_properties
                        .as_ref()
                        .and_then(|sp| sp.message_id.rsplit('-').next().and_then(|i| i.parse::<u64>().ok()));
                    let committed_at = index.and_then(|i| commits.lock().ok().and_then(|mut c| c.remove(&i)));
                    if let Some(at) = committed_at {
                        record(&commit_latency, now.saturating_sub(at));
                    }
                    got += 1;
                }
                if got > 0 {
                    quiet_since = None;
                }
            }
        }));
    }
    for p in producers {
        p.await?;
    }
    producing_done.store(true, Ordering::Relaxed);
    for c in consumers {
        c.await??;
    }
    drop(progress);
    let after = admin::fetch_status(&mut admin).await?;
    // The warm-up message is received and acked too, but is not part of the run.
    let messages = received.load(Ordering::Relaxed).saturating_sub(warm_ups.load(Ordering::Relaxed));
    let missing = sent.load(Ordering::Relaxed).saturating_sub(messages);
    if missing > 0 {
        eprintln!("{missing} acknowledged sends were not received within 5 s of the end");
    }
    let seconds = (last_receipt.load(Ordering::Relaxed).saturating_sub(started_us)) as f64 / 1e6;
    let paced = if args.rate > 0 { format!("-paced{}", args.rate) } else { String::new() };
    let run = Run {
        scenario: format!(
            "e2e {} (send to receipt{})",
            if args.txn { "txn" } else { "normal" },
            if args.rate > 0 { format!(", paced at {}/s", args.rate) } else { String::new() }
        ),
        result_name: format!(
            "e2e-{}+receive+ack{}-{}B{paced}{}{}{}",
            if args.txn { "txn-half+commit" } else { "send" },
            if args.ack_batch { "-batched" } else { "" },
            load.size,
            load.mode(),
            if args.oneway { "-oneway" } else { "" },
            // Four consumers unless said otherwise (the name of earlier runs' rows).
            if args.consumers == 4 { String::new() } else { format!("-consumers{}", args.consumers) }
        ),
        concurrency: load.concurrency,
        size: load.size,
        messages,
        errors: errors.load(Ordering::Relaxed) + missing,
        seconds,
        latency: take(&latency),
        commit_latency: args.txn.then(|| take(&commit_latency)),
    };
    Ok(Report::new(run, &before, &after))
}

/// Starts the pacer of an open-loop run: a thread that sends message number i, at
/// `started + i / rate`, to the i-th channel of `n` round robin, until `deadline` or `limit`.
/// `std::thread::sleep` wakes within tens of microseconds of the due time.
fn pace(
    n: usize,
    rate: u64,
    started: Instant,
    deadline: Option<Instant>,
    limit: u64,
) -> anyhow::Result<Vec<tokio::sync::mpsc::UnboundedReceiver<u64>>> {
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..n).map(|_| tokio::sync::mpsc::unbounded_channel::<u64>()).unzip();
    std::thread::Builder::new().name("bench-pacer".into()).spawn(move || {
        for i in 0..limit {
            let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
            if deadline.is_some_and(|d| due >= d) {
                break;
            }
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if senders[(i % n as u64) as usize].send(i).is_err() {
                break;
            }
        }
    })?;
    Ok(receivers)
}
