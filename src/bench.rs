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
use txmq_client::{CheckRequest, ClientConfig, Resolution, TransactionChecker, TransactionProducer};
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
    /// ack; latency is from the send to the consumer's receipt (and, with --txn, also from the
    /// commit to the receipt).
    E2e(E2eArgs),
    /// Check-back: many half messages left pending, then resolved by the broker's check-backs
    /// over the Telemetry stream (answered "commit" by this producer); measures checks/s.
    Checkback(CheckbackArgs),
}

#[derive(Debug, Clone, Args)]
pub struct CheckbackArgs {
    /// Half messages to leave pending.
    #[arg(long, default_value_t = 10_000)]
    pub count: u64,
    /// Half sends in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Body size in bytes.
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// Age at which the broker first checks each half message (set on the message); longer
    /// than sending them all takes, so that the checks run as one burst.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub check_after: Duration,
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
    /// Ack each receive's messages with one AckMessage call (the protocol allows several
    /// entries; the official clients send one per message).
    #[arg(long)]
    pub ack_batch: bool,
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
    /// Ack each receive's messages with one AckMessage call.
    #[arg(long)]
    pub ack_batch: bool,
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
    /// Topic for `send` and `txn` (created on first use); `e2e` uses a fresh topic each run.
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
    /// Transactional e2e only: latency from the commit call to the consumer's receipt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit_to_receipt: Option<Percentiles>,
    /// The scenario's name in the peers' `RESULT` lines (shared/peers/README.md).
    pub result_name: String,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Serialize, Clone, Copy)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Self {
        let at = |q| h.value_at_quantile(q) as f64 / 1000.0;
        Percentiles { p50_ms: at(0.5), p99_ms: at(0.99), p999_ms: at(0.999) }
    }
}

/// A latency histogram in microseconds, 1 µs to 60 s.
fn histogram() -> Histogram<u64> {
    // The sum of no histograms is an empty, auto-resizing one with 3 significant figures.
    std::iter::empty().sum()
}

fn record(h: &Mutex<Histogram<u64>>, micros: u64) {
    if let Ok(mut h) = h.lock() {
        let _ = h.record(micros.clamp(1, 60_000_000));
    }
}

/// What a scenario measured, before the broker's counters are added.
struct Run {
    scenario: String,
    result_name: String,
    concurrency: usize,
    size: usize,
    messages: u64,
    errors: u64,
    seconds: f64,
    latency: Histogram<u64>,
    commit_latency: Option<Histogram<u64>>,
}

impl Report {
    /// The report of a run, with the broker's flushes between the `before` and `after` status
    /// readings.
    fn new(run: Run, before: &admin::StatusView, after: &admin::StatusView) -> Self {
        let flushes = after.flushes.saturating_sub(before.flushes);
        let writes = after.flushed_writes.saturating_sub(before.flushed_writes);
        let latency = Percentiles::of(&run.latency);
        Report {
            scenario: run.scenario,
            concurrency: run.concurrency,
            size: run.size,
            messages: run.messages,
            errors: run.errors,
            seconds: run.seconds,
            msgs_per_sec: run.messages as f64 / run.seconds.max(1e-3),
            p50_ms: latency.p50_ms,
            p99_ms: latency.p99_ms,
            p999_ms: latency.p999_ms,
            flushes,
            writes_per_flush: if flushes == 0 { 0.0 } else { writes as f64 / flushes as f64 },
            commit_to_receipt: run.commit_latency.as_ref().map(Percentiles::of),
            result_name: run.result_name,
        }
    }
}

pub async fn run(broker: &str, cmd: BenchCommand, out: Output) -> anyhow::Result<()> {
    let report = match cmd {
        BenchCommand::Send(args) => load(broker, &args, Scenario::Send).await?,
        BenchCommand::Txn(args) => load(broker, &args, Scenario::Txn).await?,
        BenchCommand::Consume(args) => consume(broker, &args).await?,
        BenchCommand::E2e(args) => e2e(broker, &args).await?,
        BenchCommand::Checkback(args) => checkback(broker, &args).await?,
    };
    out.emit(&report, || render(&report))
}

