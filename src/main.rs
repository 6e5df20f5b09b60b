//! `txmq`: the operator CLI. Talks to a broker's admin service (and, for `bench`, to its
//! RocketMQ service) over gRPC.
//!
//! # Layout
//! - `admin`: topic and status commands.
//! - `txn`: in-doubt transactions: list, timeline, operator decisions.
//! - `group`: consumer groups and dead letters.
//! - `msg`: messages by id or key.
//! - `bench`: load generators that print throughput and latency.
//! - `output`: human tables and `--json`.

mod admin;
mod bench;
mod group;
mod msg;
mod output;
mod txn;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "txmq",
    version,
    about = "Operate a txmq broker: topics, transactions, groups, messages, dead letters, benchmarks"
)]
struct Cli {
    /// Broker address, host:port.
    #[arg(long, global = true, env = "TXMQ_BROKER", default_value = "127.0.0.1:8081")]
    broker: String,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, list and describe topics.
    #[command(subcommand)]
    Topic(admin::TopicCommand),
    /// Transactions (half messages): list, show timeline, commit, rollback, resume.
    #[command(subcommand)]
    Txn(txn::TxnCommand),
    /// Consumer groups: list, describe backlog and in-flight messages.
    #[command(subcommand)]
    Group(group::GroupCommand),
    /// Messages by id or key.
    #[command(subcommand)]
    Msg(msg::MsgCommand),
    /// Dead letters of a consumer group: list, resend.
    #[command(subcommand)]
    Dlq(group::DlqCommand),
    /// Broker version, uptime, store state and counters.
    Status,
    /// Measure the broker.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = output::Output { json: cli.json };
    let result = match cli.command {
        Command::Topic(cmd) => admin::topic(&cli.broker, cmd, out).await,
        Command::Txn(cmd) => txn::run(&cli.broker, cmd, out).await,
        Command::Group(cmd) => group::group(&cli.broker, cmd, out).await,
        Command::Msg(cmd) => msg::run(&cli.broker, cmd, out).await,
        Command::Dlq(cmd) => group::dlq(&cli.broker, cmd, out).await,
        Command::Status => admin::status(&cli.broker, out).await,
        Command::Bench(cmd) => bench::run(&cli.broker, cmd, out).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("txmq: {e:#}");
            ExitCode::FAILURE
        }
    }
}
