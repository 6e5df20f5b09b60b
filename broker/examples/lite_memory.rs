//! What a lite topic costs in memory: sends one message to each of N new lite topics of one
//! LITE topic (N = 1,000,000 unless given) and prints the broker's live heap bytes per lite
//! topic: how much its resident memory grew. The store keeps nothing (it drops every write), so
//! the growth is the broker's own in-memory state: the lite topic registry (name → queue, queue
//! → name) and each queue's offsets (plus allocator slack; Linux only, from /proc).
//!
//! `cargo run --release -p txmq-broker --example lite_memory [N]`

use std::ops::Bound;
use std::sync::Arc;
use std::time::Instant;
use txmq_broker::broker::Broker;
use txmq_broker::config::Config;
use txmq_broker::model::{MessageType, NewMessage, TopicType};
use txmq_broker::store::{Batch, Entry, Store, StoreError};

/// The process's resident memory, from /proc.
fn rss_bytes() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<i64>().ok());
    kb.unwrap_or(0) * 1024
}

/// A store that keeps nothing: every read finds nothing, every write is dropped.
struct Discard;

impl Store for Discard {
    fn get(&self, _key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(None)
    }
    fn scan(&self, _: Bound<&[u8]>, _: Bound<&[u8]>, _: usize, _: bool) -> Result<Vec<Entry>, StoreError> {
        Ok(Vec::new())
    }
    fn apply(&self, _batch: &Batch) -> Result<(), StoreError> {
        Ok(())
    }
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
    fn size_on_disk(&self) -> u64 {
        0
    }
}

fn message(i: usize) -> NewMessage {
    NewMessage {
        topic: "chat".into(),
        message_id: format!("m-{i}"),
        message_type: MessageType::Lite,
        tag: None,
        keys: Vec::new(),
        message_group: None,
        born_timestamp: 0,
        born_host: "bench".into(),
        delivery_timestamp: None,
        trace_context: None,
        recovery_duration_ms: None,
        origin_topic: None,
        user_properties: Default::default(),
        body: b"x".to_vec(),
        body_gzip: false,
        priority: None,
        // Names as an application would make them: a prefix and an id.
        lite_topic: Some(format!("session-{i:08}")),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(1_000_000);
    let dir = tempfile::tempdir()?;
    let mut config = Config::with_data_dir(dir.path());
    config.max_lite_topics = n.max(1);
    let broker: Arc<Broker> = Broker::with_store(config, Arc::new(Discard))?;
    broker.create_topic("chat", TopicType::Lite, 1).await?;
    let before = rss_bytes();
    let started = Instant::now();
    let tasks = 64;
    let mut handles = Vec::new();
    for t in 0..tasks {
        let broker = broker.clone();
        handles.push(tokio::spawn(async move {
            for i in (t..n).step_by(tasks) {
                broker.send("chat", vec![message(i)], "bench").await?;
            }
            Ok::<_, txmq_broker::error::BrokerError>(())
        }));
    }
    for h in handles {
        h.await??;
    }
    let took = started.elapsed();
    // Let the committer's last batches and their buffers go.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let grown = rss_bytes() - before;
    let (_, count) = broker.lite_topics("chat", 0);
    assert_eq!(count, n, "every send made a lite topic");
    println!("lite topics:          {n}");
    println!("resident memory grown by: {:.1} MiB", grown as f64 / (1024.0 * 1024.0));
    println!("bytes per lite topic: {:.0}", grown as f64 / n as f64);
    println!(
        "created in:           {:.1} s ({:.0} lite topics/s, one message each)",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );
    Ok(())
}