/// Two lines for people, then the `RESULT` line that shared/peers/tools read, so that txmq and
/// its peers land in one table (`bench/compare.sh`).
fn render(r: &Report) -> String {
    let us = |ms: f64| (ms * 1000.0).round() as u64;
    let mut text = format!(
        "{}: {} msgs in {:.1}s = {:.0} msgs/s ({} in flight, {} B), p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms, {} errors\n",
        r.scenario, r.messages, r.seconds, r.msgs_per_sec, r.concurrency, r.size, r.p50_ms, r.p99_ms, r.p999_ms, r.errors,
    );
    let mut extra = format!("p999_us={},writes_per_flush={:.1},errors={}", us(r.p999_ms), r.writes_per_flush, r.errors);
    let (mut p50, mut p99) = (us(r.p50_ms), us(r.p99_ms));
    if let Some(c) = &r.commit_to_receipt {
        text +=
            &format!("commit to receipt: p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms\n", c.p50_ms, c.p99_ms, c.p999_ms);
        // The transactional rows compare commit-to-consumer latency; send-to-receipt goes to extra.
        extra += &format!(",send_p50_us={p50},send_p99_us={p99},commit_p999_us={}", us(c.p999_ms));
        (p50, p99) = (us(c.p50_ms), us(c.p99_ms));
    }
    text += &format!("broker: {} flushes, {:.1} writes per flush\n", r.flushes, r.writes_per_flush);
    text += &format!(
        "RESULT system=txmq scenario={} clients={} msgs={} secs={:.3} rate={:.1} p50_us={p50} p99_us={p99} \
         durability=fsync-before-ok extra={extra}\n",
        r.result_name, r.concurrency, r.messages, r.seconds, r.msgs_per_sec
    );
    text
}

/// A live progress line on stderr, one update a second, until dropped.
struct Progress(tokio::task::JoinHandle<()>);

impl Progress {
    fn start(what: &'static str, counter: Arc<AtomicU64>) -> Self {
        Progress(tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let now = counter.load(Ordering::Relaxed);
                eprint!("\r{now} {what}, {} msgs/s    ", now - last);
                last = now;
            }
        }))
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.0.abort();
        eprintln!();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Send,
    Txn,
}

fn resource(name: &str) -> Option<v2::Resource> {
    Some(v2::Resource { resource_namespace: String::new(), name: name.to_string() })
}

fn message(topic: &str, id: String, body: &[u8]) -> v2::Message {
    typed_message(topic, id, body, v2::MessageType::Normal)
}

fn typed_message(topic: &str, id: String, body: &[u8], t: v2::MessageType) -> v2::Message {
    v2::Message {
        topic: resource(topic),
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

/// One unit of load: a send, or a half send plus its commit (`committing` runs just before the
/// commit is sent). True when every call answered OK.
async fn one(
    client: &mut Client,
    scenario: Scenario,
    topic: &str,
    id: String,
    body: &[u8],
    committing: impl FnOnce(),
) -> bool {
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
                topic: resource(topic),
                message_id: id,
                transaction_id: entry.transaction_id.clone(),
                resolution: v2::TransactionResolution::Commit as i32,
                source: v2::TransactionSource::SourceClient as i32,
                trace_context: String::new(),
            };
            committing();
            matches!(client.end_transaction(end).await, Ok(r) if ok(r.get_ref().status.as_ref()))
        }
    }
}

type Client = MessagingServiceClient<tonic::transport::Channel>;

/// One HTTP/2 connection to the broker (`TCP_NODELAY`, as every gRPC client sets).
async fn connect(broker: &str) -> anyhow::Result<Client> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{broker}"))?
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("cannot reach the broker at {broker}"))?;
    Ok(MessagingServiceClient::new(channel))
}

