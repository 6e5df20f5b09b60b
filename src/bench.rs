//! `txmq bench`: load generators against a running broker over real gRPC.
//!
//! Every send is acknowledged durably by the broker (fsync before OK), as a user's would be.
//! The report gives throughput and latency percentiles, and the broker's own count of flushes
//! during the run, so `writes per flush` shows how well group commit batches.

use crate::admin;
use crate::output::Output;
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use txmq_proto::v2;
use v2::messaging_service_client::MessagingServiceClient;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Normal sends: each is stored and fsynced before its OK.
    Send(LoadArgs),
}

#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// How long to run (e.g. 10s); ignored when --count is given.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Stop after this many messages.
    #[arg(long)]
    pub count: Option<u64>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Body size in bytes.
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// Topic to use (created on first use).
    #[arg(long, default_value = "bench")]
    pub topic: String,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: String,
    pub concurrency: usize,
    pub size: usize,
    pub messages: u64,
    pub errors: u64,
    pub seconds: f64,
    pub msgs_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub flushes: u64,
    pub writes_per_flush: f64,
}

pub async fn run(broker: &str, cmd: BenchCommand, out: Output) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Send(args) => {
            let report = send(broker, &args).await?;
            out.emit(&report, || render(&report))
        }
    }
}

fn render(r: &Report) -> String {
    format!(
        "{}: {} msgs in {:.1}s = {:.0} msgs/s ({} in flight, {} B), p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms, {} errors\n\
         broker: {} flushes, {:.1} writes per flush\n",
        r.scenario, r.messages, r.seconds, r.msgs_per_sec, r.concurrency, r.size, r.p50_ms, r.p99_ms, r.p999_ms, r.errors,
        r.flushes, r.writes_per_flush
    )
}

fn message(topic: &str, id: String, body: &[u8]) -> v2::Message {
    v2::Message {
        topic: Some(v2::Resource { resource_namespace: String::new(), name: topic.to_string() }),
        user_properties: Default::default(),
        system_properties: Some(v2::SystemProperties {
            message_id: id,
            message_type: v2::MessageType::Normal as i32,
            body_encoding: v2::Encoding::Identity as i32,
            born_host: "txmq-bench".into(),
            ..Default::default()
        }),
        body: body.to_vec(),
    }
}

async fn send(broker: &str, args: &LoadArgs) -> anyhow::Result<Report> {
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{broker}"))?
        .connect()
        .await
        .with_context(|| format!("cannot reach the broker at {broker}"))?;
    let client = MessagingServiceClient::new(channel);
    let mut admin = admin::connect(broker).await?;
    // Warm up: creates the topic so that its creation is not measured.
    let run_id = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_micros();
    let body = vec![b'x'; args.size];
    client
        .clone()
        .send_message(v2::SendMessageRequest { messages: vec![message(&args.topic, format!("W{run_id}"), &body)] })
        .await?;

    let before = admin::fetch_status(&mut admin).await?;
    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?));
    let (next, done, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let limit = args.count.unwrap_or(u64::MAX);
    let started = Instant::now();
    let deadline = if args.count.is_some() { None } else { Some(started + args.duration) };
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (mut client, histogram, next, done, errors) =
            (client.clone(), histogram.clone(), next.clone(), done.clone(), errors.clone());
        let (topic, body) = (args.topic.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).ok();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= limit || deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let t = Instant::now();
                let req = v2::SendMessageRequest { messages: vec![message(&topic, format!("B{run_id}-{i}"), &body)] };
                match client.send_message(req).await {
                    Ok(r) if r.get_ref().status.as_ref().is_some_and(|s| s.code == v2::Code::Ok as i32) => {
                        if let Some(h) = local.as_mut() {
                            let _ = h.record(t.elapsed().as_micros() as u64);
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            if let (Some(l), Ok(mut h)) = (local, histogram.lock()) {
                let _ = h.add(l);
            }
        }));
    }
    let progress = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let now = done.load(Ordering::Relaxed);
                eprint!("\r{now} sent, {} msgs/s    ", now - last);
                last = now;
            }
        })
    };
    for t in tasks {
        t.await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    progress.abort();
    eprintln!();
    let after = admin::fetch_status(&mut admin).await?;
    let h = histogram.lock().map_err(|_| anyhow::anyhow!("histogram lock poisoned"))?;
    let messages = done.load(Ordering::Relaxed);
    let flushes = after.flushes.saturating_sub(before.flushes);
    let writes = after.flushed_writes.saturating_sub(before.flushed_writes);
    Ok(Report {
        scenario: "send".into(),
        concurrency: args.concurrency,
        size: args.size,
        messages,
        errors: errors.load(Ordering::Relaxed),
        seconds,
        msgs_per_sec: messages as f64 / seconds,
        p50_ms: h.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
        p999_ms: h.value_at_quantile(0.999) as f64 / 1000.0,
        flushes,
        writes_per_flush: if flushes == 0 { 0.0 } else { writes as f64 / flushes as f64 },
    })
}
