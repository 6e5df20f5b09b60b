//! `txmq bench consume`: a pre-filled backlog received and acked by several consumers; the
//! acking consumer is shared with `e2e`.

use super::report::{histogram, record, take, Progress, Report, Run};
use super::*;
use crate::admin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Most ack calls a bench consumer has in flight before it waits for one. Four consumers stay
/// well under the broker's limit of 1,024 requests in progress per client, beyond which calls
/// are answered "too many requests".
pub(super) const MAX_UNACKED: usize = 128;

/// A consumer that keeps receiving while its acks are in flight, as a push consumer does: each
/// receive asks for up to 32 messages (1 s long poll, 60 s invisible), and every message gets
/// its own ack call, as the official clients send them. A message counts once its ack succeeded.
pub(super) struct AckingConsumer {
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
pub(super) struct Acked {
    count: u64,
    last: u64,
}

impl Acked {
    /// Counts one finished ack call; returns how many messages it carried.
    pub(super) fn add(&mut self, r: Option<Result<(u64, u64, u64), tokio::task::JoinError>>) -> u64 {
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
    pub(super) fn publish(&self, total: &AtomicU64, last: &AtomicU64) {
        if self.count > 0 {
            total.fetch_add(self.count, Ordering::Relaxed);
            last.fetch_max(self.last, Ordering::Relaxed);
        }
    }
}

impl AckingConsumer {
    pub(super) fn new(client: Client, group: &str, topic: &str, batch: bool) -> Self {
        let acks = tokio::task::JoinSet::new();
        Self { client, group: group.to_string(), topic: topic.to_string(), acks, unacked: 0, batch }
    }

    /// One receive; starts the acks of what it got. Returns when it answered (µs since the
    /// epoch) and the messages.
    pub(super) async fn receive(&mut self) -> anyhow::Result<(u64, Vec<v2::Message>)> {
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
    pub(super) async fn reap(&mut self) -> Acked {
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
    pub(super) fn unacked(&self) -> u64 {
        self.unacked
    }

    /// Waits for every ack; returns the successful ones.
    pub(super) async fn finish(&mut self) -> Acked {
        let mut acked = Acked::default();
        while let Some(r) = self.acks.join_next().await {
            self.unacked -= acked.add(Some(r));
        }
        acked
    }
}

/// Fills a fresh topic with `backlog` messages (batched sends), then measures receive + ack.
pub(super) async fn consume(broker: &str, args: &ConsumeArgs) -> anyhow::Result<Report> {
    let client = connect(broker).await?;
    let mut admin = admin::connect(broker).await?;
    let run_id = micros_now();
    let topic = format!("bench-consume-{run_id}");
    let group = format!("bench-group-{run_id}");
    let body = vec![b'x'; args.size];
    let producer = txmq_client::Producer::connect(crate::connection::client_config(broker), &[&topic])
        .await
        .with_context(|| format!("cannot reach the broker at {broker}"))?;
    eprintln!("filling {} messages into {topic}", args.backlog);
    let next = Arc::new(AtomicU64::new(0));
    let mut fillers = Vec::new();
    for _ in 0..16 {
        let (producer, next, topic, body, backlog) =
            (producer.clone(), next.clone(), topic.clone(), body.clone(), args.backlog);
        fillers.push(tokio::spawn(async move {
            loop {
                let start = next.fetch_add(64, Ordering::Relaxed);
                if start >= backlog {
                    return Ok::<_, anyhow::Error>(());
                }
                let messages = (start..(start + 64).min(backlog))
                    .map(|i| txmq_client::Message::new(topic.as_str(), body.clone()).with_id(format!("C{run_id}-{i}")))
                    .collect();
                producer.send_batch(messages).await.context("fill failed")?;
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