fn micros_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// A body of `size` bytes (at least 8) that starts with the current time in microseconds.
fn stamped_body(size: usize) -> Vec<u8> {
    let mut body = micros_now().to_be_bytes().to_vec();
    body.resize(size.max(8), b'x');
    body
}

fn stamp(body: &[u8]) -> Option<u64> {
    body.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes)
}

async fn load(broker: &str, args: &LoadArgs, scenario: Scenario) -> anyhow::Result<Report> {
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let client = connect(broker).await?;
    let mut admin = admin::connect(broker).await?;
    // Warm up: creates the topic so that its creation is not measured.
    let run_id = micros_now();
    let body = vec![b'x'; args.size];
    client
        .clone()
        .send_message(v2::SendMessageRequest { messages: vec![message(&args.topic, format!("W{run_id}"), &body)] })
        .await?;

    let before = admin::fetch_status(&mut admin).await?;
    let latency = Arc::new(Mutex::new(histogram()));
    let (next, done, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let limit = args.count.unwrap_or(u64::MAX);
    let started = Instant::now();
    let deadline = if args.count.is_some() { None } else { Some(started + args.duration) };
    let progress = Progress::start("acked", done.clone());
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (mut client, latency, next, done, errors) =
            (client.clone(), latency.clone(), next.clone(), done.clone(), errors.clone());
        let (topic, body) = (args.topic.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut local = histogram();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= limit || deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let t = Instant::now();
                if one(&mut client, scenario, &topic, format!("B{run_id}-{i}"), &body, || {}).await {
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
        Scenario::Send => ("send".into(), format!("send-durable-{}B", args.size)),
        Scenario::Txn => ("txn (half + commit)".into(), format!("txn-half+commit-{}B", args.size)),
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

fn take(h: &Mutex<Histogram<u64>>) -> Histogram<u64> {
    h.lock().map(|mut h| std::mem::replace(&mut *h, histogram())).unwrap_or_else(|_| histogram())
}

/// Most ack calls a bench consumer has in flight before it waits for one. Four consumers stay
/// well under the broker's limit of 1,024 requests in progress per client, beyond which calls
/// are answered "too many requests".
const MAX_UNACKED: usize = 128;

/// A consumer that keeps receiving while its acks are in flight, as a push consumer does: each
/// receive asks for up to 32 messages (1 s long poll, 60 s invisible), and every message gets
/// its own ack call, as the official clients send them. A message counts once its ack succeeded.
struct AckingConsumer {
    client: Client,
    group: String,
    topic: String,
    /// Each ack call: how many of its entries succeeded, and when it finished (µs since the
    /// epoch).
    acks: tokio::task::JoinSet<(u64, u64, u64)>,
    /// Messages whose ack call has not answered yet.
    unacked: u64,
    /// One ack call per receive instead of one per message.
    batch: bool,
}

/// Acks that finished successfully, and when the last of them did (µs since the epoch).
#[derive(Default)]
struct Acked {
    count: u64,
    last: u64,
}

impl Acked {
    /// Counts one finished ack call; returns how many messages it carried.
    fn add(&mut self, r: Option<Result<(u64, u64, u64), tokio::task::JoinError>>) -> u64 {
        match r {
            Some(Ok((sent, acked, at))) => {
                if acked > 0 {
                    self.count += acked;
                    self.last = self.last.max(at);
                }
                sent
            }
            _ => 0,
        }
    }

    /// Adds these acks to the run's totals.
    fn publish(&self, total: &AtomicU64, last: &AtomicU64) {
        if self.count > 0 {
            total.fetch_add(self.count, Ordering::Relaxed);
            last.fetch_max(self.last, Ordering::Relaxed);
        }
    }
}

impl AckingConsumer {
    fn new(client: Client, group: &str, topic: &str, batch: bool) -> Self {
        let acks = tokio::task::JoinSet::new();
        Self { client, group: group.to_string(), topic: topic.to_string(), acks, unacked: 0, batch }
    }

    /// One receive; starts the acks of what it got. Returns when it answered (µs since the
    /// epoch) and the messages.
    async fn receive(&mut self) -> anyhow::Result<(u64, Vec<v2::Message>)> {
        let req = v2::ReceiveMessageRequest {
            group: resource(&self.group),
            message_queue: Some(v2::MessageQueue { topic: resource(&self.topic), ..Default::default() }),
            filter_expression: Some(v2::FilterExpression {
                r#type: v2::FilterType::Tag as i32,
                expression: "*".into(),
            }),
            batch_size: 32,
            invisible_duration: Some(prost_types::Duration { seconds: 60, nanos: 0 }),
            auto_renew: false,
            long_polling_timeout: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
            attempt_id: None,
        };
        let mut stream = self.client.clone().receive_message(req).await?.into_inner();
        let mut received_at = micros_now();
        let mut messages = Vec::new();
        while let Some(item) = stream.message().await? {
            if let Some(v2::receive_message_response::Content::Message(m)) = item.content {
                received_at = micros_now();
                messages.push(m);
            }
        }
        let entries: Vec<v2::AckMessageEntry> = messages
            .iter()
            .map(|m| {
                let sp = m.system_properties.clone().unwrap_or_default();
                v2::AckMessageEntry {
                    message_id: sp.message_id,
                    receipt_handle: sp.receipt_handle.unwrap_or_default(),
                    lite_topic: None,
                }
            })
            .collect();
        let calls: Vec<Vec<v2::AckMessageEntry>> = if self.batch {
            vec![entries].into_iter().filter(|e| !e.is_empty()).collect()
        } else {
            entries.into_iter().map(|e| vec![e]).collect()
        };
        for entries in calls {
            self.unacked += entries.len() as u64;
            let ack = v2::AckMessageRequest { group: resource(&self.group), topic: resource(&self.topic), entries };
            let mut c = self.client.clone();
            self.acks.spawn(async move {
                let sent = ack.entries.len() as u64;
                let acked = match c.ack_message(ack).await {
                    Ok(r) => r.get_ref().entries.iter().filter(|e| ok(e.status.as_ref())).count() as u64,
                    Err(_) => 0,
                };
                (sent, acked, micros_now())
            });
        }
        Ok((received_at, messages))
    }

    /// Successful acks finished so far; waits for one first when too many are in flight.
    async fn reap(&mut self) -> Acked {
        let mut acked = Acked::default();
        if self.acks.len() >= MAX_UNACKED {
            self.unacked -= acked.add(self.acks.join_next().await);
        }
        while let Some(r) = self.acks.try_join_next() {
            self.unacked -= acked.add(Some(r));
        }
        acked
    }

    /// Acks still in flight.
    fn unacked(&self) -> u64 {
        self.unacked
    }

    /// Waits for every ack; returns the successful ones.
    async fn finish(&mut self) -> Acked {
        let mut acked = Acked::default();
        while let Some(r) = self.acks.join_next().await {
            self.unacked -= acked.add(Some(r));
        }
        acked
    }
}

/// Fills a fresh topic with `backlog` messages (batched sends), then measures receive + ack.
async fn consume(broker: &str, args: &ConsumeArgs) -> anyhow::Result<Report> {
    let client = connect(broker).await?;
    let mut admin = admin::connect(broker).await?;
    let run_id = micros_now();
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
    let latency = Arc::new(Mutex::new(histogram()));
    let started = Instant::now();
    let progress = Progress::start("received and acked", done.clone());
    let mut consumers = Vec::new();
    let ack_batch = args.ack_batch;
    for _ in 0..args.consumers.max(1) {
        let (client, done, topic, group, backlog, latency) =
            (client.clone(), done.clone(), topic.clone(), group.clone(), args.backlog, latency.clone());
        consumers.push(tokio::spawn(async move {
            let mut consumer = AckingConsumer::new(client, &group, &topic, ack_batch);
            let mut idle = 0;
            while done.load(Ordering::Relaxed) + consumer.unacked() < backlog && idle < 5 {
                let t = Instant::now();
                let got = consumer.receive().await?.1.len();
                if got > 0 {
                    record(&latency, t.elapsed().as_micros() as u64);
                }
                idle = if got == 0 { idle + 1 } else { 0 };
                done.fetch_add(consumer.reap().await.count, Ordering::Relaxed);
            }
            done.fetch_add(consumer.finish().await.count, Ordering::Relaxed);
            Ok::<_, anyhow::Error>(())
        }));
    }
    for c in consumers {
        c.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    drop(progress);
    let after = admin::fetch_status(&mut admin).await?;
    let messages = done.load(Ordering::Relaxed);
    let run = Run {
        scenario: format!(
            "consume (receive 32 + {}, backlog {}; latency of one receive)",
            if args.ack_batch { "one ack call for them" } else { "one ack call each" },
            args.backlog
        ),
        result_name: format!(
            "consume-receive32+ack-{}-{}B",
            if args.ack_batch { "batched" } else { "each" },
            args.size
        ),
        concurrency: args.consumers,
        size: args.size,
        messages,
        errors: args.backlog.saturating_sub(messages),
        seconds,
        latency: take(&latency),
        commit_latency: None,
    };
    Ok(Report::new(run, &before, &after))
}

/// Producers and consumers at once on a fresh topic. Latency is from the send (with --txn also
/// from the commit) to the consumer's receipt; throughput counts messages received and acked,
/// up to the last receipt.
async fn e2e(broker: &str, args: &E2eArgs) -> anyhow::Result<Report> {
    let load = &args.load;
    if load.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let producer_client = connect(broker).await?;
    let consumer_client = connect(broker).await?;
    let mut admin = admin::connect(broker).await?;
    let run_id = micros_now();
    let topic = format!("bench-e2e-{run_id}");
    let group = format!("bench-e2e-group-{run_id}");
    // Creates the topic and the group (at the earliest offset) before measuring.
    one(&mut producer_client.clone(), Scenario::Send, &topic, format!("W{run_id}"), b"warm-up", || {}).await;
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
    let scenario = if args.txn { Scenario::Txn } else { Scenario::Send };
    // Open-loop pacing as in the peers' benchmarks: message i is due at start + i / rate.
    let rate = args.rate;
    let progress = Progress::start("received and acked", received.clone());
    let mut producers = Vec::new();
    for _ in 0..load.concurrency {
        let (mut client, next, sent, errors, topic, commits) =
            (producer_client.clone(), next.clone(), sent.clone(), errors.clone(), topic.clone(), commits.clone());
        let size = load.size;
        producers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= limit {
                    break;
                }
                if rate > 0 {
                    tokio::time::sleep_until((started + Duration::from_secs_f64(i as f64 / rate as f64)).into()).await;
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                // The body starts with the send time, so the consumer can measure latency.
                let body = stamped_body(size);
                let committing = || {
                    if let Ok(mut c) = commits.lock() {
                        c.insert(i, micros_now());
                    }
                };
                if one(&mut client, scenario, &topic, format!("E{run_id}-{i}"), &body, committing).await {
                    sent.fetch_add(1, Ordering::Relaxed);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let producing_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ack_batch = args.ack_batch;
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
            "e2e-{}+receive+ack{}-{}B{paced}",
            if args.txn { "txn-half+commit" } else { "send" },
            if args.ack_batch { "-batched" } else { "" },
            load.size
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
async fn checkback(broker: &str, args: &CheckbackArgs) -> anyhow::Result<Report> {
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
    let producer = TransactionProducer::connect(ClientConfig::new(broker), &[topic.as_str()], checker.clone()).await?;
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
