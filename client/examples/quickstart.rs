//! Sends a normal and a transactional message to a running broker, consumes both, and says
//! what it did.
//!
//! ```sh
//! cargo run -p txmq-client --example quickstart -- --broker 127.0.0.1:8081
//! ```

use clap::Parser;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use txmq_client::{
    CheckRequest, ClientConfig, Message, Producer, Resolution, SimpleConsumer, TransactionChecker, TransactionProducer,
};

#[derive(Parser)]
struct Args {
    /// Broker address.
    #[arg(long, default_value = "127.0.0.1:8081")]
    broker: String,
    /// Topic to use.
    #[arg(long, default_value = "quickstart")]
    topic: String,
}

/// This demo commits its transactions itself; a check only comes if it crashed midway.
struct AlwaysCommit;

#[async_trait::async_trait]
impl TransactionChecker for AlwaysCommit {
    async fn check(&self, _request: &CheckRequest) -> Resolution {
        Resolution::Commit
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quickstart failed: {e:#}");
            if e.downcast_ref::<txmq_client::Error>().is_some_and(|e| e.is_unreachable()) {
                eprintln!(
                    "is the broker running at {}? start it with: cargo run --release -p txmq-broker",
                    args.broker
                );
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> anyhow::Result<()> {
    let config = ClientConfig::new(&args.broker);
    let topic = args.topic.as_str();
    let run_id = txmq_client::new_message_id();

    let producer = Producer::connect(config.clone(), &[topic]).await?;
    let sent = producer.send(Message::new(topic, format!("hello from {run_id}")).with_tag("normal")).await?;
    println!("sent a normal message: {}", sent.message_id);

    let tp = TransactionProducer::connect(config.clone(), &[topic], Arc::new(AlwaysCommit)).await?;
    let outcome = tp
        .send_in_transaction(Message::new(topic, format!("order paid, {run_id}")).with_tag("txn"), |ctx| async move {
            println!("local transaction runs for transaction {}", ctx.transaction_id);
            Ok::<_, std::convert::Infallible>(())
        })
        .await?;
    println!("transactional message committed: {}", outcome.is_ok());

    let consumer = SimpleConsumer::connect(config, &format!("quickstart-{run_id}")).await?;
    let mut seen = 0;
    let started = Instant::now();
    while seen < 2 && started.elapsed() < Duration::from_secs(30) {
        for m in consumer.receive_for(topic, "normal||txn", 16, Duration::from_secs(30), Duration::from_secs(2)).await?
        {
            let body = String::from_utf8_lossy(&m.body).into_owned();
            consumer.ack(&m).await?;
            if body.contains(&run_id) {
                println!("consumed [{}] {body}", m.tag.as_deref().unwrap_or("-"));
                seen += 1;
            }
        }
    }
    consumer.shutdown().await?;
    tp.shutdown().await?;
    producer.shutdown().await?;
    anyhow::ensure!(seen == 2, "consumed {seen} of the 2 messages within 30 s");
    println!("done: 2 messages sent and consumed");
    Ok(())
}
