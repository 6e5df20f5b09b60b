//! `txmq`: the operator CLI. Talks to a broker's admin service (and, for `bench`, to its
//! RocketMQ service) over gRPC.
//!
//! # Layout
//! - `admin`: topic and status commands.
//! - `bench`: load generators that print throughput and latency.
//! - `output`: human tables and `--json`.

mod admin;
mod bench;
mod output;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "txmq", version, about = "Operate a txmq broker: topics, status, benchmarks")]
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
