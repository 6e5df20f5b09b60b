//! A small order service on SQLite that publishes its events with txmq's transactional
//! messages, and an inventory service that consumes them idempotently. Runs a scripted race
//! (payment callbacks against timeout cancels, duplicated submits and callbacks) against an
//! in-process broker (or `--broker ADDR`), then checks the invariants.
//!
//! ```sh
//! cargo run -p txmq-client --example order_service -- --orders 200
//! cargo run -p txmq-client --example order_service -- --orders 500 --outage --crash-rate 0.2
//! ```

mod service;
mod suite;

use clap::Parser;
use std::process::ExitCode;

#[derive(Parser)]
struct Args {
    /// Number of orders.
    #[arg(long, default_value_t = 200)]
    orders: usize,
    /// Orders in progress at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Stop the in-process broker for part of the run (events go through the outbox).
    #[arg(long)]
    outage: bool,
    /// Share of publishes that "crash" after their database commit (check-back path).
    #[arg(long, default_value_t = 0.0)]
    crash_rate: f64,
    /// Seed of the random timings.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Use a running broker instead of an in-process one.
    #[arg(long)]
    broker: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("cannot create a work directory: {e}");
            return ExitCode::FAILURE;
        }
    };
    let opts = suite::Options {
        orders: args.orders,
        concurrency: args.concurrency,
        outage: args.outage,
        crash_rate: args.crash_rate,
        seed: args.seed,
        show: 5,
        broker: args.broker,
    };
    match suite::run(dir.path(), opts).await {
        Ok(report) if report.violations.is_empty() => {
            println!("invariants: OK");
            println!("{}", report.line());
            ExitCode::SUCCESS
        }
        Ok(report) => {
            println!("invariants: FAILED {}", report.violations.join("; "));
            println!("{}", report.line());
            ExitCode::FAILURE
        }
        Err(e) => {
            println!("invariants: FAILED run aborted: {e:#}");
            ExitCode::FAILURE
        }
    }
}
