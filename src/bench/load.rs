//! `txmq bench send` and `txmq bench txn`: closed-loop producers, each request awaited.

use super::report::{histogram, take, Progress, Report, Run};
use super::*;
use crate::admin;
use anyhow::bail;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub(super) async fn load(broker: &str, args: &LoadArgs, scenario: Scenario) -> anyhow::Result<Report> {
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let sender = Sender::connect(broker, scenario, &args.topic, args.sdk(), false).await?;
    let mut admin = admin::connect(broker).await?;
    // Warm up: creates the topic so that its creation is not measured.
    let run_id = micros_now();
    let body = vec![b'x'; args.size];
    sender.send(&args.topic, format!("W{run_id}"), &body).await?;

    let before = admin::fetch_status(&mut admin).await?;
    let latency = Arc::new(Mutex::new(histogram()));
    let (next, done, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let limit = args.count.unwrap_or(u64::MAX);
    let started = Instant::now();
    let deadline = if args.count.is_some() { None } else { Some(started + args.duration) };
    let progress = Progress::start("acked", done.clone());
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (sender, latency, next, done, errors) =
            (sender.clone(), latency.clone(), next.clone(), done.clone(), errors.clone());
        let (topic, body) = (args.topic.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut local = histogram();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= limit || deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let t = Instant::now();
                if sender.one(&topic, format!("B{run_id}-{i}"), &body, || {}).await {
                    let _ = local.record((t.elapsed().as_micros() as u64).max(1));
                    done.fetch_add(1, Ordering::Relaxed);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            if let Ok(mut h) = latency.lock() {
                let _ = h.add(local);
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    drop(progress);
    let after = admin::fetch_status(&mut admin).await?;
    let (scenario, result_name) = match scenario {
        Scenario::Send => (format!("send{}", args.mode()), format!("send-durable-{}B{}", args.size, args.mode())),
        Scenario::Txn => {
            (format!("txn (half + commit){}", args.mode()), format!("txn-half+commit-{}B{}", args.size, args.mode()))
        }
    };
    let run = Run {
        scenario,
        result_name,
        concurrency: args.concurrency,
        size: args.size,
        messages: done.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        seconds,
        latency: take(&latency),
        commit_latency: None,
    };
    Ok(Report::new(run, &before, &after))
}
