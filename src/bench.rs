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
    /// Transactional messages: half send + commit, each fsynced before its OK.
    Txn(LoadArgs),
    /// Receive + ack of a pre-filled backlog (acks fsynced), by several consumers.
    Consume(ConsumeArgs),
    /// End to end: producers send (or half + commit with --txn) while consumers receive and
    /// ack; latency is from the send to the consumer's receipt.
    E2e(E2eArgs),
}

#[derive(Debug, Clone, Args)]
pub struct E2eArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    /// Transactional messages (half + commit) instead of normal sends.
    #[arg(long)]
    pub txn: bool,
    /// Messages per second across all producers (0 = as fast as possible).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Concurrent consumers (each receives up to 32 and acks them concurrently).
    #[arg(long, default_value_t = 4)]
    pub consumers: usize,
}

#[derive(Debug, Clone, Args)]
pub struct ConsumeArgs {
    /// Messages stored before consumption starts.
    #[arg(long, default_value_t = 100_000)]
    pub backlog: u64,
    /// Concurrent consumers (each receives up to 32 and acks them one by one, concurrently).
    #[arg(long, default_value_t = 4)]
    pub consumers: usize,
    /// Body size in bytes.
    #[arg(long, default_value_t = 256)]
    pub size: usize,
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

impl Report {
    /// The report of a run: throughput over `seconds`, latency percentiles, and the broker's
    /// flushes between the `before` and `after` status readings.
    #[allow(clippy::too_many_arguments)]
    fn new(
        scenario: String,
        concurrency: usize,
        size: usize,
        messages: u64,
        errors: u64,
        seconds: f64,
        histogram: &Mutex<Histogram<u64>>,
        before: &admin::StatusView,
        after: &admin::StatusView,
    ) -> anyhow::Result<Self> {
        let h = histogram.lock().map_err(|_| anyhow::anyhow!("histogram lock poisoned"))?;
        let flushes = after.flushes.saturating_sub(before.flushes);
        let writes = after.flushed_writes.saturating_sub(before.flushed_writes);
        Ok(Report {
            scenario,
            concurrency,
            size,
            messages,
            errors,
            seconds,
            msgs_per_sec: messages as f64 / seconds,
            p50_ms: h.value_at_quantile(0.5) as f64 / 1000.0,
            p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
            p999_ms: h.value_at_quantile(0.999) as f64 / 1000.0,
            flushes,
            writes_per_flush: if flushes == 0 { 0.0 } else { writes as f64 / flushes as f64 },
        })
    }
}

pub async fn run(broker: &str, cmd: BenchCommand, out: Output) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Send(args) => {
            let report = load(broker, &args, Scenario::Send).await?;
            out.emit(&report, || render(&report))
        }
        BenchCommand::Txn(args) => {
            let report = load(broker, &args, Scenario::Txn).await?;
            out.emit(&report, || render(&report))
        }
        BenchCommand::Consume(args) => {
            let report = consume(broker, &args).await?;
            out.emit(&report, || render(&report))
        }
        BenchCommand::E2e(args) => {
            let report = e2e(broker, &args).await?;
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Send,
    Txn,
}

fn message(topic: &str, id: String, body: &[u8]) -> v2::Message {
    typed_message(topic, id, body, v2::MessageType::Normal)
}

fn typed_message(topic: &str, id: String, body: &[u8], t: v2::MessageType) -> v2::Message {
    v2::Message {
        topic: Some(v2::Resource { resource_namespace: String::new(), name: topic.to_string() }),
        user_properties: Default::default(),
        system_properties: Some(v2::SystemProperties {
            message_id: id,
            message_type: t as i32,
            body_encoding: v2::Encoding::Identity as i32,
            born_host: "txmq-bench".into(),
            ..Default::default()
        }),
        body: body.to_vec(),
    }
}

fn ok(s: Option<&v2::Status>) -> bool {
    s.is_some_and(|s| s.code == v2::Code::Ok as i32)
}

/// One unit of load: a send, or a half send plus its commit.
async fn one(client: &mut Client, scenario: Scenario, topic: &str, id: String, body: &[u8]) -> bool {
    match scenario {
        Scenario::Send => {
            let req = v2::SendMessageRequest { messages: vec![message(topic, id, body)] };
            matches!(client.send_message(req).await, Ok(r) if ok(r.get_ref().status.as_ref()))
        }
        Scenario::Txn => {
            let req = v2::SendMessageRequest {
                messages: vec![typed_message(topic, id.clone(), body, v2::MessageType::Transaction)],
            };
            let Ok(r) = client.send_message(req).await else { return false };
            let r = r.into_inner();
            let Some(entry) = r.entries.first().filter(|e| ok(e.status.as_ref())) else { return false };
            let end = v2::EndTransactionRequest {
                topic: Some(v2::Resource { resource_namespace: String::new(), name: topic.to_string() }),
                message_id: id,
                transaction_id: entry.transaction_id.clone(),
                resolution: v2::TransactionResolution::Commit as i32,
                source: v2::TransactionSource::SourceClient as i32,
                trace_context: String::new(),
            };
            matches!(client.end_transaction(end).await, Ok(r) if ok(r.get_ref().status.as_ref()))
        }
    }
}

type Client = MessagingServiceClient<tonic::transport::Channel>;

async fn connect(broker: &str) -> anyhow::Result<Client> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{broker}"))?
        .connect()
        .await
        .with_context(|| format!("cannot reach the broker at {broker}"))?;
    Ok(MessagingServiceClient::new(channel))
}

