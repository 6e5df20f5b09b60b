//! `txmq bench`: load generators against a running broker over real gRPC.
//!
//! Every send is acknowledged durably by the broker (fsync before OK), as a user's would be.
//! The report gives throughput and latency percentiles, and the broker's own count of flushes
//! during the run, so `writes per flush` shows how well group commit batches.
//!
//! # Layout
//! - this module: the commands and their arguments, and the client helpers every scenario uses
//!   (producers are the SDK's; consumers speak raw gRPC where the SDK has no equivalent call:
//!   one receive of up to 32 messages, acked in one call with `--ack-batch`);
//! - [`report`]: what a run measured, its text and JSON forms, the live progress line;
//! - [`load`]: `send` and `txn`; [`consume`]: `consume`; [`e2e`]: `e2e`;
//!   [`checkback`]: `checkback`.

mod checkback;
mod consume;
mod e2e;
mod load;
mod report;

use crate::output::Output;
use anyhow::Context;
use clap::{Args, Subcommand};
use std::time::Duration;
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
    /// With --txn --sdk: commit one way, as the SDK's `send_in_db_transaction` does (the
    /// commit is handed off and the next transaction starts without waiting for the broker's
    /// answer; the broker still makes it durable before a consumer sees the message). Result
    /// names end in `-oneway`.
    #[arg(long, requires = "txn", requires = "sdk")]
    pub oneway: bool,
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
    /// Send as an application using the txmq SDK does: natural batching (sends, and with
    /// --txn commits, made while others are in flight leave together in one request, each with
    /// its own result). Without: one request per send and per commit, as the official
    /// RocketMQ clients send. Result names end in `-sdk`.
    #[arg(long)]
    pub sdk: bool,
    /// With --sdk: requests of sends (half messages included), of acks and of one-way commits
    /// in flight at once.
    #[arg(long, default_value_t = txmq_client::Batching::default().in_flight)]
    pub sdk_in_flight: usize,
    /// With --sdk: requests of awaited transaction decisions in flight at once.
    #[arg(long, default_value_t = txmq_client::Batching::default().decisions_in_flight)]
    pub sdk_decisions_in_flight: usize,
    /// With --sdk: one unary call per request, not the SDK's stream of calls (to measure one
    /// against the other; result names are unchanged).
    #[arg(long, requires = "sdk")]
    pub sdk_unary_calls: bool,
}

impl LoadArgs {
    /// SDK runs: the SDK's batching bounds, and whether its calls go on its stream (`None`:
    /// not an SDK run, one unary call per request as the official clients make them).
    pub(super) fn sdk(&self) -> Option<(txmq_client::Batching, bool)> {
        let batching = txmq_client::Batching {
            in_flight: self.sdk_in_flight,
            decisions_in_flight: self.sdk_decisions_in_flight,
            ..txmq_client::Batching::default()
        };
        self.sdk.then_some((batching, !self.sdk_unary_calls))
    }

    /// The suffix of result names: `-sdk` for SDK runs.
    pub(super) fn mode(&self) -> &'static str {
        if self.sdk {
            "-sdk"
        } else {
            ""
        }
    }
}

/// Runs one scenario against `broker` and prints its report.
pub async fn run(broker: &str, cmd: BenchCommand, out: Output) -> anyhow::Result<()> {
    let report = match cmd {
        BenchCommand::Send(args) => load::load(broker, &args, Scenario::Send).await?,
        BenchCommand::Txn(args) => load::load(broker, &args, Scenario::Txn).await?,
        BenchCommand::Consume(args) => consume::consume(broker, &args).await?,
        BenchCommand::E2e(args) => e2e::e2e(broker, &args).await?,
        BenchCommand::Checkback(args) => checkback::checkback(broker, &args).await?,
    };
    out.emit(&report, || report::render(&report))
}

/// What one unit of `send`/`txn` load is: a send, or a half send plus its commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scenario {
    Send,
    Txn,
}

pub(super) fn resource(name: &str) -> Option<v2::Resource> {
    Some(v2::Resource { resource_namespace: String::new(), name: name.to_string() })
}