async fn load(broker: &str, args: &LoadArgs, scenario: Scenario) -> anyhow::Result<Report> {
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let client = connect(broker).await?;
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
                if one(&mut client, scenario, &topic, format!("B{run_id}-{i}"), &body).await {
                    if let Some(h) = local.as_mut() {
                        let _ = h.record(t.elapsed().as_micros() as u64);
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
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
    let messages = done.load(Ordering::Relaxed);
    let errors = errors.load(Ordering::Relaxed);
    let scenario = match scenario {
        Scenario::Send => "send".into(),
        Scenario::Txn => "txn (half + commit)".into(),
    };
    Report::new(scenario, args.concurrency, args.size, messages, errors, seconds, &histogram, &before, &after)
}

fn resource(name: &str) -> Option<v2::Resource> {
    Some(v2::Resource { resource_namespace: String::new(), name: name.to_string() })
}

/// Receives up to 32 messages of `topic` for `group` (1 s long poll, 60 s invisible) and acks
/// each one concurrently, as the official clients do (one ack per call); returns when the
/// receive answered (microseconds since the epoch) and the messages whose ack succeeded.
async fn receive_and_ack(client: &Client, group: &str, topic: &str) -> anyhow::Result<(u64, Vec<v2::Message>)> {
    let req = v2::ReceiveMessageRequest {
        group: resource(group),
        message_queue: Some(v2::MessageQueue { topic: resource(topic), ..Default::default() }),
        filter_expression: Some(v2::FilterExpression { r#type: v2::FilterType::Tag as i32, expression: "*".into() }),
        batch_size: 32,
        invisible_duration: Some(prost_types::Duration { seconds: 60, nanos: 0 }),
        auto_renew: false,
        long_polling_timeout: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
        attempt_id: None,
    };
    let mut stream = client.clone().receive_message(req).await?.into_inner();
    let mut acks = tokio::task::JoinSet::new();
    let mut received_at = micros_now();
    while let Some(item) = stream.message().await? {
        received_at = micros_now();
        let Some(v2::receive_message_response::Content::Message(m)) = item.content else { continue };
        let sp = m.system_properties.clone().unwrap_or_default();
        let ack = v2::AckMessageRequest {
            group: resource(group),
            topic: resource(topic),
            entries: vec![v2::AckMessageEntry {
                message_id: sp.message_id,
                receipt_handle: sp.receipt_handle.unwrap_or_default(),
                lite_topic: None,
            }],
        };
        let mut c = client.clone();
        acks.spawn(
            async move { matches!(c.ack_message(ack).await, Ok(r) if ok(r.get_ref().status.as_ref())).then_some(m) },
        );
    }
    let mut acked = Vec::new();
    while let Some(r) = acks.join_next().await {
        if let Ok(Some(m)) = r {
            acked.push(m);
        }
    }
    Ok((received_at, acked))
}

/// Fills a fresh topic with `backlog` messages (batched sends), then measures receive + ack.
async fn consume(broker: &str, args: &ConsumeArgs) -> anyhow::Result<Report> {
    let client = connect(broker).await?;
    let mut admin = admin::connect(broker).await?;
    let run_id = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_micros();
    let topic = format!("bench-consume-{run_id}");
    let group = format!("bench-group-{run_id}");
    let body = vec![b'x'; args.size];
    eprintln!("filling {} messages into {topic}", args.backlog);
    let next = Arc::new(AtomicU64::new(0));
    let mut fillers = Vec::new();
    for _ in 0..16 {
        let (mut client, next, topic, body, backlog) =
            (client.clone(), next.clone(), topic.clone(), body.clone(), args.backlog);
        fillers.push(tokio::spawn(async move {
            loop {
                let start = next.fetch_add(64, Ordering::Relaxed);
                if start >= backlog {
                    return Ok::<_, anyhow::Error>(());
                }
                let messages = (start..(start + 64).min(backlog))
                    .map(|i| message(&topic, format!("C{run_id}-{i}"), &body))
                    .collect();
                let r = client.send_message(v2::SendMessageRequest { messages }).await?.into_inner();
                if !ok(r.status.as_ref()) {
                    bail!("fill failed: {:?}", r.status);
                }
            }
        }));
    }
    for f in fillers {
        f.await??;
    }
    let before = admin::fetch_status(&mut admin).await?;
    let done = Arc::new(AtomicU64::new(0));
    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?));
    let started = Instant::now();
    let mut consumers = Vec::new();
    for _ in 0..args.consumers.max(1) {
        let (client, done, topic, group, backlog, histogram) =
            (client.clone(), done.clone(), topic.clone(), group.clone(), args.backlog, histogram.clone());
        consumers.push(tokio::spawn(async move {
            while done.load(Ordering::Relaxed) < backlog {
                let t = Instant::now();
                let acked = receive_and_ack(&client, &group, &topic).await?.1.len() as u64;
                if acked > 0 {
                    if let Ok(mut h) = histogram.lock() {
                        let _ = h.record(t.elapsed().as_micros() as u64);
                    }
                }
                done.fetch_add(acked, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for c in consumers {
        c.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let after = admin::fetch_status(&mut admin).await?;
    let messages = done.load(Ordering::Relaxed);
    let errors = 0;
    let scenario = format!("consume (receive 32 + ack each, backlog {})", args.backlog);
    Report::new(scenario, args.consumers, args.size, messages, errors, seconds, &histogram, &before, &after)
}

fn micros_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// Producers and consumers at once on a fresh topic; latency from send start to receipt.
async fn e2e(broker: &str, args: &E2eArgs) -> anyhow::Result<Report> {
    let client = connect(broker).await?;
    let mut admin = admin::connect(broker).await?;
    let run_id = micros_now();
    let topic = format!("bench-e2e-{run_id}");
    let group = format!("bench-e2e-group-{run_id}");
    let load = &args.load;
    // Creates the topic and the group (at the earliest offset) before measuring.
    one(&mut client.clone(), Scenario::Send, &topic, format!("W{run_id}"), b"warm-up").await;
    let before = admin::fetch_status(&mut admin).await?;
    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?));
    let (next, received, errors) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let limit = load.count.unwrap_or(u64::MAX);
    let started = Instant::now();
    let deadline = if load.count.is_some() { None } else { Some(started + load.duration) };
    let scenario = if args.txn { Scenario::Txn } else { Scenario::Send };
    let pace = (args.rate > 0).then(|| Duration::from_secs_f64(load.concurrency as f64 / args.rate as f64));
    let mut producers = Vec::new();
    for _ in 0..load.concurrency.max(1) {
        let (mut client, next, errors, topic) = (client.clone(), next.clone(), errors.clone(), topic.clone());
        let size = load.size;
        producers.push(tokio::spawn(async move {
            let mut tick = pace.map(tokio::time::interval);
            loop {
                if let Some(t) = tick.as_mut() {
                    t.tick().await;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= limit || deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                // The body starts with the send time, so the consumer can measure latency.
                let mut body = micros_now().to_be_bytes().to_vec();
                body.resize(size.max(8), b'x');
                if !one(&mut client, scenario, &topic, format!("E{run_id}-{i}"), &body).await {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let producing_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut consumers = Vec::new();
    for _ in 0..args.consumers.max(1) {
        let (client, received, histogram, topic, group, next, done) = (
            client.clone(),
            received.clone(),
            histogram.clone(),
            topic.clone(),
            group.clone(),
            next.clone(),
            producing_done.clone(),
        );
        consumers.push(tokio::spawn(async move {
            let mut idle_after_done = 0;
            loop {
                let sent = next.load(Ordering::Relaxed).min(limit);
                if done.load(Ordering::Relaxed) && (received.load(Ordering::Relaxed) + 1 >= sent || idle_after_done > 3)
                {
                    return Ok::<_, anyhow::Error>(());
                }
                let mut got = 0;
                let (now, messages) = receive_and_ack(&client, &group, &topic).await?;
                for m in messages {
                    let sent_at =
                        m.body.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes).unwrap_or(now);
                    if m.body != b"warm-up" {
                        if let Ok(mut h) = histogram.lock() {
                            let _ = h.record(now.saturating_sub(sent_at).max(1));
                        }
                        got += 1;
                    }
                }
                received.fetch_add(got, Ordering::Relaxed);
                idle_after_done = if got == 0 && done.load(Ordering::Relaxed) { idle_after_done + 1 } else { 0 };
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
    let seconds = started.elapsed().as_secs_f64();
    let after = admin::fetch_status(&mut admin).await?;
    let messages = received.load(Ordering::Relaxed);
    let errors = errors.load(Ordering::Relaxed);
    let scenario = format!(
        "e2e {} (send to receipt{})",
        if args.txn { "txn" } else { "normal" },
        if args.rate > 0 { format!(", paced at {}/s", args.rate) } else { String::new() }
    );
    Report::new(scenario, load.concurrency, load.size, messages, errors, seconds, &histogram, &before, &after)
}