pub(super) fn ok(s: Option<&v2::Status>) -> bool {
    s.is_some_and(|s| s.code == v2::Code::Ok as i32)
}

/// The SDK producer a scenario sends with (unbatched and one unary call per request unless
/// `--sdk`): plain, or transactional (whose check-backs, if any
/// come, answer "commit": every half message of a run is committed by the run itself).
#[derive(Clone)]
pub(super) enum Sender {
    Plain(txmq_client::Producer),
    /// A transactional producer, and whether it commits one way.
    Txn(std::sync::Arc<txmq_client::TransactionProducer>, bool),
}

impl Sender {
    /// Connects one SDK producer (one HTTP/2 connection, shared by every task of the run).
    pub(super) async fn connect(
        broker: &str,
        scenario: Scenario,
        topic: &str,
        sdk: Option<(txmq_client::Batching, bool)>,
        oneway: bool,
    ) -> anyhow::Result<Self> {
        let (batching, stream_calls) = sdk.unwrap_or_else(|| (txmq_client::Batching::off(), false));
        let config = txmq_client::ClientConfig {
            stream_calls,
            ..crate::connection::client_config(broker).with_batching(batching)
        };
        Ok(match scenario {
            Scenario::Send => Sender::Plain(
                txmq_client::Producer::connect(config, &[topic])
                    .await
                    .with_context(|| format!("cannot reach the broker at {broker}"))?,
            ),
            Scenario::Txn => Sender::Txn(
                std::sync::Arc::new(
                    txmq_client::TransactionProducer::connect(config, &[topic], std::sync::Arc::new(CommitAll))
                        .await
                        .with_context(|| format!("cannot reach the broker at {broker}"))?,
                ),
                oneway,
            ),
        })
    }

    /// One unit of load: a send, or a half send plus its commit (`committing` runs just before
    /// the commit is sent). True when every call answered OK.
    pub(super) async fn one(&self, topic: &str, id: String, body: &[u8], committing: impl FnOnce()) -> bool {
        let message = txmq_client::Message::new(topic, body.to_vec()).with_id(id);
        match self {
            Sender::Plain(p) => p.send(message).await.is_ok(),
            Sender::Txn(p, oneway) => {
                let Ok(pending) = p.begin(message).await else { return false };
                committing();
                if *oneway {
                    // Its failure shows as a message the consumers never receive.
                    pending.commit_oneway().await;
                    true
                } else {
                    pending.commit().await.is_ok()
                }
            }
        }
    }

    /// Sends one plain message (warm-ups), whatever the scenario.
    pub(super) async fn send(&self, topic: &str, id: String, body: &[u8]) -> anyhow::Result<()> {
        let p = match self {
            Sender::Plain(p) => p,
            Sender::Txn(p, _) => p.producer(),
        };
        p.send(txmq_client::Message::new(topic, body.to_vec()).with_id(id)).await?;
        Ok(())
    }
}

/// Answers every check-back with commit.
struct CommitAll;

#[async_trait::async_trait]
impl txmq_client::TransactionChecker for CommitAll {
    async fn check(&self, _request: &txmq_client::CheckRequest) -> txmq_client::Resolution {
        txmq_client::Resolution::Commit
    }
}

pub(super) type Client = MessagingServiceClient<crate::connection::Signed>;

/// One HTTP/2 connection to the broker (`TCP_NODELAY`, as every gRPC client sets).
pub(super) async fn connect(broker: &str) -> anyhow::Result<Client> {
    Ok(MessagingServiceClient::new(crate::connection::connect(broker).await?))
}

pub(super) fn micros_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// A body of `size` bytes (at least 8) that starts with the current time in microseconds.
pub(super) fn stamped_body(size: usize) -> Vec<u8> {
    stamped_body_at(size, micros_now())
}

/// A body of `size` bytes (at least 8) that starts with `at`, in microseconds since the epoch.
pub(super) fn stamped_body_at(size: usize, at: u64) -> Vec<u8> {
    let mut body = at.to_be_bytes().to_vec();
    body.resize(size.max(8), b'x');
    body
}

pub(super) fn stamp(body: &[u8]) -> Option<u64> {
    body.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes)
}
